/* hosts: see hosts.h and docs/bus.md "Hosts". */
#include "hosts/hosts.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#define HOSTS_PREFIX "skiff.hosts."
#define HOSTS_VERSION 1
#define HOSTS_MAX 1024 /* hosts remembered; more announcements are ignored (logged once) */
/* after the first announcement, how long the others have to answer it (hosts_settle) */
#define HOSTS_SETTLE_QUIET_MS 500

struct hosts_peer {
    char id[33];
    struct in_addr addr;
    unsigned roles;
    bool has_pool;
    struct net_pool pool;
    int64_t expires_ms; /* monotonic */
};

struct hosts {
    uv_loop_t *loop;
    struct natsconn *conn;
    char id[33];
    struct in_addr addr;
    unsigned roles;
    bool has_pool;
    struct net_pool pool;
    int announce_ms, ttl_ms;
    uv_timer_t tick;
    uv_timer_t settle; /* hosts_settle's deadline */
    int settle_state;  /* 0 waiting for NATS, 1 announced, waiting for answers, 2 done */
    bool joining;      /* a cell until hosts_settle found no overlap: asks, is not recorded */
    bool said_hello;
    struct hosts_peer *peers;
    size_t n_peers;
    /* what the firewall was last given, so nft runs only when it changes */
    struct in_addr *sources;
    size_t n_sources;
    bool sources_set;
    char overlap[512]; /* the first overlapping pool heard, said by hosts_settle */
    bool said_full, said_routes_error, said_firewall_error;
};

static const char *hosts__subject(unsigned roles)
{
    return roles == HOSTS_ROUTER ? HOSTS_PREFIX "router" : HOSTS_PREFIX "skiffd";
}

static void hosts__announce(struct hosts *h, bool hello)
{
    char addr[INET_ADDRSTRLEN], pool[NET_POOL_STRLEN] = "";
    inet_ntop(AF_INET, &h->addr, addr, sizeof addr);
    json_t *roles = json_array();
    if (h->roles & HOSTS_CONTROLLER)
        json_array_append_new(roles, json_string("controller"));
    if (h->roles & HOSTS_CELL)
        json_array_append_new(roles, json_string("cell"));
    if (h->roles & HOSTS_ROUTER)
        json_array_append_new(roles, json_string("router"));
    json_t *o = json_pack("{s:i,s:s,s:s,s:o,s:i}", "v", HOSTS_VERSION, "id", h->id, "addr", addr,
                          "roles", roles, "ttl_ms", h->ttl_ms);
    if (h->joining) /* only asks: a pool that may yet be refused is routed nowhere */
        json_object_set_new(o, "joining", json_true());
    if (h->has_pool) {
        net_pool_format(&h->pool, pool);
        json_object_set_new(o, "pool", json_string(pool));
    }
    if (hello)
        json_object_set_new(o, "hello", json_true());
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    natsconn_publish(h->conn, hosts__subject(h->roles), NULL, text, strlen(text));
    free(text);
}

/* Routes to every other host's pool, and the firewall's sources: routers and controllers. */
static void hosts__apply(struct hosts *h)
{
    struct net_peer_route *routes = xcalloc(h->n_peers + 1, sizeof(*routes));
    struct in_addr *sources = xcalloc(h->n_peers + 1, sizeof(*sources));
    size_t n_routes = 0, n_sources = 0;
    for (size_t i = 0; i < h->n_peers; i++) {
        const struct hosts_peer *p = &h->peers[i];
        if (p->has_pool)
            routes[n_routes++] = (struct net_peer_route){.pool = p->pool, .via = p->addr};
        bool dup = false;
        for (size_t k = 0; k < n_sources && !dup; k++)
            dup = sources[k].s_addr == p->addr.s_addr;
        if (!dup && (p->roles & (HOSTS_ROUTER | HOSTS_CONTROLLER)))
            sources[n_sources++] = p->addr;
    }
    char err[256];
    if (net_peer_routes_set(routes, n_routes, err, sizeof err) < 0) {
        if (!h->said_routes_error)
            log_warning("hosts: %s (tried again every %d ms)", err, h->announce_ms);
        h->said_routes_error = true;
    } else
        h->said_routes_error = false;
    /* only a cell has instances to let routers reach */
    bool same = h->sources_set && n_sources == h->n_sources &&
                !memcmp(sources, h->sources, n_sources * sizeof(*sources));
    if ((h->roles & HOSTS_CELL) && !same) {
        if (net_firewall_peer_sources(sources, n_sources, err, sizeof err) < 0) {
            if (!h->said_firewall_error)
                log_error("hosts: %s", err);
            h->said_firewall_error = true;
        } else {
            h->said_firewall_error = false;
            free(h->sources);
            h->sources = sources;
            h->n_sources = n_sources;
            h->sources_set = true;
            sources = NULL;
        }
    }
    free(sources);
    free(routes);
}

static unsigned hosts__roles(json_t *arr, bool *ok)
{
    unsigned roles = 0;
    size_t i;
    json_t *v;
    *ok = json_is_array(arr) && json_array_size(arr) > 0 && json_array_size(arr) <= 3;
    json_array_foreach(arr, i, v)
    {
        const char *r = json_string_value(v);
        if (r && !strcmp(r, "controller"))
            roles |= HOSTS_CONTROLLER;
        else if (r && !strcmp(r, "cell"))
            roles |= HOSTS_CELL;
        else if (r && !strcmp(r, "router"))
            roles |= HOSTS_ROUTER;
        else
            *ok = false;
    }
    return roles;
}

/* Parses one announcement. The subject bounds what it may claim: on skiff.hosts.router
 * (the only one a router's NATS permissions allow it) nothing but the router role and no pool. */
static int hosts__parse(const char *subject, const char *data, size_t len, struct hosts_peer *out,
                        bool *hello, bool *joining, char *err, size_t errsize)
{
    bool from_router = !strcmp(subject, HOSTS_PREFIX "router");
    json_error_t jerr;
    json_t *o = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    int rc = -EINVAL;
    const char *id = json_string_value(json_object_get(o, "id"));
    const char *addr = json_string_value(json_object_get(o, "addr"));
    json_t *ttl = json_object_get(o, "ttl_ms"), *pool = json_object_get(o, "pool");
    bool roles_ok;
    memset(out, 0, sizeof(*out));
    out->roles = hosts__roles(json_object_get(o, "roles"), &roles_ok);
    if (!json_is_object(o))
        snprintf(err, errsize, "not a JSON object");
    else if (json_integer_value(json_object_get(o, "v")) != HOSTS_VERSION)
        snprintf(err, errsize, "\"v\" is not %d", HOSTS_VERSION);
    else if (!id || !*id || strlen(id) >= sizeof(out->id) ||
             strspn(id, "0123456789abcdef") != strlen(id))
        snprintf(err, errsize, "\"id\" is not 1-32 lowercase hex digits");
    else if (!addr || inet_pton(AF_INET, addr, &out->addr) != 1)
        snprintf(err, errsize, "\"addr\" is not an IPv4 address");
    else if (!roles_ok || (from_router && out->roles != HOSTS_ROUTER))
        snprintf(err, errsize, "\"roles\" is not a list of controller, cell, router%s",
                 from_router ? " (only router on this subject)" : "");
    else if (!json_is_integer(ttl) || json_integer_value(ttl) < 100 ||
             json_integer_value(ttl) > 3600000)
        snprintf(err, errsize, "\"ttl_ms\" is not a number from 100 to 3600000");
    else if (pool && (from_router || !(out->roles & HOSTS_CELL) || !json_is_string(pool) ||
                      net_pool_parse(json_string_value(pool), &out->pool, err, errsize) < 0)) {
        if (from_router || !(out->roles & HOSTS_CELL) || !json_is_string(pool))
            snprintf(err, errsize, "\"pool\" only comes from a cell, as a string");
    } else if (!pool && (out->roles & HOSTS_CELL))
        snprintf(err, errsize, "a cell announces its \"pool\"");
    else {
        snprintf(out->id, sizeof out->id, "%s", id);
        out->has_pool = pool != NULL;
        out->expires_ms = time_mono_ms() + json_integer_value(ttl);
        *hello = json_is_true(json_object_get(o, "hello"));
        *joining = json_is_true(json_object_get(o, "joining"));
        rc = 0;
    }
    json_decref(o);
    return rc;
}

static struct hosts_peer *hosts__find(struct hosts *h, const char *id)
{
    for (size_t i = 0; i < h->n_peers; i++)
        if (!strcmp(h->peers[i].id, id))
            return &h->peers[i];
    return NULL;
}

/* A host that restarted announces itself under a new id from the same address: the entry of
 * its previous run goes (else its pool would clash with itself until the old entry expired). */
static void hosts__forget_restarted(struct hosts *h, const struct hosts_peer *in)
{
    for (size_t i = 0; i < h->n_peers;) {
        if (h->peers[i].addr.s_addr == in->addr.s_addr && strcmp(h->peers[i].id, in->id))
            h->peers[i] = h->peers[--h->n_peers];
        else
            i++;
    }
}

/* The first host to announce a pool keeps it: a later announcement of an overlapping pool from
 * another address is not routed (it would take the first host's instances' traffic). */
static void hosts__pool_claimed(struct hosts *h, struct hosts_peer *in, const char *addr)
{
    for (size_t i = 0; i < h->n_peers && in->has_pool; i++) {
        const struct hosts_peer *p = &h->peers[i];
        if (!p->has_pool || !strcmp(p->id, in->id) || !net_pool_overlaps(&p->pool, &in->pool))
            continue;
        char theirs[NET_POOL_STRLEN], first[NET_POOL_STRLEN], first_addr[INET_ADDRSTRLEN];
        net_pool_format(&in->pool, theirs);
        net_pool_format(&p->pool, first);
        inet_ntop(AF_INET, &p->addr, first_addr, sizeof first_addr);
        if (!hosts__find(h, in->id)) /* said once per host, not at each announcement */
            log_error("hosts: the host at %s announced the pool %s, which overlaps the pool %s of "
                      "the host at %s: not routed (give each host a pool of its own)",
                      addr, theirs, first, first_addr);
        in->has_pool = false;
    }
}

static void hosts__on_msg(void *ctx, const char *subject, const char *reply, const char *data,
                          size_t len)
{
    struct hosts *h = ctx;
    struct hosts_peer in;
    bool hello = false, joining = false;
    char err[200];
    if (hosts__parse(subject, data, len, &in, &hello, &joining, err, sizeof err) < 0) {
        log_msg(LOG_DEBUG, "hosts: an announcement on %s was skipped: %s", subject, err);
        return;
    }
    if (!strcmp(in.id, h->id))
        return;
    char addr[INET_ADDRSTRLEN], theirs[NET_POOL_STRLEN], ours[NET_POOL_STRLEN];
    inet_ntop(AF_INET, &in.addr, addr, sizeof addr);
    if (in.has_pool && h->has_pool && net_pool_overlaps(&in.pool, &h->pool)) {
        net_pool_format(&in.pool, theirs);
        net_pool_format(&h->pool, ours);
        if (!h->overlap[0])
            snprintf(h->overlap, sizeof h->overlap,
                     "the container pool %s of this host overlaps the pool %s announced by the "
                     "host at %s: give each host a pool of its own (--network-pool)",
                     ours, theirs, addr);
        log_msg(h->settle_state == 2 ? LOG_ERROR : LOG_DEBUG, "hosts: %s; its pool is not routed",
                h->overlap);
        in.has_pool = false; /* never routed over this host's own */
    }
    if (hello || joining)
        hosts__announce(h, false); /* a newcomer learns of this host at once */
    if (joining)
        return;
    hosts__forget_restarted(h, &in);
    hosts__pool_claimed(h, &in, addr);
    struct hosts_peer *p = hosts__find(h, in.id);
    bool changed = !p || p->addr.s_addr != in.addr.s_addr || p->roles != in.roles ||
                   p->has_pool != in.has_pool ||
                   (in.has_pool && memcmp(&p->pool, &in.pool, sizeof in.pool));
    if (!p) {
        if (h->n_peers >= HOSTS_MAX) {
            if (!h->said_full)
                log_error("hosts: more than %d hosts announced themselves; the others are ignored",
                          HOSTS_MAX);
            h->said_full = true;
            return;
        }
        h->peers = xrealloc(h->peers, (h->n_peers + 1) * sizeof(*h->peers));
        p = &h->peers[h->n_peers++];
        theirs[0] = '\0';
        if (in.has_pool)
            net_pool_format(&in.pool, theirs);
        log_info("hosts: the host at %s (%s%s%s) joined", addr, subject + strlen(HOSTS_PREFIX),
                 in.has_pool ? ", pool " : "", theirs);
    }
    *p = in;
    if (changed)
        hosts__apply(h);
}

static void hosts__on_tick(uv_timer_t *t)
{
    struct hosts *h = t->data;
    int64_t now = time_mono_ms();
    for (size_t i = 0; i < h->n_peers;) {
        if (h->peers[i].expires_ms > now) {
            i++;
            continue;
        }
        char addr[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &h->peers[i].addr, addr, sizeof addr);
        log_info("hosts: the host at %s was not announced again: forgotten", addr);
        h->peers[i] = h->peers[--h->n_peers];
    }
    if (natsconn_connected(h->conn))
        hosts__announce(h, !h->said_hello);
    h->said_hello = h->said_hello || natsconn_connected(h->conn);
    hosts__apply(h); /* also puts back routes a link that went down took away */
}

static void hosts__on_settled(uv_timer_t *t)
{
    struct hosts *h = t->data;
    h->settle_state = 2;
}

static void hosts__on_state(void *ctx, bool connected)
{
    struct hosts *h = ctx;
    if (!connected)
        return;
    /* a NATS that comes back finds a new or restarted server: say who is here, ask the same */
    hosts__announce(h, true);
    h->said_hello = true;
    if (h->settle_state == 0) {
        h->settle_state = 1;
        uv_timer_start(&h->settle, hosts__on_settled, HOSTS_SETTLE_QUIET_MS, 0);
    }
}

static int hosts__env_ms(const char *name, int fallback)
{
    const char *v = getenv(name);
    long n = v && *v ? strtol(v, NULL, 10) : 0;
    return n >= 10 && n <= 3600000 ? (int)n : fallback;
}

int hosts_start(uv_loop_t *loop, const struct hosts_config *cfg, struct hosts **out, char *err,
                size_t errsize)
{
    struct in_addr addr;
    if (!cfg->addr || inet_pton(AF_INET, cfg->addr, &addr) != 1) {
        snprintf(err, errsize,
                 "--host-addr \"%s\" is not an IPv4 address (this host's address on the network "
                 "between hosts)",
                 cfg->addr ? cfg->addr : "");
        return -EINVAL;
    }
    if ((cfg->roles & HOSTS_CELL) && !cfg->pool) {
        snprintf(err, errsize, "a host that runs instances announces its pool: none given");
        return -EINVAL;
    }
    struct hosts *h = xcalloc(1, sizeof(*h));
    h->loop = loop;
    h->addr = addr;
    h->roles = cfg->roles;
    h->has_pool = (cfg->roles & HOSTS_CELL) != 0;
    if (h->has_pool)
        h->pool = *cfg->pool;
    h->joining = h->has_pool;
    h->announce_ms =
        cfg->announce_ms > 0 ? cfg->announce_ms : hosts__env_ms("SKIFF_HOSTS_ANNOUNCE_MS", 2000);
    h->ttl_ms = cfg->ttl_ms > 0 ? cfg->ttl_ms : hosts__env_ms("SKIFF_HOSTS_TTL_MS", 10000);
    random_hex(h->id, 8);
    struct natsconn_config ncfg = {.urls = cfg->nats_urls,
                                   .name = "skiff-hosts",
                                   .security = cfg->security,
                                   .on_msg = hosts__on_msg,
                                   .on_state = hosts__on_state,
                                   .ctx = h};
    int rc = natsconn_open(loop, &ncfg, &h->conn, err, errsize);
    if (rc == 0 && (rc = natsconn_subscribe(h->conn, HOSTS_PREFIX "*")) < 0) {
        snprintf(err, errsize, "hosts: cannot subscribe to " HOSTS_PREFIX "*: %s",
                 skiff_strerror(rc));
        natsconn_close(h->conn);
    }
    if (rc < 0) {
        free(h);
        return rc;
    }
    uv_timer_init(loop, &h->tick);
    h->tick.data = h;
    uv_timer_start(&h->tick, hosts__on_tick, (uint64_t)h->announce_ms, (uint64_t)h->announce_ms);
    uv_timer_init(loop, &h->settle);
    h->settle.data = h;
    if (natsconn_connected(h->conn))
        hosts__on_state(h, true);
    hosts__apply(h); /* routes a predecessor made for hosts gone since are removed */
    *out = h;
    return 0;
}

static void hosts__on_deadline(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

int hosts_settle(struct hosts *h, int timeout_ms, char *err, size_t errsize)
{
    bool late = false;
    uv_timer_t deadline;
    uv_timer_init(h->loop, &deadline);
    deadline.data = &late;
    uv_timer_start(&deadline, hosts__on_deadline, (uint64_t)timeout_ms, 0);
    while (h->settle_state != 2 && !late)
        uv_run(h->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_run(h->loop, UV_RUN_NOWAIT); /* the close, before the handle leaves the stack */
    if (h->settle_state != 2)
        log_warning("hosts: NATS did not answer within %d ms: a pool of another host that "
                    "overlaps this one's is noticed only later",
                    timeout_ms);
    if (h->overlap[0]) {
        snprintf(err, errsize, "%s", h->overlap);
        return -EADDRINUSE;
    }
    h->joining = false;
    if (natsconn_connected(h->conn))
        hosts__announce(h, true); /* now with its pool, to be routed */
    return 0;
}

size_t hosts_count(const struct hosts *h)
{
    return h->n_peers;
}

static void hosts__on_close(uv_handle_t *handle)
{
    struct hosts *h = handle->data;
    free(h->peers);
    free(h->sources);
    free(h);
}

static void hosts__on_tick_closed(uv_handle_t *handle)
{
    struct hosts *h = handle->data;
    uv_close((uv_handle_t *)&h->settle, hosts__on_close);
}

void hosts_stop(struct hosts *h)
{
    if (!h)
        return;
    natsconn_close(h->conn);
    uv_timer_stop(&h->tick);
    uv_close((uv_handle_t *)&h->tick, hosts__on_tick_closed);
}
