/* Unit tests for the router's admin port: which requests get /metrics and /routes (the admin
 * token, exactly), and that /health stays open. Each refused case is one an attacker on the
 * machine would try. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "router/router_internal.h"

#define TOKEN "skiff_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static enum router_admin_answer decide(const char *path, const char *headers)
{
    char head[1024];
    snprintf(head, sizeof(head), "GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n", path, headers);
    return router_admin_decide(head, TOKEN);
}

static void test_the_token_opens_metrics_and_routes(void **state)
{
    (void)state;
    assert_int_equal(decide("/metrics", "Authorization: Bearer " TOKEN "\r\n"),
                     ROUTER_ADMIN_METRICS);
    assert_int_equal(decide("/routes", "authorization:bearer  " TOKEN " \r\n"),
                     ROUTER_ADMIN_ROUTES);
    assert_int_equal(decide("/metrics?name=x", "AUTHORIZATION: BEARER " TOKEN "\r\n"),
                     ROUTER_ADMIN_METRICS);
}

static void test_health_is_open(void **state)
{
    (void)state;
    assert_int_equal(decide("/health", ""), ROUTER_ADMIN_HEALTH);
    assert_int_equal(router_admin_decide("GET /health HTTP/1.0\r\n\r\n", NULL),
                     ROUTER_ADMIN_HEALTH);
}

static void test_everything_else_is_refused(void **state)
{
    (void)state;
    const char *refused[] = {
        "",                                                                   /* no token */
        "Authorization: Bearer\r\n",                                          /* an empty one */
        "Authorization: Bearer " TOKEN "x\r\n",                               /* longer */
        "Authorization: Bearer skiff_0123456789abcdef\r\n",                   /* a prefix of it */
        "Authorization: Basic " TOKEN "\r\n",                                 /* another scheme */
        "Authorization: " TOKEN "\r\n",                                       /* no scheme */
        "X-Authorization: Bearer " TOKEN "\r\n",                              /* another field */
        "Authorization: Bearer wrong\r\nAuthorization: Bearer " TOKEN "\r\n", /* two fields */
        "Authorization: Bearer " TOKEN "\r\nAuthorization: Bearer wrong\r\n",
        "X: y\nAuthorization: Bearer " TOKEN "\r\n", /* hidden behind a bare LF */
        "Authorization : Bearer " TOKEN "\r\n",      /* a space before the colon */
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        assert_int_equal(decide("/metrics", refused[i]), ROUTER_ADMIN_UNAUTHORIZED);
        assert_int_equal(decide("/routes", refused[i]), ROUTER_ADMIN_UNAUTHORIZED);
    }
    /* the token in the query string is not a token */
    assert_int_equal(decide("/routes?token=" TOKEN, ""), ROUTER_ADMIN_UNAUTHORIZED);
    /* paths that mean /routes elsewhere are nothing here */
    const char *paths[] = {"/health/../routes", "/%72outes", "//routes",  "/routes/",
                           "/Routes",           "/routes;x", "/health/x", "/healthz"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
        assert_int_equal(decide(paths[i], "Authorization: Bearer " TOKEN "\r\n"),
                         ROUTER_ADMIN_NOT_FOUND);
    /* other methods, other forms */
    assert_int_equal(router_admin_decide("POST /routes HTTP/1.1\r\n\r\n", TOKEN),
                     ROUTER_ADMIN_NOT_FOUND);
    assert_int_equal(router_admin_decide("GET http://x/routes HTTP/1.1\r\n\r\n", TOKEN),
                     ROUTER_ADMIN_NOT_FOUND);
    assert_int_equal(router_admin_decide("GET /routes\r\n\r\n", TOKEN), ROUTER_ADMIN_BAD_REQUEST);
    assert_int_equal(router_admin_decide("GET /routes HTTP/1.1 x\r\n\r\n", TOKEN),
                     ROUTER_ADMIN_BAD_REQUEST);
}

static void test_without_a_token_nothing_opens(void **state)
{
    (void)state;
    /* the router has no token to compare with: refused, whatever is sent (an empty one too) */
    assert_int_equal(
        router_admin_decide("GET /routes HTTP/1.1\r\nAuthorization: Bearer \r\n\r\n", NULL),
        ROUTER_ADMIN_NO_TOKEN);
    assert_int_equal(router_admin_decide("GET /metrics HTTP/1.1\r\n\r\n", NULL),
                     ROUTER_ADMIN_NO_TOKEN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_the_token_opens_metrics_and_routes),
        cmocka_unit_test(test_health_is_open),
        cmocka_unit_test(test_everything_else_is_refused),
        cmocka_unit_test(test_without_a_token_nothing_opens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
