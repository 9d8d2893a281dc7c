/* Error codes.  lib/ functions return 0 or a count on success, and a negative
 * value on failure: -errno, or one of the WEFT_E* codes below, which live in
 * a range disjoint from errno.  Any thread. */
#ifndef WEFT_ERROR_H
#define WEFT_ERROR_H

enum {
	WEFT_ETIMEOUT = -10001, /* the deadline passed */
	WEFT_ECLOSED = -10002,  /* the socket was closed under the waiter */
	WEFT_EEOF = -10003,     /* the peer closed before the request was met */
	WEFT_ENOMEM = -10004,   /* allocation failed (the hook, not errno) */
	WEFT_ETOOLARGE = -10005, /* more data than the caller's limit */
	WEFT_EAI_BASE = -11000  /* getaddrinfo: WEFT_EAI_BASE + EAI_* (EAI_* < 0) */
};

/* Map a getaddrinfo() EAI_* code (other than EAI_SYSTEM) to a weft code. */
#define WEFT_EAI(eai) (WEFT_EAI_BASE + (eai))

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

#endif
