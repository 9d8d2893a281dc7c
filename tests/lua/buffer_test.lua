-- weft.buffer: byte buffers and views.
local tap = require "tap"
local weft = require "weft"
local ok, is, test = tap.ok, tap.is, tap.test

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
