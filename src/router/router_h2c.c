/* h2c to instances of routes marked `protocol: http2` (router_h2.h): the proxy writes an
 * HTTP/1.1 request, which becomes one HTTP/2 stream; the instance's answer becomes HTTP/1.1
 * response bytes for the proxy's response parser. One stream at a time per connection, so
 * the proxy's pooling and retry rules apply unchanged. */
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
    llhttp_t parser; /* the proxy's request */
    struct buf url, fname, fvalue, authority;
    struct buf fields;   /* "name\0value\0" pairs, lowercase names */
    struct buf trailers; /* likewise */
    size_t field_count, trailer_count;
    struct buf body; /* request body not yet sent, from body_off */
    size_t body_off;
    int32_t stream_id;
    bool in_trailers, req_ended, deferred, is_head, failed;
    /* the response */
    struct buf *resp; /* where input appends the HTTP/1.1 bytes, during router_h2c_input */
    struct buf resp_fields, resp_trailers; /* "name: value\r\n" lines */
    int status;
    bool final_head; /* the final response head was given: HEADERS now are trailers */
    bool resp_chunked, resp_done;
};

/* The response head (or trailers) an instance may send, decoded: the proxy's own bound for
 * HTTP/1.1 response heads. */
#define ROUTER_H2C_MAX_HEADER_BYTES (64 * 1024)

static llhttp_settings_t request_settings;
static bool request_settings_ready;

/* ---- the request (HTTP/1.1 from the proxy) ------------------------------------------------ */

static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *dst, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct router_h2c *c = src->ptr;
    size_t avail = c->body.len - c->body_off;
    if (avail == 0 && !c->req_ended) {
        c->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = avail < length ? avail : length;
    if (n)
        memcpy(dst, c->body.data + c->body_off, n);
    c->body_off += n;
    if (c->body_off == c->body.len)
        c->body.len = c->body_off = 0;
    if (c->body.len == 0 && c->req_ended) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (c->trailer_count) {
            nghttp2_nv *nv = router_h2_fields_nv(&c->trailers, c->trailer_count, 0);
            if (nghttp2_submit_trailer(ng, id, nv, c->trailer_count) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            free(nv);
        }
    }
    return (ssize_t)n;
}

static int on_req_url(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2c *c = p->data;
    buf_append(&c->url, at, len);
    return 0;
}

static int on_req_field(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2c *c = p->data;
    buf_append(&c->fname, at, len);
    return 0;
}

static int on_req_value(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2c *c = p->data;
    buf_append(&c->fvalue, at, len);
    return 0;
}

static int on_req_value_complete(llhttp_t *p)
{
    struct router_h2c *c = p->data;
    const char *name = c->fname.data ? c->fname.data : "";
    const char *value = c->fvalue.data ? c->fvalue.data : "";
    size_t nl = c->fname.len, vl = c->fvalue.len;
    c->fname.len = c->fvalue.len = 0;
    if (router_h2_connection_specific(name, nl))
        return 0;
    if (c->in_trailers) {
        router_h2_fields_push(&c->trailers, &c->trailer_count, name, nl, value, vl);
        return 0;
    }
    if (router_h2_name_is(name, nl, "host")) {
        c->authority.len = 0;
        buf_append(&c->authority, value, vl);
        return 0;
    }
    if (router_h2_name_is(name, nl, "te") && !router_h2_name_is(value, vl, "trailers"))
        return 0;
    router_h2_fields_push(&c->fields, &c->field_count, name, nl, value, vl);
    return 0;
}

static int on_req_headers_complete(llhttp_t *p)
{
    struct router_h2c *c = p->data;
    const char *method = llhttp_method_name((llhttp_method_t)p->method);
    c->is_head = p->method == HTTP_HEAD;
    c->in_trailers = true;
    bool body = (p->flags & F_CHUNKED) || p->content_length > 0;
    buf_putc(&c->url, '\0');
    buf_putc(&c->authority, '\0');
    nghttp2_nv *nv = router_h2_fields_nv(&c->fields, c->field_count, 4);
    nv[0] = (nghttp2_nv){(uint8_t *)":method", (uint8_t *)method, 7, strlen(method),
                         NGHTTP2_NV_FLAG_NONE};
    nv[1] = (nghttp2_nv){(uint8_t *)":scheme", (uint8_t *)"http", 7, 4, NGHTTP2_NV_FLAG_NONE};
    nv[2] = (nghttp2_nv){(uint8_t *)":authority", (uint8_t *)c->authority.data, 10,
                         c->authority.len - 1, NGHTTP2_NV_FLAG_NONE};
    nv[3] = (nghttp2_nv){(uint8_t *)":path", (uint8_t *)c->url.data, 5, c->url.len - 1,
                         NGHTTP2_NV_FLAG_NONE};
    nghttp2_data_provider dp = {.source.ptr = c, .read_callback = read_body};
    c->stream_id =
        nghttp2_submit_request(c->ng, NULL, nv, c->field_count + 4, body ? &dp : NULL, c);
    free(nv);
    if (c->stream_id < 0) {
        c->failed = true;
        return HPE_USER;
    }
    if (!body)
        c->req_ended = true;
    return 0;
}

static int on_req_body(llhttp_t *p, const char *at, size_t len)
{
    struct router_h2c *c = p->data;
    buf_append(&c->body, at, len);
    return 0;
}

static int on_req_message_complete(llhttp_t *p)
{
    struct router_h2c *c = p->data;
    c->req_ended = true;
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
    struct router_h2c *c = ud;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->hd.stream_id != c->stream_id)
        return 0;
    const char *name = (const char *)name_u, *value = (const char *)value_u;
    if (nl && name[0] == ':') {
        if (router_h2_name_is(name, nl, ":status"))
            c->status = atoi(value);
        return 0;
    }
    if (router_h2_connection_specific(name, nl))
        return 0;
    bool trailer = c->final_head;
    if (!trailer && router_h2_name_is(name, nl, "content-length"))
        return 0; /* the router frames the body itself */
    struct buf *b = trailer ? &c->resp_trailers : &c->resp_fields;
    if (b->len + nl + vl + 4 > ROUTER_H2C_MAX_HEADER_BYTES) {
        c->failed = true; /* an instance's HPACK bomb: a 502, and no more of this connection */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    buf_append(b, name, nl);
    buf_puts(b, ": ");
    buf_append(b, value, vl);
    buf_puts(b, "\r\n");
    return 0;
}

static void response_end(struct router_h2c *c)
{
    if (c->resp_done)
        return;
    c->resp_done = true;
    if (!c->resp_chunked)
        return;
    buf_puts(c->resp, "0\r\n");
    buf_append(c->resp, c->resp_trailers.data, c->resp_trailers.len);
    buf_puts(c->resp, "\r\n");
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct router_h2c *c = ud;
    if (frame->hd.stream_id != c->stream_id || !c->resp)
        return 0;
    bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type == NGHTTP2_HEADERS && !c->final_head) {
        /* a response head (1xx or final) */
        buf_printf(c->resp, "HTTP/1.1 %d %s\r\n", c->status, http_status_reason(c->status));
        buf_append(c->resp, c->resp_fields.data, c->resp_fields.len);
        c->resp_fields.len = 0;
        bool no_body = c->status < 200 || c->status == 204 || c->status == 304 || c->is_head;
        if (!no_body && end)
            buf_puts(c->resp, "Content-Length: 0\r\n");
        else if (!no_body)
            buf_puts(c->resp, "Transfer-Encoding: chunked\r\n");
        c->resp_chunked = !no_body && !end;
        buf_puts(c->resp, "\r\n");
        c->final_head = c->status >= 200;
        if (c->final_head && (end || no_body))
            c->resp_done = true;
        return 0;
    }
    if (end && c->final_head)
        response_end(c);
    return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    struct router_h2c *c = ud;
    if (id != c->stream_id || !c->resp || !c->resp_chunked || c->resp_done || len == 0)
        return 0;
    buf_printf(c->resp, "%zx\r\n", len);
    buf_append(c->resp, data, len);
    buf_puts(c->resp, "\r\n");
    return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud)
{
    struct router_h2c *c = ud;
    if (id == c->stream_id && !c->resp_done)
        c->failed = true; /* reset, or closed before its response ended: a 502 or a cut */
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
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_max_continuations(opt, 8);
    nghttp2_option_set_max_settings(opt, 32);
    nghttp2_session_client_new2(&c->ng, cb, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                   {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1}};
    nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, 2);
    return c;
}

void router_h2c_free(struct router_h2c *c)
{
    if (!c)
        return;
    nghttp2_session_del(c->ng);
    struct buf *bufs[] = {&c->url,      &c->fname, &c->fvalue,      &c->authority,    &c->fields,
                          &c->trailers, &c->body,  &c->resp_fields, &c->resp_trailers};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        buf_free(bufs[i]);
    free(c);
}

bool router_h2c_begin(struct router_h2c *c)
{
    if (c->failed || !nghttp2_session_want_read(c->ng) ||
        nghttp2_session_get_remote_settings(c->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) == 0)
        return false;
    llhttp_init(&c->parser, HTTP_REQUEST, &request_settings);
    c->parser.data = c;
    c->url.len = c->authority.len = c->fields.len = c->trailers.len = 0;
    c->fname.len = c->fvalue.len = c->resp_fields.len = c->resp_trailers.len = 0;
    c->field_count = c->trailer_count = 0;
    c->body.len = c->body_off = 0;
    c->stream_id = -1;
    c->status = 0;
    c->in_trailers = c->req_ended = c->deferred = c->is_head = false;
    c->resp_chunked = c->resp_done = c->final_head = false;
    return true;
}

int router_h2c_request(struct router_h2c *c, const char *p, size_t n)
{
    if (c->failed)
        return -1;
    if (c->req_ended && c->stream_id > 0)
        return 0; /* nothing belongs to this stream after its request */
    llhttp_errno_t err = llhttp_execute(&c->parser, p, n);
    if (err != HPE_OK && !(err == HPE_PAUSED && c->req_ended)) {
        c->failed = true;
        return -1;
    }
    if (c->deferred && c->stream_id > 0) {
        c->deferred = false;
        nghttp2_session_resume_data(c->ng, c->stream_id);
    }
    return 0;
}

int router_h2c_input(struct router_h2c *c, const char *p, size_t n, struct buf *resp)
{
    c->resp = resp;
    ssize_t r = nghttp2_session_mem_recv(c->ng, (const uint8_t *)p, n);
    c->resp = NULL;
    if (r < 0)
        c->failed = true;
    return c->failed && !c->resp_done ? -1 : 0;
}

size_t router_h2c_output(struct router_h2c *c, struct buf *out)
{
    size_t total = 0;
    for (;;) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(c->ng, &data);
        if (n <= 0) {
            if (n < 0)
                c->failed = true;
            return total;
        }
        buf_append(out, data, (size_t)n);
        total += (size_t)n;
    }
}

bool router_h2c_broken(const struct router_h2c *c)
{
    return c->failed && !c->resp_done;
}

size_t router_h2c_queued(const struct router_h2c *c)
{
    return c->body.len - c->body_off;
}
