/* lib/thread.h on this platform (thread-posix.c or thread-win32.c): a
 * thread's result reaches join; a mutex excludes (an unlocked counter
 * would lose increments); a condition variable hands over every item
 * exactly once and its timed wait both times out and wakes early; once
 * runs its function exactly once under contention; identities compare;
 * a detached thread runs to its end. */
#include "thread.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "checkutil.h"
#include "clock.h"
#include "error.h"

/* Under Wine every thread switch is slow: WEFT_TEST_SCALE divides the
 * loop counts (the invariants are the same at any size). */
static int scaled(int n)
{
	const char *s = getenv("WEFT_TEST_SCALE");
	int k = s && atoi(s) > 0 ? atoi(s) : 1;

	return n / k > 0 ? n / k : 1;
}

static void *give_back(void *arg)
{
	return (char *)arg + 1;
}

START_TEST(test_create_join)
{
	static char buf[2];
	weft_thread_t t;
	void *ret = NULL;

	ck_assert_int_eq(weft_thread_create(&t, give_back, buf, 0), 0);
	ck_assert_int_eq(weft_thread_join(t, &ret), 0);
	ck_assert_ptr_eq(ret, buf + 1);
	ck_assert_int_eq(weft_thread_create(&t, give_back, buf, WEFT_THREAD_NOSIGNALS), 0);
	ck_assert_int_eq(weft_thread_join(t, NULL), 0);
}
END_TEST

struct counter {
	weft_mutex_t lock;
	int rounds;
	long value; /* plain: only the lock protects it */
	_Atomic int inside;
	_Atomic int overlaps;
};

static void *count_up(void *arg)
{
	struct counter *c = arg;

	for (int i = 0; i < c->rounds; i++) {
		weft_mutex_lock(&c->lock);
		if (atomic_fetch_add(&c->inside, 1) != 0)
			atomic_fetch_add(&c->overlaps, 1);
		c->value++;
		atomic_fetch_sub(&c->inside, 1);
		weft_mutex_unlock(&c->lock);
	}
	return NULL;
}

START_TEST(test_mutex_excludes)
{
	enum { T = 4 };
	struct counter c = {.rounds = scaled(100000)};
	weft_thread_t t[T];

	ck_assert_int_eq(weft_mutex_init(&c.lock), 0);
	for (int i = 0; i < T; i++)
		ck_assert_int_eq(weft_thread_create(&t[i], count_up, &c, 0), 0);
	for (int i = 0; i < T; i++)
		ck_assert_int_eq(weft_thread_join(t[i], NULL), 0);
	ck_assert_int_eq(atomic_load(&c.overlaps), 0);
	ck_assert_int_eq(c.value, (long)T * c.rounds);
	weft_mutex_destroy(&c.lock);
}
END_TEST

/* Try the lock from another thread; give it back if taken. */
static void *try_from_thread(void *arg)
{
	int got = weft_mutex_trylock(arg);

	if (got)
		weft_mutex_unlock(arg);
	return (void *)(intptr_t)got;
}

START_TEST(test_trylock)
{
	weft_mutex_t m;
	weft_thread_t t;
	void *got;

	ck_assert_int_eq(weft_mutex_init(&m), 0);
	weft_mutex_lock(&m);
	ck_assert_int_eq(weft_thread_create(&t, try_from_thread, &m, 0), 0);
	ck_assert_int_eq(weft_thread_join(t, &got), 0);
	ck_assert_int_eq((int)(intptr_t)got, 0); /* held here */
	weft_mutex_unlock(&m);
	ck_assert_int_eq(weft_thread_create(&t, try_from_thread, &m, 0), 0);
	ck_assert_int_eq(weft_thread_join(t, &got), 0);
	ck_assert_int_eq((int)(intptr_t)got, 1); /* free: taken */
	ck_assert_int_eq(weft_mutex_trylock(&m), 1);
	weft_mutex_unlock(&m);
	weft_mutex_destroy(&m);
}
END_TEST

/* A one-slot mailbox: every item sent is received exactly once, in order,
 * and nobody waits forever. */
struct box {
	weft_mutex_t lock;
	weft_cond_t changed;
	int n, full, item, done;
};

static void *consume(void *arg)
{
	struct box *b = arg;
	long sum = 0;

	weft_mutex_lock(&b->lock);
	for (int want = 1; want <= b->n; want++) {
		while (!b->full)
			weft_cond_wait(&b->changed, &b->lock);
		if (b->item != want)
			sum = -1000000000;
		sum += b->item;
		b->full = 0;
		weft_cond_broadcast(&b->changed);
	}
	weft_mutex_unlock(&b->lock);
	return (void *)(intptr_t)sum;
}

START_TEST(test_cond_handover)
{
	struct box b = {.n = scaled(20000)};
	weft_thread_t t;
	void *sum;

	ck_assert_int_eq(weft_mutex_init(&b.lock), 0);
	ck_assert_int_eq(weft_cond_init(&b.changed), 0);
	ck_assert_int_eq(weft_thread_create(&t, consume, &b, 0), 0);
	weft_mutex_lock(&b.lock);
	for (int i = 1; i <= b.n; i++) {
		while (b.full)
			weft_cond_wait(&b.changed, &b.lock);
		b.item = i;
		b.full = 1;
		weft_cond_signal(&b.changed);
	}
	weft_mutex_unlock(&b.lock);
	ck_assert_int_eq(weft_thread_join(t, &sum), 0);
	ck_assert_int_eq((long)(intptr_t)sum, (long)b.n * (b.n + 1) / 2);
	weft_cond_destroy(&b.changed);
	weft_mutex_destroy(&b.lock);
}
END_TEST

START_TEST(test_cond_timeout)
{
	weft_mutex_t m;
	weft_cond_t c;
	uint64_t t0;
	int rc;

	ck_assert_int_eq(weft_mutex_init(&m), 0);
	ck_assert_int_eq(weft_cond_init(&c), 0);
	weft_mutex_lock(&m);
	/* Nobody signals: it times out, not before its time (spurious
	 * wake-ups are allowed, hence the loop), and within wide bounds. */
	t0 = weft_clock_ns();
	while ((rc = weft_cond_timedwait(&c, &m, 30000000u)) == 0 &&
	       weft_clock_ns() - t0 < 30000000u)
		;
	ck_assert_int_eq(rc, WEFT_ETIMEOUT);
	ck_assert_uint_ge(weft_clock_ns() - t0, 29000000u);
	ck_assert_uint_lt(weft_clock_ns() - t0, 5000000000u);
	/* 0 is a poll; a huge timeout does not overflow into the past. */
	ck_assert_int_eq(weft_cond_timedwait(&c, &m, 0), WEFT_ETIMEOUT);
	weft_mutex_unlock(&m);
	weft_cond_destroy(&c);
	weft_mutex_destroy(&m);
}
END_TEST

static void *post_later(void *arg)
{
	struct box *b = arg;

	weft_mutex_lock(&b->lock);
	while (!b->done) /* the waiter is in its wait (or about to be) */
		weft_cond_wait(&b->changed, &b->lock);
	b->full = 1;
	weft_cond_signal(&b->changed);
	weft_mutex_unlock(&b->lock);
	return NULL;
}

/* A signal ends a long timed wait early. */
START_TEST(test_cond_timedwait_woken)
{
	struct box b = {0};
	weft_thread_t t;
	uint64_t t0 = weft_clock_ns();

	ck_assert_int_eq(weft_mutex_init(&b.lock), 0);
	ck_assert_int_eq(weft_cond_init(&b.changed), 0);
	ck_assert_int_eq(weft_thread_create(&t, post_later, &b, 0), 0);
	weft_mutex_lock(&b.lock);
	b.done = 1;
	weft_cond_broadcast(&b.changed);
	while (!b.full)
		ck_assert_int_eq(weft_cond_timedwait(&b.changed, &b.lock, 60000000000u), 0);
	weft_mutex_unlock(&b.lock);
	ck_assert_int_eq(weft_thread_join(t, NULL), 0);
	ck_assert_uint_lt(weft_clock_ns() - t0, 30000000000u);
	weft_cond_destroy(&b.changed);
	weft_mutex_destroy(&b.lock);
}
END_TEST

static weft_once_t once = WEFT_ONCE_INIT;
static _Atomic int once_runs;
static _Atomic int once_done;

static void init_once(void)
{
	atomic_fetch_add(&once_runs, 1);
	/* Slow, so that other callers arrive while it runs. */
	for (uint64_t t0 = weft_clock_ns(); weft_clock_ns() - t0 < 20000000u;)
		;
	atomic_store(&once_done, 1);
}

static void *call_once(void *arg)
{
	weft_once(&once, init_once);
	/* Every caller returns after fn finished. */
	return (void *)(intptr_t)atomic_load(&once_done);
}

START_TEST(test_once)
{
	enum { T = 6 };
	weft_thread_t t[T];

	for (int i = 0; i < T; i++)
		ck_assert_int_eq(weft_thread_create(&t[i], call_once, NULL, 0), 0);
	for (int i = 0; i < T; i++) {
		void *done;

		ck_assert_int_eq(weft_thread_join(t[i], &done), 0);
		ck_assert_int_eq((int)(intptr_t)done, 1);
	}
	weft_once(&once, init_once);
	ck_assert_int_eq(atomic_load(&once_runs), 1);
}
END_TEST

static weft_thread_id_t other_id;

static void *record_self(void *arg)
{
	other_id = weft_thread_self();
	return NULL;
}

START_TEST(test_self_equal)
{
	weft_thread_t t;

	ck_assert(weft_thread_equal(weft_thread_self(), weft_thread_self()));
	ck_assert_int_eq(weft_thread_create(&t, record_self, NULL, 0), 0);
	ck_assert_int_eq(weft_thread_join(t, NULL), 0);
	ck_assert(!weft_thread_equal(weft_thread_self(), other_id));
}
END_TEST

static void *finish(void *arg)
{
	struct box *b = arg;

	weft_mutex_lock(&b->lock);
	b->done = 1;
	weft_cond_signal(&b->changed);
	weft_mutex_unlock(&b->lock);
	return NULL;
}

START_TEST(test_detach)
{
	struct box b = {0};
	weft_thread_t t;

	ck_assert_int_eq(weft_mutex_init(&b.lock), 0);
	ck_assert_int_eq(weft_cond_init(&b.changed), 0);
	ck_assert_int_eq(weft_thread_create(&t, finish, &b, 0), 0);
	ck_assert_int_eq(weft_thread_detach(t), 0);
	weft_mutex_lock(&b.lock);
	while (!b.done)
		weft_cond_wait(&b.changed, &b.lock);
	weft_mutex_unlock(&b.lock);
	/* b outlives the thread's last touch only if it has let go of the
	 * lock; locking once more makes sure of that. */
	weft_mutex_lock(&b.lock);
	weft_mutex_unlock(&b.lock);
	weft_cond_destroy(&b.changed);
	weft_mutex_destroy(&b.lock);
}
END_TEST

static Suite *thread_suite(void)
{
	Suite *s = suite_create("thread");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_create_join);
	tcase_add_test(tc, test_mutex_excludes);
	tcase_add_test(tc, test_trylock);
	tcase_add_test(tc, test_cond_handover);
	tcase_add_test(tc, test_cond_timeout);
	tcase_add_test(tc, test_cond_timedwait_woken);
	tcase_add_test(tc, test_once);
	tcase_add_test(tc, test_self_equal);
	tcase_add_test(tc, test_detach);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(thread_suite)
