/* Per-(app, process) request counters (route_table.h's route_stats): a small hash table under
 * a mutex for lookups at table parse time; the counters themselves are atomics. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
