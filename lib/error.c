/* Error messages.  Lua programs (and the Copas layer) compare messages with
 * fixed strings, so codes with a portable meaning map to normalized names
 * rather than to the C library's wording, which varies between systems and
 * locales.  The system's own wording, and getaddrinfo's codes, are in
 * error-posix.c or error-win32.c. */
#include "error.h"

#include <errno.h>
/* Linux errno values are below 4096 (the kernel's MAX_ERRNO). */
#define ERRNO_MAX 4095

static const char *errno_message(int e)
{
	switch (e) {
	case ETIMEDOUT:
		return "timeout";
	case EACCES:
	case EPERM:
		return "access_denied";
	case EADDRINUSE:
		return "address_already_in_use";
	case EADDRNOTAVAIL:
		return "address_not_available";
	case ECONNREFUSED:
		return "connection_refused";
	case ECONNRESET:
		return "connection_reset";
	case ECONNABORTED:
		return "connection_aborted";
	case EPIPE:
		return "broken_pipe";
	case ENETUNREACH:
		return "network_unreachable";
	case EHOSTUNREACH:
		return "host_unreachable";
	case ENOTCONN:
		return "not_connected";
	case EISCONN:
		return "already_connected";
	case EMFILE:
	case ENFILE:
		return "too_many_open_files";
	case ENOMEM:
		return "out_of_memory";
	case ENOBUFS:
		return "no_buffer_space";
	case EAFNOSUPPORT:
		return "address_family_not_supported";
	case EDESTADDRREQ:
		return "destination_address_required";
	case EMSGSIZE:
		return "message_too_long";
	case EBUSY:
		return "busy";
	}
	return weft__errno_text(e);
}

const char *weft_strerror(int err)
{
	switch (err) {
	case WEFT_ETIMEOUT:
		return "timeout";
	case WEFT_ECLOSED:
		return "closed";
	case WEFT_EEOF:
		return "eof";
	case WEFT_ENOMEM:
		return "out_of_memory";
	case WEFT_ETOOLARGE:
		return "too_large";
	}
	if (err < 0 && err >= -ERRNO_MAX)
		return errno_message(-err);
	if (err < WEFT_EAI_BASE) {
		const char *m = weft__eai_message(WEFT_EAI_BASE - err);
		if (m)
			return m;
	}
	return "unknown error";
}
