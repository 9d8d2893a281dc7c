/* Shared listening sockets: see listener.h. */
#include "config.h"

#include "listener.h"

#include <assert.h>
#include <errno.h>
#include <string.h>

#include "alloc.h"
#include "clock.h"
#include "error.h"
#include "sock.h"

/* Connections accepted per poller event: enough to drain a burst, small
 * enough that the harvesting worker returns to its own threads soon. */
#define ACCEPT_BATCH 16
/* Accepted connections not yet taken (queued or handed to a waiter) at
 * most: the listen backlog, capped at QUEUE_MAX.  At the bound the listener
 * is left disarmed and the kernel's backlog holds the rest until acceptors
 * catch up.  Counting handed connections in the bound is what leaves room
 * for a cancelled waiter to give its connection back to the queue. */
#define QUEUE_MAX 1024
/* Accepting out of descriptors (EMFILE, ENFILE) or kernel memory
 * (ENOBUFS, ENOMEM) fails for as long as the backlog is not empty: the
 * connection stays queued in the kernel and the listener stays readable,
 * so re-arming at once would make the poller, accept and re-arm spin.
 * The listener stays disarmed instead, for a back-off that doubles from
 * BACKOFF_MIN to BACKOFF_MAX and starts over after an accept succeeds,
 * or until the runtime closes a descriptor (weft__listener_fd_closed). */
#define BACKOFF_MIN (10 * 1000000ull)
#define BACKOFF_MAX (1000 * 1000000ull)

typedef struct waiter {
	weft_worker_t *w;
	uint32_t slot, seq;
	const void *tag;
	int fd; /* handed: the connection assigned to this waiter */
} waiter_t;

struct weft_listener {
	weft_runtime_t *rt;
	weft_fd_t *rec;
	int fd;
	struct sockaddr_storage key; /* the address asked for (explicit port) */
	socklen_t keylen;            /* 0: not shared (port 0) */
	int backlog;                 /* as asked by the first listen */
	weft_mutex_t lock;        /* everything below */
	int refs;
	weft_worker_t **users; /* the worker of each reference (refs entries) */
	size_t capusers;
	int armed;  /* the one-shot registration is armed */
	int closed; /* the last reference is gone */
	int *queue; /* accepted fds, a ring */
	size_t qhead, qlen, qmax; /* qlen + nhanded <= qmax <= QUEUE_MAX */
	waiter_t *waiters; /* FIFO */
	size_t nwait, capwait;
	waiter_t *handed; /* woken with a connection of their own, not yet claimed */
	size_t nhanded, caphanded;
	/* Accept failing (see BACKOFF_MIN).  An episode lasts from a failure
	 * to the next accept that succeeds; one acceptor hears of it. */
	uint64_t backoff;  /* the last back-off, ns; 0 when not failing */
	uint64_t retry_at; /* backed off (disarmed) until then; 0 = not */
	int episode;       /* the error that began the episode, 0 = none */
	int told;          /* an acceptor was given that error */
	_Atomic uint64_t accepted, attempts; /* stats: any thread reads them */
	weft_listener_t *next; /* the runtime's list */
};

static int same_addr(const struct sockaddr *a, const struct sockaddr *b)
{
	if (a->sa_family != b->sa_family)
		return 0;
	if (a->sa_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	if (a->sa_family == AF_INET6) {
		const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
		return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
		       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
	}
	return 0;
}

static int shareable(const struct sockaddr *sa)
{
	return sa && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) &&
	       weft_sa_port(sa) != 0;
}

static int full(const weft_listener_t *l)
{
	return l->qlen + l->nhanded >= l->qmax;
}

static int grow(waiter_t **v, size_t *cap, size_t n)
{
	if (n < *cap)
		return 0;
	size_t c = *cap ? *cap * 2 : 8;
	waiter_t *nv = weft_realloc(*v, c * sizeof *nv);
	if (!nv)
		return WEFT_ENOMEM;
	*v = nv;
	*cap = c;
	return 0;
}

/* Post a wake-up to a waiter's worker: 0, WEFT_ECLOSED (the worker has
 * been freed: the waiter is gone) or WEFT_ENOMEM (its inbox could not
 * grow). */
static int wake(const waiter_t *wt, int32_t code)
{
	weft_msg_t m = {WEFT_MSG_WAKE_QUIET, wt->slot, wt->seq, code, NULL};
	return weft_worker_post(wt->w, &m);
}

static void remove_waiter(weft_listener_t *l, size_t i)
{
	memmove(&l->waiters[i], &l->waiters[i + 1], (l->nwait - i - 1) * sizeof *l->waiters);
	l->nwait--;
}

/* Give the episode's error to the first acceptor in line, once: the
 * others keep waiting, and accepting resumes by itself.  A waiter whose
 * worker is gone is dropped for the next.  Lock held. */
static void tell(weft_listener_t *l)
{
	while (l->episode && !l->told && l->nwait > 0) {
		int rc = wake(&l->waiters[0], l->episode);
		if (rc == WEFT_ENOMEM)
			return; /* the next event or take tries again */
		remove_waiter(l, 0);
		if (rc == 0)
			l->told = 1;
	}
}

/* Accepting failed with err, or re-arming did: stay disarmed for the next
 * back-off.  Registry lock and l->lock held. */
static void back_off(weft_listener_t *l, int err)
{
	uint64_t now = weft_clock_ns();
	l->armed = 0;
	if (l->backoff == 0)
		l->backoff = BACKOFF_MIN;
	else
		l->backoff = l->backoff >= BACKOFF_MAX / 2 ? BACKOFF_MAX : 2 * l->backoff;
	l->retry_at = now + l->backoff;
	if (!l->episode)
		l->episode = err;
	_Atomic uint64_t *next = weft__runtime_listener_retry(l->rt);
	uint64_t cur = atomic_load_explicit(next, memory_order_relaxed);
	if (cur == 0 || l->retry_at < cur) {
		atomic_store_explicit(next, l->retry_at, memory_order_relaxed);
		/* A worker blocked in the poller chose its timeout without this
		 * retry time: make it return and choose again. */
		weft_poller_wake(weft_runtime_poller(l->rt));
	}
	tell(l);
}

/* Whether the one-shot registration should be armed again. */
static int wants_arming(const weft_listener_t *l)
{
	return !l->armed && !l->closed && !l->retry_at && !full(l);
}

/* Arm the one-shot registration again, unless full, closed or backed
 * off.  A failed re-arm (epoll_ctl out of memory, say) must not leave the
 * listener disarmed for good: it backs off and retries as a failed accept
 * does.  Registry lock and l->lock held (back_off needs both). */
static void rearm(weft_listener_t *l)
{
	if (!wants_arming(l))
		return;
	int rc = weft_poller_modify(weft_runtime_poller(l->rt), l->fd,
				    WEFT_POLL_IN | WEFT_POLL_ONESHOT, weft_fd_token(l->rec));
	if (rc == 0)
		l->armed = 1;
	else
		back_off(l, rc);
}

/* rearm() for a caller holding neither lock (the order is registry lock,
 * then l->lock).  l is alive: the caller holds a reference. */
static void rearm_unlocked(weft_listener_t *l)
{
	weft_mutex_t *reg = weft__runtime_listener_lock(l->rt);
	weft_mutex_lock(reg);
	weft_mutex_lock(&l->lock);
	rearm(l);
	weft_mutex_unlock(&l->lock);
	weft_mutex_unlock(reg);
}

/* Record one more reference held by worker w.  l->lock held (or l not
 * yet shared). */
static int add_user(weft_listener_t *l, weft_worker_t *w)
{
	if ((size_t)l->refs >= l->capusers) {
		size_t c = l->capusers ? l->capusers * 2 : 4;
		weft_worker_t **v = weft_realloc(l->users, c * sizeof *v);
		if (!v)
			return WEFT_ENOMEM;
		l->users = v;
		l->capusers = c;
	}
	l->users[l->refs] = w;
	return 0;
}

/* Options that change how a listening socket behaves: a worker joining a
 * listener must have asked for the same ones, since it gets that socket.
 * By name, through sock.h's table: an option this platform lacks is
 * skipped. */
static const char *const joined_opts[] = {
	"so_reuseaddr", "so_reuseport", "so_keepalive",     "so_rcvbuf",
	"so_sndbuf",    "tcp_nodelay",  "tcp_defer_accept", "tcp_maxseg",
};

static int same_opts(int a, int b)
{
	for (size_t i = 0; i < sizeof joined_opts / sizeof *joined_opts; i++) {
		const weft_sockopt_t *o = weft_sockopt_find(joined_opts[i]);
		int x = 0, y = 0;
		if (!o)
			continue;
		int rx = weft_sockopt_get_int(a, o, &x);
		int ry = weft_sockopt_get_int(b, o, &y);
		if (rx != ry || (rx == 0 && x != y))
			return 0;
	}
	return 1;
}

/* Worker w asks to listen where l listens.  Sharing is for the workers of
 * a runtime, each listening once with the same backlog and options; a
 * second listen from the same worker, or one that asks for something
 * else, is refused as the kernel would refuse a second socket on the
 * address.  l->lock held. */
static int join(weft_listener_t *l, weft_worker_t *w, int fd, int backlog)
{
	for (int i = 0; i < l->refs; i++)
		if (l->users[i] == w)
			return -EADDRINUSE;
	if (backlog != l->backlog || !same_opts(fd, l->fd))
		return -EADDRINUSE;
	if (add_user(l, w) < 0)
		return WEFT_ENOMEM;
	l->refs++;
	return 0;
}

int weft_listener_listen(weft_worker_t *w, weft_fd_t *r, const struct sockaddr *sa,
			 socklen_t salen, int backlog, weft_listener_t **out)
{
	weft_runtime_t *rt = w->rt;
	weft_mutex_t *reg = weft__runtime_listener_lock(rt);
	weft_listener_t **head = (weft_listener_t **)weft__runtime_listeners(rt);
	int fd = atomic_load(&r->fd);
	int rc = 0;

	/* Lookup, bind and listen under the registry lock, so that two
	 * workers listening at once end up on one socket. */
	weft_mutex_lock(reg);
	if (shareable(sa)) {
		for (weft_listener_t *l = *head; l; l = l->next) {
			if (l->keylen && same_addr((struct sockaddr *)&l->key, sa)) {
				weft_mutex_lock(&l->lock);
				rc = join(l, w, fd, backlog);
				weft_mutex_unlock(&l->lock);
				weft_mutex_unlock(reg);
				if (rc < 0)
					return rc;
				weft_worker_close_fd(w, r);
				*out = l;
				return 0;
			}
		}
	}
	weft_listener_t *l = weft_calloc(1, sizeof *l);
	int *queue = weft_malloc(QUEUE_MAX * sizeof *queue);
	if (!l || !queue || add_user(l, w) < 0) {
		rc = WEFT_ENOMEM;
		goto fail;
	}
	if (sa && (rc = weft_sock_bind(fd, sa, salen)) < 0)
		goto fail;
	if ((rc = weft_sock_listen(fd, backlog)) < 0)
		goto fail;
	l->rt = rt;
	l->rec = r;
	l->fd = fd;
	l->queue = queue;
	l->qmax = backlog > 0 && backlog < QUEUE_MAX ? (size_t)backlog : QUEUE_MAX;
	l->backlog = backlog;
	l->refs = 1;
	weft_mutex_init(&l->lock);
	if (shareable(sa)) {
		memcpy(&l->key, sa, salen);
		l->keylen = salen;
	} else if (sa && (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)) {
		/* Port 0: the kernel chose the port.  Other workers that then
		 * listen on that address and port explicitly (told it by the
		 * first, as `weft -t N` servers on port 0 do) join this socket
		 * instead of failing with "address in use". */
		struct sockaddr_storage bound;
		socklen_t blen = sizeof bound;
		if (getsockname(fd, (struct sockaddr *)&bound, &blen) == 0 &&
		    shareable((struct sockaddr *)&bound)) {
			memcpy(&l->key, &bound, blen);
			l->keylen = blen;
		}
	}
	/* The record now belongs to the listener, not to w: it moves to the
	 * shared poller, and its events go to whichever worker harvests
	 * them, through udata. */
	if ((rc = weft_worker_share_fd(w, r)) < 0) {
		weft_mutex_destroy(&l->lock);
		goto fail;
	}
	atomic_store(&r->udata, l);
	/* On the list before arming: a failed arm backs off, and retries
	 * find the listener there. */
	l->next = *head;
	*head = l;
	weft_mutex_lock(&l->lock);
	rearm(l);
	weft_mutex_unlock(&l->lock);
	weft_mutex_unlock(reg);
	*out = l;
	return 0;
fail:
	weft_mutex_unlock(reg);
	weft_free(queue);
	if (l)
		weft_free(l->users);
	weft_free(l);
	return rc;
}

int weft_listener_fd(const weft_listener_t *l)
{
	return l->fd;
}

uint64_t weft_listener_accepted(const weft_listener_t *l)
{
	return atomic_load_explicit(&((weft_listener_t *)l)->accepted, memory_order_relaxed);
}

uint64_t weft_listener_attempts(const weft_listener_t *l)
{
	return atomic_load_explicit(&((weft_listener_t *)l)->attempts, memory_order_relaxed);
}

/* A counter written under l->lock and read anywhere: a relaxed load and
 * store, not a read-modify-write. */
static void count(_Atomic uint64_t *c)
{
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
			      memory_order_relaxed);
}

/* Whether w is among the first n of v. */
static int among(const weft_worker_t *const *v, size_t n, const weft_worker_t *w)
{
	for (size_t i = 0; i < n; i++)
		if (v[i] == w)
			return 1;
	return 0;
}

/* Hand queued connections to waiters, each its own, so a busy worker that
 * happens to run first cannot take them all.  Who goes first:
 * 1. the harvester's own waiter, when the harvester came out of an idle
 *    wait (it is about to run, and no wake-up crosses threads);
 * 2. a waiter of a worker parked with nothing to do (weft__worker_idle);
 * 3. arrival order.
 * Rules 1 and 2 give a worker at most one connection per call, so a burst
 * spreads over the idle workers instead of filling the first one's queue.
 * The harvester's own parked state cannot tell rule 2 (it left it to
 * harvest), nor can a worker's just woken (it counts as notified), hence
 * rule 1 and the flag.  harvester may be NULL.  A waiter whose worker has
 * been freed is dropped and the connection goes to the next one, or stays
 * queued.  Lock held. */
static void dispatch(weft_listener_t *l, const weft_worker_t *harvester, int harvester_idle)
{
	/* Workers served by preference in this call. */
	const weft_worker_t *served[ACCEPT_BATCH];
	size_t nserved = 0;

	while (l->qlen > 0 && l->nwait > 0) {
		if (grow(&l->handed, &l->caphanded, l->nhanded) < 0)
			return; /* the waiters stay registered; retried on the next event */
		size_t pick = l->nwait;
		if (harvester_idle && harvester && !among(served, nserved, harvester)) {
			for (size_t i = 0; i < l->nwait && pick == l->nwait; i++)
				if (l->waiters[i].w == harvester)
					pick = i;
		}
		for (size_t i = 0; pick == l->nwait && i < l->nwait && nserved < ACCEPT_BATCH;
		     i++) {
			const weft_worker_t *o = l->waiters[i].w;
			if (!among(served, nserved, o) && weft__worker_idle(o))
				pick = i;
		}
		int preferred = pick < l->nwait;
		if (!preferred)
			pick = 0;
		waiter_t wt = l->waiters[pick];
		/* Post first, under the lock: the woken worker claims through
		 * the same lock, so it finds the connection recorded below. */
		int rc = wake(&wt, 0);
		if (rc == WEFT_ENOMEM)
			return; /* both stay: the waiter is served on the next event */
		remove_waiter(l, pick);
		if (rc < 0)
			continue; /* its worker is gone: the connection goes to the next one */
		if (preferred && nserved < ACCEPT_BATCH)
			served[nserved++] = wt.w;
		wt.fd = l->queue[l->qhead];
		l->qhead = (l->qhead + 1) % QUEUE_MAX;
		l->qlen--;
		l->handed[l->nhanded++] = wt;
	}
}

/* Put a handed connection back at the head of the queue.  Lock held. */
static void unhand(weft_listener_t *l, size_t i)
{
	int fd = l->handed[i].fd;
	assert(l->qlen < QUEUE_MAX); /* qlen + nhanded <= qmax */
	memmove(&l->handed[i], &l->handed[i + 1], (l->nhanded - i - 1) * sizeof *l->handed);
	l->nhanded--;
	l->qhead = (l->qhead + QUEUE_MAX - 1) % QUEUE_MAX;
	l->queue[l->qhead] = fd;
	l->qlen++;
}

/* Called with the registry lock held (see weft__listener_event). */
static void on_event(weft_listener_t *l, const weft_worker_t *harvester, int harvester_idle)
{
	weft_mutex_lock(&l->lock);
	l->armed = 0;
	/* With acceptors waiting, take one connection for each: the rest stay
	 * in the kernel's backlog, the one-shot registration fires again at
	 * once, and the next harvest shares them among the acceptors then
	 * waiting, so connections spread over the workers.  With nobody
	 * waiting, queue a batch for whoever accepts next. */
	size_t want = l->nwait > 0 ? l->nwait : ACCEPT_BATCH;
	if (want > ACCEPT_BATCH)
		want = ACCEPT_BATCH;
	int err = 0;
	for (size_t i = 0; i < want && !l->closed && !full(l); i++) {
		int fd = weft_sock_accept(l->fd, NULL, NULL);
		count(&l->attempts);
		if (fd >= 0) {
			l->queue[(l->qhead + l->qlen) % QUEUE_MAX] = fd;
			l->qlen++;
			count(&l->accepted);
			/* The episode, if any, is over. */
			l->backoff = 0;
			l->episode = 0;
			l->told = 0;
			continue;
		}
		if (fd == -EAGAIN || fd == -EWOULDBLOCK)
			break; /* the backlog is empty */
		if (weft_sock_accept_lost(fd))
			continue;
		/* EMFILE, ENFILE, ENOBUFS, ENOMEM, or anything else that would
		 * fail again at once: the backlog still holds the connection. */
		err = fd;
		break;
	}
	dispatch(l, harvester, harvester_idle);
	if (err)
		back_off(l, err);
	else
		rearm(l);
	weft_mutex_unlock(&l->lock);
}

void weft__listener_event(weft_worker_t *harvester, weft_fd_t *r, int harvester_idle)
{
	weft_mutex_t *reg = weft__runtime_listener_lock(harvester->rt);
	weft_mutex_lock(reg);
	weft_listener_t *l = atomic_load(&r->udata); /* under the lock: it may be gone */
	if (l)
		on_event(l, harvester, harvester_idle);
	weft_mutex_unlock(reg);
}

/* Re-arm the backed-off listeners of rt due by `until`, and recompute the
 * runtime's retry word.  Registry lock held.  The earliest retry time
 * still pending, UINT64_MAX if none. */
static uint64_t retry_due(weft_runtime_t *rt, uint64_t until)
{
	uint64_t next = UINT64_MAX;
	for (weft_listener_t *l = *(weft_listener_t **)weft__runtime_listeners(rt); l;
	     l = l->next) {
		weft_mutex_lock(&l->lock);
		if (l->retry_at && l->retry_at <= until) {
			l->retry_at = 0;
			rearm(l); /* may back off again */
		}
		if (l->retry_at && l->retry_at < next)
			next = l->retry_at;
		weft_mutex_unlock(&l->lock);
	}
	atomic_store_explicit(weft__runtime_listener_retry(rt), next == UINT64_MAX ? 0 : next, memory_order_relaxed);
	return next;
}

uint64_t weft__listener_retry(weft_runtime_t *rt, uint64_t now_ns)
{
	uint64_t t = atomic_load_explicit(weft__runtime_listener_retry(rt), memory_order_relaxed);
	if (t == 0)
		return UINT64_MAX;
	if (t > now_ns)
		return t;
	weft_mutex_t *reg = weft__runtime_listener_lock(rt);
	weft_mutex_lock(reg);
	uint64_t next = retry_due(rt, now_ns);
	weft_mutex_unlock(reg);
	return next;
}

void weft__listener_fd_closed(weft_runtime_t *rt)
{
	/* A close racing with a listener that is just backing off may find
	 * the word still 0: that listener waits for its back-off, which is
	 * short at first, rather than every close paying for a lock. */
	if (atomic_load_explicit(weft__runtime_listener_retry(rt), memory_order_relaxed) == 0)
		return;
	weft_mutex_t *reg = weft__runtime_listener_lock(rt);
	weft_mutex_lock(reg);
	retry_due(rt, UINT64_MAX);
	weft_mutex_unlock(reg);
}

int weft_listener_claim(weft_listener_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq)
{
	int fd = -EAGAIN, arm = 0;
	weft_mutex_lock(&l->lock);
	for (size_t i = 0; i < l->nhanded; i++) {
		waiter_t *h = &l->handed[i];
		if (h->w == w && h->slot == slot && h->seq == seq) {
			fd = h->fd;
			memmove(h, h + 1, (l->nhanded - i - 1) * sizeof *h);
			l->nhanded--;
			arm = wants_arming(l); /* it may have been full */
			break;
		}
	}
	weft_mutex_unlock(&l->lock);
	if (arm)
		rearm_unlocked(l);
	return fd;
}

int weft_listener_take(weft_listener_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq,
		       const void *tag)
{
	int rc, arm = 0;
	weft_mutex_lock(&l->lock);
	if (l->closed) {
		rc = WEFT_ECLOSED;
	} else if (l->qlen > 0) {
		rc = l->queue[l->qhead];
		l->qhead = (l->qhead + 1) % QUEUE_MAX;
		l->qlen--;
		arm = wants_arming(l);
	} else if (l->retry_at && l->episode && !l->told) {
		/* Backed off after a failure no acceptor has heard of yet: this
		 * one does, instead of waiting in silence.  (Once re-armed the
		 * listener may be fine again: then only a new failure tells.) */
		l->told = 1;
		rc = l->episode;
	} else {
		rc = -EAGAIN;
		if (tag) {
			if (grow(&l->waiters, &l->capwait, l->nwait) < 0) {
				weft_mutex_unlock(&l->lock);
				return WEFT_ENOMEM;
			}
			l->waiters[l->nwait++] = (waiter_t){w, slot, seq, tag, -1};
		}
	}
	weft_mutex_unlock(&l->lock);
	if (arm)
		rearm_unlocked(l);
	return rc;
}

void weft_listener_cancel(weft_listener_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq)
{
	weft_mutex_lock(&l->lock);
	size_t i = 0;
	while (i < l->nwait && !(l->waiters[i].w == w && l->waiters[i].slot == slot &&
				 l->waiters[i].seq == seq))
		i++;
	if (i < l->nwait) {
		remove_waiter(l, i);
	} else {
		/* Our wake-up lost the race with the deadline: give the connection
		 * handed to us to someone else. */
		for (size_t k = 0; k < l->nhanded; k++) {
			if (l->handed[k].w == w && l->handed[k].slot == slot &&
			    l->handed[k].seq == seq) {
				unhand(l, k);
				break;
			}
		}
		dispatch(l, NULL, 0);
	}
	weft_mutex_unlock(&l->lock);
}

void weft_listener_release(weft_listener_t *l, weft_worker_t *w, const void *tag)
{
	weft_mutex_t *reg = weft__runtime_listener_lock(l->rt);
	weft_listener_t **head = (weft_listener_t **)weft__runtime_listeners(l->rt);
	weft_mutex_lock(reg);
	weft_mutex_lock(&l->lock);
	for (size_t i = 0; i < l->nwait;) {
		if (l->waiters[i].w == w && l->waiters[i].tag == tag) {
			/* A failed post is fine: that waiter is gone either way. */
			(void)wake(&l->waiters[i], WEFT_ECLOSED);
			remove_waiter(l, i);
		} else {
			i++;
		}
	}
	for (size_t i = 0; i < l->nhanded;) {
		if (l->handed[i].w == w && l->handed[i].tag == tag)
			unhand(l, i); /* its acceptor will find the socket closed */
		else
			i++;
	}
	dispatch(l, NULL, 0);
	for (int i = 0; i < l->refs; i++) {
		if (l->users[i] == w) {
			l->users[i] = l->users[l->refs - 1];
			break;
		}
	}
	int last = --l->refs == 0;
	if (last) {
		l->closed = 1;
		/* Under the registry lock: a harvesting worker finds the
		 * listener through udata under the same lock, so after this no
		 * event can reach l. */
		atomic_store(&l->rec->udata, NULL);
		weft_listener_t **p = head;
		while (*p && *p != l)
			p = &(*p)->next;
		if (*p)
			*p = l->next;
	}
	weft_mutex_unlock(&l->lock);
	weft_mutex_unlock(reg);
	if (!last)
		return;
	for (size_t i = 0; i < l->nhanded; i++)
		weft_sock_close(l->handed[i].fd);
	while (l->qlen > 0) {
		weft_sock_close(l->queue[l->qhead]);
		l->qhead = (l->qhead + 1) % QUEUE_MAX;
		l->qlen--;
	}
	/* Closing goes through the worker that drops the last reference
	 * (the record is a shared one: any worker may close it). */
	weft_worker_close_fd(w, l->rec);
	weft_mutex_destroy(&l->lock);
	weft_free(l->queue);
	weft_free(l->waiters);
	weft_free(l->handed);
	weft_free(l->users);
	weft_free(l);
}
