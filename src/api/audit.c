/* api/audit: every change made through the API is recorded (who, what, when, with which token,
 * in which org and space), as Cloud Foundry's audit events are, and listed by space, org, or
 * for the admin everything. */
#include "api/audit.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "common/log.h"
#include "common/util.h"
#include "store/store.h"

#define AUDIT_LIST_DEFAULT 50
#define AUDIT_LIST_MAX 1000

struct api_audit {
    struct store *store;
    struct auth *auth;
};

/* The collections of the API: the noun of an event is the last one in its route, singular,
 * or the name Cloud Foundry gives its events when it has another (a task is an app's). */
static const struct {
    const char *segment, *noun;
} audit__collections[] = {
    {"apps", "app"},           {"routes", "route"},   {"users", "user"},
    {"roles", "role"},         {"spaces", "space"},   {"orgs", "org"},
    {"tokens", "token"},       {"domains", "domain"}, {"event-mappings", "event-mapping"},
    {"functions", "function"}, {"tasks", "app.task"},
};

/* The noun of the collection named seg, or NULL when it names none. */
static const char *audit__collection_noun(const char *seg, size_t len)
{
    for (size_t i = 0; i < ARRAY_SIZE(audit__collections); i++)
        if (strlen(audit__collections[i].segment) == len &&
            !strncmp(audit__collections[i].segment, seg, len))
            return audit__collections[i].noun;
    return NULL;
}

/* "audit.NOUN.VERB" from the route: POST /v1/apps -> audit.app.create, PUT /v1/apps/ * ->
 * audit.app.update, POST /v1/apps/ * /start -> audit.app.start, DELETE .../roles/ * ->
 * audit.role.delete. */
void api_audit_type(const char *method, const char *pattern, char *out, size_t size)
{
    const char *noun = "api", *verb = NULL;
    size_t noun_len = 3, verb_len = 0;
    const char *p = pattern;
    if (str_has_prefix(p, "/v1"))
        p += 3;
    while (*p == '/') {
        const char *seg = ++p;
        while (*p && *p != '/')
            p++;
        size_t len = (size_t)(p - seg);
        if (len == 1 && *seg == '*')
            continue;
        const char *collection = audit__collection_noun(seg, len);
        if (collection) {
            noun = collection;
            noun_len = strlen(collection);
            verb = NULL;
        } else {
            verb = seg;
            verb_len = len;
            if (noun_len == 3 && !strncmp(noun, "api", 3)) {
                noun = seg; /* /v1/auth/logout: auth.logout */
                noun_len = len;
                verb = NULL;
            }
        }
    }
    if (!verb) {
        verb = !strcmp(method, "POST")     ? "create"
               : !strcmp(method, "DELETE") ? "delete"
                                           : "update";
        verb_len = strlen(verb);
    }
    snprintf(out, size, "audit.%.*s.%.*s", (int)noun_len, noun, (int)verb_len, verb);
}

/* What the change was about: the first name in the path, the user of a role, or the app or
 * name a body gives. NULL when none. */
static char *audit__target(struct api_request *req)
{
    const char *route = api_request_route(req);
    if (route && strstr(route, "/users/*"))
        return xstrdup(api_request_param(req, strstr(route, "/spaces/*/users") ? 2
                                                   : str_has_prefix(route, "/v1/orgs/*/users")
                                                       ? 1
                                                       : 0));
    if (route && str_has_prefix(route, "/v1/orgs/*/spaces/*"))
        return xstrdup(api_request_param(req, 1));
    if (api_request_param(req, 0))
        return xstrdup(api_request_param(req, 0));
    const char *app = api_request_query(req, "app");
    if (app)
        return xstrdup(app);
    size_t len = 0;
    const char *body = api_request_body(req, &len);
    json_t *o = body && len ? json_loadb(body, len, 0, NULL) : NULL;
    const char *name = json_string_value(json_object_get(o, "app"));
    if (!name)
        name = json_string_value(json_object_get(o, "name"));
    char *target = name ? xstrdup(name) : NULL;
    json_decref(o);
    return target;
}

static void audit__recorded(void *ctx, int rc)
{
    char *what = ctx;
    if (rc < 0)
        log_error("audit: cannot record %s: %s", what ? what : "an event", skiff_strerror(rc));
    free(what);
}

static void audit__record(void *ctx, struct api_request *req, int status)
{
    struct api_audit *au = ctx;
    const struct auth_principal *p = api_request_principal(req);
    char type[96];
    api_audit_type(api_request_method(req), api_request_route(req), type, sizeof type);
    char *target = audit__target(req);
    json_t *detail = json_pack("{s:s, s:s, s:i}", "method", api_request_method(req), "path",
                               api_request_path(req), "status", status);
    char *detail_text = json_dumps(detail, JSON_COMPACT);
    json_decref(detail);
    struct store_audit_event ev = {
        .at = time_now_ms(),
        .type = type,
        .actor = p->kind == AUTH_USER ? (char *)p->user_name : "admin (local token)",
        .actor_guid = p->kind == AUTH_USER ? (char *)p->user_guid : NULL,
        .token_guid = p->kind == AUTH_USER ? (char *)p->token_guid : NULL,
        .target = target,
        .space_guid = (char *)api_request_space(req),
        .org_guid = (char *)api_request_org(req),
        .detail = detail_text,
    };
    /* off the loop: the outcome comes back in audit__recorded */
    char *what = NULL;
    if (asprintf(&what, "%s by %s", type, ev.actor) < 0)
        what = NULL;
    if (store_audit_add_async(au->store, &ev, audit__recorded, what) < 0)
        free(what);
    free(target);
    free(detail_text);
}

static json_t *audit__json(struct api_audit *au, const struct store_audit_event *e)
{
    char when[40];
    time_format_rfc3339(e->at, when, sizeof when);
    json_t *detail = json_loads(e->detail ? e->detail : "{}", 0, NULL);
    json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:o, s:o, s:o}", "id", (json_int_t)e->id, "time",
                          when, "type", e->type, "actor", e->actor, "actor_guid",
                          e->actor_guid ? json_string(e->actor_guid) : json_null(), "target",
                          e->target ? json_string(e->target) : json_null(), "detail",
                          detail ? detail : json_object());
    const struct auth_space *s = e->space_guid ? auth_space_get(au->auth, e->space_guid) : NULL;
    const struct auth_org *org = e->org_guid ? auth_org_find(au->auth, e->org_guid) : NULL;
    json_object_set_new(o, "org", org ? json_string(org->name) : json_null());
    json_object_set_new(o, "space", s ? json_string(s->name) : json_null());
    return o;
}

/* A list's read, made by the store's writer after the writes queued before it (the events
 * recorded a moment ago are listed). */
struct audit_read {
    struct api_audit *au;
    struct api_request *req;
};

static void audit__listed(void *ctx, int rc, struct store_audit_event *list, size_t n)
{
    struct audit_read *r = ctx;
    if (rc < 0) {
        api_respond_error(r->req, SKIFF_E_INTERNAL, "cannot read the audit events");
    } else {
        json_t *arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(arr, audit__json(r->au, &list[i]));
        api_respond_json(r->req, 200, json_pack("{s:o}", "audit_events", arr));
    }
    store_audit_list_free(list, n);
    free(r);
}

static void audit__list(struct api_request *req, struct api_audit *au, const char *space,
                        const char *org)
{
    long limit = AUDIT_LIST_DEFAULT;
    const char *limit_s = api_request_query(req, "limit");
    const char *before_s = api_request_query(req, "before");
    char *end = NULL;
    if (limit_s && ((limit = strtol(limit_s, &end, 10)) <= 0 || *end || limit > AUDIT_LIST_MAX)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "limit is 1 to %d", AUDIT_LIST_MAX);
        return;
    }
    long long before = 0;
    if (before_s && ((before = strtoll(before_s, &end, 10)) <= 0 || *end)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "before is an event id");
        return;
    }
    struct audit_read *r = xcalloc(1, sizeof *r);
    *r = (struct audit_read){.au = au, .req = req};
    int rc = store_audit_list_async(au->store, space, org, api_request_query(req, "target"), before,
                                    (size_t)limit, audit__listed, r);
    if (rc < 0)
        audit__listed(r, rc, NULL, 0);
}

static void audit__space_events(struct api_request *req, void *ctx)
{
    audit__list(req, ctx, api_request_space(req), NULL);
}

static void audit__org_events(struct api_request *req, void *ctx)
{
    audit__list(req, ctx, NULL, api_request_org(req));
}

static void audit__all_events(struct api_request *req, void *ctx)
{
    audit__list(req, ctx, NULL, NULL);
}

int api_audit_register(struct api *api, struct store *store, struct auth *auth,
                       struct api_audit **out)
{
    struct api_audit *au = xcalloc(1, sizeof *au);
    au->store = store;
    au->auth = auth;
    api_route_add(api, "GET", "/v1/audit_events",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_SPACE, audit__space_events, au);
    api_route_add(api, "GET", "/v1/orgs/*/audit_events",
                  API_PERM(AUTH_PERM_ORG_READ) | API_SCOPE_ORG, audit__org_events, au);
    api_route_add(api, "GET", "/v1/admin/audit_events", API_PERM(AUTH_PERM_ADMIN),
                  audit__all_events, au);
    api_set_audit(api, audit__record, au);
    *out = au;
    return 0;
}

void api_audit_free(struct api_audit *au)
{
    free(au);
}
