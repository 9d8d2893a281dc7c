-- A TCP echo server: one coroutine per connection.
--   weft contrib/examples/echo.lua [host] [port] [bufsize]
--   weft -t 4 contrib/examples/echo.lua [host] [port]   (four workers)
-- bufsize: the bytes of each connection's buffer (default 16384).
-- then, for instance:  nc 127.0.0.1 <port>
local weft = require "weft"

local host = arg[1] or "127.0.0.1"
local port = tonumber(arg[2]) or 7000
local bufsize = tonumber(arg[3]) or 16384

-- With several workers, each listens on the same address and they share
-- one listening socket.  Port 0 means "any": worker 1 picks it and tells
-- the others over a named channel.
if port == 0 and weft.workers() > 1 and weft.worker() > 1 then
	port = assert(weft.channel("echo-port"):recv())
	weft.channel("echo-port"):send(port)
end

local server = assert(weft.tcp())
assert(server:setopt("so_reuseaddr", true))
assert(server:listen(host, port))
if weft.worker() == 1 then
	if port == 0 and weft.workers() > 1 then
		weft.channel("echo-port"):send(server.local_port)
	end
	print(("echo server listening on %s:%d (%d worker%s)"):format(server.local_addr,
		server.local_port, weft.workers(), weft.workers() > 1 and "s" or ""))
	io.stdout:flush()
end

local function serve(client)
	local buf = weft.buffer(bufsize)
	while true do
		local n = client:recv(buf)
		if not n or n == 0 then break end
		if not client:send(buf, n) then break end
	end
	client:close()
end

while true do
	local client, err = server:accept()
	if client then
		weft.thread(serve, client)
	else
		io.stderr:write("accept: ", err, "\n")
	end
end
