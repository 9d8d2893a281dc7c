/* Threads, mutexes, condition variables and once-initialisation: the few
 * primitives lib/ needs, behind one header.  thread-posix.c implements them
 * with pthreads, thread-win32.c with Win32 threads, SRW locks and condition
 * variables; configure picks the file.  Only the types differ per platform
 * (they are embedded in other structures, so they must be complete here).
 *
 * Any thread may call any of these.  Mutexes are not recursive, and are
 * unlocked by the thread that locked them.  Nothing here needs a parking
 * primitive of its own: a worker parks in its poller (doc/design.md). */
#ifndef WEFT_THREAD_H
#define WEFT_THREAD_H

#include <stdint.h>

#if defined(_WIN32)
#include <windows.h>
typedef struct weft__thread *weft_thread_t;
typedef DWORD weft_thread_id_t;
typedef SRWLOCK weft_mutex_t;
typedef CONDITION_VARIABLE weft_cond_t;
typedef INIT_ONCE weft_once_t;
#define WEFT_ONCE_INIT  INIT_ONCE_STATIC_INIT
#define WEFT_MUTEX_INIT SRWLOCK_INIT
#define WEFT_COND_INIT  CONDITION_VARIABLE_INIT
#else
#include <pthread.h>
typedef pthread_t weft_thread_t;
typedef pthread_t weft_thread_id_t;
typedef pthread_mutex_t weft_mutex_t;
typedef pthread_cond_t weft_cond_t;
typedef pthread_once_t weft_once_t;
#define WEFT_ONCE_INIT  PTHREAD_ONCE_INIT
#define WEFT_MUTEX_INIT PTHREAD_MUTEX_INITIALIZER
#define WEFT_COND_INIT  PTHREAD_COND_INITIALIZER
#endif

/* Flags for weft_thread_create. */
enum {
	/* The new thread starts with every signal blocked (POSIX), so that a
	 * process-directed signal goes to a thread that handles it.  No effect
	 * on Windows, which has no signals to block. */
	WEFT_THREAD_NOSIGNALS = 1
};

/* Start fn(arg) on a new thread.  0, or a negative code (-EAGAIN when the
 * system is out of threads, WEFT_ENOMEM); on failure fn is never called. */
int weft_thread_create(weft_thread_t *t, void *(*fn)(void *), void *arg, unsigned flags);

/* Wait for t to end; *ret (if ret is not NULL) gets what fn returned.
 * Each thread is joined or detached exactly once.  0 or a negative code. */
int weft_thread_join(weft_thread_t t, void **ret);

/* Let t end on its own; its resources go when it does.  0 or a negative
 * code. */
int weft_thread_detach(weft_thread_t t);

/* The calling thread's identity, and whether two identities are the same
 * thread (1) or not (0). */
weft_thread_id_t weft_thread_self(void);
int weft_thread_equal(weft_thread_id_t a, weft_thread_id_t b);

/* How many CPUs this process may run on (at least 1). */
int weft_thread_ncpu(void);

/* Sleep the calling thread for about ns nanoseconds (rounded up to what
 * the system can do; a signal does not cut it short). */
void weft_thread_sleep_ns(uint64_t ns);

/* A mutex: init returns 0 or a negative code; destroy only when unlocked
 * and unused. */
int weft_mutex_init(weft_mutex_t *m);
void weft_mutex_destroy(weft_mutex_t *m);
void weft_mutex_lock(weft_mutex_t *m);
/* 1 if the lock was taken, 0 if another thread holds it. */
int weft_mutex_trylock(weft_mutex_t *m);
void weft_mutex_unlock(weft_mutex_t *m);

/* A condition variable, waited on with a locked mutex.  Waits may return
 * spuriously: callers re-check their predicate in a loop.  WEFT_MUTEX_INIT
 * and WEFT_COND_INIT initialise static ones; a condition variable used
 * with weft_cond_timedwait must come from weft_cond_init (on POSIX, the
 * static initialiser would count the timeout on the wall clock). */
int weft_cond_init(weft_cond_t *c);
void weft_cond_destroy(weft_cond_t *c);
void weft_cond_wait(weft_cond_t *c, weft_mutex_t *m);
/* Wait at most timeout_ns on the monotonic clock: 0 when woken (or
 * spuriously), WEFT_ETIMEOUT when the time ran out. */
int weft_cond_timedwait(weft_cond_t *c, weft_mutex_t *m, uint64_t timeout_ns);
void weft_cond_signal(weft_cond_t *c);
void weft_cond_broadcast(weft_cond_t *c);

/* Run fn exactly once per o (initialised with WEFT_ONCE_INIT), however
 * many threads call this; every caller returns after fn has finished. */
void weft_once(weft_once_t *o, void (*fn)(void));

#endif
