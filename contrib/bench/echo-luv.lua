-- A TCP echo server on luv (libuv), a peer in echo-cpu.sh and scale.sh:
-- each chunk read is written straight back from the read callback.
--   lua5.4 echo-luv.lua [host] [port]     (prints "listening on HOST:PORT")
local uv = require "luv"

local host = arg[1] or "127.0.0.1"
local port = tonumber(arg[2]) or 0

local server = uv.new_tcp()
assert(server:bind(host, port))
assert(server:listen(4096, function(err)
	if err then return end
	local c = uv.new_tcp()
	if not server:accept(c) then c:close() return end
	c:read_start(function(rerr, data)
		if rerr or not data then
			c:close()
		else
			c:write(data)
		end
	end)
end))
local name = server:getsockname()
print(("listening on %s:%d"):format(name.ip, name.port))
io.stdout:flush()
uv.run()
