/* Run queue: FIFO order across growth, ring wrap-around and counter
 * overflow; empty pops; allocation failure leaves the queue intact. */
#include "runq.h"

#include <stdint.h>

#include "alloc.h"
#include "checkutil.h"
#include "error.h"

static weft_wake_t wake(uint32_t n)
{
	weft_wake_t w = {.slot = n, .seq = ~n, .code = -(int32_t)(n & 0xffff)};
	return w;
}

static void expect_pop(weft_runq_t *q, uint32_t n)
{
	weft_wake_t w;
	ck_assert_int_eq(weft_runq_pop(q, &w), 1);
	ck_assert_uint_eq(w.slot, n);
	ck_assert_uint_eq(w.seq, ~n);
	ck_assert_int_eq(w.code, -(int32_t)(n & 0xffff));
}

START_TEST(test_empty)
{
	weft_runq_t q;
	weft_wake_t w = wake(7);
	weft_runq_init(&q);
	ck_assert_uint_eq(weft_runq_len(&q), 0);
	ck_assert_int_eq(weft_runq_pop(&q, &w), 0);
	ck_assert_uint_eq(w.slot, 7); /* untouched */

	ck_assert_int_eq(weft_runq_push(&q, wake(1)), 0);
	expect_pop(&q, 1);
	ck_assert_int_eq(weft_runq_pop(&q, &w), 0);
	ck_assert_uint_eq(weft_runq_len(&q), 0);
	weft_runq_destroy(&q);
	weft_runq_destroy(&q); /* idempotent */
}
END_TEST

/* Keep the queue partly drained while it grows, so the ring has wrapped
 * (head slot > 0) at every doubling and the wrapped part must be moved. */
START_TEST(test_fifo_across_growth)
{
	weft_runq_t q;
	uint32_t in = 0, out = 0;
	weft_runq_init(&q);
	for (int round = 0; round < 2000; round++) {
		int npush = 3 + round % 7, npop = 2 + round % 5;
		for (int i = 0; i < npush; i++)
			ck_assert_int_eq(weft_runq_push(&q, wake(in++)), 0);
		for (int i = 0; i < npop && out < in; i++)
			expect_pop(&q, out++);
		ck_assert_uint_eq(weft_runq_len(&q), in - out);
		ck_assert_uint_eq(q._cap & (q._cap - 1), 0);
		ck_assert_uint_ge(q._cap, weft_runq_len(&q));
	}
	ck_assert_uint_gt(q._cap, 16); /* it really grew, several times */
	while (out < in)
		expect_pop(&q, out++);
	weft_wake_t w;
	ck_assert_int_eq(weft_runq_pop(&q, &w), 0);
	weft_runq_destroy(&q);
}
END_TEST

/* Exactly full with the head in the middle of the ring, then grow. */
START_TEST(test_grow_when_wrapped_full)
{
	weft_runq_t q;
	uint32_t in = 0, out = 0;
	weft_runq_init(&q);
	for (int i = 0; i < 16; i++)
		ck_assert_int_eq(weft_runq_push(&q, wake(in++)), 0);
	ck_assert_uint_eq(q._cap, 16);
	for (int i = 0; i < 11; i++)
		expect_pop(&q, out++);
	for (int i = 0; i < 11; i++)
		ck_assert_int_eq(weft_runq_push(&q, wake(in++)), 0);
	ck_assert_uint_eq(q._cap, 16); /* full, head at slot 11 */
	ck_assert_int_eq(weft_runq_push(&q, wake(in++)), 0);
	ck_assert_uint_eq(q._cap, 32);
	while (out < in)
		expect_pop(&q, out++);
	weft_runq_destroy(&q);
}
END_TEST

/* The counters are free-running: they may wrap past SIZE_MAX. */
START_TEST(test_counter_overflow)
{
	weft_runq_t q;
	uint32_t in = 0, out = 0;
	weft_runq_init(&q);
	ck_assert_int_eq(weft_runq_push(&q, wake(0)), 0);
	expect_pop(&q, 0);
	/* Any equal pair of counters is a valid empty queue. */
	q._head = q._tail = SIZE_MAX - 5;
	for (int i = 0; i < 100; i++) {
		ck_assert_int_eq(weft_runq_push(&q, wake(in++)), 0);
		if (i % 3 == 0)
			expect_pop(&q, out++);
		ck_assert_uint_eq(weft_runq_len(&q), in - out);
	}
	while (out < in)
		expect_pop(&q, out++);
	ck_assert_uint_eq(weft_runq_len(&q), 0);
	weft_runq_destroy(&q);
}
END_TEST

START_TEST(test_alloc_failure)
{
	weft_runq_t q;
	uint32_t in = 0, out = 0;
	weft_runq_init(&q);

	/* First push allocates. */
	weft_alloc_fail_after(1);
	ck_assert_int_eq(weft_runq_push(&q, wake(99)), WEFT_ENOMEM);
	weft_alloc_fail_after(0);
	ck_assert_uint_eq(weft_runq_len(&q), 0);

	/* A failed growth keeps what was queued, in order. */
	for (int i = 0; i < 16; i++)
		ck_assert_int_eq(weft_runq_push(&q, wake(in++)), 0);
	expect_pop(&q, out++);
	ck_assert_int_eq(weft_runq_push(&q, wake(in++)), 0); /* full, wrapped */
	weft_alloc_fail_after(1);
	ck_assert_int_eq(weft_runq_push(&q, wake(99)), WEFT_ENOMEM);
	weft_alloc_fail_after(0);
	ck_assert_uint_eq(weft_runq_len(&q), 16);
	ck_assert_int_eq(weft_runq_push(&q, wake(in++)), 0);
	while (out < in)
		expect_pop(&q, out++);
	weft_runq_destroy(&q);
}
END_TEST

/* After reserve(n), n pushes succeed even when every allocation fails,
 * and FIFO order holds across the reserved growth of a wrapped ring. */
START_TEST(test_reserve)
{
	weft_runq_t q;
	weft_runq_init(&q);
	for (uint32_t i = 0; i < 10; i++)
		ck_assert_int_eq(weft_runq_push(&q, wake(i)), 0);
	for (uint32_t i = 0; i < 6; i++)
		expect_pop(&q, i);
	ck_assert_int_eq(weft_runq_reserve(&q, 1000), 0);
	ck_assert_uint_ge(q._cap, 1000);
	weft_alloc_fail_after(1);
	for (uint32_t i = 10; i < 1000; i++)
		ck_assert_int_eq(weft_runq_push(&q, wake(i)), 0);
	weft_alloc_fail_after(0);
	for (uint32_t i = 6; i < 1000; i++)
		expect_pop(&q, i);
	weft_runq_destroy(&q);
}
END_TEST

static Suite *runq_suite(void)
{
	Suite *s = suite_create("runq");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_empty);
	tcase_add_test(tc, test_reserve);
	tcase_add_test(tc, test_fifo_across_growth);
	tcase_add_test(tc, test_grow_when_wrapped_full);
	tcase_add_test(tc, test_counter_overflow);
	tcase_add_test(tc, test_alloc_failure);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(runq_suite)
