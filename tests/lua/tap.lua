-- tap.lua: a tiny TAP producer for the Lua tests.
--
--   local tap = require "tap"
--   tap.plan(3)                 -- optional: the expected number of checks
--   tap.ok(x, "name")  tap.is(got, expected, "name")  tap.isnt(a, b, "name")
--   tap.like(s, pattern, "name")  tap.is_deeply(t1, t2, "name")
--   tap.cmp_ok(a, "<=", b, "name")  tap.skip("reason" [, n])  tap.diag(...)
--   tap.test("name", function() ... end)   -- an error is reported, not fatal
--   tap.done()                  -- prints "1..N"; exits non-zero on failure
--
-- The plan line comes last (TAP allows it), so a script that dies before
-- done() has no plan and fails.  Diagnostics go to stdout as "# " lines so
-- they stay next to the check they explain.
local M = {}

local count, failed, planned = 0, 0, nil
local failures = {}
local current_test -- name of the enclosing tap.test, for diagnostics

local function out(s)
	io.stdout:write(s, "\n")
	io.stdout:flush()
end

local function show(v)
	if type(v) == "string" then
		if #v > 200 then
			return ("%q... (%d bytes)"):format(v:sub(1, 200), #v)
		end
		return ("%q"):format(v)
	end
	return tostring(v)
end
M.show = show

function M.diag(...)
	local parts = {}
	for i = 1, select("#", ...) do
		parts[#parts + 1] = tostring((select(i, ...)))
	end
	local msg = table.concat(parts, " ")
	for line in (msg .. "\n"):gmatch("([^\n]*)\n") do
		out("# " .. line)
	end
end

local function clean(name)
	name = name and tostring(name) or ""
	return (name:gsub("\n", " "):gsub("#", "\\#"))
end

-- Records one check; extra lines are printed as diagnostics on failure.
local function report(pass, name, ...)
	count = count + 1
	name = clean(name)
	local full = name
	if current_test and current_test ~= name then
		full = current_test .. ": " .. name
	end
	if pass then
		out(("ok %d - %s"):format(count, full))
	else
		failed = failed + 1
		failures[#failures + 1] = ("%d - %s"):format(count, full)
		out(("not ok %d - %s"):format(count, full))
		M.diag(("  Failed test '%s'"):format(full))
		-- the first caller outside this file
		local level, info = 2, nil
		repeat
			info = debug.getinfo(level, "Sl")
			level = level + 1
		until not info or (info.currentline > 0 and not info.short_src:find("tap%.lua$"))
		if info then
			M.diag(("  at %s line %d"):format(info.short_src, info.currentline))
		end
		for i = 1, select("#", ...) do
			M.diag("  " .. tostring((select(i, ...))))
		end
	end
	return pass
end

function M.plan(n)
	planned = n
end

function M.ok(cond, name, ...)
	return report(cond and true or false, name, ...)
end

function M.fail(name, ...)
	return report(false, name, ...)
end

function M.pass(name)
	return report(true, name)
end

function M.is(got, expected, name)
	return report(got == expected, name,
		"       got: " .. show(got),
		"  expected: " .. show(expected))
end

function M.isnt(got, unexpected, name)
	return report(got ~= unexpected, name,
		"       got: " .. show(got),
		"  expected: anything else")
end

function M.like(got, pattern, name)
	local pass = type(got) == "string" and got:find(pattern) ~= nil
	return report(pass, name,
		"                  " .. show(got),
		"  doesn't match '" .. pattern .. "'")
end

function M.unlike(got, pattern, name)
	local pass = type(got) == "string" and got:find(pattern) == nil
	return report(pass, name,
		"                  " .. show(got),
		"  matches '" .. pattern .. "'")
end

local ops = {
	["=="] = function(a, b) return a == b end,
	["~="] = function(a, b) return a ~= b end,
	["<"] = function(a, b) return a < b end,
	["<="] = function(a, b) return a <= b end,
	[">"] = function(a, b) return a > b end,
	[">="] = function(a, b) return a >= b end,
}

function M.cmp_ok(a, op, b, name)
	local f = assert(ops[op], "cmp_ok: unknown operator")
	local okc, res = pcall(f, a, b)
	return report(okc and res, name,
		("  %s"):format(show(a)), ("      %s"):format(op), ("  %s"):format(show(b)))
end

-- Returns nil when equal, or a description of the first difference.
local function deep_diff(a, b, path, seen)
	if type(a) ~= "table" or type(b) ~= "table" then
		if a == b then return nil end
		return ("%s: got %s, expected %s"):format(path, show(a), show(b))
	end
	if rawequal(a, b) then return nil end
	seen = seen or {}
	if seen[a] == b then return nil end
	seen[a] = b
	for k, v in pairs(b) do
		local d = deep_diff(a[k], v, path .. "[" .. show(k) .. "]", seen)
		if d then return d end
	end
	for k, v in pairs(a) do
		if b[k] == nil then
			return ("%s[%s]: got %s, expected nil"):format(path, show(k), show(v))
		end
	end
	return nil
end

function M.is_deeply(got, expected, name)
	local d = deep_diff(got, expected, "value")
	return report(d == nil, name, d and ("  " .. d) or nil)
end

-- The platform: Windows (the Windows build's tests, run under Wine, set
-- WEFT_TEST_WINE as well).  For checks of what the platform does not have
-- or does otherwise; each such check is skipped with its reason.
M.windows = package.config:sub(1, 1) == "\\"
M.wine = os.getenv("WEFT_TEST_WINE") == "1"

function M.skip(reason, n)
	for _ = 1, n or 1 do
		count = count + 1
		out(("ok %d # SKIP %s"):format(count, clean(reason)))
	end
end

-- Runs f(...) protected: an error becomes a failed check instead of
-- aborting the file.
function M.test(name, f, ...)
	local outer = current_test
	current_test = name
	local ok, err = xpcall(f, debug.traceback, ...)
	current_test = outer
	if not ok then
		report(false, name .. " died", "  " .. tostring(err))
	end
	return ok
end

function M.failed()
	return failed
end

function M.done()
	out(("1..%d"):format(count))
	if planned and planned ~= count then
		M.diag(("planned %d checks but ran %d"):format(planned, count))
		failed = failed + 1
	end
	if failed > 0 then
		M.diag(("%d failed check(s):"):format(#failures))
		for _, f in ipairs(failures) do
			M.diag("  " .. f)
		end
		io.stdout:flush()
		-- close the state, so that leak checkers see it freed
		os.exit(false, true)
	end
	io.stdout:flush()
end

-- A harness for weft tests run from the main Lua thread (the launcher's
-- -m mode): H.test(name, f [, timeout]) runs f in a weft thread and the
-- loop for at most timeout seconds (default 10), so a hang becomes a
-- failure instead of stalling the file.  Errors of other threads during
-- the test (reported through weft's error handler) fail the test too.
-- Run a Lua program with the weft launcher and n workers (weft -t n),
-- with extra command-line arguments, bounded by timeout(1).  Returns its
-- output (stdout and stderr) and whether it exited with status 0, or nil
-- when WEFT_BIN is not set.
function M.run_workers(n, source, ...)
	local bin = os.getenv("WEFT_BIN")
	if not bin then return nil end
	local path = os.tmpname()
	local f = assert(io.open(path, "w"))
	f:write(source)
	f:close()
	local args = {}
	for i = 1, select("#", ...) do args[i] = ("%q"):format(tostring((select(i, ...)))) end
	-- Bounded in time by timeout(1); on Windows (cmd.exe runs the line)
	-- the test's own bound covers it, and paths take backslashes.
	local cmd = "timeout -k 2 120 %s -t %d %s %s 2>&1"
	if M.windows then
		cmd = "%s -t %d %s %s 2>&1"
		bin = bin:gsub("/", "\\")
	end
	local p = assert(io.popen(cmd:format(bin, n, path, table.concat(args, " "))))
	local out = p:read("a")
	local okc = p:close()
	os.remove(path)
	return out, okc == true
end

function M.weft_harness(weft)
	local H = {}
	local errors = {}
	local main_th
	local function handler(th, msg)
		if th ~= main_th then
			errors[#errors + 1] = tostring(msg)
		end
	end
	weft.seterrorhandler(handler)
	H.handler = handler
	function H.restore_handler()
		weft.seterrorhandler(handler)
	end
	function H.test(name, f, timeout)
		timeout = timeout or 10
		return M.test(name, function()
			for i = #errors, 1, -1 do errors[i] = nil end
			local finished, tok, terr = false, nil, nil
			local th = weft.newthread(f, name)
			main_th = th
			weft.onthreadfinish(th, function(_, ok, err)
				finished, tok, terr = true, ok, err
			end)
			local rok, rerr = pcall(weft.resume, th)
			if not rok and not finished then
				finished, tok, terr = true, false, rerr
			elseif not rok and tok then
				tok, terr = false, rerr
			end
			local t0 = weft.clock()
			local sok, started = pcall(weft.start, timeout)
			main_th = nil
			if not sok then
				report(false, "weft.start raised", "  " .. tostring(started))
			elseif started == false then
				report(false, ("loop still busy after %gs (test body %s)")
					:format(weft.clock() - t0,
						finished and "finished; threads left waiting" or "still waiting"))
			end
			if finished and not tok then
				report(false, "died", "  " .. tostring(terr))
			end
			for _, e in ipairs(errors) do
				report(false, "error in another thread", "  " .. e)
			end
			for i = #errors, 1, -1 do errors[i] = nil end
		end)
	end
	return H
end

return M
