/* The poller contract.  One backend per file (poller-epoll.c today;
 * poller-iocp.c, a kqueue backend or a per-worker mode slot in behind the
 * same functions); configure picks the file.
 *
 * A poller may be shared by several threads: add/modify/delete/wake are
 * thread-safe, and wait() may be called by several threads at once.  weft
 * gives each worker a poller of its own, which only that worker waits in,
 * and a shared one (listeners) that every worker harvests without
 * blocking (doc/design.md). */
#ifndef WEFT_POLLER_H
#define WEFT_POLLER_H

#include <stdint.h>

/* Interest and event bits. */
enum {
	WEFT_POLL_IN = 1,        /* readable (or a connection to accept) */
	WEFT_POLL_OUT = 2,       /* writable */
	WEFT_POLL_HUP = 4,       /* peer hung up / read side shut */
	WEFT_POLL_ERR = 8,       /* error pending on the socket */
	WEFT_POLL_ONESHOT = 16,  /* interest: disarm after one event */
	WEFT_POLL_EDGE = 32,     /* interest: edge-triggered */
	WEFT_POLL_PRI = 64       /* urgent data pending (reported with IN interest) */
};

/* Token 0 is reserved for the poller's own wake-up channel and is never
 * returned by wait(). */
typedef struct weft_poll_event {
	uint64_t token;
	unsigned events; /* WEFT_POLL_IN | OUT | HUP | ERR */
} weft_poll_event_t;

typedef struct weft_poller weft_poller_t;

/* What a backend can do (weft_poller_caps).  WEFT_POLLER_EDGES: it takes
 * WEFT_POLL_EDGE registrations (epoll).  Without it (IOCP), callers that
 * want edges register one-shot and re-arm what they wait for. */
enum { WEFT_POLLER_EDGES = 1 };

/* This backend's WEFT_POLLER_* bits.  Any thread. */
unsigned weft_poller_caps(void);

/* This backend's name: "epoll" or "iocp" (which of weft.epoll_fd and
 * weft.iocp gives its handle).  Any thread. */
const char *weft_poller_kind(void);

/* Make a poller.  fd >= 0 adopts an existing poller handle (another
 * runtime's, shared between Lua states) instead of creating one; an adopted
 * handle is not closed by weft_poller_free.  Returns 0 and *out, or -errno
 * (WEFT_ENOMEM if allocation fails). */
int weft_poller_new(int fd, weft_poller_t **out);

/* Release the poller (closes its handle unless adopted).  No thread may be
 * inside wait() any more. */
void weft_poller_free(weft_poller_t *p);

/* The OS handle (the epoll fd), for weft.epoll_fd(). */
int weft_poller_fd(const weft_poller_t *p);

/* Register fd with interest `events` and `token` (not 0).  0 or -errno.
 * fd may be another poller's weft_poller_fd: registered level-triggered
 * with WEFT_POLL_IN, it reports IN here while that poller has events to
 * take (every backend nests pollers this way). */
int weft_poller_add(weft_poller_t *p, int fd, unsigned events, uint64_t token);

/* Change fd's interest and token (also re-arms a one-shot).  0 or -errno. */
int weft_poller_modify(weft_poller_t *p, int fd, unsigned events, uint64_t token);

/* Unregister fd.  Must be called before close(fd): epoll tracks the open
 * file description, so a dup'd fd would keep firing.  0 or -errno. */
int weft_poller_delete(weft_poller_t *p, int fd);

/* Wait up to timeout_ms (-1 = forever, 0 = don't block) and fill up to max
 * events.  Returns the count (0 on timeout or when only woken), or -errno
 * (EINTR is returned as 0). */
int weft_poller_wait(weft_poller_t *p, weft_poll_event_t *ev, int max, int timeout_ms);

/* Make a blocked (or the next) wait() return promptly.  Wakes coalesce:
 * many calls before the waiter runs cost one write.  Any thread. */
void weft_poller_wake(weft_poller_t *p);

#endif
