/* The monotonic clock (clock.h) on Windows: the performance counter, which
 * never goes back and does not follow wall-clock changes. */
#include "clock.h"

#include <windows.h>

uint64_t weft_clock_ns(void)
{
	static _Atomic uint64_t freq; /* counts per second, fixed at boot */
	LARGE_INTEGER c;
	uint64_t f = freq, n;

	if (f == 0) {
		LARGE_INTEGER q;

		QueryPerformanceFrequency(&q);
		f = (uint64_t)q.QuadPart;
		freq = f;
	}
	QueryPerformanceCounter(&c);
	n = (uint64_t)c.QuadPart;
	/* Whole seconds and the remainder apart: n * 1e9 alone would
	 * overflow after a few days at 10 MHz. */
	return n / f * 1000000000u + n % f * 1000000000u / f;
}

double weft_clock_wall(void)
{
	FILETIME ft;
	uint64_t t;

	/* 100 ns units since 1601; the epoch is 11644473600 s later. */
	GetSystemTimeAsFileTime(&ft);
	t = (uint64_t)ft.dwHighDateTime << 32 | ft.dwLowDateTime;
	return (double)(t - 116444736000000000u) / 1e7;
}
