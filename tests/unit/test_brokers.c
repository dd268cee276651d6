/* The built-in brokers' pure logic: names in the stores, credentials, the Redis ACL rule,
 * basic auth, and the OSB dispatch (with a recording backend defined here, so no store
 * runs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "brokers/brokers.h"
#include "common/util.h"
#include "services/services.h"

static void test_ids_are_letters_digits_and_dashes(void **state)
{
    (void)state;
    assert_true(brokers_id_valid("5d6e2f0a-6a1c-4a57-9a0e-2b1f3c4d5e01"));
    assert_true(brokers_id_valid("a"));
    char long_id[66];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    assert_false(brokers_id_valid(long_id));
    long_id[64] = '\0';
    assert_true(brokers_id_valid(long_id));
    static const char *const bad[] = {"",     "a b", "a;b", "a'b", "a\"b", "a*", "a?",
                                      "a[1]", "a_b", "a.b", "a/b", "a:b",  "é"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(brokers_id_valid(bad[i]));
    assert_false(brokers_id_valid(NULL));
}

static void test_store_names(void **state)
{
    (void)state;
    char n[68];
    brokers_pg_instance_name("5D6E2F0A-6a1c", n);
    assert_string_equal(n, "si_5d6e2f0a_6a1c");
    brokers_pg_binding_name("b-1", n);
    assert_string_equal(n, "sb_b_1");
    char long_id[65];
    memset(long_id, 'x', 64);
    long_id[64] = '\0';
    brokers_pg_instance_name(long_id, n);
    assert_int_equal(strlen(n), 67);
}

static void test_credentials(void **state)
{
    (void)state;
    json_t *c = brokers_pg_credentials("10.0.0.1", 5433, "si_a", "sb_b", "pw");
    assert_string_equal(json_string_value(json_object_get(c, "uri")),
                        "postgres://sb_b:pw@10.0.0.1:5433/si_a");
    assert_string_equal(json_string_value(json_object_get(c, "jdbcUrl")),
                        "jdbc:postgresql://10.0.0.1:5433/si_a?user=sb_b&password=pw");
    assert_int_equal(json_integer_value(json_object_get(c, "port")), 5433);
    assert_string_equal(json_string_value(json_object_get(c, "name")), "si_a");
    json_decref(c);
    c = brokers_redis_credentials("10.0.0.1", 6380, "inst", "sb-x", "pw");
    assert_string_equal(json_string_value(json_object_get(c, "uri")),
                        "redis://sb-x:pw@10.0.0.1:6380");
    assert_string_equal(json_string_value(json_object_get(c, "key_prefix")), "inst:");
    json_decref(c);
}

static void test_redis_rules_keep_to_the_prefix(void **state)
{
    (void)state;
    char *r = brokers_redis_acl_rules("inst-1");
    assert_non_null(strstr(r, "resetkeys ~inst-1:* "));
    assert_non_null(strstr(r, "resetchannels &inst-1:* "));
    assert_non_null(strstr(r, "-@all "));
    static const char *const off[] = {"-@dangerous", "-@admin", "-@scripting", "-scan",
                                      "-keys",       "-select", "-swapdb",     "-randomkey"};
    for (size_t i = 0; i < sizeof off / sizeof *off; i++)
        assert_non_null(strstr(r, off[i]));
    /* what is removed comes after what is added, or it would be added back */
    assert_true(strstr(r, "-@dangerous") > strstr(r, "+@read"));
    assert_null(strstr(r, "~*"));
    free(r);
}

static void test_passwords_and_basic_auth(void **state)
{
    (void)state;
    char a[44], b[44];
    brokers_password(a);
    brokers_password(b);
    assert_int_equal(strlen(a), 43);
    assert_string_not_equal(a, b);
    char header[128], enc[96];
    sodium_bin2base64(enc, sizeof enc, (const unsigned char *)"user:pa:ss", 10,
                      sodium_base64_VARIANT_ORIGINAL);
    snprintf(header, sizeof header, "Basic %s", enc);
    assert_true(brokers_basic_auth_ok(header, "user", "pa:ss"));
    assert_false(brokers_basic_auth_ok(header, "user", "pa:s"));
    assert_false(brokers_basic_auth_ok(header, "user", "pa:ssx"));
    assert_false(brokers_basic_auth_ok(NULL, "user", "pa:ss"));
    assert_false(brokers_basic_auth_ok("Bearer x", "user", "pa:ss"));
    assert_false(brokers_basic_auth_ok("Basic !!!", "user", "pa:ss"));
    assert_false(brokers_basic_auth_ok("Basic ", "", ""));
}

static void test_binding_tokens(void **state)
{
    (void)state;
    unsigned char key[32], other[32];
    memset(key, 7, sizeof key);
    memset(other, 8, sizeof other);
    char tok[SERVICES_BINDING_TOKEN_MAX], inst[65], bind[65];
    services_binding_token(key, "i-1", "b-1", tok, sizeof tok);
    assert_true(str_has_prefix(tok, SERVICES_BINDING_TOKEN_PREFIX "i-1.b-1."));
    assert_true(services_binding_token_check(key, tok, inst, bind));
    assert_string_equal(inst, "i-1");
    assert_string_equal(bind, "b-1");
    assert_false(services_binding_token_check(other, tok, inst, bind));
    char forged[SERVICES_BINDING_TOKEN_MAX];
    snprintf(forged, sizeof forged, "%s", tok);
    forged[strlen(forged) - 1] = forged[strlen(forged) - 1] == '0' ? '1' : '0';
    assert_false(services_binding_token_check(key, forged, inst, bind));
    /* the signature of one binding does not carry over to another id */
    snprintf(forged, sizeof forged, SERVICES_BINDING_TOKEN_PREFIX "i-1.b-2.%s",
             strrchr(tok, '.') + 1);
    assert_false(services_binding_token_check(key, forged, inst, bind));
    static const char *const bad[] = {"",
                                      "skiffb_",
                                      "skiffb_a.b",
                                      "skiffb_a.b.",
                                      "skiffb_.b.00",
                                      "skiffb_a;b.c.00",
                                      "skiffa_i-1.b-1.00"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_false(services_binding_token_check(key, bad[i], inst, bind));
    assert_false(services_binding_token_check(key, NULL, inst, bind));
}

/* ---- the OSB dispatch, on a recording backend ----------------------------------------------- */

struct recorder {
    int provisions, deprovisions, binds, unbinds;
    bool fail;
};

static int rec_provision(void *ctx, const char *id, char *err, size_t errlen)
{
    struct recorder *r = ctx;
    if (r->fail) {
        snprintf(err, errlen, "the store is down");
        return -5;
    }
    r->provisions++;
    return 0;
}

static int rec_deprovision(void *ctx, const char *id, char *err, size_t errlen)
{
    ((struct recorder *)ctx)->deprovisions++;
    return 0;
}

static int rec_bind(void *ctx, const char *id, const char *bid, json_t **out, char *err,
                    size_t errlen)
{
    struct recorder *r = ctx;
    r->binds++;
    *out = json_pack("{s:s,s:i}", "binding", bid, "n", r->binds);
    return 0;
}

static int rec_unbind(void *ctx, const char *id, const char *bid, char *err, size_t errlen)
{
    ((struct recorder *)ctx)->unbinds++;
    return 0;
}

static struct brokers *osb_setup(struct recorder *r, struct brokers_backend *be, char *path)
{
    *be = (struct brokers_backend){.name = "thing",
                                   .service_id = "svc-1",
                                   .plan_id = "plan-1",
                                   .description = "d",
                                   .plan_description = "p",
                                   .tags = "[\"t\"]",
                                   .ctx = r,
                                   .provision = rec_provision,
                                   .deprovision = rec_deprovision,
                                   .bind = rec_bind,
                                   .unbind = rec_unbind};
    struct brokers *b = NULL;
    assert_int_equal(brokers_new(be, 1, path, &b), 0);
    return b;
}

static int call(struct brokers *b, const char *method, const char *target, const char *body,
                json_t **out)
{
    int status = 0;
    json_t *j = brokers_handle(b, method, target, body, body ? strlen(body) : 0, &status);
    assert_non_null(j);
    if (out)
        *out = j;
    else
        json_decref(j);
    return status;
}

static void test_osb_dispatch(void **state)
{
    (void)state;
    char path[] = "/tmp/test-brokers-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    unlink(path);
    struct recorder r = {0};
    struct brokers_backend be;
    struct brokers *b = osb_setup(&r, &be, path);
    const char *body = "{\"service_id\":\"svc-1\",\"plan_id\":\"plan-1\"}";
    json_t *j;

    assert_int_equal(call(b, "GET", "/v2/catalog", NULL, &j), 200);
    json_t *svc = json_array_get(json_object_get(j, "services"), 0);
    assert_string_equal(json_string_value(json_object_get(svc, "name")), "thing");
    assert_int_equal(json_array_size(json_object_get(svc, "plans")), 1);
    json_decref(j);

    assert_int_equal(
        call(b, "PUT", "/v2/service_instances/i-1?accepts_incomplete=true", body, NULL), 201);
    assert_int_equal(call(b, "PUT", "/v2/service_instances/i-1", body, NULL), 200);
    assert_int_equal(r.provisions, 1);
    assert_int_equal(call(b, "PUT", "/v2/service_instances/i-1",
                          "{\"service_id\":\"svc-1\",\"plan_id\":\"other\"}", NULL),
                     400);
    assert_int_equal(call(b, "PUT", "/v2/service_instances/i-2", "[1]", NULL), 400);
    assert_int_equal(call(b, "PUT", "/v2/service_instances/i-2", NULL, NULL), 400);
    assert_int_equal(call(b, "PUT", "/v2/service_instances/x'y", body, NULL), 400);
    assert_int_equal(call(b, "PATCH", "/v2/service_instances/i-1", body, NULL), 422);
    assert_int_equal(call(b, "GET", "/v2/nothing", NULL, NULL), 404);
    assert_int_equal(call(b, "POST", "/v2/catalog", NULL, NULL), 405);
    assert_int_equal(call(b, "GET", "/v2/service_instances/i-1/last_operation", NULL, NULL), 200);
    assert_int_equal(call(b, "GET", "/v2/service_instances/i-9/last_operation", NULL, NULL), 410);

    /* bindings: a repeat answers the same credentials; an unknown instance is refused */
    json_t *first, *again;
    assert_int_equal(call(b, "PUT", "/v2/service_instances/i-1/service_bindings/b-1", body, &first),
                     201);
    assert_int_equal(call(b, "PUT", "/v2/service_instances/i-1/service_bindings/b-1", body, &again),
                     200);
    assert_true(json_equal(first, again));
    assert_int_equal(r.binds, 1);
    json_decref(first);
    json_decref(again);
    assert_int_equal(call(b, "PUT", "/v2/service_instances/i-9/service_bindings/b-2", body, NULL),
                     404);

    /* the records survive a restart of the program */
    brokers_free(b);
    b = osb_setup(&r, &be, path);
    assert_int_equal(call(b, "PUT", "/v2/service_instances/i-1", body, NULL), 200);
    assert_int_equal(
        call(b, "DELETE", "/v2/service_instances/i-1/service_bindings/b-1", NULL, NULL), 200);
    assert_int_equal(
        call(b, "DELETE", "/v2/service_instances/i-1/service_bindings/b-1", NULL, NULL), 410);
    assert_int_equal(call(b, "DELETE", "/v2/service_instances/i-1", NULL, NULL), 200);
    assert_int_equal(call(b, "DELETE", "/v2/service_instances/i-1", NULL, NULL), 410);
    assert_int_equal(r.unbinds, 1);
    assert_int_equal(r.deprovisions, 1);

    /* a store that fails: 500 with its words, and nothing recorded */
    r.fail = true;
    assert_int_equal(call(b, "PUT", "/v2/service_instances/i-3", body, &j), 500);
    assert_string_equal(json_string_value(json_object_get(j, "description")), "the store is down");
    json_decref(j);
    assert_int_equal(call(b, "GET", "/v2/service_instances/i-3/last_operation", NULL, NULL), 410);
    brokers_free(b);
    unlink(path);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ids_are_letters_digits_and_dashes),
        cmocka_unit_test(test_store_names),
        cmocka_unit_test(test_credentials),
        cmocka_unit_test(test_redis_rules_keep_to_the_prefix),
        cmocka_unit_test(test_passwords_and_basic_auth),
        cmocka_unit_test(test_binding_tokens),
        cmocka_unit_test(test_osb_dispatch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
