/* weft's C API, for programs that embed Lua states (libweft).
 *
 * Link with pkg-config:
 *
 *     cc app.c $(pkg-config --cflags --libs weft)
 *
 * libweft carries the whole runtime and this API; the Lua module
 * weft/core.so is a thin module linked against it.  A program linked with
 * libweft and the module `require "weft"` loads therefore share one copy
 * of the runtime, which is what lets states share one.
 *
 * Several lua_States, each driven by a thread of the program, can share
 * one weft runtime (a shared poller, listening sockets, named channels,
 * spawned jobs): make a runtime, attach each state to it before the state
 * first requires "weft", then run each state's code (for instance
 * weft.run(...) or weft.start()).  A socket's events reach the state that
 * opened it, whichever thread runs the others.  This is what `weft -t N`
 * does.  A state that loaded weft on its own can also join a runtime from
 * Lua with weft.epoll_fd(fd).
 *
 * The rules, as the code keeps them:
 * - A lua_State is used by one thread at a time (Lua's own rule): the
 *   thread that runs its loop (weft.run, weft.start, weft.poll) may change
 *   between runs, never during one.  Calls to this API on a state follow
 *   the same rule; runtime handles may be used from any thread.
 * - States of one runtime may close (lua_close) in any order, on any
 *   thread, while the others run: jobs queued in a closing state move to
 *   another state of the runtime, and the waiters it had elsewhere
 *   (channels, listeners) are withdrawn.  The runtime itself goes when its
 *   last state has closed and weft_lua_runtime_free has been called.
 * - weft.exit() (or weft_lua_runtime_exit) ends a runtime for good: every
 *   state's loop returns and any later loop returns at once.  To start
 *   again, make a new runtime for new states.
 * - A runtime has at most WEFT_LUA_MAX_STATES states.
 *
 * Functions that can fail return 0 (or a count) on success and a negative
 * code otherwise; weft_lua_strerror names it. */
#ifndef WEFT_H
#define WEFT_H

#include <lua.h>

#define WEFT_API __attribute__((visibility("default")))

/* The most states one runtime holds (attached or joined). */
#define WEFT_LUA_MAX_STATES 256

/* Error codes of weft_lua_attach (the other functions return -errno
 * values); weft_lua_strerror names them all. */
enum {
	WEFT_LUA_ELOADED = -20001,   /* L has loaded weft already */
	WEFT_LUA_EATTACHED = -20002, /* L is attached to a runtime already */
	WEFT_LUA_EINDEX = -20003,    /* index is not within 1..count */
	WEFT_LUA_ECOUNT = -20004,    /* count is not within 1..WEFT_LUA_MAX_STATES */
	WEFT_LUA_ECOUNTS = -20005,   /* count differs from other states' of rt */
	WEFT_LUA_ETAKEN = -20006,    /* another state of rt has this index */
	WEFT_LUA_ECOPY = -20007,     /* L belongs to another copy of weft */
	WEFT_LUA_EARG = -20008,      /* L or rt is NULL */
	WEFT_LUA_ENOMEM = -20009     /* L ran out of memory */
};

typedef struct weft_runtime weft_runtime_t;

/* Make a runtime with a new poller: 0 and *out, or a negative code.  The
 * caller holds one reference.  Any thread. */
WEFT_API int weft_lua_runtime_new(weft_runtime_t **out);

/* Drop the caller's reference; states attached keep their own, so this
 * may come right after the last attach.  Any thread. */
WEFT_API void weft_lua_runtime_free(weft_runtime_t *rt);

/* Make L join rt when it loads weft, as state `index` (1-based) of
 * `count`: the values weft.worker() and weft.workers() report.  Every
 * state attached to rt declares the same count, and no two have the same
 * index while both are open (an index comes free when its state closes,
 * or when L closes without having loaded weft).  Returns 0 or a
 * WEFT_LUA_E* code: nothing is attached then.  Call it before L first
 * requires "weft", on the thread that uses L at the time. */
WEFT_API int weft_lua_attach(lua_State *L, weft_runtime_t *rt, int index, int count);

/* End rt for good, as weft.exit() does: every state's loop returns after
 * its current step, and later loops return at once.  rt NULL: every
 * runtime of the process (the launcher does this on SIGINT).  Any thread;
 * not from a signal handler. */
WEFT_API void weft_lua_runtime_exit(weft_runtime_t *rt);

/* A static message for a code returned by this API. */
WEFT_API const char *weft_lua_strerror(int code);

/* The C module's entry point (require "weft.core").  A program that links
 * libweft may preload it: luaL_requiref(L, "weft.core", luaopen_weft_core,
 * 0), or package.preload["weft.core"]. */
WEFT_API int luaopen_weft_core(lua_State *L);

#endif
