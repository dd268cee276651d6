/* The scheduler: desired (store) vs actual (executor) instances, crash restarts, rolling
 * restarts and notifications.
 *
 * Every instance index of a process is a slot. A slot holds the instance running for it (or
 * none, while a crash restart waits). An instance that is being stopped on purpose is
 * detached from its slot first, so its end is never taken for a crash.
 *
 * An instance's phase: LIVE (in its slot), then, once stopped on purpose, DRAINING (out of the
 * route table, work in flight to it finishing: scheduler.h) and STOPPING (executor_stop sent
 * SIGTERM), until the executor reports it down and it is freed. */
#include "common/start_trace.h"
#include "scheduler/scheduler.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "blobs/blobs.h"
#include "common/log.h"
#include "common/buf.h"
#include "common/err.h"
#include "cell/cell.h"
#include "cell/client.h"
#include "common/util.h"
#include "container/container.h"
#include "executor/executor.h"
#include "hub/hub.h"
#include "images/images.h"
#include "logs/logs.h"
#include "store/store.h"

struct sched_app;
struct sched_proc;

enum sched_inst_phase {
    SCHED_INST_LIVE,     /* attached to its slot, or starting */
    SCHED_INST_DRAINING, /* detached, out of the route table, held while work in flight ends */
    SCHED_INST_STOPPING, /* executor_stop sent: SIGTERM, SIGKILL after the grace period */
};

struct sched_inst {
    struct scheduler *s;
    struct cellc_inst *inst; /* on whichever cell runs it (cell/client.h) */
    char app_guid[37];
    char type[64];
    char tag[96]; /* log source, e.g. APP/PROC/WEB/0 */
    char guid[37];
    char droplet[37]; /* the droplet it runs */
    int index;
    int port;      /* the executor's slot (a port on loopback, or a container's network slot) */
    char addr[64]; /* where the platform reaches it: "IP:PORT" */
    bool ready;    /* its health check passed: RUNNING */
    int route_holds;   /* routed, but not every router has a table with it yet: STARTING */
    bool readiness;    /* it has a readiness check: routed to only while that passes */
    bool readiness_ok; /* the readiness check's last result */
    enum sched_inst_phase phase;
    uint64_t drain_id;         /* DRAINING: its id for scheduler_drain_hold/_release */
    int drain_holds;           /* DRAINING: holds not yet released */
    int64_t drain_until_mono;  /* DRAINING: stopped then even with holds left */
    int64_t stopping_since_ms; /* when it was stopped on purpose */
    struct sched_slot *slot;   /* NULL when stopping on purpose */
    struct sched_slot *shadow; /* a rolling replacement waiting to take over this slot */
    bool task;                 /* a one-off task (scheduler_task_start): never in a slot, never
                                  ready, never restarted; its end goes to task_ended */
    struct sched_inst *next;
};

/* Whether requests and events may go to the instance: the one answer for the route table,
 * the invoker and the autoscaler. Not ready by its readiness check, it is running (and not
 * restarted) but takes no new work. */
static bool sched__routable(const struct sched_inst *si)
{
    return si->ready && (!si->readiness || si->readiness_ok);
}

/* Whether the API shows the instance RUNNING: healthy and, for a routed one, in the table of
 * every router (scheduler_route_hold), so a request sent at once finds it. */
static bool sched__shown_running(const struct sched_inst *si)
{
    return si->ready && si->route_holds == 0;
}

struct sched_slot {
    int index;
    struct sched_inst *cur;
    struct sched_inst *replacement; /* rolling restart */
    int crash_count;
    int64_t healthy_since_ms;
    int64_t crashed_at_ms;
    int64_t restart_at_mono; /* 0: none pending */
    int last_exit_status;
    int last_exit_signal;
    bool start_failed; /* nothing to run (no command): not retried until the app changes */
    bool start_soon;   /* left for the next loop turn: a turn starts SCHED_STARTS_PER_TURN */
};

struct sched_proc {
    char type[64];
    bool function; /* a function inside the app (store_process_is_function) */
    int desired;
    struct sched_slot **slots;
    size_t nslots;
};

struct sched_app {
    char guid[37];
    char space[37]; /* "" until read from the store */
    char *name;
    char *kind;
    bool rolling; /* a rolling restart goes on */
    /* the last deployment of a new droplet (scheduler_app_deploy) */
    enum scheduler_deploy_state deploy;
    char deploy_from[37], deploy_to[37]; /* the droplets: what ran before, what is deployed */
    char deploy_error[256];
    /* scheduler_resync: a droplet the store named that no instance runs yet, seen once */
    char stale_droplet[37];
    struct sched_proc **procs;
    size_t nprocs;
    struct sched_app *next;
};


struct scheduler {
    uv_loop_t *loop;
    char *home;
    char *api_url;
    char *events_url;
    struct scheduler_config cfg;
    struct store *store;
    struct logs *logs;
    struct cellc *cells; /* the cells it runs instances on (local and remote) */
    /* an image droplet's layers on this host, read from the blob store when missing (NULL
     * without a blob store or a local cell) */
    struct cell_layers *layers;
    struct sched_layers_wait *layer_waits;   /* apps whose layers are on their way */
    struct sched_layers_wait *layers_failed; /* ... and those that failed lately */
    struct sched_app *apps;
    struct sched_inst *insts; /* every live instance, attached or not */
    scheduler_listens_cb listens;
    void *listens_ctx;
    scheduler_task_ended_cb task_ended;
    void *task_ended_ctx;
    int drain_timeout_ms;
    uint64_t next_drain_id;
    uv_timer_t timer;  /* crash restarts and drain deadlines */
    uv_timer_t settle; /* the first convergence after leading began (cellc_settle_ms) */
    struct sched_write *writes; /* its app writes in the store's queue */
    bool shutting_down;
    bool leading; /* scheduler_set_leading: false, it starts nothing and runs nothing */
    uint64_t restarts_seen; /* store_doc_news_kind of SCHED_RESTART_KIND at the last read */
    bool restarts_stale;    /* leading began: read whatever the news says */
    bool restarts_reading;  /* a read is under way (off the loop) */
    void (*shutdown_done)(void *);
    void *shutdown_arg;
};

static void sched__converge(struct scheduler *s, struct sched_app *a);
static void sched__tick(uv_timer_t *t);

/* Starting an instance costs the loop a fork and a few files (~1 ms; more under load):
 * a scale to hundreds starts them this many at a time, one loop turn each, so the API and
 * health checks keep answering meanwhile. */
#define SCHED_STARTS_PER_TURN 16

/* ---- notifications ------------------------------------------------------------------------ */

void scheduler_set_listens(struct scheduler *s, scheduler_listens_cb cb, void *ctx)
{
    s->listens = cb;
    s->listens_ctx = ctx;
}

static void sched__emit(struct scheduler *s, const struct platform_event *ev)
{
    hub_publish(s->cfg.hub, ev);
}

static void sched__emit_app(struct scheduler *s, enum platform_event_type type,
                            const char *app_guid, const char *app_name)
{
    sched__emit(s, &PLATFORM_APP_EVENT(type, app_guid, app_name));
}

static const char *sched__app_name(struct scheduler *s, const char *guid)
{
    for (struct sched_app *a = s->apps; a; a = a->next)
        if (!strcmp(a->guid, guid))
            return a->name;
    return "";
}

/* ---- bookkeeping ---------------------------------------------------------------------------- */

static struct sched_app *sched__app(struct scheduler *s, const char *guid, bool create)
{
    for (struct sched_app *a = s->apps; a; a = a->next)
        if (!strcmp(a->guid, guid))
            return a;
    if (!create)
        return NULL;
    struct sched_app *a = xcalloc(1, sizeof *a);
    snprintf(a->guid, sizeof a->guid, "%s", guid);
    a->name = xstrdup("");
    a->kind = xstrdup("app");
    a->next = s->apps;
    s->apps = a;
    return a;
}

static struct sched_proc *sched__proc(struct sched_app *a, const char *type, bool create)
{
    for (size_t i = 0; i < a->nprocs; i++)
        if (!strcmp(a->procs[i]->type, type))
            return a->procs[i];
    if (!create)
        return NULL;
    struct sched_proc *p = xcalloc(1, sizeof *p);
    snprintf(p->type, sizeof p->type, "%s", type);
    a->procs = xrealloc(a->procs, (a->nprocs + 1) * sizeof *a->procs);
    a->procs[a->nprocs++] = p;
    return p;
}

static void sched__inst_unlink(struct scheduler *s, struct sched_inst *si)
{
    for (struct sched_inst **pp = &s->insts; *pp; pp = &(*pp)->next)
        if (*pp == si) {
            *pp = si->next;
            return;
        }
}

static void sched__ready_event(struct scheduler *s, struct sched_inst *si, bool ready);
static void sched__routed(struct scheduler *s, struct sched_inst *si);
static void sched__on_final(struct scheduler *s, struct sched_inst *si, enum instance_state state,
                            const struct instance_exit *ex);
static void sched__arm_timer(struct scheduler *s);

/* SIGTERM now (the executor sends SIGKILL after its grace period). */
static void sched__halt(struct sched_inst *si)
{
    si->phase = SCHED_INST_STOPPING;
    cellc_stop(si->inst); /* reports nothing from inside: si stays valid */
}

static struct sched_inst *sched__draining(struct scheduler *s, uint64_t drain_id)
{
    for (struct sched_inst *si = s->insts; si; si = si->next)
        if (si->phase == SCHED_INST_DRAINING && si->drain_id == drain_id)
            return si;
    return NULL;
}

void scheduler_drain_hold(struct scheduler *s, uint64_t drain_id)
{
    struct sched_inst *si = sched__draining(s, drain_id);
    if (si)
        si->drain_holds++;
}

void scheduler_drain_release(struct scheduler *s, uint64_t drain_id)
{
    struct sched_inst *si = sched__draining(s, drain_id);
    if (!si || --si->drain_holds > 0)
        return;
    sched__halt(si);
    sched__arm_timer(s);
}

static struct sched_inst *sched__by_guid(struct scheduler *s, const char *instance_guid)
{
    for (struct sched_inst *si = s->insts; si; si = si->next)
        if (!strcmp(si->guid, instance_guid))
            return si;
    return NULL;
}

void scheduler_route_hold(struct scheduler *s, const char *instance_guid)
{
    struct sched_inst *si = sched__by_guid(s, instance_guid);
    if (si)
        si->route_holds++;
}

void scheduler_route_release(struct scheduler *s, const char *instance_guid)
{
    struct sched_inst *si = sched__by_guid(s, instance_guid);
    if (si && si->route_holds > 0)
        si->route_holds--;
}

/* The instance left the route table on purpose (GONE came first) and still runs: routers let
 * its requests in flight finish (the table lists it as "draining") instead of taking it for
 * lost. drain_id is what holds and releases name: a draining instance's, or a fresh one that
 * names no draining instance, for one that stays live (its readiness check failed), where
 * holds and releases change nothing. */
static void sched__draining_event(struct scheduler *s, struct sched_inst *si, uint64_t drain_id)
{
    struct platform_event ev = {.type = PLATFORM_INSTANCE_DRAINING,
                                .app_guid = si->app_guid,
                                .app_name = sched__app_name(s, si->app_guid),
                                .process_type = si->type,
                                .index = si->index,
                                .instance_guid = si->guid,
                                .addr = si->addr,
                                .exit_status = -1,
                                .drain_id = drain_id};
    sched__emit(s, &ev);
}

/* Detaches and stops an instance on purpose: one that was taking work drains first
 * (scheduler.h), others stop at once. */
static void sched__stop_inst(struct scheduler *s, struct sched_inst *si)
{
    if (!si)
        return;
    if (si->slot) {
        if (si->slot->cur == si)
            si->slot->cur = NULL;
        if (si->slot->replacement == si)
            si->slot->replacement = NULL;
        si->slot = NULL;
    }
    si->shadow = NULL;
    if (si->phase != SCHED_INST_LIVE)
        return;
    si->stopping_since_ms = time_now_ms();
    /* A stopping instance takes no new work (scheduler.h: GONE when it leaves RUNNING). */
    bool was_ready = sched__routable(si);
    si->ready = false;
    if (was_ready)
        sched__ready_event(s, si, false);
    if (!was_ready || s->shutting_down) {
        sched__halt(si);
        return;
    }
    si->phase = SCHED_INST_DRAINING;
    si->drain_id = ++s->next_drain_id;
    si->drain_holds = 0;
    si->drain_until_mono = time_mono_ms() + s->drain_timeout_ms;
    sched__draining_event(s, si, si->drain_id);
    if (si->phase != SCHED_INST_DRAINING)
        return; /* every hold was released during the event */
    if (si->drain_holds == 0) {
        sched__halt(si);
        return;
    }
    logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT,
                 "Instance %d of %s is draining: it takes no new work and stops once the work "
                 "in flight to it ends (%d s at most)",
                 si->index, si->type, (s->drain_timeout_ms + 999) / 1000);
    sched__arm_timer(s);
}

/* Stops the draining instances whose deadline passed, holds or not. */
static void sched__drain_expire(struct scheduler *s, int64_t now)
{
    for (struct sched_inst *si = s->insts; si; si = si->next) {
        if (si->phase != SCHED_INST_DRAINING || si->drain_until_mono > now)
            continue;
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_ERR,
                     "Instance %d of %s still had work in flight after the drain timeout "
                     "(%d ms); stopping it anyway",
                     si->index, si->type, s->drain_timeout_ms);
        sched__halt(si);
    }
}

static void sched__slot_free(struct scheduler *s, struct sched_slot *slot)
{
    sched__stop_inst(s, slot->cur);
    sched__stop_inst(s, slot->replacement);
    free(slot);
}

static void sched__app_free(struct scheduler *s, struct sched_app *a)
{
    for (size_t i = 0; i < a->nprocs; i++) {
        for (size_t j = 0; j < a->procs[i]->nslots; j++)
            sched__slot_free(s, a->procs[i]->slots[j]);
        free(a->procs[i]->slots);
        free(a->procs[i]);
    }
    free(a->procs);
    free(a->name);
    free(a->kind);
    free(a);
}

static void sched__app_remove(struct scheduler *s, struct sched_app *a)
{
    for (struct sched_app **pp = &s->apps; *pp; pp = &(*pp)->next)
        if (*pp == a) {
            *pp = a->next;
            break;
        }
    sched__app_free(s, a);
}

/* Arms the timer for the earliest pending crash restart or drain deadline. */
static void sched__arm_timer(struct scheduler *s)
{
    int64_t next = 0;
    if (s->shutting_down)
        return;
    for (struct sched_app *a = s->apps; a; a = a->next)
        for (size_t i = 0; i < a->nprocs; i++)
            for (size_t j = 0; j < a->procs[i]->nslots; j++) {
                int64_t at = a->procs[i]->slots[j]->restart_at_mono;
                if (a->procs[i]->slots[j]->start_soon)
                    at = time_mono_ms() + 1; /* a 0 ms timer would run again in this turn */
                if (at && (!next || at < next))
                    next = at;
            }
    for (struct sched_inst *si = s->insts; si; si = si->next)
        if (si->phase == SCHED_INST_DRAINING && (!next || si->drain_until_mono < next))
            next = si->drain_until_mono;
    if (!next) {
        uv_timer_stop(&s->timer);
        return;
    }
    int64_t delay = next - time_mono_ms();
    uv_timer_start(&s->timer, sched__tick, delay > 0 ? (uint64_t)delay : 0, 0);
}

/* ---- executor callbacks --------------------------------------------------------------------- */

static void sched__on_output(void *ctx, struct cellc_inst *inst, int stream, const char *line,
                             size_t len)
{
    struct scheduler *s = ctx;
    struct sched_inst *si = cellc_inst_user_data(inst);
    if (!si)
        return;
    if (stream == INSTANCE_STREAM_CELL || stream == INSTANCE_STREAM_LOG) {
        char tag[32];
        snprintf(tag, sizeof tag, "%s/%d", stream == INSTANCE_STREAM_LOG ? "LOG" : "CELL",
                 si->index);
        logs_append(s->logs, si->app_guid, tag, LOGS_ERR, line, len);
        return;
    }
    if (stream >= INSTANCE_STREAM_SIDECAR) {
        /* CF's tag: APP/PROC/WEB/SIDECAR/NAME/0 */
        int k = (stream - INSTANCE_STREAM_SIDECAR) / 2;
        const char *name = cellc_inst_sidecar_name(inst, (size_t)k);
        const char *index = strrchr(si->tag, '/');
        if (!name || !index)
            return;
        char tag[sizeof si->tag + 80];
        int n = snprintf(tag, sizeof tag, "%.*s/SIDECAR/", (int)(index - si->tag), si->tag);
        for (const char *c = name; *c && n < (int)sizeof tag - 16; c++)
            tag[n++] = (char)toupper((unsigned char)*c);
        snprintf(tag + n, sizeof tag - (size_t)n, "%s", index);
        logs_append(s->logs, si->app_guid, tag,
                    (stream - INSTANCE_STREAM_SIDECAR) % 2 ? LOGS_ERR : LOGS_OUT, line, len);
        return;
    }
    logs_append(s->logs, si->app_guid, si->tag, stream == 2 ? LOGS_ERR : LOGS_OUT, line, len);
}

static void sched__ready_event(struct scheduler *s, struct sched_inst *si, bool ready)
{
    const char *addr = si->addr;
    struct platform_event ev = {.type = ready ? PLATFORM_INSTANCE_READY : PLATFORM_INSTANCE_GONE,
                                 .app_guid = si->app_guid,
                                 .app_name = sched__app_name(s, si->app_guid),
                                 .process_type = si->type,
                                 .index = si->index,
                                 .instance_guid = si->guid,
                                 .addr = ready ? addr : NULL,
                                 .exit_status = -1};
    sched__emit(s, &ev);
}

/* A new instance of a deployment crashed before it was ready: the deployment stops there.
 * The instances already replaced go back to the droplet that ran before (rolling, so the
 * app keeps serving), the store's current droplet with them, and the crash is the
 * deployment's error (GET /v1/apps/NAME shows it; `skiff push` exits 1 with it). False when
 * no deployment goes on (a rolling restart retries instead). */
struct sched_scale {
    char *type;
    int n;
    bool only_up;
    bool wrote;
    int refused; /* SKIFF_E_APP_STOPPED, SKIFF_E_NOT_STAGED, or SKIFF_OK */
};

/* An app write of the scheduler's in the store's queue (store_app_modify_async): the context
 * of its change, which runs again when another writer came first, kept until its outcome is
 * reported; s is NULL once the scheduler is freed (the store reports at its drain, later). */
struct sched_write {
    struct scheduler *s;
    char guid[37];
    const char *what;                    /* "scale", for the message when it fails */
    struct sched_scale scale;            /* sched__scale_change's */
    char deploy_from[37], deploy_to[37]; /* sched__droplet_back's */
    /* within the call that queues it: an outcome reported then (SQLite writes during the
     * call) is the caller's to act on */
    bool calling, reported;
    int rc;
    struct sched_write *next;
};

static struct sched_write *sched__write_new(struct scheduler *s, const char *guid, const char *what)
{
    struct sched_write *w = xcalloc(1, sizeof *w);
    w->s = s;
    snprintf(w->guid, sizeof w->guid, "%s", guid);
    w->what = what;
    w->next = s->writes;
    s->writes = w;
    return w;
}

static void sched__write_free(struct sched_write *w)
{
    if (w->s)
        for (struct sched_write **p = &w->s->writes; *p; p = &(*p)->next)
            if (*p == w) {
                *p = w->next;
                break;
            }
    free(w->scale.type);
    free(w);
}

/* The write's outcome. The scheduler went on from the app as queued; a write the store
 * refused leaves the app as stored, so it converges on that again. */
static void sched__written(void *ctx, int rc)
{
    struct sched_write *w = ctx;
    if (w->calling) {
        w->reported = true;
        w->rc = rc;
        return;
    }
    if (rc < 0 && w->s) {
        log_error("scheduler: the %s of app %s was not stored: %s", w->what, w->guid,
                  skiff_strerror(rc));
        if (rc != -ECANCELED && !w->s->shutting_down)
            scheduler_app_changed(w->s, w->guid);
    }
    sched__write_free(w);
}

/* Queues the write of store_app_modify_async(change, ctx): what the synchronous
 * store_app_modify would have returned when the outcome came within the call (SQLite), else
 * 0 (queued, or nothing to write) or the read's or change's error. w is freed unless an
 * outcome is still to come (*pending); the caller reads what it needs from w first and then
 * calls sched__write_settle. *out as store_app_modify_async's. */
static int sched__modify(struct scheduler *s, struct sched_write *w,
                         int (*change)(void *ctx, struct store_app *app), void *ctx,
                         struct store_app **out, bool *pending)
{
    w->calling = true;
    int rc = store_app_modify_async(s->store, w->guid, change, ctx, sched__written, w, out);
    w->calling = false;
    if (rc == 0 && w->reported)
        rc = w->rc;
    *pending = rc == 0 && !w->reported;
    return rc > 0 ? 0 : rc;
}

static void sched__write_settle(struct sched_write *w, bool pending)
{
    if (!pending)
        sched__write_free(w); /* nothing more to come */
}

/* A failed deployment's app back on the droplet it came from, unless someone has put it on
 * another since (a function of the row: retried on the new row when another writer wins). */
static int sched__droplet_back(void *ctx, struct store_app *app)
{
    struct sched_write *w = ctx;
    if (!app->droplet_guid || strcmp(app->droplet_guid, w->deploy_to))
        return 1;
    free(app->droplet_guid);
    app->droplet_guid = xstrdup(w->deploy_from);
    app->updated_at = time_now_ms();
    return 0;
}

static bool sched__deploy_failed(struct scheduler *s, struct sched_inst *si, const char *reason,
                                 int status, int sig)
{
    struct sched_app *a = sched__app(s, si->app_guid, false);
    if (!a || a->deploy != SCHED_DEPLOY_ACTIVE || strcmp(si->droplet, a->deploy_to))
        return false;
    a->deploy = SCHED_DEPLOY_FAILED;
    if (sig)
        snprintf(a->deploy_error, sizeof a->deploy_error,
                 "instance %d of %s on the new droplet was killed by signal %d (%s)", si->index,
                 si->type, sig, reason);
    else
        snprintf(a->deploy_error, sizeof a->deploy_error,
                 "instance %d of %s on the new droplet crashed: exit status %d (%s)", si->index,
                 si->type, status, reason);
    logs_appendf(s->logs, a->guid, "CELL/0", LOGS_ERR,
                 "Deployment failed: %s; the app stays on droplet %s", a->deploy_error,
                 a->deploy_from);
    struct sched_write *w = sched__write_new(s, a->guid, "return to its droplet");
    memcpy(w->deploy_from, a->deploy_from, sizeof w->deploy_from);
    memcpy(w->deploy_to, a->deploy_to, sizeof w->deploy_to);
    bool pending;
    int rc = sched__modify(s, w, sched__droplet_back, w, NULL, &pending);
    sched__write_settle(w, pending);
    if (rc < 0)
        log_error("scheduler: cannot put app %s back on droplet %s: %s", a->guid, a->deploy_from,
                  skiff_strerror(rc));
    /* the API puts back the environment and commands that went with that droplet */
    sched__emit_app(s, PLATFORM_APP_DEPLOY_FAILED, a->guid, sched__app_name(s, a->guid));
    /* no more of the new droplet: replacements under way stop, instances already on it are
     * replaced by the old droplet's, one at a time */
    for (size_t i = 0; i < a->nprocs; i++)
        for (size_t j = 0; j < a->procs[i]->nslots; j++) {
            struct sched_slot *slot = a->procs[i]->slots[j];
            if (slot->replacement == si)
                slot->replacement = NULL;
            else if (slot->replacement)
                sched__stop_inst(s, slot->replacement);
            if (slot->cur)
                slot->cur->shadow = strcmp(slot->cur->droplet, a->deploy_from) ? slot : NULL;
        }
    a->rolling = true;
    if (!s->shutting_down)
        sched__converge(s, a); /* the first replacement back starts now */
    return true;
}

/* A task takes no traffic: running is only told; its end is its record's (task_ended). */
static void sched__task_state(struct scheduler *s, struct sched_inst *si, enum instance_state state,
                              const struct instance_exit *ex)
{
    const char *name = si->type + strlen("task/");
    if (state == INSTANCE_RUNNING) {
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT, "Task %s (%s) is running", name,
                     si->guid);
        return;
    }
    if (state != INSTANCE_DOWN && state != INSTANCE_CRASHED)
        return;
    sched__inst_unlink(s, si);
    struct scheduler_task_end end = {.stopped = state == INSTANCE_DOWN,
                                     .exit_status = ex ? ex->exit_status : -1,
                                     .term_signal = ex ? ex->term_signal : 0,
                                     .reason = ex && ex->reason ? ex->reason : "exited"};
    if (end.stopped)
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT, "Task %s (%s) was stopped", name,
                     si->guid);
    else if (end.term_signal)
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT,
                     "Task %s (%s) was killed by signal %d (%s)", name, si->guid, end.term_signal,
                     end.reason);
    else
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT,
                     "Task %s (%s) exited with status %d", name, si->guid, end.exit_status);
    if (s->task_ended)
        s->task_ended(s->task_ended_ctx, si->app_guid, si->guid, &end);
    free(si);
}

static void sched__on_state(void *ctx, struct cellc_inst *inst, enum instance_state state,
                            const struct instance_exit *ex)
{
    struct scheduler *s = ctx;
    struct sched_inst *si = cellc_inst_user_data(inst);
    if (!si)
        return;
    if (si->task) {
        sched__task_state(s, si, state, ex);
        return;
    }
    if (state == INSTANCE_RUNNING) {
        si->ready = true;
        start_trace("scheduler: running");
        struct cellc_inst_info where;
        cellc_inst_info(inst, &where); /* a remote cell says its address once it has one */
        if (where.addr[0])
            snprintf(si->addr, sizeof si->addr, "%s", where.addr);
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT,
                     "Instance %d of %s (%s) is running at %s", si->index, si->type, si->guid,
                     si->addr);
        struct sched_slot *slot = si->slot;
        if (slot && slot->cur == si)
            slot->healthy_since_ms = time_now_ms();
        if (sched__routable(si))
            sched__routed(s, si);
        else
            logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT,
                         "Instance %d of %s takes requests once its readiness check passes",
                         si->index, si->type);
        return;
    }
    if (state != INSTANCE_DOWN && state != INSTANCE_CRASHED)
        return;
    sched__on_final(s, si, state, ex);
}

/* The instance became routable (RUNNING, and ready when it has a readiness check): it joins
 * the route table, and a rolling replacement takes over its slot now, not before, so that a
 * deploy never leaves a slot with nothing to route to. */
static void sched__routed(struct scheduler *s, struct sched_inst *si)
{
    struct sched_slot *slot = si->slot;
    sched__ready_event(s, si, true);
    if (slot && slot->replacement == si) {
        /* a rolling replacement is ready: the old instance goes, then the next slot */
        struct sched_inst *old = slot->cur;
        slot->cur = si;
        slot->replacement = NULL;
        slot->healthy_since_ms = time_now_ms();
        slot->crash_count = 0;
        sched__stop_inst(s, old);
        struct sched_app *a = sched__app(s, si->app_guid, false);
        if (a)
            sched__converge(s, a);
    }
}

/* A RUNNING instance's readiness check changed its result: out of the route table while it
 * fails, back when it passes; never a restart (Cloud Foundry's readiness checks). */
static void sched__on_readiness(void *ctx, struct cellc_inst *inst, bool ready)
{
    struct scheduler *s = ctx;
    struct sched_inst *si = cellc_inst_user_data(inst);
    if (!si || si->readiness_ok == ready)
        return;
    bool was = sched__routable(si);
    si->readiness_ok = ready;
    if (!si->ready || si->phase != SCHED_INST_LIVE || was == sched__routable(si))
        return;
    if (ready) {
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT,
                     "Instance %d of %s is ready: it takes requests", si->index, si->type);
        sched__routed(s, si);
    } else {
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_ERR,
                     "Instance %d of %s is not ready (its readiness check failed): it takes no "
                     "requests until the check passes again; it is not restarted",
                     si->index, si->type);
        sched__ready_event(s, si, false);
        /* its process runs on: the requests in flight to it finish, as for a drain */
        sched__draining_event(s, si, ++s->next_drain_id);
    }
}

static void sched__on_final(struct scheduler *s, struct sched_inst *si, enum instance_state state,
                            const struct instance_exit *ex)
{
    /* final: the executor frees inst when we return */
    if (sched__routable(si))
        sched__ready_event(s, si, false);
    sched__inst_unlink(s, si);
    struct sched_slot *slot = si->slot;
    if (state == INSTANCE_CRASHED || (slot && slot->cur == si)) {
        int status = ex ? ex->exit_status : -1;
        int sig = ex ? ex->term_signal : 0;
        const char *reason = ex && ex->reason ? ex->reason : "exited";
        if (slot && slot->cur == si) {
            slot->cur = NULL;
            int64_t now = time_now_ms();
            slot->crash_count = scheduler_crash_count_next(
                slot->crash_count, si->ready ? slot->healthy_since_ms : 0, now);
            slot->crashed_at_ms = now;
            slot->last_exit_status = status;
            slot->last_exit_signal = sig;
            int64_t delay = scheduler_crash_delay_ms(slot->crash_count);
            slot->restart_at_mono = time_mono_ms() + delay;
            if (sig)
                logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_ERR,
                             "Instance %d of %s crashed: killed by signal %d (%s); crash %d, "
                             "restart in %lld s",
                             si->index, si->type, sig, reason, slot->crash_count,
                             (long long)(delay / 1000));
            else
                logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_ERR,
                             "Instance %d of %s crashed: exit status %d (%s); crash %d, restart "
                             "in %lld s",
                             si->index, si->type, status, reason, slot->crash_count,
                             (long long)(delay / 1000));
            struct platform_event ev = {.type = PLATFORM_APP_CRASHED,
                                         .app_guid = si->app_guid,
                                         .app_name = sched__app_name(s, si->app_guid),
                                         .process_type = si->type,
                                         .index = si->index,
                                         .instance_guid = si->guid,
                                         .exit_status = status,
                                         .exit_signal = sig,
                                         .reason = reason,
                                         .crash_count = slot->crash_count};
            sched__emit(s, &ev);
            if (!s->shutting_down)
                sched__arm_timer(s);
        } else if (slot && slot->replacement == si &&
                   sched__deploy_failed(s, si, reason, status, sig)) {
            /* the deployment is given up: the old instances keep serving the old droplet */
        } else if (slot && slot->replacement == si) {
            /* the rolling replacement failed: the old instance keeps serving and is replaced
             * again later, with the crash backoff, so a passing problem (a port taken in
             * between) heals and a lasting one does not spin */
            slot->replacement = NULL;
            if (slot->cur)
                slot->cur->shadow = slot;
            slot->crash_count = scheduler_crash_count_next(slot->crash_count, 0, time_now_ms());
            int64_t delay = scheduler_crash_delay_ms(slot->crash_count);
            slot->restart_at_mono = time_mono_ms() + (delay < 500 ? 500 : delay);
            slot->last_exit_status = status;
            slot->last_exit_signal = sig;
            logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_ERR,
                         "Rolling restart: the new instance %d crashed (%s); instance %d keeps "
                         "serving, trying again in %lld s",
                         si->index, reason, si->index,
                         (long long)((delay < 500 ? 500 : delay) / 1000));
            if (!s->shutting_down)
                sched__arm_timer(s);
        }
    } else {
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT, "Instance %d of %s stopped",
                     si->index, si->type);
    }
    free(si);
}

/* ---- starting instances --------------------------------------------------------------------- */

/* The log source of an instance: APP/FUNC/NAME/n for a function (one pushed on its own, or
 * one inside an app, named by its process type), else APP/PROC/TYPE/n. */
static char *sched__tag(const struct sched_app *a, const char *type, bool function, int index)
{
    char up[64];
    bool alone = !strcmp(a->kind, "function");
    const char *src = alone ? a->name : type;
    size_t i = 0;
    for (; src[i] && i < sizeof up - 1; i++)
        up[i] = (char)toupper((unsigned char)src[i]);
    up[i] = '\0';
    return xasprintf("APP/%s/%s/%d", alone || function ? "FUNC" : "PROC", up, index);
}

/* The folder name below dirfd, made when missing, opened without following a symlink: a
 * droplet is the tenant's (its buildpack wrote it), and a link there must not lead a write
 * of the platform's out of it. -errno on failure (-ELOOP or -ENOTDIR for a link). */
static int sched__open_dir_below(int dirfd, const char *name)
{
    if (mkdirat(dirfd, name, 0755) < 0 && errno != EEXIST)
        return -errno;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* A function inside an app runs the function buildpacks' server from the app's droplet
 * (.skiff/function/, where a function buildpack's supply step puts it): a droplet staged
 * without one gets it here, before the function's first instance starts. The files are the
 * platform's, the same for every droplet; whatever is at their names already (a file, or a
 * link of the tenant's) is left alone, and nothing is written through a link. */
static int sched__function_servers(struct scheduler *s, const char *app_dir)
{
    static const char *const servers[] = {"function-python/lib/skiff_function.py",
                                          "function-node/lib/skiff_function.js"};
    if (!s->cfg.function_servers_dir)
        return -ENOENT;
    int app = open(app_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int skiff = app < 0 ? -errno : sched__open_dir_below(app, ".skiff");
    int dir = skiff < 0 ? skiff : sched__open_dir_below(skiff, "function");
    int rc = dir < 0 ? dir : 0;
    for (size_t i = 0; i < ARRAY_SIZE(servers) && rc == 0; i++) {
        const char *name = strrchr(servers[i], '/') + 1;
        int fd = openat(dir, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd < 0) {
            rc = errno == EEXIST ? 0 : -errno;
            continue;
        }
        char *from = xasprintf("%s/%s", s->cfg.function_servers_dir, servers[i]);
        char *text = NULL;
        size_t len = 0;
        rc = file_read(from, &text, &len);
        for (size_t done = 0; rc == 0 && done < len;) {
            ssize_t n = write(fd, text + done, len - done);
            if (n < 0 && errno != EINTR)
                rc = -errno;
            else if (n > 0)
                done += (size_t)n;
        }
        close(fd);
        if (rc < 0)
            unlinkat(dir, name, 0); /* a half-written server would be "there already" */
        free(text);
        free(from);
    }
    if (rc < 0)
        log_warning("cannot put the function servers into %s/.skiff/function: %s", app_dir,
                    skiff_strerror(rc));
    if (dir >= 0)
        close(dir);
    if (skiff >= 0)
        close(skiff);
    if (app >= 0)
        close(app);
    return rc;
}

static enum health_check_type sched__health(const char *t)
{
    if (t && !strcmp(t, "http"))
        return HEALTH_HTTP;
    if (t && !strcmp(t, "process"))
        return HEALTH_PROCESS;
    return HEALTH_PORT;
}

/* A process's check and log settings (store.h) into its launch (cell.h). */
static void sched__launch_checks(struct cell_launch *l, const struct store_process_checks *c)
{
    l->health_interval_ms = c->health_interval_s * 1000;
    l->health_timeout_ms = c->health_timeout_s * 1000;
    l->readiness = c->readiness_type != NULL;
    l->readiness_type = sched__health(c->readiness_type);
    l->readiness_endpoint = c->readiness_endpoint;
    l->readiness_interval_ms = c->readiness_interval_s * 1000;
    l->readiness_timeout_ms = c->readiness_timeout_s * 1000;
    l->log_rate_limited = c->log_rate_limited;
    l->log_rate_limit = c->log_rate_limit;
}

static void sched__make_token(struct scheduler *s, const char *app_guid, const char *instance_guid,
                              char *out, size_t size)
{
    if (s->cfg.make_instance_token)
        s->cfg.make_instance_token(s->cfg.token_ctx, app_guid, instance_guid, out, size);
    else
        snprintf(out, size, "none");
}

/* A start that failed (no port, nothing to run from) is retried like a crash, with backoff,
 * so a passing problem heals without anyone asking and a lasting one does not spin. */
static void sched__retry_later(struct scheduler *s, struct sched_slot *slot)
{
    slot->crash_count++;
    int64_t delay = scheduler_crash_delay_ms(slot->crash_count);
    slot->restart_at_mono = time_mono_ms() + (delay < 1000 ? 1000 : delay);
    slot->crashed_at_ms = time_now_ms();
    sched__arm_timer(s);
}

/* Starts si (its app_guid, type, tag and index filled in) as a process of app on drop running
 * command, with the environment an instance of the app gets (its routes and service bindings
 * read now); si gets its guid, droplet, slot, address and instance and joins the live ones.
 * 0, or a negative errno once the app's log says why, naming si as `what` ("instance 2 of
 * web"), with its process's checks (NULL: none but health) and sidecars: -EAGAIN when the store,
 * the bindings or the slots cannot serve now (then says what follows: "; trying again later"), else
 * the cell's error (cellc_launch). */
static int sched__launch(struct scheduler *s, const struct store_app *app,
                         const struct store_droplet *drop, struct sched_inst *si,
                         const char *command, int memory, enum health_check_type health,
                         const struct store_process_checks *checks,
                         const struct store_sidecar *sidecars, size_t n_sidecars, const char *what,
                         const char *then)
{
    /* its VCAP_APPLICATION names its routes: an instance told it has none would be wrong for
     * as long as it runs, so a store that cannot say is a start failure, tried again later */
    struct store_route *routes = NULL;
    size_t nr = 0;
    if (store_route_list(s->store, app->guid, &routes, &nr) < 0) {
        logs_appendf(s->logs, app->guid, "CELL/0", LOGS_ERR,
                     "Cannot start %s: cannot read the app's routes from the store (see "
                     "skiffd's output)%s",
                     what, then);
        return -EAGAIN;
    }
    /* the services it is bound to: an instance told it has none would be wrong too */
    char *vcap_services = NULL;
    if (s->cfg.vcap_services &&
        !(vcap_services = s->cfg.vcap_services(s->cfg.vcap_services_ctx, app->guid))) {
        logs_appendf(s->logs, app->guid, "CELL/0", LOGS_ERR,
                     "Cannot start %s: cannot read the app's service bindings (see skiffd's "
                     "output)%s",
                     what, then);
        store_route_list_free(routes, nr);
        return -EAGAIN;
    }
    char **uris = xcalloc(nr + 1, sizeof *uris);
    for (size_t i = 0; i < nr; i++)
        uris[i] = xasprintf("%s%s", routes[i].host, routes[i].path);
    store_route_list_free(routes, nr);
    if (!si->guid[0])
        uuid_generate_v4(si->guid);
    snprintf(si->droplet, sizeof si->droplet, "%s", drop->guid);
    const char **user = xcalloc(2 * app->n_env + 1, sizeof *user);
    for (size_t i = 0; i < app->n_env; i++) {
        user[2 * i] = app->env[i].name;
        user[2 * i + 1] = app->env[i].value;
    }
    char token[200];
    sched__make_token(s, app->guid, si->guid, token, sizeof token);
    struct instance_sidecar *spec_sidecars = xcalloc(n_sidecars + 1, sizeof *spec_sidecars);
    for (size_t i = 0; i < n_sidecars; i++)
        spec_sidecars[i] = (struct instance_sidecar){.name = sidecars[i].name,
                                                     .command = sidecars[i].command,
                                                     .memory_mb = sidecars[i].memory_mb};
    struct cell_launch l = {.app_guid = app->guid,
                            .app_name = app->name,
                            .process_type = si->type,
                            .index = si->index,
                            .instance_guid = si->guid,
                            .droplet_guid = drop->guid,
                            .droplet_digest = drop->digest,
                            .droplet_blobs = drop->blobs,
                            .droplet_path = drop->path,
                            .command = command,
                            .memory_mb = memory,
                            .disk_mb = app->disk_mb,
                            .health = health,
                            .health_endpoint = app->health_check_http_endpoint,
                            .start_timeout_s = app->timeout,
                            .sidecars = spec_sidecars,
                            .n_sidecars = n_sidecars,
                            .uris = (const char *const *)uris,
                            .events_url = s->events_url,
                            .events_token = token,
                            .user_env = user,
                            .vcap_services_json = vcap_services};
    if (checks)
        sched__launch_checks(&l, checks);
    si->readiness = l.readiness;
    char why[512] = "";
    start_trace("scheduler: cellc_launch");
    int rc = cellc_launch(s->cells, &l, (uint64_t)(memory > 0 ? memory : 0) << 20, &si->inst,
                          si->addr, why, sizeof why);
    start_trace("scheduler: cellc_launch returned");
    free(vcap_services);
    free(spec_sidecars);
    strv_free(uris);
    free(user);
    if (rc == -EINPROGRESS)
        return rc; /* its droplet is on its way to this host: the app's log says so */
    if (rc < 0) {
        logs_appendf(s->logs, app->guid, "CELL/0", LOGS_ERR, "Cannot start %s: %s%s", what, why,
                     rc == -EAGAIN ? then : "");
        return rc;
    }
    struct cellc_inst_info where;
    cellc_inst_info(si->inst, &where);
    si->port = where.port;
    if (!si->addr[0])
        snprintf(si->addr, sizeof si->addr, "cell %.8s", where.cell);
    cellc_inst_set_user_data(si->inst, si);
    si->next = s->insts;
    s->insts = si;
    return 0;
}

/* Starts one instance for slot; returns it or NULL (and logs why). */
static struct sched_inst *sched__start(struct scheduler *s, struct sched_app *a,
                                       const struct store_app *app,
                                       const struct store_droplet *drop,
                                       const struct store_process *proc, struct sched_slot *slot)
{
    const char *command = proc->command;
    if (!command && !strcmp(proc->type, "web"))
        command = app->command;
    json_t *types = drop->process_types_json ? json_loads(drop->process_types_json, 0, NULL) : NULL;
    if (!command)
        command = json_string_value(json_object_get(types, proc->type));
    char *command_copy = command ? xstrdup(command) : NULL;
    json_decref(types);
    types = NULL;
    command = command_copy;
    if (!command || !*command) {
        if (!slot->start_failed)
            logs_appendf(s->logs, app->guid, "CELL/0", LOGS_ERR,
                         "Cannot start process %s: no command (add a Procfile, a start command "
                         "with `skiff push -c`, or `command:` in the manifest)",
                         proc->type);
        slot->start_failed = true;
        free(command_copy);
        return NULL;
    }
    struct store_sidecar *sidecars = NULL;
    size_t n_sidecars = 0;
    if (store_app_sidecars(app, proc->type, &sidecars, &n_sidecars) < 0) {
        logs_appendf(s->logs, app->guid, "CELL/0", LOGS_ERR,
                     "Cannot start instance %d of %s: the app's sidecars cannot be read (set "
                     "them again: `skiff push` with the manifest)",
                     slot->index, proc->type);
        free(command_copy);
        sched__retry_later(s, slot);
        return NULL;
    }
    bool function = store_process_is_function(proc);
    bool web = !strcmp(proc->type, "web");
    /* only web processes must listen; others are checked alive */
    enum health_check_type health = web ? sched__health(app->health_check_type) : HEALTH_PROCESS;
    if (!strcmp(a->kind, "function"))
        health = sched__health(app->health_check_type);
    else if (function)
        health = HEALTH_PORT; /* it serves its events on $PORT */
    else if (!web && s->listens && s->listens(s->listens_ctx, app->guid, app->name, proc->type))
        health = HEALTH_PORT;
    struct sched_inst *si = xcalloc(1, sizeof *si);
    si->s = s;
    snprintf(si->app_guid, sizeof si->app_guid, "%s", app->guid);
    snprintf(si->type, sizeof si->type, "%s", proc->type);
    char *tag = sched__tag(a, proc->type, function, slot->index);
    snprintf(si->tag, sizeof si->tag, "%s", tag);
    free(tag);
    si->index = slot->index;
    char what[128];
    if (function)
        snprintf(what, sizeof what, "function %s", proc->type);
    else
        snprintf(what, sizeof what, "instance %d of %s", slot->index, proc->type);
    int memory = proc->memory_mb ? proc->memory_mb : app->memory_mb;
    char *with = NULL; /* "" or " with sidecars a, b" for the start's log line */
    for (size_t i = 0; i < n_sidecars; i++) {
        char *w = xasprintf("%s%s%s", i ? with : " with sidecar",
                            i                ? ", "
                            : n_sidecars > 1 ? "s "
                                             : " ",
                            sidecars[i].name);
        free(with);
        with = w;
    }
    int rc = sched__launch(s, app, drop, si, command, memory, health, &proc->checks, sidecars,
                           n_sidecars, what, "; trying again later");
    store_sidecars_free(sidecars, n_sidecars);
    if (rc < 0) {
        free(with);
        free(si);
        free(command_copy);
        if (rc != -EINPROGRESS) /* else started once its droplet is here (converged again) */
            sched__retry_later(s, slot);
        return NULL;
    }
    logs_appendf(s->logs, app->guid, "CELL/0", LOGS_OUT,
                 "Starting instance %d of %s (%s) at %s: %s%s", slot->index, proc->type, si->guid,
                 si->addr, command, with ? with : "");
    free(with);
    free(command_copy);
    return si;
}

/* ---- droplets ------------------------------------------------------------------------------- */

/* An app waiting for its droplet's layers (cell_layers_get), or whose layers could not be had
 * lately (SCHED_LAYERS_RETRY_MS: its starts fail meanwhile, naming the layer, and back off). */
struct sched_layers_wait {
    struct scheduler *s;
    char app_guid[37];
    char *droplet_dir;
    uint64_t failed_ms;
    struct sched_layers_wait *next;
};
#define SCHED_LAYERS_RETRY_MS 5000

static void sched__local_ready(struct scheduler *s, const char *app_guid);

static bool sched__layers_failed_lately(struct scheduler *s, const char *droplet_dir)
{
    uint64_t now = uv_now(s->loop);
    for (struct sched_layers_wait **pp = &s->layers_failed, *w; (w = *pp);) {
        if (now - w->failed_ms >= SCHED_LAYERS_RETRY_MS) {
            *pp = w->next;
            free(w->droplet_dir);
            free(w);
            continue;
        }
        if (!strcmp(w->droplet_dir, droplet_dir))
            return true;
        pp = &w->next;
    }
    return false;
}

static void sched__layers_ready(void *ctx, int rc, const char *why)
{
    struct sched_layers_wait *w = ctx;
    struct scheduler *s = w->s;
    for (struct sched_layers_wait **pp = &s->layer_waits; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    if (rc < 0) {
        logs_appendf(s->logs, w->app_guid, "CELL/0", LOGS_OUT,
                     "The droplet's image layers could not be read from the blob store: %s",
                     why ? why : skiff_strerror(rc));
        w->failed_ms = uv_now(s->loop);
        w->next = s->layers_failed;
        s->layers_failed = w;
    }
    sched__local_ready(s, w->app_guid);
    if (rc == 0) {
        free(w->droplet_dir);
        free(w);
    }
}

/* An image droplet's layers on this host (cell_layers_get: the one place they are made sure
 * of): 0 when they are here (or nothing can be done now: the start fails, naming the layer,
 * and backs off), -EINPROGRESS while they are being read from the blob store (the app is
 * converged again once they are). */
static int sched__layers(struct scheduler *s, const char *app_guid, const char *droplet_dir)
{
    if (!s->layers || !image_droplet_is_image(droplet_dir) ||
        sched__layers_failed_lately(s, droplet_dir))
        return 0;
    for (struct sched_layers_wait *w = s->layer_waits; w; w = w->next)
        if (!strcmp(w->app_guid, app_guid) && !strcmp(w->droplet_dir, droplet_dir))
            return -EINPROGRESS;
    struct sched_layers_wait *w = xcalloc(1, sizeof *w);
    w->s = s;
    snprintf(w->app_guid, sizeof w->app_guid, "%s", app_guid);
    w->droplet_dir = xstrdup(droplet_dir);
    char err[600] = "";
    int rc = cell_layers_get(s->layers, droplet_dir, sched__layers_ready, w, err, sizeof err);
    if (rc == -EINPROGRESS) {
        logs_appendf(s->logs, app_guid, "CELL/0", LOGS_OUT,
                     "Reading the image's layers from the blob store");
        w->next = s->layer_waits;
        s->layer_waits = w;
        return rc;
    }
    if (rc < 0)
        logs_appendf(s->logs, app_guid, "CELL/0", LOGS_OUT, "The droplet's image layers: %s", err);
    free(w->droplet_dir);
    free(w);
    return 0;
}

/* What local starts of app_guid waited for (its droplet, its layers) is here, or could not
 * be had: they are tried again (a failure: the start fails naming it, and backs off). */
static void sched__local_ready(struct scheduler *s, const char *app_guid)
{
    if (s->shutting_down)
        return;
    if (s->leading)
        scheduler_app_changed(s, app_guid);
    cellc_local_droplet_ready(s->cells, app_guid); /* the starts another leader asked */
}

static void sched__droplet_ready(void *ctx, const char *app_guid, int rc)
{
    (void)rc;
    sched__local_ready(ctx, app_guid);
}

/* The droplet's record. Its folder is brought to this host only for an instance placed here
 * (sched__local_droplet): a leader that places it on other cells copies nothing. */
static int sched__droplet(struct scheduler *s, const char *guid, struct store_droplet **out)
{
    return store_droplet_get(s->store, guid, out);
}

/* Whether the launch is of a function inside an app (its droplet needs the function
 * servers), as the store says. */
static bool sched__launch_is_function(struct scheduler *s, const struct cell_launch *l)
{
    struct store_app *app = NULL;
    if (store_app_get(s->store, l->app_guid, &app) < 0)
        return false;
    const struct store_process *p = store_app_process(app, l->process_type);
    bool function = p && store_process_is_function(p);
    store_app_free(app);
    return function;
}

/* cellc's local_droplet: the one place a local start finds its droplet's folder. It is
 * brought here from the blob store when another host made it (blob_droplet_local: the one
 * answer to "where is this droplet here?"), then an image's layers (sched__layers) and a
 * function's servers. -EINPROGRESS while on its way: sched__local_ready follows. */
static int sched__local_droplet(void *ctx, const struct cell_launch *l, char **dir, char *err,
                                size_t errsize)
{
    struct scheduler *s = ctx;
    char *local = NULL;
    int rc = 0;
    if (s->cfg.blobs)
        rc = blob_droplet_local(s->cfg.blobs, s->loop, l->droplet_path, l->droplet_digest,
                                l->app_guid, sched__droplet_ready, s, &local);
    else
        local = xstrdup(l->droplet_path ? l->droplet_path : "");
    if (rc == -EINPROGRESS) {
        logs_appendf(s->logs, l->app_guid, "CELL/0", LOGS_OUT,
                     "Fetching droplet %s (%s) from the blob store", l->droplet_guid,
                     l->droplet_digest ? l->droplet_digest : "?");
        snprintf(err, errsize, "droplet %s is on its way from the blob store", l->droplet_guid);
        return rc;
    }
    struct cell_launch here = *l;
    here.droplet_path = local;
    here.blob_urls = NULL;
    rc = cell_droplet_get(NULL, &here, NULL, NULL, dir, err, errsize);
    free(local);
    if (rc < 0)
        return rc;
    if (sched__layers(s, l->app_guid, *dir) == -EINPROGRESS) {
        snprintf(err, errsize, "the image's layers are on their way from the blob store");
        free(*dir);
        *dir = NULL;
        return -EINPROGRESS;
    }
    if (sched__launch_is_function(s, l)) {
        char *app_dir = xasprintf("%s/app", *dir);
        rc = sched__function_servers(s, app_dir);
        free(app_dir);
        if (rc < 0) {
            snprintf(err, errsize,
                     "cannot put the function server into the droplet (see "
                     "skiffd's output)");
            free(*dir);
            *dir = NULL;
            return rc;
        }
    }
    return 0;
}

/* ---- converging ----------------------------------------------------------------------------- */

static void sched__converge_app(struct scheduler *s, struct sched_app *a,
                                const struct store_app *app)
{
    bool started = app && !strcmp(app->state, "STARTED") && app->droplet_guid;
    int starts = 0;
    struct store_droplet *drop = NULL;
    int drop_rc = started ? sched__droplet(s, app->droplet_guid, &drop) : 0;
    if (drop_rc < 0)
        started = false;
    if (app) {
        snprintf(a->space, sizeof a->space, "%s", app->space_guid);
        free(a->name);
        a->name = xstrdup(app->name);
        free(a->kind);
        a->kind = xstrdup(app->kind);
    }
    /* processes that are gone or not wanted lose their slots */
    for (size_t i = 0; i < a->nprocs; i++) {
        struct sched_proc *p = a->procs[i];
        const struct store_process *sp = app ? store_app_process(app, p->type) : NULL;
        p->desired = started && sp ? sp->instances : 0;
        while (p->nslots > (size_t)p->desired) {
            sched__slot_free(s, p->slots[--p->nslots]);
        }
    }
    if (started) {
        for (size_t i = 0; i < app->n_processes; i++) {
            const struct store_process *sp = &app->processes[i];
            if (sp->instances <= 0 && !sched__proc(a, sp->type, false))
                continue;
            struct sched_proc *p = sched__proc(a, sp->type, true);
            p->desired = sp->instances;
            p->function = store_process_is_function(sp);
            while (p->nslots < (size_t)p->desired) {
                p->slots = xrealloc(p->slots, (p->nslots + 1) * sizeof *p->slots);
                struct sched_slot *slot = xcalloc(1, sizeof *slot);
                slot->index = (int)p->nslots;
                slot->last_exit_status = -1;
                p->slots[p->nslots++] = slot;
            }
            int64_t now = time_mono_ms();
            bool rolling_busy = false;
            for (size_t j = 0; j < p->nslots; j++) {
                struct sched_slot *slot = p->slots[j];
                if (slot->cur || slot->replacement)
                    rolling_busy |= slot->replacement != NULL;
                if (!slot->cur && !slot->replacement && !slot->start_failed &&
                    (!slot->restart_at_mono || slot->restart_at_mono <= now)) {
                    if (starts++ >= SCHED_STARTS_PER_TURN) {
                        slot->start_soon = true; /* the next turn's */
                        continue;
                    }
                    slot->start_soon = false;
                    slot->restart_at_mono = 0;
                    struct sched_inst *si = sched__start(s, a, app, drop, sp, slot);
                    if (si) {
                        si->slot = slot;
                        slot->cur = si;
                    }
                }
            }
            /* rolling: one replacement at a time, for slots whose instance predates it */
            if (a->rolling && !rolling_busy) {
                bool started_one = false;
                for (size_t j = 0; j < p->nslots && !started_one; j++) {
                    struct sched_slot *slot = p->slots[j];
                    if (slot->cur && slot->cur->shadow == slot &&
                        (!slot->restart_at_mono || slot->restart_at_mono <= now)) {
                        slot->restart_at_mono = 0;
                        slot->cur->shadow = NULL;
                        struct sched_inst *si = sched__start(s, a, app, drop, sp, slot);
                        if (si) {
                            si->slot = slot;
                            slot->replacement = si;
                            started_one = true;
                        }
                    }
                }
            }
        }
        bool any_left = false;
        for (size_t i = 0; i < a->nprocs; i++)
            for (size_t j = 0; j < a->procs[i]->nslots; j++)
                if (a->procs[i]->slots[j]->cur && a->procs[i]->slots[j]->cur->shadow)
                    any_left = true;
        if (a->rolling && !any_left) {
            bool busy = false;
            for (size_t i = 0; i < a->nprocs; i++)
                for (size_t j = 0; j < a->procs[i]->nslots; j++)
                    if (a->procs[i]->slots[j]->replacement)
                        busy = true;
            if (!busy) {
                a->rolling = false;
                if (a->deploy == SCHED_DEPLOY_ACTIVE) {
                    a->deploy = SCHED_DEPLOY_DONE;
                    logs_appendf(s->logs, a->guid, "CELL/0", LOGS_OUT,
                                 "Deployment done: every instance runs droplet %s", a->deploy_to);
                }
            }
        }
    }
    store_droplet_free(drop);
    if (starts > SCHED_STARTS_PER_TURN)
        sched__arm_timer(s); /* the rest on the next turns */
}

static void sched__converge(struct scheduler *s, struct sched_app *a)
{
    if (s->shutting_down || !s->leading)
        return;
    struct store_app *app = NULL;
    int rc = store_app_get(s->store, a->guid, &app);
    if (rc == -ENOENT) {
        sched__app_remove(s, a);
        return;
    }
    if (rc < 0)
        return;
    sched__converge_app(s, a, app);
    bool empty = true;
    for (size_t i = 0; i < a->nprocs; i++)
        if (a->procs[i]->nslots)
            empty = false;
    /* stopped apps keep no record, so 1,000 stopped apps cost nothing here */
    if (empty)
        sched__app_remove(s, a);
    store_app_free(app);
}

static void sched__tick(uv_timer_t *t)
{
    struct scheduler *s = t->data;
    int64_t now = time_mono_ms();
    struct sched_app *a = s->apps;
    while (a) {
        struct sched_app *next = a->next;
        bool due = false;
        for (size_t i = 0; i < a->nprocs; i++)
            for (size_t j = 0; j < a->procs[i]->nslots; j++) {
                int64_t at = a->procs[i]->slots[j]->restart_at_mono;
                if ((at && at <= now) || a->procs[i]->slots[j]->start_soon)
                    due = true;
            }
        if (due)
            sched__converge(s, a);
        a = next;
    }
    sched__drain_expire(s, now);
    sched__arm_timer(s);
}

/* ---- life ----------------------------------------------------------------------------------- */

static void sched__adopt(void *ctx, struct cellc_inst *inst, const struct cellc_found *f);

int scheduler_new(uv_loop_t *loop, const struct scheduler_config *cfg,
                  const struct executor_config *excfg, struct store *store, struct logs *logs,
                  struct scheduler **out)
{
    struct scheduler *s = xcalloc(1, sizeof *s);
    struct cellc_config cc = cfg->cells ? *cfg->cells : (struct cellc_config){.local_cell = true};
    cc.executor = excfg;
    cc.home = cfg->home;
    cc.local_droplet = sched__local_droplet;
    cc.local_droplet_ctx = s;
    struct cellc_callbacks cb = {.on_output = sched__on_output,
                                 .on_state = sched__on_state,
                                 .on_readiness = sched__on_readiness,
                                 .on_found = sched__adopt,
                                 .ctx = s};
    char err[512] = "";
    int rc = cellc_new(loop, &cc, &cb, &s->cells, err, sizeof err);
    if (rc < 0) {
        log_error("%s", err);
        free(s);
        return rc;
    }
    s->loop = loop;
    s->cfg = *cfg;
    if (cfg->blobs && cc.local_cell) {
        if (cell_layers_new(loop, cfg->home,
                            excfg->uid_base ? excfg->uid_base : CONTAINER_DEFAULT_UID_BASE, NULL,
                            cellc_executor(s->cells), &s->layers) == 0)
            cell_layers_read_from(s->layers, cfg->blobs);
        else
            log_warning("image droplets staged on other hosts cannot run here: this skiffd's "
                        "image store could not be opened");
    }
    s->home = xstrdup(cfg->home);
    s->api_url = xstrdup(cfg->api_url ? cfg->api_url : "");
    s->events_url = xasprintf("%s/v1", s->api_url);
    s->cfg.home = s->home;
    s->cfg.api_url = s->api_url;
    s->cfg.function_servers_dir =
        cfg->function_servers_dir ? xstrdup(cfg->function_servers_dir) : NULL;
    s->store = store;
    s->logs = logs;
    s->leading = true;
    s->restarts_stale = true; /* read once leading, as when leading begins */
    s->drain_timeout_ms =
        cfg->drain_timeout_ms > 0 ? cfg->drain_timeout_ms : SCHEDULER_DRAIN_TIMEOUT_MS;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    uv_timer_init(loop, &s->settle);
    s->settle.data = s;
    *out = s;
    return 0;
}

/* The slot an adopted instance belongs in, when the store still wants it there: same app
 * (STARTED), same droplet, a process type that runs at least index + 1 instances. */
static struct sched_slot *sched__adoption_slot(struct scheduler *s, const struct cellc_found *sp,
                                               struct sched_app **app_out, char droplet[37])
{
    struct store_app *app = NULL;
    struct store_droplet *drop = NULL;
    struct sched_slot *slot = NULL;
    if (!s->leading || !sp->app_guid || !sp->process_type || sp->index < 0 ||
        store_app_get(s->store, sp->app_guid, &app) < 0)
        return NULL;
    const struct store_process *proc = store_app_process(app, sp->process_type);
    if (strcmp(app->state, "STARTED") || !app->droplet_guid || !proc ||
        proc->instances <= sp->index || sched__droplet(s, app->droplet_guid, &drop) < 0)
        goto out;
    /* a local leftover names its folder: the droplet's here (as it runs from it, it is here) */
    char *local = NULL;
    if (!sp->droplet_guid && s->cfg.blobs)
        blob_droplet_local(s->cfg.blobs, s->loop, drop->path, drop->digest, drop->app_guid, NULL,
                           NULL, &local);
    char *app_dir = xasprintf("%s/app", local ? local : drop->path);
    bool same = sp->droplet_guid ? !strcmp(sp->droplet_guid, drop->guid)
                                 : sp->app_dir && !strcmp(app_dir, sp->app_dir);
    free(app_dir);
    free(local);
    if (!same)
        goto out;
    struct sched_app *a = sched__app(s, app->guid, true);
    snprintf(a->space, sizeof a->space, "%s", app->space_guid);
    free(a->name);
    a->name = xstrdup(app->name);
    free(a->kind);
    a->kind = xstrdup(app->kind);
    struct sched_proc *p = sched__proc(a, proc->type, true);
    p->desired = proc->instances;
    p->function = store_process_is_function(proc);
    while (p->nslots <= (size_t)sp->index) {
        p->slots = xrealloc(p->slots, (p->nslots + 1) * sizeof *p->slots);
        struct sched_slot *fresh = xcalloc(1, sizeof *fresh);
        fresh->index = (int)p->nslots;
        fresh->last_exit_status = -1;
        p->slots[p->nslots++] = fresh;
    }
    slot = p->slots[sp->index];
    if (slot->cur)
        slot = NULL; /* two instances for one index: the one adopted first keeps it */
    *app_out = a;
    snprintf(droplet, 37, "%s", drop->guid);
out:
    store_droplet_free(drop);
    store_app_free(app);
    return slot;
}

/* A remote cell's instance carries the blob digest of the droplet it says it runs (the
 * store's record of that droplet), so that the grant the leader that started it wrote is
 * withdrawn when it ends, whether it is kept or stopped now. */
static void sched__adopted_digest(struct scheduler *s, struct cellc_inst *inst,
                                  const struct cellc_found *sp)
{
    struct store_droplet *drop = NULL;
    if (cellc_inst_local(inst) || !sp->droplet_guid)
        return;
    if (store_droplet_get(s->store, sp->droplet_guid, &drop) == 0 && drop && drop->digest)
        cellc_inst_set_digest(inst, drop->digest);
    store_droplet_free(drop);
}

/* An instance found running: one a previous skiffd left under its shim here, or one a cell
 * runs that this scheduler did not start (cell/client.h). */
static void sched__adopt(void *ctx, struct cellc_inst *inst, const struct cellc_found *sp)
{
    struct scheduler *s = ctx;
    struct sched_app *a = NULL;
    char droplet[37] = "";
    sched__adopted_digest(s, inst, sp);
    struct sched_slot *slot = sched__adoption_slot(s, sp, &a, droplet);
    if (!slot) {
        log_warning("stopping instance %s left by a previous skiffd: its app no "
                "longer wants it",
                sp->instance_guid);
        cellc_stop(inst); /* no user data: its end concerns nobody */
        return;
    }
    struct sched_inst *si = xcalloc(1, sizeof *si);
    si->s = s;
    si->inst = inst;
    snprintf(si->app_guid, sizeof si->app_guid, "%s", sp->app_guid);
    snprintf(si->type, sizeof si->type, "%s", sp->process_type);
    struct sched_proc *sproc = sched__proc(a, sp->process_type, false);
    char *tag = sched__tag(a, sp->process_type, sproc && sproc->function, sp->index);
    snprintf(si->tag, sizeof si->tag, "%s", tag);
    free(tag);
    snprintf(si->guid, sizeof si->guid, "%s", sp->instance_guid);
    snprintf(si->droplet, sizeof si->droplet, "%s", droplet);
    si->index = sp->index;
    si->port = sp->port;
    struct cellc_inst_info where;
    cellc_inst_info(inst, &where);
    snprintf(si->addr, sizeof si->addr, "%s", where.addr);
    if (!si->port)
        si->port = where.port;
    si->slot = slot;
    slot->cur = si;
    cellc_inst_set_user_data(inst, si);
    si->next = s->insts;
    s->insts = si;
    bool running = where.state == INSTANCE_RUNNING;
    if (cellc_inst_local(inst))
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT,
                     "Instance %d of %s (%s) on port %d was kept running across a restart of "
                     "skiffd%s",
                     si->index, si->type, si->guid, si->port,
                     running ? "" : "; checking its health again");
    else
        logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT,
                     "Instance %d of %s (%s) at %s runs on cell %.8s: taken over as it runs%s",
                     si->index, si->type, si->guid, si->addr, where.cell,
                     running ? "" : " (not running yet)");
    si->readiness = sp->readiness; /* its first result comes from the executor, soon */
    if (running) {
        si->ready = true;
        slot->healthy_since_ms = time_now_ms();
        if (sched__routable(si))
            sched__ready_event(s, si, true);
    }
}

static int sched__converge_all(struct scheduler *s);
static void sched__on_settled(uv_timer_t *t);

int scheduler_reconcile_all(struct scheduler *s)
{
    cellc_adopt_local(s->cells); /* not leading: each is stopped */
    if (!s->leading)
        return 0;
    /* the remote cells' instances are offered as their heartbeats come: converging waits for
     * them, so that what a cell runs is adopted, not started a second time */
    int settle = cellc_settle_ms(s->cells);
    if (settle > 0) {
        uv_timer_start(&s->settle, sched__on_settled, (uint64_t)settle, 0);
        return 0;
    }
    return sched__converge_all(s);
}

static void sched__on_settled(uv_timer_t *t)
{
    struct scheduler *s = t->data;
    if (!s->leading || s->shutting_down)
        return;
    int settle = cellc_settle_ms(s->cells);
    if (settle > 0)
        uv_timer_start(&s->settle, sched__on_settled, (uint64_t)settle, 0);
    else
        sched__converge_all(s);
}

static int sched__converge_all(struct scheduler *s)
{
    struct store_app **apps = NULL;
    size_t n = 0;
    int rc = store_app_list(s->store, &apps, &n);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(apps[i]->state, "STARTED") || !apps[i]->droplet_guid)
            continue;
        struct sched_app *a = sched__app(s, apps[i]->guid, true);
        sched__converge(s, a);
    }
    store_app_list_free(apps, n);
    return 0;
}

/* ---- leading (several skiffds on one store) ------------------------------------------------ */

void scheduler_set_leading(struct scheduler *s, bool leading)
{
    if (s->leading == leading)
        return;
    s->leading = leading;
    s->restarts_stale = true;
    cellc_set_leading(s->cells, leading); /* before anything stops: the cells keep theirs */
    if (leading) {
        scheduler_reconcile_all(s);
        return;
    }
    uv_timer_stop(&s->settle);
    /* held: what runs keeps running and routed until another skiffd is known to lead
     * (scheduler_hand_over) or this one leads again */
    if (s->apps)
        log_warning("this skiffd no longer leads: its instances keep running, and are given "
                    "to the next leader, or kept if this skiffd leads again");
}

/* The slot's instance goes on for the leader on the local cell (cellc_hand_over): out of
 * this scheduler's route table (as a draining one, so that routers let its requests in
 * flight finish) and forgotten here. */
static void sched__hand_over_inst(struct scheduler *s, struct sched_inst *si)
{
    if (!si || si->phase != SCHED_INST_LIVE ||
        !cellc_hand_over(si->inst, si->readiness, si->readiness_ok))
        return;
    if (sched__routable(si)) {
        sched__ready_event(s, si, false);
        sched__draining_event(s, si, ++s->next_drain_id);
    }
    if (si->slot && si->slot->cur == si)
        si->slot->cur = NULL;
    if (si->slot && si->slot->replacement == si)
        si->slot->replacement = NULL;
    logs_appendf(s->logs, si->app_guid, "CELL/0", LOGS_OUT,
                 "Instance %d of %s (%s) keeps running for the skiffd that leads now", si->index,
                 si->type, si->guid);
    sched__inst_unlink(s, si);
    free(si);
}

void scheduler_hand_over(struct scheduler *s)
{
    if (s->leading || s->shutting_down || !s->apps)
        return;
    for (struct sched_app *a = s->apps; a; a = a->next)
        for (size_t i = 0; i < a->nprocs; i++)
            for (size_t j = 0; j < a->procs[i]->nslots; j++) {
                sched__hand_over_inst(s, a->procs[i]->slots[j]->cur);
                sched__hand_over_inst(s, a->procs[i]->slots[j]->replacement);
            }
    /* what could not be handed over stops (each drains first); remote cells keep theirs */
    while (s->apps)
        sched__app_remove(s, s->apps);
}

bool scheduler_leading(const struct scheduler *s)
{
    return s->leading;
}

/* A droplet put into service through another skiffd (its API asked its own scheduler, which
 * does not lead): rolled out here once seen on two resyncs in a row, so that a deployment
 * this scheduler is told about in the meantime is not started twice. */
static bool sched__resync_droplet(struct scheduler *s, struct sched_app *a,
                                  const struct store_app *app)
{
    char from[37] = "";
    for (size_t i = 0; i < a->nprocs && !from[0]; i++)
        for (size_t j = 0; j < a->procs[i]->nslots && !from[0]; j++)
            if (a->procs[i]->slots[j]->cur)
                snprintf(from, sizeof from, "%s", a->procs[i]->slots[j]->cur->droplet);
    if (!from[0] || !strcmp(from, app->droplet_guid) || a->rolling ||
        a->deploy == SCHED_DEPLOY_ACTIVE) {
        a->stale_droplet[0] = '\0';
        return false;
    }
    if (strcmp(a->stale_droplet, app->droplet_guid)) {
        snprintf(a->stale_droplet, sizeof a->stale_droplet, "%s", app->droplet_guid);
        return false;
    }
    a->stale_droplet[0] = '\0';
    scheduler_app_deploy(s, app->guid, true);
    return true;
}

static bool sched__listed(struct store_app **apps, size_t n, const char *guid)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(apps[i]->guid, guid))
            return true;
    return false;
}

static void sched__take_restarts(struct scheduler *s);

int scheduler_resync(struct scheduler *s)
{
    if (!s->leading || s->shutting_down)
        return 0;
    if (s->restarts_stale)
        sched__take_restarts(s);
    struct store_app **apps = NULL;
    size_t n = 0;
    int rc = store_app_list(s->store, &apps, &n);
    if (rc < 0)
        return rc;
    for (size_t i = 0; i < n; i++) {
        bool wants = !strcmp(apps[i]->state, "STARTED") && apps[i]->droplet_guid;
        struct sched_app *a = sched__app(s, apps[i]->guid, wants);
        if (!a || (wants && sched__resync_droplet(s, a, apps[i])))
            continue;
        sched__converge(s, a);
    }
    for (struct sched_app *a = s->apps, *next; a; a = next) {
        next = a->next;
        if (!sched__listed(apps, n, a->guid))
            sched__converge(s, a); /* deleted: its instances stop */
    }
    store_app_list_free(apps, n);
    return 0;
}

struct cellc *scheduler_cells(struct scheduler *s)
{
    return s->cells;
}

void scheduler_usage(struct scheduler *s, struct scheduler_usage *out)
{
    memset(out, 0, sizeof *out);
    /* this skiffd's own executor's, whoever asked for them: other cells count theirs */
    cellc_local_usage(s->cells, &out->instances, &out->memory_bytes);
}

static void sched__timer_closed(uv_handle_t *h)
{
    struct scheduler *s = h->data;
    if (s->shutdown_done) {
        void (*done)(void *) = s->shutdown_done;
        s->shutdown_done = NULL;
        done(s->shutdown_arg);
    }
}

static void sched__executor_down(void *arg)
{
    struct scheduler *s = arg;
    uv_close((uv_handle_t *)&s->settle, NULL);
    uv_close((uv_handle_t *)&s->timer, sched__timer_closed);
}

void scheduler_shutdown(struct scheduler *s, void (*done)(void *arg), void *arg)
{
    s->shutting_down = true;
    s->shutdown_done = done;
    s->shutdown_arg = arg;
    uv_timer_stop(&s->timer);
    uv_timer_stop(&s->settle);
    cellc_shutdown(s->cells, sched__executor_down, s); /* remote cells keep theirs */
}

void scheduler_detach(struct scheduler *s, void (*done)(void *arg), void *arg)
{
    s->shutting_down = true;
    s->shutdown_done = done;
    s->shutdown_arg = arg;
    uv_timer_stop(&s->timer);
    uv_timer_stop(&s->settle);
    cellc_detach(s->cells, sched__executor_down, s);
}

void scheduler_free(struct scheduler *s)
{
    if (!s)
        return;
    for (struct sched_write *w = s->writes; w; w = w->next)
        w->s = NULL; /* reported later, at the store's drain, to no one */
    while (s->apps) {
        struct sched_app *a = s->apps;
        s->apps = a->next;
        for (size_t i = 0; i < a->nprocs; i++) {
            for (size_t j = 0; j < a->procs[i]->nslots; j++)
                free(a->procs[i]->slots[j]);
            free(a->procs[i]->slots);
            free(a->procs[i]);
        }
        free(a->procs);
        free(a->name);
        free(a->kind);
        free(a);
    }
    while (s->insts) {
        struct sched_inst *si = s->insts;
        s->insts = si->next;
        free(si);
    }
    cellc_free(s->cells);
    cell_layers_free(s->layers);
    for (struct sched_layers_wait *w = s->layers_failed, *next; w; w = next) {
        next = w->next;
        free(w->droplet_dir);
        free(w);
    }
    free(s->home);
    free((char *)s->cfg.function_servers_dir);
    free(s->api_url);
    free(s->events_url);
    free(s);
}

/* ---- what the API asks ------------------------------------------------------------------------
 */

static int sched__resolve(struct scheduler *s, const char *app, struct store_app **out)
{
    return store_app_get(s->store, app, out);
}

int scheduler_app_changed(struct scheduler *s, const char *app)
{
    struct store_app *sa = NULL;
    int rc = sched__resolve(s, app, &sa);
    if (rc < 0)
        return rc;
    struct sched_app *a = sched__app(s, sa->guid, false);
    bool wants = !strcmp(sa->state, "STARTED") && sa->droplet_guid;
    if (!a && wants)
        a = sched__app(s, sa->guid, true);
    if (a) {
        /* a change may fix what made a start impossible */
        for (size_t i = 0; i < a->nprocs; i++)
            for (size_t j = 0; j < a->procs[i]->nslots; j++)
                a->procs[i]->slots[j]->start_failed = false;
        sched__converge(s, a);
    }
    store_app_free(sa);
    return 0;
}

/* Restart requests of skiffds that do not lead, for the one that does: one document each,
 * "APP_GUID.HEX", {"app": APP_GUID, "rolling": bool, "at_ms": when asked}. */
#define SCHED_RESTART_KIND "app.restart"

static void sched__restart_asked(void *ctx, int rc)
{
    char *app = ctx;
    if (rc < 0)
        log_warning("the restart of app %s could not be recorded for the skiffd that leads: %s; "
                    "ask again",
                    app, skiff_strerror(rc));
    free(app);
}

/* Not leading: the leader carries the restart out (sched__take_restarts), on whatever runs
 * the app, held here meanwhile or not. */
static int sched__ask_restart(struct scheduler *s, const char *app_guid, bool rolling)
{
    char hex[17], id[64];
    random_hex(hex, (sizeof hex - 1) / 2);
    snprintf(id, sizeof id, "%s.%s", app_guid, hex);
    json_t *doc = json_pack("{s:s, s:b, s:I}", "app", app_guid, "rolling", rolling, "at_ms",
                            (json_int_t)time_now_ms());
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    char *ctx = xstrdup(app_guid);
    int rc = text ? store_doc_put_async(s->store, SCHED_RESTART_KIND, id, text,
                                        sched__restart_asked, ctx)
                  : -ENOMEM;
    free(text);
    if (rc < 0) {
        log_warning("the restart of app %s could not be recorded for the skiffd that leads: %s",
                    app_guid, skiff_strerror(rc));
        free(ctx);
        return rc;
    }
    logs_appendf(s->logs, app_guid, "API", LOGS_OUT,
                 "The restart goes to the skiffd that leads (this one does not)");
    return 0;
}

static int sched__restart(struct scheduler *s, const char *app, bool rolling);

int scheduler_app_restart(struct scheduler *s, const char *app, bool rolling)
{
    if (s->shutting_down)
        return -ECANCELED;
    if (s->leading)
        return sched__restart(s, app, rolling);
    struct store_app *sa = NULL;
    int rc = sched__resolve(s, app, &sa);
    if (rc < 0)
        return rc;
    rc = sched__ask_restart(s, sa->guid, rolling);
    store_app_free(sa);
    return rc;
}

struct sched__restart_req {
    char id[64];
    char app[37];
    bool rolling;
};

struct sched__restart_list {
    struct sched__restart_req *v;
    size_t n, cap;
};

static int sched__restart_collect(void *ctx, const char *id, const char *json)
{
    struct sched__restart_list *l = ctx;
    json_t *doc = json_loads(json, 0, NULL);
    const char *app = json_string_value(json_object_get(doc, "app"));
    if (strlen(id) < sizeof l->v->id) {
        if (l->n == l->cap) {
            l->cap = l->cap ? 2 * l->cap : 8;
            l->v = xrealloc(l->v, l->cap * sizeof *l->v);
        }
        struct sched__restart_req *r = &l->v[l->n++];
        snprintf(r->id, sizeof r->id, "%s", id);
        /* a malformed one is only deleted */
        snprintf(r->app, sizeof r->app, "%s", app && strlen(app) == 36 ? app : "");
        r->rolling = json_is_true(json_object_get(doc, "rolling"));
    }
    json_decref(doc);
    return 0;
}

/* The restarts read: each carried out once, its document deleted (unless leading ended
 * meanwhile: the next leading reads them again). */
static void sched__restarts_read(void *ctx, int rc, char **ids, char **bodies)
{
    struct scheduler *s = ctx;
    s->restarts_reading = false;
    struct sched__restart_list l = {0};
    for (size_t i = 0; rc == 0 && ids[i]; i++)
        sched__restart_collect(&l, ids[i], bodies[i]);
    strv_free(ids);
    strv_free(bodies);
    bool on = s->leading && !s->shutting_down;
    for (size_t i = 0; on && i < l.n; i++) {
        store_doc_delete_async(s->store, SCHED_RESTART_KIND, l.v[i].id, NULL, NULL);
        bool again = false; /* asked more than once since the last read: restarted once */
        for (size_t j = 0; j < i && !again; j++)
            again = !strcmp(l.v[j].app, l.v[i].app);
        if (!l.v[i].app[0] || again)
            continue;
        log_info("restarting app %s as another skiffd was asked to", l.v[i].app);
        if (sched__restart(s, l.v[i].app, l.v[i].rolling) == 0)
            logs_appendf(s->logs, l.v[i].app, "API", LOGS_OUT,
                         "Restarted by the skiffd that leads, as another skiffd was asked");
    }
    free(l.v);
    if (on) /* news, or leading anew, meanwhile: read again */
        sched__take_restarts(s);
}

/* Leading: the restarts other skiffds asked for (sched__ask_restart) are carried out, each
 * once, and their documents deleted. Read once when leading begins (what was asked while
 * nobody, or this one holding, led), then when the change feed brings news of that kind
 * (scheduler_store_news): never on a timer, since a store whose feed is lost counts every
 * call as news and would read the server each second while it is silent. The read is made
 * by the store's writer, off the loop, which goes on meanwhile even if the server is silent. */
static void sched__take_restarts(struct scheduler *s)
{
    uint64_t news = store_doc_news_kind(s->store, SCHED_RESTART_KIND);
    if ((!s->restarts_stale && news == s->restarts_seen) || s->restarts_reading)
        return;                /* one under way looks again when it is back */
    s->restarts_stale = false; /* a failed read is made again on the next news */
    s->restarts_seen = news;
    s->restarts_reading = true;
    if (store_doc_each_fresh_async(s->store, SCHED_RESTART_KIND, sched__restarts_read, s) < 0)
        s->restarts_reading = false;
}

void scheduler_store_news(struct scheduler *s)
{
    if (s && s->leading && !s->shutting_down)
        sched__take_restarts(s);
}

static int sched__restart(struct scheduler *s, const char *app, bool rolling)
{
    struct store_app *sa = NULL;
    int rc = sched__resolve(s, app, &sa);
    if (rc < 0)
        return rc;
    struct sched_app *a = sched__app(s, sa->guid, false);
    if (a) {
        for (size_t i = 0; i < a->nprocs; i++)
            for (size_t j = 0; j < a->procs[i]->nslots; j++) {
                struct sched_slot *slot = a->procs[i]->slots[j];
                slot->crash_count = 0;
                slot->restart_at_mono = 0;
                slot->start_failed = false;
                if (rolling && slot->cur) {
                    slot->cur->shadow = slot; /* to be replaced */
                } else {
                    sched__stop_inst(s, slot->cur);
                    sched__stop_inst(s, slot->replacement);
                }
            }
        a->rolling = rolling;
    } else if (!strcmp(sa->state, "STARTED") && sa->droplet_guid) {
        a = sched__app(s, sa->guid, true);
    }
    if (a)
        sched__converge(s, a);
    store_app_free(sa);
    return 0;
}

int scheduler_app_deploy(struct scheduler *s, const char *app, bool rolling)
{
    if (!s->leading)
        return 0; /* the leader rolls it out once its resyncs see the droplet (scheduler_resync) */
    struct store_app *sa = NULL;
    int rc = sched__resolve(s, app, &sa);
    if (rc < 0)
        return rc;
    struct sched_app *a = sched__app(s, sa->guid, false);
    /* what runs now: the droplet of the first instance there is */
    char from[37] = "";
    for (size_t i = 0; a && i < a->nprocs && !from[0]; i++)
        for (size_t j = 0; j < a->procs[i]->nslots && !from[0]; j++)
            if (a->procs[i]->slots[j]->cur)
                snprintf(from, sizeof from, "%s", a->procs[i]->slots[j]->cur->droplet);
    if (a && from[0] && sa->droplet_guid && strcmp(from, sa->droplet_guid)) {
        a->deploy = rolling ? SCHED_DEPLOY_ACTIVE : SCHED_DEPLOY_DONE;
        snprintf(a->deploy_from, sizeof a->deploy_from, "%s", from);
        snprintf(a->deploy_to, sizeof a->deploy_to, "%s", sa->droplet_guid);
        a->deploy_error[0] = '\0';
        if (rolling)
            logs_appendf(s->logs, a->guid, "CELL/0", LOGS_OUT,
                         "Deployment of droplet %s: each instance is replaced once its "
                         "successor is running",
                         a->deploy_to);
    }
    store_app_free(sa);
    return sched__restart(s, app, rolling);
}

static struct sched_app *sched__find(struct scheduler *s, const char *app);

int scheduler_app_deployment(struct scheduler *s, const char *app, struct scheduler_deployment *out)
{
    memset(out, 0, sizeof *out);
    struct sched_app *a = sched__find(s, app);
    if (!a || a->deploy == SCHED_DEPLOY_NONE)
        return -ENOENT;
    out->state = a->deploy;
    snprintf(out->from, sizeof out->from, "%s", a->deploy_from);
    snprintf(out->to, sizeof out->to, "%s", a->deploy_to);
    snprintf(out->error, sizeof out->error, "%s", a->deploy_error);
    bool joining = false;
    for (size_t i = 0; i < a->nprocs; i++)
        for (size_t j = 0; j < a->procs[i]->nslots; j++) {
            struct sched_slot *slot = a->procs[i]->slots[j];
            out->total++;
            if (slot->cur && sched__shown_running(slot->cur) && !slot->cur->shadow &&
                !strcmp(slot->cur->droplet, a->deploy_to))
                out->updated++;
            else if (slot->cur && slot->cur->route_holds)
                joining = true;
        }
    /* done once its last instance is RUNNING as scheduler_app_instances shows it */
    if (out->state == SCHED_DEPLOY_DONE && joining)
        out->state = SCHED_DEPLOY_ACTIVE;
    return 0;
}

const char *scheduler_deploy_state_name(enum scheduler_deploy_state st)
{
    static const char *const names[] = {"NONE", "DEPLOYING", "DEPLOYED", "FAILED"};
    return (unsigned)st < sizeof names / sizeof names[0] ? names[st] : "NONE";
}

void scheduler_app_deleted(struct scheduler *s, const char *app_guid)
{
    for (struct sched_inst *si = s->insts; si; si = si->next)
        if (si->task && si->phase == SCHED_INST_LIVE && !strcmp(si->app_guid, app_guid))
            sched__halt(si);
    struct sched_app *a = sched__app(s, app_guid, false);
    if (!a)
        return;
    /* a deleted app that ran has stopped, as far as anyone listening is concerned */
    char guid[37];
    char *name = xstrdup(a->name);
    snprintf(guid, sizeof guid, "%s", a->guid);
    sched__app_remove(s, a);
    sched__emit_app(s, PLATFORM_APP_STOPPED, guid, name);
    free(name);
}

/* The change a scale makes to the app's row: a function of the row alone, so a write that
 * loses to another writer's is made again on the new row (store_app_modify). */
static int sched__scale_change(void *ctx, struct store_app *sa)
{
    struct sched_scale *c = ctx;
    c->wrote = false;
    struct store_process *p = store_app_process(sa, c->type);
    if (!p)
        return -ENOENT;
    c->refused = strcmp(sa->state, "STARTED") ? SKIFF_E_APP_STOPPED
                 : !sa->droplet_guid          ? SKIFF_E_NOT_STAGED
                                              : SKIFF_OK;
    if (c->refused)
        return 1; /* nothing to write: sched__set_instances answers it */
    if (p->instances == c->n || (c->only_up && p->instances >= c->n))
        return 1;
    p->instances = c->n;
    sa->updated_at = time_now_ms();
    c->wrote = true;
    return 0;
}

static int sched__set_instances(struct scheduler *s, const char *app, const char *process_type,
                                int n, bool only_up, const char *reason)
{
    if (n < 0 || n > 1000)
        return -EINVAL;
    struct store_app *sa = NULL;
    int rc = sched__resolve(s, app, &sa);
    if (rc < 0)
        return rc;
    char guid[37];
    snprintf(guid, sizeof guid, "%s", sa->guid);
    store_app_free(sa);
    sa = NULL;
    /* queued: the app is read as changed at once, and converged on it; its outcome comes
     * later (sched__written) */
    struct sched_write *w = sched__write_new(s, guid, "scale");
    w->scale = (struct sched_scale){
        .type = xstrdup(process_type ? process_type : "web"), .n = n, .only_up = only_up};
    bool pending;
    rc = sched__modify(s, w, sched__scale_change, &w->scale, &sa, &pending);
    struct sched_scale c = w->scale; /* what the change made of the app */
    c.type = NULL;
    sched__write_settle(w, pending);
    if (rc == 0 && c.refused)
        rc = c.refused;
    if (rc == 0 && c.wrote) {
        struct sched_app *a = sched__app(s, sa->guid, true);
        sched__converge(s, a);
        struct platform_event ev = {.type = PLATFORM_APP_SCALED,
                                    .app_guid = sa->guid,
                                    .app_name = sa->name,
                                    .process_type = process_type ? process_type : "web",
                                    .index = -1,
                                    .instances = n,
                                    .exit_status = -1,
                                    .reason = reason};
        sched__emit(s, &ev);
    }
    store_app_free(sa);
    return rc;
}

int scheduler_ensure_instances(struct scheduler *s, const char *app, const char *process_type,
                               int n)
{
    return sched__set_instances(s, app, process_type, n, true, NULL);
}

int scheduler_scale(struct scheduler *s, const char *app, const char *process_type, int n)
{
    return sched__set_instances(s, app, process_type, n, false, NULL);
}

int scheduler_scale_because(struct scheduler *s, const char *app, const char *process_type, int n,
                            const char *reason)
{
    return sched__set_instances(s, app, process_type, n, false, reason);
}

/* ---- reading state ----------------------------------------------------------------------------
 */


/* Where an instance is and what it may use, for `skiff app`. */
static void sched__fill_placement(struct scheduler_instance_info *info, const struct sched_inst *si)
{
    struct cellc_inst_info where;
    cellc_inst_info(si->inst, &where);
    snprintf(info->addr, sizeof info->addr, "%s", si->addr);
    snprintf(info->droplet, sizeof info->droplet, "%s", si->droplet);
    snprintf(info->cell, sizeof info->cell, "%s", where.cell);
    info->port = where.port;
    info->host_uid = where.host_uid;
    info->warm_start = where.warm_start;
    snprintf(info->warm_runtime, sizeof info->warm_runtime, "%s", where.warm_runtime);
    info->disk_full = where.disk_full;
    info->disk_bytes = where.disk_bytes;
    info->disk_quota_bytes = where.disk_quota_bytes;
}

static void sched__fill(struct scheduler_instance_info *info, const struct sched_proc *p,
                        const struct sched_slot *slot, const struct sched_inst *si)
{
    memset(info, 0, sizeof *info);
    info->index = slot->index;
    info->crash_count = slot->crash_count;
    info->exit_status = slot->last_exit_status;
    info->exit_signal = slot->last_exit_signal;
    snprintf(info->process_type, sizeof info->process_type, "%s", p->type);
    if (si) {
        snprintf(info->guid, sizeof info->guid, "%s", si->guid);
        sched__fill_placement(info, si);
        struct cellc_inst_info where;
        cellc_inst_info(si->inst, &where);
        /* healthy, but a router may not route to it yet */
        bool joining = where.state == INSTANCE_RUNNING && !sched__shown_running(si);
        snprintf(info->state, sizeof info->state, "%s",
                 instance_state_name(joining ? INSTANCE_STARTING : where.state));
        info->since_ms = where.since_ms;
        info->not_ready = si->ready && !sched__routable(si);
        info->cpu = where.cpu;
        info->memory_bytes = where.memory_bytes;
    } else {
        snprintf(info->state, sizeof info->state, "%s", slot->restart_at_mono ? "CRASHED" : "DOWN");
        info->since_ms = slot->crashed_at_ms ? slot->crashed_at_ms : time_now_ms();
    }
}

/* By guid, "SPACE_GUID/NAME", or a bare name in the default space (store_app_get's refs). */
static struct sched_app *sched__find(struct scheduler *s, const char *app)
{
    const char *slash = strchr(app, '/');
    size_t space_len = slash ? (size_t)(slash - app) : 0;
    for (struct sched_app *a = s->apps; a; a = a->next) {
        if (!strcmp(a->guid, app))
            return a;
        const char *space = a->space[0] ? a->space : STORE_DEFAULT_SPACE_GUID;
        if (slash ? strlen(space) == space_len && !strncmp(space, app, space_len) &&
                        !strcmp(a->name, slash + 1)
                  : !strcmp(space, STORE_DEFAULT_SPACE_GUID) && !strcmp(a->name, app))
            return a;
    }
    return NULL;
}

int scheduler_ready_instances(struct scheduler *s, const char *app, const char *process_type,
                              struct scheduler_instance_info *out, size_t max)
{
    struct sched_app *a = sched__find(s, app);
    if (!a) {
        struct store_app *sa = NULL;
        if (store_app_get(s->store, app, &sa) < 0)
            return -ENOENT;
        store_app_free(sa);
        return 0;
    }
    int count = 0;
    for (size_t i = 0; i < a->nprocs; i++) {
        struct sched_proc *p = a->procs[i];
        if (process_type && strcmp(p->type, process_type))
            continue;
        for (size_t j = 0; j < p->nslots; j++) {
            struct sched_slot *slot = p->slots[j];
            struct sched_inst *cands[2] = {slot->cur, slot->replacement};
            for (int k = 0; k < 2; k++) {
                if (!cands[k] || !sched__routable(cands[k]))
                    continue;
                if ((size_t)count < max)
                    sched__fill(&out[count], p, slot, cands[k]);
                count++;
            }
        }
    }
    return count;
}

/* An instance stopped on purpose: out of its slot, draining or in its grace period. */
static void sched__fill_stopping(struct scheduler_instance_info *info, const struct sched_inst *si)
{
    memset(info, 0, sizeof *info);
    info->index = si->index;
    info->exit_status = -1;
    snprintf(info->process_type, sizeof info->process_type, "%s", si->type);
    snprintf(info->guid, sizeof info->guid, "%s", si->guid);
    sched__fill_placement(info, si);
    snprintf(info->state, sizeof info->state, "STOPPING");
    info->since_ms = si->stopping_since_ms;
    struct cellc_inst_info where;
    cellc_inst_info(si->inst, &where);
    info->cpu = where.cpu;
    info->memory_bytes = where.memory_bytes;
}

int scheduler_app_instances(struct scheduler *s, const char *app,
                            struct scheduler_instance_info *out, size_t max)
{
    struct sched_app *a = sched__find(s, app);
    const char *guid = a ? a->guid : app; /* a stopped app has no record, only instances */
    int count = 0;
    for (size_t i = 0; a && i < a->nprocs; i++) {
        struct sched_proc *p = a->procs[i];
        for (size_t j = 0; j < p->nslots; j++) {
            if ((size_t)count < max)
                sched__fill(&out[count], p, p->slots[j], p->slots[j]->cur);
            count++;
        }
    }
    for (struct sched_inst *si = s->insts; si; si = si->next) {
        if (si->phase == SCHED_INST_LIVE || si->task || strcmp(si->app_guid, guid))
            continue;
        if ((size_t)count < max)
            sched__fill_stopping(&out[count], si);
        count++;
    }
    return count;
}

int scheduler_running_count(struct scheduler *s, const char *app_guid)
{
    struct sched_app *a = sched__find(s, app_guid);
    if (!a)
        return 0;
    int count = 0;
    for (size_t i = 0; i < a->nprocs; i++) {
        if (strcmp(a->procs[i]->type, "web"))
            continue;
        for (size_t j = 0; j < a->procs[i]->nslots; j++) {
            struct sched_inst *si = a->procs[i]->slots[j]->cur;
            if (si && sched__shown_running(si))
                count++;
        }
    }
    return count;
}

bool scheduler_instance_alive(struct scheduler *s, const char *app_guid, const char *instance_guid)
{
    for (struct sched_inst *si = s->insts; si; si = si->next)
        if (!strcmp(si->guid, instance_guid))
            return !strcmp(si->app_guid, app_guid);
    return false;
}

void scheduler_each_ready(struct scheduler *s,
                          void (*fn)(void *ctx, const char *app_guid, const char *process_type,
                                     const struct scheduler_instance_info *inst),
                          void *ctx)
{
    for (struct sched_app *a = s->apps; a; a = a->next)
        for (size_t i = 0; i < a->nprocs; i++) {
            struct sched_proc *p = a->procs[i];
            for (size_t j = 0; j < p->nslots; j++) {
                struct sched_slot *slot = p->slots[j];
                struct sched_inst *cands[2] = {slot->cur, slot->replacement};
                for (int k = 0; k < 2; k++) {
                    if (!cands[k] || !sched__routable(cands[k]))
                        continue;
                    struct scheduler_instance_info info;
                    sched__fill(&info, p, slot, cands[k]);
                    fn(ctx, a->guid, p->type, &info);
                }
            }
        }
}

struct executor *scheduler_executor(struct scheduler *s)
{
    return cellc_executor(s->cells);
}

/* ---- tasks ---------------------------------------------------------------------------------- */

void scheduler_set_task_ended(struct scheduler *s, scheduler_task_ended_cb cb, void *ctx)
{
    s->task_ended = cb;
    s->task_ended_ctx = ctx;
}

int scheduler_task_start(struct scheduler *s, const struct scheduler_task *t)
{
    if (s->shutting_down)
        return -ESHUTDOWN;
    struct store_app *app = NULL;
    struct store_droplet *drop = NULL;
    int rc = sched__resolve(s, t->app_guid, &app);
    if (rc < 0)
        return rc;
    if (!app->droplet_guid || strcmp(app->droplet_guid, t->droplet_guid)) {
        rc = app->droplet_guid ? SKIFF_E_CONFLICT : SKIFF_E_NOT_STAGED;
        store_app_free(app);
        return rc;
    }
    rc = sched__droplet(s, t->droplet_guid, &drop);
    if (rc < 0) {
        store_app_free(app);
        return SKIFF_E_CONFLICT;
    }
    struct sched_inst *si = xcalloc(1, sizeof *si);
    si->s = s;
    si->task = true;
    snprintf(si->app_guid, sizeof si->app_guid, "%s", app->guid);
    /* a name no process type has: a task a previous skiffd left is never adopted as one */
    snprintf(si->type, sizeof si->type, "task/%s", t->name);
    snprintf(si->tag, sizeof si->tag, "APP/TASK/%s/0", t->name);
    snprintf(si->guid, sizeof si->guid, "%s", t->task_guid);
    char what[96];
    snprintf(what, sizeof what, "task %s", t->name);
    rc = sched__launch(s, app, drop, si, t->command, t->memory_mb, HEALTH_PROCESS, NULL, NULL, 0,
                       what, "; the task failed to start (run it again)");
    if (rc == -EINPROGRESS)
        rc = -EAGAIN; /* its droplet is being brought here from its blob: a moment */
    if (rc < 0)
        free(si);
    else
        logs_appendf(s->logs, app->guid, "CELL/0", LOGS_OUT, "Starting task %s (%s) at %s: %s",
                     t->name, si->guid, si->addr, t->command);
    store_droplet_free(drop);
    store_app_free(app);
    return rc;
}

int scheduler_task_stop(struct scheduler *s, const char *task_guid)
{
    for (struct sched_inst *si = s->insts; si; si = si->next)
        if (si->task && !strcmp(si->guid, task_guid)) {
            if (si->phase == SCHED_INST_LIVE)
                sched__halt(si);
            return 0;
        }
    return -ENOENT;
}
