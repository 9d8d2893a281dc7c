/* The C module's entry point: require "weft.core". */
#include "config.h"

#include "lweft.h"
#include "weft.h"

int luaopen_weft_core(lua_State *L)
{
	return weft__open(L);
}
