/* Inbox: single-thread push/drain, allocation failure, and a
 * multi-producer stress run checking that every message arrives exactly
 * once and each producer's messages stay in order. */
#include "inbox.h"

#include <sched.h>

#include "alloc.h"
#include "checkutil.h"
#include "error.h"

static weft_msg_t msg(uint32_t kind, uint32_t seq)
{
	weft_msg_t m = {.kind = kind,
	                .slot = seq * 3,
	                .seq = seq,
	                .code = -(int32_t)seq,
	                .ptr = (void *)(uintptr_t)(seq ^ kind)};
	return m;
}

static int same_msg(const weft_msg_t *m, uint32_t kind, uint32_t seq)
{
	weft_msg_t want = msg(kind, seq);
	return m->kind == want.kind && m->seq == want.seq && m->slot == want.slot &&
	       m->code == want.code && m->ptr == want.ptr;
}

static void expect_msg(const weft_msg_t *m, uint32_t kind, uint32_t seq)
{
	ck_assert_uint_eq(m->kind, kind);
	ck_assert_uint_eq(m->seq, seq);
	ck_assert_uint_eq(m->slot, seq * 3);
	ck_assert_int_eq(m->code, -(int32_t)seq);
	ck_assert_ptr_eq(m->ptr, (void *)(uintptr_t)(seq ^ kind));
}

START_TEST(test_single_thread)
{
	weft_inbox_t in;
	weft_msg_t *batch;
	ck_assert_int_eq(weft_inbox_init(&in), 0);
	ck_assert_int_eq(weft_inbox_nonempty(&in), 0);
	ck_assert_uint_eq(weft_inbox_drain(&in, &batch), 0);

	/* More than the initial capacity, so the producer array grows. */
	for (uint32_t i = 0; i < 1000; i++) {
		weft_msg_t m = msg(1, i);
		ck_assert_int_eq(weft_inbox_push(&in, &m), 0);
	}
	ck_assert_int_ne(weft_inbox_nonempty(&in), 0);
	ck_assert_uint_eq(weft_inbox_drain(&in, &batch), 1000);
	ck_assert_int_eq(weft_inbox_nonempty(&in), 0);
	for (uint32_t i = 0; i < 1000; i++)
		expect_msg(&batch[i], 1, i);
	weft_msg_t *first = batch;

	/* The next batch lands in the other array: the first stays readable
	 * while messages are pushed, until the next drain. */
	for (uint32_t i = 0; i < 5; i++) {
		weft_msg_t m = msg(2, i);
		ck_assert_int_eq(weft_inbox_push(&in, &m), 0);
	}
	for (uint32_t i = 0; i < 1000; i++)
		expect_msg(&first[i], 1, i);
	ck_assert_uint_eq(weft_inbox_drain(&in, &batch), 5);
	ck_assert_ptr_ne(batch, first);
	for (uint32_t i = 0; i < 5; i++)
		expect_msg(&batch[i], 2, i);

	ck_assert_uint_eq(weft_inbox_drain(&in, &batch), 0);
	weft_inbox_destroy(&in);
}
END_TEST

/* A closed inbox refuses pushes and keeps what was queued before. */
START_TEST(test_closed)
{
	weft_inbox_t in;
	weft_msg_t *batch;
	ck_assert_int_eq(weft_inbox_init(&in), 0);
	weft_msg_t m = msg(1, 7);
	ck_assert_int_eq(weft_inbox_push(&in, &m), 0);
	weft_inbox_close(&in);
	weft_inbox_close(&in); /* idempotent */
	weft_msg_t m2 = msg(1, 8);
	ck_assert_int_eq(weft_inbox_push(&in, &m2), WEFT_ECLOSED);
	ck_assert_uint_eq(weft_inbox_drain(&in, &batch), 1);
	expect_msg(&batch[0], 1, 7);
	ck_assert_uint_eq(weft_inbox_drain(&in, &batch), 0);
	weft_inbox_destroy(&in);
}
END_TEST

START_TEST(test_alloc_failure)
{
	weft_inbox_t in;
	weft_msg_t *batch;
	weft_msg_t m = msg(0, 0);
	ck_assert_int_eq(weft_inbox_init(&in), 0);

	weft_alloc_fail_after(1);
	ck_assert_int_eq(weft_inbox_push(&in, &m), WEFT_ENOMEM);
	weft_alloc_fail_after(0);
	ck_assert_int_eq(weft_inbox_nonempty(&in), 0);
	ck_assert_uint_eq(weft_inbox_drain(&in, &batch), 0);

	ck_assert_int_eq(weft_inbox_push(&in, &m), 0);
	ck_assert_uint_eq(weft_inbox_drain(&in, &batch), 1);
	expect_msg(&batch[0], 0, 0);
	weft_inbox_destroy(&in);
}
END_TEST

#define PRODUCERS    4
#define PER_PRODUCER 250000u

struct producer {
	weft_inbox_t *in;
	uint32_t id;
	int failures;
};

static void *produce(void *arg)
{
	struct producer *p = arg;
	for (uint32_t i = 0; i < PER_PRODUCER; i++) {
		weft_msg_t m = msg(p->id, i);
		if (weft_inbox_push(p->in, &m) != 0)
			p->failures++;
	}
	return NULL;
}

START_TEST(test_multi_producer_stress)
{
	weft_inbox_t in;
	weft_thread_t th[PRODUCERS];
	struct producer prod[PRODUCERS];
	uint32_t next[PRODUCERS] = {0};
	size_t received = 0, total = (size_t)PRODUCERS * PER_PRODUCER;

	ck_assert_int_eq(weft_inbox_init(&in), 0);
	for (uint32_t i = 0; i < PRODUCERS; i++) {
		prod[i] = (struct producer){.in = &in, .id = i};
		ck_assert_int_eq(weft_thread_create(&th[i], produce, &prod[i], 0), 0);
	}

	while (received < total) {
		weft_msg_t *batch;
		size_t n = weft_inbox_drain(&in, &batch);
		if (n == 0) {
			if (!weft_inbox_nonempty(&in))
				sched_yield();
			continue;
		}
		/* Plain comparisons here: each ck_assert is a write to Check's
		 * pipe, too slow for a million messages. */
		for (size_t i = 0; i < n; i++) {
			uint32_t k = batch[i].kind;
			if (k >= PRODUCERS || !same_msg(&batch[i], k, next[k]))
				ck_abort_msg("message %zu of a batch of %zu: kind %u seq %u", i, n,
				             k, batch[i].seq);
			next[k]++;
		}
		received += n;
		ck_assert_uint_le(received, total);
	}

	for (int i = 0; i < PRODUCERS; i++) {
		ck_assert_int_eq(weft_thread_join(th[i], NULL), 0);
		ck_assert_int_eq(prod[i].failures, 0);
		ck_assert_uint_eq(next[i], PER_PRODUCER);
	}
	weft_msg_t *batch;
	ck_assert_int_eq(weft_inbox_nonempty(&in), 0);
	ck_assert_uint_eq(weft_inbox_drain(&in, &batch), 0);
	ck_assert_uint_eq(received, total);
	weft_inbox_destroy(&in);
}
END_TEST

static Suite *inbox_suite(void)
{
	Suite *s = suite_create("inbox");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_single_thread);
	tcase_add_test(tc, test_alloc_failure);
	tcase_add_test(tc, test_closed);
	suite_add_tcase(s, tc);

	TCase *stress = tcase_create("stress");
	/* Sanitizer builds are several times slower than plain ones. */
	tcase_set_timeout(stress, 60);
	tcase_add_test(stress, test_multi_producer_stress);
	suite_add_tcase(s, stress);
	return s;
}

WEFT_CHECK_MAIN(inbox_suite)
