/* Unit tests for the router's reading of the bus on NATS core (router_nats_parse): what
 * skiffd announces is read; everything a broken or hostile publisher could put on a
 * skiff.bus.* subject is refused with a reason (or, for a subject it does not know, set aside
 * as UNKNOWN), never crashes and never leaks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "router/router_internal.h"

static int parse(const char *subject, const char *data, size_t len, struct router_nats_msg *m,
                 char *err)
{
    return router_nats_parse(subject, data, len, m, err, 256);
}

static int parse_text(const char *subject, const char *text, struct router_nats_msg *m, char *err)
{
    return parse(subject, text, text ? strlen(text) : 0, m, err);
}

static void test_what_skiffd_sends_is_read(void **state)
{
    (void)state;
    struct router_nats_msg m;
    char err[256] = "";
    assert_int_equal(parse_text("skiff.bus.register",
                                "{\"v\":1,\"ttl_ms\":30000,\"route\":{\"host\":\"a.localhost\","
                                "\"path\":\"/v1\",\"backends\":[{\"addr\":\"10.0.0.2:8080\"}]}}",
                                &m, err),
                     0);
    assert_int_equal(m.kind, ROUTER_NATS_REGISTER);
    assert_int_equal(m.ttl_ms, 30000);
    assert_string_equal(json_string_value(json_object_get(m.route, "host")), "a.localhost");
    assert_int_equal(m.table_version, 0); /* not said: nothing to acknowledge */
    router_nats_msg_free(&m);

    /* the table version and its route count, which the router acknowledges (docs/bus.md) */
    assert_int_equal(parse_text("skiff.bus.register",
                                "{\"v\":1,\"ttl_ms\":30000,\"version\":17,\"count\":2,"
                                "\"route\":{\"host\":\"a.localhost\",\"path\":\"\"}}",
                                &m, err),
                     0);
    assert_int_equal(m.table_version, 17);
    assert_int_equal(m.table_count, 2);
    router_nats_msg_free(&m);
    /* the instances skiffd drains, carried to the table the registers make */
    assert_int_equal(parse_text("skiff.bus.register",
                                "{\"v\":1,\"ttl_ms\":30000,\"draining\":[\"10.0.0.3:8080\"],"
                                "\"route\":{\"host\":\"a.localhost\",\"path\":\"\"}}",
                                &m, err),
                     0);
    assert_int_equal(json_array_size(m.draining), 1);
    router_nats_msg_free(&m);
    assert_null(m.draining);
    /* anything but a list is no list: the route still counts */
    assert_int_equal(parse_text("skiff.bus.register",
                                "{\"v\":1,\"ttl_ms\":30000,\"draining\":\"10.0.0.3:8080\","
                                "\"route\":{\"host\":\"a.localhost\",\"path\":\"\"}}",
                                &m, err),
                     0);
    assert_null(m.draining);
    router_nats_msg_free(&m);
    /* a version or count that is not a positive integer is no version: the route still counts */
    const char *odd[] = {"\"version\":-3,\"count\":1", "\"version\":5,\"count\":0",
                         "\"version\":\"5\",\"count\":1", "\"version\":5,\"count\":1.5"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        char text[256];
        snprintf(text, sizeof text,
                 "{\"v\":1,\"ttl_ms\":1000,%s,\"route\":{\"host\":\"a\",\"path\":\"\"}}", odd[i]);
        assert_int_equal(parse_text("skiff.bus.register", text, &m, err), 0);
        assert_int_equal(m.table_version, 0);
        assert_int_equal(m.table_count, 0);
        router_nats_msg_free(&m);
    }

    assert_int_equal(parse_text("skiff.bus.unregister",
                                "{\"v\":1,\"host\":\"a.localhost\",\"path\":\"\"}", &m, err),
                     0);
    assert_int_equal(m.kind, ROUTER_NATS_UNREGISTER);
    assert_string_equal(m.host, "a.localhost");
    assert_string_equal(m.path, "");
    assert_int_equal(m.table_version, 0); /* an older skiffd's: no version */
    assert_int_equal(parse_text("skiff.bus.unregister",
                                "{\"v\":1,\"host\":\"a.localhost\",\"path\":\"\",\"version\":12}",
                                &m, err),
                     0);
    assert_int_equal(m.table_version, 12);

    assert_int_equal(
        parse_text("skiff.bus.drain", "{\"v\":1,\"addr\":\"127.0.0.1:61001\",\"id\":9}", &m, err),
        0);
    assert_int_equal(m.kind, ROUTER_NATS_DRAIN);
    assert_int_equal(m.drain_id, 9);
    assert_string_equal(m.drain_addr, "127.0.0.1:61001");
    assert_int_equal(m.drain_version, 0); /* an older skiffd's: no version */

    /* the version of the table without the instance: the drain waits for it */
    assert_int_equal(parse_text("skiff.bus.drain",
                                "{\"v\":1,\"addr\":\"10.0.0.3:8080\",\"id\":4,\"version\":77}", &m,
                                err),
                     0);
    assert_int_equal(m.drain_version, 77);
    /* a version that is not a positive integer is not one: the address alone decides */
    assert_int_equal(parse_text("skiff.bus.drain",
                                "{\"v\":1,\"addr\":\"10.0.0.3:8080\",\"id\":4,\"version\":-2}", &m,
                                err),
                     0);
    assert_int_equal(m.drain_version, 0);
    assert_int_equal(parse_text("skiff.bus.drain",
                                "{\"v\":1,\"addr\":\"10.0.0.3:8080\",\"id\":4,\"version\":\"9\"}",
                                &m, err),
                     0);
    assert_int_equal(m.drain_version, 0);

    assert_int_equal(parse_text("skiff.bus.certs", "{\"v\":1}", &m, err), 0);
    assert_int_equal(m.kind, ROUTER_NATS_CERTS);
    assert_null(m.pair);

    /* a domain's pair (over TLS NATS only, docs/bus.md) */
    assert_int_equal(parse_text("skiff.bus.certs",
                                "{\"v\":1,\"domain\":\"shop.example-1.test\",\"cert\":\"C\","
                                "\"key\":\"K\"}",
                                &m, err),
                     0);
    assert_int_equal(m.kind, ROUTER_NATS_CERTS);
    assert_string_equal(m.domain, "shop.example-1.test");
    assert_string_equal(json_string_value(json_object_get(m.pair, "key")), "K");
    router_nats_msg_free(&m);
    assert_null(m.pair);

    /* a domain's certificate left the store: the name alone, no pair */
    assert_int_equal(parse_text("skiff.bus.certs",
                                "{\"v\":1,\"domain\":\"shop.test\",\"removed\":true}", &m, err),
                     0);
    assert_int_equal(m.kind, ROUTER_NATS_CERTS);
    assert_true(m.removed);
    assert_string_equal(m.domain, "shop.test");
    assert_null(m.pair);
    router_nats_msg_free(&m);

    /* a newer skiffd's subject: not an error, the caller logs it once */
    assert_int_equal(parse_text("skiff.bus.newthing", "whatever", &m, err), 0);
    assert_int_equal(m.kind, ROUTER_NATS_UNKNOWN);
}

static void test_hostile_messages_are_refused_with_a_reason(void **state)
{
    (void)state;
    static const struct {
        const char *subject, *body, *reason;
    } cases[] = {
        {"skiff.bus.register", "", "not a JSON object"},
        {"skiff.bus.register", "not json", "not a JSON object"},
        {"skiff.bus.register", "[1,2]", "not a JSON object"},
        {"skiff.bus.register", "\"str\"", "not a JSON object"},
        {"skiff.bus.register", "{}", "\"v\""},
        {"skiff.bus.register", "{\"v\":\"1\"}", "\"v\""},
        {"skiff.bus.register", "{\"v\":2,\"ttl_ms\":1000,\"route\":{}}", "another version"},
        {"skiff.bus.register", "{\"v\":1,\"v\":1}", "not a JSON object"}, /* duplicate key */
        {"skiff.bus.register", "{\"v\":1,\"ttl_ms\":1000}", "\"route\""},
        {"skiff.bus.register", "{\"v\":1,\"ttl_ms\":1000,\"route\":[]}", "\"route\""},
        {"skiff.bus.register", "{\"v\":1,\"ttl_ms\":1000,\"route\":{\"host\":7,\"path\":\"\"}}",
         "\"host\""},
        {"skiff.bus.register", "{\"v\":1,\"ttl_ms\":1000,\"route\":{\"host\":\"a\"}}", "\"path\""},
        {"skiff.bus.register", "{\"v\":1,\"route\":{\"host\":\"a\",\"path\":\"\"}}", "ttl_ms"},
        {"skiff.bus.register", "{\"v\":1,\"ttl_ms\":-5,\"route\":{\"host\":\"a\",\"path\":\"\"}}",
         "ttl_ms"},
        {"skiff.bus.register",
         "{\"v\":1,\"ttl_ms\":99999999999,\"route\":{\"host\":\"a\",\"path\":\"\"}}", "ttl_ms"},
        {"skiff.bus.register", "{\"v\":1,\"ttl_ms\":1.5,\"route\":{\"host\":\"a\",\"path\":\"\"}}",
         "ttl_ms"},
        {"skiff.bus.unregister", "{\"v\":1}", "\"host\""},
        {"skiff.bus.unregister", "{\"v\":1,\"host\":\"a\",\"path\":null}", "\"host\""},
        {"skiff.bus.drain", "{\"v\":1,\"addr\":\"127.0.0.1:1\",\"id\":-1}", "\"id\""},
        {"skiff.bus.drain", "{\"v\":1,\"addr\":\"nowhere\",\"id\":3}", "HOST:PORT"},
        {"skiff.bus.drain", "{\"v\":1,\"id\":3}", "HOST:PORT"},
        {"skiff.bus.certs", "{\"v\":0}", "another version"},
        /* a domain becomes a file name: nothing but a DNS name */
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"../../etc/x\",\"cert\":\"C\",\"key\":\"K\"}",
         "not a DNS name"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"a/b\",\"cert\":\"C\",\"key\":\"K\"}",
         "not a DNS name"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"..\",\"cert\":\"C\",\"key\":\"K\"}",
         "not a DNS name"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\".hidden\",\"cert\":\"C\",\"key\":\"K\"}",
         "not a DNS name"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"\",\"cert\":\"C\",\"key\":\"K\"}",
         "not a DNS name"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"UPPER.test\",\"cert\":\"C\",\"key\":\"K\"}",
         "not a DNS name"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":7,\"cert\":\"C\",\"key\":\"K\"}",
         "not a DNS name"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"a.test\",\"cert\":\"C\"}", "PEM text"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"a.test\",\"cert\":\"\",\"key\":\"K\"}",
         "PEM text"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"a.test\",\"cert\":\"C\\u0000x\",\"key\":\"K\"}",
         "not a JSON object"}, /* jansson refuses NUL */
        /* a removal names a file to unlink: a DNS name, and nothing else in the message */
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"../../etc/passwd\",\"removed\":true}",
         "not a DNS name"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"a/b\",\"removed\":true}", "not a DNS name"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"default\",\"removed\":\"yes\"}", "removal"},
        {"skiff.bus.certs", "{\"v\":1,\"domain\":\"a.test\",\"removed\":false}", "removal"},
        {"skiff.bus.certs",
         "{\"v\":1,\"domain\":\"a.test\",\"removed\":true,\"cert\":\"C\",\"key\":\"K\"}",
         "removal"},
        {"skiff.router", "{\"v\":1}", "outside"},
        {"", "{\"v\":1}", "outside"},
        {"skiff.bus", "{\"v\":1}", "outside"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct router_nats_msg m;
        char err[256] = "";
        int rc = parse_text(cases[i].subject, cases[i].body, &m, err);
        if (rc != -EINVAL || !strstr(err, cases[i].reason))
            fail_msg("%s %s: rc %d, err \"%s\" (wanted one with \"%s\")", cases[i].subject,
                     cases[i].body, rc, err, cases[i].reason);
        assert_null(m.route);
        assert_null(m.pair);
    }
}

static void test_odd_bytes_and_sizes_never_crash(void **state)
{
    (void)state;
    struct router_nats_msg m;
    char err[256];
    /* NUL bytes inside, no terminating NUL at len, deep nesting, a huge host */
    static const char nul[] = "{\"v\":1,\"host\":\"a\0b\",\"path\":\"\"}";
    assert_int_equal(parse("skiff.bus.unregister", nul, sizeof nul - 1, &m, err), -EINVAL);
    assert_int_equal(parse("skiff.bus.register", NULL, 0, &m, err), -EINVAL);
    size_t n = 200000;
    char *deep = malloc(n);
    memset(deep, '[', n);
    assert_int_equal(parse("skiff.bus.register", deep, n, &m, err), -EINVAL);
    assert_int_equal(parse("skiff.bus.certs", deep, n, &m, err), -EINVAL);
    free(deep);
    char *big = malloc(8192);
    int len = snprintf(big, 8192, "{\"v\":1,\"host\":\"");
    memset(big + len, 'h', 4000);
    len += 4000;
    len += snprintf(big + len, 8192 - (size_t)len, "\",\"path\":\"\"}");
    assert_int_equal(parse("skiff.bus.unregister", big, (size_t)len, &m, err), -EINVAL);
    free(big);
    /* every prefix of a valid message is refused or read, never more */
    static const char ok[] =
        "{\"v\":1,\"ttl_ms\":1000,\"route\":{\"host\":\"a.localhost\",\"path\":\"\"}}";
    for (size_t cut = 0; cut < sizeof ok - 1; cut++) {
        int rc = parse("skiff.bus.register", ok, cut, &m, err);
        assert_int_equal(rc, -EINVAL);
        assert_null(m.route);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_what_skiffd_sends_is_read),
        cmocka_unit_test(test_hostile_messages_are_refused_with_a_reason),
        cmocka_unit_test(test_odd_bytes_and_sizes_never_crash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
