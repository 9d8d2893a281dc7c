/* The weft launcher: like lua5.4, but the script runs inside a weft thread
 * and the loop runs until every thread has finished.
 *
 *   weft [options] [script [args]]
 *
 * main() stays small: make a state, run pmain protected, report. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "weft.h"
#include "slab.h"
#include "weft-os.h"

static const char *progname = "weft";

/* The options, as weft(1) lists them. */
static void print_usage(FILE *f)
{
	fprintf(f,
		"usage: %s [options] [script [args]]\n"
		"Available options are:\n"
		"  -e stat   execute string 'stat'\n"
		"  -l mod    require library 'mod' into global 'mod'\n"
		"  -l g=mod  require library 'mod' into global 'g'\n"
		"  -m        run the script in the main thread (no implicit loop)\n"
		"  -t N      run N workers (threads, each with its own Lua state)\n"
		"            sharing one runtime; 0 = one per CPU (default 1, at most %d)\n"
		"  -M size   limit each worker's Lua memory to size bytes (suffix\n"
		"            k, m or g); an allocation over it fails in the thread\n"
		"            that made it\n"
		"  -v        show version information\n"
		"  -E        ignore environment variables\n"
		"  -W        turn warnings on\n"
		"  --help    show this help and exit\n"
		"  --        stop handling options\n"
		"  -         stop handling options and execute stdin\n",
		progname, WEFT_LUA_MAX_STATES);
}

static void usage(const char *badoption)
{
	if (badoption[1] == 'e' || badoption[1] == 'l' || badoption[1] == 'M' || badoption[1] == 't')
		fprintf(stderr, "%s: '%s' needs argument\n", progname, badoption);
	else
		fprintf(stderr, "%s: unrecognized option '%s'\n", progname, badoption);
	print_usage(stderr);
}

static void message(const char *msg)
{
	fprintf(stderr, "%s: %s\n", progname, msg);
	fflush(stderr);
}

/* Report a failed status with the error at the top of the stack. */
static int report(lua_State *L, int status)
{
	if (status != LUA_OK) {
		const char *msg = lua_tostring(L, -1);
		if (!msg)
			msg = lua_pushfstring(L, "(error object is a %s value)",
					      luaL_typename(L, -1));
		message(msg);
		lua_pop(L, 1);
	}
	return status;
}

static int msghandler(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (msg == NULL) {
		if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
			return 1;
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
}

static int docall(lua_State *L, int narg, int nres)
{
	int base = lua_gettop(L) - narg;
	lua_pushcfunction(L, msghandler);
	lua_insert(L, base);
	int status = lua_pcall(L, narg, nres, base);
	lua_remove(L, base);
	return status;
}

static int dochunk(lua_State *L, int status)
{
	if (status == LUA_OK)
		status = docall(L, 0, 0);
	return report(L, status);
}

static int dostring(lua_State *L, const char *s, const char *name)
{
	return dochunk(L, luaL_loadbuffer(L, s, strlen(s), name));
}

/* -l [g=]mod */
static int dolibrary(lua_State *L, char *globname)
{
	char *modname = strchr(globname, '=');
	if (modname == NULL) {
		modname = globname;
		globname = strrchr(modname, '.');
		globname = globname ? globname + 1 : modname;
	} else {
		*modname++ = '\0';
	}
	lua_getglobal(L, "require");
	lua_pushstring(L, modname);
	int status = docall(L, 1, 1);
	if (status == LUA_OK)
		lua_setglobal(L, globname);
	return report(L, status);
}

static void print_version(void)
{
	printf("weft %s (%s)\n", PACKAGE_VERSION, LUA_RELEASE);
	fflush(stdout);
}

/* arg table: script at 0, its arguments 1.., options before it negative. */
static void createargtable(lua_State *L, char **argv, int argc, int script)
{
	if (script == argc)
		script = 0; /* no script name: arg[0] is the program */
	lua_createtable(L, argc - script - 1, script + 1);
	for (int i = 0; i < argc; i++) {
		lua_pushstring(L, argv[i]);
		lua_rawseti(L, -2, i - script);
	}
	lua_setglobal(L, "arg");
}

enum { HAS_E = 1, HAS_V = 2, HAS_MAIN = 4, HAS_BAD = 8, HAS_BIGE = 16 };

/* Scan options; returns the index of the script (argc if none), or of the
 * bad option with HAS_BAD set. */
static int collectargs(char **argv, int *flags)
{
	int i;
	for (i = 1; argv[i] != NULL; i++) {
		if (argv[i][0] != '-')
			return i;
		switch (argv[i][1]) {
		case '-':
			if (argv[i][2] != '\0') {
				*flags |= HAS_BAD;
				return i;
			}
			return i + 1;
		case '\0':
			return i; /* '-': the script is stdin */
		case 'E':
		case 'W':
		case 'm':
		case 'v':
			if (argv[i][2] != '\0') {
				*flags |= HAS_BAD;
				return i;
			}
			*flags |= argv[i][1] == 'E' ? HAS_BIGE
				  : argv[i][1] == 'm' ? HAS_MAIN
				  : argv[i][1] == 'v' ? HAS_V
						      : 0;
			break;
		case 'e':
			*flags |= HAS_E;
			/* fallthrough */
		case 't':
		case 'M':
		case 'l':
			if (argv[i][2] == '\0') {
				i++;
				if (argv[i] == NULL || argv[i][0] == '-') {
					*flags |= HAS_BAD;
					return i - 1;
				}
			}
			break;
		default:
			*flags |= HAS_BAD;
			return i;
		}
	}
	return i;
}

/* Run -e and -l in order. */
static int runargs(lua_State *L, char **argv, int n)
{
	for (int i = 1; i < n; i++) {
		int opt = argv[i][1];
		if (opt == 'W') {
			lua_warning(L, "@on", 0);
			continue;
		}
		if (opt == 't' || opt == 'M') {
			if (argv[i][2] == '\0')
				i++;
			continue;
		}
		if (opt != 'e' && opt != 'l')
			continue;
		char *extra = argv[i] + 2;
		if (*extra == '\0')
			extra = argv[++i];
		int status = opt == 'e' ? dostring(L, extra, "=(command line)")
					: dolibrary(L, extra);
		if (status != LUA_OK)
			return 0;
	}
	return 1;
}

static int handle_luainit(lua_State *L)
{
	const char *name = "=LUA_INIT_5_4";
	const char *init = getenv(name + 1);
	if (init == NULL) {
		name = "=LUA_INIT";
		init = getenv(name + 1);
	}
	if (init == NULL)
		return LUA_OK;
	if (init[0] == '@')
		return dochunk(L, luaL_loadfile(L, init + 1));
	return dostring(L, init, name);
}

/* Make weft.core available without a C module on the path (it is linked
 * in), and the installed Lua files findable even for a prefix that is not
 * on Lua's default path. */
static void setup_paths(lua_State *L)
{
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
	lua_pushcfunction(L, luaopen_weft_core);
	lua_setfield(L, -2, "weft.core");
	lua_pop(L, 1);
	lua_getglobal(L, "package");
	lua_getfield(L, -1, "path");
	lua_pushfstring(L, "%s;%s/?.lua;%s/?/init.lua", lua_tostring(L, -1), WEFT_LMOD, WEFT_LMOD);
	lua_setfield(L, -3, "path");
	lua_pop(L, 2);
}

static int pmain(lua_State *L)
{
	int argc = (int)lua_tointeger(L, 1);
	char **argv = (char **)lua_touserdata(L, 2);
	int worker_index = (int)lua_tointeger(L, 3);
	int flags = 0;
	int script = collectargs(argv, &flags);
	if (flags & HAS_BAD) {
		usage(argv[script]);
		return 0;
	}
	luaL_checkversion(L);
	if (flags & HAS_BIGE) {
		lua_pushboolean(L, 1);
		lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
	}
	luaL_openlibs(L);
	setup_paths(L);
	int sidx = script;
	createargtable(L, argv, argc, sidx);
	lua_gc(L, LUA_GCRESTART);
	lua_gc(L, LUA_GCGEN, 0, 0);
	if ((flags & HAS_V) && worker_index == 1)
		print_version();
	if (!(flags & HAS_BIGE) && handle_luainit(L) != LUA_OK)
		return 0;
	if (!runargs(L, argv, script))
		return 0;
	int noscript = sidx >= argc;
	if (noscript && (flags & (HAS_E | HAS_V))) {
		lua_pushboolean(L, 1);
		return 1;
	}

	/* Load the script (stdin for '-' or when there is none). */
	const char *fname = noscript || strcmp(argv[sidx], "-") == 0 ? NULL : argv[sidx];
	int status = luaL_loadfile(L, fname);
	if (status != LUA_OK)
		return report(L, status), 0;
	int nargs = 0;
	if (!noscript) {
		for (int i = sidx + 1; i < argc; i++)
			lua_pushstring(L, argv[i]);
		nargs = argc - sidx - 1;
	}
	if (flags & HAS_MAIN) {
		if (report(L, docall(L, nargs, 0)) != LUA_OK)
			return 0;
		lua_pushboolean(L, 1);
		return 1;
	}
	/* weft.run(chunk, args...): errors come back with the traceback of
	 * the thread that failed. */
	lua_getglobal(L, "require");
	lua_pushliteral(L, "weft");
	if (report(L, docall(L, 1, 1)) != LUA_OK)
		return 0;
	lua_getfield(L, -1, "run");
	lua_remove(L, -2);
	lua_insert(L, -(nargs + 2));
	status = lua_pcall(L, nargs + 1, 0, 0);
	if (report(L, status) != LUA_OK)
		return 0;
	lua_pushboolean(L, 1);
	return 1;
}

/* Each worker's Lua state allocates from a slab of its own (lib/slab.h:
 * small blocks without the C library's per-block header and locking; a
 * sleeping coroutine costs about 5% less).  A state runs on one thread at
 * a time, which is what a slab asks.
 *
 * -M: the state also counts its memory against a limit.  An allocation
 * that would pass the limit fails; Lua then collects garbage and tries
 * once more, and if that fails too raises a memory error in the thread
 * that asked.  The scheduler reports that error protected (lsched.c), so
 * the failing thread ends and its worker goes on. */
typedef struct warnstate {
	int on, cont; /* warnings on; a message is in pieces so far */
} warnstate_t;

typedef struct memstate {
	weft_slab_t *slab;
	size_t used, limit; /* limit 0: none */
	warnstate_t warn;   /* what the state's warning function keeps */
} memstate_t;

static size_t mem_limit; /* from -M; 0 = none */

static void *state_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	memstate_t *m = ud;
	size_t old = ptr ? osize : 0;
	if (m->limit && nsize > old && m->used - old + nsize > m->limit)
		return NULL;
	void *p = weft_slab_realloc(m->slab, ptr, osize, nsize);
	if (p == NULL && nsize > 0)
		return NULL;
	m->used = m->used - old + nsize;
	return p;
}

/* "-M size": bytes with an optional k, m or g.  0 when invalid. */
static size_t parse_size(const char *v)
{
	char *end;
	errno = 0;
	unsigned long long n = v ? strtoull(v, &end, 10) : 0;
	if (!v || end == v || errno)
		return 0;
	unsigned long long mul = 1;
	switch (*end) {
	case 'k': case 'K': mul = 1ull << 10; end++; break;
	case 'm': case 'M': mul = 1ull << 20; end++; break;
	case 'g': case 'G': mul = 1ull << 30; end++; break;
	}
	if (*end || n == 0 || n > SIZE_MAX / mul)
		return 0;
	return (size_t)(n * mul);
}

/* -M before the script: the limit, or -1 when it is malformed. */
static int memory_limit(char **argv)
{
	for (int i = 1; argv[i] && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--") == 0 || strcmp(argv[i], "-") == 0)
			break;
		if (argv[i][1] == 'e' || argv[i][1] == 'l' || argv[i][1] == 't') {
			if (argv[i][2] == '\0' && argv[i + 1])
				i++;
			continue;
		}
		if (argv[i][1] != 'M')
			continue;
		const char *v = argv[i][2] ? argv[i] + 2 : argv[i + 1];
		mem_limit = parse_size(v);
		if (mem_limit < 1024 * 1024) {
			fprintf(stderr, "%s: -M wants a size of at least 1m (bytes, or with k, m, g)\n",
				progname);
			return -1;
		}
		if (argv[i][2] == '\0')
			i++;
	}
	return 0;
}

static int panic(lua_State *L)
{
	const char *msg = lua_tostring(L, -1);
	fprintf(stderr, "%s: unprotected error: %s\n", progname, msg ? msg : "?");
	return 0;
}

/* Warnings, as the stand-alone interpreter shows them (luaL_newstate
 * installs the same behaviour; a state made with lua_newstate has none):
 * off until "@on", then each message, which may come in pieces, goes to
 * stderr on one line.  "@off" turns them off again. */
static void warn_control(warnstate_t *w, const char *msg)
{
	if (strcmp(msg, "@on") == 0)
		w->on = 1;
	else if (strcmp(msg, "@off") == 0)
		w->on = 0;
}

static void warn_fn(void *ud, const char *msg, int tocont)
{
	warnstate_t *w = ud;
	if (!w->cont && msg[0] == '@') {
		if (!tocont)
			warn_control(w, msg);
		return;
	}
	if (w->on) {
		if (!w->cont)
			fputs("Lua warning: ", stderr);
		fputs(msg, stderr);
		if (!tocont) {
			fputc('\n', stderr);
			fflush(stderr);
		}
	}
	w->cont = tocont;
}

static lua_State *new_state(memstate_t *m)
{
	m->used = 0;
	m->limit = mem_limit;
	/* WEFT_SLAB=0: every block from the C library, for memory checkers. */
	const char *e = getenv("WEFT_SLAB");
	m->slab = weft_slab_new(e && strcmp(e, "0") == 0);
	if (!m->slab)
		return NULL;
	lua_State *L = lua_newstate(state_alloc, m);
	if (L) {
		lua_atpanic(L, panic);
		m->warn.on = m->warn.cont = 0;
		lua_setwarnf(L, warn_fn, &m->warn);
	} else
		weft_slab_destroy(m->slab);
	return L;
}

static void close_state(lua_State *L, memstate_t *m)
{
	lua_close(L);
	weft_slab_destroy(m->slab);
}

/* Run the program in a new state: the whole launcher for one worker.
 * Returns whether it succeeded. */
static int run_state(int argc, char **argv, weft_runtime_t *rt, int index, int count)
{
	memstate_t mem;
	lua_State *L = new_state(&mem);
	if (L == NULL) {
		message("cannot create state: not enough memory");
		return 0;
	}
	int rc = rt ? weft_lua_attach(L, rt, index, count) : 0;
	if (rc < 0) {
		fprintf(stderr, "%s: cannot attach worker %d: %s\n", progname, index,
			weft_lua_strerror(rc));
		close_state(L, &mem);
		return 0;
	}
	lua_gc(L, LUA_GCSTOP);
	lua_pushcfunction(L, pmain);
	lua_pushinteger(L, argc);
	lua_pushlightuserdata(L, argv);
	lua_pushinteger(L, index);
	int status = lua_pcall(L, 3, 1, 0);
	int result = lua_toboolean(L, -1);
	report(L, status);
	close_state(L, &mem);
	return result && status == LUA_OK;
}

typedef struct worker_arg {
	int argc, index, count, ok;
	char **argv;
	weft_runtime_t *rt;
} worker_arg_t;

static void *worker_main(void *p)
{
	worker_arg_t *a = p;
	a->ok = run_state(a->argc, a->argv, a->rt, a->index, a->count);
	return NULL;
}

/* --help among the options (before the script). */
static int wants_help(char **argv)
{
	for (int i = 1; argv[i] && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--help") == 0)
			return 1;
		if (strcmp(argv[i], "--") == 0 || strcmp(argv[i], "-") == 0)
			break;
		if (strchr("elt", argv[i][1]) && argv[i][1] && argv[i][2] == '\0' && argv[i + 1])
			i++;
	}
	return 0;
}

/* -t N (or -tN) before the script: the number of workers; 0 = CPUs. */
static int thread_count(char **argv)
{
	for (int i = 1; argv[i] && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "--") == 0 || strcmp(argv[i], "-") == 0)
			break;
		if (argv[i][1] == 'e' || argv[i][1] == 'l') {
			if (argv[i][2] == '\0' && argv[i + 1])
				i++;
			continue;
		}
		if (argv[i][1] != 't')
			continue;
		const char *v = argv[i][2] ? argv[i] + 2 : argv[i + 1];
		char *end;
		long n = v ? strtol(v, &end, 10) : -1;
		if (!v || *end || n < 0 || n > WEFT_LUA_MAX_STATES) {
			fprintf(stderr, "%s: -t wants a number of workers from 0 to %d\n", progname,
				WEFT_LUA_MAX_STATES);
			return -1;
		}
		if (n == 0) {
			long cpus = weft_os_ncpu();
			n = cpus < 1 ? 1 : cpus > WEFT_LUA_MAX_STATES ? WEFT_LUA_MAX_STATES : cpus;
		}
		return (int)n;
	}
	return 1;
}

int main(int argc, char **argv)
{
	if (argv[0] && argv[0][0])
		progname = argv[0];
	if (wants_help(argv)) {
		print_usage(stdout);
		return EXIT_SUCCESS;
	}
	weft_os_init();
	int n = thread_count(argv);
	if (n < 0 || memory_limit(argv) < 0)
		return weft_os_finish(EXIT_FAILURE);
	if (n == 1)
		return weft_os_finish(run_state(argc, argv, NULL, 1, 1) ? EXIT_SUCCESS : EXIT_FAILURE);

	/* N workers: each thread runs the whole program in its own state,
	 * all attached to one runtime (one poller). */
	weft_runtime_t *rt;
	if (weft_lua_runtime_new(&rt) < 0) {
		message("cannot create the runtime");
		return EXIT_FAILURE;
	}
	worker_arg_t *args = calloc((size_t)n, sizeof *args);
	weft_os_thread_t *tids = calloc((size_t)n, sizeof *tids);
	if (!args || !tids) {
		message("not enough memory");
		return EXIT_FAILURE;
	}
	int started = 0;
	for (int i = 0; i < n; i++) {
		args[i] = (worker_arg_t){argc, i + 1, n, 0, argv, rt};
		if (weft_os_thread_start(&tids[i], worker_main, &args[i]) != 0) {
			message("cannot start a worker thread");
			break;
		}
		started++;
	}
	int ok = started == n;
	for (int i = 0; i < started; i++) {
		weft_os_thread_join(tids[i]);
		ok = ok && args[i].ok;
	}
	weft_lua_runtime_free(rt);
	free(args);
	free(tids);
	return weft_os_finish(ok ? EXIT_SUCCESS : EXIT_FAILURE);
}
