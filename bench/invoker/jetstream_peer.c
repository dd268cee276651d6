/* jetstream_peer: the NATS JetStream side of the delivery benchmark, so Skiff's deliveries/s
 * and publish-to-invocation latency have a peer measured in the same run.
 *
 *   jetstream_peer NATS_URL [EVENTS [RATE [SECONDS]]]     (defaults 20000, 1000, 5)
 *
 * Against a nats-server it is given (JetStream on, file storage), it measures:
 *   1. deliveries/s: EVENTS events of 200 bytes are published first into a file-storage
 *      stream, then a durable pull consumer (explicit ack) fetches them in batches and acks
 *      each one; the time is from the first fetch to the last ack (acks flushed to the server).
 *      Every event index is checked to arrive once.
 *   2. publish-to-delivery latency: RATE events/s for SECONDS s, published asynchronously at a
 *      steady pace; a push consumer (explicit ack) notes when each one arrives. Latency is from
 *      just before the publish call to the consumer's receipt, on one monotonic clock. The
 *      publish acknowledgement latency of the same events is printed beside it.
 * Output lines (for bench.sh):
 *   jetstream deliveries EVENTS SECONDS PER_SECOND
 *   jetstream latency COUNT ACHIEVED_RATE P50_MS P99_MS MAX_MS
 *   jetstream publish-ack COUNT P50_MS P99_MS */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#define PAYLOAD_BYTES 200
#define FETCH_BATCH 256
#define PUBLISH_WINDOW 1000

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t)
{
    struct timespec ts = {.tv_sec = (time_t)t, .tv_nsec = (long)((t - (double)(time_t)t) * 1e9)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Percentile of n samples (sorted in place), in milliseconds. */
static double pct_ms(double *v, size_t n, int p)
{
    if (!n)
        return 0;
    qsort(v, n, sizeof(*v), compare_double);
    size_t k = n * (size_t)p / 100;
    return v[k < n ? k : n - 1] * 1e3;
}

/* Payload: the event's index in 8 digits, then filler up to 200 bytes. */
static void fill_payload(char *buf, long index)
{
    memset(buf, 'x', PAYLOAD_BYTES);
    char head[24];
    snprintf(head, sizeof(head), "%08ld", index);
    memcpy(buf, head, 8);
}

static long payload_index(natsMsg *m)
{
    if (natsMsg_GetDataLength(m) != PAYLOAD_BYTES)
        return -1;
    char head[9];
    memcpy(head, natsMsg_GetData(m), 8);
    head[8] = '\0';
    return strtol(head, NULL, 10);
}

/* ---- latency run: shared between the publisher and libnats' callback threads --------------- */

struct latency_run {
    pthread_mutex_t mu;
    long total;
    double *sent_at;    /* per index, written before its publish call */
    double *deliver_at; /* per index, 0 until received */
    double *ack_at;     /* per index, 0 until the publish ack came */
    long received;
    long duplicates;
};

static void on_latency_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *arg)
{
    (void)nc;
    (void)sub;
    struct latency_run *r = arg;
    double t = now_s();
    long i = payload_index(msg);
    pthread_mutex_lock(&r->mu);
    if (i >= 0 && i < r->total) {
        if (r->deliver_at[i] == 0) {
            r->deliver_at[i] = t;
            r->received++;
        } else {
            r->duplicates++;
        }
    }
    pthread_mutex_unlock(&r->mu);
    natsMsg_Ack(msg, NULL);
    natsMsg_Destroy(msg);
}

static void on_publish_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *arg)
{
    (void)js;
    struct latency_run *r = arg;
    double t = now_s();
    long i = payload_index(msg);
    if (pae)
        fprintf(stderr, "jetstream_peer: a publish failed: %s\n", pae->ErrText);
    pthread_mutex_lock(&r->mu);
    if (pa && i >= 0 && i < r->total)
        r->ack_at[i] = t;
    pthread_mutex_unlock(&r->mu);
    natsMsg_Destroy(msg);
}

static int add_stream(jsCtx *js, const char *name, const char *subject)
{
    jsStreamConfig sc;
    jsErrCode jerr = 0;
    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = &subject;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    natsStatus s = js_AddStream(NULL, js, &sc, NULL, &jerr);
    if (s != NATS_OK) {
        fprintf(stderr, "jetstream_peer: cannot add stream %s: %s (%d)\n", name,
                natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    return 0;
}

static int run_deliveries(natsConnection *nc, jsCtx *js, long events)
{
    int rc = -1;
    natsSubscription *sub = NULL;
    char *seen = calloc((size_t)events, 1);
    char payload[PAYLOAD_BYTES];
    jsErrCode jerr = 0;
    if (!seen || add_stream(js, "DELIVERIES", "deliveries") < 0)
        goto fail;
    for (long i = 0; i < events; i++) {
        fill_payload(payload, i);
        if (js_PublishAsync(js, "deliveries", payload, PAYLOAD_BYTES, NULL) != NATS_OK) {
            fprintf(stderr, "jetstream_peer: js_PublishAsync failed\n");
            goto fail;
        }
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 60000;
    if (js_PublishAsyncComplete(js, &po) != NATS_OK) {
        fprintf(stderr, "jetstream_peer: the publish acks did not all come\n");
        goto fail;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.MaxAckPending = 20000;
    natsStatus s = js_PullSubscribe(&sub, js, "deliveries", "bench", NULL, &so, &jerr);
    if (s != NATS_OK) {
        fprintf(stderr, "jetstream_peer: cannot create the pull consumer: %s (%d)\n",
                natsStatus_GetText(s), (int)jerr);
        goto fail;
    }
    long got = 0;
    double t0 = now_s();
    while (got < events) {
        natsMsgList list = {0};
        s = natsSubscription_Fetch(&list, sub, FETCH_BATCH, 10000, &jerr);
        if (s != NATS_OK) {
            fprintf(stderr, "jetstream_peer: fetch failed after %ld of %ld: %s\n", got, events,
                    natsStatus_GetText(s));
            goto fail;
        }
        for (int k = 0; k < list.Count; k++) {
            long i = payload_index(list.Msgs[k]);
            if (i >= 0 && i < events && !seen[i]) {
                seen[i] = 1;
                got++;
            }
            natsMsg_Ack(list.Msgs[k], NULL);
        }
        natsMsgList_Destroy(&list);
    }
    /* The acks are sent without waiting; a flush round trip puts the last one on the server. */
    natsConnection_Flush(nc);
    double secs = now_s() - t0;
    printf("jetstream deliveries %ld %.3f %.0f\n", events, secs, (double)events / secs);
    fflush(stdout);
    rc = 0;
fail:
    if (sub)
        natsSubscription_Destroy(sub);
    free(seen);
    return rc;
}

static int run_latency(natsConnection *nc, long rate, long seconds)
{
    int rc = -1;
    struct latency_run r = {.mu = PTHREAD_MUTEX_INITIALIZER, .total = rate * seconds};
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    double *lat = NULL;
    jsOptions jo;
    jsErrCode jerr = 0;
    r.sent_at = calloc((size_t)r.total, sizeof(double));
    r.deliver_at = calloc((size_t)r.total, sizeof(double));
    r.ack_at = calloc((size_t)r.total, sizeof(double));
    lat = calloc((size_t)r.total, sizeof(double));
    if (!r.sent_at || !r.deliver_at || !r.ack_at || !lat)
        goto fail;
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = PUBLISH_WINDOW;
    jo.PublishAsync.AckHandler = on_publish_ack;
    jo.PublishAsync.AckHandlerClosure = &r;
    if (natsConnection_JetStream(&js, nc, &jo) != NATS_OK ||
        add_stream(js, "LATENCY", "latency") < 0)
        goto fail;
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.ManualAck = true;
    so.Config.AckPolicy = js_AckExplicit;
    natsStatus s = js_Subscribe(&sub, js, "latency", on_latency_msg, &r, NULL, &so, &jerr);
    if (s != NATS_OK) {
        fprintf(stderr, "jetstream_peer: cannot create the push consumer: %s (%d)\n",
                natsStatus_GetText(s), (int)jerr);
        goto fail;
    }
    char payload[PAYLOAD_BYTES];
    double start = now_s() + 0.2;
    for (long i = 0; i < r.total; i++) {
        sleep_until(start + (double)i / (double)rate);
        fill_payload(payload, i);
        r.sent_at[i] = now_s();
        if (js_PublishAsync(js, "latency", payload, PAYLOAD_BYTES, NULL) != NATS_OK) {
            fprintf(stderr, "jetstream_peer: js_PublishAsync failed\n");
            goto fail;
        }
    }
    double achieved = (double)r.total / (now_s() - start);
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 30000;
    if (js_PublishAsyncComplete(js, &po) != NATS_OK) {
        fprintf(stderr, "jetstream_peer: the publish acks did not all come\n");
        goto fail;
    }
    double deadline = now_s() + 30;
    for (;;) {
        pthread_mutex_lock(&r.mu);
        long got = r.received;
        pthread_mutex_unlock(&r.mu);
        if (got >= r.total)
            break;
        if (now_s() > deadline) {
            fprintf(stderr, "jetstream_peer: only %ld of %ld latency events arrived in 30 s\n", got,
                    r.total);
            goto fail;
        }
        sleep_until(now_s() + 0.005);
    }
    natsSubscription_Unsubscribe(sub);
    natsConnection_Flush(nc);
    pthread_mutex_lock(&r.mu);
    for (long i = 0; i < r.total; i++)
        lat[i] = r.deliver_at[i] - r.sent_at[i];
    double max = 0;
    for (long i = 0; i < r.total; i++)
        max = lat[i] > max ? lat[i] : max;
    printf("jetstream latency %ld %.0f %.3f %.3f %.3f\n", r.total, achieved,
           pct_ms(lat, (size_t)r.total, 50), pct_ms(lat, (size_t)r.total, 99), max * 1e3);
    size_t nack = 0;
    for (long i = 0; i < r.total; i++)
        if (r.ack_at[i] > 0)
            lat[nack++] = r.ack_at[i] - r.sent_at[i];
    pthread_mutex_unlock(&r.mu);
    printf("jetstream publish-ack %zu %.3f %.3f\n", nack, pct_ms(lat, nack, 50),
           pct_ms(lat, nack, 99));
    if (r.duplicates)
        fprintf(stderr, "jetstream_peer: %ld latency events were delivered twice\n", r.duplicates);
    fflush(stdout);
    rc = 0;
fail:
    if (sub)
        natsSubscription_Destroy(sub);
    if (js)
        jsCtx_Destroy(js);
    free(r.sent_at);
    free(r.deliver_at);
    free(r.ack_at);
    free(lat);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: jetstream_peer NATS_URL [EVENTS [RATE [SECONDS]]]\n");
        return 2;
    }
    long events = argc > 2 ? atol(argv[2]) : 20000;
    long rate = argc > 3 ? atol(argv[3]) : 1000;
    long seconds = argc > 4 ? atol(argv[4]) : 5;
    if (events <= 0 || events > 99999999 || rate <= 0 || seconds <= 0 ||
        rate * seconds > 99999999) {
        fprintf(stderr, "jetstream_peer: EVENTS, RATE and SECONDS must be positive (and at most "
                        "99,999,999 events)\n");
        return 2;
    }
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    int rc = 1;
    natsStatus s = natsConnection_ConnectTo(&nc, argv[1]);
    if (s != NATS_OK) {
        fprintf(stderr, "jetstream_peer: cannot connect to %s: %s\n", argv[1],
                natsStatus_GetText(s));
        goto done;
    }
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = PUBLISH_WINDOW;
    if (natsConnection_JetStream(&js, nc, &jo) != NATS_OK) {
        fprintf(stderr, "jetstream_peer: JetStream is not available on %s\n", argv[1]);
        goto done;
    }
    if (run_deliveries(nc, js, events) < 0 || run_latency(nc, rate, seconds) < 0)
        goto done;
    rc = 0;
done:
    if (js)
        jsCtx_Destroy(js);
    if (nc)
        natsConnection_Destroy(nc);
    nats_Close();
    return rc;
}
