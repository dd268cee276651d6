/* cloudevents: CloudEvents 1.0 in the forms Skiff meets them.
 *
 * - parsing what a publisher sends over HTTP: binary mode (ce-* headers, body = data),
 *   structured mode (application/cloudevents+json) and "any body" (wrapped: a generated id,
 *   type skiff.event, the caller's source);
 * - the record a topic stores (a compact binary encoding, decoded without copying);
 * - binary-mode headers for delivering an event, and structured JSON for showing one.
 *
 * A struct cloudevent holds pointers to NUL-terminated strings. Who owns them is said by the
 * call that filled it: cloudevent_free() releases what a parse allocated, and is a no-op for
 * an event decoded from a record (it points into the record, which must outlive it).
 *
 * Errors: parse calls return -EINVAL (or -EMSGSIZE) and write a message that names the
 * attribute at fault, e.g. "missing required attribute 'source': set the ce-source header". */
#ifndef SKIFF_CLOUDEVENTS_H
#define SKIFF_CLOUDEVENTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

#define CLOUDEVENT_MAX_EXTENSIONS 32

struct cloudevent_ext {
    const char *name; /* lower-case [a-z0-9]{1,20} */
    const char *value;
};

struct cloudevent {
    const char *id;          /* required */
    const char *source;      /* required */
    const char *type;        /* required */
    const char *specversion; /* required, "1.0" */
    const char *subject;     /* optional attributes: NULL when absent */
    const char *time;        /* RFC 3339 */
    const char *datacontenttype;
    const char *dataschema;
    struct cloudevent_ext ext[CLOUDEVENT_MAX_EXTENSIONS];
    size_t ext_count;
    const void *data; /* may be NULL with data_len 0: no data */
    size_t data_len;
    void *owned_; /* private: storage to release */
};

/* One HTTP header as received (name in any case). */
struct cloudevent_header {
    const char *name;
    const char *value;
};

/* Builds an event from an HTTP publish. Structured mode when the Content-Type is
 * application/cloudevents+json, binary mode when any ce-* header is present, otherwise the
 * body is wrapped (id generated, type "skiff.event", source default_source, datacontenttype
 * from the Content-Type). A missing `time` is set to now. The event owns copies of everything.
 * Errors: -EINVAL with errmsg naming the attribute or header at fault. */
int cloudevent_from_http(const struct cloudevent_header *headers, size_t header_count,
                         const void *body, size_t body_len, const char *default_source,
                         struct cloudevent *out, char *errmsg, size_t errlen);

/* A request's headers gathered for cloudevent_from_request: zero it, then pass
 * cloudevent_headers_add to a header walk (api_request_headers_each). Names and values are
 * borrowed from the request. */
#define CLOUDEVENT_MAX_HEADERS 128
struct cloudevent_headers {
    struct cloudevent_header items[CLOUDEVENT_MAX_HEADERS];
    size_t count;
    bool overflow; /* there were more than CLOUDEVENT_MAX_HEADERS */
};
void cloudevent_headers_add(void *headers, const char *name, const char *value);
/* Whether cloudevent_from_request would wrap the body (no ce-* header, not a CloudEvents media
 * type): only then is default_source used, so a caller may work it out only then. */
bool cloudevent_request_wraps(const struct cloudevent_headers *headers);
/* cloudevent_from_http over gathered headers; too many of them is -EINVAL saying so. */
int cloudevent_from_request(const struct cloudevent_headers *headers, const void *body,
                            size_t body_len, const char *default_source, struct cloudevent *out,
                            char *errmsg, size_t errlen);

/* The same for the binary-mode headers of an HTTP response (a function's reply): returns 1
 * and fills *out when the response carries a CloudEvent (ce-specversion present), 0 when it
 * does not (out untouched), -EINVAL when it carries a malformed one. */
int cloudevent_from_response(const struct cloudevent_header *headers, size_t header_count,
                             const void *body, size_t body_len, struct cloudevent *out,
                             char *errmsg, size_t errlen);

/* One structured-mode event from its JSON text (an object). A missing `time` is set to now.
 * Errors: -EBADMSG when the text is not JSON (errmsg: "the body is not valid JSON (line L,
 * column C: why)"), -EINVAL naming the attribute at fault. */
int cloudevent_from_json_text(const void *text, size_t len, struct cloudevent *out, char *errmsg,
                              size_t errlen);
/* A batch: a JSON array of 1 to max structured events, read in one pass. *events (freed with
 * cloudevent_batch_free) gets *count events. Errors: -EBADMSG not JSON, -ERANGE not an array
 * of 1 to max, -EINVAL an event at fault ("event I of the batch: ..."). */
int cloudevent_batch_from_json_text(const void *text, size_t len, size_t max,
                                    struct cloudevent **events, size_t *count, char *errmsg,
                                    size_t errlen);
void cloudevent_batch_free(struct cloudevent *events, size_t count);

/* Checks the required attributes and the form of the others. */
int cloudevent_validate(const struct cloudevent *ev, char *errmsg, size_t errlen);

void cloudevent_free(struct cloudevent *ev);

/* ---- the stored record ---------------------------------------------------------------- */

/* Appends the record encoding of ev to out. */
void cloudevent_encode_record(const struct cloudevent *ev, struct buf *out);
/* Decodes a record; the event points into data (which must stay alive and unchanged).
 * Errors: -EINVAL when the bytes are not a record. */
int cloudevent_decode_record(const void *data, size_t len, struct cloudevent *out);

/* ---- delivering and showing ----------------------------------------------------------- */

/* Calls emit once per binary-mode HTTP header of ev (ce-id, ce-source, ce-specversion, ce-type,
 * ce-subject, ce-time, ce-dataschema, ce-<extension>, Content-Type), values percent-encoded
 * where the HTTP binding requires. The body to send is ev->data. */
void cloudevent_http_headers(const struct cloudevent *ev,
                             void (*emit)(void *arg, const char *name, const char *value),
                             void *arg);

/* The structured JSON form (new reference): data as JSON when the content type is JSON and it
 * parses, as a string when it is UTF-8 text, otherwise data_base64. */
json_t *cloudevent_to_json(const struct cloudevent *ev);

/* Gets an attribute by name ("id", "type", "subject", an extension, ...); NULL when absent.
 * For filters. */
const char *cloudevent_attr(const struct cloudevent *ev, const char *name);

#endif
