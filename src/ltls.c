/* TLS on weft TCP sockets, with OpenSSL 3.
 *
 * A TLS socket drives an SSL object over the TCP socket's fd through a
 * small BIO of our own (send with MSG_NOSIGNAL, errno kept for messages).
 * Every operation is a continuation function like the TCP ones in
 * lsocket.c: call OpenSSL once, and when it wants to read or write, wait on
 * the fd in that direction and call again.  Nothing ever blocks the
 * worker.
 *
 * Contexts.  The parameters of weft.tls.context are read into a cfg_t,
 * files included, and hashed; an SSL_CTX is built once per distinct hash
 * and shared, reference counted, by every context object (in any worker)
 * made from the same parameters.  So `weft -t N` running one script loads
 * its certificates once.  What belongs to a Lua state stays in the context
 * object: the server's ALPN selector function and its SNI table.  The
 * callbacks that need them find the TLS socket through the SSL's ex_data;
 * they run inside our own SSL calls, on the owner's thread, while t->L is
 * set. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "clock.h"
#include "error.h"
#include "lweft.h"
#include "sock.h"

#define LW_TLSCTX "weft.tls.context"
#define LW_TLS    "weft.tls.socket"

/* Files (certificates, keys, CA bundles) larger than this are refused. */
#define MAX_FILE (64u << 20)

/* ------------------------------------------------------------------ */
/* Shared SSL_CTXs */

typedef struct ctx_entry {
	struct ctx_entry *next;
	unsigned char key[32];
	SSL_CTX *ctx;
	unsigned users;
	int server;
	unsigned char *alpn; /* a server's protocols in wire format, or NULL */
	unsigned alpn_len;
} ctx_entry_t;

static weft_mutex_t cache_lock = WEFT_MUTEX_INIT;
static ctx_entry_t *cache;
static weft_once_t init_once = WEFT_ONCE_INIT;
static int ex_tls = -1;   /* SSL: the ltls_t */
static int ex_entry = -1; /* SSL_CTX: the ctx_entry_t */
static BIO_METHOD *bio_method;
static const weft_sockopt_t *opt_nodelay; /* set by wrap, looked up once */

static void entry_release(ctx_entry_t *e)
{
	weft_mutex_lock(&cache_lock);
	int last = --e->users == 0;
	if (last) {
		ctx_entry_t **p = &cache;
		while (*p != e)
			p = &(*p)->next;
		*p = e->next;
	}
	weft_mutex_unlock(&cache_lock);
	if (last) {
		SSL_CTX_free(e->ctx);
		OPENSSL_free(e->alpn);
		OPENSSL_free(e);
	}
}

/* ------------------------------------------------------------------ */
/* Objects */

typedef struct sni_name {
	char *name;
	struct lctx *ctx;
} sni_name_t;

/* A context object (per Lua state).  User values: 1 the SNI table (name ->
 * context object, keeping them alive). */
typedef struct lctx {
	ctx_entry_t *e; /* NULL once collected */
	int server;
	int verify;   /* SSL_VERIFY_* of the context */
	int alpn_ref; /* a server's selector function, or LUA_NOREF */
	sni_name_t *sni;
	int nsni, sni_strict;
} lctx_t;

/* A TLS socket.  User values: 1 the TCP socket, 2 the context object, 3
 * the context SNI chose (kept alive while the socket uses it, even if the
 * server's SNI table changes meanwhile). */
typedef struct ltls {
	SSL *ssl; /* NULL once closed */
	lsock_t *s;
	lctx_t *ctx;    /* the context wrapped with */
	lctx_t *active; /* the one SNI chose (servers), else ctx */
	lua_State *L;   /* set during SSL calls, for the ALPN selector */
	int server;
	int handshaken;
	int failed;    /* a fatal error: no close_notify, the same error again */
	int bio_errno; /* the last system error of the BIO */
	char msg[256]; /* the message of a failure */
} ltls_t;

/* ------------------------------------------------------------------ */
/* The BIO: the TCP socket's fd, without SIGPIPE. */

static int bio_write(BIO *b, const char *buf, int len)
{
	ltls_t *t = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	int fd = lw_sock_fd(t->s);
	if (fd < 0) {
		t->bio_errno = EBADF;
		return -1;
	}
	ssize_t n = weft_sock_send(fd, buf, (size_t)len, 0);
	if (n >= 0)
		return (int)n;
	if (n == -EAGAIN)
		BIO_set_retry_write(b);
	else
		t->bio_errno = (int)-n;
	return -1;
}

static int bio_read(BIO *b, char *buf, int len)
{
	ltls_t *t = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	int fd = lw_sock_fd(t->s);
	if (fd < 0) {
		t->bio_errno = EBADF;
		return -1;
	}
	ssize_t n = weft_sock_recv(fd, buf, (size_t)len, 0);
	if (n >= 0)
		return (int)n;
	if (n == -EAGAIN)
		BIO_set_retry_read(b);
	else
		t->bio_errno = (int)-n;
	return -1;
}

static int bio_puts(BIO *b, const char *s)
{
	return bio_write(b, s, (int)strlen(s));
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	default:
		return 0;
	}
}

static int bio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static int bio_destroy(BIO *b)
{
	return 1;
}

static int servername_cb(SSL *ssl, int *al, void *arg);
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg);

static void init(void)
{
	OPENSSL_init_ssl(0, NULL);
	ex_tls = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	ex_entry = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	opt_nodelay = weft_sockopt_find("tcp_nodelay");
	bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "weft socket");
	if (bio_method) {
		BIO_meth_set_write(bio_method, bio_write);
		BIO_meth_set_read(bio_method, bio_read);
		BIO_meth_set_puts(bio_method, bio_puts);
		BIO_meth_set_ctrl(bio_method, bio_ctrl);
		BIO_meth_set_create(bio_method, bio_create);
		BIO_meth_set_destroy(bio_method, bio_destroy);
	}
}

/* ------------------------------------------------------------------ */
/* Parameters */

typedef struct cfg {
	int server;
	int verify, verify_given;
	int depth; /* -1: OpenSSL's default */
	int minv, maxv;
	uint64_t options;
	const char *cert, *key, *password, *cafile, *capath;
	size_t cert_len, key_len, password_len, cafile_len;
	const char *ciphers, *ciphersuites, *curves;
	const char *dhparam;
	size_t dhparam_len;
	unsigned char alpn[1024]; /* wire format */
	size_t alpn_len;
	int alpn_fn; /* a server with a selector function */
	int password_asked;
	char err[384];
} cfg_t;

static int cfg_fail(cfg_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cfg_fail(cfg_t *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof c->err, fmt, ap);
	va_end(ap);
	return -1;
}

/* The reason of OpenSSL's last error, and the queue emptied. */
static const char *ssl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;
	ERR_clear_error();
	return r ? r : "unknown error";
}

static int ssl_fail(cfg_t *c, const char *field)
{
	return cfg_fail(c, "%s: %s", field, ssl_reason());
}

/* The string field `name` of the table at 1 (pushed, so it stays alive), or
 * NULL when absent.  -1 (c->err set) when it is not a string. */
static int get_string(lua_State *L, cfg_t *c, const char *name, const char **out, size_t *len)
{
	int t = lua_getfield(L, 1, name);
	*out = NULL;
	if (t == LUA_TNIL) {
		lua_pop(L, 1);
		return 0;
	}
	if (t != LUA_TSTRING)
		return cfg_fail(c, "%s: a string expected, got %s", name, lua_typename(L, t));
	*out = lua_tolstring(L, -1, len);
	return 0;
}

/* Whether s[0..n) holds the NUL-free string w (memmem is not in every C
 * library). */
static int holds(const char *s, size_t n, const char *w)
{
	size_t k = strlen(w);
	for (size_t i = 0; i + k <= n; i++)
		if (s[i] == w[0] && memcmp(s + i, w, k) == 0)
			return 1;
	return 0;
}

/* A PEM string is used as it is; anything else names a file, read and
 * pushed as a string. */
static int pem_or_file(lua_State *L, cfg_t *c, const char *name, const char **v, size_t *len)
{
	if (!*v || holds(*v, *len, "-----BEGIN"))
		return 0;
	if (*len == 0 || strlen(*v) != *len)
		return cfg_fail(c, "%s: not a file name nor PEM data", name);
	FILE *f = fopen(*v, "rb");
	if (!f)
		return cfg_fail(c, "%s: cannot read '%s': %s", name, *v, strerror(errno));
	luaL_Buffer b;
	luaL_buffinit(L, &b);
	size_t total = 0, n;
	do {
		char *p = luaL_prepbuffer(&b);
		n = fread(p, 1, LUAL_BUFFERSIZE, f);
		luaL_addsize(&b, n);
		total += n;
	} while (n == LUAL_BUFFERSIZE && total <= MAX_FILE);
	int bad = ferror(f);
	fclose(f);
	luaL_pushresult(&b);
	if (bad)
		return cfg_fail(c, "%s: cannot read '%s'", name, *v);
	if (total > MAX_FILE)
		return cfg_fail(c, "%s: '%s' is too large", name, *v);
	*v = lua_tolstring(L, -1, len);
	return 0;
}

/* A string or a list of strings at field `name`, each passed to fn.
 * Pushes nothing (the values stay in the table). */
static int each_name(lua_State *L, cfg_t *c, const char *name,
                     int (*fn)(lua_State *, cfg_t *, const char *, size_t))
{
	int t = lua_getfield(L, 1, name);
	int rc = 0;
	if (t == LUA_TSTRING) {
		size_t len;
		const char *s = lua_tolstring(L, -1, &len);
		rc = fn(L, c, s, len);
	} else if (t == LUA_TTABLE) {
		lua_Integer n = luaL_len(L, -1);
		for (lua_Integer i = 1; i <= n && rc == 0; i++) {
			if (lua_geti(L, -1, i) != LUA_TSTRING)
				rc = cfg_fail(c, "%s: item %lld is not a string", name,
				              (long long)i);
			else {
				size_t len;
				const char *s = lua_tolstring(L, -1, &len);
				rc = fn(L, c, s, len);
			}
			lua_pop(L, 1);
		}
	} else if (t != LUA_TNIL) {
		rc = cfg_fail(c, "%s: a string or a list of strings expected, got %s", name,
		              lua_typename(L, t));
	}
	lua_pop(L, 1);
	return rc;
}

static int add_verify(lua_State *L, cfg_t *c, const char *s, size_t len)
{
	static const struct {
		const char *name;
		int bits;
	} modes[] = {
	    {"none", SSL_VERIFY_NONE},
	    {"peer", SSL_VERIFY_PEER},
	    {"fail_if_no_peer_cert", SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT},
	    {"client_once", SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE},
	};
	for (size_t i = 0; i < sizeof modes / sizeof *modes; i++)
		if (strcmp(s, modes[i].name) == 0) {
			c->verify |= modes[i].bits;
			c->verify_given = 1;
			return 0;
		}
	return cfg_fail(c, "verify: unknown mode '%s'", s);
}

static int add_option(lua_State *L, cfg_t *c, const char *s, size_t len)
{
	/* LuaSec's names.  Those for protocols and behaviours OpenSSL 3 no
	 * longer has are accepted and mean nothing (weft never speaks SSL or
	 * TLS below 1.2; single DH/ECDH use is always on). */
	static const struct {
		const char *name;
		uint64_t op;
	} opts[] = {
	    {"all", SSL_OP_ALL},
	    {"allow_client_renegotiation", SSL_OP_ALLOW_CLIENT_RENEGOTIATION},
	    {"allow_no_dhe_kex", SSL_OP_ALLOW_NO_DHE_KEX},
	    {"allow_unsafe_legacy_renegotiation", SSL_OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION},
	    {"cipher_server_preference", SSL_OP_CIPHER_SERVER_PREFERENCE},
	    {"cisco_anyconnect", SSL_OP_CISCO_ANYCONNECT},
	    {"cookie_exchange", SSL_OP_COOKIE_EXCHANGE},
	    {"cryptopro_tlsext_bug", SSL_OP_CRYPTOPRO_TLSEXT_BUG},
	    {"dont_insert_empty_fragments", SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS},
	    {"enable_middlebox_compat", SSL_OP_ENABLE_MIDDLEBOX_COMPAT},
	    {"ignore_unexpected_eof", SSL_OP_IGNORE_UNEXPECTED_EOF},
	    {"legacy_server_connect", SSL_OP_LEGACY_SERVER_CONNECT},
	    {"microsoft_big_sslv3_buffer", 0},
	    {"microsoft_sess_id_bug", 0},
	    {"msie_sslv2_rsa_padding", 0},
	    {"netscape_ca_dn_bug", 0},
	    {"netscape_challenge_bug", 0},
	    {"netscape_demo_cipher_change_bug", 0},
	    {"netscape_reuse_cipher_change_bug", 0},
	    {"no_anti_replay", SSL_OP_NO_ANTI_REPLAY},
	    {"no_compression", SSL_OP_NO_COMPRESSION},
	    {"no_encrypt_then_mac", SSL_OP_NO_ENCRYPT_THEN_MAC},
	    {"no_query_mtu", SSL_OP_NO_QUERY_MTU},
	    {"no_renegotiation", SSL_OP_NO_RENEGOTIATION},
	    {"no_session_resumption_on_renegotiation",
	     SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION},
	    {"no_sslv2", 0},
	    {"no_sslv3", 0},
	    {"no_ticket", SSL_OP_NO_TICKET},
	    {"no_tlsv1", 0},
	    {"no_tlsv1_1", 0},
	    {"no_tlsv1_2", SSL_OP_NO_TLSv1_2},
	    {"no_tlsv1_3", SSL_OP_NO_TLSv1_3},
	    {"prioritize_chacha", SSL_OP_PRIORITIZE_CHACHA},
	    {"single_dh_use", 0},
	    {"single_ecdh_use", 0},
	    {"ssleay_080_client_dh_bug", 0},
	    {"sslref2_reuse_cert_type_bug", 0},
	    {"tls_block_padding_bug", 0},
	    {"tls_d5_bug", 0},
	    {"tls_rollback_bug", SSL_OP_TLS_ROLLBACK_BUG},
	};
	for (size_t i = 0; i < sizeof opts / sizeof *opts; i++)
		if (strcmp(s, opts[i].name) == 0) {
			c->options |= opts[i].op;
			return 0;
		}
	return cfg_fail(c, "options: unknown option '%s'", s);
}

/* ALPN protocols, in wire format. */
static int add_alpn(lua_State *L, cfg_t *c, const char *s, size_t len)
{
	if (len == 0 || len > 255)
		return cfg_fail(c, "alpn: a protocol name must have 1 to 255 bytes");
	if (c->alpn_len + 1 + len > sizeof c->alpn)
		return cfg_fail(c, "alpn: too many protocols");
	c->alpn[c->alpn_len++] = (unsigned char)len;
	memcpy(c->alpn + c->alpn_len, s, len);
	c->alpn_len += len;
	return 0;
}

/* A protocol name to a version: 0 = no limit; -1 = unknown; -2 = too old. */
static int proto_version(const char *s)
{
	static const struct {
		const char *name;
		int v;
	} names[] = {
	    {"any", 0},
	    {"sslv23", 0},
	    {"tls", 0},
	    {"tlsv1_2", TLS1_2_VERSION},
	    {"tlsv1.2", TLS1_2_VERSION},
	    {"tlsv1_3", TLS1_3_VERSION},
	    {"tlsv1.3", TLS1_3_VERSION},
	    {"sslv2", -2},
	    {"sslv3", -2},
	    {"tlsv1", -2},
	    {"tlsv1_1", -2},
	    {"tlsv1.1", -2},
	};
	for (size_t i = 0; i < sizeof names / sizeof *names; i++)
		if (strcasecmp(s, names[i].name) == 0)
			return names[i].v;
	return -1;
}

static int get_version(lua_State *L, cfg_t *c, const char *field, int *v)
{
	const char *s;
	size_t len;
	if (get_string(L, c, field, &s, &len) < 0)
		return -1;
	if (!s)
		return 1;
	lua_pop(L, 1);
	*v = proto_version(s);
	if (*v == -1)
		return cfg_fail(c, "%s: unknown protocol '%s'", field, s);
	if (*v == -2)
		return cfg_fail(c, "%s: '%s' is not supported (TLS 1.2 is the oldest weft speaks)",
		                field, s);
	return 0;
}

/* A password or dhparam given as a function: called now, once. */
static int call_for_string(lua_State *L, cfg_t *c, const char *field, int nargs)
{
	if (lua_pcall(L, nargs, 1, 0) != LUA_OK)
		return cfg_fail(c, "%s: the function failed: %s", field,
		                luaL_tolstring(L, -1, NULL));
	if (lua_type(L, -1) != LUA_TSTRING)
		return cfg_fail(c, "%s: the function returned %s, not a string", field,
		                luaL_typename(L, -1));
	return 0;
}

/* Read the parameter table at 1 into c; values are pushed on the stack,
 * which must stay as it is until c is used. */
static int read_params(lua_State *L, cfg_t *c)
{
	memset(c, 0, sizeof *c);
	c->depth = -1;
	const char *s;
	size_t len;

	if (get_string(L, c, "mode", &s, &len) < 0)
		return -1;
	if (s) {
		if (strcmp(s, "server") == 0)
			c->server = 1;
		else if (strcmp(s, "client") != 0)
			return cfg_fail(c, "mode: 'client' or 'server' expected, got '%s'", s);
	}

	c->minv = TLS1_2_VERSION;
	int v, rc = get_version(L, c, "protocol", &v);
	if (rc < 0)
		return -1;
	if (rc == 0 && v != 0)
		c->minv = c->maxv = v;
	if ((rc = get_version(L, c, "min_protocol", &v)) < 0)
		return -1;
	if (rc == 0 && v != 0)
		c->minv = v;
	if ((rc = get_version(L, c, "max_protocol", &v)) < 0)
		return -1;
	if (rc == 0)
		c->maxv = v;
	if (c->maxv && c->maxv < c->minv)
		return cfg_fail(c, "max_protocol: older than the minimum protocol");

	if (each_name(L, c, "verify", add_verify) < 0 || each_name(L, c, "options", add_option) < 0)
		return -1;
	if (!c->verify_given && !c->server)
		c->verify = SSL_VERIFY_PEER; /* clients verify unless told not to */

	int t = lua_getfield(L, 1, "depth");
	if (t != LUA_TNIL) {
		int isint;
		lua_Integer d = lua_tointegerx(L, -1, &isint);
		if (!isint || d < 0 || d > 100)
			return cfg_fail(c, "depth: an integer from 0 to 100 expected");
		c->depth = (int)d;
	}
	lua_pop(L, 1);

	if (get_string(L, c, "certificate", &c->cert, &c->cert_len) < 0 ||
	    pem_or_file(L, c, "certificate", &c->cert, &c->cert_len) < 0)
		return -1;
	if (get_string(L, c, "key", &c->key, &c->key_len) < 0 ||
	    pem_or_file(L, c, "key", &c->key, &c->key_len) < 0)
		return -1;
	if (!c->cert != !c->key)
		return cfg_fail(c, "%s: a certificate needs its key and a key its certificate",
		                c->cert ? "key" : "certificate");
	if (c->server && !c->cert)
		return cfg_fail(c, "certificate: a server needs a certificate and a key");

	t = lua_getfield(L, 1, "password");
	if (t == LUA_TFUNCTION) {
		if (call_for_string(L, c, "password", 0) < 0)
			return -1;
	} else if (t != LUA_TNIL && t != LUA_TSTRING) {
		return cfg_fail(c, "password: a string or a function expected, got %s",
		                lua_typename(L, t));
	}
	if (lua_type(L, -1) == LUA_TSTRING)
		c->password = lua_tolstring(L, -1, &c->password_len);

	if (get_string(L, c, "cafile", &c->cafile, &c->cafile_len) < 0 ||
	    pem_or_file(L, c, "cafile", &c->cafile, &c->cafile_len) < 0)
		return -1;
	if (get_string(L, c, "capath", &c->capath, &len) < 0)
		return -1;
	struct stat st;
	if (c->capath && stat(c->capath, &st) < 0)
		return cfg_fail(c, "capath: cannot open '%s': %s", c->capath, strerror(errno));
	if (c->capath && !S_ISDIR(st.st_mode))
		return cfg_fail(c, "capath: '%s' is not a directory", c->capath);
	if (get_string(L, c, "ciphers", &c->ciphers, &len) < 0 ||
	    get_string(L, c, "ciphersuites", &c->ciphersuites, &len) < 0)
		return -1;
	static const char *const curve_fields[] = {"curves", "curveslist", "curve"};
	for (int i = 0; i < 3 && !c->curves; i++)
		if (get_string(L, c, curve_fields[i], &c->curves, &len) < 0)
			return -1;

	t = lua_getfield(L, 1, "dhparam");
	if (t == LUA_TFUNCTION) {
		/* LuaSec's form: f(export, keylength) -> PEM parameters. */
		lua_pushboolean(L, 0);
		lua_pushinteger(L, 2048);
		if (call_for_string(L, c, "dhparam", 2) < 0)
			return -1;
	} else if (t == LUA_TBOOLEAN) {
		lua_pop(L, 1);
		lua_pushliteral(L, "auto"); /* true: OpenSSL's built-in groups */
	} else if (t != LUA_TNIL && t != LUA_TSTRING) {
		return cfg_fail(c, "dhparam: a file name, PEM data or a function expected");
	}
	if (lua_type(L, -1) == LUA_TSTRING) {
		c->dhparam = lua_tolstring(L, -1, &c->dhparam_len);
		if (strcmp(c->dhparam, "auto") == 0)
			c->dhparam = NULL;
		else if (pem_or_file(L, c, "dhparam", &c->dhparam, &c->dhparam_len) < 0)
			return -1;
	}

	t = lua_getfield(L, 1, "alpn");
	lua_pop(L, 1);
	if (t == LUA_TFUNCTION) {
		if (!c->server)
			return cfg_fail(c,
			                "alpn: a client gives a list of protocols, not a function");
		c->alpn_fn = 1;
	} else if (each_name(L, c, "alpn", add_alpn) < 0) {
		return -1;
	}
	return 0;
}

/* The hash that names an SSL_CTX: every value that shapes it. */
static void cfg_key(lua_State *L, cfg_t *c, unsigned char key[32])
{
	luaL_Buffer b;
	luaL_buffinit(L, &b);
#define ADDS(p, n)                                                                                 \
	do {                                                                                       \
		size_t n_ = (p) ? (n) : 0;                                                         \
		luaL_addlstring(&b, (const char *)&n_, sizeof n_);                                 \
		if (p)                                                                             \
			luaL_addlstring(&b, (p), n_);                                              \
	} while (0)
#define ADDI(v)                                                                                    \
	do {                                                                                       \
		int64_t v_ = (int64_t)(v);                                                         \
		luaL_addlstring(&b, (const char *)&v_, sizeof v_);                                 \
	} while (0)
	ADDI(c->server);
	ADDI(c->verify);
	ADDI(c->depth);
	ADDI(c->minv);
	ADDI(c->maxv);
	ADDI(c->options);
	ADDI(c->alpn_fn);
	ADDS(c->cert, c->cert_len);
	ADDS(c->key, c->key_len);
	ADDS(c->password, c->password_len);
	ADDS(c->cafile, c->cafile_len);
	ADDS(c->capath, c->capath ? strlen(c->capath) : 0);
	ADDS(c->ciphers, c->ciphers ? strlen(c->ciphers) : 0);
	ADDS(c->ciphersuites, c->ciphersuites ? strlen(c->ciphersuites) : 0);
	ADDS(c->curves, c->curves ? strlen(c->curves) : 0);
	ADDS(c->dhparam, c->dhparam_len);
	ADDS((const char *)c->alpn, c->alpn_len);
#undef ADDS
#undef ADDI
	luaL_pushresult(&b);
	size_t len;
	const char *p = lua_tolstring(L, -1, &len);
	unsigned klen = 32;
	EVP_Digest(p, len, key, &klen, EVP_sha256(), NULL);
	lua_pop(L, 1);
}

static int password_cb(char *buf, int size, int rwflag, void *u)
{
	cfg_t *c = u;
	c->password_asked = 1;
	if (!c->password || c->password_len > (size_t)size)
		return -1;
	memcpy(buf, c->password, c->password_len);
	return (int)c->password_len;
}

static int load_certificates(SSL_CTX *ctx, cfg_t *c)
{
	BIO *bio = BIO_new_mem_buf(c->cert, (int)c->cert_len);
	if (!bio)
		return ssl_fail(c, "certificate");
	X509 *x = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL);
	int rc = 0;
	if (!x || SSL_CTX_use_certificate(ctx, x) != 1)
		rc = ssl_fail(c, "certificate");
	X509_free(x);
	/* The rest of the file is the chain. */
	while (rc == 0 && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
		if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {
			X509_free(x);
			rc = ssl_fail(c, "certificate");
		}
	ERR_clear_error(); /* the end of the PEM data */
	BIO_free(bio);
	if (rc < 0)
		return rc;

	bio = BIO_new_mem_buf(c->key, (int)c->key_len);
	if (!bio)
		return ssl_fail(c, "key");
	EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, password_cb, c);
	BIO_free(bio);
	if (!pk) {
		if (c->password_asked && !c->password)
			return cfg_fail(c, "key: the key is encrypted and no password was given");
		if (c->password_asked) {
			ERR_clear_error();
			return cfg_fail(c, "key: cannot decrypt the key (wrong password?)");
		}
		return ssl_fail(c, "key");
	}
	if (SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
			ERR_clear_error();
			rc = cfg_fail(c, "key: the key does not match the certificate");
		} else {
			rc = ssl_fail(c, "key");
		}
	}
	EVP_PKEY_free(pk);
	return rc;
}

static int load_cafile(SSL_CTX *ctx, cfg_t *c)
{
	BIO *bio = BIO_new_mem_buf(c->cafile, (int)c->cafile_len);
	if (!bio)
		return ssl_fail(c, "cafile");
	STACK_OF(X509_INFO) *infos = PEM_X509_INFO_read_bio(bio, NULL, NULL, NULL);
	BIO_free(bio);
	if (!infos)
		return ssl_fail(c, "cafile");
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	int n = 0, rc = 0;
	for (int i = 0; i < sk_X509_INFO_num(infos) && rc == 0; i++) {
		X509_INFO *in = sk_X509_INFO_value(infos, i);
		if (in->x509) {
			if (X509_STORE_add_cert(store, in->x509) != 1)
				rc = ssl_fail(c, "cafile");
			n++;
		}
		if (in->crl && X509_STORE_add_crl(store, in->crl) != 1)
			rc = ssl_fail(c, "cafile");
	}
	sk_X509_INFO_pop_free(infos, X509_INFO_free);
	if (rc == 0 && n == 0)
		rc = cfg_fail(c, "cafile: no certificate in it");
	return rc;
}

static int load_dhparam(SSL_CTX *ctx, cfg_t *c)
{
	BIO *bio = BIO_new_mem_buf(c->dhparam, (int)c->dhparam_len);
	if (!bio)
		return ssl_fail(c, "dhparam");
	EVP_PKEY *dh = PEM_read_bio_Parameters(bio, NULL);
	BIO_free(bio);
	if (!dh)
		return ssl_fail(c, "dhparam");
	if (SSL_CTX_set0_tmp_dh_pkey(ctx, dh) != 1) {
		EVP_PKEY_free(dh);
		return ssl_fail(c, "dhparam");
	}
	return 0;
}

/* Build the SSL_CTX described by c into e.  0 or -1 (c->err set). */
static int build(cfg_t *c, ctx_entry_t *e)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_method());
	if (!ctx)
		return ssl_fail(c, "context");
	e->ctx = ctx;
	e->server = c->server;
	SSL_CTX_set_ex_data(ctx, ex_entry, e);
	if (SSL_CTX_set_min_proto_version(ctx, c->minv) != 1 ||
	    SSL_CTX_set_max_proto_version(ctx, c->maxv) != 1)
		return ssl_fail(c, "protocol");
	SSL_CTX_set_options(ctx, c->options);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_read_ahead(ctx, 1);
	SSL_CTX_set_verify(ctx, c->verify, NULL);
	if (c->depth >= 0)
		SSL_CTX_set_verify_depth(ctx, c->depth);
	if (c->ciphers && SSL_CTX_set_cipher_list(ctx, c->ciphers) != 1)
		return ssl_fail(c, "ciphers");
	if (c->ciphersuites && SSL_CTX_set_ciphersuites(ctx, c->ciphersuites) != 1)
		return ssl_fail(c, "ciphersuites");
	if (c->curves && SSL_CTX_set1_groups_list(ctx, c->curves) != 1)
		return ssl_fail(c, "curves");
	if (c->cert && load_certificates(ctx, c) < 0)
		return -1;
	if (c->cafile && load_cafile(ctx, c) < 0)
		return -1;
	if (c->capath && SSL_CTX_load_verify_dir(ctx, c->capath) != 1)
		return ssl_fail(c, "capath");
	if ((c->verify & SSL_VERIFY_PEER) && !c->cafile && !c->capath &&
	    SSL_CTX_set_default_verify_paths(ctx) != 1)
		return ssl_fail(c, "cafile");
	if (c->server) {
		static const unsigned char sid[] = "weft";
		SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
		SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
		SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, NULL);
		if (c->alpn_len) {
			e->alpn = OPENSSL_memdup(c->alpn, c->alpn_len);
			if (!e->alpn)
				return cfg_fail(c, "alpn: out of memory");
			e->alpn_len = (unsigned)c->alpn_len;
		}
		if (c->dhparam) {
			if (load_dhparam(ctx, c) < 0)
				return -1;
		} else {
			SSL_CTX_set_dh_auto(ctx, 1);
		}
	} else if (c->alpn_len &&
	           SSL_CTX_set_alpn_protos(ctx, c->alpn, (unsigned)c->alpn_len) != 0) {
		return ssl_fail(c, "alpn");
	}
	return 0;
}

/* weft.tls.context(params) -> ctx | nil, err */
static int l_context(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	weft_once(&init_once, init);
	if (!bio_method)
		return luaL_error(L, "weft.tls: OpenSSL could not be initialized");
	cfg_t *c = lua_newuserdatauv(L, sizeof *c, 0); /* big: not on the C stack */
	int base = lua_gettop(L);
	if (read_params(L, c) < 0) {
		luaL_pushfail(L);
		lua_pushstring(L, c->err);
		return 2;
	}
	unsigned char key[32];
	cfg_key(L, c, key);

	/* Building under the lock makes a second worker wait for the first
	 * one's context instead of loading the same files again. */
	weft_mutex_lock(&cache_lock);
	ctx_entry_t *e;
	for (e = cache; e; e = e->next)
		if (memcmp(e->key, key, sizeof key) == 0)
			break;
	if (e) {
		e->users++;
	} else {
		e = OPENSSL_zalloc(sizeof *e);
		if (!e) {
			weft_mutex_unlock(&cache_lock);
			return lw_error(L, WEFT_ENOMEM);
		}
		memcpy(e->key, key, sizeof key);
		ERR_clear_error();
		if (build(c, e) < 0) {
			weft_mutex_unlock(&cache_lock);
			SSL_CTX_free(e->ctx);
			OPENSSL_free(e->alpn);
			OPENSSL_free(e);
			luaL_pushfail(L);
			lua_pushstring(L, c->err);
			return 2;
		}
		e->users = 1;
		e->next = cache;
		cache = e;
	}
	weft_mutex_unlock(&cache_lock);
	lua_settop(L, base);

	lctx_t *x = lua_newuserdatauv(L, sizeof *x, 1);
	memset(x, 0, sizeof *x);
	x->e = e;
	x->server = c->server;
	x->verify = c->verify;
	x->alpn_ref = LUA_NOREF;
	luaL_setmetatable(L, LW_TLSCTX);
	if (c->alpn_fn) {
		lua_getfield(L, 1, "alpn");
		x->alpn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	}
	return 1;
}

static lctx_t *checkctx(lua_State *L, int idx)
{
	lctx_t *x = luaL_checkudata(L, idx, LW_TLSCTX);
	luaL_argcheck(L, x->e != NULL, idx, "context already collected");
	return x;
}

static void sni_clear(lctx_t *x)
{
	for (int i = 0; i < x->nsni; i++)
		free(x->sni[i].name);
	free(x->sni);
	x->sni = NULL;
	x->nsni = 0;
}

static int ctx_gc(lua_State *L)
{
	lctx_t *x = luaL_checkudata(L, 1, LW_TLSCTX);
	if (x->e) {
		entry_release(x->e);
		x->e = NULL;
	}
	if (x->alpn_ref != LUA_NOREF) {
		luaL_unref(L, LUA_REGISTRYINDEX, x->alpn_ref);
		x->alpn_ref = LUA_NOREF;
	}
	sni_clear(x);
	return 0;
}

/* ctx:_sni({ [name] = ctx2, ... }, strict) (weft.tls turns parameter
 * tables into contexts first) */
static int ctx_sni(lua_State *L)
{
	lctx_t *x = checkctx(L, 1);
	luaL_checktype(L, 2, LUA_TTABLE);
	int strict = lua_toboolean(L, 3);
	if (!x->server)
		return luaL_error(L, "weft.tls: sni is for server contexts");
	int n = 0;
	lua_pushnil(L);
	while (lua_next(L, 2)) {
		if (lua_type(L, -2) != LUA_TSTRING)
			return luaL_error(L, "weft.tls: sni: names must be strings");
		lctx_t *y = checkctx(L, -1);
		if (!y->server)
			return luaL_error(L,
			                  "weft.tls: sni: the context for '%s' is not a server's",
			                  lua_tostring(L, -2));
		n++;
		lua_pop(L, 1);
	}
	sni_name_t *v = n ? calloc((size_t)n, sizeof *v) : NULL;
	if (n && !v)
		return lw_error(L, WEFT_ENOMEM);
	int i = 0;
	lua_pushnil(L);
	while (lua_next(L, 2)) {
		v[i].name = strdup(lua_tostring(L, -2));
		v[i].ctx = lua_touserdata(L, -1);
		lua_pop(L, 1);
		if (!v[i++].name) {
			for (int j = 0; j < i; j++)
				free(v[j].name);
			free(v);
			return lw_error(L, WEFT_ENOMEM);
		}
	}
	sni_clear(x);
	x->sni = v;
	x->nsni = n;
	x->sni_strict = strict;
	lua_pushvalue(L, 2); /* keeps the contexts alive */
	lua_setiuservalue(L, 1, 1);
	lua_pushboolean(L, 1);
	return 1;
}

/* core.tls_contexts() -> the number of SSL contexts alive in the process */
static int l_contexts(lua_State *L)
{
	lua_Integer n = 0;
	weft_mutex_lock(&cache_lock);
	for (ctx_entry_t *e = cache; e; e = e->next)
		n++;
	weft_mutex_unlock(&cache_lock);
	lua_pushinteger(L, n);
	return 1;
}

/* core.tls_isctx(v) */
static int l_isctx(lua_State *L)
{
	lua_pushboolean(L, luaL_testudata(L, 1, LW_TLSCTX) != NULL);
	return 1;
}

static int ctx_mode(lua_State *L)
{
	lua_pushstring(L, checkctx(L, 1)->server ? "server" : "client");
	return 1;
}

static int ctx_tostring(lua_State *L)
{
	lctx_t *x = luaL_checkudata(L, 1, LW_TLSCTX);
	lua_pushfstring(L, "weft.tls.context (%s): %p", x->server ? "server" : "client", (void *)x);
	return 1;
}

/* ------------------------------------------------------------------ */
/* Callbacks */

static void switch_ctx(SSL *ssl, ltls_t *t, lctx_t *to)
{
	SSL_CTX *ctx = to->e->ctx;
	SSL_set_SSL_CTX(ssl, ctx);
	/* SSL_new copied these from the first context; take the new one's. */
	SSL_set_verify(ssl, SSL_CTX_get_verify_mode(ctx), NULL);
	SSL_set_verify_depth(ssl, SSL_CTX_get_verify_depth(ctx));
	SSL_clear_options(ssl, SSL_get_options(ssl));
	SSL_set_options(ssl, SSL_CTX_get_options(ctx));
	t->active = to;
}

static int servername_cb(SSL *ssl, int *al, void *arg)
{
	ltls_t *t = SSL_get_ex_data(ssl, ex_tls);
	if (!t || !t->ctx->nsni)
		return SSL_TLSEXT_ERR_OK;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	if (!name)
		return SSL_TLSEXT_ERR_OK; /* no name asked: the default context */
	lctx_t *x = t->ctx;
	for (int i = 0; i < x->nsni; i++)
		if (strcasecmp(x->sni[i].name, name) == 0) {
			/* SSL calls run with the TLS socket at index 1 of t->L:
			 * it keeps the chosen context object alive. */
			lua_State *L = t->L;
			if (!x->sni[i].ctx->e || !L || !lua_checkstack(L, 3))
				return SSL_TLSEXT_ERR_OK;
			lua_getiuservalue(L, 1, 2);
			lua_getiuservalue(L, -1, 1);
			lua_getfield(L, -1, x->sni[i].name);
			if (lua_touserdata(L, -1) == x->sni[i].ctx) {
				lua_setiuservalue(L, 1, 3);
				switch_ctx(ssl, t, x->sni[i].ctx);
			} else {
				lua_pop(L, 1);
			}
			lua_pop(L, 2);
			return SSL_TLSEXT_ERR_OK;
		}
	if (!x->sni_strict)
		return SSL_TLSEXT_ERR_OK;
	*al = SSL_AD_UNRECOGNIZED_NAME;
	return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* The offered protocol equal to name, pointed at inside `in`. */
static int alpn_find(const unsigned char *in, unsigned inlen, const char *name, size_t len,
                     const unsigned char **out, unsigned char *outlen)
{
	for (unsigned i = 0; i < inlen; i += 1u + in[i]) {
		unsigned n = in[i];
		if (i + 1 + n > inlen)
			break;
		if (n == len && memcmp(in + i + 1, name, len) == 0) {
			*out = in + i + 1;
			*outlen = (unsigned char)n;
			return 1;
		}
	}
	return 0;
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg)
{
	ltls_t *t = SSL_get_ex_data(ssl, ex_tls);
	if (!t)
		return SSL_TLSEXT_ERR_NOACK;
	lctx_t *x = t->active;
	if (x->alpn_ref != LUA_NOREF && t->L) {
		/* The selector: f({offered...}) -> name | nil. */
		lua_State *L = t->L;
		int top = lua_gettop(L);
		if (!lua_checkstack(L, 4))
			return SSL_TLSEXT_ERR_ALERT_FATAL;
		lua_rawgeti(L, LUA_REGISTRYINDEX, x->alpn_ref);
		lua_newtable(L);
		int k = 1;
		for (unsigned i = 0; i < inlen && i + 1u + in[i] <= inlen; i += 1u + in[i]) {
			lua_pushlstring(L, (const char *)in + i + 1, in[i]);
			lua_rawseti(L, -2, k++);
		}
		int rc = SSL_TLSEXT_ERR_NOACK;
		if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
			snprintf(t->msg, sizeof t->msg, "alpn: the selector failed: %s",
			         lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object)");
			rc = SSL_TLSEXT_ERR_ALERT_FATAL;
		} else if (lua_type(L, -1) == LUA_TSTRING) {
			size_t len;
			const char *name = lua_tolstring(L, -1, &len);
			if (alpn_find(in, inlen, name, len, out, outlen))
				rc = SSL_TLSEXT_ERR_OK;
			else {
				snprintf(
				    t->msg, sizeof t->msg,
				    "alpn: the selector chose '%s', which the client did not offer",
				    name);
				rc = SSL_TLSEXT_ERR_ALERT_FATAL;
			}
		}
		lua_settop(L, top);
		return rc;
	}
	ctx_entry_t *e = x->e;
	if (!e || !e->alpn)
		return SSL_TLSEXT_ERR_NOACK;
	unsigned char *sel;
	if (SSL_select_next_proto(&sel, outlen, e->alpn, e->alpn_len, in, inlen) !=
	    OPENSSL_NPN_NEGOTIATED)
		return SSL_TLSEXT_ERR_NOACK;
	*out = sel;
	return SSL_TLSEXT_ERR_OK;
}

/* ------------------------------------------------------------------ */
/* TLS sockets */

static ltls_t *checktls(lua_State *L, int idx)
{
	return luaL_checkudata(L, idx, LW_TLS);
}

/* core.tls_wrap(tcp, ctx, [host]) -> tls | nil, err.  host: the name (or
 * address) the client connected to, for SNI and the host name check. */
static int l_wrap(lua_State *L)
{
	lsock_t *s = lw_checktcp(L, 1);
	lctx_t *x = checkctx(L, 2);
	size_t hlen = 0;
	const char *host = luaL_optlstring(L, 3, NULL, &hlen);
	if (host && (hlen == 0 || strlen(host) != hlen))
		return luaL_argerror(L, 3, "not a host name");
	if (lw_sock_fd(s) < 0)
		return lw_error(L, WEFT_ECLOSED);
	ltls_t *t = lua_newuserdatauv(L, sizeof *t, 3);
	memset(t, 0, sizeof *t);
	t->s = s;
	t->ctx = t->active = x;
	t->server = x->server;
	luaL_setmetatable(L, LW_TLS);
	lua_pushvalue(L, 1);
	lua_setiuservalue(L, -2, 1);
	lua_pushvalue(L, 2);
	lua_setiuservalue(L, -2, 2);

	/* TLS writes several small records in a row (a server's session
	 * tickets, then its first reply): with Nagle's algorithm the later
	 * ones wait for the peer's delayed ACK, some 40 ms.  Like nginx, send
	 * at once; setopt("tcp_nodelay", false) turns it back. */
	weft_sockopt_set_int(lw_sock_fd(s), opt_nodelay, 1);
	ERR_clear_error();
	SSL *ssl = SSL_new(x->e->ctx);
	BIO *bio = ssl ? BIO_new(bio_method) : NULL;
	if (!bio) {
		SSL_free(ssl);
		luaL_pushfail(L);
		lua_pushfstring(L, "tls: %s", ssl_reason());
		return 2;
	}
	BIO_set_data(bio, t);
	SSL_set_bio(ssl, bio, bio);
	SSL_set_ex_data(ssl, ex_tls, t);
	t->ssl = ssl;
	if (x->server) {
		SSL_set_accept_state(ssl);
		return 1;
	}
	SSL_set_connect_state(ssl);
	if (!host) {
		if (!(x->verify & SSL_VERIFY_PEER))
			return 1;
		/* Verifying a chain without a name to match is no verification. */
		luaL_pushfail(L);
		lua_pushliteral(L, "servername: no host name to check the certificate against "
		                   "(connect first, give servername, or set verify = \"none\")");
		return 2;
	}
	unsigned char ip[16];
	int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
	int ok = 1;
	/* SNI carries names only (RFC 6066); an address is checked against
	 * the certificate's IP entries. */
	if (!is_ip)
		ok = SSL_set_tlsext_host_name(ssl, host) == 1;
	if (ok && (x->verify & SSL_VERIFY_PEER)) {
		if (is_ip)
			ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1;
		else
			ok = SSL_set1_host(ssl, host) == 1;
	}
	if (!ok) {
		luaL_pushfail(L);
		lua_pushfstring(L, "servername: %s", ssl_reason());
		return 2;
	}
	return 1;
}

/* Outcome of an SSL call that returned r <= 0: wait to read or write,
 * the peer's close_notify, or a failure (t->msg says which). */
enum { ST_READ = 1, ST_WRITE = 2, ST_EOF = 3, ST_FAIL = -100 };

static int st_dir(int st)
{
	return st == ST_READ ? WEFT_READ : WEFT_WRITE;
}

static int tls_status(ltls_t *t, int r)
{
	int e = SSL_get_error(t->ssl, r);
	switch (e) {
	case SSL_ERROR_WANT_READ:
		return ST_READ;
	case SSL_ERROR_WANT_WRITE:
		return ST_WRITE;
	case SSL_ERROR_ZERO_RETURN:
		return ST_EOF;
	case SSL_ERROR_SYSCALL:
		if (!t->msg[0])
			snprintf(t->msg, sizeof t->msg, "%s",
			         t->bio_errno ? weft_strerror(-t->bio_errno)
			                      : weft_strerror(WEFT_EEOF));
		break;
	case SSL_ERROR_SSL: {
		unsigned long err = ERR_peek_last_error();
		long vr = SSL_get_verify_result(t->ssl);
		if (t->msg[0]) {
			/* set by a callback */
		} else if (t->bio_errno) {
			snprintf(t->msg, sizeof t->msg, "%s", weft_strerror(-t->bio_errno));
		} else if (ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
			snprintf(t->msg, sizeof t->msg, "%s", weft_strerror(WEFT_EEOF));
		} else if (ERR_GET_REASON(err) == SSL_R_CERTIFICATE_VERIFY_FAILED &&
		           vr != X509_V_OK) {
			snprintf(t->msg, sizeof t->msg, "certificate verify failed: %s",
			         X509_verify_cert_error_string(vr));
		} else {
			const char *why = ERR_reason_error_string(err);
			snprintf(t->msg, sizeof t->msg, "%s", why ? why : "TLS error");
		}
		break;
	}
	default:
		snprintf(t->msg, sizeof t->msg, "TLS error %d", e);
		break;
	}
	ERR_clear_error();
	t->failed = 1;
	return ST_FAIL;
}

static int push_fail(lua_State *L, ltls_t *t)
{
	luaL_pushfail(L);
	lua_pushstring(L, t->msg[0] ? t->msg : "TLS error");
	return 2;
}

static int push_fail_partial(lua_State *L, ltls_t *t, lua_Integer partial)
{
	push_fail(L, t);
	lua_pushinteger(L, partial);
	return 3;
}

/* Before an SSL call. */
static void prepare(lua_State *L, ltls_t *t)
{
	ERR_clear_error();
	t->bio_errno = 0;
	t->L = L;
}

/* The wake-up code (or 0 on the first call); closed when the TLS or the
 * TCP socket was closed meanwhile. */
static int tls_resumed(lua_State *L, int status, ltls_t *t)
{
	int code = status == LUA_YIELD ? lw_wakecode(L) : 0;
	if (code >= 0 && (!t->ssl || lw_sock_fd(t->s) < 0))
		code = WEFT_ECLOSED;
	return code;
}

#define TLS_OPEN(L, t)                                                                             \
	do {                                                                                       \
		if (!(t)->ssl || lw_sock_fd((t)->s) < 0)                                           \
			return lw_error((L), WEFT_ECLOSED);                                        \
	} while (0)

/* tls:handshake([expires]) -> true | nil, err */
static int handshake_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	ltls_t *t = checktls(L, 1);
	int code = tls_resumed(L, status, t);
	if (code < 0)
		return lw_error(L, code);
	if (t->failed)
		return push_fail(L, t);
	uint64_t deadline = lw_deadline(L, 2);
	for (;;) {
		prepare(L, t);
		int r = SSL_do_handshake(t->ssl);
		t->L = NULL;
		if (r == 1) {
			t->handshaken = 1;
			lua_pushboolean(L, 1);
			return 1;
		}
		int st = tls_status(t, r);
		if (st == ST_EOF)
			return lw_error(L, WEFT_ECLOSED);
		if (st == ST_FAIL)
			return push_fail(L, t);
		int rc = lw_sock_wait(L, S, t->s, st_dir(st), deadline);
		if (rc < 0)
			return lw_error(L, rc);
		if (rc == 0)
			return lw_await(L, 0, handshake_k);
	}
}

static int t_handshake(lua_State *L)
{
	lw_waiter(L, lw_S(L));
	ltls_t *t = checktls(L, 1);
	TLS_OPEN(L, t);
	lua_settop(L, 2);
	if (t->handshaken) {
		lua_pushboolean(L, 1);
		return 1;
	}
	return handshake_k(L, LUA_OK, 0);
}

/* One SSL_read of up to len bytes: > 0 bytes, 0 at a clean end (the
 * peer's close_notify), or an ST_* wait / failure as a negative value
 * (-ST_READ, -ST_WRITE, ST_FAIL). */
static ssize_t tls_read(lua_State *L, ltls_t *t, char *p, size_t len)
{
	if (t->failed)
		return ST_FAIL;
	size_t n;
	prepare(L, t);
	int r = SSL_read_ex(t->ssl, p, len, &n);
	t->L = NULL;
	if (r == 1) {
		t->handshaken = 1;
		return (ssize_t)n;
	}
	int st = tls_status(t, r);
	if (st == ST_EOF)
		return 0;
	return st == ST_FAIL ? ST_FAIL : -st;
}

/* tls:recv(buf, [maxlen], [expires]) -> n (0: the peer ended the stream) */
static int recv_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	ltls_t *t = checktls(L, 1);
	int code = tls_resumed(L, status, t);
	if (code < 0)
		return lw_error(L, code);
	size_t maxlen;
	char *p = lw_recv_args(L, 2, &maxlen);
	uint64_t deadline = lw_deadline(L, 4);
	for (;;) {
		ssize_t n = tls_read(L, t, p, maxlen);
		if (n >= 0) {
			if (n > 0 && lw_fair(L, S))
				return lw_fair_yield(L, S, (lua_KContext)n, lw_return_ctx_k);
			lua_pushinteger(L, (lua_Integer)n);
			return 1;
		}
		if (n == ST_FAIL)
			return push_fail(L, t);
		int rc = lw_sock_wait(L, S, t->s, st_dir((int)-n), deadline);
		if (rc < 0)
			return lw_error(L, rc);
		if (rc == 0)
			return lw_await(L, 0, recv_k);
	}
}

static int t_recv(lua_State *L)
{
	lw_waiter(L, lw_S(L));
	ltls_t *t = checktls(L, 1);
	size_t maxlen;
	lw_recv_args(L, 2, &maxlen);
	/* As on TCP: 0 from recv means the end of the stream. */
	if (maxlen == 0)
		return luaL_argerror(L, lua_isnoneornil(L, 3) ? 2 : 3,
		                     "tls recv needs room for at least 1 byte");
	TLS_OPEN(L, t);
	lua_settop(L, 4);
	return recv_k(L, LUA_OK, 0);
}

/* tls:recvn(buf, len, [expires]) -> buf, len | nil, err, got */
static int recvn_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	ltls_t *t = checktls(L, 1);
	size_t got = (size_t)ctx;
	int code = tls_resumed(L, status, t);
	if (code < 0)
		return lw_error_partial(L, code, (lua_Integer)got);
	size_t len;
	char *p = lw_recv_args(L, 2, &len);
	uint64_t deadline = lw_deadline(L, 4);
	while (got < len) {
		ssize_t n = tls_read(L, t, p + got, len - got);
		if (n > 0) {
			got += (size_t)n;
			continue;
		}
		if (n == 0)
			return lw_error_partial(L, WEFT_EEOF, (lua_Integer)got);
		if (n == ST_FAIL)
			return push_fail_partial(L, t, (lua_Integer)got);
		int rc = lw_sock_wait(L, S, t->s, st_dir((int)-n), deadline);
		if (rc < 0)
			return lw_error_partial(L, rc, (lua_Integer)got);
		if (rc == 0)
			return lw_await(L, (lua_KContext)got, recvn_k);
	}
	lua_settop(L, 2);
	lua_pushinteger(L, (lua_Integer)len);
	return 2;
}

static int t_recvn(lua_State *L)
{
	lw_waiter(L, lw_S(L));
	ltls_t *t = checktls(L, 1);
	size_t len;
	luaL_checkinteger(L, 3);
	lw_recv_args(L, 2, &len);
	TLS_OPEN(L, t);
	lua_settop(L, 4);
	return recvn_k(L, LUA_OK, 0);
}

/* tls:recvall([expires], [limit]) -> buf, len | nil, err, buf, len, as
 * tcp:recvall: the growing buffer sits at index 4 and never grows past
 * limit + 1 bytes; more than limit is nil, "too_large". */
static int recvall_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	ltls_t *t = checktls(L, 1);
	size_t got = (size_t)ctx;
	lw_buffer_t *b = lua_touserdata(L, 4);
	int code = tls_resumed(L, status, t);
	uint64_t deadline = lw_deadline(L, 2);
	size_t limit = lw_recvall_limit(L, 3);
	int failed = 0;
	while (code >= 0 && !failed) {
		if ((code = lw_recvall_room(b, &got, limit)) < 0)
			break;
		ssize_t n = tls_read(L, t, b->data + got, b->len - got);
		if (n > 0) {
			got += (size_t)n;
			continue;
		}
		if (n == 0) {
			lw_buffer_resize(b, got);
			lua_pushinteger(L, (lua_Integer)got);
			return 2;
		}
		if (n == ST_FAIL) {
			failed = 1;
			break;
		}
		int rc = lw_sock_wait(L, S, t->s, st_dir((int)-n), deadline);
		if (rc == 0)
			return lw_await(L, (lua_KContext)got, recvall_k);
		if (rc < 0)
			code = rc;
	}
	lw_buffer_resize(b, got);
	if (failed)
		push_fail(L, t);
	else
		lw_error(L, code);
	lua_pushvalue(L, 4);
	lua_pushinteger(L, (lua_Integer)got);
	return 4;
}

static int t_recvall(lua_State *L)
{
	lw_waiter(L, lw_S(L));
	ltls_t *t = checktls(L, 1);
	lw_recvall_limit(L, 3);
	TLS_OPEN(L, t);
	lua_settop(L, 3);
	lw_buffer_push(L, NULL, 0);
	return recvall_k(L, LUA_OK, 0);
}

/* tls:send(data, [len], [expires]) -> true | nil, err, sent */
static int send_k(lua_State *L, int status, lua_KContext ctx)
{
	lw_state_t *S = lw_S(L);
	ltls_t *t = checktls(L, 1);
	size_t sent = (size_t)ctx;
	int code = tls_resumed(L, status, t);
	if (code < 0)
		return lw_error_partial(L, code, (lua_Integer)sent);
	if (t->failed)
		return push_fail_partial(L, t, (lua_Integer)sent);
	size_t len;
	const char *p = lw_send_args(L, 2, &len);
	uint64_t deadline = lw_deadline(L, 4);
	while (sent < len) {
		size_t n;
		prepare(L, t);
		int r = SSL_write_ex(t->ssl, p + sent, len - sent, &n);
		t->L = NULL;
		if (r == 1) {
			t->handshaken = 1;
			sent += n;
			continue;
		}
		int st = tls_status(t, r);
		if (st == ST_EOF)
			return lw_error_partial(L, WEFT_ECLOSED, (lua_Integer)sent);
		if (st == ST_FAIL)
			return push_fail_partial(L, t, (lua_Integer)sent);
		int rc = lw_sock_wait(L, S, t->s, st_dir(st), deadline);
		if (rc < 0)
			return lw_error_partial(L, rc, (lua_Integer)sent);
		if (rc == 0)
			return lw_await(L, (lua_KContext)sent, send_k);
	}
	if (len && lw_fair(L, S))
		return lw_fair_yield(L, S, 0, lw_return_true_k);
	lua_pushboolean(L, 1);
	return 1;
}

static int t_send(lua_State *L)
{
	lw_waiter(L, lw_S(L));
	ltls_t *t = checktls(L, 1);
	size_t len;
	lw_send_args(L, 2, &len);
	TLS_OPEN(L, t);
	lua_settop(L, 4);
	return send_k(L, LUA_OK, 0);
}

/* Send close_notify once, if the connection is up, without waiting: a peer
 * that does not read it in time simply does not get it. */
static void close_notify(ltls_t *t)
{
	if (t->ssl && t->handshaken && !t->failed && lw_sock_fd(t->s) >= 0 &&
	    !(SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN)) {
		ERR_clear_error();
		SSL_shutdown(t->ssl);
		ERR_clear_error();
	}
}

/* tls:_close_notify() (shutdown('w') in weft.tls sends it, then shuts the
 * TCP socket's write side) */
static int t_close_notify(lua_State *L)
{
	ltls_t *t = checktls(L, 1);
	TLS_OPEN(L, t);
	close_notify(t);
	lua_pushboolean(L, 1);
	return 1;
}

/* tls:close() -> true.  close_notify, then the TCP socket is closed. */
static int t_close(lua_State *L)
{
	ltls_t *t = checktls(L, 1);
	if (t->ssl) {
		close_notify(t);
		SSL_free(t->ssl);
		t->ssl = NULL;
	}
	if (lua_getiuservalue(L, 1, 1) == LUA_TUSERDATA && lua_getfield(L, -1, "close")) {
		lua_pushvalue(L, -2);
		lua_call(L, 1, 0);
	}
	lua_pushboolean(L, 1);
	return 1;
}

/* __gc: the SSL object goes; the TCP socket closes with its own __gc. */
static int t_gc(lua_State *L)
{
	ltls_t *t = checktls(L, 1);
	if (t->ssl) {
		SSL_free(t->ssl);
		t->ssl = NULL;
	}
	return 0;
}

/* tls:tcp() -> the TCP socket under it */
static int t_tcp(lua_State *L)
{
	checktls(L, 1);
	lua_getiuservalue(L, 1, 1);
	return 1;
}

static int t_getalpn(lua_State *L)
{
	ltls_t *t = checktls(L, 1);
	const unsigned char *p = NULL;
	unsigned len = 0;
	if (t->ssl)
		SSL_get0_alpn_selected(t->ssl, &p, &len);
	if (!p || !len)
		return 0;
	lua_pushlstring(L, (const char *)p, len);
	return 1;
}

static int t_getsniname(lua_State *L)
{
	ltls_t *t = checktls(L, 1);
	const char *name = t->ssl ? SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
	if (!name)
		return 0;
	lua_pushstring(L, name);
	return 1;
}

/* tls:info([field]) -> {protocol, cipher, bits, session_reused} | value */
static int t_info(lua_State *L)
{
	ltls_t *t = checktls(L, 1);
	lua_settop(L, 2);
	if (!t->ssl || !t->handshaken)
		return 0;
	lua_createtable(L, 0, 4);
	lua_pushstring(L, SSL_get_version(t->ssl));
	lua_setfield(L, -2, "protocol");
	lua_pushstring(L, SSL_get_cipher_name(t->ssl));
	lua_setfield(L, -2, "cipher");
	lua_pushinteger(L, SSL_get_cipher_bits(t->ssl, NULL));
	lua_setfield(L, -2, "bits");
	lua_pushboolean(L, SSL_session_reused(t->ssl));
	lua_setfield(L, -2, "session_reused");
	if (!lua_isnoneornil(L, 2)) {
		lua_pushvalue(L, 2);
		lua_gettable(L, -2);
	}
	return 1;
}

/* tls:getpeerverification() -> true | false, reason */
static int t_getpeerverification(lua_State *L)
{
	ltls_t *t = checktls(L, 1);
	if (!t->ssl || !t->handshaken) {
		lua_pushboolean(L, 0);
		lua_pushstring(L, "no handshake");
		return 2;
	}
	X509 *x = SSL_get0_peer_certificate(t->ssl);
	long vr = SSL_get_verify_result(t->ssl);
	if (x && vr == X509_V_OK) {
		lua_pushboolean(L, 1);
		return 1;
	}
	lua_pushboolean(L, 0);
	lua_pushstring(L, x ? X509_verify_cert_error_string(vr) : "no peer certificate");
	return 2;
}

static void push_bio(lua_State *L, BIO *bio)
{
	char *p;
	long n = BIO_get_mem_data(bio, &p);
	lua_pushlstring(L, p, n > 0 ? (size_t)n : 0);
}

static void push_name(lua_State *L, const X509_NAME *name)
{
	BIO *bio = BIO_new(BIO_s_mem());
	if (!bio) {
		lua_pushliteral(L, "");
		return;
	}
	X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
	push_bio(L, bio);
	BIO_free(bio);
}

static void push_time(lua_State *L, const ASN1_TIME *at, const char *field, const char *tfield)
{
	struct tm tm;
	if (!at || ASN1_TIME_to_tm(at, &tm) != 1)
		return;
	char buf[32];
	strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
	lua_pushstring(L, buf);
	lua_setfield(L, -3, field);
	/* Seconds since the epoch, by OpenSSL's own arithmetic (timegm is
	 * not in every C library). */
	int days = 0, secs = 0;
	ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
	if (!epoch || ASN1_TIME_diff(&days, &secs, epoch, at) != 1) {
		ASN1_TIME_free(epoch);
		return;
	}
	ASN1_TIME_free(epoch);
	lua_pushinteger(L, (lua_Integer)days * 86400 + secs);
	lua_setfield(L, -2, tfield);
}

static void push_altnames(lua_State *L, X509 *x)
{
	lua_newtable(L);
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	int ndns = 0, nip = 0, nemail = 0, nuri = 0;
	lua_newtable(L); /* dns */
	lua_newtable(L); /* ip */
	lua_newtable(L); /* email */
	lua_newtable(L); /* uri */
	int top = lua_gettop(L);
	for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		const ASN1_STRING *s = NULL;
		int at = 0, *count = NULL;
		switch (g->type) {
		case GEN_DNS:
			s = g->d.dNSName, at = top - 3, count = &ndns;
			break;
		case GEN_EMAIL:
			s = g->d.rfc822Name, at = top - 1, count = &nemail;
			break;
		case GEN_URI:
			s = g->d.uniformResourceIdentifier, at = top, count = &nuri;
			break;
		case GEN_IPADD: {
			char buf[64];
			const unsigned char *p = ASN1_STRING_get0_data(g->d.iPAddress);
			int len = ASN1_STRING_length(g->d.iPAddress);
			if ((len == 4 && inet_ntop(AF_INET, p, buf, sizeof buf)) ||
			    (len == 16 && inet_ntop(AF_INET6, p, buf, sizeof buf))) {
				lua_pushstring(L, buf);
				lua_rawseti(L, top - 2, ++nip);
			}
			continue;
		}
		default:
			continue;
		}
		lua_pushlstring(L, (const char *)ASN1_STRING_get0_data(s),
		                (size_t)ASN1_STRING_length(s));
		lua_rawseti(L, at, ++*count);
	}
	GENERAL_NAMES_free(gens);
	lua_setfield(L, top - 4, "uri");
	lua_setfield(L, top - 4, "email");
	lua_setfield(L, top - 4, "ip");
	lua_setfield(L, top - 4, "dns");
}

/* tls:getpeercertificate() -> table | nil, err */
static int t_getpeercertificate(lua_State *L)
{
	ltls_t *t = checktls(L, 1);
	X509 *x = t->ssl ? SSL_get0_peer_certificate(t->ssl) : NULL;
	if (!x) {
		luaL_pushfail(L);
		lua_pushliteral(L, "no peer certificate");
		return 2;
	}
	lua_createtable(L, 0, 10);
	push_name(L, X509_get_subject_name(x));
	lua_setfield(L, -2, "subject");
	push_name(L, X509_get_issuer_name(x));
	lua_setfield(L, -2, "issuer");
	push_altnames(L, x);
	lua_setfield(L, -2, "altnames");
	lua_pushinteger(L, X509_get_version(x) + 1);
	lua_setfield(L, -2, "version");

	lua_newtable(L); /* validity, in seconds since the epoch */
	push_time(L, X509_get0_notBefore(x), "notbefore", "notbefore");
	push_time(L, X509_get0_notAfter(x), "notafter", "notafter");
	lua_setfield(L, -2, "validity");

	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
	char *hex = bn ? BN_bn2hex(bn) : NULL;
	if (hex) {
		lua_pushstring(L, hex);
		lua_setfield(L, -2, "serial");
	}
	OPENSSL_free(hex);
	BN_free(bn);

	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	if (X509_digest(x, EVP_sha256(), md, &mdlen) == 1) {
		char fp[EVP_MAX_MD_SIZE * 3];
		for (unsigned i = 0; i < mdlen; i++)
			snprintf(fp + 3 * i, 4, "%02X%s", md[i], i + 1 < mdlen ? ":" : "");
		lua_pushstring(L, fp);
		lua_setfield(L, -2, "fingerprint");
	}

	BIO *bio = BIO_new(BIO_s_mem());
	if (bio && PEM_write_bio_X509(bio, x) == 1) {
		push_bio(L, bio);
		lua_setfield(L, -2, "pem");
	}
	BIO_free(bio);
	ERR_clear_error();
	return 1;
}

/* __index: a method, or a field of the TCP socket (local_addr, ...). */
static int t_index(lua_State *L)
{
	lua_pushvalue(L, 2);
	if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL)
		return 1;
	lua_pop(L, 1);
	const char *k = lua_tostring(L, 2);
	if (!k || (strncmp(k, "local_", 6) != 0 && strncmp(k, "remote_", 7) != 0))
		return 0;
	checktls(L, 1);
	lua_getiuservalue(L, 1, 1);
	lua_pushvalue(L, 2);
	lua_gettable(L, -2);
	return 1;
}

static int t_tostring(lua_State *L)
{
	ltls_t *t = checktls(L, 1);
	if (!t->ssl || lw_sock_fd(t->s) < 0)
		lua_pushfstring(L, "weft.tls (closed): %p", (void *)t);
	else
		lua_pushfstring(L, "weft.tls (fd %d): %p", lw_sock_fd(t->s), (void *)t);
	return 1;
}

static const luaL_Reg tls_methods[] = {
    {"handshake", t_handshake},
    {"send", t_send},
    {"recv", t_recv},
    {"recvn", t_recvn},
    {"recvall", t_recvall},
    {"close", t_close},
    {"_close_notify", t_close_notify},
    {"tcp", t_tcp},
    {"getalpn", t_getalpn},
    {"getsniname", t_getsniname},
    {"info", t_info},
    {"getpeerverification", t_getpeerverification},
    {"getpeercertificate", t_getpeercertificate},
    {NULL, NULL},
};

static const luaL_Reg tls_meta[] = {
    {"__gc", t_gc},
    {"__close", t_close},
    {"__tostring", t_tostring},
    {NULL, NULL},
};

static const luaL_Reg ctx_methods[] = {
    {"_sni", ctx_sni},
    {"mode", ctx_mode},
    {NULL, NULL},
};

static const luaL_Reg ctx_meta[] = {
    {"__gc", ctx_gc},
    {"__tostring", ctx_tostring},
    {NULL, NULL},
};

static const luaL_Reg funcs[] = {
    {"tls_context", l_context},   {"tls_wrap", l_wrap}, {"tls_isctx", l_isctx},
    {"tls_contexts", l_contexts}, {NULL, NULL},
};

void lw_open_tls(lua_State *L, lw_state_t *S)
{
	lw_newclass(L, S, LW_TLSCTX, ctx_methods, ctx_meta);
	luaL_getmetatable(L, LW_TLSCTX);
	lua_getfield(L, -1, "__index");
	lua_setfield(L, -3, "tls_context_methods");
	lua_pop(L, 1);

	luaL_newmetatable(L, LW_TLS);
	lw_register(L, S, tls_meta);
	lua_newtable(L);
	lw_register(L, S, tls_methods);
	lua_pushlightuserdata(L, S);
	lua_pushvalue(L, -2);
	lua_pushcclosure(L, t_index, 2);
	lua_setfield(L, -3, "__index");
	lua_setfield(L, -3, "tls_methods");
	lua_pop(L, 1);
	lw_register(L, S, funcs);
}
