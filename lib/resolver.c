/* Resolver: getaddrinfo() inline for numeric addresses, otherwise on a
 * small process-wide pool of threads.
 *
 * The pool is one FIFO of requests (linked through _next) under one mutex.
 * Threads are started lazily, one more whenever a request arrives and no
 * idle thread is left to take it, up to WEFT_RESOLVER_THREADS; idle threads
 * sleep on a condition variable.  One slow lookup therefore does not hold
 * up the others, which matters because a DNS timeout can take seconds. */
#include "resolver.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>

#include "alloc.h"
#include "error.h"
#include "thread.h"

/* A pool thread.  weft_resolver_stop() leaves a thread that is busy with
 * a lookup behind (`orphan`): it finishes that lookup, detaches itself and
 * frees this record, instead of being joined. */
typedef struct pthr {
	weft_thread_t id;
	int busy;   /* in a lookup (pool lock) */
	int orphan; /* left behind by a stop: exit after the lookup */
} pthr_t;

static struct {
	weft_mutex_t lock;
	weft_cond_t work;    /* a request was queued, or stopping was set */
	weft_cond_t stopped; /* a shutdown finished */
	weft_resolve_t *head, *tail;
	size_t queued;
	int nthreads; /* started and not yet joined */
	int idle;     /* waiting on `work` */
	int stopping; /* a shutdown is joining the threads */
	pthr_t *threads[WEFT_RESOLVER_THREADS];
} pool = {
    .lock = WEFT_MUTEX_INIT,
    .work = WEFT_COND_INIT,
    .stopped = WEFT_COND_INIT,
};

static _Atomic unsigned delay_ms;

/* Set on pool threads, so that a callback that submits or shuts down does
 * not wait for (or join) the very thread it runs on. */
static _Thread_local int on_pool_thread;

/* A service the numeric path may hand to getaddrinfo() with
 * AI_NUMERICSERV: absent, or decimal digits.  A name such as "http" needs
 * the services database (NSS: files, maybe NIS), and what libc returns
 * for it under AI_NUMERICSERV varies (glibc says EAI_NONAME, others
 * EAI_SERVICE), so decide here rather than guess from the error. */
static int numeric_service(const char *s)
{
	if (s == NULL)
		return 1;
	if (*s == '\0')
		return 0;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return 0;
	}
	return 1;
}

/* Run getaddrinfo() for req with extra flags; returns the raw EAI code and
 * the errno that goes with EAI_SYSTEM. */
static int lookup(weft_resolve_t *req, int flags, int *sys_errno)
{
	struct addrinfo hints = req->hints;
	hints.ai_flags |= flags;
	/* The contract says a NULL host means "any": the wildcard address, for
	 * binding.  Without AI_PASSIVE getaddrinfo() would give loopback. */
	if (req->host == NULL)
		hints.ai_flags |= AI_PASSIVE;
	/* The contract says a NULL service is port 0.  getaddrinfo() rejects
	 * a NULL host together with a NULL service, so "0" stands in then;
	 * with a host, NULL is kept (raw sockets reject any service). */
	const char *service = req->service ? req->service : req->host ? NULL : "0";

	req->result = NULL;
	errno = 0;
	int rc = getaddrinfo(req->host, service, &hints, &req->result);
	*sys_errno = errno;
	return rc;
}

static int weft_code(int eai, int sys_errno)
{
	if (eai == 0)
		return 0;
	/* errno should say why; if it was lost, still report a failure. */
	if (eai == EAI_SYSTEM)
		return sys_errno ? -sys_errno : -EIO;
	return WEFT_EAI(eai);
}

int weft_resolve_now(weft_resolve_t *req)
{
	int sys_errno;
	int eai = lookup(req, 0, &sys_errno);
	req->err = weft_code(eai, sys_errno);
	return req->err;
}

int weft_resolve_numeric(weft_resolve_t *req)
{
	int sys_errno;
	req->result = NULL;
	req->err = 0;
	if (!numeric_service(req->service))
		return 1;
	int eai = lookup(req, AI_NUMERICHOST | AI_NUMERICSERV, &sys_errno);
	/* EAI_NONAME under AI_NUMERICHOST means "not an address literal": a
	 * name to look up, which may block. */
	if (eai == EAI_NONAME)
		return 1;
	req->err = weft_code(eai, sys_errno);
	return req->err;
}

static void *pool_thread(void *arg)
{
	pthr_t *self = arg;
	on_pool_thread = 1;
	weft_mutex_lock(&pool.lock);
	for (;;) {
		while (pool.head == NULL && !pool.stopping) {
			pool.idle++;
			weft_cond_wait(&pool.work, &pool.lock);
			pool.idle--;
		}
		weft_resolve_t *req = pool.head;
		if (req == NULL)
			break; /* stopping, and the queue has drained */
		pool.head = req->_next;
		if (pool.head == NULL)
			pool.tail = NULL;
		pool.queued--;
		self->busy = 1;
		weft_mutex_unlock(&pool.lock);

		unsigned ms = atomic_load_explicit(&delay_ms, memory_order_relaxed);
		if (ms)
			weft_thread_sleep_ns((uint64_t)ms * 1000000u);
		/* The callback may free or reuse req: read it first. */
		weft_resolve_cb cb = req->_cb;
		void *arg2 = req->_arg;
		weft_resolve_now(req);
		cb(req, arg2);

		weft_mutex_lock(&pool.lock);
		self->busy = 0;
		if (self->orphan) {
			/* A stop left this thread behind: nobody will join it. */
			weft_mutex_unlock(&pool.lock);
			weft_thread_detach(self->id);
			weft_free(self);
			return NULL;
		}
	}
	weft_mutex_unlock(&pool.lock);
	return NULL;
}

/* Called with the lock held.  0 or an errno value. */
static int start_thread(void)
{
	/* Signals belong to the workers (the main thread handles them); a
	 * handler run on a resolver thread would find none of the state it
	 * expects. */
	pthr_t *t = weft_calloc(1, sizeof *t);
	if (!t)
		return ENOMEM;
	int rc = weft_thread_create(&t->id, pool_thread, t, WEFT_THREAD_NOSIGNALS);
	if (rc != 0) {
		weft_free(t);
		return rc == WEFT_ENOMEM ? ENOMEM : -rc;
	}
	pool.threads[pool.nthreads++] = t;
	return 0;
}

int weft_resolver_submit(weft_resolve_t *req, weft_resolve_cb cb, void *arg)
{
	req->result = NULL;
	req->err = 0;
	req->_cb = cb;
	req->_arg = arg;
	req->_next = NULL;

	weft_mutex_lock(&pool.lock);
	/* A shutdown is joining the threads and may not start new ones: wait
	 * for it, then restart the pool.  A callback submitting from a pool
	 * thread must not wait (its thread is being joined); the request is
	 * queued and that very thread takes it, since threads leave only once
	 * the queue is empty. */
	while (pool.stopping && !on_pool_thread)
		weft_cond_wait(&pool.stopped, &pool.lock);

	/* Compare with the idle count rather than test "idle == 0": a thread
	 * already signalled for an earlier request still counts as idle
	 * until it wakes up. */
	if (!pool.stopping && pool.queued >= (size_t)pool.idle &&
	    pool.nthreads < WEFT_RESOLVER_THREADS) {
		int rc = start_thread();
		/* With a thread running the request is only delayed; with none
		 * it would never run, so fail and never call cb. */
		if (rc != 0 && pool.nthreads == 0) {
			weft_mutex_unlock(&pool.lock);
			return -rc;
		}
	}

	if (pool.tail)
		pool.tail->_next = req;
	else
		pool.head = req;
	pool.tail = req;
	pool.queued++;
	weft_cond_signal(&pool.work);
	weft_mutex_unlock(&pool.lock);
	return 0;
}

void weft_resolver_set_delay(unsigned ms)
{
	atomic_store_explicit(&delay_ms, ms, memory_order_relaxed);
}

void weft_resolver_shutdown(void)
{
	/* From a callback this would join its own thread. */
	if (on_pool_thread)
		return;

	weft_mutex_lock(&pool.lock);
	while (pool.stopping)
		weft_cond_wait(&pool.stopped, &pool.lock);
	if (pool.nthreads == 0) {
		weft_mutex_unlock(&pool.lock);
		return;
	}
	pool.stopping = 1;
	weft_cond_broadcast(&pool.work);
	int n = pool.nthreads;
	weft_mutex_unlock(&pool.lock);

	/* threads[] cannot change meanwhile: submit starts none while
	 * stopping is set. */
	for (int i = 0; i < n; i++) {
		weft_thread_join(pool.threads[i]->id, NULL);
		weft_free(pool.threads[i]);
	}

	weft_mutex_lock(&pool.lock);
	pool.nthreads = 0;
	pool.stopping = 0;
	weft_cond_broadcast(&pool.stopped);
	weft_mutex_unlock(&pool.lock);
}

void weft_resolver_stop(void)
{
	if (on_pool_thread)
		return;

	weft_mutex_lock(&pool.lock);
	while (pool.stopping)
		weft_cond_wait(&pool.stopped, &pool.lock);
	if (pool.nthreads == 0) {
		weft_mutex_unlock(&pool.lock);
		return;
	}
	pool.stopping = 1;
	/* Queued lookups are cancelled rather than run: a dead DNS server
	 * would otherwise hold the caller for its timeout. */
	weft_resolve_t *cancelled = pool.head;
	pool.head = pool.tail = NULL;
	pool.queued = 0;
	/* Threads in a lookup are left to finish it and go by themselves;
	 * the idle ones are joined. */
	pthr_t *join[WEFT_RESOLVER_THREADS];
	int n = 0;
	for (int i = 0; i < pool.nthreads; i++) {
		if (pool.threads[i]->busy)
			pool.threads[i]->orphan = 1;
		else
			join[n++] = pool.threads[i];
	}
	pool.nthreads = 0;
	weft_cond_broadcast(&pool.work);
	weft_mutex_unlock(&pool.lock);

	while (cancelled) {
		weft_resolve_t *req = cancelled;
		cancelled = req->_next;
		req->result = NULL;
		req->err = -ECANCELED;
		req->_cb(req, req->_arg);
	}
	for (int i = 0; i < n; i++) {
		weft_thread_join(join[i]->id, NULL);
		weft_free(join[i]);
	}

	weft_mutex_lock(&pool.lock);
	pool.stopping = 0;
	weft_cond_broadcast(&pool.stopped);
	weft_mutex_unlock(&pool.lock);
}
