-- Timer scale, luv side (run by timers.sh): N one-shot uv timers due 1 to
-- 2 s ahead, measured as timers.lua measures weft's.
--   lua5.4 timers-luv.lua N
local uv = require "luv"
local N = assert(tonumber(arg[1]), "N")

local function rss_kb()
	for l in io.lines("/proc/self/status") do
		local v = l:match("^VmRSS:%s+(%d+)")
		if v then return tonumber(v) end
	end
end
local function clock() return uv.hrtime() / 1e9 end

local late, n = {}, 0
for i = 1, N do late[i] = 0 end
local rnd = math.random
uv.update_time()
local base = clock() + 1
local due = {}
for i = 1, N do due[i] = base + rnd() end
collectgarbage()
collectgarbage()
local rss0 = rss_kb()
local t0 = clock()
-- uv timers count from the loop's cached time (ms, the same monotonic
-- clock), which does not move while this loop runs.
local now_ms = uv.now()
for i = 1, N do
	local d = due[i]
	local t = uv.new_timer()
	t:start(math.max(0, math.ceil(d * 1000 - now_ms)), 0, function()
		n = n + 1
		late[n] = clock() - d
		t:close()
	end)
end
local sched = clock() - t0
local rss1 = rss_kb()
uv.run()
table.sort(late)
print(("RESULT luv-timers %d %.3f %.0f %.1f %.1f %.1f"):format(N, sched,
	(rss1 - rss0) * 1024 / N, late[N // 2 + 1] * 1e3,
	late[math.max(1, N * 99 // 100)] * 1e3, late[N] * 1e3))
