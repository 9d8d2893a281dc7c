-- weft.tls: contexts and their parameters, handshakes both ways, SNI, ALPN,
-- verification failures and their messages, timeouts, peers closing
-- mid-record, byte-exact bulk transfer, interop with the openssl command
-- (s_server, s_client), contexts shared across workers, and many
-- concurrent connections over two workers.  The certificates are made for
-- each run by tests/tls-certs.sh in the build directory.
local tap = require "tap"
local weft = require "weft"
local tls = require "weft.tls"
local H = tap.weft_harness(weft)
local ok, is, like, test = tap.ok, tap.is, tap.like, tap.test
local cmp_ok = tap.cmp_ok

-- Slow (instrumented) builds divide the stress sizes by WEFT_TEST_SCALE.
local SCALE = tonumber(os.getenv("WEFT_TEST_SCALE")) or 1
local srcdir = os.getenv("WEFT_SRCDIR") or "."
local builddir = os.getenv("WEFT_BUILDDIR") or "."

local function deadline(s)
	return weft.clock() + (s or 5)
end

local function sh(cmd)
	local okc = os.execute(cmd)
	return okc == true
end

-- Certificates -------------------------------------------------------------

-- WEFT_TLS_CERTS names certificates tests/tls-certs.sh made beforehand (the
-- Windows build's tests, which cannot run it from inside Wine).
local premade = os.getenv("WEFT_TLS_CERTS")
local dir = premade
if not premade then
	local tmp = os.tmpname()
	os.remove(tmp)
	dir = builddir .. "/tests/tls-" .. tmp:match("[^/\\]*$")
	if tap.windows or not sh(("sh %q/tests/tls-certs.sh %q >/dev/null 2>&1"):format(srcdir, dir)) then
		tap.skip("the openssl command could not make test certificates")
		tap.done()
		return
	end
end
local function f(name) return dir .. "/" .. name end
local function read(name)
	local h = assert(io.open(name, "rb"))
	local s = h:read("a")
	h:close()
	return s
end

local SERVER = { mode = "server", certificate = f "server.pem", key = f "server.key" }
local CLIENT = { mode = "client", cafile = f "ca.pem" }
local function with(base, extra)
	local t = {}
	for k, v in pairs(base) do t[k] = v end
	for k, v in pairs(extra or {}) do t[k] = v end
	return t
end

-- Pairs --------------------------------------------------------------------

-- Accepts one connection on a new listener and wraps it with sp; connects
-- a client to `host` and wraps it with cp (and servername).  Both sides
-- handshake at once.  Returns client, client error, server, server error.
local function pair(sp, cp, host, servername, expires)
	host = host or "localhost"
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local s, serr
	local sdone = false
	local sj = weft.sleep_job()
	weft.thread(function()
		local a, err = l:accept(deadline())
		if a then
			local t
			t, err = tls.wrap(a, sp)
			if t then
				local hok
				hok, err = t:handshake(expires or deadline())
				if hok then s = t else t:close() end
			else
				a:close()
			end
		end
		serr = err
		sdone = true
		sj:wakeup()
	end)
	local c, cerr
	local tcp = assert(weft.tcp())
	local cok, err = tcp:connect(host, l.local_port, deadline())
	if cok then
		local t
		t, err = tls.wrap(tcp, cp, servername)
		if t then
			local hok
			hok, err = t:handshake(expires or deadline())
			if hok then c = t else t:close() end
		else
			tcp:close()
		end
	end
	cerr = err
	if not c then tcp:close() end
	if not sdone then sj:sleep(10) end
	l:close()
	return c, cerr, s, serr
end

-- Parameters ---------------------------------------------------------------

H.test("contexts: bad parameters give nil and a message naming the field", function()
	local cases = {
		{ { mode = "both" }, "^mode: " },
		{ { protocol = "tlsv1" }, "^protocol: 'tlsv1' is not supported" },
		{ { protocol = "sslv3" }, "^protocol: 'sslv3' is not supported" },
		{ { protocol = "tlsv9" }, "^protocol: unknown protocol" },
		{ { protocol = 12 }, "^protocol: a string expected" },
		{ { min_protocol = "tlsv1_3", max_protocol = "tlsv1_2" }, "^max_protocol: " },
		{ { verify = "sometimes" }, "^verify: unknown mode 'sometimes'" },
		{ { verify = { "peer", 3 } }, "^verify: item 2 is not a string" },
		{ { options = "no_bugs" }, "^options: unknown option 'no_bugs'" },
		{ { options = { "all", true } }, "^options: item 2" },
		{ { certificate = f "nope.pem", key = f "server.key" }, "^certificate: cannot read '.*nope.pem': No such file" },
		{ { certificate = f "server.pem" }, "^key: a certificate needs its key" },
		{ { key = f "server.key" }, "^certificate: a certificate needs its key" },
		{ { mode = "server" }, "^certificate: a server needs a certificate and a key" },
		{ { certificate = f "server.pem", key = f "other.key" }, "^key: the key does not match the certificate" },
		{ { certificate = f "server.key", key = f "server.key" }, "^certificate: " },
		{ { certificate = "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n", key = f "server.key" }, "^certificate: " },
		{ { certificate = f "server.pem", key = f "encrypted.key" }, "^key: the key is encrypted and no password was given" },
		{ { certificate = f "server.pem", key = f "encrypted.key", password = "wrong" }, "^key: cannot decrypt the key %(wrong password%?%)" },
		{ { certificate = f "server.pem", key = f "encrypted.key", password = 42 }, "^password: a string or a function expected" },
		{ { certificate = f "server.pem", key = f "encrypted.key", password = function() error("no tty") end }, "^password: the function failed: .*no tty" },
		{ { certificate = f "server.pem", key = f "encrypted.key", password = function() return {} end }, "^password: the function returned table" },
		{ { cafile = f "server.key" }, "^cafile: no certificate in it" },
		{ { cafile = f "missing.pem" }, "^cafile: cannot read" },
		{ { capath = f "no-such-dir" }, "^capath: " },
		{ { ciphers = "NO-SUCH-CIPHER" }, "^ciphers: " },
		{ { ciphersuites = "TLS_NOPE" }, "^ciphersuites: " },
		{ { curves = "P-999" }, "^curves: " },
		{ { curve = "nope" }, "^curves: " },
		{ { alpn = "" }, "^alpn: a protocol name must have 1 to 255 bytes" },
		{ { alpn = ("x"):rep(256) }, "^alpn: a protocol name must have 1 to 255 bytes" },
		{ { alpn = function() end }, "^alpn: a client gives a list" },
		{ { alpn = { "h2", 2 } }, "^alpn: item 2 is not a string" },
		{ { depth = -1 }, "^depth: " },
		{ { depth = 1.5 }, "^depth: " },
		{ with(SERVER, { dhparam = "-----BEGIN DH PARAMETERS-----\nxx\n-----END DH PARAMETERS-----\n" }), "^dhparam: " },
		{ with(SERVER, { dhparam = {} }), "^dhparam: " },
	}
	for _, c in ipairs(cases) do
		local p = with({ cafile = f "ca.pem" }, c[1])
		local ctx, err = tls.context(p)
		is(ctx, nil, "refused: " .. c[2])
		like(tostring(err), c[2], "message for " .. c[2])
	end
	ok(not pcall(tls.context, "server"), "a non-table raises")
	ok(tls.context(with(SERVER, { dhparam = true })), "dhparam = true (automatic groups)")
	ok(tls.context(with(SERVER, { password = "unused", options = { "all", "no_sslv3", "single_ecdh_use", "cipher_server_preference", "no_compression" }, ciphers = "HIGH:!aNULL", ciphersuites = "TLS_AES_128_GCM_SHA256", curves = "P-256:X25519" })),
		"LuaSec's usual parameters are accepted")
	ok(tls.context({ mode = "client", verify = "none", protocol = "any" }), "a client with verify none")
end)

H.test("contexts: PEM strings, encrypted keys, one SSL context per parameters", function()
	local pem = with(SERVER, { certificate = read(f "server.pem"), key = read(f "server.key") })
	ok(tls.context(pem), "certificate and key given as PEM strings")
	ok(tls.context(with(SERVER, { key = f "encrypted.key", password = "secret" })), "encrypted key with its password")
	local asked = 0
	ok(tls.context(with(SERVER, { key = f "encrypted.key", password = function() asked = asked + 1; return "secret" end })),
		"encrypted key with a password function")
	is(asked, 1, "the password function is called once")
	local p = with(SERVER, {})
	is(tls.context(p), tls.context(p), "the same table gives the same context object")
	collectgarbage()
	local before = tls.contexts()
	local a = assert(tls.context(with(SERVER, { ciphers = "HIGH" })))
	local b = assert(tls.context(with(SERVER, { ciphers = "HIGH" })))
	ok(a ~= b, "equal tables give two context objects")
	is(tls.contexts(), before + 1, "... sharing one SSL context")
	a, b = nil, nil
	collectgarbage()
	collectgarbage()
	is(tls.contexts(), before, "the SSL context goes with its last user")
end)

-- Handshakes -----------------------------------------------------------------

H.test("handshake, echo, peer certificate, info", function()
	local c, cerr, s, serr = pair(SERVER, CLIENT)
	ok(c, "client handshake: " .. tostring(cerr))
	ok(s, "server handshake: " .. tostring(serr))
	if not (c and s) then return end
	assert(c:send("hello, tls"))
	local buf = weft.buffer(100)
	local n = assert(s:recv(buf, nil, deadline()))
	is(buf:tostring(1, n), "hello, tls", "server got the bytes")
	assert(s:send(buf, n))
	assert(c:recvn(buf, n, deadline()))
	is(buf:tostring(1, n), "hello, tls", "client got them back")
	is(c:info().protocol, "TLSv1.3", "TLS 1.3 by default")
	like(c:info("cipher"), "^TLS_", "info(field)")
	is(c:getsniname(), "localhost", "the client asked for the name it connected to")
	is(s:getsniname(), "localhost", "the server saw it")
	is(c:getpeerverification(), true, "the peer is verified")
	local cert = assert(c:getpeercertificate())
	like(cert.subject, "CN=localhost", "subject")
	like(cert.issuer, "CN=weft test ca", "issuer")
	is(cert.altnames.dns[1], "localhost", "DNS alternative name")
	is(cert.altnames.ip[1], "127.0.0.1", "IP alternative name")
	is(cert.altnames.ip[2], "::1", "IPv6 alternative name")
	is(cert.version, 3, "version")
	like(cert.pem, "^%-%-%-%-%-BEGIN CERTIFICATE", "PEM")
	cmp_ok(cert.validity.notafter, ">", os.time(), "valid until later")
	cmp_ok(cert.validity.notbefore, "<=", os.time() + 60, "valid from before now")
	like(cert.notafter, "^%d%d%d%d%-%d%d%-%d%dT", "notafter as text")
	if tap.windows then
		tap.skip("no openssl command nor POSIX shell for the Windows program", 2)
	else
		local fp = io.popen(("openssl x509 -in %q -noout -fingerprint -sha256"):format(f "server.pem")):read("a")
		is(cert.fingerprint, fp:match("=(%S+)"), "SHA-256 fingerprint as openssl prints it")
		local sn = io.popen(("openssl x509 -in %q -noout -serial"):format(f "server.pem")):read("a")
		is(cert.serial, sn:match("=(%S+)"), "serial")
	end
	local none, why = s:getpeercertificate()
	ok(none == nil and why == "no peer certificate", "no client certificate on the server")
	is(c:type(), "tls", "type")
	is(c.remote_port, s.local_port, "address fields pass through")
	is(c.remote_addr, "127.0.0.1", "remote_addr")
	-- Nagle would hold a reply written after the session tickets for the
	-- peer's delayed ACK (~40 ms per exchange).
	is(s:getopt("tcp_nodelay"), true, "wrapping turns Nagle's algorithm off")
	ok(c:setopt("tcp_nodelay", false), "setopt passes through")
	is(c:getopt("tcp_nodelay"), false, "getopt passes through")
	cmp_ok(c:fileno(), ">=", 0, "fileno")
	like(tostring(c), "^weft.tls %(fd %d+%)", "tostring")
	-- close sends close_notify: a clean end, recv returns 0.
	c:close()
	is(s:recv(buf, nil, deadline()), 0, "close_notify reads as the end of the stream")
	like(tostring(c), "closed", "tostring of a closed socket")
	local r, err = c:send("x")
	ok(r == nil and err == "closed", "send on a closed TLS socket: closed")
	s:close()
	ok(c:close(), "close twice")
end)

H.test("connecting by address checks the certificate's IP entries; no SNI", function()
	local c, cerr, s = pair(SERVER, CLIENT, "127.0.0.1")
	ok(c, "verified against IP:127.0.0.1: " .. tostring(cerr))
	if c then
		is(s:getsniname(), nil, "no server name sent for an address")
		c:close(); s:close()
	end
	c, cerr, s = pair(with(SERVER, { certificate = f "other.pem", key = f "other.key" }), CLIENT, "127.0.0.1")
	is(c, nil, "a certificate without the address is refused")
	is(cerr, "certificate verify failed: IP address mismatch", "message")
	if s then s:close() end
end)

H.test("verification failures and their messages", function()
	local cases = {
		{ "unknown CA", { certificate = f "unknown.pem", key = f "unknown.key" }, CLIENT,
			"certificate verify failed: unable to get local issuer certificate" },
		{ "expired", { certificate = f "expired.pem", key = f "expired.key" }, CLIENT,
			"certificate verify failed: certificate has expired" },
		{ "wrong host name", { certificate = f "other.pem", key = f "other.key" }, CLIENT,
			"certificate verify failed: hostname mismatch" },
		{ "default store (verification on by default)", {}, { mode = "client" },
			"certificate verify failed: unable to get local issuer certificate" },
	}
	for _, k in ipairs(cases) do
		local c, cerr, s, serr = pair(with(SERVER, k[2]), k[3])
		is(c, nil, k[1] .. ": refused")
		is(cerr, k[4], k[1] .. ": message")
		ok(s == nil and serr ~= nil, k[1] .. ": the server's handshake fails too (" .. tostring(serr) .. ")")
		if s then s:close() end
	end
	-- verify = "none": the handshake goes on; getpeerverification tells.
	local c, cerr, s = pair(with(SERVER, { certificate = f "unknown.pem", key = f "unknown.key" }),
		{ mode = "client", verify = "none" })
	ok(c, "verify none: connected (" .. tostring(cerr) .. ")")
	if c then
		local v, why = c:getpeerverification()
		is(v, false, "getpeerverification is false")
		is(why, "unable to get local issuer certificate", "with the reason")
		c:close(); s:close()
	end
end)

H.test("client certificates", function()
	local sp = with(SERVER, { verify = { "peer", "fail_if_no_peer_cert" }, cafile = f "ca.pem" })
	local c, cerr, s, serr = pair(sp, CLIENT)
	is(s, nil, "a server requiring a certificate refuses a client without one")
	is(serr, "peer did not return a certificate", "server's message")
	ok(c == nil or select(2, c:recv(weft.buffer(1), nil, deadline())) ~= nil,
		"the client learns it (at once or at its first read): " .. tostring(cerr))
	if c then c:close() end
	c, cerr, s, serr = pair(sp, with(CLIENT, { certificate = f "client.pem", key = f "client.key" }))
	ok(c and s, "with a certificate: " .. tostring(cerr or serr))
	if s then
		-- The TLS 1.3 client's certificate is checked by the server during
		-- the handshake; its details are on the server's side.
		local cert = s:getpeercertificate()
		like(cert and cert.subject, "CN=weft client", "the server sees the client's certificate")
		is(s:getpeerverification(), true, "and verified it")
		c:close(); s:close()
	end
	-- Requested but optional ("peer" only): a client without one passes.
	c, cerr, s, serr = pair(with(SERVER, { verify = "peer", cafile = f "ca.pem" }), CLIENT)
	ok(c and s, "verify peer without fail_if_no_peer_cert: " .. tostring(cerr or serr))
	if c then c:close(); s:close() end
end)

H.test("protocol versions", function()
	local c, cerr, s = pair(with(SERVER, { protocol = "tlsv1_2" }), CLIENT)
	ok(c, "TLS 1.2 server, default client: " .. tostring(cerr))
	if c then
		is(c:info().protocol, "TLSv1.2", "TLS 1.2 negotiated")
		-- bulk in 1.2 too
		assert(c:send(("z"):rep(100000)))
		local buf = weft.buffer(100000)
		ok(s:recvn(buf, 100000, deadline()), "100 kB over TLS 1.2")
		c:close(); s:close()
	end
	c, cerr, s = pair(with(SERVER, { protocol = "tlsv1_2" }), with(CLIENT, { protocol = "tlsv1_3" }))
	is(c, nil, "a TLS 1.3-only client and a TLS 1.2-only server do not agree")
	like(tostring(cerr), "protocol version", "message: " .. tostring(cerr))
	if s then s:close() end
	c, cerr, s = pair(with(SERVER, { min_protocol = "tlsv1_3" }), with(CLIENT, { max_protocol = "tlsv1_2" }))
	is(c, nil, "min/max versions that do not overlap")
	if s then s:close() end
	c, cerr, s = pair(with(SERVER, { certificate = f "rsa.pem", key = f "rsa.key" }), CLIENT)
	ok(c, "an RSA 2048 server: " .. tostring(cerr))
	if c then c:close(); s:close() end
end)

H.test("SNI", function()
	local sp = with(SERVER, {})
	local other = with(SERVER, { certificate = f "other.pem", key = f "other.key" })
	local ctx = assert(tls.context(sp))
	ok(ctx:sni({ ["other.example"] = other }, false), "sni table set")
	local c, cerr, s = pair(ctx, CLIENT, "localhost", "other.example")
	ok(c, "the name's context was chosen: " .. tostring(cerr))
	if c then
		like(c:getpeercertificate().subject, "CN=other.example", "the other certificate")
		is(s:getsniname(), "other.example", "the server saw the name")
		c:close(); s:close()
	end
	c, cerr, s = pair(ctx, CLIENT, "localhost")
	ok(c, "a name without an entry gets the default context (not strict): " .. tostring(cerr))
	if c then
		like(c:getpeercertificate().subject, "CN=localhost", "the default certificate")
		c:close(); s:close()
	end
	local strict = assert(tls.context(with(SERVER, { ciphers = "HIGH" })))
	assert(strict:sni({ ["other.example"] = other }, true))
	c, cerr, s = pair(strict, with(CLIENT, { verify = "none" }), "localhost", "unknown.example")
	is(c, nil, "strict: an unknown name is refused")
	like(tostring(cerr), "unrecognized name", "message")
	if s then s:close() end
	-- Copas's sslparams form, with names for a server and a name for a client.
	c, cerr, s = pair({ wrap = sp, sni = { names = { ["other.example"] = other }, strict = true } },
		{ wrap = CLIENT, sni = { names = "other.example" } })
	ok(c, "Copas's { wrap = ..., sni = ... } form: " .. tostring(cerr))
	if c then
		like(c:getpeercertificate().subject, "CN=other.example", "the name from sni.names")
		c:close(); s:close()
	end
	local r, err = tls.context(CLIENT):sni({})
	ok(r == nil and err:match("not a server"), "sni on a client context")
end)

H.test("ALPN", function()
	local c, cerr, s = pair(with(SERVER, { alpn = { "http/1.1", "h2" } }), with(CLIENT, { alpn = { "h2", "http/1.1" } }))
	ok(c, "handshake: " .. tostring(cerr))
	if c then
		is(c:getalpn(), "http/1.1", "the server's preference, client side")
		is(s:getalpn(), "http/1.1", "server side")
		c:close(); s:close()
	end
	local offered
	local sel = with(SERVER, { alpn = function(list) offered = list; return "h2" end })
	c, cerr, s = pair(sel, with(CLIENT, { alpn = { "spdy/3", "h2" } }))
	ok(c, "selector function: " .. tostring(cerr))
	if c then
		is(c:getalpn(), "h2", "the selector's choice")
		is(offered and table.concat(offered, ","), "spdy/3,h2", "the selector got the client's list")
		c:close(); s:close()
	end
	local bad = with(SERVER, { alpn = function() return "nope" end })
	c, cerr, s, serr = pair(bad, with(CLIENT, { alpn = "h2" }))
	is(c, nil, "a selector choosing something not offered ends the handshake")
	like(tostring(serr), "alpn: the selector chose 'nope'", "server's message")
	if s then s:close() end
	c, cerr, s = pair(with(SERVER, { alpn = "h2" }), with(CLIENT, { alpn = "http/1.1" }))
	ok(c, "no common protocol: no ALPN, the handshake goes on")
	if c then
		is(c:getalpn(), nil, "getalpn is nil")
		c:close(); s:close()
	end
end)

-- Failure modes ------------------------------------------------------------

H.test("a silent peer: the handshake times out", function()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local held
	weft.thread(function() held = l:accept(deadline()) end)
	local tcp = assert(weft.tcp())
	assert(tcp:connect("localhost", l.local_port, deadline()))
	local t = assert(tls.wrap(tcp, CLIENT))
	local t0 = weft.clock()
	local r, err = t:handshake(t0 + 0.3)
	local late = weft.clock() - t0
	ok(r == nil and err == "timeout", "timeout: " .. tostring(err))
	cmp_ok(late, ">=", 0.29, "not before the deadline")
	cmp_ok(late, "<", 3, "not long after it")
	t:close()
	if held then held:close() end
	l:close()
end)

H.test("a peer closing mid-record: eof, never a hang", function()
	local c, cerr, s = pair(SERVER, CLIENT)
	ok(c, tostring(cerr))
	if not c then return end
	-- Half a record, straight on the TCP socket, then the connection ends.
	local raw = s:tcp()
	assert(raw:send("\23\3\3\0\100" .. ("x"):rep(20)))
	raw:close()
	local buf = weft.buffer(200)
	local n, err = c:recv(buf, nil, deadline())
	ok(n == nil and err == "eof", "recv: nil, eof (" .. tostring(n) .. ", " .. tostring(err) .. ")")
	local _, err2 = c:recv(buf, nil, deadline())
	is(err2, "eof", "and again")
	c:close()

	-- An end without close_notify, between records.
	c, cerr, s = pair(SERVER, CLIENT)
	assert(s:send("abc"))
	s:tcp():close()
	local r1, e1, got = c:recvn(buf, 10, deadline())
	ok(r1 == nil and e1 == "eof" and got == 3, "recvn: nil, eof, 3 bytes read")
	c:close()

	-- recvall: all the data up to the close_notify.
	c, cerr, s = pair(SERVER, CLIENT)
	weft.thread(function()
		s:send(("d"):rep(300000))
		s:close()
	end)
	local all, len = c:recvall(deadline())
	ok(all and len == 300000, "recvall to close_notify: " .. tostring(len))
	c:close()

	-- recvall_read: the same, served through a non-yielding reader.
	c, cerr, s = pair(SERVER, CLIENT)
	weft.thread(function()
		s:send("0123456789")
		s:close()
	end)
	local rd = c:recvall_read(deadline())
	ok(type(rd) == "function", "recvall_read gives a reader")
	local b4 = weft.buffer(4)
	local parts = {}
	while true do
		local n = rd(b4)
		if not n or n == 0 then break end
		parts[#parts + 1] = b4:tostring(1, n)
	end
	is(table.concat(parts), "0123456789", "the reader serves every byte")
	c:close()

	-- recvall's limit, as on TCP.
	c, cerr, s = pair(SERVER, CLIENT)
	weft.thread(function()
		s:send(("L"):rep(50000))
		s:close()
	end)
	local lb, lerr, lbuf, llen = c:recvall(deadline(), 10000)
	ok(lb == nil and lerr == "too_large" and llen == 10000, "recvall over its limit: nil, too_large, 10000 bytes")
	ok(lbuf and #lbuf <= 10001, "the buffer never grew past the limit")
	ok(not pcall(c.recv, c, weft.buffer(4), 0), "recv into 0 bytes raises, as on TCP")
	c:close()

	-- The peer resets: a clear error, no SIGPIPE.
	c, cerr, s = pair(SERVER, CLIENT)
	assert(s:tcp():setopt("so_linger", 0))
	s:tcp():close()
	weft.sleep(0.05)
	local e
	for _ = 1, 100 do
		local okw
		okw, e = c:send(("q"):rep(65536), nil, deadline())
		if not okw then break end
	end
	ok(e == "connection_reset" or e == "broken_pipe" or e == "eof", "send after a reset: " .. tostring(e))
	c:close()
end)

H.test("closing a TLS socket wakes its reader", function()
	local c, _, s = pair(SERVER, CLIENT)
	local res
	local th = weft.thread(function()
		res = { c:recv(weft.buffer(10), nil, deadline()) }
	end)
	weft.sleep(0.02)
	c:close()
	weft.sleep(0.02)
	is(coroutine.status(th), "dead", "the reader ended")
	ok(res and res[1] == nil and res[2] == "closed", "with closed")
	s:close()
end)

H.test("bad calls", function()
	local tcp = assert(weft.tcp())
	ok(not pcall(tls.wrap, tcp, 42), "wrap with a number raises")
	local t, err = tls.wrap(tcp, CLIENT)
	ok(t == nil and err:match("^servername: no host name"), "verifying without a name to check is refused: " .. tostring(err))
	ok(tls.wrap(tcp, with(CLIENT, { verify = "none" })), "without verification it may wrap")
	tcp:close()
	t, err = tls.wrap(tcp, with(CLIENT, { verify = "none" }))
	ok(t == nil and err == "closed", "wrapping a closed socket: closed")
	ok(not pcall(tls.wrap, assert(weft.udp()), CLIENT), "wrapping a UDP socket raises")
	local x, e = tls.wrap(assert(weft.tcp()), { mode = "client", verify = "bad" })
	ok(x == nil and e:match("^verify:"), "wrap with bad parameters: nil, message")
end)

H.test("64 MiB each way at once, byte-exact", function()
	local c, cerr, s = pair(SERVER, CLIENT)
	ok(c, tostring(cerr))
	if not c then return end
	local MB = 1024 * 1024
	local total = (64 // SCALE) * MB
	-- Every chunk differs (its number at the front), so a lost, repeated or
	-- reordered chunk shows.
	local base = {}
	for i = 1, MB // 64 do base[i] = ("%063d\n"):format(i * 7919 % 1000003) end
	base = table.concat(base)
	local function chunk(i) return ("%016d"):format(i) .. base:sub(17) end
	local function sender(t, done)
		for i = 1, total // MB do
			local r, err = t:send(chunk(i), nil, deadline(30))
			if not r then done.err = err; return end
		end
		done.sent = true
	end
	local function receiver(t, done)
		local buf = weft.buffer(MB)
		for i = 1, total // MB do
			local r, err = t:recvn(buf, MB, deadline(30))
			if not r then done.err = err; return end
			if buf:tostring() ~= chunk(i) then done.err = "chunk " .. i .. " differs"; return end
		end
		done.received = true
	end
	local st = {}
	local ths = {
		weft.thread(sender, c, st), weft.thread(receiver, s, st),
		weft.thread(sender, s, st), weft.thread(receiver, c, st),
	}
	local limit = deadline(120)
	while weft.clock() < limit do
		local all = true
		for _, th in ipairs(ths) do all = all and coroutine.status(th) == "dead" end
		if all then break end
		weft.sleep(0.01)
	end
	is(st.err, nil, "no error")
	ok(st.sent and st.received, ("%d MiB sent and received each way"):format(total // MB))
	c:close(); s:close()
end, 150)

-- Interop with the openssl command -------------------------------------------

-- Runs cmd in the background with its output in a file; returns a reader
-- of that file and the file name.
local function background(cmd)
	local out = os.tmpname()
	sh(("(%s) >%q 2>&1 &"):format(cmd, out))
	return function() local h = io.open(out); local s = h and h:read("a") or ""; if h then h:close() end; return s end, out
end

local function wait_for(read, pattern, seconds)
	local limit = deadline(seconds or 10)
	while weft.clock() < limit do
		local m = read():match(pattern)
		if m then return m end
		weft.sleep(0.02)
	end
end

H.test("interop: weft client, openssl s_server", function()
	if tap.windows then return tap.skip("no openssl command nor POSIX shell for the Windows program") end
	for _, v in ipairs { "-tls1_3", "-tls1_2" } do
		local read, out = background(("exec timeout 20 openssl s_server -accept 127.0.0.1:0 -naccept 1 -cert %q -key %q %s -alpn h2 -rev"):format(
			f "server.pem", f "server.key", v))
		local port = wait_for(read, "ACCEPT 127%.0%.0%.1:(%d+)")
		ok(port, "s_server started " .. v)
		if port then
			local t, err = tls.connect("localhost", tonumber(port), with(CLIENT, { alpn = { "h2" } }), deadline())
			ok(t, "connected and verified: " .. tostring(err))
			if t then
				is(t:info().protocol, v == "-tls1_3" and "TLSv1.3" or "TLSv1.2", "protocol " .. v)
				is(t:getalpn(), "h2", "ALPN with s_server")
				assert(t:send("weft\n"))
				-- -rev: the server sends each line back reversed.
				local got = ""
				while not got:find("tfew") do
					local buf = weft.buffer(100)
					local n, e = t:recv(buf, nil, deadline())
					if not n or n == 0 then break end
					got = got .. buf:tostring(1, n)
				end
				like(got, "tfew", "s_server answered")
				t:close()
			end
		end
		os.remove(out)
	end
end)

H.test("interop: openssl s_client, weft server; key update and renegotiation", function()
	if tap.windows then return tap.skip("no openssl command nor POSIX shell for the Windows program") end
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local port = l.local_port
	-- OpenSSL servers refuse renegotiations a client starts unless told.
	local ctx = assert(tls.context(with(SERVER, { alpn = { "weft" }, options = "allow_client_renegotiation" })))
	local served = 0
	weft.thread(function()
		while true do
			local a = l:accept()
			if not a then return end
			weft.thread(function()
				local t = assert(tls.wrap(a, ctx))
				local buf = weft.buffer(4096)
				while true do
					local n = t:recv(buf, nil, deadline(15))
					if not n or n == 0 then break end
					if not t:send(buf, n) then break end
				end
				served = served + 1
				t:close()
			end)
		end
	end)
	local cases = {
		{ "TLS 1.3 with a key update", "-tls1_3", "hello\nK\nworld\n", "KEYUPDATE" },
		{ "TLS 1.2 with a renegotiation", "-tls1_2", "hello\nR\nworld\n", "RENEGOTIATING" },
	}
	for _, k in ipairs(cases) do
		-- s_client reads the lines slowly so that K/R are commands, not data.
		local read, out = background(("(for l in $(printf '%s'); do echo \"$l\"; sleep 0.3; done; sleep 0.5) | exec timeout 20 openssl s_client -connect 127.0.0.1:%d -servername localhost -CAfile %q -verify_return_error -alpn weft %s"):format(
			k[3]:gsub("\n", " "), port, f "ca.pem", k[2]))
		local got = wait_for(read, "(world)", 15)
		local text = read()
		ok(got, k[1] .. ": s_client got its bytes back")
		like(text, k[4], k[1] .. ": s_client did it")
		like(text, "Verify return code: 0", k[1] .. ": s_client verified weft's certificate")
		like(text, "ALPN protocol: weft", k[1] .. ": ALPN")
		like(text, "hello", k[1] .. ": data before")
		os.remove(out)
	end
	local limit = deadline(10)
	while served < #cases and weft.clock() < limit do weft.sleep(0.02) end
	is(served, #cases, "the server ended each connection")
	l:close()
end, 40)

H.test("interop: a server that renegotiates (TLS 1.2) while weft reads", function()
	if tap.windows then return tap.skip("no openssl command nor POSIX shell for the Windows program") end
	-- s_server's "r" command renegotiates; the lines after it are data.
	local read, out = background(("(sleep 1; echo r; sleep 1; echo after; sleep 5) | exec timeout 20 openssl s_server -accept 127.0.0.1:0 -naccept 1 -cert %q -key %q -tls1_2"):format(
		f "server.pem", f "server.key"))
	local port = wait_for(read, "ACCEPT 127%.0%.0%.1:(%d+)")
	ok(port, "s_server started")
	if not port then return end
	local t, err = tls.connect("localhost", tonumber(port), CLIENT, deadline())
	ok(t, "connected: " .. tostring(err))
	if not t then return end
	local got = ""
	local buf = weft.buffer(100)
	while not got:find("after") do
		local n, e = t:recv(buf, nil, deadline(10))
		if not n or n == 0 then err = e; break end
		got = got .. buf:tostring(1, n)
	end
	like(got, "after", "data after the renegotiation arrived: " .. tostring(err))
	t:close()
	-- s_server prints its counters when the connection is over.
	ok(wait_for(read, "(2 server accepts that finished)"), "s_server renegotiated (a second handshake finished)")
	os.remove(out)
end, 30)

-- Many workers -------------------------------------------------------------

local many = [[
local weft = require "weft"
local tls = require "weft.tls"
local dir, n = arg[1], tonumber(arg[2])
local SERVER = { mode = "server", certificate = dir .. "/server.pem", key = dir .. "/server.key" }
local CLIENT = { mode = "client", cafile = dir .. "/ca.pem" }
local portch = weft.channel("port", 1)
local donech = weft.channel("done", 4)
local ctx = assert(tls.context(SERVER))
local cctx = assert(tls.context(CLIENT))
-- Both workers hold both contexts until the end; worker 1 counts the
-- process's SSL contexts once worker 2 has made its own.
local readych = weft.channel("ready", 1)
local shared
if weft.worker() == 2 then
	assert(readych:send("ready", weft.clock() + 30))
else
	assert(readych:recv(weft.clock() + 30))
	shared = tls.contexts()
end
local l = assert(weft.tcp())
local port
if weft.worker() == 1 then
	assert(l:listen(4096, "127.0.0.1", 0))
	port = l.local_port
	assert(portch:send(port, weft.clock() + 30))
else
	port = assert(portch:recv(weft.clock() + 30))
	assert(l:listen(4096, "127.0.0.1", port))
end
-- Both workers created a context from the same parameters: one SSL context.
local served, failed = 0, 0
weft.thread(function()
	while true do
		local a = l:accept()
		if not a then return end
		weft.thread(function()
			local t = assert(tls.wrap(a, ctx))
			local buf = weft.buffer(64)
			local r = t:recvn(buf, 64, weft.clock() + 60)
			if r and t:send(buf, 64) then served = served + 1 else failed = failed + 1 end
			t:close()
		end)
	end
end)
if weft.worker() == 1 then
	local ok_, bad, pending = 0, 0, n
	for i = 1, n do
		weft.thread(function()
			local t, err = tls.connect("localhost", port, cctx, weft.clock() + 60)
			local msg = ("%064d"):format(i)
			if t and t:send(msg) then
				local buf = weft.buffer(64)
				if t:recvn(buf, 64, weft.clock() + 60) and buf:tostring() == msg then ok_ = ok_ + 1 else bad = bad + 1 end
				t:close()
			else
				bad = bad + 1
				io.stderr:write("client: ", tostring(err), "\n")
			end
			pending = pending - 1
		end)
	end
	while pending > 0 do weft.sleep(0.01) end
	print(("clients ok %d failed %d"):format(ok_, bad))
	weft.sleep(0.2)
	assert(donech:send("stop", weft.clock() + 30))
	assert(donech:send("stop", weft.clock() + 30))
end
assert(donech:recv(weft.clock() + 120))
print(("worker %d served %d failed %d"):format(weft.worker(), served, failed))
if shared then print(("contexts %d"):format(shared)) end
assert(cctx)
l:close()
]]

test("1000 concurrent TLS connections over 2 workers, one SSL context", function()
	local n = 1000 // SCALE
	local out, okc = tap.run_workers(2, many, dir, n)
	if not out then
		tap.skip("WEFT_BIN not set", 4)
		return
	end
	ok(okc, "the program exited cleanly")
	like(out, ("clients ok %d failed 0"):format(n), "every client got its bytes back")
	local total, workers = 0, 0
	for w, s, fl in out:gmatch("worker (%d) served (%d+) failed (%d+)") do
		total = total + tonumber(s)
		workers = workers + 1
		is(fl, "0", "worker " .. w .. ": no connection failed")
	end
	is(total, n, "the two workers served every connection once")
	-- Each worker made a server and a client context from the same tables:
	-- two SSL contexts in the process, not four.
	is(out:match("contexts (%d+)"), "2", "workers share the SSL contexts made from equal parameters")
	if not okc or total ~= n then tap.diag(out) end
end)

if not premade then
	sh(("rm -rf %q"):format(dir))
end
tap.done()
