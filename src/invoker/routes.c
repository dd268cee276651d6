/* The invoker's HTTP API: event mappings, replay, invoke, and /metrics (docs/api.md). */
#include "invoker/invoker_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "auth/auth.h"
#include "common/err.h"
#include "common/util.h"
#include "fabric/fabric.h"
#include "store/store.h"

/* ---- event mappings ---------------------------------------------------------------------- */

/* The space the request is about (its checked space, else the default). */
static const char *routes_space(struct api_request *req)
{
    const char *space = api_request_space(req);
    return space ? space : SKIFF_DEFAULT_SPACE_GUID;
}

static bool routes_mapping_in_space(const struct inv_mapping *m, const char *space)
{
    return !strcmp(m->spec.space ? m->spec.space : SKIFF_DEFAULT_SPACE_GUID, space);
}

/* The app of that name in the request's space, with the process (NULL or "web": any app);
 * NULL after answering 404 (or the store's error), or NULL without answering while the app is
 * read off the loop (the handler then runs again: api_request_app_find). The caller frees it. */
static struct store_app *routes_app(struct invoker *inv, struct api_request *req, const char *app,
                                    const char *process)
{
    struct store_app *a = NULL;
    int rc = api_request_app_find(req, inv->store, routes_space(req), app, &a);
    if (rc == -EINPROGRESS)
        return NULL;
    if (rc == -ENOENT) {
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "no app named '%s' in this space: push it first (skiff push %s ...) "
                          "or see skiff apps",
                          app, app);
        return NULL;
    }
    if (rc < 0) {
        api_respond_error(req, rc, "cannot read app %s (see skiffd's output)", app);
        return NULL;
    }
    if (process && strcmp(process, "web") && !store_app_process(a, process)) {
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "app %s has no function or process named '%s': `skiff app %s` lists "
                          "them",
                          app, process, app);
        store_app_free(a);
        return NULL;
    }
    return a;
}

/* A mapping that asks for more instances than the process's stored autoscale policy allows is
 * refused (422) with the command that raises the policy: the policy's max is the one bound the
 * autoscaler applies (and quotas are checked against), so it would cap the mapping silently.
 * Only an explicit max_instances is checked; the default one is the policy's to bound. */
static bool routes_policy_admits(struct api_request *req, const struct mapping_spec *spec,
                                 bool max_given, const struct store_app *a)
{
    if (!max_given)
        return true;
    const char *process = spec->process ? spec->process : "web";
    const struct store_process *sp = store_app_process(a, process);
    bool ok = !sp || !store_process_request_scaled(sp) || spec->max_instances <= sp->max_instances;
    if (!ok) {
        bool web = !strcmp(process, "web");
        api_respond_error(
            req, SKIFF_E_INVALID_VALUE,
            "max_instances %d is above the %d instances the autoscale policy of %s%s%s "
            "allows, which would cap it: raise the policy first with `skiff autoscale "
            "%s%s%s --max %d`, or ask for %d or fewer",
            spec->max_instances, sp->max_instances, a->name, web ? "" : "/", web ? "" : process,
            a->name, web ? "" : " --process ", web ? "" : process, spec->max_instances,
            sp->max_instances);
    }
    return ok;
}

/* The mappings counted against one space's quota and its org's. */
struct routes_usage {
    struct auth *auth;
    const struct auth_space *space;
    struct auth_usage in_space, in_org;
};

static void routes_usage_add(void *ctx, const char *space_guid)
{
    struct routes_usage *u = ctx;
    const struct auth_space *s = auth_space_get(u->auth, space_guid);
    if (s && !strcmp(s->guid, u->space->guid))
        u->in_space.use[AUTH_QUOTA_EVENT_MAPPINGS]++;
    if (s && !strcmp(s->org_guid, u->space->org_guid))
        u->in_org.use[AUTH_QUOTA_EVENT_MAPPINGS]++;
}

/* Whether one more event mapping fits the quotas of the space and its org; answers 422
 * `quota_exceeded` itself when not. */
static bool routes_quota_admits(struct invoker *inv, struct api_request *req, const char *space_guid)
{
    struct auth *auth = api_request_auth(req);
    const struct auth_space *space = auth ? auth_space_get(auth, space_guid) : NULL;
    const struct auth_org *org = space ? auth_org_find(auth, space->org_guid) : NULL;
    if (!space || !org)
        return true;
    struct routes_usage u = {.auth = auth, .space = space};
    u.in_space.use[AUTH_QUOTA_EVENT_MAPPINGS] = u.in_org.use[AUTH_QUOTA_EVENT_MAPPINGS] = 1;
    invoker_mapping_spaces(inv, routes_usage_add, &u);
    char where[2 * AUTH_NAME_MAX + 16], msg[512];
    const struct auth_quota *sq = space->quota_guid[0] ? auth_quota_find(auth, space->quota_guid)
                                                       : NULL;
    const struct auth_quota *oq = org->quota_guid[0] ? auth_quota_find(auth, org->quota_guid)
                                                     : NULL;
    snprintf(where, sizeof where, "space %s/%s", org->name, space->name);
    bool ok = auth_quota_admits(sq, &u.in_space, where, msg, sizeof msg);
    if (ok) {
        snprintf(where, sizeof where, "org %s", org->name);
        ok = auth_quota_admits(oq, &u.in_org, where, msg, sizeof msg);
    }
    if (!ok)
        api_respond_error(req, SKIFF_E_QUOTA, "%s", msg);
    return ok;
}

/* A mapping's create or delete, answered once the store made its document's write; or a
 * request naming a mapping not held here, run again once its catch-up read is made. */
struct routes_mapping_write {
    struct invoker *inv;
    struct api_request *req;
    char id[128];
};

static void routes_caught_up(void *ctx, int rc, const char *err)
{
    (void)err;
    struct routes_mapping_write *w = ctx;
    struct api_request *req = w->req;
    struct invoker *inv = w->inv; /* freed when rc is -ECANCELED */
    free(w);
    if (rc == -ECANCELED || api_request_aborted(req)) { /* the answer ends it */
        api_respond_error(req, SKIFF_E_UNAVAILABLE, "%s",
                          rc == -ECANCELED ? "skiffd is stopping: ask again once it (or another "
                                             "controller) is up"
                                           : "the client left before the mapping was read");
        return;
    }
    inv->caught_up = req;
    api_request_handle_again(req);
    inv->caught_up = NULL;
}

/* The mapping of the id in the path, in the request's space; NULL after answering 404, or NULL
 * without answering while an id not held here is read from the store off the loop (another
 * controller may have made it a moment ago: invoker_mapping_catch_up), the handler then run
 * again. */
static struct inv_mapping *routes_mapping_or_404(struct invoker *inv, struct api_request *req)
{
    const char *id = api_request_param(req, 0);
    struct inv_mapping *m = id ? invoker_mapping_find(inv, id) : NULL;
    if (!m && id && req != inv->caught_up) {
        struct routes_mapping_write *w = xcalloc(1, sizeof *w);
        *w = (struct routes_mapping_write){.inv = inv, .req = req};
        if (invoker_mapping_catch_up(inv, id, routes_caught_up, w))
            return NULL;
        free(w);
    }
    /* another space's mapping is not there */
    if (m && !routes_mapping_in_space(m, routes_space(req)))
        m = NULL;
    if (!m)
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "no event mapping with id '%s': see skiff event-mappings", id ? id : "");
    return m;
}

static void routes_mappings_list(struct api_request *req, void *ctx)
{
    struct invoker *inv = ctx;
    const char *app = api_request_query(req, "app");
    const char *topic = api_request_query(req, "topic");
    json_t *list = json_array();
    /* Oldest first: the list is kept newest first. */
    size_t n = 0;
    for (struct inv_mapping *m = inv->mappings; m; m = m->next)
        n++;
    struct inv_mapping **all = xcalloc(n ? n : 1, sizeof(*all));
    size_t i = n;
    for (struct inv_mapping *m = inv->mappings; m; m = m->next)
        all[--i] = m;
    for (i = 0; i < n; i++) {
        struct inv_mapping *m = all[i];
        if (m->deleted || !routes_mapping_in_space(m, routes_space(req)) ||
            (app && strcmp(m->spec.app, app) != 0) ||
            (topic && strcmp(m->spec.topic, topic) != 0))
            continue;
        json_array_append_new(list, invoker_mapping_json(m));
    }
    free(all);
    api_respond_json(req, 200, json_pack("{s:o}", "event_mappings", list));
}

/* Sets spec->topic_space from its "ORG/SPACE" reference: a space where the caller may read
 * events (what GET /v1/topics/NAME/events there needs). Answers 404 (no such space, or none
 * the caller can see) or 403 and returns false otherwise. The mapping's own space named this
 * way is its own space. */
static bool routes_topic_space(struct api_request *req, struct mapping_spec *spec)
{
    struct auth *auth = api_request_auth(req);
    const struct auth_space *other = auth ? auth_space_resolve(auth, spec->topic_space_ref) : NULL;
    int rc = other ? auth_check(auth, api_request_principal(req), AUTH_PERM_SPACE_LOGS,
                                other->org_guid, other->guid)
                   : -ENOENT;
    if (rc == -EACCES) {
        api_respond_error(req, SKIFF_E_FORBIDDEN,
                          "your roles in %s do not allow reading its events, so no mapping "
                          "may consume them",
                          spec->topic_space_ref);
        return false;
    }
    if (rc < 0) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no space %s that you can see",
                          spec->topic_space_ref);
        return false;
    }
    if (strcmp(other->guid, spec->space)) {
        const struct auth_principal *p = api_request_principal(req);
        spec->topic_space = xstrdup(other->guid);
        spec->granted_by =
            xstrdup(p->kind == AUTH_LOCAL_ADMIN ? MAPPING_GRANT_LOCAL_ADMIN : p->user_guid);
    }
    return true;
}

static void routes_mapping_created(void *ctx, int rc, const char *err)
{
    struct routes_mapping_write *w = ctx;
    struct inv_mapping *m = rc < 0 ? NULL : invoker_mapping_find(w->inv, w->id);
    if (rc < 0)
        api_respond_error(w->req,
                          rc == -EEXIST      ? SKIFF_E_CONFLICT
                          : rc == -ECANCELED ? SKIFF_E_UNAVAILABLE
                                             : SKIFF_E_INTERNAL,
                          "%s", err);
    else if (!m) /* stopped meanwhile */
        api_respond_error(w->req, SKIFF_E_CONFLICT,
                          "event mapping %s was deleted as it was made: make it again", w->id);
    else
        api_respond_json(w->req, 201, invoker_mapping_json(m));
    free(w);
}

static void routes_mapping_deleted(void *ctx, int rc, const char *err)
{
    struct routes_mapping_write *w = ctx;
    if (rc < 0)
        api_respond_error(w->req, rc, "%s: %s", err, skiff_strerror(rc));
    else
        api_respond(w->req, 204, NULL, NULL, 0);
    free(w);
}

static void routes_mapping_create(struct api_request *req, void *ctx)
{
    struct invoker *inv = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    struct mapping_spec spec;
    enum skiff_err code;
    char err[512];
    int rc = mapping_spec_from_json(body, &spec, &code, err, sizeof(err));
    bool max_given = json_object_get(body, "max_instances") != NULL;
    json_decref(body);
    if (rc < 0) {
        api_respond_error(req, code, "%s", err);
        return;
    }
    spec.max_given = max_given; /* what the body asked for, whatever else it claims */
    free(spec.space);
    spec.space = xstrdup(routes_space(req));
    free(spec.topic_space);
    spec.topic_space = NULL;
    free(spec.granted_by);
    spec.granted_by = NULL;
    if (spec.topic_space_ref && !routes_topic_space(req, &spec)) {
        mapping_spec_free(&spec);
        return;
    }
    if (invoker_mapping_find(inv, spec.id)) {
        api_respond_error(req, SKIFF_E_NAME_TAKEN,
                          "an event mapping with id '%s' exists: leave out 'id' for a new one",
                          spec.id);
        mapping_spec_free(&spec);
        return;
    }
    struct store_app *a = routes_app(inv, req, spec.app, spec.process);
    bool admitted = a && routes_policy_admits(req, &spec, max_given, a) &&
                    routes_quota_admits(inv, req, spec.space);
    store_app_free(a);
    if (!admitted) {
        mapping_spec_free(&spec);
        return;
    }
    struct routes_mapping_write *w = xcalloc(1, sizeof *w);
    *w = (struct routes_mapping_write){.inv = inv, .req = req};
    snprintf(w->id, sizeof w->id, "%s", spec.id);
    invoker_mapping_create(inv, &spec, routes_mapping_created, w);
    mapping_spec_free(&spec); /* what the invoker did not take */
}

static void routes_mapping_get(struct api_request *req, void *ctx)
{
    struct inv_mapping *m = routes_mapping_or_404(ctx, req);
    if (m)
        api_respond_json(req, 200, invoker_mapping_json(m));
}

static void routes_mapping_delete(struct api_request *req, void *ctx)
{
    struct inv_mapping *m = routes_mapping_or_404(ctx, req);
    if (!m)
        return;
    struct routes_mapping_write *w = xcalloc(1, sizeof *w);
    *w = (struct routes_mapping_write){.inv = m->inv, .req = req};
    invoker_mapping_remove(m, routes_mapping_deleted, w);
}

/* Carries out a replay of the mapping from offset, or, where this skiffd does not consume
 * (a follower on JetStream), asks the leader to through the store: one writer moves a
 * mapping's cursor. 200 when done here, 202 when the leader does it within a second. */
static json_t *replay_json(struct inv_mapping *m, uint64_t from, bool here)
{
    return json_pack("{s:s, s:s, s:I, s:I, s:I, s:s}", "id", m->spec.id, "topic", m->spec.topic,
                     "from_offset", (json_int_t)from, "end_offset", (json_int_t)m->end_offset,
                     "events", (json_int_t)(m->end_offset > from ? m->end_offset - from : 0),
                     "replayed_by", here ? "this skiffd" : "the leader");
}

/* A replay asked of the leader, its ask's write queued: answered once it is made. */
struct replay_ask {
    struct api_request *req;
    json_t *answer;
};

static void replay_asked(void *ctx, int rc)
{
    struct replay_ask *a = ctx;
    if (rc < 0)
        api_respond_error(a->req, rc, "cannot ask the leading skiffd to replay %s: %s",
                          json_string_value(json_object_get(a->answer, "id")), skiff_strerror(rc));
    else
        api_respond_json(a->req, 202, json_incref(a->answer));
    json_decref(a->answer);
    free(a);
}

static void replay_answer(struct api_request *req, struct inv_mapping *m, uint64_t offset)
{
    if (invoker_consumes(m->inv)) {
        uint64_t from = invoker_mapping_replay(m, offset);
        api_respond_json(req, 200, replay_json(m, from, true));
        return;
    }
    struct replay_ask *a = xcalloc(1, sizeof *a);
    a->req = req;
    uint64_t from = invoker_mapping_replay_from(m, offset);
    /* what the answer says is read now: the mapping may go before the ask is written */
    a->answer = replay_json(m, from, false);
    int rc = invoker_mapping_replay_ask(m, from, replay_asked, a);
    if (rc < 0)
        replay_asked(a, rc);
}

/* A replay from a time, waiting for the fabric to find its offset (fabric_seek_time); counted
 * in the invoker's pending_ops, so the invoker outlives it. */
struct replay_seek {
    struct invoker *inv;
    struct api_request *req;
    char id[64];
};

static void on_replay_seek(void *arg, int status, uint64_t offset)
{
    struct replay_seek *rs = arg;
    struct invoker *inv = rs->inv;
    struct inv_mapping *m = invoker_mapping_find(inv, rs->id);
    if (status < 0)
        api_respond_error(rs->req, status, "cannot find a position in the topic of %s: %s", rs->id,
                          fabric_strerror(status));
    else if (inv->stopping)
        api_respond_error(rs->req, -ECANCELED, "%s", skiff_strerror(-ECANCELED));
    else if (!m)
        api_respond_error(rs->req, SKIFF_E_NOT_FOUND,
                          "event mapping %s was deleted while its replay was being prepared",
                          rs->id);
    else
        replay_answer(rs->req, m, offset);
    free(rs);
    invoker_op_done(inv);
}

static void routes_mapping_replay(struct api_request *req, void *ctx)
{
    struct invoker *inv = ctx;
    struct inv_mapping *m = routes_mapping_or_404(inv, req);
    if (!m)
        return;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const allowed[] = {"since", NULL};
    if (!api_json_check_fields(req, body, allowed)) {
        json_decref(body);
        return;
    }
    json_t *since = json_object_get(body, "since");
    char text[64];
    if (json_is_integer(since) && json_integer_value(since) >= 0) {
        snprintf(text, sizeof(text), "%lld", (long long)json_integer_value(since));
    } else if (json_is_string(since) && json_string_length(since) < sizeof(text)) {
        snprintf(text, sizeof(text), "%s", json_string_value(since));
    } else {
        json_decref(body);
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "'since' is required: a duration ago (\"1h\"), an RFC 3339 time or an "
                          "offset");
        return;
    }
    json_decref(body);
    bool is_offset;
    uint64_t offset = 0;
    int64_t time_ms = 0;
    char err[256];
    if (trigger_parse_since(text, time_now_ms(), &is_offset, &offset, &time_ms, err, sizeof(err)) <
        0) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "'since': %s", err);
        return;
    }
    if (is_offset) {
        replay_answer(req, m, offset);
        return;
    }
    struct replay_seek *rs = xcalloc(1, sizeof(*rs));
    rs->inv = inv;
    rs->req = req;
    snprintf(rs->id, sizeof(rs->id), "%s", m->spec.id);
    inv->pending_ops++;
    int rc = fabric_seek_time(inv->fabric, m->topic, time_ms, on_replay_seek, rs);
    if (rc < 0)
        on_replay_seek(rs, rc, 0);
}

/* ---- invoke -------------------------------------------------------------------------------- */

struct inv_invoke {
    struct invoker *inv;
    struct api_request *req;
    struct inv_target *target;
    struct inv_instance *inst;
    struct cloudevent ev;
    struct buf head;
    int64_t since_ms;
    struct inv_invoke *next;
};

static void invoke_free(struct inv_invoke *iv)
{
    cloudevent_free(&iv->ev);
    buf_free(&iv->head);
    free(iv);
}

static void invoke_done(void *arg, const struct http_response *resp)
{
    struct inv_invoke *iv = arg;
    struct inv_target *t = iv->target;
    struct inv_instance *inst = iv->inst;
    char addr[64];
    snprintf(addr, sizeof(addr), "%s", inst->addr);
    invoker_instance_call_done(t->inv, inst); /* may free it */
    t->invokes_in_flight--;
    if (resp->status >= 200 && resp->status < 300) {
        for (size_t i = 0; i < resp->header_count; i++) {
            const char *name = resp->headers[i].name;
            if (str_has_prefix(name, "ce-"))
                api_response_header(iv->req, name, resp->headers[i].value);
        }
        const char *ctype = http_response_header(resp, "content-type");
        api_respond(iv->req, resp->status, resp->body_len ? ctype : NULL, resp->body,
                    resp->body_len);
    } else if (resp->status == 0) {
        api_respond_error(iv->req, SKIFF_E_FUNCTION_UNREACHABLE,
                          "no answer from %s (instance %s): %s; see skiff logs %s",
                          invoker_target_name(t), addr, resp->error ? resp->error : "network error",
                          invoker_target_name(t));
    } else {
        int n = resp->body_len > 300 ? 300 : (int)resp->body_len;
        api_respond_error(iv->req, SKIFF_E_FUNCTION_FAILED,
                          "the function answered %d%s%.*s; see skiff logs %s", resp->status,
                          n ? ": " : "", n, resp->body, invoker_target_name(t));
    }
    invoke_free(iv);
    if (!t->inv->stopping)
        invoker_target_pump(t);
}

/* The waiting invokes are a FIFO: appended at waiting_tail, taken from the front, and expired
 * from anywhere. */
static void invoke_queue_append(struct inv_target *t, struct inv_invoke *iv)
{
    if (!t->waiting)
        t->waiting_tail = &t->waiting;
    iv->next = NULL;
    *t->waiting_tail = iv;
    t->waiting_tail = &iv->next;
    t->invokes_waiting++;
}

/* Unlinks the invoke *pp points to (pp is &t->waiting or a waiting invoke's &next). */
static struct inv_invoke *invoke_queue_unlink(struct inv_target *t, struct inv_invoke **pp)
{
    struct inv_invoke *iv = *pp;
    *pp = iv->next;
    if (t->waiting_tail == &iv->next)
        t->waiting_tail = pp;
    t->invokes_waiting--;
    return iv;
}

bool invoker_invoke_take_instance(struct inv_target *t, struct inv_instance *inst)
{
    if (!t->waiting)
        return false;
    struct inv_invoke *iv = invoke_queue_unlink(t, &t->waiting);
    t->invokes_in_flight++;
    iv->inst = inst;
    inst->in_flight++;
    invoker_request_head(inst, &iv->ev, &iv->head);
    http_pool_send(inst->pool, iv->head.data, iv->head.len, iv->ev.data, iv->ev.data_len,
                      INVOKER_DELIVERY_TIMEOUT_MS, invoke_done, iv);
    return true;
}

static void invoke_fail_waiting(struct inv_target *t, struct inv_invoke **pp, const char *why)
{
    struct inv_invoke *iv = invoke_queue_unlink(t, pp);
    api_respond_error(iv->req, SKIFF_E_NO_INSTANCE, "%s", why);
    invoke_free(iv);
}

void invoker_invokes_abort(struct inv_target *t, const char *why)
{
    while (t->waiting)
        invoke_fail_waiting(t, &t->waiting, why);
}

void invoker_invokes_expire(struct inv_target *t, int64_t now_ms)
{
    struct inv_invoke **pp = &t->waiting;
    while (*pp) {
        if (now_ms - (*pp)->since_ms < INVOKER_INVOKE_WAIT_MS) {
            pp = &(*pp)->next;
            continue;
        }
        char why[512];
        snprintf(why, sizeof(why),
                 "no instance of %s became ready within %d s%s%s: see skiff app %s and skiff "
                 "logs %s",
                 invoker_target_name(t), INVOKER_INVOKE_WAIT_MS / 1000,
                 t->last_error[0] ? ": " : "", t->last_error, invoker_target_name(t),
                 invoker_target_name(t));
        invoke_fail_waiting(t, pp, why);
    }
}

static void routes_invoke(struct api_request *req, void *ctx)
{
    struct invoker *inv = ctx;
    const char *app = api_request_param(req, 0);
    const char *process = api_request_query(req, "process");
    struct store_app *a = routes_app(inv, req, app, process);
    if (!a)
        return;
    char *ref = xasprintf("%s/%s", a->space_guid, a->name);
    /* Waiting would not help: say what to do now. */
    bool stopped = a->state && strcmp(a->state, "STARTED") != 0;
    bool no_droplet = !a->droplet_guid;
    store_app_free(a);
    if (no_droplet || stopped)
        free(ref);
    if (no_droplet) {
        api_respond_error(req, SKIFF_E_NO_DROPLET,
                          "%s has no droplet yet: push it first (skiff push %s ...)", app, app);
        return;
    }
    if (stopped) {
        api_respond_error(req, SKIFF_E_APP_STOPPED, "%s is stopped: start it with skiff start %s",
                          app, app);
        return;
    }
    struct cloudevent_headers h = {.count = 0};
    api_request_headers_each(req, cloudevent_headers_add, &h);
    size_t len;
    const char *body = api_request_body(req, &len);
    struct inv_invoke *iv = xcalloc(1, sizeof(*iv));
    char err[256];
    char source[96];
    snprintf(source, sizeof(source), "/skiff/invoke/%s", app);
    if (cloudevent_from_request(&h, body, len, source, &iv->ev, err, sizeof(err)) < 0) {
        free(iv);
        free(ref);
        api_respond_error(req, SKIFF_E_BAD_VALUE, "%s", err);
        return;
    }
    iv->inv = inv;
    iv->req = req;
    iv->since_ms = time_now_ms();
    iv->target = invoker_target_get(inv, ref, process ? process : "web");
    free(ref);
    invoke_queue_append(iv->target, iv);
    inv->invokes++;
    invoker_target_pump(iv->target);
}

/* ---- metrics ------------------------------------------------------------------------------ */

static void metric_help(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void routes_metrics(struct api_request *req, void *ctx)
{
    struct invoker *inv = ctx;
    struct buf b = {0};
    static const struct {
        const char *name, *type, *help;
    } series[] = {
        {"skiff_event_mapping_backlog", "gauge", "Events waiting to be delivered."},
        {"skiff_event_mapping_in_flight", "gauge", "Deliveries under way."},
        {"skiff_event_mapping_delivered_total", "counter", "Events acknowledged by a 2xx."},
        {"skiff_event_mapping_retried_total", "counter", "Failed attempts that were retried."},
        {"skiff_event_mapping_dead_lettered_total", "counter",
         "Events sent to the dead-letter topic."},
        {"skiff_event_mapping_failed_total", "counter",
         "Events that exhausted their policy with no dead-letter topic."},
        {"skiff_event_mapping_filtered_total", "counter", "Events the filters skipped."},
    };
    for (size_t k = 0; k < ARRAY_SIZE(series); k++) {
        metric_help(&b, series[k].name, series[k].type, series[k].help);
        for (struct inv_mapping *m = inv->mappings; m; m = m->next) {
            if (m->deleted)
                continue;
            uint64_t v[] = {invoker_mapping_backlog(m), m->in_flight, m->delivered, m->retried,
                            m->dead_lettered,           m->failed,    m->filtered};
            buf_printf(&b, "%s{mapping=\"%s\",app=\"%s\",topic=\"%s\"} %llu\n", series[k].name,
                       m->spec.id, m->spec.app, m->spec.topic, (unsigned long long)v[k]);
        }
    }
    metric_help(&b, "skiff_function_instances", "gauge",
                "Ready instances the invoker delivers to.");
    for (struct inv_target *t = inv->targets; t; t = t->next)
        buf_printf(&b, "skiff_function_instances{app=\"%s\",process=\"%s\"} %d\n", invoker_target_name(t),
                   t->process, t->instance_count);
    metric_help(&b, "skiff_invokes_total", "counter", "Calls of skiff invoke.");
    buf_printf(&b, "skiff_invokes_total %llu\n", (unsigned long long)inv->invokes);
    metric_help(&b, "skiff_platform_events_total", "counter", "Platform events published.");
    buf_printf(&b, "skiff_platform_events_total %llu\n", (unsigned long long)inv->platform_events);
    metric_help(&b, "skiff_event_mapping_store_reads_total", "counter",
                "Reads of every event mapping from the store (another skiffd changed one).");
    buf_printf(&b, "skiff_event_mapping_store_reads_total %llu\n",
               (unsigned long long)inv->mapping_reads);
    metric_help(&b, "skiff_schedule_fires_total", "counter", "Schedule fires published.");
    buf_printf(&b, "skiff_schedule_fires_total %llu\n", (unsigned long long)inv->schedule_fires);
    struct fabric_stats fs;
    fabric_get_stats(inv->fabric, &fs);
    metric_help(&b, "skiff_fabric_records_total", "counter", "Events appended to topics.");
    buf_printf(&b, "skiff_fabric_records_total %llu\n", (unsigned long long)fs.records);
    metric_help(&b, "skiff_fabric_syncs_total", "counter", "Group commits (fsync rounds).");
    buf_printf(&b, "skiff_fabric_syncs_total %llu\n", (unsigned long long)fs.syncs);
    metric_help(&b, "skiff_store_queued_writes", "gauge",
                "Writes queued for the store and not finished yet (PostgreSQL; 0 on SQLite).");
    buf_printf(&b, "skiff_store_queued_writes %zu\n",
               inv->store ? store_async_queued(inv->store) : (size_t)0);
    api_respond(req, 200, "text/plain; version=0.0.4", b.data ? b.data : "", b.len);
    buf_free(&b);
}

void invoker_routes_add(struct invoker *inv)
{
    struct api *api = inv->api;
    if (!api)
        return;
    api_route_add(api, "GET", "/v1/event-mappings",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_SPACE, routes_mappings_list, inv);
    api_route_add(api, "POST", "/v1/event-mappings",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_SPACE, routes_mapping_create, inv);
    api_route_add(api, "GET", "/v1/event-mappings/*",
                  API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_SPACE, routes_mapping_get, inv);
    api_route_add(api, "DELETE", "/v1/event-mappings/*",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_SPACE, routes_mapping_delete,
                  inv);
    api_route_add(api, "POST", "/v1/event-mappings/*/replay",
                  API_PERM(AUTH_PERM_SPACE_OPERATE) | API_SCOPE_SPACE, routes_mapping_replay,
                  inv);
    api_route_add(api, "POST", "/v1/apps/*/invoke",
                  API_PERM(AUTH_PERM_SPACE_OPERATE) | API_SCOPE_APP, routes_invoke, inv);
    api_route_add(api, "GET", "/metrics", API_PERM(AUTH_PERM_ADMIN), routes_metrics, inv);
}
