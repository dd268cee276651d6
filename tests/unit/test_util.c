/* Unit tests for common/: buf and util. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"

static void test_log_lines_and_levels(void **state)
{
    (void)state;
    assert_int_equal(log_level_parse("warn"), LOG_WARNING);
    assert_int_equal(log_level_parse("debug"), LOG_DEBUG);
    assert_int_equal(log_level_parse("loud"), -1);
    assert_int_equal(log_level_parse(NULL), -1);
    char path[] = "/tmp/skiff-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    setenv("SKIFF_LOG_LEVEL", "warning", 1);
    log_init("skiffd");
    log_error("cannot %s", "write");
    log_warning("the router exited");
    log_error("store: %s", "host a failed\nhost b failed: read-only\n"); /* libpq's way */
    log_error("(%s)", "lost\n");
    log_info("not shown at warning");
    log_debug("nor this");
    char big[4000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    log_error("%s", big);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    unsetenv("SKIFF_LOG_LEVEL");
    log_init("skiff");
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(file_read(path, &text, &len), 0);
    unlink(path);
    close(fd);
    assert_true(str_has_prefix(text, "skiffd: error: cannot write\n"
                                     "skiffd: warning: the router exited\n"
                                     "skiffd: error: store: host a failed; host b failed: "
                                     "read-only\n"
                                     "skiffd: error: (lost)\n"
                                     "skiffd: error: xxx"));
    assert_null(strstr(text, "not shown"));
    assert_null(strstr(text, "nor this"));
    /* a line too long is cut, says so, and still ends the line */
    assert_true(str_has_suffix(text, "xxx...\n"));
    assert_true(len < 2048 + 200);
    free(text);
}

static void test_name_valid(void **state)
{
    (void)state;
    assert_true(name_valid("shop"));
    assert_true(name_valid("0-day"));
    assert_true(name_valid("a"));
    char long_name[65];
    memset(long_name, 'a', 64);
    long_name[64] = '\0';
    assert_false(name_valid(long_name));
    long_name[63] = '\0';
    assert_true(name_valid(long_name));
    assert_false(name_valid(""));
    assert_false(name_valid(NULL));
    assert_false(name_valid("-shop"));
    assert_false(name_valid("Shop"));
    assert_false(name_valid("shop.web"));
    assert_false(name_valid("shop_web"));
    assert_false(name_valid("a/b"));
    assert_false(name_valid("caf\xc3\xa9"));
}

static void test_strv_dup_copies_every_string_and_its_end(void **state)
{
    (void)state;
    assert_null(strv_dup(NULL));
    char a[] = "A=1", b[] = "B=2";
    char *v[] = {a, b, NULL};
    char **c = strv_dup(v);
    assert_non_null(c);
    assert_string_equal(c[0], "A=1");
    assert_string_equal(c[1], "B=2");
    assert_null(c[2]);
    assert_ptr_not_equal(c[0], a); /* copies: the original may go */
    a[0] = 'X';
    assert_string_equal(c[0], "A=1");
    strv_free(c);
    char *empty[] = {NULL};
    c = strv_dup(empty);
    assert_non_null(c);
    assert_null(c[0]);
    strv_free(c);
    strv_free(NULL);
}

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

/* A tree comes over whole (files, modes, owners, times, links not followed, a fifo left
 * out); a budget stops it with -EFBIG, hard links counting once per name. */
static void test_copy_tree_copies_and_keeps_to_its_budget(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-copy-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *src = xasprintf("%s/src", dir), *sub = xasprintf("%s/src/sub", dir);
    assert_int_equal(mkdir_p(sub, 0750), 0);
    char *f = xasprintf("%s/run.sh", sub);
    assert_int_equal(file_write_atomic(f, "#!/bin/sh\n", 10, 0755), 0);
    assert_int_equal(chmod(f, 04755), 0);
    assert_int_equal(chown(f, 1234, 5678), 0);
    struct timespec old[2] = {{.tv_sec = 1000000}, {.tv_sec = 1000000}};
    assert_int_equal(utimensat(AT_FDCWD, f, old, 0), 0);
    char *sym = xasprintf("%s/link", src), *fifo = xasprintf("%s/fifo", src);
    assert_int_equal(symlink("/etc/passwd", sym), 0);
    assert_int_equal(mkfifo(fifo, 0600), 0);

    char *dst = xasprintf("%s/dst", dir);
    struct copy_budget budget = {.bytes = 1000, .entries = 100};
    assert_int_equal(copy_tree(src, dst, &budget), 0);
    assert_int_equal(budget.bytes, 990);
    assert_int_equal(budget.entries, 100 - 5); /* src, sub, run.sh, link, the fifo left out */
    char *g = xasprintf("%s/sub/run.sh", dst), *text = NULL;
    assert_int_equal(file_read(g, &text, NULL), 0);
    assert_string_equal(text, "#!/bin/sh\n");
    free(text);
    struct stat st;
    assert_int_equal(stat(g, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0755); /* no setuid */
    assert_int_equal(st.st_uid, 1234);
    assert_int_equal(st.st_gid, 5678);
    assert_int_equal(st.st_mtim.tv_sec, 1000000);
    char *sub2 = xasprintf("%s/sub", dst), *link2 = xasprintf("%s/link", dst),
         *fifo2 = xasprintf("%s/fifo", dst);
    assert_int_equal(stat(sub2, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0750);
    assert_int_equal(lstat(link2, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    assert_int_equal(lstat(fifo2, &st), -1);

    /* hard links: each name counts, so the copy stays within what was budgeted */
    for (int i = 0; i < 5; i++) {
        char *hl = xasprintf("%s/hard%d", sub, i);
        assert_int_equal(link(f, hl), 0);
        free(hl);
    }
    char *dst2 = xasprintf("%s/dst2", dir);
    budget = (struct copy_budget){.bytes = 30, .entries = 100};
    assert_int_equal(copy_tree(src, dst2, &budget), -EFBIG);
    budget = (struct copy_budget){.bytes = 1000, .entries = 5};
    char *dst3 = xasprintf("%s/dst3", dir);
    assert_int_equal(copy_tree(src, dst3, &budget), -EFBIG);
    char *dst4 = xasprintf("%s/dst4", dir);
    assert_int_equal(copy_tree(src, dst4, NULL), 0);

    assert_int_equal(rm_rf(dir), 0);
    free(src), free(sub), free(f), free(sym), free(fifo), free(dst), free(g), free(sub2);
    free(link2), free(fifo2), free(dst2), free(dst3), free(dst4);
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

/* buf_put_uint writes what "%llu" writes, at the edges of its digits too */
static void test_buf_put_uint_is_llu(void **state)
{
    (void)state;
    const unsigned long long cases[] = {0, 7, 9, 10, 99, 100, 1234567890, 18446744073709551615ull};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct buf b = {0};
        char want[32];
        buf_puts(&b, "[");
        buf_put_uint(&b, cases[i]);
        buf_puts(&b, "]");
        snprintf(want, sizeof want, "[%llu]", cases[i]);
        assert_string_equal(b.data, want);
        buf_free(&b);
    }
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

/* time_pace_delay_ms, as the bus and the routers on NATS pace their route tables: a lone
 * change goes at once; one that follows the last by less than the period waits out the rest
 * of it, never less (a burst makes one table a period) and never more. */
static void test_a_lone_change_goes_at_once_and_a_burst_is_paced(void **state)
{
    (void)state;
    assert_int_equal(time_pace_delay_ms(1000, -1, 5), 0); /* nothing happened yet */
    assert_int_equal(time_pace_delay_ms(1000, 995, 5), 0);
    assert_int_equal(time_pace_delay_ms(1000, 500, 5), 0);
    assert_int_equal(time_pace_delay_ms(1000, 1000, 5), 5);
    assert_int_equal(time_pace_delay_ms(1000, 996, 5), 1);
    for (int64_t ago = 0; ago < 5; ago++)
        assert_int_equal(ago + time_pace_delay_ms(5000, 5000 - ago, 5), 5);
    /* a clock that went back (a monotonic one cannot): no wait at all, never a long one */
    assert_int_equal(time_pace_delay_ms(1000, 2000, 5), 0);
}

/* A rate limit lets a burst through at once, then per_s a second, whatever is asked. */
static void test_a_rate_limit_lets_a_burst_then_its_rate(void **state)
{
    (void)state;
    struct rate_limit r = {0};
    int took = 0;
    for (int i = 0; i < 100; i++)
        took += rate_take(&r, 1000, 50, 20);
    assert_int_equal(took, 20);                /* the burst, all at one moment */
    assert_false(rate_take(&r, 1019, 50, 20)); /* 19 ms: not yet one back */
    assert_true(rate_take(&r, 1020, 50, 20));  /* 20 ms at 50/s: one */
    took = 0;
    for (int64_t t = 1021; t <= 2020; t++) /* a second asked every ms: 50 more */
        took += rate_take(&r, t, 50, 20);
    assert_int_equal(took, 50);
    took = 0;
    for (int i = 0; i < 100; i++) /* an hour idle fills the burst, no more */
        took += rate_take(&r, 3600 * 1000, 50, 20);
    assert_int_equal(took, 20);
    assert_false(rate_take(&r, 10, 50, 20)); /* a clock going back gives nothing */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_grows_and_stays_terminated),
        cmocka_unit_test(test_strv_dup_copies_every_string_and_its_end),
        cmocka_unit_test(test_name_valid),
        cmocka_unit_test(test_log_lines_and_levels),
        cmocka_unit_test(test_buf_json_escaped),
        cmocka_unit_test(test_buf_lines_are_taken_whole),
        cmocka_unit_test(test_uuid_is_version_4),
        cmocka_unit_test(test_files_round_trip),
        cmocka_unit_test(test_copy_tree_copies_and_keeps_to_its_budget),
        cmocka_unit_test(test_rfc3339_times),
        cmocka_unit_test(test_a_lone_change_goes_at_once_and_a_burst_is_paced),
        cmocka_unit_test(test_buf_put_uint_is_llu),
        cmocka_unit_test(test_a_rate_limit_lets_a_burst_then_its_rate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
