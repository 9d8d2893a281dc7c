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

-- responses[k]: the answer to k pipelined requests in one string, made
-- when first needed (and kept for k up to 64).
local responses = setmetatable({ response }, { __index = function(t, k)
	local r = response:rep(k)
	if k <= 64 then t[k] = r end
	return r
end })

-- GET /stats answers with the runtime's counters, all workers added up.
local function stats()
	local lines = {}
	for k, v in pairs(weft.stats().total) do lines[#lines + 1] = k .. " " .. v end
	table.sort(lines)
	local b = table.concat(lines, "\n") .. "\n"
	return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #b
		.. "\r\n\r\n" .. b
end

-- Requests are read into one buffer and parsed in place, without making
-- strings: each complete head (up to a blank line) gets one response, and
-- the responses to the heads of one read go out in one send, so pipelined
-- requests work too.  An unfinished head is moved to the start of the
-- buffer and the next bytes are received after it.  A head that does not
-- fit in the buffer closes the connection: a connection never holds more
-- than these 8 KiB.  Request bodies are not expected (GET).
local size = 8192

local function serve(c)
	local buf = weft.buffer(size)
	local have, into = 0, buf -- bytes of an unfinished head; where to receive
	while true do
		local n = c:recv(into, size - have, weft.clock() + 60)
		if not n or n == 0 then break end
		local last = have + n
		-- pos: where the next head starts; from: where to look for its end
		-- (what was searched before, but for its last three bytes, had none);
		-- k: requests parsed but not answered yet
		local pos, from, k = 1, math.max(1, have - 2), 0
		local stats_here = buf:find("GET /stats ", 1, last) -- in this read at all?
		while pos <= last do
			local _, e = buf:find("\r\n\r\n", from, last)
			if not e then break end
			if stats_here and buf:find("GET /stats ", pos, pos + 10) == pos then
				if k > 0 and not c:send(responses[k]) then return c:close() end
				if not c:send(stats()) then return c:close() end
				k = 0
			else
				k = k + 1
			end
			pos, from = e + 1, e + 1
		end
		if k > 0 and not c:send(responses[k]) then break end
		have = last - pos + 1
		if have == size then break end -- a head that does not fit
		if have > 0 and pos > 1 then buf:copy(1, buf, pos, last) end
		into = have > 0 and buf:view(have + 1) or buf
	end
	c:close()
end

while true do
	local c = server:accept()
	if c then weft.thread(serve, c) end
end
