-- Copas 4.x HTTP client fan-out: many concurrent copas.http requests to a
-- server (itself a Copas program), results collected per request.
local copas = require("copas")
local socket = require("socket")
local http = require("copas.http")

local server = assert(socket.bind("127.0.0.1", 0))
local _, port = server:getsockname()
copas.addserver(server, copas.handler(function(skt)
	local line = skt:receive()
	repeat local l = skt:receive() until not l or l == ""
	local n = line:match("GET /(%d+)")
	local body = "item " .. tostring(n)
	copas.sleep(math.random() * 0.05)
	skt:send("HTTP/1.1 200 OK\r\nContent-Length: " .. #body .. "\r\n\r\n" .. body)
end))

local results, N = {}, 50
copas.addthread(function()
	local done = 0
	for i = 1, N do
		copas.addthread(function()
			local body, code = http.request("http://127.0.0.1:" .. port .. "/" .. i)
			results[i] = code == 200 and body == "item " .. i
			done = done + 1
		end)
	end
	while done < N do copas.sleep(0.01) end
	copas.removeserver(server)
end)
copas.loop()
local good = 0
for i = 1, N do if results[i] then good = good + 1 end end
print("fanout", good, N)
