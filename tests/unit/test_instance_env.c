/* Unit tests for the scheduler's pure parts: an instance's environment and Diego's crash
 * backoff. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/scheduler.h"

static const char *env_get(char **env, const char *key)
{
    size_t kl = strlen(key);
    const char *found = NULL;
    int count = 0;
    for (char **p = env; *p; p++)
        if (!strncmp(*p, key, kl) && (*p)[kl] == '=') {
            found = *p + kl + 1;
            count++;
        }
    assert_true(count <= 1); /* never two values for one name */
    return found;
}

static struct scheduler_env_input sample(void)
{
    static const char *const uris[] = {"hello.localhost", "hello.localhost/api", NULL};
    struct scheduler_env_input in = {.app_guid = "11111111-2222-4333-8444-555555555555",
                                     .app_name = "hello",
                                     .instance_guid = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee",
                                     .index = 2,
                                     .port = 61017,
                                     .memory_mb = 256,
                                     .disk_mb = 1024,
                                     .home = "/skiff/apps/x/droplets/y/app",
                                     .tmpdir = "/skiff/instances/z/tmp",
                                     .uris = uris,
                                     .events_url = "http://127.0.0.1:8090/v1",
                                     .events_token = "skiffi.token"};
    return in;
}

static void test_env_has_every_contract_variable(void **state)
{
    (void)state;
    struct scheduler_env_input in = sample();
    char **env = scheduler_instance_env(&in);
    assert_string_equal(env_get(env, "PORT"), "61017");
    assert_string_equal(env_get(env, "CF_INSTANCE_INDEX"), "2");
    assert_string_equal(env_get(env, "CF_INSTANCE_GUID"), in.instance_guid);
    assert_string_equal(env_get(env, "HOME"), in.home);
    assert_string_equal(env_get(env, "TMPDIR"), in.tmpdir);
    assert_string_equal(env_get(env, "MEMORY_LIMIT"), "256M");
    assert_string_equal(env_get(env, "SKIFF_EVENTS_URL"), "http://127.0.0.1:8090/v1");
    assert_string_equal(env_get(env, "SKIFF_EVENTS_TOKEN"), "skiffi.token");
    assert_string_equal(env_get(env, "VCAP_SERVICES"), "{}");

    json_t *vcap = json_loads(env_get(env, "VCAP_APPLICATION"), 0, NULL);
    assert_non_null(vcap);
    assert_string_equal(json_string_value(json_object_get(vcap, "application_id")), in.app_guid);
    assert_string_equal(json_string_value(json_object_get(vcap, "application_name")), "hello");
    assert_int_equal(json_integer_value(json_object_get(vcap, "instance_index")), 2);
    json_t *uris = json_object_get(vcap, "application_uris");
    assert_int_equal(json_array_size(uris), 2);
    assert_string_equal(json_string_value(json_array_get(uris, 1)), "hello.localhost/api");
    json_t *limits = json_object_get(vcap, "limits");
    assert_int_equal(json_integer_value(json_object_get(limits, "mem")), 256);
    assert_int_equal(json_integer_value(json_object_get(limits, "disk")), 1024);
    assert_non_null(json_object_get(vcap, "space_name"));
    assert_non_null(json_object_get(vcap, "organization_name"));
    json_decref(vcap);
    scheduler_env_free(env);
}

static void test_user_env_comes_last_and_cannot_override_the_platform(void **state)
{
    (void)state;
    static const char *const user[] = {"GREETING", "hi there",           "PORT",
                                       "1",        "CF_INSTANCE_INDEX",  "9",
                                       "PATH",     "/opt/bin",           "VCAP_APPLICATION",
                                       "{}",       "SKIFF_EVENTS_TOKEN", "stolen",
                                       NULL};
    struct scheduler_env_input in = sample();
    in.user_env = user;
    char **env = scheduler_instance_env(&in);
    assert_string_equal(env_get(env, "GREETING"), "hi there");
    assert_string_equal(env_get(env, "PORT"), "61017");
    assert_string_equal(env_get(env, "CF_INSTANCE_INDEX"), "2");
    assert_string_equal(env_get(env, "SKIFF_EVENTS_TOKEN"), "skiffi.token");
    assert_string_not_equal(env_get(env, "VCAP_APPLICATION"), "{}");
    /* defaults such as PATH may be replaced */
    assert_string_equal(env_get(env, "PATH"), "/opt/bin");
    scheduler_env_free(env);
}

static void test_vcap_services_passes_through(void **state)
{
    (void)state;
    struct scheduler_env_input in = sample();
    in.vcap_services_json = "{\"db\":[{\"name\":\"x\"}]}";
    in.uris = NULL;
    char **env = scheduler_instance_env(&in);
    assert_string_equal(env_get(env, "VCAP_SERVICES"), "{\"db\":[{\"name\":\"x\"}]}");
    json_t *vcap = json_loads(env_get(env, "VCAP_APPLICATION"), 0, NULL);
    assert_int_equal(json_array_size(json_object_get(vcap, "application_uris")), 0);
    json_decref(vcap);
    scheduler_env_free(env);
}

static void test_vcap_application_of_the_app_has_no_instance_fields(void **state)
{
    (void)state;
    struct scheduler_env_input in = sample();
    in.instance_guid = NULL;
    char *text = scheduler_vcap_application(&in);
    json_t *vcap = json_loads(text, 0, NULL);
    assert_non_null(vcap);
    assert_string_equal(json_string_value(json_object_get(vcap, "application_name")), "hello");
    assert_int_equal(json_array_size(json_object_get(vcap, "application_uris")), 2);
    assert_null(json_object_get(vcap, "instance_index"));
    assert_null(json_object_get(vcap, "instance_id"));
    json_decref(vcap);
    free(text);
}

static void test_crash_delay_follows_diego(void **state)
{
    (void)state;
    assert_int_equal(scheduler_crash_delay_ms(1), 0);
    assert_int_equal(scheduler_crash_delay_ms(2), 0);
    assert_int_equal(scheduler_crash_delay_ms(3), 0);
    assert_int_equal(scheduler_crash_delay_ms(4), 30000);
    assert_int_equal(scheduler_crash_delay_ms(5), 60000);
    assert_int_equal(scheduler_crash_delay_ms(6), 120000);
    assert_int_equal(scheduler_crash_delay_ms(8), 480000);
    assert_int_equal(scheduler_crash_delay_ms(9), 960000);
    assert_int_equal(scheduler_crash_delay_ms(10), 960000); /* 16 minute cap */
    assert_int_equal(scheduler_crash_delay_ms(1000), 960000);
}

static void test_crash_count_resets_after_five_healthy_minutes(void **state)
{
    (void)state;
    int64_t now = 10LL * 60 * 1000 * 1000;
    assert_int_equal(scheduler_crash_count_next(0, 0, now), 1);
    assert_int_equal(scheduler_crash_count_next(3, 0, now), 4);
    /* healthy for 4:59: the count goes on */
    assert_int_equal(scheduler_crash_count_next(6, now - (5 * 60 * 1000 - 1000), now), 7);
    /* healthy for 5:00: it starts again */
    assert_int_equal(scheduler_crash_count_next(6, now - 5 * 60 * 1000, now), 1);
    assert_int_equal(scheduler_crash_delay_ms(scheduler_crash_count_next(6, now - 300000, now)), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_env_has_every_contract_variable),
        cmocka_unit_test(test_user_env_comes_last_and_cannot_override_the_platform),
        cmocka_unit_test(test_vcap_services_passes_through),
        cmocka_unit_test(test_vcap_application_of_the_app_has_no_instance_fields),
        cmocka_unit_test(test_crash_delay_follows_diego),
        cmocka_unit_test(test_crash_count_resets_after_five_healthy_minutes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
