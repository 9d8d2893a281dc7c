# Shell helpers shared by the benchmark scripts (sourced, not run).
# The caller sets `group` to the pids of the server's processes.

die() {
	echo "$(basename "$0"): $*" >&2
	exit 1
}

# utime and stime, in clock ticks, of the processes in `group`, summed:
# "user sys".  /proc/PID/stat fields 14 and 15 cover every thread of a
# process, dead ones included.  The command name (field 2) may hold
# blanks and parentheses, so fields are counted from its closing one.
cpu_ticks() {
	local pid stat rest f user=0 sys=0
	for pid in "${group[@]}"; do
		stat=$(<"/proc/$pid/stat") || die "server process $pid vanished"
		rest=${stat##*) }
		read -r -a f <<<"$rest"
		user=$((user + f[11]))
		sys=$((sys + f[12]))
	done
	echo "$user $sys"
}

# A TCP port on 127.0.0.1 that was free a moment ago: bind port 0 and let
# the kernel choose (perl-base is part of every Debian system), else probe
# random ports for one that refuses connections.
free_port() {
	if perl -MIO::Socket::INET -e '
		my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0,
			Proto => "tcp", Listen => 1, ReuseAddr => 1) or exit 1;
		print $s->sockport, "\n";' 2>/dev/null; then
		return 0
	fi
	local p i probe
	for ((i = 0; i < 100; i++)); do
		p=$((20000 + RANDOM % 30000))
		if ! { exec {probe}<>"/dev/tcp/127.0.0.1/$p"; } 2>/dev/null; then
			echo "$p"
			return 0
		fi
		exec {probe}<&-
	done
	die "no free TCP port found"
}

# GET PATH from 127.0.0.1:PORT (bash's /dev/tcp; an http_proxy in the
# environment must not get in the way); prints the body of a 200 answer.
# Returns 1 when there is no such answer within 2 s.
http_get() {
	local port=$1 path=$2 fd line status len=0 body=
	{ exec {fd}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
	printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&"$fd"
	if ! IFS= read -r -t 2 status <&"$fd" || [[ $status != HTTP/1.?' 200 '* ]]; then
		exec {fd}<&-
		return 1
	fi
	while IFS= read -r -t 2 line <&"$fd"; do
		line=${line%$'\r'}
		[[ -z $line ]] && break
		if [[ ${line,,} =~ ^content-length:\ *([0-9]+) ]]; then
			len=${BASH_REMATCH[1]}
		fi
	done
	if ((len > 0)) && ! IFS= read -r -N "$len" -t 2 body <&"$fd"; then
		exec {fd}<&-
		return 1
	fi
	exec {fd}<&-
	printf '%s' "$body"
}

# Stop the server's whole process group ($server_pid leads it): SIGTERM,
# then SIGKILL after 5 s; clears server_pid.  Nothing to do without one.
stop_server() {
	[[ -n $server_pid ]] || return 0
	kill -TERM -- "-$server_pid" 2>/dev/null || true
	local i
	for ((i = 0; i < 50; i++)); do
		kill -0 -- "-$server_pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL -- "-$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
	server_pid=
}

# For a script's EXIT trap: kill the load generator ($load_pid) and the
# server's process group ($server_pid), whichever is running, at once.
kill_running() {
	if [[ -n ${load_pid:-} ]]; then
		kill "$load_pid" 2>/dev/null || true
		wait "$load_pid" 2>/dev/null || true
	fi
	if [[ -n ${server_pid:-} ]]; then
		kill -KILL -- "-$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
}
