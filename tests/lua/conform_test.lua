-- Conformance with the sock API where weft used to differ from it: each
-- test pins one difference that was found and fixed.
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, is_deeply, like = tap.ok, tap.is, tap.is_deeply, tap.like

local function deadline(s)
	return weft.clock() + (s or 5)
end

local function tmppath()
	local p = os.tmpname()
	os.remove(p)
	return p
end

-- Runs f and returns (false, message) if it raised, else true and f's
-- results.
local function try(f, ...)
	return pcall(f, ...)
end

-- Where unix sockets are missing (Wine has no AF_UNIX; Windows before 10),
-- the reason, to skip their checks with; nil where they work.
local function no_unix()
	if not tap.windows then return nil end
	local s, err = weft.tcp("unix")
	if s then s:close() return nil end
	return "no unix sockets here (" .. tostring(err) .. ")"
end

H.test("unix sockets: addresses of unnamed sockets are nil, never stack bytes", function()
	if no_unix() then return tap.skip(no_unix(), 10) end
	local path = tmppath()
	local l = assert(weft.tcp("unix"))
	is(l.local_addr, nil, "an unbound unix socket has no local_addr")
	is(l.remote_addr, nil, "nor a remote_addr")
	is(l:listen(path), true, "listen(path) binds and listens a unix socket")
	is(l.local_addr, path, "the listener's local_addr is its path")
	local c = assert(weft.tcp("unix"))
	is(c:connect(path, nil, deadline()), true, "connect to the path")
	local a = assert(l:accept(deadline()))
	is(a.remote_addr, nil, "a connection accepted from an unnamed client has no remote_addr")
	is(a.local_addr, path, "its local_addr is the listener's path")
	is(c.local_addr, nil, "the unnamed client has no local_addr")
	is(c.remote_addr, path, "its remote_addr is the path")
	assert(c:send("x"))
	local buf = weft.buffer(4)
	is(a:recv(buf, 4, deadline()), 1, "the connection works")
	a:close()
	c:close()
	l:close()
	os.remove(path)
end)

H.test("unix sockets: listen binds an unbound socket", function()
	if no_unix() then return tap.skip(no_unix(), 5) end
	local path = tmppath()
	local l = assert(weft.tcp("unix"))
	local r, err = l:listen(path)
	is(r, true, "listen(path) on a fresh unix socket")
	is(err, nil, "no error")
	if tap.windows then
		tap.skip("no test(1) on Windows to tell a socket file", 1)
	else
		ok(os.execute("test -S '" .. path .. "'"), "the socket file exists")
	end
	l:close()
	os.remove(path)
	-- A unix socket bound beforehand keeps its name.
	local b = assert(weft.tcp("unix"))
	assert(b:bind(path))
	is(b:listen(tmppath()), true, "listen on a bound unix socket ignores the address")
	is(b.local_addr, path, "and keeps the bound path")
	b:close()
	os.remove(path)
end)

H.test("listen twice on one address in one worker is refused", function()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local s = assert(weft.tcp())
	is_deeply({s:listen("127.0.0.1", l.local_port)}, {nil, "address_already_in_use"},
		"the second listen says address_already_in_use")
	-- The two sockets are apart: an option set on one is not the other's.
	assert(s:setopt("so_keepalive", true))
	is(l:getopt("so_keepalive"), false, "options stay apart")
	is(s:getopt("so_acceptconn"), false, "the refused socket is not listening")
	s:close()
	is(l:getopt("so_acceptconn"), true, "the first listener still listens")
	l:close()
end)

tap.test("workers share a listener only with the same backlog and options", function()
	local out, okc = tap.run_workers(2, [[
local weft = require "weft"
local ch = weft.channel("port", 1)
local done = weft.channel("done", 1)
if weft.worker() == 1 then
	local s = assert(weft.tcp())
	assert(s:listen(16, "127.0.0.1", 0))
	assert(ch:send(s.local_port, weft.clock() + 30))
	assert(done:recv(weft.clock() + 30))
	s:close()
else
	local port = assert(ch:recv(weft.clock() + 30))
	local a = assert(weft.tcp())
	print("other backlog: " .. tostring(select(2, a:listen(32, "127.0.0.1", port))))
	local b = assert(weft.tcp())
	if package.config:sub(1, 1) == "\\" then -- no so_reuseport on Windows
		print("other options: not on Windows")
	else
		assert(b:setopt("so_reuseport", true))
		print("other options: " .. tostring(select(2, b:listen(16, "127.0.0.1", port))))
	end
	local c = assert(weft.tcp())
	print("same: " .. tostring(c:listen(16, "127.0.0.1", port)))
	local d = assert(weft.tcp())
	print("twice: " .. tostring(select(2, d:listen(16, "127.0.0.1", port))))
	a:close() b:close() c:close() d:close()
	assert(done:send(true))
end
]])
	if not out then
		tap.skip("WEFT_BIN not set", 5)
		return
	end
	ok(okc, "the program exited cleanly")
	like(out, "other backlog: address_already_in_use", "a different backlog is refused")
	if tap.windows then
		tap.skip("no so_reuseport on Windows: no other option to differ by", 1)
	else
		like(out, "other options: address_already_in_use", "different options are refused")
	end
	like(out, "same: true", "the same backlog and options join")
	like(out, "twice: address_already_in_use", "a second listen in that worker is refused")
end)

H.test("listen(1/0, ...) is the maximum backlog", function()
	local l = assert(weft.tcp())
	local okc, r = try(l.listen, l, 1 / 0, "127.0.0.1", 0)
	ok(okc, "listen(1/0, ...) does not raise")
	is(r, true, "and listens")
	l:close()
	local l2 = assert(weft.tcp())
	ok(not try(l2.listen, l2, 0 / 0, "127.0.0.1", 0), "a NaN backlog raises")
	l2:close()
end)

H.test("cowrap is coro.safewrap: f(yield, ...), returns the wrapper and the thread", function()
	local got
	local wrapper, th = weft.cowrap(function(yield, a, b)
		got = {a, b}
		local c = yield(a + b)
		weft.sleep(0.001) -- a wait inside the body
		local d = yield(c * 2)
		return "done", d
	end)
	is(type(wrapper), "function", "the first result is the wrapper")
	is(type(th), "thread", "the second is the coroutine")
	is(coroutine.status(th), "suspended", "not started yet")
	is(wrapper(1, 2), 3, "the body got (yield, ...) and yield returns to the caller")
	is_deeply(got, {1, 2}, "the arguments follow yield")
	is(wrapper(5), 10, "yield returns the next call's arguments, across a wait")
	is_deeply({wrapper("x")}, {"done", "x"}, "the body's results end it")
	is(coroutine.status(th), "dead", "the thread is dead after")
	ok(not pcall(weft.cowrap, 42), "a non-function raises at the call")
	-- As an iterator
	local out = {}
	for v in weft.cowrap(function(yield)
		for i = 1, 3 do yield(i) end
	end) do
		out[#out + 1] = v
	end
	is_deeply(out, {1, 2, 3}, "works as a for-loop iterator")
end)

H.test("lookup flags are a glue.bor() list: a string of names, a list or a set", function()
	local function lookup(flags)
		return weft.addr("localhost", 80, "tcp", "inet", nil, flags)
	end
	is_deeply({lookup("passive numerichost")}, {nil, "host_not_found"},
		"'passive numerichost': a name is refused under numerichost")
	is_deeply({lookup({numerichost = true})}, {nil, "host_not_found"},
		"{numerichost = true} is honoured")
	is_deeply({lookup({"passive", "numerichost"})}, {nil, "host_not_found"},
		"the list form is honoured")
	ok(lookup({numerichost = false}), "{numerichost = false} leaves the flag out")
	ok(weft.addr("127.0.0.1", 80, "tcp", "inet", nil, "  numerichost   numericserv "),
		"spaces around names are fine")
	ok(not pcall(lookup, "passive bogus"), "an unknown name in a string raises")
	ok(not pcall(lookup, {bogus = true}), "an unknown name in a set raises")
	ok(not pcall(lookup, {[{}] = true}), "a key that is not a name raises")
end)

H.test("setopt: 0 turns a boolean option off; Linux's other options are known", function()
	local s = assert(weft.tcp())
	assert(s:setopt("tcp_nodelay", true))
	is(s:getopt("tcp_nodelay"), true, "on with true")
	assert(s:setopt("tcp_nodelay", 0))
	is(s:getopt("tcp_nodelay"), false, "0 turns it off")
	assert(s:setopt("tcp_nodelay", 1))
	is(s:getopt("tcp_nodelay"), true, "1 turns it on")
	assert(s:setopt("tcp_nodelay", false))
	is(s:getopt("tcp_nodelay"), false, "false turns it off")
	ok(not pcall(s.setopt, s, "tcp_nodelay", "yes"), "a string for a boolean raises")
	-- Timeouts are seconds.
	is(s:setopt("so_rcvtimeo", 1.5), true, "so_rcvtimeo")
	is(s:getopt("so_rcvtimeo"), 1.5, "reads back in seconds")
	is(s:setopt("so_sndtimeo", 0), true, "so_sndtimeo")
	is(s:getopt("so_sndtimeo"), 0, "reads back 0")
	ok(not pcall(s.setopt, s, "so_rcvtimeo", -1), "a negative timeout raises")
	if tap.windows then
		tap.skip("Linux's own socket options (so_timestamp, tcp_info, so_peercred, udp_cork...) are not on Windows", 23)
		ok(not pcall(s.getopt, s, "so_bogus"), "an unknown option still raises")
		s:close()
		return
	end
	for _, name in ipairs({"so_timestamp", "so_keepalive", "tcp_thin_linear_timeouts"}) do
		is(s:setopt(name, true), true, name .. " on")
		is(s:getopt(name), true, name .. " reads on")
	end
	for _, name in ipairs({"so_busy_poll", "so_incoming_cpu", "tcp_window_clamp",
		"tcp_keepalive", "tcp_mss", "ip_mtu_discover", "ip_minttl"}) do
		local v = s:getopt(name)
		is(math.type(v), "integer", name .. " reads an integer")
	end
	is(s:setopt("tcp_window_clamp", 65536), true, "tcp_window_clamp set")
	ok(not pcall(s.setopt, s, "tcp_info", 1), "tcp_info is read-only")
	ok(not pcall(s.setopt, s, "so_peercred", 1), "so_peercred is read-only")
	ok(not pcall(s.getopt, s, "so_bogus"), "an unknown option still raises")
	local c, a
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	weft.thread(function() a = l:accept(deadline()) end)
	c = assert(weft.tcp())
	assert(c:connect("127.0.0.1", l.local_port, deadline()))
	while not a do weft.sleep(0.001) end
	local ti = c:getopt("tcp_info")
	is(type(ti), "table", "tcp_info is a table")
	is(ti and ti.state, 1, "the connection is established (TCP_ESTABLISHED)")
	is(math.type(ti and ti.rtt), "integer", "with the round-trip time")
	local path = tmppath()
	local ul = assert(weft.tcp("unix"))
	assert(ul:listen(path))
	local ua
	weft.thread(function() ua = ul:accept(deadline()) end)
	local uc = assert(weft.tcp("unix"))
	assert(uc:connect(path, nil, deadline()))
	while not ua do weft.sleep(0.001) end
	local cred = ua:getopt("so_peercred")
	is(type(cred), "table", "so_peercred is a table")
	is(cred and cred.pid, tonumber(io.open("/proc/self/stat"):read("n")), "with the peer's pid")
	ua:close() uc:close() ul:close()
	os.remove(path)
	a:close() c:close() l:close() s:close()
	local u = assert(weft.udp())
	is(u:setopt("udp_cork", 0), true, "udp_cork off")
	is(u:getopt("udp_cork"), false, "reads off")
	u:close()
end)

H.test("tcp recv of 0 bytes raises at once instead of reading as end of stream", function()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local a
	weft.thread(function() a = l:accept(deadline()) end)
	local c = assert(weft.tcp())
	assert(c:connect("127.0.0.1", l.local_port, deadline()))
	while not a do weft.sleep(0.001) end
	local buf = weft.buffer(8)
	local t0 = weft.clock()
	local okc, err = pcall(a.recv, a, buf, 0, deadline(1))
	ok(not okc, "recv(buf, 0) raises")
	like(tostring(err), "at least 1 byte", "and says why")
	ok(weft.clock() - t0 < 0.5, "at once, without waiting for data")
	ok(not pcall(a.recv, a, weft.buffer(0)), "an empty buffer raises too")
	assert(c:send("hi"))
	is(a:recv(buf, 8, deadline()), 2, "the socket still works")
	a:close() c:close() l:close()
end)

H.test("a deadline covers the name lookup too (connect, sendto, addr)", function()
	local core = weft.core
	core._resolver_delay(300)
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local c = assert(weft.tcp("inet"))
	local t0 = weft.clock()
	local r, err = c:connect("localhost", l.local_port, weft.clock() + 0.1)
	local dt = weft.clock() - t0
	is_deeply({r, err}, {nil, "timeout"}, "connect times out during the lookup")
	ok(dt < 0.25, ("at its deadline (%.3f s), not after the 0.3 s lookup"):format(dt))
	local u = assert(weft.udp())
	t0 = weft.clock()
	is_deeply({u:sendto("localhost", l.local_port, "x", nil, weft.clock() + 0.1)},
		{nil, "timeout"}, "sendto times out during the lookup")
	ok(weft.clock() - t0 < 0.25, "at its deadline")
	t0 = weft.clock()
	is_deeply({weft.addr("localhost", 80, "tcp", "inet", nil, nil, weft.clock() + 0.1)},
		{nil, "timeout"}, "weft.addr takes a deadline too")
	ok(weft.clock() - t0 < 0.25, "at its deadline")
	is_deeply({weft.addr("localhost", 80, "tcp", "inet", nil, nil, weft.clock() - 1)},
		{nil, "timeout"}, "a deadline already passed times out at once")
	-- A lookup that beats its deadline succeeds.
	local ai = weft.addr("localhost", 80, "tcp", "inet", nil, nil, weft.clock() + 5)
	is(ai and ai:tostring(), "127.0.0.1:80", "a lookup within its deadline succeeds")
	core._resolver_delay(0)
	-- The abandoned lookups finish alone; the loop is not kept waiting.
	c:close() u:close() l:close()
end)

local tcp_pair = require("net_helper").tcp_pair

H.test("recvall_read: nil, \"eof\" at the end; a reader over the partial data on error", function()
	local c, a = tcp_pair()
	assert(c:send("hello"))
	c:close()
	local read = assert(a:recvall_read(deadline()))
	local buf = weft.buffer(16)
	is(read(buf, 16), 5, "the data")
	is_deeply({read(buf, 16)}, {nil, "eof"}, "then nil, \"eof\"")
	a:close()
	c, a = tcp_pair()
	assert(c:send("part"))
	local r, err, rd = a:recvall_read(weft.clock() + 0.1)
	is(r, nil, "a deadline before the end fails")
	is(err, "timeout", "with the message")
	is(type(rd), "function", "and gives a reader over what arrived")
	if type(rd) == "function" then
		is(rd(buf, 16), 4, "which reads the partial data")
		is(buf:tostring(1, 4), "part", "its bytes")
		is_deeply({rd(buf, 16)}, {nil, "eof"}, "then eof")
	end
	a:close() c:close()
end)

H.test("connect binds to its bind arguments", function()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local a
	weft.thread(function() a = l:accept(deadline()) end)
	local c = assert(weft.tcp())
	is(c:connect("127.0.0.1", l.local_port, deadline(), nil, "127.0.0.1", 0), true,
		"connect(host, port, expires, af, bind_host, bind_port)")
	while not a do weft.sleep(0.001) end
	is(a.remote_port, c.local_port, "connected from the bound socket")
	local u = assert(weft.udp())
	local probe = assert(weft.udp())
	assert(probe:bind("127.0.0.1", 0))
	local port = probe.local_port
	probe:close()
	is(u:connect("127.0.0.1", l.local_port, nil, nil, "127.0.0.1", port), true, "udp too")
	is(u.local_port, port, "bound to the port asked for")
	local b = assert(weft.tcp())
	local r, err = b:connect("127.0.0.1", l.local_port, deadline(), nil, "127.0.0.1", a.local_port)
	is(r, nil, "a bind that fails fails the connect")
	is(err, "address_already_in_use", "with the bind's message")
	a:close() c:close() u:close() b:close() l:close()
end)

H.test("two threads receiving on one socket: the second gets nil, \"busy\"", function()
	local c, a = tcp_pair()
	local first, second
	weft.thread(function() first = {a:recv(weft.buffer(8), 8, deadline())} end)
	weft.thread(function() second = {a:recv(weft.buffer(8), 8, deadline())} end)
	weft.sleep(0.01)
	is_deeply(second, {nil, "busy"}, "the second reader is refused with a portable name")
	assert(c:send("x"))
	while not first do weft.sleep(0.001) end
	is_deeply(first, {1}, "the first still gets its data")
	a:close() c:close()
end)

H.test("mistakes raise at the call, naming the public function and its arguments", function()
	local s = assert(weft.tcp())
	local okc, err = pcall(s.connect, s, "127.0.0.1")
	ok(not okc, "connect without a port raises")
	like(tostring(err), "#2 to 'connect' %(port expected%)", "naming the port")
	ok(not pcall(weft.addr), "weft.addr() without arguments raises")
	okc, err = pcall(weft.runafter, 1, nil)
	ok(not okc, "runafter(s, nil) raises")
	like(tostring(err), "#2 to 'runafter'", "naming the function argument")
	ok(not pcall(weft.runevery, nil, function() end), "runevery(nil, f) raises")
	ok(not pcall(weft.runat, 0 / 0, function() end), "runat(NaN, f) raises")
	local u = assert(weft.udp())
	okc, err = pcall(u.sendto, u, "127.0.0.1", 9, {})
	ok(not okc, "sendto with a table for data raises")
	like(tostring(err), "#3 to 'sendto'", "as argument #3 of sendto, not of _sendto")
	okc, err = pcall(u.sendto, u, "127.0.0.1", 9, "x", nil, "soon")
	like(tostring(err), "#5 to 'sendto'", "expires is argument #5")
	okc, err = pcall(s.connect, s, "127.0.0.1", 9, "soon")
	like(tostring(err), "#3 to 'connect'", "connect's expires is argument #3")
	okc, err = pcall(s.listen, s, 0 / 0, "127.0.0.1", 0)
	like(tostring(err), "#1 to 'listen'", "listen's backlog is argument #1")
	s:close() u:close()
end)

H.test("messages with a portable meaning have portable names", function()
	local u = assert(weft.udp())
	if tap.windows then
		tap.skip("Winsock (Wine at least) reports a send on an unconnected udp socket as WSAEINVAL", 1)
	else
		is_deeply({u:send("x")}, {nil, "destination_address_required"},
			"send on an unconnected udp socket")
	end
	assert(u:connect("127.0.0.1", 9))
	is_deeply({u:send(("x"):rep(70000))}, {nil, "message_too_long"}, "a datagram over 64 KiB")
	u:close()
end)

tap.done()
