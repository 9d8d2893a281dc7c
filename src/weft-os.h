/* What the launcher (weft.c) needs from the system, one file per
 * platform: weft-posix.c, weft-win32.c.  The launcher's threads only. */
#ifndef WEFT_OS_H
#define WEFT_OS_H

#if defined(_WIN32)
#include <windows.h>
typedef HANDLE weft_os_thread_t;
#else
#include <pthread.h>
typedef pthread_t weft_os_thread_t;
#endif

/* At start, before any worker: ignore SIGPIPE, raise the open-file limit,
 * and route SIGINT and SIGTERM (Ctrl-C, Ctrl-Break and closing the console
 * on Windows) to weft.exit() for every runtime of the process: the first
 * one ends every worker's loop, so the program ends normally with status
 * 0; a second one exits at once with status 1. */
void weft_os_init(void);

/* On the way out: stop what weft_os_init started.  Returns status. */
int weft_os_finish(int status);

/* CPUs online (at least 1). */
long weft_os_ncpu(void);

/* Start fn(arg) on a new thread: 0 or -1.  Join it. */
int weft_os_thread_start(weft_os_thread_t *t, void *(*fn)(void *), void *arg);
void weft_os_thread_join(weft_os_thread_t t);

#endif
