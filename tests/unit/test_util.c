/* Unit tests for common/: buf and util. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>

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

/* Escapes len bytes of s with flags; returns the text (caller frees). */
static char *json_escaped(const char *s, size_t len, int flags)
{
    struct buf b = {0};
    buf_puts(&b, "\"");
    buf_append_json_escaped(&b, s, len, flags);
    buf_puts(&b, "\"");
    return buf_steal(&b);
}

static void expect_escaped(const char *s, size_t len, int flags, const char *want)
{
    char *got = json_escaped(s, len, flags);
    if (strcmp(got, want) != 0)
        fail_msg("expected %s, got %s", want, got);
    /* whatever went in, what comes out is one valid JSON string */
    json_error_t e;
    json_t *v = json_loadb(got, strlen(got), JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!json_is_string(v))
        fail_msg("not a JSON string: %s (%s)", got, e.text);
    json_decref(v);
    free(got);
}

static void test_buf_lines_are_taken_whole(void **state)
{
    (void)state;
    struct buf b = {0};
    size_t pos = 0, len = 0;
    assert_null(buf_next_line(&b, &pos, &len)); /* empty, never allocated */
    buf_puts(&b, "one\n\ntwo\nthr");
    char *line = buf_next_line(&b, &pos, &len);
    assert_string_equal(line, "one");
    assert_int_equal(len, 3);
    line = buf_next_line(&b, &pos, &len);
    assert_string_equal(line, ""); /* an empty line is a line */
    assert_int_equal(len, 0);
    line = buf_next_line(&b, &pos, &len);
    assert_string_equal(line, "two");
    assert_null(buf_next_line(&b, &pos, &len)); /* "thr" is not whole yet */
    buf_consume(&b, pos);
    assert_string_equal(b.data, "thr");
    buf_puts(&b, "ee\n");
    pos = 0;
    line = buf_next_line(&b, &pos, &len);
    assert_string_equal(line, "three");
    assert_int_equal(pos, b.len);
    buf_free(&b);
}

static void test_buf_json_escaped(void **state)
{
    (void)state;
    expect_escaped("plain text/with?q=1", 19, 0, "\"plain text/with?q=1\"");
    expect_escaped("say \"hi\" \\ bye", 14, 0, "\"say \\\"hi\\\" \\\\ bye\"");
    expect_escaped("a\nb\rc\td", 7, 0, "\"a\\nb\\rc\\td\"");
    expect_escaped("\x01\x1f\x7f", 3, 0, "\"\\u0001\\u001F\\u007F\"");
    expect_escaped("nul\0in", 6, 0, "\"nul\\u0000in\"");
    /* valid UTF-8 passes through, 2, 3 and 4 bytes long */
    expect_escaped("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\xa2", 14, 0,
                   "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\xa2\"");
    /* every byte of what is not UTF-8 becomes U+FFFD: a lone continuation byte, a cut
     * sequence, an overlong "/", a surrogate, a code point above U+10FFFF */
    expect_escaped("\x80", 1, 0, "\"\\ufffd\"");
    expect_escaped("\xe2\x82", 2, 0, "\"\\ufffd\\ufffd\"");
    expect_escaped("\xc0\xaf", 2, 0, "\"\\ufffd\\ufffd\"");
    expect_escaped("\xed\xa0\x80", 3, 0, "\"\\ufffd\\ufffd\\ufffd\"");
    expect_escaped("\xf4\x90\x80\x80", 4, 0, "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    expect_escaped("\xe2\x82x", 3, 0, "\"\\ufffd\\ufffdx\"");
    /* the access-line variant percent-encodes every byte from 0x80, valid UTF-8 or not */
    expect_escaped("/odd\"\\\xc3\xa9{}", 10, BUF_JSON_PERCENT_NON_ASCII,
                   "\"/odd\\\"\\\\%C3%A9{}\"");
    expect_escaped("\xff\x80 \x1b", 4, BUF_JSON_PERCENT_NON_ASCII, "\"%FF%80 \\u001B\"");
    expect_escaped("", 0, 0, "\"\"");
}

static void test_rfc3339_times(void **state)
{
    (void)state;
    char out[40];
    /* the date and time of a second are kept between calls: moving across seconds, and back,
     * must still give each time's own */
    const struct {
        int64_t ms;
        const char *text;
    } cases[] = {
        {1795777796123, "2026-11-27T11:09:56.123Z"}, {1795777796999, "2026-11-27T11:09:56.999Z"},
        {1795777797000, "2026-11-27T11:09:57.000Z"}, {1795777796001, "2026-11-27T11:09:56.001Z"},
        {1798761599999, "2026-12-31T23:59:59.999Z"}, {1798761600000, "2027-01-01T00:00:00.000Z"},
        {0, "1970-01-01T00:00:00.000Z"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        time_format_rfc3339(cases[i].ms, out, sizeof out);
        assert_string_equal(out, cases[i].text);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_grows_and_stays_terminated),
        cmocka_unit_test(test_buf_json_escaped),
        cmocka_unit_test(test_buf_lines_are_taken_whole),
        cmocka_unit_test(test_uuid_is_version_4),
        cmocka_unit_test(test_files_round_trip),
        cmocka_unit_test(test_rfc3339_times),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
