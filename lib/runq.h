/* Run queue: a growable FIFO ring of wake-ups for one worker's coroutines.
 * Owner thread only. */
#ifndef WEFT_RUNQ_H
#define WEFT_RUNQ_H

#include <stddef.h>
#include <stdint.h>

/* A wake-up: resume coroutine `slot` if it is still in wait number `seq`,
 * with result `code` (0 = ready, or a negative weft error code, or a
 * positive value meaning what the waiter defined). */
typedef struct weft_wake {
	uint32_t slot;
	uint32_t seq;
	int32_t code;
} weft_wake_t;

typedef struct weft_runq {
	weft_wake_t *_ring;
	size_t _cap; /* power of two, or 0 */
	size_t _head, _tail; /* free-running counters */
} weft_runq_t;

/* Initialise an empty queue (no allocation yet). */
void weft_runq_init(weft_runq_t *q);

/* Free the ring. */
void weft_runq_destroy(weft_runq_t *q);

/* Append; grows the ring as needed.  0 or WEFT_ENOMEM. */
int weft_runq_push(weft_runq_t *q, weft_wake_t w);

/* Make room for n entries in all, so that pushes up to that length cannot
 * fail.  0 or WEFT_ENOMEM. */
int weft_runq_reserve(weft_runq_t *q, size_t n);

/* Pop the oldest into *w.  1 if one was popped, 0 if empty. */
int weft_runq_pop(weft_runq_t *q, weft_wake_t *w);

static inline size_t weft_runq_len(const weft_runq_t *q)
{
	return q->_tail - q->_head;
}

#endif
