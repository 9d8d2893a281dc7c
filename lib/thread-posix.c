/* The thread primitives (thread.h) on pthreads. */
#include "thread.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <time.h>

#include "error.h"

int weft_thread_create(weft_thread_t *t, void *(*fn)(void *), void *arg, unsigned flags)
{
	sigset_t all, old;
	int rc;

	/* A thread inherits its creator's mask: block everything around
	 * pthread_create, rather than inside the new thread, where a signal
	 * could land before the block. */
	if (flags & WEFT_THREAD_NOSIGNALS) {
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
	}
	rc = pthread_create(t, NULL, fn, arg);
	if (flags & WEFT_THREAD_NOSIGNALS)
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	return -rc;
}

int weft_thread_join(weft_thread_t t, void **ret)
{
	return -pthread_join(t, ret);
}

int weft_thread_detach(weft_thread_t t)
{
	return -pthread_detach(t);
}

weft_thread_id_t weft_thread_self(void)
{
	return pthread_self();
}

int weft_thread_equal(weft_thread_id_t a, weft_thread_id_t b)
{
	return pthread_equal(a, b) != 0;
}

int weft_thread_ncpu(void)
{
	cpu_set_t cpus;

	if (sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) > 0)
		return CPU_COUNT(&cpus);
	return 1;
}

void weft_thread_sleep_ns(uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
	                      .tv_nsec = (long)(ns % 1000000000u)};

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

int weft_mutex_init(weft_mutex_t *m)
{
	int rc = pthread_mutex_init(m, NULL);

	return rc == ENOMEM ? WEFT_ENOMEM : -rc;
}

void weft_mutex_destroy(weft_mutex_t *m)
{
	pthread_mutex_destroy(m);
}

void weft_mutex_lock(weft_mutex_t *m)
{
	pthread_mutex_lock(m);
}

int weft_mutex_trylock(weft_mutex_t *m)
{
	return pthread_mutex_trylock(m) == 0;
}

void weft_mutex_unlock(weft_mutex_t *m)
{
	pthread_mutex_unlock(m);
}

int weft_cond_init(weft_cond_t *c)
{
	pthread_condattr_t attr;
	int rc = pthread_condattr_init(&attr);

	if (rc != 0)
		return rc == ENOMEM ? WEFT_ENOMEM : -rc;
	/* Timed waits count on the monotonic clock, like the timers: a
	 * wall-clock step must not stretch or cut them. */
	rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	if (rc == 0)
		rc = pthread_cond_init(c, &attr);
	pthread_condattr_destroy(&attr);
	return rc == ENOMEM ? WEFT_ENOMEM : -rc;
}

void weft_cond_destroy(weft_cond_t *c)
{
	pthread_cond_destroy(c);
}

void weft_cond_wait(weft_cond_t *c, weft_mutex_t *m)
{
	pthread_cond_wait(c, m);
}

int weft_cond_timedwait(weft_cond_t *c, weft_mutex_t *m, uint64_t timeout_ns)
{
	struct timespec ts;
	uint64_t ns;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	/* Capped at about 136 years: far enough, and no overflow. */
	if (timeout_ns > (uint64_t)1 << 62)
		timeout_ns = (uint64_t)1 << 62;
	ns = (uint64_t)ts.tv_nsec + timeout_ns % 1000000000u;
	ts.tv_sec += (time_t)(timeout_ns / 1000000000u + ns / 1000000000u);
	ts.tv_nsec = (long)(ns % 1000000000u);
	return pthread_cond_timedwait(c, m, &ts) == ETIMEDOUT ? WEFT_ETIMEOUT : 0;
}

void weft_cond_signal(weft_cond_t *c)
{
	pthread_cond_signal(c);
}

void weft_cond_broadcast(weft_cond_t *c)
{
	pthread_cond_broadcast(c);
}

void weft_once(weft_once_t *o, void (*fn)(void))
{
	pthread_once(o, fn);
}
