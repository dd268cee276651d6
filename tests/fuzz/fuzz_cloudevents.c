/* libFuzzer target: what a publisher may send. The input is read as HTTP headers
 * ("name: value" lines) up to an empty line, then a body; it goes through every CloudEvents
 * entry point that takes outside bytes: an HTTP publish, a function's reply, a structured
 * JSON event, and the stored-record decoder. A parsed event must survive encoding to a record
 * and back, and to JSON. */
#include <jansson.h>
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
    json_t *obj = json_loadb(body, body_len, 0, NULL);
    if (obj) {
        if (json_is_object(obj) && cloudevent_from_json(obj, &ev, err, sizeof err) == 0) {
            check_round_trip(&ev);
            cloudevent_free(&ev);
        }
        json_decref(obj);
    }
    struct cloudevent rec;
    if (cloudevent_decode_record(data, size, &rec) == 0) {
        json_t *j = cloudevent_to_json(&rec);
        json_decref(j);
        cloudevent_free(&rec);
    }
    free(text);
    return 0;
}
