/* invoker: delivers the events of event mappings to function instances.
 *
 * An event mapping ties a trigger (a topic with attribute filters, a schedule, or platform
 * events of an app) to an app's process, with a delivery policy. Each mapping consumes its
 * topic through one durable fabric cursor: an event is acknowledged (the cursor moves past it)
 * only once the function answered 2xx (and its reply event, if any, is durable on the reply
 * topic), or once it went to the dead-letter topic, or was recorded as failed. Delivery is
 * therefore at-least-once: after a crash, events past the cursor are delivered again.
 *
 * Schedules publish one event per fire on the system topic `skiff.schedule.<mapping id>`. Fires
 * that fall while skiffd is down are made up once on start, for the latest time missed (the
 * event's `time` is that due time), as a Kubernetes CronJob does; the ones between are not
 * replayed. Platform events (app staged, started, stopped, crashed, scaled) go to
 * `skiff.app.<event>` with the app's name as subject; both are then delivered like any topic.
 *
 * The invoker decides no instance count: it reports its work to the autoscaler (src/autoscaler),
 * the one owner of scaling: invoker_work_of once a second (backlog and deliveries in flight as
 * the instances they ask for), and a wake (invoker_set_wake) at once when its work asks for more
 * instances than it has. With that work it reports how long it keeps a process up once idle:
 * the mappings' idle grace (the shortest), else $SKIFF_FUNCTION_IDLE_GRACE (60s); the
 * autoscaler takes it as the stable window of a policy that sets none.
 *
 * The delivery policy, mapping specs and the work meter (first three sections) are pure: no I/O,
 * no clock (the caller gives the time). */
#ifndef SKIFF_INVOKER_H
#define SKIFF_INVOKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- delivery policy ----------------------------------------------------------------- */

#define INVOKER_DEFAULT_RETRIES 10
#define INVOKER_DEFAULT_BACKOFF_MS 200
#define INVOKER_DEFAULT_BACKOFF_CAP_MS 60000
#define INVOKER_DEFAULT_MAX_AGE_MS ((int64_t)24 * 3600 * 1000)
#define INVOKER_DEFAULT_CONCURRENCY 1

struct delivery_policy {
    int retries;        /* retries after the first attempt; 0: one attempt only */
    int64_t backoff_ms; /* delay before the first retry; doubles each retry */
    int64_t backoff_cap_ms;
    int64_t max_age_ms; /* an event older than this (from its publish time) is not retried */
    int concurrency;    /* events in flight per instance */
    bool ordered;       /* one event at a time per subject, in offset order */
};

/* Fills the documented defaults. */
void delivery_policy_default(struct delivery_policy *p);

/* The delay before retry number `retry` (1 = the first retry): backoff_ms * 2^(retry-1),
 * never more than backoff_cap_ms. */
int64_t delivery_backoff_ms(const struct delivery_policy *p, int retry);

enum delivery_verdict {
    DELIVERY_ACK,   /* done: commit past it */
    DELIVERY_RETRY, /* try again after delivery_backoff_ms() */
    DELIVERY_DEAD,  /* do not retry: dead-letter topic, or recorded as failed */
};

/* What an HTTP status means for an event: 2xx acknowledges; 5xx, 408, 409 and 429 may be
 * retried; every other status (other 4xx, 1xx, 3xx) is final. status 0 is a network error
 * (connect refused, reset, timeout), which may be retried. */
enum delivery_verdict delivery_classify_status(int status);

/* The verdict for a failed attempt, taking the policy into account: `failed_attempts`
 * attempts have failed so far (including this one), the event was published at
 * published_ms and it is now now_ms. RETRY only when the status is retryable, the retry
 * budget is not spent, and the event will still be younger than max_age when the retry
 * runs. */
enum delivery_verdict delivery_after_failure(const struct delivery_policy *p, int status,
                                             int failed_attempts, int64_t published_ms,
                                             int64_t now_ms);

/* ---- mapping specs ------------------------------------------------------------------- */

#include <jansson.h>

#include "common/err.h"
#include "trigger/trigger.h"

#define INVOKER_MAX_FILTERS 16
#define INVOKER_DEFAULT_MAX_INSTANCES 10
#define INVOKER_DEFAULT_IDLE_GRACE_MS 60000

enum mapping_trigger {
    MAPPING_TOPIC,     /* events published on a topic */
    MAPPING_SCHEDULE,  /* cron or @every */
    MAPPING_APP_EVENT, /* platform events of an app (or of every app) */
};

#define MAPPING_GRANT_LOCAL_ADMIN "local-admin"

/* What a user asked for: everything in the API's mapping object except counts. */
struct mapping_spec {
    char id[37];
    char *space;   /* the space's guid (apps and topics are named in it); NULL: the default */
    char *app;     /* target app name */
    char *process; /* its process type; "web" unless given */
    enum mapping_trigger trigger;
    char *topic;      /* the topic consumed (for schedules and app events: the system topic) */
    /* MAPPING_TOPIC of another space: its guid (NULL: the mapping's own space). The API sets
     * it from topic_space_ref, after checking the caller may read events there. */
    char *topic_space;
    char *topic_space_ref; /* "ORG/SPACE" as the body named it ("topic": "ORG/SPACE/NAME") */
    /* With topic_space: the guid of the user whose right to read there the mapping stands on
     * (MAPPING_GRANT_LOCAL_ADMIN for the local admin token). Checked while it runs: once that
     * user may no longer read events there, the mapping stops consuming. Set by the API. */
    char *granted_by;
    char *schedule;   /* MAPPING_SCHEDULE: the spec as written */
    char *event_app;  /* MAPPING_APP_EVENT: the app watched, NULL for every app */
    char *event_name; /* MAPPING_APP_EVENT: staged, started, stopped, crashed, scaled */
    struct event_filter filters[INVOKER_MAX_FILTERS];
    size_t filter_count;
    struct delivery_policy policy;
    char *dead_letter_topic; /* NULL: exhausted events are recorded as failed */
    char *reply_topic;       /* NULL: replies are dropped */
    int max_instances;
    /* max_instances was asked for (the body named it), not the default: only then does it
     * bound the process's autoscale policy from below (invoker_mappings_within) */
    bool max_given;
    int64_t idle_grace_ms;
    bool start_at_beginning; /* a new cursor starts at the topic's first event, not its end */
    int64_t created_at;
};

/* Builds a spec from the API's request body (see docs/api.md, event mappings). On a bad
 * body returns TRIGGER_EINVAL with a message naming the field and what is accepted; *code
 * receives SKIFF_E_UNKNOWN_FIELD, SKIFF_E_BAD_JSON or SKIFF_E_INVALID_VALUE. The id is generated
 * unless the body has one. */
int mapping_spec_from_json(json_t *body, struct mapping_spec *out, enum skiff_err *code, char *err,
                           size_t errsize);
/* The JSON form (new reference) that mapping_spec_from_json reads back. */
json_t *mapping_spec_to_json(const struct mapping_spec *spec);
/* How the store and the scheduler name the mapping's app: "SPACE_GUID/NAME" (caller frees). */
char *mapping_app_ref(const struct mapping_spec *spec);
void mapping_spec_free(struct mapping_spec *spec);

/* ---- the work meter ------------------------------------------------------------------ */

/* The time integral of a target's work (instances' worth: backlog and deliveries in flight over
 * the concurrency per instance) between two reads, as the routers keep their requests in flight
 * (src/router/route_stats.c): the autoscaler's sample is the average over the second, so a
 * burst of short deliveries weighs what it lasted, not what it peaked at. */
struct work_meter {
    double level;        /* instances' worth since changed_us */
    uint64_t changed_us; /* when level was last set (0: never) */
    double integral;     /* instance-microseconds since read_us */
    uint64_t read_us;    /* the last read (0: never; the first set starts the span) */
};
/* The work is `level` from now_us on. A clock that goes back counts nothing for the step. */
void work_meter_set(struct work_meter *wm, double level, uint64_t now_us);
/* The average level since the previous read (or the first set), and starts the next span. A
 * span of zero length reads as the level now. */
double work_meter_take_average(struct work_meter *wm, uint64_t now_us);

/* ---- the delivery engine ----------------------------------------------------------- */

struct api_services;
struct fabric;
struct invoker;

/* Starts delivery inside skiffd: loads the mappings kept in the store (documents of kind
 * "event_mapping"), opens their cursors, subscribes to the fabric and to the hub's platform
 * events (svc->hub), and adds the API routes (event mappings, replay, invoke, GET /metrics).
 * skiffd starts it once the fabric is open (api_events_fabric). A negative errno and a message
 * in err when it cannot start; nothing is left running then. */
int invoker_start(const struct api_services *svc, struct fabric *fabric, struct invoker **out,
                  char *err, size_t errsize);
/* Stops delivery: no new attempt starts, attempts in flight are abandoned (their events stay
 * past the cursor and are delivered again after a restart), pending appends and cursor commits
 * finish. done (may be NULL) runs on the loop when everything is closed and the invoker is
 * freed; the fabric may be closed after that. NULL is stopped at once. */
void invoker_stop(struct invoker *inv, void (*done)(void *arg), void *arg);

/* An HTTP request reached the app (by guid) through the router: a function the invoker does
 * not know yet gets its target. invoker is a struct invoker (void so that the bus takes it as
 * its traffic callback). A no-op while it stops. Cheap: called once per proxied request. */
void invoker_note_traffic(void *invoker, const char *app_guid);

/* The event work of one process, as the autoscaler reads it. */
struct invoker_work {
    double load;           /* instances' worth: (backlog + in flight) / concurrency, now */
    double average;        /* the same averaged over the time since the previous report (the
                              work meter's integral): what the windows sample */
    int max_instances;     /* the most its mappings allow (0: no mapping) */
    int64_t idle_grace_ms; /* how long it keeps the process up once idle */
};
/* Fills the work of (app_guid, process) and starts the next report's span; false when the
 * invoker delivers nothing to it (no mapping, not a function). invoker is a struct invoker. */
bool invoker_work_of(void *invoker, const char *app_guid, const char *process,
                     struct invoker_work *out);
/* Called when the work of (app_guid, process) asks for `wanted` instances, more than it has:
 * 0 with the count it runs now (at most what its policy allows) in *running, or an error of
 * common/err.h (SKIFF_E_APP_STOPPED, SKIFF_E_NOT_STAGED, -ENOENT: no such app or process). */
typedef int (*invoker_wake_fn)(void *ctx, const char *app_guid, const char *process, int wanted,
                               int *running);
/* Whether a scaling policy of at most max instances for APP's process (in space_guid) leaves
 * every mapping's explicit max_instances whole. When not, false with why naming the mappings
 * that ask for more and what to do. A NULL or stopping invoker admits anything. */
bool invoker_mappings_within(void *invoker, const char *space_guid, const char *app,
                             const char *process, int max, char *why, size_t whysize);
void invoker_set_wake(struct invoker *inv, invoker_wake_fn fn, void *ctx);
/* Whether this skiffd fires schedules (true at start). Several skiffds on one store load the
 * same mappings; only the one that leads (src/daemon/leader.h) publishes their fires, and a
 * fire that comes due while no skiffd leads is not made up. */
void invoker_set_leading(struct invoker *inv, bool leading);
/* Another writer may have changed the store (skiffd's watch of its change feed): when the
 * store says mapping documents changed (store_doc_news_kind), the mappings are read again within
 * milliseconds, and those made, changed or deleted through another skiffd are started,
 * started again or stopped here. The invoker also checks once a second by itself. NULL and a
 * stopping invoker are fine. */
void invoker_store_news(struct invoker *inv);

#endif
