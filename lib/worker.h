/* The runtime and its workers: the scheduler core, without Lua.
 *
 * A runtime is one shared poller (the face of the runtime: weft.epoll_fd()
 * names it, and shared listening sockets live in it) and one fd table.  A
 * worker is one OS thread's scheduler: a poller of its own, a coroutine
 * table (slots, not Lua values: the binding keeps the Lua side), a run
 * queue of wake-ups, a timer wheel and an inbox.  The binding asks a
 * worker to make coroutine `slot` wait (for an fd direction, a deadline,
 * or an outside completion), then calls weft_worker_poll() and resumes
 * whatever weft_worker_next() hands out.
 *
 * Several workers (threads) may share one runtime.  A socket is
 * registered in the poller of the worker that opened it, the only one
 * whose coroutines can wait on it (coroutines never move), so its events
 * reach that worker and nobody else: no event is handed between workers
 * and no worker waits for another to harvest for it.  The shared poller
 * is registered (level-triggered) in every worker's poller; a worker that
 * sees it readable harvests it without blocking.  Other workers reach a
 * worker through its inbox, and wake it through its poller's wake channel
 * only when it sleeps there (DESIGN §3, §4).
 *
 * Thread ownership: a worker's functions are called by its owner thread
 * only, except weft_worker_post() and weft_worker_unpark(), which any
 * thread may call.  Runtime functions are thread-safe. */
#ifndef WEFT_WORKER_H
#define WEFT_WORKER_H

#include <stdalign.h>
#include <stdint.h>

#include "fdtab.h"
#include "inbox.h"
#include "jobq.h"
#include "poller.h"
#include "runq.h"
#include "thread.h"
#include "timer.h"

#define WEFT_MAX_WORKERS 256
#define WEFT_NSTATS 13 /* counters in weft_worker_stats_t */

/* A wake-up code for waits that another party ends on purpose (a sleep
 * job's wakeup); I/O waits end with 0, WEFT_ETIMEOUT or WEFT_ECLOSED. */
#define WEFT_WAKE_USER 1
/* Wakes a SUSPENDED coroutine (seq of its suspension): the only wake-up
 * a suspended coroutine accepts.  Used by wake handles (weft.wakehandle). */
#define WEFT_WAKE_RESUME 2

enum weft_co_state {
	WEFT_CO_FREE = 0,
	WEFT_CO_RUNNING,   /* running, or runnable and not waiting */
	WEFT_CO_SUSPENDED, /* waiting for nobody in particular (suspend) */
	WEFT_CO_WAIT_IO,   /* waiting on an fd direction (maybe a deadline) */
	WEFT_CO_WAIT_TIME, /* waiting for a deadline or a user wake-up */
	WEFT_CO_WAIT_EXT   /* waiting for an outside completion (resolver) */
};

/* Per-coroutine scheduling record.  Owner only. */
typedef struct weft_co {
	weft_timer_t _timer; /* deadline of the current wait */
	weft_fd_t *_fd;      /* WAIT_IO: the record waited on */
	void *_data;         /* data that came with the last wake-up */
	uint32_t seq;        /* number of the current (or last) wait */
	uint32_t _next_free;
	uint8_t state;       /* enum weft_co_state */
	uint8_t _dir;        /* WAIT_IO: WEFT_READ or WEFT_WRITE */
	uint8_t _alive;      /* this wait keeps the loop alive */
	uint8_t _pending;    /* a wake-up for this wait is queued */
	uint32_t _fdgen;     /* WAIT_IO: the record's generation at the wait */
	uint32_t _slot;      /* this record's slot (constant) */
} weft_co_t;

typedef struct weft_runtime weft_runtime_t;

/* Counters, in this order (weft_runtime_stats sums them as an array). */
typedef struct weft_worker_stats {
	_Atomic uint64_t events;     /* poller events harvested */
	_Atomic uint64_t stale;      /* events for closed/reused fds, dropped */
	_Atomic uint64_t wakes;      /* wake-ups queued */
	_Atomic uint64_t timers;     /* timers fired */
	_Atomic uint64_t inbox;      /* inbox messages taken */
	_Atomic uint64_t handoffs;   /* I/O wake-ups sent to another worker */
	_Atomic uint64_t polls;      /* calls into the poller */
	_Atomic uint64_t lost;       /* wake-ups dropped for want of memory */
	_Atomic uint64_t parks;      /* blocking waits in the poller */
	_Atomic uint64_t unparks;    /* of those, ended by another thread's wake */
	_Atomic uint64_t jobs_run;   /* jobs taken from the job queue */
	_Atomic uint64_t jobs_stolen; /* jobs taken from other workers' queues */
	_Atomic uint64_t spins;      /* idle spins before a blocking wait */
} weft_worker_stats_t;

/* Counters are written by their worker only and may be read by any
 * thread (weft.stats totals): relaxed atomic loads and stores, which cost
 * what plain ones do, not read-modify-write instructions. */
#define WEFT_STAT_ADD(w, field, n)                                                                 \
	atomic_store_explicit(&(w)->stats.field,                                                   \
			      atomic_load_explicit(&(w)->stats.field, memory_order_relaxed) + (n), \
			      memory_order_relaxed)
#define WEFT_STAT(w, field) atomic_load_explicit(&(w)->stats.field, memory_order_relaxed)

/* Coroutine records live in chunks that never move (armed timers are
 * linked by address), found through a growable array of chunk pointers. */
#define WEFT_CO_CHUNK_SHIFT 8
#define WEFT_CO_CHUNK (1u << WEFT_CO_CHUNK_SHIFT)

typedef struct weft_worker {
	/* Owner only. */
	weft_runtime_t *rt;
	uint32_t id;
	weft_runq_t runq;
	weft_wheel_t wheel;
	weft_wheel_t cbwheel;      /* callback timers (weft_worker_timer_arm) */
	weft_timer_t *_cbdue;      /* callback timers fired and not yet taken, */
	weft_timer_t **_cbdue_tail; /* in expiry order */
	weft_poller_t *poller; /* this worker's sockets and wake channel */
	weft_co_t **_chunks;
	uint32_t _ncos, _capcos, _free, _nchunks;
	uint32_t nalive; /* waits that keep the loop alive */
	uint32_t nfds;   /* fd records this worker opened */
	int _spin_ok;    /* the last wake-up came through the inbox */
	/* Frees the data of a WEFT_MSG_WAKE message whose wait was over
	 * (set by the binding; NULL = the data is not owned). */
	void (*drop_data)(void *);
	struct weft_worker *_grave; /* the runtime's freed workers */
	uint64_t _base[WEFT_NSTATS]; /* counters when it joined its runtime */
	/* Written by the owner, read by anyone (weft.stats). */
	weft_worker_stats_t stats;
	/* Written by other threads: each group on a line of its own. */
	alignas(64) _Atomic int _park; /* parking state (worker.c) */
	_Atomic uint64_t _lost_posts;  /* posts to us that failed (no memory) */
	alignas(64) weft_inbox_t inbox;
	alignas(64) weft_jobq_t jobs; /* spawned work not yet bound to a state */
} weft_worker_t;

/* Inbox message kinds. */
enum {
	WEFT_MSG_WAKE = 1, /* wake (slot, seq) with code */
	WEFT_MSG_IO,       /* an I/O wait of slot ended by an event (code) */
	/* As WEFT_MSG_WAKE, for a wake-up that answers an event rather than
	 * another worker (an accepted connection, a finished name lookup):
	 * no reply is about to follow, so it is no reason to spin. */
	WEFT_MSG_WAKE_QUIET
};

/* Make a runtime with a new poller (epfd < 0) or one adopting the given
 * poller handle.  0 or a negative code. */
int weft_runtime_new(int epfd, weft_runtime_t **out);

/* Drop a reference to a runtime (weft_runtime_new gives one); the last one
 * frees it, and no worker may be attached then. */
void weft_runtime_free(weft_runtime_t *rt);

/* Tell every worker of rt to stop its loop (weft.exit(), a signal):
 * sets a flag their loops check and wakes them.  Any thread. */
void weft_runtime_exit(weft_runtime_t *rt);
int weft_runtime_exiting(const weft_runtime_t *rt);
/* weft_runtime_exit for every runtime of the process (signal handling). */
void weft_runtime_exit_all(void);

/* The counters of rt's workers added up, and how many workers there are.
 * Workers that have been freed or moved away still count with what they
 * did while attached to rt, so totals never go down.  Any thread. */
int weft_runtime_stats(weft_runtime_t *rt, uint64_t sum[WEFT_NSTATS]);

/* How many runtimes the process has now.  Any thread. */
int weft_runtime_count(void);

/* Member numbers: the 1-based numbers a runtime's Lua states report as
 * weft.worker(), kept here so that no two states of a runtime share one.
 * weft_runtime_claim takes number `index` of `count` (the count every
 * claim of this kind must agree on while any is held): 0, -ERANGE (not
 * 1 <= index <= count <= WEFT_MAX_WORKERS), -EINVAL (another count was
 * declared) or -EEXIST (taken).  weft_runtime_claim_any takes the lowest
 * free number above the declared count: the number, or -EUSERS when none
 * is left.  weft_runtime_release gives a number back (`declared`: it was
 * taken by weft_runtime_claim).  weft_runtime_members is the declared
 * count or the highest number taken, whichever is larger.  Any thread. */
int weft_runtime_claim(weft_runtime_t *rt, int index, int count);
int weft_runtime_claim_any(weft_runtime_t *rt);
void weft_runtime_release(weft_runtime_t *rt, int index, int declared);
int weft_runtime_members(weft_runtime_t *rt);

/* Take another reference to rt; returns rt. */
weft_runtime_t *weft_runtime_ref(weft_runtime_t *rt);

/* Take a reference to the runtime of this process whose poller handle is
 * pollfd (another Lua state's, on another thread).  0, or -ENOENT. */
int weft_runtime_join(int pollfd, weft_runtime_t **out);

/* The runtime's poller and fd table. */
weft_poller_t *weft_runtime_poller(weft_runtime_t *rt);
weft_fdtab_t *weft_runtime_fdtab(weft_runtime_t *rt);

/* Attach a new worker to rt.  0 or a negative code (-EUSERS: rt has
 * WEFT_MAX_WORKERS workers already). */
int weft_worker_new(weft_runtime_t *rt, weft_worker_t **out);

/* Detach and free a worker: it must have no coroutine waiting on an fd,
 * and no job queued (weft_worker_hand_jobs, then weft_worker_pop_job for
 * what is left: the binding fails those jobs).  Jobs still queued are
 * dropped from the runtime's count, so no other worker waits for them.
 * The part other threads may still touch (inbox, parking, job queue) is
 * kept until the runtime is freed; posts to a freed worker fail with
 * WEFT_ECLOSED. */
void weft_worker_free(weft_worker_t *w);

/* Move w to runtime rt (sharing rt's poller from now on).  Only a worker
 * with no open fd records and no queued jobs can move: -EBUSY otherwise
 * (-EUSERS: rt has WEFT_MAX_WORKERS workers).
 * The caller keeps its references to both runtimes right. */
int weft_worker_move(weft_worker_t *w, weft_runtime_t *rt);

/* Move every job queued on w to another live worker of its runtime (and
 * wake it).  Returns how many moved; 0 when there is no other worker. */
size_t weft_worker_hand_jobs(weft_worker_t *w);

/* Take the oldest job of w's own queue (no stealing), or NULL. */
weft_job_t *weft_worker_pop_job(weft_worker_t *w);

/* This worker's poller (its sockets are registered there). */
static inline weft_poller_t *weft_worker_poller(weft_worker_t *w)
{
	return w->poller;
}

/* Make a record of w (a listening socket) a shared one: its registration
 * moves to the runtime's shared poller, disarmed (re-arm it with
 * weft_poller_modify on weft_runtime_poller), and it no longer counts
 * among w's records.  Any worker may close it later.  0 or -errno. */
int weft_worker_share_fd(weft_worker_t *w, weft_fd_t *r);

/* Wake w if it sleeps (in the poller or on its condition variable), or
 * make its next sleep return at once.  Any thread. */
void weft_worker_unpark(weft_worker_t *w);

/* Coroutine slots.  co_new returns a slot (>= 0) or WEFT_ENOMEM. */
int64_t weft_worker_co_new(weft_worker_t *w);
void weft_worker_co_free(weft_worker_t *w, uint32_t slot);
static inline weft_co_t *weft_worker_co(weft_worker_t *w, uint32_t slot)
{
	return &w->_chunks[slot >> WEFT_CO_CHUNK_SHIFT][slot & (WEFT_CO_CHUNK - 1)];
}

/* Register fd with this worker's poller (edge-triggered, both
 * directions) and give it a record owned by this worker.  NULL and *err
 * on failure. */
weft_fd_t *weft_worker_open_fd(weft_worker_t *w, int fd, int *err);

/* Shut a record: waiters wake with WEFT_ECLOSED, the fd leaves the poller
 * and is closed, the record goes back to the table. */
void weft_worker_close_fd(weft_worker_t *w, weft_fd_t *r);

/* After EAGAIN on r in direction dir, make `slot` wait for readiness until
 * deadline_ns (UINT64_MAX = none).  Returns 0 (waiting: suspend the
 * coroutine), 1 (readiness was pending: retry the call now), or
 * WEFT_ECLOSED / -EBUSY. */
int weft_worker_wait_io(weft_worker_t *w, uint32_t slot, weft_fd_t *r, int dir,
			uint64_t deadline_ns);

/* Make `slot` wait until deadline_ns (UINT64_MAX = until woken).  A wait
 * without deadline does not keep the loop alive.  0 or a negative code. */
int weft_worker_wait_time(weft_worker_t *w, uint32_t slot, uint64_t deadline_ns);

/* Make `slot` wait for an outside completion (delivered by a
 * WEFT_MSG_WAKE message); keeps the loop alive.  Returns the wait's seq. */
uint32_t weft_worker_wait_ext(weft_worker_t *w, uint32_t slot);

/* The same with a deadline: the wait ends with WEFT_ETIMEOUT then
 * (UINT64_MAX = none). */
uint32_t weft_worker_wait_ext_until(weft_worker_t *w, uint32_t slot, uint64_t deadline_ns);

/* The data that came with the wake-up that ended slot's last wait (a
 * WEFT_MSG_WAKE message's ptr), or NULL; the caller owns it. */
void *weft_worker_take_data(weft_worker_t *w, uint32_t slot);

/* Abandon the wait just begun (nothing can have woken it: the caller
 * found what it wanted before registering anywhere). */
void weft_worker_wait_abort(weft_worker_t *w, uint32_t slot);

/* Callback timers: timers of the binding's own (weft.runat and friends),
 * armed in a wheel of their own.  When due they are not woken but queued,
 * in expiry order, for the binding to take with weft_worker_timer_next and
 * run.  Armed or queued, a timer keeps the loop alive.  t must not be armed
 * or queued; it must have been through weft_timer_init once. */
void weft_worker_timer_arm(weft_worker_t *w, weft_timer_t *t, uint64_t deadline_ns);

/* Disarm a callback timer that is armed (not yet due).  Returns 1 if it
 * was, 0 if it is not armed (never armed, already taken, or queued as
 * due: a queued timer stays queued, and the binding skips it). */
int weft_worker_timer_disarm(weft_worker_t *w, weft_timer_t *t);

/* Take the next due callback timer, or NULL. */
weft_timer_t *weft_worker_timer_next(weft_worker_t *w);

/* Whether due callback timers wait to be taken. */
static inline int weft_worker_timers_due(const weft_worker_t *w)
{
	return w->_cbdue != NULL;
}

/* Make `slot` runnable again on the next step (a fair yield).  Returns the
 * wait's seq. */
uint32_t weft_worker_yield(weft_worker_t *w, uint32_t slot);

/* Mark `slot` suspended: waiting for nobody in particular.  Every
 * suspension has a seq of its own (co->seq after this call), so only a
 * WEFT_WAKE_RESUME wake-up given that seq ends it; older ones are stale. */
void weft_worker_suspend(weft_worker_t *w, uint32_t slot);

/* Make slot's current suspension keep the loop alive, as a wait does (a
 * wake-up for it may come from another worker).  Ends with the
 * suspension: by its wake-up, weft_worker_run or weft_worker_co_free. */
void weft_worker_keepalive(weft_worker_t *w, uint32_t slot);

/* `slot`, running or suspended, runs now (a direct resume: not through a
 * wake-up, which leaves the wait itself). */
void weft_worker_run(weft_worker_t *w, uint32_t slot);

/* Queue a wake-up for `slot` if it is still in wait `seq` (or suspension
 * `seq`, for code WEFT_WAKE_RESUME) and none is queued yet.  Returns 1 if
 * queued, 0 if stale or already pending. */
int weft_worker_wake(weft_worker_t *w, uint32_t slot, uint32_t seq, int32_t code);

/* Post a message to w's inbox and interrupt its poll.  Any thread.
 * 0, WEFT_ECLOSED (w has been freed: the message's waiter is gone, serve
 * another) or WEFT_ENOMEM: the inbox could not grow.  Wake-up posters (channels,
 * listeners, futures, sleep jobs) have no better fallback than letting
 * the waiter run into its deadline, so a wait without one can hang only
 * when memory is exhausted. */
int weft_worker_post(weft_worker_t *w, const weft_msg_t *m);

/* Gather work: harvest poller events (blocking up to timeout_ns, or up to
 * the next timer, whichever is first; not at all if wake-ups are already
 * queued), fire due timers, take inbox messages.  Returns the number of
 * wake-ups queued, or a negative code if the poller failed. */
int weft_worker_poll(weft_worker_t *w, uint64_t timeout_ns);

/* Pop the next valid wake-up: the coroutine leaves its wait (state
 * RUNNING, deadline cancelled).  1 and *out, or 0 when the queue is
 * empty. */
int weft_worker_next(weft_worker_t *w, weft_wake_t *out);

/* Internal, for listener.c: the runtime's listener registry and lock, and
 * whether a worker is idle (blocked in its poller, or about to block). */
weft_mutex_t *weft__runtime_listener_lock(weft_runtime_t *rt);
void **weft__runtime_listeners(weft_runtime_t *rt);
/* listener.c's word: the earliest retry time of a listener whose accepts
 * back off, 0 = none (see weft__listener_retry).  Written under the
 * listener registry lock; read without it by the worker hooks, as a hint
 * (they take the lock before acting on it). */
_Atomic uint64_t *weft__runtime_listener_retry(weft_runtime_t *rt);
void **weft__runtime_channels(weft_runtime_t *rt);
int weft__worker_idle(const weft_worker_t *w);

/* Test hook: how many CPUs the spinning rule assumes the process has. */
void weft__runtime_set_cpus(weft_runtime_t *rt, int ncpu);

/* Queue a job on w's queue and wake an idle worker that may steal it.
 * Owner only. */
void weft_worker_spawn(weft_worker_t *w, weft_job_t *j);

/* The next job to run: w's oldest, or else half of the longest queue of
 * another worker is stolen first.  NULL when there is none.  Owner only. */
weft_job_t *weft_worker_next_job(weft_worker_t *w);

/* Whether anything can still happen: wake-ups queued, waits that keep
 * the loop alive, or jobs queued here. */
static inline int weft_worker_alive(const weft_worker_t *w)
{
	return weft_runq_len(&w->runq) != 0 || w->nalive != 0 ||
	       atomic_load_explicit(&((weft_worker_t *)w)->jobs.len, memory_order_relaxed) != 0;
}

#endif
