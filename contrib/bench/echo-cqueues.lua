-- A TCP echo server for cqueues, the closest cousin of weft, as a peer in
-- echo-cpu.sh: one coroutine per connection, like contrib/examples/echo.lua.
--   lua5.4 echo-cqueues.lua [host] [port]
local cqueues = require "cqueues"
local socket = require "cqueues.socket"

local host = arg[1] or "127.0.0.1"
local port = tonumber(arg[2]) or 0

local server = assert(socket.listen{ host = host, port = port, reuseaddr = true })
-- socket.listen only prepares; listen() binds, so the real port is known.
assert(server:listen())
local _, addr, bound = server:localname()
print(("listening on %s:%d"):format(addr, bound))
io.stdout:flush()

local function serve(conn)
	-- Binary both ways, no output buffering: each chunk read goes straight
	-- back, as in echo.lua.
	conn:setmode("b", "bn")
	while true do
		local data = conn:read(-16384) -- whatever is there, up to 16 KiB
		if not data then break end
		if not conn:write(data) then break end
	end
end

local cq = cqueues.new()
cq:wrap(function()
	for conn in server:clients() do
		cq:wrap(function()
			-- cqueues raises on a reset by default; a client
			-- leaving mid-echo must not stop the server.
			pcall(serve, conn)
			conn:close()
		end)
	end
end)
assert(cq:loop())
