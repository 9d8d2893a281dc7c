-- copas.debug: log what the scheduler does, and wrap sockets to log
-- every method call.  For debugging; the output format is not stable.
local M = {}

function M.bind(copas)
	local dbg = {}

	function dbg.start(logger, core)
		logger = logger or print
		copas._debug_log = function(...)
			return logger(...)
		end
		copas._debug_core = core and true or false
		return true
	end

	function dbg.stop()
		copas._debug_log = nil
		return true
	end

	local function trunc(v)
		local s = tostring(v)
		if type(v) == "string" then
			if #s > 160 then s = s:sub(1, 160) .. ("...(%d bytes)"):format(#v) end
			s = ("%q"):format(s)
		end
		return s
	end

	local function list(n, ...)
		local t = {}
		for i = 1, n do t[i] = trunc((select(i, ...))) end
		return table.concat(t, ", ")
	end

	function dbg.socket(skt, logger)
		logger = logger or print
		local name = copas.getsocketname(skt)
		return setmetatable({}, {
			__index = function(_, k)
				local v = skt[k]
				if type(v) ~= "function" then return v end
				return function(self, ...)
					logger(("%s:%s(%s)"):format(name, k, list(select("#", ...), ...)))
					local r = table.pack(v(skt, ...))
					logger(("%s:%s -> %s"):format(name, k, list(r.n, table.unpack(r, 1, r.n))))
					return table.unpack(r, 1, r.n)
				end
			end,
			__tostring = function() return tostring(skt) .. " (debug)" end,
		})
	end

	return dbg
end

return M
