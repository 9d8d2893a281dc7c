/* The poller contract (poller.h) on Linux epoll.  This is the only file in
 * lib/ that knows about epoll.
 *
 * Wake-ups go through an eventfd registered level-triggered with token 0.
 * Level-triggered, so that whichever thread is blocked in epoll_wait sees it
 * and it stays visible until drained; edge-triggered would hand the single
 * edge to one waiter, possibly not the one that drains it.  A "break pending"
 * flag makes wakes coalesce: only the wake that turns the flag from 0 to 1
 * writes the eventfd, and wait() drains the eventfd *before* clearing the
 * flag, so a set flag always means "a write is in the eventfd or a wait() is
 * about to return".  Clearing first would let a wake write between the clear
 * and the drain, leaving the flag set over an empty eventfd: every later
 * wake would be skipped. */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "alloc.h"
#include "error.h"
#include "poller.h"

/* Raw events fetched per wait() call; the rest stay queued in the kernel
 * for the next call. */
#define RAW_MAX 256

struct weft_poller {
	int epfd;
	int evfd;    /* wake channel, registered with token 0 */
	int adopted; /* epfd belongs to someone else: don't close it */
	_Atomic int wake_pending;
};

static uint32_t to_epoll(unsigned events)
{
	uint32_t e = 0;

	/* RDHUP comes with IN so that a half-closed peer wakes a reader even
	 * when no bytes arrive with the FIN; PRI, so that a reader knows a
	 * short read may have stopped at an urgent mark. */
	if (events & WEFT_POLL_IN)
		e |= EPOLLIN | EPOLLRDHUP | EPOLLPRI;
	if (events & WEFT_POLL_OUT)
		e |= EPOLLOUT;
	if (events & WEFT_POLL_EDGE)
		e |= EPOLLET;
	if (events & WEFT_POLL_ONESHOT)
		e |= EPOLLONESHOT;
	return e;
}

static unsigned from_epoll(uint32_t e)
{
	unsigned events = 0;

	if (e & EPOLLIN)
		events |= WEFT_POLL_IN;
	if (e & EPOLLOUT)
		events |= WEFT_POLL_OUT;
	if (e & (EPOLLHUP | EPOLLRDHUP))
		events |= WEFT_POLL_HUP;
	if (e & EPOLLERR)
		events |= WEFT_POLL_ERR;
	if (e & EPOLLPRI)
		events |= WEFT_POLL_PRI;
	return events;
}

static int ctl(weft_poller_t *p, int op, int fd, unsigned events, uint64_t token)
{
	/* DEL ignores the event but kernels before 2.6.9 demand a non-NULL
	 * pointer, so always pass one. */
	struct epoll_event ev = {.events = to_epoll(events), .data.u64 = token};

	if (op != EPOLL_CTL_DEL && token == 0)
		return -EINVAL; /* token 0 is the wake channel's */
	if (epoll_ctl(p->epfd, op, fd, &ev) < 0)
		return -errno;
	return 0;
}

unsigned weft_poller_caps(void)
{
	return WEFT_POLLER_EDGES;
}

const char *weft_poller_kind(void)
{
	return "epoll";
}

int weft_poller_new(int fd, weft_poller_t **out)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
	weft_poller_t *p;
	int err;

	*out = NULL;
	p = weft_malloc(sizeof *p);
	if (p == NULL)
		return WEFT_ENOMEM;
	p->adopted = fd >= 0;
	p->evfd = -1;
	atomic_init(&p->wake_pending, 0);
	p->epfd = p->adopted ? fd : epoll_create1(EPOLL_CLOEXEC);
	if (p->epfd < 0)
		goto fail;
	p->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->evfd < 0)
		goto fail;
	if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->evfd, &ev) < 0)
		goto fail;
	*out = p;
	return 0;
fail:
	err = -errno;
	if (p->evfd >= 0)
		close(p->evfd);
	if (p->epfd >= 0 && !p->adopted)
		close(p->epfd);
	weft_free(p);
	return err;
}

void weft_poller_free(weft_poller_t *p)
{
	struct epoll_event ev = {0};

	if (p == NULL)
		return;
	/* An adopted epfd outlives us; take the eventfd out explicitly rather
	 * than rely on close() doing it, which it only does once no other
	 * descriptor (say, one inherited across fork) refers to the eventfd. */
	if (p->adopted)
		epoll_ctl(p->epfd, EPOLL_CTL_DEL, p->evfd, &ev);
	close(p->evfd);
	if (!p->adopted)
		close(p->epfd);
	weft_free(p);
}

int weft_poller_fd(const weft_poller_t *p)
{
	return p->epfd;
}

int weft_poller_add(weft_poller_t *p, int fd, unsigned events, uint64_t token)
{
	return ctl(p, EPOLL_CTL_ADD, fd, events, token);
}

int weft_poller_modify(weft_poller_t *p, int fd, unsigned events, uint64_t token)
{
	return ctl(p, EPOLL_CTL_MOD, fd, events, token);
}

int weft_poller_delete(weft_poller_t *p, int fd)
{
	return ctl(p, EPOLL_CTL_DEL, fd, 0, 0);
}

/* Empty the eventfd, then allow the next wake to write again.  The exchange
 * is acq_rel so that it also acquires whatever a coalesced wake (one that
 * found the flag set and wrote nothing) published before calling wake():
 * that wake's RMW is earlier in the flag's modification order. */
static void drain(weft_poller_t *p)
{
	uint64_t n;

	/* One read takes the whole counter.  The fd is non-blocking because
	 * another thread in wait() may have drained it first (EAGAIN). */
	(void)!read(p->evfd, &n, sizeof n);
	atomic_exchange_explicit(&p->wake_pending, 0, memory_order_acq_rel);
}

int weft_poller_wait(weft_poller_t *p, weft_poll_event_t *ev, int max, int timeout_ms)
{
	struct epoll_event raw[RAW_MAX];
	int n, i, count = 0;

	if (max <= 0)
		return -EINVAL;
	n = epoll_wait(p->epfd, raw, max < RAW_MAX ? max : RAW_MAX, timeout_ms);
	if (n < 0)
		return errno == EINTR ? 0 : -errno;
	for (i = 0; i < n; i++) {
		if (raw[i].data.u64 == 0) {
			drain(p);
			continue;
		}
		ev[count].token = raw[i].data.u64;
		ev[count].events = from_epoll(raw[i].events);
		count++;
	}
	return count;
}

void weft_poller_wake(weft_poller_t *p)
{
	uint64_t one = 1;

	/* acq_rel: release publishes the caller's work to the thread that
	 * clears the flag; acquire pairs with that clear, so our write comes
	 * after the drain that preceded it. */
	if (atomic_exchange_explicit(&p->wake_pending, 1, memory_order_acq_rel) != 0)
		return;
	/* Can only fail with EAGAIN when the counter is near 2^64, which the
	 * flag makes impossible; nothing useful to do about anything else. */
	(void)!write(p->evfd, &one, sizeof one);
}
