#!/usr/bin/env bash
# imbalance.sh: half the connections ask for CPU-heavy work; what latency
# do the light ones see, with one weft worker and with two?
#
# imbalance.lua (one coroutine per connection) answers each line; a line
# beginning with "H" first costs BURN_US microseconds of Lua CPU (a loop
# calibrated once at the start of the run, the same count for every
# server).  echoload -l -H drives CONNS connections (default 20), the
# odd-numbered ones heavy, closed loop, 32-byte lines, and reports the
# latencies of the light and the heavy connections apart.  Nothing is
# pinned: the workers and echoload run wherever the kernel puts them, on
# all the CPUs.  The figure to read is the p99 latency of the light
# connections: with one worker they wait behind the heavy work; a second
# worker should take them.
#
# ROUNDS rounds, -t 1 and -t 2 interleaved; medians with min..max.  Prints
# Markdown; with DATA=FILE also "-t N light_p99_ms heavy_p99_ms" medians
# for a plot.  Environment (all optional): DURATION (s, default 5), ROUNDS
# (3), CONNS (20), BURN_US (1000), WORKERS ("1 2"), BUILDDIR, WEFT_BIN,
# DATA.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/../.." && pwd)
if [[ -z ${BUILDDIR:-} && $PWD != "$srcdir" && -x $PWD/contrib/bench/echoload ]]; then
	BUILDDIR=$PWD
fi
BUILDDIR=${BUILDDIR:-$srcdir}
ECHOLOAD=${ECHOLOAD:-$BUILDDIR/contrib/bench/echoload}
WEFT_BIN=${WEFT_BIN:-$BUILDDIR/src/weft}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-20}
BURN_US=${BURN_US:-1000}
WORKERS=${WORKERS:-1 2}
DATA=${DATA:-}

# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"

[[ -x $ECHOLOAD ]] || die "$ECHOLOAD not found (make contrib/bench/echoload)"
[[ -x $WEFT_BIN ]] || die "$WEFT_BIN not found (build weft first)"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] && ((CONNS >= 2)) || die "CONNS must be at least 2"
export LUA_PATH="$srcdir/lua/?.lua;${LUA_PATH:-;}"
clk_tck=$(getconf CLK_TCK)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/imbalance.XXXXXX")
server_pid=
load_pid=
group=()
cleanup() {
	kill_running
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

turns=$("$WEFT_BIN" "$here/imbalance.lua" calibrate "$BURN_US") || die "calibration failed"
[[ $turns =~ ^[0-9]+$ ]] || die "calibration printed '$turns'"

# measure WORKERS -> one line of figures on stdout (see `fields` below), or
# nothing after saying why on stderr.
measure() {
	local w=$1 line='' i port
	port=$(free_port)
	# An explicit port: every worker listens on it (shared socket).
	# Emptied here: the background child may open them after the first look.
	: >"$tmp/out"
	: >"$tmp/err"
	setsid "$WEFT_BIN" -t "$w" "$here/imbalance.lua" 127.0.0.1 "$port" "$turns" \
		>"$tmp/out" 2>"$tmp/err" </dev/null &
	server_pid=$!
	for ((i = 0; i < 200; i++)); do
		line=$(grep -m1 'listening on ' "$tmp/out" || true)
		[[ -n $line ]] && break
		kill -0 "$server_pid" 2>/dev/null || break
		sleep 0.05
	done
	if [[ -z $line ]]; then
		echo "weft -t $w did not start: $(head -n 5 "$tmp/err")" >&2
		stop_server
		return 0
	fi
	sleep 0.2 # the other workers
	if [[ -s $tmp/err ]]; then
		echo "weft -t $w: $(head -n 5 "$tmp/err")" >&2
		stop_server
		return 0
	fi
	mapfile -t group < <(pgrep -g "$server_pid")
	rm -f "$tmp/fifo"
	mkfifo "$tmp/fifo"
	timeout $((${DURATION%.*} + 30)) "$ECHOLOAD" -l -H -w -c "$CONNS" -d "$DURATION" -s 32 \
		127.0.0.1 "$port" >"$tmp/fifo" 2>"$tmp/load.err" &
	load_pid=$!
	local got u0 s0 u1 s1 result='' ok=1
	exec 3<"$tmp/fifo"
	if read -r got <&3 && [[ $got == "window start" ]]; then
		read -r u0 s0 < <(cpu_ticks)
		if read -r got <&3 && [[ $got == "window end" ]]; then
			read -r u1 s1 < <(cpu_ticks)
			read -r result <&3 || true
		else
			ok=0
		fi
	else
		ok=0
	fi
	exec 3<&-
	wait "$load_pid" || ok=0
	load_pid=
	stop_server
	if ((!ok)) || [[ $result != *heavy_p99_us=* ]]; then
		echo "echoload against weft -t $w failed: $(cat "$tmp/load.err")" >&2
		return 0
	fi
	local f k v out
	out="cpu=$(awk -v c=$((u1 + s1 - u0 - s0)) -v t="$clk_tck" -v d="$DURATION" 'BEGIN { printf "%.0f", 100 * c / t / d }')"
	for f in $result; do
		k=${f%%=*}
		v=${f#*=}
		case $k in light_* | heavy_*) out="$out $k=$v" ;; esac
	done
	echo "$out"
}

echo "imbalance: weft -t ${WORKERS// /, -t } running imbalance.lua; $CONNS connections, every other one heavy"
echo "(each of its lines costs $BURN_US us of Lua CPU: $turns loop turns here); $ROUNDS round(s) of ${DURATION} s;"
echo "nothing pinned ($(nproc) CPUs)"
echo
: >"$tmp/results"
for ((r = 1; r <= ROUNDS; r++)); do
	read -r -a order <<<"$WORKERS"
	if ((r % 2 == 0)); then
		order=()
		for w in $WORKERS; do order=("$w" "${order[@]}"); done
	fi
	for w in "${order[@]}"; do
		m=$(measure "$w")
		[[ -n $m ]] || continue
		echo "    round $r weft -t $w: $m"
		echo "$w $m" >>"$tmp/results"
	done
done
echo
awk -v workers="$WORKERS" -v data="$DATA" '
function median(a, n,    i, j, t) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function stat(w, key,    a, m, lo, hi) {
	lo = hi = v[w, 1, key]
	for (m = 1; m <= c[w]; m++) {
		a[m] = v[w, m, key]
		if (a[m] < lo) lo = a[m]
		if (a[m] > hi) hi = a[m]
	}
	mlo = lo; mhi = hi
	return median(a, c[w])
}
{
	c[$1]++
	for (i = 2; i <= NF; i++) { split($i, kv, "="); v[$1, c[$1], kv[1]] = kv[2] }
}
END {
	nw = split(workers, W, " ")
	print "| weft | light p99 (ms) | min..max | light p50 (ms) | light round trips/s | heavy p99 (ms) | heavy round trips/s | server CPU % | light p99 / 1 worker |"
	print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
	base = (1 in c) ? stat(1, "light_p99_us") : 0
	for (i = 1; i <= nw; i++) {
		w = W[i]
		if (!(w in c)) { printf "| -t %s | failed, see above | | | | | | | |\n", w; continue }
		p99 = stat(w, "light_p99_us"); lo = mlo; hi = mhi
		printf "| -t %s | %.2f | %.2f..%.2f | %.2f | %.0f | %.2f | %.0f | %.0f | %s |\n", w,
			p99 / 1000, lo / 1000, hi / 1000, stat(w, "light_p50_us") / 1000,
			stat(w, "light_rps"), stat(w, "heavy_p99_us") / 1000, stat(w, "heavy_rps"),
			stat(w, "cpu"), base ? sprintf("%.2f", p99 / base) : "-"
		if (data != "")
			printf "-t%s %.3f %.3f\n", w, p99 / 1000, stat(w, "heavy_p99_us") / 1000 > data
	}
	print ""
	print "Medians of the rounds. Latency: from sending a line to its echo, per connection kind."
}' "$tmp/results"
