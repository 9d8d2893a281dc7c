#!/usr/bin/env bash
# tls-cpu.sh: server CPU time per TLS handshake (ECDSA P-256 and RSA 2048
# certificates) and per megabyte of bulk TLS, weft against `openssl
# s_server` and against LuaSec (on Copas when a Copas with TLS is on
# LUA_PATH, else LuaSec alone), side by side in one run.  `openssl s_time`
# drives every server from CPU 1, the server runs on CPU 0.
#   handshakes: s_time -new (a full handshake per connection, then close)
#   bulk:       s_time -new -www /big: each connection fetches a BULK_MB file
# CPU time (utime+stime from /proc) per operation is the stable figure on a
# shared machine; rates are printed for information.
#   env: DURATION (s per measurement, default 5), ROUNDS (default 3),
#        BULK_MB (default 16), SERVERS (default "openssl weft luasec"),
#        WEFT_BIN, LUA (default lua5.4)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(cd "$here/../.." && pwd)
WEFT_BIN=${WEFT_BIN:-$top/src/weft}
LUA=${LUA:-lua5.4}
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
BULK_MB=${BULK_MB:-16}
SERVERS=${SERVERS:-openssl weft luasec}
export LUA_PATH="$top/lua/?.lua;${LUA_PATH:-;}"
tck=$(getconf CLK_TCK)

# shellcheck source=contrib/bench/common.sh
. "$here/common.sh"
command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"

tmp=$(mktemp -d)
pid=
cleanup() {
	[[ -n $pid ]] && kill "$pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
sh "$top/tests/tls-certs.sh" "$tmp/certs" >/dev/null 2>&1 || die "could not make certificates"
head -c "$((BULK_MB * 1048576))" /dev/urandom >"$tmp/big"

if [[ " $SERVERS " == *" luasec "* ]] && ! "$LUA" -e 'require "ssl"' 2>/dev/null; then
	echo "tls-cpu.sh: LuaSec not found for $LUA (apt-get install lua-sec); skipping it" >&2
	SERVERS=${SERVERS/luasec/}
fi

# start KIND CERT KEY [FILE]: sets pid and port
start() {
	local kind=$1 cert=$2 key=$3 file=${4:-}
	port=$(free_port)
	case $kind in
	openssl)
		(cd "$tmp" && exec taskset -c 0 openssl s_server -accept "127.0.0.1:$port" -cert "$cert" -key "$key" \
			-quiet -naccept 100000000 ${file:+-WWW} </dev/null >"$tmp/server.log" 2>&1) &
		;;
	weft)
		taskset -c 0 "$WEFT_BIN" "$here/tls-server.lua" "$port" "$cert" "$key" $file >"$tmp/server.log" 2>&1 &
		;;
	luasec)
		taskset -c 0 "$LUA" "$here/tls-luasec.lua" "$port" "$cert" "$key" $file >"$tmp/server.log" 2>&1 &
		;;
	esac
	pid=$!
	local probe
	for _ in $(seq 200); do
		if { exec {probe}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
			exec {probe}<&-
			return 0
		fi
		sleep 0.05
	done
	cat "$tmp/server.log" >&2
	die "$kind did not start"
}

# measure KIND CERT KEY [FILE] -> "us_cpu_per_connection connections_per_s"
measure() {
	local kind=$1 www=()
	start "$@"
	[[ -n ${4:-} ]] && www=(-www /big)
	taskset -c 1 openssl s_time -connect "127.0.0.1:$port" -new -time 1 "${www[@]}" >/dev/null 2>&1 || true
	group=("$pid")
	local cu0 cs0 cu1 cs1 out n
	read -r cu0 cs0 < <(cpu_ticks)
	out=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$port" -new -time "$DURATION" "${www[@]}" 2>&1)
	read -r cu1 cs1 < <(cpu_ticks)
	kill "$pid" 2>/dev/null
	wait "$pid" 2>/dev/null || true
	pid=
	n=$(echo "$out" | awk '/connections in .* real seconds/ { print $1; exit }')
	[[ -n $n && $n -gt 0 ]] || { echo "$out" >&2; die "$kind: s_time made no connection"; }
	if [[ -n ${4:-} ]]; then
		# Every connection must have fetched the whole file.
		bytes=$(echo "$out" | awk '/bytes read per connection/ { print $(NF - 4); exit }')
		((bytes >= BULK_MB * 1048576)) || { echo "$out" >&2; die "$kind: $bytes bytes per connection, short of ${BULK_MB} MiB"; }
	fi
	awk -v c=$((cu1 + cs1 - cu0 - cs0)) -v t="$tck" -v n="$n" -v d="$DURATION" \
		'BEGIN { printf "%.1f %.1f\n", c / t * 1e6 / n, n / d }'
}

median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

declare -A res rate
c=$tmp/certs
for r in $(seq "$ROUNDS"); do
	line="round $r:"
	for s in $SERVERS; do
		read -r u q < <(measure "$s" "$c/server.pem" "$c/server.key")
		res[$s.ec]+="$u "; rate[$s.ec]+="$q "
		read -r u2 q2 < <(measure "$s" "$c/rsa.pem" "$c/rsa.key")
		res[$s.rsa]+="$u2 "; rate[$s.rsa]+="$q2 "
		read -r u3 _ < <(measure "$s" "$c/server.pem" "$c/server.key" "$tmp/big")
		# CPU per connection of BULK_MB -> MB per CPU second
		mb=$(awk -v u="$u3" -v m="$BULK_MB" 'BEGIN { printf "%.0f", m / (u / 1e6) }')
		res[$s.bulk]+="$mb "
		line+="  $s: P-256 ${u} us/hs (${q}/s), RSA ${u2} us/hs, bulk ${mb} MB/CPU-s;"
	done
	echo "$line"
done

echo
echo "medians over $ROUNDS rounds (server on CPU 0, openssl s_time on CPU 1):"
printf '%-8s %18s %18s %14s %14s\n' server "P-256 us/handshake" "RSA us/handshake" "hs/s (P-256)" "bulk MB/CPU-s"
for s in $SERVERS; do
	# shellcheck disable=SC2086
	printf '%-8s %18s %18s %14s %14s\n' "$s" "$(median ${res[$s.ec]})" "$(median ${res[$s.rsa]})" \
		"$(median ${rate[$s.ec]})" "$(median ${res[$s.bulk]})"
done
if [[ " $SERVERS " == *" openssl "* && " $SERVERS " == *" weft "* ]]; then
	# shellcheck disable=SC2086
	awk -v we="$(median ${res[weft.ec]})" -v oe="$(median ${res[openssl.ec]})" \
		-v wr="$(median ${res[weft.rsa]})" -v or="$(median ${res[openssl.rsa]})" \
		-v wb="$(median ${res[weft.bulk]})" -v ob="$(median ${res[openssl.bulk]})" \
		'BEGIN { printf "weft / s_server: CPU per handshake %.2fx (P-256), %.2fx (RSA); CPU per byte %.2fx\n", we / oe, wr / or, ob / wb }'
fi
if [[ " $SERVERS " == *" luasec "* && " $SERVERS " == *" weft "* ]]; then
	# shellcheck disable=SC2086
	awk -v we="$(median ${res[weft.ec]})" -v le="$(median ${res[luasec.ec]})" \
		-v wq="$(median ${rate[weft.ec]})" -v lq="$(median ${rate[luasec.ec]})" \
		'BEGIN { printf "weft vs LuaSec: handshakes per server CPU second %.2fx, handshake rate %.2fx\n", le / we, wq / lq }'
fi
