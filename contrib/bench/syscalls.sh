#!/usr/bin/env bash
# System calls per echo round trip and per HTTP keep-alive request of the
# weft examples, counted with `strace -c -f` (or perf's syscall
# tracepoints when they work): a correctness figure (no call bound to fail
# with EAGAIN), not a timing.  Prints a Markdown table.
#   contrib/bench/syscalls.sh [echo|http]...   (default: both)
# Environment: BUILDDIR (holds src/weft and contrib/bench/echoload),
# DURATION (seconds of load, default 2), CONNS (default 50).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
. "$here/common.sh"
BUILDDIR=${BUILDDIR:-$src}
DURATION=${DURATION:-2}
CONNS=${CONNS:-50}
WEFT_BIN=${WEFT_BIN:-$BUILDDIR/src/weft}
ECHOLOAD=${ECHOLOAD:-$BUILDDIR/contrib/bench/echoload}
export LUA_PATH="$src/lua/?.lua;;"
command -v strace >/dev/null || die "needs strace (Debian package strace)"
[ -x "$WEFT_BIN" ] || die "no $WEFT_BIN: build weft first"

tmp=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && stop_traced; rm -rf "$tmp"; }
trap cleanup EXIT

# start_traced CMD...: run the server under strace, wait for its port.
start_traced() {
	: >"$tmp/out" # not left to the background child: see copas-cpu.sh
	strace -f -c -o "$tmp/strace" -- "$@" >"$tmp/out" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		grep -q 'listening on' "$tmp/out" && return 0
		sleep 0.1
	done
	cat "$tmp/out" >&2
	die "the server did not start"
}

# Stop the server (strace's child): strace then writes its summary.
stop_traced() {
	local c
	for c in $(pgrep -P "$pid"); do kill "$c" 2>/dev/null || true; done
	wait "$pid" 2>/dev/null || true
	pid=
}

# calls NAME: how many NAME calls strace counted (0 if none).
calls() {
	awk -v n="$1" '$NF == n { print ($4 ~ /^[0-9]+$/ ? $4 : $5); found = 1 } END { if (!found) print 0 }' "$tmp/strace"
}
errors() {
	awk -v n="$1" '$NF == n { print ($5 ~ /^[0-9]+$/ && NF == 6 ? $5 : 0); found = 1 } END { if (!found) print 0 }' "$tmp/strace"
}

row() { # ops: the server's operations (round trips, requests)
	local ops=$1 c n e
	for c in recvfrom sendto epoll_wait; do
		n=$(calls "$c")
		e=$(errors "$c")
		printf '| %s | %s | %.3f | %.3f |\n' "$label" "$c" \
			"$(echo "$n / $ops" | bc -l)" "$(echo "$e / $ops" | bc -l)"
	done
}

echo "| scenario | system call | per round trip / request | of which failed |"
echo "|---|---|---:|---:|"
for what in "${@:-echo http}"; do
	for w in $what; do
	case $w in
	echo)
		[ -x "$ECHOLOAD" ] || die "no $ECHOLOAD: make contrib/bench/echoload"
		start_traced "$WEFT_BIN" "$src/contrib/examples/echo.lua" 127.0.0.1 0
		port=$(sed -n 's/.*listening on [^:]*:\([0-9]*\).*/\1/p' "$tmp/out" | head -n1)
		"$ECHOLOAD" -c "$CONNS" -d "$DURATION" -s 32 127.0.0.1 "$port" >"$tmp/load"
		stop_traced
		# strace saw the warm-up and the counted window alike: the
		# server's own count of operations is its sends (one a round
		# trip or response, as the table shows for sendto).
		label="echo, $CONNS conns, 32 B"
		row "$(calls sendto)"
		;;
	http)
		command -v wrk >/dev/null || { echo "| http | (wrk missing: skipped) | | |"; continue; }
		port=$(free_port)
		start_traced "$WEFT_BIN" "$src/contrib/examples/hello-http.lua" 127.0.0.1 "$port"
		wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" >"$tmp/load"
		stop_traced
		label="HTTP hello keep-alive, wrk -c$CONNS"
		row "$(awk '/requests in/ { print $1 }' "$tmp/load")"
		;;
	esac
	done
done
