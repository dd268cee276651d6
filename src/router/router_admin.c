/* The admin port: GET /metrics (Prometheus text), GET /health, GET /routes (the table in use).
 * One short request per connection; anything else is a 404. /metrics and /routes tell every
 * route and backend address, so they need the admin token (skiffd's, read from
 * $SKIFF_HOME/api.json at each request, so a new token needs no restart): "Authorization:
 * Bearer TOKEN". /health answers anyone: it says "ok" and nothing else, for liveness probes. */
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "http/message.h"
#include "router/route_table.h"
#include "router/router_internal.h"

#define ADMIN_MAX_REQUEST 8192

struct admin_conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* a connection that does not finish its request in time is closed */
    struct buf in;
    bool answered;
    int open_handles;
};

#define ADMIN_TIMEOUT_MS 5000
#define ADMIN_MAX_CONNECTIONS 64 /* more at once are closed: the port cannot eat descriptors */
#define ADMIN_TOKEN_MIN 32

static uv_tcp_t admin_listener;
static bool admin_running;
static const char *admin_home;
static int admin_connections;

static void on_admin_closed(uv_handle_t *h)
{
    struct admin_conn *a = h->data;
    if (--a->open_handles > 0)
        return;
    admin_connections--;
    buf_free(&a->in);
    free(a);
}

static void admin_close(struct admin_conn *a)
{
    if (uv_is_closing((uv_handle_t *)&a->tcp))
        return;
    uv_close((uv_handle_t *)&a->tcp, on_admin_closed);
    uv_close((uv_handle_t *)&a->timer, on_admin_closed);
}

static void on_admin_timeout(uv_timer_t *t)
{
    admin_close(t->data);
}

static void on_admin_written(uv_write_t *req, int status)
{
    struct admin_conn *a = req->data;
    free(req);
    admin_close(a);
}

void router_admin_format_metrics(struct buf *out)
{
    struct router_metrics m;
    router_proxy_metrics(&m);
    buf_puts(out, "# HELP skiff_router_requests_total Requests answered, by status class.\n"
                  "# TYPE skiff_router_requests_total counter\n");
    for (int c = 1; c <= 5; c++)
        buf_printf(out, "skiff_router_requests_total{code=\"%dxx\"} %llu\n", c,
                   (unsigned long long)m.requests_by_class[c]);
    buf_puts(out, "# HELP skiff_router_request_duration_seconds Time from the request's first "
                  "byte to the end of its response.\n"
                  "# TYPE skiff_router_request_duration_seconds histogram\n");
    uint64_t cumulative = 0;
    for (int b = 0; b < ROUTER_LATENCY_BUCKETS; b++) {
        cumulative += m.latency_buckets[b];
        buf_printf(out, "skiff_router_request_duration_seconds_bucket{le=\"%g\"} %llu\n",
                   (double)router_latency_bounds_us[b] / 1e6, (unsigned long long)cumulative);
    }
    cumulative += m.latency_buckets[ROUTER_LATENCY_BUCKETS];
    buf_printf(out,
               "skiff_router_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
               "skiff_router_request_duration_seconds_sum %.6f\n"
               "skiff_router_request_duration_seconds_count %llu\n",
               (unsigned long long)cumulative, (double)m.latency_sum_us / 1e6,
               (unsigned long long)cumulative);
    struct route_table *t = route_table_current();
    buf_printf(
        out,
        "# TYPE skiff_router_open_connections gauge\nskiff_router_open_connections %lld\n"
        "# TYPE skiff_router_connections_total counter\nskiff_router_connections_total %llu\n"
        "# TYPE skiff_router_connections_refused_total counter\n"
        "skiff_router_connections_refused_total %llu\n"
        "# TYPE skiff_router_upstream_connections_total counter\n"
        "skiff_router_upstream_connections_total{reused=\"false\"} %llu\n"
        "skiff_router_upstream_connections_total{reused=\"true\"} %llu\n"
        "# TYPE skiff_router_upstream_connect_failures_total counter\n"
        "skiff_router_upstream_connect_failures_total %llu\n"
        "# TYPE skiff_router_upstream_retries_total counter\n"
        "skiff_router_upstream_retries_total %llu\n"
        "# TYPE skiff_router_upstream_hedges_total counter\n"
        "skiff_router_upstream_hedges_total %llu\n"
        "# TYPE skiff_router_bad_requests_total counter\nskiff_router_bad_requests_total %llu\n"
        "# TYPE skiff_router_timeouts_total counter\nskiff_router_timeouts_total %llu\n"
        "# TYPE skiff_router_response_bytes_total counter\n"
        "skiff_router_response_bytes_total %llu\n"
        "# TYPE skiff_router_access_lines_dropped_total counter\n"
        "skiff_router_access_lines_dropped_total %llu\n"
        "# TYPE skiff_router_bus_connected gauge\nskiff_router_bus_connected %d\n"
        "# TYPE skiff_router_routes gauge\nskiff_router_routes %zu\n"
        "# TYPE skiff_router_route_table_version gauge\nskiff_router_route_table_version %lld\n",
        (long long)m.connections_open, (unsigned long long)m.connections_total,
        (unsigned long long)m.connections_refused, (unsigned long long)m.upstream_connects,
        (unsigned long long)m.upstream_reused, (unsigned long long)m.upstream_connect_failures,
        (unsigned long long)m.upstream_retries, (unsigned long long)m.upstream_hedges,
        (unsigned long long)m.bad_requests, (unsigned long long)m.timeouts,
        (unsigned long long)m.bytes_to_clients, (unsigned long long)router_bus_access_dropped(),
        router_bus_connected() ? 1 : 0, route_table_route_count(t),
        (long long)route_table_version(t));
    route_table_unref(t);
}

static void format_routes(struct buf *out)
{
    struct route_table *t = route_table_current();
    json_t *routes = json_array();
    for (size_t i = 0; i < route_table_route_count(t); i++) {
        const struct route *r = route_table_route_at(t, i);
        json_t *backends = json_array();
        for (size_t k = 0; k < r->backend_count; k++)
            json_array_append_new(backends, json_string(r->backends[k].addr_text));
        json_array_append_new(
            routes, json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:o}", "host", r->host, "path",
                              r->path, "app_guid", r->app_guid, "balance",
                              r->balance == ROUTE_BALANCE_LEAST_CONNECTION ? "least-connection"
                                                                           : "round-robin",
                              "protocol", r->protocol == ROUTE_PROTOCOL_HTTP2 ? "http2" : "http1",
                              "https_only", r->https_only, "backends", backends));
    }
    json_t *doc =
        json_pack("{s:I, s:o}", "version", (json_int_t)route_table_version(t), "routes", routes);
    char *text = json_dumps(doc, JSON_INDENT(1));
    if (text)
        buf_puts(out, text);
    buf_putc(out, '\n');
    free(text);
    json_decref(doc);
    route_table_unref(t);
}

/* The admin token from $SKIFF_HOME/api.json (malloc'd), or NULL when there is none usable. */
static char *admin_token_read(void)
{
    char *path = xasprintf("%s/api.json", admin_home);
    char *text = NULL, *token = NULL;
    if (file_read(path, &text, NULL) == 0) {
        json_t *j = json_loads(text, 0, NULL);
        const char *t = json_string_value(json_object_get(j, "token"));
        if (t && strlen(t) >= ADMIN_TOKEN_MIN)
            token = xstrdup(t);
        json_decref(j);
    }
    free(text);
    free(path);
    return token;
}

/* Whether `given` (n bytes) is the token, in time that does not depend on where they differ. */
static bool admin_token_equal(const char *given, size_t n, const char *token)
{
    unsigned char a[crypto_generichash_BYTES], b[crypto_generichash_BYTES];
    crypto_generichash(a, sizeof a, (const unsigned char *)given, n, NULL, 0);
    crypto_generichash(b, sizeof b, (const unsigned char *)token, strlen(token), NULL, 0);
    return sodium_memcmp(a, b, sizeof a) == 0;
}

static bool admin_path_is(const char *path, size_t n, const char *want)
{
    return n == strlen(want) && memcmp(path, want, n) == 0;
}

enum router_admin_answer router_admin_decide(const char *head, const char *token)
{
    const char *eol = strstr(head, "\r\n");
    if (!eol || strncmp(head, "GET /", 5) != 0)
        return ROUTER_ADMIN_NOT_FOUND;
    const char *path = head + 4, *sp = memchr(path, ' ', (size_t)(eol - path));
    if (!sp || strncmp(sp, " HTTP/1.", 8) != 0 || eol - sp != 9)
        return ROUTER_ADMIN_BAD_REQUEST;
    size_t n = (size_t)(sp - path);
    const char *query = memchr(path, '?', n);
    if (query)
        n = (size_t)(query - path);
    enum router_admin_answer what;
    if (admin_path_is(path, n, "/health"))
        return ROUTER_ADMIN_HEALTH;
    if (admin_path_is(path, n, "/metrics"))
        what = ROUTER_ADMIN_METRICS;
    else if (admin_path_is(path, n, "/routes"))
        what = ROUTER_ADMIN_ROUTES;
    else
        return ROUTER_ADMIN_NOT_FOUND;
    /* exactly one Authorization field, "Bearer" then the token and nothing else */
    const char *value = NULL;
    size_t value_len = 0;
    int count = 0;
    for (const char *line = eol + 2; strncmp(line, "\r\n", 2) != 0;) {
        const char *end = strstr(line, "\r\n");
        if (!end)
            return ROUTER_ADMIN_BAD_REQUEST;
        if ((size_t)(end - line) > 14 && strncasecmp(line, "authorization:", 14) == 0) {
            value = line + 14;
            while (value < end && (*value == ' ' || *value == '\t'))
                value++;
            const char *stop = end;
            while (stop > value && (stop[-1] == ' ' || stop[-1] == '\t'))
                stop--;
            value_len = (size_t)(stop - value);
            count++;
        }
        line = end + 2;
    }
    if (!token)
        return ROUTER_ADMIN_NO_TOKEN;
    if (count != 1 || value_len < 8 || strncasecmp(value, "Bearer ", 7) != 0)
        return ROUTER_ADMIN_UNAUTHORIZED;
    value += 7;
    value_len -= 7;
    while (value_len && *value == ' ') {
        value++;
        value_len--;
    }
    return admin_token_equal(value, value_len, token) ? what : ROUTER_ADMIN_UNAUTHORIZED;
}

static void admin_answer(struct admin_conn *a)
{
    struct buf body = {0};
    int err = SKIFF_OK;
    const char *type = "text/plain; version=0.0.4", *extra = "";
    /* the token is read only for the endpoints that need it */
    bool needs_token =
        str_has_prefix(a->in.data, "GET /metrics") || str_has_prefix(a->in.data, "GET /routes");
    char *token = needs_token ? admin_token_read() : NULL;
    switch (router_admin_decide(a->in.data, token)) {
    case ROUTER_ADMIN_METRICS:
        router_admin_format_metrics(&body);
        break;
    case ROUTER_ADMIN_HEALTH:
        buf_puts(&body, "ok\n");
        break;
    case ROUTER_ADMIN_ROUTES:
        format_routes(&body);
        type = "application/json";
        break;
    case ROUTER_ADMIN_UNAUTHORIZED:
        err = SKIFF_E_UNAUTHORIZED;
        extra = "WWW-Authenticate: Bearer\r\n";
        buf_puts(&body, "unauthorized: send \"Authorization: Bearer TOKEN\" with the admin token "
                        "from $SKIFF_HOME/api.json\n");
        break;
    case ROUTER_ADMIN_NO_TOKEN:
        err = SKIFF_E_UNAVAILABLE;
        buf_printf(&body,
                   "the router has no admin token to check against: %s/api.json has none "
                   "(skiffd writes it)\n",
                   admin_home);
        break;
    case ROUTER_ADMIN_BAD_REQUEST:
        err = SKIFF_E_BAD_REQUEST;
        buf_puts(&body, "bad request\n");
        break;
    default:
        err = SKIFF_E_NOT_FOUND;
        buf_puts(&body, "not found: try /metrics, /health or /routes\n");
        break;
    }
    /* an error's status is the one table's (common/err.h), its words the text above */
    int status = err ? skiff_err_http_status(err) : 200;
    if (err)
        type = "text/plain";
    free(token);
    struct buf resp = {0};
    buf_printf(&resp,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: "
               "close\r\n\r\n",
               status, http_status_reason(status), type, body.len, extra);
    buf_append(&resp, body.data, body.len);
    buf_free(&body);
    /* the response lives in a->in from now on, freed with the connection */
    buf_free(&a->in);
    a->in = resp;
    uv_write_t *req = xmalloc(sizeof(*req));
    req->data = a;
    uv_buf_t b = uv_buf_init(a->in.data, (unsigned)a->in.len);
    if (uv_write(req, (uv_stream_t *)&a->tcp, &b, 1, on_admin_written) < 0) {
        free(req);
        admin_close(a);
    }
}

static void on_admin_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct admin_conn *a = h->data;
    buf_reserve(&a->in, 1024);
    b->base = a->in.data + a->in.len;
    b->len = a->in.cap - a->in.len - 1;
}

static void on_admin_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct admin_conn *a = s->data;
    if (nread < 0 || a->in.len + (size_t)nread > ADMIN_MAX_REQUEST) {
        admin_close(a);
        return;
    }
    a->in.len += (size_t)nread;
    a->in.data[a->in.len] = '\0';
    if (!a->answered && strstr(a->in.data, "\r\n\r\n")) {
        a->answered = true;
        uv_read_stop(s);
        admin_answer(a);
    }
}

static void on_admin_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    struct admin_conn *a = xcalloc(1, sizeof(*a));
    uv_tcp_init(server->loop, &a->tcp);
    uv_timer_init(server->loop, &a->timer);
    a->tcp.data = a;
    a->timer.data = a;
    a->open_handles = 2;
    admin_connections++;
    if (uv_accept(server, (uv_stream_t *)&a->tcp) < 0 ||
        admin_connections > ADMIN_MAX_CONNECTIONS) {
        admin_close(a);
        return;
    }
    uv_timer_start(&a->timer, on_admin_timeout, ADMIN_TIMEOUT_MS, 0);
    uv_read_start((uv_stream_t *)&a->tcp, on_admin_alloc, on_admin_read);
}

int router_admin_start(uv_loop_t *loop, const struct router_config *cfg)
{
    if (!cfg->admin_addr || !cfg->admin_addr[0])
        return 0;
    admin_home = cfg->home;
    char host[256];
    const char *colon = strrchr(cfg->admin_addr, ':');
    if (!colon || (size_t)(colon - cfg->admin_addr) >= sizeof(host)) {
        log_error("admin address %s is not HOST:PORT", cfg->admin_addr);
        return -22;
    }
    memcpy(host, cfg->admin_addr, (size_t)(colon - cfg->admin_addr));
    host[colon - cfg->admin_addr] = '\0';
    struct sockaddr_storage ss;
    int port = atoi(colon + 1);
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0) {
        log_error("admin address %s is not an IP address and port",
                cfg->admin_addr);
        return -22;
    }
    uv_tcp_init(loop, &admin_listener);
    int r = uv_tcp_bind(&admin_listener, (struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&admin_listener, 128, on_admin_connection);
    if (r < 0) {
        log_error("cannot listen on admin address %s: %s", cfg->admin_addr, skiff_strerror(r));
        uv_close((uv_handle_t *)&admin_listener, NULL);
        return r;
    }
    admin_running = true;
    return 0;
}

void router_admin_stop(void)
{
    if (admin_running && !uv_is_closing((uv_handle_t *)&admin_listener))
        uv_close((uv_handle_t *)&admin_listener, NULL);
    admin_running = false;
}
