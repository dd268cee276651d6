/* The broker's HTTP/1.1 server: libuv and llhttp (started through src/http/parser.h), keep-
 * alive, one request answered at a time per connection, basic auth and the OSB version
 * header checked before anything is done. Bodies are capped (1 MiB), as are heads; a
 * connection that breaks the protocol is answered 400 and closed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "brokers/brokers.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "http/parser.h"

#define SERVER_BODY_MAX (1u << 20)
#define SERVER_HEAD_MAX (64u << 10)
#define SERVER_IDLE_MS 60000

struct conn;

struct brokers_server {
    uv_tcp_t tcp;
    struct brokers *b;
    char *user, *password;
    struct conn *conns; /* open connections, closed with the server */
};

struct conn {
    struct conn *next, **pprev;
    uv_tcp_t tcp;
    uv_timer_t idle;
    struct brokers_server *s;
    llhttp_t parser;
    struct buf url, field, value, body;
    char *authorization, *version;
    size_t head_bytes;
    bool in_value;
    bool closing;
    int handles;
};

static void conn__closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles)
        return;
    buf_free(&c->url);
    buf_free(&c->field);
    buf_free(&c->value);
    buf_free(&c->body);
    free(c->authorization);
    free(c->version);
    free(c);
}

static void conn__close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->pprev) {
        *c->pprev = c->next;
        if (c->next)
            c->next->pprev = c->pprev;
        c->pprev = NULL;
    }
    uv_close((uv_handle_t *)&c->tcp, conn__closed);
    uv_close((uv_handle_t *)&c->idle, conn__closed);
}

struct write_req {
    uv_write_t w;
    char *data;
    struct conn *c;
    bool close_after;
};

static void conn__written(uv_write_t *w, int status)
{
    struct write_req *wr = (struct write_req *)w;
    if (status < 0 || wr->close_after)
        conn__close(wr->c);
    free(wr->data);
    free(wr);
}

static void conn__respond(struct conn *c, int status, json_t *body, bool keep_alive)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    const char *reason = status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    struct write_req *wr = xcalloc(1, sizeof *wr);
    wr->c = c;
    wr->close_after = !keep_alive;
    wr->data =
        xasprintf("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                  "Content-Length: %zu\r\n%s\r\n%s",
                  status, reason, strlen(text), keep_alive ? "" : "Connection: close\r\n", text);
    free(text);
    uv_buf_t ub = uv_buf_init(wr->data, (unsigned)strlen(wr->data));
    if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &ub, 1, conn__written) < 0) {
        free(wr->data);
        free(wr);
        conn__close(c);
    }
}

static void conn__header_done(struct conn *c)
{
    if (!c->field.len)
        return;
    buf_putc(&c->field, '\0');
    buf_putc(&c->value, '\0');
    if (!strcasecmp(c->field.data, "authorization")) {
        free(c->authorization);
        c->authorization = xstrdup(c->value.data);
    } else if (!strcasecmp(c->field.data, "x-broker-api-version")) {
        free(c->version);
        c->version = xstrdup(c->value.data);
    }
    buf_reset(&c->field);
    buf_reset(&c->value);
}

static int conn__on_message_begin(llhttp_t *p)
{
    struct conn *c = p->data;
    buf_reset(&c->url);
    buf_reset(&c->field);
    buf_reset(&c->value);
    buf_reset(&c->body);
    free(c->authorization);
    free(c->version);
    c->authorization = c->version = NULL;
    c->head_bytes = 0;
    c->in_value = false;
    return 0;
}

static int conn__head_room(struct conn *c, size_t n)
{
    c->head_bytes += n;
    return c->head_bytes > SERVER_HEAD_MAX ? -1 : 0;
}

static int conn__on_url(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    buf_append(&c->url, at, n);
    return conn__head_room(c, n);
}

static int conn__on_field(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    if (c->in_value) {
        conn__header_done(c);
        c->in_value = false;
    }
    buf_append(&c->field, at, n);
    return conn__head_room(c, n);
}

static int conn__on_value(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    c->in_value = true;
    buf_append(&c->value, at, n);
    return conn__head_room(c, n);
}

static int conn__on_headers_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    conn__header_done(c);
    c->in_value = false;
    return 0;
}

static int conn__on_body(llhttp_t *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    if (c->body.len + n > SERVER_BODY_MAX)
        return -1;
    buf_append(&c->body, at, n);
    return 0;
}

static int conn__on_message_complete(llhttp_t *p)
{
    struct conn *c = p->data;
    struct brokers_server *s = c->s;
    buf_putc(&c->url, '\0');
    bool keep = llhttp_should_keep_alive(p);
    const char *method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    int status = 0;
    json_t *out;
    if (!brokers_basic_auth_ok(c->authorization, s->user, s->password)) {
        status = 401;
        out = json_pack("{s:s}", "description", "basic auth with the broker's credentials");
    } else if (!c->version || atoi(c->version) != 2) {
        status = 412;
        out = json_pack("{s:s}", "description",
                        "X-Broker-API-Version: 2.x is required (this broker speaks 2.17)");
    } else {
        out = brokers_handle(s->b, method, c->url.data, c->body.data, c->body.len, &status);
        log_msg(LOG_DEBUG, "%s %s: %d", method, c->url.data, status);
    }
    conn__respond(c, status, out, keep);
    return 0;
}

static void server__fill(llhttp_settings_t *st)
{
    st->on_message_begin = conn__on_message_begin;
    st->on_url = conn__on_url;
    st->on_header_field = conn__on_field;
    st->on_header_value = conn__on_value;
    st->on_headers_complete = conn__on_headers_complete;
    st->on_body = conn__on_body;
    st->on_message_complete = conn__on_message_complete;
}

static void conn__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = xmalloc(16384);
    b->len = 16384;
}

static void conn__idle(uv_timer_t *t)
{
    conn__close(t->data);
}

static void conn__read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = st->data;
    if (n > 0 && !c->closing) {
        uv_timer_again(&c->idle);
        llhttp_errno_t e = llhttp_execute(&c->parser, b->base, (size_t)n);
        if (e != HPE_OK) {
            uv_read_stop(st);
            conn__respond(c, 400,
                          json_pack("{s:s}", "description",
                                    "malformed HTTP request, or its head or body is too large"),
                          false);
        }
    } else if (n < 0) {
        conn__close(c);
    }
    free(b->base);
}

static void server__accept(uv_stream_t *srv, int status)
{
    struct brokers_server *s = srv->data;
    if (status < 0)
        return;
    struct conn *c = xcalloc(1, sizeof *c);
    c->s = s;
    uv_tcp_init(srv->loop, &c->tcp);
    uv_timer_init(srv->loop, &c->idle);
    c->tcp.data = c->idle.data = c;
    c->handles = 2;
    c->next = s->conns;
    if (s->conns)
        s->conns->pprev = &c->next;
    c->pprev = &s->conns;
    s->conns = c;
    if (uv_accept(srv, (uv_stream_t *)&c->tcp) < 0) {
        conn__close(c);
        return;
    }
    http_parser_init(&c->parser, HTTP_ROLE_SERVER, server__fill, c);
    uv_timer_start(&c->idle, conn__idle, SERVER_IDLE_MS, SERVER_IDLE_MS);
    uv_read_start((uv_stream_t *)&c->tcp, conn__alloc, conn__read);
}

int brokers_server_start(uv_loop_t *loop, struct brokers *b, const char *addr, const char *user,
                         const char *password, struct brokers_server **out, char *err,
                         size_t errlen)
{
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) {
        snprintf(err, errlen, "%s is not HOST:PORT", addr);
        return -EINVAL;
    }
    snprintf(host, sizeof host, "%.*s", (int)(colon - addr), addr);
    struct sockaddr_in sa;
    if (uv_ip4_addr(host, atoi(colon + 1), &sa) < 0) {
        snprintf(err, errlen, "%s is not an IPv4 HOST:PORT", addr);
        return -EINVAL;
    }
    struct brokers_server *s = xcalloc(1, sizeof *s);
    s->b = b;
    s->user = xstrdup(user);
    s->password = xstrdup(password);
    uv_tcp_init(loop, &s->tcp);
    s->tcp.data = s;
    int rc = uv_tcp_bind(&s->tcp, (struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->tcp, 128, server__accept);
    if (rc < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, uv_strerror(rc));
        brokers_server_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

static void server__closed(uv_handle_t *h)
{
    struct brokers_server *s = h->data;
    free(s->user);
    free(s->password);
    free(s);
}

void brokers_server_close(struct brokers_server *s)
{
    if (!s)
        return;
    while (s->conns)
        conn__close(s->conns);
    uv_close((uv_handle_t *)&s->tcp, server__closed);
}
