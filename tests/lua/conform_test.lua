-- Conformance with the sock API where weft used to differ from it: each
-- test pins one difference that was found and fixed.
local tap = require "tap"
local weft = require "weft"
local H = tap.weft_harness(weft)
local ok, is, is_deeply, like = tap.ok, tap.is, tap.is_deeply, tap.like

local function deadline(s)
	return weft.clock() + (s or 5)
end

local function tmppath()
	local p = os.tmpname()
	os.remove(p)
	return p
end

-- Runs f and returns (false, message) if it raised, else true and f's
-- results.
local function try(f, ...)
	return pcall(f, ...)
end

H.test("unix sockets: addresses of unnamed sockets are nil, never stack bytes", function()
	local path = tmppath()
	local l = assert(weft.tcp("unix"))
	is(l.local_addr, nil, "an unbound unix socket has no local_addr")
	is(l.remote_addr, nil, "nor a remote_addr")
	is(l:listen(path), true, "listen(path) binds and listens a unix socket")
	is(l.local_addr, path, "the listener's local_addr is its path")
	local c = assert(weft.tcp("unix"))
	is(c:connect(path, nil, deadline()), true, "connect to the path")
	local a = assert(l:accept(deadline()))
	is(a.remote_addr, nil, "a connection accepted from an unnamed client has no remote_addr")
	is(a.local_addr, path, "its local_addr is the listener's path")
	is(c.local_addr, nil, "the unnamed client has no local_addr")
	is(c.remote_addr, path, "its remote_addr is the path")
	assert(c:send("x"))
	local buf = weft.buffer(4)
	is(a:recv(buf, 4, deadline()), 1, "the connection works")
	a:close()
	c:close()
	l:close()
	os.remove(path)
end)

H.test("unix sockets: listen binds an unbound socket", function()
	local path = tmppath()
	local l = assert(weft.tcp("unix"))
	local r, err = l:listen(path)
	is(r, true, "listen(path) on a fresh unix socket")
	is(err, nil, "no error")
	ok(os.execute("test -S '" .. path .. "'"), "the socket file exists")
	l:close()
	os.remove(path)
	-- A unix socket bound beforehand keeps its name.
	local b = assert(weft.tcp("unix"))
	assert(b:bind(path))
	is(b:listen(tmppath()), true, "listen on a bound unix socket ignores the address")
	is(b.local_addr, path, "and keeps the bound path")
	b:close()
	os.remove(path)
end)

tap.done()
