/* Inbox: producers append to _items under _lock; the consumer swaps _items
 * with its _spare array and handles the batch after unlocking, so a
 * producer waits at most for one swap, never for the consumer's work.
 *
 * _pending mirrors _len for weft_inbox_nonempty().  It is written only
 * under the lock, with release order, so a consumer that sees it non-zero
 * with acquire order also sees the messages' bytes.  It is only a hint:
 * drain() reads _len under the lock. */
#include "inbox.h"

#include <stdint.h>

#include "alloc.h"
#include "error.h"

/* A few cache lines of messages; most bursts fit without growing. */
#define INBOX_MIN_CAP 64

int weft_inbox_init(weft_inbox_t *in)
{
	in->_items = NULL;
	in->_len = 0;
	in->_cap = 0;
	in->_spare = NULL;
	in->_spare_cap = 0;
	atomic_init(&in->_pending, 0);
	in->_closed = 0;
	return weft_mutex_init(&in->_lock);
}

/* Owner only, with no producer left running. */
void weft_inbox_destroy(weft_inbox_t *in)
{
	weft_mutex_destroy(&in->_lock);
	weft_free(in->_items);
	weft_free(in->_spare);
	in->_items = in->_spare = NULL;
	in->_len = in->_cap = in->_spare_cap = 0;
	atomic_store_explicit(&in->_pending, 0, memory_order_relaxed);
}

/* Called with the lock held.  On failure the array is unchanged. */
static int grow(weft_inbox_t *in)
{
	size_t cap = in->_cap ? in->_cap * 2 : INBOX_MIN_CAP;
	if (cap < in->_cap || cap > SIZE_MAX / sizeof(weft_msg_t))
		return WEFT_ENOMEM;
	weft_msg_t *items = weft_realloc(in->_items, cap * sizeof(weft_msg_t));
	if (items == NULL)
		return WEFT_ENOMEM;
	in->_items = items;
	in->_cap = cap;
	return 0;
}

int weft_inbox_push(weft_inbox_t *in, const weft_msg_t *m)
{
	int rc = 0;
	weft_mutex_lock(&in->_lock);
	if (in->_closed)
		rc = WEFT_ECLOSED;
	else if (in->_len == in->_cap)
		rc = grow(in);
	if (rc == 0) {
		in->_items[in->_len++] = *m;
		atomic_store_explicit(&in->_pending, in->_len, memory_order_release);
	}
	weft_mutex_unlock(&in->_lock);
	return rc;
}

size_t weft_inbox_drain(weft_inbox_t *in, weft_msg_t **out)
{
	/* Nothing published: skip the lock, so an idle worker polling its
	 * inbox does not contend with producers.  A push racing with this
	 * load is picked up by the next drain; the park protocol re-checks
	 * after announcing it sleeps, so no wake-up is lost. */
	if (atomic_load_explicit(&in->_pending, memory_order_acquire) == 0) {
		*out = in->_spare;
		return 0;
	}

	weft_mutex_lock(&in->_lock);
	weft_msg_t *batch = in->_items;
	size_t batch_cap = in->_cap, n = in->_len;
	/* The spare held the previous batch, which the caller has finished
	 * with by contract ("valid until the next drain"). */
	in->_items = in->_spare;
	in->_cap = in->_spare_cap;
	in->_len = 0;
	atomic_store_explicit(&in->_pending, 0, memory_order_release);
	weft_mutex_unlock(&in->_lock);

	in->_spare = batch;
	in->_spare_cap = batch_cap;
	*out = batch;
	return n;
}

void weft_inbox_close(weft_inbox_t *in)
{
	weft_mutex_lock(&in->_lock);
	in->_closed = 1;
	weft_mutex_unlock(&in->_lock);
}
