/* The launcher's system part (weft-os.h) on Windows.  Console control
 * events stand for SIGINT and SIGTERM: the system runs the handler on a
 * thread of its own, which may call into the runtime as the POSIX signal
 * thread does. */
#include "config.h"

#include "weft-os.h"

#include <process.h>
#include <stdlib.h>

#include "weft.h"

static volatile LONG seen;

static BOOL WINAPI on_console(DWORD event)
{
	switch (event) {
	case CTRL_C_EVENT:
	case CTRL_BREAK_EVENT:
	case CTRL_CLOSE_EVENT:
		break;
	default:
		return FALSE; /* logoff, shutdown: the default */
	}
	if (InterlockedIncrement(&seen) > 1) {
		static const char msg[] = "weft: second signal, exiting now\n";
		DWORD n;

		WriteFile(GetStdHandle(STD_ERROR_HANDLE), msg, sizeof msg - 1, &n, NULL);
		ExitProcess(1);
	}
	weft_lua_runtime_exit(NULL);
	return TRUE;
}

void weft_os_init(void)
{
	/* No SIGPIPE (sends fail with an error) and no descriptor limit to
	 * raise here. */
	SetConsoleCtrlHandler(on_console, TRUE);
}

int weft_os_finish(int status)
{
	SetConsoleCtrlHandler(on_console, FALSE);
	return status;
}

long weft_os_ncpu(void)
{
	SYSTEM_INFO si;

	GetSystemInfo(&si);
	return si.dwNumberOfProcessors < 1 ? 1 : (long)si.dwNumberOfProcessors;
}

typedef struct start {
	void *(*fn)(void *);
	void *arg;
} start_t;

static unsigned __stdcall thread_main(void *p)
{
	start_t st = *(start_t *)p;

	free(p);
	st.fn(st.arg);
	return 0;
}

int weft_os_thread_start(weft_os_thread_t *t, void *(*fn)(void *), void *arg)
{
	start_t *st = malloc(sizeof *st);
	uintptr_t h;

	if (st == NULL)
		return -1;
	st->fn = fn;
	st->arg = arg;
	h = _beginthreadex(NULL, 0, thread_main, st, 0, NULL);
	if (h == 0) {
		free(st);
		return -1;
	}
	*t = (HANDLE)h;
	return 0;
}

void weft_os_thread_join(weft_os_thread_t t)
{
	WaitForSingleObject(t, INFINITE);
	CloseHandle(t);
}
