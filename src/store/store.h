/* store: skiffd's desired state (apps, processes, env, packages, droplets, routes, domains)
 * and a generic document table for other components.
 *
 * The interface knows nothing of its backend (store_backend.h is the seam: a store_ops table
 * per backend). store_open("sqlite:PATH") or a plain path opens the embedded SQLite backend
 * (WAL mode). Every call is synchronous and returns 0 or a negative errno, the one error type
 * of common/err.h (skiff_strerror words it, skiff_err_from gives the API error that answers
 * it): -ENOENT not found, -EEXIST a unique name taken, -EIO a backend failure (also logged,
 * through common/log.h, with the backend's message). Nothing here aborts except on out-of-memory.
 *
 * Ownership: structs returned through an out pointer belong to the caller and are freed with
 * the matching *_free call. Structs passed in are only read. A read or list is whole or
 * nothing: when any of its queries fails (an app's processes or env, say) it returns -EIO
 * and leaves its out pointers untouched, never a half-filled result.
 *
 * Schema migrations (SQLite): the list `store_sqlite_migrations` in store_sqlite.c holds one
 * SQL script per schema version, applied in order, each in its own transaction together with
 * the new row in `schema_version`. To change the schema, append a script at the end; never
 * edit one that has shipped. Components that only need to keep some JSON records do not need
 * a migration: use the document calls (store_doc_*), keyed by (kind, id). */
#ifndef SKIFF_STORE_H
#define SKIFF_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util.h"

struct store;

/* A process's scaling policy, min_instances: STORE_SCALE_MANUAL, its count is its user's and
 * the platform never changes it by itself; >= 0, it scales with its work (events, requests)
 * and down to min_instances when idle (0: to zero, and up again on the next event or
 * request). The one place that decides it is the store: store_process_default_min when a
 * process is made or its app's kind changes; everyone else reads the field. */
#define STORE_SCALE_MANUAL (-1)

/* Cloud Foundry's per-process health and log settings (manifest keys of the same names). 0 in
 * a number means the platform's default (executor.h); readiness_type NULL: no readiness check
 * (the instance is routed to while its liveness check passes). */
struct store_process_checks {
    int health_interval_s;    /* health-check-interval: liveness probe period */
    int health_timeout_s;     /* health-check-invocation-timeout: one probe's deadline */
    char *readiness_type;     /* "http", "port", "process" or NULL */
    char *readiness_endpoint; /* for "http"; NULL: "/" */
    int readiness_interval_s; /* readiness-health-check-interval */
    int readiness_timeout_s;  /* readiness-health-check-invocation-timeout */
    bool log_rate_limited;    /* false: unlimited (CF's -1) */
    int64_t log_rate_limit;   /* log-rate-limit-per-second: bytes an instance may log
                                 a second when limited (0: nothing) */
};

struct store_process {
    char *type;        /* "web", or a function's name */
    char *command;     /* NULL: the droplet's command for this type */
    int instances;     /* desired */
    int memory_mb;     /* 0: the app's */
    int min_instances; /* the scaling policy: STORE_SCALE_MANUAL or the floor it scales to */
    /* Request scaling (src/autoscaler): with max_instances > 0 (and min_instances >= 0) the
     * autoscaler runs between min and max instances by the requests in flight; 0 in the
     * others means the autoscaler's default. */
    int max_instances;       /* 0: no request scaling */
    int target_concurrency;  /* requests in flight per instance */
    int target_rps;          /* requests per second per instance (then instead of concurrency) */
    int window_ms;           /* the stable window (the panic window is a tenth of it) */
    int scale_down_delay_ms; /* how long a lower count must be wanted before it runs */
    /* A function inside the app (src/api/functions.c): {"handler": "FILE:FUNC", "runtime":
     * "python"|"node"|"shell"} as the API wrote it (its max_instances is the policy's above);
     * NULL for web and other process types. */
    char *function_json;
    struct store_process_checks checks;
};

/* Whether the process runs one of its app's functions (rather than web or a worker). */
static inline bool store_process_is_function(const struct store_process *p)
{
    return p && p->function_json;
}

/* The policy a process gets unless one is set: every process of a function, and an app's
 * process types other than web (the functions its manifest declares), scale to zero; an
 * app's web process is scaled by its user (STORE_SCALE_MANUAL). */
int store_process_default_min(const char *app_kind, const char *type);

/* A function's policy unless its user sets one (the one owner of its max_instances). */
#define STORE_FUNCTION_DEFAULT_MAX_INSTANCES 10
#define STORE_DEFAULT_TARGET_CONCURRENCY 100
/* Sets p's scaling policy to the default for its type in an app of app_kind: the minimum of
 * store_process_default_min, and for a function's process a stored request scaling policy
 * (min 0, max STORE_FUNCTION_DEFAULT_MAX_INSTANCES, target STORE_DEFAULT_TARGET_CONCURRENCY
 * in flight), so the autoscaler is what scales it; no request scaling for the others. */
void store_process_default_policy(const char *app_kind, struct store_process *p);
/* Whether the platform scales the process by itself (and so may scale it to zero). */
static inline bool store_process_autoscaled(const struct store_process *p)
{
    return p && p->min_instances >= 0;
}

/* Whether the autoscaler scales the process with its requests (its policy has a maximum):
 * the one answer to "who scales this process down". */
static inline bool store_process_request_scaled(const struct store_process *p)
{
    return store_process_autoscaled(p) && p->max_instances > 0;
}

struct store_env_var {
    char *name;
    char *value;
};

/* The space of apps made before spaces existed (auth.h's AUTH_DEFAULT_SPACE_GUID). */
#define STORE_DEFAULT_SPACE_GUID SKIFF_DEFAULT_SPACE_GUID

struct store_app {
    char guid[37];
    char space_guid[37]; /* "" on create: the default space */
    char *name;
    char *state; /* "STARTED" or "STOPPED" */
    char *kind;  /* "app" or "function" */
    int memory_mb;
    int disk_mb;
    int timeout;             /* start timeout, seconds */
    char *command;           /* NULL: from the droplet */
    char *buildpacks_json;   /* JSON array of names, "[]" when none */
    char *health_check_type; /* "port", "http", "process" */
    char *health_check_http_endpoint;
    char *function_json;      /* {"handler", "runtime"} or NULL */
    char *package_guid;       /* NULL when none */
    char *droplet_guid;       /* NULL when none */
    char *detected_buildpack; /* of the current droplet, NULL when none */
    /* Sidecars (Cloud Foundry's): [{"name", "process_types": [TYPE...], "command",
     * "memory_mb"}] as the API checked and wrote it, NULL when none; read through
     * store_app_sidecars */
    char *sidecars_json;
    /* Cloud Foundry's enable_ssh, inverted so that a zeroed app has ssh on (CF's default);
     * whether a session may start also needs its space to allow it (api/ssh.c) */
    bool ssh_disabled;
    int64_t created_at;       /* ms since the epoch */
    int64_t updated_at;
    /* The row's version, from 1, raised by every update of the app (its processes and env
     * are written only with it, so it is theirs too). store_app_update names the version
     * it was read at and fails with -ESTALE when another writer changed the app since. */
    int64_t version;
    struct store_process *processes; /* "web" first when present */
    size_t n_processes;
    struct store_env_var *env; /* sorted by name */
    size_t n_env;
};

struct store_route {
    char guid[37];
    char *host; /* "hello.localhost" */
    char *path; /* "" or "/v1" */
    char *app_guid;
    char *domain;  /* the domain the host ends in */
    char *balance; /* "round-robin" or "least-connection" (docs/bus.md); NULL on add means
                    * "round-robin". The store keeps the text; the API checks the value. */
    char *protocol;  /* what the router speaks to the instances: "http1" or "http2" (h2c);
                      * NULL on add means "http1". Checked by the API, like balance. */
    bool https_only; /* a plain-HTTP request gets a redirect to HTTPS */
};

struct store_droplet {
    char guid[37];
    char *app_guid;
    char *path; /* the droplet folder */
    char *buildpack;
    char *process_types_json; /* {"web": "command"} */
    int64_t created_at;
    char *digest; /* its blob ("sha256:HEX", src/blobs/blobs.h), NULL when made before blobs */
    /* the further blobs it needs, space-separated digests (an image's config and layers, which
     * cells on other hosts fetch), or NULL */
    char *blobs;
};

struct store_package {
    char guid[37];
    char *app_guid;
    char *path; /* the archive */
    uint64_t bytes;
    int64_t created_at;
    char *digest; /* its blob ("sha256:HEX", src/blobs/blobs.h), NULL when made before blobs */
};

/* Opens (creating when needed) and migrates the store. err gets a message on failure. */
int store_open(const char *location, char *err, size_t errsize, struct store **out);
void store_close(struct store *st);
/* Whether the location names PostgreSQL (postgres:// or postgresql://): a store several
 * skiffds may share, where one leads (src/daemon/leader.h). */
bool store_location_is_postgres(const char *location);
/* The schema version after migrations (for tests and diagnostics). */
int store_schema_version(struct store *st);
/* A number that changes whenever anything was written: through this store, and on
 * PostgreSQL by any other writer on the database as well (its change feed, below). A cheap
 * check that a cached view is still current; never waits. */
uint64_t store_change_count(struct store *st);

/* The change feed: what other writers on the same database changed. On PostgreSQL a
 * LISTEN connection of its own (non-blocking) that every write transaction NOTIFYs (schema
 * triggers, so every writer does, whatever code it runs); on SQLite there is none (-1),
 * all changes come through this process. store_feed_fd is the descriptor to watch for
 * reading (uv_poll). A lost feed is reopened (a non-blocking connect, tried again after a
 * delay that doubles from 100 ms up to 30 s), so the descriptor changes: -1 while waiting
 * for the next try, the new connection's while it connects and once it is on again. */
int store_feed_fd(struct store *st);
/* Calls fn whenever the descriptor to watch changes, from within a store call: fd (-1:
 * none until store_feed_retry_ms has passed) and whether to watch it for writing as well
 * as reading (while connecting). The owner stops watching the old descriptor first (it is
 * closed, and its number may be the new one's); a readable or writable event calls
 * store_feed_take. No call on SQLite. Without a watch set, the first connection stays open
 * once lost (until store_close), so that its descriptor's number is not reused under an
 * owner still watching it. */
void store_feed_watch(struct store *st, void (*fn)(void *ctx, int fd, bool writable), void *ctx);
/* Milliseconds until the lost feed's next try, which any store call after it makes (a
 * timer's due: call store_feed_take then); -1 when no try is waiting. */
int64_t store_feed_retry_ms(struct store *st);
/* Reads what has come on the feed, never waiting, and calls fn (when not NULL) once with the
 * guid of each app another writer created, changed or deleted since the last call; app_guid
 * NULL means "any app may have changed" (too many to name, or the feed was lost). Returns
 * the number of calls made. */
size_t store_feed_take(struct store *st, void (*fn)(void *ctx, const char *app_guid), void *ctx);
/* A number that changes whenever another writer may have changed documents (store_doc_*): on
 * PostgreSQL each of their notifications that names documents (or "all"), and every call while
 * the feed is lost; always 0 on SQLite, where every write comes through this process. Never
 * waits. A component that keeps documents in memory reads them again when it changed. */
uint64_t store_doc_news(struct store *st);
/* The same for the documents of one family of kinds: the kind named, and the kinds under it
 * after a dot ("auth" holds "auth.user" and "auth.token.hash"). On PostgreSQL the feed names
 * the kind of each document written, so another family's writes are no news here; "all", a
 * kind too long to name and a lost feed are news for every family. */
uint64_t store_doc_news_kind(struct store *st, const char *family);
/* A number that changes whenever another writer's change of the routes is in
 * the store's copy: on PostgreSQL once the routes were read again after its news, or at once
 * when no copy is held; always 0 on SQLite. Never waits. skiffd sends its route table again
 * when it moved after the store's writer reported back. */
uint64_t store_routes_news(struct store *st);

/* ---- apps (with their processes and env, written together) ------------------------------- */

/* Creates the app; the guid is filled in by the caller, app->version is set to 1. -EEXIST:
 * name taken. */
int store_app_create(struct store *st, struct store_app *app);
/* Replaces everything about an existing app (found by guid), processes and env included,
 * if it is still at app->version (compare-and-swap); on success app->version is the new
 * version. -ESTALE: another writer changed it since it was read (read it again; the API
 * answers 409); -ENOENT: no such app; -EINVAL: app->version is 0 (never read). */
int store_app_update(struct store *st, struct store_app *app);
/* Reads the app (by guid), lets change() alter it and updates it, reading and changing it
 * again when another writer came first (-ESTALE), at most STORE_MODIFY_TRIES times: for
 * a change that is a function of the current row alone. change returns < 0 to stop with
 * that error, 0 to write, > 0 when there is nothing to write. *out (when not NULL) gets the
 * app as written (the caller's). */
#define STORE_MODIFY_TRIES 8
int store_app_modify(struct store *st, const char *guid,
                     int (*change)(void *ctx, struct store_app *app), void *ctx,
                     struct store_app **out);
/* By guid, by "SPACE_GUID/NAME", or by a bare name in the default space. */
int store_app_get(struct store *st, const char *ref, struct store_app **out);
/* As store_app_get, read from the database rather than this store's copy (PostgreSQL): for a
 * request that needs what another skiffd may have written a moment ago, before the change
 * feed told this one (an upload's package made through another controller). The copy then
 * holds what was read. */
int store_app_get_fresh(struct store *st, const char *ref, struct store_app **out);
/* By name or guid, only in that space (-ENOENT for another space's app). */
int store_app_find(struct store *st, const char *space_guid, const char *name_or_guid,
                   struct store_app **out);
/* Every app, or those of one space (space_guid NULL: all), by name. */
int store_app_list(struct store *st, struct store_app ***out, size_t *n);
int store_app_list_in(struct store *st, const char *space_guid, struct store_app ***out, size_t *n);
/* Deletes the app, its processes, env, routes, packages and droplets (rows only). */
int store_app_delete(struct store *st, const char *guid);
void store_app_free(struct store_app *app);
void store_app_list_free(struct store_app **apps, size_t n);
/* The process of that type, NULL when absent (points into app). */
struct store_process *store_app_process(const struct store_app *app, const char *type);
/* Deep copy. */
struct store_app *store_app_dup(const struct store_app *app);

/* A sidecar of the app's, for one of its process types. */
struct store_sidecar {
    char *name;
    char *command;
    int memory_mb; /* 0: none given */
};
/* The sidecars that run in the instances of the app's process `type`, in the order given
 * (*out, *n: the caller frees with store_sidecars_free; NULL and 0 when none): the one
 * answer to "what runs beside this process". -EINVAL when sidecars_json is not what the API
 * writes. */
int store_app_sidecars(const struct store_app *app, const char *type, struct store_sidecar **out,
                       size_t *n);
void store_sidecars_free(struct store_sidecar *sidecars, size_t n);

/* ---- routes and domains ------------------------------------------------------------------ */

/* -EEXIST when host+path is taken. */
int store_route_add(struct store *st, const struct store_route *route);
int store_route_delete(struct store *st, const char *host, const char *path);
/* Changes an existing route's balance and protocol (each NULL: as it is); -ENOENT when there
 * is no route host+path. */
int store_route_update(struct store *st, const char *host, const char *path, const char *balance,
                       const char *protocol);
/* Changes an existing route's https_only; -ENOENT when there is no route host+path. */
int store_route_set_https_only(struct store *st, const char *host, const char *path, bool on);
/* All routes (app_guid NULL) or an app's, ordered by host then path. */
int store_route_list(struct store *st, const char *app_guid, struct store_route **out, size_t *n);
void store_route_list_free(struct store_route *routes, size_t n);

/* org_guid NULL: a shared domain (every space may use it); else the org's private domain. */
int store_domain_add(struct store *st, const char *name, const char *org_guid);
/* NULL-terminated list of names (free with strv_free); shared[i] and org_guids[i] ("" for
 * a shared domain; NULL-terminated too) set when the pointers are not NULL. */
int store_domain_list(struct store *st, char ***names, bool **shared, char ***org_guids);
/* Removes a domain: -ENOENT when there is none, -EEXIST while a route or its certificate
 * still refers to it (the caller removes the certificate first and refuses while routes use
 * the domain; the store's foreign keys refuse a route added in between). */
int store_domain_delete(struct store *st, const char *name);

/* A domain's own HTTPS certificate: its chain and key (PEM), checked by the caller
 * (tls_pair_check). The key is for skiffd and the routers only (src/tls/README.md, "Domain
 * certificates"): the table holding it is readable by skiffd's database user alone (the
 * SQLite file is 0600; on PostgreSQL nothing is granted on it to PUBLIC), and the API never
 * answers it. Set replaces what the domain had. */
int store_domain_cert_set(struct store *st, const char *domain, const char *cert_pem,
                          const char *key_pem);
/* 0 with *cert_pem and *key_pem (the caller frees them, the key wiped first), or -ENOENT when
 * the domain has no certificate of its own; key_pem may be NULL (the chain alone). */
int store_domain_cert_get(struct store *st, const char *domain, char **cert_pem, char **key_pem);
/* The domains that have a certificate of their own, by name (NULL-terminated, strv_free). */
int store_domain_cert_list(struct store *st, char ***domains);
/* Removes a domain's certificate and key; -ENOENT when it had none. */
int store_domain_cert_delete(struct store *st, const char *domain);
/* strv_free (common/util.h) of strings that are secrets: each wiped first. */
void store_strv_free_wiped(char **v);

/* ---- packages and droplets ---------------------------------------------------------------- */

int store_package_add(struct store *st, const struct store_package *pkg);
int store_package_get(struct store *st, const char *guid, struct store_package **out);
void store_package_free(struct store_package *pkg);
int store_droplet_add(struct store *st, const struct store_droplet *drop);
int store_droplet_get(struct store *st, const char *guid, struct store_droplet **out);
void store_droplet_free(struct store_droplet *drop);
/* Deletes one droplet's row (its folder is the caller's to remove); -ENOENT when absent. */
int store_droplet_delete(struct store *st, const char *guid);
/* Paths of the app's packages other than keep_package, and of its droplets other than
 * keep_droplet (none when keep_droplet is NULL: revisions decide about droplets), for cleanup;
 * their rows are deleted. NULL-terminated (strv_free). */
int store_app_prune_artifacts(struct store *st, const char *app_guid, const char *keep_package,
                              const char *keep_droplet, char ***paths);
/* The blobs packages and droplets name (a droplet's digest and its further blobs, one an entry,
 * possibly repeated; NULL-terminated, strv_free): what blob_gc keeps. */
int store_blob_refs(struct store *st, char ***digests);

/* ---- audit events: who changed what ------------------------------------------------------- */

#define STORE_AUDIT_KEEP 100000

struct store_audit_event {
    int64_t id;  /* given by the store, growing */
    int64_t at;  /* ms since the epoch */
    char *type;  /* "audit.app.update" */
    char *actor; /* the user's name, or "admin" for the local admin token */
    char *actor_guid;
    char *token_guid;
    char *target; /* the app's (user's, org's, ...) name, or NULL */
    char *space_guid;
    char *org_guid;
    char *detail; /* JSON object */
};

/* Appends one (ev->id is ignored); only the newest STORE_AUDIT_KEEP are kept. */
int store_audit_add(struct store *st, const struct store_audit_event *ev);
/* Newest first, at most limit, filtered by whichever of space, org and target is not NULL,
 * older than before_id when > 0. */
int store_audit_list(struct store *st, const char *space_guid, const char *org_guid,
                     const char *target, int64_t before_id, size_t limit,
                     struct store_audit_event **out, size_t *n);
void store_audit_list_free(struct store_audit_event *list, size_t n);

/* ---- tasks: one-off processes run from an app's droplet (src/api/tasks.c) ------------------ */

struct store_task {
    char guid[37];
    char app_guid[37];   /* deleting the app deletes its tasks */
    int64_t sequence_id; /* per app, from 1 */
    char *name;
    char *command;
    char *state;          /* "PENDING", "RUNNING", "SUCCEEDED" or "FAILED" */
    char *failure_reason; /* FAILED: why; else NULL */
    int exit_status;      /* -1 until it exits by itself */
    int memory_mb;
    int disk_mb;
    char droplet_guid[37]; /* what it runs */
    int64_t created_at;    /* ms since the epoch */
    int64_t updated_at;
};

/* Inserts or replaces (by guid). -EEXIST: the app has a task of that sequence_id already. */
int store_task_put(struct store *st, const struct store_task *task);
/* The tasks of one app (app_guid NULL: of every app), by app then sequence_id. */
int store_task_list(struct store *st, const char *app_guid, struct store_task **out, size_t *n);
/* -ENOENT when absent. */
int store_task_delete(struct store *st, const char *guid);
void store_task_list_free(struct store_task *list, size_t n);

/* ---- documents: JSON records for other components ----------------------------------------- */

/* Inserts or replaces. json is any text (normally a JSON object). */
int store_doc_put(struct store *st, const char *kind, const char *id, const char *json);
/* Inserts only when (kind, id) is absent, in one statement: of two writers (two skiffds on
 * one PostgreSQL) creating the same id at the same moment, one gets -EEXIST. This is how a
 * component claims a unique name: a document keyed by the name. */
int store_doc_create(struct store *st, const char *kind, const char *id, const char *json);
/* -ENOENT when absent; *json is the caller's. */
int store_doc_get(struct store *st, const char *kind, const char *id, char **json);
/* As store_doc_get, read from the database rather than this store's copy (PostgreSQL): how a
 * skiffd catches up with a document another skiffd wrote a moment ago, before the change
 * feed told it (a token made through another controller). When the copy did not hold what
 * was read, the whole copy of documents is dropped: another writer's news is on its way, and
 * the reads that follow go to the database. A document read so is not kept (a hostile client
 * sending made-up keys cannot fill the copy). */
int store_doc_get_fresh(struct store *st, const char *kind, const char *id, char **json);
int store_doc_delete(struct store *st, const char *kind, const char *id);
/* Calls fn for every document of a kind, in id order; fn returning non-zero stops. */
int store_doc_each(struct store *st, const char *kind,
                   int (*fn)(void *ctx, const char *id, const char *json), void *ctx);
/* As store_doc_each, the kind read again from the database (PostgreSQL), and the copy of
 * that kind replaced by what was read: how a skiffd catches up with a kind another skiffd
 * changed a moment ago, before the change feed told it. What is kept is the kind whole, as
 * the database holds it, so no caller can fill the copy with made-up keys. */
int store_doc_each_fresh(struct store *st, const char *kind,
                         int (*fn)(void *ctx, const char *id, const char *json), void *ctx);
/* Has the copy hold the documents of kind whole (PostgreSQL): read whole now when it does not
 * (once, best at the start; again only after the copy dropped them: a lost feed), then kept
 * by the change feed and read again off the caller's thread, the copy answering as it was
 * meanwhile, on whatever would outdate it: another writer's news of the kind or of every
 * kind, a fresh read that differs, a write of it that failed. So store_doc_get and
 * store_doc_each of that kind answer from memory. For small kinds read on the event loop (a
 * cell's heartbeat, an app's instance record). 0, or the read's error; 0 on SQLite. */
int store_doc_hold(struct store *st, const char *kind);
/* Replaces a document only while it exists: -ENOENT when absent (another writer deleted it),
 * so that a record rewritten now and then is never brought back after its deletion. */
int store_doc_update(struct store *st, const char *kind, const char *id, const char *json);
/* Replaces a document only while its body is still exactly expected (what the caller read):
 * -ESTALE when another writer changed or deleted it meanwhile. Of writers replacing one body
 * at once, exactly one succeeds: how a stale record is taken over. */
int store_doc_replace(struct store *st, const char *kind, const char *id, const char *expected,
                      const char *json);

/* ---- writes off the caller's thread ----------------------------------------------------------
 *
 * On PostgreSQL every document write and audit event goes through one writer thread with a
 * connection of its own, in the order they were asked for. An *_async call queues the write
 * and returns at once; done(ctx, rc) is called later on the caller's thread, from
 * store_async_reap, with what the synchronous call would have returned. The synchronous
 * document writes go through the same queue and wait for their turn, so they never overtake
 * a queued write. store_doc_get and store_doc_each see a queued write at once (as if it were
 * done); store_audit_list shows an event once it is written.
 *
 * On SQLite (a local file) the write is made during the call and done is called before it
 * returns. done may be NULL. A write that cannot be queued (the store is closing after its
 * writer was given up) returns a negative errno and done is not called. */
typedef void store_done_fn(void *ctx, int rc);
/* An app read off the caller's thread (store_app_find_or_read). */
typedef void store_app_found_fn(void *ctx, int rc, struct store_app *app);

int store_doc_put_async(struct store *st, const char *kind, const char *id, const char *json,
                        store_done_fn *done, void *ctx);
int store_doc_delete_async(struct store *st, const char *kind, const char *id, store_done_fn *done,
                           void *ctx);
int store_audit_add_async(struct store *st, const struct store_audit_event *ev, store_done_fn *done,
                          void *ctx);
/* store_blob_refs off the caller's thread (after the writes queued before it): done gets
 * its return value and the list (NULL-terminated, the callback's to strv_free; NULL on
 * a failure). */
typedef void store_refs_fn(void *ctx, int rc, char **digests);
int store_blob_refs_async(struct store *st, store_refs_fn *done, void *ctx);
/* Readable (an eventfd) while finished writes wait for store_async_reap; -1 on SQLite. */
int store_async_fd(struct store *st);
/* Calls done for every write finished since the last call; returns how many. */
size_t store_async_reap(struct store *st);
/* Writes queued and not finished yet. */
size_t store_async_queued(struct store *st);
/* Waits at most store_drain_ms for the queued writes, then reaps. A write not finished by
 * then is logged as lost (naming it); those not yet begun get done(ctx, -ECANCELED), the one
 * the server is still working on is left to its thread and never reported back. After that
 * the store writes nothing more (every write fails with -ECANCELED at once). store_close
 * does the same first; a program calls this earlier, while the owners of its done
 * callbacks are still there. */
void store_async_drain(struct store *st);
/* The bound of store_async_drain, in milliseconds (5000); tests may change it. */
extern int64_t store_drain_ms;

/* App writes through the same writer, in turn with the others. store_app_create_async and
 * store_app_update_async queue a copy of the app and return at once; app->version is set at
 * once to the version the app has once written (1 for a create), and store_app_get and
 * store_app_list show the app as queued from then on (read-your-writes), until the write is
 * made (then as written) or fails (then as the server has it). done(ctx, rc) gets what
 * store_app_create or store_app_update would have returned (-EEXIST a name taken, -ESTALE
 * another writer came first, -ENOENT gone). The synchronous app writes, and every other write
 * of apps, routes, tasks, packages and droplets, wait for the queued writes before them. */
int store_app_create_async(struct store *st, struct store_app *app, store_done_fn *done, void *ctx);
int store_app_update_async(struct store *st, struct store_app *app, store_done_fn *done, void *ctx);
/* store_app_modify with its write queued: change runs during the call on the app as read
 * (as queued writes leave it), and when the write loses to another writer (-ESTALE) again,
 * from store_async_reap, on the app read again (at most STORE_MODIFY_TRIES times in all), so
 * ctx must live until done is called. Returns < 0 for an error of the read or of change
 * (done is not called), > 0 when change had nothing to write (done is not called), 0 when
 * the write was queued: done(done_ctx, rc) then gets its outcome (on SQLite before the call
 * returns). *out (when not NULL, on a return >= 0) gets the app as changed, at the version it
 * has once written (the caller's). */
int store_app_modify_async(struct store *st, const char *guid,
                           int (*change)(void *ctx, struct store_app *app), void *ctx,
                           store_done_fn *done, void *done_ctx, struct store_app **out);

/* Deletions of apps, writes of routes and of tasks through the same writer, in turn with the
 * others: queued, returning at once, done(ctx, rc) getting what the synchronous call would
 * have returned (-EEXIST a route's host and path taken or a task's sequence_id, -ENOENT
 * nothing to delete or update). Reads see them at once: an app queued for deletion is gone
 * from store_app_get and store_app_list, and with it its routes and tasks; store_route_list
 * and store_task_list show the queued writes as made. A route write refused by the server is
 * then read from it again; no write is ever half seen. On SQLite, made during the call. */
int store_app_delete_async(struct store *st, const char *guid, store_done_fn *done, void *ctx);
int store_route_add_async(struct store *st, const struct store_route *route, store_done_fn *done,
                          void *ctx);
int store_route_delete_async(struct store *st, const char *host, const char *path,
                             store_done_fn *done, void *ctx);
/* store_route_update and store_route_set_https_only in one write: balance, protocol (NULL: as
 * they are), https_only (-1: as it is, else 0 or 1). */
int store_route_update_async(struct store *st, const char *host, const char *path,
                             const char *balance, const char *protocol, int https_only,
                             store_done_fn *done, void *ctx);
int store_task_put_async(struct store *st, const struct store_task *task, store_done_fn *done,
                         void *ctx);
int store_task_delete_async(struct store *st, const char *guid, store_done_fn *done, void *ctx);

/* Packages, droplets and pruning */

/* Writes of packages and droplets and prunes of an app's, through the same writer, in turn
 * with the others: queued, returning at once, done(ctx, rc) getting what the synchronous call
 * would have returned (-EEXIST a guid taken or an app that is gone). Reads see them at once:
 * store_package_get and store_droplet_get find a package or droplet queued (until a prune or
 * the app's deletion queued after it). On SQLite, made during the call. */
int store_package_add_async(struct store *st, const struct store_package *pkg, store_done_fn *done,
                            void *ctx);
int store_droplet_add_async(struct store *st, const struct store_droplet *drop, store_done_fn *done,
                            void *ctx);
/* store_app_prune_artifacts queued: done gets its return value and the paths of the rows
 * deleted (NULL-terminated, the callback's to strv_free; NULL on a failure). */
int store_app_prune_artifacts_async(struct store *st, const char *app_guid,
                                    const char *keep_package, const char *keep_droplet,
                                    store_refs_fn *done, void *ctx);
/* Reads that may have to ask the server, made by the writer in turn with the writes (after
 * those queued before them), so the caller's thread never waits: done gets what
 * store_package_get or store_app_get_fresh would have returned, and the package or app (the
 * callback's to free; NULL on a failure). What is known without the server (a package
 * queued, an app with a write queued, an app queued for deletion) is answered before the
 * call returns, as on SQLite. */
typedef void store_package_fn(void *ctx, int rc, struct store_package *pkg);
typedef void store_app_fn(void *ctx, int rc, struct store_app *app);
int store_package_get_async(struct store *st, const char *guid, store_package_fn *done, void *ctx);
int store_app_get_fresh_async(struct store *st, const char *guid, store_app_fn *done, void *ctx);

/* The bound on queued writes: with this many queued and not finished (store_async_queued; a
 * server that stopped answering makes them pile up), a new write or queued read is refused
 * at once with -EBUSY, its done never called, until the queue shrinks (on SQLite nothing is
 * ever queued). 10,000 unless changed (skiffd's --store-queue-max; tests). */
#define STORE_QUEUE_MAX_DEFAULT 10000
extern size_t store_queue_max;
/* While true, a write or queued read that finds the queue full waits on the calling thread
 * for room instead of being refused: skiffd's start, which queues its first writes in one
 * burst before it serves anyone (a bound below that burst would refuse its own start; the
 * bound is there to keep requests from piling up behind a silent server). False unless set. */
extern bool store_queue_full_waits;
/* What to tell a client whose write was refused so: "the database is not answering; N
 * writes wait ...". */
void store_busy_message(struct store *st, char *buf, size_t size);

/* Domains, certificates, mappings, audit */

/* store_domain_add, _delete, store_domain_cert_set and _delete through the same writer, in
 * turn with the others: queued, returning at once, done(ctx, rc) getting what the synchronous
 * call would have returned (-EEXIST a domain's name taken, or a domain still referred to;
 * -ENOENT nothing to delete, or a certificate for a domain there is not). The synchronous
 * calls of the same names wait for their turn in the same queue. store_domain_list shows the
 * queued domain writes as made, store_domain_cert_get and store_domain_cert_list the queued
 * certificate writes (a write the server refuses is then read from it again). The key given
 * to store_domain_cert_set_async is copied (and the copy wiped once written). On SQLite,
 * made during the call. */
int store_domain_add_async(struct store *st, const char *name, const char *org_guid,
                           store_done_fn *done, void *ctx);
int store_domain_delete_async(struct store *st, const char *name, store_done_fn *done, void *ctx);
int store_domain_cert_set_async(struct store *st, const char *domain, const char *cert_pem,
                                const char *key_pem, store_done_fn *done, void *ctx);
int store_domain_cert_delete_async(struct store *st, const char *domain, store_done_fn *done,
                                   void *ctx);
/* store_doc_create and store_doc_update queued: done gets -EEXIST (a create of an id taken
 * by its turn) or -ENOENT (an update of a document gone by then). Reads see them at once
 * wherever they know whether the document is there (this store's copy or its queue). */
int store_doc_create_async(struct store *st, const char *kind, const char *id, const char *json,
                           store_done_fn *done, void *ctx);
int store_doc_update_async(struct store *st, const char *kind, const char *id, const char *json,
                           store_done_fn *done, void *ctx);
/* Reads made by the writer in turn with the writes queued before them (so they see those),
 * their outcome given to done on the caller's thread as the writes' are.
 * store_domain_cert_chains_async: every domain that has a certificate of its own, by name,
 * and its chain (never its key); both NULL-terminated, in step, the callback's to
 * strv_free (NULL on a failure). */
typedef void store_pairs_fn(void *ctx, int rc, char **names, char **values);
int store_domain_cert_chains_async(struct store *st, store_pairs_fn *done, void *ctx);
/* store_domain_cert_pairs_async: every domain that has a certificate of its own, by name, with
 * its chain and its key (for the routers on NATS, src/bus), read from the database each time
 * (no copy of a key is kept). The three lists are NULL-terminated, in step, and the store's:
 * valid during the call only, the keys wiped after it (all NULL on a failure). */
typedef void store_cert_pairs_fn(void *ctx, int rc, char **names, char **chains, char **keys);
int store_domain_cert_pairs_async(struct store *st, store_cert_pairs_fn *done, void *ctx);
/* store_audit_list's read (the same filters): done gets the events (the callback's to
 * store_audit_list_free; NULL and 0 on a failure). */
typedef void store_audit_fn(void *ctx, int rc, struct store_audit_event *list, size_t n);
int store_audit_list_async(struct store *st, const char *space_guid, const char *org_guid,
                           const char *target, int64_t before_id, size_t limit,
                           store_audit_fn *done, void *ctx);

/* Documents: replace, fresh reads */
/* store_doc_replace through the writer, in turn with the others, done(ctx, rc) getting what
 * the synchronous call would have returned (-ESTALE the body is no longer expected).
 * store_doc_get and store_doc_each show the document as replaced at once, unless what this
 * store knows (its queue, its copy) says the server will refuse it (a body other than
 * expected). One shown and then refused (another writer came first) is read from the server
 * again. */
int store_doc_replace_async(struct store *st, const char *kind, const char *id,
                            const char *expected, const char *json, store_done_fn *done, void *ctx);
/* store_doc_get_fresh off the caller's thread, after the writes queued before it (so it sees
 * them): done(ctx, rc, json) with 0 and the body (valid during the call only), -ENOENT, or
 * -EIO. */
typedef void store_doc_fn(void *ctx, int rc, const char *json);
/* store_doc_each_fresh off the caller's thread, in turn with the writes: done gets the ids
 * and the bodies of the documents of kind, as store_domain_cert_chains_async does. */
int store_doc_each_fresh_async(struct store *st, const char *kind, store_pairs_fn *done, void *ctx);
int store_doc_get_fresh_async(struct store *st, const char *kind, const char *id,
                              store_doc_fn *done, void *ctx);

/* Revisions and app settings */
/* store_droplet_delete through the same writer, in turn with the others: queued, returning at
 * once, done(ctx, rc) getting what store_droplet_delete would have returned (-ENOENT: no such
 * droplet). store_droplet_get no longer finds it from the call on; one refused by the server
 * is read from it again. On SQLite, made during the call. */
int store_droplet_delete_async(struct store *st, const char *guid, store_done_fn *done, void *ctx);
/* store_app_find without its fresh read on the caller's thread. The copy's answer (and
 * SQLite's) is returned at once, as store_app_find's, and done is not called. When the copy
 * (PostgreSQL) holds no such app, the read from the database that store_app_find would make
 * is queued through the writer, in turn with the writes, and -EINPROGRESS returned:
 * done(ctx, rc, app) is called from store_async_reap with store_app_find's answer (app the
 * callback's; NULL unless rc is 0), and an app found goes into the copy. */
int store_app_find_or_read(struct store *st, const char *space_guid, const char *name_or_guid,
                           struct store_app **out, store_app_found_fn *done, void *ctx);

#endif
