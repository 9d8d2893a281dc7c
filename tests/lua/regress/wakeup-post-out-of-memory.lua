-- A wake-up posted to another worker (or to this worker's own inbox) can
-- fail when the inbox cannot grow.  Such a failure used to leave things
-- inconsistent: a sleep job's sleeper could never be woken again (its
-- word was claimed and dropped), a wake handle said true while its thread
-- stayed suspended with the values beside it, and a future's waiter got
-- "timeout" although the result had come in.
--
-- Each case runs in a fresh process, so the target worker's inbox has
-- never been used: the first post to it must grow it, and the allocation
-- hook (weft.core._alloc_fail_after) makes successive allocations fail
-- until one attempt gets through.  Only invariants are checked: the
-- attempt that reports success is the one whose values arrive, once.
local tap = require "tap"
local ok, is, like = tap.ok, tap.is, tap.like

local function run(n, source)
	local out, okc = tap.run_workers(n, source)
	if out and not okc then tap.diag(out) end
	return out, okc
end

tap.test("sleep job: a failed post leaves the sleeper wakeable", function()
	local out, okc = run(2, [[
local weft = require "weft"
local core = require "weft.core"
local handoff = weft.channel("handoff", 4)
local back = weft.channel("back", 4)
if weft.worker() == 1 then
	local sj = weft.sleep_job()
	local got
	weft.thread(function() got = table.pack(sj:sleep(10)) end)
	assert(handoff:send(sj)) -- asleep by now
	local r = back:recv(weft.clock() + 30)
	local limit = weft.clock() + 10
	while not got and weft.clock() < limit do weft.sleep(0.01) end
	print(("woke=%s log=%s"):format(tostring(r.woke), r.log))
	print(("got %s %s"):format(tostring(got and got[1]), tostring(got and got[2])))
else
	local sj = handoff:recv(weft.clock() + 30)
	local log, woke = {}, nil
	for k = 1, 8 do
		core._alloc_fail_after(k)
		local okc, r = pcall(sj.wakeup, sj, "wake", k)
		core._alloc_fail_after(0)
		log[#log + 1] = okc and tostring(r) or "error"
		if okc and r then woke = k break end
	end
	assert(back:send({woke = woke, log = table.concat(log, ",")}, weft.clock() + 30))
end
]])
	if not out then
		tap.skip("WEFT_BIN not set", 3)
		return
	end
	ok(okc, "both workers exited cleanly")
	local k = out:match("woke=(%d+)")
	ok(k, "a wakeup got through")
	like(out, "got wake " .. tostring(k) .. "\n", "the sleeper woke with that wakeup's values")
end)

tap.test("wake handle: a failed post does not leave values stranded", function()
	local out, okc = run(2, [[
local weft = require "weft"
local core = require "weft.core"
local handoff = weft.channel("handoff", 4)
local back = weft.channel("back", 4)
if weft.worker() == 1 then
	local got = {}
	local th = weft.newthread(function()
		while true do
			local t = table.pack(weft.suspend())
			if t[1] == "stop" then return end
			got[#got + 1] = t
		end
	end)
	weft.resume(th)
	assert(handoff:send(weft.wakehandle(th)))
	local r = back:recv(weft.clock() + 30)
	local limit = weft.clock() + 10
	while #got == 0 and weft.clock() < limit do weft.sleep(0.01) end
	weft.sleep(0.05) -- room for a second resume, which must not come
	print(("woke=%s log=%s"):format(tostring(r.woke), r.log))
	print(("resumed %d: %s %s"):format(#got, tostring(got[1] and got[1][1]),
		tostring(got[1] and got[1][2])))
	weft.resume(th, "stop")
else
	local wh = handoff:recv(weft.clock() + 30)
	local log, woke = {}, nil
	for k = 1, 8 do
		core._alloc_fail_after(k)
		local okc, r = pcall(wh.wakeup, wh, "wake", k)
		core._alloc_fail_after(0)
		log[#log + 1] = okc and tostring(r) or "error"
		if okc and r then woke = k break end
	end
	assert(back:send({woke = woke, log = table.concat(log, ",")}, weft.clock() + 30))
end
]])
	if not out then
		tap.skip("WEFT_BIN not set", 3)
		return
	end
	ok(okc, "both workers exited cleanly")
	local k = out:match("woke=(%d+)")
	ok(k, "a wakeup got through")
	like(out, "resumed 1: wake " .. tostring(k) .. "\n",
		"the thread resumed once, with that wakeup's values")
end)

-- The job runs in the waiter's own worker: its result is posted to the
-- inbox of that worker, which has never been used.
local FUTURE = [[
local weft = require "weft"
local core = require "weft.core"
local poll = arg and arg[1] == "poll"
for k = 1, 5 do
	local f = weft.spawn(function(k)
		require("weft.core")._alloc_fail_after(k)
		return "r" .. k
	end, k)
	if poll then
		-- Looking at the future tries a failed post again: then even a
		-- wait without deadline ends.
		weft.thread(function()
			while not f:done() do weft.sleep(0.01) end
		end)
	end
	local r = table.pack(f:wait(not poll and weft.clock() + 3 or nil))
	core._alloc_fail_after(0)
	print(("k=%d %s %s"):format(k, tostring(r[1]), tostring(r[2])))
end
]]

for _, mode in ipairs({"deadline", "poll"}) do
	tap.test("future: a failed post still delivers the result (" .. mode .. ")", function()
		local out, okc = tap.run_workers(1, FUTURE, mode)
		if not out then
			tap.skip("WEFT_BIN not set", 3)
			return
		end
		ok(okc, "the worker exited cleanly")
		local bad = {}
		for k, a, b in out:gmatch("k=(%d+) (%S+) ([^\n]*)") do
			local fine = (a == "true" and b == "r" .. k) or
				(a == "nil" and b:find("cannot be returned", 1, true))
			if not fine then bad[#bad + 1] = ("k=%s: %s %s"):format(k, a, b) end
		end
		is(select(2, out:gsub("k=%d+", "")), 5, "every wait returned")
		is(table.concat(bad, "; "), "", "each with the result or the job's error, never 'timeout'")
	end)
end

tap.done()
