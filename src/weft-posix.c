/* The launcher's system part (weft-os.h) on POSIX. */
#include "config.h"

#include "weft-os.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include "weft.h"

/* SIGINT and SIGTERM are blocked in every thread and taken here. */
static void *signal_main(void *arg)
{
	sigset_t *set = arg;
	int sig, seen = 0;
	for (;;) {
		if (sigwait(set, &sig) != 0)
			continue;
		if (seen++) {
			static const char msg[] = "weft: second signal, exiting now\n";
			ssize_t rc = write(STDERR_FILENO, msg, sizeof msg - 1);
			(void)rc;
			_exit(1);
		}
		weft_lua_runtime_exit(NULL);
	}
	return NULL;
}

static pthread_t signal_tid;
static int signal_thread;

static void handle_signals(void)
{
	static sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		return;
	if (pthread_create(&signal_tid, NULL, signal_main, &set) == 0)
		signal_thread = 1;
	else
		pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* Servers hold many sockets: like Go's runtime, raise the soft limit on
 * open files to the hard limit. */
static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

void weft_os_init(void)
{
	signal(SIGPIPE, SIG_IGN);
	raise_nofile();
	handle_signals();
}

/* The signal thread waits in sigwait(), a cancellation point: stop it on
 * the way out, so that the process ends with no thread of weft's left
 * (leak checkers count a running thread's stack as lost). */
int weft_os_finish(int status)
{
	if (signal_thread) {
		pthread_cancel(signal_tid);
		pthread_join(signal_tid, NULL);
		signal_thread = 0;
	}
	return status;
}

long weft_os_ncpu(void)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	return cpus < 1 ? 1 : cpus;
}

int weft_os_thread_start(weft_os_thread_t *t, void *(*fn)(void *), void *arg)
{
	return pthread_create(t, NULL, fn, arg) == 0 ? 0 : -1;
}

void weft_os_thread_join(weft_os_thread_t t)
{
	pthread_join(t, NULL);
}
