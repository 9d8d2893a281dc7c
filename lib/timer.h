/* Hierarchical timer wheel: 6 levels of 64 slots, 1 tick = 1 ms.  Timers are
 * intrusive (no allocation), insert and cancel are O(1), and advancing costs
 * O(expired + cascaded).  A wheel belongs to one worker: not thread-safe. */
#ifndef WEFT_TIMER_H
#define WEFT_TIMER_H

#include <stddef.h>
#include <stdint.h>

#define WEFT_WHEEL_LEVELS 6
#define WEFT_WHEEL_SLOTS 64
#define WEFT_TICK_NEVER UINT64_MAX

typedef struct weft_timer {
	struct weft_timer *_next;
	struct weft_timer **_pprev; /* NULL when not armed */
	uint64_t expires;           /* tick the timer is due at (read-only) */
} weft_timer_t;

typedef struct weft_wheel {
	uint64_t _now; /* ticks up to and including _now are processed */
	size_t _count;
	uint64_t _occupied[WEFT_WHEEL_LEVELS]; /* bit per non-empty slot */
	weft_timer_t *_slot[WEFT_WHEEL_LEVELS][WEFT_WHEEL_SLOTS];
	weft_timer_t *_due; /* timers added at or before _now */
} weft_wheel_t;

/* Start an empty wheel at tick `now`. */
void weft_wheel_init(weft_wheel_t *wh, uint64_t now);

/* Arm t to fire at tick `expires`.  A tick at or before the wheel's current
 * tick fires on the next advance.  Expiries past the wheel's range, 63 * 2^30
 * ticks (about 2.1 years) after the current tick, fire at its end, and
 * t->expires then holds that tick.  t must not be armed. */
void weft_wheel_add(weft_wheel_t *wh, weft_timer_t *t, uint64_t expires);

/* Disarm t.  Idempotent; t may be unarmed or already fired. */
void weft_wheel_cancel(weft_wheel_t *wh, weft_timer_t *t);

/* Initialise t as not armed (needed once before the first add/cancel). */
static inline void weft_timer_init(weft_timer_t *t)
{
	t->_next = NULL;
	t->_pprev = NULL;
	t->expires = 0;
}

/* Whether t is armed. */
static inline int weft_timer_armed(const weft_timer_t *t)
{
	return t->_pprev != NULL;
}

/* Move the wheel to tick `now` (never backwards) and detach every timer with
 * expires <= now.  They are returned as a list linked through _next, in
 * expiry order (stable for timers added in the past), each disarmed; the count goes to *n if n is not NULL.
 * The caller may re-add them. */
weft_timer_t *weft_wheel_advance(weft_wheel_t *wh, uint64_t now, size_t *n);

/* The same, and *tail gets the address of the last fired timer's _next
 * (NULL when none fired), for appending the list to another. */
weft_timer_t *weft_wheel_advance_tail(weft_wheel_t *wh, uint64_t now, size_t *n,
				      weft_timer_t ***tail);

/* A tick at or before the earliest armed expiry (exact for timers in level
 * 0, a lower bound otherwise), or WEFT_TICK_NEVER when the wheel is empty.
 * Sleeping until this tick and advancing never fires a timer late. */
uint64_t weft_wheel_next(const weft_wheel_t *wh);

/* Number of armed timers. */
static inline size_t weft_wheel_count(const weft_wheel_t *wh)
{
	return wh->_count;
}

#endif
