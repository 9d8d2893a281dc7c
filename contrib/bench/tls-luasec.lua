-- tls-luasec.lua: the LuaSec side of tls-cpu.sh, with the same behaviour as
-- tls-server.lua, on LuaSocket + LuaSec.  With a Copas that has TLS
-- (copas.dohandshake, Copas 2 and later) on LUA_PATH it runs under Copas's
-- dispatcher; otherwise it serves one connection at a time, blocking
-- (LuaSec's cheapest way, as a floor for its cost).
--   lua5.4 tls-luasec.lua PORT CERT KEY [FILE]
local socket = require "socket"
local ssl = require "ssl"

local port, cert, key, file = tonumber(arg[1]), arg[2], arg[3], arg[4]
local body
if file then
	local f = assert(io.open(file, "rb"))
	body = "HTTP/1.0 200 ok\r\nContent-type: application/octet-stream\r\n\r\n" .. f:read("a")
	f:close()
end
local params = { mode = "server", protocol = "any", certificate = cert, key = key,
	options = { "all" } }
local ok, copas = pcall(require, "copas")
if ok and not copas.dohandshake then copas = nil end
if not ok then copas = nil end

local server = assert(socket.bind("127.0.0.1", port))
print(("listening on 127.0.0.1:%d (%s)"):format(port, copas and ("Copas " .. tostring(copas._VERSION)) or "LuaSec alone, blocking"))
io.stdout:flush()

local function serve(t)
	if body then
		local line
		repeat line = t:receive("*l") until not line or line == ""
		if line then t:send(body) end
	else
		repeat local _, err = t:receive(1) until err
	end
	t:close()
end

if copas then
	copas.addserver(server, copas.handler(function(t) serve(t) end, params))
	copas.loop()
else
	local ctx = assert(ssl.newcontext(params))
	while true do
		local c = server:accept()
		if c then
			local t = ssl.wrap(c, ctx)
			t:settimeout(10)
			if t and t:dohandshake() then serve(t) else c:close() end
		end
	end
end
