-- Multi-worker micro-benchmarks:
--   weft -t 2 contrib/bench/mw.lua    (ping-pong needs 2 workers)
--   weft -t 1 contrib/bench/mw.lua    (spawn throughput on one worker)
-- Prints one line per measurement; contrib/bench/mw.sh runs both.
local weft = require "weft"

local N_PING = tonumber(os.getenv("PING_N")) or 20000
local N_SPAWN = tonumber(os.getenv("SPAWN_N")) or 50000

local function percentile(t, p)
	table.sort(t)
	return t[math.max(1, math.ceil(#t * p))]
end

local w, n = weft.worker(), weft.workers()
local ping, pong = weft.channel("ping", 1), weft.channel("pong", 1)
local done = weft.channel("done", 1)

if n >= 2 and w == 2 then
	-- the echo side of the ping-pong, then help with spawned jobs
	for _ = 1, N_PING do assert(pong:send(assert(ping:recv()))) end
	done:recv()
	return
elseif w > 2 then
	done:recv()
	return
end

if n >= 2 then
	local rtt = {}
	for i = 1, 1000 do assert(ping:send(i)) assert(pong:recv()) end -- warm-up
	local t0 = weft.clock()
	for i = 1, N_PING - 1000 do
		local t = weft.clock()
		assert(ping:send(i))
		assert(pong:recv())
		rtt[i] = (weft.clock() - t) * 1e6
	end
	local dt = weft.clock() - t0
	print(("channel ping-pong across workers: round trip p50 %.1f us p99 %.1f us; %.0f round trips/s")
		:format(percentile(rtt, 0.5), percentile(rtt, 0.99), #rtt / dt))
end

local t0 = weft.clock()
local futures = {}
for i = 1, N_SPAWN do futures[i] = weft.spawn(function(x) return x end, i) end
for i = 1, N_SPAWN do assert(futures[i]:wait()) end
local dt = weft.clock() - t0
local st = weft.stats()
print(("spawn with %d worker%s: %.0f jobs/s (%d jobs; stolen by others: %d)")
	:format(n, n > 1 and "s" or "", N_SPAWN / dt, N_SPAWN, st.total.jobs_stolen))
for _ = 2, n do done:send(true) end
