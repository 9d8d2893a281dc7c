/* The embedding API of weft.h (src/lweft.c): weft_lua_attach's argument
 * checks and limits, the numbers states report (attached, alone, joined),
 * totals that keep what closed states did, and a state refused by a
 * second copy of the runtime in the process (this program carries one
 * copy, statically; the module weft/core.so of the build tree brings
 * libweft.so, another). */
#include "config.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "checkutil.h"
#include "lweft.h"
#include "weft.h"

static lua_State *new_state(void)
{
	lua_State *L = luaL_newstate();
	ck_assert_ptr_nonnull(L);
	luaL_openlibs(L);
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
	lua_pushcfunction(L, luaopen_weft_core);
	lua_setfield(L, -2, "weft.core");
	lua_pop(L, 1);
	return L;
}

/* Run chunk in L; on failure copy the message to err. */
static int run(lua_State *L, const char *chunk, int nres, char *err, size_t errsize)
{
	if (luaL_loadstring(L, chunk) != LUA_OK || lua_pcall(L, 0, nres, 0) != LUA_OK) {
		snprintf(err, errsize, "%s", lua_tostring(L, -1));
		lua_pop(L, 1);
		return -1;
	}
	return 0;
}

#define RUN_OK(L, chunk)                                                                           \
	do {                                                                                       \
		char err_[512];                                                                    \
		ck_assert_msg(run((L), (chunk), 0, err_, sizeof err_) == 0, "%s", err_);           \
	} while (0)

/* Every bad argument has its own code and message; nothing is attached
 * then, and the good attach after it works. */
START_TEST(test_attach_arguments)
{
	weft_runtime_t *rt;
	ck_assert_int_eq(weft_lua_runtime_new(&rt), 0);
	lua_State *A = new_state(), *B = new_state(), *C = new_state();
	ck_assert_int_eq(weft_lua_attach(NULL, rt, 1, 2), WEFT_LUA_EARG);
	ck_assert_int_eq(weft_lua_attach(A, NULL, 1, 2), WEFT_LUA_EARG);
	ck_assert_int_eq(weft_lua_attach(A, rt, 0, 2), WEFT_LUA_EINDEX);
	ck_assert_int_eq(weft_lua_attach(A, rt, -1, 2), WEFT_LUA_EINDEX);
	ck_assert_int_eq(weft_lua_attach(A, rt, 3, 2), WEFT_LUA_EINDEX);
	ck_assert_int_eq(weft_lua_attach(A, rt, 1, 0), WEFT_LUA_ECOUNT);
	ck_assert_int_eq(weft_lua_attach(A, rt, 1, -4), WEFT_LUA_ECOUNT);
	ck_assert_int_eq(weft_lua_attach(A, rt, 1, WEFT_LUA_MAX_STATES + 1), WEFT_LUA_ECOUNT);
	ck_assert_int_eq(weft_lua_attach(A, rt, 1, 2), 0);
	ck_assert_int_eq(weft_lua_attach(A, rt, 2, 2), WEFT_LUA_EATTACHED);
	ck_assert_int_eq(weft_lua_attach(B, rt, 1, 2), WEFT_LUA_ETAKEN);
	ck_assert_int_eq(weft_lua_attach(B, rt, 2, 3), WEFT_LUA_ECOUNTS);
	ck_assert_int_eq(weft_lua_attach(B, rt, 2, 2), 0);
	RUN_OK(C, "require 'weft'");
	ck_assert_int_eq(weft_lua_attach(C, rt, 2, 2), WEFT_LUA_ELOADED);

	/* Messages: distinct, and they say what is wrong. */
	const int codes[] = {WEFT_LUA_ELOADED, WEFT_LUA_EATTACHED, WEFT_LUA_EINDEX,
	                     WEFT_LUA_ECOUNT,  WEFT_LUA_ECOUNTS,   WEFT_LUA_ETAKEN,
	                     WEFT_LUA_ECOPY,   WEFT_LUA_EARG,      WEFT_LUA_ENOMEM};
	size_t n = sizeof codes / sizeof codes[0];
	for (size_t i = 0; i < n; i++) {
		const char *m = weft_lua_strerror(codes[i]);
		ck_assert_ptr_nonnull(m);
		ck_assert_int_gt((int)strlen(m), 10);
		for (size_t j = 0; j < i; j++)
			ck_assert_str_ne(m, weft_lua_strerror(codes[j]));
	}
	ck_assert_str_eq(weft_lua_strerror(WEFT_LUA_ETAKEN),
	                 "another open state of the runtime has this index");

	/* The numbers the attached states report. */
	RUN_OK(A, "local weft = require 'weft'\n"
	          "assert(weft.worker() == 1 and weft.workers() == 2,"
	          "  weft.worker() .. ' of ' .. weft.workers())");
	/* A state closed before it loaded weft gives its index back. */
	lua_close(B);
	B = new_state();
	ck_assert_int_eq(weft_lua_attach(B, rt, 2, 2), 0);
	RUN_OK(B, "local weft = require 'weft'\n"
	          "assert(weft.worker() == 2 and weft.workers() == 2)");
	/* ... and so does a state that loaded it. */
	lua_close(B);
	B = new_state();
	ck_assert_int_eq(weft_lua_attach(B, rt, 2, 2), 0);
	weft_lua_runtime_free(rt); /* the states keep the runtime */
	RUN_OK(B, "local weft = require 'weft'\n"
	          "assert(weft.worker() == 2)");
	lua_close(A);
	lua_close(B);
	lua_close(C);
}
END_TEST

/* At most WEFT_LUA_MAX_STATES states in a runtime: the next one is refused
 * with a message that says so, whether it attaches or joins. */
START_TEST(test_state_limit)
{
	weft_runtime_t *rt;
	ck_assert_int_eq(weft_lua_runtime_new(&rt), 0);
	static lua_State *Ls[WEFT_LUA_MAX_STATES];
	for (int i = 0; i < WEFT_LUA_MAX_STATES; i++) {
		Ls[i] = luaL_newstate();
		ck_assert_ptr_nonnull(Ls[i]);
		ck_assert_int_eq(weft_lua_attach(Ls[i], rt, i + 1, WEFT_LUA_MAX_STATES), 0);
	}
	lua_State *extra = new_state();
	ck_assert_int_eq(
	    weft_lua_attach(extra, rt, WEFT_LUA_MAX_STATES + 1, WEFT_LUA_MAX_STATES + 1),
	    WEFT_LUA_ECOUNT);
	ck_assert_int_eq(weft_lua_attach(extra, rt, 1, WEFT_LUA_MAX_STATES), WEFT_LUA_ETAKEN);

	/* A state on its own cannot join the full runtime either. */
	lua_State *first = Ls[0];
	luaL_openlibs(first);
	luaL_requiref(first, "weft.core", luaopen_weft_core, 0);
	lua_pop(first, 1);
	char err[512], chunk[512];
	ck_assert_msg(run(first, "return require('weft').epoll_fd()", 1, err, sizeof err) == 0,
	              "%s", err);
	lua_Integer fd = lua_tointeger(first, -1);
	lua_pop(first, 1);
	snprintf(chunk, sizeof chunk,
	         "local weft = require 'weft'\n"
	         "local ok, e = weft.epoll_fd(%lld)\n"
	         "assert(ok == nil and e == 'that runtime has 256 states already', tostring(e))\n"
	         "assert(weft.worker() == 1 and weft.workers() == 1)",
	         (long long)fd);
	RUN_OK(extra, chunk);
	lua_close(extra);
	for (int i = 0; i < WEFT_LUA_MAX_STATES; i++)
		lua_close(Ls[i]);
	weft_lua_runtime_free(rt);
}
END_TEST

/* A state that joins with weft.epoll_fd(fd) gets a number of its own
 * (above the numbers attached states declared); weft.workers() counts it. */
START_TEST(test_joined_numbers)
{
	char err[512], chunk[512];
	lua_State *A = new_state(), *B = new_state(), *C = new_state();
	ck_assert_msg(run(A, "return require('weft').epoll_fd()", 1, err, sizeof err) == 0, "%s",
	              err);
	lua_Integer fd = lua_tointeger(A, -1);
	lua_pop(A, 1);
	snprintf(chunk, sizeof chunk,
	         "local weft = require 'weft'\n"
	         "assert(weft.worker() == 1 and weft.workers() == 1)\n"
	         "assert(weft.epoll_fd(%lld) == %lld)\n"
	         "assert(weft.worker() == 2 and weft.workers() == 2,"
	         "  weft.worker() .. ' of ' .. weft.workers())",
	         (long long)fd, (long long)fd);
	RUN_OK(B, chunk);
	RUN_OK(A, "local weft = require 'weft'\n"
	          "assert(weft.worker() == 1 and weft.workers() == 2)");
	/* The runtime of an embedder that declared 2 states: joiners come
	 * after them. */
	weft_runtime_t *rt;
	ck_assert_int_eq(weft_lua_runtime_new(&rt), 0);
	lua_State *D = new_state();
	ck_assert_int_eq(weft_lua_attach(D, rt, 2, 2), 0);
	weft_lua_runtime_free(rt);
	ck_assert_msg(run(D, "return require('weft').epoll_fd()", 1, err, sizeof err) == 0, "%s",
	              err);
	fd = lua_tointeger(D, -1);
	lua_pop(D, 1);
	snprintf(chunk, sizeof chunk,
	         "local weft = require 'weft'\n"
	         "assert(weft.epoll_fd(%lld) == %lld)\n"
	         "assert(weft.worker() == 3 and weft.workers() == 3,"
	         "  weft.worker() .. ' of ' .. weft.workers())",
	         (long long)fd, (long long)fd);
	RUN_OK(C, chunk);
	lua_close(A);
	lua_close(B);
	lua_close(C);
	lua_close(D);
}
END_TEST

/* weft.stats().total keeps what a closed state did. */
START_TEST(test_totals_count_closed)
{
	weft_runtime_t *rt;
	ck_assert_int_eq(weft_lua_runtime_new(&rt), 0);
	lua_State *A = new_state(), *B = new_state();
	ck_assert_int_eq(weft_lua_attach(A, rt, 1, 2), 0);
	ck_assert_int_eq(weft_lua_attach(B, rt, 2, 2), 0);
	weft_lua_runtime_free(rt);
	RUN_OK(A, "require 'weft'");
	RUN_OK(B, "local weft = require 'weft'\n"
	          "weft.run(function()\n"
	          "  for i = 1, 28 do assert(weft.spawn(function() end):wait()) end\n"
	          "end)\n"
	          "assert(weft.stats().jobs_run == 28)");
	RUN_OK(A, "local weft = require 'weft'\n"
	          "weft.run(function()\n"
	          "  for i = 1, 22 do assert(weft.spawn(function() end):wait()) end\n"
	          "end)\n"
	          "local t = weft.stats().total\n"
	          "assert(t.jobs_run == 50 and t.workers == 2, t.jobs_run .. ' ' .. t.workers)");
	lua_close(B);
	RUN_OK(A, "local t = require('weft').stats().total\n"
	          "assert(t.jobs_run == 50 and t.workers == 1, t.jobs_run .. ' ' .. t.workers)");
	lua_close(A);
}
END_TEST

/* Push the other copy's luaopen_weft_core (from the build tree's
 * weft/core.so and libweft.so), or return 0 if there is none to load. */
static int other_copy(lua_State *L)
{
	const char *builddir = getenv("WEFT_BUILDDIR");
	if (!builddir)
		return 0;
	char chunk[1024], err[1024];
	snprintf(chunk, sizeof chunk,
	         "return assert(package.loadlib('%s/src/.libs/core.so', 'luaopen_weft_core'))",
	         builddir);
	ck_assert_msg(run(L, chunk, 1, err, sizeof err) == 0, "%s", err);
	ck_assert(lua_iscfunction(L, -1));
	ck_assert(lua_tocfunction(L, -1) != luaopen_weft_core);
	return 1;
}

/* Two copies of the runtime in one process: a state one copy attached
 * (or loaded) is refused by the other, loudly, both ways. */
START_TEST(test_second_copy_refused)
{
	weft_runtime_t *rt;
	ck_assert_int_eq(weft_lua_runtime_new(&rt), 0);
	lua_State *A = new_state();
	ck_assert_int_eq(weft_lua_attach(A, rt, 1, 1), 0);
	if (!other_copy(A)) {
		lua_close(A);
		weft_lua_runtime_free(rt);
		return; /* not under make check */
	}
	ck_assert_int_ne(lua_pcall(A, 0, 1, 0), LUA_OK);
	const char *msg = lua_tostring(A, -1);
	ck_assert_msg(strstr(msg, "another copy of the weft runtime") != NULL, "%s", msg);
	lua_pop(A, 1);
	/* This copy still serves it. */
	RUN_OK(A, "assert(require('weft').worker() == 1)");

	/* The other way: a state the module's copy loaded first. */
	lua_State *B = luaL_newstate();
	luaL_openlibs(B);
	ck_assert(other_copy(B));
	ck_assert_int_eq(lua_pcall(B, 0, 1, 0), LUA_OK);
	lua_pop(B, 1);
	ck_assert_int_eq(weft_lua_attach(B, rt, 1, 1), WEFT_LUA_ECOPY);
	lua_State *C = luaL_newstate();
	luaL_openlibs(C);
	ck_assert(other_copy(C));
	lua_setfield(C, LUA_REGISTRYINDEX, "other");
	luaL_requiref(C, "weft.core", luaopen_weft_core, 0); /* this copy */
	lua_pop(C, 1);
	lua_getfield(C, LUA_REGISTRYINDEX, "other");
	ck_assert_int_ne(lua_pcall(C, 0, 1, 0), LUA_OK);
	ck_assert_msg(strstr(lua_tostring(C, -1), "another copy") != NULL, "%s",
	              lua_tostring(C, -1));
	lua_close(C);
	lua_close(B);
	lua_close(A);
	weft_lua_runtime_free(rt);
}
END_TEST

static Suite *api_suite(void)
{
	Suite *s = suite_create("lweft_api");
	TCase *tc = tcase_create("core");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_attach_arguments);
	tcase_add_test(tc, test_state_limit);
	tcase_add_test(tc, test_joined_numbers);
	tcase_add_test(tc, test_totals_count_closed);
	tcase_add_test(tc, test_second_copy_refused);
	suite_add_tcase(s, tc);
	return s;
}

WEFT_CHECK_MAIN(api_suite)
