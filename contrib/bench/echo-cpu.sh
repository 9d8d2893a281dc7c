#!/usr/bin/env bash
# echo-cpu.sh: server CPU time per echo round-trip, weft against raw epoll C.
#
# Requests per second swing by tens of percent on a shared machine, because
# the load generator and the server compete with whatever else runs there.
# The CPU time the server itself burns for each round-trip moves far less:
# it counts the work done, not how long the work waited for a CPU.  So each
# server runs alone on CPU 0, echoload drives it from CPU 1, and we read the
# server's utime+stime from /proc across exactly the window echoload counts.
#
# Environment (all optional):
#   BUILDDIR   where the binaries are (default: the current directory if it
#              holds a built contrib/bench/echoload, as under `make bench` in a
#              separate build directory, else the source tree of this script)
#   SERVERS    which servers, in order (default: "raw weft node luv cqueues";
#              node, luv and cqueues are skipped with a note when not
#              installed)
#   DURATION   seconds of counted load per measurement (default 5)
#   ROUNDS     times the whole set is measured, interleaved (default 3)
#   CONNS      connections (default 50); MSGSIZE bytes per message (default 64)
#   SERVER_CPU, LOAD_CPU   the CPUs to pin to (default 0 and 1)
#   RAWECHO, ECHOLOAD, WEFT_BIN, LUA   programs to use instead of the defaults
#   RAW_CMD, WEFT_CMD, NODE_CMD, LUV_CMD, CQUEUES_CMD
#              a whole server command line, split on blanks, instead of the
#              default one (e.g. WEFT_CMD="/tmp/rawecho 127.0.0.1 0" to try the
#              script before weft builds); it must bind port 0 and print
#              "listening on HOST:PORT".
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/../.." && pwd)
# `make bench` runs us from the build directory without saying so; in a
# VPATH build that is not the source tree, so look there first.
if [[ -z ${BUILDDIR:-} && $PWD != "$srcdir" && -x $PWD/contrib/bench/echoload ]]; then
	BUILDDIR=$PWD
fi
BUILDDIR=${BUILDDIR:-$srcdir}
RAWECHO=${RAWECHO:-$BUILDDIR/contrib/bench/rawecho}
ECHOLOAD=${ECHOLOAD:-$BUILDDIR/contrib/bench/echoload}
WEFT_BIN=${WEFT_BIN:-$BUILDDIR/src/weft}
SERVERS=${SERVERS:-raw weft node luv cqueues}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
MSGSIZE=${MSGSIZE:-64}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}

# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"

need_exe() {
	[[ -x $1 ]] || die "$1 not found or not executable (build it first: make bench)"
}

for tool in taskset setsid pgrep; do
	command -v $tool >/dev/null || die "$tool not found (util-linux, procps)"
done
need_exe "$ECHOLOAD"
[[ $DURATION =~ ^[0-9]+([.][0-9]+)?$ ]] || die "DURATION must be a number of seconds"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
clk_tck=$(getconf CLK_TCK)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/echo-cpu.XXXXXX")
server_pid=
load_pid=
group=()
cleanup() {
	# Whatever stopped us, leave no server or load generator behind.
	kill_running
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Sets the array `cmd` to the command line of server $1.  Returns 1, after
# saying why, for an optional peer that is not on this machine.
server_cmd() {
	local override
	case $1 in
	raw)
		override=${RAW_CMD:-}
		if [[ -z $override ]]; then
			need_exe "$RAWECHO"
			cmd=("$RAWECHO" 127.0.0.1 0)
		fi
		;;
	weft)
		override=${WEFT_CMD:-}
		if [[ -z $override ]]; then
			need_exe "$WEFT_BIN"
			# The uninstalled Lua modules, as `make check` sets them.
			cmd=(env "LUA_PATH=$srcdir/lua/?.lua;${LUA_PATH:-;}"
			     "$WEFT_BIN" "$srcdir/contrib/examples/echo.lua" 127.0.0.1 0)
		fi
		;;
	weft2)
		# Two workers sharing one poller and one listening socket, both
		# time-sharing the server CPU: what the multi-worker machinery
		# costs per round-trip when nothing runs in parallel (the
		# many-cores figure is http-scale.sh's).
		override=${WEFT2_CMD:-}
		if [[ -z $override ]]; then
			need_exe "$WEFT_BIN"
			cmd=(env "LUA_PATH=$srcdir/lua/?.lua;${LUA_PATH:-;}"
			     "$WEFT_BIN" -t 2 "$srcdir/contrib/examples/echo.lua" 127.0.0.1 0)
		fi
		;;
	node)
		override=${NODE_CMD:-}
		if [[ -z $override ]]; then
			if ! command -v node >/dev/null; then
				echo "skipping node: node is not installed" >&2
				return 1
			fi
			cmd=(node "$here/echo-node.js" 127.0.0.1 0)
		fi
		;;
	luv)
		override=${LUV_CMD:-}
		if [[ -z $override ]]; then
			local lua=${LUA:-$(command -v lua5.4 || command -v lua || true)}
			if [[ -z $lua ]] || ! "$lua" -e 'assert(_VERSION == "Lua 5.4"); require "luv"' 2>/dev/null; then
				echo "skipping luv: no Lua 5.4 with the luv module" >&2
				return 1
			fi
			cmd=("$lua" "$here/echo-luv.lua" 127.0.0.1 0)
		fi
		;;
	cqueues)
		override=${CQUEUES_CMD:-}
		if [[ -z $override ]]; then
			local lua=${LUA:-$(command -v lua5.4 || command -v lua || true)}
			if [[ -z $lua ]] || ! "$lua" -e 'assert(_VERSION == "Lua 5.4"); require "cqueues"' 2>/dev/null; then
				echo "skipping cqueues: no Lua 5.4 with the cqueues module" >&2
				return 1
			fi
			cmd=("$lua" "$here/echo-cqueues.lua" 127.0.0.1 0)
		fi
		;;
	*)
		die "unknown server '$1' in SERVERS (known: raw weft weft2 node luv cqueues)"
		;;
	esac
	if [[ -n $override ]]; then
		read -r -a cmd <<<"$override"
	fi
	return 0
}


# Read a line from fd $1 within $2 seconds; it must be $3.  If it is not,
# echoload failed against server $4, and its stderr says why.
expect_line() {
	local got=''
	if ! read -r -t "$2" got <&"$1" || [[ $got != "$3" ]]; then
		wait "$load_pid" 2>/dev/null || true
		die "echoload against $4: expected '$3', got '$got': $(cat "$tmp/load.err")"
	fi
}

# Measure server $1 (command line in `cmd`) once; append one result line
# "name us_per_rt roundtrips rps cpu_s util% p50 p99" to $tmp/results.
measure() {
	local name=$1 round=$2
	local out=$tmp/$name.$round.out err=$tmp/$name.$round.err
	: >"$out" # there before the first look for the port
	# The server gets a process group of its own (setsid execs in place:
	# a background child of a script leads no group), so that its CPU time
	# is found and it is stopped even when the command is a wrapper that
	# does not exec the real server, as pyenv's shims and some libtool
	# wrappers do not.  taskset's pinning is inherited by all of it.
	setsid taskset -c "$SERVER_CPU" "${cmd[@]}" >"$out" 2>"$err" &
	server_pid=$!

	local line='' deadline=$((SECONDS + 10))
	while ((SECONDS < deadline)); do
		line=$(grep -m1 'listening on ' "$out" || true)
		[[ -n $line ]] && break
		kill -0 "$server_pid" 2>/dev/null ||
			die "$name exited before listening: $(cat "$err")"
		sleep 0.05
	done
	[[ $line =~ listening\ on\ ([^ ]*):([0-9]+) ]] ||
		die "$name did not say 'listening on HOST:PORT' within 10 s"
	mapfile -t group < <(pgrep -g "$server_pid")
	((${#group[@]} > 0)) || die "$name: no process in group $server_pid"
	local host=${BASH_REMATCH[1]} port=${BASH_REMATCH[2]}
	host=${host#[}
	host=${host%]}
	case $host in 0.0.0.0 | ::) host=127.0.0.1 ;; esac

	# echoload -w says when its counted window opens and closes; sampling
	# the server's CPU time on those lines leaves out connection set-up,
	# warm-up and teardown.  The lag of a pipe read is about a millisecond
	# against seconds of window.
	local fifo=$tmp/load.fifo
	rm -f "$fifo"
	mkfifo "$fifo"
	local limit
	limit=$(awk -v d="$DURATION" 'BEGIN { printf "%d", d + 30 }')
	taskset -c "$LOAD_CPU" timeout "$limit" "$ECHOLOAD" -w -c "$CONNS" \
		-d "$DURATION" -s "$MSGSIZE" "$host" "$port" >"$fifo" 2>"$tmp/load.err" &
	load_pid=$!
	local u0 s0 u1 s1 result
	exec 3<"$fifo"
	expect_line 3 "$limit" "window start" "$name"
	read -r u0 s0 < <(cpu_ticks)
	expect_line 3 "$limit" "window end" "$name"
	read -r u1 s1 < <(cpu_ticks)
	read -r -t 30 result <&3 || true
	exec 3<&-
	wait "$load_pid" || die "echoload against $name failed: $(cat "$tmp/load.err")"
	load_pid=
	kill -0 "$server_pid" 2>/dev/null || die "$name died during the run: $(cat "$err")"
	stop_server

	[[ $result =~ roundtrips=([0-9]+).*rps=([0-9.]+).*p50_us=([0-9.]+).*p99_us=([0-9.]+) ]] ||
		die "unexpected echoload output: '$result'"
	awk -v name="$name" -v rt="${BASH_REMATCH[1]}" -v rps="${BASH_REMATCH[2]}" \
		-v p50="${BASH_REMATCH[3]}" -v p99="${BASH_REMATCH[4]}" \
		-v ticks=$((u1 + s1 - u0 - s0)) -v uticks=$((u1 - u0)) \
		-v hz="$clk_tck" -v d="$DURATION" \
		-v round="$round" -v rounds="$ROUNDS" -v results="$tmp/results" '
	BEGIN {
		cpu = ticks / hz
		us = cpu * 1e6 / rt
		usr = uticks / hz * 1e6 / rt
		util = 100 * cpu / d
		printf "round %d/%d %-8s %7.2f us/rt (user %5.2f)  cpu %6.3f s %3.0f%%  %8d rt  %6.0f rt/s  p50 %6.0f us  p99 %6.0f us\n",
			round, rounds, name, us, usr, cpu, util, rt, rps, p50, p99
		printf "%s %.4f %.4f %d %.0f %.1f %.1f %.1f\n",
			name, us, usr, rt, rps, util, p50, p99 >> results
	}'
}

# Resolve every server first, so a missing binary fails before any load.
declare -A cmds
order=()
for s in $SERVERS; do
	if server_cmd "$s"; then
		cmds[$s]=$(printf '%q ' "${cmd[@]}")
		order+=("$s")
	fi
done
((${#order[@]} > 0)) || die "no server to measure"

echo "echo-cpu: ${order[*]}; $ROUNDS round(s) of ${DURATION} s, $CONNS connections," \
	"$MSGSIZE-byte messages; server on CPU $SERVER_CPU, load on CPU $LOAD_CPU"
for s in "${order[@]}"; do
	echo "  $s: ${cmds[$s]}"
done
: >"$tmp/results"
for ((r = 1; r <= ROUNDS; r++)); do
	for s in "${order[@]}"; do
		eval "cmd=(${cmds[$s]})"
		measure "$s" "$r"
	done
done

# Medians per server, and each against raw when raw was measured.
echo
awk -v order="${order[*]}" '
function median(a, n,    i, j, t) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
			t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
		}
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
# Median of column col over the runs of server s.
function med(s, col,    j, a) {
	for (j = 1; j <= n[s]; j++)
		a[j] = v[s, j, col]
	return median(a, n[s])
}
{
	n[$1]++
	for (col = 2; col <= NF; col++)
		v[$1, n[$1], col] = $col
}
END {
	k = split(order, names, " ")
	if ("raw" in n)
		raw = med("raw", 2)
	printf "%-8s %6s %11s %16s %10s %5s %8s %8s %8s %7s\n", "server", "rounds",
		"us/rt med", "min..max", "user us/rt", "cpu%", "rt/s", "p50 us", "p99 us", "vs raw"
	for (i = 1; i <= k; i++) {
		s = names[i]
		lo = hi = v[s, 1, 2]
		for (j = 2; j <= n[s]; j++) {
			if (v[s, j, 2] < lo) lo = v[s, j, 2]
			if (v[s, j, 2] > hi) hi = v[s, j, 2]
		}
		m[s] = med(s, 2)
		rel = raw ? sprintf("%.2fx", m[s] / raw) : "-"
		printf "%-8s %6d %11.2f %7.2f..%-7.2f %10.2f %4.0f%% %8.0f %8.0f %8.0f %7s\n",
			s, n[s], m[s], lo, hi, med(s, 3), med(s, 6), med(s, 5),
			med(s, 7), med(s, 8), rel
	}
	if (raw && ("weft" in m))
		printf "\nweft/raw = %.2f (median server CPU time per round-trip)\n",
			m["weft"] / raw
}' "$tmp/results"
