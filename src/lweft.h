/* Internal interface of the Lua binding (module weft.core).  Everything
 * here runs on the thread that owns the lua_State. */
#ifndef WEFT_LWEFT_H
#define WEFT_LWEFT_H

#include <lauxlib.h>
#include <lua.h>
#include <stdatomic.h>
#include <stdint.h>

#include "sock.h"
#include "thread.h"
#include "worker.h"

/* Metatable names. */
#define LW_BUFFER "weft.buffer"
#define LW_SOCKET "weft.socket"
#define LW_ADDRINFO "weft.addrinfo"
#define LW_SOCKADDR "weft.sockaddr"
#define LW_IPADDR "weft.ipaddr"
#define LW_SLEEPJOB "weft.sleep_job"
#define LW_WAKEHANDLE "weft.wakehandle"

#define LW_NONE UINT32_MAX

/* Successful I/O calls a thread may make in one run before it is made to
 * yield, so that a fast peer cannot starve the other threads. */
#define LW_IO_BUDGET 64

/* The binding's per-state record: the worker this lua_State drives and the
 * coroutines it knows.  It is the first upvalue of every function. */
typedef struct lw_state {
	weft_runtime_t *rt;
	weft_worker_t *w;
	lua_State *L;        /* the main thread */
	lua_State **threads; /* slot -> coroutine (strong ref in the registry) */
	struct lw_whshared **wh; /* slot -> its wake handles' shared part, or NULL;
				  * the table itself NULL until a handle is made */
	uint32_t cap;
	uint32_t current; /* slot of the running weft thread, or LW_NONE */
	int budget;       /* I/O calls left in this run (LW_IO_BUDGET) */
	int ibudget;      /* instructions a thread may run per resume; 0 = no limit */
	int stopping;     /* weft.stop() was called */
	int looping;      /* inside weft.start/poll */
	struct lw_rtarget *rtarget; /* where name lookups post completions */
	int closed;       /* the state is being closed */
	int worker_index; /* weft.worker(): its member number in rt */
	int declared;     /* the number came from weft_lua_attach */
	uint32_t nthreads; /* live weft threads */
	uint32_t tm_idle;  /* the idle timer runner thread, or LW_NONE */
	int *tm_free;      /* free slots of the held timers table (ltimer.c) */
	uint32_t tm_nfree, tm_capfree;
	int tm_top;        /* slots of that table used so far */
	weft_thread_id_t owner; /* the thread that loaded weft: the only one that may run it */
} lw_state_t;

/* The record, from the first upvalue. */
#define lw_S(L) ((lw_state_t *)lua_touserdata((L), lua_upvalueindex(1)))

/* Fast type checks for the classes on the I/O paths (sockets, buffers):
 * their userdata start with a tag, the address of lw_tag_socket or
 * lw_tag_buffer.  Two API calls (lua_touserdata, lua_rawlen) and a load
 * tell the class, where a metatable comparison takes five and
 * luaL_checkudata a registry lookup by name: these checks run several
 * times per recv and send.  Only C code that takes the address of these
 * tags could make another userdata pass.  lw_testclass returns the
 * userdata at idx if it starts with tag, else NULL.  Every object of
 * these classes gets its tag where it is made; the checks have no slower
 * fallback that could hide one made without. */
extern const char lw_tag_socket, lw_tag_buffer;
void *lw_testclass(lua_State *L, int idx, const void *tag);

/* Register funcs into the table at the top, each with the state record as
 * upvalue. */
void lw_register(lua_State *L, lw_state_t *S, const luaL_Reg *funcs);

/* Make a metatable `name` with methods (as __index) and metamethods, all
 * closing over S.  Leaves nothing on the stack. */
void lw_newclass(lua_State *L, lw_state_t *S, const char *name, const luaL_Reg *methods,
		 const luaL_Reg *meta);

/* Push nil, message for a weft error code; returns 2.  With `partial` >= 0
 * a third value is pushed (bytes done) and 3 returned. */
int lw_error(lua_State *L, int code);
int lw_error_partial(lua_State *L, int code, lua_Integer partial);

/* Absolute deadline in ns from an optional `expires` argument (weft.clock()
 * seconds); UINT64_MAX when absent or nil. */
uint64_t lw_deadline(lua_State *L, int idx);

/* The slot of the weft thread that is running L (L itself, or a cowrap
 * coroutine inside it); raises if L may not wait. */
uint32_t lw_waiter(lua_State *L, lw_state_t *S);

/* Suspend the running thread until its wait ends; the continuation k gets
 * the wake-up code (0, WEFT_ETIMEOUT, WEFT_ECLOSED, WEFT_WAKE_USER or a
 * completion code) on top of the stack.  Use as `return lw_await(...)`. */
int lw_await(lua_State *L, lua_KContext ctx, lua_KFunction k);

/* The marker a waiting call yields (the scheduler and weft.cowrap look
 * for it). */
void *lw_mark_wait(void);

/* Tag a coroutine as a weft.cowrap body: it may wait for its weft thread. */
void lw_tag_cowrap(lua_State *co);

/* The weft thread slot of co, or LW_NONE; set it (LW_NONE clears). */
uint32_t lw_slot_of(lw_state_t *S, lua_State *co);
void lw_set_slot(lua_State *co, uint32_t slot);

/* Pop the wake-up code pushed by the scheduler (see lw_await). */
int lw_wakecode(lua_State *L);

/* Count a successful I/O call; 1 when the thread should yield now. */
static inline int lw_spend(lw_state_t *S)
{
	return --S->budget <= 0 && S->current != LW_NONE;
}

/* Whether a thread that just did I/O should yield for fairness now. */
static inline int lw_fair(lua_State *L, lw_state_t *S)
{
	return lw_spend(S) && lua_isyieldable(L);
}

/* Yield for fairness (the thread runs again on the next step); k then
 * gets code 0. */
int lw_fair_yield(lua_State *L, lw_state_t *S, lua_KContext ctx, lua_KFunction k);

/* Buffers. */
typedef struct lw_buffer {
	const void *tag; /* &lw_tag_buffer (lw_testclass) */
	char *data;     /* owned bytes (NULL for a view) */
	size_t len;     /* length; for a view, its length */
	size_t off;     /* for a view: offset in the parent */
	int view;       /* a view keeps its parent in its user value */
} lw_buffer_t;

/* The bytes of a buffer at idx, checking a view still fits its parent. */
char *lw_buffer_bytes(lua_State *L, int idx, size_t *len);
/* The same for an argument already checked (a continuation's stack holds
 * what its method checked: only the length may have changed since). */
char *lw_buffer_bytes_known(lua_State *L, int idx, size_t *len);
const char *lw_bytes_known(lua_State *L, int idx, size_t *len);
/* A string or buffer argument as bytes. */
const char *lw_checkbytes(lua_State *L, int idx, size_t *len);
/* Push a new buffer of len bytes (zeroed unless data is given). */
lw_buffer_t *lw_buffer_push(lua_State *L, const char *data, size_t len);
/* Resize an owned buffer; 0 or WEFT_ENOMEM. */
int lw_buffer_resize(lw_buffer_t *b, size_t len);

/* The address at idx, an addrinfo entry or a sockaddr object: points *sa
 * at it (valid while the object is on the stack).  Raises otherwise. */
const struct sockaddr *lw_checkaddr(lua_State *L, int idx, unsigned *salen, int *socktype);

/* Start a weft thread running the function under the nargs values at
 * the top of L's stack (all popped), as the loop does: errors go to the
 * error handler.  For lspawn.c. */
void lw_thread_start(lua_State *L, lw_state_t *S, int nargs, const char *name);

/* Resume thread `slot` (suspended) with the nargs values at the top of
 * L's stack, as the loop does: errors go to the error handler. */
void lw_thread_resume(lua_State *L, lw_state_t *S, uint32_t slot, int nargs);

/* Restart the instruction budget (weft.setbudget) of co, which is
 * running: the timer runner gives each function a budget of its own. */
void lw_budget_restart(lw_state_t *S, lua_State *co);

/* The marker weft.suspend yields. */
void *lw_mark_suspend(void);

/* Run the callbacks of the timers that are due (weft.runat and friends).
 * Returns how many threads ran them. */
int lw_timer_step(lua_State *L, lw_state_t *S);

/* Run jobs from the job queue (stealing if idle): a few per loop step.
 * Returns how many were started. */
int lw_spawn_step(lua_State *L, lw_state_t *S);
/* The state is closing: hand its queued jobs to another worker, or fail
 * their futures when there is none. */
void lw_spawn_close(lua_State *L, lw_state_t *S);

/* Where resolver threads post completions for a state (laddr.c). */
typedef struct lw_rtarget lw_rtarget_t;
/* The state is closing: lookups in flight finish without it, unwaited. */
void lw_close_addr(lw_state_t *S);

/* Module parts. */
void lw_open_buffer(lua_State *L, lw_state_t *S);
void lw_open_addr(lua_State *L, lw_state_t *S);
void lw_open_socket(lua_State *L, lw_state_t *S);
void lw_open_sched(lua_State *L, lw_state_t *S);
/* The state is closing: wake handles of its threads stop delivering (their
 * wakeup returns false from now on). */
void lw_close_sched(lw_state_t *S);
void lw_open_channel(lua_State *L, lw_state_t *S);
void lw_open_spawn(lua_State *L, lw_state_t *S);
void lw_open_timer(lua_State *L, lw_state_t *S);
void lw_open_copas(lua_State *L, lw_state_t *S);

/* TCP sockets as ltls.c sees them.  lw_checktcp raises unless idx is a
 * weft TCP socket; lw_sock_fd is -1 when it is closed or listening;
 * lw_sock_wait, after EAGAIN in direction dir (WEFT_READ or WEFT_WRITE),
 * returns 1 to retry now, 0 when the caller must `return lw_await(...)`,
 * or a negative error code. */
typedef struct lsock lsock_t;
lsock_t *lw_checktcp(lua_State *L, int idx);
int lw_sock_fd(const lsock_t *s);
int lw_sock_wait(lua_State *L, lw_state_t *S, lsock_t *s, int dir, uint64_t deadline);
/* lw_totcp: the weft TCP socket at idx, or NULL.  lw_sock_recv receives
 * up to maxlen bytes into p as s:recv does (readiness tracking, the
 * deadline, a closed socket): the count (0 at the end of the stream), a
 * negative error code, or LW_WAITING when the caller must `return
 * lw_await(...)` and call it again once woken.  No fairness yield: that is
 * the caller's (lw_fair). */
#define LW_WAITING (-0x40000000) /* far from every error code (lib/error.h) */
lsock_t *lw_totcp(lua_State *L, int idx);
ssize_t lw_sock_recv(lua_State *L, lw_state_t *S, lsock_t *s, char *p, size_t maxlen,
		     uint64_t deadline);
void lw_open_tls(lua_State *L, lw_state_t *S);
/* Socket arguments as the TCP methods take them: the bytes to send at idx
 * (a string or buffer) with an optional length at idx+1; the buffer to
 * receive into at idx with an optional maximum at idx+1. */
const char *lw_send_args(lua_State *L, int idx, size_t *len);
char *lw_recv_args(lua_State *L, int idx, size_t *maxlen);
/* Continuations after a fairness yield: return true / the integer ctx. */
int lw_return_true_k(lua_State *L, int status, lua_KContext ctx);
int lw_return_ctx_k(lua_State *L, int status, lua_KContext ctx);
/* recvall's limit argument at idx: bytes, or SIZE_MAX - 1 for none. */
size_t lw_recvall_limit(lua_State *L, int idx);
/* recvall's buffer before each read: 0, WEFT_ETOOLARGE or WEFT_ENOMEM
 * (see lsocket.c). */
int lw_recvall_room(lw_buffer_t *b, size_t *got, size_t limit);

/* Push a new addrinfo userdata owning list; for laddr.c and lsocket.c. */
void lw_addrinfo_push(lua_State *L, struct addrinfo *list);
/* Push a sockaddr object copied from sa. */
void lw_sockaddr_push(lua_State *L, const struct sockaddr *sa, size_t len);

/* Names for constants. */
const char *lw_family_name(int family);
const char *lw_type_name(int type);
const char *lw_protocol_name(int protocol);
int lw_family_value(lua_State *L, int idx, int def);
int lw_type_value(lua_State *L, int idx, int def);
int lw_protocol_value(lua_State *L, int idx, int def);

/* Entry point shared by the module and the launcher. */
int weft__open(lua_State *L);

#endif
