/* A size-class allocator for the small objects of one thread.
 *
 * The launcher gives each worker's Lua state one slab.  A Lua program's
 * memory is mostly small blocks of a few sizes (a coroutine is a 218-byte
 * state and a 720-byte stack; call frames, closures, short strings and
 * table parts are tens of bytes), allocated and freed in great numbers.
 * The C library's allocator adds a header to every block and rounds it up
 * (8 to 24 bytes each, about 5% of a sleeping coroutine) and, being
 * shared by every thread, does work a single-threaded caller does not
 * need.  Here a block of up to WEFT_SLAB_MAX bytes takes its size rounded
 * up to 16 bytes, with no header, from 64 KiB chunks; a freed block goes
 * to the free list of its class, where the next allocation of that class
 * takes it.  Larger blocks go to the C library.
 *
 * What this costs: memory freed into a class stays in that class until
 * the slab is destroyed (a program that once held a million coroutines
 * keeps their stacks' memory for coroutines to come, as a pool would).
 * It never moves between classes or goes back to the system.
 *
 * Not thread-safe: one slab belongs to one thread at a time (a Lua state
 * is only ever run by one thread at a time).  The chunks come from
 * malloc, not from the allocation hook of alloc.h, so that the hook's
 * fail-after countdown counts the runtime's own allocations only, as it
 * did when Lua states used the C library directly. */
#ifndef WEFT_SLAB_H
#define WEFT_SLAB_H

#include <stddef.h>

/* Blocks up to this size come from the size classes (unless the slab is
 * direct, below). */
#define WEFT_SLAB_MAX 1024

typedef struct weft_slab weft_slab_t;

/* A new, empty slab, or NULL for want of memory.  With `direct` true (and
 * always in a build with AddressSanitizer, so that it sees every block)
 * every block comes from the C library: for memory checkers such as
 * valgrind, which cannot see inside chunks. */
weft_slab_t *weft_slab_new(int direct);

/* Free every chunk and the slab itself.  Every block allocated from it
 * (small ones) becomes invalid; large blocks still allocated are the
 * caller's to free first (weft_slab_realloc with nsize 0).  NULL is
 * ignored. */
void weft_slab_destroy(weft_slab_t *s);

/* Allocate, resize or free a block, with the contract of Lua's lua_Alloc:
 * `p` NULL allocates nsize bytes (osize is ignored); otherwise osize must
 * be the size the block was last allocated or resized with; nsize 0
 * frees p and returns NULL.  Returns the block (which may have moved, its
 * first min(osize, nsize) bytes kept), or NULL when memory is lacking,
 * in which case p is untouched.  Shrinking a block of up to WEFT_SLAB_MAX
 * bytes never fails (when no smaller block is to be had, the block stays
 * where it is, and goes to the smaller class when it is freed). */
void *weft_slab_realloc(weft_slab_t *s, void *p, size_t osize, size_t nsize);

/* The largest block served from the size classes: WEFT_SLAB_MAX, or 0
 * for a direct slab. */
size_t weft_slab_max(const weft_slab_t *s);

/* Refuse memory past `bytes` (chunks and large blocks together; 0: no
 * limit, the default): allocations that would need more return NULL.
 * For tests of what happens when memory runs out. */
void weft_slab_limit(weft_slab_t *s, size_t bytes);

/* Figures for tests and diagnostics. */
typedef struct weft_slab_stats {
	size_t chunk_bytes; /* taken from the C library in chunks */
	size_t free_bytes;  /* in the free lists */
	size_t large_bytes; /* in blocks larger than WEFT_SLAB_MAX, live */
} weft_slab_stats_t;

void weft_slab_stats(const weft_slab_t *s, weft_slab_stats_t *out);

#endif
