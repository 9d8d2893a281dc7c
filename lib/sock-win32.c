/* Socket primitives (sock.h) on Winsock: the same contract as sock.c,
 * with Winsock's error codes mapped to the -errno values the rest of weft
 * (and weft_strerror's portable names) know.  A SOCKET travels as an int:
 * handle values fit in 32 bits, even in 64-bit processes.  Sockets are
 * made non-blocking and not inheritable; Windows has no SIGPIPE to avoid. */
#include "sock.h"

#include <errno.h>
#include <limits.h>
#include <mswsock.h>
#include <stdio.h>
#include <string.h>
/* sockaddr_un (Windows 10 1803 and later). */
#include <afunix.h>

#include "thread.h"

/* Winsock's TCP keep-alive options, by value where the headers lack them. */
#ifndef TCP_KEEPALIVE
#define TCP_KEEPALIVE 3
#endif
#ifndef TCP_KEEPCNT
#define TCP_KEEPCNT 16
#endif
#ifndef TCP_KEEPINTVL
#define TCP_KEEPINTVL 17
#endif

/* A Winsock error as -errno. */
static int wsa_errno(int e)
{
	switch (e) {
	case WSAEWOULDBLOCK:
		return -EAGAIN;
	case WSAEINPROGRESS:
		return -EINPROGRESS;
	case WSAEALREADY:
		return -EALREADY;
	case WSAEINTR:
		return -EINTR;
	case WSAEBADF:
	case WSAENOTSOCK:
		return -EBADF;
	case WSAEACCES:
		return -EACCES;
	case WSAEFAULT:
		return -EFAULT;
	case WSAEINVAL:
		return -EINVAL;
	case WSAEMFILE:
		return -EMFILE;
	case WSAEDESTADDRREQ:
		return -EDESTADDRREQ;
	case WSAEMSGSIZE:
		return -EMSGSIZE;
	case WSAEPROTOTYPE:
		return -EPROTOTYPE;
	case WSAENOPROTOOPT:
		return -ENOPROTOOPT;
	case WSAEPROTONOSUPPORT:
	case WSAESOCKTNOSUPPORT:
		return -EPROTONOSUPPORT;
	case WSAEOPNOTSUPP:
		return -EOPNOTSUPP;
	case WSAEPFNOSUPPORT:
	case WSAEAFNOSUPPORT:
		return -EAFNOSUPPORT;
	case WSAEADDRINUSE:
		return -EADDRINUSE;
	case WSAEADDRNOTAVAIL:
		return -EADDRNOTAVAIL;
	case WSAENETDOWN:
		return -ENETDOWN;
	case WSAENETUNREACH:
		return -ENETUNREACH;
	case WSAENETRESET:
		return -ENETRESET;
	case WSAECONNABORTED:
		return -ECONNABORTED;
	case WSAECONNRESET:
		return -ECONNRESET;
	case WSAENOBUFS:
		return -ENOBUFS;
	case WSAEISCONN:
		return -EISCONN;
	case WSAENOTCONN:
		return -ENOTCONN;
	case WSAESHUTDOWN:
		return -EPIPE; /* sending after shutdown(SD_SEND), as on Linux */
	case WSAETIMEDOUT:
		return -ETIMEDOUT;
	case WSAECONNREFUSED:
		return -ECONNREFUSED;
	case WSAEHOSTDOWN:
	case WSAEHOSTUNREACH:
		return -EHOSTUNREACH;
	case WSAENAMETOOLONG:
		return -ENAMETOOLONG;
	case WSA_NOT_ENOUGH_MEMORY:
		return -ENOMEM;
	default:
		return -EIO; /* no closer meaning; rare enough to report plainly */
	}
}

static int last_error(void)
{
	return wsa_errno(WSAGetLastError());
}

static SOCKET sk(int fd)
{
	return (SOCKET)(intptr_t)fd;
}

static void winsock_init(void)
{
	WSADATA wsa;

	WSAStartup(MAKEWORD(2, 2), &wsa);
}

static int nonblocking(SOCKET s)
{
	u_long on = 1;

	return ioctlsocket(s, FIONBIO, &on) == 0 ? 0 : last_error();
}

int weft_sock_open(int family, int type, int protocol)
{
	static weft_once_t once = WEFT_ONCE_INIT;
	SOCKET s;
	int rc;

	weft_once(&once, winsock_init);
	s = WSASocketW(family, type, protocol, NULL, 0,
	               WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
	if (s == INVALID_SOCKET)
		return last_error();
	rc = nonblocking(s);
	if (rc == 0 && type == SOCK_DGRAM) {
		/* Windows reports an ICMP port-unreachable for an earlier
		 * datagram as WSAECONNRESET on the next receive, which Linux
		 * does only for connected sockets; turn that off. */
		BOOL off = FALSE;
		DWORD n;

		WSAIoctl(s, SIO_UDP_CONNRESET, &off, sizeof off, NULL, 0, &n, NULL, NULL);
	}
	if (rc != 0) {
		closesocket(s);
		return rc;
	}
	return (int)(intptr_t)s;
}

void weft_sock_close(int fd)
{
	if (fd >= 0)
		closesocket(sk(fd));
}

int weft_sock_connect(int fd, const struct sockaddr *sa, socklen_t len)
{
	if (connect(sk(fd), sa, len) == 0)
		return 0;
	/* Winsock says "would block" where POSIX says "in progress". */
	int e = WSAGetLastError();
	return e == WSAEWOULDBLOCK ? -EINPROGRESS : wsa_errno(e);
}

int weft_sock_connect_result(int fd)
{
	int err = 0, len = sizeof err;

	if (getsockopt(sk(fd), SOL_SOCKET, SO_ERROR, (char *)&err, &len) != 0)
		return last_error();
	return err ? wsa_errno(err) : 0;
}

int weft_sock_accept(int fd, struct sockaddr *sa, socklen_t *len)
{
	SOCKET c;
	int rc;

	if (sa && len)
		memset(sa, 0, *len);
	c = accept(sk(fd), sa, len);
	if (c == INVALID_SOCKET)
		return last_error();
	/* The accepted socket inherits non-blocking mode; say so anyway,
	 * and keep it out of child processes. */
	SetHandleInformation((HANDLE)c, HANDLE_FLAG_INHERIT, 0);
	rc = nonblocking(c);
	if (rc != 0) {
		closesocket(c);
		return rc;
	}
	return (int)(intptr_t)c;
}

/* Winsock counts in int: longer buffers go in INT_MAX pieces, which a
 * caller sees as a short read or write. */
static int clamp(size_t len)
{
	return len > INT_MAX ? INT_MAX : (int)len;
}

int weft_sock_accept_lost(int err)
{
	/* Winsock reports a connection reset or aborted before accept as
	 * WSAECONNRESET (or WSAECONNABORTED). */
	switch (-err) {
	case ECONNABORTED:
	case ECONNRESET:
	case ENETDOWN:
	case EHOSTUNREACH:
	case ENETUNREACH:
		return 1;
	}
	return 0;
}

ssize_t weft_sock_recv(int fd, void *buf, size_t len, int flags)
{
	int n = recv(sk(fd), buf, clamp(len), flags);

	/* After shutdown(SD_RECEIVE) Winsock fails a receive; Linux reads
	 * the end of the stream, which is what the layers above expect. */
	if (n < 0 && WSAGetLastError() == WSAESHUTDOWN)
		return 0;
	return n < 0 ? last_error() : n;
}

ssize_t weft_sock_send(int fd, const void *buf, size_t len, int flags)
{
	int n = send(sk(fd), buf, clamp(len), flags);

	return n < 0 ? last_error() : n;
}

ssize_t weft_sock_recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *sa,
                           socklen_t *salen)
{
	int n;

	if (sa && salen)
		memset(sa, 0, *salen);
	n = recvfrom(sk(fd), buf, clamp(len), flags, sa, salen);
	/* A datagram longer than the buffer: Linux returns the part that
	 * fits; Winsock returns it too, but as an error. */
	if (n < 0 && WSAGetLastError() == WSAEMSGSIZE)
		return clamp(len);
	return n < 0 ? last_error() : n;
}

ssize_t weft_sock_sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *sa,
                         socklen_t salen)
{
	int n = sendto(sk(fd), buf, clamp(len), flags, sa, salen);

	return n < 0 ? last_error() : n;
}

int weft_sock_bind(int fd, const struct sockaddr *sa, socklen_t len)
{
	return bind(sk(fd), sa, len) != 0 ? last_error() : 0;
}

int weft_sock_listen(int fd, int backlog)
{
	return listen(sk(fd), backlog) != 0 ? last_error() : 0;
}

int weft_sock_shutdown(int fd, int how)
{
	return shutdown(sk(fd), how) != 0 ? last_error() : 0;
}

/* Socket options: those Winsock has with the meaning they have on Linux.
 * Not here: so_reuseaddr (on Windows it lets another socket take over a
 * bound port; binding over TIME_WAIT, what Linux's option is for, is
 * allowed by default), and the Linux-only ones. */

#define RW 0
#define RO 1

const weft_sockopt_t weft_sockopts[] = {
    {"so_keepalive", SOL_SOCKET, SO_KEEPALIVE, WEFT_OPT_BOOL, RW},
    {"so_rcvbuf", SOL_SOCKET, SO_RCVBUF, WEFT_OPT_INT, RW},
    {"so_sndbuf", SOL_SOCKET, SO_SNDBUF, WEFT_OPT_INT, RW},
    {"so_broadcast", SOL_SOCKET, SO_BROADCAST, WEFT_OPT_BOOL, RW},
    {"so_linger", SOL_SOCKET, SO_LINGER, WEFT_OPT_LINGER, RW},
    {"so_error", SOL_SOCKET, SO_ERROR, WEFT_OPT_INT, RO},
    {"so_type", SOL_SOCKET, SO_TYPE, WEFT_OPT_INT, RO},
    {"so_acceptconn", SOL_SOCKET, SO_ACCEPTCONN, WEFT_OPT_BOOL, RO},
    {"so_oobinline", SOL_SOCKET, SO_OOBINLINE, WEFT_OPT_BOOL, RW},
    {"so_rcvtimeo", SOL_SOCKET, SO_RCVTIMEO, WEFT_OPT_TIME, RW},
    {"so_sndtimeo", SOL_SOCKET, SO_SNDTIMEO, WEFT_OPT_TIME, RW},
    {"tcp_nodelay", IPPROTO_TCP, TCP_NODELAY, WEFT_OPT_BOOL, RW},
    {"tcp_keepidle", IPPROTO_TCP, TCP_KEEPALIVE, WEFT_OPT_INT, RW},
    {"tcp_keepintvl", IPPROTO_TCP, TCP_KEEPINTVL, WEFT_OPT_INT, RW},
    {"tcp_keepcnt", IPPROTO_TCP, TCP_KEEPCNT, WEFT_OPT_INT, RW},
    {"ip_ttl", IPPROTO_IP, IP_TTL, WEFT_OPT_INT, RW},
    {"ip_tos", IPPROTO_IP, IP_TOS, WEFT_OPT_INT, RW},
    {"ip_multicast_ttl", IPPROTO_IP, IP_MULTICAST_TTL, WEFT_OPT_INT, RW},
    {"ip_multicast_loop", IPPROTO_IP, IP_MULTICAST_LOOP, WEFT_OPT_BOOL, RW},
    {"ipv6_v6only", IPPROTO_IPV6, IPV6_V6ONLY, WEFT_OPT_BOOL, RW},
    {"ipv6_unicast_hops", IPPROTO_IPV6, IPV6_UNICAST_HOPS, WEFT_OPT_INT, RW},
    {"ipv6_multicast_hops", IPPROTO_IPV6, IPV6_MULTICAST_HOPS, WEFT_OPT_INT, RW},
    {"ipv6_multicast_loop", IPPROTO_IPV6, IPV6_MULTICAST_LOOP, WEFT_OPT_BOOL, RW},
    {NULL, 0, 0, 0, 0},
};

const weft_sockopt_t *weft_sockopt_find(const char *name)
{
	for (const weft_sockopt_t *o = weft_sockopts; o->name; o++)
		if (strcmp(o->name, name) == 0)
			return o;
	return NULL;
}

int weft_sockopt_set_int(int fd, const weft_sockopt_t *o, int value)
{
	int r;

	if (!o || o->readonly)
		return -ENOPROTOOPT;
	switch (o->kind) {
	case WEFT_OPT_INT:
		r = setsockopt(sk(fd), o->level, o->optname, (const char *)&value, sizeof value);
		break;
	case WEFT_OPT_BOOL: {
		int b = value != 0;
		r = setsockopt(sk(fd), o->level, o->optname, (const char *)&b, sizeof b);
		break;
	}
	case WEFT_OPT_LINGER: {
		/* Winsock's linger fields are u_short. */
		struct linger l = {.l_onoff = value >= 0,
		                   .l_linger = (u_short)(value < 0       ? 0
		                                         : value > 65535 ? 65535
		                                                         : value)};
		r = setsockopt(sk(fd), o->level, o->optname, (const char *)&l, sizeof l);
		break;
	}
	default:
		return -EINVAL;
	}
	return r != 0 ? last_error() : 0;
}

int weft_sockopt_get_int(int fd, const weft_sockopt_t *o, int *value)
{
	if (!o)
		return -ENOPROTOOPT;
	switch (o->kind) {
	case WEFT_OPT_INT:
	case WEFT_OPT_BOOL: {
		/* Winsock writes a single byte for some boolean options (and
		 * a DWORD for others): start from zero. */
		int v = 0, len = sizeof v;
		if (getsockopt(sk(fd), o->level, o->optname, (char *)&v, &len) != 0)
			return last_error();
		if (len == 1)
			v = *(unsigned char *)&v;
		*value = o->kind == WEFT_OPT_BOOL ? v != 0 : v;
		return 0;
	}
	case WEFT_OPT_LINGER: {
		struct linger l = {0};
		int len = sizeof l;
		if (getsockopt(sk(fd), o->level, o->optname, (char *)&l, &len) != 0)
			return last_error();
		*value = l.l_onoff ? l.l_linger : -1;
		return 0;
	}
	default:
		return -EINVAL;
	}
}

/* No string options on Windows. */
int weft_sockopt_set_str(int fd, const weft_sockopt_t *o, const char *s, size_t len)
{
	if (!o || o->readonly)
		return -ENOPROTOOPT;
	return -EINVAL;
}

int weft_sockopt_get_str(int fd, const weft_sockopt_t *o, char *buf, size_t size)
{
	if (!o)
		return -ENOPROTOOPT;
	return -EINVAL;
}

/* Winsock keeps the time-outs as a DWORD of milliseconds, not a
 * struct timeval. */
int weft_sockopt_set_time(int fd, const weft_sockopt_t *o, double seconds)
{
	DWORD ms;

	if (!o || o->readonly)
		return -ENOPROTOOPT;
	if (o->kind != WEFT_OPT_TIME || !(seconds >= 0) || seconds > 1e6)
		return -EINVAL;
	/* Rounded up: a short time-out must not become 0, which is none. */
	ms = (DWORD)(seconds * 1000.0);
	if ((double)ms < seconds * 1000.0)
		ms++;
	return setsockopt(sk(fd), o->level, o->optname, (const char *)&ms, sizeof ms) != 0
	           ? last_error()
	           : 0;
}

int weft_sockopt_get_time(int fd, const weft_sockopt_t *o, double *seconds)
{
	DWORD ms = 0;
	int len = sizeof ms;

	if (!o)
		return -ENOPROTOOPT;
	if (o->kind != WEFT_OPT_TIME)
		return -EINVAL;
	if (getsockopt(sk(fd), o->level, o->optname, (char *)&ms, &len) != 0)
		return last_error();
	*seconds = (double)ms / 1000.0;
	return 0;
}

/* No structure options in the Windows table; the call keeps its contract
 * for one that is added. */
int weft_sockopt_get_fields(int fd, const weft_sockopt_t *o,
                            void (*field)(void *ud, const char *name, long long value), void *ud)
{
	(void)fd;
	(void)field;
	(void)ud;
	/* The table holds no structures here (no so_peercred, no tcp_info). */
	return o == NULL || o->kind != WEFT_OPT_STRUCT ? -EINVAL : -ENOPROTOOPT;
}

int weft_sock_dup(int ofd, int *family, int *type, int *protocol, int *listening)
{
	WSAPROTOCOL_INFOW info;
	SOCKET s;
	u_long on = 1;
	int len = sizeof *listening;

	/* A duplicate for this very process: the same socket, a handle of
	 * its own. */
	if (WSADuplicateSocketW(sk(ofd), GetCurrentProcessId(), &info) != 0)
		return last_error();
	*family = info.iAddressFamily;
	*type = info.iSocketType;
	*protocol = info.iProtocol;
	*listening = 0;
	getsockopt(sk(ofd), SOL_SOCKET, SO_ACCEPTCONN, (char *)listening, &len);
	s = WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0,
	               WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
	if (s == INVALID_SOCKET)
		return last_error();
	if (ioctlsocket(s, FIONBIO, &on) != 0) {
		int e = last_error();

		closesocket(s);
		return e;
	}
	return (int)(intptr_t)s;
}

int weft_sockopt_get_raw(int fd, const weft_sockopt_t *o, void *buf, socklen_t *len)
{
	if (!o)
		return -ENOPROTOOPT;
	if (o->kind != WEFT_OPT_STRUCT)
		return -EINVAL;
	return getsockopt(sk(fd), o->level, o->optname, buf, len) != 0 ? last_error() : 0;
}

/* Addresses: as in sock.c, without Linux's abstract AF_UNIX names. */

static const char *unix_name(const struct sockaddr_un *un, char *buf, size_t size)
{
	int n = snprintf(buf, size, "%.*s", (int)strnlen(un->sun_path, sizeof un->sun_path),
	                 un->sun_path);
	return n >= 0 && (size_t)n < size ? buf : NULL;
}

const char *weft_sa_ip(const struct sockaddr *sa, char *buf, size_t size)
{
	switch (sa->sa_family) {
	case AF_INET:
		return inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, size);
	case AF_INET6: {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		if (!inet_ntop(AF_INET6, &in6->sin6_addr, buf, size))
			return NULL;
		if (in6->sin6_scope_id == 0)
			return buf;
		/* The scope as the interface index, a form getaddrinfo reads
		 * back on Windows. */
		size_t used = strlen(buf);
		int n =
		    snprintf(buf + used, size - used, "%%%lu", (unsigned long)in6->sin6_scope_id);
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
	char ip[INET6_ADDRSTRLEN + 16];
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
		const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
		size_t base = offsetof(struct sockaddr_un, sun_path);
		size_t n = strnlen(un->sun_path, sizeof un->sun_path);
		return (socklen_t)(base + n + (n < sizeof un->sun_path));
	}
	default:
		return 0;
	}
}
