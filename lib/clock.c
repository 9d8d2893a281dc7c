/* Monotonic clock: what every platform shares.  weft_clock_ns itself is in
 * clock-posix.c or clock-win32.c. */
#include "clock.h"

double weft_clock(void)
{
	return (double)weft_clock_ns() / 1e9;
}

/* 2^63 ns, about 292 years: every finite result stays below it, so callers
 * may subtract two of them as signed 64-bit values, and UINT64_MAX stays a
 * distinct "never". */
#define LIMIT_NS 9223372036854775808.0

uint64_t weft_clock_s2ns(double s)
{
	double ns = s * 1e9;

	/* Written as !(ns > 0) so that NaN lands here too. */
	if (!(ns > 0))
		return 0;
	if (ns >= LIMIT_NS)
		return UINT64_MAX;
	/* Round to nearest, so that s2ns(weft_clock()) gives back the
	 * nanosecond count it came from.  Adding 0.5 before truncating would
	 * be wrong above 2^52, where x + 0.5 is a tie that rounds to even;
	 * the fraction computed here is exact instead. */
	uint64_t t = (uint64_t)ns;
	if (ns - (double)t >= 0.5)
		t++;
	return t;
}
