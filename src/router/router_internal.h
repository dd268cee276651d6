/* Internal interfaces between the router's own files (proxy workers, bus client, admin).
 * Nothing outside src/router/ includes this. */
#ifndef SKIFF_ROUTER_INTERNAL_H
#define SKIFF_ROUTER_INTERNAL_H

#include <jansson.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "router/route_table.h"
#include "router/router.h"

/* Latency histogram bounds in microseconds (Prometheus buckets, seconds in the output). */
#define ROUTER_LATENCY_BUCKETS 12
extern const uint64_t router_latency_bounds_us[ROUTER_LATENCY_BUCKETS];

/* Counters of one worker. Each is written by its worker only (single writer, relaxed atomic
 * stores) and read by the admin thread with relaxed atomic loads. */
struct router_metrics {
    uint64_t requests_by_class[6]; /* [1] = 1xx ... [5] = 5xx */
    uint64_t latency_buckets[ROUTER_LATENCY_BUCKETS + 1];
    uint64_t latency_sum_us;
    uint64_t connections_open;
    uint64_t connections_total;
    uint64_t connections_refused; /* over the connection cap */
    uint64_t upstream_connects;
    uint64_t upstream_reused;
    uint64_t upstream_connect_failures;
    uint64_t upstream_retries;
    uint64_t upstream_hedges; /* second connects beside one not done in --connect-hedge-ms */
    uint64_t bad_requests; /* rejected by the parser or the limits */
    uint64_t timeouts;
    uint64_t bytes_to_clients;
};

#define ROUTER_METRIC_ADD(field, n)                                                                \
    __atomic_store_n(&(field), __atomic_load_n(&(field), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)

/* Starts the workers (threads); SIGPIPE is ignored from then on. Returns 0 or a negative code
 * with a message on stderr. */
int router_proxy_start(const struct router_config *cfg);
/* Asks every worker to stop: no new connections, idle ones closed, requests in flight given a
 * few seconds to finish. Returns at once. */
void router_proxy_stop_async(void);
/* Asks every worker to stop (if not yet asked), waits for them and frees them. */
void router_proxy_stop(void);
/* Sums the counters of every worker into *out. */
void router_proxy_metrics(struct router_metrics *out);
/* A new route table was published (main thread): the workers holding requests for an app at
 * zero look at it now, so a request goes on as soon as its first instance is in a table. */
void router_proxy_table_published(void);
/* A drain request from skiffd (docs/bus.md), main thread only: every worker closes its idle
 * connections to the backend at addr, stops pooling new ones, and reports once no exchange of
 * its own uses that backend (at once when none does); when the last worker has reported,
 * router_bus_drained(id) answers skiffd. Ignored once the workers are stopping. */
void router_proxy_drain(const struct sockaddr_storage *addr, socklen_t addr_len, uint64_t id);
/* Backends that left the table without a drain (route_table_lost), main thread only, after
 * the table without them is published: every worker closes its connections to them and ends
 * at once the exchanges that use them. A request not sent yet (still connecting, or waiting
 * for an h2c stream), or an idempotent one without a body, that has had nothing of its answer
 * sent yet, goes to another instance of its app's route in the new table; any other gets a
 * 502 `backend-lost`, or is cut when its answer had begun. Ignored once the workers are
 * stopping. */
void router_proxy_backends_lost(const struct route_addr *addrs, size_t count);

/* ALPN protocols an HTTPS client may choose, in wire format (length-prefixed names), in the
 * router's order of preference: "http/1.1" only. A protocol added here must be served by
 * the connection that negotiates it (tls_conn_alpn tells which one was agreed). */
extern const unsigned char router_alpn_protocols[];
extern const size_t router_alpn_protocols_len;

/* Reads the certificates again ($SKIFF_HOME/tls): new handshakes use them, connections made
 * keep theirs; on error the ones before stay (logged). Thread-safe; 0 without HTTPS. */
int router_tls_reload(const struct router_config *cfg);

/* Bus client on the main loop (router_bus.c). */
int router_bus_start(uv_loop_t *loop, const struct router_config *cfg);
void router_bus_stop(void);
/* Frees what the bus client holds, after its loop has run its close callbacks. */
void router_bus_free(void);
/* Counts access lines a worker dropped itself (thread-safe). */
void router_bus_count_dropped(size_t count);
/* Queues `count` ready newline-terminated access lines at once (workers batch theirs per loop
 * iteration); they go to skiffd together with those of the next few milliseconds
 * (BUS_ACCESS_FLUSH_MS). Thread-safe, never blocks for long; dropped (counted) when skiffd is
 * not connected or the queue is full. */
void router_bus_send_lines(const char *lines, size_t len, size_t count);
uint64_t router_bus_access_dropped(void);
/* Asks skiffd to start an instance of an app a request is waiting for (thread-safe). */
void router_bus_wake(const char *app_guid);
/* Answers a drain request: nothing is in flight to its backend any more (thread-safe). */
void router_bus_drained(uint64_t id);

/* A drain request as sent by skiffd: {"type": "drain", "addr": "HOST:PORT", "id": N}, N > 0.
 * Returns 0, or -EINVAL with the reason in err. */
int router_bus_parse_drain(const json_t *msg, struct sockaddr_storage *addr, socklen_t *addr_len,
                           uint64_t *id, char *err, size_t errsize);
/* Whether a message of this type (NULL: not a JSON object with a type) that the router does not
 * know should be logged: the first time each type is seen, so a newer skiffd is not ignored
 * silently and an old router's log is not flooded. Main thread only. */
bool router_bus_unknown_type_is_new(const char *type);
bool router_bus_connected(void);
/* Loads $SKIFF_HOME/run/routes.json into the current table, if present and valid. */
void router_bus_load_saved(const struct router_config *cfg);

/* Replaces the table with a "routes" message (docs/bus.md) and, with save, writes it to
 * run/routes.json. Returns the version now served (workers take it at their next request),
 * or -EINVAL when the message does not parse (logged; nothing changed). Main thread. */
int64_t router_bus_apply_routes(const char *line, size_t len, bool save);
/* Writes a "routes" message to run/routes.json (served at the next start before skiffd is
 * reachable); a failure is logged. Main thread. */
void router_bus_save_routes(const char *line, size_t len);
/* The bus is up (lines for skiffd are queued) or down (they are dropped, counted). */
void router_bus_set_connected(bool connected);

/* ---- the bus on NATS core (router_nats.c; docs/bus.md "On NATS") ---- */
#define ROUTER_NATS_PREFIX "skiff.bus."
#define ROUTER_NATS_VERSION 1
enum router_nats_kind {
    ROUTER_NATS_UNKNOWN, /* a subject under the prefix this router does not know */
    ROUTER_NATS_REGISTER,
    ROUTER_NATS_UNREGISTER,
    ROUTER_NATS_DRAIN,
    ROUTER_NATS_CERTS,
};
struct router_nats_msg {
    enum router_nats_kind kind;
    json_t *route;              /* REGISTER: the route object (a reference; router_nats_msg_free) */
    int64_t ttl_ms;             /* REGISTER: 100..3600000 */
    int64_t table_version;      /* REGISTER, UNREGISTER: skiffd's table version (0: not said) */
    int64_t table_count;        /* REGISTER: how many routes that version has (1..) */
    json_t *draining;           /* REGISTER: the table's "draining" addresses (a reference) */
    char host[254], path[1025]; /* UNREGISTER */
    struct sockaddr_storage addr; /* DRAIN */
    socklen_t addr_len;
    uint64_t drain_id;
    char drain_addr[64];   /* DRAIN: the address as sent ("HOST:PORT") */
    int64_t drain_version; /* DRAIN: the table version it follows (0: not said) */
    char domain[254]; /* CERTS with a pair: the domain ("" for the notice to reload alone) */
    json_t *pair;     /* CERTS with a pair: the message, its "cert" and "key" (a reference) */
    bool removed;     /* CERTS: the domain's certificate left the store (no pair) */
};
/* Reads one message from skiffd on NATS: the subject decides its kind, the body must be a JSON
 * object with "v": ROUTER_NATS_VERSION and the kind's fields. 0 (kind UNKNOWN for a subject
 * this router does not know), or -EINVAL with the reason in err for anything malformed. */
int router_nats_parse(const char *subject, const char *data, size_t len,
                      struct router_nats_msg *out, char *err, size_t errsize);
void router_nats_msg_free(struct router_nats_msg *m);
/* Connects (in the background when NATS is not up yet) and learns routes from it; the saved
 * table's routes are kept until their time runs out. Main thread. */
int router_nats_start(uv_loop_t *loop, const struct router_config *cfg);
void router_nats_stop(void);
bool router_nats_active(void);
/* Lines for skiffd (hello, access, wake, metrics), newline-terminated. */
void router_nats_send(const char *lines, size_t len);
/* Answers the drain request id came with; false when it did not come over NATS. Thread-safe. */
bool router_nats_drained(uint64_t id);

/* Admin server on the main loop (router_admin.c). */
int router_admin_start(uv_loop_t *loop, const struct router_config *cfg);
void router_admin_stop(void);
void router_admin_format_metrics(struct buf *out);

enum router_admin_answer {
    ROUTER_ADMIN_NOT_FOUND,
    ROUTER_ADMIN_BAD_REQUEST,
    ROUTER_ADMIN_HEALTH,  /* open to anyone */
    ROUTER_ADMIN_METRICS, /* with the token */
    ROUTER_ADMIN_ROUTES,  /* with the token */
    ROUTER_ADMIN_UNAUTHORIZED,
    ROUTER_ADMIN_NO_TOKEN, /* the token is needed, and the router has none to check against */
};
/* What an admin request gets. head is the request up to and including its empty line
 * (NUL-terminated); token is the admin token, NULL when there is none. /metrics and /routes
 * need exactly one "Authorization: Bearer TOKEN" field; the path must be exactly the
 * endpoint's (a query is ignored), with no dot segments or encodings. */
enum router_admin_answer router_admin_decide(const char *head, const char *token);

#endif
