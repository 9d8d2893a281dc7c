#!/usr/bin/env bash
# http-cpu.sh: server CPU time per HTTP hello-world request, weft with 1
# and with 2 workers, measured side by side in one run.  The server is
# pinned to CPU 0 (both workers share it, so the figure shows what the
# second worker costs), wrk drives it from CPU 1 with 50 connections.
# CPU time (utime+stime from /proc) per request is the stable figure on a
# shared machine; requests/s is printed for information.
#   env: DURATION (s, default 5), ROUNDS (default 3), WEFT_BIN, WRK
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
WEFT_BIN=${WEFT_BIN:-$top/src/weft}
WRK=${WRK:-wrk}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
command -v "$WRK" >/dev/null || { echo "http-cpu.sh: wrk not found (apt-get install wrk)" >&2; exit 1; }
export LUA_PATH="$top/lua/?.lua;${LUA_PATH:-;}"
tck=$(getconf CLK_TCK)

cpu_ticks() { # utime+stime of a process
	awk '{ print $14 + $15 }' "/proc/$1/stat"
}

measure() { # workers -> prints "us_per_request requests_per_s"
	local out pid port line
	out=$(mktemp)
	taskset -c 0 "$WEFT_BIN" -t "$1" "$top/contrib/examples/hello-http.lua" 127.0.0.1 0 >"$out" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		line=$(grep -m1 'listening on' "$out" || true)
		[[ -n $line ]] && break
		sleep 0.05
	done
	[[ $line =~ listening\ on\ ([^ ]*):([0-9]+) ]] || { echo "server did not start" >&2; kill $pid; exit 1; }
	port=${BASH_REMATCH[2]}
	taskset -c 1 "$WRK" -t1 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null 2>&1 # warm-up
	local c0 c1 res reqs
	c0=$(cpu_ticks $pid)
	res=$(taskset -c 1 "$WRK" -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$port/")
	c1=$(cpu_ticks $pid)
	kill $pid; wait $pid 2>/dev/null || true
	rm -f "$out"
	reqs=$(echo "$res" | awk '/requests in/ { print $1 }')
	awk -v c=$((c1 - c0)) -v t="$tck" -v r="$reqs" -v d="$DURATION" \
		'BEGIN { printf "%.2f %.0f\n", c / t * 1e6 / r, r / d }'
}

declare -a one two
for r in $(seq "$ROUNDS"); do
	read -r a ra < <(measure 1)
	read -r b rb < <(measure 2)
	echo "round $r: 1 worker ${a} us/req (${ra} req/s)   2 workers ${b} us/req (${rb} req/s)"
	one+=("$a")
	two+=("$b")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
m1=$(median "${one[@]}")
m2=$(median "${two[@]}")
echo "median server CPU per request: 1 worker ${m1} us, 2 workers ${m2} us ($(awk -v a="$m1" -v b="$m2" 'BEGIN { printf "%+.1f%%", (b / a - 1) * 100 }'))"
