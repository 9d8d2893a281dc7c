/* Shared listening sockets (lib/listener): a plain take once the poller
 * event is harvested; a registered waiter woken with a connection of its
 * own and claiming it; two workers of one runtime sharing one socket by
 * reference count; a handed connection given back by cancel; release
 * waking the waiters of its tag with WEFT_ECLOSED; the backlog bounding
 * the connections held in user space.
 *
 * Everything runs on the test's thread, on 127.0.0.1 only; each test ends
 * with no record open and no waiter left behind. */
#include "listener.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#if !defined(_WIN32)
#include <fcntl.h>
#include <unistd.h>
#endif

#include "thread.h"

#include "alloc.h"
#include "checkutil.h"
#include "clock.h"
#include "error.h"
#include "sock.h"

#define MS 1000000ull

typedef struct env {
	weft_runtime_t *rt;
	weft_worker_t *w;
} env_t;

static env_t setup(void)
{
	env_t e;

	ck_assert_int_eq(weft_runtime_new(-1, &e.rt), 0);
	ck_assert_int_eq(weft_worker_new(e.rt, &e.w), 0);
	return e;
}

/* Nothing queued, nothing alive, no record open: the listener gave back
 * everything it took. */
static void teardown(env_t e)
{
	weft_wake_t wk;

	ck_assert_int_eq(weft_worker_next(e.w, &wk), 0);
	ck_assert_int_eq(weft_worker_alive(e.w), 0);
	ck_assert_uint_eq(e.w->nfds, 0);
	ck_assert_uint_eq(weft_fdtab_open_count(weft_runtime_fdtab(e.rt)), 0);
	weft_worker_free(e.w);
	weft_runtime_free(e.rt);
}

static struct sockaddr_in loopback(int port)
{
	struct sockaddr_in sa;

	memset(&sa, 0, sizeof sa);
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return sa;
}

static int port_of(int fd)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof sa;

	ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	return ntohs(sa.sin_port);
}

/* A port nobody listens on now: port 0 listeners are never shared, so the
 * sharing tests need an explicit one. */
static int free_port(void)
{
	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = loopback(0);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(weft_sock_bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	int port = port_of(fd);
	tu_close(fd);
	return port;
}

/* A fresh TCP socket record of w listening on 127.0.0.1:port with the
 * given backlog, as the binding's listen() makes one. */
static weft_listener_t *listen_backlog(weft_worker_t *w, int port, int backlog)
{
	int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0), err = 0;
	ck_assert_int_ge(fd, 0);
	weft_fd_t *r = weft_worker_open_fd(w, fd, &err);
	ck_assert_ptr_nonnull(r);
	struct sockaddr_in sa = loopback(port);
	weft_listener_t *l = NULL;
	ck_assert_int_eq(weft_listener_listen(w, r, (struct sockaddr *)&sa, sizeof sa, backlog, &l),
			 0);
	ck_assert_ptr_nonnull(l);
	return l;
}

static weft_listener_t *listen_on(weft_worker_t *w, int port)
{
	return listen_backlog(w, port, 16);
}

static int is_listening(int fd)
{
	int v = 0;

	ck_assert_int_eq(weft_sockopt_get_int(fd, weft_sockopt_find("so_acceptconn"), &v), 0);
	return v;
}

/* A blocking client: on loopback connect() returns once the kernel has
 * queued the connection, before anyone accepts it.  -errno on failure. */
static int connect_to(int port)
{
	int fd = tu_tcp_socket();
	struct sockaddr_in sa = loopback(port);

	ck_assert_int_ge(fd, 0);
	int rc = tu_connect(fd, (struct sockaddr *)&sa, sizeof sa);
	if (rc < 0) {
		tu_close(fd);
		return rc;
	}
	return fd;
}

/* Poll until the listener has accepted n connections in all (the event
 * may take a moment to show). */
static void harvest(weft_worker_t *w, weft_listener_t *l, uint64_t n)
{
	uint64_t end = weft_clock_ns() + 2000 * MS;

	while (weft_listener_accepted(l) < n) {
		ck_assert_msg(weft_clock_ns() < end, "listener event never harvested");
		ck_assert_int_ge(weft_worker_poll(w, 10 * MS), 0);
	}
}

/* Poll until a wake-up comes (2 s at most). */
static weft_wake_t next_wake(weft_worker_t *w)
{
	uint64_t end = weft_clock_ns() + 2000 * MS;
	weft_wake_t wk;

	while (!weft_worker_next(w, &wk)) {
		ck_assert_msg(weft_clock_ns() < end, "no wake-up came");
		ck_assert_int_ge(weft_worker_poll(w, 10 * MS), 0);
	}
	return wk;
}

/* A coroutine waiting as accept() does: an outside completion, no
 * deadline.  Returns the wait's seq. */
static uint32_t wait_accept(weft_worker_t *w, uint32_t *slot)
{
	int64_t s = weft_worker_co_new(w);

	ck_assert_int_ge(s, 0);
	*slot = (uint32_t)s;
	return weft_worker_wait_ext_until(w, *slot, UINT64_MAX);
}

/* A coroutine of w waits in accept on l (registering *tag), a client
 * connects (*client), and the connection is handed to the waiter: its
 * wake-up comes.  Returns the wait's seq; the waiter is *slot. */
static uint32_t handed_one(weft_worker_t *w, weft_listener_t *l, int *tag, uint32_t *slot,
			   int *client)
{
	uint32_t seq = wait_accept(w, slot);

	ck_assert_int_eq(weft_listener_take(l, w, *slot, seq, tag), -EAGAIN);
	*client = connect_to(port_of(weft_listener_fd(l)));
	ck_assert_int_ge(*client, 0);
	weft_wake_t wk = next_wake(w);
	ck_assert_uint_eq(wk.slot, *slot);
	ck_assert_uint_eq(wk.seq, seq);
	ck_assert_int_eq(wk.code, 0);
	return seq;
}

START_TEST(test_take_after_harvest)
{
	env_t e = setup();
	weft_listener_t *l = listen_on(e.w, 0);
	int lfd = weft_listener_fd(l);

	ck_assert_int_ge(lfd, 0);
	ck_assert_int_eq(is_listening(lfd), 1);
	/* The record moved to the listener: not the worker's any more. */
	ck_assert_uint_eq(e.w->nfds, 0);
	int c = connect_to(port_of(lfd));
	ck_assert_int_ge(c, 0);
	/* Nothing is accepted until a worker harvests the poller event, and
	 * a take without a tag registers nobody. */
	ck_assert_int_eq(weft_listener_take(l, e.w, 0, 0, NULL), -EAGAIN);
	harvest(e.w, l, 1);
	int fd = weft_listener_take(l, e.w, 0, 0, NULL);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_ne(fd, lfd);
	/* One connection, one fd: the queue is empty again. */
	ck_assert_int_eq(weft_listener_take(l, e.w, 0, 0, NULL), -EAGAIN);
	tu_close(fd);
	tu_close(c);
	weft_listener_release(l, e.w, NULL);
	teardown(e);
}
END_TEST

START_TEST(test_waiter_claims)
{
	env_t e = setup();
	weft_listener_t *l = listen_on(e.w, 0);
	int tag, c;
	uint32_t slot, seq = handed_one(e.w, l, &tag, &slot, &c);

	/* The connection was handed to this waiter, not queued for anyone. */
	ck_assert_int_eq(weft_listener_take(l, e.w, 0, 0, NULL), -EAGAIN);
	int fd = weft_listener_claim(l, e.w, slot, seq);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(weft_listener_claim(l, e.w, slot, seq), -EAGAIN);
	tu_close(fd);
	tu_close(c);
	weft_worker_co_free(e.w, slot);
	weft_listener_release(l, e.w, &tag);
	teardown(e);
}
END_TEST

/* A connection handed to a waiting acceptor is no reason for its worker
 * to spin when it goes idle: spinning watches the inbox, not the poller,
 * and would hold up the next connection's event (an accept storm ran at
 * 50 µs a connection). */
START_TEST(test_accept_wake_does_not_spin)
{
	env_t e = setup();
	weft__runtime_set_cpus(e.rt, 8); /* a CPU to spare: spinning allowed */
	weft_listener_t *l = listen_on(e.w, 0);
	int tag;
	for (int round = 0; round < 3; round++) {
		int c;
		uint32_t slot, seq = handed_one(e.w, l, &tag, &slot, &c);
		int fd = weft_listener_claim(l, e.w, slot, seq);
		ck_assert_int_ge(fd, 0);
		/* Idle now, right after that wake-up. */
		ck_assert_int_eq(weft_worker_poll(e.w, 2 * MS), 0);
		tu_close(fd);
		tu_close(c);
		weft_worker_co_free(e.w, slot);
	}
	ck_assert_uint_eq(e.w->stats.spins, 0);
	weft_listener_release(l, e.w, &tag);
	teardown(e);
}
END_TEST

START_TEST(test_shared_refs)
{
	weft_runtime_t *rt;
	weft_worker_t *a, *b;
	int port = free_port();

	ck_assert_int_eq(weft_runtime_new(-1, &rt), 0);
	ck_assert_int_eq(weft_worker_new(rt, &a), 0);
	ck_assert_int_eq(weft_worker_new(rt, &b), 0);
	weft_listener_t *la = listen_on(a, port);
	/* B's own socket is closed and it joins A's listener: a second bind
	 * would have failed with EADDRINUSE otherwise. */
	weft_listener_t *lb = listen_on(b, port);
	ck_assert_ptr_eq(la, lb);
	ck_assert_int_eq(weft_listener_fd(la), weft_listener_fd(lb));
	ck_assert_uint_eq(b->nfds, 0);
	ck_assert_uint_eq(weft_fdtab_open_count(weft_runtime_fdtab(rt)), 1);
	int lfd = weft_listener_fd(la);

	/* A's reference gone, B's keeps the socket listening. */
	weft_listener_release(la, a, NULL);
	ck_assert_int_eq(is_listening(lfd), 1);
	int c = connect_to(port);
	ck_assert_int_ge(c, 0);
	harvest(b, lb, 1);
	int fd = weft_listener_take(lb, b, 0, 0, NULL);
	ck_assert_int_ge(fd, 0);
	tu_close(fd);
	tu_close(c);

	/* The last reference closes it: nobody listens on the port now. */
	weft_listener_release(lb, b, NULL);
	ck_assert_uint_eq(weft_fdtab_open_count(weft_runtime_fdtab(rt)), 0);
	ck_assert_int_eq(connect_to(port), -ECONNREFUSED);
	ck_assert_uint_eq(a->nfds, 0);
	ck_assert_uint_eq(b->nfds, 0);
	weft_worker_free(a);
	weft_worker_free(b);
	weft_runtime_free(rt);
}
END_TEST

/* The last release takes the listener off the runtime's list: listening
 * on the address again makes a new socket instead of joining a dead one. */
START_TEST(test_relisten_after_close)
{
	env_t e = setup();
	int port = free_port();
	weft_listener_t *l1 = listen_on(e.w, port);

	weft_listener_release(l1, e.w, NULL);
	weft_listener_t *l2 = listen_on(e.w, port);
	ck_assert_int_eq(is_listening(weft_listener_fd(l2)), 1);
	int c = connect_to(port);
	ck_assert_int_ge(c, 0);
	harvest(e.w, l2, 1);
	int fd = weft_listener_take(l2, e.w, 0, 0, NULL);
	ck_assert_int_ge(fd, 0);
	tu_close(fd);
	tu_close(c);
	weft_listener_release(l2, e.w, NULL);
	teardown(e);
}
END_TEST

START_TEST(test_cancel_gives_back)
{
	env_t e = setup();
	weft_listener_t *l = listen_on(e.w, 0);
	int tag;
	uint32_t slot, seq = wait_accept(e.w, &slot);

	ck_assert_int_eq(weft_listener_take(l, e.w, slot, seq, &tag), -EAGAIN);
	int c = connect_to(port_of(weft_listener_fd(l)));
	ck_assert_int_ge(c, 0);
	weft_wake_t wk = next_wake(e.w);
	ck_assert_int_eq(wk.code, 0);
	/* The waiter gives up (as on a deadline that raced the wake-up): its
	 * connection must not be lost, but queued for the next taker. */
	weft_listener_cancel(l, e.w, slot, seq);
	ck_assert_int_eq(weft_listener_claim(l, e.w, slot, seq), -EAGAIN);
	int fd = weft_listener_take(l, e.w, 0, 0, NULL);
	ck_assert_int_ge(fd, 0);
	tu_close(fd);
	tu_close(c);
	weft_worker_co_free(e.w, slot);
	weft_listener_release(l, e.w, &tag);
	teardown(e);
}
END_TEST

/* A cancel handing the connection on to the next waiter rather than the
 * queue, when there is one. */
START_TEST(test_cancel_passes_on)
{
	env_t e = setup();
	weft_listener_t *l = listen_on(e.w, 0);
	int tag;
	uint32_t s1, q1 = wait_accept(e.w, &s1);
	uint32_t s2, q2 = wait_accept(e.w, &s2);

	ck_assert_int_eq(weft_listener_take(l, e.w, s1, q1, &tag), -EAGAIN);
	ck_assert_int_eq(weft_listener_take(l, e.w, s2, q2, &tag), -EAGAIN);
	int c = connect_to(port_of(weft_listener_fd(l)));
	ck_assert_int_ge(c, 0);
	/* One connection, two waiters: the first in line gets it. */
	weft_wake_t wk = next_wake(e.w);
	ck_assert_uint_eq(wk.slot, s1);
	ck_assert_int_eq(wk.code, 0);
	weft_listener_cancel(l, e.w, s1, q1);
	wk = next_wake(e.w);
	ck_assert_uint_eq(wk.slot, s2);
	ck_assert_uint_eq(wk.seq, q2);
	ck_assert_int_eq(wk.code, 0);
	int fd = weft_listener_claim(l, e.w, s2, q2);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(weft_listener_take(l, e.w, 0, 0, NULL), -EAGAIN);
	tu_close(fd);
	tu_close(c);
	weft_worker_co_free(e.w, s1);
	weft_worker_co_free(e.w, s2);
	weft_listener_release(l, e.w, &tag);
	teardown(e);
}
END_TEST

START_TEST(test_release_wakes_tag)
{
	env_t e = setup();
	weft_worker_t *b;
	ck_assert_int_eq(weft_worker_new(e.rt, &b), 0);
	int port = free_port();
	/* Two references (sockets of two workers on one address), each with
	 * a waiter of its own tag. */
	weft_listener_t *l = listen_on(e.w, port);
	ck_assert_ptr_eq(listen_on(b, port), l);
	int tag1, tag2;
	uint32_t s1, q1 = wait_accept(e.w, &s1);
	uint32_t s2, q2 = wait_accept(b, &s2);
	ck_assert_int_eq(weft_listener_take(l, e.w, s1, q1, &tag1), -EAGAIN);
	ck_assert_int_eq(weft_listener_take(l, b, s2, q2, &tag2), -EAGAIN);

	/* Closing one socket wakes only the coroutines accepting on it. */
	weft_listener_release(l, e.w, &tag1);
	weft_wake_t wk = next_wake(e.w);
	ck_assert_uint_eq(wk.slot, s1);
	ck_assert_uint_eq(wk.seq, q1);
	ck_assert_int_eq(wk.code, WEFT_ECLOSED);
	ck_assert_int_eq(weft_worker_poll(b, 0), 0);
	ck_assert_int_eq(weft_worker_next(b, &wk), 0);
	ck_assert_int_eq(weft_worker_co(b, s2)->state, WEFT_CO_WAIT_EXT);

	/* The last reference too, and the socket goes with it. */
	weft_listener_release(l, b, &tag2);
	wk = next_wake(b);
	ck_assert_uint_eq(wk.slot, s2);
	ck_assert_uint_eq(wk.seq, q2);
	ck_assert_int_eq(wk.code, WEFT_ECLOSED);
	weft_worker_co_free(e.w, s1);
	weft_worker_co_free(b, s2);
	weft_worker_free(b);
	teardown(e);
}
END_TEST

/* A worker listens on an address once: a second listen from it, or one
 * from another worker with another backlog, is refused as the kernel
 * refuses a second socket, and leaves the caller's socket as it was. */
START_TEST(test_listen_twice_refused)
{
	env_t e = setup();
	weft_worker_t *b;
	ck_assert_int_eq(weft_worker_new(e.rt, &b), 0);
	int port = free_port();
	weft_listener_t *l = listen_backlog(e.w, port, 16);
	struct sockaddr_in sa = loopback(port);
	for (int i = 0; i < 2; i++) {
		weft_worker_t *w = i == 0 ? e.w : b;
		int fd = weft_sock_open(AF_INET, SOCK_STREAM, 0), err = 0;
		ck_assert_int_ge(fd, 0);
		weft_fd_t *r = weft_worker_open_fd(w, fd, &err);
		ck_assert_ptr_nonnull(r);
		weft_listener_t *l2 = NULL;
		/* the same worker with the same backlog; the other one with
		 * another backlog */
		ck_assert_int_eq(weft_listener_listen(w, r, (struct sockaddr *)&sa, sizeof sa,
						      i == 0 ? 16 : 32, &l2),
				 -EADDRINUSE);
		ck_assert_ptr_null(l2);
		weft_worker_close_fd(w, r);
	}
	ck_assert_ptr_eq(listen_backlog(b, port, 16), l);
	weft_listener_release(l, b, NULL);
	weft_listener_release(l, e.w, NULL);
	weft_worker_free(b);
	teardown(e);
}
END_TEST

/* The peer port of an accepted connection is the client's local port:
 * tells which client a taken fd belongs to. */
static int peer_port(int fd)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof sa;

	ck_assert_int_eq(getpeername(fd, (struct sockaddr *)&sa, &len), 0);
	return ntohs(sa.sin_port);
}

/* Accepted-but-untaken connections, queued or handed to a waiter, never
 * exceed the backlog: the rest wait in the kernel.  A connection handed
 * to a waiter counts, so a cancel always finds room to give it back to
 * the head of a full queue (before this bound, a cancel on a full queue
 * overwrote a queued connection). */
START_TEST(test_backlog_bounds_queue)
{
	env_t e = setup();
	weft_listener_t *l = listen_backlog(e.w, 0, 2);
	int port = port_of(weft_listener_fd(l)), tag, c[4];
	uint32_t slot, seq = wait_accept(e.w, &slot);

	ck_assert_int_eq(weft_listener_take(l, e.w, slot, seq, &tag), -EAGAIN);
	c[0] = connect_to(port);
	ck_assert_int_ge(c[0], 0);
	weft_wake_t wk = next_wake(e.w);
	ck_assert_int_eq(wk.code, 0);
	for (int i = 1; i < 4; i++) {
		c[i] = connect_to(port);
		ck_assert_int_ge(c[i], 0);
	}
	/* One handed, one queued: full.  The other two stay in the kernel
	 * however long the worker polls. */
	harvest(e.w, l, 2);
	for (int i = 0; i < 5; i++)
		ck_assert_int_ge(weft_worker_poll(e.w, 10 * MS), 0);
	ck_assert_uint_eq(weft_listener_accepted(l), 2);

	/* The waiter gives up: its connection goes back first in line, and
	 * the queued one is still there behind it. */
	weft_listener_cancel(l, e.w, slot, seq);
	int a = weft_listener_take(l, e.w, 0, 0, NULL);
	int b = weft_listener_take(l, e.w, 0, 0, NULL);
	ck_assert_int_ge(a, 0);
	ck_assert_int_ge(b, 0);
	ck_assert_int_eq(peer_port(a), port_of(c[0]));
	ck_assert_int_eq(peer_port(b), port_of(c[1]));
	ck_assert_int_eq(weft_listener_take(l, e.w, 0, 0, NULL), -EAGAIN);

	/* Taking made room: the rest come through, in order. */
	harvest(e.w, l, 4);
	int d = weft_listener_take(l, e.w, 0, 0, NULL);
	int f = weft_listener_take(l, e.w, 0, 0, NULL);
	ck_assert_int_ge(d, 0);
	ck_assert_int_ge(f, 0);
	ck_assert_int_eq(peer_port(d), port_of(c[2]));
	ck_assert_int_eq(peer_port(f), port_of(c[3]));
	tu_close(a);
	tu_close(b);
	tu_close(d);
	tu_close(f);
	for (int i = 0; i < 4; i++)
		tu_close(c[i]);
	weft_worker_co_free(e.w, slot);
	weft_listener_release(l, e.w, &tag);
	teardown(e);
}
END_TEST

/* A claim makes room in a full listener: it must re-arm, or connections
 * left in the kernel would never be harvested. */
START_TEST(test_claim_rearms)
{
	env_t e = setup();
	weft_listener_t *l = listen_backlog(e.w, 0, 1);
	int port = port_of(weft_listener_fd(l)), tag, c[2];
	uint32_t slot, seq = wait_accept(e.w, &slot);

	ck_assert_int_eq(weft_listener_take(l, e.w, slot, seq, &tag), -EAGAIN);
	c[0] = connect_to(port);
	ck_assert_int_ge(c[0], 0);
	ck_assert_int_eq(next_wake(e.w).code, 0);
	c[1] = connect_to(port);
	ck_assert_int_ge(c[1], 0);
	for (int i = 0; i < 5; i++)
		ck_assert_int_ge(weft_worker_poll(e.w, 10 * MS), 0);
	ck_assert_uint_eq(weft_listener_accepted(l), 1);
	int a = weft_listener_claim(l, e.w, slot, seq);
	ck_assert_int_ge(a, 0);
	harvest(e.w, l, 2);
	int b = weft_listener_take(l, e.w, 0, 0, NULL);
	ck_assert_int_ge(b, 0);
	ck_assert_int_eq(peer_port(b), port_of(c[1]));
	tu_close(a);
	tu_close(b);
	tu_close(c[0]);
	tu_close(c[1]);
	weft_worker_co_free(e.w, slot);
	weft_listener_release(l, e.w, &tag);
	teardown(e);
}
END_TEST

/* A waiter whose worker is freed before a connection comes must not keep
 * it: the post to the dead worker fails, the waiter is dropped and the
 * connection goes to the next waiter, or to the queue for the next taker
 * (before, it was handed to the dead waiter and lost). */
START_TEST(test_dead_waiter_passes_on)
{
	env_t e = setup();
	weft_worker_t *b;
	weft_listener_t *l = listen_on(e.w, 0);
	int port = port_of(weft_listener_fd(l)), tag;

	ck_assert_int_eq(weft_worker_new(e.rt, &b), 0);
	/* B's waiter is first in line, then B goes away. */
	uint32_t bs, bq = wait_accept(b, &bs);
	ck_assert_int_eq(weft_listener_take(l, b, bs, bq, &tag), -EAGAIN);
	weft_worker_free(b);
	uint32_t slot, seq = wait_accept(e.w, &slot);
	ck_assert_int_eq(weft_listener_take(l, e.w, slot, seq, &tag), -EAGAIN);
	int c = connect_to(port);
	ck_assert_int_ge(c, 0);
	weft_wake_t wk = next_wake(e.w);
	ck_assert_uint_eq(wk.slot, slot);
	ck_assert_uint_eq(wk.seq, seq);
	ck_assert_int_eq(wk.code, 0);
	int fd = weft_listener_claim(l, e.w, slot, seq);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(peer_port(fd), port_of(c));
	tu_close(fd);
	tu_close(c);

	/* With no live waiter left, the next connection is queued. */
	ck_assert_int_eq(weft_worker_new(e.rt, &b), 0);
	bq = wait_accept(b, &bs);
	ck_assert_int_eq(weft_listener_take(l, b, bs, bq, &tag), -EAGAIN);
	weft_worker_free(b);
	c = connect_to(port);
	ck_assert_int_ge(c, 0);
	harvest(e.w, l, 2);
	fd = weft_listener_take(l, e.w, 0, 0, NULL);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(peer_port(fd), port_of(c));
	tu_close(fd);
	tu_close(c);
	weft_worker_co_free(e.w, slot);
	weft_listener_release(l, e.w, &tag);
	teardown(e);
}
END_TEST

/* A wake-up that cannot be posted for want of memory loses nothing: the
 * connection stays queued and the waiter registered, and the next event
 * serves it, first in line. */
START_TEST(test_post_enomem_keeps_both)
{
	env_t e = setup();
	weft_worker_t *b;
	weft_listener_t *l = listen_on(e.w, 0);
	int port = port_of(weft_listener_fd(l)), tag, c[3];
	weft_wake_t wk;

	ck_assert_int_eq(weft_worker_new(e.rt, &b), 0);
	/* One round first, so that the listener's own arrays have grown and
	 * the next allocation is B's inbox (never used yet). */
	uint32_t slot, seq = wait_accept(e.w, &slot);
	ck_assert_int_eq(weft_listener_take(l, e.w, slot, seq, &tag), -EAGAIN);
	c[0] = connect_to(port);
	ck_assert_int_ge(c[0], 0);
	ck_assert_int_eq(next_wake(e.w).code, 0);
	int a = weft_listener_claim(l, e.w, slot, seq);
	ck_assert_int_ge(a, 0);

	uint32_t bs, bq = wait_accept(b, &bs);
	ck_assert_int_eq(weft_listener_take(l, b, bs, bq, &tag), -EAGAIN);
	c[1] = connect_to(port);
	ck_assert_int_ge(c[1], 0);
	weft_alloc_fail_after(1);
	harvest(e.w, l, 2);
	weft_alloc_fail_after(0);
	/* Not posted: B has no wake-up, the connection is still ours. */
	ck_assert_int_eq(weft_worker_poll(b, 0), 0);
	ck_assert_int_eq(weft_worker_next(b, &wk), 0);
	ck_assert_int_eq(weft_listener_claim(l, b, bs, bq), -EAGAIN);

	/* The next event serves B's waiter with the older connection. */
	c[2] = connect_to(port);
	ck_assert_int_ge(c[2], 0);
	harvest(e.w, l, 3);
	wk = next_wake(b);
	ck_assert_uint_eq(wk.slot, bs);
	ck_assert_uint_eq(wk.seq, bq);
	ck_assert_int_eq(wk.code, 0);
	int fb = weft_listener_claim(l, b, bs, bq);
	ck_assert_int_ge(fb, 0);
	ck_assert_int_eq(peer_port(fb), port_of(c[1]));
	int fa = weft_listener_take(l, e.w, 0, 0, NULL);
	ck_assert_int_ge(fa, 0);
	ck_assert_int_eq(peer_port(fa), port_of(c[2]));
	ck_assert_int_eq(weft_listener_take(l, e.w, 0, 0, NULL), -EAGAIN);
	tu_close(a);
	tu_close(fa);
	tu_close(fb);
	for (int i = 0; i < 3; i++)
		tu_close(c[i]);
	weft_worker_co_free(e.w, slot);
	weft_worker_co_free(b, bs);
	weft_listener_release(l, e.w, &tag);
	weft_worker_free(b);
	teardown(e);
}
END_TEST

/* A worker serving accepts on its own thread, as a weft worker does: it
 * keeps one acceptor registered, polls, and answers every connection it
 * is handed with one byte before closing it. */
typedef struct server {
	weft_worker_t *w;
	weft_listener_t *l;
	_Atomic int ready; /* its first acceptor is registered */
	_Atomic int stop;
	_Atomic int served; /* connections answered */
	_Atomic int failed; /* a step that cannot fail did */
} server_t;

static void serve(server_t *sv, int fd)
{
	if (fd < 0 || weft_sock_send(fd, "x", 1, 0) != 1)
		atomic_store(&sv->failed, 1);
	else
		atomic_fetch_add(&sv->served, 1);
	if (fd >= 0)
		tu_close(fd);
}

static void *server_loop(void *arg)
{
	server_t *sv = arg;
	int tag;
	int64_t s = weft_worker_co_new(sv->w);
	if (s < 0) {
		atomic_store(&sv->failed, 1);
		atomic_store(&sv->ready, 1);
		return NULL;
	}
	uint32_t slot = (uint32_t)s, seq = 0;
	int registered = 0;
	uint64_t end = weft_clock_ns() + 20000 * MS;

	while (!atomic_load(&sv->stop) && weft_clock_ns() < end) {
		if (!registered) {
			seq = weft_worker_wait_ext_until(sv->w, slot, UINT64_MAX);
			int fd = weft_listener_take(sv->l, sv->w, slot, seq, &tag);
			if (fd != -EAGAIN) {
				weft_worker_wait_abort(sv->w, slot);
				serve(sv, fd); /* one was queued: serve it, register again */
				continue;
			}
			registered = 1;
			atomic_store(&sv->ready, 1);
		}
		if (weft_worker_poll(sv->w, 10 * MS) < 0)
			atomic_store(&sv->failed, 1);
		weft_wake_t wk;
		while (weft_worker_next(sv->w, &wk)) {
			if (wk.slot != slot || wk.seq != seq || wk.code != 0) {
				atomic_store(&sv->failed, 1);
				continue;
			}
			serve(sv, weft_listener_claim(sv->l, sv->w, slot, seq));
			registered = 0;
		}
	}
	if (registered)
		weft_listener_cancel(sv->l, sv->w, slot, seq);
	weft_worker_co_free(sv->w, slot);
	return NULL;
}

/* Idle workers first, for real: a worker that does not poll at all (its
 * thread is busy elsewhere) has an acceptor registered first in line, and
 * another worker idles in its poller with an acceptor of its own.  Fifty
 * clients connect one after another, each waiting for the idle worker's
 * answer before the next connects: all fifty go to the idle worker and
 * none to the busy one.  (Before, the harvester had left its parked state
 * by the time it dispatched, so nobody looked idle and arrival order gave
 * the first connection to the busy worker: that client waited forever.) */
START_TEST(test_idle_worker_first)
{
	weft_runtime_t *rt;
	weft_worker_t *busy;
	server_t sv = {0};
	int port = free_port(), tag;
	enum { NCONN = 50 };

	ck_assert_int_eq(weft_runtime_new(-1, &rt), 0);
	ck_assert_int_eq(weft_worker_new(rt, &busy), 0);
	ck_assert_int_eq(weft_worker_new(rt, &sv.w), 0);
	weft_listener_t *l = listen_on(busy, port);
	ck_assert_ptr_eq(listen_on(sv.w, port), l);
	sv.l = l;
	uint32_t bs, bq = wait_accept(busy, &bs);
	ck_assert_int_eq(weft_listener_take(l, busy, bs, bq, &tag), -EAGAIN);

	weft_thread_t th;
	ck_assert_int_eq(weft_thread_create(&th, server_loop, &sv, 0), 0);
	uint64_t end = weft_clock_ns() + 2000 * MS;
	while (!atomic_load(&sv.ready) && weft_clock_ns() < end)
		tu_sleep_ns(1000000);
	int i, got = 0;
	for (i = 0; i < NCONN && atomic_load(&sv.ready); i++) {
		int c = connect_to(port);
		if (c < 0)
			break;
		ck_assert_int_eq(weft_sockopt_set_time(c, weft_sockopt_find("so_rcvtimeo"), 2), 0);
		char b;
		got = (int)recv(c, &b, 1, 0);
		tu_close(c);
		if (got != 1)
			break;
	}
	atomic_store(&sv.stop, 1);
	weft_thread_join(th, NULL);
	ck_assert_msg(i == NCONN, "client %d of %d got no answer from the idle worker", i + 1,
		      NCONN);
	ck_assert_int_eq(atomic_load(&sv.failed), 0);
	ck_assert_int_eq(atomic_load(&sv.served), NCONN);
	ck_assert_uint_eq(weft_listener_accepted(l), NCONN);

	/* The busy worker was handed nothing and still waits. */
	weft_wake_t wk;
	ck_assert_int_ge(weft_worker_poll(busy, 0), 0);
	ck_assert_int_eq(weft_worker_next(busy, &wk), 0);
	ck_assert_int_eq(weft_listener_claim(l, busy, bs, bq), -EAGAIN);
	ck_assert_int_eq(weft_worker_co(busy, bs)->state, WEFT_CO_WAIT_EXT);
	weft_listener_cancel(l, busy, bs, bq);
	weft_worker_co_free(busy, bs);
	weft_listener_release(l, sv.w, &tag);
	weft_listener_release(l, busy, &tag);
	ck_assert_uint_eq(weft_fdtab_open_count(weft_runtime_fdtab(rt)), 0);
	weft_worker_free(sv.w);
	weft_worker_free(busy);
	weft_runtime_free(rt);
}
END_TEST

/* Descriptor exhaustion needs a descriptor limit to lower: POSIX. */
#if !defined(_WIN32)
/* Descriptor exhaustion, made on purpose: the soft RLIMIT_NOFILE is
 * lowered (Check forks each test, and the limit is put back anyway) and
 * every descriptor left under it is taken by /dev/null.  Returns how many
 * were taken into fill[]. */
#define NOFILE_LIMIT 256
static int exhaust(int *fill)
{
	struct rlimit rl;
	int n = 0;

	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur > NOFILE_LIMIT) {
		rl.rlim_cur = NOFILE_LIMIT;
		ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
	}
	for (;;) {
		int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			ck_assert_int_eq(errno, EMFILE);
			return n;
		}
		ck_assert_int_lt(n, NOFILE_LIMIT);
		fill[n++] = fd;
	}
}

static void unexhaust(int *fill, int n)
{
	for (int i = 0; i < n; i++)
		tu_close(fill[i]);
}

static int connect_fd(int fd, int port)
{
	struct sockaddr_in sa = loopback(port);
	return connect(fd, (struct sockaddr *)&sa, sizeof sa);
}

/* Accept failing for want of descriptors must not spin, must tell one
 * acceptor once, and must resume by itself.  Before, the listener was
 * re-armed while the backlog still held the connection, so poller, accept
 * and re-arm repeated without end (thousands of accept calls in half a
 * second) and no acceptor ever heard of it.
 *
 * Half a second of exhaustion allows the first accept and the retries of
 * the back-off schedule due by then (10, 30, 70, 150, 310 ms after it):
 * at most 6 accept calls, however fast the machine. */
START_TEST(test_exhausted_backs_off)
{
	env_t e = setup();
	weft_listener_t *l = listen_backlog(e.w, 0, 64);
	int port = port_of(weft_listener_fd(l)), tag, fill[NOFILE_LIMIT], nfill;
	enum { NCLIENT = 8 };
	int c[NCLIENT + 1], err;
	struct rlimit saved;
	weft_wake_t wk;

	ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &saved), 0);
	for (int i = 0; i <= NCLIENT; i++) {
		c[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		ck_assert_int_ge(c[i], 0);
	}
	/* A socket of the runtime's own, closed through it later. */
	int sfd = weft_sock_open(AF_INET, SOCK_STREAM, 0);
	ck_assert_int_ge(sfd, 0);
	weft_fd_t *own = weft_worker_open_fd(e.w, sfd, &err);
	ck_assert_ptr_nonnull(own);
	uint32_t s1, q1 = wait_accept(e.w, &s1);
	uint32_t s2, q2 = wait_accept(e.w, &s2);
	ck_assert_int_eq(weft_listener_take(l, e.w, s1, q1, &tag), -EAGAIN);
	ck_assert_int_eq(weft_listener_take(l, e.w, s2, q2, &tag), -EAGAIN);

	/* Episode 1: out of descriptors while clients connect. */
	nfill = exhaust(fill);
	for (int i = 0; i < NCLIENT; i++)
		ck_assert_int_eq(connect_fd(c[i], port), 0);
	int told = 0;
	uint64_t end = weft_clock_ns() + 500 * MS;
	while (weft_clock_ns() < end) {
		ck_assert_int_ge(weft_worker_poll(e.w, 10 * MS), 0);
		while (weft_worker_next(e.w, &wk)) {
			/* Only the first in line hears of it, with EMFILE. */
			ck_assert_uint_eq(wk.slot, s1);
			ck_assert_uint_eq(wk.seq, q1);
			ck_assert_int_eq(wk.code, -EMFILE);
			told++;
		}
	}
	ck_assert_int_eq(told, 1);
	ck_assert_str_eq(weft_strerror(-EMFILE), "too_many_open_files");
	ck_assert_uint_eq(weft_listener_accepted(l), 0);
	uint64_t attempts = weft_listener_attempts(l);
	ck_assert_uint_ge(attempts, 1);
	ck_assert_uint_le(attempts, 6);
	/* Backed off, with a retry pending; a later acceptor in the same
	 * episode is not told again. */
	ck_assert_uint_ne(weft__listener_retry(e.rt, 0), UINT64_MAX);
	ck_assert_int_eq(weft_listener_take(l, e.w, 0, 0, NULL), -EAGAIN);

	/* Descriptors come free behind the runtime's back (a plain close):
	 * the back-off alone brings accepting back, and every queued
	 * connection comes through, each once. */
	unexhaust(fill, nfill);
	end = weft_clock_ns() + 3000 * MS;
	while (!weft_worker_next(e.w, &wk)) {
		ck_assert_msg(weft_clock_ns() < end, "accepting never resumed");
		ck_assert_int_ge(weft_worker_poll(e.w, 10 * MS), 0);
	}
	ck_assert_uint_eq(wk.slot, s2);
	ck_assert_uint_eq(wk.seq, q2);
	ck_assert_int_eq(wk.code, 0);
	int got[NCLIENT];
	got[0] = weft_listener_claim(l, e.w, s2, q2);
	ck_assert_int_ge(got[0], 0);
	harvest(e.w, l, NCLIENT);
	for (int i = 1; i < NCLIENT; i++) {
		got[i] = weft_listener_take(l, e.w, 0, 0, NULL);
		ck_assert_int_ge(got[i], 0);
	}
	ck_assert_int_eq(weft_listener_take(l, e.w, 0, 0, NULL), -EAGAIN);
	for (int i = 0; i < NCLIENT; i++) {
		int found = 0;
		for (int k = 0; k < NCLIENT; k++)
			found += peer_port(got[k]) == port_of(c[i]);
		ck_assert_int_eq(found, 1);
	}
	ck_assert_uint_eq(weft__listener_retry(e.rt, weft_clock_ns()), UINT64_MAX);
	for (int i = 0; i < NCLIENT; i++)
		tu_close(got[i]);

	/* Episode 2 begins after a successful accept: one acceptor is told
	 * again.  The runtime closing a descriptor re-arms at once, without
	 * waiting for the back-off. */
	q1 = weft_worker_wait_ext_until(e.w, s1, UINT64_MAX);
	q2 = weft_worker_wait_ext_until(e.w, s2, UINT64_MAX);
	ck_assert_int_eq(weft_listener_take(l, e.w, s1, q1, &tag), -EAGAIN);
	ck_assert_int_eq(weft_listener_take(l, e.w, s2, q2, &tag), -EAGAIN);
	nfill = exhaust(fill);
	ck_assert_int_eq(connect_fd(c[NCLIENT], port), 0);
	wk = next_wake(e.w);
	ck_assert_uint_eq(wk.slot, s1);
	ck_assert_uint_eq(wk.seq, q1);
	ck_assert_int_eq(wk.code, -EMFILE);
	ck_assert_uint_ne(weft__listener_retry(e.rt, 0), UINT64_MAX);
	weft_worker_close_fd(e.w, own);
	ck_assert_uint_eq(weft__listener_retry(e.rt, 0), UINT64_MAX);
	wk = next_wake(e.w);
	ck_assert_uint_eq(wk.slot, s2);
	ck_assert_uint_eq(wk.seq, q2);
	ck_assert_int_eq(wk.code, 0);
	int last = weft_listener_claim(l, e.w, s2, q2);
	ck_assert_int_ge(last, 0);
	ck_assert_int_eq(peer_port(last), port_of(c[NCLIENT]));
	unexhaust(fill, nfill);
	ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &saved), 0);
	ck_assert_uint_eq(weft_listener_accepted(l), NCLIENT + 1);

	tu_close(last);
	for (int i = 0; i <= NCLIENT; i++)
		tu_close(c[i]);
	weft_worker_co_free(e.w, s1);
	weft_worker_co_free(e.w, s2);
	weft_listener_release(l, e.w, &tag);
	teardown(e);
}
END_TEST

#endif

/* A failed re-arm must not leave the listener disarmed for good: it backs
 * off and retries as an exhausted accept does.  The registration is
 * deleted behind the listener's back, so that re-arming it fails
 * (ENOENT), then restored disarmed; the retry then succeeds.  (Before, the
 * failure was ignored and the listener never fired again.) */
START_TEST(test_rearm_failure_retries)
{
	env_t e = setup();
	weft_listener_t *l = listen_backlog(e.w, 0, 1);
	int lfd = weft_listener_fd(l), port = port_of(lfd), tag, c[2];
	weft_poller_t *p = weft_runtime_poller(e.rt);
	uint32_t slot, seq = wait_accept(e.w, &slot);

	ck_assert_int_eq(weft_listener_take(l, e.w, slot, seq, &tag), -EAGAIN);
	c[0] = connect_to(port);
	ck_assert_int_ge(c[0], 0);
	ck_assert_int_eq(next_wake(e.w).code, 0);
	/* Full: disarmed.  Now the registration goes away. */
	ck_assert_int_eq(weft_poller_delete(p, lfd), 0);
	c[1] = connect_to(port);
	ck_assert_int_ge(c[1], 0);
	int a = weft_listener_claim(l, e.w, slot, seq);
	ck_assert_int_ge(a, 0);
	ck_assert_uint_ne(weft__listener_retry(e.rt, 0), UINT64_MAX);
	ck_assert_int_eq(weft_poller_add(p, lfd, WEFT_POLL_ONESHOT, 1), 0);
	harvest(e.w, l, 2);
	int b = weft_listener_take(l, e.w, 0, 0, NULL);
	ck_assert_int_ge(b, 0);
	ck_assert_int_eq(peer_port(b), port_of(c[1]));
	ck_assert_uint_eq(weft__listener_retry(e.rt, weft_clock_ns()), UINT64_MAX);
	tu_close(a);
	tu_close(b);
	tu_close(c[0]);
	tu_close(c[1]);
	weft_worker_co_free(e.w, slot);
	weft_listener_release(l, e.w, &tag);
	teardown(e);
}
END_TEST

static Suite *listener_suite(void)
{
	Suite *s = suite_create("listener");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 10);
	tcase_add_test(tc, test_take_after_harvest);
	tcase_add_test(tc, test_waiter_claims);
	tcase_add_test(tc, test_accept_wake_does_not_spin);
	tcase_add_test(tc, test_shared_refs);
	tcase_add_test(tc, test_relisten_after_close);
	tcase_add_test(tc, test_cancel_gives_back);
	tcase_add_test(tc, test_cancel_passes_on);
	tcase_add_test(tc, test_release_wakes_tag);
	tcase_add_test(tc, test_listen_twice_refused);
	tcase_add_test(tc, test_backlog_bounds_queue);
	tcase_add_test(tc, test_claim_rearms);
	tcase_add_test(tc, test_dead_waiter_passes_on);
	tcase_add_test(tc, test_post_enomem_keeps_both);
	tcase_add_test(tc, test_idle_worker_first);
#if !defined(_WIN32)
	tcase_add_test(tc, test_exhausted_backs_off);
#endif
	tcase_add_test(tc, test_rearm_failure_retries);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(listener_suite)
