-- A keep-alive HTTP "hello world" server on cqueues, a peer in
-- http-peers.sh: one coroutine per connection, like
-- contrib/examples/hello-http.lua, whose response it sends byte for byte.
-- Every request head (up to a blank line) gets one response, so pipelined
-- requests work too.
--   lua5.4 http-cqueues.lua [host] [port]  (prints "listening on HOST:PORT")
local cqueues = require "cqueues"
local socket = require "cqueues.socket"

local host = arg[1] or "127.0.0.1"
local port = tonumber(arg[2]) or 0

local body = "Hello, world!\n"
local response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #body
	.. "\r\n\r\n" .. body

local server = assert(socket.listen{ host = host, port = port, reuseaddr = true })
assert(server:listen())
local _, addr, bound = server:localname()
print(("listening on %s:%d"):format(addr, bound))
io.stdout:flush()

local function serve(conn)
	conn:setmode("b", "bn")
	local pending = ""
	while true do
		local data = conn:read(-16384) -- whatever is there, up to 16 KiB
		if not data then break end
		pending = pending .. data
		local n, pos = 0, 1
		while true do
			local e = pending:find("\r\n\r\n", pos, true)
			if not e then break end
			n = n + 1
			pos = e + 4
		end
		pending = pending:sub(pos)
		if n > 0 and not conn:write(n == 1 and response or response:rep(n)) then break end
		if #pending > 65536 then break end -- a head that never ends
	end
end

local cq = cqueues.new()
cq:wrap(function()
	for conn in server:clients() do
		cq:wrap(function()
			pcall(serve, conn) -- a client's reset must not stop the server
			conn:close()
		end)
	end
end)
assert(cq:loop())
