/* Unit tests for services: VCAP_SERVICES in Cloud Foundry's shape, names, sealing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "services/services.h"

static void assert_json_equal(const json_t *got, const char *want_text)
{
    json_t *want = json_loads(want_text, 0, NULL);
    assert_non_null(want);
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_SORT_KEYS | JSON_INDENT(1));
        fail_msg("got %s", g);
    }
    json_decref(want);
}

static void test_user_provided_entry(void **state)
{
    (void)state;
    json_t *inst = json_loads("{\"guid\":\"i1\",\"name\":\"db\",\"type\":\"user-provided\","
                              "\"tags\":[\"sql\"],\"syslog_drain_url\":\"syslog://x:514\"}",
                              0, NULL);
    json_t *bind = json_loads("{\"guid\":\"b1\",\"name\":null,\"volume_mounts\":[]}", 0, NULL);
    json_t *creds = json_loads("{\"uri\":\"postgres://u:p@h/d\"}", 0, NULL);
    json_t *vcap = json_object();
    struct services_vcap_binding b = {.instance = inst, .binding = bind, .credentials = creds};
    services_vcap_add(vcap, &b);
    assert_json_equal(vcap, "{\"user-provided\":[{\"label\":\"user-provided\",\"name\":\"db\","
                            "\"tags\":[\"sql\"],\"instance_guid\":\"i1\",\"instance_name\":\"db\","
                            "\"binding_guid\":\"b1\",\"binding_name\":null,"
                            "\"credentials\":{\"uri\":\"postgres://u:p@h/d\"},"
                            "\"syslog_drain_url\":\"syslog://x:514\",\"volume_mounts\":[]}]}");
    json_decref(vcap);
    json_decref(inst);
    json_decref(bind);
    json_decref(creds);
}

static void test_managed_entries_grouped_by_label(void **state)
{
    (void)state;
    json_t *inst = json_loads("{\"guid\":\"i2\",\"name\":\"orders\",\"type\":\"managed\","
                              "\"service_name\":\"postgresql\",\"plan_name\":\"small\","
                              "\"tags\":[\"mine\"]}",
                              0, NULL);
    json_t *b1 =
        json_loads("{\"guid\":\"b2\",\"name\":\"main\",\"syslog_drain_url\":\"\"}", 0, NULL);
    json_t *b2 =
        json_loads("{\"guid\":\"b3\",\"name\":null,\"volume_mounts\":[{\"dir\":\"/v\"}]}", 0, NULL);
    json_t *offering_tags = json_loads("[\"relational\", 7]", 0, NULL);
    json_t *vcap = json_object();
    struct services_vcap_binding b = {
        .instance = inst, .binding = b1, .service_tags = offering_tags};
    services_vcap_add(vcap, &b);
    b.binding = b2;
    services_vcap_add(vcap, &b);
    assert_json_equal(
        vcap,
        "{\"postgresql\":["
        "{\"label\":\"postgresql\",\"provider\":null,\"plan\":\"small\",\"name\":\"main\","
        "\"tags\":[\"relational\",\"mine\"],\"instance_guid\":\"i2\","
        "\"instance_name\":\"orders\",\"binding_guid\":\"b2\",\"binding_name\":\"main\","
        "\"credentials\":{},\"syslog_drain_url\":null,\"volume_mounts\":[]},"
        "{\"label\":\"postgresql\",\"provider\":null,\"plan\":\"small\",\"name\":\"orders\","
        "\"tags\":[\"relational\",\"mine\"],\"instance_guid\":\"i2\","
        "\"instance_name\":\"orders\",\"binding_guid\":\"b3\",\"binding_name\":null,"
        "\"credentials\":{},\"syslog_drain_url\":null,\"volume_mounts\":[{\"dir\":\"/v\"}]}]}");
    json_decref(vcap);
    json_decref(inst);
    json_decref(b1);
    json_decref(b2);
    json_decref(offering_tags);
}

static void test_names(void **state)
{
    (void)state;
    assert_true(services_name_valid("my-db"));
    assert_true(services_name_valid("My DB_2.prod"));
    assert_false(services_name_valid(""));
    assert_false(services_name_valid(NULL));
    assert_false(services_name_valid(" lead"));
    assert_false(services_name_valid("trail "));
    assert_false(services_name_valid("a/b"));
    assert_false(services_name_valid("a\nb"));
    char long_name[300];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    assert_false(services_name_valid(long_name));
}

static void test_seal_round_trip_and_key_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-services-XXXXXX";
    assert_non_null(mkdtemp(dir));
    struct services *s = NULL;
    assert_int_equal(services_open(NULL, dir, &s), 0);
    json_t *secret = json_loads("{\"password\":\"hunter2\"}", 0, NULL);
    char *sealed = services_seal(s, secret);
    assert_null(strstr(sealed, "hunter2"));
    json_t *back = services_unseal(s, sealed);
    assert_true(json_equal(back, secret));
    json_decref(back);
    /* a damaged or foreign text does not open */
    sealed[strlen(sealed) - 3] ^= 1;
    assert_null(services_unseal(s, sealed));
    assert_null(services_unseal(s, "plain text"));
    assert_null(services_unseal(s, NULL));
    free(sealed);
    services_free(s);

    /* the key is skiffd's alone, and the same after a restart */
    char *key = xasprintf("%s/services.key", dir);
    struct stat st;
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(services_open(NULL, dir, &s), 0);
    char *again = services_seal(s, secret);
    services_free(s);
    assert_int_equal(services_open(NULL, dir, &s), 0);
    back = services_unseal(s, again);
    assert_true(json_equal(back, secret));
    json_decref(back);
    services_free(s);
    free(again);
    json_decref(secret);
    unlink(key);
    free(key);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_user_provided_entry),
        cmocka_unit_test(test_managed_entries_grouped_by_label),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_seal_round_trip_and_key_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
