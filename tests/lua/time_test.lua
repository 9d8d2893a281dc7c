-- Time: clock, sleep, sleep_until, sleep jobs, runat/runafter/runevery,
-- timers under a saturating I/O load.
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, is_deeply, test = tap.ok, tap.is, tap.is_deeply, tap.test
local cmp_ok = tap.cmp_ok

local function raises(f, ...)
	return not pcall(f, ...)
end

test("clock is monotonic seconds", function()
	local c1 = weft.clock()
	is(math.type(c1), "float", "clock returns a float")
	local c2 = weft.clock()
	cmp_ok(c2, ">=", c1, "clock does not go back")
	if tap.windows then
		tap.skip("no sleep command on Windows", 2)
	else
		local w1 = weft.clock()
		os.execute("sleep 0.2")
		local dt = weft.clock() - w1
		cmp_ok(dt, ">=", 0.2, "clock advanced across a 0.2 s external sleep")
		cmp_ok(dt, "<", 0.6, "clock advanced by about 0.2 s")
	end
end)

test("sleeping outside a thread raises", function()
	ok(raises(weft.sleep, 0.01), "weft.sleep")
	ok(raises(weft.sleep_until, weft.clock() + 0.01), "weft.sleep_until")
	local sj = weft.sleep_job()
	ok(raises(sj.sleep, sj, 0.01), "sj:sleep")
end)

H.test("sleep and sleep_until", function()
	local t0 = weft.clock()
	weft.sleep(0.1)
	local dt = weft.clock() - t0
	cmp_ok(dt, ">=", 0.1, "sleep(0.1) not early")
	cmp_ok(dt, "<", 0.15, "sleep(0.1) not late")
	local target = weft.clock() + 0.05
	weft.sleep_until(target)
	local now = weft.clock()
	cmp_ok(now, ">=", target, "sleep_until not early")
	cmp_ok(now - target, "<", 0.05, "sleep_until not late")
	t0 = weft.clock()
	weft.sleep(0)
	cmp_ok(weft.clock() - t0, "<", 0.02, "sleep(0) returns promptly")
	t0 = weft.clock()
	weft.sleep_until(t0 - 10)
	cmp_ok(weft.clock() - t0, "<", 0.02, "sleep_until in the past returns promptly")
	is(select("#", weft.sleep(0.001)), 0, "sleep returns nothing")
end)

H.test("sleeps in many threads end in deadline order", function()
	local order = {}
	local delays = { 0.05, 0.01, 0.04, 0.02, 0.03 }
	for i, d in ipairs(delays) do
		weft.thread(function()
			weft.sleep(d)
			order[#order + 1] = i
		end)
	end
	weft.sleep(0.1)
	is_deeply(order, { 2, 4, 5, 3, 1 }, "wake-up order")
end)

H.test("sleep_job wakeup with values", function()
	local sj = weft.sleep_job()
	local got, dt
	local sleeper = weft.thread(function()
		local t0 = weft.clock()
		got = table.pack(sj:sleep(2))
		dt = weft.clock() - t0
	end)
	weft.sleep(0.02)
	is(sj:wakeup("a", 2, nil), true, "wakeup returns true when a thread sleeps")
	weft.sleep(0.02)
	is_deeply(got, { n = 3, "a", 2, nil }, "sleep returns the values given to wakeup")
	cmp_ok(dt or 99, "<", 0.5, "woken before the deadline")
	is(coroutine.status(sleeper), "dead", "sleeper finished")
	is(sj:wakeup("nobody"), false, "wakeup returns false when nobody sleeps")
end)

H.test("sleep_job timeouts", function()
	local sj = weft.sleep_job()
	local t0 = weft.clock()
	local r = table.pack(sj:sleep(0.05))
	local dt = weft.clock() - t0
	is(r.n, 0, "sleep returns nothing when the time ran out")
	cmp_ok(dt, ">=", 0.05, "slept its time")
	cmp_ok(dt, "<", 0.1, "not much longer")
	t0 = weft.clock()
	r = table.pack(sj:sleep_until(t0 + 0.03))
	dt = weft.clock() - t0
	is(r.n, 0, "sleep_until returns nothing when the time ran out")
	cmp_ok(dt, ">=", 0.03, "sleep_until slept until t")
	cmp_ok(dt, "<", 0.08, "sleep_until not much longer")
	is(sj:wakeup(), false, "no sleeper after a timeout")
end)

H.test("sleep_job without a deadline, reused", function()
	local sj = weft.sleep_job()
	local got = {}
	weft.thread(function()
		got[1] = sj:sleep()
		got[2] = sj:sleep_until()
		got[3] = sj:sleep(5)
	end)
	for i, v in ipairs({ "one", "two", "three" }) do
		weft.sleep(0.01)
		is(sj:wakeup(v), true, "wakeup " .. i)
	end
	weft.sleep(0.01)
	is_deeply(got, { "one", "two", "three" }, "a sleep job can be slept on again")
end)

H.test("runat and runafter", function()
	local at, after, after_main, after_waited
	local t0 = weft.clock()
	local j1 = weft.runat(t0 + 0.05, function() at = weft.clock() end)
	local j2 = weft.runafter(0.03, function()
		after = weft.clock()
		after_main = select(2, weft.currentthread())
		weft.sleep(0.001) -- f may wait: it has its own thread
		after_waited = true
	end)
	ok(j1 and j2, "runat/runafter return a timer")
	weft.sleep(0.1)
	ok(at, "runat fired")
	ok(after, "runafter fired")
	is(after_main, false, "runafter's f runs in a weft thread")
	is(after_waited, true, "runafter's f can wait")
	if at and after then
		cmp_ok(at - t0, ">=", 0.05, "runat not early")
		cmp_ok(at - t0, "<", 0.08, "runat not late")
		cmp_ok(after - t0, ">=", 0.03, "runafter not early")
		cmp_ok(after - t0, "<", 0.06, "runafter not late")
	end
end)

H.test("cancel before firing; cancel is idempotent", function()
	local fired = false
	local j = weft.runafter(0.03, function() fired = true end)
	j:cancel()
	j:cancel()
	local fired2 = false
	local j2 = weft.runat(weft.clock() + 0.03, function() fired2 = true end)
	j2:cancel()
	weft.sleep(0.08)
	is(fired, false, "a cancelled runafter does not fire")
	is(fired2, false, "a cancelled runat does not fire")
	ok(pcall(j.cancel, j), "cancel after the deadline is harmless")
end)

H.test("cancel while f runs lets f complete", function()
	local started, completed = false, false
	local j = weft.runafter(0.01, function()
		started = true
		weft.sleep(0.05)
		completed = true
	end)
	weft.sleep(0.03)
	is(started, true, "f started")
	j:cancel()
	weft.sleep(0.06)
	is(completed, true, "f completed after cancel")
end)

H.test("runevery and cancel", function()
	local n, times = 0, {}
	local t0 = weft.clock()
	local j = weft.runevery(0.02, function()
		n = n + 1
		times[n] = weft.clock() - t0
	end)
	weft.sleep(0.11)
	j:cancel()
	local at_cancel = n
	weft.sleep(0.08)
	cmp_ok(at_cancel, ">=", 4, "ran about every 20 ms (at least 4 in 110 ms)")
	cmp_ok(at_cancel, "<=", 6, "not more often (at most 6 in 110 ms)")
	is(n, at_cancel, "no run after cancel")
	cmp_ok(times[1] or 99, ">=", 0.02, "first run after one period")
	j:cancel()
end)

H.test("runevery stops when f returns false", function()
	local n = 0
	local j = weft.runevery(0.01, function()
		n = n + 1
		if n == 3 then return false end
		return true
	end)
	weft.sleep(0.1)
	is(n, 3, "stopped after f returned false")
	local m = 0
	weft.runevery(0.01, function()
		m = m + 1
		if m >= 3 then return false end
		-- returning nothing does not stop
	end)
	weft.sleep(0.1)
	is(m, 3, "returning nil keeps the timer running")
	j:cancel()
end)

-- a connected TCP pair, made inside a thread.
local function tcp_pair()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local a, aerr
	local sj = weft.sleep_job()
	local waiting = false
	weft.thread(function()
		a, aerr = l:accept(weft.clock() + 5)
		if waiting then sj:wakeup() end
	end)
	local c = assert(weft.tcp())
	assert(c:connect("127.0.0.1", l.local_port, weft.clock() + 5))
	if not a and not aerr then
		waiting = true
		sj:sleep(5)
	end
	l:close()
	assert(a, aerr)
	return c, a
end

H.test("timers fire on time under a saturating echo load", function()
	local stop = false
	local echoes = 0
	local pairs_, nthreads = {}, 0
	local sj = weft.sleep_job()
	local function finished()
		nthreads = nthreads - 1
		if nthreads == 0 then sj:wakeup() end
	end
	for i = 1, 6 do
		local c, s = tcp_pair()
		pairs_[i] = { c, s }
		nthreads = nthreads + 2
		weft.thread(function() -- echo server
			local buf = weft.buffer(65536)
			while true do
				local n = s:recv(buf, #buf)
				if not n or n == 0 then break end
				if not s:send(buf, n) then break end
			end
			s:close()
			finished()
		end)
		weft.thread(function() -- client hammering
			local msg = weft.buffer(("x"):rep(16384))
			local buf = weft.buffer(16384)
			while not stop do
				if not c:send(msg) then break end
				if not c:recvn(buf, #msg) then break end
				echoes = echoes + 1
			end
			c:shutdown("w")
			c:close()
			finished()
		end)
	end
	local lates = {}
	for i = 1, 10 do
		local t = weft.clock()
		weft.sleep(0.2)
		lates[i] = weft.clock() - (t + 0.2)
	end
	local timer_lates = {}
	local t0 = weft.clock()
	local j = weft.runevery(0.05, function()
		timer_lates[#timer_lates + 1] = weft.clock() - t0 - 0.05 * (#timer_lates + 1)
	end)
	weft.sleep(0.53)
	j:cancel()
	stop = true
	sj:sleep(5)
	cmp_ok(echoes, ">", 100, "the echo load really ran")
	local worst, early = 0, 0
	for _, l in ipairs(lates) do
		if l > worst then worst = l end
		if l < early then early = l end
	end
	-- Under Wine every socket call is a round trip to its server, which
	-- stalls now and then (a sleep came 193 ms late beside other tests):
	-- the bound is wider there, what it bounds the same.
	local bound = tap.wine and 0.5 or 0.05
	cmp_ok(worst, "<=", bound, ("every sleep(0.2) ended within %d ms of its deadline"):format(
		bound * 1000))
	cmp_ok(early, ">=", -0.0005, "no sleep ended early")
	tap.diag(("sleep lateness (ms): %s; echoes: %d"):format(
		table.concat((function()
			local t = {}
			for i, l in ipairs(lates) do t[i] = ("%.1f"):format(l * 1000) end
			return t
		end)(), " "), echoes))
	cmp_ok(#timer_lates, ">=", 9, "runevery kept firing under load")
	local tworst = 0
	for _, l in ipairs(timer_lates) do
		if math.abs(l) > tworst then tworst = math.abs(l) end
	end
	cmp_ok(tworst, "<=", bound, ("runevery firings within %d ms of schedule"):format(bound * 1000))
	is(nthreads, 0, "echo threads finished")
end, 20)

tap.done()
