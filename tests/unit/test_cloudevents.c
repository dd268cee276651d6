/* Unit tests for CloudEvents parsing (binary, structured, wrapped), validation, the record
 * encoding, binary-mode headers and the JSON form. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "fabric/cloudevents.h"

#define H(n, v)                                                                                    \
    {                                                                                              \
        n, v                                                                                       \
    }

/* An event's strings share one block of storage; values that do not fit in what is left of it
 * (a long one, or many) are kept on their own, and every value reads back whole. */
static void test_binary_mode_long_values(void **state)
{
    (void)state;
    static char longv[3 * 700 + 1], mid[8][301];
    for (size_t i = 0; i < 700; i++)
        memcpy(longv + 3 * i, "%41", 3); /* 700 x 'A' once decoded */
    struct cloudevent_header h[12] = {H("ce-id", "1"), H("ce-source", "/s"),
                                      H("ce-specversion", "1.0"), H("ce-type", "t")};
    static char names[8][16];
    for (int i = 0; i < 8; i++) {
        snprintf(names[i], sizeof names[i], "ce-x%d", i);
        memset(mid[i], 'a' + i, 300);
        h[4 + i] = (struct cloudevent_header){names[i], mid[i]};
    }
    h[11].value = longv;
    struct cloudevent ev;
    char err[256];
    assert_int_equal(cloudevent_from_http(h, 12, "x", 1, "/d", &ev, err, sizeof(err)), 0);
    for (int i = 0; i < 7; i++)
        assert_string_equal(cloudevent_attr(&ev, names[i] + 3), mid[i]);
    const char *v = cloudevent_attr(&ev, "x7");
    assert_non_null(v);
    assert_int_equal(strlen(v), 700);
    assert_int_equal(strspn(v, "A"), 700);
    assert_string_equal(ev.id, "1");
    cloudevent_free(&ev);
    struct cloudevent_header bad[] = {H("ce-id", "1"), H("ce-source", "/s"),
                                      H("ce-specversion", "1.0"), H("ce-type", "a%00b")};
    assert_int_equal(cloudevent_from_http(bad, 4, "", 0, "/d", &ev, err, sizeof(err)), -EINVAL);
    cloudevent_free(&ev);
}

static void test_binary_mode(void **state)
{
    struct cloudevent_header h[] = {
        H("Ce-Id", "42"),
        H("ce-source", "/shop"),
        H("ce-specversion", "1.0"),
        H("ce-type", "image.uploaded"),
        H("ce-subject", "cat%20photo.png"),
        H("ce-traceparent", "abc"),
        H("Content-Type", "application/json"),
        H("Host", "x"),
    };
    struct cloudevent ev;
    char err[256];
    assert_int_equal(
        cloudevent_from_http(h, 8, "{\"size\":42}", 11, "/default", &ev, err, sizeof(err)), 0);
    assert_string_equal(ev.id, "42");
    assert_string_equal(ev.source, "/shop");
    assert_string_equal(ev.type, "image.uploaded");
    assert_string_equal(ev.subject, "cat photo.png");
    assert_string_equal(ev.datacontenttype, "application/json");
    assert_string_equal(cloudevent_attr(&ev, "traceparent"), "abc");
    assert_non_null(ev.time); /* set at publish */
    assert_int_equal(ev.data_len, 11);
    cloudevent_free(&ev);
}

static void expect_error(const struct cloudevent_header *h, size_t n, const char *body,
                         const char *needle)
{
    struct cloudevent ev;
    char err[256] = "";
    int rc =
        cloudevent_from_http(h, n, body, body ? strlen(body) : 0, "/src", &ev, err, sizeof(err));
    assert_int_equal(rc, -EINVAL);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not name \"%s\"", err, needle);
}

static void test_binary_errors(void **state)
{
    struct cloudevent_header no_source[] = {H("ce-id", "1"), H("ce-specversion", "1.0"),
                                            H("ce-type", "t")};
    expect_error(no_source, 3, "", "'source'");
    struct cloudevent_header no_id[] = {H("ce-source", "s"), H("ce-specversion", "1.0"),
                                        H("ce-type", "t")};
    expect_error(no_id, 3, "", "'id'");
    struct cloudevent_header no_type[] = {H("ce-id", "1"), H("ce-source", "s"),
                                          H("ce-specversion", "1.0")};
    expect_error(no_type, 3, "", "'type'");
    struct cloudevent_header no_spec[] = {H("ce-id", "1"), H("ce-source", "s"), H("ce-type", "t")};
    expect_error(no_spec, 3, "", "'specversion'");
    struct cloudevent_header bad_spec[] = {H("ce-id", "1"), H("ce-source", "s"), H("ce-type", "t"),
                                           H("ce-specversion", "0.3")};
    expect_error(bad_spec, 4, "", "'specversion'");
    struct cloudevent_header bad_ext[] = {H("ce-id", "1"), H("ce-source", "s"), H("ce-type", "t"),
                                          H("ce-specversion", "1.0"), H("ce-Bad_Name", "x")};
    expect_error(bad_ext, 5, "", "ce-Bad_Name");
    struct cloudevent_header bad_pct[] = {H("ce-id", "1"), H("ce-source", "s"), H("ce-type", "t"),
                                          H("ce-specversion", "1.0"), H("ce-subject", "a%zz")};
    expect_error(bad_pct, 5, "", "ce-subject");
    struct cloudevent_header nul[] = {H("ce-id", "1"), H("ce-source", "s"), H("ce-type", "t"),
                                      H("ce-specversion", "1.0"), H("ce-subject", "ab%00cd")};
    expect_error(nul, 5, "", "ce-subject");
    struct cloudevent_header bad_time[] = {H("ce-id", "1"), H("ce-source", "s"), H("ce-type", "t"),
                                           H("ce-specversion", "1.0"), H("ce-time", "yesterday")};
    expect_error(bad_time, 5, "", "'time'");
    struct cloudevent_header twice[] = {H("ce-id", "1"), H("ce-id", "2"), H("ce-source", "s"),
                                        H("ce-type", "t"), H("ce-specversion", "1.0")};
    expect_error(twice, 5, "", "twice");
    struct cloudevent_header ctl[] = {H("ce-id", "1"), H("ce-source", "s"), H("ce-type", "t"),
                                      H("ce-specversion", "1.0"), H("ce-subject", "a%0Ab")};
    expect_error(ctl, 5, "", "'subject'");
}

static void test_structured_mode(void **state)
{
    struct cloudevent_header h[] = {
        H("Content-Type", "application/cloudevents+json; charset=utf-8")};
    const char *body = "{\"specversion\":\"1.0\",\"id\":\"a1\",\"source\":\"/x\",\"type\":\"t.v\","
                       "\"subject\":\"s\",\"time\":\"2026-11-27T11:09:56.123Z\",\"region\":\"eu\","
                       "\"priority\":3,\"data\":{\"k\":[1,2]}}";
    struct cloudevent ev;
    char err[256];
    assert_int_equal(cloudevent_from_http(h, 1, body, strlen(body), "/d", &ev, err, sizeof(err)),
                     0);
    assert_string_equal(ev.id, "a1");
    assert_string_equal(ev.time, "2026-11-27T11:09:56.123Z");
    assert_string_equal(cloudevent_attr(&ev, "region"), "eu");
    assert_string_equal(cloudevent_attr(&ev, "priority"), "3");
    assert_string_equal(ev.datacontenttype, "application/json");
    assert_int_equal(ev.data_len, strlen("{\"k\":[1,2]}"));
    assert_memory_equal(ev.data, "{\"k\":[1,2]}", ev.data_len);
    cloudevent_free(&ev);

    const char *text = "{\"specversion\":\"1.0\",\"id\":\"a1\",\"source\":\"/x\",\"type\":\"t\","
                       "\"datacontenttype\":\"text/plain\",\"data\":\"hi there\"}";
    assert_int_equal(cloudevent_from_http(h, 1, text, strlen(text), "/d", &ev, err, sizeof(err)),
                     0);
    assert_memory_equal(ev.data, "hi there", 8);
    cloudevent_free(&ev);

    const char *b64 = "{\"specversion\":\"1.0\",\"id\":\"a1\",\"source\":\"/x\",\"type\":\"t\","
                      "\"data_base64\":\"AAEC\"}";
    assert_int_equal(cloudevent_from_http(h, 1, b64, strlen(b64), "/d", &ev, err, sizeof(err)), 0);
    assert_int_equal(ev.data_len, 3);
    assert_memory_equal(ev.data, "\0\1\2", 3);
    cloudevent_free(&ev);

    expect_error(h, 1, "{\"specversion\":\"1.0\",\"id\":\"a1\",\"type\":\"t\"}", "'source'");
    expect_error(h, 1, "{\"specversion\":\"2.0\",\"id\":\"a1\",\"source\":\"s\",\"type\":\"t\"}",
                 "'specversion'");
    expect_error(h, 1, "{\"specversion\":\"1.0\",\"id\":5,\"source\":\"s\",\"type\":\"t\"}",
                 "'id'");
    expect_error(h, 1,
                 "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"Bad\":1}",
                 "'Bad'");
    expect_error(h, 1, "{not json", "JSON");
    expect_error(h, 1, "[]", "object");
}

static void test_any_body_wrapped(void **state)
{
    struct cloudevent_header h[] = {H("Content-Type", "text/plain")};
    struct cloudevent ev;
    char err[256];
    assert_int_equal(cloudevent_from_http(h, 1, "hello", 5, "/apps/shop", &ev, err, sizeof(err)),
                     0);
    assert_string_equal(ev.type, "skiff.event");
    assert_string_equal(ev.source, "/apps/shop");
    assert_string_equal(ev.specversion, "1.0");
    assert_int_equal(strlen(ev.id), 36);
    assert_string_equal(ev.datacontenttype, "text/plain");
    assert_memory_equal(ev.data, "hello", 5);
    cloudevent_free(&ev);
}

struct header_list {
    char lines[16][128];
    int count;
};

static void collect(void *arg, const char *name, const char *value)
{
    struct header_list *l = arg;
    snprintf(l->lines[l->count++], 128, "%s: %s", name, value);
}

static bool has_line(const struct header_list *l, const char *line)
{
    for (int i = 0; i < l->count; i++)
        if (!strcmp(l->lines[i], line))
            return true;
    return false;
}

static void test_record_round_trip_and_headers(void **state)
{
    struct cloudevent_header h[] = {
        H("ce-id", "7"),
        H("ce-source", "/s"),
        H("ce-specversion", "1.0"),
        H("ce-type", "x.y"),
        H("ce-subject", "caf%C3%A9 \"q\""),
        H("ce-region", "eu"),
        H("content-type", "application/octet-stream"),
    };
    struct cloudevent ev, back;
    char err[256];
    const char bin[] = {0, 1, 2, (char)0xff};
    assert_int_equal(cloudevent_from_http(h, 7, bin, 4, "/d", &ev, err, sizeof(err)), 0);
    assert_string_equal(ev.subject, "caf\xc3\xa9 \"q\"");
    struct buf rec = {0};
    cloudevent_encode_record(&ev, &rec);
    assert_int_equal(cloudevent_decode_record(rec.data, rec.len, &back), 0);
    assert_string_equal(back.id, "7");
    assert_string_equal(back.subject, ev.subject);
    assert_string_equal(cloudevent_attr(&back, "region"), "eu");
    assert_int_equal(back.data_len, 4);
    assert_memory_equal(back.data, bin, 4);

    struct header_list l = {0};
    cloudevent_http_headers(&back, collect, &l);
    assert_true(has_line(&l, "ce-id: 7"));
    assert_true(has_line(&l, "ce-specversion: 1.0"));
    assert_true(has_line(&l, "ce-subject: caf%C3%A9%20%22q%22"));
    assert_true(has_line(&l, "ce-region: eu"));
    assert_true(has_line(&l, "Content-Type: application/octet-stream"));

    json_t *j = cloudevent_to_json(&back);
    assert_string_equal(json_string_value(json_object_get(j, "data_base64")), "AAEC/w==");
    assert_string_equal(json_string_value(json_object_get(j, "region")), "eu");
    json_decref(j);
    cloudevent_free(&back); /* a no-op for a decoded record */

    /* Every truncation of a record is refused, never read past its end. */
    for (size_t cut = 0; cut < rec.len; cut++)
        assert_int_equal(cloudevent_decode_record(rec.data, cut, &back), -EINVAL);
    buf_free(&rec);
    cloudevent_free(&ev);
}

static void test_reply_detection(void **state)
{
    struct cloudevent_header plain[] = {H("Content-Type", "text/plain")};
    struct cloudevent ev;
    char err[256];
    assert_int_equal(cloudevent_from_response(plain, 1, "x", 1, &ev, err, sizeof(err)), 0);
    struct cloudevent_header reply[] = {H("ce-id", "r1"), H("ce-source", "/f"),
                                        H("ce-specversion", "1.0"), H("ce-type", "done")};
    assert_int_equal(cloudevent_from_response(reply, 4, "ok", 2, &ev, err, sizeof(err)), 1);
    assert_string_equal(ev.type, "done");
    json_t *j = cloudevent_to_json(&ev);
    assert_string_equal(json_string_value(json_object_get(j, "data")), "ok");
    json_decref(j);
    cloudevent_free(&ev);
    struct cloudevent_header broken[] = {H("ce-specversion", "1.0"), H("ce-id", "r1")};
    assert_int_equal(cloudevent_from_response(broken, 2, "", 0, &ev, err, sizeof(err)), -EINVAL);
}

static void test_gathered_headers(void **state)
{
    (void)state;
    struct cloudevent_headers h = {.count = 0};
    cloudevent_headers_add(&h, "ce-id", "1");
    cloudevent_headers_add(&h, "ce-source", "/s");
    cloudevent_headers_add(&h, "ce-type", "t");
    cloudevent_headers_add(&h, "ce-specversion", "1.0");
    struct cloudevent ev;
    char err[256];
    assert_int_equal(cloudevent_from_request(&h, "x", 1, "/d", &ev, err, sizeof(err)), 0);
    assert_string_equal(ev.id, "1");
    assert_string_equal(ev.source, "/s");
    cloudevent_free(&ev);
    while (!h.overflow)
        cloudevent_headers_add(&h, "x-more", "1");
    assert_false(cloudevent_request_wraps(&h)); /* binary mode */
    struct cloudevent_headers plain = {.count = 0};
    cloudevent_headers_add(&plain, "Content-Type", "text/plain");
    assert_true(cloudevent_request_wraps(&plain));
    struct cloudevent_headers structured = {.count = 0};
    cloudevent_headers_add(&structured, "Content-Type", "application/cloudevents+json");
    assert_false(cloudevent_request_wraps(&structured));
    assert_int_equal(h.count, CLOUDEVENT_MAX_HEADERS);
    assert_int_equal(cloudevent_from_request(&h, "x", 1, "/d", &ev, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "headers: send fewer"));
}

/* Batches and structured events read in one pass: data kept as compact JSON, escapes decoded,
 * the last repeated member winning, and each kind of error told apart. */
static void test_batch_text(void **state)
{
    (void)state;
    const char *body =
        " [ {\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\n"
        "    \"data\" : { \"k\" : [ 1 , 2.50 , \"\\u00e9\\ud83d\\ude00\" ] } } ,\n"
        "   {\"specversion\":\"1.0\",\"id\":\"2\",\"id\":\"3\",\"source\":\"/s\","
        "\"type\":\"t\",\"datacontenttype\":\"text/plain\",\"data\":\"a\\nb\",\"n\":-0} ] ";
    struct cloudevent *evs;
    size_t n;
    char err[256];
    assert_int_equal(
        cloudevent_batch_from_json_text(body, strlen(body), 10, &evs, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    assert_memory_equal(evs[0].data, "{\"k\":[1,2.50,\"\\u00e9\\ud83d\\ude00\"]}", evs[0].data_len);
    assert_string_equal(evs[0].datacontenttype, "application/json");
    assert_string_equal(evs[1].id, "3");
    assert_int_equal(evs[1].data_len, 3);
    assert_memory_equal(evs[1].data, "a\nb", 3);
    assert_string_equal(cloudevent_attr(&evs[1], "n"), "0");
    cloudevent_batch_free(evs, n);

    static const struct {
        const char *body;
        int rc;
        const char *says;
    } bad[] = {
        {"[{\"id\":1,]", -EBADMSG, "line 1, column 10"},
        {"[{\"a\":\"\\u0000\"}]", -EBADMSG, "\\u0000 is not allowed"},
        {"[{\"a\":\"\\ud800\"}]", -EBADMSG, "lone high surrogate"},
        {"[{\"a\":99999999999999999999}]", -EBADMSG, "too big integer"},
        {"[{\"a\":1e999}]", -EBADMSG, "real number overflow"},
        {"[{\"a\":\"\xff\"}]", -EBADMSG, "invalid UTF-8"},
        {"[] x", -EBADMSG, "end of file expected"},
        {"[]", -ERANGE, "1 to 10"},
        {"{}", -ERANGE, "a batch is a JSON array"},
        {"[1]", -EINVAL, "event 0 of the batch: a structured CloudEvent must be a JSON object"},
        {"[{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\"},"
         "{\"specversion\":\"1.0\",\"id\":{},\"source\":\"/s\",\"type\":\"t\"}]",
         -EINVAL, "event 1 of the batch: attribute 'id' must be a string"},
        /* broken JSON after a bad event: the JSON error is the answer */
        {"[{\"id\":{}}, {", -EBADMSG, "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        int rc = cloudevent_batch_from_json_text(bad[i].body, strlen(bad[i].body), 10, &evs, &n,
                                                 err, sizeof err);
        if (rc != bad[i].rc || !strstr(err, bad[i].says))
            fail_msg("%s: %d %s", bad[i].body, rc, err);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gathered_headers),
        cmocka_unit_test(test_binary_mode),
        cmocka_unit_test(test_binary_errors),
        cmocka_unit_test(test_structured_mode),
        cmocka_unit_test(test_batch_text),
        cmocka_unit_test(test_any_body_wrapped),
        cmocka_unit_test(test_record_round_trip_and_headers),
        cmocka_unit_test(test_reply_detection),
        cmocka_unit_test(test_binary_mode_long_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
