/* Shared scaffolding for the Check unit tests.  Run under `make check`, the
 * environment sets CK_TAP_LOG_FILE_NAME=- so Check prints TAP for the
 * Automake driver; each test forks, so a crash fails one test only. */
#ifndef WEFT_CHECKUTIL_H
#define WEFT_CHECKUTIL_H

#include <check.h>
#include <stdlib.h>

#define WEFT_CHECK_MAIN(make_suite)                                        \
	int main(void)                                                     \
	{                                                                  \
		SRunner *sr = srunner_create(make_suite());                \
		srunner_run_all(sr, CK_ENV);                               \
		int failed = srunner_ntests_failed(sr);                    \
		srunner_free(sr);                                          \
		return failed ? EXIT_FAILURE : EXIT_SUCCESS;               \
	}

#endif
