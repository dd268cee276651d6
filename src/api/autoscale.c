/* A process's request scaling policy (src/autoscaler; docs/api.md "Autoscaling"):
 *   GET    /v1/apps/NAME/autoscale[?process=P]  the policy, the metric, the recent decisions
 *   PUT    /v1/apps/NAME/autoscale[?process=P]  {"min_instances", "max_instances",
 *          "target_concurrency" | "target_rps", "window_ms", "scale_down_delay_ms"}
 *   DELETE /v1/apps/NAME/autoscale[?process=P]  back to the process's default policy
 * P is "web" unless given. The policy's max_instances is what quotas are checked against:
 * the autoscaler never runs more. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/core_internal.h"
#include "autoscaler/autoscaler.h"
#include "common/util.h"
#include "logs/logs.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define AUTOSCALE_MAX_INSTANCES 1000 /* as many as `skiff scale` allows */
#define AUTOSCALE_MAX_TARGET 1000000

static const char *autoscale__process(struct api_request *req)
{
    const char *p = api_request_query(req, "process");
    return p && *p ? p : "web";
}

/* The app and its process named by the request, or NULL after answering. */
static struct store_app *autoscale__find(struct api_core *core, struct api_request *req,
                                         struct store_process **proc)
{
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return NULL;
    const char *type = autoscale__process(req);
    *proc = store_app_process(app, type);
    if (!*proc) {
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "app %s has no process type \"%s\" (`skiff app %s` lists them)",
                          app->name, type, app->name);
        store_app_free(app);
        return NULL;
    }
    return app;
}

static json_t *autoscale__policy_json(const struct store_process *p)
{
    if (!store_process_request_scaled(p))
        return json_null();
    struct autoscaler_policy pol;
    autoscaler_policy_init(&pol, p->min_instances, p->max_instances,
                           p->target_rps > 0 ? p->target_rps : p->target_concurrency,
                           p->target_rps > 0, p->window_ms);
    json_t *o = json_pack("{s:i, s:i, s:I, s:I, s:I}", "min_instances", p->min_instances,
                          "max_instances", p->max_instances, "window_ms", (json_int_t)pol.window_ms,
                          "panic_window_ms", (json_int_t)pol.panic_window_ms, "scale_down_delay_ms",
                          (json_int_t)p->scale_down_delay_ms);
    json_object_set_new(o, pol.rps ? "target_rps" : "target_concurrency",
                        json_integer((json_int_t)pol.target));
    return o;
}

static void autoscale__respond(struct api_core *core, struct api_request *req, int status,
                               const struct store_app *app, const struct store_process *p)
{
    json_t *o = json_pack("{s:s, s:s, s:i, s:o, s:o}", "app", app->name, "process", p->type,
                          "instances", p->instances, "policy", autoscale__policy_json(p), "status",
                          autoscaler_status_json(core->cfg.autoscaler, app->guid, p->type));
    api_respond_json(req, status, o);
}

static void autoscale__get(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_process *p;
    struct store_app *app = autoscale__find(core, req, &p);
    if (!app)
        return;
    autoscale__respond(core, req, 200, app, p);
    store_app_free(app);
}

/* An integer field of body in [min, max] into *out (left alone when absent); false after
 * answering when it is not one. */
static bool autoscale__int(struct api_request *req, json_t *body, const char *key, int min, int max,
                           int *out)
{
    json_t *v = json_object_get(body, key);
    if (!v)
        return true;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s is a whole number from %d to %d", key,
                          min, max);
        return false;
    }
    *out = (int)json_integer_value(v);
    return true;
}

/* A policy's write: what to log and which process to show once it is made. */
struct autoscale_write {
    char *type;
    char what[160];
};

static void autoscale__stored(struct api_core *core, struct api_request *req, struct store_app *app,
                              void *ctx)
{
    struct autoscale_write *w = ctx;
    const struct store_process *p = store_app_process(app, w->type);
    if (req && p) {
        logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT, "%s", w->what);
        if (core->cfg.scheduler)
            scheduler_app_changed(core->cfg.scheduler, app->guid);
        api_core__routes_changed(core); /* whether a route holds requests at zero may change */
        autoscale__respond(core, req, 200, app, p);
    }
    free(w->type);
    free(w);
}

/* Saves a copy of app (whose process p was changed); converges and answers once it is
 * written. */
static void autoscale__store(struct api_core *core, struct api_request *req,
                             const struct store_app *app, const struct store_process *p,
                             const char *what)
{
    struct autoscale_write *w = xcalloc(1, sizeof *w);
    w->type = xstrdup(p->type);
    snprintf(w->what, sizeof w->what, "%s", what);
    struct store_app *copy = store_app_dup(app);
    copy->updated_at = time_now_ms();
    api_core__app_store_then(core, req, copy, false, "cannot store the policy", autoscale__stored,
                             w);
}

static void autoscale__put(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    size_t len = 0;
    const char *text = api_request_body(req, &len);
    json_t *body = text && len ? json_loadb(text, len, 0, NULL) : NULL;
    if (!json_is_object(body)) {
        api_respond_error(req, SKIFF_E_BAD_JSON,
                          "the body is a JSON object such as {\"min_instances\": 0, "
                          "\"max_instances\": 10, \"target_concurrency\": 100}");
        json_decref(body);
        return;
    }
    static const char *const known[] = {"min_instances", "max_instances", "target_concurrency",
                                        "target_rps",    "window_ms",     "scale_down_delay_ms"};
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        bool ok = false;
        for (size_t i = 0; i < ARRAY_SIZE(known); i++)
            ok |= !strcmp(key, known[i]);
        if (!ok) {
            api_respond_error(req, SKIFF_E_UNKNOWN_FIELD,
                              "unknown field \"%s\" (min_instances, max_instances, "
                              "target_concurrency, target_rps, window_ms, scale_down_delay_ms)",
                              key);
            json_decref(body);
            return;
        }
    }
    struct store_process *p;
    struct store_app *app = autoscale__find(core, req, &p);
    if (!app) {
        json_decref(body);
        return;
    }
    /* what is not given keeps its value when a policy is set already, else the defaults */
    bool had = store_process_request_scaled(p);
    int min = had ? p->min_instances : 0, max = had ? p->max_instances : 10;
    int conc = had ? p->target_concurrency : 0, rps = had ? p->target_rps : 0;
    int window = had ? p->window_ms : 0, delay = had ? p->scale_down_delay_ms : 0;
    if (json_object_get(body, "target_concurrency") && !json_object_get(body, "target_rps"))
        rps = 0;
    if (json_object_get(body, "target_rps") && !json_object_get(body, "target_concurrency"))
        conc = 0;
    if (!autoscale__int(req, body, "min_instances", 0, AUTOSCALE_MAX_INSTANCES, &min) ||
        !autoscale__int(req, body, "max_instances", 1, AUTOSCALE_MAX_INSTANCES, &max) ||
        !autoscale__int(req, body, "target_concurrency", 1, AUTOSCALE_MAX_TARGET, &conc) ||
        !autoscale__int(req, body, "target_rps", 1, AUTOSCALE_MAX_TARGET, &rps) ||
        !autoscale__int(req, body, "window_ms", AUTOSCALER_MIN_WINDOW_MS, AUTOSCALER_MAX_WINDOW_MS,
                        &window) ||
        !autoscale__int(req, body, "scale_down_delay_ms", 0, AUTOSCALER_MAX_WINDOW_MS, &delay))
        goto done;
    if (conc > 0 && rps > 0) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "give target_concurrency or target_rps, not both");
        goto done;
    }
    if (min > max) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "min_instances (%d) is more than max_instances (%d)", min, max);
        goto done;
    }
    /* the quota must hold the most the autoscaler may run */
    int instances = p->instances;
    p->instances = instances > max ? instances : max;
    bool admitted = api_core__quota_admits(core, req, app, 0);
    p->instances = instances < min ? min : instances > max ? max : instances;
    if (!admitted)
        goto done;
    p->min_instances = min;
    p->max_instances = max;
    p->target_concurrency = conc;
    p->target_rps = rps;
    p->window_ms = window;
    p->scale_down_delay_ms = delay;
    if (!api_core__mappings_admit(core, req, app, p)) /* a mapping asks for more */
        goto done;
    char what[160];
    snprintf(what, sizeof what, "Autoscaling %s between %d and %d instances", p->type, min, max);
    autoscale__store(core, req, app, p, what);
done:
    store_app_free(app);
    json_decref(body);
}

static void autoscale__delete(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_process *p;
    struct store_app *app = autoscale__find(core, req, &p);
    if (!app)
        return;
    store_process_default_policy(app->kind, p);
    if (!api_core__mappings_admit(core, req, app, p)) { /* the default's max may be lower */
        store_app_free(app);
        return;
    }
    char what[160];
    if (store_process_request_scaled(p))
        snprintf(what, sizeof what, "Autoscaling of %s back to the default: %d to %d instances",
                 p->type, p->min_instances, p->max_instances);
    else
        snprintf(what, sizeof what, "Autoscaling of %s off: %d instances", p->type, p->instances);
    autoscale__store(core, req, app, p, what);
    store_app_free(app);
}

void api_core__autoscale_register(struct api_core *core)
{
    api_route_add(core->api, "GET", "/v1/apps/*/autoscale",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_APP, autoscale__get, core);
    api_route_add(core->api, "PUT", "/v1/apps/*/autoscale",
                  API_PERM(AUTH_PERM_SPACE_OPERATE) | API_SCOPE_APP, autoscale__put, core);
    api_route_add(core->api, "DELETE", "/v1/apps/*/autoscale",
                  API_PERM(AUTH_PERM_SPACE_OPERATE) | API_SCOPE_APP, autoscale__delete, core);
}
