/* lib/sock-win32.c, run under Wine: the Winsock primitives keep sock.h's
 * contract (non-blocking sockets, -EAGAIN when they would block,
 * -EINPROGRESS for a connect under way), Winsock's errors arrive as the
 * -errno values weft names portably (refused, address in use, broken
 * pipe, bad descriptor), datagrams work and an earlier ICMP error does not
 * poison the next receive, options round-trip, addresses format. */
#include "sock.h"

#include <errno.h>
#include <string.h>

#include "checkutil.h"
#include "clock.h"

static struct sockaddr_in loopback4(int port)
{
	struct sockaddr_in in;

	memset(&in, 0, sizeof in);
	in.sin_family = AF_INET;
	in.sin_port = htons((u_short)port);
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return in;
}

/* A socket of the given type bound to 127.0.0.1 on a system-chosen port. */
static int bound(int type, struct sockaddr_in *at)
{
	int fd = weft_sock_open(AF_INET, type, 0);
	socklen_t len = sizeof *at;

	ck_assert_int_ge(fd, 0);
	*at = loopback4(0);
	ck_assert_int_eq(weft_sock_bind(fd, (struct sockaddr *)at, sizeof *at), 0);
	ck_assert_int_eq(getsockname((SOCKET)(intptr_t)fd, (struct sockaddr *)at, &len), 0);
	return fd;
}

/* Wait (select) until fd is writable or failed, within 5 s. */
static void wait_connect(int fd)
{
	fd_set w, e;
	struct timeval tv = {5, 0};

	FD_ZERO(&w);
	FD_ZERO(&e);
	FD_SET((SOCKET)(intptr_t)fd, &w);
	FD_SET((SOCKET)(intptr_t)fd, &e);
	ck_assert_int_eq(select(0, NULL, &w, &e, &tv), 1);
}

/* Retry op until it stops saying -EAGAIN, within 5 s. */
#define RETRY(var, op)                                                                             \
	do {                                                                                       \
		uint64_t t0_ = weft_clock_ns();                                                    \
		while (((var) = (op)) == -EAGAIN && weft_clock_ns() - t0_ < 5000000000u)           \
			Sleep(1);                                                                  \
	} while (0)

START_TEST(test_tcp_roundtrip)
{
	struct sockaddr_in at, peer;
	socklen_t plen = sizeof peer;
	int l = bound(SOCK_STREAM, &at), c, a, rc;
	char buf[16];
	ssize_t n;

	ck_assert_int_eq(weft_sock_listen(l, 8), 0);
	RETRY(a, weft_sock_accept(l, NULL, NULL));
	ck_assert_int_eq(a, -EAGAIN); /* nobody yet */
	c = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(c, 0);
	rc = weft_sock_connect(c, (struct sockaddr *)&at, sizeof at);
	ck_assert(rc == 0 || rc == -EINPROGRESS);
	wait_connect(c);
	ck_assert_int_eq(weft_sock_connect_result(c), 0);
	RETRY(a, weft_sock_accept(l, (struct sockaddr *)&peer, &plen));
	ck_assert_int_ge(a, 0);
	ck_assert_int_eq(peer.sin_family, AF_INET);

	ck_assert_int_eq(weft_sock_recv(a, buf, sizeof buf, 0), -EAGAIN); /* non-blocking */
	ck_assert_int_eq(weft_sock_send(c, "hello", 5, 0), 5);
	RETRY(n, weft_sock_recv(a, buf, sizeof buf, 0));
	ck_assert_int_eq(n, 5);
	ck_assert_int_eq(memcmp(buf, "hello", 5), 0);

	/* Shut the write side: the peer reads the end, and writing after
	 * the shutdown is a broken pipe. */
	ck_assert_int_eq(weft_sock_shutdown(c, SHUT_WR), 0);
	RETRY(n, weft_sock_recv(a, buf, sizeof buf, 0));
	ck_assert_int_eq(n, 0);
	ck_assert_int_eq(weft_sock_send(c, "x", 1, 0), -EPIPE);
	weft_sock_close(a);
	weft_sock_close(c);
	weft_sock_close(l);
}
END_TEST

START_TEST(test_error_mapping)
{
	struct sockaddr_in at;
	int l = bound(SOCK_STREAM, &at), again, c, rc;

	/* The port is bound (not listening): a second bind is in use. */
	again = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_eq(weft_sock_bind(again, (struct sockaddr *)&at, sizeof at), -EADDRINUSE);
	weft_sock_close(again);
	/* Nobody listens: refused, reported by connect_result. */
	c = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	rc = weft_sock_connect(c, (struct sockaddr *)&at, sizeof at);
	ck_assert(rc == -EINPROGRESS || rc == -ECONNREFUSED);
	if (rc == -EINPROGRESS) {
		wait_connect(c);
		ck_assert_int_eq(weft_sock_connect_result(c), -ECONNREFUSED);
	}
	weft_sock_close(c);
	weft_sock_close(l);
	/* Not a socket. */
	ck_assert_int_eq(weft_sock_listen(-1, 1), -EBADF);
	ck_assert_int_eq(weft_sock_open(AF_INET, SOCK_STREAM, 12345), -EPROTONOSUPPORT);
}
END_TEST

START_TEST(test_udp)
{
	struct sockaddr_in a_at, b_at, from, gone_at;
	socklen_t flen = sizeof from;
	int a = bound(SOCK_DGRAM, &a_at), b = bound(SOCK_DGRAM, &b_at);
	int gone = bound(SOCK_DGRAM, &gone_at);
	char buf[8];
	ssize_t n;

	/* A datagram to a closed port draws an ICMP error; the next receive
	 * still just says "nothing yet". */
	weft_sock_close(gone);
	ck_assert_int_eq(
	    weft_sock_sendto(a, "x", 1, 0, (struct sockaddr *)&gone_at, sizeof gone_at), 1);
	Sleep(50);
	ck_assert_int_eq(weft_sock_recvfrom(a, buf, sizeof buf, 0, NULL, NULL), -EAGAIN);

	ck_assert_int_eq(weft_sock_sendto(a, "ping", 4, 0, (struct sockaddr *)&b_at, sizeof b_at),
	                 4);
	RETRY(n, weft_sock_recvfrom(b, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen));
	ck_assert_int_eq(n, 4);
	ck_assert_int_eq(weft_sa_port((struct sockaddr *)&from),
	                 weft_sa_port((struct sockaddr *)&a_at));
	/* Longer than the buffer: the part that fits, as on Linux. */
	ck_assert_int_eq(
	    weft_sock_sendto(a, "0123456789", 10, 0, (struct sockaddr *)&b_at, sizeof b_at), 10);
	RETRY(n, weft_sock_recvfrom(b, buf, 4, 0, NULL, NULL));
	ck_assert_int_eq(n, 4);
	ck_assert_int_eq(memcmp(buf, "0123", 4), 0);
	weft_sock_close(a);
	weft_sock_close(b);
}
END_TEST

START_TEST(test_options)
{
	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0), v = -5;
	const weft_sockopt_t *o;

	ck_assert_ptr_null(weft_sockopt_find("no_such_option"));
	o = weft_sockopt_find("tcp_nodelay");
	ck_assert_ptr_nonnull(o);
	ck_assert_int_eq(weft_sockopt_set_int(fd, o, 1), 0);
	ck_assert_int_eq(weft_sockopt_get_int(fd, o, &v), 0);
	ck_assert_int_eq(v, 1);
	ck_assert_int_eq(weft_sockopt_set_int(fd, o, 0), 0);
	ck_assert_int_eq(weft_sockopt_get_int(fd, o, &v), 0);
	ck_assert_int_eq(v, 0);
	o = weft_sockopt_find("so_linger");
	ck_assert_int_eq(weft_sockopt_set_int(fd, o, 7), 0);
	ck_assert_int_eq(weft_sockopt_get_int(fd, o, &v), 0);
	ck_assert_int_eq(v, 7);
	ck_assert_int_eq(weft_sockopt_set_int(fd, o, -1), 0);
	ck_assert_int_eq(weft_sockopt_get_int(fd, o, &v), 0);
	ck_assert_int_eq(v, -1);
	{
		double sec = -1;

		o = weft_sockopt_find("so_rcvtimeo");
		ck_assert_int_eq(weft_sockopt_set_time(fd, o, 1.5), 0);
		ck_assert_int_eq(weft_sockopt_get_time(fd, o, &sec), 0);
		ck_assert(sec > 1.49 && sec < 1.51);
		ck_assert_int_eq(weft_sockopt_set_time(fd, o, -1), -EINVAL);
		ck_assert_int_eq(weft_sockopt_set_int(fd, o, 1), -EINVAL); /* not an int */
	}
	o = weft_sockopt_find("so_type");
	ck_assert_int_eq(weft_sockopt_get_int(fd, o, &v), 0);
	ck_assert_int_eq(v, SOCK_STREAM);
	ck_assert_int_eq(weft_sockopt_set_int(fd, o, 1), -ENOPROTOOPT);
	ck_assert_int_eq(weft_sockopt_set_int(fd, NULL, 1), -ENOPROTOOPT);
	weft_sock_close(fd);
}
END_TEST

START_TEST(test_addresses)
{
	struct sockaddr_in in = loopback4(8080);
	struct sockaddr_in6 in6;
	char buf[128];

	ck_assert_str_eq(weft_sa_tostring((struct sockaddr *)&in, buf, sizeof buf),
	                 "127.0.0.1:8080");
	ck_assert_int_eq(weft_sa_len((struct sockaddr *)&in), sizeof in);
	memset(&in6, 0, sizeof in6);
	in6.sin6_family = AF_INET6;
	in6.sin6_port = htons(443);
	in6.sin6_addr.s6_addr[15] = 1;
	ck_assert_str_eq(weft_sa_tostring((struct sockaddr *)&in6, buf, sizeof buf), "[::1]:443");
	ck_assert_int_eq(weft_sa_port((struct sockaddr *)&in6), 443);
	ck_assert_ptr_null(weft_sa_tostring((struct sockaddr *)&in, buf, 8)); /* too small */
}
END_TEST

static Suite *sock_suite(void)
{
	Suite *s = suite_create("sock-win32");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_tcp_roundtrip);
	tcase_add_test(tc, test_error_mapping);
	tcase_add_test(tc, test_udp);
	tcase_add_test(tc, test_options);
	tcase_add_test(tc, test_addresses);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(sock_suite)
