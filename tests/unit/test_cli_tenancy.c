/* Unit tests for cli/cli's tenancy pieces: --expires durations, the saved login
 * (~/.skiff/cli.json: its mode, its fields, read back as the target) and the target space as a
 * query value, and the environment winning over the saved login. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "common/util.h"

static void test_durations(void **state)
{
    (void)state;
    assert_int_equal(cli_duration_seconds("30d"), 30LL * 86400);
    assert_int_equal(cli_duration_seconds("12h"), 12 * 3600);
    assert_int_equal(cli_duration_seconds("90m"), 90 * 60);
    assert_int_equal(cli_duration_seconds("3600s"), 3600);
    assert_int_equal(cli_duration_seconds("3600"), 3600);
    static const char *const bad[] = {"",
                                      "d",
                                      "0d",
                                      "-5d",
                                      "+5d",
                                      " 5d",
                                      "5w",
                                      "5dd",
                                      "5 d",
                                      "1.5h",
                                      "30D",
                                      "99999999999999999999",
                                      "999999999999999999d"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (cli_duration_seconds(bad[i]) != -1)
            fail_msg("\"%s\" was taken as a duration", bad[i]);
    }
    assert_int_equal(cli_duration_seconds(NULL), -1);
}

/* A HOME and SKIFF_HOME of their own, no SKIFF_API or SKIFF_TOKEN. */
static char home[64];

static int home_setup(void **state)
{
    (void)state;
    strcpy(home, "/tmp/skiff-cli-test-XXXXXX");
    if (!mkdtemp(home))
        return -1;
    setenv("HOME", home, 1);
    setenv("SKIFF_HOME", home, 1);
    unsetenv("SKIFF_API");
    unsetenv("SKIFF_TOKEN");
    cli_target_reset();
    return 0;
}

static int home_teardown(void **state)
{
    (void)state;
    char *cmd = xasprintf("rm -rf '%s'", home);
    int rc = system(cmd);
    free(cmd);
    unsetenv("SKIFF_API");
    unsetenv("SKIFF_TOKEN");
    cli_target_reset();
    return rc == 0 ? 0 : -1;
}

static void test_login_is_saved_0600_and_read_back_as_the_target(void **state)
{
    (void)state;
    assert_int_equal(cli_login_save("http://127.0.0.1:8090", "skiffa_A", "skiffr_R", NULL, "alice",
                                    "acme", "web/1"),
                     0);
    char *path = cli_login_path();
    char *expected = xasprintf("%s/.skiff/cli.json", home);
    assert_string_equal(path, expected);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    json_error_t err;
    json_t *saved = json_load_file(path, 0, &err);
    assert_non_null(saved);
    assert_string_equal(json_string_value(json_object_get(saved, "refresh_token")), "skiffr_R");
    assert_null(json_object_get(saved, "router_url")); /* NULL leaves a field out */
    json_decref(saved);

    const struct cli_target *t = cli_target();
    assert_non_null(t);
    assert_true(t->from_login);
    assert_string_equal(t->api_url, "http://127.0.0.1:8090");
    assert_string_equal(t->token, "skiffa_A");
    assert_string_equal(t->refresh_token, "skiffr_R");
    assert_string_equal(t->user, "alice");
    assert_string_equal(t->org, "acme");
    assert_string_equal(t->space, "web/1");
    /* one query value: the slash between org and space is escaped too */
    char *q = cli_space_query();
    assert_string_equal(q, "acme%2Fweb%2F1");
    free(q);

    /* a login without a space carries none */
    assert_int_equal(cli_login_save("http://127.0.0.1:8090", "skiffa_B", "skiffr_S", NULL, "alice",
                                    "acme", NULL),
                     0);
    t = cli_target();
    assert_non_null(t);
    assert_string_equal(t->token, "skiffa_B");
    assert_null(t->space);
    assert_null(cli_space_query());
    free(expected);
    free(path);
}

static void test_the_environment_wins_over_the_saved_login(void **state)
{
    (void)state;
    assert_int_equal(cli_login_save("http://127.0.0.1:8090", "skiffa_A", "skiffr_R", NULL, "alice",
                                    "acme", "web"),
                     0);
    setenv("SKIFF_API", "http://127.0.0.1:9999/", 1);
    setenv("SKIFF_TOKEN", "skifft_T", 1);
    cli_target_reset();
    const struct cli_target *t = cli_target();
    assert_non_null(t);
    assert_string_equal(t->api_url, "http://127.0.0.1:9999");
    assert_string_equal(t->token, "skifft_T");
    assert_false(t->from_login);
    assert_null(t->refresh_token);  /* never renewed with another login's refresh token */
    assert_null(cli_space_query()); /* the API uses the token's space, or default/dev */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations),
        cmocka_unit_test_setup_teardown(test_login_is_saved_0600_and_read_back_as_the_target,
                                        home_setup, home_teardown),
        cmocka_unit_test_setup_teardown(test_the_environment_wins_over_the_saved_login, home_setup,
                                        home_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
