/* The core endpoints (docs/api.md): info, apps, env, logs, routes, domains. Staging and
 * bits live in staging.c. */
#include "common/start_trace.h"
#include "auth/auth.h"
#include "api/core.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/core_internal.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "container/container.h"
#include "hub/hub.h"
#include "images/images.h"
#include "logs/logs.h"
#include "scheduler/scheduler.h"
#include "services/services.h"
#include "store/store.h"

#define SKIFF_VERSION "0.1.0"
/* The most instances a process may ask for (POST/PUT/PATCH `instances`, `processes`). */
#define CORE_MAX_INSTANCES 1000
/* Bounds of a health or readiness check's interval and of one probe's deadline, seconds, and
 * of a log rate limit, bytes a second: past these a value is a mistake, not a setting. */
#define CORE_MAX_CHECK_INTERVAL_S 3600
#define CORE_MAX_CHECK_TIMEOUT_S 600
#define CORE_MAX_LOG_RATE (1LL << 30)

/* The message of a 500 when the store fails a read (the store logs the backend's reason). */
#define CORE_STORE_READ_FAILED "cannot read the store (see skiffd's output)"

void api_core__routes_changed(struct api_core *core)
{
    if (core->cfg.routes_changed)
        core->cfg.routes_changed(core->cfg.routes_ctx);
}

/* ---- JSON of an app ------------------------------------------------------------------------ */

/* Writes s escaped for the inside of a JSON string. */
static void core__json_escape(struct buf *b, const char *s)
{
    buf_append_json_escaped(b, s, strlen(s), 0);
}

/* Writes s as a JSON string. */
static void core__json_str(struct buf *b, const char *s)
{
    buf_putc(b, '"');
    core__json_escape(b, s);
    buf_putc(b, '"');
}

/* printf into b through a stack buffer: one formatting pass instead of buf_printf's two,
 * which counts when 1,000 apps are written */
static void core__fmt(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void core__fmt(struct buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof tmp) {
        buf_append(b, tmp, (size_t)n);
        return;
    }
    va_start(ap, fmt);
    buf_vprintf(b, fmt, ap);
    va_end(ap);
}

static void core__json_str_or_null(struct buf *b, const char *s)
{
    if (s)
        core__json_str(b, s);
    else
        buf_puts(b, "null");
}

/* The fields of store_process_checks, as the API names them (in an app body for its web
 * process, and in each item of its "processes"); null: the platform's default. */
static void core__checks_json(struct buf *b, const struct store_process_checks *c)
{
    const struct {
        const char *key;
        int value;
    } numbers[] = {{"health_check_interval", c->health_interval_s},
                   {"health_check_invocation_timeout", c->health_timeout_s},
                   {"readiness_health_check_interval", c->readiness_interval_s},
                   {"readiness_health_check_invocation_timeout", c->readiness_timeout_s}};
    for (size_t i = 0; i < ARRAY_SIZE(numbers); i++)
        if (numbers[i].value > 0)
            core__fmt(b, ",\"%s\":%d", numbers[i].key, numbers[i].value);
        else
            core__fmt(b, ",\"%s\":null", numbers[i].key);
    buf_puts(b, ",\"readiness_health_check_type\":");
    core__json_str_or_null(b, c->readiness_type);
    buf_puts(b, ",\"readiness_health_check_http_endpoint\":");
    core__json_str_or_null(b, c->readiness_type && !strcmp(c->readiness_type, "http")
                                  ? (c->readiness_endpoint ? c->readiness_endpoint : "/")
                                  : NULL);
    core__fmt(b, ",\"log_rate_limit_per_second\":%lld",
              c->log_rate_limited ? (long long)c->log_rate_limit : -1LL);
}

/* An image app's droplet: the image it runs, as its record says. */
/* A function's document (stored as json_dumps made it: one object) with its max_instances,
 * which its scaling policy keeps. */
static void core__function_json(struct buf *b, const struct store_process *p)
{
    const char *fj = p->function_json;
    const char *end = strrchr(fj, '}');
    if (!end) {
        buf_puts(b, fj);
        return;
    }
    buf_append(b, fj, (size_t)(end - fj));
    core__fmt(b, "%s\"max_instances\":%d}", end - fj > 1 ? "," : "", p->max_instances);
}

static void core__image_json(struct api_core *core, struct buf *b, const struct store_app *app)
{
    if (!app->droplet_guid)
        return;
    char *record = xasprintf("%s/apps/%s/droplets/%s/%s", core->cfg.home, app->guid,
                             app->droplet_guid, IMAGE_RECORD);
    char *text = NULL, err[256];
    struct image img;
    if (file_read(record, &text, NULL) == 0 && image_from_json(text, &img, err, sizeof err) == 0) {
        buf_puts(b, ",\"image\":{\"ref\":");
        core__json_str(b, img.ref ? img.ref : "");
        buf_puts(b, ",\"digest\":");
        core__json_str(b, img.digest ? img.digest : "");
        buf_putc(b, '}');
        image_clear(&img);
    }
    free(text);
    free(record);
}

/* Writes the app object of docs/api.md. Written by hand rather than through jansson because
 * GET /v1/apps serialises every app, and this is most of its time. routes are the app's. */
void api_core__app_write(struct api_core *core, struct buf *b, const struct store_app *app,
                         const struct store_route *const *routes, size_t nroutes)
{
    const struct store_process *web = store_app_process(app, "web");
    char created[40], updated[40];
    time_format_rfc3339(app->created_at, created, sizeof created);
    time_format_rfc3339(app->updated_at, updated, sizeof updated);
    buf_puts(b, "{\"guid\":");
    core__json_str(b, app->guid);
    buf_puts(b, ",\"name\":");
    core__json_str(b, app->name);
    if (core->cfg.auth) {
        const struct auth_space *space = auth_space_get(core->cfg.auth, app->space_guid);
        const struct auth_org *org = space ? auth_org_find(core->cfg.auth, space->org_guid) : NULL;
        buf_puts(b, ",\"space\":\"");
        core__json_escape(b, org ? org->name : "?");
        buf_putc(b, '/');
        core__json_escape(b, space ? space->name : "?");
        buf_putc(b, '"');
    }
    buf_puts(b, ",\"state\":");
    core__json_str(b, app->state);
    core__fmt(b, ",\"instances\":%d,\"running\":%d,\"memory_mb\":%d,\"disk_mb\":%d,\"command\":",
              web ? web->instances : 0,
              core->cfg.scheduler ? scheduler_running_count(core->cfg.scheduler, app->guid) : 0,
              app->memory_mb, app->disk_mb);
    core__json_str_or_null(b, app->command);
    /* stored as JSON made by json_dumps, so it is embedded as it is */
    buf_puts(b, ",\"buildpacks\":");
    buf_puts(b, app->buildpacks_json ? app->buildpacks_json : "[]");
    buf_puts(b, ",\"detected_buildpack\":");
    core__json_str_or_null(b, app->detected_buildpack);
    buf_puts(b, ",\"health_check_type\":");
    core__json_str(b, app->health_check_type);
    buf_puts(b, ",\"health_check_http_endpoint\":");
    core__json_str(b, app->health_check_http_endpoint);
    core__fmt(b, ",\"timeout\":%d", app->timeout);
    if (web)
        core__checks_json(b, &web->checks);
    buf_puts(b, ",\"env\":{");
    for (size_t i = 0; i < app->n_env; i++) {
        if (i)
            buf_putc(b, ',');
        core__json_str(b, app->env[i].name);
        buf_putc(b, ':');
        core__json_str(b, app->env[i].value);
    }
    buf_puts(b, "},\"routes\":[");
    for (size_t i = 0; i < nroutes; i++) {
        if (i)
            buf_putc(b, ',');
        buf_putc(b, '"'); /* HOST + PATH, written without building the string */
        core__json_escape(b, routes[i]->host);
        core__json_escape(b, routes[i]->path);
        buf_putc(b, '"');
    }
    buf_puts(b, "],\"droplet\":");
    core__json_str_or_null(b, app->droplet_guid);
    buf_puts(b, ",\"package\":");
    core__json_str_or_null(b, app->package_guid);
    core__image_json(core, b, app);
    buf_puts(b, ",\"kind\":");
    core__json_str(b, app->kind);
    if (app->function_json) {
        buf_puts(b, ",\"function\":");
        buf_puts(b, app->function_json);
    }
    buf_puts(b, ",\"processes\":[");
    for (size_t i = 0; i < app->n_processes; i++) {
        const struct store_process *p = &app->processes[i];
        buf_puts(b, i ? ",{\"type\":" : "{\"type\":");
        core__json_str(b, p->type);
        buf_puts(b, ",\"command\":");
        core__json_str_or_null(b, p->command);
        core__fmt(b, ",\"instances\":%d,\"memory_mb\":%d", p->instances,
                  p->memory_mb ? p->memory_mb : app->memory_mb);
        if (store_process_is_function(p)) {
            buf_puts(b, ",\"function\":");
            core__function_json(b, p);
        }
        core__checks_json(b, &p->checks);
        buf_putc(b, '}');
    }
    /* stored as JSON made by json_dumps, so it is embedded as it is */
    buf_puts(b, "],\"sidecars\":");
    buf_puts(b, app->sidecars_json ? app->sidecars_json : "[]");
    core__fmt(b, ",\"created_at\":\"%s\",\"updated_at\":\"%s\"}", created, updated);
}

const char *api_core__space(struct api_request *req)
{
    const char *space = api_request_space(req);
    return space ? space : STORE_DEFAULT_SPACE_GUID;
}

int api_core__app_lookup(struct api_core *core, struct api_request *req, const char *name,
                         struct store_app **out)
{
    return api_request_app_find(req, core->cfg.store, api_core__space(req), name, out);
}

struct store_app *api_core__app_named(struct api_core *core, struct api_request *req,
                                      const char *name)
{
    struct store_app *app = NULL;
    int rc = api_core__app_lookup(core, req, name, &app);
    if (rc == -EINPROGRESS)
        return NULL; /* the handler runs again once the app is read */
    if (rc == -ENOENT) {
        api_respond_error(req, rc,
                          "no app named \"%s\" in this space: `skiff apps` lists the apps there "
                          "are (`skiff target` says which space)",
                          name);
        return NULL;
    }
    if (rc < 0) {
        api_respond_error(req, rc, CORE_STORE_READ_FAILED);
        return NULL;
    }
    return app;
}

struct store_app *api_core__find_app(struct api_core *core, struct api_request *req)
{
    return api_core__app_named(core, req, api_request_param(req, 0));
}

static void core__name_taken(struct api_request *req, const char *name);

/* The answer to a refused app write (-EEXIST: the name taken; -ESTALE: another writer
 * came first), what naming the write in a 500's message. */
static void core__store_refused(struct api_request *req, const struct store_app *app, int rc,
                                const char *what)
{
    if (rc == -EEXIST)
        core__name_taken(req, app->name);
    else if (rc == -ESTALE)
        api_respond_error(req, SKIFF_E_CONFLICT,
                          "app %s was changed by someone else meanwhile: read it again and retry",
                          app->name);
    else if (rc == -EBUSY) /* the store's bound on queued writes (store_queue_max) */
        api_respond_error(req, SKIFF_E_BUSY,
                          "%s: the database is not answering and too many writes wait for it: "
                          "retry once it answers",
                          what);
    else
        api_respond_error(req, rc == -ECANCELED ? SKIFF_E_UNAVAILABLE : SKIFF_E_INTERNAL,
                          "%s (see skiffd's output)", what);
}

/* An app write of a request's, queued: the request waits for it, the loop does not. */
struct core_app_write {
    struct api_core *core;
    struct api_request *req;
    struct store_app *app;
    const char *what;
    api_core_stored_fn *then;
    void *ctx;
};

static void core__app_written(void *ctx, int rc)
{
    struct core_app_write *w = ctx;
    if (rc < 0) {
        core__store_refused(w->req, w->app, rc, w->what);
        w->then(w->core, NULL, w->app, w->ctx); /* to free what it holds */
    } else {
        w->then(w->core, w->req, w->app, w->ctx);
    }
    store_app_free(w->app);
    free(w);
}

void api_core__app_store_then(struct api_core *core, struct api_request *req, struct store_app *app,
                              bool create, const char *what, api_core_stored_fn *then, void *ctx)
{
    struct core_app_write *w = xcalloc(1, sizeof *w);
    *w = (struct core_app_write){
        .core = core, .req = req, .app = app, .what = what, .then = then, .ctx = ctx};
    int rc = create ? store_app_create_async(core->cfg.store, app, core__app_written, w)
                    : store_app_update_async(core->cfg.store, app, core__app_written, w);
    if (rc < 0)
        core__app_written(w, rc);
}

/* NULL when the store cannot list the app's routes: an app shown without them would look
 * unmapped. */
static json_t *core__app_json_with_routes(struct api_core *core, const struct store_app *app)
{
    struct store_route *routes = NULL;
    size_t n = 0;
    if (store_route_list(core->cfg.store, app->guid, &routes, &n) < 0)
        return NULL;
    const struct store_route **mine = xcalloc(n + 1, sizeof *mine);
    for (size_t i = 0; i < n; i++)
        mine[i] = &routes[i];
    struct buf b = {0};
    api_core__app_write(core, &b, app, mine, n);
    json_t *o = json_loadb(b.data, b.len, 0, NULL);
    buf_free(&b);
    free(mine);
    store_route_list_free(routes, n);
    if (!o)
        o = json_object();
    json_object_set_new(o, "metadata", api_core__metadata_get(core, app->guid));
    return o;
}

void api_core__respond_app(struct api_core *core, struct api_request *req, int status,
                           const struct store_app *app)
{
    json_t *o = core__app_json_with_routes(core, app);
    if (!o) {
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
        return;
    }
    api_respond_json(req, status, o);
}

/* ---- info --------------------------------------------------------------------------------- */

static void core__info(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    const char *url = api_url(core->api);
    char *events = xasprintf("%s/v1", url);
    api_respond_json(req, 200,
                     json_pack("{s:s,s:s,s:s,s:s}", "version", SKIFF_VERSION, "api_url", url,
                               "router_url", core->cfg.router_url, "events_url", events));
    free(events);
}

/* ---- validating app bodies ---------------------------------------------------------------- */

/* The keys core__apply_checks reads. */
#define CORE_CHECK_FIELDS                                                                          \
    "health_check_interval", "health_check_invocation_timeout", "readiness_health_check_type",     \
        "readiness_health_check_http_endpoint", "readiness_health_check_interval",                 \
        "readiness_health_check_invocation_timeout", "log_rate_limit_per_second"

static const char *const core__app_fields[] = {"name",
                                               "instances",
                                               "memory_mb",
                                               "disk_mb",
                                               "command",
                                               "buildpacks",
                                               "env",
                                               "health_check_type",
                                               "health_check_http_endpoint",
                                               "timeout",
                                               "no_route",
                                               "routes",
                                               "kind",
                                               "function",
                                               "processes",
                                               CORE_CHECK_FIELDS,
                                               "sidecars",
                                               NULL};

static bool core__bad(struct api_request *req, const char *field, const char *what)
{
    api_respond_error(req, SKIFF_E_INVALID_VALUE, "\"%s\" %s", field, what);
    return false;
}

static bool core__int_field(struct api_request *req, json_t *obj, const char *key, int min, int max,
                            int *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "\"%s\" must be a whole number from %d to %d",
                          key, min, max);
        return false;
    }
    *out = (int)json_integer_value(v);
    return true;
}

bool api_core__int_field(struct api_request *req, json_t *obj, const char *key, int min, int max,
                         int *out)
{
    return core__int_field(req, obj, key, min, max, out);
}

static bool core__string_field(struct api_request *req, json_t *obj, const char *key, bool nullable,
                               char **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return true;
    if (json_is_null(v) && nullable) {
        free(*out);
        *out = NULL;
        return true;
    }
    if (!json_is_string(v) || strlen(json_string_value(v)) > 4096)
        return core__bad(req, key, nullable ? "must be a string or null" : "must be a string");
    free(*out);
    *out = xstrdup(json_string_value(v));
    return true;
}

/* Sets env from a JSON object; null values unset. Values that are numbers or booleans are
 * kept as their JSON text, as Cloud Foundry does. */
bool api_core__merge_env(struct api_request *req, struct store_app *app, json_t *env)
{
    if (!json_is_object(env))
        return core__bad(req, "env", "must be an object of NAME: value");
    const char *key;
    json_t *v;
    json_object_foreach(env, key, v)
    {
        if (!*key || strchr(key, '=') || strlen(key) > 255) {
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              "environment variable name \"%s\" is not valid (no '=', 1 to 255 "
                              "characters)",
                              key);
            return false;
        }
        char *value = NULL;
        if (json_is_string(v))
            value = xstrdup(json_string_value(v));
        else if (json_is_number(v) || json_is_boolean(v))
            value = json_dumps(v, JSON_ENCODE_ANY);
        else if (!json_is_null(v)) {
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              "environment variable \"%s\" must be a string (or null to unset)",
                              key);
            return false;
        }
        size_t i;
        for (i = 0; i < app->n_env; i++)
            if (!strcmp(app->env[i].name, key))
                break;
        if (i < app->n_env) {
            if (value) {
                free(app->env[i].value);
                app->env[i].value = value;
            } else {
                free(app->env[i].name);
                free(app->env[i].value);
                app->n_env--;
                if (i < app->n_env)
                    app->env[i] = app->env[app->n_env];
            }
        } else if (value) {
            app->env = xrealloc(app->env, (app->n_env + 1) * sizeof *app->env);
            app->env[app->n_env].name = xstrdup(key);
            app->env[app->n_env].value = value;
            app->n_env++;
        }
    }
    return true;
}

static struct store_process *core__process_ensure(struct store_app *app, const char *type)
{
    struct store_process *p = store_app_process(app, type);
    if (p)
        return p;
    app->processes = xrealloc(app->processes, (app->n_processes + 1) * sizeof *app->processes);
    p = &app->processes[app->n_processes++];
    memset(p, 0, sizeof *p);
    p->type = xstrdup(type);
    p->instances = strcmp(type, "web") ? 0 : 1;
    store_process_default_policy(app->kind, p);
    return p;
}

/* Whether e may be a check's HTTP endpoint: a path that goes into the request line as it is,
 * so nothing that would end or split that line. */
static bool core__endpoint_ok(const char *e)
{
    return e && e[0] == '/' && strlen(e) <= 1024 && !strpbrk(e, " \t\r\n");
}
#define CORE_ENDPOINT_RULE "must be a path starting with / (no spaces, at most 1024 characters)"

/* Reads the CORE_CHECK_FIELDS of obj (an app body, for its web process, or an item of its
 * "processes") into c; answers and returns false on error, leaving c as it was. */
static bool core__apply_checks(struct api_request *req, json_t *obj, struct store_process_checks *c)
{
    struct store_process_checks n = *c; /* strings still c's: replaced below on success */
    if (!core__int_field(req, obj, "health_check_interval", 1, CORE_MAX_CHECK_INTERVAL_S,
                         &n.health_interval_s) ||
        !core__int_field(req, obj, "health_check_invocation_timeout", 1, CORE_MAX_CHECK_TIMEOUT_S,
                         &n.health_timeout_s) ||
        !core__int_field(req, obj, "readiness_health_check_interval", 1, CORE_MAX_CHECK_INTERVAL_S,
                         &n.readiness_interval_s) ||
        !core__int_field(req, obj, "readiness_health_check_invocation_timeout", 1,
                         CORE_MAX_CHECK_TIMEOUT_S, &n.readiness_timeout_s))
        return false;
    json_t *type = json_object_get(obj, "readiness_health_check_type");
    const char *t = json_string_value(type);
    if (type && !json_is_null(type) &&
        (!t || (strcmp(t, "http") && strcmp(t, "port") && strcmp(t, "process"))))
        return core__bad(req, "readiness_health_check_type",
                         "must be \"http\", \"port\" or \"process\" (or null for none)");
    json_t *ep = json_object_get(obj, "readiness_health_check_http_endpoint");
    const char *e = json_string_value(ep);
    if (ep && !json_is_null(ep) && !core__endpoint_ok(e))
        return core__bad(req, "readiness_health_check_http_endpoint", CORE_ENDPOINT_RULE);
    json_t *rate = json_object_get(obj, "log_rate_limit_per_second");
    if (rate) {
        json_int_t r = json_is_integer(rate) ? json_integer_value(rate) : -2;
        if (r < -1 || r > CORE_MAX_LOG_RATE)
            return core__bad(req, "log_rate_limit_per_second",
                             "must be -1 (unlimited) or a number of bytes a second from 0 to "
                             "1073741824 (1G)");
        n.log_rate_limited = r >= 0;
        n.log_rate_limit = r >= 0 ? r : 0;
    }
    if (type) {
        free(c->readiness_type);
        n.readiness_type = t ? xstrdup(t) : NULL;
    }
    if (ep) {
        free(c->readiness_endpoint);
        n.readiness_endpoint = e ? xstrdup(e) : NULL;
    }
    *c = n;
    return true;
}

/* Whether the app has (or its current droplet declares) process type `type`. */
static bool core__process_type_exists(const struct store_app *app, json_t *droplet_types,
                                      const char *type)
{
    return store_app_process(app, type) || json_object_get(droplet_types, type);
}

/* Sidecars (Cloud Foundry's): "sidecars" of the body replaces the app's (null or [] removes
 * them); then, whatever changed, each process's sidecars must leave it some memory of its
 * own. Answers and returns false on error. */
static bool core__apply_sidecars(struct api_core *core, struct api_request *req,
                                 struct store_app *app, json_t *body)
{
    json_t *given = json_object_get(body, "sidecars");
    if (given && !json_is_null(given)) {
        static const char *const fields[] = {"name", "process_types", "command", "memory_mb", NULL};
        if (!json_is_array(given) || json_array_size(given) > CONTAINER_SIDECARS_MAX)
            return core__bad(req, "sidecars",
                             "must be a list of at most 8 {name, process_types, command, "
                             "memory_mb}");
        json_t *droplet_types = NULL;
        struct store_droplet *drop = NULL;
        if (app->droplet_guid &&
            store_droplet_get(core->cfg.store, app->droplet_guid, &drop) == 0 &&
            drop->process_types_json)
            droplet_types = json_loads(drop->process_types_json, 0, NULL);
        store_droplet_free(drop);
        bool ok = true;
        size_t i;
        json_t *sc;
        json_array_foreach(given, i, sc)
        {
            if (!json_is_object(sc)) {
                ok = core__bad(req, "sidecars", "must hold objects");
                break;
            }
            if (!(ok = api_json_check_fields(req, sc, fields)))
                break;
            const char *name = json_string_value(json_object_get(sc, "name"));
            if (!name || !name_valid(name) || strlen(name) > CONTAINER_SIDECAR_NAME_MAX) {
                ok = core__bad(req, "sidecars[].name",
                               "must be a name of lowercase letters, digits and dashes (at most "
                               "63)");
                break;
            }
            for (size_t k = 0; k < i && ok; k++)
                if (!strcmp(name,
                            json_string_value(json_object_get(json_array_get(given, k), "name")))) {
                    api_respond_error(req, SKIFF_E_INVALID_VALUE,
                                      "sidecar \"%s\" is named twice: give each sidecar a name of "
                                      "its own",
                                      name);
                    ok = false;
                }
            const char *command = json_string_value(json_object_get(sc, "command"));
            if (ok &&
                (!command || !command[strspn(command, " \t\r\n")] || strlen(command) > 4096)) {
                api_respond_error(req, SKIFF_E_INVALID_VALUE,
                                  "sidecar \"%s\" needs a command: what runs beside the process, "
                                  "e.g. \"./proxy --port 8081\" (at most 4096 characters)",
                                  name);
                ok = false;
            }
            json_t *types = json_object_get(sc, "process_types");
            if (ok && (!json_is_array(types) || !json_array_size(types))) {
                api_respond_error(req, SKIFF_E_INVALID_VALUE,
                                  "sidecar \"%s\" needs process_types: the process types whose "
                                  "instances it runs in, e.g. [\"web\"]",
                                  name);
                ok = false;
            }
            size_t k;
            json_t *t;
            json_array_foreach(types, k, t)
            {
                if (!ok)
                    break;
                const char *type = json_string_value(t);
                if (!type || !core__process_type_exists(app, droplet_types, type)) {
                    char *have = xstrdup("");
                    for (size_t p = 0; p < app->n_processes; p++) {
                        char *h =
                            xasprintf("%s%s%s", have, *have ? ", " : "", app->processes[p].type);
                        free(have);
                        have = h;
                    }
                    api_respond_error(req, SKIFF_E_INVALID_VALUE,
                                      "sidecar \"%s\": the app has no process type \"%s\" (it "
                                      "has: %s); declare it under processes: in the manifest, "
                                      "or in a Procfile and push the app first",
                                      name, type ? type : "(not a string)", have);
                    free(have);
                    ok = false;
                }
            }
            json_t *mem = json_object_get(sc, "memory_mb");
            if (ok && mem &&
                (!json_is_integer(mem) || json_integer_value(mem) < 1 ||
                 json_integer_value(mem) > (1 << 20))) {
                api_respond_error(req, SKIFF_E_INVALID_VALUE,
                                  "sidecar \"%s\": memory_mb must be a whole number of MB from 1 "
                                  "to %d",
                                  name, 1 << 20);
                ok = false;
            }
            if (!ok)
                break;
        }
        json_decref(droplet_types);
        if (!ok)
            return false;
        free(app->sidecars_json);
        app->sidecars_json = json_array_size(given) ? json_dumps(given, JSON_COMPACT) : NULL;
    } else if (given) {
        free(app->sidecars_json);
        app->sidecars_json = NULL;
    }
    /* Cloud Foundry's rule: a sidecar's memory comes out of its process's, which must keep
     * some for the program */
    for (size_t p = 0; p < app->n_processes; p++) {
        const struct store_process *proc = &app->processes[p];
        struct store_sidecar *list = NULL;
        size_t n = 0;
        if (store_app_sidecars(app, proc->type, &list, &n) < 0)
            return core__bad(req, "sidecars", "are stored broken: set them again");
        int total = 0;
        for (size_t k = 0; k < n; k++)
            total += list[k].memory_mb;
        int memory = proc->memory_mb ? proc->memory_mb : app->memory_mb;
        if (n && total >= memory) {
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              "the sidecars of process %s take %d MB of memory, not less than "
                              "the process's %d MB: a sidecar's memory comes out of its "
                              "process's; give the sidecars less or the process more",
                              proc->type, total, memory);
            store_sidecars_free(list, n);
            return false;
        }
        store_sidecars_free(list, n);
    }
    return true;
}

/* Applies the fields of a POST/PUT/PATCH body to app; answers and returns false on error. */
static bool core__apply(struct api_core *core, struct api_request *req, struct store_app *app,
                        json_t *body)
{
    struct store_process *web = core__process_ensure(app, "web");
    int instances = web->instances;
    if (!core__int_field(req, body, "instances", 0, CORE_MAX_INSTANCES, &instances) ||
        !core__int_field(req, body, "memory_mb", 1, 1 << 20, &app->memory_mb) ||
        !core__int_field(req, body, "disk_mb", 1, 1 << 22, &app->disk_mb) ||
        !core__int_field(req, body, "timeout", 1, 3600, &app->timeout) ||
        !core__string_field(req, body, "command", true, &app->command) ||
        !core__string_field(req, body, "health_check_http_endpoint", false,
                            &app->health_check_http_endpoint))
        return false;
    web = core__process_ensure(app, "web");
    web->instances = instances;
    if (!core__apply_checks(req, body, &web->checks))
        return false;
    json_t *v;
    if ((v = json_object_get(body, "health_check_type"))) {
        const char *t = json_string_value(v);
        if (!t ||
            (strcmp(t, "port") && strcmp(t, "http") && strcmp(t, "process") && strcmp(t, "none")))
            return core__bad(req, "health_check_type", "must be \"port\", \"http\" or \"process\"");
        free(app->health_check_type);
        app->health_check_type = xstrdup(strcmp(t, "none") ? t : "process");
    }
    if (app->health_check_http_endpoint && !core__endpoint_ok(app->health_check_http_endpoint))
        return core__bad(req, "health_check_http_endpoint", CORE_ENDPOINT_RULE);
    if ((v = json_object_get(body, "kind"))) {
        const char *k = json_string_value(v);
        if (!k || (strcmp(k, "app") && strcmp(k, "function")))
            return core__bad(req, "kind", "must be \"app\" or \"function\"");
        free(app->kind);
        app->kind = xstrdup(k);
    }
    if ((v = json_object_get(body, "buildpacks"))) {
        if (json_is_null(v))
            v = NULL;
        else if (!json_is_array(v))
            return core__bad(req, "buildpacks", "must be a list of buildpack names or paths");
        size_t i;
        json_t *b;
        json_array_foreach(v, i, b)
        {
            if (!json_is_string(b) || !*json_string_value(b))
                return core__bad(req, "buildpacks", "must be a list of non-empty strings");
        }
        free(app->buildpacks_json);
        app->buildpacks_json = v ? json_dumps(v, JSON_COMPACT) : xstrdup("[]");
    }
    if ((v = json_object_get(body, "env")) && !api_core__merge_env(req, app, v))
        return false;
    if ((v = json_object_get(body, "function"))) {
        if (json_is_null(v)) {
            free(app->function_json);
            app->function_json = NULL;
        } else {
            json_t *h = json_object_get(v, "handler");
            json_t *rt = json_object_get(v, "runtime");
            if (!json_is_object(v) || !json_is_string(h) || !strchr(json_string_value(h), ':') ||
                (rt && !json_is_string(rt)))
                return core__bad(req, "function",
                                 "must be {\"handler\": \"file:function\", \"runtime\": "
                                 "\"python|node|shell\"}");
            free(app->function_json);
            app->function_json = json_dumps(v, JSON_COMPACT);
            if (!json_object_get(body, "kind")) {
                free(app->kind);
                app->kind = xstrdup("function");
            }
        }
    }
    if ((v = json_object_get(body, "processes"))) {
        if (!json_is_array(v))
            return core__bad(req, "processes",
                             "must be a list of {type, command, instances, "
                             "memory_mb}");
        size_t i;
        json_t *p;
        json_array_foreach(v, i, p)
        {
            static const char *const fields[] = {"type",      "command",         "instances",
                                                 "memory_mb", CORE_CHECK_FIELDS, NULL};
            if (!json_is_object(p))
                return core__bad(req, "processes", "must hold objects");
            if (!api_json_check_fields(req, p, fields))
                return false;
            const char *type = json_string_value(json_object_get(p, "type"));
            if (!type || !name_valid(type))
                return core__bad(req, "processes[].type",
                                 "must be a name of lowercase letters, digits and dashes");
            struct store_process *proc = core__process_ensure(app, type);
            char *cmd = proc->command;
            proc->command = NULL;
            if (!core__string_field(req, p, "command", true, &cmd)) {
                free(cmd);
                return false;
            }
            proc = core__process_ensure(app, type);
            proc->command = cmd;
            if (!core__int_field(req, p, "instances", 0, CORE_MAX_INSTANCES, &proc->instances) ||
                !core__int_field(req, p, "memory_mb", 0, 1 << 20, &proc->memory_mb) ||
                !core__apply_checks(req, p, &proc->checks))
                return false;
        }
    }
    /* the kind may have changed: each process's scaling policy follows it, unless its user
     * set one (`skiff autoscale`) or it is a function inside the app (it keeps its own, set
     * through its own endpoint) */
    for (size_t i = 0; i < app->n_processes; i++)
        if (!store_process_request_scaled(&app->processes[i]) &&
            !store_process_is_function(&app->processes[i]))
            store_process_default_policy(app->kind, &app->processes[i]);
    return core__apply_sidecars(core, req, app, body);
}

/* host[/path] -> lower-case host and path; the domain it ends in. Answers on error. */
static bool core__parse_route(struct api_core *core, struct api_request *req, const char *spec,
                              const char *path_in, char **host, char **path, char **domain)
{
    const char *slash = strchr(spec, '/');
    size_t hl = slash ? (size_t)(slash - spec) : strlen(spec);
    char *h = xstrndup(spec, hl);
    for (char *q = h; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    const char *p = path_in ? path_in : (slash ? slash : "");
    bool ok = hl > 0 && hl < 254;
    for (const char *q = h; ok && *q; q++)
        if (!(isalnum((unsigned char)*q) || *q == '-' || *q == '.' || *q == '*'))
            ok = false;
    if (!ok) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "route \"%s\" is not valid: use HOST.DOMAIN[/PATH], e.g. "
                          "myapp.localhost",
                          spec);
        free(h);
        return false;
    }
    if (*p && (p[0] != '/' || strlen(p) > 1024 || strchr(p, '?') || strchr(p, ' '))) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "route path \"%s\" is not valid: it must start with / and hold no "
                          "spaces or '?'",
                          p);
        free(h);
        return false;
    }
    char **domains = NULL, **owners = NULL;
    store_domain_list(core->cfg.store, &domains, NULL, &owners);
    const char *best = NULL;
    const struct auth_space *space =
        core->cfg.auth ? auth_space_get(core->cfg.auth, api_core__space(req)) : NULL;
    for (char **d = domains; d && *d; d++) {
        /* shared domains, and the private ones of the space's org: another org's is unknown */
        const char *owner = owners[d - domains];
        if (*owner && (!space || strcmp(owner, space->org_guid)))
            continue;
        size_t dl = strlen(*d);
        bool match =
            !strcmp(h, *d) || (hl > dl && h[hl - dl - 1] == '.' && !strcmp(h + hl - dl, *d));
        if (match && (!best || strlen(*d) > strlen(best)))
            best = *d;
    }
    if (!best) {
        api_respond_error(req, SKIFF_E_UNKNOWN_DOMAIN,
                          "the host \"%s\" is not in a known domain: use NAME.localhost, or add "
                          "the domain first (`skiff create-domain`)",
                          h);
        free(h);
        strv_free(domains);
        strv_free(owners);
        return false;
    }
    *domain = xstrdup(best);
    strv_free(domains);
    strv_free(owners);
    *host = h;
    /* "/" alone means the whole host */
    *path = xstrdup(strcmp(p, "/") ? p : "");
    size_t pl = strlen(*path);
    while (pl > 1 && (*path)[pl - 1] == '/')
        (*path)[--pl] = '\0';
    return true;
}

struct api_core_routes {
    struct api_core *core;
    struct api_request *req; /* NULL once answered */
    int pending;             /* writes not finished, and 1 more until the end is known */
    int rc;                  /* the first refusal, of route */
    char *route;
    bool wrote; /* a route changed: the routers are told */
    api_core_routed_fn *then;
    void *ctx;
};

/* One queued route write of rw's, naming its route for an answer. */
struct core_route_write {
    struct api_core_routes *rw;
    char *route;
};

struct api_core_routes *api_core__routes_begin(struct api_core *core, struct api_request *req,
                                               api_core_routed_fn *then, void *ctx)
{
    struct api_core_routes *rw = xcalloc(1, sizeof *rw);
    *rw =
        (struct api_core_routes){.core = core, .req = req, .pending = 1, .then = then, .ctx = ctx};
    return rw;
}

/* The answer to a refused route write. */
static void core__route_refused(struct api_request *req, int rc, const char *route)
{
    if (rc == -EEXIST)
        api_respond_error(req, SKIFF_E_ROUTE_TAKEN,
                          "the route %s is mapped to another app: unmap it there first or pick "
                          "another host",
                          route);
    else if (rc == -ENOENT)
        api_respond_error(req, rc, "the route %s was unmapped meanwhile: `skiff routes` lists them",
                          route);
    else
        api_respond_error(req, rc == -ECANCELED ? SKIFF_E_UNAVAILABLE : SKIFF_E_INTERNAL,
                          "cannot store the route %s (see skiffd's output)", route);
}

static void core__routes_done(struct api_core_routes *rw)
{
    if (--rw->pending > 0)
        return;
    if (rw->wrote)
        api_core__routes_changed(rw->core);
    if (rw->req && rw->rc < 0) {
        core__route_refused(rw->req, rw->rc, rw->route);
        rw->req = NULL;
    }
    rw->then(rw->core, rw->req, rw->ctx);
    free(rw->route);
    free(rw);
}

void api_core__routes_end(struct api_core_routes *rw)
{
    core__routes_done(rw);
}

static void core__route_written(void *ctx, int rc)
{
    struct core_route_write *w = ctx;
    struct api_core_routes *rw = w->rw;
    if (rc < 0 && rw->rc == 0) {
        rw->rc = rc;
        rw->route = w->route;
        w->route = NULL;
    }
    rw->wrote |= rc == 0;
    free(w->route);
    free(w);
    core__routes_done(rw);
}

/* Queues one of rw's writes (add: route; else the update of host+path). */
static void core__route_queue(struct api_core_routes *rw, const struct store_route *route, bool add,
                              int https_only)
{
    struct core_route_write *w = xcalloc(1, sizeof *w);
    w->rw = rw;
    w->route = xasprintf("%s%s", route->host, route->path);
    rw->pending++;
    struct store *st = rw->core->cfg.store;
    int rc = add ? store_route_add_async(st, route, core__route_written, w)
                 : store_route_update_async(st, route->host, route->path, route->balance,
                                            route->protocol, https_only, core__route_written, w);
    if (rc < 0)
        core__route_written(w, rc);
}

/* A route already the app's is fine (and takes the balance and protocol given); another
 * app's is route_taken. Decided on the routes as queued writes leave them. */
bool api_core__map_route(struct api_core *core, struct api_core_routes *rw,
                         const struct store_app *app, const char *spec, const char *path_in,
                         const char *balance, const char *protocol, int https_only)
{
    struct api_request *req = rw->req;
    char *host = NULL, *path = NULL, *domain = NULL;
    if (!req || !core__parse_route(core, req, spec, path_in, &host, &path, &domain)) {
        rw->req = NULL;
        return false;
    }
    struct store_route r = {.host = host,
                            .path = path,
                            .app_guid = (char *)app->guid,
                            .domain = domain,
                            .balance = (char *)balance,
                            .protocol = (char *)protocol,
                            .https_only = https_only == 1};
    uuid_generate_v4(r.guid);
    struct store_route *all = NULL;
    size_t n = 0;
    const struct store_route *had = NULL;
    bool ok = store_route_list(core->cfg.store, NULL, &all, &n) == 0;
    if (!ok)
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(all[i].host, host) && !strcmp(all[i].path, path))
            had = &all[i];
    if (ok && had && strcmp(had->app_guid, app->guid)) {
        api_respond_error(req, SKIFF_E_ROUTE_TAKEN,
                          "the route %s%s is mapped to another app: unmap it there first or "
                          "pick another host",
                          host, path);
        ok = false;
    } else if (ok && !had) {
        core__route_queue(rw, &r, true, -1);
    } else if (ok) {
        bool change = (balance && strcmp(had->balance, balance)) ||
                      (protocol && strcmp(had->protocol, protocol));
        int https = https_only >= 0 && had->https_only != (https_only == 1) ? https_only : -1;
        if (!change) {
            r.balance = r.protocol = NULL;
        }
        if (change || https >= 0)
            core__route_queue(rw, &r, false, https);
    }
    if (!ok)
        rw->req = NULL;
    store_route_list_free(all, n);
    free(host);
    free(path);
    free(domain);
    return ok;
}

/* Whether host (with no path) is mapped to an app other than app_guid. */
static bool core__host_taken(struct api_core *core, const char *host, const char *app_guid)
{
    struct store_route *all = NULL;
    size_t n = 0;
    bool taken = false;
    if (store_route_list(core->cfg.store, NULL, &all, &n) < 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(all[i].host, host) && !*all[i].path && strcmp(all[i].app_guid, app_guid))
            taken = true;
    store_route_list_free(all, n);
    return taken;
}

/* How many routes a create or update body asks for (at most; some may be the app's already). */
static int core__routes_wanted(json_t *body, bool creating)
{
    json_t *routes = json_object_get(body, "routes");
    if (json_is_array(routes))
        return (int)json_array_size(routes);
    return creating && !json_is_true(json_object_get(body, "no_route")) ? 1 : 0;
}

/* Queues the routes a create or update body asks for in rw; false after answering. */
static bool core__map_routes(struct api_core *core, struct api_core_routes *rw,
                             const struct store_app *app, json_t *body, bool creating)
{
    struct api_request *req = rw->req;
    json_t *routes = json_object_get(body, "routes");
    json_t *no_route = json_object_get(body, "no_route");
    if (no_route && !json_is_boolean(no_route))
        return core__bad(req, "no_route", "must be true or false");
    if (routes && !json_is_null(routes)) {
        if (!json_is_array(routes))
            return core__bad(req, "routes", "must be a list of \"host[/path]\"");
        size_t i;
        json_t *r;
        json_array_foreach(routes, i, r)
        {
            if (!json_is_string(r))
                return core__bad(req, "routes", "must be a list of \"host[/path]\"");
        }
        json_array_foreach(routes, i, r)
        {
            if (!api_core__map_route(core, rw, app, json_string_value(r), NULL, NULL, NULL, -1))
                return false;
        }
        return true;
    }
    if (creating && !json_is_true(no_route)) {
        /* NAME.localhost; when another space's app has it, NAME-SPACE-ORG.localhost, so a
         * name used in two spaces still pushes without a route given */
        char *spec = xasprintf("%s.localhost", app->name);
        if (core__host_taken(core, spec, app->guid) && core->cfg.auth) {
            const struct auth_space *space = auth_space_get(core->cfg.auth, app->space_guid);
            const struct auth_org *org =
                space ? auth_org_find(core->cfg.auth, space->org_guid) : NULL;
            if (space && org) {
                free(spec);
                spec = xasprintf("%s-%s-%s.localhost", app->name, space->name, org->name);
            }
        }
        bool ok = api_core__map_route(core, rw, app, spec, NULL, NULL, NULL, -1);
        free(spec);
        return ok;
    }
    return true;
}

/* Validates before anything is stored (so an error leaves nothing half-made). */
static bool core__check_routes(struct api_core *core, struct api_request *req, json_t *body)
{
    json_t *routes = json_object_get(body, "routes");
    if (!routes || json_is_null(routes))
        return true;
    if (!json_is_array(routes))
        return core__bad(req, "routes", "must be a list of \"host[/path]\"");
    size_t i;
    json_t *r;
    json_array_foreach(routes, i, r)
    {
        if (!json_is_string(r))
            return core__bad(req, "routes", "must be a list of \"host[/path]\"");
        char *host = NULL, *path = NULL, *domain = NULL;
        if (!core__parse_route(core, req, json_string_value(r), NULL, &host, &path, &domain))
            return false;
        free(host);
        free(path);
        free(domain);
    }
    return true;
}

/* ---- apps --------------------------------------------------------------------------------- */

static int core__route_by_app(const void *a, const void *b)
{
    const struct store_route *const *x = a, *const *y = b;
    return strcmp((*x)->app_guid, (*y)->app_guid);
}

/* By app, then as GET /v1/apps/NAME lists them (host, path): qsort is not stable, so the
 * store's order within an app has to be asked for. */
static int core__route_by_app_host_path(const void *a, const void *b)
{
    const struct store_route *const *x = a, *const *y = b;
    int c = core__route_by_app(a, b);
    if (!c)
        c = strcmp((*x)->host, (*y)->host);
    return c ? c : strcmp((*x)->path, (*y)->path);
}

static void core__apps_list(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    char space[37]; /* the request is gone once answered */
    snprintf(space, sizeof space, "%s", api_core__space(req));
    const char *selector = api_request_query(req, "label_selector");
    char why[200];
    json_t *none = json_object();
    int checked = selector ? api_labels_match(none, selector, why, sizeof why) : 0;
    json_decref(none);
    if (checked < 0) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "label_selector: %s", why);
        return;
    }
    if (!selector && core->apps_cache &&
        core->apps_cache_changes == store_change_count(core->cfg.store) &&
        core->apps_cache_instance_changes == core->instance_changes &&
        !strcmp(core->apps_cache_space, space)) {
        api_respond(req, 200, "application/json", core->apps_cache, core->apps_cache_len);
        return;
    }
    struct store_app **apps = NULL;
    size_t n = 0;
    struct store_route *routes = NULL;
    size_t nr = 0;
    uint64_t changes = store_change_count(core->cfg.store);
    if (store_app_list_in(core->cfg.store, space, &apps, &n) < 0 ||
        store_route_list(core->cfg.store, NULL, &routes, &nr) < 0) {
        store_app_list_free(apps, n);
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
        return;
    }
    /* routes grouped by app, in host and path order within an app */
    const struct store_route **by_app = xcalloc(nr + 1, sizeof *by_app);
    for (size_t i = 0; i < nr; i++)
        by_app[i] = &routes[i];
    qsort(by_app, nr, sizeof *by_app, core__route_by_app_host_path);
    struct buf b = {0};
    buf_reserve(&b, n * 600 + 64);
    buf_puts(&b, "{\"apps\":[");
    bool first_app = true;
    for (size_t i = 0; i < n; i++) {
        if (selector) {
            json_t *m = api_core__metadata_get(core, apps[i]->guid);
            int match = api_labels_match(json_object_get(m, "labels"), selector, why, sizeof why);
            json_decref(m);
            if (match != 1)
                continue;
        }
        if (!first_app)
            buf_putc(&b, ',');
        first_app = false;
        struct store_route key = {.app_guid = apps[i]->guid};
        const struct store_route *kp = &key;
        const struct store_route **first =
            nr ? bsearch(&kp, by_app, nr, sizeof *by_app, core__route_by_app) : NULL;
        size_t count = 0;
        if (first) {
            while (first > by_app && !strcmp(first[-1]->app_guid, apps[i]->guid))
                first--;
            while (first + count < by_app + nr && !strcmp(first[count]->app_guid, apps[i]->guid))
                count++;
        }
        api_core__app_write(core, &b, apps[i], first, count);
    }
    buf_puts(&b, "]}\n");
    api_respond(req, 200, "application/json", b.data, b.len);
    if (selector) { /* only the whole list is kept */
        buf_free(&b);
        free(by_app);
        store_app_list_free(apps, n);
        store_route_list_free(routes, nr);
        return;
    }
    free(core->apps_cache);
    core->apps_cache_len = b.len;
    core->apps_cache = buf_steal(&b);
    core->apps_cache_changes = changes;
    core->apps_cache_instance_changes = core->instance_changes;
    snprintf(core->apps_cache_space, sizeof core->apps_cache_space, "%s", space);
    free(by_app);
    store_app_list_free(apps, n);
    store_route_list_free(routes, nr);
}

static struct store_app *core__new_app(const char *name)
{
    struct store_app *app = xcalloc(1, sizeof *app);
    uuid_generate_v4(app->guid);
    app->name = xstrdup(name);
    app->state = xstrdup("STOPPED");
    app->kind = xstrdup("app");
    app->memory_mb = 256;
    app->disk_mb = 1024;
    app->timeout = 60;
    app->buildpacks_json = xstrdup("[]");
    app->health_check_type = xstrdup("port");
    app->health_check_http_endpoint = xstrdup("/");
    app->created_at = app->updated_at = time_now_ms();
    return app;
}

/* After an app was stored: the scheduler converges, and a changed web instance count
 * (before < 0: a new app) is logged and told to subscribers. */
static void core__changed(struct api_core *core, const struct store_app *app, int before)
{
    const struct store_process *web = store_app_process(app, "web");
    if (core->cfg.scheduler)
        scheduler_app_changed(core->cfg.scheduler, app->guid);
    if (before < 0 || !web || web->instances == before)
        return;
    logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT, "Scaled app %s to %d instances",
                 app->name, web->instances);
    struct platform_event ev = PLATFORM_APP_EVENT(PLATFORM_APP_SCALED, app->guid, app->name);
    ev.process_type = "web";
    ev.instances = web->instances;
    hub_publish(core->cfg.hub, &ev);
}

/* Adds what app takes to u: its memory and instances over all its processes, the memory of
 * its tasks that run, itself, and its routes among all. */
static void core__usage_add(struct auth_usage *u, const struct store_app *app,
                            const struct store_route *routes, size_t nroutes,
                            const struct store_task *tasks, size_t ntasks)
{
    for (size_t i = 0; i < ntasks; i++)
        if (!strcmp(tasks[i].app_guid, app->guid) && api_task_active(&tasks[i]) &&
            tasks[i].memory_mb > u->use[AUTH_QUOTA_INSTANCE_MEMORY_MB])
            u->use[AUTH_QUOTA_INSTANCE_MEMORY_MB] = tasks[i].memory_mb;
    u->use[AUTH_QUOTA_TOTAL_MEMORY_MB] += api_core__tasks_memory_mb(tasks, ntasks, app->guid);
    for (size_t i = 0; i < app->n_processes; i++) {
        const struct store_process *p = &app->processes[i];
        int64_t mb = p->memory_mb ? p->memory_mb : app->memory_mb;
        u->use[AUTH_QUOTA_TOTAL_MEMORY_MB] += mb * p->instances;
        u->use[AUTH_QUOTA_INSTANCES] += p->instances;
        if (p->instances && mb > u->use[AUTH_QUOTA_INSTANCE_MEMORY_MB])
            u->use[AUTH_QUOTA_INSTANCE_MEMORY_MB] = mb;
    }
    u->use[AUTH_QUOTA_APPS]++;
    for (size_t i = 0; i < nroutes; i++)
        if (!strcmp(routes[i].app_guid, app->guid))
            u->use[AUTH_QUOTA_ROUTES]++;
}

bool api_core__quota_admits(struct api_core *core, struct api_request *req,
                            const struct store_app *app, int extra_routes)
{
    struct auth *auth = core->cfg.auth;
    const struct auth_space *space = auth ? auth_space_get(auth, app->space_guid) : NULL;
    const struct auth_org *org = space ? auth_org_find(auth, space->org_guid) : NULL;
    const struct auth_quota *sq =
        space && space->quota_guid[0] ? auth_quota_find(auth, space->quota_guid) : NULL;
    const struct auth_quota *oq =
        org && org->quota_guid[0] ? auth_quota_find(auth, org->quota_guid) : NULL;
    if (!sq && !oq)
        return true;
    struct store_app **apps = NULL;
    size_t n = 0;
    struct store_route *routes = NULL;
    size_t nr = 0;
    struct store_task *tasks = NULL;
    size_t nt = 0;
    if (store_app_list(core->cfg.store, &apps, &n) < 0 ||
        store_route_list(core->cfg.store, NULL, &routes, &nr) < 0 ||
        store_task_list(core->cfg.store, NULL, &tasks, &nt) < 0) {
        store_app_list_free(apps, n);
        store_route_list_free(routes, nr);
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
        return false;
    }
    struct auth_usage in_space = {{0}}, in_org = {{0}};
    for (size_t i = 0; i < n; i++) {
        if (!strcmp(apps[i]->guid, app->guid))
            continue; /* counted as it would be, below */
        const struct auth_space *s = auth_space_get(auth, apps[i]->space_guid);
        if (s && !strcmp(s->guid, space->guid))
            core__usage_add(&in_space, apps[i], routes, nr, tasks, nt);
        if (s && !strcmp(s->org_guid, space->org_guid))
            core__usage_add(&in_org, apps[i], routes, nr, tasks, nt);
    }
    core__usage_add(&in_space, app, routes, nr, tasks, nt);
    core__usage_add(&in_org, app, routes, nr, tasks, nt);
    store_task_list_free(tasks, nt);
    in_space.use[AUTH_QUOTA_ROUTES] += extra_routes;
    in_org.use[AUTH_QUOTA_ROUTES] += extra_routes;
    store_app_list_free(apps, n);
    store_route_list_free(routes, nr);
    char where[2 * AUTH_NAME_MAX + 16], msg[512];
    snprintf(where, sizeof where, "space %s/%s", org ? org->name : "?", space->name);
    bool ok = auth_quota_admits(sq, &in_space, where, msg, sizeof msg);
    if (ok) {
        snprintf(where, sizeof where, "org %s", org ? org->name : "?");
        ok = auth_quota_admits(oq, &in_org, where, msg, sizeof msg);
    }
    if (!ok)
        api_respond_error(req, SKIFF_E_QUOTA, "%s", msg);
    return ok;
}

static void core__name_taken(struct api_request *req, const char *name)
{
    api_respond_error(req, SKIFF_E_NAME_TAKEN,
                      "an app named \"%s\" exists already: pick another name, or `skiff delete "
                      "%s` first",
                      name, name);
}

/* A create, update or PATCH of an app once its write is made: its routes, the log line,
 * the scheduler, the answer (201 for a new app). */
struct core_upsert {
    json_t *body;
    int before; /* the web instances before; -1 for a new app */
    bool patch;
    struct store_app *app; /* as written, once it is */
};

/* Once the app's routes are written too. */
static void core__upsert_routed(struct api_core *core, struct api_request *req, void *ctx)
{
    struct core_upsert *u = ctx;
    bool creating = u->before < 0;
    struct store_app *app = u->app;
    if (req) {
        if (u->patch)
            start_trace("api: stored");
        else
            logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT, "%s app %s",
                         creating ? "Created" : "Updated", app->name);
        core__changed(core, app, u->before);
        api_core__respond_app(core, req, creating ? 201 : 200, app);
        if (u->patch)
            start_trace("api: answered");
    }
    store_app_free(app);
    json_decref(u->body);
    free(u);
}

static void core__upserted(struct api_core *core, struct api_request *req, struct store_app *app,
                           void *ctx)
{
    struct core_upsert *u = ctx;
    if (!req) {
        json_decref(u->body);
        free(u);
        return;
    }
    u->app = store_app_dup(app);
    struct api_core_routes *rw = api_core__routes_begin(core, req, core__upsert_routed, u);
    if (!core__map_routes(core, rw, app, u->body, u->before < 0))
        rw->req = NULL; /* answered */
    api_core__routes_end(rw);
}

/* POST /v1/apps and PUT /v1/apps/NAME (create or update). */
static void core__app_upsert(struct api_core *core, struct api_request *req, const char *name,
                             json_t *body, bool allow_update)
{
    if (!name_valid(name)) {
        api_respond_error(req, SKIFF_E_INVALID_NAME,
                          "\"%s\" is not a valid app name: use 1 to 63 lowercase letters, digits "
                          "and dashes, starting with a letter or digit",
                          name);
        return;
    }
    if (!core__check_routes(core, req, body))
        return;
    struct store_app *app = NULL;
    int rc = api_core__app_lookup(core, req, name, &app);
    if (rc == -EINPROGRESS)
        return; /* run again once the database said whether the name is taken */
    bool creating = rc == -ENOENT;
    if (rc < 0 && !creating) {
        api_respond_error(req, rc, CORE_STORE_READ_FAILED);
        return;
    }
    if (!creating && (!allow_update || strcmp(app->name, name))) {
        store_app_free(app);
        core__name_taken(req, name);
        return;
    }
    if (creating) {
        app = core__new_app(name);
        snprintf(app->space_guid, sizeof app->space_guid, "%s", api_core__space(req));
    }
    const struct store_process *web = store_app_process(app, "web");
    int before = web ? web->instances : 0;
    if (!core__apply(core, req, app, body))
        goto done;
    if (!api_core__quota_admits(core, req, app, core__routes_wanted(body, creating)))
        goto done;
    app->updated_at = time_now_ms();
    struct core_upsert *u = xcalloc(1, sizeof *u);
    *u = (struct core_upsert){.body = json_incref(body), .before = creating ? -1 : before};
    api_core__app_store_then(core, req, app, creating, "cannot store the app", core__upserted, u);
    return;
done:
    store_app_free(app);
}

static void core__apps_create(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    if (api_json_check_fields(req, body, core__app_fields)) {
        json_t *name = json_object_get(body, "name");
        if (!name)
            api_respond_error(req, SKIFF_E_INVALID_VALUE, "\"name\" is required");
        else if (!json_is_string(name))
            api_respond_error(req, SKIFF_E_INVALID_NAME, "\"name\" must be a string");
        else
            core__app_upsert(core, req, json_string_value(name), body, false);
    }
    json_decref(body);
}

static void core__apps_put(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    if (api_json_check_fields(req, body, core__app_fields + 1))
        core__app_upsert(core, req, api_request_param(req, 0), body, true);
    json_decref(body);
}

json_t *api_core__instances_detail(struct api_core *core, const char *app_guid)
{
    json_t *detail = json_array();
    if (core->cfg.scheduler) {
        /* every slot of every process: up to CORE_MAX_INSTANCES each, so sized by a count */
        int total = scheduler_app_instances(core->cfg.scheduler, app_guid, NULL, 0);
        size_t cap = total > 0 ? (size_t)total : 0;
        struct scheduler_instance_info *info = xcalloc(cap ? cap : 1, sizeof *info);
        int n = scheduler_app_instances(core->cfg.scheduler, app_guid, info, cap);
        for (int i = 0; i < n && (size_t)i < cap; i++) {
            char since[40];
            time_format_rfc3339(info[i].since_ms, since, sizeof since);
            json_t *d =
                json_pack("{s:i,s:s,s:s,s:s,s:f,s:I,s:i,s:i,s:s}", "index", info[i].index, "guid",
                          info[i].guid, "state", info[i].state, "since", since, "cpu", info[i].cpu,
                          "memory_bytes", (json_int_t)info[i].memory_bytes, "port", info[i].port,
                          "crash_count", info[i].crash_count, "process_type", info[i].process_type);
            json_object_set_new(d, "droplet",
                                info[i].droplet[0] ? json_string(info[i].droplet) : json_null());
            json_object_set_new(d, "cell",
                                json_string(info[i].cell[0] ? info[i].cell : core->cfg.cell_id));
            json_object_set_new(d, "address",
                                info[i].addr[0] ? json_string(info[i].addr) : json_null());
            json_object_set_new(d, "host_uid",
                                info[i].host_uid >= 0 ? json_integer(info[i].host_uid)
                                                      : json_null());
            json_object_set_new(d, "warm_start", json_boolean(info[i].warm_start));
            json_object_set_new(d, "warm_runtime",
                                info[i].warm_runtime[0] ? json_string(info[i].warm_runtime)
                                                        : json_null());
            json_object_set_new(d, "disk_bytes", json_integer((json_int_t)info[i].disk_bytes));
            json_object_set_new(d, "disk_quota_bytes",
                                json_integer((json_int_t)info[i].disk_quota_bytes));
            json_object_set_new(d, "disk_full", json_boolean(info[i].disk_full));
            json_object_set_new(
                d, "ready", json_boolean(!strcmp(info[i].state, "RUNNING") && !info[i].not_ready));
            json_object_set_new(d, "exit_status",
                                info[i].exit_status >= 0 ? json_integer(info[i].exit_status)
                                                         : json_null());
            char sig[32];
            const char *abbrev = info[i].exit_signal > 0 ? sigabbrev_np(info[i].exit_signal) : NULL;
            snprintf(sig, sizeof sig, "SIG%s", abbrev ? abbrev : "UNKNOWN");
            json_object_set_new(d, "exit_signal",
                                info[i].exit_signal > 0 ? json_string(sig) : json_null());
            json_array_append_new(detail, d);
        }
        free(info);
    }
    return detail;
}

/* ---- instances recorded by the leader (several skiffds on one store) ------------------- */

#define CORE_INSTANCES_KIND "app.instances"

/* The leader's record of the app's instances, when the cell that wrote it leads now. A
 * skiffd that leads itself shows its own instances and reads no record: that read would wait
 * on the loop for a database that may not answer. */
static bool core__recorded_instances(struct api_core *core, const char *app_guid, json_t **detail)
{
    if (!core->cfg.cell_leads || core->cfg.cell_leads(core->cfg.cell_ctx, core->cfg.cell_id))
        return false;
    char *text = NULL; /* the records held whole: read from memory, kept fresh off the loop */
    if (store_doc_hold(core->cfg.store, CORE_INSTANCES_KIND) < 0 ||
        store_doc_get(core->cfg.store, CORE_INSTANCES_KIND, app_guid, &text) < 0)
        return false;
    json_t *doc = json_loads(text, 0, NULL);
    free(text);
    json_t *list = json_object_get(doc, "instances");
    bool live =
        json_is_array(list) &&
        core->cfg.cell_leads(core->cfg.cell_ctx, json_string_value(json_object_get(doc, "cell")));
    if (live) {
        json_decref(*detail);
        *detail = json_incref(list);
    }
    json_decref(doc);
    return live;
}

static void core__instances_touched(struct api_core *core, const char *app_guid)
{
    if (!core->cfg.cell_leads || !app_guid || strlen(app_guid) > 36)
        return;
    for (size_t i = 0; i < core->ntouched; i++)
        if (!strcmp(core->touched[i], app_guid))
            return;
    core->touched = xrealloc(core->touched, (core->ntouched + 1) * sizeof *core->touched);
    snprintf(core->touched[core->ntouched++], sizeof *core->touched, "%s", app_guid);
}

struct core__record {
    struct api_core *core;
    char guid[37];
};

/* A record that did not land is written again at the next tick. */
static void core__recorded(void *ctx, int rc)
{
    struct core__record *r = ctx;
    if (rc < 0 && rc != -ENOENT)
        core__instances_touched(r->core, r->guid);
    free(r);
}

/* The records are written off the loop (store_*_async); the list is emptied first, as a write
 * that fails puts its app back on it (at once on SQLite). */
void api_core_record_instances(struct api_core *core, bool leading)
{
    size_t n = core->ntouched;
    core->ntouched = 0;
    if (!leading || !n)
        return;
    char(*touched)[37] = xmalloc(n * sizeof *touched);
    memcpy(touched, core->touched, n * sizeof *touched);
    for (size_t i = 0; i < n; i++) {
        struct core__record *r = xcalloc(1, sizeof *r);
        r->core = core;
        snprintf(r->guid, sizeof r->guid, "%s", touched[i]);
        json_t *detail = api_core__instances_detail(core, r->guid);
        /* an instance STARTING becomes RUNNING without an event when the last router takes
         * its route (scheduler_route_release): written again at every tick until none is */
        size_t k;
        json_t *inst;
        json_array_foreach(detail, k, inst)
        {
            const char *state = json_string_value(json_object_get(inst, "state"));
            if (state && !strcmp(state, "STARTING"))
                core__instances_touched(core, r->guid);
        }
        int rc;
        if (json_array_size(detail) == 0) {
            rc = store_doc_delete_async(core->cfg.store, CORE_INSTANCES_KIND, r->guid,
                                        core__recorded, r);
        } else {
            json_t *doc = json_pack("{s:s, s:I, s:O}", "cell", core->cfg.cell_id, "at_ms",
                                    (json_int_t)time_now_ms(), "instances", detail);
            char *text = json_dumps(doc, JSON_COMPACT);
            json_decref(doc);
            rc = text ? store_doc_put_async(core->cfg.store, CORE_INSTANCES_KIND, r->guid, text,
                                            core__recorded, r)
                      : -ENOMEM;
            free(text);
        }
        json_decref(detail);
        if (rc < 0) { /* not queued: kept for the next tick */
            core__instances_touched(core, r->guid);
            free(r);
        }
    }
    free(touched);
}

static void core__apps_get(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    json_t *o = core__app_json_with_routes(core, app);
    if (!o) {
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
        store_app_free(app);
        return;
    }
    json_t *detail = api_core__instances_detail(core, app->guid);
    if (json_array_size(detail) == 0 && core__recorded_instances(core, app->guid, &detail)) {
        size_t i, running = 0;
        json_t *d;
        json_array_foreach(detail, i, d)
        {
            running += !strcmp(json_string_value(json_object_get(d, "state")) ?: "", "RUNNING");
        }
        json_object_set_new(o, "running", json_integer((json_int_t)running));
    }
    json_object_set_new(o, "instances_detail", detail);
    struct scheduler_deployment dep;
    if (core->cfg.scheduler && scheduler_app_deployment(core->cfg.scheduler, app->guid, &dep) == 0)
        json_object_set_new(o, "deployment",
                            json_pack("{s:s, s:s, s:s, s:i, s:i, s:o}", "state",
                                      scheduler_deploy_state_name(dep.state), "from_droplet",
                                      dep.from, "droplet", dep.to, "updated", dep.updated, "total",
                                      dep.total, "error",
                                      dep.error[0] ? json_string(dep.error) : json_null()));
    store_app_free(app);
    api_respond_json(req, 200, o);
}

static void core__apps_patch(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    start_trace("api: PATCH app");
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    struct store_app *app = NULL;
    if (!api_json_check_fields(req, body, core__app_fields + 1) ||
        !core__check_routes(core, req, body) || !(app = api_core__find_app(core, req)))
        goto done;
    const struct store_process *web = store_app_process(app, "web");
    int before = web ? web->instances : 0;
    if (!core__apply(core, req, app, body))
        goto done;
    if (!api_core__quota_admits(core, req, app, core__routes_wanted(body, false)))
        goto done;
    app->updated_at = time_now_ms();
    struct core_upsert *u = xcalloc(1, sizeof *u);
    *u = (struct core_upsert){.body = json_incref(body), .before = before, .patch = true};
    api_core__app_store_then(core, req, app, false, "cannot store the app", core__upserted, u);
    app = NULL;
done:
    store_app_free(app);
    json_decref(body);
}

/* An app's deletion, queued: the request is answered (and what the app leaves cleaned up)
 * once it is made. */
struct core_app_delete {
    struct api_core *core;
    struct api_request *req;
    struct store_app *app;
};

static void core__app_deleted(void *ctx, int rc);

static void core__apps_delete(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    if (api_core__staging_busy(core, app->guid))
        api_core__staging_cancel(core, app->guid);
    if (core->cfg.scheduler)
        scheduler_app_deleted(core->cfg.scheduler, app->guid);
    if (core->cfg.app_deleted)
        core->cfg.app_deleted(core->cfg.app_deleted_ctx, app->guid);
    struct core_app_delete *d = xcalloc(1, sizeof *d);
    *d = (struct core_app_delete){.core = core, .req = req, .app = app};
    int rc = store_app_delete_async(core->cfg.store, app->guid, core__app_deleted, d);
    if (rc < 0)
        core__app_deleted(d, rc);
}

static void core__app_deleted(void *ctx, int rc)
{
    struct core_app_delete *d = ctx;
    struct api_core *core = d->core;
    struct api_request *req = d->req;
    struct store_app *app = d->app;
    free(d);
    if (rc < 0) {
        if (rc == -ENOENT)
            api_respond_error(req, rc, "app %s was deleted meanwhile", app->name);
        else
            api_respond_error(req, rc == -ECANCELED ? SKIFF_E_UNAVAILABLE : SKIFF_E_INTERNAL,
                              "cannot delete the app (see skiffd's output)");
        store_app_free(app);
        return;
    }
    api_core__revisions_forget(core, app->guid);
    api_core__metadata_forget(core, app->guid);
    hub_publish(core->cfg.hub, &PLATFORM_APP_EVENT(PLATFORM_PROCESS_REMOVED, app->guid, app->name));
    char *dir = xasprintf("%s/apps/%s", core->cfg.home, app->guid);
    rm_rf(dir);
    free(dir);
    api_core__images_gc_soon(core); /* its image's layers, when no other app has them */
    api_core__blobs_gc_soon(core);  /* its packages' and droplets' */
    logs_forget(core->cfg.logs, app->guid);
    api_core__routes_changed(core);
    store_app_free(app);
    api_respond(req, 204, NULL, NULL, 0);
}

/* Refuses to start an app that has nothing to run; true after answering 422. */
static bool core__not_staged(struct api_request *req, const struct store_app *app)
{
    if (app->droplet_guid)
        return false;
    api_respond_error(req, SKIFF_E_NOT_STAGED,
                      "app \"%s\" has no droplet yet: push it (`skiff push %s`) or stage it first",
                      app->name, app->name);
    return true;
}

static void core__revise_and_respond(struct api_core *core, struct api_request *req,
                                     const struct store_app *app, const char *verb);

/* A start, stop or restart once its state is stored. */
struct core_state {
    bool changed;
    const char *verb; /* "Restarted", or NULL: "Started" or "Stopped" when it changed */
};

/* Tells the scheduler (and, when it changed, the app's event subscribers), logs and answers. */
static void core__state_stored(struct api_core *core, struct api_request *req,
                               struct store_app *app, void *ctx)
{
    struct core_state *c = ctx;
    if (req) {
        bool started = !strcmp(app->state, "STARTED");
        if (core->cfg.scheduler)
            scheduler_app_changed(core->cfg.scheduler, app->guid);
        if (c->changed)
            hub_publish(core->cfg.hub,
                        &PLATFORM_APP_EVENT(started ? PLATFORM_APP_STARTED : PLATFORM_APP_STOPPED,
                                            app->guid, app->name));
        if (c->verb || (c->changed && started)) {
            core__revise_and_respond(core, req, app, c->verb ? c->verb : "Started");
        } else {
            if (c->changed)
                logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT, "Stopped app %s",
                             app->name);
            api_core__respond_app(core, req, 200, app);
        }
    }
    free(c);
}

/* Stores STARTED or STOPPED (takes app); core__state_stored answers once it is written. */
static void core__app_put_state(struct api_core *core, struct api_request *req,
                                struct store_app *app, const char *state, const char *verb)
{
    struct core_state *c = xcalloc(1, sizeof *c);
    c->changed = strcmp(app->state, state) != 0;
    c->verb = verb;
    free(app->state);
    app->state = xstrdup(state);
    app->updated_at = time_now_ms();
    api_core__app_store_then(core, req, app, false, "cannot store the app", core__state_stored, c);
}

/* A start's or restart's revision, queued: the request is answered once it is written. */
struct core_revise {
    struct api_request *req;
    struct store_app *app;
    const char *verb;
};

static void core__revised(struct api_core *core, void *ctx, int rc, int version)
{
    struct core_revise *r = ctx;
    if (rc == 0 && version > 0)
        logs_appendf(core->cfg.logs, r->app->guid, "API", LOGS_OUT, "%s app %s as revision %d",
                     r->verb, r->app->name, version);
    else
        logs_appendf(core->cfg.logs, r->app->guid, "API", LOGS_OUT, "%s app %s", r->verb,
                     r->app->name);
    api_core__respond_app(core, r->req, 200, r->app);
    store_app_free(r->app);
    free(r);
}

/* A start or restart applies what changed since the last revision (a set-env, a command):
 * that makes a revision, named in the log line that says the app (re)started; the answer
 * (200 with the app) follows the revision's write. */
static void core__revise_and_respond(struct api_core *core, struct api_request *req,
                                     const struct store_app *app, const char *verb)
{
    struct core_revise *r = xcalloc(1, sizeof *r);
    *r = (struct core_revise){.req = req, .app = store_app_dup(app), .verb = verb};
    api_core__revision_if_changed_then(core, r->app, core__revised, r);
}

static void core__app_set_state(struct api_request *req, struct api_core *core, const char *state)
{
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    if (!strcmp(state, "STARTED") && core__not_staged(req, app)) {
        store_app_free(app);
        return;
    }
    core__app_put_state(core, req, app, state, NULL);
}

static void core__app_start(struct api_request *req, void *ctx)
{
    core__app_set_state(req, ctx, "STARTED");
}

static void core__app_stop(struct api_request *req, void *ctx)
{
    core__app_set_state(req, ctx, "STOPPED");
}

static void core__app_restart(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    if (core__not_staged(req, app))
        goto done;
    if (strcmp(app->state, "STARTED")) {
        /* a stopped app restarts by starting */
        core__app_put_state(core, req, app, "STARTED", "Restarted");
        return;
    }
    if (core->cfg.scheduler) {
        const char *rolling = api_request_query(req, "rolling");
        scheduler_app_restart(core->cfg.scheduler, app->guid,
                              rolling && strcmp(rolling, "0") && strcmp(rolling, "false"));
    }
    core__revise_and_respond(core, req, app, "Restarted");
done:
    store_app_free(app);
}

/* ---- env ---------------------------------------------------------------------------------- */

static void core__env_get(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    struct store_route *routes = NULL;
    size_t nr = 0;
    if (store_route_list(core->cfg.store, app->guid, &routes, &nr) < 0) {
        /* VCAP_APPLICATION without the app's uris would not be what its instances get */
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
        store_app_free(app);
        return;
    }
    json_t *env = json_object();
    for (size_t i = 0; i < app->n_env; i++)
        json_object_set_new(env, app->env[i].name, json_string(app->env[i].value));
    char **uris = xcalloc(nr + 1, sizeof *uris);
    for (size_t i = 0; i < nr; i++)
        uris[i] = xasprintf("%s%s", routes[i].host, routes[i].path);
    store_route_list_free(routes, nr);
    /* the same VCAP_APPLICATION instances get, less what belongs to one instance */
    struct scheduler_env_input in = {.app_guid = app->guid,
                                     .app_name = app->name,
                                     .memory_mb = app->memory_mb,
                                     .disk_mb = app->disk_mb,
                                     .uris = (const char *const *)uris};
    char *vcap_text = scheduler_vcap_application(&in);
    json_t *vcap = json_loads(vcap_text, 0, NULL);
    free(vcap_text);
    for (size_t i = 0; i < nr; i++)
        free(uris[i]);
    free(uris);
    /* the caller may develop in the space: it sees the credentials its instances get */
    char *services_text =
        core->cfg.services ? services_vcap_json(core->cfg.services, app->guid) : xstrdup("{}");
    json_t *services = services_text ? json_loads(services_text, 0, NULL) : NULL;
    free(services_text);
    if (!services) {
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
        json_decref(env);
        json_decref(vcap);
        store_app_free(app);
        return;
    }
    api_respond_json(req, 200,
                     json_pack("{s:o,s:{s:o,s:o}}", "env", env, "system", "VCAP_APPLICATION",
                               vcap ? vcap : json_object(), "VCAP_SERVICES", services));
    store_app_free(app);
}

/* The answer to PUT env once its write is made. */
static void core__env_stored(struct api_core *core, struct api_request *req, struct store_app *app,
                             void *ctx)
{
    (void)ctx;
    if (!req)
        return;
    json_t *env = json_object();
    for (size_t i = 0; i < app->n_env; i++)
        json_object_set_new(env, app->env[i].name, json_string(app->env[i].value));
    logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT,
                 "Updated environment of app %s (restart to apply)", app->name);
    api_respond_json(req, 200, json_pack("{s:o}", "env", env));
}

static void core__env_put(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    struct store_app *app = api_core__find_app(core, req);
    if (app && api_core__merge_env(req, app, body)) {
        app->updated_at = time_now_ms();
        api_core__app_store_then(core, req, app, false, "cannot store the app", core__env_stored,
                                 NULL);
        app = NULL;
    }
    store_app_free(app);
    json_decref(body);
}

/* ---- logs --------------------------------------------------------------------------------- */

struct core_follow {
    struct api_core *core;
    struct api_request *req;
    int id;
};

static void core__follow_line(void *ctx, const char *line, size_t len)
{
    struct core_follow *f = ctx;
    /* a reader that does not keep up loses lines rather than growing our memory */
    if (api_stream_pending(f->req) > (4u << 20))
        return;
    api_stream_write(f->req, line, len);
}

static void core__follow_abort(void *ctx)
{
    struct core_follow *f = ctx;
    logs_unfollow(f->core->cfg.logs, f->id);
    api_core__follow_forget(f->core, f);
    api_stream_end(f->req);
    free(f);
}

/* Ends every follower (shutdown): they are streams that never end on their own. */
void api_core__followers_end(struct api_core *core)
{
    while (core->follows) {
        struct core_follow *f = core->follows[0];
        core__follow_abort(f);
    }
}

void api_core__follow_forget(struct api_core *core, void *follow)
{
    for (size_t i = 0; i < core->nfollows; i++)
        if (core->follows[i] == follow) {
            core->follows[i] = core->follows[--core->nfollows];
            break;
        }
    if (core->nfollows == 0) {
        free(core->follows);
        core->follows = NULL;
    }
}

static void core__logs(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    const char *lines_s = api_request_query(req, "lines");
    const char *follow = api_request_query(req, "follow");
    const char *recent = api_request_query(req, "recent");
    long lines = 0;
    if (lines_s) {
        char *end;
        lines = strtol(lines_s, &end, 10);
        if (*end || lines < 0 || lines > 100000) {
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              "\"lines\" must be a whole number from 0 to 100000");
            store_app_free(app);
            return;
        }
    }
    bool following = follow && strcmp(follow, "0") && strcmp(follow, "false");
    bool with_recent = !following || !recent || (strcmp(recent, "0") && strcmp(recent, "false"));
    size_t len = 0;
    char *text = with_recent ? logs_recent(core->cfg.logs, app->guid, (size_t)lines, &len) : NULL;
    if (!following) {
        api_respond(req, 200, "text/plain; charset=utf-8", text ? text : "", len);
    } else {
        api_stream_begin(req, 200, "text/plain; charset=utf-8");
        if (len)
            api_stream_write(req, text, len);
        struct core_follow *f = xcalloc(1, sizeof *f);
        f->core = core;
        f->req = req;
        f->id = logs_follow(core->cfg.logs, app->guid, core__follow_line, f);
        core->follows = xrealloc(core->follows, (core->nfollows + 1) * sizeof *core->follows);
        core->follows[core->nfollows++] = f;
        api_request_on_abort(req, core__follow_abort, f);
    }
    free(text);
    store_app_free(app);
}

/* ---- routes and domains ------------------------------------------------------------------- */

static json_t *core__route_json(struct api_core *core, const struct store_route *r,
                                const char *app_name)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:i,s:b}", "guid", r->guid, "host", r->host,
                     "path", r->path, "app", app_name ? app_name : "", "domain", r->domain,
                     "balance", r->balance, "protocol", r->protocol, "instances",
                     core->cfg.scheduler ? scheduler_running_count(core->cfg.scheduler, r->app_guid)
                                         : 0,
                     "https_only", r->https_only);
}

static void core__routes_list(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_route *routes = NULL;
    size_t n = 0;
    struct store_app **apps = NULL;
    size_t na = 0;
    const char *app_filter = api_request_query(req, "app");
    if (store_route_list(core->cfg.store, NULL, &routes, &n) < 0 ||
        store_app_list_in(core->cfg.store, api_core__space(req), &apps, &na) < 0) {
        store_route_list_free(routes, n);
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        const char *name = NULL;
        for (size_t j = 0; j < na; j++)
            if (!strcmp(apps[j]->guid, routes[i].app_guid))
                name = apps[j]->name;
        if (!name || (app_filter && strcmp(name, app_filter)))
            continue; /* another space's, or not the app asked for */
        json_array_append_new(arr, core__route_json(core, &routes[i], name));
    }
    store_route_list_free(routes, n);
    store_app_list_free(apps, na);
    api_respond_json(req, 200, json_pack("{s:o}", "routes", arr));
}

/* A map-route request's route, to answer once it is written. */
struct core_route_map {
    struct store_app *app;
    char *host, *path;
};

static void core__route_mapped(struct api_core *core, struct api_request *req, void *ctx)
{
    struct core_route_map *m = ctx;
    const char *host = m->host, *path = m->path;
    struct store_route *routes = NULL;
    size_t n = 0;
    if (!req) {
        /* answered */
    } else if (store_route_list(core->cfg.store, m->app->guid, &routes, &n) < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
    } else {
        logs_appendf(core->cfg.logs, m->app->guid, "API", LOGS_OUT, "Mapped route %s%s", host,
                     path);
        json_t *out = NULL;
        char *h = xstrdup(host);
        for (char *q = h; *q; q++)
            *q = (char)tolower((unsigned char)*q);
        for (size_t i = 0; i < n && !out; i++)
            if (!strcmp(routes[i].host, h) &&
                (!strcmp(routes[i].path, path) || (!strcmp(path, "/") && !*routes[i].path) ||
                 (*path && str_has_prefix(path, routes[i].path) && *routes[i].path)))
                out = core__route_json(core, &routes[i], m->app->name);
        free(h);
        api_respond_json(req, 201, out ? out : json_object());
    }
    store_route_list_free(routes, n);
    store_app_free(m->app);
    free(m->host);
    free(m->path);
    free(m);
}

static void core__routes_create(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    static const char *const fields[] = {"app",      "host",       "path", "balance",
                                         "protocol", "https_only", NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    struct store_app *app = NULL;
    if (!api_json_check_fields(req, body, fields))
        goto done;
    const char *name = json_string_value(json_object_get(body, "app"));
    const char *host = json_string_value(json_object_get(body, "host"));
    json_t *pathv = json_object_get(body, "path");
    if (!name || !host || (pathv && !json_is_string(pathv) && !json_is_null(pathv))) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "a route needs \"app\" and \"host\" (strings) and an optional \"path\"");
        goto done;
    }
    /* the router's two policies (docs/bus.md); absent or null: round-robin, or as it was */
    json_t *balancev = json_object_get(body, "balance");
    const char *balance = json_string_value(balancev);
    if ((balancev && !json_is_null(balancev) && !balance) ||
        (balance && strcmp(balance, "round-robin") && strcmp(balance, "least-connection"))) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "\"balance\" must be \"round-robin\" or \"least-connection\"");
        goto done;
    }
    /* what the router speaks to the instances: http1, or h2c for http2 (gRPC) */
    json_t *protocolv = json_object_get(body, "protocol");
    const char *protocol = json_string_value(protocolv);
    if ((protocolv && !json_is_null(protocolv) && !protocol) ||
        (protocol && strcmp(protocol, "http1") && strcmp(protocol, "http2"))) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "\"protocol\" must be \"http1\" or \"http2\" (h2c to the app's "
                          "instances)");
        goto done;
    }
    /* absent or null: off for a new route, as it was for one the app has */
    json_t *httpsv = json_object_get(body, "https_only");
    if (httpsv && !json_is_null(httpsv) && !json_is_boolean(httpsv)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "\"https_only\" is true or false");
        goto done;
    }
    int https_only = json_is_boolean(httpsv) ? json_is_true(httpsv) : -1;
    if (!(app = api_core__app_named(core, req, name)) || !api_core__quota_admits(core, req, app, 1))
        goto done;
    const char *path = json_string_value(pathv);
    if (strchr(host, '/')) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "\"host\" is a host name only; give the path in \"path\"");
        goto done;
    }
    struct core_route_map *m = xcalloc(1, sizeof *m);
    *m = (struct core_route_map){
        .app = app, .host = xstrdup(host), .path = xstrdup(path ? path : "")};
    app = NULL;
    struct api_core_routes *rw = api_core__routes_begin(core, req, core__route_mapped, m);
    api_core__map_route(core, rw, m->app, m->host, m->path, balance, protocol, https_only);
    api_core__routes_end(rw);
done:
    store_app_free(app);
    json_decref(body);
}

/* Whether the route's app lives in the space (a route of another space is not there). */
static bool core__route_in_space(struct api_core *core, const struct store_route *r,
                                 const char *space)
{
    struct store_app *owner = NULL;
    bool in = store_app_get(core->cfg.store, r->app_guid, &owner) == 0 &&
              !strcmp(owner->space_guid, space);
    store_app_free(owner);
    return in;
}

/* An unmap request's route, to answer once its deletion is made. */
struct core_route_unmap {
    struct api_core *core;
    struct api_request *req;
    char *route;
    char app_guid[37];
};

static void core__route_unmapped(void *ctx, int rc)
{
    struct core_route_unmap *u = ctx;
    if (rc < 0) {
        core__route_refused(u->req, rc, u->route);
    } else {
        logs_appendf(u->core->cfg.logs, u->app_guid, "API", LOGS_OUT, "Unmapped route %s",
                     u->route);
        api_core__routes_changed(u->core);
        api_respond(u->req, 204, NULL, NULL, 0);
    }
    free(u->route);
    free(u);
}

static void core__routes_delete(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    const char *host = api_request_query(req, "host");
    const char *path = api_request_query(req, "path");
    const char *app_name = api_request_query(req, "app");
    if (!host) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "say which route: DELETE /v1/routes?app=APP&host=HOST[&path=/PATH]");
        return;
    }
    char *h = xstrdup(host);
    for (char *q = h; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    char *p = xstrdup(path && strcmp(path, "/") ? path : "");
    struct store_route *routes = NULL;
    size_t n = 0;
    int rc = store_route_list(core->cfg.store, NULL, &routes, &n);
    const struct store_route *found = NULL;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(routes[i].host, h) && !strcmp(routes[i].path, p))
            found = &routes[i];
    struct store_app *app = NULL;
    if (rc < 0) {
        /* not knowing the routes is not "no such route" */
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
    } else if (app_name && !(app = api_core__app_named(core, req, app_name))) {
        /* answered */
    } else if (!found || (app && strcmp(found->app_guid, app->guid)) ||
               !core__route_in_space(core, found, api_core__space(req))) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no route %s%s%s%s: `skiff routes` lists them", h,
                          p, app ? " mapped to " : "", app ? app->name : "");
    } else {
        struct core_route_unmap *u = xcalloc(1, sizeof *u);
        *u = (struct core_route_unmap){.core = core, .req = req, .route = xasprintf("%s%s", h, p)};
        snprintf(u->app_guid, sizeof u->app_guid, "%s", found->app_guid);
        rc = store_route_delete_async(core->cfg.store, h, p, core__route_unmapped, u);
        if (rc < 0)
            core__route_unmapped(u, rc);
    }
    store_app_free(app);
    store_route_list_free(routes, n);
    free(h);
    free(p);
}

/* The stacks apps run on: one today, the machine's own. */
static void core__stacks_list(struct api_request *req, void *ctx)
{
    (void)ctx;
    json_t *stack = json_pack("{s:s,s:s,s:b}", "name", CONTAINER_DEFAULT_STACK, "description",
                              CONTAINER_DEFAULT_STACK_DESCRIPTION, "default", 1);
    api_respond_json(req, 200, json_pack("{s:[o]}", "stacks", stack));
}

/* A domains list waiting for the certificates' read. */
struct core_domains_list {
    struct api_core *core;
    struct api_request *req;
};

/* The chain of domain in the certificates read (in step with domains), or NULL. */
static const char *core__domain_chain(char **domains, char **chains, const char *domain)
{
    for (size_t i = 0; domains && domains[i]; i++)
        if (!strcmp(domains[i], domain))
            return chains[i];
    return NULL;
}

static void core__domains_listed(void *ctx, int rc, char **cert_domains, char **chains)
{
    struct core_domains_list *l = ctx;
    struct api_core *core = l->core;
    struct api_request *req = l->req;
    free(l);
    char **names = NULL, **owners = NULL;
    bool *shared = NULL;
    if (rc < 0 || store_domain_list(core->cfg.store, &names, &shared, &owners) < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
        goto done;
    }
    json_t *arr = json_array();
    for (size_t i = 0; names[i]; i++) {
        /* a private domain is listed to those who may see its org */
        const struct auth_org *org =
            *owners[i] && core->cfg.auth ? auth_org_find(core->cfg.auth, owners[i]) : NULL;
        if (*owners[i] &&
            (!org || !auth_can_see_org(core->cfg.auth, api_request_principal(req), org)))
            continue;
        json_t *d = json_pack("{s:s,s:b}", "name", names[i], "shared", shared[i]);
        if (org)
            json_object_set_new(d, "org", json_string(org->name));
        json_t *cert = api_core__cert_json(core__domain_chain(cert_domains, chains, names[i]));
        if (cert) /* what it is and until when; never its key */
            json_object_set_new(d, "certificate", cert);
        json_array_append_new(arr, d);
    }
    api_respond_json(req, 200, json_pack("{s:o}", "domains", arr));
done:
    strv_free(names);
    strv_free(owners);
    free(shared);
    strv_free(cert_domains);
    strv_free(chains);
}

/* The certificates are read by the store's writer, in turn with the writes queued before
 * (a certificate just set is shown), and the domains then from the store's copy. */
static void core__domains_list(struct api_request *req, void *ctx)
{
    struct core_domains_list *l = xcalloc(1, sizeof *l);
    *l = (struct core_domains_list){.core = ctx, .req = req};
    int rc = store_domain_cert_chains_async(l->core->cfg.store, core__domains_listed, l);
    if (rc < 0)
        core__domains_listed(l, rc, NULL, NULL);
}

/* A domain's create or delete, queued: answered once the store made it. */
struct core_domain_write {
    struct api_core *core;
    struct api_request *req;
    char *name;
};

static void core__domain_write_free(struct core_domain_write *dw)
{
    free(dw->name);
    free(dw);
}

static void core__domain_added(void *ctx, int rc)
{
    struct core_domain_write *dw = ctx;
    if (rc == -EEXIST)
        api_respond_error(dw->req, rc, "the domain %s exists already", dw->name);
    else if (rc < 0)
        api_respond_error(dw->req, rc, "cannot store the domain");
    else
        api_respond_json(
            dw->req, 201,
            json_pack("{s:s,s:b}", "name", dw->name, "shared", api_request_org(dw->req) == NULL));
    core__domain_write_free(dw);
}

static void core__domains_create(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    static const char *const fields[] = {"name", "shared", NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    if (!api_json_check_fields(req, body, fields))
        goto done;
    const char *name = json_string_value(json_object_get(body, "name"));
    bool ok = name && strlen(name) > 0 && strlen(name) < 254 && name[0] != '.' &&
              name[strlen(name) - 1] != '.';
    for (const char *q = name; ok && *q; q++)
        if (!(islower((unsigned char)*q) || isdigit((unsigned char)*q) || *q == '-' || *q == '.'))
            ok = false;
    if (!ok) {
        api_respond_error(req, SKIFF_E_INVALID_NAME,
                          "a domain is a lowercase DNS name such as example.test");
        goto done;
    }
    /* POST /v1/orgs/ORG/domains: the org's own; POST /v1/domains: shared */
    const char *org = api_request_org(req);
    struct core_domain_write *dw = xcalloc(1, sizeof *dw);
    *dw = (struct core_domain_write){.core = core, .req = req, .name = xstrdup(name)};
    int rc = store_domain_add_async(core->cfg.store, name, org, core__domain_added, dw);
    if (rc < 0)
        core__domain_added(dw, rc);
done:
    json_decref(body);
}

/* Whether the domain is there for this request: a shared one through /v1/domains, the org's
 * own through /v1/orgs/ORG/domains. 0, -ENOENT, or -EIO when the store could not be read. */
static int core__domain_reachable(struct api_core *core, const char *name, const char *org)
{
    char **names = NULL, **owners = NULL;
    if (store_domain_list(core->cfg.store, &names, NULL, &owners) < 0)
        return -EIO;
    int r = -ENOENT;
    for (size_t i = 0; names[i]; i++)
        if (!strcmp(names[i], name))
            r = !strcmp(owners[i], org ? org : "") ? 0 : -ENOENT;
    strv_free(names);
    strv_free(owners);
    return r;
}

/* The routes mapped on the domain, as "host[/path], ..." (at most 10 named); NULL for none,
 * or on a store error (*err set). */
static char *core__domain_routes(struct api_core *core, const char *name, int *err)
{
    struct store_route *routes = NULL;
    size_t n = 0, named = 0, more = 0;
    *err = store_route_list(core->cfg.store, NULL, &routes, &n);
    if (*err < 0)
        return NULL;
    struct buf b = {0};
    for (size_t i = 0; i < n; i++) {
        if (strcmp(routes[i].domain, name))
            continue;
        if (named == 10) {
            more++;
            continue;
        }
        buf_printf(&b, "%s%s%s", named++ ? ", " : "", routes[i].host, routes[i].path);
    }
    if (more)
        buf_printf(&b, " and %zu more", more);
    store_route_list_free(routes, n);
    return b.data; /* NULL when nothing was written */
}

static void core__domain_deleted(void *ctx, int r)
{
    struct core_domain_write *dw = ctx;
    if (r == -EEXIST) /* a route was mapped on it meanwhile (the store's foreign key) */
        api_respond_error(dw->req, SKIFF_E_DOMAIN_IN_USE,
                          "the domain %s has a new route: unmap it first (`skiff routes`)",
                          dw->name);
    else if (r == -ENOENT)
        api_respond_error(dw->req, SKIFF_E_NOT_FOUND, "the domain %s was deleted meanwhile",
                          dw->name);
    else if (r < 0)
        api_respond_error(dw->req, r, "cannot delete the domain: %s", skiff_strerror(r));
    else {
        log_info("deleted the domain %s", dw->name);
        api_respond(dw->req, 204, NULL, NULL, 0);
    }
    core__domain_write_free(dw);
}

/* The domain's certificate is gone (or it had none): the domain's delete is queued. */
static void core__domain_cert_gone(void *ctx, int r)
{
    struct core_domain_write *dw = ctx;
    if (r < 0 && r != -ENOENT) {
        api_respond_error(dw->req, r, "cannot remove the domain's certificate: %s",
                          skiff_strerror(r));
        core__domain_write_free(dw);
        return;
    }
    r = store_domain_delete_async(dw->core->cfg.store, dw->name, core__domain_deleted, dw);
    if (r < 0)
        core__domain_deleted(dw, r);
}

/* DELETE /v1/domains/DOMAIN (the admin, a shared domain) and DELETE /v1/orgs/ORG/domains/DOMAIN
 * (the org's managers, its private domain). Refused while routes use it (Cloud Foundry deletes
 * them with the domain: here their owners unmap them first); localhost, the built-in shared
 * domain, stays. Its certificate goes first, through the removal delete-domain-cert uses. */
static void core__domains_delete(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    const char *org = api_request_org(req);
    const char *name = api_request_param(req, org ? 1 : 0);
    if (!strcmp(name, "localhost")) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "localhost is the built-in shared domain: it cannot be deleted");
        return;
    }
    int r = core__domain_reachable(core, name, org);
    if (r == -ENOENT) {
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          org ? "the org has no private domain %s (see `skiff domains`)"
                              : "there is no shared domain %s (see `skiff domains`)",
                          name);
        return;
    }
    char *routes = r < 0 ? NULL : core__domain_routes(core, name, &r);
    if (r < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, CORE_STORE_READ_FAILED);
        return;
    }
    if (routes) {
        api_respond_error(req, SKIFF_E_DOMAIN_IN_USE,
                          "the domain %s still has routes: %s; unmap them first (`skiff "
                          "unmap-route APP HOST`)",
                          name, routes);
        free(routes);
        return;
    }
    struct core_domain_write *dw = xcalloc(1, sizeof *dw);
    *dw = (struct core_domain_write){.core = core, .req = req, .name = xstrdup(name)};
    api_core__domain_cert_remove(core, name, core__domain_cert_gone, dw);
}

/* ---- registration ------------------------------------------------------------------------- */

int api_core__artifact_remove(struct api_core *core, const char *app_guid, const char *path)
{
    if (!path || !*path)
        return 0;
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    /* the folder it is in, resolved (links and ".." included); the last name is not followed:
     * a link there is removed, never what it points to */
    char *parent = slash == path ? xstrdup("/")
                   : slash       ? xstrndup(path, (size_t)(slash - path))
                                 : xstrdup("."); /* relative: never under the home */
    errno = 0;
    char *real_parent = realpath(parent, NULL);
    char *app_dir = xasprintf("%s/apps/%s", core->cfg.home, app_guid);
    char *real_app = realpath(app_dir, NULL);
    int rc = 0;
    if (!real_parent && slash) {
        rc = errno == ENOENT ? 0 : -errno; /* not on this host: another skiffd's, or gone */
    } else if (!real_parent || !*name || !strcmp(name, ".") || !strcmp(name, "..") || !real_app ||
               !str_has_prefix(real_parent, real_app) ||
               (strcmp(real_parent + strlen(real_app), "/droplets") &&
                strcmp(real_parent + strlen(real_app), "/packages"))) {
        log_warning("app %s: the store names %s as one of its packages or droplets; it is not "
                    "in %s/packages or %s/droplets, so it is left where it is",
                    app_guid, path, app_dir, app_dir);
        rc = -EPERM;
    } else {
        char *real = xasprintf("%s/%s", real_parent, name);
        rc = rm_rf(real);
        free(real);
    }
    free(parent);
    free(real_parent);
    free(app_dir);
    free(real_app);
    return rc;
}

void api_core_app_deleted_elsewhere(struct api_core *core)
{
    api_core__images_gc_soon(core);
    api_core__blobs_gc_soon(core);
}

void api_core_store_changed(struct api_core *core)
{
    free(core->apps_cache);
    core->apps_cache = NULL;
    core->apps_cache_len = 0;
}

/* "running" counts change with readiness: the cached list is stale then. */
static void core__on_platform_event(void *ctx, const struct platform_event *ev)
{
    struct api_core *core = ctx;
    core->instance_changes++;
    core__instances_touched(core, ev->app_guid);
    if (ev->type == PLATFORM_APP_DEPLOY_FAILED && ev->app_guid)
        api_core__revision_settings_restore(core, ev->app_guid);
}

int api_core_register(struct api *api, const struct api_core_config *cfg, struct api_core **out)
{
    struct api_core *core = xcalloc(1, sizeof *core);
    core->api = api;
    core->cfg = *cfg;
    core->cfg.home = xstrdup(cfg->home);
    core->cfg.cell_id = xstrdup(cfg->cell_id ? cfg->cell_id : "");
    core->cfg.router_url = xstrdup(cfg->router_url);
    core->cfg.buildpacks_dir = cfg->buildpacks_dir ? xstrdup(cfg->buildpacks_dir) : NULL;
    static const struct {
        const char *method, *pattern;
        int flags;
        api_handler_fn fn;
    } routes[] = {
        {"GET", "/v1/info", API_PERM(AUTH_PERM_PUBLIC), core__info},
        {"GET", "/v1/apps", API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_SPACE, core__apps_list},
        {"POST", "/v1/apps", API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_SPACE,
         core__apps_create},
        {"GET", "/v1/apps/*", API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_APP, core__apps_get},
        {"PUT", "/v1/apps/*", API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, core__apps_put},
        {"PATCH", "/v1/apps/*", API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP,
         core__apps_patch},
        {"DELETE", "/v1/apps/*", API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP,
         core__apps_delete},
        {"POST", "/v1/apps/*/start", API_PERM(AUTH_PERM_SPACE_OPERATE) | API_SCOPE_APP,
         core__app_start},
        {"POST", "/v1/apps/*/stop", API_PERM(AUTH_PERM_SPACE_OPERATE) | API_SCOPE_APP,
         core__app_stop},
        {"POST", "/v1/apps/*/restart", API_PERM(AUTH_PERM_SPACE_OPERATE) | API_SCOPE_APP,
         core__app_restart},
        {"GET", "/v1/apps/*/env", API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, core__env_get},
        {"PUT", "/v1/apps/*/env", API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, core__env_put},
        {"GET", "/v1/apps/*/logs", API_PERM(AUTH_PERM_SPACE_LOGS) | API_SCOPE_APP, core__logs},
        {"GET", "/v1/routes", API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_SPACE, core__routes_list},
        {"POST", "/v1/routes", API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_SPACE,
         core__routes_create},
        {"DELETE", "/v1/routes", API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_SPACE,
         core__routes_delete},
        {"GET", "/v1/domains", API_PERM(AUTH_PERM_USER), core__domains_list},
        {"GET", "/v1/stacks", API_PERM(AUTH_PERM_USER), core__stacks_list},
        {"POST", "/v1/domains", API_PERM(AUTH_PERM_ADMIN), core__domains_create},
        {"POST", "/v1/orgs/*/domains", API_PERM(AUTH_PERM_ORG_MANAGE) | API_SCOPE_ORG,
         core__domains_create},
        {"DELETE", "/v1/domains/*", API_PERM(AUTH_PERM_ADMIN), core__domains_delete},
        {"DELETE", "/v1/orgs/*/domains/*", API_PERM(AUTH_PERM_ORG_MANAGE) | API_SCOPE_ORG,
         core__domains_delete},
    };
    for (size_t i = 0; i < ARRAY_SIZE(routes); i++)
        api_route_add(api, routes[i].method, routes[i].pattern, routes[i].flags, routes[i].fn,
                      core);
    api_core__staging_register(core);
    api_core__certs_register(core);
    api_core__revisions_register(core);
    api_core__metadata_register(core);
    api_core__autoscale_register(core);
    api_core__functions_register(core);
    api_core__tasks_register(core);
    api_core__ssh_register(core);
    api_core__images_gc_init(core);
    api_core__blobs_register(core);
    core->hub_sub = hub_subscribe(core->cfg.hub, core__on_platform_event, core);
    if (core->cfg.cell_leads) /* read now, while the server answers (store_doc_hold) */
        store_doc_hold(core->cfg.store, CORE_INSTANCES_KIND);
    *out = core;
    return 0;
}

void api_core_shutdown(struct api_core *core)
{
    api_core__staging_cancel(core, NULL);
    api_core__followers_end(core);
    api_core__ssh_end_all(core);
    api_core__images_gc_close(core);
    api_core__blobs_close(core);
}

void api_core_set_mappings_check(struct api_core *core, api_mappings_within_fn fn, void *ctx)
{
    core->mappings_within = fn;
    core->mappings_ctx = ctx;
}

bool api_core__mappings_admit(struct api_core *core, struct api_request *req,
                              const struct store_app *app, const struct store_process *p)
{
    char why[1024];
    if (!core->mappings_within || !store_process_request_scaled(p) ||
        core->mappings_within(core->mappings_ctx,
                              app->space_guid[0] ? app->space_guid : SKIFF_DEFAULT_SPACE_GUID,
                              app->name, p->type, p->max_instances, why, sizeof why))
        return true;
    api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s", why);
    return false;
}

void api_core_free(struct api_core *core)
{
    if (!core)
        return;
    hub_unsubscribe(core->cfg.hub, core->hub_sub);
    api_core__ssh_free(core);
    api_core__images_gc_close(core);
    api_core__blobs_close(core);
    free((char *)core->cfg.home);
    free((char *)core->cfg.cell_id);
    free((char *)core->cfg.router_url);
    free((char *)core->cfg.buildpacks_dir);
    free(core->follows);
    free(core->apps_cache);
    free(core->touched);
    free(core);
}
