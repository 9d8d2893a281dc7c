/* lib/sock.c: socket primitives, options and address formatting.  Network
 * tests use 127.0.0.1 and ::1 only, on ports the kernel picks. */
#include "checkutil.h"
#include "sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* Helpers. */

static struct sockaddr_in loopback4(int port)
{
	struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(port)};
	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return in;
}

static int wait_fd(int fd, short events)
{
	struct pollfd p = {.fd = fd, .events = events};
	return poll(&p, 1, 5000);
}

static int is_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && (fl & O_NONBLOCK);
}

static int is_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);
	return fl >= 0 && (fl & FD_CLOEXEC);
}

/* A socket of the given type bound to 127.0.0.1 on a kernel-chosen port;
 * the address goes to *sa. */
static int bound4(int type, struct sockaddr_in *sa)
{
	int fd = weft_sock_open(AF_INET, type, 0);
	ck_assert_int_ge(fd, 0);
	struct sockaddr_in in = loopback4(0);
	ck_assert_int_eq(weft_sock_bind(fd, (struct sockaddr *)&in, sizeof in), 0);
	socklen_t len = sizeof *sa;
	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)sa, &len), 0);
	ck_assert_int_ne(ntohs(sa->sin_port), 0);
	return fd;
}

/* Start a connect and see it through: the final result, 0 or -errno.  A
 * loopback connect may finish (or be refused) within the call, so an
 * immediate answer is accepted as well as -EINPROGRESS. */
static int connect_wait(int fd, const struct sockaddr *sa, socklen_t len)
{
	int r = weft_sock_connect(fd, sa, len);
	if (r != -EINPROGRESS)
		return r;
	ck_assert_int_eq(wait_fd(fd, POLLOUT), 1);
	return weft_sock_connect_result(fd);
}

/* A connected TCP pair over 127.0.0.1: *client and *server. */
static void tcp_pair(int *client, int *server)
{
	struct sockaddr_in la;
	int lfd = bound4(SOCK_STREAM, &la);
	ck_assert_int_eq(weft_sock_listen(lfd, 8), 0);

	int c = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(c, 0);
	ck_assert_int_eq(connect_wait(c, (struct sockaddr *)&la, sizeof la), 0);
	ck_assert_int_eq(wait_fd(lfd, POLLIN), 1);
	int s = weft_sock_accept(lfd, NULL, NULL);
	ck_assert_int_ge(s, 0);
	weft_sock_close(lfd);
	*client = c;
	*server = s;
}

static const weft_sockopt_t *opt(const char *name)
{
	const weft_sockopt_t *o = weft_sockopt_find(name);
	ck_assert_msg(o != NULL, "option %s missing", name);
	return o;
}

static int get_int(int fd, const char *name)
{
	int v = -12345;
	ck_assert_int_eq(weft_sockopt_get_int(fd, opt(name), &v), 0);
	return v;
}

/* An AF_INET6 socket, or -1 (after a TAP comment) when the host has no
 * IPv6 at all. */
static int open6(int type)
{
	int fd = weft_sock_open(AF_INET6, type, 0);
	if (fd == -EAFNOSUPPORT) {
		fprintf(stderr, "# skip: IPv6 unavailable\n");
		return -1;
	}
	ck_assert_int_ge(fd, 0);
	return fd;
}

/* Opening, flags, connecting. */

START_TEST(test_open_flags)
{
	int types[] = {SOCK_STREAM, SOCK_DGRAM};
	for (int i = 0; i < 2; i++) {
		int fd = weft_sock_open(AF_INET, types[i], 0);
		ck_assert_int_ge(fd, 0);
		ck_assert(is_nonblock(fd));
		ck_assert(is_cloexec(fd));
		weft_sock_close(fd);
	}
	int fd = weft_sock_open(AF_UNIX, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	ck_assert(is_nonblock(fd) && is_cloexec(fd));
	weft_sock_close(fd);

	ck_assert_int_eq(weft_sock_open(-1, SOCK_STREAM, 0), -EAFNOSUPPORT);
	ck_assert_int_lt(weft_sock_open(AF_INET, SOCK_STREAM, IPPROTO_UDP), 0);
	weft_sock_close(-1); /* harmless */
}
END_TEST

/* A port that is bound but not listening answers SYN with RST, without a
 * window in which another process could take the port. */
START_TEST(test_connect_refused)
{
	struct sockaddr_in closed;
	int hold = bound4(SOCK_STREAM, &closed);

	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd, 0);
	int r = weft_sock_connect(fd, (struct sockaddr *)&closed, sizeof closed);
	ck_assert_msg(r == -EINPROGRESS || r == -ECONNREFUSED, "connect: %d", r);
	if (r == -EINPROGRESS) {
		ck_assert_int_eq(wait_fd(fd, POLLOUT), 1);
		ck_assert_int_eq(weft_sock_connect_result(fd), -ECONNREFUSED);
	}
	weft_sock_close(fd);
	weft_sock_close(hold);
}
END_TEST

START_TEST(test_connect_accept)
{
	struct sockaddr_in la;
	int lfd = bound4(SOCK_STREAM, &la);
	ck_assert_int_eq(weft_sock_listen(lfd, 8), 0);

	/* Nothing pending: try once, would block. */
	ck_assert_int_eq(weft_sock_accept(lfd, NULL, NULL), -EAGAIN);

	int c = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(c, 0);
	int r = weft_sock_connect(c, (struct sockaddr *)&la, sizeof la);
	ck_assert_msg(r == 0 || r == -EINPROGRESS, "connect: %d", r);
	ck_assert_int_eq(wait_fd(c, POLLOUT), 1);
	ck_assert_int_eq(weft_sock_connect_result(c), 0);
	/* Calling connect again: after -EINPROGRESS, Linux first reports the
	 * finished connect as 0, then -EISCONN. */
	r = weft_sock_connect(c, (struct sockaddr *)&la, sizeof la);
	if (r == 0)
		r = weft_sock_connect(c, (struct sockaddr *)&la, sizeof la);
	ck_assert_int_eq(r, -EISCONN);

	ck_assert_int_eq(wait_fd(lfd, POLLIN), 1);
	struct sockaddr_storage peer;
	socklen_t plen = sizeof peer;
	int s = weft_sock_accept(lfd, (struct sockaddr *)&peer, &plen);
	ck_assert_int_ge(s, 0);
	ck_assert(is_nonblock(s));
	ck_assert(is_cloexec(s));
	ck_assert_int_eq(plen, sizeof(struct sockaddr_in));
	ck_assert_int_eq(weft_sa_len((struct sockaddr *)&peer), plen);

	/* The peer address accept reports is the client's own. */
	struct sockaddr_in ca;
	socklen_t clen = sizeof ca;
	ck_assert_int_eq(getsockname(c, (struct sockaddr *)&ca, &clen), 0);
	ck_assert_int_eq(weft_sa_port((struct sockaddr *)&peer), ntohs(ca.sin_port));
	char buf[128], want[128];
	snprintf(want, sizeof want, "127.0.0.1:%d", ntohs(ca.sin_port));
	ck_assert_str_eq(weft_sa_tostring((struct sockaddr *)&peer, buf, sizeof buf), want);

	/* Data both ways; an empty receive queue would block. */
	ck_assert_int_eq(weft_sock_recv(s, buf, sizeof buf, 0), -EAGAIN);
	ck_assert_int_eq(weft_sock_send(c, "hello", 5, 0), 5);
	ck_assert_int_eq(wait_fd(s, POLLIN), 1);
	ck_assert_int_eq(weft_sock_recv(s, buf, sizeof buf, 0), 5);
	ck_assert(memcmp(buf, "hello", 5) == 0);
	ck_assert_int_eq(weft_sock_send(s, "ok", 2, 0), 2);
	ck_assert_int_eq(wait_fd(c, POLLIN), 1);
	ck_assert_int_eq(weft_sock_recv(c, buf, sizeof buf, MSG_PEEK), 2);
	ck_assert_int_eq(weft_sock_recv(c, buf, sizeof buf, 0), 2);

	/* Half close: the server reads end of stream. */
	ck_assert_int_eq(weft_sock_shutdown(c, SHUT_WR), 0);
	ck_assert_int_eq(wait_fd(s, POLLIN), 1);
	ck_assert_int_eq(weft_sock_recv(s, buf, sizeof buf, 0), 0);
	ck_assert_int_eq(weft_sock_shutdown(c, 42), -EINVAL);

	weft_sock_close(s);
	weft_sock_close(c);
	weft_sock_close(lfd);
}
END_TEST

START_TEST(test_errors)
{
	char b;
	ck_assert_int_eq(weft_sock_recv(-1, &b, 1, 0), -EBADF);
	ck_assert_int_eq(weft_sock_send(-1, &b, 1, 0), -EBADF);
	ck_assert_int_eq(weft_sock_listen(-1, 1), -EBADF);

	/* Binding a port twice. */
	struct sockaddr_in sa;
	int a = bound4(SOCK_STREAM, &sa);
	ck_assert_int_eq(weft_sock_listen(a, 1), 0);
	int b2 = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_eq(weft_sock_bind(b2, (struct sockaddr *)&sa, sizeof sa), -EADDRINUSE);
	/* recv on a socket that never connected. */
	ck_assert_int_eq(weft_sock_recv(b2, &b, 1, 0), -ENOTCONN);
	weft_sock_close(b2);
	weft_sock_close(a);
}
END_TEST

/* send() to a closed peer: -EPIPE and no SIGPIPE.  The default disposition
 * is restored first, so a signal would kill the test (Check forks, so that
 * shows up as a failure). */
START_TEST(test_send_epipe_unix)
{
	signal(SIGPIPE, SIG_DFL);
	int sv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	ck_assert_int_eq(weft_sock_send(sv[0], "x", 1, 0), -EPIPE);
	ck_assert_int_eq(weft_sock_send(sv[0], "x", 1, MSG_DONTWAIT), -EPIPE);
	close(sv[0]);

	int dv[2];
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, dv), 0);
	close(dv[1]);
	ck_assert_int_eq(weft_sock_sendto(dv[0], "x", 1, 0, NULL, 0), -EPIPE);
	close(dv[0]);
}
END_TEST

START_TEST(test_send_epipe_tcp)
{
	signal(SIGPIPE, SIG_DFL);
	int c, s;
	tcp_pair(&c, &s);
	weft_sock_close(s);

	/* The first send after the peer closes may be accepted (the peer's
	 * RST comes back in answer to it); after that, writes fail. */
	ssize_t r = 0;
	for (int i = 0; i < 100 && r >= 0; i++) {
		r = weft_sock_send(c, "data", 4, 0);
		if (r >= 0)
			usleep(10000);
	}
	ck_assert_msg(r == -EPIPE || r == -ECONNRESET, "send: %zd", r);
	ck_assert_int_eq(weft_sock_send(c, "data", 4, 0), -EPIPE);
	weft_sock_close(c);
}
END_TEST

START_TEST(test_udp)
{
	struct sockaddr_in aa, ba;
	int a = bound4(SOCK_DGRAM, &aa);
	int b = bound4(SOCK_DGRAM, &ba);
	char buf[64];
	struct sockaddr_storage from;
	socklen_t flen = sizeof from;

	ck_assert_int_eq(weft_sock_recvfrom(b, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen),
	                 -EAGAIN);

	ck_assert_int_eq(weft_sock_sendto(a, "ping", 4, 0, (struct sockaddr *)&ba, sizeof ba), 4);
	ck_assert_int_eq(wait_fd(b, POLLIN), 1);
	flen = sizeof from;
	ck_assert_int_eq(weft_sock_recvfrom(b, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen),
	                 4);
	ck_assert(memcmp(buf, "ping", 4) == 0);
	ck_assert_int_eq(flen, sizeof(struct sockaddr_in));
	ck_assert_int_eq(from.ss_family, AF_INET);
	ck_assert_int_eq(weft_sa_port((struct sockaddr *)&from), ntohs(aa.sin_port));
	ck_assert_int_eq(((struct sockaddr_in *)&from)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));

	/* Empty datagrams are datagrams; NULL address arguments are fine. */
	ck_assert_int_eq(weft_sock_sendto(b, "", 0, 0, (struct sockaddr *)&aa, sizeof aa), 0);
	ck_assert_int_eq(wait_fd(a, POLLIN), 1);
	ck_assert_int_eq(weft_sock_recvfrom(a, buf, sizeof buf, 0, NULL, NULL), 0);

	/* An unconnected UDP socket needs an address. */
	ck_assert_int_eq(weft_sock_send(a, "x", 1, 0), -EDESTADDRREQ);
	/* Connected, send and recv work. */
	ck_assert_int_eq(weft_sock_connect(a, (struct sockaddr *)&ba, sizeof ba), 0);
	ck_assert_int_eq(weft_sock_send(a, "abc", 3, 0), 3);
	ck_assert_int_eq(wait_fd(b, POLLIN), 1);
	ck_assert_int_eq(weft_sock_recv(b, buf, sizeof buf, 0), 3);

	weft_sock_close(a);
	weft_sock_close(b);
}
END_TEST

/* Options. */

START_TEST(test_opt_find)
{
	ck_assert_ptr_null(weft_sockopt_find("no_such_option"));
	ck_assert_ptr_null(weft_sockopt_find(""));
	ck_assert_ptr_null(weft_sockopt_find("SO_REUSEADDR"));
	ck_assert_ptr_null(weft_sockopt_find("so_reuseaddr "));

	const weft_sockopt_t *o = weft_sockopt_find("tcp_nodelay");
	ck_assert_ptr_nonnull(o);
	ck_assert_str_eq(o->name, "tcp_nodelay");
	ck_assert_int_eq(o->level, IPPROTO_TCP);
	ck_assert_int_eq(o->optname, TCP_NODELAY);
	ck_assert_int_eq(o->kind, WEFT_OPT_BOOL);
	ck_assert_int_eq(o->readonly, 0);

	/* Every entry is found under its own name: the names are unique. */
	int n = 0;
	for (const weft_sockopt_t *p = weft_sockopts; p->name; p++, n++)
		ck_assert_ptr_eq(weft_sockopt_find(p->name), p);
	ck_assert_int_eq(n, 86);

	const char *ro[] = {"so_error", "so_type", "so_acceptconn", "so_domain", "so_protocol"};
	for (int i = 0; i < 5; i++)
		ck_assert(opt(ro[i])->readonly);
	ck_assert_int_eq(opt("so_linger")->kind, WEFT_OPT_LINGER);
	ck_assert_int_eq(opt("tcp_congestion")->kind, WEFT_OPT_STRING);
	ck_assert_int_eq(opt("so_bindtodevice")->kind, WEFT_OPT_STRING);
	ck_assert_int_eq(opt("so_rcvbuf")->kind, WEFT_OPT_INT);
}
END_TEST

/* Every option can be read on a socket it applies to; this catches a wrong
 * level or kind in the table. */
START_TEST(test_opt_get_all)
{
	int fd4 = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(fd4, 0);
	int fd6 = open6(SOCK_STREAM);
	int fdu = weft_sock_open(AF_INET, SOCK_DGRAM, 0);
	ck_assert_int_ge(fdu, 0);

	for (const weft_sockopt_t *o = weft_sockopts; o->name; o++) {
		int fd = o->level == IPPROTO_IPV6 ? fd6 : o->level == IPPROTO_UDP ? fdu : fd4;
		if (fd < 0)
			continue;
		/* The path MTU is known only once connected; credentials are
		 * for unix sockets. */
		if (strcmp(o->name, "ip_mtu") == 0 || strcmp(o->name, "ipv6_mtu") == 0 ||
		    strcmp(o->name, "so_passcred") == 0)
			continue;
		int r;
		if (o->kind == WEFT_OPT_STRING) {
			char s[64];
			r = weft_sockopt_get_str(fd, o, s, sizeof s);
		} else if (o->kind == WEFT_OPT_TIME) {
			double t;
			r = weft_sockopt_get_time(fd, o, &t);
		} else if (o->kind == WEFT_OPT_STRUCT) {
			char raw[512];
			socklen_t len = sizeof raw;
			r = weft_sockopt_get_raw(fd, o, raw, &len);
		} else {
			int v;
			r = weft_sockopt_get_int(fd, o, &v);
		}
		ck_assert_msg(r == 0, "get %s: %s", o->name, strerror(-r));
	}
	weft_sock_close(fd4);
	weft_sock_close(fd6);
	weft_sock_close(fdu);
}
END_TEST

START_TEST(test_opt_bool)
{
	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	const char *names[] = {"so_reuseaddr", "so_keepalive", "tcp_nodelay", "so_oobinline"};

	for (int i = 0; i < 4; i++) {
		const weft_sockopt_t *o = opt(names[i]);
		ck_assert_int_eq(weft_sockopt_set_int(fd, o, 0), 0);
		ck_assert_int_eq(get_int(fd, names[i]), 0);
		/* Any true value is stored, and read back, as 1. */
		ck_assert_int_eq(weft_sockopt_set_int(fd, o, 5), 0);
		ck_assert_int_eq(get_int(fd, names[i]), 1);
		ck_assert_int_eq(weft_sockopt_set_int(fd, o, -1), 0);
		ck_assert_int_eq(get_int(fd, names[i]), 1);
		ck_assert_int_eq(weft_sockopt_set_int(fd, o, 0), 0);
		ck_assert_int_eq(get_int(fd, names[i]), 0);
	}
	weft_sock_close(fd);
}
END_TEST

START_TEST(test_opt_int)
{
	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0);

	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("tcp_keepidle"), 77), 0);
	ck_assert_int_eq(get_int(fd, "tcp_keepidle"), 77);
	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("tcp_keepcnt"), 4), 0);
	ck_assert_int_eq(get_int(fd, "tcp_keepcnt"), 4);
	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("tcp_user_timeout"), 1500), 0);
	ck_assert_int_eq(get_int(fd, "tcp_user_timeout"), 1500);
	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("ip_ttl"), 33), 0);
	ck_assert_int_eq(get_int(fd, "ip_ttl"), 33);
	/* The kernel doubles buffer sizes for its bookkeeping. */
	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("so_rcvbuf"), 65536), 0);
	ck_assert_int_ge(get_int(fd, "so_rcvbuf"), 65536);
	/* Out of range values are the kernel's to refuse. */
	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("tcp_keepidle"), 0), -EINVAL);
	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("ip_ttl"), 1000), -EINVAL);
	ck_assert_int_eq(get_int(fd, "ip_ttl"), 33);
	weft_sock_close(fd);
}
END_TEST

START_TEST(test_opt_linger)
{
	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	const weft_sockopt_t *o = opt("so_linger");

	ck_assert_int_eq(get_int(fd, "so_linger"), -1); /* off by default */
	ck_assert_int_eq(weft_sockopt_set_int(fd, o, 7), 0);
	ck_assert_int_eq(get_int(fd, "so_linger"), 7);
	/* 0 is on with no time: close() then sends RST. */
	ck_assert_int_eq(weft_sockopt_set_int(fd, o, 0), 0);
	ck_assert_int_eq(get_int(fd, "so_linger"), 0);
	ck_assert_int_eq(weft_sockopt_set_int(fd, o, -1), 0);
	ck_assert_int_eq(get_int(fd, "so_linger"), -1);

	struct linger l;
	socklen_t len = sizeof l;
	ck_assert_int_eq(weft_sockopt_set_int(fd, o, 3), 0);
	ck_assert_int_eq(getsockopt(fd, SOL_SOCKET, SO_LINGER, &l, &len), 0);
	ck_assert_int_ne(l.l_onoff, 0);
	ck_assert_int_eq(l.l_linger, 3);
	weft_sock_close(fd);
}
END_TEST

START_TEST(test_opt_string)
{
	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	const weft_sockopt_t *cc = opt("tcp_congestion");
	char buf[64];

	/* reno is built in and always allowed to unprivileged users. */
	ck_assert_int_eq(weft_sockopt_set_str(fd, cc, "reno", 4), 0);
	ck_assert_int_eq(weft_sockopt_get_str(fd, cc, buf, sizeof buf), 0);
	ck_assert_str_eq(buf, "reno");
	/* len counts, not the NUL. */
	ck_assert_int_eq(weft_sockopt_set_str(fd, cc, "renoXYZ", 4), 0);
	ck_assert_int_eq(weft_sockopt_get_str(fd, cc, buf, sizeof buf), 0);
	ck_assert_str_eq(buf, "reno");
	ck_assert_int_eq(weft_sockopt_set_str(fd, cc, "no-such-algo", 12), -ENOENT);
	/* Longer than the kernel keeps: refused, not truncated. */
	ck_assert_int_eq(weft_sockopt_set_str(fd, cc, "0123456789abcdefg", 17), -EINVAL);
	/* Exactly fits ("reno" + NUL), then one byte short. */
	ck_assert_int_eq(weft_sockopt_get_str(fd, cc, buf, 5), 0);
	ck_assert_str_eq(buf, "reno");
	ck_assert_int_eq(weft_sockopt_get_str(fd, cc, buf, 4), -ERANGE);

	/* so_bindtodevice: unbound reads "". */
	const weft_sockopt_t *dev = opt("so_bindtodevice");
	strcpy(buf, "junk");
	ck_assert_int_eq(weft_sockopt_get_str(fd, dev, buf, sizeof buf), 0);
	ck_assert_str_eq(buf, "");
	int r = weft_sockopt_set_str(fd, dev, "lo", 2);
	if (r == -EPERM) {
		fprintf(stderr, "# skip: so_bindtodevice needs CAP_NET_RAW here\n");
	} else {
		ck_assert_int_eq(r, 0);
		ck_assert_int_eq(weft_sockopt_get_str(fd, dev, buf, sizeof buf), 0);
		ck_assert_str_eq(buf, "lo");
		/* Since Linux 5.7 anyone may bind an unbound socket, but only
		 * CAP_NET_RAW may change or drop the binding. */
		r = weft_sockopt_set_str(fd, dev, "", 0);
		if (r != -EPERM) {
			ck_assert_int_eq(r, 0);
			ck_assert_int_eq(weft_sockopt_get_str(fd, dev, buf, sizeof buf), 0);
			ck_assert_str_eq(buf, "");
		}
	}
	weft_sock_close(fd);
}
END_TEST

/* Asking for the wrong kind is a caller error, not a kernel one. */
START_TEST(test_opt_kind_mismatch)
{
	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	char buf[64];
	int v;

	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("tcp_congestion"), 1), -EINVAL);
	ck_assert_int_eq(weft_sockopt_get_int(fd, opt("tcp_congestion"), &v), -EINVAL);
	ck_assert_int_eq(weft_sockopt_set_str(fd, opt("tcp_nodelay"), "1", 1), -EINVAL);
	ck_assert_int_eq(weft_sockopt_get_str(fd, opt("so_linger"), buf, sizeof buf), -EINVAL);
	ck_assert_int_eq(weft_sockopt_set_int(fd, NULL, 1), -ENOPROTOOPT);
	ck_assert_int_eq(weft_sockopt_get_int(fd, NULL, &v), -ENOPROTOOPT);
	weft_sock_close(fd);
}
END_TEST

START_TEST(test_opt_readonly)
{
	struct sockaddr_in la;
	int lfd = bound4(SOCK_STREAM, &la);
	int fd = weft_sock_open(AF_INET, SOCK_DGRAM, 0);

	const char *ro[] = {"so_error", "so_type", "so_acceptconn", "so_domain", "so_protocol"};
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(weft_sockopt_set_int(fd, opt(ro[i]), 1), -ENOPROTOOPT);
	ck_assert_int_eq(weft_sockopt_set_str(fd, opt("so_type"), "1", 1), -ENOPROTOOPT);

	ck_assert_int_eq(get_int(fd, "so_type"), SOCK_DGRAM);
	ck_assert_int_eq(get_int(fd, "so_domain"), AF_INET);
	ck_assert_int_eq(get_int(fd, "so_protocol"), IPPROTO_UDP);
	ck_assert_int_eq(get_int(lfd, "so_type"), SOCK_STREAM);
	ck_assert_int_eq(get_int(lfd, "so_protocol"), IPPROTO_TCP);
	ck_assert_int_eq(get_int(lfd, "so_acceptconn"), 0);
	ck_assert_int_eq(weft_sock_listen(lfd, 4), 0);
	ck_assert_int_eq(get_int(lfd, "so_acceptconn"), 1);
	weft_sock_close(fd);
	weft_sock_close(lfd);
}
END_TEST

/* so_error reads the pending error as a positive errno, and reading
 * clears it. */
START_TEST(test_so_error)
{
	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_eq(get_int(fd, "so_error"), 0);

	struct sockaddr_in closed;
	int hold = bound4(SOCK_STREAM, &closed);
	int r = weft_sock_connect(fd, (struct sockaddr *)&closed, sizeof closed);
	if (r == -EINPROGRESS) {
		ck_assert_int_eq(wait_fd(fd, POLLOUT), 1);
		ck_assert_int_eq(get_int(fd, "so_error"), ECONNREFUSED);
	} else {
		/* Refused within the call, which consumed the error. */
		ck_assert_int_eq(r, -ECONNREFUSED);
	}
	ck_assert_int_eq(get_int(fd, "so_error"), 0);
	ck_assert_int_eq(weft_sock_connect_result(fd), 0);
	weft_sock_close(fd);
	weft_sock_close(hold);
}
END_TEST

START_TEST(test_opt_ipv6)
{
	int fd = open6(SOCK_DGRAM);
	if (fd < 0)
		return;
	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("ipv6_v6only"), 9), 0);
	ck_assert_int_eq(get_int(fd, "ipv6_v6only"), 1);
	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("ipv6_unicast_hops"), 9), 0);
	ck_assert_int_eq(get_int(fd, "ipv6_unicast_hops"), 9);
	ck_assert_int_eq(weft_sockopt_set_int(fd, opt("ipv6_multicast_loop"), 0), 0);
	ck_assert_int_eq(get_int(fd, "ipv6_multicast_loop"), 0);
	ck_assert_int_eq(get_int(fd, "so_domain"), AF_INET6);
	weft_sock_close(fd);
}
END_TEST

/* Addresses. */

START_TEST(test_sa_v4)
{
	struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(80)};
	inet_pton(AF_INET, "1.2.3.4", &in.sin_addr);
	const struct sockaddr *sa = (struct sockaddr *)&in;
	char buf[128];

	ck_assert_str_eq(weft_sa_ip(sa, buf, sizeof buf), "1.2.3.4");
	ck_assert_str_eq(weft_sa_tostring(sa, buf, sizeof buf), "1.2.3.4:80");
	ck_assert_int_eq(weft_sa_port(sa), 80);
	ck_assert_int_eq(weft_sa_len(sa), sizeof(struct sockaddr_in));

	in.sin_port = htons(65535);
	inet_pton(AF_INET, "255.255.255.255", &in.sin_addr);
	ck_assert_str_eq(weft_sa_tostring(sa, buf, sizeof buf), "255.255.255.255:65535");
	ck_assert_int_eq(weft_sa_port(sa), 65535);

	/* Too small a buffer gives NULL, never a cut string. */
	ck_assert_ptr_null(weft_sa_tostring(sa, buf, 10));
	ck_assert_ptr_null(weft_sa_ip(sa, buf, 4));
}
END_TEST

START_TEST(test_sa_v6)
{
	struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(80)};
	in6.sin6_addr = in6addr_loopback;
	const struct sockaddr *sa = (struct sockaddr *)&in6;
	char buf[128];

	ck_assert_str_eq(weft_sa_ip(sa, buf, sizeof buf), "::1");
	ck_assert_str_eq(weft_sa_tostring(sa, buf, sizeof buf), "[::1]:80");
	ck_assert_int_eq(weft_sa_port(sa), 80);
	ck_assert_int_eq(weft_sa_len(sa), sizeof(struct sockaddr_in6));

	inet_pton(AF_INET6, "2001:db8::ff00:42:8329", &in6.sin6_addr);
	in6.sin6_port = htons(443);
	ck_assert_str_eq(weft_sa_tostring(sa, buf, sizeof buf), "[2001:db8::ff00:42:8329]:443");
	inet_pton(AF_INET6, "::ffff:10.0.0.1", &in6.sin6_addr);
	ck_assert_str_eq(weft_sa_ip(sa, buf, sizeof buf), "::ffff:10.0.0.1");

	/* Link-local keeps its scope, by name when the interface exists. */
	inet_pton(AF_INET6, "fe80::1", &in6.sin6_addr);
	unsigned lo = if_nametoindex("lo");
	if (lo) {
		in6.sin6_scope_id = lo;
		ck_assert_str_eq(weft_sa_tostring(sa, buf, sizeof buf), "[fe80::1%lo]:443");
	}
	in6.sin6_scope_id = 999999;
	ck_assert_str_eq(weft_sa_ip(sa, buf, sizeof buf), "fe80::1%999999");
	ck_assert_ptr_null(weft_sa_ip(sa, buf, 10));
}
END_TEST

static struct sockaddr_un unix_addr(const char *path, size_t len)
{
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	memcpy(un.sun_path, path, len);
	return un;
}

START_TEST(test_sa_unix)
{
	char buf[128];
	size_t base = offsetof(struct sockaddr_un, sun_path);

	struct sockaddr_un un = unix_addr("/tmp/weft.sock", 14);
	const struct sockaddr *sa = (struct sockaddr *)&un;
	ck_assert_str_eq(weft_sa_ip(sa, buf, sizeof buf), "/tmp/weft.sock");
	ck_assert_str_eq(weft_sa_tostring(sa, buf, sizeof buf), "/tmp/weft.sock");
	ck_assert_int_eq(weft_sa_port(sa), 0);
	ck_assert_int_eq(weft_sa_len(sa), base + 15);

	/* Abstract namespace: shown with '@'; the length has no NUL. */
	un = unix_addr("\0weft", 5);
	ck_assert_str_eq(weft_sa_tostring(sa, buf, sizeof buf), "@weft");
	ck_assert_int_eq(weft_sa_len(sa), base + 5);

	/* Unnamed. */
	un = unix_addr("", 0);
	ck_assert_str_eq(weft_sa_tostring(sa, buf, sizeof buf), "");
	ck_assert_int_eq(weft_sa_len(sa), base);

	/* A path filling sun_path has no NUL at all. */
	char full[sizeof un.sun_path];
	memset(full, 'a', sizeof full);
	un = unix_addr(full, sizeof full);
	ck_assert_int_eq(weft_sa_len(sa), sizeof(struct sockaddr_un));
	ck_assert_ptr_nonnull(weft_sa_tostring(sa, buf, sizeof buf));
	ck_assert_int_eq(strlen(buf), sizeof full);
	ck_assert_ptr_null(weft_sa_ip(sa, buf, sizeof full));
}
END_TEST

START_TEST(test_sa_unknown)
{
	struct sockaddr_storage ss = {.ss_family = AF_UNSPEC};
	char buf[128];

	ck_assert_ptr_null(weft_sa_ip((struct sockaddr *)&ss, buf, sizeof buf));
	ck_assert_ptr_null(weft_sa_tostring((struct sockaddr *)&ss, buf, sizeof buf));
	ck_assert_int_eq(weft_sa_port((struct sockaddr *)&ss), 0);
	ck_assert_int_eq(weft_sa_len((struct sockaddr *)&ss), 0);
}
END_TEST

/* weft_sa_len agrees with the kernel for real AF_UNIX sockets, path and
 * abstract, and addresses it sizes can be bound and connected to. */
START_TEST(test_unix_sockets)
{
	char dir[] = "/tmp/weft-check-XXXXXX";
	ck_assert_ptr_nonnull(mkdtemp(dir));
	char path[64];
	snprintf(path, sizeof path, "%s/s", dir);

	char abstract[32];
	int alen = snprintf(abstract, sizeof abstract, "%cweft-check-%d", 0, (int)getpid());

	struct sockaddr_un addrs[2] = {unix_addr(path, strlen(path)),
	                               unix_addr(abstract, (size_t)alen)};
	const char *want[2] = {path, abstract + 1};
	for (int i = 0; i < 2; i++) {
		const struct sockaddr *sa = (struct sockaddr *)&addrs[i];
		int l = weft_sock_open(AF_UNIX, SOCK_STREAM, 0);
		ck_assert_int_ge(l, 0);
		ck_assert_int_eq(weft_sock_bind(l, sa, weft_sa_len(sa)), 0);
		ck_assert_int_eq(weft_sock_listen(l, 1), 0);

		/* An abstract name ends where the kernel's length says, not
		 * at a NUL, so the address is zeroed first: weft_sa_len and
		 * the formatters read up to the first NUL. */
		struct sockaddr_un got;
		memset(&got, 0, sizeof got);
		socklen_t glen = sizeof got;
		ck_assert_int_eq(getsockname(l, (struct sockaddr *)&got, &glen), 0);
		ck_assert_int_eq(glen, weft_sa_len(sa));
		ck_assert_int_eq(weft_sa_len((struct sockaddr *)&got), glen);
		char buf[128];
		weft_sa_tostring((struct sockaddr *)&got, buf, sizeof buf);
		ck_assert_str_eq(buf + (i == 1), want[i]);

		int c = weft_sock_open(AF_UNIX, SOCK_STREAM, 0);
		ck_assert_int_eq(connect_wait(c, sa, weft_sa_len(sa)), 0);
		/* The client is unnamed: accept reports an empty name. */
		struct sockaddr_storage peer;
		socklen_t plen = sizeof peer;
		memset(&peer, 'z', sizeof peer);
		ck_assert_int_eq(wait_fd(l, POLLIN), 1);
		int s = weft_sock_accept(l, (struct sockaddr *)&peer, &plen);
		ck_assert_int_ge(s, 0);
		ck_assert_str_eq(weft_sa_tostring((struct sockaddr *)&peer, buf, sizeof buf), "");
		weft_sock_close(s);
		weft_sock_close(c);
		weft_sock_close(l);
	}
	unlink(path);
	rmdir(dir);
}
END_TEST

/* TCP over ::1, skipped cleanly where the host has no IPv6. */
START_TEST(test_v6_loopback)
{
	int lfd = open6(SOCK_STREAM);
	if (lfd < 0)
		return;
	struct sockaddr_in6 la = {.sin6_family = AF_INET6, .sin6_addr = in6addr_loopback};
	int r = weft_sock_bind(lfd, (struct sockaddr *)&la, sizeof la);
	if (r == -EADDRNOTAVAIL) {
		fprintf(stderr, "# skip: ::1 not configured\n");
		weft_sock_close(lfd);
		return;
	}
	ck_assert_int_eq(r, 0);
	socklen_t len = sizeof la;
	ck_assert_int_eq(getsockname(lfd, (struct sockaddr *)&la, &len), 0);
	ck_assert_int_eq(weft_sock_listen(lfd, 4), 0);

	char buf[128], want[128];
	snprintf(want, sizeof want, "[::1]:%d", weft_sa_port((struct sockaddr *)&la));
	ck_assert_str_eq(weft_sa_tostring((struct sockaddr *)&la, buf, sizeof buf), want);

	int c = weft_sock_open(AF_INET6, SOCK_STREAM, 0);
	ck_assert_int_ge(c, 0);
	ck_assert_int_eq(connect_wait(c, (struct sockaddr *)&la, sizeof la), 0);
	ck_assert_int_eq(wait_fd(lfd, POLLIN), 1);
	struct sockaddr_storage peer;
	socklen_t plen = sizeof peer;
	int s = weft_sock_accept(lfd, (struct sockaddr *)&peer, &plen);
	ck_assert_int_ge(s, 0);
	ck_assert_int_eq(plen, sizeof(struct sockaddr_in6));
	ck_assert_str_eq(weft_sa_ip((struct sockaddr *)&peer, buf, sizeof buf), "::1");

	ck_assert_int_eq(weft_sock_send(c, "v6", 2, 0), 2);
	ck_assert_int_eq(wait_fd(s, POLLIN), 1);
	ck_assert_int_eq(weft_sock_recv(s, buf, sizeof buf, 0), 2);

	weft_sock_close(s);
	weft_sock_close(c);
	weft_sock_close(lfd);
}
END_TEST

static Suite *sock_suite(void)
{
	Suite *s = suite_create("sock");

	TCase *io = tcase_create("io");
	tcase_add_test(io, test_open_flags);
	tcase_add_test(io, test_connect_refused);
	tcase_add_test(io, test_connect_accept);
	tcase_add_test(io, test_errors);
	tcase_add_test(io, test_send_epipe_unix);
	tcase_add_test(io, test_send_epipe_tcp);
	tcase_add_test(io, test_udp);
	tcase_add_test(io, test_unix_sockets);
	tcase_add_test(io, test_v6_loopback);
	suite_add_tcase(s, io);

	TCase *opts = tcase_create("options");
	tcase_add_test(opts, test_opt_find);
	tcase_add_test(opts, test_opt_get_all);
	tcase_add_test(opts, test_opt_bool);
	tcase_add_test(opts, test_opt_int);
	tcase_add_test(opts, test_opt_linger);
	tcase_add_test(opts, test_opt_string);
	tcase_add_test(opts, test_opt_kind_mismatch);
	tcase_add_test(opts, test_opt_readonly);
	tcase_add_test(opts, test_so_error);
	tcase_add_test(opts, test_opt_ipv6);
	suite_add_tcase(s, opts);

	TCase *addr = tcase_create("addresses");
	tcase_add_test(addr, test_sa_v4);
	tcase_add_test(addr, test_sa_v6);
	tcase_add_test(addr, test_sa_unix);
	tcase_add_test(addr, test_sa_unknown);
	suite_add_tcase(s, addr);
	return s;
}

WEFT_CHECK_MAIN(sock_suite)
