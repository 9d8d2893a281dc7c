-- A Copas server under `weft -t N`: every worker adds a server on the same
-- address (one shared listener), worker 1 runs the clients, then calls
-- copas.exit(), which reaches the other workers: their waitforexit
-- threads remove their servers and every worker's loop ends.
local copas = require "copas"
local weft = require "weft"

local port
if weft.worker() == 1 then
	local probe = assert(copas.socket.bind("127.0.0.1", 0))
	port = select(2, probe:getsockname())
	probe:close()
	for _ = 2, weft.workers() do weft.channel("copas-port"):send(port) end
else
	port = assert(weft.channel("copas-port"):recv(weft.clock() + 10))
end

local server = assert(copas.socket.bind("127.0.0.1", port))
local served = 0
copas.addserver(server, copas.handler(function(skt)
	local line = skt:receive()
	if line then
		served = served + 1
		skt:send(line .. " from " .. weft.worker() .. "\n")
	end
end))

copas.addthread(function()
	copas.waitforexit()
	copas.removeserver(server)
	weft.channel("copas-served"):send(served)
end)

if weft.worker() == 1 then
	copas.addthread(function()
		local N, good, done = 200, 0, 0
		for i = 1, N do
			copas.addthread(function()
				local c = copas.wrap(copas.socket.tcp())
				c:settimeout(10)
				if c:connect("127.0.0.1", port) then
					c:send("req" .. i .. "\n")
					local r = c:receive()
					if r and r:match("^req" .. i .. " from %d+$") then good = good + 1 end
				end
				c:close()
				done = done + 1
			end)
		end
		while done < N do copas.pause(0.01) end
		print("answered", good, N)
		copas.exit()
		local total = 0
		for _ = 1, weft.workers() do
			total = total + weft.channel("copas-served"):recv(weft.clock() + 10)
		end
		print("served", total)
	end)
end
