/* The C half of the Copas layer (lua/weft/copas.lua): a buffered reader
 * that gives LuaSocket's receive patterns ("*l", "*a", a byte count, with
 * a prefix) over any stream object with a weft-style
 * `recv(buf, maxlen, expires) -> n | nil, err` method: weft TCP sockets,
 * and TLS sockets, which have the same method.  The bytes received wait
 * in a buffer owned by the reader; a pattern is cut out of it with no
 * garbage besides the string returned.  The object's recv is called with
 * lua_callk, so it may wait; the reader's continuation picks up where it
 * was.  Errors keep LuaSocket's strings: "closed", "timeout", and
 * LuaSocket's texts for the usual system errors. */
#include "config.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "clock.h"
#include "error.h"
#include "lweft.h"

#define LW_READER "weft.copas_reader"

/* Uservalues of a reader: the stream object, its recv method, the
 * storage buffer and a view of the storage's free tail (re-aimed before
 * every recv, so receiving makes no garbage). */
enum { UV_SOCK = 1, UV_RECV, UV_STORE, UV_VIEW, UV_COUNTER, UV_COUNT = UV_COUNTER };

#define READER_MIN 4096
#define READER_MAX ((size_t)1 << 30)

/* A reader that receives from a weft TCP socket gives its storage up while
 * it waits with nothing buffered (a connection idle between requests holds
 * no storage), and takes storage again when it receives.  Storage given
 * up goes to its instance's spares, up to SPARES of them, where the next
 * reader to receive takes it: a busy server moves a few blocks around
 * instead of calling malloc and free for each wait. */
#define SPARES 64

/* What the readers of one Copas instance share: how many wait in recv
 * (for copas.status), the most bytes a line ("*l") or "*a" may buffer
 * while its end has not come (copas.setreceivelimit), and spare storage
 * of READER_MIN bytes. */
typedef struct shared {
	lua_Integer receiving;
	size_t limit;
	int nspare;
	int closed; /* collected: storage given up is freed */
	char *spare[SPARES];
} shared_t;

#define DEFAULT_LIMIT ((size_t)64 << 20)

typedef struct reader {
	const void *tag;    /* &reader_tag (lw_testclass) */
	size_t start, end;  /* pending bytes: store[start, end) */
	int busy;           /* a receive waits in recv: others are refused */
	int hits;           /* results from the buffer since the last counted one */
	lw_buffer_t *store; /* the storage (kept alive as a uservalue) */
	lsock_t *sock;      /* the stream if a weft TCP socket (kept alive as
			     * a uservalue), else NULL: recv it is called */
	shared_t *shared;   /* the instance's shared part, or NULL */
} reader_t;

#define LW_COUNTER "weft.copas_counter"

static const char reader_tag;

/* core.copas_counter() -> the part the readers of one Copas instance
 * share: a counter of readers waiting in recv (for copas.status) and the
 * receive limit. */
static int l_counter(lua_State *L)
{
	shared_t *sh = lua_newuserdatauv(L, sizeof *sh, 0);
	sh->receiving = 0;
	sh->limit = DEFAULT_LIMIT;
	sh->nspare = 0;
	sh->closed = 0;
	luaL_setmetatable(L, LW_COUNTER);
	return 1;
}

static int counter_gc(lua_State *L)
{
	shared_t *sh = luaL_checkudata(L, 1, LW_COUNTER);
	while (sh->nspare > 0)
		weft_free(sh->spare[--sh->nspare]);
	sh->closed = 1;
	return 0;
}

static int counter_get(lua_State *L)
{
	lua_pushinteger(L, ((shared_t *)luaL_checkudata(L, 1, LW_COUNTER))->receiving);
	return 1;
}

/* counter:limit([bytes]) -> the limit before the call.  math.huge (or any
 * number beyond what a reader can hold) means as much as a reader holds. */
static int counter_limit(lua_State *L)
{
	shared_t *sh = luaL_checkudata(L, 1, LW_COUNTER);
	size_t old = sh->limit;
	if (!lua_isnoneornil(L, 2)) {
		lua_Number n = luaL_checknumber(L, 2);
		luaL_argcheck(L, n >= 1, 2, "limit must be at least 1 byte");
		sh->limit = n >= (lua_Number)READER_MAX ? READER_MAX : (size_t)n;
	}
	if (old >= READER_MAX)
		lua_pushnumber(L, HUGE_VAL);
	else
		lua_pushinteger(L, (lua_Integer)old);
	return 1;
}

enum { PAT_LINE, PAT_ALL, PAT_COUNT };

/* weft's error names as LuaSocket spells them; others pass through. */
static const char *const errmap[][2] = {
    {"eof", "closed"},
    {"connection_reset", "connection reset by peer"},
    {"connection_refused", "connection refused"},
    {"connection_aborted", "connection aborted"},
    {"broken_pipe", "closed"},
    {"not_connected", "closed"},
    {"Device or resource busy", "Operation already in progress"},
    {"address_already_in_use", "address already in use"},
    {"address_not_available", "address not available"},
    {"network_unreachable", "network is unreachable"},
    {"host_unreachable", "host is unreachable"},
    {"host_not_found", "host not found"},
    {"access_denied", "permission denied"},
    {"already_connected", "already connected"},
    {NULL, NULL},
};

static const char *luasocket_error(const char *err)
{
	if (!err)
		return "closed";
	for (int i = 0; errmap[i][0]; i++)
		if (strcmp(err, errmap[i][0]) == 0)
			return errmap[i][1];
	return err;
}

/* core.copas_errstr(err) -> the LuaSocket spelling of a weft error */
static int l_errstr(lua_State *L)
{
	lua_pushstring(L, luasocket_error(luaL_optstring(L, 1, NULL)));
	return 1;
}

/* core.copas_reader(sock [, counter]) -> reader */
static int l_reader(lua_State *L)
{
	luaL_checkany(L, 1);
	shared_t *counter = luaL_testudata(L, 2, LW_COUNTER);
	reader_t *r = lua_newuserdatauv(L, sizeof *r, UV_COUNT);
	r->tag = &reader_tag;
	r->start = r->end = 0;
	r->busy = 0;
	r->hits = 0;
	r->shared = counter; /* may be NULL */
	if (counter) {
		lua_pushvalue(L, 2);
		lua_setiuservalue(L, -2, UV_COUNTER);
	}
	luaL_setmetatable(L, LW_READER);
	int ri = lua_gettop(L);
	r->sock = lw_totcp(L, 1);
	lua_pushvalue(L, 1);
	lua_setiuservalue(L, ri, UV_SOCK);
	if (lua_getfield(L, 1, "recv") == LUA_TNIL)
		return luaL_argerror(L, 1, "a stream with a recv method expected");
	lua_setiuservalue(L, ri, UV_RECV);
	r->store = lw_buffer_push(L, NULL, READER_MIN);
	lua_setiuservalue(L, ri, UV_STORE);
	/* The view: a buffer that borrows the storage's bytes. */
	lw_buffer_t *v = lua_newuserdatauv(L, sizeof *v, 1);
	memset(v, 0, sizeof *v);
	v->tag = &lw_tag_buffer;
	v->view = 1;
	luaL_setmetatable(L, LW_BUFFER);
	lua_getiuservalue(L, ri, UV_STORE);
	lua_setiuservalue(L, -2, 1);
	lua_setiuservalue(L, ri, UV_VIEW);
	lua_settop(L, ri);
	return 1;
}

static reader_t *checkreader(lua_State *L, int idx)
{
	reader_t *r = lw_testclass(L, idx, &reader_tag);
	if (!r)
		luaL_typeerror(L, idx, LW_READER);
	return r;
}

/* The storage's bytes, "" while it is given up (then nothing is
 * buffered). */
static const char *bytes(const reader_t *r)
{
	return r->store->data ? r->store->data : "";
}

/* Give the storage up (nothing is buffered, the reader waits). */
static void give_up(reader_t *r)
{
	lw_buffer_t *st = r->store;
	shared_t *sh = r->shared;
	if (!sh || st->len != READER_MIN)
		return; /* grown storage is kept: its reader receives much */
	if (!sh->closed && sh->nspare < SPARES)
		sh->spare[sh->nspare++] = st->data;
	else
		weft_free(st->data);
	st->data = NULL;
	st->len = 0;
}

/* Storage again before a recv: 0, or WEFT_ENOMEM. */
static int take_back(reader_t *r)
{
	lw_buffer_t *st = r->store;
	shared_t *sh = r->shared;
	char *d = sh && sh->nspare > 0 ? sh->spare[--sh->nspare] : weft_malloc(READER_MIN);
	if (!d)
		return WEFT_ENOMEM;
	st->data = d;
	st->len = READER_MIN;
	return 0;
}

static int pattern_of(lua_State *L, lua_Integer *count)
{
	switch (lua_type(L, 2)) {
	case LUA_TNONE:
	case LUA_TNIL:
		return PAT_LINE;
	case LUA_TNUMBER: {
		lua_Number n = lua_tonumber(L, 2);
		luaL_argcheck(L, n >= 0, 2, "invalid receive pattern");
		*count = (lua_Integer)n;
		return PAT_COUNT;
	}
	case LUA_TSTRING: {
		const char *p = lua_tostring(L, 2);
		if (p[0] == '*')
			p++;
		if (p[0] == 'l')
			return PAT_LINE;
		if (p[0] == 'a')
			return PAT_ALL;
		break;
	}
	}
	return luaL_argerror(L, 2, "invalid receive pattern");
}

/* Push prefix .. bytes (with every CR dropped when strip_cr, as
 * LuaSocket's "*l" does).  A line ending in CRLF, the usual case, is cut
 * short by one byte, with no copy. */
static void push_result(lua_State *L, const char *prefix, size_t plen, const char *p, size_t n,
                        int strip_cr)
{
	const char *cr = strip_cr && n ? memchr(p, '\r', n) : NULL;
	if (!plen && (!cr || cr == p + n - 1)) {
		lua_pushlstring(L, p, cr ? n - 1 : n);
		return;
	}
	luaL_Buffer b;
	char *out = luaL_buffinitsize(L, &b, plen + n);
	memcpy(out, prefix, plen);
	size_t k = plen;
	const char *end = p + n;
	while (cr) {
		memcpy(out + k, p, (size_t)(cr - p));
		k += (size_t)(cr - p);
		p = cr + 1;
		cr = memchr(p, '\r', (size_t)(end - p));
	}
	memcpy(out + k, p, (size_t)(end - p));
	k += (size_t)(end - p);
	luaL_pushresultsize(&b, k);
}

/* nil, err, partial: the partial result takes everything buffered. */
static int fail(lua_State *L, reader_t *r, const char *data, int pat, const char *err)
{
	size_t plen = 0;
	const char *prefix = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &plen) : "";
	lua_pushnil(L);
	lua_pushstring(L, err);
	push_result(L, prefix, plen, data + r->start, r->end - r->start, pat == PAT_LINE);
	r->start = r->end = 0;
	return 3;
}

/* The pattern's result if the buffer holds it: 1 (pushed), else 0. */
static int satisfy(lua_State *L, reader_t *r, const char *data, int pat, lua_Integer count)
{
	size_t plen = 0;
	const char *prefix = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &plen) : "";
	size_t avail = r->end - r->start;
	const char *p = data + r->start;
	if (pat == PAT_LINE) {
		const char *nl = avail ? memchr(p, '\n', avail) : NULL;
		if (!nl)
			return 0;
		push_result(L, prefix, plen, p, (size_t)(nl - p), 1);
		r->start += (size_t)(nl - p) + 1;
	} else if (pat == PAT_COUNT) {
		/* As LuaSocket: the prefix counts towards the total wanted. */
		size_t want = (size_t)count;
		if (plen && want <= plen) {
			lua_pushvalue(L, 3);
			return 1;
		}
		want -= plen;
		if (avail < want)
			return 0;
		push_result(L, prefix, plen, p, want, 0);
		r->start += want;
	} else {
		return 0;
	}
	if (r->start == r->end)
		r->start = r->end = 0;
	return 1;
}

/* The deadline for one recv, from the timeout at 4: 0 when there is none
 * (nil or < 0), else 1 with *at = clock + timeout (weft.clock() seconds). */
static int expires(lua_State *L, lua_Number *at)
{
	if (lua_type(L, 4) != LUA_TNUMBER)
		return 0;
	lua_Number t = lua_tonumber(L, 4);
	if (t < 0)
		return 0;
	*at = weft_clock() + t;
	return 1;
}

/* The same as the stream's recv takes it: nil or a number. */
static void push_expires(lua_State *L)
{
	lua_Number at;
	if (expires(L, &at))
		lua_pushnumber(L, at);
	else
		lua_pushnil(L);
}

/* After a fairness yield: the result pushed before it. */
static int result_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_wakecode(L);
	return 1;
}

/* Results cut from the buffer without a recv count as I/O for the
 * thread's budget too (one call in READER_HITS), so that a thread reading a
 * fast peer byte by byte still lets the others run, and one reading lines
 * pipelined by the hundred does not yield for each few. */
#define READER_HITS 16

static int satisfied(lua_State *L, reader_t *r)
{
	lw_state_t *S = lw_S(L);
	if (++r->hits >= READER_HITS) {
		r->hits = 0;
		if (lw_spend(S) && lua_isyieldable(L))
			return lw_fair_yield(L, S, 0, result_k);
	}
	return 1;
}

/* What a recv brought: n bytes (> 0), the end of the stream (0), or an
 * error err.  Returns the count of results pushed, or 0 when the pattern
 * wants more. */
static int got(lua_State *L, reader_t *r, int pat, lua_Integer count, lua_Integer n,
	       const char *err)
{
	if (err)
		return fail(L, r, bytes(r), pat, err);
	if (n <= 0) {
		/* "*a" ends well at the close, unless it got nothing (as
		 * LuaSocket: then "closed", with the prefix). */
		if (pat == PAT_ALL && r->end > r->start) {
			size_t plen = 0;
			const char *prefix =
			    lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &plen) : "";
			push_result(L, prefix, plen, bytes(r) + r->start, r->end - r->start, 0);
			r->start = r->end = 0;
			return 1;
		}
		return fail(L, r, bytes(r), pat, "closed");
	}
	r->end += (size_t)n;
	return satisfy(L, r, bytes(r), pat, count);
}

/* Room in the storage for the next recv: 0, or the count of results
 * pushed by a failure. */
static int make_room(lua_State *L, reader_t *r, int pat, lua_Integer count)
{
	lw_buffer_t *st = r->store;
	if (!st->data && take_back(r) < 0)
		return fail(L, r, bytes(r), pat, "out of memory");
	/* Move the pending bytes to the front, grow when full. */
	if (r->start > 0) {
		memmove(st->data, st->data + r->start, r->end - r->start);
		r->end -= r->start;
		r->start = 0;
	}
	/* A line or "*a" that outgrows the limit ends here: a peer sending a
	 * 1 GiB line costs the limit, not the line. */
	size_t limit = r->shared ? r->shared->limit : DEFAULT_LIMIT;
	if (pat != PAT_COUNT && r->end - r->start >= limit)
		return fail(L, r, bytes(r), pat, "too_large");
	if (st->len - r->end < READER_MIN / 2) {
		size_t want = st->len * 2;
		if (pat != PAT_COUNT && want > limit + READER_MIN)
			want = limit + READER_MIN;
		if (pat == PAT_COUNT && (size_t)count > st->len && (size_t)count < READER_MAX)
			want = (size_t)count + READER_MIN;
		if (want > READER_MAX || lw_buffer_resize(st, want) < 0)
			return fail(L, r, bytes(r), pat, "out of memory");
	}
	return 0;
}

static void busy(reader_t *r, int on)
{
	r->busy = on;
	if (r->shared)
		r->shared->receiving += on ? 1 : -1;
}

/* rd:receive([pattern [, prefix]], timeout, partial)
 *   -> data | nil, err, partial
 * timeout: seconds per recv (nil or < 0: none; 0: only what is there).
 * partial (receivepartial): with "*a" or a count, return as soon as some
 * data came, as nil, "timeout", partial.
 *
 * On a weft TCP socket the reader receives itself (lw_sock_recv) and
 * waits with its own continuation, direct_k; any other stream's recv
 * method is called with lua_callk and returns to call_k. */
enum { CTX_RECV, CTX_FAIR };

static int call_k(lua_State *L, int status, lua_KContext ctx);
static int direct_k(lua_State *L, int status, lua_KContext ctx);

/* Receive until the pattern is met (or fails). */
static int pump(lua_State *L, reader_t *r, int pat, lua_Integer count)
{
	lw_buffer_t *st = r->store;
	for (;;) {
		if (lua_toboolean(L, 5) && pat != PAT_LINE && r->end > r->start)
			return fail(L, r, bytes(r), pat, "timeout");
		int nres = make_room(L, r, pat, count);
		if (nres)
			return nres;
		if (!r->sock) {
			lua_getiuservalue(L, 1, UV_RECV);
			lua_getiuservalue(L, 1, UV_SOCK);
			lua_getiuservalue(L, 1, UV_VIEW);
			lw_buffer_t *v = lua_touserdata(L, -1);
			v->off = r->end;
			v->len = st->len - r->end;
			lua_pushinteger(L, (lua_Integer)v->len);
			push_expires(L);
			busy(r, 1);
			lua_callk(L, 4, 2, 0, call_k);
			return call_k(L, LUA_YIELD, 0);
		}
		lw_state_t *S = lw_S(L);
		lua_Number at;
		uint64_t deadline = expires(L, &at) ? weft_clock_s2ns(at) : UINT64_MAX;
		ssize_t n = lw_sock_recv(L, S, r->sock, st->data + r->end, st->len - r->end,
					 deadline);
		if (n == LW_WAITING) {
			if (r->end == 0)
				give_up(r);
			busy(r, 1);
			return lw_await(L, CTX_RECV, direct_k);
		}
		nres = got(L, r, pat, count, n,
			   n < 0 ? luasocket_error(weft_strerror((int)n)) : NULL);
		/* Each recv that brought bytes counts for the thread's budget,
		 * as in s:recv. */
		int fair = n > 0 && lw_fair(L, S);
		if (nres)
			return fair && nres == 1 ? lw_fair_yield(L, S, 0, result_k) : nres;
		if (fair)
			return lw_fair_yield(L, S, CTX_FAIR, direct_k);
	}
}

/* Back from the stream's recv: n, or nil, err (at 6, 7). */
static int call_k(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	(void)ctx;
	reader_t *r = lua_touserdata(L, 1);
	lua_Integer count = 0;
	int pat = pattern_of(L, &count);
	busy(r, 0);
	int isnum;
	lua_Integer n = lua_tointegerx(L, 6, &isnum);
	int nres = got(L, r, pat, count, n, isnum ? NULL : luasocket_error(lua_tostring(L, 7)));
	if (nres)
		return nres; /* the recv counted */
	lua_settop(L, 5);
	return pump(L, r, pat, count);
}

/* Woken from a wait of lw_sock_recv, or after a fairness yield. */
static int direct_k(lua_State *L, int status, lua_KContext ctx)
{
	(void)status;
	reader_t *r = lua_touserdata(L, 1);
	lua_Integer count = 0;
	int pat = pattern_of(L, &count);
	int code = lw_wakecode(L);
	if (ctx == CTX_RECV) {
		busy(r, 0);
		if (code < 0)
			return got(L, r, pat, count, code, luasocket_error(weft_strerror(code)));
	}
	return pump(L, r, pat, count);
}

static int rd_receive(lua_State *L)
{
	reader_t *r = checkreader(L, 1);
	if (r->busy) {
		/* One reader at a time: a second one would take the first
		 * one's bytes. */
		lua_pushnil(L);
		lua_pushliteral(L, "Operation already in progress");
		return 2;
	}
	lua_Integer count = 0;
	int pat = pattern_of(L, &count);
	if (!lua_isnoneornil(L, 3))
		luaL_checkstring(L, 3);
	lua_settop(L, 5);
	if (satisfy(L, r, bytes(r), pat, count))
		return satisfied(L, r);
	return pump(L, r, pat, count);
}

/* rd:buffered() -> bytes received and not yet returned */
static int rd_buffered(lua_State *L)
{
	reader_t *r = checkreader(L, 1);
	lua_pushinteger(L, (lua_Integer)(r->end - r->start));
	return 1;
}

/* rd:capacity() -> bytes of storage the reader holds (0 while it waits
 * with nothing buffered: see give_up) */
static int rd_capacity(lua_State *L)
{
	reader_t *r = checkreader(L, 1);
	lua_pushinteger(L, (lua_Integer)r->store->len);
	return 1;
}

/* rd:take() -> the buffered bytes (consumed) */
static int rd_take(lua_State *L)
{
	reader_t *r = checkreader(L, 1);
	lua_pushlstring(L, bytes(r) + r->start, r->end - r->start);
	r->start = r->end = 0;
	return 1;
}

/* core.copas_yield(): the running thread goes to the back of the run
 * queue (it runs again on the next loop step). */
static int yield_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_wakecode(L);
	return 0;
}

static int l_yield(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lw_waiter(L, S);
	return lw_fair_yield(L, S, 0, yield_k);
}

static const luaL_Reg reader_methods[] = {
    {"receive", rd_receive},
    {"buffered", rd_buffered},
    {"take", rd_take},
    {"capacity", rd_capacity},
    {NULL, NULL},
};

/* core.copas_gettime() -> seconds since the epoch (fractional) */
static int l_gettime(lua_State *L)
{
	lua_pushnumber(L, (lua_Number)weft_clock_wall());
	return 1;
}

static const luaL_Reg counter_methods[] = {
    {"get", counter_get},
    {"limit", counter_limit},
    {NULL, NULL},
};

static const luaL_Reg counter_meta[] = {
    {"__gc", counter_gc},
    {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"copas_counter", l_counter}, {"copas_gettime", l_gettime}, {"copas_reader", l_reader},
    {"copas_errstr", l_errstr},   {"copas_yield", l_yield},     {NULL, NULL},
};

void lw_open_copas(lua_State *L, lw_state_t *S)
{
	lw_newclass(L, S, LW_READER, reader_methods, NULL);
	lw_newclass(L, S, LW_COUNTER, counter_methods, counter_meta);
	lw_register(L, S, funcs);
}
