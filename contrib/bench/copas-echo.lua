-- A Copas line-echo server, written as for Copas 4.x: copas.addserver +
-- copas.handler, skt:receive("*l"), skt:send.  It runs on weft
-- (`weft copas-echo.lua`, with weft's LuaSocket-compatible sockets) and
-- on upstream Copas with LuaSocket (`lua copas-echo.lua`).
--   copas-echo.lua [host] [port]      (prints "listening on HOST:PORT")
local copas = require "copas"
local socket = copas.socket or require "socket"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2]) or 0
-- A backlog of 1024 rather than LuaSocket's 32: scale.sh opens thousands
-- of connections at once.
local server = assert(socket.bind(host, port, 1024))
local h, p = server:getsockname()
print(("listening on %s:%d"):format(h, p))
io.stdout:flush()

copas.addserver(server, copas.handler(function(skt)
	while true do
		local line = skt:receive("*l")
		if not line then break end
		if not skt:send(line .. "\n") then break end
	end
end))
copas.loop()
