/* Per-fd records with generation-tagged wait words (fdtab.h).
 *
 * The table is two-level: a fixed array of chunk pointers, each chunk
 * CHUNK_SIZE records allocated on first use and never moved or freed before
 * weft_fdtab_free.  A slot is published by storing the chunk pointer and then
 * the high-water mark `nslots` with release; a lookup loads `nslots` with
 * acquire and needs no lock.  The mutex only guards the free list and chunk
 * allocation, both on the open/release path.
 *
 * Generations: even = closed, odd = open.  open bumps even -> odd, shut bumps
 * odd -> even, so a token (always an odd generation) never matches a closed
 * record, and a reused slot never matches a token from an earlier life.  The
 * wait words carry the generation in their top half, so a stale ready() fails
 * its compare-and-swap even if it loaded the word before the record was shut
 * and reopened. */
#include <assert.h>
#include <errno.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "alloc.h"
#include "error.h"
#include "fdtab.h"
#include "thread.h"

#define CHUNK_SHIFT 10
#define CHUNK_SIZE  (1u << CHUNK_SHIFT)
#define CHUNK_MASK  (CHUNK_SIZE - 1)
#define MAX_CHUNKS  65536u
#define MAX_SLOTS   (MAX_CHUNKS * CHUNK_SIZE)
#define NO_SLOT     UINT32_MAX
#define LINE        64

_Static_assert(sizeof(weft_fd_t) == LINE, "a record fills one cache line");

struct weft_fdtab {
	/* Entries below ceil(nslots / CHUNK_SIZE) are set; the rest are
	 * never read, so the array needs no initialisation. */
	_Atomic(weft_fd_t *) *chunks;
	_Atomic uint32_t nslots; /* slots ever handed out (high-water mark) */
	weft_mutex_t lock;
	uint32_t free_head; /* under lock; NO_SLOT when empty */
	_Atomic uint64_t nopen;
	_Atomic uint64_t nstale;
};

#define GEN_OF(w)        ((uint32_t)((w) >> 32))
#define STATE_OF(w)      ((uint32_t)(w))
#define WORD(gen, state) ((uint64_t)(gen) << 32 | (uint32_t)(state))

/* Chunks are cache-line aligned so that each record owns its line: the wait
 * words are hammered from several threads and must not false-share.  The
 * allocation hook only promises malloc alignment, so over-allocate and keep
 * the raw pointer in the gap just below the aligned block (the gap is at
 * least alignof(max_align_t) bytes, enough for a pointer). */
static weft_fd_t *chunk_new(uint32_t first_slot)
{
	char *raw = weft_calloc(1, CHUNK_SIZE * sizeof(weft_fd_t) + LINE);
	weft_fd_t *c;
	uint32_t i;

	if (raw == NULL)
		return NULL;
	c = (weft_fd_t *)(((uintptr_t)raw + LINE) & ~(uintptr_t)(LINE - 1));
	((void **)c)[-1] = raw;
	for (i = 0; i < CHUNK_SIZE; i++) {
		weft_fd_t *r = &c[i];

		/* Never opened: generation 0 (closed), so waiting on it
		 * reports "closed" rather than parking forever. */
		atomic_init(&r->_wait[WEFT_READ], WORD(0, WEFT_WAIT_CLOSED));
		atomic_init(&r->_wait[WEFT_WRITE], WORD(0, WEFT_WAIT_CLOSED));
		atomic_init(&r->gen, 0);
		atomic_init(&r->fd, -1);
		atomic_init(&r->owner, 0);
		r->slot = first_slot + i;
		r->_next_free = NO_SLOT;
	}
	return c;
}

static void chunk_free(weft_fd_t *c)
{
	weft_free(((void **)c)[-1]);
}

int weft_fdtab_new(weft_fdtab_t **out)
{
	weft_fdtab_t *t = weft_malloc(sizeof *t);

	*out = NULL;
	if (t == NULL)
		return WEFT_ENOMEM;
	t->chunks = weft_malloc(MAX_CHUNKS * sizeof *t->chunks);
	/* Default mutex attributes: glibc never fails, POSIX allows only
	 * resource shortage. */
	if (t->chunks == NULL || weft_mutex_init(&t->lock) != 0) {
		weft_free(t->chunks);
		weft_free(t);
		return WEFT_ENOMEM;
	}
	atomic_init(&t->nslots, 0);
	t->free_head = NO_SLOT;
	atomic_init(&t->nopen, 0);
	atomic_init(&t->nstale, 0);
	*out = t;
	return 0;
}

void weft_fdtab_free(weft_fdtab_t *t)
{
	uint32_t i, n;

	if (t == NULL)
		return;
	n = (atomic_load_explicit(&t->nslots, memory_order_acquire) + CHUNK_MASK) >> CHUNK_SHIFT;
	for (i = 0; i < n; i++)
		chunk_free(atomic_load_explicit(&t->chunks[i], memory_order_acquire));
	weft_mutex_destroy(&t->lock);
	weft_free(t->chunks);
	weft_free(t);
}

/* Pop a free record or hand out a fresh slot.  Called with the lock held. */
static weft_fd_t *take(weft_fdtab_t *t)
{
	uint32_t n = atomic_load_explicit(&t->nslots, memory_order_relaxed);
	weft_fd_t *c, *r;

	if (t->free_head != NO_SLOT) {
		c = atomic_load_explicit(&t->chunks[t->free_head >> CHUNK_SHIFT],
		                         memory_order_relaxed);
		r = &c[t->free_head & CHUNK_MASK];
		t->free_head = r->_next_free;
		r->_next_free = NO_SLOT;
		return r;
	}
	if (n == MAX_SLOTS)
		return NULL;
	if ((n & CHUNK_MASK) == 0) {
		c = chunk_new(n);
		if (c == NULL)
			return NULL;
		atomic_store_explicit(&t->chunks[n >> CHUNK_SHIFT], c, memory_order_release);
	} else {
		c = atomic_load_explicit(&t->chunks[n >> CHUNK_SHIFT], memory_order_relaxed);
	}
	/* Release: a reader that sees the new count also sees the chunk
	 * pointer and the initialised record. */
	atomic_store_explicit(&t->nslots, n + 1, memory_order_release);
	return &c[n & CHUNK_MASK];
}

weft_fd_t *weft_fdtab_open(weft_fdtab_t *t, int fd, uint32_t owner)
{
	weft_fd_t *r;
	uint32_t gen;

	weft_mutex_lock(&t->lock);
	r = take(t);
	weft_mutex_unlock(&t->lock);
	if (r == NULL)
		return NULL;
	/* The record is ours alone now (closed, off the free list); only
	 * stale ready() calls may still look at it, and their CAS fails on
	 * the generation. */
	gen = atomic_load_explicit(&r->gen, memory_order_relaxed) + 1;
	atomic_store_explicit(&r->fd, fd, memory_order_relaxed);
	atomic_store_explicit(&r->owner, owner, memory_order_relaxed);
	atomic_store_explicit(&r->udata, NULL, memory_order_relaxed);
	atomic_store_explicit(&r->_sticky, 0, memory_order_relaxed);
	r->_known = 0;
	atomic_store_explicit(&r->_wait[WEFT_READ], WORD(gen, WEFT_WAIT_EMPTY),
	                      memory_order_release);
	atomic_store_explicit(&r->_wait[WEFT_WRITE], WORD(gen, WEFT_WAIT_EMPTY),
	                      memory_order_release);
	/* Last, with release: whoever validates a token against gen also sees
	 * the fields above. */
	atomic_store_explicit(&r->gen, gen, memory_order_release);
	atomic_fetch_add_explicit(&t->nopen, 1, memory_order_relaxed);
	return r;
}

uint64_t weft_fd_token(const weft_fd_t *r)
{
	return WORD(atomic_load_explicit(&r->gen, memory_order_acquire), r->slot);
}

weft_fd_t *weft_fdtab_get(weft_fdtab_t *t, uint32_t slot)
{
	weft_fd_t *c;

	if (slot >= atomic_load_explicit(&t->nslots, memory_order_acquire))
		return NULL;
	c = atomic_load_explicit(&t->chunks[slot >> CHUNK_SHIFT], memory_order_acquire);
	return &c[slot & CHUNK_MASK];
}

weft_fd_t *weft_fdtab_lookup(weft_fdtab_t *t, uint64_t token)
{
	uint32_t gen = GEN_OF(token);
	weft_fd_t *r = weft_fdtab_get(t, (uint32_t)token);

	if (r == NULL)
		return NULL;
	/* An even generation was never handed out in a token. */
	if ((gen & 1) == 0 || atomic_load_explicit(&r->gen, memory_order_acquire) != gen) {
		atomic_fetch_add_explicit(&t->nstale, 1, memory_order_relaxed);
		return NULL;
	}
	return r;
}

int weft_fd_wait(weft_fd_t *r, int dir, uint32_t waiter)
{
	_Atomic uint64_t *w = &r->_wait[dir];
	uint64_t old = atomic_load_explicit(w, memory_order_acquire);
	uint64_t new;
	int rc;

	if (waiter > WEFT_WAITER_MAX)
		return -EINVAL;
	for (;;) {
		switch (STATE_OF(old)) {
		case WEFT_WAIT_EMPTY:
			new = WORD(GEN_OF(old), waiter + WEFT_WAIT_BASE);
			rc = 0;
			break;
		case WEFT_WAIT_READY:
			/* The word is read before the edge count: an edge that
			 * set this READY after the owner's call began was
			 * counted first, so it shows. */
			if (weft_fd_idle(r, dir)) {
				new = WORD(GEN_OF(old), waiter + WEFT_WAIT_BASE);
				rc = 0;
			} else {
				new = WORD(GEN_OF(old), WEFT_WAIT_EMPTY);
				rc = 1;
			}
			break;
		case WEFT_WAIT_CLOSED:
			return WEFT_ECLOSED;
		default:
			return -EBUSY;
		}
		if (atomic_compare_exchange_weak_explicit(w, &old, new, memory_order_acq_rel,
		                                          memory_order_acquire))
			return rc;
	}
}

void weft_fd_connected(weft_fd_t *r)
{
	atomic_store_explicit(&r->_sticky, 0, memory_order_relaxed);
	r->_known = 0;
}

uint64_t weft_fd_ready(weft_fd_t *r, int dir, uint32_t gen)
{
	_Atomic uint64_t *w = &r->_wait[dir];
	uint64_t new, ret;

	/* Counted before the word changes (the CAS below releases it): an
	 * owner that sees this READY sees the new count too. */
	atomic_fetch_add_explicit(&r->_edges[dir], 1, memory_order_relaxed);
	uint64_t old = atomic_load_explicit(w, memory_order_acquire);

	for (;;) {
		uint32_t state = STATE_OF(old);

		if (GEN_OF(old) != gen || state == WEFT_WAIT_CLOSED)
			return 0;
		if (state == WEFT_WAIT_EMPTY || state == WEFT_WAIT_READY) {
			/* READY -> READY is written too, not just observed.
			 * With acquire/release a plain load here would be the
			 * store-buffering pattern: our caller's data (stored
			 * before this call) might not be visible to an owner
			 * whose wait() consumed READY concurrently, and the
			 * owner would park on an edge we think is remembered.
			 * Writing puts us in the word's RMW chain, so the
			 * owner's consuming CAS synchronises with us. */
			new = WORD(gen, WEFT_WAIT_READY);
			ret = 0;
		} else {
			new = WORD(gen, WEFT_WAIT_EMPTY);
			ret = (uint64_t)(state - WEFT_WAIT_BASE) + 1;
		}
		if (atomic_compare_exchange_weak_explicit(w, &old, new, memory_order_acq_rel,
		                                          memory_order_acquire))
			return ret;
	}
}

int weft_fd_cancel(weft_fd_t *r, int dir, uint32_t gen, uint32_t waiter)
{
	_Atomic uint64_t *w = &r->_wait[dir];
	uint64_t mine = WORD(gen, waiter + WEFT_WAIT_BASE);

	if (waiter > WEFT_WAITER_MAX)
		return 0;
	/* Only our own WAIT, in our generation, is withdrawn.  Anything else
	 * means an event or close took the wait and owes the waiter a
	 * wake-up; a record shut and reopened since may hold another
	 * worker's waiter with the same id, which is not ours to touch.  A
	 * word equal to ours cannot change but by someone taking it, so one
	 * strong CAS decides. */
	return atomic_compare_exchange_strong_explicit(w, &mine, WORD(gen, WEFT_WAIT_EMPTY),
	                                               memory_order_acq_rel, memory_order_acquire);
}

void weft_fd_shut(weft_fd_t *r, uint64_t woken[2])
{
	uint32_t gen = atomic_load_explicit(&r->gen, memory_order_acquire);
	int dir;

	woken[0] = woken[1] = 0;
	/* Idempotent: a second shut must not bump the generation back to
	 * odd, which would make the record look open. */
	do {
		if ((gen & 1) == 0)
			return;
	} while (!atomic_compare_exchange_weak_explicit(
	    &r->gen, &gen, gen + 1, memory_order_acq_rel, memory_order_acquire));
	/* The generation moves first so lookups start failing; a ready() that
	 * already holds the old generation may still win a word below, in
	 * which case the exchange finds no waiter and the wake is ready()'s
	 * to deliver.  Exactly one of us reports each waiter. */
	for (dir = WEFT_READ; dir <= WEFT_WRITE; dir++) {
		uint64_t old = atomic_exchange_explicit(
		    &r->_wait[dir], WORD(gen + 1, WEFT_WAIT_CLOSED), memory_order_acq_rel);

		if (STATE_OF(old) >= WEFT_WAIT_BASE)
			woken[dir] = (uint64_t)(STATE_OF(old) - WEFT_WAIT_BASE) + 1;
	}
}

void weft_fdtab_release(weft_fdtab_t *t, weft_fd_t *r)
{
	/* Releasing an open record is a caller bug; shut it anyway so the
	 * free list never holds an open generation (its waiters, if any, are
	 * lost, which the assertion reports in debug builds). */
	if (atomic_load_explicit(&r->gen, memory_order_acquire) & 1) {
		uint64_t woken[2];

		assert(!"weft_fdtab_release: record not shut");
		weft_fd_shut(r, woken);
	}
	atomic_store_explicit(&r->fd, -1, memory_order_relaxed);
	weft_mutex_lock(&t->lock);
	r->_next_free = t->free_head;
	t->free_head = r->slot;
	weft_mutex_unlock(&t->lock);
	atomic_fetch_sub_explicit(&t->nopen, 1, memory_order_relaxed);
}

uint64_t weft_fdtab_open_count(weft_fdtab_t *t)
{
	return atomic_load_explicit(&t->nopen, memory_order_relaxed);
}

uint64_t weft_fdtab_stale_count(weft_fdtab_t *t)
{
	return atomic_load_explicit(&t->nstale, memory_order_relaxed);
}
