/* Unit tests for daemon/leader.c against a throwaway PostgreSQL (scripts/pg-throwaway.sh):
 * one of two leads, the other takes over when the first closes, a session the server ends
 * stops leading at once and its holder gives up within a watch of another taking the lock,
 * one that cannot reach the server holds on until it leads again, and an unreachable store
 * never leads. Skipped only when PostgreSQL's server binaries are absent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "common/util.h"
#include "daemon/leader.h"

#define PG_BIN "/usr/lib/postgresql/15/bin"
#define TRY_MS 200

static char pg_dir[64];
static char url[256];
static bool have_pg;
/* Whether a leader may be told it leads while the other still thinks it does. Never when the
 * old one's own side ends its session (it stops before its lock is freed); when the server
 * ends it, the server frees the lock first and the old leader learns it one read later (here
 * the same loop turn; across hosts one network trip): that test bounds the delay instead. */
static bool overlap_allowed;

struct watcher {
    struct leader *l;
    struct watcher *other;
    int became, stopped, follower;
    bool leading;
    int64_t became_mono, follower_mono;
};

static void on_change(void *ctx, bool leading)
{
    struct watcher *w = ctx;
    if (leading) {
        /* never two at once: the other must have stopped before this one was told */
        if (!overlap_allowed)
            assert_false(w->other && w->other->leading);
        w->became++;
        w->became_mono = time_mono_ms();
    } else if (w->leading) {
        w->stopped++;
    } else {
        w->follower++;
        w->follower_mono = time_mono_ms();
    }
    w->leading = leading;
}

static void tick(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until cond(ctx) or ms pass; returns whether cond held. */
static bool run_until(uv_loop_t *loop, bool (*cond)(void *), void *ctx, int ms)
{
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, tick, 10, 10);
    int64_t deadline = time_mono_ms() + ms;
    bool ok = false;
    while (!(ok = cond && cond(ctx)) && time_mono_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return ok;
}

static bool is_leading(void *ctx)
{
    return ((struct watcher *)ctx)->leading;
}

static bool not_leading(void *ctx)
{
    return !((struct watcher *)ctx)->leading;
}

static bool followed(void *ctx)
{
    return ((struct watcher *)ctx)->follower > 0;
}

static bool either_leads(void *ctx)
{
    struct watcher *w = ctx;
    return w[0].leading || w[1].leading;
}

static void start(uv_loop_t *loop, struct watcher *w, const char *name, const char *location)
{
    struct leader_config cfg = {.location = location,
                                .name = name,
                                .try_interval_ms = TRY_MS,
                                .check_timeout_ms = 1000,
                                .on_change = on_change,
                                .ctx = w};
    assert_int_equal(leader_start(loop, &cfg, &w->l), 0);
}

static void finish(uv_loop_t *loop, struct watcher *w)
{
    if (!w->l)
        return;
    leader_close(w->l, NULL, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    leader_free(w->l);
    w->l = NULL;
    w->leading = false;
}

static int group_setup(void **state)
{
    (void)state;
    if (access(PG_BIN "/initdb", X_OK) != 0)
        return 0;
    snprintf(pg_dir, sizeof pg_dir, "/tmp/skiff-leader-pg-XXXXXX");
    if (!mkdtemp(pg_dir))
        return -1;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "scripts/pg-throwaway.sh start %s >/dev/null", pg_dir);
    if (system(cmd) != 0)
        return -1;
    snprintf(url, sizeof url, "postgresql://postgres@/postgres?host=%s", pg_dir);
    have_pg = true;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (!have_pg)
        return 0;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "scripts/pg-throwaway.sh stop %s >/dev/null", pg_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_one_of_two_leads_and_the_other_takes_over(void **state)
{
    (void)state;
    if (!have_pg)
        skip();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct watcher w[2] = {{0}};
    w[0].other = &w[1];
    w[1].other = &w[0];
    start(&loop, &w[0], "unit leader a", url);
    assert_true(run_until(&loop, is_leading, &w[0], 5000));
    start(&loop, &w[1], "unit leader b", url);
    /* b tries several times and finds the lock taken: told once that it follows */
    run_until(&loop, NULL, NULL, 4 * TRY_MS);
    assert_true(w[0].leading);
    assert_false(w[1].leading);
    assert_int_equal(w[1].follower, 1);
    assert_int_equal(w[1].became, 0);
    assert_true(leader_is_leading(w[0].l));
    assert_false(leader_is_leading(w[1].l));

    /* a goes away: its session ends and b takes the lock within two tries */
    int64_t t0 = time_mono_ms();
    finish(&loop, &w[0]);
    assert_true(run_until(&loop, is_leading, &w[1], 5000));
    assert_true(time_mono_ms() - t0 <= 3 * TRY_MS);
    assert_int_equal(w[1].became, 1);
    finish(&loop, &w[1]);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_a_session_the_server_ends_stops_leading_at_once(void **state)
{
    (void)state;
    if (!have_pg)
        skip();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct watcher w[2] = {{0}};
    w[0].other = &w[1];
    w[1].other = &w[0];
    overlap_allowed = true;
    start(&loop, &w[0], "unit leader doomed", url);
    assert_true(run_until(&loop, is_leading, &w[0], 5000));
    start(&loop, &w[1], "unit leader heir", url);
    run_until(&loop, NULL, NULL, 2 * TRY_MS);
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "%s" PG_BIN "/psql -h %s -U postgres -d postgres -Atc \"SELECT "
             "pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'unit "
             "leader doomed'\" >/dev/null",
             getuid() == 0 ? "runuser -u postgres -- " : "", pg_dir);
    assert_int_equal(system(cmd), 0);
    int64_t t0 = time_mono_ms();
    /* readable at once: no try interval, no check deadline */
    assert_true(run_until(&loop, not_leading, &w[0], 500));
    assert_true(time_mono_ms() - t0 < 500);
    assert_int_equal(w[0].stopped, 1);
    assert_false(leader_is_leading(w[0].l));
    /* the other takes over, and the one that lost waits (LEADER_LOST_BACKOFF) */
    assert_true(run_until(&loop, either_leads, w, 5000));
    assert_true(w[1].leading);
    /* it gives up what it held within a watch (TRY_MS / 4) or two of the other leading, long
     * before its own next try (LEADER_LOST_BACKOFF tries after the loss) would find the lock
     * taken */
    assert_true(run_until(&loop, followed, &w[0], 5000));
    assert_true(w[0].follower_mono - w[1].became_mono <= TRY_MS);
    assert_true(w[0].follower_mono - t0 < LEADER_LOST_BACKOFF * TRY_MS);
    run_until(&loop, NULL, NULL, 5 * TRY_MS);
    assert_false(w[0].leading);
    assert_int_equal(w[0].became, 1);
    assert_int_equal(w[0].follower, 1);
    finish(&loop, &w[0]);
    finish(&loop, &w[1]);
    overlap_allowed = false;
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* The pid in the first line of a file, or -1. */
static int pid_in(const char *path)
{
    FILE *f = fopen(path, "r");
    int pid = -1;
    if (f) {
        if (fscanf(f, "%d", &pid) != 1)
            pid = -1;
        fclose(f);
    }
    return pid;
}

static int psql_int(const char *sql)
{
    char cmd[768];
    snprintf(cmd, sizeof cmd, "%s" PG_BIN "/psql -h %s -U postgres -d postgres -Atc \"%s\"",
             getuid() == 0 ? "runuser -u postgres -- " : "", pg_dir, sql);
    FILE *p = popen(cmd, "r");
    int v = -1;
    if (p) {
        if (fscanf(p, "%d", &v) != 1)
            v = -1;
        pclose(p);
    }
    return v;
}

/* The session ends while the server takes no new connection (its postmaster stopped): the
 * one that led cannot learn who leads, and holds what it ran for as long as that lasts (a
 * database restart costs no app its instances); it leads again once the server is back,
 * never having given them up. */
static void test_a_holder_the_server_does_not_answer_keeps_holding(void **state)
{
    (void)state;
    if (!have_pg)
        skip();
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct watcher w = {0};
    start(&loop, &w, "unit leader cut off", url);
    assert_true(run_until(&loop, is_leading, &w, 5000));
    run_until(&loop, NULL, NULL, 2 * TRY_MS);
    int backend = psql_int("SELECT pid FROM pg_stat_activity WHERE application_name = 'unit "
                           "leader cut off'");
    assert_true(backend > 0);
    char pidfile[128];
    snprintf(pidfile, sizeof pidfile, "%s/data/postmaster.pid", pg_dir);
    int postmaster = pid_in(pidfile);
    assert_true(postmaster > 0);
    assert_int_equal(kill(postmaster, SIGSTOP), 0);
    assert_int_equal(kill(backend, SIGTERM), 0); /* what pg_terminate_backend sends */
    assert_true(run_until(&loop, not_leading, &w, 2000));
    bool gave_up = run_until(&loop, followed, &w, 15 * TRY_MS);
    assert_int_equal(kill(postmaster, SIGCONT), 0);
    assert_false(gave_up); /* held: nobody is known to lead */
    assert_true(run_until(&loop, is_leading, &w, 10000));
    assert_int_equal(w.became, 2);
    assert_int_equal(w.follower, 0);
    finish(&loop, &w);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_an_unreachable_store_never_leads(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct watcher w = {0};
    start(&loop, &w, "unit leader lost", "postgresql://postgres@/postgres?host=/nonexistent-dir");
    run_until(&loop, NULL, NULL, 5 * TRY_MS);
    assert_int_equal(w.became + w.stopped + w.follower, 0);
    assert_false(leader_is_leading(w.l));
    finish(&loop, &w);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_of_two_leads_and_the_other_takes_over),
        cmocka_unit_test(test_a_session_the_server_ends_stops_leading_at_once),
        cmocka_unit_test(test_a_holder_the_server_does_not_answer_keeps_holding),
        cmocka_unit_test(test_an_unreachable_store_never_leads),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
