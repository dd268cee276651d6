/* The delivery engine: mappings read their topics through durable cursors and deliver each
 * event to a ready instance of their target; targets scale with their work (see invoker.h).
 *
 * A mapping keeps a window of events in offset order. The cursor is committed up to the first
 * event that is not settled, so an event is never acknowledged before its delivery succeeded,
 * went to the dead-letter topic or was recorded as failed. Everything runs on one loop. */
#include "invoker/invoker_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "fabric/fabric.h"
#include "hub/hub.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define MAPPING_DOC_KIND "event_mapping"
/* A replay asked through a skiffd that does not consume (a follower on JetStream), for the
 * leader to carry out: id "MAPPING/TIME-NONCE", {"mapping", "offset"}. */
#define REPLAY_DOC_KIND "event_mapping.replay"

static void mapping_pump(struct inv_mapping *m);
static void mapping_collect(struct inv_mapping *m);
static void mapping_cron_fire(uv_timer_t *h);
static void mapping_retry_timer(uv_timer_t *h);
static void invoker_track_function(struct invoker *inv, const char *app_guid_or_name);
/* Finishes a stop once nothing is pending. Takes no pointer: the invoker may be gone. */
static void invoker_maybe_done(struct invoker *inv);
static void invoker_sync_soon(struct invoker *inv);

/* ---- mapping references ------------------------------------------------------------------ */

static void mapping_free(struct inv_mapping *m)
{
    for (struct inv_mapping **pp = &m->inv->mappings; *pp; pp = &(*pp)->next) {
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    }
    json_decref(m->failures);
    mapping_spec_free(&m->spec);
    free(m->app_ref);
    free(m);
}

/* True when that was the last reference: m is freed and the invoker asked whether it is done
 * (it may be freed too: the caller must not touch it again). */
static bool mapping_unref(struct inv_mapping *m)
{
    if (--m->refs == 0 && m->open_handles == 0) {
        struct invoker *inv = m->inv;
        mapping_free(m);
        invoker_maybe_done(inv);
        return true;
    }
    return false;
}

static void mapping_handle_closed(uv_handle_t *h)
{
    struct inv_mapping *m = h->data;
    m->open_handles--;
    if (m->refs == 0 && m->open_handles == 0) {
        struct invoker *inv = m->inv;
        mapping_free(m);
        invoker_maybe_done(inv);
    }
}

/* ---- slots ------------------------------------------------------------------------------- */

static void slot_free(struct inv_slot *s)
{
    buf_free(&s->head);
    free(s->record);
    free(s);
}

/* Settles a slot: the cursor may pass it. */
static void slot_done(struct inv_slot *s)
{
    struct inv_mapping *m = s->m;
    if (s->state == SLOT_PENDING || s->state == SLOT_WAIT_RETRY)
        m->pending--;
    s->state = SLOT_DONE;
    free(s->record);
    s->record = NULL;
    buf_free(&s->head);
}

/* Keeps the last events that did not succeed, for `skiff event-mappings`. dead_letter_topic is
 * where the event went, NULL when it was recorded as failed. */
static void mapping_record_failure(struct inv_mapping *m, const struct inv_slot *s,
                                   const char *reason, const char *dead_letter_topic)
{
    char when[40];
    time_format_rfc3339(time_now_ms(), when, sizeof(when));
    json_t *f =
        json_pack("{s:I, s:s?, s:s, s:s, s:i, s:s, s:s?}", "offset", (json_int_t)s->offset, "id",
                  s->record ? s->ev.id : NULL, "reason", reason, "at", when, "attempts",
                  s->attempts, "outcome", dead_letter_topic ? "dead_lettered" : "failed",
                  "dead_letter_topic", dead_letter_topic);
    if (!m->failures)
        m->failures = json_array();
    json_array_append_new(m->failures, f);
    while (json_array_size(m->failures) > INVOKER_FAILURES_KEPT)
        json_array_remove(m->failures, 0);
    m->stats_dirty = true;
}

/* ---- appends (replies, dead letters, platform events) --------------------------------------- */

struct inv_append {
    struct invoker *inv;
    struct inv_slot *slot; /* NULL for platform events and schedule fires */
    bool dead_letter;
    char reason[200];
};

static void slot_retry_later(struct inv_slot *s, int status, const char *reason);

static void invoker_append_done(void *arg, int status, uint64_t first_offset, size_t count)
{
    (void)first_offset;
    (void)count;
    struct inv_append *a = arg;
    struct invoker *inv = a->inv;
    inv->pending_ops--;
    struct inv_slot *s = a->slot;
    if (s) {
        struct inv_mapping *m = s->m;
        if (s->orphan) {
            slot_free(s);
        } else if (status < 0) {
            /* Not durable: the event is not settled; deliver it again later. */
            snprintf(m->last_error, sizeof(m->last_error), "cannot store a %s: %s",
                     a->dead_letter ? "dead letter" : "reply", fabric_strerror(status));
            slot_retry_later(s, 503, m->last_error);
        } else {
            if (a->dead_letter) {
                m->dead_lettered++;
                mapping_record_failure(m, s, a->reason,
                                       m->dead_letter_topic[0] ? m->dead_letter_topic : NULL);
            } else {
                m->delivered++;
            }
            m->stats_dirty = true;
            slot_done(s);
        }
        if (!m->deleted && !inv->stopping)
            mapping_pump(m);
        free(a);
        mapping_unref(m);
        return;
    }
    free(a);
    invoker_maybe_done(inv);
}

/* Appends ev to topic; the slot (may be NULL) is settled once it is durable. */
static int invoker_append_event(struct invoker *inv, const char *topic, const struct cloudevent *ev,
                                struct inv_slot *slot, bool dead_letter, const char *reason)
{
    struct buf rec = {0};
    cloudevent_encode_record(ev, &rec);
    struct inv_append *a = xcalloc(1, sizeof(*a));
    a->inv = inv;
    a->slot = slot;
    a->dead_letter = dead_letter;
    if (reason)
        snprintf(a->reason, sizeof(a->reason), "%s", reason);
    struct fabric_blob blob = {rec.data, rec.len};
    int rc = fabric_append(inv->fabric, topic, &blob, 1, invoker_append_done, a, NULL);
    buf_free(&rec);
    if (rc < 0) {
        free(a);
        return rc;
    }
    inv->pending_ops++;
    if (slot) {
        slot->m->refs++;
        slot->state = SLOT_FINISHING;
    }
    return 0;
}

/* Publishes a platform or schedule event made here (id, time and specversion filled). */
/* Publishes an event whose `time` is time_ms (0: now). */
static void invoker_publish(struct invoker *inv, const char *topic, const char *type,
                            const char *source, const char *subject, json_t *data, int64_t time_ms)
{
    char id[37], when[40];
    uuid_generate_v4(id);
    time_format_rfc3339(time_ms ? time_ms : time_now_ms(), when, sizeof(when));
    char *text = json_dumps(data, JSON_COMPACT);
    struct cloudevent ev = {
        .id = id,
        .source = source,
        .type = type,
        .specversion = "1.0",
        .subject = subject,
        .time = when,
        .datacontenttype = "application/json",
        .data = text,
        .data_len = strlen(text),
    };
    int rc = invoker_append_event(inv, topic, &ev, NULL, false, NULL);
    if (rc < 0)
        log_error("cannot publish %s on %s: %s", type, topic, fabric_strerror(rc));
    free(text);
}

/* ---- targets and instances ----------------------------------------------------------------- */

static struct inv_instance *target_instance_find(struct inv_target *t, const char *guid)
{
    for (struct inv_instance *i = t->instances; i; i = i->next)
        if (strcmp(i->guid, guid) == 0)
            return i;
    return NULL;
}

static void target_instance_add(struct inv_target *t, const char *guid, const char *addr)
{
    if (target_instance_find(t, guid))
        return;
    struct inv_instance *i = xcalloc(1, sizeof(*i));
    snprintf(i->guid, sizeof(i->guid), "%s", guid);
    snprintf(i->addr, sizeof(i->addr), "%s", addr);
    if (http_pool_new(t->inv->loop, addr, &i->pool) < 0) {
        log_error("instance %s has an address I cannot use: %s", guid, addr);
        free(i);
        return;
    }
    /* Append at the end: the list is scanned in order for the least loaded instance. */
    struct inv_instance **pp = &t->instances;
    while (*pp)
        pp = &(*pp)->next;
    *pp = i;
    t->instance_count++;
    t->last_error[0] = '\0';
}

/* Stops using an instance: no new delivery goes to it; calls in flight finish or fail. */
static void target_instance_remove(struct inv_target *t, struct inv_instance *inst,
                                   bool abort_calls)
{
    for (struct inv_instance **pp = &t->instances; *pp; pp = &(*pp)->next) {
        if (*pp == inst) {
            *pp = inst->next;
            break;
        }
    }
    t->instance_count--;
    if (inst->in_flight == 0 || abort_calls) {
        /* With abort_calls the callbacks run inside the release and end every call. */
        http_pool_release(inst->pool, abort_calls);
        free(inst);
        return;
    }
    /* Calls in flight finish (or fail) on their own; the instance is freed after the last,
     * and a stop aborts them (invoker.draining). */
    inst->gone = true;
    inst->next = t->inv->draining;
    t->inv->draining = inst;
}

/* A gone instance is about to be freed: the scheduler may stop it now. */
static void instance_drain_release(struct invoker *inv, struct inv_instance *inst)
{
    if (inst->drain_id && inv->scheduler)
        scheduler_drain_release(inv->scheduler, inst->drain_id);
    inst->drain_id = 0;
}

void invoker_instance_call_done(struct invoker *inv, struct inv_instance *inst)
{
    inst->in_flight--;
    if (!inst->gone || inst->in_flight > 0)
        return;
    for (struct inv_instance **pp = &inv->draining; *pp; pp = &(*pp)->next) {
        if (*pp == inst) {
            *pp = inst->next;
            break;
        }
    }
    instance_drain_release(inv, inst);
    http_pool_release(inst->pool, false);
    free(inst);
}

/* Every ready instance, however far the function is scaled: sized by the scheduler's count
 * (the loop runs nothing in between, so the count holds for the second call). */
static void target_refresh_instances(struct inv_target *t)
{
    int total = scheduler_ready_instances(t->inv->scheduler, t->app, t->process, NULL, 0);
    if (total <= 0)
        return;
    struct scheduler_instance_info *info = xcalloc((size_t)total, sizeof *info);
    int n = scheduler_ready_instances(t->inv->scheduler, t->app, t->process, info, (size_t)total);
    for (int k = 0; k < n && k < total; k++)
        target_instance_add(t, info[k].guid, info[k].addr);
    free(info);
}

const char *invoker_target_name(const struct inv_target *t)
{
    const char *slash = strchr(t->app, '/');
    return slash ? slash + 1 : t->app;
}

static void target_read_guid(struct inv_target *t);

struct inv_target *invoker_target_get(struct invoker *inv, const char *app, const char *process)
{
    for (struct inv_target *t = inv->targets; t; t = t->next)
        if (strcmp(t->app, app) == 0 && strcmp(t->process, process) == 0)
            return t;
    struct inv_target *t = xcalloc(1, sizeof(*t));
    t->inv = inv;
    t->app = xstrdup(app);
    t->process = xstrdup(process);
    t->next = inv->targets;
    inv->targets = t;
    target_read_guid(t);
    target_refresh_instances(t);
    t->requested = t->instance_count;
    return t;
}

/* Reads the guid of the target's app from the store (what the autoscaler knows it by). */
static void target_read_guid(struct inv_target *t)
{
    struct store_app *a = NULL;
    if (store_app_get(t->inv->store, t->app, &a) < 0)
        return;
    snprintf(t->app_guid, sizeof(t->app_guid), "%s", a->guid);
    store_app_free(a);
}

/* The ready instance with the fewest calls in flight, below `limit`; NULL when all are full. */
static struct inv_instance *target_pick(struct inv_target *t, int limit)
{
    struct inv_instance *best = NULL;
    for (struct inv_instance *i = t->instances; i; i = i->next)
        if (i->in_flight < limit && (!best || i->in_flight < best->in_flight))
            best = i;
    return best;
}

/* How many instances the target's work asks for: ceil((in flight + backlog) / concurrency),
 * at most max_instances (the largest among its mappings; with none, its policy's max is the
 * only bound, which the autoscaler applies). *load_out: the same before rounding up. */
static int target_wanted(struct inv_target *t, uint64_t *work_out, double *load_out, int *max_out)
{
    uint64_t work = (uint64_t)t->invokes_waiting + (uint64_t)t->invokes_in_flight;
    int concurrency = 1, max_instances = 0;
    for (struct inv_mapping *m = t->inv->mappings; m; m = m->next) {
        if (m->target != t || m->deleted)
            continue;
        /* Unread events count only when the window is full: until then every event that
         * matches the filters is already in it (pending), and the others never need work. */
        work += m->in_flight + m->pending;
        if (m->window >= m->window_max)
            work += m->end_offset > m->read_next ? m->end_offset - m->read_next : 0;
        if (m->spec.policy.concurrency > concurrency)
            concurrency = m->spec.policy.concurrency;
        if (m->spec.max_instances > max_instances)
            max_instances = m->spec.max_instances;
    }
    *work_out = work;
    double load = (double)work / (double)concurrency;
    uint64_t wanted = (work + (uint64_t)concurrency - 1) / (uint64_t)concurrency;
    if (max_instances > 0 && wanted > (uint64_t)max_instances) {
        wanted = (uint64_t)max_instances;
        load = max_instances;
    }
    if (wanted > INT32_MAX)
        wanted = INT32_MAX;
    if (load_out)
        *load_out = load;
    if (max_out)
        *max_out = max_instances;
    work_meter_set(&t->work, load, uv_hrtime() / 1000);
    return (int)wanted;
}

/* The work asks for more instances than the target has: the autoscaler decides how many. */
static void target_scale_up(struct inv_target *t, int wanted)
{
    if (wanted <= t->instance_count || wanted <= t->requested || !t->inv->wake)
        return;
    if (!t->app_guid[0])
        target_read_guid(t);
    int running = 0;
    int rc = t->app_guid[0]
                 ? t->inv->wake(t->inv->wake_ctx, t->app_guid, t->process, wanted, &running)
                 : -ENOENT;
    if (rc != 0) {
        snprintf(t->last_error, sizeof(t->last_error), "cannot start %s: %s",
                 invoker_target_name(t),
                 rc == -ENOENT ? "no such app or process (see skiff apps)" : skiff_strerror(rc));
        return;
    }
    t->requested = running;
    t->last_error[0] = '\0';
}

/* ---- delivery ---------------------------------------------------------------------------- */

static void head_header(void *arg, const char *name, const char *value)
{
    buf_printf(arg, "%s: %s\r\n", name, value);
}

void invoker_request_head(const struct inv_instance *inst, const struct cloudevent *ev,
                          struct buf *out)
{
    buf_printf(out, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: %zu\r\n", inst->addr,
               ev->data_len);
    cloudevent_http_headers(ev, head_header, out);
    buf_puts(out, "\r\n");
}

static void slot_retry_later(struct inv_slot *s, int status, const char *reason)
{
    struct inv_mapping *m = s->m;
    s->state = SLOT_WAIT_RETRY;
    m->pending++;
    int64_t delay = delivery_backoff_ms(&m->spec.policy, s->attempts > 0 ? s->attempts : 1);
    s->retry_at = time_now_ms() + delay;
    m->retried++;
    m->stats_dirty = true;
    (void)status;
    snprintf(m->last_error, sizeof(m->last_error), "%s", reason);
}

/* An attempt failed for good: the dead-letter topic, or recorded as failed. */
static void slot_dead(struct inv_slot *s, const char *reason)
{
    struct inv_mapping *m = s->m;
    snprintf(m->last_error, sizeof(m->last_error), "%s", reason);
    if (m->dead_letter_topic[0] && s->record) {
        struct cloudevent ev = s->ev;
        /* Say where it came from and why, as extensions a consumer of the topic can read. */
        char attempts[16];
        snprintf(attempts, sizeof(attempts), "%d", s->attempts);
        const char *extra[][2] = {
            {"skiffmapping", m->spec.id}, {"skiffreason", reason}, {"skiffattempts", attempts}};
        for (size_t i = 0; i < ARRAY_SIZE(extra) && ev.ext_count < CLOUDEVENT_MAX_EXTENSIONS; i++) {
            ev.ext[ev.ext_count].name = extra[i][0];
            ev.ext[ev.ext_count].value = extra[i][1];
            ev.ext_count++;
        }
        int rc = invoker_append_event(m->inv, m->dead_letter_topic, &ev, s, true, reason);
        if (rc == 0)
            return;
        /* The dead-letter topic refused it (too large, or the disk failed): record it as
         * failed rather than lose it silently or retry for ever. */
        char why[400];
        snprintf(why, sizeof(why), "%s; the dead-letter topic %s refused it: %s", reason,
                 m->dead_letter_topic, fabric_strerror(rc));
        snprintf(m->last_error, sizeof(m->last_error), "%s", why);
        m->failed++;
        mapping_record_failure(m, s, why, NULL);
        slot_done(s);
        return;
    }
    m->failed++;
    mapping_record_failure(m, s, reason, NULL);
    slot_done(s);
}

static void delivery_done(void *arg, const struct http_response *resp)
{
    struct inv_slot *s = arg;
    struct inv_mapping *m = s->m;
    struct inv_instance *inst = s->inst;
    s->inst = NULL;
    char addr[64];
    snprintf(addr, sizeof(addr), "%s", inst->addr);
    invoker_instance_call_done(m->inv, inst); /* may free it */
    buf_free(&s->head);
    if (s->orphan) {
        slot_free(s); /* the window was dropped (replay, delete, stop): nothing to settle */
        goto out;
    }
    m->in_flight--;
    if (m->inv->stopping) {
        s->state = SLOT_PENDING; /* stays past the cursor; the window is dropped with it */
        goto out;
    }

    int status = resp->status;
    if (status >= 200 && status < 300) {
        if (m->reply_topic[0]) {
            struct cloudevent_header hs[64];
            size_t n = 0;
            for (size_t i = 0; i < resp->header_count && n < ARRAY_SIZE(hs); i++)
                hs[n++] = (struct cloudevent_header){resp->headers[i].name, resp->headers[i].value};
            struct cloudevent reply;
            char err[256];
            int rc = cloudevent_from_response(hs, n, resp->body, resp->body_len, &reply, err,
                                              sizeof(err));
            if (rc == 1) {
                rc = invoker_append_event(m->inv, m->reply_topic, &reply, s, false, NULL);
                cloudevent_free(&reply);
                if (rc == 0)
                    goto out;
                /* The reply cannot be stored: the event is not done. A reply that can never
                 * fit goes the way of a final failure; a disk failure is retried. */
                char reason[300];
                snprintf(reason, sizeof(reason), "the reply cannot be published on %s: %s",
                         m->reply_topic, fabric_strerror(rc));
                if (rc == -EMSGSIZE || rc == -EINVAL ||
                    delivery_after_failure(&m->spec.policy, 503, s->attempts, s->time_ms,
                                           time_now_ms()) == DELIVERY_DEAD)
                    slot_dead(s, reason);
                else
                    slot_retry_later(s, 503, reason);
                goto out;
            }
            if (rc < 0)
                snprintf(m->last_error, sizeof(m->last_error),
                         "the function's reply is not a valid CloudEvent (not published): %s", err);
        }
        m->delivered++;
        m->stats_dirty = true;
        slot_done(s);
        goto out;
    }

    char reason[200];
    if (status == 0)
        snprintf(reason, sizeof(reason), "instance %s: %s", addr,
                 resp->error ? resp->error : "network error");
    else
        snprintf(reason, sizeof(reason), "the function answered %d", status);
    enum delivery_verdict v =
        delivery_after_failure(&m->spec.policy, status, s->attempts, s->time_ms, time_now_ms());
    if (v == DELIVERY_RETRY) {
        slot_retry_later(s, status, reason);
    } else {
        char final[260];
        snprintf(final, sizeof(final), "%s after %d attempt%s", reason, s->attempts,
                 s->attempts == 1 ? "" : "s");
        slot_dead(s, final);
    }
out:
    if (!m->deleted && !m->inv->stopping)
        mapping_pump(m); /* reads on: the window may have room now */
    struct invoker *inv = m->inv;
    if (!mapping_unref(m))
        invoker_maybe_done(inv);
}

static void slot_send(struct inv_slot *s, struct inv_instance *inst)
{
    struct inv_mapping *m = s->m;
    m->pending--;
    s->state = SLOT_IN_FLIGHT;
    s->attempts++;
    s->inst = inst;
    inst->in_flight++;
    m->in_flight++;
    m->refs++;
    buf_reset(&s->head);
    invoker_request_head(inst, &s->ev, &s->head);
    http_pool_send(inst->pool, s->head.data, s->head.len, s->ev.data, s->ev.data_len,
                   INVOKER_DELIVERY_TIMEOUT_MS, delivery_done, s);
}

/* Whether a mapping may go on consuming its topic. One that reads another space's topic does
 * so on the right of the user who made it to read events there (routes.c checked it then):
 * once the user lost that role, or is gone, or the space is, it reads and sends nothing, and
 * its cursor stays where it is, until the right comes back or someone who has it maps it
 * again. Checked before every read and send (a lookup in memory), so a revoked role stops
 * the flow at once rather than at the next change the invoker hears of. */
static bool mapping_may_consume(struct inv_mapping *m)
{
    if (!m->spec.topic_space)
        return true;
    struct auth *auth = api_auth(m->inv->api);
    const struct auth_space *sp = auth ? auth_space_get(auth, m->spec.topic_space) : NULL;
    const char *by = m->spec.granted_by;
    bool holds = sp && by &&
                 (!strcmp(by, MAPPING_GRANT_LOCAL_ADMIN) ||
                  auth_user_check(auth, by, AUTH_PERM_SPACE_LOGS, sp->org_guid, sp->guid) == 0);
    bool held = !m->suspended;
    if (holds == held)
        return holds;
    m->suspended = !holds;
    if (holds) {
        m->last_error[0] = '\0';
        log_info("event mapping %s resumed: its grant to read %s holds again", m->spec.id,
                 m->spec.topic_space_ref ? m->spec.topic_space_ref : m->spec.topic_space);
        return true;
    }
    const char *where = m->spec.topic_space_ref ? m->spec.topic_space_ref : m->spec.topic_space;
    const struct auth_user *u = auth && by ? auth_user_find(auth, by) : NULL;
    if (!sp)
        snprintf(m->last_error, sizeof(m->last_error),
                 "suspended: the space %s of topic %s no longer exists", where, m->spec.topic);
    else if (!u)
        snprintf(m->last_error, sizeof(m->last_error),
                 "suspended: the user who made it, whose right to read events in %s it stood "
                 "on, is gone; map it again as a user who may",
                 where);
    else
        snprintf(m->last_error, sizeof(m->last_error),
                 "suspended: %s, who made it, may no longer read events in %s; it resumes "
                 "once they may, or map it again as a user who may",
                 u->name, where);
    log_info("event mapping %s %s", m->spec.id, m->last_error);
    return false;
}

/* Sends what the mapping may send now; arms the retry timer for the rest. */
static void mapping_dispatch(struct inv_mapping *m)
{
    if (!mapping_may_consume(m))
        return;
    struct inv_target *t = m->target;
    int64_t now = time_now_ms();
    int64_t next_retry = INT64_MAX;
    bool ordered = m->spec.policy.ordered;
    const char *blocked[256];
    size_t nblocked = 0;
    bool full = false;
    for (struct inv_slot *s = m->head; s; s = s->next) {
        if (s->state == SLOT_DONE || s->state == SLOT_FINISHING)
            continue;
        const char *subject = s->ev.subject ? s->ev.subject : "";
        bool is_blocked = false;
        if (ordered)
            for (size_t i = 0; i < nblocked && !is_blocked; i++)
                is_blocked = strcmp(blocked[i], subject) == 0;
        bool sendable =
            !is_blocked && !full &&
            (s->state == SLOT_PENDING || (s->state == SLOT_WAIT_RETRY && s->retry_at <= now));
        if (sendable) {
            struct inv_instance *inst = target_pick(t, m->spec.policy.concurrency);
            if (inst)
                slot_send(s, inst);
            else
                full = true;
        }
        /* Only a retry still to come needs the timer: one that is due but could not be sent
         * waits for capacity, and whatever frees capacity pumps again. (A timer armed for
         * "now" would fire again within the same turn of the loop, for ever.) */
        if (s->state == SLOT_WAIT_RETRY && s->retry_at > now && s->retry_at < next_retry)
            next_retry = s->retry_at;
        if (ordered && !is_blocked) {
            if (nblocked == ARRAY_SIZE(blocked))
                break; /* too many subjects in progress: the rest waits */
            blocked[nblocked++] = subject;
        }
        if (full && !ordered && next_retry != INT64_MAX)
            break;
    }
    if (next_retry != INT64_MAX) {
        uint64_t delay = (uint64_t)(next_retry - now);
        if (!uv_is_active((uv_handle_t *)&m->retry_timer) ||
            uv_timer_get_due_in(&m->retry_timer) > delay)
            uv_timer_start(&m->retry_timer, mapping_retry_timer, delay, 0);
    }
}

static void mapping_retry_timer(uv_timer_t *h)
{
    mapping_pump(h->data);
}

void invoker_target_pump(struct inv_target *t)
{
    struct invoker *inv = t->inv;
    if (inv->stopping)
        return;
    /* Interactive invokes first, then the mappings. */
    struct inv_instance *inst;
    while (t->waiting && (inst = target_pick(t, INT32_MAX)) != NULL &&
           invoker_invoke_take_instance(t, inst))
        ;
    for (struct inv_mapping *m = inv->mappings; m; m = m->next)
        if (m->target == t && !m->deleted)
            mapping_dispatch(m);
    uint64_t work;
    target_scale_up(t, target_wanted(t, &work, NULL, NULL));
}

/* ---- reading the topic and moving the cursor ---------------------------------------------- */

uint64_t invoker_mapping_backlog(const struct inv_mapping *m)
{
    uint64_t unread = m->end_offset > m->read_next ? m->end_offset - m->read_next : 0;
    return unread + m->pending;
}

static const char *slot_attr(void *ctx, const char *name)
{
    return cloudevent_attr(ctx, name);
}

static void mapping_fill(struct inv_mapping *m)
{
    struct invoker *inv = m->inv;
    while (m->window < m->window_max && m->read_next < m->end_offset) {
        struct fabric_batch batch = {0};
        int rc = fabric_cursor_read(inv->fabric, m->topic, m->consumer, m->read_next,
                                    m->window_max - m->window, 4u << 20, &batch);
        if (rc < 0) {
            /* -EAGAIN: being fetched, and the subscription says when it is here */
            if (rc != -ENOENT && rc != -EAGAIN)
                snprintf(m->last_error, sizeof(m->last_error), "cannot read topic %s: %s", m->topic,
                         fabric_strerror(rc));
            return;
        }
        if (batch.count == 0) {
            /* Past a gap that retention left, or nothing readable yet: never skip ahead on
             * the word of a notification alone. */
            if (batch.next_offset > m->read_next)
                m->read_next = batch.next_offset;
            fabric_batch_free(&batch);
            return;
        }
        for (size_t i = 0; i < batch.count; i++) {
            const struct fabric_record *r = &batch.records[i];
            struct inv_slot *s = xcalloc(1, sizeof(*s));
            s->m = m;
            s->offset = r->offset;
            s->time_ms = r->time_ms;
            s->record = xmalloc(r->len ? r->len : 1);
            memcpy(s->record, r->data, r->len);
            s->state = SLOT_PENDING;
            m->pending++;
            if (cloudevent_decode_record(s->record, r->len, &s->ev) < 0) {
                free(s->record);
                s->record = NULL;
                m->failed++;
                mapping_record_failure(m, s, "the stored event cannot be decoded", NULL);
                slot_done(s);
            } else if (!event_filters_match(m->spec.filters, m->spec.filter_count, slot_attr,
                                            &s->ev)) {
                m->filtered++;
                slot_done(s);
            }
            if (m->tail)
                m->tail->next = s;
            else
                m->head = s;
            m->tail = s;
            m->window++;
        }
        m->read_next = batch.next_offset;
        fabric_batch_free(&batch);
    }
}

static void cursor_committed(void *arg, int status)
{
    struct inv_mapping *m = arg;
    struct invoker *inv = m->inv;
    inv->pending_ops--;
    m->commit_in_flight = false;
    if (status < 0)
        snprintf(m->last_error, sizeof(m->last_error), "cannot commit the cursor: %s",
                 fabric_strerror(status));
    if (m->commit_again && !m->deleted && !inv->stopping) {
        m->commit_again = false;
        mapping_collect(m);
    }
    if (!mapping_unref(m))
        invoker_maybe_done(inv);
}

bool invoker_consumes(const struct invoker *inv)
{
    return !inv->following || !inv->fabric || !fabric_is_shared(inv->fabric);
}

/* One commit at a time, the newest position after it; but a replay's goes at once (now): the
 * fabric applies commits in the order they were made, and on JetStream the reads that follow a
 * replay come through the consumer it moves. */
static void mapping_commit(struct inv_mapping *m, uint64_t to, bool now)
{
    if (!invoker_consumes(m->inv))
        return; /* the consumer is the leader's now: an acknowledgement from here would move it */
    if (m->commit_in_flight && !now) {
        m->commit_again = true;
        return;
    }
    int rc = fabric_cursor_commit(m->inv->fabric, m->topic, m->consumer, to, cursor_committed, m);
    if (rc < 0) {
        snprintf(m->last_error, sizeof(m->last_error), "cannot commit the cursor: %s",
                 fabric_strerror(rc));
        return;
    }
    m->committed = to;
    m->commit_in_flight = true;
    m->inv->pending_ops++;
    m->refs++;
}

/* Drops settled events from the front of the window and moves the cursor past them. */
static void mapping_collect(struct inv_mapping *m)
{
    while (m->head && m->head->state == SLOT_DONE) {
        struct inv_slot *s = m->head;
        m->head = s->next;
        if (!m->head)
            m->tail = NULL;
        m->window--;
        slot_free(s);
    }
    uint64_t to = m->head ? m->head->offset : m->read_next;
    if (to != m->committed)
        mapping_commit(m, to, false);
}

static void mapping_pump(struct inv_mapping *m)
{
    if (m->deleted || m->inv->stopping || !invoker_consumes(m->inv))
        return;
    /* Collect first: settled events at the front still count against the window. */
    mapping_collect(m);
    if (!mapping_may_consume(m))
        return;
    mapping_fill(m);
    mapping_collect(m); /* events the filters skipped settle at once */
    invoker_target_pump(m->target);
}

static void mapping_on_append(void *arg, const char *topic, uint64_t end_offset)
{
    (void)topic;
    struct inv_mapping *m = arg;
    if (end_offset > m->end_offset)
        m->end_offset = end_offset;
    mapping_pump(m);
}

/* ---- schedules ------------------------------------------------------------------------------- */

/* Arms the timer for the schedule's next fire after its last one (or its creation). A fire
 * that came due while skiffd was down (or its loop was held up) is made up for at once, and
 * only once, for the latest time missed, as a Kubernetes CronJob does: the fires between
 * are not replayed. */
static void mapping_arm_cron(struct inv_mapping *m)
{
    int64_t now = time_now_ms();
    int64_t base = m->last_fire_ms ? m->last_fire_ms : m->spec.created_at;
    if (base <= 0 || base > now) /* the clock went back: count from now */
        base = now;
    int64_t next = cron_next(&m->cron, base);
    if (next < 0)
        return;
    if (next <= now) {
        m->cron_due_ms = cron_last_due(&m->cron, base, now);
        uv_timer_start(&m->cron_timer, mapping_cron_fire, 0, 0);
        return;
    }
    m->cron_due_ms = next;
    uv_timer_start(&m->cron_timer, mapping_cron_fire, (uint64_t)(next - now), 0);
}

static void mapping_persist(struct inv_mapping *m);

static void mapping_cron_fire(uv_timer_t *h)
{
    struct inv_mapping *m = h->data;
    if (m->deleted || m->inv->stopping)
        return;
    if (m->inv->following) { /* the skiffd that leads publishes this fire */
        m->last_fire_ms = m->cron_due_ms;
        mapping_arm_cron(m);
        return;
    }
    char source[80], when[40];
    snprintf(source, sizeof(source), "/skiff/schedules/%s", m->spec.id);
    time_format_rfc3339(time_now_ms(), when, sizeof(when));
    json_t *data = json_pack("{s:s, s:s, s:s}", "schedule", m->spec.schedule, "app", m->spec.app,
                             "fired_at", when);
    /* `time` is when the fire was due: the missed time for one made up after a restart */
    invoker_publish(m->inv, m->topic, "skiff.schedule.fired", source, m->spec.app, data,
                    m->cron_due_ms);
    json_decref(data);
    m->inv->schedule_fires++;
    m->last_fire_ms = m->cron_due_ms;
    mapping_persist(m); /* so a restart knows which fires it missed */
    mapping_arm_cron(m);
}

/* ---- mappings ------------------------------------------------------------------------------ */

struct inv_mapping *invoker_mapping_find(struct invoker *inv, const char *id)
{
    for (struct inv_mapping *m = inv->mappings; m; m = m->next)
        if (!m->deleted && strcmp(m->spec.id, id) == 0)
            return m;
    return NULL;
}

/* The mapping's document: its spec, where it began to read, its counts and last failures. */
static char *mapping_doc_text(struct inv_mapping *m)
{
    json_t *doc = mapping_spec_to_json(&m->spec);
    json_object_set_new(doc, "start_offset", json_integer((json_int_t)m->start_offset));
    json_object_set_new(doc, "stats",
                        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "delivered",
                                  (json_int_t)m->delivered, "retried", (json_int_t)m->retried,
                                  "dead_lettered", (json_int_t)m->dead_lettered, "failed",
                                  (json_int_t)m->failed, "filtered", (json_int_t)m->filtered, "seq",
                                  (json_int_t)m->stats_seq));
    if (m->failures)
        json_object_set(doc, "failures", m->failures);
    if (m->last_fire_ms)
        json_object_set_new(doc, "last_fire_ms", json_integer((json_int_t)m->last_fire_ms));
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return text;
}

/* ---- the invoker's store writes, queued (never waited for on the loop) -----------------------
 *
 * Each is an inv_store_op on inv->store_ops until its callback comes from the store's reap;
 * an invoker freed before that leaves its ops with inv NULL, and their callbacks then only
 * answer whoever waits (a request) and free them. */
struct inv_store_op {
    struct invoker *inv;
    struct inv_store_op *next;
    char id[128];
    struct inv_mapping *m;    /* a create: the mapping to start once its document is made */
    invoker_mapping_fn *done; /* a create's, a delete's or a catch-up's caller, or NULL */
    void *ctx;
    char mapping[128]; /* a replay's ask taken off the store: its mapping and offset */
    int64_t offset;
};

static struct inv_store_op *inv_store_op_new(struct invoker *inv, const char *id)
{
    struct inv_store_op *op = xcalloc(1, sizeof *op);
    op->inv = inv;
    snprintf(op->id, sizeof op->id, "%s", id);
    op->next = inv->store_ops;
    inv->store_ops = op;
    return op;
}

/* The op's invoker, the op taken off its list; NULL when the invoker is gone. */
static struct invoker *inv_store_op_take(struct inv_store_op *op)
{
    struct invoker *inv = op->inv;
    for (struct inv_store_op **pp = inv ? &inv->store_ops : NULL; pp && *pp; pp = &(*pp)->next)
        if (*pp == op) {
            *pp = op->next;
            break;
        }
    return inv;
}

/* The invoker is freed: the callbacks still to come find no invoker. */
static void inv_store_ops_orphan(struct invoker *inv)
{
    for (struct inv_store_op *op = inv->store_ops; op; op = op->next)
        op->inv = NULL;
    inv->store_ops = NULL;
}

static void mapping_saved(void *ctx, int rc)
{
    struct inv_store_op *op = ctx;
    struct invoker *inv = inv_store_op_take(op);
    if (rc == -ENOENT && inv)
        invoker_sync_soon(inv); /* deleted through another skiffd */
    else if (rc < 0 && rc != -ENOENT)
        log_error("cannot save event mapping %s: %s", op->id, skiff_strerror(rc));
    free(op);
}

/* Rewrites the mapping's document, only while it exists (store_doc_update: counts saved after
 * another skiffd deleted the mapping do not bring it back; the write's -ENOENT has the
 * invoker read the store again, which lets the mapping go here too). Queued. */
static void mapping_save(struct inv_mapping *m)
{
    char *text = mapping_doc_text(m);
    struct inv_store_op *op = inv_store_op_new(m->inv, m->spec.id);
    if (store_doc_update_async(m->inv->store, MAPPING_DOC_KIND, m->spec.id, text, mapping_saved,
                               op) < 0)
        mapping_saved(op, -ECANCELED);
    free(text);
    m->stats_dirty = false;
}

/* A document's delete, queued; done (when not NULL) hears its outcome. */
static void mapping_doc_deleted(void *ctx, int rc)
{
    struct inv_store_op *op = ctx;
    struct invoker *inv = inv_store_op_take(op);
    if (rc < 0 && rc != -ENOENT) {
        log_error("cannot delete event mapping %s's document: %s", op->id, skiff_strerror(rc));
        if (inv)
            invoker_sync_soon(inv); /* what the store still holds runs again */
    }
    if (op->done)
        op->done(op->ctx, rc == -ENOENT ? 0 : rc,
                 rc < 0 && rc != -ENOENT ? "cannot delete the mapping's record" : NULL);
    free(op);
}

static void mapping_doc_delete(struct invoker *inv, const char *id, invoker_mapping_fn *done,
                               void *ctx)
{
    struct inv_store_op *op = inv_store_op_new(inv, id);
    op->done = done;
    op->ctx = ctx;
    if (store_doc_delete_async(inv->store, MAPPING_DOC_KIND, id, mapping_doc_deleted, op) < 0)
        mapping_doc_deleted(op, -ECANCELED);
}

/* The sequence number of a stored mapping's counts (0: none, or saved before they had one). */
static uint64_t mapping_stats_seq(json_t *stats)
{
    json_int_t seq = json_integer_value(json_object_get(stats, "seq"));
    return seq > 0 ? (uint64_t)seq : 0;
}

/* Takes a stored mapping's counts and last failures (its document, parsed) as this skiffd's. */
static void mapping_take_counts(struct inv_mapping *m, json_t *doc)
{
    json_t *stats = json_object_get(doc, "stats");
    if (json_is_object(stats)) {
        m->delivered = (uint64_t)json_integer_value(json_object_get(stats, "delivered"));
        m->retried = (uint64_t)json_integer_value(json_object_get(stats, "retried"));
        m->dead_lettered = (uint64_t)json_integer_value(json_object_get(stats, "dead_lettered"));
        m->failed = (uint64_t)json_integer_value(json_object_get(stats, "failed"));
        m->filtered = (uint64_t)json_integer_value(json_object_get(stats, "filtered"));
        m->stats_seq = mapping_stats_seq(stats);
    }
    json_t *failures = json_object_get(doc, "failures");
    if (json_is_array(failures)) {
        json_decref(m->failures);
        m->failures = json_incref(failures);
    }
}

/* The counts are the consuming skiffd's to save: a follower saves none (what it delivered
 * before it stopped leading moved no cursor and is delivered again by the leader), and a save
 * never goes back: counts stored by another leader since this one last saved or took them
 * (a greater sequence number) are taken instead of written over. */
static void mapping_persist(struct inv_mapping *m)
{
    m->stats_dirty = false;
    if (!invoker_consumes(m->inv))
        return;
    char *text = NULL;
    if (store_doc_get(m->inv->store, MAPPING_DOC_KIND, m->spec.id, &text) == 0) {
        json_t *doc = json_loads(text, 0, NULL);
        free(text);
        uint64_t stored = mapping_stats_seq(json_object_get(doc, "stats"));
        if (stored > m->stats_seq) {
            log_warning("event mapping %s: counts saved by another skiffd (sequence %llu, this"
                        " one's %llu) are taken, not written over",
                        m->spec.id, (unsigned long long)stored, (unsigned long long)m->stats_seq);
            mapping_take_counts(m, doc);
            json_decref(doc);
            return;
        }
        json_decref(doc);
    }
    m->stats_seq++;
    mapping_save(m);
}

static void mapping_discard(struct inv_mapping *m)
{
    mapping_spec_free(&m->spec);
    free(m->app_ref);
    free(m);
}

/* A mapping from spec (taken over), its topic made and where it starts to read decided (start:
 * the place its document recorded; NULL for a new mapping, which starts at the topic's end,
 * or its beginning when asked); not started yet (mapping_begin). */
static int mapping_prepare(struct invoker *inv, struct mapping_spec *spec, const uint64_t *start,
                           struct inv_mapping **out, char *err, size_t errsize)
{
    if (!spec->created_at)
        spec->created_at = time_now_ms();
    struct inv_mapping *m = xcalloc(1, sizeof(*m));
    m->inv = inv;
    m->spec = *spec;
    memset(spec, 0, sizeof(*spec));
    snprintf(m->consumer, sizeof(m->consumer), "map-%s", m->spec.id);
    m->refs = 1;
    m->app_ref = mapping_app_ref(&m->spec);
    const char *topic_space = m->spec.topic_space ? m->spec.topic_space : m->spec.space;
    if (fabric_topic_scoped(topic_space, m->spec.topic, m->topic, sizeof m->topic) < 0 ||
        (m->spec.reply_topic && fabric_topic_scoped(m->spec.space, m->spec.reply_topic,
                                                    m->reply_topic, sizeof m->reply_topic) < 0) ||
        (m->spec.dead_letter_topic &&
         fabric_topic_scoped(m->spec.space, m->spec.dead_letter_topic, m->dead_letter_topic,
                             sizeof m->dead_letter_topic) < 0)) {
        snprintf(err, errsize, "a topic name of the mapping is too long");
        mapping_discard(m);
        return -ENAMETOOLONG;
    }
    int64_t wm = (int64_t)m->spec.policy.concurrency * m->spec.max_instances * 4;
    m->window_max = wm < 64 ? 64 : wm > 1024 ? 1024 : (size_t)wm;

    int rc = fabric_topic_create(inv->fabric, m->topic);
    if (rc < 0) {
        snprintf(err, errsize, "cannot create topic %s: %s", m->topic, fabric_strerror(rc));
        mapping_discard(m);
        return rc;
    }
    struct fabric_topic_info info = {0};
    if (fabric_topic_info(inv->fabric, m->topic, &info) == 0)
        m->end_offset = info.end_offset;
    m->start_offset = start                        ? *start
                      : m->spec.start_at_beginning ? info.first_offset
                                                   : m->end_offset;
    *out = m;
    return 0;
}

/* Starts a prepared mapping: its cursor, its subscription, its timers. On a failure m is
 * freed (and, when its document was made for it, persist, the document is deleted: a
 * mapping that did not start is none). */
static int mapping_begin(struct inv_mapping *m, bool persist, char *err, size_t errsize)
{
    struct invoker *inv = m->inv;
    uint64_t cursor;
    if (fabric_cursor_get(inv->fabric, m->topic, m->consumer, &cursor) == 0) {
        m->read_next = m->committed = cursor;
    } else if (fabric_is_shared(inv->fabric)) {
        /* No commit: another skiffd may have made the consumer since this one looked. The
         * first read as the consumer reads on from its floor, or makes it at start_offset. */
        m->read_next = m->committed = m->start_offset;
    } else {
        m->read_next = m->start_offset;
        m->committed = m->start_offset + 1; /* differs: the first collect commits it */
    }
    int rc = fabric_subscribe(inv->fabric, m->topic, mapping_on_append, m, &m->sub);
    if (rc < 0) {
        snprintf(err, errsize, "cannot subscribe to topic %s: %s", m->topic, fabric_strerror(rc));
        if (persist)
            mapping_doc_delete(inv, m->spec.id, NULL, NULL);
        mapping_discard(m);
        return rc;
    }
    uv_timer_init(inv->loop, &m->retry_timer);
    uv_timer_init(inv->loop, &m->cron_timer);
    m->retry_timer.data = m->cron_timer.data = m;
    m->open_handles = 2;
    m->target = invoker_target_get(inv, m->app_ref, m->spec.process);
    m->next = inv->mappings;
    inv->mappings = m;
    if (m->spec.trigger == MAPPING_SCHEDULE) {
        char cerr[256];
        if (cron_parse(m->spec.schedule, &m->cron, cerr, sizeof(cerr)) == 0)
            mapping_arm_cron(m);
    }
    mapping_pump(m);
    return 0;
}

/* A mapping read from its document (start: where it records the mapping began), started. */
static int mapping_add_at(struct invoker *inv, struct mapping_spec *spec, const uint64_t *start,
                          char *err, size_t errsize)
{
    struct inv_mapping *m = NULL;
    int rc = mapping_prepare(inv, spec, start, &m, err, errsize);
    return rc < 0 ? rc : mapping_begin(m, false, err, errsize);
}

/* A new mapping's document is made (or refused): the mapping starts, or goes. */
static void mapping_created(void *ctx, int rc)
{
    struct inv_store_op *op = ctx;
    struct invoker *inv = inv_store_op_take(op);
    struct inv_mapping *m = op->m;
    char err[512] = "";
    if (rc == -EEXIST)
        snprintf(err, sizeof err,
                 "an event mapping with id '%s' was made a moment ago (through this or another"
                 " skiffd): leave out 'id' for a new one",
                 op->id);
    else if (rc < 0)
        snprintf(err, sizeof err, "cannot save event mapping %s: %s", op->id, skiff_strerror(rc));
    else if (!inv || inv->stopping)
        snprintf(err, sizeof err,
                 "skiffd is stopping: event mapping %s is saved and starts with skiffd", op->id);
    if (rc < 0 || !inv || inv->stopping) {
        mapping_discard(m);
        rc = rc < 0 ? rc : -ECANCELED;
    } else if (invoker_mapping_find(inv, op->id)) {
        mapping_discard(m); /* a read of the store started it meanwhile */
    } else {
        rc = mapping_begin(m, true, err, sizeof err);
    }
    op->done(op->ctx, rc, rc < 0 ? err : NULL);
    free(op);
}

void invoker_mapping_spaces(struct invoker *inv, void (*fn)(void *ctx, const char *space),
                            void *ctx)
{
    for (struct inv_mapping *m = inv->mappings; m; m = m->next)
        if (!m->deleted)
            fn(ctx, m->spec.space ? m->spec.space : SKIFF_DEFAULT_SPACE_GUID);
    for (struct inv_store_op *op = inv->store_ops; op; op = op->next)
        if (op->m && !invoker_mapping_find(inv, op->id)) /* a create whose write is queued */
            fn(ctx, op->m->spec.space ? op->m->spec.space : SKIFF_DEFAULT_SPACE_GUID);
}

void invoker_mapping_create(struct invoker *inv, struct mapping_spec *spec,
                            invoker_mapping_fn *done, void *ctx)
{
    char err[512] = "";
    struct inv_mapping *m = NULL;
    int rc = mapping_prepare(inv, spec, NULL, &m, err, sizeof err);
    if (rc < 0) {
        done(ctx, rc, err);
        return;
    }
    struct inv_store_op *op = inv_store_op_new(inv, m->spec.id);
    op->m = m;
    op->done = done;
    op->ctx = ctx;
    /* the store decides between skiffds making one id at once, before anything is started */
    char *text = mapping_doc_text(m);
    rc =
        store_doc_create_async(inv->store, MAPPING_DOC_KIND, m->spec.id, text, mapping_created, op);
    free(text);
    if (rc < 0)
        mapping_created(op, rc);
}

static void mapping_drop_window(struct inv_mapping *m)
{
    struct inv_slot *s = m->head;
    while (s) {
        struct inv_slot *next = s->next;
        if (s->state == SLOT_IN_FLIGHT || s->state == SLOT_FINISHING) {
            s->orphan = true; /* its callback frees it */
            s->next = NULL;
        } else {
            slot_free(s);
        }
        s = next;
    }
    m->head = m->tail = NULL;
    m->window = 0;
    m->pending = 0;
}

static void mapping_retire(struct inv_mapping *m);

void invoker_mapping_remove(struct inv_mapping *m, invoker_mapping_fn *done, void *ctx)
{
    struct invoker *inv = m->inv;
    mapping_doc_delete(inv, m->spec.id, done, ctx);
    fabric_cursor_delete(inv->fabric, m->topic, m->consumer);
    mapping_retire(m);
}

/* The mapping stops here (deliveries in flight finish; their outcome moves nothing) and is
 * freed once its callbacks have come; its document and cursor stay. */
static void mapping_retire(struct inv_mapping *m)
{
    m->deleted = true;
    if (m->sub)
        fabric_unsubscribe(m->sub);
    m->sub = NULL;
    mapping_drop_window(m);
    m->in_flight = 0;
    uv_close((uv_handle_t *)&m->retry_timer, mapping_handle_closed);
    uv_close((uv_handle_t *)&m->cron_timer, mapping_handle_closed);
    mapping_unref(m);
}

/* Where a replay of m from offset starts: within what the topic keeps. */
static uint64_t replay_clamp(struct inv_mapping *m, uint64_t offset)
{
    struct fabric_topic_info info;
    if (fabric_topic_info(m->inv->fabric, m->topic, &info) == 0) {
        if (offset < info.first_offset)
            offset = info.first_offset;
        if (offset > info.end_offset)
            offset = info.end_offset;
        m->end_offset = info.end_offset;
    }
    return offset;
}

uint64_t invoker_mapping_replay_from(struct inv_mapping *m, uint64_t offset)
{
    return replay_clamp(m, offset);
}

int invoker_mapping_replay_ask(struct inv_mapping *m, uint64_t from, store_done_fn *done, void *ctx)
{
    char nonce[17], id[128];
    random_hex(nonce, 8);
    snprintf(id, sizeof(id), "%s/%016lld-%s", m->spec.id, (long long)time_now_ms(), nonce);
    json_t *doc = json_pack("{s:s, s:I}", "mapping", m->spec.id, "offset", (json_int_t)from);
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    int rc =
        text ? store_doc_put_async(m->inv->store, REPLAY_DOC_KIND, id, text, done, ctx) : -ENOMEM;
    free(text);
    return rc;
}

/* A replay asked through another skiffd is off the store (op->id): carried out here. */
static void replay_taken(void *ctx, int rc)
{
    struct inv_store_op *op = ctx;
    struct invoker *inv = inv_store_op_take(op);
    struct inv_mapping *m =
        inv && !inv->stopping && op->mapping[0] ? invoker_mapping_find(inv, op->mapping) : NULL;
    if (rc < 0 && rc != -ENOENT) {
        log_warning("cannot take the replay %s off the store (%s): tried again in a second", op->id,
                    skiff_strerror(rc));
    } else if (rc == 0 && inv && (!m || op->offset < 0)) {
        log_warning("a replay asked through another skiffd names event mapping %s, which "
                    "this skiffd does not have (or no offset): dropped",
                    op->mapping[0] ? op->mapping : "(none)");
    } else if (rc == 0 && m) {
        uint64_t from = invoker_mapping_replay(m, (uint64_t)op->offset);
        log_info("event mapping %s replays from offset %llu, as asked through another "
                 "skiffd",
                 m->spec.id, (unsigned long long)from);
    }
    free(op);
}

/* The replays asked through other skiffds, as read (ids and bodies in step, oldest first per
 * mapping: their ids sort by time; NULL on a failure, read again at the next tick). Each is
 * taken off the store (the delete queued) before it is carried out, so that it is carried
 * out once; the next read, made in turn after the deletes, no longer sees it. */
static void replays_read(void *ctx, int rc, char **ids, char **bodies)
{
    struct inv_store_op *read = ctx;
    struct invoker *inv = inv_store_op_take(read);
    free(read);
    if (inv) {
        inv->replays_reading = false;
        inv->replays_stale |= rc < 0;
    }
    bool on = inv && !inv->stopping && invoker_consumes(inv) && rc == 0;
    for (size_t i = 0; on && ids[i]; i++) {
        json_t *doc = json_loads(bodies[i], 0, NULL);
        const char *mapping = json_string_value(json_object_get(doc, "mapping"));
        json_t *offset = json_object_get(doc, "offset");
        struct inv_store_op *op = inv_store_op_new(inv, ids[i]);
        snprintf(op->mapping, sizeof op->mapping, "%s", mapping ? mapping : "");
        op->offset = json_is_integer(offset) ? json_integer_value(offset) : -1;
        if (store_doc_delete_async(inv->store, REPLAY_DOC_KIND, ids[i], replay_taken, op) < 0)
            replay_taken(op, -ECANCELED);
        json_decref(doc);
    }
    strv_free(ids);
    strv_free(bodies);
}

/* The consumer (the leader, on a shared fabric), each tick: the replays asked through other
 * skiffds are read when the change feed brought news of their kind since the last read (or
 * that read failed, or this skiffd began consuming), one read at a time. The store's writer
 * makes the read, in turn with the writes: on PostgreSQL the loop never waits for the server.
 * Before, the read was answered from the store's copy while the change feed was up, and
 * went to the server on the loop every second once it was lost (a silent server stopped the
 * API). */
static void invoker_take_replays(struct invoker *inv)
{
    uint64_t news = store_doc_news_kind(inv->store, REPLAY_DOC_KIND);
    if ((!inv->replays_stale && news == inv->replays_seen) || inv->replays_reading)
        return;
    inv->replays_stale = false;
    inv->replays_seen = news;
    inv->replays_reading = true;
    struct inv_store_op *read = inv_store_op_new(inv, "replays");
    if (store_doc_each_fresh_async(inv->store, REPLAY_DOC_KIND, replays_read, read) < 0)
        replays_read(read, -EBUSY, NULL, NULL);
}

void invoker_op_done(struct invoker *inv)
{
    inv->pending_ops--;
    invoker_maybe_done(inv);
}

uint64_t invoker_mapping_replay(struct inv_mapping *m, uint64_t offset)
{
    offset = replay_clamp(m, offset);
    /* Events in flight finish on their own; their outcome no longer moves the cursor. */
    mapping_drop_window(m);
    m->in_flight = 0; /* those still in flight are orphans now: they do not count */
    m->read_next = offset;
    mapping_commit(m, offset, true);
    mapping_pump(m);
    return offset;
}

json_t *invoker_mapping_json(struct inv_mapping *m)
{
    json_t *o = mapping_spec_to_json(&m->spec);
    json_object_set_new(o, "backlog", json_integer((json_int_t)invoker_mapping_backlog(m)));
    json_object_set_new(o, "in_flight", json_integer((json_int_t)m->in_flight));
    json_object_set_new(o, "delivered", json_integer((json_int_t)m->delivered));
    json_object_set_new(o, "retried", json_integer((json_int_t)m->retried));
    json_object_set_new(o, "dead_lettered", json_integer((json_int_t)m->dead_lettered));
    json_object_set_new(o, "failed", json_integer((json_int_t)m->failed));
    json_object_set_new(o, "filtered", json_integer((json_int_t)m->filtered));
    json_object_set_new(o, "cursor", json_integer((json_int_t)m->committed));
    json_object_set_new(o, "end_offset", json_integer((json_int_t)m->end_offset));
    json_object_set_new(o, "read_offset", json_integer((json_int_t)m->read_next));
    json_object_set_new(o, "window", json_integer((json_int_t)m->window));
    int busy = 0;
    for (struct inv_instance *i = m->target->instances; i; i = i->next)
        busy += i->in_flight;
    json_object_set_new(o, "instance_calls", json_integer(busy));
    json_object_set_new(o, "instances", json_integer(m->target->instance_count));
    const char *err = m->target->last_error[0] ? m->target->last_error : m->last_error;
    json_object_set_new(o, "last_error", err[0] ? json_string(err) : json_null());
    json_object_set_new(o, "failures", m->failures ? json_copy(m->failures) : json_array());
    if (m->spec.trigger == MAPPING_SCHEDULE && uv_is_active((uv_handle_t *)&m->cron_timer)) {
        char when[40];
        time_format_rfc3339(m->cron_due_ms, when, sizeof(when));
        json_object_set_new(o, "next_fire", json_string(when));
    }
    return o;
}

static int mapping_load_doc(void *ctx, const char *id, const char *text)
{
    struct invoker *inv = ctx;
    json_error_t jerr;
    json_t *doc = json_loads(text, 0, &jerr);
    if (!doc) {
        log_warning("event mapping %s is not valid JSON (%s): skipped", id, jerr.text);
        return 0;
    }
    json_t *counts = json_pack("{s:O?, s:O?}", "stats", json_object_get(doc, "stats"), "failures",
                               json_object_get(doc, "failures"));
    int64_t last_fire_ms = (int64_t)json_integer_value(json_object_get(doc, "last_fire_ms"));
    json_t *start = json_object_get(doc, "start_offset");
    uint64_t start_offset = (uint64_t)json_integer_value(start);
    bool start_known = json_is_integer(start) && json_integer_value(start) >= 0;
    json_object_del(doc, "stats");
    json_object_del(doc, "failures");
    json_object_del(doc, "last_fire_ms");
    json_object_del(doc, "start_offset");
    struct mapping_spec spec;
    enum skiff_err code;
    char err[256];
    if (mapping_spec_from_json(doc, &spec, &code, err, sizeof(err)) < 0) {
        log_error("event mapping %s cannot be read (%s): skipped", id, err);
    } else if (mapping_add_at(inv, &spec, start_known ? &start_offset : NULL, err, sizeof(err)) <
               0) {
        log_error("event mapping %s cannot start: %s", id, err);
        mapping_spec_free(&spec);
    } else {
        struct inv_mapping *m = invoker_mapping_find(inv, id);
        if (m)
            mapping_take_counts(m, counts);
        if (m && last_fire_ms > 0 && m->spec.trigger == MAPPING_SCHEDULE) {
            m->last_fire_ms = last_fire_ms;
            mapping_arm_cron(m); /* again, now from its last fire: it may have missed one */
        }
    }
    json_decref(counts);
    json_decref(doc);
    return 0;
}

/* ---- following the store: mappings made, changed or deleted through another skiffd ---------- */

/* How long news of changed documents waits, so that a burst of them (another skiffd saving
 * its mappings' counts) is read once. */
#define INVOKER_SYNC_DELAY_MS 20

static int mapping_doc_collect(void *ctx, const char *id, const char *text)
{
    json_object_set_new(ctx, id, json_string(text));
    return 0;
}

/* The spec a document holds, as this skiffd writes specs (NULL: not a readable spec). */
static json_t *mapping_doc_spec(const char *text)
{
    json_t *doc = json_loads(text, 0, NULL);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return NULL;
    }
    const char *extras[] = {"stats", "failures", "last_fire_ms", "start_offset"};
    for (size_t i = 0; i < sizeof extras / sizeof *extras; i++)
        json_object_del(doc, extras[i]);
    struct mapping_spec spec;
    enum skiff_err code;
    char err[256];
    int rc = mapping_spec_from_json(doc, &spec, &code, err, sizeof err);
    json_decref(doc);
    if (rc < 0)
        return NULL;
    json_t *out = mapping_spec_to_json(&spec);
    mapping_spec_free(&spec);
    return out;
}

/* A mapping another skiffd deleted (or made again under its id) stops here. Its cursor goes
 * too: that skiffd deleted the consumer, and what this one knew of it is void. */
static void mapping_forget(struct inv_mapping *m)
{
    fabric_cursor_delete(m->inv->fabric, m->topic, m->consumer);
    mapping_retire(m);
}

/* A follower's copy of the counts the leader saved, newer than what it holds. */
static void mapping_follow_counts(struct inv_mapping *m, const char *text)
{
    json_t *doc = json_loads(text, 0, NULL);
    if (json_is_object(doc) && mapping_stats_seq(json_object_get(doc, "stats")) >= m->stats_seq)
        mapping_take_counts(m, doc);
    json_decref(doc);
}

/* One stored mapping: started when new here, started again when its spec changed (deleted and
 * made again under its id). */
static void mapping_sync_doc(struct invoker *inv, const char *id, const char *text)
{
    struct inv_mapping *m = invoker_mapping_find(inv, id);
    if (m) {
        json_t *stored = mapping_doc_spec(text);
        json_t *mine = mapping_spec_to_json(&m->spec);
        bool same = !stored || json_equal(stored, mine);
        json_decref(stored);
        json_decref(mine);
        if (same) {
            if (!invoker_consumes(inv)) /* a follower shows the counts the leader saved */
                mapping_follow_counts(m, text);
            return;
        }
        log_info("event mapping %s was changed through another skiffd: started again", id);
        mapping_forget(m);
    } else {
        log_info("event mapping %s was made through another skiffd: started here", id);
    }
    mapping_load_doc(inv, id, text);
}

/* Reads the stored mappings and makes this skiffd's match them: what another skiffd made,
 * changed or deleted is started, started again or stopped here. */
static void invoker_mappings_sync(struct invoker *inv)
{
    if (inv->stopping)
        return;
    uint64_t news = store_doc_news_kind(
        inv->store, MAPPING_DOC_KIND); /* news from now on calls for another read */
    json_t *docs = json_object();
    inv->mapping_reads++;
    if (store_doc_each(inv->store, MAPPING_DOC_KIND, mapping_doc_collect, docs) < 0) {
        log_warning("cannot read the event mappings from the store: read again in a second");
        json_decref(docs);
        return;
    }
    inv->doc_news = news;
    for (struct inv_mapping *m = inv->mappings, *next; m; m = next) {
        next = m->next;
        if (!m->deleted && !json_object_get(docs, m->spec.id)) {
            log_info("event mapping %s was deleted through another skiffd: stopped", m->spec.id);
            mapping_forget(m);
        }
    }
    const char *id;
    json_t *text;
    json_object_foreach(docs, id, text)
    {
        mapping_sync_doc(inv, id, json_string_value(text));
    }
    json_decref(docs);
}

/* A catch-up's read is made: what was read starts here (the other mappings wait for the
 * feed's news, which is on its way: the read dropped the store's copy that lacked it). */
static void mapping_caught_up(void *ctx, int rc, const char *json)
{
    struct inv_store_op *op = ctx;
    struct invoker *inv = inv_store_op_take(op);
    if (!inv || inv->stopping)
        rc = -ECANCELED;
    else if (rc == 0)
        mapping_sync_doc(inv, op->id, json);
    if (rc == 0 && !invoker_mapping_find(inv, op->id))
        rc = -ENOENT; /* not a mapping this skiffd can start (logged) */
    op->done(op->ctx, rc, NULL);
    free(op);
}

bool invoker_mapping_catch_up(struct invoker *inv, const char *id, invoker_mapping_fn *done,
                              void *ctx)
{
    if (!inv || inv->stopping || store_feed_fd(inv->store) < 0 ||
        strlen(id) >= sizeof((struct inv_store_op *)0)->id || /* longer than any mapping's */
        !rate_take(&inv->catch_up_rate, time_mono_ms(), 50, 20))
        return false;
    struct inv_store_op *op = inv_store_op_new(inv, id);
    op->done = done;
    op->ctx = ctx;
    if (store_doc_get_fresh_async(inv->store, MAPPING_DOC_KIND, id, mapping_caught_up, op) >= 0)
        return true;
    inv_store_op_take(op);
    free(op);
    return false;
}

static void invoker_on_sync_timer(uv_timer_t *h)
{
    invoker_mappings_sync(h->data);
}

static void invoker_sync_soon(struct invoker *inv)
{
    if (!inv->stopping && !uv_is_active((uv_handle_t *)&inv->sync_timer))
        uv_timer_start(&inv->sync_timer, invoker_on_sync_timer, INVOKER_SYNC_DELAY_MS, 0);
}

void invoker_store_news(struct invoker *inv)
{
    if (inv && !inv->stopping && store_doc_news_kind(inv->store, MAPPING_DOC_KIND) != inv->doc_news)
        invoker_sync_soon(inv);
}

/* ---- platform events ------------------------------------------------------------------------ */

/* A process that events or invokes are aimed at listens on $PORT: the scheduler checks that
 * port before calling it ready, so the first delivery to a fresh instance is not refused. */
static bool invoker_process_listens(void *ctx, const char *app_guid, const char *app_name,
                                    const char *process_type)
{
    struct invoker *inv = ctx;
    for (struct inv_target *t = inv->targets; t; t = t->next)
        if (!strcmp(t->process, process_type) &&
            (t->app_guid[0] ? !strcmp(t->app_guid, app_guid)
                            : !strcmp(invoker_target_name(t), app_name)))
            return true;
    return false;
}

/* The mappings of a deleted app go with it, as its routes do, and so do those of a function
 * removed from its app (mappings are made only to processes an app has, so a process gone is
 * one that was removed). */
static void invoker_mappings_prune(struct invoker *inv)
{
    for (struct inv_mapping *m = inv->mappings, *next; m; m = next) {
        next = m->next;
        struct store_app *a = NULL;
        int rc = m->deleted ? 0 : store_app_get(inv->store, m->app_ref, &a);
        bool process_gone =
            rc == 0 && strcmp(m->spec.process, "web") && !store_app_process(a, m->spec.process);
        store_app_free(a);
        if (rc == -ENOENT) {
            log_info("event mapping %s removed: its app %s was deleted", m->spec.id, m->spec.app);
            invoker_mapping_remove(m, NULL, NULL);
        } else if (process_gone) {
            log_info("event mapping %s removed: %s of app %s was deleted", m->spec.id,
                     m->spec.process, m->spec.app);
            invoker_mapping_remove(m, NULL, NULL);
        }
    }
}

static void invoker_on_platform_event(void *ctx, const struct platform_event *ev)
{
    struct invoker *inv = ctx;
    if (inv->stopping)
        return;
    const char *name = NULL;
    switch (ev->type) {
    case PLATFORM_INSTANCE_READY:
        for (struct inv_target *t = inv->targets; t; t = t->next) {
            bool same_app =
                (ev->app_guid && t->app_guid[0] && !strcmp(t->app_guid, ev->app_guid)) ||
                (ev->app_name && !t->app_guid[0] && !strcmp(invoker_target_name(t), ev->app_name));
            if (!same_app || (ev->process_type && strcmp(t->process, ev->process_type) != 0) ||
                !ev->addr || !ev->instance_guid)
                continue;
            if (ev->app_guid)
                snprintf(t->app_guid, sizeof(t->app_guid), "%s", ev->app_guid);
            target_instance_add(t, ev->instance_guid, ev->addr);
            invoker_target_pump(t);
        }
        return;
    case PLATFORM_INSTANCE_GONE:
        /* By instance guid: the app may be gone from the scheduler already (stopped or
         * deleted), so its name need not come with the event. */
        for (struct inv_target *t = inv->targets; t && ev->instance_guid; t = t->next) {
            struct inv_instance *i = target_instance_find(t, ev->instance_guid);
            if (!i)
                continue;
            target_instance_remove(t, i, false);
            if (t->requested > t->instance_count)
                t->requested = t->instance_count;
        }
        return;
    case PLATFORM_INSTANCE_DRAINING:
        /* GONE came first: an instance with deliveries in flight is on the draining list, and
         * the scheduler stops it only once they have ended (their result counts as usual) */
        for (struct inv_instance *i = inv->draining; i && ev->instance_guid; i = i->next)
            if (!i->drain_id && !strcmp(i->guid, ev->instance_guid)) {
                i->drain_id = ev->drain_id;
                scheduler_drain_hold(inv->scheduler, ev->drain_id);
            }
        return;
    case PLATFORM_APP_STARTED:
        name = "started";
        invoker_track_function(inv, ev->app_guid);
        break;
    case PLATFORM_APP_STOPPED:
        name = "stopped";
        break;
    case PLATFORM_APP_CRASHED:
        name = "crashed";
        break;
    case PLATFORM_APP_SCALED:
        name = "scaled";
        for (struct inv_target *t = inv->targets; t; t = t->next)
            if (ev->app_guid && !strcmp(t->app_guid, ev->app_guid) && ev->process_type &&
                strcmp(t->process, ev->process_type) == 0)
                t->requested = ev->instances;
        break;
    case PLATFORM_APP_STAGED:
        name = "staged";
        invoker_track_function(inv, ev->app_guid);
        break;
    case PLATFORM_PROCESS_REMOVED:
        invoker_mappings_prune(inv);
        return;
    case PLATFORM_APP_DEPLOY_FAILED:
        return;
    }
    if (!name)
        return;
    /* A platform event's type is the name of its topic, which is in the app's space (a
     * mapping of another space never hears of it) */
    char type[64], topic[FABRIC_TOPIC_MAX + 1], source[128];
    snprintf(type, sizeof(type), "skiff.app.%s", name);
    struct store_app *owner = NULL;
    if (!ev->app_guid || store_app_get(inv->store, ev->app_guid, &owner) < 0)
        return; /* an app gone from the store: no space to tell it in, so nobody is told */
    int scoped = fabric_topic_scoped(owner->space_guid, type, topic, sizeof topic);
    store_app_free(owner);
    if (scoped < 0)
        return;
    snprintf(source, sizeof(source), "/skiff/apps/%s", ev->app_name);
    json_t *data =
        json_pack("{s:s, s:s, s:s}", "app", ev->app_name, "app_guid", ev->app_guid, "event", name);
    if (ev->process_type)
        json_object_set_new(data, "process_type", json_string(ev->process_type));
    if (ev->type == PLATFORM_APP_CRASHED) {
        json_object_set_new(data, "index", json_integer(ev->index));
        if (ev->instance_guid)
            json_object_set_new(data, "instance_guid", json_string(ev->instance_guid));
        json_object_set_new(data, "exit_status", json_integer(ev->exit_status));
        json_object_set_new(data, "exit_signal", json_integer(ev->exit_signal));
        json_object_set_new(data, "reason", json_string(ev->reason ? ev->reason : ""));
        json_object_set_new(data, "crash_count", json_integer(ev->crash_count));
    }
    if (ev->type == PLATFORM_APP_SCALED) {
        json_object_set_new(data, "instances", json_integer(ev->instances));
        if (ev->reason)
            json_object_set_new(data, "reason", json_string(ev->reason));
    }
    invoker_publish(inv, topic, type, source, ev->app_name, data, 0);
    json_decref(data);
    inv->platform_events++;
}

/* ---- functions without mappings: idle scaling and routed traffic ----------------------------- */

/* Every app whose web process the platform scales (a function) gets a target, so that its
 * invokes and idle grace reach the autoscaler even if no mapping points at it (a function
 * that only serves routed requests, or was only invoked). Remembered per app, so that routed
 * requests to apps scaled by their users cost no lookup. */
static void invoker_track_each(struct invoker *inv, const struct store_app *a)
{
    bool autoscaled = store_process_autoscaled(store_app_process(a, "web"));
    json_object_set_new(inv->app_kinds, a->guid, json_boolean(autoscaled));
    if (autoscaled) {
        char *ref = xasprintf("%s/%s", a->space_guid, a->name);
        struct inv_target *t = invoker_target_get(inv, ref, "web");
        free(ref);
        /* The same name may come back as a new app (deleted and pushed again). */
        snprintf(t->app_guid, sizeof(t->app_guid), "%s", a->guid);
    }
}

static void invoker_track_function(struct invoker *inv, const char *app_guid_or_name)
{
    struct store_app *a = NULL;
    if (store_app_get(inv->store, app_guid_or_name, &a) < 0)
        return;
    invoker_track_each(inv, a);
    store_app_free(a);
}

static int64_t target_idle_grace(struct inv_target *t)
{
    int64_t grace = -1;
    for (struct inv_mapping *m = t->inv->mappings; m; m = m->next)
        if (m->target == t && !m->deleted && (grace < 0 || m->spec.idle_grace_ms < grace))
            grace = m->spec.idle_grace_ms;
    return grace < 0 ? t->inv->idle_grace_ms : grace;
}

/* What a mapping is triggered by, for a message: "topic uploads", "schedule @hourly"... */
static void mapping_trigger_text(const struct mapping_spec *s, char *out, size_t size)
{
    if (s->trigger == MAPPING_SCHEDULE)
        snprintf(out, size, "schedule %s", s->schedule);
    else if (s->trigger == MAPPING_APP_EVENT)
        snprintf(out, size, "app event %s:%s", s->event_app ? s->event_app : "*", s->event_name);
    else
        snprintf(out, size, "topic %s", s->topic);
}

bool invoker_mappings_within(void *invoker, const char *space_guid, const char *app,
                             const char *process, int max, char *why, size_t whysize)
{
    struct invoker *inv = invoker;
    if (!inv || inv->stopping)
        return true;
    bool web = !strcmp(process, "web");
    char list[512] = "", first[40] = "";
    size_t n = 0, len = 0;
    int most = 0;
    for (struct inv_mapping *m = inv->mappings; m; m = m->next) {
        const struct mapping_spec *s = &m->spec;
        const char *sp = s->space ? s->space : SKIFF_DEFAULT_SPACE_GUID;
        if (!s->max_given || s->max_instances <= max || strcmp(sp, space_guid) ||
            strcmp(s->app, app) || strcmp(s->process ? s->process : "web", process))
            continue;
        if (n++ == 0)
            snprintf(first, sizeof first, "%.8s", s->id);
        most = s->max_instances > most ? s->max_instances : most;
        char trig[160];
        mapping_trigger_text(s, trig, sizeof trig);
        if (n <= 3 && len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s%.8s (%s, max_instances %d)",
                                    n > 1 ? ", " : "", s->id, trig, s->max_instances);
    }
    if (n == 0)
        return true;
    if (n > 3 && len < sizeof list)
        snprintf(list + len, sizeof list - len, " and %zu more", n - 3);
    snprintf(why, whysize,
             "%s event mapping%s of %s%s%s ask%s for more than %d instances: %s; lower %s first "
             "(`skiff unmap-event %s%s%s --id %s`, then map it again with --max-instances %d or "
             "fewer), or keep the policy's max at %d or more",
             n > 1 ? "these" : "the", n > 1 ? "s" : "", app, web ? "" : "/", web ? "" : process,
             n > 1 ? "" : "s", max, list, n > 1 ? "them" : "it", app, web ? "" : "/",
             web ? "" : process, first, max, most);
    return false;
}

bool invoker_work_of(void *invoker, const char *app_guid, const char *process,
                     struct invoker_work *out)
{
    struct invoker *inv = invoker;
    memset(out, 0, sizeof *out);
    if (!inv || inv->stopping)
        return false;
    bool found = false;
    for (struct inv_target *t = inv->targets; t; t = t->next) {
        if (strcmp(t->app_guid, app_guid) || strcmp(t->process, process))
            continue;
        uint64_t work;
        double load;
        int max;
        target_wanted(t, &work, &load, &max);
        out->load += load;
        out->average += work_meter_take_average(&t->work, uv_hrtime() / 1000);
        if (max > out->max_instances)
            out->max_instances = max;
        int64_t grace = target_idle_grace(t);
        if (!found || grace < out->idle_grace_ms)
            out->idle_grace_ms = grace;
        found = true;
    }
    return found;
}

void invoker_set_leading(struct invoker *inv, bool leading)
{
    if (leading && !invoker_consumes(inv) && !inv->stopping)
        invoker_mappings_sync(inv); /* counts from the last leader's last save, then on */
    bool was = invoker_consumes(inv);
    inv->following = !leading;
    if (was == invoker_consumes(inv) || inv->stopping)
        return;
    if (was) {
        /* another skiffd consumes now: what this one read goes to it again, unacknowledged
         * (deliveries in flight finish, their outcome moves no cursor) */
        for (struct inv_mapping *m = inv->mappings; m; m = m->next)
            if (!m->deleted) {
                mapping_drop_window(m);
                m->in_flight = 0;
                fabric_cursor_release(inv->fabric, m->topic, m->consumer);
            }
        return;
    }
    /* taking over a shared fabric: each mapping reads on from where the last leader's cursor
     * is, which the fabric's first read as the consumer finds; the replays asked while
     * another consumed are read at the next tick */
    inv->replays_stale = true;
    for (struct inv_mapping *m = inv->mappings; m; m = m->next)
        if (!m->deleted)
            mapping_pump(m);
}

void invoker_set_wake(struct invoker *inv, invoker_wake_fn fn, void *ctx)
{
    inv->wake = fn;
    inv->wake_ctx = ctx;
}

void invoker_note_traffic(void *invoker, const char *app_guid)
{
    struct invoker *inv = invoker;
    if (!inv || inv->stopping || !app_guid)
        return;
    if (!json_object_get(inv->app_kinds, app_guid))
        invoker_track_function(inv, app_guid);
}

/* ---- the tick: save counts, expire invokes ---------------------------------------------- */

static void invoker_tick(uv_timer_t *h)
{
    struct invoker *inv = h->data;
    int64_t now = time_now_ms();
    invoker_store_news(inv); /* should the feed's own watch have missed it */
    for (struct inv_target *t = inv->targets; t; t = t->next) {
        invoker_invokes_expire(t, now);
        /* A scale-up that could not be honoured yet is asked again. */
        if (t->instance_count < t->requested || t->last_error[0]) {
            uint64_t work;
            int wanted = target_wanted(t, &work, NULL, NULL);
            if (wanted > t->instance_count) {
                t->requested = t->instance_count;
                target_scale_up(t, wanted);
            }
        }
    }
    /* what the hub says at once (PLATFORM_PROCESS_REMOVED) is checked again every 5 s: an app
     * deleted by another controller has no hub here to tell */
    if (++inv->ticks % 5 == 0)
        invoker_mappings_prune(inv);
    if (inv->fabric && fabric_is_shared(inv->fabric) && invoker_consumes(inv))
        invoker_take_replays(inv);
    for (struct inv_mapping *m = inv->mappings; m; m = m->next) {
        if (m->stats_dirty && !m->deleted)
            mapping_persist(m);
        /* a suspended mapping whose grant holds again catches up without waiting for an
         * event to be published */
        if (m->suspended && !m->deleted)
            mapping_pump(m);
    }
}

/* ---- start and stop ------------------------------------------------------------------------- */

int invoker_start(const struct api_services *svc, struct fabric *fabric, struct invoker **out,
                  char *err, size_t errsize)
{
    struct invoker *inv = xcalloc(1, sizeof(*inv));
    inv->replays_stale = true; /* what was asked before this skiffd started */
    inv->loop = svc->loop;
    inv->fabric = fabric;
    inv->scheduler = svc->scheduler;
    inv->hub = svc->hub;
    inv->store = svc->store;
    inv->api = svc->api;
    inv->app_kinds = json_object();
    /* The idle grace of functions that no mapping sets (SKIFF_FUNCTION_IDLE_GRACE, "60s"). */
    inv->idle_grace_ms = INVOKER_DEFAULT_IDLE_GRACE_MS;
    const char *grace = getenv("SKIFF_FUNCTION_IDLE_GRACE");
    if (grace && *grace) {
        int64_t ms = trigger_parse_duration_ms(grace);
        if (ms < 1000) {
            snprintf(err, errsize,
                     "SKIFF_FUNCTION_IDLE_GRACE=%s is not a duration of at least 1s (e.g. 60s, "
                     "5m)",
                     grace);
            json_decref(inv->app_kinds);
            free(inv);
            return -EINVAL;
        }
        inv->idle_grace_ms = ms;
    }
    uv_timer_init(inv->loop, &inv->tick);
    inv->tick.data = inv;
    uv_timer_init(inv->loop, &inv->sync_timer);
    inv->sync_timer.data = inv;
    inv->open_handles = 2;
    uv_timer_start(&inv->tick, invoker_tick, 1000, 1000);
    uv_unref((uv_handle_t *)&inv->tick);
    if (inv->scheduler) {
        inv->sched_sub = hub_subscribe(svc->hub, invoker_on_platform_event, inv);
        scheduler_set_listens(inv->scheduler, invoker_process_listens, inv);
    }
    inv->doc_news = store_doc_news_kind(inv->store, MAPPING_DOC_KIND);
    store_doc_each(inv->store, MAPPING_DOC_KIND, mapping_load_doc, inv);
    struct store_app **apps = NULL;
    size_t napps = 0;
    if (store_app_list(inv->store, &apps, &napps) == 0) {
        for (size_t i = 0; i < napps; i++)
            invoker_track_each(inv, apps[i]);
        store_app_list_free(apps, napps);
    }
    invoker_routes_add(inv);
    *out = inv;
    return 0;
}

static void invoker_tick_closed(uv_handle_t *h)
{
    struct invoker *inv = h->data;
    inv->open_handles--;
    invoker_maybe_done(inv);
}

static void invoker_maybe_done(struct invoker *inv)
{
    if (!inv || !inv->stopping || inv->pending_ops > 0 || inv->open_handles > 0 || inv->mappings ||
        inv->draining)
        return;
    for (struct inv_target *t = inv->targets; t; t = t->next)
        for (struct inv_instance *i = t->instances; i; i = i->next)
            if (i->in_flight > 0)
                return;
    while (inv->targets) {
        struct inv_target *t = inv->targets;
        inv->targets = t->next;
        while (t->instances)
            target_instance_remove(t, t->instances, true);
        free(t->app);
        free(t->process);
        free(t);
    }
    void (*done)(void *) = inv->stop_done;
    void *arg = inv->stop_arg;
    json_decref(inv->app_kinds);
    inv_store_ops_orphan(inv);
    free(inv);
    if (done)
        done(arg);
}

void invoker_stop(struct invoker *inv, void (*done)(void *arg), void *arg)
{
    if (!inv) {
        if (done)
            done(arg);
        return;
    }
    inv->stop_done = done;
    inv->stop_arg = arg;
    for (struct inv_mapping *m = inv->mappings; m; m = m->next)
        if (!m->deleted && m->stats_dirty)
            mapping_persist(m);
    inv->stopping = true;
    hub_unsubscribe(inv->hub, inv->sched_sub);
    if (inv->scheduler)
        scheduler_set_listens(inv->scheduler, NULL, NULL);
    for (struct inv_target *t = inv->targets; t; t = t->next) {
        invoker_invokes_abort(t, "skiffd is stopping");
        /* Calls in flight end now; their events stay past the cursor. */
        while (t->instances)
            target_instance_remove(t, t->instances, true);
    }
    /* Instances that left with calls in flight: end those calls now. */
    while (inv->draining) {
        struct inv_instance *inst = inv->draining;
        http_pool_abort(inst->pool); /* the last callback frees it */
        if (inv->draining == inst) { /* no call was left after all */
            inv->draining = inst->next;
            instance_drain_release(inv, inst);
            http_pool_release(inst->pool, false);
            free(inst);
        }
    }
    struct inv_mapping *m = inv->mappings;
    while (m) {
        struct inv_mapping *next = m->next;
        if (!m->deleted) {
            m->deleted = true;
            if (m->sub)
                fabric_unsubscribe(m->sub);
            m->sub = NULL;
            mapping_drop_window(m);
            uv_close((uv_handle_t *)&m->retry_timer, mapping_handle_closed);
            uv_close((uv_handle_t *)&m->cron_timer, mapping_handle_closed);
            mapping_unref(m);
        }
        m = next;
    }
    uv_close((uv_handle_t *)&inv->tick, invoker_tick_closed);
    uv_close((uv_handle_t *)&inv->sync_timer, invoker_tick_closed);
}
