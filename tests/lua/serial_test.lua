-- The serializer (src/lserial.c) through its test hooks in weft.core:
-- _pack(...) -> blob (functions allowed), _pack_data(...) (refused),
-- _unpack(blob) -> ..., _unpack_data(blob); failures return nil, message.
-- The hooks raise if lw_serialize/lw_deserialize leave the stack
-- unbalanced, so every call here also checks that contract.
local tap = require "tap"
local core = require "weft.core"
local ok, is, like, test, is_deeply = tap.ok, tap.is, tap.like, tap.test, tap.is_deeply
local cmp_ok = tap.cmp_ok

local pack, unpack = core._pack, core._unpack

-- Round trip: returns the count and the values.
local function rt(...)
	local blob = assert(pack(...))
	return (function(...) return select("#", ...), ... end)(unpack(blob))
end

local function rt1(v)
	local n, r = rt(v)
	assert(n == 1, "round trip gave " .. n .. " values")
	return r
end

-- The exact bits of a float, to compare NaN and -0.0.
local function bits(x)
	return string.pack("<d", x)
end

local function nested(depth)
	local t = {}
	local inner = t
	for _ = 2, depth do
		inner[1] = {}
		inner = inner[1]
	end
	return t
end

local function depth_of(t)
	local d = 0
	while type(t) == "table" do
		d = d + 1
		t = t[1]
	end
	return d
end

test("format: version byte first, count, compact forms", function()
	local b = pack()
	is(b, "\1\0", "no values: version 1, count 0")
	is(select("#", unpack(b)), 0, "and unpacks to nothing")
	is(#pack(5), 3, "a small integer is one byte")
	is(#pack("abc"), 6, "a short string is a tag and its bytes")
	is(#pack(true, false, nil), 5, "booleans and nil are one byte each")
	is(#pack(1.5), 11, "a float is a tag and 8 bytes")
end)

test("nil, booleans, argument counts", function()
	local n, a, b, c, d = rt(nil, true, false, nil)
	is(n, 4, "four values, trailing nil kept")
	ok(a == nil and b == true and c == false and d == nil, "values")
	is((rt()), 0, "zero values")
	local many = {}
	for i = 1, 200 do many[i] = i % 3 == 0 and i or nil end
	local got = table.pack(unpack(pack(table.unpack(many, 1, 200))))
	is(got.n, 200, "200 values with holes")
	is_deeply(got, (function() many.n = 200 return many end)(), "same values")
end)

test("integers keep their value and subtype", function()
	local ints = { 0, 1, 127, 128, 255, 256, -1, -63, -64, -65, -128, 2 ^ 31 | 0,
		-(2 ^ 31 | 0), 1 << 53, (1 << 53) + 1, math.maxinteger, math.mininteger,
		math.maxinteger - 1, math.mininteger + 1 }
	for _, i in ipairs(ints) do
		local r = rt1(i)
		if not (math.type(r) == "integer" and r == i) then
			tap.fail("integer " .. i, "got " .. tostring(r) .. " " .. tostring(math.type(r)))
		end
	end
	tap.pass(#ints .. " integers round-trip as integers")
	is(math.type(rt1(1)), "integer", "1 stays an integer")
	is(math.type(rt1(1.0)), "float", "1.0 stays a float")
	is(rt1(math.mininteger), math.mininteger, "math.mininteger exact")
	is(rt1(math.maxinteger), math.maxinteger, "math.maxinteger exact")
end)

test("floats are bit-exact", function()
	local floats = { 0.0, -0.0, 1.0, -1.0, 0.5, 1 / 3, math.pi, 1e308, -1e308, 5e-324,
		2.2250738585072014e-308, math.huge, -math.huge, 2.0 ^ 63, -2.0 ^ 63, 0 / 0, -(0 / 0),
		(string.unpack("<d", "\1\0\0\0\0\0\248\127")) } -- a NaN with a payload
	local bad = 0
	for _, f in ipairs(floats) do
		local r = rt1(f)
		if math.type(r) ~= "float" or bits(r) ~= bits(f) then
			bad = bad + 1
			tap.diag("float " .. tostring(f) .. " came back as " .. tostring(r))
		end
	end
	is(bad, 0, #floats .. " floats round-trip bit for bit")
	local nz = rt1(-0.0)
	is(1 / nz, -math.huge, "-0.0 keeps its sign")
	local nan = rt1(0 / 0)
	ok(nan ~= nan, "NaN stays NaN")
	is(rt1(math.huge), math.huge, "inf")
	is(rt1(-math.huge), -math.huge, "-inf")
end)

test("strings: any bytes, any length", function()
	local all = {}
	for i = 0, 255 do all[#all + 1] = string.char(i) end
	all = table.concat(all)
	local cases = { "", "a", ("x"):rep(31), ("y"):rep(32), ("z"):rep(127), ("w"):rep(128),
		("v"):rep(16384), "\0", "a\0b\0", all, all:rep(100) }
	for _, s in ipairs(cases) do
		local r = rt1(s)
		if r ~= s then tap.fail("string of " .. #s .. " bytes") end
	end
	tap.pass(#cases .. " strings round-trip")
	local big = ("0123456789abcdef\0"):rep(10 * 1024 * 1024 // 17 + 1)
	local blob = pack(big, "tail")
	cmp_ok(#blob, "<", #big + 32, "a 10 MB string costs a few bytes of overhead")
	local r, tail = unpack(blob)
	ok(r == big, "10 MB string with zeros round-trips")
	is(tail, "tail", "the value after it too")
end)

test("tables: arrays, hashes, mixed keys, nesting", function()
	local t = {
		1, 2, "three", 4.0, true,
		name = "weft", [0] = "zero", [-1] = "minus", [1.5] = "float key",
		[true] = "yes", [false] = "no", [100] = "far",
		nested = { deep = { deeper = { "x", { "y" } } } },
		empty = {},
		[math.mininteger] = "min", [math.maxinteger] = "max", [2 ^ 60] = "float 2^60",
	}
	local r = rt1(t)
	is_deeply(r, t, "mixed table")
	is(math.type(r[4]), "float", "array float keeps its subtype")
	is(r[2 ^ 60], "float 2^60", "float key that is an integer value")
	local holes = { 1, nil, 3, nil, nil, 6, n = 6 }
	is_deeply(rt1(holes), holes, "array with holes")
	local arr = {}
	for i = 1, 100000 do arr[i] = i * 2 end
	local ra = rt1(arr)
	is(#ra, 100000, "100000-element array")
	is(ra[100000], 200000, "last element")
	local tk = {}
	local keyed = { [tk] = "table key" }
	local rk = rt1(keyed)
	local k, v = next(rk)
	is(type(k), "table", "table as a key")
	is(v, "table key", "its value")
	local strkeys = { ["1"] = "string one", [1] = "int one" }
	is_deeply(rt1(strkeys), strkeys, "string key \"1\" and integer key 1 stay apart")
	is_deeply(rt1({ {}, { {} }, { { {} } } }), { {}, { {} }, { { {} } } }, "empty tables")
end)

test("nesting limit: 100 levels pass, 101 do not", function()
	local r = rt1(nested(100))
	is(depth_of(r), 100, "100 nested tables round-trip")
	local blob, err = pack(nested(101))
	is(blob, nil, "101 nested tables refused")
	is(err, "nesting too deep (more than 100 levels)", "message")
	local b2, e2 = pack(1, { a = nested(101) })
	ok(b2 == nil and e2 == "nesting too deep (more than 100 levels)", "also below a key")
	local deepkey = {}
	deepkey[nested(100)] = 1
	ok(pack(deepkey) == nil, "a key counts as a level too")
end)

test("sharing is preserved, cycles work", function()
	local shared = { "shared" }
	local t = { a = shared, b = shared, list = { shared, shared } }
	local r = rt1(t)
	ok(r.a == r.b, "a subtable reached twice is one table")
	ok(r.list[1] == r.a and r.list[2] == r.a, "everywhere")
	is(r.a[1], "shared", "with its contents")
	local x, y = select(2, rt(shared, shared))
	ok(x == y, "the same table as two values is one table")
	local cyc = { name = "loop" }
	cyc.self = cyc
	local rc = rt1(cyc)
	ok(rc.self == rc, "a table containing itself")
	local a, b = {}, {}
	a.next, b.next = b, a
	local ra = rt1(a)
	ok(ra.next.next == ra, "a two-table cycle")
	local ring = {}
	ring[ring] = ring
	local rr = rt1(ring)
	ok(rr[rr] == rr, "a table keyed by itself")
	local size1 = #pack({ shared, shared, shared })
	local size2 = #pack({ shared })
	cmp_ok(size1 - size2, "<=", 6, "a repeated table is written once (references are short)")
	local o1, o2 = unpack(pack(shared)), unpack(pack(shared))
	ok(o1 ~= o2, "sharing is per call: two calls give two tables")
end)

test("functions: _ENV only, rebound to the loading state's globals", function()
	local blob = assert(pack(function(a, b) return a + b end))
	local f = unpack(blob)
	is(type(f), "function", "a function without upvalues")
	is(f(2, 3), 5, "runs")
	local g = unpack(pack(function(x) return string.format("%s=%d", x, SERIAL_TEST_GLOBAL) end))
	SERIAL_TEST_GLOBAL = 42
	is(g("v"), "v=42", "sees the globals")
	SERIAL_TEST_GLOBAL = nil
	local fact = unpack(pack(function(n)
		local function go(k) if k <= 1 then return 1 end return k * go(k - 1) end
		return go(n)
	end))
	is(fact(10), 3628800, "inner closures are built at run time")
	local h = function() return 1 end
	local t = rt1({ h, h, k = h })
	ok(type(t[1]) == "function" and t[1] == t[2] and t.k == t[1], "a function passed twice is one")
	local thrower = unpack(pack(function() error("boom") end))
	local _, msg = pcall(thrower)
	like(msg, "serial_test%.lua:%d+: boom", "debug info is kept (not stripped)")
	local again = unpack(pack(unpack(pack(function() return SERIAL_TEST_OTHER end))))
	SERIAL_TEST_OTHER = "twice"
	is(again(), "twice", "a received function can be passed on")
	SERIAL_TEST_OTHER = nil
end)

test("functions: the loading state's globals, in another process", function()
	local bin = os.getenv("WEFT_BIN")
	if not bin then
		tap.skip("WEFT_BIN not set (run under make check)", 1)
		return
	end
	SERIAL_TEST_WHO = "the packing state"
	local blob = assert(pack(function(x) return x .. " from " .. SERIAL_TEST_WHO end))
	SERIAL_TEST_WHO = nil
	local bf = os.tmpname()
	local f = assert(io.open(bf, "wb"))
	f:write(blob)
	f:close()
	local sf = os.tmpname()
	f = assert(io.open(sf, "wb"))
	f:write(([[
		local core = require "weft.core"
		local f = assert(io.open(%q, "rb"))
		local blob = f:read("a")
		f:close()
		SERIAL_TEST_WHO = "the loading state"
		local fn = assert(core._unpack(blob))
		io.write(fn("hello"))
	]]):format(bf))
	f:close()
	local p = io.popen(("%s -m %s 2>&1"):format(bin, sf))
	local out = p:read("a")
	p:close()
	os.remove(bf)
	os.remove(sf)
	is(out, "hello from the loading state", "the function runs with the new state's globals")
end)

test("functions refused", function()
	local up = 5
	local b, e = pack(function() return up end)
	is(b, nil, "a function with an upvalue")
	is(e, "cannot pass a function with upvalues to another worker", "message")
	b, e = pack(function() return up + X end)
	is(e, "cannot pass a function with upvalues to another worker", "_ENV and another upvalue")
	local function rec(n) if n > 0 then return rec(n - 1) end end
	b, e = pack(rec)
	is(e, "cannot pass a function with upvalues to another worker", "a recursive local function")
	b, e = pack(print)
	is(b, nil, "a C function")
	is(e, "cannot pass a C function to another worker", "message")
	b, e = pack({ f = string.format })
	is(e, "cannot pass a C function to another worker", "inside a table")
	b, e = core._pack_data(function() end)
	is(b, nil, "without LW_SER_FUNCTIONS")
	is(e, "cannot pass a function to another worker", "message")
	local sandboxed = load("return function() return x end", "=sandbox", "t", { x = 1 })()
	b, e = pack(sandboxed)
	is(b, nil, "a function under another _ENV")
	like(e, "^cannot pass a function whose _ENV is not the global table", "message")
	local stripped = load(string.dump(function() return print end, true))
	b, e = pack(stripped)
	is(e, "cannot pass a function with upvalues to another worker",
		"a stripped function (its upvalue cannot be known to be _ENV)")
	local blob = assert(pack(function() end))
	b, e = core._unpack_data(blob)
	is(b, nil, "unpacking a function without the flag")
	like(e, "function", "message names functions")
end)

test("other values refused", function()
	local cases = {
		{ io.stdout, "cannot pass a userdata to another worker", "a userdata" },
		{ coroutine.create(print), "cannot pass a thread to another worker", "a coroutine" },
		{ setmetatable({}, {}), "cannot pass a table with a metatable to another worker",
			"a table with a metatable" },
		{ { { { setmetatable({}, { __index = {} }) } } },
			"cannot pass a table with a metatable to another worker", "deep inside" },
		{ { [io.stdout] = 1 }, "cannot pass a userdata to another worker", "as a key" },
		{ core.buffer and core.buffer(4) or io.stderr, "cannot pass a userdata to another worker",
			"a userdata of an unregistered weft type" },
	}
	for _, c in ipairs(cases) do
		local n = select("#", pack(1, "x", c[1], 3))
		local b, e = pack(1, "x", c[1], 3)
		is(n, 2, c[3] .. ": nil, message")
		is(b, nil, c[3] .. ": no blob")
		is(e, c[2], c[3] .. ": message")
	end
	local ok2, e2 = pcall(pack, coroutine.create(print))
	ok(ok2 and e2 == nil, "pack never raises")
end)

test("handles: registered userdata types", function()
	local h = core._handle(3, -4)
	local r = rt1(h)
	is(getmetatable(r), getmetatable(h), "the same type comes back")
	ok(r ~= h, "a new object (the state rebuilds it)")
	local a, b = r:get()
	ok(a == 3 and b == -4, "payload")
	local big = core._handle(math.mininteger, math.maxinteger)
	local ba, bb = rt1(big):get()
	ok(ba == math.mininteger and bb == math.maxinteger, "16 bytes of payload exact")
	local t = rt1({ h, h, { h } })
	ok(t[1] == t[2] and t[3][1] == t[1], "a handle passed twice is one object")
	local bl, e = pack(core._handle(-1, 0))
	is(bl, nil, "pack refusal")
	is(e, "the test handle refuses to be packed", "pack's message")
	local blob = assert(pack({ core._handle(-2, 0) }))
	bl, e = unpack(blob)
	is(bl, nil, "unpack refusal")
	is(e, "the test handle refuses to be unpacked", "unpack's message")
	local fake = core._handle(1, 2)
	debug.setmetatable(fake, { __name = "weft._test_handle" })
	bl, e = pack(fake)
	is(e, "cannot pass a userdata to another worker", "a look-alike metatable is not the type")
end)

test("out of memory", function()
	local value = { ("s"):rep(5000), { 1, 2, 3 }, f = function() return 1 end, h = core._handle(1, 2) }
	local seen_oom, bad = 0, 0
	for k = 1, 12 do
		core._alloc_fail_after(k)
		local b, e = pack(value)
		core._alloc_fail_after(0)
		if b == nil then
			if e == "out of memory" then seen_oom = seen_oom + 1 else bad = bad + 1 end
		else
			local r = unpack(b)
			if not (r and r[1] == value[1] and r.f() == 1) then bad = bad + 1 end
		end
	end
	cmp_ok(seen_oom, ">=", 1, "a failed allocation gives \"out of memory\"")
	is(bad, 0, "every other outcome is a correct blob")
	ok(pack(value), "allocation works again afterwards")
end)

-- A blob with every kind of value, for the corruption tests.
local function sample_blob()
	local shared = { "s" }
	local cyc = {}
	cyc.me = cyc
	return assert(pack(nil, true, false, 0, 127, 128, -1, math.mininteger, math.maxinteger,
		1.5, -0.0, 0 / 0, math.huge, "", "short", ("long"):rep(20),
		{ 1, 2, 3, x = { y = { z = shared } }, shared, [shared] = cyc, cyc = cyc },
		function(a) return a end, core._handle(7, 8), shared))
end

test("truncated input is an error at every length", function()
	local blob = sample_blob()
	local n = select("#", unpack(blob))
	is(n, 20, "the sample round-trips")
	local bad = {}
	for len = 0, #blob - 1 do
		local okc, r, e = pcall(unpack, blob:sub(1, len))
		if not okc or r ~= nil or type(e) ~= "string" then
			bad[#bad + 1] = len .. ": " .. tostring(r) .. " " .. tostring(e)
		end
	end
	is(#bad, 0, "every one of " .. #blob .. " prefixes gives nil, message", table.concat(bad, "\n"))
	local okc, r, e = pcall(unpack, blob .. "\0")
	ok(okc and r == nil, "a trailing byte is an error too")
	like(e, "trailing", "message")
end)

test("flipped bytes never crash", function()
	local blob = sample_blob()
	local raised, errors, values = 0, 0, 0
	for i = 1, #blob do
		for _, mask in ipairs({ 0x01, 0x10, 0x80, 0xff }) do
			local c = string.char(blob:byte(i) ~ mask)
			local bad = blob:sub(1, i - 1) .. c .. blob:sub(i + 1)
			local okc, cnt, first, msg = pcall(function()
				return (function(...) return select("#", ...), ... end)(unpack(bad))
			end)
			if not okc then
				raised = raised + 1
			elseif cnt == 2 and first == nil and type(msg) == "string" then
				errors = errors + 1
			else
				values = values + 1
			end
			okc = pcall(core._unpack_data, bad)
			if not okc then raised = raised + 1 end
		end
	end
	is(raised, 0, "no flip makes unpack raise")
	tap.diag(("%d flips: %d errors, %d decoded to other values"):format(#blob * 4, errors, values))
	cmp_ok(errors, ">", 0, "flips are noticed")
end)

test("garbage and crafted input", function()
	local function err(s, pattern, name)
		local n = select("#", unpack(s))
		local r, e = unpack(s)
		if n == 2 and r == nil then
			like(e, pattern, name)
		else
			tap.fail(name, "decoded to " .. n .. " values")
		end
	end
	err("", "truncated", "empty input")
	err("\2\0", "unknown version 2", "unknown version")
	err("\0\0", "unknown version 0", "version 0")
	err("\1\1", "bad value count", "a value missing")
	err("\1\2\0\36ab", "truncated", "a short string cut short")
	err("\1\5", "bad value count", "count larger than the input")
	err("\1\1\10", "unknown tag", "unknown tag")
	err("\1\1\5\255\255\255\255\255\255\255\255\255\1", "truncated", "string length 2^64-1")
	err("\1\1\5\255\255\255\255\255\255\255\255\255\2", "bad varint", "varint overflow")
	err("\1\1\5\255\255\255\255\255\255\255\255\255\255\1", "bad varint", "11-byte varint")
	err("\1\1\6\255\255\255\255\7\0", "bad table size", "huge array count")
	err("\1\1\6\0\255\255\255\255\7", "bad table size", "huge hash count")
	err("\1\1\6\0\1\0\1", "nil table key", "nil key")
	err("\1\1\6\0\1\4" .. string.pack("<d", 0 / 0) .. "\1", "NaN table key", "NaN key")
	err("\1\1\7\1", "bad reference", "reference before any object")
	err("\1\1\6\0\1\33a\7\2", "bad reference", "reference to a later object")
	err("\1\1\7\0", "bad reference", "reference 0")
	err("\1\1\9\0", "bad handle name", "empty handle name")
	err("\1\1\9\3abc" .. ("\0"):rep(16), "unknown handle type", "unknown handle type")
	err("\1\1\9\17weft._test_handle" .. ("\0"):rep(15), "truncated", "short handle payload")
	err("\1\1\8" .. string.pack("<I4I8", 3, 0) .. "abc", "checksum", "function checksum")
	err("\1\1\8" .. string.pack("<I4I8", 0xffffffff, 0), "truncated", "function length")
	-- With the right checksum, lua_load gets to see what is not bytecode.
	local function fnv1a(str)
		local h = 0xcbf29ce484222325 -- hex literals wrap: the same 64 bits
		for i = 1, #str do h = (h ~ str:byte(i)) * 0x100000001b3 end
		return h
	end
	err("\1\1\8" .. string.pack("<I4i8", 3, fnv1a("abc")) .. "abc", "corrupt",
		"text instead of bytecode")
	local good = pack(function() return 1 end)
	local code = good:sub(3 + 12 + 1)
	local cut = code:sub(1, #code // 2)
	err("\1\1\8" .. string.pack("<I4i8", #cut, fnv1a(cut)) .. cut, "corrupt",
		"truncated bytecode with a matching checksum")
	ok(unpack("\1\1\8" .. string.pack("<I4i8", #code, fnv1a(code)) .. code)() == 1,
		"and the whole bytecode, re-framed by hand, loads (the frame is as documented)")
	local deep = "\1\1" .. ("\6\1\0"):rep(101) .. "\0"
	err(deep, "nesting too deep", "101 nested tables in the input")
	local ok100 = "\1\1" .. ("\6\1\0"):rep(100) .. "\0"
	local r = unpack(ok100)
	is(depth_of(r), 100, "100 nested tables in the input are fine")
	err("\1\1" .. ("\6\1\0"):rep(100000), "nesting too deep", "100000 nested tables")
	-- Random bytes behind a valid header, from a fixed seed.
	local seed = 12345
	local function rnd()
		seed = (seed * 1103515245 + 12345) % 2147483648
		return seed >> 16
	end
	local raised = 0
	for _ = 1, 3000 do
		local t = { "\1", string.char(rnd() % 4) }
		for _ = 1, rnd() % 40 do t[#t + 1] = string.char(rnd() % 256) end
		if not pcall(unpack, table.concat(t)) then raised = raised + 1 end
	end
	is(raised, 0, "3000 random inputs never raise")
end)

test("unpack checks its argument", function()
	ok(not pcall(unpack, {}), "a table is a programmer error (raises)")
	ok(not pcall(unpack), "no argument raises")
end)

tap.done()
