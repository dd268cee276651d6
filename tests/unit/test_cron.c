/* Unit tests for trigger/cron.c: parsing and next-fire computation (UTC). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <time.h>

#include "trigger/trigger.h"

/* Milliseconds at a UTC date and time. */
static int64_t utc(int y, int mon, int d, int h, int min)
{
    struct tm tm = {
        .tm_year = y - 1900, .tm_mon = mon - 1, .tm_mday = d, .tm_hour = h, .tm_min = min};
    return (int64_t)timegm(&tm) * 1000;
}

static int64_t next_of(const char *spec, int64_t after)
{
    struct cron_schedule s;
    char err[256] = "";
    int rc = cron_parse(spec, &s, err, sizeof(err));
    if (rc != 0)
        fail_msg("cron_parse('%s') failed: %s", spec, err);
    return cron_next(&s, after);
}

static void expect_error(const char *spec, const char *needle)
{
    struct cron_schedule s;
    char err[256] = "";
    assert_int_equal(cron_parse(spec, &s, err, sizeof(err)), TRIGGER_EINVAL);
    if (!strstr(err, needle))
        fail_msg("error for '%s' is '%s', expected it to mention '%s'", spec, err, needle);
}

static void test_every_minute_and_fixed_time(void **state)
{
    (void)state;
    /* strictly after: at 10:00:00 exactly the next fire is 10:01 */
    assert_int_equal(next_of("* * * * *", utc(2026, 11, 27, 10, 0)), utc(2026, 11, 27, 10, 1));
    assert_int_equal(next_of("* * * * *", utc(2026, 11, 27, 10, 0) + 59999),
                     utc(2026, 11, 27, 10, 1));
    assert_int_equal(next_of("0 3 * * *", utc(2026, 11, 27, 10, 0)), utc(2026, 11, 28, 3, 0));
    assert_int_equal(next_of("0 3 * * *", utc(2026, 11, 27, 2, 59)), utc(2026, 11, 27, 3, 0));
    /* rolls over the year */
    assert_int_equal(next_of("30 23 31 12 *", utc(2026, 12, 31, 23, 30)),
                     utc(2027, 12, 31, 23, 30));
}

static void test_ranges_steps_lists(void **state)
{
    (void)state;
    assert_int_equal(next_of("*/15 * * * *", utc(2026, 1, 1, 0, 1)), utc(2026, 1, 1, 0, 15));
    assert_int_equal(next_of("*/15 * * * *", utc(2026, 1, 1, 0, 45)), utc(2026, 1, 1, 1, 0));
    assert_int_equal(next_of("10-20/5 * * * *", utc(2026, 1, 1, 0, 16)), utc(2026, 1, 1, 0, 20));
    assert_int_equal(next_of("10-20/5 * * * *", utc(2026, 1, 1, 0, 20)), utc(2026, 1, 1, 1, 10));
    assert_int_equal(next_of("5,7,40 * * * *", utc(2026, 1, 1, 0, 7)), utc(2026, 1, 1, 0, 40));
    assert_int_equal(next_of("0 9-17 * * *", utc(2026, 1, 1, 17, 0)), utc(2026, 1, 2, 9, 0));
    /* `5/20`: from 5 on, every 20 */
    assert_int_equal(next_of("5/20 * * * *", utc(2026, 1, 1, 0, 30)), utc(2026, 1, 1, 0, 45));
}

static void test_names_and_weekdays(void **state)
{
    (void)state;
    /* 2026-11-27 is a Friday */
    assert_int_equal(next_of("0 0 * * MON", utc(2026, 11, 27, 12, 0)), utc(2026, 11, 30, 0, 0));
    assert_int_equal(next_of("0 0 * * mon-wed", utc(2026, 12, 1, 0, 0)), utc(2026, 12, 2, 0, 0));
    assert_int_equal(next_of("0 0 * * 7", utc(2026, 11, 27, 12, 0)), utc(2026, 11, 29, 0, 0));
    assert_int_equal(next_of("0 0 * * 0", utc(2026, 11, 27, 12, 0)), utc(2026, 11, 29, 0, 0));
    assert_int_equal(next_of("0 0 1 feb *", utc(2026, 11, 27, 12, 0)), utc(2027, 2, 1, 0, 0));
    assert_int_equal(next_of("0 0 1 jan-mar *", utc(2026, 1, 1, 0, 0)), utc(2026, 2, 1, 0, 0));
}

static void test_day_fields_either_matches(void **state)
{
    (void)state;
    /* both restricted: the 15th or a Monday, whichever comes first */
    assert_int_equal(next_of("0 0 15 * mon", utc(2026, 11, 27, 0, 0)), utc(2026, 11, 30, 0, 0));
    assert_int_equal(next_of("0 0 15 * mon", utc(2026, 12, 8, 0, 0)), utc(2026, 12, 14, 0, 0));
    assert_int_equal(next_of("0 0 15 * mon", utc(2026, 12, 14, 0, 0)), utc(2026, 12, 15, 0, 0));
    /* leap day */
    assert_int_equal(next_of("0 12 29 2 *", utc(2026, 1, 1, 0, 0)), utc(2028, 2, 29, 12, 0));
    /* the 31st skips short months */
    assert_int_equal(next_of("0 0 31 * *", utc(2026, 4, 1, 0, 0)), utc(2026, 5, 31, 0, 0));
}

static void test_shorthands(void **state)
{
    (void)state;
    int64_t t = utc(2026, 11, 27, 10, 17);
    assert_int_equal(next_of("@hourly", t), utc(2026, 11, 27, 11, 0));
    assert_int_equal(next_of("@daily", t), utc(2026, 11, 28, 0, 0));
    assert_int_equal(next_of("@midnight", t), utc(2026, 11, 28, 0, 0));
    assert_int_equal(next_of("@weekly", t), utc(2026, 11, 29, 0, 0));
    assert_int_equal(next_of("@monthly", t), utc(2026, 12, 1, 0, 0));
    assert_int_equal(next_of("@yearly", t), utc(2027, 1, 1, 0, 0));
    assert_int_equal(next_of("@annually", t), utc(2027, 1, 1, 0, 0));
}

static void test_every_interval(void **state)
{
    (void)state;
    int64_t t = utc(2026, 11, 27, 10, 17) + 123;
    assert_int_equal(next_of("@every 30s", t), t + 30000);
    assert_int_equal(next_of("@every 5m", t), t + 300000);
    assert_int_equal(next_of("@every 1h30m", t), t + 5400000);
    assert_int_equal(next_of("@every 1500ms", t), t + 1500);
    assert_int_equal(next_of("  @every   2d  ", t), t + 2 * 86400000LL);
}

static int64_t last_due_of(const char *spec, int64_t after, int64_t now)
{
    struct cron_schedule s;
    char err[256] = "";
    if (cron_parse(spec, &s, err, sizeof(err)) != 0)
        fail_msg("cron_parse('%s') failed: %s", spec, err);
    return cron_last_due(&s, after, now);
}

/* The one fire to make up for after a gap: the latest due time in (after, now]. */
static void test_last_due_time(void **state)
{
    (void)state;
    int64_t t = utc(2026, 11, 27, 10, 0);
    /* nothing due yet, or nothing between */
    assert_int_equal(last_due_of("* * * * *", t, t + 59999), -1);
    assert_int_equal(last_due_of("* * * * *", t, t), -1);
    assert_int_equal(last_due_of("* * * * *", t + 1000, t), -1);
    /* due exactly at now counts; strictly after `after` */
    assert_int_equal(last_due_of("* * * * *", t, t + 60000), t + 60000);
    assert_int_equal(last_due_of("* * * * *", t, t + 10 * 60000 + 5), t + 10 * 60000);
    /* a long gap: the latest of many, found without walking all of them */
    assert_int_equal(last_due_of("* * * * *", utc(2020, 1, 1, 0, 0), t + 30000), t);
    assert_int_equal(last_due_of("0 3 * * *", utc(2026, 1, 1, 0, 0), t), utc(2026, 11, 27, 3, 0));
    assert_int_equal(last_due_of("0 3 * * *", utc(2026, 11, 27, 3, 0), t), -1);
    /* fires clustered in one hour, far from now */
    assert_int_equal(last_due_of("* 3 * * *", utc(2026, 11, 1, 0, 0), t), utc(2026, 11, 27, 3, 59));
    /* a rare date: Feb 29 */
    assert_int_equal(last_due_of("0 0 29 2 *", utc(2020, 3, 1, 0, 0), t), utc(2024, 2, 29, 0, 0));
    assert_int_equal(last_due_of("0 0 29 2 *", utc(2024, 3, 1, 0, 0), t), -1);
    /* @every counts whole intervals from after */
    assert_int_equal(last_due_of("@every 1s", t, t + 999), -1);
    assert_int_equal(last_due_of("@every 1s", t, t + 1000), t + 1000);
    assert_int_equal(last_due_of("@every 1s", t, t + 5500), t + 5000);
    assert_int_equal(last_due_of("@every 1h", t, t + 86400000LL), t + 86400000LL);
}

static void test_errors_name_the_problem(void **state)
{
    (void)state;
    expect_error("", "5 fields");
    expect_error("* * * *", "5 fields");
    expect_error("* * * * * *", "5 fields");
    expect_error("60 * * * *", "minute");
    expect_error("* 24 * * *", "hour");
    expect_error("* * 0 * *", "day of month");
    expect_error("* * * 13 *", "month");
    expect_error("* * * * 8", "day of week");
    expect_error("* * * foo *", "month");
    expect_error("*/0 * * * *", "minute");
    expect_error("5-1 * * * *", "backwards");
    expect_error("1,,2 * * * *", "minute");
    expect_error("x * * * *", "minute");
    expect_error("0 0 30 2 *", "never fires");
    expect_error("@sometimes", "unknown schedule");
    expect_error("@every", "unknown schedule");
    expect_error("@every 10", "interval");
    expect_error("@every 10x", "interval");
    expect_error("@every 500ms", "out of range");
    expect_error("@every 30s extra", "interval");
}

static void test_durations(void **state)
{
    (void)state;
    assert_int_equal(trigger_parse_duration_ms("250ms"), 250);
    assert_int_equal(trigger_parse_duration_ms("90s"), 90000);
    assert_int_equal(trigger_parse_duration_ms("1h30m"), 5400000);
    assert_int_equal(trigger_parse_duration_ms("2d"), 172800000);
    assert_int_equal(trigger_parse_duration_ms(""), -1);
    assert_int_equal(trigger_parse_duration_ms("10"), -1); /* a unit is needed */
    assert_int_equal(trigger_parse_duration_ms("5x"), -1);
    assert_int_equal(trigger_parse_duration_ms("m"), -1);
    assert_int_equal(trigger_parse_duration_ms("1001d"), -1); /* over 1000 days */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_every_minute_and_fixed_time),
        cmocka_unit_test(test_ranges_steps_lists),
        cmocka_unit_test(test_names_and_weekdays),
        cmocka_unit_test(test_day_fields_either_matches),
        cmocka_unit_test(test_shorthands),
        cmocka_unit_test(test_every_interval),
        cmocka_unit_test(test_last_due_time),
        cmocka_unit_test(test_errors_name_the_problem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
