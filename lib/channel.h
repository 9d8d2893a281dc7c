/* Channels: bounded FIFO queues of byte strings (serialized values) between
 * coroutines of any workers of a runtime.  Senders wait while the channel
 * is full, receivers while it is empty; waiters are served in arrival
 * order, and a waiter is woken through its worker's inbox, so a channel
 * never touches another worker's coroutines directly.
 *
 * Thread safety: every function may be called from any thread. */
#ifndef WEFT_CHANNEL_H
#define WEFT_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "worker.h"

typedef struct weft_chan weft_chan_t;

/* A new channel holding at most `capacity` (>= 1) messages, with one
 * reference.  0 or WEFT_ENOMEM. */
int weft_chan_new(size_t capacity, weft_chan_t **out);

/* The channel called `name` in rt, created with `capacity` if it does not
 * exist yet (an existing one keeps its own capacity); a new reference
 * either way.  0, -EINVAL (capacity 0 for a new channel) or WEFT_ENOMEM. */
int weft_chan_named(weft_runtime_t *rt, const char *name, size_t capacity, weft_chan_t **out);

/* References: the last unref frees the channel and the messages in it. */
weft_chan_t *weft_chan_ref(weft_chan_t *c);
void weft_chan_unref(weft_chan_t *c);

/* Queue a message.  On 0 the channel owns data (weft_malloc'd, len bytes).
 * -EAGAIN when full: if w is given, (w, slot, seq) is registered and woken
 * with code 0 when there is room (then try again).  WEFT_ECLOSED if
 * closed (data stays the caller's). */
int weft_chan_send(weft_chan_t *c, char *data, size_t len, weft_worker_t *w, uint32_t slot,
		   uint32_t seq);

/* Take the oldest message: 0 with *data (the caller's, weft_free it) and
 * *len.  -EAGAIN when empty (registers like send), WEFT_ECLOSED when closed
 * and empty. */
int weft_chan_recv(weft_chan_t *c, char **data, size_t *len, weft_worker_t *w, uint32_t slot,
		   uint32_t seq);

/* A registered waiter gave up (deadline): withdraw it, or if it was
 * already woken, pass the wake-up on to the next waiter of its kind. */
void weft_chan_cancel(weft_chan_t *c, weft_worker_t *w, uint32_t slot, uint32_t seq);

/* Close: no more sends; receivers drain what is queued, then get
 * WEFT_ECLOSED.  Every waiter is woken.  Idempotent. */
void weft_chan_close(weft_chan_t *c);

/* Messages queued now. */
size_t weft_chan_count(weft_chan_t *c);

/* The capacity. */
size_t weft_chan_capacity(const weft_chan_t *c);

/* Internal: drop the named channels of a runtime being freed. */
void weft__chan_release_named(void **list);

#endif
