-- Threads and the loop: newthread, resume, thread, suspend, transfer, yield,
-- cowrap, currentthread, onthreadfinish, threadenv, poll, start, stop, run,
-- seterrorhandler, wakehandle.  The file runs in the main Lua thread (launcher -m).
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, is_deeply, like, test = tap.ok, tap.is, tap.is_deeply, tap.like, tap.test
local cmp_ok = tap.cmp_ok

local function raises(f, ...)
	return not pcall(f, ...)
end

local function deadline(s)
	return weft.clock() + (s or 5)
end

-- poll first, while nothing else is pending in the loop.
test("poll", function()
	local t0 = weft.clock()
	local r, err = weft.poll(5)
	local dt = weft.clock() - t0
	is_deeply({r, err}, {nil, "empty"}, "poll with nothing to wait for returns nil, \"empty\"")
	cmp_ok(dt, "<", 1, "at once, not at its timeout")
	local sj = weft.sleep_job()
	weft.thread(function() sj:sleep(0.5) end)
	t0 = weft.clock()
	r = weft.poll(0.05)
	dt = weft.clock() - t0
	is(r, false, "poll with a thread waiting returns false on timeout")
	cmp_ok(dt, ">=", 0.045, "poll waited for its timeout")
	cmp_ok(dt, "<", 0.45, "poll did not wait much longer")
	sj:wakeup()
	weft.poll(1)
	local flag = false
	weft.thread(function()
		weft.sleep(0.02)
		flag = true
	end)
	t0 = weft.clock()
	local r2 = weft.poll(2)
	dt = weft.clock() - t0
	is(r2, true, "poll returns true when a thread ran")
	is(flag, true, "the sleeping thread ran")
	cmp_ok(dt, "<", 1, "poll returned when the timer fired, not at its timeout")
	is_deeply({weft.poll(0)}, {nil, "empty"}, "poll(0) with nothing left is empty")
end)

test("currentthread in the main thread", function()
	local th, ismain = weft.currentthread()
	is(type(th), "thread", "currentthread returns a coroutine")
	is(ismain, true, "ismain is true in the main thread")
end)

test("newthread does not start the thread", function()
	local ran = false
	local th = weft.newthread(function() ran = true end, "named")
	is(type(th), "thread", "newthread returns a coroutine")
	is(ran, false, "function not called yet")
	is(coroutine.status(th), "suspended", "thread is suspended")
	weft.resume(th)
	is(ran, true, "resume runs it")
	is(coroutine.status(th), "dead", "thread finished")
end)

test("resume returns the values of suspend, then the results", function()
	local th = weft.newthread(function(a, b)
		local x, y = weft.suspend(a + b, "s")
		local z = weft.suspend(x .. y)
		return z * 2, "end"
	end)
	local r = table.pack(weft.resume(th, 1, 2))
	is_deeply(r, { n = 2, 3, "s" }, "first resume returns suspend's values")
	r = table.pack(weft.resume(th, "p", "q"))
	is_deeply(r, { n = 1, "pq" }, "second resume passes values into suspend")
	r = table.pack(weft.resume(th, 21))
	is_deeply(r, { n = 2, 42, "end" }, "last resume returns the thread's results")
end)

test("coroutine.yield in a thread body counts as suspend", function()
	local th = weft.newthread(function()
		local v = coroutine.yield("y1", "y2")
		return "got " .. tostring(v)
	end)
	is_deeply(table.pack(weft.resume(th)), { n = 2, "y1", "y2" }, "values of coroutine.yield")
	is(weft.resume(th, 9), "got 9", "resume passes values into coroutine.yield")
end)

test("resume raises the thread's error in the caller", function()
	local th = weft.newthread(function() error("resume-boom") end)
	local fin
	weft.onthreadfinish(th, function(t, okv, err) fin = { t == th, okv, err } end)
	local good, err = pcall(weft.resume, th)
	is(good, false, "resume raised")
	like(tostring(err), "resume%-boom", "the thread's error message")
	ok(fin, "onthreadfinish ran for a thread that failed in resume")
	if fin then
		is(fin[1], true, "handler got the thread")
		is(fin[2], false, "handler got ok = false")
		like(tostring(fin[3]), "resume%-boom", "handler got the error")
	end
end)

test("thread(f, ...) starts the thread with arguments", function()
	local got
	local th = weft.thread(function(a, b)
		got = { a, b }
		weft.suspend()
	end, "x", 7)
	is(type(th), "thread", "thread returns the coroutine")
	is_deeply(got, { "x", 7 }, "arguments passed")
	weft.resume(th)
	is(coroutine.status(th), "dead", "thread finished after resume")
end)

test("resume starts threads before the loop runs", function()
	local order = {}
	weft.thread(function()
		order[#order + 1] = "t1 start"
		weft.sleep(0.04)
		order[#order + 1] = "t1 end"
	end)
	weft.thread(function()
		order[#order + 1] = "t2 start"
		weft.sleep(0.01)
		order[#order + 1] = "t2 end"
	end)
	order[#order + 1] = "main"
	is(weft.start(5), true, "start returns true when all threads finished")
	is_deeply(order, { "t1 start", "t2 start", "main", "t2 end", "t1 end" }, "order of events")
end)

test("transfer outside a thread behaves as resume", function()
	local th = weft.newthread(function(a)
		local b = weft.suspend(a * 2)
		return "end " .. b
	end)
	is(weft.transfer(th, 21), 42, "transfer returns suspend's values")
	is(weft.resume(th, "x"), "end x", "resume after transfer")
end)

H.test("transfer between threads", function()
	local me = weft.currentthread()
	local log = {}
	local B = weft.newthread(function(x)
		log[#log + 1] = "B got " .. x
		local y, z = weft.transfer(me, x + 1, "from B")
		log[#log + 1] = "B resumed with " .. tostring(y) .. "," .. tostring(z)
		return "B done"
	end)
	local r1, r2 = weft.transfer(B, 10)
	is(r1, 11, "transfer returns the values transferred back")
	is(r2, "from B", "second value")
	log[#log + 1] = "A back"
	is(weft.resume(B, "again", 2), "B done", "B finishes when resumed")
	is_deeply(log, { "B got 10", "A back", "B resumed with again,2" }, "order")
end)

H.test("resume returns at the first wait; the loop finishes the thread", function()
	local log = {}
	local th = weft.newthread(function()
		log[#log + 1] = "a"
		weft.sleep(0.02)
		log[#log + 1] = "c"
		return "ignored"
	end)
	local r = table.pack(weft.resume(th))
	log[#log + 1] = "b"
	is(r.n, 0, "resume returns nothing at a sleep")
	weft.sleep(0.1)
	is_deeply(log, { "a", "b", "c" }, "order")
	is(coroutine.status(th), "dead", "thread finished")
end)

H.test("currentthread inside a thread", function()
	local inner, ismain
	local th = weft.thread(function()
		inner, ismain = weft.currentthread()
	end)
	ok(inner == th, "currentthread is the thread")
	is(ismain, false, "ismain is false in a weft thread")
end)

H.test("cowrap generator and weft.yield", function()
	local gen = weft.cowrap(function(_, a)
		local b = weft.yield(a + 1)
		local c = weft.yield(b .. "!")
		return "ret", c
	end)
	is(gen(1), 2, "first call yields")
	is(gen("x"), "x!", "weft.yield returns the next call's arguments")
	is_deeply(table.pack(gen("z")), { n = 2, "ret", "z" }, "last call returns f's results")
	ok(raises(gen), "calling a dead wrapper raises")
	local bad = weft.cowrap(function() weft.sleep(0.001) error("cowrap-err") end)
	local good, err = pcall(bad)
	is(good, false, "an error in f raises in the caller")
	like(tostring(err), "cowrap%-err", "error message")
end)

H.test("cowrap: a wait inside f suspends the weft thread, others run", function()
	local ticks, stop = 0, false
	weft.thread(function()
		while not stop do
			weft.sleep(0.005)
			ticks = ticks + 1
		end
	end)
	local gen = weft.cowrap(function(yield, n)
		for i = 1, n do
			weft.sleep(0.02)
			yield(i)
		end
		return nil
	end)
	local got = {}
	local t0 = weft.clock()
	local v = gen(5)
	while v do
		got[#got + 1] = v
		v = gen()
	end
	local dt = weft.clock() - t0
	stop = true
	is_deeply(got, { 1, 2, 3, 4, 5 }, "values yielded around sleeps")
	cmp_ok(dt, ">=", 0.1, "sleeps inside f really slept")
	cmp_ok(ticks, ">=", 5, "other threads ran while f was sleeping")
	weft.sleep(0.02)
end)

-- a connected TCP pair, made inside a thread.
local function tcp_pair()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local a, aerr
	local sj = weft.sleep_job()
	local waiting = false
	weft.thread(function()
		a, aerr = l:accept(deadline())
		if waiting then sj:wakeup() end
	end)
	local c = assert(weft.tcp())
	assert(c:connect("127.0.0.1", l.local_port, deadline()))
	if not a and not aerr then
		waiting = true
		sj:sleep(5)
	end
	l:close()
	assert(a, aerr)
	return c, a
end

H.test("cowrap iterator doing I/O inside", function()
	local c, s = tcp_pair()
	weft.thread(function()
		for _, piece in ipairs({ "a", "bb", "ccc" }) do
			assert(c:send(piece))
			weft.sleep(0.03)
		end
		c:shutdown("w")
	end)
	local function chunks(sock)
		return (weft.cowrap(function(yield)
			local buf = weft.buffer(100)
			while true do
				local n, err = sock:recv(buf, 100, deadline())
				assert(n, err)
				if n == 0 then return end
				yield(buf:tostring(1, n))
			end
		end))
	end
	local got = {}
	for piece in chunks(s) do
		got[#got + 1] = piece
	end
	is_deeply(got, { "a", "bb", "ccc" }, "iterator yielded each received piece")
	c:close()
	s:close()
end)

H.test("onthreadfinish", function()
	local caught = {}
	weft.seterrorhandler(function(th, msg) caught[#caught + 1] = msg end)
	local log = {}
	local good = weft.newthread(function()
		weft.sleep(0.01)
		return 1
	end)
	weft.onthreadfinish(good, function(th, okv, err)
		log[#log + 1] = { "h1", th == good, okv, err }
	end)
	weft.onthreadfinish(good, function(th, okv, err)
		log[#log + 1] = { "h2", th == good, okv, err }
	end)
	weft.resume(good)
	local bad = weft.newthread(function()
		weft.sleep(0.01)
		error("fin-err")
	end)
	local badlog
	weft.onthreadfinish(bad, function(th, okv, err)
		badlog = { th == bad, okv, err }
	end)
	weft.resume(bad)
	local quick
	local q = weft.newthread(function() return "now" end)
	weft.onthreadfinish(q, function(_, okv) quick = okv end)
	weft.resume(q)
	weft.sleep(0.1)
	H.restore_handler()
	is_deeply(log, { { "h1", true, true }, { "h2", true, true } },
		"handlers ran in order with th, true, nil")
	ok(badlog, "handler ran for a failed thread")
	if badlog then
		is(badlog[1], true, "failed: handler got the thread")
		is(badlog[2], false, "failed: ok is false")
		like(tostring(badlog[3]), "fin%-err", "failed: err is the message")
	end
	is(quick, true, "handler ran for a thread that finished inside resume")
	is(#caught, 1, "the error handler saw the failure too")
end)

H.test("threadenv", function()
	local seen
	local th = weft.newthread(function()
		seen = weft.threadenv[weft.currentthread()]
		weft.threadenv[weft.currentthread()] = "set inside"
		weft.suspend()
	end)
	weft.threadenv[th] = { x = 1 }
	weft.resume(th)
	is(seen and seen.x, 1, "value set outside is seen inside")
	is(weft.threadenv[th], "set inside", "value set inside is seen outside")
	weft.resume(th)
	is(coroutine.status(th), "dead", "the thread finished")
	is(weft.threadenv[th], nil, "a finished thread's value is cleared at once")
	is(weft.threadenv[weft.newthread(function() end)], nil, "unset is nil")
	local me = weft.currentthread()
	weft.threadenv[me] = 42
	is(weft.threadenv[me], 42, "the current thread's own value")
	weft.threadenv[me] = nil
	is(weft.threadenv[me], nil, "cleared")
	-- weakly keyed: a finished, unreferenced thread does not keep its value
	local probe = setmetatable({}, { __mode = "k" })
	do
		local t = weft.newthread(function() end)
		local v = {}
		weft.threadenv[t] = v
		probe[v] = true
		weft.resume(t)
	end
	collectgarbage()
	collectgarbage()
	is(next(probe), nil, "threadenv does not keep values of collected threads")
end)

test("start(timeout) returns false on timeout", function()
	local sj = weft.sleep_job()
	local woke
	weft.thread(function() woke = table.pack(sj:sleep(3)) end)
	local t0 = weft.clock()
	local r = weft.start(0.1)
	local dt = weft.clock() - t0
	is(r, false, "start returns false on timeout")
	cmp_ok(dt, ">=", 0.09, "start ran for its timeout")
	cmp_ok(dt, "<", 1, "start returned at its timeout")
	is(sj:wakeup("w"), true, "wakeup from the main thread")
	t0 = weft.clock()
	is(weft.start(2), true, "start returns true when all threads finished")
	cmp_ok(weft.clock() - t0, "<", 1, "woken thread finished promptly")
	is_deeply(woke, { n = 1, "w" }, "the thread got the wakeup value")
end)

test("stop makes start return", function()
	local sj = weft.sleep_job()
	weft.thread(function() sj:sleep(3) end)
	local stopped = false
	weft.runafter(0.05, function()
		stopped = true
		weft.stop()
	end)
	local t0 = weft.clock()
	local r = weft.start()
	local dt = weft.clock() - t0
	is(r, true, "start returns true after stop")
	is(stopped, true, "the timer ran")
	cmp_ok(dt, "<", 1, "start returned soon after stop")
	sj:wakeup()
	is(weft.start(2), true, "remaining thread finishes")
end)

test("threads with no wake-up source do not keep start running", function()
	local got
	local th = weft.thread(function() got = weft.suspend() end)
	local sj = weft.sleep_job()
	local sgot
	weft.thread(function() sgot = sj:sleep() end)
	local t0 = weft.clock()
	is(weft.start(5), true, "start returns true")
	cmp_ok(weft.clock() - t0, "<", 1, "start did not wait for them")
	weft.resume(th, "later")
	is(got, "later", "a suspended thread is resumed by weft.resume")
	is(sj:wakeup("v"), true, "wakeup of a sleep job without deadline")
	is(weft.start(2), true, "start runs the woken thread")
	is(sgot, "v", "the sleep job returned the wakeup value")
end)

test("wakehandle: wakeup makes suspend return copies of the values", function()
	local got
	local th = weft.thread(function() got = table.pack(weft.suspend()) end)
	local wh = weft.wakehandle(th)
	is(getmetatable(wh).__name, "weft.wakehandle", "a wake handle")
	local t = { k = 3, list = { 1, 2 } }
	is(wh:wakeup(1, "x", t, nil), true, "wakeup of a suspended thread")
	is(got, nil, "the thread runs in the loop, not inside wakeup")
	is(weft.start(2), true, "start runs the woken thread")
	is(got and got.n, 4, "suspend returned every value, nil included")
	is(got[1], 1, "a number")
	is(got[2], "x", "a string")
	is_deeply(got[3], t, "a table, equal")
	ok(got[3] ~= t, "and copied")
	is(wh:wakeup("late"), false, "wakeup of a finished thread returns false")
end)

test("wakehandle: values sent before the suspend are not lost, and keep their order", function()
	local got = {}
	local wh
	local th = weft.thread(function()
		wh = weft.wakehandle()
		weft.sleep(0.02) -- busy elsewhere while the wake-ups arrive
		for i = 1, 3 do got[i] = weft.suspend() end
	end)
	is(wh:wakeup("a"), true, "wakeup while the thread sleeps")
	is(wh:wakeup("b"), true, "a second one")
	is(wh:wakeup("c"), true, "a third one")
	is(weft.start(2), true, "the thread finishes: each suspend returned at once")
	is_deeply(got, { "a", "b", "c" }, "in the order sent")
	ok(coroutine.status(th) == "dead", "the thread is done")
end)

test("wakehandle: a direct resume does not eat a wakeup", function()
	local got = {}
	local th = weft.thread(function()
		got[1] = weft.suspend()
		got[2] = weft.suspend()
	end)
	local wh = weft.wakehandle(th)
	is(wh:wakeup("sent"), true, "wakeup queued for the suspended thread")
	weft.resume(th, "direct") -- before the loop delivers the wakeup
	is(got[1], "direct", "the direct resume came first")
	is(weft.start(2), true, "the thread finishes")
	is(got[2], "sent", "the wakeup's values went to the next suspend")
end)

test("wakehandle: the resume trick still returns control at the first suspend", function()
	local th = weft.newthread(function()
		local wh = weft.wakehandle()
		local v = weft.suspend(wh)
		return v
	end)
	local wh = weft.resume(th)
	is(getmetatable(wh).__name, "weft.wakehandle", "resume returned what suspend was given")
	local fin
	weft.onthreadfinish(th, function(_, okv) fin = okv end)
	wh:wakeup("go")
	is(weft.start(2), true, "the loop ran the woken thread")
	is(fin, true, "it finished")
end)

test("wakehandle: bad input", function()
	ok(raises(weft.wakehandle), "outside a weft thread raises")
	ok(raises(weft.wakehandle, 42), "a number raises")
	ok(raises(weft.wakehandle, coroutine.create(function() end)), "a plain coroutine raises")
	local th = weft.thread(function() weft.suspend() end)
	local wh = weft.wakehandle(th)
	local up = 1
	ok(raises(wh.wakeup, wh, function() return up end), "a value that cannot be copied raises")
	ok(raises(wh.wakeup, wh, io.stdout), "a userdata raises")
	is(wh:wakeup(), true, "no values is fine")
	is(weft.start(2), true, "the thread finishes")
	ok(raises(weft.wakehandle, th), "a finished thread raises")
end)

test("run returns f's results", function()
	local a, b, c = weft.run(function(x, y)
		weft.sleep(0.01)
		return x + y, "two", nil
	end, 1, 2)
	is(a, 3, "first result")
	is(b, "two", "second result")
	is(select("#", weft.run(function() return 1, nil, nil end)), 3, "result count kept")
	is(c, nil, "third result")
	is(weft.run(function() return "no wait" end), "no wait", "f that never waits")
end)

test("run raises f's error", function()
	local good, err = pcall(weft.run, function()
		weft.sleep(0.01)
		error("run-err")
	end)
	is(good, false, "run raised after a wait")
	like(tostring(err), "run%-err", "the error message")
	local good2, err2 = pcall(weft.run, function() error({ code = 7 }) end)
	is(good2, false, "run raised before any wait")
	is(type(err2) == "table" and err2.code, 7, "a non-string error value is kept")
end)

test("run waits for all threads", function()
	local flag = false
	local t0 = weft.clock()
	weft.run(function()
		weft.thread(function()
			weft.sleep(0.05)
			flag = true
		end)
	end)
	is(flag, true, "a thread started in f finished before run returned")
	cmp_ok(weft.clock() - t0, ">=", 0.045, "run waited for it")
end)

H.test("run inside a thread just calls f", function()
	local me = weft.currentthread()
	local inner, v = weft.run(function(x) return weft.currentthread(), x end, "arg")
	ok(inner == me, "f ran in the calling thread")
	is(v, "arg", "arguments and results passed")
end)

test("seterrorhandler catches a thread error without stopping the loop", function()
	local caught = {}
	weft.seterrorhandler(function(th, msg)
		caught[#caught + 1] = { th = th, msg = msg }
	end)
	local bad
	local other = false
	local good, res = pcall(weft.run, function()
		bad = weft.thread(function()
			weft.sleep(0.01)
			error("thread-boom")
		end)
		weft.thread(function()
			weft.sleep(0.05)
			other = true
		end)
		weft.sleep(0.03)
		return "survived"
	end)
	H.restore_handler()
	is(good, true, "run did not raise")
	is(res, "survived", "run returned f's result")
	is(other, true, "another thread kept running after the error")
	is(#caught, 1, "handler called once")
	if caught[1] then
		ok(caught[1].th == bad, "handler got the failed thread")
		like(tostring(caught[1].msg), "thread%-boom", "handler got the message")
		like(tostring(caught[1].msg), "traceback", "message has a traceback")
	end
end)

test("sharing the poller: epoll_fd and iocp", function()
	-- One of the two is this platform's (epoll on Linux, the completion
	-- port on Windows); the other says it is not supported.
	local name, other = "epoll_fd", "iocp"
	if weft.iocp() then
		name, other = "iocp", "epoll_fd"
	end
	local handle = weft[name]
	local fd = handle()
	is(math.type(fd), "integer", name .. " returns a handle")
	cmp_ok(fd or -1, ">=", 0, "the handle is valid")
	is(handle(), fd, "the same handle every time")
	local r = handle(fd)
	is(r, fd, "joining our own runtime returns its handle")
	local t0 = weft.clock()
	local slept = weft.run(function()
		weft.sleep(0.02)
		return weft.clock() - t0
	end)
	cmp_ok(slept or 0, ">=", 0.02, "the loop still works after " .. name .. "(handle)")
	local h, err = weft[other]()
	is(h, nil, other .. " on this platform returns nil")
	is(err, "not supported on this platform", other .. " message")
	-- a descriptor that is no weft poller is refused, and the state keeps
	-- its own poller
	local none, jerr = handle(0)
	is(none, nil, "joining a non-poller fails")
	like(tostring(jerr), "not the poller", "join failure message")
	is(handle(), fd, "still on its own poller")
end)

test("stats counts this state's work", function()
	local before = weft.stats()
	for _, k in ipairs({"events", "stale_events", "wakes", "timers", "inbox", "handoffs",
			"polls", "runq", "waiting", "fds", "parks", "unparks", "spins", "lost_wakes"}) do
		is(math.type(before[k]), "integer", "stats." .. k .. " is an integer")
	end
	local s = assert(weft.tcp())
	is(weft.stats().fds, before.fds + 1, "an open socket counts in fds")
	weft.run(function() weft.sleep(0.01) end)
	local after = weft.stats()
	cmp_ok(after.timers, ">", before.timers, "the sleep's timer fired")
	cmp_ok(after.wakes, ">", before.wakes, "the sleeper was woken")
	cmp_ok(after.polls, ">", before.polls, "the loop polled")
	s:close()
	is(weft.stats().fds, before.fds, "closing gives the record back")
	local st = weft.stats()
	is(st.worker, 1, "stats name the worker")
	is(st.total and st.total.workers, 1, "total counts one worker")
	cmp_ok(st.total and st.total.events or -1, ">=", st.events, "total counters include ours")
	local c0 = st.coroutines
	local sj = weft.sleep_job()
	local th = weft.thread(function() sj:sleep(5) end)
	is(weft.stats().coroutines, c0 + 1, "a live thread counts in coroutines")
	weft.run(function() sj:wakeup() end)
	is(weft.stats().coroutines, c0, "and stops counting when it ends")
end)

test("waiting outside a thread raises", function()
	ok(raises(weft.sleep, 0.01), "weft.sleep in the main thread raises")
	ok(raises(weft.suspend), "weft.suspend in the main thread raises")
end)

tap.done()
