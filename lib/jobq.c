/* Job queues: see jobq.h. */
#include "config.h"

#include "jobq.h"

void weft_jobq_init(weft_jobq_t *q)
{
	weft_mutex_init(&q->_lock);
	q->_head = q->_tail = NULL;
	atomic_init(&q->len, 0);
}

void weft_jobq_destroy(weft_jobq_t *q)
{
	weft_mutex_destroy(&q->_lock);
}

static void append(weft_jobq_t *q, weft_job_t *first, weft_job_t *last, size_t n)
{
	last->_next = NULL;
	if (q->_tail)
		q->_tail->_next = first;
	else
		q->_head = first;
	q->_tail = last;
	atomic_fetch_add_explicit(&q->len, n, memory_order_release);
}

void weft_jobq_push(weft_jobq_t *q, weft_job_t *j)
{
	weft_mutex_lock(&q->_lock);
	append(q, j, j, 1);
	weft_mutex_unlock(&q->_lock);
}

weft_job_t *weft_jobq_pop(weft_jobq_t *q)
{
	if (atomic_load_explicit(&q->len, memory_order_acquire) == 0)
		return NULL;
	weft_mutex_lock(&q->_lock);
	weft_job_t *j = q->_head;
	if (j) {
		q->_head = j->_next;
		if (!q->_head)
			q->_tail = NULL;
		atomic_fetch_sub_explicit(&q->len, 1, memory_order_relaxed);
	}
	weft_mutex_unlock(&q->_lock);
	return j;
}

size_t weft_jobq_steal(weft_jobq_t *from, weft_jobq_t *to)
{
	if (from == to || atomic_load_explicit(&from->len, memory_order_acquire) == 0)
		return 0;
	weft_mutex_lock(&from->_lock);
	size_t len = atomic_load_explicit(&from->len, memory_order_relaxed);
	size_t n = (len + 1) / 2;
	weft_job_t *first = from->_head, *last = first;
	for (size_t i = 1; i < n && last; i++)
		last = last->_next;
	if (!first || !last) {
		weft_mutex_unlock(&from->_lock);
		return 0;
	}
	from->_head = last->_next;
	if (!from->_head)
		from->_tail = NULL;
	atomic_fetch_sub_explicit(&from->len, n, memory_order_relaxed);
	weft_mutex_unlock(&from->_lock);
	weft_mutex_lock(&to->_lock);
	append(to, first, last, n);
	weft_mutex_unlock(&to->_lock);
	return n;
}
