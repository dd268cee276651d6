/* store_backend: the seam between store.c (what every backend shares: store_open choosing a
 * backend by location, the *_free and *_dup functions, the scaling default) and each backend.
 * Only store.c and the backends include this header.
 *
 * A backend defines its own `struct store_backend` (opaque to store.c), an open function
 * and a `struct store_ops` whose calls have the meaning of the public call of the same name
 * in store.h, with the backend object in place of the store. */
#ifndef SKIFF_STORE_BACKEND_H
#define SKIFF_STORE_BACKEND_H

#include "store/store.h"

struct store_backend;

/* The columns of a process's request scaling policy after min_instances, in the order the
 * backends read and write them (store_process's max_instances and on). */
#define STORE_PROCESS_POLICY_COLUMNS                                                               \
    ", max_instances, target_concurrency, target_rps, window_ms, scale_down_delay_ms"
/* store_process_checks, after the function column; log_rate_limit -1: unlimited */
#define STORE_PROCESS_CHECK_COLUMNS                                                                \
    ", health_check_interval, health_check_invocation_timeout, readiness_type,"                    \
    " readiness_endpoint, readiness_interval, readiness_invocation_timeout, log_rate_limit"

/* A write queued by store.c for a backend's writer (the store_*_async calls, and the
 * synchronous document writes on a backend that has one). */
enum store_write_op {
    STORE_WRITE_DOC_PUT,
    STORE_WRITE_DOC_DELETE,
    STORE_WRITE_DOC_CREATE,
    STORE_WRITE_DOC_UPDATE,
    STORE_WRITE_AUDIT,
    STORE_READ_BLOB_REFS,     /* a read, in turn with the writes: store_blob_refs_async */
    STORE_WRITE_APP_CREATE,   /* store_app_create(_async): app */
    STORE_WRITE_APP_UPDATE,   /* store_app_update(_async): app, at the version read */
    STORE_WRITE_APP_DELETE,   /* store_app_delete(_async): id, the app's guid */
    STORE_WRITE_ROUTE_ADD,    /* store_route_add(_async): route */
    STORE_WRITE_ROUTE_DELETE, /* store_route_delete(_async): route's host and path */
    /* store_route_update(_async) and store_route_set_https_only: route's host and path, its
     * balance and protocol (NULL: as they are), https_only (-1: as it is) */
    STORE_WRITE_ROUTE_UPDATE,
    STORE_WRITE_TASK_PUT,    /* store_task_put(_async): task */
    STORE_WRITE_TASK_DELETE, /* store_task_delete(_async): id, the task's guid */
    STORE_WRITE_PACKAGE_ADD, /* store_package_add(_async): pkg */
    STORE_WRITE_DROPLET_ADD, /* store_droplet_add(_async): drop */
    /* store_app_prune_artifacts(_async): id, the app's guid; kind, the package kept; json,
     * the droplet kept (NULL: none pruned); refs, the paths of the rows deleted */
    STORE_WRITE_PRUNE,
    STORE_READ_PACKAGE,   /* store_package_get_async: id, the package's guid; pkg, what it read */
    STORE_READ_APP_FRESH, /* store_app_get_fresh_async: id, the app's guid; app, what it read */
    STORE_WRITE_DROPLET_DELETE, /* store_droplet_delete(_async): id, the droplet's guid */
    /* store_app_find_or_read's fresh read, in turn with the writes: kind "SPACE/NAME", id the
     * bare name or guid; app what was read (NULL: none) */
    STORE_READ_APP,
    /* Domains, certificates, mappings, audit: store_domain_add(_async) (id: the name, org_guid),
     * store_domain_delete(_async) (id), store_domain_cert_set(_async) (id: the domain,
     * cert_pem, key_pem), store_domain_cert_delete(_async) (id); and two reads in turn with the
     * writes: store_domain_cert_chains_async (chains read into refs and chains) and
     * store_audit_list_async (audit: the filters, events read into events). */
    STORE_WRITE_DOMAIN_ADD,
    STORE_WRITE_DOMAIN_DELETE,
    STORE_WRITE_CERT_SET,
    STORE_WRITE_CERT_DELETE,
    STORE_READ_CERT_CHAINS,
    STORE_READ_AUDIT,
    STORE_WRITE_DOC_REPLACE, /* store_doc_replace(_async): kind, id, expected, json */
    STORE_READ_DOC_FRESH,    /* store_doc_get_fresh_async: kind, id; json gets what was read */
    STORE_READ_DOC_EACH,     /* store_doc_each_fresh_async: kind; ids into refs, bodies chains */
    /* store_domain_cert_pairs_async: domains into refs, chains into chains, keys into keys */
    STORE_READ_CERT_PAIRS,
    /* every route, read again by store_pg's copy on another writer's news: into routes */
    STORE_READ_ROUTES,
};
struct store_write {
    enum store_write_op op;
    char *kind, *id, *json;      /* documents */
    char *expected;              /* STORE_WRITE_DOC_REPLACE: the body it replaces */
    /* STORE_WRITE_DOC_CREATE and _REPLACE: whether reads see it as made while it is queued
     * (false when what this store knows says it will be refused) */
    bool shown;
    /* a read the copy asked for itself (store_pg): STORE_READ_DOC_EACH, its rows replace the
     * kind's; STORE_READ_APP_FRESH, an app another writer changed, its news counted once read */
    bool refresh;
    store_doc_fn *done_doc;      /* STORE_READ_DOC_FRESH */
    struct store_audit_event ev; /* STORE_WRITE_AUDIT: a copy */
    store_done_fn *done;
    store_refs_fn *done_refs; /* STORE_READ_BLOB_REFS */
    char **refs;              /* what it read, the callback's */
    struct store_app *app;    /* STORE_WRITE_APP_*: the write's own copy, as written */
    struct store_route route; /* STORE_WRITE_ROUTE_*: the write's own copy */
    struct store_route *routes; /* STORE_READ_ROUTES: what it read (n_routes of them) */
    size_t n_routes;
    int https_only;           /* STORE_WRITE_ROUTE_UPDATE */
    struct store_task task;   /* STORE_WRITE_TASK_PUT: the write's own copy */
    struct store_package pkg; /* STORE_WRITE_PACKAGE_ADD, STORE_READ_PACKAGE: the write's own */
    struct store_droplet drop;      /* STORE_WRITE_DROPLET_ADD: the write's own copy */
    store_package_fn *done_package; /* STORE_READ_PACKAGE */
    store_app_fn *done_app;         /* STORE_READ_APP_FRESH, STORE_READ_APP */
    /* Domains, certificates, mappings, audit (the ops above) */
    char *org_guid;           /* STORE_WRITE_DOMAIN_ADD: NULL for a shared domain */
    char *cert_pem, *key_pem; /* STORE_WRITE_CERT_SET (the key wiped when freed) */
    /* STORE_READ_CERT_CHAINS: the chains of the domains in refs; STORE_READ_DOC_EACH: the
     * bodies of the documents whose ids are in refs (n_pairs of each) */
    char **chains;
    char **keys; /* STORE_READ_CERT_PAIRS: the domains' keys (wiped when freed) */
    size_t n_pairs;
    uint64_t asked_at; /* STORE_READ_CERT_CHAINS (store_pg): its copy's generation when queued */
    store_pairs_fn *done_pairs;
    store_cert_pairs_fn *done_cert_pairs; /* STORE_READ_CERT_PAIRS */
    struct store_audit_query {
        char *space_guid, *org_guid, *target;
        int64_t before_id;
        size_t limit;
    } audit;                          /* STORE_READ_AUDIT: the filters */
    struct store_audit_event *events; /* STORE_READ_AUDIT: what it read */
    size_t n_events;
    store_audit_fn *done_audit;
    void *ctx;
    int rc;
    bool sync;     /* a caller waits for it: it frees it */
    bool finished; /* rc is set */
    struct store_write *next;
};
struct store_write *store_write_new(enum store_write_op op, const char *kind, const char *id,
                                    const char *json, store_done_fn *done, void *ctx);
/* An audit event's write, with a copy of ev. */
struct store_write *store_write_audit(const struct store_audit_event *ev, store_done_fn *done,
                                      void *ctx);
/* The writes of routes (route is copied: for a delete or an update only its host and path
 * matter) and of tasks, with their copies. */
struct store_write *store_write_route(enum store_write_op op, const struct store_route *route,
                                      store_done_fn *done, void *ctx);
struct store_write *store_write_task(const struct store_task *task, store_done_fn *done, void *ctx);
/* The writes of packages and droplets, with their copies. */
struct store_write *store_write_package(const struct store_package *pkg, store_done_fn *done,
                                        void *ctx);
struct store_write *store_write_droplet(const struct store_droplet *drop, store_done_fn *done,
                                        void *ctx);
/* A prune of an app's packages and droplets (done gets the paths of the rows deleted). */
struct store_write *store_write_prune(const char *app_guid, const char *keep_package,
                                      const char *keep_droplet, store_refs_fn *done, void *ctx);
void store_write_free(struct store_write *w);
/* A document's replace or fresh read, with their copies. */
struct store_write *store_write_doc_replace(const char *kind, const char *id, const char *expected,
                                            const char *json, store_done_fn *done, void *ctx);
struct store_write *store_write_doc_fresh(const char *kind, const char *id, store_doc_fn *done,
                                          void *ctx);
/* A STORE_READ_DOC_EACH from its start (again, after a try on a lost connection): nothing
 * read, an empty list if nothing is; store_write_pair_add (a store_doc_each callback) adds a
 * document read to it (w). */
void store_write_pairs_reset(struct store_write *w);
int store_write_pair_add(void *w, const char *id, const char *json);
/* Calls w's callback with its outcome (a read's list passed on). */
void store_write_report(struct store_write *w);
/* A domain's or certificate's write (STORE_WRITE_DOMAIN_*, STORE_WRITE_CERT_*), with copies. */
struct store_write *store_write_domain(enum store_write_op op, const char *domain,
                                       const char *org_guid, const char *cert_pem,
                                       const char *key_pem, store_done_fn *done, void *ctx);
/* "document KIND/ID", "audit event TYPE", for messages */
void store_write_name(const struct store_write *w, char *buf, size_t size);

struct store_ops {
    const char *name; /* "sqlite" */
    void (*close)(struct store_backend *b);
    int (*schema_version)(struct store_backend *b);
    uint64_t (*change_count)(struct store_backend *b);
    int (*feed_fd)(struct store_backend *b);
    size_t (*feed_take)(struct store_backend *b, void (*fn)(void *ctx, const char *app_guid),
                        void *ctx);
    /* NULL on a backend without a feed */
    void (*feed_watch)(struct store_backend *b, void (*fn)(void *ctx, int fd, bool writable),
                       void *ctx);
    int64_t (*feed_retry_ms)(struct store_backend *b);
    uint64_t (*doc_news)(struct store_backend *b);
    uint64_t (*doc_news_kind)(struct store_backend *b, const char *family);
    uint64_t (*routes_news)(struct store_backend *b); /* NULL: none */

    int (*app_create)(struct store_backend *b, struct store_app *app);
    int (*app_update)(struct store_backend *b, struct store_app *app);
    int (*app_get)(struct store_backend *b, const char *ref, struct store_app **out);
    /* NULL where app_get reads the database itself */
    int (*app_get_fresh)(struct store_backend *b, const char *ref, struct store_app **out);
    /* whether ref names an app whose deletion is queued (NULL where none ever is) */
    bool (*app_deleting)(struct store_backend *b, const char *ref);
    int (*app_list_in)(struct store_backend *b, const char *space_guid, struct store_app ***out,
                       size_t *n);
    int (*app_delete)(struct store_backend *b, const char *guid);

    int (*route_add)(struct store_backend *b, const struct store_route *route);
    int (*route_delete)(struct store_backend *b, const char *host, const char *path);
    int (*route_update)(struct store_backend *b, const char *host, const char *path,
                        const char *balance, const char *protocol);
    int (*route_set_https_only)(struct store_backend *b, const char *host, const char *path,
                                bool on);
    int (*route_list)(struct store_backend *b, const char *app_guid, struct store_route **out,
                      size_t *n);
    int (*domain_add)(struct store_backend *b, const char *name, const char *org_guid);
    int (*domain_list)(struct store_backend *b, char ***names, bool **shared, char ***org_guids);
    int (*domain_delete)(struct store_backend *b, const char *name);
    int (*domain_cert_set)(struct store_backend *b, const char *domain, const char *cert_pem,
                           const char *key_pem);
    int (*domain_cert_get)(struct store_backend *b, const char *domain, char **cert_pem,
                           char **key_pem);
    int (*domain_cert_list)(struct store_backend *b, char ***domains);
    int (*domain_cert_delete)(struct store_backend *b, const char *domain);

    int (*package_add)(struct store_backend *b, const struct store_package *pkg);
    int (*package_get)(struct store_backend *b, const char *guid, struct store_package **out);
    int (*droplet_add)(struct store_backend *b, const struct store_droplet *drop);
    int (*droplet_get)(struct store_backend *b, const char *guid, struct store_droplet **out);
    int (*droplet_delete)(struct store_backend *b, const char *guid);
    int (*app_prune_artifacts)(struct store_backend *b, const char *app_guid,
                               const char *keep_package, const char *keep_droplet, char ***paths);
    int (*blob_refs)(struct store_backend *b, char ***digests);

    int (*audit_add)(struct store_backend *b, const struct store_audit_event *ev);
    int (*audit_list)(struct store_backend *b, const char *space_guid, const char *org_guid,
                      const char *target, int64_t before_id, size_t limit,
                      struct store_audit_event **out, size_t *n);

    int (*task_put)(struct store_backend *b, const struct store_task *task);
    int (*task_list)(struct store_backend *b, const char *app_guid, struct store_task **out,
                     size_t *n);
    int (*task_delete)(struct store_backend *b, const char *guid);
    int (*doc_put)(struct store_backend *b, const char *kind, const char *id, const char *json);
    int (*doc_create)(struct store_backend *b, const char *kind, const char *id, const char *json);
    int (*doc_get)(struct store_backend *b, const char *kind, const char *id, char **json);
    /* NULL where doc_get reads the database itself */
    int (*doc_get_fresh)(struct store_backend *b, const char *kind, const char *id, char **json);
    int (*doc_delete)(struct store_backend *b, const char *kind, const char *id);
    int (*doc_each)(struct store_backend *b, const char *kind,
                    int (*fn)(void *ctx, const char *id, const char *json), void *ctx);
    /* NULL where doc_each reads the database itself */
    int (*doc_hold)(struct store_backend *b, const char *kind); /* NULL: nothing to hold */
    int (*doc_each_fresh)(struct store_backend *b, const char *kind,
                          int (*fn)(void *ctx, const char *id, const char *json), void *ctx);
    int (*doc_update)(struct store_backend *b, const char *kind, const char *id, const char *json);
    int (*doc_replace)(struct store_backend *b, const char *kind, const char *id,
                       const char *expected, const char *json);
    /* NULL on a backend that writes during the call (store.c then does) */
    int (*submit)(struct store_backend *b, struct store_write *w); /* takes w */
    int (*async_fd)(struct store_backend *b);
    size_t (*async_reap)(struct store_backend *b);
    size_t (*async_queued)(struct store_backend *b);
    void (*async_drain)(struct store_backend *b);
};

/* The PostgreSQL backend (store_pg.c): url is a libpq connection URI. */
extern const struct store_ops store_pg_ops;
int store_pg_open(const char *url, char *err, size_t errsize, struct store_backend **out);

/* A connection to url (a libpq URI or conninfo string) that notices a server it lost without
 * a word (a host gone, a network cut): TCP keepalives (probes after 5 s idle, each 1 s, 3
 * unanswered), a bound on data the server does not acknowledge (tcp_user_timeout, 8 s) and
 * on a blocking connect (connect_timeout, 10 s), and the server asked to probe this end the
 * same way (its tcp_keepalives_*, through options), each unless url sets it; the server's
 * notices go to the log (debug) rather than raw to stderr. start: begun
 * without waiting (PQconnectStartParams), else opened (PQconnectdbParams). app_name, when not
 * NULL, is its application_name, over url's. NULL only when out of memory. */
struct pg_conn *store_pg_connect(const char *url, bool start, const char *app_name);

/* Splits an app reference "SPACE_GUID/NAME" into space and the returned name; a reference
 * without a space (a guid, or a name) gets the default space and is returned whole. */
const char *store_ref_split(const char *ref, char space[37]);
/* The location with any password replaced by "***" (in "user:PASSWORD@" and in a
 * "password=" parameter), for messages and logs; the caller frees it. */
char *store_location_masked(const char *location);

/* The embedded SQLite backend: path is a file name (":memory:" for a private one). */
extern const struct store_ops store_sqlite_ops;
int store_sqlite_open(const char *path, char *err, size_t errsize, struct store_backend **out);

#endif
