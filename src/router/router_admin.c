/* The admin port: GET /metrics (Prometheus text), GET /health, GET /routes (the table in use).
 * One short request per connection; anything else is a 404. It is meant for loopback. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
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

static uv_tcp_t admin_listener;
static bool admin_running;

static void on_admin_closed(uv_handle_t *h)
{
    struct admin_conn *a = h->data;
    if (--a->open_handles > 0)
        return;
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
        (unsigned long long)m.upstream_retries, (unsigned long long)m.bad_requests,
        (unsigned long long)m.timeouts, (unsigned long long)m.bytes_to_clients,
        (unsigned long long)router_bus_access_dropped(), router_bus_connected() ? 1 : 0,
        route_table_route_count(t), (long long)route_table_version(t));
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
        json_array_append_new(routes, json_pack("{s:s, s:s, s:s, s:s, s:o}", "host", r->host,
                                                "path", r->path, "app_guid", r->app_guid, "balance",
                                                r->balance == ROUTE_BALANCE_LEAST_CONNECTION
                                                    ? "least-connection"
                                                    : "round-robin",
                                                "backends", backends));
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

static void admin_answer(struct admin_conn *a)
{
    struct buf body = {0};
    int status = 200;
    const char *type = "text/plain; version=0.0.4";
    if (str_has_prefix(a->in.data, "GET /metrics ") || str_has_prefix(a->in.data, "GET /metrics?"))
        router_admin_format_metrics(&body);
    else if (str_has_prefix(a->in.data, "GET /health "))
        buf_puts(&body, "ok\n");
    else if (str_has_prefix(a->in.data, "GET /routes ")) {
        format_routes(&body);
        type = "application/json";
    } else {
        status = 404;
        buf_puts(&body, "not found: try /metrics, /health or /routes\n");
    }
    struct buf resp = {0};
    buf_printf(&resp,
               "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: "
               "close\r\n\r\n",
               status, status == 200 ? "OK" : "Not Found", type, body.len);
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
    if (uv_accept(server, (uv_stream_t *)&a->tcp) < 0) {
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
    char host[256];
    const char *colon = strrchr(cfg->admin_addr, ':');
    if (!colon || (size_t)(colon - cfg->admin_addr) >= sizeof(host)) {
        fprintf(stderr, "skiff-router: admin address %s is not HOST:PORT\n", cfg->admin_addr);
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
        fprintf(stderr, "skiff-router: admin address %s is not an IP address and port\n",
                cfg->admin_addr);
        return -22;
    }
    uv_tcp_init(loop, &admin_listener);
    int r = uv_tcp_bind(&admin_listener, (struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&admin_listener, 128, on_admin_connection);
    if (r < 0) {
        fprintf(stderr, "skiff-router: cannot listen on admin address %s: %s\n", cfg->admin_addr,
                uv_strerror(r));
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
