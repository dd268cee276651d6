/* A routes message (the bus's routes JSON) of many routes, for the tests and the benchmark of
 * big route tables (test_route_table.c, bench/router/route_lost_bench.c). */
#ifndef SKIFF_TESTS_ROUTES_MESSAGE_H
#define SKIFF_TESTS_ROUTES_MESSAGE_H

#include <stdbool.h>
#include <stdio.h>

#include "common/util.h"

/* `routes` routes, host app<r>.localhost and app_guid g<r> for route r, of `backends` backends
 * each: backend b of route r listens at 10.X.Y.Z:(61000 + b), X.Y.Z the three low bytes of
 * r * backends + b. A route whose r is a multiple of lose_every (> 0; 0: none) lacks its last
 * backend. With shared, every route's first backend is route 0's (one address in all routes).
 * The caller frees the text. */
static inline char *routes_message(int routes, int backends, int lose_every, bool shared)
{
    size_t cap = (size_t)routes * (96 + (size_t)backends * 40) + 64, len = 0;
    char *s = xmalloc(cap);
    len += (size_t)snprintf(s + len, cap - len, "{\"type\":\"routes\",\"version\":1,\"routes\":[");
    for (int r = 0; r < routes; r++) {
        len +=
            (size_t)snprintf(s + len, cap - len,
                             "%s{\"host\":\"app%d.localhost\",\"app_guid\":\"g%d\",\"backends\":[",
                             r ? "," : "", r, r);
        int n = backends - (lose_every > 0 && r % lose_every == 0 ? 1 : 0);
        for (int b = 0; b < n; b++) {
            int k = shared && b == 0 ? 0 : r * backends + b;
            len +=
                (size_t)snprintf(s + len, cap - len, "%s{\"addr\":\"10.%d.%d.%d:%d\"}",
                                 b ? "," : "", (k >> 16) & 255, (k >> 8) & 255, k & 255, 61000 + b);
        }
        len += (size_t)snprintf(s + len, cap - len, "]}");
    }
    snprintf(s + len, cap - len, "]}");
    return s;
}

#endif
