/* Unit tests for lib/timer.c: hand-picked cases first, then a property test
 * that runs the wheel beside a reference binary heap. */
#include "timer.h"

#include "checkutil.h"

#include <inttypes.h>
#include <stdbool.h>

/* The wheel's reach past the current tick, as timer.c defines it: 63
 * top-level slots of 2^30 ticks. */
#define RANGE (((uint64_t)WEFT_WHEEL_SLOTS - 1) << (6 * (WEFT_WHEEL_LEVELS - 1)))

/* Check's ck_assert records its location through a file on every success,
 * which costs a system call.  The property test asserts millions of times,
 * so it only calls into Check on failure. */
#define REQUIRE(cond, ...)                                                                         \
	do {                                                                                       \
		if (!(cond))                                                                       \
			ck_abort_msg("failed: " #cond " -- " __VA_ARGS__);                         \
	} while (0)

static uint64_t sat_add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* The expiry the wheel should store for a request made at tick `now`. */
static uint64_t clamp_expiry(uint64_t now, uint64_t expires)
{
	uint64_t end = sat_add(now, RANGE);
	return expires < end ? expires : end;
}

/* Walks the wheel's private fields and checks everything the code relies
 * on: bitmaps match the slots, back links match forward links, each timer
 * sits where its expiry says, and the count adds up. */
static void check_invariants(const weft_wheel_t *wh)
{
	size_t total = 0;

	for (weft_timer_t *const *pp = &wh->_due; *pp != NULL; pp = &(*pp)->_next) {
		REQUIRE((*pp)->_pprev == pp, "due list back link");
		REQUIRE((*pp)->expires <= wh->_now, "due timer in the future");
		total++;
	}
	for (int level = 0; level < WEFT_WHEEL_LEVELS; level++) {
		unsigned sh = (unsigned)(6 * level);
		for (unsigned slot = 0; slot < WEFT_WHEEL_SLOTS; slot++) {
			weft_timer_t *const *head = &wh->_slot[level][slot];
			bool bit = (wh->_occupied[level] >> slot) & 1;
			REQUIRE(bit == (*head != NULL), "bitmap level %d slot %u", level, slot);
			for (weft_timer_t *const *pp = head; *pp != NULL; pp = &(*pp)->_next) {
				const weft_timer_t *t = *pp;
				REQUIRE(t->_pprev == pp, "back link level %d slot %u", level, slot);
				REQUIRE(t->expires > wh->_now, "stale timer level %d", level);
				REQUIRE(((t->expires >> sh) & 63) == slot, "wrong slot");
				uint64_t ahead = (t->expires >> sh) - (wh->_now >> sh);
				REQUIRE(ahead >= 1 && ahead <= 63,
				        "level %d: %" PRIu64 " slots ahead", level, ahead);
				total++;
			}
		}
	}
	REQUIRE(total == weft_wheel_count(wh), "count %zu, found %zu", weft_wheel_count(wh), total);
}

/* Walks a fired list and checks it is well formed; returns its length. */
static size_t collect(weft_timer_t *list, size_t n, uint64_t now)
{
	size_t len = 0;

	for (weft_timer_t *t = list; t != NULL; t = t->_next) {
		REQUIRE(!weft_timer_armed(t), "fired timer still armed");
		REQUIRE(t->expires <= now, "fired early: %" PRIu64 " > %" PRIu64, t->expires, now);
		len++;
	}
	REQUIRE(len == n, "list has %zu, reported %zu", len, n);
	return len;
}

/* Timers whose position in an array is their identity. */
#define NT 64
static weft_timer_t tm[NT];

static void init_all(void)
{
	for (int i = 0; i < NT; i++)
		weft_timer_init(&tm[i]);
}

static bool in_list(const weft_timer_t *list, const weft_timer_t *t)
{
	for (; list != NULL; list = list->_next)
		if (list == t)
			return true;
	return false;
}

static bool near_any(const uint64_t *delay, int nd, uint64_t d)
{
	for (int i = 0; i < nd; i++)
		if (d + 70 >= delay[i] && d <= delay[i] + 70)
			return true;
	return false;
}

/* Arms timers across every level and level boundary, then steps through
 * time: one tick at a time early on and around each expiry, strides of 61
 * ticks elsewhere.  Each timer must fire at exactly its tick, and next()
 * must never be late. */
static void step_and_check(uint64_t start)
{
	static const uint64_t delay[] = {1,   2,    62,   63,   64,    65,     127,    128,
	                                 129, 4095, 4096, 4097, 70000, 262143, 262144, 262145};
	const int nd = (int)(sizeof delay / sizeof delay[0]);
	weft_wheel_t wh;

	init_all();
	weft_wheel_init(&wh, start);
	for (int i = 0; i < nd; i++)
		weft_wheel_add(&wh, &tm[i], start + delay[i]);
	ck_assert_uint_eq(weft_wheel_count(&wh), nd);

	int fired = 0;
	uint64_t d = 0;
	while (d < 262146 + 64) {
		d += d < 8192 || near_any(delay, nd, d) ? 1 : 61;
		uint64_t now = start + d;
		uint64_t next = weft_wheel_next(&wh);
		size_t n;
		weft_timer_t *list = weft_wheel_advance(&wh, now, &n);
		collect(list, n, now);
		for (int i = 0; i < nd; i++) {
			bool due = delay[i] == d;
			REQUIRE(in_list(list, &tm[i]) == due, "timer %d at tick %" PRIu64, i, now);
			if (due)
				REQUIRE(next <= now, "next() %" PRIu64 " after expiry", next);
		}
		fired += (int)n;
	}
	ck_assert_int_eq(fired, nd);
	ck_assert_uint_eq(weft_wheel_count(&wh), 0);
	ck_assert_uint_eq(weft_wheel_next(&wh), WEFT_TICK_NEVER);
	check_invariants(&wh);
}

START_TEST(test_basic_order)
{
	step_and_check(0);
}
END_TEST

START_TEST(test_level0_exact)
{
	weft_wheel_t wh;

	init_all();
	weft_wheel_init(&wh, 1000);
	ck_assert_uint_eq(weft_wheel_next(&wh), WEFT_TICK_NEVER);
	weft_wheel_add(&wh, &tm[0], 1050);
	ck_assert_uint_eq(weft_wheel_next(&wh), 1050);
	weft_wheel_add(&wh, &tm[1], 1010);
	ck_assert_uint_eq(weft_wheel_next(&wh), 1010);
	ck_assert(weft_timer_armed(&tm[1]));

	size_t n;
	weft_timer_t *list = weft_wheel_advance(&wh, 1009, &n);
	ck_assert_ptr_null(list);
	ck_assert_uint_eq(n, 0);
	list = weft_wheel_advance(&wh, 1010, &n);
	ck_assert_ptr_eq(list, &tm[1]);
	ck_assert_ptr_null(tm[1]._next);
	ck_assert(!weft_timer_armed(&tm[1]));
	ck_assert_uint_eq(weft_wheel_next(&wh), 1050);
	ck_assert_ptr_null(weft_wheel_advance(&wh, 1049, NULL));
	ck_assert_ptr_eq(weft_wheel_advance(&wh, 1050, NULL), &tm[0]);
	check_invariants(&wh);
}
END_TEST

/* Timers in one tick come back together, as one list. */
START_TEST(test_same_tick)
{
	weft_wheel_t wh;

	init_all();
	weft_wheel_init(&wh, 0);
	for (int i = 0; i < 10; i++)
		weft_wheel_add(&wh, &tm[i], 5000);
	for (int i = 10; i < 20; i++)
		weft_wheel_add(&wh, &tm[i], 5001);
	size_t n;
	weft_timer_t *list = weft_wheel_advance(&wh, 5000, &n);
	ck_assert_uint_eq(collect(list, n, 5000), 10);
	for (int i = 0; i < 10; i++)
		ck_assert(in_list(list, &tm[i]));
	ck_assert_uint_eq(weft_wheel_count(&wh), 10);
	ck_assert_uint_eq(weft_wheel_next(&wh), 5001);
	check_invariants(&wh);
}
END_TEST

START_TEST(test_cancel)
{
	weft_wheel_t wh;

	init_all();
	weft_wheel_init(&wh, 0);

	/* Never armed: nothing happens. */
	weft_wheel_cancel(&wh, &tm[0]);
	ck_assert_uint_eq(weft_wheel_count(&wh), 0);

	/* Head, middle and tail of one slot's list, then the list empties and
	 * next() must move on to the later slot. */
	for (int i = 0; i < 4; i++)
		weft_wheel_add(&wh, &tm[i], 40);
	weft_wheel_add(&wh, &tm[4], 50);
	weft_wheel_cancel(&wh, &tm[3]); /* head: added last */
	weft_wheel_cancel(&wh, &tm[1]);
	weft_wheel_cancel(&wh, &tm[0]); /* tail */
	ck_assert(!weft_timer_armed(&tm[3]));
	ck_assert_uint_eq(weft_wheel_count(&wh), 2);
	check_invariants(&wh);
	ck_assert_uint_eq(weft_wheel_next(&wh), 40);
	weft_wheel_cancel(&wh, &tm[2]);
	ck_assert_uint_eq(weft_wheel_next(&wh), 50);
	check_invariants(&wh);

	/* Twice is the same as once. */
	weft_wheel_cancel(&wh, &tm[2]);
	ck_assert_uint_eq(weft_wheel_count(&wh), 1);

	/* A higher level slot and the due list. */
	weft_wheel_add(&wh, &tm[5], 1u << 20);
	weft_wheel_add(&wh, &tm[6], 0);
	ck_assert_uint_eq(weft_wheel_count(&wh), 3);
	weft_wheel_cancel(&wh, &tm[5]);
	weft_wheel_cancel(&wh, &tm[6]);
	ck_assert_uint_eq(weft_wheel_count(&wh), 1);
	check_invariants(&wh);
	ck_assert_uint_eq(weft_wheel_next(&wh), 50);

	/* After firing the timer is disarmed: cancel is a no-op, also while
	 * the fired list is still being walked. */
	size_t n;
	weft_timer_t *list = weft_wheel_advance(&wh, 1u << 21, &n);
	ck_assert_ptr_eq(list, &tm[4]);
	weft_wheel_cancel(&wh, &tm[4]);
	weft_wheel_cancel(&wh, &tm[4]);
	ck_assert_uint_eq(weft_wheel_count(&wh), 0);
	ck_assert_uint_eq(weft_wheel_next(&wh), WEFT_TICK_NEVER);

	/* Cancelled timers never fire. */
	ck_assert_ptr_null(weft_wheel_advance(&wh, UINT64_MAX, &n));
	ck_assert_uint_eq(n, 0);
	check_invariants(&wh);
}
END_TEST

START_TEST(test_add_past)
{
	weft_wheel_t wh;

	init_all();
	weft_wheel_init(&wh, 1000);
	weft_wheel_add(&wh, &tm[0], 1000);
	weft_wheel_add(&wh, &tm[1], 10);
	weft_wheel_add(&wh, &tm[2], 0);
	weft_wheel_add(&wh, &tm[3], 1001);
	ck_assert_uint_eq(tm[1].expires, 10);
	ck_assert_uint_eq(weft_wheel_count(&wh), 4);
	/* next() reports the real earliest expiry, in the past. */
	ck_assert_uint_eq(weft_wheel_next(&wh), 0);
	check_invariants(&wh);

	/* Advancing to the same tick fires them; a backwards tick is the
	 * same tick. */
	size_t n;
	weft_timer_t *list = weft_wheel_advance(&wh, 999, &n);
	ck_assert_uint_eq(collect(list, n, 1000), 3);
	ck_assert(in_list(list, &tm[0]) && in_list(list, &tm[1]) && in_list(list, &tm[2]));
	ck_assert_uint_eq(weft_wheel_next(&wh), 1001);

	/* Re-adding from the fired list while walking it (saving _next first)
	 * is allowed. */
	weft_timer_t *next;
	for (weft_timer_t *t = list; t != NULL; t = next) {
		next = t->_next;
		weft_wheel_add(&wh, t, 1000);
	}
	ck_assert_uint_eq(weft_wheel_count(&wh), 4);
	list = weft_wheel_advance(&wh, 1000, &n);
	ck_assert_uint_eq(collect(list, n, 1000), 3);
	list = weft_wheel_advance(&wh, 1001, &n);
	ck_assert_ptr_eq(list, &tm[3]);
	check_invariants(&wh);
}
END_TEST

START_TEST(test_large_jump)
{
	weft_wheel_t wh;

	init_all();
	weft_wheel_init(&wh, 7);
	for (int i = 0; i < 40; i++)
		weft_wheel_add(&wh, &tm[i], 7 + (1ull << i) + (uint64_t)i);
	ck_assert_uint_eq(tm[35].expires, 7 + (1ull << 35) + 35);
	ck_assert_uint_eq(tm[39].expires, clamp_expiry(7, 7 + (1ull << 39)));

	/* One call over 10^9 ticks fires exactly the timers in that span. */
	size_t n;
	uint64_t now = 7 + 1000000000;
	weft_timer_t *list = weft_wheel_advance(&wh, now, &n);
	collect(list, n, now);
	for (int i = 0; i < 40; i++)
		ck_assert(in_list(list, &tm[i]) == (tm[i].expires <= now));
	check_invariants(&wh);

	/* The rest, 10^9 at a time. */
	while (weft_wheel_count(&wh) > 0) {
		uint64_t next = weft_wheel_next(&wh);
		ck_assert_uint_gt(next, now);
		now += 1000000000;
		list = weft_wheel_advance(&wh, now, &n);
		collect(list, n, now);
		for (weft_timer_t *t = list; t != NULL; t = t->_next)
			ck_assert_uint_gt(t->expires, now - 1000000000);
		check_invariants(&wh);
	}

	/* An empty wheel and a nearly empty one jump huge gaps cheaply: a
	 * step-per-tick loop would not finish. */
	for (int i = 0; i < 10000; i++) {
		weft_wheel_add(&wh, &tm[0], now + 123456789);
		now += 1000000000;
		ck_assert_ptr_eq(weft_wheel_advance(&wh, now, NULL), &tm[0]);
	}
	weft_wheel_add(&wh, &tm[1], now + RANGE);
	ck_assert_ptr_eq(weft_wheel_advance(&wh, UINT64_MAX / 2, NULL), &tm[1]);
	ck_assert_ptr_null(weft_wheel_advance(&wh, UINT64_MAX, NULL));
	check_invariants(&wh);
}
END_TEST

START_TEST(test_far_future)
{
	static const uint64_t starts[] = {0, 5, (1ull << 30) - 1, (1ull << 36) - 2, 1ull << 40};
	weft_wheel_t wh;

	for (size_t k = 0; k < sizeof starts / sizeof starts[0]; k++) {
		uint64_t s = starts[k];
		init_all();
		weft_wheel_init(&wh, s);
		weft_wheel_add(&wh, &tm[0], s + RANGE);
		weft_wheel_add(&wh, &tm[1], s + RANGE + 1);
		weft_wheel_add(&wh, &tm[2], s + (1ull << 40));
		weft_wheel_add(&wh, &tm[3], UINT64_MAX);
		weft_wheel_add(&wh, &tm[4], s + RANGE - 1);
		for (int i = 0; i < 4; i++)
			ck_assert_uint_eq(tm[i].expires, s + RANGE);
		ck_assert_uint_eq(tm[4].expires, s + RANGE - 1);
		check_invariants(&wh);

		size_t n;
		ck_assert_ptr_null(weft_wheel_advance(&wh, s + RANGE - 2, &n));
		ck_assert_uint_eq(weft_wheel_next(&wh), s + RANGE - 1);
		ck_assert_ptr_eq(weft_wheel_advance(&wh, s + RANGE - 1, &n), &tm[4]);
		ck_assert_uint_eq(weft_wheel_next(&wh), s + RANGE);
		weft_timer_t *list = weft_wheel_advance(&wh, s + RANGE, &n);
		ck_assert_uint_eq(collect(list, n, s + RANGE), 4);
		check_invariants(&wh);
	}

	/* Near the end of time the clamp saturates instead of wrapping. */
	init_all();
	weft_wheel_init(&wh, UINT64_MAX - 100);
	weft_wheel_add(&wh, &tm[0], UINT64_MAX);
	weft_wheel_add(&wh, &tm[1], UINT64_MAX - 1);
	ck_assert_uint_eq(tm[0].expires, UINT64_MAX);
	ck_assert_uint_le(weft_wheel_next(&wh), UINT64_MAX - 1);
	ck_assert_ptr_eq(weft_wheel_advance(&wh, UINT64_MAX - 1, NULL), &tm[1]);
	ck_assert_ptr_eq(weft_wheel_advance(&wh, UINT64_MAX, NULL), &tm[0]);
	weft_wheel_add(&wh, &tm[2], UINT64_MAX);
	ck_assert_uint_eq(weft_wheel_next(&wh), UINT64_MAX);
	ck_assert_ptr_eq(weft_wheel_advance(&wh, UINT64_MAX, NULL), &tm[2]);
	check_invariants(&wh);
}
END_TEST

/* Starts right below boundaries where the low bits of the tick wrap. */
static const uint64_t wrap_starts[] = {
    0,
    63,
    64,
    4095,
    4096,
    262143,
    (1ull << 32) - 5,
    (1ull << 36) - 7,
    (1ull << 38) - 3,
    (1ull << 62) - 1,
    UINT64_MAX - (1ull << 52),
    UINT64_MAX - (1ull << 38),
};
#define NWRAP ((int)(sizeof wrap_starts / sizeof wrap_starts[0]))

START_TEST(test_wrap_steps)
{
	step_and_check(wrap_starts[_i]);
}
END_TEST

/* The reference: a binary min-heap keyed by expiry, with each timer's heap
 * index kept so that cancel can remove from the middle. */
#define POOL 2048

static struct {
	weft_timer_t t;
	uint64_t key;
	int pos;    /* index in heap[], or -1 */
	bool fired; /* seen in the latest fired list */
} pool[POOL];
static int heap[POOL];
static int heap_n;

static bool heap_less(int a, int b)
{
	return pool[heap[a]].key < pool[heap[b]].key;
}

static void heap_swap(int a, int b)
{
	int t = heap[a];
	heap[a] = heap[b];
	heap[b] = t;
	pool[heap[a]].pos = a;
	pool[heap[b]].pos = b;
}

static void heap_up(int i)
{
	while (i > 0 && heap_less(i, (i - 1) / 2)) {
		heap_swap(i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void heap_down(int i)
{
	for (;;) {
		int m = i, l = 2 * i + 1, r = 2 * i + 2;
		if (l < heap_n && heap_less(l, m))
			m = l;
		if (r < heap_n && heap_less(r, m))
			m = r;
		if (m == i)
			return;
		heap_swap(i, m);
		i = m;
	}
}

static void heap_push(int id, uint64_t key)
{
	pool[id].key = key;
	pool[id].pos = heap_n;
	heap[heap_n++] = id;
	heap_up(heap_n - 1);
}

static void heap_remove(int id)
{
	int i = pool[id].pos;
	pool[id].pos = -1;
	heap_n--;
	if (i == heap_n)
		return;
	heap[i] = heap[heap_n];
	pool[heap[i]].pos = i;
	heap_up(i);
	heap_down(i);
}

static uint64_t rng_state;

/* splitmix64: small, fast and good enough to drive a test. */
static uint64_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Uniform over the bit length, so small values are as likely as huge ones. */
static uint64_t rnd_log(unsigned maxbits)
{
	unsigned bits = (unsigned)(rnd() % (maxbits + 1));
	return bits == 0 ? 0 : rnd() & (UINT64_MAX >> (64 - bits));
}

static int id_of(const weft_timer_t *t)
{
	return (int)((const char *)t - (const char *)&pool[0].t) / (int)sizeof pool[0];
}

static void check_next(const weft_wheel_t *wh)
{
	uint64_t next = weft_wheel_next(wh);
	REQUIRE(weft_wheel_count(wh) == (size_t)heap_n, "count %zu, reference %d",
	        weft_wheel_count(wh), heap_n);
	if (heap_n == 0)
		REQUIRE(next == WEFT_TICK_NEVER, "empty wheel, next %" PRIu64, next);
	else
		REQUIRE(next <= pool[heap[0]].key, "next %" PRIu64 " after earliest %" PRIu64, next,
		        pool[heap[0]].key);
}

static void check_advance(weft_wheel_t *wh, uint64_t now)
{
	size_t n;
	weft_timer_t *list = weft_wheel_advance(wh, now, &n);

	collect(list, n, now);
	uint64_t prev = 0;
	for (weft_timer_t *t = list; t != NULL; t = t->_next) {
		int id = id_of(t);
		/* In expiry order: the loop wakes threads in deadline order. */
		REQUIRE(t->expires >= prev, "out of order at %" PRIu64, now);
		prev = t->expires;
		REQUIRE(id >= 0 && id < POOL && &pool[id].t == t, "foreign timer");
		REQUIRE(pool[id].pos >= 0, "timer %d fired but was not armed", id);
		REQUIRE(!pool[id].fired, "timer %d fired twice", id);
		REQUIRE(t->expires == pool[id].key, "timer %d expires changed", id);
		pool[id].fired = true;
	}
	size_t expected = 0;
	while (heap_n > 0 && pool[heap[0]].key <= now) {
		int id = heap[0];
		REQUIRE(pool[id].fired, "timer %d due at %" PRIu64 " missed at %" PRIu64, id,
		        pool[id].key, now);
		pool[id].fired = false;
		heap_remove(id);
		expected++;
	}
	REQUIRE(n == expected, "fired %zu, reference %zu at %" PRIu64, n, expected, now);
	check_next(wh);
	/* Nothing left is due, so a sleeper must be able to make progress. */
	if (heap_n > 0)
		REQUIRE(weft_wheel_next(wh) > now, "next() not in the future after advance");
}

/* Mostly short steps, so that timers pile up across all levels between the
 * rare long ones that sweep them away. */
static uint64_t advance_step(void)
{
	unsigned r = (unsigned)(rnd() % 1000);
	if (r < 750)
		return rnd() % 70;
	if (r < 940)
		return rnd() % 8192;
	if (r < 993)
		return rnd() % (1u << 20);
	if (r < 998)
		return rnd_log(37);
	if (r < 999)
		return 1000000000;
	return rnd_log(40);
}

#define OPS 50000

START_TEST(test_property)
{
	uint64_t now = wrap_starts[_i % NWRAP];
	weft_wheel_t wh;

	rng_state = 0x5eed0000u + (uint64_t)_i;
	heap_n = 0;
	for (int i = 0; i < POOL; i++) {
		weft_timer_init(&pool[i].t);
		pool[i].pos = -1;
		pool[i].fired = false;
	}
	weft_wheel_init(&wh, now);

	for (int op = 0; op < OPS; op++) {
		unsigned r = (unsigned)(rnd() % 100);
		if (r < 50) {
			int id = (int)(rnd() % POOL);
			if (pool[id].pos >= 0)
				continue;
			uint64_t want;
			if (rnd() % 16 == 0) {
				uint64_t back = rnd_log(12);
				want = back < now ? now - back : 0;
			} else {
				want = sat_add(now, rnd_log(40));
			}
			weft_wheel_add(&wh, &pool[id].t, want);
			heap_push(id, clamp_expiry(now, want));
			REQUIRE(weft_timer_armed(&pool[id].t), "add did not arm");
			REQUIRE(pool[id].t.expires == pool[id].key,
			        "expires %" PRIu64 ", expected %" PRIu64, pool[id].t.expires,
			        pool[id].key);
			check_next(&wh);
		} else if (r < 62) {
			if (heap_n == 0)
				continue;
			int id = heap[rnd() % (uint64_t)heap_n];
			weft_wheel_cancel(&wh, &pool[id].t);
			heap_remove(id);
			REQUIRE(!weft_timer_armed(&pool[id].t), "cancel did not disarm");
			if (rnd() % 4 == 0)
				weft_wheel_cancel(&wh, &pool[id].t);
			check_next(&wh);
		} else if (r < 64) {
			/* A random timer, often unarmed: must be harmless. */
			int id = (int)(rnd() % POOL);
			weft_wheel_cancel(&wh, &pool[id].t);
			if (pool[id].pos >= 0)
				heap_remove(id);
			check_next(&wh);
		} else {
			now = sat_add(now, advance_step());
			check_advance(&wh, now);
		}
		if (op % 4096 == 0)
			check_invariants(&wh);
	}
	check_invariants(&wh);

	/* Drain, then the wheel must be empty. */
	check_advance(&wh, UINT64_MAX);
	ck_assert_int_eq(heap_n, 0);
	ck_assert_uint_eq(weft_wheel_count(&wh), 0);
	check_invariants(&wh);
}
END_TEST

static Suite *timer_suite(void)
{
	Suite *s = suite_create("timer");
	struct {
		const char *name;
		const TTest *fn;
	} cases[] = {
	    {"basic_order", test_basic_order}, {"level0_exact", test_level0_exact},
	    {"same_tick", test_same_tick},     {"cancel", test_cancel},
	    {"add_past", test_add_past},       {"large_jump", test_large_jump},
	    {"far_future", test_far_future},
	};

	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		TCase *tc = tcase_create(cases[i].name);
		tcase_add_test(tc, cases[i].fn);
		suite_add_tcase(s, tc);
	}

	TCase *tc = tcase_create("wrap_steps");
	tcase_add_loop_test(tc, test_wrap_steps, 0, NWRAP);
	suite_add_tcase(s, tc);

	/* Each start tick once, plus extra seeds from the first ones. */
	tc = tcase_create("property");
	tcase_set_timeout(tc, 30);
	tcase_add_loop_test(tc, test_property, 0, NWRAP + 4);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(timer_suite)
