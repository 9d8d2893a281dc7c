/* Channels: capacities 1..n, FIFO send/recv with the data handed over;
 * -EAGAIN without a worker; waiters registered through a worker and woken
 * through its inbox (receivers by a send, senders by a recv); close wakes
 * everyone, recv drains then says WEFT_ECLOSED; cancel withdraws a waiter;
 * named channels live as long as the runtime; and a two-thread stress run
 * with exact accounting. */
#include "channel.h"

#include <errno.h>
#include "thread.h"
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "checkutil.h"
#include "clock.h"
#include "error.h"

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

static void teardown(env_t e)
{
	weft_wake_t wk;

	ck_assert_int_eq(weft_worker_poll(e.w, 0), 0);
	ck_assert_int_eq(weft_worker_next(e.w, &wk), 0); /* no stray wake-up */
	ck_assert_uint_eq(e.w->nalive, 0);
	weft_worker_free(e.w);
	weft_runtime_free(e.rt);
}

/* A weft_malloc'd message "m<n>", the way the binding hands one over. */
static char *msg(unsigned n, size_t *len)
{
	char buf[32];
	int k = snprintf(buf, sizeof buf, "m%u", n);
	char *p = weft_malloc((size_t)k);
	ck_assert_ptr_nonnull(p);
	memcpy(p, buf, (size_t)k);
	*len = (size_t)k;
	return p;
}

static void send_ok(weft_chan_t *c, unsigned n)
{
	size_t len;
	char *p = msg(n, &len);
	ck_assert_int_eq(weft_chan_send(c, p, len, NULL), 0);
}

/* Receive message n and free it: the receiver owns it. */
static void recv_ok(weft_chan_t *c, unsigned n)
{
	char buf[32], *p = NULL;
	size_t len = 0;
	int k = snprintf(buf, sizeof buf, "m%u", n);

	ck_assert_int_eq(weft_chan_recv(c, &p, &len, NULL), 0);
	ck_assert_ptr_nonnull(p);
	ck_assert_uint_eq(len, (size_t)k);
	ck_assert_int_eq(memcmp(p, buf, len), 0);
	weft_free(p);
}

static void recv_fails(weft_chan_t *c, int rc)
{
	char *p = (char *)"untouched";
	size_t len = 99;

	ck_assert_int_eq(weft_chan_recv(c, &p, &len, NULL), rc);
	ck_assert_str_eq(p, "untouched");
	ck_assert_uint_eq(len, 99);
}

static uint32_t new_co(weft_worker_t *w)
{
	int64_t slot = weft_worker_co_new(w);

	ck_assert_int_ge(slot, 0);
	return (uint32_t)slot;
}

/* Begin an outside wait for slot, as the binding does before it asks the
 * channel, and fill the waiter node wt for it; wt. */
static weft_chan_waiter_t *begin(weft_worker_t *w, uint32_t slot, weft_chan_waiter_t *wt)
{
	wt->w = w;
	wt->slot = slot;
	wt->seq = weft_worker_wait_ext_until(w, slot, UINT64_MAX);
	return wt;
}

/* Take what the inbox holds; the wake-ups now queued. */
static int poll_now(weft_worker_t *w)
{
	int n = weft_worker_poll(w, 0);
	ck_assert_int_ge(n, 0);
	return n;
}

static void expect_wake(weft_worker_t *w, uint32_t slot, uint32_t seq)
{
	weft_wake_t wk;

	ck_assert_int_eq(weft_worker_next(w, &wk), 1);
	ck_assert_uint_eq(wk.slot, slot);
	ck_assert_uint_eq(wk.seq, seq);
	ck_assert_int_eq(wk.code, 0);
	ck_assert_int_eq(weft_worker_co(w, slot)->state, WEFT_CO_RUNNING);
}

static void expect_no_wake(weft_worker_t *w)
{
	weft_wake_t wk;

	poll_now(w);
	ck_assert_int_eq(weft_worker_next(w, &wk), 0);
}

/* ------------------------------------------------------------------ */

START_TEST(test_new_capacity)
{
	weft_chan_t *c = (weft_chan_t *)&c;

	ck_assert_int_lt(weft_chan_new(0, &c), 0);
	ck_assert_ptr_eq(c, (weft_chan_t *)&c); /* not written on failure */
	for (size_t cap = 1; cap <= 5; cap++) {
		ck_assert_int_eq(weft_chan_new(cap, &c), 0);
		ck_assert_uint_eq(weft_chan_capacity(c), cap);
		ck_assert_uint_eq(weft_chan_count(c), 0);
		weft_chan_unref(c);
	}
}
END_TEST

/* Fill to capacity, one more is refused, drain in order; then go round
 * the ring several times with it partly full. */
START_TEST(test_fifo)
{
	for (size_t cap = 1; cap <= 8; cap++) {
		weft_chan_t *c;
		unsigned in = 0, out = 0;

		ck_assert_int_eq(weft_chan_new(cap, &c), 0);
		recv_fails(c, -EAGAIN);
		for (size_t i = 0; i < cap; i++) {
			send_ok(c, in++);
			ck_assert_uint_eq(weft_chan_count(c), i + 1);
		}
		/* Full: data stays the caller's. */
		size_t len;
		char *p = msg(999, &len);
		ck_assert_int_eq(weft_chan_send(c, p, len, NULL), -EAGAIN);
		ck_assert_uint_eq(weft_chan_count(c), cap);
		while (out < in)
			recv_ok(c, out++);
		recv_fails(c, -EAGAIN);
		ck_assert_int_eq(weft_chan_send(c, p, len, NULL), 0);
		p = NULL;
		recv_ok(c, 999);

		for (int round = 0; round < 50; round++) {
			size_t k = 1 + (size_t)round % cap;
			for (size_t i = 0; i < k; i++)
				send_ok(c, in++);
			for (size_t i = 0; i < k; i++)
				recv_ok(c, out++);
			ck_assert_uint_eq(weft_chan_count(c), 0);
		}
		/* Messages left in it are freed with the channel (ASan). */
		send_ok(c, in++);
		weft_chan_unref(c);
	}
}
END_TEST

/* A reference keeps the channel and its messages alive. */
START_TEST(test_refs)
{
	weft_chan_t *c;

	ck_assert_int_eq(weft_chan_new(2, &c), 0);
	ck_assert_ptr_eq(weft_chan_ref(c), c);
	send_ok(c, 1);
	weft_chan_unref(c);
	ck_assert_uint_eq(weft_chan_count(c), 1);
	recv_ok(c, 1);
	weft_chan_unref(c);
}
END_TEST

/* Empty: a receiver registers and is woken (code 0) by the next send;
 * waiters are served oldest first, one per message. */
START_TEST(test_recv_wait)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_chan_t *c;
	char *p;
	size_t len;

	ck_assert_int_eq(weft_chan_new(4, &c), 0);
	weft_chan_waiter_t na = WEFT_CHAN_WAITER_INIT, nb = WEFT_CHAN_WAITER_INIT;
	uint32_t a = new_co(w), b = new_co(w);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(w, a, &na)), -EAGAIN);
	uint32_t sa = na.seq;
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(w, b, &nb)), -EAGAIN);
	uint32_t sb = nb.seq;
	expect_no_wake(w);
	ck_assert_int_eq(weft_worker_co(w, a)->state, WEFT_CO_WAIT_EXT);
	/* A node still registered cannot be registered again. */
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, &na), -EBUSY);

	send_ok(c, 1);
	ck_assert_int_eq(poll_now(w), 1);
	expect_wake(w, a, sa);
	expect_no_wake(w); /* one message, one receiver woken */
	recv_ok(c, 1);     /* a tries again */

	send_ok(c, 2);
	ck_assert_int_eq(poll_now(w), 1);
	expect_wake(w, b, sb);
	recv_ok(c, 2);
	expect_no_wake(w);

	weft_worker_co_free(w, a);
	weft_worker_co_free(w, b);
	weft_chan_unref(c);
	teardown(e);
}
END_TEST

/* Full: a sender registers and is woken when a recv makes room. */
START_TEST(test_send_wait)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_chan_t *c;

	ck_assert_int_eq(weft_chan_new(1, &c), 0);
	send_ok(c, 1);
	weft_chan_waiter_t na = WEFT_CHAN_WAITER_INIT;
	uint32_t a = new_co(w);
	size_t len;
	char *p = msg(2, &len);
	ck_assert_int_eq(weft_chan_send(c, p, len, begin(w, a, &na)), -EAGAIN);
	uint32_t sa = na.seq;
	expect_no_wake(w);

	recv_ok(c, 1);
	ck_assert_int_eq(poll_now(w), 1);
	expect_wake(w, a, sa);
	ck_assert_int_eq(weft_chan_send(c, p, len, NULL), 0); /* again */
	recv_ok(c, 2);
	expect_no_wake(w);

	weft_worker_co_free(w, a);
	weft_chan_unref(c);
	teardown(e);
}
END_TEST

/* Close wakes every waiter, senders and receivers; queued messages are
 * still received, then WEFT_ECLOSED; sends fail and leave data alone. */
START_TEST(test_close)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_chan_t *empty, *full;
	char *p;
	size_t len;

	ck_assert_int_eq(weft_chan_new(2, &empty), 0);
	ck_assert_int_eq(weft_chan_new(2, &full), 0);
	send_ok(full, 1);
	send_ok(full, 2);

	enum { NR = 3 };
	weft_chan_waiter_t rn[NR] = {0}, sn[2] = {0};
	uint32_t r[NR], rs[NR];
	for (int i = 0; i < NR; i++) {
		r[i] = new_co(w);
		ck_assert_int_eq(weft_chan_recv(empty, &p, &len, begin(w, r[i], &rn[i])), -EAGAIN);
		rs[i] = rn[i].seq;
	}
	uint32_t s[2], ss[2];
	char *data[2];
	for (int i = 0; i < 2; i++) {
		s[i] = new_co(w);
		data[i] = msg(10 + (unsigned)i, &len);
		ck_assert_int_eq(weft_chan_send(full, data[i], len, begin(w, s[i], &sn[i])),
		                 -EAGAIN);
		ss[i] = sn[i].seq;
	}
	expect_no_wake(w);

	weft_chan_close(empty);
	ck_assert_int_eq(poll_now(w), NR);
	for (int i = 0; i < NR; i++)
		expect_wake(w, r[i], rs[i]);
	for (int i = 0; i < NR; i++)
		recv_fails(empty, WEFT_ECLOSED);

	weft_chan_close(full);
	weft_chan_close(full); /* idempotent */
	ck_assert_int_eq(poll_now(w), 2);
	for (int i = 0; i < 2; i++) {
		expect_wake(w, s[i], ss[i]);
		ck_assert_int_eq(weft_chan_send(full, data[i], len, NULL), WEFT_ECLOSED);
		weft_free(data[i]); /* still ours */
	}
	ck_assert_uint_eq(weft_chan_count(full), 2);
	recv_ok(full, 1);
	recv_ok(full, 2);
	recv_fails(full, WEFT_ECLOSED);
	recv_fails(full, WEFT_ECLOSED);

	/* Closed: no waiting, even with a worker given. */
	ck_assert_int_eq(weft_chan_recv(full, &p, &len, begin(w, r[0], &rn[0])), WEFT_ECLOSED);
	weft_worker_wait_abort(w, r[0]);
	ck_assert_int_eq(weft_chan_send(empty, data[0], 0, &rn[0]), WEFT_ECLOSED);
	weft_chan_stats_t st;
	weft_chan_stats(empty, &st);
	ck_assert_uint_eq(st.receivers + st.senders, 0);
	weft_chan_stats(full, &st);
	ck_assert_uint_eq(st.receivers + st.senders, 0);
	expect_no_wake(w);

	for (int i = 0; i < NR; i++)
		weft_worker_co_free(w, r[i]);
	for (int i = 0; i < 2; i++)
		weft_worker_co_free(w, s[i]);
	weft_chan_unref(empty);
	weft_chan_unref(full);
	teardown(e);
}
END_TEST

/* A waiter that gives up is withdrawn: the next send wakes the one after
 * it, or nobody. */
START_TEST(test_cancel)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_chan_t *c;
	char *p;
	size_t len;

	ck_assert_int_eq(weft_chan_new(1, &c), 0);
	weft_chan_waiter_t na = WEFT_CHAN_WAITER_INIT, nb = WEFT_CHAN_WAITER_INIT;
	uint32_t a = new_co(w), b = new_co(w);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(w, a, &na)), -EAGAIN);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(w, b, &nb)), -EAGAIN);
	uint32_t sb = nb.seq;

	weft_chan_cancel(c, &na);
	weft_chan_cancel(c, &na); /* idle now: nothing happens */
	weft_worker_wait_abort(w, a);
	send_ok(c, 1);
	ck_assert_int_eq(poll_now(w), 1);
	expect_wake(w, b, sb); /* not a */
	recv_ok(c, 1);

	/* The only waiter withdrawn: a send wakes nobody. */
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(w, a, &na)), -EAGAIN);
	weft_chan_cancel(c, &na);
	weft_worker_wait_abort(w, a);
	send_ok(c, 2);
	expect_no_wake(w);

	/* A sender withdrawn likewise: the recv that makes room wakes
	 * nobody. */
	char *d = msg(3, &len);
	ck_assert_int_eq(weft_chan_send(c, d, len, begin(w, a, &na)), -EAGAIN);
	weft_chan_cancel(c, &na);
	weft_worker_wait_abort(w, a);
	recv_ok(c, 2);
	expect_no_wake(w);
	weft_free(d);

	weft_worker_co_free(w, a);
	weft_worker_co_free(w, b);
	weft_chan_unref(c);
	teardown(e);
}
END_TEST

/* Woken, but the deadline won the race: the wake-up is passed on to the
 * next receiver, so the message is not stranded. */
START_TEST(test_cancel_after_wake)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_chan_t *c;
	char *p;
	size_t len;

	ck_assert_int_eq(weft_chan_new(2, &c), 0);
	weft_chan_waiter_t na = WEFT_CHAN_WAITER_INIT, nb = WEFT_CHAN_WAITER_INIT;
	uint32_t a = new_co(w), b = new_co(w);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(w, a, &na)), -EAGAIN);
	uint32_t sa = na.seq;
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(w, b, &nb)), -EAGAIN);
	uint32_t sb = nb.seq;

	send_ok(c, 1); /* wakes a (in the inbox) */
	weft_chan_cancel(c, &na);
	ck_assert_int_eq(weft_worker_wake(w, a, sa, WEFT_ETIMEOUT), 1);
	/* a's wake-up from the channel finds one already queued: only b's
	 * is new. */
	ck_assert_int_eq(poll_now(w), 1);
	weft_wake_t wk;
	ck_assert_int_eq(weft_worker_next(w, &wk), 1);
	ck_assert_uint_eq(wk.slot, a);
	ck_assert_int_eq(wk.code, WEFT_ETIMEOUT);
	expect_wake(w, b, sb);
	recv_ok(c, 1);
	expect_no_wake(w);

	weft_worker_co_free(w, a);
	weft_worker_co_free(w, b);
	weft_chan_unref(c);
	teardown(e);
}
END_TEST

/* Many waiters that all give up: each withdrawal is O(1), so 20 000 of
 * them cost 20 000 looks at a waiter (`visits`), not 2 * 10^8 as with a
 * list that is searched; and the accounting is exact: every waiter ends
 * exactly once, by its deadline, and the messages are all still there. */
enum { NW = 20000, NK = 100 };

typedef struct crowd {
	weft_chan_waiter_t *n;
	uint32_t *slot;
} crowd_t;

/* NW receivers of c on w, registered in order. */
static crowd_t crowd_recv(weft_worker_t *w, weft_chan_t *c)
{
	crowd_t k = {calloc(NW, sizeof *k.n), calloc(NW, sizeof *k.slot)};
	char *p;
	size_t len;

	ck_assert_ptr_nonnull(k.n);
	ck_assert_ptr_nonnull(k.slot);
	for (unsigned i = 0; i < NW; i++) {
		k.slot[i] = new_co(w);
		ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(w, k.slot[i], &k.n[i])),
		                 -EAGAIN);
	}
	return k;
}

/* Waiter i's deadline fires (its wake-up, code WEFT_ETIMEOUT, is queued
 * before anything the channel posted it) and it withdraws, as the binding
 * does. */
static void time_out(weft_worker_t *w, weft_chan_t *c, crowd_t k, unsigned i)
{
	ck_assert_int_eq(weft_worker_wake(w, k.slot[i], k.n[i].seq, WEFT_ETIMEOUT), 1);
	weft_chan_cancel(c, &k.n[i]);
	ck_assert_int_eq(atomic_load(&k.n[i]._state), WEFT_CHAN_IDLE);
}

/* Every waiter of k was woken exactly once, by its deadline; the
 * channel's wake-ups, still in the inbox, find the waits over. */
static void each_timed_out_once(weft_worker_t *w, crowd_t k)
{
	unsigned char *seen = calloc(NW, 1);
	uint32_t *index = calloc(w->_ncos, sizeof *index);
	weft_wake_t wk;
	unsigned n = 0;

	ck_assert_ptr_nonnull(seen);
	ck_assert_ptr_nonnull(index);
	for (unsigned i = 0; i < NW; i++)
		index[k.slot[i]] = i;
	poll_now(w);
	while (weft_worker_next(w, &wk) == 1) {
		ck_assert_int_eq(wk.code, WEFT_ETIMEOUT);
		unsigned i = index[wk.slot];
		ck_assert_uint_eq(k.slot[i], wk.slot);
		ck_assert_uint_eq(wk.seq, k.n[i].seq);
		ck_assert_int_eq(seen[i], 0);
		seen[i] = 1;
		n++;
	}
	ck_assert_uint_eq(n, NW);
	expect_no_wake(w);
	for (unsigned i = 0; i < NW; i++)
		weft_worker_co_free(w, k.slot[i]);
	free(seen);
	free(index);
	free(k.n);
	free(k.slot);
}

static void expect_stats(weft_chan_t *c, uint64_t visits, size_t senders, size_t receivers)
{
	weft_chan_stats_t st;

	weft_chan_stats(c, &st);
	ck_assert_uint_eq(st.visits, visits);
	ck_assert_uint_eq(st.senders, senders);
	ck_assert_uint_eq(st.receivers, receivers);
	ck_assert_uint_eq(st.nomem, 0);
	ck_assert_uint_eq(st.dead, 0);
}

/* Newest first, the worst order for a searched array: NK were woken by
 * messages first and withdraw last, when nobody is left to take their
 * wake-ups. */
START_TEST(test_cancel_many_newest_first)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_chan_t *c;

	ck_assert_int_eq(weft_chan_new(NK, &c), 0);
	crowd_t k = crowd_recv(w, c);
	expect_stats(c, 0, 0, NW);
	for (unsigned i = 0; i < NK; i++)
		send_ok(c, i);
	expect_stats(c, NK, 0, NW - NK);
	for (unsigned i = NW; i-- > 0;)
		time_out(w, c, k, i);
	expect_stats(c, NK + NW, 0, 0);
	each_timed_out_once(w, k);
	ck_assert_uint_eq(weft_chan_count(c), NK);
	for (unsigned i = 0; i < NK; i++)
		recv_ok(c, i);
	weft_chan_unref(c);
	teardown(e);
}
END_TEST

/* Oldest first: each of the NK woken waiters passes its wake-up on to the
 * oldest one still waiting, which passes it on in turn when it gives up,
 * and so on: 2 visits per withdrawal while anyone waits, then 1. */
START_TEST(test_cancel_many_oldest_first)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_chan_t *c;

	ck_assert_int_eq(weft_chan_new(NK, &c), 0);
	crowd_t k = crowd_recv(w, c);
	for (unsigned i = 0; i < NK; i++)
		send_ok(c, i);
	for (unsigned i = 0; i < NW; i++) {
		ck_assert_int_eq(atomic_load(&k.n[i]._state), WEFT_CHAN_WOKEN);
		time_out(w, c, k, i);
	}
	expect_stats(c, NK + 2 * (NW - NK) + NK, 0, 0);
	each_timed_out_once(w, k);
	ck_assert_uint_eq(weft_chan_count(c), NK);
	for (unsigned i = 0; i < NK; i++)
		recv_ok(c, i);
	weft_chan_unref(c);
	teardown(e);
}
END_TEST

/* Senders of a full channel, withdrawn every other one, then the rest:
 * at most 2 visits per withdrawal; none of the data was taken. */
START_TEST(test_cancel_many_senders)
{
	env_t e = setup();
	weft_worker_t *w = e.w;
	weft_chan_t *c;
	char dummy[1];
	crowd_t k = {calloc(NW, sizeof *k.n), calloc(NW, sizeof *k.slot)};

	ck_assert_ptr_nonnull(k.n);
	ck_assert_ptr_nonnull(k.slot);
	ck_assert_int_eq(weft_chan_new(NK, &c), 0);
	for (unsigned i = 0; i < NK; i++)
		send_ok(c, i);
	for (unsigned i = 0; i < NW; i++) {
		k.slot[i] = new_co(w);
		ck_assert_int_eq(weft_chan_send(c, dummy, 1, begin(w, k.slot[i], &k.n[i])),
		                 -EAGAIN);
	}
	for (unsigned i = 0; i < NK; i++)
		recv_ok(c, i); /* room: the oldest NK senders are woken */
	for (unsigned i = 0; i < NW; i += 2)
		time_out(w, c, k, i);
	for (unsigned i = 1; i < NW; i += 2)
		time_out(w, c, k, i);
	weft_chan_stats_t st;
	weft_chan_stats(c, &st);
	ck_assert_uint_le(st.visits, NK + 2 * NW);
	ck_assert_uint_ge(st.visits, NK + NW);
	ck_assert_uint_eq(st.senders, 0);
	ck_assert_uint_eq(st.receivers, 0);
	each_timed_out_once(w, k);
	recv_fails(c, -EAGAIN); /* no sender's data got in */
	weft_chan_unref(c);
	teardown(e);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Waiters whose worker is gone, or whose wake-up cannot be posted */

typedef struct env2 {
	weft_runtime_t *rt;
	weft_worker_t *dead, *live;
} env2_t;

static env2_t setup2(void)
{
	env2_t e;

	ck_assert_int_eq(weft_runtime_new(-1, &e.rt), 0);
	ck_assert_int_eq(weft_worker_new(e.rt, &e.dead), 0);
	ck_assert_int_eq(weft_worker_new(e.rt, &e.live), 0);
	return e;
}

static void teardown2(env2_t e)
{
	env_t one = {e.rt, e.live};
	teardown(one);
}

static void expect_failures(weft_chan_t *c, uint64_t nomem, uint64_t dead, size_t senders,
                            size_t receivers)
{
	weft_chan_stats_t st;

	weft_chan_stats(c, &st);
	ck_assert_uint_eq(st.nomem, nomem);
	ck_assert_uint_eq(st.dead, dead);
	ck_assert_uint_eq(st.senders, senders);
	ck_assert_uint_eq(st.receivers, receivers);
}

/* A receiver whose worker was freed is dropped, and the message's wake-up
 * goes to the live receiver behind it. */
START_TEST(test_dead_receiver)
{
	env2_t e = setup2();
	weft_chan_t *c;
	weft_chan_waiter_t nd[2] = {0}, nl = WEFT_CHAN_WAITER_INIT;
	char *p;
	size_t len;

	ck_assert_int_eq(weft_chan_new(2, &c), 0);
	for (int i = 0; i < 2; i++) {
		uint32_t d = new_co(e.dead);
		ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(e.dead, d, &nd[i])), -EAGAIN);
	}
	weft_worker_free(e.dead);
	uint32_t l = new_co(e.live);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(e.live, l, &nl)), -EAGAIN);
	expect_failures(c, 0, 0, 0, 3);

	send_ok(c, 1);
	ck_assert_int_eq(poll_now(e.live), 1);
	expect_wake(e.live, l, nl.seq);
	expect_failures(c, 0, 2, 0, 0); /* both dead ones dropped on the way */
	ck_assert_int_eq(atomic_load(&nd[0]._state), WEFT_CHAN_IDLE);
	ck_assert_int_eq(atomic_load(&nd[1]._state), WEFT_CHAN_IDLE);
	recv_ok(c, 1);

	/* A dropped waiter has no wake-up to pass on: cancelling it wakes
	 * nobody. */
	uint32_t l2 = new_co(e.live);
	weft_chan_waiter_t nl2 = WEFT_CHAN_WAITER_INIT;
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(e.live, l2, &nl2)), -EAGAIN);
	weft_chan_cancel(c, &nd[0]);
	expect_no_wake(e.live);

	/* With only dead receivers the message waits in the channel for
	 * the next one. */
	weft_chan_cancel(c, &nl2);
	weft_worker_wait_abort(e.live, l2);
	send_ok(c, 2);
	expect_no_wake(e.live);
	recv_ok(c, 2);

	weft_worker_co_free(e.live, l);
	weft_worker_co_free(e.live, l2);
	weft_chan_unref(c);
	teardown2(e);
}
END_TEST

/* The same for senders waiting for room. */
START_TEST(test_dead_sender)
{
	env2_t e = setup2();
	weft_chan_t *c;
	weft_chan_waiter_t nd = WEFT_CHAN_WAITER_INIT, nl = WEFT_CHAN_WAITER_INIT;
	size_t len;

	ck_assert_int_eq(weft_chan_new(1, &c), 0);
	send_ok(c, 1);
	char *dd = msg(2, &len), *dl = msg(3, &len);
	uint32_t d = new_co(e.dead);
	ck_assert_int_eq(weft_chan_send(c, dd, len, begin(e.dead, d, &nd)), -EAGAIN);
	weft_worker_free(e.dead);
	uint32_t l = new_co(e.live);
	ck_assert_int_eq(weft_chan_send(c, dl, len, begin(e.live, l, &nl)), -EAGAIN);

	recv_ok(c, 1);
	ck_assert_int_eq(poll_now(e.live), 1);
	expect_wake(e.live, l, nl.seq);
	expect_failures(c, 0, 1, 0, 0);
	ck_assert_int_eq(weft_chan_send(c, dl, len, NULL), 0);
	recv_ok(c, 3);
	weft_free(dd); /* the dead sender's, never queued */

	weft_worker_co_free(e.live, l);
	weft_chan_unref(c);
	teardown2(e);
}
END_TEST

/* Close wakes the live waiters and drops the dead ones. */
START_TEST(test_dead_close)
{
	env2_t e = setup2();
	weft_chan_t *c;
	weft_chan_waiter_t nd = WEFT_CHAN_WAITER_INIT, nl = WEFT_CHAN_WAITER_INIT;
	char *p;
	size_t len;

	ck_assert_int_eq(weft_chan_new(1, &c), 0);
	uint32_t d = new_co(e.dead);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(e.dead, d, &nd)), -EAGAIN);
	weft_worker_free(e.dead);
	uint32_t l = new_co(e.live);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(e.live, l, &nl)), -EAGAIN);
	weft_chan_close(c);
	ck_assert_int_eq(poll_now(e.live), 1);
	expect_wake(e.live, l, nl.seq);
	expect_failures(c, 0, 1, 0, 0);
	recv_fails(c, WEFT_ECLOSED);

	weft_worker_co_free(e.live, l);
	weft_chan_unref(c);
	teardown2(e);
}
END_TEST

/* The post to the first receiver's worker fails for want of memory (its
 * inbox has to grow for it, and that allocation fails): the second
 * receiver is woken instead, the first stays registered, and the next
 * message wakes it. */
START_TEST(test_nomem_receiver)
{
	env2_t e = setup2();
	weft_worker_t *a_w = e.dead; /* alive here: its inbox is still empty */
	weft_chan_t *c;
	weft_chan_waiter_t na = WEFT_CHAN_WAITER_INIT, nb = WEFT_CHAN_WAITER_INIT;
	char *p;
	size_t len;

	ck_assert_int_eq(weft_chan_new(2, &c), 0);
	uint32_t a = new_co(a_w), b = new_co(e.live);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(a_w, a, &na)), -EAGAIN);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(e.live, b, &nb)), -EAGAIN);

	char *m1 = msg(1, &len);
	weft_alloc_fail_after(1); /* a's inbox cannot grow */
	ck_assert_int_eq(weft_chan_send(c, m1, len, NULL), 0);
	weft_alloc_fail_after(0);
	ck_assert_int_eq(poll_now(e.live), 1);
	expect_wake(e.live, b, nb.seq);
	expect_no_wake(a_w);
	expect_failures(c, 1, 0, 0, 1);
	ck_assert_int_eq(atomic_load(&na._state), WEFT_CHAN_WAITING);
	recv_ok(c, 1);

	send_ok(c, 2); /* a is tried again, and woken */
	expect_failures(c, 1, 0, 0, 0);
	ck_assert_int_eq(poll_now(a_w), 1);
	expect_wake(a_w, a, na.seq);
	recv_ok(c, 2);

	weft_worker_co_free(a_w, a);
	weft_worker_co_free(e.live, b);
	weft_chan_unref(c);
	ck_assert_int_eq(weft_worker_poll(a_w, 0), 0);
	ck_assert_uint_eq(a_w->nalive, 0);
	weft_worker_free(a_w);
	teardown2(e);
}
END_TEST

/* A sender whose post failed for want of memory, then gives up at its
 * deadline: it is withdrawn and wakes nobody (the next sender had its
 * wake-up already). */
START_TEST(test_nomem_sender_times_out)
{
	env2_t e = setup2();
	weft_worker_t *a_w = e.dead;
	weft_chan_t *c;
	weft_chan_waiter_t na = WEFT_CHAN_WAITER_INIT, nb = WEFT_CHAN_WAITER_INIT;
	size_t len;

	ck_assert_int_eq(weft_chan_new(1, &c), 0);
	send_ok(c, 1);
	char *da = msg(2, &len), *db = msg(3, &len);
	uint32_t a = new_co(a_w), b = new_co(e.live);
	ck_assert_int_eq(weft_chan_send(c, da, len, begin(a_w, a, &na)), -EAGAIN);
	ck_assert_int_eq(weft_chan_send(c, db, len, begin(e.live, b, &nb)), -EAGAIN);

	char *p;
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, NULL), 0);
	weft_free(p);
	/* That recv woke a.  Again, with a's post failing: */
	ck_assert_int_eq(poll_now(a_w), 1);
	expect_wake(a_w, a, na.seq);
	ck_assert_int_eq(weft_chan_send(c, da, len, NULL), 0); /* a's data in */
	ck_assert_int_eq(weft_chan_send(c, da = msg(4, &len), len, begin(a_w, a, &na)), -EAGAIN);
	/* a is behind b now: b is woken first, so fail b's post instead. */
	weft_alloc_fail_after(1);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, NULL), 0); /* b's inbox cannot grow */
	weft_alloc_fail_after(0);
	weft_free(p);
	ck_assert_int_eq(poll_now(a_w), 1);
	expect_wake(a_w, a, na.seq);
	expect_failures(c, 1, 0, 1, 0);
	ck_assert_int_eq(atomic_load(&nb._state), WEFT_CHAN_WAITING);

	ck_assert_int_eq(weft_worker_wake(e.live, b, nb.seq, WEFT_ETIMEOUT), 1);
	weft_chan_cancel(c, &nb);
	expect_failures(c, 1, 0, 0, 0);
	expect_no_wake(a_w);
	weft_wake_t wk;
	ck_assert_int_eq(weft_worker_next(e.live, &wk), 1);
	ck_assert_int_eq(wk.code, WEFT_ETIMEOUT);
	expect_no_wake(e.live);
	weft_free(db);
	ck_assert_int_eq(weft_chan_send(c, da, len, NULL), 0);
	recv_ok(c, 4);

	weft_worker_co_free(a_w, a);
	weft_worker_co_free(e.live, b);
	weft_chan_unref(c);
	ck_assert_int_eq(weft_worker_poll(a_w, 0), 0);
	weft_worker_free(a_w);
	teardown2(e);
}
END_TEST

/* Close cannot post to one waiter: it stays registered and the next call
 * on the channel tries again, so nobody waits for a closed channel
 * forever. */
START_TEST(test_nomem_close)
{
	env2_t e = setup2();
	weft_worker_t *a_w = e.dead;
	weft_chan_t *c;
	weft_chan_waiter_t na = WEFT_CHAN_WAITER_INIT, nb = WEFT_CHAN_WAITER_INIT;
	char *p;
	size_t len;

	ck_assert_int_eq(weft_chan_new(1, &c), 0);
	uint32_t a = new_co(a_w), b = new_co(e.live);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(a_w, a, &na)), -EAGAIN);
	ck_assert_int_eq(weft_chan_recv(c, &p, &len, begin(e.live, b, &nb)), -EAGAIN);
	weft_alloc_fail_after(1);
	weft_chan_close(c);
	weft_alloc_fail_after(0);
	ck_assert_int_eq(poll_now(e.live), 1);
	expect_wake(e.live, b, nb.seq);
	expect_no_wake(a_w);
	expect_failures(c, 1, 0, 0, 1);
	recv_fails(c, WEFT_ECLOSED); /* b's retry also wakes a */
	ck_assert_int_eq(poll_now(a_w), 1);
	expect_wake(a_w, a, na.seq);
	expect_failures(c, 1, 0, 0, 0);

	weft_worker_co_free(a_w, a);
	weft_worker_co_free(e.live, b);
	weft_chan_unref(c);
	ck_assert_int_eq(weft_worker_poll(a_w, 0), 0);
	weft_worker_free(a_w);
	teardown2(e);
}
END_TEST

/* Same name, same channel (the first capacity wins); the runtime keeps a
 * reference, and frees the channel and its messages with itself. */
START_TEST(test_named)
{
	env_t e = setup();
	weft_chan_t *a, *b, *x;

	ck_assert_int_eq(weft_chan_named(e.rt, "jobs", 3, &a), 0);
	ck_assert_int_eq(weft_chan_named(e.rt, "jobs", 7, &b), 0);
	ck_assert_int_eq(weft_chan_named(e.rt, "other", 1, &x), 0);
	ck_assert_ptr_eq(a, b);
	ck_assert_ptr_ne(a, x);
	ck_assert_uint_eq(weft_chan_capacity(a), 3);
	ck_assert_uint_eq(weft_chan_capacity(x), 1);

	send_ok(a, 1);
	send_ok(a, 2);
	ck_assert_uint_eq(weft_chan_count(b), 2);
	recv_ok(b, 1);
	weft_chan_unref(a);
	weft_chan_unref(b);
	weft_chan_unref(x);

	/* All our references gone: still there, message and all. */
	ck_assert_int_eq(weft_chan_named(e.rt, "jobs", 1, &a), 0);
	ck_assert_uint_eq(weft_chan_capacity(a), 3);
	ck_assert_uint_eq(weft_chan_count(a), 1);
	weft_chan_unref(a);
	teardown(e); /* frees "jobs" with m2 in it, and "other" (ASan) */
}
END_TEST

/* ------------------------------------------------------------------ */

enum { NMSG = 100000 };

static void *producer(void *arg)
{
	weft_chan_t *c = arg;
	/* Never hang: give up after 5 s without progress (a bound on the
	 * whole run would fail on a loaded machine, not on a bug). */
	uint64_t end = weft_clock_ns() + 5000000000ull;

	for (unsigned i = 0; i < NMSG; i++) {
		unsigned *p = weft_malloc(sizeof *p);
		if (!p)
			return (void *)1;
		*p = i;
		int rc;
		while ((rc = weft_chan_send(c, (char *)p, sizeof *p, NULL)) == -EAGAIN) {
			if (weft_clock_ns() > end) {
				weft_free(p);
				return (void *)2;
			}
			sched_yield();
		}
		if (rc != 0) {
			weft_free(p);
			return (void *)3;
		}
		end = weft_clock_ns() + 5000000000ull;
	}
	return NULL;
}

START_TEST(test_stress)
{
	weft_chan_t *c;
	weft_thread_t t;
	unsigned got = 0;
	uint64_t end = weft_clock_ns() + 6000000000ull;

	ck_assert_int_eq(weft_chan_new(16, &c), 0);
	ck_assert_int_eq(weft_thread_create(&t, producer, c, 0), 0);
	while (got < NMSG) {
		char *p;
		size_t len;
		int rc = weft_chan_recv(c, &p, &len, NULL);
		if (rc == -EAGAIN) {
			ck_assert_uint_lt(weft_clock_ns(), end);
			sched_yield();
			continue;
		}
		ck_assert_int_eq(rc, 0);
		ck_assert_uint_eq(len, sizeof(unsigned));
		unsigned v;
		memcpy(&v, p, sizeof v);
		weft_free(p);
		ck_assert_uint_eq(v, got); /* in order, none lost or doubled */
		got++;
		ck_assert_uint_le(weft_chan_count(c), 16);
		end = weft_clock_ns() + 6000000000ull; /* progress: a new bound */
	}
	void *ret;
	ck_assert_int_eq(weft_thread_join(t, &ret), 0);
	ck_assert_ptr_null(ret);
	ck_assert_uint_eq(got, NMSG);
	recv_fails(c, -EAGAIN); /* nothing extra */
	weft_chan_close(c);
	recv_fails(c, WEFT_ECLOSED);
	weft_chan_unref(c);
}
END_TEST

static Suite *channel_suite(void)
{
	Suite *s = suite_create("channel");
	TCase *tc = tcase_create("core");
	TCase *st = tcase_create("threads");

	tcase_add_test(tc, test_new_capacity);
	tcase_add_test(tc, test_fifo);
	tcase_add_test(tc, test_refs);
	tcase_add_test(tc, test_recv_wait);
	tcase_add_test(tc, test_send_wait);
	tcase_add_test(tc, test_close);
	tcase_add_test(tc, test_cancel);
	tcase_add_test(tc, test_cancel_after_wake);
	tcase_add_test(tc, test_named);
	tcase_add_test(tc, test_dead_receiver);
	tcase_add_test(tc, test_dead_sender);
	tcase_add_test(tc, test_dead_close);
	tcase_add_test(tc, test_nomem_receiver);
	tcase_add_test(tc, test_nomem_sender_times_out);
	tcase_add_test(tc, test_nomem_close);
	tcase_add_test(tc, test_cancel_many_newest_first);
	tcase_add_test(tc, test_cancel_many_oldest_first);
	tcase_add_test(tc, test_cancel_many_senders);
	suite_add_tcase(s, tc);
	/* Both sides give up after a few seconds themselves; this backs that
	 * up under slow sanitizers. */
	tcase_set_timeout(st, 15);
	tcase_add_test(st, test_stress);
	suite_add_tcase(s, st);
	return s;
}

WEFT_CHECK_MAIN(channel_suite)
