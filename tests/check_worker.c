/* The scheduler core (lib/worker): coroutine slots and wait numbers; fd
 * waits on socketpairs (EAGAIN, an edge that came first, deadlines, close,
 * a user wake-up, stale events after close and fd reuse); timed and
 * untimed waits and what keeps the loop alive; yield; wake; the inbox (a
 * poll blocked forever interrupted from another thread, WEFT_MSG_IO
 * hand-offs between workers); deadlines under a saturating I/O load; and
 * a 1000-coroutine stress run with exact accounting.
 *
 * Every test ends as libuv's do: nothing queued, nothing alive, no record
 * open, no wake-up lost. */
#include "worker.h"

#include <errno.h>
#include "thread.h"
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "checkutil.h"
#include "clock.h"
#include "error.h"
#include "sock.h"

#define MS 1000000ull

typedef struct env {
	weft_runtime_t *rt;
	weft_worker_t *w;
} env_t;

static env_t setup(void)
{
	env_t e;

	ck_assert_int_eq(weft_runtime_new(-1, &e.rt), 0);
	ck_assert_int_eq(weft_worker_new(e.rt, &e.w), 0);
	return e;
}

/* The worker is idle and owes nobody anything. */
static void check_quiet(weft_worker_t *w)
{
	weft_wake_t wk;

	ck_assert_int_eq(weft_worker_next(w, &wk), 0);
	ck_assert_int_eq(weft_worker_alive(w), 0);
	ck_assert_uint_eq(w->nalive, 0);
	ck_assert_uint_eq(weft_wheel_count(&w->wheel), 0);
	ck_assert_uint_eq(weft_wheel_count(&w->cbwheel), 0);
	ck_assert_int_eq(weft_worker_timers_due(w), 0);
	ck_assert_uint_eq(w->stats.lost, 0);
}

static void teardown(env_t e)
{
	check_quiet(e.w);
	ck_assert_uint_eq(weft_fdtab_open_count(weft_runtime_fdtab(e.rt)), 0);
	weft_worker_free(e.w);
	weft_runtime_free(e.rt);
}

static uint32_t xorshift(uint32_t *s)
{
	uint32_t x = *s;

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return *s = x;
}

static void sleep_ns(uint64_t ns)
{
	tu_sleep_ns(ns);
}

static uint32_t new_co(weft_worker_t *w)
{
	int64_t slot = weft_worker_co_new(w);

	ck_assert_int_ge(slot, 0);
	ck_assert_int_eq(weft_worker_co(w, (uint32_t)slot)->state, WEFT_CO_RUNNING);
	return (uint32_t)slot;
}

/* A socketpair: the first end registered with w, the second (*peer) left
 * to the test. */
static weft_fd_t *pair(weft_worker_t *w, int *peer)
{
	int sv[2], err = 0;

	ck_assert_int_eq(tu_pair(sv), 0);
	weft_fd_t *r = weft_worker_open_fd(w, sv[0], &err);
	ck_assert_ptr_nonnull(r);
	ck_assert_int_eq(err, 0);
	*peer = sv[1];
	return r;
}

static int fd_of(weft_fd_t *r)
{
	return atomic_load(&r->fd);
}

static void put(int fd)
{
	ck_assert_int_eq(weft_sock_send(fd, "x", 1, 0), 1);
}

/* Read until EAGAIN, as the binding does before it waits. */
static size_t drain(int fd)
{
	char buf[4096];
	size_t n = 0;
	ssize_t k;

	while ((k = weft_sock_recv(fd, buf, sizeof buf, 0)) > 0)
		n += (size_t)k;
	ck_assert_int_eq(k, -EAGAIN);
	return n;
}

/* Drain, then wait for readability; the wait's seq. */
static uint32_t wait_read(weft_worker_t *w, uint32_t slot, weft_fd_t *r, uint64_t deadline)
{
	drain(fd_of(r));
	ck_assert_int_eq(weft_worker_wait_io(w, slot, r, WEFT_READ, deadline), 0);
	weft_co_t *co = weft_worker_co(w, slot);
	ck_assert_int_eq(co->state, WEFT_CO_WAIT_IO);
	return co->seq;
}

/* Poll (never longer than the time left) until a wake-up comes: 1 and *wk,
 * or 0 after timeout_ms. */
static int next_within(weft_worker_t *w, weft_wake_t *wk, uint64_t timeout_ms)
{
	uint64_t end = weft_clock_ns() + timeout_ms * MS;

	for (;;) {
		if (weft_worker_next(w, wk))
			return 1;
		uint64_t now = weft_clock_ns();
		if (now >= end)
			return 0;
		ck_assert_int_ge(weft_worker_poll(w, end - now), 0);
	}
}

static void expect_wake(weft_worker_t *w, uint32_t slot, uint32_t seq, int32_t code)
{
	weft_wake_t wk;

	ck_assert_int_eq(next_within(w, &wk, 2000), 1);
	ck_assert_uint_eq(wk.slot, slot);
	ck_assert_uint_eq(wk.seq, seq);
	ck_assert_int_eq(wk.code, code);
	ck_assert_int_eq(weft_worker_co(w, slot)->state, WEFT_CO_RUNNING);
}

/* Nothing is handed out for `ms`, however often we poll. */
static void expect_nothing(weft_worker_t *w, uint64_t ms)
{
	weft_wake_t wk;

	ck_assert_int_eq(next_within(w, &wk, ms), 0);
}

static void shut(weft_worker_t *w, weft_fd_t *r, int peer)
{
	weft_worker_close_fd(w, r);
	tu_close(peer);
}

/* ------------------------------------------------------------------ */

START_TEST(test_slot_reuse)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_wake_t wk;

	uint32_t a = new_co(w), b = new_co(w);
	ck_assert_uint_ne(a, b);
	uint32_t seq_a = weft_worker_wait_ext(w, a);
	ck_assert_uint_eq(seq_a, weft_worker_co(w, a)->seq);
	ck_assert_int_eq(weft_worker_co(w, a)->state, WEFT_CO_WAIT_EXT);
	ck_assert_uint_eq(w->nalive, 1);

	/* A wake-up is queued for a's wait, then a dies before it runs. */
	ck_assert_int_eq(weft_worker_wake(w, a, seq_a, 7), 1);
	weft_worker_co_free(w, a);
	ck_assert_int_eq(weft_worker_co(w, a)->state, WEFT_CO_FREE);
	ck_assert_uint_eq(w->nalive, 0);
	ck_assert_int_eq(weft_worker_wake(w, a, weft_worker_co(w, a)->seq, 7), 0);

	/* The freed slot comes back first, under a new number. */
	uint32_t c = new_co(w);
	ck_assert_uint_eq(c, a);
	ck_assert_uint_ne(weft_worker_co(w, c)->seq, seq_a);
	uint32_t seq_c = weft_worker_wait_ext(w, c);
	ck_assert_uint_ne(seq_c, seq_a);

	/* Wake-ups for the old owner are stale: neither a new one nor the one
	 * still queued reaches the slot's new owner. */
	ck_assert_int_eq(weft_worker_wake(w, c, seq_a, 7), 0);
	ck_assert_int_eq(weft_worker_next(w, &wk), 0);
	ck_assert_int_eq(weft_worker_co(w, c)->state, WEFT_CO_WAIT_EXT);
	ck_assert_uint_eq(w->nalive, 1);

	ck_assert_int_eq(weft_worker_wake(w, c, seq_c, 9), 1);
	ck_assert_int_eq(weft_worker_next(w, &wk), 1);
	ck_assert_uint_eq(wk.slot, c);
	ck_assert_uint_eq(wk.seq, seq_c);
	ck_assert_int_eq(wk.code, 9);
	ck_assert_int_eq(weft_worker_next(w, &wk), 0);

	/* Slots out of range are refused, not read. */
	ck_assert_int_eq(weft_worker_wake(w, 1000000, 1, 0), 0);

	/* Past the first allocation: slots stay distinct, and freed ones are
	 * reused before the table grows again. */
	enum { N = 300 };
	uint32_t s[N];
	static unsigned char seen[N + 2];
	for (int i = 0; i < N; i++) {
		s[i] = new_co(w);
		ck_assert_uint_lt(s[i], N + 2);
		ck_assert_int_eq(seen[s[i]], 0);
		seen[s[i]] = 1;
	}
	for (int i = 0; i < N; i++)
		weft_worker_co_free(w, s[i]);
	for (int i = 0; i < N; i++) {
		s[i] = new_co(w);
		ck_assert_uint_lt(s[i], N + 2);
	}
	for (int i = 0; i < N; i++)
		weft_worker_co_free(w, s[i]);
	weft_worker_co_free(w, c);
	weft_worker_co_free(w, b);
	teardown(e);
}
END_TEST

/* Regression: growing the coroutine table moved the records, and with them
 * the timers the wheel links by address, leaving the wheel pointing into
 * freed memory (ASan: heap-use-after-free on the next advance). */
START_TEST(test_growth_keeps_timers)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	enum { NT = 40, NMORE = 600 };
	uint32_t slot[NT], seq[NT];
	uint64_t deadline[NT];
	int peer;

	uint64_t t0 = weft_clock_ns();
	/* Deadlines from 10 to 88 ms: level 0 and level 1 of the wheel. */
	for (int i = 0; i < NT; i++) {
		slot[i] = new_co(w);
		deadline[i] = t0 + (10 + 2 * (uint64_t)i) * MS;
		ck_assert_int_eq(weft_worker_wait_time(w, slot[i], deadline[i]), 0);
		seq[i] = weft_worker_co(w, slot[i])->seq;
	}
	/* And one fd wait with a deadline. */
	uint32_t io = new_co(w);
	weft_fd_t *r = pair(w, &peer);
	uint64_t io_deadline = t0 + 30 * MS;
	uint32_t io_seq = wait_read(w, io, r, io_deadline);

	uint32_t more[NMORE];
	for (int i = 0; i < NMORE; i++)
		more[i] = new_co(w);
	ck_assert_uint_eq(weft_wheel_count(&w->wheel), NT + 1);

	int got = 0, got_io = 0;
	while (got < NT || !got_io) {
		weft_wake_t wk;
		ck_assert_int_eq(next_within(w, &wk, 2000), 1);
		uint64_t now = weft_clock_ns();
		ck_assert_int_eq(wk.code, WEFT_ETIMEOUT);
		if (wk.slot == io) {
			ck_assert_int_eq(got_io, 0);
			ck_assert_uint_eq(wk.seq, io_seq);
			ck_assert_uint_ge(now, io_deadline);
			got_io = 1;
			continue;
		}
		int i = 0;
		while (i < NT && slot[i] != wk.slot)
			i++;
		ck_assert_int_lt(i, NT);
		ck_assert_uint_eq(wk.seq, seq[i]);
		ck_assert_uint_ge(now, deadline[i]);
		seq[i] = 0;
		got++;
	}
	for (int i = 0; i < NMORE; i++)
		weft_worker_co_free(w, more[i]);
	for (int i = 0; i < NT; i++)
		weft_worker_co_free(w, slot[i]);
	weft_worker_co_free(w, io);
	shut(w, r, peer);
	teardown(e);
}
END_TEST

/* EAGAIN, wait, the peer writes: one wake-up with code 0, exactly once. */
START_TEST(test_io_ready)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_wake_t wk;
	int peer;
	weft_fd_t *r = pair(w, &peer);
	uint32_t slot = new_co(w);

	char c;
	ck_assert_int_eq(weft_sock_recv(fd_of(r), &c, 1, 0), -EAGAIN);
	ck_assert_int_eq(weft_worker_wait_io(w, slot, r, WEFT_READ, UINT64_MAX), 0);
	uint32_t seq = weft_worker_co(w, slot)->seq;
	ck_assert_uint_eq(w->nalive, 1);
	ck_assert_int_ne(weft_worker_alive(w), 0);
	/* Nothing to read: polls hand out nothing (the writable edge from
	 * the registration is remembered, not delivered). */
	ck_assert_int_eq(weft_worker_poll(w, 0), 0);
	ck_assert_int_eq(weft_worker_next(w, &wk), 0);
	/* One waiter per direction. */
	uint32_t other = new_co(w);
	ck_assert_int_eq(weft_worker_wait_io(w, other, r, WEFT_READ, UINT64_MAX), -EBUSY);
	ck_assert_int_eq(weft_worker_co(w, other)->state, WEFT_CO_RUNNING);
	ck_assert_uint_eq(w->nalive, 1);

	put(peer);
	ck_assert_int_eq(weft_worker_poll(w, 1000 * MS), 1);
	ck_assert_int_eq(weft_worker_next(w, &wk), 1);
	ck_assert_uint_eq(wk.slot, slot);
	ck_assert_uint_eq(wk.seq, seq);
	ck_assert_int_eq(wk.code, 0);
	ck_assert_int_eq(weft_worker_co(w, slot)->state, WEFT_CO_RUNNING);
	ck_assert_int_eq(weft_worker_next(w, &wk), 0);
	ck_assert_int_eq(weft_worker_poll(w, 0), 0);
	ck_assert_int_eq(weft_worker_next(w, &wk), 0);
	check_quiet(w);
	ck_assert_uint_eq(drain(fd_of(r)), 1);

	/* The writable edge of the registration was kept for the writer. */
	ck_assert_int_eq(weft_worker_wait_io(w, other, r, WEFT_WRITE, UINT64_MAX), 1);
	ck_assert_int_eq(weft_worker_co(w, other)->state, WEFT_CO_RUNNING);

	/* And again, on the same record, with a new number. */
	uint32_t seq2 = wait_read(w, slot, r, UINT64_MAX);
	ck_assert_uint_ne(seq2, seq);
	put(peer);
	expect_wake(w, slot, seq2, 0);
	check_quiet(w);

	weft_worker_co_free(w, other);
	weft_worker_co_free(w, slot);
	shut(w, r, peer);
	teardown(e);
}
END_TEST

/* An edge harvested between EAGAIN and the wait is not lost: wait_io says
 * "retry" and leaves no wait behind. */
START_TEST(test_io_edge_before_wait)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	int peer;
	weft_fd_t *r = pair(w, &peer);
	uint32_t slot = new_co(w);

	char c;
	ck_assert_int_eq(weft_sock_recv(fd_of(r), &c, 1, 0), -EAGAIN);
	put(peer);
	ck_assert_int_eq(weft_worker_poll(w, 0), 0); /* nobody waits yet */
	uint32_t seq = weft_worker_co(w, slot)->seq;
	ck_assert_int_eq(weft_worker_wait_io(w, slot, r, WEFT_READ, weft_clock_ns() + 10 * MS), 1);
	ck_assert_int_eq(weft_worker_co(w, slot)->state, WEFT_CO_RUNNING);
	ck_assert_uint_ne(weft_worker_co(w, slot)->seq, seq);
	check_quiet(w); /* deadline withdrawn, nothing alive */
	ck_assert_int_eq(weft_sock_recv(fd_of(r), &c, 1, 0), 1);

	/* The edge was consumed: the next wait really waits. */
	uint32_t seq2 = wait_read(w, slot, r, UINT64_MAX);
	expect_nothing(w, 20);
	put(peer);
	expect_wake(w, slot, seq2, 0);

	weft_worker_co_free(w, slot);
	shut(w, r, peer);
	teardown(e);
}
END_TEST

/* A deadline 30 ms ahead with no data: WEFT_ETIMEOUT, not early, not much
 * late, and the wait word is withdrawn so the next edge is kept. */
START_TEST(test_io_deadline)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	int peer;
	weft_fd_t *r = pair(w, &peer);
	uint32_t slot = new_co(w);

	uint64_t deadline = weft_clock_ns() + 30 * MS;
	uint32_t seq = wait_read(w, slot, r, deadline);
	ck_assert_uint_eq(weft_wheel_count(&w->wheel), 1);
	expect_wake(w, slot, seq, WEFT_ETIMEOUT);
	uint64_t now = weft_clock_ns();
	ck_assert_uint_ge(now, deadline);
	ck_assert_uint_lt(now - deadline, 50 * MS);
	ck_assert_uint_eq(w->stats.timers, 1);
	check_quiet(w);

	/* Nobody waits now: the edge is remembered for the next try. */
	put(peer);
	ck_assert_int_eq(weft_worker_poll(w, 0), 0);
	ck_assert_int_eq(weft_worker_wait_io(w, slot, r, WEFT_READ, UINT64_MAX), 1);
	ck_assert_uint_eq(drain(fd_of(r)), 1);

	weft_worker_co_free(w, slot);
	shut(w, r, peer);
	teardown(e);
}
END_TEST

/* Closing a record wakes both of its waiters with WEFT_ECLOSED, at once
 * and once; their deadlines go with them. */
START_TEST(test_close_while_waiting)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	int peer;
	weft_fd_t *r = pair(w, &peer);
	uint32_t rd = new_co(w), wr = new_co(w);

	uint32_t seq_rd = wait_read(w, rd, r, weft_clock_ns() + 30 * MS);

	/* Fill the socket, then wait to write.  The first try may find the
	 * registration's writable edge; the retry must then wait. */
	static char buf[65536];
	int rc;
	do {
		while (weft_sock_send(fd_of(r), buf, sizeof buf, 0) > 0)
			;
		ck_assert_int_eq(weft_worker_poll(w, 0), 0);
		rc = weft_worker_wait_io(w, wr, r, WEFT_WRITE, UINT64_MAX);
		ck_assert_int_ge(rc, 0);
	} while (rc == 1);
	uint32_t seq_wr = weft_worker_co(w, wr)->seq;
	ck_assert_uint_eq(w->nalive, 2);

	weft_worker_close_fd(w, r);
	tu_close(peer);
	/* No poll needed: the close queues the wake-ups itself. */
	weft_wake_t wk[2];
	ck_assert_int_eq(weft_worker_next(w, &wk[0]), 1);
	ck_assert_int_eq(weft_worker_next(w, &wk[1]), 1);
	ck_assert_int_eq(wk[0].code, WEFT_ECLOSED);
	ck_assert_int_eq(wk[1].code, WEFT_ECLOSED);
	ck_assert_uint_eq(wk[0].slot + wk[1].slot, rd + wr);
	for (int i = 0; i < 2; i++)
		ck_assert_uint_eq(wk[i].seq, wk[i].slot == rd ? seq_rd : seq_wr);
	check_quiet(w);
	expect_nothing(w, 40); /* the 30 ms deadline does not fire */

	/* Waiting on a closed record fails at once and leaves nothing. */
	ck_assert_int_eq(weft_worker_wait_io(w, rd, r, WEFT_READ, weft_clock_ns() + 10 * MS),
			 WEFT_ECLOSED);
	ck_assert_int_eq(weft_worker_co(w, rd)->state, WEFT_CO_RUNNING);
	check_quiet(w);

	weft_worker_co_free(w, rd);
	weft_worker_co_free(w, wr);
	teardown(e);
}
END_TEST

/* Events carrying the token of a record's earlier life are counted and
 * dropped; they never wake the record's new waiter.  And a dup()ed
 * descriptor does not keep a closed record firing. */
START_TEST(test_stale_events)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_poller_t *p = weft_runtime_poller(e.rt);
	weft_fdtab_t *t = weft_runtime_fdtab(e.rt);
	int peer1, peer2, sv[2];
	uint32_t slot = new_co(w);

	weft_fd_t *r1 = pair(w, &peer1);
	uint64_t old_token = weft_fd_token(r1);
	int dupfd = dup(fd_of(r1));
	ck_assert_int_ge(dupfd, 0);
	ck_assert_int_eq(weft_worker_poll(w, 0), 0);
	weft_worker_close_fd(w, r1);

	/* The record comes back for a new socket, under a new generation. */
	weft_fd_t *r2 = pair(w, &peer2);
	ck_assert_ptr_eq(r2, r1);
	ck_assert_uint_ne(weft_fd_token(r2), old_token);
	ck_assert_uint_eq((uint32_t)weft_fd_token(r2), (uint32_t)old_token);
	ck_assert_int_eq(weft_worker_poll(w, 0), 0);
	uint32_t seq = wait_read(w, slot, r2, UINT64_MAX);

	/* The dup keeps the old file description open, but it left the
	 * poller before close: data arriving for it raises no event. */
	uint64_t events = w->stats.events;
	put(peer1);
	ck_assert_int_eq(weft_worker_poll(w, 20 * MS), 0);
	ck_assert_uint_eq(w->stats.events, events);
	tu_close(dupfd);
	tu_close(peer1);

	/* An event still in flight under the old token, as another poller
	 * thread would hold it: a third socket registered under that token. */
	ck_assert_int_eq(tu_pair(sv), 0);
	ck_assert_int_eq(weft_poller_add(p, sv[0], WEFT_POLL_IN | WEFT_POLL_EDGE, old_token), 0);
	uint64_t stale = w->stats.stale, tstale = weft_fdtab_stale_count(t);
	events = w->stats.events;
	for (int i = 0; i < 3; i++) {
		put(sv[1]);
		ck_assert_int_eq(weft_worker_poll(w, 1000 * MS), 0);
	}
	ck_assert_uint_eq(w->stats.events, events + 3);
	ck_assert_uint_eq(w->stats.stale, stale + 3);
	ck_assert_uint_eq(weft_fdtab_stale_count(t), tstale + 3);
	ck_assert_uint_eq(w->stats.wakes, 0);
	ck_assert_int_eq(weft_worker_co(w, slot)->state, WEFT_CO_WAIT_IO);
	ck_assert_int_eq(weft_runq_len(&w->runq), 0);
	ck_assert_int_eq(weft_poller_delete(p, sv[0]), 0);
	tu_close(sv[0]);
	tu_close(sv[1]);

	/* The new life's own events still work. */
	put(peer2);
	expect_wake(w, slot, seq, 0);

	weft_worker_co_free(w, slot);
	shut(w, r2, peer2);
	teardown(e);
}
END_TEST

/* Regression: a wait on an fd ended by weft_worker_wake left the slot in
 * the wait word, so the next wait on that direction got -EBUSY and a later
 * event woke whatever the slot was waiting for by then. */
START_TEST(test_wake_io_wait)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	int peer_a, peer_b;
	weft_fd_t *ra = pair(w, &peer_a);
	weft_fd_t *rb = pair(w, &peer_b);
	uint32_t slot = new_co(w);

	uint32_t seq = wait_read(w, slot, ra, weft_clock_ns() + 20 * MS);
	ck_assert_int_eq(weft_worker_wake(w, slot, seq, WEFT_WAKE_USER), 1);
	ck_assert_int_eq(weft_worker_wake(w, slot, seq, WEFT_WAKE_USER), 0);
	expect_wake(w, slot, seq, WEFT_WAKE_USER);
	check_quiet(w);

	/* The direction is free again, and the deadline went with the wait. */
	seq = wait_read(w, slot, ra, UINT64_MAX);
	expect_nothing(w, 30);
	put(peer_a);
	expect_wake(w, slot, seq, 0);

	/* Woken by hand again, then waiting on another record: an edge on
	 * the first is not for it. */
	seq = wait_read(w, slot, ra, UINT64_MAX);
	ck_assert_int_eq(weft_worker_wake(w, slot, seq, WEFT_WAKE_USER), 1);
	expect_wake(w, slot, seq, WEFT_WAKE_USER);
	seq = wait_read(w, slot, rb, UINT64_MAX);
	put(peer_a);
	expect_nothing(w, 20);
	ck_assert_int_eq(weft_worker_co(w, slot)->state, WEFT_CO_WAIT_IO);
	put(peer_b);
	expect_wake(w, slot, seq, 0);
	/* The edge on the first was remembered for its next wait. */
	ck_assert_int_eq(weft_worker_wait_io(w, slot, ra, WEFT_READ, UINT64_MAX), 1);

	weft_worker_co_free(w, slot);
	shut(w, ra, peer_a);
	shut(w, rb, peer_b);
	teardown(e);
}
END_TEST

/* Timed waits keep the loop alive; waits without a deadline do not. */
START_TEST(test_wait_time)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_wake_t wk;
	uint32_t a = new_co(w), b = new_co(w);

	/* b waits for a wake-up only: nothing can end it from inside. */
	ck_assert_int_eq(weft_worker_wait_time(w, b, UINT64_MAX), 0);
	uint32_t seq_b = weft_worker_co(w, b)->seq;
	ck_assert_int_eq(weft_worker_co(w, b)->state, WEFT_CO_WAIT_TIME);
	ck_assert_uint_eq(w->nalive, 0);
	ck_assert_int_eq(weft_worker_alive(w), 0);
	ck_assert_uint_eq(weft_wheel_count(&w->wheel), 0);

	/* a sleeps 20 ms: alive until it wakes. */
	uint64_t deadline = weft_clock_ns() + 20 * MS;
	ck_assert_int_eq(weft_worker_wait_time(w, a, deadline), 0);
	uint32_t seq_a = weft_worker_co(w, a)->seq;
	ck_assert_uint_eq(w->nalive, 1);
	ck_assert_int_ne(weft_worker_alive(w), 0);
	expect_wake(w, a, seq_a, WEFT_ETIMEOUT);
	ck_assert_uint_ge(weft_clock_ns(), deadline);
	ck_assert_uint_eq(w->nalive, 0);
	ck_assert_int_eq(weft_worker_alive(w), 0); /* b alone keeps nothing */

	/* Wake-ups: stale seq refused, the second one refused as pending. */
	ck_assert_int_eq(weft_worker_wake(w, b, seq_b - 1, WEFT_WAKE_USER), 0);
	ck_assert_int_eq(weft_worker_wake(w, b, seq_b + 1, WEFT_WAKE_USER), 0);
	ck_assert_int_eq(weft_worker_wake(w, b, seq_b, WEFT_WAKE_USER), 1);
	ck_assert_int_ne(weft_worker_alive(w), 0); /* something is queued */
	ck_assert_int_eq(weft_worker_wake(w, b, seq_b, 5), 0);
	ck_assert_int_eq(weft_worker_next(w, &wk), 1);
	ck_assert_uint_eq(wk.slot, b);
	ck_assert_uint_eq(wk.seq, seq_b);
	ck_assert_int_eq(wk.code, WEFT_WAKE_USER);
	ck_assert_int_eq(weft_worker_next(w, &wk), 0);
	/* Not waiting any more: a wake for the finished wait is refused. */
	ck_assert_int_eq(weft_worker_wake(w, b, seq_b, WEFT_WAKE_USER), 0);
	check_quiet(w);

	/* A timed wait woken early: the deadline goes with it. */
	deadline = weft_clock_ns() + 20 * MS;
	ck_assert_int_eq(weft_worker_wait_time(w, a, deadline), 0);
	seq_a = weft_worker_co(w, a)->seq;
	ck_assert_int_eq(weft_worker_wake(w, a, seq_a, WEFT_WAKE_USER), 1);
	expect_wake(w, a, seq_a, WEFT_WAKE_USER);
	check_quiet(w);
	expect_nothing(w, 30);

	/* A deadline already past fires on the next poll. */
	ck_assert_int_eq(weft_worker_wait_time(w, a, weft_clock_ns() - 5 * MS), 0);
	seq_a = weft_worker_co(w, a)->seq;
	ck_assert_int_eq(weft_worker_poll(w, 0), 1);
	expect_wake(w, a, seq_a, WEFT_ETIMEOUT);

	/* Suspending a sleeper ends its wait: no deadline, no wake-up. */
	ck_assert_int_eq(weft_worker_wait_time(w, a, weft_clock_ns() + 5 * MS), 0);
	seq_a = weft_worker_co(w, a)->seq;
	weft_worker_suspend(w, a);
	ck_assert_int_eq(weft_worker_co(w, a)->state, WEFT_CO_SUSPENDED);
	ck_assert_int_eq(weft_worker_wake(w, a, seq_a, 1), 0);
	check_quiet(w);
	expect_nothing(w, 15);

	weft_worker_co_free(w, a);
	weft_worker_co_free(w, b);
	teardown(e);
}
END_TEST

/* Callback timers: each armed one is queued once, in expiry order, after
 * its deadline; a disarmed one never; armed or queued, they keep the loop
 * alive, and a poll with due timers not yet taken does not block. */
START_TEST(test_callback_timers)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	enum { N = 200 };
	static weft_timer_t t[N];
	int seen[N] = {0};
	uint64_t t0 = weft_clock_ns();

	for (int i = 0; i < N; i++) {
		weft_timer_init(&t[i]);
		/* 1 to 40 ms ahead, in a scrambled order. */
		weft_worker_timer_arm(w, &t[i], t0 + (uint64_t)(1 + (i * 37) % 40) * MS);
	}
	ck_assert_uint_eq(w->nalive, N);
	ck_assert_int_ne(weft_worker_alive(w), 0);
	/* Every third is disarmed; a second disarm finds nothing. */
	for (int i = 0; i < N; i += 3) {
		ck_assert_int_eq(weft_worker_timer_disarm(w, &t[i]), 1);
		ck_assert_int_eq(weft_worker_timer_disarm(w, &t[i]), 0);
	}
	int armed = N - (N + 2) / 3;
	ck_assert_uint_eq(w->nalive, (uint32_t)armed);

	int got = 0;
	uint64_t last = 0;
	uint64_t until = t0 + 2000 * MS;
	while (got < armed && weft_clock_ns() < until) {
		ck_assert_int_ge(weft_worker_poll(w, 50 * MS), 0);
		weft_timer_t *x;
		while ((x = weft_worker_timer_next(w)) != NULL) {
			int i = (int)(x - t);
			ck_assert_int_ge(i, 0);
			ck_assert_int_lt(i, N);
			ck_assert_int_ne(i % 3, 0);
			ck_assert_int_eq(seen[i], 0);
			seen[i] = 1;
			got++;
			ck_assert_uint_ge(x->expires, last);
			last = x->expires;
			/* Not early: the wheel ticks in milliseconds, rounded up. */
			ck_assert_uint_ge(weft_clock_ns(), t0 + (uint64_t)(1 + (i * 37) % 40) * MS);
			ck_assert_int_eq(weft_timer_armed(x), 0);
		}
	}
	ck_assert_int_eq(got, armed);
	ck_assert_uint_eq(w->nalive, 0);

	/* A timer already due is queued by the next poll, which then does
	 * not block while it waits to be taken. */
	weft_worker_timer_arm(w, &t[0], weft_clock_ns() - MS);
	ck_assert_int_eq(weft_worker_poll(w, 0), 0);
	ck_assert_int_ne(weft_worker_timers_due(w), 0);
	ck_assert_int_ne(weft_worker_alive(w), 0);
	ck_assert_int_eq(weft_worker_timer_disarm(w, &t[0]), 0); /* queued, not armed */
	uint64_t before = weft_clock_ns();
	ck_assert_int_ge(weft_worker_poll(w, 200 * MS), 0);
	ck_assert_uint_lt(weft_clock_ns() - before, 150 * MS);
	ck_assert_ptr_eq(weft_worker_timer_next(w), &t[0]);
	ck_assert_ptr_null(weft_worker_timer_next(w));
	teardown(e);
}
END_TEST

/* A yield is runnable on the next step: even an unbounded poll does not
 * block. */
START_TEST(test_yield)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_wake_t wk;
	uint32_t a = new_co(w), b = new_co(w);

	uint32_t seq_a = weft_worker_yield(w, a);
	uint32_t seq_b = weft_worker_yield(w, b);
	ck_assert_uint_eq(w->nalive, 0);
	ck_assert_int_ne(weft_worker_alive(w), 0);
	/* A wake-up for a queued yield is refused as pending. */
	ck_assert_int_eq(weft_worker_wake(w, a, seq_a, 0), 0);

	uint64_t t0 = weft_clock_ns();
	ck_assert_int_ge(weft_worker_poll(w, UINT64_MAX), 0);
	ck_assert_uint_lt(weft_clock_ns() - t0, 100 * MS);
	/* In order. */
	ck_assert_int_eq(weft_worker_next(w, &wk), 1);
	ck_assert_uint_eq(wk.slot, a);
	ck_assert_uint_eq(wk.seq, seq_a);
	ck_assert_int_eq(wk.code, 0);
	ck_assert_int_eq(weft_worker_next(w, &wk), 1);
	ck_assert_uint_eq(wk.slot, b);
	ck_assert_uint_eq(wk.seq, seq_b);
	ck_assert_int_eq(weft_worker_next(w, &wk), 0);
	check_quiet(w);

	weft_worker_co_free(w, a);
	weft_worker_co_free(w, b);
	teardown(e);
}
END_TEST

/* A suspended coroutine takes a WEFT_WAKE_RESUME wake-up for the seq of
 * its suspension, by post too, and nothing else: not another code, not
 * an older seq, not a second one while the first is queued. */
START_TEST(test_wake_suspended)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_wake_t wk;
	uint32_t a = new_co(w);

	weft_worker_suspend(w, a);
	uint32_t s1 = weft_worker_co(w, a)->seq;
	ck_assert_int_eq(weft_worker_co(w, a)->state, WEFT_CO_SUSPENDED);
	ck_assert_int_eq(weft_worker_wake(w, a, s1, WEFT_WAKE_USER), 0);
	ck_assert_int_eq(weft_worker_wake(w, a, s1, 0), 0);
	ck_assert_int_eq(weft_worker_wake(w, a, s1 - 1, WEFT_WAKE_RESUME), 0);
	ck_assert_int_eq(weft_worker_wake(w, a, s1, WEFT_WAKE_RESUME), 1);
	ck_assert_int_eq(weft_worker_wake(w, a, s1, WEFT_WAKE_RESUME), 0);
	ck_assert_int_eq(weft_worker_next(w, &wk), 1);
	ck_assert_uint_eq(wk.slot, a);
	ck_assert_uint_eq(wk.seq, s1);
	ck_assert_int_eq(wk.code, WEFT_WAKE_RESUME);
	ck_assert_int_eq(weft_worker_co(w, a)->state, WEFT_CO_RUNNING);

	/* A new suspension has a new seq: a wake-up for the last is stale,
	 * and so is one queued before the coroutine ran on its own. */
	weft_worker_suspend(w, a);
	uint32_t s2 = weft_worker_co(w, a)->seq;
	ck_assert_uint_ne(s1, s2);
	ck_assert_int_eq(weft_worker_wake(w, a, s1, WEFT_WAKE_RESUME), 0);
	weft_msg_t m = {WEFT_MSG_WAKE, a, s2, WEFT_WAKE_RESUME, NULL};
	ck_assert_int_eq(weft_worker_post(w, &m), 0);
	ck_assert_int_ge(weft_worker_poll(w, 0), 1);
	weft_worker_co(w, a)->state = WEFT_CO_RUNNING; /* resumed directly */
	weft_worker_suspend(w, a);
	ck_assert_int_eq(weft_worker_next(w, &wk), 0);
	ck_assert_int_eq(weft_worker_co(w, a)->state, WEFT_CO_SUSPENDED);

	weft_worker_co_free(w, a);
	teardown(e);
}
END_TEST

/* Another thread's post ends a poll blocked with no timeout at all. */
typedef struct poster {
	weft_worker_t *w;
	uint32_t slot;
	_Atomic uint32_t want; /* seq to end; changes once per round */
	_Atomic uint64_t sent; /* when the post was made */
	_Atomic int stop;
	_Atomic int failed;
} poster_t;

static void *poster_main(void *arg)
{
	poster_t *p = arg;
	uint32_t last = 0, rnd = 12345;

	for (;;) {
		uint32_t seq = atomic_load_explicit(&p->want, memory_order_acquire);
		if (seq == last) {
			if (atomic_load_explicit(&p->stop, memory_order_acquire))
				return NULL;
			sched_yield();
			continue;
		}
		last = seq;
		/* Sometimes at once (the poll may not have begun), mostly
		 * while it sleeps. */
		uint32_t x = xorshift(&rnd) % 8;
		if (x != 0)
			sleep_ns((uint64_t)(xorshift(&rnd) % 300) * 1000);
		weft_msg_t m = {WEFT_MSG_WAKE, p->slot, seq, (int32_t)(seq & 0xffff), NULL};
		atomic_store_explicit(&p->sent, weft_clock_ns(), memory_order_release);
		if (weft_worker_post(p->w, &m) != 0)
			atomic_store(&p->failed, 1);
	}
}

START_TEST(test_post_interrupts_poll)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	enum { ROUNDS = 1000 };
	poster_t p = {.w = w, .slot = new_co(w)};
	weft_thread_t th;
	uint64_t worst = 0;

	ck_assert_int_eq(weft_thread_create(&th, poster_main, &p, 0), 0);
	for (int i = 0; i < ROUNDS; i++) {
		uint32_t seq = weft_worker_wait_ext(w, p.slot);
		atomic_store_explicit(&p.want, seq, memory_order_release);
		weft_wake_t wk;
		/* Unbounded: a lost interruption hangs here and Check's
		 * timeout fails the test. */
		while (!weft_worker_next(w, &wk))
			ck_assert_int_ge(weft_worker_poll(w, UINT64_MAX), 0);
		uint64_t sent = atomic_load_explicit(&p.sent, memory_order_acquire);
		uint64_t lat = weft_clock_ns() - sent;
		if (lat > worst)
			worst = lat;
		ck_assert_uint_eq(wk.slot, p.slot);
		ck_assert_uint_eq(wk.seq, seq);
		ck_assert_int_eq(wk.code, (int32_t)(seq & 0xffff));
	}
	atomic_store_explicit(&p.stop, 1, memory_order_release);
	weft_thread_join(th, NULL);
	ck_assert_int_eq(atomic_load(&p.failed), 0);
	ck_assert_uint_eq(w->stats.inbox, ROUNDS);
	/* "A few ms"; generous for sanitizers on a loaded 2-vCPU box. */
	ck_assert_msg(worst < 50 * MS, "worst wake-up latency %llu us",
		      (unsigned long long)(worst / 1000));
	weft_worker_co_free(w, p.slot);
	teardown(e);
}
END_TEST

/* WEFT_MSG_IO: another worker took the wait word and sent the waiter
 * home; WEFT_MSG_WAKE: an outside completion. */
typedef struct harvester {
	weft_worker_t *owner;
	weft_fd_t *r;
	uint64_t waiter1;
	int rc;
} harvester_t;

static void *harvester_main(void *arg)
{
	harvester_t *h = arg;
	uint32_t gen = (uint32_t)(weft_fd_token(h->r) >> 32);

	/* What deliver() does on a worker that does not own the record. */
	h->waiter1 = weft_fd_ready(h->r, WEFT_READ, gen);
	if (h->waiter1) {
		weft_msg_t m = {WEFT_MSG_IO, (uint32_t)(h->waiter1 - 1), 0, 0, NULL};
		h->rc = weft_worker_post(h->owner, &m);
	}
	return NULL;
}

START_TEST(test_msg_io)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	int peer;
	weft_fd_t *r = pair(w, &peer);
	uint32_t slot = new_co(w);
	weft_thread_t th;

	uint32_t seq = wait_read(w, slot, r, weft_clock_ns() + 1000 * MS);
	harvester_t h = {.owner = w, .r = r};
	ck_assert_int_eq(weft_thread_create(&th, harvester_main, &h, 0), 0);
	weft_thread_join(th, NULL);
	ck_assert_uint_eq(h.waiter1, (uint64_t)slot + 1);
	ck_assert_int_eq(h.rc, 0);
	expect_wake(w, slot, seq, 0);
	ck_assert_uint_eq(w->stats.inbox, 1);
	check_quiet(w);

	/* Dropped: a slot out of range, and a slot not in an fd wait. */
	weft_msg_t m1 = {WEFT_MSG_IO, 1u << 30, 0, 0, NULL};
	weft_msg_t m2 = {WEFT_MSG_IO, slot, 0, 0, NULL};
	weft_msg_t m3 = {99, slot, 0, 0, NULL};
	ck_assert_int_eq(weft_worker_post(w, &m1), 0);
	ck_assert_int_eq(weft_worker_post(w, &m2), 0);
	ck_assert_int_eq(weft_worker_post(w, &m3), 0);
	ck_assert_int_eq(weft_worker_poll(w, 1000 * MS), 0);
	ck_assert_uint_eq(w->stats.inbox, 4);
	check_quiet(w);

	/* An outside completion, as the resolver sends it. */
	uint32_t seq_x = weft_worker_wait_ext(w, slot);
	ck_assert_uint_eq(w->nalive, 1);
	weft_msg_t stale = {WEFT_MSG_WAKE, slot, seq_x - 1, 3, NULL};
	weft_msg_t good = {WEFT_MSG_WAKE, slot, seq_x, 3, NULL};
	ck_assert_int_eq(weft_worker_post(w, &stale), 0);
	ck_assert_int_eq(weft_worker_post(w, &good), 0);
	ck_assert_int_eq(weft_worker_post(w, &good), 0);
	ck_assert_int_eq(weft_worker_poll(w, 1000 * MS), 1);
	expect_wake(w, slot, seq_x, 3);
	check_quiet(w);

	weft_worker_co_free(w, slot);
	shut(w, r, peer);
	teardown(e);
}
END_TEST

/* Two workers share a runtime: an event for one worker's record reaches
 * that worker's poller only, so the other never harvests it and nothing
 * is handed over; the owner's deadline, passing meanwhile, does not turn
 * the ready wait into a timeout. */
START_TEST(test_events_reach_owner)
{
	env_t e = setup();
	weft_worker_t *w0 = e.w, *w1;
	int peer;

	ck_assert_int_eq(weft_worker_new(e.rt, &w1), 0);
	ck_assert_uint_ne(w1->id, w0->id);
	weft_fd_t *r = pair(w0, &peer);
	uint32_t slot = new_co(w0);
	uint64_t deadline = weft_clock_ns() + 30 * MS;
	uint32_t seq = wait_read(w0, slot, r, deadline);

	put(peer);
	ck_assert_int_eq(weft_worker_poll(w1, 20 * MS), 0);
	ck_assert_uint_eq(w1->stats.events, 0);
	ck_assert_uint_eq(w1->stats.handoffs, 0);

	sleep_ns(deadline - weft_clock_ns() + 10 * MS);
	ck_assert_int_eq(weft_worker_poll(w0, 0), 1);
	ck_assert_uint_eq(w0->stats.events, 1);
	expect_wake(w0, slot, seq, 0);
	expect_nothing(w0, 10);
	check_quiet(w0);
	check_quiet(w1);

	weft_worker_co_free(w0, slot);
	shut(w0, r, peer);
	weft_worker_free(w1);
	teardown(e);
}
END_TEST

/* Worker X's coroutine in slot s waits on record R; X closes R under it
 * (its wake-up, "closed", is queued); R goes back to the table and worker
 * Y reopens it, and Y's coroutine in the same slot number s waits on it.
 * When X then takes its wake-up, nothing may be withdrawn from Y's wait
 * word: Y's coroutine still wakes for its data.  (A cancel that compared
 * only the waiter id emptied Y's word, and Y's coroutine never woke.)
 * The same with X's deadline firing instead of the close's wake-up. */
START_TEST(test_reuse_keeps_other_waiter)
{
	for (int variant = 0; variant < 2; variant++) {
		env_t e = setup();
		weft_worker_t *x = e.w, *y;
		int px, py;

		ck_assert_int_eq(weft_worker_new(e.rt, &y), 0);
		uint32_t sx = new_co(x), sy = new_co(y);
		ck_assert_uint_eq(sx, sy);
		weft_fd_t *r = pair(x, &px);
		uint32_t seq_x = wait_read(x, sx, r, weft_clock_ns() + (variant ? 5 : 1000) * MS);
		weft_worker_close_fd(x, r);
		tu_close(px);
		weft_fd_t *r2 = pair(y, &py);
		ck_assert_ptr_eq(r2, r); /* the record comes back, for y */
		uint32_t seq_y = wait_read(y, sy, r2, UINT64_MAX);
		if (variant)
			sleep_ns(10 * MS); /* x's deadline passes too */
		ck_assert_int_eq(weft_worker_poll(x, 0), 0);
		expect_wake(x, sx, seq_x, WEFT_ECLOSED);
		expect_nothing(x, 10);

		put(py);
		ck_assert_int_eq(weft_worker_poll(y, 1000 * MS), 1);
		expect_wake(y, sy, seq_y, 0);
		check_quiet(x);
		check_quiet(y);

		weft_worker_co_free(x, sx);
		weft_worker_co_free(y, sy);
		shut(y, r2, py);
		weft_worker_free(y);
		teardown(e);
	}
}
END_TEST

/* The spinning rule: an idle worker spins before it blocks only right
 * after a wake-up through its inbox, only if there is a CPU for it beside
 * the workers running, and only while fewer than half of those spin. */
START_TEST(test_spin_rule)
{
	env_t e = setup();
	weft_worker_t *w0 = e.w, *w1;
	ck_assert_int_eq(weft_worker_new(e.rt, &w1), 0);
	weft_msg_t m = {99, 0, 0, 0, NULL}; /* a message of no kind: just taken */

	/* No inbox wake-up before: no spin, even with CPUs to spare. */
	weft__runtime_set_cpus(e.rt, 8);
	ck_assert_int_eq(weft_worker_poll(w0, 2 * MS), 0);
	ck_assert_uint_eq(w0->stats.spins, 0);

	/* Right after an inbox wake-up, with a CPU free: one spin. */
	ck_assert_int_eq(weft_worker_post(w0, &m), 0);
	ck_assert_int_eq(weft_worker_poll(w0, 0), 0);
	ck_assert_int_eq(weft_worker_poll(w0, 2 * MS), 0);
	ck_assert_uint_eq(w0->stats.spins, 1);

	/* Two workers running (w1 is not parked) on one CPU: no spin. */
	weft__runtime_set_cpus(e.rt, 1);
	ck_assert_int_eq(weft_worker_post(w0, &m), 0);
	ck_assert_int_eq(weft_worker_poll(w0, 0), 0);
	uint64_t parks = w0->stats.parks;
	ck_assert_int_eq(weft_worker_poll(w0, 2 * MS), 0);
	ck_assert_uint_eq(w0->stats.spins, 1);
	ck_assert_uint_eq(w0->stats.parks, parks + 1); /* it blocked instead */

	/* A spin ends as soon as a message comes (the poll does not block
	 * for its whole timeout). */
	weft__runtime_set_cpus(e.rt, 8);
	ck_assert_int_eq(weft_worker_post(w0, &m), 0);
	ck_assert_int_eq(weft_worker_poll(w0, 0), 0);
	ck_assert_int_eq(weft_worker_post(w0, &m), 0);
	uint64_t t0 = weft_clock_ns();
	ck_assert_int_eq(weft_worker_poll(w0, 1000 * MS), 0);
	ck_assert_uint_lt(weft_clock_ns() - t0, 500 * MS);

	weft_worker_free(w1);
	teardown(e);
}
END_TEST

/* A post that fails for want of memory is refused (the poster keeps
 * its message) and counted where the owner reports it, in `lost`; a
 * post to a freed worker is refused with WEFT_ECLOSED. */
START_TEST(test_post_failures)
{
	env_t e = setup();
	weft_worker_t *w0 = e.w, *w1;
	ck_assert_int_eq(weft_worker_new(e.rt, &w1), 0);
	weft_msg_t m = {99, 0, 0, 0, NULL};

	weft_alloc_fail_after(1); /* the inbox's first growth */
	ck_assert_int_eq(weft_worker_post(w0, &m), WEFT_ENOMEM);
	weft_alloc_fail_after(0);
	ck_assert_int_eq(weft_worker_poll(w0, 0), 0);
	ck_assert_uint_eq(w0->stats.lost, 1);
	ck_assert_uint_eq(w0->stats.inbox, 0);
	ck_assert_int_eq(weft_worker_post(w0, &m), 0);
	ck_assert_int_eq(weft_worker_poll(w0, 0), 0);
	ck_assert_uint_eq(w0->stats.inbox, 1);
	ck_assert_uint_eq(w0->stats.lost, 1);

	weft_worker_free(w1);
	ck_assert_int_eq(weft_worker_post(w1, &m), WEFT_ECLOSED);
	atomic_store(&w0->stats.lost, 0); /* counted on purpose (teardown checks it) */
	teardown(e);
}
END_TEST

/* Deadlines hold while every poll returns events: a busy socket gets a
 * byte before each poll, and a 50 ms sleep and a 50 ms fd deadline must
 * still fire within 20 ms of their time. */
START_TEST(test_timers_under_io_load)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	int busy_peer, quiet_peer;
	weft_fd_t *busy = pair(w, &busy_peer);
	weft_fd_t *quiet = pair(w, &quiet_peer);
	uint32_t a = new_co(w), b = new_co(w);

	uint64_t deadline = weft_clock_ns() + 50 * MS;
	ck_assert_int_eq(weft_worker_wait_time(w, a, deadline), 0);
	uint32_t seq_a = weft_worker_co(w, a)->seq;
	uint32_t seq_b = wait_read(w, b, quiet, deadline);

	uint64_t woke[2] = {0, 0}, polls = 0;
	uint64_t end = deadline + 1000 * MS;
	while ((!woke[0] || !woke[1]) && weft_clock_ns() < end) {
		put(busy_peer);
		uint64_t events = w->stats.events;
		ck_assert_int_ge(weft_worker_poll(w, UINT64_MAX), 0);
		ck_assert_uint_gt(w->stats.events, events);
		polls++;
		drain(fd_of(busy));
		weft_wake_t wk;
		while (weft_worker_next(w, &wk)) {
			uint64_t now = weft_clock_ns();
			int i = wk.slot == a ? 0 : 1;
			ck_assert_uint_eq(wk.slot, i ? b : a);
			ck_assert_uint_eq(wk.seq, i ? seq_b : seq_a);
			ck_assert_int_eq(wk.code, WEFT_ETIMEOUT);
			ck_assert_uint_eq(woke[i], 0);
			woke[i] = now;
		}
	}
	ck_assert_uint_gt(polls, 10);
	for (int i = 0; i < 2; i++) {
		ck_assert_uint_ge(woke[i], deadline);
		ck_assert_uint_lt(woke[i] - deadline, 20 * MS);
	}
	check_quiet(w);

	weft_worker_co_free(w, a);
	weft_worker_co_free(w, b);
	shut(w, busy, busy_peer);
	shut(w, quiet, quiet_peer);
	teardown(e);
}
END_TEST

/* 1000 coroutines, each waiting on its own socketpair with a random
 * deadline (or none), random writes from the test, now and then a close
 * under a waiter (the record and the fd number come back for the next
 * pair).  Every wait must end exactly once, with the right seq: ready,
 * timed out (never early), or closed when we closed it.  Every fourth
 * coroutine is never written to and always has a deadline, so timeouts
 * happen whatever the machine's speed; the others without a deadline can
 * only end by data or a close, so readiness happens too. */
enum { NCO = 1000, WAITS = 5 };
#define SILENT(slot) ((slot) % 4 == 0) /* never written to: always times out */

typedef struct sco {
	uint32_t slot;
	weft_fd_t *r;
	int peer;
	uint32_t seq;
	uint64_t deadline;
	int waiting, closing;
	uint32_t started, ready, timeout, closed;
} sco_t;

static void stress_wait(weft_worker_t *w, sco_t *c, uint32_t *rnd)
{
	uint32_t x = xorshift(rnd);

	c->deadline = x % 8 == 0 && !SILENT(c->slot) ? UINT64_MAX
						     : weft_clock_ns() + (1 + x % 80) * MS;
	for (;;) {
		drain(fd_of(c->r));
		int rc = weft_worker_wait_io(w, c->slot, c->r, WEFT_READ, c->deadline);
		ck_assert_int_ge(rc, 0);
		if (rc == 0)
			break; /* 1: an edge was pending; read and try again */
	}
	c->seq = weft_worker_co(w, c->slot)->seq;
	c->waiting = 1;
	c->started++;
}

START_TEST(test_stress)
{
	static sco_t cos[NCO];
	/* Slow builds and Wine divide the count (WEFT_TEST_SCALE). */
	const uint32_t nco = (uint32_t)tu_scaled(NCO);
	ck_assert(tu_raise_nofile(2 * nco + 64));

	env_t e = setup();
	weft_worker_t *w = e.w;
	uint32_t rnd = 0x9e3779b9;
	uint64_t started = 0, ended = 0, late = 0;

	/* Slots are made while earlier ones wait with armed deadlines, so
	 * the table grows under them. */
	for (uint32_t i = 0; i < nco; i++) {
		sco_t *c = &cos[i];
		c->slot = new_co(w);
		ck_assert_uint_eq(c->slot, i);
		c->r = pair(w, &c->peer);
		stress_wait(w, c, &rnd);
		started++;
	}
	ck_assert_uint_eq(w->nalive, nco);

	uint64_t give_up = weft_clock_ns() + 10000 * MS;
	while (ended < (uint64_t)nco * WAITS) {
		ck_assert_uint_lt(weft_clock_ns(), give_up);
		ck_assert_int_ge(weft_worker_poll(w, 2 * MS), 0);
		weft_wake_t wk;
		while (weft_worker_next(w, &wk)) {
			uint64_t now = weft_clock_ns();
			ck_assert_uint_lt(wk.slot, nco);
			sco_t *c = &cos[wk.slot];
			ck_assert_int_eq(c->waiting, 1);
			ck_assert_uint_eq(wk.seq, c->seq);
			ck_assert_int_eq(weft_worker_co(w, c->slot)->state, WEFT_CO_RUNNING);
			c->waiting = 0;
			ended++;
			if (c->closing) {
				ck_assert_int_eq(wk.code, WEFT_ECLOSED);
				c->closed++;
				c->closing = 0;
				c->r = pair(w, &c->peer);
			} else if (wk.code == WEFT_ETIMEOUT) {
				ck_assert_uint_ne(c->deadline, UINT64_MAX);
				ck_assert_uint_ge(now, c->deadline);
				if (now - c->deadline > late)
					late = now - c->deadline;
				c->timeout++;
			} else {
				ck_assert_int_eq(wk.code, 0);
				c->ready++;
			}
			if (c->started < WAITS) {
				stress_wait(w, c, &rnd);
				started++;
			}
		}
		/* Nothing is queued now, so a close finds its waiter in the
		 * wait word and owes it WEFT_ECLOSED. */
		if (xorshift(&rnd) % 16 == 0) {
			sco_t *c = &cos[xorshift(&rnd) % nco];
			if (c->waiting && !c->closing) {
				weft_worker_close_fd(w, c->r);
				tu_close(c->peer);
				c->closing = 1;
			}
		}
		for (int k = 0; k < 24; k++) {
			sco_t *c = &cos[xorshift(&rnd) % nco];
			if (c->waiting && !c->closing && !SILENT(c->slot))
				put(c->peer);
		}
	}

	uint64_t ready = 0, timeout = 0, closed = 0;
	for (uint32_t i = 0; i < nco; i++) {
		sco_t *c = &cos[i];
		ck_assert_int_eq(c->waiting, 0);
		ck_assert_uint_eq(c->started, WAITS);
		ck_assert_uint_eq(c->ready + c->timeout + c->closed, WAITS);
		ready += c->ready;
		timeout += c->timeout;
		closed += c->closed;
	}
	ck_assert_uint_eq(started, (uint64_t)nco * WAITS);
	ck_assert_uint_eq(ready + timeout + closed, started);
	/* Both kinds of ending happen, whatever the machine's speed: the
	 * silent coroutines only time out, and readiness is the only end for
	 * a wait without a deadline that is not closed. */
	ck_assert_uint_gt(ready, 0);
	ck_assert_uint_gt(timeout, 0);
	for (uint32_t i = 0; i < nco; i++)
		if (SILENT(i))
			ck_assert_uint_eq(cos[i].ready, 0);
	ck_assert_uint_lt(late, 1000 * MS);
	ck_assert_uint_eq(w->stats.lost, 0);
	check_quiet(w);
	expect_nothing(w, 100); /* no wait ends twice */

	for (uint32_t i = 0; i < nco; i++) {
		shut(w, cos[i].r, cos[i].peer);
		weft_worker_co_free(w, cos[i].slot);
	}
	teardown(e);
}
END_TEST

/* Member numbers: a claim names its number and the runtime's count; every
 * claim agrees on the count while one is held; numbers are unique; states
 * without a number get the lowest free one above the count. */
START_TEST(test_member_numbers)
{
	weft_runtime_t *rt;
	ck_assert_int_eq(weft_runtime_new(-1, &rt), 0);
	ck_assert_int_eq(weft_runtime_members(rt), 0);
	ck_assert_int_eq(weft_runtime_claim(rt, 0, 2), -ERANGE);
	ck_assert_int_eq(weft_runtime_claim(rt, -1, 2), -ERANGE);
	ck_assert_int_eq(weft_runtime_claim(rt, 3, 2), -ERANGE);
	ck_assert_int_eq(weft_runtime_claim(rt, 1, 0), -ERANGE);
	ck_assert_int_eq(weft_runtime_claim(rt, 1, WEFT_MAX_WORKERS + 1), -ERANGE);
	ck_assert_int_eq(weft_runtime_claim(rt, 2, 2), 0);
	ck_assert_int_eq(weft_runtime_members(rt), 2);
	ck_assert_int_eq(weft_runtime_claim(rt, 2, 2), -EEXIST);
	ck_assert_int_eq(weft_runtime_claim(rt, 1, 3), -EINVAL);
	ck_assert_int_eq(weft_runtime_claim_any(rt), 3); /* above the count */
	ck_assert_int_eq(weft_runtime_members(rt), 3);
	ck_assert_int_eq(weft_runtime_claim(rt, 1, 2), 0);
	ck_assert_int_eq(weft_runtime_claim_any(rt), 4);
	weft_runtime_release(rt, 3, 0);
	ck_assert_int_eq(weft_runtime_members(rt), 4);
	ck_assert_int_eq(weft_runtime_claim_any(rt), 3);
	weft_runtime_release(rt, 1, 1);
	weft_runtime_release(rt, 2, 1);
	weft_runtime_release(rt, 3, 0);
	weft_runtime_release(rt, 4, 0);
	/* no claim holds a count any more: another count may be declared */
	ck_assert_int_eq(weft_runtime_members(rt), 0);
	ck_assert_int_eq(weft_runtime_claim_any(rt), 1);
	ck_assert_int_eq(weft_runtime_claim(rt, 1, 5), -EEXIST);
	ck_assert_int_eq(weft_runtime_claim(rt, 5, 5), 0);
	ck_assert_int_eq(weft_runtime_members(rt), 5);
	weft_runtime_release(rt, 5, 1);
	weft_runtime_release(rt, 1, 0);
	/* every number taken: none is left for a claim without one */
	for (int i = 1; i <= WEFT_MAX_WORKERS; i++)
		ck_assert_int_eq(weft_runtime_claim_any(rt), i);
	ck_assert_int_eq(weft_runtime_claim_any(rt), -EUSERS);
	ck_assert_int_eq(weft_runtime_members(rt), WEFT_MAX_WORKERS);
	weft_runtime_free(rt);
}
END_TEST

/* A runtime takes WEFT_MAX_WORKERS workers; the next is refused with
 * -EUSERS (not an error about descriptors). */
START_TEST(test_worker_cap)
{
	tu_raise_nofile(4096);
	weft_runtime_t *rt;
	ck_assert_int_eq(weft_runtime_new(-1, &rt), 0);
	static weft_worker_t *ws[WEFT_MAX_WORKERS];
	for (int i = 0; i < WEFT_MAX_WORKERS; i++)
		ck_assert_int_eq(weft_worker_new(rt, &ws[i]), 0);
	weft_worker_t *extra;
	ck_assert_int_eq(weft_worker_new(rt, &extra), -EUSERS);
	weft_runtime_t *other;
	ck_assert_int_eq(weft_runtime_new(-1, &other), 0);
	ck_assert_int_eq(weft_worker_new(other, &extra), 0);
	ck_assert_int_eq(weft_worker_move(extra, rt), -EUSERS);
	ck_assert_ptr_eq(extra->rt, other); /* still where it was */
	weft_worker_free(extra);
	for (int i = 0; i < WEFT_MAX_WORKERS; i++)
		weft_worker_free(ws[i]);
	weft_runtime_free(other);
	weft_runtime_free(rt);
}
END_TEST

/* Totals keep what freed workers did, and a worker that moves counts in
 * each runtime for what it did there. */
START_TEST(test_totals_keep_freed)
{
	weft_runtime_t *rt, *rt2;
	ck_assert_int_eq(weft_runtime_new(-1, &rt), 0);
	ck_assert_int_eq(weft_runtime_new(-1, &rt2), 0);
	weft_worker_t *a, *b, *c;
	ck_assert_int_eq(weft_worker_new(rt, &a), 0);
	ck_assert_int_eq(weft_worker_new(rt, &b), 0);
	ck_assert_int_eq(weft_worker_new(rt2, &c), 0);
	WEFT_STAT_ADD(a, jobs_run, 20);
	WEFT_STAT_ADD(b, jobs_run, 30);
	WEFT_STAT_ADD(c, jobs_run, 7);
	uint64_t sum[WEFT_NSTATS];
	ck_assert_int_eq(weft_runtime_stats(rt, sum), 2);
	ck_assert_uint_eq(sum[10], 50); /* jobs_run */
	weft_worker_free(b);
	ck_assert_int_eq(weft_runtime_stats(rt, sum), 1);
	ck_assert_uint_eq(sum[10], 50);
	ck_assert_int_eq(weft_worker_move(c, rt), 0);
	WEFT_STAT_ADD(c, jobs_run, 1);
	ck_assert_int_eq(weft_runtime_stats(rt, sum), 2);
	ck_assert_uint_eq(sum[10], 51);
	ck_assert_int_eq(weft_runtime_stats(rt2, sum), 0);
	ck_assert_uint_eq(sum[10], 7);
	ck_assert_uint_eq(WEFT_STAT(c, jobs_run), 8); /* its own counter goes on */
	weft_worker_free(c);
	weft_worker_free(a);
	ck_assert_int_eq(weft_runtime_stats(rt, sum), 0);
	ck_assert_uint_eq(sum[10], 51);
	weft_runtime_free(rt2);
	weft_runtime_free(rt);
}
END_TEST

static Suite *worker_suite(void)
{
	Suite *s = suite_create("worker");
	TCase *tc = tcase_create("core");
	TCase *st = tcase_create("threads");
	/* These count on readiness being reported with nobody waiting (an
	 * edge remembered in the wait word).  A poller without edges (IOCP)
	 * is armed only for the directions waited in, and a wait there
	 * learns of readiness through its own arm instead. */
	int edges = (weft_poller_caps() & WEFT_POLLER_EDGES) != 0;

	tcase_add_test(tc, test_slot_reuse);
	tcase_add_test(tc, test_growth_keeps_timers);
	if (edges)
		tcase_add_test(tc, test_io_ready);
	if (edges)
		tcase_add_test(tc, test_io_edge_before_wait);
	tcase_add_test(tc, test_io_deadline);
	tcase_add_test(tc, test_close_while_waiting);
	/* Registers a socket edge-triggered, and dup()s one: POSIX. */
	if (weft_poller_caps() & WEFT_POLLER_EDGES)
		tcase_add_test(tc, test_stale_events);
	tcase_add_test(tc, test_wake_io_wait);
	tcase_add_test(tc, test_wait_time);
	tcase_add_test(tc, test_callback_timers);
	tcase_add_test(tc, test_yield);
	tcase_add_test(tc, test_wake_suspended);
	tcase_add_test(tc, test_msg_io);
	tcase_add_test(tc, test_events_reach_owner);
	tcase_add_test(tc, test_reuse_keeps_other_waiter);
	tcase_add_test(tc, test_spin_rule);
	tcase_add_test(tc, test_post_failures);
	if (edges)
		tcase_add_test(tc, test_timers_under_io_load);
	tcase_add_test(tc, test_member_numbers);
	tcase_add_test(tc, test_worker_cap);
	tcase_add_test(tc, test_totals_keep_freed);
	suite_add_tcase(s, tc);
	/* Explicit, so the runs fit even under Check's 4 s default with
	 * sanitizers; a lost interruption or wake-up fails here, not hangs. */
	tcase_set_timeout(st, 15);
	tcase_add_test(st, test_post_interrupts_poll);
	tcase_add_test(st, test_stress);
	suite_add_tcase(s, st);
	return s;
}

WEFT_CHECK_MAIN(worker_suite)
