-- copas.future: threads whose results can be waited for.
local M = {}

function M.bind(copas)
	local pack, unpack = table.pack, table.unpack
	local running = coroutine.running
	local F = {}
	local future_mt = {__index = F}
	future_mt.__call = function(self) return self:get() end

	local function settle(f, res)
		if f.results then return end
		f.results = res
		local w = f.waiters
		f.waiters = {}
		for i = 1, #w do copas.wakeup(w[i]) end
	end

	function F:get()
		while not self.results do
			self.waiters[#self.waiters + 1] = running()
			copas.pauseforever()
		end
		return unpack(self.results, 1, self.results.n)
	end

	function F:try()
		local r = self.results
		if not r then return false end
		if r[1] then return true, unpack(r, 2, r.n) end
		return "error", r[2]
	end

	function F:cancel()
		if self.results then return false end
		settle(self, pack(false, "cancelled"))
		copas.removethread(self.co)
		return true
	end

	local mod = {SUCCESS = true, PENDING = false, ERROR = "error"}

	function mod.addnamedthread(name, func, ...)
		local f = setmetatable({waiters = {}}, future_mt)
		f.co = copas.addnamedthread(name, function(...)
			local res = pack(pcall(func, ...))
			settle(f, res)
		end, ...)
		return f
	end

	function mod.addthread(func, ...)
		return mod.addnamedthread(nil, func, ...)
	end

	return setmetatable(mod, {__index = function(_, k)
		error("unknown field 'future." .. tostring(k) .. "'", 2)
	end})
end

return M
