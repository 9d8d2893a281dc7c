#!/bin/sh
# The embedding example, contrib/examples/embed.c, built as a user would
# (pkg-config) against the staged install that Makefile.am makes in
# tests/stage, and run: with the shared libweft; with the static libweft.a
# and weft.core preloaded; and with libweft.a but the module loaded from
# the path, a second copy of the runtime, which must be refused loudly.
# The build's sanitizer flags come along, so CI runs it under ASan and
# TSan.  TAP.
set -u
: "${WEFT_BUILDDIR:?run me under make check}"
: "${WEFT_SRCDIR:?run me under make check}"
stage=$WEFT_BUILDDIR/tests/stage
dir=$WEFT_BUILDDIR/tests/embed
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); echo "not ok $n - $1"; }
check() { # check DESCRIPTION COMMAND...
	d=$1
	shift
	if "$@"; then ok "$d"; else not_ok "$d"; fi
}
found() { find "$stage" -name "$1" \( -type f -o -type l \) | head -n 1; }
show() { sed 's/^/# /' "$1"; }

echo "1..7"
mkdir -p "$dir/pkgconfig"
pc=$(found weft.pc)
libdir=$(dirname "$(found libweft.so.0)")
lmod=$(dirname "$(found weft.lua)")
cmod=$(dirname "$(dirname "$(found core.so)")")
# weft.pc moved into the stage (pkg-config's sysroot would move Lua's
# flags too).
sed -e "s,^\(prefix\|exec_prefix\|libdir\|includedir\)=/,\1=$stage/," "$pc" >"$dir/pkgconfig/weft.pc"
pkg() { PKG_CONFIG_PATH=$dir/pkgconfig pkg-config "$@"; }
cc=${WEFT_CC:-cc}
cflags="${WEFT_CFLAGS:-} ${WEFT_SANITIZERS:-}"
src=$WEFT_SRCDIR/contrib/examples/embed.c

# shellcheck disable=SC2046,SC2086
$cc $cflags $(pkg --cflags weft) -o "$dir/embed" "$src" $(pkg --libs weft) >"$dir/cc.out" 2>&1
check "embed.c builds with \`pkg-config --cflags --libs weft\`" [ $? = 0 ]
show "$dir/cc.out"

run() { # run OUTFILE ARGS...: the example on the staged install, bounded
	o=$1
	shift
	LD_LIBRARY_PATH=$libdir LUA_PATH="$lmod/?.lua" LUA_CPATH="$cmod/?.so" \
		timeout -k 5 120 "$@" >"$o" 2>&1
}
run "$dir/shared.out" "$dir/embed"
rc=$?
show "$dir/shared.out"
check "three states on three threads share a runtime: every round and close order passes" \
	[ $rc = 0 ]
check "... and say so" grep -q "^9 rounds, 0 failed" "$dir/shared.out"

# The static library: the program carries the runtime, so its states
# must get weft.core from it.
# shellcheck disable=SC2046,SC2086
$cc $cflags $(pkg --cflags weft) -o "$dir/embed-static" "$src" "$libdir/libweft.a" \
	$(pkg --static --libs weft | sed 's/-lweft//') >"$dir/cc-static.out" 2>&1
check "embed.c links with libweft.a" [ $? = 0 ]
show "$dir/cc-static.out"
run "$dir/static.out" "$dir/embed-static" --preload
rc=$?
show "$dir/static.out"
check "linked statically with weft.core preloaded, every round passes" [ $rc = 0 ]

# Without the preload, require finds weft/core.so and its libweft: a
# second copy of the runtime, refused with a message that says so.
run "$dir/twocopies.out" "$dir/embed-static"
rc=$?
head -n 3 "$dir/twocopies.out" | sed 's/^/# /'
check "a state handed to a second copy of the runtime fails" [ $rc != 0 ]
check "... with an error that names the problem" \
	grep -q "another copy of the weft runtime" "$dir/twocopies.out"
exit 0
