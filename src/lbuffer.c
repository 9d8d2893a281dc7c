/* Byte buffers: userdata that recv writes into and send reads from, so I/O
 * makes no Lua strings.  A view shares a range of its parent's bytes and
 * keeps the parent alive through its user value; its bytes are found
 * through the parent on every use, so resizing the parent never leaves a
 * view dangling (a view that no longer fits raises). */
#include "config.h"

#include <string.h>

#include "alloc.h"
#include "error.h"
#include "lweft.h"

static lw_buffer_t *checkbuf(lua_State *L, int idx)
{
	lw_buffer_t *b = lw_testclass(L, idx, &lw_tag_buffer);
	if (!b)
		luaL_typeerror(L, idx, LW_BUFFER);
	return b;
}

/* The parent's bytes for a view at idx; raises if the view no longer fits. */
static char *resolve(lua_State *L, int idx, lw_buffer_t *b)
{
	if (!b->view)
		return b->data;
	lua_getiuservalue(L, idx, 1);
	lw_buffer_t *p = lua_touserdata(L, -1);
	lua_pop(L, 1);
	if (!p || b->off > p->len || b->len > p->len - b->off)
		luaL_error(L, "weft.buffer: the view no longer fits its parent");
	return p->data + b->off;
}

char *lw_buffer_bytes(lua_State *L, int idx, size_t *len)
{
	lw_buffer_t *b = checkbuf(L, idx);
	*len = b->len;
	return resolve(L, idx, b);
}

char *lw_buffer_bytes_known(lua_State *L, int idx, size_t *len)
{
	lw_buffer_t *b = lua_touserdata(L, idx);
	*len = b->len;
	return resolve(L, idx, b);
}

const char *lw_bytes_known(lua_State *L, int idx, size_t *len)
{
	if (lua_type(L, idx) == LUA_TSTRING)
		return lua_tolstring(L, idx, len);
	return lw_buffer_bytes_known(L, idx, len);
}

const char *lw_checkbytes(lua_State *L, int idx, size_t *len)
{
	if (lua_type(L, idx) == LUA_TSTRING)
		return lua_tolstring(L, idx, len);
	lw_buffer_t *b = lw_testclass(L, idx, &lw_tag_buffer);
	if (!b)
		luaL_typeerror(L, idx, "string or weft.buffer");
	*len = b->len;
	return resolve(L, idx, b);
}

lw_buffer_t *lw_buffer_push(lua_State *L, const char *data, size_t len)
{
	/* Created empty first, then filled, so that a failed allocation leaves
	 * a valid (empty) object for the collector. */
	lw_buffer_t *b = lua_newuserdatauv(L, sizeof *b, 1);
	b->tag = &lw_tag_buffer;
	b->data = NULL;
	b->len = 0;
	b->off = 0;
	b->view = 0;
	luaL_setmetatable(L, LW_BUFFER);
	if (len) {
		b->data = data ? weft_malloc(len) : weft_calloc(1, len);
		if (!b->data)
			luaL_error(L, "weft.buffer: out of memory (%I bytes)", (lua_Integer)len);
		if (data)
			memcpy(b->data, data, len);
		b->len = len;
	}
	return b;
}

int lw_buffer_resize(lw_buffer_t *b, size_t len)
{
	if (len == b->len)
		return 0;
	if (len == 0) {
		weft_free(b->data);
		b->data = NULL;
		b->len = 0;
		return 0;
	}
	char *d = weft_realloc(b->data, len);
	if (!d)
		return WEFT_ENOMEM;
	if (len > b->len)
		memset(d + b->len, 0, len - b->len);
	b->data = d;
	b->len = len;
	return 0;
}

/* weft.buffer(size | string) */
static int l_buffer(lua_State *L)
{
	if (lua_type(L, 1) == LUA_TSTRING) {
		size_t len;
		const char *s = lua_tolstring(L, 1, &len);
		lw_buffer_push(L, s, len);
		return 1;
	}
	lua_Integer n = luaL_checkinteger(L, 1);
	luaL_argcheck(L, n >= 0 && (lua_Unsigned)n <= (((size_t)-1) >> 1), 1, "invalid size");
	lw_buffer_push(L, NULL, (size_t)n);
	return 1;
}

static int b_len(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)checkbuf(L, 1)->len);
	return 1;
}

static int b_gc(lua_State *L)
{
	lw_buffer_t *b = checkbuf(L, 1);
	if (!b->view)
		weft_free(b->data);
	b->data = NULL;
	b->len = 0;
	return 0;
}

/* luaL_optinteger with one API call when the argument is there. */
static lua_Integer optint(lua_State *L, int idx, lua_Integer def)
{
	int isnum;
	lua_Integer v = lua_tointegerx(L, idx, &isnum);
	if (isnum)
		return v;
	return lua_isnoneornil(L, idx) ? def : luaL_checkinteger(L, idx);
}

/* Translate string.sub-style indices (negative from the end) to a 0-based
 * [*from, *to) range, clamped. */
static void range(lua_Integer i, lua_Integer j, size_t len, size_t *from, size_t *to)
{
	lua_Integer n = (lua_Integer)len;
	if (i < 0)
		i = n + i + 1;
	if (j < 0)
		j = n + j + 1;
	if (i < 1)
		i = 1;
	if (j > n)
		j = n;
	if (i > j) {
		*from = *to = 0;
		return;
	}
	*from = (size_t)(i - 1);
	*to = (size_t)j;
}

/* buf:tostring([i [, j]]) */
static int b_tostring(lua_State *L)
{
	lw_buffer_t *b = checkbuf(L, 1);
	char *d = resolve(L, 1, b);
	size_t from, to;
	range(optint(L, 2, 1), optint(L, 3, -1), b->len, &from, &to);
	lua_pushlstring(L, d ? d + from : "", to - from);
	return 1;
}

/* tostring(buf) */
static int b_name(lua_State *L)
{
	lw_buffer_t *b = checkbuf(L, 1);
	lua_pushfstring(L, "weft.buffer (%I bytes%s): %p", (lua_Integer)b->len,
			b->view ? ", view" : "", (void *)b);
	return 1;
}

static lua_Integer index_arg(lua_State *L, int idx, lw_buffer_t *b, int *ok)
{
	int isnum;
	lua_Integer i = lua_tointegerx(L, idx, &isnum);
	*ok = isnum && i >= 1 && (lua_Unsigned)i <= b->len;
	return i;
}

/* buf[i] (byte) or buf.method.  A method is looked up in the methods
 * table, upvalue 2, without checking the object: any key but a number
 * reads that table only.  Every `buf:tostring(...)` comes here. */
static int b_index(lua_State *L)
{
	if (lua_type(L, 2) == LUA_TNUMBER) {
		lw_buffer_t *b = checkbuf(L, 1);
		int ok;
		lua_Integer i = index_arg(L, 2, b, &ok);
		if (!ok)
			return 0;
		lua_pushinteger(L, (unsigned char)resolve(L, 1, b)[i - 1]);
		return 1;
	}
	lua_settop(L, 2);
	lua_rawget(L, lua_upvalueindex(2));
	return 1;
}

/* buf[i] = byte */
static int b_newindex(lua_State *L)
{
	lw_buffer_t *b = checkbuf(L, 1);
	int ok;
	lua_Integer i = index_arg(L, 2, b, &ok);
	luaL_argcheck(L, ok, 2, "index out of range");
	lua_Integer v = luaL_checkinteger(L, 3);
	luaL_argcheck(L, v >= 0 && v <= 255, 3, "byte expected (0..255)");
	resolve(L, 1, b)[i - 1] = (char)v;
	return 0;
}

/* The first n[0..nl) in h[0..hl), or NULL; 1 <= nl <= hl.  Candidates
 * come from memchr on the needle's first byte, which is quick for the short
 * needles of protocol parsing.  That alone is O(hl * nl) when candidates
 * keep failing late, so where the C library has memmem (linear at worst)
 * the rest of such a haystack goes to it. */
static const char *search(const char *h, size_t hl, const char *n, size_t nl)
{
	const char *last = h + (hl - nl); /* the last place a match can start */
#ifdef __GLIBC__
	int misses = 0;
#endif
	while (h <= last) {
		const char *c = memchr(h, (unsigned char)n[0], (size_t)(last - h) + 1);
		if (!c)
			return NULL;
		if (memcmp(c + 1, n + 1, nl - 1) == 0)
			return c;
		h = c + 1;
#ifdef __GLIBC__
		if (++misses == 8 && h <= last)
			return memmem(h, (size_t)(last - h) + nl, n, nl);
#endif
	}
	return NULL;
}

/* buf:find(s [, init [, j]]): the first s (plain bytes) within the bytes
 * init..j, as string.find(buf:tostring(1, j), s, init, true) but with a
 * negative init counted from the end of the buffer. */
static int b_find(lua_State *L)
{
	lw_buffer_t *b = checkbuf(L, 1);
	size_t nl;
	const char *n = lw_checkbytes(L, 2, &nl);
	lua_Integer len = (lua_Integer)b->len;
	lua_Integer i = optint(L, 3, 1);
	lua_Integer j = optint(L, 4, -1);
	const char *d = resolve(L, 1, b);
	/* init as string.find clamps it, j as string.sub does */
	if (i < 0)
		i = i < -len ? 1 : len + i + 1;
	else if (i == 0)
		i = 1;
	if (j < 0)
		j = j < -len ? 0 : len + j + 1;
	else if (j > len)
		j = len;
	/* the match starts at i at the earliest and must end by j */
	if (i - 1 > j || (lua_Integer)nl > j - (i - 1)) {
		lua_pushnil(L);
		return 1;
	}
	if (nl > 0) {
		const char *m = search(d + i - 1, (size_t)(j - (i - 1)), n, nl);
		if (!m) {
			lua_pushnil(L);
			return 1;
		}
		i = (lua_Integer)(m - d) + 1;
	}
	lua_pushinteger(L, i);
	lua_pushinteger(L, i + (lua_Integer)nl - 1);
	return 2;
}

/* buf:copy(at, src [, i [, j]]), also buf:set(at, src) */
static int b_copy(lua_State *L)
{
	lw_buffer_t *b = checkbuf(L, 1);
	lua_Integer at = luaL_checkinteger(L, 2);
	size_t sl;
	const char *s = lw_checkbytes(L, 3, &sl);
	size_t from, to;
	range(optint(L, 4, 1), optint(L, 5, -1), sl, &from, &to);
	size_t n = to - from;
	luaL_argcheck(L,
		      at >= 1 && (lua_Unsigned)at - 1 <= b->len && n <= b->len - (size_t)(at - 1),
		      2, "does not fit in the buffer");
	char *d = resolve(L, 1, b);
	if (n)
		memmove(d + at - 1, s + from, n);
	lua_settop(L, 1);
	return 1;
}

/* buf:view(i [, len]) */
static int b_view(lua_State *L)
{
	lw_buffer_t *b = checkbuf(L, 1);
	lua_Integer i = luaL_checkinteger(L, 2);
	luaL_argcheck(L, i >= 1 && (lua_Unsigned)i - 1 <= b->len, 2, "out of range");
	size_t off = (size_t)(i - 1);
	lua_Integer n = luaL_optinteger(L, 3, (lua_Integer)(b->len - off));
	luaL_argcheck(L, n >= 0 && (lua_Unsigned)n <= b->len - off, 3, "out of range");
	/* A view of a view points at the root buffer. */
	lua_Integer root_off = (lua_Integer)off;
	if (b->view) {
		root_off += (lua_Integer)b->off;
		lua_getiuservalue(L, 1, 1);
	} else {
		lua_pushvalue(L, 1);
	}
	lw_buffer_t *v = lua_newuserdatauv(L, sizeof *v, 1);
	v->tag = &lw_tag_buffer;
	v->data = NULL;
	v->len = (size_t)n;
	v->off = (size_t)root_off;
	v->view = 1;
	luaL_setmetatable(L, LW_BUFFER);
	lua_insert(L, -2);
	lua_setiuservalue(L, -2, 1);
	return 1;
}

/* buf:resize(n) */
static int b_resize(lua_State *L)
{
	lw_buffer_t *b = checkbuf(L, 1);
	lua_Integer n = luaL_checkinteger(L, 2);
	luaL_argcheck(L, n >= 0, 2, "invalid size");
	if (b->view)
		return luaL_error(L, "weft.buffer: a view cannot be resized");
	if (lw_buffer_resize(b, (size_t)n) < 0)
		return luaL_error(L, "weft.buffer: out of memory");
	lua_settop(L, 1);
	return 1;
}

static const luaL_Reg methods[] = {
	{"tostring", b_tostring},
	{"set", b_copy}, /* buf:set(i, s) is buf:copy(i, s) */
	{"copy", b_copy},
	{"find", b_find},
	{"view", b_view},
	{"resize", b_resize},
	{"len", b_len},
	{NULL, NULL},
};

static const luaL_Reg meta[] = {
	{"__len", b_len},
	{"__gc", b_gc},
	{"__close", b_gc},
	{"__newindex", b_newindex},
	{"__tostring", b_name},
	{NULL, NULL},
};

void lw_open_buffer(lua_State *L, lw_state_t *S)
{
	luaL_newmetatable(L, LW_BUFFER);
	lw_register(L, S, meta);
	lua_newtable(L);
	lw_register(L, S, methods);
	lua_pushvalue(L, -1);
	lua_setfield(L, -3, "methods");
	lua_pushlightuserdata(L, S);
	lua_insert(L, -2);
	lua_pushcclosure(L, b_index, 2);
	lua_setfield(L, -2, "__index");
	lua_pop(L, 1);
	lua_pushcfunction(L, l_buffer);
	lua_setfield(L, -2, "buffer");
}
