/* Unit tests for router/route_table: parsing the bus message, host/wildcard/path lookup,
 * backend choice and the current-table swap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router/route_table.h"

#include "routes_message.h"

static struct route_table *parse(const char *json)
{
    struct route_table *t = NULL;
    char err[256] = "";
    int skipped = 0;
    int r = route_table_parse(json, strlen(json), &t, err, sizeof(err), &skipped);
    if (r != 0)
        fail_msg("parse failed: %s", err);
    return t;
}

static const char *app_of(struct route_table *t, const char *host, const char *path)
{
    struct route *r = route_table_lookup(t, host, strlen(host), path, strlen(path));
    return r ? r->app_name : NULL;
}

/* The route of a table of one, a.localhost, with backends 127.0.0.1:1 to 127.0.0.1:n (n < 10);
 * *t, the table (the caller unrefs it). */
static struct route *a_route(int n, struct route_table **t)
{
    char json[512];
    size_t len = (size_t)snprintf(json, sizeof json,
                                  "{\"routes\":[{\"host\":\"a.localhost\",\"backends\":[");
    for (int i = 1; i <= n; i++)
        len += (size_t)snprintf(json + len, sizeof json - len, "%s{\"addr\":\"127.0.0.1:%d\"}",
                                i > 1 ? "," : "", i);
    snprintf(json + len, sizeof json - len, "]}]}");
    *t = parse(json);
    struct route *r = route_table_lookup(*t, "a.localhost", 11, "/", 1);
    assert_non_null(r);
    assert_int_equal(r->backend_count, n);
    return r;
}

static const char TABLE[] =
    "{\"type\":\"routes\",\"version\":7,\"routes\":["
    "{\"host\":\"api.localhost\",\"path\":\"\",\"app_name\":\"root\",\"backends\":[{\"addr\":"
    "\"127.0.0.1:1001\"}]},"
    "{\"host\":\"api.localhost\",\"path\":\"/v1\",\"app_name\":\"v1\",\"backends\":[{\"addr\":"
    "\"127.0.0.1:1002\"}]},"
    "{\"host\":\"api.localhost\",\"path\":\"/v1/admin/\",\"app_name\":\"admin\",\"backends\":[]},"
    "{\"host\":\"*.example.test\",\"app_name\":\"wild\",\"backends\":[{\"addr\":\"[::1]:80\"}]},"
    "{\"host\":\"*.b.example.test\",\"app_name\":\"wild-b\",\"backends\":[]},"
    "{\"host\":\"Hello.LocalHost.\",\"app_name\":\"hello\",\"backends\":[]},"
    "{\"host\":\"only.localhost\",\"path\":\"/x\",\"app_name\":\"only-x\",\"backends\":[]}"
    "]}";

static void test_exact_host_ignores_case_and_port(void **state)
{
    (void)state;
    struct route_table *t = parse(TABLE);
    assert_int_equal(route_table_version(t), 7);
    assert_string_equal(app_of(t, "hello.localhost", "/"), "hello");
    assert_string_equal(app_of(t, "HELLO.localhost:8080", "/a"), "hello");
    assert_string_equal(app_of(t, "hello.localhost.", "/"), "hello");
    assert_null(app_of(t, "hello.localhost.evil", "/"));
    assert_null(app_of(t, "", "/"));
    assert_null(app_of(t, ":80", "/"));
    route_table_unref(t);
}

static void test_longest_path_prefix_at_segment_boundary(void **state)
{
    (void)state;
    struct route_table *t = parse(TABLE);
    assert_string_equal(app_of(t, "api.localhost", "/"), "root");
    assert_string_equal(app_of(t, "api.localhost", "/v1"), "v1");
    assert_string_equal(app_of(t, "api.localhost", "/v1/"), "v1");
    assert_string_equal(app_of(t, "api.localhost", "/v1?q=1"), "v1");
    assert_string_equal(app_of(t, "api.localhost", "/v10"), "root");
    assert_string_equal(app_of(t, "api.localhost", "/v1/admin"), "admin");
    assert_string_equal(app_of(t, "api.localhost", "/v1/admin/users"), "admin");
    assert_string_equal(app_of(t, "api.localhost", "/v1/administrator"), "v1");
    assert_string_equal(app_of(t, "only.localhost", "/x/y"), "only-x");
    assert_null(app_of(t, "only.localhost", "/"));
    assert_null(app_of(t, "only.localhost", "/xy"));
    route_table_unref(t);
}

static void test_wildcards_closest_first(void **state)
{
    (void)state;
    struct route_table *t = parse(TABLE);
    assert_string_equal(app_of(t, "a.example.test", "/"), "wild");
    assert_string_equal(app_of(t, "x.y.example.test", "/"), "wild");
    assert_string_equal(app_of(t, "c.b.example.test", "/"), "wild-b");
    assert_string_equal(app_of(t, "A.B.EXAMPLE.TEST:1", "/"), "wild-b");
    assert_null(app_of(t, "example.test", "/"));
    route_table_unref(t);
}

static void test_invalid_entries_are_skipped(void **state)
{
    (void)state;
    const char *json =
        "{\"type\":\"routes\",\"routes\":["
        "{\"host\":\"ok.localhost\",\"backends\":[{\"addr\":\"nope\"},{\"addr\":\"1.2.3.4:99999\"},"
        "{\"addr\":\"127.0.0.1:5\"}]},"
        "{\"host\":\"bad host\",\"backends\":[]},"
        "{\"path\":\"/nohost\"},"
        "{\"host\":\"p.localhost\",\"path\":\"nope\"},"
        "{\"host\":\"*x.localhost\"},"
        "42]}";
    struct route_table *t = NULL;
    char err[256];
    int skipped = 0;
    assert_int_equal(route_table_parse(json, strlen(json), &t, err, sizeof(err), &skipped), 0);
    assert_int_equal(route_table_route_count(t), 1);
    assert_int_equal(skipped, 7);
    struct route *r = route_table_lookup(t, "ok.localhost", 12, "/", 1);
    assert_non_null(r);
    assert_int_equal(r->backend_count, 1);
    assert_string_equal(r->backends[0].addr_text, "127.0.0.1:5");
    route_table_unref(t);

    assert_true(route_table_parse("{", 1, &t, err, sizeof(err), NULL) < 0);
    assert_true(strstr(err, "not JSON") != NULL);
    assert_true(route_table_parse("[]", 2, &t, err, sizeof(err), NULL) < 0);
    assert_true(strstr(err, "routes") != NULL);
}

static void test_round_robin_skips_tried_backends(void **state)
{
    (void)state;
    unsigned cursor = 0;
    struct route_table *t = NULL;
    struct route *r = a_route(3, &t);
    int seen[3] = {0};
    for (int i = 0; i < 30; i++)
        seen[route_pick_backend(r, &cursor, NULL, 0) - r->backends]++;
    assert_int_equal(seen[0], 10);
    assert_int_equal(seen[1], 10);
    assert_int_equal(seen[2], 10);
    struct route_backend *tried[3];
    tried[0] = route_pick_backend(r, &cursor, NULL, 0);
    tried[1] = route_pick_backend(r, &cursor, tried, 1);
    assert_ptr_not_equal(tried[0], tried[1]);
    tried[2] = route_pick_backend(r, &cursor, tried, 2);
    assert_ptr_not_equal(tried[2], tried[0]);
    assert_ptr_not_equal(tried[2], tried[1]);
    assert_null(route_pick_backend(r, &cursor, tried, 3));
    route_table_unref(t);
}

static void test_backends_marked_down_are_passed_over(void **state)
{
    (void)state;
    unsigned cursor = 0;
    struct route_table *t = NULL;
    struct route *r = a_route(2, &t);
    route_backend_mark_down(&r->backends[0], 60000);
    for (int i = 0; i < 10; i++)
        assert_ptr_equal(route_pick_backend(r, &cursor, NULL, 0), &r->backends[1]);
    /* when every instance is down they are tried anyway */
    route_backend_mark_down(&r->backends[1], 60000);
    struct route_backend *first = route_pick_backend(r, &cursor, NULL, 0);
    assert_non_null(first);
    assert_non_null(route_pick_backend(r, &cursor, &first, 1));
    /* a mark in the past is no mark */
    route_backend_mark_down(&r->backends[0], -1);
    route_backend_mark_down(&r->backends[1], -1);
    int seen[2] = {0};
    for (int i = 0; i < 10; i++)
        seen[route_pick_backend(r, &cursor, NULL, 0) - r->backends]++;
    assert_int_equal(seen[0], 5);
    route_table_unref(t);
}

/* A hedge goes only to an instance not tried and not marked down: none when only down ones
 * are left (route_pick_backend would try those anyway). */
static void test_a_hedge_is_picked_among_instances_up_only(void **state)
{
    (void)state;
    unsigned cursor = 0;
    struct route_table *t = NULL;
    struct route *r = a_route(3, &t);
    struct route_backend *tried = &r->backends[0];
    route_backend_mark_down(&r->backends[1], 60000);
    for (int i = 0; i < 6; i++)
        assert_ptr_equal(route_pick_backend_up(r, &cursor, &tried, 1), &r->backends[2]);
    route_backend_mark_down(&r->backends[2], 60000);
    assert_null(route_pick_backend_up(r, &cursor, &tried, 1));
    assert_non_null(route_pick_backend(r, &cursor, &tried, 1));
    /* a backend marked down is suspect until a connection to it succeeds after its mark */
    assert_false(route_backend_suspect(&r->backends[0]));
    assert_true(route_backend_suspect(&r->backends[1]));
    route_backend_connected(&r->backends[1]); /* its mark is live: it stays */
    assert_true(route_backend_suspect(&r->backends[1]));
    route_backend_mark_down(&r->backends[1], -1); /* expired */
    assert_ptr_equal(route_pick_backend_up(r, &cursor, &tried, 1), &r->backends[1]);
    assert_true(route_backend_suspect(&r->backends[1]));
    route_backend_connected(&r->backends[1]);
    assert_false(route_backend_suspect(&r->backends[1]));
    route_table_unref(t);
}

/* The addresses route_table_lost gives, as text, comma-separated. */
static void lost_text(const char *old_json, const char *now_json, char *out, size_t size)
{
    struct route_table *old = parse(old_json), *now = parse(now_json);
    struct route_addr *lost = NULL;
    size_t n = route_table_lost(old, now, &lost);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        snprintf(out + strlen(out), size - strlen(out), "%s%s", i ? "," : "", lost[i].text);
    if (n == 0)
        assert_null(lost);
    free(lost);
    route_table_unref(old);
    route_table_unref(now);
}

static void test_lost_backends_are_those_gone_without_a_drain(void **state)
{
    (void)state;
    char got[512];
    const char *old = "{\"routes\":["
                      "{\"host\":\"a.localhost\",\"backends\":[{\"addr\":\"10.0.0.1:1\"},"
                      "{\"addr\":\"10.0.0.2:1\"},{\"addr\":\"10.0.0.3:1\"}]},"
                      "{\"host\":\"a.localhost\",\"path\":\"/v1\",\"backends\":["
                      "{\"addr\":\"10.0.0.4:1\"},{\"addr\":\"[::1]:5\"}]},"
                      "{\"host\":\"gone.localhost\",\"backends\":[{\"addr\":\"10.0.0.9:1\"}]},"
                      "{\"host\":\"*.w.test\",\"backends\":[{\"addr\":\"10.0.0.7:1\"}]}]}";
    /* 10.0.0.1 moved to another route (not lost), 10.0.0.2 is drained, 10.0.0.3, [::1]:5 and
     * 10.0.0.7 are gone from routes that stay (lost, each once), 10.0.0.9's route was unmapped
     * (its instance may still run: not lost), 10.0.0.4 stays */
    const char *now = "{\"draining\":[\"10.0.0.2:1\",\"bad\"],\"routes\":["
                      "{\"host\":\"a.localhost\",\"backends\":[]},"
                      "{\"host\":\"a.localhost\",\"path\":\"/v1\",\"backends\":["
                      "{\"addr\":\"10.0.0.4:1\"}]},"
                      "{\"host\":\"*.w.test\",\"backends\":[]},"
                      "{\"host\":\"b.localhost\",\"backends\":[{\"addr\":\"10.0.0.1:1\"}]}]}";
    lost_text(old, now, got, sizeof got);
    assert_string_equal(got, "10.0.0.3:1,10.0.0.7:1,[::1]:5");
    /* the same table again loses nothing; nor does a first table */
    lost_text(now, now, got, sizeof got);
    assert_string_equal(got, "");
    lost_text("{\"routes\":[]}", old, got, sizeof got);
    assert_string_equal(got, "");
    /* one address in two routes is lost once, when it left both */
    lost_text("{\"routes\":[{\"host\":\"x.localhost\",\"backends\":[{\"addr\":\"10.0.0.5:1\"}]},"
              "{\"host\":\"y.localhost\",\"backends\":[{\"addr\":\"10.0.0.5:1\"}]}]}",
              "{\"routes\":[{\"host\":\"x.localhost\",\"backends\":[]},"
              "{\"host\":\"y.localhost\",\"backends\":[]}]}",
              got, sizeof got);
    assert_string_equal(got, "10.0.0.5:1");
    /* a route switched to another app (blue-green): the first app's instances still run */
    lost_text("{\"routes\":[{\"host\":\"x.localhost\",\"app_guid\":\"blue\",\"backends\":["
              "{\"addr\":\"10.0.0.5:1\"}]}]}",
              "{\"routes\":[{\"host\":\"x.localhost\",\"app_guid\":\"green\",\"backends\":["
              "{\"addr\":\"10.0.0.6:1\"}]}]}",
              got, sizeof got);
    assert_string_equal(got, "");
}

static void test_lost_backends_of_a_big_table_each_once_in_order(void **state)
{
    (void)state;
    /* 10,000 backends; route r of now has lost its last backend (9) when r is even, and every
     * route lists route 0's first backend (one address in every route, kept) */
    int routes = 1000;
    char *old_json = routes_message(routes, 10, 0, true),
         *now_json = routes_message(routes, 10, 2, true);
    struct route_table *old = parse(old_json), *now = parse(now_json);
    struct route_addr *lost = NULL;
    size_t n = route_table_lost(old, now, &lost);
    assert_int_equal(n, (size_t)routes / 2);
    for (size_t i = 0; i < n; i++) {
        char want[64];
        int k = (int)i * 2 * 10 + 9; /* sorted by address: route 0's first, then 2, 4... */
        snprintf(want, sizeof want, "10.%d.%d.%d:61009", k >> 16, (k >> 8) & 255, k & 255);
        assert_string_equal(lost[i].text, want);
    }
    free(lost);
    /* nothing is lost the other way round, where every address of now was in old */
    assert_int_equal(route_table_lost(now, old, &lost), 0);
    assert_null(lost);
    route_table_unref(old);
    route_table_unref(now);
    free(old_json);
    free(now_json);
}

/* A mark is its address's: it covers every route with that address, in the table it was made
 * in and in every other one alive (each worker may route with another), and a table made
 * later while one of them lives; it goes with the last table that has the address. */
static void test_a_down_mark_covers_every_route_and_table_with_its_address(void **state)
{
    (void)state;
    size_t before = route_addr_marks_count();
    const char *json = "{\"routes\":[{\"host\":\"a.localhost\",\"backends\":["
                       "{\"addr\":\"127.0.0.1:1\"},{\"addr\":\"127.0.0.1:2\"}]},"
                       "{\"host\":\"b.localhost\",\"path\":\"/x\",\"backends\":["
                       "{\"addr\":\"127.0.0.1:2\"},{\"addr\":\"127.0.0.1:3\"}]}]}";
    const char *next = "{\"routes\":[{\"host\":\"c.localhost\",\"backends\":["
                       "{\"addr\":\"127.0.0.1:3\"},{\"addr\":\"127.0.0.1:2\"}]}]}";
    struct route_table *old = parse(json), *now = parse(next);
    assert_int_equal(route_addr_marks_count(), before + 3); /* one per address */
    struct route *a = route_table_lookup(old, "a.localhost", 11, "/", 1);
    struct route *b = route_table_lookup(old, "b.localhost", 11, "/x", 2);
    struct route *c = route_table_lookup(now, "c.localhost", 11, "/", 1);
    route_backend_mark_down(&a->backends[1], 60000); /* 127.0.0.1:2, through route a */
    assert_true(route_backend_down(&b->backends[0]));
    assert_true(route_backend_down(&c->backends[1]));
    assert_false(route_backend_down(&b->backends[1]));
    assert_true(route_backend_suspect(&c->backends[1]));
    unsigned cursor = 0;
    for (int i = 0; i < 4; i++) {
        assert_ptr_equal(route_pick_backend(b, &cursor, NULL, 0), &b->backends[1]);
        assert_ptr_equal(route_pick_backend(c, &cursor, NULL, 0), &c->backends[0]);
    }
    /* a table parsed while the others live has the mark too */
    route_table_unref(old);
    struct route_table *later = parse(json);
    struct route *a2 = route_table_lookup(later, "a.localhost", 11, "/", 1);
    assert_true(route_backend_down(&a2->backends[1]));
    assert_false(route_backend_down(&a2->backends[0]));
    /* an expired mark, cleared by a connection that succeeds, is cleared for all */
    route_backend_mark_down(&c->backends[1], -1);
    route_backend_connected(&a2->backends[1]);
    assert_false(route_backend_suspect(&c->backends[1]));
    route_table_unref(now);
    route_table_unref(later);
    assert_int_equal(route_addr_marks_count(), before);
}

static void test_each_cursor_goes_round_on_its_own(void **state)
{
    (void)state;
    struct route_table *t = NULL;
    struct route *r = a_route(2, &t);
    assert_int_equal(r->index, 0);
    unsigned one = 0, other = 1; /* workers start at different places */
    assert_ptr_equal(route_pick_backend(r, &one, NULL, 0), &r->backends[0]);
    assert_ptr_equal(route_pick_backend(r, &other, NULL, 0), &r->backends[1]);
    assert_ptr_equal(route_pick_backend(r, &one, NULL, 0), &r->backends[1]);
    assert_ptr_equal(route_pick_backend(r, &other, NULL, 0), &r->backends[0]);
    route_table_unref(t);
}

static void test_least_connection_prefers_idle(void **state)
{
    (void)state;
    unsigned cursor = 0;
    const char *json = "{\"routes\":[{\"host\":\"a.localhost\",\"balance\":\"least-connection\","
                       "\"backends\":[{\"addr\":\"127.0.0.1:1\"},{\"addr\":\"127.0.0.1:2\"}]}]}";
    struct route_table *t = parse(json);
    struct route *r = route_table_lookup(t, "a.localhost", 11, "/", 1);
    assert_int_equal(r->balance, ROUTE_BALANCE_LEAST_CONNECTION);
    r->backends[0].active = 3;
    r->backends[1].active = 1;
    assert_ptr_equal(route_pick_backend(r, &cursor, NULL, 0), &r->backends[1]);
    r->backends[1].active = 5;
    assert_ptr_equal(route_pick_backend(r, &cursor, NULL, 0), &r->backends[0]);
    route_table_unref(t);
}

static void test_current_table_swaps_and_keeps_old_readers(void **state)
{
    (void)state;
    struct route_table *first = route_table_current(); /* empty before any publish */
    assert_int_equal(route_table_route_count(first), 0);
    uint64_t gen = route_table_current_generation();
    route_table_publish(parse(TABLE));
    assert_true(route_table_current_generation() != gen);
    struct route_table *now = route_table_current();
    assert_int_equal(route_table_version(now), 7);
    route_table_publish(route_table_new_empty());
    /* a reader that took the table before the swap still has it whole */
    assert_string_equal(app_of(now, "api.localhost", "/v1"), "v1");
    route_table_unref(now);
    route_table_unref(first);
    route_table_clear_current();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_host_ignores_case_and_port),
        cmocka_unit_test(test_longest_path_prefix_at_segment_boundary),
        cmocka_unit_test(test_wildcards_closest_first),
        cmocka_unit_test(test_invalid_entries_are_skipped),
        cmocka_unit_test(test_round_robin_skips_tried_backends),
        cmocka_unit_test(test_backends_marked_down_are_passed_over),
        cmocka_unit_test(test_a_hedge_is_picked_among_instances_up_only),
        cmocka_unit_test(test_lost_backends_are_those_gone_without_a_drain),
        cmocka_unit_test(test_lost_backends_of_a_big_table_each_once_in_order),
        cmocka_unit_test(test_a_down_mark_covers_every_route_and_table_with_its_address),
        cmocka_unit_test(test_each_cursor_goes_round_on_its_own),
        cmocka_unit_test(test_least_connection_prefers_idle),
        cmocka_unit_test(test_current_table_swaps_and_keeps_old_readers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
