/* cloudevents: parsing, validation and the encodings of CloudEvents 1.0 (see cloudevents.h).
 *
 * The stored record is a compact binary encoding rather than structured JSON: it keeps binary
 * data as it is (no base64), and decoding it is a walk over length-prefixed fields that
 * points into the record without allocating, which matters on the delivery path. Layout:
 *   "CE" 0x01 | u8 attribute count | per attribute: u8 name length, name, NUL,
 *   u32 value length, value, NUL | u32 data length | data | NUL   (lengths little-endian) */
#include "fabric/cloudevents.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include "common/util.h"
#include "http/url.h"

/* ---- ownership ---------------------------------------------------------------------------- */

/* What an event owns, released at once by cloudevent_free: its strings are copied into one
 * block (one allocation per event instead of one per attribute, on the path of every
 * publish), and whatever does not fit, and the data, are kept as pieces. */
#define CE_ARENA_BYTES 1024
#define CE_ARENA_FEW 4

struct ce_arena {
    void *few[CE_ARENA_FEW]; /* the first pieces */
    size_t nfew;
    void **ptrs; /* the pieces after them */
    size_t count, cap;
    size_t used; /* of bytes */
    char bytes[CE_ARENA_BYTES];
};

static struct ce_arena *arena_of(struct cloudevent *ev)
{
    struct ce_arena *a = ev->owned_;
    if (!a) {
        a = ev->owned_ = xmalloc(sizeof(*a));
        a->nfew = a->count = a->cap = a->used = 0;
        a->ptrs = NULL;
    }
    return a;
}

static void *arena_keep(struct cloudevent *ev, void *p)
{
    struct ce_arena *a = arena_of(ev);
    if (a->nfew < CE_ARENA_FEW) {
        a->few[a->nfew++] = p;
        return p;
    }
    if (a->count == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 16;
        a->ptrs = xrealloc(a->ptrs, a->cap * sizeof(*a->ptrs));
    }
    a->ptrs[a->count++] = p;
    return p;
}

static const char *arena_strdup(struct cloudevent *ev, const char *s)
{
    struct ce_arena *a = arena_of(ev);
    size_t n = strlen(s) + 1;
    if (n > CE_ARENA_BYTES - a->used)
        return arena_keep(ev, xstrdup(s));
    char *p = memcpy(a->bytes + a->used, s, n);
    a->used += n;
    return p;
}

void cloudevent_free(struct cloudevent *ev)
{
    struct ce_arena *a = ev->owned_;
    if (a) {
        for (size_t i = 0; i < a->nfew; i++)
            free(a->few[i]);
        for (size_t i = 0; i < a->count; i++)
            free(a->ptrs[i]);
        free(a->ptrs);
        free(a);
    }
    memset(ev, 0, sizeof(*ev));
}

static int fail(char *errmsg, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *errmsg, size_t errlen, const char *fmt, ...)
{
    if (errmsg && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(errmsg, errlen, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

/* ---- checks ------------------------------------------------------------------------------- */

static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t extra;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            extra = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            extra = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + extra >= n)
            return false;
        for (size_t k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
            (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += extra + 1;
    }
    return true;
}

static bool ext_name_valid(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 20)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9')))
            return false;
    return true;
}

static bool digits(const char *s, int n)
{
    for (int i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* RFC 3339 date-time: 2026-11-27T11:09:56(.123)?(Z|+01:00). */
static bool rfc3339_valid(const char *s)
{
    if (strlen(s) < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) || s[7] != '-' ||
        !digits(s + 8, 2) || (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2) || s[13] != ':' ||
        !digits(s + 14, 2) || s[16] != ':' || !digits(s + 17, 2))
        return false;
    int month = atoi(s + 5), day = atoi(s + 8), hour = atoi(s + 11), min = atoi(s + 14),
        sec = atoi(s + 17);
    if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || min > 59 || sec > 60)
        return false;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (!isdigit((unsigned char)*p))
            return false;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p == 'Z' || *p == 'z')
        return p[1] == '\0';
    if ((*p == '+' || *p == '-') && digits(p + 1, 2) && p[3] == ':' && digits(p + 4, 2))
        return p[6] == '\0';
    return false;
}

static bool has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return true;
    return false;
}

/* The context attributes of CloudEvents 1.0, each named once, in the order they are shown. */
static const struct {
    const char *name;
    size_t offset;
} cloudevent__context[] = {
    {"specversion", offsetof(struct cloudevent, specversion)},
    {"id", offsetof(struct cloudevent, id)},
    {"source", offsetof(struct cloudevent, source)},
    {"type", offsetof(struct cloudevent, type)},
    {"subject", offsetof(struct cloudevent, subject)},
    {"time", offsetof(struct cloudevent, time)},
    {"datacontenttype", offsetof(struct cloudevent, datacontenttype)},
    {"dataschema", offsetof(struct cloudevent, dataschema)},
};

static const char **context_slot(const struct cloudevent *ev, size_t i)
{
    return (const char **)((char *)ev + cloudevent__context[i].offset);
}

int cloudevent_validate(const struct cloudevent *ev, char *errmsg, size_t errlen)
{
    static const char *const required[] = {"specversion", "id", "source", "type"};
    const char *values[] = {ev->specversion, ev->id, ev->source, ev->type};
    for (size_t i = 0; i < ARRAY_SIZE(required); i++)
        if (!values[i] || !*values[i])
            return fail(errmsg, errlen, "missing required attribute '%s'", required[i]);
    if (strcmp(ev->specversion, "1.0"))
        return fail(errmsg, errlen,
                    "attribute 'specversion' is \"%.40s\": only CloudEvents \"1.0\" is supported",
                    ev->specversion);
    for (size_t i = 0; i < ARRAY_SIZE(cloudevent__context); i++) {
        const char *value = *context_slot(ev, i);
        if (!value)
            continue;
        if (has_control(value) || !utf8_valid((const unsigned char *)value, strlen(value)))
            return fail(errmsg, errlen,
                        "attribute '%s' holds control characters or invalid UTF-8: send "
                        "printable text",
                        cloudevent__context[i].name);
    }
    if (ev->subject && !*ev->subject)
        return fail(errmsg, errlen, "attribute 'subject' is empty: leave it out or give a value");
    if (ev->time && !rfc3339_valid(ev->time))
        return fail(errmsg, errlen,
                    "attribute 'time' is \"%.40s\": use RFC 3339, e.g. 2026-11-27T11:09:56Z",
                    ev->time);
    for (size_t i = 0; i < ev->ext_count; i++) {
        if (!ext_name_valid(ev->ext[i].name))
            return fail(errmsg, errlen,
                        "attribute name '%.40s' is not valid: extension names are 1-20 "
                        "lower-case letters or digits",
                        ev->ext[i].name);
        if (has_control(ev->ext[i].value) ||
            !utf8_valid((const unsigned char *)ev->ext[i].value, strlen(ev->ext[i].value)))
            return fail(errmsg, errlen,
                        "attribute '%s' holds control characters or invalid UTF-8: send "
                        "printable text",
                        ev->ext[i].name);
    }
    return 0;
}

/* ---- attributes by name ------------------------------------------------------------------- */

static const char **known_slot(struct cloudevent *ev, const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(cloudevent__context); i++)
        if (!strcmp(name, cloudevent__context[i].name))
            return context_slot(ev, i);
    return NULL;
}

const char *cloudevent_attr(const struct cloudevent *ev, const char *name)
{
    const char **slot = known_slot((struct cloudevent *)ev, name);
    if (slot)
        return *slot;
    for (size_t i = 0; i < ev->ext_count; i++)
        if (!strcmp(ev->ext[i].name, name))
            return ev->ext[i].value;
    return NULL;
}

/* Sets an attribute (value already owned by ev, or pointing into a record). */
static int attr_set(struct cloudevent *ev, const char *name, const char *value, char *errmsg,
                    size_t errlen)
{
    const char **slot = known_slot(ev, name);
    if (slot) {
        *slot = value;
        return 0;
    }
    for (size_t i = 0; i < ev->ext_count; i++)
        if (!strcmp(ev->ext[i].name, name)) {
            ev->ext[i].value = value;
            return 0;
        }
    if (ev->ext_count == CLOUDEVENT_MAX_EXTENSIONS)
        return fail(errmsg, errlen, "too many extension attributes: at most %d are allowed",
                    CLOUDEVENT_MAX_EXTENSIONS);
    ev->ext[ev->ext_count++] = (struct cloudevent_ext){name, value};
    return 0;
}

static void set_time_now(struct cloudevent *ev)
{
    char now[40];
    time_format_rfc3339(time_now_ms(), now, sizeof(now));
    ev->time = arena_strdup(ev, now);
}

/* ---- HTTP binary mode --------------------------------------------------------------------- */

/* Decodes the percent-encoding of a ce-* header value (CloudEvents HTTP binding 3.1.3.2):
 * NULL when malformed, or when it holds a NUL that would cut the value short. */
static char *percent_decode(const char *s)
{
    return http_percent_decode(s, strlen(s), HTTP_DECODE_STRICT);
}

/* A header's value percent-decoded (strictly) into the event's storage; NULL when it is
 * malformed or holds %00. */
static const char *arena_decode(struct cloudevent *ev, const char *s)
{
    struct ce_arena *a = arena_of(ev);
    size_t n = strlen(s);
    if (n + 1 > CE_ARENA_BYTES - a->used) {
        char *v = percent_decode(s);
        return v ? arena_keep(ev, v) : NULL;
    }
    long got = http_percent_decode_into(s, n, HTTP_DECODE_STRICT, a->bytes + a->used);
    if (got < 0)
        return NULL;
    const char *v = a->bytes + a->used;
    a->used += (size_t)got + 1;
    return v;
}

static const char *header_get(const struct cloudevent_header *h, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcasecmp(h[i].name, name))
            return h[i].value;
    return NULL;
}

static bool content_type_is(const char *ct, const char *what)
{
    size_t n = strlen(what);
    while (ct && *ct == ' ')
        ct++;
    return ct && !strncasecmp(ct, what, n) && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

static void set_data(struct cloudevent *ev, const void *body, size_t len)
{
    if (!len) {
        ev->data = NULL;
        ev->data_len = 0;
        return;
    }
    char *copy = xmalloc(len + 1);
    memcpy(copy, body, len);
    copy[len] = '\0';
    ev->data = arena_keep(ev, copy);
    ev->data_len = len;
}

static int from_binary(const struct cloudevent_header *headers, size_t count, const void *body,
                       size_t body_len, struct cloudevent *ev, char *errmsg, size_t errlen)
{
    int rc;
    for (size_t i = 0; i < count; i++) {
        const char *name = headers[i].name;
        if (strncasecmp(name, "ce-", 3))
            continue;
        char lower[64];
        size_t n = strlen(name + 3);
        if (n == 0 || n >= sizeof(lower))
            return fail(errmsg, errlen, "header '%.60s' is not a valid CloudEvents attribute",
                        name);
        for (size_t k = 0; k <= n; k++)
            lower[k] = (char)tolower((unsigned char)name[3 + k]);
        if (!known_slot(ev, lower) && !ext_name_valid(lower))
            return fail(errmsg, errlen,
                        "header '%.60s' is not valid: extension names are 1-20 lower-case "
                        "letters or digits",
                        name);
        if (cloudevent_attr(ev, lower))
            return fail(errmsg, errlen, "header '%.60s' is given twice: send it once", name);
        const char *value = arena_decode(ev, headers[i].value);
        if (!value)
            return fail(errmsg, errlen,
                        "header '%.60s' has a bad percent-encoding: write %%XX with two hex "
                        "digits (and no %%00)",
                        name);
        if ((rc = attr_set(ev, arena_strdup(ev, lower), value, errmsg, errlen)) < 0)
            return rc;
    }
    const char *ct = header_get(headers, count, "content-type");
    if (ct && *ct && !ev->datacontenttype)
        ev->datacontenttype = arena_strdup(ev, ct);
    set_data(ev, body, body_len);
    if (!ev->specversion)
        return fail(errmsg, errlen,
                    "missing required attribute 'specversion': set the ce-specversion header "
                    "to 1.0");
    static const char *const required[] = {"id", "source", "type"};
    for (size_t i = 0; i < ARRAY_SIZE(required); i++)
        if (!cloudevent_attr(ev, required[i]))
            return fail(errmsg, errlen, "missing required attribute '%s': set the ce-%s header",
                        required[i], required[i]);
    return 0;
}

static bool has_ce_header(const struct cloudevent_header *headers, size_t header_count)
{
    for (size_t i = 0; i < header_count; i++)
        if (!strncasecmp(headers[i].name, "ce-", 3))
            return true;
    return false;
}

bool cloudevent_request_wraps(const struct cloudevent_headers *headers)
{
    const char *ct = header_get(headers->items, headers->count, "content-type");
    return !content_type_is(ct, "application/cloudevents+json") &&
           !content_type_is(ct, "application/cloudevents-batch+json") &&
           !has_ce_header(headers->items, headers->count);
}

void cloudevent_headers_add(void *headers, const char *name, const char *value)
{
    struct cloudevent_headers *h = headers;
    if (h->count < ARRAY_SIZE(h->items))
        h->items[h->count++] = (struct cloudevent_header){name, value};
    else
        h->overflow = true;
}

int cloudevent_from_request(const struct cloudevent_headers *headers, const void *body,
                            size_t body_len, const char *default_source, struct cloudevent *out,
                            char *errmsg, size_t errlen)
{
    if (headers->overflow) {
        memset(out, 0, sizeof(*out));
        return fail(errmsg, errlen,
                    "more than %d headers: send fewer (extensions go in ce-* headers, at most %d "
                    "of them)",
                    CLOUDEVENT_MAX_HEADERS, CLOUDEVENT_MAX_EXTENSIONS);
    }
    return cloudevent_from_http(headers->items, headers->count, body, body_len, default_source, out,
                                errmsg, errlen);
}

int cloudevent_from_http(const struct cloudevent_header *headers, size_t header_count,
                         const void *body, size_t body_len, const char *default_source,
                         struct cloudevent *out, char *errmsg, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    const char *ct = header_get(headers, header_count, "content-type");
    int rc;
    if (content_type_is(ct, "application/cloudevents+json")) {
        rc = cloudevent_from_json_text(body, body_len, out, errmsg, errlen);
        return rc == -EBADMSG ? -EINVAL : rc;
    }
    if (content_type_is(ct, "application/cloudevents-batch+json")) {
        rc = fail(errmsg, errlen,
                  "a batch was sent to the single-event endpoint: POST it to "
                  "/v1/topics/TOPIC/events:batch");
        goto fail;
    }
    if (has_ce_header(headers, header_count)) {
        if ((rc = from_binary(headers, header_count, body, body_len, out, errmsg, errlen)) < 0)
            goto fail;
    } else {
        char id[37];
        uuid_generate_v4(id);
        out->id = arena_strdup(out, id);
        out->specversion = "1.0";
        out->type = "skiff.event";
        out->source =
            arena_strdup(out, default_source && *default_source ? default_source : "/skiff");
        if (ct && *ct)
            out->datacontenttype = arena_strdup(out, ct);
        set_data(out, body, body_len);
    }
    if (!out->time)
        set_time_now(out);
    if ((rc = cloudevent_validate(out, errmsg, errlen)) < 0)
        goto fail;
    return 0;
fail:
    cloudevent_free(out);
    return rc;
}

int cloudevent_from_response(const struct cloudevent_header *headers, size_t header_count,
                             const void *body, size_t body_len, struct cloudevent *out,
                             char *errmsg, size_t errlen)
{
    if (!header_get(headers, header_count, "ce-specversion"))
        return 0;
    memset(out, 0, sizeof(*out));
    int rc = from_binary(headers, header_count, body, body_len, out, errmsg, errlen);
    if (rc == 0 && !out->time)
        set_time_now(out);
    if (rc == 0)
        rc = cloudevent_validate(out, errmsg, errlen);
    if (rc < 0) {
        cloudevent_free(out);
        return rc;
    }
    return 1;
}

/* ---- structured mode ---------------------------------------------------------------------- */

static bool content_type_json(const char *ct)
{
    if (!ct)
        return true; /* structured mode: no datacontenttype means application/json */
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, ";");
    while (n && ct[n - 1] == ' ')
        n--;
    if (n == 16 && !strncasecmp(ct, "application/json", 16))
        return true;
    if (n == 9 && !strncasecmp(ct, "text/json", 9))
        return true;
    return n > 5 && !strncasecmp(ct + n - 5, "+json", 5);
}

/* Structured events are read from their JSON text in one pass, straight into the event: for a
 * batch of 100 events a jansson tree per event (a hash per object, a dump of `data`) cost more
 * than the whole rest of a publish. The reader accepts what RFC 8259 and jansson accept (valid
 * UTF-8, no \u0000, no lone surrogate, integers that fit in 64 bits, finite reals, depth at
 * most CE_JSON_MAX_DEPTH) and keeps jansson's meaning: the last of a repeated member wins and
 * `data` that is not a string is kept as compact JSON text (numbers as they were written). */

#define CE_JSON_MAX_DEPTH 2048

struct ce_scan {
    const char *start, *p, *end;
    const char *error; /* what is wrong at p; NULL while all is well */
};

static bool scan_fail(struct ce_scan *s, const char *why)
{
    if (!s->error)
        s->error = why;
    return false;
}

static void scan_ws(struct ce_scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    return v;
}

static void put_utf8(struct buf *out, uint32_t cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | cp >> 6);
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | cp >> 12);
        b[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | cp >> 18);
        b[1] = (char)(0x80 | (cp >> 12 & 0x3F));
        b[2] = (char)(0x80 | (cp >> 6 & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_append(out, b, n);
}

/* A string at s->p (at its opening quote). decoded (when not NULL) gets its value, NUL-
 * terminated; raw (when not NULL) gets the token as written, quotes included. */
static bool scan_string(struct ce_scan *s, struct buf *decoded, struct buf *raw)
{
    const char *begin = s->p++;
    if (decoded)
        buf_reset(decoded);
    for (;;) {
        const char *run = s->p;
        while (s->p < s->end && *s->p != '"' && *s->p != '\\' && (unsigned char)*s->p >= 0x20)
            s->p++;
        if (!utf8_valid((const unsigned char *)run, (size_t)(s->p - run)))
            return scan_fail(s, "invalid UTF-8 in a string");
        if (decoded)
            buf_append(decoded, run, (size_t)(s->p - run));
        if (s->p >= s->end)
            return scan_fail(s, "unterminated string");
        char c = *s->p;
        if (c == '"') {
            s->p++;
            break;
        }
        if (c != '\\')
            return scan_fail(s, "control character in a string");
        if (s->end - s->p < 2)
            return scan_fail(s, "unterminated string");
        char e = s->p[1];
        s->p += 2;
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *k = e ? strchr(from, e) : NULL;
        if (k) {
            if (decoded)
                buf_putc(decoded, to[k - from]);
            continue;
        }
        if (e != 'u' || s->end - s->p < 4)
            return scan_fail(s, "invalid escape in a string");
        int cp = hex4(s->p);
        s->p += 4;
        if (cp < 0)
            return scan_fail(s, "invalid \\u escape");
        if (cp == 0)
            return scan_fail(s, "\\u0000 is not allowed");
        uint32_t code = (uint32_t)cp;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return scan_fail(s, "lone low surrogate in a \\u escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            int lo = s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u' ? hex4(s->p + 2) : -1;
            if (lo < 0xDC00 || lo > 0xDFFF)
                return scan_fail(s, "lone high surrogate in a \\u escape");
            s->p += 6;
            code = 0x10000 + (((uint32_t)cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
        }
        if (decoded)
            put_utf8(decoded, code);
    }
    if (raw)
        buf_append(raw, begin, (size_t)(s->p - begin));
    if (decoded && !decoded->data)
        buf_puts(decoded, "");
    return true;
}

/* A number at s->p; *integer tells whether it has neither fraction nor exponent. */
static bool scan_number(struct ce_scan *s, struct buf *raw, bool *integer)
{
    const char *begin = s->p;
    const char *p = s->p;
    if (p < s->end && *p == '-')
        p++;
    if (p >= s->end || !isdigit((unsigned char)*p))
        return scan_fail(s, "invalid number");
    if (*p == '0')
        p++;
    else
        while (p < s->end && isdigit((unsigned char)*p))
            p++;
    *integer = true;
    if (p < s->end && *p == '.') {
        *integer = false;
        p++;
        if (p >= s->end || !isdigit((unsigned char)*p))
            return scan_fail(s, "invalid number");
        while (p < s->end && isdigit((unsigned char)*p))
            p++;
    }
    if (p < s->end && (*p == 'e' || *p == 'E')) {
        *integer = false;
        p++;
        if (p < s->end && (*p == '+' || *p == '-'))
            p++;
        if (p >= s->end || !isdigit((unsigned char)*p))
            return scan_fail(s, "invalid number");
        while (p < s->end && isdigit((unsigned char)*p))
            p++;
    }
    size_t n = (size_t)(p - begin);
    char small[64];
    char *tmp = n < sizeof small ? small : xmalloc(n + 1);
    memcpy(tmp, begin, n);
    tmp[n] = '\0';
    bool range_ok;
    if (*integer) {
        errno = 0;
        (void)strtoll(tmp, NULL, 10);
        range_ok = errno != ERANGE;
    } else {
        range_ok = isfinite(strtod(tmp, NULL)); /* underflow to 0 is fine, as for jansson */
    }
    if (tmp != small)
        free(tmp);
    if (!range_ok)
        return scan_fail(s, *integer ? "too big integer" : "real number overflow");
    if (raw)
        buf_append(raw, begin, n);
    s->p = p;
    return true;
}

static bool scan_literal(struct ce_scan *s, const char *word, struct buf *raw)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n))
        return scan_fail(s, "invalid token");
    if (raw)
        buf_append(raw, word, n);
    s->p += n;
    return true;
}

/* Any value at s->p (after white space), appended to out as compact JSON. */
static bool scan_value(struct ce_scan *s, struct buf *out, int depth)
{
    scan_ws(s);
    if (s->p >= s->end)
        return scan_fail(s, "unexpected end of input");
    char c = *s->p;
    bool integer;
    if (c == '"')
        return scan_string(s, NULL, out);
    if (c == '-' || isdigit((unsigned char)c))
        return scan_number(s, out, &integer);
    if (c == 't')
        return scan_literal(s, "true", out);
    if (c == 'f')
        return scan_literal(s, "false", out);
    if (c == 'n')
        return scan_literal(s, "null", out);
    if (c != '{' && c != '[')
        return scan_fail(s, "invalid token");
    if (depth >= CE_JSON_MAX_DEPTH)
        return scan_fail(s, "maximum parsing depth reached");
    char close = c == '{' ? '}' : ']';
    buf_putc(out, c);
    s->p++;
    scan_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        buf_putc(out, close);
        return true;
    }
    for (;;) {
        if (c == '{') {
            scan_ws(s);
            if (s->p >= s->end || *s->p != '"')
                return scan_fail(s, "string or '}' expected");
            if (!scan_string(s, NULL, out))
                return false;
            scan_ws(s);
            if (s->p >= s->end || *s->p != ':')
                return scan_fail(s, "':' expected");
            s->p++;
            buf_putc(out, ':');
        }
        if (!scan_value(s, out, depth + 1))
            return false;
        scan_ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            buf_putc(out, ',');
            continue;
        }
        if (s->p < s->end && *s->p == close) {
            s->p++;
            buf_putc(out, close);
            return true;
        }
        return scan_fail(s, c == '{' ? "',' or '}' expected" : "',' or ']' expected");
    }
}

/* What a structured event's `data` member held, for structured_finish. */
struct ce_data_in {
    bool present;    /* a data member that is not null */
    bool is_string;  /* then str is its value */
    struct buf str;  /* decoded */
    struct buf json; /* compact JSON text of the value */
    bool b64_present;
    bool b64_is_string;
    struct buf b64; /* decoded data_base64 */
};

static void ce_data_free(struct ce_data_in *d)
{
    buf_free(&d->str);
    buf_free(&d->json);
    buf_free(&d->b64);
}

/* The checks and the data of a structured event, once its members are read. */
static int structured_finish(struct cloudevent *out, struct ce_data_in *d, char *errmsg,
                             size_t errlen)
{
    if (d->present && d->b64_present)
        return fail(errmsg, errlen, "both 'data' and 'data_base64' are set: send only one");
    if (d->b64_present) {
        if (!d->b64_is_string)
            return fail(errmsg, errlen, "attribute 'data_base64' must be a base64 string");
        size_t n = d->b64.len, bin_len = 0;
        unsigned char *bin = xmalloc(n + 1);
        if (sodium_base642bin(bin, n + 1, d->b64.data ? d->b64.data : "", n, " \r\n", &bin_len,
                              NULL, sodium_base64_VARIANT_ORIGINAL) != 0) {
            free(bin);
            return fail(errmsg, errlen, "attribute 'data_base64' is not valid base64");
        }
        set_data(out, bin, bin_len);
        free(bin);
    } else if (d->present) {
        if (d->is_string && !content_type_json(out->datacontenttype)) {
            set_data(out, d->str.data, d->str.len);
        } else {
            set_data(out, d->json.data, d->json.len);
            if (!out->datacontenttype)
                out->datacontenttype = "application/json";
        }
    }
    if (!out->specversion)
        return fail(errmsg, errlen,
                    "missing required attribute 'specversion': add \"specversion\": \"1.0\"");
    static const char *const required[] = {"id", "source", "type"};
    for (size_t i = 0; i < ARRAY_SIZE(required); i++)
        if (!cloudevent_attr(out, required[i]))
            return fail(errmsg, errlen, "missing required attribute '%s': add a \"%s\" member",
                        required[i], required[i]);
    if (!out->time)
        set_time_now(out);
    return cloudevent_validate(out, errmsg, errlen);
}

/* One structured event at s->p (after white space). On a JSON error, -EBADMSG with s->error
 * set; on an event error, -EINVAL with errmsg. */
static int scan_event(struct ce_scan *s, struct cloudevent *out, char *errmsg, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    struct ce_data_in d = {0};
    struct buf key = {0}, text = {0};
    int rc = 0;
    scan_ws(s);
    if (s->p >= s->end || *s->p != '{') {
        /* valid JSON of another kind is an event error, broken JSON a JSON error */
        struct buf skip = {0};
        bool ok = scan_value(s, &skip, 0);
        buf_free(&skip);
        rc = ok ? fail(errmsg, errlen, "a structured CloudEvent must be a JSON object") : -EBADMSG;
        goto done;
    }
    s->p++;
    scan_ws(s);
    bool first = true;
    while (s->p < s->end && *s->p != '}') {
        if (!first) {
            if (*s->p != ',') {
                scan_fail(s, "',' or '}' expected");
                rc = -EBADMSG;
                goto done;
            }
            s->p++;
            scan_ws(s);
        }
        first = false;
        if (s->p >= s->end || *s->p != '"' || !scan_string(s, &key, NULL)) {
            scan_fail(s, "string expected");
            rc = -EBADMSG;
            goto done;
        }
        scan_ws(s);
        if (s->p >= s->end || *s->p != ':') {
            scan_fail(s, "':' expected");
            rc = -EBADMSG;
            goto done;
        }
        s->p++;
        scan_ws(s);
        if (s->p >= s->end) {
            scan_fail(s, "unexpected end of input");
            rc = -EBADMSG;
            goto done;
        }
        char c = *s->p;
        bool is_null = c == 'n';
        if (!strcmp(key.data, "data")) {
            buf_reset(&d.json);
            d.is_string = c == '"';
            if (d.is_string) {
                if (!scan_string(s, &d.str, &d.json)) {
                    rc = -EBADMSG;
                    goto done;
                }
            } else if (!scan_value(s, &d.json, 1)) {
                rc = -EBADMSG;
                goto done;
            }
            d.present = !is_null;
        } else if (!strcmp(key.data, "data_base64")) {
            d.b64_present = true;
            d.b64_is_string = c == '"';
            if (d.b64_is_string ? !scan_string(s, &d.b64, NULL) : !scan_value(s, &text, 1)) {
                rc = -EBADMSG;
                goto done;
            }
            buf_reset(&text);
        } else {
            buf_reset(&text);
            bool integer = false, ok;
            if (c == '"')
                ok = scan_string(s, &text, NULL);
            else if (c == '-' || isdigit((unsigned char)c))
                ok = scan_number(s, &text, &integer);
            else if (c == 't' || c == 'f' || c == 'n')
                ok = scan_literal(s, c == 't' ? "true" : c == 'f' ? "false" : "null", &text);
            else
                ok = scan_value(s, &text, 1);
            if (!ok) {
                rc = -EBADMSG;
                goto done;
            }
            if (is_null)
                goto next; /* an attribute set to null is absent */
            if ((c != '"' && c != 't' && c != 'f' && !integer) ||
                (c != '"' && known_slot(out, key.data))) {
                if (c == '"' || c == 't' || c == 'f' || integer)
                    rc = fail(errmsg, errlen, "attribute '%.40s' must be a string", key.data);
                else
                    rc = fail(errmsg, errlen,
                              "attribute '%.40s' must be a string (or a number or boolean for "
                              "extensions)",
                              key.data);
                goto skip_rest;
            }
            if (!known_slot(out, key.data) && !ext_name_valid(key.data)) {
                rc = fail(errmsg, errlen,
                          "attribute name '%.40s' is not valid: extension names are 1-20 "
                          "lower-case letters or digits",
                          key.data);
                goto skip_rest;
            }
            if (integer) { /* as jansson prints it: "-0" is 0, "+" never comes */
                char num[32];
                snprintf(num, sizeof num, "%lld", strtoll(text.data, NULL, 10));
                buf_reset(&text);
                buf_puts(&text, num);
            }
            if ((rc = attr_set(out, arena_strdup(out, key.data), arena_strdup(out, text.data),
                               errmsg, errlen)) < 0)
                goto skip_rest;
        }
    next:
        scan_ws(s);
    }
    if (s->p >= s->end) {
        scan_fail(s, "'}' expected");
        rc = -EBADMSG;
        goto done;
    }
    s->p++;
    rc = structured_finish(out, &d, errmsg, errlen);
    goto done;
skip_rest:
    /* an event error: the rest of the object must still be JSON, or that is the error */
    {
        struct buf skip = {0};
        scan_ws(s);
        while (s->error == NULL && s->p < s->end && *s->p == ',') {
            s->p++;
            scan_ws(s);
            if (s->p >= s->end || *s->p != '"' || !scan_string(s, NULL, NULL)) {
                scan_fail(s, "string expected");
                break;
            }
            scan_ws(s);
            if (s->p >= s->end || *s->p != ':') {
                scan_fail(s, "':' expected");
                break;
            }
            s->p++;
            if (!scan_value(s, &skip, 1))
                break;
            buf_reset(&skip);
            scan_ws(s);
        }
        if (!s->error && (s->p >= s->end || *s->p != '}'))
            scan_fail(s, "'}' expected");
        else if (!s->error)
            s->p++;
        buf_free(&skip);
        if (s->error)
            rc = -EBADMSG;
    }
done:
    ce_data_free(&d);
    buf_free(&key);
    buf_free(&text);
    if (rc < 0)
        cloudevent_free(out);
    return rc;
}

/* "line L, column C: why" for the scanner's error. */
static int scan_json_error(struct ce_scan *s, char *errmsg, size_t errlen)
{
    int line = 1, col = 1;
    for (const char *q = s->start; q < s->p && q < s->end; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    fail(errmsg, errlen, "the body is not valid JSON (line %d, column %d: %s)", line, col,
         s->error ? s->error : "invalid JSON");
    return -EBADMSG;
}

static bool scan_at_end(struct ce_scan *s)
{
    scan_ws(s);
    return s->p >= s->end || scan_fail(s, "end of file expected");
}

int cloudevent_from_json_text(const void *text, size_t len, struct cloudevent *out, char *errmsg,
                              size_t errlen)
{
    struct ce_scan s = {text, text, (const char *)text + len, NULL};
    int rc = scan_event(&s, out, errmsg, errlen);
    if (rc == -EBADMSG || (!s.error && !scan_at_end(&s))) {
        if (rc == 0)
            cloudevent_free(out);
        memset(out, 0, sizeof(*out));
        return scan_json_error(&s, errmsg, errlen);
    }
    return rc;
}

int cloudevent_batch_from_json_text(const void *text, size_t len, size_t max,
                                    struct cloudevent **events, size_t *count, char *errmsg,
                                    size_t errlen)
{
    struct ce_scan s = {text, text, (const char *)text + len, NULL};
    struct cloudevent *list = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    char why[256];
    scan_ws(&s);
    if (s.p >= s.end || *s.p != '[') {
        struct buf skip = {0};
        bool ok = scan_value(&s, &skip, 0) && scan_at_end(&s);
        buf_free(&skip);
        if (!ok)
            return scan_json_error(&s, errmsg, errlen);
        fail(errmsg, errlen, "a batch is a JSON array of 1 to %zu structured CloudEvents", max);
        return -ERANGE;
    }
    s.p++;
    scan_ws(&s);
    bool closed = s.p < s.end && *s.p == ']';
    while (!closed) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            list = xrealloc(list, cap * sizeof(*list));
        }
        rc = scan_event(&s, &list[n], why, sizeof why);
        if (rc == -EBADMSG)
            break;
        if (rc < 0) {
            fail(errmsg, errlen, "event %zu of the batch: %s", n, why);
            /* the rest must still be JSON for the event error to be the answer */
            struct buf skip = {0};
            while (!s.error) {
                scan_ws(&s);
                if (s.p < s.end && *s.p == ']') {
                    s.p++;
                    break;
                }
                if (s.p >= s.end || *s.p != ',') {
                    scan_fail(&s, "',' or ']' expected");
                    break;
                }
                s.p++;
                if (!scan_value(&s, &skip, 1))
                    break;
                buf_reset(&skip);
            }
            buf_free(&skip);
            if (!s.error)
                scan_at_end(&s);
            rc = s.error ? -EBADMSG : -EINVAL;
            break;
        }
        n++;
        scan_ws(&s);
        if (s.p < s.end && *s.p == ',') {
            s.p++;
            continue;
        }
        if (s.p < s.end && *s.p == ']') {
            closed = true;
            break;
        }
        scan_fail(&s, "',' or ']' expected");
        rc = -EBADMSG;
        break;
    }
    if (rc == 0) {
        s.p++; /* the ']' */
        if (!scan_at_end(&s))
            rc = -EBADMSG;
        else if (n == 0 || n > max) {
            fail(errmsg, errlen, "a batch is a JSON array of 1 to %zu structured CloudEvents", max);
            rc = -ERANGE;
        }
    }
    if (rc < 0) {
        for (size_t i = 0; i < n; i++)
            cloudevent_free(&list[i]);
        free(list);
        return rc == -EBADMSG ? scan_json_error(&s, errmsg, errlen) : rc;
    }
    *events = list;
    *count = n;
    return 0;
}

void cloudevent_batch_free(struct cloudevent *events, size_t count)
{
    for (size_t i = 0; i < count; i++)
        cloudevent_free(&events[i]);
    free(events);
}

/* ---- the stored record -------------------------------------------------------------------- */

static void put_u32le(struct buf *b, uint32_t v)
{
    unsigned char p[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    buf_append(b, p, 4);
}

static void put_attr(struct buf *b, const char *name, const char *value, int *count)
{
    if (!value)
        return;
    size_t n = strlen(name), v = strlen(value);
    buf_putc(b, (char)n);
    buf_append(b, name, n + 1);
    put_u32le(b, (uint32_t)v);
    buf_append(b, value, v + 1);
    (*count)++;
}

void cloudevent_encode_record(const struct cloudevent *ev, struct buf *out)
{
    size_t start = out->len;
    buf_append(out, "CE\x01", 3);
    buf_putc(out, 0); /* the count, filled in below */
    int count = 0;
    for (size_t i = 0; i < ARRAY_SIZE(cloudevent__context); i++)
        put_attr(out, cloudevent__context[i].name, *context_slot(ev, i), &count);
    for (size_t i = 0; i < ev->ext_count; i++)
        put_attr(out, ev->ext[i].name, ev->ext[i].value, &count);
    out->data[start + 3] = (char)count;
    put_u32le(out, (uint32_t)ev->data_len);
    if (ev->data_len)
        buf_append(out, ev->data, ev->data_len);
    buf_putc(out, '\0');
}

static uint32_t get_u32le(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int cloudevent_decode_record(const void *data, size_t len, struct cloudevent *out)
{
    memset(out, 0, sizeof(*out));
    const unsigned char *p = data, *end = p + len;
    if (len < 4 + 4 + 1 || memcmp(p, "CE\x01", 3))
        return -EINVAL;
    int count = p[3];
    p += 4;
    for (int i = 0; i < count; i++) {
        if (end - p < 1)
            goto bad;
        size_t n = *p++;
        if ((size_t)(end - p) < n + 1 + 4 || p[n] != '\0')
            goto bad;
        const char *name = (const char *)p;
        p += n + 1;
        size_t v = get_u32le(p);
        p += 4;
        if ((size_t)(end - p) < v + 1 || p[v] != '\0')
            goto bad;
        const char *value = (const char *)p;
        p += v + 1;
        if (attr_set(out, name, value, NULL, 0) < 0)
            goto bad;
    }
    if (end - p < 5)
        goto bad;
    size_t dlen = get_u32le(p);
    p += 4;
    if ((size_t)(end - p) != dlen + 1 || p[dlen] != '\0')
        goto bad;
    out->data = dlen ? p : NULL;
    out->data_len = dlen;
    if (!out->id || !out->source || !out->type || !out->specversion)
        goto bad;
    return 0;
bad:
    memset(out, 0, sizeof(*out));
    return -EINVAL;
}

/* ---- delivering and showing --------------------------------------------------------------- */

/* What the HTTP binding lets through unencoded: printable ASCII but space, '"' and '%'. */
static bool header_value_keeps(int c)
{
    return c > 0x20 && c < 0x7f && c != '"' && c != '%';
}

static char *percent_encode(const char *s)
{
    return http_percent_encode(s, header_value_keeps);
}

void cloudevent_http_headers(const struct cloudevent *ev,
                             void (*emit)(void *arg, const char *name, const char *value),
                             void *arg)
{
    for (size_t i = 0; i < ARRAY_SIZE(cloudevent__context); i++) {
        const char *value = *context_slot(ev, i);
        /* datacontenttype travels as Content-Type, below */
        if (!value || context_slot(ev, i) == &ev->datacontenttype)
            continue;
        char name[32];
        snprintf(name, sizeof(name), "ce-%s", cloudevent__context[i].name);
        char *v = percent_encode(value);
        emit(arg, name, v);
        free(v);
    }
    for (size_t i = 0; i < ev->ext_count; i++) {
        char name[32];
        snprintf(name, sizeof(name), "ce-%s", ev->ext[i].name);
        char *v = percent_encode(ev->ext[i].value);
        emit(arg, name, v);
        free(v);
    }
    if (ev->datacontenttype)
        emit(arg, "Content-Type", ev->datacontenttype);
}

json_t *cloudevent_to_json(const struct cloudevent *ev)
{
    json_t *o = json_object();
    for (size_t i = 0; i < ARRAY_SIZE(cloudevent__context); i++) {
        const char *v = *context_slot(ev, i);
        if (v)
            json_object_set_new(o, cloudevent__context[i].name, json_string(v));
    }
    for (size_t i = 0; i < ev->ext_count; i++)
        json_object_set_new(o, ev->ext[i].name, json_string(ev->ext[i].value));
    if (!ev->data || !ev->data_len)
        return o;
    if (ev->datacontenttype && content_type_json(ev->datacontenttype)) {
        json_t *d = json_loadb(ev->data, ev->data_len, JSON_DECODE_ANY, NULL);
        if (d) {
            json_object_set_new(o, "data", d);
            return o;
        }
    }
    if (utf8_valid(ev->data, ev->data_len) && !memchr(ev->data, '\0', ev->data_len)) {
        json_object_set_new(o, "data", json_stringn(ev->data, ev->data_len));
        return o;
    }
    size_t b64_len = sodium_base64_ENCODED_LEN(ev->data_len, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = xmalloc(b64_len);
    sodium_bin2base64(b64, b64_len, ev->data, ev->data_len, sodium_base64_VARIANT_ORIGINAL);
    json_object_set_new(o, "data_base64", json_string(b64));
    free(b64);
    return o;
}
