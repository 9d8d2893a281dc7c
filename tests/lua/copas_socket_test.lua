-- Copas layer: sockets with LuaSocket semantics (receive patterns, partial
-- results, send(data, i, j), per-operation timeouts, closing from another
-- thread, one waiter per direction), servers, UDP, weft's own
-- LuaSocket-compatible sockets and LuaSocket's when it is installed, and
-- more clients than select() can hold.
local tap = require "tap"
local weft = require "weft"
local CH = require "copas_helper"
local ok, is, like, cmp_ok = tap.ok, tap.is, tap.like, tap.cmp_ok

local copas = CH.fresh()
local S = copas.socket
local has_luasocket, luasocket = pcall(require, "socket")
if not has_luasocket then luasocket = nil end

-- A server on 127.0.0.1 port 0 running handler for each client (wrapped);
-- returns the server socket and its port.
local function server(handler, timeout, name, sockets)
	local srv
	if sockets == "luasocket" then
		srv = assert(luasocket.bind("127.0.0.1", 0))
	else
		srv = assert(S.bind("127.0.0.1", 0))
	end
	local _, port = srv:getsockname()
	copas.addserver(srv, copas.handler(handler), timeout, name)
	return srv, port
end

-- c:receive(pattern) must time out with the partial result `partial`.
local function times_out(c, pattern, partial, what)
	local d, e, p = c:receive(pattern)
	is(d, nil, what .. ": no result")
	is(e, "timeout", what .. ": timeout")
	is(p, partial, what .. ": the partial result")
end

-- Wait (at most 10 s) until cond() holds.
local function await(cond)
	local t0 = weft.clock()
	while not cond() and weft.clock() - t0 < 10 do copas.pause(0.01) end
end

local function client(port, sockets)
	local c = copas.wrap(sockets == "luasocket" and luasocket.tcp() or S.tcp())
	assert(c:connect("127.0.0.1", port))
	return c
end

for _, kind in ipairs({"weft", "luasocket"}) do
	if kind == "luasocket" and not luasocket then
		tap.skip("LuaSocket is not installed", 1)
		break
	end

	CH.run(copas, kind .. ": echo with receive patterns", function()
		local srv, port = server(function(skt)
			while true do
				local l, err = skt:receive("*l")
				if not l then break end
				assert(skt:send(l .. "\n"))
			end
		end, nil, "echo", kind)
		is(copas.getsocketname(srv), "echo", "server name")
		local c = client(port, kind)
		c:send("one\r\n")
		is(c:receive(), "one", "*l strips CR LF")
		c:send("t\rw\ro\n")
		is(c:receive("l"), "two", "every CR dropped, as LuaSocket")
		c:send("abcdef\n")
		is(c:receive(3), "abc", "count")
		is(c:receive(4, "xy"), "xyde", "count with prefix: the prefix counts towards it")
		is(c:receive("*l", "pre-"), "pre-f", "rest of the line with a prefix")
		c:send("x\n")
		is(c:receive("*l", "p:"), "p:x", "line with prefix")
		c:send("\r\n\r\r\na\rb\r\ny\r\n\r\n")
		is(c:receive(), "", "a lone CR LF is an empty line")
		is(c:receive(), "", "CRs only: empty")
		is(c:receive(), "ab", "CRs inside and at the end dropped")
		is(c:receive("*l", "p:"), "p:y", "CR LF line with a prefix")
		is(c:receive("*l", "p:"), "p:", "empty CR LF line with a prefix")
		is(c:receive(0), "", "zero bytes")
		c:close()
		copas.removeserver(srv)
	end)

	CH.run(copas, kind .. ": the receive limit bounds a line and *a", function()
		local srv, port = server(function(skt)
			local what = skt:receive()
			-- 3 MiB without a newline, then a short line; or 3 MiB then close
			local big = ("z"):rep(3 * 1024 * 1024)
			skt:send(big)
			if what == "line" then skt:send("tail\n") end
		end, nil, nil, kind)
		is(copas.setreceivelimit(1024 * 1024), 64 * 1024 * 1024, "the default limit is 64 MiB")
		local c = client(port, kind)
		c:send("line\n")
		local l, err, partial = c:receive("*l")
		is(l, nil, "a line past the limit fails")
		is(err, "too_large", "with too_large")
		ok(partial and #partial >= 1024 * 1024 and #partial < 1024 * 1024 + 65536,
			"the partial line is about the limit: " .. tostring(partial and #partial))
		local rest = #partial
		while true do
			local l2, e2, p2 = c:receive("*l")
			if l2 then rest = rest + #l2; is(l2:sub(-4), "tail", "the next receive goes on to the line's end"); break end
			if e2 ~= "too_large" then ok(false, "unexpected " .. tostring(e2)); break end
			rest = rest + #p2
		end
		is(rest, 3 * 1024 * 1024 + 4, "every byte of the line came out, limit by limit")
		c:close()
		c = client(port, kind)
		c:send("all\n")
		local a, aerr = c:receive("*a")
		ok(a == nil and aerr == "too_large", "*a past the limit fails too")
		c:close()
		is(copas.setreceivelimit(math.huge), 1024 * 1024, "setreceivelimit returns the previous limit")
		c = client(port, kind)
		c:send("all\n")
		local all = c:receive("*a")
		is(all and #all, 3 * 1024 * 1024, "math.huge lifts it")
		c:close()
		copas.setreceivelimit(64 * 1024 * 1024)
		copas.removeserver(srv)
	end)

	CH.run(copas, kind .. ": *a, closed and partial results", function()
		local srv, port = server(function(skt)
			local what = skt:receive()
			if what == "all" then
				skt:send(("x"):rep(100000))
			elseif what == "partial" then
				skt:send("no newline")
			end
		end, nil, nil, kind)
		local c = client(port, kind)
		c:send("all\n")
		local d, err = c:receive("*a")
		is(d and #d, 100000, "*a reads until close")
		is(err, nil, "no error")
		local d2, err2, p2 = c:receive("*a", "pre")
		is(d2, nil, "*a again on the closed stream: nothing")
		is(err2, "closed", "closed")
		is(p2, "pre", "the prefix as partial")
		c:close()
		c = client(port, kind)
		c:send("partial\n")
		local l, e, part = c:receive("*l")
		is(l, nil, "no line")
		is(e, "closed", "closed")
		is(part, "no newline", "partial line returned")
		c:close()
		c = client(port, kind)
		c:send("partial\n")
		local n, e2, p2 = c:receive(100)
		is(e2, "closed", "count: closed")
		is(p2, "no newline", "count: partial")
		c:close()
		copas.removeserver(srv)
	end)

	CH.run(copas, kind .. ": timeouts per operation", function()
		local hold = {}
		local srv, port = server(function(skt)
			skt:send("abc")
			copas.pause(0.3)
			skt:send("def\n")
			copas.pause(0.3)
		end, nil, nil, kind)
		local c = client(port, kind)
		c:settimeout(0.1)
		local t0 = weft.clock()
		local l, e, p = c:receive("*l")
		is(l, nil, "timed out")
		is(e, "timeout", "timeout error")
		is(p, "abc", "partial data with the timeout")
		cmp_ok(weft.clock() - t0, "<", 0.28, "within the timeout, not the peer's pause")
		c:settimeout(nil)
		is(c:receive("*l", p), "abcdef", "then the rest, with the partial as prefix")
		c:close()

		c = client(port, kind)
		c:settimeouts(nil, nil, 0.05)
		local _, e3 = c:receive(10)
		is(e3, "timeout", "settimeouts receive")
		c:settimeouts(nil, nil, -1)
		local x = c:receive(4)
		is(x, "def\n", "negative: no timeout again (the partial went with the timeout)")
		c:close()
		local r, msg = c:settimeout("x")
		is(r, nil, "bad timeout refused")
		is(msg, "timeout must be 'nil' or a number", "message")
		copas.removeserver(srv)
	end)

	CH.run(copas, kind .. ": receive with timeout 0 behaves as receivepartial", function()
		local srv, port = server(function(skt)
			skt:send("12345")
			copas.pause(0.1)
		end, nil, nil, kind)
		local c = client(port, kind)
		copas.pause(0.03)
		c:settimeout(0)
		times_out(c, 10, "12345", "not all there")
		c:close()
		copas.removeserver(srv)
	end)

	CH.run(copas, kind .. ": *a versus receivepartial on a stream", function()
		local srv, port = server(function(skt)
			for i = 1, 4 do
				skt:send(("%d"):format(i):rep(1000))
				copas.pause(0.05)
			end
		end, nil, nil, kind)
		local c = client(port, kind)
		c:settimeout(0.5)
		local d = c:receive("*a")
		is(d and #d, 4000, "*a with a timeout longer than the gaps reads all")
		c:close()
		c = client(port, kind)
		c:settimeout(0.5)
		local chunks, total = 0, 0
		while true do
			local all, err, part = c:receivepartial("*a")
			if all then total = total + #all break end
			if err ~= "timeout" then break end
			chunks = chunks + 1
			total = total + #part
		end
		is(total, 4000, "receivepartial got everything")
		cmp_ok(chunks, ">=", 2, "in several chunks")
		c:close()
		copas.removeserver(srv)
	end)

	CH.run(copas, kind .. ": send(data, i, j) and names", function()
		local got
		local srv, port = server(function(skt)
			got = skt:receive("*a")
		end, nil, "named", kind)
		local c = client(port, kind)
		is(c:send("0123456789", 3, 5), 5, "returns the last index sent")
		is(c:send("abcdef", -2), 6, "negative i")
		is(c:send("xyz", 2), 3, "from i")
		is(c:send(""), 0, "empty")
		c:close()
		copas.pause(0.05)
		is(got, "234efyz", "the right bytes")
		copas.removeserver(srv)
	end)
end

CH.run(copas, "handler names and server timeouts", function()
	local names_seen, tos = {}, {}
	local srv = assert(S.bind("127.0.0.1", 0))
	local _, port = srv:getsockname()
	copas.addserver(srv, function(skt)
		names_seen[#names_seen + 1] = copas.getthreadname() .. "|" .. copas.getsocketname(skt)
		local _, _, r = copas.gettimeouts(skt)
		tos[#tos + 1] = r
		local w = copas.wrap(skt)
		ok(copas.wrap(w) == w, "wrapping twice gives the same wrapper")
		is(copas.getsocketname(w), copas.getsocketname(skt), "a wrapper has its socket's name")
		w:receive()
	end, 0.2, "srv")
	for i = 1, 2 do
		local c = client(port)
		copas.pause(0.01)
		c:close()
	end
	copas.pause(0.05)
	table.sort(names_seen)
	is(names_seen[1], "srv:handler_1|srv:client_1", "first names")
	is(names_seen[2], "srv:handler_2|srv:client_2", "second names")
	is(tos[1], 0.2, "timeout inherited by the client")
	is(copas.removeserver(srv), 1, "removeserver closes")
end)

CH.run(copas, "closing from another thread wakes the reader and writer", function()
	local srv, port = server(function(skt) copas.pause(0.3) end)
	local c = client(port)
	local res
	copas.addthread(function()
		res = table.pack(c:receive())
	end)
	copas.pause(0.02)
	c:close()
	copas.pause(0.02)
	is(res and res[2], "closed", "blocked reader got closed")
	local r, e = c:send("x")
	is(e, "closed", "send on a closed socket")
	copas.removeserver(srv)
end)

CH.run(copas, "status counts readers", function()
	local srv, port = server(function(skt) copas.pause(0.1) skt:send("x\n") end)
	local c = client(port)
	local before = copas.status().read
	copas.addthread(function() c:receive() end)
	copas.pause(0.03)
	is(copas.status().read, before + 1, "a thread waiting in receive is counted in read")
	copas.pause(0.15)
	is(copas.status().read, before, "and no longer once it returned")
	c:close()
	copas.removeserver(srv)
end)

CH.run(copas, "one reader per socket: a second gets an error, not a stale wait", function()
	local srv, port = server(function(skt)
		copas.pause(0.05)
		skt:send("for the first\n")
		copas.pause(0.05)
	end)
	local c = client(port)
	local first
	copas.addthread(function() first = c:receive() end)
	copas.pause(0.01)
	local l, e = c:receive()
	is(l, nil, "second reader refused")
	is(e, "Operation already in progress", "with Copas's error")
	copas.pause(0.1)
	is(first, "for the first", "the first reader got its line")
	c:close()
	copas.removeserver(srv)
end)

-- A server that reads nothing until released, then everything: returns
-- it, a client connected to it and the function that releases it.
local function stalled_peer()
	local released = false
	local srv, port = server(function(skt)
		while not released do copas.pause(0.01) end
		skt:receive("*a")
	end)
	return srv, client(port), function() released = true end
end

CH.run(copas, "send timeout returns the last byte sent", function()
	local srv, c, release = stalled_peer()
	c:settimeouts(nil, 0.1, nil)
	local big = ("y"):rep(16 * 1024 * 1024)
	local t0 = weft.clock()
	local r, e, last = c:send(big)
	is(r, nil, "not all sent")
	is(e, "timeout", "timeout")
	ok(last and last > 0 and last < #big, "the last byte sent: " .. tostring(last))
	cmp_ok(weft.clock() - t0, "<", 3, "in bounded time")
	release()
	c:close()
	copas.removeserver(srv)
end)

if luasocket then
	CH.run(copas, "connect timeout", function()
		-- a listener nobody accepts from, its backlog filled
		local l = luasocket.tcp()
		assert(l:bind("127.0.0.1", 0))
		assert(l:listen(0))
		local _, port = l:getsockname()
		local fill = {}
		local timed_out, err
		for i = 1, 8 do
			local c = copas.wrap(S.tcp())
			c:settimeouts(0.1, nil, nil)
			local t0 = weft.clock()
			local r, e = c:connect("127.0.0.1", port)
			fill[#fill + 1] = c
			if not r then
				timed_out, err = weft.clock() - t0, e
				break
			end
		end
		if timed_out then
			is(err, "timeout", "connect timed out")
			cmp_ok(timed_out, "<", 2, "within the timeout, not the system's")
			copas.usesockettimeouterrors(true)
			local c = copas.wrap(S.tcp())
			c:settimeouts(0.05, nil, nil)
			local _, e2 = c:connect("127.0.0.1", port)
			fill[#fill + 1] = c
			is(e2, "Operation already in progress", "LuaSocket's error with usesockettimeouterrors")
			copas.usesockettimeouterrors(false)
		else
			tap.skip("the system accepted every connection into the backlog", 3)
		end
		for _, c in ipairs(fill) do c:close() end
		l:close()
	end)
end

CH.run(copas, "one writer per socket", function()
	local srv, c, release = stalled_peer()
	local big = ("x"):rep(8 * 1024 * 1024)
	local first
	copas.addthread(function() first = c:send(big) end)
	copas.pause(0.05)
	local r, e = c:send("more")
	is(r, nil, "second writer refused")
	is(e, "Operation already in progress", "with Copas's error")
	release()
	copas.pause(0.01)
	while not first do copas.pause(0.01) end
	is(first, #big, "the first writer sent everything")
	c:close()
	copas.removeserver(srv)
end)

CH.run(copas, "a thread removed while it sends", function()
	local srv, c, release = stalled_peer()
	local writes = copas.status().write
	local big = ("x"):rep(8 * 1024 * 1024)
	local after = false
	local co = copas.addthread(function()
		c:send(big)
		after = true
	end)
	await(function() return copas.status().write > writes end)
	is(copas.status().write, writes + 1, "the sender counts as writing")
	copas.removethread(co)
	-- its send goes on until the peer has read it all, then it ends
	release()
	await(function() return copas.status().write == writes end)
	is(copas.status().write, writes, "once its send is over, it no longer counts as writing")
	is(after, false, "it did not go on after its send")
	is(c:send("more"), 4, "the socket takes another writer")
	c:close()
	copas.removeserver(srv)
end)

CH.run(copas, "wrapper receive and send: defaults and failures", function()
	local srv, port = server(function(skt)
		skt:send("one\ntwo\n")
		skt:receive("*a")
	end)
	local c = client(port)
	is(c:receive(nil, "p-"), "p-one", "no pattern is *l, with the prefix")
	is(c:receive(false), "two", "false is *l too")
	local writes = copas.status().write
	c:close()
	local r, e, last = c:send("x")
	is(r, nil, "send on a closed wrapper fails")
	is(e, "closed", "with closed")
	is(copas.status().write, writes, "and leaves the write count as it was")
	local f = getmetatable(c).__index
	ok(not pcall(f.send, {}, "x"), "send on a table that is no wrapper raises")
	ok(not pcall(f.receive, {}), "so does receive")
	copas.removeserver(srv)
end)

CH.run(copas, "a reader waiting with nothing buffered holds no storage", function()
	local step = 0
	local srv, port = server(function(skt)
		await(function() return step >= 1 end)
		skt:send("first\n")
		await(function() return step >= 2 end)
		skt:send("sec")
		await(function() return step >= 3 end)
		skt:send("ond\n" .. ("z"):rep(10000) .. "\n")
		skt:receive("*a")
	end)
	local c = client(port)
	local lines = {}
	copas.addthread(function()
		for _ = 1, 3 do lines[#lines + 1] = c:receive() end
	end)
	-- the reader is made by the first receive
	await(function() return c.h.rd and c.h.rd:capacity() == 0 end)
	local rd = c.h.rd
	is(rd:capacity(), 0, "waiting for the first line: no storage")
	step = 1
	await(function() return lines[1] ~= nil end)
	is(lines[1], "first", "the line came")
	await(function() return rd:capacity() == 0 end)
	is(rd:capacity(), 0, "waiting again, nothing buffered: none again")
	step = 2
	await(function() return rd:buffered() > 0 end)
	ok(rd:capacity() > 0, "a part of a line is buffered: storage kept while waiting")
	step = 3
	await(function() return #lines == 3 end)
	is(lines[2], "second", "the line put together")
	is(lines[3], ("z"):rep(10000), "a line longer than the storage")
	c:settimeouts(nil, nil, 0.05)
	times_out(c, "*l", "", "a timeout while the storage is given up")
	c:close()
	copas.removeserver(srv)
end)

CH.run(copas, "weft sockets handed to Copas directly", function()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	copas.addserver(l, copas.handler(function(skt) skt:send(skt:receive() .. "!\n") end))
	local c = copas.wrap(assert(weft.tcp()))
	assert(c:connect("127.0.0.1", l.local_port))
	c:send("w\n")
	is(c:receive(), "w!", "weft listener and weft client through Copas")
	c:close()
	copas.removeserver(l)
	local w = copas.wrap(S.tcp())
	copas.settimeout(w, 1)
	is(select(3, copas.gettimeouts(w)), 1, "the low-level functions take wrappers too")
	ok(not pcall(copas.wrap, {}), "not a socket: raises")
	ok(not pcall(copas.wrap, weft.buffer(1)), "a weft buffer is not a socket")
end)

CH.run(copas, "connect errors and twice", function()
	local srv, port = server(function() end)
	local c = client(port)
	local r, e = c:connect("127.0.0.1", port)
	is(r, nil, "second connect fails")
	is(e, "already connected", "already connected")
	c:close()
	copas.removeserver(srv)
	local d = copas.wrap(S.tcp())
	local r2, e2 = d:connect("127.0.0.1", port)
	is(r2, nil, "refused")
	is(e2, "connection refused", "LuaSocket's message")
end)

for _, kind in ipairs({"weft", "luasocket"}) do
	if kind == "luasocket" and not luasocket then break end
	CH.run(copas, kind .. ": removeserver keep_open, then add it again", function()
		local lib = kind == "weft" and S or luasocket
		local srv = assert(lib.bind("127.0.0.1", 0))
		local _, port = srv:getsockname()
		local got = {}
		for i = 1, 3 do
			copas.addserver(srv, function(c)
				got[#got + 1] = copas.receive(c)
				copas.removeserver(srv, true)
			end)
			local c = copas.wrap(S.tcp())
			assert(c:connect("127.0.0.1", port))
			c:send("hi " .. i .. "\n")
			copas.pause(0.05)
			c:close()
		end
		is(table.concat(got, ","), "hi 1,hi 2,hi 3", "each connection served once, none lost")
		ok(srv:getsockname() ~= nil, "still usable")
		srv:close()
	end)
end

if luasocket then
	CH.run(copas, "a LuaSocket socket bound but not listening still serves", function()
		local srv = luasocket.tcp()
		assert(srv:bind("127.0.0.1", 0))
		local _, port = srv:getsockname()
		copas.addserver(srv, copas.handler(function(skt) skt:send("yes\n") end))
		local c = client(port)
		is(c:receive(), "yes", "accepted")
		c:close()
		copas.removeserver(srv)
	end)
end

CH.run(copas, "UDP responder", function()
	local u = S.udp()
	assert(u:setsockname("127.0.0.1", 0))
	local _, port = u:getsockname()
	copas.addserver(u, function(skt)
		is(copas.getthreadname(), copas.getsocketname(u) .. ":handler", "UDP handler name")
		skt = copas.wrap(skt)
		while true do
			local data, ip, rport = skt:receivefrom()
			if not data then break end
			if data == "quit" then break end
			skt:sendto(data:upper(), ip, rport)
		end
		is(skt:close(), true, "a wrapped server UDP socket's close is a no-op")
	end, nil, "udp")
	local c = copas.wrap(S.udp())
	assert(c:setpeername("127.0.0.1", port))
	c:send("hello")
	c:settimeout(1)
	is(c:receive(), "HELLO", "answer")
	c:send("quit")
	copas.pause(0.02)
	copas.removeserver(u)
	c:close()
end)

CH.run(copas, "weft's own constructors: connect, accept, options", function()
	local l = assert(S.bind("127.0.0.1", 0))
	local _, port = l:getsockname()
	copas.addthread(function()
		local s = assert(l:accept())
		ok(s:getpeername() == "127.0.0.1", "accepted peer")
		local w = copas.wrap(s)
		w:send("hi\n")
		w:close()
	end)
	local c = assert(S.connect("127.0.0.1", port))
	ok(c:setoption("tcp-nodelay", true), "setoption")
	-- Set by LuaSocket programs on every platform (accepted and a no-op
	-- on Windows, where weft does not offer it).
	is(c:setoption("reuseaddr", true), 1, "setoption reuseaddr")
	is(c:getoption("tcp-nodelay"), true, "getoption")
	ok(tostring(c):match("^tcp{client}"), "tostring like LuaSocket")
	is(copas.receive(c), "hi", "copas.receive on a raw socket")
	is(select(2, copas.receive(c)), "closed", "then closed")
	ok(c:getfd() >= 0, "getfd")
	c:close()
	l:close()
end)

tap.test("more clients than FD_SETSIZE", function()
	local n = 1100
	local served, answered = 0, 0
	copas.loop(function()
		local srv = assert(S.bind("127.0.0.1", 0, 2048))
		local _, port = srv:getsockname()
		copas.addserver(srv, copas.handler(function(skt)
			local l = skt:receive()
			if l then skt:send(l .. "\n") served = served + 1 end
		end))
		local clients = {}
		for i = 1, n do
			clients[i] = copas.addthread(function()
				local c = copas.wrap(S.tcp())
				c:settimeout(20)
				if c:connect("127.0.0.1", port) then
					copas.pause(0.2) -- all connected at once
					c:send("ping " .. i .. "\n")
					if c:receive() == "ping " .. i then answered = answered + 1 end
				end
				c:close()
			end)
		end
		while answered + 0 < n do
			copas.pause(0.05)
			if copas.status().active == 0 and answered < n and served >= n then break end
		end
		copas.removeserver(srv)
	end)
	is(served, n, "every client served")
	is(answered, n, "every client answered")
end)

if luasocket then
	CH.run(copas, "LuaSocket objects stay usable", function()
		local srv = assert(luasocket.bind("127.0.0.1", 0))
		local _, port = srv:getsockname()
		copas.addserver(srv, copas.handler(function(skt)
			skt:send(skt:receive() .. "!\n")
		end))
		local raw = luasocket.tcp()
		local c = copas.wrap(raw)
		assert(c:connect("127.0.0.1", port))
		c:send("ls\n")
		is(c:receive(), "ls!", "through LuaSocket objects")
		ok(raw:getpeername() == "127.0.0.1", "the LuaSocket object still works")
		c:close()
		copas.removeserver(srv)
	end)
	tap.test("yield-safe socket.protect/newtry installed", function()
		local try = luasocket.newtry(function() end)
		local f = luasocket.protect(function() try(nil, "bad") end)
		local r, e = f()
		is(r, nil, "protect returns nil")
		is(e, "bad", "and the error")
	end)
end

tap.done()
