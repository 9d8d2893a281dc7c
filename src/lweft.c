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

static const char STATE_KEY = 'S';
static const char ATTACH_KEY = 'A';

/* What weft_lua_attach leaves in the registry for weft__open. */
typedef struct attach {
	weft_runtime_t *rt;
	int index, count;
} attach_t;

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

/* weft.epoll_fd([epfd]): get the runtime's shared poller; set = join the
 * runtime of this process that owns epfd (a Lua state running on another
 * thread), so that both states share its listeners, channels and jobs.
 * A state can join only while it has no sockets open (they are counted
 * in the old runtime's fd table) and no spawned jobs queued (counted in
 * the old runtime's total). */
static int l_epoll_fd(lua_State *L)
{
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
		lua_pushliteral(L, "not the poller of a weft runtime in this process");
		return 2;
	}
	int rc = weft_worker_move(S->w, rt);
	if (rc < 0) {
		weft_runtime_free(rt);
		luaL_pushfail(L);
		lua_pushliteral(L, "this state has open sockets or queued jobs: join before creating any");
		return 2;
	}
	weft_runtime_free(S->rt);
	S->rt = rt;
	lua_pushinteger(L, fd);
	return 1;
}

/* weft.iocp([h]): Windows only. */
static int l_iocp(lua_State *L)
{
	luaL_pushfail(L);
	lua_pushliteral(L, "not supported");
	return 2;
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

static int state_gc(lua_State *L)
{
	lw_state_t *S = lua_touserdata(L, 1);
	if (S->closed)
		return 0;
	S->closed = 1;
	/* Resolver threads post their completions to this worker: wait for
	 * the ones in flight so that none touches a freed inbox. */
	while (atomic_load(&S->ext_pending) > 0) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL);
	}
	lw_close_sched(S);
	lw_spawn_close(L, S);
	weft_worker_free(S->w);
	weft_runtime_free(S->rt);
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

/* weft.workers() -> how many workers the launcher (or embedder) runs */
static int l_workers(lua_State *L)
{
	lua_pushinteger(L, lw_S(L)->worker_count);
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
	return weft_runtime_new(-1, out);
}

void weft_lua_runtime_free(weft_runtime_t *rt)
{
	weft_runtime_free(rt);
}

static int attach_gc(lua_State *L)
{
	attach_t *a = lua_touserdata(L, 1);
	if (a->rt)
		weft_runtime_free(a->rt); /* attached but never loaded */
	a->rt = NULL;
	return 0;
}

int weft_lua_attach(lua_State *L, weft_runtime_t *rt, int index, int count)
{
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &STATE_KEY) != LUA_TNIL) {
		lua_pop(L, 1);
		return -1;
	}
	lua_pop(L, 1);
	attach_t *a = lua_newuserdatauv(L, sizeof *a, 0);
	a->rt = weft_runtime_ref(rt);
	a->index = index;
	a->count = count;
	lua_newtable(L);
	lua_pushcfunction(L, attach_gc);
	lua_setfield(L, -2, "__gc");
	lua_setmetatable(L, -2);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &ATTACH_KEY);
	return 0;
}

int weft__open(lua_State *L)
{
	/* One record per lua_State: a second require of the module reuses it. */
	lw_state_t *S;
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
		S->owner = pthread_self();
		lua_newtable(L);
		lua_pushcfunction(L, state_gc);
		lua_setfield(L, -2, "__gc");
		lua_setmetatable(L, -2);
		lua_rawsetp(L, LUA_REGISTRYINDEX, &STATE_KEY);
		S->worker_index = 1;
		S->worker_count = 1;
		int err;
		if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ATTACH_KEY) == LUA_TUSERDATA) {
			attach_t *a = lua_touserdata(L, -1);
			S->rt = a->rt; /* the attach reference passes to the state */
			S->worker_index = a->index;
			S->worker_count = a->count;
			a->rt = NULL;
			err = 0;
		} else {
			err = weft_runtime_new(-1, &S->rt);
		}
		lua_pop(L, 1);
		if (err == 0) {
			err = weft_worker_new(S->rt, &S->w);
			if (err < 0) {
				weft_runtime_free(S->rt);
				S->rt = NULL;
			}
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
	lw_open_tls(L, S);
	lua_pushliteral(L, PACKAGE_VERSION);
	lua_setfield(L, -2, "_VERSION");
	return 1;
}
