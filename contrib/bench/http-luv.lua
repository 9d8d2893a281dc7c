-- A keep-alive HTTP "hello world" server on luv (libuv), a peer in
-- http-peers.sh: callbacks, no coroutines.  Every request head (up to a
-- blank line) gets one response, so pipelined requests work too; the
-- response is byte for byte that of contrib/examples/hello-http.lua.
--   lua5.4 http-luv.lua [host] [port]     (prints "listening on HOST:PORT")
local uv = require "luv"

local host = arg[1] or "127.0.0.1"
local port = tonumber(arg[2]) or 0

local body = "Hello, world!\n"
local response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #body
	.. "\r\n\r\n" .. body

local server = uv.new_tcp()
assert(server:bind(host, port))
assert(server:listen(1024, function(err)
	if err then return end
	local c = uv.new_tcp()
	if not server:accept(c) then c:close() return end
	local pending = ""
	c:read_start(function(rerr, data)
		if rerr or not data then
			c:close()
			return
		end
		pending = pending .. data
		local n, pos = 0, 1
		while true do
			local e = pending:find("\r\n\r\n", pos, true)
			if not e then break end
			n = n + 1
			pos = e + 4
		end
		pending = pending:sub(pos)
		if n > 0 then c:write(n == 1 and response or response:rep(n)) end
		if #pending > 65536 then c:close() end -- a head that never ends
	end)
end))
local name = server:getsockname()
print(("listening on %s:%d"):format(name.ip, name.port))
io.stdout:flush()
uv.run()
