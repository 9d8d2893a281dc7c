/* The IOCP poller (poller-iocp.c), run under Wine by contrib/windows-check:
 * readiness for accept, recv, send, a refused connect, the peer's FIN and
 * RST, a local close; level and one-shot semantics, cancel and re-arm (a
 * changed interest set, a delete while a request is in flight); two
 * threads waiting on one port, each event reported once; the cross-thread
 * wake-up (prompt, coalesced, never token 0); adopting another poller's
 * port; the errors of the contract.
 *
 * Completions arrive asynchronously (under Wine, through its server), so
 * "an event now" is waited for within a wide bound, and "no event" is
 * checked over a quiet spell. */
#include <windows.h>
#include <winsock2.h>
#include <ws2tcpip.h>

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "checkutil.h"
#include "clock.h"
#include "error.h"
#include "poller.h"
#include "thread.h"

enum { MAXEV = 16, SOON_MS = 5000, QUIET_MS = 150 };

static void setup(void)
{
	WSADATA wsa;

	ck_assert_int_eq(WSAStartup(MAKEWORD(2, 2), &wsa), 0);
}

static weft_poller_t *poller(void)
{
	weft_poller_t *p = NULL;

	ck_assert_int_eq(weft_poller_new(-1, &p), 0);
	ck_assert_ptr_nonnull(p);
	ck_assert_int_gt(weft_poller_fd(p), 0);
	return p;
}

static int fd_of(SOCKET s)
{
	return (int)(intptr_t)s;
}

static void nonblocking(SOCKET s)
{
	u_long on = 1;

	ck_assert_int_eq(ioctlsocket(s, FIONBIO, &on), 0);
}

/* A listening socket on 127.0.0.1, port chosen by the system. */
static SOCKET listener(struct sockaddr_in *sin)
{
	SOCKET l = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
	int len = sizeof *sin;

	ck_assert(l != INVALID_SOCKET);
	memset(sin, 0, sizeof *sin);
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ck_assert_int_eq(bind(l, (struct sockaddr *)sin, sizeof *sin), 0);
	ck_assert_int_eq(listen(l, 16), 0);
	ck_assert_int_eq(getsockname(l, (struct sockaddr *)sin, &len), 0);
	nonblocking(l);
	return l;
}

/* A connected TCP pair over loopback, both ends non-blocking. */
static void pair(SOCKET sv[2])
{
	struct sockaddr_in sin;
	SOCKET l = listener(&sin);
	u_long off = 0;

	sv[0] = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
	ck_assert(sv[0] != INVALID_SOCKET);
	ck_assert_int_eq(connect(sv[0], (struct sockaddr *)&sin, sizeof sin), 0);
	ck_assert_int_eq(ioctlsocket(l, FIONBIO, &off), 0); /* block in accept */
	sv[1] = accept(l, NULL, NULL);
	ck_assert(sv[1] != INVALID_SOCKET);
	closesocket(l);
	nonblocking(sv[0]);
	nonblocking(sv[1]);
}

static void put(SOCKET s, const char *str)
{
	ck_assert_int_eq(send(s, str, (int)strlen(str), 0), (int)strlen(str));
}

static void drain(SOCKET s)
{
	char buf[4096];

	while (recv(s, buf, sizeof buf, 0) > 0)
		;
}

/* The events of the first report for token within SOON_MS (0 if none);
 * reports for other tokens fail the test, token 0 never shows. */
static unsigned wait_for(weft_poller_t *p, uint64_t token)
{
	weft_poll_event_t ev[MAXEV];
	uint64_t t0 = weft_clock_ns();

	while (weft_clock_ns() - t0 < (uint64_t)SOON_MS * 1000000u) {
		int n = weft_poller_wait(p, ev, MAXEV, 100);

		ck_assert_int_ge(n, 0);
		for (int i = 0; i < n; i++) {
			ck_assert_uint_eq(ev[i].token, token);
		}
		if (n > 0) {
			ck_assert_int_eq(n, 1);
			return ev[0].events;
		}
	}
	return 0;
}

/* No report at all over a quiet spell. */
static void quiet(weft_poller_t *p)
{
	weft_poll_event_t ev[MAXEV];
	uint64_t t0 = weft_clock_ns();

	while (weft_clock_ns() - t0 < (uint64_t)QUIET_MS * 1000000u) {
		int n = weft_poller_wait(p, ev, MAXEV, 20);

		ck_assert_msg(n == 0, "unexpected event: token %llu events %u",
		              n > 0 ? (unsigned long long)ev[0].token : 0ull,
		              n > 0 ? ev[0].events : 0);
	}
}

START_TEST(test_new_free)
{
	weft_poller_t *p = poller();
	HANDLE port = (HANDLE)(intptr_t)weft_poller_fd(p);
	DWORD flags;

	ck_assert(GetHandleInformation(port, &flags));
	weft_poller_free(p);
	weft_poller_free(NULL);
	weft_alloc_fail_after(1);
	p = (weft_poller_t *)&p;
	ck_assert_int_eq(weft_poller_new(-1, &p), WEFT_ENOMEM);
	ck_assert_ptr_null(p);
	weft_alloc_fail_after(0);
}
END_TEST

START_TEST(test_contract_errors)
{
	weft_poller_t *p = poller();
	weft_poll_event_t ev[MAXEV];
	SOCKET sv[2], gone;

	pair(sv);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN, 0), -EINVAL);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN | WEFT_POLL_EDGE, 1),
	                 -EOPNOTSUPP);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN, 1), 0);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN, 1), -EEXIST);
	ck_assert_int_eq(weft_poller_modify(p, fd_of(sv[0]), WEFT_POLL_IN, 0), -EINVAL);
	ck_assert_int_eq(weft_poller_modify(p, fd_of(sv[0]), WEFT_POLL_EDGE, 1), -EOPNOTSUPP);
	ck_assert_int_eq(weft_poller_modify(p, fd_of(sv[1]), WEFT_POLL_IN, 1), -ENOENT);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[1])), -ENOENT);
	ck_assert_int_eq(weft_poller_add(p, -1, WEFT_POLL_IN, 1), -EBADF);
	gone = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
	closesocket(gone);
	ck_assert_int_eq(weft_poller_add(p, fd_of(gone), WEFT_POLL_IN, 2), -EBADF);
	ck_assert_int_eq(weft_poller_wait(p, ev, 0, 0), -EINVAL);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[0])), 0);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[0])), -ENOENT);
	quiet(p);
	closesocket(sv[0]);
	closesocket(sv[1]);
	weft_poller_free(p);
}
END_TEST

START_TEST(test_accept_ready)
{
	weft_poller_t *p = poller();
	struct sockaddr_in sin;
	SOCKET l = listener(&sin), c, a;

	ck_assert_int_eq(weft_poller_add(p, fd_of(l), WEFT_POLL_IN, 3), 0);
	quiet(p);
	c = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
	ck_assert_int_eq(connect(c, (struct sockaddr *)&sin, sizeof sin), 0);
	ck_assert_uint_eq(wait_for(p, 3), WEFT_POLL_IN);
	/* Level: reported again while the connection waits. */
	ck_assert_uint_eq(wait_for(p, 3), WEFT_POLL_IN);
	a = accept(l, NULL, NULL);
	ck_assert(a != INVALID_SOCKET);
	/* At most the one report already in flight, then silence. */
	(void)weft_poller_wait(p, (weft_poll_event_t[MAXEV]){0}, MAXEV, 50);
	quiet(p);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(l)), 0);
	closesocket(a);
	closesocket(c);
	closesocket(l);
	weft_poller_free(p);
}
END_TEST

START_TEST(test_recv_ready_level)
{
	weft_poller_t *p = poller();
	SOCKET sv[2];

	pair(sv);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN, 4), 0);
	quiet(p);
	put(sv[1], "x");
	ck_assert_uint_eq(wait_for(p, 4), WEFT_POLL_IN);
	ck_assert_uint_eq(wait_for(p, 4), WEFT_POLL_IN); /* level */
	drain(sv[0]);
	(void)weft_poller_wait(p, (weft_poll_event_t[MAXEV]){0}, MAXEV, 50);
	quiet(p);
	put(sv[1], "y");
	ck_assert_uint_eq(wait_for(p, 4), WEFT_POLL_IN);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[0])), 0);
	closesocket(sv[0]);
	closesocket(sv[1]);
	weft_poller_free(p);
}
END_TEST

START_TEST(test_send_ready)
{
	weft_poller_t *p = poller();
	static char chunk[65536];
	SOCKET sv[2];
	int total = 0;

	pair(sv);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_OUT | WEFT_POLL_ONESHOT, 5), 0);
	ck_assert_uint_eq(wait_for(p, 5), WEFT_POLL_OUT);
	/* Fill the pipe until it would block; then OUT waits for the peer. */
	for (;;) {
		int n = send(sv[0], chunk, sizeof chunk, 0);

		if (n < 0) {
			ck_assert_int_eq(WSAGetLastError(), WSAEWOULDBLOCK);
			break;
		}
		total += n;
		ck_assert_int_lt(total, 256 << 20);
	}
	ck_assert_int_eq(weft_poller_modify(p, fd_of(sv[0]), WEFT_POLL_OUT | WEFT_POLL_ONESHOT, 6),
	                 0);
	quiet(p);
	/* The peer reads until the writer can go on. */
	for (uint64_t t0 = weft_clock_ns(); weft_clock_ns() - t0 < 5000000000u;) {
		weft_poll_event_t ev[MAXEV];
		int n;

		drain(sv[1]);
		n = weft_poller_wait(p, ev, MAXEV, 20);
		ck_assert_int_ge(n, 0);
		if (n > 0) {
			ck_assert_int_eq(n, 1);
			ck_assert_uint_eq(ev[0].token, 6);
			ck_assert_uint_eq(ev[0].events, WEFT_POLL_OUT);
			total = -1;
			break;
		}
	}
	ck_assert_int_eq(total, -1);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[0])), 0);
	closesocket(sv[0]);
	closesocket(sv[1]);
	weft_poller_free(p);
}
END_TEST

START_TEST(test_connect_refused)
{
	weft_poller_t *p = poller();
	struct sockaddr_in sin;
	SOCKET l = listener(&sin), c;
	unsigned events;

	/* Nobody listens there any more. */
	closesocket(l);
	c = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
	nonblocking(c);
	ck_assert_int_eq(weft_poller_add(p, fd_of(c), WEFT_POLL_OUT, 7), 0);
	if (connect(c, (struct sockaddr *)&sin, sizeof sin) != 0)
		ck_assert_int_eq(WSAGetLastError(), WSAEWOULDBLOCK);
	/* Windows retries a refused SYN for about a second: wide bound. */
	events = wait_for(p, 7);
	ck_assert_uint_ne(events & WEFT_POLL_ERR, 0);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(c)), 0);
	closesocket(c);
	weft_poller_free(p);
}
END_TEST

START_TEST(test_peer_fin)
{
	weft_poller_t *p = poller();
	SOCKET sv[2];

	pair(sv);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN | WEFT_POLL_ONESHOT, 8), 0);
	quiet(p);
	ck_assert_int_eq(shutdown(sv[1], SD_SEND), 0);
	ck_assert_uint_eq(wait_for(p, 8) & (WEFT_POLL_IN | WEFT_POLL_HUP),
	                  WEFT_POLL_IN | WEFT_POLL_HUP);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[0])), 0);
	closesocket(sv[0]);
	closesocket(sv[1]);
	weft_poller_free(p);
}
END_TEST

START_TEST(test_peer_rst)
{
	weft_poller_t *p = poller();
	struct linger lin = {1, 0};
	SOCKET sv[2];

	pair(sv);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN | WEFT_POLL_ONESHOT, 9), 0);
	quiet(p);
	/* A zero linger makes close send a reset.  Wine reports a reset
	 * that comes before any recv as the end of the stream: HUP either
	 * way, ERR only where the reset shows as one. */
	ck_assert_int_eq(setsockopt(sv[1], SOL_SOCKET, SO_LINGER, (char *)&lin, sizeof lin), 0);
	closesocket(sv[1]);
	ck_assert_uint_ne(wait_for(p, 9) & WEFT_POLL_HUP, 0);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[0])), 0);
	closesocket(sv[0]);
	weft_poller_free(p);
}
END_TEST

/* Closed without delete(): the registration goes, silently, and the
 * handle value may be registered again. */
START_TEST(test_local_close)
{
	weft_poller_t *p = poller();
	SOCKET sv[2], again;

	pair(sv);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN, 10), 0);
	quiet(p);
	closesocket(sv[0]);
	quiet(p);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[0])), -ENOENT);
	again = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
	ck_assert_int_eq(weft_poller_add(p, fd_of(again), WEFT_POLL_IN, 11), 0);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(again)), 0);
	closesocket(again);
	closesocket(sv[1]);
	weft_poller_free(p);
}
END_TEST

/* One-shot: one report, silence while disarmed, re-armed by modify (with
 * a new token).  A modify while a request is in flight cancels it and
 * asks again with the new interest; a delete while in flight cancels it
 * for good. */
START_TEST(test_oneshot_cancel_rearm)
{
	weft_poller_t *p = poller();
	SOCKET sv[2];

	pair(sv);
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN | WEFT_POLL_ONESHOT, 12), 0);
	put(sv[1], "a");
	ck_assert_uint_eq(wait_for(p, 12), WEFT_POLL_IN);
	quiet(p);
	for (uint64_t t = 13; t < 16; t++) {
		ck_assert_int_eq(
		    weft_poller_modify(p, fd_of(sv[0]), WEFT_POLL_IN | WEFT_POLL_ONESHOT, t), 0);
		ck_assert_uint_eq(wait_for(p, t), WEFT_POLL_IN);
		quiet(p);
	}
	drain(sv[0]);

	/* In flight (nothing to read), then changed to OUT: the pending
	 * request is cancelled and the new one reports at once. */
	ck_assert_int_eq(weft_poller_modify(p, fd_of(sv[0]), WEFT_POLL_IN, 16), 0);
	quiet(p);
	ck_assert_int_eq(weft_poller_modify(p, fd_of(sv[0]), WEFT_POLL_OUT | WEFT_POLL_ONESHOT, 17),
	                 0);
	ck_assert_uint_eq(wait_for(p, 17), WEFT_POLL_OUT);
	quiet(p);

	/* In flight, then deleted: data arriving later reports nothing. */
	ck_assert_int_eq(weft_poller_modify(p, fd_of(sv[0]), WEFT_POLL_IN, 18), 0);
	quiet(p);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[0])), 0);
	put(sv[1], "b");
	quiet(p);
	/* And it can come back. */
	ck_assert_int_eq(weft_poller_add(p, fd_of(sv[0]), WEFT_POLL_IN, 19), 0);
	ck_assert_uint_eq(wait_for(p, 19), WEFT_POLL_IN);
	ck_assert_int_eq(weft_poller_delete(p, fd_of(sv[0])), 0);
	closesocket(sv[0]);
	closesocket(sv[1]);
	weft_poller_free(p);
}
END_TEST

/* ---- several threads ---- */

enum { SHARED_N = 16 };

struct shared {
	weft_poller_t *p;
	_Atomic int stop;
	_Atomic int seen[SHARED_N + 1];
	_Atomic int bad;
	_Atomic int reports[2];
	_Atomic int exited;
};

struct harvester {
	struct shared *sh;
	int id;
};

static void *harvest(void *arg)
{
	struct harvester *h = arg;
	struct shared *sh = h->sh;
	weft_poll_event_t ev[4];

	while (!atomic_load(&sh->stop)) {
		int n = weft_poller_wait(sh->p, ev, 4, 5000);

		if (n < 0)
			atomic_fetch_add(&sh->bad, 1);
		for (int i = 0; i < n; i++) {
			if (ev[i].token < 1 || ev[i].token > SHARED_N ||
			    ev[i].events != WEFT_POLL_IN)
				atomic_fetch_add(&sh->bad, 1);
			else
				atomic_fetch_add(&sh->seen[ev[i].token], 1);
			atomic_fetch_add(&sh->reports[h->id], 1);
		}
	}
	atomic_fetch_add(&sh->exited, 1);
	return NULL;
}

/* Two threads block on one port; every one-shot event goes to exactly one
 * of them, and wakes end both. */
START_TEST(test_two_threads_one_port)
{
	static struct shared sh;
	struct harvester h[2] = {{&sh, 0}, {&sh, 1}};
	SOCKET sv[SHARED_N + 1][2];
	weft_thread_t th[2];
	uint64_t t0;
	int total;

	sh.p = poller();
	for (int i = 1; i <= SHARED_N; i++) {
		pair(sv[i]);
		ck_assert_int_eq(weft_poller_add(sh.p, fd_of(sv[i][0]),
		                                 WEFT_POLL_IN | WEFT_POLL_ONESHOT, (uint64_t)i),
		                 0);
	}
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(weft_thread_create(&th[i], harvest, &h[i], 0), 0);
	Sleep(50); /* both blocked, most likely */
	for (int i = 1; i <= SHARED_N; i++)
		put(sv[i][1], "z");
	t0 = weft_clock_ns();
	do {
		total = 0;
		for (int i = 1; i <= SHARED_N; i++)
			total += atomic_load(&sh.seen[i]) > 0;
		Sleep(5);
	} while (total < SHARED_N && weft_clock_ns() - t0 < 10000000000u);
	Sleep(QUIET_MS); /* any duplicate would show by now */
	atomic_store(&sh.stop, 1);
	/* Each wake ends at most one waiter (they coalesce until taken):
	 * keep waking until both are out. */
	while (atomic_load(&sh.exited) < 2) {
		weft_poller_wake(sh.p);
		Sleep(5);
	}
	for (int i = 0; i < 2; i++)
		ck_assert_int_eq(weft_thread_join(th[i], NULL), 0);
	ck_assert_int_eq(atomic_load(&sh.bad), 0);
	for (int i = 1; i <= SHARED_N; i++)
		ck_assert_int_eq(atomic_load(&sh.seen[i]), 1);
	for (int i = 1; i <= SHARED_N; i++) {
		ck_assert_int_eq(weft_poller_delete(sh.p, fd_of(sv[i][0])), 0);
		closesocket(sv[i][0]);
		closesocket(sv[i][1]);
	}
	weft_poller_free(sh.p);
}
END_TEST

struct waker {
	weft_poller_t *p;
	_Atomic int armed;
	_Atomic int returned;
	_Atomic int bad;
	_Atomic uint64_t t_return;
};

static void *blocked_waiter(void *arg)
{
	struct waker *w = arg;
	weft_poll_event_t ev[MAXEV];

	for (int i = 1; i <= 20; i++) {
		int n;

		atomic_store(&w->armed, i);
		n = weft_poller_wait(w->p, ev, MAXEV, 10000);
		atomic_store(&w->t_return, weft_clock_ns());
		if (n != 0)
			atomic_fetch_add(&w->bad, 1);
		atomic_store(&w->returned, i);
	}
	return NULL;
}

/* A wait() blocked in another thread returns after wake(), every time,
 * long before its timeout, with no event (token 0 never surfaces). */
START_TEST(test_wake_cross_thread)
{
	struct waker w = {.p = poller()};
	weft_thread_t th;

	ck_assert_int_eq(weft_thread_create(&th, blocked_waiter, &w, 0), 0);
	for (int i = 1; i <= 20; i++) {
		uint64_t t0;

		while (atomic_load(&w.armed) != i)
			Sleep(0);
		Sleep(5); /* let it block */
		t0 = weft_clock_ns();
		weft_poller_wake(w.p);
		while (atomic_load(&w.returned) != i)
			Sleep(0);
		ck_assert_uint_lt(atomic_load(&w.t_return) - t0, 2000000000u);
	}
	ck_assert_int_eq(weft_thread_join(th, NULL), 0);
	ck_assert_int_eq(atomic_load(&w.bad), 0);
	weft_poller_free(w.p);
}
END_TEST

/* Many wakes with nobody waiting: one wait() absorbs them all, and the
 * next one really waits for its timeout. */
START_TEST(test_wakes_coalesce)
{
	weft_poller_t *p = poller();
	weft_poll_event_t ev[MAXEV];
	uint64_t t0;

	for (int i = 0; i < 10000; i++)
		weft_poller_wake(p);
	ck_assert_int_eq(weft_poller_wait(p, ev, MAXEV, 1000), 0);
	t0 = weft_clock_ns();
	ck_assert_int_eq(weft_poller_wait(p, ev, MAXEV, 100), 0);
	ck_assert_uint_ge(weft_clock_ns() - t0, 90000000u);
	/* The flag was cleared: the next wake posts again. */
	weft_poller_wake(p);
	t0 = weft_clock_ns();
	ck_assert_int_eq(weft_poller_wait(p, ev, MAXEV, 5000), 0);
	ck_assert_uint_lt(weft_clock_ns() - t0, 2000000000u);
	weft_poller_free(p);
}
END_TEST

/* weft.iocp(port): a poller adopting another's port shares its
 * completions and leaves the port open when freed. */
START_TEST(test_adopt)
{
	weft_poller_t *owner = poller(), *guest = NULL;
	HANDLE ev_handle;
	SOCKET sv[2];
	DWORD flags;

	ck_assert_int_eq(weft_poller_new(weft_poller_fd(owner), &guest), 0);
	ck_assert_int_eq(weft_poller_fd(guest), weft_poller_fd(owner));
	pair(sv);
	ck_assert_int_eq(weft_poller_add(guest, fd_of(sv[0]), WEFT_POLL_IN | WEFT_POLL_ONESHOT, 77),
	                 0);
	put(sv[1], "q");
	ck_assert_uint_eq(wait_for(owner, 77), WEFT_POLL_IN);
	ck_assert_int_eq(weft_poller_delete(guest, fd_of(sv[0])), 0);
	/* The guest's wake ends a wait on the port. */
	weft_poller_wake(guest);
	ck_assert_int_eq(weft_poller_wait(owner, (weft_poll_event_t[MAXEV]){0}, MAXEV, 2000), 0);
	weft_poller_free(guest);
	ck_assert(GetHandleInformation((HANDLE)(intptr_t)weft_poller_fd(owner), &flags));
	ck_assert_int_eq(weft_poller_add(owner, fd_of(sv[0]), WEFT_POLL_IN, 78), 0);
	ck_assert_uint_eq(wait_for(owner, 78), WEFT_POLL_IN);
	ck_assert_int_eq(weft_poller_delete(owner, fd_of(sv[0])), 0);
	closesocket(sv[0]);
	closesocket(sv[1]);

	/* Not a port: an event handle; not a handle at all. */
	ev_handle = CreateEventW(NULL, FALSE, FALSE, NULL);
	guest = (weft_poller_t *)&guest;
	ck_assert_int_eq(weft_poller_new((int)(intptr_t)ev_handle, &guest), -EINVAL);
	ck_assert_ptr_null(guest);
	ck_assert(GetHandleInformation(ev_handle, &flags));
	CloseHandle(ev_handle);
	ck_assert_int_eq(weft_poller_new(1 << 30, &guest), -EBADF);
	weft_poller_free(owner);
}
END_TEST

/* A poller registered in two others (as the runtime's shared poller is in
 * each worker's): while it holds an event, both parents report IN for it;
 * the event itself is taken from the nested poller, once.  Its wake-up
 * reaches the parents too; deletes and frees leave nothing behind. */
START_TEST(test_nested)
{
	weft_poller_t *child = poller(), *a = poller(), *b = poller();
	weft_poll_event_t ev[MAXEV];
	SOCKET sv[2];
	int n;

	ck_assert_int_eq(weft_poller_caps() & WEFT_POLLER_EDGES, 0);
	ck_assert_int_eq(weft_poller_add(a, weft_poller_fd(child), WEFT_POLL_IN, 1), 0);
	ck_assert_int_eq(weft_poller_add(b, weft_poller_fd(child), WEFT_POLL_IN, 1), 0);
	ck_assert_int_eq(weft_poller_add(a, weft_poller_fd(child), WEFT_POLL_IN, 1), -EEXIST);
	ck_assert_int_eq(weft_poller_add(child, weft_poller_fd(child), WEFT_POLL_IN, 1), -EINVAL);
	pair(sv);
	ck_assert_int_eq(weft_poller_add(child, fd_of(sv[0]), WEFT_POLL_IN | WEFT_POLL_ONESHOT, 9),
	                 0);
	quiet(a);
	put(sv[1], "x");
	ck_assert_uint_eq(wait_for(a, 1), WEFT_POLL_IN);
	ck_assert_uint_eq(wait_for(b, 1), WEFT_POLL_IN);
	n = weft_poller_wait(child, ev, MAXEV, 0);
	ck_assert_int_eq(n, 1);
	ck_assert_uint_eq(ev[0].token, 9);
	ck_assert_uint_eq(ev[0].events, WEFT_POLL_IN);
	/* One-shot: taken once; the parents' notices are spent. */
	ck_assert_int_eq(weft_poller_wait(child, ev, MAXEV, 0), 0);
	quiet(a);
	/* Re-armed: the next notice comes, and a blocking wait on the nested
	 * poller itself gets the event. */
	ck_assert_int_eq(
	    weft_poller_modify(child, fd_of(sv[0]), WEFT_POLL_IN | WEFT_POLL_ONESHOT, 9), 0);
	ck_assert_uint_eq(wait_for(child, 9), WEFT_POLL_IN);
	/* A wake of the nested poller reaches its parents. */
	weft_poller_wake(child);
	ck_assert_uint_eq(wait_for(a, 1), WEFT_POLL_IN);
	ck_assert_int_eq(weft_poller_wait(child, ev, MAXEV, 0), 0);
	ck_assert_int_eq(weft_poller_delete(a, weft_poller_fd(child)), 0);
	ck_assert_int_eq(weft_poller_delete(a, weft_poller_fd(child)), -ENOENT);
	ck_assert_int_eq(weft_poller_delete(child, fd_of(sv[0])), 0);
	ck_assert_int_eq(weft_poller_delete(b, weft_poller_fd(child)), 0);
	weft_poller_free(a);
	weft_poller_free(b);
	weft_poller_free(child);
	closesocket(sv[0]);
	closesocket(sv[1]);
}
END_TEST

static Suite *poller_suite(void)
{
	Suite *s = suite_create("poller-iocp");
	TCase *tc = tcase_create("core");
	TCase *th = tcase_create("threads");

	tcase_add_unchecked_fixture(tc, setup, NULL);
	tcase_add_unchecked_fixture(th, setup, NULL);
	tcase_set_timeout(tc, 60);
	tcase_set_timeout(th, 60);
	tcase_add_test(tc, test_new_free);
	tcase_add_test(tc, test_contract_errors);
	tcase_add_test(tc, test_accept_ready);
	tcase_add_test(tc, test_recv_ready_level);
	tcase_add_test(tc, test_send_ready);
	tcase_add_test(tc, test_connect_refused);
	tcase_add_test(tc, test_peer_fin);
	tcase_add_test(tc, test_peer_rst);
	tcase_add_test(tc, test_local_close);
	tcase_add_test(tc, test_oneshot_cancel_rearm);
	tcase_add_test(tc, test_adopt);
	tcase_add_test(tc, test_nested);
	suite_add_tcase(s, tc);
	tcase_add_test(th, test_two_threads_one_port);
	tcase_add_test(th, test_wake_cross_thread);
	tcase_add_test(th, test_wakes_coalesce);
	suite_add_tcase(s, th);
	return s;
}

WEFT_CHECK_MAIN(poller_suite)
