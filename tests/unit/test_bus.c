/* Unit tests for bus/: reading a router's access lines without a JSON parse, which must read
 * exactly what jansson reads, and leave every other line to it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "bus/bus.h"

#define GUID "0f8fad5b-d9cb-469f-a165-70867728950e"

/* Whether the plain reading of line gives what jansson gives, when it accepts the line. */
static bool parse_both(const char *line, struct bus_access *a)
{
    if (!bus_access_parse_plain(line, strlen(line), a))
        return false;
    json_t *o = json_loads(line, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "type")), "access");
    assert_string_equal(json_string_value(json_object_get(o, "app_guid")), a->app_guid);
    assert_true(a->has_router_index);
    assert_int_equal(json_integer_value(json_object_get(o, "router_index")), a->router_index);
    const char *text = json_string_value(json_object_get(o, "line"));
    assert_int_equal(strlen(text), a->text_len);
    assert_memory_equal(text, a->text, a->text_len);
    json_decref(o);
    return true;
}

static void test_a_line_as_the_router_writes_it_is_read(void **state)
{
    (void)state;
    struct bus_access a;
    assert_true(parse_both("{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,"
                           "\"line\":\"GET /small 200 13B 0.1ms x_request_id:4f0c\"}",
                           &a));
    assert_string_equal(a.app_guid, GUID);
    assert_int_equal(a.router_index, 0);
    assert_int_equal(a.text_len, strlen("GET /small 200 13B 0.1ms x_request_id:4f0c"));
    assert_true(parse_both("{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":12,"
                           "\"line\":\"\"}",
                           &a));
    assert_int_equal(a.router_index, 12);
    assert_int_equal(a.text_len, 0);
}

static void test_other_lines_are_left_to_the_json_reader(void **state)
{
    (void)state;
    const char *lines[] = {
        /* escapes, or anything but printable ASCII, in the text or the guid */
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,\"line\":\"GET /\\\"\"}",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,\"line\":\"GET /\\u0041\"}",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,\"line\":\"GET /\xc3\xa9\"}",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,\"line\":\"GET\t/\"}",
        "{\"type\":\"access\",\"app_guid\":\"0f8fad5b-d9cb-469f-a165-70867728950\\u0065\","
        "\"router_index\":0,\"line\":\"GET /\"}",
        /* another shape: key order, spaces, no index, a guid of another length */
        "{\"app_guid\":\"" GUID "\",\"type\":\"access\",\"router_index\":0,\"line\":\"GET /\"}",
        "{\"type\": \"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,\"line\":\"GET /\"}",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"line\":\"GET /\"}",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "x\",\"router_index\":0,\"line\":\"GET /\"}",
        /* numbers JSON spells otherwise, or that are not small non-negative integers */
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":01,\"line\":\"GET /\"}",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":-1,\"line\":\"GET /\"}",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":1.5,\"line\":\"GET /\"}",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":1234567890,\"line\":\"x\"}",
        /* cut short, or something after the object */
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,\"line\":\"GET /\"",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,\"line\":\"GET /",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,\"line\":\"GET /\"} ",
        "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":0,\"line\":\"GET /\"}}",
        "{\"type\":\"access\",\"app_guid\":\"",
        "",
        /* other messages */
        "{\"type\":\"hello\",\"pid\":1,\"router_index\":0}",
        "{\"type\":\"wake\",\"app_guid\":\"" GUID "\"}",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        struct bus_access a;
        if (bus_access_parse_plain(lines[i], strlen(lines[i]), &a))
            fail_msg("read without JSON: %s", lines[i]);
    }
}

static void test_the_length_bounds_the_line(void **state)
{
    (void)state;
    /* the bus reads lines in place: what follows the length is the next line */
    const char *two = "{\"type\":\"access\",\"app_guid\":\"" GUID "\",\"router_index\":3,"
                      "\"line\":\"GET /a\"}\n{\"type\":\"hello\"}";
    struct bus_access a;
    assert_true(bus_access_parse_plain(two, (size_t)(strchr(two, '\n') - two), &a));
    assert_int_equal(a.router_index, 3);
    assert_int_equal(a.text_len, 6);
    assert_memory_equal(a.text, "GET /a", 6);
    assert_false(bus_access_parse_plain(two, (size_t)(strchr(two, '\n') - two) - 1, &a));
}

static void count_entry(void *ctx, const char *app, const char *process, double in_flight,
                        double requests)
{
    double *sum = ctx;
    assert_int_equal(strlen(app), 36);
    assert_true(strlen(process) > 0 && strlen(process) < 64);
    *sum += in_flight + requests;
}

static void test_metrics_entries_are_checked(void **state)
{
    (void)state;
    json_t *msg = json_loads(
        "{\"type\":\"metrics\",\"apps\":["
        "{\"app_guid\":\"" GUID "\",\"process\":\"web\",\"in_flight\":2.5,\"requests\":10},"
        "{\"app_guid\":\"short\",\"process\":\"web\",\"in_flight\":1,\"requests\":1},"
        "{\"app_guid\":\"" GUID "\",\"process\":\"\",\"in_flight\":1,\"requests\":1},"
        "{\"app_guid\":\"" GUID "\",\"process\":\"web\",\"in_flight\":-1,\"requests\":1},"
        "{\"app_guid\":\"" GUID "\",\"process\":\"web\",\"in_flight\":1e300,\"requests\":1},"
        "{\"app_guid\":\"" GUID "\",\"process\":\"web\",\"in_flight\":\"9\",\"requests\":1},"
        "{\"app_guid\":\"" GUID "\",\"process\":\"web\"},"
        "{\"app_guid\":\"" GUID "\",\"process\":\""
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        "\",\"in_flight\":1,\"requests\":1},"
        "7, null, [], {}]}",
        0, NULL);
    assert_non_null(msg);
    double sum = 0;
    assert_int_equal(bus_metrics_each(msg, count_entry, &sum), 1);
    assert_true(sum == 12.5);
    json_decref(msg);
    msg = json_loads("{\"type\":\"metrics\",\"apps\":{}}", 0, NULL);
    assert_int_equal(bus_metrics_each(msg, count_entry, &sum), 0);
    json_decref(msg);
    assert_int_equal(bus_metrics_each(NULL, count_entry, &sum), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_entries_are_checked),
        cmocka_unit_test(test_a_line_as_the_router_writes_it_is_read),
        cmocka_unit_test(test_other_lines_are_left_to_the_json_reader),
        cmocka_unit_test(test_the_length_bounds_the_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
