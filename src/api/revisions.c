/* Revisions, as Cloud Foundry keeps them: each new droplet an app is given (a push, a restage,
 * a rollback), and each start or restart that applies a changed environment or command, is a
 * revision, numbered from 1, holding the droplet, the environment, each process's command and
 * the sidecars at that moment. GET /v1/apps/NAME/revisions lists them, newest first;
 * POST /v1/apps/NAME/rollback {"revision": N} makes a new revision from revision N's droplet,
 * environment, commands and sidecars and deploys it (rolling, as a push does).
 *
 * They are documents of kind "revisions.APP_GUID" (store_doc_*), ids the zero-padded number,
 * so one app's are read without the others'. The newest API_REVISIONS_KEEP are kept, with
 * their droplets; an older revision's droplet goes with it unless a kept revision, the app or
 * a running instance still uses it: its row, its folder when that is in this skiffd's
 * HOME/apps/APP/droplets (api_core__artifact_remove), and its blob by the blob store's
 * collection. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/core_internal.h"
#include "common/log.h"
#include "common/util.h"
#include "logs/logs.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define API_REVISIONS_KEEP 5

static char *revisions__kind(const char *app_guid)
{
    return xasprintf("revisions.%s", app_guid);
}

/* A revision's document id: its number, zero-padded so that ids sort as numbers do. */
static void revisions__id(json_int_t version, char id[24])
{
    snprintf(id, 24, "%010lld", (long long)version);
}

struct revisions__list {
    json_t *all; /* oldest first */
};

static int revisions__collect(void *ctx, const char *id, const char *text)
{
    (void)id;
    struct revisions__list *l = ctx;
    json_t *r = json_loads(text, 0, NULL);
    if (json_is_object(r))
        json_array_append_new(l->all, r);
    else
        json_decref(r);
    return 0;
}

/* Every revision of the app, oldest first (new reference), or NULL when the store failed. */
static json_t *revisions__load(struct api_core *core, const char *app_guid)
{
    char *kind = revisions__kind(app_guid);
    struct revisions__list l = {.all = json_array()};
    int rc = store_doc_each(core->cfg.store, kind, revisions__collect, &l);
    free(kind);
    if (rc < 0) {
        json_decref(l.all);
        return NULL;
    }
    return l.all;
}

/* Whether any instance of the app runs droplet (the scheduler's view). */
static bool revisions__droplet_running(struct api_core *core, const char *app_guid,
                                       const char *droplet)
{
    if (!core->cfg.scheduler)
        return false;
    int n = scheduler_app_instances(core->cfg.scheduler, app_guid, NULL, 0);
    if (n <= 0)
        return false;
    struct scheduler_instance_info *info = xcalloc((size_t)n, sizeof *info);
    int got = scheduler_app_instances(core->cfg.scheduler, app_guid, info, (size_t)n);
    bool found = false;
    for (int i = 0; i < got && i < n && !found; i++)
        found = !strcmp(info[i].droplet, droplet);
    free(info);
    return found;
}

/* A droplet's deletion, queued: its folder and blobs go once its row is gone. */
struct revisions_drop {
    struct api_core *core;
    char *app_guid, *path;
};

static void revisions__droplet_deleted(void *ctx, int rc)
{
    struct revisions_drop *d = ctx;
    if (rc == 0)
        api_core__artifact_remove(d->core, d->app_guid, d->path);
    api_core__images_gc_soon(d->core);
    api_core__blobs_gc_soon(d->core);
    free(d->app_guid);
    free(d->path);
    free(d);
}

static void revisions__droplet_delete(struct api_core *core, const char *app_guid,
                                      const char *droplet)
{
    struct store_droplet *drop = NULL;
    if (store_droplet_get(core->cfg.store, droplet, &drop) < 0)
        return;
    struct revisions_drop *d = xcalloc(1, sizeof *d);
    *d = (struct revisions_drop){
        .core = core, .app_guid = xstrdup(app_guid), .path = xstrdup(drop->path)};
    store_droplet_free(drop);
    if (store_droplet_delete_async(core->cfg.store, droplet, revisions__droplet_deleted, d) < 0)
        revisions__droplet_deleted(d, -ECANCELED);
}

/* Drops revisions past the newest API_REVISIONS_KEEP, and the droplets only they used (the
 * app's current one, current_droplet, is kept). */
static void revisions__trim(struct api_core *core, const char *app_guid,
                            const char *current_droplet, json_t *all)
{
    size_t n = json_array_size(all);
    if (n <= API_REVISIONS_KEEP)
        return;
    char *kind = revisions__kind(app_guid);
    for (size_t i = 0; i + API_REVISIONS_KEEP < n; i++) {
        json_t *old = json_array_get(all, i);
        const char *droplet = json_string_value(json_object_get(old, "droplet"));
        bool used = !droplet || (current_droplet && !strcmp(droplet, current_droplet));
        for (size_t k = i + 1; k < n && !used; k++)
            used = !strcmp(droplet,
                           json_string_value(json_object_get(json_array_get(all, k), "droplet"))
                               ?: "");
        if (!used && !revisions__droplet_running(core, app_guid, droplet))
            revisions__droplet_delete(core, app_guid, droplet);
        char id[24];
        revisions__id(json_integer_value(json_object_get(old, "version")), id);
        store_doc_delete_async(core->cfg.store, kind, id, NULL, NULL);
    }
    free(kind);
}

static int revisions__found(void *ctx, const char *id, const char *text)
{
    (void)id, (void)text;
    *(bool *)ctx = true;
    return 1;
}

bool api_core__revisions_any(struct api_core *core, const char *app_guid)
{
    char *kind = revisions__kind(app_guid);
    bool any = false;
    store_doc_each(core->cfg.store, kind, revisions__found, &any);
    free(kind);
    return any;
}

/* What a revision holds besides its droplet: the environment and each process's command. */
static json_t *revisions__env(const struct store_app *app)
{
    json_t *env = json_object();
    for (size_t i = 0; i < app->n_env; i++)
        json_object_set_new(env, app->env[i].name, json_string(app->env[i].value));
    return env;
}

static json_t *revisions__commands(const struct store_app *app)
{
    json_t *commands = json_object();
    for (size_t i = 0; i < app->n_processes; i++)
        json_object_set_new(commands, app->processes[i].type,
                            app->processes[i].command ? json_string(app->processes[i].command)
                                                      : json_null());
    return commands;
}

/* Gives app the environment, commands and sidecars revision rev holds (instance counts and
 * memory stay). */
static void revisions__apply_settings(struct store_app *app, json_t *rev)
{
    for (size_t k = 0; k < app->n_env; k++) {
        free(app->env[k].name);
        free(app->env[k].value);
    }
    free(app->env);
    app->env = NULL;
    app->n_env = 0;
    const char *key;
    json_t *val;
    json_t *env = json_object_get(rev, "env");
    app->env = xcalloc(json_object_size(env) + 1, sizeof *app->env);
    json_object_foreach(env, key, val)
    {
        app->env[app->n_env].name = xstrdup(key);
        app->env[app->n_env].value = xstrdup(json_string_value(val) ?: "");
        app->n_env++;
    }
    json_t *commands = json_object_get(rev, "commands");
    for (size_t k = 0; k < app->n_processes; k++) {
        json_t *c = json_object_get(commands, app->processes[k].type);
        if (!c)
            continue;
        free(app->processes[k].command);
        app->processes[k].command = json_is_string(c) ? xstrdup(json_string_value(c)) : NULL;
    }
    /* and its sidecars (a revision made before they were kept leaves the app's alone) */
    json_t *sidecars = json_object_get(rev, "sidecars");
    if (json_is_array(sidecars)) {
        free(app->sidecars_json);
        app->sidecars_json = json_array_size(sidecars) ? json_dumps(sidecars, JSON_COMPACT) : NULL;
    }
}

/* A revision's write, queued: once made, the revisions past the kept number go. */
struct revisions_append {
    struct api_core *core;
    char *app_guid, *droplet;
    json_t *all; /* with the new revision */
    int version;
    api_core_revised_fn *then;
    void *ctx;
};

static void revisions__appended(void *ctx, int rc)
{
    struct revisions_append *a = ctx;
    if (rc == 0)
        revisions__trim(a->core, a->app_guid, a->droplet, a->all);
    if (a->then)
        a->then(a->core, a->ctx, rc, a->version);
    free(a->app_guid);
    free(a->droplet);
    json_decref(a->all);
    free(a);
}

/* Stores the app's settings as revision `last`'s successor (`all`, oldest first, gains it);
 * then (when not NULL) hears of the write once, before this returns when it cannot be
 * queued. */
static void revisions__append(struct api_core *core, const struct store_app *app, json_t *all,
                              const char *description, api_core_revised_fn *then, void *ctx)
{
    json_t *last = json_array_get(all, json_array_size(all) - 1);
    json_int_t version = last ? json_integer_value(json_object_get(last, "version")) + 1 : 1;
    char when[40];
    time_format_rfc3339(time_now_ms(), when, sizeof when);
    json_t *r = json_pack("{s:I, s:s, s:s, s:s, s:o, s:o}", "version", (json_int_t)version,
                          "droplet", app->droplet_guid, "description", description, "created_at",
                          when, "env", revisions__env(app), "commands", revisions__commands(app));
    json_t *sidecars = app->sidecars_json ? json_loads(app->sidecars_json, 0, NULL) : NULL;
    json_object_set_new(r, "sidecars", json_is_array(sidecars) ? sidecars : json_array());
    if (!json_is_array(sidecars))
        json_decref(sidecars);
    char *text = json_dumps(r, JSON_COMPACT);
    char *kind = revisions__kind(app->guid);
    char id[24];
    revisions__id(version, id);
    json_array_append_new(all, r);
    struct revisions_append *a = xcalloc(1, sizeof *a);
    *a = (struct revisions_append){.core = core,
                                   .app_guid = xstrdup(app->guid),
                                   .droplet = xstrdup(app->droplet_guid),
                                   .all = json_incref(all),
                                   .version = (int)version,
                                   .then = then,
                                   .ctx = ctx};
    if (store_doc_put_async(core->cfg.store, kind, id, text, revisions__appended, a) < 0)
        revisions__appended(a, -ECANCELED);
    free(kind);
    free(text);
}

void api_core__revision_add_then(struct api_core *core, const struct store_app *app,
                                 const char *description, api_core_revised_fn *then, void *ctx)
{
    json_t *all = app->droplet_guid ? revisions__load(core, app->guid) : NULL;
    if (!all) {
        if (then)
            then(core, ctx, app->droplet_guid ? -EIO : -ENODATA, 0);
        return;
    }
    revisions__append(core, app, all, description, then, ctx);
    json_decref(all);
}

int api_core__revision_add(struct api_core *core, const struct store_app *app,
                           const char *description, int *version_out)
{
    if (!app->droplet_guid)
        return -ENODATA;
    json_t *all = revisions__load(core, app->guid);
    if (!all)
        return -EIO;
    json_t *last = json_array_get(all, json_array_size(all) - 1);
    if (version_out)
        *version_out = (int)(last ? json_integer_value(json_object_get(last, "version")) + 1 : 1);
    revisions__append(core, app, all, description, NULL, NULL);
    json_decref(all);
    return 0;
}

void api_core__revision_if_changed_then(struct api_core *core, const struct store_app *app,
                                        api_core_revised_fn *then, void *ctx)
{
    json_t *all = app->droplet_guid ? revisions__load(core, app->guid) : NULL;
    json_t *last = json_array_get(all, json_array_size(all) - 1);
    bool queued = false, failed = app->droplet_guid && !all;
    if (last) {
        json_t *env = revisions__env(app), *commands = revisions__commands(app);
        bool env_changed = !json_equal(env, json_object_get(last, "env"));
        bool commands_changed = !json_equal(commands, json_object_get(last, "commands"));
        bool droplet_changed =
            strcmp(app->droplet_guid, json_string_value(json_object_get(last, "droplet")) ?: "");
        json_decref(env);
        json_decref(commands);
        /* CF's descriptions, one clause for each thing that changed */
        char description[160] = "";
        if (droplet_changed)
            strcat(description, "new droplet deployed; ");
        if (env_changed)
            strcat(description, "new environment variables deployed; ");
        if (commands_changed)
            strcat(description, "custom start command updated; ");
        if (description[0]) {
            description[strlen(description) - 2] = '\0';
            revisions__append(core, app, all, description, then, ctx);
            queued = true;
        }
    }
    json_decref(all);
    if (!queued)
        then(core, ctx, failed ? -EIO : 0, 0);
}

/* A failed deployment's settings put back: the revision they come from, for the log. */
struct revisions_restore {
    struct api_core *core;
    char app_guid[37];
    int version;
};

/* store_app_modify_async's change: the settings of the newest revision of the app's droplet
 * (1: none, or nothing differs). */
static int revisions__restore_change(void *ctx, struct store_app *app)
{
    struct revisions_restore *r = ctx;
    if (!app->droplet_guid)
        return 1;
    json_t *all = revisions__load(r->core, app->guid);
    if (!all)
        return -EIO;
    json_t *rev = NULL;
    for (size_t i = json_array_size(all); i-- > 0 && !rev;) {
        json_t *one = json_array_get(all, i);
        if (!strcmp(app->droplet_guid, json_string_value(json_object_get(one, "droplet")) ?: ""))
            rev = one;
    }
    int rc = 1;
    json_t *env = revisions__env(app), *commands = revisions__commands(app);
    if (rev && (!json_equal(env, json_object_get(rev, "env")) ||
                !json_equal(commands, json_object_get(rev, "commands")))) {
        revisions__apply_settings(app, rev);
        app->updated_at = time_now_ms();
        r->version = (int)json_integer_value(json_object_get(rev, "version"));
        rc = 0;
    }
    json_decref(env);
    json_decref(commands);
    json_decref(all);
    return rc;
}

static void revisions__restored(void *ctx, int rc)
{
    struct revisions_restore *r = ctx;
    if (rc == 0)
        logs_appendf(r->core->cfg.logs, r->app_guid, "API", LOGS_OUT,
                     "The environment and commands of revision %d, which ran before, are back",
                     r->version);
    else
        log_error("api: the settings of revision %d of app %s were not put back: %s", r->version,
                  r->app_guid, skiff_strerror(rc));
    free(r);
}

void api_core__revision_settings_restore(struct api_core *core, const char *app_guid)
{
    struct revisions_restore *r = xcalloc(1, sizeof *r);
    r->core = core;
    snprintf(r->app_guid, sizeof r->app_guid, "%s", app_guid);
    int rc = store_app_modify_async(core->cfg.store, app_guid, revisions__restore_change, r,
                                    revisions__restored, r, NULL);
    if (rc < 0 && rc != -ENOENT)
        log_error("api: the settings of a revision of app %s were not put back: %s", app_guid,
                  skiff_strerror(rc));
    if (rc != 0)
        free(r);
}

void api_core__revisions_forget(struct api_core *core, const char *app_guid)
{
    json_t *all = revisions__load(core, app_guid);
    char *kind = revisions__kind(app_guid);
    size_t i;
    json_t *r;
    json_array_foreach(all, i, r)
    {
        char id[24];
        revisions__id(json_integer_value(json_object_get(r, "version")), id);
        store_doc_delete_async(core->cfg.store, kind, id, NULL, NULL);
    }
    free(kind);
    json_decref(all);
}

static void revisions__list(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    json_t *all = revisions__load(core, app->guid);
    if (!all) {
        api_respond_error(req, SKIFF_E_INTERNAL, "cannot read the revisions of %s", app->name);
        store_app_free(app);
        return;
    }
    /* newest first; the environment's values stay out (they may be secrets: GET env shows
     * the current ones to whoever may read them), its names are shown */
    json_t *out = json_array();
    bool current_seen = false; /* the newest revision of the app's droplet is the current one */
    for (size_t i = json_array_size(all); i-- > 0;) {
        json_t *r = json_deep_copy(json_array_get(all, i));
        json_t *names = json_array();
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(r, "env"), k, v)
        {
            (void)v;
            json_array_append_new(names, json_string(k));
        }
        json_object_del(r, "env");
        json_object_set_new(r, "env_names", names);
        bool current =
            !current_seen && app->droplet_guid &&
            !strcmp(app->droplet_guid, json_string_value(json_object_get(r, "droplet")) ?: "");
        current_seen |= current;
        json_object_set_new(r, "current", json_boolean(current));
        json_array_append_new(out, r);
    }
    json_decref(all);
    api_respond_json(req, 200, json_pack("{s:o}", "revisions", out));
    store_app_free(app);
}

/* A rollback: the app's write, then its new revision's, then the answer. */
struct revisions_rollback {
    struct api_request *req;
    struct store_app *app; /* as written */
    json_int_t version;    /* the revision rolled back to */
};

static void revisions__rollback_recorded(struct api_core *core, void *ctx, int rc, int made)
{
    struct revisions_rollback *rb = ctx;
    struct store_app *app = rb->app;
    if (rc == 0)
        logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT,
                     "Rolled app %s back to revision %lld (droplet %s) as revision %d", app->name,
                     (long long)rb->version, app->droplet_guid, made);
    else
        logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT,
                     "Rolled app %s back to revision %lld (droplet %s); its new revision was not "
                     "recorded",
                     app->name, (long long)rb->version, app->droplet_guid);
    if (core->cfg.scheduler && !strcmp(app->state, "STARTED"))
        scheduler_app_deploy(core->cfg.scheduler, app->guid, true);
    api_core__respond_app(core, rb->req, 200, app);
    store_app_free(app);
    free(rb);
}

static void revisions__rolled_back(struct api_core *core, struct api_request *req,
                                   struct store_app *app, void *ctx)
{
    struct revisions_rollback *rb = ctx;
    if (!req) {
        free(rb);
        return;
    }
    rb->req = req;
    rb->app = store_app_dup(app);
    char description[64];
    snprintf(description, sizeof description, "rollback to revision %lld", (long long)rb->version);
    api_core__revision_add_then(core, rb->app, description, revisions__rollback_recorded, rb);
}

static void revisions__rollback(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    json_t *want = json_object_get(body, "revision");
    if (!json_is_integer(want) || json_integer_value(want) < 1) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "\"revision\" must be a revision number (`skiff revisions APP` lists "
                          "them)");
        json_decref(body);
        return;
    }
    json_int_t version = json_integer_value(want);
    json_decref(body);
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    json_t *all = revisions__load(core, app->guid);
    json_t *rev = NULL;
    size_t i;
    json_t *r;
    json_array_foreach(all, i, r)
    {
        if (json_integer_value(json_object_get(r, "version")) == version)
            rev = r;
    }
    struct store_droplet *drop = NULL;
    const char *droplet = rev ? json_string_value(json_object_get(rev, "droplet")) : NULL;
    if (!rev) {
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "app %s has no revision %lld: `skiff revisions %s` lists the %d kept",
                          app->name, (long long)version, app->name, API_REVISIONS_KEEP);
        goto done;
    }
    if (!droplet || store_droplet_get(core->cfg.store, droplet, &drop) < 0) {
        api_respond_error(req, SKIFF_E_NO_DROPLET,
                          "the droplet of revision %lld of %s is gone: push the code again",
                          (long long)version, app->name);
        goto done;
    }
    /* the revision's droplet, environment and commands; instance counts and memory stay */
    free(app->droplet_guid);
    app->droplet_guid = xstrdup(droplet);
    free(app->detected_buildpack);
    app->detected_buildpack = drop->buildpack ? xstrdup(drop->buildpack) : NULL;
    revisions__apply_settings(app, rev);
    app->updated_at = time_now_ms();
    struct revisions_rollback *rb = xcalloc(1, sizeof *rb);
    rb->version = version;
    api_core__app_store_then(core, req, app, false, "cannot store the app", revisions__rolled_back,
                             rb);
    app = NULL;
done:
    store_droplet_free(drop);
    json_decref(all);
    store_app_free(app);
}

void api_core__revisions_register(struct api_core *core)
{
    api_route_add(core->api, "GET", "/v1/apps/*/revisions",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_APP, revisions__list, core);
    api_route_add(core->api, "POST", "/v1/apps/*/rollback",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, revisions__rollback, core);
}
