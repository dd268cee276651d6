/* Unit tests for the router's bus client: reading drain requests (whose address must match a
 * backend's byte for byte, since workers find the backend's pool that way) and logging
 * unknown message types once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <string.h>

#include "router/route_table.h"
#include "router/router_internal.h"

static int parse_drain(const char *text, struct sockaddr_storage *addr, socklen_t *len,
                       uint64_t *id, char *err, size_t errsize)
{
    json_t *msg = json_loads(text, 0, NULL);
    assert_non_null(msg);
    int rc = router_bus_parse_drain(msg, addr, len, id, err, errsize);
    json_decref(msg);
    return rc;
}

static void test_drain_address_matches_the_backend(void **state)
{
    (void)state;
    const char *routes = "{\"type\":\"routes\",\"version\":1,\"routes\":[{\"host\":\"a.localhost\","
                         "\"path\":\"\",\"app_guid\":\"g\",\"app_name\":\"a\",\"process\":\"web\","
                         "\"backends\":[{\"addr\":\"127.0.0.1:61001\",\"index\":0}]}]}";
    struct route_table *t = NULL;
    char err[200] = "";
    assert_int_equal(route_table_parse(routes, strlen(routes), &t, err, sizeof(err), NULL), 0);
    const struct route *r = route_table_route_at(t, 0);
    assert_int_equal(r->backend_count, 1);

    struct sockaddr_storage addr;
    socklen_t len = 0;
    uint64_t id = 0;
    assert_int_equal(parse_drain("{\"type\":\"drain\",\"addr\":\"127.0.0.1:61001\",\"id\":7}",
                                 &addr, &len, &id, err, sizeof(err)),
                     0);
    assert_int_equal(id, 7);
    assert_int_equal(len, r->backends[0].addr_len);
    assert_memory_equal(&addr, &r->backends[0].addr, len);

    assert_int_equal(parse_drain("{\"type\":\"drain\",\"addr\":\"127.0.0.1:61002\",\"id\":8}",
                                 &addr, &len, &id, err, sizeof(err)),
                     0);
    assert_memory_not_equal(&addr, &r->backends[0].addr, len);
    route_table_unref(t);
}

static void test_bad_drain_requests_say_what_is_wrong(void **state)
{
    (void)state;
    struct sockaddr_storage addr;
    socklen_t len;
    uint64_t id;
    char err[200];
    const char *no_id = "{\"type\":\"drain\",\"addr\":\"127.0.0.1:61001\"}";
    assert_int_equal(parse_drain(no_id, &addr, &len, &id, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "\"id\""));
    const char *zero = "{\"type\":\"drain\",\"addr\":\"127.0.0.1:61001\",\"id\":0}";
    assert_int_equal(parse_drain(zero, &addr, &len, &id, err, sizeof(err)), -EINVAL);
    const char *text_id = "{\"type\":\"drain\",\"addr\":\"127.0.0.1:61001\",\"id\":\"1\"}";
    assert_int_equal(parse_drain(text_id, &addr, &len, &id, err, sizeof(err)), -EINVAL);
    const char *no_addr = "{\"type\":\"drain\",\"id\":3}";
    assert_int_equal(parse_drain(no_addr, &addr, &len, &id, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "HOST:PORT"));
    const char *bad_addr = "{\"type\":\"drain\",\"addr\":\"localhost\",\"id\":3}";
    assert_int_equal(parse_drain(bad_addr, &addr, &len, &id, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "localhost"));
}

static void test_unknown_types_are_logged_once_each(void **state)
{
    (void)state;
    assert_true(router_bus_unknown_type_is_new("reroute"));
    assert_false(router_bus_unknown_type_is_new("reroute"));
    assert_true(router_bus_unknown_type_is_new("quiesce"));
    assert_false(router_bus_unknown_type_is_new("quiesce"));
    assert_true(router_bus_unknown_type_is_new(NULL)); /* a line without a type */
    assert_false(router_bus_unknown_type_is_new(NULL));
    router_bus_free();
    assert_true(router_bus_unknown_type_is_new("reroute"));
    router_bus_free();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_drain_address_matches_the_backend),
        cmocka_unit_test(test_bad_drain_requests_say_what_is_wrong),
        cmocka_unit_test(test_unknown_types_are_logged_once_each),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
