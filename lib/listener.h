/* Shared listening sockets.
 *
 * When several workers of a runtime listen on the same address, they share
 * one listening socket: the first listen creates it, the others join it
 * (DESIGN §5).  The socket is registered one-shot in the runtime's shared
 * poller; whichever worker harvests its event accepts a batch of
 * connections into the listener's queue and wakes coroutines waiting in
 * accept() in any worker, idle workers first (doc/design.md).  A connection is bound to a
 * Lua state only when a coroutine takes it from the queue, so a slow
 * worker, which is not waiting in accept(), gets none.
 *
 * When accepting fails for want of descriptors or memory, the listener
 * backs off instead of spinning; the worker loop drives the retries
 * through weft__listener_retry and weft__listener_fd_closed.
 *
 * Thread safety: every function may be called from any worker thread. */
#ifndef WEFT_LISTENER_H
#define WEFT_LISTENER_H

#include <stdint.h>

#include "sock.h"
#include "worker.h"

typedef struct weft_listener weft_listener_t;

/* Listen on sa with the worker's socket record r (a bound or unbound TCP
 * socket of w).  If the runtime already has a listener on that address
 * (explicit port, not 0), r is closed and the existing listener is joined;
 * otherwise r is bound (when sa is not NULL), put in listening mode and
 * becomes a new listener.  Either way the caller gets a reference in *out
 * and must not use r any more.  0 or a negative code (r is then still the
 * caller's). */
int weft_listener_listen(weft_worker_t *w, weft_fd_t *r, const struct sockaddr *sa,
			 socklen_t salen, int backlog, weft_listener_t **out);

/* The listening socket's descriptor (for options and addresses). */
int weft_listener_fd(const weft_listener_t *l);

/* Take an accepted connection: returns its fd (the caller opens a record
 * for it), or -EAGAIN when the queue is empty: then, if slot/seq are
 * given (seq from weft_worker_wait_ext_until), the coroutine is registered
 * as waiting, tagged with `tag` (the caller's socket object), and will be
 * woken with code 0 when a connection is handed to it (claim it with
 * weft_listener_claim), or with the error that makes accepting fail
 * (-EMFILE, -ENFILE, -ENOBUFS, -ENOMEM: see weft__listener_retry) if it
 * is the acceptor told of it.  While the listener backs off and nobody
 * has been told yet, the take itself returns that error.  WEFT_ECLOSED
 * once the listener is closed. */
int weft_listener_take(weft_listener_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq,
		       const void *tag);

/* A waiter woken with code 0 was handed a connection of its own: claim
 * it by the wait's slot and seq.  The fd, or -EAGAIN if none (then try
 * weft_listener_take). */
int weft_listener_claim(weft_listener_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq);

/* A waiting coroutine gave up (deadline): withdraw it; if a wake-up was
 * already sent to it, pass it on to another waiter. */
void weft_listener_cancel(weft_listener_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq);

/* Drop a reference.  Coroutines of w waiting through `tag` wake with
 * WEFT_ECLOSED.  The last reference closes the socket and any queued
 * connections. */
void weft_listener_release(weft_listener_t *l, weft_worker_t *w, const void *tag);

/* Called by the worker `harvester` for a poller event on a record whose
 * udata is set (a listener's).  harvester_idle: the harvester came out of
 * a blocking wait with nothing to run, so its own acceptor is served
 * first.  Harvester's thread; not with the listener registry lock held. */
void weft__listener_event(weft_worker_t *harvester, weft_fd_t *r, int harvester_idle);

/* Re-arm every listener of rt whose accept back-off is over (see below).
 * Returns the earliest retry time still pending, in weft_clock_ns() ns,
 * or UINT64_MAX if no listener is backed off.  One relaxed atomic load
 * when none is due.  The worker calls it on every poll (or whenever the
 * time it returned last is due) and caps its poll timeout to the result.
 * Any thread; not with the listener registry lock held.
 *
 * Back-off: when accept fails for want of descriptors or memory (EMFILE,
 * ENFILE, ENOBUFS, ENOMEM), or re-arming the poller registration fails,
 * the listener stays disarmed for 10 ms, doubling up to 1 s, and starts
 * over after an accept succeeds.  The first acceptor waiting (or the
 * next to come) is given that error once per episode; the others keep
 * waiting. */
uint64_t weft__listener_retry(weft_runtime_t *rt, uint64_t now_ns);

/* The runtime closed a descriptor: re-arm every backed-off listener of rt
 * now.  One relaxed atomic load when none is backed off.  Any thread;
 * not with the listener registry lock held. */
void weft__listener_fd_closed(weft_runtime_t *rt);

/* Counters, for tests and stats: connections accepted into the queue, and
 * accept calls made (successful or not).  Any thread. */
uint64_t weft_listener_accepted(const weft_listener_t *l);
uint64_t weft_listener_attempts(const weft_listener_t *l);

#endif
