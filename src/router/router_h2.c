/* HTTP/2 server sessions for the router (router_h2.h): nghttp2 does the framing, HPACK, flow
 * control and the protocol's own checks; this file turns streams into HTTP/1.1 requests and
 * HTTP/1.1 responses back into streams, and holds the limits a hostile client meets.
 *
 * Limits and who enforces them:
 *   rapid reset (CVE-2023-44487)  nghttp2_option_set_stream_reset_rate_limit (token bucket)
 *   CONTINUATION flood            nghttp2_option_set_max_continuations, and the header bound
 *   HPACK bomb                    on_header counts the decoded list (max_header_bytes): 431
 *   settings flood                nghttp2_option_set_max_settings (entries per frame),
 *                                 nghttp2_option_set_max_outbound_ack (unsent ACKs), and
 *                                 control_frames_per_second here (SETTINGS, PING, PRIORITY,
 *                                 empty DATA): GOAWAY ENHANCE_YOUR_CALM
 *   concurrent streams            SETTINGS_MAX_CONCURRENT_STREAMS, enforced by nghttp2
 *   request body in memory        manual window updates: a stream's window reopens only as
 *                                 its owner takes the body (router_h2_stream_set_reading)
 *   response body in memory       the owner stops reading its backend past its high water
 *                                 (router_h2_stream_queued), whatever the client's window */
#include <llhttp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/util.h"
#include "router/router_h2.h"

#define H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_PREFACE_LEN 24
#define H2_FRAME_HEAD 9 /* bytes of a frame's head (RFC 9113 4.1) */

struct router_h2_stream {
    struct router_h2_session *sess;
    struct router_h2_stream *prev, *next;
    int32_t id;
    void *owner;
    /* the request */
    struct buf method, path, authority, host, fields, cookie, trailers;
    size_t header_bytes, header_count;
    size_t unconsumed; /* body bytes received while the owner was not reading */
    bool too_large, has_length, chunked, req_ended, reading, is_head;
    /* the response, parsed from the owner's HTTP/1.1 bytes */
    llhttp_t parser;
    struct buf fname, fvalue; /* the field being parsed */
    struct buf resp_fields;   /* "name\0value\0" pairs, names in lowercase */
    struct buf resp_trailers; /* likewise */
    size_t resp_field_count, resp_trailer_count;
    struct buf out; /* body bytes not yet sent, from out_off (>= H2_FRAME_HEAD: room for a head) */
    size_t out_off;
    int status;
    bool in_value, in_trailers, submitted, resp_ended, deferred, failed;
};

struct router_h2_session {
    nghttp2_session *ng;
    struct router_h2_limits limits;
    const struct router_h2_ops *ops;
    void *ctx;
    struct router_h2_stream *streams;
    size_t stream_count;
    struct buf scratch;
    const struct router_h2_sink *sink; /* during router_h2_session_output_to (send_data) */
    size_t sent;                       /* bytes given to the sink in this call */
    size_t frame_max;                  /* a DATA frame with its head, at most */
    uint64_t window_start_ms;
    uint32_t control_frames;
    const char *error;
};

static llhttp_settings_t response_settings;
static bool response_settings_ready;

void router_h2_limits_defaults(struct router_h2_limits *l)
{
    l->max_header_bytes = 32768;
    l->max_headers = 100;
    l->max_concurrent_streams = 100;
    l->stream_window = 65535;
    l->resets_burst = 200;
    l->resets_per_second = 33;
    l->control_frames_per_second = 200;
    l->max_continuations = 8;
}

/* ---- pure functions ----------------------------------------------------------------------- */

int router_h2_preface_match(const char *p, size_t n)
{
    size_t k = n < H2_PREFACE_LEN ? n : H2_PREFACE_LEN;
    if (memcmp(p, H2_PREFACE, k) != 0)
        return -1;
    return n >= H2_PREFACE_LEN ? 1 : 0;
}

bool router_h2_name_is(const char *name, size_t len, const char *lower)
{
    size_t n = strlen(lower);
    return len == n && strncasecmp(name, lower, n) == 0;
}

bool router_h2_connection_specific(const char *name, size_t len)
{
    return router_h2_name_is(name, len, "connection") ||
           router_h2_name_is(name, len, "keep-alive") ||
           router_h2_name_is(name, len, "proxy-connection") ||
           router_h2_name_is(name, len, "transfer-encoding") ||
           router_h2_name_is(name, len, "upgrade") ||
           router_h2_name_is(name, len, "http2-settings");
}

const char *router_h2_field_check(const char *name, size_t name_len, const char *value,
                                  size_t value_len)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (name_len == 0)
        return "a field has an empty name";
    for (size_t i = 0; i < name_len; i++) {
        char c = name[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c && strchr(extra, c));
        if (!ok)
            return "a field name is not a lowercase token (no ':', space, CR, LF or NUL)";
    }
    for (size_t i = 0; i < value_len; i++)
        if (value[i] == '\r' || value[i] == '\n' || value[i] == '\0')
            return "a field value has a CR, LF or NUL";
    if (value_len && (value[0] == ' ' || value[0] == '\t' || value[value_len - 1] == ' ' ||
                      value[value_len - 1] == '\t'))
        return "a field value begins or ends with white space";
    if (router_h2_connection_specific(name, name_len))
        return "connection-specific fields (connection, keep-alive, proxy-connection, "
               "transfer-encoding, upgrade) are not allowed in HTTP/2";
    if (router_h2_name_is(name, name_len, "te") && !router_h2_name_is(value, value_len, "trailers"))
        return "te may only be \"trailers\" in HTTP/2";
    return NULL;
}

/* ---- streams ------------------------------------------------------------------------------ */

static void want_output(struct router_h2_session *s)
{
    if (s->ops->want_output)
        s->ops->want_output(s->ctx);
}

static struct router_h2_stream *stream_new(struct router_h2_session *s, int32_t id)
{
    struct router_h2_stream *st = xcalloc(1, sizeof(*st));
    st->sess = s;
    st->id = id;
    st->reading = true;
    st->next = s->streams;
    if (s->streams)
        s->streams->prev = st;
    s->streams = st;
    s->stream_count++;
    llhttp_init(&st->parser, HTTP_RESPONSE, &response_settings);
    st->parser.data = st;
    return st;
}

static void stream_free(struct router_h2_stream *st)
{
    struct router_h2_session *s = st->sess;
    if (st->prev)
        st->prev->next = st->next;
    else
        s->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    s->stream_count--;
    struct buf *bufs[] = {&st->method, &st->path,        &st->authority,     &st->host,
                          &st->fields, &st->cookie,      &st->trailers,      &st->fname,
                          &st->fvalue, &st->resp_fields, &st->resp_trailers, &st->out};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        buf_free(bufs[i]);
    free(st);
}

static void stream_reset(struct router_h2_stream *st, uint32_t code)
{
    st->failed = true;
    nghttp2_submit_rst_stream(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, code);
    want_output(st->sess);
}

static size_t stream_queued(const struct router_h2_stream *st)
{
    return st->out.len > st->out_off ? st->out.len - st->out_off : 0;
}

/* Queues response body bytes. An empty queue starts H2_FRAME_HEAD bytes in, and what was sent
 * stays in front of what was not: send_data writes each DATA frame's head right before its
 * payload, so the sink gets the frame as one piece. */
static void stream_out_append(struct router_h2_stream *st, const char *p, size_t n)
{
    if (st->out.len <= st->out_off) {
        st->out.len = st->out_off = H2_FRAME_HEAD;
        buf_reserve(&st->out, n);
    }
    buf_append(&st->out, p, n);
}

static void sink_write(struct router_h2_session *s, const void *p, size_t n)
{
    s->sink->write(s->sink->ctx, p, n);
    s->sent += n;
}

/* Says how much of the stream's body the next DATA frame carries, as the client's window
 * and the session's frame_max allow; the bytes themselves go to the sink from where they lie,
 * by send_data. */
static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *dst, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct router_h2_stream *st = src->ptr;
    size_t queued = stream_queued(st);
    if (queued == 0 && !st->resp_ended) {
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    struct router_h2_session *s = ud;
    if (length > s->frame_max - H2_FRAME_HEAD)
        length = s->frame_max - H2_FRAME_HEAD;
    size_t n = queued < length ? queued : length;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (queued == n && st->resp_ended) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->resp_trailer_count) {
            nghttp2_nv *nv = router_h2_fields_nv(&st->resp_trailers, st->resp_trailer_count, 0);
            if (nghttp2_submit_trailer(ng, id, nv, st->resp_trailer_count) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            free(nv);
        }
    }
    return (ssize_t)n;
}

/* A DATA frame read_body sized goes to the sink as one piece: its head is written over the
 * bytes already sent in front of the payload (stream_out_append keeps that room), so the
 * payload is not copied here. An empty frame is its head alone; padding (never asked for)
 * would be given piece by piece. */
static int send_data(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd,
                     size_t length, nghttp2_data_source *src, void *ud)
{
    struct router_h2_session *s = ud;
    struct router_h2_stream *st = src->ptr;
    size_t before = stream_queued(st);
    if (!s->sink || length > before)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    /* a queue with room before its payload whenever it has one (not when length is 0) */
    char *payload = length ? st->out.data + st->out_off : (char *)framehd;
    if (frame->data.padlen == 0 && length == 0) {
        sink_write(s, framehd, H2_FRAME_HEAD);
    } else if (frame->data.padlen == 0) {
        memcpy(payload - H2_FRAME_HEAD, framehd, H2_FRAME_HEAD);
        sink_write(s, payload - H2_FRAME_HEAD, H2_FRAME_HEAD + length);
    } else {
        static const char zeros[256];
        char padlen = (char)(frame->data.padlen - 1);
        sink_write(s, framehd, H2_FRAME_HEAD);
        sink_write(s, &padlen, 1);
        sink_write(s, payload, length);
        sink_write(s, zeros, frame->data.padlen - 1);
    }
    st->out_off += length;
    if (st->out_off == st->out.len) {
        st->out.len = st->out_off = 0;
        if (st->out.cap > 1024 * 1024)
            buf_free(&st->out);
    }
    if (before > ROUTER_H2_LOW_WATER && stream_queued(st) <= ROUTER_H2_LOW_WATER && st->owner &&
        s->ops->stream_drained)
        s->ops->stream_drained(st->owner);
    return 0;
}

static void stream_resume(struct router_h2_stream *st)
{
    if (st->deferred && st->submitted) {
        st->deferred = false;
        nghttp2_session_resume_data(st->sess->ng, st->id);
    }
    want_output(st->sess);
}

/* HEADERS for the response: :status and the fields kept in resp_fields. */
static int stream_submit(struct router_h2_stream *st)
{
    char status[8];
    snprintf(status, sizeof(status), "%d", st->status);
    nghttp2_nv *nv = router_h2_fields_nv(&st->resp_fields, st->resp_field_count, 1);
    nv[0] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, strlen(status),
                         NGHTTP2_NV_FLAG_NONE};
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_body};
    int r = nghttp2_submit_response(st->sess->ng, st->id, nv, st->resp_field_count + 1, &dp);
    free(nv);
    st->submitted = r == 0;
    want_output(st->sess);
    return r;
}

void router_h2_fields_push(struct buf *b, size_t *count, const char *name, size_t nl,
                           const char *value, size_t vl)
{
    for (size_t i = 0; i < nl; i++) {
        char c = name[i];
        buf_putc(b, c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c);
    }
    buf_putc(b, '\0');
    buf_append(b, value, vl);
    buf_putc(b, '\0');
    (*count)++;
}

nghttp2_nv *router_h2_fields_nv(const struct buf *b, size_t count, size_t extra)
{
    nghttp2_nv *nv = xcalloc(count + extra + 1, sizeof(*nv));
    const char *p = b->data;
    for (size_t i = 0; i < count; i++) {
        size_t nl = strlen(p), vl = strlen(p + nl + 1);
        nv[extra + i] =
            (nghttp2_nv){(uint8_t *)p, (uint8_t *)p + nl + 1, nl, vl, NGHTTP2_NV_FLAG_NONE};
        p += nl + vl + 2;
    }
    return nv;
}

/* An answer from the session itself (the request never reached an owner). */
static void stream_local_response(struct router_h2_stream *st, int status, const char *code,
                                  const char *text)
{
    st->status = status;
    st->resp_fields.len = 0;
    st->resp_field_count = 0;
    router_h2_fields_push(&st->resp_fields, &st->resp_field_count, "content-type", 12,
                          "text/plain; charset=utf-8", 25);
    router_h2_fields_push(&st->resp_fields, &st->resp_field_count, "x-skiff-router-error", 20, code,
                          strlen(code));
    st->out.len = st->out_off = 0;
    stream_out_append(st, text, strlen(text));
    stream_out_append(st, "\n", 1);
    st->resp_ended = true;
    stream_submit(st);
}

/* ---- the response parser (HTTP/1.1 bytes from the owner) ---------------------------------- */

static int on_resp_field(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2_stream *st = p->data;
    buf_append(&st->fname, at, len);
    return 0;
}

static int on_resp_value(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2_stream *st = p->data;
    buf_append(&st->fvalue, at, len);
    return 0;
}

static int on_resp_value_complete(llhttp_t *p)
{
    struct router_h2_stream *st = p->data;
    const char *name = st->fname.data ? st->fname.data : "";
    const char *value = st->fvalue.data ? st->fvalue.data : "";
    size_t nl = st->fname.len, vl = st->fvalue.len;
    st->fname.len = st->fvalue.len = 0;
    if (router_h2_connection_specific(name, nl) || router_h2_name_is(name, nl, "te"))
        return 0;
    if (st->in_trailers)
        router_h2_fields_push(&st->resp_trailers, &st->resp_trailer_count, name, nl, value, vl);
    else
        router_h2_fields_push(&st->resp_fields, &st->resp_field_count, name, nl, value, vl);
    return 0;
}

static int on_resp_headers_complete(llhttp_t *p)
{
    struct router_h2_stream *st = p->data;
    if (p->status_code < 200) { /* interim (100 Continue, 103): HEADERS without END_STREAM */
        char status[8];
        snprintf(status, sizeof(status), "%d", p->status_code);
        nghttp2_nv nv = {(uint8_t *)":status", (uint8_t *)status, 7, strlen(status),
                         NGHTTP2_NV_FLAG_NONE};
        if (p->status_code != 101 && !st->submitted)
            nghttp2_submit_headers(st->sess->ng, NGHTTP2_FLAG_NONE, st->id, NULL, &nv, 1, NULL);
        st->resp_fields.len = 0;
        st->resp_field_count = 0;
        return 0;
    }
    st->status = p->status_code;
    st->in_trailers = true;
    if ((p->flags & F_CONTENT_LENGTH) && !st->is_head) /* one allocation for the body */
        buf_reserve(&st->out,
                    H2_FRAME_HEAD +
                        (p->content_length < 256 * 1024 ? (size_t)p->content_length : 256 * 1024));
    if (stream_submit(st) != 0)
        return HPE_USER;
    return st->is_head ? 1 : 0;
}

static int on_resp_body(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2_stream *st = p->data;
    stream_out_append(st, at, len);
    return 0;
}

static int on_resp_message_complete(llhttp_t *p)
{
    struct router_h2_stream *st = p->data;
    if (p->status_code < 200)
        return 0;
    st->resp_ended = true;
    return HPE_PAUSED; /* anything after the response is not for this stream */
}

static void response_settings_init(void)
{
    if (response_settings_ready)
        return;
    llhttp_settings_init(&response_settings);
    response_settings.on_header_field = on_resp_field;
    response_settings.on_header_value = on_resp_value;
    response_settings.on_header_value_complete = on_resp_value_complete;
    response_settings.on_headers_complete = on_resp_headers_complete;
    response_settings.on_body = on_resp_body;
    response_settings.on_message_complete = on_resp_message_complete;
    response_settings_ready = true;
}

int router_h2_stream_response(struct router_h2_stream *st, const char *p, size_t n)
{
    if (st->failed || st->resp_ended)
        return st->failed ? -1 : 0;
    llhttp_errno_t err = llhttp_execute(&st->parser, p, n);
    if (err != HPE_OK && !(err == HPE_PAUSED && st->resp_ended)) {
        stream_reset(st, NGHTTP2_INTERNAL_ERROR);
        return -1;
    }
    stream_resume(st);
    return 0;
}

size_t router_h2_stream_queued(const struct router_h2_stream *st)
{
    return stream_queued(st);
}

void router_h2_stream_set_reading(struct router_h2_stream *st, bool reading)
{
    st->reading = reading;
    if (reading && st->unconsumed) {
        nghttp2_session_consume(st->sess->ng, st->id, st->unconsumed);
        st->unconsumed = 0;
        want_output(st->sess);
    }
}

void router_h2_stream_detach(struct router_h2_stream *st)
{
    st->owner = NULL;
    if (st->unconsumed) { /* what the owner left unread is dropped: reopen the window */
        nghttp2_session_consume(st->sess->ng, st->id, st->unconsumed);
        st->unconsumed = 0;
    }
    if (st->submitted && !st->resp_ended && llhttp_message_needs_eof(&st->parser) &&
        llhttp_finish(&st->parser) == HPE_OK)
        st->resp_ended = true; /* a body delimited by the end of the connection */
    if (!st->resp_ended && !st->failed)
        stream_reset(st, NGHTTP2_CANCEL);
    else
        stream_resume(st);
}

/* ---- requests ----------------------------------------------------------------------------- */

static void deliver(struct router_h2_stream *st, const char *p, size_t n, bool end)
{
    if (st->owner)
        st->sess->ops->stream_request(st->owner, p, n, end);
}

/* The request's head is complete: check it, and hand it to an owner as HTTP/1.1. */
static void stream_begin(struct router_h2_stream *st, bool end_stream)
{
    struct router_h2_session *s = st->sess;
    st->req_ended = end_stream;
    if (st->too_large) {
        stream_local_response(st, 431, "headers-too-large",
                              "The request headers are too large; keep them under the limit.");
        return;
    }
    if (router_h2_name_is(st->method.data ? st->method.data : "", st->method.len, "connect")) {
        stream_local_response(st, 400, "bad-request", "CONNECT is not supported by this router.");
        return;
    }
    const struct buf *authority = st->authority.len ? &st->authority : &st->host;
    if (st->authority.len && st->host.len &&
        (st->authority.len != st->host.len ||
         strncasecmp(st->authority.data, st->host.data, st->host.len) != 0)) {
        stream_local_response(st, 400, "bad-request",
                              "The request's :authority and host fields differ.");
        return;
    }
    if (authority->len == 0) {
        stream_local_response(st, 400, "bad-request",
                              "The request has no :authority (or host); say which app it is for.");
        return;
    }
    st->is_head = st->method.len == 4 && memcmp(st->method.data, "HEAD", 4) == 0;
    st->chunked = !end_stream && !st->has_length;
    struct buf *h = &s->scratch;
    h->len = 0;
    buf_append(h, st->method.data, st->method.len);
    buf_putc(h, ' ');
    buf_append(h, st->path.data, st->path.len);
    buf_puts(h, " HTTP/1.1\r\nHost: ");
    buf_append(h, authority->data, authority->len);
    buf_puts(h, "\r\n");
    buf_append(h, st->fields.data, st->fields.len);
    if (st->cookie.len) {
        buf_puts(h, "cookie: ");
        buf_append(h, st->cookie.data, st->cookie.len);
        buf_puts(h, "\r\n");
    }
    if (st->chunked)
        buf_puts(h, "transfer-encoding: chunked\r\n");
    buf_puts(h, "\r\n");
    st->owner = s->ops->stream_open(s->ctx, st);
    if (!st->owner) {
        stream_reset(st, NGHTTP2_REFUSED_STREAM);
        return;
    }
    buf_free(&st->fields);
    buf_free(&st->cookie);
    deliver(st, h->data, h->len, end_stream);
}

static void stream_end_request(struct router_h2_stream *st)
{
    st->req_ended = true;
    if (!st->chunked) {
        deliver(st, NULL, 0, true);
        return;
    }
    struct buf *b = &st->sess->scratch;
    b->len = 0;
    buf_puts(b, "0\r\n");
    buf_append(b, st->trailers.data, st->trailers.len);
    buf_puts(b, "\r\n");
    deliver(st, b->data, b->len, true);
}

/* ---- nghttp2 callbacks -------------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Frames that cost the router work and give it nothing are counted per second. */
static int on_begin_frame(nghttp2_session *ng, const nghttp2_frame_hd *hd, void *ud)
{
    struct router_h2_session *s = ud;
    bool counted =
        (hd->type == NGHTTP2_SETTINGS && !(hd->flags & NGHTTP2_FLAG_ACK)) ||
        (hd->type == NGHTTP2_PING && !(hd->flags & NGHTTP2_FLAG_ACK)) ||
        hd->type == NGHTTP2_PRIORITY ||
        (hd->type == NGHTTP2_DATA && hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM));
    if (!counted)
        return 0;
    uint64_t now = now_ms();
    if (now - s->window_start_ms >= 1000) {
        s->window_start_ms = now;
        s->control_frames = 0;
    }
    if (++s->control_frames > s->limits.control_frames_per_second) {
        s->error = "too many control frames (SETTINGS, PING, PRIORITY, empty DATA) per second";
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct router_h2_session *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct router_h2_stream *st = stream_new(s, frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(ng, frame->hd.stream_id, st);
    return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name_u,
                     size_t nl, const uint8_t *value_u, size_t vl, uint8_t flags, void *ud)
{
    struct router_h2_session *s = ud;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    struct router_h2_stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!st || st->too_large)
        return 0;
    const char *name = (const char *)name_u, *value = (const char *)value_u;
    st->header_bytes += nl + vl + 32;
    if (st->header_bytes > s->limits.max_header_bytes ||
        ++st->header_count > s->limits.max_headers) {
        st->too_large = true; /* answered 431 at the end of the block; the rest is not kept */
        return 0;
    }
    bool trailer = frame->headers.cat != NGHTTP2_HCAT_REQUEST;
    if (nl && name[0] == ':') { /* nghttp2 has checked pseudo-fields and their values */
        if (trailer)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (router_h2_name_is(name, nl, ":method"))
            buf_append(&st->method, value, vl);
        else if (router_h2_name_is(name, nl, ":path"))
            buf_append(&st->path, value, vl);
        else if (router_h2_name_is(name, nl, ":authority"))
            buf_append(&st->authority, value, vl);
        return 0;
    }
    if (router_h2_field_check(name, nl, value, vl))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* RST_STREAM PROTOCOL_ERROR */
    if (trailer) {
        if (router_h2_name_is(name, nl, "content-length") || router_h2_name_is(name, nl, "host"))
            return 0;
        buf_append(&st->trailers, name, nl);
        buf_puts(&st->trailers, ": ");
        buf_append(&st->trailers, value, vl);
        buf_puts(&st->trailers, "\r\n");
        return 0;
    }
    if (router_h2_name_is(name, nl, "host")) {
        if (st->host.len) /* nghttp2 lets a second one through */
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        buf_append(&st->host, value, vl);
        return 0;
    }
    if (router_h2_name_is(name, nl, "cookie")) { /* split in HTTP/2, one field in HTTP/1.1 */
        if (st->cookie.len)
            buf_puts(&st->cookie, "; ");
        buf_append(&st->cookie, value, vl);
        return 0;
    }
    if (router_h2_name_is(name, nl, "content-length"))
        st->has_length = true;
    buf_append(&st->fields, name, nl);
    buf_puts(&st->fields, ": ");
    buf_append(&st->fields, value, vl);
    buf_puts(&st->fields, "\r\n");
    return 0;
}

/* nghttp2 found a field it will not pass on (upper case, a bad character, ...): the request is
 * malformed, and the stream is reset rather than served without it. */
static int on_invalid_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                             size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)
        return 0;
    struct router_h2_stream *st = nghttp2_session_get_stream_user_data(ng, frame->hd.stream_id);
    if (!st)
        return 0;
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        stream_begin(st, end);
        return 0;
    }
    if (end && !st->req_ended)
        stream_end_request(st);
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    struct router_h2_session *s = ud;
    struct router_h2_stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!st || !st->owner) {
        nghttp2_session_consume(ng, id, len);
        return 0;
    }
    if (st->reading)
        nghttp2_session_consume(ng, id, len);
    else
        st->unconsumed += len;
    if (!st->chunked) {
        deliver(st, (const char *)data, len, false);
        return 0;
    }
    struct buf *b = &s->scratch;
    b->len = 0;
    buf_printf(b, "%zx\r\n", len);
    buf_append(b, data, len);
    buf_puts(b, "\r\n");
    deliver(st, b->data, b->len, false);
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    struct router_h2_session *s = ud;
    struct router_h2_stream *st = nghttp2_session_get_stream_user_data(ng, id);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(ng, id, NULL);
    void *owner = st->owner;
    st->owner = NULL;
    if (owner)
        s->ops->stream_closed(owner);
    stream_free(st);
    return 0;
}

/* ---- the session -------------------------------------------------------------------------- */

bool router_h2_write_now(size_t n)
{
    return n >= 16384;
}

struct router_h2_session *router_h2_session_new(const struct router_h2_limits *limits,
                                                const struct router_h2_ops *ops, void *ctx)
{
    response_settings_init();
    struct router_h2_session *s = xcalloc(1, sizeof(*s));
    s->limits = *limits;
    s->ops = ops;
    s->ctx = ctx;
    s->error = "";
    s->window_start_ms = now_ms();
    s->frame_max = H2_FRAME_HEAD + 16384; /* the initial SETTINGS_MAX_FRAME_SIZE */
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_frame_callback(cb, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_invalid_header_callback(cb, on_invalid_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_continuations(opt, limits->max_continuations);
    nghttp2_option_set_stream_reset_rate_limit(opt, limits->resets_burst,
                                               limits->resets_per_second);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_session_server_new2(&s->ng, cb, s, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits->max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits->stream_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)limits->max_header_bytes},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        /* RFC 9218 scheduling: a stream without a `priority` field (urgency 3, not incremental)
         * is sent whole before the next one of its urgency, in the order they became ready,
         * instead of RFC 7540's weighted round robin of 16 KB frames, under which eight 64 KB
         * responses on a connection all ended when the last did. A stream waits only on what
         * it has queued (at most the high water), so a long one does not hold the others. */
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    /* the connection's window holds every stream's: one stalled stream starves no other */
    uint64_t conn = (uint64_t)limits->max_concurrent_streams * limits->stream_window;
    if (conn > INT32_MAX)
        conn = INT32_MAX;
    nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)conn);
    return s;
}

void router_h2_session_free(struct router_h2_session *s)
{
    if (!s)
        return;
    while (s->streams) {
        struct router_h2_stream *st = s->streams;
        void *owner = st->owner;
        st->owner = NULL;
        if (owner)
            s->ops->stream_closed(owner);
        nghttp2_session_set_stream_user_data(s->ng, st->id, NULL);
        stream_free(st);
    }
    nghttp2_session_del(s->ng);
    buf_free(&s->scratch);
    free(s);
}

int router_h2_session_input(struct router_h2_session *s, const char *p, size_t n)
{
    ssize_t r = nghttp2_session_mem_recv(s->ng, (const uint8_t *)p, n);
    if (r >= 0)
        return nghttp2_session_want_read(s->ng) || nghttp2_session_want_write(s->ng) ? 0 : -1;
    bool calm = r == NGHTTP2_ERR_CALLBACK_FAILURE && s->error[0];
    if (!s->error[0])
        s->error = nghttp2_strerror((int)r);
    nghttp2_session_terminate_session(s->ng,
                                      calm ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR);
    want_output(s);
    return -1;
}

size_t router_h2_session_output_to(struct router_h2_session *s, const struct router_h2_sink *sink,
                                   size_t max)
{
    s->sink = sink;
    s->sent = 0;
    while (s->sent < max) {
        const uint8_t *data;
        size_t before = s->sent;
        ssize_t n = nghttp2_session_mem_send(s->ng, &data);
        if (n < 0 && !s->error[0])
            s->error = nghttp2_strerror((int)n);
        if (n > 0)
            sink_write(s, data, (size_t)n);
        else if (n < 0 || s->sent == before)
            break; /* 0 after send_data wrote a frame: more may follow */
    }
    s->sink = NULL;
    return s->sent;
}

static void buf_sink_write(void *ctx, const char *p, size_t n)
{
    buf_append(ctx, p, n);
}

size_t router_h2_session_output(struct router_h2_session *s, struct buf *out, size_t max)
{
    struct router_h2_sink sink = {buf_sink_write, out};
    return router_h2_session_output_to(s, &sink, max);
}

void router_h2_session_set_frame_max(struct router_h2_session *s, size_t frame_max)
{
    s->frame_max = frame_max > H2_FRAME_HEAD ? frame_max : H2_FRAME_HEAD + 1;
}

bool router_h2_session_done(const struct router_h2_session *s)
{
    return !nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng);
}

size_t router_h2_session_streams(const struct router_h2_session *s)
{
    return s->stream_count;
}

void router_h2_session_goaway(struct router_h2_session *s)
{
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    want_output(s);
}

const char *router_h2_session_error(const struct router_h2_session *s)
{
    return s->error;
}
