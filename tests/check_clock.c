/* lib/clock.c: the monotonic clock and seconds-to-nanoseconds conversion. */
#include "checkutil.h"
#include "clock.h"

#include <math.h>
#include <stdint.h>
#include <time.h>

START_TEST(test_monotonic)
{
	uint64_t prev = weft_clock_ns();
	for (int i = 0; i < 100000; i++) {
		uint64_t now = weft_clock_ns();
		ck_assert_uint_ge(now, prev);
		prev = now;
	}
}
END_TEST

START_TEST(test_sleep_advances)
{
	struct timespec ts = {0, 20 * 1000 * 1000};
	uint64_t t0 = weft_clock_ns();
	double s0 = weft_clock();
	nanosleep(&ts, NULL);
	uint64_t t1 = weft_clock_ns();
	double s1 = weft_clock();

	ck_assert_uint_ge(t1 - t0, 20 * 1000 * 1000);
	ck_assert(s1 - s0 >= 0.019);
	/* Generous upper bound: a loaded CI machine may oversleep. */
	ck_assert(s1 - s0 < 5.0);
}
END_TEST

/* weft_clock() is the same clock as weft_clock_ns(), in seconds. */
START_TEST(test_same_clock)
{
	uint64_t a = weft_clock_ns();
	double s = weft_clock();
	uint64_t b = weft_clock_ns();
	uint64_t ns = weft_clock_s2ns(s);

	/* Allow for double rounding: s carries about 16 significant
	 * digits. */
	ck_assert_uint_ge(ns + 1000, a);
	ck_assert_uint_le(ns, b + 1000);
}
END_TEST

START_TEST(test_s2ns_basic)
{
	ck_assert_uint_eq(weft_clock_s2ns(0.0), 0);
	ck_assert_uint_eq(weft_clock_s2ns(1.0), 1000000000u);
	ck_assert_uint_eq(weft_clock_s2ns(1.5), 1500000000u);
	ck_assert_uint_eq(weft_clock_s2ns(0.001), 1000000u);
	ck_assert_uint_eq(weft_clock_s2ns(0.1), 100000000u);
	ck_assert_uint_eq(weft_clock_s2ns(86400.0), 86400000000000u);
	ck_assert_uint_eq(weft_clock_s2ns(123456.789), 123456789000000u);
}
END_TEST

START_TEST(test_s2ns_saturation)
{
	ck_assert_uint_eq(weft_clock_s2ns(NAN), 0);
	ck_assert_uint_eq(weft_clock_s2ns(-NAN), 0);
	ck_assert_uint_eq(weft_clock_s2ns(-0.0), 0);
	ck_assert_uint_eq(weft_clock_s2ns(-1e-12), 0);
	ck_assert_uint_eq(weft_clock_s2ns(-1.0), 0);
	ck_assert_uint_eq(weft_clock_s2ns(-1e300), 0);
	ck_assert_uint_eq(weft_clock_s2ns(-INFINITY), 0);

	ck_assert_uint_eq(weft_clock_s2ns(INFINITY), UINT64_MAX);
	ck_assert_uint_eq(weft_clock_s2ns(1e300), UINT64_MAX);
	ck_assert_uint_eq(weft_clock_s2ns(1e20), UINT64_MAX);
	/* 2^63 ns (about 292 years) is where "never" starts... */
	ck_assert_uint_eq(weft_clock_s2ns(9223372037.0), UINT64_MAX);
	ck_assert_uint_eq(weft_clock_s2ns(1e10), UINT64_MAX);
	/* ...and just below it values are still exact. */
	ck_assert_uint_eq(weft_clock_s2ns(9.2e9), 9200000000000000000u);
	ck_assert_uint_lt(weft_clock_s2ns(9223372036.0), (uint64_t)1 << 63);
}
END_TEST

/* Rounding is to the nearest nanosecond. */
START_TEST(test_s2ns_rounding)
{
	ck_assert_uint_eq(weft_clock_s2ns(1e-9), 1);
	ck_assert_uint_eq(weft_clock_s2ns(0.4e-9), 0);
	ck_assert_uint_eq(weft_clock_s2ns(0.6e-9), 1);
	ck_assert_uint_eq(weft_clock_s2ns(1.4e-9), 1);
	ck_assert_uint_eq(weft_clock_s2ns(1.6e-9), 2);
	ck_assert_uint_eq(weft_clock_s2ns(2.5e-9 + 1e-18), 3);
	ck_assert_uint_eq(weft_clock_s2ns(0.999999999), 999999999u);
	ck_assert_uint_eq(weft_clock_s2ns(0.9999999996), 1000000000u);
	ck_assert_uint_eq(weft_clock_s2ns(1e-300), 0);

	/* Above 2^52 every double is an integer; those must come back
	 * unchanged, not rounded to even (2^52 + 1 is odd). */
	double big = 4503599627370497.0; /* 2^52 + 1 */
	ck_assert_uint_eq(weft_clock_s2ns(big / 1e9), 4503599627370497u);
}
END_TEST

/* Nanoseconds -> weft_clock() seconds -> nanoseconds is exact for clock
 * values up to about 11 days of uptime (and within a nanosecond or two
 * long after). */
START_TEST(test_s2ns_round_trip)
{
	uint64_t ns = 1;
	for (int i = 0; i < 2000; i++) {
		double s = (double)ns / 1e9;
		ck_assert_uint_eq(weft_clock_s2ns(s), ns);
		ns = ns * 3 + 7;
		if (ns > 1000000000000000u)
			ns = ns % 999999999999989u + 13;
	}
}
END_TEST

static Suite *clock_suite(void)
{
	Suite *s = suite_create("clock");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_monotonic);
	tcase_add_test(tc, test_sleep_advances);
	tcase_add_test(tc, test_same_clock);
	tcase_add_test(tc, test_s2ns_basic);
	tcase_add_test(tc, test_s2ns_saturation);
	tcase_add_test(tc, test_s2ns_rounding);
	tcase_add_test(tc, test_s2ns_round_trip);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(clock_suite)
