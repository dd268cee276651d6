/* Unit tests for invoker/mapping.c: mapping specs from and to JSON, replay starts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "invoker/invoker.h"

static int parse(const char *text, struct mapping_spec *spec, enum skiff_err *code, char *err,
                 size_t errsize)
{
    json_error_t jerr;
    json_t *body = json_loads(text, 0, &jerr);
    if (!body)
        fail_msg("bad test JSON %s: %s", text, jerr.text);
    int rc = mapping_spec_from_json(body, spec, code, err, errsize);
    json_decref(body);
    return rc;
}

static void parse_ok(const char *text, struct mapping_spec *spec)
{
    enum skiff_err code = SKIFF_OK;
    char err[512] = "";
    if (parse(text, spec, &code, err, sizeof(err)) != 0)
        fail_msg("mapping %s refused: %s", text, err);
}

static void expect_refused(const char *text, const char *code_want, const char *needle)
{
    struct mapping_spec spec;
    enum skiff_err code = SKIFF_OK;
    char err[512] = "";
    assert_int_equal(parse(text, &spec, &code, err, sizeof(err)), TRIGGER_EINVAL);
    assert_string_equal(skiff_err_name(code), code_want);
    if (!strstr(err, needle))
        fail_msg("error for %s is '%s', expected '%s'", text, err, needle);
    assert_null(spec.app); /* nothing left to free */
}

static void test_topic_mapping_defaults(void **state)
{
    (void)state;
    struct mapping_spec s;
    parse_ok("{\"app\": \"resize\", \"topic\": \"uploads\", \"filters\": [\"type=image.uploaded\","
             " \"subject^=cat\"]}",
             &s);
    assert_int_equal(s.trigger, MAPPING_TOPIC);
    assert_string_equal(s.app, "resize");
    assert_string_equal(s.process, "web");
    assert_string_equal(s.topic, "uploads");
    assert_int_equal(strlen(s.id), 36);
    assert_int_equal(s.filter_count, 2);
    assert_true(s.filters[1].prefix);
    assert_int_equal(s.policy.retries, 10);
    assert_int_equal(s.policy.backoff_ms, 200);
    assert_int_equal(s.policy.backoff_cap_ms, 60000);
    assert_int_equal(s.policy.max_age_ms, 86400000);
    assert_int_equal(s.policy.concurrency, 1);
    assert_int_equal(s.max_instances, INVOKER_DEFAULT_MAX_INSTANCES);
    assert_int_equal(s.idle_grace_ms, 60000);
    assert_null(s.dead_letter_topic);
    assert_false(s.start_at_beginning);
    mapping_spec_free(&s);
}

static void test_policy_fields_and_round_trip(void **state)
{
    (void)state;
    struct mapping_spec s, back;
    parse_ok("{\"app\": \"audit\", \"topic\": \"orders\", \"reply_topic\": \"audited\","
             " \"dead_letter_topic\": \"orders-dlq\", \"retries\": 5, \"backoff_ms\": 50,"
             " \"backoff_cap_ms\": 1000, \"max_age\": \"1h\", \"concurrency\": 4,"
             " \"ordered\": true, \"max_instances\": 3, \"idle_grace\": \"5s\","
             " \"from\": \"beginning\", \"process\": \"thumbs\"}",
             &s);
    assert_int_equal(s.policy.retries, 5);
    assert_int_equal(s.policy.backoff_ms, 50);
    assert_int_equal(s.policy.backoff_cap_ms, 1000);
    assert_int_equal(s.policy.max_age_ms, 3600000);
    assert_int_equal(s.policy.concurrency, 4);
    assert_true(s.policy.ordered);
    assert_int_equal(s.max_instances, 3);
    assert_int_equal(s.idle_grace_ms, 5000);
    assert_true(s.start_at_beginning);
    assert_string_equal(s.reply_topic, "audited");
    assert_string_equal(s.dead_letter_topic, "orders-dlq");
    assert_string_equal(s.process, "thumbs");

    json_t *j = mapping_spec_to_json(&s);
    enum skiff_err code;
    char err[256];
    assert_int_equal(mapping_spec_from_json(j, &back, &code, err, sizeof(err)), 0);
    json_decref(j);
    assert_string_equal(back.id, s.id);
    assert_int_equal(back.policy.max_age_ms, s.policy.max_age_ms);
    assert_int_equal(back.idle_grace_ms, s.idle_grace_ms);
    assert_true(back.policy.ordered);
    assert_true(back.start_at_beginning);
    assert_string_equal(back.reply_topic, "audited");
    mapping_spec_free(&s);
    mapping_spec_free(&back);
}

/* Whether the max was asked for survives the stored form, which always holds max_instances; a
 * record from before it was kept counts as asked. */
static void test_max_given_round_trip(void **state)
{
    (void)state;
    struct mapping_spec s, back;
    enum skiff_err code;
    char err[256];
    parse_ok("{\"app\": \"a\", \"topic\": \"t\"}", &s);
    assert_false(s.max_given);
    json_t *j = mapping_spec_to_json(&s);
    assert_int_equal(json_integer_value(json_object_get(j, "max_instances")),
                     INVOKER_DEFAULT_MAX_INSTANCES);
    assert_int_equal(mapping_spec_from_json(j, &back, &code, err, sizeof(err)), 0);
    assert_false(back.max_given);
    mapping_spec_free(&back);
    json_object_del(j, "max_instances_given"); /* an older record */
    assert_int_equal(mapping_spec_from_json(j, &back, &code, err, sizeof(err)), 0);
    assert_true(back.max_given);
    mapping_spec_free(&back);
    json_decref(j);
    mapping_spec_free(&s);

    parse_ok("{\"app\": \"a\", \"topic\": \"t\", \"max_instances\": 4}", &s);
    assert_true(s.max_given);
    j = mapping_spec_to_json(&s);
    assert_int_equal(mapping_spec_from_json(j, &back, &code, err, sizeof(err)), 0);
    assert_true(back.max_given);
    assert_int_equal(back.max_instances, 4);
    json_decref(j);
    mapping_spec_free(&s);
    mapping_spec_free(&back);
}

static void test_schedule_and_app_event(void **state)
{
    (void)state;
    struct mapping_spec s;
    parse_ok("{\"app\": \"nightly\", \"schedule\": \"0 3 * * *\"}", &s);
    assert_int_equal(s.trigger, MAPPING_SCHEDULE);
    assert_true(strncmp(s.topic, "skiff.schedule.", 15) == 0);
    assert_string_equal(s.topic + 15, s.id);
    mapping_spec_free(&s);

    parse_ok("{\"app\": \"notify\", \"on_app_event\": \"shop:crashed\"}", &s);
    assert_int_equal(s.trigger, MAPPING_APP_EVENT);
    assert_string_equal(s.topic, "skiff.app.crashed");
    assert_string_equal(s.event_app, "shop");
    assert_int_equal(s.filter_count, 1);
    assert_string_equal(s.filters[0].attr, "subject");
    assert_string_equal(s.filters[0].value, "shop");
    json_t *j = mapping_spec_to_json(&s);
    assert_string_equal(json_string_value(json_object_get(j, "on_app_event")), "shop:crashed");
    assert_int_equal(json_array_size(json_object_get(j, "filters")), 0);
    struct mapping_spec back;
    enum skiff_err code;
    char err[256];
    assert_int_equal(mapping_spec_from_json(j, &back, &code, err, sizeof(err)), 0);
    assert_int_equal(back.filter_count, 1);
    json_decref(j);
    mapping_spec_free(&back);
    mapping_spec_free(&s);

    parse_ok("{\"app\": \"notify\", \"on_app_event\": \"started\"}", &s);
    assert_null(s.event_app);
    assert_int_equal(s.filter_count, 0);
    mapping_spec_free(&s);
}

static void test_another_spaces_topic(void **state)
{
    (void)state;
    struct mapping_spec s;
    parse_ok("{\"app\": \"audit\", \"topic\": \"acme/prod/orders\", \"reply_topic\": \"orders\"}",
             &s);
    assert_string_equal(s.topic, "orders");
    assert_string_equal(s.topic_space_ref, "acme/prod");
    assert_null(s.topic_space); /* set by the API once it checked the caller's roles there */
    /* the body cannot name a topic space guid; a stored mapping keeps the one checked */
    s.topic_space = strdup("5d2c0d3e-0000-4000-8000-000000000001");
    json_t *j = mapping_spec_to_json(&s);
    assert_string_equal(json_string_value(json_object_get(j, "topic")), "acme/prod/orders");
    struct mapping_spec back;
    enum skiff_err code = SKIFF_OK;
    char err[256];
    assert_int_equal(mapping_spec_from_json(j, &back, &code, err, sizeof err), 0);
    assert_string_equal(back.topic, "orders");
    assert_string_equal(back.topic_space_ref, "acme/prod");
    assert_string_equal(back.topic_space, "5d2c0d3e-0000-4000-8000-000000000001");
    json_decref(j);
    mapping_spec_free(&back);
    mapping_spec_free(&s);
    expect_refused("{\"app\": \"a\", \"topic\": \"prod/orders\"}", "invalid_value",
                   "ORG/SPACE/NAME");
    expect_refused("{\"app\": \"a\", \"topic\": \"a/b/c/orders\"}", "invalid_value",
                   "ORG/SPACE/NAME");
    expect_refused("{\"app\": \"a\", \"topic\": \"/prod/orders\"}", "invalid_value",
                   "ORG/SPACE/NAME");
    expect_refused("{\"app\": \"a\", \"topic\": \"acme//orders\"}", "invalid_value",
                   "ORG/SPACE/NAME");
    expect_refused("{\"app\": \"a\", \"topic\": \"acme/prod/\"}", "invalid_value",
                   "topic name");
}

static void test_refusals_name_the_field(void **state)
{
    (void)state;
    expect_refused("{\"topic\": \"t\"}", "invalid_value", "'app' is required");
    expect_refused("{\"app\": \"Bad\", \"topic\": \"t\"}", "invalid_value", "not an app name");
    expect_refused("{\"app\": \"a\"}", "invalid_value", "exactly one trigger");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"schedule\": \"@hourly\"}", "invalid_value",
                   "exactly one trigger");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"colour\": 1}", "unknown_field",
                   "'colour'");
    expect_refused("{\"app\": \"a\", \"topic\": \"Bad Topic\"}", "invalid_value", "topic name");
    expect_refused("{\"app\": \"a\", \"schedule\": \"61 * * * *\"}", "invalid_value", "minute");
    expect_refused("{\"app\": \"a\", \"on_app_event\": \"shop:exploded\"}", "invalid_value",
                   "staged, started");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"filters\": [\"type\"]}", "invalid_value",
                   "no '='");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"filters\": \"type=x\"}", "invalid_value",
                   "'filters'");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"retries\": -1}", "invalid_value",
                   "'retries'");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"retries\": \"5\"}", "invalid_value",
                   "'retries'");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"concurrency\": 0}", "invalid_value",
                   "'concurrency'");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"max_age\": \"soon\"}", "invalid_value",
                   "'max_age'");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"backoff_ms\": 500, \"backoff_cap_ms\": "
                   "100}",
                   "invalid_value", "raise the cap");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"reply_topic\": \"t\"}", "invalid_value",
                   "loop");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"ordered\": 1}", "invalid_value",
                   "'ordered'");
    expect_refused("{\"app\": \"a\", \"topic\": \"t\", \"from\": \"middle\"}", "invalid_value",
                   "'from'");
}

static void test_replay_since(void **state)
{
    (void)state;
    bool is_offset;
    uint64_t off = 0;
    int64_t t = 0;
    char err[256];
    int64_t now = 1795000000000;
    assert_int_equal(trigger_parse_since("42", now, &is_offset, &off, &t, err, sizeof(err)), 0);
    assert_true(is_offset);
    assert_int_equal(off, 42);
    assert_int_equal(trigger_parse_since("1h", now, &is_offset, &off, &t, err, sizeof(err)), 0);
    assert_false(is_offset);
    assert_int_equal(t, now - 3600000);
    assert_int_equal(
        trigger_parse_since("2026-11-27T10:00:00Z", now, &is_offset, &off, &t, err, sizeof(err)),
        0);
    assert_int_equal(t, 1795773600000);
    assert_int_equal(trigger_parse_since("2026-11-27T10:00:00.250Z", now, &is_offset, &off, &t, err,
                                         sizeof(err)),
                     0);
    assert_int_equal(t, 1795773600250);
    assert_int_equal(trigger_parse_since("2026-11-27T11:00:00+01:00", now, &is_offset, &off, &t,
                                         err, sizeof(err)),
                     0);
    assert_int_equal(t, 1795773600000);
    assert_int_equal(trigger_parse_since("yesterday", now, &is_offset, &off, &t, err, sizeof(err)),
                     TRIGGER_EINVAL);
    assert_non_null(strstr(err, "RFC 3339"));
    assert_int_equal(
        trigger_parse_since("2026-11-27T10:00:00", now, &is_offset, &off, &t, err, sizeof(err)),
        TRIGGER_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_mapping_defaults),
        cmocka_unit_test(test_policy_fields_and_round_trip),
        cmocka_unit_test(test_max_given_round_trip),
        cmocka_unit_test(test_schedule_and_app_event),
        cmocka_unit_test(test_another_spaces_topic),
        cmocka_unit_test(test_refusals_name_the_field),
        cmocka_unit_test(test_replay_since),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
