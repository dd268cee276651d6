/* Functions inside apps: a process type of an ordinary app that runs one function of the app's
 * own code (its droplet: same files, same dependencies) with the function servers of the
 * function buildpacks, so it is invoked, mapped to events and scaled on its own while the
 * app's web process goes on as before (docs/api.md, "Functions inside an app").
 *
 *   GET    /v1/apps/APP/functions          the app's functions
 *   PUT    /v1/apps/APP/functions/NAME     creates or changes one: {"handler": "FILE:FUNC",
 *                                          "max_instances": N, "min_instances": N,
 *                                          "memory_mb": N}
 *   DELETE /v1/apps/APP/functions/NAME     removes it (its event mappings go with it)
 *
 * A function is a store_process whose function_json is set (store.h); its command runs the
 * runtime's server from the droplet (.skiff/function/, put there by the scheduler when the
 * droplet lacks it) against the handler. Its scaling policy is stored like any process's
 * (store.h; the one owner of its max_instances, also set by `skiff autoscale APP --process
 * NAME`): the autoscaler takes it from zero with its backlog and requests, up to
 * max_instances, back to min_instances when idle. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/core_internal.h"
#include "common/util.h"
#include "hub/hub.h"
#include "logs/logs.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define FUNCTIONS_MAX_INSTANCES 100
#define FUNCTIONS_HANDLER_MAX 255

const char *api_function_runtime(const char *handler, char *err, size_t errsize)
{
    const char *colon = handler ? strrchr(handler, ':') : NULL;
    if (!handler || !*handler || !colon) {
        snprintf(err, errsize, "the handler must be FILE:FUNCTION, like shop/images.py:resize");
        return NULL;
    }
    size_t file_len = (size_t)(colon - handler);
    if (strlen(handler) > FUNCTIONS_HANDLER_MAX || file_len == 0) {
        snprintf(err, errsize, "the handler must be FILE:FUNCTION (at most %d characters)",
                 FUNCTIONS_HANDLER_MAX);
        return NULL;
    }
    /* the file: a relative path in the droplet, of plain names (no "..", no absolute path,
     * nothing a shell would read) */
    if (handler[0] == '/') {
        snprintf(err, errsize, "the handler's file must be a path inside the app, not %.*s",
                 (int)file_len, handler);
        return NULL;
    }
    const char *seg = handler;
    while (seg < colon) {
        const char *end = memchr(seg, '/', (size_t)(colon - seg));
        if (!end)
            end = colon;
        size_t n = (size_t)(end - seg);
        if (n == 0 || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.')) {
            snprintf(err, errsize,
                     "the handler's file must be a path inside the app (no empty, . or .. "
                     "parts): %.*s",
                     (int)file_len, handler);
            return NULL;
        }
        for (const char *c = seg; c < end; c++)
            if (!(isalnum((unsigned char)*c) || *c == '.' || *c == '_' || *c == '-')) {
                snprintf(err, errsize,
                         "the handler's file may hold only letters, digits and . _ - /: %.*s",
                         (int)file_len, handler);
                return NULL;
            }
        seg = end + 1;
    }
    /* the function: an identifier both runtimes can look up */
    const char *fn = colon + 1;
    bool ok = *fn && !isdigit((unsigned char)*fn);
    for (const char *c = fn; ok && *c; c++)
        ok = isalnum((unsigned char)*c) || *c == '_';
    if (!ok) {
        snprintf(err, errsize, "the handler's function must be a name like resize, not \"%s\"", fn);
        return NULL;
    }
    static const struct {
        const char *ext, *runtime;
    } runtimes[] = {{".py", "python"}, {".js", "node"}, {".sh", "shell"}};
    for (size_t i = 0; i < ARRAY_SIZE(runtimes); i++) {
        size_t el = strlen(runtimes[i].ext);
        if (file_len > el && !memcmp(colon - el, runtimes[i].ext, el))
            return runtimes[i].runtime;
    }
    snprintf(err, errsize, "the handler's file must end in .py, .js or .sh: %.*s", (int)file_len,
             handler);
    return NULL;
}

char *api_function_command(const char *runtime, const char *handler)
{
    /* the commands of the function buildpacks' release.sh, so the executor's warm runtimes
     * recognise them; the handler was checked (api_function_runtime): nothing to quote */
    if (!strcmp(runtime, "node"))
        return xasprintf("node .skiff/function/skiff_function.js '%s'", handler);
    if (!strcmp(runtime, "shell"))
        return xasprintf("python3 .skiff/function/skiff_function.py --shell '%.*s'",
                         (int)(strrchr(handler, ':') - handler), handler);
    return xasprintf("python3 .skiff/function/skiff_function.py '%s'", handler);
}

/* The API's view of one function of app. */
static json_t *functions__json(struct api_core *core, const struct store_app *app,
                               const struct store_process *p)
{
    json_t *fn = json_loads(p->function_json, 0, NULL);
    if (!json_is_object(fn)) {
        json_decref(fn);
        fn = json_object();
    }
    json_object_set_new(fn, "name", json_string(p->type));
    json_object_set_new(fn, "app", json_string(app->name));
    json_object_set_new(fn, "instances", json_integer(p->instances));
    json_object_set_new(fn, "min_instances", json_integer(p->min_instances));
    json_object_set_new(fn, "max_instances", json_integer(p->max_instances));
    json_object_set_new(fn, "memory_mb",
                        json_integer(p->memory_mb ? p->memory_mb : app->memory_mb));
    int running = core->cfg.scheduler
                      ? scheduler_ready_instances(core->cfg.scheduler, app->guid, p->type, NULL, 0)
                      : 0;
    json_object_set_new(fn, "running", json_integer(running > 0 ? running : 0));
    return fn;
}

json_t *api_core__functions_json(struct api_core *core, const struct store_app *app)
{
    json_t *list = json_array();
    for (size_t i = 0; i < app->n_processes; i++)
        if (store_process_is_function(&app->processes[i]))
            json_array_append_new(list, functions__json(core, app, &app->processes[i]));
    return list;
}

static void functions__list(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    api_respond_json(req, 200,
                     json_pack("{s:o}", "functions", api_core__functions_json(core, app)));
    store_app_free(app);
}

/* The function NAME of app, or NULL after answering 404. */
static struct store_process *functions__find(struct api_request *req, struct store_app *app,
                                             const char *name)
{
    struct store_process *p = store_app_process(app, name);
    if (store_process_is_function(p))
        return p;
    api_respond_error(req, SKIFF_E_NOT_FOUND,
                      "app %s has no function named '%s': `skiff app %s` lists its functions",
                      app->name, name, app->name);
    return NULL;
}

/* A function's write: what its answer names once it is made. */
struct functions_write {
    char *name, *handler;
    bool created;
};

static void functions__write_free(struct functions_write *w)
{
    free(w->name);
    free(w->handler);
    free(w);
}

static void functions__put_stored(struct api_core *core, struct api_request *req,
                                  struct store_app *app, void *ctx)
{
    struct functions_write *w = ctx;
    if (req) {
        logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT, "%s function %s of app %s: %s",
                     w->created ? "Created" : "Updated", w->name, app->name, w->handler);
        if (core->cfg.scheduler)
            scheduler_app_changed(core->cfg.scheduler, app->guid);
        api_respond_json(req, w->created ? 201 : 200,
                         functions__json(core, app, store_app_process(app, w->name)));
    }
    functions__write_free(w);
}

static void functions__put(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    const char *name = api_request_param(req, 1);
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"handler", "max_instances", "min_instances", "memory_mb",
                                         NULL};
    struct store_app *app = NULL;
    char err[256];
    if (!api_json_check_fields(req, body, fields))
        goto done;
    if (!name || !name_valid(name) || !strcmp(name, "web")) {
        api_respond_error(req, SKIFF_E_INVALID_NAME,
                          "a function's name is lowercase letters, digits and dashes, and not "
                          "web (the app's own process): '%s'",
                          name ? name : "");
        goto done;
    }
    const char *handler = json_string_value(json_object_get(body, "handler"));
    const char *runtime = api_function_runtime(handler, err, sizeof err);
    if (!runtime) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "\"handler\": %s", err);
        goto done;
    }
    json_t *v;
    json_int_t max = STORE_FUNCTION_DEFAULT_MAX_INSTANCES, min = 0, memory = 0;
    if ((v = json_object_get(body, "max_instances")) &&
        (!json_is_integer(v) || (max = json_integer_value(v)) < 1 ||
         max > FUNCTIONS_MAX_INSTANCES)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "\"max_instances\" must be a number from 1 to %d",
                          FUNCTIONS_MAX_INSTANCES);
        goto done;
    }
    if ((v = json_object_get(body, "min_instances")) &&
        (!json_is_integer(v) || (min = json_integer_value(v)) < 0 || min > max)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "\"min_instances\" must be a number from 0 to max_instances (%lld)",
                          (long long)max);
        goto done;
    }
    if ((v = json_object_get(body, "memory_mb")) &&
        (!json_is_integer(v) || (memory = json_integer_value(v)) < 0 || memory > (1 << 20))) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "\"memory_mb\" must be a number of megabytes (0: the app's)");
        goto done;
    }
    if (!(app = api_core__find_app(core, req)))
        goto done;
    if (strcmp(app->kind, "app")) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "%s is itself a function: functions live inside apps (push the app, "
                          "then `skiff create-function APP NAME --handler FILE:FUNC`)",
                          app->name);
        goto done;
    }
    struct store_process *p = store_app_process(app, name);
    if (p && !store_process_is_function(p)) {
        api_respond_error(req, SKIFF_E_NAME_TAKEN,
                          "app %s has a process type named '%s' that is not a function: name "
                          "the function otherwise",
                          app->name, name);
        goto done;
    }
    bool created = !p;
    if (created) {
        app->processes = xrealloc(app->processes, (app->n_processes + 1) * sizeof *app->processes);
        p = &app->processes[app->n_processes++];
        memset(p, 0, sizeof *p);
        p->type = xstrdup(name);
        p->instances = 0; /* from zero: its events and invokes scale it */
    }
    /* it scales with its work, down to min_instances when idle (0: to zero): a stored policy
     * (store_process_default_policy's, with the bounds given) */
    if (created || !store_process_request_scaled(p)) {
        store_process_default_policy(app->kind, p);
        p->target_concurrency = STORE_DEFAULT_TARGET_CONCURRENCY;
    }
    p->min_instances = (int)min;
    p->max_instances = (int)max;
    if (p->instances < p->min_instances)
        p->instances = p->min_instances;
    free(p->command);
    p->command = api_function_command(runtime, handler);
    free(p->function_json);
    json_t *fn = json_pack("{s:s,s:s}", "handler", handler, "runtime", runtime);
    p->function_json = json_dumps(fn, JSON_COMPACT);
    json_decref(fn);
    if (json_object_get(body, "memory_mb"))
        p->memory_mb = (int)memory;
    if (created && !api_core__quota_admits(core, req, app, 0))
        goto done;
    if (!api_core__mappings_admit(core, req, app, p)) /* its mappings may ask for more */
        goto done;
    app->updated_at = time_now_ms();
    struct functions_write *w = xcalloc(1, sizeof *w);
    *w = (struct functions_write){
        .name = xstrdup(name), .handler = xstrdup(handler), .created = created};
    api_core__app_store_then(core, req, app, false, "cannot store the function",
                             functions__put_stored, w);
    app = NULL;
done:
    store_app_free(app);
    json_decref(body);
}

static void functions__delete_stored(struct api_core *core, struct api_request *req,
                                     struct store_app *app, void *ctx)
{
    struct functions_write *w = ctx;
    if (req) {
        /* its instances stop; its event mappings go with it at once (the invoker drops
         * mappings whose process is gone when told, as it does those of a deleted app) */
        if (core->cfg.scheduler)
            scheduler_app_changed(core->cfg.scheduler, app->guid);
        struct platform_event removed =
            PLATFORM_APP_EVENT(PLATFORM_PROCESS_REMOVED, app->guid, app->name);
        removed.process_type = w->name;
        hub_publish(core->cfg.hub, &removed);
        logs_appendf(core->cfg.logs, app->guid, "API", LOGS_OUT, "Deleted function %s of app %s",
                     w->name, app->name);
        api_respond(req, 204, NULL, NULL, 0);
    }
    functions__write_free(w);
}

static void functions__delete(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    const char *name = api_request_param(req, 1);
    struct store_process *p = functions__find(req, app, name ? name : "");
    if (!p)
        goto done;
    size_t at = (size_t)(p - app->processes);
    free(p->type);
    free(p->command);
    free(p->function_json);
    memmove(p, p + 1, (app->n_processes - at - 1) * sizeof *p);
    app->n_processes--;
    app->updated_at = time_now_ms();
    struct functions_write *w = xcalloc(1, sizeof *w);
    w->name = xstrdup(name);
    api_core__app_store_then(core, req, app, false, "cannot store the app",
                             functions__delete_stored, w);
    return;
done:
    store_app_free(app);
}

void api_core__functions_register(struct api_core *core)
{
    api_route_add(core->api, "GET", "/v1/apps/*/functions",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_APP, functions__list, core);
    api_route_add(core->api, "PUT", "/v1/apps/*/functions/*",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, functions__put, core);
    api_route_add(core->api, "DELETE", "/v1/apps/*/functions/*",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, functions__delete, core);
}
