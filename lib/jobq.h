/* Job queues: work not yet bound to a Lua state (DESIGN §1, §5), such as
 * a spawned function with its arguments.  Each worker has one; the owner
 * pushes and pops at opposite ends (FIFO, fair to old jobs) and an idle
 * worker steals half of another's queue.  A mutex per queue: jobs are
 * coarse (a whole function call), so the lock is not the cost to fight
 * first; a lock-free ring can replace it behind these functions.
 *
 * Thread safety: every function may be called from any thread. */
#ifndef WEFT_JOBQ_H
#define WEFT_JOBQ_H

#include "thread.h"
#include <stdatomic.h>
#include <stddef.h>

typedef struct weft_job {
	struct weft_job *_next;
	void *data; /* the binding's */
} weft_job_t;

typedef struct weft_jobq {
	weft_mutex_t _lock;
	weft_job_t *_head, *_tail;
	_Atomic size_t len; /* a hint without the lock */
} weft_jobq_t;

void weft_jobq_init(weft_jobq_t *q);
void weft_jobq_destroy(weft_jobq_t *q);

/* Append a job (intrusive: no allocation). */
void weft_jobq_push(weft_jobq_t *q, weft_job_t *j);

/* Take the oldest job, or NULL. */
weft_job_t *weft_jobq_pop(weft_jobq_t *q);

/* Move the older half (at least one) of from's jobs to the end of to.
 * Returns how many moved.  Locks one queue at a time. */
size_t weft_jobq_steal(weft_jobq_t *from, weft_jobq_t *to);

#endif
