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

typedef struct waiter {
	weft_worker_t *w;
	uint32_t slot, seq;
} waiter_t;

typedef struct wlist {
	waiter_t *v;
	size_t n, cap;
} wlist_t;

struct weft_chan {
	pthread_mutex_t lock; /* everything below but refs */
	_Atomic long refs;
	size_t cap;       /* capacity */
	msg_t *ring;      /* cap slots */
	size_t head, len; /* queued messages */
	int closed;
	wlist_t senders, receivers; /* FIFO */
	char *name;                 /* named channels: in the runtime's list */
	weft_chan_t *next;
};

static int wl_push(wlist_t *l, waiter_t wt)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 4;
		waiter_t *v = weft_realloc(l->v, cap * sizeof *v);
		if (!v)
			return WEFT_ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = wt;
	return 0;
}

static void wl_remove(wlist_t *l, size_t i)
{
	memmove(&l->v[i], &l->v[i + 1], (l->n - i - 1) * sizeof *l->v);
	l->n--;
}

static void wake(const waiter_t *wt)
{
	weft_msg_t m = {WEFT_MSG_WAKE, wt->slot, wt->seq, 0, NULL};
	weft_worker_post(wt->w, &m);
}

/* Wake the oldest waiter of l, if any.  Lock held. */
static void wake_first(wlist_t *l)
{
	if (l->n == 0)
		return;
	waiter_t wt = l->v[0];
	wl_remove(l, 0);
	wake(&wt);
}

static void wake_all(wlist_t *l)
{
	for (size_t i = 0; i < l->n; i++)
		wake(&l->v[i]);
	l->n = 0;
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
	pthread_mutex_init(&c->lock, NULL);
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
	pthread_mutex_destroy(&c->lock);
	weft_free(c->ring);
	weft_free(c->senders.v);
	weft_free(c->receivers.v);
	weft_free(c->name);
	weft_free(c);
}

int weft_chan_named(weft_runtime_t *rt, const char *name, size_t capacity, weft_chan_t **out)
{
	pthread_mutex_t *lock = weft__runtime_listener_lock(rt);
	weft_chan_t **head = (weft_chan_t **)weft__runtime_channels(rt);
	pthread_mutex_lock(lock);
	for (weft_chan_t *c = *head; c; c = c->next) {
		if (strcmp(c->name, name) == 0) {
			*out = weft_chan_ref(c);
			pthread_mutex_unlock(lock);
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
	pthread_mutex_unlock(lock);
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

static int do_wait(wlist_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq)
{
	if (!w)
		return -EAGAIN;
	int rc = wl_push(l, (waiter_t){w, slot, seq});
	return rc < 0 ? rc : -EAGAIN;
}

int weft_chan_send(weft_chan_t *c, char *data, size_t len, weft_worker_t *w, uint32_t slot,
		   uint32_t seq)
{
	int rc = 0;
	pthread_mutex_lock(&c->lock);
	if (c->closed) {
		rc = WEFT_ECLOSED;
	} else if (c->len == c->cap) {
		/* Full: wait; room is handed to waiting senders oldest first. */
		rc = do_wait(&c->senders, w, slot, seq);
	} else {
		c->ring[(c->head + c->len) % c->cap] = (msg_t){data, len};
		c->len++;
		wake_first(&c->receivers);
	}
	pthread_mutex_unlock(&c->lock);
	return rc;
}

int weft_chan_recv(weft_chan_t *c, char **data, size_t *len, weft_worker_t *w, uint32_t slot,
		   uint32_t seq)
{
	int rc = 0;
	pthread_mutex_lock(&c->lock);
	if (c->len > 0) {
		msg_t m = c->ring[c->head];
		c->head = (c->head + 1) % c->cap;
		c->len--;
		*data = m.data;
		*len = m.len;
		wake_first(&c->senders);
	} else if (c->closed) {
		rc = WEFT_ECLOSED;
	} else {
		rc = do_wait(&c->receivers, w, slot, seq);
	}
	pthread_mutex_unlock(&c->lock);
	return rc;
}

static int find(const wlist_t *l, weft_worker_t *w, uint32_t slot, uint32_t seq)
{
	for (size_t i = 0; i < l->n; i++)
		if (l->v[i].w == w && l->v[i].slot == slot && l->v[i].seq == seq)
			return (int)i;
	return -1;
}

void weft_chan_cancel(weft_chan_t *c, weft_worker_t *w, uint32_t slot, uint32_t seq)
{
	pthread_mutex_lock(&c->lock);
	int i = find(&c->senders, w, slot, seq);
	if (i >= 0) {
		wl_remove(&c->senders, (size_t)i);
	} else if ((i = find(&c->receivers, w, slot, seq)) >= 0) {
		wl_remove(&c->receivers, (size_t)i);
	} else {
		/* Already woken, but the deadline won: the wake-up would be lost,
		 * so hand it on to whoever can use it now. */
		if (c->len < c->cap || c->closed)
			wake_first(&c->senders);
		if (c->len > 0 || c->closed)
			wake_first(&c->receivers);
	}
	pthread_mutex_unlock(&c->lock);
}

void weft_chan_close(weft_chan_t *c)
{
	pthread_mutex_lock(&c->lock);
	c->closed = 1;
	wake_all(&c->senders);
	wake_all(&c->receivers);
	pthread_mutex_unlock(&c->lock);
}

size_t weft_chan_count(weft_chan_t *c)
{
	pthread_mutex_lock(&c->lock);
	size_t n = c->len;
	pthread_mutex_unlock(&c->lock);
	return n;
}

size_t weft_chan_capacity(const weft_chan_t *c)
{
	return c->cap;
}
