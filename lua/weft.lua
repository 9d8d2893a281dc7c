-- weft: coroutine sockets and scheduling for Lua 5.4.
-- The C core (weft.core) does the I/O, waiting and scheduling; this file
-- adds the parts that read best in Lua: host/port arguments (resolved with
-- weft.addr, which may wait for the resolver pool), cowrap, timers and
-- weft.run.  The reference is doc/api.md.
local core = require "weft.core"

local coroutine, error, select, type = coroutine, error, select, type
local pack, unpack = table.pack, table.unpack

local weft = {
	_VERSION = "weft " .. core._VERSION,
	addr = core.addr,
	buffer = core.buffer,
	clock = core.clock,
	tcp = core.tcp,
	udp = core.udp,
	raw = core.raw,
	newthread = core.newthread,
	resume = core.resume,
	suspend = core.suspend,
	transfer = core.transfer,
	currentthread = core.currentthread,
	onthreadfinish = core.onthreadfinish,
	seterrorhandler = core.seterrorhandler,
	poll = core.poll,
	start = core.start,
	stop = core.stop,
	exit = core.exit,
	sleep = core.sleep,
	sleep_until = core.sleep_until,
	sleep_job = core.sleep_job,
	wakehandle = core.wakehandle,
	epoll_fd = core.epoll_fd,
	iocp = core.iocp,
	stats = core.stats,
	channel = core.channel,
	spawn = core.spawn,
	worker = core.worker,
	workers = core.workers,
	yield = coroutine.yield,
	core = core,
}

-- weft.tls loads on first use.
setmetatable(weft, {__index = function(t, k)
	if k == "tls" then
		local m = require "weft.tls"
		rawset(t, "tls", m)
		return m
	end
end})

-- Per-thread values, weakly keyed so finished threads are forgotten.
weft.threadenv = setmetatable({}, {__mode = "k"})

------------------------------------------------------------------------
-- Sockets: the methods that take host, port.

local M = core.socket_methods
local addr = core.addr

-- An address argument: an ai or sa passes through; host, port are looked
-- up for the socket's type and family.  `flags` are weft.addr's flags.
local function resolve(s, host, port, flags, passive)
	if type(host) == "userdata" then
		return host
	end
	if passive then
		if host == nil then host = "*" end
		if port == nil then port = 0 end
		if flags == nil then flags = "passive" end
	end
	local stype = s:type()
	if stype == "raw" then stype = 0 end
	return addr(host, port, stype, s:family(), nil, flags)
end

function M:bind(host, port, af)
	local ai, err = resolve(self, host, port, af, true)
	if not ai then return nil, err end
	return self:_bind(ai)
end

function M:listen(backlog, host, port, af)
	if type(backlog) ~= "number" then
		backlog, host, port, af = nil, backlog, host, port
	end
	local ai, err
	if not self:bound() then
		ai, err = resolve(self, host, port, af, true)
		if not ai then return nil, err end
	end
	return self:_listen(backlog, ai)
end

-- The host name (or address string) each socket connected to, for TLS:
-- the name a client asks for (SNI) and checks the certificate against.
local connhost = setmetatable({}, {__mode = "k"})
function weft._connhost(s)
	return connhost[s]
end

function M:connect(host, port, expires, af)
	if self:type() ~= "tcp" and host == "*" and (port == 0 or port == nil) then
		return self:_disconnect()
	end
	local ai, err = resolve(self, host, port, af)
	if not ai then return nil, err end
	local ok
	ok, err = self:_connect(ai, expires)
	if ok and type(host) == "string" then connhost[self] = host end
	return ok, err
end

function M:sendto(host, port, data, len, expires, af)
	local ai, err = resolve(self, host, port, af)
	if not ai then return nil, err end
	return self:_sendto(ai, data, len, expires)
end

-- Receive everything, then serve it through a read(buf, maxlen) -> n
-- function that never yields (0 at the end).
function M:recvall_read(expires)
	local buf, len, ebuf = self:recvall(expires)
	if not buf then return nil, len, ebuf end
	local pos = 0
	return function(dst, maxlen)
		local n = len - pos
		if maxlen == nil or maxlen > #dst then maxlen = #dst end
		if n > maxlen then n = maxlen end
		if n <= 0 then return 0 end
		dst:set(1, buf:view(pos + 1, n))
		pos = pos + n
		return n
	end
end

------------------------------------------------------------------------
-- Threads

weft.thread = core.thread

local MW, MS, MT = core.markers.wait, core.markers.suspend, core.markers.transfer

-- Like coroutine.wrap, but the body may wait: a wait (or suspend or
-- transfer) inside it is passed up to the weft thread running the
-- wrapper, and what the scheduler resumes the thread with is passed back
-- down.  Plain yields (weft.yield) come back to the wrapper's caller.
function weft.cowrap(f)
	local co = coroutine.create(f)
	core.cowrap_tag(co)
	local resume, yield, status = coroutine.resume, coroutine.yield, coroutine.status
	local function step(ok, first, ...)
		if not ok then error(first, 0) end
		if (first == MW or first == MS or first == MT) and status(co) == "suspended" then
			return step(resume(co, yield(first, ...)))
		end
		return first, ...
	end
	return function(...)
		return step(resume(co, ...))
	end
end

function weft.run(f, ...)
	if core.inthread() then
		return f(...)
	end
	local res
	local th = core.newthread(function(...)
		res = pack(xpcall(f, debug.traceback, ...))
	end, "weft.run")
	core.resume(th, ...)
	core.start()
	if not res and core.exiting() then
		return -- weft.exit() or a signal ended the program
	end
	if not res then
		error("weft.run: the thread did not finish (it waits for something that cannot happen)", 2)
	end
	if not res[1] then
		error(res[2], 0)
	end
	return unpack(res, 2, res.n)
end

------------------------------------------------------------------------
-- Timers (weft.core, src/ltimer.c): C objects run by a shared runner thread.

weft.runat = core.runat
weft.runafter = core.runafter
weft.runevery = core.runevery

return weft
