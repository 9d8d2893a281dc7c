/* weft/core.so, the Lua module: a thin module over libweft.
 *
 * The runtime and luaopen_weft_core live in libweft, which this module
 * needs: Lua's loader finds the entry point there, since dlsym() on the
 * module's handle searches the libraries it depends on.  A program linked
 * with libweft that requires "weft" thus shares its one copy of the
 * runtime with the module.  The reference below keeps the dependency when
 * the linker drops unused libraries (--as-needed). */
#include "weft.h"

__attribute__((used)) static lua_CFunction const entry = luaopen_weft_core;
