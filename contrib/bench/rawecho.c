/* rawecho: the baseline TCP echo server for the weft benchmarks.
 *
 *   rawecho [-h] [host] [port]   (defaults 127.0.0.1 and 0 = any free port)
 *
 * With -h it is instead the baseline keep-alive HTTP "hello world" server
 * (contrib/bench/copas-cpu.sh, http-peers.sh): every request head (up to
 * a blank line) read gets one canned response, written the same way the
 * echo is, the responses to one read together.
 *
 * This is what a careful C programmer writes by hand: one thread, one epoll
 * instance, non-blocking sockets, edge-triggered readiness, read until EAGAIN
 * and write straight back.  Bytes the kernel will not take yet wait in a
 * per-connection buffer until EPOLLOUT.  A connection gets a few reads per
 * turn, then waits behind the others on a ready list, so that one fast
 * client cannot monopolise the server.  It exists so that weft's own echo
 * server (contrib/examples/echo.lua) can be measured against the cost of the
 * system calls alone; anything weft spends beyond this is runtime overhead.
 *
 * Once ready it prints "listening on HOST:PORT" on stdout, so a script that
 * asked for port 0 learns the real one.  SIGINT or SIGTERM stops it cleanly.
 */
#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum {
	READ_SIZE = 16384,
	/* Stop reading from a peer that does not read its echo once this much
	 * is queued for it, so one slow client cannot grow our memory without
	 * bound.  Reading resumes when the queue drains. */
	PENDING_MAX = 1 << 20,
	/* Reads one connection gets before the others have their turn.  Read
	 * until EAGAIN with no bound, and a client that answers faster than
	 * we echo keeps us in its loop for ever while every other connection
	 * starves: an overloaded server must still be fair. */
	READS_PER_TURN = 4,
	MAX_EVENTS = 256
};

struct conn {
	int fd;             /* -1 once closed, while still on the ready list */
	int read_paused;    /* stopped reading before EAGAIN (backpressure) */
	int queued;         /* on the ready list */
	struct conn *next;  /* on the ready list */
	char *pending;      /* bytes read but not yet written back */
	size_t pending_off; /* first unsent byte in pending */
	size_t pending_len; /* end of unsent bytes in pending */
	size_t pending_cap;
	int head_match;     /* -h: bytes of "\r\n\r\n" matched so far */
};

static int http_mode;
static const char http_response[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
				    "Content-Length: 14\r\n\r\nHello, world!\n";

/* The listener's epoll tag; connections are tagged with their struct. */
static char listener_tag;

static _Noreturn void die(const char *what)
{
	fprintf(stderr, "rawecho: %s: %s\n", what, strerror(errno));
	exit(1);
}

/* Connections whose turn ended with input perhaps still unread.  With
 * edge-triggered epoll no new event will announce that input, so they are
 * resumed from here, after the events of the next (non-blocking) wait. */
static struct conn *ready_head, **ready_tail = &ready_head;

static void ready_push(struct conn *c)
{
	if (c->queued)
		return;
	c->queued = 1;
	c->next = NULL;
	*ready_tail = c;
	ready_tail = &c->next;
}

static void conn_close(struct conn *c)
{
	/* close(2) also removes the fd from the epoll set, since nothing else
	 * holds a duplicate of it, so no later event names c. */
	close(c->fd);
	c->fd = -1;
	/* On the ready list, c is freed when the list reaches it. */
	if (c->queued)
		return;
	free(c->pending);
	free(c);
}

/* Queue bytes the socket would not take.  0, or -1 when out of memory. */
static int conn_queue(struct conn *c, const char *p, size_t n)
{
	if (c->pending_off == c->pending_len)
		c->pending_off = c->pending_len = 0;
	if (c->pending_len + n > c->pending_cap) {
		/* Slide the unsent tail to the front before growing. */
		size_t live = c->pending_len - c->pending_off;
		if (c->pending_off > 0)
			memmove(c->pending, c->pending + c->pending_off, live);
		c->pending_off = 0;
		c->pending_len = live;
		if (live + n > c->pending_cap) {
			size_t cap = c->pending_cap ? c->pending_cap : READ_SIZE;
			while (cap < live + n)
				cap *= 2;
			char *np = realloc(c->pending, cap);
			if (!np)
				return -1;
			c->pending = np;
			c->pending_cap = cap;
		}
	}
	memcpy(c->pending + c->pending_len, p, n);
	c->pending_len += n;
	return 0;
}

/* Write as much of the queue as the socket takes.  1 when the queue is
 * empty, 0 when the socket is full (EPOLLOUT will call us again), -1 when
 * the connection is dead. */
static int conn_flush(struct conn *c)
{
	while (c->pending_off < c->pending_len) {
		ssize_t n = send(c->fd, c->pending + c->pending_off,
		                 c->pending_len - c->pending_off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 0 : -1;
		}
		c->pending_off += (size_t)n;
	}
	return 1;
}

/* Echo one chunk: straight to the socket when nothing is queued ahead of it
 * (the usual case), otherwise behind the queue so bytes stay in order.
 * 0 or -1 (dead connection). */
static int conn_echo(struct conn *c, const char *p, size_t n)
{
	if (c->pending_off == c->pending_len) {
		while (n > 0) {
			ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
			if (w < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN)
					break;
				return -1;
			}
			p += w;
			n -= (size_t)w;
		}
		if (n == 0)
			return 0;
	}
	return conn_queue(c, p, n);
}

/* -h: answer every request head completed in these bytes, all the
 * responses of one read in one write (pipelined requests get their answers
 * together, as from any server that writes what it has: written one by
 * one, Nagle's algorithm would hold all but the first).  0 or -1. */
static int conn_http(struct conn *c, const char *p, size_t n)
{
	enum { LEN = sizeof http_response - 1, BATCH = 64 };
	static char many[BATCH * LEN];
	static const char end[] = "\r\n\r\n";
	if (many[0] == 0)
		for (int i = 0; i < BATCH; i++)
			memcpy(many + i * LEN, http_response, LEN);
	size_t heads = 0;
	for (size_t i = 0; i < n; i++) {
		if (p[i] == end[c->head_match])
			c->head_match++;
		else
			c->head_match = p[i] == '\r' ? 1 : 0;
		if (c->head_match == 4) {
			c->head_match = 0;
			heads++;
		}
	}
	while (heads > 0) {
		size_t k = heads < BATCH ? heads : BATCH;
		if (conn_echo(c, many, k * LEN) < 0)
			return -1;
		heads -= k;
	}
	return 0;
}

/* Read and echo until the kernel has nothing more (EAGAIN), for at most
 * READS_PER_TURN reads.  0 when drained (or paused for backpressure), 1 when
 * the turn ended first (the caller queues c on the ready list), -1 when the
 * connection is finished or dead. */
static int conn_read(struct conn *c, char *buf)
{
	for (int turn = 0; turn < READS_PER_TURN; turn++) {
		if (c->pending_len - c->pending_off >= PENDING_MAX) {
			c->read_paused = 1;
			return 0;
		}
		ssize_t n = recv(c->fd, buf, READ_SIZE, 0);
		if (n > 0) {
			if (http_mode) {
				if (conn_http(c, buf, (size_t)n) < 0)
					return -1;
			} else if (conn_echo(c, buf, (size_t)n) < 0) {
				return -1;
			}
			continue;
		}
		if (n == 0)
			return -1; /* orderly shutdown by the peer */
		if (errno == EINTR)
			continue;
		return errno == EAGAIN ? 0 : -1;
	}
	return 1;
}

/* conn_read, then act on its answer.  0, or -1 when c was closed. */
static int conn_turn(struct conn *c, char *buf)
{
	int r = conn_read(c, buf);
	if (r < 0) {
		conn_close(c);
		return -1;
	}
	if (r > 0)
		ready_push(c);
	return 0;
}

/* Give every connection on the ready list another turn.  Those that use it
 * up go on a fresh list, for after the next poll. */
static void run_ready(char *buf)
{
	struct conn *c = ready_head;
	ready_head = NULL;
	ready_tail = &ready_head;
	while (c) {
		struct conn *next = c->next;
		c->queued = 0;
		if (c->fd < 0) {
			free(c->pending);
			free(c);
		} else if (!c->read_paused) {
			conn_turn(c, buf);
		}
		c = next;
	}
}

static void on_conn(struct conn *c, uint32_t events, char *buf)
{
	if (events & EPOLLERR) {
		conn_close(c);
		return;
	}
	/* EPOLLOUT also rides along with most EPOLLIN reports, because epoll
	 * returns the socket's whole current state; only act on it when there
	 * is something queued. */
	if ((events & EPOLLOUT) && c->pending_off < c->pending_len) {
		int r = conn_flush(c);
		if (r < 0) {
			conn_close(c);
			return;
		}
		if (r > 0 && c->read_paused) {
			/* No edge will come for data that arrived while we
			 * were not reading, so pick it up now. */
			c->read_paused = 0;
			conn_turn(c, buf);
			return;
		}
	}
	/* EPOLLHUP/EPOLLRDHUP still go through read, which drains what is
	 * left and then sees the end of stream.  A connection already on the
	 * ready list waits for its turn there. */
	if ((events & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) && !c->read_paused && !c->queued)
		conn_turn(c, buf);
}

static void on_listener(int lfd, int ep)
{
	/* Edge-triggered listener: accept until the backlog is empty. */
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN)
				return;
			/* EMFILE and friends: the connection stays in the
			 * backlog; the next arrival raises a new edge. */
			fprintf(stderr, "rawecho: accept: %s\n", strerror(errno));
			return;
		}
		struct conn *c = calloc(1, sizeof *c);
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		/* Register for both directions once: with EPOLLET a writable
		 * socket does not keep reporting, so this costs no wake-ups,
		 * and it spares an epoll_ctl(MOD) on every short write. */
		struct epoll_event ev = {
		    .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
		    .data.ptr = c,
		};
		if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
			fprintf(stderr, "rawecho: epoll_ctl: %s\n", strerror(errno));
			conn_close(c);
		}
	}
}

static int listen_on(const char *host, const char *port, char *name, size_t size)
{
	struct addrinfo hints = {
	    .ai_family = AF_UNSPEC,
	    .ai_socktype = SOCK_STREAM,
	    .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
	};
	struct addrinfo *res;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0) {
		fprintf(stderr, "rawecho: %s:%s: %s\n", host, port, gai_strerror(rc));
		exit(1);
	}
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
		die("setsockopt");
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0)
		die("bind");
	freeaddrinfo(res);
	if (listen(fd, SOMAXCONN) < 0)
		die("listen");

	/* Report the address actually bound: port 0 picked a free one. */
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	char h[NI_MAXHOST], p[NI_MAXSERV];
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		die("getsockname");
	rc = getnameinfo((struct sockaddr *)&ss, len, h, sizeof h, p, sizeof p,
	                 NI_NUMERICHOST | NI_NUMERICSERV);
	if (rc != 0) {
		fprintf(stderr, "rawecho: getnameinfo: %s\n", gai_strerror(rc));
		exit(1);
	}
	snprintf(name, size, "%s:%s", h, p);
	return fd;
}

static volatile sig_atomic_t stopping;

static void on_signal(int sig)
{
	(void)sig;
	stopping = 1;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "-h") == 0) {
		http_mode = 1;
		argv++;
		argc--;
	}
	const char *host = argc > 1 ? argv[1] : "127.0.0.1";
	const char *port = argc > 2 ? argv[2] : "0";
	if (argc > 3) {
		fprintf(stderr, "usage: rawecho [-h] [host] [port]\n");
		return 2;
	}

	/* The stop signals stay blocked except inside epoll_pwait, so one
	 * arriving between the check of `stopping` and the wait cannot be
	 * lost: it interrupts the wait instead. */
	sigset_t stops, during_wait;
	sigemptyset(&stops);
	sigaddset(&stops, SIGINT);
	sigaddset(&stops, SIGTERM);
	sigprocmask(SIG_BLOCK, &stops, &during_wait);
	sigdelset(&during_wait, SIGINT);
	sigdelset(&during_wait, SIGTERM);
	struct sigaction sa = {.sa_handler = on_signal};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	char name[NI_MAXHOST + NI_MAXSERV + 2];
	int lfd = listen_on(host, port, name, sizeof name);
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	struct epoll_event lev = {.events = EPOLLIN | EPOLLET, .data.ptr = &listener_tag};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
		die("epoll_ctl");

	printf("listening on %s\n", name);
	fflush(stdout);

	/* One read buffer for everyone: a single thread handles one
	 * connection at a time and echoes before it reads again. */
	static char buf[READ_SIZE];
	struct epoll_event events[MAX_EVENTS];
	while (!stopping) {
		/* With connections waiting for another turn, only look for
		 * new events; do not sleep. */
		int n = epoll_pwait(ep, events, MAX_EVENTS, ready_head ? 0 : -1, &during_wait);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait");
		}
		for (int i = 0; i < n; i++) {
			if (events[i].data.ptr == &listener_tag)
				on_listener(lfd, ep);
			else
				on_conn(events[i].data.ptr, events[i].events, buf);
		}
		run_ready(buf);
	}
	/* Open connections are left to exit(): the kernel closes them. */
	close(ep);
	close(lfd);
	return 0;
}
