-- Echo torture across four workers sharing one poller and one listening
-- socket: the server reads with random sizes and sleeps at random, the
-- client sends random-sized chunks; every byte must come back in order,
-- and the server's own count (gathered over a channel from all workers)
-- must match.  Every call has a deadline, and run-lua's timeout is the
-- hang watchdog.
local tap = require "tap"
local weft = require "weft"
local ok, is, cmp_ok = tap.ok, tap.is, tap.cmp_ok

local bin = os.getenv("WEFT_BIN")
-- Slow (instrumented) builds divide the stress sizes by WEFT_TEST_SCALE.
local CONNS = 200 // (tonumber(os.getenv("WEFT_TEST_SCALE")) or 1)
local BYTES = 48 * 1024 -- per connection

local server = [[
local weft = require "weft"
local port = tonumber(arg[1])
local counts = weft.channel("counts", 1024)
local s = assert(weft.tcp())
assert(s:listen("127.0.0.1", port))
math.randomseed(weft.worker() * 7919)
local function serve(c)
	local buf = weft.buffer(8192)
	if not c:recvn(buf, 4, weft.clock() + 30) then
		c:close() -- the client's readiness probe
		return
	end
	local kind = buf:tostring(1, 4)
	if kind == "CHRN" then
		-- fd churn: answer and close at once (fd numbers get reused
		-- across workers while events for the old ones may be queued)
		c:send("k")
		c:close()
		return
	end
	if kind == "STAT" then
		-- sum what every worker reported, answer, then end the program
		local want = tonumber((c:recvall(weft.clock() + 30)):tostring())
		local total, conns, by = 0, 0, {}
		while conns < want do
			local m = assert(counts:recv(weft.clock() + 30))
			total = total + m.bytes
			conns = conns + 1
			by[m.worker] = (by[m.worker] or 0) + 1
		end
		local workers = 0
		for _ in pairs(by) do workers = workers + 1 end
		c:send(("%d %d %d"):format(total, conns, workers))
		c:close()
		weft.exit()
		return
	end
	local n = 0
	assert(c:send(buf, 4))
	n = n + 4
	while true do
		local r = c:recv(buf, math.random(1, #buf), weft.clock() + 30)
		if not r or r == 0 then break end
		if math.random() < 0.05 then weft.sleep(math.random() * 0.002) end
		assert(c:send(buf, r, weft.clock() + 30))
		n = n + r
	end
	c:close()
	assert(counts:send({bytes = n, worker = weft.worker()}, weft.clock() + 30))
end
while true do
	local c = s:accept()
	if not c then break end
	weft.thread(serve, c)
end
]]

tap.test("echo torture across 4 workers", function()
	if not bin then
		tap.skip("WEFT_BIN not set", 5)
		return
	end
	local probe = assert(weft.tcp())
	assert(probe:bind("127.0.0.1", 0))
	local port = probe.local_port
	probe:close()
	local path = os.tmpname()
	local f = assert(io.open(path, "w"))
	f:write(server)
	f:close()
	local p = assert(io.popen(("timeout -k 2 120 %s -t 4 %s %d 2>&1"):format(bin, path, port)))

	local good, bad, sent_total = 0, 0, 0
	local churn_ok, churn_n
	local reply
	weft.run(function()
		-- wait for the server
		local t_end = weft.clock() + 10
		while weft.clock() < t_end do
			local c = assert(weft.tcp())
			local okc = c:connect("127.0.0.1", port, weft.clock() + 1)
			c:close()
			if okc then break end
			weft.sleep(0.02)
		end
		local done = 0
		for i = 1, CONNS do
			weft.thread(function()
				local c = assert(weft.tcp())
				assert(c:connect("127.0.0.1", port, weft.clock() + 10))
				local seed = i * 104729
				local function byte(k) return (seed + k * 31) % 251 end
				-- the writer sends random-sized chunks while the reader checks
				local sent = 0
				local header = ("%04d"):format(i % 10000)
				weft.thread(function()
					assert(c:send(header, nil, weft.clock() + 30))
					local chunk = weft.buffer(8192)
					while sent < BYTES do
						local n = math.min(math.random(1, 8192), BYTES - sent)
						for k = 1, n do chunk[k] = byte(sent + k) end
						assert(c:send(chunk, n, weft.clock() + 30))
						sent = sent + n
					end
					c:shutdown("w")
				end)
				local hb = weft.buffer(4)
				local h = c:recvn(hb, 4, weft.clock() + 30)
				local okconn = h and hb:tostring() == header
				local got, buf = 0, weft.buffer(4096)
				while okconn do
					local n = c:recv(buf, #buf, weft.clock() + 30)
					if not n or n == 0 then break end
					for k = 1, n do
						if buf[k] ~= byte(got + k) then okconn = false break end
					end
					got = got + n
				end
				c:close()
				if okconn and got == BYTES then good = good + 1 else bad = bad + 1 end
				sent_total = sent_total + BYTES + 4
				done = done + 1
			end)
			if i % 20 == 0 then weft.sleep(0) end
		end
		while done < CONNS do weft.sleep(0.01) end
		-- fd churn: many short connections, 50 at a time
		local CHURN = 40 * CONNS // 4
		local churned, inflight = 0, 0
		for i = 1, CHURN do
			while inflight >= 50 do weft.sleep(0.001) end
			inflight = inflight + 1
			weft.thread(function()
				local c = assert(weft.tcp())
				if c:connect("127.0.0.1", port, weft.clock() + 10) and c:send("CHRN") then
					local b = weft.buffer(1)
					if c:recvn(b, 1, weft.clock() + 10) and b:tostring() == "k" then
						churned = churned + 1
					end
				end
				c:close()
				inflight = inflight - 1
			end)
		end
		while inflight > 0 do weft.sleep(0.01) end
		churn_ok = churned == CHURN
		churn_n = churned
		local c = assert(weft.tcp())
		assert(c:connect("127.0.0.1", port, weft.clock() + 10))
		assert(c:send("STAT" .. tostring(CONNS)))
		c:shutdown("w")
		local b = c:recvall(weft.clock() + 30)
		reply = b and b:tostring()
		c:close()
	end)
	local out = p:read("a")
	local okp = p:close()
	os.remove(path)
	is(good, CONNS, "every connection echoed every byte in order")
	ok(churn_ok, ("fd churn: every short connection was served (%s)"):format(tostring(churn_n)))
	is(bad, 0, "no connection lost or corrupted data")
	ok(okp, "the server exited cleanly after weft.exit()")
	if not okp then tap.diag(out) end
	local total, conns, workers = (reply or ""):match("(%d+) (%d+) (%d+)")
	is(tonumber(total), sent_total, "the server's count over all workers matches, byte for byte")
	cmp_ok(tonumber(workers) or 0, ">=", 2, "connections were served by several workers")
	tap.diag(("server reply: %s"):format(tostring(reply)))
end)

tap.done()
