/* Unit tests for autoscaler/kpa.c: the decision with a fake clock (one sample a second). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "autoscaler/autoscaler.h"

/* Feeds value for `seconds` ticks from *now, deciding at each with `ready` instances ready;
 * returns the last decision. */
static struct autoscaler_decision run(struct autoscaler_kpa *k, const struct autoscaler_policy *p,
                                      int64_t *now, int seconds, double value, int ready)
{
    struct autoscaler_decision d = {0};
    for (int i = 0; i < seconds; i++) {
        *now += 1000;
        autoscaler_kpa_record(k, *now, value);
        d = autoscaler_kpa_decide(k, p, ready, *now);
    }
    return d;
}

static void test_policy_defaults(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 0, 20, 0, false, 0);
    assert_int_equal(p.window_ms, 60000);
    assert_int_equal(p.panic_window_ms, 6000);
    assert_true(p.target == 100);
    assert_true(p.panic_threshold == 2.0);
    assert_int_equal(p.scale_down_delay_ms, 0);
    autoscaler_policy_init(&p, 0, 20, 5, true, 10000);
    assert_int_equal(p.panic_window_ms, 1000);
    assert_true(p.rps);
}

static void test_steady_load_wants_ceil_of_target(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 0, 100, 100, false, 0);
    struct autoscaler_kpa k = {0};
    int64_t now = 1000000;
    /* 480 in flight with 5 ready: 5 wanted, stable */
    struct autoscaler_decision d = run(&k, &p, &now, 60, 480, 5);
    assert_int_equal(d.desired, 5);
    assert_false(d.panic);
    assert_true(d.stable_value == 480);
    /* 1 in flight still needs one instance, reached by halving at most per decision */
    d = run(&k, &p, &now, 60, 1, 5);
    assert_int_equal(d.desired, 2);
    d = run(&k, &p, &now, 1, 1, 2);
    assert_int_equal(d.desired, 1);
    autoscaler_kpa_reset(&k);
}

static void test_scale_to_zero_only_after_a_quiet_window(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 0, 10, 10, false, 0);
    struct autoscaler_kpa k = {0};
    int64_t now = 1000000;
    struct autoscaler_decision d = run(&k, &p, &now, 60, 10, 1);
    assert_int_equal(d.desired, 1);
    /* 59 quiet seconds: the window still holds a busy one */
    d = run(&k, &p, &now, 59, 0, 1);
    assert_int_equal(d.desired, 1);
    d = run(&k, &p, &now, 1, 0, 1);
    assert_int_equal(d.desired, 0);
    /* min keeps a floor */
    p.min_instances = 2;
    d = run(&k, &p, &now, 1, 0, 1);
    assert_int_equal(d.desired, 2);
    autoscaler_kpa_reset(&k);
}

static void test_from_zero_the_first_request_wakes(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 0, 10, 100, false, 0);
    struct autoscaler_kpa k = {0};
    int64_t now = 1000000;
    struct autoscaler_decision d = run(&k, &p, &now, 30, 0, 0);
    assert_int_equal(d.desired, 0);
    d = run(&k, &p, &now, 1, 0.1, 0); /* one request held for a tenth of a second */
    assert_int_equal(d.desired, 1);
    autoscaler_kpa_reset(&k);
}

static void test_panic_reacts_within_the_panic_window(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 0, 100, 1, false, 0);
    struct autoscaler_kpa k = {0};
    int64_t now = 1000000;
    struct autoscaler_decision d = run(&k, &p, &now, 60, 2, 2);
    assert_int_equal(d.desired, 2);
    assert_false(d.panic);
    /* load goes to 8: one second in, the panic window's average (5 * 2 + 8) / 6 = 3 is not
     * yet twice the ready count */
    d = run(&k, &p, &now, 1, 8, 2);
    assert_false(d.panic);
    assert_int_equal(d.panic_wanted, 3);
    /* two seconds in (4 * 2 + 2 * 8) / 6 = 4 is: panic, while the stable window wants 3 */
    d = run(&k, &p, &now, 1, 8, 2);
    assert_true(d.panic);
    assert_int_equal(d.stable_wanted, 3);
    assert_int_equal(d.desired, 4);
    d = run(&k, &p, &now, 4, 8, 2);
    assert_true(d.panic);
    assert_int_equal(d.desired, 8);
    /* in panic it never scales down, even when the load drops */
    d = run(&k, &p, &now, 10, 1, 8);
    assert_true(d.panic);
    assert_int_equal(d.desired, 8);
    /* a stable window after the last panic tick it is calm again */
    d = run(&k, &p, &now, 60, 1, 8);
    assert_false(d.panic);
    assert_int_equal(d.desired, 4); /* at most halved per decision */
    d = run(&k, &p, &now, 1, 1, 4);
    assert_int_equal(d.desired, 2);
    d = run(&k, &p, &now, 1, 1, 2);
    assert_int_equal(d.desired, 1);
    autoscaler_kpa_reset(&k);
}

static void test_max_and_min_clamp(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 1, 3, 1, false, 10000);
    struct autoscaler_kpa k = {0};
    int64_t now = 1000000;
    struct autoscaler_decision d = run(&k, &p, &now, 20, 50, 3);
    assert_int_equal(d.desired, 3);
    d = run(&k, &p, &now, 40, 0, 1);
    assert_int_equal(d.desired, 1);
    autoscaler_kpa_reset(&k);
}

static void test_max_scale_up_rate(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 0, 1000, 1, false, 0);
    p.max_up_rate = 2;
    struct autoscaler_kpa k = {0};
    int64_t now = 1000000;
    struct autoscaler_decision d = run(&k, &p, &now, 10, 100, 2);
    assert_int_equal(d.desired, 4);
    d = run(&k, &p, &now, 1, 100, 0); /* from zero: as if one were ready */
    assert_int_equal(d.desired, 2);
    autoscaler_kpa_reset(&k);
}

static void test_scale_down_delay_holds_the_peak(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 0, 100, 1, false, 2000);
    p.scale_down_delay_ms = 5000;
    struct autoscaler_kpa k = {0};
    int64_t now = 1000000;
    struct autoscaler_decision d = run(&k, &p, &now, 10, 4, 4);
    assert_int_equal(d.desired, 4);
    d = run(&k, &p, &now, 4, 0, 4);
    assert_int_equal(d.desired, 4); /* the window is quiet, the delay is not over */
    d = run(&k, &p, &now, 3, 0, 4);
    assert_int_equal(d.desired, 2); /* then at most halved per decision */
    d = run(&k, &p, &now, 6, 0, 2);
    assert_int_equal(d.desired, 1);
    d = run(&k, &p, &now, 6, 0, 1);
    assert_int_equal(d.desired, 0);
    autoscaler_kpa_reset(&k);
}

static void test_rps_target(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 0, 100, 50, true, 10000);
    struct autoscaler_kpa k = {0};
    int64_t now = 1000000;
    struct autoscaler_decision d = run(&k, &p, &now, 10, 260, 6);
    assert_int_equal(d.desired, 6);
    autoscaler_kpa_reset(&k);
}

static void test_no_scale_down_before_a_window_of_samples(void **state)
{
    (void)state;
    struct autoscaler_policy p;
    autoscaler_policy_init(&p, 0, 10, 10, false, 10000);
    struct autoscaler_kpa k = {0};
    int64_t now = 1000000;
    /* a restarted skiffd: 8 ready, no report yet */
    struct autoscaler_decision d = run(&k, &p, &now, 8, 0, 8);
    assert_int_equal(d.desired, 8);
    /* up is fine at once */
    d = run(&k, &p, &now, 1, 200, 8);
    assert_int_equal(d.desired, 10);
    /* once the samples span the window, down goes as usual */
    autoscaler_kpa_reset(&k);
    d = run(&k, &p, &now, 10, 0, 8);
    assert_int_equal(d.desired, 4);
    autoscaler_kpa_reset(&k);
}

static void test_old_samples_are_dropped(void **state)
{
    (void)state;
    struct autoscaler_kpa k = {0};
    int64_t now = 0;
    for (int i = 0; i < AUTOSCALER_MAX_WINDOW_MS / 1000 + 500; i++) {
        now += 1000;
        autoscaler_kpa_record(&k, now, 1);
    }
    assert_true(k.n_samples <= AUTOSCALER_MAX_WINDOW_MS / 1000);
    autoscaler_kpa_reset(&k);
    assert_int_equal(k.n_samples, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy_defaults),
        cmocka_unit_test(test_steady_load_wants_ceil_of_target),
        cmocka_unit_test(test_scale_to_zero_only_after_a_quiet_window),
        cmocka_unit_test(test_from_zero_the_first_request_wakes),
        cmocka_unit_test(test_panic_reacts_within_the_panic_window),
        cmocka_unit_test(test_max_and_min_clamp),
        cmocka_unit_test(test_max_scale_up_rate),
        cmocka_unit_test(test_scale_down_delay_holds_the_peak),
        cmocka_unit_test(test_rps_target),
        cmocka_unit_test(test_no_scale_down_before_a_window_of_samples),
        cmocka_unit_test(test_old_samples_are_dropped),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
