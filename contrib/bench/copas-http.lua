-- A keep-alive HTTP "hello world" server written as for Copas 4.x
-- (copas.addserver + copas.handler, the request head read line by line
-- with skt:receive("*l")), for weft (`weft copas-http.lua`) and for
-- upstream Copas with LuaSocket (`lua copas-http.lua`).
--   copas-http.lua [host] [port]      (prints "listening on HOST:PORT")
local copas = require "copas"
local socket = copas.socket or require "socket"

local host, port = arg[1] or "127.0.0.1", tonumber(arg[2]) or 0
local server = assert(socket.bind(host, port))
local h, p = server:getsockname()
print(("listening on %s:%d"):format(h, p))
io.stdout:flush()

local body = "Hello, world!\n"
local response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #body
	.. "\r\n\r\n" .. body

copas.addserver(server, copas.handler(function(skt)
	while true do
		local line = skt:receive("*l")
		if not line then return end
		repeat
			line = skt:receive("*l")
			if not line then return end
		until line == ""
		if not skt:send(response) then return end
	end
end))
copas.loop()
