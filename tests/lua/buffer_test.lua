-- weft.buffer: byte buffers and views.
local tap = require "tap"
local weft = require "weft"
local ok, is, like, test = tap.ok, tap.is, tap.like, tap.test

local function raises(f, ...)
	return not pcall(f, ...)
end

test("buffer(size) is zero-filled", function()
	local b = weft.buffer(10)
	is(#b, 10, "#buf")
	is(b:tostring(), ("\0"):rep(10), "all zero")
	is(b[1], 0, "b[1]")
	is(b[10], 0, "b[10]")
	local e = weft.buffer(0)
	is(#e, 0, "empty buffer length")
	is(e:tostring(), "", "empty buffer tostring")
	local big = weft.buffer(1 << 20)
	is(#big, 1 << 20, "1 MiB buffer")
	is(big[1 << 20], 0, "last byte of a big buffer")
end)

test("buffer(string) copies the string", function()
	local b = weft.buffer("hello")
	is(#b, 5, "#buf")
	is(b:tostring(), "hello", "tostring")
	is(b[1], 104, "b[1] is 'h'")
	is(b[5], 111, "b[5] is 'o'")
	local bin = "\0\1\255a\0"
	is(weft.buffer(bin):tostring(), bin, "binary data with NULs")
end)

test("byte access", function()
	local b = weft.buffer("hello")
	is(b[0], nil, "b[0] is nil")
	is(b[6], nil, "b[6] is nil")
	is(b[-1], nil, "b[-1] is nil")
	b[1] = 72
	is(b:tostring(), "Hello", "write b[1]")
	b[5] = 255
	is(b[5], 255, "write 255")
	b[5] = 0
	is(b[5], 0, "write 0")
	ok(raises(function() b[6] = 1 end), "write past the end raises")
	ok(raises(function() b[0] = 1 end), "write at 0 raises")
	is(b:tostring(), "Hell\0", "failed writes changed nothing")
end)

test("tostring(i, j) is like string.sub", function()
	local s = "abcdefghij"
	local b = weft.buffer(s)
	local cases = {
		{ 1 }, { 3 }, { 2, 4 }, { -3 }, { -3, -2 }, { 4, 2 }, { 0 }, { 1, 100 },
		{ 10, 10 }, { 11 }, { -100, 2 }, { 5, -1 },
	}
	for _, c in ipairs(cases) do
		is(b:tostring(c[1], c[2]), s:sub(c[1], c[2]),
			("tostring(%s, %s)"):format(tostring(c[1]), tostring(c[2])))
	end
end)

test("set", function()
	local b = weft.buffer("hello")
	b:set(2, "XY")
	is(b:tostring(), "hXYlo", "set in the middle")
	b:set(4, "ZW")
	is(b:tostring(), "hXYZW", "set up to the end")
	b:set(1, "")
	is(b:tostring(), "hXYZW", "set of an empty string")
	ok(raises(b.set, b, 5, "ab"), "set that does not fit raises")
	ok(raises(b.set, b, 0, "a"), "set at 0 raises")
	is(b:tostring(), "hXYZW", "failed set changed nothing")
end)

test("views share bytes", function()
	local b = weft.buffer("0123456789")
	local v = b:view(3, 4)
	is(#v, 4, "#view")
	is(v:tostring(), "2345", "view contents")
	v[1] = string.byte("a")
	is(b:tostring(), "01a3456789", "write through a view shows in the buffer")
	b[6] = string.byte("b")
	is(v:tostring(), "a34b", "write to the buffer shows in the view")
	v:set(2, "XY")
	is(b:tostring(), "01aXYb6789", "set on a view")
	is(v[5], nil, "read past a view's end is nil")
	ok(raises(function() v[5] = 1 end), "write past a view's end raises")
	local tail = b:view(8)
	is(#tail, 3, "view without len reaches the end")
	is(tail:tostring(), "789", "tail view contents")
	local vv = v:view(2, 2)
	is(vv:tostring(), "XY", "view of a view")
	vv[2] = string.byte("!")
	is(b:tostring(), "01aX!b6789", "write through a view of a view")
	ok(raises(b.view, b, 0, 2), "view at 0 raises")
	ok(raises(b.view, b, 9, 5), "view past the end raises")
	ok(raises(b.view, b, 12), "view starting past the end raises")
end)

test("a view keeps its buffer alive", function()
	local v
	do
		local b = weft.buffer("keepalive")
		v = b:view(5, 5)
	end
	collectgarbage()
	collectgarbage()
	is(v:tostring(), "alive", "view still readable after the buffer is collected")
end)

test("resize", function()
	local b = weft.buffer("abc")
	b:resize(6)
	is(#b, 6, "grown length")
	is(b:tostring(), "abc\0\0\0", "grow keeps bytes, new bytes are zero")
	b:set(4, "def")
	b:resize(2)
	is(#b, 2, "shrunk length")
	is(b:tostring(), "ab", "shrink keeps the head")
	b:resize(4)
	is(b:tostring(), "ab\0\0", "grow after shrink gives zeros")
	b:resize(0)
	is(#b, 0, "resize to 0")
	b:resize(1 << 20)
	is(#b, 1 << 20, "resize to 1 MiB")
	is(b[1 << 20], 0, "new big tail is zero")
	local v = weft.buffer("xyz"):view(1, 2)
	ok(raises(v.resize, v, 5), "resizing a view raises")
end)

test("bad arguments raise", function()
	ok(raises(weft.buffer, -1), "negative size raises")
	ok(raises(weft.buffer, {}), "table raises")
	ok(raises(weft.buffer, 1.5), "non-integer size raises")
	local b = weft.buffer(4)
	ok(raises(b.tostring, b, "x"), "tostring with a non-number raises")
	ok(raises(b.set, b, 1, {}), "set with a table raises")
end)

-- The message of the error f(...) raises ("" when it does not raise).
local function err(f, ...)
	local good, e = pcall(f, ...)
	return good and "" or tostring(e)
end

-- buf:find(s, i, j) is string.find(buf:tostring(1, j), s, i, true), with
-- a negative i counted from the end of the whole buffer.
local function model_find(str, s, i, j)
	local len = #str
	i = i or 1
	if i < 0 then i = math.max(len + i + 1, 1) elseif i == 0 then i = 1 end
	return str:sub(1, j or -1):find(s, i, true)
end

test("find: plain search like string.find", function()
	local b = weft.buffer("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /stats HTTP/1.1\r\n\r\n")
	is(select(2, b:find("\r\n\r\n")), 27, "end of the first head")
	local s, e = b:find("\r\n\r\n", 28)
	is(s, 47, "start of the second head's end")
	is(e, #b, "a match at the very end")
	is(b:find("GET /stats ", 28, 38), 28, "a match that exactly fills i..j")
	is(b:find("GET /stats ", 28, 37), nil, "a match one byte past j is not found")
	is(b:find("GET /stats ", 1, 11), nil, "nothing in i..j")
	is(b:find("GET"), 1, "a match at the very start")
	is(b:find("G", 2), 28, "a one-byte needle")
	is(b:find("."), 13, "no magic characters: '.' is a dot")
	is(b:find("%a"), nil, "no magic characters: '%a' is not a class")
	is(b:find("absent"), nil, "not found is nil")
	local s2, e2 = b:find("x")
	is(s2, 23, "start of a one-byte match")
	is(e2, 23, "end of a one-byte match is its start")
	local nul = weft.buffer("a\0b\0\0c")
	is(nul:find("\0\0"), 4, "NUL bytes in needle and buffer")
	is(weft.buffer("aaab"):find("aab"), 2, "a candidate that fails, then overlaps the match")
end)

test("find: empty needle, long needle, edges", function()
	local b = weft.buffer("abc")
	local s, e = b:find("")
	is(s, 1, "empty needle at 1")
	is(e, 0, "empty needle ends before it starts")
	s, e = b:find("", 4)
	is(s, 4, "empty needle at #buf + 1")
	is(e, 3, "empty needle at #buf + 1 ends at #buf")
	is(b:find("", 5), nil, "empty needle past #buf + 1 is nil")
	is(b:find("", 3, 1), nil, "empty needle with i > j + 1 is nil")
	is(b:find("", 2, 1), 2, "empty needle with i = j + 1")
	is(b:find("abcd"), nil, "needle longer than the buffer")
	is(b:find("abc", 2), nil, "needle longer than the range")
	is(b:find("abc", 1, 2), nil, "needle longer than i..j")
	is(b:find("abc"), 1, "needle as long as the buffer")
	is(b:find("c", -1), 3, "negative init counts from the end")
	is(b:find("a", -100), 1, "init before the start is 1")
	is(b:find("a", 0), 1, "init 0 is 1")
	is(b:find("c", 1, -2), nil, "negative j counts from the end")
	is(b:find("b", 1, -2), 2, "found before a negative j")
	is(b:find("c", 1, 100), 3, "j past the end is #buf")
	is(b:find("a", 1, -100), nil, "j before the start is 0")
	is(b:find("a", math.maxinteger), nil, "huge init")
	is(b:find("a", math.mininteger), 1, "most negative init")
	is(b:find("a", 1, math.mininteger), nil, "most negative j")
	local empty = weft.buffer(0)
	is(empty:find(""), 1, "empty needle in an empty buffer")
	is(empty:find("a"), nil, "needle in an empty buffer")
	is(empty:find("", 2), nil, "empty needle past an empty buffer")
end)

test("find agrees with string.find on every range", function()
	local str = "abaabaaabab\r\n\r\nab"
	local b = weft.buffer(str)
	local needles = { "", "a", "b", "ab", "aab", "aaab", "ba", "\r\n\r\n", "\n", str, str .. "x", "z" }
	local bad = 0
	for _, n in ipairs(needles) do
		for i = -#str - 2, #str + 2 do
			for j = -#str - 2, #str + 2 do
				local s1, e1 = b:find(n, i, j)
				local s2, e2 = model_find(str, n, i, j)
				if s1 ~= s2 or e1 ~= e2 then
					bad = bad + 1
					if bad <= 5 then
						tap.diag(("find(%q, %d, %d): %s %s, want %s %s"):format(n, i, j,
							tostring(s1), tostring(e1), tostring(s2), tostring(e2)))
					end
				end
			end
		end
		local s1, e1 = b:find(n)
		local s2, e2 = str:find(n, 1, true)
		ok(s1 == s2 and e1 == e2, ("find(%q) with default i and j"):format(n))
	end
	is(bad, 0, "every (needle, i, j) agrees with the model")
end)

test("find: many false candidates", function()
	-- Every byte starts a candidate that fails late: the search must stay
	-- correct past the point where it changes method.
	local n = ("a"):rep(50) .. "b"
	local str = ("a"):rep(5000)
	is(weft.buffer(str):find(n), nil, "not found")
	is(weft.buffer(str .. "b"):find(n), 4951, "found at the end")
	is(weft.buffer(str .. "b" .. str):find(n, 100, 4999), nil, "not found before j")
	is(weft.buffer(str .. "b"):find(n, 4951), 4951, "found when init is the match")
	local long = ("xy"):rep(2000) .. "xz"
	is(weft.buffer(long):find("xz"), 4001, "two-byte needle after many candidates")
	is(weft.buffer(long):find("xyxz"), 3999, "overlapping candidates")
	is(weft.buffer(("ab"):rep(20)):find("aba", 40), nil,
		"a match cut by the end after many candidates")
	local s = ("ab"):rep(20) .. "a"
	is(weft.buffer(s):find("abac", 1), nil, "last candidate needs a byte past the end")
	is(weft.buffer(s .. "c"):find("abac", 1), 39, "last possible start after many misses")
end)

test("find on views and with a buffer needle", function()
	local b = weft.buffer("xxabcabcxx")
	local v = b:view(3, 6)
	is(v:find("abc"), 1, "indices are the view's")
	is(v:find("abc", 2), 4, "second match in the view")
	is(v:find("x"), nil, "bytes outside the view are not searched")
	is(v:find("cx"), nil, "a match across the view's end is not found")
	local s, e = v:find("c", -1)
	is(s, 6, "negative init in a view")
	is(e, 6, "end in a view")
	is(b:find(weft.buffer("cab")), 5, "a buffer as needle")
	is(b:find(b:view(6, 3)), 3, "a view of the same buffer as needle")
	b:resize(4)
	like(err(function() return v:find("a") end),
		"no longer fits", "a view that no longer fits raises")
	like(err(function() return b:find(v) end),
		"no longer fits", "a needle view that no longer fits raises")
end)

test("find: bad arguments raise clearly", function()
	local b = weft.buffer("abc")
	like(err(function() return b:find() end), "string or weft.buffer expected", "no needle")
	like(err(function() return b:find({}) end),
		"string or weft.buffer expected, got table", "table needle")
	like(err(function() return b:find(1) end),
		"string or weft.buffer expected, got number", "number needle")
	like(err(function() return b:find(true) end), "got boolean", "boolean needle")
	like(err(function() return b:find("a", "x") end),
		"#2 to 'find' %(number expected, got string%)", "string init")
	like(err(function() return b:find("a", 1.5) end),
		"#2 to 'find' %(number has no integer representation%)",
		"fractional init")
	like(err(function() return b:find("a", 1, {}) end),
		"#3 to 'find' %(number expected, got table%)", "table j")
	like(err(b.find, "abc", "a"), "weft.buffer expected", "a string is not a buffer")
	local sock = assert(weft.tcp())
	like(err(b.find, sock, "a"), "weft.buffer expected", "a socket is not a buffer")
	sock:close()
	is(b:find("a", nil, nil), 1, "nil init and j are the defaults")
end)

test("copy: from strings and buffers", function()
	local b = weft.buffer("0123456789")
	is(b:copy(3, "ab"), b, "copy returns the buffer")
	is(b:tostring(), "01ab456789", "copy of a whole string")
	b:copy(1, "wxyz", 2, 3)
	is(b:tostring(), "xyab456789", "copy of part of a string")
	b:copy(9, "PQRS", -2)
	is(b:tostring(), "xyab4567RS", "negative i counts from the end of the source")
	b:copy(1, "hello", 0, 100)
	is(b:tostring(), "hello567RS", "source indices clamped as by string.sub")
	b:copy(11, "hello", 4, 2)
	is(b:tostring(), "hello567RS", "an empty range copies nothing, at #buf + 1 too")
	b:copy(1, "")
	is(b:tostring(), "hello567RS", "copy of an empty string")
	b:copy(7, weft.buffer("ABCD"))
	is(b:tostring(), "hello5ABCD", "copy of a whole buffer, up to the end")
	local src = weft.buffer("--XY--")
	b:copy(1, src:view(3, 2))
	is(b:tostring(), "XYllo5ABCD", "copy from a view")
	b:copy(3, src:view(2, 4), 2, 3)
	is(b:tostring(), "XYXYo5ABCD", "copy of part of a view")
	local dst = b:view(5, 3)
	dst:copy(2, "!?")
	is(b:tostring(), "XYXYo!?BCD", "copy into a view")
	b:copy(1, weft.buffer(0))
	is(b:tostring(), "XYXYo!?BCD", "copy of an empty buffer")
end)

test("copy within one buffer, overlapping both ways", function()
	local b = weft.buffer("abcdefghij")
	b:copy(1, b, 4, 10)
	is(b:tostring(), "defghijhij", "to the start (the tail of a partial read)")
	b = weft.buffer("abcdefghij")
	b:copy(3, b, 1, 8)
	is(b:tostring(), "ababcdefgh", "forward, overlapping")
	b = weft.buffer("abcdefghij")
	b:copy(2, b, 3, 6)
	is(b:tostring(), "acdeffghij", "backward by one, overlapping")
	b = weft.buffer("abcdefghij")
	b:copy(1, b)
	is(b:tostring(), "abcdefghij", "onto itself")
	b = weft.buffer("abcdefghij")
	b:view(2, 6):copy(1, b:view(4, 6), 1, 5)
	is(b:tostring(), "adefghghij", "between two views of one buffer")
	b = weft.buffer("abcdefghij")
	b:copy(5, b:view(1, 6))
	is(b:tostring(), "abcdabcdef", "from a view of itself, forward")
end)

test("copy agrees with a string model", function()
	local str = "abcdefgh"
	local bad = 0
	for at = 1, #str + 1 do
		for i = -#str - 1, #str + 1 do
			for j = -#str - 1, #str + 1 do
				local piece = str:sub(i, j)
				local b = weft.buffer(str)
				local good = pcall(b.copy, b, at, b, i, j)
				local fits = at - 1 + #piece <= #str
				local want = fits and str:sub(1, at - 1) .. piece .. str:sub(at + #piece) or str
				if good ~= fits or b:tostring() ~= want then
					bad = bad + 1
					if bad <= 5 then
						tap.diag(("copy(%d, self, %d, %d): %s %q, want %s %q"):format(at, i, j,
							tostring(good), b:tostring(), tostring(fits), want))
					end
				end
			end
		end
	end
	is(bad, 0, "every (at, i, j) within one buffer agrees with the model")
end)

test("copy: what does not fit raises and changes nothing", function()
	local b = weft.buffer("abcde")
	like(err(function() return b:copy(5, "xy") end),
		"#1 to 'copy' %(does not fit in the buffer%)", "past the end")
	like(err(function() return b:copy(0, "x") end), "does not fit", "at 0")
	like(err(function() return b:copy(-1, "x") end), "does not fit", "negative at")
	like(err(function() return b:copy(7, "") end), "does not fit", "empty copy past #buf + 1")
	like(err(function() return b:copy(math.maxinteger, "x") end), "does not fit", "huge at")
	like(err(function() return b:copy(1, "abcdef") end),
		"does not fit", "source longer than the buffer")
	like(err(function() return b:copy(2, b) end), "does not fit", "the whole buffer one byte on")
	is(b:tostring(), "abcde", "nothing changed")
	is(b:copy(6, ""), b, "empty copy at #buf + 1 is fine")
	is(b:copy(4, "xyz", 2), b, "a range that fits")
	is(b:tostring(), "abcyz", "the range was copied")
end)

test("copy: bad arguments and stale views raise clearly", function()
	local b = weft.buffer("abcde")
	like(err(function() return b:copy() end),
		"#1 to 'copy' %(number expected, got no value%)", "no index")
	like(err(function() return b:copy("x", "a") end),
		"#1 to 'copy' %(number expected, got string%)", "string index")
	like(err(function() return b:copy(1.5, "a") end),
		"number has no integer representation", "fractional index")
	like(err(function() return b:copy(1) end),
		"#2 to 'copy' %(string or weft.buffer expected, got no value%)",
		"no source")
	like(err(function() return b:copy(1, {}) end),
		"string or weft.buffer expected, got table", "table source")
	like(err(function() return b:copy(1, io.stdout) end),
		"string or weft.buffer expected", "file source")
	like(err(function() return b:copy(1, "a", "x") end),
		"#3 to 'copy' %(number expected, got string%)", "string i")
	like(err(function() return b:copy(1, "a", 1, 0.5) end), "#4 to 'copy'", "fractional j")
	like(err(b.copy, "abc", 1, "a"), "weft.buffer expected", "a string is not a buffer")
	local big = weft.buffer("0123456789")
	local v = big:view(6, 5)
	big:resize(7)
	like(err(function() return v:copy(1, "x") end),
		"no longer fits", "into a view that no longer fits")
	like(err(function() return b:copy(1, v) end),
		"no longer fits", "from a view that no longer fits")
	like(err(function() return v:copy(1, "") end),
		"no longer fits", "an empty copy into a stale view")
	is(b:tostring(), "abcde", "nothing changed")
	is(big:tostring(), "0123456", "nothing changed in the parent")
end)

-- The class checks read a tag at the start of the userdata: other full
-- userdata (a file, a socket), other values and the wrong one of weft's
-- own classes must all be refused, never misread.
test("other userdata are not buffers, nor buffers sockets", function()
	local b = weft.buffer(64)
	local s = assert(weft.tcp())
	ok(raises(b.tostring, io.stdout), "a file is not a buffer")
	ok(raises(b.tostring, s), "a socket is not a buffer")
	ok(raises(b.set, s, 1, "x"), "set on a socket raises")
	ok(raises(b.len, s), "len of a socket raises")
	ok(raises(s.close, b), "a buffer is not a socket")
	ok(raises(s.recv, b, b), "recv on a buffer raises")
	ok(raises(s.send, s, io.stdout), "send of a file raises")
	ok(raises(b.tostring, weft.stats), "a function is not a buffer")
	is(b:tostring(1, 3), "\0\0\0", "the buffer still works")
	s:close()
end)

tap.done()
