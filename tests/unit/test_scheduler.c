/* Unit tests for scheduler/: convergence against a real store and executor (process
 * isolation, no shim), and the platform events it publishes on the hub. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

#include "cell/client.h"
#include "common/err.h"
#include "common/util.h"
#include "executor/executor.h"
#include "hub/hub.h"
#include "logs/logs.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

struct world {
    uv_loop_t loop;
    char home[64];
    struct store *store;
    struct logs *logs;
    struct hub *hub;
    int sub;
    struct scheduler *s;
    int counts[PLATFORM_APP_STAGED + 1]; /* events seen, by type */
    int last_crash_status;
    int last_scaled;
    int crashes_wanted;
    bool shut_down;
    int tasks_ended;
    struct scheduler_task_end last_task_end;
    char last_task[37];
};

static void on_task_ended(void *ctx, const char *app_guid, const char *task_guid,
                          const struct scheduler_task_end *end)
{
    struct world *w = ctx;
    (void)app_guid;
    w->tasks_ended++;
    w->last_task_end = *end;
    w->last_task_end.reason = NULL; /* valid during the call only */
    snprintf(w->last_task, sizeof w->last_task, "%s", task_guid);
}

static void on_event(void *ctx, const struct platform_event *ev)
{
    struct world *w = ctx;
    w->counts[ev->type]++;
    if (ev->type == PLATFORM_APP_CRASHED)
        w->last_crash_status = ev->exit_status;
    if (ev->type == PLATFORM_APP_SCALED)
        w->last_scaled = ev->instances;
}

static int setup_with(void **state, const struct cellc_config *cells)
{
    struct world *w = xcalloc(1, sizeof *w);
    uv_loop_init(&w->loop);
    strcpy(w->home, "/tmp/skiff-sched-XXXXXX");
    if (!mkdtemp(w->home))
        return -1;
    char *db = xasprintf("%s/skiff.db", w->home);
    char err[256];
    int rc = store_open(db, err, sizeof err, &w->store);
    free(db);
    if (rc < 0)
        return -1;
    w->logs = logs_new(100);
    w->hub = hub_new();
    w->sub = hub_subscribe(w->hub, on_event, w);
    struct scheduler_config cfg = {
        .home = w->home, .api_url = "http://127.0.0.1:9", .hub = w->hub, .cells = cells};
    struct executor_config ecfg = {.home = w->home,
                                   .port_min = 41000,
                                   .port_max = 41999,
                                   .grace_ms = 300,
                                   .isolation = EXECUTOR_PROCESS};
    if (scheduler_new(&w->loop, &cfg, &ecfg, w->store, w->logs, &w->s) < 0)
        return -1;
    *state = w;
    return 0;
}

static int setup(void **state)
{
    return setup_with(state, NULL);
}

/* A skiffd whose own executor takes 48 MB at most (skiffd --memory 48M). */
static int setup_small_cell(void **state)
{
    struct cellc_config cc = {.local_cell = true, .local_memory_bytes = 48ull << 20};
    return setup_with(state, &cc);
}

static void shut_down(void *arg)
{
    ((struct world *)arg)->shut_down = true;
}

static int teardown(void **state)
{
    struct world *w = *state;
    scheduler_shutdown(w->s, shut_down, w);
    while (!w->shut_down)
        uv_run(&w->loop, UV_RUN_ONCE);
    scheduler_free(w->s);
    uv_run(&w->loop, UV_RUN_NOWAIT);
    hub_unsubscribe(w->hub, w->sub);
    hub_free(w->hub);
    logs_free(w->logs);
    store_close(w->store);
    uv_loop_close(&w->loop);
    rm_rf(w->home);
    free(w);
    return 0;
}

/* A STARTED app with a droplet whose web process runs command, instances of it, memory_mb
 * each. */
static void add_app_of(struct world *w, const char *name, const char *command, int instances,
                       int memory_mb)
{
    struct store_app app = {0};
    uuid_generate_v4(app.guid);
    app.name = (char *)name;
    app.state = "STARTED";
    app.kind = "app";
    app.memory_mb = memory_mb;
    app.disk_mb = 64;
    app.timeout = 10;
    app.buildpacks_json = "[]";
    app.health_check_type = "process";
    app.health_check_http_endpoint = "/";
    app.created_at = app.updated_at = 1;
    struct store_process web = {.type = "web",
                                .command = (char *)command,
                                .instances = instances,
                                .min_instances = STORE_SCALE_MANUAL};
    app.processes = &web;
    app.n_processes = 1;
    struct store_droplet drop = {.app_guid = app.guid, .process_types_json = "{}"};
    uuid_generate_v4(drop.guid);
    drop.path = xasprintf("%s/droplets/%s", w->home, drop.guid);
    char *app_dir = xasprintf("%s/app", drop.path);
    assert_int_equal(mkdir_p(app_dir, 0755), 0);
    app.droplet_guid = drop.guid;
    assert_int_equal(store_app_create(w->store, &app), 0);
    assert_int_equal(store_droplet_add(w->store, &drop), 0);
    free(app_dir);
    free(drop.path);
    assert_int_equal(scheduler_app_changed(w->s, name), 0);
}

static void add_app(struct world *w, const char *name, const char *command, int instances)
{
    add_app_of(w, name, command, instances, 64);
}

static void run_until(struct world *w, bool (*done)(struct world *), const char *what)
{
    int64_t deadline = time_mono_ms() + 15000;
    while (!done(w)) {
        if (time_mono_ms() > deadline)
            fail_msg("timed out waiting for %s", what);
        uv_run(&w->loop, UV_RUN_ONCE);
    }
}

static bool two_running(struct world *w)
{
    return scheduler_running_count(w->s, "web-app") == 2;
}

static bool one_running_only(struct world *w)
{
    return scheduler_running_count(w->s, "web-app") == 1;
}

static bool one_running(struct world *w)
{
    return scheduler_running_count(w->s, "web-app") == 1 && w->counts[PLATFORM_INSTANCE_GONE] >= 1;
}

static void test_converges_to_the_desired_count_and_says_so(void **state)
{
    struct world *w = *state;
    add_app(w, "web-app", "sleep 30", 2);
    run_until(w, two_running, "two instances running");
    assert_int_equal(w->counts[PLATFORM_INSTANCE_READY], 2);
    struct scheduler_instance_info info[4];
    assert_int_equal(scheduler_app_instances(w->s, "web-app", info, 4), 2);
    assert_string_equal(info[0].state, "RUNNING");
    assert_true(info[0].droplet[0] != '\0');
    assert_string_equal(info[0].droplet, info[1].droplet);
    /* scaled down by the platform's own call: one stops (drained, then gone), the count is
     * stored and announced */
    assert_int_equal(scheduler_scale(w->s, "web-app", "web", 1), 0);
    assert_int_equal(w->counts[PLATFORM_APP_SCALED], 1);
    assert_int_equal(w->last_scaled, 1);
    run_until(w, one_running, "one instance left");
    struct store_app *app = NULL;
    assert_int_equal(store_app_get(w->store, "web-app", &app), 0);
    assert_int_equal(store_app_process(app, "web")->instances, 1);
    store_app_free(app);
    /* deleted: its instances stop and the hub hears that it stopped */
    struct store_app *gone = NULL;
    assert_int_equal(store_app_get(w->store, "web-app", &gone), 0);
    scheduler_app_deleted(w->s, gone->guid);
    store_app_free(gone);
    assert_int_equal(w->counts[PLATFORM_APP_STOPPED], 1);
}

static bool enough_crashes(struct world *w)
{
    return w->counts[PLATFORM_APP_CRASHED] >= w->crashes_wanted;
}

static void test_crashes_restart_at_once_three_times_then_wait(void **state)
{
    struct world *w = *state;
    add_app(w, "crasher", "exit 3", 1);
    w->crashes_wanted = 4;
    run_until(w, enough_crashes, "four crashes");
    assert_int_equal(w->last_crash_status, 3);
    /* Diego's rule: three immediate restarts, then a delay (30 s): the slot shows CRASHED */
    struct scheduler_instance_info info[2];
    assert_int_equal(scheduler_app_instances(w->s, "crasher", info, 2), 1);
    assert_string_equal(info[0].state, "CRASHED");
    assert_true(info[0].crash_count >= 4);
    assert_int_equal(info[0].exit_status, 3);
    int crashes = w->counts[PLATFORM_APP_CRASHED];
    /* nothing restarts it before its delay is up */
    int64_t until = time_mono_ms() + 500;
    while (time_mono_ms() < until)
        uv_run(&w->loop, UV_RUN_NOWAIT);
    assert_int_equal(w->counts[PLATFORM_APP_CRASHED], crashes);
    /* a restart asked for by its user starts it again at once */
    assert_int_equal(scheduler_app_restart(w->s, "crasher", false), 0);
    w->crashes_wanted = crashes + 1;
    run_until(w, enough_crashes, "a crash after the restart");
}

static bool task_ended(struct world *w)
{
    return w->tasks_ended > 0;
}

/* A task runs once beside the app's instances: its lines are tagged with its name, its end
 * (status, or stopped on request) goes to the callback, and it is never an instance: no
 * readiness, no crash, no restart. */
static void test_tasks_run_once_and_report_their_end(void **state)
{
    struct world *w = *state;
    scheduler_set_task_ended(w->s, on_task_ended, w);
    add_app(w, "web-app", "sleep 30", 1);
    run_until(w, one_running_only, "the app running");
    struct store_app *app = NULL;
    assert_int_equal(store_app_get(w->store, "web-app", &app), 0);
    char guid[37];
    uuid_generate_v4(guid);
    struct scheduler_task t = {.app_guid = app->guid,
                               .droplet_guid = app->droplet_guid,
                               .task_guid = guid,
                               .name = "migrate",
                               .command = "echo migrating; exit 3",
                               .memory_mb = 64};
    int ready = w->counts[PLATFORM_INSTANCE_READY];
    assert_int_equal(scheduler_task_start(w->s, &t), 0);
    assert_int_equal(w->tasks_ended, 0); /* never from inside the call */
    run_until(w, task_ended, "the task's end");
    assert_string_equal(w->last_task, guid);
    assert_false(w->last_task_end.stopped);
    assert_int_equal(w->last_task_end.exit_status, 3);
    assert_int_equal(w->counts[PLATFORM_INSTANCE_READY], ready);
    assert_int_equal(w->counts[PLATFORM_APP_CRASHED], 0);
    size_t len = 0;
    char *logs = logs_recent(w->logs, app->guid, 0, &len);
    assert_non_null(strstr(logs, "[APP/TASK/migrate/0] OUT migrating"));
    free(logs);
    struct scheduler_instance_info info[4];
    assert_int_equal(scheduler_app_instances(w->s, "web-app", info, 4), 1);

    /* stopped on request */
    w->tasks_ended = 0;
    uuid_generate_v4(guid);
    t.command = "sleep 30";
    assert_int_equal(scheduler_task_start(w->s, &t), 0);
    assert_int_equal(scheduler_task_stop(w->s, guid), 0);
    run_until(w, task_ended, "the stopped task's end");
    assert_true(w->last_task_end.stopped);
    assert_int_equal(scheduler_task_stop(w->s, guid), -ENOENT);
    /* only from the app's current droplet */
    t.droplet_guid = "not-the-droplet";
    assert_int_equal(scheduler_task_start(w->s, &t), SKIFF_E_CONFLICT);
    t.app_guid = "no-such-app";
    assert_int_equal(scheduler_task_start(w->s, &t), -ENOENT);
    store_app_free(app);
}

static bool none_running(struct world *w)
{
    return scheduler_running_count(w->s, "web-app") == 0;
}

static char expected_droplet[37];

static bool all_on_expected_droplet(struct world *w)
{
    struct scheduler_instance_info info[4];
    int n = scheduler_app_instances(w->s, "web-app", info, 4);
    if (n != 1 || strcmp(info[0].state, "RUNNING"))
        return false;
    return !strcmp(info[0].droplet, expected_droplet);
}

/* Several skiffds on one store (src/daemon/leader.h): a scheduler that does not lead starts
 * nothing however it is asked; leading, it converges what the store says, resyncs writes
 * made without telling it (scale, a new droplet: rolled out on the second resync that sees
 * it); when it stops leading it holds what runs (kept if it leads again) until another
 * leads, and then stops everything at once. */
static void test_only_a_leading_scheduler_runs_instances(void **state)
{
    struct world *w = *state;
    scheduler_set_leading(w->s, false);
    assert_false(scheduler_leading(w->s));
    add_app(w, "web-app", "sleep 30", 2);
    assert_int_equal(scheduler_ensure_instances(w->s, "web-app", "web", 2), 0);
    int64_t until = time_mono_ms() + 300;
    while (time_mono_ms() < until)
        uv_run(&w->loop, UV_RUN_NOWAIT);
    assert_int_equal(w->counts[PLATFORM_INSTANCE_READY], 0);
    assert_int_equal(scheduler_resync(w->s), 0); /* a no-op when not leading */
    assert_int_equal(scheduler_app_instances(w->s, "web-app", NULL, 0), 0);

    scheduler_set_leading(w->s, true);
    run_until(w, two_running, "two instances once leading");

    /* another skiffd scaled it down: the store says so, nobody told this scheduler */
    struct store_app *app = NULL;
    assert_int_equal(store_app_get(w->store, "web-app", &app), 0);
    /* a stopped app is not scaled: the one table's code and words say why */
    free(app->state);
    app->state = xstrdup("STOPPED");
    assert_int_equal(store_app_update(w->store, app), 0);
    assert_int_equal(scheduler_ensure_instances(w->s, "web-app", "web", 3), SKIFF_E_APP_STOPPED);
    assert_non_null(strstr(skiff_strerror(SKIFF_E_APP_STOPPED), "stopped"));
    free(app->state);
    app->state = xstrdup("STARTED");
    store_app_process(app, "web")->instances = 1;
    assert_int_equal(store_app_update(w->store, app), 0);
    assert_int_equal(scheduler_resync(w->s), 0);
    run_until(w, one_running_only, "one instance after a resync");

    /* ... and put a new droplet into service */
    struct store_droplet drop = {.app_guid = app->guid, .process_types_json = "{}"};
    uuid_generate_v4(drop.guid);
    drop.path = xasprintf("%s/droplets/%s", w->home, drop.guid);
    char *app_dir = xasprintf("%s/app", drop.path);
    assert_int_equal(mkdir_p(app_dir, 0755), 0);
    assert_int_equal(store_droplet_add(w->store, &drop), 0);
    free(app->droplet_guid);
    app->droplet_guid = xstrdup(drop.guid);
    assert_int_equal(store_app_update(w->store, app), 0);
    snprintf(expected_droplet, sizeof expected_droplet, "%s", drop.guid);
    free(app_dir);
    free(drop.path);
    store_app_free(app);
    int ready = w->counts[PLATFORM_INSTANCE_READY];
    assert_int_equal(scheduler_resync(w->s), 0);
    until = time_mono_ms() + 300;
    while (time_mono_ms() < until)
        uv_run(&w->loop, UV_RUN_NOWAIT);
    /* seen once: nothing started yet (a deployment asked here meanwhile is not doubled) */
    assert_int_equal(w->counts[PLATFORM_INSTANCE_READY], ready);
    assert_false(all_on_expected_droplet(w));
    assert_int_equal(scheduler_resync(w->s), 0);
    run_until(w, all_on_expected_droplet, "the new droplet rolled out");

    /* leading lost: held, the instance runs on and stays routed, and leading again keeps it */
    struct scheduler_instance_info held[2];
    assert_int_equal(scheduler_app_instances(w->s, "web-app", held, 2), 1);
    int gone = w->counts[PLATFORM_INSTANCE_GONE];
    int ready_before = w->counts[PLATFORM_INSTANCE_READY];
    scheduler_set_leading(w->s, false);
    until = time_mono_ms() + 300;
    while (time_mono_ms() < until)
        uv_run(&w->loop, UV_RUN_NOWAIT);
    assert_int_equal(w->counts[PLATFORM_INSTANCE_GONE], gone);
    assert_int_equal(scheduler_running_count(w->s, "web-app"), 1);
    scheduler_set_leading(w->s, true);
    run_until(w, one_running_only, "the held instance, leading again");
    struct scheduler_instance_info kept[2];
    assert_int_equal(scheduler_app_instances(w->s, "web-app", kept, 2), 1);
    assert_string_equal(kept[0].guid, held[0].guid);
    assert_int_equal(w->counts[PLATFORM_INSTANCE_READY], ready_before);

    /* another leads: with no cell serving here (no NATS), everything stops, and nothing
     * restarts it */
    scheduler_set_leading(w->s, false);
    scheduler_hand_over(w->s);
    assert_true(w->counts[PLATFORM_INSTANCE_GONE] > gone); /* out of the route table at once */
    run_until(w, none_running, "nothing running after another leads");
    until = time_mono_ms() + 300;
    while (time_mono_ms() < until)
        uv_run(&w->loop, UV_RUN_NOWAIT);
    assert_int_equal(scheduler_running_count(w->s, "web-app"), 0);
}

static bool small_running(struct world *w)
{
    return scheduler_running_count(w->s, "small") == 2;
}

/* Placement on the local cell counts its capacity (--memory): an instance that does not fit
 * is not started (its slot waits, CRASHED, and the app's log says no cell has room), while
 * smaller ones are. */
static void test_the_local_cell_takes_only_what_fits_its_memory(void **state)
{
    struct world *w = *state;
    add_app_of(w, "big", "sleep 30", 1, 64);
    struct scheduler_instance_info info[2];
    assert_int_equal(scheduler_app_instances(w->s, "big", info, 2), 1);
    assert_string_equal(info[0].state, "CRASHED");
    assert_string_equal(info[0].guid, "");
    struct store_app *big = NULL;
    assert_int_equal(store_app_get(w->store, "big", &big), 0);
    size_t len = 0;
    char *log = logs_recent(w->logs, big->guid, 20, &len);
    store_app_free(big);
    assert_non_null(strstr(log, "no cell has 64 MB free (1 cells known)"));
    free(log);
    add_app_of(w, "small", "sleep 30", 2, 16);
    run_until(w, small_running, "both small instances running");
    assert_int_equal(scheduler_running_count(w->s, "big"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_converges_to_the_desired_count_and_says_so, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_tasks_run_once_and_report_their_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_only_a_leading_scheduler_runs_instances, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_crashes_restart_at_once_three_times_then_wait, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_the_local_cell_takes_only_what_fits_its_memory,
                                        setup_small_cell, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
