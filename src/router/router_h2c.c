/* h2c to instances of routes marked `protocol: http2` (router_h2.h): one session per
 * connection, many streams on it. Each stream turns the HTTP/1.1 request the proxy writes
 * into HEADERS, DATA and trailers, and the instance's answer into HTTP/1.1 response bytes for
 * the proxy's response parser. Callbacks look a stream up in the session's own list by its
 * id, never through a pointer nghttp2 keeps, so a stream its owner closed is never touched. */
#include <llhttp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"
#include "http/message.h"
#include "router/router_h2.h"

struct router_h2c {
    nghttp2_session *ng;
    struct router_h2c_stream *streams; /* open ones, newest first */
    size_t stream_count;
    bool ready;          /* the instance's SETTINGS came */
    bool failed;         /* broken or gone: nothing more on it */
    bool goaway;         /* the instance said GOAWAY: no new streams */
    int32_t goaway_last; /* its last stream id: the ones above were not processed */
};

struct router_h2c_stream {
    struct router_h2c *c; /* NULL once the session is freed */
    struct router_h2c_stream *prev, *next;
    llhttp_t parser; /* the proxy's request */
    struct buf url, fname, fvalue, authority;
    struct buf fields;   /* "name\0value\0" pairs, lowercase names */
    struct buf trailers; /* likewise */
    size_t field_count, trailer_count;
    struct buf body; /* request body not yet sent, from body_off */
    size_t body_off;
    struct buf kept; /* every request byte given, while kept_all (ROUTER_H2C_REPLAY_MAX) */
    bool kept_all;
    int32_t stream_id;
    bool in_trailers, req_ended, deferred, is_head;
    bool sent;        /* its HEADERS went out */
    bool wire_closed; /* nghttp2 closed it */
    bool reading;     /* response bytes are acknowledged as they come */
    uint8_t state;    /* enum router_h2c_state */
    size_t held;      /* response bytes received and not acknowledged */
    /* the response */
    struct buf resp;                       /* HTTP/1.1 bytes not yet taken */
    struct buf resp_fields, resp_trailers; /* "name: value\r\n" lines */
    int status;
    bool final_head; /* the final response head was given: HEADERS now are trailers */
    bool resp_chunked, resp_started;
};

/* The response head (or trailers) an instance may send, decoded: the proxy's own bound for
 * HTTP/1.1 response heads. */
#define ROUTER_H2C_MAX_HEADER_BYTES (64 * 1024)
/* The connection's window: reopened as bytes come, so one stream that is not read never
 * holds the others back (each has its own, ROUTER_H2C_STREAM_WINDOW). */
#define ROUTER_H2C_CONNECTION_WINDOW (16 * 1024 * 1024)

static llhttp_settings_t request_settings;
static bool request_settings_ready;

static struct router_h2c_stream *stream_find(struct router_h2c *c, int32_t id)
{
    if (id <= 0)
        return NULL;
    for (struct router_h2c_stream *s = c->streams; s; s = s->next)
        if (s->stream_id == id)
            return s;
    return NULL;
}

static void stream_fail(struct router_h2c_stream *s)
{
    if (s->state == ROUTER_H2C_OPEN)
        s->state = s->sent ? ROUTER_H2C_FAILED : ROUTER_H2C_REFUSED;
}

/* ---- the request (HTTP/1.1 from the proxy) ------------------------------------------------ */

static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *dst, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)src;
    struct router_h2c_stream *s = stream_find(ud, id);
    if (!s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* its owner closed it: reset */
    size_t avail = s->body.len - s->body_off;
    if (avail == 0 && !s->req_ended) {
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = avail < length ? avail : length;
    if (n)
        memcpy(dst, s->body.data + s->body_off, n);
    s->body_off += n;
    if (s->body_off == s->body.len)
        s->body.len = s->body_off = 0;
    if (s->body.len == 0 && s->req_ended) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->trailer_count) {
            nghttp2_nv *nv = router_h2_fields_nv(&s->trailers, s->trailer_count, 0);
            if (nghttp2_submit_trailer(ng, id, nv, s->trailer_count) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            free(nv);
        }
    }
    return (ssize_t)n;
}

static int on_req_url(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2c_stream *s = p->data;
    buf_append(&s->url, at, len);
    return 0;
}

static int on_req_field(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2c_stream *s = p->data;
    buf_append(&s->fname, at, len);
    return 0;
}

static int on_req_value(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2c_stream *s = p->data;
    buf_append(&s->fvalue, at, len);
    return 0;
}

static int on_req_value_complete(llhttp_t *p)
{
    struct router_h2c_stream *s = p->data;
    const char *name = s->fname.data ? s->fname.data : "";
    const char *value = s->fvalue.data ? s->fvalue.data : "";
    size_t nl = s->fname.len, vl = s->fvalue.len;
    s->fname.len = s->fvalue.len = 0;
    if (router_h2_connection_specific(name, nl))
        return 0;
    if (s->in_trailers) {
        router_h2_fields_push(&s->trailers, &s->trailer_count, name, nl, value, vl);
        return 0;
    }
    if (router_h2_name_is(name, nl, "host")) {
        s->authority.len = 0;
        buf_append(&s->authority, value, vl);
        return 0;
    }
    if (router_h2_name_is(name, nl, "te") && !router_h2_name_is(value, vl, "trailers"))
        return 0;
    router_h2_fields_push(&s->fields, &s->field_count, name, nl, value, vl);
    return 0;
}

static int on_req_headers_complete(llhttp_t *p)
{
    struct router_h2c_stream *s = p->data;
    const char *method = llhttp_method_name((llhttp_method_t)p->method);
    s->is_head = p->method == HTTP_HEAD;
    s->in_trailers = true;
    bool body = (p->flags & F_CHUNKED) || p->content_length > 0;
    buf_putc(&s->url, '\0');
    buf_putc(&s->authority, '\0');
    nghttp2_nv *nv = router_h2_fields_nv(&s->fields, s->field_count, 4);
    nv[0] = (nghttp2_nv){(uint8_t *)":method", (uint8_t *)method, 7, strlen(method),
                         NGHTTP2_NV_FLAG_NONE};
    nv[1] = (nghttp2_nv){(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, NGHTTP2_NV_FLAG_NONE};
    nv[2] = (nghttp2_nv){(uint8_t *)":authority", (uint8_t *)s->authority.data, 10,
                         s->authority.len - 1, NGHTTP2_NV_FLAG_NONE};
    nv[3] = (nghttp2_nv){(uint8_t *)":path", (uint8_t *)s->url.data, 5, s->url.len - 1,
                         NGHTTP2_NV_FLAG_NONE};
    nghttp2_data_provider dp = {.read_callback = read_body};
    s->stream_id =
        nghttp2_submit_request(s->c->ng, NULL, nv, s->field_count + 4, body ? &dp : NULL, NULL);
    free(nv);
    if (s->stream_id < 0) {
        s->state = ROUTER_H2C_REFUSED; /* nothing went out: stream ids ran out, or a GOAWAY */
        return HPE_USER;
    }
    if (!body)
        s->req_ended = true;
    return 0;
}

static int on_req_body(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2c_stream *s = p->data;
    buf_append(&s->body, at, len);
    return 0;
}

static int on_req_message_complete(llhttp_t *p)
{
    struct router_h2c_stream *s = p->data;
    s->req_ended = true;
    return HPE_PAUSED; /* one request per stream */
}

static void request_settings_init(void)
{
    if (request_settings_ready)
        return;
    llhttp_settings_init(&request_settings);
    request_settings.on_url = on_req_url;
    request_settings.on_header_field = on_req_field;
    request_settings.on_header_value = on_req_value;
    request_settings.on_header_value_complete = on_req_value_complete;
    request_settings.on_headers_complete = on_req_headers_complete;
    request_settings.on_body = on_req_body;
    request_settings.on_message_complete = on_req_message_complete;
    request_settings_ready = true;
}

/* ---- the response (HTTP/2 from the instance) ---------------------------------------------- */

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name_u,
                     size_t nl, const uint8_t *value_u, size_t vl, uint8_t flags, void *ud)
{
    (void)ng;
    (void)flags;
    struct router_h2c_stream *s = stream_find(ud, frame->hd.stream_id);
    if (frame->hd.type != NGHTTP2_HEADERS || !s || s->state != ROUTER_H2C_OPEN)
        return 0;
    const char *name = (const char *)name_u, *value = (const char *)value_u;
    if (nl && name[0] == ':') {
        if (router_h2_name_is(name, nl, ":status"))
            s->status = atoi(value);
        return 0;
    }
    if (router_h2_connection_specific(name, nl))
        return 0;
    bool trailer = s->final_head;
    if (!trailer && router_h2_name_is(name, nl, "content-length"))
        return 0; /* the router frames the body itself */
    struct buf *b = trailer ? &s->resp_trailers : &s->resp_fields;
    if (b->len + nl + vl + 4 > ROUTER_H2C_MAX_HEADER_BYTES) {
        /* an instance's HPACK bomb: this stream is reset and fails, the others go on */
        s->state = ROUTER_H2C_FAILED;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    buf_append(b, name, nl);
    buf_puts(b, ": ");
    buf_append(b, value, vl);
    buf_puts(b, "\r\n");
    return 0;
}

static void response_end(struct router_h2c_stream *s)
{
    if (s->state != ROUTER_H2C_OPEN)
        return;
    s->state = ROUTER_H2C_DONE;
    if (!s->resp_chunked)
        return;
    buf_puts(&s->resp, "0\r\n");
    buf_append(&s->resp, s->resp_trailers.data, s->resp_trailers.len);
    buf_puts(&s->resp, "\r\n");
}

/* Bytes of the request are no longer kept: too many, or the instance has processed it. */
static void stream_drop_kept(struct router_h2c_stream *s)
{
    s->kept_all = false;
    buf_free(&s->kept);
}

static void response_head(struct router_h2c_stream *s, bool end)
{
    stream_drop_kept(s); /* answered: never to be sent again */
    buf_printf(&s->resp, "HTTP/1.1 %d %s\r\n", s->status, http_status_reason(s->status));
    buf_append(&s->resp, s->resp_fields.data, s->resp_fields.len);
    s->resp_fields.len = 0;
    bool no_body = s->status < 200 || s->status == 204 || s->status == 304 || s->is_head;
    if (!no_body && end)
        buf_puts(&s->resp, "Content-Length: 0\r\n");
    else if (!no_body)
        buf_puts(&s->resp, "Transfer-Encoding: chunked\r\n");
    s->resp_chunked = !no_body && !end;
    buf_puts(&s->resp, "\r\n");
    s->resp_started = true;
    s->final_head = s->status >= 200;
    if (s->final_head && (end || no_body))
        s->state = ROUTER_H2C_DONE;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    (void)ng;
    struct router_h2c *c = ud;
    if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK))
        c->ready = true;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        c->goaway = true;
        c->goaway_last = frame->goaway.last_stream_id;
        for (struct router_h2c_stream *s = c->streams; s; s = s->next)
            if (s->state == ROUTER_H2C_OPEN && (s->stream_id < 0 || s->stream_id > c->goaway_last))
                s->state = ROUTER_H2C_REFUSED;
    }
    struct router_h2c_stream *s = stream_find(c, frame->hd.stream_id);
    if (!s || s->state != ROUTER_H2C_OPEN)
        return 0;
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_HEADERS && !s->final_head)
        response_head(s, end); /* a response head (1xx or final) */
    else if (end && s->final_head)
        response_end(s);
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)flags;
    nghttp2_session_consume_connection(ng, len);
    struct router_h2c_stream *s = stream_find(ud, id);
    if (!s)
        return 0;
    if (s->reading)
        nghttp2_session_consume_stream(ng, id, len);
    else
        s->held += len;
    if (!s->resp_chunked || s->state != ROUTER_H2C_OPEN || len == 0)
        return 0;
    buf_printf(&s->resp, "%zx\r\n", len);
    buf_append(&s->resp, data, len);
    buf_puts(&s->resp, "\r\n");
    return 0;
}

static int on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    (void)ng;
    struct router_h2c_stream *s = stream_find(ud, frame->hd.stream_id);
    if (s && frame->hd.type == NGHTTP2_HEADERS)
        s->sent = true;
    return 0;
}

static int on_frame_not_send(nghttp2_session *ng, const nghttp2_frame *frame, int err, void *ud)
{
    (void)ng;
    (void)err;
    struct router_h2c_stream *s = stream_find(ud, frame->hd.stream_id);
    if (s && frame->hd.type == NGHTTP2_HEADERS && !s->sent)
        stream_fail(s); /* never went out: refused, another connection may take it */
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    (void)ng;
    struct router_h2c *c = ud;
    struct router_h2c_stream *s = stream_find(c, id);
    if (!s)
        return 0;
    s->wire_closed = true;
    if (s->state != ROUTER_H2C_OPEN)
        return 0;
    /* RFC 9113 8.7: REFUSED_STREAM, or above a GOAWAY's last stream, was not processed */
    bool refused =
        !s->resp_started && (code == NGHTTP2_REFUSED_STREAM || (c->goaway && id > c->goaway_last));
    s->state = refused || !s->sent ? ROUTER_H2C_REFUSED : ROUTER_H2C_FAILED;
    return 0;
}

/* ---- the connection ----------------------------------------------------------------------- */

struct router_h2c *router_h2c_new(void)
{
    request_settings_init();
    struct router_h2c *c = xcalloc(1, sizeof(*c));
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, ROUTER_H2C_MAX_STREAMS);
    nghttp2_session_client_new2(&c->ng, cb, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, ROUTER_H2C_STREAM_WINDOW}};
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, 2);
    nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0,
                                          ROUTER_H2C_CONNECTION_WINDOW);
    return c;
}

void router_h2c_free(struct router_h2c *c)
{
    if (!c)
        return;
    for (struct router_h2c_stream *s = c->streams; s; s = s->next)
        s->c = NULL; /* their owners still close them */
    nghttp2_session_del(c->ng);
    free(c);
}

bool router_h2c_ready(const struct router_h2c *c)
{
    return c->ready;
}

static uint32_t stream_limit(const struct router_h2c *c)
{
    uint32_t max =
        nghttp2_session_get_remote_settings(c->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return max < ROUTER_H2C_MAX_STREAMS ? max : ROUTER_H2C_MAX_STREAMS;
}

bool router_h2c_finished(const struct router_h2c *c)
{
    return c->failed || c->goaway || (c->ready && stream_limit(c) == 0) ||
           !nghttp2_session_check_request_allowed(c->ng);
}

bool router_h2c_can_open(const struct router_h2c *c)
{
    return c->ready && !router_h2c_finished(c) && c->stream_count < stream_limit(c);
}

size_t router_h2c_streams(const struct router_h2c *c)
{
    return c->stream_count;
}

void router_h2c_abort(struct router_h2c *c)
{
    c->failed = true;
    for (struct router_h2c_stream *s = c->streams; s; s = s->next)
        stream_fail(s);
}

int router_h2c_input(struct router_h2c *c, const char *p, size_t n)
{
    if (c->failed)
        return -1;
    ssize_t r = nghttp2_session_mem_recv(c->ng, (const uint8_t *)p, n);
    if (r < 0) {
        router_h2c_abort(c);
        return -1;
    }
    if (!nghttp2_session_want_read(c->ng))
        router_h2c_abort(c); /* over (a GOAWAY either way): what did not end never will */
    return 0;
}

size_t router_h2c_output(struct router_h2c *c, struct buf *out)
{
    size_t total = 0;
    while (!c->failed) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->ng, &data);
        if (n < 0)
            router_h2c_abort(c);
        if (n <= 0)
            break;
        buf_append(out, data, (size_t)n);
        total += (size_t)n;
    }
    return total;
}

/* ---- streams ------------------------------------------------------------------------------ */

struct router_h2c_stream *router_h2c_stream_open(struct router_h2c *c)
{
    if (!router_h2c_can_open(c))
        return NULL;
    struct router_h2c_stream *s = xcalloc(1, sizeof(*s));
    s->c = c;
    s->stream_id = -1;
    s->reading = true;
    s->kept_all = true;
    s->state = ROUTER_H2C_OPEN;
    llhttp_init(&s->parser, HTTP_REQUEST, &request_settings);
    s->parser.data = s;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->stream_count++;
    return s;
}

int router_h2c_stream_request(struct router_h2c_stream *s, const char *p, size_t n)
{
    if (!s->c || s->state == ROUTER_H2C_FAILED)
        return -1;
    if (s->req_ended && s->stream_id > 0 && s->state != ROUTER_H2C_REFUSED)
        return 0; /* nothing belongs to this stream after its request */
    if (s->kept_all && s->kept.len + n <= ROUTER_H2C_REPLAY_MAX)
        buf_append(&s->kept, p, n);
    else if (s->kept_all)
        stream_drop_kept(s);
    if (s->state == ROUTER_H2C_REFUSED) /* kept for the next stream, if it can be */
        return s->kept_all ? 0 : -1;
    llhttp_errno_t err = llhttp_execute(&s->parser, p, n);
    if (err != HPE_OK && !(err == HPE_PAUSED && s->req_ended)) {
        stream_fail(s);
        return -1;
    }
    if (s->deferred && s->stream_id > 0) {
        s->deferred = false;
        nghttp2_session_resume_data(s->c->ng, s->stream_id);
    }
    return 0;
}

enum router_h2c_state router_h2c_stream_state(const struct router_h2c_stream *s)
{
    return (enum router_h2c_state)s->state;
}

void router_h2c_stream_take_response(struct router_h2c_stream *s, struct buf *into)
{
    struct buf t = *into;
    *into = s->resp;
    t.len = 0;
    s->resp = t;
}

bool router_h2c_stream_take_request(struct router_h2c_stream *s, struct buf *into)
{
    into->len = 0;
    if (!s->kept_all || s->state != ROUTER_H2C_REFUSED)
        return false;
    struct buf t = *into;
    *into = s->kept;
    s->kept = t;
    return true;
}

size_t router_h2c_stream_queued(const struct router_h2c_stream *s)
{
    return s->body.len - s->body_off;
}

void router_h2c_stream_set_reading(struct router_h2c_stream *s, bool reading)
{
    s->reading = reading;
    if (!reading || !s->held || !s->c || s->stream_id <= 0 || s->wire_closed)
        return;
    nghttp2_session_consume_stream(s->c->ng, s->stream_id, s->held);
    s->held = 0;
}

void router_h2c_stream_close(struct router_h2c_stream *s)
{
    struct router_h2c *c = s->c;
    if (c) {
        if (s->stream_id > 0 && !s->wire_closed && !c->failed)
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->stream_id, NGHTTP2_CANCEL);
        if (s->prev)
            s->prev->next = s->next;
        else
            c->streams = s->next;
        if (s->next)
            s->next->prev = s->prev;
        c->stream_count--;
    }
    struct buf *bufs[] = {&s->url,         &s->fname,         &s->fvalue, &s->authority,
                          &s->fields,      &s->trailers,      &s->body,   &s->resp,
                          &s->resp_fields, &s->resp_trailers, &s->kept};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        buf_free(bufs[i]);
    free(s);
}
