#!/bin/sh
# The rockspec: `luarocks make` builds and installs weft into a scratch
# tree from a clean copy of the sources (make distdir: the source tree may
# be read-only), then stock lua5.4 with the tree's paths requires weft and
# runs an echo round trip; the rock holds the Lua modules `make install`
# installs.  Skipped where luarocks is not installed.  TAP.
set -u
: "${WEFT_BUILDDIR:?run me under make check}"
: "${WEFT_SRCDIR:?run me under make check}"
n=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); echo "not ok $n - $1"; }
check() { # check DESCRIPTION COMMAND...
	d=$1
	shift
	if "$@"; then ok "$d"; else not_ok "$d"; fi
}
show() { sed 's/^/# /' "$1"; }

echo "1..6"
rockspec=contrib/weft-$WEFT_VERSION-1.rockspec
check "the rockspec follows configure.ac's version ($rockspec)" [ -f "$WEFT_SRCDIR/$rockspec" ]
if ! command -v luarocks >/dev/null 2>&1; then
	for i in 2 3 4 5 6; do echo "ok $i # SKIP luarocks is not installed"; done
	exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A make of our own, not the jobserver of the one running the tests.
unset MAKEFLAGS MFLAGS MAKELEVEL
make -C "$WEFT_BUILDDIR" distdir distdir="$tmp/src" >"$tmp/distdir.out" 2>&1 ||
	show "$tmp/distdir.out"
(cd "$tmp/src" && MAKEFLAGS=-j2 timeout 600 luarocks --lua-version 5.4 make \
	--tree "$tmp/tree" "$rockspec") >"$tmp/rock.out" 2>&1
rc=$?
tail -n 5 "$tmp/rock.out" | sed 's/^/# /'
[ $rc = 0 ] || show "$tmp/rock.out"
check "luarocks make installs the rock into a tree" [ $rc = 0 ]

paths=$(luarocks --lua-version 5.4 --tree "$tmp/tree" path 2>/dev/null)
out=$(eval "$paths" && cd "$tmp" && timeout 60 "${LUA:-lua5.4}" -e '
	local weft = require "weft"
	print(weft._VERSION)
	print(weft.run(function()
		local s = assert(weft.tcp())
		assert(s:listen("127.0.0.1", 0))
		weft.thread(function()
			local c = assert(s:accept(weft.clock() + 20))
			local b = weft.buffer(4)
			assert(c:recvn(b, 4, weft.clock() + 20))
			assert(c:send(b))
			c:close()
		end)
		local c = assert(weft.tcp())
		assert(c:connect("127.0.0.1", s.local_port, weft.clock() + 20))
		assert(c:send("ping"))
		local b = weft.buffer(4)
		assert(c:recvn(b, 4, weft.clock() + 20))
		c:close()
		s:close()
		return b:tostring()
	end))' 2>&1)
echo "$out" | sed 's/^/# /'
check "stock lua5.4 with the tree's paths requires weft" [ "$(echo "$out" | head -n 1)" = "weft $WEFT_VERSION" ]
check "... and runs an echo round trip" [ "$(echo "$out" | sed -n 2p)" = ping ]

out=$(eval "$paths" && timeout 60 "$tmp/tree/bin/weft" -e 'print(require("weft")._VERSION)' 2>&1)
check "the rock's launcher runs (got '$out')" [ "$out" = "weft $WEFT_VERSION" ]

# Every Lua module of the sources is in the rock (the rock installs what
# `make install` installs).
missing=
for f in $(cd "$WEFT_SRCDIR/lua" && find . -name '*.lua' | sed 's|^\./||'); do
	[ -f "$tmp/tree/share/lua/5.4/$f" ] || missing="$missing $f"
done
check "the rock has every Lua module (missing:${missing:-none})" [ -z "$missing" ]
exit 0
