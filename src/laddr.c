/* Address lookup (weft.addr) and the address objects: addrinfo lists
 * (ai), socket addresses (sa) and IP addresses (ip).
 *
 * Numeric addresses are parsed inline.  Names go to the resolver pool and
 * the calling thread waits for the completion like for I/O, so a slow DNS
 * server stalls nobody else. */
#include "config.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "clock.h"
#include "error.h"
#include "lweft.h"
#include "resolver.h"
#include "sock.h"

/* ------------------------------------------------------------------ */
/* Names */

struct lw_name {
	const char *name;
	int value;
};

static const struct lw_name families[] = {{"inet", AF_INET}, {"inet6", AF_INET6}, {"unix", AF_UNIX}, {NULL, 0}},
  types[] = {{"tcp", SOCK_STREAM}, {"udp", SOCK_DGRAM}, {"raw", SOCK_RAW}, {NULL, 0}},
  protocols[] = {{"ip", IPPROTO_IP},   {"ipv6", IPPROTO_IPV6},     {"tcp", IPPROTO_TCP},
		 {"udp", IPPROTO_UDP}, {"raw", IPPROTO_RAW},       {"icmp", IPPROTO_ICMP},
		 {"igmp", IPPROTO_IGMP}, {"icmpv6", IPPROTO_ICMPV6}, {NULL, 0}},
  flags[] = {{"passive", AI_PASSIVE},         {"cannonname", AI_CANONNAME},
	     {"canonname", AI_CANONNAME},     {"numerichost", AI_NUMERICHOST},
	     {"numericserv", AI_NUMERICSERV}, {"all", AI_ALL},
	     {"v4mapped", AI_V4MAPPED},       {"addrconfig", AI_ADDRCONFIG},
	     {NULL, 0}};

#define NAME_OF(table, v)                                                                          \
	for (int i = 0; table[i].name; i++)                                                        \
		if (table[i].value == (v))                                                         \
			return table[i].name;                                                      \
	return NULL

const char *lw_family_name(int family)
{
	NAME_OF(families, family);
}

const char *lw_type_name(int type)
{
	NAME_OF(types, type);
}

const char *lw_protocol_name(int protocol)
{
	NAME_OF(protocols, protocol);
}

static int value_of(lua_State *L, int idx, int def, const char *what,
		    const struct lw_name *table)
{
	if (lua_isnoneornil(L, idx))
		return def;
	if (lua_type(L, idx) == LUA_TNUMBER) {
		lua_Integer v = luaL_checkinteger(L, idx);
		return v == 0 ? def : (int)v;
	}
	const char *s = luaL_checkstring(L, idx);
	for (int i = 0; table[i].name; i++)
		if (strcmp(table[i].name, s) == 0)
			return table[i].value;
	return luaL_argerror(L, idx, lua_pushfstring(L, "unknown %s '%s'", what, s));
}

int lw_family_value(lua_State *L, int idx, int def)
{
	return value_of(L, idx, def, "address family", families);
}

int lw_type_value(lua_State *L, int idx, int def)
{
	return value_of(L, idx, def, "socket type", types);
}

int lw_protocol_value(lua_State *L, int idx, int def)
{
	return value_of(L, idx, def, "protocol", protocols);
}

/* One flag name: its AI_* bit; raises for an unknown name. */
static int flag_bit(lua_State *L, int idx, const char *name, size_t len)
{
	for (int i = 0; flags[i].name; i++)
		if (strlen(flags[i].name) == len && memcmp(flags[i].name, name, len) == 0)
			return flags[i].value;
	return luaL_argerror(L, idx, lua_pushfstring(L, "unknown flag '%s'",
						       lua_pushlstring(L, name, len)));
}

/* Flags as glue.bor() takes them: a number, a string of names separated
 * by spaces, a list of names, or a set {name = true}. */
static int flags_value(lua_State *L, int idx)
{
	if (lua_isnoneornil(L, idx))
		return 0;
	if (lua_type(L, idx) == LUA_TNUMBER)
		return (int)luaL_checkinteger(L, idx);
	if (lua_type(L, idx) == LUA_TSTRING) {
		const char *s = lua_tostring(L, idx);
		int f = 0;
		for (;;) {
			s += strspn(s, " \t");
			size_t n = strcspn(s, " \t");
			if (n == 0)
				return f;
			f |= flag_bit(L, idx, s, n);
			s += n;
		}
	}
	luaL_checktype(L, idx, LUA_TTABLE);
	int f = 0;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		if (lua_type(L, -2) == LUA_TNUMBER) {
			/* list form: {"passive", "numerichost"} */
			size_t n;
			const char *name = lua_tolstring(L, -1, &n);
			if (!name || lua_type(L, -1) != LUA_TSTRING)
				luaL_argerror(L, idx, "flags: list items must be names");
			f |= flag_bit(L, idx, name, n);
		} else if (lua_type(L, -2) == LUA_TSTRING) {
			/* set form: {numerichost = true}; false leaves it out */
			size_t n;
			const char *name = lua_tolstring(L, -2, &n);
			int bit = flag_bit(L, idx, name, n);
			if (lua_toboolean(L, -1))
				f |= bit;
		} else {
			luaL_argerror(L, idx, "flags: keys must be names or list indices");
		}
		lua_pop(L, 1);
	}
	return f;
}

/* ------------------------------------------------------------------ */
/* addrinfo lists */

/* Every ai object (the list and each entry) keeps the list's root object
 * in its user value; freeing empties the root, and entries check it. */
typedef struct lai {
	struct addrinfo *list;  /* root: the list (NULL once freed) */
	struct addrinfo *entry; /* this entry */
	int ours;               /* list built here, not by getaddrinfo */
} lai_t;

static void free_list(struct addrinfo *list, int ours)
{
	if (!list)
		return;
	if (!ours) {
		freeaddrinfo(list);
		return;
	}
	while (list) {
		struct addrinfo *next = list->ai_next;
		weft_free(list);
		list = next;
	}
}

static void push_ai(lua_State *L, struct addrinfo *list, int ours)
{
	lai_t *a = lua_newuserdatauv(L, sizeof *a, 1);
	a->list = list;
	a->entry = list;
	a->ours = ours;
	luaL_setmetatable(L, LW_ADDRINFO);
	lua_pushvalue(L, -1);
	lua_setiuservalue(L, -2, 1);
}

void lw_addrinfo_push(lua_State *L, struct addrinfo *list)
{
	push_ai(L, list, 0);
}

static struct addrinfo *check_entry(lua_State *L, int idx)
{
	lai_t *a = luaL_checkudata(L, idx, LW_ADDRINFO);
	lua_getiuservalue(L, idx, 1);
	lai_t *root = lua_touserdata(L, -1);
	lua_pop(L, 1);
	if (!root || !root->list)
		luaL_error(L, "weft: the address list was freed");
	return a->entry;
}

static int ai_gc(lua_State *L)
{
	lai_t *a = luaL_checkudata(L, 1, LW_ADDRINFO);
	if (a->list == a->entry && a->list) {
		lua_getiuservalue(L, 1, 1);
		int root = lua_touserdata(L, -1) == a;
		lua_pop(L, 1);
		if (root) {
			free_list(a->list, a->ours);
			a->list = NULL;
		}
	}
	return 0;
}

/* ai:free(): frees the whole list (from any of its entries). */
static int ai_free(lua_State *L)
{
	luaL_checkudata(L, 1, LW_ADDRINFO);
	lua_getiuservalue(L, 1, 1);
	lai_t *root = lua_touserdata(L, -1);
	if (root && root->list) {
		free_list(root->list, root->ours);
		root->list = NULL;
	}
	return 0;
}

static int ai_next(lua_State *L)
{
	struct addrinfo *e = check_entry(L, 1);
	if (!e->ai_next)
		return 0;
	lai_t *n = lua_newuserdatauv(L, sizeof *n, 1);
	n->list = NULL;
	n->entry = e->ai_next;
	n->ours = 0;
	luaL_setmetatable(L, LW_ADDRINFO);
	lua_getiuservalue(L, 1, 1);
	lua_setiuservalue(L, -2, 1);
	return 1;
}

/* for-loop step: the first call returns the first entry (the state), the
 * next ones the entry after the previous one. */
static int ai_addrs_iter(lua_State *L)
{
	if (lua_isnil(L, 2)) {
		lua_settop(L, 1);
		return 1;
	}
	lua_settop(L, 2);
	lua_remove(L, 1);
	return ai_next(L);
}

/* ai:addrs() -> iterator over this entry and the following ones */
static int ai_addrs(lua_State *L)
{
	check_entry(L, 1);
	lua_pushcfunction(L, ai_addrs_iter);
	lua_pushvalue(L, 1);
	lua_pushnil(L);
	return 3;
}

static int push_name(lua_State *L, const char *name, int value)
{
	if (name)
		lua_pushstring(L, name);
	else
		lua_pushinteger(L, value);
	return 1;
}

static int ai_type(lua_State *L)
{
	struct addrinfo *e = check_entry(L, 1);
	return push_name(L, lw_type_name(e->ai_socktype), e->ai_socktype);
}

static int ai_family(lua_State *L)
{
	struct addrinfo *e = check_entry(L, 1);
	return push_name(L, lw_family_name(e->ai_family), e->ai_family);
}

static int ai_protocol(lua_State *L)
{
	struct addrinfo *e = check_entry(L, 1);
	int protocol = e->ai_protocol;
	/* Winsock leaves the protocol 0 where glibc names the one the type
	 * implies: name it the same everywhere. */
	if (protocol == 0 && (e->ai_family == AF_INET || e->ai_family == AF_INET6))
		protocol = e->ai_socktype == SOCK_STREAM  ? IPPROTO_TCP
			   : e->ai_socktype == SOCK_DGRAM ? IPPROTO_UDP
							  : 0;
	return push_name(L, lw_protocol_name(protocol), protocol);
}

static int ai_name(lua_State *L)
{
	struct addrinfo *e = check_entry(L, 1);
	if (!e->ai_canonname)
		return 0;
	lua_pushstring(L, e->ai_canonname);
	return 1;
}

static int ai_tostring(lua_State *L)
{
	struct addrinfo *e = check_entry(L, 1);
	char buf[160];
	lua_pushstring(L, weft_sa_tostring(e->ai_addr, buf, sizeof buf));
	return 1;
}

/* ai.addr, or a method */
static int ai_index(lua_State *L)
{
	const char *k = lua_tostring(L, 2);
	if (k && strcmp(k, "addr") == 0) {
		struct addrinfo *e = check_entry(L, 1);
		lw_sockaddr_push(L, e->ai_addr, e->ai_addrlen);
		return 1;
	}
	lua_getmetatable(L, 1);
	lua_getfield(L, -1, "methods");
	lua_pushvalue(L, 2);
	lua_rawget(L, -2);
	return 1;
}

/* ------------------------------------------------------------------ */
/* Socket addresses and IP addresses */

typedef struct lsa {
	socklen_t len;
	struct sockaddr_storage ss;
} lsa_t;

typedef struct lip {
	int family;
	unsigned char bytes[16];
} lip_t;

void lw_sockaddr_push(lua_State *L, const struct sockaddr *sa, size_t len)
{
	lsa_t *s = lua_newuserdatauv(L, sizeof *s, 0);
	memset(s, 0, sizeof *s);
	if (len > sizeof s->ss)
		len = sizeof s->ss;
	memcpy(&s->ss, sa, len);
	s->len = (socklen_t)len;
	luaL_setmetatable(L, LW_SOCKADDR);
}

static lsa_t *check_sa(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, LW_SOCKADDR);
}

const struct sockaddr *lw_checkaddr(lua_State *L, int idx, unsigned *salen, int *socktype)
{
	lsa_t *s = luaL_testudata(L, idx, LW_SOCKADDR);
	if (s) {
		*salen = s->len;
		if (socktype)
			*socktype = 0;
		return (const struct sockaddr *)&s->ss;
	}
	if (!luaL_testudata(L, idx, LW_ADDRINFO))
		luaL_typeerror(L, idx, "address (weft.addr result or sockaddr)");
	struct addrinfo *e = check_entry(L, idx);
	*salen = e->ai_addrlen;
	if (socktype)
		*socktype = e->ai_socktype;
	return e->ai_addr;
}

static int sa_family(lua_State *L)
{
	lsa_t *s = check_sa(L, 1);
	return push_name(L, lw_family_name(s->ss.ss_family), s->ss.ss_family);
}

static int sa_port(lua_State *L)
{
	lua_pushinteger(L, weft_sa_port((struct sockaddr *)&check_sa(L, 1)->ss));
	return 1;
}

static int sa_tostring(lua_State *L)
{
	char buf[160];
	lua_pushstring(L, weft_sa_tostring((struct sockaddr *)&check_sa(L, 1)->ss, buf, sizeof buf));
	return 1;
}

static int sa_addr(lua_State *L)
{
	lsa_t *s = check_sa(L, 1);
	lip_t *ip;
	switch (s->ss.ss_family) {
	case AF_INET:
		ip = lua_newuserdatauv(L, sizeof *ip, 0);
		ip->family = AF_INET;
		memcpy(ip->bytes, &((struct sockaddr_in *)&s->ss)->sin_addr, 4);
		break;
	case AF_INET6:
		ip = lua_newuserdatauv(L, sizeof *ip, 0);
		ip->family = AF_INET6;
		memcpy(ip->bytes, &((struct sockaddr_in6 *)&s->ss)->sin6_addr, 16);
		break;
	default:
		return 0;
	}
	luaL_setmetatable(L, LW_IPADDR);
	return 1;
}

static int ip_tobinary(lua_State *L)
{
	lip_t *ip = luaL_checkudata(L, 1, LW_IPADDR);
	int n = ip->family == AF_INET ? 4 : 16;
	lua_pushlstring(L, (const char *)ip->bytes, (size_t)n);
	lua_pushinteger(L, n);
	return 2;
}

static int ip_tostring(lua_State *L)
{
	lip_t *ip = luaL_checkudata(L, 1, LW_IPADDR);
	char buf[INET6_ADDRSTRLEN];
	inet_ntop(ip->family, ip->bytes, buf, sizeof buf);
	lua_pushstring(L, buf);
	return 1;
}

/* ------------------------------------------------------------------ */
/* weft.addr */

/* Where resolver threads post completions for one state.  It outlives
 * the state while lookups are in flight: closing the state only clears
 * `w` (under the lock), so it never waits for a lookup, and a lookup that
 * finishes later finds nobody to tell.  Each lookup and the state hold a
 * reference. */
struct lw_rtarget {
	weft_mutex_t lock;
	weft_worker_t *w; /* NULL once the state is closed */
	_Atomic long refs;
};

static void target_unref(lw_rtarget_t *t)
{
	if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
		return;
	weft_mutex_destroy(&t->lock);
	weft_free(t);
}

void lw_close_addr(lw_state_t *S)
{
	lw_rtarget_t *t = S->rtarget;
	if (!t)
		return;
	S->rtarget = NULL;
	weft_mutex_lock(&t->lock);
	t->w = NULL;
	weft_mutex_unlock(&t->lock);
	target_unref(t);
}

/* A pooled lookup.  Two parties hold it: the waiting thread (through a
 * holder userdata on its stack, so that a collected thread lets go too)
 * and the resolver thread; the last one frees it. */
typedef struct lreq {
	weft_resolve_t r;
	_Atomic int refs;
	lw_rtarget_t *t;
	uint32_t slot, seq;
} lreq_t;

static void req_unref(lreq_t *q)
{
	if (atomic_fetch_sub_explicit(&q->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (q->r.result)
		freeaddrinfo(q->r.result);
	weft_free(q->r.host);
	weft_free(q->r.service);
	weft_free(q);
}

static const char REQ_META = 'q';

static int holder_gc(lua_State *L)
{
	lreq_t **h = lua_touserdata(L, 1);
	if (*h) {
		req_unref(*h);
		*h = NULL;
	}
	return 0;
}

/* Runs on a resolver thread (or on the thread stopping the pool, for a
 * cancelled lookup). */
static void resolved(weft_resolve_t *r, void *arg)
{
	lreq_t *q = arg;
	lw_rtarget_t *t = q->t;
	weft_msg_t m = {WEFT_MSG_WAKE_QUIET, q->slot, q->seq, 0, NULL};
	/* This is a resolver thread: it can afford to wait for memory rather
	 * than leave the waiter hanging (a lookup may have no deadline).  A
	 * closed state or inbox, or a long shortage, gives up.  The lock is
	 * let go between tries, so closing the state never waits long. */
	for (int tries = 0; tries < 1000; tries++) {
		weft_mutex_lock(&t->lock);
		int rc = t->w ? weft_worker_post(t->w, &m) : WEFT_ECLOSED;
		weft_mutex_unlock(&t->lock);
		if (rc != WEFT_ENOMEM)
			break;
		weft_thread_sleep_ns(1000000);
	}
	target_unref(t);
	req_unref(q);
}

static char *dupstr(const char *s)
{
	if (!s)
		return NULL;
	size_t n = strlen(s) + 1;
	char *d = weft_malloc(n);
	if (d)
		memcpy(d, s, n);
	return d;
}

static int push_result(lua_State *L, weft_resolve_t *r)
{
	if (r->err < 0)
		return lw_error(L, r->err);
	if (!r->result)
		return lw_error(L, WEFT_EAI(EAI_NONAME));
	lw_addrinfo_push(L, r->result);
	r->result = NULL;
	return 1;
}

static int addr_k(lua_State *L, int status, lua_KContext ctx)
{
	int code = lw_wakecode(L);
	lreq_t **h = lua_touserdata(L, -1);
	lreq_t *q = *h;
	/* A deadline that passed leaves the lookup to finish alone. */
	int n = code < 0 ? lw_error(L, code) : push_result(L, &q->r);
	*h = NULL;
	req_unref(q);
	return n;
}

/* A unix socket address as a one-entry list built here. */
static int unix_addr(lua_State *L, const char *path, int socktype)
{
	size_t n = strlen(path);
	struct sockaddr_un *un;
	if (n >= sizeof un->sun_path)
		return lw_error(L, -ENAMETOOLONG);
	struct addrinfo *ai = weft_calloc(1, sizeof *ai + sizeof *un);
	if (!ai)
		return lw_error(L, WEFT_ENOMEM);
	un = (struct sockaddr_un *)(ai + 1);
	un->sun_family = AF_UNIX;
	memcpy(un->sun_path, path, n);
	ai->ai_family = AF_UNIX;
	ai->ai_socktype = socktype ? socktype : SOCK_STREAM;
	ai->ai_addr = (struct sockaddr *)un;
	ai->ai_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	push_ai(L, ai, 1);
	return 1;
}

/* weft.addr(host, port, [type], [family], [protocol], [flags], [expires]) -> ai */
static int l_addr(lua_State *L)
{
	lw_state_t *S = lw_S(L);
	if (luaL_testudata(L, 1, LW_ADDRINFO)) {
		check_entry(L, 1);
		lua_settop(L, 1);
		return 1;
	}
	/* Both missing is a mistake, not "any address, any port". */
	if (lua_isnoneornil(L, 1) && lua_isnoneornil(L, 2))
		return luaL_argerror(L, 1, "host (or '*') and port expected");
	const char *host = lua_isnoneornil(L, 1) ? NULL : luaL_checkstring(L, 1);
	char port[32];
	const char *service = NULL;
	if (lua_type(L, 2) == LUA_TNUMBER) {
		lua_Integer p = luaL_checkinteger(L, 2);
		luaL_argcheck(L, p >= 0 && p <= 65535, 2, "port out of range");
		snprintf(port, sizeof port, "%d", (int)p);
		service = port;
	} else if (!lua_isnoneornil(L, 2)) {
		service = luaL_checkstring(L, 2);
	}
	int socktype = lw_type_value(L, 3, 0);
	int family = lw_family_value(L, 4, AF_UNSPEC);
	int protocol = lw_protocol_value(L, 5, 0);
	int aiflags = flags_value(L, 6);
	uint64_t deadline = lw_deadline(L, 7);
	if (family == AF_UNIX) {
		luaL_argcheck(L, host != NULL, 1, "a socket path is required");
		return unix_addr(L, host, socktype);
	}
	if (host && strcmp(host, "*") == 0) {
		host = NULL;
		aiflags |= AI_PASSIVE;
	}
	if (!host)
		aiflags |= AI_PASSIVE;
	/* Port 0 is no service at all (NULL), which every socket type takes;
	 * raw sockets reject even "0". */
	if (service && strcmp(service, "0") == 0)
		service = NULL;

	weft_resolve_t r;
	memset(&r, 0, sizeof r);
	r.host = (char *)host;
	r.service = (char *)service;
	r.hints.ai_flags = aiflags;
	r.hints.ai_family = family;
	r.hints.ai_socktype = socktype;
	r.hints.ai_protocol = protocol;
	int rc = weft_resolve_numeric(&r);
	if (rc <= 0)
		return push_result(L, &r);

	/* A name: off to the pool if we may wait, else block here. */
	if (S->current == LW_NONE || !lua_isyieldable(L)) {
		weft_resolve_now(&r);
		return push_result(L, &r);
	}
	uint32_t slot = lw_waiter(L, S);
	if (deadline != UINT64_MAX && weft_clock_ns() >= deadline)
		return lw_error(L, WEFT_ETIMEOUT);
	if (!S->rtarget) {
		lw_rtarget_t *t = weft_calloc(1, sizeof *t);
		if (!t)
			return lw_error(L, WEFT_ENOMEM);
		weft_mutex_init(&t->lock);
		t->w = S->w;
		atomic_init(&t->refs, 1);
		S->rtarget = t;
	}
	lreq_t *q = weft_calloc(1, sizeof *q);
	lreq_t **h = lua_newuserdatauv(L, sizeof *h, 0);
	*h = NULL;
	lua_rawgetp(L, LUA_REGISTRYINDEX, &REQ_META);
	lua_setmetatable(L, -2);
	if (!q)
		return lw_error(L, WEFT_ENOMEM);
	q->r.hints = r.hints;
	q->r.host = dupstr(host);
	q->r.service = dupstr(service);
	if ((host && !q->r.host) || (service && !q->r.service)) {
		atomic_store(&q->refs, 1);
		req_unref(q);
		return lw_error(L, WEFT_ENOMEM);
	}
	q->t = S->rtarget;
	q->slot = slot;
	q->seq = weft_worker_wait_ext_until(S->w, slot, deadline);
	atomic_store(&q->refs, 2);
	*h = q;
	atomic_fetch_add(&q->t->refs, 1);
	rc = weft_resolver_submit(&q->r, resolved, q);
	if (rc < 0) {
		atomic_fetch_sub(&q->t->refs, 1);
		atomic_fetch_sub(&q->refs, 1);
		/* The wait is abandoned: make the thread runnable again. */
		weft_worker_wake(S->w, slot, q->seq, rc);
	}
	return lw_await(L, 0, addr_k); /* the holder stays on the stack */
}

static const luaL_Reg ai_methods[] = {
	{"free", ai_free},
	{"next", ai_next},
	{"addrs", ai_addrs},
	{"type", ai_type},
	{"family", ai_family},
	{"protocol", ai_protocol},
	{"name", ai_name},
	{"tostring", ai_tostring},
	{NULL, NULL},
};

static const luaL_Reg sa_methods[] = {
	{"family", sa_family},
	{"port", sa_port},
	{"tostring", sa_tostring},
	{"addr", sa_addr},
	{NULL, NULL},
};

static const luaL_Reg ip_methods[] = {
	{"tobinary", ip_tobinary},
	{"tostring", ip_tostring},
	{NULL, NULL},
};

static const luaL_Reg sa_meta[] = {
	{"__tostring", sa_tostring},
	{NULL, NULL},
};

static const luaL_Reg ip_meta[] = {
	{"__tostring", ip_tostring},
	{NULL, NULL},
};

void lw_open_addr(lua_State *L, lw_state_t *S)
{
	luaL_newmetatable(L, LW_ADDRINFO);
	lua_pushcfunction(L, ai_gc);
	lua_setfield(L, -2, "__gc");
	lua_pushcfunction(L, ai_tostring);
	lua_setfield(L, -2, "__tostring");
	lua_pushcfunction(L, ai_index);
	lua_setfield(L, -2, "__index");
	lua_newtable(L);
	lw_register(L, S, ai_methods);
	lua_setfield(L, -2, "methods");
	lua_pop(L, 1);

	lw_newclass(L, S, LW_SOCKADDR, sa_methods, sa_meta);
	lw_newclass(L, S, LW_IPADDR, ip_methods, ip_meta);

	lua_newtable(L);
	lua_pushcfunction(L, holder_gc);
	lua_setfield(L, -2, "__gc");
	lua_rawsetp(L, LUA_REGISTRYINDEX, &REQ_META);

	lua_pushlightuserdata(L, S);
	lua_pushcclosure(L, l_addr, 1);
	lua_setfield(L, -2, "addr");
}
