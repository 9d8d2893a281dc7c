/* The thread primitives (thread.h) on Win32: threads started with
 * _beginthreadex (so the C runtime's per-thread state is set up), SRW
 * locks, condition variables and one-time initialisation. */
#include "thread.h"

#include <errno.h>
#include <process.h>
#include <stdatomic.h>

#include "alloc.h"
#include "error.h"

/* A Win32 thread returns a DWORD; fn returns a pointer.  The block keeps
 * it for join, and is shared by the thread and its handle's owner: the
 * last of the two to let go frees it. */
struct weft__thread {
	HANDLE handle;
	void *(*fn)(void *);
	void *arg;
	void *ret;
	_Atomic int refs;
};

static void release(struct weft__thread *t)
{
	if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
		weft_free(t);
}

static unsigned __stdcall start(void *arg)
{
	struct weft__thread *t = arg;

	t->ret = t->fn(t->arg);
	release(t);
	return 0;
}

int weft_thread_create(weft_thread_t *out, void *(*fn)(void *), void *arg, unsigned flags)
{
	struct weft__thread *t = weft_malloc(sizeof *t);
	uintptr_t h;

	(void)flags; /* no signals to block */
	if (t == NULL)
		return WEFT_ENOMEM;
	t->fn = fn;
	t->arg = arg;
	t->ret = NULL;
	atomic_init(&t->refs, 2);
	h = _beginthreadex(NULL, 0, start, t, 0, NULL);
	if (h == 0) {
		weft_free(t);
		return -EAGAIN;
	}
	t->handle = (HANDLE)h;
	*out = t;
	return 0;
}

int weft_thread_join(weft_thread_t t, void **ret)
{
	if (WaitForSingleObject(t->handle, INFINITE) != WAIT_OBJECT_0)
		return -EINVAL;
	CloseHandle(t->handle);
	if (ret != NULL)
		*ret = t->ret;
	release(t);
	return 0;
}

int weft_thread_detach(weft_thread_t t)
{
	CloseHandle(t->handle);
	release(t);
	return 0;
}

weft_thread_id_t weft_thread_self(void)
{
	return GetCurrentThreadId();
}

int weft_thread_equal(weft_thread_id_t a, weft_thread_id_t b)
{
	return a == b;
}

int weft_thread_ncpu(void)
{
	DWORD_PTR mine, all;
	int n = 0;

	if (GetProcessAffinityMask(GetCurrentProcess(), &mine, &all))
		for (; mine; mine &= mine - 1)
			n++;
	return n > 0 ? n : 1;
}

void weft_thread_sleep_ns(uint64_t ns)
{
	uint64_t ms = (ns + 999999u) / 1000000u;

	Sleep(ms >= INFINITE ? INFINITE - 1 : (DWORD)ms);
}

int weft_mutex_init(weft_mutex_t *m)
{
	InitializeSRWLock(m);
	return 0;
}

void weft_mutex_destroy(weft_mutex_t *m)
{
	(void)m; /* an SRW lock holds no resources */
}

void weft_mutex_lock(weft_mutex_t *m)
{
	AcquireSRWLockExclusive(m);
}

int weft_mutex_trylock(weft_mutex_t *m)
{
	return TryAcquireSRWLockExclusive(m) != 0;
}

void weft_mutex_unlock(weft_mutex_t *m)
{
	ReleaseSRWLockExclusive(m);
}

int weft_cond_init(weft_cond_t *c)
{
	InitializeConditionVariable(c);
	return 0;
}

void weft_cond_destroy(weft_cond_t *c)
{
	(void)c;
}

void weft_cond_wait(weft_cond_t *c, weft_mutex_t *m)
{
	SleepConditionVariableSRW(c, m, INFINITE, 0);
}

int weft_cond_timedwait(weft_cond_t *c, weft_mutex_t *m, uint64_t timeout_ns)
{
	/* Milliseconds, rounded up so that a short timeout still waits; the
	 * largest finite value is INFINITE - 1.  The wait counts on the
	 * interrupt-time clock, which wall-clock changes do not move. */
	uint64_t ms = timeout_ns / 1000000u + (timeout_ns % 1000000u != 0);
	DWORD d = ms >= INFINITE ? INFINITE - 1 : (DWORD)ms;

	if (SleepConditionVariableSRW(c, m, d, 0))
		return 0;
	return GetLastError() == ERROR_TIMEOUT ? WEFT_ETIMEOUT : 0;
}

void weft_cond_signal(weft_cond_t *c)
{
	WakeConditionVariable(c);
}

void weft_cond_broadcast(weft_cond_t *c)
{
	WakeAllConditionVariable(c);
}

static BOOL CALLBACK run_once(PINIT_ONCE o, void *fn, void **ctx)
{
	(void)o;
	(void)ctx;
	((void (*)(void))fn)();
	return TRUE;
}

void weft_once(weft_once_t *o, void (*fn)(void))
{
	/* A function pointer through void *: fine on every Windows ABI. */
	InitOnceExecuteOnce(o, run_once, (void *)fn, NULL);
}
