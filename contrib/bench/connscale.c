/* connscale: many idle connections to a TCP echo server, each pinged once.
 *
 *   connscale [-n CONNS] [-s MSGSIZE] [-T SECONDS] [-l] [-w] HOST PORT
 *
 * Opens CONNS connections (default 1000; non-blocking connects, at most
 * IN_FLIGHT at a time), then sends MSGSIZE bytes (default 32) on every one
 * of them at once and waits until every echo is back, checking each byte.
 * With -l each message is a line (MSGSIZE - 1 letters and a newline), for
 * line-echo servers such as contrib/bench/copas-echo.lua.
 * On stdout, flushed:
 *
 *   connected n=CONNS seconds=S      all connections established
 *   pinged n=CONNS seconds=S         every echo back, from the first send
 *   ready                            the connections now sit idle
 *
 * With -w it waits for a line on its standard input between the first two,
 * so that a script can let the server accept them all first (the kernel
 * establishes connections before the server accepts them).  After "ready"
 * it keeps the connections open until its standard input gives a line or
 * ends, so a script can read the server's memory with every connection
 * open and idle, then closes them with a reset (no TIME_WAIT left to fill
 * the port range over many runs).  contrib/bench/scale.sh drives it.  Any error,
 * early close, wrong byte or a phase longer than SECONDS (default 60)
 * exits with status 1.  One process needs CONNS + a few descriptors.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { MAX_EVENTS = 256, IN_FLIGHT = 256 };

struct sconn {
	int fd;
	uint32_t id;
	size_t got; /* bytes of the echo received and checked */
};

static size_t msgsize = 32;
static double limit_s = 60;
static int go_ahead;
static int lines; /* -l: messages are lines */

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("connscale: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned char pattern(uint32_t id, size_t i)
{
	if (lines)
		return i + 1 == msgsize ? '\n' : (unsigned char)('a' + (id * 131u + (uint32_t)i * 7u) % 26u);
	return (unsigned char)(id * 131u + (uint32_t)i * 7u + 1u);
}

/* Wait for events until `deadline`; fails after it. */
static int wait_events(int ep, struct epoll_event *events, double deadline, const char *what)
{
	for (;;) {
		double left = deadline - now_s();
		if (left <= 0)
			fail("%s: not done after %.0f s", what, limit_s);
		int n = epoll_wait(ep, events, MAX_EVENTS, (int)(left * 1000) + 1);
		if (n >= 0)
			return n;
		if (errno != EINTR)
			fail("epoll_wait: %s", strerror(errno));
	}
}

static void start_connect(int ep, struct sconn *c, const struct addrinfo *ai)
{
	c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		fail("socket (connection %u): %s", c->id, strerror(errno));
	int one = 1;
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS)
		fail("connect (connection %u): %s", c->id, strerror(errno));
	struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
		fail("epoll_ctl: %s", strerror(errno));
}

/* Open all n connections, at most IN_FLIGHT connecting at a time. */
static void connect_all(struct sconn *conns, size_t n, const struct addrinfo *ai)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		fail("epoll_create1: %s", strerror(errno));
	double deadline = now_s() + limit_s;
	size_t next = 0, done = 0, waiting = 0;
	struct epoll_event events[MAX_EVENTS];
	while (done < n) {
		while (next < n && waiting < IN_FLIGHT) {
			conns[next].id = (uint32_t)next;
			start_connect(ep, &conns[next++], ai);
			waiting++;
		}
		int r = wait_events(ep, events, deadline, "connecting");
		for (int i = 0; i < r; i++) {
			struct sconn *c = events[i].data.ptr;
			int err = 0;
			socklen_t len = sizeof err;
			if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
				err = errno;
			if (err != 0)
				fail("connect (connection %u): %s", c->id, strerror(err));
			epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
			waiting--;
			done++;
		}
	}
	close(ep);
}

/* Send one message on every connection, then wait for every echo. */
static void ping_all(struct sconn *conns, size_t n)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		fail("epoll_create1: %s", strerror(errno));
	unsigned char *buf = malloc(msgsize);
	if (!buf)
		fail("out of memory");
	for (size_t k = 0; k < n; k++) {
		struct sconn *c = &conns[k];
		struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
			fail("epoll_ctl: %s", strerror(errno));
		for (size_t i = 0; i < msgsize; i++)
			buf[i] = pattern(c->id, i);
		/* A fresh socket takes a small message whole. */
		ssize_t w = send(c->fd, buf, msgsize, MSG_NOSIGNAL);
		if (w != (ssize_t)msgsize)
			fail("send (connection %u): %s", c->id,
			     w < 0 ? strerror(errno) : "short write");
	}
	double deadline = now_s() + limit_s;
	size_t done = 0;
	struct epoll_event events[MAX_EVENTS];
	while (done < n) {
		int r = wait_events(ep, events, deadline, "waiting for the echoes");
		for (int i = 0; i < r; i++) {
			struct sconn *c = events[i].data.ptr;
			ssize_t got = recv(c->fd, buf, msgsize - c->got, 0);
			if (got < 0) {
				if (errno == EAGAIN || errno == EINTR)
					continue;
				fail("recv (connection %u): %s", c->id, strerror(errno));
			}
			if (got == 0)
				fail("connection %u: closed by the server with %zu of %zu bytes "
				     "back",
				     c->id, c->got, msgsize);
			for (ssize_t i2 = 0; i2 < got; i2++)
				if (buf[i2] != pattern(c->id, c->got + (size_t)i2))
					fail("connection %u: byte %zu of the echo is wrong", c->id,
					     c->got + (size_t)i2);
			c->got += (size_t)got;
			if (c->got == msgsize) {
				epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
				done++;
			}
		}
	}
	free(buf);
	close(ep);
}

/* A line on standard input, or its end. */
static void wait_line(void)
{
	char line[64];
	if (!fgets(line, sizeof line, stdin) && ferror(stdin))
		fail("reading standard input: %s", strerror(errno));
}

static _Noreturn void usage(void)
{
	fprintf(stderr, "usage: connscale [-n CONNS] [-s MSGSIZE] [-T SECONDS] [-l] [-w] HOST PORT\n");
	exit(2);
}

static long parse_count(const char *s, long min, long max)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		usage();
	return v;
}

int main(int argc, char **argv)
{
	long n = 1000;
	int opt;
	while ((opt = getopt(argc, argv, "n:s:T:lw")) != -1) {
		switch (opt) {
		case 'l':
			lines = 1;
			break;
		case 'w':
			go_ahead = 1;
			break;
		case 'n':
			n = parse_count(optarg, 1, 1000000);
			break;
		case 's':
			msgsize = (size_t)parse_count(optarg, 1, 65536);
			break;
		case 'T':
			limit_s = (double)parse_count(optarg, 1, 86400);
			break;
		default:
			usage();
		}
	}
	if (argc - optind != 2)
		usage();
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    (rlim_t)n + 16 > rl.rlim_cur)
		fail("%ld connections need more descriptors than the limit of %llu (ulimit -n)", n,
		     (unsigned long long)rl.rlim_cur);

	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
	struct addrinfo *ai;
	int rc = getaddrinfo(argv[optind], argv[optind + 1], &hints, &ai);
	if (rc != 0)
		fail("%s:%s: %s", argv[optind], argv[optind + 1], gai_strerror(rc));
	struct sconn *conns = calloc((size_t)n, sizeof *conns);
	if (!conns)
		fail("out of memory");

	double t0 = now_s();
	connect_all(conns, (size_t)n, ai);
	freeaddrinfo(ai);
	double t1 = now_s();
	printf("connected n=%ld seconds=%.4f\n", n, t1 - t0);
	fflush(stdout);
	/* With -w, the pings wait for a go-ahead: the server may still be
	 * accepting what the kernel has already established. */
	if (go_ahead)
		wait_line();
	double t2 = now_s();
	ping_all(conns, (size_t)n);
	printf("pinged n=%ld seconds=%.4f\n", n, now_s() - t2);
	puts("ready");
	fflush(stdout);
	wait_line(); /* idle until told */
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	for (long k = 0; k < n; k++) {
		setsockopt(conns[k].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
		close(conns[k].fd);
	}
	free(conns);
	return 0;
}
