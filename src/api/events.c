/* events: the publishing and reading side of the events API (docs/api.md, "Events").
 *
 * Owns the daemon's fabric ($SKIFF_HOME/fabric). Publishing answers 202 only from the
 * fabric's durability callback, so a client that saw 202 knows its event survives a crash.
 * Reading streams ndjson, and `follow=1` keeps the stream open, woken by the fabric's
 * subscription the moment new events are durable (no polling). */
#include "api/api.h"
#include "api/core.h"
#include "fabric/cloudevents.h"
#include "fabric/fabric.h"
#include "store/store.h"
#include "trigger/trigger.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"

/* A follower with this much unsent output stops reading until the client catches up. */
#define TAIL_PENDING_MAX (4u << 20)
#define TAIL_READ_RECORDS 1000
#define TAIL_READ_BYTES (1u << 20)
#define BATCH_MAX_EVENTS 10000
/* Default retention per topic: a week, or 1 GiB, whichever is reached first (the oldest events
 * go). Mappings give up on events older than a day by default, so a week leaves room for
 * replays. */
#define RETENTION_MAX_AGE_MS ((int64_t)7 * 24 * 3600 * 1000)
#define RETENTION_MAX_BYTES ((int64_t)1 << 30)
/* one encoded event at the most (the fabric's default, stated here so errors can name it) */
#define EVENTS_MAX_RECORD_BYTES (1u << 20)

struct tail {
    struct tail *next, **prevp;
    struct api_request *req;
    char topic[FABRIC_TOPIC_MAX + 1];
    uint64_t next_offset;
    int64_t limit; /* events left to send; < 0: no limit */
    bool follow;
    bool throttled;
    struct fabric_sub *sub;
    struct api_events *events;
};

/* The events component: made by api_events_start, passed to its handlers as their ctx. */
struct api_events {
    struct fabric *fabric;
    struct api *api;
    struct store *store;
    uv_loop_t *loop;
    struct tail *tails;
    uv_timer_t throttle_timer;
    bool stopping;
    void (*stop_done)(void *arg);
    void *stop_arg;
};

/* ---- errors ------------------------------------------------------------------------------- */

/* The answer to a fabric's error: its status from the one table, its words from the fabric
 * (fabric_strerror), with what only the API knows: the encoded size limit, that the names a
 * request gives are in its path (so a name the fabric refuses is a 400), and that passing
 * pressure (busy) is worth a retry a moment later. */
static void respond_fabric_error(struct api_request *req, int rc)
{
    if (rc == -EMSGSIZE) {
        api_respond_error(req, rc,
                          "the event is larger than the limit of %u bytes once encoded: make it "
                          "smaller (for large data, publish where the data is kept instead)",
                          EVENTS_MAX_RECORD_BYTES);
        return;
    }
    if (skiff_err_from(rc) == SKIFF_E_BUSY)
        api_response_header(req, "Retry-After", "1");
    api_respond_error(req, rc == -EINVAL ? SKIFF_E_BAD_NAME : rc, "%s", fabric_strerror(rc));
}

/* The fabric's name of the request's topic: NAME in the request's space, or ORG/SPACE/NAME
 * in another space where the caller's roles allow perm (publishing, or reading events).
 * Answers the request and returns false when the name is bad or the space out of reach. */
static bool scoped_topic(struct api_request *req, enum auth_perm perm,
                         char out[FABRIC_TOPIC_MAX + 1])
{
    const char *param = api_request_param(req, 0);
    const char *name = param ? strrchr(param, '/') : NULL;
    name = name ? name + 1 : param;
    const char *space = api_request_space(req);
    struct auth *auth = api_request_auth(req);
    bool valid = name && (perm == AUTH_PERM_PUBLISH ? name_valid(name) : fabric_name_valid(name));
    if (!valid) {
        api_respond_error(req, SKIFF_E_BAD_NAME,
                          "topic name '%.80s' is not valid: use 1-63 of a-z, 0-9 and '-', "
                          "starting with a letter or digit (ORG/SPACE/NAME for another "
                          "space's)",
                          param ? param : "");
        return false;
    }
    if (name != param) {
        /* another space's topic: only where the caller's roles there allow it */
        char ref[2 * 64 + 2];
        size_t n = (size_t)(name - 1 - param);
        snprintf(ref, sizeof ref, "%.*s", (int)(n < sizeof ref ? n : sizeof ref - 1), param);
        const struct auth_space *other = auth ? auth_space_resolve(auth, ref) : NULL;
        int rc =
            other ? auth_check(auth, api_request_principal(req), perm, other->org_guid, other->guid)
                  : -ENOENT;
        if (rc == -EACCES) {
            api_respond_error(req, SKIFF_E_FORBIDDEN, "your roles in %s do not allow %s there", ref,
                              perm == AUTH_PERM_PUBLISH ? "publishing" : "reading events");
            return false;
        }
        if (rc < 0) {
            api_respond_error(req, SKIFF_E_NOT_FOUND, "no space %s that you can see", ref);
            return false;
        }
        space = other->guid;
    }
    const char *limit = api_request_topic_limit(req);
    if (limit && (name != param || strcmp(name, limit))) {
        api_respond_error(req, SKIFF_E_FORBIDDEN,
                          "this service binding's token publishes to its topic %s only", limit);
        return false;
    }
    if (fabric_topic_scoped(space, name, out, FABRIC_TOPIC_MAX + 1) < 0) {
        api_respond_error(req, SKIFF_E_BAD_NAME, "topic name '%.80s' is too long", name);
        return false;
    }
    return true;
}

/* Who published: "/apps/NAME" for an instance, "/skiff/api" for the admin. The source of
 * every event an instance publishes, whatever it says (one app cannot speak for another), and
 * of the admin's events published without one. */
static void caller_source(struct api_request *req, char *out, size_t size)
{
    const char *name = api_request_caller_name(req);
    const char *limit = api_request_topic_limit(req);
    if (name)
        snprintf(out, size, "/apps/%s", name);
    else if (limit)
        snprintf(out, size, "/services/%s", limit);
    else
        snprintf(out, size, "/skiff/api");
}

/* ---- publishing one event ----------------------------------------------------------------- */

struct publish {
    struct api_request *req;
    char *id;
    /* batch: the ids, in order */
    char **ids;
    size_t count;
};

static void publish_free(struct publish *p)
{
    free(p->id);
    for (size_t i = 0; i < p->count; i++)
        free(p->ids[i]);
    free(p->ids);
    free(p);
}

/* The 202 of a publish: {"id","offset"} for one event; for a batch its count, first_offset and
 * each event's id and offset. Written straight into the answer: on the path of every publish,
 * where building a JSON tree to print it would cost more than the rest of the answer. */
static void respond_published(struct publish *p, uint64_t first, size_t count)
{
    struct buf out = {0};
    if (p->ids) {
        buf_printf(&out, "{\"count\":%zu,\"first_offset\":%" PRIu64 ",\"events\":[", count, first);
        for (size_t i = 0; i < count; i++) {
            buf_puts(&out, i ? ",{\"id\":\"" : "{\"id\":\"");
            buf_append_json_escaped(&out, p->ids[i], strlen(p->ids[i]), 0);
            buf_printf(&out, "\",\"offset\":%" PRIu64 "}", first + i);
        }
        buf_puts(&out, "]}\n");
    } else {
        buf_puts(&out, "{\"id\":\"");
        buf_append_json_escaped(&out, p->id, strlen(p->id), 0);
        buf_puts(&out, "\",\"offset\":");
        buf_put_uint(&out, first);
        buf_puts(&out, "}\n");
    }
    api_respond(p->req, 202, "application/json", out.data, out.len);
    buf_free(&out);
}

static void on_published(void *arg, int status, uint64_t first, size_t count)
{
    struct publish *p = arg;
    if (status < 0)
        respond_fabric_error(p->req, status);
    else
        respond_published(p, first, count);
    publish_free(p);
}

static void handle_publish(struct api_request *req, void *ctx)
{
    struct api_events *events = ctx;
    char topic[FABRIC_TOPIC_MAX + 1];
    if (!scoped_topic(req, AUTH_PERM_PUBLISH, topic))
        return;
    struct cloudevent_headers headers = {.count = 0};
    api_request_headers_each(req, cloudevent_headers_add, &headers);
    size_t len = 0;
    const char *body = api_request_body(req, &len);
    char source[128] = "", err[256];
    caller_source(req, source, sizeof(source));
    struct cloudevent ev;
    int rc = cloudevent_from_request(&headers, body, len, source, &ev, err, sizeof(err));
    if (rc < 0) {
        api_respond_error(req, strstr(err, "JSON") ? SKIFF_E_BAD_JSON : SKIFF_E_BAD_EVENT, "%s",
                          err);
        return;
    }
    if (api_request_caller_app(req) || api_request_topic_limit(req))
        ev.source = source;
    struct buf rec = {0};
    buf_reserve(&rec, len + 512); /* the attributes and the data: one allocation, no regrowth */
    cloudevent_encode_record(&ev, &rec);
    struct publish *p = xcalloc(1, sizeof(*p));
    p->req = req;
    p->id = xstrdup(ev.id);
    cloudevent_free(&ev);
    struct fabric_blob blob = {rec.data, rec.len};
    rc = fabric_append(events->fabric, topic, &blob, 1, on_published, p, NULL);
    buf_free(&rec);
    if (rc < 0) {
        respond_fabric_error(req, rc);
        publish_free(p);
    }
}

/* ---- publishing a batch ------------------------------------------------------------------- */

static void handle_publish_batch(struct api_request *req, void *ctx)
{
    struct api_events *events = ctx;
    char topic[FABRIC_TOPIC_MAX + 1];
    if (!scoped_topic(req, AUTH_PERM_PUBLISH, topic))
        return;
    size_t len = 0;
    const char *body = api_request_body(req, &len);
    struct cloudevent *evs = NULL;
    size_t n = 0;
    char err[256];
    int rc =
        cloudevent_batch_from_json_text(body, len, BATCH_MAX_EVENTS, &evs, &n, err, sizeof(err));
    if (rc < 0) {
        api_respond_error(req,
                          rc == -EBADMSG  ? SKIFF_E_BAD_JSON
                          : rc == -ERANGE ? SKIFF_E_BAD_VALUE
                                          : SKIFF_E_BAD_EVENT,
                          "%s", err);
        return;
    }
    struct publish *p = xcalloc(1, sizeof(*p));
    p->req = req;
    p->ids = xcalloc(n, sizeof(*p->ids));
    size_t *ends = xcalloc(n, sizeof(*ends));
    struct fabric_blob *blobs = xcalloc(n, sizeof(*blobs));
    struct buf recs = {0};
    char source[128];
    caller_source(req, source, sizeof(source));
    bool by_app = api_request_caller_app(req) || api_request_topic_limit(req);
    for (size_t i = 0; i < n; i++) {
        if (by_app)
            evs[i].source = source;
        p->ids[p->count++] = xstrdup(evs[i].id);
        cloudevent_encode_record(&evs[i], &recs);
        ends[i] = recs.len;
    }
    cloudevent_batch_free(evs, n);
    for (size_t i = 0; i < n; i++) {
        size_t start = i ? ends[i - 1] : 0;
        blobs[i] = (struct fabric_blob){recs.data + start, ends[i] - start};
    }
    rc = fabric_append(events->fabric, topic, blobs, n, on_published, p, NULL);
    if (rc < 0) {
        respond_fabric_error(req, rc);
        publish_free(p);
    }
    buf_free(&recs);
    free(blobs);
    free(ends);
}

/* ---- listing topics ----------------------------------------------------------------------- */

static void handle_topics(struct api_request *req, void *ctx)
{
    struct api_events *events = ctx;
    struct fabric_topic_info *list;
    size_t n;
    int rc = fabric_topics(events->fabric, &list, &n);
    if (rc < 0) {
        respond_fabric_error(req, rc);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        /* the space's own topics, by their names there */
        const char *name = fabric_topic_unscoped(api_request_space(req), list[i].name);
        if (!name)
            continue;
        json_t *t = json_pack("{s:s, s:I, s:I, s:I}", "name", name, "events",
                              (json_int_t)list[i].records, "bytes", (json_int_t)list[i].bytes,
                              "first_offset", (json_int_t)list[i].first_offset);
        json_object_set_new(t, "last_offset",
                            list[i].records ? json_integer((json_int_t)list[i].end_offset - 1)
                                            : json_null());
        if (list[i].last_time_ms) {
            char when[40];
            time_format_rfc3339(list[i].last_time_ms, when, sizeof(when));
            json_object_set_new(t, "last_event_at", json_string(when));
        }
        json_array_append_new(arr, t);
    }
    free(list);
    api_respond_json(req, 200, json_pack("{s:o}", "topics", arr));
}

/* ---- reading and following ---------------------------------------------------------------- */

static void tail_finish(struct tail *t)
{
    if (t->sub)
        fabric_unsubscribe(t->sub);
    *t->prevp = t->next;
    if (t->next)
        t->next->prevp = t->prevp;
    api_stream_end(t->req);
    free(t);
}

static void on_tail_notify(void *arg, const char *topic, uint64_t end);

/* Sends what is durable from t->next_offset on; finishes a non-following read at the end. */
static void tail_pump(struct tail *t)
{
    struct buf line = {0};
    for (;;) {
        if (api_request_aborted(t->req)) {
            tail_finish(t);
            goto out;
        }
        if (t->limit == 0) {
            tail_finish(t);
            goto out;
        }
        if (api_stream_pending(t->req) > TAIL_PENDING_MAX) {
            t->throttled = true;
            goto out;
        }
        size_t want = TAIL_READ_RECORDS;
        if (t->limit > 0 && (int64_t)want > t->limit)
            want = (size_t)t->limit;
        struct fabric_batch b;
        int rc =
            fabric_read(t->events->fabric, t->topic, t->next_offset, want, TAIL_READ_BYTES, &b);
        if (rc == -ENOENT && t->follow)
            goto out; /* not created yet: the subscription wakes us */
        if (rc == -EAGAIN) {
            /* fetched off the loop (JetStream): the topic's subscribers hear when it is here */
            if (!t->sub &&
                fabric_subscribe(t->events->fabric, t->topic, on_tail_notify, t, &t->sub) < 0)
                tail_finish(t);
            goto out;
        }
        if (rc < 0 || b.count == 0) {
            fabric_batch_free(&b);
            if (rc < 0 || !t->follow)
                tail_finish(t);
            goto out;
        }
        buf_reset(&line);
        for (size_t i = 0; i < b.count; i++) {
            struct cloudevent ev;
            json_t *j;
            if (cloudevent_decode_record(b.records[i].data, b.records[i].len, &ev) == 0) {
                j = cloudevent_to_json(&ev);
            } else {
                j = json_object(); /* written by something else than the publish API */
                json_object_set_new(j, "data", json_stringn(b.records[i].data, b.records[i].len));
            }
            json_object_set_new(j, "offset", json_integer((json_int_t)b.records[i].offset));
            char *text = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
            json_decref(j);
            if (text) {
                buf_puts(&line, text);
                buf_putc(&line, '\n');
                free(text);
            }
        }
        t->next_offset = b.next_offset;
        if (t->limit > 0)
            t->limit -= (int64_t)b.count;
        fabric_batch_free(&b);
        if (api_stream_write(t->req, line.data, line.len) < 0) {
            tail_finish(t);
            goto out;
        }
    }
out:
    buf_free(&line);
}

static void on_tail_notify(void *arg, const char *topic, uint64_t end)
{
    struct tail *t = arg;
    if (!t->throttled)
        tail_pump(t);
}

static void on_tail_abort(void *ctx)
{
    struct tail *t = ctx;
    tail_finish(t);
}

static void on_throttle_timer(uv_timer_t *h)
{
    struct api_events *events = h->data;
    for (struct tail *t = events->tails, *next; t; t = next) {
        next = t->next;
        if (t->throttled && api_stream_pending(t->req) < TAIL_PENDING_MAX / 2) {
            t->throttled = false;
            tail_pump(t);
        }
    }
}

/* Where a read starts: "start", "end", an offset, an RFC 3339 time or a duration ago. Returns
 * 0 with *out set, 1 when it answered the request, 2 when the fabric searches the topic for the
 * time (fabric_seek_time: cb is called with t as its argument, and starts the read), or a
 * negative errno. */
static int parse_from(struct api_events *events, struct api_request *req, const char *topic,
                      const char *from, bool follow, uint64_t *out, fabric_seek_cb cb, void *arg)
{
    struct fabric_topic_info info;
    int rc = fabric_topic_info(events->fabric, topic, &info);
    if (rc == -ENOENT) {
        *out = 0; /* a topic made later starts at 0 */
        return 0;
    }
    if (rc < 0)
        return rc;
    if (!from || !*from)
        from = follow ? "end" : "start";
    if (!strcmp(from, "end")) {
        *out = info.end_offset;
        return 0;
    }
    if (!strcmp(from, "start") || !strcmp(from, "beginning")) {
        *out = info.first_offset;
        return 0;
    }
    bool is_offset = false;
    int64_t time_ms = 0;
    char err[256];
    if (trigger_parse_since(from, time_now_ms(), &is_offset, out, &time_ms, err, sizeof(err)) < 0) {
        api_respond_error(req, SKIFF_E_BAD_VALUE,
                          "from=%.60s is not understood: use start, end, an offset, an RFC 3339 "
                          "time or a duration such as 10m",
                          from);
        return 1;
    }
    if (is_offset)
        return 0;
    rc = fabric_seek_time(events->fabric, topic, time_ms, cb, arg);
    return rc < 0 ? rc : 2;
}

/* Starts sending the events of a read whose first offset is known. */
static void tail_begin(struct tail *t)
{
    struct api_events *events = t->events;
    t->next = events->tails;
    if (t->next)
        t->next->prevp = &t->next;
    t->prevp = &events->tails;
    events->tails = t;
    api_stream_begin(t->req, 200, "application/x-ndjson");
    if (t->follow && fabric_subscribe(events->fabric, t->topic, on_tail_notify, t, &t->sub) < 0) {
        tail_finish(t);
        return;
    }
    api_request_on_abort(t->req, on_tail_abort, t);
    tail_pump(t);
}

/* A read from a time: the fabric found where it starts (on JetStream after the loop went on
 * with other requests meanwhile; the request stays valid until answered, see api.h). */
static void on_read_seek(void *arg, int status, uint64_t offset)
{
    struct tail *t = arg;
    if (status == 0 && t->events->stopping)
        status = -ECANCELED;
    if (status == 0 && api_request_aborted(t->req))
        status = -ECONNRESET; /* the client left while it was searched: nothing to send */
    if (status < 0) {
        respond_fabric_error(t->req, status);
        free(t);
        return;
    }
    t->next_offset = offset;
    tail_begin(t);
}

static void handle_read(struct api_request *req, void *ctx)
{
    struct api_events *events = ctx;
    char topic[FABRIC_TOPIC_MAX + 1];
    if (!scoped_topic(req, AUTH_PERM_SPACE_LOGS, topic))
        return;
    const char *follow_s = api_request_query(req, "follow");
    bool follow = follow_s && strcmp(follow_s, "0") && strcmp(follow_s, "false");
    int64_t limit = -1;
    const char *limit_s = api_request_query(req, "limit");
    if (limit_s) {
        char *end;
        long long v = strtoll(limit_s, &end, 10);
        if (*end || v < 0) {
            api_respond_error(req, SKIFF_E_BAD_VALUE, "limit=%.40s is not a whole number of events",
                              limit_s);
            return;
        }
        limit = v;
    }
    struct fabric_topic_info info;
    if (!follow && fabric_topic_info(events->fabric, topic, &info) == -ENOENT) {
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "topic '%s' not found: publish to it first, or see `skiff topics`",
                          topic);
        return;
    }
    struct tail *t = xcalloc(1, sizeof(*t));
    t->events = events;
    t->req = req;
    snprintf(t->topic, sizeof(t->topic), "%s", topic);
    t->limit = limit;
    t->follow = follow;
    int rc = parse_from(events, req, topic, api_request_query(req, "from"), follow, &t->next_offset,
                        on_read_seek, t);
    if (rc == 2)
        return; /* on_read_seek goes on (it may have already) */
    if (rc == 0) {
        tail_begin(t);
        return;
    }
    if (rc < 0)
        respond_fabric_error(req, rc);
    free(t); /* answered */
}

/* ---- start and stop ----------------------------------------------------------------------- */

static void on_start_failed_closed(uv_handle_t *h)
{
    free(h->data);
}

int api_events_start(const struct api_services *svc, struct api_events **out, char *err,
                     size_t errsize)
{
    struct api_events *events = xcalloc(1, sizeof *events);
    events->api = svc->api;
    events->store = svc->store;
    events->loop = svc->loop;
    char *dir = xasprintf("%s/fabric", svc->home);
    struct fabric_config cfg = {
        .dir = dir,
        .retention = {.max_age_ms = RETENTION_MAX_AGE_MS, .max_bytes = RETENTION_MAX_BYTES},
        .max_record_bytes = EVENTS_MAX_RECORD_BYTES,
        .nats_url = svc->nats_url,
        .nats_replicas = svc->nats_replicas,
        .nats_security = svc->nats_security,
    };
    int rc = fabric_open(svc->loop, &cfg, &events->fabric, err, errsize);
    free(dir);
    if (rc < 0) {
        free(events);
        return rc;
    }
    uv_timer_init(svc->loop, &events->throttle_timer);
    events->throttle_timer.data = events;
    uv_timer_start(&events->throttle_timer, on_throttle_timer, 50, 50);
    uv_unref((uv_handle_t *)&events->throttle_timer);

    struct {
        const char *method, *pattern;
        int flags;
        api_handler_fn fn;
    } routes[] = {
        {"POST", "/v1/topics/*/events", API_PERM(AUTH_PERM_PUBLISH) | API_SCOPE_SPACE,
         handle_publish},
        {"POST", "/v1/topics/*/events:batch", API_PERM(AUTH_PERM_PUBLISH) | API_SCOPE_SPACE,
         handle_publish_batch},
        {"GET", "/v1/topics", API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_SPACE, handle_topics},
        {"GET", "/v1/topics/*/events", API_PERM(AUTH_PERM_SPACE_LOGS) | API_SCOPE_SPACE,
         handle_read},
    };
    for (size_t i = 0; i < ARRAY_SIZE(routes); i++) {
        rc = api_route_add(svc->api, routes[i].method, routes[i].pattern, routes[i].flags,
                           routes[i].fn, events);
        if (rc < 0) {
            snprintf(err, errsize, "cannot add route %s %s", routes[i].method, routes[i].pattern);
            goto fail;
        }
    }
    *out = events;
    return 0;
fail:
    /* skiffd stops when this fails: its routes are never served */
    fabric_close(events->fabric, NULL, NULL);
    uv_close((uv_handle_t *)&events->throttle_timer, on_start_failed_closed);
    return rc;
}

static void on_timer_closed(uv_handle_t *h)
{
    struct api_events *events = h->data;
    void (*done)(void *) = events->stop_done;
    void *arg = events->stop_arg;
    free(events);
    if (done)
        done(arg);
}

static void on_fabric_closed(void *arg)
{
    struct api_events *events = arg;
    events->fabric = NULL;
    uv_close((uv_handle_t *)&events->throttle_timer, on_timer_closed);
}

struct fabric *api_events_fabric(struct api_events *events)
{
    return events->fabric;
}

void api_events_stop(struct api_events *events, void (*done)(void *arg), void *arg)
{
    if (!events) {
        if (done)
            done(arg);
        return;
    }
    if (events->stopping)
        return;
    events->stopping = true;
    events->stop_done = done;
    events->stop_arg = arg;
    while (events->tails)
        tail_finish(events->tails);
    fabric_close(events->fabric, on_fabric_closed, events);
}
