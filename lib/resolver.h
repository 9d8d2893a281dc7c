/* Address lookup off the worker thread.  getaddrinfo() blocks (DNS, files),
 * so lookups that are not plain numeric addresses run on a small pool of
 * resolver threads; the completion callback runs on the resolver thread
 * and is expected to post a message to the requesting worker's inbox.
 * Thread-safe. */
#ifndef WEFT_RESOLVER_H
#define WEFT_RESOLVER_H

#include "sock.h" /* struct addrinfo */

typedef struct weft_resolve weft_resolve_t;
typedef void (*weft_resolve_cb)(weft_resolve_t *req, void *arg);

struct weft_resolve {
	/* in: host NULL = all interfaces / any; service NULL = port 0 */
	char *host;
	char *service;
	struct addrinfo hints;
	/* out */
	struct addrinfo *result; /* owner: the caller, freeaddrinfo() it */
	int err;                 /* 0, or a weft error code (see error.h) */
	/* private */
	weft_resolve_cb _cb;
	void *_arg;
	weft_resolve_t *_next;
};

/* Resolve synchronously on the calling thread (blocks).  Returns 0 or a
 * weft error code, also stored in req->err; the result in req->result. */
int weft_resolve_now(weft_resolve_t *req);

/* Try to resolve without blocking: succeeds only for numeric hosts and
 * ports (AI_NUMERICHOST | AI_NUMERICSERV are added).  Returns 0 on success,
 * 1 if the lookup needs the pool, or a weft error code. */
int weft_resolve_numeric(weft_resolve_t *req);

/* Queue req on the pool; cb(req, arg) runs on a resolver thread when
 * done.  Starts pool threads lazily (at most WEFT_RESOLVER_THREADS).
 * 0, or a negative code (then cb is never called). */
int weft_resolver_submit(weft_resolve_t *req, weft_resolve_cb cb, void *arg);

#define WEFT_RESOLVER_THREADS 4

/* Test hook: every pooled lookup first sleeps this many milliseconds
 * (simulates a slow DNS server).  0 disables. */
void weft_resolver_set_delay(unsigned ms);

/* Stop the pool threads (joins them; queued requests complete first).
 * For orderly process exit and leak checks; the pool restarts on the next
 * submit. */
void weft_resolver_shutdown(void);

/* Stop the pool without waiting for lookups: queued requests are
 * cancelled (their callbacks run on the calling thread with err
 * -ECANCELED), idle threads are joined, and threads in a lookup finish
 * it, run its callback and exit by themselves (detached).  For the last
 * runtime going away: a dead DNS server must not stall it.  The pool
 * restarts on the next submit.  Any thread but a pool thread (there it
 * does nothing). */
void weft_resolver_stop(void);

#endif
