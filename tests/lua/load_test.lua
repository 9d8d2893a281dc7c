-- Load: 10 000 concurrent TCP connections held open and echoed through;
-- 10 000 sleeping threads; 10 000 timers.
--
-- Both ends of 10 000 connections in one process need 20 000+ descriptors,
-- more than the usual hard limit, so the client side runs in a second weft
-- process (this file, run with the arguments "client PORT N") when
-- WEFT_BIN is set; each process then holds about 10 000 descriptors.  When
-- a process runs out of descriptors ("too_many_open_files") the test is
-- skipped with that reason.
local weft = require "weft"

-- The Windows build's tests (run under Wine, where every socket call is a
-- round trip to Wine's server) divide the sizes by WEFT_TEST_SCALE.
local WINDOWS = package.config:sub(1, 1) == "\\"
local N = 10000 // (WINDOWS and tonumber(os.getenv("WEFT_TEST_SCALE")) or 1)
local NAME = N == 10000 and "10 000" or tostring(N)

local function dl(s)
	return weft.clock() + s
end

-- The client side: connects a control connection (first 4 bytes "CTRL"),
-- then n data connections, all held open, then two echo rounds over all of
-- them; reports "OK n", "SKIP reason" or "FAIL reason" on the control
-- connection and returns it.  Runs inside a weft thread.
local function run_clients(port, n)
	local ctrl, cerr = weft.tcp()
	if not ctrl then return "FAIL control socket: " .. tostring(cerr) end
	local r, err = ctrl:connect("127.0.0.1", port, dl(10))
	if not r then return "FAIL control connect: " .. tostring(err) end
	assert(ctrl:send("CTRL"))
	local conns = {}
	local failure
	local nworkers = 100
	local function parallel(f)
		local left = nworkers
		local sj = weft.sleep_job()
		local waiting = false
		for w = 1, nworkers do
			weft.thread(function()
				local good, e = pcall(f, w)
				if not good then failure = failure or ("error: " .. tostring(e)) end
				left = left - 1
				if left == 0 and waiting then sj:wakeup() end
			end)
		end
		if left > 0 then
			waiting = true
			sj:sleep(50)
		end
	end
	local next_id = 1
	local t0 = weft.clock()
	parallel(function()
		while not failure and next_id <= n do
			local id = next_id
			next_id = next_id + 1
			local c, e = weft.tcp()
			if not c then
				failure = failure or ("socket #%d: %s"):format(id, tostring(e))
				return
			end
			local okc, e2 = c:connect("127.0.0.1", port, dl(20))
			if not okc then
				c:close()
				failure = failure or ("connect #%d: %s"):format(id, tostring(e2))
				return
			end
			conns[id] = c
		end
	end)
	local tconn = weft.clock() - t0
	local opened = 0
	for _ in pairs(conns) do opened = opened + 1 end
	local report
	if failure then
		if failure:find("too_many_open_files", 1, true) then
			report = ("SKIP client ran out of descriptors after %d connections (%s)"):format(opened, failure)
		else
			report = ("FAIL after %d connections: %s"):format(opened, failure)
		end
	else
		-- every connection is open now; echo through all of them, twice
		for round = 1, 2 do
			parallel(function(w)
				local buf = weft.buffer(8)
				for id = w, n, nworkers do
					local msg = ("%07d%d"):format(id, round)
					local okc, e = conns[id]:send(msg, nil, dl(20))
					if not okc then
						failure = failure or ("send #%d: %s"):format(id, tostring(e))
						return
					end
				end
				for id = w, n, nworkers do
					local msg = ("%07d%d"):format(id, round)
					local b, e = conns[id]:recvn(buf, 8, dl(20))
					if not b then
						failure = failure or ("recvn #%d round %d: %s"):format(id, round, tostring(e))
						return
					end
					if buf:tostring() ~= msg then
						failure = failure or ("echo #%d round %d: got %q"):format(id, round, buf:tostring())
						return
					end
				end
			end)
			if failure then break end
		end
		if failure then
			report = "FAIL " .. failure
		else
			report = ("OK %d connected in %.2f s"):format(opened, tconn)
		end
	end
	ctrl:send(report .. "\n", nil, dl(5))
	ctrl:close()
	for _, c in pairs(conns) do c:close() end
	return report
end

if arg and arg[1] == "client" then
	local port, n = tonumber(arg[2]), tonumber(arg[3])
	local report = weft.run(run_clients, port, n)
	io.stdout:write(report, "\n")
	io.stdout:flush()
	os.exit(0)
end

-- the launcher running this file: WEFT_BIN, or the program in arg
local function weft_bin()
	local bin = os.getenv("WEFT_BIN")
	if bin or not arg then return bin end
	local i = -1
	while arg[i - 1] do i = i - 1 end
	return arg[i] ~= nil and i < 0 and arg[i] or nil
end

local tap = require "tap"
local H = tap.weft_harness(weft)
local ok, is, cmp_ok = tap.ok, tap.is, tap.cmp_ok

local function shquote(s)
	return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

H.test(NAME .. " concurrent connections held open and echoed through", function()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local port = l.local_port
	local bin = weft_bin()
	local child
	if bin and arg and arg[0] then
		local cmd = ("exec %s -m %s client %d %d 2>&1"):format(
			shquote(bin), shquote(arg[0]), port, N)
		if WINDOWS then -- cmd.exe runs the line
			cmd = ("%s -m %s client %d %d 2>&1"):format(bin:gsub("/", "\\"), arg[0], port, N)
		end
		child = assert(io.popen(cmd, "r"))
	else
		tap.diag("launcher unknown: clients run in this process")
		weft.thread(run_clients, port, N)
	end
	local accepted, open, peak, echoed = 0, 0, 0, 0
	local report, accept_err
	local handlers = 0
	local function handle(a)
		handlers = handlers + 1
		open = open + 1
		if open > peak then peak = open end
		local buf = weft.buffer(64)
		local b = a:recvn(buf, 4, dl(50))
		if b and buf:tostring(1, 4) == "CTRL" then
			local rb, len = a:recvall(dl(50))
			report = rb and rb:tostring(1, len):gsub("\n$", "") or "no report"
			l:close() -- ends the accept loop
		elseif b then
			local okc = a:send(buf, 4, dl(20))
			while okc do
				local n = a:recv(buf, #buf, dl(50))
				if not n or n == 0 then break end
				echoed = echoed + n
				okc = a:send(buf, n, dl(20))
			end
		end
		a:close()
		open = open - 1
		handlers = handlers - 1
	end
	local first = true
	while true do
		local a, err = l:accept(dl(first and 15 or 50))
		first = false
		if not a then
			if err ~= "closed" then
				accept_err = err
				l:close()
			end
			break
		end
		accepted = accepted + 1
		weft.thread(handle, a)
	end
	local until_ = dl(20)
	while handlers > 0 and weft.clock() < until_ do weft.sleep(0.01) end
	local out, status = "", nil
	if child then
		out = child:read("a") or ""
		local _, how, code = child:close()
		status = how == "signal" and ("killed by signal " .. tostring(code)) or code
	end
	if accept_err == "too_many_open_files" then
		tap.skip(("server ran out of descriptors after %d connections (raise the fd limit)"):format(accepted))
		return
	end
	if report and report:match("^SKIP") then
		tap.skip(report)
		return
	end
	is(accept_err, nil, "accept loop ended only by close")
	ok(report and report:match("^OK " .. N .. " "), "client side reports success", "report: " .. tostring(report),
		"child output: " .. out)
	is(accepted, N + 1, "accepted all connections (plus the control connection)")
	cmp_ok(peak, ">=", N + 1, "all connections were open at the same time")
	is(echoed, N * 8 * 2 - N * 4, "bytes echoed after the first 4 of each connection")
	is(handlers, 0, "all server threads finished")
	if child then is(status, 0, "client process exit status") end
	tap.diag("client: " .. tostring(report))
end, 58)

H.test(NAME .. " sleeping threads wake in deadline order", function()
	local n = N
	local woke, late, early = {}, 0, 0
	local t0 = weft.clock()
	local seed = 7
	for i = 1, n do
		seed = (seed * 1103515245 + 12345) & 0x7fffffff
		local d = 0.05 + (seed % 400) / 1000 -- 50..449 ms, whole ms
		weft.thread(function()
			local target = t0 + d
			-- lateness counts from the deadline, or from when this thread
			-- began to sleep if creating the 10 000 threads took longer
			-- (it can on a slow or instrumented build)
			local from = math.max(target, weft.clock())
			weft.sleep_until(target)
			local now = weft.clock()
			if now < target then early = early + 1 end
			if now - from > late then late = now - from end
			woke[#woke + 1] = d
		end)
	end
	while #woke < n and weft.clock() < t0 + 5 do weft.sleep(0.05) end
	is(#woke, n, "all threads woke")
	is(early, 0, "no thread woke early")
	cmp_ok(late, "<", 0.1, "worst lateness under 100 ms")
	-- deadlines are whole milliseconds apart; allow inversions within 2 ms
	-- (timers due in the same loop step)
	local inorder, where = true, nil
	local maxd = 0
	for i = 1, #woke do
		if woke[i] < maxd - 0.0021 then inorder, where = false, i break end
		if woke[i] > maxd then maxd = woke[i] end
	end
	ok(inorder, "wake-up order follows deadlines",
		where and ("thread with deadline %g ms woke after one of %g ms"):format(woke[where] * 1000, maxd * 1000))
end, 15)

H.test(NAME .. " timers", function()
	local n, fired, cancelled_fired = N, 0, 0
	local timers = {}
	for i = 1, n do
		timers[i] = weft.runafter(0.01 + (i % 100) / 1000, function()
			if i % 2 == 0 then cancelled_fired = cancelled_fired + 1 end
			fired = fired + 1
		end)
	end
	for i = 2, n, 2 do timers[i]:cancel() end
	weft.sleep(0.5)
	is(fired, n // 2, "all uncancelled timers fired")
	is(cancelled_fired, 0, "no cancelled timer fired")
end, 15)

tap.done()
