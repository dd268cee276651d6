/* autoscaler: scales processes with their requests (Knative's pod autoscaler model).
 *
 * Two layers. The decision (autoscaler_kpa_*) is pure arithmetic over samples and a clock the
 * caller gives, so it is unit-tested with a fake clock: a stable window (default 60 s) and a
 * panic window (default a tenth of it, 6 s) average the observed metric (in-flight requests
 * or requests per second); the wanted count is ceil(average / target); when the panic
 * window's count is at least twice the ready instances the decider panics and, for a stable
 * window after the last such tick, never scales down; a scale-down takes effect only once the
 * wanted count stayed lower for the scale-down delay; one decision moves at most
 * max_up_rate times the ready count up and down to ready / max_down_rate; until the samples
 * span a stable window nothing goes below the ready count (no data is no reason to scale
 * down); min and max clamp the result.
 *
 * The runtime (struct autoscaler) runs on skiffd's loop and is the one component that decides
 * how many instances a process the platform scales runs. Its inputs: the routers' per-second
 * metrics (autoscaler_router_metrics), the invoker's event work (autoscaler_set_work: read
 * once a second, and autoscaler_wake at once when work waits for instances), and the routers'
 * wakes (autoscaler_woken). A one-second tick decides for every process whose stored policy
 * asks for request scaling (store_process_request_scaled; every function has one), and for a
 * process that scales to zero without one but has event work (a policy made of its
 * minimum and its mappings' max); it scales through the scheduler, which publishes
 * PLATFORM_APP_SCALED (the platform event skiff.app.scaled). A process its user scales
 * (STORE_SCALE_MANUAL) is only ever raised, to what its event work asks for. Each change is
 * logged to the app's log as `[AUTOSCALER] a -> b: N in flight, target T`. */
#ifndef SKIFF_AUTOSCALER_H
#define SKIFF_AUTOSCALER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* ---- the decision (pure) ------------------------------------------------------------------- */

#define AUTOSCALER_DEFAULT_WINDOW_MS 60000
#define AUTOSCALER_PANIC_WINDOW_PERCENT 10 /* panic window = this % of the stable window */
#define AUTOSCALER_MIN_WINDOW_MS 2000
#define AUTOSCALER_MAX_WINDOW_MS 3600000
#define AUTOSCALER_DEFAULT_TARGET_CONCURRENCY 100
#define AUTOSCALER_PANIC_THRESHOLD 2.0 /* panic when the panic count is 200% of ready */
#define AUTOSCALER_MAX_UP_RATE 1000.0
#define AUTOSCALER_MAX_DOWN_RATE 2.0

struct autoscaler_policy {
    int min_instances;           /* >= 0 */
    int max_instances;           /* >= min, > 0 */
    double target;               /* per instance: in-flight requests or requests/s, > 0 */
    bool rps;                    /* the target is requests per second, else concurrency */
    int64_t window_ms;           /* stable window */
    int64_t panic_window_ms;     /* <= window_ms */
    int64_t scale_down_delay_ms; /* >= 0 */
    double max_up_rate;          /* >= 1 */
    double max_down_rate;        /* >= 1 */
    double panic_threshold;      /* > 1 */
};

/* Fills the defaults above for a target and min/max; the windows from window_ms (<= 0: the
 * default), scale-down delay 0. */
void autoscaler_policy_init(struct autoscaler_policy *p, int min, int max, double target, bool rps,
                            int64_t window_ms);

struct autoscaler_sample {
    int64_t at_ms;
    double value;
};

/* The state of one process: the samples of the last stable window, the wanted counts of the
 * last scale-down delay, and panic. Zero-initialised is a valid empty state; free with
 * autoscaler_kpa_reset. */
struct autoscaler_kpa {
    struct autoscaler_sample *samples; /* oldest first */
    size_t n_samples, cap_samples;
    struct autoscaler_sample *wanted; /* recent wanted counts, for the scale-down delay */
    size_t n_wanted, cap_wanted;
    int64_t panic_since_ms; /* 0: not panicking */
    int64_t panic_last_ms;  /* the last tick over the panic threshold */
    int last_desired;       /* the last decision (-1: none yet) */
};

struct autoscaler_decision {
    int desired;         /* the count to run */
    bool panic;          /* decided in panic mode */
    double stable_value; /* the stable window's average */
    double panic_value;  /* the panic window's average */
    double value;        /* the one the decision used */
    int stable_wanted;   /* ceil(stable_value / target) */
    int panic_wanted;    /* ceil(panic_value / target) */
};

/* Records the metric observed at now_ms (one call per tick; older samples than the stable
 * window are dropped). */
void autoscaler_kpa_record(struct autoscaler_kpa *k, int64_t now_ms, double value);
/* Decides how many instances to run at now_ms given how many are ready. Never fails. */
struct autoscaler_decision autoscaler_kpa_decide(struct autoscaler_kpa *k,
                                                 const struct autoscaler_policy *p, int ready,
                                                 int64_t now_ms);
/* Frees the samples; the state is empty (as zero-initialised) afterwards. */
void autoscaler_kpa_reset(struct autoscaler_kpa *k);

/* ---- the runtime ----------------------------------------------------------------------------- */

struct autoscaler;
struct store;
struct scheduler;
struct logs;

#define AUTOSCALER_METRICS_STALE_MS 3000 /* a router's report older than this counts as 0 */
#define AUTOSCALER_HISTORY 16            /* decisions kept per process for `skiff autoscale` */

int autoscaler_new(uv_loop_t *loop, struct store *store, struct scheduler *sched, struct logs *logs,
                   struct autoscaler **out);
/* Stops the tick; done is called once its handle is closed; then autoscaler_free. */
void autoscaler_close(struct autoscaler *as, void (*done)(void *arg), void *arg);
void autoscaler_free(struct autoscaler *as);

/* One router's report for one second (docs/bus.md "metrics"): the time-weighted average of
 * the requests in flight to (app, process), held ones included, and how many requests came.
 * A report replaces that router's previous one for the process. */
void autoscaler_router_metrics(struct autoscaler *as, int router_id, const char *app_guid,
                               const char *process, double in_flight, double requests);
/* A request waits for (app, process) at zero (a router's wake): one instance is asked for at
 * once, and the wake counts as one in flight until the routers' reports say more, so the
 * instance started for it is not scaled away. 0, or autoscaler_wake's error. */
int autoscaler_woken(struct autoscaler *as, const char *app_guid, const char *process);
/* A router went away: its reports no longer count. */
void autoscaler_router_gone(struct autoscaler *as, int router_id);

/* The event work of a process (the invoker's backlog and deliveries in flight). */
struct autoscaler_work {
    double load;           /* instances' worth of it now: the autoscaler never goes below */
    double average;        /* instances' worth of it averaged over the time since the previous
                              read (a time integral, as the routers' in flight): the sample it
                              adds to the windows, so work between two ticks counts for what
                              it lasted */
    int max_instances;     /* the most its mappings allow (0: none): the max of a process
                              without a stored policy */
    int64_t idle_grace_ms; /* the stable window of a policy that sets none (> 0) */
};
/* Fills the work of (app_guid, process); false when there is none to report (nothing is
 * delivered to it). Called once per process and tick. NULL fn: none. */
typedef bool (*autoscaler_work_cb)(void *ctx, const char *app_guid, const char *process,
                                   struct autoscaler_work *out);
void autoscaler_set_work(struct autoscaler *as, autoscaler_work_cb fn, void *ctx);
/* Whether this autoscaler decides (true at start): of several skiffds on one store only the
 * one that leads does (src/daemon/leader.h); the others' ticks do nothing. */
void autoscaler_set_leading(struct autoscaler *as, bool leading);

/* Work waits for (app_guid, process) and asks for `wanted` instances: decides at once, up
 * only (at most the policy's max), recording the demand as a sample so the windows keep it.
 * 0 with the instances it runs now in *running, or an error of common/err.h (-ENOENT: no
 * such app or process; SKIFF_E_APP_STOPPED; SKIFF_E_NOT_STAGED; or the scheduler's). */
int autoscaler_wake(struct autoscaler *as, const char *app_guid, const char *process, int wanted,
                    int *running);

/* Decides at once for every request-scaled process: what the one-second tick does. */
void autoscaler_tick_now(struct autoscaler *as);

/* {"metric": {...}, "panic": bool, "ready", "desired", "decisions": [{"at", "from", "to",
 * "reason"}]} of one process (a new reference; docs/api.md); metric, ready and desired are
 * null before its first decision. */
json_t *autoscaler_status_json(struct autoscaler *as, const char *app_guid, const char *process);

#endif
