/* Keep-alive HTTP/1.1 client with a pool per address (see client.h). */
#include "http/client.h"

#include <ctype.h>
#include <errno.h>
#include <llhttp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "http/parser.h"

struct http_call {
    const char *head;
    size_t head_len;
    const void *body;
    size_t body_len;
    int64_t timeout_ms;
    int64_t connect_timeout_ms; /* http_call_limits */
    bool discard_body;
    http_response_cb cb;
    void *arg;
    bool resent; /* already sent once more after a stale keep-alive connection */
};

struct http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect_req;
    uv_write_t write_req;
    llhttp_t parser;
    struct http_pool *pool;
    struct http_call *call; /* NULL while idle */
    struct http_conn *next_idle;
    struct http_conn *next_all;
    bool reused;    /* served a call before this one */
    bool got_bytes; /* some of this call's response came */
    bool complete;  /* this call's response is whole */
    bool closing;
    bool writing;              /* write_req is in use */
    const char *pending_error; /* a failure to report on the next loop turn */
    int open_handles;
    struct buf name, value;
    struct http_header *headers;
    size_t header_count, header_cap;
    struct buf body;
};

struct http_pool {
    uv_loop_t *loop;
    struct sockaddr_storage addr;
    struct http_conn *idle;
    struct http_conn *all; /* every connection, open or closing */
    size_t conns;          /* open or closing */
    size_t active;         /* calls in progress */
    bool released;
};

static void http_conn_start(struct http_conn *c, struct http_call *call);
static void http_settings_fill(llhttp_settings_t *s);
static void http_conn_fail_soon(struct http_conn *c, const char *error);
static void http_conn_finish(struct http_conn *c, int status, const char *error, bool keep);
static void http_open_and_start(struct http_pool *pool, struct http_call *call);

/* ---- pools --------------------------------------------------------------------------- */

int http_pool_new(uv_loop_t *loop, const char *addr, struct http_pool **out)
{
    struct http_pool *p = xcalloc(1, sizeof(*p));
    p->loop = loop;
    const char *colon = strrchr(addr, ':');
    int port = colon ? atoi(colon + 1) : 0;
    int rc = -EINVAL;
    if (colon && port > 0 && port < 65536) {
        if (addr[0] == '[' && colon > addr + 1 && colon[-1] == ']') {
            char *host = xstrndup(addr + 1, (size_t)(colon - addr - 2));
            rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&p->addr);
            free(host);
        } else {
            char *host = xstrndup(addr, (size_t)(colon - addr));
            rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&p->addr);
            free(host);
        }
    }
    if (rc < 0) {
        free(p);
        *out = NULL;
        return -EINVAL;
    }
    *out = p;
    return 0;
}

static void http_pool_maybe_free(struct http_pool *p)
{
    if (p->released && p->conns == 0)
        free(p);
}

size_t http_pool_active(const struct http_pool *pool)
{
    return pool->active;
}

/* ---- connections --------------------------------------------------------------------- */

static void http_conn_reset_response(struct http_conn *c)
{
    for (size_t i = 0; i < c->header_count; i++) {
        free(c->headers[i].name);
        free(c->headers[i].value);
    }
    c->header_count = 0;
    buf_reset(&c->name);
    buf_reset(&c->value);
    buf_reset(&c->body);
    c->got_bytes = false;
    c->complete = false;
}

static void http_conn_closed(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    if (--c->open_handles > 0)
        return;
    struct http_pool *p = c->pool;
    for (struct http_conn **pp = &p->all; *pp; pp = &(*pp)->next_all) {
        if (*pp == c) {
            *pp = c->next_all;
            break;
        }
    }
    http_conn_reset_response(c);
    free(c->headers);
    buf_free(&c->name);
    buf_free(&c->value);
    buf_free(&c->body);
    free(c);
    p->conns--;
    http_pool_maybe_free(p);
}

static void http_conn_close(struct http_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    /* Off the idle list, if it is there. */
    for (struct http_conn **pp = &c->pool->idle; *pp; pp = &(*pp)->next_idle) {
        if (*pp == c) {
            *pp = c->next_idle;
            break;
        }
    }
    uv_close((uv_handle_t *)&c->tcp, http_conn_closed);
    uv_close((uv_handle_t *)&c->timer, http_conn_closed);
}

void http_pool_abort(struct http_pool *pool)
{
    pool->conns++; /* keeps the pool while the callbacks run */
    for (struct http_conn *c = pool->all; c; c = c->next_all) {
        if (c->call) {
            http_conn_close(c);
            http_conn_finish(c, 0, "cancelled: the platform is stopping", false);
        }
    }
    pool->conns--;
    http_pool_maybe_free(pool);
}

void http_pool_release(struct http_pool *pool, bool abort_calls)
{
    pool->released = true;
    while (pool->idle)
        http_conn_close(pool->idle);
    if (abort_calls)
        http_pool_abort(pool); /* may free the pool */
    else
        http_pool_maybe_free(pool);
}

/* Ends the connection's call: runs the callback, then keeps or closes the connection. */
static void http_conn_finish(struct http_conn *c, int status, const char *error, bool keep)
{
    struct http_call *call = c->call;
    struct http_pool *p = c->pool;
    uv_timer_stop(&c->timer);
    c->call = NULL;
    p->active--;
    struct http_response resp = {
        .status = status,
        .error = error,
        .headers = c->headers,
        .header_count = c->header_count,
        .body = c->body.data ? c->body.data : "",
        .body_len = c->body.len,
    };
    call->cb(call->arg, &resp);
    free(call);
    /* A response that came before the request was fully written (an early error) leaves the
     * write in flight: that connection cannot take another request. */
    if (keep && !p->released && !c->closing && !c->writing) {
        http_conn_reset_response(c);
        c->reused = true;
        c->next_idle = p->idle;
        p->idle = c;
    } else {
        http_conn_close(c);
    }
}

/* A transport failure: resend once when a reused connection died before answering. */
static void http_conn_fail(struct http_conn *c, const char *error)
{
    struct http_call *call = c->call;
    if (!call) {
        http_conn_close(c);
        return;
    }
    if (c->reused && !c->got_bytes && !call->resent) {
        call->resent = true;
        c->call = NULL;
        uv_timer_stop(&c->timer);
        http_conn_close(c);
        http_open_and_start(c->pool, call);
        return;
    }
    http_conn_close(c);
    http_conn_finish(c, 0, error, false);
}

static void http_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = xmalloc(65536);
    b->len = 65536;
}

static void http_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct http_conn *c = s->data;
    if (nread == 0) {
        free(b->base);
        return;
    }
    if (!c->call) {
        /* Idle: the server closed it, or sent what nobody asked for. */
        free(b->base);
        http_conn_close(c);
        return;
    }
    if (nread < 0) {
        free(b->base);
        /* A body that runs until the close ends here (on_message_complete pauses the parser,
         * so llhttp_finish does not report HPE_OK then: look at the flag). */
        if (nread == UV_EOF && c->got_bytes) {
            llhttp_finish(&c->parser);
        }
        if (nread == UV_EOF && c->complete) {
            http_conn_finish(c, c->parser.status_code, NULL, false);
            return;
        }
        http_conn_fail(c, nread == UV_EOF ? "connection closed before the response was complete"
                                          : uv_strerror((int)nread));
        return;
    }
    c->got_bytes = true;
    llhttp_errno_t err = llhttp_execute(&c->parser, b->base, (size_t)nread);
    free(b->base);
    if (c->complete) {
        bool keep = llhttp_should_keep_alive(&c->parser);
        http_conn_finish(c, c->parser.status_code, NULL, keep);
        return;
    }
    if (err != HPE_OK) {
        http_conn_close(c);
        http_conn_finish(c, 0, "the instance sent a malformed HTTP response", false);
    }
}

static void http_on_timeout(uv_timer_t *t)
{
    struct http_conn *c = t->data;
    if (!c->call)
        return;
    const char *error = c->pending_error ? c->pending_error : "timed out waiting for the response";
    c->pending_error = NULL;
    http_conn_close(c);
    http_conn_finish(c, 0, error, false);
}

/* Fails the call from the timer on the next loop turn: a call never completes inside the
 * http_pool_send that started it. */
static void http_conn_fail_soon(struct http_conn *c, const char *error)
{
    c->pending_error = error;
    uv_timer_start(&c->timer, http_on_timeout, 0, 0);
}

static void http_on_write(uv_write_t *w, int status)
{
    struct http_conn *c = w->data;
    c->writing = false;
    if (status < 0 && c->call && !c->closing)
        http_conn_fail(c, uv_strerror(status));
}

static void http_conn_start(struct http_conn *c, struct http_call *call)
{
    c->call = call;
    http_conn_reset_response(c);
    http_parser_init(&c->parser, HTTP_ROLE_CLIENT, http_settings_fill, c);
    /* A new connection's timer already runs since the connect began. */
    if (call->timeout_ms > 0 && !uv_is_active((uv_handle_t *)&c->timer))
        uv_timer_start(&c->timer, http_on_timeout, (uint64_t)call->timeout_ms, 0);
    uv_buf_t bufs[2] = {uv_buf_init((char *)call->head, (unsigned)call->head_len),
                        uv_buf_init((char *)call->body, (unsigned)call->body_len)};
    c->write_req.data = c;
    c->writing = true;
    int rc = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, bufs, call->body_len ? 2 : 1,
                      http_on_write);
    if (rc == 0)
        rc = uv_read_start((uv_stream_t *)&c->tcp, http_alloc, http_on_read);
    if (rc == UV_EALREADY)
        rc = 0;
    if (rc < 0) {
        c->writing = false;
        http_conn_fail_soon(c, uv_strerror(rc));
    }
}

static void http_on_connect(uv_connect_t *req, int status)
{
    struct http_conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        http_conn_close(c);
        http_conn_finish(c, 0, uv_strerror(status), false);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (c->call->connect_timeout_ms > 0)
        uv_timer_stop(&c->timer); /* the connect's deadline is met: the call's own starts */
    http_conn_start(c, c->call);
}

/* Opens a new connection for the call (the call counts as active already). */
static void http_open_and_start(struct http_pool *p, struct http_call *call)
{
    struct http_conn *c = xcalloc(1, sizeof(*c));
    c->pool = p;
    c->call = call;
    uv_tcp_init(p->loop, &c->tcp);
    uv_timer_init(p->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->open_handles = 2;
    p->conns++;
    c->next_all = p->all;
    p->all = c;
    int64_t first = call->connect_timeout_ms > 0 ? call->connect_timeout_ms : call->timeout_ms;
    if (first > 0)
        uv_timer_start(&c->timer, http_on_timeout, (uint64_t)first, 0);
    c->connect_req.data = c;
    int rc = uv_tcp_connect(&c->connect_req, &c->tcp, (struct sockaddr *)&p->addr, http_on_connect);
    if (rc < 0)
        http_conn_fail_soon(c, uv_strerror(rc));
}

/* ---- parser callbacks ----------------------------------------------------------------- */

static int http_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    buf_append(&c->name, at, len);
    return 0;
}

static int http_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    buf_append(&c->value, at, len);
    return 0;
}

static int http_on_header_value_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    if (c->header_count == c->header_cap) {
        c->header_cap = c->header_cap ? c->header_cap * 2 : 16;
        c->headers = xrealloc(c->headers, c->header_cap * sizeof(*c->headers));
    }
    char *name = xstrndup(c->name.data ? c->name.data : "", c->name.len);
    for (char *q = name; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    c->headers[c->header_count].name = name;
    c->headers[c->header_count].value = xstrndup(c->value.data ? c->value.data : "", c->value.len);
    c->header_count++;
    buf_reset(&c->name);
    buf_reset(&c->value);
    return 0;
}

static int http_on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->call && c->call->discard_body)
        return 0;
    if (c->body.len + len > (64u << 20))
        return -1; /* a reply larger than any event may be: refuse it */
    buf_append(&c->body, at, len);
    return 0;
}

static int http_on_message_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    c->complete = true;
    return HPE_PAUSED;
}

void http_pool_send(struct http_pool *pool, const char *head, size_t head_len,
                       const void *body, size_t body_len, int64_t timeout_ms, http_response_cb cb,
                       void *arg)
{
    struct http_call_limits limits = {.timeout_ms = timeout_ms};
    http_pool_send_limited(pool, head, head_len, body, body_len, &limits, cb, arg);
}

void http_pool_send_limited(struct http_pool *pool, const char *head, size_t head_len,
                            const void *body, size_t body_len,
                            const struct http_call_limits *limits, http_response_cb cb, void *arg)
{
    struct http_call *call = xcalloc(1, sizeof(*call));
    call->head = head;
    call->head_len = head_len;
    call->body = body;
    call->body_len = body_len;
    if (limits) {
        call->timeout_ms = limits->timeout_ms;
        call->connect_timeout_ms = limits->connect_timeout_ms;
        call->discard_body = limits->discard_body;
    }
    call->cb = cb;
    call->arg = arg;
    pool->active++;
    struct http_conn *c = pool->idle;
    if (c) {
        pool->idle = c->next_idle;
        c->next_idle = NULL;
        http_conn_start(c, call);
    } else {
        http_open_and_start(pool, call);
    }
}

const char *http_response_header(const struct http_response *resp, const char *name)
{
    return http_header_find(resp->headers, resp->header_count, name);
}

static void http_settings_fill(llhttp_settings_t *s)
{
    s->on_header_field = http_on_header_field;
    s->on_header_value = http_on_header_value;
    s->on_header_value_complete = http_on_header_value_complete;
    s->on_body = http_on_body;
    s->on_message_complete = http_on_message_complete;
}
