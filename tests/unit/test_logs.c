/* Unit tests for logs/: the bounded buffer per app, formatting, and followers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logs/logs.h"

#define APP_A "aaaaaaaa-0000-4000-8000-000000000000"
#define APP_B "bbbbbbbb-0000-4000-8000-000000000000"

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void test_lines_are_formatted_as_cloud_foundry_does(void **state)
{
    (void)state;
    struct logs *lg = logs_new(10);
    logs_append(lg, APP_A, "APP/PROC/WEB/0", LOGS_OUT, "hello\r\n", 7);
    logs_append(lg, APP_A, "STG/0", LOGS_ERR, "oops", 4);
    char *text = logs_recent(lg, APP_A, 0, NULL);
    char ts[32], tag[32], stream[8], word[16];
    assert_int_equal(sscanf(text, "%31s %31s %7s %15s", ts, tag, stream, word), 4);
    assert_int_equal(strlen(ts), 24); /* 2026-11-27T11:09:56.123Z */
    assert_int_equal(ts[10], 'T');
    assert_int_equal(ts[23], 'Z');
    assert_string_equal(tag, "[APP/PROC/WEB/0]");
    assert_string_equal(stream, "OUT");
    assert_string_equal(word, "hello");
    assert_non_null(strstr(text, "[STG/0] ERR oops\n"));
    assert_int_equal(count_lines(text), 2);
    free(text);
    logs_free(lg);
}

static void test_buffer_keeps_the_last_lines_per_app(void **state)
{
    (void)state;
    struct logs *lg = logs_new(5);
    for (int i = 0; i < 12; i++)
        logs_appendf(lg, APP_A, "API", LOGS_OUT, "line %d", i);
    logs_appendf(lg, APP_B, "API", LOGS_OUT, "other app");
    size_t len = 0;
    char *text = logs_recent(lg, APP_A, 0, &len);
    assert_int_equal(count_lines(text), 5);
    assert_int_equal(len, strlen(text));
    assert_null(strstr(text, "line 6\n"));
    assert_non_null(strstr(text, "line 7\n"));
    assert_non_null(strstr(text, "line 11\n"));
    assert_null(strstr(text, "other app"));
    free(text);
    text = logs_recent(lg, APP_A, 2, NULL);
    assert_int_equal(count_lines(text), 2);
    assert_non_null(strstr(text, "line 10\n"));
    free(text);
    logs_forget(lg, APP_A);
    text = logs_recent(lg, APP_A, 0, NULL);
    assert_string_equal(text, "");
    free(text);
    text = logs_recent(lg, "unknown", 0, NULL);
    assert_string_equal(text, "");
    free(text);
    logs_free(lg);
}

static void test_buffer_grows_then_wraps(void **state)
{
    (void)state;
    struct logs *lg = logs_new(40);
    for (int i = 0; i < 100; i++) {
        logs_appendf(lg, APP_A, "API", LOGS_OUT, "n%d", i);
        char *text = logs_recent(lg, APP_A, 0, NULL);
        size_t expect = i + 1 < 40 ? (size_t)i + 1 : 40;
        assert_int_equal(count_lines(text), expect);
        char last[16];
        snprintf(last, sizeof last, " n%d\n", i);
        assert_non_null(strstr(text, last));
        free(text);
    }
    char *text = logs_recent(lg, APP_A, 0, NULL);
    assert_null(strstr(text, " n59\n"));
    assert_non_null(strstr(text, " n60\n"));
    free(text);
    logs_free(lg);
}

struct seen {
    struct logs *lg;
    int id;
    int count;
    char last[256];
    bool unfollow_in_callback;
};

static void on_line(void *ctx, const char *line, size_t len)
{
    struct seen *s = ctx;
    s->count++;
    snprintf(s->last, sizeof s->last, "%.*s", (int)len, line);
    if (s->unfollow_in_callback)
        logs_unfollow(s->lg, s->id);
}

static void test_followers_get_new_lines_of_their_app(void **state)
{
    (void)state;
    struct logs *lg = logs_new(5);
    struct seen a = {.lg = lg}, b = {.lg = lg, .unfollow_in_callback = true};
    a.id = logs_follow(lg, APP_A, on_line, &a);
    b.id = logs_follow(lg, APP_A, on_line, &b);
    assert_true(a.id > 0 && b.id > 0 && a.id != b.id);
    logs_append(lg, APP_B, "API", LOGS_OUT, "not yours", 9);
    logs_append(lg, APP_A, "RTR/0", LOGS_OUT, "GET / 200", 9);
    logs_append(lg, APP_A, "RTR/0", LOGS_OUT, "GET /x 404", 10);
    assert_int_equal(a.count, 2);
    assert_int_equal(b.count, 1); /* unfollowed itself after the first */
    assert_non_null(strstr(a.last, "[RTR/0] OUT GET /x 404\n"));
    logs_unfollow(lg, a.id);
    logs_append(lg, APP_A, "API", LOGS_OUT, "after", 5);
    assert_int_equal(a.count, 2);
    logs_free(lg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines_are_formatted_as_cloud_foundry_does),
        cmocka_unit_test(test_buffer_keeps_the_last_lines_per_app),
        cmocka_unit_test(test_buffer_grows_then_wraps),
        cmocka_unit_test(test_followers_get_new_lines_of_their_app),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
