/* The router's bus on NATS core (docs/bus.md, "On NATS"): every route is learnt from
 * skiff.bus.register announcements, each valid for its ttl_ms after the last one; an entry not
 * announced again in time is pruned while skiffd announces others (rn__announced_since), one
 * unregistered goes at once. The table is rebuilt from
 * the entries (as a "routes" message, so one parser serves both buses) and saved to
 * run/routes.json. While NATS is down nothing expires: the router serves what it knew, and
 * entries get a full TTL again when the connection comes back (skiffd re-announces within
 * its interval). Lines for skiffd (hello, access, wake, metrics) go to skiff.bus.router;
 * drained answers go to the drain request's reply subject. */
#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hosts/hosts.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "natsconn/natsconn.h"
#include "router/route_table.h"
#include "router/router_internal.h"
#include "tls/tls.h"

#define ROUTER_NATS_PRUNE_MS 250
/* A change is published at the next turn of the loop; the changes that follow a table by less
 * than this wait until that much has passed and make one new table (a re-announcement of N
 * routes is N messages): one parse, swap and save instead of N. */
#define ROUTER_NATS_COALESCE_MS 5
#define ROUTER_NATS_HELLO_MS 5000
#define ROUTER_NATS_DEFAULT_TTL_MS 30000
#define ROUTER_NATS_MAX_ROUTES 100000
#define ROUTER_NATS_MAX_DRAINS 1024
/* A drain whose table never came whole goes to the workers after this long anyway (skiffd
 * stops waiting for its answer at its drain timeout, 10 s by default). */
#define ROUTER_NATS_DRAIN_WAIT_MS 30000

struct rn_entry {
    char *key; /* host NUL path */
    json_t *route;
    int64_t expires_ms;
    int64_t ttl_ms;
    int64_t seen_ms; /* monotonic: its last register (or the saved table's load) */
    int64_t version; /* skiffd's table version of its last register (0: not said) */
};

/* A drain request from skiffd: waiting for its table (below), then with the workers until
 * they answer (router_nats_drained). */
struct rn_drain {
    uint64_t id;
    char *reply;
    bool waiting; /* not given to the workers yet: its table has not come whole */
    int64_t version;
    char addr_text[64];
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int64_t came_ms; /* monotonic */
};

static struct {
    const struct router_config *cfg;
    struct natsconn *conn;
    struct hosts *hosts; /* --host-addr: routes to the cells' pools (src/hosts) */
    struct rn_entry *entries;
    size_t n, cap;
    json_t *draining; /* the newest register's "draining": instances stopped on purpose */
    uv_timer_t prune;
    uv_timer_t hello;
    uv_timer_t coalesce;
    int64_t published_mono; /* when the last table was published; -1: never */
    /* the last register of any route (monotonic; -1: none yet) and its TTL: whether skiffd
     * announces at all (rn__announced_since) */
    int64_t heard_mono, heard_ttl_ms;
    bool silence_logged; /* "no skiffd announces" said once for this silence */
    int64_t version;
    /* skiffd's table versions (docs/bus.md "ack"): the newest one announced, how many of its
     * routes came, the newest one that came whole, and the last one acknowledged */
    int64_t seen_version, seen_count, whole_version, acked_version;
    bool up;
    char subject[64];     /* skiff.bus.router.<id>: where this router's lines go */
    char *unknown_logged; /* subjects already logged as unknown or malformed, '\n'-separated */
    pthread_mutex_t lock; /* drains: answered from workers */
    struct rn_drain drains[ROUTER_NATS_MAX_DRAINS];
    size_t n_drains;
    size_t drains_waiting; /* of drains, those waiting for their table (main thread) */
} rn = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- parsing (pure, unit-tested with hostile input) ------------------------------------- */

static bool rn__text(json_t *o, const char *key, size_t max)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s && strlen(s) <= max;
}

/* A PEM text of a pair message: a string within TLS_PEM_MAX, without NUL. */
static bool rn__pem(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) && json_string_length(v) <= TLS_PEM_MAX &&
           strlen(json_string_value(v)) == json_string_length(v) && json_string_length(v) > 0;
}

/* A domain's name becomes a file name, so only a DNS name (lowercase letters, digits, '-' and
 * '.', no empty label) passes. */
static int rn__parse_domain(json_t *o, struct router_nats_msg *out, char *err, size_t errsize)
{
    const char *d = json_string_value(json_object_get(o, "domain"));
    size_t len = d ? strlen(d) : 0;
    bool ok = len > 0 && len < sizeof out->domain &&
              strspn(d, "abcdefghijklmnopqrstuvwxyz0123456789-.") == len && d[0] != '.' &&
              d[len - 1] != '.' && !strstr(d, "..");
    if (!ok) {
        snprintf(err, errsize, "\"domain\" is not a DNS name");
        return -EINVAL;
    }
    snprintf(out->domain, sizeof out->domain, "%s", d);
    return 0;
}

/* A domain's removal: {"v":1,"domain":D,"removed":true}, nothing else. */
static int rn__parse_removal(json_t *o, struct router_nats_msg *out, char *err, size_t errsize)
{
    if (!json_is_true(json_object_get(o, "removed")) || json_object_size(o) != 3) {
        snprintf(err, errsize, "a removal is {\"v\",\"domain\",\"removed\":true} alone");
        return -EINVAL;
    }
    if (rn__parse_domain(o, out, err, errsize) < 0)
        return -EINVAL;
    out->removed = true;
    return 0;
}

/* A domain's pair: its DNS name, "cert" and "key". */
static int rn__parse_pair(json_t *o, struct router_nats_msg *out, char *err, size_t errsize)
{
    if (json_object_get(o, "removed"))
        return rn__parse_removal(o, out, err, errsize);
    if (rn__parse_domain(o, out, err, errsize) < 0)
        return -EINVAL;
    if (!rn__pem(o, "cert") || !rn__pem(o, "key")) {
        snprintf(err, errsize, "\"cert\" and \"key\" must be PEM text of at most %d bytes",
                 TLS_PEM_MAX);
        return -EINVAL;
    }
    out->pair = json_incref(o);
    return 0;
}

int router_nats_parse(const char *subject, const char *data, size_t len,
                      struct router_nats_msg *out, char *err, size_t errsize)
{
    memset(out, 0, sizeof *out);
    out->kind = ROUTER_NATS_UNKNOWN;
    if (!subject || strncmp(subject, ROUTER_NATS_PREFIX, strlen(ROUTER_NATS_PREFIX))) {
        snprintf(err, errsize, "a subject outside " ROUTER_NATS_PREFIX "*");
        return -EINVAL;
    }
    const char *name = subject + strlen(ROUTER_NATS_PREFIX);
    enum router_nats_kind kind = !strcmp(name, "register")     ? ROUTER_NATS_REGISTER
                                 : !strcmp(name, "unregister") ? ROUTER_NATS_UNREGISTER
                                 : !strcmp(name, "drain")      ? ROUTER_NATS_DRAIN
                                 : !strcmp(name, "certs")      ? ROUTER_NATS_CERTS
                                                               : ROUTER_NATS_UNKNOWN;
    if (kind == ROUTER_NATS_UNKNOWN)
        return 0; /* a newer skiffd's subject: the caller logs it once */
    json_error_t jerr;
    json_t *o = data ? json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    json_t *v = json_object_get(o, "v");
    if (!json_is_object(o)) {
        snprintf(err, errsize, "%s: not a JSON object", subject);
        goto bad;
    }
    if (!json_is_integer(v) || json_integer_value(v) != ROUTER_NATS_VERSION) {
        snprintf(err, errsize, "%s: \"v\" is not %d (a message of another version)", subject,
                 ROUTER_NATS_VERSION);
        goto bad;
    }
    if (kind == ROUTER_NATS_REGISTER) {
        json_t *route = json_object_get(o, "route"), *ttl = json_object_get(o, "ttl_ms");
        if (!json_is_object(route) || !rn__text(route, "host", 253) ||
            !rn__text(route, "path", 1024)) {
            snprintf(err, errsize, "%s: \"route\" needs \"host\" and \"path\" strings", subject);
            goto bad;
        }
        if (!json_is_integer(ttl) || json_integer_value(ttl) < 100 ||
            json_integer_value(ttl) > 3600000) {
            snprintf(err, errsize, "%s: \"ttl_ms\" is not a number from 100 to 3600000", subject);
            goto bad;
        }
        json_t *version = json_object_get(o, "version"), *count = json_object_get(o, "count");
        if (json_is_integer(version) && json_integer_value(version) > 0 && json_is_integer(count) &&
            json_integer_value(count) > 0) {
            out->table_version = json_integer_value(version);
            out->table_count = json_integer_value(count);
        }
        out->route = json_incref(route);
        out->ttl_ms = json_integer_value(ttl);
        json_t *draining = json_object_get(o, "draining");
        if (json_is_array(draining) && json_array_size(draining) <= ROUTER_NATS_MAX_DRAINS)
            out->draining = json_incref(draining); /* its items are checked as a table's */
    } else if (kind == ROUTER_NATS_UNREGISTER) {
        if (!rn__text(o, "host", 253) || !rn__text(o, "path", 1024)) {
            snprintf(err, errsize, "%s: needs \"host\" and \"path\" strings", subject);
            goto bad;
        }
        snprintf(out->host, sizeof out->host, "%s", json_string_value(json_object_get(o, "host")));
        snprintf(out->path, sizeof out->path, "%s", json_string_value(json_object_get(o, "path")));
        json_t *version = json_object_get(o, "version");
        if (json_is_integer(version) && json_integer_value(version) > 0)
            out->table_version = json_integer_value(version);
    } else if (kind == ROUTER_NATS_DRAIN) {
        if (router_bus_parse_drain(o, &out->addr, &out->addr_len, &out->drain_id, err, errsize) < 0)
            goto bad;
        snprintf(out->drain_addr, sizeof out->drain_addr, "%s",
                 json_string_value(json_object_get(o, "addr")));
        json_t *version = json_object_get(o, "version");
        if (json_is_integer(version) && json_integer_value(version) > 0)
            out->drain_version = json_integer_value(version);
    } else if (kind == ROUTER_NATS_CERTS && json_object_get(o, "domain")) {
        if (rn__parse_pair(o, out, err, errsize) < 0) {
            snprintf(err + strlen(err), errsize - strlen(err), " (%s)", subject);
            goto bad;
        }
    }
    out->kind = kind;
    json_decref(o);
    return 0;
bad:
    json_decref(o);
    return -EINVAL;
}

void router_nats_msg_free(struct router_nats_msg *m)
{
    json_decref(m->route);
    m->route = NULL;
    json_decref(m->draining);
    m->draining = NULL;
    if (m->pair) { /* the key's text wiped before jansson frees it */
        json_t *k = json_object_get(m->pair, "key");
        OPENSSL_cleanse((char *)json_string_value(k), json_string_length(k));
        json_decref(m->pair);
        m->pair = NULL;
    }
}

/* ---- the table --------------------------------------------------------------------------- */

static char *rn__key(const char *host, const char *path)
{
    size_t h = strlen(host), p = strlen(path);
    char *k = xmalloc(h + p + 2);
    memcpy(k, host, h + 1);
    memcpy(k + h + 1, path, p + 1);
    return k;
}

static bool rn__key_eq(const char *k, const char *host, const char *path)
{
    return !strcmp(k, host) && !strcmp(k + strlen(k) + 1, path);
}

static struct rn_entry *rn__find(const char *host, const char *path)
{
    for (size_t i = 0; i < rn.n; i++)
        if (rn__key_eq(rn.entries[i].key, host, path))
            return &rn.entries[i];
    return NULL;
}

static void rn__remove(size_t i)
{
    free(rn.entries[i].key);
    json_decref(rn.entries[i].route);
    rn.entries[i] = rn.entries[--rn.n];
}

static void rn__publish(void);

/* Tells skiffd the newest of its versions this router serves whole. */
static void rn__ack(void)
{
    if (rn.whole_version <= rn.acked_version || !rn.up)
        return;
    rn.acked_version = rn.whole_version;
    char line[64];
    int n = snprintf(line, sizeof line, "{\"type\":\"ack\",\"version\":%lld}\n",
                     (long long)rn.acked_version);
    natsconn_publish(rn.conn, rn.subject, NULL, line, (size_t)n);
}

/* A register of skiffd's table version (of count routes) came: once all of them have, and
 * the table with them is served, that version is acknowledged. */
static void rn__table_seen(int64_t version, int64_t count)
{
    if (version <= 0 || version < rn.seen_version)
        return;
    if (version > rn.seen_version) {
        rn.seen_version = version;
        rn.seen_count = 0;
    }
    if (++rn.seen_count != count)
        return;
    rn.whole_version = version;
    if (!uv_is_active((uv_handle_t *)&rn.coalesce))
        rn__ack(); /* else once the coalesced table is published */
}

/* Publishes the entries as the current table (and saves it). */
static void rn__publish(void)
{
    json_t *routes = json_array();
    for (size_t i = 0; i < rn.n; i++)
        json_array_append(routes, rn.entries[i].route);
    int64_t now = time_now_ms();
    rn.version = now > rn.version ? now : rn.version + 1;
    json_t *msg = json_pack("{s:s,s:I,s:o}", "type", "routes", "version", (json_int_t)rn.version,
                            "routes", routes);
    if (rn.draining) /* what left the table for a drain is not lost (route_table_lost) */
        json_object_set(msg, "draining", rn.draining);
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    bool served = text && router_bus_apply_routes(text, strlen(text), false) >= 0;
    rn.published_mono = time_mono_ms();
    rn__ack();
    if (served) /* after the ack: only a restart needs the save, and its fsync can take long */
        router_bus_save_routes(text, strlen(text));
    free(text);
}

/* Whether the table changed (a new route, or one announced differently); an announcement
 * of the same route only renews its time. version: the table's it came in (0: not said). */
static bool rn__upsert(json_t *route, int64_t ttl_ms, int64_t version)
{
    const char *host = json_string_value(json_object_get(route, "host"));
    const char *path = json_string_value(json_object_get(route, "path"));
    struct rn_entry *e = rn__find(host, path);
    if (!e) {
        if (rn.n >= ROUTER_NATS_MAX_ROUTES) {
            log_warning("bus: over %d routes announced on NATS; skipping %s%s",
                        ROUTER_NATS_MAX_ROUTES, host, path);
            return false;
        }
        if (rn.n == rn.cap) {
            rn.cap = rn.cap ? rn.cap * 2 : 64;
            rn.entries = xrealloc(rn.entries, rn.cap * sizeof *rn.entries);
        }
        e = &rn.entries[rn.n++];
        e->key = rn__key(host, path);
        e->route = NULL;
    }
    e->ttl_ms = ttl_ms;
    e->seen_ms = time_mono_ms();
    e->expires_ms = e->seen_ms + ttl_ms;
    e->version = version;
    if (e->route && json_equal(e->route, route))
        return false;
    json_decref(e->route);
    e->route = json_incref(route);
    return true;
}

static void rn__on_coalesced(uv_timer_t *t)
{
    rn__publish();
}

/* ---- drains ------------------------------------------------------------------------------ */

/* Whether a route this router knows has addr (as skiffd wrote it) among its backends. */
static bool rn__routes_to(const char *addr)
{
    for (size_t i = 0; i < rn.n; i++) {
        size_t k;
        json_t *b;
        json_array_foreach(json_object_get(rn.entries[i].route, "backends"), k, b)
        {
            const char *a = json_string_value(json_object_get(b, "addr"));
            if (a && !strcmp(a, addr))
                return true;
        }
    }
    return false;
}

/* Whether drain d's table is here: the version it follows (or a newer one) came whole, or no
 * route has its address any more. skiffd sends the table before the drain, but the two come
 * on different subscriptions, which libnats delivers on threads of their own: a drain can
 * come first, and answered then, new requests would still go to the instance it stops. */
static bool rn__drain_ready(const struct rn_drain *d, int64_t now)
{
    return (d->version > 0 && d->version <= rn.whole_version) || !rn__routes_to(d->addr_text) ||
           now - d->came_ms >= ROUTER_NATS_DRAIN_WAIT_MS;
}

/* Gives the workers each waiting drain whose table is here, the table served first (a change
 * waiting for its pace is published now): they answer once nothing is in flight to it. */
static void rn__drains_start(void)
{
    int64_t now = time_mono_ms();
    while (rn.drains_waiting > 0) {
        struct rn_drain go;
        bool found = false;
        pthread_mutex_lock(&rn.lock);
        for (size_t i = 0; i < rn.n_drains && !found; i++) {
            struct rn_drain *d = &rn.drains[i];
            if (d->waiting && rn__drain_ready(d, now)) {
                d->waiting = false;
                go = *d;
                found = true;
            }
        }
        pthread_mutex_unlock(&rn.lock);
        if (!found)
            return;
        rn.drains_waiting--;
        if (now - go.came_ms >= ROUTER_NATS_DRAIN_WAIT_MS)
            log_warning("bus: drain %llu of %s: its table (version %lld) did not come whole "
                        "within %d ms; drained with the table this router has",
                        (unsigned long long)go.id, go.addr_text, (long long)go.version,
                        ROUTER_NATS_DRAIN_WAIT_MS);
        if (uv_is_active((uv_handle_t *)&rn.coalesce)) {
            uv_timer_stop(&rn.coalesce);
            rn__publish();
        }
        router_proxy_drain(&go.addr, go.addr_len, go.id);
    }
}

/* A drain request: it waits for its table (rn__drain_ready), then for the workers. */
static void rn__drain_came(const struct router_nats_msg *m, const char *reply)
{
    pthread_mutex_lock(&rn.lock);
    bool room = rn.n_drains < ROUTER_NATS_MAX_DRAINS;
    if (room) {
        struct rn_drain *d = &rn.drains[rn.n_drains++];
        *d = (struct rn_drain){.id = m->drain_id,
                               .reply = xstrdup(reply),
                               .waiting = true,
                               .version = m->drain_version,
                               .addr = m->addr,
                               .addr_len = m->addr_len,
                               .came_ms = time_mono_ms()};
        snprintf(d->addr_text, sizeof d->addr_text, "%s", m->drain_addr);
    }
    pthread_mutex_unlock(&rn.lock);
    if (room) {
        rn.drains_waiting++;
        rn__drains_start();
    }
}

/* The table changed: publish it soon. */
static void rn__changed(void)
{
    if (!uv_is_active((uv_handle_t *)&rn.coalesce))
        uv_timer_start(&rn.coalesce, rn__on_coalesced,
                       (uint64_t)time_pace_delay_ms(time_mono_ms(), rn.published_mono,
                                                    ROUTER_NATS_COALESCE_MS),
                       0);
}

/* Whether skiffd announced anything a quarter of e's TTL or more after e's last register. One
 * that announces re-announces every route within the TTL: what it left out is gone. One that
 * fell silent (killed, or no skiffd leads) says nothing of e: its instances run on in their
 * cells, and the router serves what it knew, as it does while NATS is down. A quarter of the
 * TTL keeps one re-announcement's registers (sent together) from counting as news after
 * each other. */
static bool rn__announced_since(const struct rn_entry *e)
{
    return rn.heard_mono >= 0 && rn.heard_mono - e->seen_ms >= e->ttl_ms / 4;
}

/* Every entry valid for its TTL from now (NATS back, or skiffd announcing again after a
 * silence): the announcer has that long to announce each again before it is pruned. */
static void rn__renew_all(int64_t now)
{
    for (size_t i = 0; i < rn.n; i++) {
        rn.entries[i].seen_ms = now;
        rn.entries[i].expires_ms = now + rn.entries[i].ttl_ms;
    }
}

/* A register came: after a silence of a TTL or more (or the first since the start, over a
 * saved table), every route known is renewed first. */
static void rn__heard(int64_t ttl_ms)
{
    int64_t now = time_mono_ms();
    if (rn.heard_mono < 0 || now - rn.heard_mono >= rn.heard_ttl_ms) {
        if (rn.heard_mono >= 0 && rn.silence_logged)
            log_info("bus: routes are announced again, after %lld ms; the %zu routes known "
                     "are kept for their TTL, for skiffd to announce each again",
                     (long long)(now - rn.heard_mono), rn.n);
        rn__renew_all(now);
    }
    rn.heard_mono = now;
    rn.heard_ttl_ms = ttl_ms;
    rn.silence_logged = false;
}

static void rn__on_prune(uv_timer_t *t)
{
    if (!rn.up)
        return; /* NATS is down: serve what we knew */
    int64_t now = time_mono_ms();
    bool changed = false, kept = false;
    for (size_t i = 0; i < rn.n;)
        if (rn.entries[i].expires_ms <= now && !rn__announced_since(&rn.entries[i])) {
            kept = true; /* nothing announced since: skiffd is silent, not the route gone */
            i++;
        } else if (rn.entries[i].expires_ms <= now) {
            log_info("bus: route %s%s was not announced again within %lld ms; pruned",
                     rn.entries[i].key, rn.entries[i].key + strlen(rn.entries[i].key) + 1,
                     (long long)rn.entries[i].ttl_ms);
            rn__remove(i);
            changed = true;
        } else {
            i++;
        }
    if (kept && !rn.silence_logged) {
        rn.silence_logged = true;
        log_warning("bus: no skiffd has announced a route for %lld ms; serving the %zu routes "
                    "known until one does (instances run on in their cells while no skiffd "
                    "leads)",
                    (long long)(now - rn.heard_mono), rn.n);
    }
    if (changed)
        rn__changed();
    rn__drains_start(); /* a pruned route's, or one that waited too long */
}

/* Logged once per subject (bounded), then skipped silently. */
static void rn__log_once(const char *subject, const char *what)
{
    size_t n = strlen(subject);
    const char *l = rn.unknown_logged;
    while (l && *l) {
        const char *e = strchr(l, '\n');
        if ((size_t)(e - l) == n && !memcmp(l, subject, n))
            return;
        l = e + 1;
    }
    size_t have = rn.unknown_logged ? strlen(rn.unknown_logged) : 0;
    if (have > 64 * 1024)
        return;
    rn.unknown_logged = xrealloc(rn.unknown_logged, have + n + 2);
    memcpy(rn.unknown_logged + have, subject, n);
    rn.unknown_logged[have + n] = '\n';
    rn.unknown_logged[have + n + 1] = 0;
    log_warning("bus: skipping NATS messages on %s: %s (logged once)", subject, what);
}

/* A domain's pair from skiffd becomes HOME/tls/domains/DOMAIN.pem (0600, in a 0700 folder),
 * where this router reads certificates, unless the file already holds exactly it. */
static void rn__cert_write(const struct router_nats_msg *m)
{
    const char *cert = json_string_value(json_object_get(m->pair, "cert"));
    const char *key = json_string_value(json_object_get(m->pair, "key"));
    struct buf pem = {0};
    buf_puts(&pem, cert);
    if (pem.data[pem.len - 1] != '\n')
        buf_puts(&pem, "\n");
    buf_puts(&pem, key);
    char *dir = xasprintf("%s/tls/domains", rn.cfg->home);
    char *path = xasprintf("%s/%s.pem", dir, m->domain);
    char *old = NULL;
    size_t old_len = 0;
    bool same = file_read(path, &old, &old_len) == 0 && old_len == pem.len &&
                memcmp(old, pem.data, pem.len) == 0;
    if (old)
        OPENSSL_cleanse(old, old_len);
    free(old);
    int r = 0;
    if (!same) {
        r = mkdir_p(dir, 0700);
        if (r == 0)
            r = file_write_atomic(path, pem.data, pem.len, 0600);
        if (r == 0)
            r = chmod(path, 0600) < 0 ? -errno : 0;
        if (r < 0)
            log_error("HTTPS: cannot write %s's certificate to %s: %s", m->domain, path,
                      skiff_strerror(r));
        else
            log_info("HTTPS: %s's certificate came from skiffd", m->domain);
    }
    OPENSSL_cleanse(pem.data, pem.len);
    buf_free(&pem);
    free(path);
    free(dir);
}

/* A domain's certificate left the store: its file goes (the notice that follows reloads). */
static void rn__cert_remove(const struct router_nats_msg *m)
{
    char *path = xasprintf("%s/tls/domains/%s.pem", rn.cfg->home, m->domain);
    if (unlink(path) == 0)
        log_info("HTTPS: %s's certificate was removed by skiffd", m->domain);
    else if (errno != ENOENT)
        log_error("HTTPS: cannot remove %s's certificate %s: %s", m->domain, path,
                  skiff_strerror(-errno));
    free(path);
}

static void rn__on_msg(void *ctx, const char *subject, const char *reply, const char *data,
                       size_t len)
{
    struct router_nats_msg m;
    char err[256];
    if (router_nats_parse(subject, data, len, &m, err, sizeof err) < 0) {
        rn__log_once(subject, err);
        return;
    }
    switch (m.kind) {
    case ROUTER_NATS_REGISTER:
        if (m.table_version <= 0 || m.table_version >= rn.seen_version) {
            /* every register of a version carries its drains: the newest one's count */
            json_decref(rn.draining);
            rn.draining = json_incref(m.draining);
        }
        rn__heard(m.ttl_ms);
        if (rn__upsert(m.route, m.ttl_ms, m.table_version))
            rn__changed();
        rn__table_seen(m.table_version, m.table_count);
        rn__drains_start();
        break;
    case ROUTER_NATS_UNREGISTER:
        for (size_t i = 0; i < rn.n; i++)
            if (rn__key_eq(rn.entries[i].key, m.host, m.path)) {
                /* a register of a newer table came first (another subscription's thread):
                 * the route was mapped again since, and stays */
                if (m.table_version > 0 && rn.entries[i].version > m.table_version)
                    break;
                rn__remove(i);
                rn__changed();
                break;
            }
        rn__drains_start();
        break;
    case ROUTER_NATS_DRAIN:
        if (!reply) {
            rn__log_once(subject, "a drain request without a reply subject");
            break;
        }
        rn__drain_came(&m, reply);
        break;
    case ROUTER_NATS_CERTS:
        if (m.removed)
            rn__cert_remove(&m);
        else if (m.pair)
            rn__cert_write(&m); /* the notice that follows the pairs reloads them */
        else
            router_tls_reload(rn.cfg);
        break;
    case ROUTER_NATS_UNKNOWN:
        rn__log_once(subject, "a subject this router does not know (is skiffd newer?)");
        break;
    }
    router_nats_msg_free(&m);
}

static void rn__hello(void)
{
    char *hello = xasprintf("{\"type\":\"hello\",\"pid\":%d,\"router_index\":%d}\n", (int)getpid(),
                            rn.cfg->router_index);
    natsconn_publish(rn.conn, rn.subject, NULL, hello, strlen(hello));
    free(hello);
}

static void rn__on_hello(uv_timer_t *t)
{
    if (rn.up)
        rn__hello();
}

static void rn__on_state(void *ctx, bool up)
{
    rn.up = up;
    router_bus_set_connected(up);
    if (up) {
        /* skiffd re-announces within its interval: every entry gets its full time again */
        rn__renew_all(time_mono_ms());
        log_info("bus: connected to NATS");
        rn__hello();
    } else {
        log_warning("bus: NATS is unreachable; serving the last route table");
    }
}

/* The saved table's routes become entries (a full default TTL), so a restarted router serves
 * them and skiffd's next announcements replace them. */
static void rn__seed(void)
{
    char *path = xasprintf("%s/run/routes.json", rn.cfg->home);
    char *data = NULL;
    size_t len = 0;
    if (file_read(path, &data, &len) == 0) {
        json_t *o = json_loadb(data, len, 0, NULL);
        size_t i;
        json_t *r;
        json_array_foreach(json_object_get(o, "routes"), i, r)
        {
            if (json_is_object(r) && rn__text(r, "host", 253) && rn__text(r, "path", 1024))
                rn__upsert(r, ROUTER_NATS_DEFAULT_TTL_MS, 0);
        }
        json_decref(o);
    }
    free(data);
    free(path);
}

int router_nats_start(uv_loop_t *loop, const struct router_config *cfg)
{
    rn.cfg = cfg;
    uint64_t id = 0;
    if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
        id = (uint64_t)time_now_ms() ^ ((uint64_t)getpid() << 32);
    snprintf(rn.subject, sizeof rn.subject, ROUTER_NATS_PREFIX "router.%016llx",
             (unsigned long long)id);
    uv_timer_init(loop, &rn.coalesce);
    rn.published_mono = -1;
    rn.heard_mono = -1;
    rn__seed();
    char err[256];
    struct natsconn_config ncfg = {.urls = cfg->nats_urls,
                                   .name = "skiff-router",
                                   .security = cfg->nats_security,
                                   .on_msg = rn__on_msg,
                                   .on_state = rn__on_state};
    int rc = natsconn_open(loop, &ncfg, &rn.conn, err, sizeof err);
    if (rc < 0) {
        log_error("bus: %s", err);
        return rc;
    }
    /* not skiff.bus.*: that would bring every router's access lines to every router */
    static const char *const subjects[] = {ROUTER_NATS_PREFIX "register",
                                           ROUTER_NATS_PREFIX "unregister",
                                           ROUTER_NATS_PREFIX "drain", ROUTER_NATS_PREFIX "certs"};
    for (size_t i = 0; i < ARRAY_SIZE(subjects); i++) {
        rc = natsconn_subscribe(rn.conn, subjects[i]);
        if (rc < 0) {
            log_error("bus: cannot subscribe to %s: %s", subjects[i], skiff_strerror(rc));
            return rc;
        }
    }
    if (cfg->host_addr && *cfg->host_addr) {
        rc = hosts_start(loop,
                         &(struct hosts_config){.nats_urls = cfg->nats_urls,
                                                .security = cfg->nats_security,
                                                .addr = cfg->host_addr,
                                                .roles = HOSTS_ROUTER},
                         &rn.hosts, err, sizeof err);
        if (rc < 0) {
            log_error("%s", err);
            return rc;
        }
    }
    uv_timer_init(loop, &rn.prune);
    uv_timer_start(&rn.prune, rn__on_prune, ROUTER_NATS_PRUNE_MS, ROUTER_NATS_PRUNE_MS);
    uv_timer_init(loop, &rn.hello);
    uv_timer_start(&rn.hello, rn__on_hello, ROUTER_NATS_HELLO_MS, ROUTER_NATS_HELLO_MS);
    return 0;
}

bool router_nats_active(void)
{
    return rn.conn != NULL;
}

void router_nats_send(const char *lines, size_t len)
{
    natsconn_publish(rn.conn, rn.subject, NULL, lines, len);
}

bool router_nats_drained(uint64_t id)
{
    char *reply = NULL;
    pthread_mutex_lock(&rn.lock);
    for (size_t i = 0; i < rn.n_drains; i++)
        if (rn.drains[i].id == id && !rn.drains[i].waiting) {
            reply = rn.drains[i].reply;
            rn.drains[i] = rn.drains[--rn.n_drains];
            break;
        }
    pthread_mutex_unlock(&rn.lock);
    if (!reply)
        return false;
    char line[96];
    int n =
        snprintf(line, sizeof line, "{\"type\":\"drained\",\"id\":%llu}\n", (unsigned long long)id);
    natsconn_publish(rn.conn, reply, NULL, line, (size_t)n);
    free(reply);
    return true;
}

void router_nats_stop(void)
{
    if (!rn.conn)
        return;
    uv_close((uv_handle_t *)&rn.prune, NULL);
    uv_close((uv_handle_t *)&rn.coalesce, NULL);
    uv_close((uv_handle_t *)&rn.hello, NULL);
    natsconn_close(rn.conn);
    rn.conn = NULL;
    hosts_stop(rn.hosts);
    rn.hosts = NULL;
    while (rn.n)
        rn__remove(rn.n - 1);
    free(rn.entries);
    rn.entries = NULL;
    json_decref(rn.draining);
    rn.draining = NULL;
    rn.cap = 0;
    free(rn.unknown_logged);
    rn.unknown_logged = NULL;
    for (size_t i = 0; i < rn.n_drains; i++)
        free(rn.drains[i].reply);
    rn.n_drains = 0;
    rn.drains_waiting = 0;
}
