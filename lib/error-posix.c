/* Error messages (error.h) from glibc: the untranslated errno text and
 * getaddrinfo's negative EAI_* codes. */
#include "error.h"

#include <netdb.h>
#include <string.h>

/* glibc's EAI_* codes run from -1 to about -105; leave room for more. */
#define EAI_SPAN 1000

const char *weft__errno_text(int e)
{
	/* strerror() may write into a shared buffer for unknown values, and
	 * strerror_r() needs a buffer we could not return; glibc's
	 * strerrordesc_np() gives the untranslated message from a constant
	 * table, safe from any thread. */
	const char *s = strerrordesc_np(e);
	return s ? s : "unknown error";
}

const char *weft__eai_message(int mag)
{
	if (mag <= 0 || mag >= EAI_SPAN)
		return NULL;
	int eai = -mag;
	switch (eai) {
	case EAI_NONAME:
	case EAI_NODATA:
		return "host_not_found";
	case EAI_AGAIN:
		return "try_again";
	case EAI_SERVICE:
		return "service_not_found";
	case EAI_FAMILY:
	case EAI_ADDRFAMILY:
		return "address_family_not_supported";
	case EAI_MEMORY:
		return "out_of_memory";
	}
	/* glibc's gai_strerror() returns strings from a constant table (and
	 * its own "Unknown error" for codes it does not know). */
	return gai_strerror(eai);
}
