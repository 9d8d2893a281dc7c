/* Error codes.  lib/ functions return 0 or a count on success, and a negative
 * value on failure: -errno, or one of the WEFT_E* codes below, which live in
 * a range disjoint from errno.  Any thread. */
#ifndef WEFT_ERROR_H
#define WEFT_ERROR_H

#include <errno.h>

enum {
	WEFT_ETIMEOUT = -10001, /* the deadline passed */
	WEFT_ECLOSED = -10002,  /* the socket was closed under the waiter */
	WEFT_EEOF = -10003,     /* the peer closed before the request was met */
	WEFT_ENOMEM = -10004,   /* allocation failed (the hook, not errno) */
	WEFT_ETOOLARGE = -10005, /* more data than the caller's limit */
	WEFT_EAI_BASE = -11000  /* getaddrinfo: WEFT_EAI_BASE - |EAI_*| */
};

/* errno values lib/ returns that some C libraries lack (Windows'): a
 * number none of its values use. */
#ifndef EUSERS
#define EUSERS 1087 /* a runtime has all the workers it can hold */
#endif

/* Map a getaddrinfo() EAI_* code (other than EAI_SYSTEM) to a weft code:
 * below WEFT_EAI_BASE by the code's magnitude (glibc's codes are negative,
 * Winsock's are positive WSA* values). */
#define WEFT_EAI(eai) (WEFT_EAI_BASE - ((eai) < 0 ? -(eai) : (eai)))

/* Message for a negative code.  Codes with a portable meaning give fixed,
 * normalized names usable in conditionals: "timeout", "closed", "eof",
 * "access_denied", "address_already_in_use", "address_not_available",
 * "connection_refused", "connection_reset", "connection_aborted",
 * "broken_pipe", "network_unreachable", "host_unreachable",
 * "not_connected", "already_connected", "too_many_open_files",
 * "out_of_memory", "no_buffer_space", "host_not_found", "try_again",
 * "service_not_found", "address_family_not_supported",
 * "destination_address_required", "message_too_long", "busy",
 * "too_large".  Anything else
 * gives the system message (strerror / gai_strerror).  The string is
 * static. */
const char *weft_strerror(int err);

/* Per platform (error-posix.c, error-win32.c): the system's message for
 * an errno value no portable name covers, and the message for a
 * getaddrinfo code of magnitude `mag` (NULL if mag is no such code). */
const char *weft__errno_text(int e);
const char *weft__eai_message(int mag);

#endif
