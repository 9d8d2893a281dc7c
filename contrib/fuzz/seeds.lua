-- Writes seed inputs for contrib/fuzz/run into the directory given.
local dir = assert(arg[1], "usage: seeds.lua DIR")
local core = require "weft.core"
local function put(sub, name, bytes)
	local f = assert(io.open(("%s/%s/%s"):format(dir, sub, name), "wb"))
	f:write(bytes)
	f:close()
end
local shared = { "s" }
local cyc = {}
cyc.self = cyc
local values = {
	{}, { nil }, { true, false }, { 0, 1, -1, 127, 128, math.maxinteger, math.mininteger },
	{ 0.5, -0.0, 1 / 0, -1 / 0, 0 / 0 }, { "", "short", ("long"):rep(20) },
	{ { 1, 2, 3, x = { y = { z = shared } }, shared, [shared] = cyc } }, { cyc },
	{ { [1.5] = "f", [true] = "b" } },
}
for i, v in ipairs(values) do
	put("serial", "v" .. i, core._pack_data(table.unpack(v, 1, #v)))
end
local addrs = {
	"\0127.0.0.1\0" .. "80\0\0inet", "\1::1\0" .. "53\0passive\0inet6",
	"\0*\0" .. "0\0passive\0", "\2/tmp/sock\0\0\0unix", "\0fe80::1%lo\0" .. "1\0\0",
	"\1" .. "10.0.0.1\0http\0all v4mapped\0",
}
for i, a in ipairs(addrs) do put("addr", "a" .. i, a) end
