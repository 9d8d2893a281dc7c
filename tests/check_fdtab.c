/* fd records: generations and tokens, slot reuse, growth past one chunk,
 * the wait-word state machine (table-driven), readiness tracking (edge
 * counts, stale READY, sticky hang-ups), allocation failure, and two
 * multi-thread stress runs with exact accounting: readiness against an
 * owner that waits, cancels and consumes; and ready() racing shut() or
 * cancel() for one waiter. */
#include "fdtab.h"

#include <errno.h>
#include "thread.h"
#include <sched.h>
#include <stdint.h>
#include <time.h>

#include "alloc.h"
#include "checkutil.h"
#include "error.h"

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t xorshift(uint32_t *s)
{
	uint32_t x = *s;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *s = x;
}

/* Burn a random short moment, to shake up interleavings. */
static void idle(uint32_t *rnd, uint32_t max)
{
	static _Atomic uint32_t sink;

	for (uint32_t n = xorshift(rnd) % max; n > 0; n--)
		(void)atomic_load_explicit(&sink, memory_order_relaxed);
}

/* Peeking at the private wait word is fair in the record's own test. */
static uint32_t state_of(weft_fd_t *r, int dir)
{
	return (uint32_t)atomic_load(&r->_wait[dir]);
}

static uint32_t word_gen(weft_fd_t *r, int dir)
{
	return (uint32_t)(atomic_load(&r->_wait[dir]) >> 32);
}

static uint32_t gen_of(weft_fd_t *r)
{
	return atomic_load(&r->gen);
}

static weft_fdtab_t *table(void)
{
	weft_fdtab_t *t;

	ck_assert_int_eq(weft_fdtab_new(&t), 0);
	ck_assert_ptr_nonnull(t);
	return t;
}

static void close_record(weft_fdtab_t *t, weft_fd_t *r)
{
	uint64_t woken[2];

	weft_fd_shut(r, woken);
	weft_fdtab_release(t, r);
}

START_TEST(test_empty_table)
{
	weft_fdtab_t *t = table();

	ck_assert_uint_eq(weft_fdtab_open_count(t), 0);
	ck_assert_uint_eq(weft_fdtab_stale_count(t), 0);
	ck_assert_ptr_null(weft_fdtab_get(t, 0));
	ck_assert_ptr_null(weft_fdtab_lookup(t, (uint64_t)1 << 32));
	ck_assert_ptr_null(weft_fdtab_get(t, UINT32_MAX));
	weft_fdtab_free(t);
	weft_fdtab_free(NULL);
}
END_TEST

START_TEST(test_open_token)
{
	weft_fdtab_t *t = table();
	weft_fd_t *r = weft_fdtab_open(t, 10, 3);
	uint64_t tok;

	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(atomic_load(&r->fd), 10);
	ck_assert_uint_eq(atomic_load(&r->owner), 3);
	ck_assert_uint_eq(gen_of(r) & 1, 1);
	tok = weft_fd_token(r);
	ck_assert_uint_ne(tok, 0); /* 0 is the poller's wake channel */
	ck_assert_uint_eq(tok, (uint64_t)gen_of(r) << 32 | r->slot);
	ck_assert_ptr_eq(weft_fdtab_lookup(t, tok), r);
	ck_assert_ptr_eq(weft_fdtab_get(t, r->slot), r);
	ck_assert_uint_eq(weft_fdtab_open_count(t), 1);
	for (int dir = WEFT_READ; dir <= WEFT_WRITE; dir++) {
		ck_assert_uint_eq(state_of(r, dir), WEFT_WAIT_EMPTY);
		ck_assert_uint_eq(word_gen(r, dir), gen_of(r));
	}
	ck_assert_uint_eq((uintptr_t)r % 64, 0);
	close_record(t, r);
	ck_assert_uint_eq(weft_fdtab_open_count(t), 0);
	weft_fdtab_free(t);
}
END_TEST

START_TEST(test_reuse_bumps_generation)
{
	weft_fdtab_t *t = table();
	weft_fd_t *r = weft_fdtab_open(t, 10, 0);
	uint32_t g1 = gen_of(r), slot = r->slot;
	uint64_t tok1 = weft_fd_token(r), woken[2];
	weft_fd_t *r2;

	weft_fd_shut(r, woken);
	ck_assert_uint_eq(gen_of(r), g1 + 1); /* even: closed */
	ck_assert_ptr_null(weft_fdtab_lookup(t, tok1));
	ck_assert_int_eq(atomic_load(&r->fd), 10); /* until release */
	weft_fdtab_release(t, r);
	ck_assert_int_eq(atomic_load(&r->fd), -1);
	ck_assert_uint_eq(weft_fdtab_open_count(t), 0);

	r2 = weft_fdtab_open(t, 11, 1);
	ck_assert_ptr_eq(r2, r); /* the free list hands the slot back */
	ck_assert_uint_eq(r2->slot, slot);
	ck_assert_uint_eq(gen_of(r2), g1 + 2);
	ck_assert_uint_ne(weft_fd_token(r2), tok1);
	ck_assert_ptr_null(weft_fdtab_lookup(t, tok1));
	ck_assert_ptr_eq(weft_fdtab_lookup(t, weft_fd_token(r2)), r2);
	ck_assert_uint_eq(weft_fdtab_stale_count(t), 2);
	ck_assert_int_eq(atomic_load(&r2->fd), 11);
	ck_assert_uint_eq(state_of(r2, WEFT_READ), WEFT_WAIT_EMPTY);
	ck_assert_uint_eq(state_of(r2, WEFT_WRITE), WEFT_WAIT_EMPTY);
	close_record(t, r2);
	weft_fdtab_free(t);
}
END_TEST

START_TEST(test_stale_tokens)
{
	weft_fdtab_t *t = table();
	weft_fd_t *r = weft_fdtab_open(t, 5, 0);
	uint32_t g = gen_of(r);
	uint64_t tok = weft_fd_token(r);

	/* Unknown slot: not counted as stale, just unknown. */
	ck_assert_ptr_null(weft_fdtab_lookup(t, (uint64_t)g << 32 | 7));
	ck_assert_uint_eq(weft_fdtab_stale_count(t), 0);
	/* Wrong generations: even (never issued), earlier, later. */
	ck_assert_ptr_null(weft_fdtab_lookup(t, (uint64_t)(g + 1) << 32 | r->slot));
	ck_assert_ptr_null(weft_fdtab_lookup(t, (uint64_t)(g - 2) << 32 | r->slot));
	ck_assert_ptr_null(weft_fdtab_lookup(t, (uint64_t)(g + 2) << 32 | r->slot));
	ck_assert_uint_eq(weft_fdtab_stale_count(t), 3);

	/* A stale readiness event changes nothing. */
	ck_assert_uint_eq(weft_fd_ready(r, WEFT_READ, g + 2), 0);
	ck_assert_uint_eq(state_of(r, WEFT_READ), WEFT_WAIT_EMPTY);
	ck_assert_int_eq(weft_fd_wait(r, WEFT_READ, 4), 0);
	ck_assert_uint_eq(weft_fd_ready(r, WEFT_READ, g - 2), 0);
	ck_assert_uint_eq(state_of(r, WEFT_READ), WEFT_WAIT_BASE + 4);

	/* Close and reopen: the old token, and events carrying it, are dead. */
	close_record(t, r);
	r = weft_fdtab_open(t, 5, 0);
	ck_assert_ptr_null(weft_fdtab_lookup(t, tok));
	ck_assert_uint_eq(weft_fd_ready(r, WEFT_READ, g), 0);
	ck_assert_uint_eq(state_of(r, WEFT_READ), WEFT_WAIT_EMPTY);
	ck_assert_uint_eq(weft_fdtab_stale_count(t), 4);
	close_record(t, r);
	weft_fdtab_free(t);
}
END_TEST

START_TEST(test_shut_idempotent)
{
	weft_fdtab_t *t = table();
	weft_fd_t *r = weft_fdtab_open(t, 5, 0);
	uint32_t g = gen_of(r);
	uint64_t woken[2];

	ck_assert_int_eq(weft_fd_wait(r, WEFT_WRITE, 9), 0);
	weft_fd_shut(r, woken);
	ck_assert_uint_eq(woken[WEFT_READ], 0);
	ck_assert_uint_eq(woken[WEFT_WRITE], 10);
	weft_fd_shut(r, woken);
	ck_assert_uint_eq(woken[WEFT_READ], 0);
	ck_assert_uint_eq(woken[WEFT_WRITE], 0);
	ck_assert_uint_eq(gen_of(r), g + 1);
	ck_assert_int_eq(weft_fd_wait(r, WEFT_READ, 1), WEFT_ECLOSED);
	weft_fdtab_release(t, r);
	weft_fdtab_free(t);
}
END_TEST

/* 5000 records span five chunks; records opened before a chunk was added
 * must not move. */
START_TEST(test_growth)
{
	enum { N = 5000 };
	static weft_fd_t *recs[N];
	weft_fdtab_t *t = table();

	for (int i = 0; i < N; i++) {
		recs[i] = weft_fdtab_open(t, i, (uint32_t)i % 4);
		ck_assert_ptr_nonnull(recs[i]);
		ck_assert_uint_eq(recs[i]->slot, (uint32_t)i);
		ck_assert_uint_eq((uintptr_t)recs[i] % 64, 0);
	}
	ck_assert_uint_eq(weft_fdtab_open_count(t), N);
	ck_assert_ptr_null(weft_fdtab_get(t, N));
	for (int i = 0; i < N; i++) {
		ck_assert_ptr_eq(weft_fdtab_get(t, (uint32_t)i), recs[i]);
		ck_assert_ptr_eq(weft_fdtab_lookup(t, weft_fd_token(recs[i])), recs[i]);
		ck_assert_int_eq(atomic_load(&recs[i]->fd), i);
	}
	for (int i = 0; i < N; i++)
		close_record(t, recs[i]);
	ck_assert_uint_eq(weft_fdtab_open_count(t), 0);

	/* Reopening reuses every slot before growing. */
	for (int i = 0; i < N; i++) {
		recs[i] = weft_fdtab_open(t, i, 0);
		ck_assert_uint_lt(recs[i]->slot, N);
		ck_assert_uint_eq(gen_of(recs[i]), 3);
	}
	ck_assert_ptr_null(weft_fdtab_get(t, N));
	for (int i = 0; i < N; i++)
		close_record(t, recs[i]);
	weft_fdtab_free(t);
}
END_TEST

/* Allocation failures leave a usable table behind.  Records come in
 * chunks, so only a few opens allocate at all, and each failed one can
 * simply be retried. */
START_TEST(test_enomem)
{
	enum { N = 2000 };
	static weft_fd_t *recs[N];
	weft_fdtab_t *t = (weft_fdtab_t *)&recs; /* any non-NULL */
	int failures = 0;

	weft_alloc_fail_after(1);
	ck_assert_int_eq(weft_fdtab_new(&t), WEFT_ENOMEM);
	ck_assert_ptr_null(t);
	weft_alloc_fail_after(2);
	ck_assert_int_eq(weft_fdtab_new(&t), WEFT_ENOMEM);
	ck_assert_ptr_null(t);
	weft_alloc_fail_after(0);

	t = table();
	for (int i = 0; i < N; i++) {
		weft_alloc_fail_after(1);
		recs[i] = weft_fdtab_open(t, i, 0);
		if (recs[i] == NULL) {
			failures++;
			ck_assert_uint_eq(weft_fdtab_open_count(t), (uint64_t)i);
			ck_assert_ptr_null(weft_fdtab_get(t, (uint32_t)i));
			weft_alloc_fail_after(0);
			recs[i] = weft_fdtab_open(t, i, 0);
			ck_assert_ptr_nonnull(recs[i]);
		} else {
			ck_assert_int_ne(i, 0); /* the very first needs a chunk */
		}
		ck_assert_uint_eq(recs[i]->slot, (uint32_t)i);
	}
	weft_alloc_fail_after(0);
	ck_assert_int_ge(failures, 2);
	ck_assert_int_le(failures, N / 64);
	for (int i = 0; i < N; i++)
		close_record(t, recs[i]);
	ck_assert_uint_eq(weft_fdtab_open_count(t), 0);
	weft_fdtab_free(t);
}
END_TEST

/* The state machine, one row per (state, operation). */
enum { S_EMPTY, S_READY, S_WAIT7, S_CLOSED };
enum { OP_WAIT7, OP_WAIT9, OP_READY, OP_READY_OLD, OP_READY_NEW, OP_CANCEL7, OP_CANCEL9, OP_SHUT };

static const struct row {
	int from, op;
	int64_t ret;    /* return value (shut: woken[dir]) */
	uint32_t state; /* wait word state afterwards */
} rows[] = {
    {S_EMPTY, OP_WAIT7, 0, WEFT_WAIT_BASE + 7},
    {S_EMPTY, OP_READY, 0, WEFT_WAIT_READY},
    {S_EMPTY, OP_READY_OLD, 0, WEFT_WAIT_EMPTY},
    {S_EMPTY, OP_READY_NEW, 0, WEFT_WAIT_EMPTY},
    {S_EMPTY, OP_CANCEL7, 0, WEFT_WAIT_EMPTY},
    {S_EMPTY, OP_SHUT, 0, WEFT_WAIT_CLOSED},

    {S_READY, OP_WAIT7, 1, WEFT_WAIT_EMPTY},
    {S_READY, OP_READY, 0, WEFT_WAIT_READY},
    {S_READY, OP_READY_OLD, 0, WEFT_WAIT_READY},
    {S_READY, OP_CANCEL7, 0, WEFT_WAIT_READY},
    {S_READY, OP_SHUT, 0, WEFT_WAIT_CLOSED},

    {S_WAIT7, OP_WAIT7, -EBUSY, WEFT_WAIT_BASE + 7},
    {S_WAIT7, OP_WAIT9, -EBUSY, WEFT_WAIT_BASE + 7},
    {S_WAIT7, OP_READY, 8, WEFT_WAIT_EMPTY},
    {S_WAIT7, OP_READY_OLD, 0, WEFT_WAIT_BASE + 7},
    {S_WAIT7, OP_READY_NEW, 0, WEFT_WAIT_BASE + 7},
    {S_WAIT7, OP_CANCEL7, 1, WEFT_WAIT_EMPTY},
    {S_WAIT7, OP_CANCEL9, 0, WEFT_WAIT_BASE + 7},
    {S_WAIT7, OP_SHUT, 8, WEFT_WAIT_CLOSED},

    {S_CLOSED, OP_WAIT7, WEFT_ECLOSED, WEFT_WAIT_CLOSED},
    {S_CLOSED, OP_READY, 0, WEFT_WAIT_CLOSED}, /* the generation it had when open */
    {S_CLOSED, OP_CANCEL7, 0, WEFT_WAIT_CLOSED},
    {S_CLOSED, OP_SHUT, 0, WEFT_WAIT_CLOSED},
};

START_TEST(test_state_machine)
{
	const struct row *row = &rows[_i / 2];
	int dir = _i % 2, other = !dir;
	weft_fdtab_t *t = table();
	weft_fd_t *r = weft_fdtab_open(t, 3, 0);
	uint32_t g = gen_of(r);
	uint64_t woken[2] = {0, 0};
	int64_t ret = -1;

	switch (row->from) {
	case S_READY:
		ck_assert_uint_eq(weft_fd_ready(r, dir, g), 0);
		break;
	case S_WAIT7:
		ck_assert_int_eq(weft_fd_wait(r, dir, 7), 0);
		break;
	case S_CLOSED:
		weft_fd_shut(r, woken);
		break;
	}
	switch (row->op) {
	case OP_WAIT7:
		ret = weft_fd_wait(r, dir, 7);
		break;
	case OP_WAIT9:
		ret = weft_fd_wait(r, dir, 9);
		break;
	case OP_READY:
		ret = (int64_t)weft_fd_ready(r, dir, g);
		break;
	case OP_READY_OLD:
		ret = (int64_t)weft_fd_ready(r, dir, g - 2);
		break;
	case OP_READY_NEW:
		ret = (int64_t)weft_fd_ready(r, dir, g + 2);
		break;
	case OP_CANCEL7:
		ret = weft_fd_cancel(r, dir, g, 7);
		break;
	case OP_CANCEL9:
		ret = weft_fd_cancel(r, dir, g, 9);
		break;
	case OP_SHUT:
		weft_fd_shut(r, woken);
		ret = (int64_t)woken[dir];
		ck_assert_uint_eq(woken[other], 0);
		break;
	}
	ck_assert_msg(ret == row->ret, "row %d dir %d: returned %lld, want %lld", _i / 2, dir,
	              (long long)ret, (long long)row->ret);
	ck_assert_msg(state_of(r, dir) == row->state, "row %d dir %d: state %u, want %u", _i / 2,
	              dir, state_of(r, dir), row->state);
	/* The word always carries the record's current generation, and the
	 * other direction is untouched (or closed along with this one). */
	ck_assert_uint_eq(word_gen(r, dir), gen_of(r));
	ck_assert_uint_eq(state_of(r, other),
	                  row->state == WEFT_WAIT_CLOSED ? WEFT_WAIT_CLOSED : WEFT_WAIT_EMPTY);
	close_record(t, r);
	weft_fdtab_free(t);
}
END_TEST

/* A waiter withdrawn after its record was shut and reopened must not
 * take the new life's waiter that happens to have the same id (another
 * worker's coroutine in the same slot number): cancel compares the whole
 * word, generation included. */
START_TEST(test_cancel_after_reuse)
{
	weft_fdtab_t *t = table();
	weft_fd_t *r = weft_fdtab_open(t, 3, 0);
	uint32_t g1 = gen_of(r);
	uint64_t woken[2];

	ck_assert_int_eq(weft_fd_wait(r, WEFT_READ, 7), 0);
	weft_fd_shut(r, woken);
	ck_assert_uint_eq(woken[WEFT_READ], 8);
	weft_fdtab_release(t, r);
	weft_fd_t *r2 = weft_fdtab_open(t, 4, 1);
	ck_assert_ptr_eq(r2, r); /* the free list hands the record back */
	uint32_t g2 = gen_of(r2);
	ck_assert_uint_ne(g2, g1);
	ck_assert_int_eq(weft_fd_wait(r2, WEFT_READ, 7), 0);
	/* The first life's waiter gives up late: nothing of ours is left. */
	ck_assert_int_eq(weft_fd_cancel(r2, WEFT_READ, g1, 7), 0);
	ck_assert_uint_eq(state_of(r2, WEFT_READ), WEFT_WAIT_BASE + 7);
	/* The event reaches the second life's waiter. */
	ck_assert_uint_eq(weft_fd_ready(r2, WEFT_READ, g2), 8);
	ck_assert_int_eq(weft_fd_wait(r2, WEFT_READ, 7), 0);
	ck_assert_int_eq(weft_fd_cancel(r2, WEFT_READ, g2, 7), 1);
	close_record(t, r2);
	weft_fdtab_free(t);
}
END_TEST

START_TEST(test_waiter_limits)
{
	weft_fdtab_t *t = table();
	weft_fd_t *r = weft_fdtab_open(t, 3, 0);
	uint32_t g = gen_of(r);

	ck_assert_int_eq(weft_fd_wait(r, WEFT_READ, WEFT_WAITER_MAX + 1), -EINVAL);
	ck_assert_uint_eq(state_of(r, WEFT_READ), WEFT_WAIT_EMPTY);
	ck_assert_int_eq(weft_fd_wait(r, WEFT_READ, WEFT_WAITER_MAX), 0);
	ck_assert_int_eq(weft_fd_cancel(r, WEFT_READ, g, WEFT_WAITER_MAX + 1), 0);
	ck_assert_uint_eq(weft_fd_ready(r, WEFT_READ, g), (uint64_t)WEFT_WAITER_MAX + 1);
	ck_assert_int_eq(weft_fd_wait(r, WEFT_READ, 0), 0);
	ck_assert_uint_eq(weft_fd_ready(r, WEFT_READ, g), 1);
	close_record(t, r);
	weft_fdtab_free(t);
}
END_TEST

/* ---- Stress: one owner against a thread firing readiness. ----
 *
 * The firer models the kernel: it makes data available (`produced`), then
 * reports an edge with weft_fd_ready(), and hands any waiter it is given to
 * the owner through a one-slot mailbox.  The owner models a coroutine: it
 * "reads" (takes everything produced), and when there is nothing it waits;
 * sometimes it cancels (a deadline).  Now and then the firer stops until
 * the owner has consumed everything: if an edge were lost, the owner would
 * sit in WAIT with data pending and the pause would time out. */
struct stress {
	weft_fd_t *r;
	uint32_t gen;
	uint64_t edges;
	uint64_t deadline;
	_Atomic uint64_t produced;
	_Atomic uint64_t consumed;
	_Atomic uint64_t mailbox; /* waiter + 1, or 0 */
	_Atomic int done;
	/* firer's accounting */
	uint64_t fired, wakes_sent, double_wakes, stale_woke, stalls;
};

static void *firer(void *arg)
{
	struct stress *s = arg;
	uint32_t rnd = 0x9e3779b9u;
	uint64_t i;

	for (i = 0; i < s->edges; i++) {
		uint64_t w, p;

		if ((i & 1023) == 0 && now_ns() > s->deadline)
			break;
		p = atomic_fetch_add_explicit(&s->produced, 1, memory_order_release) + 1;
		if ((i & 7) == 0 && weft_fd_ready(s->r, WEFT_READ, s->gen + 2) != 0)
			s->stale_woke++;
		w = weft_fd_ready(s->r, WEFT_READ, s->gen);
		s->fired++;
		if (w != 0) {
			s->wakes_sent++;
			if (atomic_exchange_explicit(&s->mailbox, w, memory_order_acq_rel) != 0)
				s->double_wakes++;
		}
		idle(&rnd, 128);
		/* On a loaded machine both threads may share one CPU; yielding
		 * at random points keeps them from running in lockstep. */
		if (xorshift(&rnd) % 16 == 0)
			sched_yield();
		if (xorshift(&rnd) % 64 == 0) {
			uint64_t t0 = now_ns();

			for (unsigned n = 1;
			     atomic_load_explicit(&s->consumed, memory_order_acquire) != p; n++) {
				if (n % 64 == 0 && now_ns() - t0 > 2000000000u) {
					s->stalls++;
					break;
				}
				if (n % 64 == 0)
					sched_yield();
			}
		}
	}
	atomic_store_explicit(&s->done, 1, memory_order_release);
	return NULL;
}

START_TEST(test_stress_ready_vs_owner)
{
	weft_fdtab_t *t = table();
	struct stress s = {0};
	uint64_t consumed = 0, waits = 0, wait_ready = 0, reads = 0;
	uint64_t cancel_won = 0, wakes = 0, lost = 0;
	uint32_t id = 0, rnd = 12345;
	weft_thread_t th;

	s.r = weft_fdtab_open(t, 3, 0);
	s.gen = gen_of(s.r);
	s.edges = 1000000;
	s.deadline = now_ns() + 2000000000u;
	ck_assert_int_eq(weft_thread_create(&th, firer, &s, 0), 0);
	for (;;) {
		int done = atomic_load_explicit(&s.done, memory_order_acquire);
		uint64_t p = atomic_load_explicit(&s.produced, memory_order_acquire), m, t0;
		int rc;

		if (p > consumed) {
			consumed = p;
			atomic_store_explicit(&s.consumed, consumed, memory_order_release);
			reads++;
			continue;
		}
		if (done)
			break;
		id = (id + 1) % 1000000;
		idle(&rnd, 128);
		if (xorshift(&rnd) % 16 == 0)
			sched_yield();
		rc = weft_fd_wait(s.r, WEFT_READ, id);
		if (rc == 1) {
			wait_ready++;
			continue;
		}
		ck_assert_int_eq(rc, 0);
		waits++;
		if (xorshift(&rnd) % 4 == 0) {
			idle(&rnd, 256);
			if (weft_fd_cancel(s.r, WEFT_READ, gen_of(s.r), id) == 1) {
				cancel_won++;
				continue;
			}
		}
		/* Parked: the wake must come, unless the firer has finished,
		 * in which case we withdraw -- and then nothing may be left
		 * unconsumed, or its edge was lost. */
		t0 = now_ns();
		for (unsigned n = 1;; n++) {
			if (atomic_load_explicit(&s.mailbox, memory_order_relaxed) != 0) {
				m = atomic_exchange_explicit(&s.mailbox, 0, memory_order_acq_rel);
				break;
			}
			if (atomic_load_explicit(&s.done, memory_order_acquire) &&
			    weft_fd_cancel(s.r, WEFT_READ, gen_of(s.r), id) == 1) {
				cancel_won++;
				if (atomic_load_explicit(&s.produced, memory_order_acquire) !=
				    consumed)
					lost++;
				m = 0;
				break;
			}
			if (n % 64 == 0) {
				ck_assert_msg(now_ns() - t0 < 5000000000u, "owner never woken");
				sched_yield();
			}
		}
		if (m != 0) {
			ck_assert_uint_eq(m, (uint64_t)id + 1);
			wakes++;
		}
	}
	weft_thread_join(th, NULL);

	ck_assert_uint_eq(lost, 0);
	ck_assert_uint_eq(s.stalls, 0);
	ck_assert_uint_eq(s.double_wakes, 0);
	ck_assert_uint_eq(s.stale_woke, 0);
	ck_assert_uint_eq(atomic_load(&s.mailbox), 0);
	ck_assert_uint_eq(consumed, s.fired);
	/* Every wait that parked ended exactly once: woken or withdrawn. */
	ck_assert_uint_eq(s.wakes_sent, wakes);
	ck_assert_uint_eq(waits, wakes + cancel_won);
	/* The run exercised every path. */
	ck_assert_uint_gt(s.fired, 10000);
	ck_assert_uint_gt(wakes, 100);
	ck_assert_uint_gt(wait_ready, 0);
	ck_assert_uint_gt(cancel_won, 0);
	ck_assert_uint_gt(reads, 0);
	close_record(t, s.r);
	weft_fdtab_free(t);
}
END_TEST

/* ---- Stress: ready() against shut() or cancel() for one parked waiter:
 * exactly one of them may claim it, every round.  Each side idles a random
 * moment before acting; the main side's bound adapts towards the point
 * where each wins half the rounds, so that both orders and near-ties
 * occur whatever the machine's (or the sanitizer's) speed. ---- */
#define RACE_STOP UINT32_MAX

struct race {
	weft_fd_t *_Atomic r;
	_Atomic uint32_t gen;      /* r's generation, as a poller token has it */
	_Atomic uint32_t go;       /* round to play, or RACE_STOP */
	_Atomic uint32_t finished; /* last round played */
	_Atomic uint64_t got;      /* ready()'s return in that round */
};

/* Wait for *v to leave `old`; yield now and then, since with two vCPUs
 * shared with other jobs a pure spin can hold the CPU the other side
 * needs. */
static uint32_t await_change(_Atomic uint32_t *v, uint32_t old)
{
	uint32_t now;

	for (unsigned n = 1; (now = atomic_load_explicit(v, memory_order_acquire)) == old; n++)
		if (n % 64 == 0)
			sched_yield();
	return now;
}

static void *racer(void *arg)
{
	struct race *x = arg;
	uint32_t last = 0, rnd = 777;

	for (;;) {
		uint32_t round = await_change(&x->go, last);
		weft_fd_t *r;

		if (round == RACE_STOP)
			return NULL;
		r = atomic_load_explicit(&x->r, memory_order_relaxed);
		idle(&rnd, 64);
		atomic_store_explicit(
		    &x->got,
		    weft_fd_ready(r, WEFT_READ,
		                  atomic_load_explicit(&x->gen, memory_order_relaxed)),
		    memory_order_relaxed);
		atomic_store_explicit(&x->finished, round, memory_order_release);
		last = round;
	}
}

START_TEST(test_stress_ready_vs_shut_cancel)
{
	weft_fdtab_t *t = table();
	struct race x = {.r = NULL};
	uint64_t deadline = now_ns() + 1500000000u;
	uint64_t ready_won = 0, other_won = 0;
	uint32_t round, rnd = 4242, delay = 64;
	weft_thread_t th;

	ck_assert_int_eq(weft_thread_create(&th, racer, &x, 0), 0);
	for (round = 1; round <= 50000 && now_ns() < deadline; round++) {
		weft_fd_t *r = weft_fdtab_open(t, 3, 0);
		uint32_t waiter = round % 1000;
		int shut = round % 2;
		uint64_t woken[2], mine, got;

		ck_assert_int_eq(weft_fd_wait(r, WEFT_READ, waiter), 0);
		atomic_store_explicit(&x.r, r, memory_order_relaxed);
		atomic_store_explicit(&x.gen, gen_of(r), memory_order_relaxed);
		atomic_store_explicit(&x.go, round, memory_order_release);
		/* Sometimes yield instead: if the racer shares our CPU (a
		 * loaded machine), no amount of spinning lets it go first. */
		if (xorshift(&rnd) % 8 == 0)
			sched_yield();
		else
			idle(&rnd, delay);
		if (shut) {
			weft_fd_shut(r, woken);
			mine = woken[WEFT_READ];
		} else {
			mine = weft_fd_cancel(r, WEFT_READ, gen_of(r), waiter) ? (uint64_t)waiter + 1 : 0;
		}
		await_change(&x.finished, round - 1);
		got = atomic_load_explicit(&x.got, memory_order_relaxed);
		ck_assert_msg((got == 0) != (mine == 0), "round %u: ready %llu, %s %llu", round,
		              (unsigned long long)got, shut ? "shut" : "cancel",
		              (unsigned long long)mine);
		ck_assert_uint_eq(got | mine, (uint64_t)waiter + 1);
		if (got) {
			ready_won++;
			delay -= delay / 8;
		} else {
			other_won++;
			if (delay < 1u << 20)
				delay += delay / 8 + 1;
		}
		close_record(t, r);
	}
	atomic_store_explicit(&x.go, RACE_STOP, memory_order_release);
	weft_thread_join(th, NULL);
	/* Both orders must have happened for the run to mean anything. */
	ck_assert_uint_gt(ready_won, 0);
	ck_assert_uint_gt(other_won, 0);
	weft_fdtab_free(t);
}
END_TEST

/* Readiness tracking: a direction found empty is idle until the next edge;
 * a READY from before is stale then (waiting does not consume it for a
 * retry); a hang-up or error turns tracking off, and a connect or a
 * reopened record forgets it. */
START_TEST(test_readiness_tracking)
{
	weft_fdtab_t *t = table();
	weft_fd_t *r = weft_fdtab_open(t, 3, 0);
	uint32_t g = gen_of(r);

	for (int dir = WEFT_READ; dir <= WEFT_WRITE; dir++) {
		/* Nothing known: never idle. */
		ck_assert_int_eq(weft_fd_idle(r, dir), 0);
		/* An edge while nobody waits: READY, counted. */
		uint32_t e0 = weft_fd_edges(r, dir);
		ck_assert_uint_eq(weft_fd_ready(r, dir, g), 0);
		ck_assert_uint_eq(weft_fd_edges(r, dir), e0 + 1);
		ck_assert_uint_eq(state_of(r, dir), WEFT_WAIT_READY);
		/* A call after that edge found the direction empty. */
		uint32_t e = weft_fd_edges(r, dir);
		weft_fd_drained(r, dir, e);
		ck_assert_int_ne(weft_fd_idle(r, dir), 0);
		/* Waiting replaces the stale READY: no retry. */
		ck_assert_int_eq(weft_fd_wait(r, dir, 5), 0);
		ck_assert_uint_eq(state_of(r, dir), WEFT_WAIT_BASE + 5);
		/* The next edge wakes the waiter and ends the idleness. */
		ck_assert_uint_eq(weft_fd_ready(r, dir, g), 6);
		ck_assert_int_eq(weft_fd_idle(r, dir), 0);

		/* Found empty, then an edge before the wait: that READY is
		 * fresh and is consumed for a retry. */
		e = weft_fd_edges(r, dir);
		weft_fd_drained(r, dir, e);
		ck_assert_uint_eq(weft_fd_ready(r, dir, g), 0);
		ck_assert_int_eq(weft_fd_idle(r, dir), 0);
		ck_assert_int_eq(weft_fd_wait(r, dir, 5), 1);
		ck_assert_uint_eq(state_of(r, dir), WEFT_WAIT_EMPTY);

		/* undrain forgets. */
		weft_fd_drained(r, dir, weft_fd_edges(r, dir));
		weft_fd_undrain(r, dir);
		ck_assert_int_eq(weft_fd_idle(r, dir), 0);
	}

	/* Sticky: a hang-up seen once, and nothing is idle any more, nor is
	 * a READY stale (data and FIN in one edge must be read to the end). */
	weft_fd_drained(r, WEFT_READ, weft_fd_edges(r, WEFT_READ));
	ck_assert_int_ne(weft_fd_idle(r, WEFT_READ), 0);
	weft_fd_sticky(r);
	ck_assert_int_eq(weft_fd_idle(r, WEFT_READ), 0);
	ck_assert_uint_eq(weft_fd_ready(r, WEFT_READ, g), 0);
	weft_fd_drained(r, WEFT_READ, weft_fd_edges(r, WEFT_READ));
	ck_assert_int_eq(weft_fd_idle(r, WEFT_READ), 0);
	ck_assert_int_eq(weft_fd_wait(r, WEFT_READ, 5), 1);
	/* A completed connect forgets the hang-up of the unconnected socket. */
	weft_fd_connected(r);
	weft_fd_drained(r, WEFT_READ, weft_fd_edges(r, WEFT_READ));
	ck_assert_int_ne(weft_fd_idle(r, WEFT_READ), 0);
	weft_fd_sticky(r);

	/* A reopened record starts with nothing known. */
	close_record(t, r);
	weft_fd_t *r2 = weft_fdtab_open(t, 4, 0);
	ck_assert_ptr_eq(r2, r);
	weft_fd_drained(r2, WEFT_WRITE, weft_fd_edges(r2, WEFT_WRITE));
	ck_assert_int_ne(weft_fd_idle(r2, WEFT_WRITE), 0); /* not sticky */
	close_record(t, r2);
	r2 = weft_fdtab_open(t, 4, 0);
	ck_assert_int_eq(weft_fd_idle(r2, WEFT_WRITE), 0);
	ck_assert_int_eq(weft_fd_idle(r2, WEFT_READ), 0);
	close_record(t, r2);
	weft_fdtab_free(t);
}
END_TEST

static Suite *fdtab_suite(void)
{
	Suite *s = suite_create("fdtab");
	TCase *tc = tcase_create("core");
	TCase *st = tcase_create("stress");

	tcase_add_test(tc, test_empty_table);
	tcase_add_test(tc, test_open_token);
	tcase_add_test(tc, test_reuse_bumps_generation);
	tcase_add_test(tc, test_stale_tokens);
	tcase_add_test(tc, test_shut_idempotent);
	tcase_add_test(tc, test_growth);
	tcase_add_loop_test(tc, test_state_machine, 0, (int)(2 * sizeof rows / sizeof rows[0]));
	tcase_add_test(tc, test_waiter_limits);
	tcase_add_test(tc, test_cancel_after_reuse);
	tcase_add_test(tc, test_readiness_tracking);
	tcase_add_test(tc, test_enomem);
	suite_add_tcase(s, tc);
	/* Explicit, so the runs fit even under Check's 4 s default. */
	tcase_set_timeout(st, 15);
	tcase_add_test(st, test_stress_ready_vs_owner);
	tcase_add_test(st, test_stress_ready_vs_shut_cancel);
	suite_add_tcase(s, st);
	return s;
}

WEFT_CHECK_MAIN(fdtab_suite)
