/* Channels: see channel.h. */
#include "config.h"

#include "channel.h"

#include <errno.h>
#include <stdatomic.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

typedef struct msg {
	char *data;
	size_t len;
} msg_t;

enum { SENDERS, RECEIVERS };

/* A FIFO of waiter nodes, linked through the nodes themselves. */
typedef struct wlist {
	weft_chan_waiter_t *head, *tail;
	size_t n;
} wlist_t;

struct weft_chan {
	weft_mutex_t lock; /* everything below but refs */
	_Atomic long refs;
	size_t cap;       /* capacity */
	msg_t *ring;      /* cap slots */
	size_t head, len; /* queued messages */
	int closed;
	wlist_t waiters[2];           /* SENDERS, RECEIVERS */
	uint64_t nomem, dead, visits; /* weft_chan_stats_t */
	char *name;                   /* named channels: in the runtime's list */
	weft_chan_t *next;
};

static int state_of(weft_chan_waiter_t *wt)
{
	return atomic_load_explicit(&wt->_state, memory_order_acquire);
}

static void set_state(weft_chan_waiter_t *wt, int state)
{
	atomic_store_explicit(&wt->_state, (uint8_t)state, memory_order_release);
}

/* Link wt after `prev` (NULL: at the head). */
static void wl_insert(wlist_t *l, weft_chan_waiter_t *prev, weft_chan_waiter_t *wt)
{
	weft_chan_waiter_t *next = prev ? prev->_next : l->head;
	wt->_prev = prev;
	wt->_next = next;
	if (prev)
		prev->_next = wt;
	else
		l->head = wt;
	if (next)
		next->_prev = wt;
	else
		l->tail = wt;
	l->n++;
}

static void wl_unlink(wlist_t *l, weft_chan_waiter_t *wt)
{
	if (wt->_prev)
		wt->_prev->_next = wt->_next;
	else
		l->head = wt->_next;
	if (wt->_next)
		wt->_next->_prev = wt->_prev;
	else
		l->tail = wt->_prev;
	wt->_prev = wt->_next = NULL;
	l->n--;
}

/* Post waiter wt of list l its wake-up.  Lock held.  0: woken (WOKEN,
 * unlinked); WEFT_ECLOSED: its worker is gone, dropped (IDLE, unlinked);
 * WEFT_ENOMEM: still registered, in its place.
 *
 * The node leaves the list and says WOKEN before the post: once the post
 * succeeds its owner may run on another thread and reuse the node (on
 * another channel, under another lock), so this side must not touch it
 * afterwards.  After a failed post nobody has been told, so the node is
 * still this side's to put back. */
static int wake_one(weft_chan_t *c, wlist_t *l, weft_chan_waiter_t *wt)
{
	weft_chan_waiter_t *prev = wt->_prev;
	weft_msg_t m = {WEFT_MSG_WAKE, wt->slot, wt->seq, 0, NULL};
	weft_worker_t *w = wt->w;

	c->visits++;
	wl_unlink(l, wt);
	set_state(wt, WEFT_CHAN_WOKEN);
	int rc = weft_worker_post(w, &m);
	if (rc == WEFT_ECLOSED) {
		set_state(wt, WEFT_CHAN_IDLE);
		c->dead++;
	} else if (rc < 0) {
		wl_insert(l, prev, wt);
		set_state(wt, WEFT_CHAN_WAITING);
		c->nomem++;
		rc = WEFT_ENOMEM;
	}
	return rc;
}

/* Wake the oldest waiter of l whose post succeeds: waiters of freed
 * workers are dropped on the way, those whose post failed for want of
 * memory stay for the next wake-up.  Lock held. */
static void wake_first(weft_chan_t *c, wlist_t *l)
{
	weft_chan_waiter_t *wt = l->head;
	while (wt) {
		weft_chan_waiter_t *next = wt->_next;
		if (wake_one(c, l, wt) == 0)
			return;
		wt = next;
	}
}

static void wake_all(weft_chan_t *c, wlist_t *l)
{
	weft_chan_waiter_t *wt = l->head;
	while (wt) {
		weft_chan_waiter_t *next = wt->_next;
		wake_one(c, l, wt);
		wt = next;
	}
}

/* Closed: every waiter is owed a wake-up; those whose post failed for want
 * of memory are still registered, and are tried again here.  Lock held. */
static void wake_closed(weft_chan_t *c)
{
	wake_all(c, &c->waiters[SENDERS]);
	wake_all(c, &c->waiters[RECEIVERS]);
}

int weft_chan_new(size_t capacity, weft_chan_t **out)
{
	if (capacity < 1)
		return -EINVAL;
	weft_chan_t *c = weft_calloc(1, sizeof *c);
	msg_t *ring = c ? weft_calloc(capacity, sizeof *ring) : NULL;
	if (!ring) {
		weft_free(c);
		return WEFT_ENOMEM;
	}
	weft_mutex_init(&c->lock);
	atomic_init(&c->refs, 1);
	c->cap = capacity;
	c->ring = ring;
	*out = c;
	return 0;
}

weft_chan_t *weft_chan_ref(weft_chan_t *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	return c;
}

void weft_chan_unref(weft_chan_t *c)
{
	if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
		return;
	for (size_t i = 0; i < c->len; i++)
		weft_free(c->ring[(c->head + i) % c->cap].data);
	weft_mutex_destroy(&c->lock);
	weft_free(c->ring);
	weft_free(c->name);
	weft_free(c);
}

int weft_chan_named(weft_runtime_t *rt, const char *name, size_t capacity, weft_chan_t **out)
{
	weft_mutex_t *lock = weft__runtime_listener_lock(rt);
	weft_chan_t **head = (weft_chan_t **)weft__runtime_channels(rt);
	weft_mutex_lock(lock);
	for (weft_chan_t *c = *head; c; c = c->next) {
		if (strcmp(c->name, name) == 0) {
			*out = weft_chan_ref(c);
			weft_mutex_unlock(lock);
			return 0;
		}
	}
	weft_chan_t *c;
	int rc = weft_chan_new(capacity, &c);
	if (rc == 0) {
		size_t n = strlen(name) + 1;
		c->name = weft_malloc(n);
		if (!c->name) {
			weft_chan_unref(c);
			rc = WEFT_ENOMEM;
		} else {
			/* The runtime's list keeps one reference: a named channel
			 * lives as long as the runtime. */
			memcpy(c->name, name, n);
			c->next = *head;
			*head = weft_chan_ref(c);
			*out = c;
		}
	}
	weft_mutex_unlock(lock);
	return rc;
}

void weft__chan_release_named(void **list)
{
	weft_chan_t *c = *list;
	*list = NULL;
	while (c) {
		weft_chan_t *next = c->next;
		weft_chan_unref(c);
		c = next;
	}
}

/* Would block: register wt, if given, as a waiter of `kind`.  Lock held. */
static int do_wait(weft_chan_t *c, int kind, weft_chan_waiter_t *wt)
{
	if (!wt)
		return -EAGAIN;
	/* Linked twice, the list would be corrupt.  Read without the other
	 * channel's lock when wt was last used elsewhere: a node that is not
	 * WAITING is reachable by nobody but its owner. */
	if (state_of(wt) == WEFT_CHAN_WAITING)
		return -EBUSY;
	wt->_chan = c;
	wt->_kind = (uint8_t)kind;
	set_state(wt, WEFT_CHAN_WAITING);
	wl_insert(&c->waiters[kind], c->waiters[kind].tail, wt);
	return -EAGAIN;
}

int weft_chan_send(weft_chan_t *c, char *data, size_t len, weft_chan_waiter_t *wt)
{
	int rc = 0;
	weft_mutex_lock(&c->lock);
	if (c->closed) {
		wake_closed(c);
		rc = WEFT_ECLOSED;
	} else if (c->len == c->cap) {
		/* Full: wait; room is handed to waiting senders oldest first. */
		rc = do_wait(c, SENDERS, wt);
	} else {
		c->ring[(c->head + c->len) % c->cap] = (msg_t){data, len};
		c->len++;
		wake_first(c, &c->waiters[RECEIVERS]);
	}
	weft_mutex_unlock(&c->lock);
	return rc;
}

int weft_chan_recv(weft_chan_t *c, char **data, size_t *len, weft_chan_waiter_t *wt)
{
	int rc = 0;
	weft_mutex_lock(&c->lock);
	if (c->closed)
		wake_closed(c);
	if (c->len > 0) {
		msg_t m = c->ring[c->head];
		c->head = (c->head + 1) % c->cap;
		c->len--;
		*data = m.data;
		*len = m.len;
		wake_first(c, &c->waiters[SENDERS]);
	} else if (c->closed) {
		rc = WEFT_ECLOSED;
	} else {
		rc = do_wait(c, RECEIVERS, wt);
	}
	weft_mutex_unlock(&c->lock);
	return rc;
}

void weft_chan_cancel(weft_chan_t *c, weft_chan_waiter_t *wt)
{
	/* _chan is written by the owner only, which is the caller. */
	if (wt->_chan != c)
		return;
	weft_mutex_lock(&c->lock);
	wlist_t *l = &c->waiters[wt->_kind];
	switch (state_of(wt)) {
	case WEFT_CHAN_WAITING:
		c->visits++;
		wl_unlink(l, wt);
		break;
	case WEFT_CHAN_WOKEN:
		/* Woken, but the deadline won: the wake-up would be lost, so
		 * hand it on to whoever of its kind can use it now. */
		c->visits++;
		if (wt->_kind == SENDERS ? c->len < c->cap || c->closed : c->len > 0 || c->closed)
			wake_first(c, l);
		break;
	default:
		break;
	}
	set_state(wt, WEFT_CHAN_IDLE);
	weft_mutex_unlock(&c->lock);
}

void weft_chan_close(weft_chan_t *c)
{
	weft_mutex_lock(&c->lock);
	c->closed = 1;
	wake_closed(c);
	weft_mutex_unlock(&c->lock);
}

size_t weft_chan_count(weft_chan_t *c)
{
	weft_mutex_lock(&c->lock);
	size_t n = c->len;
	weft_mutex_unlock(&c->lock);
	return n;
}

size_t weft_chan_capacity(const weft_chan_t *c)
{
	return c->cap;
}

void weft_chan_stats(weft_chan_t *c, weft_chan_stats_t *out)
{
	weft_mutex_lock(&c->lock);
	out->nomem = c->nomem;
	out->dead = c->dead;
	out->visits = c->visits;
	out->senders = c->waiters[SENDERS].n;
	out->receivers = c->waiters[RECEIVERS].n;
	weft_mutex_unlock(&c->lock);
}
