/* Unit tests for cells/cells.c: zone names and a heartbeat's state. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cells/cells.h"

static void test_zone_names(void **state)
{
    (void)state;
    assert_true(cells_zone_valid("default"));
    assert_true(cells_zone_valid("eu-west-1a"));
    assert_true(cells_zone_valid("rack_2.row.3"));
    assert_true(cells_zone_valid("9"));
    assert_false(cells_zone_valid(NULL));
    assert_false(cells_zone_valid(""));
    assert_false(cells_zone_valid("-zone"));
    assert_false(cells_zone_valid(".hidden"));
    assert_false(cells_zone_valid("Zone"));
    assert_false(cells_zone_valid("a b"));
    assert_false(cells_zone_valid("a;rm -rf"));
    assert_false(cells_zone_valid("a\nb"));
    assert_false(cells_zone_valid("z\xc3\xa9"));
    char longest[CELLS_ZONE_MAX + 2];
    for (int i = 0; i < CELLS_ZONE_MAX + 1; i++)
        longest[i] = 'z';
    longest[CELLS_ZONE_MAX + 1] = '\0';
    assert_false(cells_zone_valid(longest));
    longest[CELLS_ZONE_MAX] = '\0';
    assert_true(cells_zone_valid(longest));
}

static void test_up_within_three_intervals(void **state)
{
    (void)state;
    const int64_t now = 1000000;
    assert_string_equal(cells_state(now, 500, now), "up");
    assert_string_equal(cells_state(now - 1500, 500, now), "up");
    assert_string_equal(cells_state(now - 1501, 500, now), "missing");
    assert_string_equal(cells_state(now - 60000, 5000, now), "missing");
    /* a heartbeat from a clock ahead of ours is up, not an error */
    assert_string_equal(cells_state(now + 2000, 500, now), "up");
}

static void test_malformed_heartbeats_are_missing(void **state)
{
    (void)state;
    assert_string_equal(cells_state(1000, 0, 1000), "missing");
    assert_string_equal(cells_state(1000, -5, 1000), "missing");
    assert_string_equal(cells_state(0, 500, 1000), "missing");
    assert_string_equal(cells_state(-1, 500, 1000), "missing");
    /* a huge interval does not overflow into "missing" or wrap into "up" wrongly */
    assert_string_equal(cells_state(1, INT64_MAX / 2, 1000), "up");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zone_names),
        cmocka_unit_test(test_up_within_three_intervals),
        cmocka_unit_test(test_malformed_heartbeats_are_missing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
