-- copas.timer: one-shot and recurring timers, each run by a Copas thread.
local M = {}

function M.bind(copas)
	local running = coroutine.running
	local timer = {}
	timer.__index = timer
	local ntimers = 0

	local function fire(self)
		local eh = self.errorhandler
		local ok, err = xpcall(self.callback, function(e)
			local h = eh or copas.geterrorhandler()
			local ok2, e2 = pcall(h, e, running(), nil)
			if not ok2 then print("error in timer error handler: " .. tostring(e2)) end
			return e
		end, self, self.params)
		return ok, err
	end

	local function run(self, first)
		if self.errorhandler then copas.seterrorhandler(self.errorhandler) end
		copas.pause(first)
		while true do
			if self.cancelled then break end
			if not self.recurring then
				self.cancelled = true
				self.co = nil
				fire(self)
				return
			end
			fire(self)
			if self.cancelled then break end
			copas.pause(self.delay)
		end
		self.co = nil
	end

	function timer:arm(initial_delay)
		if initial_delay ~= nil and (type(initial_delay) ~= "number" or initial_delay < 0) then
			error("delay must be greater than or equal to 0", 2)
		end
		if self.co then return nil, "already armed" end
		self.cancelled = false
		self.co = copas.addnamedthread(self.name, run, self, initial_delay or self.delay)
		return self
	end

	function timer:cancel()
		if not self.co then return nil, "not armed" end
		if self.cancelled then return nil, "already cancelled" end
		self.cancelled = true
		copas.wakeup(self.co)
		self.co = nil
		return self
	end

	function timer.new(opts)
		if type(opts) ~= "table" then error("expected an options table", 2) end
		if type(opts.delay) ~= "number" or opts.delay < 0 then
			error("delay must be greater than or equal to 0", 2)
		end
		if type(opts.callback) ~= "function" then
			error("expected callback to be a function", 2)
		end
		ntimers = ntimers + 1
		local self = setmetatable({
			name = opts.name or ("copas_timer_" .. ntimers),
			delay = opts.delay,
			callback = opts.callback,
			recurring = not not opts.recurring,
			params = opts.params,
			errorhandler = opts.errorhandler,
			cancelled = false,
		}, timer)
		return self:arm(opts.initial_delay)
	end

	return timer
end

return M
