-- Copas layer: the dispatcher, threads, sleeping, errors and names, exit,
-- status, timeouts, reloading.
local tap = require "tap"
local weft = require "weft"
local CH = require "copas_helper"
local ok, is, like, cmp_ok = tap.ok, tap.is, tap.like, tap.cmp_ok

local copas = CH.fresh()

like(copas._VERSION, "^Copas 4%.1%d", "_VERSION is Copas 4.1x style")
is(type(copas.gettime()), "number", "gettime")
cmp_ok(math.abs(copas.gettime() - os.time()), "<", 2, "gettime is seconds since the epoch")
ok(copas.setErrorHandler == copas.seterrorhandler, "deprecated setErrorHandler")
ok(copas.useSocketTimeoutErrors == copas.usesockettimeouterrors, "deprecated useSocketTimeoutErrors")
ok(copas.receivePartial == copas.receivepartial, "deprecated receivePartial")
ok(copas.finished(), "finished with nothing to do")
is(copas.running, false, "not running before the loop")

CH.run(copas, "addthread schedules, does not start", function()
	local order = {}
	copas.addthread(function(a, b)
		order[#order + 1] = "thread " .. a .. b
	end, 1, 2)
	order[#order + 1] = "after addthread"
	copas.pause()
	is(table.concat(order, ","), "after addthread,thread 12", "body ran on the next step")
	is(copas.running, true, "running inside the loop")
	is(copas.getthreadname(), "copas_initializer", "the init function's thread name")
end)
is(copas.running, false, "running reset after the loop")

CH.run(copas, "named threads", function()
	local co = copas.addnamedthread("worker", function()
		is(copas.getthreadname(), "worker", "name inside")
		copas.setthreadname("renamed")
		is(copas.getthreadname(), "renamed", "setthreadname")
	end)
	is(copas.getthreadname(co), "worker", "name outside")
	local anon = copas.addthread(function() end)
	is(copas.getthreadname(anon), tostring(anon), "default name is tostring(co)")
end)

CH.run(copas, "pause returns the time slept", function()
	local t = copas.pause(0.05)
	cmp_ok(t, ">=", 0.045, "slept about 50 ms")
	cmp_ok(t, "<", 1, "not much more")
	local co = coroutine.running()
	copas.addthread(function()
		copas.pause(0.02)
		copas.wakeup(co)
	end)
	local s = copas.pause(5)
	cmp_ok(s, "<", 1, "woken early: shorter pause")
	local z = copas.pause(0)
	cmp_ok(z, "<", 0.5, "pause(0) yields one step")
	copas.pause(-1)
	ok(true, "negative pause does not sleep forever")
end)

CH.run(copas, "pauseforever and wakeup", function()
	local woken = false
	local co = copas.addthread(function()
		copas.pauseforever()
		woken = true
	end)
	copas.pause(0.02)
	is(woken, false, "still sleeping")
	copas.wakeup(co)
	copas.pause(0.01)
	is(woken, true, "woken")
	copas.wakeup(co) -- not sleeping: nothing happens
	ok(true, "wakeup of a finished thread is harmless")
end)

CH.run(copas, "a thread sleeping forever does not keep the loop", function()
	copas.addthread(function() copas.pauseforever() end)
end, 3)

CH.run(copas, "sleep(-1) sleeps forever, sleep(t) pauses", function()
	local t0 = weft.clock()
	copas.sleep(0.02)
	cmp_ok(weft.clock() - t0, ">=", 0.015, "sleep(t)")
	local done = false
	local co = copas.addthread(function() copas.sleep(-1) done = true end)
	copas.pause(0.03)
	is(done, false, "sleep(-1) still asleep")
	copas.wakeup(co)
	copas.pause(0.01)
	is(done, true, "woken")
end)

tap.test("removethread of a sleeping thread ends the loop at once", function()
	local co
	local ran_after = false
	local t0 = weft.clock()
	copas.loop(function()
		co = copas.addthread(function()
			copas.pause(30)
			ran_after = true
		end)
		copas.pause(0.02)
		copas.removethread(co)
	end)
	cmp_ok(weft.clock() - t0, "<", 5, "the loop did not wait for the sleeper")
	is(ran_after, false, "the removed thread never continued")
	copas.removethread(co) -- unknown thread: nothing
	ok(true, "removing twice is harmless")
end)

CH.run(copas, "removethread of a thread waiting on a socket", function()
	local S = copas.socket
	local srv = assert(S.bind("127.0.0.1", 0))
	local _, port = srv:getsockname()
	copas.addserver(srv, copas.handler(function(skt)
		copas.pause(0.05)
		skt:send("late\n")
	end))
	local after = false
	local co = copas.addthread(function()
		local c = copas.wrap(S.tcp())
		assert(c:connect("127.0.0.1", port))
		c:receive()
		after = true
	end)
	copas.pause(0.02)
	copas.removethread(co)
	copas.pause(0.1)
	is(after, false, "the removed thread did not go on after its receive")
	copas.removeserver(srv)
end)

CH.run(copas, "removethread before the thread starts", function()
	local ran = false
	local co = copas.addthread(function() ran = true end)
	copas.removethread(co)
	copas.pause(0.01)
	is(ran, false, "never ran")
end)

copas = CH.fresh()
tap.test("exit, exiting and waitforexit ordering", function()
	local order = {}
	copas.loop(function()
		is(copas.exiting(), false, "not exiting at first")
		copas.addthread(function()
			copas.waitforexit()
			order[#order + 1] = "waiter released"
			is(copas.exiting(), true, "exiting after exit")
		end)
		copas.addthread(function()
			copas.pause(0.02)
			order[#order + 1] = "work done"
		end)
	end)
	is(table.concat(order, ","), "work done,waiter released", "exit comes when the work is done")
	ok(copas.exiting(), "exiting stays true")
end)

tap.test("each run of the loop has its own exit", function()
	local order = {}
	copas.loop(function()
		copas.addthread(function()
			copas.waitforexit()
			order[#order + 1] = "released"
		end)
		copas.addthread(function()
			copas.pause(0.02)
			order[#order + 1] = "worked"
		end)
	end)
	is(table.concat(order, ","), "worked,released", "waitforexit waits again in a new run")
end)

copas = CH.fresh()
tap.test("explicit exit releases waiters and a server", function()
	local released = 0
	copas.loop(function()
		for i = 1, 3 do
			copas.addthread(function() copas.waitforexit() released = released + 1 end)
		end
		copas.pause(0.01)
		copas.exit()
		copas.exit()
	end)
	is(released, 3, "each waiter released once")
end)

copas = CH.fresh()
tap.test("errors: default handler prints message, names and traceback", function()
	local out = CH.capture_print(function()
		copas.loop(function()
			copas.addnamedthread("failing", function()
				error("boom")
			end)
		end)
	end)
	like(out, "boom", "message")
	like(out, "coroutine: failing", "thread name")
	like(out, "socket: nil", "socket name")
	like(out, "stack traceback", "traceback")
	ok(copas.finished(), "the loop went on and finished")
end)

tap.test("errors: per-thread, default and failing handlers", function()
	local got = {}
	CH.capture_print(function() copas.loop(function()
		copas.addthread(function()
			copas.seterrorhandler(function(err, co, skt)
				got[#got + 1] = "own:" .. tostring(err):match("own%-err")
				is(type(co), "thread", "handler gets the coroutine")
				is(skt, nil, "no socket")
			end)
			error("own-err")
		end)
		copas.addthread(function()
			ok(copas.geterrorhandler() ~= nil, "geterrorhandler")
			copas.seterrorhandler(function() error("handler fails") end)
			error("second")
		end)
	end) end)
	is(got[1], "own:own-err", "own handler called")
	local msgs = {}
	copas.seterrorhandler(function(err) msgs[#msgs + 1] = tostring(err) end, true)
	copas.loop(function()
		copas.addthread(function() error("to default") end)
	end)
	like(msgs[1] or "", "to default", "new default handler")
	tap.ok(not pcall(copas.seterrorhandler, nil, true), "a default handler must be a function")
end)

copas = CH.fresh()
tap.test("an error in an error handler is reported, not propagated", function()
	local out = CH.capture_print(function()
		copas.loop(function()
			copas.addthread(function()
				copas.seterrorhandler(function() error("inner failure") end)
				error("outer")
			end)
		end)
	end)
	like(out, "inner failure", "the handler's own error is printed")
end)

tap.test("user code yielding to the scheduler gets an error, the loop goes on", function()
	local msgs, after = {}, false
	copas.loop(function()
		copas.addthread(function()
			copas.seterrorhandler(function(err) msgs[#msgs + 1] = tostring(err) end)
			coroutine.yield("bad")
			after = true
		end)
		copas.addthread(function() copas.pause(0.02) end)
	end)
	like(msgs[1] or "", "cannot yield", "error says user code cannot yield")
	is(after, false, "the thread was ended")
	ok(copas.finished(), "finished")
end)

tap.test("gettraceback", function()
	local tb = copas.gettraceback("msg", coroutine.running(), nil)
	like(tb, "^msg %(coroutine: ", "message and names")
	like(copas.gettraceback(nil, nil, nil), "stack traceback", "without a coroutine: the caller's traceback")
end)

CH.run(copas, "copas.timeout calls back, cancels, replaces", function()
	local fired = {}
	copas.addthread(function()
		local me = coroutine.running()
		copas.timeout(0.02, function(co) fired[#fired + 1] = (co == me) and "a" or "?" end)
		copas.pause(0.05)
		copas.timeout(0.02, function() fired[#fired + 1] = "b" end)
		copas.timeout(0.5, function() fired[#fired + 1] = "c" end)
		copas.timeout(0)
		copas.pause(0.6)
	end)
	copas.pause(0.7)
	is(table.concat(fired, ","), "a", "only the first fired; replaced and cancelled did not")
end)

tap.test("step", function()
	local c2 = CH.fresh()
	local idle = false
	for _ = 1, 100 do
		if c2.step(0) == false then idle = true break end
	end
	ok(idle, "nothing to do: false")
	local ran = false
	c2.addthread(function() ran = true end)
	local t0 = weft.clock()
	while not ran and weft.clock() - t0 < 2 do c2.step(0.1) end
	is(ran, true, "step ran the thread")
	copas = c2
end)

tap.test("status", function()
	local s0 = copas.status()
	for _, k in ipairs({"running", "read", "write", "active", "timer", "inactive", "timeout"}) do
		ok(s0[k] ~= nil, "field " .. k)
	end
	local s
	copas.loop(function()
		copas.status(true)
		copas.addthread(function() copas.pause(0.2) end)
		copas.addthread(function() copas.pauseforever() end)
		copas.pause(0.05)
		s = copas.status()
	end)
	is(s.timer, 1, "one timer")
	is(s.inactive, 1, "one inactive")
	is(s.running, true, "running")
	ok(s.steps ~= nil and s.duration_tot ~= nil and s.time_start ~= nil and s.time_avg ~= nil
		and s.duration_min_ever ~= nil and s.duration_max_ever ~= nil, "stats fields")
	local s2 = copas.status(false)
	ok(s2.steps ~= nil, "still reported on the disabling call")
	is(copas.status().steps, nil, "off afterwards")
end)

tap.test("reloading gives an independent instance", function()
	local a = CH.fresh()
	local b = CH.fresh()
	ok(a ~= b, "different tables")
	a.seterrorhandler(function() end, true)
	ok(a.geterrorhandler() ~= b.geterrorhandler(), "error handlers are per instance")
	a.addthread(function() a.pause(0.01) end)
	is(b.finished(), true, "b has no work")
	is(a.finished(), false, "a has work")
	a.loop()
	copas = b
end)

CH.run(copas, "cancelall ends everything", function()
	copas.addthread(function() copas.pause(60) end)
	copas.addthread(function() copas.pause(60) end)
	copas.pause(0.01)
	copas.cancelall()
end, 5)

tap.test("the copas module table is callable (loop)", function()
	local ran = false
	copas(function() ran = true end)
	ok(ran, "copas(init) ran init")
end)

tap.test("submodules load lazily", function()
	for _, m in ipairs({"lock", "semaphore", "queue", "timer", "future", "http", "debug"}) do
		is(type(copas[m]), "table", "copas." .. m)
	end
	local f = copas.future
	ok(not pcall(function() return f.nosuch end), "unknown future field raises")
	like(select(2, pcall(function() return f.nosuch end)), "unknown field 'future.nosuch'", "message")
end)

tap.test("debug.start logs the scheduler", function()
	local lines = {}
	copas.debug.start(function(...) lines[#lines + 1] = table.concat({...}, " ") end)
	copas.loop(function() copas.addnamedthread("dbg", function() end) end)
	copas.debug.stop()
	local all = table.concat(lines, "\n")
	like(all, "dbg", "the thread was logged")

	-- What happens to a thread: added, sleeping, woken, removed, errors,
	-- ended; the loop's steps only with `core`.
	for _, core in ipairs({ false, true }) do
		lines = {}
		copas.debug.start(function(...) lines[#lines + 1] = table.concat({ ... }, " ") end, core)
		copas.loop(function()
			local sleeper = copas.addnamedthread("sleeper", function() copas.pauseforever() end)
			copas.addnamedthread("napper", function() copas.pause(0.01) end)
			copas.addnamedthread("failer", function() error("dbg-boom", 0) end)
			local victim = copas.addnamedthread("victim", function() copas.pause(10) end)
			copas.pause(0.05)
			copas.wakeup(sleeper)
			copas.removethread(victim)
		end)
		copas.debug.stop()
		all = table.concat(lines, "\n")
		local want = { "thread added: sleeper", "thread sleeping: sleeper forever",
			"thread sleeping: napper 0.01", "thread error: failer dbg%-boom",
			"thread ended: failer", "thread woken: sleeper", "thread removed: victim",
			"thread ended: victim", "thread ended: copas_initializer" }
		for _, w in ipairs(want) do like(all, w, "debug log: " .. w .. (core and " (core)" or "")) end
		if core then
			like(all, "step: work done", "core: the loop's steps are logged")
		else
			ok(not all:find("step:"), "no steps without core")
		end
	end
	copas.seterrorhandler() -- the default one again
end)

tap.done()
