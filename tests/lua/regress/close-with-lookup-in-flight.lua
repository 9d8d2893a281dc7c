-- Closing a state used to wait for its name lookups in flight: with a
-- resolver that takes 1.5 s (a dead DNS server), a program that exited
-- 0.1 s after starting a lookup took 1.4 s more to go.  The test uses a
-- 4 s lookup, so that a slow (instrumented) start-up cannot be mistaken
-- for the wait.  Closing now cuts
-- the lookups off (they finish alone, on the resolver thread), and the
-- last runtime to go stops the pool without waiting for them.
local tap = require "tap"
local ok, cmp_ok, like = tap.ok, tap.cmp_ok, tap.like

-- Wall-clock seconds: date(1), or on Windows (no date +%N there) weft's
-- monotonic clock, the launcher running this file having loaded weft.
local function now()
	if tap.windows then return require("weft").clock() end
	local p = io.popen("date +%s.%N")
	local s = tonumber(p:read("a"))
	p:close()
	return s
end

local function timed(n, source)
	local s0 = now()
	local out, okc = tap.run_workers(n, source)
	return out, okc, now() - s0
end

tap.test("exit with a slow lookup in flight does not wait for it", function()
	local out, okc, dt = timed(1, [[
local weft = require "weft"
weft.core._resolver_delay(4000)
local res = "none"
weft.thread(function()
	res = table.concat({tostring(weft.addr("localhost", 80, "tcp", "inet"))}, " ")
end)
weft.sleep(0.1)
print("lookup pending: " .. res)
weft.exit()
]])
	if not out then
		tap.skip("WEFT_BIN not set", 3)
		return
	end
	ok(okc, "the program exited with status 0")
	like(out, "lookup pending: none", "the lookup was still in flight at exit")
	cmp_ok(dt, "<", 3, "the program did not wait for the 4 s lookup (wide bound: instrumented builds start slowly)")
end)

tap.test("two workers: one closes during a slow lookup, the other keeps resolving", function()
	local out, okc, dt = timed(2, [[
local weft = require "weft"
local ch = weft.channel("done", 2)
if weft.worker() == 1 then
	weft.core._resolver_delay(600)
	weft.thread(function() weft.addr("localhost", 80, "tcp", "inet") end)
	weft.sleep(0.05)
	-- this worker's script ends here; its state closes with the lookup
	-- in flight once the loop has nothing else to do
	ch:send("w1", weft.clock() + 10)
	return
end
local w1 = ch:recv(weft.clock() + 10)
local ai, err = weft.addr("localhost", 80, "tcp", "inet", nil, nil, weft.clock() + 5)
print(("after %s: %s %s"):format(tostring(w1), tostring(ai), tostring(err)))
weft.core._resolver_delay(0)
]])
	if not out then
		tap.skip("WEFT_BIN not set", 2)
		return
	end
	ok(okc, "the program exited with status 0")
	like(out, "after w1: 127%.0%.0%.1:80", "the other worker's lookup completed")
end)

tap.done()
