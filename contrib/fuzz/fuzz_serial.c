/* libFuzzer target: the channel/spawn serializer (src/lserial.c).
 *
 * Any bytes go to lw_deserialize without LW_SER_FUNCTIONS, as a blob
 * from outside the process would: it must return a count or an error,
 * never crash, hang or leak, and never load code.  What decodes is
 * serialized again and decoded again: the second round must give as
 * many values, and the re-encoding must be stable: encoding the second
 * result gives the same bytes when there are no tables, the same length
 * when there are fewer than 128 objects (see below).  No handle type is registered here, so
 * handle tags are unknown ones (handles carry process-local pointers and
 * only ever come from this process). */
#include "config.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lserial.h"

static lua_State *L;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!L) {
		L = luaL_newstate();
		luaL_openlibs(L);
	}
	lua_settop(L, 0);
	int n = lw_deserialize(L, (const char *)data, size, 0);
	if (n < 0) {
		if (lua_gettop(L) != 1 || lua_type(L, -1) != LUA_TSTRING)
			abort(); /* the contract: one message */
		lua_settop(L, 0);
		return 0;
	}
	if (lua_gettop(L) != n)
		abort();
	lw_blob_t a = {0}, b = {0};
	if (lw_serialize(L, 1, n, 0, &a) != 0) {
		/* Values that decoded always encode again (same kinds). */
		abort();
	}
	lua_settop(L, 0);
	int m = lw_deserialize(L, a.data, a.len, 0);
	if (m != n)
		abort();
	if (lw_serialize(L, 1, m, 0, &b) != 0)
		abort();
	/* A reference is the varint number of its object in order of first
	 * appearance, and that order follows lua_next, which may differ
	 * between two rebuilds of a table: from the 128th object on, a
	 * reference can take one byte more or less.  Lengths are compared
	 * only below that (counting every byte that could be an object's
	 * tag overcounts, which only skips the check more often). */
	size_t objs = 0;
	for (size_t i = 0; i < a.len; i++) {
		unsigned char c = (unsigned char)a.data[i];
		objs += c == 0x06 || c == 0x08 || c == 0x09;
	}
	if (objs < 128 && a.len != b.len)
		abort();
	/* Tables' key order may differ between two rebuilds, so only the
	 * length is compared byte for byte when tables are present. */
	if (memchr(a.data, 0x06, a.len) == NULL && memcmp(a.data, b.data, a.len) != 0)
		abort();
	lw_blob_free(&a);
	lw_blob_free(&b);
	lua_settop(L, 0);
	lua_gc(L, LUA_GCSTEP, 0);
	return 0;
}
