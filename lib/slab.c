/* Size classes over 64 KiB chunks, for one thread's small blocks (see
 * slab.h for why and what it costs). */
#include "slab.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GRAIN 16
#define NCLASS (WEFT_SLAB_MAX / GRAIN)
#define CHUNK_SIZE (64 * 1024)

typedef struct freeblock {
	struct freeblock *next;
} freeblock_t;

/* A chunk: this header, then blocks carved from the front. */
typedef struct chunk {
	struct chunk *next;
	/* Keeps the blocks 16-byte aligned, as malloc's are. */
	max_align_t _align;
} chunk_t;

struct weft_slab {
	freeblock_t *free[NCLASS]; /* free[c]: blocks of (c + 1) * GRAIN bytes */
	char *bump, *end;          /* what is left of the newest chunk */
	chunk_t *chunks;
	size_t limit; /* 0: none */
	size_t max;   /* blocks above this size go to the C library */
	weft_slab_stats_t st;
};

/* The class of a size from 1 to WEFT_SLAB_MAX. */
static inline unsigned cls(size_t n)
{
	return (unsigned)((n - 1) / GRAIN);
}

static inline size_t class_size(unsigned c)
{
	return ((size_t)c + 1) * GRAIN;
}

/* Under AddressSanitizer every block goes to the C library, where the
 * sanitizer sees each one: a use after free in a Lua state must not hide
 * in a recycled block. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

weft_slab_t *weft_slab_new(int direct)
{
	weft_slab_t *s = calloc(1, sizeof *s);
	if (s)
		s->max = direct || SANITIZED ? 0 : WEFT_SLAB_MAX;
	return s;
}

void weft_slab_destroy(weft_slab_t *s)
{
	if (!s)
		return;
	for (chunk_t *c = s->chunks, *next; c; c = next) {
		next = c->next;
		free(c);
	}
	free(s);
}

static void push(weft_slab_t *s, void *p, unsigned c)
{
	freeblock_t *b = p;
	b->next = s->free[c];
	s->free[c] = b;
	s->st.free_bytes += class_size(c);
}

/* A new chunk to carve from.  What was left of the last one (a multiple
 * of GRAIN) goes to the free list of its size, so nothing is lost. */
/* Whether `more` bytes may be taken from the C library. */
static int within(const weft_slab_t *s, size_t more)
{
	return !s->limit || s->st.chunk_bytes + s->st.large_bytes + more <= s->limit;
}

static void *sysalloc(weft_slab_t *s, void *p, size_t osize, size_t nsize)
{
	if (nsize > osize && !within(s, nsize - osize))
		return NULL;
	void *q = realloc(p, nsize);
	if (q)
		s->st.large_bytes = s->st.large_bytes - osize + nsize;
	return q;
}

static int grow(weft_slab_t *s)
{
	chunk_t *c = within(s, CHUNK_SIZE) ? malloc(CHUNK_SIZE) : NULL;
	if (!c)
		return -1;
	size_t left = (size_t)(s->end - s->bump);
	if (left >= GRAIN)
		push(s, s->bump, cls(left));
	c->next = s->chunks;
	s->chunks = c;
	s->bump = (char *)(c + 1);
	s->end = (char *)c + CHUNK_SIZE;
	s->st.chunk_bytes += CHUNK_SIZE;
	return 0;
}

/* A block of class c, or NULL. */
static void *take(weft_slab_t *s, unsigned c)
{
	freeblock_t *b = s->free[c];
	if (b) {
		s->free[c] = b->next;
		s->st.free_bytes -= class_size(c);
		return b;
	}
	size_t n = class_size(c);
	if ((size_t)(s->end - s->bump) < n && grow(s) < 0)
		return NULL;
	void *p = s->bump;
	s->bump += n;
	return p;
}

void *weft_slab_realloc(weft_slab_t *s, void *p, size_t osize, size_t nsize)
{
	if (p == NULL) {
		if (nsize == 0)
			return NULL;
		if (nsize > s->max)
			return sysalloc(s, NULL, 0, nsize);
		return take(s, cls(nsize));
	}
	if (osize > s->max) {
		if (nsize > s->max)
			return sysalloc(s, p, osize, nsize);
		void *q = NULL;
		if (nsize > 0) {
			q = take(s, cls(nsize));
			if (!q)
				return NULL;
			memcpy(q, p, nsize);
		}
		free(p);
		s->st.large_bytes -= osize;
		return q;
	}
	unsigned oc = cls(osize);
	if (nsize == 0) {
		push(s, p, oc);
		return NULL;
	}
	if (nsize <= s->max) {
		unsigned nc = cls(nsize);
		if (nc == oc)
			return p;
		void *q = take(s, nc);
		if (!q)
			/* Growing fails; shrinking keeps the block, which holds
			 * nsize bytes and more. */
			return nc < oc ? p : NULL;
		memcpy(q, p, nsize < osize ? nsize : osize);
		push(s, p, oc);
		return q;
	}
	void *q = sysalloc(s, NULL, 0, nsize);
	if (!q)
		return NULL;
	memcpy(q, p, osize);
	push(s, p, oc);
	return q;
}

size_t weft_slab_max(const weft_slab_t *s)
{
	return s->max;
}

void weft_slab_limit(weft_slab_t *s, size_t bytes)
{
	s->limit = bytes;
}

void weft_slab_stats(const weft_slab_t *s, weft_slab_stats_t *out)
{
	*out = s->st;
}
