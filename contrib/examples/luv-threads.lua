-- Two Lua states on two threads sharing one weft runtime, in plain Lua:
-- luv's uv.new_thread (Debian: lua-luv) starts a thread with a Lua state
-- of its own, and weft.epoll_fd(fd) makes that state join this one's
-- runtime.  The states share named channels, spawned jobs and listening
-- sockets from then on; each keeps its own sockets and threads.
--   lua5.4 contrib/examples/luv-threads.lua     (or: weft luv-threads.lua)
local uv = require "luv"
local weft = require "weft"

local server = assert(weft.tcp())
assert(server:listen("127.0.0.1", 0))

-- The other thread's code.  luv copies it as bytecode into the new state,
-- and its arguments as plain values, so it may use no upvalue but _ENV.
local function client(epfd, port)
	local weft = require "weft"
	-- Join first: a state can join only before it opens a socket.
	assert(weft.epoll_fd(epfd))
	weft.run(function()
		local c = assert(weft.tcp())
		assert(c:connect("127.0.0.1", port, weft.clock() + 10))
		assert(c:send("hello from the luv thread"))
		local buf = weft.buffer(25)
		assert(c:recvn(buf, #buf, weft.clock() + 10))
		c:close()
		-- a named channel of the shared runtime
		assert(weft.channel("results"):send(("worker %d of %d heard: %s"):format(
			weft.worker(), weft.workers(), buf:tostring()), weft.clock() + 10))
	end)
end

local thread = assert(uv.new_thread(client, weft.epoll_fd(), server.local_port))
weft.run(function()
	local c = assert(server:accept(weft.clock() + 10))
	local buf = weft.buffer(25)
	assert(c:recvn(buf, #buf, weft.clock() + 10))
	-- the other state joined before it connected, and waits for the echo:
	-- it counts here
	print(("worker %d of %d echoes: %s"):format(weft.worker(), weft.workers(), buf:tostring()))
	assert(c:send(buf))
	c:close()
	server:close()
	print(assert(weft.channel("results"):recv(weft.clock() + 10)))
end)
thread:join()
