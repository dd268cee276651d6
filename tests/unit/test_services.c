/* Unit tests for services: VCAP_SERVICES in Cloud Foundry's shape, names, sealing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "services/services.h"
#include "store/store.h"

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

/* A key kept in each home's file and shared through the store (the events offering's): the
 * first skiffd's is the store's, a later one takes it into its file, and a skiffd whose
 * services.key differs gets none. The store holds it sealed, never as it is. */
static void test_a_key_is_shared_through_the_store(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-services-XXXXXX", other[] = "/tmp/skiff-services-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_non_null(mkdtemp(other));
    char *db = xasprintf("%s/skiff.db", dir), err[256];
    struct store *st = NULL;
    assert_int_equal(store_open(db, err, sizeof err, &st), 0);
    struct services *s = NULL, *stranger = NULL;
    assert_int_equal(services_open(st, dir, &s), 0);
    char *first = xasprintf("%s/first.key", dir), *later = xasprintf("%s/later.key", dir);
    char *strange = xasprintf("%s/strange.key", other);
    unsigned char k1[32], k2[32], k3[32];
    assert_int_equal(services_binding_key(later, k2), 0); /* its own, made before it joined */
    assert_int_equal(services_shared_key(s, SERVICES_KIND_EVENTS_KEY, first, k1), 0);
    assert_memory_not_equal(k1, k2, 32);
    assert_int_equal(services_shared_key(s, SERVICES_KIND_EVENTS_KEY, later, k3), 0);
    assert_memory_equal(k1, k3, 32);
    assert_int_equal(services_binding_key(later, k2), 0); /* the file now holds the store's */
    assert_memory_equal(k1, k2, 32);
    struct stat sb;
    assert_int_equal(stat(later, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    char *text = NULL, hex[65];
    assert_int_equal(store_doc_get_fresh(st, SERVICES_KIND_EVENTS_KEY, "key", &text), 0);
    sodium_bin2hex(hex, sizeof hex, k1, 32);
    assert_null(strstr(text, hex));
    free(text);

    assert_int_equal(services_open(st, other, &stranger), 0); /* another services.key */
    memset(k3, 1, sizeof k3);
    assert_int_equal(services_shared_key(stranger, SERVICES_KIND_EVENTS_KEY, strange, k3),
                     -EKEYREJECTED);
    memset(k2, 0, sizeof k2);
    assert_memory_equal(k3, k2, 32);

    services_free(stranger);
    services_free(s);
    store_close(st);
    char *cmd = xasprintf("rm -rf %s %s", dir, other);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(first);
    free(later);
    free(strange);
    free(db);
}

static const char *const GOOD_CATALOG =
    "{\"services\":[{\"id\":\"s1\",\"name\":\"db\",\"description\":\"a db\",\"bindable\":true,"
    "\"tags\":[\"sql\"],\"plans\":[{\"id\":\"p1\",\"name\":\"small\",\"description\":\"s\","
    "\"free\":true,\"maximum_polling_duration\":60},{\"id\":\"p2\",\"name\":\"large\","
    "\"description\":\"l\",\"free\":false}]},{\"id\":\"s2\",\"name\":\"cache\","
    "\"description\":\"c\",\"bindable\":false,\"plans\":[{\"id\":\"p1\",\"name\":\"small\","
    "\"description\":\"s\"}]}]}";

/* The catalog with one change (a jansson path edit) must be refused naming the field. */
static void refused(const char *change_key_path, json_t *value, const char *want)
{
    json_t *cat = json_loads(GOOD_CATALOG, 0, NULL);
    /* change_key_path: "S.P.KEY" with S, P indexes (P "-" for the offering itself) */
    int si = change_key_path[0] - '0';
    json_t *target = json_array_get(json_object_get(cat, "services"), si);
    const char *rest = change_key_path + 2;
    if (rest[0] != '-')
        target = json_array_get(json_object_get(target, "plans"), rest[0] - '0');
    const char *key = rest + 2;
    if (value)
        json_object_set_new(target, key, value);
    else
        json_object_del(target, key);
    char err[256] = "";
    assert_int_equal(services_catalog_validate(cat, err, sizeof err), -EINVAL);
    if (!strstr(err, want))
        fail_msg("for %s: expected \"%s\" in \"%s\"", change_key_path, want, err);
    json_decref(cat);
}

static void test_catalog_validation(void **state)
{
    (void)state;
    char err[256] = "";
    json_t *cat = json_loads(GOOD_CATALOG, 0, NULL);
    assert_int_equal(services_catalog_validate(cat, err, sizeof err), 0);
    json_t *svc = NULL, *plan = NULL;
    assert_true(services_catalog_find(cat, "db", "large", &svc, &plan));
    assert_string_equal(json_string_value(json_object_get(plan, "id")), "p2");
    assert_true(services_catalog_find(cat, "s2", "p1", &svc, &plan));
    assert_string_equal(json_string_value(json_object_get(svc, "name")), "cache");
    assert_false(services_catalog_find(cat, "db", "huge", &svc, &plan));
    assert_false(services_catalog_find(cat, "nosuch", "small", &svc, &plan));
    json_decref(cat);

    refused("0.0.id", NULL, "services[0].plans[0].id: missing");
    refused("0.1.name", json_string("has space"), "services[0].plans[1].name: \"has space\" is not CLI-friendly");
    refused("0.1.id", json_string("p1"), "services[0].plans[1].id: \"p1\" is used by plans[0] too");
    refused("0.0.free", json_string("yes"), "services[0].plans[0].free: must be true or false");
    refused("0.0.maximum_polling_duration", json_integer(0),
            "services[0].plans[0].maximum_polling_duration");
    refused("0.-.plans", json_array(), "services[0].plans: must be a list of at least one plan");
    refused("0.-.plans", NULL, "services[0].plans: missing");
    refused("1.-.bindable", NULL, "services[1].bindable: missing");
    refused("1.-.bindable", json_string("true"), "services[1].bindable: must be true or false");
    refused("1.-.id", json_string("s1"), "services[1].id: \"s1\" is used by services[0] too");
    refused("1.-.description", json_integer(3), "services[1].description: must be a non-empty string");
    refused("0.-.tags", json_string("sql"), "services[0].tags: must be a list of strings");

    static const char *const bad[][2] = {
        {"[]", "the catalog must be a JSON object"},
        {"{}", "services: missing"},
        {"{\"services\":{}}", "services: must be a list"},
        {"{\"services\":[7]}", "services[0]: must be an object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *c = json_loads(bad[i][0], JSON_DECODE_ANY, NULL);
        assert_int_equal(services_catalog_validate(c, err, sizeof err), -EINVAL);
        assert_string_equal(err, bad[i][1]);
        json_decref(c);
    }
    json_t *empty = json_loads("{\"services\":[]}", 0, NULL);
    assert_int_equal(services_catalog_validate(empty, err, sizeof err), 0);
    json_decref(empty);
}

static void test_osb_identity_and_describe(void **state)
{
    (void)state;
    char *id = services_osb_identity("683ea748-3092-4ff4-b656-39cacc4d5360");
    assert_string_equal(id, "cloudfoundry eyJ1c2VyX2lkIjoiNjgzZWE3NDgtMzA5Mi00ZmY0LWI2NTYtMzljYWNjNGQ1MzYwIn0=");
    free(id);
    struct services_osb_call c = {0};
    char out[400];
    c.json = json_loads("{\"error\":\"AsyncRequired\",\"description\":\"needs\\nasync\"}", 0, NULL);
    services_osb_describe(&c, out, sizeof out);
    assert_string_equal(out, "AsyncRequired: needs async");
    json_decref(c.json);
    c.json = json_loads("[\"not the error shape\"]", 0, NULL);
    services_osb_describe(&c, out, sizeof out);
    assert_string_equal(out, "");
    json_decref(c.json);
}

static void test_parameters_against_a_schema(void **state)
{
    (void)state;
    json_t *plan = json_loads(
        "{\"id\":\"p\",\"name\":\"n\",\"description\":\"d\",\"schemas\":{\"service_instance\":"
        "{\"create\":{\"parameters\":{\"type\":\"object\",\"additionalProperties\":false,"
        "\"required\":[\"size\"],\"properties\":{\"size\":{\"type\":\"integer\",\"minimum\":1,"
        "\"maximum\":10},\"tier\":{\"enum\":[\"gold\",\"silver\"]},\"tags\":{\"type\":\"array\","
        "\"items\":{\"type\":\"string\",\"maxLength\":3}}}}}}}}",
        0, NULL);
    assert_non_null(plan);
    static const char *const cases[][2] = {
        {"{\"size\":3}", ""},
        {"{\"size\":3,\"tier\":\"gold\",\"tags\":[\"a\",\"bc\"]}", ""},
        {"{}", "parameters.size is required by the plan"},
        {"{\"size\":\"3\"}", "parameters.size must be of type integer"},
        {"{\"size\":11}", "parameters.size must be at most 10"},
        {"{\"size\":0}", "parameters.size must be at least 1"},
        {"{\"size\":3,\"tier\":\"bronze\"}", "parameters.tier is not one of the values"},
        {"{\"size\":3,\"extra\":1}", "parameters.extra is not a parameter the plan takes"},
        {"{\"size\":3,\"tags\":[\"long\"]}", "parameters.tags[0] must be at most 3 characters"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *params = json_loads(cases[i][0], 0, NULL);
        char err[256] = "";
        int rc = services_parameters_check(plan, "service_instance.create", params, err, sizeof err);
        if (!*cases[i][1])
            assert_int_equal(rc, 0);
        else if (rc != -EINVAL || !strstr(err, cases[i][1]))
            fail_msg("%s: expected \"%s\", got %d \"%s\"", cases[i][0], cases[i][1], rc, err);
        json_decref(params);
    }
    /* no schema for updates or bindings: anything goes to the broker */
    json_t *any = json_loads("{\"x\":1}", 0, NULL);
    char err[256];
    assert_int_equal(services_parameters_check(plan, "service_instance.update", any, err, sizeof err), 0);
    assert_int_equal(services_parameters_check(plan, "service_binding.create", NULL, err, sizeof err), 0);
    /* none given is checked as {} */
    assert_int_equal(services_parameters_check(plan, "service_instance.create", NULL, err, sizeof err),
                     -EINVAL);
    json_decref(any);
    json_decref(plan);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_user_provided_entry),
        cmocka_unit_test(test_managed_entries_grouped_by_label),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_seal_round_trip_and_key_file),
        cmocka_unit_test(test_a_key_is_shared_through_the_store),
        cmocka_unit_test(test_catalog_validation),
        cmocka_unit_test(test_osb_identity_and_describe),
        cmocka_unit_test(test_parameters_against_a_schema),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
