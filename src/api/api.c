/* The API's HTTP/1.1 server: libuv connections, llhttp parsing, routing, auth, responses.
 *
 * One request per connection is handled at a time: bytes that arrive meanwhile (pipelining)
 * wait in conn->pending and are parsed once the response is finished. Reading goes on while
 * a request is handled, so a client that leaves is noticed (api_request_on_abort). */
#include "api/api.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"

#define API_MAX_PARAMS 8
#define API_MAX_HEADERS 100
#define API_MAX_HEADER_BYTES (64u << 10)
#define API_PENDING_MAX (1u << 20)

struct api_route {
    char method[16];
    char **segs;
    size_t nsegs;
    int flags;
    api_handler_fn fn;
    void *ctx;
    struct api_route *next;
};

struct api_conn;

struct api {
    uv_loop_t *loop;
    uv_tcp_t server;
    bool server_open;
    uv_tcp_t publish_server; /* containers' publish endpoint, when publish_addr is set */
    bool publish_open;
    char *publish_addr;
    char *home;
    char *addr;
    char *url;
    unsigned char admin_hash[crypto_generichash_BYTES];
    unsigned char instance_key[crypto_auth_hmacsha256_KEYBYTES];
    uint64_t upload_max;
    struct api_route *routes;
    struct api_route **routes_tail;
    struct api_conn *conns;
    unsigned tmp_seq;
    bool closing;
    int handles_open;
    uv_timer_t sweep; /* closes connections that stall (see api__sweep) */
    bool sweep_open;
    void (*close_cb)(void *arg);
    void *close_arg;
};

struct api_header {
    char *name;
    char *value;
};

enum api_req_state { API_REQ_PARSING, API_REQ_HANDLING, API_REQ_STREAMING, API_REQ_DONE };

struct api_request {
    struct api *api;
    struct api_conn *conn; /* NULL once the connection is gone */
    enum api_req_state state;
    char method[16];
    char *path;
    char *query;
    char **segs;
    size_t nsegs;
    const char *params[API_MAX_PARAMS];
    unsigned nparams;
    struct api_header *headers;
    size_t nheaders;
    bool headers_dropped; /* more than API_MAX_HEADERS came: the request is refused */
    const struct api_route *route;
    /* body */
    struct buf body;
    int body_fd;
    char *body_path;
    uint64_t body_size;
    uint64_t body_limit;
    /* an error found before the body, answered once the body is read */
    int early_status;
    char *early_code;
    char *early_message;
    bool expect_continue;
    bool keep_alive;
    char caller_app[37];
    bool by_instance;
    bool aborted;
    void (*abort_fn)(void *ctx);
    void *abort_ctx;
    struct api_header *resp_headers;
    size_t nresp_headers;
    char **scratch; /* strings handed out by accessors, freed with the request */
    size_t nscratch;
};

struct api_conn {
    uv_tcp_t tcp;
    struct api *api;
    llhttp_t parser;
    struct api_conn *prev, *next;
    struct api_request *req;
    struct buf url;
    struct buf hfield;
    struct buf hvalue;
    bool in_value;
    size_t header_bytes;
    struct buf pending;
    size_t write_pending;
    bool reading;
    bool in_execute;   /* inside llhttp_execute: api__feed goes on with what follows */
    int64_t active_ms; /* last byte read or request finished (monotonic) */
    bool close_after_write;
    bool closing;
    bool publish_only; /* came in on the publish listener */
    char peer[80];
};

struct api_write {
    uv_write_t req;
    struct api_conn *conn;
    size_t len;
    char data[];
};

static llhttp_settings_t api__settings;

static void api__conn_close(struct api_conn *c);
static void api__process_pending(struct api_conn *c);
static void api__start_reading(struct api_conn *c);
static void api__settings_init(void);
static void api__sweep(uv_timer_t *t);
static void api__dispatch(struct api_request *req);

/* A request must arrive whole within this time once it began, and an idle keep-alive
 * connection is closed after API_IDLE_MS; slow or silent clients cannot pile up. */
#define API_SWEEP_MS 5000
#define API_REQUEST_MS 60000
#define API_IDLE_MS 300000

/* ---- small helpers ---------------------------------------------------------------------- */

static int api__hex(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Percent-decodes (and '+' as space when form is set); NULL when it holds a NUL byte. */
static char *api__decode(const char *s, size_t len, bool form)
{
    char *out = xmalloc(len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len && api__hex(s[i + 1]) >= 0 && api__hex(s[i + 2]) >= 0) {
            out[n++] = (char)(api__hex(s[i + 1]) * 16 + api__hex(s[i + 2]));
            i += 2;
        } else if (form && s[i] == '+') {
            out[n++] = ' ';
        } else {
            out[n++] = s[i];
        }
    }
    out[n] = '\0';
    if (strlen(out) != n) {
        free(out);
        return NULL;
    }
    return out;
}

static const char *api__reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

static char *api__scratch(struct api_request *req, char *s)
{
    req->scratch = xrealloc(req->scratch, (req->nscratch + 1) * sizeof *req->scratch);
    req->scratch[req->nscratch++] = s;
    return s;
}

/* ---- life of the server ------------------------------------------------------------------ */

static int api__load_key(const char *path, unsigned char *key, size_t len)
{
    char *data = NULL;
    size_t n = 0;
    if (file_read(path, &data, &n) == 0 && n == len) {
        memcpy(key, data, len);
        sodium_memzero(data, n);
        free(data);
        return 0;
    }
    free(data);
    randombytes_buf(key, len);
    return file_write_atomic(path, key, len, 0600);
}

int api_new(uv_loop_t *loop, const struct api_config *cfg, struct api **out)
{
    if (sodium_init() < 0)
        return -EIO;
    struct api *api = xcalloc(1, sizeof *api);
    api->loop = loop;
    api->home = xstrdup(cfg->home);
    api->addr = xstrdup(cfg->addr);
    api->publish_addr = cfg->publish_addr ? xstrdup(cfg->publish_addr) : NULL;
    api->url = xasprintf("http://%s", cfg->addr);
    api->upload_max = cfg->upload_max ? cfg->upload_max : (1ull << 30);
    api->routes_tail = &api->routes;
    crypto_generichash(api->admin_hash, sizeof api->admin_hash,
                       (const unsigned char *)cfg->admin_token, strlen(cfg->admin_token), NULL, 0);
    char *key_path = xasprintf("%s/instance_token.key", cfg->home);
    int rc = api__load_key(key_path, api->instance_key, sizeof api->instance_key);
    free(key_path);
    if (rc < 0) {
        api_free(api);
        return rc;
    }
    char *tmp = xasprintf("%s/tmp", cfg->home);
    mkdir_p(tmp, 0700);
    free(tmp);
    api__settings_init();
    *out = api;
    return 0;
}

uv_loop_t *api_loop(struct api *api)
{
    return api->loop;
}
const char *api_url(struct api *api)
{
    return api->url;
}

static void api__on_connection(uv_stream_t *server, int status);

static int api__parse_addr(const char *addr, struct sockaddr_storage *ss)
{
    const char *colon = strrchr(addr, ':');
    if (!colon)
        return -EINVAL;
    char host[256];
    size_t hl = (size_t)(colon - addr);
    if (hl >= sizeof host)
        return -EINVAL;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535)
        return -EINVAL;
    if (host[0] == '[') {
        host[strlen(host) - 1] = '\0';
        return uv_ip6_addr(host + 1, port, (struct sockaddr_in6 *)ss);
    }
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    return uv_ip4_addr(host[0] ? host : "0.0.0.0", port, (struct sockaddr_in *)ss);
}

int api_listen(struct api *api, char *err, size_t errsize)
{
    struct sockaddr_storage ss;
    int rc = api__parse_addr(api->addr, &ss);
    if (rc < 0) {
        snprintf(err, errsize, "invalid API address \"%s\": use HOST:PORT", api->addr);
        return rc;
    }
    uv_tcp_init(api->loop, &api->server);
    api->server.data = api;
    api->server_open = true;
    api->handles_open++;
    rc = uv_tcp_bind(&api->server, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&api->server, 511, api__on_connection);
    if (rc == 0 && api->publish_addr) {
        struct sockaddr_storage pss;
        rc = api__parse_addr(api->publish_addr, &pss);
        if (rc == 0) {
            uv_tcp_init(api->loop, &api->publish_server);
            api->publish_server.data = api;
            api->publish_open = true;
            api->handles_open++;
            rc = uv_tcp_bind(&api->publish_server, (const struct sockaddr *)&pss, 0);
        }
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)&api->publish_server, 511, api__on_connection);
        if (rc < 0) {
            snprintf(err, errsize, "cannot listen for publishing on %s: %s", api->publish_addr,
                     uv_strerror(rc));
            return rc;
        }
    }
    if (rc == 0) {
        uv_timer_init(api->loop, &api->sweep);
        api->sweep.data = api;
        api->sweep_open = true;
        api->handles_open++;
        uv_timer_start(&api->sweep, api__sweep, API_SWEEP_MS, API_SWEEP_MS);
        uv_unref((uv_handle_t *)&api->sweep);
    }
    if (rc < 0) {
        snprintf(err, errsize,
                 "cannot listen on %s: %s (another skiffd running? set "
                 "SKIFF_API_ADDR or --api-addr)",
                 api->addr, uv_strerror(rc));
        return rc;
    }
    return 0;
}

static void api__handle_closed(struct api *api)
{
    if (--api->handles_open == 0 && api->closing && api->close_cb) {
        void (*cb)(void *) = api->close_cb;
        api->close_cb = NULL;
        cb(api->close_arg);
    }
}

static void api__server_closed(uv_handle_t *h)
{
    api__handle_closed(h->data);
}

void api_close(struct api *api, void (*close_cb)(void *arg), void *arg)
{
    api->closing = true;
    api->close_cb = close_cb;
    api->close_arg = arg;
    api->handles_open++; /* held until every close below was started */
    if (api->server_open) {
        api->server_open = false;
        uv_close((uv_handle_t *)&api->server, api__server_closed);
    }
    if (api->publish_open) {
        api->publish_open = false;
        uv_close((uv_handle_t *)&api->publish_server, api__server_closed);
    }
    if (api->sweep_open) {
        api->sweep_open = false;
        uv_close((uv_handle_t *)&api->sweep, api__server_closed);
    }
    struct api_conn *c = api->conns;
    while (c) {
        struct api_conn *next = c->next;
        api__conn_close(c);
        c = next;
    }
    api__handle_closed(api);
}

void api_free(struct api *api)
{
    if (!api)
        return;
    struct api_route *r = api->routes;
    while (r) {
        struct api_route *next = r->next;
        for (size_t i = 0; i < r->nsegs; i++)
            free(r->segs[i]);
        free(r->segs);
        free(r);
        r = next;
    }
    sodium_memzero(api->instance_key, sizeof api->instance_key);
    free(api->home);
    free(api->addr);
    free(api->publish_addr);
    free(api->url);
    free(api);
}

/* ---- routes ------------------------------------------------------------------------------- */

static char **api__split_path(const char *path, size_t *n, bool decode)
{
    char **segs = NULL;
    size_t count = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char *seg = decode ? api__decode(p, len, false) : xstrndup(p, len);
        if (!seg) {
            for (size_t i = 0; i < count; i++)
                free(segs[i]);
            free(segs);
            return NULL;
        }
        segs = xrealloc(segs, (count + 1) * sizeof *segs);
        segs[count++] = seg;
        p += len;
    }
    *n = count;
    return segs ? segs : xcalloc(1, sizeof *segs);
}

int api_route_add(struct api *api, const char *method, const char *pattern, int flags,
                  api_handler_fn handler, void *ctx)
{
    if (!method || strlen(method) >= 16 || !pattern || pattern[0] != '/' || !handler)
        return -EINVAL;
    struct api_route *r = xcalloc(1, sizeof *r);
    snprintf(r->method, sizeof r->method, "%s", method);
    r->segs = api__split_path(pattern, &r->nsegs, false);
    r->flags = flags;
    r->fn = handler;
    r->ctx = ctx;
    *api->routes_tail = r;
    api->routes_tail = &r->next;
    return 0;
}

/* The route for the request, or NULL with *path_known telling 404 from 405. */
static const struct api_route *api__match(struct api *api, struct api_request *req,
                                          bool *path_known)
{
    *path_known = false;
    for (const struct api_route *r = api->routes; r; r = r->next) {
        if (r->nsegs != req->nsegs)
            continue;
        unsigned np = 0;
        size_t i;
        for (i = 0; i < r->nsegs; i++) {
            if (!strcmp(r->segs[i], "*")) {
                if (np < API_MAX_PARAMS)
                    req->params[np++] = req->segs[i];
            } else if (strcmp(r->segs[i], req->segs[i])) {
                break;
            }
        }
        if (i < r->nsegs)
            continue;
        *path_known = true;
        if (strcmp(r->method, req->method) &&
            !(strcmp(req->method, "HEAD") == 0 && strcmp(r->method, "GET") == 0))
            continue;
        req->nparams = np;
        return r;
    }
    return NULL;
}

/* ---- auth --------------------------------------------------------------------------------- */

#define API_INSTANCE_TOKEN_PREFIX "skiffi."

void api_instance_token(struct api *api, const char *app_guid, char *out, size_t size)
{
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256(mac, (const unsigned char *)app_guid, strlen(app_guid),
                           api->instance_key);
    char hex[2 * sizeof mac + 1];
    sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
    snprintf(out, size, API_INSTANCE_TOKEN_PREFIX "%s.%s", app_guid, hex);
}

/* 0 admin, 1 instance (caller_app set), -1 missing, -2 wrong. */
static int api__authenticate(struct api *api, struct api_request *req)
{
    const char *h = api_request_header(req, "authorization");
    if (!h)
        return -1;
    if (strncasecmp(h, "Bearer ", 7))
        return -2;
    const char *token = h + 7;
    while (*token == ' ')
        token++;
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)token, strlen(token), NULL, 0);
    if (sodium_memcmp(hash, api->admin_hash, sizeof hash) == 0)
        return 0;
    if (str_has_prefix(token, API_INSTANCE_TOKEN_PREFIX)) {
        const char *guid = token + strlen(API_INSTANCE_TOKEN_PREFIX);
        const char *dot = strchr(guid, '.');
        if (dot && dot - guid == 36) {
            char app[37];
            memcpy(app, guid, 36);
            app[36] = '\0';
            char expect[160];
            api_instance_token(api, app, expect, sizeof expect);
            if (strlen(expect) == strlen(token) &&
                sodium_memcmp(expect, token, strlen(token)) == 0) {
                snprintf(req->caller_app, sizeof req->caller_app, "%s", app);
                req->by_instance = true;
                return 1;
            }
        }
    }
    return -2;
}

/* ---- writing ------------------------------------------------------------------------------ */

static void api__write_done(uv_write_t *w, int status)
{
    struct api_write *aw = (struct api_write *)w;
    struct api_conn *c = aw->conn;
    c->write_pending -= aw->len;
    free(aw);
    /* a peer that is gone ends the connection (and aborts a stream to it) */
    if (status < 0 || (c->close_after_write && c->write_pending == 0))
        api__conn_close(c);
}

static int api__write(struct api_conn *c, const void *data, size_t len)
{
    if (!c || c->closing)
        return -EPIPE;
    struct api_write *aw = xmalloc(sizeof *aw + len);
    aw->conn = c;
    aw->len = len;
    memcpy(aw->data, data, len);
    uv_buf_t b = uv_buf_init(aw->data, (unsigned)len);
    int rc = uv_write(&aw->req, (uv_stream_t *)&c->tcp, &b, 1, api__write_done);
    if (rc < 0) {
        free(aw);
        return -EPIPE;
    }
    c->write_pending += len;
    return 0;
}

static void api__head(struct api_request *req, struct buf *out, int status,
                      const char *content_type, long long content_length)
{
    buf_printf(out, "HTTP/1.1 %d %s\r\n", status, api__reason(status));
    if (content_type)
        buf_printf(out, "Content-Type: %s\r\n", content_type);
    if (content_length >= 0)
        buf_printf(out, "Content-Length: %lld\r\n", content_length);
    else if (content_length == -1)
        buf_puts(out, "Transfer-Encoding: chunked\r\n");
    for (size_t i = 0; i < req->nresp_headers; i++)
        buf_printf(out, "%s: %s\r\n", req->resp_headers[i].name, req->resp_headers[i].value);
    buf_puts(out, req->keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
    buf_puts(out, "\r\n");
}

static void api__request_free(struct api_request *req)
{
    free(req->path);
    free(req->query);
    for (size_t i = 0; i < req->nsegs; i++)
        free(req->segs[i]);
    free(req->segs);
    for (size_t i = 0; i < req->nheaders; i++) {
        free(req->headers[i].name);
        free(req->headers[i].value);
    }
    free(req->headers);
    for (size_t i = 0; i < req->nresp_headers; i++) {
        free(req->resp_headers[i].name);
        free(req->resp_headers[i].value);
    }
    free(req->resp_headers);
    for (size_t i = 0; i < req->nscratch; i++)
        free(req->scratch[i]);
    free(req->scratch);
    buf_free(&req->body);
    if (req->body_fd >= 0)
        close(req->body_fd);
    if (req->body_path) {
        unlink(req->body_path);
        free(req->body_path);
    }
    free(req->early_code);
    free(req->early_message);
    free(req);
}

/* The response is queued: release the request and go on with the connection. */
static void api__finish(struct api_request *req)
{
    struct api_conn *c = req->conn;
    req->state = API_REQ_DONE;
    bool keep = req->keep_alive;
    if (c)
        c->req = NULL;
    api__request_free(req);
    if (!c || c->closing)
        return;
    if (!keep) {
        c->close_after_write = true;
        if (c->write_pending == 0)
            api__conn_close(c);
        return;
    }
    c->active_ms = time_mono_ms();
    if (c->in_execute)
        return;
    llhttp_resume(&c->parser);
    api__process_pending(c);
}

void api_response_header(struct api_request *req, const char *name, const char *value)
{
    req->resp_headers =
        xrealloc(req->resp_headers, (req->nresp_headers + 1) * sizeof *req->resp_headers);
    req->resp_headers[req->nresp_headers].name = xstrdup(name);
    req->resp_headers[req->nresp_headers].value = xstrdup(value);
    req->nresp_headers++;
}

void api_respond(struct api_request *req, int status, const char *content_type, const void *body,
                 size_t len)
{
    if (req->state == API_REQ_DONE || req->state == API_REQ_STREAMING)
        return;
    if (req->conn && !req->conn->closing) {
        struct buf out = {0};
        bool head = !strcmp(req->method, "HEAD");
        bool no_body = status == 204 || status == 304;
        /* 204 and 304 carry neither a length nor a body (-2) */
        api__head(req, &out, status, no_body ? NULL : content_type, no_body ? -2 : (long long)len);
        if (!head && !no_body && len)
            buf_append(&out, body, len);
        api__write(req->conn, out.data, out.len);
        buf_free(&out);
    }
    api__finish(req);
}

void api_respond_json(struct api_request *req, int status, json_t *body)
{
    if (!body) {
        api_respond(req, status, NULL, NULL, 0);
        return;
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) {
        api_respond_error(req, 500, "internal", "cannot encode the response");
        return;
    }
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len++] = '\n';
    api_respond(req, status, "application/json", text, len);
    free(text);
}

void api_respond_error(struct api_request *req, int status, const char *code, const char *fmt, ...)
{
    struct buf msg = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);
    json_t *body =
        json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg.data ? msg.data : "");
    buf_free(&msg);
    api_respond_json(req, status, body);
}

void api_stream_begin(struct api_request *req, int status, const char *content_type)
{
    if (req->state != API_REQ_HANDLING)
        return;
    req->state = API_REQ_STREAMING;
    api_response_header(req, "Cache-Control", "no-store");
    api_response_header(req, "X-Content-Type-Options", "nosniff");
    if (req->conn && !req->conn->closing) {
        struct buf out = {0};
        api__head(req, &out, status, content_type, -1);
        api__write(req->conn, out.data, out.len);
        buf_free(&out);
    }
}

int api_stream_write(struct api_request *req, const void *data, size_t len)
{
    if (req->state != API_REQ_STREAMING || !req->conn || req->conn->closing || req->aborted)
        return -EPIPE;
    if (len == 0)
        return 0;
    struct buf out = {0};
    buf_printf(&out, "%zx\r\n", len);
    buf_append(&out, data, len);
    buf_puts(&out, "\r\n");
    int rc = api__write(req->conn, out.data, out.len);
    buf_free(&out);
    return rc;
}

size_t api_stream_pending(const struct api_request *req)
{
    return req->conn ? req->conn->write_pending : 0;
}

void api_stream_end(struct api_request *req)
{
    if (req->state == API_REQ_DONE)
        return;
    if (req->state == API_REQ_HANDLING) {
        api_respond(req, 204, NULL, NULL, 0);
        return;
    }
    if (req->conn && !req->conn->closing)
        api__write(req->conn, "0\r\n\r\n", 5);
    api__finish(req);
}

/* ---- request accessors -------------------------------------------------------------------- */

const char *api_request_method(const struct api_request *req)
{
    return req->method;
}
const char *api_request_path(const struct api_request *req)
{
    return req->path;
}

const char *api_request_param(const struct api_request *req, unsigned n)
{
    return n < req->nparams ? req->params[n] : NULL;
}

const char *api_request_query(const struct api_request *req, const char *name)
{
    if (!req->query)
        return NULL;
    const char *p = req->query;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        char *key = api__decode(p, klen, true);
        bool match = key && !strcmp(key, name);
        free(key);
        if (match) {
            char *v = eq ? api__decode(eq + 1, len - klen - 1, true) : xstrdup("");
            if (!v)
                return NULL;
            return api__scratch((struct api_request *)req, v);
        }
        p += len;
        if (*p == '&')
            p++;
    }
    return NULL;
}

const char *api_request_header(const struct api_request *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (!strcasecmp(req->headers[i].name, name))
            return req->headers[i].value;
    return NULL;
}

void api_request_headers_each(const struct api_request *req,
                              void (*fn)(void *ctx, const char *name, const char *value), void *ctx)
{
    for (size_t i = 0; i < req->nheaders; i++)
        fn(ctx, req->headers[i].name, req->headers[i].value);
}

const char *api_request_body(const struct api_request *req, size_t *len)
{
    if (req->route && (req->route->flags & API_BODY_FILE))
        return NULL;
    if (len)
        *len = req->body.len;
    return req->body.data ? req->body.data : "";
}

const char *api_request_body_path(const struct api_request *req)
{
    return req->body_size ? req->body_path : NULL;
}

uint64_t api_request_body_size(const struct api_request *req)
{
    return req->body_size;
}

const char *api_request_caller_app(const struct api_request *req)
{
    return req->by_instance ? req->caller_app : NULL;
}

const char *api_request_peer(const struct api_request *req)
{
    return req->conn ? req->conn->peer : "";
}

void api_request_on_abort(struct api_request *req, void (*fn)(void *ctx), void *ctx)
{
    req->abort_fn = fn;
    req->abort_ctx = ctx;
}

bool api_request_aborted(const struct api_request *req)
{
    return req->aborted;
}

json_t *api_request_json_object(struct api_request *req)
{
    size_t len = 0;
    const char *body = api_request_body(req, &len);
    if (!body || len == 0) {
        api_respond_error(req, 400, "invalid_json", "the request needs a JSON object as its body");
        return NULL;
    }
    json_error_t jerr;
    json_t *obj = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj) {
        api_respond_error(req, 400, "invalid_json",
                          "the body is not valid JSON (line %d, column %d: %s); send a JSON "
                          "object",
                          jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(obj)) {
        json_decref(obj);
        api_respond_error(req, 400, "invalid_json", "the body must be a JSON object");
        return NULL;
    }
    return obj;
}

bool api_json_check_fields(struct api_request *req, json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (!strcmp(*a, key)) {
                ok = true;
                break;
            }
        if (!ok) {
            struct buf list = {0};
            for (const char *const *a = allowed; *a; a++)
                buf_printf(&list, "%s%s", a == allowed ? "" : ", ", *a);
            api_respond_error(req, 400, "unknown_field", "unknown field \"%s\"; known fields: %s",
                              key, list.data ? list.data : "none");
            buf_free(&list);
            return false;
        }
    }
    return true;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static void api__early(struct api_request *req, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void api__early(struct api_request *req, int status, const char *code, const char *fmt, ...)
{
    if (req->early_status)
        return;
    req->early_status = status;
    req->early_code = xstrdup(code);
    struct buf msg = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);
    req->early_message = buf_steal(&msg);
}

static int api__on_message_begin(llhttp_t *p)
{
    struct api_conn *c = p->data;
    struct api_request *req = xcalloc(1, sizeof *req);
    req->api = c->api;
    req->conn = c;
    req->body_fd = -1;
    req->state = API_REQ_PARSING;
    c->req = req;
    buf_reset(&c->url);
    buf_reset(&c->hfield);
    buf_reset(&c->hvalue);
    c->in_value = false;
    c->header_bytes = 0;
    return 0;
}

static int api__on_url(llhttp_t *p, const char *at, size_t len)
{
    struct api_conn *c = p->data;
    if (c->url.len + len > API_MAX_HEADER_BYTES)
        return -1;
    buf_append(&c->url, at, len);
    return 0;
}

static void api__push_header(struct api_conn *c)
{
    struct api_request *req = c->req;
    if (!c->hfield.len)
        return;
    if (req->nheaders < API_MAX_HEADERS) {
        req->headers = xrealloc(req->headers, (req->nheaders + 1) * sizeof *req->headers);
        req->headers[req->nheaders].name = xstrdup(c->hfield.data);
        req->headers[req->nheaders].value = xstrdup(c->hvalue.data ? c->hvalue.data : "");
        req->nheaders++;
    } else {
        req->headers_dropped = true;
    }
    buf_reset(&c->hfield);
    buf_reset(&c->hvalue);
}

static int api__on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct api_conn *c = p->data;
    c->header_bytes += len;
    if (c->header_bytes > API_MAX_HEADER_BYTES)
        return -1;
    if (c->in_value) {
        api__push_header(c);
        c->in_value = false;
    }
    buf_append(&c->hfield, at, len);
    return 0;
}

static int api__on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct api_conn *c = p->data;
    c->header_bytes += len;
    if (c->header_bytes > API_MAX_HEADER_BYTES)
        return -1;
    c->in_value = true;
    buf_append(&c->hvalue, at, len);
    if (!c->hvalue.data)
        buf_puts(&c->hvalue, "");
    return 0;
}

static int api__on_headers_complete(llhttp_t *p)
{
    struct api_conn *c = p->data;
    struct api_request *req = c->req;
    struct api *api = c->api;
    if (c->in_value)
        api__push_header(c);
    c->in_value = false;
    snprintf(req->method, sizeof req->method, "%s", llhttp_method_name(p->method));
    req->keep_alive = llhttp_should_keep_alive(p) != 0;

    const char *url = c->url.data ? c->url.data : "/";
    const char *q = strchr(url, '?');
    size_t plen = q ? (size_t)(q - url) : strlen(url);
    req->query = q ? xstrdup(q + 1) : NULL;
    char *raw_path = xstrndup(url, plen);
    req->path = api__decode(raw_path, plen, false);
    req->segs = req->path ? api__split_path(raw_path, &req->nsegs, true) : NULL;
    free(raw_path);
    if (!req->path || !req->segs) {
        if (!req->path)
            req->path = xstrdup("/");
        if (!req->segs)
            req->segs = xcalloc(1, sizeof *req->segs);
        api__early(req, 400, "invalid_value",
                   "the request path holds an escaped NUL byte (%%00): names never contain one");
    }
    /* answered rather than read without the headers past the limit, which may be the ones
     * that matter (ce-* attributes, Authorization) */
    if (req->headers_dropped)
        api__early(req, 431, "too_large", "the request has more than %d headers: send fewer",
                   API_MAX_HEADERS);

    const char *expect = api_request_header(req, "expect");
    req->expect_continue = expect && !strcasecmp(expect, "100-continue");

    bool path_known = false;
    req->route = req->early_status ? NULL : api__match(api, req, &path_known);
    if (!req->early_status && !req->route) {
        if (path_known)
            api__early(req, 405, "method_not_allowed", "%s is not allowed on %s", req->method,
                       req->path);
        else
            api__early(req, 404, "not_found", "no such endpoint: %s %s (see docs/api.md)",
                       req->method, req->path);
    }
    if (!req->early_status && c->publish_only &&
        (req->route->flags & API_ROUTE_AUTH_MASK) != API_AUTH_INSTANCE) {
        req->route = NULL;
        api__early(req, 404, "not_found",
                   "this address serves only publishing: POST /v1/topics/TOPIC/events");
    }
    if (!req->early_status) {
        int auth = req->route->flags & API_ROUTE_AUTH_MASK;
        if (auth != API_AUTH_NONE) {
            int who = api__authenticate(api, req);
            if (who == -1)
                api__early(req, 401, "unauthorized",
                           "missing bearer token: send \"Authorization: Bearer TOKEN\" (the "
                           "token is in $SKIFF_HOME/api.json; `skiff login` sets it up)");
            else if (who == -2)
                api__early(req, 401, "unauthorized",
                           "the bearer token is not valid: use the token from $SKIFF_HOME/api.json "
                           "or `skiff login --token`");
            else if (who == 1 && auth != API_AUTH_INSTANCE)
                api__early(req, 403, "forbidden",
                           "an instance token may only publish events; this needs the admin token");
        }
    }
    if (!req->early_status) {
        bool to_file = req->route->flags & API_BODY_FILE;
        req->body_limit = to_file ? api->upload_max : API_BODY_MEMORY_MAX;
        if ((p->flags & F_CONTENT_LENGTH) && p->content_length > req->body_limit)
            api__early(req, 413, "too_large",
                       "the body is %llu bytes, more than the limit of %llu bytes%s",
                       (unsigned long long)p->content_length, (unsigned long long)req->body_limit,
                       to_file ? ": make the upload smaller (.cfignore/.skiffignore can leave "
                                 "files out) or raise SKIFF_MAX_UPLOAD_MB"
                               : "");
        else if (to_file) {
            req->body_path =
                xasprintf("%s/tmp/upload-%d-%u", api->home, (int)getpid(), ++api->tmp_seq);
            req->body_fd = open(req->body_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (req->body_fd < 0)
                api__early(req, 500, "internal", "cannot store the upload: %s", strerror(errno));
        }
    }
    if (req->expect_continue) {
        if (req->early_status) {
            /* the client waits for our word before sending the body: answer now and close */
            req->keep_alive = false;
            req->state = API_REQ_HANDLING;
            api__dispatch(req);
            return HPE_PAUSED;
        } else {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            api__write(c, cont, sizeof cont - 1);
        }
    }
    return 0;
}

static int api__on_body(llhttp_t *p, const char *at, size_t len)
{
    struct api_conn *c = p->data;
    struct api_request *req = c->req;
    req->body_size += len;
    if (req->early_status)
        return 0;
    if (req->body_size > req->body_limit) {
        api__early(req, 413, "too_large", "the body is larger than the limit of %llu bytes",
                   (unsigned long long)req->body_limit);
        return 0;
    }
    if (req->body_fd >= 0) {
        while (len > 0) {
            ssize_t w = write(req->body_fd, at, len);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                api__early(req, 500, "internal", "cannot store the upload: %s", strerror(errno));
                return 0;
            }
            at += w;
            len -= (size_t)w;
        }
    } else {
        buf_append(&req->body, at, len);
    }
    return 0;
}

static void api__dispatch(struct api_request *req)
{
    if (req->early_status) {
        api_respond_error(req, req->early_status, req->early_code, "%s", req->early_message);
        return;
    }
    if (req->body_fd >= 0) {
        close(req->body_fd);
        req->body_fd = -1;
    }
    req->route->fn(req, req->route->ctx);
}

static int api__on_message_complete(llhttp_t *p)
{
    struct api_conn *c = p->data;
    struct api_request *req = c->req;
    req->state = API_REQ_HANDLING;
    api__dispatch(req);
    /* pause: nothing more is parsed until this request is finished (it may already be) */
    return HPE_PAUSED;
}

/* ---- connections -------------------------------------------------------------------------- */

static void api__conn_closed(uv_handle_t *h)
{
    struct api_conn *c = h->data;
    struct api *api = c->api;
    buf_free(&c->url);
    buf_free(&c->hfield);
    buf_free(&c->hvalue);
    buf_free(&c->pending);
    free(c);
    api__handle_closed(api);
}

static void api__conn_close(struct api_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->api->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    struct api_request *req = c->req;
    c->req = NULL;
    if (req) {
        req->conn = NULL;
        if (req->state == API_REQ_PARSING) {
            api__request_free(req);
        } else if (req->state != API_REQ_DONE) {
            req->aborted = true;
            if (req->abort_fn) {
                void (*fn)(void *) = req->abort_fn;
                req->abort_fn = NULL;
                fn(req->abort_ctx);
            }
        }
    }
    uv_close((uv_handle_t *)&c->tcp, api__conn_closed);
}

static void api__bad_request(struct api_conn *c, const char *why)
{
    char body[512];
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"code\":\"invalid_request\",\"message\":\"malformed HTTP "
                     "request: %s\"}}\n",
                     why);
    char head[256];
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n",
                     n);
    api__write(c, head, (size_t)h);
    api__write(c, body, (size_t)n);
    c->close_after_write = true;
    if (c->req && c->req->state == API_REQ_PARSING) {
        api__request_free(c->req);
        c->req = NULL;
    }
    if (c->write_pending == 0)
        api__conn_close(c);
}

/* Feeds bytes to the parser; whatever arrives after a complete request waits in pending. */
static void api__feed(struct api_conn *c, const char *data, size_t len)
{
    enum llhttp_errno e;
    for (;;) {
        c->in_execute = true;
        e = llhttp_execute(&c->parser, data, len);
        c->in_execute = false;
        if (e == HPE_OK)
            return;
        if (e != HPE_PAUSED)
            break;
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t rest = pos && pos >= data && pos < data + len ? (size_t)(data + len - pos) : 0;
        if (!c->req && !c->closing && !c->close_after_write) {
            /* the request was answered at once: go on with the pipelined rest */
            llhttp_resume(&c->parser);
            if (!rest)
                return;
            data = pos;
            len = rest;
            continue;
        }
        /* pending may be what we are parsing: copy out first */
        struct buf keep = {0};
        if (rest)
            buf_append(&keep, pos, rest);
        buf_free(&c->pending);
        c->pending = keep;
        return;
    }
    const char *reason = llhttp_get_error_reason(&c->parser);
    char why[200];
    snprintf(why, sizeof why, "%s", reason ? reason : llhttp_errno_name(e));
    for (char *q = why; *q; q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20)
            *q = ' ';
    api__bad_request(c, why);
}

static void api__process_pending(struct api_conn *c)
{
    if (!c->reading && !c->closing) {
        c->reading = true;
        api__start_reading(c);
    }
    if (c->pending.len == 0)
        return;
    struct buf data = c->pending;
    memset(&c->pending, 0, sizeof c->pending);
    api__feed(c, data.data, data.len);
    buf_free(&data);
}

static void api__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)h;
    (void)suggested;
    b->base = xmalloc(65536);
    b->len = 65536;
}

static void api__on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct api_conn *c = s->data;
    c->active_ms = time_mono_ms();
    if (n < 0) {
        free(b->base);
        api__conn_close(c);
        return;
    }
    if (n == 0 || c->closing || c->close_after_write) {
        free(b->base);
        return;
    }
    if (c->req && c->req->state != API_REQ_PARSING) {
        /* a request is being handled: keep what comes (pipelined requests) for later */
        buf_append(&c->pending, b->base, (size_t)n);
        free(b->base);
        if (c->pending.len > API_PENDING_MAX) {
            uv_read_stop(s);
            c->reading = false;
        }
        return;
    }
    api__feed(c, b->base, (size_t)n);
    free(b->base);
}

static void api__start_reading(struct api_conn *c)
{
    uv_read_start((uv_stream_t *)&c->tcp, api__alloc, api__on_read);
}

static void api__on_connection(uv_stream_t *server, int status)
{
    struct api *api = server->data;
    if (status < 0 || api->closing)
        return;
    struct api_conn *c = xcalloc(1, sizeof *c);
    c->api = api;
    c->publish_only = server == (uv_stream_t *)&api->publish_server;
    uv_tcp_init(api->loop, &c->tcp);
    c->tcp.data = c;
    api->handles_open++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, api__conn_closed);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        char ip[48] = "";
        if (ss.ss_family == AF_INET) {
            uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
            snprintf(c->peer, sizeof c->peer, "%s:%d", ip,
                     ntohs(((struct sockaddr_in *)&ss)->sin_port));
        } else if (ss.ss_family == AF_INET6) {
            uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
            snprintf(c->peer, sizeof c->peer, "[%s]:%d", ip,
                     ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
        }
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &api__settings);
    c->parser.data = c;
    c->next = api->conns;
    if (api->conns)
        api->conns->prev = c;
    api->conns = c;
    c->reading = true;
    c->active_ms = time_mono_ms();
    api__start_reading(c);
}

static void api__sweep(uv_timer_t *t)
{
    struct api *api = t->data;
    int64_t now = time_mono_ms();
    struct api_conn *c = api->conns;
    while (c) {
        struct api_conn *next = c->next;
        struct api_request *req = c->req;
        /* a request being handled or streamed is the handler's business, not a stall */
        if (!req || req->state == API_REQ_PARSING) {
            int64_t limit = req ? API_REQUEST_MS : API_IDLE_MS;
            if (now - c->active_ms > limit)
                api__conn_close(c);
        }
        c = next;
    }
}

static void api__settings_init(void)
{
    llhttp_settings_init(&api__settings);
    api__settings.on_message_begin = api__on_message_begin;
    api__settings.on_url = api__on_url;
    api__settings.on_header_field = api__on_header_field;
    api__settings.on_header_value = api__on_header_value;
    api__settings.on_headers_complete = api__on_headers_complete;
    api__settings.on_body = api__on_body;
    api__settings.on_message_complete = api__on_message_complete;
}
