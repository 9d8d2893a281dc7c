-- weft.spawn and futures: jobs run in a weft thread of whichever worker
-- takes them; arguments and results are serialized.
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, like, cmp_ok, is_deeply = tap.ok, tap.is, tap.like, tap.cmp_ok, tap.is_deeply
-- Slow (instrumented) builds divide the stress sizes by WEFT_TEST_SCALE.
local SCALE = tonumber(os.getenv("WEFT_TEST_SCALE")) or 1

H.test("a function with arguments and results", function()
	local f = weft.spawn(function(a, b, t) return a + b, t.s .. "!", {n = #t.list} end,
		2, 3, {s = "hi", list = {1, 2, 3}})
	is(type(f), "userdata", "spawn returns a future")
	local okv, sum, s, t = f:wait(weft.clock() + 5)
	is(okv, true, "wait returns true first")
	is(sum, 5, "a result")
	is(s, "hi!", "a string result")
	is_deeply(t, {n = 3}, "a table result")
	ok(f:done(), "done afterwards")
	local again = table.pack(f:wait())
	is(again[2], 5, "wait can be called again")
end)

H.test("done before and after; jobs may wait and do I/O", function()
	local f = weft.spawn(function()
		local weft = require "weft"
		weft.sleep(0.05)
		local s = assert(weft.tcp())
		assert(s:listen("127.0.0.1", 0))
		local port = s.local_port
		s:close()
		return port > 0
	end)
	is(f:done(), false, "not done at once")
	local okv, r = f:wait(weft.clock() + 5)
	is(okv, true, "the job finished")
	is(r, true, "it slept and used a socket")
end)

H.test("errors come back as nil, message with a traceback", function()
	local f = weft.spawn(function() error("job-failed") end)
	local r, err = f:wait(weft.clock() + 5)
	is(r, nil, "a failed job gives nil")
	like(err, "job%-failed", "with the message")
	like(err, "traceback", "and a traceback")
	local g = weft.spawn(function() return io.stdout end)
	local r2, err2 = g:wait(weft.clock() + 5)
	is(r2, nil, "a result that cannot cross gives nil")
	like(err2, "cannot be returned", "with a message that says so")
end)

H.test("module.function names", function()
	local f = weft.spawn("string.rep", "ab", 3)
	local okv, r = f:wait(weft.clock() + 5)
	is(r, "ababab", "string.rep ran in the worker")
	local r2, err = weft.spawn("no_such_module_x.f"):wait(weft.clock() + 5)
	is(r2, nil, "an unknown module fails")
	like(err, "no_such_module_x", "naming the module")
	local r3, err3 = weft.spawn("string.nofn"):wait(weft.clock() + 5)
	is(r3, nil, "an unknown function fails")
	like(err3, "not a function", "and says so")
	local r4, err4 = weft.spawn("nodot"):wait(weft.clock() + 5)
	is(r4, nil, "a name without a dot fails")
	like(err4, "module.function", "and says what is expected")
end)

H.test("what cannot be spawned is refused at the call", function()
	local up = 1
	local f, err = weft.spawn(function() return up end)
	is(f, nil, "a function with upvalues is refused")
	like(err, "upvalues", "with a message")
	local g, err2 = weft.spawn(function() end, io.stdout)
	is(g, nil, "an argument that cannot cross is refused")
	like(err2, "userdata", "with a message")
	ok(not pcall(weft.spawn, print), "a C function raises")
	ok(not pcall(weft.spawn, 42), "a number raises")
end)

H.test("handles as arguments: a channel and a sleep job", function()
	local ch = weft.channel(4)
	local sj = weft.sleep_job()
	local f = weft.spawn(function(c, s)
		assert(c:send("from the job"))
		while not s:wakeup("woken by the job") do require("weft").sleep(0.001) end
		return true
	end, ch, sj)
	is(sj:sleep(5), "woken by the job", "the job woke this thread through the sleep job")
	is(ch:recv(weft.clock() + 5), "from the job", "the job sent on the channel it was given")
	local okv, r = f:wait(weft.clock() + 5)
	is(r, true, "the job finished")
end)

H.test("wait timeout", function()
	local f = weft.spawn(function()
		require("weft").sleep(0.3)
		return 1
	end)
	local t0 = weft.clock()
	local r, err = f:wait(t0 + 0.05)
	is(r, nil, "wait times out")
	is(err, "timeout", "with 'timeout'")
	local okv, v = f:wait(weft.clock() + 5)
	is(v, 1, "a later wait still gets the result")
end)

H.test("many jobs in one worker, each exactly once", function()
	local n = 2000
	local futures = {}
	for i = 1, n do futures[i] = weft.spawn(function(x) return x * 2 end, i) end
	local good = 0
	for i = 1, n do
		local okv, v = futures[i]:wait(weft.clock() + 10)
		if okv and v == i * 2 then good = good + 1 end
	end
	is(good, n, "every job ran and returned its own result")
	cmp_ok(weft.stats().jobs_run, ">=", n, "stats count the jobs run")
end)

tap.test("between workers: 100 000 jobs, each exactly once, stolen by the idle worker", function()
	local N = 100000 // SCALE
	local out, okc = tap.run_workers(2, [[
local weft = require "weft"
local N = tonumber(arg[1])
local done = weft.channel("done", 1)
if weft.worker() == 1 then
	local futures = {}
	for i = 1, N do
		futures[i] = weft.spawn(function(x)
			local s = 0
			for k = 1, 200 do s = s + k end -- a little work
			return x, require("weft").worker()
		end, i)
	end
	local good, by = 0, {0, 0}
	for i = 1, N do
		local okv, x, w = futures[i]:wait(weft.clock() + 60)
		if okv and x == i then good = good + 1 end
		if w then by[w] = by[w] + 1 end
	end
	assert(done:send(true))
	print(("results %d of %d; worker1 %d worker2 %d"):format(good, N, by[1], by[2]))
else
	done:recv(weft.clock() + 120)
	print(("stolen %d"):format(weft.stats().jobs_stolen))
end
]], N)
	if not out then
		tap.skip("WEFT_BIN not set", 3)
		return
	end
	ok(okc, "the workers exited cleanly")
	if not okc then tap.diag(out) end
	like(out, ("results %d of %d"):format(N, N), "every job ran once and its result came back")
	local w2 = tonumber(out:match("worker2 (%d+)") or 0)
	cmp_ok(w2, ">", 0, "the second worker ran stolen jobs")
	tap.diag(out)
end)

-- No worker stays parked while jobs wait: the spawning worker is then
-- busy (it never yields), so only the idle worker can run the jobs, and it
-- must do so while the spawner is still busy.
tap.test("an idle worker is woken to run jobs while the spawner is busy", function()
	local out, okc = tap.run_workers(2, [[
local weft = require "weft"
local go = weft.channel("go", 1)
local done = weft.channel("done", 1)
if weft.worker() == 1 then
	assert(go:recv(weft.clock() + 30)) -- worker 2 is parked by now
	local futures = {}
	for i = 1, 20 do
		futures[i] = weft.spawn(function() return require("weft").clock() end)
	end
	local t0 = weft.clock()
	while weft.clock() - t0 < 0.5 do end -- busy, no yield
	local busy_end = weft.clock()
	local during = 0
	for i = 1, 20 do
		local ok, t = futures[i]:wait(weft.clock() + 30)
		if ok and t < busy_end then during = during + 1 end
	end
	assert(done:send(true))
	print(("ran during the busy spell: %d of 20"):format(during))
else
	weft.sleep(0.1)
	assert(go:send(true))
	done:recv(weft.clock() + 30)
end
]])
	if not out then
		tap.skip("WEFT_BIN not set", 2)
		return
	end
	ok(okc, "the workers exited cleanly")
	like(out, "ran during the busy spell: 20 of 20", "every job ran while its spawner was busy")
end)

tap.done()
