/* Serialization of Lua values for passing them between workers.
 *
 * Each worker has its own lua_State and nothing Lua may cross from one
 * state to another, so spawn arguments and results and channel messages
 * travel as bytes: lw_serialize turns values of one state into a blob,
 * the blob moves (it is plain memory, owned by whoever holds it), and
 * lw_deserialize rebuilds the values in another state.
 *
 * What may cross: nil, booleans, integers and floats (the subtype is kept,
 * and every bit pattern: NaN, infinities, -0.0, math.mininteger), strings
 * (any bytes), plain tables (no metatable) of those, Lua functions whose
 * only upvalue is _ENV when LW_SER_FUNCTIONS is given, and userdata of
 * the types registered with lw_serial_register (handles).
 *
 * Sharing is preserved: a table, function or handle that appears several
 * times in one call is written once and rebuilt once, so the receiver sees
 * the same object at every place, and cycles (t.self = t) work.  Sharing
 * is per call: two calls never share tables or handles.  Functions are
 * the exception: a state caches the functions it loads by their bytecode,
 * so the same function received twice is the same closure (it has no
 * upvalue but _ENV, so nothing can tell, and a job run many times is
 * loaded once).  Nesting is limited to
 * LW_SER_MAXDEPTH tables, on both sides, so that neither the C stack nor a
 * corrupt blob can make the recursion run away.
 *
 * The blob is meant for this process: its floats and lengths are written
 * in a fixed byte order, but functions are Lua bytecode, which is only
 * loadable by the same Lua build, and handles are process-local
 * payloads.
 *
 * Threads: every function taking a lua_State runs on the thread that owns
 * it.  A blob may be handed to any thread.  lw_serial_register may be
 * called from any thread. */
#ifndef WEFT_LSERIAL_H
#define WEFT_LSERIAL_H

#include <stddef.h>
#include <stdint.h>

#include "lweft.h"

/* Allow Lua functions (see lw_serialize).  On the receiving side it
 * allows loading them: the bytecode is trusted (checksummed against
 * accidental corruption, but Lua does not verify bytecode), so give it
 * only for blobs made by this process. */
#define LW_SER_FUNCTIONS 0x1

/* The deepest nesting of tables accepted. */
#define LW_SER_MAXDEPTH 100

/* Longest metatable name a handle type may have. */
#define LW_SER_NAMEMAX 63

/* Owned bytes.  Start from a zeroed blob; free it with lw_blob_free
 * whatever the outcome. */
typedef struct lw_blob {
	char *data;
	size_t len, cap;
} lw_blob_t;

/* Free the bytes of b and zero it (b itself is the caller's).  Any
 * thread. */
void lw_blob_free(lw_blob_t *b);

/* Serialize the n values at idx..idx+n-1 (n may be 0), appending them to
 * *out.  flags: 0 or LW_SER_FUNCTIONS.  Returns 0 with the stack as it
 * was, or -1 with one error message pushed (nothing else left on the
 * stack; out->len is back to its value at entry).  Never raises: an
 * allocation failure gives -1 and "out of memory". */
int lw_serialize(lua_State *L, int idx, int n, int flags, lw_blob_t *out);

/* Push the values serialized in data[0..len): returns their count, or -1
 * with one error message pushed.  Corrupt or truncated input is an error,
 * never a crash: every length is checked against the input.  flags: 0 or
 * LW_SER_FUNCTIONS (without it a function in the data is an error).
 * Never raises. */
int lw_deserialize(lua_State *L, const char *data, size_t len, int flags);

/* Handles: a userdata type that may cross registers a pack/unpack pair
 * under its metatable name (at most LW_SER_NAMEMAX bytes), which is the
 * tag on the wire.  pack(L, idx, out) writes 16 bytes describing the
 * userdata at idx; unpack(L, in) pushes an object rebuilt from them.
 * Each returns 0, or -1 with a message pushed; either may also raise (the
 * serializer calls them protected).  They run on the thread that owns L
 * and must leave the stack as they found it (plus the pushed object or
 * message).
 *
 * pack is called once per distinct userdata in a call and unpack once per
 * pack, but a blob may be dropped without ever being unpacked, and a
 * failing call may have packed some handles before the error: pack must
 * therefore not move ownership (take no reference that only unpack would
 * release).
 *
 * Registration is process-wide, at most 16 types.  Registering a name
 * again replaces its functions (each state opening the module registers
 * the same pair).  Returns 0, or -1 when the table is full or the
 * arguments are invalid.  Any thread. */
typedef int (*lw_pack_fn)(lua_State *L, int idx, uint64_t out[2]);
typedef int (*lw_unpack_fn)(lua_State *L, const uint64_t in[2]);
int lw_serial_register(const char *tname, lw_pack_fn pack, lw_unpack_fn unpack);

/* Module part: adds to the table at the top (weft.core) the test hooks
 * _pack(...) -> string (functions allowed), _pack_data(...) (functions
 * refused), _unpack(s) -> ... and _unpack_data(s) (each returns nil,
 * message on failure), _handle(a, b) (a registered test handle type),
 * and _alloc_fail_after(n) (weft_alloc_fail_after). */
void lw_open_serial(lua_State *L, lw_state_t *S);

#endif
