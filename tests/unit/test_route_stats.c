/* Unit tests for router/route_stats: the in-flight count integrated over time per worker and
 * averaged over each report period (what the autoscaler receives), with a fake clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>

#include "router/route_table.h"

#define MS 1000u /* microseconds */

static struct route_stats *fresh(const char *process, uint64_t *t0)
{
    struct route_stats *st = route_stats_get("11111111-2222-3333-4444-555555555555", process);
    *t0 = st->reported_at_us;
    return st;
}

static void test_one_request_for_the_whole_second_is_one(void **state)
{
    uint64_t t0;
    struct route_stats *st = fresh("whole", &t0);
    route_stats_change(st, 0, 1, t0);
    assert_int_equal(route_stats_in_flight(st), 1);
    assert_true(fabs(route_stats_take_average(st, t0 + 1000 * MS) - 1.0) < 1e-9);
    /* still in flight through the next second */
    assert_true(fabs(route_stats_take_average(st, t0 + 2000 * MS) - 1.0) < 1e-9);
    route_stats_change(st, 0, -1, t0 + 2500 * MS);
    assert_int_equal(route_stats_in_flight(st), 0);
    assert_true(fabs(route_stats_take_average(st, t0 + 3000 * MS) - 0.5) < 1e-9);
    assert_true(route_stats_take_average(st, t0 + 4000 * MS) == 0);
    route_stats_clear();
}

/* Ten 5 ms requests, each between two 100 ms marks: a sampler on those marks sees none. */
static void test_short_requests_between_samples_count(void **state)
{
    uint64_t t0;
    struct route_stats *st = fresh("bursts", &t0);
    for (uint64_t k = 0; k < 10; k++) {
        route_stats_change(st, 0, 1, t0 + k * 100 * MS + 20 * MS);
        route_stats_change(st, 0, -1, t0 + k * 100 * MS + 25 * MS);
    }
    assert_true(fabs(route_stats_take_average(st, t0 + 1000 * MS) - 0.05) < 1e-9);
    route_stats_clear();
}

/* Workers keep their own slots; the report adds them up. */
static void test_workers_add_up(void **state)
{
    uint64_t t0;
    struct route_stats *st = fresh("workers", &t0);
    route_stats_change(st, 0, 1, t0);
    route_stats_change(st, 0, 1, t0);
    route_stats_change(st, 3, 1, t0 + 250 * MS);
    route_stats_change(st, 0, -1, t0 + 500 * MS);
    route_stats_change(st, 0, -1, t0 + 500 * MS);
    route_stats_change(st, ROUTE_STATS_WORKERS - 1, 1, t0 + 900 * MS);
    assert_int_equal(route_stats_in_flight(st), 2);
    /* 2 x 0.5 + 1 x 0.75 + 1 x 0.1 */
    assert_true(fabs(route_stats_take_average(st, t0 + 1000 * MS) - 1.85) < 1e-9);
    assert_true(fabs(route_stats_take_average(st, t0 + 1500 * MS) - 2.0) < 1e-9);
    route_stats_clear();
}

/* A report that comes late or early averages over its own span, not a nominal second. */
static void test_average_is_over_the_span_since_the_last_report(void **state)
{
    uint64_t t0;
    struct route_stats *st = fresh("span", &t0);
    route_stats_change(st, 1, 1, t0 + 1000 * MS);
    route_stats_change(st, 1, 4, t0 + 1000 * MS); /* several at once */
    route_stats_change(st, 1, -5, t0 + 1200 * MS);
    assert_true(fabs(route_stats_take_average(st, t0 + 2000 * MS) - 0.5) < 1e-9);
    /* no time passed: nothing to average, not a division by zero */
    assert_true(route_stats_take_average(st, t0 + 2000 * MS) == 0);
    route_stats_clear();
}

/* A worker whose clock read a moment after the reader's adds nothing negative. */
static void test_a_worker_ahead_of_the_reader_counts_nothing_extra(void **state)
{
    uint64_t t0;
    struct route_stats *st = fresh("ahead", &t0);
    route_stats_change(st, 2, 1, t0 + 1000 * MS + 3);
    assert_true(route_stats_take_average(st, t0 + 1000 * MS) == 0);
    assert_true(fabs(route_stats_take_average(st, t0 + 2000 * MS + 3) - 1.0) < 1e-3);
    route_stats_clear();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_request_for_the_whole_second_is_one),
        cmocka_unit_test(test_short_requests_between_samples_count),
        cmocka_unit_test(test_workers_add_up),
        cmocka_unit_test(test_average_is_over_the_span_since_the_last_report),
        cmocka_unit_test(test_a_worker_ahead_of_the_reader_counts_nothing_extra),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
