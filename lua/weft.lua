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
	setbudget = core.setbudget,
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

-- Per-thread values, weakly keyed; the scheduler clears a thread's entry
-- when it finishes.
weft.threadenv = setmetatable({}, {__mode = "k"})
core.set_threadenv(weft.threadenv)

-- Argument errors name the public function and count its arguments as
-- the caller wrote them (a method's self is not counted).
local function argerror(n, fname, msg, level)
	error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), (level or 2) + 1)
end

local function check_expires(v, n, fname)
	if v ~= nil and type(v) ~= "number" then
		argerror(n, fname, "number expected, got " .. type(v), 3)
	end
end

local buffer_mt = getmetatable(core.buffer(0))

local function check_data(data, len, n, fname)
	local t = type(data)
	if t ~= "string" and not (t == "userdata" and getmetatable(data) == buffer_mt) then
		argerror(n, fname, "string or buffer expected, got " .. t, 3)
	end
	if len ~= nil and math.type(len) ~= "integer" then
		argerror(n + 1, fname, "integer expected, got " .. (math.type(len) or type(len)), 3)
	end
end

------------------------------------------------------------------------
-- Sockets: the methods that take host, port.

local M = core.socket_methods
local addr = core.addr

-- An address argument: an ai or sa passes through; host, port are looked
-- up for the socket's type and family.  `flags` are weft.addr's flags;
-- `expires` bounds the lookup (the caller's deadline covers all of its
-- waiting).
local function resolve(s, host, port, flags, passive, expires)
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
	return addr(host, port, stype, s:family(), nil, flags, expires)
end

function M:bind(host, port, af)
	local ai, err = resolve(self, host, port, af, true)
	if not ai then return nil, err end
	return self:_bind(ai)
end

function M:listen(backlog, host, port, af)
	if type(backlog) ~= "number" then
		backlog, host, port, af = nil, backlog, host, port
	elseif backlog ~= backlog then
		argerror(1, "listen", "backlog is NaN")
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

-- connect(host, port, [expires], [af], [bind_host], [bind_port], [bind_af]):
-- the bind arguments bind the socket first (if it is not bound yet).
function M:connect(host, port, expires, af, bind_host, bind_port, bind_af)
	check_expires(expires, 3, "connect")
	if self:type() ~= "tcp" and host == "*" and (port == 0 or port == nil) then
		return self:_disconnect()
	end
	if type(host) ~= "userdata" then
		if host == nil then
			argerror(1, "connect", "host expected")
		end
		if port == nil and self:family() ~= "unix" then
			argerror(2, "connect", "port expected")
		end
	end
	if (bind_host ~= nil or bind_port ~= nil) and not self:bound() then
		local ok, err = self:bind(bind_host, bind_port, bind_af)
		if not ok then return nil, err end
	end
	local ai, err = resolve(self, host, port, af, false, expires)
	if not ai then return nil, err end
	local ok
	ok, err = self:_connect(ai, expires)
	if ok and type(host) == "string" then connhost[self] = host end
	return ok, err
end

function M:sendto(host, port, data, len, expires, af)
	check_data(data, len, 3, "sendto")
	check_expires(expires, 5, "sendto")
	local ai, err = resolve(self, host, port, af, false, expires)
	if not ai then return nil, err end
	return self:_sendto(ai, data, len, expires)
end

-- A read(buf, maxlen) -> n function over the first len bytes of buf that
-- never yields: nil, "eof" once they are consumed.
local function buffer_reader(buf, len)
	local pos = 0
	return function(dst, maxlen)
		local n = len - pos
		if n <= 0 then return nil, "eof" end
		if maxlen == nil or maxlen > #dst then maxlen = #dst end
		if n > maxlen then n = maxlen end
		if n <= 0 then return 0 end
		dst:set(1, buf:view(pos + 1, n))
		pos = pos + n
		return n
	end
end

-- Receive everything, then serve it through a reader.  On an error
-- before the end: nil, message, and a reader over what had arrived.
function M:recvall_read(expires, limit)
	local buf, len, ebuf, elen = self:recvall(expires, limit)
	if not buf then return nil, len, buffer_reader(ebuf, elen) end
	return buffer_reader(buf, len)
end

------------------------------------------------------------------------
-- Threads

function weft.thread(f, ...)
	local th = core.newthread(f)
	core.resume(th, ...)
	return th
end

local MW, MS, MT = core.markers.wait, core.markers.suspend, core.markers.transfer

-- The sock API's cowrap (coro.safewrap): like coroutine.wrap, but the
-- body is called as f(yield, ...) and may wait: a wait (or suspend or
-- transfer) inside it is passed up to the weft thread running the
-- wrapper, and what the scheduler resumes the thread with is passed back
-- down.  Plain yields (the `yield` argument, or weft.yield) come back to
-- the wrapper's caller.  Returns the wrapper and the coroutine.
function weft.cowrap(f)
	if type(f) ~= "function" then
		error(("bad argument #1 to 'cowrap' (function expected, got %s)"):format(type(f)), 2)
	end
	local resume, yield, status = coroutine.resume, coroutine.yield, coroutine.status
	local co = coroutine.create(function(...)
		return f(yield, ...)
	end)
	core.cowrap_tag(co)
	local function step(ok, first, ...)
		if not ok then error(first, 0) end
		if (first == MW or first == MS or first == MT) and status(co) == "suspended" then
			return step(resume(co, yield(first, ...)))
		end
		return first, ...
	end
	return function(...)
		return step(resume(co, ...))
	end, co
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
-- Timers: each is a thread sleeping on a sleep job, so cancel is a wakeup.

local function timer(first, interval, f)
	local sj = core.sleep_job()
	local cancelled = false
	weft.thread(function()
		local t = first
		while true do
			sj:sleep_until(t)
			if cancelled then return end
			if f() == false or not interval then return end
			-- Keep the cadence without bursts after a stall.
			t = t + interval
			local now = core.clock()
			if t < now then t = now end
		end
	end)
	return {
		cancel = function()
			if not cancelled then
				cancelled = true
				sj:wakeup()
			end
		end,
	}
end

local function check_timer(name, t, f)
	if type(t) ~= "number" or t ~= t then
		argerror(1, name, "number expected, got " .. (t ~= t and "NaN" or type(t)), 3)
	end
	if type(f) ~= "function" then
		local mt = getmetatable(f)
		if not (mt and mt.__call) then
			argerror(2, name, "function expected, got " .. type(f), 3)
		end
	end
end

function weft.runat(t, f)
	check_timer("runat", t, f)
	return timer(t, nil, f)
end

function weft.runafter(s, f)
	check_timer("runafter", s, f)
	return timer(core.clock() + s, nil, f)
end

function weft.runevery(s, f)
	check_timer("runevery", s, f)
	return timer(core.clock() + s, s, f)
end

return weft
