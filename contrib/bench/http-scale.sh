#!/usr/bin/env bash
# http-scale.sh: what a second worker buys on many cores.  HTTP hello-world
# served by nginx with 1 and 2 worker processes and by weft with -t 1 and
# -t 2, in one run, interleaved round by round, and by the Copas program
# contrib/bench/copas-http.lua on weft with -t 1 and -t 2.  Nothing is pinned: the
# workers and wrk (-t1 -c50) run wherever the kernel puts them, so two
# workers can run in parallel on two CPUs and hand work to each other
# across CPUs.  For each configuration: requests/s from wrk, and the
# server's CPU time per request (utime+stime of every thread of every
# server process, from /proc, read just before and just after wrk runs).
# nginx is the reference: how an event server with independent worker
# processes scales on this machine, with wrk competing for the same CPUs.
#
# For weft it also prints the runtime's counters per request (GET /stats of
# contrib/examples/hello-http.lua, read before and after each run), and,
# in one more short run of weft -t 2, futex and eventfd write system calls
# per request (perf tracepoints, else strace).
#
# Needs: wrk, nginx (Debian packages wrk, nginx or nginx-light), and for the
# system-call run perf with working syscall tracepoints (linux-perf, as
# root) or strace.  Run as root, it installs wrk, nginx and strace with
# apt-get when missing.
#
# Environment (all optional):
#   DURATION   seconds wrk runs per measurement (default 5)
#   ROUNDS     times the four configurations are measured (default 5)
#   WARMUP     seconds of wrk before each measurement, not counted (default 1)
#   CONNS      wrk connections (default 50; wrk always runs one thread)
#   SERVERS    "nginx weft copas" (default), or some of them; copas is
#              contrib/bench/copas-http.lua (a Copas program) on weft
#   SYSCALLS   auto (default: perf if its tracepoints work, else strace),
#              perf, strace, or none
#   SYSCALL_DURATION   seconds of the system-call run (default 3)
#   WEFT_BIN, WRK, NGINX   programs to use instead of the defaults
set -euo pipefail
export LC_ALL=C

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/../.." && pwd)
WEFT_BIN=${WEFT_BIN:-$srcdir/src/weft}
# Packages are installed only for the programs not named by the caller.
own_wrk=${WRK:+1} own_nginx=${NGINX:+1}
WRK=${WRK:-wrk}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-1}
CONNS=${CONNS:-50}
SERVERS=${SERVERS:-nginx weft copas}
SYSCALLS=${SYSCALLS:-auto}
SYSCALL_DURATION=${SYSCALL_DURATION:-3}
# weft's counters named like these are the ones to look at first.
HIGHLIGHT='handoff|unpark|spin|park|poll|wake'

# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"

[[ $DURATION =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a whole number of seconds"
[[ $WARMUP =~ ^[0-9]+$ ]] || die "WARMUP must be a whole number of seconds"
[[ $SYSCALL_DURATION =~ ^[1-9][0-9]*$ ]] || die "SYSCALL_DURATION must be a whole number of seconds"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"
want_nginx=0 want_weft=0 want_copas=0
for s in $SERVERS; do
	case $s in
	nginx) want_nginx=1 ;;
	weft) want_weft=1 ;;
	copas) want_copas=1 ;;
	*) die "unknown server '$s' in SERVERS (known: nginx weft copas)" ;;
	esac
done
((want_nginx + want_weft + want_copas > 0)) || die "SERVERS is empty"
((want_weft)) || SYSCALLS=none
case $SYSCALLS in auto | perf | strace | none) ;; *) die "SYSCALLS must be auto, perf, strace or none" ;; esac

# Do perf's system-call tracepoints work here (kernel with ftrace syscall
# events, and the right to use them)?
perf_works() {
	command -v perf >/dev/null &&
		perf stat -x, -e syscalls:sys_enter_futex -- true >/dev/null 2>&1
}
if [[ $SYSCALLS == auto ]]; then
	if perf_works; then SYSCALLS=perf; else SYSCALLS=strace; fi
fi

# Install what is missing, as contrib/bootstrap does: as root with apt-get,
# otherwise say what to install.
missing=()
[[ -z $own_wrk ]] && ! command -v "$WRK" >/dev/null && missing+=(wrk)
[[ -z $own_nginx ]] && ((want_nginx)) && ! [[ -x $NGINX ]] && missing+=(nginx)
[[ $SYSCALLS == strace ]] && ! command -v strace >/dev/null && missing+=(strace)
if ((${#missing[@]} > 0)); then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		echo "http-scale.sh: installing: ${missing[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${missing[@]}"
		NGINX=$(command -v nginx || echo /usr/sbin/nginx)
	else
		die "missing: ${missing[*]}; as root: apt-get install -y ${missing[*]}"
	fi
fi
command -v "$WRK" >/dev/null || die "wrk not found (Debian package wrk)"
((want_nginx)) && ! [[ -x $NGINX ]] && die "nginx not found (Debian package nginx or nginx-light)"
if ((want_weft + want_copas)); then
	[[ -x $WEFT_BIN ]] || die "$WEFT_BIN not found (build weft first: contrib/bootstrap build)"
fi
[[ $SYSCALLS == perf ]] && ! perf_works &&
	die "perf cannot count syscalls:sys_enter_* tracepoints here (try SYSCALLS=strace)"
[[ $SYSCALLS == strace ]] && ! command -v strace >/dev/null && die "strace not found (Debian package strace)"
for tool in setsid pgrep awk; do
	command -v $tool >/dev/null || die "$tool not found (Debian packages util-linux, procps, mawk)"
done
clk_tck=$(getconf CLK_TCK)
ncpu=$(nproc)
((ncpu >= 2)) || echo "http-scale.sh: note: only $ncpu CPU available; two workers cannot run in parallel" >&2

tmp=$(mktemp -d "${TMPDIR:-/tmp}/http-scale.XXXXXX")
server_pid=
tracer_pid=
group=()
cleanup() {
	# Whatever stopped us, leave no server or tracer behind.
	if [[ -n $tracer_pid ]]; then
		kill -INT "$tracer_pid" 2>/dev/null || true
		wait "$tracer_pid" 2>/dev/null || true
	fi
	kill_running
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port, http_get (common.sh): a server that loses the race for the
# port is restarted on another (see start_server).

# nginx configuration for $1 worker processes on port $2, everything under
# $tmp/nginx; the temporary-file paths of every module built in are set
# there too, so that a non-root run does not need /var/lib/nginx.
nginx_conf() {
	local dir=$tmp/nginx m
	mkdir -p "$dir"
	{
		echo "worker_processes $1;"
		echo "daemon off;"
		echo "master_process on;"
		echo "pid $dir/nginx.pid;"
		echo "error_log $dir/error.log warn;"
		echo "events { worker_connections 1024; }"
		echo "http {"
		echo "	access_log off;"
		echo "	default_type text/plain;"
		for m in $("$NGINX" -V 2>&1 | grep -o -- '--http-[a-z-]*-temp-path' | sed 's/^--http-//; s/-temp-path$//'); do
			echo "	${m//-/_}_temp_path $dir/$m;"
		done
		echo "	server {"
		echo "		listen 127.0.0.1:$2;"
		# The same body as hello-http.lua's, "\n" written for nginx.
		printf '\t\tlocation / { return 200 "Hello, world!\\n"; }\n'
		echo "	}"
		echo "}"
	} >"$dir/nginx.conf"
}

# Start configuration $1 (nginx-N or weft-N) on a free port and wait until
# it answers GET /.  Sets server_pid (leader of the server's own process
# group), group (its processes) and port.  A server that could not bind
# its port (taken by someone else since free_port) gets another one.
start_server() {
	local name=$1 kind=${1%-*} n=${1#*-} try out=$tmp/server.out err=$tmp/server.err
	for ((try = 1; try <= 5; try++)); do
		port=$(free_port)
		case $kind in
		nginx)
			nginx_conf "$n" "$port"
			: >"$tmp/nginx/error.log"
			cmd=("$NGINX" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/error.log")
			;;
		weft)
			# An explicit port, not 0: with -t 2 and port 0 the second
			# worker does not share the first one's listening socket.
			cmd=(env "LUA_PATH=$srcdir/lua/?.lua;${LUA_PATH:-;}" "$WEFT_BIN" -t "$n"
			     "$srcdir/contrib/examples/hello-http.lua" 127.0.0.1 "$port")
			;;
		copas)
			# The Copas program, unchanged, on weft's Copas layer
			# (copas.socket.bind shares the listener between workers).
			cmd=(env "LUA_PATH=$srcdir/lua/?.lua;${LUA_PATH:-;}" "$WEFT_BIN" -t "$n"
			     "$here/copas-http.lua" 127.0.0.1 "$port")
			;;
		esac
		# The server gets a process group of its own (setsid execs in
		# place: a background child of a script leads no group), so that
		# all of nginx's processes are found and everything is stopped.
		setsid "${cmd[@]}" >"$out" 2>"$err" </dev/null &
		server_pid=$!
		local deadline=$((SECONDS + 10)) up=0
		while ((SECONDS < deadline)); do
			if http_get "$port" / >/dev/null; then
				up=1
				break
			fi
			kill -0 "$server_pid" 2>/dev/null || break
			sleep 0.05
		done
		if ((up)); then
			break
		fi
		stop_server
		local logs=("$err")
		[[ $kind == nginx ]] && logs+=("$tmp/nginx/error.log")
		if grep -q -i -E 'in use|address_already' "${logs[@]}"; then
			continue
		fi
		die "$name did not answer GET / on 127.0.0.1:$port within 10 s: $(cat "${logs[@]}")"
	done
	((up)) || die "$name: no free port after 5 tries"
	sleep 0.2 # the other workers are starting too
	mapfile -t group < <(pgrep -g "$server_pid")
	((${#group[@]} > 0)) || die "$name: no process in group $server_pid"
	if [[ $kind == nginx ]] && ((${#group[@]} != n + 1)); then
		die "$name: expected a master and $n workers, found ${#group[@]} processes"
	fi
	if [[ $kind != nginx ]]; then
		# A worker that failed to start says so on stderr while the
		# others serve on: that must not pass for a -t N measurement.
		[[ -s $err ]] && die "$name wrote to stderr: $(cat "$err")"
	fi
	if [[ $kind == weft ]]; then
		local w
		w=$(weft_stats | awk '$1 == "workers" { print $2 }')
		[[ -z $w || $w == "$n" ]] || die "$name: /stats reports $w workers"
	fi
	return 0
}

# Run wrk for $1 seconds against the server; prints "requests req_per_s".
run_wrk() {
	local res reqs rps
	res=$(timeout $(($1 + 30)) "$WRK" -t1 -c"$CONNS" -d"$1s" "http://127.0.0.1:$port/" 2>&1) ||
		die "wrk failed: $res"
	reqs=$(awk '/ requests in / { print $1 }' <<<"$res")
	rps=$(awk '$1 == "Requests/sec:" { print $2 }' <<<"$res")
	[[ -n $reqs && $reqs -gt 0 && -n $rps ]] || die "no requests completed: $res"
	# A server that fails requests must not post a flattering rate.
	if grep -q -E 'Non-2xx|Socket errors' <<<"$res"; then
		echo "http-scale.sh: warning: wrk saw errors:" >&2
		grep -E 'Non-2xx|Socket errors' <<<"$res" >&2
	fi
	echo "$reqs $rps"
}

# The /stats counters of the weft server as "name value" lines.
weft_stats() {
	local body
	body=$(http_get "$port" /stats) || die "GET /stats of the weft server failed"
	awk 'NF == 2 && $2 ~ /^-?[0-9]+$/' <<<"$body"
}

# Measure configuration $1 once, in round $2: one line to $tmp/results
# ("name round req_per_s us_per_req cpu_pct"), for weft one line per
# counter to $tmp/counters ("name round counter per_request").
measure() {
	local name=$1 round=$2 kind=${1%-*}
	start_server "$name"
	((WARMUP > 0)) && run_wrk "$WARMUP" >/dev/null
	[[ $kind == weft ]] && weft_stats >"$tmp/stats0"
	local u0 s0 u1 s1 res reqs rps
	read -r u0 s0 < <(cpu_ticks)
	res=$(run_wrk "$DURATION")
	read -r u1 s1 < <(cpu_ticks)
	read -r reqs rps <<<"$res"
	[[ $kind == weft ]] && weft_stats >"$tmp/stats1"
	kill -0 "$server_pid" 2>/dev/null || die "$name died during the run: $(cat "$tmp/server.err")"
	stop_server
	awk -v name="$name" -v round="$round" -v rounds="$ROUNDS" -v reqs="$reqs" -v rps="$rps" \
		-v ticks=$((u1 + s1 - u0 - s0)) -v hz="$clk_tck" -v d="$DURATION" -v out="$tmp/results" '
	BEGIN {
		us = ticks / hz * 1e6 / reqs
		pct = 100 * ticks / hz / d
		printf "round %d/%d  %-8s %8.0f req/s  %7.2f us/req  cpu %4.0f%%\n",
			round, rounds, name, rps, us, pct
		printf "%s %d %.2f %.4f %.1f\n", name, round, rps, us, pct >> out
	}'
	if [[ $kind == weft ]]; then
		# Every numeric key, whatever the runtime calls it today.
		awk -v name="$name" -v round="$round" -v reqs="$reqs" -v hl="$HIGHLIGHT" \
			-v out="$tmp/counters" '
		NR == FNR { before[$1] = $2; next }
		{
			v = ($2 - before[$1]) / reqs
			printf "%s %d %s %.6f %s\n", name, round, $1, v, $2 >> out
			if ($1 ~ hl) line = line sprintf("  %s %.3f", $1, v)
		}
		END { if (line != "") printf "            per request:%s\n", line }
		' "$tmp/stats0" "$tmp/stats1"
	fi
}

configs=()
((want_nginx)) && configs+=(nginx-1 nginx-2)
((want_weft)) && configs+=(weft-1 weft-2)
((want_copas)) && configs+=(copas-1 copas-2)
echo "http-scale: ${configs[*]}; $ROUNDS round(s) of wrk -t1 -c$CONNS -d${DURATION}s" \
	"(after ${WARMUP}s of warm-up), nothing pinned, $ncpu CPUs"
((want_nginx)) && echo "  nginx: $NGINX ($("$NGINX" -v 2>&1 | sed 's/.*version: //'))"
((want_weft)) && echo "  weft:  $WEFT_BIN -t N contrib/examples/hello-http.lua 127.0.0.1 PORT"
((want_copas)) && echo "  copas: $WEFT_BIN -t N contrib/bench/copas-http.lua 127.0.0.1 PORT"
: >"$tmp/results"
: >"$tmp/counters"
for ((r = 1; r <= ROUNDS; r++)); do
	# Every other round in reverse order, so that a drift in the load of
	# the machine does not always favour the same configuration.
	order=("${configs[@]}")
	if ((r % 2 == 0)); then
		order=()
		for ((i = ${#configs[@]} - 1; i >= 0; i--)); do order+=("${configs[i]}"); done
	fi
	for c in "${order[@]}"; do
		measure "$c" "$r"
	done
done

# System calls of weft -t 2 per request, in a run of their own: tracing
# costs the server time, so this run's CPU and rate are not comparable.
syscall_report=
if [[ $SYSCALLS != none ]]; then
	start_server weft-2
	((WARMUP > 0)) && run_wrk "$WARMUP" >/dev/null
	# The eventfds that wake a worker blocked in the poller.
	efds=()
	for f in /proc/"$server_pid"/fd/*; do
		[[ $(readlink "$f" 2>/dev/null) == 'anon_inode:[eventfd]' ]] && efds+=("${f##*/}")
	done
	trace=$tmp/trace.out
	if [[ $SYSCALLS == perf ]]; then
		events=(-e syscalls:sys_enter_futex)
		if ((${#efds[@]} > 0)); then
			filter=
			for f in "${efds[@]}"; do filter+="${filter:+ || }fd == $f"; done
			events+=(-e syscalls:sys_enter_write --filter "$filter")
		fi
		events+=(-e syscalls:sys_enter_write)
		perf stat -x, -o "$trace" "${events[@]}" -p "$server_pid" 2>"$tmp/tracer.err" &
	else
		strace -f -qq -y -e trace=futex,write -o "$trace" -p "$server_pid" 2>"$tmp/tracer.err" &
	fi
	tracer_pid=$!
	sleep 0.5 # attached
	kill -0 "$tracer_pid" 2>/dev/null || die "$SYSCALLS did not attach: $(cat "$tmp/tracer.err")"
	res=$(run_wrk "$SYSCALL_DURATION")
	read -r sreqs srps <<<"$res"
	kill -INT "$tracer_pid" 2>/dev/null || true
	wait "$tracer_pid" 2>/dev/null || true
	tracer_pid=
	stop_server
	if [[ $SYSCALLS == perf ]]; then
		# One line per event, in the order given: count,,event,...
		mapfile -t counts < <(grep -v -E '^#|^$' "$trace" | cut -d, -f1)
		futex=${counts[0]:-}
		if ((${#efds[@]} > 0)); then
			evw=${counts[1]:-} allw=${counts[2]:-}
		else
			evw='' allw=${counts[1]:-}
		fi
		how="perf stat tracepoints"
	else
		# -y prints each fd with what it is; "<unfinished ...>" starts a
		# call, "<... resumed>" finishes it, so only the first is counted.
		futex=$(grep -c -E '^[0-9]+ +futex\(' "$trace" || true)
		evw=$(grep -c -E '^[0-9]+ +write\([0-9]+<anon_inode:\[eventfd\]>' "$trace" || true)
		allw=$(grep -c -E '^[0-9]+ +write\(' "$trace" || true)
		how="strace -f, which slows the server many times over: its CPU time means nothing here, and the counts are those of a slowed server"
	fi
	[[ $futex =~ ^[0-9]+$ && $allw =~ ^[0-9]+$ ]] ||
		die "could not read the $SYSCALLS counts: $(cat "$trace" "$tmp/tracer.err")"
	syscall_report=$(awk -v r="$sreqs" -v rps="$srps" -v f="$futex" -v e="$evw" -v w="$allw" \
		-v how="$how" -v d="$SYSCALL_DURATION" -v fds="${efds[*]}" '
	BEGIN {
		printf "System calls of weft -t 2 per request (%d requests in %d s, %.0f req/s, counted with %s):\n\n", r, d, rps, how
		printf "| system call | per request |\n|---|---:|\n"
		printf "| futex | %.3f |\n", f / r
		if (e != "")
			printf "| write to an eventfd (fd %s) | %.3f |\n", fds, e / r
		printf "| write, any fd | %.3f |\n", w / r
	}')
fi

awk -v order="${configs[*]}" -v rounds="$ROUNDS" -v d="$DURATION" -v conns="$CONNS" -v hl="$HIGHLIGHT" '
function median(a, n,    i, j, t) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
			t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
		}
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function med(name, col,    j, a) {
	for (j = 1; j <= rounds; j++)
		a[j] = v[name, j, col]
	return median(a, rounds)
}
# min..max over the rounds of the ratio 2 workers / 1 worker of column col.
function range(kind, col,    j, x, lo, hi) {
	for (j = 1; j <= rounds; j++) {
		x = v[kind "-2", j, col] / v[kind "-1", j, col]
		if (j == 1 || x < lo) lo = x
		if (j == 1 || x > hi) hi = x
	}
	return sprintf("%.2f..%.2f", lo, hi)
}
FILENAME ~ /results$/ { v[$1, $2, 3] = $3; v[$1, $2, 4] = $4; v[$1, $2, 5] = $5; seen[$1] = 1; next }
{
	c[$1, $2, $3] = $4
	if ($4 != 0) moved[$3] = 1
	last[$1, $3] = $5
	if (!($3 in key)) { key[$3] = 1; keys[++nkeys] = $3 }
}
END {
	nk = 0
	if (("nginx-1" in seen)) kinds[++nk] = "nginx"
	if (("weft-1" in seen)) kinds[++nk] = "weft"
	if (("copas-1" in seen)) kinds[++nk] = "copas"
	label["nginx-1"] = "nginx 1 worker"; label["nginx-2"] = "nginx 2 workers"
	label["weft-1"] = "weft -t 1"; label["weft-2"] = "weft -t 2"
	label["copas-1"] = "Copas -t 1"; label["copas-2"] = "Copas -t 2"
	printf "\nMedians of %d round%s, wrk -t1 -c%d for %d s, server and wrk not pinned:\n\n", rounds, (rounds > 1 ? "s" : ""), conns, d
	head = "| |"; rule = "|---|"
	for (k = 1; k <= nk; k++) {
		head = head " " label[kinds[k] "-1"] " | " label[kinds[k] "-2"] " | " kinds[k] " 2/1 |"
		rule = rule "---:|---:|---:|"
	}
	print head; print rule
	split("requests/s|server CPU us per request|server CPU, % of one CPU", rowname, "|")
	split("3 4 5", rowcol, " ")
	for (row = 1; row <= 3; row++) {
		line = "| " rowname[row] " |"
		for (k = 1; k <= nk; k++) {
			a = med(kinds[k] "-1", rowcol[row]); b = med(kinds[k] "-2", rowcol[row])
			fmt = row == 2 ? "%.2f" : "%.0f"
			line = line sprintf(" " fmt " | " fmt " | %.2f |", a, b, b / a)
		}
		print line
	}
	printf "\n2/1 is the median with 2 workers over the median with 1.  Per round, 2/1 ranged:\n"
	for (k = 1; k <= nk; k++)
		printf "  %-6s CPU per request %s, throughput %s\n", kinds[k] ":", range(kinds[k], 4), range(kinds[k], 3)
	if (nkeys == 0)
		exit
	# Highlighted counters first, then the rest, each group by name.
	n = 0
	for (pass = 1; pass <= 2; pass++)
		for (i = 1; i <= nkeys; i++) {
			best = ""
			for (j = 1; j <= nkeys; j++) {
				k2 = keys[j]
				if (k2 in done || ((k2 ~ hl) != (pass == 1))) continue
				if (best == "" || k2 < best) best = k2
			}
			if (best == "") break
			done[best] = 1; sorted[++n] = best
		}
	printf "\nweft counters per request (GET /stats before and after each run; medians):\n\n"
	printf "| counter | weft -t 1 | weft -t 2 |\n|---|---:|---:|\n"
	for (i = 1; i <= n; i++) {
		k2 = sorted[i]
		for (w = 1; w <= 2; w++) {
			m = 0
			for (j = 1; j <= rounds; j++) a2[++m] = c["weft-" w, j, k2]
			# A value that never moves, such as a worker count, is a
			# gauge: show what it is.
			if (!(k2 in moved) && last["weft-" w, k2] != 0)
				x[w] = "stays " last["weft-" w, k2]
			else
				x[w] = sprintf("%.3f", median(a2, m))
		}
		name = k2 ~ hl ? "**" k2 "**" : k2
		printf "| %s | %s | %s |\n", name, x[1], x[2]
	}
}' "$tmp/results" "$tmp/counters"

if [[ -n $syscall_report ]]; then
	echo
	echo "$syscall_report"
fi
