/* lib/alloc.c: the allocation hook and its fail-after countdown. */
#include "alloc.h"
#include "checkutil.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

START_TEST(test_plain)
{
	char *p = weft_malloc(16);
	ck_assert_ptr_nonnull(p);
	memset(p, 'x', 16);
	p = weft_realloc(p, 4096);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_eq(p[15], 'x');
	weft_free(p);
	weft_free(NULL);

	/* realloc(NULL, n) is malloc. */
	p = weft_realloc(NULL, 8);
	ck_assert_ptr_nonnull(p);
	weft_free(p);
}
END_TEST

/* NULL always means failure, even for zero-byte requests. */
START_TEST(test_zero_size)
{
	void *p = weft_malloc(0);
	ck_assert_ptr_nonnull(p);
	weft_free(p);
	p = weft_calloc(0, 8);
	ck_assert_ptr_nonnull(p);
	weft_free(p);
	p = weft_calloc(8, 0);
	ck_assert_ptr_nonnull(p);
	weft_free(p);
}
END_TEST

START_TEST(test_calloc_zeroes)
{
	unsigned char *p = weft_calloc(100, 10);
	ck_assert_ptr_nonnull(p);
	for (int i = 0; i < 1000; i++)
		ck_assert_int_eq(p[i], 0);
	weft_free(p);
}
END_TEST

START_TEST(test_calloc_overflow)
{
	errno = 0;
	ck_assert_ptr_null(weft_calloc(SIZE_MAX / 2 + 1, 2));
	ck_assert_int_eq(errno, ENOMEM);
	ck_assert_ptr_null(weft_calloc(2, SIZE_MAX / 2 + 1));
	ck_assert_ptr_null(weft_calloc(SIZE_MAX, SIZE_MAX));

	/* A refused product is not an allocation: it leaves the countdown
	 * where it was. */
	weft_alloc_fail_after(2);
	ck_assert_ptr_null(weft_calloc(SIZE_MAX, 16));
	void *a = weft_malloc(1);
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_null(weft_malloc(1));
	weft_free(a);
}
END_TEST

/* realloc(p, 0) frees p (ASan's leak check would notice otherwise) and
 * returns NULL, and does not count as an allocation. */
START_TEST(test_realloc_zero)
{
	void *p = weft_malloc(32);
	ck_assert_ptr_nonnull(p);
	weft_alloc_fail_after(1);
	ck_assert_ptr_null(weft_realloc(p, 0));
	/* The countdown is still armed for the next real allocation. */
	ck_assert_ptr_null(weft_malloc(1));
	p = weft_malloc(1);
	ck_assert_ptr_nonnull(p);
	weft_free(p);
}
END_TEST

START_TEST(test_fail_next)
{
	weft_alloc_fail_after(1);
	errno = 0;
	ck_assert_ptr_null(weft_malloc(8));
	ck_assert_int_eq(errno, ENOMEM);
	/* Exactly one allocation fails, then the hook disarms itself. */
	for (int i = 0; i < 10; i++) {
		void *p = weft_malloc(8);
		ck_assert_ptr_nonnull(p);
		weft_free(p);
	}
}
END_TEST

/* The countdown covers malloc, calloc and realloc alike. */
START_TEST(test_fail_nth)
{
	weft_alloc_fail_after(4);
	void *a = weft_malloc(8);
	void *b = weft_calloc(2, 8);
	void *c = weft_realloc(NULL, 8);
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	ck_assert_ptr_nonnull(c);
	ck_assert_ptr_null(weft_calloc(1, 8));
	void *d = weft_calloc(1, 8);
	ck_assert_ptr_nonnull(d);
	weft_free(a);
	weft_free(b);
	weft_free(c);
	weft_free(d);
}
END_TEST

/* A failed realloc leaves the old block alive and intact. */
START_TEST(test_realloc_fail_keeps_block)
{
	char *p = weft_malloc(8);
	ck_assert_ptr_nonnull(p);
	memcpy(p, "weft!!!", 8);
	weft_alloc_fail_after(1);
	ck_assert_ptr_null(weft_realloc(p, 1 << 20));
	ck_assert_str_eq(p, "weft!!!");
	weft_free(p);
}
END_TEST

START_TEST(test_disarm)
{
	weft_alloc_fail_after(2);
	weft_alloc_fail_after(0);
	for (int i = 0; i < 5; i++) {
		void *p = weft_malloc(8);
		ck_assert_ptr_nonnull(p);
		weft_free(p);
	}
	/* Negative counts disarm too. */
	weft_alloc_fail_after(-3);
	void *p = weft_malloc(8);
	ck_assert_ptr_nonnull(p);
	weft_free(p);
}
END_TEST

/* Re-arming replaces the previous countdown. */
START_TEST(test_rearm)
{
	weft_alloc_fail_after(100);
	weft_alloc_fail_after(1);
	ck_assert_ptr_null(weft_malloc(8));
}
END_TEST

#define THREADS    8
#define PER_THREAD 2000

static void *hammer(void *arg)
{
	long *failures = arg;

	for (int i = 0; i < PER_THREAD; i++) {
		void *p = weft_malloc(16);
		if (!p)
			(*failures)++;
		weft_free(p);
	}
	return NULL;
}

/* Threads racing on the countdown: exactly one allocation among them all
 * fails. */
START_TEST(test_threads)
{
	pthread_t th[THREADS];
	long failures[THREADS] = {0};

	weft_alloc_fail_after(THREADS * PER_THREAD / 2);
	for (int i = 0; i < THREADS; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, hammer, &failures[i]), 0);
	long total = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		total += failures[i];
	}
	ck_assert_int_eq(total, 1);
}
END_TEST

static Suite *alloc_suite(void)
{
	Suite *s = suite_create("alloc");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_plain);
	tcase_add_test(tc, test_zero_size);
	tcase_add_test(tc, test_calloc_zeroes);
	tcase_add_test(tc, test_calloc_overflow);
	tcase_add_test(tc, test_realloc_zero);
	tcase_add_test(tc, test_fail_next);
	tcase_add_test(tc, test_fail_nth);
	tcase_add_test(tc, test_realloc_fail_keeps_block);
	tcase_add_test(tc, test_disarm);
	tcase_add_test(tc, test_rearm);
	tcase_add_test(tc, test_threads);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(alloc_suite)
