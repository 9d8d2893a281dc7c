-- A keep-alive HTTP "hello world" server on lua-http (HTTP/1.1 on
-- cqueues), a peer in http-peers.sh.  Debian packages lua-http for Lua
-- 5.1 to 5.3 only, so http-peers.sh runs it with the newest of those
-- that finds it.  The body is that of contrib/examples/hello-http.lua;
-- the headers are lua-http's own.
--   lua5.x http-luahttp.lua [host] [port]   (prints "listening on HOST:PORT")
local http_server = require "http.server"
local http_headers = require "http.headers"

local host = arg[1] or "127.0.0.1"
local port = tonumber(arg[2]) or 0
local body = "Hello, world!\n"

local server = assert(http_server.listen {
	host = host,
	port = port,
	reuseaddr = true,
	onstream = function(_, stream)
		assert(stream:get_headers())
		local h = http_headers.new()
		h:append(":status", "200")
		h:append("content-type", "text/plain")
		h:append("content-length", tostring(#body))
		stream:write_headers(h, false)
		stream:write_chunk(body, true)
	end,
	-- A client that goes away mid-request must not stop the server.
	onerror = function() end,
})
assert(server:listen())
local _, addr, bound = server:localname()
print(("listening on %s:%d"):format(addr, bound))
io.stdout:flush()
assert(server:loop())
