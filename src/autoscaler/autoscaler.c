/* The autoscaler's runtime (autoscaler.h): routers' reports in, one decision a second per
 * request-scaled process, scaling through the scheduler, a line in the app's log. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autoscaler/autoscaler.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "logs/logs.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define AUTOSCALER_TICK_MS 1000
#define AUTOSCALER_MAX_ROUTERS 16 /* reports kept per process: one per router connection */
#define AUTOSCALER_RELIST_TICKS 10 /* writes by another skiffd on a shared store show within */

struct as_report {
    int router;
    double in_flight, requests;
    int64_t at_ms;
};

struct as_decision {
    int64_t at_ms;
    int from, to;
    char reason[128];
};

struct as_proc {
    char app_guid[37];
    char process[64];
    struct autoscaler_kpa kpa;
    struct as_report reports[AUTOSCALER_MAX_ROUTERS];
    size_t n_reports;
    bool woken; /* a request waited for it since the last tick */
    bool seen;  /* still request-scaled at the last tick */
    /* what `skiff autoscale` shows */
    double in_flight, rps;
    struct autoscaler_decision last;
    int ready, desired;
    struct as_decision history[AUTOSCALER_HISTORY];
    size_t n_history; /* total recorded; the ring holds the last AUTOSCALER_HISTORY */
    struct as_proc *next;
};

struct autoscaler {
    uv_loop_t *loop;
    struct store *store;
    struct scheduler *sched;
    struct logs *logs;
    uv_timer_t tick;
    struct as_proc *procs;
    autoscaler_work_cb work;
    void *work_ctx;
    bool following; /* autoscaler_set_leading(false): another skiffd decides */
    /* the apps as last listed, read again only when the store changed (or every
     * AUTOSCALER_RELIST_TICKS): a list a second would cost a round trip to PostgreSQL each */
    struct store_app **apps;
    size_t n_apps;
    uint64_t apps_changes;
    int ticks_since_list;
    void (*done)(void *arg);
    void *done_arg;
};

static struct as_proc *as__proc(struct autoscaler *as, const char *app_guid, const char *process,
                                bool create)
{
    for (struct as_proc *p = as->procs; p; p = p->next)
        if (!strcmp(p->app_guid, app_guid) && !strcmp(p->process, process))
            return p;
    if (!create)
        return NULL;
    struct as_proc *p = xcalloc(1, sizeof *p);
    snprintf(p->app_guid, sizeof p->app_guid, "%s", app_guid);
    snprintf(p->process, sizeof p->process, "%s", process);
    p->kpa.last_desired = -1;
    p->desired = -1;
    p->next = as->procs;
    as->procs = p;
    return p;
}

void autoscaler_router_metrics(struct autoscaler *as, int router_id, const char *app_guid,
                               const char *process, double in_flight, double requests)
{
    /* reports come for every routed process; only those ticks find request-scaled are kept
     * long (the others are forgotten at the next tick) */
    struct as_proc *p = as__proc(as, app_guid, process, true);
    struct as_report *r = NULL;
    for (size_t i = 0; i < p->n_reports; i++)
        if (p->reports[i].router == router_id)
            r = &p->reports[i];
    if (!r) {
        if (p->n_reports == AUTOSCALER_MAX_ROUTERS) {
            /* more routers than slots: the oldest report goes */
            size_t oldest = 0;
            for (size_t i = 1; i < p->n_reports; i++)
                if (p->reports[i].at_ms < p->reports[oldest].at_ms)
                    oldest = i;
            r = &p->reports[oldest];
        } else {
            r = &p->reports[p->n_reports++];
        }
    }
    r->router = router_id;
    r->in_flight = in_flight;
    r->requests = requests;
    r->at_ms = time_mono_ms();
}

void autoscaler_router_gone(struct autoscaler *as, int router_id)
{
    for (struct as_proc *p = as->procs; p; p = p->next)
        for (size_t i = 0; i < p->n_reports; i++)
            if (p->reports[i].router == router_id) {
                p->reports[i] = p->reports[--p->n_reports];
                break;
            }
}

void autoscaler_set_work(struct autoscaler *as, autoscaler_work_cb fn, void *ctx)
{
    as->work = fn;
    as->work_ctx = ctx;
}

/* The policy of a process the platform scales: as stored when it has one (request scaled),
 * else its minimum and the max its event work allows; the stable window is the event work's
 * idle grace when the policy sets none. w: its work, NULL when none. */
static void as__policy(const struct store_process *sp, const struct autoscaler_work *w,
                       struct autoscaler_policy *pol)
{
    bool stored = store_process_request_scaled(sp);
    bool rps = stored && sp->target_rps > 0;
    double target = !stored ? 0 : rps ? sp->target_rps : sp->target_concurrency;
    int max = stored                      ? sp->max_instances
              : w && w->max_instances > 0 ? w->max_instances
                                          : STORE_FUNCTION_DEFAULT_MAX_INSTANCES;
    int64_t window = stored && sp->window_ms > 0 ? sp->window_ms
                     : w && w->idle_grace_ms > 0 ? w->idle_grace_ms
                                                 : 0;
    int min = sp->min_instances > max ? max : sp->min_instances;
    autoscaler_policy_init(pol, min, max, target, rps, window);
    pol->scale_down_delay_ms = stored && sp->scale_down_delay_ms > 0 ? sp->scale_down_delay_ms : 0;
}

static void as__record_decision(struct as_proc *p, int from, int to, const char *reason)
{
    struct as_decision *d = &p->history[p->n_history % AUTOSCALER_HISTORY];
    p->n_history++;
    d->at_ms = time_now_ms();
    d->from = from;
    d->to = to;
    snprintf(d->reason, sizeof d->reason, "%s", reason);
}

/* Scales (app, process) from `from` to `to` for `reason`: the scheduler, the app's log and
 * the history `skiff autoscale` shows. */
static int as__scale(struct autoscaler *as, struct as_proc *p, const struct store_app *app,
                     const char *process, int from, int to, const char *reason)
{
    char line[160];
    snprintf(line, sizeof line, "%d -> %d: %s", from, to, reason);
    int rc = scheduler_scale_because(as->sched, app->guid, process, to, line);
    if (rc != 0) {
        log_warning("autoscaler: cannot scale %s/%s to %d: %s", app->name, process, to,
                    skiff_strerror(rc));
        return rc;
    }
    logs_appendf(as->logs, app->guid, "AUTOSCALER", LOGS_OUT, "%s", line);
    if (p)
        as__record_decision(p, from, to, reason);
    return 0;
}

/* Instances for event work of `load` instances' worth (tiny float noise is not worth one). */
static int as__instances_for(double load)
{
    double n = ceil(load - 1e-9);
    return n <= 0 ? 0 : n > 1e6 ? 1000000 : (int)n;
}

static void as__decide(struct autoscaler *as, const struct store_app *app,
                       const struct store_process *sp, const struct autoscaler_work *w, int64_t now)
{
    struct as_proc *p = as__proc(as, app->guid, sp->type, true);
    p->seen = true;
    double in_flight = 0, requests = 0;
    for (size_t i = 0; i < p->n_reports; i++) {
        if (now - p->reports[i].at_ms > AUTOSCALER_METRICS_STALE_MS)
            continue;
        in_flight += p->reports[i].in_flight;
        requests += p->reports[i].requests;
    }
    p->in_flight = in_flight;
    p->rps = requests;
    struct autoscaler_policy pol;
    as__policy(sp, w, &pol);
    double value = pol.rps ? requests : in_flight;
    /* a request that woke it counts before the router's next report says so, or the tick in
     * between would scale the instance starting for it away again */
    if (p->woken && value < 1)
        value = 1;
    p->woken = false;
    /* event work in the same unit: instances' worth x the target per instance */
    if (w)
        value += w->average * pol.target;
    autoscaler_kpa_record(&p->kpa, now, value);
    int ready = scheduler_ready_instances(as->sched, app->guid, sp->type, NULL, 0);
    if (ready < 0)
        ready = 0;
    struct autoscaler_decision d = autoscaler_kpa_decide(&p->kpa, &pol, ready, now);
    int desired = d.desired;
    /* a process met less than a stable window ago (just pushed, or skiffd restarted) keeps
     * the instances it was given, started or still starting, until there is a window of
     * samples to judge them by */
    if (p->kpa.n_samples && now - p->kpa.samples[0].at_ms < pol.window_ms - 1000 &&
        desired < sp->instances)
        desired = sp->instances > pol.max_instances ? pol.max_instances : sp->instances;
    int floor = w ? as__instances_for(w->load) : 0;
    if (floor > desired)
        desired = floor > pol.max_instances ? pol.max_instances : floor;
    p->last = d;
    p->ready = ready;
    p->desired = desired;
    if (desired == sp->instances)
        return;
    char reason[128];
    if (floor > d.desired && desired == floor)
        snprintf(reason, sizeof reason, "%d wanted by event work", floor);
    else if (pol.rps)
        snprintf(reason, sizeof reason, "%.0f requests/s, target %.0f%s", d.value, pol.target,
                 d.panic ? " (panic)" : "");
    else
        snprintf(reason, sizeof reason, "%.0f in flight, target %.0f%s",
                 d.value > 0 ? ceil(d.value - 1e-9) : 0.0, pol.target, d.panic ? " (panic)" : "");
    as__scale(as, p, app, sp->type, sp->instances, desired, reason);
}

/* A process its user scales: event work raises it, nothing lowers it. */
static void as__raise_manual(struct autoscaler *as, const struct store_app *app,
                             const struct store_process *sp, const struct autoscaler_work *w)
{
    int wanted = as__instances_for(w->load);
    if (wanted <= sp->instances)
        return;
    char reason[128];
    snprintf(reason, sizeof reason, "%d wanted by event work", wanted);
    as__scale(as, NULL, app, sp->type, sp->instances, wanted, reason);
}

int autoscaler_wake(struct autoscaler *as, const char *app_guid, const char *process, int wanted,
                    int *running)
{
    struct store_app *app = NULL;
    *running = 0;
    if (store_app_get(as->store, app_guid, &app) < 0)
        return -ENOENT;
    const struct store_process *sp = store_app_process(app, process);
    int rc;
    if (!sp)
        rc = -ENOENT;
    else if (strcmp(app->state, "STARTED"))
        rc = SKIFF_E_APP_STOPPED;
    else if (!app->droplet_guid)
        rc = SKIFF_E_NOT_STAGED;
    else if (!store_process_autoscaled(sp)) {
        rc = wanted > sp->instances
                 ? as__scale(as, NULL, app, process, sp->instances, wanted, "wanted by event work")
                 : 0;
        if (rc == 0)
            *running = wanted > sp->instances ? wanted : sp->instances;
    } else {
        struct autoscaler_policy pol;
        as__policy(sp, NULL, &pol);
        /* without a stored policy, the work's own bound (its mappings') is already applied */
        int max = store_process_request_scaled(sp) ? pol.max_instances : wanted;
        int to = wanted > max ? max : wanted;
        rc = 0;
        *running = sp->instances;
        if (to > sp->instances) {
            struct as_proc *p = as__proc(as, app->guid, process, true);
            /* the windows remember the demand, so the next tick does not undo it */
            autoscaler_kpa_record(&p->kpa, time_mono_ms(), (double)to * pol.target);
            char reason[128];
            snprintf(reason, sizeof reason, "%d wanted by waiting work", wanted);
            rc = as__scale(as, p, app, process, sp->instances, to, reason);
            if (rc == 0)
                *running = to;
        }
    }
    store_app_free(app);
    return rc;
}

int autoscaler_woken(struct autoscaler *as, const char *app_guid, const char *process)
{
    as__proc(as, app_guid, process, true)->woken = true;
    int running;
    return autoscaler_wake(as, app_guid, process, 1, &running);
}

static void as__proc_free(struct as_proc *p)
{
    autoscaler_kpa_reset(&p->kpa);
    free(p);
}

void autoscaler_set_leading(struct autoscaler *as, bool leading)
{
    as->following = !leading;
}

void autoscaler_tick_now(struct autoscaler *as)
{
    if (as->following)
        return;
    uint64_t changes = store_change_count(as->store);
    if (!as->apps || changes != as->apps_changes ||
        ++as->ticks_since_list >= AUTOSCALER_RELIST_TICKS) {
        struct store_app **list = NULL;
        size_t count = 0;
        if (store_app_list(as->store, &list, &count) < 0)
            return; /* the store logs why; the next tick asks again */
        store_app_list_free(as->apps, as->n_apps);
        as->apps = list;
        as->n_apps = count;
        as->apps_changes = changes;
        as->ticks_since_list = 0;
    }
    struct store_app **apps = as->apps;
    size_t n = as->n_apps;
    for (struct as_proc *p = as->procs; p; p = p->next)
        p->seen = false;
    int64_t now = time_mono_ms();
    for (size_t i = 0; i < n; i++) {
        const struct store_app *a = apps[i];
        if (strcmp(a->state, "STARTED") || !a->droplet_guid)
            continue;
        for (size_t j = 0; j < a->n_processes; j++) {
            const struct store_process *sp = &a->processes[j];
            struct autoscaler_work w;
            bool has_work = as->work && as->work(as->work_ctx, a->guid, sp->type, &w);
            if (store_process_request_scaled(sp) || (has_work && store_process_autoscaled(sp)))
                as__decide(as, a, sp, has_work ? &w : NULL, now);
            else if (has_work)
                as__raise_manual(as, a, sp, &w);
        }
    }
    /* what is no longer request-scaled starts afresh if it becomes so again */
    for (struct as_proc **pp = &as->procs; *pp;) {
        struct as_proc *p = *pp;
        if (!p->seen) {
            *pp = p->next;
            as__proc_free(p);
        } else {
            pp = &p->next;
        }
    }
}

static void as__on_tick(uv_timer_t *t)
{
    autoscaler_tick_now(t->data);
}

int autoscaler_new(uv_loop_t *loop, struct store *store, struct scheduler *sched, struct logs *logs,
                   struct autoscaler **out)
{
    struct autoscaler *as = xcalloc(1, sizeof *as);
    as->loop = loop;
    as->store = store;
    as->sched = sched;
    as->logs = logs;
    uv_timer_init(loop, &as->tick);
    as->tick.data = as;
    uv_timer_start(&as->tick, as__on_tick, AUTOSCALER_TICK_MS, AUTOSCALER_TICK_MS);
    uv_unref((uv_handle_t *)&as->tick);
    *out = as;
    return 0;
}

static void as__closed(uv_handle_t *h)
{
    struct autoscaler *as = h->data;
    if (as->done)
        as->done(as->done_arg);
}

void autoscaler_close(struct autoscaler *as, void (*done)(void *arg), void *arg)
{
    as->done = done;
    as->done_arg = arg;
    uv_timer_stop(&as->tick);
    uv_close((uv_handle_t *)&as->tick, as__closed);
}

void autoscaler_free(struct autoscaler *as)
{
    if (!as)
        return;
    while (as->procs) {
        struct as_proc *p = as->procs;
        as->procs = p->next;
        as__proc_free(p);
    }
    store_app_list_free(as->apps, as->n_apps);
    free(as);
}

json_t *autoscaler_status_json(struct autoscaler *as, const char *app_guid, const char *process)
{
    struct as_proc *p = as ? as__proc(as, app_guid, process, false) : NULL;
    json_t *decisions = json_array();
    if (!p || p->desired < 0) /* only reports so far, no decision */
        return json_pack("{s:n, s:b, s:n, s:n, s:o}", "metric", "panic", false, "ready", "desired",
                         "decisions", decisions);
    size_t count = p->n_history < AUTOSCALER_HISTORY ? p->n_history : AUTOSCALER_HISTORY;
    for (size_t i = 0; i < count; i++) {
        const struct as_decision *d = &p->history[(p->n_history - count + i) % AUTOSCALER_HISTORY];
        char when[40];
        time_format_rfc3339(d->at_ms, when, sizeof when);
        json_array_append_new(decisions, json_pack("{s:s, s:i, s:i, s:s}", "at", when, "from",
                                                   d->from, "to", d->to, "reason", d->reason));
    }
    json_t *metric =
        json_pack("{s:f, s:f, s:f, s:f}", "in_flight", p->in_flight, "requests_per_second", p->rps,
                  "stable", p->last.stable_value, "panic", p->last.panic_value);
    return json_pack("{s:o, s:b, s:i, s:i, s:o}", "metric", metric, "panic", p->last.panic, "ready",
                     p->ready, "desired", p->desired, "decisions", decisions);
}
