#!/usr/bin/env bash
# copas-cpu.sh: server CPU time per request of Copas programs on weft,
# side by side in one run with the raw weft examples, the raw C server
# (rawecho, and rawecho -h for HTTP) and, when it is installed, upstream
# Copas on LuaSocket.
#
#   echo: a line-echo server (contrib/bench/copas-echo.lua) driven by
#         echoload -l (closed loop, CONNS connections, MSGSIZE-byte lines);
#   http: a keep-alive "hello world" server (contrib/bench/copas-http.lua)
#         driven by wrk -c CONNS.
#
# Each server runs alone on SERVER_CPU, the load generator on LOAD_CPU; the
# figure is the server's utime+stime from /proc per round-trip or request.
# Upstream Copas runs when `$LUA -e 'require "copas"; require "socket"'`
# finds it on LUA_PATH/LUA_CPATH (this tree's own copas alias is kept off
# that path); otherwise it is skipped with a note.
#
# Environment (all optional): DURATION (s, default 5), ROUNDS (default 3),
# CONNS (default 50), MSGSIZE (default 64), TESTS ("echo http"),
# SERVER_CPU, LOAD_CPU (0 and 1), BUILDDIR, WEFT_BIN, LUA, WRK.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/../.." && pwd)
if [[ -z ${BUILDDIR:-} && $PWD != "$srcdir" && -x $PWD/contrib/bench/echoload ]]; then
	BUILDDIR=$PWD
fi
BUILDDIR=${BUILDDIR:-$srcdir}
RAWECHO=${RAWECHO:-$BUILDDIR/contrib/bench/rawecho}
ECHOLOAD=${ECHOLOAD:-$BUILDDIR/contrib/bench/echoload}
WEFT_BIN=${WEFT_BIN:-$BUILDDIR/src/weft}
LUA=${LUA:-$(command -v lua5.4 || command -v lua || true)}
WRK=${WRK:-wrk}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-50}
MSGSIZE=${MSGSIZE:-64}
TESTS=${TESTS:-echo http}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
tck=$(getconf CLK_TCK)

# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"

[[ -x $RAWECHO && -x $ECHOLOAD ]] || die "build the tools first: make bench (or make contrib/bench/rawecho contrib/bench/echoload)"
[[ -x $WEFT_BIN ]] || die "$WEFT_BIN not found"
weft_path="$srcdir/lua/?.lua;${LUA_PATH:-;}"

# Upstream Copas: the caller's LUA_PATH without this tree's lua/ (which
# contrib/bench/run puts first, and which holds weft's own copas alias).
upstream_path=${LUA_PATH-}
upstream_path=${upstream_path//"$srcdir/lua/?.lua;"/}
upstream=0
if [[ -n $LUA ]] && env -u LUA_INIT LUA_PATH="$upstream_path" "$LUA" -e 'require "copas"; require "socket"
	assert(not package.searchpath("weft.copas", package.path))' 2>/dev/null; then
	upstream=1
else
	echo "note: upstream Copas with LuaSocket not found on LUA_PATH for ${LUA:-lua}: skipped" >&2
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/copas-cpu.XXXXXX")
server_pid=
group=()
cleanup() {
	[[ -n $server_pid ]] && { kill -KILL -- "-$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; }
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# server_cmd TEST NAME -> sets `cmd`
server_cmd() {
	case $1:$2 in
	echo:raw) cmd=("$RAWECHO" 127.0.0.1 0) ;;
	http:raw) cmd=("$RAWECHO" -h 127.0.0.1 0) ;;
	echo:weft) cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" "$srcdir/contrib/examples/echo.lua" 127.0.0.1 0) ;;
	http:weft) cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" "$srcdir/contrib/examples/hello-http.lua" 127.0.0.1 0) ;;
	echo:weft2) cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" -t 2 "$srcdir/contrib/examples/echo.lua" 127.0.0.1 "$(free_port)") ;;
	http:weft2) cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" -t 2 "$srcdir/contrib/examples/hello-http.lua" 127.0.0.1 "$(free_port)") ;;
	*:copas) cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" "$here/copas-$1.lua" 127.0.0.1 0) ;;
	*:copas2) cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" -t 2 "$here/copas-$1.lua" 127.0.0.1 "$(free_port)") ;;
	*:upstream) cmd=(env "LUA_PATH=$upstream_path" "$LUA" "$here/copas-$1.lua" 127.0.0.1 0) ;;
	esac
}

start_server() { # -> sets server_pid, port, group
	# Emptied here, not by the redirection below: that one happens in the
	# background child, maybe after the first look for the port, which
	# would then find the previous server's line.
	: >"$tmp/out"
	setsid taskset -c "$SERVER_CPU" "${cmd[@]}" >"$tmp/out" 2>"$tmp/err" &
	server_pid=$!
	local line='' i
	for ((i = 0; i < 200; i++)); do
		line=$(grep -m1 'listening on ' "$tmp/out" || true)
		[[ -n $line ]] && break
		kill -0 "$server_pid" 2>/dev/null || die "${cmd[*]} exited: $(cat "$tmp/err")"
		sleep 0.05
	done
	[[ $line =~ listening\ on\ ([^ ]*):([0-9]+) ]] || die "${cmd[*]} did not start"
	port=${BASH_REMATCH[2]}
	sleep 0.1
	mapfile -t group < <(pgrep -g "$server_pid")
}

# measure TEST NAME -> "us_per_request requests" in $tmp/measured
measure() {
	server_cmd "$1" "$2"
	start_server
	local u0 s0 u1 s1 n
	if [[ $1 == echo ]]; then
		mkfifo "$tmp/fifo"
		taskset -c "$LOAD_CPU" timeout $((${DURATION%.*} + 30)) "$ECHOLOAD" -l -w -c "$CONNS" \
			-d "$DURATION" -s "$MSGSIZE" 127.0.0.1 "$port" >"$tmp/fifo" 2>"$tmp/load.err" &
		local lp=$! got
		exec 3<"$tmp/fifo"
		read -r got <&3 && [[ $got == "window start" ]] || die "echoload against $2: $(cat "$tmp/load.err")"
		read -r u0 s0 < <(cpu_ticks)
		read -r got <&3 && [[ $got == "window end" ]] || die "echoload against $2: $(cat "$tmp/load.err")"
		read -r u1 s1 < <(cpu_ticks)
		read -r got <&3 || true
		exec 3<&-
		wait "$lp" || die "echoload against $2 failed: $(cat "$tmp/load.err")"
		rm -f "$tmp/fifo"
		[[ $got =~ roundtrips=([0-9]+) ]] || die "unexpected echoload output '$got'"
		n=${BASH_REMATCH[1]}
	else
		command -v "$WRK" >/dev/null || die "wrk not found (apt-get install wrk)"
		taskset -c "$LOAD_CPU" "$WRK" -t1 -c"$CONNS" -d1s "http://127.0.0.1:$port/" >/dev/null 2>&1
		read -r u0 s0 < <(cpu_ticks)
		local res
		res=$(taskset -c "$LOAD_CPU" "$WRK" -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/")
		read -r u1 s1 < <(cpu_ticks)
		n=$(echo "$res" | awk '/requests in/ { print $1 }')
	fi
	stop_server
	awk -v c=$((u1 + s1 - u0 - s0)) -v t="$tck" -v n="$n" \
		'BEGIN { printf "%.2f %d\n", c / t * 1e6 / n, n }' >"$tmp/measured"
}

servers="raw weft weft2 copas copas2"
((upstream)) && servers="$servers upstream"
echo "copas-cpu: tests $TESTS; servers $servers; $ROUNDS round(s) of ${DURATION} s," \
	"$CONNS connections; server on CPU $SERVER_CPU, load on CPU $LOAD_CPU"
: >"$tmp/results"
for ((r = 1; r <= ROUNDS; r++)); do
	for t in $TESTS; do
		for s in $servers; do
			# (not in a subshell: the EXIT trap must see the server's pid)
			measure "$t" "$s"
			read -r us n <"$tmp/measured"
			printf 'round %d %-5s %-9s %7.2f us/request (%d requests)\n' "$r" "$t" "$s" "$us" "$n"
			echo "$t $s $us" >>"$tmp/results"
		done
	done
done
echo
awk -v servers="$servers" -v tests="$TESTS" '
function median(a, n,    i, j, t) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ k = $1 SUBSEP $2; c[k]++; v[k, c[k]] = $3 }
END {
	ns = split(servers, S, " "); nt = split(tests, T, " ")
	printf "%-6s %-9s %12s %8s %10s\n", "test", "server", "us/req med", "vs raw", "vs copas"
	for (i = 1; i <= nt; i++) {
		for (j = 1; j <= ns; j++) {
			k = T[i] SUBSEP S[j]
			delete a
			for (m = 1; m <= c[k]; m++) a[m] = v[k, m]
			med[k] = median(a, c[k])
		}
		raw = med[T[i] SUBSEP "raw"]; cop = med[T[i] SUBSEP "copas"]
		for (j = 1; j <= ns; j++) {
			k = T[i] SUBSEP S[j]
			printf "%-6s %-9s %12.2f %7.2fx %9.2fx\n", T[i], S[j], med[k], med[k] / raw, med[k] / cop
		}
	}
	print "(weft2, copas2: the same scripts under weft -t 2, both workers on the server CPU)"
}' "$tmp/results"
