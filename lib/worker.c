/* The scheduler core: see worker.h for the contract. */
#include "config.h"

#include "worker.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "clock.h"
#include "error.h"
#include "channel.h"
#include "listener.h"
#include "sock.h"

static void bury(weft_worker_t *w);

#define NS_PER_TICK 1000000ull /* the wheel ticks in milliseconds */
#define HARVEST_MAX 256
/* How long an idle worker without the poller token spins on its inbox
 * before it sleeps (see weft_worker_poll). */
#define SPIN_NS 20000ull

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

/* Parking states of a worker (DESIGN §4).  A producer pushes to the
 * inbox, then swaps the state to NOTIFIED and wakes whatever the worker
 * sleeps on; the worker publishes PARKED_*, re-checks its inbox, then
 * sleeps.  Either the worker sees the message or the producer sees the
 * parked state: no lost wake-up. */
enum { PARK_EMPTY, PARK_FUTEX, PARK_POLLER, PARK_NOTIFIED };

#define TOKEN_FREE UINT32_MAX

struct weft_runtime {
	weft_poller_t *poller;
	weft_fdtab_t *fds;
	pthread_mutex_t lock; /* guards workers[] and refs */
	weft_worker_t *workers[WEFT_MAX_WORKERS];
	int refs;
	/* The poller token: only its holder harvests events, so exactly one
	 * thread blocks in the poller and drains its wake-up channel (a
	 * non-blocking harvest by another thread could swallow the wake-up
	 * meant for the blocked one).  TOKEN_FREE or the holder's id. */
	_Atomic uint32_t token;
	_Atomic int nparked; /* workers parked on their condition variable */
	weft_runtime_t *_next; /* the process's runtimes, by poller fd */
	pthread_mutex_t llock; /* the shared listeners and named channels */
	void *listeners;
	void *channels;
	_Atomic uint64_t lretry; /* listener.c: earliest accept retry, 0 = none */
	_Atomic int exiting; /* weft.exit() or a signal: every loop stops */
	_Atomic long jobs;   /* jobs queued in all workers (stealing hint) */
	weft_worker_t *graveyard; /* freed workers, kept until the runtime goes */
};

pthread_mutex_t *weft__runtime_listener_lock(weft_runtime_t *rt)
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

int weft__worker_idle(const weft_worker_t *w)
{
	int p = atomic_load_explicit(&((weft_worker_t *)w)->_park, memory_order_acquire);
	return p == PARK_FUTEX || p == PARK_POLLER;
}

/* Runtimes of this process, so that a Lua state on another thread can
 * join one by its poller descriptor (weft.epoll_fd(fd)). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static weft_runtime_t *registry;

void weft_runtime_exit(weft_runtime_t *rt)
{
	atomic_store_explicit(&rt->exiting, 1, memory_order_release);
	pthread_mutex_lock(&rt->lock);
	for (uint32_t i = 0; i < WEFT_MAX_WORKERS; i++)
		if (rt->workers[i])
			weft_worker_unpark(rt->workers[i]);
	pthread_mutex_unlock(&rt->lock);
}

int weft_runtime_exiting(const weft_runtime_t *rt)
{
	return atomic_load_explicit(&((weft_runtime_t *)rt)->exiting, memory_order_acquire);
}

void weft_runtime_exit_all(void)
{
	pthread_mutex_lock(&registry_lock);
	for (weft_runtime_t *rt = registry; rt; rt = rt->_next)
		weft_runtime_exit(rt);
	pthread_mutex_unlock(&registry_lock);
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
	pthread_mutex_init(&rt->lock, NULL);
	pthread_mutex_init(&rt->llock, NULL);
	rt->refs = 1;
	atomic_init(&rt->token, TOKEN_FREE);
	pthread_mutex_lock(&registry_lock);
	rt->_next = registry;
	registry = rt;
	pthread_mutex_unlock(&registry_lock);
	*out = rt;
	return 0;
}

int weft_runtime_stats(weft_runtime_t *rt, uint64_t sum[WEFT_NSTATS])
{
	int n = 0;
	memset(sum, 0, WEFT_NSTATS * sizeof *sum);
	pthread_mutex_lock(&rt->lock);
	for (uint32_t i = 0; i < WEFT_MAX_WORKERS; i++) {
		weft_worker_t *w = rt->workers[i];
		if (!w)
			continue;
		n++;
		_Atomic uint64_t *c = (_Atomic uint64_t *)&w->stats;
		for (int k = 0; k < WEFT_NSTATS; k++)
			sum[k] += atomic_load_explicit(&c[k], memory_order_relaxed);
	}
	pthread_mutex_unlock(&rt->lock);
	return n;
}

weft_runtime_t *weft_runtime_ref(weft_runtime_t *rt)
{
	pthread_mutex_lock(&rt->lock);
	rt->refs++;
	pthread_mutex_unlock(&rt->lock);
	return rt;
}

int weft_runtime_join(int pollfd, weft_runtime_t **out)
{
	pthread_mutex_lock(&registry_lock);
	weft_runtime_t *rt = registry;
	while (rt && weft_poller_fd(rt->poller) != pollfd)
		rt = rt->_next;
	if (rt) {
		pthread_mutex_lock(&rt->lock);
		rt->refs++;
		pthread_mutex_unlock(&rt->lock);
	}
	pthread_mutex_unlock(&registry_lock);
	if (!rt)
		return -ENOENT;
	*out = rt;
	return 0;
}

void weft_runtime_free(weft_runtime_t *rt)
{
	if (!rt)
		return;
	pthread_mutex_lock(&registry_lock);
	pthread_mutex_lock(&rt->lock);
	int last = --rt->refs == 0;
	pthread_mutex_unlock(&rt->lock);
	if (last) {
		weft_runtime_t **p = &registry;
		while (*p && *p != rt)
			p = &(*p)->_next;
		if (*p)
			*p = rt->_next;
	}
	pthread_mutex_unlock(&registry_lock);
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
	pthread_mutex_destroy(&rt->lock);
	pthread_mutex_destroy(&rt->llock);
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

static int attach(weft_worker_t *w, weft_runtime_t *rt)
{
	pthread_mutex_lock(&rt->lock);
	uint32_t id = 0;
	while (id < WEFT_MAX_WORKERS && rt->workers[id])
		id++;
	if (id < WEFT_MAX_WORKERS) {
		rt->workers[id] = w;
		w->rt = rt;
		w->id = id;
	}
	pthread_mutex_unlock(&rt->lock);
	return id < WEFT_MAX_WORKERS ? 0 : -EMFILE;
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
	weft_runq_init(&w->runq);
	weft_jobq_init(&w->jobs);
	weft_wheel_init(&w->wheel, weft_clock_ns() / NS_PER_TICK);
	w->_free = UINT32_MAX;
	atomic_init(&w->_park, PARK_EMPTY);
	pthread_mutex_init(&w->_park_lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&w->_park_cond, &ca);
	pthread_condattr_destroy(&ca);
	err = attach(w, rt);
	if (err < 0) {
		pthread_cond_destroy(&w->_park_cond);
		pthread_mutex_destroy(&w->_park_lock);
		weft_inbox_destroy(&w->inbox);
		weft_free(w);
		return err;
	}
	*out = w;
	return 0;
}

static void detach(weft_worker_t *w)
{
	pthread_mutex_lock(&w->rt->lock);
	w->rt->workers[w->id] = NULL;
	pthread_mutex_unlock(&w->rt->lock);
}

int weft_worker_move(weft_worker_t *w, weft_runtime_t *rt)
{
	if (rt == w->rt)
		return 0;
	if (w->nfds)
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
 * being posted), so its inbox and parking fields stay valid until the
 * runtime goes; posting to a dead worker is harmless. */
static void bury(weft_worker_t *w)
{
	weft_msg_t *m;
	size_t n = weft_inbox_drain(&w->inbox, &m);
	for (size_t i = 0; i < n; i++)
		if (m[i].kind == WEFT_MSG_WAKE && m[i].ptr && w->drop_data)
			w->drop_data(m[i].ptr);
	pthread_cond_destroy(&w->_park_cond);
	pthread_mutex_destroy(&w->_park_lock);
	weft_inbox_destroy(&w->inbox);
	weft_free(w);
}

void weft_worker_free(weft_worker_t *w)
{
	if (!w)
		return;
	weft_runtime_t *rt = w->rt;
	detach(w);
	/* From now on a post to w fails, so whoever hands w a wake-up (a
	 * channel, a listener) learns that its waiter is gone and serves the
	 * next one instead of losing the wake-up. */
	weft_inbox_close(&w->inbox);
	weft_jobq_destroy(&w->jobs);
	weft_runq_destroy(&w->runq);
	weft_free(w->_cos);
	w->_cos = NULL;
	pthread_mutex_lock(&rt->lock);
	w->_grave = rt->graveyard;
	rt->graveyard = w;
	pthread_mutex_unlock(&rt->lock);
}

/* Move the coroutine table to a larger array.  Not realloc: the wheel links
 * armed timers by address, and they live inside the records, so each armed
 * timer is cancelled in the old record and armed again, same expiry, in its
 * copy before the old array is freed. */
static int grow_cos(weft_worker_t *w, uint32_t cap)
{
	weft_co_t *c = weft_malloc((size_t)cap * sizeof *c);
	if (!c)
		return WEFT_ENOMEM;
	for (uint32_t i = 0; i < w->_ncos; i++) {
		weft_co_t *old = &w->_cos[i];
		c[i] = *old;
		weft_timer_init(&c[i]._timer);
		if (weft_timer_armed(&old->_timer)) {
			weft_wheel_cancel(&w->wheel, &old->_timer);
			weft_wheel_add(&w->wheel, &c[i]._timer, old->_timer.expires);
		}
	}
	weft_free(w->_cos);
	w->_cos = c;
	w->_capcos = cap;
	return 0;
}

int64_t weft_worker_co_new(weft_worker_t *w)
{
	uint32_t slot;
	if (w->_free != UINT32_MAX) {
		slot = w->_free;
		w->_free = w->_cos[slot]._next_free;
	} else {
		if (w->_ncos == w->_capcos) {
			uint32_t cap = w->_capcos ? w->_capcos * 2 : 64;
			/* A slot has at most one wake-up queued (_pending), so a
			 * run queue with room for every slot never fails a push. */
			if (cap > WEFT_WAITER_MAX || weft_runq_reserve(&w->runq, cap) < 0 ||
			    grow_cos(w, cap) < 0)
				return WEFT_ENOMEM;
		}
		slot = w->_ncos++;
		w->_cos[slot].seq = 0;
	}
	weft_co_t *co = &w->_cos[slot];
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
	 * wake-up the word no longer names the slot and this does nothing. */
	if (co->state == WEFT_CO_WAIT_IO && co->_fd)
		weft_fd_cancel(co->_fd, co->_dir, (uint32_t)(co - w->_cos));
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
	weft_co_t *co = &w->_cos[slot];
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
	 * directions: an edge is remembered in the wait word until a coroutine
	 * consumes it (DESIGN §3). */
	int rc = weft_poller_add(w->rt->poller, fd, WEFT_POLL_IN | WEFT_POLL_OUT | WEFT_POLL_EDGE,
				 weft_fd_token(r));
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

static void queue(weft_worker_t *w, uint32_t slot, weft_co_t *co, int32_t code)
{
	weft_wake_t wk = {slot, co->seq, code};
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
	weft_co_t *co = &w->_cos[slot];
	if (co->seq != seq || !wakeable(co, code) || co->_pending)
		return 0;
	/* An fd wait must leave the wait word too, as on a timeout: a slot
	 * left there makes the next wait on that direction -EBUSY, and the
	 * next event wake the slot in whatever wait it is in by then.  If an
	 * event or close took the word first, its wake-up is on its way. */
	if (co->state == WEFT_CO_WAIT_IO && !weft_fd_cancel(co->_fd, co->_dir, slot))
		return 0;
	queue(w, slot, co, code);
	return 1;
}

/* An fd wait of `slot` ended by an event or a close: the wait word's CAS
 * proved the coroutine is still in that wait, so its current seq is the
 * right one. */
static void io_done(weft_worker_t *w, uint32_t slot, int32_t code)
{
	/* No seq is needed, even for a hand-off from another worker: once
	 * the word went WAIT -> EMPTY the slot cannot leave the wait (its
	 * deadline's cancel fails and waits for this), so it cannot be freed
	 * or reused before this wake-up is taken. */
	weft_co_t *co = &w->_cos[slot];
	if (co->state == WEFT_CO_WAIT_IO && !co->_pending)
		queue(w, slot, co, code);
}

static void deliver(weft_worker_t *w, weft_fd_t *r, uint64_t waiter1, int32_t code)
{
	if (!waiter1)
		return;
	uint32_t slot = (uint32_t)(waiter1 - 1);
	uint32_t owner = atomic_load_explicit(&r->owner, memory_order_acquire);
	if (owner == w->id) {
		io_done(w, slot, code);
		return;
	}
	/* Under the runtime lock, so that the owner cannot be freed while
	 * the message is posted. */
	weft_msg_t m = {WEFT_MSG_IO, slot, 0, code, NULL};
	pthread_mutex_lock(&w->rt->lock);
	weft_worker_t *ow = owner < WEFT_MAX_WORKERS ? w->rt->workers[owner] : NULL;
	if (ow)
		weft_worker_post(ow, &m);
	pthread_mutex_unlock(&w->rt->lock);
	if (ow)
		WEFT_STAT_ADD(w, handoffs, 1);
}

void weft_worker_close_fd(weft_worker_t *w, weft_fd_t *r)
{
	uint64_t woken[2];
	int fd = atomic_load_explicit(&r->fd, memory_order_acquire);
	weft_fd_shut(r, woken);
	deliver(w, r, woken[WEFT_READ], WEFT_ECLOSED);
	deliver(w, r, woken[WEFT_WRITE], WEFT_ECLOSED);
	/* Delete before close: the kernel poller tracks the open file description, so a
	 * dup'd descriptor would otherwise keep firing for a dead record. */
	weft_poller_delete(w->rt->poller, fd);
	weft_sock_close(fd);
	weft_fdtab_release(w->rt->fds, r);
	w->nfds--;
	weft__listener_fd_closed(w->rt); /* a listener out of descriptors may go on */
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

int weft_worker_wait_io(weft_worker_t *w, uint32_t slot, weft_fd_t *r, int dir,
			uint64_t deadline_ns)
{
	weft_co_t *co = &w->_cos[slot];
	/* The wait word must name this wait before an event can see it, so
	 * state and seq are set first and undone if the word says otherwise. */
	begin_wait(w, co, WEFT_CO_WAIT_IO, deadline_ns, 1);
	co->_fd = r;
	co->_dir = (uint8_t)dir;
	int rc = weft_fd_wait(r, dir, slot);
	if (rc != 0)
		leave_wait(w, co);
	return rc;
}

int weft_worker_wait_time(weft_worker_t *w, uint32_t slot, uint64_t deadline_ns)
{
	begin_wait(w, &w->_cos[slot], WEFT_CO_WAIT_TIME, deadline_ns, deadline_ns != UINT64_MAX);
	return 0;
}

uint32_t weft_worker_wait_ext(weft_worker_t *w, uint32_t slot)
{
	return weft_worker_wait_ext_until(w, slot, UINT64_MAX);
}

uint32_t weft_worker_wait_ext_until(weft_worker_t *w, uint32_t slot, uint64_t deadline_ns)
{
	weft_co_t *co = &w->_cos[slot];
	begin_wait(w, co, WEFT_CO_WAIT_EXT, deadline_ns, 1);
	return co->seq;
}

uint32_t weft_worker_yield(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = &w->_cos[slot];
	begin_wait(w, co, WEFT_CO_WAIT_TIME, UINT64_MAX, 0);
	queue(w, slot, co, 0);
	return co->seq;
}

void weft_worker_spawn(weft_worker_t *w, weft_job_t *j)
{
	weft_runtime_t *rt = w->rt;
	weft_jobq_push(&w->jobs, j);
	atomic_fetch_add_explicit(&rt->jobs, 1, memory_order_acq_rel);
	/* Publishing: an idle worker may take it (DESIGN §5); this worker
	 * runs it otherwise, on its next step. */
	pthread_mutex_lock(&rt->lock);
	for (uint32_t i = 0; i < WEFT_MAX_WORKERS; i++) {
		weft_worker_t *o = rt->workers[i];
		if (o && o != w && weft__worker_idle(o)) {
			weft_worker_unpark(o);
			break;
		}
	}
	pthread_mutex_unlock(&rt->lock);
}

weft_job_t *weft_worker_next_job(weft_worker_t *w)
{
	weft_runtime_t *rt = w->rt;
	if (atomic_load_explicit(&rt->jobs, memory_order_acquire) == 0)
		return NULL;
	weft_job_t *j = weft_jobq_pop(&w->jobs);
	if (!j) {
		/* Steal half of the longest queue.  Under the runtime lock, so
		 * that no worker is freed while its queue is read. */
		pthread_mutex_lock(&rt->lock);
		weft_worker_t *victim = NULL;
		size_t most = 0;
		for (uint32_t i = 0; i < WEFT_MAX_WORKERS; i++) {
			weft_worker_t *o = rt->workers[i];
			size_t n = o ? atomic_load_explicit(&o->jobs.len, memory_order_relaxed) : 0;
			if (o && o != w && n > most) {
				most = n;
				victim = o;
			}
		}
		if (victim)
			WEFT_STAT_ADD(w, jobs_stolen, weft_jobq_steal(&victim->jobs, &w->jobs));
		pthread_mutex_unlock(&rt->lock);
		j = weft_jobq_pop(&w->jobs);
	}
	if (j) {
		atomic_fetch_sub_explicit(&rt->jobs, 1, memory_order_acq_rel);
		WEFT_STAT_ADD(w, jobs_run, 1);
	}
	return j;
}

void *weft_worker_take_data(weft_worker_t *w, uint32_t slot)
{
	void *p = w->_cos[slot]._data;
	w->_cos[slot]._data = NULL;
	return p;
}

void weft_worker_wait_abort(weft_worker_t *w, uint32_t slot)
{
	leave_wait(w, &w->_cos[slot]);
}

void weft_worker_suspend(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = &w->_cos[slot];
	leave_wait(w, co);
	co->seq++;
	co->state = WEFT_CO_SUSPENDED;
}

void weft_worker_keepalive(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = &w->_cos[slot];
	if (co->state == WEFT_CO_SUSPENDED && !co->_alive) {
		co->_alive = 1;
		w->nalive++;
	}
}

void weft_worker_run(weft_worker_t *w, uint32_t slot)
{
	weft_co_t *co = &w->_cos[slot];
	if (co->_alive) {
		co->_alive = 0;
		w->nalive--;
	}
	co->state = WEFT_CO_RUNNING;
}

void weft_worker_unpark(weft_worker_t *w)
{
	int prev = atomic_exchange_explicit(&w->_park, PARK_NOTIFIED, memory_order_acq_rel);
	if (prev == PARK_FUTEX) {
		pthread_mutex_lock(&w->_park_lock);
		pthread_cond_signal(&w->_park_cond);
		pthread_mutex_unlock(&w->_park_lock);
	} else if (prev == PARK_POLLER) {
		weft_poller_wake(w->rt->poller);
	}
}

int weft_worker_post(weft_worker_t *w, const weft_msg_t *m)
{
	int rc = weft_inbox_push(&w->inbox, m);
	if (rc == 0)
		weft_worker_unpark(w);
	return rc;
}

/* Publish that w is about to sleep on `how`.  Returns 1 if it must not
 * sleep after all (notified, or messages are waiting). */
static int park_begin(weft_worker_t *w, int how)
{
	if (atomic_exchange_explicit(&w->_park, how, memory_order_acq_rel) == PARK_NOTIFIED ||
	    weft_inbox_nonempty(&w->inbox)) {
		atomic_store_explicit(&w->_park, PARK_EMPTY, memory_order_release);
		return 1;
	}
	return 0;
}

static void park_end(weft_worker_t *w)
{
	atomic_store_explicit(&w->_park, PARK_EMPTY, memory_order_release);
}

/* Sleep on w's condition variable until unparked or timeout_ms passes
 * (-1 = no timeout): another worker holds the poller token and routes our
 * events to our inbox. */
static void park_cond(weft_worker_t *w, int timeout_ms)
{
	struct timespec ts;
	if (timeout_ms >= 0) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += timeout_ms / 1000;
		ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
	}
	pthread_mutex_lock(&w->_park_lock);
	if (!park_begin(w, PARK_FUTEX)) {
		atomic_fetch_add(&w->rt->nparked, 1);
		WEFT_STAT_ADD(w, parks, 1);
		while (atomic_load_explicit(&w->_park, memory_order_acquire) == PARK_FUTEX) {
			int rc = timeout_ms >= 0
					 ? pthread_cond_timedwait(&w->_park_cond, &w->_park_lock, &ts)
					 : pthread_cond_wait(&w->_park_cond, &w->_park_lock);
			if (rc == ETIMEDOUT)
				break;
		}
		atomic_fetch_sub(&w->rt->nparked, 1);
		park_end(w);
	}
	pthread_mutex_unlock(&w->_park_lock);
}

static int take_token(weft_worker_t *w)
{
	uint32_t free_ = TOKEN_FREE;
	return atomic_compare_exchange_strong_explicit(&w->rt->token, &free_, w->id,
						       memory_order_acq_rel, memory_order_acquire);
}

/* Give the token back.  Workers parked on their condition variable wait
 * for events someone must harvest: wake one to take the poller role, so
 * that it is never abandoned while this worker runs its threads. */
static void drop_token(weft_worker_t *w)
{
	weft_runtime_t *rt = w->rt;
	atomic_store_explicit(&rt->token, TOKEN_FREE, memory_order_release);
	if (atomic_load_explicit(&rt->nparked, memory_order_acquire) == 0)
		return;
	pthread_mutex_lock(&rt->lock);
	for (uint32_t i = 0; i < WEFT_MAX_WORKERS; i++) {
		weft_worker_t *o = rt->workers[i];
		if (o && o != w &&
		    atomic_load_explicit(&o->_park, memory_order_acquire) == PARK_FUTEX) {
			weft_worker_unpark(o);
			WEFT_STAT_ADD(w, unparks, 1);
			break;
		}
	}
	pthread_mutex_unlock(&rt->lock);
}

static void on_timer(weft_worker_t *w, weft_co_t *co)
{
	uint32_t slot = (uint32_t)(co - w->_cos);
	WEFT_STAT_ADD(w, timers, 1);
	if (co->state == WEFT_CO_WAIT_IO) {
		/* Withdraw from the wait word; if an event won the race, its
		 * wake-up is already queued (or posted) and will be taken. */
		if (weft_fd_cancel(co->_fd, co->_dir, slot))
			queue(w, slot, co, WEFT_ETIMEOUT);
	} else if (is_waiting(co) && !co->_pending) {
		queue(w, slot, co, WEFT_ETIMEOUT);
	}
}

static void on_event(weft_worker_t *w, const weft_poll_event_t *ev, int idle)
{
	weft_fd_t *r = weft_fdtab_lookup(w->rt->fds, ev->token);
	if (!r) {
		WEFT_STAT_ADD(w, stale, 1);
		return;
	}
	if (atomic_load_explicit(&r->udata, memory_order_acquire)) {
		weft__listener_event(w, r, idle);
		return;
	}
	uint32_t gen = (uint32_t)(ev->token >> 32);
	/* Hang-ups and errors wake both directions: the retried call reports
	 * the condition (0 bytes, or the pending error). */
	if (ev->events & (WEFT_POLL_IN | WEFT_POLL_HUP | WEFT_POLL_ERR))
		deliver(w, r, weft_fd_ready(r, WEFT_READ, gen), 0);
	if (ev->events & (WEFT_POLL_OUT | WEFT_POLL_HUP | WEFT_POLL_ERR))
		deliver(w, r, weft_fd_ready(r, WEFT_WRITE, gen), 0);
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
		/* A wake-up may carry data for the woken coroutine (values from
		 * another worker); if the wait is over, the data is dropped. */
		if (weft_worker_wake(w, m->slot, m->seq, m->code)) {
			if (m->ptr)
				w->_cos[m->slot]._data = m->ptr;
		} else if (m->ptr && w->drop_data) {
			w->drop_data(m->ptr);
		}
		break;
	default:
		break;
	}
}

/* The wheel hands out a step's expired timers in no particular order; a
 * late step (a busy loop) can hold timers several ticks apart, and threads
 * should still wake in deadline order.  Merge sort of the list, stable. */
static weft_timer_t *sort_by_expiry(weft_timer_t *list)
{
	if (!list || !list->_next)
		return list;
	weft_timer_t *slow = list, *fast = list->_next;
	while (fast && fast->_next) {
		slow = slow->_next;
		fast = fast->_next->_next;
	}
	weft_timer_t *b = slow->_next;
	slow->_next = NULL;
	weft_timer_t *a = sort_by_expiry(list);
	b = sort_by_expiry(b);
	weft_timer_t head, *tail = &head;
	while (a && b) {
		if (b->expires < a->expires) {
			tail->_next = b;
			b = b->_next;
		} else {
			tail->_next = a;
			a = a->_next;
		}
		tail = tail->_next;
	}
	tail->_next = a ? a : b;
	return head._next;
}

int weft_worker_poll(weft_worker_t *w, uint64_t timeout_ns)
{
	size_t before = weft_runq_len(&w->runq);
	uint64_t queued0 = WEFT_STAT(w, wakes);
	uint64_t now = weft_clock_ns();
	uint64_t retry = weft__listener_retry(w->rt, now); /* re-arms backed-off listeners */
	int timeout_ms = 0;
	/* Jobs waiting anywhere: don't sleep, the binding takes or steals
	 * them after this poll. */
	if (before == 0 && !weft_inbox_nonempty(&w->inbox) &&
	    atomic_load_explicit(&w->rt->jobs, memory_order_acquire) == 0) {
		uint64_t deadline = timeout_ns == UINT64_MAX || timeout_ns > UINT64_MAX - now
					    ? UINT64_MAX
					    : now + timeout_ns;
		uint64_t next = weft_wheel_next(&w->wheel);
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

	weft_poll_event_t ev[HARVEST_MAX];
	if (take_token(w)) {
		WEFT_STAT_ADD(w, polls, 1);
		int parked = timeout_ms != 0, idle = parked; /* nothing to run */
		if (parked && park_begin(w, PARK_POLLER)) {
			parked = 0;
			timeout_ms = 0;
		}
		int n = weft_poller_wait(w->rt->poller, ev, HARVEST_MAX, timeout_ms);
		if (parked)
			park_end(w);
		drop_token(w);
		if (n < 0)
			return n;
		WEFT_STAT_ADD(w, events, (uint64_t)n);
		for (int i = 0; i < n; i++)
			on_event(w, &ev[i], idle);
	} else if (timeout_ms != 0) {
		/* Another worker polls for us.  A message often follows within
		 * microseconds (a channel reply, a wake-up): spin briefly before
		 * paying for a sleep and a wake-up (~5-10 us each way here). */
		uint64_t until = weft_clock_ns() + SPIN_NS;
		while (!weft_inbox_nonempty(&w->inbox) && weft_clock_ns() < until)
			cpu_relax();
		if (!weft_inbox_nonempty(&w->inbox))
			park_cond(w, timeout_ms);
	}

	/* Timers are checked on every step, busy or idle, so deadlines hold
	 * under a saturating I/O load. */
	if (weft_wheel_count(&w->wheel)) {
		size_t nt;
		weft_timer_t *t = weft_wheel_advance(&w->wheel, weft_clock_ns() / NS_PER_TICK, &nt);
		if (nt > 1)
			t = sort_by_expiry(t);
		while (t) {
			weft_timer_t *next = t->_next;
			on_timer(w, (weft_co_t *)((char *)t - offsetof(weft_co_t, _timer)));
			t = next;
		}
	}

	if (weft_inbox_nonempty(&w->inbox)) {
		weft_msg_t *m;
		size_t nm = weft_inbox_drain(&w->inbox, &m);
		for (size_t i = 0; i < nm; i++)
			on_message(w, &m[i]);
	}
	return (int)(WEFT_STAT(w, wakes) - queued0);
}

int weft_worker_next(weft_worker_t *w, weft_wake_t *out)
{
	weft_wake_t wk;
	while (weft_runq_pop(&w->runq, &wk)) {
		weft_co_t *co = &w->_cos[wk.slot];
		if (co->seq != wk.seq || !wakeable(co, wk.code))
			continue; /* the wait it was for is over */
		leave_wait(w, co);
		*out = wk;
		return 1;
	}
	return 0;
}
