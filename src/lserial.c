/* The serializer: Lua values to bytes and back, for passing them between
 * workers (what crosses, and why, is in lserial.h).
 *
 * Wire format, version 1.  A blob is a version byte, a varint count, then
 * that many values.  A value is a tag byte and what the tag says:
 *
 *   0x00 nil         0x01 false         0x02 true
 *   0x03 integer     zigzag varint, so that small negatives stay short
 *   0x04 float       8 bytes, IEEE 754 binary64, little-endian: copied
 *                    bit for bit, so NaN, infinities and -0.0 survive
 *   0x05 string      varint length, the bytes
 *   0x06 table       varint narray, varint nhash, narray values (keys
 *                    1..narray), nhash key/value pairs
 *   0x07 reference   varint k: the k-th table, function or handle of this
 *                    blob (from 1, in order of first appearance)
 *   0x08 function    u32 length, u64 FNV-1a of the bytecode, the bytecode
 *                    (lua_dump, not stripped); all little-endian
 *   0x09 handle      u8 name length, the metatable name, 2 x u64 payload
 *   0x20..0x3f       a string of 0..31 bytes (they follow)
 *   0x80..0xff       an integer 0..127
 *
 * Varints are LEB128: 7 bits a byte, least significant first, at most 10
 * bytes.  The short forms exist because small integers and short strings
 * (keys, field values) are most of what programs send.
 *
 * Tables carry their two sizes so that the receiver can size them in one
 * allocation; the decoder checks each size against the bytes that are
 * left (every value takes at least one byte), so a corrupt size can never
 * make it allocate more than a small multiple of the input.
 *
 * Both directions run inside lua_pcall: Lua may raise on any allocation,
 * and a handle's pack/unpack may raise too, and the contract is that
 * neither entry point ever does.  Inside, every failure is a plain
 * lua_error with the message, and the entry point hands it back. */
#include "config.h"

#include <limits.h>
#include <string.h>

#include "alloc.h"
#include "lserial.h"
#include "lweft.h"

/* The format assumes Lua's default number types: 64-bit integers and
 * doubles (a 32-bit Lua build would need a different encoding). */
_Static_assert(sizeof(lua_Integer) == 8, "lserial needs 64-bit lua_Integer");
_Static_assert(sizeof(lua_Number) == 8, "lserial needs double lua_Number");

#define FORMAT_VERSION 1

enum {
	T_NIL = 0x00,
	T_FALSE = 0x01,
	T_TRUE = 0x02,
	T_INT = 0x03,
	T_FLOAT = 0x04,
	T_STR = 0x05,
	T_TABLE = 0x06,
	T_REF = 0x07,
	T_FUNC = 0x08,
	T_HANDLE = 0x09,
	T_SHORTSTR = 0x20, /* up to 0x3f */
	T_FIXINT = 0x80,   /* up to 0xff */
};

#define SHORTSTR_MAX 31
#define FIXINT_MAX   127
#define FUNC_HEADER  12 /* u32 length + u64 checksum */

#define STR_(x)   #x
#define STR(x)    STR_(x)
#define MSG_DEPTH "nesting too deep (more than " STR(LW_SER_MAXDEPTH) " levels)"
#define MSG_OOM   "out of memory"

/* The "out of memory" message, anchored in the registry by lw_open_serial:
 * once interned, pushing it again allocates nothing, which matters exactly
 * when memory has run out. */
static const char OOM_KEY = 'M';
/* Metatable of the box that holds a test hook's blob (see pack_with). */
static const char BOX_KEY = 'B';

/* ------------------------------------------------------------------ */
/* Handle types: a small process-wide table.  Workers register at module
 * open and look types up on every handle packed or unpacked; both are
 * rare enough that one mutex is simpler than anything lock-free. */

#define MAX_TYPES 16

typedef struct htype {
	char name[LW_SER_NAMEMAX + 1];
	size_t len;
	lw_pack_fn pack;
	lw_unpack_fn unpack;
} htype_t;

static htype_t types[MAX_TYPES];
static int ntypes;
static weft_mutex_t types_lock = WEFT_MUTEX_INIT;

int lw_serial_register(const char *tname, lw_pack_fn pack, lw_unpack_fn unpack)
{
	if (!tname || !pack || !unpack)
		return -1;
	size_t len = strlen(tname);
	if (len == 0 || len > LW_SER_NAMEMAX)
		return -1;
	int rc = 0;
	weft_mutex_lock(&types_lock);
	int i;
	for (i = 0; i < ntypes; i++)
		if (types[i].len == len && memcmp(types[i].name, tname, len) == 0)
			break;
	if (i == ntypes) {
		if (ntypes == MAX_TYPES) {
			rc = -1;
			goto out;
		}
		memcpy(types[i].name, tname, len + 1);
		types[i].len = len;
		ntypes++;
	}
	types[i].pack = pack;
	types[i].unpack = unpack;
out:
	weft_mutex_unlock(&types_lock);
	return rc;
}

/* Copy the entry for name[0..len) into *h; 0 when there is none.  A copy,
 * so that the caller runs pack/unpack without holding the lock. */
static int find_type(const char *name, size_t len, htype_t *h)
{
	int found = 0;
	weft_mutex_lock(&types_lock);
	for (int i = 0; i < ntypes; i++) {
		if (types[i].len == len && memcmp(types[i].name, name, len) == 0) {
			*h = types[i];
			found = 1;
			break;
		}
	}
	weft_mutex_unlock(&types_lock);
	return found;
}

/* ------------------------------------------------------------------ */
/* Shared helpers */

/* Raise msg (inside the protected call). */
static _Noreturn void fail(lua_State *L, const char *msg)
{
	lua_pushstring(L, msg);
	lua_error(L);
	__builtin_unreachable();
}

/* After a failed lua_pcall: leave exactly one string on the stack. */
static void error_message(lua_State *L, int status)
{
	if (status == LUA_ERRMEM) {
		lua_pop(L, 1);
		if (lua_rawgetp(L, LUA_REGISTRYINDEX, &OOM_KEY) != LUA_TSTRING) {
			lua_pop(L, 1);
			lua_pushliteral(L, MSG_OOM);
		}
	} else if (lua_type(L, -1) != LUA_TSTRING) {
		/* A pack/unpack function raised something that is not a
		 * message; do not hand the caller a foreign object. */
		lua_pop(L, 1);
		lua_pushliteral(L, "error in a handle's pack/unpack function");
	}
}

/* FNV-1a, 64 bits: it catches any single changed byte (each step is a
 * bijection of the state), which is what guarding against a corrupted
 * blob needs; it is not a defence against a forger. */
static uint64_t fnv1a(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325u;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3u;
	}
	return h;
}

static void store_u32(unsigned char *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static void store_u64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t load_u32(const unsigned char *p)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

static uint64_t load_u64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

void lw_blob_free(lw_blob_t *b)
{
	weft_free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

/* ------------------------------------------------------------------ */
/* Encoder */

typedef struct enc {
	lw_blob_t *out;
	int flags;
	int seen;          /* stack slot: object -> its number (nil until needed) */
	lua_Integer nobjs; /* objects numbered so far */
} enc_t;

/* Room for n more bytes; returns where they go and counts them as
 * written, or NULL when memory runs out (the blob is left as it was). */
static unsigned char *room(lw_blob_t *b, size_t n)
{
	if (n > b->cap - b->len) {
		if (n > SIZE_MAX / 2 - b->len)
			return NULL;
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->len + n)
			cap *= 2;
		char *p = weft_realloc(b->data, cap);
		if (!p)
			return NULL;
		b->data = p;
		b->cap = cap;
	}
	unsigned char *p = (unsigned char *)b->data + b->len;
	b->len += n;
	return p;
}

static unsigned char *need_room(lua_State *L, enc_t *e, size_t n)
{
	unsigned char *p = room(e->out, n);
	if (!p)
		fail(L, MSG_OOM);
	return p;
}

static void put_byte(lua_State *L, enc_t *e, unsigned v)
{
	*need_room(L, e, 1) = (unsigned char)v;
}

static void put_bytes(lua_State *L, enc_t *e, const void *s, size_t n)
{
	if (n)
		memcpy(need_room(L, e, n), s, n);
}

static void put_varint(lua_State *L, enc_t *e, uint64_t v)
{
	unsigned char buf[10];
	size_t n = 0;
	while (v >= 0x80) {
		buf[n++] = (unsigned char)(v | 0x80);
		v >>= 7;
	}
	buf[n++] = (unsigned char)v;
	put_bytes(L, e, buf, n);
}

static void put_u64(lua_State *L, enc_t *e, uint64_t v)
{
	store_u64(need_room(L, e, 8), v);
}

static void encode(lua_State *L, enc_t *e, int idx, int depth);

/* If the object at idx was written before in this call, write a reference
 * to it and return 1.  Otherwise give it the next number and return 0:
 * numbered before its contents are written, like the decoder does, so
 * that a cycle back to it becomes a reference. */
static int shared(lua_State *L, enc_t *e, int idx)
{
	if (e->nobjs == 0) {
		lua_createtable(L, 0, 4);
		lua_replace(L, e->seen);
	} else {
		lua_pushvalue(L, idx);
		if (lua_rawget(L, e->seen) == LUA_TNUMBER) {
			lua_Integer k = lua_tointeger(L, -1);
			lua_pop(L, 1);
			put_byte(L, e, T_REF);
			put_varint(L, e, (uint64_t)k);
			return 1;
		}
		lua_pop(L, 1);
	}
	lua_pushvalue(L, idx);
	lua_pushinteger(L, ++e->nobjs);
	lua_rawset(L, e->seen);
	return 0;
}

static void encode_table(lua_State *L, enc_t *e, int t, int depth)
{
	if (depth >= LW_SER_MAXDEPTH)
		fail(L, MSG_DEPTH);
	if (!lua_checkstack(L, 6))
		fail(L, MSG_OOM);
	if (lua_getmetatable(L, t))
		fail(L, "cannot pass a table with a metatable to another worker");

	/* The array part is the run of keys 1, 2, ... with no hole (not
	 * lua_rawlen, which may stop at any border); every other key goes
	 * with the pairs. */
	lua_Integer narr = 0;
	while (lua_rawgeti(L, t, narr + 1) != LUA_TNIL) {
		lua_pop(L, 1);
		narr++;
	}
	lua_pop(L, 1);
	lua_Integer total = 0;
	lua_pushnil(L);
	while (lua_next(L, t)) {
		lua_pop(L, 1);
		total++;
	}
	put_byte(L, e, T_TABLE);
	put_varint(L, e, (uint64_t)narr);
	put_varint(L, e, (uint64_t)(total - narr));

	for (lua_Integer i = 1; i <= narr; i++) {
		lua_rawgeti(L, t, i);
		encode(L, e, lua_gettop(L), depth + 1);
		lua_pop(L, 1);
	}
	lua_Integer npairs = 0;
	lua_pushnil(L);
	while (lua_next(L, t)) {
		int v = lua_gettop(L);
		/* lua_isinteger first: lua_tointeger would also convert a
		 * string key such as "1". */
		int in_array = lua_isinteger(L, v - 1) && lua_tointeger(L, v - 1) >= 1 &&
		               lua_tointeger(L, v - 1) <= narr;
		if (!in_array) {
			encode(L, e, v - 1, depth + 1);
			encode(L, e, v, depth + 1);
			npairs++;
		}
		lua_pop(L, 1);
	}
	/* Only a finalizer run by an allocation above could have changed the
	 * table; the counts written would then lie, so refuse rather than
	 * hand out a blob that decodes wrongly. */
	if (npairs != total - narr)
		fail(L, "a table changed while it was being serialized");
}

/* lua_dump's writer: append to the blob.  It must not raise (lua_dump
 * expects a status), so running out of memory is reported as 1. */
static int dump_writer(lua_State *L, const void *p, size_t n, void *ud)
{
	enc_t *e = ud;
	unsigned char *dst = room(e->out, n);
	if (!dst)
		return 1;
	memcpy(dst, p, n);
	return 0;
}

static void encode_function(lua_State *L, enc_t *e, int f)
{
	if (!(e->flags & LW_SER_FUNCTIONS))
		fail(L, "cannot pass a function to another worker");
	if (lua_iscfunction(L, f))
		fail(L, "cannot pass a C function to another worker");
	if (!lua_checkstack(L, 4))
		fail(L, MSG_OOM);
	/* The only state a function may carry is its environment, and only
	 * the global one: on load, upvalue 1 is set to the globals of the
	 * receiving state.  A function under another _ENV (a sandbox) is
	 * refused rather than silently given the full globals there.
	 * Stripped functions name their upvalues "(no name)", so they are
	 * refused too: whether that upvalue is _ENV cannot be known. */
	const char *name = lua_getupvalue(L, f, 1);
	if (name) {
		if (strcmp(name, "_ENV") != 0 || lua_getupvalue(L, f, 2))
			fail(L, "cannot pass a function with upvalues to another worker");
		lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
		int global = lua_rawequal(L, -1, -2);
		lua_pop(L, 2);
		if (!global)
			fail(L, "cannot pass a function whose _ENV is not the global table "
			        "to another worker");
	}
	put_byte(L, e, T_FUNC);
	size_t at = e->out->len;
	need_room(L, e, FUNC_HEADER); /* filled in once the length is known */
	lua_pushvalue(L, f);
	/* Not stripped: the receiver keeps line numbers and names for its
	 * error messages, and a function can be passed on again (stripped
	 * upvalues lose the name that identifies _ENV). */
	int rc = lua_dump(L, dump_writer, e, 0);
	lua_pop(L, 1);
	if (rc != 0)
		fail(L, MSG_OOM);
	size_t len = e->out->len - at - FUNC_HEADER;
	if (len > UINT32_MAX)
		fail(L, "cannot pass a function this large to another worker");
	unsigned char *p = (unsigned char *)e->out->data + at;
	store_u32(p, (uint32_t)len);
	store_u64(p + 4, fnv1a(p + FUNC_HEADER, len));
}

static void encode_handle(lua_State *L, enc_t *e, int u)
{
	static const char *const refused = "cannot pass a userdata to another worker";
	htype_t h;
	if (!lua_checkstack(L, 4))
		fail(L, MSG_OOM);
	if (!lua_getmetatable(L, u))
		fail(L, refused);
	lua_pushliteral(L, "__name");
	if (lua_rawget(L, -2) != LUA_TSTRING)
		fail(L, refused);
	size_t len;
	const char *name = lua_tolstring(L, -1, &len);
	if (!find_type(name, len, &h))
		fail(L, refused);
	/* Any metatable can say __name = "weft.channel" (debug.setmetatable):
	 * only the one registered under that name vouches for the layout
	 * that pack reads. */
	luaL_getmetatable(L, h.name);
	if (!lua_rawequal(L, -1, -3))
		fail(L, refused);
	lua_pop(L, 3);

	uint64_t payload[2] = {0, 0};
	int top = lua_gettop(L);
	if (h.pack(L, u, payload) != 0) {
		if (lua_gettop(L) <= top)
			lua_pushfstring(L, "cannot pass a %s to another worker", h.name);
		lua_error(L);
	}
	lua_settop(L, top);
	put_byte(L, e, T_HANDLE);
	put_byte(L, e, (unsigned)h.len);
	put_bytes(L, e, h.name, h.len);
	put_u64(L, e, payload[0]);
	put_u64(L, e, payload[1]);
}

/* Write the value at idx (an absolute index). */
static void encode(lua_State *L, enc_t *e, int idx, int depth)
{
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		put_byte(L, e, T_NIL);
		break;
	case LUA_TBOOLEAN:
		put_byte(L, e, lua_toboolean(L, idx) ? T_TRUE : T_FALSE);
		break;
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx)) {
			lua_Integer i = lua_tointeger(L, idx);
			uint64_t u = (uint64_t)i;
			if (i >= 0 && i <= FIXINT_MAX) {
				put_byte(L, e, T_FIXINT | (unsigned)i);
			} else {
				put_byte(L, e, T_INT);
				put_varint(L, e, (u << 1) ^ (0 - (u >> 63)));
			}
		} else {
			lua_Number d = lua_tonumber(L, idx);
			uint64_t bits;
			memcpy(&bits, &d, sizeof bits);
			put_byte(L, e, T_FLOAT);
			put_u64(L, e, bits);
		}
		break;
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		if (len <= SHORTSTR_MAX) {
			put_byte(L, e, T_SHORTSTR | (unsigned)len);
		} else {
			put_byte(L, e, T_STR);
			put_varint(L, e, len);
		}
		put_bytes(L, e, s, len);
		break;
	}
	case LUA_TTABLE:
		if (!shared(L, e, idx))
			encode_table(L, e, idx, depth);
		break;
	case LUA_TFUNCTION:
		if (!shared(L, e, idx))
			encode_function(L, e, idx);
		break;
	case LUA_TUSERDATA:
		if (!shared(L, e, idx))
			encode_handle(L, e, idx);
		break;
	case LUA_TLIGHTUSERDATA:
		fail(L, "cannot pass a userdata to another worker");
	case LUA_TTHREAD:
		fail(L, "cannot pass a thread to another worker");
	default:
		lua_pushfstring(L, "cannot pass a %s to another worker", luaL_typename(L, idx));
		lua_error(L);
	}
}

/* Protected body of lw_serialize: the enc_t, then the values. */
static int pserialize(lua_State *L)
{
	enc_t *e = lua_touserdata(L, 1);
	int n = lua_gettop(L) - 1;
	lua_pushnil(L); /* the seen table, made on the first object */
	e->seen = lua_gettop(L);
	put_byte(L, e, FORMAT_VERSION);
	put_varint(L, e, (uint64_t)n);
	for (int i = 0; i < n; i++)
		encode(L, e, 2 + i, 0);
	return 0;
}

int lw_serialize(lua_State *L, int idx, int n, int flags, lw_blob_t *out)
{
	enc_t e = {out, flags, 0, 0};
	size_t len0 = out->len;
	if (n < 0 || n > INT_MAX - 8 || !lua_checkstack(L, n + 3)) {
		lua_checkstack(L, 1);
		lua_pushliteral(L, "too many values to pass to another worker");
		return -1;
	}
	idx = lua_absindex(L, idx);
	lua_pushcfunction(L, pserialize);
	lua_pushlightuserdata(L, &e);
	for (int i = 0; i < n; i++)
		lua_pushvalue(L, idx + i);
	int status = lua_pcall(L, n + 1, 0, 0);
	if (status != LUA_OK) {
		/* The bytes written so far would decode as garbage; the
		 * memory stays with the blob for the caller to reuse or
		 * free. */
		out->len = len0;
		error_message(L, status);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Decoder */

typedef struct dec {
	const unsigned char *p, *end;
	int flags;
	int refs; /* stack slot: number -> object (nil until needed) */
	lua_Integer nobjs;
} dec_t;

static _Noreturn void corrupt(lua_State *L, const char *why)
{
	lua_pushfstring(L, "corrupt data from another worker (%s)", why);
	lua_error(L);
	__builtin_unreachable();
}

static size_t left(const dec_t *d)
{
	return (size_t)(d->end - d->p);
}

/* Consume n bytes; returns where they start. */
static const unsigned char *take(lua_State *L, dec_t *d, size_t n)
{
	if (n > left(d))
		corrupt(L, "truncated");
	const unsigned char *p = d->p;
	d->p += n;
	return p;
}

static unsigned get_byte(lua_State *L, dec_t *d)
{
	return *take(L, d, 1);
}

static uint64_t get_varint(lua_State *L, dec_t *d)
{
	uint64_t v = 0;
	for (int shift = 0;; shift += 7) {
		unsigned b = get_byte(L, d);
		/* The tenth byte holds bit 63 only: more would overflow. */
		if (shift == 63 && b > 1)
			corrupt(L, "bad varint");
		v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return v;
	}
}

/* Remember the object at the top as the next numbered one. */
static void number_object(lua_State *L, dec_t *d)
{
	if (d->nobjs == 0) {
		lua_createtable(L, 4, 0);
		lua_replace(L, d->refs);
	}
	lua_pushvalue(L, -1);
	lua_rawseti(L, d->refs, ++d->nobjs);
}

static void decode(lua_State *L, dec_t *d, int depth);

static void decode_table(lua_State *L, dec_t *d, int depth)
{
	if (depth >= LW_SER_MAXDEPTH)
		fail(L, MSG_DEPTH);
	if (!lua_checkstack(L, 6))
		fail(L, MSG_OOM);
	uint64_t narr = get_varint(L, d);
	uint64_t nhash = get_varint(L, d);
	if (narr > left(d) || nhash > (left(d) - narr) / 2 || narr > INT_MAX || nhash > INT_MAX)
		corrupt(L, "bad table size");
	lua_createtable(L, (int)narr, (int)nhash);
	number_object(L, d);
	int t = lua_gettop(L);
	for (uint64_t i = 1; i <= narr; i++) {
		decode(L, d, depth + 1);
		lua_rawseti(L, t, (lua_Integer)i);
	}
	for (uint64_t i = 0; i < nhash; i++) {
		decode(L, d, depth + 1);
		int kt = lua_type(L, -1);
		if (kt == LUA_TNIL)
			corrupt(L, "nil table key");
		if (kt == LUA_TNUMBER && !lua_isinteger(L, -1)) {
			lua_Number k = lua_tonumber(L, -1);
			if (k != k)
				corrupt(L, "NaN table key");
		}
		decode(L, d, depth + 1);
		lua_rawset(L, t);
	}
}

typedef struct span {
	const char *p;
	size_t n;
} span_t;

static const char func_cache_key = 'f';

static const char *span_reader(lua_State *L, void *ud, size_t *size)
{
	span_t *s = ud;
	const char *p = s->p;
	*size = s->n;
	s->n = 0;
	return *size ? p : NULL;
}

static void decode_function(lua_State *L, dec_t *d)
{
	if (!(d->flags & LW_SER_FUNCTIONS))
		fail(L, "cannot receive a function from another worker here");
	if (!lua_checkstack(L, 6))
		fail(L, "out of memory");
	const unsigned char *h = take(L, d, FUNC_HEADER);
	uint32_t len = load_u32(h);
	const unsigned char *code = take(L, d, len);
	/* Loaded functions are cached by their bytecode (weak values): a
	 * worker running the same spawned function many times loads it once.
	 * Equal bytes were checked when they were first loaded. */
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &func_cache_key) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_newtable(L);
		lua_createtable(L, 0, 1);
		lua_pushliteral(L, "v");
		lua_setfield(L, -2, "__mode");
		lua_setmetatable(L, -2);
		lua_pushvalue(L, -1);
		lua_rawsetp(L, LUA_REGISTRYINDEX, &func_cache_key);
	}
	lua_pushlstring(L, (const char *)code, len);
	lua_pushvalue(L, -1);
	if (lua_rawget(L, -3) == LUA_TFUNCTION) {
		lua_replace(L, -3);
		lua_pop(L, 1);
		number_object(L, d);
		return;
	}
	lua_pop(L, 1); /* cache, bytecode key left for storing below */
	/* lua_load checks little beyond the header of a binary chunk, and a
	 * corrupt size inside one can make it allocate without bound: the
	 * checksum stops a damaged blob before Lua sees it. */
	if (fnv1a(code, len) != load_u64(h + 4))
		corrupt(L, "function checksum mismatch");
	span_t s = {(const char *)code, len};
	if (lua_load(L, span_reader, &s, "=(weft serialized function)", "b") != LUA_OK) {
		const char *msg = lua_tostring(L, -1);
		corrupt(L, msg ? msg : "bad function");
	}
	/* lua_load has set upvalue 1, if any, to this state's globals; the
	 * encoder allowed no other. */
	const char *up = lua_getupvalue(L, -1, 1);
	if (up) {
		lua_pop(L, 1);
		if (strcmp(up, "_ENV") != 0 || lua_getupvalue(L, -1, 2))
			corrupt(L, "function with upvalues");
	}
	/* stack: cache, key, function */
	lua_pushvalue(L, -2);
	lua_pushvalue(L, -2);
	lua_rawset(L, -5);
	lua_replace(L, -3);
	lua_pop(L, 1);
	number_object(L, d);
}

static void decode_handle(lua_State *L, dec_t *d)
{
	unsigned len = get_byte(L, d);
	if (len == 0 || len > LW_SER_NAMEMAX)
		corrupt(L, "bad handle name");
	const char *name = (const char *)take(L, d, len);
	htype_t h;
	if (!find_type(name, len, &h))
		corrupt(L, "unknown handle type");
	const unsigned char *p = take(L, d, 16);
	uint64_t payload[2] = {load_u64(p), load_u64(p + 8)};
	int top = lua_gettop(L);
	if (h.unpack(L, payload) != 0) {
		if (lua_gettop(L) <= top)
			lua_pushfstring(L, "cannot receive a %s from another worker", h.name);
		lua_error(L);
	}
	if (lua_gettop(L) != top + 1) {
		lua_pushfstring(L, "the unpack function of %s pushed %d values, not 1", h.name,
		                lua_gettop(L) - top);
		lua_error(L);
	}
	number_object(L, d);
}

/* Push one value. */
static void decode(lua_State *L, dec_t *d, int depth)
{
	unsigned t = get_byte(L, d);
	if (t >= T_FIXINT) {
		lua_pushinteger(L, (lua_Integer)(t - T_FIXINT));
		return;
	}
	if (t >= T_SHORTSTR && t <= T_SHORTSTR + SHORTSTR_MAX) {
		size_t len = t - T_SHORTSTR;
		lua_pushlstring(L, (const char *)take(L, d, len), len);
		return;
	}
	switch (t) {
	case T_NIL:
		lua_pushnil(L);
		break;
	case T_FALSE:
	case T_TRUE:
		lua_pushboolean(L, t == T_TRUE);
		break;
	case T_INT: {
		uint64_t z = get_varint(L, d);
		lua_pushinteger(L, (lua_Integer)((z >> 1) ^ (0 - (z & 1))));
		break;
	}
	case T_FLOAT: {
		uint64_t bits = load_u64(take(L, d, 8));
		lua_Number x;
		memcpy(&x, &bits, sizeof x);
		lua_pushnumber(L, x);
		break;
	}
	case T_STR: {
		uint64_t len = get_varint(L, d);
		if (len > left(d))
			corrupt(L, "truncated");
		lua_pushlstring(L, (const char *)take(L, d, (size_t)len), (size_t)len);
		break;
	}
	case T_TABLE:
		decode_table(L, d, depth);
		break;
	case T_REF: {
		uint64_t k = get_varint(L, d);
		if (k == 0 || k > (uint64_t)d->nobjs)
			corrupt(L, "bad reference");
		lua_rawgeti(L, d->refs, (lua_Integer)k);
		break;
	}
	case T_FUNC:
		decode_function(L, d);
		break;
	case T_HANDLE:
		decode_handle(L, d);
		break;
	default:
		corrupt(L, "unknown tag");
	}
}

/* Protected body of lw_deserialize: the dec_t; returns the values. */
static int pdeserialize(lua_State *L)
{
	dec_t *d = lua_touserdata(L, 1);
	lua_pushnil(L); /* the numbered objects, made on the first one */
	d->refs = lua_gettop(L);
	unsigned version = get_byte(L, d);
	if (version != FORMAT_VERSION) {
		lua_pushfstring(L, "corrupt data from another worker (unknown version %d)",
		                (int)version);
		lua_error(L);
	}
	uint64_t n = get_varint(L, d);
	if (n > left(d))
		corrupt(L, "bad value count");
	if (n > INT_MAX - 16 || !lua_checkstack(L, (int)n + 8))
		fail(L, "too many values to receive from another worker");
	for (uint64_t i = 0; i < n; i++)
		decode(L, d, 0);
	if (d->p != d->end)
		corrupt(L, "trailing bytes");
	return (int)n;
}

int lw_deserialize(lua_State *L, const char *data, size_t len, int flags)
{
	dec_t d = {(const unsigned char *)data, (const unsigned char *)data + len, flags, 0, 0};
	if (!data)
		d.p = d.end = NULL;
	if (!lua_checkstack(L, 2)) {
		lua_pushliteral(L, MSG_OOM);
		return -1;
	}
	int top = lua_gettop(L);
	lua_pushcfunction(L, pdeserialize);
	lua_pushlightuserdata(L, &d);
	int status = lua_pcall(L, 1, LUA_MULTRET, 0);
	if (status != LUA_OK) {
		error_message(L, status);
		return -1;
	}
	return lua_gettop(L) - top;
}

/* ------------------------------------------------------------------ */
/* Test hooks */

/* A handle type for the tests: two integers.  a == -1 refuses to be
 * packed and a == -2 to be unpacked, to exercise both error paths. */
#define TEST_HANDLE "weft._test_handle"

typedef struct test_handle {
	lua_Integer a, b;
} test_handle_t;

static int th_pack(lua_State *L, int idx, uint64_t out[2])
{
	test_handle_t *h = lua_touserdata(L, idx);
	if (h->a == -1) {
		lua_pushliteral(L, "the test handle refuses to be packed");
		return -1;
	}
	out[0] = (uint64_t)h->a;
	out[1] = (uint64_t)h->b;
	return 0;
}

static int th_unpack(lua_State *L, const uint64_t in[2])
{
	if ((lua_Integer)in[0] == -2) {
		lua_pushliteral(L, "the test handle refuses to be unpacked");
		return -1;
	}
	test_handle_t *h = lua_newuserdatauv(L, sizeof *h, 0);
	h->a = (lua_Integer)in[0];
	h->b = (lua_Integer)in[1];
	luaL_setmetatable(L, TEST_HANDLE);
	return 0;
}

/* weft.core._handle(a, b) */
static int l_handle(lua_State *L)
{
	lua_Integer a = luaL_checkinteger(L, 1);
	lua_Integer b = luaL_checkinteger(L, 2);
	test_handle_t *h = lua_newuserdatauv(L, sizeof *h, 0);
	h->a = a;
	h->b = b;
	luaL_setmetatable(L, TEST_HANDLE);
	return 1;
}

/* handle:get() -> a, b */
static int th_get(lua_State *L)
{
	test_handle_t *h = luaL_checkudata(L, 1, TEST_HANDLE);
	lua_pushinteger(L, h->a);
	lua_pushinteger(L, h->b);
	return 2;
}

static int box_gc(lua_State *L)
{
	lw_blob_free(lua_touserdata(L, 1));
	return 0;
}

/* The blob lives in a userdata with a finalizer, so that a raise after
 * lw_serialize (pushing the result string) cannot leak it.  The hook also
 * checks the stack contract of lw_serialize. */
static int pack_with(lua_State *L, int flags)
{
	int n = lua_gettop(L);
	lw_blob_t *b = lua_newuserdatauv(L, sizeof *b, 0);
	memset(b, 0, sizeof *b);
	lua_rawgetp(L, LUA_REGISTRYINDEX, &BOX_KEY);
	lua_setmetatable(L, -2);
	/* A relative index, to exercise that path: the values lie below the
	 * box. */
	int rc = lw_serialize(L, -(n + 1), n, flags, b);
	int want = n + 1 + (rc < 0);
	if (lua_gettop(L) != want)
		return luaL_error(L, "lw_serialize left %d values on the stack, not %d",
		                  lua_gettop(L), want);
	if (rc < 0) {
		if (b->len != 0)
			return luaL_error(L, "lw_serialize failed but left %d bytes", (int)b->len);
		lw_blob_free(b);
		luaL_pushfail(L);
		lua_insert(L, -2);
		return 2;
	}
	lua_pushlstring(L, b->data, b->len);
	lw_blob_free(b);
	return 1;
}

/* weft.core._pack(...) -> string | nil, message (functions allowed) */
static int l_pack(lua_State *L)
{
	return pack_with(L, LW_SER_FUNCTIONS);
}

/* weft.core._pack_data(...): the same, functions refused */
static int l_pack_data(lua_State *L)
{
	return pack_with(L, 0);
}

static int unpack_with(lua_State *L, int flags)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	lua_settop(L, 1);
	int n = lw_deserialize(L, s, len, flags);
	int want = 1 + (n < 0 ? 1 : n);
	if (lua_gettop(L) != want)
		return luaL_error(L, "lw_deserialize left %d values on the stack, not %d",
		                  lua_gettop(L), want);
	if (n < 0) {
		luaL_pushfail(L);
		lua_insert(L, -2);
		return 2;
	}
	return n;
}

/* weft.core._unpack(s) -> ... | nil, message (functions allowed) */
static int l_unpack(lua_State *L)
{
	return unpack_with(L, LW_SER_FUNCTIONS);
}

/* weft.core._unpack_data(s): the same, functions refused */
static int l_unpack_data(lua_State *L)
{
	return unpack_with(L, 0);
}

/* weft.core._alloc_fail_after(n): make the nth weft allocation fail. */
static int l_alloc_fail_after(lua_State *L)
{
	weft_alloc_fail_after((long)luaL_checkinteger(L, 1));
	return 0;
}

static const luaL_Reg serial_funcs[] = {
	{"_pack", l_pack},
	{"_pack_data", l_pack_data},
	{"_unpack", l_unpack},
	{"_unpack_data", l_unpack_data},
	{"_handle", l_handle},
	{"_alloc_fail_after", l_alloc_fail_after},
	{NULL, NULL},
};

static const luaL_Reg th_methods[] = {
	{"get", th_get},
	{NULL, NULL},
};

void lw_open_serial(lua_State *L, lw_state_t *S)
{
	lua_pushliteral(L, MSG_OOM);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &OOM_KEY);
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &BOX_KEY) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_createtable(L, 0, 1);
		lua_pushcfunction(L, box_gc);
		lua_setfield(L, -2, "__gc");
		lua_rawsetp(L, LUA_REGISTRYINDEX, &BOX_KEY);
	} else {
		lua_pop(L, 1);
	}
	lw_newclass(L, S, TEST_HANDLE, th_methods, NULL);
	lw_serial_register(TEST_HANDLE, th_pack, th_unpack);
	lw_register(L, S, serial_funcs);
}
