/* Internal to src/invoker: the delivery engine's state, shared by invoker.c (delivery,
 * scaling, triggers) and routes.c (the HTTP API and metrics). */
#ifndef SKIFF_INVOKER_INTERNAL_H
#define SKIFF_INVOKER_INTERNAL_H

#include <jansson.h>
#include <uv.h>

#include "common/buf.h"
#include "common/util.h"
#include "fabric/cloudevents.h"
#include "fabric/fabric.h"
#include "http/client.h"
#include "invoker/invoker.h"
#include "store/store.h"

struct api;
struct api_request;
struct fabric;
struct fabric_sub;
struct scheduler;
struct store;

/* How long a delivery may take before it counts as a network error (retried). */
#define INVOKER_DELIVERY_TIMEOUT_MS 60000
/* How long `skiff invoke` waits for an instance to become ready (scale from zero). */
#define INVOKER_INVOKE_WAIT_MS 60000
/* Failures kept per mapping for `skiff event-mappings` (the oldest go first). */
#define INVOKER_FAILURES_KEPT 20

struct inv_instance {
    char guid[37];
    char addr[64];
    struct http_pool *pool;
    int in_flight;
    bool gone; /* left its target with calls in flight: on invoker.draining until they end */
    uint64_t drain_id; /* gone and held by the scheduler's drain until its calls end; 0: not */
    struct inv_instance *next;
};

struct inv_invoke;

/* An app's process that events are delivered to; shared by the mappings and invokes aimed at
 * it, so that its scale follows all of its work. */
struct inv_target {
    struct invoker *inv;
    char *app;
    char *process;
    char app_guid[37];
    struct inv_instance *instances;
    int instance_count;
    int requested;   /* the instance count the autoscaler last gave its work */
    /* its work (instances' worth, at most its max) integrated over time since the autoscaler's
     * last look: set wherever the work is counted (target_wanted) */
    struct work_meter work;
    int invokes_waiting;
    struct inv_invoke *waiting; /* invokes waiting for an instance, oldest first */
    /* where the next waiting invoke goes: the last one's `next`, valid while waiting is not
     * NULL (so queueing is O(1), not a walk) */
    struct inv_invoke **waiting_tail;
    int invokes_in_flight;
    char last_error[256]; /* why it cannot scale or run ("" when fine) */
    struct inv_target *next;
};

enum inv_slot_state {
    SLOT_PENDING,    /* to be delivered */
    SLOT_IN_FLIGHT,  /* a delivery attempt is under way */
    SLOT_WAIT_RETRY, /* failed; retried at retry_at */
    SLOT_FINISHING,  /* its reply or dead letter is being made durable */
    SLOT_DONE,       /* settled: the cursor may move past it */
};

/* One event of a mapping's window, from reading until the cursor moves past it. */
struct inv_slot {
    struct inv_mapping *m;
    uint64_t offset;
    int64_t time_ms; /* appended */
    enum inv_slot_state state;
    bool orphan; /* the mapping dropped its window (replay, delete): free on completion */
    int attempts;
    int64_t retry_at;
    void *record; /* the stored bytes; ev points into them */
    struct cloudevent ev;
    struct buf head; /* the request head while in flight */
    struct inv_instance *inst;
    struct inv_slot *next;
};

struct inv_mapping {
    struct invoker *inv;
    struct mapping_spec spec; /* as the user wrote it: names within the mapping's space */
    /* the fabric's names of its topics (fabric_topic_scoped); "" for none */
    char topic[FABRIC_TOPIC_MAX + 1];
    char reply_topic[FABRIC_TOPIC_MAX + 1];
    char dead_letter_topic[FABRIC_TOPIC_MAX + 1];
    char *app_ref; /* mapping_app_ref */
    struct inv_target *target;
    char consumer[64];
    uint64_t read_next;  /* next offset to read from the topic */
    uint64_t committed;  /* the durable cursor (or the one being committed) */
    uint64_t end_offset; /* one past the newest durable event of the topic */
    /* where it began to read when made (saved in its document): a skiffd that learns of it
     * from the store, with no cursor to read on from, starts there too */
    uint64_t start_offset;
    bool cursor_known;
    bool commit_in_flight, commit_again;
    struct inv_slot *head, *tail;
    size_t window;  /* slots in the window */
    size_t pending; /* slots PENDING or WAIT_RETRY */
    size_t in_flight;
    size_t window_max;
    uint64_t delivered, retried, dead_lettered, failed, filtered;
    /* the counts' place in the stored sequence: each save by the consuming skiffd adds one;
     * a follower takes stored counts with it, a save finding a greater one stored writes nothing */
    uint64_t stats_seq;
    json_t *failures; /* [{offset, id, reason, at}] newest last */
    bool stats_dirty;
    char last_error[512];
    bool suspended; /* its grant to read another space's topic no longer holds */
    uv_timer_t retry_timer;
    uv_timer_t cron_timer;
    struct cron_schedule cron;
    int64_t cron_due_ms;  /* the fire cron_timer is armed for */
    int64_t last_fire_ms; /* the due time of the last fire, persisted; 0: it never fired */
    struct fabric_sub *sub;
    bool deleted;
    int refs; /* callbacks still to come (cursor commits, appends, deliveries) + 1 while live */
    int open_handles;
    struct inv_mapping *next;
};

struct invoker {
    uv_loop_t *loop;
    struct fabric *fabric;
    struct scheduler *scheduler;
    struct store *store;
    struct api *api;
    struct hub *hub;
    int sched_sub; /* its subscription on the hub */
    int64_t idle_grace_ms; /* for functions no mapping gives a grace period */
    bool following;        /* invoker_set_leading(false): another skiffd fires the schedules */
    invoker_wake_fn wake;  /* asks the autoscaler for instances (invoker_set_wake) */
    void *wake_ctx;
    json_t *app_kinds;     /* app guid -> true when it is a function (looked up once) */
    uint64_t ticks;
    struct inv_mapping *mappings;
    uint64_t doc_news; /* store_doc_news_kind when the mappings were last read from the store */
    uint64_t mapping_reads; /* reads of all the mappings from the store (invoker_mappings_sync) */
    struct rate_limit catch_up_rate; /* of database reads for ids not held (catch-up) */
    struct api_request *caught_up;   /* the request run again after its catch-up read (routes.c) */
    uv_timer_t sync_timer; /* reads them again soon after another skiffd's news */
    struct inv_target *targets;
    struct inv_instance *draining; /* instances gone with calls still in flight */
    uv_timer_t tick;               /* scale-down checks and stats persistence, every second */
    bool stopping;
    int pending_ops; /* appends and commits whose callbacks are still to come */
    struct inv_store_op *store_ops; /* store writes whose callbacks are still to come */
    /* the replays asked through other skiffds: a read of them under way; the replay kind's
     * news when it was last read; read again at the next tick whatever the news */
    bool replays_reading, replays_stale;
    uint64_t replays_seen;
    int open_handles;
    void (*stop_done)(void *arg);
    void *stop_arg;
    /* whole-invoker counters for /metrics */
    uint64_t platform_events, schedule_fires, invokes;
};

/* invoker.c */
struct inv_mapping *invoker_mapping_find(struct invoker *inv, const char *id);
/* How a mapping's create or delete ended: rc 0, or < 0 with err saying why (-EEXIST: its id
 * was taken meanwhile). */
typedef void invoker_mapping_fn(void *ctx, int rc, const char *err);
/* An id this skiffd does not hold, which another skiffd on the store may have made a moment
 * ago (its change feed's news not here yet): its read from the database is queued (off the
 * loop), at most 50 a second after a burst of 20. Once it is made, a mapping found is started
 * here from what was read, and done(ctx, rc, NULL) hears: 0 (held now), -ENOENT or -EIO (not
 * held), -ECANCELED (the invoker is stopping, or gone). false when nothing is read (a store
 * without a change feed, the rate spent, stopping, a read the store would not queue): done is
 * not called then. */
bool invoker_mapping_catch_up(struct invoker *inv, const char *id, invoker_mapping_fn *done,
                              void *ctx);
/* Makes a mapping from a validated spec (takes it over): its document is created in the store
 * (only while no document has its id: -EEXIST otherwise), the write queued, and once made the
 * mapping starts and done hears (on SQLite during the call). */
void invoker_mapping_create(struct invoker *inv, struct mapping_spec *spec,
                            invoker_mapping_fn *done, void *ctx);
/* fn(ctx, space guid) for each mapping a quota counts: those running here, and those whose
 * create is queued (invoker_mapping_create before done), so that creates sent together
 * cannot pass one quota each. */
void invoker_mapping_spaces(struct invoker *inv, void (*fn)(void *ctx, const char *space),
                            void *ctx);
/* Stops the mapping at once and deletes its document and cursor; done (when not NULL) hears
 * once the document's delete is made (0 also when it was gone already). */
void invoker_mapping_remove(struct inv_mapping *m, invoker_mapping_fn *done, void *ctx);
/* Moves the mapping's cursor back (or forward) to offset; returns the offset used. Only where
 * invoker_consumes: the cursor has one writer. */
uint64_t invoker_mapping_replay(struct inv_mapping *m, uint64_t offset);
/* Where a replay of m from offset starts: within what the topic keeps. */
uint64_t invoker_mapping_replay_from(struct inv_mapping *m, uint64_t offset);
/* Where the invoker does not consume: asks the leading skiffd, through the store, to replay m
 * from `from` (invoker_mapping_replay_from's; it does within a second of the ask's write:
 * invoker_tick). The write is queued and done(ctx, rc) hears of it (on SQLite during the
 * call); < 0 when it could not be queued (done is then not called). */
int invoker_mapping_replay_ask(struct inv_mapping *m, uint64_t from, store_done_fn *done,
                               void *ctx);
/* An operation counted in pending_ops (the invoker is not freed before it) ended. */
void invoker_op_done(struct invoker *inv);
/* Whether this skiffd reads and commits the mappings' cursors: always on a fabric of its own;
 * on one that several skiffds share (JetStream), only while it leads, so that two never read as
 * one consumer. */
bool invoker_consumes(const struct invoker *inv);
json_t *invoker_mapping_json(struct inv_mapping *m);
uint64_t invoker_mapping_backlog(const struct inv_mapping *m);
/* The app's name (targets are keyed "SPACE_GUID/NAME"). */
const char *invoker_target_name(const struct inv_target *t);
/* The app's name (targets are keyed "SPACE_GUID/NAME"). */
const char *invoker_target_name(const struct inv_target *t);
struct inv_target *invoker_target_get(struct invoker *inv, const char *app, const char *process);
void invoker_target_pump(struct inv_target *t);
/* A call to inst ended (a delivery or an invoke): frees an instance that is gone once its
 * last call ended. */
void invoker_instance_call_done(struct invoker *inv, struct inv_instance *inst);
/* Builds the binary-mode request head for ev (Content-Length included). */
void invoker_request_head(const struct inv_instance *inst, const struct cloudevent *ev,
                          struct buf *out);

/* routes.c */
void invoker_routes_add(struct invoker *inv);
/* Hands an instance to the oldest waiting invoke of the target; false when none waits. */
bool invoker_invoke_take_instance(struct inv_target *t, struct inv_instance *inst);
/* Fails every waiting invoke (stopping). */
void invoker_invokes_abort(struct inv_target *t, const char *why);
/* Fails waiting invokes older than the wait limit. */
void invoker_invokes_expire(struct inv_target *t, int64_t now_ms);

#endif
