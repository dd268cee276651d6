/* Reads while writes wait in the store's queue (a PostgreSQL server that stopped answering,
 * here one document row held locked by another connection, so every queued write waits):
 * route_list, task_list, app_list and app_get, each timed call by call with an empty queue
 * and then with QUEUED writes waiting (route adds and task puts, half each, behind one
 * document put), in the same run on the same store. Prints p50 in microseconds of both and
 * their ratio (queued / empty).
 *   queued_reads POSTGRES_URL [QUEUED] [ITERATIONS] */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "store/store.h"

#define APPS 20
#define ROUTES_PER_APP 5

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

static double p50(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return t[n / 2];
}

struct reads {
    double route_list, task_list, app_list, app_get;
};

/* p50 of each read over iterations calls. */
static void measure(struct store *st, const char *guid, int iterations, struct reads *r)
{
    double *t = xcalloc((size_t)iterations, sizeof *t);
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < iterations; i++) {
            double t0 = now_us();
            if (k == 0) {
                struct store_route *routes = NULL;
                size_t n = 0;
                if (store_route_list(st, NULL, &routes, &n) == 0)
                    store_route_list_free(routes, n);
            } else if (k == 1) {
                struct store_task *tasks = NULL;
                size_t n = 0;
                if (store_task_list(st, guid, &tasks, &n) == 0)
                    store_task_list_free(tasks, n);
            } else if (k == 2) {
                struct store_app **apps = NULL;
                size_t n = 0;
                if (store_app_list(st, &apps, &n) == 0)
                    store_app_list_free(apps, n);
            } else {
                struct store_app *app = NULL;
                if (store_app_get(st, guid, &app) == 0)
                    store_app_free(app);
            }
            t[i] = now_us() - t0;
        }
        double v = p50(t, iterations);
        *(k == 0 ? &r->route_list : k == 1 ? &r->task_list : k == 2 ? &r->app_list : &r->app_get) =
            v;
    }
    free(t);
}

static struct store_task task_of(const char *app_guid, int64_t seq)
{
    struct store_task t = {.sequence_id = seq,
                           .name = "t",
                           .command = "true",
                           .state = "PENDING",
                           .exit_status = -1,
                           .memory_mb = 32,
                           .disk_mb = 64,
                           .created_at = 1000,
                           .updated_at = 1000};
    uuid_generate_v4(t.guid);
    snprintf(t.app_guid, sizeof t.app_guid, "%s", app_guid);
    snprintf(t.droplet_guid, sizeof t.droplet_guid, "d-1");
    return t;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: queued_reads POSTGRES_URL [QUEUED] [ITERATIONS]\n");
        return 2;
    }
    int queued = argc > 2 ? atoi(argv[2]) : 5000;
    int iterations = argc > 3 ? atoi(argv[3]) : 200;
    char err[512];
    struct store *st = NULL;
    if (store_open(argv[1], err, sizeof err, &st) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char guids[APPS][37];
    for (int i = 0; i < APPS; i++) {
        struct store_process web = {.type = "web", .instances = 1, .min_instances = -1};
        struct store_app app = {
            .memory_mb = 128, .disk_mb = 512, .timeout = 60, .processes = &web, .n_processes = 1};
        uuid_generate_v4(app.guid);
        app.name = xasprintf("bench-%d", i);
        if (store_app_create(st, &app) < 0) {
            fprintf(stderr, "cannot create the apps\n");
            return 1;
        }
        memcpy(guids[i], app.guid, sizeof guids[i]);
        free(app.name);
        for (int r = 0; r < ROUTES_PER_APP; r++) {
            struct store_route route = {.path = "", .app_guid = app.guid, .domain = "localhost"};
            uuid_generate_v4(route.guid);
            route.host = xasprintf("r%d-%d.localhost", i, r);
            store_route_add(st, &route);
            free(route.host);
        }
        struct store_task t = task_of(app.guid, 1);
        store_task_put(st, &t);
    }
    store_doc_put(st, "bench", "hold", "{}");
    struct reads empty, full;
    measure(st, guids[7], iterations, &empty);

    PGconn *hold = PQconnectdb(argv[1]);
    PQclear(PQexec(hold, "BEGIN"));
    PQclear(PQexec(hold, "SELECT 1 FROM documents WHERE kind = 'bench' AND id = 'hold' FOR UPDATE"));
    store_doc_put_async(st, "bench", "hold", "{\"v\":1}", NULL, NULL);
    int refused = 0;
    for (int i = 1; i < queued; i++) {
        int rc;
        if (i % 2) {
            struct store_route route = {
                .path = "", .app_guid = guids[i % APPS], .domain = "localhost"};
            uuid_generate_v4(route.guid);
            route.host = xasprintf("q%d.localhost", i);
            rc = store_route_add_async(st, &route, NULL, NULL);
            free(route.host);
        } else {
            struct store_task t = task_of(guids[i % APPS], 100 + i);
            rc = store_task_put_async(st, &t, NULL, NULL);
        }
        refused += rc < 0;
    }
    size_t waiting = store_async_queued(st);
    measure(st, guids[7], iterations, &full);
    PQclear(PQexec(hold, "ROLLBACK"));
    PQfinish(hold);
    store_close(st);

    printf("%zu writes queued (%d refused), %d routes and %d tasks before; p50 in us\n", waiting,
           refused, APPS * ROUTES_PER_APP, APPS);
    printf("%-11s %10s %10s %9s\n", "read", "empty", "queued", "ratio");
    const char *names[] = {"route_list", "task_list", "app_list", "app_get"};
    double e[] = {empty.route_list, empty.task_list, empty.app_list, empty.app_get};
    double f[] = {full.route_list, full.task_list, full.app_list, full.app_get};
    for (int k = 0; k < 4; k++)
        printf("%-11s %10.1f %10.1f %8.1fx\n", names[k], e[k], f[k], f[k] / e[k]);
    return 0;
}
