#!/usr/bin/env bash
# http-peers.sh: server CPU time per HTTP "hello world" request, weft
# against every peer installed here, side by side in one run, keep-alive
# and with pipelined requests.
#
#   keepalive: wrk -t1 -cCONNS, one request at a time per connection;
#   pipeline:  the same with PIPELINE requests sent in one write
#              (wrk -s pipeline.lua -- PIPELINE).
#
# Peers (PEERS, in this order; one that is not installed is skipped with a
# line saying so):
#   raw        rawecho -h: the C epoll baseline, a canned response per head
#   weft       contrib/examples/hello-http.lua
#   nginx      nginx, one worker, `return 200 "Hello, world!\n"`
#   nginx-lua  nginx, one worker, content_by_lua_block (Debian package
#              libnginx-mod-http-lua)
#   luv        http-luv.lua on lua5.4 with luv (lua-luv)
#   cqueues    http-cqueues.lua on lua5.4 with cqueues (lua-cqueues)
#   lua-http   http-luahttp.lua with lua-http (Debian package lua-http, for
#              Lua 5.1 to 5.3: the newest Lua that finds it runs it)
# All send the same 14-byte body; nginx adds its Server and Date headers,
# lua-http writes its headers in lower case.
#
# Each server runs alone on SERVER_CPU, wrk on LOAD_CPU.  After WARMUP
# seconds of load not counted, the figure is the server's utime+stime
# (/proc/PID/stat, all its processes) over DURATION seconds of wrk,
# divided by the requests wrk completed.  ROUNDS rounds, interleaved (every
# other round in the reverse order); medians with min..max.  Prints
# Markdown tables; with DATA=FILE also writes "peer keepalive pipeline"
# medians (? where not measured) for a plot.
#
# Environment (all optional): DURATION (s, default 5), ROUNDS (3), WARMUP
# (s, default 1; 0 for none), CONNS (50), PIPELINE (16), PEERS, TESTS ("keepalive pipeline"),
# SERVER_CPU, LOAD_CPU (0 and 1), BUILDDIR, WEFT_BIN, LUA (lua5.4), WRK,
# NGINX, DATA.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/../.." && pwd)
if [[ -z ${BUILDDIR:-} && $PWD != "$srcdir" && -x $PWD/contrib/bench/rawecho ]]; then
	BUILDDIR=$PWD
fi
BUILDDIR=${BUILDDIR:-$srcdir}
RAWECHO=${RAWECHO:-$BUILDDIR/contrib/bench/rawecho}
WEFT_BIN=${WEFT_BIN:-$BUILDDIR/src/weft}
LUA=${LUA:-$(command -v lua5.4 || true)}
WRK=${WRK:-wrk}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
NGINX_MODULES=${NGINX_MODULES:-/usr/lib/nginx/modules}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-50}
PIPELINE=${PIPELINE:-16}
PEERS=${PEERS:-raw weft nginx nginx-lua luv cqueues lua-http}
TESTS=${TESTS:-keepalive pipeline}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
DATA=${DATA:-}

# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"

command -v "$WRK" >/dev/null || die "wrk not found (Debian package wrk)"
[[ -x $RAWECHO ]] || die "$RAWECHO not found (make contrib/bench/rawecho)"
[[ -x $WEFT_BIN ]] || die "$WEFT_BIN not found (build weft first)"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
for tool in taskset setsid pgrep; do
	command -v $tool >/dev/null || die "$tool not found (util-linux, procps)"
done
clk_tck=$(getconf CLK_TCK)
weft_path="$srcdir/lua/?.lua;${LUA_PATH:-;}"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/http-peers.XXXXXX")
server_pid=
group=()
cleanup() {
	kill_running
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

lua_has() { [[ -n $LUA ]] && "$LUA" -e "assert(_VERSION == 'Lua 5.4'); require '$1'" 2>/dev/null; }

# available PEER: 0 when it can run here, else says why on stdout.
available() {
	case $1 in
	raw | weft) return 0 ;;
	nginx)
		[[ -x $NGINX ]] && return 0
		echo "nginx is not installed (Debian package nginx)"
		;;
	nginx-lua)
		if [[ ! -x $NGINX ]]; then
			echo "nginx is not installed (Debian packages nginx, libnginx-mod-http-lua)"
		elif [[ ! -f $NGINX_MODULES/ngx_http_lua_module.so ]]; then
			echo "the nginx lua module is not installed (Debian package libnginx-mod-http-lua)"
		else
			return 0
		fi
		;;
	luv)
		lua_has luv && return 0
		echo "no Lua 5.4 with the luv module (Debian package lua-luv)"
		;;
	cqueues)
		lua_has cqueues && return 0
		echo "no Lua 5.4 with the cqueues module (Debian package lua-cqueues)"
		;;
	lua-http)
		local l
		for l in lua5.4 lua5.3 lua5.2 lua5.1; do
			if command -v $l >/dev/null && $l -e 'require "http.server"' 2>/dev/null; then
				LUAHTTP_LUA=$l
				return 0
			fi
		done
		echo "no Lua with the lua-http module (Debian package lua-http, with lua5.1, lua5.2 or lua5.3)"
		;;
	*) die "unknown peer '$1' (known: raw weft nginx nginx-lua luv cqueues lua-http)" ;;
	esac
	return 1
}

# nginx_conf LUA PORT: one worker; LUA=1 answers from a Lua handler.
nginx_conf() {
	local dir=$tmp/nginx m
	mkdir -p "$dir"
	{
		if [[ $1 == 1 ]]; then
			[[ -f $NGINX_MODULES/ndk_http_module.so ]] &&
				echo "load_module $NGINX_MODULES/ndk_http_module.so;"
			echo "load_module $NGINX_MODULES/ngx_http_lua_module.so;"
		fi
		echo "worker_processes 1;"
		echo "daemon off;"
		echo "master_process on;"
		echo "pid $dir/nginx.pid;"
		echo "error_log $dir/error.log warn;"
		echo "events { worker_connections 4096; }"
		echo "http {"
		echo "	access_log off;"
		echo "	default_type text/plain;"
		for m in $("$NGINX" -V 2>&1 | grep -o -- '--http-[a-z-]*-temp-path' | sed 's/^--http-//; s/-temp-path$//'); do
			echo "	${m//-/_}_temp_path $dir/$m;"
		done
		echo "	server {"
		echo "		listen 127.0.0.1:$2;"
		if [[ $1 == 1 ]]; then
			# A length, so that the body is not chunked: the same
			# bytes on the wire as the others.
			printf '\t\tlocation / { content_by_lua_block {\n'
			printf '\t\t\tngx.header["Content-Length"] = 14\n'
			printf '\t\t\tngx.print("Hello, world!\\n")\n'
			printf '\t\t} }\n'
		else
			printf '\t\tlocation / { return 200 "Hello, world!\\n"; }\n'
		fi
		echo "	}"
		echo "}"
	} >"$dir/nginx.conf"
}

# server_cmd PEER PORT -> sets `cmd`
server_cmd() {
	case $1 in
	raw) cmd=("$RAWECHO" -h 127.0.0.1 "$2") ;;
	weft) cmd=(env "LUA_PATH=$weft_path" "$WEFT_BIN" "$srcdir/contrib/examples/hello-http.lua" 127.0.0.1 "$2") ;;
	nginx | nginx-lua)
		nginx_conf "$([[ $1 == nginx-lua ]] && echo 1 || echo 0)" "$2"
		: >"$tmp/nginx/error.log"
		cmd=("$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log")
		;;
	luv) cmd=("$LUA" "$here/http-luv.lua" 127.0.0.1 "$2") ;;
	cqueues) cmd=("$LUA" "$here/http-cqueues.lua" 127.0.0.1 "$2") ;;
	lua-http) cmd=("$LUAHTTP_LUA" "$here/http-luahttp.lua" 127.0.0.1 "$2") ;;
	esac
}

# start_server PEER: on a free port, pinned to SERVER_CPU in a process group
# of its own, until it answers GET /.  Sets server_pid, port, group.
# Returns 1, after saying why on stderr, when it would not start.
start_server() {
	local try i up
	for ((try = 1; try <= 3; try++)); do
		port=$(free_port)
		server_cmd "$1" "$port"
		# Emptied here: the background child may open them after the first look.
		: >"$tmp/out"
		: >"$tmp/err"
		setsid taskset -c "$SERVER_CPU" "${cmd[@]}" >"$tmp/out" 2>"$tmp/err" </dev/null &
		server_pid=$!
		up=0
		for ((i = 0; i < 200; i++)); do
			if http_get "$port" / >/dev/null; then
				up=1
				break
			fi
			kill -0 "$server_pid" 2>/dev/null || break
			sleep 0.05
		done
		if ((up)); then
			mapfile -t group < <(pgrep -g "$server_pid")
			return 0
		fi
		stop_server
		local logs=("$tmp/err" "$tmp/out")
		[[ -f $tmp/nginx/error.log ]] && logs+=("$tmp/nginx/error.log")
		grep -q -i -E 'in use|address_already' "${logs[@]}" || break
	done
	echo "$1 did not answer GET / on 127.0.0.1:$port: $(cat "$tmp/err" "$tmp/out" 2>/dev/null | head -n 5)" >&2
	return 1
}

# measure TEST PEER -> "us_per_request requests_per_s cpu_percent" on stdout,
# or nothing when the peer failed (said on stderr).
measure() {
	local test=$1 peer=$2 script=()
	[[ $test == pipeline ]] && script=(-s "$here/pipeline.lua")
	start_server "$peer" || return 0
	local url="http://127.0.0.1:$port/" u0 s0 u1 s1 res n
	if [[ $WARMUP != 0 ]]; then
		taskset -c "$LOAD_CPU" "$WRK" -t1 -c"$CONNS" -d"${WARMUP}s" "${script[@]}" "$url" -- "$PIPELINE" >/dev/null 2>&1
	fi
	read -r u0 s0 < <(cpu_ticks)
	res=$(taskset -c "$LOAD_CPU" timeout $((${DURATION%.*} + 30)) "$WRK" -t1 -c"$CONNS" -d"${DURATION}s" \
		"${script[@]}" "$url" -- "$PIPELINE" 2>&1) || true
	read -r u1 s1 < <(cpu_ticks)
	kill -0 "$server_pid" 2>/dev/null || { echo "$peer died during the run: $(cat "$tmp/err")" >&2; server_pid=; return 0; }
	stop_server
	n=$(awk '/requests in/ { print $1 }' <<<"$res")
	if [[ -z $n || $n == 0 ]]; then
		echo "$test $peer: wrk completed no request: $res" >&2
		return 0
	fi
	# A server answering errors, or dropping connections, is not measured.
	if grep -q -E 'Non-2xx' <<<"$res"; then
		echo "$test $peer: $(grep -E 'Non-2xx' <<<"$res")" >&2
		return 0
	fi
	grep -E 'Socket errors' <<<"$res" | sed "s/^ */$test $peer: wrk: /" >&2 || true
	awk -v c=$((u1 + s1 - u0 - s0)) -v t="$clk_tck" -v n="$n" -v d="$DURATION" \
		'BEGIN { printf "%.3f %.0f %.0f\n", c / t * 1e6 / n, n / d, 100 * c / t / d }'
}

peers=()
LUAHTTP_LUA=
for p in $PEERS; do
	if available "$p" >"$tmp/why"; then
		peers+=("$p")
		[[ $p == lua-http ]] && echo "lua-http runs on $LUAHTTP_LUA (Debian has no lua-http for Lua 5.4)"
	else
		echo "skipped $p: $(cat "$tmp/why")"
	fi
done
((${#peers[@]} > 0)) || die "no peer to measure"
echo "http-peers: tests $TESTS; peers ${peers[*]}; $ROUNDS round(s) of ${DURATION} s after ${WARMUP} s of warm-up;"
echo "wrk -t1 -c$CONNS (pipeline: $PIPELINE requests per write, wrk -s pipeline.lua); server on CPU $SERVER_CPU, wrk on CPU $LOAD_CPU"
echo
: >"$tmp/results"
for ((r = 1; r <= ROUNDS; r++)); do
	order=("${peers[@]}")
	if ((r % 2 == 0)); then
		order=()
		for ((i = ${#peers[@]} - 1; i >= 0; i--)); do order+=("${peers[i]}"); done
	fi
	for t in $TESTS; do
		for p in "${order[@]}"; do
			m=$(measure "$t" "$p")
			if [[ -n $m ]]; then
				read -r us rps cpu <<<"$m"
				printf '    round %d %-9s %-9s %8.2f us/request %9.0f requests/s  server CPU %3.0f%%\n' \
					"$r" "$t" "$p" "$us" "$rps" "$cpu"
				echo "$t $p $us $rps $cpu" >>"$tmp/results"
			fi
		done
	done
done
echo
awk -v peers="${peers[*]}" -v tests="$TESTS" -v data="$DATA" -v depth="$PIPELINE" -v conns="$CONNS" '
function median(a, n,    i, j, t) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function med(k, col,    a, m) {
	for (m = 1; m <= c[k]; m++) a[m] = v[k, m, col]
	return median(a, c[k])
}
{ k = $2 SUBSEP $1; c[k]++; for (i = 3; i <= NF; i++) v[k, c[k], i] = $i }
END {
	np = split(peers, P, " "); nt = split(tests, T, " ")
	for (i = 1; i <= nt; i++) {
		t = T[i]
		if (t == "keepalive")
			printf "**HTTP hello, keep-alive** (wrk -t1 -c%d): server CPU per request\n\n", conns
		else
			printf "**HTTP hello, %d pipelined requests per write** (wrk -t1 -c%d -s pipeline.lua): server CPU per request\n\n", depth, conns
		print "| peer | us/request (median) | min..max | requests/s | server CPU % | peer / raw C | weft / peer |"
		print "|---|---:|---:|---:|---:|---:|---:|"
		raw = ("raw" SUBSEP t) in c ? med("raw" SUBSEP t, 3) : 0
		wft = ("weft" SUBSEP t) in c ? med("weft" SUBSEP t, 3) : 0
		for (j = 1; j <= np; j++) {
			k = P[j] SUBSEP t
			if (!(k in c)) {
				printf "| %s | failed, see above | | | | | |\n", P[j]
				continue
			}
			lo = hi = v[k, 1, 3]
			for (m = 2; m <= c[k]; m++) {
				if (v[k, m, 3] < lo) lo = v[k, m, 3]
				if (v[k, m, 3] > hi) hi = v[k, m, 3]
			}
			mm = med(k, 3)
			fig[P[j], t] = mm
			printf "| %s | %.2f | %.2f..%.2f | %.0f | %.0f | %s | %s |\n", P[j], mm, lo, hi,
				med(k, 4), med(k, 5), raw ? sprintf("%.2f", mm / raw) : "-",
				wft ? sprintf("%.2f", wft / mm) : "-"
		}
		print ""
	}
	if (data != "") {
		for (j = 1; j <= np; j++) {
			line = P[j]
			split("keepalive pipeline", TT, " ")
			for (i = 1; i <= 2; i++)
				line = line " " (((P[j], TT[i]) in fig) ? fig[P[j], TT[i]] : "?")
			print line > data
		}
	}
	print "Medians of the rounds; the server pinned to one CPU and wrk to the other. peer / raw C"
	print "is that peer against the C epoll server (rawecho -h), weft / peer is weft against that"
	print "peer: below 1, weft spends less CPU per request."
}' "$tmp/results"
