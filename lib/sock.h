/* Socket primitives.  Each tries once and returns: a count or 0 on success,
 * -EAGAIN when it would block, another -errno on failure.  Waiting is done
 * elsewhere (one place, in the binding).  Any thread.  This header also
 * brings the system's socket, address and name-lookup declarations, so
 * that other files need not know where each platform keeps them. */
#ifndef WEFT_SOCK_H
#define WEFT_SOCK_H

#include <stddef.h>
#include <sys/types.h>
#if defined(_WIN32)
/* sock-win32.c: a SOCKET handle travels as an int (handle values fit),
 * Winsock's errors come back as the same -errno values, and shutdown
 * takes the POSIX names. */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <afunix.h>
#define SHUT_RD SD_RECEIVE
#define SHUT_WR SD_SEND
#define SHUT_RDWR SD_BOTH
/* Winsock's getaddrinfo reports WSA codes, never "see errno". */
#define EAI_SYSTEM (-1)
#else
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#endif

/* socket(2), non-blocking and close-on-exec.  fd or -errno. */
int weft_sock_open(int family, int type, int protocol);

/* close(2), retrying nothing (Linux releases the fd even on EINTR). */
void weft_sock_close(int fd);

/* Start a connect: 0 (connected), -EINPROGRESS (wait for writability,
 * then call weft_sock_connect_result), or -errno. */
int weft_sock_connect(int fd, const struct sockaddr *sa, socklen_t len);

/* The outcome of a connect in progress (SO_ERROR): 0 or -errno. */
int weft_sock_connect_result(int fd);

/* accept4(2), the new fd non-blocking and close-on-exec.  fd or -errno.
 * sa/len may be NULL. */
int weft_sock_accept(int fd, struct sockaddr *sa, socklen_t *len);

/* Whether accept's error err (negative) belongs to the one connection it
 * took, which died before it was accepted: the next accept may be fine. */
int weft_sock_accept_lost(int err);

/* recv/send; send never raises SIGPIPE.  Byte count or -errno. */
ssize_t weft_sock_recv(int fd, void *buf, size_t len, int flags);
ssize_t weft_sock_send(int fd, const void *buf, size_t len, int flags);
ssize_t weft_sock_recvfrom(int fd, void *buf, size_t len, int flags,
                           struct sockaddr *sa, socklen_t *salen);
ssize_t weft_sock_sendto(int fd, const void *buf, size_t len, int flags,
                         const struct sockaddr *sa, socklen_t salen);

/* bind/listen/shutdown: 0 or -errno.  how: SHUT_RD/SHUT_WR/SHUT_RDWR. */
int weft_sock_bind(int fd, const struct sockaddr *sa, socklen_t len);
int weft_sock_listen(int fd, int backlog);
int weft_sock_shutdown(int fd, int how);

/* Socket options by name ("so_reuseaddr", "tcp_nodelay", ...). */
enum {
	WEFT_OPT_INT,    /* integer value */
	WEFT_OPT_BOOL,   /* boolean (int 0/1 on the wire) */
	WEFT_OPT_LINGER, /* seconds, or -1 = off (struct linger) */
	WEFT_OPT_STRING, /* string (e.g. tcp_congestion, so_bindtodevice) */
	WEFT_OPT_TIME,   /* seconds as a number (struct timeval) */
	WEFT_OPT_STRUCT  /* read-only structure (so_peercred, tcp_info): see
			    weft_sockopt_get_raw */
};
typedef struct weft_sockopt {
	const char *name;
	int level, optname, kind;
	int readonly; /* get only (so_error, so_type, ...) */
} weft_sockopt_t;

/* The option called name, or NULL. */
const weft_sockopt_t *weft_sockopt_find(const char *name);

/* All options, terminated by an entry with name NULL. */
extern const weft_sockopt_t weft_sockopts[];

/* Set/get an integer-like option (INT, BOOL, LINGER).  0 or -errno. */
int weft_sockopt_set_int(int fd, const weft_sockopt_t *o, int value);
int weft_sockopt_get_int(int fd, const weft_sockopt_t *o, int *value);
/* Set/get a string option; get writes a NUL-terminated string.  0 or -errno. */
int weft_sockopt_set_str(int fd, const weft_sockopt_t *o, const char *s, size_t len);
int weft_sockopt_get_str(int fd, const weft_sockopt_t *o, char *buf, size_t size);

/* Set/get a TIME option, in seconds (0 = no timeout).  0 or -errno. */
int weft_sockopt_set_time(int fd, const weft_sockopt_t *o, double seconds);
int weft_sockopt_get_time(int fd, const weft_sockopt_t *o, double *seconds);
/* Read a STRUCT option's bytes into buf (*len in: its size, out: the
 * length the kernel gave).  0 or -errno. */
int weft_sockopt_get_raw(int fd, const weft_sockopt_t *o, void *buf, socklen_t *len);

/* A STRUCT option's fields, by name: field(ud, name, value) for each.
 * 0 or -errno (-ENOPROTOOPT where the platform has no such structure). */
int weft_sockopt_get_fields(int fd, const weft_sockopt_t *o,
                            void (*field)(void *ud, const char *name, long long value), void *ud);

/* A socket of this process's on a duplicate of another library's socket
 * ofd (the original stays its owner's), non-blocking and not inherited;
 * *family, *type, *protocol and *listening describe it.  fd or -errno. */
int weft_sock_dup(int ofd, int *family, int *type, int *protocol, int *listening);

/* Address helpers. */
/* "a.b.c.d" or the IPv6 text, or the unix path; into buf (size >= 108). */
const char *weft_sa_ip(const struct sockaddr *sa, char *buf, size_t size);
/* "ip:port", "[ip6]:port", or the unix path; into buf (size >= 128). */
const char *weft_sa_tostring(const struct sockaddr *sa, char *buf, size_t size);
/* Port in host order, 0 for families without ports. */
int weft_sa_port(const struct sockaddr *sa);
/* Length of a sockaddr of its family (0 if unknown). */
socklen_t weft_sa_len(const struct sockaddr *sa);

#endif
