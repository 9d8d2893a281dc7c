/* Channels: bounded FIFO queues of byte strings (serialized values) between
 * coroutines of any workers of a runtime.  Senders wait while the channel
 * is full, receivers while it is empty; waiters are served in arrival
 * order, and a waiter is woken through its worker's inbox, so a channel
 * never touches another worker's coroutines directly.
 *
 * A waiter is a node the caller owns (weft_chan_waiter_t), linked into the
 * channel's list of its kind while it waits, so that registering, waking
 * and withdrawing one are O(1) whatever the number of waiters.
 *
 * Thread safety: every function may be called from any thread; a waiter
 * node is used by one thread at a time (the one whose coroutine waits). */
#ifndef WEFT_CHANNEL_H
#define WEFT_CHANNEL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "worker.h"

typedef struct weft_chan weft_chan_t;

/* A waiter's state (_state): not registered; registered (linked into the
 * channel, which may wake it); woken by the channel and unlinked, so the
 * channel no longer touches it. */
enum { WEFT_CHAN_IDLE = 0, WEFT_CHAN_WAITING, WEFT_CHAN_WOKEN };

/* Where a coroutine waits on a channel.  Zero it (WEFT_CHAN_WAITER_INIT)
 * once; before each call that may register it, set (w, slot, seq): the
 * worker, coroutine slot and wait seq (weft_worker_wait_ext*) to wake.
 * While WAITING the channel holds its address: the node must stay valid
 * until it is woken, dropped (see weft_chan_send) or withdrawn with
 * weft_chan_cancel; it may then be reused, on any channel. */
typedef struct weft_chan_waiter {
	weft_worker_t *w;
	uint32_t slot, seq;
	struct weft_chan_waiter *_prev, *_next; /* in _chan's list, while WAITING */
	weft_chan_t *_chan;                     /* the channel it last registered with */
	uint8_t _kind;                          /* sender or receiver */
	/* WEFT_CHAN_IDLE, _WAITING or _WOKEN: written under _chan's lock; the
	 * owner may read it without (a node that is not WAITING is reachable
	 * by nobody else). */
	_Atomic uint8_t _state;
} weft_chan_waiter_t;

#define WEFT_CHAN_WAITER_INIT {0}

/* Counters of one channel (weft_chan_stats), for tests and statistics. */
typedef struct weft_chan_stats {
	uint64_t nomem;   /* wake-ups whose post failed for want of memory */
	uint64_t dead;    /* waiters dropped because their worker was freed */
	uint64_t visits;  /* waiters looked at by wake-ups and withdrawals */
	size_t senders;   /* senders registered now */
	size_t receivers; /* receivers registered now */
} weft_chan_stats_t;

/* A new channel holding at most `capacity` (>= 1) messages, with one
 * reference.  0, -EINVAL or WEFT_ENOMEM. */
int weft_chan_new(size_t capacity, weft_chan_t **out);

/* The channel called `name` in rt, created with `capacity` if it does not
 * exist yet (an existing one keeps its own capacity); a new reference
 * either way.  0, -EINVAL (capacity 0 for a new channel) or WEFT_ENOMEM. */
int weft_chan_named(weft_runtime_t *rt, const char *name, size_t capacity, weft_chan_t **out);

/* References: the last unref frees the channel and the messages in it.
 * No waiter may be registered then (each holder of a waiter node holds a
 * reference until it is done with it). */
weft_chan_t *weft_chan_ref(weft_chan_t *c);
void weft_chan_unref(weft_chan_t *c);

/* Queue a message.  On 0 the channel owns data (weft_malloc'd, len bytes).
 * -EAGAIN when full: if wt is given it is registered as a sender (state
 * WAITING) and woken with code 0 when there is room (then try again; a
 * wake-up is a hint, not a reservation).  WEFT_ECLOSED if closed (data
 * stays the caller's); -EBUSY, instead of registering wt, if wt is
 * still registered.
 *
 * How wake-ups are posted (the same for receivers below): the oldest
 * waiter of the kind is posted a WEFT_MSG_WAKE and becomes WOKEN.  If its
 * worker has been freed (the post says WEFT_ECLOSED) it is dropped (state
 * IDLE) and the next one is woken instead, so the wake-up is not lost.  If
 * the post fails for want of memory (WEFT_ENOMEM, counted in `nomem`) the
 * waiter stays registered where it is, and the next one is woken instead
 * so that nobody depends on the failed post: the failed waiter is tried
 * again by the next wake-up of its kind, or ends by its own deadline. */
int weft_chan_send(weft_chan_t *c, char *data, size_t len, weft_chan_waiter_t *wt);

/* Take the oldest message: 0 with *data (the caller's, weft_free it) and
 * *len.  -EAGAIN when empty (registers wt as a receiver, like send),
 * WEFT_ECLOSED when closed and empty, -EBUSY as for send. */
int weft_chan_recv(weft_chan_t *c, char **data, size_t *len, weft_chan_waiter_t *wt);

/* wt's wait ended otherwise than by acting on the channel's wake-up (its
 * deadline, its coroutine or state going away): withdraw it if it is
 * still registered; if the channel had already woken it, pass that
 * wake-up on to the next waiter of its kind, who can use it now.  Then wt
 * is IDLE.  Nothing happens for a waiter that is IDLE or belongs to
 * another channel.  O(1) unless wake-ups must skip failed posts.  A
 * waiter woken with code 0 that tries again needs no cancel. */
void weft_chan_cancel(weft_chan_t *c, weft_chan_waiter_t *wt);

/* Close: no more sends; receivers drain what is queued, then get
 * WEFT_ECLOSED.  Every waiter is woken (one whose post fails for want of
 * memory stays registered and is tried again by the next call on the
 * channel, or ends by its deadline).  Idempotent. */
void weft_chan_close(weft_chan_t *c);

/* Messages queued now. */
size_t weft_chan_count(weft_chan_t *c);

/* The capacity. */
size_t weft_chan_capacity(const weft_chan_t *c);

/* The channel's counters now. */
void weft_chan_stats(weft_chan_t *c, weft_chan_stats_t *out);

/* Internal: drop the named channels of a runtime being freed. */
void weft__chan_release_named(void **list);

#endif
