/* weft's C API for applications that embed Lua states.
 *
 * Several lua_States, each driven by its own OS thread, can share one weft
 * runtime (one poller): make a runtime, attach each state to it before the
 * state first requires "weft", then run each state's code on its thread
 * (for instance weft.run(...) or weft.start()).  Events for a state's
 * sockets reach that state, whichever thread harvests them.  This is what
 * `weft -t N` does.
 *
 * Thread safety: weft_lua_runtime_new/free may be called from any thread;
 * weft_lua_attach is called on the thread that will own L, before L
 * requires weft. */
#ifndef WEFT_H
#define WEFT_H

#include <lua.h>

#define WEFT_API __attribute__((visibility("default")))

typedef struct weft_runtime weft_runtime_t;

/* Make a runtime with a new poller.  0, or a negative error code. */
WEFT_API int weft_lua_runtime_new(weft_runtime_t **out);

/* Drop the caller's reference (states attached keep their own). */
WEFT_API void weft_lua_runtime_free(weft_runtime_t *rt);

/* Make L join rt when it loads weft, as worker `index` (1-based) of
 * `count`, the values weft.worker() and weft.workers() report.  Returns 0,
 * or -1 if L has loaded weft already. */
WEFT_API int weft_lua_attach(lua_State *L, weft_runtime_t *rt, int index, int count);

/* The C module's entry point (require "weft.core"). */
WEFT_API int luaopen_weft_core(lua_State *L);

#endif
