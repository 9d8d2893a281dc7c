/* Shared listening sockets: see listener.h. */
#include "config.h"

#include "listener.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include "alloc.h"
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
	pthread_mutex_t lock;        /* everything below */
	int refs;
	int armed;  /* the one-shot registration is armed */
	int closed; /* the last reference is gone */
	int *queue; /* accepted fds, a ring */
	size_t qhead, qlen, qmax; /* qlen + nhanded <= qmax <= QUEUE_MAX */
	waiter_t *waiters; /* FIFO */
	size_t nwait, capwait;
	waiter_t *handed; /* woken with a connection of their own, not yet claimed */
	size_t nhanded, caphanded;
	uint64_t accepted;
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

/* Arm the one-shot registration again.  Called with the lock held. */
static void rearm(weft_listener_t *l)
{
	if (l->armed || l->closed || full(l))
		return;
	if (weft_poller_modify(weft_runtime_poller(l->rt), l->fd, WEFT_POLL_IN | WEFT_POLL_ONESHOT,
			       weft_fd_token(l->rec)) == 0)
		l->armed = 1;
}

int weft_listener_listen(weft_worker_t *w, weft_fd_t *r, const struct sockaddr *sa,
			 socklen_t salen, int backlog, weft_listener_t **out)
{
	weft_runtime_t *rt = w->rt;
	pthread_mutex_t *reg = weft__runtime_listener_lock(rt);
	weft_listener_t **head = (weft_listener_t **)weft__runtime_listeners(rt);
	int fd = atomic_load(&r->fd);
	int rc = 0;

	/* Lookup, bind and listen under the registry lock, so that two
	 * workers listening at once end up on one socket. */
	pthread_mutex_lock(reg);
	if (shareable(sa)) {
		for (weft_listener_t *l = *head; l; l = l->next) {
			if (l->keylen && same_addr((struct sockaddr *)&l->key, sa)) {
				pthread_mutex_lock(&l->lock);
				l->refs++;
				pthread_mutex_unlock(&l->lock);
				pthread_mutex_unlock(reg);
				weft_worker_close_fd(w, r);
				*out = l;
				return 0;
			}
		}
	}
	weft_listener_t *l = weft_calloc(1, sizeof *l);
	int *queue = weft_malloc(QUEUE_MAX * sizeof *queue);
	if (!l || !queue) {
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
	l->refs = 1;
	pthread_mutex_init(&l->lock, NULL);
	if (shareable(sa)) {
		memcpy(&l->key, sa, salen);
		l->keylen = salen;
	}
	/* The record now belongs to the listener, not to w: events for it go
	 * to whoever harvests them, through udata. */
	atomic_store(&r->udata, l);
	w->nfds--;
	pthread_mutex_lock(&l->lock);
	rearm(l);
	pthread_mutex_unlock(&l->lock);
	l->next = *head;
	*head = l;
	pthread_mutex_unlock(reg);
	*out = l;
	return 0;
fail:
	pthread_mutex_unlock(reg);
	weft_free(queue);
	weft_free(l);
	return rc;
}

int weft_listener_fd(const weft_listener_t *l)
{
	return l->fd;
}

uint64_t weft_listener_accepted(const weft_listener_t *l)
{
	return l->accepted;
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
	weft_msg_t m = {WEFT_MSG_WAKE, wt->slot, wt->seq, code, NULL};
	return weft_worker_post(wt->w, &m);
}

static void remove_waiter(weft_listener_t *l, size_t i)
{
	memmove(&l->waiters[i], &l->waiters[i + 1], (l->nwait - i - 1) * sizeof *l->waiters);
	l->nwait--;
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
	pthread_mutex_lock(&l->lock);
	l->armed = 0;
	/* With acceptors waiting, take one connection for each: the rest stay
	 * in the kernel's backlog, the one-shot registration fires again at
	 * once, and the next harvest shares them among the acceptors then
	 * waiting, so connections spread over the workers.  With nobody
	 * waiting, queue a batch for whoever accepts next. */
	size_t want = l->nwait > 0 ? l->nwait : ACCEPT_BATCH;
	if (want > ACCEPT_BATCH)
		want = ACCEPT_BATCH;
	for (size_t i = 0; i < want && !l->closed && !full(l); i++) {
		int fd = weft_sock_accept(l->fd, NULL, NULL);
		if (fd == -ECONNABORTED || fd == -EPROTO || fd == -EPERM)
			continue; /* that connection died; try the next */
		if (fd < 0)
			break; /* EAGAIN, or out of descriptors: retry on the next edge */
		l->queue[(l->qhead + l->qlen) % QUEUE_MAX] = fd;
		l->qlen++;
		l->accepted++;
	}
	dispatch(l, harvester, harvester_idle);
	rearm(l);
	pthread_mutex_unlock(&l->lock);
}

void weft__listener_event(weft_worker_t *harvester, weft_fd_t *r, int harvester_idle)
{
	pthread_mutex_t *reg = weft__runtime_listener_lock(harvester->rt);
	pthread_mutex_lock(reg);
	weft_listener_t *l = atomic_load(&r->udata); /* under the lock: it may be gone */
	if (l)
		on_event(l, harvester, harvester_idle);
	pthread_mutex_unlock(reg);
}

int weft_listener_claim(weft_listener_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq)
{
	int fd = -EAGAIN;
	pthread_mutex_lock(&l->lock);
	for (size_t i = 0; i < l->nhanded; i++) {
		waiter_t *h = &l->handed[i];
		if (h->w == w && h->slot == slot && h->seq == seq) {
			fd = h->fd;
			memmove(h, h + 1, (l->nhanded - i - 1) * sizeof *h);
			l->nhanded--;
			rearm(l); /* it may have been full */
			break;
		}
	}
	pthread_mutex_unlock(&l->lock);
	return fd;
}

int weft_listener_take(weft_listener_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq,
		       const void *tag)
{
	int rc;
	pthread_mutex_lock(&l->lock);
	if (l->closed) {
		rc = WEFT_ECLOSED;
	} else if (l->qlen > 0) {
		rc = l->queue[l->qhead];
		l->qhead = (l->qhead + 1) % QUEUE_MAX;
		l->qlen--;
		rearm(l);
	} else {
		rc = -EAGAIN;
		if (tag) {
			if (grow(&l->waiters, &l->capwait, l->nwait) < 0) {
				pthread_mutex_unlock(&l->lock);
				return WEFT_ENOMEM;
			}
			l->waiters[l->nwait++] = (waiter_t){w, slot, seq, tag, -1};
		}
	}
	pthread_mutex_unlock(&l->lock);
	return rc;
}

void weft_listener_cancel(weft_listener_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq)
{
	pthread_mutex_lock(&l->lock);
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
	pthread_mutex_unlock(&l->lock);
}

void weft_listener_release(weft_listener_t *l, weft_worker_t *w, const void *tag)
{
	pthread_mutex_t *reg = weft__runtime_listener_lock(l->rt);
	weft_listener_t **head = (weft_listener_t **)weft__runtime_listeners(l->rt);
	pthread_mutex_lock(reg);
	pthread_mutex_lock(&l->lock);
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
	pthread_mutex_unlock(&l->lock);
	pthread_mutex_unlock(reg);
	if (!last)
		return;
	for (size_t i = 0; i < l->nhanded; i++)
		weft_sock_close(l->handed[i].fd);
	while (l->qlen > 0) {
		weft_sock_close(l->queue[l->qhead]);
		l->qhead = (l->qhead + 1) % QUEUE_MAX;
		l->qlen--;
	}
	/* Closing goes through the worker that drops the last reference; the
	 * record is counted as its own for the moment it takes. */
	w->nfds++;
	weft_worker_close_fd(w, l->rec);
	pthread_mutex_destroy(&l->lock);
	weft_free(l->queue);
	weft_free(l->waiters);
	weft_free(l->handed);
	weft_free(l);
}
