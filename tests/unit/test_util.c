/* Unit tests for common/: buf and util. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"

static void test_buf_grows_and_stays_terminated(void **state)
{
    (void)state;
    struct buf b = {0};
    for (int i = 0; i < 1000; i++)
        buf_printf(&b, "%d,", i);
    assert_true(b.len > 1000);
    assert_int_equal(b.data[b.len], '\0');
    assert_true(str_has_prefix(b.data, "0,1,2,"));
    buf_consume(&b, 2);
    assert_true(str_has_prefix(b.data, "1,2,"));
    char *s = buf_steal(&b);
    assert_null(b.data);
    free(s);
}

static void test_uuid_is_version_4(void **state)
{
    (void)state;
    char a[37], b[37];
    uuid_generate_v4(a);
    uuid_generate_v4(b);
    assert_int_equal(strlen(a), 36);
    assert_int_equal(a[14], '4');
    assert_true(strchr("89ab", a[19]) != NULL);
    assert_string_not_equal(a, b);
}

static void test_files_round_trip(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-util-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *nested = xasprintf("%s/a/b/c", dir);
    assert_int_equal(mkdir_p(nested, 0), 0);
    assert_int_equal(mkdir_p(nested, 0), 0);
    char *file = xasprintf("%s/f.txt", nested);
    assert_int_equal(file_write_atomic(file, "hello", 5, 0600), 0);
    char *data;
    size_t len;
    assert_int_equal(file_read(file, &data, &len), 0);
    assert_int_equal(len, 5);
    assert_string_equal(data, "hello");
    free(data);
    assert_int_equal(rm_rf(dir), 0);
    struct stat st;
    assert_int_equal(stat(dir, &st), -1);
    assert_true(file_read(file, &data, &len) < 0);
    free(nested);
    free(file);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_grows_and_stays_terminated),
        cmocka_unit_test(test_uuid_is_version_4),
        cmocka_unit_test(test_files_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
