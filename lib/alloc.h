/* Allocation hook.  Every allocation in lib/ and src/ goes through these so
 * tests can make the Nth one fail.  Thread-safe. */
#ifndef WEFT_ALLOC_H
#define WEFT_ALLOC_H

#include <stddef.h>

/* malloc/calloc/realloc/free through the hook; NULL on failure. */
void *weft_malloc(size_t n);
void *weft_calloc(size_t n, size_t size);
void *weft_realloc(void *p, size_t n);
void weft_free(void *p);

/* Make the nth allocation from now fail (1 = the next one); 0 disables.
 * Test use only. */
void weft_alloc_fail_after(long n);

#endif
