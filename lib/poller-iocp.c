/* The poller contract (poller.h) on a Windows I/O completion port.  This
 * is the only file in lib/ that knows about IOCP and AFD.
 *
 * Readiness, not completion: each registered socket has at most one poll
 * request (IOCTL_AFD_POLL) in flight on a handle to the Ancillary Function
 * Driver (\Device\Afd), the kernel side of Winsock.  The AFD handle is
 * associated with the port, so a poll request completes through the port
 * like any overlapped I/O, and the completion's overlapped pointer leads
 * back to the socket's record.  A poll request completes once, when one of
 * its events holds (at once, if it holds already), which makes a request
 * one-shot by nature:
 *
 * - level-triggered registrations are re-submitted right after their event
 *   is reported (a socket still ready completes again at once, as epoll
 *   reports a level again on every wait);
 * - one-shot registrations are left disarmed until modify();
 * - edge-triggered registrations are refused (-EOPNOTSUPP): a fresh poll
 *   request reports the current state, not a change, so edges cannot be
 *   told apart from levels.  Callers re-arm one-shot registrations
 *   instead.
 *
 * Changing a registration whose request is in flight cancels the request
 * (NtCancelIoFileEx) and submits a new one when the cancellation
 * completes; deleting one cancels it and frees the record then.  The
 * kernel writes into a record until its request completes, so a record is
 * freed only after its completion has been dequeued.
 *
 * Wake-ups are completions posted with PostQueuedCompletionStatus and no
 * overlapped pointer; the completion key says which poller posted them.
 * They coalesce like the epoll backend's: only the wake that sets the
 * pending flag posts, and the waiter that dequeues it clears the flag.
 *
 * Several threads may wait on one port (GetQueuedCompletionStatusEx); a
 * completion goes to exactly one of them.  One lock per poller guards its
 * records; it is never held while waiting.
 *
 * Nesting.  A completion port cannot be registered in another, nor waited
 * on with the wait functions, so a poller registered in others (its port
 * handle given to add(), as the runtime's shared poller is in each
 * worker's) gets a relay thread: it blocks on the nested poller's port,
 * holds what it dequeued, and posts one completion to each parent whose
 * registration is armed and has none in flight; that completion reports
 * IN there.  wait() on the nested poller takes the held completions first,
 * then dequeues from the port itself; while it leaves some held, it
 * notifies the parents again, as a level-triggered registration would
 * report again.  The relay dequeues again only once its batch was taken.
 * Lock order: a nested poller's nest lock, then a parent's lock. */
#include <errno.h>
#include <mswsock.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <windows.h>
#include <winsock2.h>
#include <winternl.h>

#include "alloc.h"
#include "error.h"
#include "poller.h"
#include "thread.h"

/* ---- what AFD's poll request looks like (from the public DDK headers and
 * the projects that use it; Windows' user-mode SDK does not carry it) ---- */

#define IOCTL_AFD_POLL 0x00012024

enum {
	AFD_POLL_RECEIVE = 1 << 0,
	AFD_POLL_RECEIVE_EXPEDITED = 1 << 1,
	AFD_POLL_SEND = 1 << 2,
	AFD_POLL_DISCONNECT = 1 << 3, /* the peer shut its sending side (FIN) */
	AFD_POLL_ABORT = 1 << 4,      /* the connection was reset */
	AFD_POLL_LOCAL_CLOSE = 1 << 5,
	AFD_POLL_ACCEPT = 1 << 7,
	AFD_POLL_CONNECT_FAIL = 1 << 8
};

typedef struct afd_poll_handle {
	HANDLE handle;
	ULONG events;
	NTSTATUS status;
} afd_poll_handle_t;

typedef struct afd_poll_info {
	LARGE_INTEGER timeout;
	ULONG handle_count;
	ULONG exclusive;
	afd_poll_handle_t handles[1];
} afd_poll_info_t;

/* NTSTATUS values used here (ntstatus.h clashes with winnt.h). */
#define ST_SUCCESS   ((NTSTATUS)0x00000000L)
#define ST_PENDING   ((NTSTATUS)0x00000103L)
#define ST_CANCELLED ((NTSTATUS)0xC0000120L)
#define ST_NOT_FOUND ((NTSTATUS)0xC0000225L)

NTSTATUS NTAPI NtCancelIoFileEx(HANDLE file, PIO_STATUS_BLOCK request, PIO_STATUS_BLOCK status);

/* ---- records ---- */

/* Raw completions fetched per wait() call, and per relay batch. */
#define RAW_MAX   256
#define RELAY_MAX 64
/* The relay looks at its stop flag this often even when nothing comes. */
#define RELAY_CHECK_MS 200

typedef struct reg reg_t;
struct reg {
	/* The kernel writes these two until the request completes. */
	IO_STATUS_BLOCK iosb;
	afd_poll_info_t info;
	weft_poller_t *poller;
	reg_t *next; /* hash chain */
	SOCKET sock; /* as registered (the key) */
	SOCKET base; /* the provider's base socket, which AFD polls */
	unsigned interest;
	uint64_t token;
	ULONG submitted; /* AFD events of the request in flight */
	int pending;     /* a request is in flight */
	int armed;       /* a one-shot not yet fired (or a level registration) */
	int dead;        /* deleted (or closed): free when the request is done */
	/* A registration of a nested poller (sock is its port handle): no
	 * AFD request, completions posted by the child's relay instead. */
	weft_poller_t *child;
	reg_t *nnext; /* the child's list of parent registrations */
	int unlinked; /* deleted and off the child's list: free when done */
};

struct weft_poller {
	HANDLE port;
	HANDLE afd;
	int adopted;
	weft_mutex_t lock;
	reg_t **table; /* hash of registered sockets */
	size_t size, count;
	size_t inflight; /* requests the kernel still holds */
	_Atomic int wake_pending;
	weft_poller_t *anext; /* every poller of the process (find_nested) */
	/* Nested in others: nlock guards everything below. */
	weft_mutex_t nlock;
	weft_cond_t taken;   /* the relay's batch was taken (or stop) */
	weft_cond_t arrived; /* the relay holds a batch */
	reg_t *parents;
	weft_thread_t relay;
	int relay_on, relay_stop;
	ULONG nheld;
	OVERLAPPED_ENTRY held[RELAY_MAX];
};

/* Every poller of the process, so that add() can tell a port handle it
 * is given from a socket and find the poller it nests. */
static weft_mutex_t all_lock = WEFT_MUTEX_INIT;
static weft_poller_t *all_pollers;

static size_t slot(const weft_poller_t *p, SOCKET s)
{
	uint64_t h = (uint64_t)s * 0x9E3779B97F4A7C15u;

	return (size_t)(h >> 32) & (p->size - 1);
}

static reg_t **find(weft_poller_t *p, SOCKET s)
{
	reg_t **r = &p->table[slot(p, s)];

	while (*r != NULL && (*r)->sock != s)
		r = &(*r)->next;
	return r;
}

static int grow(weft_poller_t *p)
{
	size_t old = p->size, n = old ? old * 2 : 64;
	reg_t **t = weft_calloc(n, sizeof *t), **ot = p->table;

	if (t == NULL)
		return WEFT_ENOMEM;
	p->table = t;
	p->size = n;
	for (size_t i = 0; i < old; i++) {
		reg_t *r = ot[i];

		while (r != NULL) {
			reg_t *next = r->next;
			size_t k = slot(p, r->sock);

			r->next = t[k];
			t[k] = r;
			r = next;
		}
	}
	weft_free(ot);
	return 0;
}

static ULONG to_afd(unsigned events)
{
	/* Errors and hang-ups are always reported, as epoll does. */
	ULONG e = AFD_POLL_ABORT | AFD_POLL_CONNECT_FAIL | AFD_POLL_LOCAL_CLOSE;

	if (events & WEFT_POLL_IN)
		e |= AFD_POLL_RECEIVE | AFD_POLL_ACCEPT | AFD_POLL_DISCONNECT;
	if (events & WEFT_POLL_OUT)
		e |= AFD_POLL_SEND;
	return e;
}

static unsigned from_afd(ULONG e, unsigned interest)
{
	unsigned events = 0;

	if (e & (AFD_POLL_RECEIVE | AFD_POLL_ACCEPT))
		events |= WEFT_POLL_IN;
	if (e & AFD_POLL_DISCONNECT)
		events |= WEFT_POLL_IN | WEFT_POLL_HUP; /* end of stream is readable */
	if (e & AFD_POLL_SEND)
		events |= WEFT_POLL_OUT;
	if (e & AFD_POLL_ABORT)
		events |= WEFT_POLL_IN | WEFT_POLL_OUT | WEFT_POLL_HUP | WEFT_POLL_ERR;
	if (e & AFD_POLL_CONNECT_FAIL)
		events |= WEFT_POLL_OUT | WEFT_POLL_HUP | WEFT_POLL_ERR;
	/* IN and OUT only when asked for; HUP and ERR always. */
	return events & (interest | WEFT_POLL_HUP | WEFT_POLL_ERR);
}

/* Submit r's poll request.  Lock held, nothing in flight.  0 or -errno. */
static int submit(weft_poller_t *p, reg_t *r)
{
	ULONG mask = to_afd(r->interest);
	NTSTATUS st;

	r->info.timeout.QuadPart = INT64_MAX; /* no timeout */
	r->info.handle_count = 1;
	r->info.exclusive = FALSE;
	r->info.handles[0].handle = (HANDLE)r->base;
	r->info.handles[0].events = mask;
	r->info.handles[0].status = 0;
	r->iosb.Status = ST_PENDING;
	/* The IO_STATUS_BLOCK's address is the completion's overlapped
	 * pointer: it leads back to r. */
	st = NtDeviceIoControlFile(p->afd, NULL, NULL, &r->iosb, &r->iosb, IOCTL_AFD_POLL, &r->info,
	                           sizeof r->info, &r->info, sizeof r->info);
	if (st != ST_SUCCESS && st != ST_PENDING)
		return st == (NTSTATUS)0xC0000008L /* STATUS_INVALID_HANDLE */ ? -EBADF : -EINVAL;
	/* Even a request that succeeds at once completes through the port
	 * (the AFD handle skips no completions).  Its buffer may hold the
	 * answer already: remember the question from before. */
	r->submitted = mask;
	r->pending = 1;
	p->inflight++;
	return 0;
}

/* Ask the kernel to end r's request early.  Lock held. */
static void cancel(weft_poller_t *p, reg_t *r)
{
	IO_STATUS_BLOCK cancel_iosb;

	/* STATUS_NOT_FOUND: it completed already, and its completion is on
	 * its way; either way one completion comes. */
	NtCancelIoFileEx(p->afd, &r->iosb, &cancel_iosb);
}

/* Bring r's request in line with its registration.  Lock held. */
static int sync_request(weft_poller_t *p, reg_t *r)
{
	if (r->pending) {
		if (!r->armed || r->submitted != to_afd(r->interest))
			cancel(p, r); /* re-submitted when the cancel completes */
		return 0;
	}
	return r->armed ? submit(p, r) : 0;
}

static SOCKET base_socket(SOCKET s)
{
	SOCKET base = INVALID_SOCKET;
	DWORD n = 0;

	/* A layered service provider wraps the socket; AFD knows the base.
	 * Without one (or where SIO_BASE_HANDLE is not implemented) the
	 * socket is its own base. */
	if (WSAIoctl(s, SIO_BASE_HANDLE, NULL, 0, &base, sizeof base, &n, NULL, NULL) != 0 ||
	    base == INVALID_SOCKET)
		return s;
	return base;
}

static int is_socket(SOCKET s)
{
	int type, len = sizeof type;

	return getsockopt(s, SOL_SOCKET, SO_TYPE, (char *)&type, &len) == 0;
}

/* ---- nesting ---- */

/* The poller whose port is h (its creator, if several share it). */
static weft_poller_t *find_nested(HANDLE h)
{
	weft_poller_t *found = NULL;

	weft_mutex_lock(&all_lock);
	for (weft_poller_t *q = all_pollers; q != NULL; q = q->anext)
		if (q->port == h && (found == NULL || !q->adopted))
			found = q;
	weft_mutex_unlock(&all_lock);
	return found;
}

/* Tell each parent that c has completions to take.  c->nlock held. */
static void notify(weft_poller_t *c)
{
	for (reg_t *l = c->parents; l != NULL; l = l->nnext) {
		weft_poller_t *p = l->poller;

		weft_mutex_lock(&p->lock);
		if (!l->dead && !l->pending && l->armed &&
		    PostQueuedCompletionStatus(p->port, 0, 0, (OVERLAPPED *)&l->iosb)) {
			l->pending = 1;
			p->inflight++;
		}
		weft_mutex_unlock(&p->lock);
	}
}

static void *relay_main(void *arg)
{
	weft_poller_t *c = arg;
	OVERLAPPED_ENTRY raw[RELAY_MAX];

	weft_mutex_lock(&c->nlock);
	for (;;) {
		ULONG n = 0;

		while (c->nheld > 0 && !c->relay_stop)
			weft_cond_wait(&c->taken, &c->nlock);
		if (c->relay_stop)
			break;
		weft_mutex_unlock(&c->nlock);
		if (!GetQueuedCompletionStatusEx(c->port, raw, RELAY_MAX, &n, RELAY_CHECK_MS,
		                                 FALSE))
			n = 0;
		weft_mutex_lock(&c->nlock);
		/* nheld is 0: only the relay adds, and only when it is. */
		memcpy(c->held, raw, n * sizeof *raw);
		c->nheld = n;
		if (n > 0) {
			weft_cond_broadcast(&c->arrived);
			notify(c);
		}
	}
	weft_mutex_unlock(&c->nlock);
	return NULL;
}

/* Register nested poller c in p.  0 or -errno. */
static int add_nested(weft_poller_t *p, weft_poller_t *c, SOCKET key, unsigned events,
                      uint64_t token)
{
	reg_t *r;
	int rc = 0;

	if (c == p || (events & WEFT_POLL_OUT))
		return -EINVAL;
	r = weft_calloc(1, sizeof *r);
	if (r == NULL)
		return WEFT_ENOMEM;
	r->poller = p;
	r->child = c;
	r->sock = key;
	r->interest = events;
	r->token = token;
	r->armed = 1;
	weft_mutex_lock(&p->lock);
	if (*find(p, key) != NULL)
		rc = -EEXIST;
	else if (p->count >= p->size)
		rc = grow(p);
	if (rc == 0) {
		reg_t **at = find(p, key);

		*at = r;
		p->count++;
	}
	weft_mutex_unlock(&p->lock);
	if (rc != 0) {
		weft_free(r);
		return rc;
	}
	weft_mutex_lock(&c->nlock);
	if (!c->relay_on) {
		rc = weft_thread_create(&c->relay, relay_main, c, WEFT_THREAD_NOSIGNALS);
		c->relay_on = rc == 0;
	}
	if (rc == 0) {
		r->nnext = c->parents;
		c->parents = r;
		if (c->nheld > 0)
			notify(c);
	}
	weft_mutex_unlock(&c->nlock);
	if (rc != 0) {
		weft_mutex_lock(&p->lock);
		reg_t **at = find(p, key);

		*at = r->next;
		p->count--;
		weft_mutex_unlock(&p->lock);
		weft_free(r);
	}
	return rc;
}

/* Delete nested registration r, already out of p's table and dead. */
static void delete_nested(weft_poller_t *p, reg_t *r)
{
	weft_poller_t *c = r->child;

	weft_mutex_lock(&c->nlock);
	for (reg_t **at = &c->parents; *at != NULL; at = &(*at)->nnext)
		if (*at == r) {
			*at = r->nnext;
			break;
		}
	weft_mutex_unlock(&c->nlock);
	weft_mutex_lock(&p->lock);
	r->unlinked = 1;
	if (!r->pending)
		weft_free(r);
	weft_mutex_unlock(&p->lock);
}

/* Stop c's relay; what it held is handed back to the caller.  Returns
 * the count copied into out (room for RELAY_MAX). */
static ULONG stop_relay(weft_poller_t *c, OVERLAPPED_ENTRY *out)
{
	ULONG n;

	weft_mutex_lock(&c->nlock);
	if (!c->relay_on) {
		weft_mutex_unlock(&c->nlock);
		return 0;
	}
	c->relay_stop = 1;
	weft_cond_signal(&c->taken);
	weft_mutex_unlock(&c->nlock);
	weft_poller_wake(c); /* out of its wait at once, most often */
	weft_thread_join(c->relay, NULL);
	n = c->nheld;
	memcpy(out, c->held, n * sizeof *out);
	c->nheld = 0;
	c->relay_on = 0;
	return n;
}

/* ---- the contract ---- */

unsigned weft_poller_caps(void)
{
	return 0; /* no edges: see the top of this file */
}

const char *weft_poller_kind(void)
{
	return "iocp";
}

static HANDLE open_afd(void)
{
	/* Any name under \Device\Afd opens the driver; the suffix only
	 * names the opener in handle listings. */
	static const wchar_t *names[] = {L"\\Device\\Afd\\Weft", L"\\Device\\Afd"};

	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
		UNICODE_STRING name;
		OBJECT_ATTRIBUTES attr;
		IO_STATUS_BLOCK iosb;
		HANDLE h = NULL;

		name.Buffer = (PWSTR)names[i];
		name.Length = (USHORT)(wcslen(names[i]) * sizeof(wchar_t));
		name.MaximumLength = name.Length;
		InitializeObjectAttributes(&attr, &name, 0, NULL, NULL);
		if (NtCreateFile(&h, SYNCHRONIZE, &attr, &iosb, NULL, 0,
		                 FILE_SHARE_READ | FILE_SHARE_WRITE, FILE_OPEN, 0, NULL,
		                 0) == ST_SUCCESS)
			return h;
	}
	return NULL;
}

static void winsock_init(void)
{
	WSADATA wsa;

	/* Counted: every WSAStartup needs a WSACleanup, but the process
	 * holds Winsock until it exits, so one for the process is enough. */
	WSAStartup(MAKEWORD(2, 2), &wsa);
}

int weft_poller_new(int fd, weft_poller_t **out)
{
	static weft_once_t wsa_once = WEFT_ONCE_INIT;
	weft_poller_t *p;
	int err = -EINVAL;

	*out = NULL;
	weft_once(&wsa_once, winsock_init);
	p = weft_calloc(1, sizeof *p);
	if (p == NULL)
		return WEFT_ENOMEM;
	p->adopted = fd >= 0;
	atomic_init(&p->wake_pending, 0);
	if (weft_mutex_init(&p->lock) != 0 || weft_mutex_init(&p->nlock) != 0 ||
	    weft_cond_init(&p->taken) != 0 || weft_cond_init(&p->arrived) != 0 || grow(p) != 0) {
		err = WEFT_ENOMEM;
		goto fail;
	}
	if (p->adopted) {
		/* Associating the AFD handle with it (below) fails unless
		 * this is a completion port. */
		DWORD flags;

		p->port = (HANDLE)(intptr_t)fd;
		if (!GetHandleInformation(p->port, &flags)) {
			err = -EBADF;
			goto fail;
		}
	} else {
		p->port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
		if (p->port == NULL)
			goto fail;
	}
	p->afd = open_afd();
	if (p->afd == NULL)
		goto fail;
	if (CreateIoCompletionPort(p->afd, p->port, 0, 0) == NULL)
		goto fail;
	/* Nobody waits on the AFD handle itself: spare the kernel setting
	 * its event on every completion. */
	SetFileCompletionNotificationModes(p->afd, FILE_SKIP_SET_EVENT_ON_HANDLE);
	weft_mutex_lock(&all_lock);
	p->anext = all_pollers;
	all_pollers = p;
	weft_mutex_unlock(&all_lock);
	*out = p;
	return 0;
fail:
	if (p->afd != NULL)
		CloseHandle(p->afd);
	if (p->port != NULL && !p->adopted)
		CloseHandle(p->port);
	weft_free(p->table);
	weft_free(p);
	return err;
}

void weft_poller_free(weft_poller_t *p)
{
	OVERLAPPED_ENTRY raw[RELAY_MAX];
	ULONG held;

	if (p == NULL)
		return;
	weft_mutex_lock(&all_lock);
	for (weft_poller_t **at = &all_pollers; *at != NULL; at = &(*at)->anext)
		if (*at == p) {
			*at = p->anext;
			break;
		}
	weft_mutex_unlock(&all_lock);
	/* Its parents have deleted their registrations of it by now; the
	 * relay's last batch is handled below like any completion. */
	held = stop_relay(p, raw);
	/* Cancel what is in flight and wait for every completion: the
	 * kernel writes into the records until then.  Completions that
	 * belong to another poller on an adopted port go back on the port
	 * for their owner. */
	weft_mutex_lock(&p->lock);
	for (size_t i = 0; i < p->size; i++)
		for (reg_t *r = p->table[i]; r != NULL; r = r->next) {
			r->dead = 1;
			if (r->pending)
				cancel(p, r);
		}
	/* Our own wake, if one is queued, must not outlive us either. */
	while (held > 0 || p->inflight > 0 || atomic_load(&p->wake_pending)) {
		ULONG n = held;

		held = 0;
		weft_mutex_unlock(&p->lock);
		if (n == 0 &&
		    !GetQueuedCompletionStatusEx(p->port, raw, RELAY_MAX, &n, 5000, FALSE))
			n = 0;
		weft_mutex_lock(&p->lock);
		if (n == 0)
			break; /* a request the kernel keeps: leak rather than crash */
		for (ULONG i = 0; i < n; i++) {
			reg_t *r;

			if (raw[i].lpOverlapped == NULL) {
				if ((weft_poller_t *)raw[i].lpCompletionKey == p)
					atomic_store(&p->wake_pending, 0);
				else
					PostQueuedCompletionStatus(p->port, 0,
					                           raw[i].lpCompletionKey, NULL);
				continue;
			}
			r = (reg_t *)((char *)raw[i].lpOverlapped - offsetof(reg_t, iosb));
			if (r->poller == p) {
				r->pending = 0;
				p->inflight--;
			} else {
				PostQueuedCompletionStatus(
				    p->port, raw[i].dwNumberOfBytesTransferred,
				    raw[i].lpCompletionKey, raw[i].lpOverlapped);
			}
		}
	}
	for (size_t i = 0; i < p->size; i++) {
		reg_t *r = p->table[i];

		while (r != NULL) {
			reg_t *next = r->next;

			if (!r->pending)
				weft_free(r);
			r = next;
		}
	}
	weft_mutex_unlock(&p->lock);
	if (p->inflight == 0)
		CloseHandle(p->afd);
	if (!p->adopted)
		CloseHandle(p->port);
	weft_mutex_destroy(&p->lock);
	weft_mutex_destroy(&p->nlock);
	weft_cond_destroy(&p->taken);
	weft_cond_destroy(&p->arrived);
	weft_free(p->table);
	weft_free(p);
}

int weft_poller_fd(const weft_poller_t *p)
{
	/* Handles are 32-bit values even in 64-bit processes (they are
	 * shared with 32-bit ones), so an int holds one. */
	return (int)(intptr_t)p->port;
}

int weft_poller_add(weft_poller_t *p, int fd, unsigned events, uint64_t token)
{
	SOCKET s = (SOCKET)(intptr_t)fd;
	reg_t *r, **at;
	int rc;

	if (token == 0)
		return -EINVAL; /* token 0 is the wake channel's */
	if (events & WEFT_POLL_EDGE)
		return -EOPNOTSUPP;
	if (fd < 0)
		return -EBADF;
	if (!is_socket(s)) {
		weft_poller_t *c = find_nested((HANDLE)(intptr_t)fd);

		return c != NULL ? add_nested(p, c, s, events, token) : -EBADF;
	}
	r = weft_calloc(1, sizeof *r);
	if (r == NULL)
		return WEFT_ENOMEM;
	r->poller = p;
	r->sock = s;
	r->base = base_socket(s);
	r->interest = events;
	r->token = token;
	r->armed = 1;
	weft_mutex_lock(&p->lock);
	if (*find(p, s) != NULL) {
		rc = -EEXIST;
		goto fail;
	}
	if (p->count >= p->size && (rc = grow(p)) != 0)
		goto fail;
	rc = submit(p, r);
	if (rc != 0)
		goto fail;
	at = find(p, s);
	*at = r;
	p->count++;
	weft_mutex_unlock(&p->lock);
	return 0;
fail:
	weft_mutex_unlock(&p->lock);
	weft_free(r);
	return rc;
}

int weft_poller_modify(weft_poller_t *p, int fd, unsigned events, uint64_t token)
{
	reg_t *r;
	int rc;

	if (token == 0)
		return -EINVAL;
	if (events & WEFT_POLL_EDGE)
		return -EOPNOTSUPP;
	weft_mutex_lock(&p->lock);
	r = *find(p, (SOCKET)(intptr_t)fd);
	if (r == NULL) {
		weft_mutex_unlock(&p->lock);
		return -ENOENT;
	}
	r->interest = events;
	r->token = token;
	r->armed = 1;
	if (r->child != NULL) {
		weft_poller_t *c = r->child;

		weft_mutex_unlock(&p->lock);
		weft_mutex_lock(&c->nlock);
		if (c->nheld > 0)
			notify(c);
		weft_mutex_unlock(&c->nlock);
		return 0;
	}
	rc = sync_request(p, r);
	weft_mutex_unlock(&p->lock);
	return rc;
}

int weft_poller_delete(weft_poller_t *p, int fd)
{
	reg_t **at, *r;

	weft_mutex_lock(&p->lock);
	at = find(p, (SOCKET)(intptr_t)fd);
	r = *at;
	if (r == NULL) {
		weft_mutex_unlock(&p->lock);
		return -ENOENT;
	}
	*at = r->next;
	p->count--;
	r->dead = 1;
	if (r->child != NULL) {
		weft_mutex_unlock(&p->lock);
		delete_nested(p, r);
		return 0;
	}
	if (r->pending)
		cancel(p, r); /* freed when its completion comes */
	else
		weft_free(r);
	weft_mutex_unlock(&p->lock);
	return 0;
}

/* Take r out of the table (it may be there still).  Lock held. */
static void unlink_reg(weft_poller_t *p, reg_t *r)
{
	reg_t **at = find(p, r->sock);

	if (*at == r) {
		*at = r->next;
		p->count--;
	}
}

/* r's request completed: report what it found, then re-submit or free.
 * Returns 1 if it submitted r's request again. */
static int complete(weft_poller_t *p, reg_t *r, weft_poll_event_t *ev, int *count)
{
	int asked = 0;
	NTSTATUS st = r->iosb.Status;
	ULONG afd = 0;
	unsigned events;

	weft_mutex_lock(&p->lock);
	r->pending = 0;
	p->inflight--;
	if (r->child != NULL) {
		/* A nested poller's notice: it has (or had) completions. */
		if (r->dead) {
			if (r->unlinked)
				weft_free(r);
		} else if (r->armed) {
			ev[*count].token = r->token;
			ev[*count].events = WEFT_POLL_IN;
			(*count)++;
			if (r->interest & WEFT_POLL_ONESHOT)
				r->armed = 0;
		}
		goto out;
	}
	if (r->dead) {
		weft_free(r);
		goto out;
	}
	if (st == ST_SUCCESS && r->info.handle_count >= 1)
		afd = r->info.handles[0].events;
	else if (st != ST_CANCELLED)
		afd = AFD_POLL_LOCAL_CLOSE; /* the handle went away (Wine says so) */
	if (afd & AFD_POLL_LOCAL_CLOSE) {
		/* Closed without delete(): the registration goes with it, as
		 * epoll drops a closed descriptor. */
		unlink_reg(p, r);
		weft_free(r);
		goto out;
	}
	events = from_afd(afd, r->interest);
	if (events != 0 && r->armed) {
		ev[*count].token = r->token;
		ev[*count].events = events;
		(*count)++;
		if (r->interest & WEFT_POLL_ONESHOT)
			r->armed = 0;
	}
	/* Level-triggered: ask again (a socket still ready answers at
	 * once); a cancelled request is replaced by the current one. */
	if (r->armed && submit(p, r) != 0) {
		/* The socket is unusable (closed under us): drop it. */
		unlink_reg(p, r);
		weft_free(r);
	} else if (r->armed) {
		asked = 1;
	}
out:
	weft_mutex_unlock(&p->lock);
	return asked;
}

int weft_poller_wait(weft_poller_t *p, weft_poll_event_t *ev, int max, int timeout_ms)
{
	OVERLAPPED_ENTRY raw[RAW_MAX];
	ULONG n = 0;
	int count = 0;

	ULONG room, left = 0;
	int relayed = 0;

	if (max <= 0)
		return -EINVAL;
	/* Each completion gives at most one event: never dequeue more than
	 * the caller has room for. */
	room = max < RAW_MAX ? (ULONG)max : RAW_MAX;
	weft_mutex_lock(&p->nlock);
	if (p->relay_on) {
		relayed = 1;
		/* The relay dequeues as soon as anything comes: wait for it
		 * to hold something rather than compete for it. */
		if (p->nheld == 0 && timeout_ms < 0)
			weft_cond_wait(&p->arrived, &p->nlock);
		else if (p->nheld == 0 && timeout_ms > 0)
			weft_cond_timedwait(&p->arrived, &p->nlock,
			                    (uint64_t)timeout_ms * 1000000u);
		timeout_ms = 0;
		n = p->nheld < room ? p->nheld : room;
		memcpy(raw, p->held, n * sizeof *raw);
		memmove(p->held, p->held + n, (p->nheld - n) * sizeof *raw);
		p->nheld -= n;
		left = p->nheld;
		if (left == 0)
			weft_cond_signal(&p->taken);
	}
	weft_mutex_unlock(&p->nlock);
	if (n < room) {
		ULONG more = 0;

		if (GetQueuedCompletionStatusEx(p->port, raw + n, room - n, &more,
		                                n > 0            ? 0
		                                : timeout_ms < 0 ? INFINITE
		                                                 : (DWORD)timeout_ms,
		                                FALSE))
			n += more;
		else if (n == 0 && GetLastError() != WAIT_TIMEOUT &&
		         GetLastError() != WAIT_IO_COMPLETION)
			return -EINVAL;
	}
	if (relayed && left > 0) {
		/* Some are still held: ask the parents to come back. */
		weft_mutex_lock(&p->nlock);
		notify(p);
		weft_mutex_unlock(&p->nlock);
	}
	for (int round = 0;; round++) {
		int asked = 0; /* requests submitted again while handling these */

		for (ULONG i = 0; i < n; i++) {
			if (raw[i].lpOverlapped == NULL) {
				/* A wake: the key names the poller that posted it,
				 * which on an adopted port may be another one. */
				weft_poller_t *q = (weft_poller_t *)raw[i].lpCompletionKey;

				atomic_exchange_explicit(&q->wake_pending, 0, memory_order_acq_rel);
				continue;
			}
			reg_t *r = (reg_t *)((char *)raw[i].lpOverlapped - offsetof(reg_t, iosb));
			asked += complete(r->poller, r, ev, &count);
		}
		/* A request asked again (after a cancel, or a level) answers
		 * at once if its event holds: take that answer in this call,
		 * as epoll would report the state in one wait, rather than on
		 * the caller's next. */
		if (count > 0 || asked == 0 || round == 1 || relayed)
			return count;
		room = max < RAW_MAX ? (ULONG)max : RAW_MAX;
		if (!GetQueuedCompletionStatusEx(p->port, raw, room, &n, 0, FALSE))
			return count;
	}
}

void weft_poller_wake(weft_poller_t *p)
{
	/* acq_rel, as in the epoll backend: release publishes the caller's
	 * work to the waiter that clears the flag. */
	if (atomic_exchange_explicit(&p->wake_pending, 1, memory_order_acq_rel) != 0)
		return;
	PostQueuedCompletionStatus(p->port, 0, (ULONG_PTR)p, NULL);
}
