/* The router's side of the bus (docs/bus.md): a Unix socket client on the main loop that
 * receives route tables and drain requests and sends hello, access lines, wake and drained;
 * it reconnects every 100 ms-1 s while skiffd is away, and the last table is saved so a
 * restarted router serves at once. */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/start_trace.h"
#include "common/util.h"
#include "router/route_table.h"
#include "router/router_internal.h"

#define BUS_MAX_LINE (64u * 1024 * 1024)  /* a routes message for a very large platform */
#define BUS_MAX_QUEUED (4u * 1024 * 1024) /* access lines waiting to be sent */
/* Access lines wait up to this long to go out together: one write and one wakeup of skiffd
 * for all the lines of that time instead of one per worker loop turn (bench/router/README.md,
 * "Inside the platform"). Logs may be that late; wake and drained go at once. */
#define BUS_ACCESS_FLUSH_MS 10
#define BUS_FLUSH_NOW_BYTES (256u * 1024) /* or as soon as this much waits */
/* The average of requests in flight over each second, integrated over time by the workers
 * (route_stats_take_average), goes to skiffd once a second (docs/bus.md "metrics"): the
 * autoscaler's input, never one message per request. */
#define BUS_METRICS_INTERVAL_MS 1000

static struct {
    uv_loop_t *loop;
    const struct router_config *cfg;
    char *sock_path;
    char *saved_path;
    uv_pipe_t pipe;
    bool pipe_open;
    bool connected; /* atomic: read by workers */
    bool stopping;
    uv_connect_t connect_req;
    uv_timer_t retry;
    int retry_ms;
    struct buf in;
    uv_async_t wake;
    uv_timer_t flush;
    uv_timer_t metrics;
    pthread_mutex_t lock;
    struct buf queue;        /* access lines (JSON, one a line) written by workers */
    bool urgent;             /* the queue holds a message to send at once (under lock) */
    uint64_t dropped;        /* atomic */
    char *unknown_types[16]; /* message types already logged as unknown */
    size_t unknown_count;
} bus = {.lock = PTHREAD_MUTEX_INITIALIZER};

bool router_bus_connected(void)
{
    return __atomic_load_n(&bus.connected, __ATOMIC_RELAXED);
}
uint64_t router_bus_access_dropped(void)
{
    return __atomic_load_n(&bus.dropped, __ATOMIC_RELAXED);
}

static void bus_schedule_retry(void);

static void on_bus_write(uv_write_t *req, int status)
{
    free(req->data);
    free(req);
}

void router_bus_set_connected(bool connected)
{
    __atomic_store_n(&bus.connected, connected, __ATOMIC_RELAXED);
}

static void bus_send(char *owned, size_t len)
{
    if (router_nats_active()) {
        router_nats_send(owned, len);
        free(owned);
        return;
    }
    if (!bus.pipe_open || !bus.connected) {
        free(owned);
        return;
    }
    uv_write_t *req = xmalloc(sizeof(*req));
    req->data = owned;
    uv_buf_t b = uv_buf_init(owned, (unsigned)len);
    if (uv_write(req, (uv_stream_t *)&bus.pipe, &b, 1, on_bus_write) < 0) {
        free(owned);
        free(req);
    }
}

/* Queues lines for the main thread to send; it is woken only when the queue was empty, grows
 * past BUS_FLUSH_NOW_BYTES or gets an urgent message, so workers rarely signal. */
static void bus_queue_lines(const char *lines, size_t len, size_t count, bool urgent)
{
    if (!router_bus_connected()) {
        __atomic_add_fetch(&bus.dropped, count, __ATOMIC_RELAXED);
        return;
    }
    bool queued = false, signal = false;
    pthread_mutex_lock(&bus.lock);
    if (bus.queue.len < BUS_MAX_QUEUED) {
        signal = bus.queue.len == 0 || urgent ||
                 (bus.queue.len < BUS_FLUSH_NOW_BYTES && bus.queue.len + len >= BUS_FLUSH_NOW_BYTES);
        buf_append(&bus.queue, lines, len);
        bus.urgent |= urgent;
        queued = true;
    }
    pthread_mutex_unlock(&bus.lock);
    if (signal)
        uv_async_send(&bus.wake);
    else if (!queued)
        __atomic_add_fetch(&bus.dropped, count, __ATOMIC_RELAXED);
}

void router_bus_send_lines(const char *lines, size_t len, size_t count)
{
    bus_queue_lines(lines, len, count, false);
}

static void bus_queue(json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        __atomic_add_fetch(&bus.dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: the line is sent by length */
    bus_queue_lines(text, len + 1, 1, true);
    free(text);
}

void router_bus_count_dropped(size_t count)
{
    __atomic_add_fetch(&bus.dropped, count, __ATOMIC_RELAXED);
}

void router_bus_wake(const char *app_guid)
{
    bus_queue(json_pack("{s:s, s:s}", "type", "wake", "app_guid", app_guid));
}

void router_bus_drained(uint64_t id)
{
    if (router_nats_drained(id))
        return;
    bus_queue(json_pack("{s:s, s:I}", "type", "drained", "id", (json_int_t)id));
}

int router_bus_parse_drain(const json_t *msg, struct sockaddr_storage *addr, socklen_t *addr_len,
                           uint64_t *id, char *err, size_t errsize)
{
    const char *text = json_string_value(json_object_get(msg, "addr"));
    json_t *n = json_object_get(msg, "id");
    if (!json_is_integer(n) || json_integer_value(n) <= 0) {
        snprintf(err, errsize, "a drain request needs a positive integer \"id\"");
        return -EINVAL;
    }
    if (!text || route_table_parse_addr(text, addr, addr_len) < 0) {
        snprintf(err, errsize, "a drain request needs \"addr\" as HOST:PORT, not %s",
                 text ? text : "nothing");
        return -EINVAL;
    }
    *id = (uint64_t)json_integer_value(n);
    return 0;
}

bool router_bus_unknown_type_is_new(const char *type)
{
    const char *key = type ? type : "";
    for (size_t i = 0; i < bus.unknown_count; i++)
        if (strcmp(bus.unknown_types[i], key) == 0)
            return false;
    if (bus.unknown_count < sizeof(bus.unknown_types) / sizeof(bus.unknown_types[0]))
        bus.unknown_types[bus.unknown_count++] = xstrdup(key);
    return true; /* past the bound every new type is logged: still rare, never silent */
}

static void bus_flush(void)
{
    pthread_mutex_lock(&bus.lock);
    size_t len = bus.queue.len;
    char *data = len ? buf_steal(&bus.queue) : NULL;
    bus.urgent = false;
    pthread_mutex_unlock(&bus.lock);
    if (data)
        bus_send(data, len);
}

static void on_bus_flush(uv_timer_t *t)
{
    bus_flush();
}

static void on_bus_wake(uv_async_t *a)
{
    pthread_mutex_lock(&bus.lock);
    bool now = bus.urgent || bus.queue.len >= BUS_FLUSH_NOW_BYTES;
    pthread_mutex_unlock(&bus.lock);
    if (now) {
        uv_timer_stop(&bus.flush);
        bus_flush();
    } else if (!uv_is_active((uv_handle_t *)&bus.flush)) {
        uv_timer_start(&bus.flush, on_bus_flush, BUS_ACCESS_FLUSH_MS, 0);
    }
}

/* Adds one process's second to the report; a process is reported while busy and once more
 * when it went quiet, so skiffd sees it drop to zero. */
static void bus__metrics_report(void *ctx, struct route_stats *st)
{
    json_t *apps = ctx;
    double avg = route_stats_take_average(st, uv_hrtime() / 1000);
    uint64_t total = __atomic_load_n(&st->requests, __ATOMIC_RELAXED);
    uint64_t requests = total - st->requests_reported;
    st->requests_reported = total;
    bool busy = avg > 0 || requests > 0;
    if (busy || st->reported_busy)
        json_array_append_new(apps, json_pack("{s:s, s:s, s:f, s:I}", "app_guid", st->app_guid,
                                              "process", st->process, "in_flight", avg, "requests",
                                              (json_int_t)requests));
    st->reported_busy = busy;
}

static void on_bus_metrics(uv_timer_t *t)
{
    json_t *apps = json_array();
    route_stats_each(bus__metrics_report, apps);
    if (json_array_size(apps) == 0 || !router_bus_connected()) {
        json_decref(apps);
        return;
    }
    json_t *msg =
        json_pack("{s:s, s:i, s:i, s:o}", "type", "metrics", "router_index", bus.cfg->router_index,
                  "interval_ms", BUS_METRICS_INTERVAL_MS, "apps", apps);
    char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (!text)
        return;
    size_t len = strlen(text);
    text[len] = '\n';
    /* not urgent: it goes with the next batch of access lines, at most BUS_ACCESS_FLUSH_MS on */
    bus_queue_lines(text, len + 1, 1, false);
    free(text);
}

int64_t router_bus_apply_routes(const char *line, size_t len, bool save)
{
    char err[256];
    int skipped = 0;
    struct route_table *t;
    if (route_table_parse(line, len, &t, err, sizeof(err), &skipped) < 0) {
        log_warning("ignoring a routes message: %s", err);
        return -EINVAL;
    }
    int64_t version = route_table_version(t);
    if (skipped)
        log_warning("%d invalid route(s) or backend(s) skipped in version %lld",
                skipped, (long long)route_table_version(t));
    struct route_table *old = route_table_current();
    struct route_addr *lost = NULL;
    size_t lost_count = route_table_lost(old, t, &lost);
    route_table_unref(old);
    route_table_publish(t);
    start_trace("router: table published");
    router_proxy_table_published();
    for (size_t i = 0; i < lost_count; i++)
        log_info("backend %s left the table without a drain: its requests in flight go to "
                 "another instance, or are answered 502 backend-lost",
                 lost[i].text);
    if (lost_count) /* after the publish: the workers re-route with the new table */
        router_proxy_backends_lost(lost, lost_count);
    free(lost);
    if (save)
        router_bus_save_routes(line, len);
    return version;
}

void router_bus_save_routes(const char *line, size_t len)
{
    int r = file_write_atomic(bus.saved_path, line, len, 0600);
    if (r < 0)
        log_error("cannot save %s: %s", bus.saved_path, skiff_strerror(r));
}

static void bus_handle_line(const char *line, size_t len)
{
    json_error_t jerr;
    json_t *o = json_loadb(line, len, 0, &jerr);
    const char *type = json_string_value(json_object_get(o, "type"));
    if (type && strcmp(type, "routes") == 0) {
        json_decref(o); /* the table parser reads the line itself */
        int64_t version = router_bus_apply_routes(line, len, false);
        if (version >= 0) { /* served from now on: skiffd may tell clients so (docs/bus.md) */
            char *ack = xasprintf("{\"type\":\"ack\",\"version\":%lld}\n", (long long)version);
            bus_send(ack, strlen(ack));
            /* saved after the ack: the save's fsync (tens of ms on a busy disk) is for a
             * restart, and would hold up every instance waiting to be shown RUNNING */
            router_bus_save_routes(line, len);
        }
        return;
    }
    if (type && strcmp(type, "drain") == 0) {
        struct sockaddr_storage addr;
        socklen_t addr_len;
        uint64_t id;
        char err[160];
        if (router_bus_parse_drain(o, &addr, &addr_len, &id, err, sizeof(err)) == 0)
            router_proxy_drain(&addr, addr_len, id);
        else
            log_warning("ignoring a drain request: %s", err);
    } else if (type && strcmp(type, "certs") == 0) {
        router_tls_reload(bus.cfg); /* skiffd changed a certificate file */
    } else if (router_bus_unknown_type_is_new(type)) {
        if (type)
            log_warning("skipping bus messages of type \"%s\", which this router does "
                    "not know (is skiffd newer?)",
                    type);
        else
            log_warning("skipping a bus line that is not a JSON object with "
                            "a \"type\"");
    }
    json_decref(o);
}

static void on_pipe_closed(uv_handle_t *h)
{
    bus.pipe_open = false;
    if (!bus.stopping)
        bus_schedule_retry();
}

static void bus_disconnect(void)
{
    __atomic_store_n(&bus.connected, false, __ATOMIC_RELAXED);
    bus.in.len = 0;
    if (bus.pipe_open && !uv_is_closing((uv_handle_t *)&bus.pipe))
        uv_close((uv_handle_t *)&bus.pipe, on_pipe_closed);
}

static void on_bus_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    buf_reserve(&bus.in, 64 * 1024);
    b->base = bus.in.data + bus.in.len;
    b->len = bus.in.cap - bus.in.len - 1;
}

static void on_bus_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    if (nread < 0) {
        log_warning("bus closed (%s); serving the last route table",
                uv_strerror((int)nread));
        bus_disconnect();
        return;
    }
    bus.in.len += (size_t)nread;
    bus.in.data[bus.in.len] = '\0';
    size_t pos = 0, n;
    char *line;
    while ((line = buf_next_line(&bus.in, &pos, &n)))
        if (n)
            bus_handle_line(line, n);
    buf_consume(&bus.in, pos);
    if (bus.in.len > BUS_MAX_LINE) {
        log_warning("a bus message is over %u bytes; reconnecting",
                BUS_MAX_LINE);
        bus_disconnect();
    }
}

static void on_bus_connect(uv_connect_t *req, int status)
{
    if (status < 0) {
        bus_disconnect();
        return;
    }
    bus.retry_ms = 100;
    __atomic_store_n(&bus.connected, true, __ATOMIC_RELAXED);
    char *hello = xasprintf("{\"type\":\"hello\",\"pid\":%d,\"router_index\":%d}\n", (int)getpid(),
                            bus.cfg->router_index);
    bus_send(hello, strlen(hello));
    uv_read_start((uv_stream_t *)&bus.pipe, on_bus_alloc, on_bus_read);
}

static void bus_connect(uv_timer_t *t)
{
    if (bus.stopping || bus.pipe_open)
        return;
    uv_pipe_init(bus.loop, &bus.pipe, 0);
    bus.pipe_open = true;
    uv_pipe_connect(&bus.connect_req, &bus.pipe, bus.sock_path, on_bus_connect);
}

static void bus_schedule_retry(void)
{
    uv_timer_start(&bus.retry, bus_connect, (uint64_t)bus.retry_ms, 0);
    bus.retry_ms = bus.retry_ms * 2 > 1000 ? 1000 : bus.retry_ms * 2;
}

void router_bus_load_saved(const struct router_config *cfg)
{
    char *path = xasprintf("%s/run/routes.json", cfg->home);
    char *data = NULL;
    size_t len = 0;
    if (file_read(path, &data, &len) == 0) {
        char err[256];
        struct route_table *t;
        if (route_table_parse(data, len, &t, err, sizeof(err), NULL) == 0)
            route_table_publish(t);
        else
            log_warning("ignoring %s: %s", path, err);
    }
    free(data);
    free(path);
}

int router_bus_start(uv_loop_t *loop, const struct router_config *cfg)
{
    bus.loop = loop;
    bus.cfg = cfg;
    bus.sock_path = xasprintf("%s/run/bus.sock", cfg->home);
    bus.saved_path = xasprintf("%s/run/routes.json", cfg->home);
    bus.retry_ms = 100;
    uv_timer_init(loop, &bus.retry);
    uv_async_init(loop, &bus.wake, on_bus_wake);
    uv_timer_init(loop, &bus.flush);
    uv_timer_init(loop, &bus.metrics);
    uv_timer_start(&bus.metrics, on_bus_metrics, BUS_METRICS_INTERVAL_MS, BUS_METRICS_INTERVAL_MS);
    if (cfg->nats_urls && *cfg->nats_urls)
        return router_nats_start(loop, cfg); /* instead of skiffd's socket */
    bus_connect(&bus.retry);
    return 0;
}

void router_bus_stop(void)
{
    router_nats_stop();
    bus.stopping = true;
    __atomic_store_n(&bus.connected, false, __ATOMIC_RELAXED);
    uv_close((uv_handle_t *)&bus.retry, NULL);
    uv_close((uv_handle_t *)&bus.wake, NULL);
    uv_close((uv_handle_t *)&bus.flush, NULL);
    uv_close((uv_handle_t *)&bus.metrics, NULL);
    if (bus.pipe_open && !uv_is_closing((uv_handle_t *)&bus.pipe))
        uv_close((uv_handle_t *)&bus.pipe, NULL);
}

void router_bus_free(void)
{
    buf_free(&bus.in);
    buf_free(&bus.queue);
    free(bus.sock_path);
    free(bus.saved_path);
    for (size_t i = 0; i < bus.unknown_count; i++)
        free(bus.unknown_types[i]);
    bus.unknown_count = 0;
    bus.sock_path = bus.saved_path = NULL;
}
