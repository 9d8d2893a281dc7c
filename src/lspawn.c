/* weft.spawn: run a function in whichever worker is free.
 *
 * A job is work not yet bound to a state (DESIGN §1): the function (Lua
 * bytecode of a function whose only upvalue is _ENV, or a
 * "module.function" name) and its arguments, serialized.  It goes to the
 * spawning worker's job queue; any worker's loop takes jobs from its own
 * queue or steals from the longest other one, and runs each in a new weft
 * thread of its own state, so the job may do I/O.  The results travel
 * back serialized through a future.
 *
 * A future is shared by the spawner and the job: a lock, the result blob
 * once done, and the threads waiting for it (woken through their
 * workers' inboxes). */
#include "config.h"

#include <string.h>

#include "alloc.h"
#include "clock.h"
#include "error.h"
#include "lserial.h"
#include "lweft.h"

#define LW_FUTURE "weft.future"
/* Jobs started per loop step, so that I/O and timers keep their turn. */
#define JOBS_PER_STEP 32

typedef struct waiter {
	weft_worker_t *w;
	uint32_t slot, seq;
} waiter_t;

typedef struct fut {
	weft_mutex_t lock;
	_Atomic long refs;
	int done;
	lw_blob_t result; /* serialized: true, results... | false, message */
	waiter_t *waiters;
	size_t nwait, capwait;
} fut_t;

typedef struct job {
	weft_job_t node;
	lw_blob_t blob; /* serialized: function or name, arguments... */
	fut_t *f;
} job_t;

static void fut_unref(fut_t *f)
{
	if (atomic_fetch_sub(&f->refs, 1) != 1)
		return;
	weft_mutex_destroy(&f->lock);
	lw_blob_free(&f->result);
	weft_free(f->waiters);
	weft_free(f);
}

/* Done: post every waiter its wake-up.  Lock held.  A waiter whose worker
 * has been freed is dropped.  One whose post failed for want of memory is
 * still waiting, so it stays on the list: it is tried again whenever the
 * future is looked at (wait, done), and if its deadline comes first it
 * takes the result then (wait_k). */
static void post_waiters(fut_t *f)
{
	size_t keep = 0;
	for (size_t i = 0; i < f->nwait; i++) {
		weft_msg_t m = {WEFT_MSG_WAKE, f->waiters[i].slot, f->waiters[i].seq, 0, NULL};
		if (weft_worker_post(f->waiters[i].w, &m) == WEFT_ENOMEM)
			f->waiters[keep++] = f->waiters[i];
	}
	f->nwait = keep;
}

/* Store the result (taking the blob) and wake every waiter. */
static void fut_complete(fut_t *f, lw_blob_t *res)
{
	weft_mutex_lock(&f->lock);
	f->result = *res;
	memset(res, 0, sizeof *res);
	f->done = 1;
	post_waiters(f);
	weft_mutex_unlock(&f->lock);
}

/* Complete with failure `msg`. */
static void fut_fail(lua_State *L, fut_t *f, const char *msg)
{
	lw_blob_t b = {0};
	lua_pushboolean(L, 0);
	lua_pushstring(L, msg);
	if (lw_serialize(L, lua_gettop(L) - 1, 2, 0, &b) < 0)
		lua_pop(L, 1);
	lua_pop(L, 2);
	fut_complete(f, &b);
	lw_blob_free(&b);
}

/* ------------------------------------------------------------------ */
/* Running a job (in the worker that took it) */

static int traceback(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (!msg)
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	luaL_traceback(L, L, msg, 1);
	return 1;
}

/* After the job's function returned or failed: serialize and complete. */
static int job_done(lua_State *L, int status, lua_KContext ctx)
{
	fut_t *f = (fut_t *)ctx;
	lw_blob_t b = {0};
	if (status == LUA_OK || status == LUA_YIELD) {
		int n = lua_gettop(L) - 1; /* above the traceback handler */
		lua_pushboolean(L, 1);
		lua_insert(L, 2);
		if (lw_serialize(L, 2, n + 1, 0, &b) < 0) {
			lw_blob_free(&b); /* what was written before the failure */
			const char *msg = lua_tostring(L, -1);
			lua_pushfstring(L, "weft.spawn: the results cannot be returned: %s", msg);
			fut_fail(L, f, lua_tostring(L, -1));
			fut_unref(f);
			return 0;
		}
	} else {
		fut_fail(L, f, luaL_tolstring(L, -1, NULL));
		fut_unref(f);
		return 0;
	}
	fut_complete(f, &b);
	lw_blob_free(&b);
	fut_unref(f);
	return 0;
}

/* The body of a job's thread: job_body(job) */
static int job_body(lua_State *L)
{
	job_t *j = lua_touserdata(L, 1);
	fut_t *f = j->f;
	lua_settop(L, 0);
	lua_pushcfunction(L, traceback);
	int n = lw_deserialize(L, j->blob.data, j->blob.len, LW_SER_FUNCTIONS);
	lw_blob_free(&j->blob);
	weft_free(j);
	if (n < 1) {
		fut_fail(L, f, n < 0 ? lua_tostring(L, -1) : "weft.spawn: no function");
		fut_unref(f);
		return 0;
	}
	if (lua_type(L, 2) == LUA_TSTRING) {
		/* "module.function": require the module in this state */
		const char *name = lua_tostring(L, 2);
		const char *dot = strrchr(name, '.');
		if (!dot || dot == name || !dot[1]) {
			fut_fail(L, f, lua_pushfstring(L, "weft.spawn: '%s' is not a "
							  "\"module.function\" name", name));
			fut_unref(f);
			return 0;
		}
		lua_getglobal(L, "require");
		lua_pushlstring(L, name, (size_t)(dot - name));
		if (lua_pcall(L, 1, 1, 1) != LUA_OK) {
			fut_fail(L, f, lua_tostring(L, -1));
			fut_unref(f);
			return 0;
		}
		lua_getfield(L, -1, dot + 1);
		if (lua_type(L, -1) != LUA_TFUNCTION) {
			fut_fail(L, f, lua_pushfstring(L, "weft.spawn: %s is not a function", name));
			fut_unref(f);
			return 0;
		}
		lua_replace(L, 2);
		lua_pop(L, 1);
	}
	int status = lua_pcallk(L, n - 1, LUA_MULTRET, 1, (lua_KContext)f, job_done);
	return job_done(L, status, (lua_KContext)f);
}

int lw_spawn_step(lua_State *L, lw_state_t *S)
{
	int n = 0;
	weft_job_t *node;
	while (n < JOBS_PER_STEP && (node = weft_worker_next_job(S->w)) != NULL) {
		job_t *j = node->data;
		lua_pushcfunction(L, job_body);
		lua_pushlightuserdata(L, j);
		lw_thread_start(L, S, 1, "weft.spawn");
		n++;
	}
	return n;
}

void lw_spawn_close(lua_State *L, lw_state_t *S)
{
	/* Jobs queued here that no thread of this state will run: another
	 * worker of the runtime takes them; with none left, their futures
	 * fail, so that no waiter waits forever and the runtime's count of
	 * queued jobs stays right. */
	weft_worker_hand_jobs(S->w);
	weft_job_t *node;
	while ((node = weft_worker_pop_job(S->w)) != NULL) {
		job_t *j = node->data;
		lw_blob_free(&j->blob);
		fut_fail(L, j->f, "weft.spawn: the runtime closed before the job ran");
		fut_unref(j->f);
		weft_free(j);
	}
}

/* ------------------------------------------------------------------ */
/* The spawner's side */

typedef struct lfut {
	fut_t *f;
} lfut_t;

/* weft.spawn(f | "module.function", ...) -> future | nil, message */
static int l_spawn(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	int t = lua_type(L, 1);
	luaL_argexpected(L, t == LUA_TFUNCTION || t == LUA_TSTRING, 1,
			 "function or \"module.function\"");
	if (t == LUA_TFUNCTION && lua_iscfunction(L, 1))
		return luaL_argerror(L, 1, "a C function cannot be sent to another worker");
	int nargs = lua_gettop(L);
	job_t *j = weft_calloc(1, sizeof *j);
	fut_t *f = weft_calloc(1, sizeof *f);
	if (!j || !f) {
		weft_free(j);
		weft_free(f);
		return luaL_error(L, "weft.spawn: out of memory");
	}
	if (lw_serialize(L, 1, nargs, LW_SER_FUNCTIONS, &j->blob) < 0) {
		lw_blob_free(&j->blob);
		weft_free(j);
		weft_free(f);
		luaL_pushfail(L);
		lua_insert(L, -2);
		return 2;
	}
	weft_mutex_init(&f->lock);
	atomic_init(&f->refs, 2); /* the job's and the future object's */
	j->f = f;
	j->node.data = j;
	lfut_t *lf = lua_newuserdatauv(L, sizeof *lf, 0);
	lf->f = f;
	luaL_setmetatable(L, LW_FUTURE);
	weft_worker_spawn(S->w, &j->node);
	return 1;
}

static fut_t *checkfut(lua_State *L, int idx)
{
	return ((lfut_t *)luaL_checkudata(L, idx, LW_FUTURE))->f;
}

static int fut_gc(lua_State *L)
{
	lfut_t *lf = luaL_checkudata(L, 1, LW_FUTURE);
	if (lf->f)
		fut_unref(lf->f);
	lf->f = NULL;
	return 0;
}

/* future:done() -> whether the result is in */
static int f_done(lua_State *L)
{
	fut_t *f = checkfut(L, 1);
	weft_mutex_lock(&f->lock);
	int done = f->done;
	if (done && f->nwait)
		post_waiters(f);
	weft_mutex_unlock(&f->lock);
	lua_pushboolean(L, done);
	return 1;
}

static void withdraw(fut_t *f, weft_worker_t *w, uint32_t slot, uint32_t seq)
{
	weft_mutex_lock(&f->lock);
	for (size_t i = 0; i < f->nwait; i++) {
		if (f->waiters[i].w == w && f->waiters[i].slot == slot &&
		    f->waiters[i].seq == seq) {
			memmove(&f->waiters[i], &f->waiters[i + 1],
				(f->nwait - i - 1) * sizeof *f->waiters);
			f->nwait--;
			break;
		}
	}
	weft_mutex_unlock(&f->lock);
}

/* future:wait([expires]) -> true, results... | nil, message */
static int wait_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	fut_t *f = checkfut(L, 1);
	uint32_t slot = lw_waiter(L, S);
	if (status == LUA_YIELD) {
		int code = lw_wakecode(L);
		if (code < 0) {
			withdraw(f, S->w, slot, (uint32_t)ctx);
			/* At the deadline a result that came in meanwhile (its
			 * wake-up lost in the race, or never posted) is still
			 * taken. */
			weft_mutex_lock(&f->lock);
			int done = f->done;
			weft_mutex_unlock(&f->lock);
			if (code != WEFT_ETIMEOUT || !done)
				return lw_error(L, code);
		}
	}
	uint64_t deadline = lw_deadline(L, 2);
	weft_mutex_lock(&f->lock);
	if (!f->done) {
		if (deadline != UINT64_MAX && weft_clock_ns() >= deadline) {
			weft_mutex_unlock(&f->lock);
			return lw_error(L, WEFT_ETIMEOUT);
		}
		if (f->nwait == f->capwait) {
			size_t cap = f->capwait ? f->capwait * 2 : 4;
			waiter_t *v = weft_realloc(f->waiters, cap * sizeof *v);
			if (!v) {
				weft_mutex_unlock(&f->lock);
				return lw_error(L, WEFT_ENOMEM);
			}
			f->waiters = v;
			f->capwait = cap;
		}
		uint32_t seq = weft_worker_wait_ext_until(S->w, slot, deadline);
		f->waiters[f->nwait++] = (waiter_t){S->w, slot, seq};
		weft_mutex_unlock(&f->lock);
		return lw_await(L, (lua_KContext)seq, wait_k);
	}
	if (f->nwait)
		post_waiters(f);
	weft_mutex_unlock(&f->lock);
	/* Done: the result never changes, so it is read without the lock. */
	lua_settop(L, 0);
	int n = lw_deserialize(L, f->result.data, f->result.len, 0);
	if (n < 1)
		return n < 0 ? lw_error(L, WEFT_ENOMEM) : 0;
	if (!lua_toboolean(L, 1)) {
		luaL_pushfail(L);
		lua_replace(L, 1);
	}
	return n;
}

static int f_wait(lua_State *L)
{
	lw_waiter(L, lw_S(L));
	checkfut(L, 1);
	lua_settop(L, 2);
	return wait_k(L, LUA_OK, 0);
}

static const luaL_Reg methods[] = {
	{"wait", f_wait},
	{"done", f_done},
	{NULL, NULL},
};

static const luaL_Reg meta[] = {
	{"__gc", fut_gc},
	{NULL, NULL},
};

void lw_open_spawn(lua_State *L, lw_state_t *S)
{
	lw_newclass(L, S, LW_FUTURE, methods, meta);
	lua_pushlightuserdata(L, S);
	lua_pushcclosure(L, l_spawn, 1);
	lua_setfield(L, -2, "spawn");
}
