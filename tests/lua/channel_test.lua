-- weft.channel: bounded FIFO queues of serialized values, within a state
-- and between workers (weft -t N).
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, like, cmp_ok, is_deeply = tap.ok, tap.is, tap.like, tap.cmp_ok, tap.is_deeply
-- Slow (instrumented) builds divide the stress sizes by WEFT_TEST_SCALE.
local SCALE = tonumber(os.getenv("WEFT_TEST_SCALE")) or 1

H.test("send and recv in order, values copied", function()
	local ch = weft.channel(8)
	is(ch:capacity(), 8, "capacity")
	is(ch:count(), 0, "empty")
	local t = {a = 1, list = {1, 2, 3}, s = "text"}
	ok(ch:send(t), "send a table")
	ok(ch:send(42), "send a number")
	ok(ch:send("str"), "send a string")
	ok(ch:send(true), "send a boolean")
	is(ch:count(), 4, "count")
	local got = ch:recv()
	is_deeply(got, t, "the table arrives")
	ok(got ~= t, "as a copy")
	is(ch:recv(), 42, "FIFO: number")
	is(ch:recv(), "str", "FIFO: string")
	is(ch:recv(), true, "FIFO: boolean")
	is(ch:count(), 0, "empty again")
	is(weft.channel():capacity(), 64, "default capacity 64")
end)

H.test("recv waits for a sender; senders wait while full", function()
	local ch = weft.channel(2)
	local got = {}
	weft.thread(function()
		for i = 1, 5 do got[#got + 1] = ch:recv(weft.clock() + 5) end
	end)
	local t0 = weft.clock()
	for i = 1, 5 do assert(ch:send(i, weft.clock() + 5)) end
	weft.sleep(0.05)
	is_deeply(got, {1, 2, 3, 4, 5}, "all values in order through a 2-slot channel")
	ok(weft.clock() - t0 < 1, "no deadline was needed")
end)

H.test("timeouts", function()
	local ch = weft.channel(1)
	local t0 = weft.clock()
	local v, err = ch:recv(t0 + 0.05)
	is(v, nil, "recv on an empty channel times out")
	is(err, "timeout", "with 'timeout'")
	cmp_ok(weft.clock() - t0, ">=", 0.05, "not before the deadline")
	assert(ch:send(1))
	local r, serr = ch:send(2, weft.clock() + 0.05)
	is(r, nil, "send on a full channel times out")
	is(serr, "timeout", "with 'timeout'")
	is(ch:count(), 1, "the timed-out message was not queued")
	is(ch:recv(), 1, "the queued one is still there")
	-- a waiter that timed out does not swallow a later wake-up
	weft.thread(function() ch:recv(weft.clock() + 0.01) end)
	local late
	weft.thread(function() late = ch:recv(weft.clock() + 5) end)
	weft.sleep(0.05)
	assert(ch:send("after"))
	weft.sleep(0.02)
	is(late, "after", "the next waiter got the message")
end)

H.test("close: senders fail, receivers drain then get 'closed'", function()
	local ch = weft.channel(4)
	assert(ch:send("a"))
	local blocked
	local c2 = weft.channel(1)
	weft.thread(function()
		blocked = table.pack(c2:recv(weft.clock() + 5))
	end)
	local waiting
	local ch2 = weft.channel(1)
	weft.thread(function() waiting = table.pack(ch2:recv(weft.clock() + 5)) end)
	weft.sleep(0.01)
	ch2:close()
	weft.sleep(0.01)
	is(waiting and waiting[1], nil, "a waiting receiver wakes on close")
	is(waiting and waiting[2], "closed", "with 'closed'")
	ch:close()
	local r, err = ch:send("b")
	is(r, nil, "send after close fails")
	is(err, "closed", "with 'closed'")
	is(ch:recv(), "a", "what was queued is still received")
	local v, e = ch:recv()
	is(v, nil, "then recv fails")
	is(e, "closed", "with 'closed'")
	ok(ch:close(), "close is idempotent")
	ok(blocked == nil, "an unrelated waiter stays blocked")
	c2:close()
	weft.sleep(0.01)
	is(blocked and blocked[2], "closed", "until its own channel closes")
end)

H.test("values that cannot cross give a clear error", function()
	local ch = weft.channel(4)
	local r, err = ch:send(io.stdout)
	is(r, nil, "a userdata cannot be sent")
	like(err, "cannot pass a userdata", "message")
	r, err = ch:send(setmetatable({}, {}))
	is(r, nil, "a table with a metatable cannot be sent")
	like(err, "metatable", "message")
	local up = 1
	r, err = ch:send(function() return up end)
	is(r, nil, "a function cannot be sent on a channel")
	is(ch:count(), 0, "nothing was queued")
	ok(not pcall(ch.send, ch), "send without a value raises")
end)

H.test("named channels and channels inside messages", function()
	local a = weft.channel("shared-name", 3)
	local b = weft.channel("shared-name")
	assert(a:send("via a"))
	is(b:recv(), "via a", "two objects, one named channel")
	is(b:capacity(), 3, "created with the first capacity")
	local inner = weft.channel(2)
	assert(a:send({reply = inner}))
	local msg = b:recv()
	assert(msg.reply:send("pong"))
	is(inner:recv(), "pong", "a channel sent in a message is the same channel")
end)

-- Waiters that give up are withdrawn one by one (each in constant time);
-- whichever way each wait ends, it ends exactly once, and no message or
-- wake-up is lost.  Whether a given waiter is served or times out depends
-- on the machine's speed, so only the totals are checked.
H.test("many waiters give up: each ends once, nothing lost", function()
	local N, K = 2000 // SCALE, 50
	local ch = weft.channel(K)
	local got, timeouts, other, done = {}, 0, 0, 0
	local deadline = weft.clock() + 0.2
	for _ = 1, N do
		weft.thread(function()
			local v, err = ch:recv(deadline)
			if v ~= nil then
				got[#got + 1] = v
			elseif err == "timeout" then
				timeouts = timeouts + 1
			else
				other = other + 1
			end
			done = done + 1
		end)
	end
	for i = 1, K do assert(ch:send(i)) end
	local limit = weft.clock() + 10
	while done < N and weft.clock() < limit do weft.sleep(0.01) end
	is(done, N, "every receiver's wait ended")
	is(other, 0, "each with a value or 'timeout'")
	is(#got + timeouts, N, "exactly once")
	local seen = {}
	for _, v in ipairs(got) do seen[v] = (seen[v] or 0) + 1 end
	local n = ch:count()
	for _ = 1, n do local v = ch:recv(); seen[v] = (seen[v] or 0) + 1 end
	local all = true
	for i = 1, K do all = all and seen[i] == 1 end
	ok(all, "every message was received once or is still queued")

	-- Senders of a full channel.
	local full = weft.channel(1)
	assert(full:send(0))
	local sent, stimeouts, sother, sdone = 0, 0, 0, 0
	deadline = weft.clock() + 0.2
	for i = 1, N do
		weft.thread(function()
			local r, err = full:send(i, deadline)
			if r then
				sent = sent + 1
			elseif err == "timeout" then
				stimeouts = stimeouts + 1
			else
				sother = sother + 1
			end
			sdone = sdone + 1
		end)
	end
	local taken = {}
	for _ = 1, K do
		local v = full:recv(weft.clock() + 0.05)
		if v ~= nil then taken[#taken + 1] = v end
	end
	limit = weft.clock() + 10
	while sdone < N and weft.clock() < limit do weft.sleep(0.01) end
	is(sdone, N, "every sender's wait ended")
	is(sother, 0, "each with true or 'timeout'")
	is(sent + stimeouts, N, "exactly once")
	for _ = 1, full:count() do taken[#taken + 1] = full:recv() end
	is(#taken, sent + 1, "every value sent was received, no other")
	ok(full:send("again") and full:recv() == "again", "the channel still works")
end)

tap.test("I/O on a channel outside a thread raises", function()
	local ch = weft.channel(1)
	ok(not pcall(ch.recv, ch), "recv in the main thread raises")
	ok(not pcall(ch.send, ch, 1), "send in the main thread raises")
	ok(not pcall(weft.channel, 0), "capacity 0 raises")
end)

-- Between workers: a subprocess with two workers moves N messages from
-- worker 1 to worker 2 and back, with exact accounting.
tap.test("between workers: 10^6 messages each way, exact counts, FIFO", function()
	-- a million messages each way (a slow build divides it)
	local N = 1000000 // SCALE
	local out, okc = tap.run_workers(2, [[
local weft = require "weft"
local N = tonumber(arg[1])
local jobs = weft.channel("jobs", 16)
local back = weft.channel("back", 16)
if weft.worker() == 1 then
	weft.thread(function()
		for i = 1, N do assert(jobs:send(i, weft.clock() + 30)) end
		jobs:close()
	end)
	local n, last, inorder = 0, 0, true
	while true do
		local v = back:recv(weft.clock() + 30)
		if not v then break end
		if v ~= last + 1 then inorder = false end
		last = v
		n = n + 1
		if n == N then break end
	end
	print(("received %d in order %s"):format(n, tostring(inorder)))
else
	local n = 0
	while true do
		local v = jobs:recv(weft.clock() + 30)
		if v == nil then break end
		assert(back:send(v, weft.clock() + 30))
		n = n + 1
	end
	print(("relayed %d"):format(n))
end
]], N)
	if not out then
		tap.skip("WEFT_BIN not set", 3)
		return
	end
	ok(okc, "the two workers exited cleanly")
	like(out, ("received %d in order true"):format(N), "every message came back, in order")
	like(out, ("relayed %d"):format(N), "worker 2 relayed every message exactly once")
end)

-- A worker's state closes (its program stopped the loop) while its threads
-- wait on channels, five receivers already woken but not yet run: the
-- state's finalisers withdraw every waiter, so when the other worker uses
-- the channels no channel touches a freed waiter (ASan builds check the
-- memory), and the messages the woken receivers never took are still
-- there.
tap.test("between workers: a state closes while its threads wait", function()
	local out, okc = tap.run_workers(2, [[
local weft = require "weft"
local ch = weft.channel("x", 8)
local full = weft.channel("y", 1)
if weft.worker() == 1 then
	for _ = 1, 50 do weft.thread(function() ch:recv() end) end
	assert(full:send(0))
	for i = 1, 50 do weft.thread(function() full:send(i) end) end
	weft.sleep(0.01)
	for i = 1, 5 do assert(ch:send(i)) end
	weft.stop() -- before the woken receivers run
else
	local limit = weft.clock() + 10
	while weft.stats().total.workers > 1 and weft.clock() < limit do weft.sleep(0.01) end
	local n = 0
	while ch:recv(weft.clock() + 0.05) do n = n + 1 end
	print("left in ch", n)
	print("full", full:recv(weft.clock() + 1))
	print("again", full:send("again", weft.clock() + 1), full:recv(weft.clock() + 1))
end
]])
	if not out then
		tap.skip("WEFT_BIN not set", 4)
		return
	end
	ok(okc, "both workers exited cleanly")
	if not okc then tap.diag(out) end
	like(out, "left in ch\t5\n", "the five messages nobody took are still queued")
	like(out, "full\t0\n", "the full channel holds the first message only")
	like(out, "again\ttrue\tagain\n", "and works on")
end)

-- A sleep job passed to another worker: its wakeup resumes the sleeper in
-- its own worker, with the values.
tap.test("between workers: sleep_job wakeup with values, many times", function()
	local N = 20000 // SCALE
	local out, okc = tap.run_workers(2, [[
local weft = require "weft"
local N = tonumber(arg[1])
local handoff = weft.channel("handoff", 4)
if weft.worker() == 1 then
	local sj = weft.sleep_job()
	local good = 0
	for i = 1, N do
		assert(handoff:send(sj, weft.clock() + 30))
		-- every other sleep has no deadline: a sleep job passed to
		-- another worker keeps this worker's loop running regardless
		local a, b, t = sj:sleep(i % 2 == 0 and 30 or nil)
		if a == "wake" and b == i and type(t) == "table" and t.n == i then good = good + 1 end
	end
	assert(handoff:send(false))
	print(("woken %d of %d with the right values"):format(good, N))
else
	local n, i = 0, 0
	while true do
		local sj = handoff:recv(weft.clock() + 30)
		if not sj then break end
		i = i + 1
		-- the sleeper may not be asleep yet: retry until it is
		while not sj:wakeup("wake", i, {n = i}) do weft.sleep(0) end
		n = n + 1
		local ok = pcall(sj.sleep, sj, 0.01)
		if ok then error("a foreign worker slept on the sleep job") end
	end
	print(("woke %d"):format(n))
end
]], N)
	if not out then
		tap.skip("WEFT_BIN not set", 2)
		return
	end
	ok(okc, "the two workers exited cleanly")
	if not okc then tap.diag(out) end
	like(out, ("woken %d of %d with the right values"):format(N, N), "every cross-worker wakeup arrived, values intact")
	like(out, ("woke %d"):format(N), "worker 2 woke the sleeper every time")
end)

-- Wake handles passed to another worker: the waker does not wait for the
-- thread to be suspended (values sent early wait for its suspend), and
-- every wakeup arrives once, in order, in the thread's own worker.
tap.test("between workers: wake handles, many wakeups, none lost", function()
	local N = 20000 // SCALE
	local out, okc = tap.run_workers(2, [[
local weft = require "weft"
local N = tonumber(arg[1])
local handoff = weft.channel("handoff", 4)
local back = weft.channel("back", 4)
if weft.worker() == 1 then
	local good, early = 0, 0
	local wh = weft.wakehandle()
	assert(handoff:send(wh, weft.clock() + 30))
	for i = 1, N do
		if i % 100 == 0 then weft.sleep(0.001) end -- let some arrive early
		local a, b, t = weft.suspend()
		if a == "wake" and b == i and type(t) == "table" and t.n == i then good = good + 1 end
	end
	assert(handoff:send(false))
	print(("resumed %d of %d with the right values"):format(good, N))
	-- a thread that finished: its handle says so in the other worker
	local fin, finished = weft.sleep_job(), false
	local th = weft.newthread(function() weft.suspend() end)
	weft.onthreadfinish(th, function()
		finished = true
		fin:wakeup()
	end)
	weft.resume(th)
	assert(handoff:send(weft.wakehandle(th), weft.clock() + 30))
	assert(back:recv(weft.clock() + 30) == "woken")
	if not finished then fin:sleep(30) end
	assert(finished, "the woken thread finished")
	assert(handoff:send("finished", weft.clock() + 30))
else
	local wh = handoff:recv(weft.clock() + 30)
	for i = 1, N do
		assert(wh:wakeup("wake", i, {n = i}))
		if i % 64 == 0 then weft.sleep(0) end
	end
	assert(handoff:recv(weft.clock() + 30) == false)
	local wh2 = handoff:recv(weft.clock() + 30)
	assert(wh2:wakeup() == true)
	assert(back:send("woken", weft.clock() + 30))
	assert(handoff:recv(weft.clock() + 30) == "finished")
	print(("woke %d, then a finished thread: %s"):format(N, tostring(wh2:wakeup())))
end
]], N)
	if not out then
		tap.skip("WEFT_BIN not set", 3)
		return
	end
	ok(okc, "the two workers exited cleanly")
	if not okc then tap.diag(out) end
	like(out, ("resumed %d of %d with the right values"):format(N, N), "every wakeup arrived once, in order, values intact")
	like(out, ("woke %d, then a finished thread: false"):format(N), "a finished thread's handle returns false")
end)

tap.done()
