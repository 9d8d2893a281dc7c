-- Many workers really running at once: sockets closed under their readers
-- while fd records are reused across workers (every reader ends exactly
-- once, the process exits), and a worker stuck in a long CPU-bound step
-- does not stall another worker's sockets.
local tap = require "tap"
local ok, like, cmp_ok = tap.ok, tap.like, tap.cmp_ok

local SCALE = tonumber(os.getenv("WEFT_TEST_SCALE")) or 1

-- Each worker runs PAR chains; each round of a chain opens a UDP socket,
-- starts a reader on it with a 50 ms deadline and closes the socket under
-- it a few milliseconds later (now and then after the deadline).  Records
-- freed by one worker are reopened by another at once.  A reader whose
-- wait was lost would never end: the chain's own watchdog fails the run.
local churn = [[
local weft = require "weft"
local ROUNDS, PAR = tonumber(arg[1]), tonumber(arg[2])
local results = weft.channel("results", 64)
math.randomseed(weft.worker() * 104729)
local started, ended, closed, timedout, lost = 0, 0, 0, 0, 0
local function chain()
	local buf = weft.buffer(16)
	for _ = 1, ROUNDS do
		local s = assert(weft.udp())
		assert(s:bind("127.0.0.1", 0))
		local done = false
		started = started + 1
		weft.thread(function()
			local n, err = s:recv(buf, #buf, weft.clock() + 0.05)
			assert(n == nil, "no datagram was sent")
			if err == "closed" then closed = closed + 1
			elseif err == "timeout" then timedout = timedout + 1 end
			ended = ended + 1
			done = true
		end)
		weft.sleep(math.random() < 0.1 and 0.06 or math.random() * 0.003)
		s:close()
		local give_up = weft.clock() + 10
		while not done do
			if weft.clock() > give_up then lost = lost + 1; break end
			weft.sleep(0.001)
		end
	end
end
local finished = weft.channel(nil, PAR)
for _ = 1, PAR do
	weft.thread(function() chain(); finished:send(true) end)
end
for _ = 1, PAR do assert(finished:recv(weft.clock() + 120)) end
assert(results:send({started, ended, closed, timedout, lost}, weft.clock() + 30))
if weft.worker() == 1 then
	local t = {0, 0, 0, 0, 0}
	for _ = 1, weft.workers() do
		local r = assert(results:recv(weft.clock() + 60))
		for k = 1, 5 do t[k] = t[k] + r[k] end
	end
	print(("started %d ended %d closed %d timedout %d lost %d"):format(t[1], t[2], t[3], t[4], t[5]))
end
]]

for _, n in ipairs({2, 4}) do
	tap.test(("close under waiting readers across %d workers"):format(n), function()
		local rounds, par = 300 // SCALE, 16
		local out, okc = tap.run_workers(n, churn, rounds, par)
		if not out then
			tap.skip("WEFT_BIN not set", 3)
			return
		end
		ok(okc, "the program exited cleanly")
		local total = n * rounds * par
		like(out, ("started %d ended %d "):format(total, total), "every reader ended exactly once")
		like(out, "lost 0\n", "no reader was left waiting")
	end)
end

-- Worker 2 runs a 1 s step that never yields; meanwhile worker 1 bounces
-- datagrams between two of its own sockets.  Worker 1's I/O must not wait
-- for worker 2 (a poller left unattended, or events routed through the
-- busy worker, would stall it for the whole step).
local busy = [[
local weft = require "weft"
local go = weft.channel("go", 1)
if weft.worker() == 2 then
	assert(go:recv(weft.clock() + 30))
	local stop = weft.clock() + 1
	while weft.clock() < stop do end -- never yields
	return
end
local a = assert(weft.udp()); assert(a:bind("127.0.0.1", 0))
local b = assert(weft.udp()); assert(b:bind("127.0.0.1", 0))
assert(a:connect("127.0.0.1", b.local_port)); assert(b:connect("127.0.0.1", a.local_port))
assert(go:send(true, weft.clock() + 30))
weft.sleep(0.05) -- worker 2 is inside its step now
local buf = weft.buffer(8)
local worst, n, stop = 0, 0, weft.clock() + 0.8
weft.thread(function()
	while true do
		local r = b:recv(buf, 8, weft.clock() + 5)
		if not r or buf:tostring(1, r) == "end" then break end
		assert(b:send(buf, r))
	end
end)
while weft.clock() < stop do
	local t0 = weft.clock()
	assert(a:send("ping"))
	assert(a:recv(buf, 8, weft.clock() + 5))
	local dt = weft.clock() - t0
	if dt > worst then worst = dt end
	n = n + 1
	-- Paced: a few hundred round trips across the busy step prove the
	-- point; an unpaced flood of send/recv on one socket also crashes
	-- the ThreadSanitizer runtime of some toolchains (its fd clocks).
	weft.sleep(0.001)
end
assert(a:send("end"))
print(("round trips %d worst %.1f ms"):format(n, worst * 1000))
]]

tap.test("a CPU-bound worker does not stall another worker's sockets", function()
	local out, okc = tap.run_workers(2, busy)
	if not out then
		tap.skip("WEFT_BIN not set", 3)
		return
	end
	ok(okc, "the program exited cleanly")
	local n, worst = out:match("round trips (%d+) worst ([%d.]+) ms")
	cmp_ok(tonumber(n) or 0, ">", 0, "worker 1 kept bouncing datagrams")
	-- The stall being guarded against lasts the whole 1 s step; a slow or
	-- loaded machine stays far below this bound.
	cmp_ok(tonumber(worst) or 1e9, "<", 500, "no round trip waited for the busy worker")
end)

-- Worker 1 listens on port 0 and tells worker 2 the port the kernel
-- chose; worker 2's listen on that address joins the same socket (it
-- used to fail with "address_already_in_use", leaving one worker).
tap.test("a listener on port 0 is shared with the workers told its port", function()
	local out, okc = tap.run_workers(2, [[
local weft = require "weft"
local ch = weft.channel("port", 1)
local s = assert(weft.tcp())
if weft.worker() == 1 then
	assert(s:listen("127.0.0.1", 0))
	assert(ch:send(s.local_port, weft.clock() + 30))
else
	local port = assert(ch:recv(weft.clock() + 30))
	local ok, err = s:listen("127.0.0.1", port)
	print("worker 2 listen: " .. tostring(ok or err))
	local c = assert(weft.tcp())
	assert(c:connect("127.0.0.1", port, weft.clock() + 5))
	c:close()
end
s:close()
]])
	if not out then
		tap.skip("WEFT_BIN not set", 2)
		return
	end
	ok(okc, "the program exited cleanly")
	like(out, "worker 2 listen: true", "the second worker joined the listener")
end)

tap.done()
