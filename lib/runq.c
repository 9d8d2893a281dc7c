/* Run queue: a power-of-two ring indexed by free-running counters.
 *
 * _head and _tail only ever increase; a counter's slot is `counter & (cap -
 * 1)`.  Unsigned wrap-around of the counters is harmless because the
 * capacity divides SIZE_MAX + 1, so `_tail - _head` is always the length
 * and no slot is ever left empty to tell "full" from "empty". */
#include "runq.h"

#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

/* Big enough that a worker with a handful of runnable coroutines never
 * grows; small enough not to matter per worker. */
#define RUNQ_MIN_CAP 16

void weft_runq_init(weft_runq_t *q)
{
	q->_ring = NULL;
	q->_cap = 0;
	q->_head = 0;
	q->_tail = 0;
}

void weft_runq_destroy(weft_runq_t *q)
{
	weft_free(q->_ring);
	/* Leave an empty, valid queue so a second destroy is harmless. */
	weft_runq_init(q);
}

/* Double the ring (only called when it is full).  realloc keeps slots
 * [0, cap) in place; the oldest entries sit at [h, cap) and the wrapped,
 * newer ones at [0, h).  Moving the wrapped part to [cap, cap + h) and
 * rebasing the counters on h puts every entry where its counter now points
 * under the doubled mask, oldest first, so FIFO order survives. */
static int grow(weft_runq_t *q)
{
	size_t cap = q->_cap ? q->_cap * 2 : RUNQ_MIN_CAP;
	if (cap < q->_cap || cap > SIZE_MAX / sizeof(weft_wake_t))
		return WEFT_ENOMEM;

	weft_wake_t *ring = weft_realloc(q->_ring, cap * sizeof(weft_wake_t));
	if (ring == NULL)
		return WEFT_ENOMEM; /* the old ring is untouched */

	size_t len = q->_tail - q->_head;
	size_t h = q->_cap ? q->_head & (q->_cap - 1) : 0;
	if (len > 0 && h > 0)
		memcpy(ring + q->_cap, ring, h * sizeof(weft_wake_t));
	q->_ring = ring;
	q->_cap = cap;
	q->_head = h;
	q->_tail = h + len;
	return 0;
}

int weft_runq_reserve(weft_runq_t *q, size_t n)
{
	while (q->_cap < n) {
		int rc = grow(q);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int weft_runq_push(weft_runq_t *q, weft_wake_t w)
{
	if (q->_tail - q->_head == q->_cap) {
		int rc = grow(q);
		if (rc < 0)
			return rc;
	}
	q->_ring[q->_tail & (q->_cap - 1)] = w;
	q->_tail++;
	return 0;
}

int weft_runq_pop(weft_runq_t *q, weft_wake_t *w)
{
	if (q->_head == q->_tail)
		return 0;
	*w = q->_ring[q->_head & (q->_cap - 1)];
	q->_head++;
	return 1;
}
