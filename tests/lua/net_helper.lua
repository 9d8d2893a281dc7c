-- Helpers for the socket tests.
local weft = require "weft"

local M = {}

-- A connected TCP pair on 127.0.0.1 (client, accepted side), made inside
-- a weft thread; each step waits at most 5 s.
function M.tcp_pair()
	local l = assert(weft.tcp())
	assert(l:listen("127.0.0.1", 0))
	local a
	weft.thread(function() a = assert(l:accept(weft.clock() + 5)) end)
	local c = assert(weft.tcp())
	assert(c:connect("127.0.0.1", l.local_port, weft.clock() + 5))
	while not a do weft.sleep(0.001) end
	l:close()
	return c, a
end

return M
