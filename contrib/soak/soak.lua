-- Soak test: a mixed workload on every worker for a while, then exact
-- accounting.  Run with the launcher:
--
--   weft -t 2 contrib/soak/soak.lua [seconds]      (default 60; make soak)
--
-- Workloads (each a function in `workloads`, run on every worker, that
-- returns a table of counters checked at the end; add more below, e.g.
-- TLS echo and the Copas layer once they exist):
--   echo      clients connect to the shared listener, send random-sized
--             messages and read them back byte for byte; one connection in
--             ten is dropped mid-message (half with RST)
--   timers    runafter timers, some cancelled: each fires once, or never
--   spawn     jobs that report to a named channel: each runs exactly once
--   channels  a sequence sent from each worker to the other: all arrive, in
--             order
--   tls       TLS clients (verifying the server) connect to a shared TLS
--             listener, exchange messages byte for byte, and leave, one in
--             ten abruptly (no close_notify); certificates are made at start
--             with tests/tls-certs.sh (skipped without the openssl command)
--   copas     a Copas line server (copas.addserver on one shared address in
--             every worker) and Copas clients sending lines of random length
--             and reading them back with receive("*l")
-- Then: every check exact, the process RSS after warm-up grew by at most
-- 5 %, and as many descriptors are open at the end as at the start.
-- SOAK_ONLY="echo spawn" runs only the workloads named.
local weft = require "weft"
io.stdout:setvbuf("line")

local DURATION = tonumber(arg and arg[1]) or 60
-- Long enough for every workload's buffers, Lua heaps and OpenSSL's
-- allocations to reach their working size before RSS is first sampled.
local WARMUP = math.max(5, DURATION * 0.25)
local me, nw = weft.worker(), weft.workers()
local t_start = weft.clock()
local t_end = t_start + DURATION
local results = weft.channel("soak.results", 16)
local portch = weft.channel("soak.port", 16)

local function log(...)
	io.stderr:write(("[soak w%d %5.1fs] "):format(me, weft.clock() - t_start),
		table.concat({...}, " "), "\n")
end

local function rss_kb()
	local f = io.open("/proc/self/status")
	if not f then return 0 end
	local kb = f:read("a"):match("VmRSS:%s*(%d+)")
	f:close()
	return tonumber(kb) or 0
end

local function fd_count()
	local n = 0
	local st = assert(io.open("/proc/self/stat"))
	local pid = st:read("n")
	st:close()
	local p = io.popen("ls /proc/" .. tostring(pid) .. "/fd")
	for _ in p:lines() do n = n + 1 end
	p:close()
	return n
end

local rng = math.random
math.randomseed(os.time() + me * 7919)

------------------------------------------------------------------------
local workloads = {}

local listener, port
local function setup_listener()
	listener = assert(weft.tcp())
	if me == 1 then
		assert(listener:listen(64, "127.0.0.1", 0))
		port = listener.local_port
		for _ = 2, nw do assert(portch:send(port, weft.clock() + 10)) end
	else
		port = assert(portch:recv(weft.clock() + 10))
		assert(listener:listen(64, "127.0.0.1", port))
	end
end

-- A client's turn on an echo connection (TCP or TLS): up to `rounds`
-- messages of random size sent and read back byte for byte; one time in
-- ten the connection is dropped mid-message instead (`drop` decides how).
-- Counts into c: exchanges, bytes, aborted, errors.
local function exchange(s, rbuf, c, rounds, what, drop)
	for _ = 1, rng(1, rounds) do
		local len = rng(1, 60000)
		local msg = string.char(rng(0, 255)):rep(len)
		if rng(10) == 1 then
			s:send(msg:sub(1, rng(1, len)))
			drop()
			c.aborted = c.aborted + 1
			return
		end
		local sent = s:send(msg, nil, weft.clock() + 10)
		local got, gerr = s:recvn(rbuf, len, weft.clock() + 10)
		if not sent or not got or rbuf:tostring(1, len) ~= msg then
			c.errors = c.errors + 1
			log(what .. " mismatch or error:", tostring(gerr))
			return
		end
		c.exchanges = c.exchanges + 1
		c.bytes = c.bytes + len
	end
end

-- Echo what the stream s (a socket or a TLS stream) receives until the
-- peer closes or an error.
local function echo_back(s)
	local buf = weft.buffer(16384)
	while true do
		local n = s:recv(buf, #buf, weft.clock() + 10)
		if not n or n == 0 then break end
		if not s:send(buf, n, weft.clock() + 10) then break end
	end
end

-- Accept on l until stop() says so (checked at least once a second),
-- each connection served by handle(socket) in a thread of its own.
local function serve(l, stop, handle)
	weft.thread(function()
		while true do
			local s = l:accept(weft.clock() + 1)
			if not s then
				if stop() then return end
			else
				weft.thread(handle, s)
			end
		end
	end)
end

function workloads.echo(stop)
	local c = {exchanges = 0, bytes = 0, aborted = 0, errors = 0, served = 0}
	-- server: echo until the peer closes or resets
	serve(listener, stop, function(s)
		echo_back(s)
		s:close()
		c.served = c.served + 1
	end)
	local clients = 8
	local done = 0
	for _ = 1, clients do
		weft.thread(function()
			local rbuf = weft.buffer(65536)
			while not stop() do
				local s = assert(weft.tcp())
				local ok, err = s:connect("127.0.0.1", port, weft.clock() + 5)
				if not ok then
					c.errors = c.errors + 1
					log("connect:", err)
				else
					exchange(s, rbuf, c, 20, "echo", function()
						if rng(2) == 1 then s:setopt("so_linger", 0) end
					end)
				end
				s:close()
			end
			done = done + 1
		end)
	end
	return function()
		while done < clients do weft.sleep(0.05) end
		return c
	end
end

function workloads.timers(stop)
	local c = {scheduled = 0, fired = 0, cancelled = 0, late_fire = 0, ticks = 0}
	local ticker = weft.runevery(0.01, function()
		c.ticks = c.ticks + 1
		return not stop()
	end)
	weft.thread(function()
		while not stop() do
			local fired = false
			local cancelled = false
			c.scheduled = c.scheduled + 1
			local t = weft.runafter(rng() * 0.05, function()
				if cancelled then c.late_fire = c.late_fire + 1 end
				if fired then c.late_fire = c.late_fire + 1 end
				fired = true
				c.fired = c.fired + 1
			end)
			if rng(4) == 1 then
				weft.sleep(rng() * 0.01)
				if not fired then
					cancelled = true
					t:cancel()
					c.cancelled = c.cancelled + 1
				end
			end
			weft.sleep(0.002)
		end
	end)
	return function()
		weft.sleep(0.2)
		ticker:cancel()
		return c
	end
end

function workloads.spawn(stop)
	-- Each job reports its id on a channel before it returns, so once a
	-- batch's futures are all done its ids are all queued: exactly those,
	-- once each (a job run twice would show up as a stray id).
	local c = {jobs = 0, results_ok = 0, seen = 0, dup = 0}
	local ran = weft.channel("soak.ran." .. me, 64)
	local finished = false
	weft.thread(function()
		local id = 0
		while not stop() do
			local futures, batch = {}, {}
			for k = 1, 16 do
				id = id + 1
				batch[id] = 0
				futures[k] = {id, assert(weft.spawn(function(w, n)
					local weft = require "weft"
					assert(weft.channel("soak.ran." .. w):send(n))
					return n * n
				end, me, id))}
			end
			for _, f in ipairs(futures) do
				local ok, r = f[2]:wait(weft.clock() + 30)
				if ok and r == f[1] * f[1] then c.results_ok = c.results_ok + 1 end
				c.jobs = c.jobs + 1
			end
			while ran:count() > 0 do
				local n = ran:recv()
				if batch[n] == 0 then
					batch[n] = 1
					c.seen = c.seen + 1
				else
					c.dup = c.dup + 1
				end
			end
		end
		finished = true
	end)
	return function()
		while not finished do weft.sleep(0.05) end
		return c
	end
end

function workloads.channels(stop)
	local c = {sent = 0, received = 0, out_of_order = 0}
	local to = me % nw + 1
	local out = weft.channel(("soak.seq.%d.%d"):format(me, to), 64)
	local inc = weft.channel(("soak.seq.%d.%d"):format((me - 2) % nw + 1, me), 64)
	local recv_done = false
	weft.thread(function()
		local n = 0
		while not stop() do
			n = n + 1
			if not out:send(n, weft.clock() + 10) then break end
			c.sent = n
			if n % 64 == 0 then weft.sleep(0.001) end
		end
		out:send(-1, weft.clock() + 10)
	end)
	weft.thread(function()
		local expect = 1
		while true do
			local v = inc:recv(weft.clock() + 20)
			if v == nil or v == -1 then break end
			if v ~= expect then c.out_of_order = c.out_of_order + 1 end
			expect = v + 1
			c.received = c.received + 1
		end
		recv_done = true
	end)
	return function()
		while not recv_done do weft.sleep(0.05) end
		return c
	end
end

function workloads.tls(stop)
	local tls = require "weft.tls"
	local c = {exchanges = 0, bytes = 0, handshakes = 0, aborted = 0, errors = 0, skipped = 0}
	local ch = weft.channel("soak.tls", 16)
	local setup
	if me == 1 then
		local top = debug.getinfo(1, "S").source:match("^@(.*)/contrib/soak/[^/]*$") or "."
		local tmp = os.tmpname()
		os.remove(tmp)
		local dir = tmp .. ".certs"
		setup = {dir = dir, port = 0}
		if os.execute(("sh %q/tests/tls-certs.sh %q >/dev/null 2>&1"):format(top, dir)) then
			local l = assert(weft.tcp())
			assert(l:listen(64, "127.0.0.1", 0))
			setup.port, setup.listener = l.local_port, l
		end
		for _ = 2, nw do assert(ch:send({dir = setup.dir, port = setup.port}, weft.clock() + 10)) end
	else
		setup = assert(ch:recv(weft.clock() + 30))
		if setup.port ~= 0 then
			setup.listener = assert(weft.tcp())
			assert(setup.listener:listen(64, "127.0.0.1", setup.port))
		end
	end
	if setup.port == 0 then
		log("tls: no certificates (is the openssl command there?): skipped")
		c.skipped = 1
		return function() return c end
	end
	local l = setup.listener
	local sctx = assert(tls.context {mode = "server", certificate = setup.dir .. "/server.pem",
		key = setup.dir .. "/server.key"})
	local cctx = assert(tls.context {mode = "client", cafile = setup.dir .. "/ca.pem"})
	serve(l, stop, function(a)
		local t = tls.wrap(a, sctx)
		if t then
			echo_back(t)
			t:close()
		else
			a:close()
		end
	end)
	local clients, done = 4, 0
	for _ = 1, clients do
		weft.thread(function()
			local rbuf = weft.buffer(65536)
			while not stop() do
				local t, err = tls.connect("localhost", setup.port, cctx, weft.clock() + 10)
				if not t then
					c.errors = c.errors + 1
					log("tls connect:", err)
				else
					c.handshakes = c.handshakes + 1
					exchange(t, rbuf, c, 10, "tls", function()
						t:tcp():close() -- no close_notify
					end)
					t:close()
				end
			end
			done = done + 1
		end)
	end
	return function()
		while done < clients do weft.sleep(0.05) end
		l:close()
		if me == 1 then os.execute(("rm -rf %q"):format(setup.dir)) end
		return c
	end
end

function workloads.copas(stop)
	local copas = require "weft.copas"
	local c = {lines = 0, bytes = 0, errors = 0, served = 0}
	local ch = weft.channel("soak.copas", 16)
	local srv
	if me == 1 then
		srv = assert(copas.socket.bind("127.0.0.1", 0))
		local _, p = srv:getsockname()
		for _ = 2, nw do assert(ch:send(p, weft.clock() + 10)) end
	else
		srv = assert(copas.socket.bind("127.0.0.1", assert(ch:recv(weft.clock() + 30))))
	end
	local _, port = srv:getsockname()
	copas.addserver(srv, copas.handler(function(skt)
		while true do
			local l = skt:receive("*l")
			if not l or not skt:send(l .. "\n") then break end
		end
		c.served = c.served + 1
	end), 10)
	local clients, done = 4, 0
	for _ = 1, clients do
		copas.addthread(function()
			while not stop() do
				local skt = copas.wrap(copas.socket.tcp())
				skt:settimeout(10)
				local ok, err = skt:connect("127.0.0.1", port)
				if not ok then
					c.errors = c.errors + 1
					log("copas connect:", err)
				else
					for _ = 1, rng(1, 20) do
						local line = ("%d:"):format(rng(1e6)) .. ("c"):rep(rng(0, 3000))
						local sent = skt:send(line .. "\n")
						local got, gerr = skt:receive("*l")
						if not sent or got ~= line then
							c.errors = c.errors + 1
							log("copas echo mismatch or error:", tostring(gerr))
							break
						end
						c.lines = c.lines + 1
						c.bytes = c.bytes + #line
					end
				end
				skt:close()
			end
			done = done + 1
		end)
	end
	return function()
		while done < clients do weft.sleep(0.05) end
		copas.removeserver(srv)
		return c
	end
end

------------------------------------------------------------------------
local fds_start = fd_count()
setup_listener()
local stopping = false
local function stop() return stopping or weft.clock() >= t_end end
local finishers = {}
local empty = function() return function() return {} end end
for _, name in ipairs({"echo", "timers", "spawn", "channels", "tls", "copas"}) do
	local only = os.getenv("SOAK_ONLY")
	if only and not only:find(name, 1, true) then
		finishers[name] = empty()
	else
		finishers[name] = workloads[name](stop)
	end
end

-- RSS is sampled under load after warm-up and again just before the
-- end, each time after every worker has collected its garbage (they all
-- do it at the same clock times), so the two samples compare like with
-- like.
weft.sleep_until(t_start + WARMUP)
collectgarbage()
weft.sleep(0.1)
local rss0, fds0 = rss_kb(), fd_count()
log(("warmed up: rss %d kB, %d fds"):format(rss0, fds0))
local peak = rss0
while weft.clock() < t_end - 1.5 do
	weft.sleep(1)
	local r = rss_kb()
	if r > peak then peak = r end
end
weft.sleep_until(t_end - 0.5)
collectgarbage()
weft.sleep(0.1)
local rss_load = rss_kb()
log(("late: rss %d kB"):format(rss_load))
weft.sleep_until(t_end)
stopping = true
local counters = {}
for name, fin in pairs(finishers) do
	counters[name] = fin()
end
listener:close()
weft.sleep(0.3)
collectgarbage()
collectgarbage()

local failures = {}
local function check(cond, what)
	if not cond then failures[#failures + 1] = what end
end
-- Only the workloads that ran are checked (SOAK_ONLY leaves the others'
-- counters empty).
local e, t, s, ch = counters.echo, counters.timers, counters.spawn, counters.channels
if e.errors then
	check(e.errors == 0, ("echo: %d errors"):format(e.errors))
	check(e.exchanges > 0, "echo: no exchange completed")
end
if t.scheduled then
	check(t.fired + t.cancelled == t.scheduled, ("timers: %d scheduled, %d fired + %d cancelled")
		:format(t.scheduled, t.fired, t.cancelled))
	check(t.late_fire == 0, ("timers: %d fired twice or after cancel"):format(t.late_fire))
end
if s.jobs then
	check(s.results_ok == s.jobs, ("spawn: %d of %d results right"):format(s.results_ok, s.jobs))
	check(s.seen == s.jobs and s.dup == 0, ("spawn: %d jobs, %d ran, %d twice"):format(s.jobs, s.seen, s.dup))
end
if ch.out_of_order then
	check(ch.out_of_order == 0, ("channels: %d out of order"):format(ch.out_of_order))
end
local cp = counters.copas
if cp.lines then
	check(cp.errors == 0, ("copas: %d errors"):format(cp.errors))
	check(cp.lines > 0, "copas: no line echoed")
end
local tl = counters.tls
if tl.skipped == 0 then
	check(tl.errors == 0, ("tls: %d errors"):format(tl.errors))
	check(tl.handshakes > 0 and tl.exchanges > 0, "tls: no exchange completed")
end

if me ~= 1 then
	-- worker 2 (and more) report to worker 1
	assert(results:send({failures = failures, counters = counters}, weft.clock() + 30))
	return
end
local mine = failures
failures = {}
local all = {{failures = mine, counters = counters}}
for _ = 2, nw do all[#all + 1] = assert(results:recv(weft.clock() + 60)) end
-- channel sequences: what each worker sent is what the next received
for w = 1, ch.sent and nw or 0 do
	local sent = all[w].counters.channels.sent
	local got = all[w % nw + 1].counters.channels.received
	check(sent == got, ("channels: worker %d sent %d, worker %d received %d"):format(
		w, sent, w % nw + 1, got))
end
local rss1, fds1 = rss_kb(), fd_count()
-- At most as many: at the start the other worker may still be reading
-- its script, an extra descriptor for a moment.
check(fds1 <= fds_start, ("fds: %d at the start, %d at the end"):format(fds_start, fds1))
check(rss_load <= rss0 * 1.05, ("rss: %d kB after warm-up, %d kB at the end (> 5 %%)"):format(rss0, rss_load))

local sum = {}
for w, r in ipairs(all) do
	for name, cs in pairs(r.counters) do
		for k, v in pairs(cs) do
			local key = name .. "." .. k
			sum[key] = (sum[key] or 0) + v
		end
	end
	for _, f in ipairs(r.failures) do failures[#failures + 1] = ("worker %d: %s"):format(w, f) end
end
local keys = {}
for k in pairs(sum) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do print(("%-24s %d"):format(k, sum[k])) end
print(("rss_warm_kb %d rss_late_kb %d (%+.1f %%) rss_peak_kb %d rss_after_kb %d fds_warm %d fds_end %d")
	:format(rss0, rss_load, (rss_load - rss0) * 100 / rss0, peak, rss1, fds0, fds1))
print(("fds_start %d"):format(fds_start))
if #failures > 0 then
	for _, f in ipairs(failures) do print("FAIL " .. f) end
	os.exit(1)
end
print(("soak: ok (%d s, %d workers)"):format(DURATION, nw))
