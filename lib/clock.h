/* Monotonic clock.  Any thread. */
#ifndef WEFT_CLOCK_H
#define WEFT_CLOCK_H

#include <stdint.h>

/* Nanoseconds on CLOCK_MONOTONIC. */
uint64_t weft_clock_ns(void);

/* Seconds since the epoch on the wall clock (it may jump). */
double weft_clock_wall(void);

/* Seconds on the same clock, as weft.clock() shows it. */
double weft_clock(void);

/* Seconds (absolute weft_clock() value) to nanoseconds, saturating: NaN,
 * negatives give 0, values beyond ~292 years give UINT64_MAX ("never"). */
uint64_t weft_clock_s2ns(double s);

#endif
