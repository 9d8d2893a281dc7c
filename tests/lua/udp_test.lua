-- UDP and raw sockets: sendto/recvnext, connected send/recv, empty
-- datagrams, filtering, flags, timeouts, close, ICMP echo.
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, is_deeply, test = tap.ok, tap.is, tap.is_deeply, tap.test
local cmp_ok = tap.cmp_ok

local function deadline(s)
	return weft.clock() + (s or 5)
end

local function raises(f, ...)
	return not pcall(f, ...)
end

local function udp_bound(host, family)
	local s = assert(weft.udp(family))
	assert(s:bind(host or "127.0.0.1", 0))
	return s
end

test("udp socket objects", function()
	local s = assert(weft.udp())
	is(s:type(), "udp", "type")
	is(s:family(), "inet", "default family")
	is(s:protocol(), "udp", "protocol")
	is(s:getopt("so_type"), 2, "so_type is SOCK_DGRAM")
	is(s:setopt("so_broadcast", true), true, "setopt so_broadcast")
	is(s:getopt("so_broadcast"), true, "getopt so_broadcast")
	is(s:setopt("ip_multicast_loop", false), true, "setopt ip_multicast_loop")
	is(s:getopt("ip_multicast_loop"), false, "getopt ip_multicast_loop")
	is(s:setopt("ip_multicast_ttl", 3), true, "setopt ip_multicast_ttl")
	is(s:getopt("ip_multicast_ttl"), 3, "getopt ip_multicast_ttl")
	ok(raises(s.getopt, s, "no_such_option"), "unknown option raises")
	is(s.local_port, nil, "local_port nil before bind")
	is(s:bind("127.0.0.1", 0), true, "bind")
	cmp_ok(s.local_port or 0, ">", 0, "local_port after bind")
	is(tostring(s.local_addr), "127.0.0.1", "local_addr after bind")
	local s2 = assert(weft.udp())
	local r, err = s2:bind("127.0.0.1", s.local_port)
	is(r, nil, "bind to a used port fails")
	is(err, "address_already_in_use", "bind message")
	s:close()
	s2:close()
end)

H.test("sendto / recvnext", function()
	local a, b = udp_bound(), udp_bound()
	local buf = weft.buffer(100)
	is(b:sendto("127.0.0.1", a.local_port, "hello"), 5, "sendto returns the length")
	local n, sa = a:recvnext(buf, 100, deadline())
	is(n, 5, "recvnext length")
	is(buf:tostring(1, 5), "hello", "datagram contents")
	is(n and sa:family(), "inet", "sender address family")
	is(n and sa:port(), b.local_port, "sender port")
	is(n and sa:addr():tostring(), "127.0.0.1", "sender ip")
	is(n and sa:tostring(), "127.0.0.1:" .. b.local_port, "sender sa:tostring")
	-- buffer, len, view, ai
	is(b:sendto("127.0.0.1", a.local_port, weft.buffer("abcdef"), 3), 3, "sendto a buffer with len")
	is(b:sendto("127.0.0.1", a.local_port, weft.buffer("0123456789"):view(5, 3)), 3, "sendto a view")
	local ai = assert(weft.addr("127.0.0.1", a.local_port, "udp"))
	is(b:sendto(ai, nil, "via ai"), 6, "sendto an ai")
	local got = {}
	for i = 1, 3 do
		local k = a:recvnext(buf, 100, deadline())
		got[i] = k and buf:tostring(1, k)
	end
	is_deeply(got, { "abc", "456", "via ai" }, "datagrams in order")
	-- receive into a view
	local dst = weft.buffer(("."):rep(10))
	assert(b:sendto("127.0.0.1", a.local_port, "xyz"))
	is(a:recvnext(dst:view(4), 7, deadline()), 3, "recvnext into a view")
	is(dst:tostring(), "...xyz....", "view target written in place")
	a:close()
	b:close()
end)

H.test("many datagrams keep their boundaries", function()
	local a, b = udp_bound(), udp_bound()
	local buf = weft.buffer(2000)
	local expect, got = {}, {}
	weft.thread(function()
		for i = 1, 200 do
			local msg = ("%d:"):format(i) .. ("d"):rep(i % 50)
			expect[i] = msg
			assert(b:sendto("127.0.0.1", a.local_port, msg))
			if i % 20 == 0 then weft.sleep(0.001) end
		end
	end)
	for i = 1, 200 do
		local n = a:recvnext(buf, #buf, deadline())
		if not n then break end
		got[i] = buf:tostring(1, n)
	end
	is_deeply(got, expect, "200 datagrams, boundaries and order kept")
	a:close()
	b:close()
end)

H.test("large datagram and truncation", function()
	local a, b = udp_bound(), udp_bound()
	local big = ("0123456789abcdef"):rep(3750) -- 60000 bytes
	is(b:sendto("127.0.0.1", a.local_port, big), #big, "sendto 60000 bytes")
	local buf = weft.buffer(65536)
	local n = a:recvnext(buf, #buf, deadline())
	is(n, #big, "received 60000 bytes")
	ok(n and buf:tostring(1, n) == big, "large datagram byte-exact")
	assert(b:sendto("127.0.0.1", a.local_port, "abcdefgh"))
	assert(b:sendto("127.0.0.1", a.local_port, "next"))
	local small = weft.buffer(3)
	is(a:recvnext(small, 3, deadline()), 3, "a datagram longer than maxlen is truncated")
	is(small:tostring(), "abc", "truncated contents")
	local k = a:recvnext(buf, 100, deadline())
	is(k and buf:tostring(1, k), "next", "the rest of a truncated datagram is discarded")
	a:close()
	b:close()
end)

H.test("recvnext flags (MSG_PEEK)", function()
	local a, b = udp_bound(), udp_bound()
	local MSG_PEEK = 2
	local buf = weft.buffer(100)
	assert(b:sendto("127.0.0.1", a.local_port, "peekaboo"))
	local n, sa = a:recvnext(buf, 100, deadline(), MSG_PEEK)
	is(n, 8, "peeked length")
	is(buf:tostring(1, 8), "peekaboo", "peeked contents")
	is(n and sa:port(), b.local_port, "peeked sender")
	buf:set(1, "--------")
	local n2 = a:recvnext(buf, 100, deadline())
	is(n2, 8, "the datagram is still there after a peek")
	is(buf:tostring(1, 8), "peekaboo", "contents after peek")
	a:close()
	b:close()
end)

H.test("connected send/recv and empty datagrams", function()
	local a, b = udp_bound(), udp_bound()
	local buf = weft.buffer(100)
	is(b:connect("127.0.0.1", a.local_port), true, "connect returns true")
	is(b.remote_port, a.local_port, "remote_port after connect")
	is(tostring(b.remote_addr), "127.0.0.1", "remote_addr after connect")
	is(b:send("ping"), 4, "send returns the length")
	local n, sa = a:recvnext(buf, 100, deadline())
	is(n, 4, "received the datagram")
	is(buf:tostring(1, 4), "ping", "contents")
	is(a:sendto(sa:addr():tostring(), sa:port(), "pong"), 4, "reply with sendto")
	is(b:recv(buf, 100, deadline()), 4, "connected recv")
	is(buf:tostring(1, 4), "pong", "reply contents")
	is(b:send(""), 0, "sending an empty datagram returns 0")
	local n0, sa0 = a:recvnext(buf, 100, deadline())
	is(n0, 0, "an empty datagram is received as 0")
	is(n0 and sa0:port(), b.local_port, "empty datagram has a sender")
	is(a:sendto("127.0.0.1", b.local_port, ""), 0, "sendto an empty datagram")
	is(b:recv(buf, 100, deadline()), 0, "connected recv of an empty datagram is 0")
	is(b:send(weft.buffer("abcdef"), 2), 2, "send a buffer with len")
	local k = a:recvnext(buf, 100, deadline())
	is(k and buf:tostring(1, k), "ab", "buffer with len contents")
	a:close()
	b:close()
end)

H.test("connect filters incoming datagrams; connect('*', 0) unfilters", function()
	local a, c = udp_bound(), udp_bound()
	-- b is bound to an explicit port: Linux keeps an explicit port after
	-- connect(AF_UNSPEC), but drops one picked by bind(port 0)
	local tmp = udp_bound()
	local port = tmp.local_port
	tmp:close()
	local b = assert(weft.udp())
	assert(b:bind("127.0.0.1", port))
	local buf = weft.buffer(100)
	assert(b:connect("127.0.0.1", a.local_port))
	assert(c:sendto("127.0.0.1", b.local_port, "noise"))
	assert(a:sendto("127.0.0.1", b.local_port, "data"))
	local n, sa = b:recvnext(buf, 100, deadline())
	is(n and buf:tostring(1, n), "data", "only the connected peer's datagram arrives")
	is(n and sa:port(), a.local_port, "from the connected peer")
	local bport = b.local_port
	is(b:connect("*", 0), true, "connect('*', 0)")
	is(b.local_port, bport, "local_port kept after connect('*', 0)")
	is(b.remote_port, nil, "remote_port nil after connect('*', 0)")
	assert(c:sendto("127.0.0.1", bport, "n2"))
	local n2, sa2 = b:recvnext(buf, 100, deadline())
	is(n2 and buf:tostring(1, n2), "n2", "unfiltered again")
	is(n2 and sa2:port(), c.local_port, "from the other socket")
	a:close()
	b:close()
	c:close()
end)

H.test("timeouts", function()
	local a = udp_bound()
	local buf = weft.buffer(10)
	local t0 = weft.clock()
	local n, err = a:recvnext(buf, 10, t0 + 0.1)
	local dt = weft.clock() - t0
	is(n, nil, "recvnext returns nil")
	is(err, "timeout", "recvnext message")
	cmp_ok(dt, ">=", 0.1, "recvnext waited until the deadline")
	cmp_ok(dt, "<", 0.2, "recvnext timed out on time")
	local b = udp_bound()
	assert(a:connect("127.0.0.1", b.local_port))
	t0 = weft.clock()
	local n2, err2 = a:recv(buf, 10, t0 + 0.1)
	dt = weft.clock() - t0
	is(n2, nil, "recv returns nil")
	is(err2, "timeout", "recv message")
	cmp_ok(dt, ">=", 0.1, "recv waited until the deadline")
	cmp_ok(dt, "<", 0.2, "recv timed out on time")
	a:close()
	b:close()
end)

H.test("close wakes a coroutine blocked in recvnext", function()
	local a = udp_bound()
	local res
	local th = weft.thread(function()
		local t0 = weft.clock()
		res = table.pack(a:recvnext(weft.buffer(10), 10, deadline()))
		res.dt = weft.clock() - t0
	end)
	weft.sleep(0.03)
	is(res, nil, "recvnext is blocked")
	a:close()
	a:close()
	weft.sleep(0.03)
	is(coroutine.status(th), "dead", "blocked thread woke")
	is(res and res[1], nil, "recvnext returns nil")
	is(res and res[2], "closed", "recvnext message")
	cmp_ok(res and res.dt or 99, "<", 1, "woke promptly")
end)

do
	local s6 = weft.udp("inet6")
	local have6 = s6 and s6:bind("::1", 0)
	if s6 then s6:close() end
	if have6 then
		H.test("UDP on ::1", function()
			local a, b = udp_bound("::1", "inet6"), udp_bound("::1", "inet6")
			is(a:family(), "inet6", "family")
			is(tostring(a.local_addr), "::1", "local_addr")
			local buf = weft.buffer(100)
			is(b:sendto("::1", a.local_port, "six"), 3, "sendto ::1")
			local n, sa = a:recvnext(buf, 100, deadline())
			is(n, 3, "recvnext")
			is(buf:tostring(1, 3), "six", "contents")
			is(n and sa:tostring(), "[::1]:" .. b.local_port, "sender")
			a:close()
			b:close()
		end)
	else
		tap.skip("IPv6 unavailable")
	end
end

test("I/O outside a thread raises", function()
	local a = udp_bound()
	ok(raises(a.recvnext, a, weft.buffer(10), 10, weft.clock() + 0.1), "recvnext in the main thread raises")
	ok(raises(a.recv, a, weft.buffer(10), 10, weft.clock() + 0.1), "recv in the main thread raises")
	ok(raises(a.sendto, a, "127.0.0.1", a.local_port, "x"), "sendto in the main thread raises")
	a:close()
end)

-- Raw sockets: ICMP echo to 127.0.0.1.
local function icmp_checksum(s)
	if #s % 2 == 1 then s = s .. "\0" end
	local sum = 0
	for i = 1, #s, 2 do
		sum = sum + (s:byte(i) << 8) + s:byte(i + 1)
	end
	while sum > 0xffff do sum = (sum & 0xffff) + (sum >> 16) end
	return (~sum) & 0xffff
end

do
	local r, err = weft.raw()
	if not r then
		if err == "access_denied" then
			tap.skip("raw sockets: access_denied (no CAP_NET_RAW)")
		else
			tap.fail("weft.raw() failed with an unexpected message", "got: " .. tostring(err))
		end
	else
		r:close()
		H.test("raw socket: ICMP echo to 127.0.0.1", function()
			local s = assert(weft.raw())
			is(s:type(), "raw", "type")
			is(s:family(), "inet", "family")
			is(s:protocol(), "icmp", "default protocol is icmp")
			local id, seq = 0x5eef, 7
			local payload = "weft-ping-payload"
			local hdr = string.pack(">BBI2I2I2", 8, 0, 0, id, seq)
			local cks = icmp_checksum(hdr .. payload)
			local pkt = string.pack(">BBI2I2I2", 8, 0, cks, id, seq) .. payload
			is(s:sendto("127.0.0.1", 0, pkt), #pkt, "sendto returns the length")
			local buf = weft.buffer(2000)
			local found, from
			local until_ = deadline(3)
			while not found do
				local n, sa = s:recvnext(buf, #buf, until_)
				if not n then tap.diag("recvnext: " .. tostring(sa)) break end
				local data = buf:tostring(1, n)
				local ihl = (data:byte(1) & 0x0f) * 4
				local icmp = data:sub(ihl + 1)
				if #icmp >= 8 then
					local ty, _, _, rid, rseq = string.unpack(">BBI2I2I2", icmp)
					if ty == 0 and rid == id and rseq == seq then
						found = icmp:sub(9)
						from = sa
					end
				end
			end
			is(found, payload, "echo reply with our payload")
			is(from and from:addr():tostring(), "127.0.0.1", "reply from 127.0.0.1")
			s:close()
			-- connected raw socket: send and recv
			local s2 = assert(weft.raw())
			is(s2:connect("127.0.0.1", 0), true, "raw connect")
			local seq2 = 8
			local h2 = string.pack(">BBI2I2I2", 8, 0, 0, id, seq2)
			local pkt2 = string.pack(">BBI2I2I2", 8, 0, icmp_checksum(h2 .. payload), id, seq2) .. payload
			is(s2:send(pkt2), #pkt2, "raw send returns the length")
			local found2
			while not found2 do
				local n = s2:recv(buf, #buf, until_)
				if not n then break end
				local data = buf:tostring(1, n)
				local icmp = data:sub((data:byte(1) & 0x0f) * 4 + 1)
				if #icmp >= 8 then
					local ty, _, _, rid, rseq = string.unpack(">BBI2I2I2", icmp)
					if ty == 0 and rid == id and rseq == seq2 then found2 = icmp:sub(9) end
				end
			end
			is(found2, payload, "echo reply through connected send/recv")
			s2:close()
			local s6 = weft.raw("inet6")
			if s6 then
				is(s6:protocol(), "icmpv6", "inet6 raw default protocol is icmpv6")
				s6:close()
			end
		end)
	end
end

tap.done()
