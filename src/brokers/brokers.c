/* The Open Service Broker API of the built-in brokers: the catalog, and instances and
 * bindings dispatched to their offering's backend. Every operation is synchronous (the
 * stores are local): provisions answer 201 whether or not the platform accepts incomplete
 * ones, which the specification allows.
 *
 * The records (which instance has which offering and plan, each binding's instance and
 * credentials, so that a repeated PUT answers what the first one did) are one JSON file,
 * brokers/state.json (0600), rewritten atomically after each change. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "brokers/brokers.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

struct brokers {
    const struct brokers_backend *backends;
    size_t count;
    char *state_path;
    json_t *state; /* {"instances": {id: {service_id, plan_id}}, "bindings": {id: {...}}} */
};

int brokers_new(const struct brokers_backend *backends, size_t count, const char *state_path,
                struct brokers **out)
{
    struct brokers *b = xcalloc(1, sizeof *b);
    b->backends = backends;
    b->count = count;
    b->state_path = xstrdup(state_path);
    json_error_t jerr;
    b->state = json_load_file(state_path, 0, &jerr);
    if (!json_is_object(b->state)) {
        json_decref(b->state);
        b->state = json_object();
    }
    if (!json_is_object(json_object_get(b->state, "instances")))
        json_object_set_new(b->state, "instances", json_object());
    if (!json_is_object(json_object_get(b->state, "bindings")))
        json_object_set_new(b->state, "bindings", json_object());
    *out = b;
    return 0;
}

void brokers_free(struct brokers *b)
{
    if (!b)
        return;
    json_decref(b->state);
    free(b->state_path);
    free(b);
}

static int brokers__save(struct brokers *b)
{
    char *text = json_dumps(b->state, JSON_COMPACT);
    int rc = file_write_atomic(b->state_path, text, strlen(text), 0600);
    free(text);
    if (rc < 0)
        log_error("cannot write %s: %s", b->state_path, skiff_strerror(rc));
    return rc;
}

json_t *brokers_catalog(const struct brokers *b)
{
    json_t *services = json_array();
    for (size_t i = 0; i < b->count; i++) {
        const struct brokers_backend *be = &b->backends[i];
        json_t *plan = json_pack("{s:s,s:s,s:s,s:b,s:b}", "id", be->plan_id, "name", "shared",
                                 "description", be->plan_description, "free", 1, "bindable", 1);
        json_t *svc =
            json_pack("{s:s,s:s,s:s,s:b,s:b,s:b,s:b,s:o,s:[o],s:{s:s,s:s}}", "id", be->service_id,
                      "name", be->name, "description", be->description, "bindable", 1,
                      "plan_updateable", 0, "instances_retrievable", 0, "bindings_retrievable", 0,
                      "tags", json_loads(be->tags, 0, NULL), "plans", plan, "metadata",
                      "displayName", be->name, "providerDisplayName", "Skiff");
        json_array_append_new(services, svc);
    }
    return json_pack("{s:o}", "services", services);
}

static const struct brokers_backend *brokers__backend(const struct brokers *b,
                                                      const char *service_id)
{
    for (size_t i = 0; service_id && i < b->count; i++)
        if (!strcmp(b->backends[i].service_id, service_id))
            return &b->backends[i];
    return NULL;
}

static json_t *brokers__error(int *status, int code, const char *error, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static json_t *brokers__error(int *status, int code, const char *error, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    *status = code;
    json_t *j = json_pack("{s:s}", "description", msg);
    if (error)
        json_object_set_new(j, "error", json_string(error));
    return j;
}

static const char *brokers__str(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static json_t *brokers__provision(struct brokers *b, const char *id, const json_t *body,
                                  int *status)
{
    const char *service_id = brokers__str(body, "service_id");
    const char *plan_id = brokers__str(body, "plan_id");
    const struct brokers_backend *be = brokers__backend(b, service_id);
    if (!be || !plan_id || strcmp(plan_id, be->plan_id))
        return brokers__error(status, 400, NULL,
                              "service_id and plan_id must name an offering and plan of the "
                              "catalog");
    json_t *inst = json_object_get(json_object_get(b->state, "instances"), id);
    if (inst) {
        bool same = !strcmp(brokers__str(inst, "service_id") ?: "", service_id) &&
                    !strcmp(brokers__str(inst, "plan_id") ?: "", plan_id);
        *status = same ? 200 : 409;
        return json_object();
    }
    char err[512] = "";
    if (be->provision(be->ctx, id, err, sizeof err) < 0)
        return brokers__error(status, 500, NULL, "%s", err);
    json_object_set_new(json_object_get(b->state, "instances"), id,
                        json_pack("{s:s,s:s}", "service_id", service_id, "plan_id", plan_id));
    if (brokers__save(b) < 0)
        return brokers__error(status, 500, NULL, "the broker cannot keep its records");
    *status = 201;
    return json_object();
}

static json_t *brokers__deprovision(struct brokers *b, const char *id, int *status)
{
    json_t *instances = json_object_get(b->state, "instances");
    json_t *inst = json_object_get(instances, id);
    if (!inst) {
        *status = 410;
        return json_object();
    }
    const struct brokers_backend *be = brokers__backend(b, brokers__str(inst, "service_id"));
    char err[512] = "";
    if (be && be->deprovision(be->ctx, id, err, sizeof err) < 0)
        return brokers__error(status, 500, NULL, "%s", err);
    /* bindings the platform did not delete first go with it */
    json_t *bindings = json_object_get(b->state, "bindings");
    const char *key;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(bindings, tmp, key, v)
    {
        if (!strcmp(brokers__str(v, "instance_id") ?: "", id))
            json_object_del(bindings, key);
    }
    json_object_del(instances, id);
    brokers__save(b);
    *status = 200;
    return json_object();
}

static json_t *brokers__bind(struct brokers *b, const char *id, const char *bid, const json_t *body,
                             int *status)
{
    json_t *inst = json_object_get(json_object_get(b->state, "instances"), id);
    if (!inst)
        return brokers__error(status, 404, NULL, "no service instance %s", id);
    const char *service_id = brokers__str(body, "service_id");
    if (service_id && strcmp(service_id, brokers__str(inst, "service_id") ?: ""))
        return brokers__error(status, 400, NULL, "service_id is not the instance's offering");
    json_t *bindings = json_object_get(b->state, "bindings");
    json_t *known = json_object_get(bindings, bid);
    if (known) {
        if (strcmp(brokers__str(known, "instance_id") ?: "", id)) {
            *status = 409;
            return json_object();
        }
        *status = 200;
        return json_pack("{s:O}", "credentials", json_object_get(known, "credentials"));
    }
    const struct brokers_backend *be = brokers__backend(b, brokers__str(inst, "service_id"));
    if (!be)
        return brokers__error(status, 500, NULL, "the instance's offering is gone");
    json_t *creds = NULL;
    char err[512] = "";
    if (be->bind(be->ctx, id, bid, &creds, err, sizeof err) < 0)
        return brokers__error(status, 500, NULL, "%s", err);
    json_object_set_new(bindings, bid,
                        json_pack("{s:s,s:O}", "instance_id", id, "credentials", creds));
    if (brokers__save(b) < 0) {
        json_decref(creds);
        return brokers__error(status, 500, NULL, "the broker cannot keep its records");
    }
    *status = 201;
    return json_pack("{s:o}", "credentials", creds);
}

static json_t *brokers__unbind(struct brokers *b, const char *id, const char *bid, int *status)
{
    json_t *bindings = json_object_get(b->state, "bindings");
    json_t *known = json_object_get(bindings, bid);
    if (!known || strcmp(brokers__str(known, "instance_id") ?: "", id)) {
        *status = 410;
        return json_object();
    }
    json_t *inst = json_object_get(json_object_get(b->state, "instances"), id);
    const struct brokers_backend *be = brokers__backend(b, brokers__str(inst, "service_id"));
    char err[512] = "";
    if (be && be->unbind(be->ctx, id, bid, err, sizeof err) < 0)
        return brokers__error(status, 500, NULL, "%s", err);
    json_object_del(bindings, bid);
    brokers__save(b);
    *status = 200;
    return json_object();
}

/* Splits path into at most max segments (percent-decoded); the count, or -1. */
static int brokers__segments(const char *target, char *seg[], int max)
{
    size_t plen = strcspn(target, "?");
    char *path = xstrndup(target, plen);
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(path, "/", &save); tok;
         tok = strtok_r(NULL, "/", &save)) {
        if (n == max) {
            n = -1;
            break;
        }
        seg[n++] = xstrdup(tok);
    }
    free(path);
    if (n < 0)
        for (int i = 0; i < max; i++)
            free(seg[i]), seg[i] = NULL;
    return n;
}

json_t *brokers_handle(struct brokers *b, const char *method, const char *target, const char *body,
                       size_t body_len, int *status)
{
    char *seg[6] = {0};
    int n = brokers__segments(target, seg, 6);
    json_t *req = NULL, *out = NULL;
    if (body && body_len) {
        req = json_loadb(body, body_len, 0, NULL);
        if (!json_is_object(req)) {
            out = brokers__error(status, 400, NULL, "the body is not a JSON object");
            goto done;
        }
    }
    if (n == 2 && !strcmp(seg[0], "v2") && !strcmp(seg[1], "catalog")) {
        if (strcmp(method, "GET"))
            goto method;
        *status = 200;
        out = brokers_catalog(b);
        goto done;
    }
    if (n < 3 || strcmp(seg[0], "v2") || strcmp(seg[1], "service_instances"))
        goto not_found;
    if (!brokers_id_valid(seg[2]) || (n >= 5 && !brokers_id_valid(seg[4]))) {
        out = brokers__error(status, 400, NULL,
                             "ids are 1 to 64 letters, digits and '-' for these brokers");
        goto done;
    }
    if (n == 3) {
        if (!strcmp(method, "PUT"))
            out = req ? brokers__provision(b, seg[2], req, status)
                      : brokers__error(status, 400, NULL, "provisioning needs a JSON body");
        else if (!strcmp(method, "DELETE"))
            out = brokers__deprovision(b, seg[2], status);
        else if (!strcmp(method, "PATCH"))
            out = brokers__error(status, 422, NULL,
                                 "the built-in offerings have one plan and no parameters: there "
                                 "is nothing to update");
        else
            goto method;
    } else if (n == 4 && !strcmp(seg[3], "last_operation")) {
        bool known = json_object_get(json_object_get(b->state, "instances"), seg[2]);
        *status = known ? 200 : 410;
        out = known ? json_pack("{s:s}", "state", "succeeded") : json_object();
    } else if (n == 5 && !strcmp(seg[3], "service_bindings")) {
        if (!strcmp(method, "PUT"))
            out = brokers__bind(b, seg[2], seg[4], req, status);
        else if (!strcmp(method, "DELETE"))
            out = brokers__unbind(b, seg[2], seg[4], status);
        else
            goto method;
    } else if (n == 6 && !strcmp(seg[3], "service_bindings") && !strcmp(seg[5], "last_operation")) {
        bool known = json_object_get(json_object_get(b->state, "bindings"), seg[4]);
        *status = known ? 200 : 410;
        out = known ? json_pack("{s:s}", "state", "succeeded") : json_object();
    } else {
        goto not_found;
    }
    goto done;
method:
    out = brokers__error(status, 405, NULL, "%s is not allowed here", method);
    goto done;
not_found:
    out = brokers__error(status, 404, NULL, "no such endpoint of the Open Service Broker API");
done:
    json_decref(req);
    for (int i = 0; i < 6; i++)
        free(seg[i]);
    return out;
}
