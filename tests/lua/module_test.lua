-- The C module weft.core and weft.lua load in the stock lua5.4
-- interpreter, as `make install` lays them out (weft/core.so on the
-- C path, weft.lua on the Lua path), and work there.
local tap = require "tap"
local test, ok, is, like = tap.test, tap.ok, tap.is, tap.like

local builddir = os.getenv("WEFT_BUILDDIR")
local srcdir = os.getenv("WEFT_SRCDIR")
local lua = os.getenv("LUA") or "lua5.4"

local SCRIPT = [[
		local weft = require "weft"
		print(weft._VERSION)
		print(weft.run(function()
			local s = assert(weft.tcp())
			assert(s:listen("127.0.0.1", 0))
			local port = s.local_port
			weft.thread(function()
				local c = assert(s:accept())
				local b = weft.buffer(4)
				assert(c:recvn(b, 4))
				assert(c:send(b))
				c:close()
			end)
			local c = assert(weft.tcp())
			assert(c:connect("127.0.0.1", port))
			assert(c:send("ping"))
			local b = weft.buffer(4)
			assert(c:recvn(b, 4))
			c:close()
			s:close()
			return b:tostring()
		end))
]]

local function sh(cmd)
	local p = io.popen(cmd .. " 2>&1")
	local out = p:read("a")
	local okc, _, code = p:close()
	return out, okc and 0 or code
end

test("require 'weft' in stock Lua", function()
	if os.getenv("WEFT_SANITIZERS") ~= "" and os.getenv("WEFT_SANITIZERS") ~= nil then
		tap.skip("a sanitizer build's module cannot load into an uninstrumented lua5.4", 4)
		return
	end
	if not builddir or not srcdir then
		tap.skip("WEFT_BUILDDIR/WEFT_SRCDIR not set (run under make check)", 4)
		return
	end
	local so = builddir .. "/src/.libs/core." .. (tap.windows and "dll" or "so")
	local f = io.open(so, "rb")
	if not f then
		tap.skip("no shared module at " .. so, 4)
		return
	end
	f:close()
	if tap.windows then
		-- cmd.exe runs the line: no symbolic link, the DLL is loaded
		-- by name into stock lua.exe instead of found on the C path.
		local path = os.tmpname()
		local sf = assert(io.open(path, "w"))
		sf:write(SCRIPT)
		sf:close()
		local out, code = sh(('%s -e "package.path=[[%s/lua/?.lua]] '
			.. "package.preload['weft.core']=package.loadlib([[%s]],'luaopen_weft_core')\" %s"):format(
			lua:gsub("/", "\\"), srcdir, so, path))
		os.remove(path)
		is(code, 0, "lua.exe ran the script")
		like(out, "^weft %d+%.%d+", "the module reports its version")
		like(out, "ping", "an echo round-trip worked under stock Lua")
		ok(not out:match("error"), "no error output")
		return
	end
	-- the installed layout, in a scratch directory
	local dir = os.tmpname()
	os.remove(dir)
	assert(os.execute(("mkdir -p '%s/weft' && ln -s '%s' '%s/weft/core.so'"):format(dir, so, dir)))
	local script = SCRIPT
	local sf = assert(io.open(dir .. "/script.lua", "w"))
	sf:write(script)
	sf:close()
	local out, code = sh(("LUA_CPATH='%s/?.so' LUA_PATH='%s/lua/?.lua' %s '%s/script.lua'"):format(
		dir, srcdir, lua, dir))
	os.execute(("rm -rf '%s'"):format(dir))
	is(code, 0, "lua5.4 ran the script")
	like(out, "^weft %d+%.%d+", "the module reports its version")
	like(out, "ping", "an echo round-trip worked under stock Lua")
	ok(not out:match("error"), "no error output")
end)

tap.done()
