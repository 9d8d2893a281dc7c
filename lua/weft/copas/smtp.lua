-- copas.smtp: LuaSocket's SMTP client (socket.smtp) on Copas sockets.
local M = {}

function M.bind(copas)
	local ok, lssmtp = pcall(require, "socket.smtp")
	if not ok then return require("weft.copas.ftp").missing("smtp", lssmtp) end
	local smtp = {}
	for k, v in pairs(lssmtp) do smtp[k] = v end
	function smtp.send(msgt)
		local c = {}
		for k, v in pairs(msgt) do c[k] = v end
		c.create = c.create or function()
			return copas.wrap(copas.socket.tcp())
		end
		return lssmtp.send(c)
	end
	smtp.message = lssmtp.message
	return smtp
end

return M
