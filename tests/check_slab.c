/* lib/slab.c: blocks never overlap and keep their contents across every
 * kind of resize; freed blocks are reused by class; nothing is lost when a
 * chunk's tail is left over; running out of memory leaves the slab and
 * the block intact, and shrinking a small block never fails. */
#include "slab.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "checkutil.h"

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(seed * 31 + i * 7);
}

static void expect(const unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		ck_assert_uint_eq(p[i], (unsigned char)(seed * 31 + i * 7));
}

/* Built with AddressSanitizer, every slab is direct: the tests of the
 * size classes have nothing to test. */
#define NEED_CLASSES(s)                                                   \
	do {                                                              \
		if (weft_slab_max(s) == 0) {                              \
			weft_slab_destroy(s);                             \
			return;                                           \
		}                                                         \
	} while (0)

START_TEST(test_alloc_free_reuse)
{
	weft_slab_t *s = weft_slab_new(0);
	ck_assert_ptr_nonnull(s);
	NEED_CLASSES(s);
	/* Lua passes a type tag as osize when allocating: ignored. */
	void *a = weft_slab_realloc(s, NULL, 5, 100);
	void *b = weft_slab_realloc(s, NULL, 0, 100);
	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	ck_assert_ptr_ne(a, b);
	ck_assert_uint_eq((uintptr_t)a % 16, 0);
	ck_assert_uint_eq((uintptr_t)b % 16, 0);
	ck_assert_ptr_null(weft_slab_realloc(s, a, 100, 0));
	/* Same class (97..112 bytes): the freed block comes back. */
	ck_assert_ptr_eq(weft_slab_realloc(s, NULL, 0, 110), a);
	weft_slab_stats_t st;
	weft_slab_stats(s, &st);
	ck_assert_uint_eq(st.free_bytes, 0);
	ck_assert_ptr_null(weft_slab_realloc(s, b, 100, 0));
	weft_slab_stats(s, &st);
	ck_assert_uint_eq(st.free_bytes, 112);
	/* Another class does not take it. */
	void *c = weft_slab_realloc(s, NULL, 0, 64);
	ck_assert_ptr_ne(c, b);
	/* Zero bytes: nothing. */
	ck_assert_ptr_null(weft_slab_realloc(s, NULL, 0, 0));
	weft_slab_destroy(s);
	weft_slab_destroy(NULL);
}
END_TEST

/* Every transition: small to small (same class, larger, smaller), small
 * to large, large to large, large to small, keeps min(old, new) bytes. */
START_TEST(test_resize_keeps_contents)
{
	static const size_t steps[] = {1,   16,  17,   100,  1024, 1025, 5000, 70000,
				       900, 33,  2000, 1024, 16,   3,    1};
	weft_slab_t *s = weft_slab_new(0);
	size_t n = 8;
	unsigned char *p = weft_slab_realloc(s, NULL, 0, n);
	fill(p, n, 1);
	for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
		size_t m = steps[i];
		unsigned char *q = weft_slab_realloc(s, p, n, m);
		ck_assert_ptr_nonnull(q);
		expect(q, n < m ? n : m, (unsigned)i + 1);
		fill(q, m, (unsigned)i + 2);
		p = q, n = m;
	}
	weft_slab_stats_t st;
	weft_slab_stats(s, &st);
	ck_assert_uint_eq(st.large_bytes, 0);
	weft_slab_realloc(s, p, n, 0);
	weft_slab_destroy(s);
}
END_TEST

/* Many blocks of mixed sizes, freed and resized at random: each keeps its
 * own pattern (no two overlap), the large ones are accounted exactly, and
 * with everything freed all carved memory is in the free lists. */
START_TEST(test_random_no_overlap)
{
	enum { N = 4000, ROUNDS = 60000 };
	static unsigned char *blk[N];
	static size_t len[N];
	static unsigned seed[N];
	/* _i: 0 with size classes, 1 direct (every block from malloc). */
	weft_slab_t *s = weft_slab_new(_i);
	const size_t max = weft_slab_max(s);
	ck_assert_uint_eq(max, _i ? 0 : weft_slab_max(s));
	unsigned r = 12345;
	size_t large = 0;
	for (int k = 0; k < ROUNDS; k++) {
		r = r * 1103515245u + 12345u;
		unsigned i = (r >> 8) % N;
		size_t m = (r >> 20) % 64 == 0 ? 1025 + (r >> 4) % 3000 : 1 + (r >> 12) % 1024;
		if (blk[i]) {
			expect(blk[i], len[i], seed[i]);
			if (len[i] > max)
				large -= len[i];
			if ((r >> 30) & 1) {
				weft_slab_realloc(s, blk[i], len[i], 0);
				blk[i] = NULL;
				continue;
			}
			unsigned char *q = weft_slab_realloc(s, blk[i], len[i], m);
			ck_assert_ptr_nonnull(q);
			expect(q, len[i] < m ? len[i] : m, seed[i]);
			blk[i] = q;
		} else {
			blk[i] = weft_slab_realloc(s, NULL, 0, m);
			ck_assert_ptr_nonnull(blk[i]);
		}
		len[i] = m;
		seed[i] = (unsigned)k;
		fill(blk[i], m, seed[i]);
		if (m > max)
			large += m;
	}
	weft_slab_stats_t st;
	weft_slab_stats(s, &st);
	ck_assert_uint_eq(st.large_bytes, large);
	for (int i = 0; i < N; i++) {
		if (!blk[i])
			continue;
		expect(blk[i], len[i], seed[i]);
		weft_slab_realloc(s, blk[i], len[i], 0);
		blk[i] = NULL;
	}
	weft_slab_stats(s, &st);
	ck_assert_uint_eq(st.large_bytes, 0);
	/* All carved memory is free again: chunk bytes less the headers and
	 * the newest chunk's uncarved tail.  Each chunk gives at least 90%
	 * of itself to blocks. */
	if (max == 0) {
		ck_assert_uint_eq(st.chunk_bytes, 0);
		ck_assert_uint_eq(st.free_bytes, 0);
		weft_slab_destroy(s);
		return;
	}
	ck_assert_uint_gt(st.chunk_bytes, 0);
	ck_assert_uint_ge(st.free_bytes, st.chunk_bytes - st.chunk_bytes / 10 - 65536);
	ck_assert_uint_le(st.free_bytes, st.chunk_bytes);
	weft_slab_destroy(s);
}
END_TEST

/* A chunk's leftover tail goes to a free list: allocating 1024-byte
 * blocks until a second chunk is needed, then blocks of the tail's size,
 * reuses the tail rather than carving a third chunk. */
START_TEST(test_chunk_tail_reused)
{
	weft_slab_t *s = weft_slab_new(0);
	NEED_CLASSES(s);
	weft_slab_stats_t st;
	int n = 0;
	do {
		ck_assert_ptr_nonnull(weft_slab_realloc(s, NULL, 0, 1000));
		n++;
		weft_slab_stats(s, &st);
	} while (st.chunk_bytes == 65536);
	ck_assert_uint_eq(st.chunk_bytes, 2 * 65536);
	/* The first chunk's tail: less than one 1008-byte block, at least
	 * one grain (its size: what 1008-byte blocks leave of the chunk). */
	size_t tail = st.free_bytes;
	ck_assert_uint_gt(tail, 0);
	ck_assert_uint_lt(tail, 1008);
	void *p = weft_slab_realloc(s, NULL, 0, tail);
	weft_slab_stats(s, &st);
	ck_assert_uint_eq(st.free_bytes, 0);
	ck_assert_uint_eq(st.chunk_bytes, 2 * 65536);
	weft_slab_realloc(s, p, tail, 0);
	weft_slab_destroy(s);
}
END_TEST

START_TEST(test_out_of_memory)
{
	weft_slab_t *s = weft_slab_new(0);
	NEED_CLASSES(s);
	weft_slab_limit(s, 65536 + 4096);
	/* Fill the one chunk the limit allows with 512-byte blocks. */
	void *blocks[200];
	int n = 0;
	for (;;) {
		void *p = weft_slab_realloc(s, NULL, 0, 512);
		if (!p)
			break;
		ck_assert_int_lt(n, 200);
		fill(p, 512, (unsigned)n);
		blocks[n++] = p;
	}
	ck_assert_int_ge(n, 120);
	/* And what is left of the chunk with the smallest blocks. */
	int small = 0;
	while (weft_slab_realloc(s, NULL, 0, 16))
		ck_assert_int_lt(++small, 32);
	/* Growing in place of a class that has no free block fails, and the
	 * block is untouched. */
	ck_assert_ptr_null(weft_slab_realloc(s, blocks[0], 512, 600));
	expect(blocks[0], 512, 0);
	/* Large blocks count against the limit too. */
	ck_assert_ptr_null(weft_slab_realloc(s, NULL, 0, 8192));
	ck_assert_ptr_null(weft_slab_realloc(s, blocks[1], 512, 8192));
	expect(blocks[1], 512, 1);
	void *big = weft_slab_realloc(s, NULL, 0, 2048);
	ck_assert_ptr_nonnull(big);
	/* Shrinking a small block into a class with nothing free keeps the
	 * block where it is; it goes to the smaller class when freed. */
	void *q = weft_slab_realloc(s, blocks[2], 512, 40);
	ck_assert_ptr_eq(q, blocks[2]);
	expect(q, 40, 2);
	weft_slab_realloc(s, q, 40, 0);
	ck_assert_ptr_eq(weft_slab_realloc(s, NULL, 0, 48), q);
	/* Large to small, with nothing free in the small class and no chunk
	 * to carve: fails, the large block is kept. */
	fill(big, 2048, 9);
	ck_assert_ptr_null(weft_slab_realloc(s, big, 2048, 200));
	expect(big, 2048, 9);
	weft_slab_realloc(s, big, 2048, 0);
	weft_slab_stats_t st;
	weft_slab_stats(s, &st);
	ck_assert_uint_eq(st.large_bytes, 0);
	/* Freeing makes room again. */
	weft_slab_realloc(s, blocks[3], 512, 0);
	ck_assert_ptr_eq(weft_slab_realloc(s, NULL, 0, 500), blocks[3]);
	weft_slab_destroy(s);
}
END_TEST

static Suite *slab_suite(void)
{
	Suite *s = suite_create("slab");
	TCase *tc = tcase_create("core");
	tcase_add_test(tc, test_alloc_free_reuse);
	tcase_add_test(tc, test_resize_keeps_contents);
	tcase_add_loop_test(tc, test_random_no_overlap, 0, 2);
	tcase_add_test(tc, test_chunk_tail_reused);
	tcase_add_test(tc, test_out_of_memory);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(slab_suite)
