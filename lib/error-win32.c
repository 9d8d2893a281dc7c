/* Error messages (error.h) on Windows.  errno values are the C runtime's
 * (sock-win32.c maps Winsock's errors onto them); getaddrinfo's EAI_*
 * codes are positive Winsock values (EAI_NONAME is WSAHOST_NOT_FOUND,
 * 11001; EAI_NODATA is WSANO_DATA, 11004). */
#include "error.h"

#include <stdlib.h>
#include <string.h>
#include <winsock2.h>
#include <ws2tcpip.h>

/* Winsock's codes run to about 11100 (WSA_QOS_*); leave room. */
#define EAI_SPAN 12000

const char *weft__errno_text(int e)
{
	/* The C runtime has no words for the POSIX socket codes (it says
	 * "Unknown error"): glibc's. */
	switch (e) {
	case EUSERS:
		return "Too many users";
	case ENOPROTOOPT:
		return "Protocol not available";
	case EOPNOTSUPP:
		return "Operation not supported";
	case EPROTONOSUPPORT:
		return "Protocol not supported";
	case EPROTOTYPE:
		return "Protocol wrong type for socket";
	case ENOTSOCK:
		return "Socket operation on non-socket";
	case EINPROGRESS:
		return "Operation now in progress";
	case EALREADY:
		return "Operation already in progress";
	case EWOULDBLOCK:
		return "Resource temporarily unavailable";
	case ENETDOWN:
		return "Network is down";
	case ENETRESET:
		return "Network dropped connection on reset";
	case ECANCELED:
		return "Operation canceled";
	case ELOOP:
		return "Too many levels of symbolic links";
	}
	/* Not strerror: it writes into a per-thread buffer that the next
	 * call overwrites, and weft's strings are static.  The runtime's own
	 * table is; for codes it does not know it says "Unknown error", where
	 * weft says its own. */
	const char *s = e > 0 && e < _sys_nerr ? _sys_errlist[e] : NULL;
	return s && strcmp(s, "Unknown error") != 0 ? s : "unknown error";
}

const char *weft__eai_message(int mag)
{
	if (mag <= 0 || mag >= EAI_SPAN)
		return NULL;
	switch (mag) {
	case EAI_NONAME:
	case WSANO_DATA: /* a name without addresses: EAI_NODATA */
		return "host_not_found";
	case EAI_AGAIN:
		return "try_again";
	case EAI_SERVICE:
		return "service_not_found";
	case EAI_FAMILY:
		return "address_family_not_supported";
	case EAI_MEMORY:
		return "out_of_memory";
	case EAI_FAIL:
		return "non-recoverable failure in name resolution";
	case EAI_BADFLAGS:
		return "invalid value for ai_flags";
	case EAI_SOCKTYPE:
		return "ai_socktype not supported";
	}
	return "unknown error";
}
