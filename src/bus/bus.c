#include "bus/bus.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/buf.h"
#include "common/start_trace.h"
#include "common/util.h"
#include "hub/hub.h"
#include "logs/logs.h"
#include "natsconn/natsconn.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define BUS_LINE_MAX (64u << 10)
#define BUS_WRITE_QUEUE_MAX (64u << 20)

struct bus_conn {
    uv_pipe_t pipe;
    struct bus *bus;
    struct buf in;
    int router_index;
    size_t write_pending;
    bool closing;
    bool has_table;    /* it got a table from us (else it serves its own last one) */
    uint64_t *awaited; /* drain ids this router has not answered yet */
    size_t n_awaited;
    int id; /* this connection's, for the metrics it reports (bus_set_metrics) */
    int64_t acked; /* the newest table version it said it serves (docs/bus.md "ack") */
    struct bus_conn *next;
};

/* A drain request (docs/bus.md): sent to every router after a table without the instance;
 * the scheduler's hold on it ends when each router has answered or gone. */
struct bus_drain {
    uint64_t id; /* the scheduler's drain id, also the id on the wire */
    char addr[64];
    bool sent;
    int waiting; /* routers that have it and have not answered */
    struct bus_drain *next;
};

/* An instance that became routable, held STARTING by the scheduler (scheduler_route_hold)
 * until every router acknowledged a table version with it, or BUS_ACK_TIMEOUT_MS passed. */
struct bus_joining {
    char instance_guid[37];
    char app_guid[37];
    int64_t version;       /* the first table version sent with it; 0: none yet */
    int64_t ready_mono;    /* when it became routable */
    int64_t deadline_mono; /* then it is released whoever has not acknowledged */
    struct bus_joining *next;
};

struct bus {
    uv_loop_t *loop;
    uv_pipe_t server;
    uv_timer_t coalesce;
    int64_t made_mono; /* when the last table for every router was made; -1: never */
    char *sent_routes; /* the "routes" array of the last version sent, as sent */
    uv_timer_t retry; /* the store failed: push the table again later */
    char *path;
    struct store *store;
    struct scheduler *sched;
    struct logs *logs;
    struct bus_conn *conns;
    struct bus_drain *drains;
    struct bus_joining *joining;
    uv_timer_t ack_timeout; /* the earliest deadline of joining */
    int64_t version;
    struct hub *hub;
    int sub_id; /* on the hub */
    void (*traffic)(void *ctx, const char *app_guid);
    void *traffic_ctx;
    const struct bus_metrics_sink *metrics;
    void *metrics_ctx;
    int next_conn_id;
    int handles;
    bool store_failing; /* logged once until the store answers again */
    struct bus_nats *nats; /* the routers on NATS core; NULL: none */
    bool closing;
    void (*done)(void *);
    void *done_arg;
};

struct bus_write {
    uv_write_t req;
    struct bus_conn *conn;
    size_t len;
    char data[];
};

/* One of the bus's handles (server, timer, a connection) is closed: the last one to go
 * while closing finishes bus_close. */
static void bus__handle_gone(struct bus *bus)
{
    if (--bus->handles == 0 && bus->closing && bus->done) {
        void (*done)(void *) = bus->done;
        bus->done = NULL;
        done(bus->done_arg);
    }
}

static void bus__handle_closed(uv_handle_t *h)
{
    bus__handle_gone(h->data);
}

static void bus__conn_closed(uv_handle_t *h)
{
    struct bus_conn *c = h->data;
    struct bus *bus = c->bus;
    buf_free(&c->in);
    free(c->awaited);
    free(c);
    bus__handle_gone(bus);
}

/* ---- NATS core (docs/bus.md "On NATS") ----------------------------------------------------- */

#define BUS_NATS_PREFIX "skiff.bus."
#define BUS_NATS_VERSION 1
#define BUS_NATS_MAX_ROUTERS 256
/* Routers say hello every 5 s (router_nats.c): one silent for three of those is gone. */
#define BUS_NATS_ROUTER_LIVE_MS 15000

/* A router heard on NATS (each publishes on skiff.bus.router.<its id>, a hello at least every
 * few seconds): drains wait for the live ones, and its metrics have a slot of their own. */
struct bus_nats_router {
    char id[33];
    int conn_id; /* its slot in the metrics sink */
    int64_t seen_ms;
    int64_t acked; /* the newest table version it said it serves */
};

/* A drain sent on NATS: how many live routers have not answered yet. */
struct bus_nats_wait {
    uint64_t id;
    int left;
};

struct bus_nats {
    struct natsconn *conn;
    struct bus_conn routers_conn; /* what bus__message takes for lines from NATS routers */
    uv_timer_t announce;
    int announce_ms, ttl_ms;
    char *table;           /* the last table announced (a "routes" message) */
    json_t *announced;     /* "host path" -> the route's host and path, as announced last */
    char *drained_subject; /* where routers answer this skiffd's drain requests */
    struct bus_nats_router routers[BUS_NATS_MAX_ROUTERS];
    size_t n_routers;
    bool cleartext_logged; /* "no keys over cleartext NATS" said once */
    json_t *cert_domains;  /* domain -> true: the pairs sent last (a removal is told once) */
    struct bus_nats_wait *waits;
    size_t n_waits;
    const char *speaking; /* the id of the router whose lines are being read, or NULL */
    struct bus_certs_read *certs_read; /* the certificates' read under way, or NULL */
    bool certs_again;                  /* asked for meanwhile: read once more after it */
    /* whether this skiffd speaks for the routes on NATS (bus_set_announcing): only the one that
     * runs the instances does, or a router on NATS would take each skiffd's table in turn */
    bool announcing;
};

/* The store's read of the certificates for the routers on NATS; bus NULL once the bus is
 * freed (the answer is then dropped). */
struct bus_certs_read {
    struct bus *bus;
};

static void bus__nats_publish_json(struct bus *bus, const char *subject, const char *reply,
                                   json_t *msg)
{
    char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    json_decref(msg);
    if (!text)
        return;
    int rc = natsconn_publish(bus->nats->conn, subject, reply, text, strlen(text));
    if (rc < 0 && rc != -ENOTCONN)
        log_warning("bus: cannot publish on %s: %s", subject, skiff_strerror(rc));
    free(text);
}

/* Announces every route of a "routes" message (register, with the TTL) and unregisters those
 * announced before that it no longer has. */
/* One route's register; each carries the table's "draining" list, if any. */
static json_t *bus__nats_register(int ttl_ms, json_int_t version, json_int_t count, json_t *route,
                                  json_t *draining)
{
    json_t *msg = json_pack("{s:i,s:i,s:I,s:I,s:O}", "v", BUS_NATS_VERSION, "ttl_ms", ttl_ms,
                            "version", version, "count", count, "route", route);
    if (msg && draining)
        json_object_set(msg, "draining", draining);
    return msg;
}

static void bus__nats_announce(struct bus *bus, const char *table)
{
    struct bus_nats *n = bus->nats;
    if (table != n->table) {
        free(n->table);
        n->table = xstrdup(table);
    }
    json_t *msg = json_loads(table, 0, NULL);
    json_t *now = json_object();
    json_t *routes = json_object_get(msg, "routes");
    /* a router acknowledges the version once it serves all count routes of it */
    json_int_t version = json_integer_value(json_object_get(msg, "version"));
    json_int_t count = (json_int_t)json_array_size(routes);
    size_t i;
    json_t *r;
    json_array_foreach(routes, i, r)
    {
        const char *host = json_string_value(json_object_get(r, "host"));
        const char *path = json_string_value(json_object_get(r, "path"));
        if (!host || !path)
            continue;
        char *key = xasprintf("%s %s", host, path);
        json_object_set_new(now, key, json_pack("{s:s,s:s}", "host", host, "path", path));
        free(key);
        bus__nats_publish_json(
            bus, BUS_NATS_PREFIX "register", NULL,
            bus__nats_register(n->ttl_ms, version, count, r, json_object_get(msg, "draining")));
    }
    const char *key;
    json_t *gone;
    json_object_foreach(n->announced, key, gone)
    {
        if (json_object_get(now, key))
            continue;
        bus__nats_publish_json(bus, BUS_NATS_PREFIX "unregister", NULL,
                               json_pack("{s:i,s:O,s:O,s:I}", "v", BUS_NATS_VERSION, "host",
                                         json_object_get(gone, "host"), "path",
                                         json_object_get(gone, "path"), "version", version));
    }
    json_decref(n->announced);
    n->announced = now;
    json_decref(msg);
}

static void bus__nats_on_announce(uv_timer_t *t)
{
    struct bus *bus = t->data;
    if (bus->nats->table && bus->nats->announcing)
        bus__nats_announce(bus, bus->nats->table);
}

/* Routers heard within the TTL; the others are forgotten. */
static size_t bus__nats_live_routers(struct bus *bus)
{
    struct bus_nats *n = bus->nats;
    if (!n)
        return 0;
    int64_t now = time_mono_ms();
    for (size_t i = 0; i < n->n_routers;)
        if (now - n->routers[i].seen_ms > BUS_NATS_ROUTER_LIVE_MS) {
            log_info("bus: the router %s on NATS is silent; forgotten", n->routers[i].id);
            if (bus->metrics) /* what it counted no longer holds */
                bus->metrics->router_gone(bus->metrics_ctx, n->routers[i].conn_id);
            n->routers[i] = n->routers[--n->n_routers];
        } else {
            i++;
        }
    return n->n_routers;
}

static void bus__nats_certs(struct bus *bus);

/* A router's id: 1 to 32 lowercase hex digits. */
static bool bus__nats_router_id_valid(const char *id)
{
    size_t len = strspn(id, "0123456789abcdef");
    return len > 0 && len <= 32 && id[len] == 0;
}

/* The router that published on skiff.bus.router.<id>: seen now. NULL when there are too
 * many already (its lines are still read, on a shared slot). */
static struct bus_nats_router *bus__nats_router_seen(struct bus *bus, const char *id)
{
    struct bus_nats *n = bus->nats;
    bus__nats_live_routers(bus);
    for (size_t i = 0; i < n->n_routers; i++)
        if (!strcmp(n->routers[i].id, id)) {
            n->routers[i].seen_ms = time_mono_ms();
            return &n->routers[i];
        }
    if (n->n_routers == BUS_NATS_MAX_ROUTERS)
        return NULL;
    log_info("bus: a router on NATS said hello: %s", id);
    struct bus_nats_router *r = &n->routers[n->n_routers++];
    snprintf(r->id, sizeof r->id, "%s", id);
    r->conn_id = ++bus->next_conn_id;
    r->seen_ms = time_mono_ms();
    bus__nats_certs(bus); /* a router that was not there at the last change */
    return r;
}

static void bus__drain_one_done(struct bus *bus, uint64_t id);

static void bus__nats_drain_send(struct bus *bus, struct bus_drain *d)
{
    struct bus_nats *n = bus->nats;
    size_t live = n->announcing ? bus__nats_live_routers(bus) : 0;
    if (!live) /* a drain goes where the table went */
        return;
    n->waits = xrealloc(n->waits, (n->n_waits + 1) * sizeof *n->waits);
    n->waits[n->n_waits++] = (struct bus_nats_wait){d->id, (int)live};
    d->waiting++;
    /* with the version of the table without it: a router may get the two in either order */
    bus__nats_publish_json(bus, BUS_NATS_PREFIX "drain", n->drained_subject,
                           json_pack("{s:i,s:s,s:I,s:I}", "v", BUS_NATS_VERSION, "addr", d->addr,
                                     "id", (json_int_t)d->id, "version", (json_int_t)bus->version));
}

/* A router's answer on our drained subject. */
static void bus__nats_drained(struct bus *bus, const char *data, size_t len)
{
    struct bus_nats *n = bus->nats;
    json_t *msg = json_loadb(data, len, 0, NULL);
    json_t *id = json_object_get(msg, "id");
    if (json_is_integer(id) && json_integer_value(id) > 0)
        for (size_t i = 0; i < n->n_waits; i++)
            if (n->waits[i].id == (uint64_t)json_integer_value(id)) {
                if (--n->waits[i].left == 0) {
                    uint64_t done = n->waits[i].id;
                    n->waits[i] = n->waits[--n->n_waits];
                    bus__drain_one_done(bus, done);
                }
                break;
            }
    json_decref(msg);
}

static void bus__message(struct bus_conn *c, const char *line, size_t len);

static void bus__nats_on_msg(void *ctx, const char *subject, const char *reply, const char *data,
                             size_t len)
{
    struct bus *bus = ctx;
    if (bus->closing)
        return;
    if (!strcmp(subject, bus->nats->drained_subject)) {
        bus__nats_drained(bus, data, len);
        return;
    }
    /* skiff.bus.router.<id>: lines as on the socket (hello, access, wake, metrics) */
    const char *id = subject + strlen(BUS_NATS_PREFIX "router.");
    if (strncmp(subject, BUS_NATS_PREFIX "router.", strlen(BUS_NATS_PREFIX "router.")) ||
        !bus__nats_router_id_valid(id))
        return;
    struct bus_nats_router *r = bus__nats_router_seen(bus, id);
    struct bus_conn *c = &bus->nats->routers_conn;
    bus->nats->speaking = id;
    c->id = r ? r->conn_id : c->id; /* metrics count per router */
    c->router_index = 0;
    static const char hello[] = "{\"type\":\"hello\",";
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        /* a hello only says it is alive (above); the socket's would log each one */
        if (n && !(n >= sizeof hello - 1 && !memcmp(p, hello, sizeof hello - 1)))
            bus__message(c, p, n);
        p += n + 1;
    }
    bus->nats->speaking = NULL;
}

static void bus__nats_on_state(void *ctx, bool up)
{
    struct bus *bus = ctx;
    if (up) {
        log_info(bus->nats->announcing ? "bus: connected to NATS; announcing the route table"
                                       : "bus: connected to NATS");
        if (bus->nats->table && bus->nats->announcing)
            bus__nats_announce(bus, bus->nats->table);
    } else {
        log_warning("bus: NATS is unreachable; routers on it keep their last table");
    }
}

/* ---- drains ------------------------------------------------------------------------------- */

static void bus__drain_free(struct bus *bus, struct bus_drain *d)
{
    for (struct bus_drain **pp = &bus->drains; *pp; pp = &(*pp)->next)
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    free(d);
}

/* One router is done with drain id (it answered, or it is gone). */
static void bus__drain_answered(struct bus_conn *c, uint64_t id)
{
    struct bus *bus = c->bus;
    size_t i = 0;
    while (i < c->n_awaited && c->awaited[i] != id)
        i++;
    if (i == c->n_awaited)
        return; /* not asked, or already answered: nothing to do */
    c->awaited[i] = c->awaited[--c->n_awaited];
    bus__drain_one_done(bus, id);
}

/* One router (or every router on NATS) is done with drain id. */
static void bus__drain_one_done(struct bus *bus, uint64_t id)
{
    for (struct bus_drain *d = bus->drains; d; d = d->next)
        if (d->id == id && d->sent && --d->waiting == 0) {
            bus__drain_free(bus, d);
            if (!bus->closing)
                scheduler_drain_release(bus->sched, id);
            return;
        }
}

static void bus__send(struct bus_conn *c, const char *data, size_t len);
static void bus__joining_check(struct bus *bus);
static void bus__on_ack_timeout(uv_timer_t *t);

static void bus__drain_send(struct bus_conn *c, struct bus_drain *d)
{
    if (c->closing)
        return;
    char line[160];
    int n = snprintf(line, sizeof line, "{\"type\":\"drain\",\"addr\":\"%s\",\"id\":%llu}\n",
                     d->addr, (unsigned long long)d->id);
    bus__send(c, line, (size_t)n);
    if (c->closing)
        return; /* it could not take the line: gone, so nothing to wait for */
    c->awaited = xrealloc(c->awaited, (c->n_awaited + 1) * sizeof *c->awaited);
    c->awaited[c->n_awaited++] = d->id;
    d->waiting++;
}

/* Right after a table went to every router: the drains waiting for it go out. */
static void bus__drains_send(struct bus *bus)
{
    struct bus_drain *d = bus->drains;
    while (d) {
        struct bus_drain *next = d->next;
        if (!d->sent) {
            d->sent = true;
            for (struct bus_conn *c = bus->conns; c; c = c->next)
                bus__drain_send(c, d);
            if (bus->nats)
                bus__nats_drain_send(bus, d);
            if (d->waiting == 0) { /* every router went away meanwhile */
                uint64_t id = d->id;
                bus__drain_free(bus, d);
                scheduler_drain_release(bus->sched, id);
            }
        }
        d = next;
    }
}

static void bus__conn_close(struct bus_conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    while (c->n_awaited) /* a router that is gone has nothing in flight */
        bus__drain_answered(c, c->awaited[c->n_awaited - 1]);
    if (c->bus->metrics) /* nor anything it counts */
        c->bus->metrics->router_gone(c->bus->metrics_ctx, c->id);
    for (struct bus_conn **pp = &c->bus->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    bus__joining_check(c->bus); /* nor is it waited for */
    uv_close((uv_handle_t *)&c->pipe, bus__conn_closed);
}

static void bus__write_done(uv_write_t *w, int status)
{
    struct bus_write *bw = (struct bus_write *)w;
    bw->conn->write_pending -= bw->len;
    free(bw);
}

static void bus__send(struct bus_conn *c, const char *data, size_t len)
{
    if (c->closing)
        return;
    /* a router that does not read is dropped rather than growing our memory */
    if (c->write_pending > BUS_WRITE_QUEUE_MAX) {
        bus__conn_close(c);
        return;
    }
    struct bus_write *bw = xmalloc(sizeof *bw + len);
    bw->conn = c;
    bw->len = len;
    memcpy(bw->data, data, len);
    uv_buf_t b = uv_buf_init(bw->data, (unsigned)len);
    if (uv_write(&bw->req, (uv_stream_t *)&c->pipe, &b, 1, bus__write_done) < 0) {
        free(bw);
        bus__conn_close(c);
        return;
    }
    c->write_pending += len;
}

/* ---- joining: tables the routers acknowledged (docs/bus.md "ack") ------------------------- */

static void bus__joining_free(struct bus *bus, struct bus_joining *j, bool release)
{
    for (struct bus_joining **pp = &bus->joining; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    if (release)
        scheduler_route_release(bus->sched, j->instance_guid);
    free(j);
}

static struct bus_nats_router *bus__nats_router(struct bus *bus, const char *id)
{
    for (size_t i = 0; bus->nats && id && i < bus->nats->n_routers; i++)
        if (!strcmp(bus->nats->routers[i].id, id))
            return &bus->nats->routers[i];
    return NULL;
}

/* The routers that do not serve version yet, as "router 0, NATS router 1f2e..." (into out),
 * and how many there are. */
static size_t bus__laggards(struct bus *bus, int64_t version, struct buf *out)
{
    size_t count = 0;
    for (struct bus_conn *c = bus->conns; c; c = c->next)
        if (!c->closing && c->acked < version) {
            if (out)
                buf_printf(out, "%srouter %d", count ? ", " : "", c->router_index);
            count++;
        }
    bus__nats_live_routers(bus); /* forgets the silent ones */
    /* routers on NATS serve another skiffd's versions while this one does not announce */
    for (size_t i = 0; bus->nats && bus->nats->announcing && i < bus->nats->n_routers; i++)
        if (bus->nats->routers[i].acked < version) {
            if (out)
                buf_printf(out, "%srouter %s on NATS", count ? ", " : "", bus->nats->routers[i].id);
            count++;
        }
    return count;
}

/* Releases every instance whose table every router serves now. */
static void bus__joining_check(struct bus *bus)
{
    if (bus->closing)
        return;
    struct bus_joining *j = bus->joining;
    while (j) {
        struct bus_joining *next = j->next;
        if (j->version > 0 && bus__laggards(bus, j->version, NULL) == 0) {
            log_debug("bus: every router serves instance %s, %lld ms after it became ready",
                      j->instance_guid, (long long)(time_mono_ms() - j->ready_mono));
            bus__joining_free(bus, j, true);
        }
        j = next;
    }
}

static void bus__ack_timeout_arm(struct bus *bus)
{
    int64_t first = 0;
    for (struct bus_joining *j = bus->joining; j; j = j->next)
        if (!first || j->deadline_mono < first)
            first = j->deadline_mono;
    if (!first) {
        uv_timer_stop(&bus->ack_timeout);
        return;
    }
    int64_t wait = first - time_mono_ms();
    uv_timer_start(&bus->ack_timeout, bus__on_ack_timeout, wait > 0 ? (uint64_t)wait : 0, 0);
}

/* A router that does not acknowledge in time is not waited for (a router that hangs must not
 * keep apps from showing RUNNING): logged with who it was. */
static void bus__on_ack_timeout(uv_timer_t *t)
{
    struct bus *bus = t->data;
    int64_t now = time_mono_ms();
    struct bus_joining *j = bus->joining;
    while (j) {
        struct bus_joining *next = j->next;
        if (j->deadline_mono <= now) {
            struct buf who = {0};
            if (bus__laggards(bus, j->version > 0 ? j->version : bus->version + 1, &who))
                log_warning("bus: %s did not acknowledge a route table with instance %s of app "
                            "%s within %d ms; it is shown RUNNING without waiting any longer",
                            who.data, j->instance_guid, j->app_guid, BUS_ACK_TIMEOUT_MS);
            buf_free(&who);
            bus__joining_free(bus, j, true);
        }
        j = next;
    }
    bus__ack_timeout_arm(bus);
}

/* A web instance became routable: shown STARTING until the routers serve a table with it. */
static void bus__joining_begin(struct bus *bus, const struct platform_event *ev)
{
    if (!ev->instance_guid || !ev->process_type || strcmp(ev->process_type, "web") ||
        (!bus->conns && !bus__nats_live_routers(bus)))
        return; /* not routed, or no router to wait for */
    for (struct bus_joining *j = bus->joining; j; j = j->next)
        if (!strcmp(j->instance_guid, ev->instance_guid)) {
            j->version = 0; /* back after a failed readiness check: the next table */
            return;
        }
    struct bus_joining *j = xcalloc(1, sizeof *j);
    snprintf(j->instance_guid, sizeof j->instance_guid, "%s", ev->instance_guid);
    snprintf(j->app_guid, sizeof j->app_guid, "%s", ev->app_guid ? ev->app_guid : "");
    j->ready_mono = time_mono_ms();
    j->deadline_mono = j->ready_mono + BUS_ACK_TIMEOUT_MS;
    j->next = bus->joining;
    bus->joining = j;
    scheduler_route_hold(bus->sched, j->instance_guid);
    if (!uv_is_active((uv_handle_t *)&bus->ack_timeout))
        bus__ack_timeout_arm(bus);
}

/* Every router has the table of bus->version now (text, or its routes: sent just now, or
 * the same as sent before): the instances in it wait for that version's acknowledgements;
 * one in no route (its app has none) waits for nothing. */
static void bus__joining_sent(struct bus *bus, const char *text)
{
    struct bus_joining *j = bus->joining;
    while (j) {
        struct bus_joining *next = j->next;
        if (j->version == 0) {
            char needle[64];
            snprintf(needle, sizeof needle, "\"instance_guid\":\"%s\"", j->instance_guid);
            if (strstr(text, needle))
                j->version = bus->version;
            else
                bus__joining_free(bus, j, true);
        }
        j = next;
    }
    bus__joining_check(bus);
}

/* A router says it serves version (its newest table). */
static void bus__acked(struct bus_conn *c, int64_t version)
{
    struct bus *bus = c->bus;
    if (bus->nats && c == &bus->nats->routers_conn) {
        struct bus_nats_router *r = bus__nats_router(bus, bus->nats->speaking);
        if (r && version > r->acked)
            r->acked = version;
    } else if (version > c->acked) {
        c->acked = version;
    }
    start_trace("bus: a router's ack");
    bus__joining_check(bus);
}

/* ---- the route table ------------------------------------------------------------------------ */

struct bus_backends {
    json_t *by_app; /* app_guid -> array of backends (web process) */
};

static void bus__collect(void *ctx, const char *app_guid, const char *process_type,
                         const struct scheduler_instance_info *inst)
{
    struct bus_backends *b = ctx;
    if (strcmp(process_type, "web"))
        return;
    json_t *arr = json_object_get(b->by_app, app_guid);
    if (!arr) {
        arr = json_array();
        json_object_set_new(b->by_app, app_guid, arr);
    }
    json_array_append_new(arr, json_pack("{s:s,s:i,s:s}", "addr", inst->addr, "index", inst->index,
                                         "instance_guid", inst->guid));
}

/* The table's "routes" array (docs/bus.md) as compact JSON; NULL when the store fails (a table
 * without the routes the store failed to give would make every router drop them). */
static char *bus__routes_text(struct bus *bus)
{
    struct store_route *routes = NULL;
    size_t n = 0;
    struct store_app **apps = NULL;
    size_t na = 0;
    int rc = store_route_list(bus->store, NULL, &routes, &n);
    if (rc == 0)
        rc = store_app_list(bus->store, &apps, &na);
    if (rc < 0) {
        store_route_list_free(routes, n);
        return NULL;
    }
    struct bus_backends b = {.by_app = json_object()};
    scheduler_each_ready(bus->sched, bus__collect, &b);
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const struct store_app *app = NULL;
        for (size_t j = 0; j < na; j++)
            if (!strcmp(apps[j]->guid, routes[i].app_guid))
                app = apps[j];
        if (!app)
            continue;
        json_t *backends = json_object_get(b.by_app, app->guid);
        /* the router holds a request for a web process at zero that the platform scales */
        bool from_zero = store_process_autoscaled(store_app_process(app, "web")) &&
                         !strcmp(app->state, "STARTED");
        json_t *list = backends ? json_incref(backends) : json_array();
        json_array_append_new(
            arr, json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:o,s:b,s:b}", "host", routes[i].host,
                           "path", routes[i].path, "app_guid", app->guid, "app_name", app->name,
                           "process", "web", "balance", routes[i].balance, "protocol",
                           routes[i].protocol, "backends", list, "scale_from_zero", from_zero,
                           "https_only", routes[i].https_only));
    }
    char *text = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    json_decref(b.by_app);
    store_route_list_free(routes, n);
    store_app_list_free(apps, na);
    return text;
}

/* A "routes" message of version with the routes array routes (a line without its newline).
 * "draining" lists the instances being drained: a router tells by it that a backend left the
 * table on purpose (its requests in flight finish), not because it was lost (they go
 * elsewhere at once; docs/bus.md). */
static char *bus__table_text(struct bus *bus, int64_t version, const char *routes)
{
    if (!bus->drains)
        return xasprintf("{\"type\":\"routes\",\"version\":%lld,\"routes\":%s}", (long long)version,
                         routes);
    json_t *draining = json_array();
    for (struct bus_drain *d = bus->drains; d; d = d->next)
        json_array_append_new(draining, json_string(d->addr));
    char *list = json_dumps(draining, JSON_COMPACT);
    json_decref(draining);
    char *text = xasprintf("{\"type\":\"routes\",\"version\":%lld,\"routes\":%s,\"draining\":%s}",
                           (long long)version, routes, list ? list : "[]");
    free(list);
    return text;
}

char *bus_route_table_json(struct bus *bus)
{
    char *routes = bus__routes_text(bus);
    char *text = routes ? bus__table_text(bus, bus->version, routes) : NULL;
    free(routes);
    return text;
}

static void bus__retry(uv_timer_t *t);

/* Whether a table with routes would tell every router nothing new: it is what they were sent
 * last, and each has had a table (one that came while the store failed has not). */
static bool bus__unchanged(struct bus *bus, const char *routes)
{
    if (!bus->sent_routes || strcmp(routes, bus->sent_routes))
        return false;
    for (struct bus_conn *c = bus->conns; c; c = c->next)
        if (!c->closing && !c->has_table)
            return false;
    return true;
}

/* Sends the table to one router (only) or, with only NULL, as a new version to all (unless
 * its routes are those sent last: then nothing goes, the routers serve it already). A version
 * names one table: when the routes changed since the last version (its push is pending), one
 * router is not sent them under that version's number, they go to all as the next. When the
 * store cannot give the table nothing is sent: the routers keep serving their last table, and
 * a timer asks the store again. Returns whether every router has the table now. */
static bool bus__push(struct bus *bus, struct bus_conn *only)
{
    char *routes = bus__routes_text(bus);
    if (!routes) {
        if (!bus->store_failing)
            log_error("bus: cannot read the route table from the store; the routers keep "
                    "their last table, asking the store again every %d ms",
                    BUS_STORE_RETRY_MS);
        bus->store_failing = true;
        if (!uv_is_active((uv_handle_t *)&bus->retry))
            uv_timer_start(&bus->retry, bus__retry, BUS_STORE_RETRY_MS, 0);
        return false;
    }
    if (bus->store_failing)
        log_info("bus: the store answers again; the routers get the current "
                        "table");
    bus->store_failing = false;
    if (only && (!bus->sent_routes || strcmp(routes, bus->sent_routes)))
        only = NULL; /* the routes changed since the version sent: all get the next one */
    if (!only && bus__unchanged(bus, routes)) {
        bus__joining_sent(bus, routes); /* what joins is in the version they serve, or not */
        free(routes);
        return true;
    }
    if (!only) {
        bus->version++;
        free(bus->sent_routes);
        bus->sent_routes = xstrdup(routes);
        start_trace("bus: a new table sent");
    }
    char *text = bus__table_text(bus, bus->version, routes);
    free(routes);
    if (!only && bus->nats && bus->nats->announcing)
        bus__nats_announce(bus, text);
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len++] = '\n';
    text[len] = '\0'; /* bus__joining_sent reads it as a string */
    struct bus_conn *c = only ? only : bus->conns;
    while (c) {
        struct bus_conn *next = only ? NULL : c->next;
        bool had_table = c->has_table;
        bus__send(c, text, len);
        c->has_table = true;
        /* one that connected while the store failed is asked about the drains under way, now
         * that its table is without their instances */
        if (!had_table)
            for (struct bus_drain *d = bus->drains; d; d = d->next)
                if (d->sent)
                    bus__drain_send(c, d);
        c = next;
    }
    if (!only)
        bus__joining_sent(bus, text);
    free(text);
    return true;
}

/* A new version to every router, then the drains that wait for it. */
static void bus__push_all(struct bus *bus)
{
    bus->made_mono = time_mono_ms();
    if (bus__push(bus, NULL))
        bus__drains_send(bus);
}

static void bus__retry(uv_timer_t *t)
{
    bus__push_all(t->data);
}

static void bus__coalesced(uv_timer_t *t)
{
    bus__push_all(t->data);
}

void bus_routes_changed(struct bus *bus)
{
    if (!bus || bus->closing || uv_is_active((uv_handle_t *)&bus->coalesce))
        return;
    /* a 0 ms timer runs at the next turn of the loop: the changes made by what runs now (an
     * API request, a hub event and those it causes) go out together, and after its answer */
    uv_timer_start(&bus->coalesce, bus__coalesced,
                   (uint64_t)time_pace_delay_ms(time_mono_ms(), bus->made_mono, BUS_COALESCE_MS),
                   0);
}

void bus_routes_changed_cb(void *bus)
{
    bus_routes_changed(bus);
}

void bus_set_announcing(struct bus *bus, bool on)
{
    struct bus_nats *n = bus ? bus->nats : NULL;
    if (!n || n->announcing == on)
        return;
    n->announcing = on;
    log_info(on ? "bus: announcing the route table on NATS (this skiffd runs the instances)"
                : "bus: not announcing the route table on NATS (the skiffd that leads does)");
    if (!on)
        return; /* what it announced stays until the leader's announcements replace it */
    /* the next table goes to NATS as a version above any another skiffd announced before
     * (theirs began at their start's clock too), so routers acknowledge it */
    int64_t now = time_now_ms();
    if (now > bus->version)
        bus->version = now;
    free(bus->sent_routes);
    bus->sent_routes = NULL;
    bus_routes_changed(bus);
}

static const char bus__certs_message[] = "{\"type\": \"certs\"}\n";

void bus_certs_changed(struct bus *bus)
{
    if (!bus || bus->closing)
        return;
    for (struct bus_conn *c = bus->conns; c; c = c->next)
        if (!c->closing)
            bus__send(c, bus__certs_message, sizeof bus__certs_message - 1);
    if (bus->nats)
        bus__nats_certs(bus);
}

/* One domain's pair on skiff.bus.certs; the key's copies wiped. */
static void bus__nats_cert_publish(struct bus *bus, const char *domain, const char *cert,
                                   const char *key)
{
    json_t *msg = json_pack("{s:i,s:s,s:s,s:s}", "v", BUS_NATS_VERSION, "domain", domain, "cert",
                            cert, "key", key);
    char *text = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
    if (msg)
        OPENSSL_cleanse((char *)json_string_value(json_object_get(msg, "key")), strlen(key));
    json_decref(msg);
    if (!text)
        return;
    int rc = natsconn_publish(bus->nats->conn, BUS_NATS_PREFIX "certs", NULL, text, strlen(text));
    if (rc < 0 && rc != -ENOTCONN)
        log_warning("bus: cannot publish %s's certificate: %s", domain, skiff_strerror(rc));
    OPENSSL_cleanse(text, strlen(text));
    free(text);
}

/* The domains sent before that are no longer in names: each router removes its copy
 * ({"v":1,"domain":D,"removed":true}); what was sent is now names. */
static void bus__nats_certs_removed(struct bus *bus, char **names)
{
    struct bus_nats *n = bus->nats;
    json_t *now = json_object();
    for (size_t i = 0; names && names[i]; i++)
        json_object_set_new(now, names[i], json_true());
    const char *domain;
    json_t *was;
    json_object_foreach(n->cert_domains, domain, was)
    {
        if (!json_object_get(now, domain))
            bus__nats_publish_json(
                bus, BUS_NATS_PREFIX "certs", NULL,
                json_pack("{s:i,s:s,s:b}", "v", BUS_NATS_VERSION, "domain", domain, "removed", 1));
    }
    json_decref(n->cert_domains);
    n->cert_domains = now;
}

/* The certificates as read (names, chains and keys in step; all NULL when the read failed)
 * go to the routers on NATS, then the notice to reload (below). */
static void bus__nats_certs_read(void *ctx, int rc, char **names, char **chains, char **keys)
{
    struct bus_certs_read *r = ctx;
    struct bus *bus = r->bus;
    free(r);
    if (!bus)
        return; /* the bus went meanwhile */
    struct bus_nats *n = bus->nats;
    n->certs_read = NULL;
    if (bus->closing)
        return; /* its NATS connection is closed */
    bool send = natsconn_tls(n->conn);
    if (rc < 0) {
        log_error("bus: cannot read the domain certificates for the routers on NATS: %s",
                  skiff_strerror(rc));
        send = false; /* nothing is taken for removed when the store could not say */
    }
    if (!send && names && names[0] && !n->cleartext_logged) {
        log_warning("bus: domain certificates are not sent to routers on NATS: the "
                    "connection to NATS is not TLS and keys never travel in the clear "
                    "(give --nats-tls-ca FILE or tls:// URLs; docs/bus.md)");
        n->cleartext_logged = true;
    }
    if (send)
        bus__nats_certs_removed(bus, names);
    for (size_t i = 0; send && names[i]; i++)
        bus__nats_cert_publish(bus, names[i], chains[i], keys[i]);
    bus__nats_publish_json(bus, BUS_NATS_PREFIX "certs", NULL,
                           json_pack("{s:i}", "v", BUS_NATS_VERSION));
    if (n->certs_again) {
        n->certs_again = false;
        bus__nats_certs(bus);
    }
}

/* Routers on NATS get every domain's certificate and key from the store, one message each,
 * then the notice to reload: only over TLS, since a key must never cross a network in the
 * clear (docs/bus.md "Domain certificates"). A domain whose certificate was sent before and
 * is gone from the store is removed first. Over cleartext NATS the notice alone goes. The
 * store reads them through its writer (on PostgreSQL, a round trip the loop does not wait
 * for); asked again while a read is under way, it reads once more after it. */
static void bus__nats_certs(struct bus *bus)
{
    struct bus_nats *n = bus->nats;
    if (n->certs_read) {
        n->certs_again = true;
        return;
    }
    struct bus_certs_read *r = xcalloc(1, sizeof *r);
    r->bus = bus;
    n->certs_read = r;
    int rc = store_domain_cert_pairs_async(bus->store, bus__nats_certs_read, r);
    if (rc < 0) /* refused at once (the store's queue is full): its callback is never called */
        bus__nats_certs_read(r, rc, NULL, NULL, NULL);
}

void bus_certs_changed_cb(void *bus)
{
    bus_certs_changed(bus);
}

/* A routed instance is to stop: the routers get a table without it (GONE came first, so it is
 * on its way), then the drain request; the scheduler waits for their answers. */
static void bus__drain_begin(struct bus *bus, const struct platform_event *ev)
{
    if ((!bus->conns && !bus__nats_live_routers(bus)) || !ev->addr || !ev->process_type ||
        strcmp(ev->process_type, "web"))
        return; /* no router, or not routed: nothing can be in flight through us */
    struct bus_drain *d = xcalloc(1, sizeof *d);
    d->id = ev->drain_id;
    snprintf(d->addr, sizeof d->addr, "%s", ev->addr);
    d->next = bus->drains;
    bus->drains = d;
    scheduler_drain_hold(bus->sched, d->id);
    bus_routes_changed(bus);
}

static void bus__on_platform_event(void *ctx, const struct platform_event *ev)
{
    struct bus *bus = ctx;
    if (ev->type == PLATFORM_INSTANCE_DRAINING && !bus->closing)
        bus__drain_begin(bus, ev);
    if (ev->type == PLATFORM_INSTANCE_READY && !bus->closing)
        bus__joining_begin(bus, ev);
    if (ev->type == PLATFORM_INSTANCE_READY || ev->type == PLATFORM_INSTANCE_GONE ||
        ev->type == PLATFORM_APP_STARTED || ev->type == PLATFORM_APP_STOPPED)
        bus_routes_changed(bus);
}

/* ---- reading from routers ----------------------------------------------------------------- */

static void bus__note_traffic(struct bus *bus, const char *app_guid)
{
    if (bus->traffic)
        bus->traffic(bus->traffic_ctx, app_guid);
}

/* skips the literal lit at *p; false when the line does not have it there */
static bool bus__expect(const char **p, const char *end, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(end - *p) < n || memcmp(*p, lit, n))
        return false;
    *p += n;
    return true;
}

/* a JSON string's content up to its closing quote, when it holds only printable ASCII and no
 * escape; *p is left after the quote */
static bool bus__plain_string(const char **p, const char *end, const char **s, size_t *n)
{
    const char *q = *p;
    while (q < end && *q != '"') {
        unsigned char ch = (unsigned char)*q;
        if (ch < 0x20 || ch > 0x7e || ch == '\\')
            return false;
        q++;
    }
    if (q == end)
        return false;
    *s = *p;
    *n = (size_t)(q - *p);
    *p = q + 1;
    return true;
}

bool bus_access_parse_plain(const char *line, size_t len, struct bus_access *out)
{
    const char *p = line, *end = line + len, *guid;
    size_t guid_len;
    if (!bus__expect(&p, end, "{\"type\":\"access\",\"app_guid\":\"") ||
        !bus__plain_string(&p, end, &guid, &guid_len) || guid_len != 36 ||
        !bus__expect(&p, end, ",\"router_index\":"))
        return false;
    /* a JSON number that is a small non-negative integer: no leading zero, no sign or fraction */
    const char *number = p;
    int index = 0;
    while (p < end && *p >= '0' && *p <= '9' && p - number < 9)
        index = index * 10 + (*p++ - '0');
    if (p == number || (p - number > 1 && *number == '0') ||
        !bus__expect(&p, end, ",\"line\":\"") ||
        !bus__plain_string(&p, end, &out->text, &out->text_len) || !bus__expect(&p, end, "}") ||
        p != end)
        return false;
    memcpy(out->app_guid_buf, guid, 36);
    out->app_guid_buf[36] = '\0';
    out->app_guid = out->app_guid_buf;
    out->router_index = index;
    out->has_router_index = true;
    return true;
}

/* What an access line does: it goes to the app's log as [RTR/n], and a function serving
 * requests is not idle. */
static void bus__access(struct bus_conn *c, const struct bus_access *a)
{
    /* "RTR/n" by hand: one per access line, the busiest path of skiffd under traffic */
    int index = a->has_router_index ? a->router_index : c->router_index;
    char tag[32] = "RTR/", digits[12];
    size_t n = 0;
    unsigned v = index < 0 ? 0u - (unsigned)index : (unsigned)index;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    size_t at = 4;
    if (index < 0)
        tag[at++] = '-';
    while (n)
        tag[at++] = digits[--n];
    tag[at] = '\0';
    if (strlen(a->app_guid) != 36)
        return;
    logs_append(c->bus->logs, a->app_guid, tag, LOGS_OUT, a->text, a->text_len);
    bus__note_traffic(c->bus, a->app_guid); /* a function serving requests is not idle */
}

int bus_metrics_each(const json_t *msg, bus_metrics_entry_fn fn, void *ctx)
{
    json_t *apps = json_object_get(msg, "apps");
    if (!json_is_array(apps))
        return 0;
    int count = 0;
    size_t i;
    json_t *e;
    json_array_foreach(apps, i, e)
    {
        const char *app = json_string_value(json_object_get(e, "app_guid"));
        const char *process = json_string_value(json_object_get(e, "process"));
        json_t *inf = json_object_get(e, "in_flight"), *req = json_object_get(e, "requests");
        if (!app || strlen(app) != 36 || !process || !*process || strlen(process) > 63 ||
            !json_is_number(inf) || !json_is_number(req))
            continue;
        double in_flight = json_number_value(inf), requests = json_number_value(req);
        if (!(in_flight >= 0 && in_flight < 1e9) || !(requests >= 0 && requests < 1e12))
            continue;
        fn(ctx, app, process, in_flight, requests);
        count++;
    }
    return count;
}

struct bus__metrics_call {
    struct bus *bus;
    int router;
};

static void bus__metrics_entry(void *ctx, const char *app_guid, const char *process,
                               double in_flight, double requests)
{
    struct bus__metrics_call *call = ctx;
    call->bus->metrics->report(call->bus->metrics_ctx, call->router, app_guid, process, in_flight,
                               requests);
}

/* A router's second of counts (docs/bus.md "metrics") goes to the sink. */
static void bus__metrics(struct bus_conn *c, json_t *msg)
{
    if (!c->bus->metrics)
        return;
    struct bus__metrics_call call = {.bus = c->bus, .router = c->id};
    bus_metrics_each(msg, bus__metrics_entry, &call);
}

static void bus__message(struct bus_conn *c, const char *line, size_t len)
{
    struct bus *bus = c->bus;
    struct bus_access access;
    if (bus_access_parse_plain(line, len, &access)) { /* most lines, and the cheap way */
        bus__access(c, &access);
        return;
    }
    json_t *msg = json_loadb(line, len, 0, NULL);
    const char *type = json_string_value(json_object_get(msg, "type"));
    if (!type) {
        json_decref(msg);
        return; /* unknown or broken lines are ignored: routers may be newer */
    }
    if (!strcmp(type, "hello")) {
        json_t *idx = json_object_get(msg, "router_index");
        c->router_index = json_is_integer(idx) ? (int)json_integer_value(idx) : 0;
        log_info("router %d connected (pid %lld)", c->router_index,
                (long long)json_integer_value(json_object_get(msg, "pid")));
    } else if (!strcmp(type, "access")) {
        json_t *idx = json_object_get(msg, "router_index");
        access.app_guid = json_string_value(json_object_get(msg, "app_guid"));
        access.text = json_string_value(json_object_get(msg, "line"));
        access.has_router_index = json_is_integer(idx);
        access.router_index = access.has_router_index ? (int)json_integer_value(idx) : 0;
        if (access.app_guid && access.text) {
            access.text_len = strlen(access.text);
            bus__access(c, &access);
        }
    } else if (!strcmp(type, "drained")) {
        json_t *id = json_object_get(msg, "id");
        if (json_is_integer(id) && json_integer_value(id) > 0)
            bus__drain_answered(c, (uint64_t)json_integer_value(id));
    } else if (!strcmp(type, "ack")) {
        json_t *version = json_object_get(msg, "version");
        if (json_is_integer(version))
            bus__acked(c, json_integer_value(version));
    } else if (!strcmp(type, "metrics")) {
        bus__metrics(c, msg);
    } else if (!strcmp(type, "wake")) {
        start_trace("bus: wake");
        const char *app = json_string_value(json_object_get(msg, "app_guid"));
        if (app) {
            /* a request waits: the autoscaler (the one owner of instance counts) asks for
             * one at once and counts it in flight until the routers' next report */
            bus__note_traffic(bus, app);
            int rc = bus->metrics && strlen(app) == 36
                         ? bus->metrics->woken(bus->metrics_ctx, app, "web")
                         : -ENOENT;
            if (rc != 0 && rc != -ENOENT)
                logs_appendf(bus->logs, app, "RTR/0", LOGS_ERR,
                             "A request waits for this app but it cannot be started: %s",
                             skiff_strerror(rc));
        }
    }
    json_decref(msg);
}

static void bus__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct bus_conn *c = h->data;
    (void)suggested;
    buf_reserve(&c->in, 64 * 1024); /* read straight behind what is buffered */
    b->base = c->in.data + c->in.len;
    b->len = c->in.cap - c->in.len - 1;
}

static void bus__on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct bus_conn *c = s->data;
    (void)b;
    if (n < 0) {
        bus__conn_close(c);
        return;
    }
    c->in.len += (size_t)n;
    c->in.data[c->in.len] = '\0';
    size_t pos = 0, len;
    char *line;
    while ((line = buf_next_line(&c->in, &pos, &len))) {
        bus__message(c, line, len);
        if (c->closing)
            return;
    }
    buf_consume(&c->in, pos);
    if (c->in.len > BUS_LINE_MAX) {
        log_warning("bus: a router sent a line over %u bytes; closing it",
                BUS_LINE_MAX);
        bus__conn_close(c);
    }
}

static void bus__on_connection(uv_stream_t *server, int status)
{
    struct bus *bus = server->data;
    if (status < 0 || bus->closing)
        return;
    struct bus_conn *c = xcalloc(1, sizeof *c);
    c->bus = bus;
    c->id = ++bus->next_conn_id;
    uv_pipe_init(bus->loop, &c->pipe, 0);
    c->pipe.data = c;
    bus->handles++;
    if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->pipe, bus__conn_closed);
        return;
    }
    c->next = bus->conns;
    bus->conns = c;
    uv_read_start((uv_stream_t *)&c->pipe, bus__alloc, bus__on_read);
    /* it may have requests in flight to an instance draining now (it reconnected): it is
     * asked about those drains right after its table (bus__push) */
    bus__push(bus, c);
    /* a certificate may have changed while it was away */
    bus__send(c, bus__certs_message, sizeof bus__certs_message - 1);
}

/* ---- life --------------------------------------------------------------------------------- */

void bus_set_metrics(struct bus *bus, const struct bus_metrics_sink *sink, void *ctx)
{
    bus->metrics = sink;
    bus->metrics_ctx = ctx;
}

void bus_set_traffic(struct bus *bus, void (*fn)(void *ctx, const char *app_guid), void *ctx)
{
    bus->traffic = fn;
    bus->traffic_ctx = ctx;
}

int bus_new(uv_loop_t *loop, const char *socket_path, struct store *store, struct scheduler *sched,
            struct hub *hub, struct logs *logs, char *err, size_t errsize, struct bus **out)
{
    struct bus *bus = xcalloc(1, sizeof *bus);
    bus->loop = loop;
    bus->path = xstrdup(socket_path);
    bus->store = store;
    bus->sched = sched;
    bus->logs = logs;
    bus->version = time_now_ms(); /* grows across restarts, so routers take the newer table */
    uv_timer_init(loop, &bus->coalesce);
    bus->coalesce.data = bus;
    bus->made_mono = -1;
    bus->handles++;
    uv_timer_init(loop, &bus->retry);
    bus->retry.data = bus;
    bus->handles++;
    uv_timer_init(loop, &bus->ack_timeout);
    bus->ack_timeout.data = bus;
    bus->handles++;
    uv_pipe_init(loop, &bus->server, 0);
    bus->server.data = bus;
    bus->handles++;
    unlink(socket_path); /* left by a predecessor that was killed */
    int rc = uv_pipe_bind(&bus->server, socket_path);
    /* only our own user (the router) may talk to skiffd here */
    if (rc == 0 && chmod(socket_path, 0600) < 0)
        rc = -errno;
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&bus->server, 64, bus__on_connection);
    if (rc < 0) {
        snprintf(err, errsize, "cannot listen on the bus socket %s: %s", socket_path,
                 skiff_strerror(rc));
        *out = bus;
        return rc;
    }
    bus->hub = hub;
    bus->sub_id = hub_subscribe(hub, bus__on_platform_event, bus);
    *out = bus;
    return 0;
}

int bus_nats_start(struct bus *bus, const char *urls, const struct natsconn_security *security,
                   int announce_ms, int ttl_ms, char *err, size_t errsize)
{
    struct bus_nats *n = xcalloc(1, sizeof *n);
    n->announce_ms = announce_ms;
    n->ttl_ms = ttl_ms;
    n->announced = json_object();
    n->cert_domains = json_object();
    n->routers_conn.bus = bus;
    n->routers_conn.id = ++bus->next_conn_id;
    n->announcing = true;
    bus->nats = n;
    struct natsconn_config cfg = {.urls = urls,
                                  .name = "skiffd",
                                  .security = security ? *security : (struct natsconn_security){0},
                                  .on_msg = bus__nats_on_msg,
                                  .on_state = bus__nats_on_state,
                                  .ctx = bus};
    int rc = natsconn_open(bus->loop, &cfg, &n->conn, err, errsize);
    if (rc < 0)
        return rc;
    char *inbox = natsconn_new_inbox(n->conn);
    n->drained_subject = xasprintf(BUS_NATS_PREFIX "drained.%s", inbox ? inbox : "x");
    free(inbox);
    rc = natsconn_subscribe(n->conn, BUS_NATS_PREFIX "router.*");
    if (rc == 0)
        rc = natsconn_subscribe(n->conn, n->drained_subject);
    if (rc < 0) {
        snprintf(err, errsize, "cannot subscribe on NATS: %s", skiff_strerror(rc));
        return rc;
    }
    uv_timer_init(bus->loop, &n->announce);
    n->announce.data = bus;
    bus->handles++;
    uv_timer_start(&n->announce, bus__nats_on_announce, (uint64_t)announce_ms,
                   (uint64_t)announce_ms);
    bus_routes_changed(bus); /* the first announcement */
    return 0;
}

void bus_close(struct bus *bus, void (*done)(void *arg), void *arg)
{
    bus->closing = true;
    bus->done = done;
    bus->done_arg = arg;
    if (bus->sub_id)
        hub_unsubscribe(bus->hub, bus->sub_id);
    bus->sub_id = 0;
    while (bus->conns)
        bus__conn_close(bus->conns);
    while (bus->drains) /* the scheduler stops everything itself now */
        bus__drain_free(bus, bus->drains);
    while (bus->joining)
        bus__joining_free(bus, bus->joining, false);
    if (bus->nats) {
        natsconn_close(bus->nats->conn);
        bus->nats->conn = NULL;
        if (bus->nats->announce.data == bus) /* initialised */
            uv_close((uv_handle_t *)&bus->nats->announce, bus__handle_closed);
    }
    uv_close((uv_handle_t *)&bus->coalesce, bus__handle_closed);
    uv_close((uv_handle_t *)&bus->retry, bus__handle_closed);
    uv_close((uv_handle_t *)&bus->ack_timeout, bus__handle_closed);
    uv_close((uv_handle_t *)&bus->server, bus__handle_closed);
    unlink(bus->path);
}

void bus_free(struct bus *bus)
{
    if (!bus)
        return;
    while (bus->joining) /* when bus_close was never called */
        bus__joining_free(bus, bus->joining, false);
    if (bus->nats) {
        natsconn_close(bus->nats->conn); /* when bus_close was never called */
        free(bus->nats->table);
        json_decref(bus->nats->announced);
        json_decref(bus->nats->cert_domains);
        if (bus->nats->certs_read) /* its answer comes to no one */
            bus->nats->certs_read->bus = NULL;
        free(bus->nats->drained_subject);
        free(bus->nats->waits);
        free(bus->nats);
    }
    free(bus->sent_routes);
    free(bus->path);
    free(bus);
}
