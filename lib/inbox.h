/* Inbox: a multi-producer single-consumer queue of messages for one worker
 * (wake-ups from other threads, resolver completions).  Push from any
 * thread; drain from the owner only.  A mutex and a swapped-out array: the
 * consumer takes the whole batch in one lock. */
#ifndef WEFT_INBOX_H
#define WEFT_INBOX_H

#include "thread.h"
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct weft_msg {
	uint32_t kind; /* defined by the user of the inbox */
	uint32_t slot;
	uint32_t seq;
	int32_t code;
	void *ptr;
} weft_msg_t;

typedef struct weft_inbox {
	weft_mutex_t _lock;
	weft_msg_t *_items;
	size_t _len, _cap;
	weft_msg_t *_spare; /* the consumer's array, swapped in on drain */
	size_t _spare_cap;
	_Atomic size_t _pending; /* approximate length, for a lock-free peek */
	int _closed;             /* under _lock: pushes fail (the owner is gone) */
} weft_inbox_t;

/* 0 or -errno. */
int weft_inbox_init(weft_inbox_t *in);
void weft_inbox_destroy(weft_inbox_t *in);

/* Append a message.  0, WEFT_ENOMEM, or WEFT_ECLOSED once the inbox is
 * closed.  Any thread. */
int weft_inbox_push(weft_inbox_t *in, const weft_msg_t *m);

/* Whether messages may be waiting (no lock; a hint).  Any thread. */
static inline int weft_inbox_nonempty(weft_inbox_t *in)
{
	return atomic_load_explicit(&in->_pending, memory_order_acquire) != 0;
}

/* Take every queued message: *out points to an array of the returned
 * count, valid until the next drain.  Owner only. */
size_t weft_inbox_drain(weft_inbox_t *in, weft_msg_t **out);

/* Refuse every later push (its consumer is going away): a producer then
 * learns that its message cannot be delivered and can hand the work to
 * someone else.  Messages already queued stay for weft_inbox_drain.  Any
 * thread; idempotent. */
void weft_inbox_close(weft_inbox_t *in);

#endif
