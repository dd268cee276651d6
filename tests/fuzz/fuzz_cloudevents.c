/* libFuzzer target: what a publisher may send. The input is read as HTTP headers
 * ("name: value" lines) up to an empty line, then a body; it goes through every CloudEvents
 * entry point that takes outside bytes: an HTTP publish, a function's reply, a structured
 * JSON event and a batch (read by Skiff's own one-pass reader, checked against jansson: the
 * same texts are JSON, and `data` means the same), and the stored-record decoder. A parsed
 * event must survive encoding to a record and back, and to JSON. */
#include <errno.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "fabric/cloudevents.h"

#define MAX_HEADERS 64

static void check_round_trip(const struct cloudevent *ev)
{
    struct buf rec = {0};
    cloudevent_encode_record(ev, &rec);
    struct cloudevent back;
    if (cloudevent_decode_record(rec.data, rec.len, &back) != 0)
        abort(); /* a record we wrote must read back */
    if (strcmp(back.id, ev->id) || strcmp(back.source, ev->source) || back.data_len != ev->data_len)
        abort();
    json_t *j = cloudevent_to_json(&back);
    json_decref(j);
    cloudevent_free(&back);
    buf_free(&rec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';

    struct cloudevent_header headers[MAX_HEADERS];
    size_t count = 0;
    char *p = text, *end = text + size, *body = end;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            nl = end;
        *nl = '\0';
        if (nl == p) { /* empty line: the body follows */
            body = nl + 1 <= end ? nl + 1 : end;
            break;
        }
        char *colon = strchr(p, ':');
        if (colon && count < MAX_HEADERS) {
            *colon = '\0';
            char *value = colon + 1;
            while (*value == ' ')
                value++;
            headers[count].name = p;
            headers[count].value = value;
            count++;
        }
        p = nl + 1;
    }
    if (body > end)
        body = end;
    size_t body_len = (size_t)(end - body);

    char err[256];
    struct cloudevent ev;
    if (cloudevent_from_http(headers, count, body, body_len, "/fuzz", &ev, err, sizeof err) == 0) {
        check_round_trip(&ev);
        cloudevent_free(&ev);
    }
    if (cloudevent_from_response(headers, count, body, body_len, &ev, err, sizeof err) == 1) {
        check_round_trip(&ev);
        cloudevent_free(&ev);
    }
    /* the one-pass reader and jansson agree on what is JSON (for an object or array at the
     * top; far from jansson's depth limit) and on what `data` holds */
    json_t *obj = json_loadb(body, body_len, 0, NULL);
    size_t opens = 0;
    for (size_t i = 0; i < body_len; i++)
        opens += body[i] == '[' || body[i] == '{';
    const char *first = body;
    while (first < end && (*first == ' ' || *first == '\t' || *first == '\n' || *first == '\r'))
        first++;
    /* a raw NUL byte is never JSON, but jansson lets one pass right after a number */
    bool comparable = opens < 1000 && first < end && (*first == '{' || *first == '[') &&
                      !memchr(body, '\0', body_len);
    int rc = cloudevent_from_json_text(body, body_len, &ev, err, sizeof err);
    if (comparable && (rc == -EBADMSG) != (obj == NULL))
        abort();
    if (rc == 0) {
        check_round_trip(&ev);
        json_t *want = json_object_get(obj, "data");
        if (want && !json_is_null(want) && !json_is_string(want) &&
            !json_object_get(obj, "data_base64")) {
            json_t *got = json_loadb(ev.data, ev.data_len, JSON_DECODE_ANY, NULL);
            if (!got || !json_equal(got, want))
                abort();
            json_decref(got);
        }
        cloudevent_free(&ev);
    }
    struct cloudevent *batch = NULL;
    size_t n = 0;
    rc = cloudevent_batch_from_json_text(body, body_len, 100, &batch, &n, err, sizeof err);
    if (comparable && (rc == -EBADMSG) != (obj == NULL))
        abort();
    if (rc == 0) {
        for (size_t i = 0; i < n; i++)
            check_round_trip(&batch[i]);
        cloudevent_batch_free(batch, n);
    }
    json_decref(obj);
    struct cloudevent rec;
    if (cloudevent_decode_record(data, size, &rec) == 0) {
        json_t *j = cloudevent_to_json(&rec);
        json_decref(j);
        cloudevent_free(&rec);
    }
    free(text);
    return 0;
}
