-- The weft launcher (os.getenv "WEFT_BIN"): options, arg, exit status,
-- the main chunk as a weft thread, the loop running until threads finish.
local tap = require "tap"
local ok, is, like, test, cmp_ok = tap.ok, tap.is, tap.like, tap.test, tap.cmp_ok

-- the launcher running this file: WEFT_BIN, or the program in arg
local function weft_bin()
	local bin = os.getenv("WEFT_BIN")
	if bin or not arg then return bin end
	local i = -1
	while arg[i - 1] do i = i - 1 end
	return arg[i] ~= nil and i < 0 and arg[i] or nil
end
local BIN = weft_bin()

local function shquote(s)
	return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function readfile(path)
	local f = io.open(path, "rb")
	if not f then return nil end
	local s = f:read("a")
	f:close()
	return s
end

local tmpfiles = {}
local function tmpfile(contents)
	local name = os.tmpname()
	local f = assert(io.open(name, "wb"))
	f:write(contents)
	f:close()
	tmpfiles[#tmpfiles + 1] = name
	return name
end

-- Runs the launcher with args (a shell fragment); returns stdout, stderr,
-- exit code.  Bounded by timeout(1): a hang gives code 124.
local function run(args, opts)
	opts = opts or {}
	local errf = os.tmpname()
	local cmd = "timeout -k 2 20 " .. shquote(BIN) .. " " .. args .. " 2>" .. shquote(errf)
	if opts.env then cmd = opts.env .. " " .. cmd end
	if opts.stdin then
		local inf = tmpfile(opts.stdin)
		cmd = cmd .. " <" .. shquote(inf)
	end
	local p = assert(io.popen(cmd, "r"))
	local out = p:read("a")
	local _, how, code = p:close()
	local err = readfile(errf) or ""
	os.remove(errf)
	if how == "signal" then code = 128 + code end
	return out, err, code
end

local function script(src)
	return shquote(tmpfile(src))
end

if not BIN then
	tap.fail("WEFT_BIN is not set and the launcher is unknown")
	tap.done()
end

test("-v prints the version", function()
	local out, err, code = run("-v")
	is(code, 0, "exit status 0")
	local text = out .. err
	like(text, "[Ww]eft", "mentions weft")
	like(text, "%d+%.%d+", "has a version number")
end)

test("-e runs a statement", function()
	local out, err, code = run("-e " .. shquote("print(1 + 2)"))
	is(out, "3\n", "output")
	is(code, 0, "exit status 0")
	is(err, "", "nothing on stderr")
	local out2 = run("-e " .. shquote("x = 'a'") .. " -e " .. shquote("print(x .. 'b')"))
	is(out2, "ab\n", "several -e run in order in one state")
end)

test("-l loads a module into a global", function()
	local dir = os.tmpname()
	os.remove(dir)
	assert(os.execute("mkdir " .. shquote(dir)))
	local f = assert(io.open(dir .. "/weftlmod.lua", "w"))
	f:write("return { x = 42 }\n")
	f:close()
	local env = "LUA_PATH=" .. shquote(dir .. "/?.lua;" .. (os.getenv("LUA_PATH") or ";;"))
	local out, err, code = run("-l weftlmod -e " .. shquote("print(weftlmod.x)"), { env = env })
	is(out, "42\n", "the module is a global named after it")
	is(code, 0, "exit status 0")
	if code ~= 0 then tap.diag(err) end
	local out2 = run("-l g=weftlmod -e " .. shquote("print(g.x, weftlmod)"), { env = env })
	is(out2, "42\tnil\n", "-l g=mod names the global")
	os.remove(dir .. "/weftlmod.lua")
	os.remove(dir)
end)

test("-W and -E, LUA_INIT", function()
	local _, err, code = run("-W -e " .. shquote("warn('weft-warning')"))
	is(code, 0, "-W exit status 0")
	like(err, "weft%-warning", "-W turns warnings on")
	local _, err2 = run("-e " .. shquote("warn('weft-warning')"))
	is(err2, "", "warnings are off without -W")
	-- As the stand-alone interpreter: pieces make one line, "@off" and
	-- "@on" control, with -M too (a state with its own allocator).
	for _, opt in ipairs({ "", "-M 64m " }) do
		local _, err5 = run(opt .. "-e " .. shquote("warn('@on'); warn('a', 'b'); warn('@x'); "
			.. "warn('c'); warn('@off'); warn('d'); warn('@on'); warn('e')"))
		is(err5, "Lua warning: ab\nLua warning: c\nLua warning: e\n",
			"warn pieces, @off and @on " .. opt)
	end
	-- WEFT_SLAB=0 (every block from malloc) runs the same programs.
	local outs = run("-e " .. shquote("local t = {} for i = 1, 1e5 do t[i] = ('x'):rep(i % 3000) end "
		.. "t = nil collectgarbage() print('slab-off ok')"), { env = "WEFT_SLAB=0" })
	is(outs, "slab-off ok\n", "WEFT_SLAB=0")
	local out3 = run("-e " .. shquote("print('main')"), { env = "LUA_INIT=" .. shquote("print('init')") })
	is(out3, "init\nmain\n", "LUA_INIT runs first")
	local out4 = run("-E -e " .. shquote("print('main')"), { env = "LUA_INIT=" .. shquote("print('init')") })
	is(out4, "main\n", "-E ignores LUA_INIT")
end)

test("bad options", function()
	local out, err, code = run("-Z")
	is(code, 1, "unknown option exits 1")
	like(err, "usage", "usage on stderr")
	is(out, "", "nothing on stdout")
	local _, err2, code2 = run("-e")
	is(code2, 1, "-e without an argument exits 1")
	like(err2, "%-e", "message names the option")
end)

test("arg table and script arguments", function()
	local path = tmpfile([[
print(arg[0])
print(#arg, arg[1], arg[2])
print(select("#", ...), ...)
]])
	local out, err, code = run(shquote(path) .. " one 'two words'")
	is(out, path .. "\n2\tone\ttwo words\n2\tone\ttwo words\n", "arg[0], arg[1..n] and ...")
	is(code, 0, "exit status 0")
	if code ~= 0 then tap.diag(err) end
	local out2 = run(script("print(#arg, arg[1])"))
	is(out2, "0\tnil\n", "no arguments")
end)

test("exit status 0 and 1 (error with a traceback on stderr)", function()
	local _, err0, code0 = run(script("local x = 1"))
	is(code0, 0, "a script that ends normally exits 0")
	is(err0, "", "and prints nothing on stderr")
	local out, err, code = run(script([[
local function inner() error("boom-from-script") end
print("before")
inner()
print("after")
]]))
	is(code, 1, "a script that raises exits 1")
	is(out, "before\n", "output up to the error")
	like(err, "boom%-from%-script", "error message on stderr")
	like(err, "stack traceback", "traceback on stderr")
	like(err, "inner", "traceback names the function")
	local _, err2, code2 = run("-e " .. shquote("error('e-boom')"))
	is(code2, 1, "-e that raises exits 1")
	like(err2, "e%-boom", "-e error on stderr")
	local _, err3, code3 = run(script("this is not lua"))
	is(code3, 1, "syntax error exits 1")
	like(err3, "syntax error", "syntax error message")
	local _, err4, code4 = run(shquote("/nonexistent/weft-no-such-script.lua"))
	is(code4, 1, "missing script exits 1")
	like(err4, "weft%-no%-such%-script", "missing script message names the file")
end)

test("os.exit status", function()
	local out, _, code = run(script("print('x') io.stdout:flush() os.exit(3)"))
	is(code, 3, "os.exit(3)")
	is(out, "x\n", "output before os.exit")
	local _, _, code2 = run(script("os.exit(false)"))
	is(code2, 1, "os.exit(false)")
	local _, _, code3 = run(script("os.exit(true)"))
	is(code3, 0, "os.exit(true)")
	local _, _, code4 = run(script([[
local weft = require "weft"
weft.sleep(0.01)
os.exit(5)
]]))
	is(code4, 5, "os.exit after a wait in the main chunk")
end)

test("the script runs inside a weft thread: I/O at top level", function()
	local out, err, code = run(script([[
local weft = require "weft"
local th, ismain = weft.currentthread()
print("ismain", ismain)
local t0 = weft.clock()
weft.sleep(0.05)
print("slept", weft.clock() - t0 >= 0.05)
local l = assert(weft.tcp())
assert(l:listen("127.0.0.1", 0))
weft.thread(function()
	local c = assert(weft.tcp())
	assert(c:connect("127.0.0.1", l.local_port, weft.clock() + 5))
	assert(c:send("hello from a thread"))
	c:close()
end)
local a = assert(l:accept(weft.clock() + 5))
local buf, n = a:recvall(weft.clock() + 5)
print("got", buf:tostring(1, n))
a:close()
l:close()
]]))
	is(out, "ismain\tfalse\nslept\ttrue\ngot\thello from a thread\n", "output")
	is(code, 0, "exit status 0")
	if code ~= 0 then tap.diag(err) end
end)

test("the loop runs until all threads finish", function()
	local out, err, code = run(script([[
local weft = require "weft"
weft.thread(function()
	weft.sleep(0.1)
	print("late")
end)
weft.runafter(0.05, function() print("timer") end)
print("early")
]]))
	is(out, "early\ntimer\nlate\n", "threads and timers ran before exit")
	is(code, 0, "exit status 0")
	if code ~= 0 then tap.diag(err) end
end)

test("an error in another thread is printed and does not stop the loop", function()
	local out, err, code = run(script([[
local weft = require "weft"
weft.thread(function()
	weft.sleep(0.01)
	error("bg-fail")
end)
weft.sleep(0.05)
print("after")
]]))
	is(out, "after\n", "the main chunk continued")
	like(err, "bg%-fail", "the error is on stderr")
	like(err, "traceback", "with a traceback")
	local _ = code
end)

test("reading the script from stdin with -", function()
	local out, err, code = run("- a b", { stdin = "print('from stdin', ...)\nprint(arg[1], arg[2])\n" })
	is(out, "from stdin\ta\tb\na\tb\n", "stdin script with arguments")
	is(code, 0, "exit status 0")
	if code ~= 0 then tap.diag(err) end
	local out2, _, code2 = run("-", { stdin = "local weft = require 'weft'\nweft.sleep(0.01)\nprint('io ok')\n" })
	is(out2, "io ok\n", "a stdin script runs in a weft thread too")
	is(code2, 0, "exit status 0")
end)

test("-m runs the script in the main Lua thread", function()
	local out, err, code = run("-m " .. script([[
local weft = require "weft"
print(select(2, weft.currentthread()))
print(pcall(weft.sleep, 0.01))
print(weft.run(function() weft.sleep(0.01) return "ran" end))
]]))
	local lines = {}
	for line in out:gmatch("[^\n]+") do lines[#lines + 1] = line end
	is(lines[1], "true", "currentthread reports the main thread")
	like(lines[2] or "", "^false", "sleep raises in the main thread")
	is(lines[3], "ran", "weft.run works")
	is(code, 0, "exit status 0")
	if code ~= 0 then tap.diag(err) end
end)

test("-t N runs N workers sharing one poller", function()
	local out, err, code = run("-t 3 " .. script([[
local weft = require "weft"
weft.sleep(0.01)
print(("worker %d of %d epfd %d"):format(weft.worker(), weft.workers(), weft.epoll_fd()))
]]))
	is(code, 0, "exit status 0")
	if code ~= 0 then tap.diag(err) end
	local seen, fds, n = {}, {}, 0
	for w, count, fd in out:gmatch("worker (%d+) of (%d+) epfd (%d+)") do
		seen[tonumber(w)] = tonumber(count)
		fds[fd] = true
		n = n + 1
	end
	is(n, 3, "three workers ran the script")
	ok(seen[1] == 3 and seen[2] == 3 and seen[3] == 3, "workers 1..3, each told there are 3")
	local distinct = 0
	for _ in pairs(fds) do distinct = distinct + 1 end
	is(distinct, 1, "all workers report the same poller")

	local out1 = run("-e " .. shquote("local w = require 'weft' print(w.worker(), w.workers())"))
	is(out1, "1\t1\n", "without -t: worker 1 of 1")

	local out0, _, code0 = run("-t0 -e " .. shquote("print(require('weft').workers())"))
	is(code0, 0, "-t0 runs")
	local first = out0:match("^(%d+)")
	ok(first and tonumber(first) >= 1, "-t0 runs one worker per CPU (at least one)")

	local _, errb, codeb = run("-t lots -e 1")
	is(codeb, 1, "a bad -t value exits 1")
	like(errb, "%-t wants a number", "and says what -t wants")
end)

test("a failing worker makes the exit status 1, the others still run", function()
	local out, err, code = run("-t 2 " .. script([[
local weft = require "weft"
if weft.worker() == 2 then error("worker-two-fails") end
weft.sleep(0.05)
print("worker 1 finished")
]]))
	is(code, 1, "exit status 1")
	like(err, "worker%-two%-fails", "the error is reported")
	like(out, "worker 1 finished", "worker 1 ran to the end")
end)

test("workers share one listening socket; a slow worker gets few connections", function()
	local weft = require "weft"
	-- a free port, for an explicit address both workers listen on
	local probe = assert(weft.tcp())
	assert(probe:bind("127.0.0.1", 0))
	local port = probe.local_port
	probe:close()
	local srv = script([[
local weft = require "weft"
local port = tonumber(arg[1])
local s = assert(weft.tcp())
assert(s:listen("127.0.0.1", port))
local n = 0
while true do
	local c = s:accept(weft.clock() + 2)
	if not c then break end
	n = n + 1
	c:send("x")
	c:close()
	if weft.worker() == 2 then
		-- slow worker: hogs its thread without yielding
		local t = os.clock() + 0.25
		while os.clock() < t do end
	end
end
s:close()
print(("worker %d accepted %d"):format(weft.worker(), n))
]])
	local errf = os.tmpname()
	local p = assert(io.popen(("timeout -k 2 30 %s -t 2 %s %d 2>%s"):format(
		shquote(BIN), srv, port, shquote(errf)), "r"))
	local total = 40
	local got = weft.run(function()
		local done = 0
		local t_end = weft.clock() + 10
		while done < total and weft.clock() < t_end do
			local c = assert(weft.tcp())
			if c:connect("127.0.0.1", port, weft.clock() + 2) then
				local b = weft.buffer(1)
				if c:recvn(b, 1, weft.clock() + 5) then done = done + 1 end
			else
				weft.sleep(0.02) -- not listening yet
			end
			c:close()
			weft.sleep(0.01)
		end
		return done
	end)
	local out = p:read("a")
	local _, _, code = p:close()
	local err = readfile(errf) or ""
	os.remove(errf)
	is(code, 0, "both workers listened on the same address and exited cleanly")
	if code ~= 0 then tap.diag(err) end
	is(got, total, "every connection was accepted and served")
	local counts = {}
	for w, n in out:gmatch("worker (%d) accepted (%d+)") do counts[tonumber(w)] = tonumber(n) end
	is((counts[1] or 0) + (counts[2] or 0), total, "the two workers accepted all connections between them")
	cmp_ok(counts[1] or 0, ">=", total * 3 // 4, "the idle worker took most of them")
	tap.diag(("worker 1: %s, worker 2 (slow): %s"):format(counts[1], counts[2]))
end)

test("arriving connections spread over the workers", function()
	local weft = require "weft"
	local probe = assert(weft.tcp())
	assert(probe:bind("127.0.0.1", 0))
	local port = probe.local_port
	probe:close()
	local srv = script([[
local weft = require "weft"
local s = assert(weft.tcp())
assert(s:listen("127.0.0.1", tonumber(arg[1])))
local n = 0
while true do
	local c = s:accept(weft.clock() + 1.5)
	if not c then break end
	n = n + 1
	weft.thread(function() c:recv(weft.buffer(1), 1, weft.clock() + 5) c:close() end)
end
print(("worker %d accepted %d"):format(weft.worker(), n))
]])
	local p = assert(io.popen(("timeout -k 2 30 %s -t 2 %s %d 2>&1"):format(shquote(BIN), srv, port), "r"))
	local opened = weft.run(function()
		local cs, t_end = {}, weft.clock() + 5
		while #cs == 0 and weft.clock() < t_end do -- wait for the listener
			local c = assert(weft.tcp())
			if c:connect("127.0.0.1", port, weft.clock() + 1) then cs[1] = c else c:close() weft.sleep(0.02) end
		end
		for i = 2, 50 do
			local c = assert(weft.tcp())
			if c:connect("127.0.0.1", port, weft.clock() + 5) then cs[#cs + 1] = c end
			weft.sleep(0.002) -- a stream of arrivals, not one burst
		end
		weft.sleep(0.2)
		for _, c in ipairs(cs) do c:close() end
		return #cs
	end)
	local out = p:read("a")
	p:close()
	local counts = {}
	for w, n in out:gmatch("worker (%d) accepted (%d+)") do counts[tonumber(w)] = tonumber(n) end
	is(opened, 50, "50 connections opened")
	is((counts[1] or 0) + (counts[2] or 0), 50, "all accepted")
	ok((counts[1] or 0) > 0 and (counts[2] or 0) > 0, "both workers got some")
	tap.diag(("worker 1: %s, worker 2: %s"):format(counts[1], counts[2]))
end)

test("weft.exit() from one worker ends every worker, status 0", function()
	local t0 = os.time()
	local out, err, code = run("-t 2 " .. script([[
local weft = require "weft"
if weft.worker() == 2 then
	weft.sleep(0.05)
	weft.exit()
else
	-- blocked for good: only weft.exit() can end this worker
	weft.thread(function() weft.sleep(1000) end)
	local s = assert(weft.tcp())
	assert(s:listen("127.0.0.1", 0))
	s:accept()
	print("accept returned")
end
]]))
	is(code, 0, "exit status 0")
	if code ~= 0 then tap.diag(err) end
	ok(not out:match("accept returned"), "the blocked worker's loop was left, not its accept")
	ok(os.time() - t0 < 10, "promptly")
end)

test("SIGTERM ends the program with status 0, a second signal at once", function()
	local errf = os.tmpname()
	local src = script([[
local weft = require "weft"
local s = assert(weft.tcp())
assert(s:listen("127.0.0.1", 0))
print("ready") io.stdout:flush()
s:accept()
]])
	-- the shell prints the launcher's pid, then its exit status
	local p = assert(io.popen(("%s -t 2 %s >/dev/null 2>%s & pid=$!; sleep 0.5; "
		.. "kill -TERM $pid; wait $pid; echo status=$?"):format(shquote(BIN), src,
		shquote(errf))))
	local out = p:read("a")
	p:close()
	is(out:match("status=(%d+)"), "0", "status 0 after SIGTERM")
	local p2 = assert(io.popen(("%s -e %s 2>%s & pid=$!; sleep 0.5; "
		.. "kill -INT $pid; sleep 0.2; kill -INT $pid; wait $pid; echo status=$?"):format(
		shquote(BIN), shquote("while true do end"), shquote(errf))))
	local out2 = p2:read("a")
	p2:close()
	is(out2:match("status=(%d+)"), "1", "a busy program ends with status 1 on the second SIGINT")
	like(readfile(errf) or "", "second signal", "and says so")
	os.remove(errf)
end)

for _, f in ipairs(tmpfiles) do os.remove(f) end
tap.done()
