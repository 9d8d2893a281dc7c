-- A line server for imbalance.sh: each line read is sent back; a line that
-- begins with "H" first spins a Lua loop TURNS times (CPU work, not a
-- clock check, so the work is the same however the thread is scheduled).
-- One coroutine per connection, as in contrib/examples/echo.lua; with
-- -t N every worker serves on the same (explicit) port.
--   weft [-t N] imbalance.lua host port turns   (prints "listening on HOST:PORT")
--   weft imbalance.lua calibrate us             (prints the turns that take us microseconds)
local weft = require "weft"

local function spin(n)
	local x = 0
	for i = 1, n do x = x + i % 7 end
	return x
end

if arg[1] == "calibrate" then
	-- Loop turns per microsecond: the best of a few tries of about 20 ms
	-- (the fastest is the one least disturbed).
	local per_us = 0
	for _ = 1, 7 do
		local n, t0 = 200000, weft.clock()
		spin(n)
		local dt = weft.clock() - t0
		while dt < 0.02 do
			n = n * 2
			t0 = weft.clock()
			spin(n)
			dt = weft.clock() - t0
		end
		per_us = math.max(per_us, n / (dt * 1e6))
	end
	print(math.floor(per_us * (tonumber(arg[2]) or 1000) + 0.5))
	return
end

local host = arg[1] or "127.0.0.1"
local port = assert(tonumber(arg[2]), "a port is needed")
local burn_n = assert(math.tointeger(tonumber(arg[3])), "the turns per heavy line are needed")

local server = assert(weft.tcp())
assert(server:setopt("so_reuseaddr", true))
assert(server:listen(host, port))
if weft.worker() == 1 then
	print(("listening on %s:%d (%d worker%s, %d turns per heavy line)"):format(server.local_addr,
		server.local_port, weft.workers(), weft.workers() > 1 and "s" or "", burn_n))
	io.stdout:flush()
end

local function serve(c)
	local buf = weft.buffer(4096)
	local pending = ""
	while true do
		local n = c:recv(buf, #buf)
		if not n or n == 0 then break end
		pending = pending .. buf:tostring(1, n)
		local out, pos = {}, 1
		while true do
			local e = pending:find("\n", pos, true)
			if not e then break end
			if pending:byte(pos) == 72 then spin(burn_n) end -- "H"
			out[#out + 1] = pending:sub(pos, e)
			pos = e + 1
		end
		pending = pending:sub(pos)
		if #out > 0 and not c:send(table.concat(out)) then break end
		if #pending > 65536 then break end
	end
	c:close()
end

while true do
	local c = server:accept()
	if c then weft.thread(serve, c) end
end
