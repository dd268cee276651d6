/* route_table: the router's immutable route table and its lookup.
 *
 * A table is built once from the bus message `{"type": "routes", "version": N, "routes": [...]}`
 * (docs/bus.md) and never changes afterwards, so any number of worker threads may read it
 * without locks. It is reference counted: whoever holds a pointer holds a reference, taken
 * with route_table_ref() and dropped with route_table_unref(); the last unref frees it.
 *
 * The process-wide "current" table is swapped atomically by route_table_publish(); workers
 * pick up the new one with route_table_current() when route_table_current_version() moves,
 * so an update never blocks a request and a request in flight keeps the table it started with.
 *
 * Lookup rules: the Host is matched case-insensitively with its port ignored; an exact host
 * wins over a wildcard (`*.example.test` matches `a.example.test` and `a.b.example.test`, the
 * closest wildcard first); among the routes of a host the longest path prefix wins, where a
 * prefix matches only at a segment boundary (`/v1` matches `/v1`, `/v1/x`, `/v1?q` but not
 * `/v10`). */
#ifndef SKIFF_ROUTE_TABLE_H
#define SKIFF_ROUTE_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum route_balance {
    ROUTE_BALANCE_ROUND_ROBIN = 0,
    ROUTE_BALANCE_LEAST_CONNECTION,
};

/* What the router speaks to a route's instances ("protocol" in docs/bus.md): HTTP/1.1, or h2c
 * (HTTP/2 with prior knowledge, for gRPC and other HTTP/2-only apps). */
enum route_protocol {
    ROUTE_PROTOCOL_HTTP1 = 0,
    ROUTE_PROTOCOL_HTTP2,
};

/* The down mark of one backend address, shared by every backend at that address in every
 * table alive (route_table.c keeps one per address): a mark made through any route covers every
 * route with the address, in every worker whatever table it routes with, and lasts as long as
 * some table has the address. */
struct route_addr_mark;

struct route_backend {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char *addr_text;     /* "127.0.0.1:61001" as sent by skiffd */
    char *instance_guid; /* may be "" */
    int index;
    int active; /* requests in flight, all workers (atomic); used by least-connection */
    struct route_addr_mark *mark; /* its address's down mark */
};

/* The router's workers are at most this many (router_proxy_start clamps --workers). */
#define ROUTE_STATS_WORKERS 64

/* One worker's share of a process's requests in flight and their integral over time. Only
 * that worker writes it (route_stats_change); the main loop reads it under `seq`, a
 * single-writer sequence lock (odd while a write is under way), so the request path takes no
 * lock and a reader never sees a half-made update. */
struct route_stats_slot {
    unsigned seq;         /* atomic */
    int in_flight;        /* atomic */
    uint64_t last_us;     /* when in_flight last changed (atomic) */
    uint64_t integral_us; /* sum of in_flight x microseconds until last_us (atomic) */
};

/* What the router counts per (app, process), for the autoscaler (docs/bus.md "metrics"): one
 * object for the process's life, shared by every table and worker, so a request keeps its
 * counter across table changes. Workers touch only the atomics and their own slot; the
 * report state belongs to the main loop (router_bus.c). */
struct route_stats {
    char app_guid[37];
    char process[64];
    struct route_stats_slot slots[ROUTE_STATS_WORKERS];
    int held;          /* requests held while it starts from zero (atomic) */
    uint64_t requests; /* routed so far (atomic) */
    /* main loop only */
    uint64_t reported_integral_us; /* the integral at the previous report */
    uint64_t reported_at_us;       /* when that was (at first: when the stats were made) */
    uint64_t requests_reported;
    bool reported_busy; /* the last report was not all zeros */
    struct route_stats *next;
};

/* A request to the process began (delta +1) or ended (-1) on `worker` at now_us (a monotonic
 * clock, the same for every caller). Only that worker's thread calls it for that worker;
 * routed requests count from routing to the end of their exchange, held ones included. */
void route_stats_change(struct route_stats *st, int worker, int delta, uint64_t now_us);
/* Requests in flight now, all workers. Any thread. */
int route_stats_in_flight(struct route_stats *st);
/* The time-weighted average of the requests in flight between the previous call and now_us
 * (Knative's average concurrency: a request in flight for a tenth of the period counts 0.1,
 * however short it was); the first call averages from when route_stats_get made it. One
 * caller (the main loop). */
double route_stats_take_average(struct route_stats *st, uint64_t now_us);

/* The counters of (app_guid, process), made on first use (dated by the monotonic clock, in
 * microseconds like uv_hrtime() / 1000); never NULL, never freed before
 * route_stats_clear. Thread-safe; not for the hot path (tables call it when parsed). */
struct route_stats *route_stats_get(const char *app_guid, const char *process);
/* Calls fn for every counter (main loop; counters made meanwhile may be missed). */
void route_stats_each(void (*fn)(void *ctx, struct route_stats *st), void *ctx);
/* Frees every counter (at exit, once no worker runs). */
void route_stats_clear(void);

struct route {
    char *host; /* lowercase, no port; may start with "*." */
    char *path; /* "" for the whole host, else "/x" without a trailing slash */
    size_t path_len;
    char *app_guid;
    char *app_name;
    char *process;
    enum route_balance balance;
    enum route_protocol protocol;
    bool scale_from_zero;
    bool https_only;           /* a request over plain HTTP is redirected to HTTPS */
    struct route_stats *stats; /* NULL for a route without an app guid */
    struct route_backend *backends;
    size_t backend_count;
    size_t index; /* position in its table, for state a caller keeps per route */
};

struct route_table;

/* Parses a routes message. Returns 0 and a table with one reference, or a negative errno
 * value with a message in err (for the log: the message is skiffd's, not a user's). Routes
 * or backends that are individually invalid are skipped and counted in *skipped when it is
 * not NULL; a message that is not a routes object at all is an error. */
int route_table_parse(const char *json, size_t len, struct route_table **out, char *err,
                      size_t err_size, int *skipped);
/* An empty table (every lookup misses), with one reference. */
struct route_table *route_table_new_empty(void);

struct route_table *route_table_ref(struct route_table *t);
void route_table_unref(struct route_table *t);

int64_t route_table_version(const struct route_table *t);
size_t route_table_route_count(const struct route_table *t);
const struct route *route_table_route_at(const struct route_table *t, size_t i);

/* Finds the route for a Host header value (any case, port allowed) and a request target
 * (path, with or without a query). NULL when nothing matches. The route lives as long as the
 * caller's reference on the table. */
struct route *route_table_lookup(const struct route_table *t, const char *host, size_t host_len,
                                 const char *path, size_t path_len);

/* Chooses a backend by the route's balance, skipping the `skip_count` backends in `skip`
 * (those already tried for this request) and, while any other is left, those marked down.
 * NULL when none is left. `cursor` is the caller's round-robin position for this route, moved
 * on by the call: each worker keeps its own, so choosing writes no memory another core reads
 * (least-connection reads the shared in-flight counts instead). */
struct route_backend *route_pick_backend(struct route *r, unsigned *cursor,
                                         struct route_backend *const *skip, size_t skip_count);

/* As route_pick_backend, but never a backend marked down: NULL when every one left is. What a
 * second connect (a hedge) is made to, where a down instance is no better than waiting. */
struct route_backend *route_pick_backend_up(struct route *r, unsigned *cursor,
                                            struct route_backend *const *skip, size_t skip_count);

/* Parses a backend address ("1.2.3.4:80", "[::1]:80") exactly as backends are parsed, so the
 * result compares equal (memcmp) to a backend's addr. -EINVAL when it is not one. */
int route_table_parse_addr(const char *text, struct sockaddr_storage *out, socklen_t *len);

/* Marks a backend's address that refused a connection (or did not answer one, or left a
 * request unacknowledged): other instances take its requests for `ms`, on every route of every
 * table that has the address. Any thread. */
void route_backend_mark_down(struct route_backend *b, int ms);
/* Whether b's address is marked down now. */
bool route_backend_down(const struct route_backend *b);

/* Whether b was marked down and no connection to it has succeeded since (the mark may have
 * expired): its pooled connections may be dead ones to a vanished host, where a request would
 * wait for the table to drop it, so a new connection (hedged, bounded by the connect timeout)
 * is made instead. */
bool route_backend_suspect(const struct route_backend *b);
/* A new connection to b succeeded: an expired mark is cleared (a live one stays). */
void route_backend_connected(struct route_backend *b);

/* A backend address as route_table_parse_addr makes it (comparable with memcmp), and as sent. */
struct route_addr {
    struct sockaddr_storage addr;
    socklen_t len;
    char text[64];
};

/* The backend addresses `old` had that `now` has lost, sorted, each once. An address is lost
 * when it was a backend of a route (host and path) that `now` still has for the same app, is
 * a backend of no route of `now`, and is not one of `now`'s "draining" addresses (an
 * instance stopped on purpose: its requests in flight finish). A route that went (unmapped,
 * or not announced again), or that now leads to another app (a blue-green switch), loses
 * nothing: its instances still run. Returns how many, in *out (malloc'd, freed by the
 * caller; NULL when none). */
size_t route_table_lost(const struct route_table *old, const struct route_table *now,
                        struct route_addr **out);

/* The process-wide current table. publish takes over the caller's reference. */
void route_table_publish(struct route_table *t);
/* A new reference to the current table (never NULL once route_table_publish ran; an empty
 * table before). */
struct route_table *route_table_current(void);
/* Cheap check for a change: the number of publishes so far. */
uint64_t route_table_current_generation(void);
/* Drops the current table (at exit, so the process ends leak-free). */
void route_table_clear_current(void);
/* How many addresses have a down mark object (one per address of the tables alive). */
size_t route_addr_marks_count(void);

#endif
