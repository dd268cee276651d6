/* The managed side of services: service brokers, the marketplace, and the operations that
 * go through a broker over the Open Service Broker API (docs/services.md).
 *
 * Every broker call runs on libuv's thread pool (services_osb_perform, blocking libcurl), so
 * the loop never waits for a broker. One `struct svc_op` is one thing being done with a
 * broker: its call, then, as the answer says, the reply to the waiting request, polling of
 * last_operation (a timer tick; Retry-After honoured, the plan's maximum_polling_duration
 * the deadline), fetching an asynchronous binding, or orphan mitigation (the spec's table:
 * a provision or bind answered with 5xx, a timeout, a malformed 201 or an unexpected 2xx, or
 * whose asynchronous operation failed, is deleted at the broker, retried with backoff).
 * Records say where each operation stands, so a restarted skiffd resumes polling. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/svc_internal.h"
#include "auth/auth.h"
#include "common/log.h"
#include "common/util.h"
#include "http/url.h"
#include "services/services.h"
#include "store/store.h"

#define SVC_STORE_FAILED "cannot read or write the services' records (see skiffd's output)"
#define SVC_TICK_MS 200
#define SVC_POLL_FIRST_MS 1000
#define SVC_POLL_MAX_MS 15000
#define SVC_DEFAULT_POLL_DURATION_S (24 * 3600)
#define SVC_ORPHAN_TRIES 6
/* Broker calls at once: the rest of skiffd shares libuv's pool (4 threads; password hashing,
 * staging copies), so slow brokers may hold no more than half of it. */
#define SVC_MAX_CALLS 2
#define SVC_KIND_ORPHAN "service.orphan" /* what is still to delete at a broker */

enum svc_op_kind {
    OP_CATALOG,         /* create or update a broker: GET /v2/catalog */
    OP_PROVISION,       /* PUT instance */
    OP_UPDATE,          /* PATCH instance */
    OP_DEPROVISION,     /* DELETE instance */
    OP_BIND,            /* PUT binding (an app's or a key) */
    OP_UNBIND,          /* DELETE binding */
    OP_ORPHAN_INSTANCE, /* DELETE instance the platform does not keep */
    OP_ORPHAN_BINDING,  /* DELETE binding the platform does not keep */
};

enum svc_step { STEP_REQUEST, STEP_POLL, STEP_FETCH };

struct svc_op {
    struct api_svc *a;
    struct svc_op *next;
    enum svc_op_kind kind;
    enum svc_step step;
    char instance_guid[37], binding_guid[37], broker_guid[37];
    char service_id[256], plan_id[256];
    char *operation;         /* the broker's token of an asynchronous operation */
    struct api_request *req; /* waiting for the first answer, or NULL */
    json_t *pending;         /* OP_CATALOG: the broker record to store once its catalog is good */
    bool replace;            /* OP_CATALOG: updating a stored broker */
    struct services_osb_call call;
    uv_work_t work;
    bool queued;      /* a call is in the pool, or waits for a slot */
    bool waiting;     /* ... waits for a slot (SVC_MAX_CALLS) */
    int64_t next_at;  /* mono ms when the next call is due (0: none planned) */
    int64_t deadline; /* mono ms: polling gives up */
    int interval_ms;
    int tries;
    api_svc_registered_fn registered; /* OP_CATALOG of a built-in broker: no request waits */
    void *registered_arg;
};

static volatile int svc__aborting;

/* ---- helpers ------------------------------------------------------------------------------ */

static char *svc__enc(const char *s)
{
    return http_percent_encode(s ? s : "", http_is_unreserved);
}

static json_t *svc__broker(struct api_svc *a, const char *guid)
{
    return services_get(a->records, SERVICES_KIND_BROKER, guid);
}

/* The brokers a space sees: the platform's and its own. */
static json_t *svc__visible_brokers(struct api_svc *a, const char *space)
{
    json_t *all = services_list(a->records, SERVICES_KIND_BROKER, NULL, NULL);
    json_t *out = json_array();
    size_t i;
    json_t *b;
    json_array_foreach(all, i, b)
    {
        const char *s = svc__str(b, "space_guid");
        if (!s || !strcmp(s, space))
            json_array_append(out, b);
    }
    json_decref(all);
    return out;
}

/* The org of the request's space. */
static const char *svc__org(struct api_svc *a, struct api_request *req)
{
    struct auth *auth = api_auth(a->api);
    const struct auth_space *sp = auth ? auth_space_get(auth, svc__space(req)) : NULL;
    return sp ? sp->org_guid : AUTH_DEFAULT_ORG_GUID;
}

static bool svc__is_admin(struct api_request *req);

/* Whether the plan of broker b may be used by the request's org (Cloud Foundry's plan
 * visibility): a space-scoped broker's plans by its space (it is visible only there), a
 * platform broker's plans once the admin enabled them for all orgs or for this one; the
 * admin sees and uses every plan. */
static bool svc__plan_visible(struct api_svc *a, struct api_request *req, const json_t *b,
                              const json_t *plan)
{
    if (json_is_string(json_object_get(b, "space_guid")) || svc__is_admin(req))
        return true;
    const json_t *access =
        json_object_get(json_object_get(b, "access"), svc__str(plan, "id") ?: "");
    if (json_is_string(access))
        return !strcmp(json_string_value(access), "all");
    const char *org = svc__org(a, req);
    size_t i;
    json_t *o;
    json_array_foreach(access, i, o)
    {
        if (!strcmp(json_string_value(o) ?: "", org))
            return true;
    }
    return false;
}

/* The plan's maximum_polling_duration in seconds (or the default). */
static int64_t svc__max_poll_s(struct api_svc *a, const char *broker_guid, const char *service_id,
                               const char *plan_id)
{
    json_t *broker = svc__broker(a, broker_guid);
    json_t *offering = NULL, *plan = NULL;
    int64_t secs = SVC_DEFAULT_POLL_DURATION_S;
    if (broker &&
        services_catalog_find(json_object_get(broker, "catalog"), service_id, plan_id, &offering,
                              &plan) &&
        json_is_integer(json_object_get(plan, "maximum_polling_duration")))
        secs = json_integer_value(json_object_get(plan, "maximum_polling_duration"));
    json_decref(broker);
    return secs;
}

static json_t *svc__op_state(const char *type, const char *state, const char *description)
{
    return json_pack("{s:s,s:s,s:s}", "type", type, "state", state, "description",
                     description ? description : "");
}

/* A record about to be sent to its broker: its new operation is in progress, and nothing of
 * an earlier asynchronous one is left (resuming after a restart reads it). */
static void svc__begin(json_t *rec, const char *type)
{
    json_object_set_new(rec, "last_operation", svc__op_state(type, "in progress", ""));
    json_object_del(rec, "operation");
    json_object_del(rec, "async");
}

static int svc__timeout_s(void)
{
    const char *v = getenv("SKIFF_BROKER_TIMEOUT_S");
    int secs = v ? atoi(v) : 0;
    return secs > 0 ? secs : 60;
}

/* Fills op->call for METHOD broker-url + path (path already encoded), with body (taken). */
static bool svc__call_setup(struct svc_op *op, const char *method, char *path, json_t *body,
                            const char *identity)
{
    struct api_svc *a = op->a;
    json_t *broker = svc__broker(a, op->broker_guid);
    if (!broker && op->pending)
        broker = json_incref(op->pending);
    services_osb_call_clean(&op->call);
    if (!broker) {
        free(path);
        json_decref(body);
        return false;
    }
    const char *url = svc__str(broker, "url");
    size_t n = strlen(url);
    while (n && url[n - 1] == '/')
        n--;
    op->call.method = method;
    op->call.url = xasprintf("%.*s%s", (int)n, url, path);
    op->call.body = body ? json_dumps(body, JSON_COMPACT) : NULL;
    op->call.username = xstrdup(svc__str(broker, "username") ?: "");
    json_t *pw = services_unseal(a->records, svc__str(broker, "password"));
    op->call.password = xstrdup(json_string_value(pw) ?: "");
    json_decref(pw);
    op->call.identity = identity ? xstrdup(identity) : NULL;
    op->call.timeout_s = svc__timeout_s();
    op->call.abort = &svc__aborting;
    json_decref(broker);
    json_decref(body);
    free(path);
    return true;
}

static void svc__op_free(struct svc_op *op)
{
    struct api_svc *a = op->a;
    for (struct svc_op **p = &a->ops; *p; p = &(*p)->next)
        if (*p == op) {
            *p = op->next;
            break;
        }
    services_osb_call_clean(&op->call);
    json_decref(op->pending);
    free(op->operation);
    free(op);
}

static struct svc_op *svc__op_new(struct api_svc *a, enum svc_op_kind kind,
                                  const json_t *inst_or_broker, const json_t *binding)
{
    struct svc_op *op = xcalloc(1, sizeof *op);
    op->a = a;
    op->kind = kind;
    op->interval_ms = SVC_POLL_FIRST_MS;
    if (kind != OP_CATALOG && inst_or_broker) {
        snprintf(op->instance_guid, sizeof op->instance_guid, "%s",
                 svc__str(inst_or_broker, "guid") ?: "");
        snprintf(op->broker_guid, sizeof op->broker_guid, "%s",
                 svc__str(inst_or_broker, "broker_guid") ?: "");
        snprintf(op->service_id, sizeof op->service_id, "%s",
                 svc__str(inst_or_broker, "service_id") ?: "");
        snprintf(op->plan_id, sizeof op->plan_id, "%s", svc__str(inst_or_broker, "plan_id") ?: "");
    }
    if (binding)
        snprintf(op->binding_guid, sizeof op->binding_guid, "%s", svc__str(binding, "guid") ?: "");
    op->next = a->ops;
    a->ops = op;
    return op;
}

static void svc__op_after(uv_work_t *w, int status);

static void svc__op_work(uv_work_t *w)
{
    struct svc_op *op = w->data;
    services_osb_perform(&op->call);
}

/* Runs the call set up in op->call on the pool. */
static void svc__op_go(struct svc_op *op)
{
    op->next_at = 0;
    op->queued = true;
    op->work.data = op;
    if (!svc__aborting && op->a->calls_running >= SVC_MAX_CALLS) {
        op->waiting = true; /* started when a call ends (svc__start_waiting) */
        return;
    }
    op->waiting = false;
    op->a->calls_running++;
    if (svc__aborting || uv_queue_work(op->a->loop, &op->work, svc__op_work, svc__op_after) < 0) {
        op->a->calls_running--;
        /* answered as a broker that cannot be reached */
        snprintf(op->call.error, sizeof op->call.error, "skiffd is stopping");
        op->call.status = 0;
        svc__op_after(&op->work, 0);
    }
}

static char *svc__identity(struct api_request *req)
{
    if (!req)
        return NULL;
    const struct auth_principal *p = api_request_principal(req);
    return services_osb_identity(p && p->kind == AUTH_USER ? p->user_guid : "admin");
}

/* The context object and organization/space guids a provision, update or bind carries. */
static void svc__add_context(struct api_svc *a, json_t *body, const char *space_guid,
                             const char *instance_name)
{
    struct auth *auth = api_auth(a->api);
    const struct auth_space *space = auth ? auth_space_get(auth, space_guid) : NULL;
    const struct auth_org *org = space ? auth_org_find(auth, space->org_guid) : NULL;
    const char *org_guid = org ? org->guid : AUTH_DEFAULT_ORG_GUID;
    json_t *ctx = json_pack("{s:s,s:s,s:s}", "platform", "cloudfoundry", "organization_guid",
                            org_guid, "space_guid", space_guid);
    if (org)
        json_object_set_new(ctx, "organization_name", json_string(org->name));
    if (space)
        json_object_set_new(ctx, "space_name", json_string(space->name));
    if (instance_name)
        json_object_set_new(ctx, "instance_name", json_string(instance_name));
    json_object_set_new(body, "context", ctx);
    json_object_set_new(body, "organization_guid", json_string(org_guid));
    json_object_set_new(body, "space_guid", json_string(space_guid));
}

/* "the broker X answered HTTP 500 to PUT ...: desc" / "cannot reach ...". */
static void svc__call_failure(const struct svc_op *op, const char *what, char *out, size_t size)
{
    char desc[400];
    services_osb_describe(&op->call, desc, sizeof desc);
    if (op->call.status)
        snprintf(out, size, "the service broker answered HTTP %ld to %s%s%s", op->call.status, what,
                 *desc ? ": " : "", desc);
    else if (op->call.timed_out)
        snprintf(out, size, "the service broker did not answer %s within %ld s", what,
                 op->call.timeout_s);
    else
        snprintf(out, size, "cannot reach the service broker for %s: %s", what, op->call.error);
}

/* ---- orphan mitigation -------------------------------------------------------------------- */

/* An orphan to delete is kept as a record until its broker confirms, so a restart goes on
 * trying: its id names what it is. */
static char *svc__orphan_id(const struct svc_op *op)
{
    return op->kind == OP_ORPHAN_INSTANCE
               ? xasprintf("instance:%s", op->instance_guid)
               : xasprintf("binding:%s:%s", op->instance_guid, op->binding_guid);
}

static void svc__orphan_forget(struct svc_op *op)
{
    char *id = svc__orphan_id(op);
    services_delete(op->a->records, SVC_KIND_ORPHAN, id);
    free(id);
}

static struct svc_op *svc__orphan_new(struct api_svc *a, enum svc_op_kind kind,
                                      const char *broker_guid, const char *instance_guid,
                                      const char *binding_guid, const char *service_id,
                                      const char *plan_id)
{
    struct svc_op *op = svc__op_new(a, kind, NULL, NULL);
    snprintf(op->broker_guid, sizeof op->broker_guid, "%s", broker_guid ? broker_guid : "");
    snprintf(op->instance_guid, sizeof op->instance_guid, "%s", instance_guid ? instance_guid : "");
    snprintf(op->binding_guid, sizeof op->binding_guid, "%s", binding_guid ? binding_guid : "");
    snprintf(op->service_id, sizeof op->service_id, "%s", service_id ? service_id : "");
    snprintf(op->plan_id, sizeof op->plan_id, "%s", plan_id ? plan_id : "");
    op->next_at = time_mono_ms(); /* at the next tick */
    return op;
}

static void svc__orphan_start(struct api_svc *a, enum svc_op_kind kind, const char *broker_guid,
                              const char *instance_guid, const char *binding_guid,
                              const char *service_id, const char *plan_id)
{
    struct svc_op *op =
        svc__orphan_new(a, kind, broker_guid, instance_guid, binding_guid, service_id, plan_id);
    char *id = svc__orphan_id(op);
    json_t *rec = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "guid", id, "kind",
                            kind == OP_ORPHAN_INSTANCE ? "instance" : "binding", "broker_guid",
                            op->broker_guid, "instance_guid", op->instance_guid, "binding_guid",
                            op->binding_guid, "service_id", op->service_id, "plan_id",
                            op->plan_id);
    if (services_put(a->records, SVC_KIND_ORPHAN, rec) < 0)
        log_error("cannot record orphan %s (it is cleaned up now, but not after a restart)", id);
    json_decref(rec);
    free(id);
}

/* After a restart: the orphans still to delete. */
static void svc__orphans_resume(struct api_svc *a)
{
    json_t *all = services_list(a->records, SVC_KIND_ORPHAN, NULL, NULL);
    size_t i;
    json_t *rec;
    json_array_foreach(all, i, rec)
    {
        svc__orphan_new(a,
                        !strcmp(svc__str(rec, "kind") ?: "", "instance") ? OP_ORPHAN_INSTANCE
                                                                        : OP_ORPHAN_BINDING,
                        svc__str(rec, "broker_guid"), svc__str(rec, "instance_guid"),
                        svc__str(rec, "binding_guid"), svc__str(rec, "service_id"),
                        svc__str(rec, "plan_id"));
    }
    json_decref(all);
}

static void svc__orphan_call(struct svc_op *op)
{
    char *sid = svc__enc(op->service_id), *pid = svc__enc(op->plan_id);
    char *path = op->kind == OP_ORPHAN_INSTANCE
                     ? xasprintf("/v2/service_instances/%s?service_id=%s&plan_id=%s",
                                 op->instance_guid, sid, pid)
                     : xasprintf("/v2/service_instances/%s/service_bindings/%s?service_id=%s&"
                                 "plan_id=%s",
                                 op->instance_guid, op->binding_guid, sid, pid);
    free(sid);
    free(pid);
    if (svc__call_setup(op, "DELETE", path, NULL, NULL)) {
        svc__op_go(op);
    } else {
        svc__orphan_forget(op); /* the broker is gone: nothing to clean up through */
        svc__op_free(op);
    }
}

static void svc__orphan_answered(struct svc_op *op)
{
    long st = op->call.status;
    if ((st >= 200 && st < 300) || st == 410) {
        log_info("orphan mitigation: the broker removed %s %s",
                 op->kind == OP_ORPHAN_INSTANCE ? "service instance" : "binding",
                 op->kind == OP_ORPHAN_INSTANCE ? op->instance_guid : op->binding_guid);
        svc__orphan_forget(op);
        svc__op_free(op);
        return;
    }
    if (++op->tries >= SVC_ORPHAN_TRIES) {
        log_warning("orphan mitigation: giving up on %s %s at its broker after %d tries (last: "
                    "HTTP %ld %s)",
                    op->kind == OP_ORPHAN_INSTANCE ? "service instance" : "binding",
                    op->kind == OP_ORPHAN_INSTANCE ? op->instance_guid : op->binding_guid,
                    op->tries, st, op->call.error);
        svc__orphan_forget(op);
        svc__op_free(op);
        return;
    }
    op->next_at = time_mono_ms() + (1000 << op->tries);
}

/* ---- brokers ------------------------------------------------------------------------------ */

static json_t *svc__broker_view(struct api_svc *a, const json_t *b)
{
    json_t *v = json_pack("{s:O,s:O,s:O,s:O,s:b,s:I}", "guid", json_object_get(b, "guid"), "name",
                          json_object_get(b, "name"), "url", json_object_get(b, "url"), "username",
                          json_object_get(b, "username"), "space_scoped",
                          json_is_string(json_object_get(b, "space_guid")), "created_at",
                          json_integer_value(json_object_get(b, "created_at")));
    json_t *names = json_array();
    size_t i;
    json_t *svc;
    json_array_foreach(json_object_get(json_object_get(b, "catalog"), "services"), i, svc)
    {
        json_array_append(names, json_object_get(svc, "name"));
    }
    json_object_set_new(v, "services", names);
    const char *space = svc__str(b, "space_guid");
    struct auth *auth = api_auth(a->api);
    const struct auth_space *sp = space && auth ? auth_space_get(auth, space) : NULL;
    const struct auth_org *org = sp ? auth_org_find(auth, sp->org_guid) : NULL;
    if (sp && org)
        json_object_set_new(v, "space", json_sprintf("%s/%s", org->name, sp->name));
    return v;
}

static bool svc__is_admin(struct api_request *req)
{
    const struct auth_principal *p = api_request_principal(req);
    return p && p->admin;
}

/* The broker of that name the caller may change: a space-scoped one of the request's space,
 * or (for the admin) a platform one; NULL after answering. */
static json_t *svc__broker_named(struct api_svc *a, struct api_request *req, const char *name)
{
    json_t *b = services_find(a->records, SERVICES_KIND_BROKER, svc__space(req), name);
    if (!b) {
        b = services_find(a->records, SERVICES_KIND_BROKER, NULL, name);
        if (b && !svc__is_admin(req)) {
            api_respond_error(req, SKIFF_E_FORBIDDEN,
                              "the service broker %s serves the whole platform: only the platform "
                              "admin changes it",
                              name);
            json_decref(b);
            return NULL;
        }
    }
    if (!b)
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "no service broker named \"%s\": `skiff service-brokers` lists them",
                          name);
    return b;
}

/* Whether url is one a broker may have: http(s), no user in it, not one of skiffd's own
 * listeners. False after answering 422. */
static bool svc__broker_url_ok(struct api_svc *a, struct api_request *req, const char *url)
{
    const char *rest = NULL;
    int port = 0;
    if (url && str_has_prefix(url, "http://")) {
        rest = url + 7;
        port = 80;
    } else if (url && str_has_prefix(url, "https://")) {
        rest = url + 8;
        port = 443;
    }
    size_t hostlen = rest ? strcspn(rest, "/?#") : 0;
    char authority[300] = "";
    if (rest && hostlen < sizeof authority)
        memcpy(authority, rest, hostlen), authority[hostlen] = '\0';
    if (!rest || !hostlen || hostlen >= sizeof authority || strlen(url) > 2000 ||
        strpbrk(url, " \t\r\n")) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "a broker URL is http:// or https:// and a host, like "
                          "https://broker.example.com");
        return false;
    }
    if (strchr(authority, '@')) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "give the broker's user and password as arguments, not in its URL");
        return false;
    }
    char host[300];
    snprintf(host, sizeof host, "%s", authority);
    char *colon = host[0] == '[' ? strstr(host, "]:") : strrchr(host, ':');
    if (colon) {
        if (host[0] == '[')
            colon++;
        port = atoi(colon + 1);
        *colon = '\0';
    }
    bool loopback = !strcasecmp(host, "localhost") || str_has_prefix(host, "127.") ||
                    !strcmp(host, "0.0.0.0") || !strcmp(host, "[::1]") || !strcmp(host, "[::]");
    for (size_t i = 0; i < ARRAY_SIZE(a->own_addrs) && a->own_addrs[i]; i++) {
        const char *own = a->own_addrs[i];
        const char *oc = strrchr(own, ':');
        if (!oc || atoi(oc + 1) != port)
            continue;
        if (loopback || !strncmp(own, host, (size_t)(oc - own))) {
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              "%s is one of the platform's own addresses, not a service broker",
                              authority);
            return false;
        }
    }
    return true;
}

/* A stored catalog's plans, each opened to every org (a built-in broker's, when first
 * registered: its offerings are the platform's own). */
static void svc__open_plans(json_t *b)
{
    json_t *access = json_object();
    size_t i, j;
    json_t *svc, *plan;
    json_array_foreach(json_object_get(json_object_get(b, "catalog"), "services"), i, svc)
    {
        json_array_foreach(json_object_get(svc, "plans"), j, plan)
        {
            json_object_set_new(access, svc__str(plan, "id"), json_string("all"));
        }
    }
    json_object_set_new(b, "access", access);
}

static void svc__catalog_answered(struct svc_op *op)
{
    struct api_svc *a = op->a;
    struct api_request *req = op->req;
    op->req = NULL;
    char msg[600] = "", err[300];
    enum skiff_err code = SKIFF_OK;
    bool store = false; /* the catalog is good: the broker's record is written */
    json_t *catalog = op->call.json;
    if (op->call.status != 200) {
        svc__call_failure(op, "GET /v2/catalog", msg, sizeof msg);
        code = SKIFF_E_BROKER;
    } else if (!catalog) {
        code = SKIFF_E_BROKER;
        snprintf(msg, sizeof msg, "the service broker's catalog (GET /v2/catalog) is not JSON");
    } else if (services_catalog_validate(catalog, err, sizeof err) < 0) {
        code = SKIFF_E_BROKER;
        snprintf(msg, sizeof msg, "the service broker's catalog is not valid: %s", err);
    } else {
        const char *name = svc__str(op->pending, "name");
        json_t *taken = services_find(a->records, SERVICES_KIND_BROKER,
                                      svc__str(op->pending, "space_guid"), name);
        if (!taken)
            taken = services_find(a->records, SERVICES_KIND_BROKER, NULL, name);
        bool clash = taken && strcmp(svc__str(taken, "guid"), svc__str(op->pending, "guid"));
        json_decref(taken);
        if (clash) {
            code = SKIFF_E_NAME_TAKEN;
            snprintf(msg, sizeof msg, "a service broker named %s exists already", name);
        } else {
            json_object_set(op->pending, "catalog", catalog);
            if (op->registered && !op->replace)
                svc__open_plans(op->pending);
            svc__stamp(op->pending, !op->replace);
            store = true;
        }
    }
    if (store && !op->registered) { /* answered once it is stored */
        svc__answer_stored(a, req, SERVICES_KIND_BROKER, op->pending, NULL, op->replace ? 200 : 201,
                           svc__broker_view(a, op->pending));
        svc__op_free(op);
        return;
    }
    if (store && services_put(a->records, SERVICES_KIND_BROKER, op->pending) < 0) {
        code = SKIFF_E_INTERNAL;
        snprintf(msg, sizeof msg, SVC_STORE_FAILED);
    }
    if (op->registered)
        op->registered(op->registered_arg, code == SKIFF_OK, msg);
    else if (code != SKIFF_OK)
        api_respond_error(req, code, "%s", msg);
    else
        api_respond_json(req, op->replace ? 200 : 201, svc__broker_view(a, op->pending));
    svc__op_free(op);
}

/* Fetches the catalog of the broker record b (owned by the op) and stores b once it is good;
 * answers req. */
static void svc__catalog_fetch(struct api_svc *a, struct api_request *req, json_t *b, bool replace)
{
    struct svc_op *op = svc__op_new(a, OP_CATALOG, NULL, NULL);
    op->pending = b;
    op->replace = replace;
    op->req = req;
    if (!svc__call_setup(op, "GET", xstrdup("/v2/catalog"), NULL, NULL)) {
        op->req = NULL;
        svc__op_free(op);
        api_respond_error(req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
        return;
    }
    svc__op_go(op);
}

void api_svc_builtin_broker(struct api_svc *a, const char *name, const char *url,
                            const char *username, const char *password, const char *owner,
                            api_svc_registered_fn cb, void *arg)
{
    json_t *b = services_find(a->records, SERVICES_KIND_BROKER, NULL, name);
    bool replace = b != NULL;
    if (!b) {
        char guid[37];
        uuid_generate_v4(guid);
        b = json_pack("{s:s,s:s,s:n}", "guid", guid, "name", name, "space_guid");
    }
    json_object_set_new(b, "url", json_string(url));
    json_object_set_new(b, "username", json_string(username));
    json_object_set_new(b, "builtin_owner", json_string(owner));
    json_t *pw = json_string(password);
    json_object_set_new(b, "password", svc__json_string_own(services_seal(a->records, pw)));
    json_decref(pw);
    struct svc_op *op = svc__op_new(a, OP_CATALOG, NULL, NULL);
    op->pending = b;
    op->replace = replace;
    op->registered = cb;
    op->registered_arg = arg;
    if (!svc__call_setup(op, "GET", xstrdup("/v2/catalog"), NULL, NULL)) {
        svc__op_free(op);
        cb(arg, false, SVC_STORE_FAILED);
        return;
    }
    svc__op_go(op);
}

/* name, url, username, password into b (create: all required); false after answering. */
static bool svc__broker_fields(struct api_svc *a, struct api_request *req, json_t *body, json_t *b,
                               bool create)
{
    static const char *const keys[] = {"name", "url", "username", "password"};
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        json_t *v = json_object_get(body, keys[i]);
        if (!v && !create)
            continue;
        if (!json_is_string(v) || (!json_string_length(v) && strcmp(keys[i], "password"))) {
            api_respond_error(req, SKIFF_E_BAD_JSON, "a service broker needs its %s (a string)",
                              keys[i]);
            return false;
        }
    }
    const char *name = svc__str(body, "name");
    if (name && !services_name_valid(name)) {
        api_respond_error(req, SKIFF_E_INVALID_NAME,
                          "a broker's name is 1 to 255 letters, digits, '-', '_', '.' or inner "
                          "spaces");
        return false;
    }
    const char *url = svc__str(body, "url");
    if (url && !svc__broker_url_ok(a, req, url))
        return false;
    if (name)
        json_object_set_new(b, "name", json_string(name));
    if (url)
        json_object_set_new(b, "url", json_string(url));
    if (svc__str(body, "username"))
        json_object_set(b, "username", json_object_get(body, "username"));
    if (json_object_get(body, "password"))
        json_object_set_new(
            b, "password",
            svc__json_string_own(services_seal(a->records, json_object_get(body, "password"))));
    return true;
}

static void svc__brokers_create(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    static const char *const fields[] = {"name",     "url",          "username",
                                         "password", "space_scoped", NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    if (!api_json_check_fields(req, body, fields))
        goto done;
    bool scoped = json_is_true(json_object_get(body, "space_scoped"));
    if (!scoped && !svc__is_admin(req)) {
        api_respond_error(req, SKIFF_E_FORBIDDEN,
                          "only the platform admin registers a broker for the whole platform: "
                          "a SpaceDeveloper registers one for a space (--space-scoped)");
        goto done;
    }
    char guid[37];
    uuid_generate_v4(guid);
    json_t *b = json_pack("{s:s}", "guid", guid);
    json_object_set_new(b, "space_guid", scoped ? json_string(svc__space(req)) : json_null());
    if (!svc__broker_fields(a, req, body, b, true)) {
        json_decref(b);
        goto done;
    }
    const char *name = svc__str(b, "name");
    json_t *taken = services_find(a->records, SERVICES_KIND_BROKER, NULL, name);
    if (!taken)
        taken = services_find(a->records, SERVICES_KIND_BROKER, svc__space(req), name);
    if (taken) {
        api_respond_error(req, SKIFF_E_NAME_TAKEN, "a service broker named %s exists already",
                          name);
        json_decref(taken);
        json_decref(b);
        goto done;
    }
    svc__catalog_fetch(a, req, b, false);
done:
    json_decref(body);
}

static void svc__brokers_update(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    static const char *const fields[] = {"name", "url", "username", "password", NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    json_t *b = NULL;
    if (api_json_check_fields(req, body, fields) &&
        (b = svc__broker_named(a, req, api_request_param(req, 0))) &&
        svc__broker_fields(a, req, body, b, false)) {
        svc__catalog_fetch(a, req, b, true);
        b = NULL;
    }
    json_decref(b);
    json_decref(body);
}

static void svc__brokers_delete(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    json_t *b = svc__broker_named(a, req, api_request_param(req, 0));
    if (!b)
        return;
    json_t *insts =
        services_list(a->records, SERVICES_KIND_INSTANCE, "broker_guid", svc__str(b, "guid"));
    if (!insts)
        api_respond_error(req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
    else if (json_array_size(insts))
        api_respond_error(req, SKIFF_E_NOT_EMPTY,
                          "the service broker %s still has %zu service instance(s): delete them "
                          "first",
                          svc__str(b, "name"), json_array_size(insts));
    else {
        /* the built-in brokers' owner goes with their record: the next skiffd to start is */
        if (json_object_get(b, "builtin_owner"))
            services_shared_forget(a->records, SERVICES_KIND_BUILTIN_OWNER);
        svc__answer_stored(a, req, SERVICES_KIND_BROKER, NULL, svc__str(b, "guid"), 204, NULL);
    }
    json_decref(insts);
    json_decref(b);
}

static void svc__brokers_list(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    json_t *all = svc__is_admin(req) ? services_list(a->records, SERVICES_KIND_BROKER, NULL, NULL)
                                     : svc__visible_brokers(a, svc__space(req));
    json_t *out = json_array();
    size_t i;
    json_t *b;
    json_array_foreach(all, i, b)
    {
        /* the admin sees every space's brokers; others the platform's and their space's */
        json_array_append_new(out, svc__broker_view(a, b));
    }
    json_decref(all);
    api_respond_json(req, 200, json_pack("{s:o}", "service_brokers", out));
}

static void svc__marketplace(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    const char *only = api_request_query(req, "service");
    json_t *brokers = svc__visible_brokers(a, svc__space(req));
    json_t *out = json_array();
    size_t i, j, k;
    json_t *b, *svc, *plan;
    json_array_foreach(brokers, i, b)
    {
        json_array_foreach(json_object_get(json_object_get(b, "catalog"), "services"), j, svc)
        {
            if (only && strcmp(only, svc__str(svc, "name")))
                continue;
            json_t *plans = json_array();
            json_array_foreach(json_object_get(svc, "plans"), k, plan)
            {
                if (!svc__plan_visible(a, req, b, plan))
                    continue;
                json_t *free_ = json_object_get(plan, "free");
                json_array_append_new(plans, json_pack("{s:O,s:O,s:b}", "name",
                                                       json_object_get(plan, "name"), "description",
                                                       json_object_get(plan, "description"), "free",
                                                       !free_ || json_is_true(free_)));
            }
            if (!json_array_size(plans)) {
                json_decref(plans); /* nothing of it this org may use */
                continue;
            }
            json_t *tags = json_object_get(svc, "tags");
            json_array_append_new(
                out,
                json_pack("{s:O,s:O,s:O,s:O,s:o,s:o}", "service", json_object_get(svc, "name"),
                          "description", json_object_get(svc, "description"), "broker",
                          json_object_get(b, "name"), "bindable", json_object_get(svc, "bindable"),
                          "plans", plans, "tags", tags ? json_incref(tags) : json_array()));
        }
    }
    json_decref(brokers);
    if (only && !json_array_size(out)) {
        json_decref(out);
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "no service offering named %s in the marketplace: `skiff marketplace` "
                          "lists them",
                          only);
        return;
    }
    api_respond_json(req, 200, json_pack("{s:o}", "services", out));
}

/* ---- plan access (the admin's) ------------------------------------------------------------ */

/* GET /v1/service_access[?broker=&service=]: every plan of the platform brokers with who may
 * use it: "all", "none" or "limited" with the orgs' names. */
static void svc__access_list(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    const char *only_broker = api_request_query(req, "broker");
    const char *only_service = api_request_query(req, "service");
    struct auth *auth = api_auth(a->api);
    json_t *brokers = services_list(a->records, SERVICES_KIND_BROKER, "space_guid", NULL);
    json_t *out = json_array();
    size_t i, j, k, m;
    json_t *b, *svc, *plan, *o;
    json_array_foreach(brokers, i, b)
    {
        if (only_broker && strcmp(only_broker, svc__str(b, "name")))
            continue;
        json_array_foreach(json_object_get(json_object_get(b, "catalog"), "services"), j, svc)
        {
            if (only_service && strcmp(only_service, svc__str(svc, "name")))
                continue;
            json_array_foreach(json_object_get(svc, "plans"), k, plan)
            {
                const json_t *acc =
                    json_object_get(json_object_get(b, "access"), svc__str(plan, "id"));
                json_t *orgs = json_array();
                json_array_foreach(acc, m, o)
                {
                    const struct auth_org *org =
                        auth ? auth_org_find(auth, json_string_value(o)) : NULL;
                    if (org)
                        json_array_append_new(orgs, json_string(org->name));
                }
                const char *access = json_is_string(acc) ? "all"
                                     : json_array_size(orgs) ? "limited"
                                                             : "none";
                json_array_append_new(out, json_pack("{s:O,s:O,s:O,s:s,s:o}", "broker",
                                                     json_object_get(b, "name"), "service",
                                                     json_object_get(svc, "name"), "plan",
                                                     json_object_get(plan, "name"), "access",
                                                     access, "orgs", orgs));
            }
        }
    }
    json_decref(brokers);
    api_respond_json(req, 200, json_pack("{s:o}", "service_access", out));
}

/* PUT /v1/service_access {service, broker, plan, org, enable}: opens (or closes) the plans of
 * an offering (or one plan) to every org, or to one. */
static void svc__access_set(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    static const char *const fields[] = {"service", "broker", "plan", "org", "enable", NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    json_t *brokers = NULL;
    if (!api_json_check_fields(req, body, fields))
        goto done;
    const char *service = svc__str(body, "service"), *broker_name = svc__str(body, "broker");
    const char *plan_name = svc__str(body, "plan"), *org_name = svc__str(body, "org");
    json_t *enable = json_object_get(body, "enable");
    if (!service || !json_is_boolean(enable)) {
        api_respond_error(req, SKIFF_E_BAD_JSON,
                          "say which offering and whether to enable: {\"service\": ..., "
                          "\"enable\": true}");
        goto done;
    }
    struct auth *auth = api_auth(a->api);
    const struct auth_org *org = org_name && auth ? auth_org_find(auth, org_name) : NULL;
    if (org_name && !org) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no org named %s: `skiff orgs` lists them",
                          org_name);
        goto done;
    }
    brokers = services_list(a->records, SERVICES_KIND_BROKER, "space_guid", NULL);
    json_t *target = NULL, *offering = NULL;
    int offered = 0;
    size_t i;
    json_t *b;
    json_array_foreach(brokers, i, b)
    {
        json_t *o = NULL, *p = NULL;
        if (broker_name && strcmp(broker_name, svc__str(b, "name")))
            continue;
        if (services_catalog_find(json_object_get(b, "catalog"), service, NULL, &o, &p)) {
            offered++;
            target = b;
            offering = o;
        }
    }
    if (!offered) {
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "no platform broker offers %s%s%s: `skiff service-access` lists what "
                          "there is",
                          service, broker_name ? " as " : "", broker_name ? broker_name : "");
        goto done;
    }
    if (offered > 1) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "several brokers offer %s: name one with -b BROKER", service);
        goto done;
    }
    json_t *access = json_object_get(target, "access");
    if (!json_is_object(access)) {
        access = json_object();
        json_object_set_new(target, "access", access);
    }
    size_t changed = 0, k;
    json_t *plan;
    json_array_foreach(json_object_get(offering, "plans"), k, plan)
    {
        if (plan_name && strcmp(plan_name, svc__str(plan, "name")))
            continue;
        changed++;
        const char *id = svc__str(plan, "id");
        json_t *cur = json_object_get(access, id);
        if (!org) {
            if (json_is_true(enable))
                json_object_set_new(access, id, json_string("all"));
            else
                json_object_del(access, id);
            continue;
        }
        if (json_is_string(cur)) {
            if (json_is_true(enable))
                continue; /* open to all already */
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              "the plan %s is available to every org: disable it for all (without "
                              "-o), then enable it for the orgs that keep it",
                              svc__str(plan, "name"));
            goto done;
        }
        json_t *orgs = json_is_array(cur) ? json_incref(cur) : json_array();
        size_t m;
        json_t *o;
        json_array_foreach(orgs, m, o)
        {
            if (!strcmp(json_string_value(o) ?: "", org->guid))
                break;
        }
        bool listed = m < json_array_size(orgs);
        if (json_is_true(enable) && !listed)
            json_array_append_new(orgs, json_string(org->guid));
        else if (!json_is_true(enable) && listed)
            json_array_remove(orgs, m);
        if (json_array_size(orgs))
            json_object_set(access, id, orgs);
        else
            json_object_del(access, id);
        json_decref(orgs);
    }
    if (!changed) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "the service offering %s has no plan named %s",
                          service, plan_name);
        goto done;
    }
    svc__stamp(target, false);
    svc__answer_stored(a, req, SERVICES_KIND_BROKER, target, NULL, 204, NULL);
done:
    json_decref(brokers);
    json_decref(body);
}

/* ---- instances ---------------------------------------------------------------------------- */

/* Re-reads the op's instance and sets its last operation (and more, by fn); false when the
 * instance is gone. */
static bool svc__instance_set(struct svc_op *op, const char *type, const char *state,
                              const char *desc, void (*more)(struct svc_op *op, json_t *inst))
{
    json_t *inst = services_get(op->a->records, SERVICES_KIND_INSTANCE, op->instance_guid);
    if (!inst)
        return false;
    json_object_set_new(inst, "last_operation", svc__op_state(type, state, desc));
    if (strcmp(state, "in progress")) {
        json_object_del(inst, "operation");
        json_object_del(inst, "async");
    }
    if (more)
        more(op, inst);
    svc__stamp(inst, false);
    if (services_put(op->a->records, SERVICES_KIND_INSTANCE, inst) < 0)
        log_error("cannot store service instance %s's state", op->instance_guid);
    json_decref(inst);
    return true;
}

static const char *svc__op_type(const struct svc_op *op)
{
    switch (op->kind) {
    case OP_PROVISION:
    case OP_BIND:
        return "create";
    case OP_UPDATE:
        return "update";
    default:
        return "delete";
    }
}

static void svc__poll_plan(struct svc_op *op)
{
    long ra = op->call.retry_after;
    int64_t wait = ra >= 0 ? ra * 1000 : op->interval_ms;
    if (ra < 0 && op->interval_ms < SVC_POLL_MAX_MS)
        op->interval_ms *= 2;
    op->step = STEP_POLL;
    op->next_at = time_mono_ms() + (wait < 100 ? 100 : wait);
}

static void svc__async_started(struct svc_op *op)
{
    const char *operation = json_string_value(json_object_get(op->call.json, "operation"));
    free(op->operation);
    op->operation = operation && strlen(operation) <= 10000 ? xstrdup(operation) : NULL;
    op->deadline = time_mono_ms() +
                   1000 * svc__max_poll_s(op->a, op->broker_guid, op->service_id, op->plan_id);
    svc__poll_plan(op);
}

static void svc__keep_operation(struct svc_op *op, json_t *rec)
{
    json_object_set_new(rec, "async", json_true());
    json_object_set_new(rec, "operation", op->operation ? json_string(op->operation) : json_null());
}

static void svc__set_dashboard(struct svc_op *op, json_t *inst)
{
    const char *dash = json_string_value(json_object_get(op->call.json, "dashboard_url"));
    if (dash)
        json_object_set_new(inst, "dashboard_url", json_string(dash));
}

/* An update that finished: the plan asked for becomes the instance's. */
static void svc__apply_plan(struct svc_op *op, json_t *inst)
{
    json_t *want_id = json_object_get(inst, "pending_plan_id");
    json_t *want_name = json_object_get(inst, "pending_plan_name");
    if (json_is_string(want_id) && json_is_string(want_name)) {
        json_object_set(inst, "plan_id", want_id);
        json_object_set(inst, "plan_name", want_name);
    }
    json_object_del(inst, "pending_plan_id");
    json_object_del(inst, "pending_plan_name");
    svc__set_dashboard(op, inst);
}

static void svc__drop_plan(struct svc_op *op, json_t *inst)
{
    json_object_del(inst, "pending_plan_id");
    json_object_del(inst, "pending_plan_name");
}

static void svc__respond_instance(struct svc_op *op, int status)
{
    struct api_request *req = op->req;
    op->req = NULL;
    if (!req)
        return;
    json_t *inst = services_get(op->a->records, SERVICES_KIND_INSTANCE, op->instance_guid);
    if (inst)
        api_respond_json(req, status, svc__instance_view(op->a, inst));
    else
        api_respond(req, 204, NULL, NULL, 0);
    json_decref(inst);
}

/* Whether the spec's table asks for orphan mitigation after this answer to a create. */
static bool svc__needs_orphan_mitigation(const struct svc_op *op, bool malformed)
{
    long st = op->call.status;
    if (st == 0)
        return op->call.timed_out;
    if (st == 201)
        return malformed;
    if (st >= 500)
        return true;
    return st >= 200 && st < 300 && st != 200 && st != 202;
}

static void svc__provision_answered(struct svc_op *op)
{
    struct api_svc *a = op->a;
    long st = op->call.status;
    bool malformed = !json_is_object(op->call.json);
    char msg[600];
    if ((st == 200 || st == 201) && !malformed) {
        svc__instance_set(op, "create", "succeeded", "", svc__set_dashboard);
        svc__respond_instance(op, 201);
        svc__op_free(op);
        return;
    }
    if (st == 202 && !malformed) {
        svc__async_started(op);
        op->step = STEP_POLL;
        svc__instance_set(op, "create", "in progress", "", svc__keep_operation);
        svc__respond_instance(op, 202);
        return;
    }
    svc__call_failure(op, "the provision", msg, sizeof msg);
    if (st == 200 && malformed)
        snprintf(msg, sizeof msg,
                 "the service broker's answer to the provision is not a JSON "
                 "object");
    bool orphan = svc__needs_orphan_mitigation(op, malformed);
    /* nothing is kept of an instance the broker did not make */
    services_delete(a->records, SERVICES_KIND_INSTANCE, op->instance_guid);
    if (orphan)
        svc__orphan_start(a, OP_ORPHAN_INSTANCE, op->broker_guid, op->instance_guid, NULL,
                          op->service_id, op->plan_id);
    if (op->req)
        api_respond_error(
            op->req, st == 422 || st == 400 || st == 409 ? SKIFF_E_INVALID_VALUE : SKIFF_E_BROKER,
            "%s%s", msg,
            orphan ? " (the platform asked the broker to delete whatever it made)" : "");
    op->req = NULL;
    svc__op_free(op);
}

static void svc__update_answered(struct svc_op *op)
{
    long st = op->call.status;
    char msg[600];
    if (st == 200 && json_is_object(op->call.json)) {
        svc__instance_set(op, "update", "succeeded", "", svc__apply_plan);
        svc__respond_instance(op, 200);
        svc__op_free(op);
        return;
    }
    if (st == 202 && json_is_object(op->call.json)) {
        svc__async_started(op);
        svc__instance_set(op, "update", "in progress", "", svc__keep_operation);
        svc__respond_instance(op, 202);
        return;
    }
    svc__call_failure(op, "the update", msg, sizeof msg);
    svc__instance_set(op, "update", "failed", msg, svc__drop_plan);
    if (op->req) {
        bool busy =
            st == 422 && !strcmp(json_string_value(json_object_get(op->call.json, "error")) ?: "",
                                 "ConcurrencyError");
        api_respond_error(op->req,
                          busy                    ? SKIFF_E_IN_PROGRESS
                          : st >= 400 && st < 500 ? SKIFF_E_INVALID_VALUE
                                                  : SKIFF_E_BROKER,
                          "%s", msg);
    }
    op->req = NULL;
    svc__op_free(op);
}

static void svc__deprovision_answered(struct svc_op *op)
{
    struct api_svc *a = op->a;
    long st = op->call.status;
    char msg[600];
    if (st == 200 || st == 410) {
        services_delete(a->records, SERVICES_KIND_INSTANCE, op->instance_guid);
        if (op->req)
            api_respond(op->req, 204, NULL, NULL, 0);
        op->req = NULL;
        svc__op_free(op);
        return;
    }
    if (st == 202) {
        svc__async_started(op);
        svc__instance_set(op, "delete", "in progress", "", svc__keep_operation);
        svc__respond_instance(op, 202);
        return;
    }
    svc__call_failure(op, "the deprovision", msg, sizeof msg);
    bool busy =
        st == 422 && !strcmp(json_string_value(json_object_get(op->call.json, "error")) ?: "",
                             "ConcurrencyError");
    svc__instance_set(op, "delete", "failed", msg, NULL);
    if (op->req)
        api_respond_error(op->req, busy ? SKIFF_E_IN_PROGRESS : SKIFF_E_BROKER, "%s", msg);
    op->req = NULL;
    svc__op_free(op);
}

/* ---- bindings ----------------------------------------------------------------------------- */

static bool svc__binding_set(struct svc_op *op, const char *type, const char *state,
                             const char *desc, const json_t *answer, bool async)
{
    json_t *b = services_get(op->a->records, SERVICES_KIND_BINDING, op->binding_guid);
    if (!b)
        return false;
    json_object_set_new(b, "last_operation", svc__op_state(type, state, desc));
    if (async) {
        svc__keep_operation(op, b);
    } else if (strcmp(state, "in progress")) {
        json_object_del(b, "operation");
        json_object_del(b, "async");
    }
    if (answer) {
        json_t *creds = json_object_get(answer, "credentials");
        if (json_is_object(creds))
            json_object_set_new(b, "credentials",
                                svc__json_string_own(services_seal(op->a->records, creds)));
        const char *drain = json_string_value(json_object_get(answer, "syslog_drain_url"));
        if (drain)
            json_object_set_new(b, "syslog_drain_url", json_string(drain));
        json_t *mounts = json_object_get(answer, "volume_mounts");
        if (json_is_array(mounts))
            json_object_set(b, "volume_mounts", mounts);
    }
    int rc = services_put(op->a->records, SERVICES_KIND_BINDING, b);
    json_decref(b);
    return rc == 0;
}

/* A binding's answer: sent once the writes queued before it are made, with the record as the
 * store then holds it. */
struct svc_binding_answer {
    struct api_svc *a;
    struct api_request *req;
    int status;
};

static void svc__binding_stored(void *ctx, json_t *b)
{
    struct svc_binding_answer *w = ctx;
    if (b)
        api_respond_json(w->req, w->status, svc__binding_view(w->a, b));
    else
        api_respond_error(w->req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
    json_decref(b);
    free(w);
}

static void svc__respond_binding(struct svc_op *op, int status)
{
    struct api_request *req = op->req;
    op->req = NULL;
    if (!req)
        return;
    struct svc_binding_answer *w = xcalloc(1, sizeof *w);
    w->a = op->a;
    w->req = req;
    w->status = status;
    if (services_get_stored_async(op->a->records, SERVICES_KIND_BINDING, op->binding_guid,
                                  svc__binding_stored, w) < 0)
        svc__binding_stored(w, NULL);
}

static bool svc__answer_malformed(const json_t *answer)
{
    if (!json_is_object(answer))
        return true;
    json_t *creds = json_object_get(answer, "credentials");
    return creds && !json_is_object(creds);
}

static void svc__bind_answered(struct svc_op *op)
{
    struct api_svc *a = op->a;
    long st = op->call.status;
    bool malformed = svc__answer_malformed(op->call.json);
    char msg[600];
    if ((st == 200 || st == 201) && !malformed) {
        svc__binding_set(op, "create", "succeeded", "", op->call.json, false);
        svc__respond_binding(op, 201);
        svc__op_free(op);
        return;
    }
    if (st == 202 && json_is_object(op->call.json)) {
        svc__async_started(op);
        svc__binding_set(op, "create", "in progress", "", NULL, true);
        svc__respond_binding(op, 202);
        return;
    }
    svc__call_failure(op, "the binding", msg, sizeof msg);
    if ((st == 200 || st == 201) && malformed)
        snprintf(msg, sizeof msg,
                 "the service broker's answer to the binding is not a JSON object with "
                 "credentials as an object");
    bool orphan = svc__needs_orphan_mitigation(op, malformed);
    services_delete(a->records, SERVICES_KIND_BINDING, op->binding_guid);
    if (orphan)
        svc__orphan_start(a, OP_ORPHAN_BINDING, op->broker_guid, op->instance_guid,
                          op->binding_guid, op->service_id, op->plan_id);
    if (op->req)
        api_respond_error(
            op->req, st >= 400 && st < 500 && st != 408 ? SKIFF_E_INVALID_VALUE : SKIFF_E_BROKER,
            "%s%s", msg,
            orphan ? " (the platform asked the broker to delete whatever it made)" : "");
    op->req = NULL;
    svc__op_free(op);
}

static void svc__unbind_answered(struct svc_op *op)
{
    struct api_svc *a = op->a;
    long st = op->call.status;
    char msg[600];
    if (st == 200 || st == 410) {
        services_delete(a->records, SERVICES_KIND_BINDING, op->binding_guid);
        if (op->req)
            api_respond(op->req, 204, NULL, NULL, 0);
        op->req = NULL;
        svc__op_free(op);
        return;
    }
    if (st == 202) {
        svc__async_started(op);
        svc__binding_set(op, "delete", "in progress", "", NULL, true);
        svc__respond_binding(op, 202);
        return;
    }
    svc__call_failure(op, "the unbinding", msg, sizeof msg);
    svc__binding_set(op, "delete", "failed", msg, NULL, false);
    if (op->req)
        api_respond_error(op->req, SKIFF_E_BROKER, "%s", msg);
    op->req = NULL;
    svc__op_free(op);
}

/* ---- polling ------------------------------------------------------------------------------ */

static bool svc__binding_kind(const struct svc_op *op)
{
    return op->kind == OP_BIND || op->kind == OP_UNBIND;
}

static void svc__poll_call(struct svc_op *op)
{
    char *sid = svc__enc(op->service_id), *pid = svc__enc(op->plan_id);
    char *opq = op->operation ? svc__enc(op->operation) : NULL;
    char *base = svc__binding_kind(op) ? xasprintf("/v2/service_instances/%s/service_bindings/%s",
                                                   op->instance_guid, op->binding_guid)
                                       : xasprintf("/v2/service_instances/%s", op->instance_guid);
    char *path = op->step == STEP_FETCH
                     ? xasprintf("%s", base)
                     : xasprintf("%s/last_operation?service_id=%s&plan_id=%s%s%s", base, sid, pid,
                                 opq ? "&operation=" : "", opq ? opq : "");
    free(base);
    free(sid);
    free(pid);
    free(opq);
    if (svc__call_setup(op, "GET", path, NULL, NULL))
        svc__op_go(op);
    else
        svc__op_free(op);
}

/* The async operation of op ended as state ("succeeded" or "failed"). */
static void svc__async_ended(struct svc_op *op, bool ok, const char *desc)
{
    struct api_svc *a = op->a;
    switch (op->kind) {
    case OP_PROVISION:
        svc__instance_set(op, "create", ok ? "succeeded" : "failed", desc, NULL);
        if (!ok)
            svc__orphan_start(a, OP_ORPHAN_INSTANCE, op->broker_guid, op->instance_guid, NULL,
                              op->service_id, op->plan_id);
        break;
    case OP_UPDATE:
        svc__instance_set(op, "update", ok ? "succeeded" : "failed", desc,
                          ok ? svc__apply_plan : svc__drop_plan);
        break;
    case OP_DEPROVISION:
        if (ok)
            services_delete(a->records, SERVICES_KIND_INSTANCE, op->instance_guid);
        else
            svc__instance_set(op, "delete", "failed", desc, NULL);
        break;
    case OP_BIND:
        if (ok) {
            op->step = STEP_FETCH;
            svc__poll_call(op);
            return;
        }
        svc__binding_set(op, "create", "failed", desc, NULL, false);
        svc__orphan_start(a, OP_ORPHAN_BINDING, op->broker_guid, op->instance_guid,
                          op->binding_guid, op->service_id, op->plan_id);
        break;
    case OP_UNBIND:
        if (ok)
            services_delete(a->records, SERVICES_KIND_BINDING, op->binding_guid);
        else
            svc__binding_set(op, "delete", "failed", desc, NULL, false);
        break;
    default:
        break;
    }
    svc__op_free(op);
}

static void svc__poll_answered(struct svc_op *op)
{
    long st = op->call.status;
    if (op->step == STEP_FETCH) {
        if (st == 200 && !svc__answer_malformed(op->call.json)) {
            svc__binding_set(op, "create", "succeeded", "", op->call.json, false);
            svc__op_free(op);
        } else if (time_mono_ms() < op->deadline) {
            op->next_at = time_mono_ms() + op->interval_ms;
        } else {
            svc__async_ended(op, false, "the broker did not give the binding's credentials");
        }
        return;
    }
    const char *state = json_string_value(json_object_get(op->call.json, "state"));
    const char *desc = json_string_value(json_object_get(op->call.json, "description"));
    if (st == 410 && (op->kind == OP_DEPROVISION || op->kind == OP_UNBIND)) {
        svc__async_ended(op, true, "");
    } else if (st == 200 && state && !strcmp(state, "succeeded")) {
        svc__async_ended(op, true, desc);
    } else if (st == 200 && state && !strcmp(state, "failed")) {
        char msg[400];
        snprintf(msg, sizeof msg, "%.300s", desc && *desc ? desc : "the broker says it failed");
        svc__async_ended(op, false, msg);
    } else if (time_mono_ms() >= op->deadline) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "the broker did not finish within %lld s (the plan's maximum_polling_duration)",
                 (long long)svc__max_poll_s(op->a, op->broker_guid, op->service_id, op->plan_id));
        svc__async_ended(op, false, msg);
    } else {
        /* in progress, or an answer that says nothing (5xx, no connection): ask again */
        if (st == 200 && desc && !svc__binding_kind(op))
            svc__instance_set(op, svc__op_type(op), "in progress", desc, svc__keep_operation);
        svc__poll_plan(op);
    }
}

/* Starts calls that waited for a slot, oldest first, while there are slots. */
static void svc__start_waiting(struct api_svc *a)
{
    while (a->calls_running < SVC_MAX_CALLS) {
        struct svc_op *oldest = NULL;
        for (struct svc_op *op = a->ops; op; op = op->next)
            if (op->waiting)
                oldest = op; /* new ops are added at the head */
        if (!oldest)
            return;
        svc__op_go(oldest);
    }
}

static void svc__op_after(uv_work_t *w, int status)
{
    struct svc_op *op = w->data;
    op->queued = false;
    if (op->work.loop) /* a call that ran (not one answered at once in svc__op_go) */
        op->a->calls_running--;
    op->work.loop = NULL;
    svc__start_waiting(op->a);
    if (status == UV_ECANCELED || svc__aborting) {
        /* skiffd is stopping: the records say where each operation stands, and the next start
         * resumes from them (an unanswered create is cleaned up then) */
        if (op->req)
            api_respond_error(op->req, SKIFF_E_UNAVAILABLE,
                              "skiffd is stopping; `skiff service` says how this ended once it "
                              "runs again");
        op->req = NULL;
        if (op->registered)
            op->registered(op->registered_arg, false, "skiffd is stopping");
        svc__op_free(op);
        return;
    }
    if (op->step != STEP_REQUEST) {
        svc__poll_answered(op);
        return;
    }
    switch (op->kind) {
    case OP_CATALOG:
        svc__catalog_answered(op);
        break;
    case OP_PROVISION:
        svc__provision_answered(op);
        break;
    case OP_UPDATE:
        svc__update_answered(op);
        break;
    case OP_DEPROVISION:
        svc__deprovision_answered(op);
        break;
    case OP_BIND:
        svc__bind_answered(op);
        break;
    case OP_UNBIND:
        svc__unbind_answered(op);
        break;
    case OP_ORPHAN_INSTANCE:
    case OP_ORPHAN_BINDING:
        svc__orphan_answered(op);
        break;
    }
}

static void svc__tick(uv_timer_t *t)
{
    struct api_svc *a = t->data;
    int64_t now = time_mono_ms();
    svc__start_waiting(a);
    for (struct svc_op *op = a->ops, *next; op; op = next) {
        next = op->next;
        if (svc__aborting || op->queued || !op->next_at || op->next_at > now)
            continue;
        if (op->kind == OP_ORPHAN_INSTANCE || op->kind == OP_ORPHAN_BINDING)
            svc__orphan_call(op);
        else
            svc__poll_call(op);
    }
}

/* ---- the managed operations --------------------------------------------------------------- */

/* An instance busy with an operation takes no other; false after answering 409. */
static bool svc__idle(struct api_request *req, const json_t *inst)
{
    const json_t *op = json_object_get(inst, "last_operation");
    if (strcmp(svc__str(op, "state") ?: "", "in progress"))
        return true;
    api_respond_error(req, SKIFF_E_IN_PROGRESS,
                      "service instance %s is busy: its %s is in progress (`skiff service %s`)",
                      svc__str(inst, "name"), svc__str(op, "type"), svc__str(inst, "name"));
    return false;
}

void svc__managed_create(struct api_svc *a, struct api_request *req, json_t *body)
{
    const char *service = svc__str(body, "service"), *plan_name = svc__str(body, "plan");
    const char *broker_name = svc__str(body, "broker");
    json_t *params = json_object_get(body, "parameters");
    if (!service || !plan_name) {
        api_respond_error(req, SKIFF_E_BAD_JSON,
                          "name the service offering and plan ({\"service\": ..., \"plan\": "
                          "...}), or make a user-provided instance ({\"user_provided\": true})");
        return;
    }
    if (params && !json_is_object(params)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "parameters must be a JSON object");
        return;
    }
    json_t *tags = NULL;
    if (!svc__tags(req, body, &tags))
        return;
    json_t *brokers = svc__visible_brokers(a, svc__space(req));
    json_t *broker = NULL, *offering = NULL, *plan = NULL;
    int offered = 0;
    char err[300];
    size_t i;
    json_t *b;
    json_array_foreach(brokers, i, b)
    {
        json_t *o = NULL, *p = NULL;
        if (broker_name && strcmp(broker_name, svc__str(b, "name")))
            continue;
        if (!services_catalog_find(json_object_get(b, "catalog"), service, NULL, &o, &p))
            continue;
        offered++;
        broker = b;
        offering = o;
        services_catalog_find(json_object_get(b, "catalog"), service, plan_name, &o, &plan);
    }
    if (!offered) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "no service offering named %s%s%s in the marketplace: `skiff "
                          "marketplace` lists them",
                          service, broker_name ? " from the broker " : "",
                          broker_name ? broker_name : "");
    } else if (offered > 1) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "several brokers offer %s: name one with -b BROKER", service);
    } else if (!plan || !svc__plan_visible(a, req, broker, plan)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "the service offering %s has no plan named %s for this org: `skiff "
                          "marketplace -e %s` lists its plans (the platform admin makes more "
                          "available with `skiff enable-service-access`)",
                          service, plan_name, service);
    } else if (services_parameters_check(plan, "service_instance.create", params, err,
                                         sizeof err) < 0) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s (the plan %s's schema)", err,
                          plan_name);
    } else {
        char guid[37];
        uuid_generate_v4(guid);
        json_t *inst = json_pack(
            "{s:s,s:O,s:s,s:s,s:O,s:O,s:O,s:O,s:O,s:o,s:n,s:n}", "guid", guid, "name",
            json_object_get(body, "name"), "space_guid", svc__space(req), "type", "managed",
            "broker_guid", json_object_get(broker, "guid"), "service_id",
            json_object_get(offering, "id"), "service_name", json_object_get(offering, "name"),
            "plan_id", json_object_get(plan, "id"), "plan_name", json_object_get(plan, "name"),
            "tags", tags ? tags : json_array(), "syslog_drain_url", "route_service_url");
        tags = NULL;
        svc__begin(inst, "create");
        svc__stamp(inst, true);
        if (services_put(a->records, SERVICES_KIND_INSTANCE, inst) < 0) {
            api_respond_error(req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
        } else {
            struct svc_op *op = svc__op_new(a, OP_PROVISION, inst, NULL);
            op->req = req;
            json_t *pb = json_pack("{s:O,s:O}", "service_id", json_object_get(offering, "id"),
                                   "plan_id", json_object_get(plan, "id"));
            if (params)
                json_object_set(pb, "parameters", params);
            svc__add_context(a, pb, svc__space(req), svc__str(inst, "name"));
            char *identity = svc__identity(req);
            svc__call_setup(op, "PUT",
                            xasprintf("/v2/service_instances/%s?accepts_incomplete=true", guid), pb,
                            identity);
            free(identity);
            svc__op_go(op);
        }
        json_decref(inst);
    }
    json_decref(tags);
    json_decref(brokers);
}

void svc__managed_update(struct api_svc *a, struct api_request *req, json_t *inst, json_t *body)
{
    static const char *const ups_only[] = {"credentials", "syslog_drain_url", "route_service_url"};
    for (size_t i = 0; i < ARRAY_SIZE(ups_only); i++)
        if (json_object_get(body, ups_only[i])) {
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              "%s belongs to user-provided instances; a managed one's come from "
                              "its broker",
                              ups_only[i]);
            return;
        }
    if (!svc__idle(req, inst))
        return;
    json_t *tags = NULL;
    if (!svc__tags(req, body, &tags))
        return;
    if (tags)
        json_object_set_new(inst, "tags", tags);
    const char *plan_name = svc__str(body, "plan");
    json_t *params = json_object_get(body, "parameters");
    if (params && !json_is_object(params)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "parameters must be a JSON object");
        return;
    }
    if (!plan_name && !params) {
        /* a rename or new tags: the platform's own, no broker call */
        svc__stamp(inst, false);
        svc__respond_stored(a, req, 200, inst);
        return;
    }
    json_t *broker = svc__broker(a, svc__str(inst, "broker_guid"));
    json_t *offering = NULL, *plan = NULL;
    if (!broker || !services_catalog_find(
                       json_object_get(broker, "catalog"), svc__str(inst, "service_id"),
                       plan_name ? plan_name : svc__str(inst, "plan_id"), &offering, &plan)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          plan_name ? "the service offering %s has no plan named %s"
                                    : "the service offering %s%s is no longer in its broker's "
                                      "catalog",
                          svc__str(inst, "service_name"), plan_name ? plan_name : "");
        json_decref(broker);
        return;
    }
    bool plan_change = plan_name && strcmp(svc__str(plan, "id"), svc__str(inst, "plan_id"));
    if (plan_change && !svc__plan_visible(a, req, broker, plan)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "the service offering %s has no plan named %s for this org",
                          svc__str(inst, "service_name"), plan_name);
        json_decref(broker);
        return;
    }
    json_t *updateable = json_object_get(plan, "plan_updateable");
    if (!updateable)
        updateable = json_object_get(offering, "plan_updateable");
    if (plan_change && !json_is_true(updateable)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "the plan of %s cannot be changed: its broker's catalog says %s's plans "
                          "are not updateable",
                          svc__str(inst, "name"), svc__str(inst, "service_name"));
        json_decref(broker);
        return;
    }
    char err[300];
    if (params &&
        services_parameters_check(plan, "service_instance.update", params, err, sizeof err) < 0) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s (the plan %s's schema)", err,
                          svc__str(plan, "name"));
        json_decref(broker);
        return;
    }
    if (plan_change) {
        json_object_set(inst, "pending_plan_id", json_object_get(plan, "id"));
        json_object_set(inst, "pending_plan_name", json_object_get(plan, "name"));
    }
    svc__begin(inst, "update");
    svc__stamp(inst, false);
    if (services_put(a->records, SERVICES_KIND_INSTANCE, inst) < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
        json_decref(broker);
        return;
    }
    struct svc_op *op = svc__op_new(a, OP_UPDATE, inst, NULL);
    op->req = req;
    json_t *pb = json_pack(
        "{s:O,s:O,s:{s:O,s:O}}", "service_id", json_object_get(inst, "service_id"), "plan_id",
        json_object_get(plan, "id"), "previous_values", "plan_id", json_object_get(inst, "plan_id"),
        "service_id", json_object_get(inst, "service_id"));
    if (params)
        json_object_set(pb, "parameters", params);
    svc__add_context(a, pb, svc__str(inst, "space_guid"), svc__str(inst, "name"));
    char *identity = svc__identity(req);
    svc__call_setup(
        op, "PATCH",
        xasprintf("/v2/service_instances/%s?accepts_incomplete=true", svc__str(inst, "guid")), pb,
        identity);
    free(identity);
    /* polling asks about the plan the broker is moving to */
    snprintf(op->plan_id, sizeof op->plan_id, "%s", svc__str(plan, "id"));
    svc__op_go(op);
    json_decref(broker);
}

void svc__managed_delete(struct api_svc *a, struct api_request *req, json_t *inst)
{
    if (!svc__idle(req, inst))
        return;
    svc__begin(inst, "delete");
    if (services_put(a->records, SERVICES_KIND_INSTANCE, inst) < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
        return;
    }
    struct svc_op *op = svc__op_new(a, OP_DEPROVISION, inst, NULL);
    op->req = req;
    char *sid = svc__enc(op->service_id), *pid = svc__enc(op->plan_id);
    char *identity = svc__identity(req);
    bool ok = svc__call_setup(
        op, "DELETE",
        xasprintf("/v2/service_instances/%s?accepts_incomplete=true&service_id=%s&plan_id=%s",
                  op->instance_guid, sid, pid),
        NULL, identity);
    free(identity);
    free(sid);
    free(pid);
    if (ok) {
        svc__op_go(op);
    } else {
        /* its broker is gone: there is nothing to deprovision through */
        op->req = NULL;
        svc__op_free(op);
        services_delete(a->records, SERVICES_KIND_INSTANCE, svc__str(inst, "guid"));
        api_respond(req, 204, NULL, NULL, 0);
    }
}

void svc__managed_bind(struct api_svc *a, struct api_request *req, json_t *inst, json_t *bind,
                       json_t *params, const struct store_app *app)
{
    const json_t *op_state = json_object_get(inst, "last_operation");
    if (strcmp(svc__str(op_state, "type") ?: "", "create") == 0 &&
        strcmp(svc__str(op_state, "state") ?: "", "succeeded")) {
        api_respond_error(req, SKIFF_E_IN_PROGRESS,
                          "service instance %s is not made yet (its create is %s): bind it once "
                          "`skiff service %s` says create succeeded",
                          svc__str(inst, "name"), svc__str(op_state, "state"),
                          svc__str(inst, "name"));
        return;
    }
    if (!svc__idle(req, inst))
        return;
    json_t *broker = svc__broker(a, svc__str(inst, "broker_guid"));
    json_t *offering = NULL, *plan = NULL;
    bool bindable = false;
    char err[300] = "";
    if (broker &&
        services_catalog_find(json_object_get(broker, "catalog"), svc__str(inst, "service_id"),
                              svc__str(inst, "plan_id"), &offering, &plan)) {
        json_t *pb = json_object_get(plan, "bindable");
        bindable = pb ? json_is_true(pb) : json_is_true(json_object_get(offering, "bindable"));
        services_parameters_check(plan, "service_binding.create", params, err, sizeof err);
    }
    json_decref(broker);
    if (*err) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s (the plan %s's schema)", err,
                          svc__str(inst, "plan_name"));
        return;
    }
    if (!bindable) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "service instance %s cannot be bound: its plan is not bindable",
                          svc__str(inst, "name"));
        return;
    }
    svc__begin(bind, "create");
    if (services_put(a->records, SERVICES_KIND_BINDING, bind) < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
        return;
    }
    struct svc_op *op = svc__op_new(a, OP_BIND, inst, bind);
    op->req = req;
    json_t *pb = json_pack("{s:O,s:O}", "service_id", json_object_get(inst, "service_id"),
                           "plan_id", json_object_get(inst, "plan_id"));
    if (app) {
        json_object_set_new(pb, "app_guid", json_string(app->guid));
        json_object_set_new(pb, "bind_resource", json_pack("{s:s}", "app_guid", app->guid));
    }
    if (params)
        json_object_set(pb, "parameters", params);
    svc__add_context(a, pb, svc__str(inst, "space_guid"), svc__str(inst, "name"));
    char *identity = svc__identity(req);
    svc__call_setup(
        op, "PUT",
        xasprintf("/v2/service_instances/%s/service_bindings/%s?accepts_incomplete=true",
                  op->instance_guid, op->binding_guid),
        pb, identity);
    free(identity);
    svc__op_go(op);
}

static void svc__unbind(struct api_svc *a, struct api_request *req, json_t *inst, json_t *bind)
{
    svc__begin(bind, "delete");
    if (services_put(a->records, SERVICES_KIND_BINDING, bind) < 0) {
        if (req)
            api_respond_error(req, SKIFF_E_INTERNAL, SVC_STORE_FAILED);
        return;
    }
    struct svc_op *op = svc__op_new(a, OP_UNBIND, inst, bind);
    op->req = req;
    char *sid = svc__enc(op->service_id), *pid = svc__enc(op->plan_id);
    char *identity = svc__identity(req);
    bool ok = svc__call_setup(op, "DELETE",
                              xasprintf("/v2/service_instances/%s/service_bindings/%s?accepts_"
                                        "incomplete=true&service_id=%s&plan_id=%s",
                                        op->instance_guid, op->binding_guid, sid, pid),
                              NULL, identity);
    free(identity);
    free(sid);
    free(pid);
    if (ok) {
        svc__op_go(op);
    } else {
        op->req = NULL;
        svc__op_free(op);
        services_delete(a->records, SERVICES_KIND_BINDING, svc__str(bind, "guid"));
        if (req)
            api_respond(req, 204, NULL, NULL, 0);
    }
}

void svc__managed_unbind(struct api_svc *a, struct api_request *req, json_t *inst, json_t *bind)
{
    if (!strcmp(svc__str(json_object_get(bind, "last_operation"), "state") ?: "", "in progress")) {
        api_respond_error(req, SKIFF_E_IN_PROGRESS, "the binding is busy: its %s is in progress",
                          svc__str(json_object_get(bind, "last_operation"), "type"));
        return;
    }
    svc__unbind(a, req, inst, bind);
}

void svc__managed_forget_binding(struct api_svc *a, json_t *inst, json_t *bind)
{
    /* the app is gone: its binding goes at once, and its broker is told (retried) */
    services_delete(a->records, SERVICES_KIND_BINDING, svc__str(bind, "guid"));
    svc__orphan_start(a, OP_ORPHAN_BINDING, svc__str(inst, "broker_guid"), svc__str(inst, "guid"),
                      svc__str(bind, "guid"), svc__str(inst, "service_id"),
                      svc__str(inst, "plan_id"));
}

/* ---- service keys ------------------------------------------------------------------------- */

static json_t *svc__key_named(struct api_svc *a, struct api_request *req, const json_t *inst,
                              const char *name)
{
    json_t *keys =
        services_list(a->records, SERVICES_KIND_BINDING, "instance_guid", svc__str(inst, "guid"));
    json_t *found = NULL;
    size_t i;
    json_t *k;
    json_array_foreach(keys, i, k)
    {
        if (!strcmp(svc__str(k, "type") ?: "", "key") && !strcmp(svc__str(k, "name") ?: "", name))
            found = json_incref(k);
    }
    json_decref(keys);
    if (!found && req)
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "service instance %s has no key named \"%s\": `skiff service-keys %s` "
                          "lists them",
                          svc__str(inst, "name"), name, svc__str(inst, "name"));
    return found;
}

static void svc__keys_create(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    static const char *const fields[] = {"name", "parameters", NULL};
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    json_t *inst = NULL, *key = NULL;
    if (!api_json_check_fields(req, body, fields))
        goto done;
    const char *name = svc__str(body, "name");
    json_t *params = json_object_get(body, "parameters");
    if (!services_name_valid(name)) {
        api_respond_error(req, SKIFF_E_INVALID_NAME,
                          "a service key's name is 1 to 255 letters, digits, '-', '_', '.' or "
                          "inner spaces");
        goto done;
    }
    if (params && !json_is_object(params)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "parameters must be a JSON object");
        goto done;
    }
    if (!(inst = svc__instance_named(a, req, api_request_param(req, 0))))
        goto done;
    if (svc__is_user_provided(inst)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "service keys are not supported for a user-provided service instance: "
                          "`skiff service %s` and its credentials are what there is",
                          svc__str(inst, "name"));
        goto done;
    }
    json_t *old = svc__key_named(a, NULL, inst, name);
    if (old) {
        json_decref(old);
        api_respond_error(req, SKIFF_E_NAME_TAKEN, "service instance %s has a key named %s already",
                          svc__str(inst, "name"), name);
        goto done;
    }
    char guid[37];
    uuid_generate_v4(guid);
    key = json_pack("{s:s,s:s,s:s,s:n,s:O,s:O,s:n,s:[]}", "guid", guid, "type", "key", "name", name,
                    "app_guid", "instance_guid", json_object_get(inst, "guid"), "space_guid",
                    json_object_get(inst, "space_guid"), "syslog_drain_url", "volume_mounts");
    svc__stamp(key, true);
    svc__managed_bind(a, req, inst, key, params, NULL);
done:
    json_decref(key);
    json_decref(inst);
    json_decref(body);
}

static void svc__keys_list(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    json_t *inst = svc__instance_named(a, req, api_request_param(req, 0));
    if (!inst)
        return;
    json_t *all =
        services_list(a->records, SERVICES_KIND_BINDING, "instance_guid", svc__str(inst, "guid"));
    json_t *out = json_array();
    size_t i;
    json_t *k;
    json_array_foreach(all, i, k)
    {
        if (!strcmp(svc__str(k, "type") ?: "", "key"))
            json_array_append_new(out, svc__binding_view(a, k));
    }
    json_decref(all);
    json_decref(inst);
    api_respond_json(req, 200, json_pack("{s:o}", "service_keys", out));
}

static void svc__keys_get(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    json_t *inst = svc__instance_named(a, req, api_request_param(req, 0));
    json_t *key = inst ? svc__key_named(a, req, inst, api_request_param(req, 1)) : NULL;
    if (key) {
        json_t *view = svc__binding_view(a, key);
        json_t *creds = services_unseal(a->records, svc__str(key, "credentials"));
        json_object_set_new(view, "credentials", creds ? creds : json_object());
        api_respond_json(req, 200, view);
    }
    json_decref(key);
    json_decref(inst);
}

static void svc__keys_delete(struct api_request *req, void *ctx)
{
    struct api_svc *a = ctx;
    json_t *inst = svc__instance_named(a, req, api_request_param(req, 0));
    json_t *key = inst ? svc__key_named(a, req, inst, api_request_param(req, 1)) : NULL;
    if (key)
        svc__managed_unbind(a, req, inst, key);
    json_decref(key);
    json_decref(inst);
}

/* ---- start and stop ----------------------------------------------------------------------- */

/* After a restart: operations the records say are in progress are polled again; one whose
 * broker never answered (skiffd stopped meanwhile) failed, and a create is cleaned up. */
static void svc__resume(struct api_svc *a)
{
    static const char *const kinds[] = {SERVICES_KIND_INSTANCE, SERVICES_KIND_BINDING};
    for (size_t k = 0; k < ARRAY_SIZE(kinds); k++) {
        bool binding = k == 1;
        json_t *all = services_list(a->records, kinds[k], NULL, NULL);
        size_t i;
        json_t *rec;
        json_array_foreach(all, i, rec)
        {
            const json_t *lo = json_object_get(rec, "last_operation");
            if (strcmp(svc__str(lo, "state") ?: "", "in progress"))
                continue;
            json_t *inst = binding ? services_get(a->records, SERVICES_KIND_INSTANCE,
                                                  svc__str(rec, "instance_guid"))
                                   : json_incref(rec);
            if (!inst)
                continue;
            const char *type = svc__str(lo, "type") ?: "";
            enum svc_op_kind kind = binding ? (!strcmp(type, "create") ? OP_BIND : OP_UNBIND)
                                    : !strcmp(type, "create") ? OP_PROVISION
                                    : !strcmp(type, "update") ? OP_UPDATE
                                                              : OP_DEPROVISION;
            struct svc_op *op = svc__op_new(a, kind, inst, binding ? rec : NULL);
            if (json_is_true(json_object_get(rec, "async"))) {
                const char *operation = svc__str(rec, "operation");
                op->operation = operation ? xstrdup(operation) : NULL;
                if (kind == OP_UPDATE && svc__str(inst, "pending_plan_id"))
                    snprintf(op->plan_id, sizeof op->plan_id, "%s",
                             svc__str(inst, "pending_plan_id"));
                op->deadline = time_mono_ms() + 1000 * svc__max_poll_s(a, op->broker_guid,
                                                                       op->service_id, op->plan_id);
                op->step = STEP_POLL;
                op->next_at = time_mono_ms();
            } else {
                svc__async_ended(op, false, "skiffd stopped before the broker answered");
            }
            json_decref(inst);
        }
        json_decref(all);
    }
}

void svc__brokers_register(struct api_svc *a)
{
#define SPACE(p) (API_PERM(AUTH_PERM_##p) | API_SCOPE_SPACE)
    static const struct {
        const char *method, *pattern;
        int flags;
        api_handler_fn fn;
    } routes[] = {
        {"GET", "/v1/service_brokers", SPACE(SPACE_READ), svc__brokers_list},
        {"POST", "/v1/service_brokers", SPACE(SPACE_DEVELOP), svc__brokers_create},
        {"PATCH", "/v1/service_brokers/*", SPACE(SPACE_DEVELOP), svc__brokers_update},
        {"DELETE", "/v1/service_brokers/*", SPACE(SPACE_DEVELOP), svc__brokers_delete},
        {"GET", "/v1/marketplace", SPACE(SPACE_READ), svc__marketplace},
        {"GET", "/v1/service_access", API_PERM(AUTH_PERM_ADMIN), svc__access_list},
        {"PUT", "/v1/service_access", API_PERM(AUTH_PERM_ADMIN), svc__access_set},
        {"GET", "/v1/service_instances/*/keys", SPACE(SPACE_READ), svc__keys_list},
        {"POST", "/v1/service_instances/*/keys", SPACE(SPACE_DEVELOP), svc__keys_create},
        {"GET", "/v1/service_instances/*/keys/*", SPACE(SPACE_SECRETS), svc__keys_get},
        {"DELETE", "/v1/service_instances/*/keys/*", SPACE(SPACE_DEVELOP), svc__keys_delete},
    };
#undef SPACE
    for (size_t i = 0; i < ARRAY_SIZE(routes); i++)
        api_route_add(a->api, routes[i].method, routes[i].pattern, routes[i].flags, routes[i].fn,
                      a);
    svc__aborting = 0;
    a->poll_timer = xcalloc(1, sizeof *a->poll_timer);
    uv_timer_init(a->loop, a->poll_timer);
    a->poll_timer->data = a;
    uv_timer_start(a->poll_timer, svc__tick, SVC_TICK_MS, SVC_TICK_MS);
    /* polling never keeps skiffd from exiting */
    uv_unref((uv_handle_t *)a->poll_timer);
    svc__resume(a);
    svc__orphans_resume(a);
}

void api_svc_shutdown(struct api_svc *a)
{
    (void)a;
    /* calls in flight give up at once, so skiffd does not wait for a slow broker to exit */
    svc__aborting = 1;
}

void svc__brokers_stop(struct api_svc *a)
{
    svc__aborting = 1;
    while (a->ops) {
        struct svc_op *op = a->ops;
        if (op->req) {
            api_respond_error(op->req, SKIFF_E_UNAVAILABLE, "skiffd is stopping");
            op->req = NULL;
        }
        if (op->registered)
            op->registered(op->registered_arg, false, "skiffd is stopping");
        svc__op_free(op);
    }
    if (a->poll_timer) {
        if (!uv_is_closing((uv_handle_t *)a->poll_timer))
            uv_close((uv_handle_t *)a->poll_timer, (uv_close_cb)free);
        else
            free(a->poll_timer);
        a->poll_timer = NULL;
    }
}
