-- Hostile peers and faults: slow senders, peers that never read,
-- half-closed connections, resets, oversized input, failing user code.
-- Each check holds an invariant (a deadline is kept, memory stays bounded,
-- every byte arrives, the others keep running), never a speed.
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, is_deeply, like, cmp_ok = tap.ok, tap.is, tap.is_deeply, tap.like, tap.cmp_ok

local function deadline(s)
	return weft.clock() + (s or 5)
end

local tcp_pair = require("net_helper").tcp_pair

local function open_fds()
	local n = 0
	local p = io.popen("ls /proc/self/fd 2>/dev/null")
	-- counts the shell's descriptors, not ours: use our own pid instead
	p:close()
	p = io.popen("ls /proc/" .. tostring(io.open("/proc/self/stat"):read("n")) .. "/fd")
	for _ in p:lines() do n = n + 1 end
	p:close()
	return n
end

H.test("slowloris: one byte at a time is cut off by the reader's deadline", function()
	local c, a = tcp_pair()
	local stop = false
	weft.thread(function()
		while not stop do
			if not c:send("x") then return end
			weft.sleep(0.05)
		end
	end)
	local buf = weft.buffer(1000)
	local t0 = weft.clock()
	local r, err, got = a:recvn(buf, 1000, weft.clock() + 0.3)
	local dt = weft.clock() - t0
	is(r, nil, "recvn of a request that trickles in fails")
	is(err, "timeout", "at the deadline")
	cmp_ok(got, ">=", 1, "with what had arrived")
	cmp_ok(got, "<", 1000, "not the whole request")
	cmp_ok(dt, "<", 1.3, "the deadline was kept (wide bound)")
	stop = true
	a:close() c:close()
end)

H.test("a peer that never reads: the writer times out, memory stays bounded", function()
	local c, a = tcp_pair()
	assert(a:setopt("so_sndbuf", 65536))
	local chunk = ("y"):rep(65536)
	local mem0 = collectgarbage("count")
	local sent, err, partial = 0, nil, nil
	local t0 = weft.clock()
	while true do
		local r, e, p = a:send(chunk, nil, weft.clock() + 0.2)
		if not r then err, partial = e, p break end
		sent = sent + #chunk
		if sent > 64 * 1024 * 1024 then break end
	end
	is(err, "timeout", "send times out once the kernel's buffers are full")
	cmp_ok(sent, "<", 64 * 1024 * 1024, "the sender was held back (nothing queued in weft)")
	cmp_ok(collectgarbage("count") - mem0, "<", 4096, "Lua memory did not grow with what was sent")
	cmp_ok(weft.clock() - t0, "<", 5, "bounded time")
	-- The reader gets every byte that send accepted, in order.
	a:shutdown("w")
	local n = 0
	local buf = weft.buffer(65536)
	while true do
		local r = c:recv(buf, #buf, deadline())
		if not r or r == 0 then break end
		n = n + r
	end
	is(n, sent + (partial or 0), "every accepted byte arrived")
	a:close() c:close()
end)

H.test("half-close: after the peer's FIN we read 0 and keep writing", function()
	local c, a = tcp_pair()
	assert(c:send("request"))
	assert(c:shutdown("w"))
	local buf = weft.buffer(64)
	is(a:recv(buf, 64, deadline()), 7, "the request")
	is(a:recv(buf, 64, deadline()), 0, "then end of stream")
	is(a:send(("z"):rep(100000), nil, deadline()), true, "the server still writes")
	a:close()
	local got = 0
	while true do
		local r = c:recv(buf, 64, deadline())
		if not r or r == 0 then break end
		got = got + r
	end
	is(got, 100000, "the half-closed client got the whole reply")
	c:close()
end)

H.test("RST mid-operation: connection_reset, never SIGPIPE", function()
	local c, a = tcp_pair()
	local res
	weft.thread(function() res = {a:recv(weft.buffer(8), 8, deadline())} end)
	weft.sleep(0.01)
	assert(c:setopt("so_linger", 0))
	c:close() -- RST
	while not res do weft.sleep(0.001) end
	is_deeply(res, {nil, "connection_reset"}, "a reader waiting when RST comes")
	local errs = {}
	for i = 1, 3 do
		local r, err = a:send("after reset", nil, deadline())
		errs[i] = r and "ok" or err
	end
	ok(errs[1] == "connection_reset" or errs[1] == "broken_pipe", "send after RST fails: " .. errs[1])
	is(errs[3], "broken_pipe", "and keeps failing (no SIGPIPE: the process is alive)")
	a:close()
	is_deeply({a:recv(weft.buffer(1), 1)}, {nil, "closed"}, "a closed socket says closed")
end)

tap.test("RST and writes to a closed peer do not raise SIGPIPE, even in stock lua5.4", function()
	local builddir = os.getenv("WEFT_BUILDDIR")
	local san = os.getenv("WEFT_SANITIZERS")
	if not builddir or (san and san ~= "") then
		tap.skip("needs the shared module and an uninstrumented build", 1)
		return
	end
	local so = builddir .. "/src/.libs/core.so"
	local dir = os.tmpname()
	os.remove(dir)
	os.execute(("mkdir -p '%s/weft' && ln -s '%s' '%s/weft/core.so'"):format(dir, so, dir))
	local script = [[
		local weft = require "weft"
		weft.run(function()
			local l = assert(weft.tcp()); assert(l:listen("127.0.0.1", 0))
			local a
			weft.thread(function() a = l:accept() end)
			local c = assert(weft.tcp()); assert(c:connect("127.0.0.1", l.local_port))
			while not a do weft.sleep(0.001) end
			a:close()
			weft.sleep(0.01)
			local last
			for i = 1, 5 do local r, e = c:send("x"); last = e or last end
			print("alive " .. tostring(last))
		end)
	]]
	local f = assert(io.open(dir .. "/sigpipe.lua", "w"))
	f:write(script)
	f:close()
	local p = io.popen(("cd '%s' && LUA_CPATH='%s/?.so' LUA_PATH='%s/lua/?.lua' %s sigpipe.lua 2>&1; echo status=$?"):format(
		dir, dir, os.getenv("WEFT_SRCDIR") or ".", os.getenv("LUA") or "lua5.4"))
	local out = p:read("a")
	p:close()
	os.execute(("rm -rf '%s'"):format(dir))
	like(out, "alive [%a_]+\nstatus=0", "the writer saw an error and lived")
end)

H.test("recvall limit: a peer sending too much costs at most the limit", function()
	local c, a = tcp_pair()
	weft.thread(function()
		local chunk = ("A"):rep(65536)
		for _ = 1, 64 do -- 4 MiB
			if not c:send(chunk, nil, deadline()) then break end
		end
		c:close()
	end)
	local r, err, buf, len = a:recvall(deadline(), 100000)
	is(r, nil, "recvall over the limit fails")
	is(err, "too_large", "with a clear message")
	is(len, 100000, "keeping the limit's worth")
	cmp_ok(#buf, "<=", 100001, "the buffer never grew past the limit")
	a:close()
	c, a = tcp_pair()
	assert(c:send("small"))
	c:close()
	local b2, n2 = a:recvall(deadline(), 5)
	is(n2, 5, "exactly the limit is fine")
	is(b2 and b2:tostring(), "small", "with the data")
	a:close()
	ok(not pcall(a.recvall, a, nil, -1), "a negative limit raises")
	c, a = tcp_pair()
	assert(c:send(("B"):rep(1000)))
	c:close()
	local rd, rerr = a:recvall_read(deadline(), 10)
	is_deeply({rd, rerr}, {nil, "too_large"}, "recvall_read takes the limit too")
	a:close()
end)

H.test("an error in one thread stops neither the loop nor the others", function()
	local seen = {}
	weft.seterrorhandler(function(th, msg) seen[#seen + 1] = msg end)
	local ticks = 0
	local ticker = weft.thread(function()
		for _ = 1, 10 do weft.sleep(0.005) ticks = ticks + 1 end
	end)
	weft.thread(function()
		weft.sleep(0.01)
		local t = nil
		return t.field -- a bug
	end)
	while coroutine.status(ticker) ~= "dead" do weft.sleep(0.005) end
	H.restore_handler()
	is(ticks, 10, "the other thread ran to the end")
	is(#seen, 1, "the error went to the handler once")
	like(seen[1] or "", "attempt to index a nil value", "with the message")
	like(seen[1] or "", "stack traceback", "and a traceback")
end)

-- Slow (instrumented) builds divide the load by WEFT_TEST_SCALE.
local SCALE = tonumber(os.getenv("WEFT_TEST_SCALE")) or 1

-- The listener closes while clients are still arriving: some connect,
-- some are refused (which of them depends on the machine's speed); every
-- connection that was accepted must end, and every descriptor be closed.
H.test("closing under load: no descriptor is leaked", function()
	local before = open_fds()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local port = l.local_port
	local accepted, server_done = 0, 0
	local acceptor = weft.thread(function()
		while true do
			local s = l:accept(deadline(30))
			if not s then return end
			accepted = accepted + 1
			weft.thread(function()
				local buf = weft.buffer(4096)
				while true do
					local n = s:recv(buf, 4096, deadline(30))
					if not n or n == 0 then break end
					if not s:send(buf, n, deadline(30)) then break end
				end
				s:close()
				server_done = server_done + 1
			end)
		end
	end)
	local clients = {}
	local nclients = math.max(5, 50 // SCALE)
	local connected, refused = 0, 0
	for i = 1, nclients do
		clients[i] = weft.thread(function()
			local c = assert(weft.tcp())
			if not c:connect("127.0.0.1", port, deadline(30)) then
				refused = refused + 1
				c:close()
				return
			end
			connected = connected + 1
			local buf = weft.buffer(1024)
			for _ = 1, 5 do
				if not c:send(("q"):rep(1024), nil, deadline(30)) then break end
				if not c:recvn(buf, 1024, deadline(30)) then break end
			end
			if i % 3 == 0 then c:setopt("so_linger", 0) end -- some leave with RST
			c:close()
		end)
	end
	weft.sleep(0.05)
	l:close() -- the listener goes while connections are in flight
	local t = deadline(45)
	local function all_dead()
		for _, th in ipairs(clients) do
			if coroutine.status(th) ~= "dead" then return false end
		end
		return coroutine.status(acceptor) == "dead"
	end
	while not (all_dead() and server_done == accepted) and weft.clock() < t do
		weft.sleep(0.01)
	end
	ok(all_dead(), "every client and the acceptor ended")
	is(connected + refused, nclients, "every client connected or was refused")
	is(server_done, accepted, "every accepted connection ended")
	weft.sleep(0.02)
	is(open_fds(), before, "as many descriptors open as before")
end, 60)

H.test("instruction budget: a runaway thread fails, its worker goes on", function()
	local seen = {}
	weft.seterrorhandler(function(th, msg) seen[#seen + 1] = msg end)
	is(weft.setbudget(1000000), nil, "no budget before")
	local ticks = 0
	local ticker = weft.thread(function()
		for _ = 1, 10 do weft.sleep(0.005) ticks = ticks + 1 end
	end)
	local runaway = weft.thread(function()
		weft.sleep(0.01)
		while true do end
	end)
	-- A thread that does much work but waits in between is fine.
	local worker_done = false
	weft.thread(function()
		for _ = 1, 20 do
			local x = 0
			for i = 1, 10000 do x = x + i end
			weft.sleep(0)
		end
		worker_done = true
	end)
	local t = deadline(30)
	while (coroutine.status(ticker) ~= "dead" or coroutine.status(runaway) ~= "dead"
		or not worker_done) and weft.clock() < t do
		weft.sleep(0.005)
	end
	is(weft.setbudget(), 1000000, "setbudget returns the previous budget")
	H.restore_handler()
	is(ticks, 10, "the other thread ran to the end")
	ok(worker_done, "a busy thread that waits now and then is not stopped")
	is(#seen, 1, "one thread failed")
	like(seen[1] or "", "instruction budget exceeded", "the runaway one, saying why")
	ok(not pcall(weft.setbudget, -1), "a negative budget raises")
end, 60)

-- Runs source with the launcher and extra options: output, exit status.
local function launch(opts, source)
	local bin = os.getenv("WEFT_BIN")
	if not bin then return nil end
	local path = os.tmpname()
	local f = assert(io.open(path, "w"))
	f:write(source)
	f:close()
	local p = io.popen(("timeout -k 2 60 %s %s %s 2>&1; echo status=$?"):format(bin, opts, path))
	local out = p:read("a")
	p:close()
	os.remove(path)
	return out
end

tap.test("weft -M: an allocation over the limit fails that thread, not the process", function()
	local out = launch("-t 2 -M 32m", [[
local weft = require "weft"
local seen
weft.seterrorhandler(function(th, msg) seen = msg end)
local ticks = 0
local ticker = weft.thread(function()
	for _ = 1, 20 do weft.sleep(0.005) ticks = ticks + 1 end
end)
if weft.worker() == 1 then
	weft.thread(function()
		weft.sleep(0.01)
		local hog = {}
		for i = 1, 1e9 do hog[i] = ("x"):rep(200) .. i end
	end)
end
while coroutine.status(ticker) ~= "dead" do weft.sleep(0.01) end
weft.sleep(0.05)
local t = {}
for i = 1, 10000 do t[i] = tostring(i) end
print(("worker %d ticks %d error %s after %d"):format(weft.worker(), ticks,
	seen and seen:match("not enough memory") or "none", #t))
]])
	if not out then
		tap.skip("WEFT_BIN not set", 4)
		return
	end
	like(out, "worker 1 ticks 20 error not enough memory after 10000",
		"worker 1: the hog failed, the other thread and later allocations went on")
	like(out, "worker 2 ticks 20 error none after 10000", "worker 2 was not disturbed")
	like(out, "status=0", "the process exited normally")
	like(launch("-M 12q", "print'x'") or "", "%-M wants a size.-status=1",
		"a malformed size is refused")
end)

H.test("exiting with sends in flight and input unread: every accepted byte is delivered", function()
	local bin = os.getenv("WEFT_BIN")
	if not bin then
		tap.skip("WEFT_BIN not set", 3)
		return
	end
	local path = os.tmpname()
	local f = assert(io.open(path, "w"))
	f:write([[
local weft = require "weft"
local l = assert(weft.tcp())
assert(l:listen("127.0.0.1", 0))
io.stdout:write(l.local_port, "\n")
io.stdout:flush()
local s = assert(l:accept(weft.clock() + 10))
weft.sleep(0.1) -- the client's request arrives, and is never read
local chunk = ("D"):rep(65536)
for _ = 1, 32 do assert(s:send(chunk, nil, weft.clock() + 10)) end
print("sent")
-- the program ends here: the state closes with the data in flight
]])
	f:close()
	local p = io.popen(("timeout -k 2 30 %s %s"):format(bin, path))
	local port = tonumber(p:read("l"))
	ok(port, "the server listens")
	local c = assert(weft.tcp())
	assert(c:connect("127.0.0.1", port, deadline()))
	assert(c:send(("r"):rep(1000)))
	local buf = weft.buffer(65536)
	local got, err = 0, nil
	while true do
		local n, e = c:recv(buf, #buf, deadline(10))
		if not n then err = e break end
		if n == 0 then break end
		got = got + n
		weft.sleep(0.002) -- a slow reader: data is still in flight at exit
	end
	p:close()
	os.remove(path)
	is(err, nil, "the connection ended with FIN, not RST")
	is(got, 32 * 65536, "every byte the server's send accepted arrived")
	c:close()
end)

tap.done()
