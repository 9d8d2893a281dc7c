-- A minimal HTTP/1.1 "hello world" server with keep-alive, for trying weft
-- and for benchmarks (contrib/bench/http-cpu.sh, http-scale.sh).
--   weft [-t N] contrib/examples/hello-http.lua [host] [port]
-- then:  curl http://127.0.0.1:<port>/
-- (GET /stats answers with weft.stats().total, the runtime's counters)
local weft = require "weft"

local host = arg[1] or "127.0.0.1"
local port = tonumber(arg[2]) or 8080

if port == 0 and weft.workers() > 1 and weft.worker() > 1 then
	port = assert(weft.channel("http-port"):recv())
	weft.channel("http-port"):send(port)
end
local server = assert(weft.tcp())
assert(server:setopt("so_reuseaddr", true))
assert(server:listen(host, port))
if weft.worker() == 1 then
	if port == 0 and weft.workers() > 1 then
		weft.channel("http-port"):send(server.local_port)
	end
	print(("http server listening on %s:%d (%d worker%s)"):format(server.local_addr,
		server.local_port, weft.workers(), weft.workers() > 1 and "s" or ""))
	io.stdout:flush()
end

local body = "Hello, world!\n"
local response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #body
	.. "\r\n\r\n" .. body

-- Requests are read into a buffer; each complete head (up to a blank
-- line) gets one response, so pipelined requests work too.  Request
-- bodies are not expected (GET).
local function serve(c)
	local buf = weft.buffer(8192)
	local pending = ""
	while true do
		local n = c:recv(buf, #buf, weft.clock() + 60)
		if not n or n == 0 then break end
		pending = pending .. buf:tostring(1, n)
		local out, pos = {}, 1
		while true do
			local e = pending:find("\r\n\r\n", pos, true)
			if not e then break end
			if pending:sub(pos, pos + 10) == "GET /stats " then
				-- the runtime's counters, all workers added up
				local t, lines = weft.stats().total, {}
				for k, v in pairs(t) do lines[#lines + 1] = k .. " " .. v end
				table.sort(lines)
				local b = table.concat(lines, "\n") .. "\n"
				out[#out + 1] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
					.. #b .. "\r\n\r\n" .. b
			else
				out[#out + 1] = response
			end
			pos = e + 4
		end
		pending = pending:sub(pos)
		if #out > 0 and not c:send(table.concat(out)) then break end
		if #pending > 65536 then break end -- a head that never ends
	end
	c:close()
end

while true do
	local c = server:accept()
	if c then weft.thread(serve, c) end
end
