/* Embedding weft: a C program runs several Lua states on threads of its
 * own, all sharing one weft runtime.
 *
 *   cc embed.c $(pkg-config --cflags --libs weft) -pthread -o embed
 *   ./embed [--preload]
 *
 * Each round makes a runtime and three states, attaches them (state i of
 * 3), runs each on a thread of its own and checks what each one reports.
 * The states talk: state 1 serves TCP echo to the others, they find its
 * port and hand it wake handles over named channels, it wakes them from
 * its own thread, and every state spawns jobs that any state may run.
 * Rounds differ in how they end and in the order the states close:
 * every order on the main thread after the threads are done (a state is
 * used by one thread at a time and may change hands between runs), each
 * thread closing its own state as it finishes, and weft.exit() ending
 * states that would otherwise wait forever.
 *
 * `require "weft"` loads weft.lua and the module weft/core.so from Lua's
 * paths (LUA_PATH, LUA_CPATH); the module runs on the libweft this program
 * is linked with, so the program and the module share one runtime.  With
 * --preload the states get weft.core from the program instead (what a
 * program linked with the static libweft.a must do: a module loaded from
 * the path would bring a second copy of the runtime, which weft refuses). */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <weft.h>

#define NSTATES 3

/* What every state runs; `...` is the way the round ends ("finish" or
 * "exit").  It leaves "ok ..." or an error in the global `result`. */
static const char script[] =
    "local mode = ...\n"
    "local weft = require 'weft'\n"
    "local me, n = weft.worker(), weft.workers()\n"
    "local function deadline() return weft.clock() + 20 end\n"
    "local echoed, woken = 0, nil\n"
    "weft.run(function()\n"
    "  local ports = weft.channel('ports', n)\n"
    "  local wakes = weft.channel('wakes', n)\n"
    "  if me == 1 then\n"
    "    -- echo for the others, one weft thread per connection\n"
    "    local server = assert(weft.tcp())\n"
    "    assert(server:listen('127.0.0.1', 0))\n"
    "    for _ = 2, n do assert(ports:send(server.local_port)) end\n"
    "    for _ = 2, n do\n"
    "      local c = assert(server:accept(deadline()))\n"
    "      weft.thread(function()\n"
    "        local buf = weft.buffer(4096)\n"
    "        while true do\n"
    "          local k = c:recv(buf, #buf, deadline())\n"
    "          if not k or k == 0 then break end\n"
    "          assert(c:send(buf, k))\n"
    "          echoed = echoed + k\n"
    "        end\n"
    "        c:close()\n"
    "      end)\n"
    "    end\n"
    "    server:close()\n"
    "    -- wake every other state's thread, from here\n"
    "    for _ = 2, n do\n"
    "      local m = assert(wakes:recv(deadline()))\n"
    "      assert(m.handle:wakeup('hello ' .. m.from))\n"
    "    end\n"
    "  else\n"
    "    local c = assert(weft.tcp())\n"
    "    assert(c:connect('127.0.0.1', assert(ports:recv(deadline())), deadline()))\n"
    "    local buf = weft.buffer(64)\n"
    "    for i = 1, 200 do\n"
    "      local msg = ('state %d, message %d'):format(me, i)\n"
    "      assert(c:send(msg))\n"
    "      assert(c:recvn(buf, #msg, deadline()))\n"
    "      assert(buf:tostring(1, #msg) == msg, 'echo mismatch')\n"
    "      echoed = echoed + #msg\n"
    "    end\n"
    "    c:close()\n"
    "    assert(wakes:send({handle = weft.wakehandle(), from = me}))\n"
    "    woken = weft.suspend()\n"
    "    assert(woken == 'hello ' .. me, tostring(woken))\n"
    "  end\n"
    "  -- jobs that whichever state is idle may take\n"
    "  local futures, sum = {}, 0\n"
    "  for i = 1, 30 do\n"
    "    futures[i] = assert(weft.spawn(function(x) return x * x end, i))\n"
    "  end\n"
    "  for i = 1, 30 do\n"
    "    local ok, v = futures[i]:wait(deadline())\n"
    "    assert(ok, v)\n"
    "    sum = sum + v\n"
    "  end\n"
    "  assert(sum == 9455, sum)\n"
    "  result = ('ok: state %d of %d echoed %d bytes'):format(me, n, echoed)\n"
    "  if mode == 'exit' then\n"
    "    local done = weft.channel('done', n)\n"
    "    if me == 1 then\n"
    "      for _ = 2, n do assert(done:recv(deadline())) end\n"
    "      weft.exit()\n"
    "    else\n"
    "      assert(done:send(me))\n"
    "      weft.channel('never'):recv() -- until weft.exit()\n"
    "    end\n"
    "  end\n"
    "end)\n";

typedef struct state {
	lua_State *L;
	const char *mode;
	int close_own; /* the thread closes its state when done */
	char result[512];
} state_t;

static int preload;

/* A new state attached to rt as state `index` of NSTATES.  Attaching comes
 * first, before anything requires weft. */
static lua_State *new_state(weft_runtime_t *rt, int index)
{
	lua_State *L = luaL_newstate();
	if (!L)
		return NULL;
	int rc = weft_lua_attach(L, rt, index, NSTATES);
	if (rc < 0) {
		fprintf(stderr, "embed: weft_lua_attach: %s\n", weft_lua_strerror(rc));
		lua_close(L);
		return NULL;
	}
	luaL_openlibs(L);
	if (preload) {
		luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
		lua_pushcfunction(L, luaopen_weft_core);
		lua_setfield(L, -2, "weft.core");
		lua_pop(L, 1);
	}
	return L;
}

/* A thread of the program: it runs its state's script to the end. */
static void *state_main(void *arg)
{
	state_t *s = arg;
	lua_State *L = s->L;
	if (luaL_loadstring(L, script) != LUA_OK) {
		snprintf(s->result, sizeof s->result, "%s", lua_tostring(L, -1));
	} else {
		lua_pushstring(L, s->mode);
		if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
			snprintf(s->result, sizeof s->result, "%s", lua_tostring(L, -1));
		} else {
			lua_getglobal(L, "result");
			const char *r = lua_tostring(L, -1);
			snprintf(s->result, sizeof s->result, "%s", r ? r : "no result");
		}
	}
	if (s->close_own) {
		lua_close(L);
		s->L = NULL;
	}
	return NULL;
}

/* One round: `order` is the order the main thread closes the states in
 * (0-based indexes), or NULL for each thread closing its own. */
static int run_round(const char *mode, const int *order)
{
	weft_runtime_t *rt;
	int rc = weft_lua_runtime_new(&rt);
	if (rc < 0) {
		fprintf(stderr, "embed: weft_lua_runtime_new: %s\n", weft_lua_strerror(rc));
		return 0;
	}
	state_t st[NSTATES];
	pthread_t tid[NSTATES];
	int ok = 1, made = 0, started = 0;
	for (int i = 0; i < NSTATES; i++) {
		st[i] = (state_t){new_state(rt, i + 1), mode, order == NULL, ""};
		if (!st[i].L)
			break;
		made++;
	}
	/* The states hold the runtime now. */
	weft_lua_runtime_free(rt);
	if (made < NSTATES)
		ok = 0;
	for (int i = 0; ok && i < NSTATES; i++) {
		if (pthread_create(&tid[i], NULL, state_main, &st[i]) != 0) {
			fprintf(stderr, "embed: cannot start a thread\n");
			ok = 0;
			break;
		}
		started++;
	}
	for (int i = 0; i < started; i++)
		pthread_join(tid[i], NULL);
	for (int i = 0; i < started; i++) {
		int good = strncmp(st[i].result, "ok:", 3) == 0;
		printf("%s %s: %s\n", good ? "  " : "!!", mode, st[i].result);
		ok = ok && good;
	}
	/* The threads are done: this thread takes the states over and closes
	 * them in the order asked (or closes what was never started). */
	for (int k = 0; k < made; k++) {
		int i = order ? order[k] : k;
		if (st[i].L)
			lua_close(st[i].L);
	}
	return ok;
}

int main(int argc, char **argv)
{
	preload = argc > 1 && strcmp(argv[1], "--preload") == 0;
	static const int orders[][NSTATES] = {
	    {0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0},
	};
	int rounds = 0, failed = 0;
	for (size_t k = 0; k < sizeof orders / sizeof orders[0]; k++) {
		printf("round %d: finish, close in order %d %d %d\n", ++rounds, orders[k][0] + 1,
		       orders[k][1] + 1, orders[k][2] + 1);
		failed += !run_round("finish", orders[k]);
	}
	printf("round %d: finish, each thread closes its own state\n", ++rounds);
	failed += !run_round("finish", NULL);
	printf("round %d: weft.exit(), close in order 3 1 2\n", ++rounds);
	failed += !run_round("exit", (const int[]){2, 0, 1});
	printf("round %d: weft.exit(), each thread closes its own state\n", ++rounds);
	failed += !run_round("exit", NULL);
	printf("%d rounds, %d failed\n", rounds, failed);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
