-- A Copas 4.x chat server, as written for Copas on LuaSocket, with three
-- clients that talk and leave; the server stops when the last one leaves.
local copas = require("copas")
local socket = require("socket")

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
local clients = {}
local joined = 0

local function broadcast(from, msg)
	for skt, name in pairs(clients) do
		if skt ~= from then
			skt:send(msg .. "\n")
		end
	end
end

copas.addserver(server, copas.handler(function(skt)
	local name = skt:receive("*l")
	clients[skt] = name
	joined = joined + 1
	broadcast(skt, name .. " joined")
	while true do
		local line, err = skt:receive("*l")
		if not line or line == "/quit" then break end
		broadcast(skt, name .. ": " .. line)
	end
	clients[skt] = nil
	broadcast(skt, name .. " left")
	if joined == 3 and next(clients) == nil then
		copas.removeserver(server)
	end
end), 10, "chat")

local heard = {}
for _, who in ipairs({"ann", "bob", "cyd"}) do
	copas.addthread(function()
		local c = copas.wrap(socket.tcp())
		assert(c:connect("127.0.0.1", port))
		c:send(who .. "\n")
		copas.sleep(0.1)
		c:send("hello from " .. who .. "\n")
		local got = {}
		c:settimeout(0.3)
		while true do
			local l = c:receive("*l")
			if not l then break end
			got[#got + 1] = l
		end
		heard[who] = got
		c:send("/quit\n")
		copas.sleep(0.05)
		c:close()
	end)
end

copas.loop()
for _, who in ipairs({"ann", "bob", "cyd"}) do
	local lines = heard[who] or {}
	local n = 0
	for _, l in ipairs(lines) do
		if l:match("^%a+: hello from %a+$") then n = n + 1 end
	end
	print(who, "heard", n)
end
