-- Regression: accept out of descriptors.  The listener used to re-arm at
-- once while the kernel's backlog still held the connection, so the
-- poller, accept and re-arm spun at full CPU and no accept() ever heard of
-- it.  Now one waiting accept returns nil, "too_many_open_files" per
-- episode, established connections are served meanwhile, and accepting
-- resumes by itself once descriptors come free.
--
-- The file runs itself again under `ulimit -n` (a low descriptor limit)
-- and takes what is left with io.open, on 127.0.0.1 only.
local tap = require "tap"

local LIMIT = 64

local function weft_bin()
	local bin = os.getenv("WEFT_BIN")
	if bin or not arg then return bin end
	local i = -1
	while arg[i - 1] do i = i - 1 end
	return arg[i] ~= nil and i < 0 and arg[i] or nil
end

local function shquote(s)
	return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

if tap.windows then
	tap.skip("Windows has no descriptor limit to lower (ulimit -n): sockets are handles")
	tap.done()
	return
end

if not os.getenv("WEFT_REGRESS_NOFILE") then
	local bin = weft_bin()
	if not bin or not arg or not arg[0] then
		tap.fail("WEFT_BIN is not set and the launcher is unknown")
		tap.done()
	end
	-- The child prints the TAP stream on our stdout.
	local _, how, code = os.execute(("ulimit -n %d && WEFT_REGRESS_NOFILE=1 exec %s -m %s")
		:format(LIMIT, shquote(bin), shquote(arg[0])))
	os.exit(how == "exit" and code or 1)
end

local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is = tap.ok, tap.is

local function deadline(s)
	return weft.clock() + (s or 5)
end

-- Waits (bounded) until cond() holds.
local function wait_for(cond, s)
	local t = deadline(s)
	while not cond() and weft.clock() < t do
		weft.sleep(0.005)
	end
	return cond()
end

local function echo(a)
	local buf = weft.buffer(256)
	while true do
		local n = a:recv(buf, #buf, deadline(10))
		if not n or n == 0 then break end
		if not a:send(buf, n, deadline()) then break end
	end
	a:close()
end

-- One round trip over c: true if the echo came back byte-exact.
local function roundtrip(c, msg)
	local buf = weft.buffer(256)
	if c:send(msg, nil, deadline()) ~= true then return false end
	local b, n = c:recvn(buf, #msg, deadline())
	return b == buf and n == #msg and buf:tostring(1, n) == msg
end

H.test("accept out of descriptors: one acceptor told, serving goes on, accepting resumes", function()
	local NCLIENT = 5
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local port = l.local_port
	local accepted, told = 0, {}
	weft.thread(function()
		while true do
			local a, err = l:accept(deadline(10))
			if a then
				accepted = accepted + 1
				weft.thread(echo, a)
			elseif err == "closed" or err == "timeout" then
				break
			else
				told[#told + 1] = err -- and accept again
			end
		end
	end)
	local c0 = assert(weft.tcp())
	assert(c0:connect("127.0.0.1", port, deadline()))
	ok(wait_for(function() return accepted == 1 end), "first connection accepted")
	ok(roundtrip(c0, "before"), "echo before exhaustion")

	-- Clients made while descriptors last; then io.open takes the rest.
	local clients = {}
	for i = 1, NCLIENT do clients[i] = assert(weft.tcp()) end
	local files, ferr = {}, nil
	while true do
		local f, e = io.open("/dev/null", "r")
		if not f then ferr = e break end
		files[#files + 1] = f
	end
	ok(#files > 0 and #files < LIMIT, "descriptors used up (" .. #files .. " files)")
	ok(tostring(ferr):find("Too many open files", 1, true), "io.open fails with EMFILE")
	for i = 1, NCLIENT do
		assert(clients[i]:connect("127.0.0.1", port, deadline()))
	end

	ok(wait_for(function() return #told >= 1 end), "an acceptor is told")
	is(told[1], "too_many_open_files", "the message")
	-- The established connection is served meanwhile.
	local good = true
	for i = 1, 20 do
		if not roundtrip(c0, "during " .. i) then good = false break end
	end
	ok(good, "20 echoes while accept is out of descriptors")
	weft.sleep(0.3)
	is(#told, 1, "told once per episode, not on every retry")
	is(accepted, 1, "nothing accepted while out of descriptors")

	for _, f in ipairs(files) do f:close() end
	ok(wait_for(function() return accepted == 1 + NCLIENT end, 5),
		"every waiting client accepted after descriptors came free")
	local served = 0
	for i = 1, NCLIENT do
		if roundtrip(clients[i], "after " .. i) then served = served + 1 end
	end
	is(served, NCLIENT, "each new connection echoes")
	is(#told, 1, "still told once")
	for i = 1, NCLIENT do clients[i]:close() end
	c0:close()
	l:close()
end)

tap.done()
