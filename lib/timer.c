/* Hierarchical timer wheel.
 *
 * Level L has 64 slots of 64^L ticks each.  A timer expiring at e > now sits
 * at the lowest level L where its slot number e >> 6L is at most 63 slots
 * ahead of the current one, now >> 6L, in slot (e >> 6L) % 64.  The slots are
 * indexed by absolute tick bits, so the wheel never has to rotate: it is the
 * current tick that moves.  Because a level never holds anything 64 slots
 * ahead, the slot for the current tick is always empty, and every timer in a
 * slot shares the same "event" tick: the first tick of that slot's span, when
 * the slot is next reached.  At level 0 that is the expiry itself; above it,
 * the slot is cascaded (its timers are placed again relative to the event
 * tick, which puts them lower) and the ones expiring exactly then fire.
 *
 * Advancing jumps from one event tick to the next, found from the occupancy
 * bitmaps, so an advance over any gap costs O(fired + cascaded) and not one
 * step per tick.  Each timer cascades at most five times over its life. */
#include "timer.h"

#include <stdbool.h>

_Static_assert(WEFT_WHEEL_SLOTS == 64, "the occupancy bitmaps are one uint64_t per level");
_Static_assert(WEFT_WHEEL_LEVELS >= 1 && 6 * WEFT_WHEEL_LEVELS < 64, "level spans must fit");

#define SLOT_BITS 6
#define SLOT_MASK ((uint64_t)WEFT_WHEEL_SLOTS - 1)
#define TOP_SHIFT (SLOT_BITS * (WEFT_WHEEL_LEVELS - 1))

/* The furthest a timer may be armed ahead of the current tick.  Sixty-three
 * top-level slots, not sixty-four, keeps the current slot of the top level
 * empty like all the others, whatever the alignment of the current tick. */
#define RANGE (SLOT_MASK << TOP_SHIFT)

static unsigned shift_of(int level)
{
	return (unsigned)(SLOT_BITS * level);
}

/* Rotate right; the mask keeps the shift in range when r is 0. */
static uint64_t rotr64(uint64_t x, unsigned r)
{
	return (x >> r) | (x << ((64 - r) & 63));
}

static void link_head(weft_timer_t **head, weft_timer_t *t)
{
	t->_next = *head;
	if (*head != NULL)
		(*head)->_pprev = &t->_next;
	*head = t;
	t->_pprev = head;
}

static void place(weft_wheel_t *wh, weft_timer_t *t)
{
	uint64_t e = t->expires;
	int level = 0;

	/* The clamp in weft_wheel_add guarantees the top level always fits. */
	while (level < WEFT_WHEEL_LEVELS - 1 &&
	       (e >> shift_of(level)) - (wh->_now >> shift_of(level)) > SLOT_MASK)
		level++;

	unsigned slot = (unsigned)((e >> shift_of(level)) & SLOT_MASK);
	link_head(&wh->_slot[level][slot], t);
	wh->_occupied[level] |= (uint64_t)1 << slot;
}

/* The earliest event tick among the occupied slots, or WEFT_TICK_NEVER.  An
 * event can itself be at WEFT_TICK_NEVER near the end of time, so callers
 * that must tell the two apart check the bitmaps too. */
static uint64_t next_event(const weft_wheel_t *wh)
{
	uint64_t best = WEFT_TICK_NEVER;

	for (int level = 0; level < WEFT_WHEEL_LEVELS; level++) {
		uint64_t occ = wh->_occupied[level];
		if (occ == 0)
			continue;
		unsigned sh = shift_of(level);
		uint64_t base = wh->_now >> sh;
		/* After rotating, bit i stands for the slot i + 1 ahead of the
		 * current one; the current slot itself is always empty.  The
		 * tick cannot overflow: it is at or before the expiry of every
		 * timer in that slot. */
		uint64_t ahead = rotr64(occ, (unsigned)((base + 1) & SLOT_MASK));
		uint64_t tick = (base + 1 + (uint64_t)__builtin_ctzll(ahead)) << sh;
		if (tick < best)
			best = tick;
	}
	return best;
}

static bool is_empty(const weft_wheel_t *wh)
{
	uint64_t any = 0;

	for (int level = 0; level < WEFT_WHEEL_LEVELS; level++)
		any |= wh->_occupied[level];
	return any == 0;
}

void weft_wheel_init(weft_wheel_t *wh, uint64_t now)
{
	*wh = (weft_wheel_t){._now = now};
}

void weft_wheel_add(weft_wheel_t *wh, weft_timer_t *t, uint64_t expires)
{
	uint64_t end = wh->_now > UINT64_MAX - RANGE ? UINT64_MAX : wh->_now + RANGE;

	t->expires = expires < end ? expires : end;
	wh->_count++;
	if (t->expires <= wh->_now)
		link_head(&wh->_due, t);
	else
		place(wh, t);
}

void weft_wheel_cancel(weft_wheel_t *wh, weft_timer_t *t)
{
	weft_timer_t **pprev = t->_pprev;

	if (pprev == NULL)
		return;
	*pprev = t->_next;
	if (t->_next != NULL)
		t->_next->_pprev = pprev;

	/* A slot empties only when its last timer was also its first, so
	 * _pprev points at the slot head itself.  Its address tells which slot
	 * it was, which saves storing the level and slot in every timer.  The
	 * range test compares integers, because ordering pointers into
	 * different objects (the due list head, a timer's _next) is undefined
	 * in C. */
	uintptr_t p = (uintptr_t)pprev;
	uintptr_t lo = (uintptr_t)&wh->_slot[0][0];
	uintptr_t hi = (uintptr_t)&wh->_slot[WEFT_WHEEL_LEVELS - 1][WEFT_WHEEL_SLOTS - 1];
	if (*pprev == NULL && p >= lo && p <= hi) {
		size_t i = (size_t)(pprev - &wh->_slot[0][0]);
		wh->_occupied[i / WEFT_WHEEL_SLOTS] &= ~((uint64_t)1 << (i % WEFT_WHEEL_SLOTS));
	}

	t->_next = NULL;
	t->_pprev = NULL;
	wh->_count--;
}

/* Merge sort of a list linked through _next, by expiry, stable.  Only the
 * due list needs it, which is short (timers added in the past since the
 * last advance). */
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

weft_timer_t *weft_wheel_advance(weft_wheel_t *wh, uint64_t now, size_t *n)
{
	return weft_wheel_advance_tail(wh, now, n, NULL);
}

weft_timer_t *weft_wheel_advance_tail(weft_wheel_t *wh, uint64_t now, size_t *n,
				      weft_timer_t ***tailp)
{
	weft_timer_t *fired = NULL, **tail = &fired;
	size_t nfired = 0;

	/* Going backwards would break the placement invariant, so an earlier
	 * tick only flushes the due list. */
	if (now < wh->_now)
		now = wh->_now;

	/* The due list expires at or before _now, so before every event: it
	 * comes first, sorted.  Only the back links need clearing to mark
	 * its timers disarmed. */
	fired = sort_by_expiry(wh->_due);
	wh->_due = NULL;
	for (weft_timer_t *t = fired; t != NULL; t = t->_next) {
		t->_pprev = NULL;
		tail = &t->_next;
		nfired++;
	}

	/* Events are taken in tick order, and every timer fired at an event
	 * expires exactly at its tick (a level-0 slot spans one tick; a
	 * cascaded slot fires only what expires at its first tick), so
	 * appending keeps the list in expiry order without sorting. */
	while (!is_empty(wh)) {
		uint64_t tick = next_event(wh);
		if (tick > now)
			break;

		/* Every slot whose event is this tick is detached before any
		 * timer is placed again, so a list is never walked while it
		 * grows.  Timers placed again go to later events anyway. */
		weft_timer_t *list[WEFT_WHEEL_LEVELS];
		for (int level = 0; level < WEFT_WHEEL_LEVELS; level++) {
			unsigned sh = shift_of(level);
			unsigned slot = (unsigned)((tick >> sh) & SLOT_MASK);
			uint64_t bit = (uint64_t)1 << slot;
			list[level] = NULL;
			if ((tick & (((uint64_t)1 << sh) - 1)) != 0 ||
			    (wh->_occupied[level] & bit) == 0)
				continue;
			list[level] = wh->_slot[level][slot];
			wh->_slot[level][slot] = NULL;
			wh->_occupied[level] &= ~bit;
		}

		wh->_now = tick;
		for (int level = 0; level < WEFT_WHEEL_LEVELS; level++) {
			weft_timer_t *next;
			for (weft_timer_t *t = list[level]; t != NULL; t = next) {
				next = t->_next;
				if (t->expires <= tick) {
					t->_pprev = NULL;
					*tail = t;
					tail = &t->_next;
					nfired++;
				} else {
					place(wh, t);
				}
			}
		}
	}
	*tail = NULL;
	if (tailp != NULL)
		*tailp = nfired ? tail : NULL;

	/* No event lies in (_now, now], so every remaining timer keeps the
	 * same slot and event tick relative to the new current tick. */
	wh->_now = now;
	wh->_count -= nfired;
	if (n != NULL)
		*n = nfired;
	return fired;
}

uint64_t weft_wheel_next(const weft_wheel_t *wh)
{
	/* Due timers expire at or before _now, before any event.  The list is
	 * only non-empty between an add in the past and the next advance, so
	 * walking it for the exact minimum is cheap. */
	if (wh->_due != NULL) {
		uint64_t best = WEFT_TICK_NEVER;
		for (const weft_timer_t *t = wh->_due; t != NULL; t = t->_next)
			if (t->expires < best)
				best = t->expires;
		return best;
	}
	return next_event(wh);
}
