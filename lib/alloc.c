/* Allocation hook: the C allocator plus a countdown that tests use to make
 * one chosen allocation fail. */
#include "alloc.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

/* Allocations left before the one that fails; 0 means none is armed.  Any
 * thread may allocate, so the countdown is atomic. */
static atomic_long countdown;

/* Whether this allocation is the one chosen to fail.  A compare-and-swap
 * loop rather than a plain decrement, so that racing threads never push
 * the counter below zero: exactly one allocation fails, then the hook
 * disarms itself. */
static int fail_now(void)
{
	long c = atomic_load_explicit(&countdown, memory_order_relaxed);

	while (c > 0) {
		if (atomic_compare_exchange_weak_explicit(
		        &countdown, &c, c - 1, memory_order_relaxed, memory_order_relaxed)) {
			if (c == 1) {
				errno = ENOMEM;
				return 1;
			}
			return 0;
		}
	}
	return 0;
}

void weft_alloc_fail_after(long n)
{
	atomic_store(&countdown, n > 0 ? n : 0);
}

/* Zero-byte requests ask the C library for one byte, so that NULL from
 * these functions always means failure (malloc(0) may return NULL). */
void *weft_malloc(size_t n)
{
	if (fail_now())
		return NULL;
	return malloc(n ? n : 1);
}

void *weft_calloc(size_t n, size_t size)
{
	/* An overflowing product is the caller's mistake, not an allocation
	 * attempt, so it is refused before it can use up the countdown. */
	if (size && n > SIZE_MAX / size) {
		errno = ENOMEM;
		return NULL;
	}
	if (fail_now())
		return NULL;
	if (n == 0 || size == 0)
		return calloc(1, 1);
	return calloc(n, size);
}

void *weft_realloc(void *p, size_t n)
{
	/* C17 leaves realloc(p, 0) implementation-defined (and C23 makes it
	 * undefined); state what we do: free p, return NULL. */
	if (n == 0) {
		free(p);
		return NULL;
	}
	if (fail_now())
		return NULL; /* p is left untouched, as realloc would */
	return realloc(p, n);
}

void weft_free(void *p)
{
	free(p);
}
