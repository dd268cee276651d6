/* Per-(app, process) request counters (route_table.h's route_stats): a small hash table under
 * a mutex for lookups at table parse time; the counters themselves are atomics, and the
 * in-flight integral is kept per worker under a single-writer sequence lock. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "router/route_table.h"

#define ROUTE_STATS_BUCKETS 1024

static struct {
    pthread_mutex_t lock;
    struct route_stats *buckets[ROUTE_STATS_BUCKETS];
} stats = {.lock = PTHREAD_MUTEX_INITIALIZER};

static unsigned route_stats__hash(const char *a, const char *b)
{
    unsigned h = 2166136261u;
    for (; *a; a++)
        h = (h ^ (unsigned char)*a) * 16777619u;
    for (; *b; b++)
        h = (h ^ (unsigned char)*b) * 16777619u;
    return h % ROUTE_STATS_BUCKETS;
}

struct route_stats *route_stats_get(const char *app_guid, const char *process)
{
    unsigned h = route_stats__hash(app_guid, process);
    pthread_mutex_lock(&stats.lock);
    struct route_stats *st = stats.buckets[h];
    while (st && (strcmp(st->app_guid, app_guid) || strcmp(st->process, process)))
        st = st->next;
    if (!st) {
        st = xcalloc(1, sizeof(*st));
        snprintf(st->app_guid, sizeof st->app_guid, "%s", app_guid);
        snprintf(st->process, sizeof st->process, "%s", process);
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        st->reported_at_us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
        st->next = stats.buckets[h];
        stats.buckets[h] = st;
    }
    pthread_mutex_unlock(&stats.lock);
    return st;
}

void route_stats_each(void (*fn)(void *ctx, struct route_stats *st), void *ctx)
{
    for (size_t i = 0; i < ROUTE_STATS_BUCKETS; i++) {
        pthread_mutex_lock(&stats.lock);
        struct route_stats *st = stats.buckets[i];
        pthread_mutex_unlock(&stats.lock);
        /* entries are only ever prepended: the chain from its head stays valid */
        for (; st; st = st->next)
            fn(ctx, st);
    }
}

void route_stats_clear(void)
{
    pthread_mutex_lock(&stats.lock);
    for (size_t i = 0; i < ROUTE_STATS_BUCKETS; i++) {
        for (struct route_stats *st = stats.buckets[i], *next; st; st = next) {
            next = st->next;
            free(st);
        }
        stats.buckets[i] = NULL;
    }
    pthread_mutex_unlock(&stats.lock);
}

void route_stats_change(struct route_stats *st, int worker, int delta, uint64_t now_us)
{
    struct route_stats_slot *s = &st->slots[worker];
    unsigned seq = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
    __atomic_store_n(&s->seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    int n = __atomic_load_n(&s->in_flight, __ATOMIC_RELAXED);
    uint64_t last = __atomic_load_n(&s->last_us, __ATOMIC_RELAXED);
    if (now_us > last) {
        uint64_t integral = __atomic_load_n(&s->integral_us, __ATOMIC_RELAXED);
        __atomic_store_n(&s->integral_us, integral + (uint64_t)n * (now_us - last),
                         __ATOMIC_RELAXED);
        __atomic_store_n(&s->last_us, now_us, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&s->in_flight, n + delta, __ATOMIC_RELAXED);
    __atomic_store_n(&s->seq, seq + 2, __ATOMIC_RELEASE);
}

int route_stats_in_flight(struct route_stats *st)
{
    int n = 0;
    for (int i = 0; i < ROUTE_STATS_WORKERS; i++)
        n += __atomic_load_n(&st->slots[i].in_flight, __ATOMIC_RELAXED);
    return n;
}

/* A worker's integral up to now_us, read consistently (retried while its writer is busy). */
static uint64_t route_stats__slot_integral(struct route_stats_slot *s, uint64_t now_us)
{
    for (;;) {
        unsigned seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (seq & 1)
            continue;
        int n = __atomic_load_n(&s->in_flight, __ATOMIC_RELAXED);
        uint64_t last = __atomic_load_n(&s->last_us, __ATOMIC_RELAXED);
        uint64_t integral = __atomic_load_n(&s->integral_us, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) != seq)
            continue;
        /* a worker's clock read a moment after ours counts nothing for the difference */
        return integral + (now_us > last && n > 0 ? (uint64_t)n * (now_us - last) : 0);
    }
}

double route_stats_take_average(struct route_stats *st, uint64_t now_us)
{
    uint64_t integral = 0;
    for (int i = 0; i < ROUTE_STATS_WORKERS; i++)
        integral += route_stats__slot_integral(&st->slots[i], now_us);
    uint64_t span = now_us > st->reported_at_us ? now_us - st->reported_at_us : 0;
    uint64_t added = integral > st->reported_integral_us ? integral - st->reported_integral_us : 0;
    st->reported_integral_us = integral;
    st->reported_at_us = now_us;
    return span ? (double)added / (double)span : 0;
}
