/* Sockets.  Every I/O method is written as a continuation (k) function:
 * it tries the call once, and on EAGAIN asks the worker to register the
 * thread on the fd's wait word and yields; when the loop resumes the thread
 * with the wake-up code, the same function runs again with its arguments
 * still on the stack.  Partial progress travels in the continuation
 * context.  Address arguments arrive resolved (weft.lua turns host, port
 * into an addrinfo first), so nothing here waits for name lookups. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>

#include "clock.h"
#include "error.h"
#include "listener.h"
#include "lweft.h"
#include "sock.h"

typedef struct lsock {
	const void *tag; /* &lw_tag_socket (lw_testclass) */
	weft_fd_t *rec;
	weft_listener_t *lst; /* listening: the (maybe shared) listener */
	int fd; /* -1 when closed */
	int protocol;
	unsigned short family;
	unsigned char type;
	unsigned char listening : 1;
	unsigned char connected : 1; /* TCP: a connect completed (or accepted) */
} lsock_t;

static lsock_t *checksock(lua_State *L, int idx)
{
	lsock_t *s = lw_testclass(L, idx, &lw_tag_socket);
	if (!s)
		luaL_typeerror(L, idx, LW_SOCKET);
	return s;
}

static lsock_t *checktype(lua_State *L, int idx, int type, const char *what)
{
	lsock_t *s = checksock(L, idx);
	if (s->type != type)
		luaL_error(L, "weft: %s is for %s sockets", what, lw_type_name(type));
	return s;
}

/* In a continuation (on its first call too, from the method that checked
 * its arguments) the socket and the data arguments are known to be what
 * the method checked: a waiting C function's stack slots cannot be
 * changed.  Only a buffer's length may have changed meanwhile, and the
 * lengths are checked again. */
static lsock_t *known_sock(lua_State *L)
{
	return lua_touserdata(L, 1);
}

#define send_args(L, idx, len) send_args_((L), (idx), (len), 0)
#define recv_args(L, idx, len) recv_args_((L), (idx), (len), 0)
#define send_args_known(L, idx, len) send_args_((L), (idx), (len), 1)
#define recv_args_known(L, idx, len) recv_args_((L), (idx), (len), 1)

/* Push a new socket object around fd (already open), registering it with
 * the poller.  Returns 1, or 2 (nil, message) after closing fd. */
static int push_sock(lua_State *L, lw_state_t *S, int fd, int family, int type, int protocol)
{
	/* Created closed, then opened: a failure leaves a valid object. */
	lsock_t *s = lua_newuserdatauv(L, sizeof *s, 0);
	s->tag = &lw_tag_socket;
	s->fd = -1;
	s->rec = NULL;
	s->family = family;
	s->type = type;
	s->protocol = protocol;
	s->listening = 0;
	s->connected = 0;
	s->lst = NULL;
	luaL_setmetatable(L, LW_SOCKET);
	int err;
	weft_fd_t *rec = weft_worker_open_fd(S->w, fd, &err);
	if (!rec) {
		weft_sock_close(fd);
		return lw_error(L, err);
	}
	s->fd = fd;
	s->rec = rec;
	return 1;
}

static int new_socket(lua_State *L, int type, int defproto)
{
	lw_state_t *S = lw_S(L);
	int family = lw_family_value(L, 1, AF_INET);
	int protocol = lw_protocol_value(L, 2, 0);
	if (type == SOCK_RAW && protocol == 0)
		protocol = family == AF_INET6 ? IPPROTO_ICMPV6 : defproto;
	int fd = weft_sock_open(family, type, protocol);
	if (fd < 0)
		return lw_error(L, fd);
	if (protocol == 0)
		protocol = defproto;
	return push_sock(L, S, fd, family, type, protocol);
}

static int l_tcp(lua_State *L)
{
	return new_socket(L, SOCK_STREAM, IPPROTO_TCP);
}

static int l_udp(lua_State *L)
{
	return new_socket(L, SOCK_DGRAM, IPPROTO_UDP);
}

static int l_raw(lua_State *L)
{
	return new_socket(L, SOCK_RAW, IPPROTO_ICMP);
}

/* s:close() -> true.  Idempotent; also __gc and __close. */
static int s_close(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lsock_t *s = checksock(L, 1);
	if (s->lst) {
		/* Waiters of this socket wake with "closed"; the listening socket
		 * itself closes with its last user (other workers may share it). */
		if (!S->closed)
			weft_listener_release(s->lst, S->w, s);
		s->lst = NULL;
		s->fd = -1;
	} else if (s->fd >= 0) {
		if (S->closed)
			weft_sock_close(s->fd); /* the worker is gone: only the fd is left */
		else
			weft_worker_close_fd(S->w, s->rec);
		s->fd = -1;
		s->rec = NULL;
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* At most this much unread input is discarded by a graceful close. */
#define DRAIN_MAX (256 * 1024)

/* __gc: a socket the program let go of (or every socket, when the state
 * closes at exit) is closed gracefully.  Closing a TCP connection with
 * unread input makes the kernel send RST, which throws away what send()
 * had already accepted and not yet delivered; so the unread input is
 * read and dropped first (a bounded amount, without waiting), and the
 * close sends FIN after the pending data.  An explicit close keeps the
 * sock API's meaning (RST when input is unread). */
static int s_gc(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	if (s->fd >= 0 && !s->lst && s->type == SOCK_STREAM && s->connected) {
		char scratch[4096];
		size_t total = 0;
		while (total < DRAIN_MAX) {
			ssize_t n = weft_sock_recv(s->fd, scratch, sizeof scratch, 0);
			if (n <= 0)
				break;
			total += (size_t)n;
		}
	}
	return s_close(L);
}

static int s_type(lua_State *L)
{
	lua_pushstring(L, lw_type_name(checksock(L, 1)->type));
	return 1;
}

static int s_family(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	const char *n = lw_family_name(s->family);
	if (n)
		lua_pushstring(L, n);
	else
		lua_pushinteger(L, s->family);
	return 1;
}

static int s_protocol(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	const char *n = lw_protocol_name(s->protocol);
	if (n)
		lua_pushstring(L, n);
	else
		lua_pushinteger(L, s->protocol);
	return 1;
}

static int s_fileno(lua_State *L)
{
	lua_pushinteger(L, checksock(L, 1)->fd);
	return 1;
}

static int ok_or_error(lua_State *L, int rc)
{
	if (rc < 0)
		return lw_error(L, rc);
	lua_pushboolean(L, 1);
	return 1;
}

#define CHECK_OPEN(L, s)                                                                           \
	do {                                                                                       \
		if ((s)->fd < 0)                                                                   \
			return lw_error((L), WEFT_ECLOSED);                                        \
	} while (0)

/* s:_bind(addr) */
static int s_bind(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	unsigned len;
	const struct sockaddr *sa = lw_checkaddr(L, 2, &len, NULL);
	CHECK_OPEN(L, s);
	return ok_or_error(L, weft_sock_bind(s->fd, sa, len));
}

/* s:_listen(backlog, addr | nil) */
static int s_listen(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lsock_t *s = checktype(L, 1, SOCK_STREAM, "listen");
	/* 0, nil or anything beyond INT_MAX (1/0 included) = the system
	 * maximum: the kernel caps at somaxconn. */
	lua_Number nb = luaL_optnumber(L, 2, 0);
	luaL_argcheck(L, nb == nb, 1, "backlog is NaN");
	int backlog = nb <= 0 || nb >= (lua_Number)INT_MAX ? INT_MAX : (int)nb;
	CHECK_OPEN(L, s);
	if (s->lst)
		return lw_error(L, -EINVAL);
	unsigned len = 0;
	const struct sockaddr *sa = NULL;
	if (!lua_isnoneornil(L, 3))
		sa = lw_checkaddr(L, 3, &len, NULL);
	/* Workers listening on the same address share one socket (see
	 * lib/listener.h); this socket's own fd is then closed. */
	weft_listener_t *l;
	int rc = weft_listener_listen(S->w, s->rec, sa, len, backlog, &l);
	if (rc < 0)
		return lw_error(L, rc);
	s->lst = l;
	s->rec = NULL;
	s->fd = weft_listener_fd(l);
	s->listening = 1;
	lua_pushboolean(L, 1);
	return 1;
}

/* s:bound() -> whether the socket has a local address (for weft.lua) */
static int s_bound(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	socklen_t len = sizeof ss;
	int bound = 0;
	/* A unix socket is bound once it has a name: more than the family. */
	if (s->fd >= 0 && getsockname(s->fd, (struct sockaddr *)&ss, &len) == 0)
		bound = ss.ss_family == AF_UNIX ? (size_t)len > offsetof(struct sockaddr_un, sun_path)
						: weft_sa_port((struct sockaddr *)&ss) != 0;
	lua_pushboolean(L, bound);
	return 1;
}

/* ------------------------------------------------------------------ */
/* Waiting */

/* After EAGAIN in direction dir: 1 = retry now, 0 = the caller must
 * `return lw_await(...)`, < 0 = fail with that code. */
static int io_wait(lua_State *L, lw_state_t *S, lsock_t *s, int dir, uint64_t deadline)
{
	uint32_t slot = lw_waiter(L, S);
	if (!s->rec)
		return -EINVAL; /* a listening socket: only accept waits on it */
	if (deadline != UINT64_MAX && weft_clock_ns() >= deadline)
		return WEFT_ETIMEOUT;
	return weft_worker_wait_io(S->w, slot, s->rec, dir, deadline);
}

/* The wake-up code when resumed (status LUA_YIELD), else 0; and whether
 * the socket is still open. */
static int resumed(lua_State *L, int status, lsock_t *s)
{
	int code = status == LUA_YIELD ? lw_wakecode(L) : 0;
	if (code >= 0 && s->fd < 0)
		code = WEFT_ECLOSED;
	return code;
}

/* The start of a continuation: the socket, or NULL when woken with an
 * error or closed, with nil, err pushed, and for a call that reports how
 * far it got (partial), done as the third value (*nret values). */
static lsock_t *resume_io(lua_State *L, int status, int partial, size_t done, int *nret)
{
	lsock_t *s = known_sock(L);
	int code = resumed(L, status, s);
	if (code >= 0)
		return s;
	*nret = partial ? lw_error_partial(L, code, (lua_Integer)done) : lw_error(L, code);
	return NULL;
}

/* For ltls.c, which does its I/O on a TCP socket's fd and waits on it the
 * same way. */
lsock_t *lw_checktcp(lua_State *L, int idx)
{
	return checktype(L, idx, SOCK_STREAM, "this call");
}

lsock_t *lw_totcp(lua_State *L, int idx)
{
	lsock_t *s = lw_testclass(L, idx, &lw_tag_socket);
	return s && s->type == SOCK_STREAM ? s : NULL;
}

int lw_sock_fd(const lsock_t *s)
{
	return s->rec ? s->fd : -1;
}

int lw_sock_wait(lua_State *L, lw_state_t *S, lsock_t *s, int dir, uint64_t deadline)
{
	return io_wait(L, S, s, dir, deadline);
}

/* Whether a short read of s shows that the kernel's buffer is empty: on
 * TCP it does (one stops early only at an urgent mark, which the poller
 * reports: see lib/fdtab.h), not on datagram or Unix sockets. */
static int drains(const lsock_t *s)
{
	return s->type == SOCK_STREAM && (s->family == AF_INET || s->family == AF_INET6);
}

/* Try an I/O call in direction dir unless it is known to fail (lib/fdtab.h:
 * readiness tracking); *edges gets the edge count to pass to
 * weft_fd_drained if it found nothing. */
static int worth_trying(lsock_t *s, int dir, uint32_t *edges)
{
	if (!s->rec)
		return 1;
	*edges = weft_fd_edges(s->rec, dir);
	return !weft_fd_idle(s->rec, dir);
}

static void drained(lsock_t *s, int dir, uint32_t edges)
{
	if (s->rec)
		weft_fd_drained(s->rec, dir, edges);
}

/* Continuations that return what was saved before a fairness yield (also
 * for ltls.c). */
int lw_return_true_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_wakecode(L);
	lua_pushboolean(L, 1);
	return 1;
}

int lw_return_ctx_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_wakecode(L);
	lua_pushinteger(L, (lua_Integer)ctx);
	return 1;
}

/* Returns the value left at the top of the stack before the yield. */
static int return_top_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_wakecode(L);
	return 1;
}

/* ------------------------------------------------------------------ */
/* connect */

/* s:_connect(addr, [expires]) */
static int connect_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	int nret;
	lsock_t *s = resume_io(L, status, 0, 0, &nret);
	if (!s)
		return nret;
	uint64_t deadline = lw_deadline(L, 3);
	for (;;) {
		int rc;
		if (ctx == 0) {
			unsigned len;
			const struct sockaddr *sa = lw_checkaddr(L, 2, &len, NULL);
			rc = weft_sock_connect(s->fd, sa, len);
			if (rc == -EINPROGRESS) {
				ctx = 1;
				rc = -EAGAIN;
			}
		} else {
			/* In progress: SO_ERROR tells a failure; getpeername tells
			 * whether the handshake completed (a readiness edge can
			 * be left over from before the connect). */
			rc = weft_sock_connect_result(s->fd);
			if (rc == 0) {
				struct sockaddr_storage ss;
				socklen_t len = sizeof ss;
				if (getpeername(s->fd, (struct sockaddr *)&ss, &len) < 0)
					rc = errno == ENOTCONN ? -EAGAIN : -errno;
			}
		}
		if (rc == 0) {
			s->connected = s->type == SOCK_STREAM;
			if (s->rec)
				weft_fd_connected(s->rec);
			lua_pushboolean(L, 1);
			return 1;
		}
		if (rc != -EAGAIN)
			return lw_error(L, rc);
		rc = io_wait(L, S, s, WEFT_WRITE, deadline);
		if (rc < 0)
			return lw_error(L, rc);
		if (rc == 0)
			return lw_await(L, ctx, connect_k);
	}
}

static int s_connect(lua_State *L)
{
	lw_waiter(L, lw_S(L)); /* I/O runs inside weft threads only */
	lsock_t *s = checksock(L, 1);
	lw_checkaddr(L, 2, &(unsigned){0}, NULL);
	CHECK_OPEN(L, s);
	/* Linux answers a second connect() on a connected TCP socket with 0
	 * once (after a non-blocking connect) before EISCONN: say it plainly. */
	if (s->connected)
		return lw_error(L, -EISCONN);
	lua_settop(L, 3);
	return connect_k(L, LUA_OK, 0);
}

/* udp:_disconnect(): back to unfiltered mode */
static int s_disconnect(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	CHECK_OPEN(L, s);
	struct sockaddr sa = {.sa_family = AF_UNSPEC};
	return ok_or_error(L, weft_sock_connect(s->fd, &sa, sizeof sa));
}

/* ------------------------------------------------------------------ */
/* accept */

/* Connections come from the listener's queue (filled by whichever worker
 * harvests the listener's events); ctx is the seq of our wait, needed to
 * withdraw from the listener when the deadline passes. */
static int accept_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	lsock_t *s = known_sock(L);
	int code = status == LUA_YIELD ? lw_wakecode(L) : 0;
	if (code == WEFT_ETIMEOUT && s->lst)
		weft_listener_cancel(s->lst, S->w, lw_waiter(L, S), (uint32_t)ctx);
	if (code >= 0 && !s->lst)
		code = s->fd < 0 ? WEFT_ECLOSED : -EINVAL; /* closed, or never listened */
	if (code < 0)
		return lw_error(L, code);
	uint64_t deadline = lw_deadline(L, 2);
	uint32_t slot = lw_waiter(L, S);
	/* Woken: the connection handed to this wait, if any; then the queue
	 * without registering; then registered as a waiter (a connection
	 * queued in between is taken by that call). */
	int fd = status == LUA_YIELD ? weft_listener_claim(s->lst, S->w, slot, (uint32_t)ctx)
				     : -EAGAIN;
	if (fd == -EAGAIN)
		fd = weft_listener_take(s->lst, S->w, slot, 0, NULL);
	uint32_t seq = 0;
	if (fd == -EAGAIN) {
		if (deadline != UINT64_MAX && weft_clock_ns() >= deadline)
			return lw_error(L, WEFT_ETIMEOUT);
		seq = weft_worker_wait_ext_until(S->w, slot, deadline);
		fd = weft_listener_take(s->lst, S->w, slot, seq, s);
		if (fd == -EAGAIN)
			return lw_await(L, (lua_KContext)seq, accept_k);
		weft_worker_wait_abort(S->w, slot);
	}
	if (fd < 0)
		return lw_error(L, fd);
	int n = push_sock(L, S, fd, s->family, s->type, s->protocol);
	if (n == 1)
		((lsock_t *)lua_touserdata(L, -1))->connected = 1;
	if (n == 1 && lw_fair(L, S))
		return lw_fair_yield(L, S, 0, return_top_k);
	return n;
}

/* tcp:accept([expires]) -> client */
static int s_accept(lua_State *L)
{
	lw_waiter(L, lw_S(L)); /* I/O runs inside weft threads only */
	lsock_t *s = checktype(L, 1, SOCK_STREAM, "accept");
	CHECK_OPEN(L, s);
	lua_settop(L, 2);
	return accept_k(L, LUA_OK, 0);
}

/* ------------------------------------------------------------------ */
/* send */

/* The bytes to send: data at idx, optional len at idx+1.  `known`: the
 * data's type was checked already (see known_sock). */
static const char *send_args_(lua_State *L, int idx, size_t *len, int known);

const char *lw_send_args(lua_State *L, int idx, size_t *len)
{
	return send_args_(L, idx, len, 0);
}

static const char *send_args_(lua_State *L, int idx, size_t *len, int known)
{
	size_t n;
	const char *p = known ? lw_bytes_known(L, idx, &n) : lw_checkbytes(L, idx, &n);
	if (!lua_isnoneornil(L, idx + 1)) {
		lua_Integer l = luaL_checkinteger(L, idx + 1);
		luaL_argcheck(L, l >= 0 && (lua_Unsigned)l <= n, idx + 1,
			      "length out of range");
		n = (size_t)l;
	}
	*len = n;
	return p;
}

/* tcp:send(data, [len], [expires]) -> true | nil, err, sent
 *
 * The loop takes the bytes as checked by its caller: s_send on the first
 * call, tcp_send_k after a wake-up (the arguments are parsed once per
 * entry, not again for the first try). */
static int tcp_send_k(lua_State *L, int status, lua_KContext ctx);

static int tcp_send_loop(lua_State *L, lw_state_t *S, lsock_t *s, const char *p, size_t len,
			 size_t sent, uint64_t deadline)
{
	while (sent < len) {
		uint32_t edges = 0;
		ssize_t n = -EAGAIN;
		if (worth_trying(s, WEFT_WRITE, &edges))
			n = weft_sock_send(s->fd, p + sent, len - sent, 0);
		if (n >= 0) {
			sent += (size_t)n;
			if (sent == len) {
				if (s->rec)
					weft_fd_undrain(s->rec, WEFT_WRITE);
				break;
			}
			/* A short write filled the buffer: wait for room rather
			 * than try again at once. */
		} else if (n != -EAGAIN) {
			return lw_error_partial(L, (int)n, (lua_Integer)sent);
		}
		drained(s, WEFT_WRITE, edges);
		int rc = io_wait(L, S, s, WEFT_WRITE, deadline);
		if (rc < 0)
			return lw_error_partial(L, rc, (lua_Integer)sent);
		if (rc == 0)
			return lw_await(L, (lua_KContext)sent, tcp_send_k);
	}
	if (len && lw_fair(L, S))
		return lw_fair_yield(L, S, 0, lw_return_true_k);
	lua_pushboolean(L, 1);
	return 1;
}

static int tcp_send_k(lua_State *L, int status, lua_KContext ctx)
{
	int nret;
	lsock_t *s = resume_io(L, status, 1, (size_t)ctx, &nret);
	if (!s)
		return nret;
	size_t len;
	const char *p = send_args_known(L, 2, &len);
	return tcp_send_loop(L, lw_S(L), s, p, len, (size_t)ctx, lw_deadline(L, 4));
}

/* Datagram sends (send and sendto on udp and raw sockets), which send
 * all or nothing: try, on EAGAIN wait for room until the deadline at
 * argument expires_idx, then try again from the continuation `self`. */
typedef ssize_t (*dgram_fn)(lua_State *L, lsock_t *s);

static int dgram_op(lua_State *L, int status, int expires_idx, dgram_fn fn, lua_KFunction self)
{
	lw_state_t *S = lw_S(L);
	int nret;
	lsock_t *s = resume_io(L, status, 0, 0, &nret);
	if (!s)
		return nret;
	uint64_t deadline = lw_deadline(L, expires_idx);
	for (;;) {
		uint32_t edges = 0;
		ssize_t n = worth_trying(s, WEFT_WRITE, &edges) ? fn(L, s) : -EAGAIN;
		if (n >= 0) {
			if (lw_fair(L, S))
				return lw_fair_yield(L, S, (lua_KContext)n, lw_return_ctx_k);
			lua_pushinteger(L, (lua_Integer)n);
			return 1;
		}
		if (n != -EAGAIN)
			return lw_error(L, (int)n);
		drained(s, WEFT_WRITE, edges);
		int rc = io_wait(L, S, s, WEFT_WRITE, deadline);
		if (rc < 0)
			return lw_error(L, rc);
		if (rc == 0)
			return lw_await(L, 0, self);
	}
}

/* udp/raw:send(data, [len], [expires]) -> len */
static ssize_t dgram_send(lua_State *L, lsock_t *s)
{
	size_t len;
	const char *p = send_args_known(L, 2, &len);
	return weft_sock_send(s->fd, p, len, 0);
}

static int dgram_send_k(lua_State *L, int status, lua_KContext ctx)
{
	return dgram_op(L, status, 4, dgram_send, dgram_send_k);
}

/* Arguments past the last one a waiting method reads are dropped, so that
 * its continuation finds its own at the same indices; missing ones read
 * as none, which every argument check takes for nil. */
static void trim_args(lua_State *L, int n)
{
	if (lua_gettop(L) > n)
		lua_settop(L, n);
}

static int s_send(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lw_waiter(L, S); /* I/O runs inside weft threads only */
	lsock_t *s = checksock(L, 1);
	size_t len;
	const char *p = send_args(L, 2, &len);
	uint64_t deadline = lw_deadline(L, 4);
	CHECK_OPEN(L, s);
	trim_args(L, 4);
	if (s->type == SOCK_STREAM)
		return tcp_send_loop(L, S, s, p, len, 0, deadline);
	return dgram_send_k(L, LUA_OK, 0);
}

/* udp:_sendto(addr, data, [len], [expires]) -> len */
static ssize_t dgram_sendto(lua_State *L, lsock_t *s)
{
	unsigned salen;
	const struct sockaddr *sa = lw_checkaddr(L, 2, &salen, NULL);
	size_t len;
	const char *p = send_args_known(L, 3, &len);
	return weft_sock_sendto(s->fd, p, len, 0, sa, salen);
}

static int sendto_k(lua_State *L, int status, lua_KContext ctx)
{
	return dgram_op(L, status, 5, dgram_sendto, sendto_k);
}

static int s_sendto(lua_State *L)
{
	lw_waiter(L, lw_S(L)); /* I/O runs inside weft threads only */
	lsock_t *s = checksock(L, 1);
	if (s->type == SOCK_STREAM)
		return luaL_error(L, "weft: sendto is for udp and raw sockets");
	lw_checkaddr(L, 2, &(unsigned){0}, NULL);
	size_t len;
	send_args(L, 3, &len);
	CHECK_OPEN(L, s);
	lua_settop(L, 5);
	return sendto_k(L, LUA_OK, 0);
}

/* ------------------------------------------------------------------ */
/* recv */

/* The buffer target at idx with maxlen at idx+1 (default: all of it). */
static char *recv_args_(lua_State *L, int idx, size_t *maxlen, int known);

char *lw_recv_args(lua_State *L, int idx, size_t *maxlen)
{
	return recv_args_(L, idx, maxlen, 0);
}

static char *recv_args_(lua_State *L, int idx, size_t *maxlen, int known)
{
	size_t n;
	char *p = known ? lw_buffer_bytes_known(L, idx, &n) : lw_buffer_bytes(L, idx, &n);
	if (!lua_isnoneornil(L, idx + 1)) {
		lua_Integer m = luaL_checkinteger(L, idx + 1);
		luaL_argcheck(L, m >= 0 && (lua_Unsigned)m <= n, idx + 1,
			      "length out of range (larger than the buffer?)");
		n = (size_t)m;
	}
	*maxlen = n;
	return p;
}

/* s:recv(buf, [maxlen], [expires]) -> n
 *
 * One recv into p[0, maxlen) with readiness tracking, waiting if need be:
 * the count (0: end of stream on TCP), a negative code, or LW_WAITING when
 * a wait was registered and the caller must yield with lw_await.  For
 * s:recv and the Copas reader. */
ssize_t lw_sock_recv(lua_State *L, lw_state_t *S, lsock_t *s, char *p, size_t maxlen,
		     uint64_t deadline)
{
	if (s->fd < 0)
		return WEFT_ECLOSED;
	for (;;) {
		uint32_t edges = 0;
		ssize_t n = -EAGAIN;
		if (worth_trying(s, WEFT_READ, &edges))
			n = weft_sock_recv(s->fd, p, maxlen, 0);
		if (n >= 0) {
			if (s->rec && drains(s)) {
				if (n > 0 && (size_t)n < maxlen)
					weft_fd_drained(s->rec, WEFT_READ, edges);
				else
					weft_fd_undrain(s->rec, WEFT_READ);
			}
			return n;
		}
		if (n != -EAGAIN)
			return n;
		drained(s, WEFT_READ, edges);
		int rc = io_wait(L, S, s, WEFT_READ, deadline);
		if (rc <= 0)
			return rc < 0 ? rc : LW_WAITING;
	}
}

/* The recv loop, on the target as checked by its caller (s_recv on the
 * first call, recv_k after a wake-up). */
static int recv_k(lua_State *L, int status, lua_KContext ctx);

static int recv_loop(lua_State *L, lw_state_t *S, lsock_t *s, char *p, size_t maxlen,
		     uint64_t deadline)
{
	ssize_t n = lw_sock_recv(L, S, s, p, maxlen, deadline);
	if (n == LW_WAITING)
		return lw_await(L, 0, recv_k);
	if (n < 0)
		return lw_error(L, (int)n);
	if (lw_fair(L, S))
		return lw_fair_yield(L, S, (lua_KContext)n, lw_return_ctx_k);
	lua_pushinteger(L, (lua_Integer)n);
	return 1;
}

static int recv_k(lua_State *L, int status, lua_KContext ctx)
{
	(void)ctx;
	int nret;
	lsock_t *s = resume_io(L, status, 0, 0, &nret);
	if (!s)
		return nret;
	size_t maxlen;
	char *p = recv_args_known(L, 2, &maxlen);
	return recv_loop(L, lw_S(L), s, p, maxlen, lw_deadline(L, 4));
}

static int s_recv(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lw_waiter(L, S); /* I/O runs inside weft threads only */
	lsock_t *s = checksock(L, 1);
	size_t maxlen;
	char *p = recv_args(L, 2, &maxlen);
	/* On TCP a 0 from recv means end of stream: asking for 0 bytes would
	 * wait for data and then read as the peer having closed. */
	if (maxlen == 0 && s->type == SOCK_STREAM)
		return luaL_argerror(L, lua_isnoneornil(L, 3) ? 2 : 3,
				     "tcp recv needs room for at least 1 byte");
	uint64_t deadline = lw_deadline(L, 4);
	CHECK_OPEN(L, s);
	trim_args(L, 4);
	return recv_loop(L, S, s, p, maxlen, deadline);
}

/* tcp:recvn(buf, len, [expires]) -> buf, len | nil, err, got */
static int recvn_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	size_t got = (size_t)ctx;
	int nret;
	lsock_t *s = resume_io(L, status, 1, got, &nret);
	if (!s)
		return nret;
	size_t len;
	char *p = recv_args_known(L, 2, &len);
	uint64_t deadline = lw_deadline(L, 4);
	while (got < len) {
		uint32_t edges = 0;
		ssize_t n = -EAGAIN;
		if (worth_trying(s, WEFT_READ, &edges))
			n = weft_sock_recv(s->fd, p + got, len - got, 0);
		if (n > 0) {
			got += (size_t)n;
			if (got < len && drains(s))
				drained(s, WEFT_READ, edges); /* the next try waits first */
			else if (s->rec)
				weft_fd_undrain(s->rec, WEFT_READ);
			continue;
		}
		if (n == 0)
			return lw_error_partial(L, WEFT_EEOF, (lua_Integer)got);
		if (n != -EAGAIN)
			return lw_error_partial(L, (int)n, (lua_Integer)got);
		drained(s, WEFT_READ, edges);
		int rc = io_wait(L, S, s, WEFT_READ, deadline);
		if (rc < 0)
			return lw_error_partial(L, rc, (lua_Integer)got);
		if (rc == 0)
			return lw_await(L, (lua_KContext)got, recvn_k);
	}
	lua_settop(L, 2);
	lua_pushinteger(L, (lua_Integer)len);
	return 2;
}

static int s_recvn(lua_State *L)
{
	lw_waiter(L, lw_S(L)); /* I/O runs inside weft threads only */
	lsock_t *s = checktype(L, 1, SOCK_STREAM, "recvn");
	size_t len;
	luaL_checkinteger(L, 3);
	recv_args(L, 2, &len);
	CHECK_OPEN(L, s);
	lua_settop(L, 4);
	return recvn_k(L, LUA_OK, 0);
}

/* The limit argument of recvall: bytes, or no limit (also for ltls.c). */
size_t lw_recvall_limit(lua_State *L, int idx)
{
	if (lua_isnoneornil(L, idx))
		return SIZE_MAX - 1;
	lua_Integer n = luaL_checkinteger(L, idx);
	luaL_argcheck(L, n >= 0, idx, "limit must be >= 0");
	return (lua_Unsigned)n >= SIZE_MAX - 1 ? SIZE_MAX - 1 : (size_t)n;
}

/* Before each read of recvall (TCP and TLS): 0 with room for 16 KiB more
 * in b, grown by doubling but never past limit + 1 bytes (one byte beyond
 * the limit tells that the peer sent too much); WEFT_ETOOLARGE with *got
 * cut to the limit once more than that arrived; WEFT_ENOMEM. */
int lw_recvall_room(lw_buffer_t *b, size_t *got, size_t limit)
{
	if (*got > limit) {
		*got = limit;
		return WEFT_ETOOLARGE;
	}
	if (b->len - *got < 16384 && b->len <= limit) {
		size_t want = b->len < 65536 ? 65536 : b->len * 2;
		if (want > limit + 1)
			want = limit + 1;
		if (lw_buffer_resize(b, want) < 0)
			return WEFT_ENOMEM;
	}
	return 0;
}

/* tcp:recvall([expires], [limit]) -> buf, len | nil, err, buf, len.  The
 * growing buffer sits at index 4.  It never grows past limit + 1 bytes:
 * one byte beyond the limit tells that the peer sent too much. */
static int recvall_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	lsock_t *s = known_sock(L);
	size_t got = (size_t)ctx;
	lw_buffer_t *b = lua_touserdata(L, 4);
	int code = resumed(L, status, s);
	uint64_t deadline = lw_deadline(L, 2);
	size_t limit = lw_recvall_limit(L, 3);
	while (code >= 0) {
		if ((code = lw_recvall_room(b, &got, limit)) < 0)
			break;
		uint32_t edges = 0;
		size_t want = b->len - got;
		ssize_t n = -EAGAIN;
		if (worth_trying(s, WEFT_READ, &edges))
			n = weft_sock_recv(s->fd, b->data + got, want, 0);
		if (n > 0) {
			got += (size_t)n;
			if ((size_t)n < want && drains(s))
				drained(s, WEFT_READ, edges);
			else if (s->rec)
				weft_fd_undrain(s->rec, WEFT_READ);
			continue;
		}
		if (n == 0) {
			lw_buffer_resize(b, got);
			lua_pushinteger(L, (lua_Integer)got);
			return 2;
		}
		if (n != -EAGAIN) {
			code = (int)n;
			break;
		}
		drained(s, WEFT_READ, edges);
		int rc = io_wait(L, S, s, WEFT_READ, deadline);
		if (rc == 0)
			return lw_await(L, (lua_KContext)got, recvall_k);
		if (rc < 0)
			code = rc;
	}
	lw_buffer_resize(b, got);
	lw_error(L, code);
	lua_pushvalue(L, 4);
	lua_pushinteger(L, (lua_Integer)got);
	return 4;
}

static int s_recvall(lua_State *L)
{
	lw_waiter(L, lw_S(L)); /* I/O runs inside weft threads only */
	lsock_t *s = checktype(L, 1, SOCK_STREAM, "recvall");
	lw_recvall_limit(L, 3);
	CHECK_OPEN(L, s);
	lua_settop(L, 3);
	lw_buffer_push(L, NULL, 0);
	return recvall_k(L, LUA_OK, 0);
}

/* udp:recvnext(buf, [maxlen], [expires], [flags]) -> len, sa */
static int recvnext_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	int nret;
	lsock_t *s = resume_io(L, status, 0, 0, &nret);
	if (!s)
		return nret;
	size_t maxlen;
	char *p = recv_args_known(L, 2, &maxlen);
	uint64_t deadline = lw_deadline(L, 4);
	int flags = (int)luaL_optinteger(L, 5, 0);
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t salen = sizeof ss;
		uint32_t edges = 0;
		ssize_t n = -EAGAIN;
		/* MSG_PEEK and friends: always asked of the kernel. */
		if (flags != 0 || worth_trying(s, WEFT_READ, &edges))
			n = weft_sock_recvfrom(s->fd, p, maxlen, flags, (struct sockaddr *)&ss,
					       &salen);
		if (n >= 0) {
			lua_pushinteger(L, (lua_Integer)n);
			lw_sockaddr_push(L, (struct sockaddr *)&ss, salen);
			return 2;
		}
		if (n != -EAGAIN)
			return lw_error(L, (int)n);
		if (flags == 0)
			drained(s, WEFT_READ, edges);
		int rc = io_wait(L, S, s, WEFT_READ, deadline);
		if (rc < 0)
			return lw_error(L, rc);
		if (rc == 0)
			return lw_await(L, 0, recvnext_k);
	}
}

static int s_recvnext(lua_State *L)
{
	lw_waiter(L, lw_S(L)); /* I/O runs inside weft threads only */
	lsock_t *s = checksock(L, 1);
	if (s->type == SOCK_STREAM)
		return luaL_error(L, "weft: recvnext is for udp and raw sockets");
	size_t maxlen;
	recv_args(L, 2, &maxlen);
	luaL_optinteger(L, 5, 0);
	CHECK_OPEN(L, s);
	lua_settop(L, 5);
	return recvnext_k(L, LUA_OK, 0);
}

/* tcp:shutdown('r' | 'w' | 'rw') */
static int s_shutdown(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	static const char *const names[] = {"r", "w", "rw", NULL};
	static const int hows[] = {SHUT_RD, SHUT_WR, SHUT_RDWR};
	int how = hows[luaL_checkoption(L, 2, "rw", names)];
	CHECK_OPEN(L, s);
	if (s->rec) {
		weft_fd_undrain(s->rec, WEFT_READ);
		weft_fd_undrain(s->rec, WEFT_WRITE);
	}
	return ok_or_error(L, weft_sock_shutdown(s->fd, how));
}

/* ------------------------------------------------------------------ */
/* Options */

static const weft_sockopt_t *checkopt(lua_State *L, int idx)
{
	const char *name = luaL_checkstring(L, idx);
	const weft_sockopt_t *o = weft_sockopt_find(name);
	if (!o)
		luaL_argerror(L, idx, lua_pushfstring(L, "unknown socket option '%s'", name));
	return o;
}

/* s:setopt(name, value) -> true | nil, err */
static int s_setopt(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	const weft_sockopt_t *o = checkopt(L, 2);
	if (o->readonly)
		return luaL_error(L, "weft: socket option '%s' is read-only", o->name);
	int rc;
	switch (o->kind) {
	case WEFT_OPT_BOOL: {
		/* A boolean, or a number as C has it: 0 is off. */
		int v;
		if (lua_type(L, 3) == LUA_TNUMBER)
			v = lua_tonumber(L, 3) != 0;
		else if (lua_type(L, 3) == LUA_TBOOLEAN)
			v = lua_toboolean(L, 3);
		else
			return luaL_typeerror(L, 3, "boolean or number");
		CHECK_OPEN(L, s);
		rc = weft_sockopt_set_int(s->fd, o, v);
		break;
	}
	case WEFT_OPT_TIME: {
		lua_Number t = luaL_checknumber(L, 3);
		luaL_argcheck(L, t >= 0 && t <= 1e9, 3, "seconds out of range");
		CHECK_OPEN(L, s);
		rc = weft_sockopt_set_time(s->fd, o, (double)t);
		break;
	}
	case WEFT_OPT_LINGER: {
		int v = -1;
		if (lua_type(L, 3) == LUA_TNUMBER) {
			lua_Integer n = luaL_checkinteger(L, 3);
			luaL_argcheck(L, n >= 0 && n <= INT_MAX, 3, "seconds out of range");
			v = (int)n;
		} else if (lua_toboolean(L, 3)) {
			return luaL_typeerror(L, 3, "number or false");
		}
		CHECK_OPEN(L, s);
		rc = weft_sockopt_set_int(s->fd, o, v);
		break;
	}
	case WEFT_OPT_STRING: {
		size_t len;
		const char *v = luaL_checklstring(L, 3, &len);
		CHECK_OPEN(L, s);
		rc = weft_sockopt_set_str(s->fd, o, v, len);
		break;
	}
	default: {
		lua_Integer n = luaL_checkinteger(L, 3);
		luaL_argcheck(L, n >= INT_MIN && n <= INT_MAX, 3, "out of range");
		CHECK_OPEN(L, s);
		rc = weft_sockopt_set_int(s->fd, o, (int)n);
		break;
	}
	}
	return ok_or_error(L, rc);
}

static void set_field(void *ud, const char *name, long long value)
{
	lua_State *L = ud;
	lua_pushinteger(L, (lua_Integer)value);
	lua_setfield(L, -2, name);
}

/* The read-only structures, as tables. */
static int getopt_struct(lua_State *L, lsock_t *s, const weft_sockopt_t *o)
{
	lua_newtable(L);
	int rc = weft_sockopt_get_fields(s->fd, o, set_field, L);
	if (rc < 0) {
		lua_pop(L, 1);
		return lw_error(L, rc);
	}
	return 1;
}
/* s:getopt(name) -> value | nil, err */
static int s_getopt(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	const weft_sockopt_t *o = checkopt(L, 2);
	CHECK_OPEN(L, s);
	if (o->kind == WEFT_OPT_STRING) {
		char buf[256];
		int rc = weft_sockopt_get_str(s->fd, o, buf, sizeof buf);
		if (rc < 0)
			return lw_error(L, rc);
		lua_pushstring(L, buf);
		return 1;
	}
	if (o->kind == WEFT_OPT_TIME) {
		double t;
		int rc = weft_sockopt_get_time(s->fd, o, &t);
		if (rc < 0)
			return lw_error(L, rc);
		lua_pushnumber(L, (lua_Number)t);
		return 1;
	}
	if (o->kind == WEFT_OPT_STRUCT)
		return getopt_struct(L, s, o);
	int v;
	int rc = weft_sockopt_get_int(s->fd, o, &v);
	if (rc < 0)
		return lw_error(L, rc);
	if (o->kind == WEFT_OPT_BOOL)
		lua_pushboolean(L, v);
	else if (o->kind == WEFT_OPT_LINGER && v < 0)
		lua_pushboolean(L, 0);
	else
		lua_pushinteger(L, v);
	return 1;
}

/* ------------------------------------------------------------------ */
/* Fields: local_addr, local_port, remote_addr, remote_port */

/* __index: a method (from the methods table, upvalue 2), or a field. */
static int s_index(lua_State *L)
{
	lua_pushvalue(L, 2);
	if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL)
		return 1;
	lua_pop(L, 1);
	lsock_t *s = checksock(L, 1);
	const char *k = lua_tostring(L, 2);
	if (!k || s->fd < 0)
		return 0;
	int remote;
	if (strncmp(k, "local_", 6) == 0)
		remote = 0;
	else if (strncmp(k, "remote_", 7) == 0)
		remote = 1;
	else
		return 0;
	const char *what = k + (remote ? 7 : 6);
	int port = strcmp(what, "port") == 0;
	if (!port && strcmp(what, "addr") != 0)
		return 0;
	/* Zeroed, with room for a terminating NUL after the longest unix
	 * path, and only `len` bytes of it are the kernel's: an unnamed unix
	 * socket (unbound, or a client accepted from one) reports just the
	 * family. */
	struct {
		struct sockaddr_storage ss;
		char nul;
	} a;
	memset(&a, 0, sizeof a);
	struct sockaddr_storage *ssp = &a.ss;
	socklen_t len = sizeof a.ss;
	int rc = remote ? getpeername(s->fd, (struct sockaddr *)ssp, &len)
			: getsockname(s->fd, (struct sockaddr *)ssp, &len);
	if (rc < 0 || (size_t)len <= offsetof(struct sockaddr, sa_data) ||
	    (ssp->ss_family != AF_INET && ssp->ss_family != AF_INET6 &&
	     ssp->ss_family != AF_UNIX))
		return 0;
	/* An unbound socket reports the wildcard address with port 0. */
	if (!remote && ssp->ss_family != AF_UNIX && weft_sa_port((struct sockaddr *)ssp) == 0)
		return 0;
	if (port) {
		lua_pushinteger(L, weft_sa_port((struct sockaddr *)ssp));
	} else {
		char buf[128];
		const char *ip = weft_sa_ip((struct sockaddr *)ssp, buf, sizeof buf);
		if (!ip)
			return 0;
		lua_pushstring(L, ip);
	}
	return 1;
}

static int s_tostring(lua_State *L)
{
	lsock_t *s = checksock(L, 1);
	if (s->fd < 0)
		lua_pushfstring(L, "weft.%s (closed): %p", lw_type_name(s->type), (void *)s);
	else
		lua_pushfstring(L, "weft.%s (fd %d): %p", lw_type_name(s->type), s->fd, (void *)s);
	return 1;
}

static const luaL_Reg methods[] = {
	{"close", s_close},
	{"type", s_type},
	{"family", s_family},
	{"protocol", s_protocol},
	{"fileno", s_fileno},
	{"_bind", s_bind},
	{"_listen", s_listen},
	{"_connect", s_connect},
	{"_disconnect", s_disconnect},
	{"_sendto", s_sendto},
	{"bound", s_bound},
	{"accept", s_accept},
	{"send", s_send},
	{"recv", s_recv},
	{"recvn", s_recvn},
	{"recvall", s_recvall},
	{"recvnext", s_recvnext},
	{"shutdown", s_shutdown},
	{"setopt", s_setopt},
	{"getopt", s_getopt},
	{NULL, NULL},
};

static const luaL_Reg meta[] = {
	{"__gc", s_gc},
	{"__close", s_close},
	{"__tostring", s_tostring},
	{NULL, NULL},
};

/* weft.core.adopt(fd) -> sock: a weft socket on a duplicate of another
 * library's descriptor (LuaSocket's, for the Copas layer), made
 * non-blocking; the original stays usable by its owner. */
static int l_adopt(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	lua_Integer ofd = luaL_checkinteger(L, 1);
	luaL_argcheck(L, ofd >= 0 && ofd <= INT_MAX, 1, "not a descriptor");
	int type, family, protocol, listening;
	int fd = weft_sock_dup((int)ofd, &family, &type, &protocol, &listening);
	if (fd < 0)
		return lw_error(L, fd);
	int n = push_sock(L, S, fd, family, type, protocol);
	if (n != 1)
		return n;
	if (listening) {
		lua_getfield(L, -1, "_listen");
		lua_pushvalue(L, -2);
		lua_call(L, 1, 2);
		if (lua_isnil(L, -2))
			return 2;
		lua_pop(L, 2);
	} else if (type == SOCK_STREAM) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof ss;
		lsock_t *s = lua_touserdata(L, -1);
		s->connected = getpeername(fd, (struct sockaddr *)&ss, &sl) == 0;
	}
	return 1;
}

static const luaL_Reg funcs[] = {
	{"adopt", l_adopt},
	{"tcp", l_tcp},
	{"udp", l_udp},
	{"raw", l_raw},
	{NULL, NULL},
};

void lw_open_socket(lua_State *L, lw_state_t *S)
{
	/* Methods are found through a C __index so that the address fields
	 * (local_addr, ...) can be computed on demand from the socket. */
	luaL_newmetatable(L, LW_SOCKET);
	lw_register(L, S, meta);
	lua_newtable(L);
	lw_register(L, S, methods);
	lua_pushlightuserdata(L, S);
	lua_pushvalue(L, -2);
	lua_pushcclosure(L, s_index, 2);
	lua_setfield(L, -3, "__index");
	lua_setfield(L, -3, "socket_methods");
	lua_pop(L, 1);
	lw_register(L, S, funcs);
}
