/* route_table_lost on big tables: the main thread's cost of each new table.
 *
 * Two tables of ROUTES routes with BACKENDS backends each (10,000 addresses by default); the
 * new one has lost the last backend of every tenth route. Times route_table_lost(old, now) over
 * RUNS calls, and as its peer in the same run route_table_parse of the same message (what the
 * main thread already spends on that table), and prints the ratio.
 *
 *     bash bench/router/route_lost_bench.sh [BUILD_DIR]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "router/route_table.h"

#include "../../tests/unit/routes_message.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static struct route_table *parse(const char *json)
{
    struct route_table *t;
    char err[256];
    if (route_table_parse(json, strlen(json), &t, err, sizeof err, NULL) < 0) {
        fprintf(stderr, "parse: %s\n", err);
        exit(1);
    }
    return t;
}

int main(void)
{
    int routes = getenv("ROUTES") ? atoi(getenv("ROUTES")) : 1000;
    int backends = getenv("BACKENDS") ? atoi(getenv("BACKENDS")) : 10;
    int runs = getenv("RUNS") ? atoi(getenv("RUNS")) : 50;
    char *old_json = routes_message(routes, backends, 0, false),
         *now_json = routes_message(routes, backends, 10, false);
    struct route_table *old = parse(old_json), *now = parse(now_json);
    size_t lost_n = 0;
    double t0 = now_ms();
    for (int i = 0; i < runs; i++) {
        struct route_addr *lost;
        lost_n = route_table_lost(old, now, &lost);
        free(lost);
    }
    double lost_ms = (now_ms() - t0) / runs;
    t0 = now_ms();
    for (int i = 0; i < runs; i++)
        route_table_unref(parse(now_json));
    double parse_ms = (now_ms() - t0) / runs;
    printf("%d routes x %d backends, %zu lost: route_table_lost %.3f ms, route_table_parse %.3f "
           "ms, ratio %.3f\n",
           routes, backends, lost_n, lost_ms, parse_ms, lost_ms / parse_ms);
    route_table_unref(old);
    route_table_unref(now);
    free(old_json);
    free(now_json);
    return lost_n == (size_t)(routes + 9) / 10 ? 0 : 1;
}
