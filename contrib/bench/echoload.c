/* echoload: closed-loop load generator for TCP echo servers.
 *
 *   echoload [-c CONNS] [-d SECONDS] [-H] [-l] [-s MSGSIZE] [-t THREADS] [-w] HOST PORT
 *
 * -l makes every message a line (letters, then '\n'), for line-based
 * servers such as a Copas echo reading with receive("*l").
 *
 * -H (with -l) makes every other connection (the odd-numbered ones) heavy:
 * its lines begin with 'H', which a server may take as a request for
 * costly work (contrib/bench/imbalance.lua burns CPU for it), and the
 * latencies of the light and the heavy connections are also reported
 * apart (see below).
 *
 * Every connection plays ping-pong: send MSGSIZE bytes, wait until all of
 * them have come back (checking every byte), send again.  Closed loop means
 * the offered load adapts to the server, so the figure is the server's pace
 * and never a queue that grows until something times out.
 *
 * Round-trips finishing in the first 0.5 s are a warm-up and not counted;
 * those finishing in the next SECONDS are.  At the end one line goes to
 * stdout:
 *
 *   roundtrips=N seconds=S rps=R p50_us=X p99_us=Y
 *
 * and with -H, on the same line, the same figures for each kind:
 * light_rps= light_p50_us= light_p99_us= heavy_rps= heavy_p50_us= heavy_p99_us=
 *
 * -w also prints "window start" and "window end" on stdout (flushed) when the
 * counted window opens and closes, so a script can sample the server's CPU
 * time at exactly those moments (contrib/bench/echo-cpu.sh does).
 *
 * Defaults: 50 connections, 5 seconds, 64-byte messages, 1 thread.  One
 * thread with epoll is the intended use: it leaves the other CPU to the
 * server.  Any error, early close or wrong byte exits with status 1.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
	MAX_EVENTS = 256,
	WARMUP_NS = 500000000,
	CONNECT_TIMEOUT_MS = 5000,
	/* Latency histogram: values below 64 ns exact, above that 64 buckets
	 * per power of two, i.e. within 1.6% over the whole 64-bit range. */
	SUB_BITS = 6,
	SUB = 1 << SUB_BITS,
	NBUCKETS = (64 - SUB_BITS + 1) * SUB
};

struct lconn {
	int fd;
	uint32_t id;
	uint32_t seq;     /* current round: varies the message content */
	size_t sent;      /* bytes of the current message written */
	size_t got;       /* bytes of its echo received and checked */
	int64_t t_start;  /* when the current round began (ns) */
	uint64_t counted; /* rounds completed inside the window */
};

struct worker {
	pthread_t thread;
	int index;
	struct lconn *conns;
	size_t nconns;
	unsigned char *txbuf; /* one message, regenerated per round */
	unsigned char *rxbuf;
	uint64_t roundtrips; /* completed inside the window */
	uint64_t hist[NBUCKETS];
	/* -H: the same for the heavy connections alone (also in the above) */
	uint64_t roundtrips_heavy;
	uint64_t hist_heavy[NBUCKETS];
};

/* Settings and deadlines, fixed before any worker starts. */
static size_t msgsize = 64;
static int announce;
static int lines; /* -l: each message is a line of letters ending in '\n' */
static int heavy; /* -H: odd-numbered connections send lines beginning with 'H' */
static int64_t t_warm, t_end;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("echoload: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	/* Any worker may fail; exit() ends the others too, which is what a
	 * benchmark wants: a wrong byte makes every figure worthless. */
	exit(1);
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static unsigned bucket_of(uint64_t v)
{
	if (v < SUB)
		return (unsigned)v;
	unsigned e = 63 - (unsigned)__builtin_clzll(v);
	return (e - SUB_BITS + 1) * SUB + (unsigned)((v >> (e - SUB_BITS)) & (SUB - 1));
}

/* The middle of bucket b, in ns. */
static double bucket_mid(unsigned b)
{
	if (b < SUB)
		return b;
	unsigned e = b / SUB + SUB_BITS - 1;
	double width = (double)((uint64_t)1 << (e - SUB_BITS));
	return (double)(SUB + b % SUB) * width + (width - 1) / 2;
}

/* Byte i of round seq on connection id.  Mixing all three in means an echo
 * sent to the wrong connection, replayed from an earlier round or shifted
 * by a byte does not compare equal. */
static unsigned char pattern(uint32_t id, uint32_t seq, size_t i)
{
	if (lines && i == msgsize - 1)
		return '\n';
	if (lines && heavy && i == 0 && id % 2 == 1)
		return 'H';
	if (lines)
		return (unsigned char)('a' + (id * 131u + seq * 29u + (uint32_t)i * 7u) % 26u);
	return (unsigned char)(id * 131u + seq * 29u + (uint32_t)i * 7u + (uint32_t)(i >> 8));
}

/* Write what is left of the current message, as far as the socket takes
 * it.  Fails the run on any error but EAGAIN. */
static void conn_send(struct worker *w, struct lconn *c)
{
	while (c->sent < msgsize) {
		size_t n = msgsize - c->sent;
		for (size_t i = 0; i < n; i++)
			w->txbuf[i] = pattern(c->id, c->seq, c->sent + i);
		ssize_t r = send(c->fd, w->txbuf, n, MSG_NOSIGNAL);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return; /* EPOLLOUT resumes */
			fail("conn %u: send: %s", c->id, strerror(errno));
		}
		c->sent += (size_t)r;
	}
}

static void conn_start(struct worker *w, struct lconn *c, int64_t t)
{
	c->seq++;
	c->sent = c->got = 0;
	c->t_start = t;
	conn_send(w, c);
}

/* The round on c is complete at time t: count it if it ended inside the
 * window, then begin the next one unless the window is over. */
static void conn_done(struct worker *w, struct lconn *c, int64_t t)
{
	if (t >= t_end)
		return; /* leave the connection idle */
	if (t >= t_warm) {
		unsigned b = bucket_of((uint64_t)(t - c->t_start));
		c->counted++;
		w->roundtrips++;
		w->hist[b]++;
		if (heavy && c->id % 2 == 1) {
			w->roundtrips_heavy++;
			w->hist_heavy[b]++;
		}
	}
	conn_start(w, c, t);
}

static void conn_event(struct worker *w, struct lconn *c, uint32_t events)
{
	if (c->sent < msgsize)
		conn_send(w, c);
	/* Reading is needed even while the message is still going out: a
	 * large message is echoed while we send, and not reading would
	 * deadlock both sides on full buffers. */
	while (c->got < msgsize) {
		size_t want = msgsize - c->got;
		ssize_t r = recv(c->fd, w->rxbuf, want, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			fail("conn %u: recv: %s", c->id, strerror(errno));
		}
		if (r == 0)
			fail("conn %u: server closed the connection (round %u, %zu of %zu bytes "
			     "back)",
			     c->id, c->seq, c->got, msgsize);
		for (size_t i = 0; i < (size_t)r; i++) {
			unsigned char want_byte = pattern(c->id, c->seq, c->got + i);
			if (w->rxbuf[i] != want_byte)
				fail("conn %u: round %u: byte %zu is 0x%02x, sent 0x%02x", c->id,
				     c->seq, c->got + i, w->rxbuf[i], want_byte);
		}
		c->got += (size_t)r;
		if (c->got == msgsize) {
			/* The server cannot have more for us than we sent,
			 * so the socket is empty now; the echo of the next
			 * round will raise a new edge. */
			conn_done(w, c, now_ns());
			return;
		}
		if ((size_t)r < want)
			break; /* a short read drains a stream socket (epoll(7)) */
	}
	if ((events & (EPOLLERR | EPOLLHUP)) && c->got < msgsize)
		fail("conn %u: connection error or hang-up", c->id);
}

/* Percentile pct of the total values in hist, by nearest rank, in us. */
static double percentile(const uint64_t *hist, uint64_t total, unsigned pct)
{
	uint64_t rank = (total * pct + 99) / 100, seen = 0;
	if (total == 0)
		return 0;
	for (unsigned b = 0; b < NBUCKETS; b++) {
		seen += hist[b];
		if (seen >= rank)
			return bucket_mid(b) / 1000;
	}
	return 0;
}

static void say(const char *line)
{
	fputs(line, stdout);
	fputc('\n', stdout);
	fflush(stdout);
}

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		fail("epoll_create1: %s", strerror(errno));
	int64_t t = now_ns();
	for (size_t i = 0; i < w->nconns; i++) {
		struct lconn *c = &w->conns[i];
		/* Both directions, edge-triggered, registered once: no
		 * epoll_ctl on the hot path. */
		struct epoll_event ev = {
		    .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
		    .data.ptr = c,
		};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
			fail("epoll_ctl: %s", strerror(errno));
		conn_start(w, c, t);
	}

	/* Worker 0 announces the window; all share the same deadlines. */
	int announced_start = !(announce && w->index == 0);
	struct epoll_event events[MAX_EVENTS];
	for (;;) {
		t = now_ns();
		if (!announced_start && t >= t_warm) {
			say("window start");
			announced_start = 1;
		}
		if (t >= t_end)
			break;
		int64_t until = (!announced_start ? t_warm : t_end) - t;
		int timeout = (int)((until + 999999) / 1000000);
		int n = epoll_wait(ep, events, MAX_EVENTS, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fail("epoll_wait: %s", strerror(errno));
		}
		for (int i = 0; i < n; i++)
			conn_event(w, events[i].data.ptr, events[i].events);
	}
	if (announce && w->index == 0)
		say("window end");
	close(ep);
	return NULL;
}

/* Open n connections to ai and wait until all are established, at most
 * CONNECT_TIMEOUT_MS.  Non-blocking connects keep this bounded even when
 * the server's backlog is full. */
static void connect_all(struct lconn *conns, size_t n, const struct addrinfo *ai)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		fail("epoll_create1: %s", strerror(errno));
	size_t waiting = 0;
	for (size_t i = 0; i < n; i++) {
		struct lconn *c = &conns[i];
		c->id = (uint32_t)i;
		c->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (c->fd < 0)
			fail("socket: %s", strerror(errno));
		/* Each message is one write; Nagle could only delay it. */
		int one = 1;
		setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (connect(c->fd, ai->ai_addr, ai->ai_addrlen) == 0)
			continue;
		if (errno != EINPROGRESS)
			fail("connect: %s", strerror(errno));
		struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
			fail("epoll_ctl: %s", strerror(errno));
		waiting++;
	}
	int64_t deadline = now_ns() + (int64_t)CONNECT_TIMEOUT_MS * 1000000;
	struct epoll_event events[MAX_EVENTS];
	while (waiting > 0) {
		int64_t left = deadline - now_ns();
		if (left <= 0)
			fail("%zu connections not established after %d ms", waiting,
			     CONNECT_TIMEOUT_MS);
		int r = epoll_wait(ep, events, MAX_EVENTS, (int)((left + 999999) / 1000000));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			fail("epoll_wait: %s", strerror(errno));
		}
		for (int i = 0; i < r; i++) {
			struct lconn *c = events[i].data.ptr;
			int err = 0;
			socklen_t len = sizeof err;
			if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
				err = errno;
			if (err != 0)
				fail("connect: %s", strerror(err));
			epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
			waiting--;
		}
	}
	close(ep);
}

static _Noreturn void usage(void)
{
	fprintf(stderr, "usage: echoload [-c CONNS] [-d SECONDS] [-H] [-l] [-s MSGSIZE] "
	                "[-t THREADS] [-w] HOST PORT\n");
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
	long nconns = 50, nthreads = 1;
	double seconds = 5;
	int opt;
	while ((opt = getopt(argc, argv, "c:d:Hls:t:w")) != -1) {
		switch (opt) {
		case 'c':
			nconns = parse_count(optarg, 1, 1000000);
			break;
		case 's':
			msgsize = (size_t)parse_count(optarg, 1, 1L << 30);
			break;
		case 't':
			nthreads = parse_count(optarg, 1, 1024);
			break;
		case 'w':
			announce = 1;
			break;
		case 'l':
			lines = 1;
			break;
		case 'H':
			heavy = 1;
			break;
		case 'd': {
			char *end;
			seconds = strtod(optarg, &end);
			if (end == optarg || *end || !(seconds > 0) || seconds > 86400)
				usage();
			break;
		}
		default:
			usage();
		}
	}
	if (argc - optind != 2)
		usage();
	if (heavy && (!lines || msgsize < 2))
		usage(); /* 'H', then at least the '\n' */
	if (nthreads > nconns)
		nthreads = nconns;

	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
	struct addrinfo *ai;
	int rc = getaddrinfo(argv[optind], argv[optind + 1], &hints, &ai);
	if (rc != 0)
		fail("%s:%s: %s", argv[optind], argv[optind + 1], gai_strerror(rc));

	struct lconn *conns = calloc((size_t)nconns, sizeof *conns);
	struct worker *workers = calloc((size_t)nthreads, sizeof *workers);
	if (!conns || !workers)
		fail("out of memory");
	connect_all(conns, (size_t)nconns, ai);
	freeaddrinfo(ai);

	/* Contiguous slices, the first ones one longer when it does not
	 * divide evenly. */
	size_t next = 0;
	for (long i = 0; i < nthreads; i++) {
		struct worker *w = &workers[i];
		w->index = (int)i;
		w->conns = conns + next;
		w->nconns = (size_t)(nconns / nthreads + (i < nconns % nthreads));
		next += w->nconns;
		w->txbuf = malloc(msgsize);
		w->rxbuf = malloc(msgsize);
		if (!w->txbuf || !w->rxbuf)
			fail("out of memory");
	}

	t_warm = now_ns() + WARMUP_NS;
	t_end = t_warm + (int64_t)(seconds * 1e9);
	for (long i = 1; i < nthreads; i++) {
		rc = pthread_create(&workers[i].thread, NULL, worker_run, &workers[i]);
		if (rc != 0)
			fail("pthread_create: %s", strerror(rc));
	}
	worker_run(&workers[0]);
	for (long i = 1; i < nthreads; i++)
		pthread_join(workers[i].thread, NULL);

	uint64_t total = 0, total_heavy = 0;
	static uint64_t hist[NBUCKETS], hist_heavy[NBUCKETS], hist_light[NBUCKETS];
	for (long i = 0; i < nthreads; i++) {
		total += workers[i].roundtrips;
		total_heavy += workers[i].roundtrips_heavy;
		for (unsigned b = 0; b < NBUCKETS; b++) {
			hist[b] += workers[i].hist[b];
			hist_heavy[b] += workers[i].hist_heavy[b];
		}
	}
	for (unsigned b = 0; b < NBUCKETS; b++)
		hist_light[b] = hist[b] - hist_heavy[b];
	/* A connection that never completed a round in the window is
	 * stuck: a server that loses a wake-up must not pass because the
	 * other connections kept the total up. */
	for (long i = 0; i < nconns; i++)
		if (conns[i].counted == 0)
			fail("conn %ld: no round-trip completed in the window (stuck in round %u, "
			     "%zu of %zu bytes sent, %zu back)",
			     i, conns[i].seq, conns[i].sent, msgsize, conns[i].got);
	for (long i = 0; i < nconns; i++)
		close(conns[i].fd);
	for (long i = 0; i < nthreads; i++) {
		free(workers[i].txbuf);
		free(workers[i].rxbuf);
	}
	free(workers);
	free(conns);

	/* Only round-trips that ended inside the window are counted, so the
	 * window's nominal length is the right divisor. */
	printf("roundtrips=%llu seconds=%.3f rps=%.0f p50_us=%.1f p99_us=%.1f",
	       (unsigned long long)total, seconds, (double)total / seconds,
	       percentile(hist, total, 50), percentile(hist, total, 99));
	if (heavy) {
		uint64_t light = total - total_heavy;
		printf(" light_rps=%.0f light_p50_us=%.1f light_p99_us=%.1f"
		       " heavy_rps=%.0f heavy_p50_us=%.1f heavy_p99_us=%.1f",
		       (double)light / seconds, percentile(hist_light, light, 50),
		       percentile(hist_light, light, 99), (double)total_heavy / seconds,
		       percentile(hist_heavy, total_heavy, 50),
		       percentile(hist_heavy, total_heavy, 99));
	}
	putchar('\n');
	return 0;
}
