/* Unit tests for invoker/policy.c: backoff schedule and what a status means. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "invoker/invoker.h"

static void test_defaults(void **state)
{
    (void)state;
    struct delivery_policy p;
    delivery_policy_default(&p);
    assert_int_equal(p.retries, 10);
    assert_int_equal(p.backoff_ms, 200);
    assert_int_equal(p.backoff_cap_ms, 60000);
    assert_int_equal(p.max_age_ms, 24LL * 3600 * 1000);
    assert_int_equal(p.concurrency, 1);
    assert_false(p.ordered);
}

static void test_doubling_up_to_the_cap(void **state)
{
    (void)state;
    struct delivery_policy p;
    delivery_policy_default(&p);
    const int64_t want[] = {200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 60000, 60000};
    for (int i = 0; i < 11; i++)
        assert_int_equal(delivery_backoff_ms(&p, i + 1), want[i]);
    /* no overflow however far it goes */
    assert_int_equal(delivery_backoff_ms(&p, 1000000), 60000);
    p.backoff_ms = 50;
    p.backoff_cap_ms = 120;
    assert_int_equal(delivery_backoff_ms(&p, 1), 50);
    assert_int_equal(delivery_backoff_ms(&p, 2), 100);
    assert_int_equal(delivery_backoff_ms(&p, 3), 120);
}

static void test_status_classes(void **state)
{
    (void)state;
    assert_int_equal(delivery_classify_status(200), DELIVERY_ACK);
    assert_int_equal(delivery_classify_status(202), DELIVERY_ACK);
    assert_int_equal(delivery_classify_status(204), DELIVERY_ACK);
    assert_int_equal(delivery_classify_status(0), DELIVERY_RETRY);
    assert_int_equal(delivery_classify_status(500), DELIVERY_RETRY);
    assert_int_equal(delivery_classify_status(503), DELIVERY_RETRY);
    assert_int_equal(delivery_classify_status(408), DELIVERY_RETRY);
    assert_int_equal(delivery_classify_status(409), DELIVERY_RETRY);
    assert_int_equal(delivery_classify_status(429), DELIVERY_RETRY);
    assert_int_equal(delivery_classify_status(400), DELIVERY_DEAD);
    assert_int_equal(delivery_classify_status(404), DELIVERY_DEAD);
    assert_int_equal(delivery_classify_status(410), DELIVERY_DEAD);
    assert_int_equal(delivery_classify_status(301), DELIVERY_DEAD);
}

static void test_retry_budget_and_age(void **state)
{
    (void)state;
    struct delivery_policy p;
    delivery_policy_default(&p);
    int64_t pub = 1000000;
    /* 10 retries: attempts 1..10 failing may retry, the 11th failure is final */
    for (int n = 1; n <= 10; n++)
        assert_int_equal(delivery_after_failure(&p, 500, n, pub, pub + 1), DELIVERY_RETRY);
    assert_int_equal(delivery_after_failure(&p, 500, 11, pub, pub + 1), DELIVERY_DEAD);
    /* a 4xx is final at once, whatever the budget */
    assert_int_equal(delivery_after_failure(&p, 404, 1, pub, pub + 1), DELIVERY_DEAD);
    /* retries 0: a single attempt */
    p.retries = 0;
    assert_int_equal(delivery_after_failure(&p, 503, 1, pub, pub + 1), DELIVERY_DEAD);
    /* max age: no retry that would run after the event is too old */
    delivery_policy_default(&p);
    p.max_age_ms = 1000;
    assert_int_equal(delivery_after_failure(&p, 500, 1, pub, pub + 700), DELIVERY_RETRY);
    assert_int_equal(delivery_after_failure(&p, 500, 1, pub, pub + 900), DELIVERY_DEAD);
    /* max age 0: no age limit */
    p.max_age_ms = 0;
    assert_int_equal(delivery_after_failure(&p, 500, 1, pub, pub + 100000000), DELIVERY_RETRY);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_doubling_up_to_the_cap),
        cmocka_unit_test(test_status_classes),
        cmocka_unit_test(test_retry_budget_and_age),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
