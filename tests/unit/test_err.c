/* Unit tests for the one error table: every error has a name, an HTTP status and a message,
 * an unknown value still gets words rather than NULL, and the negative errno values the parts
 * below the API return are named, answered and worded by the same functions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "common/err.h"

static void test_every_error_has_a_name_a_status_and_a_message(void **state)
{
    (void)state;
    for (int e = SKIFF_OK + 1; e < SKIFF_ERR_COUNT; e++) {
        const char *name = skiff_err_name((enum skiff_err)e);
        int status = skiff_err_http_status((enum skiff_err)e);
        const char *msg = skiff_strerror((enum skiff_err)e);
        if (!name || !*name || !msg || !*msg || status < 400 || status > 599)
            fail_msg("error %d is missing from the table", e);
    }
    assert_string_equal(skiff_err_name(SKIFF_E_NOT_FOUND), "not_found");
    assert_int_equal(skiff_err_http_status(SKIFF_E_NOT_FOUND), 404);
    assert_int_equal(skiff_err_http_status(SKIFF_E_HEAD_TOO_LARGE), 431);
    assert_int_equal(skiff_err_http_status(SKIFF_E_BAD_VALUE), 400);
    assert_int_equal(skiff_err_http_status(SKIFF_E_INVALID_VALUE), 422);
    /* the code a staging stream ends with, as the API's answers have theirs */
    assert_string_equal(skiff_err_name(SKIFF_E_STAGING_FAILED), "staging_failed");
}

static void test_an_unknown_error_still_has_words(void **state)
{
    (void)state;
    assert_string_equal(skiff_strerror((enum skiff_err)9999), "unknown error");
    assert_string_equal(skiff_err_name((enum skiff_err) - 1), "internal");
    assert_int_equal(skiff_err_http_status(SKIFF_ERR_COUNT), 500);
}

static void test_errno_values_share_the_table(void **state)
{
    (void)state;
    assert_string_equal(skiff_err_name(-ENOENT), "not_found");
    assert_int_equal(skiff_err_http_status(-ENOENT), 404);
    assert_int_equal(skiff_err_from(-ENOENT), SKIFF_E_NOT_FOUND);
    assert_int_equal(skiff_err_from(-EEXIST), SKIFF_E_NAME_TAKEN);
    assert_int_equal(skiff_err_from(-EMSGSIZE), SKIFF_E_TOO_LARGE);
    assert_int_equal(skiff_err_http_status(-EMSGSIZE), 413);
    assert_int_equal(skiff_err_from(-ECANCELED), SKIFF_E_UNAVAILABLE);
    assert_int_equal(skiff_err_http_status(-EIO), 500);
    /* Skiff's words where it has more to say, the C library's otherwise; never NULL */
    assert_non_null(strstr(skiff_strerror(-ENOSPC), "free space"));
    /* skiffd's own disk full is insufficient storage (507), whoever wrote it; another failure
     * to write it is Skiff's (500); a tenant's quota stays quota_exceeded */
    assert_int_equal(skiff_err_http_status(-ENOSPC), 507);
    assert_string_equal(skiff_err_name(-ENOSPC), "insufficient_storage");
    assert_int_equal(skiff_err_disk(-ENOSPC), SKIFF_E_INSUFFICIENT_STORAGE);
    assert_int_equal(skiff_err_disk(-EDQUOT), SKIFF_E_INSUFFICIENT_STORAGE);
    assert_int_equal(skiff_err_disk(-EIO), SKIFF_E_INTERNAL);
    assert_int_equal(skiff_err_disk(-EACCES), SKIFF_E_INTERNAL);
    assert_int_equal(skiff_err_from(-EDQUOT), SKIFF_E_QUOTA);
    assert_non_null(strstr(skiff_strerror(-ECANCELED), "retry"));
    assert_string_equal(skiff_strerror(-EACCES), strerror(EACCES));
    /* an errno the table does not have is still worded, and answered as Skiff's failure */
    assert_string_equal(skiff_strerror(-ENOTSOCK), strerror(ENOTSOCK));
    assert_int_equal(skiff_err_from(-ENOTSOCK), SKIFF_E_INTERNAL);
    assert_string_equal(skiff_err_name(-ENOTSOCK), "internal");
    assert_string_equal(skiff_strerror(-100000), "unknown error");
    /* passing pressure is "busy" (503, worth a retry), a part not reachable "unavailable" */
    assert_int_equal(skiff_err_from(-EAGAIN), SKIFF_E_BUSY);
    assert_int_equal(skiff_err_from(-ENOBUFS), SKIFF_E_BUSY);
    assert_int_equal(skiff_err_from(-ENOMEM), SKIFF_E_BUSY);
    assert_int_equal(skiff_err_http_status(-EAGAIN), 503);
    /* and its words say so, whichever resource ran short */
    const int pressure[] = {EAGAIN, ENOBUFS, ENOMEM, EMFILE, ENFILE, EBUSY};
    for (size_t i = 0; i < sizeof pressure / sizeof pressure[0]; i++)
        if (!strstr(skiff_strerror(-pressure[i]), "retry in a moment"))
            fail_msg("-%s is busy but does not say to retry", strerror(pressure[i]));
    assert_int_equal(skiff_err_from(-ENOTCONN), SKIFF_E_UNAVAILABLE);
    assert_int_equal(skiff_err_from(-ENOTSUP), SKIFF_E_UNAVAILABLE);
    assert_int_equal(skiff_err_from(-ESRCH), SKIFF_E_NO_INSTANCE);
    assert_string_equal(skiff_err_name(-ESRCH), "no_instance");
    /* enum values pass through skiff_err_from unchanged */
    assert_int_equal(skiff_err_from(SKIFF_E_QUOTA), SKIFF_E_QUOTA);
    assert_int_equal(skiff_err_from(SKIFF_ERR_COUNT + 5), SKIFF_E_INTERNAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_error_has_a_name_a_status_and_a_message),
        cmocka_unit_test(test_an_unknown_error_still_has_words),
        cmocka_unit_test(test_errno_values_share_the_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
