/* Timers: weft.runat, weft.runafter, weft.runevery.
 *
 * A timer is a small userdata holding a wheel entry (in the worker's
 * callback wheel) and, as its user value, the function to call.  While it
 * is armed or due, a reference in a registry table keeps it alive, so a
 * program may drop the handle.  No thread is made per timer: the loop
 * hands the due timers to a runner thread, which calls their functions
 * one after another.  Only when a function waits (sleeps, does I/O) does
 * its runner stay with it, and the next due timer gets another runner;
 * a runner that finds nothing to do becomes the idle one, or ends when
 * there is one already.  So the functions run in weft threads, may wait,
 * and cost no coroutine when they don't.
 *
 * An error in a function ends its runner as an error in a thread named
 * "weft.timer" ends it (reported through weft.seterrorhandler's handler,
 * or on stderr), and a repeating timer whose function failed stops. */
#include "config.h"

#include <math.h>
#include <string.h>

#include "alloc.h"
#include "clock.h"
#include "lweft.h"

#define LW_TIMER "weft.timer"

static char TIMERS_KEY, RUNNER_KEY;

/* A timer the wheel has fired stays TM_ARMED until the runner takes it. */
enum { TM_IDLE, TM_ARMED, TM_RUNNING };

typedef struct lw_timer {
	weft_timer_t t; /* first: the worker hands out &t */
	uint64_t due;   /* ns: when it is (or was last) due */
	uint64_t every; /* ns between runs; 0 = once */
	int ref;        /* in the TIMERS table while armed or due */
	uint8_t state;
	uint8_t cancelled;
} lw_timer_t;

/* The table of held timers: upvalue 2 of the functions below, else from
 * the registry.  Its slots are handed out from a free list kept in C,
 * cheaper than luaL_ref's. */
static void push_timers(lua_State *L)
{
	if (lua_type(L, lua_upvalueindex(2)) == LUA_TTABLE)
		lua_pushvalue(L, lua_upvalueindex(2));
	else
		lua_rawgetp(L, LUA_REGISTRYINDEX, &TIMERS_KEY);
}

static void hold(lua_State *L, lw_state_t *S, int idx, lw_timer_t *tm)
{
	idx = lua_absindex(L, idx);
	int ref = S->tm_nfree ? S->tm_free[--S->tm_nfree] : ++S->tm_top;
	push_timers(L);
	lua_pushvalue(L, idx);
	lua_rawseti(L, -2, ref);
	lua_pop(L, 1);
	tm->ref = ref;
}

static void unhold(lua_State *L, lw_state_t *S, lw_timer_t *tm)
{
	push_timers(L);
	lua_pushnil(L);
	lua_rawseti(L, -2, tm->ref);
	lua_pop(L, 1);
	if (S->tm_nfree == S->tm_capfree) {
		uint32_t cap = S->tm_capfree ? 2 * S->tm_capfree : 256;
		int *v = weft_realloc(S->tm_free, cap * sizeof *v);
		if (!v) {
			tm->ref = LUA_NOREF; /* the slot is not reused: no harm */
			return;
		}
		S->tm_free = v;
		S->tm_capfree = cap;
	}
	S->tm_free[S->tm_nfree++] = tm->ref;
	tm->ref = LUA_NOREF;
}

/* Arm the timer at idx for tm->due.  A due time of "never" is not armed
 * (it would keep the loop alive for nothing). */
static void arm(lua_State *L, lw_state_t *S, int idx, lw_timer_t *tm)
{
	if (tm->due == UINT64_MAX) {
		tm->state = TM_IDLE;
		return;
	}
	hold(L, S, idx, tm);
	tm->state = TM_ARMED;
	weft_worker_timer_arm(S->w, &tm->t, tm->due);
}

/* Arguments are checked here with the public names (the functions are
 * reached through weft.*, whose names luaL_argerror would not give). */
static double check_args(lua_State *L, const char *name)
{
	if (lua_type(L, 1) != LUA_TNUMBER || lua_tonumber(L, 1) != lua_tonumber(L, 1))
		luaL_error(L, "bad argument #1 to '%s' (number expected, got %s)", name,
			   lua_type(L, 1) == LUA_TNUMBER ? "NaN" : luaL_typename(L, 1));
	/* A function, or anything callable. */
	if (lua_type(L, 2) != LUA_TFUNCTION) {
		int callable = luaL_getmetafield(L, 2, "__call") != LUA_TNIL;
		if (callable)
			lua_pop(L, 1);
		else
			luaL_error(L, "bad argument #2 to '%s' (function expected, got %s)", name,
				   luaL_typename(L, 2));
	}
	return lua_tonumber(L, 1);
}

static int new_timer(lua_State *L, uint64_t due, uint64_t every)
{
	lw_state_t *S = lw_S(L);
	lw_timer_t *tm = lua_newuserdatauv(L, sizeof *tm, 1);
	weft_timer_init(&tm->t);
	tm->due = due;
	tm->every = every;
	tm->ref = LUA_NOREF;
	tm->cancelled = 0;
	lua_pushvalue(L, lua_upvalueindex(3));
	lua_setmetatable(L, -2);
	lua_pushvalue(L, 2);
	lua_setiuservalue(L, -2, 1);
	arm(L, S, -1, tm);
	return 1;
}

/* weft.runat(t, f) -> timer */
static int l_runat(lua_State *L)
{
	return new_timer(L, weft_clock_s2ns(check_args(L, "runat")), 0);
}

static uint64_t after(lua_State *L, double s)
{
	if (s != s)
		luaL_argerror(L, 1, "not a number");
	if (!(s > 0))
		return weft_clock_ns();
	return weft_clock_s2ns(weft_clock() + s);
}

/* weft.runafter(s, f) -> timer */
static int l_runafter(lua_State *L)
{
	return new_timer(L, after(L, check_args(L, "runafter")), 0);
}

/* weft.runevery(s, f) -> timer */
static int l_runevery(lua_State *L)
{
	double s = check_args(L, "runevery");
	if (!(s > 0 && s < 1e9))
		return luaL_error(L, "bad argument #1 to 'runevery' (the interval must be a "
				     "positive number of seconds)");
	uint64_t every = (uint64_t)(s * 1e9);
	return new_timer(L, after(L, s), every ? every : 1);
}

static void cancel(lua_State *L, lw_state_t *S, lw_timer_t *tm)
{
	tm->cancelled = 1;
	/* A due timer stays queued (still held); the runner drops it. */
	if (tm->state == TM_ARMED && weft_worker_timer_disarm(S->w, &tm->t)) {
		unhold(L, S, tm);
		tm->state = TM_IDLE;
	}
}

/* timer.cancel, bound to its timer (upvalue 2), so that both timer:cancel()
 * and timer.cancel() work: the function will not run (again); a run in
 * progress completes.  Idempotent. */
static int t_cancel(lua_State *L)
{
	cancel(L, lw_S(L), lua_touserdata(L, lua_upvalueindex(2)));
	return 0;
}

/* __index: "cancel" is the one field. */
static int t_index(lua_State *L)
{
	lw_timer_t *tm = luaL_checkudata(L, 1, LW_TIMER);
	const char *k = lua_tostring(L, 2);
	if (!k || strcmp(k, "cancel") != 0)
		return 0;
	(void)tm;
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_pushvalue(L, 1);
	lua_pushcclosure(L, t_cancel, 2);
	return 1;
}

static int t_tostring(lua_State *L)
{
	lua_pushfstring(L, "weft.timer: %p", lua_touserdata(L, 1));
	return 1;
}

/* After the function of the timer at index 1 returned (its first result
 * at index 2): run it again, or let it go. */
static void ran(lua_State *L, lw_state_t *S)
{
	lw_timer_t *tm = lua_touserdata(L, 1);
	int stop = lua_type(L, 2) == LUA_TBOOLEAN && !lua_toboolean(L, 2);
	tm->state = TM_IDLE;
	if (tm->every && !tm->cancelled && !stop) {
		/* Keep the cadence, without a burst after a stall. */
		uint64_t now = weft_clock_ns();
		tm->due = tm->due > UINT64_MAX - tm->every ? UINT64_MAX : tm->due + tm->every;
		if (tm->due < now)
			tm->due = now;
		arm(L, S, 1, tm);
	}
}

enum { K_TOP, K_RAN };

static int runner_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	(void)status;
	if (ctx == K_RAN)
		ran(L, S);
	/* Resumed from outside while idle: no longer the idle one. */
	if (S->tm_idle == S->current)
		S->tm_idle = LW_NONE;
	for (;;) {
		lua_settop(L, 0);
		weft_timer_t *t = weft_worker_timer_next(S->w);
		if (!t) {
			if (S->tm_idle != LW_NONE)
				return 0; /* another runner waits already */
			S->tm_idle = S->current;
			lua_pushlightuserdata(L, lw_mark_suspend());
			return lua_yieldk(L, 1, K_TOP, runner_k);
		}
		lw_timer_t *tm = (lw_timer_t *)t;
		lua_rawgeti(L, lua_upvalueindex(2), tm->ref);
		unhold(L, S, tm);
		if (tm->cancelled) {
			tm->state = TM_IDLE;
			continue;
		}
		tm->state = TM_RUNNING;
		lua_getiuservalue(L, 1, 1);
		/* Each function is a resume of its own for weft.setbudget. */
		lw_budget_restart(S, L);
		lua_callk(L, 0, 1, K_RAN, runner_k);
		ran(L, S);
	}
}

static int runner(lua_State *L)
{
	return runner_k(L, LUA_OK, K_TOP);
}

int lw_timer_step(lua_State *L, lw_state_t *S)
{
	int n = 0;
	while (weft_worker_timers_due(S->w)) {
		if (S->tm_idle != LW_NONE) {
			uint32_t slot = S->tm_idle;
			S->tm_idle = LW_NONE;
			lw_thread_resume(L, S, slot, 0);
		} else {
			lua_rawgetp(L, LUA_REGISTRYINDEX, &RUNNER_KEY);
			lw_thread_start(L, S, 0, "weft.timer");
		}
		n++;
	}
	return n;
}

static const luaL_Reg t_meta[] = {
	{"__index", t_index},
	{"__tostring", t_tostring},
	{NULL, NULL},
};

static const luaL_Reg funcs[] = {
	{"runat", l_runat},
	{"runafter", l_runafter},
	{"runevery", l_runevery},
	{NULL, NULL},
};

void lw_open_timer(lua_State *L, lw_state_t *S)
{
	lua_newtable(L);
	lua_pushvalue(L, -1);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &TIMERS_KEY);
	int timers = lua_gettop(L);
	lua_pushlightuserdata(L, S);
	lua_pushvalue(L, timers);
	lua_pushcclosure(L, runner, 2);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &RUNNER_KEY);
	lw_newclass(L, S, LW_TIMER, NULL, t_meta);
	luaL_getmetatable(L, LW_TIMER);
	int mt = lua_gettop(L);
	/* The functions take the state, the timers table and the metatable
	 * as upvalues. */
	for (const luaL_Reg *f = funcs; f->name; f++) {
		lua_pushlightuserdata(L, S);
		lua_pushvalue(L, timers);
		lua_pushvalue(L, mt);
		lua_pushcclosure(L, f->func, 3);
		lua_setfield(L, timers - 1, f->name);
	}
	lua_pop(L, 2);
}
