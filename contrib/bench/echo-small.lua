-- contrib/examples/echo.lua with a buffer of BUFSIZE bytes (default 512)
-- instead of 16 KiB, for scale.sh: with little held by the program, the
-- memory per idle connection is mostly the runtime's (coroutine, socket,
-- buffer header).  One worker.
--   weft echo-small.lua [host] [port] [bufsize]   (prints "listening on HOST:PORT")
local weft = require "weft"

local host = arg[1] or "127.0.0.1"
local port = tonumber(arg[2]) or 0
local size = tonumber(arg[3]) or 512

local server = assert(weft.tcp())
assert(server:setopt("so_reuseaddr", true))
assert(server:listen(host, port))
print(("listening on %s:%d"):format(server.local_addr, server.local_port))
io.stdout:flush()

local function serve(client)
	local buf = weft.buffer(size)
	while true do
		local n = client:recv(buf, #buf)
		if not n or n == 0 then break end
		if not client:send(buf, n) then break end
	end
	client:close()
end

while true do
	local client = server:accept()
	if client then weft.thread(serve, client) end
end
