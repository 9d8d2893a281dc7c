-- weft.copas: the Copas 4.x API on weft.
--
-- Every Copas thread is a weft thread, so the work of a Copas program is
-- done by weft's scheduler: sockets wait in weft's pollers (no select(),
-- no FD_SETSIZE limit), sleeps are weft timers, and the Copas loop is the
-- weft loop.  This file keeps what Copas itself knows: thread names and
-- error handlers, socket names and per-operation timeouts, the count of
-- work left (copas.finished), the exit protocol, and LuaSocket's socket
-- API.  LuaSocket's receive patterns are cut out of a buffer in C (the
-- reader of src/lcopas.c).  All state lives in this chunk: loading the
-- module again gives an independent instance.
--
-- Two ways to run: copas.loop() called from plain Lua drives weft's loop
-- itself; called from inside a weft thread (the `weft` launcher runs a
-- script's main chunk in one) it waits there while weft's loop runs the
-- Copas threads.  A script that never calls copas.loop() still gets one:
-- loading the module inside a weft thread arranges for the loop to run
-- when that thread (the main chunk) ends, as Copas's own runner script does.
local weft = require "weft"
local core = weft.core

local coroutine, error, pcall, xpcall, select, type, tostring, setmetatable, getmetatable, rawget =
	coroutine, error, pcall, xpcall, select, type, tostring, setmetatable, getmetatable, rawget
local pack, unpack = table.pack, table.unpack
local running = coroutine.running
local clock, newthread, resume = weft.clock, weft.newthread, weft.resume
-- A weft TCP socket's send, called as a function: no method lookup
-- through the socket's __index on the hot path.
local sock_send = core.socket_methods.send
local yield_step, newreader, errstr = core.copas_yield, core.copas_reader, core.copas_errstr
local huge = math.huge

local copas = {}
copas._VERSION = "Copas 4.11.0"
copas._COPYRIGHT = "weft (Copas API)"
copas._DESCRIPTION = "Coroutine Oriented Portable Asynchronous Services, on weft"
copas.autoclose = true
copas.running = false

copas.gettime = core.copas_gettime

------------------------------------------------------------------------
-- Threads and the count of work left

local weak = {__mode = "k"}
local names = setmetatable({}, weak)       -- thread or socket -> name
local errhandlers = setmetatable({}, weak) -- thread -> its error handler
local thread_skt = setmetatable({}, weak)  -- handler thread -> its client socket
local sockerrs = setmetatable({}, weak)    -- thread -> use LuaSocket timeout errors
local sjobs = setmetatable({}, weak)       -- thread -> its sleep job
local state = {}    -- live Copas thread -> "active" | "parked" | "removed"
local sleeping = {} -- thread -> "timer" | "forever" while it sleeps
local nactive = 0   -- live threads that can still act (not parked forever)
local nservers = 0
local counts = {read = 0, write = 0, timer = 0, inactive = 0, timeout = 0}
local receiving = core.copas_counter() -- TCP readers waiting in recv (C readers count)
local driver -- the sleep job of a copas.loop running inside a weft thread
local exiting, exit_waiters = false, {}
local REMOVED = setmetatable({}, {__tostring = function() return "thread removed" end})

local function check_done()
	if driver and nactive == 0 and nservers == 0 then
		driver:wakeup()
	end
end

local function park(co)
	if state[co] == "active" then
		state[co] = "parked"
		nactive = nactive - 1
		check_done()
	end
end

local function unpark(co)
	if state[co] == "parked" then
		state[co] = "active"
		nactive = nactive + 1
	end
end

local nremoved = 0 -- removed threads that have not ended yet

-- copas.debug.start's log: what happens to threads, by name.
local function dlog(what, co, ...)
	local log = copas._debug_log
	if log then log(what, names[co] or tostring(co), ...) end
end

local function retire(co)
	dlog("thread ended:", co)
	if state[co] == "active" then
		nactive = nactive - 1
	elseif state[co] == "removed" then
		nremoved = nremoved - 1
	end
	state[co] = nil
	sleeping[co] = nil
	check_done()
end

-- For the submodules: whether co is a Copas thread that was not removed.
function copas._alive(co)
	local st = state[co]
	return st ~= nil and st ~= "removed"
end

function copas.finished()
	return nactive == 0 and nservers == 0
end

function copas.getthreadname(co)
	co = co or running()
	return names[co] or tostring(co)
end

function copas.setthreadname(name, co)
	co = co or running()
	names[co] = name
	return true
end

-- A wrapper and its socket share one name.
local function socket_key(skt)
	if type(skt) == "table" and rawget(skt, "socket") ~= nil and rawget(skt, "h") ~= nil then
		return skt.socket
	end
	return skt
end

function copas.getsocketname(skt)
	skt = socket_key(skt)
	return names[skt] or tostring(skt)
end

function copas.setsocketname(name, skt)
	names[socket_key(skt)] = name
	return true
end

function copas.gettraceback(msg, co, skt)
	local where = ("(coroutine: %s, socket: %s)"):format(
		co == nil and "nil" or copas.getthreadname(co),
		skt == nil and "nil" or copas.getsocketname(skt))
	local text = (msg == nil or tostring(msg) == "") and where or tostring(msg) .. " " .. where
	if type(co) == "thread" then
		return debug.traceback(co, text)
	end
	return debug.traceback(text, 2)
end

local function default_errorhandler(msg, co, skt)
	print(copas.gettraceback(msg, co, skt))
end
local default_handler = default_errorhandler

function copas.seterrorhandler(func, default)
	if default then
		if type(func) ~= "function" then
			error("the default error handler must be a function", 2)
		end
		default_handler = func
		return
	end
	errhandlers[running()] = func
end
copas.setErrorHandler = copas.seterrorhandler

function copas.geterrorhandler(co)
	co = co or running()
	return errhandlers[co] or default_handler
end

-- Report an error of thread co (its socket skt) through its handler; an
-- error inside the handler is reported by the default one.
local function report(err, co, skt)
	dlog("thread error:", co, tostring(err))
	local h = errhandlers[co] or default_handler
	local ok, e2 = pcall(h, err, co, skt)
	if not ok then
		pcall(default_errorhandler, "error in error handler: " .. tostring(e2), co, skt)
	end
end

-- xpcall message handler: runs at the point of the error, so the
-- handler's traceback shows where it happened.
local function on_error(err)
	if err ~= REMOVED then
		local co = running()
		report(err, co, thread_skt[co])
	end
	return err
end

local function on_bad_yield(co)
	report("coroutine.yield was called by user code: user code cannot yield to Copas "
		.. "(use copas.pause, copas.pauseforever or the Copas socket functions)",
		co, thread_skt[co])
	retire(co)
end

-- The body of every Copas thread.
local function runner(func, delayed, ...)
	local co = running()
	if delayed then
		yield_step()
	end
	if state[co] ~= "removed" then
		xpcall(func, on_error, ...)
	end
	retire(co)
end

local function spawn(name, skt, delayed, func, ...)
	if type(func) ~= "function" then
		error("bad argument: function expected, got " .. type(func), 3)
	end
	local co = newthread(runner)
	state[co] = "active"
	nactive = nactive + 1
	if name then names[co] = name end
	if skt then thread_skt[co] = skt end
	core.onbadyield(co, on_bad_yield)
	dlog("thread added:", co)
	resume(co, func, delayed, ...)
	return co
end

function copas.addthread(func, ...)
	return spawn(nil, nil, true, func, ...)
end

function copas.addnamedthread(name, func, ...)
	return spawn(name, nil, true, func, ...)
end

-- The thread's sleep job, made on first use.
local function sj_of(co)
	local sj = sjobs[co]
	if not sj then
		sj = weft.sleep_job()
		sjobs[co] = sj
	end
	return sj
end

-- After a wait: a thread removed meanwhile ends here.
local function check_removed(co)
	if state[co] == "removed" then
		error(REMOVED, 0)
	end
end

-- After a socket call: the same, passing the results through.
local function after_io(...)
	if nremoved > 0 and state[running()] == "removed" then
		error(REMOVED, 0)
	end
	return ...
end

function copas.removethread(co)
	local st = state[co]
	if not st or st == "removed" then
		return
	end
	dlog("thread removed:", co)
	if st == "active" then
		nactive = nactive - 1
	end
	nremoved = nremoved + 1
	state[co] = "removed"
	local how = sleeping[co]
	if how then
		sleeping[co] = nil
		counts[how == "timer" and "timer" or "inactive"] =
			counts[how == "timer" and "timer" or "inactive"] - 1
		sj_of(co):wakeup()
	end
	check_done()
end

------------------------------------------------------------------------
-- Sleeping

local function current_copas_thread()
	local co = running()
	if not state[co] then
		error("not a Copas thread (use copas.addthread)", 3)
	end
	return co
end

function copas.pause(delay)
	local co = running()
	local t0 = clock()
	if not delay or not (delay > 0) then
		yield_step()
		if state[co] then check_removed(co) end
		return clock() - t0
	end
	local sj = sj_of(co)
	dlog("thread sleeping:", co, delay == huge and "forever" or delay)
	sleeping[co] = "timer"
	counts.timer = counts.timer + 1
	if delay == huge then
		sj:sleep()
	else
		sj:sleep(delay)
	end
	if sleeping[co] then
		sleeping[co] = nil
		counts.timer = counts.timer - 1
	end
	check_removed(co)
	return clock() - t0
end

function copas.pauseforever()
	local co = current_copas_thread()
	local sj = sj_of(co)
	dlog("thread sleeping:", co, "forever")
	sleeping[co] = "forever"
	counts.inactive = counts.inactive + 1
	park(co)
	sj:sleep()
	if sleeping[co] then
		sleeping[co] = nil
		counts.inactive = counts.inactive - 1
	end
	unpark(co)
	check_removed(co)
end

function copas.sleep(t)
	t = t or 0
	if t < 0 then
		return copas.pauseforever()
	end
	return copas.pause(t)
end

function copas.wakeup(co)
	local how = sleeping[co]
	if how then
		dlog("thread woken:", co)
		sleeping[co] = nil
		counts[how == "timer" and "timer" or "inactive"] =
			counts[how == "timer" and "timer" or "inactive"] - 1
		unpark(co)
		sj_of(co):wakeup()
	end
end

-- copas.timeout(delay, callback): callback(co) runs after delay unless
-- cancelled (0 or math.huge) or replaced by another call.
local timeouts = setmetatable({}, weak)
function copas.timeout(delay, callback)
	local co = running()
	local old = timeouts[co]
	if old then
		old.cancel()
		timeouts[co] = nil
		counts.timeout = counts.timeout - 1
	end
	if delay == nil or delay == 0 or delay == huge then
		return true
	end
	if type(callback) ~= "function" then
		error("bad argument #2 to 'timeout' (function expected)", 2)
	end
	local t
	t = weft.runafter(delay, function()
		if timeouts[co] == t then
			timeouts[co] = nil
			counts.timeout = counts.timeout - 1
			-- errors go to the default handler, with no thread or socket
			-- (the callback runs on the timer, not in co), traced where
			-- they happen
			xpcall(callback, function(err)
				local ok, e2 = pcall(default_handler, err, nil, nil)
				if not ok then
					pcall(default_errorhandler, "error in error handler: " .. tostring(e2))
				end
			end, co)
		end
	end)
	timeouts[co] = t
	counts.timeout = counts.timeout + 1
	return true
end

------------------------------------------------------------------------
-- Exit

function copas.exiting()
	return exiting
end

-- Under `weft -t N` every worker has its own Copas state; copas.exit()
-- in one of them is passed to the others through a channel per worker,
-- which their loops look at (without waiting on it) every EXIT_POLL s.
local nworkers, me = weft.workers(), weft.worker()
local EXIT_POLL = 0.05
local function exit_channel(k)
	return weft.channel("weft.copas.exit." .. k, 4)
end
local my_exit = nworkers > 1 and exit_channel(me) or nil

local function local_exit()
	if exiting then return end
	exiting = true
	local waiters = exit_waiters
	exit_waiters = {}
	for i = 1, #waiters do
		copas.wakeup(waiters[i])
	end
end

function copas.exit()
	if exiting then return end
	local_exit()
	for k = 1, nworkers do
		if k ~= me then
			pcall(function()
				local ch = exit_channel(k)
				if ch:count() < ch:capacity() then ch:send(true, weft.clock()) end
			end)
		end
	end
end

local function remote_exit()
	if my_exit and not exiting and my_exit:count() > 0 then
		-- taken, so that it does not end the next run of the loop too
		pcall(function()
			while my_exit:count() > 0 do my_exit:recv(weft.clock()) end
		end)
		local_exit()
	end
end

function copas.waitforexit()
	if exiting then return end
	local co = current_copas_thread()
	exit_waiters[#exit_waiters + 1] = co
	while not exiting do
		copas.pauseforever()
	end
end

------------------------------------------------------------------------
-- Sockets.  A socket Copas handles is described by a handle: its weft
-- socket `s` and reader `rd`, the LuaSocket object `ls` it came from (if
-- any), the Copas timeouts (cto, sto, rto: connect, send, receive; nil =
-- none) and, for weft's own LuaSocket-compatible objects, the LuaSocket
-- timeout `lto`.  weft's own objects are their own handle.

local servers = {}  -- server socket -> record
local NATIVE = {}   -- methods of weft's LuaSocket-compatible objects
local native_mt = {__index = NATIVE}
local handles = setmetatable({}, weak) -- LuaSocket object or weft socket -> handle
local UDP_MAX = 65536

local function newhandle(kind, st, s, ls)
	local h = setmetatable({kind = kind, state = st, s = s, ls = ls}, native_mt)
	return h
end

native_mt.__tostring = function(h)
	return ("%s{%s}: %s"):format(h.kind, h.state, h.id or "?")
end

local function is_luasocket(skt)
	local t = type(skt)
	if t ~= "userdata" then return false end
	local s = tostring(skt)
	return s:sub(1, 4) == "tcp{" or s:sub(1, 4) == "udp{"
end

local wrapper_mts = {} -- the metatables of copas.wrap's objects (filled below)

-- The handle of any socket Copas accepts.
local function handle_of(skt)
	local mt = getmetatable(skt)
	if mt == native_mt then
		return skt
	end
	if wrapper_mts[mt] then
		return skt.h
	end
	local h = handles[skt]
	if h then return h end
	if is_luasocket(skt) then
		local str = tostring(skt)
		local kind = str:sub(1, 3)
		local st = str:match("^%a+{(%a+)}") or "master"
		h = newhandle(kind, st, nil, skt)
		local fd = skt:getfd()
		if fd and fd >= 0 then
			local s, err = core.adopt(fd)
			if not s then error("cannot take over the socket: " .. tostring(err), 3) end
			h.s = s
		end
	elseif type(skt) == "userdata" and select(2, pcall(function()
			return skt.recv ~= nil and skt.fileno ~= nil and skt.accept ~= nil
		end)) == true then
		-- a weft socket
		local kind = skt:type()
		h = newhandle(kind, kind == "udp" and "unconnected" or (skt.remote_port and "client" or "master"), skt)
	else
		error("bad argument: socket expected, got " .. type(skt), 3)
	end
	handles[skt] = h
	return h
end
copas._handle_of = handle_of

-- A LuaSocket object's descriptor may appear late (LuaSocket makes it on
-- connect, bind or sendto): take it over then.
local function sock_of(h)
	local s = h.s
	if s then return s end
	local ls = h.ls
	if ls then
		local fd = ls:getfd()
		if fd and fd >= 0 then
			s = assert(core.adopt(fd))
			h.s = s
			return s
		end
	end
	return nil
end

local function reader_of(h)
	local rd = h.rd
	if rd then return rd end
	local s = sock_of(h)
	if not s then return nil end
	rd = newreader(s, receiving)
	h.rd = rd
	return rd
end

local function expires(t)
	if t == nil or t < 0 then return nil end
	return clock() + t
end

-- TCP receive with LuaSocket patterns; timeout per underlying recv.
local function tcp_receive(h, pattern, prefix, timeout, partial)
	local rd = h.rd or reader_of(h)
	if not rd then return nil, "closed" end
	return after_io(rd:receive(pattern, prefix, timeout, partial))
end

local function udp_buffer(h)
	local b = h.ubuf
	if not b then
		b = weft.buffer(UDP_MAX)
		h.ubuf = b
	end
	return b
end

local function udp_receive(h, size, timeout)
	local s = sock_of(h)
	if not s then return nil, "closed" end
	size = size or UDP_MAX
	if size > UDP_MAX then size = UDP_MAX end
	local b = udp_buffer(h)
	counts.read = counts.read + 1
	local n, err = s:recv(b, size, expires(timeout))
	counts.read = counts.read - 1
	after_io()
	if not n then return nil, errstr(err) end
	return b:tostring(1, n)
end

local function udp_receivefrom(h, size, timeout)
	local s = sock_of(h)
	if not s then return nil, "closed" end
	size = size or UDP_MAX
	if size > UDP_MAX then size = UDP_MAX end
	local b = udp_buffer(h)
	counts.read = counts.read + 1
	local n, sa = s:recvnext(b, size, expires(timeout))
	counts.read = counts.read - 1
	after_io()
	if not n then return nil, errstr(sa) end
	return b:tostring(1, n), sa:addr():tostring(), sa:port()
end

-- LuaSocket's send(data, i, j): the index of the last byte sent, or nil,
-- err, last.  The timeout restarts while bytes move.
local function tcp_send(h, data, i, j, timeout)
	local s = sock_of(h)
	if not s then return nil, "closed", 0 end
	data = tostring(data)
	local len = #data
	i = i or 1
	j = j or len
	if i < 0 then i = len + i + 1 end
	if j < 0 then j = len + j + 1 end
	if i < 1 then i = 1 end
	if j > len then j = len end
	if j < i then return i - 1 end
	if h.writing then
		return nil, "Operation already in progress", i - 1
	end
	local chunk = (i == 1 and j == len) and data or data:sub(i, j)
	counts.write = counts.write + 1
	h.writing = true
	while true do
		local ok, err, sent = s:send(chunk, nil, expires(timeout))
		if nremoved > 0 and state[running()] == "removed" then
			counts.write = counts.write - 1
			h.writing = false
			error(REMOVED, 0)
		end
		if ok then
			counts.write = counts.write - 1
			h.writing = false
			return j
		end
		sent = sent or 0
		if err == "timeout" and sent > 0 then
			-- progress was made: the timeout starts again
			i = i + sent
			chunk = data:sub(i, j)
		else
			counts.write = counts.write - 1
			h.writing = false
			return nil, errstr(err), i - 1 + sent
		end
	end
end

local function resolve(h, host, port)
	local fam = h.family
	local ai, err = weft.addr(host, port, h.kind, fam)
	if not ai then return nil, err end
	return ai
end

-- connect with a Copas timeout; weft sockets are made on demand.
local function do_connect(h, host, port, timeout)
	if h.state == "client" then
		return nil, "already connected"
	end
	if type(host) ~= "string" and type(host) ~= "userdata" then
		return nil, "host must be a string"
	end
	local ls = h.ls
	if ls and h.kind == "udp" then
		local ok, e = ls:setpeername(host, port)
		if ok then h.state = "connected" end
		return ok, e
	end
	if ls then
		-- LuaSocket makes its descriptor when connecting: let it, with
		-- the name already looked up (so DNS never blocks), then wait for
		-- the connection to complete.
		local ai, err = weft.addr(host, port, h.kind)
		if not ai then return nil, errstr(err) end
		local ip = ai.addr:addr():tostring()
		ls:settimeout(0)
		local t0, deadline = clock(), expires(timeout)
		local ok, e = ls:connect(ip, port)
		while not ok do
			if e == "already connected" then ok = true break end
			if e ~= "timeout" and e ~= "Operation already in progress" then
				return nil, e
			end
			if deadline and clock() >= deadline then
				return nil, "timeout"
			end
			copas.pause(0.002)
			ok, e = ls:connect(ip, port)
		end
		h.state = "client"
		h.host = host
		sock_of(h)
		return 1
	end
	local s = h.s
	if not s then
		local err
		s, err = (h.kind == "udp" and weft.udp or weft.tcp)(h.family)
		if not s then return nil, errstr(err) end
		h.s = s
	end
	counts.write = counts.write + 1
	-- (the host itself, so that TLS checks the certificate against it)
	local ok, e = s:connect(host, port, expires(timeout))
	counts.write = counts.write - 1
	if not ok then
		return nil, errstr(e)
	end
	if h.kind == "tcp" then h.state = "client" else h.state = "connected" end
	return 1
end

local function do_close(h)
	if h.rd then h.rd = nil end
	local s = h.s
	h.state = "closed"
	if s then s:close() end
	if h.plain then h.plain:close() end -- the TCP socket under TLS
	if h.ls then h.ls:close() end
	return 1
end

------------------------------------------------------------------------
-- weft's own LuaSocket-compatible objects (copas.socket): the same
-- methods as LuaSocket's, with LuaSocket's (blocking, lto) timeouts.

local nid = 0
local function native(kind, st, s)
	nid = nid + 1
	local h = newhandle(kind, st, s)
	h.id = ("0x%08x"):format(nid)
	return h
end

function NATIVE:receive(pattern, prefix)
	if self.kind == "udp" then
		return udp_receive(self, pattern, self.lto)
	end
	return tcp_receive(self, pattern, prefix, self.lto, false)
end

function NATIVE:receivefrom(size)
	return udp_receivefrom(self, size, self.lto)
end

function NATIVE:send(data, i, j)
	if self.kind == "udp" then
		local s = sock_of(self)
		if not s then return nil, "closed" end
		local n, err = s:send(data)
		if not n then return nil, errstr(err) end
		return n
	end
	return tcp_send(self, data, i, j, self.lto)
end

function NATIVE:sendto(data, ip, port)
	local s = sock_of(self)
	if not s then
		local err
		s, err = weft.udp(self.family)
		if not s then return nil, errstr(err) end
		self.s = s
	end
	local n, err = s:sendto(ip, port, data)
	if not n then return nil, errstr(err) end
	return n
end

function NATIVE:connect(host, port)
	return do_connect(self, host, port, self.lto)
end

function NATIVE:settimeout(t, mode)
	if t ~= nil and type(t) ~= "number" then
		error("bad argument #1 to 'settimeout' (number expected)", 2)
	end
	if t and t < 0 then t = nil end
	self.lto = t
	return 1
end

function NATIVE:close()
	return do_close(self)
end

local function family_arg(h)
	return h.family
end

-- LuaSocket's bind sets SO_REUSEADDR.  Not on Windows, where that option
-- lets another socket take over a bound port (weft has no so_reuseaddr
-- there) and binding over TIME_WAIT is allowed anyway.
local WINDOWS = package.config:sub(1, 1) == "\\"
local function reuseaddr(s)
	if not WINDOWS then s:setopt("so_reuseaddr", true) end
end

function NATIVE:bind(host, port)
	local s = self.s
	if not s then
		local err
		s, err = (self.kind == "udp" and weft.udp or weft.tcp)(family_arg(self))
		if not s then return nil, errstr(err) end
		self.s = s
	end
	reuseaddr(s)
	if host == "*" then host = (s:family() == "inet6") and "::" or "0.0.0.0" end
	local ok, err = s:bind(host, port)
	if not ok then return nil, errstr(err) end
	return 1
end
NATIVE.setsockname = function(self, host, port)
	if self.kind ~= "udp" then return nil, "not a udp socket" end
	return NATIVE.bind(self, host, port)
end

function NATIVE:listen(backlog)
	local s = self.s
	if not s then return nil, "closed" end
	local ok, err = s:listen(backlog or 32)
	if not ok then return nil, errstr(err) end
	self.state = "server"
	return 1
end

function NATIVE:accept()
	local s = self.s
	if not s then return nil, "closed" end
	local c, err = s:accept(expires(self.lto))
	if not c then return nil, errstr(err) end
	return native("tcp", "client", c)
end

function NATIVE:setpeername(host, port)
	if host == "*" then
		local s = self.s
		if s then s:connect("*", 0) end
		self.state = "unconnected"
		return 1
	end
	return do_connect(self, host, port, self.lto)
end

local function addr_info(s, remote)
	if not s then return nil, "closed" end
	local a = remote and s.remote_addr or s.local_addr
	if not a then return nil, remote and "not connected" or "not bound" end
	local p = remote and s.remote_port or s.local_port
	return a, p, s:family() == "inet6" and "inet6" or "inet"
end

function NATIVE:getpeername()
	return addr_info(self.s, true)
end

function NATIVE:getsockname()
	return addr_info(self.s, false)
end

local optnames = {
	keepalive = "so_keepalive", reuseaddr = "so_reuseaddr", reuseport = "so_reuseport",
	["tcp-nodelay"] = "tcp_nodelay", broadcast = "so_broadcast", dontroute = "so_dontroute",
	["ipv6-v6only"] = "ipv6_v6only", ["ip-multicast-loop"] = "ip_multicast_loop",
	["ip-multicast-ttl"] = "ip_multicast_ttl", linger = "so_linger",
	["tcp-keepidle"] = "tcp_keepidle", ["tcp-keepcnt"] = "tcp_keepcnt",
	["tcp-keepintvl"] = "tcp_keepintvl", ["recv-buffer-size"] = "so_rcvbuf",
	["send-buffer-size"] = "so_sndbuf",
}

function NATIVE:setoption(name, value)
	local s = self.s
	if not s then return nil, "closed" end
	local o = optnames[name]
	if not o then error("unsupported option '" .. tostring(name) .. "'", 2) end
	-- LuaSocket programs set reuseaddr before bind as a matter of course.
	-- On Windows it is accepted and does nothing: binding over TIME_WAIT
	-- works there without it, and the real option would let another
	-- socket take the port over (see reuseaddr above).
	if o == "so_reuseaddr" and WINDOWS then return 1 end
	if o == "so_linger" and type(value) == "table" then
		value = value.on and (value.timeout or 0) or false
	end
	local ok, err = s:setopt(o, value)
	if not ok then return nil, errstr(err) end
	return 1
end

function NATIVE:getoption(name)
	local s = self.s
	if not s then return nil, "closed" end
	local o = optnames[name]
	if not o then error("unsupported option '" .. tostring(name) .. "'", 2) end
	if o == "so_reuseaddr" and WINDOWS then return false end
	local v, err = s:getopt(o)
	if v == nil then return nil, errstr(err) end
	if o == "so_linger" then return {on = v ~= false, timeout = v or 0} end
	return v
end

function NATIVE:shutdown(how)
	local s = self.s
	if not s then return nil, "closed" end
	local map = {both = "rw", send = "w", receive = "r"}
	s:shutdown(map[how or "both"] or "rw")
	return 1
end

function NATIVE:getfd()
	local s = self.s
	return s and s:fileno() or -1
end

function NATIVE:setfd() error("setfd is not supported on weft sockets", 2) end

function NATIVE:dirty()
	return self.rd ~= nil and self.rd:buffered() > 0
end

function NATIVE:getstats()
	return 0, 0, 0
end

function NATIVE:setstats() return 1 end

function NATIVE:getfamily()
	local s = self.s
	return s and (s:family() == "inet6" and "inet6" or "inet") or (self.family or "inet")
end

local socketlib = {}
copas.socket = socketlib

function socketlib.tcp()
	return native("tcp", "master", nil)
end

function socketlib.tcp6()
	local h = native("tcp", "master", nil)
	h.family = "inet6"
	return h
end

function socketlib.udp()
	return native("udp", "unconnected", nil)
end

function socketlib.udp6()
	local h = native("udp", "unconnected", nil)
	h.family = "inet6"
	return h
end

-- bind + listen in one: weft's listen binds, so that the workers of
-- `weft -t N` binding the same address share one listening socket.
function socketlib.bind(host, port, backlog)
	local ai, err = weft.addr(host == "*" and "0.0.0.0" or host, port, "tcp", nil, nil, "passive")
	if not ai then return nil, errstr(err) end
	local s
	s, err = weft.tcp(ai:family())
	if not s then return nil, errstr(err) end
	reuseaddr(s)
	local ok, e = s:listen(backlog or 32, ai)
	if not ok then
		s:close()
		return nil, errstr(e)
	end
	local h = native("tcp", "server", s)
	h.family = ai:family()
	return h
end

function socketlib.connect(host, port, locaddr, locport)
	local h = native("tcp", "master", nil)
	if locaddr then
		local ok, e = h:bind(locaddr, locport or 0)
		if not ok then return nil, e end
	end
	local ok, err = h:connect(host, port)
	if not ok then h:close() return nil, err end
	return h
end

socketlib.gettime = core.copas_gettime
socketlib.sleep = function(t) return copas.pause(t) end
socketlib._VERSION = "LuaSocket 3.1 (weft)"

------------------------------------------------------------------------
-- Copas's socket functions (on raw sockets)

local function check_timeout(t)
	if t ~= nil and type(t) ~= "number" then
		return nil, "timeout must be 'nil' or a number"
	end
	return true
end

function copas.settimeout(skt, timeout)
	local ok, err = check_timeout(timeout)
	if not ok then return nil, err end
	local h = handle_of(skt)
	if timeout and timeout < 0 then timeout = nil end
	h.cto, h.sto, h.rto = timeout, timeout, timeout
	return true
end

function copas.settimeouts(skt, connect, send, receive)
	for _, t in ipairs({connect or 0, send or 0, receive or 0}) do
		local ok, err = check_timeout(t)
		if not ok then return nil, err end
	end
	local h = handle_of(skt)
	local function conv(new, old)
		if new == nil then return old end
		if new < 0 then return nil end
		return new
	end
	h.cto, h.sto, h.rto = conv(connect, h.cto), conv(send, h.sto), conv(receive, h.rto)
	return true
end

function copas.gettimeouts(skt)
	local h = handle_of(skt)
	return h.cto, h.sto, h.rto
end

-- copas.setreceivelimit([bytes]) -> the previous limit (weft's own): the
-- most a "*l" line or a "*a" read may hold before its end has come; past
-- it receive returns nil, "too_large", partial (the bytes so far), and the
-- next receive goes on from there.  Default 64 MiB; math.huge lifts it (a
-- reader then holds at most 1 GiB).
function copas.setreceivelimit(bytes)
	if bytes ~= nil and type(bytes) ~= "number" then
		error("bad argument #1 to 'setreceivelimit' (number expected, got " .. type(bytes) .. ")", 2)
	end
	return receiving:limit(bytes)
end

function copas.usesockettimeouterrors(use)
	sockerrs[running()] = use and true or nil
	return true
end
copas.useSocketTimeoutErrors = copas.usesockettimeouterrors

function copas.receive(skt, pattern, prefix)
	local h = handle_of(skt)
	if h.kind == "udp" then
		return udp_receive(h, pattern, h.rto)
	end
	return tcp_receive(h, pattern or "*l", prefix, h.rto, h.rto == 0)
end

function copas.receivepartial(skt, pattern, prefix)
	local h = handle_of(skt)
	if h.kind == "udp" then
		return udp_receive(h, pattern, h.rto)
	end
	return tcp_receive(h, pattern or "*l", prefix, h.rto, true)
end
copas.receivePartial = copas.receivepartial

function copas.receivefrom(skt, size)
	local h = handle_of(skt)
	return udp_receivefrom(h, size, h.rto)
end

function copas.send(skt, data, i, j)
	local h = handle_of(skt)
	if h.kind == "udp" then
		return NATIVE.send(h, data)
	end
	return tcp_send(h, data, i, j, h.sto)
end

function copas.sendto(skt, data, ip, port)
	local h = handle_of(skt)
	if h.ls then
		return h.ls:sendto(data, ip, port)
	end
	return NATIVE.sendto(h, data, ip, port)
end

function copas.connect(skt, host, port)
	local h = handle_of(skt)
	local ok, err = do_connect(h, host, port, h.cto)
	if not ok and err == "timeout" and sockerrs[running()] then
		err = "Operation already in progress"
	end
	return ok, err
end

function copas.close(skt)
	local h = handle_of(skt)
	return do_close(h)
end

function copas.flush() end

------------------------------------------------------------------------
-- TLS, through weft.tls when it is there.

local tls_ok, tls = pcall(require, "weft.tls")
if not tls_ok then tls = nil end

local function tls_wrap(h, sslt)
	if not tls then
		return nil, "TLS is not available"
	end
	local s = sock_of(h)
	if not s then return nil, "closed" end
	local servername
	if type(h.host) == "string" and not (type(sslt) == "table" and
		(sslt.servername or (sslt.sni and sslt.sni.names))) then
		servername = h.host -- connected through LuaSocket: weft did not see the name
	end
	local ts, err = tls.wrap(s, sslt, servername)
	if not ts then return nil, err end
	return ts
end

-- Wrap the handle's stream in TLS and handshake (raises on failure,
-- returns nil, "timeout" on a timeout, as Copas).
local function do_handshake(h, sslt)
	if not tls then
		return nil, "TLS is not available"
	end
	local ts, err = tls_wrap(h, sslt)
	if not ts then error("TLS/SSL handshake failed: " .. tostring(err), 0) end
	local ok, e = ts:handshake(expires(h.cto or h.rto))
	if not ok then
		if e == "timeout" then return nil, "timeout" end
		error("TLS/SSL handshake failed: " .. tostring(e), 0)
	end
	h.plain = h.s
	h.s = ts
	h.rd = newreader(ts, receiving)
	h.tls = true
	return true
end

function copas.dohandshake(skt, sslt)
	local h = handle_of(skt)
	local ok, err = do_handshake(h, sslt)
	if not ok then return nil, err end
	return skt
end

------------------------------------------------------------------------
-- Wrapped sockets (copas.wrap)

local WT = {} -- TCP wrapper methods
local WU = {} -- UDP wrapper methods
local wrap_tcp_mt = {__index = WT}
local wrap_udp_mt = {__index = WU}
wrap_tcp_mt.__tostring = function(w) return tostring(w.socket) .. " (copas wrapped)" end
wrap_udp_mt.__tostring = wrap_tcp_mt.__tostring
wrapper_mts[wrap_tcp_mt], wrapper_mts[wrap_udp_mt] = true, true

function WT:receive(pattern, prefix)
	local h = self.h
	local rd, to = h.rd, h.rto
	if rd and nremoved == 0 then
		return rd:receive(pattern or "*l", prefix, to, to == 0)
	end
	return tcp_receive(h, pattern or "*l", prefix, to, to == 0)
end

function WT:receivepartial(pattern, prefix)
	local h = self.h
	return tcp_receive(h, pattern or "*l", prefix, h.rto, true)
end

function WT:send(data, i, j)
	local h = self.h
	local s = h.s
	if s and i == nil and j == nil and type(data) == "string" and not h.writing then
		-- the whole string: straight to the socket (one writer at a
		-- time, so that two threads' bytes never interleave)
		local to = h.sto
		counts.write = counts.write + 1
		h.writing = true
		local ok, err, sent = (h.tls and s.send or sock_send)(s, data, nil, to and clock() + to)
		h.writing = false
		counts.write = counts.write - 1
		if nremoved > 0 then after_io() end
		if ok then return #data end
		if err == "timeout" and sent > 0 then
			return tcp_send(h, data, sent + 1, nil, to)
		end
		return nil, errstr(err), sent
	end
	return tcp_send(h, data, i, j, h.sto)
end

-- The TLS parameters with the names given to sock:sni(), in the
-- { wrap = ..., sni = { names = ..., strict = ... } } form.
local function with_sni(w, sslt)
	if not w.sni_names then return sslt end
	local wrapt = type(sslt) == "table" and sslt.wrap or sslt
	return {wrap = wrapt, sni = {names = w.sni_names, strict = w.sni_strict}}
end

function WT:connect(host, port)
	local h = self.h
	local ok, err = copas.connect(self.socket, host, port)
	if ok and self.ssl then
		local hs, herr = do_handshake(h, with_sni(self, self.ssl))
		if not hs then return nil, herr end
	end
	return ok, err
end

function WT:dohandshake(sslt)
	local ok, err = do_handshake(self.h, with_sni(self, sslt or self.ssl))
	if not ok then return nil, err end
	return self
end

function WT:close()
	return do_close(self.h)
end

function WT:settimeout(t)
	return copas.settimeout(self.socket, t)
end

function WT:settimeouts(c, s, r)
	return copas.settimeouts(self.socket, c, s, r)
end

function WT:gettimeouts()
	return copas.gettimeouts(self.socket)
end

function WT:sni(names, strict)
	if not tls then return nil, "TLS is not available" end
	self.sni_names, self.sni_strict = names, strict
	return true
end

function WT:getalpn()
	local h = self.h
	if not h.tls then return nil, "not a tls socket" end
	return h.s:getalpn()
end

function WT:getsniname()
	local h = self.h
	if not h.tls then return nil, "not a tls socket" end
	return h.s:getsniname()
end

function WT:getpeercertificate(...)
	local h = self.h
	if not h.tls then return nil, "not a tls socket" end
	return h.s:getpeercertificate(...)
end

-- Passthroughs to the socket: LuaSocket's object, or weft's own.
local passthrough = {"getpeername", "getsockname", "getstats", "setstats", "setoption",
	"getoption", "setpeername", "setsockname", "shutdown", "getfd", "setfd", "dirty", "bind",
	"listen", "getfamily"}
for _, m in ipairs(passthrough) do
	local f = function(self, ...)
		local h = self.h
		if h.tls and (m == "getsockname" or m == "getpeername" or m == "setoption"
			or m == "getoption") then
			return nil, "not implemented by LuaSec"
		end
		if m == "dirty" then
			return h.rd ~= nil and h.rd:buffered() > 0
		end
		local target = h.ls or h
		local fn = target[m]
		if not fn then return nil, "not supported" end
		return fn(target, ...)
	end
	WT[m] = f
	WU[m] = f
end

function WT:accept()
	local h = self.h
	local s = sock_of(h)
	if not s then return nil, "closed" end
	local c, err = s:accept(expires(h.rto))
	if not c then return nil, errstr(err) end
	return native("tcp", "client", c) -- a raw socket, as LuaSocket's accept
end

function WU:receive(size)
	local h = self.h
	return udp_receive(h, size, h.rto)
end
WU.receivepartial = WU.receive

function WU:receivefrom(size)
	local h = self.h
	return udp_receivefrom(h, size, h.rto)
end

function WU:send(data)
	local h = self.h
	if h.ls then return h.ls:send(data) end
	return NATIVE.send(h, data)
end

function WU:sendto(data, ip, port)
	return copas.sendto(self.socket, data, ip, port)
end

function WU:connect(host, port)
	local h = self.h
	if h.ls then return h.ls:setpeername(host, port) end
	return do_connect(h, host, port, h.cto)
end

function WU:close()
	if self.server then return true end -- the server's socket: not ours to close
	return do_close(self.h)
end

WU.settimeout = WT.settimeout
WU.settimeouts = WT.settimeouts
WU.gettimeouts = WT.gettimeouts

function copas.wrap(skt, sslt)
	local mt = getmetatable(skt)
	if mt == wrap_tcp_mt or mt == wrap_udp_mt then
		return skt
	end
	local h = handle_of(skt)
	local w = {socket = skt, h = h}
	if h.kind == "udp" then
		w.server = servers[skt] ~= nil
		return setmetatable(w, wrap_udp_mt)
	end
	w.ssl = sslt
	return setmetatable(w, wrap_tcp_mt)
end

function copas.handler(connhandler, sslparams)
	return function(skt, ...)
		skt = copas.wrap(skt, sslparams)
		if sslparams then
			local ok, err = skt:dohandshake(sslparams)
			if not ok then
				-- never run the handler on a plain socket
				skt:close()
				return
			end
		end
		return connhandler(skt, ...)
	end
end

------------------------------------------------------------------------
-- Servers


local function serve_tcp(rec)
	local h = rec.h
	local s = sock_of(h)
	local n, backoff = 0, 0.01
	while not rec.stopped do
		local c, err = s:accept()
		if rec.stopped then
			if c then c:close() end
			break
		end
		if c then
			backoff = 0.01
			n = n + 1
			local client = native("tcp", "client", c)
			client.cto, client.sto, client.rto = rec.timeout, rec.timeout, rec.timeout
			local base = copas.getsocketname(rec.skt)
			names[client] = base .. ":client_" .. n
			local autoclose = copas.autoclose -- decided now, as Copas does
			local handler = rec.handler
			spawn(base .. ":handler_" .. n, client, false, function()
				xpcall(handler, on_error, client)
				if autoclose then do_close(client) end
			end)
		elseif err == "closed" then
			break
		else
			-- weft backs off by itself when out of descriptors; any other
			-- error must not spin either, nor escape the loop
			weft.sleep(backoff)
			backoff = math.min(backoff * 2, 1)
		end
	end
end

function copas.addserver(server, handler, timeout, name)
	local h = handle_of(server)
	if name then names[server] = name end
	local rec = {skt = server, h = h, handler = handler, timeout = timeout}
	servers[server] = rec
	nservers = nservers + 1
	if h.kind == "udp" then
		if timeout then h.rto, h.sto, h.cto = timeout, timeout, timeout end
		rec.co = spawn(copas.getsocketname(server) .. ":handler", server, true, handler, server)
	else
		local s = sock_of(h)
		if s and not s:getopt("so_acceptconn") then
			-- bound but not listening (LuaSocket's tcp():bind()): listen
			local okl, e = s:listen()
			if not okl then error("addserver: cannot listen: " .. tostring(e), 2) end
		end
		if not s then error("addserver: the socket is not bound", 2) end
		rec.acceptor = weft.thread(serve_tcp, rec)
	end
	return true
end

function copas.removeserver(skt, keep_open)
	local rec = servers[skt]
	if not rec then return nil, "not a server" end
	servers[skt] = nil
	rec.stopped = true
	nservers = nservers - 1
	check_done()
	local h = rec.h
	if keep_open then
		-- The acceptor must stop waiting, yet the socket stay open: close
		-- the weft socket it waits on, keeping another on the descriptor
		-- (for LuaSocket's objects their own descriptor is enough).
		local old = h.s
		if old then
			if h.ls then
				h.s = nil
			else
				local fd = old:fileno()
				h.s = fd >= 0 and core.adopt(fd) or nil
			end
			old:close()
		end
		return true
	end
	local r = do_close(h)
	return r
end

------------------------------------------------------------------------
-- The loop

local stats = false
local st = {}
local function reset_stats(now)
	st.time_start = now
	st.steps = 0
	st.duration_tot = 0
	st.duration_min = huge
	st.duration_max = 0
end

function copas.status(enable_stats)
	local reading = counts.read + receiving:get()
	local r = {
		running = copas.running,
		read = reading,
		write = counts.write,
		active = nactive - reading - counts.write - counts.timer,
		timer = counts.timer,
		inactive = counts.inactive,
		timeout = counts.timeout,
	}
	if r.active < 0 then r.active = 0 end
	local now = copas.gettime()
	if stats then
		r.time_start = st.time_start
		r.time_end = now
		r.steps = st.steps
		r.duration_tot = st.duration_tot
		r.duration_min = st.steps > 0 and st.duration_min or 0
		r.duration_max = st.duration_max
		r.duration_min_ever = st.duration_min_ever or 0
		r.duration_max_ever = st.duration_max_ever or 0
		r.duration_avg = st.steps > 0 and st.duration_tot / st.steps or 0
		r.time_avg = st.steps > 0 and (now - st.time_start) * 1000 / st.steps or 0
	end
	if enable_stats ~= nil then
		stats = enable_stats and true or false
	end
	if stats then reset_stats(now) end
	return r
end

local function inthread()
	return core.inthread()
end

-- One weft.poll, timed when statistics are on.
local function poll(timeout)
	local t0 = stats and clock()
	local ok, ran = pcall(weft.poll, timeout)
	if ok and ran == nil then ran = false end -- nil, "empty": nothing waits
	if t0 then
		local d = (clock() - t0) * 1000
		st.steps = st.steps + 1
		st.duration_tot = st.duration_tot + d
		if d < st.duration_min then st.duration_min = d end
		if d > st.duration_max then st.duration_max = d end
		if not st.duration_min_ever or d < st.duration_min_ever then st.duration_min_ever = d end
		if not st.duration_max_ever or d > st.duration_max_ever then st.duration_max_ever = d end
	end
	local log = copas._debug_core and copas._debug_log
	if log then log("step:", ok and (ran and "work done" or "nothing to do") or tostring(ran)) end
	return ok, ran
end

function copas.step(timeout)
	if inthread() then
		yield_step()
		return true
	end
	local ok, ran = poll(timeout)
	remote_exit()
	if not ok then return nil, ran end
	return ran
end

local loop_called = false

function copas.loop(init, timeout)
	loop_called = true
	if type(init) == "number" then
		init, timeout = nil, init
	end
	if init then
		copas.addnamedthread("copas_initializer", init)
	end
	exiting = false -- each run of the loop has its own exit
	copas.running = true
	if inthread() then
		driver = weft.sleep_job()
		while true do
			if copas.finished() then
				if not exiting then
					copas.exit()
				end
				if copas.finished() then break end
			end
			driver:sleep(my_exit and EXIT_POLL or nil)
			remote_exit()
		end
		driver = nil
	else
		while true do
			if copas.finished() then
				if not exiting then
					copas.exit()
				end
				if copas.finished() then break end
			end
			local t = timeout
			if my_exit and (not t or t > EXIT_POLL) then t = EXIT_POLL end
			local ok, err = poll(t)
			if not ok then
				copas.running = false
				error(err, 0)
			end
			remote_exit()
			if core.exiting() then break end
		end
	end
	copas.running = false
	return true
end

-- copas.cancelall(): remove every thread and server, so the loop ends.
function copas.cancelall()
	for skt in pairs(servers) do
		copas.removeserver(skt)
	end
	local list = {}
	for co in pairs(state) do list[#list + 1] = co end
	for _, co in ipairs(list) do
		if co ~= running() then copas.removethread(co) end
	end
	copas.exit()
end

-- Loaded inside a weft thread (the launcher's main chunk, say): the loop
-- runs when that thread ends, unless the script ran it itself.
do
	local th, ismain = weft.currentthread()
	-- (not inthread(): require's C frame makes this moment unyieldable)
	if not ismain then
		pcall(weft.onthreadfinish, th, function()
			if loop_called or (nactive == 0 and nservers == 0 and not next(state)) then return end
			weft.thread(function() copas.loop() end)
		end)
	end
end

------------------------------------------------------------------------
-- LuaSocket's try/protect made yield-safe (as Copas does) when LuaSocket
-- is present.

local ls_ok, socket = pcall(require, "socket")
if ls_ok and type(socket) == "table" then
	local function status_handler(ok, ...)
		if ok then return ... end
		local err = (...)
		if type(err) == "table" then return nil, err[1] end
		error(err, 0)
	end
	socket.protect = function(func)
		return function(...)
			return status_handler(pcall(func, ...))
		end
	end
	socket.newtry = function(finalizer)
		return function(...)
			local ok = (...)
			if not ok then
				pcall(finalizer, select(2, ...))
				error({(select(2, ...))}, 0)
			end
			return ...
		end
	end
	socket.try = socket.newtry()
end

------------------------------------------------------------------------
-- Submodules, loaded on first use: copas.lock, copas.http, ...

local submodules = {
	lock = true, semaphore = true, queue = true, timer = true, future = true, http = true,
	ftp = true, smtp = true, debug = true,
}

return setmetatable(copas, {
	__call = function(_, ...)
		return copas.loop(...)
	end,
	__index = function(t, k)
		if submodules[k] then
			local mod = require("weft.copas." .. k)
			if type(mod) == "table" and type(mod.bind) == "function" then
				mod = mod.bind(copas)
			end
			rawset(t, k, mod)
			return mod
		end
	end,
})
