-- copas.lock: a (by default re-entrant) lock with a FIFO of waiters.
-- Loaded through the Copas module (copas.lock.new): bind() gives the
-- functions of one Copas instance.
local M = {}

function M.bind(copas)
	local running, clock = coroutine.running, require("weft").clock
	local huge = math.huge
	local lock = {}
	lock.__index = lock

	function lock.new(timeout, not_reentrant)
		timeout = timeout or 10
		if type(timeout) ~= "number" or timeout < 0 then
			error("expected timeout (number >= 0), got " .. tostring(timeout), 2)
		end
		return setmetatable({timeout = timeout, reentrant = not not_reentrant,
			waiting = {}, head = 1, tail = 0, count = 0}, lock)
	end

	function lock:get(timeout)
		if self.destroyed then return nil, "destroyed", 0 end
		local co = running()
		timeout = timeout or self.timeout
		if not self.owner then
			self.owner, self.count = co, 1
			return 0
		end
		if self.owner == co and self.reentrant then
			self.count = self.count + 1
			return 0
		end
		if timeout == 0 then return nil, "timeout", 0 end
		local t0 = clock()
		local w = {co = co}
		self.tail = self.tail + 1
		self.waiting[self.tail] = w
		if timeout == huge then
			while not w.done do copas.pauseforever() end
		else
			local left = timeout
			while not w.done and left > 0 do
				copas.pause(left)
				left = timeout - (clock() - t0)
			end
		end
		local waited = clock() - t0
		-- destroyed after the hand-off but before this thread ran: the
		-- lock is gone all the same
		if self.destroyed then return nil, "destroyed", waited end
		if w.granted then return waited end
		w.done = true -- withdrawn: skipped at hand-off
		if w.err then return nil, w.err, waited end
		return nil, "timeout", waited
	end

	function lock:release()
		if self.destroyed then return nil, "destroyed" end
		if self.owner ~= running() then return nil, "cannot release a lock not owned" end
		self.count = self.count - 1
		if self.count > 0 then return true end
		self.owner = nil
		while self.head <= self.tail do
			local w = self.waiting[self.head]
			self.waiting[self.head] = nil
			self.head = self.head + 1
			if not w.done and copas._alive(w.co) then
				w.done, w.granted = true, true
				self.owner, self.count = w.co, 1
				copas.wakeup(w.co)
				break
			end
		end
		return true
	end

	function lock:destroy()
		if self.destroyed then return nil, "destroyed" end
		self.destroyed = true
		for i = self.head, self.tail do
			local w = self.waiting[i]
			if not w.done then
				w.done, w.err = true, "destroyed"
				copas.wakeup(w.co)
			end
		end
		self.waiting = {}
		return true
	end

	return lock
end

return M
