-- copas.queue: a FIFO of items (nil included) with waiting poppers and
-- worker threads.
local M = {}

function M.bind(copas)
	local running, clock = coroutine.running, require("weft").clock
	local huge = math.huge
	local queue = {}
	queue.__index = queue
	local nqueues = 0

	function queue.new(opts)
		opts = opts or {}
		nqueues = nqueues + 1
		local self = setmetatable({
			name = opts.name or ("copas_queue_" .. nqueues),
			items = {}, head = 1, tail = 0,
			poppers = {}, phead = 1, ptail = 0,
			workers = {}, nworkers = 0, busy = 0,
		}, queue)
		return self
	end

	local function wake_popper(self)
		while self.phead <= self.ptail do
			local w = self.poppers[self.phead]
			self.poppers[self.phead] = nil
			self.phead = self.phead + 1
			if not w.done and copas._alive(w.co) then
				w.done = true
				copas.wakeup(w.co)
				return
			end
		end
	end

	local function wake_all(self)
		for i = self.phead, self.ptail do
			local w = self.poppers[i]
			if not w.done then
				w.done = true
				copas.wakeup(w.co)
			end
		end
		self.poppers, self.phead, self.ptail = {}, 1, 0
		if self.finisher then copas.wakeup(self.finisher) end
	end

	function queue:push(item)
		if self.destroyed then return nil, "destroyed" end
		if self.stopping then return nil, "stopping" end
		self.tail = self.tail + 1
		self.items[self.tail] = item
		wake_popper(self)
		return true
	end

	local function check_stop(self)
		if self.stopping and not self.destroyed and self.head > self.tail
			and self.busy == 0 then
			self:destroy()
		end
	end

	function queue:pop(timeout)
		timeout = timeout or 10
		local t0 = clock()
		while true do
			if self.destroyed then return nil, "destroyed" end
			if self.head <= self.tail then
				local item = self.items[self.head]
				self.items[self.head] = nil
				self.head = self.head + 1
				if self.head > self.tail then
					self.head, self.tail = 1, 0
				end
				-- (a worker checks after handling the item)
				if not self.workers[running()] then
					check_stop(self)
				end
				-- another popper may be waiting for the next item
				if self.head <= self.tail then wake_popper(self) end
				return item
			end
			if timeout == 0 then return nil, "timeout" end
			local left = timeout == huge and huge or timeout - (clock() - t0)
			if left <= 0 then return nil, "timeout" end
			local w = {co = running()}
			self.ptail = self.ptail + 1
			self.poppers[self.ptail] = w
			if left == huge then
				copas.pauseforever()
			else
				copas.pause(left)
			end
			w.done = true
		end
	end

	function queue:stop()
		if self.destroyed then return nil, "destroyed" end
		self.stopping = true
		check_stop(self)
		return true
	end

	function queue:destroy()
		if self.destroyed then return nil, "destroyed" end
		self.destroyed = true
		self.items, self.head, self.tail = {}, 1, 0
		wake_all(self)
		return true
	end

	function queue:get_size()
		if self.destroyed then return nil, "destroyed" end
		return self.tail - self.head + 1
	end

	function queue:get_workers()
		if self.destroyed then return nil, "destroyed" end
		local list = {}
		for co in pairs(self.workers) do list[#list + 1] = co end
		return list
	end

	function queue:add_worker(func)
		if self.destroyed then return nil, "destroyed" end
		if type(func) ~= "function" then error("expected worker to be a function", 2) end
		self.nworkers = self.nworkers + 1
		local co
		co = copas.addnamedthread(self.name .. ":worker_" .. self.nworkers, function()
			while true do
				local item, err = self:pop(huge)
				if err == "destroyed" and item == nil and self.destroyed then break end
				self.busy = self.busy + 1
				local ok, e = pcall(func, item)
				self.busy = self.busy - 1
				check_stop(self)
				if not ok then
					self.workers[co] = nil
					error(e, 0)
				end
			end
			self.workers[co] = nil
		end)
		self.workers[co] = true
		return co
	end

	function queue:finish(timeout, no_destroy_on_timeout)
		if self.destroyed then return nil, "destroyed" end
		timeout = timeout or 10
		self:stop()
		local t0 = clock()
		self.finisher = running()
		while not self.destroyed do
			local left = timeout == huge and huge or timeout - (clock() - t0)
			if left <= 0 then
				self.finisher = nil
				if not no_destroy_on_timeout then self:destroy() end
				return nil, "timeout"
			end
			if left == huge then copas.pauseforever() else copas.pause(left) end
		end
		self.finisher = nil
		return true
	end

	return queue
end

return M
