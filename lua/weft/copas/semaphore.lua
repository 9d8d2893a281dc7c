-- copas.semaphore: counted resources, strictly FIFO.
local M = {}

function M.bind(copas)
	local running, clock = coroutine.running, require("weft").clock
	local huge = math.huge
	local sema = {}
	sema.__index = sema

	function sema.new(max, start, timeout)
		start = start or 0
		timeout = timeout or 10
		if type(max) ~= "number" or max < 1 then
			error("expected max resources to be a number > 0", 2)
		end
		if type(start) ~= "number" or start < 0 or start > max then
			error("expected start to be a number from 0 to max", 2)
		end
		if type(timeout) ~= "number" or timeout < 0 then
			error("expected timeout to be a number >= 0", 2)
		end
		return setmetatable({max = max, count = start, timeout = timeout,
			q = {}, head = 1, tail = 0}, sema)
	end

	-- Serve waiters in order while the first one can be served.
	local function serve(self)
		if self.destroyed then return end
		while self.head <= self.tail do
			local w = self.q[self.head]
			if w.done or not copas._alive(w.co) then
				self.q[self.head] = nil
				self.head = self.head + 1
			elseif w.n <= self.count then
				self.count = self.count - w.n
				self.q[self.head] = nil
				self.head = self.head + 1
				w.done, w.granted = true, true
				copas.wakeup(w.co)
			else
				break
			end
		end
	end

	function sema:take(n, timeout)
		if self.destroyed then return nil, "destroyed" end
		n = n or 1
		timeout = timeout or self.timeout
		if n > self.max then return nil, "too many" end
		if self.head > self.tail and n <= self.count then
			self.count = self.count - n
			return true
		end
		if timeout == 0 then return nil, "timeout" end
		local w = {co = running(), n = n}
		self.tail = self.tail + 1
		self.q[self.tail] = w
		local t0 = clock()
		if timeout == huge then
			while not w.done do copas.pauseforever() end
		else
			local left = timeout
			while not w.done and left > 0 do
				copas.pause(left)
				left = timeout - (clock() - t0)
			end
		end
		if self.destroyed then return nil, "destroyed" end
		if w.granted then return true end
		w.done = true
		serve(self) -- a big request leaving may unblock smaller ones behind it
		return nil, w.err or "timeout"
	end

	function sema:give(n)
		if self.destroyed then return nil, "destroyed" end
		n = n or 1
		local err
		self.count = self.count + n
		if self.count > self.max then
			self.count = self.max
			err = "too many"
		end
		serve(self)
		if err then return nil, err end
		return true
	end

	function sema:get_count()
		if self.destroyed then return nil, "destroyed" end
		return self.count
	end

	function sema:get_wait()
		if self.destroyed then return nil, "destroyed" end
		local want = 0
		for i = self.head, self.tail do
			local w = self.q[i]
			if not w.done then want = want + w.n end
		end
		return want - self.count
	end

	function sema:destroy()
		if self.destroyed then return nil, "destroyed" end
		self.destroyed = true
		for i = self.head, self.tail do
			local w = self.q[i]
			if not w.done then
				w.done, w.err = true, "destroyed"
				copas.wakeup(w.co)
			end
		end
		self.q, self.head, self.tail = {}, 1, 0
		return true
	end

	return sema
end

return M
