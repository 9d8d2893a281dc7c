-- Readiness tracking: calls known to fail are skipped (a short TCP read
-- waits for the next edge, a short write waits for room), and nothing is
-- lost by it: data and FIN in one edge are both read, a reader after a
-- short read wakes for later data, a long send to a slow reader completes
-- byte for byte, recvn and recvall gather everything, a local shutdown
-- is seen at once.  (The system-call counts themselves are measured by
-- contrib/bench/syscalls.sh, not here.)
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, cmp_ok = tap.ok, tap.is, tap.cmp_ok

-- A connected pair: server side, client side.
local function pair()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local c = assert(weft.tcp())
	local got
	local th = weft.thread(function() got = l:accept(weft.clock() + 5) end)
	assert(c:connect("127.0.0.1", l.local_port, weft.clock() + 5))
	while not got do weft.sleep(0.001) end
	l:close()
	return got, c
end

H.test("data and FIN in one edge: the short read, then the end", function()
	local s, c = pair()
	assert(c:send("0123456789"))
	c:close()
	weft.sleep(0.05) -- both arrived before the first read
	local buf = weft.buffer(100)
	is(s:recv(buf, 100, weft.clock() + 2), 10, "the data (a short read)")
	local n, err = s:recv(buf, 100, weft.clock() + 2)
	is(n, 0, "then the end of the stream, not a wait for an edge")
	ok(err == nil, err)
	s:close()
end)

H.test("data and FIN while the reader waits", function()
	local s, c = pair()
	local results = {}
	local done = false
	weft.thread(function()
		local buf = weft.buffer(100)
		while true do
			local n, err = s:recv(buf, 100, weft.clock() + 2)
			results[#results + 1] = n or err
			if not n or n == 0 then break end
		end
		done = true
	end)
	weft.sleep(0.01)
	assert(c:send("abc"))
	c:close()
	while not done do weft.sleep(0.005) end
	is(results[#results], 0, "the reader saw the end")
	local total = 0
	for i = 1, #results - 1 do total = total + results[i] end
	is(total, 3, "after all the data")
	s:close()
end)

H.test("after a short read, later data wakes the reader", function()
	local s, c = pair()
	local rounds, bad = 200, 0
	weft.thread(function()
		local buf = weft.buffer(4096)
		for i = 1, rounds do
			local n = s:recv(buf, 4096, weft.clock() + 5)
			if not n or n == 0 then bad = bad + 1; break end
			if not s:send(buf, n) then bad = bad + 1; break end
		end
	end)
	local buf = weft.buffer(4096)
	for i = 1, rounds do
		local msg = ("%d:"):format(i) .. ("x"):rep(i % 97)
		assert(c:send(msg))
		local b, err = c:recvn(buf, #msg, weft.clock() + 5)
		if not b or buf:tostring(1, #msg) ~= msg then
			bad = bad + 1
			tap.diag("round " .. i .. ": " .. tostring(err))
			break
		end
		if i % 50 == 0 then weft.sleep(0.002) end -- let some arrive apart
	end
	is(bad, 0, "every round trip came back whole")
	s:close()
	c:close()
end)

H.test("a long send to a slow reader: short writes wait, nothing is lost", function()
	local s, c = pair()
	local size = 4 * 1024 * 1024
	local data = {}
	for i = 1, size // 1024 do data[i] = ("%09d"):format(i) .. ("."):rep(1014) .. "\n" end
	data = table.concat(data)
	local sent_ok
	weft.thread(function()
		sent_ok = s:send(data, nil, weft.clock() + 20)
		s:close()
	end)
	local got, buf, chunks = 0, weft.buffer(65536), {}
	while true do
		local n = c:recv(buf, 65536, weft.clock() + 20)
		if not n or n == 0 then break end
		chunks[#chunks + 1] = buf:tostring(1, n)
		got = got + n
		if #chunks % 16 == 0 then weft.sleep(0.001) end
	end
	is(sent_ok, true, "send reported success")
	is(got, size, "every byte arrived")
	ok(table.concat(chunks) == data, "in order")
	c:close()
end, 30)

H.test("recvn and recvall gather pieces sent apart", function()
	local s, c = pair()
	weft.thread(function()
		for i = 1, 10 do
			assert(c:send(("%02d"):format(i)))
			weft.sleep(0.003)
		end
		c:shutdown("w")
		local buf = weft.buffer(10)
		c:recv(buf, 10, weft.clock() + 5)
		c:close()
	end)
	local buf = weft.buffer(6)
	local b, n = s:recvn(buf, 6, weft.clock() + 5)
	is(n, 6, "recvn: 6 bytes over three sends")
	is(buf:tostring(), "010203", "recvn: the right bytes")
	local all, len = s:recvall(weft.clock() + 5)
	is(len, 14, "recvall: the rest, to the end")
	is(all and all:tostring(), "04050607080910", "recvall: the right bytes")
	s:close()
end)

H.test("a local shutdown after a short read is seen at once", function()
	local s, c = pair()
	assert(c:send("hi"))
	local buf = weft.buffer(64)
	is(s:recv(buf, 64, weft.clock() + 2), 2, "a short read")
	assert(s:shutdown("r"))
	local t0 = weft.clock()
	local n = s:recv(buf, 64, weft.clock() + 2)
	is(n, 0, "then the end of the read side")
	cmp_ok(weft.clock() - t0, "<", 1, "without waiting for an edge")
	s:close()
	c:close()
end)

tap.done()
