#!/usr/bin/env bash
# scale.sh: connection scale.  For each size in SIZES (default 1000 5000
# 15000) and each echo server, connscale opens that many connections,
# sends 32 bytes on every one at once and waits for every echo; with all of
# them open and idle, the server's resident memory is read.  Figures:
#
#   bytes per connection   (server RSS with all connections open, pinged
#                          once and idle, minus its RSS before the first
#                          connection) / connections
#   accept all (s)         from the start of connscale until the server
#                          holds a descriptor for every connection (connscale
#                          has 256 connects in flight at a time)
#   ping all (ms)          then, from the first send to the last echo back
#
# Servers (SERVERS, in this order; one not installed is skipped with a
# line saying so): raw (rawecho), weft (contrib/examples/echo.lua),
# weft-512 (echo.lua with a 512-byte buffer), luv
# (echo-luv.lua), cqueues (echo-cqueues.lua), node (echo-node.js), and
# copas (contrib/bench/copas-echo.lua, a Copas line-echo program, on weft:
# its pings are lines, connscale -l).  The
# figure is runtime and program together, with whatever buffer the
# program holds per connection: echo.lua's is a 16 KiB weft.buffer
# (zero-filled, so resident), which weft-512 leaves out.  The server is pinned to SERVER_CPU,
# connscale to LOAD_CPU.  ROUNDS rounds, interleaved; medians with
# min..max.  Prints Markdown; with DATA=FILE also "server size bytes"
# medians for a plot.
#
# Every process needs a descriptor per connection and a few more: a size
# above the open-file limit (ulimit -n) less 64 is skipped with a line
# saying so.
#
# Environment (all optional): SIZES, SERVERS, ROUNDS (3), MSGSIZE (32),
# SERVER_CPU, LOAD_CPU (0 and 1), BUILDDIR, WEFT_BIN, LUA (lua5.4), DATA.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/../.." && pwd)
if [[ -z ${BUILDDIR:-} && $PWD != "$srcdir" && -x $PWD/contrib/bench/connscale ]]; then
	BUILDDIR=$PWD
fi
BUILDDIR=${BUILDDIR:-$srcdir}
RAWECHO=${RAWECHO:-$BUILDDIR/contrib/bench/rawecho}
CONNSCALE=${CONNSCALE:-$BUILDDIR/contrib/bench/connscale}
WEFT_BIN=${WEFT_BIN:-$BUILDDIR/src/weft}
LUA=${LUA:-$(command -v lua5.4 || true)}
SIZES=${SIZES:-1000 5000 15000}
SERVERS=${SERVERS:-raw weft weft-512 copas luv cqueues node}
ROUNDS=${ROUNDS:-3}
MSGSIZE=${MSGSIZE:-32}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
DATA=${DATA:-}

# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"

[[ -x $RAWECHO && -x $CONNSCALE ]] || die "build the tools first (make contrib/bench/rawecho contrib/bench/connscale)"
[[ -x $WEFT_BIN ]] || die "$WEFT_BIN not found (build weft first)"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
for tool in taskset setsid pgrep; do
	command -v $tool >/dev/null || die "$tool not found (util-linux, procps)"
done
weft_path="$srcdir/lua/?.lua;${LUA_PATH:-;}"
# The hard limit is what a process may raise its own to.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fdmax=$(ulimit -n)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/scale.XXXXXX")
server_pid=
load_pid=
group=()
cleanup() {
	exec 4>&- 2>/dev/null || true
	kill_running
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

lua_has() { [[ -n $LUA ]] && "$LUA" -e "assert(_VERSION == 'Lua 5.4'); require '$1'" 2>/dev/null; }

# server_cmd NAME -> sets `cmd` (and `lineflag`, connscale's -l for a line
# server); returns 1 after saying why when the server is not available here.
server_cmd() {
	lineflag=()
	case $1 in
	raw) cmd=("$RAWECHO" 127.0.0.1 0) ;;
	weft) cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" "$srcdir/contrib/examples/echo.lua" 127.0.0.1 0) ;;
	weft-512) cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" "$srcdir/contrib/examples/echo.lua" 127.0.0.1 0 512) ;;
	copas)
		cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" "$here/copas-echo.lua" 127.0.0.1 0)
		lineflag=(-l)
		;;
	luv)
		lua_has luv || { echo "skipped luv: no Lua 5.4 with the luv module (Debian package lua-luv)"; return 1; }
		cmd=("$LUA" "$here/echo-luv.lua" 127.0.0.1 0)
		;;
	cqueues)
		lua_has cqueues || { echo "skipped cqueues: no Lua 5.4 with the cqueues module (Debian package lua-cqueues)"; return 1; }
		cmd=("$LUA" "$here/echo-cqueues.lua" 127.0.0.1 0)
		;;
	node)
		command -v node >/dev/null || { echo "skipped node: node is not installed (Debian package nodejs)"; return 1; }
		cmd=(node "$here/echo-node.js" 127.0.0.1 0)
		;;
	*) die "unknown server '$1' (known: raw weft weft-512 copas luv cqueues node)" ;;
	esac
}

# Open descriptors of the server's processes.
fd_count() {
	local pid sum=0 fds
	for pid in "${group[@]}"; do
		fds=("/proc/$pid/fd"/*)
		sum=$((sum + ${#fds[@]}))
	done
	echo "$sum"
}

# Resident memory of the server's processes, in kB.
rss_kb() {
	local pid sum=0 kb
	for pid in "${group[@]}"; do
		kb=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status") || die "server process $pid vanished"
		sum=$((sum + kb))
	done
	echo "$sum"
}

# measure NAME SIZE -> "bytes_per_conn connect_s ping_ms" on stdout, or
# nothing after saying why on stderr.
measure() {
	local name=$1 n=$2 line='' i
	server_cmd "$name" >/dev/null
	# Emptied here: the background child may open them after the first look.
	: >"$tmp/out"
	: >"$tmp/err"
	setsid taskset -c "$SERVER_CPU" "${cmd[@]}" >"$tmp/out" 2>"$tmp/err" </dev/null &
	server_pid=$!
	for ((i = 0; i < 200; i++)); do
		line=$(grep -m1 'listening on ' "$tmp/out" || true)
		[[ -n $line ]] && break
		kill -0 "$server_pid" 2>/dev/null || break
		sleep 0.05
	done
	if ! [[ $line =~ listening\ on\ ([^ ]*):([0-9]+) ]]; then
		echo "$name did not start: $(head -n 5 "$tmp/err")" >&2
		stop_server
		return 0
	fi
	local port=${BASH_REMATCH[2]}
	sleep 0.3 # settle: a runtime that allocates lazily at start
	mapfile -t group < <(pgrep -g "$server_pid")
	local before after got ping='' ok=0 t0 t1 accept='' base nfd
	before=$(rss_kb)
	base=$(fd_count)
	rm -f "$tmp/in" "$tmp/load.out"
	mkfifo "$tmp/in" "$tmp/load.out"
	t0=$(date +%s%N)
	taskset -c "$LOAD_CPU" "$CONNSCALE" -w "${lineflag[@]}" -n "$n" -s "$MSGSIZE" -T 60 127.0.0.1 "$port" \
		<"$tmp/in" >"$tmp/load.out" 2>"$tmp/load.err" &
	load_pid=$!
	exec 4>"$tmp/in" # held open: connscale keeps its connections until it closes
	exec 5<"$tmp/load.out"
	while read -r -t 130 got <&5; do
		case $got in
		connected*)
			# Until the server has accepted them all (a descriptor
			# each), for at most 60 s.
			for ((i = 0; i < 3000; i++)); do
				nfd=$(fd_count)
				((nfd - base >= n)) && break
				sleep 0.02
			done
			t1=$(date +%s%N)
			((nfd - base >= n)) || { echo "$name accepted $((nfd - base)) of $n connections in 60 s" >&2; break; }
			accept=$(((t1 - t0) / 1000000))
			echo go >&4
			;;
		pinged*) ping=${got##*seconds=} ;;
		ready) ok=1; break ;;
		esac
	done
	if ((ok)); then
		sleep 0.2 # a runtime that frees or grows after the burst
		after=$(rss_kb)
	fi
	exec 4>&-
	exec 5<&-
	wait "$load_pid" || ok=0
	load_pid=
	kill -0 "$server_pid" 2>/dev/null || { ok=0; echo "$name died: $(head -n 5 "$tmp/err")" >&2; }
	stop_server
	if ((!ok)); then
		echo "$name, $n connections: connscale failed: $(cat "$tmp/load.err")" >&2
		return 0
	fi
	awk -v b="$before" -v a="$after" -v n="$n" -v c="$accept" -v p="$ping" \
		'BEGIN { printf "%.0f %.3f %.1f\n", (a - b) * 1024 / n, c / 1000, p * 1000 }'
}

servers=()
for s in $SERVERS; do
	if server_cmd "$s"; then servers+=("$s"); fi
done
sizes=()
for n in $SIZES; do
	[[ $n =~ ^[1-9][0-9]*$ ]] || die "SIZES: '$n' is not a number"
	if ((n + 64 > fdmax)); then
		echo "skipped $n connections: more than the open-file limit ($fdmax) allows a process"
	else
		sizes+=("$n")
	fi
done
if ((${#sizes[@]} == 0)); then
	echo "nothing measured: no connection count fits the open-file limit"
	exit 0
fi
echo "scale: ${sizes[*]} connections; servers ${servers[*]}; $ROUNDS round(s); $MSGSIZE-byte ping;"
echo "server on CPU $SERVER_CPU, connscale on CPU $LOAD_CPU"
echo
: >"$tmp/results"
for ((r = 1; r <= ROUNDS; r++)); do
	for n in "${sizes[@]}"; do
		for s in "${servers[@]}"; do
			m=$(measure "$s" "$n")
			[[ -n $m ]] || continue
			read -r b c p <<<"$m"
			printf '    round %d %-8s %6d connections: %6d bytes each, accept all %6.3f s, ping all %7.1f ms\n' \
				"$r" "$s" "$n" "$b" "$c" "$p"
			echo "$s $n $b $c $p" >>"$tmp/results"
		done
	done
done
echo
awk -v servers="${servers[*]}" -v sizes="${sizes[*]}" -v data="$DATA" '
function median(a, n,    i, j, t) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function stat(k, col,    a, m, lo, hi) {
	lo = hi = v[k, 1, col]
	for (m = 1; m <= c[k]; m++) {
		a[m] = v[k, m, col]
		if (a[m] < lo) lo = a[m]
		if (a[m] > hi) hi = a[m]
	}
	mlo = lo; mhi = hi
	return median(a, c[k])
}
{ k = $1 SUBSEP $2; c[k]++; for (i = 3; i <= NF; i++) v[k, c[k], i] = $i }
END {
	ns = split(servers, S, " "); nn = split(sizes, N, " ")
	print "| server | connections | bytes per connection | min..max | bytes / raw C | accept all (s) | ping all (ms) | min..max | ping / raw C |"
	print "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
	for (i = 1; i <= nn; i++) {
		raw = ("raw" SUBSEP N[i]) in c ? stat("raw" SUBSEP N[i], 3) : 0
		rawp = ("raw" SUBSEP N[i]) in c ? stat("raw" SUBSEP N[i], 5) : 0
		for (j = 1; j <= ns; j++) {
			k = S[j] SUBSEP N[i]
			if (!(k in c)) {
				printf "| %s | %d | failed, see above | | | | | | |\n", S[j], N[i]
				continue
			}
			b = stat(k, 3); blo = mlo; bhi = mhi
			cs = stat(k, 4)
			p = stat(k, 5); plo = mlo; phi = mhi
			printf "| %s | %d | %.0f | %.0f..%.0f | %s | %.3f | %.1f | %.1f..%.1f | %s |\n",
				S[j], N[i], b, blo, bhi, (raw > 0 ? sprintf("%.1f", b / raw) : "-"),
				cs, p, plo, phi, (rawp > 0 ? sprintf("%.1f", p / rawp) : "-")
			if (data != "") print S[j], N[i], b, p > data
		}
	}
	print ""
	print "Medians of the rounds. Bytes per connection: the server'"'"'s resident memory with every"
	print "connection open, pinged once and idle, less its resident memory before the first, over the"
	print "connections: runtime and program together (kernel socket buffers are not in it)."
}' "$tmp/results"
