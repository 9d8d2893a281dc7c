-- A TCP echo server: one coroutine per connection.
--   weft contrib/examples/echo.lua [host] [port]
-- then, for instance:  nc 127.0.0.1 <port>
local weft = require "weft"

local host = arg[1] or "127.0.0.1"
local port = tonumber(arg[2]) or 7000

local server = assert(weft.tcp())
assert(server:setopt("so_reuseaddr", true))
assert(server:listen(host, port))
print(("echo server listening on %s:%d"):format(server.local_addr, server.local_port))
io.stdout:flush()

local function serve(client)
	local buf = weft.buffer(16384)
	while true do
		local n = client:recv(buf, #buf)
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
