/* Shared scaffolding for the Check unit tests.  Run under `make check`, the
 * environment sets CK_TAP_LOG_FILE_NAME=- so Check prints TAP for the
 * Automake driver; each test forks, so a crash fails one test only. */
#ifndef WEFT_CHECKUTIL_H
#define WEFT_CHECKUTIL_H

#include <check.h>
#include <stdint.h>
#include <stdlib.h>

#define WEFT_CHECK_MAIN(make_suite)                                        \
	int main(void)                                                     \
	{                                                                  \
		SRunner *sr = srunner_create(make_suite());                \
		srunner_run_all(sr, CK_ENV);                               \
		int failed = srunner_ntests_failed(sr);                    \
		srunner_free(sr);                                          \
		return failed ? EXIT_FAILURE : EXIT_SUCCESS;               \
	}

/* What the tests need that differs per platform, in one place: a
 * connected non-blocking stream pair (a socketpair; on Windows, which has
 * no socketpair, a TCP connection over loopback), closing a socket,
 * raising the descriptor limit (Windows has none to raise), and sleeping. */
#include <errno.h>
#include <string.h>

#include "sock.h"
#include "thread.h"

/* n divided by WEFT_TEST_SCALE (at least 1): slow builds and Wine run
 * smaller loads, with the same invariants. */
static inline int tu_scaled(int n)
{
	const char *s = getenv("WEFT_TEST_SCALE");
	int k = s && atoi(s) > 0 ? atoi(s) : 1;

	return n / k > 0 ? n / k : 1;
}

static inline void tu_close(int fd)
{
	weft_sock_close(fd);
}

static inline void tu_sleep_ns(uint64_t ns)
{
	weft_thread_sleep_ns(ns);
}

#if defined(_WIN32)
/* A blocking TCP/IPv4 socket. */
static inline int tu_tcp_socket(void)
{
	WSADATA wsa;

	WSAStartup(MAKEWORD(2, 2), &wsa); /* counted: harmless if repeated */
	SOCKET s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
	return s == INVALID_SOCKET ? -1 : (int)(intptr_t)s;
}

/* connect(2) on a blocking socket: 0 or -errno (the errors tests expect). */
static inline int tu_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (connect((SOCKET)(intptr_t)fd, sa, len) == 0)
		return 0;
	return WSAGetLastError() == WSAECONNREFUSED ? -ECONNREFUSED : -EIO;
}

static inline int tu_pair(int sv[2])
{
	struct sockaddr_in sa;
	socklen_t len = sizeof sa;
	int l = weft_sock_open(AF_INET, SOCK_STREAM, 0), c = -1, a = -1, rc;

	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || weft_sock_bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 ||
	    weft_sock_listen(l, 1) < 0 || getsockname(l, (struct sockaddr *)&sa, &len) != 0)
		goto fail;
	c = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	rc = c < 0 ? c : weft_sock_connect(c, (struct sockaddr *)&sa, sizeof sa);
	if (rc < 0 && rc != -EINPROGRESS)
		goto fail;
	for (int i = 0; i < 5000 && (a = weft_sock_accept(l, NULL, NULL)) == -EAGAIN; i++)
		weft_thread_sleep_ns(1000000);
	if (a < 0)
		goto fail;
	weft_sock_close(l);
	sv[0] = c;
	sv[1] = a;
	return 0;
fail:
	if (l >= 0)
		weft_sock_close(l);
	if (c >= 0)
		weft_sock_close(c);
	return -1;
}

static inline int tu_raise_nofile(unsigned long n)
{
	(void)n;
	return 1;
}

/* Whether the calling thread blocks the signals weft's threads leave to
 * the main one (Windows has none). */
static inline int tu_signals_blocked(void)
{
	return 1;
}
#else
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>

static inline int tu_signals_blocked(void)
{
	sigset_t mask;

	pthread_sigmask(SIG_SETMASK, NULL, &mask);
	return sigismember(&mask, SIGINT) && sigismember(&mask, SIGTERM) &&
	       sigismember(&mask, SIGUSR1) && sigismember(&mask, SIGCHLD);
}

static inline int tu_tcp_socket(void)
{
	return socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

static inline int tu_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	return connect(fd, sa, len) == 0 ? 0 : -errno;
}

static inline int tu_pair(int sv[2])
{
	return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv);
}

/* At least n descriptors if the hard limit allows: 1 if so. */
static inline int tu_raise_nofile(unsigned long n)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return 0;
	if (rl.rlim_cur < n) {
		rl.rlim_cur = rl.rlim_max < n ? rl.rlim_max : n;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	return getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur >= n;
}
#endif

#endif
