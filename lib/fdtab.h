/* Per-fd records with generation-tagged wait words (Go's pollDesc).
 *
 * Every open socket has a record, found by slot.  Records are never freed:
 * a closed record goes back to a free list and is reused with a bumped
 * generation, so a stale poller event (token = generation << 32 | slot)
 * is recognised and dropped.  The table grows in chunks that never move, so
 * lookups take no lock.
 *
 * Each record has one atomic wait word per direction:
 *     generation << 32 | state
 * with state EMPTY, READY, CLOSED, or WAIT(waiter) = waiter + WEFT_WAIT_BASE,
 * where `waiter` is the owning worker's coroutine slot.  A coroutine waits
 * only after the I/O call returned EAGAIN, by CAS EMPTY -> WAIT; an event
 * turns EMPTY -> READY (remembered for the next try) or WAIT -> EMPTY and
 * hands the waiter to the caller to wake.  Exactly one party wins each
 * transition, so no readiness edge is lost and no waiter is woken twice.
 *
 * Readiness tracking, to skip system calls bound to fail.  Each event
 * counts an edge in its direction (_edges).  When a call finds a direction
 * empty (EAGAIN; a short TCP read; a short write), the owner records the
 * edge count it saw before the call (weft_fd_drained): until a later edge
 * arrives, the next call in that direction is skipped (weft_fd_idle) and
 * a READY left in the word is stale, so waiting does not consume it for a
 * retry that would fail.  A hang-up, error or urgent data seen once turns
 * this off for the record (_sticky): then every call is tried, so data
 * and FIN arriving in one edge never leave a reader waiting.
 *
 * Thread safety: open/close/lookup and the wait-word functions may be called
 * from any thread. */
#ifndef WEFT_FDTAB_H
#define WEFT_FDTAB_H

#include <stdatomic.h>
#include <stdint.h>

enum { WEFT_READ = 0, WEFT_WRITE = 1 };

enum {
	WEFT_WAIT_EMPTY = 0,
	WEFT_WAIT_READY = 1,
	WEFT_WAIT_CLOSED = 2,
	WEFT_WAIT_BASE = 3 /* state = waiter + WEFT_WAIT_BASE */
};

/* Largest waiter id a wait word can hold. */
#define WEFT_WAITER_MAX (UINT32_MAX - WEFT_WAIT_BASE)

/* The owner of a record registered in the runtime's shared poller. */
#define WEFT_OWNER_SHARED UINT32_MAX

typedef struct weft_fd {
	_Atomic uint64_t _wait[2]; /* READ, WRITE wait words */
	void *_Atomic udata;       /* a shared listener, or NULL (listener.c) */
	_Atomic uint32_t gen;      /* current generation (odd: open) */
	_Atomic int fd;            /* -1 when closed */
	uint32_t slot;             /* index in the table (constant) */
	_Atomic uint32_t owner;    /* worker whose coroutines wait here, or
				    * WEFT_OWNER_SHARED (a shared listener) */
	uint32_t _next_free;
	_Atomic uint32_t _edges[2]; /* readiness events seen, per direction */
	uint32_t _drained[2];       /* owner: _edges when found empty */
	_Atomic uint8_t _sticky;    /* hang-up, error or urgent data seen */
	uint8_t _known;             /* owner: bit dir set = _drained[dir] valid */
	uint8_t _armed;             /* owner: interest of a one-shot re-arm
				     * (pollers without edges, worker.c) */
	char _pad[64 - 3 * 8 - 9 * 4 - 3];
} weft_fd_t;

typedef struct weft_fdtab weft_fdtab_t;

/* Make an empty table.  0 or WEFT_ENOMEM. */
int weft_fdtab_new(weft_fdtab_t **out);

/* Free the table and every chunk.  No record may be in use. */
void weft_fdtab_free(weft_fdtab_t *t);

/* Take a record for fd, owned by worker `owner`: new generation, both wait
 * words EMPTY.  Returns the record or NULL (WEFT_ENOMEM). */
weft_fd_t *weft_fdtab_open(weft_fdtab_t *t, int fd, uint32_t owner);

/* The poller token of an open record: generation << 32 | slot. */
uint64_t weft_fd_token(const weft_fd_t *r);

/* The record a poller token names, or NULL if the slot is unknown or the
 * generation is stale (the fd was closed since the event was queued). */
weft_fd_t *weft_fdtab_lookup(weft_fdtab_t *t, uint64_t token);

/* Record by slot (NULL if out of range); no generation check. */
weft_fd_t *weft_fdtab_get(weft_fdtab_t *t, uint32_t slot);

/* After an I/O call returned EAGAIN in direction dir: try to register
 * `waiter`.  Returns
 *   0              now waiting: the caller suspends until woken (a READY
 *                  known to be stale, see weft_fd_idle, is replaced);
 *   1              a readiness edge was pending (READY consumed): retry the
 *                  I/O call at once;
 *   WEFT_ECLOSED   the record is closed.
 * Only the owner worker calls this, and only one coroutine may wait per
 * direction (a second waiter gets -EBUSY). */
int weft_fd_wait(weft_fd_t *r, int dir, uint32_t waiter);

/* A readiness event for direction dir of the record named by `token`'s
 * generation (counted as an edge).  Returns the waiter id + 1 to wake (the word went
 * WAIT -> EMPTY), or 0 if nobody waited (the word is now READY) or the
 * generation is stale.  Any thread. */
uint64_t weft_fd_ready(weft_fd_t *r, int dir, uint32_t gen);

/* Withdraw `waiter` from direction dir of the record's generation `gen`
 * (weft_fd_gen() when the wait began).  Returns 1 if the wait was
 * withdrawn (WAIT -> EMPTY), 0 if an event or close already took it: a
 * wake-up for the waiter is then on its way and must be awaited instead.
 * The whole word is compared: after the record was shut and reopened,
 * another waiter with the same id is not ours to withdraw. */
int weft_fd_cancel(weft_fd_t *r, int dir, uint32_t gen, uint32_t waiter);

/* The record's current generation (odd while open). */
static inline uint32_t weft_fd_gen(const weft_fd_t *r)
{
	return atomic_load_explicit(&((weft_fd_t *)r)->gen, memory_order_acquire);
}

/* Readiness tracking (see the top).  The owner's side: */

/* The edge count of direction dir, to take before an I/O call. */
static inline uint32_t weft_fd_edges(const weft_fd_t *r, int dir)
{
	return atomic_load_explicit(&((weft_fd_t *)r)->_edges[dir], memory_order_acquire);
}

/* The call in direction dir found nothing (EAGAIN, a short TCP read, a
 * short write); `edges` is weft_fd_edges() taken before the call. */
static inline void weft_fd_drained(weft_fd_t *r, int dir, uint32_t edges)
{
	r->_drained[dir] = edges;
	r->_known |= (uint8_t)(1u << dir);
}

/* Forget what is known of dir (a call did all it was asked: there may be
 * more; a shutdown or connect changed the socket). */
static inline void weft_fd_undrain(weft_fd_t *r, int dir)
{
	r->_known &= (uint8_t)~(1u << dir);
}

/* Whether dir is known empty with no edge since: a call would fail with
 * EAGAIN, so wait instead. */
static inline int weft_fd_idle(const weft_fd_t *r, int dir)
{
	return (r->_known >> dir & 1) && r->_drained[dir] == weft_fd_edges(r, dir) &&
	       !atomic_load_explicit(&((weft_fd_t *)r)->_sticky, memory_order_relaxed);
}

/* After a connect completed: the hang-up an unconnected socket reports is
 * forgotten. */
void weft_fd_connected(weft_fd_t *r);

/* The event side (any thread, before weft_fd_ready): a hang-up, error or
 * urgent data was seen. */
static inline void weft_fd_sticky(weft_fd_t *r)
{
	atomic_store_explicit(&r->_sticky, 1, memory_order_relaxed);
}

/* Mark both directions CLOSED and bump the generation so that stale events
 * are dropped.  The waiters found (at most one per direction) are stored in
 * woken[0..1] as waiter + 1 (0 = none); they must be woken with
 * WEFT_ECLOSED.  Does not close(2) the fd: the caller deletes it from the
 * poller, closes it, then calls weft_fdtab_release. */
void weft_fd_shut(weft_fd_t *r, uint64_t woken[2]);

/* Return a shut record to the free list. */
void weft_fdtab_release(weft_fdtab_t *t, weft_fd_t *r);

/* Counters: records open; stale tokens dropped by weft_fdtab_lookup. */
uint64_t weft_fdtab_open_count(weft_fdtab_t *t);
uint64_t weft_fdtab_stale_count(weft_fdtab_t *t);

#endif
