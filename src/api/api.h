/* api: skiffd's HTTP API (docs/api.md): routing, auth and JSON helpers on the HTTP/1.1
 * server of src/http/server.h.
 *
 * One `struct api` listens on one address on the caller's libuv loop. Components add their
 * endpoints with api_route_add() before or after api_listen(); a handler is called once per
 * request whose method and path match, after the bearer token was checked against the
 * route's auth level and the whole body was received.
 *
 * Patterns are absolute paths whose segments are matched one by one: a literal segment
 * matches itself, `*` matches exactly one non-empty segment (available to the handler with
 * api_request_param); in "/v1/topics/ * /events:batch" (written without the spaces), the
 * last segment is the literal "events:batch". When several patterns match, the one
 * registered first wins; a path that matches with another method is 405.
 *
 * Request lifetime: the handler owns the request from the call on and must finish it exactly
 * once, with one of api_respond*() or api_stream_end(), now or later from any callback on the
 * loop. The pointer stays valid until then, even when the client went away meanwhile (the
 * response is then dropped). api_request_on_abort() tells a handler that is waiting or
 * streaming that the client is gone, so it can stop early (it must still finish the request).
 *
 * Bodies: up to API_BODY_MEMORY_MAX bytes are kept in memory (api_request_body). Routes added
 * with API_BODY_FILE have their body streamed to a temporary file instead (any size up to the
 * API's upload limit; api_request_body_path), deleted when the request finishes. A body over
 * the limit is refused with 413 `too_large` before the handler runs.
 *
 * Connections: HTTP/1.1 keep-alive and pipelining (one request handled at a time per
 * connection). A request head that does not arrive whole within 30 s, a body that stalls for
 * 60 s, or a connection idle for 5 minutes, is closed; a request being handled or streamed is
 * never timed out here. Connections are capped, all together and per client address (see
 * struct api_config): past a cap, the connection that has waited longest for a request head
 * is closed to make room, so idle or slow clients cannot lock others out; the API never takes
 * more than half of skiffd's descriptors. Resource errors while accepting (EMFILE, ENFILE,
 * ENOMEM, ENOBUFS) pause accepting for a moment and never stop it.
 *
 * An error decided from the head (401, 403, 404, 405, 413, 431, ...) is answered at once,
 * before any body is read, and the connection is then closed.
 *
 * Errors: every error response has the body {"error": {"code": "...", "message": "..."}}
 * (api_respond_error). The API never aborts on input. */
#ifndef SKIFF_API_H
#define SKIFF_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "auth/auth.h"
#include "common/err.h"
#include "natsconn/natsconn.h"

struct api;
struct api_request;

#define API_BODY_MEMORY_MAX (8u << 20)

/* Who may call a route: an auth.h permission, and where the request's org/space comes from
 * (the scope), or'ed into the flags of api_route_add. The permission is checked for the
 * caller in that place before the handler runs (auth_check): 401 without a valid token, 403
 * when the caller's roles there do not grant it, 404 when the caller has no role there at all
 * (the place must look absent). */
#define API_PERM(p) ((int)(p))
#define API_PERM_MASK 0x1f
enum api_scope {
    API_SCOPE_NONE = 0,             /* platform-wide */
    API_SCOPE_SPACE = 1 << 5,       /* ?space=ORG/SPACE, else the token's space, else default/dev */
    API_SCOPE_APP = 2 << 5,         /* as SPACE; an app guid in the first `*` names its own */
    API_SCOPE_ORG = 3 << 5,         /* the org named by the first `*` */
    API_SCOPE_ORG_SPACE = 4 << 5,   /* the org and space named by the first two `*` */
};
#define API_SCOPE_MASK (7 << 5)

/* Flags for api_route_add. */
#define API_BODY_FILE 0x100 /* stream the body to a temporary file (uploads) */
/* A public route that takes a small body (logging in); other public routes take none. */
#define API_SMALL_BODY 0x200
#define API_SMALL_BODY_MAX 16384

typedef void (*api_handler_fn)(struct api_request *req, void *ctx);

struct api_config {
    const char *home;        /* $SKIFF_HOME: temp files under home/tmp, keys under home */
    const char *addr;        /* "127.0.0.1:8090" */
    const char *admin_token; /* the bearer token that may do everything */
    struct auth *auth;       /* users, roles and tokens (auth.h); NULL: the admin token only */
    struct store *store;     /* to find the space of an app named by guid */
    uint64_t upload_max;     /* largest API_BODY_FILE body; 0: 1 GiB */
    /* Where containers publish events (NULL: nowhere else): a second listener that serves
     * only publishing routes (AUTH_PERM_PUBLISH); anything else there is a 404, whatever the token. */
    const char *publish_addr;
    /* Open connections of both listeners together, and from one client address (0: the
     * defaults, API_MAX_CONNECTIONS and a quarter of the cap). The cap is lowered to half
     * of RLIMIT_NOFILE, so the rest of skiffd keeps descriptors whatever clients do. */
    unsigned max_connections;
    unsigned max_connections_per_client;
    /* HTTPS beside HTTP (NULL or "": none): the same API, its certificate from tls (src/tls;
     * the caller keeps it alive until api_free) */
    const char *tls_addr;
    struct tls_store *tls;
};

#define API_MAX_CONNECTIONS 4096

int api_new(uv_loop_t *loop, const struct api_config *cfg, struct api **out);
/* Binds and listens. A negative errno (e.g. -EADDRINUSE) and a message in err on failure. */
int api_listen(struct api *api, char *err, size_t errsize);
/* Stops accepting, closes every connection (aborting requests in flight); close_cb (may be
 * NULL) is called once everything is closed and api_free may be called. */
void api_close(struct api *api, void (*close_cb)(void *arg), void *arg);
void api_free(struct api *api);
uv_loop_t *api_loop(struct api *api);
/* The base URL clients use, e.g. "http://127.0.0.1:8090" (valid for the api's life). */
const char *api_url(struct api *api);
/* Connections open now (both listeners). */
unsigned api_connections(const struct api *api);

/* Adds an endpoint. flags: API_PERM(an enum auth_perm) | an api_scope | API_BODY_FILE
 * (0 is AUTH_PERM_PUBLIC: say so where meant). The pattern is copied. Returns 0 or -EINVAL
 * for a malformed pattern or method. */
int api_route_add(struct api *api, const char *method, const char *pattern, int flags,
                  api_handler_fn handler, void *ctx);

/* Every route as [{"method", "path", "permission", "scope"}], in the order added (new
 * reference): the table docs/roles.md lists. */
json_t *api_routes_json(struct api *api);

/* ---- instance tokens --------------------------------------------------------------------- */

/* The token given to one instance as SKIFF_EVENTS_TOKEN: lets it call publishing
 * routes and identifies its app. It names the app and the instance and is signed with a key
 * kept in home/instance_token.key (mode 0600, skiffd's own user). Written into out
 * (size >= 160). */
void api_instance_token(struct api *api, const char *app_guid, const char *instance_guid,
                        char *out, size_t size);

/* Whether a signed instance token is still good: its instance runs (starting, running or
 * stopping) and its app exists; the check writes the app's name into name (size bytes).
 * Without a check set, no instance token is accepted. Asked on every request that carries
 * one, so a deleted app's tokens, and those of instances that have stopped (all of an app's
 * previous instances, after a restart), stop working at once. */
typedef bool (*api_instance_live_fn)(void *ctx, const char *app_guid, const char *instance_guid,
                                     char *name, size_t size, char space_guid[37]);
void api_set_instance_check(struct api *api, api_instance_live_fn fn, void *ctx);

/* Service-binding tokens (the built-in `events` offering's, services.h): the check says
 * whether token is good now and, when it is, the one topic it may publish to (in topic, at
 * most 63 characters), the space and a name for the events' source. Such a token may call
 * publishing routes only, for that topic only. Without a check set, none is accepted. */
typedef bool (*api_binding_check_fn)(void *ctx, const char *token, char topic[64],
                                     char space_guid[37], char *name, size_t size);
void api_set_binding_check(struct api *api, api_binding_check_fn fn, void *ctx);
/* ---- cells' tokens (cell_tokens.c) --------------------------------------------------------- */

/* Each cell has a token of its own (auth.h's form: it names the cell's id), made by the admin
 * (POST /v1/cell_tokens, `skiff create-cell-token CELL_ID`) and shown once; the store keeps
 * its BLAKE2b hash only (document cell.tokens/CELL_ID), so every controller on the store
 * accepts it, and a new one for the same cell (rotation) or its deletion (DELETE
 * /v1/cell_tokens/CELL_ID) refuses the old one everywhere at once. A cell's token (AUTH_CELL)
 * reads the blob of a droplet, and the blobs that droplet lists (an image's config and
 * layers), only while the leader's grant for that cell and droplet stands: written as the leader
 * sends the cell a start request (api_cell_grant; not written again while one stands with more
 * than half of API_CELL_GRANT_MS left), withdrawn when nothing of that droplet runs or is
 * starting on that cell any more (api_cell_withdraw), else ended after API_CELL_GRANT_MS;
 * nothing else. Tokens and grants are checked against a copy in memory, read again whenever
 * the store's change feed says another writer changed tokens or grants, and from the
 * database before a refusal, at most 50 times a second after a burst of 20 (cell_tokens.c).
 *
 * Setup registers the endpoints, makes the API's copy (api_cells_attach: the API frees it),
 * and removes a HOME/cell-token left by an older skiffd (the one token every cell shared, no
 * longer accepted: store migration 19 removed its hash). */
struct store;
struct api_cells;
#define API_CELL_GRANT_MS (15 * 60 * 1000)
void api_cell_tokens_setup(struct api *api, struct store *store, const char *home);
struct api_cells *api_cells_new(struct store *store);
void api_cells_free(struct api_cells *cells);
/* The API owns cells from now on (NULL before setup: every cell's token is refused). */
void api_cells_attach(struct api *api, struct api_cells *cells);
struct api_cells *api_cells_of(struct api *api);
/* How many times the copy was read from the store on another writer's news (the first read
 * included). */
uint64_t api_cells_reads(const struct api_cells *cells);
/* How many times it was read from the database before a refusal (a token or a grant another
 * controller wrote a moment ago, its news not yet here), and in *refused (may be NULL) how
 * many refusals were answered with no such read: at most 50 are made a second, after a burst
 * of 20. */
uint64_t api_cells_catch_ups(const struct api_cells *cells, uint64_t *refused);
/* 0 with the cell's id in cell_id (size >= 33) when token is a cell's token the store holds;
 * -EACCES when not. Reads the store only when the copy is outdated. */
int api_cell_token_check(struct api *api, const char *token, char *cell_id);
/* The leader lets cell_id read the droplet digest and the blobs it lists (blobs: digests,
 * space-separated; NULL or "": none): one grant (it is about to start that droplet there). 0,
 * also when a grant for the same blobs stands with more than half its time left (nothing
 * written); -EINVAL for a digest that is not one; another negative errno when the store could
 * not record it (then the start must not be sent). */
int api_cell_grant(struct api *api, const char *cell_id, const char *digest, const char *blobs);
/* Nothing of droplet digest runs or is starting on cell_id any more: its grant goes (logged
 * when the store cannot delete it; it then ends at its time). */
void api_cell_withdraw(struct api *api, const char *cell_id, const char *digest);
/* Whether cell_id may read digest's blob now (a standing grant of that droplet, or of one
 * that lists it). Ended grants met on the way are deleted. */
bool api_cell_may_read(struct api *api, const char *cell_id, const char *digest);

/* The one topic the request's token may publish to, or NULL when it is not so limited. */
const char *api_request_topic_limit(const struct api_request *req);

/* ---- requests ---------------------------------------------------------------------------- */

const char *api_request_method(const struct api_request *req);
/* The path without the query string, percent-decoded. */
const char *api_request_path(const struct api_request *req);
/* The n-th `*` of the matched pattern (0-based), percent-decoded; NULL when out of range. */
const char *api_request_param(const struct api_request *req, unsigned n);
/* A query parameter's decoded value ("" for `?flag`), NULL when absent. */
const char *api_request_query(const struct api_request *req, const char *name);
/* A request header by case-insensitive name (the first one), NULL when absent. */
const char *api_request_header(const struct api_request *req, const char *name);
/* Calls fn for every header in order; for CloudEvents binary mode (ce-* headers). */
void api_request_headers_each(const struct api_request *req,
                              void (*fn)(void *ctx, const char *name, const char *value),
                              void *ctx);
/* The body in memory (NUL-terminated; "" with len 0 when there is none). NULL for routes
 * registered with API_BODY_FILE. */
const char *api_request_body(const struct api_request *req, size_t *len);
/* The temporary file holding the body of an API_BODY_FILE route (NULL when empty). The
 * handler may rename() it away to keep it; otherwise it is deleted when the request ends. */
const char *api_request_body_path(const struct api_request *req);
uint64_t api_request_body_size(const struct api_request *req);
/* The guid of the app whose instance token authorised the request; NULL for the admin. */
const char *api_request_caller_app(const struct api_request *req);
/* The guid of the instance whose token authorised the request, and its app's name; NULL
 * for the admin. */
const char *api_request_caller_instance(const struct api_request *req);
const char *api_request_caller_name(const struct api_request *req);
/* The id of the cell whose token called (AUTH_CELL), else NULL. */
const char *api_request_cell(const struct api_request *req);
/* The pattern of the route the request matched ("/v1/apps/ * /start" without the spaces). */
const char *api_request_route(const struct api_request *req);
/* Called once per change that was made: a request other than GET/HEAD, publishing and public
 * routes, answered below 400, as it finishes (the request's accessors still work). */
typedef void (*api_audit_fn)(void *ctx, struct api_request *req, int status);
void api_set_audit(struct api *api, api_audit_fn fn, void *ctx);
/* Who called (auth.h): filled before the handler runs. */
const struct auth_principal *api_request_principal(const struct api_request *req);
/* The org and space the permission was checked in (guids; NULL for platform-wide routes,
 * the space NULL for org routes). */
const char *api_request_org(const struct api_request *req);
const char *api_request_space(const struct api_request *req);
/* The auth the API decides with (NULL when there is none). */
struct auth *api_auth(struct api *api);
struct auth *api_request_auth(const struct api_request *req);
/* The client's address as "ip:port". */
const char *api_request_peer(const struct api_request *req);

/* Called once if the client disconnects before the request is finished. */
void api_request_on_abort(struct api_request *req, void (*fn)(void *ctx), void *ctx);
/* Runs the request's handler again, for a handler that returned without finishing the request
 * while something it needs was read off the loop (from that read's callback). */
void api_request_handle_again(struct api_request *req);
bool api_request_aborted(const struct api_request *req);
/* The app of that name (or guid) in space, for a handler that may run again: 0 with *out (the
 * caller's to store_app_free), a negative errno (-ENOENT: none), or -EINPROGRESS when the
 * store's copy does not hold it and its read from the database is queued
 * (store_app_find_or_read). The handler then returns without answering; it runs again once the
 * read is made (api_request_handle_again), and this call then gives the read's answer, kept
 * with the request (a second look-up of the name in that run reads nothing again). A request
 * whose client left meanwhile is answered then (503, to no one) instead of run again. */
struct store_app;
int api_request_app_find(struct api_request *req, struct store *st, const char *space,
                         const char *name, struct store_app **out);
/* A user by name or guid, for a handler that may run again: from the copy; on a shared store,
 * a name the copy lacks (made through another skiffd a moment ago) is looked for in the store
 * once per request (auth_catch_up_user_async, queued): NULL with *waiting set, the handler
 * returning without answering and running again once the read is made, when this call
 * answers from the copy as it then is. */
struct auth_user;
const struct auth_user *api_request_user_find(struct api_request *req, const char *name,
                                              bool *waiting);

/* Parses the body as a JSON object. On failure answers 400 `invalid_json` (saying where)
 * itself, finishing the request, and returns NULL; on success the caller owns the reference. */
json_t *api_request_json_object(struct api_request *req);
/* Checks that every key of obj is in the NULL-terminated list allowed. On an unknown key
 * answers 400 `unknown_field` naming it (finishing the request) and returns false. */
bool api_json_check_fields(struct api_request *req, json_t *obj, const char *const *allowed);

/* ---- responses --------------------------------------------------------------------------- */

/* Adds a response header (before the response starts). Both strings are copied. */
void api_response_header(struct api_request *req, const char *name, const char *value);
/* A whole response. The body is copied; content_type may be NULL with no body. */
void api_respond(struct api_request *req, int status, const char *content_type, const void *body,
                 size_t len);
/* A JSON response; takes the reference to body (may be NULL: no body). */
void api_respond_json(struct api_request *req, int status, json_t *body);
/* The one way a handler answers an error: {"error": {"code": skiff_err_name(err), "message":
 * formatted}} with skiff_err_http_status(err), from the one table in common/err.h; a NULL fmt
 * says skiff_strerror(err). err is an enum skiff_err (what the request did wrong) or the
 * negative errno a part below the API returned, answered as the table's row for it says (a
 * store's -ENOENT is a 404, its -EIO a 500, a full disk a 503): the handler adds the words
 * only it knows ("no app named ..."), never its own status. */
void api_respond_error(struct api_request *req, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Switches the request's connection to another protocol instead of answering (101, see
 * http_upgrade in src/http/server.h): taken gets the socket (fd -1 when the client left
 * first) and the bytes that came after the request. This finishes the request (audited as
 * a change answered 101). */
typedef void (*api_upgrade_fn)(void *ctx, int fd, const char *early, size_t len);
void api_upgrade(struct api_request *req, const char *protocol, api_upgrade_fn taken, void *ctx);

/* Chunked streaming: begin once, write any number of times, end once (which finishes the
 * request). api_stream_write returns 0, or -EPIPE when the client is gone (keep calling
 * api_stream_end regardless). api_stream_pending says how many bytes wait to be sent, so a
 * producer can slow down. */
void api_stream_begin(struct api_request *req, int status, const char *content_type);
int api_stream_write(struct api_request *req, const void *data, size_t len);
size_t api_stream_pending(const struct api_request *req);
void api_stream_end(struct api_request *req);

/* ---- components that plug into skiffd ----------------------------------------------------- */

struct store;
struct scheduler;
struct logs;

/* What skiffd hands to the components it hosts. Everything lives until they are stopped. */
struct api_services {
    uv_loop_t *loop;
    const char *home;            /* $SKIFF_HOME */
    const char *api_url;         /* what SKIFF_EVENTS_URL is built from */
    struct api *api;             /* add routes with api_route_add */
    struct store *store;         /* src/store/store.h (documents: store_doc_*) */
    struct scheduler *scheduler; /* src/scheduler/scheduler.h */
    struct hub *hub;             /* src/hub/hub.h: platform events */
    struct logs *logs;           /* src/logs/logs.h */
    const char *nats_url;        /* events in NATS JetStream ("": the embedded log) */
    int nats_replicas;           /* each JetStream stream's replicas */
    struct natsconn_security nats_security; /* credentials and TLS for nats_url */
};

/* The events component (src/api/events.c): the topics' endpoints on the fabric it opens.
 * skiffd makes it once the API, store and scheduler exist (before api_listen), and stops it at
 * shutdown before they are freed; api_events_stop frees it and calls done (on the loop) when
 * everything it owns is closed (NULL: done at once). A negative errno from api_events_start
 * stops skiffd with the message in err. */
struct api_events;
int api_events_start(const struct api_services *svc, struct api_events **out, char *err,
                     size_t errsize);
void api_events_stop(struct api_events *ev, void (*done)(void *arg), void *arg);
/* The services component (src/api/services.c, brokers.c; docs/services.md): service
 * instances, bindings, service keys, brokers and the marketplace, on the records of
 * src/services/services.h. Broker calls run on libuv's thread pool, never on the loop. skiffd
 * makes it before api_listen and stops it (after api_close) before the records are freed;
 * operations still waiting on a broker are abandoned then and resumed by the next start from
 * what the records say. */
struct api_svc;
struct services;
struct api_svc_config {
    struct services *records;
    /* The platform's own listening addresses ("IP:PORT", NULL-terminated, at most 8): a broker
     * URL naming one of them is refused. */
    const char *const *own_addrs;
};
int api_svc_start(const struct api_services *svc, const struct api_svc_config *cfg,
                  struct api_svc **out);
/* When skiffd begins to stop: broker calls in flight give up, none is started. */
void api_svc_shutdown(struct api_svc *a);
void api_svc_stop(struct api_svc *a);
/* For the API core, when an app is deleted: its bindings go (unbound at their brokers). */
void api_svc_app_deleted(void *ctx, const char *app_guid);
/* Registers the platform broker named name at url (or brings its URL, credentials and
 * catalog up to date) through the same catalog fetch as `create-service-broker`; a new one
 * has its plans opened to every org; owner (the registering skiffd's id) is kept with it.
 * cb runs once with whether it worked and, if not, why. */
typedef void (*api_svc_registered_fn)(void *arg, bool ok, const char *msg);
void api_svc_builtin_broker(struct api_svc *a, const char *name, const char *url,
                            const char *username, const char *password, const char *owner,
                            api_svc_registered_fn cb, void *arg);

/* The event log the events API serves, for delivery (src/invoker) to run on. Delivery must
 * stop before api_events_stop. */
struct fabric *api_events_fabric(struct api_events *ev);

#endif
