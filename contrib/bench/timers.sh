#!/usr/bin/env bash
# timers.sh: timer scale, weft against luv, in one run.  N timers due at
# random times 1 to 2 s ahead (weft.runafter; luv's uv timers), and N weft
# threads sleeping until such times: time to schedule them, resident
# memory per timer or thread, and lateness p50/p99/max when they fire.
# Each figure is the median of ROUNDS rounds, interleaved.  Prints a
# Markdown table and, with DATA=file, the medians as plot data.
#
# In each round every case runs twice in a row, and the second run is the
# one measured; the first run's schedule time is shown beside it.  On a
# virtual machine whose kernel hands free memory back to the host (free
# page reporting, a few seconds after it is freed), a process that touches
# more memory than the one before it pays a host fault per page: the
# first of two runs of the 10^6 threads (1.1 GB) has taken 2.5 s to
# schedule there, the second 0.8 s.  That cost is the machine's, and it
# would make the figure depend on what ran before.
#   env: N (default 1000000), ROUNDS (default 3), WEFT_BIN, LUA (lua5.4)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/../.." && pwd)
. "$here/common.sh"
N=${N:-1000000}
ROUNDS=${ROUNDS:-3}
WEFT_BIN=${WEFT_BIN:-$srcdir/src/weft}
LUA=${LUA:-lua5.4}
export LUA_PATH="$srcdir/lua/?.lua;;"
[ -x "$WEFT_BIN" ] || die "no $WEFT_BIN: build weft first"

cases=("weft-timers" "weft-threads" "luv-timers")
have_luv=1
"$LUA" -e 'require "luv"' 2>/dev/null || have_luv=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
run_case() {
	case $1 in
	weft-timers) "$WEFT_BIN" "$here/timers.lua" "$N" timers ;;
	weft-threads) "$WEFT_BIN" "$here/timers.lua" "$N" threads ;;
	luv-timers) [ "$have_luv" = 1 ] && "$LUA" "$here/timers-luv.lua" "$N" ;;
	esac
}
for r in $(seq "$ROUNDS"); do
	for c in "${cases[@]}"; do
		run_case "$c" | grep '^RESULT' | sed 's/^RESULT/FIRST/' >>"$out" || true
		run_case "$c" | grep '^RESULT' >>"$out" || true
	done
done
echo "| $N of them | schedule (s) | bytes each | late p50 (ms) | late p99 (ms) | late max (ms) | schedule, first run (s) |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for c in "${cases[@]}"; do
	if ! grep -q "^RESULT $c " "$out"; then
		echo "| $c | skipped: ${c%%-*} not available | | | | | |"
		continue
	fi
	# Medians per column over the rounds.
	awk -v c="$c" '$2 == c && $1 == "RESULT" { for (i = 4; i <= 8; i++) v[i, ++n[i]] = $i }
	$2 == c && $1 == "FIRST" { v[9, ++n[9]] = $4 }
	function med(i,   k, j, m, a, x) { m = n[i]
		for (k = 1; k <= m; k++) { x = v[i, k] + 0; for (j = k - 1; j >= 1 && a[j] > x; j--) a[j + 1] = a[j]; a[j + 1] = x }
		return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
	END { printf "| %s | %.3f | %.0f | %.1f | %.1f | %.1f | %.3f |\n", c, med(4), med(5), med(6), med(7), med(8), med(9)
		if (ENVIRON["DATA"] != "") printf "%s %.3f %.0f %.1f %.1f %.1f\n", c, med(4), med(5), med(6), med(7), med(8) >> ENVIRON["DATA"] }' "$out"
done
[ "$have_luv" = 1 ] || echo "luv: skipped (Lua 5.4 module luv not found; Debian package lua-luv)"
