/* The C module's entry point: require "weft.core". */
#include "config.h"

#include "lweft.h"

WEFT_EXPORT int luaopen_weft_core(lua_State *L);

WEFT_EXPORT int luaopen_weft_core(lua_State *L)
{
	return weft__open(L);
}
