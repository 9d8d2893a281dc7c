/* libFuzzer target: address parsing and formatting.
 *
 * The input is split at NUL bytes into host, port, flags and family, which
 * go to weft.addr (weft.core.addr) outside any weft thread, with
 * numerichost and numericserv always added so that no lookup ever leaves
 * the process (getaddrinfo fails a name at once under them).  Whatever
 * comes back is walked with every ai, sa and ip method.  The raw bytes
 * are also read as a socket address by the formatting helpers of
 * lib/sock.c.  Bad input may raise a Lua error (a wrong flag name, a
 * port out of range) or return nil, message; nothing may crash. */
#include "config.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "sock.h"
#include "weft.h"

static lua_State *L;

/* Loads weft.core and leaves the walker function in the registry. */
static const char walker[] =
	"local core = ...\n"
	"return function(host, port, flags, family, stype)\n"
	"  local f = {'numerichost', 'numericserv'}\n"
	"  for w in flags:gmatch('%S+') do f[#f + 1] = w end\n"
	"  local ok, ai = pcall(core.addr, host, tonumber(port) and math.tointeger(tonumber(port)) or port,\n"
	"    stype, family ~= '' and family or nil, nil, f)\n"
	"  if not ok or not ai then return end\n"
	"  for e in ai:addrs() do\n"
	"    e:tostring(); e:family(); e:type(); e:protocol(); e:name()\n"
	"    local sa = e.addr\n"
	"    sa:tostring(); sa:family(); sa:port()\n"
	"    local ip = sa:addr()\n"
	"    if ip then ip:tostring(); ip:tobinary() end\n"
	"  end\n"
	"  ai:free()\n"
	"end\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void setup(void)
{
	L = luaL_newstate();
	luaL_openlibs(L);
	luaL_requiref(L, "weft.core", luaopen_weft_core, 0);
	if (luaL_loadstring(L, walker) != LUA_OK)
		abort();
	lua_insert(L, -2);
	lua_call(L, 1, 1);
	lua_setfield(L, LUA_REGISTRYINDEX, "fuzz_walker");
	lua_settop(L, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!L)
		setup();
	/* Fields: host, port, flags, family; the first byte picks the type. */
	const char *field[4] = {"", "", "", ""};
	size_t flen[4] = {0, 0, 0, 0};
	static const char *const types[] = {"tcp", "udp", "raw", NULL};
	const char *stype = size ? types[data[0] % 4] : NULL;
	size_t pos = size ? 1 : 0;
	for (int i = 0; i < 4 && pos <= size; i++) {
		const uint8_t *nul = memchr(data + pos, 0, size - pos);
		size_t end = nul ? (size_t)(nul - data) : size;
		field[i] = (const char *)data + pos;
		flen[i] = end - pos;
		pos = end + 1;
	}
	lua_getfield(L, LUA_REGISTRYINDEX, "fuzz_walker");
	for (int i = 0; i < 4; i++)
		lua_pushlstring(L, field[i], flen[i]);
	if (stype)
		lua_pushstring(L, stype);
	else
		lua_pushnil(L);
	if (lua_pcall(L, 5, 0, 0) != LUA_OK)
		lua_pop(L, 1); /* a Lua error is a fine answer to bad input */

	/* The same bytes as a socket address. */
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	memcpy(&ss, data, size < sizeof ss ? size : sizeof ss);
	char buf[256];
	weft_sa_tostring((struct sockaddr *)&ss, buf, sizeof buf);
	weft_sa_ip((struct sockaddr *)&ss, buf, sizeof buf);
	weft_sa_port((struct sockaddr *)&ss);
	weft_sa_len((struct sockaddr *)&ss);
	lua_settop(L, 0);
	lua_gc(L, LUA_GCSTEP, 0);
	return 0;
}
