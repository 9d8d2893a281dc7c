/* lib/error.c: normalized messages for weft, errno and getaddrinfo codes. */
#include "checkutil.h"
#include "error.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <pthread.h>
#ifdef _WIN32
#include <ws2tcpip.h>
#else
#include <netdb.h>
#endif
#include <string.h>

static const struct {
	int err;
	const char *msg;
} normalized[] = {
    {WEFT_ETIMEOUT, "timeout"},
    {WEFT_ECLOSED, "closed"},
    {WEFT_EEOF, "eof"},
    {WEFT_ENOMEM, "out_of_memory"},
    {WEFT_ETOOLARGE, "too_large"},
    {-ETIMEDOUT, "timeout"},
    {-EACCES, "access_denied"},
    {-EPERM, "access_denied"},
    {-EADDRINUSE, "address_already_in_use"},
    {-EADDRNOTAVAIL, "address_not_available"},
    {-ECONNREFUSED, "connection_refused"},
    {-ECONNRESET, "connection_reset"},
    {-ECONNABORTED, "connection_aborted"},
    {-EPIPE, "broken_pipe"},
    {-ENETUNREACH, "network_unreachable"},
    {-EHOSTUNREACH, "host_unreachable"},
    {-ENOTCONN, "not_connected"},
    {-EISCONN, "already_connected"},
    {-EMFILE, "too_many_open_files"},
    {-ENFILE, "too_many_open_files"},
    {-ENOMEM, "out_of_memory"},
    {-ENOBUFS, "no_buffer_space"},
    {-EAFNOSUPPORT, "address_family_not_supported"},
    {-EDESTADDRREQ, "destination_address_required"},
    {-EMSGSIZE, "message_too_long"},
    {-EBUSY, "busy"},
    {WEFT_EAI(EAI_NONAME), "host_not_found"},
    {WEFT_EAI(EAI_NODATA), "host_not_found"},
    {WEFT_EAI(EAI_AGAIN), "try_again"},
    {WEFT_EAI(EAI_SERVICE), "service_not_found"},
    {WEFT_EAI(EAI_FAMILY), "address_family_not_supported"},
#ifdef EAI_ADDRFAMILY
    {WEFT_EAI(EAI_ADDRFAMILY), "address_family_not_supported"},
#endif
    {WEFT_EAI(EAI_MEMORY), "out_of_memory"},
};
#define NNORMALIZED (int)(sizeof normalized / sizeof normalized[0])

START_TEST(test_normalized)
{
	ck_assert_str_eq(weft_strerror(normalized[_i].err), normalized[_i].msg);
}
END_TEST

/* The weft codes sit outside errno's range, and getaddrinfo's away from
 * both. */
START_TEST(test_ranges_disjoint)
{
	ck_assert_int_lt(WEFT_ETIMEOUT, -4095);
	ck_assert_int_lt(WEFT_EAI(EAI_BADFLAGS), WEFT_ENOMEM);
	ck_assert_int_lt(WEFT_EAI(-105), WEFT_EAI_BASE);
}
END_TEST

/* Codes without a portable meaning give the system's text. */
#ifdef _WIN32
/* Windows: the C runtime's words where it has them, glibc's for the
 * socket codes it has no words for (error-win32.c); getaddrinfo's codes
 * are Winsock's, worded by weft. */
START_TEST(test_system_text)
{
	ck_assert_str_eq(weft_strerror(-ENOENT), "No such file or directory");
	ck_assert_str_eq(weft_strerror(-EINVAL), "Invalid argument");
	ck_assert_str_eq(weft_strerror(-EINPROGRESS), "Operation now in progress");
	ck_assert_str_eq(weft_strerror(-ENOPROTOOPT), "Protocol not available");
	ck_assert_str_eq(weft_strerror(-EWOULDBLOCK), "Resource temporarily unavailable");
}
END_TEST

START_TEST(test_eai_text)
{
	ck_assert_str_eq(weft_strerror(WEFT_EAI(EAI_BADFLAGS)), "invalid value for ai_flags");
	ck_assert_str_eq(weft_strerror(WEFT_EAI(EAI_FAIL)),
	    "non-recoverable failure in name resolution");
	ck_assert_str_eq(weft_strerror(WEFT_EAI(EAI_SOCKTYPE)), "ai_socktype not supported");
	/* An EAI code Winsock does not have. */
	ck_assert_str_eq(weft_strerror(WEFT_EAI(999)), "unknown error");
}
END_TEST
#else
START_TEST(test_system_text)
{
	ck_assert_str_eq(weft_strerror(-ENOENT), "No such file or directory");
	ck_assert_str_eq(weft_strerror(-EINVAL), "Invalid argument");
	ck_assert_str_eq(weft_strerror(-EAGAIN), strerrordesc_np(EAGAIN));
	ck_assert_str_eq(weft_strerror(-EINPROGRESS), strerrordesc_np(EINPROGRESS));
	ck_assert_str_eq(weft_strerror(-ENOPROTOOPT), strerrordesc_np(ENOPROTOOPT));
}
END_TEST

START_TEST(test_eai_text)
{
	ck_assert_str_eq(weft_strerror(WEFT_EAI(EAI_BADFLAGS)), gai_strerror(EAI_BADFLAGS));
	ck_assert_str_eq(weft_strerror(WEFT_EAI(EAI_FAIL)), gai_strerror(EAI_FAIL));
	ck_assert_str_eq(weft_strerror(WEFT_EAI(EAI_SOCKTYPE)), gai_strerror(EAI_SOCKTYPE));
	ck_assert_str_eq(weft_strerror(WEFT_EAI(EAI_OVERFLOW)), gai_strerror(EAI_OVERFLOW));
	/* An EAI code glibc does not know gets glibc's own wording. */
	ck_assert_str_eq(weft_strerror(WEFT_EAI(-999)), gai_strerror(-999));
}
END_TEST
#endif

static const int unknown[] = {
    0,
    1,
    EPIPE, /* positive: the contract is negative codes */
    INT_MAX,
    INT_MIN,
    -4000, /* in errno's range, but no errno has that value */
    -4095,
    -4096,
    -10000,
    -10006,
    WEFT_EAI_BASE, /* EAI code 0 is success, not an error */
    WEFT_EAI_BASE - 1000,
    -20000,
};
#define NUNKNOWN (int)(sizeof unknown / sizeof unknown[0])

START_TEST(test_unknown)
{
	ck_assert_str_eq(weft_strerror(unknown[_i]), "unknown error");
}
END_TEST

/* The strings are static: the same pointer every time, usable after
 * later calls. */
START_TEST(test_static)
{
	const char *a = weft_strerror(-ENOENT);
	const char *b = weft_strerror(-EINVAL);
	ck_assert_ptr_eq(weft_strerror(-ENOENT), a);
	ck_assert_ptr_eq(weft_strerror(-EINVAL), b);
	ck_assert_str_eq(a, "No such file or directory");
	ck_assert_ptr_eq(weft_strerror(-ECONNREFUSED), weft_strerror(-ECONNREFUSED));
}
END_TEST

static void *churn(void *arg)
{
	intptr_t bad = 0;

	(void)arg;
	for (int i = 0; i < 20000; i++) {
		int e = 1 + i % 140;
		if (strcmp(weft_strerror(-e), weft_strerror(-e)) != 0)
			bad++;
		if (strcmp(weft_strerror(-ENOENT), "No such file or directory") != 0)
			bad++;
	}
	return (void *)bad;
}

/* Any thread: concurrent callers see stable text. */
START_TEST(test_threads)
{
	pthread_t th[4];

	for (int i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, churn, NULL), 0);
	for (int i = 0; i < 4; i++) {
		void *bad;
		pthread_join(th[i], &bad);
		ck_assert_ptr_null(bad);
	}
}
END_TEST

static Suite *error_suite(void)
{
	Suite *s = suite_create("error");
	TCase *tc = tcase_create("core");

	tcase_add_loop_test(tc, test_normalized, 0, NNORMALIZED);
	tcase_add_test(tc, test_ranges_disjoint);
	tcase_add_test(tc, test_system_text);
	tcase_add_test(tc, test_eai_text);
	tcase_add_loop_test(tc, test_unknown, 0, NUNKNOWN);
	tcase_add_test(tc, test_static);
	tcase_add_test(tc, test_threads);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(error_suite)
