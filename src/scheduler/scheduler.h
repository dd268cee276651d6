/* scheduler: keeps the instances that run (actual) equal to what the store says (desired).
 *
 * For every STARTED app with a droplet, each process type gets `instances` instances on the
 * cells (src/cell/client.h: its own executor, src/executor/executor.h, and the cells on NATS,
 * placed by src/cell/cell.h's rule); STOPPED apps get none. The scheduler decides about
 * crashes (Diego's rules, scheduler_crash_delay_ms), builds each instance's environment
 * (scheduler_instance_env) and publishes what happens to instances on the hub
 * (src/hub/hub.h): which are ready (only RUNNING ones take traffic), gone, draining, crashed.
 *
 * Readiness checks (Cloud Foundry's, store.h's store_process_checks): an instance with one
 * takes traffic only while it passes. One that fails it leaves the route table (GONE) and is
 * not restarted; passing again, it is READY again. A rolling replacement takes over its slot
 * only once it takes traffic.
 *
 * Stopping on purpose (scale down, stop, delete, restart, new droplet, scale to zero) drains
 * an instance that was taking work: it is detached from its slot at once (its replacement
 * starts without waiting), leaves the route table (PLATFORM_INSTANCE_GONE), and then
 * PLATFORM_INSTANCE_DRAINING lets whoever still has work in flight to it (the routers
 * through the bus, the invoker) hold it with scheduler_drain_hold. It gets SIGTERM
 * (executor_stop) once every hold is released or the drain timeout passes, whichever comes
 * first. Meanwhile it shows as STOPPING. An instance that was not ready is stopped at once, and
 * so is every instance when skiffd shuts down.
 *
 * Apps are named by name or guid wherever a `const char *app` is taken. Every call runs on
 * the scheduler's libuv loop and is not thread-safe; callbacks run on that loop. Errors are the
 * one error type of common/err.h (0 is success, so test rc != 0): a negative errno (-ENOENT
 * unknown app or process type, or the store's), or SKIFF_E_APP_STOPPED (the app is STOPPED),
 * SKIFF_E_NOT_STAGED (it has no droplet), worded by skiff_strerror. */
#ifndef SKIFF_SCHEDULER_H
#define SKIFF_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "scheduler/instance_env.h"

struct scheduler;
struct store;
struct logs;
struct executor;
struct hub;
struct blob_store;
struct cellc_config;

struct scheduler_config {
    const char *home;     /* $SKIFF_HOME: droplets and instance scratch live below */
    const char *api_url;  /* SKIFF_EVENTS_URL = api_url + "/v1" */
    int drain_timeout_ms; /* the longest a drain holds an instance; <= 0: the default */
    struct hub *hub;      /* where it publishes platform events (NULL: nowhere) */
    /* Makes the SKIFF_EVENTS_TOKEN of one instance (api_instance_token). */
    void (*make_instance_token)(void *ctx, const char *app_guid, const char *instance_guid,
                                char *out, size_t size);
    void *token_ctx;
    /* VCAP_SERVICES of one app as JSON text (caller frees), read when each instance starts;
     * NULL when it cannot be read now (the start is then retried like a failed one). Without
     * it, instances get "{}". */
    char *(*vcap_services)(void *ctx, const char *app_guid);
    void *vcap_services_ctx;
    /* The buildpacks folder: the function servers a function inside an app runs
     * (function-python/lib, function-node/lib). NULL: such functions cannot start. */
    const char *function_servers_dir;
    /* Where droplets made on other hosts come from (src/blobs): a droplet whose folder is not
     * on this host is materialised from its blob before its instances start, and so are the
     * layers an image droplet names that this host's image store lacks (on a skiffd that
     * runs instances itself: cell_layers_read_from); the app is converged again once they are
     * here. NULL: the folder the store records, as it is. */
    struct blob_store *blobs;
    /* The cells it runs instances on (cell/client.h): NULL, or local_cell with no NATS, runs
     * every instance on its own executor, as a single skiffd does. */
    const struct cellc_config *cells;
};

/* Whether a process type other than web listens on $PORT and takes requests (a function run
 * as a process type of an app, that events are delivered to). */
typedef bool (*scheduler_listens_cb)(void *ctx, const char *app_guid, const char *app_name,
                                     const char *process_type);
/* Sets (or with NULL clears) who answers scheduler_listens_cb when an instance starts. An
 * instance of a process that listens is ready only once its port accepts a connection, like
 * web, so nothing is sent to it before it can answer; other non-web processes (workers) are
 * ready once running. */
void scheduler_set_listens(struct scheduler *s, scheduler_listens_cb cb, void *ctx);

/* ---- draining ---------------------------------------------------------------------------- */

#define SCHEDULER_DRAIN_TIMEOUT_MS 10000

/* Keeps the draining instance of drain_id running until the matching release (or the drain
 * timeout). May be called during the DRAINING callback or later; a hold on a drain that is
 * over (or an unknown id) is a no-op. Each hold needs exactly one release. */
void scheduler_drain_hold(struct scheduler *s, uint64_t drain_id);
/* Ends one hold; the instance is stopped when none is left. Safe on a drain that is over. */
void scheduler_drain_release(struct scheduler *s, uint64_t drain_id);

/* ---- joining the route table -------------------------------------------------------------- */

/* An instance that became routable (PLATFORM_INSTANCE_READY) is shown STARTING, not RUNNING
 * (scheduler_app_instances, scheduler_running_count, a deployment's "updated", which is
 * DEPLOYED only then), until every
 * hold taken on it is released: the bus holds it until every connected router has
 * acknowledged a route table with it (docs/bus.md "ack"), so that a client told RUNNING is
 * never answered "no instance" by a router. Traffic is not held back: it is routable from
 * READY on. A hold on an unknown instance is a no-op; each hold needs exactly one release. */
void scheduler_route_hold(struct scheduler *s, const char *instance_guid);
void scheduler_route_release(struct scheduler *s, const char *instance_guid);

/* ---- life ---------------------------------------------------------------------------------- */

/* Creates the scheduler and the executor it drives (configured by excfg). */
struct executor_config;
int scheduler_new(uv_loop_t *loop, const struct scheduler_config *cfg,
                  const struct executor_config *excfg, struct store *store, struct logs *logs,
                  struct scheduler **out);
/* Adopts the instances a predecessor left running under their shims (executor_adopt) where
 * the store still wants them (same app, droplet, process type and index): those that answer
 * are ready at once, before any route table goes out. Others are stopped, and instances left
 * without a shim are killed (their pids are recorded under home/run). Then starts what the
 * store wants running and is missing; with cells on NATS, only once it has heard them for a
 * while (cellc_settle_ms), their instances being offered for adoption the same way as their
 * heartbeats come (cell/client.h). */
int scheduler_reconcile_all(struct scheduler *s);
/* Stops every instance gracefully; done is called when all are down and the scheduler's
 * handles are closed; then scheduler_free. */
void scheduler_shutdown(struct scheduler *s, void (*done)(void *arg), void *arg);
/* Lets every instance go on running for the next skiffd to adopt (executor_detach); done as
 * for scheduler_shutdown. */
void scheduler_detach(struct scheduler *s, void (*done)(void *arg), void *arg);
void scheduler_free(struct scheduler *s);
/* The executor it drives (for what the daemon wires beside it, e.g. the stager's
 * containers). */
struct executor *scheduler_executor(struct scheduler *s);

/* ---- leading: several skiffds on one shared store (src/daemon/leader.h) ------------------ */

/* Whether this scheduler converges (true from scheduler_new). Set false, it holds what it
 * runs: the instances keep running in their slots and in the route table, but until set true
 * again it starts nothing, stops nothing on its own, adopts nothing (scheduler_reconcile_all
 * stops what a predecessor left, or with cells on NATS leaves it to whoever leads) and never
 * restarts: the API's calls still write the store, and the scheduler that leads acts on
 * them. Set true again, it adopts and converges every app (scheduler_reconcile_all): what it
 * held is in its slots already. Tasks are not concerned. */
void scheduler_set_leading(struct scheduler *s, bool leading);
bool scheduler_leading(const struct scheduler *s);
/* Another skiffd leads: while not leading, what this scheduler holds is given up. The local
 * executor's instances go on running for the leader when the local cell serves one
 * (cellc_hand_over: the leader adopts them from its heartbeat), else they are stopped (each
 * drains as on a stop); the remote cells' are forgotten (they keep running). Called when
 * the store says another leads or the hold's lease lapsed (daemon/leader.h), never on a
 * message from the bus. Nothing while leading or holding nothing. */
void scheduler_hand_over(struct scheduler *s);
/* For a store other skiffds write too: converges every app the store lists and every app it
 * runs (a deleted one's instances stop), and rolls out (rolling) a droplet put into service
 * elsewhere once two resyncs in a row saw it. One store_app_list, and one store_app_get and
 * store_droplet_get per started app. A no-op when not leading. */
int scheduler_resync(struct scheduler *s);
/* The store's change feed brought news: leading, the restarts other skiffds asked for since
 * are carried out (a restart asked of a skiffd that does not lead is recorded in the store). */
void scheduler_store_news(struct scheduler *s);

/* The cells it runs instances on (cell/client.h), e.g. for GET /v1/cells. */
struct cellc *scheduler_cells(struct scheduler *s);

struct scheduler_usage {
    int instances;         /* live instances, tasks and draining ones included */
    uint64_t memory_bytes; /* their memory use, as their cgroups (or /proc) count it */
};
void scheduler_usage(struct scheduler *s, struct scheduler_usage *out);

/* ---- what the API asks ------------------------------------------------------------------- */

/* Re-reads the app from the store and converges (after any change to its desired state:
 * start, stop, scale, new droplet, env). A deleted app's instances are stopped. */
int scheduler_app_changed(struct scheduler *s, const char *app);
/* Stops then starts every instance of the app (one by one when rolling is true, each new
 * one RUNNING before the next old one stops). */
int scheduler_app_restart(struct scheduler *s, const char *app, bool rolling);
/* Puts the app's new droplet (just recorded in the store) into service. rolling: each
 * instance is replaced only once its successor on the new droplet is RUNNING, so the app
 * never serves fewer instances than before (Cloud Foundry's rolling deployment); if a new
 * instance crashes or never gets ready, the deployment fails: the store's droplet goes back
 * to the one that ran, instances already replaced are replaced back, and the error is kept
 * for scheduler_app_deployment. Not rolling: every instance is stopped, then started on the
 * new droplet (CF's "recreate"). */
int scheduler_app_deploy(struct scheduler *s, const char *app, bool rolling);

enum scheduler_deploy_state {
    SCHED_DEPLOY_NONE,
    SCHED_DEPLOY_ACTIVE, /* "DEPLOYING" */
    SCHED_DEPLOY_DONE,   /* "DEPLOYED" */
    SCHED_DEPLOY_FAILED, /* "FAILED" */
};

struct scheduler_deployment {
    enum scheduler_deploy_state state;
    char from[37], to[37]; /* the droplet that ran before, the one deployed */
    int updated;           /* instances RUNNING on the new droplet */
    int total;             /* instances wanted */
    char error[256];       /* FAILED: why */
};

/* The app's last deployment; -ENOENT when it had none since skiffd started. */
int scheduler_app_deployment(struct scheduler *s, const char *app,
                             struct scheduler_deployment *out);
const char *scheduler_deploy_state_name(enum scheduler_deploy_state st);
/* Stops everything of an app that is being deleted; its guid is forgotten. The hub gets
 * PLATFORM_APP_STOPPED when it was running. */
void scheduler_app_deleted(struct scheduler *s, const char *app_guid);

/* ---- what functions need (events component) ---------------------------------------------- */

/* Makes sure at least n instances of the process are desired (scale from zero); never
 * scales down. Persists the new count; a no-op when already >= n. */
int scheduler_ensure_instances(struct scheduler *s, const char *app, const char *process_type,
                               int n);
/* Sets the desired count to exactly n (0: scale to zero), persisted. */
int scheduler_scale(struct scheduler *s, const char *app, const char *process_type, int n);
/* The same, saying why in the PLATFORM_APP_SCALED event (the autoscaler's decisions). */
int scheduler_scale_because(struct scheduler *s, const char *app, const char *process_type, int n,
                            const char *reason);

struct scheduler_instance_info {
    char guid[37];
    char addr[64]; /* "IP:PORT": where the router and health checks reach it */
    char droplet[37]; /* the droplet it runs ("" for a slot without an instance) */
    int index;
    int port;       /* what it listens on ($PORT) */
    int64_t host_uid; /* the host uid its program runs as, -1 if not known */
    bool warm_start;  /* it started in a warm container */
    char warm_runtime[16]; /* the runtime that container had up ahead, or "" */
    uint64_t disk_bytes, disk_quota_bytes; /* a container's writable layer: used and size */
    bool disk_full;                        /* ... and its quota is used up */
    char state[16]; /* STARTING RUNNING CRASHED STOPPING DOWN */
    bool not_ready; /* RUNNING, but its readiness check fails: it takes no requests */
    int64_t since_ms;
    double cpu;
    uint64_t memory_bytes;
    char cell[33];   /* the id of the cell it runs on ("" for a slot without an instance) */
    int exit_status; /* of the last crash at this index, -1 if none */
    int exit_signal; /* 0 if none */
    int crash_count;
    char process_type[64];
};

/* Fills out (at most max) with the instances of the process that take traffic (RUNNING, and
 * passing their readiness check when they have one) (all process types when
 * process_type is NULL); returns how many there are in total (may exceed max) or an error.
 * With max 0 (out may then be NULL) it only counts, to size out for a second call. */
int scheduler_ready_instances(struct scheduler *s, const char *app, const char *process_type,
                              struct scheduler_instance_info *out, size_t max);
/* Every instance slot of the app (running or not, index order), then the instances it is
 * stopping (draining or in their grace period, state STOPPING), for `skiff app`. */
int scheduler_app_instances(struct scheduler *s, const char *app,
                            struct scheduler_instance_info *out, size_t max);
/* How many instances of the app's web process are RUNNING (the "running" of docs/api.md,
 * beside "instances", the web process's desired count). */
int scheduler_running_count(struct scheduler *s, const char *app_guid);

/* Whether instance_guid is an instance of app_guid that runs (starting, running, draining or
 * in its stop grace period): what the instance's event token is good for. */
bool scheduler_instance_alive(struct scheduler *s, const char *app_guid,
                              const char *instance_guid);

/* Calls fn for every instance of every app that takes traffic (the route table's backends). */
void scheduler_each_ready(struct scheduler *s,
                          void (*fn)(void *ctx, const char *app_guid, const char *process_type,
                                     const struct scheduler_instance_info *inst),
                          void *ctx);

/* ---- tasks: one-off processes of an app (src/api/tasks.c) -------------------------------- */

#define SCHEDULER_TASK_NAME_MAX 48

struct scheduler_task {
    const char *app_guid;
    const char *droplet_guid; /* the app's current droplet, which it runs */
    const char *task_guid;    /* also its instance's guid */
    const char *name;         /* its output is tagged APP/TASK/NAME/0; at most
                                 SCHEDULER_TASK_NAME_MAX characters */
    const char *command;      /* run with /bin/sh -c */
    int memory_mb;
};

struct scheduler_task_end {
    bool stopped;       /* by scheduler_task_stop (or skiffd's shutdown, or its app's deletion) */
    int exit_status;    /* -1 when killed by a signal */
    int term_signal;    /* 0 when it exited */
    const char *reason; /* the executor's: "exited", "out of memory", ... */
};
/* A task ended; task_guid and end are valid during the call only. */
typedef void (*scheduler_task_ended_cb)(void *ctx, const char *app_guid, const char *task_guid,
                                        const struct scheduler_task_end *end);
void scheduler_set_task_ended(struct scheduler *s, scheduler_task_ended_cb cb, void *ctx);
/* Starts a task in a container like an instance's (the app's environment, VCAP_SERVICES and
 * VCAP_APPLICATION, the app's disk, memory_mb as its limit), but with no route, no health
 * check and no restart: it runs until its command ends or scheduler_task_stop. 0 (its end
 * comes through the callback, never from inside this call); -ENOENT no such app;
 * SKIFF_E_NOT_STAGED it has no droplet, SKIFF_E_CONFLICT its droplet is not droplet_guid any
 * more; -EAGAIN or another negative errno when it
 * cannot start now (the app's log says why). The spec is copied. */
int scheduler_task_start(struct scheduler *s, const struct scheduler_task *t);
/* SIGTERM, SIGKILL after the grace period; the callback then says stopped. -ENOENT when no
 * task of that guid runs. */
int scheduler_task_stop(struct scheduler *s, const char *task_guid);

/* ---- pure parts (unit-tested) ------------------------------------------------------------ */

/* Diego's restart delay for the n-th crash in a row (1-based): 0 for the first 3, then 30 s
 * doubling up to 16 minutes. */
int64_t scheduler_crash_delay_ms(int crash_count);
/* The crash count after a crash at now_ms, given the previous count and when the instance
 * last became healthy (0: never): 5 minutes healthy resets it. */
int scheduler_crash_count_next(int previous, int64_t healthy_since_ms, int64_t now_ms);

/* scheduler_env_input, scheduler_vcap_application, scheduler_instance_env: instance_env.h */

#endif
