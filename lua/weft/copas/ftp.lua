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

	function ftp.put(u, body)
		if type(u) == "table" then return lsftp.put(with_create(u)) end
		return lsftp.put(with_create({url = u, source = ltn12.source.string(body)}))
	end

	function ftp.get(u)
		if type(u) == "table" then return lsftp.get(with_create(u)) end
		local t = {}
		local r, e = lsftp.get(with_create({url = u, sink = ltn12.sink.table(t)}))
		if not r then return nil, e end
		return table.concat(t)
	end

	function ftp.command(t)
		return lsftp.command(with_create(t))
	end
	return ftp
end

return M
