-- Helpers for the Copas layer tests: run a Copas program to its end with
-- a watchdog, and capture what the default error handler prints.
local tap = require "tap"
local weft = require "weft"

local M = {}

-- Run init as the loop's initializer; fail (and cancel everything) if
-- the loop is still running after `limit` seconds.
function M.run(copas, name, init, limit)
	return tap.test(name, function()
		local timedout = false
		local dog = weft.runafter(limit or 10, function()
			timedout = true
			copas.cancelall()
		end)
		copas.loop(init)
		dog.cancel()
		tap.ok(not timedout, name .. ": the loop ended by itself")
		tap.ok(copas.finished(), name .. ": finished afterwards")
	end)
end

-- A fresh Copas instance (module reloaded).
function M.fresh()
	package.loaded["weft.copas"] = nil
	for k in pairs(package.loaded) do
		if k:match("^weft%.copas%.") then package.loaded[k] = nil end
	end
	return require "weft.copas"
end

-- Replace the global print while f runs; returns what was printed.
function M.capture_print(f)
	local out = {}
	local old = print
	print = function(...)
		local t = {}
		for i = 1, select("#", ...) do t[i] = tostring((select(i, ...))) end
		out[#out + 1] = table.concat(t, "\t")
	end
	local ok, err = pcall(f)
	print = old
	if not ok then error(err, 0) end
	return table.concat(out, "\n")
end

return M
