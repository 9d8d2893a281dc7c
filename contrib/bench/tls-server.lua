-- tls-server.lua: the weft side of tls-cpu.sh.
--   weft tls-server.lua PORT CERT KEY            handshakes only: each connection
--                                                 handshakes, reads to the end, closes
--   weft tls-server.lua PORT CERT KEY FILE       answers `GET /... HTTP/1.0` with
--                                                 FILE's bytes, then closes (what
--                                                 openssl s_server -WWW does)
local weft = require "weft"
local tls = require "weft.tls"

local port, cert, key, file = tonumber(arg[1]), arg[2], arg[3], arg[4]
local body
if file then
	local f = assert(io.open(file, "rb"))
	body = "HTTP/1.0 200 ok\r\nContent-type: application/octet-stream\r\n\r\n" .. f:read("a")
	f:close()
end
local ctx = assert(tls.context { mode = "server", certificate = cert, key = key })

local function serve(c)
	local t = assert(tls.wrap(c, ctx))
	local buf = weft.buffer(16384)
	if not t:handshake(weft.clock() + 10) then return t:close() end
	if body then
		local req = ""
		while not req:find("\r\n\r\n", 1, true) do
			local n = t:recv(buf, nil, weft.clock() + 10)
			if not n or n == 0 then return t:close() end
			req = req .. buf:tostring(1, n)
		end
		t:send(body, nil, weft.clock() + 60)
	else
		repeat
			local n = t:recv(buf, nil, weft.clock() + 10)
		until not n or n == 0
	end
	t:close()
end

local l = assert(weft.tcp())
assert(l:listen("127.0.0.1", port))
print(("listening on 127.0.0.1:%d"):format(l.local_port))
io.stdout:flush()
while true do
	local c = l:accept()
	if c then weft.thread(serve, c) end
end
