/* weft.tls where weft was built without OpenSSL (a Windows build may be):
 * the same names, each saying so. */
#include "config.h"

#include "lweft.h"

static int unavailable(lua_State *L)
{
	lua_pushnil(L);
	lua_pushliteral(L, "TLS is not available: weft was built without OpenSSL");
	return 2;
}

static int no_ctx(lua_State *L)
{
	lua_pushboolean(L, 0);
	return 1;
}

static int no_contexts(lua_State *L)
{
	lua_pushinteger(L, 0);
	return 1;
}

static const luaL_Reg funcs[] = {
    {"tls_context", unavailable},
    {"tls_wrap", unavailable},
    {"tls_isctx", no_ctx},
    {"tls_contexts", no_contexts},
    {NULL, NULL},
};

void lw_open_tls(lua_State *L, lw_state_t *S)
{
	lw_register(L, S, funcs);
}
