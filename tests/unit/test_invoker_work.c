/* Unit tests for invoker/work_meter.c: the event work the autoscaler samples is a time integral
 * over the second, not its peak. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "invoker/invoker.h"

#define SECOND 1000000u

/* 100 deliveries of 1 ms each within one second, each asking for 8 instances while it lasts:
 * the peak was 8, the load over the second 0.8 (an instance's worth, not eight). */
static void test_burst_of_short_deliveries_is_not_sustained_load(void **state)
{
    (void)state;
    struct work_meter wm = {0};
    uint64_t t0 = 5 * SECOND;
    work_meter_set(&wm, 0, t0);
    for (int i = 0; i < 100; i++) {
        work_meter_set(&wm, 8, t0 + (uint64_t)i * 10000u);
        work_meter_set(&wm, 0, t0 + (uint64_t)i * 10000u + 1000u);
    }
    assert_float_equal(work_meter_take_average(&wm, t0 + SECOND), 0.8, 1e-9);
}

/* Work that lasts the whole second reads as itself; half a second of it as half. */
static void test_sustained_work_reads_as_its_level(void **state)
{
    (void)state;
    struct work_meter wm = {0};
    work_meter_set(&wm, 3, SECOND);
    assert_float_equal(work_meter_take_average(&wm, 2 * SECOND), 3, 1e-9);
    /* nothing changed in the next second: the level carries on */
    assert_float_equal(work_meter_take_average(&wm, 3 * SECOND), 3, 1e-9);
    work_meter_set(&wm, 0, 3 * SECOND + SECOND / 2);
    assert_float_equal(work_meter_take_average(&wm, 4 * SECOND), 1.5, 1e-9);
    assert_float_equal(work_meter_take_average(&wm, 5 * SECOND), 0, 1e-9);
}

/* Each read starts the next span: what was counted before it does not count again. */
static void test_read_starts_the_next_span(void **state)
{
    (void)state;
    struct work_meter wm = {0};
    work_meter_set(&wm, 10, SECOND);
    work_meter_set(&wm, 2, SECOND + SECOND / 10); /* 10 for 0.1 s, then 2 */
    assert_float_equal(work_meter_take_average(&wm, 2 * SECOND), 0.1 * 10 + 0.9 * 2, 1e-9);
    assert_float_equal(work_meter_take_average(&wm, 3 * SECOND), 2, 1e-9);
}

/* Never set, a zero span, a clock that steps back, negative work: sane numbers, no more. */
static void test_edges(void **state)
{
    (void)state;
    struct work_meter wm = {0};
    assert_float_equal(work_meter_take_average(&wm, SECOND), 0, 1e-9);
    struct work_meter fresh = {0};
    work_meter_set(&fresh, 4, SECOND);
    assert_float_equal(work_meter_take_average(&fresh, SECOND), 4, 1e-9); /* zero span: now */
    work_meter_set(&fresh, 6, SECOND / 2); /* back in time: the step counts nothing */
    assert_float_equal(work_meter_take_average(&fresh, 2 * SECOND), 6, 1e-9);
    work_meter_set(&fresh, -3, 2 * SECOND);
    assert_float_equal(work_meter_take_average(&fresh, 3 * SECOND), 0, 1e-9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_of_short_deliveries_is_not_sustained_load),
        cmocka_unit_test(test_sustained_work_reads_as_its_level),
        cmocka_unit_test(test_read_starts_the_next_span),
        cmocka_unit_test(test_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
