-- weft as a LuaRocks rock.  From a source tree (a release tarball, or a
-- git clone with autoconf, automake and libtool installed):
--
--   luarocks --lua-version 5.4 make contrib/weft-0.1.0-1.rockspec
--
-- It drives configure and `make install`, so the rock holds whatever
-- `make install` installs: the module weft/core.so and the Lua modules go
-- where LuaRocks deploys modules, the launcher `weft` where it deploys
-- commands; libweft (which the module and the launcher run on), weft.h,
-- weft.pc and the man page stay in the rock's own directory.  The version
-- here follows configure.ac (`make check` compares them).
rockspec_format = "3.0"
package = "weft"
version = "0.1.0-1"
source = {
   -- the tarball `make dist` makes, beside this file
   url = "file://weft-0.1.0.tar.gz",
   dir = "weft-0.1.0",
}
description = {
   summary = "Coroutine network programming for Lua 5.4, in C",
   detailed = [[
Sockets that wait without blocking, a scheduler, timers, channels and
spawned jobs, on as many cores as asked for: workers (threads, each with
its own Lua state and poller) share listening sockets and steal jobs.
Comes with a launcher, weft, and a C library for programs that embed
Lua states sharing one runtime.]],
   license = "MIT",
}
supported_platforms = { "linux" }
dependencies = {
   "lua >= 5.4, < 5.5",
}
build = {
   type = "command",
   build_command = [[
test -f configure || autoreconf -fi
./configure --prefix="$(PREFIX)" --libdir="$(PREFIX)/libweft" --bindir="$(BINDIR)" \
   --with-lua-cmod="$(LIBDIR)" --with-lua-lmod="$(LUADIR)" CC="$(CC)" LUA="$(LUA)" &&
$(MAKE)
]],
   -- libtool's .la files are of no use to Lua
   install_command = [[$(MAKE) install && find "$(LIBDIR)" -name '*.la' -exec rm -f {} +]],
}
