-- Copas layer: unchanged Copas 4.x programs (a chat server, an HTTP
-- client fan-out, a UDP responder) run by the weft launcher, which also
-- runs the Copas loop after a script that does not call it.
local tap = require "tap"
local is, like = tap.is, tap.like

local bin = os.getenv("WEFT_BIN") or "src/weft"
local srcdir = os.getenv("WEFT_SRCDIR") or "."
local dir = srcdir .. "/tests/lua/copas_programs/"

local function run(args)
	local cmd = ("LUA_PATH='%s/lua/?.lua;;' timeout -k 5 60 %s %s 2>&1"):format(srcdir, bin, args)
	if tap.windows then -- cmd.exe runs the line; the environment has LUA_PATH
		cmd = ("%s %s 2>&1"):format(bin:gsub("/", "\\"), args)
	end
	local f = io.popen(cmd)
	local out = f:read("a")
	local ok, _, code = f:close()
	return out, ok and 0 or code
end

if not pcall(require, "socket") then
	tap.skip("LuaSocket is not installed: the unchanged programs use it", 4)
else
	local out, rc = run(dir .. "chat.lua")
	is(rc, 0, "chat server: exit status")
	is(out, "ann\theard\t2\nbob\theard\t2\ncyd\theard\t2\n", "chat: each heard the other two")
	out, rc = run(dir .. "fanout.lua")
	is(out, "fanout\t50\t50\n", "HTTP fan-out: every request answered")
	out, rc = run(dir .. "udp.lua")
	is(out, "udp\t5\n", "UDP responder, loop run by the launcher")
end

-- Several workers: one shared listener, copas.exit() reaching them all.
for _, n in ipairs({2, 3}) do
	local out, rc = run(("-t %d %sworkers.lua"):format(n, dir))
	is(out, "answered\t200\t200\nserved\t200\n",
		("-t %d: every client answered, each connection served once"):format(n))
	is(rc, 0, ("-t %d: every worker's loop ended"):format(n))
end

-- Without LuaSocket: weft's own constructors, and the loop after the script.
local tmp = os.tmpname()
local f = assert(io.open(tmp, "w"))
f:write([[
local copas = require "copas"
copas.addthread(function()
	copas.pause(0.01)
	copas.addthread(function() copas.waitforexit() print("exit seen") end)
	print("running", copas.running)
end)
print("script done")
]])
f:close()
local out, rc = run(tmp)
is(out, "script done\nrunning\ttrue\nexit seen\n", "the launcher runs the loop after the script")
is(rc, 0, "exit status 0")
os.remove(tmp)

tap.done()
