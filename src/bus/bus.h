/* bus: skiffd's side of the bus to the routers (docs/bus.md).
 *
 * Listens on a Unix socket; every connected router gets the whole route table on connect and
 * after every change: a change goes out at the next turn of the loop, and changes that follow
 * a table by less than BUS_COALESCE_MS wait until that much has passed, then go as one. A table
 * whose routes are those of the last one sent is not sent again (no new version: the routers serve
 * it already). The table is the store's routes joined with the scheduler's RUNNING instances. From
 * routers it takes access lines (into the app's log as [RTR/n]) and wake requests (scale an app
 * from zero).
 *
 * When the store cannot give the routes or apps, no table goes out (an empty one would make
 * every router drop every route): the routers keep serving their last table, the failure is
 * logged once, and the table is asked for again every BUS_STORE_RETRY_MS and at the next
 * change. Drains wait for the next table that goes out (the drain timeout bounds them).
 *
 * Drains: when the scheduler drains a web instance (PLATFORM_INSTANCE_DRAINING), the bus
 * holds it (scheduler_drain_hold), sends every connected router the table without it and
 * right after it a drain request for its address, and releases the hold once each of those
 * routers has answered "drained" or disconnected (a router connecting meanwhile is asked
 * too). With no router connected it does not hold at all.
 * Acknowledgements: a router answers each table it applied with {"type":"ack","version":N}
 * (on NATS, once every route of version N came and is served). A web instance that becomes
 * routable is held STARTING by the scheduler (scheduler_route_hold) until every connected
 * router (and every live one on NATS) acknowledged a version with it, or BUS_ACK_TIMEOUT_MS
 * passed (then who did not answer is logged): the API shows RUNNING only what the routers
 * route to. With no router connected, or when its app has no route, nothing is waited for.
 * Bad input from a router closes that connection and nothing else. */
#ifndef SKIFF_BUS_H
#define SKIFF_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#define BUS_COALESCE_MS 5
#define BUS_STORE_RETRY_MS 1000
#define BUS_ACK_TIMEOUT_MS 1000

struct bus;
struct store;
struct scheduler;
struct logs;
struct hub;

/* The bus follows the hub's instance events (ready, gone, draining) to keep the routers' table
 * and holds draining instances for their requests in flight through the scheduler. 0, or a
 * negative errno (the one error type of common/err.h) with the reason in err. */
int bus_new(uv_loop_t *loop, const char *socket_path, struct store *store, struct scheduler *sched,
            struct hub *hub, struct logs *logs, char *err, size_t errsize, struct bus **out);
/* Who hears that requests reached an app (by guid) through a router, once per access line:
 * the invoker, whose functions serving requests are not idle. NULL fn: nobody. */
void bus_set_traffic(struct bus *bus, void (*fn)(void *ctx, const char *app_guid), void *ctx);
/* Who gets the routers' per-second counts (docs/bus.md "metrics"): report once per entry of
 * each message, router_gone when that router's connection ends (its counts no longer hold),
 * woken for each wake (before the scheduler is asked for an instance).
 * router is a number unique to the connection. NULL sink: nobody. */
struct bus_metrics_sink {
    void (*report)(void *ctx, int router, const char *app_guid, const char *process,
                   double in_flight, double requests);
    void (*router_gone)(void *ctx, int router);
    /* a wake came: an instance is asked for at once; 0 or an error of common/err.h */
    int (*woken)(void *ctx, const char *app_guid, const char *process);
};
void bus_set_metrics(struct bus *bus, const struct bus_metrics_sink *sink, void *ctx);
/* The route table may have changed: push it at the next turn of the loop, or BUS_COALESCE_MS
 * after the last table when that one went less than BUS_COALESCE_MS ago. */
void bus_routes_changed(struct bus *bus);
/* Adapter for callbacks taking a void *ctx. */
void bus_routes_changed_cb(void *bus);
/* A certificate under $SKIFF_HOME/tls changed: every router reloads them (docs/bus.md
 * "certs"; a router connecting later is told too). */
void bus_certs_changed(struct bus *bus);
void bus_certs_changed_cb(void *bus);
/* Also announces the route table on NATS core (docs/bus.md "On NATS"): each route on
 * skiff.bus.register with ttl_ms, again every announce_ms, skiff.bus.unregister when one goes;
 * drains, certificate notices and the routers' lines on their subjects. NATS unreachable at
 * start is not an error (the connection keeps trying). 0, or a negative errno with err. */
struct natsconn_security;
int bus_nats_start(struct bus *bus, const char *urls, const struct natsconn_security *security,
                   int announce_ms, int ttl_ms, char *err, size_t errsize);
/* Whether this skiffd announces its route table on NATS and sends drains there (true from
 * bus_nats_start): of several skiffds on one store only the one that runs the instances (it
 * leads, or holds what it ran) may, or a router on NATS would serve each one's table in turn,
 * the others' without backends. Turned on, the next table goes out at once. */
void bus_set_announcing(struct bus *bus, bool on);
/* Closes the socket and every connection; done is called when all handles are closed. */
void bus_close(struct bus *bus, void (*done)(void *arg), void *arg);
void bus_free(struct bus *bus);

/* An access line from a router (docs/bus.md), its fields pointing into the line it came from. */
struct bus_access {
    const char *app_guid; /* NUL-terminated: a copy in app_guid_buf */
    char app_guid_buf[37];
    int router_index;
    bool has_router_index; /* else the index the router said hello with */
    const char *text; /* the request's line, not NUL-terminated */
    size_t text_len;
};
/* Reads an access line as routers write it, {"type":"access","app_guid":"<36 characters>",
 * "router_index":N,"line":"TEXT"} with no escape in TEXT and nothing but printable ASCII in it,
 * without a JSON parse (for a plain GET, jansson took most of skiffd's CPU per proxied request).
 * Returns false for any other line, which is then read as JSON: what it accepts, jansson
 * would read the same way. */
bool bus_access_parse_plain(const char *line, size_t len, struct bus_access *out);

/* Calls fn for each well-formed entry of a router's "metrics" message (docs/bus.md): an
 * app_guid of 36 characters, a process of 1 to 63, in_flight and requests numbers from 0 up
 * to a sane bound. Other entries are skipped (a router may be newer, or broken: never
 * trusted further). Returns how many entries fn got. */
typedef void (*bus_metrics_entry_fn)(void *ctx, const char *app_guid, const char *process,
                                     double in_flight, double requests);
struct json_t;
int bus_metrics_each(const struct json_t *msg, bus_metrics_entry_fn fn, void *ctx);

/* The route table as docs/bus.md's "routes" message (for tests and diagnostics); the caller
 * frees the string. NULL when the store fails (the store logs why). */
char *bus_route_table_json(struct bus *bus);

#endif
