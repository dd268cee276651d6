/* Unit tests for app metadata: which label and annotation keys and label values are accepted
 * (Cloud Foundry's rules), and label selectors: each kind of requirement, their conjunction,
 * and the malformed ones, refused with a message rather than read as something else. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "api/core_internal.h"

static void test_keys(void **state)
{
    (void)state;
    static const char *const good[] = {"env",     "a",      "Team_1.x-y", "example.com/team",
                                       "a-b.c/d", "x.y.z/0"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        assert_true(api_metadata_key_valid(good[i]));
    char long_name[80], long_prefix[300];
    memset(long_name, 'a', 64);
    long_name[64] = '\0';
    memset(long_prefix, 'a', 254);
    strcpy(long_prefix + 254, "/x");
    static const char *const bad[] = {"",
                                      "-env",
                                      "env-",
                                      "e nv",
                                      "a/b/c",
                                      "/x",
                                      "x/",
                                      "Example.com/x",
                                      "ex_ample.com/x",
                                      "-a.com/x",
                                      "a-.com/x",
                                      "a..b/x",
                                      "env=prod",
                                      "é",
                                      "a,b",
                                      "in(x)"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(api_metadata_key_valid(bad[i]));
    assert_false(api_metadata_key_valid(long_name));
    long_name[63] = '\0';
    assert_true(api_metadata_key_valid(long_name));
    assert_false(api_metadata_key_valid(long_prefix));
    assert_true(api_label_value_valid(""));
    assert_true(api_label_value_valid("prod-2"));
    assert_false(api_label_value_valid("pro d"));
    assert_false(api_label_value_valid("-prod"));
}

static int match(const char *labels, const char *selector)
{
    json_t *l = json_loads(labels, 0, NULL);
    char err[200] = "";
    int rc = api_labels_match(l, selector, err, sizeof err);
    if (rc < 0)
        assert_true(err[0]); /* every refusal says why */
    json_decref(l);
    return rc;
}

static void test_selectors(void **state)
{
    (void)state;
    const char *l = "{\"env\": \"prod\", \"tier\": \"web\", \"example.com/team\": \"shop\"}";
    assert_int_equal(match(l, "env"), 1);
    assert_int_equal(match(l, "missing"), 0);
    assert_int_equal(match(l, "!missing"), 1);
    assert_int_equal(match(l, "!env"), 0);
    assert_int_equal(match(l, "env=prod"), 1);
    assert_int_equal(match(l, "env==prod"), 1);
    assert_int_equal(match(l, "env=staging"), 0);
    assert_int_equal(match(l, "env!=staging"), 1);
    assert_int_equal(match(l, "missing!=x"), 1);
    assert_int_equal(match(l, "env!=prod"), 0);
    assert_int_equal(match(l, "tier in (api, web)"), 1);
    assert_int_equal(match(l, "tier in (api)"), 0);
    assert_int_equal(match(l, "tier notin (api)"), 1);
    assert_int_equal(match(l, "missing notin (api)"), 1);
    assert_int_equal(match(l, "env=prod, tier in (web), example.com/team=shop"), 1);
    assert_int_equal(match(l, "env=prod,tier=api"), 0);
    assert_int_equal(match(l, "env="), 0); /* an empty value: env is not "" */
    static const char *const bad[] = {"",           " ",         ",",
                                      "env,",       "=prod",     "env=pro d",
                                      "env in api", "env in (a", "env in (a b)",
                                      "env >= 3",   "!env=prod", "env=prod;drop",
                                      "env in ()"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (match(l, bad[i]) != -EINVAL)
            fail_msg("\"%s\" was not refused", bad[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_selectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
