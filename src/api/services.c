/* The services endpoints (docs/services.md): service instances (user-provided ones here),
 * bindings of apps to them, and what the listings show. Credentials never leave through a
 * listing: only the routes of AUTH_PERM_SPACE_SECRETS unseal them for the caller, and an
 * app's instances get them in VCAP_SERVICES. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/svc_internal.h"
#include "common/util.h"
#include "services/services.h"
#include "store/store.h"

#define SVC_STORE_FAILED "cannot read or write the services' records (see skiffd's output)"

const char *svc__space(struct api_request *req)
{
    const char *space = api_request_space(req);
    return space ? space : STORE_DEFAULT_SPACE_GUID;
}

const char *svc__str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

bool svc__is_user_provided(const json_t *inst)
{
    const char *type = svc__str(inst, "type");
    return type && !strcmp(type, SERVICES_USER_PROVIDED);
}

json_t *svc__instance_named(struct api_svc *a, struct api_request *req, const char *name)
{
    json_t *inst = services_find(a->records, SERVICES_KIND_INSTANCE, svc__space(req), name);
    if (!inst)
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "no service instance named \"%s\" in this space: `skiff services` "
                          "lists them",
                          name);
    return inst;
}

/* The names of the apps an instance is bound to, and its keys' names. */
static void svc__bound(struct api_svc *a, const char *instance_guid, json_t **apps, json_t **keys)
{
    *apps = json_array();
    *keys = json_array();
    json_t *binds =
        services_list(a->records, SERVICES_KIND_BINDING, "instance_guid", instance_guid);
    size_t i;
    json_t *b;
    json_array_foreach(binds, i, b)
    {
        if (!strcmp(svc__str(b, "type") ?: "", "key")) {
            json_array_append(*keys, json_object_get(b, "name"));
            continue;
        }
        struct store_app *app = NULL;
        if (store_app_get(a->store, svc__str(b, "app_guid"), &app) == 0) {
            json_array_append_new(*apps, json_string(app->name));
            store_app_free(app);
        }
    }
    json_decref(binds);
}

/* Answers 200 {key: [view(record), ...]} for records (a services_list result, taken), or a
 * 500 when the store could not list them (records NULL). */
static void svc__respond_views(struct api_request *req, struct api_svc *a, const char *key,
                               json_t *(*view)(struct api_svc *, const json_t *), json_t *records)
{
    if (!records) {
        api_respond_error(req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
        return;
    }
    json_t *out = json_array();
    size_t i;
    json_t *rec;
    json_array_foreach(records, i, rec)
    {
        json_array_append_new(out, view(a, rec));
    }
    json_decref(records);
    api_respond_json(req, 200, json_pack("{s:o}", key, out));
}

json_t *svc__instance_view(struct api_svc *a, const json_t *inst)
{
    static const char *const shown[] = {"guid",
                                        "name",
                                        "type",
                                        "tags",
                                        "syslog_drain_url",
                                        "route_service_url",
                                        "service_name",
                                        "plan_name",
                                        "dashboard_url",
                                        "last_operation",
                                        "created_at",
                                        "updated_at",
                                        NULL};
    json_t *v = json_object();
    for (const char *const *k = shown; *k; k++) {
        json_t *x = json_object_get(inst, *k);
        if (x)
            json_object_set(v, *k, x);
    }
    json_t *broker = services_get(a->records, SERVICES_KIND_BROKER, svc__str(inst, "broker_guid"));
    if (broker)
        json_object_set(v, "broker", json_object_get(broker, "name"));
    json_decref(broker);
    json_t *apps, *keys;
    svc__bound(a, svc__str(inst, "guid"), &apps, &keys);
    json_object_set_new(v, "bound_apps", apps);
    json_object_set_new(v, "service_keys", keys);
    return v;
}

/* ---- checking bodies ---------------------------------------------------------------------- */

json_t *svc__json_string_own(char *s)
{
    json_t *v = json_string(s);
    free(s);
    return v;
}

bool svc__tags(struct api_request *req, json_t *body, json_t **out)
{
    json_t *tags = json_object_get(body, "tags");
    *out = NULL;
    if (!tags || json_is_null(tags))
        return true;
    size_t i, total = 0;
    json_t *t;
    bool ok = json_is_array(tags);
    json_array_foreach(tags, i, t)
    {
        if (!json_is_string(t) || !json_string_length(t))
            ok = false;
        else
            total += json_string_length(t);
    }
    if (!ok || total > 2048) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "tags are a list of words, 2048 characters at most together, like "
                          "[\"db\", \"postgres\"]");
        return false;
    }
    *out = json_deep_copy(tags);
    return true;
}

/* A URL field of a user-provided instance: absent (true, *out NULL), "" (clears it) or a URL
 * with one of the schemes given. */
static bool svc__url_field(struct api_request *req, json_t *body, const char *key,
                           const char *const *schemes, const char *what, json_t **out)
{
    json_t *v = json_object_get(body, key);
    *out = NULL;
    if (!v)
        return true;
    if (json_is_null(v) || (json_is_string(v) && !json_string_length(v))) {
        *out = json_null();
        return true;
    }
    const char *s = json_string_value(v);
    bool ok = s && strlen(s) < 2048 && !strpbrk(s, " \t\r\n");
    bool scheme = false;
    for (const char *const *p = schemes; ok && *p; p++)
        if (str_has_prefix(s, *p) && s[strlen(*p)])
            scheme = true;
    if (!ok || !scheme) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s must be a URL starting with %s%s%s", what,
                          schemes[0], schemes[1] ? " or " : "", schemes[1] ? schemes[1] : "");
        return false;
    }
    *out = json_string(s);
    return true;
}

/* The fields a user-provided instance takes (create and update); false after answering. */
static bool svc__user_provided_fields(struct api_svc *a, struct api_request *req, json_t *body,
                                      json_t *inst)
{
    static const char *const drains[] = {"syslog://", "syslog-tls://", "https://", NULL};
    static const char *const route_services[] = {"https://", NULL};
    json_t *creds = json_object_get(body, "credentials");
    if (creds && !json_is_object(creds)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "credentials must be a JSON object, like {\"uri\": \"...\"}");
        return false;
    }
    json_t *tags, *drain, *route;
    if (!svc__tags(req, body, &tags))
        return false;
    if (!svc__url_field(req, body, "syslog_drain_url", drains, "the syslog drain URL", &drain)) {
        json_decref(tags);
        return false;
    }
    if (!svc__url_field(req, body, "route_service_url", route_services, "the route service URL",
                        &route)) {
        json_decref(tags);
        json_decref(drain);
        return false;
    }
    if (creds)
        json_object_set_new(inst, "credentials",
                            svc__json_string_own(services_seal(a->records, creds)));
    if (tags)
        json_object_set_new(inst, "tags", tags);
    if (drain)
        json_object_set_new(inst, "syslog_drain_url", drain);
    if (route)
        json_object_set_new(inst, "route_service_url", route);
    return true;
}

/* ---- service instances -------------------------------------------------------------------- */

static void svc__instances_list(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    svc__respond_views(req, a, "service_instances", svc__instance_view,
                       services_list(a->records, SERVICES_KIND_INSTANCE, "space_guid",
                                     svc__space(req)));
}

static void svc__instance_get(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    json_t *inst = svc__instance_named(a, req, api_request_param(req, 0));
    if (!inst)
        return;
    api_respond_json(req, 200, svc__instance_view(a, inst));
    json_decref(inst);
}

static void svc__instance_credentials(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    json_t *inst = svc__instance_named(a, req, api_request_param(req, 0));
    if (!inst)
        return;
    if (!svc__is_user_provided(inst)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "only a user-provided service instance has credentials of its own; a "
                          "managed one's come with each binding: `skiff create-service-key %s "
                          "KEY` makes one to read",
                          svc__str(inst, "name"));
        json_decref(inst);
        return;
    }
    json_t *creds = services_unseal(a->records, svc__str(inst, "credentials"));
    json_decref(inst);
    api_respond_json(req, 200, json_pack("{s:o}", "credentials", creds ? creds : json_object()));
}

void svc__stamp(json_t *rec, bool created)
{
    json_int_t now = time_now_ms();
    if (created)
        json_object_set_new(rec, "created_at", json_integer(now));
    json_object_set_new(rec, "updated_at", json_integer(now));
}

/* An answer held until its record's write is stored. */
struct svc_held {
    struct api_request *req;
    int status;
    json_t *body; /* NULL: none */
};

static void svc__held_stored(void *ctx, int rc)
{
    struct svc_held *h = ctx;
    if (rc < 0) {
        json_decref(h->body);
        api_respond_error(h->req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
    } else if (h->body) {
        api_respond_json(h->req, h->status, h->body);
    } else {
        api_respond(h->req, h->status, NULL, NULL, 0);
    }
    free(h);
}

void svc__answer_stored(struct api_svc *a, struct api_request *req, const char *kind,
                        const json_t *rec, const char *guid, int status, json_t *body)
{
    struct svc_held *h = xcalloc(1, sizeof *h);
    h->req = req;
    h->status = status;
    h->body = body;
    int rc = rec ? services_put_async(a->records, kind, rec, svc__held_stored, h)
                 : services_delete_async(a->records, kind, guid, svc__held_stored, h);
    if (rc < 0)
        svc__held_stored(h, rc);
}

void svc__respond_stored(struct api_svc *a, struct api_request *req, int status, json_t *inst)
{
    svc__answer_stored(a, req, SERVICES_KIND_INSTANCE, inst, NULL, status,
                       svc__instance_view(a, inst));
}

static void svc__instance_create(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    static const char *const fields[] = {"name",
                                         "user_provided",
                                         "credentials",
                                         "tags",
                                         "syslog_drain_url",
                                         "route_service_url",
                                         "service",
                                         "plan",
                                         "parameters",
                                         "broker",
                                         NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    json_t *inst = NULL;
    if (!api_json_check_fields(req, body, fields))
        goto done;
    const char *name = svc__str(body, "name");
    if (!services_name_valid(name)) {
        api_respond_error(req, SKIFF_E_INVALID_NAME,
                          "a service instance's name is 1 to 255 letters, digits, '-', '_', '.' "
                          "or inner spaces");
        goto done;
    }
    json_t *taken = services_find(a->records, SERVICES_KIND_INSTANCE, svc__space(req), name);
    if (taken) {
        json_decref(taken);
        api_respond_error(req, SKIFF_E_NAME_TAKEN,
                          "a service instance named \"%s\" exists in this space already", name);
        goto done;
    }
    if (!json_is_true(json_object_get(body, "user_provided"))) {
        svc__managed_create(a, req, body);
        goto done;
    }
    if (json_object_get(body, "service") || json_object_get(body, "plan") ||
        json_object_get(body, "parameters") || json_object_get(body, "broker")) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "a user-provided service instance has no service, plan, broker or "
                          "parameters: give its credentials");
        goto done;
    }
    char guid[37];
    uuid_generate_v4(guid);
    inst = json_pack("{s:s,s:s,s:s,s:s,s:[],s:n,s:n}", "guid", guid, "name", name, "space_guid",
                     svc__space(req), "type", SERVICES_USER_PROVIDED, "tags", "syslog_drain_url",
                     "route_service_url");
    if (!json_object_get(body, "credentials"))
        json_object_set_new(body, "credentials", json_object());
    if (!svc__user_provided_fields(a, req, body, inst))
        goto done;
    json_object_set_new(
        inst, "last_operation",
        json_pack("{s:s,s:s,s:s}", "type", "create", "state", "succeeded", "description", ""));
    svc__stamp(inst, true);
    svc__respond_stored(a, req, 201, inst);
done:
    json_decref(inst);
    json_decref(body);
}

static void svc__instance_update(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    static const char *const fields[] = {
        "name", "credentials", "tags", "syslog_drain_url", "route_service_url",
        "plan", "parameters",  NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    json_t *inst = NULL;
    if (!api_json_check_fields(req, body, fields))
        goto done;
    inst = svc__instance_named(a, req, api_request_param(req, 0));
    if (!inst)
        goto done;
    const char *name = svc__str(body, "name");
    if (name && strcmp(name, svc__str(inst, "name"))) {
        json_t *taken = NULL;
        if (!services_name_valid(name) ||
            (taken = services_find(a->records, SERVICES_KIND_INSTANCE, svc__space(req), name))) {
            api_respond_error(req, taken ? SKIFF_E_NAME_TAKEN : SKIFF_E_INVALID_NAME,
                              taken ? "a service instance named \"%s\" exists in this space already"
                                    : "\"%s\" is not a valid service instance name",
                              name);
            json_decref(taken);
            goto done;
        }
        json_object_set_new(inst, "name", json_string(name));
    }
    if (!svc__is_user_provided(inst)) {
        svc__managed_update(a, req, inst, body);
        goto done;
    }
    if (json_object_get(body, "plan") || json_object_get(body, "parameters")) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "a user-provided service instance has no plan or parameters");
        goto done;
    }
    if (!svc__user_provided_fields(a, req, body, inst))
        goto done;
    svc__stamp(inst, false);
    svc__respond_stored(a, req, 200, inst);
done:
    json_decref(inst);
    json_decref(body);
}

static void svc__instance_delete(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    json_t *inst = svc__instance_named(a, req, api_request_param(req, 0));
    if (!inst)
        return;
    json_t *apps, *keys;
    svc__bound(a, svc__str(inst, "guid"), &apps, &keys);
    if (json_array_size(apps) || json_array_size(keys)) {
        char *list = json_dumps(json_array_size(apps) ? apps : keys, JSON_COMPACT);
        api_respond_error(req, SKIFF_E_NOT_EMPTY,
                          "service instance \"%s\" still has %s %s: unbind them (`skiff "
                          "unbind-service APP %s`) or delete the keys (`skiff delete-service-key "
                          "%s KEY`) first",
                          svc__str(inst, "name"),
                          json_array_size(apps) ? "bindings to the apps" : "service keys", list,
                          svc__str(inst, "name"), svc__str(inst, "name"));
        free(list);
    } else if (!svc__is_user_provided(inst)) {
        svc__managed_delete(a, req, inst);
    } else {
        svc__answer_stored(a, req, SERVICES_KIND_INSTANCE, NULL, svc__str(inst, "guid"), 204, NULL);
    }
    json_decref(apps);
    json_decref(keys);
    json_decref(inst);
}

/* ---- bindings ----------------------------------------------------------------------------- */

/* svc_internal.h; a read off the loop is api_request_app_find's. */
struct store_app *svc__app(struct api_svc *a, struct api_request *req)
{
    struct store_app *app = NULL;
    const char *name = api_request_param(req, 0);
    int rc = api_request_app_find(req, a->store, svc__space(req), name, &app);
    if (rc == -EINPROGRESS)
        return NULL;
    if (rc == -ENOENT)
        api_respond_error(req, rc, "no app named \"%s\" in this space: `skiff apps` lists them",
                          name);
    else if (rc < 0)
        api_respond_error(req, rc, "cannot read the app (see skiffd's output)");
    return rc < 0 ? NULL : app;
}

json_t *svc__binding_view(struct api_svc *a, const json_t *b)
{
    json_t *inst = services_get(a->records, SERVICES_KIND_INSTANCE, svc__str(b, "instance_guid"));
    json_t *v =
        json_pack("{s:O,s:O,s:O,s:s,s:I}", "guid", json_object_get(b, "guid"), "type",
                  json_object_get(b, "type"), "name", json_object_get(b, "name") ?: json_null(),
                  "service_instance", inst ? svc__str(inst, "name") : "", "created_at",
                  json_integer_value(json_object_get(b, "created_at")));
    json_t *op = json_object_get(b, "last_operation");
    if (op)
        json_object_set(v, "last_operation", op);
    json_decref(inst);
    return v;
}

/* The app binding of app_guid to instance_guid, or NULL. */
json_t *svc__binding_of(struct api_svc *a, const char *app_guid, const char *instance_guid)
{
    json_t *binds = services_list(a->records, SERVICES_KIND_BINDING, "app_guid", app_guid);
    json_t *found = NULL;
    size_t i;
    json_t *b;
    json_array_foreach(binds, i, b)
    {
        if (!strcmp(svc__str(b, "instance_guid") ?: "", instance_guid)) {
            found = json_incref(b);
            break;
        }
    }
    json_decref(binds);
    return found;
}

static void svc__bindings_list(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    struct store_app *app = svc__app(a, req);
    if (!app)
        return;
    json_t *binds = services_list(a->records, SERVICES_KIND_BINDING, "app_guid", app->guid);
    store_app_free(app);
    svc__respond_views(req, a, "service_bindings", svc__binding_view, binds);
}

static void svc__binding_create(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    static const char *const fields[] = {"service_instance", "name", "parameters", NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    json_t *inst = NULL, *bind = NULL;
    struct store_app *app = NULL;
    if (!api_json_check_fields(req, body, fields))
        goto done;
    const char *instance_name = svc__str(body, "service_instance");
    json_t *name = json_object_get(body, "name");
    json_t *params = json_object_get(body, "parameters");
    if (!instance_name) {
        api_respond_error(req, SKIFF_E_BAD_JSON,
                          "name the service instance: {\"service_instance\": \"NAME\"}");
        goto done;
    }
    if (name && !json_is_null(name) && !services_name_valid(json_string_value(name))) {
        api_respond_error(req, SKIFF_E_INVALID_NAME,
                          "a binding's name is 1 to 255 letters, digits, '-', '_', '.' or inner "
                          "spaces");
        goto done;
    }
    if (params && !json_is_object(params)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "parameters must be a JSON object");
        goto done;
    }
    if (!(app = svc__app(a, req)) || !(inst = svc__instance_named(a, req, instance_name)))
        goto done;
    json_t *old = svc__binding_of(a, app->guid, svc__str(inst, "guid"));
    if (old) {
        json_decref(old);
        api_respond_error(req, SKIFF_E_NAME_TAKEN, "app %s is already bound to %s", app->name,
                          instance_name);
        goto done;
    }
    if (json_is_string(name)) {
        json_t *binds = services_list(a->records, SERVICES_KIND_BINDING, "app_guid", app->guid);
        size_t i;
        json_t *b;
        bool taken = false;
        json_array_foreach(binds, i, b)
        {
            if (!strcmp(svc__str(b, "name") ?: "", json_string_value(name)))
                taken = true;
        }
        json_decref(binds);
        if (taken) {
            api_respond_error(req, SKIFF_E_NAME_TAKEN, "app %s has a binding named \"%s\" already",
                              app->name, json_string_value(name));
            goto done;
        }
    }
    char guid[37];
    uuid_generate_v4(guid);
    bind = json_pack("{s:s,s:s,s:O,s:s,s:O,s:O,s:n,s:[]}", "guid", guid, "type", "app", "name",
                     json_is_string(name) ? name : json_null(), "app_guid", app->guid,
                     "instance_guid", json_object_get(inst, "guid"), "space_guid",
                     json_object_get(inst, "space_guid"), "syslog_drain_url", "volume_mounts");
    svc__stamp(bind, true);
    if (!svc__is_user_provided(inst)) {
        svc__managed_bind(a, req, inst, bind, params, app);
        goto done;
    }
    if (params && json_object_size(params)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "binding parameters are not supported for a user-provided service "
                          "instance");
        goto done;
    }
    json_object_set_new(
        bind, "last_operation",
        json_pack("{s:s,s:s,s:s}", "type", "create", "state", "succeeded", "description", ""));
    svc__answer_stored(a, req, SERVICES_KIND_BINDING, bind, NULL, 201, svc__binding_view(a, bind));
done:
    store_app_free(app);
    json_decref(bind);
    json_decref(inst);
    json_decref(body);
}

static void svc__binding_delete(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    struct store_app *app = svc__app(a, req);
    if (!app)
        return;
    const char *instance_name = api_request_param(req, 1);
    json_t *inst = svc__instance_named(a, req, instance_name);
    json_t *bind = inst ? svc__binding_of(a, app->guid, svc__str(inst, "guid")) : NULL;
    if (inst && !bind)
        api_respond_error(req, SKIFF_E_NOT_FOUND, "app %s is not bound to %s", app->name,
                          instance_name);
    else if (bind && !svc__is_user_provided(inst))
        svc__managed_unbind(a, req, inst, bind);
    else if (bind)
        svc__answer_stored(a, req, SERVICES_KIND_BINDING, NULL, svc__str(bind, "guid"), 204, NULL);
    json_decref(bind);
    json_decref(inst);
    store_app_free(app);
}

/* ---- wiring ------------------------------------------------------------------------------- */

void api_svc_app_deleted(void *ctx, const char *app_guid)
{
    struct api_svc *a = ctx;
    json_t *binds = services_list(a->records, SERVICES_KIND_BINDING, "app_guid", app_guid);
    size_t i;
    json_t *b;
    json_array_foreach(binds, i, b)
    {
        json_t *inst =
            services_get(a->records, SERVICES_KIND_INSTANCE, svc__str(b, "instance_guid"));
        if (inst && !svc__is_user_provided(inst))
            svc__managed_forget_binding(a, inst, b);
        else
            services_delete(a->records, SERVICES_KIND_BINDING, svc__str(b, "guid"));
        json_decref(inst);
    }
    json_decref(binds);
}

int api_svc_start(const struct api_services *svc, const struct api_svc_config *cfg,
                  struct api_svc **out)
{
    struct api_svc *a = xcalloc(1, sizeof *a);
    a->loop = svc->loop;
    a->api = svc->api;
    a->store = svc->store;
    a->records = cfg->records;
    a->logs = svc->logs;
    for (size_t i = 0; i < ARRAY_SIZE(a->own_addrs) && cfg->own_addrs && cfg->own_addrs[i]; i++)
        a->own_addrs[i] = xstrdup(cfg->own_addrs[i]);
#define SPACE(p) (API_PERM(AUTH_PERM_##p) | API_SCOPE_SPACE)
#define APP(p) (API_PERM(AUTH_PERM_##p) | API_SCOPE_APP)
    static const struct {
        const char *method, *pattern;
        int flags;
        api_handler_fn fn;
    } routes[] = {
        {"GET", "/v1/service_instances", SPACE(SPACE_READ), svc__instances_list},
        {"POST", "/v1/service_instances", SPACE(SPACE_DEVELOP), svc__instance_create},
        {"GET", "/v1/service_instances/*", SPACE(SPACE_READ), svc__instance_get},
        {"PATCH", "/v1/service_instances/*", SPACE(SPACE_DEVELOP), svc__instance_update},
        {"DELETE", "/v1/service_instances/*", SPACE(SPACE_DEVELOP), svc__instance_delete},
        {"GET", "/v1/service_instances/*/credentials", SPACE(SPACE_SECRETS),
         svc__instance_credentials},
        {"GET", "/v1/apps/*/service_bindings", APP(SPACE_READ), svc__bindings_list},
        {"POST", "/v1/apps/*/service_bindings", APP(SPACE_DEVELOP), svc__binding_create},
        {"DELETE", "/v1/apps/*/service_bindings/*", APP(SPACE_DEVELOP), svc__binding_delete},
    };
#undef SPACE
#undef APP
    for (size_t i = 0; i < ARRAY_SIZE(routes); i++)
        api_route_add(a->api, routes[i].method, routes[i].pattern, routes[i].flags, routes[i].fn,
                      a);
    svc__brokers_register(a);
    *out = a;
    return 0;
}

void api_svc_stop(struct api_svc *a)
{
    if (!a)
        return;
    svc__brokers_stop(a);
    for (size_t i = 0; i < ARRAY_SIZE(a->own_addrs); i++)
        free(a->own_addrs[i]);
    free(a);
}
