-- Timer scale, weft side (run by timers.sh):
--   weft timers.lua N timers    N timers due 1 to 2 s ahead (weft.runat: the
--                               object weft.runafter makes too, given the
--                               deadline itself so lateness is exact)
--   weft timers.lua N threads   N threads sleeping until 1 to 2 s ahead
-- Prints one line:
--   RESULT what N schedule_s bytes_each late_p50_ms late_p99_ms late_max_ms
-- bytes_each: resident memory grown while scheduling, per timer or thread
-- (the function is shared, so this is what the runtime keeps for each).
local weft = require "weft"
local N = assert(tonumber(arg[1]), "N")
local mode = arg[2] or "timers"

local function rss_kb()
	for l in io.lines("/proc/self/status") do
		local v = l:match("^VmRSS:%s+(%d+)")
		if v then return tonumber(v) end
	end
end

weft.run(function()
	local late, n = {}, 0
	for i = 1, N do late[i] = 0 end -- preallocated: not counted below
	collectgarbage()
	collectgarbage()
	local rss0 = rss_kb()
	local clock, rnd = weft.clock, math.random
	local t0 = clock()
	local base = t0 + 1
	if mode == "timers" then
		-- One function for all: it finds its deadline by order of firing
		-- (timers fire in deadline order), from a sorted copy.
		local due = {}
		for i = 1, N do due[i] = base + rnd() end
		local sorted = table.move(due, 1, N, 1, {})
		table.sort(sorted)
		collectgarbage()
		rss0 = rss_kb()
		t0 = clock()
		local f = function()
			n = n + 1
			late[n] = clock() - sorted[n]
		end
		for i = 1, N do weft.runat(due[i], f) end
	else
		local f = function(d)
			weft.sleep_until(d)
			n = n + 1
			late[n] = clock() - d
		end
		for _ = 1, N do weft.thread(f, base + rnd()) end
	end
	local sched = clock() - t0
	local rss1 = rss_kb()
	while n < N do weft.sleep(0.05) end
	table.sort(late)
	print(("RESULT weft-%s %d %.3f %.0f %.1f %.1f %.1f"):format(mode, N, sched,
		(rss1 - rss0) * 1024 / N, late[N // 2 + 1] * 1e3,
		late[math.max(1, N * 99 // 100)] * 1e3, late[N] * 1e3))
end)
