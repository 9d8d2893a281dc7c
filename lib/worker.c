/* The scheduler core: see worker.h for the contract. */
#include "config.h"

#include "worker.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>

#include "alloc.h"
#include "clock.h"
#include "error.h"
#include "channel.h"
#include "listener.h"
#include "sock.h"
#include "thread.h"

static void bury(weft_worker_t *w);

#define NS_PER_TICK 1000000ull /* the wheel ticks in milliseconds */
#define HARVEST_MAX 256
/* How long an idle worker may spin on its inbox and the job count before
 * it blocks in its poller (see may_spin).  Longer than a wake-up from a
 * blocked poller takes on a virtual machine (tens of microseconds), so
 * that two workers in a conversation stay in step instead of each
 * parking while the other wakes: a channel ping-pong's p99 went from
 * over 1 ms (20 us) to tens of microseconds (50 us). */
#define SPIN_NS 50000ull
/* The token of the shared poller inside each worker's poller (fd tokens
 * carry an odd generation in their top half, so they are never 1). */
#define SHARED_TOKEN 1ull

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

/* Parking states of a worker (DESIGN §4).  A producer pushes to the
 * inbox, then swaps the state to NOTIFIED and wakes the worker's poller
 * if it sleeps there; the worker swaps in PARK_POLLER, re-checks its
 * inbox (and the job count), then sleeps.  Both sides swap the same word,
 * so one of them sees the other: no lost wake-up.  Every worker sleeps
 * in its own poller: there is no other way to park. */
enum { PARK_EMPTY, PARK_POLLER, PARK_NOTIFIED };

struct weft_runtime {
	weft_poller_t *poller; /* shared: listeners; the runtime's face */
	weft_fdtab_t *fds;
	weft_mutex_t lock; /* guards attaching/detaching workers and refs */
	/* Read without the lock: a detached worker's memory stays valid
	 * until the runtime goes (graveyard), so a reader that loaded a
	 * pointer before the detach can still touch its inbox or queue. */
	_Atomic(weft_worker_t *) workers[WEFT_MAX_WORKERS];
	_Atomic uint32_t nslots; /* high-water mark of workers[] */
	int refs;
	int ncpu; /* CPUs this process may run on, for the spinning rule */
	weft_runtime_t *_next; /* the process's runtimes, by poller fd */
	weft_mutex_t llock; /* the shared listeners and named channels */
	void *listeners;
	void *channels;
	_Atomic uint64_t lretry; /* listener.c: earliest accept retry, 0 = none */
	weft_worker_t *graveyard; /* freed workers, kept until the runtime goes */
	/* Under lock: the counters of workers that have left (freed or moved
	 * away), so that totals never go down; member numbers (weft.worker()):
	 * a bit per number taken, the count the claims declared and how many
	 * claims that declared it are held. */
	uint64_t retired[WEFT_NSTATS];
	uint64_t members[WEFT_MAX_WORKERS / 64];
	int declared, ndeclared;
	/* Written by every worker: one line each. */
	alignas(64) _Atomic long jobs; /* jobs queued in all workers */
	alignas(64) _Atomic int nworkers; /* attached workers */
	_Atomic int nparked;              /* workers blocked in their poller */
	alignas(64) _Atomic int nspinning; /* workers spinning before they park */
	alignas(64) _Atomic int exiting;   /* weft.exit() or a signal */
};

weft_mutex_t *weft__runtime_listener_lock(weft_runtime_t *rt)
{
	return &rt->llock;
}

void **weft__runtime_listeners(weft_runtime_t *rt)
{
	return &rt->listeners;
}

_Atomic uint64_t *weft__runtime_listener_retry(weft_runtime_t *rt)
{
	return &rt->lretry;
}

void **weft__runtime_channels(weft_runtime_t *rt)
{
	return &rt->channels;
}

void weft__runtime_set_cpus(weft_runtime_t *rt, int ncpu)
{
	rt->ncpu = ncpu > 0 ? ncpu : 1;
}

int weft__worker_idle(const weft_worker_t *w)
{
	int p = atomic_load_explicit(&((weft_worker_t *)w)->_park, memory_order_acquire);
	return p == PARK_POLLER;
}

/* Runtimes of this process, so that a Lua state on another thread can
 * join one by its poller descriptor (weft.epoll_fd(fd)). */
static weft_mutex_t registry_lock = WEFT_MUTEX_INIT;
static weft_runtime_t *registry;

static weft_worker_t *worker_at(weft_runtime_t *rt, uint32_t i)
{
	return atomic_load_explicit(&rt->workers[i], memory_order_acquire);
}

static uint32_t worker_slots(weft_runtime_t *rt)
{
	return atomic_load_explicit(&rt->nslots, memory_order_acquire);
}

void weft_runtime_exit(weft_runtime_t *rt)
{
	atomic_store_explicit(&rt->exiting, 1, memory_order_seq_cst);
	weft_mutex_lock(&rt->lock);
	for (uint32_t i = 0; i < worker_slots(rt); i++)
		if (worker_at(rt, i))
			weft_worker_unpark(worker_at(rt, i));
	weft_mutex_unlock(&rt->lock);
}

int weft_runtime_exiting(const weft_runtime_t *rt)
{
	return atomic_load_explicit(&((weft_runtime_t *)rt)->exiting, memory_order_acquire);
}

void weft_runtime_exit_all(void)
{
	weft_mutex_lock(&registry_lock);
	for (weft_runtime_t *rt = registry; rt; rt = rt->_next)
		weft_runtime_exit(rt);
	weft_mutex_unlock(&registry_lock);
}


int weft_runtime_new(int epfd, weft_runtime_t **out)
{
	weft_runtime_t *rt = weft_calloc(1, sizeof *rt);
	if (!rt)
		return WEFT_ENOMEM;
	int err = weft_poller_new(epfd, &rt->poller);
	if (err < 0) {
		weft_free(rt);
		return err;
	}
	err = weft_fdtab_new(&rt->fds);
	if (err < 0) {
		weft_poller_free(rt->poller);
		weft_free(rt);
		return err;
	}
	weft_mutex_init(&rt->lock);
	weft_mutex_init(&rt->llock);
	rt->refs = 1;
	rt->ncpu = weft_thread_ncpu();
	weft_mutex_lock(&registry_lock);
	rt->_next = registry;
	registry = rt;
	weft_mutex_unlock(&registry_lock);
	*out = rt;
	return 0;
}

/* A worker's counters as an array (relaxed loads: any thread). */
static void counters(weft_worker_t *w, uint64_t out[WEFT_NSTATS])
{
	_Atomic uint64_t *c = (_Atomic uint64_t *)&w->stats;
	for (int k = 0; k < WEFT_NSTATS; k++)
		out[k] = atomic_load_explicit(&c[k], memory_order_relaxed);
}

int weft_runtime_stats(weft_runtime_t *rt, uint64_t sum[WEFT_NSTATS])
{
	int n = 0;
	weft_mutex_lock(&rt->lock);
	memcpy(sum, rt->retired, WEFT_NSTATS * sizeof *sum);
	for (uint32_t i = 0; i < worker_slots(rt); i++) {
		weft_worker_t *w = worker_at(rt, i);
		if (!w)
			continue;
		n++;
		uint64_t c[WEFT_NSTATS];
		counters(w, c);
		for (int k = 0; k < WEFT_NSTATS; k++)
			sum[k] += c[k] - w->_base[k];
	}
	weft_mutex_unlock(&rt->lock);
	return n;
}

static int member_taken(const weft_runtime_t *rt, int i)
{
	return (rt->members[(i - 1) / 64] >> ((i - 1) % 64)) & 1;
}

static void member_set(weft_runtime_t *rt, int i, int on)
{
	uint64_t bit = (uint64_t)1 << ((i - 1) % 64);
	if (on)
		rt->members[(i - 1) / 64] |= bit;
	else
		rt->members[(i - 1) / 64] &= ~bit;
}

int weft_runtime_claim(weft_runtime_t *rt, int index, int count)
{
	if (count < 1 || count > WEFT_MAX_WORKERS || index < 1 || index > count)
		return -ERANGE;
	int rc = 0;
	weft_mutex_lock(&rt->lock);
	if (rt->ndeclared && rt->declared != count)
		rc = -EINVAL;
	else if (member_taken(rt, index))
		rc = -EEXIST;
	else {
		member_set(rt, index, 1);
		rt->declared = count;
		rt->ndeclared++;
	}
	weft_mutex_unlock(&rt->lock);
	return rc;
}

int weft_runtime_claim_any(weft_runtime_t *rt)
{
	int rc = -EUSERS;
	weft_mutex_lock(&rt->lock);
	for (int i = rt->declared + 1; i <= WEFT_MAX_WORKERS; i++) {
		if (!member_taken(rt, i)) {
			member_set(rt, i, 1);
			rc = i;
			break;
		}
	}
	weft_mutex_unlock(&rt->lock);
	return rc;
}

void weft_runtime_release(weft_runtime_t *rt, int index, int declared)
{
	if (index < 1 || index > WEFT_MAX_WORKERS)
		return;
	weft_mutex_lock(&rt->lock);
	member_set(rt, index, 0);
	if (declared && --rt->ndeclared == 0)
		rt->declared = 0;
	weft_mutex_unlock(&rt->lock);
}

int weft_runtime_members(weft_runtime_t *rt)
{
	weft_mutex_lock(&rt->lock);
	int n = rt->declared;
	for (int i = WEFT_MAX_WORKERS; i > n; i--) {
		if (member_taken(rt, i)) {
			n = i;
			break;
		}
	}
	weft_mutex_unlock(&rt->lock);
	return n;
}

int weft_runtime_count(void)
{
	int n = 0;
	weft_mutex_lock(&registry_lock);
	for (weft_runtime_t *rt = registry; rt; rt = rt->_next)
		n++;
	weft_mutex_unlock(&registry_lock);
	return n;
}

weft_runtime_t *weft_runtime_ref(weft_runtime_t *rt)
{
	weft_mutex_lock(&rt->lock);
	rt->refs++;
	weft_mutex_unlock(&rt->lock);
	return rt;
}

int weft_runtime_join(int pollfd, weft_runtime_t **out)
{
	weft_mutex_lock(&registry_lock);
	weft_runtime_t *rt = registry;
	while (rt && weft_poller_fd(rt->poller) != pollfd)
		rt = rt->_next;
	if (rt) {
		weft_mutex_lock(&rt->lock);
		rt->refs++;
		weft_mutex_unlock(&rt->lock);
	}
	weft_mutex_unlock(&registry_lock);
	if (!rt)
		return -ENOENT;
	*out = rt;
	return 0;
}

void weft_runtime_free(weft_runtime_t *rt)
{
	if (!rt)
		return;
	weft_mutex_lock(&registry_lock);
	weft_mutex_lock(&rt->lock);
	int last = --rt->refs == 0;
	weft_mutex_unlock(&rt->lock);
	if (last) {
		weft_runtime_t **p = &registry;
		while (*p && *p != rt)
			p = &(*p)->_next;
		if (*p)
			*p = rt->_next;
	}
	weft_mutex_unlock(&registry_lock);
	if (!last)
		return;
	weft__chan_release_named(&rt->channels);
	while (rt->graveyard) {
		weft_worker_t *w = rt->graveyard;
		rt->graveyard = w->_grave;
		bury(w);
	}
	weft_fdtab_free(rt->fds);
	weft_poller_free(rt->poller);
	weft_mutex_destroy(&rt->lock);
	weft_mutex_destroy(&rt->llock);
	weft_free(rt);
}

weft_poller_t *weft_runtime_poller(weft_runtime_t *rt)
{
	return rt->poller;
}

weft_fdtab_t *weft_runtime_fdtab(weft_runtime_t *rt)
{
	return rt->fds;
}

/* Register the shared poller in w's poller: level-triggered, so that
 * every worker sees it readable while anything in it is pending, and
 * whichever harvests first takes the (one-shot) events. */
static int join_shared(weft_worker_t *w, weft_runtime_t *rt)
{
	return weft_poller_add(w->poller, weft_poller_fd(rt->poller), WEFT_POLL_IN, SHARED_TOKEN);
}

static int attach(weft_worker_t *w, weft_runtime_t *rt)
{
	int err = join_shared(w, rt);
	if (err < 0)
		return err;
	weft_mutex_lock(&rt->lock);
	uint32_t id = 0;
	while (id < WEFT_MAX_WORKERS && worker_at(rt, id))
		id++;
	if (id < WEFT_MAX_WORKERS) {
		w->rt = rt;
		w->id = id;
		counters(w, w->_base); /* what it did elsewhere counts there */
		atomic_store_explicit(&rt->workers[id], w, memory_order_release);
		if (id >= worker_slots(rt))
			atomic_store_explicit(&rt->nslots, id + 1, memory_order_release);
		atomic_fetch_add_explicit(&rt->nworkers, 1, memory_order_seq_cst);
	}
	weft_mutex_unlock(&rt->lock);
	if (id == WEFT_MAX_WORKERS) {
		weft_poller_delete(w->poller, weft_poller_fd(rt->poller));
		return -EUSERS;
	}
	return 0;
}

static void detach(weft_worker_t *w)
{
	weft_runtime_t *rt = w->rt;
	uint64_t c[WEFT_NSTATS];
	counters(w, c); /* the owner calls: they are final */
	weft_mutex_lock(&rt->lock);
	for (int k = 0; k < WEFT_NSTATS; k++)
		rt->retired[k] += c[k] - w->_base[k];
	atomic_store_explicit(&rt->workers[w->id], NULL, memory_order_release);
	atomic_fetch_sub_explicit(&rt->nworkers, 1, memory_order_seq_cst);
	weft_mutex_unlock(&rt->lock);
	weft_poller_delete(w->poller, weft_poller_fd(rt->poller));
}

int weft_worker_new(weft_runtime_t *rt, weft_worker_t **out)
{
	weft_worker_t *w = weft_calloc(1, sizeof *w);
	if (!w)
		return WEFT_ENOMEM;
	int err = weft_inbox_init(&w->inbox);
	if (err < 0) {
		weft_free(w);
		return err;
	}
	err = weft_poller_new(-1, &w->poller);
	if (err < 0) {
		weft_inbox_destroy(&w->inbox);
		weft_free(w);
		return err;
	}
	weft_runq_init(&w->runq);
	weft_jobq_init(&w->jobs);
	weft_wheel_init(&w->wheel, weft_clock_ns() / NS_PER_TICK);
	weft_wheel_init(&w->cbwheel, weft_clock_ns() / NS_PER_TICK);
	w->_cbdue_tail = &w->_cbdue;
	w->_free = UINT32_MAX;
	atomic_init(&w->_park, PARK_EMPTY);
	atomic_init(&w->_lost_posts, 0);
	err = attach(w, rt);
	if (err < 0) {
		weft_jobq_destroy(&w->jobs);
		weft_poller_free(w->poller);
		weft_inbox_destroy(&w->inbox);
		weft_free(w);
		return err;
	}
	*out = w;
	return 0;
}

int weft_worker_move(weft_worker_t *w, weft_runtime_t *rt)
{
	if (rt == w->rt)
		return 0;
	/* Sockets are registered in w's poller under the old runtime's fd
	 * table, and queued jobs are counted in the old runtime's total: a
	 * worker with either cannot move. */
	if (w->nfds || atomic_load_explicit(&w->jobs.len, memory_order_acquire) != 0)
		return -EBUSY;
	weft_runtime_t *old = w->rt;
	detach(w);
	int err = attach(w, rt);
	if (err < 0) {
		attach(w, old);
		return err;
	}
	return 0;
}

/* The memory a worker keeps after it is freed: other workers may still
 * hold its address (a channel's or listener's waiter list, a message
 * being posted, a scan for a queue to steal from), so its inbox, parking
 * fields and job queue stay valid until the runtime goes; posting to a
 * dead worker fails with WEFT_ECLOSED. */
static void bury(weft_worker_t *w)
{
	weft_msg_t *m;
	size_t n = weft_inbox_drain(&w->inbox, &m);
	for (size_t i = 0; i < n; i++)
		if (m[i].kind == WEFT_MSG_WAKE && m[i].ptr && w->drop_data)
			w->drop_data(m[i].ptr);
	weft_jobq_destroy(&w->jobs);
	weft_inbox_destroy(&w->inbox);
	weft_free(w);
}

/* Unpark one idle worker other than `self` (NULL: any), so that it takes
 * jobs.  No lock: workers[] entries stay valid memory (graveyard). */
static void wake_idle(weft_runtime_t *rt, const weft_worker_t *self)
{
	uint32_t n = worker_slots(rt);
	for (uint32_t i = 0; i < n; i++) {
		weft_worker_t *o = worker_at(rt, i);
		if (o && o != self && weft__worker_idle(o)) {
			weft_worker_unpark(o);
			return;
		}
	}
}

size_t weft_worker_hand_jobs(weft_worker_t *w)
{
	weft_runtime_t *rt = w->rt;
	size_t moved = 0;
	/* Under the runtime lock, so that the worker chosen cannot detach
	 * before the jobs are on its queue (its own free then hands them on
	 * in turn). */
	weft_mutex_lock(&rt->lock);
	weft_worker_t *to = NULL;
	for (uint32_t i = 0; i < worker_slots(rt) && !to; i++) {
		weft_worker_t *o = worker_at(rt, i);
		if (o && o != w)
			to = o;
	}
	if (to) {
		weft_job_t *j;
		while ((j = weft_jobq_pop(&w->jobs)) != NULL) {
			weft_jobq_push(&to->jobs, j);
			moved++;
		}
	}
	weft_mutex_unlock(&rt->lock);
	if (moved)
		weft_worker_unpark(to);
	return moved;
}

weft_job_t *weft_worker_pop_job(weft_worker_t *w)
{
	weft_job_t *j = weft_jobq_pop(&w->jobs);
	if (j)
		atomic_fetch_sub_explicit(&w->rt->jobs, 1, memory_order_seq_cst);
	return j;
}

void weft_worker_free(weft_worker_t *w)
{
	if (!w)
		return;
	weft_runtime_t *rt = w->rt;
	weft_worker_hand_jobs(w);
	detach(w);
	/* From now on a post to w fails, so whoever hands w a wake-up (a
	 * channel, a listener) learns that its waiter is gone and serves the
	 * next one instead of losing the wake-up. */
	weft_inbox_close(&w->inbox);
	/* Jobs the binding left (there was no other worker to take them):
	 * out of the count, or every other worker would poll for them
	 * forever.  Their memory is the binding's; it should have failed
	 * them with weft_worker_pop_job first. */
	size_t left = 0;
	while (weft_jobq_pop(&w->jobs))
		left++;
	if (left)
		atomic_fetch_sub_explicit(&rt->jobs, (long)left, memory_order_seq_cst);
	weft_runq_destroy(&w->runq);
	for (uint32_t i = 0; i < w->_capcos >> WEFT_CO_CHUNK_SHIFT; i++)
		weft_free(w->_chunks[i]);
	weft_free(w->_chunks);
	w->_chunks = NULL;
	weft_poller_free(w->poller);
	w->poller = NULL;
	weft_mutex_lock(&rt->lock);
	w->_grave = rt->graveyard;
	rt->graveyard = w;
	weft_mutex_unlock(&rt->lock);
}

/* Make room for slot `cap - 1`: a new chunk of records.  The records never
 * move, so armed timers (linked by address) stay put. */
static int grow_cos(weft_worker_t *w)
{
	uint32_t c = w->_capcos >> WEFT_CO_CHUNK_SHIFT;
	if (c == w->_nchunks) {
		uint32_t n = w->_nchunks ? w->_nchunks * 2 : 4;
		weft_co_t **v = weft_realloc(w->_chunks, (size_t)n * sizeof *v);
		if (!v)
			return WEFT_ENOMEM;
		w->_chunks = v;
		w->_nchunks = n;
	}
	weft_co_t *chunk = weft_calloc(WEFT_CO_CHUNK, sizeof *chunk);
	if (!chunk)
		return WEFT_ENOMEM;
	for (uint32_t i = 0; i < WEFT_CO_CHUNK; i++) {
		chunk[i]._slot = w->_capcos + i;
		weft_timer_init(&chunk[i]._timer);
	}
	w->_chunks[c] = chunk;
	w->_capcos += WEFT_CO_CHUNK;
	return 0;
}

int64_t weft_worker_co_new(weft_worker_t *w)
{
	uint32_t slot;
	if (w->_free != UINT32_MAX) {
		slot = w->_free;
		w->_free = weft_worker_co(w, slot)->_next_free;
	} else {
		if (w->_ncos == w->_capcos) {
			/* A slot has at most one wake-up queued (_pending), so a
			 * run queue with room for every slot never fails a push. */
			if ((uint64_t)w->_capcos + WEFT_CO_CHUNK > WEFT_WAITER_MAX ||
			    weft_runq_reserve(&w->runq, w->_capcos + WEFT_CO_CHUNK) < 0 ||
			    grow_cos(w) < 0)
				return WEFT_ENOMEM;
		}
		slot = w->_ncos++;
		weft_worker_co(w, slot)->seq = 0;
	}
	weft_co_t *co = weft_worker_co(w, slot);
	weft_timer_init(&co->_timer);
	co->_fd = NULL;
	co->_data = NULL;
	co->state = WEFT_CO_RUNNING;
	co->_alive = 0;
	co->_pending = 0;
	co->seq++; /* a wake-up for the slot's previous owner is stale */
	return slot;
}

static void leave_wait(weft_worker_t *w, weft_co_t *co)
{
	/* Leaving an fd wait any other way than through its wake-up (the slot
	 * is freed or suspended) must take the slot off the wait word, or the
	 * fd's next event would wake whatever the slot does next.  After a
	 * wake-up through the word, _fd is NULL and nothing is withdrawn: the
	 * record may already belong to someone else. */
	if (co->state == WEFT_CO_WAIT_IO && co->_fd)
		weft_fd_cancel(co->_fd, co->_dir, co->_fdgen, co->_slot);
	weft_wheel_cancel(&w->wheel, &co->_timer);
	if (co->_alive) {
		co->_alive = 0;
		w->nalive--;
	}
	co->_pending = 0;
	co->_fd = NULL;
	co->state = WEFT_CO_RUNNING;
}

void weft_worker_co_free(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = weft_worker_co(w, slot);
	leave_wait(w, co);
	co->state = WEFT_CO_FREE;
	co->seq++;
	co->_next_free = w->_free;
	w->_free = slot;
}

weft_fd_t *weft_worker_open_fd(weft_worker_t *w, int fd, int *err)
{
	weft_fd_t *r = weft_fdtab_open(w->rt->fds, fd, w->id);
	if (!r) {
		*err = WEFT_ENOMEM;
		return NULL;
	}
	/* One registration for the socket's whole life, edge-triggered in both
	 * directions, in this worker's poller: an edge is remembered in the
	 * wait word until a coroutine consumes it (DESIGN §3).  A poller
	 * without edges gets a one-shot registration, armed for what
	 * coroutines wait for (rearm). */
	unsigned how = weft_poller_caps() & WEFT_POLLER_EDGES
			       ? WEFT_POLL_IN | WEFT_POLL_OUT | WEFT_POLL_EDGE
			       : WEFT_POLL_ONESHOT; /* hang-ups and errors only */
	r->_armed = 0;
	int rc = weft_poller_add(w->poller, fd, how, weft_fd_token(r));
	if (rc < 0) {
		uint64_t woken[2];
		weft_fd_shut(r, woken);
		weft_fdtab_release(w->rt->fds, r);
		*err = rc;
		return NULL;
	}
	w->nfds++;
	return r;
}

int weft_worker_share_fd(weft_worker_t *w, weft_fd_t *r)
{
	int fd = atomic_load_explicit(&r->fd, memory_order_acquire);
	/* Disarmed (one-shot with no interest) until its user arms it. */
	int rc = weft_poller_add(w->rt->poller, fd, WEFT_POLL_ONESHOT, weft_fd_token(r));
	if (rc < 0)
		return rc;
	weft_poller_delete(w->poller, fd);
	atomic_store_explicit(&r->owner, WEFT_OWNER_SHARED, memory_order_release);
	w->nfds--;
	return 0;
}

static int is_waiting(const weft_co_t *co)
{
	return co->state >= WEFT_CO_WAIT_IO;
}

/* Whether a wake-up with `code` may end co's current wait or suspension
 * (the seq is checked apart). */
static int wakeable(const weft_co_t *co, int32_t code)
{
	return is_waiting(co) || (co->state == WEFT_CO_SUSPENDED && code == WEFT_WAKE_RESUME);
}

static void queue(weft_worker_t *w, weft_co_t *co, int32_t code)
{
	weft_wake_t wk = {co->_slot, co->seq, code};
	/* Cannot fail: the ring has room for one wake-up per slot (see
	 * weft_worker_co_new); counted, never silent, should that change. */
	if (weft_runq_push(&w->runq, wk) < 0) {
		WEFT_STAT_ADD(w, lost, 1);
		return;
	}
	co->_pending = 1;
	WEFT_STAT_ADD(w, wakes, 1);
}

int weft_worker_wake(weft_worker_t *w, uint32_t slot, uint32_t seq, int32_t code)
{
	if (slot >= w->_ncos)
		return 0;
	weft_co_t *co = weft_worker_co(w, slot);
	if (co->seq != seq || !wakeable(co, code) || co->_pending)
		return 0;
	/* An fd wait must leave the wait word too, as on a timeout: a slot
	 * left there makes the next wait on that direction -EBUSY, and the
	 * next event wake the slot in whatever wait it is in by then.  If an
	 * event or close took the word first, its wake-up is on its way. */
	if (co->state == WEFT_CO_WAIT_IO && co->_fd &&
	    !weft_fd_cancel(co->_fd, co->_dir, co->_fdgen, slot))
		return 0;
	co->_fd = NULL;
	queue(w, co, code);
	return 1;
}

/* An fd wait of `slot` ended by an event or a close: the wait word's CAS
 * proved the coroutine is still in that wait, so its current seq is the
 * right one.  The wait no longer names the slot: _fd is cleared so that
 * nothing withdraws it again (the record may be reused by then). */
static void io_done(weft_worker_t *w, uint32_t slot, int32_t code)
{
	/* No seq is needed: once the word went WAIT -> EMPTY the slot cannot
	 * leave the wait (its deadline's cancel fails and waits for this), so
	 * it cannot be freed or reused before this wake-up is taken. */
	weft_co_t *co = weft_worker_co(w, slot);
	if (co->state == WEFT_CO_WAIT_IO && !co->_pending) {
		co->_fd = NULL;
		queue(w, co, code);
	}
}

/* A waiter taken from a wait word of one of w's own records.  Records
 * are registered in their owner's poller and shut by their owner, so the
 * waiter is always w's. */
static void deliver(weft_worker_t *w, uint64_t waiter1, int32_t code)
{
	if (waiter1 && waiter1 - 1 < w->_ncos)
		io_done(w, (uint32_t)(waiter1 - 1), code);
}

void weft_worker_close_fd(weft_worker_t *w, weft_fd_t *r)
{
	uint64_t woken[2];
	int fd = atomic_load_explicit(&r->fd, memory_order_acquire);
	int shared = atomic_load_explicit(&r->owner, memory_order_acquire) == WEFT_OWNER_SHARED;
	weft_fd_shut(r, woken);
	if (!shared) {
		deliver(w, woken[WEFT_READ], WEFT_ECLOSED);
		deliver(w, woken[WEFT_WRITE], WEFT_ECLOSED);
	}
	/* Delete before close: the kernel poller tracks the open file
	 * description, so a dup'd descriptor would otherwise keep firing for
	 * a dead record. */
	weft_poller_delete(shared ? w->rt->poller : w->poller, fd);
	weft_sock_close(fd);
	weft_fdtab_release(w->rt->fds, r);
	if (!shared)
		w->nfds--;
	weft__listener_fd_closed(w->rt);
}

static uint64_t to_tick(uint64_t ns)
{
	if (ns == UINT64_MAX)
		return WEFT_TICK_NEVER;
	/* Round up: a deadline fires at or after its time, never before. */
	return ns / NS_PER_TICK + (ns % NS_PER_TICK != 0);
}

static void begin_wait(weft_worker_t *w, weft_co_t *co, int state, uint64_t deadline_ns, int alive)
{
	co->seq++;
	co->state = (uint8_t)state;
	co->_pending = 0;
	if (alive) {
		co->_alive = 1;
		w->nalive++;
	}
	if (deadline_ns != UINT64_MAX)
		weft_wheel_add(&w->wheel, &co->_timer, to_tick(deadline_ns));
}

/* The interest a one-shot registration needs: the directions coroutines
 * wait in. */
static unsigned waited(const weft_fd_t *r)
{
	unsigned in = 0;
	for (int dir = WEFT_READ; dir <= WEFT_WRITE; dir++) {
		uint64_t word = atomic_load_explicit(&((weft_fd_t *)r)->_wait[dir],
						     memory_order_relaxed);
		if ((uint32_t)word >= WEFT_WAIT_BASE)
			in |= dir == WEFT_READ ? WEFT_POLL_IN : WEFT_POLL_OUT;
	}
	return in;
}

/* Pollers without edges (IOCP): the one-shot registration of one of w's
 * records fired (fired = 1, it is disarmed now) or a coroutine began to
 * wait; arm it again for every direction waited in that it is not armed
 * for.  A fresh one-shot reports the current state, so readiness that
 * came before the arm is not lost.  0 or -errno. */
static int rearm(weft_worker_t *w, weft_fd_t *r, int fired)
{
	if (fired)
		r->_armed = 0;
	unsigned in = waited(r);
	if ((in & ~r->_armed) == 0)
		return 0;
	in |= r->_armed;
	int fd = atomic_load_explicit(&r->fd, memory_order_relaxed);
	int rc = weft_poller_modify(w->poller, fd, in | WEFT_POLL_ONESHOT, weft_fd_token(r));
	if (rc == 0)
		r->_armed = (uint8_t)in;
	return rc;
}

int weft_worker_wait_io(weft_worker_t *w, uint32_t slot, weft_fd_t *r, int dir,
			uint64_t deadline_ns)
{
	weft_co_t *co = weft_worker_co(w, slot);
	/* The wait word must name this wait before an event can see it, so
	 * state and seq are set first and undone if the word says otherwise. */
	begin_wait(w, co, WEFT_CO_WAIT_IO, deadline_ns, 1);
	co->_fd = r;
	co->_fdgen = weft_fd_gen(r);
	co->_dir = (uint8_t)dir;
	int rc = weft_fd_wait(r, dir, slot);
	if (rc == 0 && !(weft_poller_caps() & WEFT_POLLER_EDGES) &&
	    (rc = rearm(w, r, 0)) < 0 && !weft_fd_cancel(r, dir, co->_fdgen, slot))
		rc = 0; /* an event or close took the wait first: its wake-up comes */
	if (rc != 0) {
		co->_fd = NULL; /* nothing to withdraw */
		leave_wait(w, co);
	}
	return rc;
}

int weft_worker_wait_time(weft_worker_t *w, uint32_t slot, uint64_t deadline_ns)
{
	begin_wait(w, weft_worker_co(w, slot), WEFT_CO_WAIT_TIME, deadline_ns, deadline_ns != UINT64_MAX);
	return 0;
}

uint32_t weft_worker_wait_ext(weft_worker_t *w, uint32_t slot)
{
	return weft_worker_wait_ext_until(w, slot, UINT64_MAX);
}

uint32_t weft_worker_wait_ext_until(weft_worker_t *w, uint32_t slot, uint64_t deadline_ns)
{
	weft_co_t *co = weft_worker_co(w, slot);
	begin_wait(w, co, WEFT_CO_WAIT_EXT, deadline_ns, 1);
	return co->seq;
}

void weft_worker_timer_arm(weft_worker_t *w, weft_timer_t *t, uint64_t deadline_ns)
{
	weft_wheel_add(&w->cbwheel, t, to_tick(deadline_ns));
	w->nalive++;
}

int weft_worker_timer_disarm(weft_worker_t *w, weft_timer_t *t)
{
	if (!weft_timer_armed(t))
		return 0;
	weft_wheel_cancel(&w->cbwheel, t);
	w->nalive--;
	return 1;
}

weft_timer_t *weft_worker_timer_next(weft_worker_t *w)
{
	weft_timer_t *t = w->_cbdue;
	if (!t)
		return NULL;
	if (!(w->_cbdue = t->_next))
		w->_cbdue_tail = &w->_cbdue;
	t->_next = NULL;
	w->nalive--;
	return t;
}

uint32_t weft_worker_yield(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = weft_worker_co(w, slot);
	begin_wait(w, co, WEFT_CO_WAIT_TIME, UINT64_MAX, 0);
	queue(w, co, 0);
	return co->seq;
}

void weft_worker_spawn(weft_worker_t *w, weft_job_t *j)
{
	weft_runtime_t *rt = w->rt;
	weft_jobq_push(&w->jobs, j);
	/* Publishing (DESIGN §5), a Dekker handshake with a worker about to
	 * park: we count the job, then look for a parked worker; it swaps
	 * its parking state, then looks at the count (all seq_cst).  Either
	 * it sees the job, or we see it parked and wake it.  A spinning
	 * worker sees the count by itself.  This worker runs the job
	 * otherwise, on its next step. */
	atomic_fetch_add_explicit(&rt->jobs, 1, memory_order_seq_cst);
	if (atomic_load_explicit(&rt->nspinning, memory_order_seq_cst) == 0)
		wake_idle(rt, w);
}

weft_job_t *weft_worker_next_job(weft_worker_t *w)
{
	weft_runtime_t *rt = w->rt;
	if (atomic_load_explicit(&rt->jobs, memory_order_acquire) == 0)
		return NULL;
	weft_job_t *j = weft_jobq_pop(&w->jobs);
	if (!j) {
		/* Steal half of the longest queue.  No runtime lock: a worker
		 * that detaches meanwhile keeps its queue (emptied, locked by
		 * its own mutex) until the runtime goes. */
		weft_worker_t *victim = NULL;
		size_t most = 0;
		uint32_t n = worker_slots(rt);
		for (uint32_t i = 0; i < n; i++) {
			weft_worker_t *o = worker_at(rt, i);
			size_t len = o ? atomic_load_explicit(&o->jobs.len, memory_order_relaxed) : 0;
			if (o && o != w && len > most) {
				most = len;
				victim = o;
			}
		}
		if (victim)
			WEFT_STAT_ADD(w, jobs_stolen, weft_jobq_steal(&victim->jobs, &w->jobs));
		j = weft_jobq_pop(&w->jobs);
	}
	if (j) {
		atomic_fetch_sub_explicit(&rt->jobs, 1, memory_order_seq_cst);
		WEFT_STAT_ADD(w, jobs_run, 1);
	}
	return j;
}

void *weft_worker_take_data(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = weft_worker_co(w, slot);
	void *p = co->_data;
	co->_data = NULL;
	return p;
}

void weft_worker_wait_abort(weft_worker_t *w, uint32_t slot)
{
	leave_wait(w, weft_worker_co(w, slot));
}

void weft_worker_suspend(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = weft_worker_co(w, slot);
	leave_wait(w, co);
	co->seq++;
	co->state = WEFT_CO_SUSPENDED;
}

void weft_worker_keepalive(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = weft_worker_co(w, slot);
	if (co->state == WEFT_CO_SUSPENDED && !co->_alive) {
		co->_alive = 1;
		w->nalive++;
	}
}

void weft_worker_run(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = weft_worker_co(w, slot);
	if (co->_alive) {
		co->_alive = 0;
		w->nalive--;
	}
	co->state = WEFT_CO_RUNNING;
}

void weft_worker_unpark(weft_worker_t *w)
{
	/* seq_cst: the swap is one side of the parking handshake (see
	 * park_begin); the worker's own swap is the other. */
	int prev = atomic_exchange_explicit(&w->_park, PARK_NOTIFIED, memory_order_seq_cst);
	if (prev == PARK_POLLER)
		weft_poller_wake(w->poller);
}

int weft_worker_post(weft_worker_t *w, const weft_msg_t *m)
{
	int rc = weft_inbox_push(&w->inbox, m);
	if (rc == 0) {
		weft_worker_unpark(w);
	} else if (rc == WEFT_ENOMEM) {
		/* Counted where the owner reports it (lost_wakes). */
		atomic_fetch_add_explicit(&w->_lost_posts, 1, memory_order_relaxed);
	}
	return rc;
}

/* Whether an idle worker may spin before it blocks (Go's rule): only if
 * it was just woken through its inbox (a conversation with another
 * worker is likely to go on within microseconds), there is a CPU for it
 * beside the workers already running, and fewer than half of the running
 * workers are spinning already.  Spinning without a message to wait for
 * only burns CPU: a worker's I/O arrives through its poller. */
static int may_spin(weft_worker_t *w)
{
	weft_runtime_t *rt = w->rt;
	if (!w->_spin_ok)
		return 0;
	int running = atomic_load_explicit(&rt->nworkers, memory_order_relaxed) -
		      atomic_load_explicit(&rt->nparked, memory_order_relaxed);
	int spinning = atomic_load_explicit(&rt->nspinning, memory_order_relaxed);
	return running <= rt->ncpu && 2 * spinning < running;
}

static int has_work(weft_worker_t *w)
{
	return weft_inbox_nonempty(&w->inbox) ||
	       atomic_load_explicit(&w->rt->jobs, memory_order_seq_cst) != 0 ||
	       atomic_load_explicit(&w->rt->exiting, memory_order_seq_cst) != 0;
}

/* Spin up to SPIN_NS for a message or a job.  Returns 1 if one came. */
static int spin(weft_worker_t *w)
{
	weft_runtime_t *rt = w->rt;
	atomic_fetch_add_explicit(&rt->nspinning, 1, memory_order_seq_cst);
	WEFT_STAT_ADD(w, spins, 1);
	uint64_t until = weft_clock_ns() + SPIN_NS;
	int found = 0;
	for (int k = 0; !(found = has_work(w)); k++) {
		cpu_relax();
		if ((k & 15) == 15 && weft_clock_ns() >= until)
			break;
	}
	atomic_fetch_sub_explicit(&rt->nspinning, 1, memory_order_seq_cst);
	/* A job published while we spun may have skipped waking anyone
	 * (a spinner was counted): look again now that we are not. */
	return found || has_work(w);
}

/* Publish that w is about to block in its poller.  Returns 1 if it must
 * not block after all (notified, messages or jobs are waiting).  The
 * swap and the checks after it are seq_cst: against a poster (push, then
 * swap the same word) any order works; against a spawner (count the job,
 * then look at our state) it is Dekker's handshake. */
static int park_begin(weft_worker_t *w)
{
	atomic_fetch_add_explicit(&w->rt->nparked, 1, memory_order_seq_cst);
	if (atomic_exchange_explicit(&w->_park, PARK_POLLER, memory_order_seq_cst) ==
		    PARK_NOTIFIED ||
	    has_work(w)) {
		atomic_store_explicit(&w->_park, PARK_EMPTY, memory_order_seq_cst);
		atomic_fetch_sub_explicit(&w->rt->nparked, 1, memory_order_seq_cst);
		return 1;
	}
	return 0;
}

/* Back from a blocking wait.  Returns 1 if another thread woke us. */
static int park_end(weft_worker_t *w)
{
	int prev = atomic_exchange_explicit(&w->_park, PARK_EMPTY, memory_order_seq_cst);
	atomic_fetch_sub_explicit(&w->rt->nparked, 1, memory_order_seq_cst);
	return prev == PARK_NOTIFIED;
}

static void on_timer(weft_worker_t *w, weft_co_t *co)
{
	WEFT_STAT_ADD(w, timers, 1);
	if (co->state == WEFT_CO_WAIT_IO) {
		/* Withdraw from the wait word; if an event won the race, its
		 * wake-up is already queued and will be taken. */
		if (co->_fd && weft_fd_cancel(co->_fd, co->_dir, co->_fdgen, co->_slot)) {
			co->_fd = NULL;
			queue(w, co, WEFT_ETIMEOUT);
		}
	} else if (is_waiting(co) && !co->_pending) {
		queue(w, co, WEFT_ETIMEOUT);
	}
}

/* The shared poller is readable: take its events without blocking (the
 * listeners are one-shot, so each event goes to one harvester). */
static void harvest_shared(weft_worker_t *w, int idle)
{
	weft_poll_event_t ev[16];
	int n = weft_poller_wait(w->rt->poller, ev, 16, 0);
	for (int i = 0; i < n; i++) {
		weft_fd_t *r = weft_fdtab_lookup(w->rt->fds, ev[i].token);
		if (r && atomic_load_explicit(&r->udata, memory_order_acquire))
			weft__listener_event(w, r, idle);
		else
			WEFT_STAT_ADD(w, stale, 1);
	}
}

static void on_event(weft_worker_t *w, const weft_poll_event_t *ev)
{
	weft_fd_t *r = weft_fdtab_lookup(w->rt->fds, ev->token);
	/* A record of another owner cannot be in our poller: it was ours,
	 * closed, and reopened elsewhere (the lookup then fails on the
	 * generation); the check costs nothing and keeps it that way. */
	if (!r || atomic_load_explicit(&r->owner, memory_order_relaxed) != w->id) {
		WEFT_STAT_ADD(w, stale, 1);
		return;
	}
	uint32_t gen = (uint32_t)(ev->token >> 32);
	if (ev->events & (WEFT_POLL_HUP | WEFT_POLL_ERR | WEFT_POLL_PRI))
		weft_fd_sticky(r);
	/* Hang-ups and errors wake both directions: the retried call reports
	 * the condition (0 bytes, or the pending error). */
	if (ev->events & (WEFT_POLL_IN | WEFT_POLL_HUP | WEFT_POLL_ERR | WEFT_POLL_PRI))
		deliver(w, weft_fd_ready(r, WEFT_READ, gen), 0);
	if (ev->events & (WEFT_POLL_OUT | WEFT_POLL_HUP | WEFT_POLL_ERR))
		deliver(w, weft_fd_ready(r, WEFT_WRITE, gen), 0);
	/* A failed re-arm leaves its waiters to their deadlines; the next
	 * wait tries again. */
	if (!(weft_poller_caps() & WEFT_POLLER_EDGES))
		rearm(w, r, 1);
}

static void on_message(weft_worker_t *w, const weft_msg_t *m)
{
	WEFT_STAT_ADD(w, inbox, 1);
	switch (m->kind) {
	case WEFT_MSG_IO:
		if (m->slot < w->_ncos)
			io_done(w, m->slot, m->code);
		break;
	case WEFT_MSG_WAKE:
	case WEFT_MSG_WAKE_QUIET:
		/* A wake-up may carry data for the woken coroutine (values from
		 * another worker); if the wait is over, the data is dropped. */
		if (weft_worker_wake(w, m->slot, m->seq, m->code)) {
			if (m->ptr)
				weft_worker_co(w, m->slot)->_data = m->ptr;
		} else if (m->ptr && w->drop_data) {
			w->drop_data(m->ptr);
		}
		break;
	default:
		break;
	}
}

int weft_worker_poll(weft_worker_t *w, uint64_t timeout_ns)
{
	weft_runtime_t *rt = w->rt;
	size_t before = weft_runq_len(&w->runq);
	uint64_t queued0 = WEFT_STAT(w, wakes);
	/* A notification that came while we ran is spent: whatever it was
	 * for (a message, a job, exiting) is checked below, and again after
	 * park_begin's swap.  Left set, it would turn our next sleep into a
	 * wasted zero-timeout poll.  A CAS, not a store: reading the
	 * notifier's swap acquires what it published before it. */
	if (atomic_load_explicit(&w->_park, memory_order_relaxed) == PARK_NOTIFIED) {
		int notified = PARK_NOTIFIED;
		atomic_compare_exchange_strong_explicit(&w->_park, &notified, PARK_EMPTY,
							memory_order_seq_cst, memory_order_relaxed);
	}
	uint64_t now = weft_clock_ns();
	/* Every poll, busy or idle: re-arms listeners whose back-off is over. */
	uint64_t retry = weft__listener_retry(rt, now);
	int timeout_ms = 0;
	/* Jobs waiting anywhere: don't sleep, the binding takes or steals
	 * them after this poll. */
	if (before == 0 && !w->_cbdue && !has_work(w)) {
		uint64_t deadline = timeout_ns == UINT64_MAX || timeout_ns > UINT64_MAX - now
					    ? UINT64_MAX
					    : now + timeout_ns;
		uint64_t next = weft_wheel_next(&w->wheel);
		uint64_t cbnext = weft_wheel_next(&w->cbwheel);
		if (cbnext < next)
			next = cbnext;
		if (next != WEFT_TICK_NEVER && next * NS_PER_TICK < deadline)
			deadline = next * NS_PER_TICK;
		if (retry < deadline)
			deadline = retry;
		if (deadline == UINT64_MAX) {
			timeout_ms = -1;
		} else if (deadline > now) {
			uint64_t ms = (deadline - now + NS_PER_TICK - 1) / NS_PER_TICK;
			timeout_ms = ms > INT_MAX ? INT_MAX : (int)ms;
		}
	}

	/* Idle: another worker may be about to answer (a channel reply, a
	 * wake-up); a short spin saves a sleep and a wake-up on both sides. */
	int idle = timeout_ms != 0; /* nothing to run: a listener serves us first */
	if (timeout_ms != 0 && may_spin(w) && spin(w))
		timeout_ms = 0;
	int parked = timeout_ms != 0;
	if (parked && park_begin(w)) {
		parked = 0;
		timeout_ms = 0;
	}
	weft_poll_event_t ev[HARVEST_MAX];
	WEFT_STAT_ADD(w, polls, 1);
	int n = weft_poller_wait(w->poller, ev, HARVEST_MAX, timeout_ms);
	if (parked) {
		WEFT_STAT_ADD(w, parks, 1);
		if (park_end(w))
			WEFT_STAT_ADD(w, unparks, 1);
	}
	if (n < 0)
		return n;
	WEFT_STAT_ADD(w, events, (uint64_t)n);
	for (int i = 0; i < n; i++) {
		if (ev[i].token == SHARED_TOKEN)
			harvest_shared(w, idle);
		else
			on_event(w, &ev[i]);
	}

	/* Timers are checked on every step, busy or idle, so deadlines hold
	 * under a saturating I/O load. */
	uint64_t tick = 0;
	if (weft_wheel_count(&w->wheel)) {
		size_t nt;
		tick = weft_clock_ns() / NS_PER_TICK;
		/* In expiry order, so threads wake in deadline order even
		 * after a late step. */
		weft_timer_t *t = weft_wheel_advance(&w->wheel, tick, &nt);
		while (t) {
			weft_timer_t *next = t->_next;
			on_timer(w, (weft_co_t *)((char *)t - offsetof(weft_co_t, _timer)));
			t = next;
		}
	}
	/* Callback timers are queued for the binding, in expiry order. */
	if (weft_wheel_count(&w->cbwheel)) {
		size_t nt;
		if (!tick)
			tick = weft_clock_ns() / NS_PER_TICK;
		weft_timer_t **tail;
		weft_timer_t *t = weft_wheel_advance_tail(&w->cbwheel, tick, &nt, &tail);
		if (nt) {
			*w->_cbdue_tail = t;
			w->_cbdue_tail = tail;
			WEFT_STAT_ADD(w, timers, nt);
		}
	}

	w->_spin_ok = 0;
	if (weft_inbox_nonempty(&w->inbox)) {
		weft_msg_t *m;
		size_t nm = weft_inbox_drain(&w->inbox, &m);
		for (size_t i = 0; i < nm; i++) {
			on_message(w, &m[i]);
			/* A spin watches the inbox, not the poller: after an
			 * accepted connection it would only hold up the next
			 * one (an accept storm then ran at 50 µs a connection). */
			if (m[i].kind != WEFT_MSG_WAKE_QUIET)
				w->_spin_ok = 1;
		}
	}
	uint64_t lost = atomic_load_explicit(&w->_lost_posts, memory_order_relaxed);
	if (lost) {
		atomic_fetch_sub_explicit(&w->_lost_posts, lost, memory_order_relaxed);
		WEFT_STAT_ADD(w, lost, lost);
	}
	return (int)(WEFT_STAT(w, wakes) - queued0);
}

int weft_worker_next(weft_worker_t *w, weft_wake_t *out)
{
	weft_wake_t wk;
	while (weft_runq_pop(&w->runq, &wk)) {
		weft_co_t *co = weft_worker_co(w, wk.slot);
		if (co->seq != wk.seq || !wakeable(co, wk.code))
			continue; /* the wait it was for is over */
		leave_wait(w, co);
		*out = wk;
		return 1;
	}
	return 0;
}
