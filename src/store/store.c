/* store: what every backend shares; the calls themselves go to the backend's store_ops. */
#include "store/store.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <openssl/crypto.h>
#include <string.h>

#include "common/util.h"
#include "store/store_backend.h"

struct store {
    const struct store_ops *ops;
    struct store_backend *backend;
};

const char *store_ref_split(const char *ref, char space[37])
{
    const char *slash = strchr(ref, '/');
    if (slash && (size_t)(slash - ref) < 37) {
        memcpy(space, ref, (size_t)(slash - ref));
        space[slash - ref] = '\0';
        return slash + 1;
    }
    snprintf(space, 37, "%s", STORE_DEFAULT_SPACE_GUID);
    return ref;
}

char *store_location_masked(const char *location)
{
    char *m = xstrdup(location);
    char *scheme = strstr(m, "://");
    if (scheme) {
        char *auth = scheme + 3;
        size_t authlen = strcspn(auth, "/?#");
        char *at = memrchr(auth, '@', authlen);
        char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        if (colon) {
            char *rest = xasprintf("%.*s***%s", (int)(colon + 1 - m), m, at);
            free(m);
            m = rest;
        }
    }
    char *pw = strstr(m, "password=");
    if (pw) {
        char *value = pw + strlen("password=");
        char *rest = xasprintf("%.*s***%s", (int)(value - m), m, value + strcspn(value, "&"));
        free(m);
        m = rest;
    }
    return m;
}

bool store_location_is_postgres(const char *location)
{
    return str_has_prefix(location, "postgres://") || str_has_prefix(location, "postgresql://");
}

/* The location names the backend: "sqlite:PATH" or a plain path is the embedded SQLite;
 * "postgres://..." or "postgresql://..." is PostgreSQL; any other URL is refused. */
int store_open(const char *location, char *err, size_t errsize, struct store **out)
{
    const struct store_ops *ops = &store_sqlite_ops;
    int (*open_backend)(const char *, char *, size_t, struct store_backend **) = store_sqlite_open;
    const char *rest = location;
    if (str_has_prefix(location, "sqlite:")) {
        rest = location + strlen("sqlite:");
    } else if (store_location_is_postgres(location)) {
        ops = &store_pg_ops;
        open_backend = store_pg_open;
    } else if (strstr(location, "://")) {
        char *masked = store_location_masked(location);
        snprintf(err, errsize,
                 "unsupported store \"%s\": use sqlite:PATH or postgres://[USER@]HOST/DB", masked);
        free(masked);
        return -EPROTONOSUPPORT;
    }
    struct store_backend *b = NULL;
    int rc = open_backend(rest, err, errsize, &b);
    if (rc < 0)
        return rc;
    struct store *st = xcalloc(1, sizeof *st);
    st->ops = ops;
    st->backend = b;
    *out = st;
    return 0;
}

void store_close(struct store *st)
{
    if (!st)
        return;
    st->ops->close(st->backend);
    free(st);
}

int store_app_list(struct store *st, struct store_app ***out, size_t *n)
{
    return st->ops->app_list_in(st->backend, NULL, out, n);
}

int store_schema_version(struct store *st)
{
    return st->ops->schema_version(st->backend);
}

uint64_t store_change_count(struct store *st)
{
    return st->ops->change_count(st->backend);
}

int store_feed_fd(struct store *st)
{
    return st->ops->feed_fd(st->backend);
}

void store_feed_watch(struct store *st, void (*fn)(void *ctx, int fd, bool writable), void *ctx)
{
    if (st->ops->feed_watch)
        st->ops->feed_watch(st->backend, fn, ctx);
}

int64_t store_feed_retry_ms(struct store *st)
{
    return st->ops->feed_retry_ms ? st->ops->feed_retry_ms(st->backend) : -1;
}

size_t store_feed_take(struct store *st, void (*fn)(void *ctx, const char *app_guid), void *ctx)
{
    return st->ops->feed_take(st->backend, fn, ctx);
}

uint64_t store_doc_news(struct store *st)
{
    return st->ops->doc_news ? st->ops->doc_news(st->backend) : 0;
}

uint64_t store_doc_news_kind(struct store *st, const char *family)
{
    return st->ops->doc_news_kind ? st->ops->doc_news_kind(st->backend, family) : 0;
}

uint64_t store_routes_news(struct store *st)
{
    return st->ops->routes_news ? st->ops->routes_news(st->backend) : 0;
}

int store_app_create(struct store *st, struct store_app *app)
{
    int rc = st->ops->app_create(st->backend, app);
    if (rc == 0)
        app->version = 1;
    return rc;
}

int store_app_update(struct store *st, struct store_app *app)
{
    if (app->version <= 0)
        return -EINVAL;
    return st->ops->app_update(st->backend, app);
}

int store_app_modify(struct store *st, const char *guid,
                     int (*change)(void *ctx, struct store_app *app), void *ctx,
                     struct store_app **out)
{
    int rc = -ESTALE;
    for (int try = 0; try < STORE_MODIFY_TRIES && rc == -ESTALE; try++) {
        struct store_app *app = NULL;
        /* a conflict: another writer changed it, and the copy may not know yet */
        rc = try ? store_app_get_fresh(st, guid, &app) : store_app_get(st, guid, &app);
        if (rc == 0 && strcmp(app->guid, guid))
            rc = -ENOENT; /* a name that happens to look like the guid asked for */
        if (rc == 0)
            rc = change(ctx, app);
        if (rc == 0)
            rc = store_app_update(st, app);
        if (rc >= 0 && out) {
            *out = app;
            app = NULL;
        }
        store_app_free(app);
    }
    return rc > 0 ? 0 : rc;
}

int store_app_get(struct store *st, const char *ref, struct store_app **out)
{
    return st->ops->app_get(st->backend, ref, out);
}

int store_app_get_fresh(struct store *st, const char *ref, struct store_app **out)
{
    if (st->ops->app_get_fresh)
        return st->ops->app_get_fresh(st->backend, ref, out);
    return st->ops->app_get(st->backend, ref, out);
}

/* The app by "SPACE/NAME", else by the bare name or guid (space not checked yet). */
static int store__app_lookup(struct store *st, const char *ref, const char *name_or_guid,
                             bool fresh, struct store_app **app)
{
    int rc = fresh ? store_app_get_fresh(st, ref, app) : store_app_get(st, ref, app);
    if (rc == -ENOENT)
        rc = fresh ? store_app_get_fresh(st, name_or_guid, app)
                   : store_app_get(st, name_or_guid, app);
    return rc;
}

/* A lookup's answer in space_guid: a guid of another space's app, or a name of the default
 * space's, is not found. Takes app. */
static int store__app_in_space(const char *space_guid, int rc, struct store_app *app,
                               struct store_app **out)
{
    if (rc == 0 && strcmp(app->space_guid, space_guid))
        rc = -ENOENT;
    if (rc == 0)
        *out = app;
    else
        store_app_free(app);
    return rc;
}

int store_app_find(struct store *st, const char *space_guid, const char *name_or_guid,
                   struct store_app **out)
{
    char *ref = xasprintf("%s/%s", space_guid, name_or_guid);
    struct store_app *app = NULL;
    int rc = store__app_lookup(st, ref, name_or_guid, false, &app);
    /* not in the copy: made through another skiffd a moment ago, before the feed said so? */
    if (rc == -ENOENT && st->ops->app_get_fresh)
        rc = store__app_lookup(st, ref, name_or_guid, true, &app);
    free(ref);
    return store__app_in_space(space_guid, rc, app, out);
}

int store_app_find_or_read(struct store *st, const char *space_guid, const char *name_or_guid,
                           struct store_app **out, store_app_found_fn *done, void *ctx)
{
    char *ref = xasprintf("%s/%s", space_guid, name_or_guid);
    struct store_app *app = NULL;
    int rc = store__app_lookup(st, ref, name_or_guid, false, &app);
    if (rc != -ENOENT || !st->ops->app_get_fresh || !st->ops->submit) {
        free(ref);
        return store__app_in_space(space_guid, rc, app, out);
    }
    /* gone without asking the server, as store_app_get_fresh answers */
    if (st->ops->app_deleting && (st->ops->app_deleting(st->backend, ref) ||
                                  st->ops->app_deleting(st->backend, name_or_guid))) {
        free(ref);
        return -ENOENT;
    }
    struct store_write *w = store_write_new(STORE_READ_APP, ref, name_or_guid, NULL, NULL, ctx);
    w->done_app = done;
    free(ref);
    rc = st->ops->submit(st->backend, w);
    return rc < 0 ? rc : -EINPROGRESS;
}

int store_app_list_in(struct store *st, const char *space_guid, struct store_app ***out, size_t *n)
{
    return st->ops->app_list_in(st->backend, space_guid, out, n);
}

int store_app_delete(struct store *st, const char *guid)
{
    return st->ops->app_delete(st->backend, guid);
}

int store_route_add(struct store *st, const struct store_route *route)
{
    return st->ops->route_add(st->backend, route);
}

int store_route_delete(struct store *st, const char *host, const char *path)
{
    return st->ops->route_delete(st->backend, host, path);
}

int store_route_update(struct store *st, const char *host, const char *path, const char *balance,
                       const char *protocol)
{
    return st->ops->route_update(st->backend, host, path, balance, protocol);
}

int store_route_set_https_only(struct store *st, const char *host, const char *path, bool on)
{
    return st->ops->route_set_https_only(st->backend, host, path, on);
}

int store_route_list(struct store *st, const char *app_guid, struct store_route **out, size_t *n)
{
    return st->ops->route_list(st->backend, app_guid, out, n);
}

int store_domain_add(struct store *st, const char *name, const char *org_guid)
{
    return st->ops->domain_add(st->backend, name, org_guid);
}

int store_domain_list(struct store *st, char ***names, bool **shared, char ***org_guids)
{
    return st->ops->domain_list(st->backend, names, shared, org_guids);
}

int store_domain_delete(struct store *st, const char *name)
{
    return st->ops->domain_delete(st->backend, name);
}

int store_domain_cert_set(struct store *st, const char *domain, const char *cert_pem,
                          const char *key_pem)
{
    return st->ops->domain_cert_set(st->backend, domain, cert_pem, key_pem);
}

int store_domain_cert_get(struct store *st, const char *domain, char **cert_pem, char **key_pem)
{
    return st->ops->domain_cert_get(st->backend, domain, cert_pem, key_pem);
}

int store_domain_cert_list(struct store *st, char ***domains)
{
    return st->ops->domain_cert_list(st->backend, domains);
}

int store_domain_cert_delete(struct store *st, const char *domain)
{
    return st->ops->domain_cert_delete(st->backend, domain);
}

int store_package_add(struct store *st, const struct store_package *pkg)
{
    return st->ops->package_add(st->backend, pkg);
}

int store_package_get(struct store *st, const char *guid, struct store_package **out)
{
    return st->ops->package_get(st->backend, guid, out);
}

int store_droplet_add(struct store *st, const struct store_droplet *drop)
{
    return st->ops->droplet_add(st->backend, drop);
}

int store_droplet_get(struct store *st, const char *guid, struct store_droplet **out)
{
    return st->ops->droplet_get(st->backend, guid, out);
}

int store_droplet_delete(struct store *st, const char *guid)
{
    return st->ops->droplet_delete(st->backend, guid);
}

int store_app_prune_artifacts(struct store *st, const char *app_guid, const char *keep_package,
                              const char *keep_droplet, char ***paths)
{
    return st->ops->app_prune_artifacts(st->backend, app_guid, keep_package, keep_droplet, paths);
}

/* The backends give each row's digests as stored (a droplet's further blobs space-separated):
 * one digest an entry here. */
int store_blob_refs(struct store *st, char ***digests)
{
    char **rows = NULL;
    int rc = st->ops->blob_refs(st->backend, &rows);
    if (rc < 0)
        return rc;
    size_t n = 0;
    char **v = xcalloc(1, sizeof *v);
    for (char **r = rows; *r; r++)
        for (char *save = NULL, *d = strtok_r(*r, " ", &save); d; d = strtok_r(NULL, " ", &save)) {
            v = xrealloc(v, (n + 2) * sizeof *v);
            v[n++] = xstrdup(d);
            v[n] = NULL;
        }
    strv_free(rows);
    *digests = v;
    return 0;
}

int store_audit_add(struct store *st, const struct store_audit_event *ev)
{
    return st->ops->audit_add(st->backend, ev);
}

int store_audit_list(struct store *st, const char *space_guid, const char *org_guid,
                     const char *target, int64_t before_id, size_t limit,
                     struct store_audit_event **out, size_t *n)
{
    return st->ops->audit_list(st->backend, space_guid, org_guid, target, before_id, limit, out, n);
}

int store_task_put(struct store *st, const struct store_task *task)
{
    return st->ops->task_put(st->backend, task);
}

int store_task_list(struct store *st, const char *app_guid, struct store_task **out, size_t *n)
{
    return st->ops->task_list(st->backend, app_guid, out, n);
}

int store_task_delete(struct store *st, const char *guid)
{
    return st->ops->task_delete(st->backend, guid);
}

void store_task_list_free(struct store_task *list, size_t n)
{
    for (size_t i = 0; list && i < n; i++) {
        free(list[i].name);
        free(list[i].command);
        free(list[i].state);
        free(list[i].failure_reason);
    }
    free(list);
}

int store_doc_put(struct store *st, const char *kind, const char *id, const char *json)
{
    return st->ops->doc_put(st->backend, kind, id, json);
}

int store_doc_create(struct store *st, const char *kind, const char *id, const char *json)
{
    return st->ops->doc_create(st->backend, kind, id, json);
}

int store_doc_get(struct store *st, const char *kind, const char *id, char **json)
{
    return st->ops->doc_get(st->backend, kind, id, json);
}

int store_doc_get_fresh(struct store *st, const char *kind, const char *id, char **json)
{
    if (st->ops->doc_get_fresh)
        return st->ops->doc_get_fresh(st->backend, kind, id, json);
    return st->ops->doc_get(st->backend, kind, id, json);
}

int store_doc_delete(struct store *st, const char *kind, const char *id)
{
    return st->ops->doc_delete(st->backend, kind, id);
}

int store_doc_each(struct store *st, const char *kind,
                   int (*fn)(void *ctx, const char *id, const char *json), void *ctx)
{
    return st->ops->doc_each(st->backend, kind, fn, ctx);
}

int store_doc_hold(struct store *st, const char *kind)
{
    return st->ops->doc_hold ? st->ops->doc_hold(st->backend, kind) : 0;
}

int store_doc_each_fresh(struct store *st, const char *kind,
                         int (*fn)(void *ctx, const char *id, const char *json), void *ctx)
{
    if (st->ops->doc_each_fresh)
        return st->ops->doc_each_fresh(st->backend, kind, fn, ctx);
    return st->ops->doc_each(st->backend, kind, fn, ctx);
}

/* ---- what callers own ---------------------------------------------------------------- */

void store_app_free(struct store_app *app)
{
    if (!app)
        return;
    free(app->name);
    free(app->state);
    free(app->kind);
    free(app->command);
    free(app->buildpacks_json);
    free(app->health_check_type);
    free(app->health_check_http_endpoint);
    free(app->function_json);
    free(app->package_guid);
    free(app->droplet_guid);
    free(app->detected_buildpack);
    free(app->sidecars_json);
    for (size_t i = 0; i < app->n_processes; i++) {
        free(app->processes[i].type);
        free(app->processes[i].command);
        free(app->processes[i].function_json);
        free(app->processes[i].checks.readiness_type);
        free(app->processes[i].checks.readiness_endpoint);
    }
    free(app->processes);
    for (size_t i = 0; i < app->n_env; i++) {
        free(app->env[i].name);
        free(app->env[i].value);
    }
    free(app->env);
    free(app);
}

void store_app_list_free(struct store_app **apps, size_t n)
{
    for (size_t i = 0; i < n; i++)
        store_app_free(apps[i]);
    free(apps);
}

int store_process_default_min(const char *app_kind, const char *type)
{
    bool function = app_kind && !strcmp(app_kind, "function");
    return function || strcmp(type, "web") ? 0 : STORE_SCALE_MANUAL;
}

void store_process_default_policy(const char *app_kind, struct store_process *p)
{
    p->min_instances = store_process_default_min(app_kind, p->type);
    bool function = (app_kind && !strcmp(app_kind, "function")) || p->function_json;
    p->max_instances = function ? STORE_FUNCTION_DEFAULT_MAX_INSTANCES : 0;
    p->target_concurrency = function ? STORE_DEFAULT_TARGET_CONCURRENCY : 0;
    p->target_rps = p->window_ms = p->scale_down_delay_ms = 0;
}

struct store_process *store_app_process(const struct store_app *app, const char *type)
{
    for (size_t i = 0; i < app->n_processes; i++)
        if (!strcmp(app->processes[i].type, type))
            return &app->processes[i];
    return NULL;
}

int store_app_sidecars(const struct store_app *app, const char *type, struct store_sidecar **out,
                       size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!app->sidecars_json)
        return 0;
    json_t *all = json_loads(app->sidecars_json, 0, NULL);
    if (!json_is_array(all)) {
        json_decref(all);
        return -EINVAL;
    }
    struct store_sidecar *list = xcalloc(json_array_size(all) + 1, sizeof *list);
    size_t count = 0, i;
    json_t *sc;
    int rc = 0;
    json_array_foreach(all, i, sc)
    {
        const char *name = json_string_value(json_object_get(sc, "name"));
        const char *command = json_string_value(json_object_get(sc, "command"));
        json_t *types = json_object_get(sc, "process_types");
        if (!name || !command || !json_is_array(types)) {
            rc = -EINVAL;
            break;
        }
        size_t k;
        json_t *t;
        bool here = false;
        json_array_foreach(types, k, t) here |=
            json_is_string(t) && !strcmp(json_string_value(t), type);
        if (!here)
            continue;
        list[count++] = (struct store_sidecar){
            .name = xstrdup(name),
            .command = xstrdup(command),
            .memory_mb = (int)json_integer_value(json_object_get(sc, "memory_mb"))};
    }
    json_decref(all);
    if (rc < 0 || !count) {
        store_sidecars_free(list, count);
        return rc;
    }
    *out = list;
    *n = count;
    return 0;
}

void store_sidecars_free(struct store_sidecar *sidecars, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(sidecars[i].name);
        free(sidecars[i].command);
    }
    free(sidecars);
}

static char *store__dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

struct store_app *store_app_dup(const struct store_app *app)
{
    struct store_app *c = xcalloc(1, sizeof *c);
    *c = *app;
    c->name = store__dup_or_null(app->name);
    c->state = store__dup_or_null(app->state);
    c->kind = store__dup_or_null(app->kind);
    c->command = store__dup_or_null(app->command);
    c->buildpacks_json = store__dup_or_null(app->buildpacks_json);
    c->health_check_type = store__dup_or_null(app->health_check_type);
    c->health_check_http_endpoint = store__dup_or_null(app->health_check_http_endpoint);
    c->function_json = store__dup_or_null(app->function_json);
    c->package_guid = store__dup_or_null(app->package_guid);
    c->droplet_guid = store__dup_or_null(app->droplet_guid);
    c->detected_buildpack = store__dup_or_null(app->detected_buildpack);
    c->sidecars_json = store__dup_or_null(app->sidecars_json);
    c->processes = xcalloc(app->n_processes ? app->n_processes : 1, sizeof *c->processes);
    for (size_t i = 0; i < app->n_processes; i++) {
        c->processes[i] = app->processes[i];
        c->processes[i].type = store__dup_or_null(app->processes[i].type);
        c->processes[i].command = store__dup_or_null(app->processes[i].command);
        c->processes[i].function_json = store__dup_or_null(app->processes[i].function_json);
        c->processes[i].checks.readiness_type =
            store__dup_or_null(app->processes[i].checks.readiness_type);
        c->processes[i].checks.readiness_endpoint =
            store__dup_or_null(app->processes[i].checks.readiness_endpoint);
    }
    c->env = xcalloc(app->n_env ? app->n_env : 1, sizeof *c->env);
    for (size_t i = 0; i < app->n_env; i++) {
        c->env[i].name = store__dup_or_null(app->env[i].name);
        c->env[i].value = store__dup_or_null(app->env[i].value);
    }
    return c;
}

void store_route_list_free(struct store_route *routes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(routes[i].host);
        free(routes[i].path);
        free(routes[i].app_guid);
        free(routes[i].domain);
        free(routes[i].balance);
        free(routes[i].protocol);
    }
    free(routes);
}

void store_strv_free_wiped(char **v)
{
    for (char **p = v; p && *p; p++)
        OPENSSL_cleanse(*p, strlen(*p));
    strv_free(v);
}

void store_package_free(struct store_package *pkg)
{
    if (!pkg)
        return;
    free(pkg->app_guid);
    free(pkg->path);
    free(pkg->digest);
    free(pkg);
}

void store_droplet_free(struct store_droplet *drop)
{
    if (!drop)
        return;
    free(drop->app_guid);
    free(drop->path);
    free(drop->digest);
    free(drop->blobs);
    free(drop->buildpack);
    free(drop->process_types_json);
    free(drop);
}

void store_audit_list_free(struct store_audit_event *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(list[i].type);
        free(list[i].actor);
        free(list[i].actor_guid);
        free(list[i].token_guid);
        free(list[i].target);
        free(list[i].space_guid);
        free(list[i].org_guid);
        free(list[i].detail);
    }
    free(list);
}

int store_doc_update(struct store *st, const char *kind, const char *id, const char *json)
{
    return st->ops->doc_update(st->backend, kind, id, json);
}

int store_doc_replace(struct store *st, const char *kind, const char *id, const char *expected,
                      const char *json)
{
    return st->ops->doc_replace(st->backend, kind, id, expected, json);
}

/* ---- writes off the caller's thread ------------------------------------------------------- */

int64_t store_drain_ms = 5000;
size_t store_queue_max = STORE_QUEUE_MAX_DEFAULT;
bool store_queue_full_waits;

struct store_write *store_write_new(enum store_write_op op, const char *kind, const char *id,
                                    const char *json, store_done_fn *done, void *ctx)
{
    struct store_write *w = xcalloc(1, sizeof *w);
    w->op = op;
    w->kind = kind ? xstrdup(kind) : NULL;
    w->id = id ? xstrdup(id) : NULL;
    w->json = json ? xstrdup(json) : NULL;
    w->done = done;
    w->ctx = ctx;
    return w;
}

static char *store__dup(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

void store_write_free(struct store_write *w)
{
    if (!w)
        return;
    free(w->kind);
    free(w->id);
    free(w->json);
    free(w->expected);
    free(w->ev.type);
    free(w->ev.actor);
    free(w->ev.actor_guid);
    free(w->ev.token_guid);
    free(w->ev.target);
    free(w->ev.space_guid);
    free(w->ev.org_guid);
    free(w->ev.detail);
    strv_free(w->refs);
    store_app_free(w->app);
    store_route_list_free(w->routes, w->n_routes);
    free(w->route.host);
    free(w->route.path);
    free(w->route.app_guid);
    free(w->route.domain);
    free(w->route.balance);
    free(w->route.protocol);
    free(w->task.name);
    free(w->task.command);
    free(w->task.state);
    free(w->task.failure_reason);
    free(w->pkg.app_guid);
    free(w->pkg.path);
    free(w->pkg.digest);
    free(w->drop.app_guid);
    free(w->drop.path);
    free(w->drop.buildpack);
    free(w->drop.process_types_json);
    free(w->drop.digest);
    free(w->drop.blobs);
    free(w->org_guid);
    free(w->cert_pem);
    if (w->key_pem)
        OPENSSL_cleanse(w->key_pem, strlen(w->key_pem));
    free(w->key_pem);
    strv_free(w->chains);
    store_strv_free_wiped(w->keys);
    free(w->audit.space_guid);
    free(w->audit.org_guid);
    free(w->audit.target);
    store_audit_list_free(w->events, w->n_events);
    free(w);
}

struct store_write *store_write_route(enum store_write_op op, const struct store_route *route,
                                      store_done_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(op, NULL, NULL, NULL, done, ctx);
    w->route = *route;
    w->route.host = store__dup(route->host);
    w->route.path = xstrdup(route->path ? route->path : "");
    w->route.app_guid = store__dup(route->app_guid);
    w->route.domain = store__dup(route->domain);
    w->route.balance = store__dup(route->balance);
    w->route.protocol = store__dup(route->protocol);
    w->https_only = -1;
    return w;
}

struct store_write *store_write_task(const struct store_task *task, store_done_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(STORE_WRITE_TASK_PUT, NULL, NULL, NULL, done, ctx);
    w->task = *task;
    w->task.name = store__dup(task->name);
    w->task.command = store__dup(task->command);
    w->task.state = store__dup(task->state);
    w->task.failure_reason = store__dup(task->failure_reason);
    return w;
}

struct store_write *store_write_package(const struct store_package *pkg, store_done_fn *done,
                                        void *ctx)
{
    struct store_write *w = store_write_new(STORE_WRITE_PACKAGE_ADD, NULL, NULL, NULL, done, ctx);
    w->pkg = *pkg;
    w->pkg.app_guid = store__dup(pkg->app_guid);
    w->pkg.path = store__dup(pkg->path);
    w->pkg.digest = store__dup(pkg->digest);
    return w;
}

struct store_write *store_write_droplet(const struct store_droplet *drop, store_done_fn *done,
                                        void *ctx)
{
    struct store_write *w = store_write_new(STORE_WRITE_DROPLET_ADD, NULL, NULL, NULL, done, ctx);
    w->drop = *drop;
    w->drop.app_guid = store__dup(drop->app_guid);
    w->drop.path = store__dup(drop->path);
    w->drop.buildpack = store__dup(drop->buildpack);
    w->drop.process_types_json = store__dup(drop->process_types_json);
    w->drop.digest = store__dup(drop->digest);
    w->drop.blobs = store__dup(drop->blobs);
    return w;
}

struct store_write *store_write_prune(const char *app_guid, const char *keep_package,
                                      const char *keep_droplet, store_refs_fn *done, void *ctx)
{
    struct store_write *w =
        store_write_new(STORE_WRITE_PRUNE, keep_package, app_guid, keep_droplet, NULL, ctx);
    w->done_refs = done;
    return w;
}

static bool store__domain_write_name(const struct store_write *w, char *buf, size_t size);

void store_write_name(const struct store_write *w, char *buf, size_t size)
{
    static const char *const verbs[] = {
        [STORE_WRITE_DOC_PUT] = "put",         [STORE_WRITE_DOC_DELETE] = "delete",
        [STORE_WRITE_DOC_CREATE] = "create",   [STORE_WRITE_DOC_UPDATE] = "update",
        [STORE_WRITE_AUDIT] = "add",           [STORE_READ_BLOB_REFS] = "read",
        [STORE_WRITE_DOC_REPLACE] = "replace", [STORE_READ_DOC_FRESH] = "read"};
    if (w->op == STORE_READ_DOC_EACH)
        snprintf(buf, size, "read of the documents %s", w->kind);
    else if (w->op == STORE_READ_ROUTES)
        snprintf(buf, size, "read of the routes");
    else if (w->op == STORE_READ_BLOB_REFS)
        snprintf(buf, size, "read of the blobs packages and droplets name");
    else if (w->op == STORE_WRITE_APP_CREATE || w->op == STORE_WRITE_APP_UPDATE)
        snprintf(buf, size, "%s of app %s (%s)",
                 w->op == STORE_WRITE_APP_CREATE ? "create" : "update",
                 w->app->name ? w->app->name : "?", w->app->guid);
    else if (w->op == STORE_WRITE_APP_DELETE)
        snprintf(buf, size, "delete of app %s", w->id);
    else if (w->op == STORE_WRITE_ROUTE_ADD || w->op == STORE_WRITE_ROUTE_DELETE ||
             w->op == STORE_WRITE_ROUTE_UPDATE)
        snprintf(buf, size, "%s of route %s%s",
                 w->op == STORE_WRITE_ROUTE_ADD      ? "add"
                 : w->op == STORE_WRITE_ROUTE_DELETE ? "delete"
                                                     : "update",
                 w->route.host ? w->route.host : "?", w->route.path);
    else if (w->op == STORE_WRITE_TASK_PUT)
        snprintf(buf, size, "put of task %s", w->task.guid);
    else if (w->op == STORE_WRITE_TASK_DELETE)
        snprintf(buf, size, "delete of task %s", w->id);
    else if (w->op == STORE_WRITE_PACKAGE_ADD)
        snprintf(buf, size, "add of package %s of app %s", w->pkg.guid,
                 w->pkg.app_guid ? w->pkg.app_guid : "?");
    else if (w->op == STORE_WRITE_DROPLET_ADD)
        snprintf(buf, size, "add of droplet %s of app %s", w->drop.guid,
                 w->drop.app_guid ? w->drop.app_guid : "?");
    else if (w->op == STORE_WRITE_PRUNE)
        snprintf(buf, size, "prune of the packages and droplets of app %s", w->id);
    else if (w->op == STORE_READ_PACKAGE)
        snprintf(buf, size, "read of package %s", w->id);
    else if (w->op == STORE_READ_APP_FRESH)
        snprintf(buf, size, "read of app %s", w->id);
    else if (store__domain_write_name(w, buf, size))
        return;
    else if (w->op == STORE_WRITE_DROPLET_DELETE)
        snprintf(buf, size, "delete of droplet %s", w->id);
    else if (w->op == STORE_READ_APP)
        snprintf(buf, size, "read of app %s", w->kind);
    else if (w->op == STORE_WRITE_AUDIT)
        snprintf(buf, size, "%s of audit event %s by %s", verbs[w->op],
                 w->ev.type ? w->ev.type : "?", w->ev.actor ? w->ev.actor : "?");
    else
        snprintf(buf, size, "%s of document %s/%s", verbs[w->op], w->kind, w->id);
}

static bool store__domain_write_report(struct store_write *w);

/* A read package handed over: the write's own fields move to a fresh object. */
static struct store_package *store__package_take(struct store_package *p)
{
    struct store_package *out = xcalloc(1, sizeof *out);
    *out = *p;
    memset(p, 0, sizeof *p);
    return out;
}

void store_write_report(struct store_write *w)
{
    if (store__domain_write_report(w))
        return;
    if (w->op == STORE_READ_APP) {
        char space[37];
        store_ref_split(w->kind, space);
        struct store_app *app = NULL;
        int rc = store__app_in_space(space, w->rc, w->app, &app);
        w->app = NULL;
        if (w->done_app)
            w->done_app(w->ctx, rc, app);
        else
            store_app_free(app);
    } else if (w->op == STORE_READ_PACKAGE) {
        struct store_package *pkg = w->rc < 0 ? NULL : store__package_take(&w->pkg);
        if (w->done_package)
            w->done_package(w->ctx, w->rc, pkg);
        else
            store_package_free(pkg);
    } else if (w->op == STORE_READ_APP_FRESH) {
        struct store_app *app = w->rc < 0 ? NULL : w->app;
        if (w->rc >= 0)
            w->app = NULL;
        if (w->done_app)
            w->done_app(w->ctx, w->rc, app);
        else
            store_app_free(app);
    } else if (w->op == STORE_READ_BLOB_REFS || w->op == STORE_WRITE_PRUNE) {
        char **refs = w->rc < 0 ? NULL : w->refs;
        if (w->rc < 0)
            strv_free(w->refs);
        w->refs = NULL;
        if (w->done_refs)
            w->done_refs(w->ctx, w->rc, refs);
        else
            strv_free(refs);
    } else if (w->op == STORE_READ_DOC_FRESH) {
        if (w->done_doc)
            w->done_doc(w->ctx, w->rc, w->rc == 0 ? w->json : NULL);
    } else if (w->done) {
        w->done(w->ctx, w->rc);
    }
}

static int store__domain_write_now(struct store *st, struct store_write *w);

/* A backend without a writer: the write is made now, done called before returning. */
static int store__write_now(struct store *st, struct store_write *w)
{
    int rc = -EINVAL;
    switch (w->op) {
    case STORE_WRITE_DOC_PUT:
        rc = st->ops->doc_put(st->backend, w->kind, w->id, w->json);
        break;
    case STORE_WRITE_DOC_DELETE:
        rc = st->ops->doc_delete(st->backend, w->kind, w->id);
        break;
    case STORE_WRITE_DOC_CREATE:
        rc = st->ops->doc_create(st->backend, w->kind, w->id, w->json);
        break;
    case STORE_WRITE_DOC_UPDATE:
        rc = st->ops->doc_update(st->backend, w->kind, w->id, w->json);
        break;
    case STORE_WRITE_AUDIT:
        rc = st->ops->audit_add(st->backend, &w->ev);
        break;
    case STORE_READ_BLOB_REFS:
        rc = st->ops->blob_refs(st->backend, &w->refs);
        break;
    case STORE_WRITE_APP_CREATE:
        rc = st->ops->app_create(st->backend, w->app);
        break;
    case STORE_WRITE_APP_UPDATE:
        rc = st->ops->app_update(st->backend, w->app);
        break;
    case STORE_WRITE_APP_DELETE:
        rc = st->ops->app_delete(st->backend, w->id);
        break;
    case STORE_WRITE_ROUTE_ADD:
        rc = st->ops->route_add(st->backend, &w->route);
        break;
    case STORE_WRITE_ROUTE_DELETE:
        rc = st->ops->route_delete(st->backend, w->route.host, w->route.path);
        break;
    case STORE_WRITE_ROUTE_UPDATE:
        rc = 0;
        if (w->route.balance || w->route.protocol)
            rc = st->ops->route_update(st->backend, w->route.host, w->route.path, w->route.balance,
                                       w->route.protocol);
        if (rc == 0 && w->https_only >= 0)
            rc = st->ops->route_set_https_only(st->backend, w->route.host, w->route.path,
                                               w->https_only == 1);
        break;
    case STORE_WRITE_TASK_PUT:
        rc = st->ops->task_put(st->backend, &w->task);
        break;
    case STORE_WRITE_TASK_DELETE:
        rc = st->ops->task_delete(st->backend, w->id);
        break;
    case STORE_WRITE_PACKAGE_ADD:
        rc = st->ops->package_add(st->backend, &w->pkg);
        break;
    case STORE_WRITE_DROPLET_ADD:
        rc = st->ops->droplet_add(st->backend, &w->drop);
        break;
    case STORE_WRITE_PRUNE:
        rc = st->ops->app_prune_artifacts(st->backend, w->id, w->kind, w->json, &w->refs);
        break;
    case STORE_READ_PACKAGE: {
        struct store_package *pkg = NULL;
        rc = st->ops->package_get(st->backend, w->id, &pkg);
        if (rc == 0) {
            w->pkg = *pkg;
            free(pkg);
        }
        break;
    }
    case STORE_READ_APP_FRESH:
        rc = store_app_get_fresh(st, w->id, &w->app);
        if (rc == 0 && strcmp(w->app->guid, w->id))
            rc = -ENOENT; /* a name that happens to look like the guid asked for */
        break;
    case STORE_WRITE_DROPLET_DELETE:
        rc = st->ops->droplet_delete(st->backend, w->id);
        break;
    case STORE_READ_APP: /* never queued here: store_app_find_or_read answers at once */
    case STORE_READ_ROUTES: /* store_pg's own */
        break;
    case STORE_WRITE_DOMAIN_ADD:
    case STORE_WRITE_DOMAIN_DELETE:
    case STORE_WRITE_CERT_SET:
    case STORE_WRITE_CERT_DELETE:
    case STORE_READ_CERT_CHAINS:
    case STORE_READ_CERT_PAIRS:
    case STORE_READ_AUDIT:
        rc = store__domain_write_now(st, w);
        break;
    case STORE_WRITE_DOC_REPLACE:
        rc = st->ops->doc_replace(st->backend, w->kind, w->id, w->expected, w->json);
        break;
    case STORE_READ_DOC_FRESH:
        free(w->json);
        w->json = NULL;
        rc = store_doc_get_fresh(st, w->kind, w->id, &w->json);
        break;
    case STORE_READ_DOC_EACH:
        store_write_pairs_reset(w);
        rc = store_doc_each_fresh(st, w->kind, store_write_pair_add, w);
        break;
    }
    w->rc = rc;
    store_write_report(w);
    store_write_free(w);
    return 0;
}

static int store__queue(struct store *st, struct store_write *w)
{
    if (!st->ops->submit)
        return store__write_now(st, w);
    return st->ops->submit(st->backend, w);
}

int store_doc_put_async(struct store *st, const char *kind, const char *id, const char *json,
                        store_done_fn *done, void *ctx)
{
    return store__queue(st, store_write_new(STORE_WRITE_DOC_PUT, kind, id, json, done, ctx));
}

int store_doc_delete_async(struct store *st, const char *kind, const char *id, store_done_fn *done,
                           void *ctx)
{
    return store__queue(st, store_write_new(STORE_WRITE_DOC_DELETE, kind, id, NULL, done, ctx));
}

struct store_write *store_write_audit(const struct store_audit_event *ev, store_done_fn *done,
                                      void *ctx)
{
    struct store_write *w = store_write_new(STORE_WRITE_AUDIT, NULL, NULL, NULL, done, ctx);
    w->ev.at = ev->at;
    w->ev.type = store__dup(ev->type);
    w->ev.actor = store__dup(ev->actor);
    w->ev.actor_guid = store__dup(ev->actor_guid);
    w->ev.token_guid = store__dup(ev->token_guid);
    w->ev.target = store__dup(ev->target);
    w->ev.space_guid = store__dup(ev->space_guid);
    w->ev.org_guid = store__dup(ev->org_guid);
    w->ev.detail = store__dup(ev->detail);
    return w;
}

int store_audit_add_async(struct store *st, const struct store_audit_event *ev, store_done_fn *done,
                          void *ctx)
{
    return store__queue(st, store_write_audit(ev, done, ctx));
}

int store_blob_refs_async(struct store *st, store_refs_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(STORE_READ_BLOB_REFS, NULL, NULL, NULL, NULL, ctx);
    w->done_refs = done;
    return store__queue(st, w);
}

int store_async_fd(struct store *st)
{
    return st->ops->async_fd ? st->ops->async_fd(st->backend) : -1;
}

size_t store_async_reap(struct store *st)
{
    return st->ops->async_reap ? st->ops->async_reap(st->backend) : 0;
}

size_t store_async_queued(struct store *st)
{
    return st->ops->async_queued ? st->ops->async_queued(st->backend) : 0;
}

void store_async_drain(struct store *st)
{
    if (st && st->ops->async_drain)
        st->ops->async_drain(st->backend);
}

/* ---- app writes off the caller's thread ---------------------------------------------------- */

static int store__app_queue(struct store *st, enum store_write_op op, struct store_app *app,
                            store_done_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(op, NULL, NULL, NULL, done, ctx);
    w->app = store_app_dup(app);
    int64_t version = app->version;
    /* done may run within the call (SQLite): the caller's app is set first */
    app->version = op == STORE_WRITE_APP_CREATE ? 1 : version + 1;
    int rc = store__queue(st, w);
    if (rc < 0)
        app->version = op == STORE_WRITE_APP_CREATE ? 0 : version;
    return rc;
}

int store_app_create_async(struct store *st, struct store_app *app, store_done_fn *done, void *ctx)
{
    return store__app_queue(st, STORE_WRITE_APP_CREATE, app, done, ctx);
}

int store_app_update_async(struct store *st, struct store_app *app, store_done_fn *done, void *ctx)
{
    if (app->version <= 0)
        return -EINVAL;
    return store__app_queue(st, STORE_WRITE_APP_UPDATE, app, done, ctx);
}

/* One store_app_modify_async: alive until its done is called. */
struct store_modify {
    struct store *st;
    char guid[37];
    int (*change)(void *ctx, struct store_app *app);
    void *ctx;
    store_done_fn *done;
    void *done_ctx;
    int tries;
};

static void store__modify_landed(void *ctx, int rc);

/* Reads the app, changes it and queues its update: < 0 an error, > 0 nothing to write, 0
 * queued (m is then the write's, and may be gone already when the write was made during the
 * call). */
static int store__modify_try(struct store_modify *m, struct store_app **out)
{
    struct store_app *app = NULL;
    /* after a conflict the copy may not know the other writer's change yet */
    int rc =
        m->tries ? store_app_get_fresh(m->st, m->guid, &app) : store_app_get(m->st, m->guid, &app);
    if (rc == 0 && strcmp(app->guid, m->guid))
        rc = -ENOENT; /* a name that happens to look like the guid asked for */
    if (rc == 0)
        rc = m->change(m->ctx, app);
    struct store_app *copy = NULL;
    if (rc >= 0 && out) {
        copy = store_app_dup(app);
        if (rc == 0)
            copy->version++; /* as it will be once written */
    }
    if (rc == 0)
        rc = store_app_update_async(m->st, app, store__modify_landed, m);
    store_app_free(app);
    if (rc >= 0 && out)
        *out = copy;
    else
        store_app_free(copy);
    return rc;
}

static void store__modify_landed(void *ctx, int rc)
{
    struct store_modify *m = ctx;
    if (rc == -ESTALE && ++m->tries < STORE_MODIFY_TRIES) {
        int again = store__modify_try(m, NULL);
        if (again == 0)
            return;
        rc = again > 0 ? 0 : again;
    }
    if (m->done)
        m->done(m->done_ctx, rc);
    free(m);
}

int store_app_modify_async(struct store *st, const char *guid,
                           int (*change)(void *ctx, struct store_app *app), void *ctx,
                           store_done_fn *done, void *done_ctx, struct store_app **out)
{
    struct store_modify *m = xcalloc(1, sizeof *m);
    m->st = st;
    snprintf(m->guid, sizeof m->guid, "%s", guid);
    m->change = change;
    m->ctx = ctx;
    m->done = done;
    m->done_ctx = done_ctx;
    int rc = store__modify_try(m, out);
    if (rc != 0)
        free(m);
    return rc;
}

/* ---- app deletions, routes and tasks off the caller's thread -------------------------------- */

int store_app_delete_async(struct store *st, const char *guid, store_done_fn *done, void *ctx)
{
    return store__queue(st, store_write_new(STORE_WRITE_APP_DELETE, NULL, guid, NULL, done, ctx));
}

int store_route_add_async(struct store *st, const struct store_route *route, store_done_fn *done,
                          void *ctx)
{
    return store__queue(st, store_write_route(STORE_WRITE_ROUTE_ADD, route, done, ctx));
}

int store_route_delete_async(struct store *st, const char *host, const char *path,
                             store_done_fn *done, void *ctx)
{
    struct store_route r = {.host = (char *)host, .path = (char *)path};
    return store__queue(st, store_write_route(STORE_WRITE_ROUTE_DELETE, &r, done, ctx));
}

int store_route_update_async(struct store *st, const char *host, const char *path,
                             const char *balance, const char *protocol, int https_only,
                             store_done_fn *done, void *ctx)
{
    struct store_route r = {.host = (char *)host,
                            .path = (char *)path,
                            .balance = (char *)balance,
                            .protocol = (char *)protocol};
    struct store_write *w = store_write_route(STORE_WRITE_ROUTE_UPDATE, &r, done, ctx);
    w->https_only = https_only < 0 ? -1 : https_only != 0;
    return store__queue(st, w);
}

int store_task_put_async(struct store *st, const struct store_task *task, store_done_fn *done,
                         void *ctx)
{
    return store__queue(st, store_write_task(task, done, ctx));
}

int store_task_delete_async(struct store *st, const char *guid, store_done_fn *done, void *ctx)
{
    return store__queue(st, store_write_new(STORE_WRITE_TASK_DELETE, NULL, guid, NULL, done, ctx));
}

/* ---- packages, droplets and prunes off the caller's thread ------------------------------- */

int store_package_add_async(struct store *st, const struct store_package *pkg, store_done_fn *done,
                            void *ctx)
{
    return store__queue(st, store_write_package(pkg, done, ctx));
}

int store_droplet_add_async(struct store *st, const struct store_droplet *drop, store_done_fn *done,
                            void *ctx)
{
    return store__queue(st, store_write_droplet(drop, done, ctx));
}

int store_app_prune_artifacts_async(struct store *st, const char *app_guid,
                                    const char *keep_package, const char *keep_droplet,
                                    store_refs_fn *done, void *ctx)
{
    return store__queue(st, store_write_prune(app_guid, keep_package, keep_droplet, done, ctx));
}

int store_package_get_async(struct store *st, const char *guid, store_package_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(STORE_READ_PACKAGE, NULL, guid, NULL, NULL, ctx);
    w->done_package = done;
    return store__queue(st, w);
}

int store_app_get_fresh_async(struct store *st, const char *guid, store_app_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(STORE_READ_APP_FRESH, NULL, guid, NULL, NULL, ctx);
    w->done_app = done;
    return store__queue(st, w);
}

void store_busy_message(struct store *st, char *buf, size_t size)
{
    snprintf(buf, size,
             "the database is not answering; %zu writes wait (at most %zu are queued): retry "
             "once it answers",
             store_async_queued(st), store_queue_max);
}

/* ---- domains, certificates, mappings, audit off the caller's thread ------------------------- */

struct store_write *store_write_domain(enum store_write_op op, const char *domain,
                                       const char *org_guid, const char *cert_pem,
                                       const char *key_pem, store_done_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(op, NULL, domain, NULL, done, ctx);
    w->org_guid = store__dup(org_guid);
    w->cert_pem = store__dup(cert_pem);
    w->key_pem = store__dup(key_pem);
    return w;
}

static bool store__domain_write_name(const struct store_write *w, char *buf, size_t size)
{
    switch (w->op) {
    case STORE_WRITE_DOMAIN_ADD:
        snprintf(buf, size, "add of domain %s", w->id);
        return true;
    case STORE_WRITE_DOMAIN_DELETE:
        snprintf(buf, size, "delete of domain %s", w->id);
        return true;
    case STORE_WRITE_CERT_SET:
        snprintf(buf, size, "set of domain %s's certificate", w->id);
        return true;
    case STORE_WRITE_CERT_DELETE:
        snprintf(buf, size, "delete of domain %s's certificate", w->id);
        return true;
    case STORE_READ_CERT_CHAINS:
        snprintf(buf, size, "read of the domains' certificates");
        return true;
    case STORE_READ_CERT_PAIRS:
        snprintf(buf, size, "read of the domains' certificates and keys");
        return true;
    case STORE_READ_AUDIT:
        snprintf(buf, size, "read of the audit events");
        return true;
    default:
        return false;
    }
}

/* The reads' outcomes go to their own callbacks (what was read passed on, NULL on a failure). */
static bool store__domain_write_report(struct store_write *w)
{
    if (w->op == STORE_READ_CERT_PAIRS) {
        bool ok = w->rc == 0;
        if (w->done_cert_pairs)
            w->done_cert_pairs(w->ctx, w->rc, ok ? w->refs : NULL, ok ? w->chains : NULL,
                               ok ? w->keys : NULL);
        strv_free(w->refs);
        strv_free(w->chains);
        store_strv_free_wiped(w->keys);
        w->refs = w->chains = w->keys = NULL;
        return true;
    }
    if (w->op == STORE_READ_CERT_CHAINS || w->op == STORE_READ_DOC_EACH) {
        char **names = w->rc < 0 ? NULL : w->refs, **values = w->rc < 0 ? NULL : w->chains;
        if (w->rc < 0) {
            strv_free(w->refs);
            strv_free(w->chains);
        }
        w->refs = w->chains = NULL;
        if (w->done_pairs) {
            w->done_pairs(w->ctx, w->rc, names, values);
        } else {
            strv_free(names);
            strv_free(values);
        }
        return true;
    }
    if (w->op == STORE_READ_AUDIT) {
        struct store_audit_event *events = w->rc < 0 ? NULL : w->events;
        size_t n = w->rc < 0 ? 0 : w->n_events;
        if (w->rc < 0)
            store_audit_list_free(w->events, w->n_events);
        w->events = NULL;
        w->n_events = 0;
        if (w->done_audit)
            w->done_audit(w->ctx, w->rc, events, n);
        else
            store_audit_list_free(events, n);
        return true;
    }
    return false;
}

/* Every domain's chain (and key, for STORE_READ_CERT_PAIRS), by name: the list, then each
 * one's read (a backend's sync calls). */
static int store__cert_chains_now(struct store *st, struct store_write *w)
{
    int rc = st->ops->domain_cert_list(st->backend, &w->refs);
    if (rc < 0)
        return rc;
    size_t n = 0;
    while (w->refs[n])
        n++;
    bool keys = w->op == STORE_READ_CERT_PAIRS;
    w->chains = xcalloc(n + 1, sizeof *w->chains);
    if (keys)
        w->keys = xcalloc(n + 1, sizeof *w->keys);
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        char *chain = NULL, *key = NULL;
        rc = st->ops->domain_cert_get(st->backend, w->refs[i], &chain, keys ? &key : NULL);
        if (rc == -ENOENT) { /* removed in between */
            free(w->refs[i]);
            continue;
        }
        if (rc < 0) {
            for (size_t k = i; k < n; k++)
                free(w->refs[k]);
            w->refs[kept] = NULL;
            return rc;
        }
        w->refs[kept] = w->refs[i];
        if (keys)
            w->keys[kept] = key;
        w->chains[kept++] = chain;
    }
    w->refs[kept] = NULL;
    return 0;
}

static int store__domain_write_now(struct store *st, struct store_write *w)
{
    const struct store_audit_query *q = &w->audit;
    switch (w->op) {
    case STORE_WRITE_DOMAIN_ADD:
        return st->ops->domain_add(st->backend, w->id, w->org_guid);
    case STORE_WRITE_DOMAIN_DELETE:
        return st->ops->domain_delete(st->backend, w->id);
    case STORE_WRITE_CERT_SET:
        return st->ops->domain_cert_set(st->backend, w->id, w->cert_pem, w->key_pem);
    case STORE_WRITE_CERT_DELETE:
        return st->ops->domain_cert_delete(st->backend, w->id);
    case STORE_READ_CERT_CHAINS:
    case STORE_READ_CERT_PAIRS:
        return store__cert_chains_now(st, w);
    case STORE_READ_AUDIT:
        return st->ops->audit_list(st->backend, q->space_guid, q->org_guid, q->target, q->before_id,
                                   q->limit, &w->events, &w->n_events);
    default:
        return -EINVAL;
    }
}

int store_domain_add_async(struct store *st, const char *name, const char *org_guid,
                           store_done_fn *done, void *ctx)
{
    return store__queue(
        st, store_write_domain(STORE_WRITE_DOMAIN_ADD, name, org_guid, NULL, NULL, done, ctx));
}

int store_domain_delete_async(struct store *st, const char *name, store_done_fn *done, void *ctx)
{
    return store__queue(
        st, store_write_domain(STORE_WRITE_DOMAIN_DELETE, name, NULL, NULL, NULL, done, ctx));
}

int store_domain_cert_set_async(struct store *st, const char *domain, const char *cert_pem,
                                const char *key_pem, store_done_fn *done, void *ctx)
{
    return store__queue(
        st, store_write_domain(STORE_WRITE_CERT_SET, domain, NULL, cert_pem, key_pem, done, ctx));
}

int store_domain_cert_delete_async(struct store *st, const char *domain, store_done_fn *done,
                                   void *ctx)
{
    return store__queue(
        st, store_write_domain(STORE_WRITE_CERT_DELETE, domain, NULL, NULL, NULL, done, ctx));
}

/* ---- documents: create, replace, fresh reads off the caller's thread ----------------------- */

struct store_write *store_write_doc_replace(const char *kind, const char *id, const char *expected,
                                            const char *json, store_done_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(STORE_WRITE_DOC_REPLACE, kind, id, json, done, ctx);
    w->expected = xstrdup(expected);
    return w;
}

struct store_write *store_write_doc_fresh(const char *kind, const char *id, store_doc_fn *done,
                                          void *ctx)
{
    struct store_write *w = store_write_new(STORE_READ_DOC_FRESH, kind, id, NULL, NULL, ctx);
    w->done_doc = done;
    return w;
}

int store_doc_create_async(struct store *st, const char *kind, const char *id, const char *json,
                           store_done_fn *done, void *ctx)
{
    return store__queue(st, store_write_new(STORE_WRITE_DOC_CREATE, kind, id, json, done, ctx));
}

int store_doc_update_async(struct store *st, const char *kind, const char *id, const char *json,
                           store_done_fn *done, void *ctx)
{
    return store__queue(st, store_write_new(STORE_WRITE_DOC_UPDATE, kind, id, json, done, ctx));
}

int store_domain_cert_chains_async(struct store *st, store_pairs_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(STORE_READ_CERT_CHAINS, NULL, NULL, NULL, NULL, ctx);
    w->done_pairs = done;
    return store__queue(st, w);
}

int store_domain_cert_pairs_async(struct store *st, store_cert_pairs_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(STORE_READ_CERT_PAIRS, NULL, NULL, NULL, NULL, ctx);
    w->done_cert_pairs = done;
    return store__queue(st, w);
}

int store_doc_each_fresh_async(struct store *st, const char *kind, store_pairs_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(STORE_READ_DOC_EACH, kind, NULL, NULL, NULL, ctx);
    w->done_pairs = done;
    return store__queue(st, w);
}

int store_write_pair_add(void *ctx, const char *id, const char *json)
{
    struct store_write *w = ctx;
    w->refs = xrealloc(w->refs, (w->n_pairs + 2) * sizeof *w->refs);
    w->chains = xrealloc(w->chains, (w->n_pairs + 2) * sizeof *w->chains);
    w->refs[w->n_pairs] = xstrdup(id);
    w->chains[w->n_pairs++] = xstrdup(json);
    w->refs[w->n_pairs] = w->chains[w->n_pairs] = NULL;
    return 0;
}

void store_write_pairs_reset(struct store_write *w)
{
    strv_free(w->refs);
    strv_free(w->chains);
    w->n_pairs = 0;
    w->refs = xcalloc(1, sizeof *w->refs);
    w->chains = xcalloc(1, sizeof *w->chains);
}

int store_audit_list_async(struct store *st, const char *space_guid, const char *org_guid,
                           const char *target, int64_t before_id, size_t limit,
                           store_audit_fn *done, void *ctx)
{
    struct store_write *w = store_write_new(STORE_READ_AUDIT, NULL, NULL, NULL, NULL, ctx);
    w->audit = (struct store_audit_query){.space_guid = store__dup(space_guid),
                                          .org_guid = store__dup(org_guid),
                                          .target = store__dup(target),
                                          .before_id = before_id,
                                          .limit = limit};
    w->done_audit = done;
    return store__queue(st, w);
}

int store_doc_replace_async(struct store *st, const char *kind, const char *id,
                            const char *expected, const char *json, store_done_fn *done, void *ctx)
{
    return store__queue(st, store_write_doc_replace(kind, id, expected, json, done, ctx));
}

int store_doc_get_fresh_async(struct store *st, const char *kind, const char *id,
                              store_doc_fn *done, void *ctx)
{
    return store__queue(st, store_write_doc_fresh(kind, id, done, ctx));
}

/* ---- revisions and app settings off the caller's thread ------------------------------------- */

int store_droplet_delete_async(struct store *st, const char *guid, store_done_fn *done, void *ctx)
{
    return store__queue(st,
                        store_write_new(STORE_WRITE_DROPLET_DELETE, NULL, guid, NULL, done, ctx));
}
