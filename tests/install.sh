#!/bin/sh
# What `make install` lays out, checked on the staged install that
# Makefile.am makes in tests/stage: libweft (soname, exports), the thin
# module, the launcher on the same library, weft.pc, the man page (renders
# without warnings, lists what `weft --help` lists).  TAP.
set -u
: "${WEFT_BUILDDIR:?run me under make check}"
stage=$WEFT_BUILDDIR/tests/stage
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=1; echo "not ok $n - $1"; }
check() { # check DESCRIPTION COMMAND...
	d=$1
	shift
	if "$@"; then ok "$d"; else not_ok "$d"; fi
}
skip() { n=$((n + 1)); echo "ok $n # SKIP $1"; }
found() { find "$stage" -name "$1" \( -type f -o -type l \) | head -n 1; }

echo "1..17"
lib=$(found 'libweft.so.0')
libdir=$(dirname "${lib:-.}")
mod=$(found core.so)
bin=$(find "$stage" -path '*/bin/weft' | head -n 1)
pc=$(found weft.pc)
man=$(found weft.1)
lmod=$(dirname "$(found weft.lua)")
cmod=$(dirname "$(dirname "${mod:-.}")")

for f in libweft.so.0 libweft.so libweft.a weft.h core.so weft.lua weft.pc weft.1; do
	[ -n "$(found "$f")" ] || { echo "# missing: $f"; missing=1; }
done
[ -n "$bin" ] || { echo "# missing: bin/weft"; missing=1; }
check "every file is installed" [ -z "${missing:-}" ]

soname=$(objdump -p "$lib" 2>/dev/null | awk '$1 == "SONAME" { print $2 }')
check "libweft's soname is libweft.so.0 (got '$soname')" [ "$soname" = libweft.so.0 ]

exports=$(nm -D --defined-only "$lib" 2>/dev/null | awk '$2 ~ /^[TDBRVW]$/ { print $3 }' | sort)
echo "$exports" | sed 's/^/# exported: /'
extra=$(echo "$exports" | grep -Ev '^(weft_lua_[a-z_]+|luaopen_[a-z_]+)$')
check "libweft exports only weft_lua_* and luaopen_*" [ -n "$exports" -a -z "$extra" ]
want="luaopen_weft_core weft_lua_attach weft_lua_runtime_exit weft_lua_runtime_free weft_lua_runtime_new weft_lua_strerror"
check "libweft exports the whole C API of weft.h" [ "$(echo $exports)" = "$want" ]

check "weft/core.so defines nothing of its own" \
	[ -z "$(nm -D --defined-only "$mod" 2>/dev/null | awk '$3 ~ /weft|lua/')" ]
needs() { objdump -p "$1" 2>/dev/null | awk '$1 == "NEEDED" { print $2 }' | grep -qx "$2"; }
check "weft/core.so runs on libweft.so.0" needs "$mod" libweft.so.0
check "the launcher runs on libweft.so.0 (one copy with the module)" needs "$bin" libweft.so.0

# weft.pc, moved into the stage (pkg-config's sysroot would move Lua's
# flags too).
pcdir=$WEFT_BUILDDIR/tests/embed/pkgconfig
mkdir -p "$pcdir"
sed -e "s,^\(prefix\|exec_prefix\|libdir\|includedir\)=/,\1=$stage/," "$pc" >"$pcdir/weft.pc"
pkg() { PKG_CONFIG_PATH=$pcdir pkg-config "$@"; }
check "pkg-config knows weft $WEFT_VERSION" [ "$(pkg --modversion weft)" = "$WEFT_VERSION" ]
cflags=$(pkg --cflags weft) libs=$(pkg --libs weft)
echo "# cflags: $cflags"
echo "# libs: $libs"
incdir=$(echo "$cflags" | sed -n 's/^-I\([^ ]*\).*/\1/p')
case $cflags in *lua*) lua_cflags=yes ;; *) lua_cflags= ;; esac
check "pkg-config --cflags gives weft.h's directory and Lua's" \
	[ -f "$incdir/weft.h" -a -n "$lua_cflags" ]
check "pkg-config --libs gives -lweft, then Lua" sh -c "echo '$libs' | grep -q -- '-lweft .*-llua'"

# The installed launcher, on the staged library and Lua files.
out=$(LD_LIBRARY_PATH=$libdir LUA_PATH="$lmod/?.lua" timeout 20 "$bin" -e \
	'local w = require "weft" print(w._VERSION, w.worker(), w.workers())' 2>&1)
check "the installed launcher runs (got '$out')" [ "$out" = "weft $WEFT_VERSION	1	1" ]

if [ -n "${WEFT_SANITIZERS:-}" ]; then
	skip "a sanitizer build's module cannot load into an uninstrumented lua5.4"
else
	out=$(LD_LIBRARY_PATH=$libdir LUA_PATH="$lmod/?.lua" LUA_CPATH="$cmod/?.so" \
		timeout 20 "${LUA:-lua5.4}" -e \
		'local w = require "weft" print(w.run(function() w.sleep(0.01) return w._VERSION end))' 2>&1)
	check "the installed module runs in stock Lua (got '$out')" [ "$out" = "weft $WEFT_VERSION" ]
fi

# The man page and --help.
help=$(LD_LIBRARY_PATH=$libdir timeout 20 "$bin" --help)
hs=$?
check "weft --help exits with status 0" [ "$hs" = 0 ]
opts=$(echo "$help" | sed -n 's/^  \(-[^ ]*\).*/\1/p')
check "weft --help lists options" [ "$(echo "$opts" | wc -l)" -ge 10 ]
if ! command -v man >/dev/null 2>&1; then
	skip "man is not installed"
	skip "man is not installed"
	skip "man is not installed"
else
	warnings=$(MANWIDTH=80 man -l --warnings "$man" 2>&1 >/dev/null)
	echo "$warnings" | sed 's/^/# /'
	check "man -l renders weft.1 without warnings" [ -z "$warnings" ]
	text=$(MANWIDTH=80 man -l "$man" 2>/dev/null)
	missing=
	for o in $opts; do
		echo "$text" | grep -q -- "^ *$o\( \|$\)" || missing="$missing $o"
	done
	check "weft.1 describes every option of --help (missing:${missing:-none})" [ -z "$missing" ]
	for s in NAME SYNOPSIS OPTIONS ENVIRONMENT "EXIT STATUS" SIGNALS EXAMPLES; do
		echo "$text" | grep -q "^$s" || msec="${msec:-} $s"
	done
	check "weft.1 has its sections (missing:${msec:-none})" [ -z "${msec:-}" ]
fi
exit 0
