/* Job queues: FIFO order of push/pop; empty pops; stealing the older half
 * (at least one) in order with `len` kept right; steals that cannot move
 * anything; and a threaded stress run (one owner, two thieves) where every
 * job is taken exactly once. */
#include "jobq.h"

#include "thread.h"
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#include "checkutil.h"
#include "clock.h"

static size_t qlen(weft_jobq_t *q)
{
	return atomic_load(&q->len);
}

/* Jobs numbered through data, so order can be checked. */
static void init_jobs(weft_job_t *j, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		j[i]._next = NULL;
		j[i].data = (void *)(uintptr_t)i;
	}
}

static void expect_pop(weft_jobq_t *q, weft_job_t *jobs, size_t i)
{
	weft_job_t *j = weft_jobq_pop(q);
	ck_assert_ptr_eq(j, &jobs[i]);
	ck_assert_uint_eq((uintptr_t)j->data, i);
}

/* ------------------------------------------------------------------ */

START_TEST(test_fifo)
{
	enum { N = 100 };
	weft_job_t jobs[N];
	weft_jobq_t q;
	size_t in = 0, out = 0;

	init_jobs(jobs, N);
	weft_jobq_init(&q);
	ck_assert_uint_eq(qlen(&q), 0);
	ck_assert_ptr_null(weft_jobq_pop(&q));

	/* Interleaved, so the queue empties and refills (head and tail reset)
	 * more than once. */
	while (in < N) {
		for (int k = 0; k < 3 && in < N; k++)
			weft_jobq_push(&q, &jobs[in++]);
		expect_pop(&q, jobs, out++);
		ck_assert_uint_eq(qlen(&q), in - out);
		if (in % 9 == 0) {
			while (out < in)
				expect_pop(&q, jobs, out++);
			ck_assert_ptr_null(weft_jobq_pop(&q));
			ck_assert_uint_eq(qlen(&q), 0);
		}
	}
	while (out < in)
		expect_pop(&q, jobs, out++);
	ck_assert_ptr_null(weft_jobq_pop(&q));
	ck_assert_ptr_null(weft_jobq_pop(&q)); /* still empty, not broken */
	ck_assert_uint_eq(qlen(&q), 0);

	/* A job may be pushed again once taken (intrusive link reused). */
	weft_jobq_push(&q, &jobs[5]);
	expect_pop(&q, jobs, 5);
	ck_assert_ptr_null(weft_jobq_pop(&q));
	weft_jobq_destroy(&q);
}
END_TEST

/* For every length: the older ceil(len/2) move, in order, behind what the
 * thief already has; both queues stay FIFO and their counts exact. */
START_TEST(test_steal_half)
{
	enum { N = 17 };
	weft_job_t jobs[N], mine[2];
	weft_jobq_t from, to;

	for (size_t len = 1; len <= N; len++) {
		init_jobs(jobs, N);
		init_jobs(mine, 2);
		weft_jobq_init(&from);
		weft_jobq_init(&to);
		for (size_t i = 0; i < len; i++)
			weft_jobq_push(&from, &jobs[i]);
		/* The thief's own jobs stay ahead of the stolen ones. */
		weft_jobq_push(&to, &mine[0]);
		weft_jobq_push(&to, &mine[1]);

		size_t n = weft_jobq_steal(&from, &to);
		ck_assert_uint_eq(n, (len + 1) / 2);
		ck_assert_uint_ge(n, 1);
		ck_assert_uint_eq(qlen(&from), len - n);
		ck_assert_uint_eq(qlen(&to), 2 + n);

		expect_pop(&to, mine, 0);
		expect_pop(&to, mine, 1);
		for (size_t i = 0; i < n; i++)
			expect_pop(&to, jobs, i);
		ck_assert_ptr_null(weft_jobq_pop(&to));
		for (size_t i = n; i < len; i++)
			expect_pop(&from, jobs, i);
		ck_assert_ptr_null(weft_jobq_pop(&from));
		ck_assert_uint_eq(qlen(&from), 0);
		ck_assert_uint_eq(qlen(&to), 0);

		/* Both still usable: the tails were reset right. */
		weft_jobq_push(&from, &jobs[0]);
		weft_jobq_push(&to, &jobs[1]);
		expect_pop(&from, jobs, 0);
		expect_pop(&to, jobs, 1);
		weft_jobq_destroy(&from);
		weft_jobq_destroy(&to);
	}
}
END_TEST

/* Steal until one job is left, then that one too: into an empty queue,
 * and the source empties with its tail reset. */
START_TEST(test_steal_repeated)
{
	enum { N = 40 };
	weft_job_t jobs[N];
	weft_jobq_t from, to;
	size_t moved = 0;

	init_jobs(jobs, N);
	weft_jobq_init(&from);
	weft_jobq_init(&to);
	for (size_t i = 0; i < N; i++)
		weft_jobq_push(&from, &jobs[i]);
	while (qlen(&from) > 0) {
		size_t before = qlen(&from);
		size_t n = weft_jobq_steal(&from, &to);
		ck_assert_uint_eq(n, (before + 1) / 2);
		moved += n;
		ck_assert_uint_eq(qlen(&to), moved);
	}
	ck_assert_uint_eq(moved, N);
	ck_assert_ptr_null(weft_jobq_pop(&from));
	ck_assert_uint_eq(weft_jobq_steal(&from, &to), 0);
	/* Order survives several steals appended one after another. */
	for (size_t i = 0; i < N; i++)
		expect_pop(&to, jobs, i);
	ck_assert_ptr_null(weft_jobq_pop(&to));

	/* The emptied source takes new jobs normally. */
	weft_jobq_push(&from, &jobs[3]);
	expect_pop(&from, jobs, 3);
	weft_jobq_destroy(&from);
	weft_jobq_destroy(&to);
}
END_TEST

START_TEST(test_steal_nothing)
{
	weft_job_t jobs[3];
	weft_jobq_t a, b;

	init_jobs(jobs, 3);
	weft_jobq_init(&a);
	weft_jobq_init(&b);
	ck_assert_uint_eq(weft_jobq_steal(&a, &b), 0); /* empty */
	ck_assert_uint_eq(qlen(&b), 0);
	ck_assert_ptr_null(weft_jobq_pop(&b));

	/* From itself: would splice the queue onto itself; nothing moves. */
	for (int i = 0; i < 3; i++)
		weft_jobq_push(&a, &jobs[i]);
	ck_assert_uint_eq(weft_jobq_steal(&a, &a), 0);
	ck_assert_uint_eq(qlen(&a), 3);
	for (size_t i = 0; i < 3; i++)
		expect_pop(&a, jobs, i);
	ck_assert_ptr_null(weft_jobq_pop(&a));

	/* Empty to itself too (no deadlock on the one lock). */
	ck_assert_uint_eq(weft_jobq_steal(&a, &a), 0);
	weft_jobq_destroy(&a);
	weft_jobq_destroy(&b);
}
END_TEST

/* ------------------------------------------------------------------ */

enum { NSTRESS = 200000, NTHIEVES = 2 };

static weft_job_t sjobs[NSTRESS];
static _Atomic unsigned char taken[NSTRESS];
static weft_jobq_t owner_q;
static atomic_int owner_done;

typedef struct thief {
	weft_thread_t t;
	weft_jobq_t q;
	size_t got, steals;
} thief_t;

/* Mark a job taken; a second take is a bug (the flag, not a count, says
 * which job). */
static int take(weft_job_t *j)
{
	size_t i = (uintptr_t)j->data;
	if (i >= NSTRESS || j != &sjobs[i])
		return 0;
	return atomic_exchange(&taken[i], 1) == 0;
}

static void *thief_main(void *arg)
{
	thief_t *th = arg;
	uint64_t end = weft_clock_ns() + 5000000000ull; /* never hang */

	for (;;) {
		size_t n = weft_jobq_steal(&owner_q, &th->q);
		if (n)
			th->steals++;
		weft_job_t *j;
		while ((j = weft_jobq_pop(&th->q))) {
			if (!take(j))
				return (void *)1;
			th->got++;
		}
		/* The owner drained its queue before saying done and pushes
		 * nothing after: an empty queue then stays empty. */
		if (atomic_load(&owner_done) && atomic_load(&owner_q.len) == 0)
			return NULL;
		if (weft_clock_ns() > end)
			return (void *)2;
		if (!n)
			sched_yield();
	}
}

START_TEST(test_stress)
{
	thief_t th[NTHIEVES];
	size_t owner_got = 0, total = 0;
	int bad = 0;

	init_jobs(sjobs, NSTRESS);
	weft_jobq_init(&owner_q);
	for (int i = 0; i < NTHIEVES; i++) {
		weft_jobq_init(&th[i].q);
		th[i].got = th[i].steals = 0;
		ck_assert_int_eq(weft_thread_create(&th[i].t, thief_main, &th[i], 0), 0);
	}

	/* Push in bursts and pop one now and then, so the owner and the
	 * thieves contend for the same short queue. */
	for (size_t i = 0; i < NSTRESS; i++) {
		weft_jobq_push(&owner_q, &sjobs[i]);
		if (i % 3 == 2) {
			weft_job_t *j = weft_jobq_pop(&owner_q);
			if (j) {
				bad |= !take(j);
				owner_got++;
			}
		}
	}
	weft_job_t *j;
	while ((j = weft_jobq_pop(&owner_q))) {
		bad |= !take(j);
		owner_got++;
	}
	atomic_store(&owner_done, 1);

	total = owner_got;
	for (int i = 0; i < NTHIEVES; i++) {
		void *ret;
		ck_assert_int_eq(weft_thread_join(th[i].t, &ret), 0);
		ck_assert_ptr_null(ret);
		ck_assert_uint_eq(qlen(&th[i].q), 0);
		total += th[i].got;
		weft_jobq_destroy(&th[i].q);
	}
	ck_assert_int_eq(bad, 0);
	ck_assert_uint_eq(total, NSTRESS);
	for (size_t i = 0; i < NSTRESS; i++)
		ck_assert_int_eq(atomic_load(&taken[i]), 1);
	ck_assert_uint_eq(qlen(&owner_q), 0);
	ck_assert_ptr_null(weft_jobq_pop(&owner_q));
	weft_jobq_destroy(&owner_q);
}
END_TEST

static Suite *jobq_suite(void)
{
	Suite *s = suite_create("jobq");
	TCase *tc = tcase_create("core");
	TCase *st = tcase_create("threads");

	tcase_add_test(tc, test_fifo);
	tcase_add_test(tc, test_steal_half);
	tcase_add_test(tc, test_steal_repeated);
	tcase_add_test(tc, test_steal_nothing);
	suite_add_tcase(s, tc);
	/* The thieves give up after 5 s themselves; this only backs that up
	 * under slow sanitizers. */
	tcase_set_timeout(st, 15);
	tcase_add_test(st, test_stress);
	suite_add_tcase(s, st);
	return s;
}

WEFT_CHECK_MAIN(jobq_suite)
