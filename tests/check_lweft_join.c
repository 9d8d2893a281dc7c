/* Two Lua states on two threads share one poller: the second joins the
 * first's runtime with weft.epoll_fd(fd), then they talk over TCP while
 * both loops run at once.  Events harvested by either thread must reach
 * the state that owns the socket. */
#include "config.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "checkutil.h"
#include "lweft.h"

#define ROUNDS 2000

static lua_State *new_state(void)
{
	lua_State *L = luaL_newstate();
	ck_assert_ptr_nonnull(L);
	luaL_openlibs(L);
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
	lua_pushcfunction(L, weft__open);
	lua_setfield(L, -2, "weft.core");
	lua_pop(L, 1);
	return L;
}

/* Run chunk in L; on failure copy the message to err. */
static int run(lua_State *L, const char *chunk, int nres, char *err, size_t errsize)
{
	if (luaL_loadstring(L, chunk) != LUA_OK || lua_pcall(L, 0, nres, 0) != LUA_OK) {
		snprintf(err, errsize, "%s", lua_tostring(L, -1));
		return -1;
	}
	return 0;
}

typedef struct job {
	lua_State *L;
	const char *chunk;
	char err[512];
	int rc;
} job_t;

static void *thread_main(void *arg)
{
	job_t *j = arg;
	j->rc = run(j->L, j->chunk, 0, j->err, sizeof j->err);
	return NULL;
}

static const char *server_setup =
	"local weft = require 'weft'\n"
	"server = assert(weft.tcp())\n"
	"assert(server:listen('127.0.0.1', 0))\n"
	"return weft.epoll_fd(), server.local_port";

static const char *server_loop =
	"local weft = require 'weft'\n"
	"weft.run(function()\n"
	"  local c = assert(server:accept(weft.clock() + 20))\n"
	"  local buf = weft.buffer(4096)\n"
	"  while true do\n"
	"    local n = assert(c:recv(buf, #buf, weft.clock() + 20))\n"
	"    if n == 0 then break end\n"
	"    assert(c:send(buf, n))\n"
	"  end\n"
	"  c:close(); server:close()\n"
	"end)";

START_TEST(test_join_and_echo)
{
	char err[512];
	lua_State *A = new_state();
	ck_assert_msg(run(A, server_setup, 2, err, sizeof err) == 0, "%s", err);
	lua_Integer epfd = lua_tointeger(A, -2);
	lua_Integer port = lua_tointeger(A, -1);
	lua_pop(A, 2);

	lua_State *B = new_state();
	char chunk[2048];
	snprintf(chunk, sizeof chunk,
		 "local weft = require 'weft'\n"
		 "assert(weft.epoll_fd(%lld) == %lld, 'join failed')\n"
		 "assert(weft.epoll_fd() == %lld)\n"
		 "weft.run(function()\n"
		 "  local c = assert(weft.tcp())\n"
		 "  assert(c:connect('127.0.0.1', %lld, weft.clock() + 20))\n"
		 "  local buf = weft.buffer(64)\n"
		 "  for i = 1, %d do\n"
		 "    local msg = ('ping %%d'):format(i)\n"
		 "    assert(c:send(msg))\n"
		 "    assert(c:recvn(buf, #msg, weft.clock() + 20))\n"
		 "    assert(buf:tostring(1, #msg) == msg, 'echo mismatch')\n"
		 "  end\n"
		 "  c:close()\n"
		 "end)",
		 (long long)epfd, (long long)epfd, (long long)epfd, (long long)port, ROUNDS);

	job_t ja = {A, server_loop, "", 0}, jb = {B, chunk, "", 0};
	pthread_t ta, tb;
	ck_assert_int_eq(pthread_create(&ta, NULL, thread_main, &ja), 0);
	ck_assert_int_eq(pthread_create(&tb, NULL, thread_main, &jb), 0);
	pthread_join(tb, NULL);
	pthread_join(ta, NULL);
	ck_assert_msg(jb.rc == 0, "client: %s", jb.err);
	ck_assert_msg(ja.rc == 0, "server: %s", ja.err);
	lua_close(B);
	lua_close(A);
}
END_TEST

START_TEST(test_join_refused)
{
	char err[512];
	lua_State *L = new_state();
	/* not a weft poller */
	ck_assert_msg(run(L,
			  "local weft = require 'weft'\n"
			  "local ok, e = weft.epoll_fd(0)\n"
			  "assert(ok == nil and e:match('not the poller'), tostring(e))\n"
			  "assert(weft.epoll_fd(weft.epoll_fd()) == weft.epoll_fd())",
			  0, err, sizeof err) == 0,
		      "%s", err);
	/* a state with an open socket cannot move to another poller */
	lua_State *other = new_state();
	ck_assert_msg(run(other, "return require('weft').epoll_fd()", 1, err, sizeof err) == 0,
		      "%s", err);
	lua_Integer fd = lua_tointeger(other, -1);
	char chunk[512];
	snprintf(chunk, sizeof chunk,
		 "local weft = require 'weft'\n"
		 "local s = assert(weft.tcp())\n"
		 "local ok, e = weft.epoll_fd(%lld)\n"
		 "assert(ok == nil and e:match('open sockets'), tostring(e))\n"
		 "s:close()",
		 (long long)fd);
	ck_assert_msg(run(L, chunk, 0, err, sizeof err) == 0, "%s", err);
	lua_close(L);
	lua_close(other);
}
END_TEST

/* A state that closes with spawned jobs still queued hands them to
 * another worker of its runtime, which runs every one of them; the
 * runtime's count of queued jobs stays right, so that worker's loop ends
 * once they have run instead of polling for lost jobs forever. */
START_TEST(test_close_hands_jobs_over)
{
	char err[512], chunk[512];
	lua_State *A = new_state();
	ck_assert_msg(run(A, "return require('weft').epoll_fd()", 1, err, sizeof err) == 0, "%s",
		      err);
	lua_Integer epfd = lua_tointeger(A, -1);
	lua_pop(A, 1);
	lua_State *B = new_state();
	snprintf(chunk, sizeof chunk,
		 "local weft = require 'weft'\n"
		 "assert(weft.epoll_fd(%lld) == %lld, 'join failed')",
		 (long long)epfd, (long long)epfd);
	ck_assert_msg(run(B, chunk, 0, err, sizeof err) == 0, "%s", err);
	ck_assert_msg(run(A,
			  "local weft = require 'weft'\n"
			  "for i = 1, 2000 do\n"
			  "  assert(weft.spawn(function() ran = (ran or 0) + 1 end))\n"
			  "end\n"
			  "assert(weft.stats().jobs_queued == 2000)",
			  0, err, sizeof err) == 0,
		      "%s", err);
	lua_close(A); /* without running its loop */
	ck_assert_msg(run(B,
			  "local weft = require 'weft'\n"
			  "assert(weft.stats().jobs_queued == 2000, 'not handed over')\n"
			  "weft.run(function() end) -- returns once the handed jobs have run\n"
			  "assert(ran == 2000, 'jobs run: ' .. tostring(ran))\n"
			  "assert(weft.stats().jobs_queued == 0)",
			  0, err, sizeof err) == 0,
		      "%s", err);
	lua_close(B);
}
END_TEST

/* A state with spawned jobs queued cannot join another runtime (they are
 * counted in its own); the jobs still run where they are. */
START_TEST(test_join_refused_with_jobs)
{
	char err[512], chunk[1024];
	lua_State *other = new_state();
	ck_assert_msg(run(other, "return require('weft').epoll_fd()", 1, err, sizeof err) == 0,
		      "%s", err);
	lua_Integer fd = lua_tointeger(other, -1);
	lua_State *L = new_state();
	snprintf(chunk, sizeof chunk,
		 "local weft = require 'weft'\n"
		 "local f = assert(weft.spawn(function() return 42 end))\n"
		 "local ok, e = weft.epoll_fd(%lld)\n"
		 "assert(ok == nil and e:match('queued jobs'), tostring(e))\n"
		 "local r\n"
		 "weft.run(function() r = select(2, f:wait(weft.clock() + 10)) end)\n"
		 "assert(r == 42, tostring(r))\n"
		 "assert(weft.epoll_fd(%lld) == %lld, 'join after the jobs ran')",
		 (long long)fd, (long long)fd, (long long)fd);
	ck_assert_msg(run(L, chunk, 0, err, sizeof err) == 0, "%s", err);
	lua_close(L);
	lua_close(other);
}
END_TEST

static Suite *join_suite(void)
{
	Suite *s = suite_create("lweft_join");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_join_and_echo);
	tcase_add_test(tc, test_join_refused);
	tcase_add_test(tc, test_close_hands_jobs_over);
	tcase_add_test(tc, test_join_refused_with_jobs);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(join_suite)
