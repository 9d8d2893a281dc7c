/* Socket primitives: thin wrappers that try once and return -errno, the
 * socket option table, and sockaddr formatting.  Linux. */
#include "sock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

int weft_sock_open(int family, int type, int protocol)
{
	int fd = socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
	return fd < 0 ? -errno : fd;
}

void weft_sock_close(int fd)
{
	if (fd >= 0)
		close(fd);
}

int weft_sock_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (connect(fd, sa, len) == 0)
		return 0;
	/* A connect interrupted by a signal goes on in the background, and
	 * calling again would only report EALREADY; to the caller it is the
	 * same as EINPROGRESS: wait for writability, then ask SO_ERROR. */
	if (errno == EINTR)
		return -EINPROGRESS;
	return -errno;
}

int weft_sock_connect_result(int fd)
{
	int err = 0;
	socklen_t len = sizeof err;

	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return -errno;
	return -err;
}

int weft_sock_accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	int c;

	/* For an unnamed AF_UNIX peer the kernel writes only the family;
	 * zeroing first makes the rest read as an empty path. */
	if (sa && len)
		memset(sa, 0, *len);
	do
		c = accept4(fd, sa, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
	while (c < 0 && errno == EINTR);
	return c < 0 ? -errno : c;
}

int weft_sock_accept_lost(int err)
{
	/* Linux passes pending network errors of the new connection on
	 * through accept (see accept(2)). */
	switch (-err) {
	case ECONNABORTED:
	case EPROTO:
	case EPERM: /* a firewall rule */
	case ENETDOWN:
	case ENOPROTOOPT:
	case EHOSTDOWN:
	case ENONET:
	case EHOSTUNREACH:
	case ENETUNREACH:
		return 1;
	}
	return 0;
}

ssize_t weft_sock_recv(int fd, void *buf, size_t len, int flags)
{
	ssize_t n;

	do
		n = recv(fd, buf, len, flags);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

/* MSG_NOSIGNAL: a write to a closed peer returns EPIPE instead of killing
 * the process with SIGPIPE, without touching the process's signal
 * dispositions (which belong to the embedding program). */
ssize_t weft_sock_send(int fd, const void *buf, size_t len, int flags)
{
	ssize_t n;

	do
		n = send(fd, buf, len, flags | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

ssize_t weft_sock_recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *sa,
                           socklen_t *salen)
{
	ssize_t n;

	/* As in accept: an unnamed AF_UNIX sender fills in only the family. */
	if (sa && salen)
		memset(sa, 0, *salen);
	do
		n = recvfrom(fd, buf, len, flags, sa, salen);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

ssize_t weft_sock_sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *sa,
                         socklen_t salen)
{
	ssize_t n;

	do
		n = sendto(fd, buf, len, flags | MSG_NOSIGNAL, sa, salen);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

int weft_sock_bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	return bind(fd, sa, len) < 0 ? -errno : 0;
}

int weft_sock_listen(int fd, int backlog)
{
	return listen(fd, backlog) < 0 ? -errno : 0;
}

int weft_sock_shutdown(int fd, int how)
{
	return shutdown(fd, how) < 0 ? -errno : 0;
}

/* Socket options. */

#define RW 0
#define RO 1

const weft_sockopt_t weft_sockopts[] = {
    {"so_reuseaddr", SOL_SOCKET, SO_REUSEADDR, WEFT_OPT_BOOL, RW},
    {"so_reuseport", SOL_SOCKET, SO_REUSEPORT, WEFT_OPT_BOOL, RW},
    {"so_keepalive", SOL_SOCKET, SO_KEEPALIVE, WEFT_OPT_BOOL, RW},
    {"so_rcvbuf", SOL_SOCKET, SO_RCVBUF, WEFT_OPT_INT, RW},
    {"so_sndbuf", SOL_SOCKET, SO_SNDBUF, WEFT_OPT_INT, RW},
    {"so_rcvlowat", SOL_SOCKET, SO_RCVLOWAT, WEFT_OPT_INT, RW},
    /* Linux reads SO_SNDLOWAT but refuses to set it (ENOPROTOOPT). */
    {"so_sndlowat", SOL_SOCKET, SO_SNDLOWAT, WEFT_OPT_INT, RW},
    {"so_broadcast", SOL_SOCKET, SO_BROADCAST, WEFT_OPT_BOOL, RW},
    {"so_linger", SOL_SOCKET, SO_LINGER, WEFT_OPT_LINGER, RW},
    {"so_error", SOL_SOCKET, SO_ERROR, WEFT_OPT_INT, RO},
    {"so_type", SOL_SOCKET, SO_TYPE, WEFT_OPT_INT, RO},
    {"so_acceptconn", SOL_SOCKET, SO_ACCEPTCONN, WEFT_OPT_BOOL, RO},
    {"so_dontroute", SOL_SOCKET, SO_DONTROUTE, WEFT_OPT_BOOL, RW},
    {"so_oobinline", SOL_SOCKET, SO_OOBINLINE, WEFT_OPT_BOOL, RW},
    {"so_priority", SOL_SOCKET, SO_PRIORITY, WEFT_OPT_INT, RW},
    {"so_bindtodevice", SOL_SOCKET, SO_BINDTODEVICE, WEFT_OPT_STRING, RW},
    {"so_domain", SOL_SOCKET, SO_DOMAIN, WEFT_OPT_INT, RO},
    {"so_protocol", SOL_SOCKET, SO_PROTOCOL, WEFT_OPT_INT, RO},
    {"so_mark", SOL_SOCKET, SO_MARK, WEFT_OPT_INT, RW},
    {"tcp_nodelay", IPPROTO_TCP, TCP_NODELAY, WEFT_OPT_BOOL, RW},
    {"tcp_cork", IPPROTO_TCP, TCP_CORK, WEFT_OPT_BOOL, RW},
    {"tcp_quickack", IPPROTO_TCP, TCP_QUICKACK, WEFT_OPT_BOOL, RW},
    {"tcp_keepidle", IPPROTO_TCP, TCP_KEEPIDLE, WEFT_OPT_INT, RW},
    {"tcp_keepintvl", IPPROTO_TCP, TCP_KEEPINTVL, WEFT_OPT_INT, RW},
    {"tcp_keepcnt", IPPROTO_TCP, TCP_KEEPCNT, WEFT_OPT_INT, RW},
    {"tcp_maxseg", IPPROTO_TCP, TCP_MAXSEG, WEFT_OPT_INT, RW},
    {"tcp_defer_accept", IPPROTO_TCP, TCP_DEFER_ACCEPT, WEFT_OPT_INT, RW},
    {"tcp_user_timeout", IPPROTO_TCP, TCP_USER_TIMEOUT, WEFT_OPT_INT, RW},
    {"tcp_fastopen", IPPROTO_TCP, TCP_FASTOPEN, WEFT_OPT_INT, RW},
    {"tcp_congestion", IPPROTO_TCP, TCP_CONGESTION, WEFT_OPT_STRING, RW},
    {"tcp_syncnt", IPPROTO_TCP, TCP_SYNCNT, WEFT_OPT_INT, RW},
    {"tcp_linger2", IPPROTO_TCP, TCP_LINGER2, WEFT_OPT_INT, RW},
    {"tcp_notsent_lowat", IPPROTO_TCP, TCP_NOTSENT_LOWAT, WEFT_OPT_INT, RW},
    {"ip_ttl", IPPROTO_IP, IP_TTL, WEFT_OPT_INT, RW},
    {"ip_tos", IPPROTO_IP, IP_TOS, WEFT_OPT_INT, RW},
    {"ip_multicast_ttl", IPPROTO_IP, IP_MULTICAST_TTL, WEFT_OPT_INT, RW},
    {"ip_multicast_loop", IPPROTO_IP, IP_MULTICAST_LOOP, WEFT_OPT_BOOL, RW},
    {"ip_freebind", IPPROTO_IP, IP_FREEBIND, WEFT_OPT_BOOL, RW},
    {"ip_transparent", IPPROTO_IP, IP_TRANSPARENT, WEFT_OPT_BOOL, RW},
    {"ipv6_v6only", IPPROTO_IPV6, IPV6_V6ONLY, WEFT_OPT_BOOL, RW},
    {"ipv6_unicast_hops", IPPROTO_IPV6, IPV6_UNICAST_HOPS, WEFT_OPT_INT, RW},
    {"ipv6_multicast_hops", IPPROTO_IPV6, IPV6_MULTICAST_HOPS, WEFT_OPT_INT, RW},
    {"ipv6_multicast_loop", IPPROTO_IPV6, IPV6_MULTICAST_LOOP, WEFT_OPT_BOOL, RW},
    /* The rest of socket(7), tcp(7), udp(7), ip(7) and ipv6(7) that takes
     * a plain value. */
    {"so_rcvtimeo", SOL_SOCKET, SO_RCVTIMEO, WEFT_OPT_TIME, RW},
    {"so_sndtimeo", SOL_SOCKET, SO_SNDTIMEO, WEFT_OPT_TIME, RW},
    {"so_timestamp", SOL_SOCKET, SO_TIMESTAMP, WEFT_OPT_BOOL, RW},
    {"so_timestampns", SOL_SOCKET, SO_TIMESTAMPNS, WEFT_OPT_BOOL, RW},
    {"so_passcred", SOL_SOCKET, SO_PASSCRED, WEFT_OPT_BOOL, RW},
    {"so_peercred", SOL_SOCKET, SO_PEERCRED, WEFT_OPT_STRUCT, RO},
    {"so_busy_poll", SOL_SOCKET, SO_BUSY_POLL, WEFT_OPT_INT, RW},
    {"so_incoming_cpu", SOL_SOCKET, SO_INCOMING_CPU, WEFT_OPT_INT, RW},
    {"so_peek_off", SOL_SOCKET, SO_PEEK_OFF, WEFT_OPT_INT, RW},
    {"so_rxq_ovfl", SOL_SOCKET, SO_RXQ_OVFL, WEFT_OPT_BOOL, RW},
    {"so_select_err_queue", SOL_SOCKET, SO_SELECT_ERR_QUEUE, WEFT_OPT_BOOL, RW},
    {"so_lock_filter", SOL_SOCKET, SO_LOCK_FILTER, WEFT_OPT_BOOL, RW},
    {"so_zerocopy", SOL_SOCKET, SO_ZEROCOPY, WEFT_OPT_BOOL, RW},
    {"so_max_pacing_rate", SOL_SOCKET, SO_MAX_PACING_RATE, WEFT_OPT_INT, RW},
    {"so_nofcs", SOL_SOCKET, SO_NOFCS, WEFT_OPT_BOOL, RW},
    {"tcp_window_clamp", IPPROTO_TCP, TCP_WINDOW_CLAMP, WEFT_OPT_INT, RW},
    {"tcp_info", IPPROTO_TCP, TCP_INFO, WEFT_OPT_STRUCT, RO},
    {"tcp_thin_linear_timeouts", IPPROTO_TCP, TCP_THIN_LINEAR_TIMEOUTS, WEFT_OPT_BOOL, RW},
    {"tcp_fastopen_connect", IPPROTO_TCP, TCP_FASTOPEN_CONNECT, WEFT_OPT_BOOL, RW},
    {"tcp_inq", IPPROTO_TCP, TCP_INQ, WEFT_OPT_BOOL, RW},
    {"tcp_mss", IPPROTO_TCP, TCP_MAXSEG, WEFT_OPT_INT, RW},
    /* The reference's Windows name for the keep-alive idle time. */
    {"tcp_keepalive", IPPROTO_TCP, TCP_KEEPIDLE, WEFT_OPT_INT, RW},
    {"udp_cork", IPPROTO_UDP, UDP_CORK, WEFT_OPT_BOOL, RW},
    {"udp_segment", IPPROTO_UDP, UDP_SEGMENT, WEFT_OPT_INT, RW},
    {"udp_gro", IPPROTO_UDP, UDP_GRO, WEFT_OPT_BOOL, RW},
    {"ip_hdrincl", IPPROTO_IP, IP_HDRINCL, WEFT_OPT_BOOL, RW},
    {"ip_recvtos", IPPROTO_IP, IP_RECVTOS, WEFT_OPT_BOOL, RW},
    {"ip_recvttl", IPPROTO_IP, IP_RECVTTL, WEFT_OPT_BOOL, RW},
    {"ip_recverr", IPPROTO_IP, IP_RECVERR, WEFT_OPT_BOOL, RW},
    {"ip_pktinfo", IPPROTO_IP, IP_PKTINFO, WEFT_OPT_BOOL, RW},
    {"ip_recvorigdstaddr", IPPROTO_IP, IP_RECVORIGDSTADDR, WEFT_OPT_BOOL, RW},
    {"ip_mtu_discover", IPPROTO_IP, IP_MTU_DISCOVER, WEFT_OPT_INT, RW},
    {"ip_mtu", IPPROTO_IP, IP_MTU, WEFT_OPT_INT, RO},
    {"ip_minttl", IPPROTO_IP, IP_MINTTL, WEFT_OPT_INT, RW},
    {"ip_nodefrag", IPPROTO_IP, IP_NODEFRAG, WEFT_OPT_BOOL, RW},
    {"ip_bind_address_no_port", IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, WEFT_OPT_BOOL, RW},
    {"ip_multicast_all", IPPROTO_IP, IP_MULTICAST_ALL, WEFT_OPT_BOOL, RW},
    {"ipv6_recvpktinfo", IPPROTO_IPV6, IPV6_RECVPKTINFO, WEFT_OPT_BOOL, RW},
    {"ipv6_recverr", IPPROTO_IPV6, IPV6_RECVERR, WEFT_OPT_BOOL, RW},
    {"ipv6_mtu_discover", IPPROTO_IPV6, IPV6_MTU_DISCOVER, WEFT_OPT_INT, RW},
    {"ipv6_mtu", IPPROTO_IPV6, IPV6_MTU, WEFT_OPT_INT, RO},
    {"ipv6_tclass", IPPROTO_IPV6, IPV6_TCLASS, WEFT_OPT_INT, RW},
    {"ipv6_recvtclass", IPPROTO_IPV6, IPV6_RECVTCLASS, WEFT_OPT_BOOL, RW},
    {NULL, 0, 0, 0, 0},
};

/* Both string options are names the kernel keeps in 16 bytes with the NUL
 * (IFNAMSIZ, TCP_CA_NAME_MAX). */
#define OPT_STR_MAX (IFNAMSIZ - 1)

/* A linear scan: the table is short and options are not set per packet. */
const weft_sockopt_t *weft_sockopt_find(const char *name)
{
	for (const weft_sockopt_t *o = weft_sockopts; o->name; o++)
		if (strcmp(o->name, name) == 0)
			return o;
	return NULL;
}

int weft_sockopt_set_int(int fd, const weft_sockopt_t *o, int value)
{
	if (!o || o->readonly)
		return -ENOPROTOOPT;

	int r;
	switch (o->kind) {
	case WEFT_OPT_INT:
		r = setsockopt(fd, o->level, o->optname, &value, sizeof value);
		break;
	case WEFT_OPT_BOOL: {
		int b = value != 0;
		r = setsockopt(fd, o->level, o->optname, &b, sizeof b);
		break;
	}
	case WEFT_OPT_LINGER: {
		/* Any negative value means "off", as -1 is documented. */
		struct linger l = {.l_onoff = value >= 0, .l_linger = value >= 0 ? value : 0};
		r = setsockopt(fd, o->level, o->optname, &l, sizeof l);
		break;
	}
	default:
		return -EINVAL;
	}
	return r < 0 ? -errno : 0;
}

int weft_sockopt_get_int(int fd, const weft_sockopt_t *o, int *value)
{
	if (!o)
		return -ENOPROTOOPT;

	switch (o->kind) {
	case WEFT_OPT_INT:
	case WEFT_OPT_BOOL: {
		int v = 0;
		socklen_t len = sizeof v;
		if (getsockopt(fd, o->level, o->optname, &v, &len) < 0)
			return -errno;
		*value = o->kind == WEFT_OPT_BOOL ? v != 0 : v;
		return 0;
	}
	case WEFT_OPT_LINGER: {
		struct linger l = {0};
		socklen_t len = sizeof l;
		if (getsockopt(fd, o->level, o->optname, &l, &len) < 0)
			return -errno;
		*value = l.l_onoff ? l.l_linger : -1;
		return 0;
	}
	default:
		return -EINVAL;
	}
}

int weft_sockopt_set_str(int fd, const weft_sockopt_t *o, const char *s, size_t len)
{
	if (!o || o->readonly)
		return -ENOPROTOOPT;
	if (o->kind != WEFT_OPT_STRING)
		return -EINVAL;
	/* The kernel silently cuts longer names to 15 bytes, which could pick
	 * a different device or algorithm than the one asked for. */
	if (len > OPT_STR_MAX)
		return -EINVAL;
	return setsockopt(fd, o->level, o->optname, s, (socklen_t)len) < 0 ? -errno : 0;
}

int weft_sockopt_get_str(int fd, const weft_sockopt_t *o, char *buf, size_t size)
{
	if (!o)
		return -ENOPROTOOPT;
	if (o->kind != WEFT_OPT_STRING)
		return -EINVAL;

	/* Read through a buffer of our own: SO_BINDTODEVICE fails with EINVAL
	 * if offered less than IFNAMSIZ bytes, and TCP_CONGESTION pads with
	 * NULs rather than saying how long the name is.  An unbound socket
	 * reads SO_BINDTODEVICE as length 0, i.e. "". */
	char tmp[64];
	socklen_t len = sizeof tmp;
	if (getsockopt(fd, o->level, o->optname, tmp, &len) < 0)
		return -errno;
	size_t n = strnlen(tmp, len);
	if (n >= size)
		return -ERANGE;
	memcpy(buf, tmp, n);
	buf[n] = '\0';
	return 0;
}

int weft_sockopt_set_time(int fd, const weft_sockopt_t *o, double seconds)
{
	if (!o || o->readonly)
		return -ENOPROTOOPT;
	if (o->kind != WEFT_OPT_TIME || !(seconds >= 0) || seconds > 1e9)
		return -EINVAL;
	struct timeval tv;
	tv.tv_sec = (time_t)seconds;
	tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
	return setsockopt(fd, o->level, o->optname, &tv, sizeof tv) < 0 ? -errno : 0;
}

int weft_sockopt_get_time(int fd, const weft_sockopt_t *o, double *seconds)
{
	if (!o)
		return -ENOPROTOOPT;
	if (o->kind != WEFT_OPT_TIME)
		return -EINVAL;
	struct timeval tv = {0};
	socklen_t len = sizeof tv;
	if (getsockopt(fd, o->level, o->optname, &tv, &len) < 0)
		return -errno;
	*seconds = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
	return 0;
}

int weft_sockopt_get_raw(int fd, const weft_sockopt_t *o, void *buf, socklen_t *len)
{
	if (!o)
		return -ENOPROTOOPT;
	if (o->kind != WEFT_OPT_STRUCT)
		return -EINVAL;
	return getsockopt(fd, o->level, o->optname, buf, len) < 0 ? -errno : 0;
}

int weft_sockopt_get_fields(int fd, const weft_sockopt_t *o,
                            void (*field)(void *ud, const char *name, long long value), void *ud)
{
	union {
		struct ucred cred;
		struct tcp_info ti;
	} u;
	memset(&u, 0, sizeof u);
	if (!o)
		return -ENOPROTOOPT;
	int cred = o->level == SOL_SOCKET && o->optname == SO_PEERCRED;
	socklen_t len = cred ? sizeof u.cred : sizeof u.ti;
	int rc = weft_sockopt_get_raw(fd, o, &u, &len);
	if (rc < 0)
		return rc;
	if (cred) {
		field(ud, "pid", u.cred.pid);
		field(ud, "uid", u.cred.uid);
		field(ud, "gid", u.cred.gid);
		return 0;
	}
	const struct tcp_info *t = &u.ti;
#define FIELD(name, member) field(ud, name, (long long)t->member)
	FIELD("state", tcpi_state);
	FIELD("ca_state", tcpi_ca_state);
	FIELD("retransmits", tcpi_retransmits);
	FIELD("probes", tcpi_probes);
	FIELD("backoff", tcpi_backoff);
	FIELD("options", tcpi_options);
	FIELD("snd_wscale", tcpi_snd_wscale);
	FIELD("rcv_wscale", tcpi_rcv_wscale);
	FIELD("rto", tcpi_rto);
	FIELD("ato", tcpi_ato);
	FIELD("snd_mss", tcpi_snd_mss);
	FIELD("rcv_mss", tcpi_rcv_mss);
	FIELD("unacked", tcpi_unacked);
	FIELD("sacked", tcpi_sacked);
	FIELD("lost", tcpi_lost);
	FIELD("retrans", tcpi_retrans);
	FIELD("last_data_sent", tcpi_last_data_sent);
	FIELD("last_ack_recv", tcpi_last_ack_recv);
	FIELD("last_data_recv", tcpi_last_data_recv);
	FIELD("pmtu", tcpi_pmtu);
	FIELD("rcv_ssthresh", tcpi_rcv_ssthresh);
	FIELD("rtt", tcpi_rtt);
	FIELD("rttvar", tcpi_rttvar);
	FIELD("snd_ssthresh", tcpi_snd_ssthresh);
	FIELD("snd_cwnd", tcpi_snd_cwnd);
	FIELD("advmss", tcpi_advmss);
	FIELD("reordering", tcpi_reordering);
	FIELD("rcv_rtt", tcpi_rcv_rtt);
	FIELD("rcv_space", tcpi_rcv_space);
	FIELD("total_retrans", tcpi_total_retrans);
#undef FIELD
	return 0;
}

int weft_sock_dup(int ofd, int *family, int *type, int *protocol, int *listening)
{
	socklen_t len = sizeof *type;
	*protocol = *listening = 0;
	if (getsockopt(ofd, SOL_SOCKET, SO_TYPE, type, &len) < 0)
		return -errno;
	len = sizeof *family;
	if (getsockopt(ofd, SOL_SOCKET, SO_DOMAIN, family, &len) < 0)
		return -errno;
	len = sizeof *protocol;
	getsockopt(ofd, SOL_SOCKET, SO_PROTOCOL, protocol, &len);
	len = sizeof *listening;
	getsockopt(ofd, SOL_SOCKET, SO_ACCEPTCONN, listening, &len);
	int fd = fcntl(ofd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

/* Addresses. */

/* An AF_UNIX name: the path, or "@name" for Linux's abstract namespace
 * (sun_path starting with a NUL), or "" for an unnamed socket.  Names are
 * taken to end at the first NUL, the convention weft_sa_len follows. */
static const char *unix_name(const struct sockaddr_un *un, char *buf, size_t size)
{
	const char *p = un->sun_path;
	size_t max = sizeof un->sun_path;
	const char *prefix = "";

	if (p[0] == '\0' && p[1] != '\0') {
		p++;
		max--;
		prefix = "@";
	}
	int n = snprintf(buf, size, "%s%.*s", prefix, (int)strnlen(p, max), p);
	return n >= 0 && (size_t)n < size ? buf : NULL;
}

const char *weft_sa_ip(const struct sockaddr *sa, char *buf, size_t size)
{
	switch (sa->sa_family) {
	case AF_INET: {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		return inet_ntop(AF_INET, &in->sin_addr, buf, size);
	}
	case AF_INET6: {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		if (!inet_ntop(AF_INET6, &in6->sin6_addr, buf, size))
			return NULL;
		if (in6->sin6_scope_id == 0)
			return buf;
		/* A link-local address is unusable without its interface, so
		 * the scope is kept, in the "%ifname" form getaddrinfo()
		 * reads back (the index if the interface is gone). */
		char ifname[IF_NAMESIZE];
		size_t used = strlen(buf);
		int n;
		if (if_indextoname(in6->sin6_scope_id, ifname))
			n = snprintf(buf + used, size - used, "%%%s", ifname);
		else
			n = snprintf(buf + used, size - used, "%%%u", (unsigned)in6->sin6_scope_id);
		return n >= 0 && (size_t)n < size - used ? buf : NULL;
	}
	case AF_UNIX:
		return unix_name((const struct sockaddr_un *)sa, buf, size);
	default:
		return NULL;
	}
}

const char *weft_sa_tostring(const struct sockaddr *sa, char *buf, size_t size)
{
	char ip[INET6_ADDRSTRLEN + IF_NAMESIZE + 1];
	int n;

	switch (sa->sa_family) {
	case AF_INET:
		if (!weft_sa_ip(sa, ip, sizeof ip))
			return NULL;
		n = snprintf(buf, size, "%s:%d", ip, weft_sa_port(sa));
		break;
	case AF_INET6:
		if (!weft_sa_ip(sa, ip, sizeof ip))
			return NULL;
		n = snprintf(buf, size, "[%s]:%d", ip, weft_sa_port(sa));
		break;
	case AF_UNIX:
		return unix_name((const struct sockaddr_un *)sa, buf, size);
	default:
		return NULL;
	}
	return n >= 0 && (size_t)n < size ? buf : NULL;
}

int weft_sa_port(const struct sockaddr *sa)
{
	switch (sa->sa_family) {
	case AF_INET:
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	case AF_INET6:
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	default:
		return 0;
	}
}

socklen_t weft_sa_len(const struct sockaddr *sa)
{
	switch (sa->sa_family) {
	case AF_INET:
		return sizeof(struct sockaddr_in);
	case AF_INET6:
		return sizeof(struct sockaddr_in6);
	case AF_UNIX: {
		/* The length the kernel itself reports: up to and including a
		 * path's NUL (none if the path fills sun_path); the leading
		 * NUL plus the name for an abstract address, whose length
		 * matters because every byte counts as part of the name; and
		 * just the family for an unnamed socket. */
		const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
		size_t base = offsetof(struct sockaddr_un, sun_path);
		size_t max = sizeof un->sun_path;
		if (un->sun_path[0] != '\0') {
			size_t n = strnlen(un->sun_path, max);
			return (socklen_t)(base + n + (n < max));
		}
		if (un->sun_path[1] == '\0')
			return (socklen_t)base;
		return (socklen_t)(base + 1 + strnlen(un->sun_path + 1, max - 1));
	}
	default:
		return 0;
	}
}
