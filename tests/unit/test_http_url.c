/* Unit tests for http/url: percent-decoding (lenient, form, strict) and encoding; the
 * path splitting of http/server built on it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "http/server.h"
#include "http/url.h"

static void expect_decoded(const char *in, unsigned flags, const char *want)
{
    char *got = http_percent_decode(in, strlen(in), flags);
    if (!want) {
        assert_null(got);
        return;
    }
    assert_non_null(got);
    assert_string_equal(got, want);
    free(got);
}

static void test_decode(void **state)
{
    (void)state;
    expect_decoded("a%20b%2Fc", 0, "a b/c");
    expect_decoded("a%2fb%7e", 0, "a/b~");
    expect_decoded("a+b", 0, "a+b");
    expect_decoded("a+b%2B", HTTP_DECODE_FORM, "a b+");
    /* lenient: a '%' without two hex digits stays */
    expect_decoded("100%", 0, "100%");
    expect_decoded("%zz%4", 0, "%zz%4");
    /* strict: it is an error */
    expect_decoded("100%", HTTP_DECODE_STRICT, NULL);
    expect_decoded("%4g", HTTP_DECODE_STRICT, NULL);
    expect_decoded("%41", HTTP_DECODE_STRICT, "A");
    /* a NUL would cut the value short wherever it goes: refused either way */
    expect_decoded("a%00b", 0, NULL);
    expect_decoded("a%00b", HTTP_DECODE_STRICT, NULL);
    /* only len bytes are read */
    char *got = http_percent_decode("ab%41cd", 4, 0);
    assert_string_equal(got, "ab%4");
    free(got);
    expect_decoded("", 0, "");
}

static bool keep_printable(int c)
{
    return c > 0x20 && c < 0x7f && c != '%';
}

static void test_encode(void **state)
{
    (void)state;
    char *e = http_percent_encode("a b/c~é", NULL);
    assert_string_equal(e, "a%20b%2Fc~%C3%A9");
    free(e);
    e = http_percent_encode("a b/c%", keep_printable);
    assert_string_equal(e, "a%20b/c%25");
    free(e);
    e = http_percent_encode("", NULL);
    assert_string_equal(e, "");
    free(e);
    /* round trip of every byte but NUL */
    char all[256];
    for (int i = 1; i < 256; i++)
        all[i - 1] = (char)i;
    all[255] = '\0';
    e = http_percent_encode(all, NULL);
    char *back = http_percent_decode(e, strlen(e), HTTP_DECODE_STRICT);
    assert_non_null(back);
    assert_memory_equal(back, all, 256);
    free(back);
    free(e);
    assert_int_equal(http_hex_value('F'), 15);
    assert_int_equal(http_hex_value('a'), 10);
    assert_int_equal(http_hex_value('g'), -1);
    assert_true(http_is_unreserved('~'));
    assert_false(http_is_unreserved('/'));
}

/* One allocation holds the pointers and the segments; empty segments are skipped; decoding
 * happens per segment, so an escaped slash stays inside its segment. */
static void test_path_split(void **state)
{
    (void)state;
    size_t n = 99;
    char **segs = http_path_split("//v1/topics/a%2Fb//events/", &n, true);
    assert_non_null(segs);
    assert_int_equal(n, 4);
    assert_string_equal(segs[0], "v1");
    assert_string_equal(segs[1], "topics");
    assert_string_equal(segs[2], "a/b");
    assert_string_equal(segs[3], "events");
    assert_null(segs[4]);
    free(segs);
    segs = http_path_split("/v1/a%2Fb", &n, false);
    assert_int_equal(n, 2);
    assert_string_equal(segs[1], "a%2Fb");
    free(segs);
    segs = http_path_split("///", &n, true);
    assert_non_null(segs);
    assert_int_equal(n, 0);
    free(segs);
    assert_null(http_path_split("/v1/a%00b", &n, true)); /* an escaped NUL cuts nothing short */
    char out[8];
    assert_int_equal(http_percent_decode_into("x%41y", 5, 0, out), 3);
    assert_string_equal(out, "xAy");
    assert_int_equal(http_percent_decode_into("%4", 2, HTTP_DECODE_STRICT, out), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_path_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
