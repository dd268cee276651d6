/* The pod autoscaler's arithmetic (autoscaler.h): windows, panic, scale-down delay, rates. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autoscaler/autoscaler.h"
#include "common/util.h"

void autoscaler_policy_init(struct autoscaler_policy *p, int min, int max, double target, bool rps,
                            int64_t window_ms)
{
    memset(p, 0, sizeof(*p));
    p->min_instances = min;
    p->max_instances = max;
    p->target = target > 0 ? target : AUTOSCALER_DEFAULT_TARGET_CONCURRENCY;
    p->rps = rps;
    p->window_ms = window_ms > 0 ? window_ms : AUTOSCALER_DEFAULT_WINDOW_MS;
    p->panic_window_ms = p->window_ms * AUTOSCALER_PANIC_WINDOW_PERCENT / 100;
    if (p->panic_window_ms < 1000)
        p->panic_window_ms = 1000;
    p->max_up_rate = AUTOSCALER_MAX_UP_RATE;
    p->max_down_rate = AUTOSCALER_MAX_DOWN_RATE;
    p->panic_threshold = AUTOSCALER_PANIC_THRESHOLD;
}

/* Appends (at, value) and drops what is older than keep_ms before at. */
static void kpa__push(struct autoscaler_sample **arr, size_t *n, size_t *cap, int64_t at,
                      double value, int64_t keep_ms)
{
    size_t drop = 0;
    while (drop < *n && (*arr)[drop].at_ms <= at - keep_ms)
        drop++;
    if (drop) {
        memmove(*arr, *arr + drop, (*n - drop) * sizeof(**arr));
        *n -= drop;
    }
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *arr = xrealloc(*arr, *cap * sizeof(**arr));
    }
    (*arr)[(*n)++] = (struct autoscaler_sample){.at_ms = at, .value = value};
}

/* The average of the samples taken within window_ms before now (0 with none). */
static double kpa__average(const struct autoscaler_kpa *k, int64_t now_ms, int64_t window_ms)
{
    double sum = 0;
    size_t count = 0;
    for (size_t i = k->n_samples; i-- > 0;) {
        if (k->samples[i].at_ms <= now_ms - window_ms)
            break;
        sum += k->samples[i].value;
        count++;
    }
    return count ? sum / (double)count : 0;
}

void autoscaler_kpa_record(struct autoscaler_kpa *k, int64_t now_ms, double value)
{
    /* a window is kept whole, whatever policy decides next: up to the longest one */
    kpa__push(&k->samples, &k->n_samples, &k->cap_samples, now_ms, value < 0 ? 0 : value,
              AUTOSCALER_MAX_WINDOW_MS);
}

/* Instances for a metric value: ceil(value / target), with tiny float noise not worth one. */
static int kpa__wanted(double value, double target)
{
    double n = ceil(value / target - 1e-9);
    if (n < 0)
        return 0;
    return n > 1e6 ? 1000000 : (int)n;
}

struct autoscaler_decision autoscaler_kpa_decide(struct autoscaler_kpa *k,
                                                 const struct autoscaler_policy *p, int ready,
                                                 int64_t now_ms)
{
    struct autoscaler_decision d = {0};
    d.stable_value = kpa__average(k, now_ms, p->window_ms);
    d.panic_value = kpa__average(k, now_ms, p->panic_window_ms);
    d.stable_wanted = kpa__wanted(d.stable_value, p->target);
    d.panic_wanted = kpa__wanted(d.panic_value, p->target);
    if (ready < 0)
        ready = 0;

    /* Panic: the short window asks for twice what is ready (load doubled). From zero there is
     * nothing to compare with: the short window simply leads. */
    bool over = ready > 0 ? (double)d.panic_wanted >= p->panic_threshold * (double)ready
                          : d.panic_wanted > 0;
    if (over) {
        if (!k->panic_since_ms)
            k->panic_since_ms = now_ms;
        k->panic_last_ms = now_ms;
    } else if (k->panic_since_ms && now_ms - k->panic_last_ms >= p->window_ms) {
        k->panic_since_ms = 0; /* a whole stable window calm: back to the stable window */
    }
    int want;
    if (k->panic_since_ms) {
        d.panic = true;
        d.value = d.panic_value;
        want = d.panic_wanted;
        /* in panic, never below what was decided */
        if (k->last_desired > want)
            want = k->last_desired;
    } else {
        d.value = d.stable_value;
        want = d.stable_wanted;
    }

    /* Until the samples span a whole stable window (a new policy, a restarted skiffd whose
     * routers have not reported yet) there is no basis to go below what is ready. */
    if (k->n_samples == 0 || now_ms - k->samples[0].at_ms < p->window_ms - 1000)
        if (want < ready)
            want = ready;

    /* At most max_up_rate times the ready instances up (from zero: as if one were ready), at
     * most down to ready / max_down_rate. */
    double base = ready > 0 ? ready : 1;
    double up = ceil(p->max_up_rate * base);
    int max_up = up > 1e6 ? 1000000 : (int)up;
    int max_down = (int)floor((double)ready / p->max_down_rate);
    if (want > max_up)
        want = max_up;
    if (want < max_down)
        want = max_down;

    /* Scale-down delay: the highest count wanted within the delay is what runs. */
    if (p->scale_down_delay_ms > 0) {
        kpa__push(&k->wanted, &k->n_wanted, &k->cap_wanted, now_ms, want, p->scale_down_delay_ms);
        for (size_t i = 0; i < k->n_wanted; i++)
            if (k->wanted[i].value > want)
                want = (int)k->wanted[i].value;
    }

    if (want < p->min_instances)
        want = p->min_instances;
    if (want > p->max_instances)
        want = p->max_instances;
    d.desired = want;
    k->last_desired = want;
    return d;
}

void autoscaler_kpa_reset(struct autoscaler_kpa *k)
{
    free(k->samples);
    free(k->wanted);
    memset(k, 0, sizeof(*k));
}
