/* Per-call latency of store calls on one backend: store_app_get, store_app_list (of 20 apps),
 * store_doc_put, store_app_update, and store_app_get just after an update (on PostgreSQL the
 * read cache is then loaded again), each timed call by call; prints p50 and p99 in
 * microseconds.
 * APPS apps are made (20 unless given); app_get looks one up by name, app_get_guid by guid.
 *   bench_store LOCATION [ITERATIONS] [APPS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "store/store.h"

#define APPS 20

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    printf("%-14s p50 %8.1f us  p99 %8.1f us\n", what, t[n / 2], t[n * 99 / 100]);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_store LOCATION [ITERATIONS]\n");
        return 2;
    }
    int iterations = argc > 2 ? atoi(argv[2]) : 2000;
    int n_apps = argc > 3 ? atoi(argv[3]) : APPS;
    char err[512];
    struct store *st = NULL;
    if (store_open(argv[1], err, sizeof err, &st) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char guid7[37] = "";
    for (int i = 0; i < n_apps; i++) {
        struct store_process web = {.type = "web", .instances = 1, .min_instances = -1};
        struct store_env_var env = {.name = "A", .value = "1"};
        struct store_app app = {.memory_mb = 128,
                                .disk_mb = 512,
                                .timeout = 60,
                                .processes = &web,
                                .n_processes = 1,
                                .env = &env,
                                .n_env = 1};
        uuid_generate_v4(app.guid);
        char name[32];
        snprintf(name, sizeof name, "bench-%d", i);
        app.name = name;
        if (store_app_create(st, &app) < 0) {
            fprintf(stderr, "cannot create %s (is the store empty?)\n", name);
            return 1;
        }
        if (i == 7)
            memcpy(guid7, app.guid, sizeof guid7);
    }
    double *t = calloc((size_t)iterations, sizeof *t);
    for (int i = 0; i < iterations; i++) {
        struct store_app *app = NULL;
        double t0 = now_us();
        int rc = store_app_get(st, "bench-7", &app);
        t[i] = now_us() - t0;
        if (rc < 0)
            return 1;
        store_app_free(app);
    }
    report("app_get", t, iterations);
    for (int i = 0; i < iterations; i++) {
        struct store_app *app = NULL;
        double t0 = now_us();
        int rc = store_app_get(st, guid7, &app);
        t[i] = now_us() - t0;
        if (rc < 0)
            return 1;
        store_app_free(app);
    }
    report("app_get_guid", t, iterations);
    for (int i = 0; i < iterations; i++) {
        struct store_app **apps = NULL;
        size_t n = 0;
        double t0 = now_us();
        int rc = store_app_list(st, &apps, &n);
        t[i] = now_us() - t0;
        if (rc < 0 || n != (size_t)n_apps)
            return 1;
        store_app_list_free(apps, n);
    }
    report("app_list", t, iterations);
    for (int i = 0; i < iterations; i++) {
        char id[16];
        snprintf(id, sizeof id, "d%d", i % 100);
        double t0 = now_us();
        int rc = store_doc_put(st, "bench", id, "{\"a\":1}");
        t[i] = now_us() - t0;
        if (rc < 0)
            return 1;
    }
    report("doc_put", t, iterations);
    for (int i = 0; i < iterations; i++) {
        struct store_app *app = NULL;
        if (store_app_get(st, "bench-7", &app) < 0)
            return 1;
        app->processes[0].instances = 1 + i % 3;
        double t0 = now_us();
        int rc = store_app_update(st, app);
        t[i] = now_us() - t0;
        store_app_free(app);
        if (rc < 0)
            return 1;
    }
    report("app_update", t, iterations);
    for (int i = 0; i < iterations; i++) {
        struct store_app *app = NULL;
        if (store_app_get(st, "bench-7", &app) < 0)
            return 1;
        app->processes[0].instances = 1 + i % 3;
        int rc = store_app_update(st, app);
        store_app_free(app);
        app = NULL;
        double t0 = now_us();
        rc = rc < 0 ? rc : store_app_get(st, "bench-3", &app);
        t[i] = now_us() - t0;
        store_app_free(app);
        if (rc < 0)
            return 1;
    }
    report("get_after_upd", t, iterations);
    free(t);
    store_close(st);
    return 0;
}
