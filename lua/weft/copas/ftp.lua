-- copas.ftp: LuaSocket's FTP client (socket.ftp) on Copas sockets.
local M = {}

local function missing(what, err)
	return setmetatable({}, {__index = function(_, k)
		error(("copas.%s.%s: LuaSocket's %s module is not installed (%s)"):format(
			what, tostring(k), what == "ftp" and "socket.ftp" or "socket.smtp", tostring(err)), 2)
	end})
end
M.missing = missing

function M.bind(copas)
	local ok, lsftp = pcall(require, "socket.ftp")
	if not ok then return missing("ftp", lsftp) end
	local ltn12 = require "ltn12"
	local ftp = {}
	for k, v in pairs(lsftp) do ftp[k] = v end
	local function create()
		return copas.wrap(copas.socket.tcp())
	end
	local function with_create(t)
		local c = {}
		for k, v in pairs(t) do c[k] = v end
		c.create = c.create or create
		return c
	end

	-- LuaSocket's FTP client makes its data connections with socket.tcp()
	-- itself, not with `create`: while a Copas FTP call runs, socket.tcp
	-- gives that thread (and only it) Copas sockets.
	local socket = require "socket"
	local callers = setmetatable({}, {__mode = "k"})
	local plain_tcp = socket.tcp
	local function tcp(...)
		if callers[coroutine.running()] then return create() end
		return plain_tcp(...)
	end
	local function call(f, ...)
		local co = coroutine.running()
		callers[co] = true
		if socket.tcp == plain_tcp then socket.tcp = tcp end
		local r = table.pack(pcall(f, ...))
		callers[co] = nil
		if not next(callers) and socket.tcp == tcp then socket.tcp = plain_tcp end
		if not r[1] then error(r[2], 0) end
		return table.unpack(r, 2, r.n)
	end

	function ftp.put(u, body)
		if type(u) == "table" then return call(lsftp.put, with_create(u)) end
		return call(lsftp.put, with_create({url = u, source = ltn12.source.string(body)}))
	end

	function ftp.get(u)
		if type(u) == "table" then return call(lsftp.get, with_create(u)) end
		local t = {}
		local r, e = call(lsftp.get, with_create({url = u, sink = ltn12.sink.table(t)}))
		if not r then return nil, e end
		return table.concat(t)
	end

	function ftp.command(t)
		return call(lsftp.command, with_create(t))
	end
	return ftp
end

return M
