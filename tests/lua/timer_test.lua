-- Timers (weft.runat, runafter, runevery) as C objects run by a shared
-- runner: every timer fires exactly once, a cancelled one never (even when
-- cancelled after it fell due, before its turn), not early, late only
-- within wide bounds; no thread per timer; a function that waits holds up
-- no other timer; errors are reported and stop only their own timer.
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, cmp_ok, test = tap.ok, tap.is, tap.cmp_ok, tap.test

local scale = tonumber(os.getenv("WEFT_TEST_SCALE") or "") or 1

test("bad arguments raise", function()
	ok(not pcall(weft.runafter, 1), "runafter without a function")
	ok(not pcall(weft.runat, "x", print), "runat with a string")
	ok(not pcall(weft.runafter, 0 / 0, print), "runafter(NaN)")
	ok(not pcall(weft.runevery, 0, print), "runevery(0)")
	ok(not pcall(weft.runevery, -1, print), "runevery(-1)")
	ok(not pcall(weft.runevery, 0 / 0, print), "runevery(NaN)")
	local t = weft.runafter(3600, print)
	is(t.nothing, nil, "cancel is the only field")
	t:cancel()
end)

H.test("timer.cancel() works without self, as timer:cancel() does", function()
	local fired = false
	local t = weft.runafter(0.01, function() fired = true end)
	local c = t.cancel
	c()
	c()
	weft.sleep(0.03)
	is(fired, false, "cancelled through the field")
end)

H.test("20 000 timers: each fires exactly once, cancelled ones never", function()
	local n = 20000 // scale
	local count, late, early = {}, 0, 0
	local worst = 0
	local timers, due = {}, {}
	local t0 = weft.clock()
	for i = 1, n do
		local d = t0 + 0.05 + (i * 7919 % 1000) / 4000 -- 50..300 ms ahead
		due[i] = d
		local f = function()
			count[i] = (count[i] or 0) + 1
			local now = weft.clock()
			if now < d - 0.0005 then early = early + 1 end
			if now - d > worst then worst = now - d end
		end
		if i % 2 == 0 then
			timers[i] = weft.runat(d, f)
		else
			timers[i] = weft.runafter(d - weft.clock(), f)
		end
	end
	-- A third cancelled before they fall due.
	for i = 3, n, 3 do timers[i]:cancel() end
	-- Handles dropped: armed timers stay alive on their own.
	for i = 1, n, 5 do timers[i] = nil end
	collectgarbage()
	cmp_ok(weft.stats().coroutines, "<", 10, "no thread per armed timer")
	weft.sleep(0.5)
	local once, twice, cancelled_ran = 0, 0, 0
	for i = 1, n do
		local c = count[i] or 0
		if i % 3 == 0 then
			if c > 0 then cancelled_ran = cancelled_ran + 1 end
		elseif c == 1 then
			once = once + 1
		elseif c > 1 then
			twice = twice + 1
		end
	end
	is(once, n - n // 3, "every uncancelled timer fired")
	is(twice, 0, "none fired twice")
	is(cancelled_ran, 0, "no cancelled timer fired")
	is(early, 0, "none fired early")
	cmp_ok(worst, "<", 2, "lateness within wide bounds")
end, 30)

H.test("cancelled after falling due, before its turn: never runs", function()
	-- All due at the same tick: the first to run cancels the others,
	-- which the wheel has already fired and queued.
	local ran = {}
	local timers = {}
	local d = weft.clock() + 0.02
	for i = 1, 10 do
		timers[i] = weft.runat(d, function()
			ran[#ran + 1] = i
			for j = 1, 10 do
				if j ~= i then timers[j]:cancel() end
			end
		end)
	end
	weft.sleep(0.1)
	is(#ran, 1, "only the first ran")
end)

H.test("a waiting function holds up no other timer", function()
	local slow_done, fast_at = false, nil
	local t0 = weft.clock()
	weft.runafter(0.01, function()
		weft.sleep(0.2)
		slow_done = true
	end)
	weft.runafter(0.03, function() fast_at = weft.clock() - t0 end)
	weft.sleep(0.1)
	ok(fast_at, "the second timer ran while the first waited")
	is(slow_done, false, "the first is still waiting")
	if fast_at then cmp_ok(fast_at, "<", 0.09, "and on time") end
	weft.sleep(0.2)
	is(slow_done, true, "the waiting function completed")
	-- Many functions waiting at once: each has a thread while it waits,
	-- and the threads end (one idle runner is kept).
	local n, done = 50, 0
	for _ = 1, n do
		weft.runafter(0.005, function()
			weft.sleep(0.02)
			done = done + 1
		end)
	end
	weft.sleep(0.015)
	cmp_ok(weft.stats().coroutines, ">=", n, "a thread per waiting function")
	weft.sleep(0.1)
	is(done, n, "all completed")
	cmp_ok(weft.stats().coroutines, "<", 5, "their threads ended")
end)

H.test("errors are reported and stop only their timer", function()
	local errs = {}
	weft.seterrorhandler(function(th, msg) errs[#errs + 1] = tostring(msg) end)
	local n_every, n_other = 0, 0
	weft.runevery(0.01, function()
		n_every = n_every + 1
		error("boom")
	end)
	weft.runafter(0.015, function() error("bang") end)
	local other = weft.runevery(0.01, function() n_other = n_other + 1 end)
	weft.sleep(0.1)
	H.restore_handler()
	other:cancel()
	is(n_every, 1, "the repeating timer whose function failed stopped")
	cmp_ok(n_other, ">=", 4, "the other repeating timer went on")
	is(#errs, 2, "both errors reported")
	ok(errs[1] and errs[1]:find("boom"), "with their messages")
	local t = weft.runafter(0.01, function() end)
	weft.sleep(0.03)
	ok(pcall(t.cancel, t), "cancel after it ran is harmless")
end)

H.test("weft.setbudget counts each function apart, not their sum", function()
	local prev = weft.setbudget(20000)
	local n, spin = 0, 0
	for _ = 1, 50 do
		weft.runafter(0.01, function()
			for _ = 1, 1000 do spin = spin + 1 end -- well under the budget
			n = n + 1
		end)
	end
	weft.sleep(0.05)
	weft.setbudget(prev or 0)
	is(n, 50, "all ran in the same step, none failed on the budget")
end)

H.test("callable tables as functions; bad arguments name the public function", function()
	local hit = false
	local t = weft.runafter(0.005, setmetatable({}, {__call = function() hit = true end}))
	weft.sleep(0.03)
	is(hit, true, "a table with __call ran")
	local okc, err = pcall(weft.runafter, 1, nil)
	ok(not okc and tostring(err):find("#2 to 'runafter'", 1, true), tostring(err))
	okc, err = pcall(weft.runat, 0 / 0, print)
	ok(not okc and tostring(err):find("#1 to 'runat' (number expected, got NaN)", 1, true), tostring(err))
	okc, err = pcall(weft.runevery, 0, print)
	ok(not okc and tostring(err):find("#1 to 'runevery'", 1, true), tostring(err))
end)

H.test("runevery: cancel from its own function; false stops it", function()
	local n = 0
	local t
	t = weft.runevery(0.005, function()
		n = n + 1
		if n == 3 then t:cancel() end
	end)
	weft.sleep(0.08)
	is(n, 3, "cancelled from inside after the third run")
	local m = 0
	weft.runevery(0.005, function()
		m = m + 1
		return m < 2 and true or false
	end)
	weft.sleep(0.06)
	is(m, 2, "returning false stopped it")
end)

H.test("the loop waits for armed timers, not for cancelled ones", function()
	local out = tap.run_workers(1, [[
		local weft = require "weft"
		local t = weft.runafter(3600, function() print("never") end)
		weft.runafter(0.02, function() print("fired"); t:cancel() end)
	]])
	if out == nil then
		tap.skip("WEFT_BIN is not set", 1)
	else
		is(out, "fired\n", "ran the due timer, then ended without the cancelled one")
	end
end, 20)

tap.done()
