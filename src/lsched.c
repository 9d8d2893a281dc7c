/* Threads, the loop, sleeps and sleep jobs.
 *
 * A weft thread is a Lua coroutine with a slot in the worker.  The one
 * place that runs threads is dispatch(): it resumes a thread and looks at
 * what it yielded:
 *   MARK_WAIT            a call is waiting (the worker knows for what);
 *   MARK_TRANSFER co ... switch to co with the values (symmetric transfer);
 *   MARK_SUSPEND ...     or any plain yield: the thread is suspended and the
 *                        values go to whoever resumed it.
 * Waits never resume a thread directly: wake-ups go through the worker's
 * run queue and the loop resumes the thread with the wake-up code. */
#include "config.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "clock.h"
#include "error.h"
#include "lserial.h"
#include "lweft.h"

static char MARK_SUSPEND, MARK_TRANSFER;
static char THREADS_KEY, NAMES_KEY, FINISH_KEY, ERRH_KEY, ENV_KEY, BADYIELD_KEY;

enum { DONE_WAIT, DONE_SUSPEND, DONE_FINISHED, DONE_ERROR, DONE_ERRMEM, DONE_KILLED };

/* Wake handles (weft.wakehandle): a handle names one thread of one worker
 * and may travel to any worker, whose wakeup(...) makes the thread's
 * suspend return copies of the values, in the thread's own worker.  The
 * shared part is a mailbox of serialized value lists, so no wakeup is
 * lost to a race: values sent while the thread runs wait for its next
 * suspend, which then returns at once (after giving control away, as a
 * suspend always does).  The owner publishes each suspension (slot, seq)
 * while the mailbox is empty; the waker that finds it published takes it
 * and sends the one WEFT_WAKE_RESUME wake-up for it.  A wake-up made stale
 * by a direct weft.resume only loses its nudge, never its values. */
typedef struct whnode {
	struct whnode *next;
	lw_blob_t blob;
} whnode_t;

struct lw_whshared {
	weft_mutex_t lock;
	weft_worker_t *w; /* the owner's worker; NULL once the thread is gone */
	uint32_t slot;
	uint32_t seq;  /* the published suspension, while `suspended` */
	int suspended; /* published, and nobody has sent its wake-up yet */
	_Atomic int remote; /* a handle was passed on (maybe to another worker) */
	whnode_t *head, **tail;
	_Atomic long refs;
};
typedef struct lw_whshared whshared_t;

/* The shared part of slot's wake handles, or NULL if it has none. */
static whshared_t *wh_of(const lw_state_t *S, uint32_t slot)
{
	return S->wh && slot < S->cap ? S->wh[slot] : NULL;
}

static void wh_drain(whshared_t *sh)
{
	while (sh->head) {
		whnode_t *n = sh->head;
		sh->head = n->next;
		lw_blob_free(&n->blob);
		weft_free(n);
	}
	sh->tail = &sh->head;
}

static void wh_unref(whshared_t *sh)
{
	if (atomic_fetch_sub(&sh->refs, 1) == 1) {
		wh_drain(sh);
		weft_mutex_destroy(&sh->lock);
		weft_free(sh);
	}
}

/* Thread `slot` is gone (finished, or its state closes): its handles'
 * wakeup returns false from now on. */
static void wh_retire(lw_state_t *S, uint32_t slot)
{
	whshared_t *sh = wh_of(S, slot);
	if (!sh)
		return;
	S->wh[slot] = NULL;
	weft_mutex_lock(&sh->lock);
	sh->w = NULL;
	sh->suspended = 0;
	wh_drain(sh);
	weft_mutex_unlock(&sh->lock);
	wh_unref(sh);
}

/* Thread `slot` has just been suspended (weft_worker_suspend): with
 * values waiting it is woken at once, otherwise the suspension is
 * published for the next waker. */
static void wh_suspended(lw_state_t *S, uint32_t slot)
{
	whshared_t *sh = wh_of(S, slot);
	if (!sh)
		return;
	uint32_t seq = weft_worker_co(S->w, slot)->seq;
	weft_mutex_lock(&sh->lock);
	if (sh->head) {
		sh->suspended = 0;
		weft_worker_wake(S->w, slot, seq, WEFT_WAKE_RESUME);
	} else {
		sh->seq = seq;
		sh->suspended = 1;
		/* Another worker may wake it: the loop must wait for that. */
		if (atomic_load(&sh->remote))
			weft_worker_keepalive(S->w, slot);
	}
	weft_mutex_unlock(&sh->lock);
}

/* The oldest values in slot's mailbox, pushed onto L: their count.  A
 * list that cannot be rebuilt here (a function's module is missing)
 * arrives as nil, message. */
static int wh_take(lua_State *L, lw_state_t *S, uint32_t slot)
{
	whshared_t *sh = wh_of(S, slot);
	if (!sh)
		return 0;
	weft_mutex_lock(&sh->lock);
	whnode_t *n = sh->head;
	if (n && !(sh->head = n->next))
		sh->tail = &sh->head;
	weft_mutex_unlock(&sh->lock);
	if (!n)
		return 0;
	int top = lua_gettop(L);
	int k = lw_deserialize(L, n->blob.data, n->blob.len, 0);
	lw_blob_free(&n->blob);
	weft_free(n);
	if (k < 0) {
		lua_pushnil(L);
		lua_insert(L, top + 1);
		k = 2;
	}
	return k;
}

static void reg_table(lua_State *L, const void *key)
{
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) == LUA_TTABLE) {
		lua_pop(L, 1);
		return;
	}
	lua_pop(L, 1);
	lua_newtable(L);
	lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

static const char *thread_name(lua_State *L, uint32_t slot, char *buf, size_t size)
{
	lua_rawgetp(L, LUA_REGISTRYINDEX, &NAMES_KEY);
	lua_rawgeti(L, -1, (lua_Integer)slot + 1);
	const char *s = lua_tostring(L, -1);
	if (s)
		snprintf(buf, size, "%s", s);
	else
		snprintf(buf, size, "#%u", (unsigned)slot + 1);
	lua_pop(L, 2);
	return buf;
}

/* ------------------------------------------------------------------ */
/* Thread table */

static int grow_threads(lw_state_t *S, uint32_t slot)
{
	if (slot < S->cap)
		return 0;
	uint32_t cap = S->cap ? S->cap : 64;
	while (cap <= slot)
		cap *= 2;
	lua_State **t = weft_realloc(S->threads, (size_t)cap * sizeof *t);
	if (!t)
		return WEFT_ENOMEM;
	memset(t + S->cap, 0, (size_t)(cap - S->cap) * sizeof *t);
	S->threads = t;
	/* The wake handle table exists once a handle was made (most programs
	 * make none: a thread costs 8 bytes less). */
	if (S->wh) {
		struct lw_whshared **wh = weft_realloc(S->wh, (size_t)cap * sizeof *wh);
		if (!wh)
			return WEFT_ENOMEM; /* threads grew alone: harmless, cap unchanged */
		memset(wh + S->cap, 0, (size_t)(cap - S->cap) * sizeof *wh);
		S->wh = wh;
	}
	S->cap = cap;
	return 0;
}

/* weft.newthread(f [, name]) -> th */
static int l_newthread(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	luaL_checktype(L, 1, LUA_TFUNCTION);
	const char *name = luaL_optstring(L, 2, NULL);
	int64_t slot = weft_worker_co_new(S->w);
	if (slot < 0 || grow_threads(S, (uint32_t)slot) < 0) {
		if (slot >= 0)
			weft_worker_co_free(S->w, (uint32_t)slot);
		return luaL_error(L, "weft: out of memory");
	}
	lua_State *co = lua_newthread(L);
	lua_pushvalue(L, 1);
	lua_xmove(L, co, 1);
	S->threads[slot] = co;
	S->nthreads++;
	lw_set_slot(co, (uint32_t)slot);
	weft_worker_suspend(S->w, (uint32_t)slot);
	lua_rawgetp(L, LUA_REGISTRYINDEX, &THREADS_KEY);
	lua_pushvalue(L, -2);
	lua_rawseti(L, -2, slot + 1);
	lua_pop(L, 1);
	if (name) {
		lua_rawgetp(L, LUA_REGISTRYINDEX, &NAMES_KEY);
		lua_pushstring(L, name);
		lua_rawseti(L, -2, slot + 1);
		lua_pop(L, 1);
	}
	return 1;
}

/* The thread at the top of L's stack is done: run its finish handlers
 * with (th, ok, err) and free its slot.  ok: whether it returned; the
 * error object, if any, is at err_idx of L (0 = none). */
static void finish(lua_State *L, lw_state_t *S, uint32_t slot, int ok, int err_idx)
{
	lua_State *co = S->threads[slot];
	if (err_idx < 0)
		err_idx = lua_gettop(L) + err_idx + 1;
	lua_rawgetp(L, LUA_REGISTRYINDEX, &FINISH_KEY);
	lua_pushthread(co);
	lua_xmove(co, L, 1);
	int th = lua_gettop(L);
	lua_pushvalue(L, th);
	if (lua_rawget(L, -3) == LUA_TTABLE) {
		lua_pushvalue(L, th);
		lua_pushnil(L);
		lua_rawset(L, th - 1);
		lua_Integer n = luaL_len(L, -1);
		for (lua_Integer i = 1; i <= n; i++) {
			lua_rawgeti(L, -1, i);
			lua_pushvalue(L, th);
			lua_pushboolean(L, ok);
			if (err_idx)
				lua_pushvalue(L, err_idx);
			else
				lua_pushnil(L);
			if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
				fprintf(stderr, "weft: error in onthreadfinish handler: %s\n",
					luaL_tolstring(L, -1, NULL));
				lua_pop(L, 2);
			}
		}
	}
	lua_pop(L, 3); /* list or nil, thread, FINISH */

	/* weft.threadenv forgets the thread now, not when it is collected. */
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ENV_KEY) == LUA_TTABLE) {
		lua_pushthread(co);
		lua_xmove(co, L, 1);
		lua_pushnil(L);
		lua_rawset(L, -3);
	}
	lua_pop(L, 1);

	lua_rawgetp(L, LUA_REGISTRYINDEX, &BADYIELD_KEY);
	lua_pushthread(co);
	lua_xmove(co, L, 1);
	lua_pushnil(L);
	lua_rawset(L, -3);
	lua_pop(L, 1);

	wh_retire(S, slot);
	lw_set_slot(co, LW_NONE);
	S->threads[slot] = NULL;
	S->nthreads--;
	weft_worker_co_free(S->w, slot);
	lua_rawgetp(L, LUA_REGISTRYINDEX, &THREADS_KEY);
	lua_pushnil(L);
	lua_rawseti(L, -2, (lua_Integer)slot + 1);
	lua_pop(L, 1);
	lua_rawgetp(L, LUA_REGISTRYINDEX, &NAMES_KEY);
	lua_pushnil(L);
	lua_rawseti(L, -2, (lua_Integer)slot + 1);
	lua_pop(L, 1);
}

/* The count hook of weft.setbudget: a thread that runs its whole budget
 * of instructions without waiting fails, rather than freeze its worker. */
static void budget_hook(lua_State *co, lua_Debug *ar)
{
	(void)ar;
	luaL_error(co, "weft: instruction budget exceeded (the thread ran too long without "
		       "waiting; see weft.setbudget)");
}

/* Arm (or disarm) the budget on co for one resume: setting the hook
 * restarts its count. */
static void arm_budget(lw_state_t *S, lua_State *co)
{
	if (S->ibudget > 0)
		lua_sethook(co, budget_hook, LUA_MASKCOUNT, S->ibudget);
	else if (lua_gethook(co) == budget_hook)
		lua_sethook(co, NULL, 0, 0);
}

void lw_budget_restart(lw_state_t *S, lua_State *co)
{
	if (S->ibudget > 0)
		arm_budget(S, co);
}

/* A plain yield from a thread that has a bad-yield handler (set with
 * weft.core.onbadyield, for layers whose threads must not yield by
 * themselves, like Copas's): the handler runs as f(th) and the thread is
 * ended.  Returns 1 with the error message on co's stack, else 0. */
static int bad_yield(lua_State *L, lua_State *co, int base)
{
	lua_rawgetp(L, LUA_REGISTRYINDEX, &BADYIELD_KEY);
	lua_pushthread(co);
	lua_xmove(co, L, 1);
	if (lua_rawget(L, -2) != LUA_TFUNCTION) {
		lua_pop(L, 2);
		return 0;
	}
	lua_pushthread(co);
	lua_xmove(co, L, 1);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		fprintf(stderr, "weft: error in a bad-yield handler: %s\n",
			luaL_tolstring(L, -1, NULL));
		lua_pop(L, 2);
	}
	lua_pop(L, 1);
	lua_settop(co, base - 1);
	lua_pushliteral(co, "the thread yielded outside the scheduler's calls");
	return 1;
}

/* Resume thread `slot` with nargs values already on its stack, following
 * transfers.  Returns a DONE_* code; *out is the thread whose stack holds
 * the *nres results (yielded values, return values or the error). */
static int dispatch(lua_State *L, lw_state_t *S, uint32_t slot, int nargs, uint32_t *out,
		    int *nres)
{
	uint32_t saved = S->current;
	int saved_budget = S->budget;
	int done;
	for (;;) {
		lua_State *co = S->threads[slot];
		S->current = slot;
		S->budget = LW_IO_BUDGET;
		weft_worker_run(S->w, slot);
#ifdef WEFT_DEBUG
		/* A lua_State may run on one OS thread at a time (DESIGN §1): every
		 * resume checks that this is the state's owner thread, the one
		 * that entered the scheduler from outside (weft.start/poll, or a
		 * top-level weft.resume), which an embedder may hand over between
		 * runs. */
		if (!S->looping && saved == LW_NONE)
			S->owner = weft_thread_self();
		if (!weft_thread_equal(weft_thread_self(), S->owner)) {
			fprintf(stderr, "weft: a Lua state was resumed off its owner thread\n");
			abort();
		}
#endif
		arm_budget(S, co);
		int st = lua_resume(co, L, nargs, nres);
		if (st == LUA_OK) {
			done = DONE_FINISHED;
			break;
		}
		if (st != LUA_YIELD) {
			*nres = 1;
			done = st == LUA_ERRMEM ? DONE_ERRMEM : DONE_ERROR;
			break;
		}
		int base = lua_gettop(co) - *nres + 1;
		void *mark = *nres > 0 && lua_islightuserdata(co, base) ? lua_touserdata(co, base)
									 : NULL;
		if (mark == lw_mark_wait()) {
			lua_settop(co, base - 1);
			*nres = 0;
			done = DONE_WAIT;
			break;
		}
		if (mark == &MARK_TRANSFER) {
			/* weft.transfer checked the target before yielding. */
			lua_State *to = lua_tothread(co, base + 1);
			uint32_t next = lw_slot_of(S, to);
			int n = *nres - 2;
			weft_worker_suspend(S->w, slot);
			wh_suspended(S, slot);
			if (next == LW_NONE || (lua_status(to) == LUA_OK && lua_gettop(to) == 0)) {
				lua_settop(co, base - 1);
				lua_pushliteral(co, "weft.transfer: the target thread is gone");
				*nres = 1;
				done = DONE_SUSPEND;
				break;
			}
			lua_xmove(co, to, n);
			lua_settop(co, base - 1);
			slot = next;
			nargs = n;
			continue;
		}
		if (mark == &MARK_SUSPEND) {
			lua_remove(co, base);
			(*nres)--;
		} else if (bad_yield(L, co, base)) {
			*nres = 1;
			done = DONE_KILLED;
			break;
		}
		weft_worker_suspend(S->w, slot);
		wh_suspended(S, slot);
		done = DONE_SUSPEND;
		break;
	}
	S->current = saved;
	S->budget = saved_budget;
	*out = slot;
	return done;
}

/* Report the error object at the top of L (left there) for thread slot:
 * through the handler set with weft.seterrorhandler(f) as f(th, message
 * with traceback), or by default on stderr. */
static int preport(lua_State *L)
{
	lw_state_t *S = lua_touserdata(L, 1);
	uint32_t slot = (uint32_t)lua_tointeger(L, 2);
	lua_State *co = S->threads[slot];
	/* error object at 3 */
	const char *msg = luaL_tolstring(L, 3, NULL);
	luaL_traceback(L, co, msg, 0);
	lua_remove(L, -2);
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &ERRH_KEY) == LUA_TFUNCTION) {
		lua_pushthread(co);
		lua_xmove(co, L, 1);
		lua_pushvalue(L, -3);
		if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
			fprintf(stderr, "weft: error in the error handler: %s\n",
				lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
			fflush(stderr);
		}
		return 0;
	}
	char name[64];
	fprintf(stderr, "weft: error in thread %s: %s\n", thread_name(L, slot, name, sizeof name),
		lua_tostring(L, -2));
	fflush(stderr);
	return 0;
}

/* Reporting needs memory (the traceback, the handler's call): run it
 * protected, so that a thread that failed for want of memory (weft -M)
 * cannot take the loop down with it. */
static void report(lua_State *L, lw_state_t *S, uint32_t slot)
{
	if (!lua_checkstack(L, 4)) {
		fprintf(stderr, "weft: error in a thread (no stack left to report it)\n");
		return;
	}
	lua_pushcfunction(L, preport);
	lua_pushlightuserdata(L, S);
	lua_pushinteger(L, (lua_Integer)slot);
	lua_pushvalue(L, -4);
	if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
		const char *why = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
		const char *what = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
		fprintf(stderr, "weft: error in a thread: %s (and reporting it failed: %s)\n", what,
			why);
		fflush(stderr);
		lua_pop(L, 1);
	}
}

static void reset_thread(lua_State *co, lua_State *from)
{
#if LUA_VERSION_RELEASE_NUM >= 50406
	lua_closethread(co, from);
#else
	(void)from;
	lua_resetthread(co);
#endif
}

/* Handle a dispatch result in the loop: values are dropped, errors
 * reported, finished threads retired. */
static void settle(lua_State *L, lw_state_t *S, int done, uint32_t slot, int nres)
{
	lua_State *co = S->threads[slot];
	switch (done) {
	case DONE_WAIT:
		break;
	case DONE_SUSPEND:
		lua_pop(co, nres);
		break;
	case DONE_FINISHED:
		lua_pop(co, nres);
		finish(L, S, slot, 1, 0);
		break;
	case DONE_ERRMEM:
		/* Out of memory (weft -M): what the thread holds is what is
		 * lacking, so let go of its stack before reporting (the
		 * traceback is lost, the worker is saved). */
		lua_xmove(co, L, 1);
		reset_thread(co, L);
		lua_gc(L, LUA_GCCOLLECT);
		report(L, S, slot);
		finish(L, S, slot, 0, -1);
		lua_pop(L, 1);
		break;
	case DONE_ERROR:
		lua_xmove(co, L, 1);
		report(L, S, slot);
		finish(L, S, slot, 0, -1);
		lua_pop(L, 1);
		break;
	case DONE_KILLED:
		lua_xmove(co, L, 1);
		finish(L, S, slot, 0, -1);
		lua_pop(L, 1);
		break;
	}
}

/* Resume the threads whose wake-ups are queued now (not the ones they
 * queue: those run on the next step, after I/O and timers are checked).
 * Returns how many ran. */
static int run_ready(lua_State *L, lw_state_t *S)
{
	weft_worker_t *w = S->w;
	size_t n = weft_runq_len(&w->runq);
	int ran = 0;
	weft_wake_t wk;
	while (n-- > 0 && weft_worker_next(w, &wk)) {
		lua_State *co = wk.slot < S->cap ? S->threads[wk.slot] : NULL;
		if (!co)
			continue;
		uint32_t out;
		int nres, nargs = 1;
		if (wk.code == WEFT_WAKE_RESUME) {
			/* A suspended thread: its suspend returns the values. */
			nargs = wh_take(L, S, wk.slot);
			luaL_checkstack(co, nargs, "too many values");
			lua_xmove(L, co, nargs);
		} else {
			luaL_checkstack(co, 1, NULL);
			lua_pushinteger(co, wk.code);
		}
		int done = dispatch(L, S, wk.slot, nargs, &out, &nres);
		settle(L, S, done, out, nres);
		ran++;
	}
	return ran;
}

void lw_thread_start(lua_State *L, lw_state_t *S, int nargs, const char *name)
{
	int64_t slot = weft_worker_co_new(S->w);
	if (slot < 0 || grow_threads(S, (uint32_t)slot) < 0) {
		if (slot >= 0)
			weft_worker_co_free(S->w, (uint32_t)slot);
		luaL_error(L, "weft: out of memory");
	}
	lua_State *co = lua_newthread(L);
	lua_insert(L, -(nargs + 2));
	lua_xmove(L, co, nargs + 1);
	S->threads[slot] = co;
	S->nthreads++;
	lw_set_slot(co, (uint32_t)slot);
	lua_rawgetp(L, LUA_REGISTRYINDEX, &THREADS_KEY);
	lua_pushvalue(L, -2);
	lua_rawseti(L, -2, slot + 1);
	lua_pop(L, 2);
	if (name) {
		lua_rawgetp(L, LUA_REGISTRYINDEX, &NAMES_KEY);
		lua_pushstring(L, name);
		lua_rawseti(L, -2, slot + 1);
		lua_pop(L, 1);
	}
	uint32_t out;
	int nres;
	int done = dispatch(L, S, (uint32_t)slot, nargs, &out, &nres);
	settle(L, S, done, out, nres);
}

void lw_thread_resume(lua_State *L, lw_state_t *S, uint32_t slot, int nargs)
{
	uint32_t out;
	int nres;
	int done = dispatch(L, S, slot, nargs, &out, &nres);
	settle(L, S, done, out, nres);
}

void *lw_mark_suspend(void)
{
	return &MARK_SUSPEND;
}

static void check_loop_entry(lua_State *L, lw_state_t *S, const char *what)
{
	if (S->current != LW_NONE)
		luaL_error(L, "weft.%s cannot be called from inside a weft thread", what);
	if (S->looping)
		luaL_error(L, "weft.%s: the loop is already running", what);
}

static uint64_t timeout_arg(lua_State *L, int idx)
{
	if (lua_isnoneornil(L, idx))
		return UINT64_MAX;
	double s = luaL_checknumber(L, idx);
	if (!(s > 0))
		return 0;
	if (s >= 2147483647.0) /* beyond 2^31-1 seconds: forever */
		return UINT64_MAX;
	return (uint64_t)(s * 1e9);
}

/* weft.poll([timeout]) -> ran | nil, "empty".  Waits until some thread ran or the
 * timeout passed: a poller wake-up that made nothing runnable (a timer of
 * an upper wheel level moving down, a stale event) does not count. */
static int l_poll(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	check_loop_entry(L, S, "poll");
	S->owner = weft_thread_self();
	uint64_t timeout = timeout_arg(L, 1);
	uint64_t deadline = timeout == UINT64_MAX ? UINT64_MAX : weft_clock_ns() + timeout;
	/* Nothing waits for anything: as in the sock API, say so at once
	 * rather than sleep through the timeout. */
	if (!weft_worker_alive(S->w)) {
		luaL_pushfail(L);
		lua_pushliteral(L, "empty");
		return 2;
	}
	S->looping = 1;
	int ran = 0, rc = 0;
	for (;;) {
		uint64_t wait = UINT64_MAX;
		if (deadline != UINT64_MAX) {
			uint64_t now = weft_clock_ns();
			wait = now >= deadline ? 0 : deadline - now;
		}
		if (wait == UINT64_MAX && !weft_worker_alive(S->w))
			break; /* nothing can happen: do not block forever */
		rc = weft_worker_poll(S->w, wait);
		if (rc < 0)
			break;
		ran = run_ready(L, S) + lw_timer_step(L, S) + lw_spawn_step(L, S);
		if (ran || wait == 0 || !weft_worker_alive(S->w) || weft_runtime_exiting(S->rt))
			break;
	}
	S->looping = 0;
	if (rc < 0)
		return luaL_error(L, "weft.poll: %s", weft_strerror(rc));
	lua_pushboolean(L, ran > 0);
	return 1;
}

/* weft.start([timeout]) -> true | false (timed out) */
static int l_start(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	check_loop_entry(L, S, "start");
	S->owner = weft_thread_self();
	uint64_t timeout = timeout_arg(L, 1);
	uint64_t deadline = timeout == UINT64_MAX ? UINT64_MAX : weft_clock_ns() + timeout;
	S->looping = 1;
	S->stopping = 0;
	int result = 1;
	while (!S->stopping && !weft_runtime_exiting(S->rt) && weft_worker_alive(S->w)) {
		uint64_t wait = UINT64_MAX;
		if (deadline != UINT64_MAX) {
			uint64_t now = weft_clock_ns();
			if (now >= deadline) {
				result = 0;
				break;
			}
			wait = deadline - now;
		}
		int rc = weft_worker_poll(S->w, wait);
		if (rc < 0) {
			S->looping = 0;
			return luaL_error(L, "weft.start: %s", weft_strerror(rc));
		}
		run_ready(L, S);
		lw_timer_step(L, S);
		lw_spawn_step(L, S);
	}
	S->looping = 0;
	S->stopping = 0;
	lua_pushboolean(L, result);
	return 1;
}

/* weft.exit(): every worker of the runtime leaves its loop; the launcher
 * then ends the program with status 0. */
static int l_exit(lua_State *L)
{
	weft_runtime_exit(lw_S(L)->rt);
	return 0;
}

/* weft.core.exiting() -> whether weft.exit() (or a signal) ended the loop */
static int l_exiting(lua_State *L)
{
	lua_pushboolean(L, weft_runtime_exiting(lw_S(L)->rt));
	return 1;
}

/* weft.stop() */
static int l_stop(lua_State *L)
{
	lw_S(L)->stopping = 1;
	return 0;
}

/* A thread given as argument, which must be resumable: fresh or
 * suspended (not waiting, not running, not dead). */
static uint32_t check_resumable(lua_State *L, lw_state_t *S, int idx, const char *what)
{
	lua_State *co = lua_tothread(L, idx);
	luaL_argexpected(L, co != NULL, idx, "thread");
	uint32_t slot = lw_slot_of(S, co);
	if (slot == LW_NONE) {
		int dead = lua_status(co) != LUA_YIELD && lua_gettop(co) == 0;
		luaL_error(L, "weft.%s: %s", what,
			   dead ? "cannot resume a dead thread" : "not a weft thread");
	}
	int state = weft_worker_co(S->w, slot)->state;
	if (state != WEFT_CO_SUSPENDED)
		luaL_error(L, "weft.%s: the thread is %s", what,
			   state == WEFT_CO_RUNNING ? "running" : "waiting");
	return slot;
}

/* weft.resume(th, ...) -> values of its first suspend, or its results */
static int l_resume(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	uint32_t slot = check_resumable(L, S, 1, "resume");
	lua_State *co = S->threads[slot];
	int nargs = lua_gettop(L) - 1;
	luaL_checkstack(co, nargs, "too many arguments");
	lua_xmove(L, co, nargs);
	uint32_t out;
	int nres;
	int done = dispatch(L, S, slot, nargs, &out, &nres);
	lua_State *oc = S->threads[out];
	switch (done) {
	case DONE_WAIT:
		return 0;
	case DONE_SUSPEND:
		luaL_checkstack(L, nres, "too many results");
		lua_xmove(oc, L, nres);
		return nres;
	case DONE_FINISHED:
		luaL_checkstack(L, nres, "too many results");
		lua_xmove(oc, L, nres);
		finish(L, S, out, 1, 0);
		return nres;
	case DONE_KILLED:
		lua_xmove(oc, L, 1);
		finish(L, S, out, 0, -1);
		return 0;
	default:
		lua_xmove(oc, L, 1);
		finish(L, S, out, 0, -1);
		return lua_error(L);
	}
}

/* weft.thread(f, ...) -> th: a new thread started at once with the
 * values (weft.newthread and weft.resume in one call).  Its first results
 * are dropped; an error before its first wait is raised here, as
 * weft.resume raises it. */
static int l_thread(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	luaL_checktype(L, 1, LUA_TFUNCTION);
	int nargs = lua_gettop(L) - 1;
	int64_t slot = weft_worker_co_new(S->w);
	if (slot < 0 || grow_threads(S, (uint32_t)slot) < 0) {
		if (slot >= 0)
			weft_worker_co_free(S->w, (uint32_t)slot);
		return luaL_error(L, "weft: out of memory");
	}
	lua_State *co = lua_newthread(L);
	lua_rotate(L, 1, 1); /* th, f, args */
	luaL_checkstack(co, nargs + 1, "too many arguments");
	lua_xmove(L, co, nargs + 1);
	S->threads[slot] = co;
	S->nthreads++;
	lw_set_slot(co, (uint32_t)slot);
	weft_worker_suspend(S->w, (uint32_t)slot);
	lua_rawgetp(L, LUA_REGISTRYINDEX, &THREADS_KEY);
	lua_pushvalue(L, 1);
	lua_rawseti(L, -2, slot + 1);
	lua_pop(L, 1);
	uint32_t out;
	int nres;
	int done = dispatch(L, S, (uint32_t)slot, nargs, &out, &nres);
	lua_State *oc = S->threads[out];
	switch (done) {
	case DONE_WAIT:
		break;
	case DONE_SUSPEND:
		lua_pop(oc, nres);
		break;
	case DONE_FINISHED:
		lua_pop(oc, nres);
		finish(L, S, out, 1, 0);
		break;
	default:
		lua_xmove(oc, L, 1);
		finish(L, S, out, 0, -1);
		return lua_error(L);
	}
	lua_settop(L, 1);
	return 1;
}

/* weft.suspend(...) -> values given by the next resume/transfer */
static int l_suspend(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lw_waiter(L, S);
	lua_pushlightuserdata(L, &MARK_SUSPEND);
	lua_insert(L, 1);
	return lua_yield(L, lua_gettop(L));
}

/* weft.transfer(th, ...) */
static int l_transfer(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	uint32_t to = check_resumable(L, S, 1, "transfer");
	if (S->current == LW_NONE || !lua_isyieldable(L))
		return l_resume(L);
	lw_waiter(L, S);
	if (S->threads[to] == L)
		return luaL_error(L, "weft.transfer: cannot transfer to the running thread");
	lua_pushlightuserdata(L, &MARK_TRANSFER);
	lua_insert(L, 1);
	return lua_yield(L, lua_gettop(L));
}

/* weft.currentthread() -> th, ismain */
static int l_currentthread(lua_State *L)
{
	int ismain = lua_pushthread(L);
	lua_pushboolean(L, ismain);
	return 2;
}

/* weft.core.inthread() -> whether the caller may wait */
static int l_inthread(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lua_pushboolean(L, S->current != LW_NONE && lua_isyieldable(L));
	return 1;
}

/* weft.core.onbadyield(th, f | nil): see bad_yield */
static int l_onbadyield(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lua_State *co = lua_tothread(L, 1);
	luaL_argexpected(L, co != NULL, 1, "thread");
	if (!lua_isnil(L, 2))
		luaL_checktype(L, 2, LUA_TFUNCTION);
	if (lw_slot_of(S, co) == LW_NONE)
		return luaL_error(L, "weft.onbadyield: not a live weft thread");
	lua_rawgetp(L, LUA_REGISTRYINDEX, &BADYIELD_KEY);
	lua_pushvalue(L, 1);
	lua_pushvalue(L, 2);
	lua_rawset(L, -3);
	return 0;
}

/* weft.onthreadfinish(th, f) */
static int l_onthreadfinish(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lua_State *co = lua_tothread(L, 1);
	luaL_argexpected(L, co != NULL, 1, "thread");
	luaL_checktype(L, 2, LUA_TFUNCTION);
	if (lw_slot_of(S, co) == LW_NONE)
		return luaL_error(L, "weft.onthreadfinish: not a live weft thread");
	lua_rawgetp(L, LUA_REGISTRYINDEX, &FINISH_KEY);
	lua_pushvalue(L, 1);
	if (lua_rawget(L, -2) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_pushvalue(L, 1);
		lua_pushvalue(L, -2);
		lua_rawset(L, -4);
	}
	lua_pushvalue(L, 2);
	lua_rawseti(L, -2, luaL_len(L, -2) + 1);
	return 0;
}

/* weft.setbudget([n]) -> previous: each resume of a weft thread may run
 * n VM instructions (nil or 0: no limit). */
static int l_setbudget(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	int prev = S->ibudget;
	lua_Integer n = luaL_optinteger(L, 1, 0);
	luaL_argcheck(L, n >= 0 && n <= INT_MAX, 1, "budget out of range");
	S->ibudget = (int)n;
	if (prev > 0)
		lua_pushinteger(L, prev);
	else
		lua_pushnil(L);
	return 1;
}

/* weft.seterrorhandler(f | nil) */
static int l_seterrorhandler(lua_State *L)
{
	if (!lua_isnoneornil(L, 1))
		luaL_checktype(L, 1, LUA_TFUNCTION);
	lua_settop(L, 1);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &ERRH_KEY);
	return 0;
}

/* weft.core.set_threadenv(t): the weft.threadenv table, whose entry for
 * a thread is cleared when the thread finishes. */
static int l_set_threadenv(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &ENV_KEY);
	return 0;
}

/* weft.core.cowrap_tag(co): mark co as a cowrap body. */
static int l_cowrap_tag(lua_State *L)
{
	lua_State *co = lua_tothread(L, 1);
	luaL_argexpected(L, co != NULL, 1, "thread");
	lw_tag_cowrap(co);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Sleeps */

static int sleep_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_wakecode(L);
	return 0;
}

static int do_sleep(lua_State *L, uint64_t deadline)
{
	lw_state_t *S = lw_S(L);
	uint32_t slot = lw_waiter(L, S);
	weft_worker_wait_time(S->w, slot, deadline);
	return lw_await(L, 0, sleep_k);
}

static uint64_t seconds_from_now(double s)
{
	if (!(s > 0))
		return weft_clock_ns();
	return weft_clock_s2ns(weft_clock() + s);
}

/* weft.sleep_until(t) */
static int l_sleep_until(lua_State *L)
{
	return do_sleep(L, weft_clock_s2ns(luaL_checknumber(L, 1)));
}

/* weft.sleep(s) */
static int l_sleep(lua_State *L)
{
	return do_sleep(L, seconds_from_now(luaL_checknumber(L, 1)));
}

/* Sleep jobs may be passed to another worker (as a channel message or a
 * spawn argument), whose wakeup then resumes the sleeper in its own
 * worker.  The part both sides see is shared: the word naming the sleeping
 * slot and wait, which a waker claims with a CAS (exactly one wake-up per
 * sleep), and the owner's worker, which a remote waker posts to. */
typedef struct sjshared {
	_Atomic uint64_t word; /* 0, or (slot + 1) << 32 | seq of the sleeper */
	void *_Atomic sleeper; /* the object it sleeps through (compared only) */
	weft_worker_t *w;      /* the owner's worker; NULL once it is gone */
	_Atomic long refs;
	_Atomic int remote; /* passed on (maybe to another worker) */
} sjshared_t;

typedef struct sleepjob {
	sjshared_t *sh;
	lw_state_t *owner; /* the state whose threads may sleep on it */
} sleepjob_t;

/* Guards sjshared_t.w against the owner going away while a remote waker
 * posts to it. */
static weft_mutex_t sj_lock = WEFT_MUTEX_INIT;

static void sh_unref(sjshared_t *sh)
{
	if (atomic_fetch_sub(&sh->refs, 1) == 1)
		weft_free(sh);
}

static void push_sj(lua_State *L, sjshared_t *sh, lw_state_t *owner)
{
	sleepjob_t *sj = lua_newuserdatauv(L, sizeof *sj, 1);
	sj->sh = sh;
	sj->owner = owner;
	luaL_setmetatable(L, LW_SLEEPJOB);
}

/* weft.sleep_job() -> sj */
static int l_sleep_job(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	sjshared_t *sh = weft_calloc(1, sizeof *sh);
	if (!sh)
		return luaL_error(L, "weft.sleep_job: out of memory");
	sh->w = S->w;
	atomic_init(&sh->refs, 1);
	push_sj(L, sh, S);
	return 1;
}

static int sj_gc(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	sleepjob_t *sj = luaL_checkudata(L, 1, LW_SLEEPJOB);
	if (!sj->sh)
		return 0;
	if (sj->owner == S && sj->sh->w == S->w) {
		weft_mutex_lock(&sj_lock);
		sj->sh->w = NULL;
		weft_mutex_unlock(&sj_lock);
	}
	sh_unref(sj->sh);
	sj->sh = NULL;
	return 0;
}

/* Values that came from another worker's wakeup. */
static void drop_blob(void *p)
{
	lw_blob_t *b = p;
	lw_blob_free(b);
	weft_free(b);
}

static int sj_sleep_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	int code = lw_wakecode(L);
	sleepjob_t *sj = lua_touserdata(L, 1);
	uint64_t mine = (uint64_t)ctx;
	/* Woken by the deadline: take the word back (a waker that claimed it
	 * first has a wake-up in flight that will find the wait over). */
	atomic_compare_exchange_strong(&sj->sh->word, &mine, 0);
	if (code != WEFT_WAKE_USER)
		return 0;
	lw_blob_t *b = weft_worker_take_data(S->w, S->current);
	if (b) {
		lua_settop(L, 0);
		int n = lw_deserialize(L, b->data, b->len, 0);
		drop_blob(b);
		return n < 0 ? lua_error(L) : n;
	}
	lua_getiuservalue(L, 1, 1);
	lua_pushnil(L);
	lua_setiuservalue(L, 1, 1);
	int t = lua_gettop(L);
	lua_Integer n = (lua_getfield(L, t, "n"), lua_tointeger(L, -1));
	lua_pop(L, 1);
	luaL_checkstack(L, (int)n, "too many values");
	for (lua_Integer i = 1; i <= n; i++)
		lua_rawgeti(L, t, i);
	return (int)n;
}

/* Whether sleep job word v (not 0) names a sleep that is still going on:
 * a word given back by a waker whose post failed can outlive the sleep
 * it named.  A slot's seq changes with each wait, so a wait that is over
 * never matches. */
static int sleeping(lw_state_t *S, uint64_t v)
{
	uint32_t slot = (uint32_t)(v >> 32) - 1;
	if (slot >= S->cap || !S->threads[slot])
		return 0;
	const weft_co_t *co = weft_worker_co(S->w, slot);
	return co->seq == (uint32_t)v &&
	       (co->state == WEFT_CO_WAIT_TIME || co->state == WEFT_CO_WAIT_EXT);
}

static int sj_wait(lua_State *L, uint64_t deadline)
{
	lw_state_t *S = lw_S(L);
	sleepjob_t *sj = luaL_checkudata(L, 1, LW_SLEEPJOB);
	uint32_t slot = lw_waiter(L, S);
	if (sj->owner != S || sj->sh->w != S->w)
		return luaL_error(L, "sleep_job: only the worker that made it can sleep on it");
	uint64_t old = atomic_load(&sj->sh->word);
	if (old != 0) {
		if (sleeping(S, old))
			return luaL_error(L, "sleep_job: another thread is sleeping on it");
		atomic_compare_exchange_strong(&sj->sh->word, &old, 0); /* stale */
	}
	lua_settop(L, 1);
	/* Passed to another worker, the sleep job may be woken from there:
	 * then even a sleep without deadline keeps the loop running. */
	if (atomic_load(&sj->sh->remote))
		weft_worker_wait_ext_until(S->w, slot, deadline);
	else
		weft_worker_wait_time(S->w, slot, deadline);
	uint64_t word = ((uint64_t)slot + 1) << 32 | weft_worker_co(S->w, slot)->seq;
	atomic_store(&sj->sh->sleeper, (void *)sj);
	atomic_store(&sj->sh->word, word);
	return lw_await(L, (lua_KContext)word, sj_sleep_k);
}

/* sj:sleep_until([t]) -> wakeup values */
static int sj_sleep_until(lua_State *L)
{
	return sj_wait(L, lw_deadline(L, 2));
}

/* sj:sleep([s]) -> wakeup values */
static int sj_sleep(lua_State *L)
{
	if (lua_isnoneornil(L, 2))
		return sj_wait(L, UINT64_MAX);
	return sj_wait(L, seconds_from_now(luaL_checknumber(L, 2)));
}

/* Claim the sleeper: returns its word, or 0 if nobody sleeps. */
static uint64_t sj_claim(sjshared_t *sh)
{
	uint64_t v = atomic_load(&sh->word);
	while (v != 0 && !atomic_compare_exchange_weak(&sh->word, &v, 0))
		;
	return v;
}

/* sj:wakeup(...) -> true if a sleeper was woken.  From the owner's worker
 * the values are kept as they are; from another worker they are
 * serialized and travel with the wake-up message. */
static int sj_wakeup(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	sleepjob_t *sj = luaL_checkudata(L, 1, LW_SLEEPJOB);
	int n = lua_gettop(L) - 1;
	/* The values stay Lua values when the waker holds the very object the
	 * thread sleeps through (its user value carries them); any other copy
	 * of the handle, even in this worker, sends them serialized. */
	if (sj->owner == S && sj->sh->w == S->w && atomic_load(&sj->sh->sleeper) == (void *)sj) {
		uint64_t v = sj_claim(sj->sh);
		if (!v || !weft_worker_wake(S->w, (uint32_t)(v >> 32) - 1, (uint32_t)v,
					    WEFT_WAKE_USER)) {
			lua_pushboolean(L, 0);
			return 1;
		}
		lua_createtable(L, n, 1);
		lua_insert(L, 2);
		for (int i = n; i >= 1; i--)
			lua_rawseti(L, 2, i);
		lua_pushinteger(L, n);
		lua_setfield(L, 2, "n");
		lua_setiuservalue(L, 1, 1);
		lua_pushboolean(L, 1);
		return 1;
	}
	lw_blob_t *b = weft_calloc(1, sizeof *b);
	if (!b)
		return luaL_error(L, "sleep_job: out of memory");
	if (lw_serialize(L, 2, n, 0, b) < 0) {
		drop_blob(b);
		return lua_error(L);
	}
	int woke = 0;
	weft_mutex_lock(&sj_lock);
	uint64_t v = sj->sh->w ? sj_claim(sj->sh) : 0;
	if (v) {
		weft_msg_t m = {WEFT_MSG_WAKE, (uint32_t)(v >> 32) - 1, (uint32_t)v, WEFT_WAKE_USER, b};
		int rc = weft_worker_post(sj->sh->w, &m);
		woke = rc == 0;
		/* Out of memory: the sleeper sleeps on, so the word is given
		 * back for a later wakeup (the caller sees false and may try
		 * again).  Should its sleep have ended meanwhile, the word is
		 * stale; sj_wait knows one from a live sleep.  (WEFT_ECLOSED:
		 * the owner's worker is gone, and nobody sleeps any more.) */
		if (rc == WEFT_ENOMEM) {
			uint64_t none = 0;
			atomic_compare_exchange_strong(&sj->sh->word, &none, v);
		}
	}
	weft_mutex_unlock(&sj_lock);
	if (!woke)
		drop_blob(b);
	lua_pushboolean(L, woke);
	return 1;
}

static int pack_sj(lua_State *L, int idx, uint64_t out[2])
{
	sleepjob_t *sj = luaL_checkudata(L, idx, LW_SLEEPJOB);
	atomic_fetch_add(&sj->sh->refs, 1); /* the message's reference */
	atomic_store(&sj->sh->remote, 1);
	out[0] = (uint64_t)(uintptr_t)sj->sh;
	out[1] = (uint64_t)(uintptr_t)sj->owner;
	return 0;
}

static int unpack_sj(lua_State *L, const uint64_t in[2])
{
	push_sj(L, (sjshared_t *)(uintptr_t)in[0], (lw_state_t *)(uintptr_t)in[1]);
	return 0;
}

static void push_wh(lua_State *L, whshared_t *sh)
{
	whshared_t **h = lua_newuserdatauv(L, sizeof *h, 0);
	*h = sh;
	luaL_setmetatable(L, LW_WAKEHANDLE);
}

/* weft.wakehandle([th]) -> wh, for th or the running thread */
static int l_wakehandle(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	uint32_t slot;
	if (lua_isnoneornil(L, 1)) {
		slot = S->current;
		if (slot == LW_NONE)
			return luaL_error(L, "weft.wakehandle: not inside a weft thread");
	} else {
		lua_State *co = lua_tothread(L, 1);
		luaL_argexpected(L, co != NULL, 1, "thread");
		slot = lw_slot_of(S, co);
		if (slot == LW_NONE)
			return luaL_error(L, "weft.wakehandle: not a live weft thread of this worker");
	}
	if (!S->wh && !(S->wh = weft_calloc(S->cap, sizeof *S->wh)))
		return luaL_error(L, "weft.wakehandle: out of memory");
	whshared_t *sh = wh_of(S, slot);
	if (!sh) {
		if (!(sh = weft_calloc(1, sizeof *sh)))
			return luaL_error(L, "weft.wakehandle: out of memory");
		weft_mutex_init(&sh->lock);
		sh->w = S->w;
		sh->slot = slot;
		sh->tail = &sh->head;
		atomic_init(&sh->refs, 1); /* the thread's own */
		S->wh[slot] = sh;
		/* Already suspended (a handle made for another thread): the
		 * suspension is published now. */
		if (weft_worker_co(S->w, slot)->state == WEFT_CO_SUSPENDED)
			wh_suspended(S, slot);
	}
	atomic_fetch_add(&sh->refs, 1);
	push_wh(L, sh);
	return 1;
}

static int wh_gc(lua_State *L)
{
	whshared_t **h = luaL_checkudata(L, 1, LW_WAKEHANDLE);
	if (*h)
		wh_unref(*h);
	*h = NULL;
	return 0;
}

/* wh:wakeup(...) -> true, or false if the thread is gone.  The values are
 * copied (as for channels), also within one worker. */
static int wh_wakeup(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	whshared_t *sh = *(whshared_t **)luaL_checkudata(L, 1, LW_WAKEHANDLE);
	whnode_t *n = weft_calloc(1, sizeof *n);
	if (!n)
		return luaL_error(L, "wakehandle: out of memory");
	if (lw_serialize(L, 2, lua_gettop(L) - 1, 0, &n->blob) < 0) {
		lw_blob_free(&n->blob);
		weft_free(n);
		return lua_error(L);
	}
	int ok = 0, rc = 0;
	weft_mutex_lock(&sh->lock);
	if (sh->w) {
		whnode_t **link = sh->tail;
		*link = n;
		sh->tail = &n->next;
		ok = 1;
		if (sh->suspended) {
			sh->suspended = 0;
			if (sh->w == S->w) {
				weft_worker_wake(S->w, sh->slot, sh->seq, WEFT_WAKE_RESUME);
			} else {
				weft_msg_t m = {WEFT_MSG_WAKE, sh->slot, sh->seq, WEFT_WAKE_RESUME,
						NULL};
				/* Posted under the lock: the owner cannot be freed
				 * meanwhile (wh_retire takes it first). */
				rc = weft_worker_post(sh->w, &m);
			}
		}
		if (rc != 0) {
			/* Not delivered: take the values back rather than leave
			 * them waiting beside a thread that nobody will wake.
			 * Out of memory, the suspension stays published for the
			 * next wakeup; WEFT_ECLOSED: the owner is gone. */
			*link = NULL;
			sh->tail = link;
			ok = 0;
			if (rc == WEFT_ENOMEM)
				sh->suspended = 1;
			else
				sh->w = NULL;
		}
	}
	weft_mutex_unlock(&sh->lock);
	if (!ok) {
		lw_blob_free(&n->blob);
		weft_free(n);
	}
	if (rc == WEFT_ENOMEM)
		return luaL_error(L, "wakehandle: out of memory");
	lua_pushboolean(L, ok);
	return 1;
}

static int pack_wh(lua_State *L, int idx, uint64_t out[2])
{
	whshared_t *sh = *(whshared_t **)luaL_checkudata(L, idx, LW_WAKEHANDLE);
	atomic_fetch_add(&sh->refs, 1); /* the message's reference */
	atomic_store(&sh->remote, 1);
	out[0] = (uint64_t)(uintptr_t)sh;
	out[1] = 0;
	return 0;
}

static int unpack_wh(lua_State *L, const uint64_t in[2])
{
	push_wh(L, (whshared_t *)(uintptr_t)in[0]);
	return 0;
}

void lw_close_sched(lw_state_t *S)
{
	for (uint32_t i = 0; S->wh && i < S->cap; i++)
		wh_retire(S, i);
	weft_free(S->wh);
	S->wh = NULL;
}

static const luaL_Reg wh_methods[] = {
	{"wakeup", wh_wakeup},
	{NULL, NULL},
};

static const luaL_Reg wh_meta[] = {
	{"__gc", wh_gc},
	{NULL, NULL},
};

static const luaL_Reg sj_methods[] = {
	{"sleep", sj_sleep},
	{"sleep_until", sj_sleep_until},
	{"wakeup", sj_wakeup},
	{NULL, NULL},
};

static const luaL_Reg sj_meta[] = {
	{"__gc", sj_gc},
	{NULL, NULL},
};

static const luaL_Reg sched_funcs[] = {
	{"newthread", l_newthread},
	{"thread", l_thread},
	{"resume", l_resume},
	{"suspend", l_suspend},
	{"transfer", l_transfer},
	{"currentthread", l_currentthread},
	{"onthreadfinish", l_onthreadfinish},
	{"onbadyield", l_onbadyield},
	{"seterrorhandler", l_seterrorhandler},
	{"setbudget", l_setbudget},
	{"inthread", l_inthread},
	{"cowrap_tag", l_cowrap_tag},
	{"set_threadenv", l_set_threadenv},
	{"poll", l_poll},
	{"start", l_start},
	{"stop", l_stop},
	{"exit", l_exit},
	{"exiting", l_exiting},
	{"sleep", l_sleep},
	{"sleep_until", l_sleep_until},
	{"sleep_job", l_sleep_job},
	{"wakehandle", l_wakehandle},
	{NULL, NULL},
};

void lw_open_sched(lua_State *L, lw_state_t *S)
{
	reg_table(L, &THREADS_KEY);
	reg_table(L, &NAMES_KEY);
	reg_table(L, &FINISH_KEY);
	reg_table(L, &BADYIELD_KEY);
	lw_newclass(L, S, LW_SLEEPJOB, sj_methods, sj_meta);
	lw_serial_register(LW_SLEEPJOB, pack_sj, unpack_sj);
	lw_newclass(L, S, LW_WAKEHANDLE, wh_methods, wh_meta);
	lw_serial_register(LW_WAKEHANDLE, pack_wh, unpack_wh);
	S->w->drop_data = drop_blob;
	lw_register(L, S, sched_funcs);
	lua_createtable(L, 0, 3);
	lua_pushlightuserdata(L, lw_mark_wait());
	lua_setfield(L, -2, "wait");
	lua_pushlightuserdata(L, &MARK_SUSPEND);
	lua_setfield(L, -2, "suspend");
	lua_pushlightuserdata(L, &MARK_TRANSFER);
	lua_setfield(L, -2, "transfer");
	lua_setfield(L, -2, "markers");
}
