#!/usr/bin/env bash
# http-cpu.sh: server CPU time per HTTP hello-world request, weft with 1
# and with 2 workers, measured side by side in one run.  The server is
# pinned to CPU 0, wrk drives it from CPU 1 with 50 connections.  With 2
# workers both time-share CPU 0: the figure is what the multi-worker
# machinery (shared poller and token, hand-offs between the workers) costs
# when nothing can run in parallel and no hand-off crosses CPUs.  It is not
# what a second worker costs or buys with a CPU of its own; http-scale.sh,
# unpinned, measures that.
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

# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"

stat_line() { # port -> "events handoffs wakes" from GET /stats
	exec 3<>"/dev/tcp/127.0.0.1/$1"
	printf 'GET /stats HTTP/1.1\r\nHost: x\r\n\r\n' >&3
	local body
	body=$(timeout 2 cat <&3 || true)
	exec 3<&-
	echo "$body" | awk '$1 == "events" { e = $2 } $1 == "handoffs" { h = $2 } $1 == "wakes" { w = $2 }
		END { print e + 0, h + 0, w + 0 }'
}

measure() { # workers -> prints "us_per_request requests_per_s handoff_fraction wakes_per_request"
	local out pid port line
	out=$(mktemp)
	# An explicit port: with port 0, the second worker does not share the
	# first one's listening socket, fails, and one worker serves alone.
	taskset -c 0 "$WEFT_BIN" -t "$1" "$top/contrib/examples/hello-http.lua" 127.0.0.1 "$(free_port)" >"$out" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		line=$(grep -m1 'listening on' "$out" || true)
		[[ -n $line ]] && break
		sleep 0.05
	done
	[[ $line =~ listening\ on\ ([^ ]*):([0-9]+) ]] || { echo "server did not start" >&2; kill $pid; exit 1; }
	port=${BASH_REMATCH[2]}
	sleep 0.2 # the other workers start too
	if grep -q traceback "$out"; then
		echo "a worker failed:" >&2
		cat "$out" >&2
		kill $pid
		exit 1
	fi
	taskset -c 1 "$WRK" -t1 -c50 -d1s "http://127.0.0.1:$port/" >/dev/null 2>&1 # warm-up
	local cu0 cs0 cu1 cs1 res reqs s0 s1
	s0=$(stat_line "$port")
	group=("$pid")
	read -r cu0 cs0 < <(cpu_ticks)
	res=$(taskset -c 1 "$WRK" -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$port/")
	read -r cu1 cs1 < <(cpu_ticks)
	s1=$(stat_line "$port")
	kill $pid; wait $pid 2>/dev/null || true
	rm -f "$out"
	reqs=$(echo "$res" | awk '/requests in/ { print $1 }')
	# events harvested, hand-offs to the other worker, wake-ups
	read -r e0 h0 w0 <<<"$s0"
	read -r e1 h1 w1 <<<"$s1"
	awk -v c=$((cu1 + cs1 - cu0 - cs0)) -v t="$tck" -v r="$reqs" -v d="$DURATION" \
		-v e=$((e1 - e0)) -v h=$((h1 - h0)) -v w=$((w1 - w0)) \
		'BEGIN { printf "%.2f %.0f %.3f %.3f\n", c / t * 1e6 / r, r / d, (e ? h / e : 0), w / r }'
}

declare -a one two
for r in $(seq "$ROUNDS"); do
	read -r a ra _ wa < <(measure 1)
	read -r b rb hb wb < <(measure 2)
	echo "round $r: 1 worker ${a} us/req (${ra} req/s, ${wa} wakes/req)   2 workers on 1 CPU ${b} us/req (${rb} req/s, ${wb} wakes/req, ${hb} of events handed off)"
	one+=("$a")
	two+=("$b")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
m1=$(median "${one[@]}")
m2=$(median "${two[@]}")
echo "median server CPU per request, all on CPU 0: 1 worker ${m1} us, 2 workers time-sharing it ${m2} us ($(awk -v a="$m1" -v b="$m2" 'BEGIN { printf "%+.1f%%", (b / a - 1) * 100 }'))"
