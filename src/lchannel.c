/* Channels between workers (weft.channel).  Values travel serialized
 * (lserial.c); a channel object is a handle to a lib/channel.c queue and
 * may itself be sent to another worker (in a channel message or spawn
 * arguments), where it names the same queue.
 *
 * Waiting follows the socket pattern: try, and when the queue is full
 * (send) or empty (recv), register with the channel and yield; the
 * channel wakes the thread through its worker's inbox, and the
 * continuation tries again. */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "alloc.h"
#include "channel.h"
#include "clock.h"
#include "error.h"
#include "lserial.h"
#include "lweft.h"

#define LW_CHANNEL "weft.channel"
#define DEFAULT_CAPACITY 64

typedef struct lchan {
	weft_chan_t *c;
} lchan_t;

static lchan_t *checkchan(lua_State *L, int idx)
{
	lchan_t *ch = luaL_checkudata(L, idx, LW_CHANNEL);
	if (!ch->c)
		luaL_error(L, "weft.channel: the channel object is released");
	return ch;
}

static void push_chan(lua_State *L, weft_chan_t *c)
{
	lchan_t *ch = lua_newuserdatauv(L, sizeof *ch, 0);
	ch->c = c;
	luaL_setmetatable(L, LW_CHANNEL);
}

static size_t capacity_arg(lua_State *L, int idx)
{
	lua_Integer n = luaL_optinteger(L, idx, DEFAULT_CAPACITY);
	luaL_argcheck(L, n >= 1 && n <= (1 << 24), idx, "capacity must be 1 to 2^24");
	return (size_t)n;
}

/* weft.channel([capacity]) or weft.channel(name, [capacity]) */
static int l_channel(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	weft_chan_t *c;
	int rc;
	if (lua_type(L, 1) == LUA_TSTRING)
		rc = weft_chan_named(S->rt, lua_tostring(L, 1), capacity_arg(L, 2), &c);
	else
		rc = weft_chan_new(capacity_arg(L, 1), &c);
	if (rc < 0)
		return luaL_error(L, "weft.channel: %s", weft_strerror(rc));
	push_chan(L, c);
	return 1;
}

static int ch_gc(lua_State *L)
{
	lchan_t *ch = luaL_checkudata(L, 1, LW_CHANNEL);
	if (ch->c)
		weft_chan_unref(ch->c);
	ch->c = NULL;
	return 0;
}

/* Where a thread waits on a channel: the channel's waiter node, inside a
 * userdata on the waiting thread's stack, so it lives as long as the
 * wait.  `armed` while the thread is suspended in a wait: if the state is
 * closed then (lua_close runs every finaliser), the finaliser withdraws
 * the waiter, so the channel never wakes freed memory and a wake-up it
 * already had goes to another waiter.  The node's own reference keeps the
 * channel alive for that, whatever order the finalisers run in; the
 * worker, which the state's own finaliser frees, outlives the nodes:
 * Lua runs finalisers in the reverse order of their objects' marking,
 * and the state's was marked when the module was opened. */
typedef struct lwait {
	weft_chan_waiter_t wt;
	weft_chan_t *c; /* a reference, taken by the first wait */
	int armed;
} lwait_t;

static void lwait_release(lwait_t *lw)
{
	if (lw->armed)
		weft_chan_cancel(lw->c, &lw->wt);
	lw->armed = 0;
	if (lw->c)
		weft_chan_unref(lw->c);
	lw->c = NULL;
}

/* A message waiting to be sent, kept on the stack across yields; its
 * __gc frees it if the thread never gets to send it. */
typedef struct pending {
	lw_blob_t b;
	lwait_t wait;
} pending_t;

static const char PENDING_META = 'p';
static const char WAIT_META = 'w';

static int pending_gc(lua_State *L)
{
	pending_t *p = lua_touserdata(L, 1);
	lwait_release(&p->wait);
	lw_blob_free(&p->b);
	return 0;
}

static int wait_gc(lua_State *L)
{
	lwait_release(lua_touserdata(L, 1));
	return 0;
}

/* Back from a wait (status LUA_YIELD): its error code, or 0 to try again.
 * A wait that ended otherwise than by the channel's wake-up (a deadline)
 * withdraws the waiter, which passes on a wake-up it may have had. */
static int woke(lua_State *L, int status, lwait_t *lw)
{
	if (status != LUA_YIELD)
		return 0;
	int code = lw_wakecode(L);
	lw->armed = 0;
	if (code != 0)
		weft_chan_cancel(lw->c, &lw->wt);
	return code < 0 ? code : 0;
}

/* Begin slot's wait (until deadline) and fill lw's node for it. */
static void wait_begin(lwait_t *lw, weft_chan_t *c, lw_state_t *S, uint32_t slot, uint64_t deadline)
{
	if (!lw->c)
		lw->c = weft_chan_ref(c);
	lw->wt.w = S->w;
	lw->wt.slot = slot;
	lw->wt.seq = weft_worker_wait_ext_until(S->w, slot, deadline);
}

/* ch:send(v, [expires]) -> true | nil, "closed" | "timeout".  Stack: ch,
 * v, expires, pending. */
static int send_k(lua_State *L, int status, lua_KContext ctx)
{
	(void)ctx;
	lw_state_t *S = lw_S(L);
	lchan_t *ch = checkchan(L, 1);
	pending_t *p = lua_touserdata(L, 4);
	uint32_t slot = lw_waiter(L, S);
	int code = woke(L, status, &p->wait);
	if (code < 0)
		return lw_error(L, code);
	uint64_t deadline = lw_deadline(L, 3);
	int rc = weft_chan_send(ch->c, p->b.data, p->b.len, NULL);
	if (rc == -EAGAIN) {
		if (deadline != UINT64_MAX && weft_clock_ns() >= deadline)
			return lw_error(L, WEFT_ETIMEOUT);
		wait_begin(&p->wait, ch->c, S, slot, deadline);
		rc = weft_chan_send(ch->c, p->b.data, p->b.len, &p->wait.wt);
		if (rc == -EAGAIN) {
			p->wait.armed = 1;
			return lw_await(L, 0, send_k);
		}
		weft_worker_wait_abort(S->w, slot);
	}
	if (rc < 0)
		return lw_error(L, rc);
	p->b.data = NULL; /* the channel owns the bytes now */
	p->b.len = p->b.cap = 0;
	lua_pushboolean(L, 1);
	return 1;
}

static int ch_send(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	checkchan(L, 1);
	luaL_checkany(L, 2);
	lw_waiter(L, S);
	lua_settop(L, 3);
	pending_t *p = lua_newuserdatauv(L, sizeof *p, 0);
	memset(p, 0, sizeof *p);
	lua_rawgetp(L, LUA_REGISTRYINDEX, &PENDING_META);
	lua_setmetatable(L, -2);
	if (lw_serialize(L, 2, 1, 0, &p->b) < 0) {
		luaL_pushfail(L);
		lua_insert(L, -2);
		return 2;
	}
	return send_k(L, LUA_OK, 0);
}

/* ch:recv([expires]) -> v | nil, "closed" | "timeout".  Stack: ch,
 * expires, and the waiter once the thread has had to wait. */
static int recv_k(lua_State *L, int status, lua_KContext ctx)
{
	(void)ctx;
	lw_state_t *S = lw_S(L);
	lchan_t *ch = checkchan(L, 1);
	uint32_t slot = lw_waiter(L, S);
	lwait_t *lw = lua_touserdata(L, 3);
	int code = lw ? woke(L, status, lw) : 0;
	if (code < 0)
		return lw_error(L, code);
	uint64_t deadline = lw_deadline(L, 2);
	char *data;
	size_t len;
	int rc = weft_chan_recv(ch->c, &data, &len, NULL);
	if (rc == -EAGAIN) {
		if (deadline != UINT64_MAX && weft_clock_ns() >= deadline)
			return lw_error(L, WEFT_ETIMEOUT);
		if (!lw) {
			/* Made before the wait begins: it may raise. */
			lw = lua_newuserdatauv(L, sizeof *lw, 0);
			memset(lw, 0, sizeof *lw);
			lua_rawgetp(L, LUA_REGISTRYINDEX, &WAIT_META);
			lua_setmetatable(L, -2);
		}
		wait_begin(lw, ch->c, S, slot, deadline);
		rc = weft_chan_recv(ch->c, &data, &len, &lw->wt);
		if (rc == -EAGAIN) {
			lw->armed = 1;
			return lw_await(L, 0, recv_k);
		}
		weft_worker_wait_abort(S->w, slot);
	}
	if (rc < 0)
		return lw_error(L, rc);
	int n = lw_deserialize(L, data, len, 0);
	weft_free(data);
	if (n < 0) {
		luaL_pushfail(L);
		lua_insert(L, -2);
		return 2;
	}
	return n;
}

static int ch_recv(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	checkchan(L, 1);
	lw_waiter(L, S);
	lua_settop(L, 2);
	return recv_k(L, LUA_OK, 0);
}

static int ch_close(lua_State *L)
{
	weft_chan_close(checkchan(L, 1)->c);
	lua_pushboolean(L, 1);
	return 1;
}

static int ch_count(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)weft_chan_count(checkchan(L, 1)->c));
	return 1;
}

static int ch_capacity(lua_State *L)
{
	lua_pushinteger(L, (lua_Integer)weft_chan_capacity(checkchan(L, 1)->c));
	return 1;
}

static int ch_tostring(lua_State *L)
{
	lchan_t *ch = luaL_checkudata(L, 1, LW_CHANNEL);
	lua_pushfstring(L, "weft.channel: %p", (void *)ch->c);
	return 1;
}

/* Crossing workers: the payload is the queue's address.  Packing takes a
 * reference for the message in transit and unpacking hands it to the new
 * object, so the queue outlives its last object while a message naming it
 * is on its way.  A message that is never unpacked (dropped with its
 * channel) keeps that reference: the queue leaks, nothing dangles. */
static int pack_chan(lua_State *L, int idx, uint64_t out[2])
{
	lchan_t *ch = checkchan(L, idx);
	out[0] = (uint64_t)(uintptr_t)weft_chan_ref(ch->c);
	out[1] = 0;
	return 0;
}

static int unpack_chan(lua_State *L, const uint64_t in[2])
{
	push_chan(L, (weft_chan_t *)(uintptr_t)in[0]);
	return 0;
}

static const luaL_Reg methods[] = {
	{"send", ch_send},         {"recv", ch_recv},   {"close", ch_close},
	{"count", ch_count},       {"capacity", ch_capacity}, {NULL, NULL},
};

static const luaL_Reg meta[] = {
	{"__gc", ch_gc},
	{"__tostring", ch_tostring},
	{NULL, NULL},
};

void lw_open_channel(lua_State *L, lw_state_t *S)
{
	lw_newclass(L, S, LW_CHANNEL, methods, meta);
	lua_newtable(L);
	lua_pushcfunction(L, pending_gc);
	lua_setfield(L, -2, "__gc");
	lua_rawsetp(L, LUA_REGISTRYINDEX, &PENDING_META);
	lua_newtable(L);
	lua_pushcfunction(L, wait_gc);
	lua_setfield(L, -2, "__gc");
	lua_rawsetp(L, LUA_REGISTRYINDEX, &WAIT_META);
	lw_serial_register(LW_CHANNEL, pack_chan, unpack_chan);
	lua_pushlightuserdata(L, S);
	lua_pushcclosure(L, l_channel, 1);
	lua_setfield(L, -2, "channel");
}
