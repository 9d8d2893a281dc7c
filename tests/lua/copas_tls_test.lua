-- Copas layer over weft.tls: copas.handler and copas.wrap with sslparams
-- (LuaSec tables and Copas's { wrap, sni } form), dohandshake, sni,
-- getalpn/getsniname, handshake failures and timeouts that never reach the
-- handler, and https requests with certificate checks (on by default).
-- The certificates are made for each run by tests/tls-certs.sh.
local tap = require "tap"
local weft = require "weft"
local CH = require "copas_helper"
local ok, is, like, cmp_ok = tap.ok, tap.is, tap.like, tap.cmp_ok

local srcdir = os.getenv("WEFT_SRCDIR") or "."
local builddir = os.getenv("WEFT_BUILDDIR") or "."
-- WEFT_TLS_CERTS names certificates tests/tls-certs.sh made beforehand (the
-- Windows build's tests, which cannot run it from inside Wine).
local premade = os.getenv("WEFT_TLS_CERTS")
local dir = premade
if not pcall(require, "weft.tls") then
	tap.skip("weft.tls is not available (built without OpenSSL)")
	tap.done()
	return
end
if not premade then
	local tmp = os.tmpname()
	os.remove(tmp)
	dir = builddir .. "/tests/tls-copas-" .. tmp:match("[^/\\]*$")
	if tap.windows or
		os.execute(("sh %q/tests/tls-certs.sh %q >/dev/null 2>&1"):format(srcdir, dir)) ~= true then
		if not tap.windows then os.execute(("rm -rf %q"):format(dir)) end
		tap.skip("the openssl command could not make test certificates")
		tap.done()
		return
	end
end
local function f(name) return dir .. "/" .. name end

local copas = CH.fresh()
local S = copas.socket
local SERVER = {mode = "server", certificate = f "server.pem", key = f "server.key",
	alpn = {"h2", "echo"}}
local CLIENT = {mode = "client", cafile = f "ca.pem", alpn = "echo"}

local function tls_server(sslparams, handler)
	local srv = assert(S.bind("127.0.0.1", 0))
	local _, port = srv:getsockname()
	copas.addserver(srv, copas.handler(handler, sslparams), 2)
	return srv, port
end

CH.run(copas, "handler and wrap with sslparams", function()
	local seen = {}
	local srv, port = tls_server(SERVER, function(skt)
		seen.alpn = skt:getalpn()
		seen.sni = skt:getsniname()
		local l = skt:receive()
		skt:send("tls:" .. tostring(l) .. "\n")
	end)
	local c = copas.wrap(S.tcp(), CLIENT)
	assert(c:connect("localhost", port))
	c:send("hello\n")
	is(c:receive(), "tls:hello", "echo over TLS")
	is(c:getalpn(), "echo", "ALPN on the client")
	is(seen.alpn, "echo", "ALPN on the server")
	is(seen.sni, "localhost", "SNI name seen by the server")
	is(select(2, c:getsockname()), "not implemented by LuaSec", "getsockname on TLS, as Copas")
	c:close()
	local plain = copas.wrap(S.tcp())
	assert(plain:connect("127.0.0.1", port))
	is(select(2, plain:getalpn()), "not a tls socket", "getalpn on a plain socket")
	plain:close()
	copas.removeserver(srv)
end)

CH.run(copas, "the { wrap, sni } form and dohandshake", function()
	local srv, port = tls_server({wrap = SERVER}, function(skt)
		skt:send("ok\n")
	end)
	local raw = S.tcp()
	local c = copas.wrap(raw)
	assert(c:connect("127.0.0.1", port))
	ok(c:dohandshake({wrap = CLIENT, sni = {names = "localhost"}}), "dohandshake")
	is(c:receive(), "ok", "data after the handshake")
	c:close()
	copas.removeserver(srv)
end)

CH.run(copas, "failed handshakes never run the handler", function()
	local ran = 0
	local msgs = {}
	copas.seterrorhandler(function(err) msgs[#msgs + 1] = tostring(err) end, true)
	local srv, port = tls_server(SERVER, function() ran = ran + 1 end)
	-- a plain client that says nothing: the server's handshake times out
	local p = copas.wrap(S.tcp())
	assert(p:connect("127.0.0.1", port))
	-- a client that does not trust the server's CA
	local c = copas.wrap(S.tcp(), {mode = "client"})
	local okc, r, e = pcall(c.connect, c, "localhost", port)
	ok(not okc or not r, "an unverifiable server is refused")
	like(tostring(okc and e or r), "handshake failed", "with Copas's message")
	c:close()
	copas.pause(2.5)
	p:close()
	is(ran, 0, "the handler never ran on a plain or failed connection")
	copas.removeserver(srv)
end, 15)

copas = CH.fresh()
S = copas.socket
CH.run(copas, "https with certificate checks", function()
	local failed = 0
	copas.seterrorhandler(function() failed = failed + 1 end, true) -- the refused handshake
	local srv, port = tls_server(SERVER, function(skt)
		repeat local l = skt:receive() until not l or l == ""
		skt:send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhttps")
	end)
	local url = ("https://localhost:%d/"):format(port)
	local r, e = copas.http.request(url)
	is(r, nil, "an unknown CA is refused by default")
	like(tostring(e), "certificate verify failed", "certificate checked")
	local t = {}
	local r2, c2 = copas.http.request({url = url, sslparams = CLIENT,
		sink = function(chunk) if chunk then t[#t + 1] = chunk end return 1 end})
	is(c2, 200, "with the CA: 200")
	is(table.concat(t), "https", "body over TLS")
	local r3, c3 = copas.http.request({url = url,
		sslparams = {mode = "client", verify = "none"}, sink = function() return 1 end})
	is(c3, 200, "verify = none turns the check off")
	is(failed, 1, "the server saw one failed handshake")

	-- redirects across schemes: http -> https is followed, https -> http
	-- only with redirect = "all"
	local plain = assert(S.bind("127.0.0.1", 0))
	local _, pport = plain:getsockname()
	copas.addserver(plain, copas.handler(function(skt)
		local line = skt:receive()
		repeat local l = skt:receive() until not l or l == ""
		if line:match("^GET /to%-https") then
			skt:send("HTTP/1.1 302 Found\r\nLocation: " .. url .. "\r\nContent-Length: 0\r\n\r\n")
		else
			skt:send("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nhttp")
		end
	end))
	local tls_redirect = assert(S.bind("127.0.0.1", 0))
	local _, rport = tls_redirect:getsockname()
	copas.addserver(tls_redirect, copas.handler(function(skt)
		repeat local l = skt:receive() until not l or l == ""
		skt:send(("HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/\r\nContent-Length: 0\r\n\r\n"):format(pport))
	end, SERVER))
	t = {}
	local r4, c4 = copas.http.request({url = ("http://127.0.0.1:%d/to-https"):format(pport),
		sslparams = CLIENT, sink = function(chunk) if chunk then t[#t + 1] = chunk end return 1 end})
	is(c4, 200, "http -> https redirect followed")
	is(table.concat(t), "https", "the https body")
	local down = ("https://localhost:%d/"):format(rport)
	local r5, e5 = copas.http.request({url = down, sslparams = CLIENT})
	is(r5, nil, "https -> http refused by default")
	like(tostring(e5), "insecure redirect", "says why")
	t = {}
	local r6, c6 = copas.http.request({url = down, sslparams = CLIENT, redirect = "all",
		sink = function(chunk) if chunk then t[#t + 1] = chunk end return 1 end})
	is(c6, 200, "with redirect = \"all\" it is followed")
	is(table.concat(t), "http", "the http body")
	copas.removeserver(plain)
	copas.removeserver(tls_redirect)
	copas.removeserver(srv)
end)

if not premade then os.execute(("rm -rf %q"):format(dir)) end
tap.done()
