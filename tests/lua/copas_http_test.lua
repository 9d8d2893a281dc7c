-- Copas layer: copas.http against a local server written with weft.copas
-- (redirect chains, chunked bodies, bodies until close, sources and
-- sinks, timeouts, errors), and copas.smtp against a local fake server
-- when LuaSocket is installed.
local tap = require "tap"
local weft = require "weft"
local CH = require "copas_helper"
local ok, is, like, cmp_ok = tap.ok, tap.is, tap.like, tap.cmp_ok

local copas = CH.fresh()
local S = copas.socket
local http = copas.http

-- The test server: one request per connection.
local function read_body(skt, headers)
	if headers["transfer-encoding"] == "chunked" then
		local t = {}
		while true do
			local size = tonumber(skt:receive(), 16)
			if size == 0 then skt:receive() break end
			t[#t + 1] = skt:receive(size)
			skt:receive()
		end
		return table.concat(t)
	end
	local n = tonumber(headers["content-length"] or 0)
	return n > 0 and skt:receive(n) or ""
end

local function respond(skt, code, headers, body)
	local h = {("HTTP/1.1 %d X\r\n"):format(code)}
	for k, v in pairs(headers or {}) do h[#h + 1] = k .. ": " .. v .. "\r\n" end
	if body and not (headers and (headers["Transfer-Encoding"] or headers.nolen)) then
		h[#h + 1] = "Content-Length: " .. #body .. "\r\n"
	end
	h[#h + 1] = "\r\n"
	skt:send(table.concat(h) .. (body or ""))
end

local seen = {}
local function handler(skt)
	local line = skt:receive()
	if not line then return end
	local method, path = line:match("^(%u+) (%S+) HTTP/1%.1$")
	local headers = {}
	while true do
		local l = skt:receive()
		if not l or l == "" then break end
		local k, v = l:match("^([^:]+):%s*(.*)$")
		headers[k:lower()] = v
	end
	local proxied = path:match("^http://[^/]+(/.*)$")
	if proxied then path = proxied end
	seen[#seen + 1] = {method = method, path = path, headers = headers, proxied = proxied ~= nil}
	local body = read_body(skt, headers)
	local n = path:match("^/redirect/(%d+)$")
	if n then
		n = tonumber(n)
		respond(skt, 302, {Location = n > 0 and "/redirect/" .. (n - 1) or "/hello"}, "")
	elseif path == "/hello" then
		respond(skt, 200, {["Content-Type"] = "text/plain"}, method == "HEAD" and "" or "hello")
	elseif path == "/relative/x" then
		respond(skt, 301, {Location = "../hello"}, "")
	elseif path == "/chunked" then
		skt:send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
			.. "5\r\nhello\r\n7; ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")
	elseif path == "/close" then
		skt:send("HTTP/1.1 200 OK\r\n\r\n")
		for i = 1, 3 do skt:send(("part%d;"):format(i)) copas.pause(0.01) end
	elseif path == "/echo" then
		respond(skt, 200, {["X-Method"] = method}, body)
	elseif path == "/see-other" then
		respond(skt, 303, {Location = "/hello"}, "")
	elseif path == "/slow" then
		copas.pause(1)
		respond(skt, 200, nil, "late")
	elseif path == "/headers" then
		skt:send("HTTP/1.1 200 OK\r\nX-A: 1\r\nX-A: 2\r\nX-Long: a\r\n b\r\nContent-Length: 0\r\n\r\n")
	else
		respond(skt, 404, nil, "not found")
	end
end

CH.run(copas, "http", function()
	local srv = assert(S.bind("127.0.0.1", 0))
	local _, port = srv:getsockname()
	copas.addserver(srv, copas.handler(handler), 5, "http")
	local base = "http://127.0.0.1:" .. port

	local body, code, headers, status = http.request(base .. "/hello")
	is(body, "hello", "string form: body")
	is(code, 200, "code")
	is(headers["content-type"], "text/plain", "headers, lower-case")
	like(status, "^HTTP/1.1 200", "status line")
	local req = seen[#seen]
	is(req.headers.connection, "close, TE", "Connection: close, TE")
	like(req.headers.host, "^127.0.0.1:%d+$", "Host with the port")

	body, code = http.request(base .. "/echo", "a=1&b=2")
	is(body, "a=1&b=2", "a body makes a POST")
	is(seen[#seen].method, "POST", "POST")
	is(seen[#seen].headers["content-type"], "application/x-www-form-urlencoded", "form type")

	local t = {}
	local r, c2, h2 = http.request({url = base .. "/echo", method = "PUT",
		headers = {["content-length"] = 6},
		source = (function() local sent = false return function()
			if sent then return nil end sent = true return "abcdef" end end)(),
		sink = function(chunk) if chunk then t[#t + 1] = chunk end return 1 end})
	is(r, 1, "table form returns 1")
	is(c2, 200, "code")
	is(table.concat(t), "abcdef", "source sent, sink filled")
	is(h2["x-method"], "PUT", "method")

	local parts = {"ab", "cd", "ef"}
	local i = 0
	t = {}
	http.request({url = base .. "/echo", method = "POST",
		source = function() i = i + 1 return parts[i] end,
		sink = function(chunk) if chunk then t[#t + 1] = chunk end return 1 end})
	is(table.concat(t), "abcdef", "no content-length: sent chunked")
	is(seen[#seen].headers["transfer-encoding"], "chunked", "chunked request")

	body, code = http.request(base .. "/chunked")
	is(body, "hello, world", "chunked response")
	body = http.request(base .. "/close")
	is(body, "part1;part2;part3;", "body until close")

	body, code, headers = http.request(base .. "/redirect/3")
	is(body, "hello", "redirect chain followed")
	is(code, 200, "final code")
	local r6, e6 = http.request(base .. "/redirect/6")
	is(r6, nil, "more than 5 redirects")
	like(e6, "redirect", "error says redirect")
	local r7 = http.request({url = base .. "/redirect/6", maxredirects = 10,
		sink = function() return 1 end})
	is(r7, 1, "maxredirects honoured")
	local r8, c8, h8 = http.request({url = base .. "/redirect/0", redirect = false})
	is(c8, 302, "redirect = false: the 302 itself")
	is(h8.location, "/hello", "with its location")
	body = http.request(base .. "/relative/x")
	is(body, "hello", "relative location")
	t = {}
	local r9, c9 = http.request({url = base .. "/see-other", method = "POST",
		source = function() return nil end, headers = {["content-length"] = 0},
		sink = function(chunk) if chunk then t[#t + 1] = chunk end return 1 end})
	is(c9, 200, "303 after POST")
	is(seen[#seen].method, "GET", "followed with GET")

	local r10, c10, h10 = http.request({url = base .. "/hello", method = "HEAD"})
	is(c10, 200, "HEAD")
	body, code, headers = http.request(base .. "/headers")
	is(headers["x-a"], "1, 2", "repeated headers joined")
	is(headers["x-long"], "a b", "folded header")
	body, code = http.request(base .. "/nope")
	is(code, 404, "404 with body")
	is(body, "not found", "its body")

	local t0 = weft.clock()
	local rs, es = http.request({url = base .. "/slow", timeout = 0.1})
	is(rs, nil, "timeout")
	is(es, "timeout", "timeout error")
	cmp_ok(weft.clock() - t0, "<", 0.9, "in time")
	rs, es = http.request({url = base .. "/slow", timeout = {connect = 1, send = 1, receive = 0.1}})
	is(es, "timeout", "timeout table")

	local re, ee = http.request("http://127.0.0.1:1/")
	is(re, nil, "connection refused")
	is(ee, "connection refused", "message")
	local ru, eu = http.request("gopher://x/")
	is(ru, nil, "unknown scheme refused")
	ok(not pcall(http.request, 42), "bad argument raises")
	is(type(http.getcreatefunc()), "function", "getcreatefunc")

	body, code = http.request({url = "http://example.invalid/hello", proxy = base,
		sink = function() return 1 end})
	is(code, 200, "through a proxy")
	is(seen[#seen].proxied, true, "the proxy got the absolute URL")
	is(seen[#seen].headers.host, "example.invalid", "and the origin's Host")

	local captured
	local create = function()
		captured = S.tcp()
		return captured
	end
	body = http.request({url = base .. "/hello", create = create, sink = function() return 1 end})
	ok(captured ~= nil, "create used")

	if not pcall(require, "weft.tls") then
		local rh, eh = http.request("https://127.0.0.1:" .. port .. "/hello")
		is(rh, nil, "https without TLS")
		like(tostring(eh), "TLS is not available", "says TLS is not available")
	end
	copas.removeserver(srv)
end)

local has_smtp = pcall(require, "socket.smtp")
if has_smtp then
	CH.run(copas, "smtp through a local server", function()
		local srv = assert(S.bind("127.0.0.1", 0))
		local _, port = srv:getsockname()
		local got = {}
		copas.addserver(srv, copas.handler(function(skt)
			skt:send("220 hi\r\n")
			while true do
				local l = skt:receive()
				if not l then break end
				got[#got + 1] = l
				if l:match("^DATA") then
					skt:send("354 go\r\n")
					repeat l = skt:receive() got[#got + 1] = l until l == "."
					skt:send("250 ok\r\n")
				elseif l:match("^QUIT") then
					skt:send("221 bye\r\n")
					break
				else
					skt:send("250 ok\r\n")
				end
			end
		end))
		local r, e = copas.smtp.send({from = "<a@x>", rcpt = "<b@y>", server = "127.0.0.1",
			port = port, source = copas.smtp.message({headers = {subject = "s"}, body = "text"})})
		is(r, 1, "sent")
		local all = table.concat(got, "\n")
		like(all, "MAIL FROM:<a@x>", "mail from")
		like(all, "text", "body")
		copas.removeserver(srv)
	end)
else
	tap.skip("LuaSocket's socket.smtp is not installed", 1)
	ok(not pcall(function() return copas.smtp.send end), "copas.smtp says LuaSocket is missing")
end

local has_ftp = pcall(require, "socket.ftp")
if has_ftp then
	-- A passive-mode FTP server: enough of RFC 959 for LuaSocket's client.
	local function ftp_server(files)
		local srv = assert(S.bind("127.0.0.1", 0))
		copas.addserver(srv, copas.handler(function(skt)
			skt:send("220 ready\r\n")
			local data_srv
			while true do
				local l = skt:receive()
				if not l then break end
				local cmd, arg = l:match("^(%a+)%s*(.-)%s*$")
				cmd = cmd:upper()
				if cmd == "USER" then skt:send("331 password\r\n")
				elseif cmd == "PASS" then skt:send("230 in\r\n")
				elseif cmd == "TYPE" then skt:send("200 type\r\n")
				elseif cmd == "PASV" or cmd == "EPSV" then
					data_srv = assert(S.bind("127.0.0.1", 0))
					local _, p = data_srv:getsockname()
					if cmd == "EPSV" then
						skt:send(("229 Entering Extended Passive Mode (|||%d|)\r\n"):format(p))
					else
						skt:send(("227 Entering Passive Mode (127,0,0,1,%d,%d)\r\n"):format(p // 256, p % 256))
					end
				elseif cmd == "RETR" or cmd == "STOR" then
					local d = copas.wrap(data_srv:accept())
					data_srv:close()
					skt:send("150 opening\r\n")
					if cmd == "RETR" then
						d:send(files[arg] or "")
					else
						files[arg] = d:receive("*a")
					end
					d:close()
					skt:send("226 done\r\n")
				elseif cmd == "QUIT" then
					skt:send("221 bye\r\n")
					break
				else
					skt:send("500 what\r\n")
				end
			end
		end))
		return srv, select(2, srv:getsockname())
	end

	CH.run(copas, "ftp through a local server", function()
		local files = {["a.txt"] = "content of a"}
		local srv, port = ftp_server(files)
		local base = "ftp://u:p@127.0.0.1:" .. port
		local got, gerr = copas.ftp.get(base .. "/a.txt")
		is(got, "content of a", "get, string form")
		if not got then tap.diag("ftp error: " .. tostring(gerr)) end
		local ltn12 = require "ltn12"
		local t = {}
		local r = copas.ftp.get({host = "127.0.0.1", port = port, user = "u", password = "p",
			path = "/a.txt", sink = ltn12.sink.table(t), type = "i"})
		is(r, 1, "get, table form")
		is(table.concat(t), "content of a", "its content")
		ok(copas.ftp.put(base .. "/b.txt", "uploaded"), "put, string form")
		is(files["b.txt"], "uploaded", "stored")
		copas.removeserver(srv)
	end)
else
	tap.skip("LuaSocket's socket.ftp is not installed", 1)
end

tap.done()
