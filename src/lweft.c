/* The weft.core module: state record, shared helpers, module assembly. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "clock.h"
#include "error.h"
#include "lserial.h"
#include "lweft.h"
#include "weft.h"
#include "poller.h"
#include "resolver.h"

/* weft.h's limit is the runtime's worker table. */
_Static_assert(WEFT_LUA_MAX_STATES == WEFT_MAX_WORKERS, "weft.h and worker.h disagree");

static const char STATE_KEY = 'S';
static const char ATTACH_KEY = 'A';

/* Which copy of weft a state belongs to.  The keys above are addresses in
 * this copy, invisible to another one: a program that linked the runtime
 * statically and attached a state, whose `require "weft"` then loads
 * weft/core.so with a second copy of the runtime, would run that state
 * alone without a word.  So the first copy to attach or load a state
 * writes the address of COPY under a name every copy knows, and the
 * others refuse the state. */
static const char COPY = 'C';
#define COPY_FIELD "weft.copy"

/* What weft_lua_attach leaves in the registry for weft__open: the
 * runtime reference and the member number claimed (rt NULL: none). */
typedef struct attach {
	weft_runtime_t *rt;
	int index, count;
} attach_t;

/* Whether L is this copy's or nobody's (then it becomes this copy's). */
static int own_copy(lua_State *L)
{
	int t = lua_getfield(L, LUA_REGISTRYINDEX, COPY_FIELD);
	const void *p = lua_touserdata(L, -1);
	lua_pop(L, 1);
	if (t == LUA_TLIGHTUSERDATA)
		return p == &COPY;
	if (t != LUA_TNIL)
		return 0;
	lua_pushlightuserdata(L, (void *)&COPY);
	lua_setfield(L, LUA_REGISTRYINDEX, COPY_FIELD);
	return 1;
}

#define OTHER_COPY_MSG                                                                   \
	"weft: this Lua state belongs to another copy of the weft runtime in this "      \
	"process (a program linked with the static libweft, whose state then loaded "    \
	"the module weft/core.so?): link the program with the shared libweft, or give "  \
	"its states weft.core from the program (package.preload with luaopen_weft_core)"

const char lw_tag_socket, lw_tag_buffer;

void *lw_testclass(lua_State *L, int idx, const void *tag)
{
	void *p = lua_touserdata(L, idx);
	/* lua_rawlen is 0 for a light userdata: only a full userdata at least
	 * a pointer long is read. */
	if (p && lua_rawlen(L, idx) >= sizeof tag && *(const void *const *)p == tag)
		return p;
	return NULL;
}

void lw_register(lua_State *L, lw_state_t *S, const luaL_Reg *funcs)
{
	for (; funcs->name; funcs++) {
		lua_pushlightuserdata(L, S);
		lua_pushcclosure(L, funcs->func, 1);
		lua_setfield(L, -2, funcs->name);
	}
}

void lw_newclass(lua_State *L, lw_state_t *S, const char *name, const luaL_Reg *methods,
		 const luaL_Reg *meta)
{
	luaL_newmetatable(L, name);
	if (meta)
		lw_register(L, S, meta);
	if (methods) {
		lua_getfield(L, -1, "__index");
		if (lua_isnil(L, -1)) {
			lua_pop(L, 1);
			lua_newtable(L);
			lua_pushvalue(L, -1);
			lua_setfield(L, -3, "__index");
		}
		lw_register(L, S, methods);
		lua_pop(L, 1);
	}
	lua_pop(L, 1);
}

int lw_error(lua_State *L, int code)
{
	luaL_pushfail(L);
	lua_pushstring(L, weft_strerror(code));
	return 2;
}

int lw_error_partial(lua_State *L, int code, lua_Integer partial)
{
	lw_error(L, code);
	lua_pushinteger(L, partial);
	return 3;
}

uint64_t lw_deadline(lua_State *L, int idx)
{
	if (lua_isnoneornil(L, idx))
		return UINT64_MAX;
	return weft_clock_s2ns(luaL_checknumber(L, idx));
}

/* Coroutines made by weft.cowrap carry this tag in their extra space: they
 * may wait on behalf of the weft thread that runs them. */
#define TAG_COWRAP ((uintptr_t)-1)

static uintptr_t *extra(lua_State *co)
{
	return (uintptr_t *)lua_getextraspace(co);
}

void lw_tag_cowrap(lua_State *co)
{
	*extra(co) = TAG_COWRAP;
}

/* Weft threads carry slot + 1 in their extra space; a reused slot is told
 * apart by checking the slot still maps to this coroutine. */
uint32_t lw_slot_of(lw_state_t *S, lua_State *co)
{
	uintptr_t v = *extra(co);
	if (v == 0 || v == TAG_COWRAP || v - 1 >= S->cap || S->threads[v - 1] != co)
		return LW_NONE;
	return (uint32_t)(v - 1);
}

void lw_set_slot(lua_State *co, uint32_t slot)
{
	*extra(co) = slot == LW_NONE ? 0 : (uintptr_t)slot + 1;
}

uint32_t lw_waiter(lua_State *L, lw_state_t *S)
{
	uint32_t cur = S->current;
	if (cur != LW_NONE && (S->threads[cur] == L || *extra(L) == TAG_COWRAP))
		return cur;
	luaL_error(L, "weft: this call waits, so it must run inside a weft thread "
		      "(weft.newthread/weft.thread/weft.run)");
	return LW_NONE;
}

/* What a waiting call yields: the scheduler knows the wait from the worker
 * and resumes the thread with the wake-up code. */
static char MARK_WAIT;

int lw_await(lua_State *L, lua_KContext ctx, lua_KFunction k)
{
	lua_pushlightuserdata(L, &MARK_WAIT);
	return lua_yieldk(L, 1, ctx, k);
}

int lw_wakecode(lua_State *L)
{
	int code = (int)lua_tointeger(L, -1);
	lua_pop(L, 1);
	return code;
}

int lw_fair_yield(lua_State *L, lw_state_t *S, lua_KContext ctx, lua_KFunction k)
{
	weft_worker_yield(S->w, S->current);
	return lw_await(L, ctx, k);
}

void *lw_mark_wait(void)
{
	return &MARK_WAIT;
}

/* weft.clock() */
static int l_clock(lua_State *L)
{
	lua_pushnumber(L, weft_clock());
	return 1;
}

/* weft.epoll_fd([epfd]) (Linux), weft.iocp([h]) (Windows): get the
 * runtime's shared poller; set = join the runtime of this process that
 * owns it (a Lua state running on another thread), so that both states
 * share its listeners, channels and jobs.  A state can join only while it
 * has no sockets open (they are counted in the old runtime's fd table)
 * and no spawned jobs queued (counted in the old runtime's total).  The
 * other platform's name says "not supported". */
static int poller_handle(lua_State *L, const char *kind)
{
	if (strcmp(weft_poller_kind(), kind) != 0) {
		luaL_pushfail(L);
		lua_pushliteral(L, "not supported on this platform");
		return 2;
	}
	lw_state_t *S = lw_S(L);
	int own = weft_poller_fd(weft_runtime_poller(S->rt));
	if (lua_isnoneornil(L, 1)) {
		lua_pushinteger(L, own);
		return 1;
	}
	lua_Integer fd = luaL_checkinteger(L, 1);
	if (fd == own) {
		lua_pushinteger(L, own);
		return 1;
	}
	weft_runtime_t *rt;
	if (fd < 0 || fd > INT_MAX || weft_runtime_join((int)fd, &rt) < 0) {
		luaL_pushfail(L);
		lua_pushliteral(L, "not the poller of a weft runtime in this process "
				   "(or of one run by another copy of weft)");
		return 2;
	}
	/* A number of its own in the new runtime, above those attached
	 * states declared. */
	int index = weft_runtime_claim_any(rt);
	int rc = index < 0 ? index : weft_worker_move(S->w, rt);
	if (rc < 0) {
		if (index > 0)
			weft_runtime_release(rt, index, 0);
		weft_runtime_free(rt);
		luaL_pushfail(L);
		if (rc == -EBUSY)
			lua_pushliteral(L, "this state has open sockets or queued jobs: "
					   "join before creating any");
		else if (rc == -EUSERS)
			lua_pushfstring(L, "that runtime has %d states already",
					WEFT_LUA_MAX_STATES);
		else
			lua_pushstring(L, weft_strerror(rc));
		return 2;
	}
	weft_runtime_release(S->rt, S->worker_index, S->declared);
	weft_runtime_free(S->rt);
	S->rt = rt;
	S->worker_index = index;
	S->declared = 0;
	lua_pushinteger(L, fd);
	return 1;
}

static int l_epoll_fd(lua_State *L)
{
	return poller_handle(L, "epoll");
}

static int l_iocp(lua_State *L)
{
	return poller_handle(L, "iocp");
}

/* weft.core._resolver_delay(ms): test hook simulating a slow resolver. */
static int l_resolver_delay(lua_State *L)
{
	lua_Integer ms = luaL_checkinteger(L, 1);
	luaL_argcheck(L, ms >= 0 && ms <= 600000, 1, "out of range");
	weft_resolver_set_delay((unsigned)ms);
	return 0;
}

/* The counters' names, in weft_worker_stats_t order. */
static const char *const stat_names[WEFT_NSTATS] = {
	"events", "stale_events", "wakes", "timers", "inbox", "handoffs",
	"polls", "lost_wakes", "parks", "unparks", "jobs_run", "jobs_stolen", "spins",
};

static void push_counters(lua_State *L, const uint64_t *c)
{
	for (int k = 0; k < WEFT_NSTATS; k++) {
		lua_pushinteger(L, (lua_Integer)c[k]);
		lua_setfield(L, -2, stat_names[k]);
	}
}

/* weft.stats(): this worker's counters and gauges, and in `total` the
 * counters of every worker of the runtime added up (with `workers`). */
static int l_stats(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	weft_worker_t *w = S->w;
	uint64_t mine[WEFT_NSTATS], sum[WEFT_NSTATS];
	_Atomic uint64_t *c = (_Atomic uint64_t *)&w->stats;
	for (int k = 0; k < WEFT_NSTATS; k++)
		mine[k] = atomic_load_explicit(&c[k], memory_order_relaxed);
	lua_createtable(L, 0, WEFT_NSTATS + 8);
	push_counters(L, mine);
	lua_pushinteger(L, S->worker_index);
	lua_setfield(L, -2, "worker");
	lua_pushinteger(L, (lua_Integer)weft_runq_len(&w->runq));
	lua_setfield(L, -2, "runq");
	lua_pushinteger(L, (lua_Integer)w->nalive);
	lua_setfield(L, -2, "waiting");
	lua_pushinteger(L, (lua_Integer)w->nfds);
	lua_setfield(L, -2, "fds");
	lua_pushinteger(L, (lua_Integer)S->nthreads);
	lua_setfield(L, -2, "coroutines");
	lua_pushinteger(L, (lua_Integer)atomic_load(&w->jobs.len));
	lua_setfield(L, -2, "jobs_queued");
	int n = weft_runtime_stats(S->rt, sum);
	lua_createtable(L, 0, WEFT_NSTATS + 1);
	push_counters(L, sum);
	lua_pushinteger(L, n);
	lua_setfield(L, -2, "workers");
	lua_setfield(L, -2, "total");
	return 1;
}

/* Drop a runtime reference.  The last runtime of the process to go
 * stops the resolver pool (without waiting for lookups in flight), so
 * that nothing of weft is left running once every state is closed. */
static void release_runtime(weft_runtime_t *rt)
{
	weft_runtime_free(rt);
	if (weft_runtime_count() == 0)
		weft_resolver_stop();
}

static int state_gc(lua_State *L)
{
	lw_state_t *S = lua_touserdata(L, 1);
	if (S->closed)
		return 0;
	S->closed = 1;
	/* Resolver threads post their completions to this worker: cut them
	 * off (lookups in flight finish alone, never waited for). */
	lw_close_addr(S);
	lw_close_sched(S);
	lw_spawn_close(L, S);
	weft_worker_free(S->w);
	weft_runtime_release(S->rt, S->worker_index, S->declared);
	release_runtime(S->rt);
	weft_free(S->threads);
	weft_free(S->tm_free);
	S->tm_free = NULL;
	S->w = NULL;
	S->rt = NULL;
	S->threads = NULL;
	return 0;
}

/* weft.worker() -> this state's worker index (1-based) */
static int l_worker(lua_State *L)
{
	lua_pushinteger(L, lw_S(L)->worker_index);
	return 1;
}

/* weft.workers() -> how many workers the launcher (or embedder) runs:
 * the count declared by weft_lua_attach, or the highest number a state
 * of the runtime has, whichever is larger. */
static int l_workers(lua_State *L)
{
	lua_pushinteger(L, weft_runtime_members(lw_S(L)->rt));
	return 1;
}

static const luaL_Reg core_funcs[] = {
	{"clock", l_clock},
	{"epoll_fd", l_epoll_fd},
	{"iocp", l_iocp},
	{"stats", l_stats},
	{"worker", l_worker},
	{"workers", l_workers},
	{"_resolver_delay", l_resolver_delay},
	{NULL, NULL},
};

int weft_lua_runtime_new(weft_runtime_t **out)
{
	if (!out)
		return -EINVAL;
	return weft_runtime_new(-1, out);
}

void weft_lua_runtime_free(weft_runtime_t *rt)
{
	release_runtime(rt);
}

void weft_lua_runtime_exit(weft_runtime_t *rt)
{
	if (rt)
		weft_runtime_exit(rt);
	else
		weft_runtime_exit_all();
}

const char *weft_lua_strerror(int code)
{
	switch (code) {
	case 0:
		return "success";
	case WEFT_LUA_ELOADED:
		return "the Lua state has loaded weft already: attach it before it requires weft";
	case WEFT_LUA_EATTACHED:
		return "the Lua state is attached to a runtime already";
	case WEFT_LUA_EINDEX:
		return "the index is not within 1..count";
	case WEFT_LUA_ECOUNT:
		return "the count is not within 1..WEFT_LUA_MAX_STATES (256)";
	case WEFT_LUA_ECOUNTS:
		return "the count differs from the one other states of the runtime declared";
	case WEFT_LUA_ETAKEN:
		return "another open state of the runtime has this index";
	case WEFT_LUA_ECOPY:
		return "the Lua state belongs to another copy of the weft runtime in this "
		       "process (it loaded weft/core.so over another libweft)";
	case WEFT_LUA_EARG:
		return "no Lua state or no runtime given";
	case WEFT_LUA_ENOMEM:
		return "the Lua state ran out of memory";
	}
	return weft_strerror(code);
}

static int attach_gc(lua_State *L)
{
	attach_t *a = lua_touserdata(L, 1);
	if (a->rt) { /* attached but never loaded */
		weft_runtime_release(a->rt, a->index, 1);
		release_runtime(a->rt);
	}
	a->rt = NULL;
	return 0;
}

/* The part of weft_lua_attach that may run out of memory, protected:
 * returns a WEFT_LUA_E* code (or 0) and the empty attach record. */
static int attach_prepare(lua_State *L)
{
	int code = 0;
	if (!own_copy(L))
		code = WEFT_LUA_ECOPY;
	else if (lua_rawgetp(L, LUA_REGISTRYINDEX, &STATE_KEY) != LUA_TNIL)
		code = WEFT_LUA_ELOADED;
	else if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ATTACH_KEY) == LUA_TUSERDATA &&
		 ((attach_t *)lua_touserdata(L, -1))->rt)
		code = WEFT_LUA_EATTACHED;
	if (code) {
		lua_pushinteger(L, code);
		lua_pushnil(L);
		return 2;
	}
	if (!lua_isuserdata(L, -1)) {
		attach_t *a = lua_newuserdatauv(L, sizeof *a, 0);
		*a = (attach_t){NULL, 0, 0};
		lua_newtable(L);
		lua_pushcfunction(L, attach_gc);
		lua_setfield(L, -2, "__gc");
		lua_setmetatable(L, -2);
		lua_pushvalue(L, -1);
		lua_rawsetp(L, LUA_REGISTRYINDEX, &ATTACH_KEY);
	}
	lua_pushinteger(L, 0);
	lua_insert(L, -2);
	return 2;
}

int weft_lua_attach(lua_State *L, weft_runtime_t *rt, int index, int count)
{
	if (!L || !rt)
		return WEFT_LUA_EARG;
	if (count < 1 || count > WEFT_LUA_MAX_STATES)
		return WEFT_LUA_ECOUNT;
	if (index < 1 || index > count)
		return WEFT_LUA_EINDEX;
	if (!lua_checkstack(L, 4))
		return WEFT_LUA_ENOMEM;
	lua_pushcfunction(L, attach_prepare);
	if (lua_pcall(L, 0, 2, 0) != LUA_OK) {
		lua_pop(L, 1);
		return WEFT_LUA_ENOMEM;
	}
	int code = (int)lua_tointeger(L, -2);
	attach_t *a = lua_touserdata(L, -1);
	lua_pop(L, 2);
	if (code)
		return code;
	int rc = weft_runtime_claim(rt, index, count);
	if (rc < 0)
		return rc == -EEXIST ? WEFT_LUA_ETAKEN : rc == -EINVAL ? WEFT_LUA_ECOUNTS
								 : WEFT_LUA_EINDEX;
	a->rt = weft_runtime_ref(rt);
	a->index = index;
	a->count = count;
	return 0;
}

int luaopen_weft_core(lua_State *L)
{
	return weft__open(L);
}

int weft__open(lua_State *L)
{
	/* One record per lua_State: a second require of the module reuses it. */
	lw_state_t *S;
	if (!own_copy(L))
		return luaL_error(L, OTHER_COPY_MSG);
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &STATE_KEY) == LUA_TUSERDATA) {
		S = lua_touserdata(L, -1);
		lua_pop(L, 1);
	} else {
		lua_pop(L, 1);
		S = lua_newuserdatauv(L, sizeof *S, 0);
		memset(S, 0, sizeof *S);
		S->current = LW_NONE;
		S->tm_idle = LW_NONE;
		S->budget = LW_IO_BUDGET;
		S->L = L;
		S->owner = weft_thread_self();
		lua_newtable(L);
		lua_pushcfunction(L, state_gc);
		lua_setfield(L, -2, "__gc");
		lua_setmetatable(L, -2);
		lua_rawsetp(L, LUA_REGISTRYINDEX, &STATE_KEY);
		int err;
		attach_t *a = NULL;
		if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ATTACH_KEY) == LUA_TUSERDATA)
			a = lua_touserdata(L, -1);
		if (a && a->rt) {
			/* The attach reference and number pass to the state. */
			S->rt = a->rt;
			S->worker_index = a->index;
			S->declared = 1;
			a->rt = NULL;
			err = 0;
		} else {
			err = weft_runtime_new(-1, &S->rt);
			if (err == 0)
				S->worker_index = weft_runtime_claim_any(S->rt); /* 1 */
		}
		lua_pop(L, 1);
		if (err == 0) {
			err = weft_worker_new(S->rt, &S->w);
			if (err < 0) {
				weft_runtime_release(S->rt, S->worker_index, S->declared);
				weft_runtime_free(S->rt);
				S->rt = NULL;
			}
		}
		if (err == -EUSERS) {
			S->closed = 1;
			return luaL_error(L, "weft: cannot start: the runtime has %d states already",
					  WEFT_LUA_MAX_STATES);
		}
		if (err < 0) {
			S->closed = 1;
			return luaL_error(L, "weft: cannot start the runtime: %s",
					  weft_strerror(err));
		}
		*extra(L) = 0;
	}
	lua_newtable(L);
	lw_register(L, S, core_funcs);
	lw_open_buffer(L, S);
	lw_open_addr(L, S);
	lw_open_socket(L, S);
	lw_open_sched(L, S);
	lw_open_serial(L, S);
	lw_open_channel(L, S);
	lw_open_spawn(L, S);
	lw_open_timer(L, S);
	lw_open_copas(L, S);
	lw_open_tls(L, S);
	lua_pushliteral(L, PACKAGE_VERSION);
	lua_setfield(L, -2, "_VERSION");
	return 1;
}
