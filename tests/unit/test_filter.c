/* Unit tests for trigger/filter.c: parsing and matching attribute filters. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "trigger/trigger.h"

/* An event as a NULL-terminated list of name, value pairs. */
static const char *lookup(void *ctx, const char *attr)
{
    const char *const *kv = ctx;
    for (; kv[0]; kv += 2)
        if (strcmp(kv[0], attr) == 0)
            return kv[1];
    return NULL;
}

static const char *image_event[] = {"type",    "image.uploaded", "source", "/apps/web", "subject",
                                    "cat.png", "tenant",         "acme",   NULL};

static void parse_ok(const char *expr, struct event_filter *f)
{
    char err[256] = "";
    if (event_filter_parse(expr, f, err, sizeof(err)) != 0)
        fail_msg("event_filter_parse('%s') failed: %s", expr, err);
}

static void test_parse_exact_and_prefix(void **state)
{
    (void)state;
    struct event_filter f;
    parse_ok("type=image.uploaded", &f);
    assert_string_equal(f.attr, "type");
    assert_false(f.prefix);
    assert_string_equal(f.value, "image.uploaded");
    event_filter_free(&f);

    parse_ok("subject^=cat", &f);
    assert_string_equal(f.attr, "subject");
    assert_true(f.prefix);
    assert_string_equal(f.value, "cat");
    event_filter_free(&f);

    /* the value may hold '=' and be empty */
    parse_ok("tenant=a=b", &f);
    assert_string_equal(f.value, "a=b");
    event_filter_free(&f);
    parse_ok("source^=", &f);
    assert_string_equal(f.value, "");
    event_filter_free(&f);
}

static void test_parse_errors(void **state)
{
    (void)state;
    const char *bad[][2] = {
        {"type", "no '='"},      {"=x", "attribute name"},  {"^=x", "attribute name"},
        {"Type=x", "lowercase"}, {"my-ext=x", "lowercase"}, {"abcdefghijklmnopqrstu=x", "1 to 20"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct event_filter f = {0};
        char err[256] = "";
        assert_int_equal(event_filter_parse(bad[i][0], &f, err, sizeof(err)), TRIGGER_EINVAL);
        if (!strstr(err, bad[i][1]))
            fail_msg("error for '%s' is '%s'", bad[i][0], err);
        assert_null(f.value);
    }
}

static bool matches(const char *const *exprs, size_t n, const char **event)
{
    struct event_filter f[8] = {0};
    for (size_t i = 0; i < n; i++)
        parse_ok(exprs[i], &f[i]);
    bool m = event_filters_match(f, n, lookup, event);
    for (size_t i = 0; i < n; i++)
        event_filter_free(&f[i]);
    return m;
}

static void test_matching(void **state)
{
    (void)state;
    assert_true(matches(NULL, 0, image_event));
    assert_true(matches((const char *[]){"type=image.uploaded"}, 1, image_event));
    assert_false(matches((const char *[]){"type=image"}, 1, image_event));
    assert_true(matches((const char *[]){"type^=image."}, 1, image_event));
    assert_false(matches((const char *[]){"type^=video."}, 1, image_event));
    assert_true(matches((const char *[]){"source^=/apps/", "subject=cat.png"}, 2, image_event));
    assert_false(matches((const char *[]){"source^=/apps/", "subject=dog.png"}, 2, image_event));
    /* extensions */
    assert_true(matches((const char *[]){"tenant=acme"}, 1, image_event));
    assert_false(matches((const char *[]){"tenant=other"}, 1, image_event));
    /* a missing attribute matches nothing, not even an empty prefix */
    assert_false(matches((const char *[]){"region^="}, 1, image_event));
    /* an empty prefix matches any value that exists */
    assert_true(matches((const char *[]){"subject^="}, 1, image_event));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_exact_and_prefix),
        cmocka_unit_test(test_parse_errors),
        cmocka_unit_test(test_matching),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
