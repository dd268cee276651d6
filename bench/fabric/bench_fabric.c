/* bench_fabric: publishes per second into Skiff's fabric and into NATS JetStream, with one
 * harness, so the figures compare.
 *
 *   bench_fabric lib DIR SECONDS [nosync]     the fabric in-process (no HTTP)
 *   bench_fabric lib-jetstream NATS_URL SECONDS
 *                                             the fabric in-process on its JetStream backend
 *   bench_fabric http API_URL TOKEN SECONDS [SHAPE]
 *                                             POST /v1/topics/.../events[:batch] to skiffd
 *   bench_fabric jetstream NATS_URL SECONDS   js_Publish / js_PublishAsync through libnats
 *                                             (BENCH_JS_MODE names the row: jetstream-sync)
 *   bench_fabric fsync DIR SECONDS [prezero]  the bound of a durable single publish on this
 *                                             disk: a bare loop of one record's append and
 *                                             fdatasync, nothing else (shape single only);
 *                                             prezero: into zero-filled space, as the fabric
 *                                             writes (no size change to journal)
 *
 * Each mode runs three shapes and prints one line per shape:
 *   single      one publisher, one event at a time, each waiting for its acknowledgement
 *   concurrent  64 publishes in flight, one event each (HTTP: 64 connections)
 *   pipelined   HTTP only: 64 publishes in flight, one event each, pipelined on one connection
 *               (as JetStream's concurrent shape keeps its 64 on one connection)
 *   batched     100 events per publish, 8 publishes in flight (JetStream has no batch
 *               publish: async publishes with 800 in flight)
 * Line format: "MODE SHAPE EVENTS SECONDS EVENTS_PER_SECOND". */
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <nats/nats.h>

#include "common/buf.h"
#include "common/util.h"
#include "fabric/cloudevents.h"
#include "fabric/fabric.h"

#define PAYLOAD_BYTES 200
#define CONCURRENT 64
#define BATCH 100
#define BATCHES_IN_FLIGHT 8

static char payload[PAYLOAD_BYTES + 1];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(const char *mode, const char *shape, uint64_t events, double secs)
{
    printf("%s %s %" PRIu64 " %.2f %.0f\n", mode, shape, events, secs, (double)events / secs);
    fflush(stdout);
}

/* Acknowledgement latencies of the single shape (one publish at a time). */
#define LATENCY_MAX 2000000
static double *latencies;
static size_t nlatencies;

static void latency_add(double secs)
{
    if (!latencies)
        latencies = xcalloc(LATENCY_MAX, sizeof(*latencies));
    if (nlatencies < LATENCY_MAX)
        latencies[nlatencies++] = secs;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void free_latencies(void)
{
    free(latencies);
}

/* Prints "MODE latency P50_US P99_US" and forgets the samples. */
static void report_latency(const char *mode)
{
    if (!nlatencies)
        return;
    qsort(latencies, nlatencies, sizeof(*latencies), compare_double);
    printf("%s latency %.0f %.0f\n", mode, latencies[nlatencies / 2] * 1e6,
           latencies[nlatencies * 99 / 100] * 1e6);
    fflush(stdout);
    nlatencies = 0;
}

/* ---- a bare append + fdatasync loop ---------------------------------------------------- */

/* prezero: the records overwrite a file already written with zeros and synced, as the fabric's
 * do (its segments keep zero-filled space ahead), so fdatasync flushes data and no metadata:
 * the floor of one durable publish on this disk. Otherwise the file grows with each record. */
#define PREZERO_BYTES (64u << 20)
static int run_fsync(const char *dir, double seconds, bool prezero)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/fsync-loop", dir);
    mkdir_p(dir, 0700);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "bench: cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (prezero) {
        static const char zeros[1 << 16];
        for (off_t pos = 0; pos < (off_t)PREZERO_BYTES; pos += (off_t)sizeof zeros)
            if (pwrite(fd, zeros, sizeof zeros, pos) != (ssize_t)sizeof zeros)
                break;
        if (fdatasync(fd) < 0 || lseek(fd, 0, SEEK_SET) < 0) {
            fprintf(stderr, "bench: zero-filling %s: %s\n", path, strerror(errno));
            close(fd);
            return 1;
        }
    }
    const char *mode = prezero ? "fdatasync-prezero" : "fdatasync-loop";
    char rec[PAYLOAD_BYTES + 56]; /* about a stored record: its header, attributes, data */
    memset(rec, 'x', sizeof rec);
    uint64_t n = 0;
    double t0 = now_s(), deadline = t0 + seconds;
    for (double t = t0; t < deadline; n++) {
        if (prezero && (n + 1) * sizeof rec > PREZERO_BYTES)
            break;
        if (write(fd, rec, sizeof rec) != (ssize_t)sizeof rec || fdatasync(fd) < 0) {
            fprintf(stderr, "bench: append + fdatasync: %s\n", strerror(errno));
            close(fd);
            return 1;
        }
        double now = now_s();
        latency_add(now - t);
        t = now;
    }
    close(fd);
    unlink(path);
    report(mode, "single", n, now_s() - t0);
    report_latency(mode);
    return 0;
}

/* ---- in-process fabric ------------------------------------------------------------------- */

struct lib_run {
    struct fabric *f;
    struct fabric_blob blobs[BATCH];
    size_t per_append;
    int in_flight, window;
    double deadline;
    double sent_at; /* single shape: when the publish in flight was made */
    uint64_t acked;
    int failed;
    bool stop;
};

static void lib_publish(struct lib_run *r);

static void lib_on_durable(void *arg, int status, uint64_t first, size_t count)
{
    struct lib_run *r = arg;
    r->in_flight--;
    if (status < 0)
        r->failed = status;
    r->acked += count;
    if (r->window == 1)
        latency_add(now_s() - r->sent_at);
    if (now_s() >= r->deadline)
        r->stop = true;
    lib_publish(r);
}

static void lib_publish(struct lib_run *r)
{
    while (!r->stop && r->in_flight < r->window) {
        r->sent_at = now_s();
        int rc = fabric_append(r->f, "bench", r->blobs, r->per_append, lib_on_durable, r, NULL);
        if (rc < 0) {
            r->failed = rc;
            r->stop = true;
            return;
        }
        r->in_flight++;
    }
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

/* nats_url: the fabric on JetStream instead of the embedded log in dir */
static int run_lib(const char *dir, double seconds, bool nosync, const char *nats_url)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct fabric_config cfg = {.dir = dir, .no_sync = nosync, .nats_url = nats_url};
    char err[256];
    struct fabric *f;
    if (fabric_open(&loop, &cfg, &f, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench: %s\n", err);
        return 1;
    }
    /* The record a publish of a 200-byte JSON event stores. */
    struct cloudevent ev = {.id = "8a2f3c1e-0000-4000-8000-000000000000",
                            .source = "/apps/bench",
                            .type = "bench.event",
                            .specversion = "1.0",
                            .time = "2026-11-27T11:09:56.123Z",
                            .datacontenttype = "application/json",
                            .data = payload,
                            .data_len = PAYLOAD_BYTES};
    struct buf rec = {0};
    cloudevent_encode_record(&ev, &rec);
    const char *mode = nats_url ? "skiff-lib-js" : nosync ? "skiff-lib-nosync" : "skiff-lib";
    struct {
        const char *shape;
        size_t per;
        int window;
    } shapes[] = {
        {"single", 1, 1}, {"concurrent", 1, CONCURRENT}, {"batched", BATCH, BATCHES_IN_FLIGHT}};
    for (size_t s = 0; s < 3; s++) {
        struct lib_run r = {.f = f, .per_append = shapes[s].per, .window = shapes[s].window};
        for (size_t i = 0; i < BATCH; i++)
            r.blobs[i] = (struct fabric_blob){rec.data, rec.len};
        double t0 = now_s();
        r.deadline = t0 + seconds;
        lib_publish(&r);
        while (r.in_flight > 0)
            uv_run(&loop, UV_RUN_ONCE);
        if (r.failed < 0) {
            fprintf(stderr, "bench: append failed: %s\n", fabric_strerror(r.failed));
            return 1;
        }
        report(mode, shapes[s].shape, r.acked, now_s() - t0);
        if (s == 0)
            report_latency(mode);
    }
    struct fabric_stats st;
    fabric_get_stats(f, &st);
    fprintf(stderr, "%s: %" PRIu64 " appends in %" PRIu64 " group commits (%.1f per fsync)\n", mode,
            st.appends, st.syncs, st.syncs ? (double)st.appends / (double)st.syncs : 0.0);
    bool closed = false;
    fabric_close(f, on_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    uv_loop_close(&loop);
    buf_free(&rec);
    return 0;
}

/* ---- HTTP against skiffd ----------------------------------------------------------------- */

struct http_run;

struct http_conn {
    uv_tcp_t tcp;
    uv_connect_t connect;
    struct http_run *run;
    struct buf in;
    int inflight;
    double sent_at;
};

struct http_run {
    uv_loop_t *loop;
    struct sockaddr_in addr;
    struct buf request; /* one whole request, sent again and again */
    size_t events_per_request;
    struct http_conn *conns;
    int nconns;
    int window; /* requests in flight per connection (pipelined) */
    double deadline;
    uint64_t acked;
    int open;
    bool stop;
    int failed_status;
};

static void http_send(struct http_conn *c);

static void http_on_write(uv_write_t *w, int status)
{
    free(w);
}

static void http_on_close(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    c->run->open--;
}

static void http_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    b->base = xmalloc(65536);
    b->len = 65536;
}

/* Consumes whole responses from c->in; returns false on a bad one. */
static bool http_parse(struct http_conn *c)
{
    for (;;) {
        char *end = memmem(c->in.data, c->in.len, "\r\n\r\n", 4);
        if (!end)
            return true;
        size_t head = (size_t)(end - c->in.data) + 4;
        int status = atoi(c->in.data + 9);
        const char *cl = strcasestr(c->in.data, "content-length:");
        size_t body = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
        if (c->in.len < head + body)
            return true;
        buf_consume(&c->in, head + body);
        c->inflight--;
        if (status != 202) {
            c->run->failed_status = status;
            return false;
        }
        c->run->acked += c->run->events_per_request;
        if (c->run->nconns == 1 && c->run->window == 1)
            latency_add(now_s() - c->sent_at);
        if (now_s() >= c->run->deadline)
            c->run->stop = true;
        if (!c->run->stop)
            http_send(c);
    }
}

static void http_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct http_conn *c = s->data;
    if (n > 0)
        buf_append(&c->in, b->base, (size_t)n);
    free(b->base);
    if (n < 0 || !http_parse(c) || (c->run->stop && !c->inflight)) {
        if (n < 0 && !c->run->stop)
            c->run->failed_status = -1;
        c->run->stop = c->run->stop || n < 0 || c->run->failed_status;
        if (!uv_is_closing((uv_handle_t *)&c->tcp))
            uv_close((uv_handle_t *)&c->tcp, http_on_close);
    }
}

static void http_send(struct http_conn *c)
{
    uv_write_t *w = xmalloc(sizeof(*w));
    uv_buf_t b = uv_buf_init(c->run->request.data, (unsigned)c->run->request.len);
    c->inflight++;
    c->sent_at = now_s();
    if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, http_on_write) < 0)
        free(w);
}

static void http_on_connect(uv_connect_t *req, int status)
{
    struct http_conn *c = req->data;
    if (status < 0) {
        fprintf(stderr, "bench: connect: %s\n", uv_strerror(status));
        c->run->stop = true;
        c->run->failed_status = -1;
        uv_close((uv_handle_t *)&c->tcp, http_on_close);
        return;
    }
    uv_read_start((uv_stream_t *)&c->tcp, http_alloc, http_on_read);
    for (int i = 0; i < c->run->window; i++)
        http_send(c);
}

static int run_http_shape(const char *url, const char *token, double seconds, const char *shape,
                          int nconns, int window, size_t per_request)
{
    char host[64] = "127.0.0.1";
    int port = 8090;
    if (sscanf(url, "http://%63[^:]:%d", host, &port) < 2) {
        fprintf(stderr, "bench: API URL %s is not http://HOST:PORT\n", url);
        return 1;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct http_run run = {
        .loop = &loop, .events_per_request = per_request, .nconns = nconns, .window = window};
    uv_ip4_addr(host, port, &run.addr);
    struct buf body = {0};
    if (per_request == 1) {
        buf_printf(&body, "{\"pad\":\"%.*s\"}", PAYLOAD_BYTES - 10, payload);
        buf_printf(&run.request,
                   "POST /v1/topics/bench/events HTTP/1.1\r\nHost: %s\r\n"
                   "Authorization: Bearer %s\r\nce-specversion: 1.0\r\nce-id: bench-1\r\n"
                   "ce-source: /bench\r\nce-type: bench.event\r\n"
                   "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                   host, token, body.len, body.data);
    } else {
        buf_putc(&body, '[');
        for (size_t i = 0; i < per_request; i++)
            buf_printf(&body,
                       "%s{\"specversion\":\"1.0\",\"id\":\"bench-%zu\",\"source\":\"/bench\","
                       "\"type\":\"bench.event\",\"data\":{\"pad\":\"%.*s\"}}",
                       i ? "," : "", i, PAYLOAD_BYTES - 10, payload);
        buf_putc(&body, ']');
        buf_printf(&run.request,
                   "POST /v1/topics/bench/events:batch HTTP/1.1\r\nHost: %s\r\n"
                   "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\n\r\n%s",
                   host, token, body.len, body.data);
    }
    buf_free(&body);
    run.conns = xcalloc((size_t)nconns, sizeof(*run.conns));
    double t0 = now_s();
    run.deadline = t0 + seconds;
    for (int i = 0; i < nconns; i++) {
        struct http_conn *c = &run.conns[i];
        c->run = &run;
        uv_tcp_init(&loop, &c->tcp);
        uv_tcp_nodelay(&c->tcp, 1);
        c->tcp.data = c;
        c->connect.data = c;
        uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&run.addr, http_on_connect);
        run.open++;
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    double secs = now_s() - t0;
    for (int i = 0; i < nconns; i++)
        buf_free(&run.conns[i].in);
    free(run.conns);
    buf_free(&run.request);
    uv_loop_close(&loop);
    if (run.failed_status) {
        fprintf(stderr, "bench: publish failed (status %d)\n", run.failed_status);
        return 1;
    }
    /* BENCH_HTTP_MODE names the row: skiffd on another backend (bench.sh) */
    const char *mode = getenv("BENCH_HTTP_MODE") ? getenv("BENCH_HTTP_MODE") : "skiff-http";
    report(mode, shape, run.acked, secs);
    report_latency(mode);
    return 0;
}

/* Every shape, or only the one named (so that a caller can measure skiffd between shapes). */
static int run_http(const char *url, const char *token, double seconds, const char *only)
{
    struct {
        const char *shape;
        int nconns, window;
        size_t per_request;
    } shapes[] = {{"single", 1, 1, 1},
                  {"concurrent", CONCURRENT, 1, 1},
                  {"pipelined", 1, CONCURRENT, 1},
                  {"batched", BATCHES_IN_FLIGHT, 1, BATCH}};
    bool found = false;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        if (only && strcmp(only, shapes[s].shape))
            continue;
        found = true;
        if (run_http_shape(url, token, seconds, shapes[s].shape, shapes[s].nconns,
                           shapes[s].window, shapes[s].per_request))
            return 1;
    }
    if (!found)
        fprintf(stderr, "bench: no shape %s (single, concurrent, pipelined, batched)\n", only);
    return !found;
}

/* ---- NATS JetStream ---------------------------------------------------------------------- */

static int run_jetstream(const char *url, double seconds)
{
    /* BENCH_JS_MODE names the row: a server configured otherwise (bench.sh) */
    const char *mode = getenv("BENCH_JS_MODE") ? getenv("BENCH_JS_MODE") : "jetstream";
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    jsStreamConfig sc;
    jsErrCode jerr = 0;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s == NATS_OK)
        s = jsOptions_Init(&jo);
    if (s == NATS_OK) {
        jo.PublishAsync.MaxPending = BATCH * BATCHES_IN_FLIGHT;
        s = natsConnection_JetStream(&js, nc, &jo);
    }
    if (s == NATS_OK)
        s = jsStreamConfig_Init(&sc);
    const char *subjects[] = {"bench"};
    if (s == NATS_OK) {
        sc.Name = "BENCH";
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Storage = js_FileStorage;
        s = js_AddStream(NULL, js, &sc, NULL, &jerr);
    }
    if (s != NATS_OK) {
        fprintf(stderr, "bench: JetStream set-up failed: %s (%d)\n", natsStatus_GetText(s),
                (int)jerr);
        return 1;
    }
    /* single: each publish waits for its ack */
    double t0 = now_s();
    uint64_t n = 0;
    while (now_s() < t0 + seconds) {
        jsPubAck *ack = NULL;
        double sent = now_s();
        if (js_Publish(&ack, js, "bench", payload, PAYLOAD_BYTES, NULL, &jerr) != NATS_OK) {
            fprintf(stderr, "bench: js_Publish failed\n");
            return 1;
        }
        jsPubAck_Destroy(ack);
        latency_add(now_s() - sent);
        n++;
    }
    report(mode, "single", n, now_s() - t0);
    report_latency(mode);
    /* concurrent and batched: async publishes with a window of acks in flight */
    int windows[] = {CONCURRENT, BATCH * BATCHES_IN_FLIGHT};
    const char *names[] = {"concurrent", "batched"};
    for (int w = 0; w < 2; w++) {
        jsCtx *ajs = NULL;
        jsOptions_Init(&jo);
        jo.PublishAsync.MaxPending = windows[w];
        natsConnection_JetStream(&ajs, nc, &jo);
        t0 = now_s();
        n = 0;
        while (now_s() < t0 + seconds) {
            for (int k = 0; k < 100; k++) {
                if (js_PublishAsync(ajs, "bench", payload, PAYLOAD_BYTES, NULL) != NATS_OK) {
                    fprintf(stderr, "bench: js_PublishAsync failed\n");
                    return 1;
                }
                n++;
            }
        }
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 30000;
        if (js_PublishAsyncComplete(ajs, &po) != NATS_OK) {
            fprintf(stderr, "bench: JetStream acks did not all come\n");
            return 1;
        }
        report(mode, names[w], n, now_s() - t0);
        jsCtx_Destroy(ajs);
    }
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return 0;
}

int main(int argc, char **argv)
{
    atexit(free_latencies);
    memset(payload, 'x', PAYLOAD_BYTES);
    if (argc >= 4 && !strcmp(argv[1], "lib"))
        return run_lib(argv[2], atof(argv[3]), argc > 4 && !strcmp(argv[4], "nosync"), NULL);
    if (argc >= 4 && !strcmp(argv[1], "lib-jetstream"))
        return run_lib(NULL, atof(argv[3]), false, argv[2]);
    if (argc >= 5 && !strcmp(argv[1], "http"))
        return run_http(argv[2], argv[3], atof(argv[4]), argc > 5 ? argv[5] : NULL);
    if (argc >= 4 && !strcmp(argv[1], "fsync"))
        return run_fsync(argv[2], atof(argv[3]), argc > 4 && !strcmp(argv[4], "prezero"));
    if (argc >= 4 && !strcmp(argv[1], "jetstream"))
        return run_jetstream(argv[2], atof(argv[3]));
    fprintf(stderr,
            "usage: bench_fabric lib DIR SECONDS [nosync] | http API_URL TOKEN SECONDS [SHAPE] |"
            " jetstream NATS_URL SECONDS | fsync DIR SECONDS [prezero]\n");
    return 2;
}
