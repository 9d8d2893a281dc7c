-- Two Lua states sharing a runtime without any C: the luv example
-- (contrib/examples/luv-threads.lua) starts a second state on a thread
-- with luv's uv.new_thread, which joins the first one's runtime with
-- weft.epoll_fd(fd).  Run by the launcher (so under the build's
-- sanitizers too) and by stock lua5.4.  Skipped where luv is not
-- installed (Debian: lua-luv).
local tap = require "tap"
local test, is, like = tap.test, tap.is, tap.like

local builddir = os.getenv("WEFT_BUILDDIR")
local srcdir = os.getenv("WEFT_SRCDIR")
local bin = os.getenv("WEFT_BIN")
local lua = os.getenv("LUA") or "lua5.4"

local function sh(cmd)
	local p = io.popen(cmd .. " 2>&1")
	local out = p:read("a")
	local okc, _, code = p:close()
	return out, okc and 0 or code
end

local function file_exists(path)
	local f = io.open(path, "rb")
	if f then f:close() end
	return f ~= nil
end

local have_luv = pcall(require, "luv")
local so = builddir and builddir .. "/src/.libs/core.so"

test("luv threads share a runtime", function()
	if not have_luv then
		tap.skip("luv is not installed (lua-luv)", 6)
		return
	end
	if not (srcdir and bin and so and file_exists(so)) then
		tap.skip("WEFT_SRCDIR/WEFT_BIN/the built module missing (run under make check)", 6)
		return
	end
	-- the installed layout of the module, for the luv thread's state
	local dir = os.tmpname()
	os.remove(dir)
	assert(os.execute(("mkdir -p '%s/weft' && ln -s '%s' '%s/weft/core.so'"):format(dir, so, dir)))
	local env = ("LUA_CPATH='%s/?.so;;' LUA_PATH='%s/lua/?.lua;;'"):format(dir, srcdir)
	local example = srcdir .. "/contrib/examples/luv-threads.lua"
	local out, code = sh(("%s timeout -k 5 60 '%s' '%s'"):format(env, bin, example))
	tap.diag(out)
	is(code, 0, "the example runs in the launcher")
	like(out, "worker 1 of 2 echoes: hello from the luv thread", "the first state counts the joined one")
	like(out, "worker 2 of 2 heard: hello from the luv thread",
		"the joined state has a number of its own, and a named channel reached the first")
	local sanitized = (os.getenv("WEFT_SANITIZERS") or "") ~= ""
	if sanitized then
		tap.skip("a sanitizer build's module cannot load into an uninstrumented lua5.4", 3)
	else
		out, code = sh(("%s timeout -k 5 60 %s '%s'"):format(env, lua, example))
		tap.diag(out)
		is(code, 0, "the example runs in stock lua5.4")
		like(out, "worker 1 of 2 echoes", "the first state counts the joined one")
		like(out, "worker 2 of 2 heard", "the joined state has a number of its own")
	end
	os.execute(("rm -rf '%s'"):format(dir))
end)

tap.done()
