-- A Copas 4.x UDP responder, and a client asking it a few questions.
-- (No copas.loop() at the end: the weft launcher runs the loop after the
-- script, as Copas's runner does.)
local copas = require("copas")
local socket = require("socket")

local udp = assert(socket.udp())
assert(udp:setsockname("127.0.0.1", 0))
local _, port = udp:getsockname()

copas.addserver(udp, function(skt)
	skt = copas.wrap(skt)
	while true do
		local data, ip, rport = skt:receivefrom(2048)
		if not data then break end
		if data == "stop" then
			copas.removeserver(udp)
			break
		end
		skt:sendto("echo:" .. data, ip, rport)
	end
end, 5, "udp-responder")

copas.addthread(function()
	local c = copas.wrap(socket.udp())
	c:setpeername("127.0.0.1", port)
	c:settimeout(2)
	local good = 0
	for i = 1, 5 do
		c:send("q" .. i)
		if c:receive() == "echo:q" .. i then good = good + 1 end
	end
	c:send("stop")
	print("udp", good)
end)
