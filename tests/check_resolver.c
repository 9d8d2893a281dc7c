/* Resolver: numeric lookups inline, names and service names on the pool,
 * lookups running in parallel, errors, shutdown and restart.  Only
 * loopback names: the test machines may have no network or DNS. */
#include "resolver.h"

#include <errno.h>
#include <string.h>

#include "checkutil.h"
#include "clock.h"
#include "error.h"
#include "thread.h"

/* Completions, counted under a lock so the test can wait for them. */
struct done {
	weft_mutex_t lock;
	weft_cond_t cond;
	int count;
	int wrong_thread; /* a callback ran on the submitting thread */
	int signals_open; /* a callback ran with some signal unblocked */
	int cancelled;    /* callbacks that found -ECANCELED */
	weft_thread_id_t submitter;
};

static void done_init(struct done *d)
{
	memset(d, 0, sizeof(*d));
	weft_mutex_init(&d->lock);
	weft_cond_init(&d->cond);
	d->submitter = weft_thread_self();
}

static void done_destroy(struct done *d)
{
	weft_mutex_destroy(&d->lock);
	weft_cond_destroy(&d->cond);
}

static void on_done(weft_resolve_t *req, void *arg)
{
	struct done *d = arg;
	int blocked = tu_signals_blocked();
	weft_mutex_lock(&d->lock);
	if (weft_thread_equal(weft_thread_self(), d->submitter))
		d->wrong_thread++;
	if (!blocked)
		d->signals_open++;
	if (req->err == -ECANCELED)
		d->cancelled++;
	d->count++;
	weft_cond_broadcast(&d->cond);
	weft_mutex_unlock(&d->lock);
}

static long long now_ms(void)
{
	return (long long)(weft_clock_ns() / 1000000u);
}

/* Wait until n callbacks have run, at most timeout_ms; returns the count. */
static int done_wait(struct done *d, int n, int timeout_ms)
{
	uint64_t until = weft_clock_ns() + (uint64_t)timeout_ms * 1000000u;
	weft_mutex_lock(&d->lock);
	while (d->count < n) {
		uint64_t now = weft_clock_ns();
		if (now >= until)
			break;
		weft_cond_timedwait(&d->cond, &d->lock, until - now);
	}
	int count = d->count;
	weft_mutex_unlock(&d->lock);
	return count;
}

static int done_count(struct done *d)
{
	weft_mutex_lock(&d->lock);
	int count = d->count;
	weft_mutex_unlock(&d->lock);
	return count;
}

static void req_init(weft_resolve_t *req, const char *host, const char *service, int family)
{
	memset(req, 0, sizeof(*req));
	req->host = (char *)host;
	req->service = (char *)service;
	req->hints.ai_family = family;
	req->hints.ai_socktype = SOCK_STREAM;
}

static int port_of(const struct addrinfo *ai)
{
	if (ai->ai_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)ai->ai_addr)->sin_port);
	return ntohs(((const struct sockaddr_in6 *)ai->ai_addr)->sin6_port);
}

static int is_v4(const struct addrinfo *ai, const char *text)
{
	struct in_addr want;
	inet_pton(AF_INET, text, &want);
	return ai->ai_family == AF_INET &&
	       ((const struct sockaddr_in *)ai->ai_addr)->sin_addr.s_addr == want.s_addr;
}

static int is_v6(const struct addrinfo *ai, const char *text)
{
	struct in6_addr want;
	inet_pton(AF_INET6, text, &want);
	return ai->ai_family == AF_INET6 &&
	       memcmp(&((const struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, &want,
	              sizeof(want)) == 0;
}

START_TEST(test_numeric_v4)
{
	weft_resolve_t req;
	req_init(&req, "127.0.0.1", "8080", AF_UNSPEC);
	ck_assert_int_eq(weft_resolve_numeric(&req), 0);
	ck_assert_int_eq(req.err, 0);
	ck_assert_ptr_nonnull(req.result);
	ck_assert(is_v4(req.result, "127.0.0.1"));
	ck_assert_int_eq(port_of(req.result), 8080);
	freeaddrinfo(req.result);

	/* A NULL service is port 0. */
	req_init(&req, "127.0.0.1", NULL, AF_INET);
	ck_assert_int_eq(weft_resolve_numeric(&req), 0);
	ck_assert_int_eq(port_of(req.result), 0);
	freeaddrinfo(req.result);
}
END_TEST

START_TEST(test_numeric_v6)
{
	weft_resolve_t req;
	req_init(&req, "::1", "443", AF_UNSPEC);
	ck_assert_int_eq(weft_resolve_numeric(&req), 0);
	ck_assert_ptr_nonnull(req.result);
	ck_assert(is_v6(req.result, "::1"));
	ck_assert_int_eq(port_of(req.result), 443);
	freeaddrinfo(req.result);
}
END_TEST

/* A NULL host is "any" (the wildcard, for binding), never a lookup. */
START_TEST(test_numeric_null_host)
{
	weft_resolve_t req;
	req_init(&req, NULL, "9000", AF_INET);
	ck_assert_int_eq(weft_resolve_numeric(&req), 0);
	ck_assert(is_v4(req.result, "0.0.0.0"));
	ck_assert_int_eq(port_of(req.result), 9000);
	freeaddrinfo(req.result);

	req_init(&req, NULL, NULL, AF_INET6);
	ck_assert_int_eq(weft_resolve_numeric(&req), 0);
	ck_assert(is_v6(req.result, "::"));
	ck_assert_int_eq(port_of(req.result), 0);
	freeaddrinfo(req.result);

	req_init(&req, NULL, "0", AF_UNSPEC);
	ck_assert_int_eq(weft_resolve_numeric(&req), 0);
	for (struct addrinfo *ai = req.result; ai; ai = ai->ai_next)
		ck_assert(is_v4(ai, "0.0.0.0") || is_v6(ai, "::"));
	freeaddrinfo(req.result);
}
END_TEST

/* A numeric address of the wrong family is an error, not "use the pool". */
START_TEST(test_numeric_error)
{
	weft_resolve_t req;
	req_init(&req, "::1", "80", AF_INET);
	int rc = weft_resolve_numeric(&req);
	ck_assert_int_lt(rc, 0);
	ck_assert_int_eq(req.err, rc);
	ck_assert_ptr_null(req.result);
}
END_TEST

START_TEST(test_localhost_pool)
{
	weft_resolve_t req;
	struct done d;
	done_init(&d);
	req_init(&req, "localhost", "80", AF_INET);
	ck_assert_int_eq(weft_resolve_numeric(&req), 1);
	ck_assert_ptr_null(req.result);

	ck_assert_int_eq(weft_resolver_submit(&req, on_done, &d), 0);
	ck_assert_int_eq(done_wait(&d, 1, 5000), 1);
	ck_assert_int_eq(req.err, 0);
	ck_assert_ptr_nonnull(req.result);
	int found = 0;
	for (struct addrinfo *ai = req.result; ai; ai = ai->ai_next) {
		found |= is_v4(ai, "127.0.0.1");
		ck_assert_int_eq(port_of(ai), 80);
	}
	ck_assert(found);
	ck_assert_int_eq(d.wrong_thread, 0);
	ck_assert_int_eq(d.signals_open, 0);
	freeaddrinfo(req.result);

	weft_resolver_shutdown();
	done_destroy(&d);
}
END_TEST

/* A numeric host with a service name still needs the services database,
 * so it goes to the pool. */
START_TEST(test_service_name_pool)
{
	weft_resolve_t req;
	struct done d;
	done_init(&d);
	req_init(&req, "127.0.0.1", "http", AF_INET);
	ck_assert_int_eq(weft_resolve_numeric(&req), 1);
	ck_assert_ptr_null(req.result);
	ck_assert_int_eq(weft_resolver_submit(&req, on_done, &d), 0);
	ck_assert_int_eq(done_wait(&d, 1, 5000), 1);

	/* Minimal systems may lack /etc/services (Debian's netbase). */
	struct servent *se = getservbyname("http", "tcp");
	if (se) {
		ck_assert_int_eq(req.err, 0);
		ck_assert(is_v4(req.result, "127.0.0.1"));
		ck_assert_int_eq(port_of(req.result), ntohs(se->s_port));
		freeaddrinfo(req.result);
	} else {
		ck_assert_int_lt(req.err, 0);
	}
	weft_resolver_shutdown();
	done_destroy(&d);
}
END_TEST

START_TEST(test_invalid_service)
{
	weft_resolve_t req;
	struct done d;
	done_init(&d);
	req_init(&req, "127.0.0.1", "no-such-service-weft", AF_INET);
	ck_assert_int_eq(weft_resolve_numeric(&req), 1);
	ck_assert_int_eq(weft_resolver_submit(&req, on_done, &d), 0);
	ck_assert_int_eq(done_wait(&d, 1, 5000), 1);
	ck_assert_int_lt(req.err, 0);
	ck_assert_ptr_null(req.result);
	/* A getaddrinfo code, in weft's EAI range (its magnitude is the
	 * platform's: glibc's codes are small, Winsock's are WSA values). */
	ck_assert_int_lt(req.err, WEFT_EAI_BASE);
	ck_assert_str_ne(weft_strerror(req.err), "unknown error");

	/* The blocking call reports the same. */
	int pooled = req.err;
	req_init(&req, "127.0.0.1", "no-such-service-weft", AF_INET);
	ck_assert_int_eq(weft_resolve_now(&req), pooled);
	ck_assert_int_eq(req.err, pooled);
	ck_assert_ptr_null(req.result);

	weft_resolver_shutdown();
	done_destroy(&d);
}
END_TEST

START_TEST(test_resolve_now)
{
	weft_resolve_t req;
	req_init(&req, "localhost", "25", AF_INET);
	ck_assert_int_eq(weft_resolve_now(&req), 0);
	ck_assert_int_eq(req.err, 0);
	ck_assert(is_v4(req.result, "127.0.0.1"));
	ck_assert_int_eq(port_of(req.result), 25);
	freeaddrinfo(req.result);
}
END_TEST

#define NPAR     8
#define DELAY_MS 300

/* With every lookup taking DELAY_MS, NPAR lookups finish in about
 * ceil(NPAR / WEFT_RESOLVER_THREADS) * DELAY_MS, not NPAR * DELAY_MS; and
 * submit never waits for a lookup. */
START_TEST(test_delay_parallel)
{
	weft_resolve_t req[NPAR];
	struct done d;
	done_init(&d);
	weft_resolver_set_delay(DELAY_MS);

	long long start = now_ms();
	for (int i = 0; i < NPAR; i++) {
		req_init(&req[i], "localhost", "80", AF_INET);
		long long t = now_ms();
		ck_assert_int_eq(weft_resolver_submit(&req[i], on_done, &d), 0);
		ck_assert_int_lt(now_ms() - t, 100);
	}
	ck_assert_int_eq(done_count(&d), 0);

	ck_assert_int_eq(done_wait(&d, NPAR, 5000), NPAR);
	long long elapsed = now_ms() - start;
	int rounds = (NPAR + WEFT_RESOLVER_THREADS - 1) / WEFT_RESOLVER_THREADS;
	ck_assert_int_ge(elapsed, rounds * DELAY_MS - 20); /* never above the cap */
	ck_assert_int_lt(elapsed, NPAR * DELAY_MS / 2);
	for (int i = 0; i < NPAR; i++) {
		ck_assert_int_eq(req[i].err, 0);
		freeaddrinfo(req[i].result);
	}
	ck_assert_int_eq(d.wrong_thread, 0);
	ck_assert_int_eq(d.signals_open, 0);

	weft_resolver_set_delay(0);
	weft_resolver_shutdown();
	done_destroy(&d);
}
END_TEST

START_TEST(test_shutdown_restart)
{
	weft_resolve_t req[6];
	struct done d;
	done_init(&d);

	weft_resolver_shutdown(); /* never started: nothing to do */

	req_init(&req[0], "localhost", "1", AF_INET);
	ck_assert_int_eq(weft_resolver_submit(&req[0], on_done, &d), 0);
	ck_assert_int_eq(done_wait(&d, 1, 5000), 1);
	freeaddrinfo(req[0].result);
	weft_resolver_shutdown();
	weft_resolver_shutdown();

	/* Restarts on the next submit. */
	req_init(&req[0], "localhost", "2", AF_INET);
	ck_assert_int_eq(weft_resolver_submit(&req[0], on_done, &d), 0);
	ck_assert_int_eq(done_wait(&d, 2, 5000), 2);
	ck_assert_int_eq(req[0].err, 0);
	ck_assert_int_eq(port_of(req[0].result), 2);
	freeaddrinfo(req[0].result);

	/* Shutdown lets queued requests finish first (6 > the thread cap, so
	 * some are still queued when it starts). */
	weft_resolver_set_delay(100);
	for (int i = 0; i < 6; i++) {
		req_init(&req[i], "localhost", "3", AF_INET);
		ck_assert_int_eq(weft_resolver_submit(&req[i], on_done, &d), 0);
	}
	weft_resolver_shutdown();
	ck_assert_int_eq(done_count(&d), 8);
	for (int i = 0; i < 6; i++) {
		ck_assert_int_eq(req[i].err, 0);
		freeaddrinfo(req[i].result);
	}
	weft_resolver_set_delay(0);

	req_init(&req[0], "localhost", "4", AF_INET);
	ck_assert_int_eq(weft_resolver_submit(&req[0], on_done, &d), 0);
	ck_assert_int_eq(done_wait(&d, 9, 5000), 9);
	freeaddrinfo(req[0].result);
	weft_resolver_shutdown();
	done_destroy(&d);
}
END_TEST

/* A callback may submit a follow-up, even while a shutdown is joining its
 * thread: the follow-up still completes before shutdown returns. */
struct chain {
	weft_resolve_t first, second;
	struct done d;
	int submit_rc;
};

static void on_first(weft_resolve_t *req, void *arg)
{
	struct chain *c = arg;
	(void)req;
	c->submit_rc = weft_resolver_submit(&c->second, on_done, &c->d);
	on_done(req, &c->d);
}

START_TEST(test_submit_from_callback)
{
	struct chain c;
	memset(&c, 0, sizeof(c));
	done_init(&c.d);
	req_init(&c.first, "localhost", "5", AF_INET);
	req_init(&c.second, "localhost", "6", AF_INET);

	weft_resolver_set_delay(100);
	ck_assert_int_eq(weft_resolver_submit(&c.first, on_first, &c), 0);
	weft_resolver_shutdown(); /* starts while the first lookup sleeps */
	ck_assert_int_eq(c.submit_rc, 0);
	ck_assert_int_eq(done_count(&c.d), 2);
	ck_assert_int_eq(c.second.err, 0);
	ck_assert_int_eq(port_of(c.second.result), 6);
	freeaddrinfo(c.first.result);
	freeaddrinfo(c.second.result);
	weft_resolver_set_delay(0);
	done_destroy(&c.d);
}
END_TEST

/* weft_resolver_stop never waits for a lookup: the queued ones are
 * cancelled at once, the ones in progress finish by themselves (their
 * threads detached), and the pool restarts on the next submit. */
START_TEST(test_stop_does_not_wait)
{
	weft_resolve_t req[6];
	struct done d;
	done_init(&d);
	weft_resolver_set_delay(400);
	for (int i = 0; i < 6; i++) {
		req_init(&req[i], "localhost", "7", AF_INET);
		ck_assert_int_eq(weft_resolver_submit(&req[i], on_done, &d), 0);
	}
	/* Let the four threads take the first four. */
	tu_sleep_ns(100 * 1000000u);
	long long start = now_ms();
	weft_resolver_stop();
	long long took = now_ms() - start;
	ck_assert_msg(took < 250, "stop took %lld ms", took);
	/* 6 > the thread cap: the last ones were still queued, and were
	 * cancelled on this thread before stop returned (the others are
	 * still being looked up: their requests are not ours to read yet). */
	weft_mutex_lock(&d.lock);
	int cancelled = d.cancelled, count = d.count;
	weft_mutex_unlock(&d.lock);
	ck_assert_int_eq(cancelled, 6 - WEFT_RESOLVER_THREADS);
	ck_assert_int_eq(count, cancelled);
	/* The lookups in progress complete by themselves. */
	ck_assert_int_eq(done_wait(&d, 6, 5000), 6);
	for (int i = 0; i < 6; i++) {
		if (req[i].err != -ECANCELED) {
			ck_assert_int_eq(req[i].err, 0);
			freeaddrinfo(req[i].result);
		}
	}
	weft_resolver_set_delay(0);
	/* And the pool starts again. */
	req_init(&req[0], "localhost", "8", AF_INET);
	ck_assert_int_eq(weft_resolver_submit(&req[0], on_done, &d), 0);
	ck_assert_int_eq(done_wait(&d, 7, 5000), 7);
	ck_assert_int_eq(req[0].err, 0);
	freeaddrinfo(req[0].result);
	weft_resolver_stop();
	weft_resolver_stop(); /* idle: joins, then nothing to do */
	done_destroy(&d);
}
END_TEST

static Suite *resolver_suite(void)
{
	Suite *s = suite_create("resolver");
	TCase *tc = tcase_create("numeric");
	tcase_add_test(tc, test_numeric_v4);
	tcase_add_test(tc, test_numeric_v6);
	tcase_add_test(tc, test_numeric_null_host);
	tcase_add_test(tc, test_numeric_error);
	tcase_add_test(tc, test_resolve_now);
	suite_add_tcase(s, tc);

	TCase *pool = tcase_create("pool");
	tcase_set_timeout(pool, 20);
	tcase_add_test(pool, test_localhost_pool);
	tcase_add_test(pool, test_service_name_pool);
	tcase_add_test(pool, test_invalid_service);
	tcase_add_test(pool, test_delay_parallel);
	tcase_add_test(pool, test_shutdown_restart);
	tcase_add_test(pool, test_submit_from_callback);
	tcase_add_test(pool, test_stop_does_not_wait);
	suite_add_tcase(s, pool);
	return s;
}

WEFT_CHECK_MAIN(resolver_suite)
