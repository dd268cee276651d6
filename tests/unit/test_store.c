/* Unit tests for store/: migrations from an empty and from an older schema, apps with their
 * processes and env, routes, domains, artifacts and documents; hostile names. Every test runs
 * twice: on SQLite, and on PostgreSQL in a throwaway server the second group starts itself
 * (scripts/pg-throwaway.sh). When that server cannot start, the PostgreSQL group fails. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "store/store.h"
#include "feed_fence.h"
#include "pg_throwaway.h"

extern const char *const store_sqlite_migrations[];
extern const size_t store_sqlite_migrations_count;
extern const char *const store_pg_migrations[];
extern const size_t store_pg_migrations_count;
extern int64_t store_pg_feed_retry_ms[2];

static bool on_pg(const char *location)
{
    return str_has_prefix(location, "postgres");
}

static const char *const *migrations(void)
{
    return pg_throwaway_dir ? store_pg_migrations : store_sqlite_migrations;
}

static size_t migrations_count(void)
{
    return pg_throwaway_dir ? store_pg_migrations_count : store_sqlite_migrations_count;
}

/* Runs SQL on the server's maintenance database or on the store at location. */
static void raw_sql(const char *location, const char *sql)
{
    if (on_pg(location)) {
        pg_throwaway_sql(location, sql);
        return;
    }
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(location, &db), SQLITE_OK);
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

/* A fresh, empty store: a file in a new folder, or a new database on the server. */
static char *temp_db(void)
{
    if (pg_throwaway_dir)
        return pg_throwaway_database();
    char dir[] = "/tmp/skiff-test-store-XXXXXX";
    assert_non_null(mkdtemp(dir));
    return xasprintf("%s/skiff.db", dir);
}

/* A fresh database on the server, for a test of what only the PostgreSQL store does (its feed,
 * its cache, a server that stops answering); NULL on SQLite, where the test has nothing to do. */
static char *temp_pg_db(void)
{
    return pg_throwaway_dir ? temp_db() : NULL;
}

static void remove_db(char *path)
{
    if (on_pg(path)) {
        /* "postgres:///tN?...": the database this test made */
        const char *name = path + strlen("postgres:///");
        char *admin = pg_throwaway_url("postgres");
        char *sql = xasprintf("DROP DATABASE %.*s WITH (FORCE)", (int)strcspn(name, "?"), name);
        raw_sql(admin, sql);
        free(sql);
        free(admin);
        free(path);
        return;
    }
    char *dir = xstrdup(path);
    *strrchr(dir, '/') = '\0';
    rm_rf(dir);
    free(dir);
    free(path);
}

static struct store *open_ok(const char *path)
{
    char err[256] = "";
    struct store *st = NULL;
    int rc = store_open(path, err, sizeof err, &st);
    if (rc < 0)
        fail_msg("store_open: %s", err);
    return st;
}

static struct store_app *sample_app(const char *name)
{
    struct store_app *app = calloc(1, sizeof *app);
    uuid_generate_v4(app->guid);
    app->name = xstrdup(name);
    app->state = xstrdup("STARTED");
    app->kind = xstrdup("app");
    app->memory_mb = 128;
    app->disk_mb = 512;
    app->timeout = 30;
    app->buildpacks_json = xstrdup("[\"python\"]");
    app->health_check_type = xstrdup("http");
    app->health_check_http_endpoint = xstrdup("/health");
    app->created_at = app->updated_at = 1000;
    app->n_processes = 2;
    app->processes = calloc(2, sizeof *app->processes);
    app->processes[0].type = xstrdup("web");
    app->processes[0].instances = 3;
    app->processes[1].type = xstrdup("worker");
    app->processes[1].command = xstrdup("python3 worker.py");
    app->processes[1].instances = 1;
    app->processes[0].min_instances = STORE_SCALE_MANUAL;
    app->processes[1].min_instances = 0;
    app->processes[1].max_instances = 7; /* a request scaling policy (src/autoscaler) */
    app->processes[1].target_rps = 40;
    app->processes[1].window_ms = 6000;
    app->processes[1].scale_down_delay_ms = 2500;
    /* health-check timing, a readiness check and a log rate limit on web; none on worker */
    struct store_process_checks *c = &app->processes[0].checks;
    c->health_interval_s = 10;
    c->health_timeout_s = 2;
    c->readiness_type = xstrdup("http");
    c->readiness_endpoint = xstrdup("/ready");
    c->readiness_interval_s = 5;
    c->readiness_timeout_s = 3;
    c->log_rate_limited = true;
    c->log_rate_limit = 16384;
    app->n_env = 2;
    app->env = calloc(2, sizeof *app->env);
    app->env[0].name = xstrdup("A");
    app->env[0].value = xstrdup("1");
    app->env[1].name = xstrdup("B");
    app->env[1].value = xstrdup("two words");
    return app;
}

static void test_migrates_an_empty_store(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    assert_int_equal(store_schema_version(st), (int)migrations_count());
    char **domains = NULL;
    bool *shared = NULL;
    assert_int_equal(store_domain_list(st, &domains, &shared, NULL), 0);
    assert_string_equal(domains[0], "localhost");
    assert_true(shared[0]);
    assert_null(domains[1]);
    strv_free(domains);
    free(shared);
    store_close(st);
    /* opening again applies nothing and keeps the version */
    st = open_ok(path);
    assert_int_equal(store_schema_version(st), (int)migrations_count());
    store_close(st);
    remove_db(path);
}

static void test_migrates_an_older_store_keeping_its_data(void **state)
{
    (void)state;
    char *path = temp_db();
    /* a store made by a skiffd that knew only migration 1, with an app in it */
    raw_sql(path, "CREATE TABLE schema_version (version INTEGER NOT NULL,"
                  " applied_at BIGINT NOT NULL);"
                  "INSERT INTO schema_version VALUES (1, 0);");
    raw_sql(path, migrations()[0]);
    raw_sql(path, "INSERT INTO apps (guid, name, state, memory_mb, disk_mb, "
                  "timeout, created_at, updated_at) VALUES ('g-old', 'old', "
                  "'STOPPED', 64, 128, 60, 1, 1);"
                  "INSERT INTO routes VALUES ('r-old', 'old.localhost', '', "
                  "'g-old', 'localhost');"
                  "INSERT INTO apps (guid, name, state, kind, memory_mb, "
                  "disk_mb, timeout, created_at, updated_at) VALUES ('g-fn', "
                  "'fn', 'STARTED', 'function', 64, 128, 60, 1, 1);"
                  "INSERT INTO processes VALUES ('g-old', 'web', NULL, 2, 0);"
                  "INSERT INTO processes VALUES ('g-old', 'resize', NULL, 0, 0);"
                  "INSERT INTO processes VALUES ('g-fn', 'web', NULL, 0, 0);");

    struct store *st = open_ok(path);
    assert_int_equal(store_schema_version(st), (int)migrations_count());
    struct store_app *app = NULL;
    assert_int_equal(store_app_get(st, "old", &app), 0);
    assert_string_equal(app->guid, "g-old");
    assert_int_equal(app->memory_mb, 64);
    /* made before spaces: it lives in the default space, and is found there by name */
    assert_string_equal(app->space_guid, STORE_DEFAULT_SPACE_GUID);
    struct store_app *again = NULL;
    assert_int_equal(store_app_find(st, STORE_DEFAULT_SPACE_GUID, "old", &again), 0);
    store_app_free(again);
    assert_int_equal(store_app_find(st, "another-space", "old", &again), -ENOENT);
    /* scaling policies as the rules before them said: an app's web process is its user's,
     * its other process types (functions of its manifest) and a function scale to zero */
    assert_int_equal(store_app_process(app, "web")->min_instances, STORE_SCALE_MANUAL);
    assert_int_equal(store_app_process(app, "resize")->min_instances, 0);
    assert_false(store_process_autoscaled(store_app_process(app, "web")));
    store_app_free(app);
    assert_int_equal(store_app_get(st, "fn", &app), 0);
    assert_int_equal(store_app_process(app, "web")->min_instances, 0);
    assert_true(store_process_autoscaled(store_app_process(app, "web")));
    assert_int_equal(store_process_default_min("function", "web"), 0);
    assert_int_equal(store_process_default_min("app", "web"), STORE_SCALE_MANUAL);
    assert_int_equal(store_process_default_min("app", "worker"), 0);
    store_app_free(app);
    /* a route made before routes had a balance keeps the router's default */
    struct store_route *routes = NULL;
    size_t n = 0;
    assert_int_equal(store_route_list(st, "g-old", &routes, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(routes[0].balance, "round-robin");
    assert_string_equal(routes[0].protocol, "http1"); /* and the protocol HTTP/1.1 */
    store_route_list_free(routes, n);
    /* the newer tables work */
    assert_int_equal(store_doc_put(st, "mapping", "m1", "{\"a\":1}"), 0);
    store_close(st);
    remove_db(path);
}

static void test_migrates_a_store_with_https_only_routes_to_protocols(void **state)
{
    (void)state;
    char *path = temp_db();
    /* a store made by a skiffd that knew migrations 1 to 13 (routes.https_only), with an
     * HTTPS-only route: migrations 14 and 15 give it a protocol and keeps its https_only */
    raw_sql(path, "CREATE TABLE schema_version (version INTEGER NOT NULL,"
                  " applied_at BIGINT NOT NULL);"
                  "INSERT INTO schema_version VALUES (13, 0);");
    for (size_t i = 0; i < 13; i++)
        raw_sql(path, migrations()[i]);
    raw_sql(path, "INSERT INTO apps (guid, name, state, memory_mb, disk_mb, timeout, "
                  "created_at, updated_at, space_guid) VALUES ('g-tls', 'tls', 'STOPPED', 64, "
                  "128, 60, 1, 1, '" STORE_DEFAULT_SPACE_GUID "');"
                  "INSERT INTO routes (guid, host, path, app_guid, domain, balance, https_only)"
                  " VALUES ('r-tls', 'tls.localhost', '', 'g-tls', 'localhost',"
                  " 'least-connection', TRUE);");
    struct store *st = open_ok(path);
    assert_int_equal(store_schema_version(st), (int)migrations_count());
    assert_int_equal(migrations_count(), 22);
    struct store_route *routes = NULL;
    size_t n = 0;
    assert_int_equal(store_route_list(st, "g-tls", &routes, &n), 0);
    assert_int_equal(n, 1);
    assert_true(routes[0].https_only);
    assert_string_equal(routes[0].balance, "least-connection");
    assert_string_equal(routes[0].protocol, "http1");
    store_route_list_free(routes, n);
    /* each setter changes its own column only */
    assert_int_equal(store_route_update(st, "tls.localhost", "", NULL, "http2"), 0);
    assert_int_equal(store_route_list(st, "g-tls", &routes, &n), 0);
    assert_true(routes[0].https_only);
    assert_string_equal(routes[0].protocol, "http2");
    store_route_list_free(routes, n);
    assert_int_equal(store_route_set_https_only(st, "tls.localhost", "", false), 0);
    assert_int_equal(store_route_list(st, "g-tls", &routes, &n), 0);
    assert_false(routes[0].https_only);
    assert_string_equal(routes[0].protocol, "http2");
    assert_string_equal(routes[0].balance, "least-connection");
    store_route_list_free(routes, n);
    store_close(st);
    remove_db(path);
}

static void test_refuses_a_newer_store(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    store_close(st);
    raw_sql(path, "INSERT INTO schema_version VALUES (999, 0);");
    char err[256] = "";
    st = NULL;
    assert_true(store_open(path, err, sizeof err, &st) < 0);
    assert_null(st);
    assert_non_null(strstr(err, "newer"));
    remove_db(path);
}

static void test_apps_round_trip_with_processes_and_env(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_app *dup = sample_app("shop");
    assert_int_equal(store_app_create(st, dup), -EEXIST);
    store_app_free(dup);

    struct store_app *got = NULL;
    assert_int_equal(store_app_get(st, app->guid, &got), 0);
    assert_string_equal(got->name, "shop");
    assert_int_equal(got->n_processes, 2);
    assert_string_equal(got->processes[0].type, "web");
    assert_int_equal(got->processes[0].instances, 3);
    assert_null(got->processes[0].command);
    assert_int_equal(got->processes[0].min_instances, STORE_SCALE_MANUAL);
    assert_int_equal(store_app_process(got, "worker")->min_instances, 0);
    assert_string_equal(store_app_process(got, "worker")->command, "python3 worker.py");
    const struct store_process *worker = store_app_process(got, "worker");
    assert_true(store_process_request_scaled(worker));
    assert_false(store_process_request_scaled(&got->processes[0]));
    assert_int_equal(worker->max_instances, 7);
    assert_int_equal(worker->target_concurrency, 0);
    assert_int_equal(worker->target_rps, 40);
    assert_int_equal(worker->window_ms, 6000);
    assert_int_equal(worker->scale_down_delay_ms, 2500);
    assert_int_equal(got->processes[0].max_instances, 0);
    const struct store_process_checks *c = &got->processes[0].checks;
    assert_int_equal(c->health_interval_s, 10);
    assert_int_equal(c->health_timeout_s, 2);
    assert_string_equal(c->readiness_type, "http");
    assert_string_equal(c->readiness_endpoint, "/ready");
    assert_int_equal(c->readiness_interval_s, 5);
    assert_int_equal(c->readiness_timeout_s, 3);
    assert_true(c->log_rate_limited);
    assert_int_equal(c->log_rate_limit, 16384);
    c = &worker->checks; /* unset: defaults, unlimited */
    assert_int_equal(c->health_interval_s, 0);
    assert_null(c->readiness_type);
    assert_null(c->readiness_endpoint);
    assert_false(c->log_rate_limited);
    assert_int_equal(got->n_env, 2);
    assert_string_equal(got->env[1].value, "two words");
    assert_string_equal(got->health_check_http_endpoint, "/health");

    /* update replaces children */
    free(got->env[1].name);
    free(got->env[1].value);
    got->n_env = 1;
    got->processes[0].instances = 5;
    free(got->state);
    got->state = xstrdup("STOPPED");
    assert_int_equal(store_app_update(st, got), 0);
    store_app_free(got);
    got = NULL;
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_int_equal(got->n_env, 1);
    assert_int_equal(got->processes[0].instances, 5);
    assert_string_equal(got->state, "STOPPED");
    struct store_app *copy = store_app_dup(got);
    assert_string_equal(copy->env[0].name, "A");
    store_app_free(copy);
    store_app_free(got);

    struct store_app *other = sample_app("blog");
    assert_int_equal(store_app_create(st, other), 0);
    struct store_app **list = NULL;
    size_t n = 0;
    assert_int_equal(store_app_list(st, &list, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(list[0]->name, "blog");
    assert_int_equal(list[0]->n_processes, 2);
    assert_int_equal(list[1]->n_env, 1);
    store_app_list_free(list, n);

    assert_int_equal(store_app_delete(st, app->guid), 0);
    assert_int_equal(store_app_get(st, "shop", &got), -ENOENT);
    assert_int_equal(store_app_delete(st, app->guid), -ENOENT);
    store_app_free(app);
    store_app_free(other);
    store_close(st);
    remove_db(path);
}

/* Sidecars are kept with the app (both backends) and read per process type. */
static void test_app_sidecars_round_trip_per_process_type(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    app->sidecars_json =
        xstrdup("[{\"name\":\"proxy\",\"process_types\":[\"web\"],\"command\":\"./proxy\","
                "\"memory_mb\":32},{\"name\":\"agent\",\"process_types\":[\"web\",\"worker\"],"
                "\"command\":\"./agent\"}]");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_app *got = NULL;
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_string_equal(got->sidecars_json, app->sidecars_json);
    struct store_sidecar *sc = NULL;
    size_t n = 0;
    assert_int_equal(store_app_sidecars(got, "web", &sc, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(sc[0].name, "proxy");
    assert_string_equal(sc[0].command, "./proxy");
    assert_int_equal(sc[0].memory_mb, 32);
    assert_string_equal(sc[1].name, "agent");
    store_sidecars_free(sc, n);
    assert_int_equal(store_app_sidecars(got, "worker", &sc, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(sc[0].name, "agent");
    store_sidecars_free(sc, n);
    assert_int_equal(store_app_sidecars(got, "clock", &sc, &n), 0);
    assert_int_equal(n, 0);
    assert_null(sc);
    /* a push without them removes them */
    free(got->sidecars_json);
    got->sidecars_json = NULL;
    assert_int_equal(store_app_update(st, got), 0);
    store_app_free(got);
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_null(got->sidecars_json);
    assert_int_equal(store_app_sidecars(got, "web", &sc, &n), 0);
    assert_int_equal(n, 0);
    free(got->sidecars_json);
    got->sidecars_json = xstrdup("{\"not\":\"a list\"}");
    assert_int_equal(store_app_sidecars(got, "web", &sc, &n), -EINVAL);
    store_app_free(got);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

/* enable-ssh / disable-ssh is kept with the app (both backends); a new app has ssh on. */
static void test_app_ssh_setting_round_trips(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_app *got = NULL;
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_false(got->ssh_disabled);
    got->ssh_disabled = true;
    assert_int_equal(store_app_update(st, got), 0);
    store_app_free(got);
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_true(got->ssh_disabled);
    got->ssh_disabled = false;
    assert_int_equal(store_app_update(st, got), 0);
    store_app_free(got);
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_false(got->ssh_disabled);
    store_app_free(got);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

/* Renames a table behind the store's back, through a connection of its own. */
/* Waits (10 s at most) until st's change count moves from before: another writer's change
 * has come through the change feed. */
/* On PostgreSQL, news of an app another writer changed counts once the store's writer read
 * the app again and its answer is reaped, as skiffd's loop does when told (store_async_fd). */
static void wait_for_change(struct store *st, uint64_t before)
{
    for (int i = 0; i < 1000 && (store_async_reap(st), store_change_count(st) == before); i++)
        usleep(10 * 1000);
    assert_true(store_change_count(st) != before);
}

/* Renames a table behind st's back. On PostgreSQL the change is announced as an operator
 * would after changing the database by hand (NOTIFY skiff_store, 'all'), so that st's read
 * cache is dropped and its next read goes to the database; DDL fires no trigger. */
static void rename_table(struct store *st, const char *path, const char *from, const char *to)
{
    uint64_t before = store_change_count(st);
    char *sql = xasprintf("ALTER TABLE %s RENAME TO %s;%s", from, to,
                          on_pg(path) ? "NOTIFY skiff_store, 'all';" : "");
    raw_sql(path, sql);
    free(sql);
    if (on_pg(path))
        wait_for_change(st, before);
}

/* When a child query (processes, env) fails, reading apps fails as a whole: an app without
 * its processes would look like an app with none, and be scaled or shown wrongly. */
static void test_app_reads_fail_when_a_child_query_fails(void **state)
{
    (void)state;
    static const char *const children[] = {"processes", "env_vars"};
    for (size_t c = 0; c < ARRAY_SIZE(children); c++) {
        char *path = temp_db();
        struct store *st = open_ok(path);
        struct store_app *app = sample_app("shop");
        assert_int_equal(store_app_create(st, app), 0);
        struct store_app *got = NULL, **list = NULL;
        size_t n = 0;
        /* once with every statement cached, so the failure comes at step, not at prepare */
        assert_int_equal(store_app_get(st, "shop", &got), 0);
        store_app_free(got);
        got = NULL;
        assert_int_equal(store_app_list(st, &list, &n), 0);
        store_app_list_free(list, n);
        list = NULL;
        n = 7;

        rename_table(st, path, children[c], "gone");
        assert_int_equal(store_app_get(st, "shop", &got), -EIO);
        assert_null(got);
        assert_int_equal(store_app_list(st, &list, &n), -EIO);
        assert_null(list);
        assert_int_equal(n, 7);

        /* and the store reads again once the table is back */
        rename_table(st, path, "gone", children[c]);
        assert_int_equal(store_app_get(st, "shop", &got), 0);
        assert_int_equal(got->n_processes, 2);
        assert_int_equal(got->n_env, 2);
        store_app_free(got);
        got = NULL;
        assert_int_equal(store_app_list(st, &list, &n), 0);
        assert_int_equal(n, 1);
        store_app_list_free(list, n);
        store_app_free(app);
        store_close(st);
        remove_db(path);
    }
}

static void test_route_and_domain_lists_fail_when_their_query_fails(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_route r = {.host = "shop.localhost",
                            .path = "",
                            .app_guid = app->guid,
                            .domain = "localhost",
                            .balance = "round-robin"};
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(st, &r), 0);
    struct store_route *routes = NULL;
    size_t n = 0;
    assert_int_equal(store_route_list(st, app->guid, &routes, &n), 0);
    assert_int_equal(n, 1);
    store_route_list_free(routes, n);
    routes = NULL;
    n = 0;

    rename_table(st, path, "routes", "gone");
    assert_int_equal(store_route_list(st, app->guid, &routes, &n), -EIO);
    assert_int_equal(store_route_list(st, NULL, &routes, &n), -EIO);
    assert_null(routes);
    assert_int_equal(n, 0);
    rename_table(st, path, "gone", "routes");

    rename_table(st, path, "domains", "gone");
    char **domains = NULL;
    assert_int_equal(store_domain_list(st, &domains, NULL, NULL), -EIO);
    assert_null(domains);
    rename_table(st, path, "gone", "domains");
    assert_int_equal(store_domain_list(st, &domains, NULL, NULL), 0);
    assert_string_equal(domains[0], "localhost");
    strv_free(domains);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

static void test_routes_are_unique_and_go_with_their_app(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_route r = {
        .host = "shop.localhost", .path = "", .app_guid = app->guid, .domain = "localhost"};
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(st, &r), 0);
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(st, &r), -EEXIST);
    r.path = "/api";
    assert_int_equal(store_route_add(st, &r), 0);
    struct store_route *routes = NULL;
    size_t n = 0;
    assert_int_equal(store_route_list(st, app->guid, &routes, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(routes[1].path, "/api");
    assert_string_equal(routes[1].balance, "round-robin"); /* none given */
    assert_string_equal(routes[1].protocol, "http1");
    store_route_list_free(routes, n);
    assert_int_equal(store_route_update(st, "shop.localhost", "/api", "least-connection", NULL), 0);
    assert_int_equal(store_route_update(st, "shop.localhost", "/none", "round-robin", NULL),
                     -ENOENT);
    /* the protocol alone, the balance kept */
    assert_int_equal(store_route_update(st, "shop.localhost", "", NULL, "http2"), 0);
    r.path = "/lc";
    r.balance = "least-connection";
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(st, &r), 0);
    assert_int_equal(store_route_list(st, app->guid, &routes, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(routes[0].balance, "round-robin");
    assert_string_equal(routes[0].protocol, "http2");
    assert_string_equal(routes[1].path, "/api");
    assert_string_equal(routes[1].balance, "least-connection");
    assert_string_equal(routes[1].protocol, "http1");
    assert_string_equal(routes[2].balance, "least-connection");
    assert_false(routes[0].https_only); /* off unless asked for */
    store_route_list_free(routes, n);
    /* https_only: given at add, changed on a route that exists */
    r.path = "/secure";
    r.https_only = true;
    r.protocol = "http2";
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(st, &r), 0);
    assert_int_equal(store_route_set_https_only(st, "shop.localhost", "/api", true), 0);
    assert_int_equal(store_route_set_https_only(st, "shop.localhost", "/none", true), -ENOENT);
    assert_int_equal(store_route_list(st, app->guid, &routes, &n), 0);
    assert_int_equal(n, 4);
    assert_false(routes[0].https_only);
    assert_string_equal(routes[1].path, "/api");
    assert_true(routes[1].https_only);
    assert_false(routes[2].https_only);
    assert_string_equal(routes[3].path, "/secure");
    assert_true(routes[3].https_only);
    assert_string_equal(routes[3].protocol, "http2"); /* both given at add, both kept */
    assert_string_equal(routes[1].protocol, "http1");
    store_route_list_free(routes, n);
    assert_int_equal(store_route_set_https_only(st, "shop.localhost", "/api", false), 0);
    assert_int_equal(store_route_list(st, app->guid, &routes, &n), 0);
    assert_false(routes[1].https_only);
    store_route_list_free(routes, n);
    assert_int_equal(store_route_delete(st, "shop.localhost", "/secure"), 0);
    assert_int_equal(store_route_delete(st, "shop.localhost", "/api"), 0);
    assert_int_equal(store_route_delete(st, "shop.localhost", "/api"), -ENOENT);
    /* deleting the app takes its routes */
    assert_int_equal(store_app_delete(st, app->guid), 0);
    assert_int_equal(store_route_list(st, NULL, &routes, &n), 0);
    assert_int_equal(n, 0);
    store_route_list_free(routes, n);
    assert_int_equal(store_domain_add(st, "example.test", NULL), 0);
    assert_int_equal(store_domain_add(st, "example.test", "org-guid"), -EEXIST);
    assert_int_equal(store_domain_add(st, "acme.test", "org-guid"), 0);
    char **names = NULL, **orgs = NULL;
    bool *shared = NULL;
    assert_int_equal(store_domain_list(st, &names, &shared, &orgs), 0);
    assert_string_equal(names[0], "acme.test");
    assert_false(shared[0]);
    assert_string_equal(orgs[0], "org-guid");
    assert_string_equal(names[1], "example.test");
    assert_true(shared[1]);
    assert_string_equal(orgs[1], "");
    strv_free(names);
    strv_free(orgs);
    free(shared);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

static void test_artifacts_and_pruning(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_package p1 = {.app_guid = app->guid, .path = "/pk/1", .bytes = 10};
    struct store_package p2 = {.app_guid = app->guid, .path = "/pk/2", .bytes = 20};
    uuid_generate_v4(p1.guid);
    uuid_generate_v4(p2.guid);
    assert_int_equal(store_package_add(st, &p1), 0);
    assert_int_equal(store_package_add(st, &p2), 0);
    struct store_droplet d1 = {.app_guid = app->guid,
                               .path = "/dr/1",
                               .buildpack = "python",
                               .process_types_json = "{\"web\":\"python3 app.py\"}"};
    uuid_generate_v4(d1.guid);
    assert_int_equal(store_droplet_add(st, &d1), 0);
    struct store_droplet *d = NULL;
    assert_int_equal(store_droplet_get(st, d1.guid, &d), 0);
    assert_string_equal(d->buildpack, "python");
    assert_string_equal(d->process_types_json, "{\"web\":\"python3 app.py\"}");
    store_droplet_free(d);
    char **old = NULL;
    assert_int_equal(store_app_prune_artifacts(st, app->guid, p2.guid, d1.guid, &old), 0);
    assert_string_equal(old[0], "/pk/1");
    assert_null(old[1]);
    strv_free(old);
    struct store_package *pk = NULL;
    assert_int_equal(store_package_get(st, p1.guid, &pk), -ENOENT);
    assert_int_equal(store_package_get(st, p2.guid, &pk), 0);
    assert_int_equal(pk->bytes, 20);
    store_package_free(pk);
    /* without a droplet to keep, droplets are left alone (revisions decide about them) */
    struct store_droplet d2 = {.app_guid = app->guid, .path = "/dr/2", .process_types_json = "{}"};
    uuid_generate_v4(d2.guid);
    assert_int_equal(store_droplet_add(st, &d2), 0);
    assert_int_equal(store_app_prune_artifacts(st, app->guid, p2.guid, NULL, &old), 0);
    assert_null(old[0]);
    strv_free(old);
    assert_int_equal(store_droplet_get(st, d2.guid, &d), 0);
    store_droplet_free(d);
    assert_int_equal(store_droplet_delete(st, d2.guid), 0);
    assert_int_equal(store_droplet_get(st, d2.guid, &d), -ENOENT);
    assert_int_equal(store_droplet_delete(st, d2.guid), -ENOENT);
    assert_int_equal(store_droplet_get(st, d1.guid, &d), 0);
    store_droplet_free(d);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

static int count_docs(void *ctx, const char *id, const char *json)
{
    (void)json;
    int *n = ctx;
    (*n)++;
    return strcmp(id, "b") == 0; /* stop after b */
}

static void test_documents(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    assert_int_equal(store_doc_put(st, "k", "a", "{\"v\":1}"), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{\"v\":2}"), 0);
    assert_int_equal(store_doc_put(st, "k", "b", "{}"), 0);
    assert_int_equal(store_doc_put(st, "k", "c", "{}"), 0);
    assert_int_equal(store_doc_put(st, "other", "a", "{}"), 0);
    char *json = NULL;
    assert_int_equal(store_doc_get(st, "k", "a", &json), 0);
    assert_string_equal(json, "{\"v\":2}");
    free(json);
    int n = 0;
    assert_int_equal(store_doc_each(st, "k", count_docs, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(store_doc_delete(st, "k", "a"), 0);
    assert_int_equal(store_doc_get(st, "k", "a", &json), -ENOENT);
    store_close(st);
    remove_db(path);
}

/* A document created only when absent: the second create of an id is -EEXIST and leaves the
 * first one's body; once deleted, the id may be created again. */
static void test_doc_create_claims_an_id_once(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    assert_int_equal(store_doc_create(st, "k.name", "alice", "{\"v\":1}"), 0);
    assert_int_equal(store_doc_create(st, "k.name", "alice", "{\"v\":2}"), -EEXIST);
    assert_int_equal(store_doc_create(st, "other", "alice", "{}"), 0); /* kinds are apart */
    char *json = NULL;
    assert_int_equal(store_doc_get(st, "k.name", "alice", &json), 0);
    assert_string_equal(json, "{\"v\":1}");
    free(json);
    assert_int_equal(store_doc_delete(st, "k.name", "alice"), 0);
    assert_int_equal(store_doc_create(st, "k.name", "alice", "{\"v\":3}"), 0);
    store_close(st);
    remove_db(path);
}

#define CLAIM_RACERS 4
#define CLAIM_NAMES 50

struct claimer {
    const char *path;
    pthread_barrier_t *start;
    int won[CLAIM_NAMES];
    int failed; /* an error other than -EEXIST */
};

/* One store handle each (one skiffd each), all claiming the same names at once. */
static void *claimer_run(void *arg)
{
    struct claimer *c = arg;
    char err[256];
    struct store *st = NULL;
    int rc = store_open(c->path, err, sizeof err, &st);
    pthread_barrier_wait(c->start);
    if (rc < 0) {
        c->failed++;
        return NULL;
    }
    for (int i = 0; i < CLAIM_NAMES; i++) {
        char name[32];
        snprintf(name, sizeof name, "user-%d", i);
        rc = store_doc_create(st, "auth.user.name", name, "{}");
        if (rc == 0)
            c->won[i] = 1;
        else if (rc != -EEXIST)
            c->failed++;
    }
    store_close(st);
    return NULL;
}

/* Writers on one database creating the same ids at the same moment: each id is won by
 * exactly one of them, the others told -EEXIST. */
static void test_racing_creates_of_one_id_have_one_winner(void **state)
{
    (void)state;
    char *path = temp_db();
    store_close(open_ok(path)); /* migrated before the racers open it */
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, CLAIM_RACERS);
    struct claimer c[CLAIM_RACERS];
    pthread_t th[CLAIM_RACERS];
    for (int i = 0; i < CLAIM_RACERS; i++) {
        c[i] = (struct claimer){.path = path, .start = &start};
        assert_int_equal(pthread_create(&th[i], NULL, claimer_run, &c[i]), 0);
    }
    for (int i = 0; i < CLAIM_RACERS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < CLAIM_RACERS; i++)
        assert_int_equal(c[i].failed, 0);
    for (int n = 0; n < CLAIM_NAMES; n++) {
        int winners = 0;
        for (int i = 0; i < CLAIM_RACERS; i++)
            winners += c[i].won[n];
        assert_int_equal(winners, 1);
    }
    remove_db(path);
}

/* A task's record keeps what it ran and how it ended; a sequence id is the app's once; the
 * app's deletion takes its tasks. */
static void test_tasks_round_trip_and_go_with_their_app(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_task t = {.sequence_id = 1,
                           .name = "migrate",
                           .command = "rake db:migrate; echo 'it''s done'",
                           .state = "RUNNING",
                           .exit_status = -1,
                           .memory_mb = 256,
                           .disk_mb = 1024,
                           .created_at = 1000,
                           .updated_at = 1000};
    uuid_generate_v4(t.guid);
    snprintf(t.app_guid, sizeof t.app_guid, "%s", app->guid);
    snprintf(t.droplet_guid, sizeof t.droplet_guid, "d-1");
    assert_int_equal(store_task_put(st, &t), 0);
    struct store_task second = t;
    uuid_generate_v4(second.guid);
    assert_int_equal(store_task_put(st, &second), -EEXIST); /* sequence id 1 is taken */
    second.sequence_id = 2;
    assert_int_equal(store_task_put(st, &second), 0);
    t.state = "FAILED";
    t.failure_reason = "exited with status 3";
    t.exit_status = 3;
    t.updated_at = 2000;
    assert_int_equal(store_task_put(st, &t), 0);
    struct store_task *list = NULL;
    size_t n = 0;
    assert_int_equal(store_task_list(st, app->guid, &list, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(list[0].sequence_id, 1);
    assert_string_equal(list[0].guid, t.guid);
    assert_string_equal(list[0].command, t.command);
    assert_string_equal(list[0].state, "FAILED");
    assert_string_equal(list[0].failure_reason, "exited with status 3");
    assert_int_equal(list[0].exit_status, 3);
    assert_int_equal(list[0].memory_mb, 256);
    assert_int_equal(list[0].updated_at, 2000);
    assert_null(list[1].failure_reason);
    store_task_list_free(list, n);
    assert_int_equal(store_task_delete(st, second.guid), 0);
    assert_int_equal(store_task_delete(st, second.guid), -ENOENT);
    assert_int_equal(store_task_list(st, NULL, &list, &n), 0);
    assert_int_equal(n, 1);
    store_task_list_free(list, n);
    assert_int_equal(store_app_delete(st, app->guid), 0);
    assert_int_equal(store_task_list(st, NULL, &list, &n), 0);
    assert_int_equal(n, 0);
    store_task_list_free(list, n);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

static void test_refuses_a_foreign_backend(void **state)
{
    (void)state;
    char err[256] = "";
    struct store *st = NULL;
    assert_true(store_open("mysql://root:hunter2@localhost/skiff", err, sizeof err, &st) < 0);
    assert_null(st);
    assert_non_null(strstr(err, "sqlite:PATH"));
    assert_non_null(strstr(err, "postgres://"));
    /* the password in the location is never repeated */
    assert_null(strstr(err, "hunter2"));
    assert_non_null(strstr(err, "root:***@localhost"));
}

static void test_unreachable_postgres_names_no_password(void **state)
{
    (void)state;
    char err[512] = "";
    struct store *st = NULL;
    assert_true(store_open("postgres://skiff:s3cret@/skiff?host=/nonexistent&password=s3cret", err,
                           sizeof err, &st) < 0);
    assert_null(st);
    assert_null(strstr(err, "s3cret"));
    assert_non_null(strstr(err, "cannot connect"));
}

/* Values that would break SQL built from text: every call binds them as parameters. */
static void test_hostile_names_are_only_data(void **state)
{
    (void)state;
    static const char *const names[] = {
        "it's", "\"quoted\"", "'; DROP TABLE apps; --", "back\\slash", "ünïcödé-名前-🚀",
        "$1",   "%s%n",       "x' OR '1'='1",
    };
    char *path = temp_db();
    struct store *st = open_ok(path);
    char *longname = malloc(10001);
    memset(longname, 'a', 10000);
    longname[10000] = '\0';
    for (size_t i = 0; i <= ARRAY_SIZE(names); i++) {
        const char *name = i < ARRAY_SIZE(names) ? names[i] : longname;
        struct store_app *app = sample_app(name);
        free(app->env[1].value);
        app->env[1].value = xstrdup(name);
        assert_int_equal(store_app_create(st, app), 0);
        struct store_app *got = NULL;
        assert_int_equal(store_app_get(st, name, &got), 0);
        assert_string_equal(got->name, name);
        assert_string_equal(got->env[1].value, name);
        store_app_free(got);
        /* the same name again is taken, not a second row */
        uuid_generate_v4(app->guid);
        assert_int_equal(store_app_create(st, app), -EEXIST);
        assert_int_equal(store_doc_put(st, name, name, name), 0);
        char *json = NULL;
        assert_int_equal(store_doc_get(st, name, name, &json), 0);
        assert_string_equal(json, name);
        free(json);
        store_app_free(app);
    }
    free(longname);
    struct store_app **list = NULL;
    size_t n = 0;
    assert_int_equal(store_app_list(st, &list, &n), 0);
    assert_int_equal(n, ARRAY_SIZE(names) + 1);
    store_app_list_free(list, n);
    store_close(st);
    remove_db(path);
}

/* Migration 14: a function's max_instances moves from its function document into its
 * scaling policy, the one place it is kept, and a function app's process gets the default
 * policy; an app's web process keeps none. */
static void test_migration_moves_a_functions_max_into_its_policy(void **state)
{
    (void)state;
    char *path = temp_db();
    raw_sql(path, "CREATE TABLE schema_version (version INTEGER NOT NULL,"
                  " applied_at BIGINT NOT NULL);"
                  "INSERT INTO schema_version VALUES (11, 0);");
    for (size_t v = 0; v < 11; v++)
        raw_sql(path, migrations()[v]);
    raw_sql(path, "INSERT INTO apps (guid, space_guid, name, state, kind, memory_mb, disk_mb, "
                  "timeout, created_at, updated_at) VALUES ('g-shop', '" STORE_DEFAULT_SPACE_GUID
                  "', 'shop', 'STARTED', 'app', 64, 128, 60, 1, 1);"
                  "INSERT INTO apps (guid, space_guid, name, state, kind, memory_mb, disk_mb, "
                  "timeout, created_at, updated_at) VALUES ('g-fn', '" STORE_DEFAULT_SPACE_GUID
                  "', 'fn', 'STARTED', 'function', 64, 128, 60, 1, 1);"
                  "INSERT INTO processes (app_guid, type, command, instances, memory_mb, "
                  "min_instances) VALUES ('g-shop', 'web', NULL, 2, 0, -1);"
                  "INSERT INTO processes (app_guid, type, command, instances, memory_mb, "
                  "min_instances, function) VALUES ('g-shop', 'resize', NULL, 0, 0, 0, "
                  "'{\"handler\":\"shop/images.py:resize\",\"runtime\":\"python\","
                  "\"max_instances\":3}');"
                  "INSERT INTO processes (app_guid, type, command, instances, memory_mb, "
                  "min_instances) VALUES ('g-fn', 'web', NULL, 0, 0, 0);");
    struct store *st = open_ok(path);
    assert_int_equal(store_schema_version(st), (int)migrations_count());
    struct store_app *app = NULL;
    assert_int_equal(store_app_get(st, "shop", &app), 0);
    const struct store_process *web = store_app_process(app, "web");
    assert_false(store_process_request_scaled(web));
    const struct store_process *fn = store_app_process(app, "resize");
    assert_true(store_process_request_scaled(fn));
    assert_int_equal(fn->max_instances, 3);
    assert_int_equal(fn->min_instances, 0);
    assert_int_equal(fn->target_concurrency, STORE_DEFAULT_TARGET_CONCURRENCY);
    assert_null(strstr(fn->function_json, "max_instances"));
    assert_non_null(strstr(fn->function_json, "shop/images.py:resize"));
    store_app_free(app);
    assert_int_equal(store_app_get(st, "fn", &app), 0);
    web = store_app_process(app, "web");
    assert_true(store_process_request_scaled(web));
    assert_int_equal(web->max_instances, STORE_FUNCTION_DEFAULT_MAX_INSTANCES);
    assert_int_equal(web->target_concurrency, STORE_DEFAULT_TARGET_CONCURRENCY);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

/* A domain's certificate and key: set, replaced, read back; only a domain that exists may
 * have one; a domain without one is -ENOENT. */
static void test_domain_certificates_round_trip(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    char **names = NULL;
    assert_int_equal(store_domain_cert_list(st, &names), 0);
    assert_null(names[0]);
    strv_free(names);
    char *cert = NULL, *key = NULL;
    assert_int_equal(store_domain_cert_get(st, "localhost", &cert, &key), -ENOENT);
    assert_true(store_domain_cert_set(st, "nowhere.test", "C", "K") < 0); /* no such domain */
    assert_int_equal(store_domain_add(st, "shop.test", NULL), 0);
    assert_int_equal(store_domain_cert_set(st, "shop.test", "CERT1", "KEY1"), 0);
    assert_int_equal(store_domain_cert_set(st, "shop.test", "CERT2", "KEY2"), 0);
    assert_int_equal(store_domain_cert_get(st, "shop.test", &cert, &key), 0);
    assert_string_equal(cert, "CERT2");
    assert_string_equal(key, "KEY2");
    free(cert);
    free(key);
    assert_int_equal(store_domain_cert_get(st, "shop.test", &cert, NULL), 0);
    assert_string_equal(cert, "CERT2");
    free(cert);
    assert_int_equal(store_domain_cert_list(st, &names), 0);
    assert_string_equal(names[0], "shop.test");
    assert_null(names[1]);
    strv_free(names);
    assert_int_equal(store_domain_cert_delete(st, "shop.test"), 0);
    assert_int_equal(store_domain_cert_get(st, "shop.test", &cert, &key), -ENOENT);
    assert_int_equal(store_domain_cert_delete(st, "shop.test"), -ENOENT); /* had none left */
    assert_int_equal(store_domain_cert_delete(st, "nowhere.test"), -ENOENT);
    assert_int_equal(store_domain_cert_list(st, &names), 0);
    assert_null(names[0]);
    strv_free(names);
    store_close(st);
    remove_db(path);
}

/* A domain goes only when nothing refers to it: not while a route or its certificate does. */
static void test_a_domain_is_deleted_once_nothing_refers_to_it(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    assert_int_equal(store_domain_add(st, "shop.test", NULL), 0);
    assert_int_equal(store_domain_cert_set(st, "shop.test", "CERT", "KEY"), 0);
    assert_int_equal(store_domain_delete(st, "shop.test"), -EEXIST); /* its certificate */
    assert_int_equal(store_domain_cert_delete(st, "shop.test"), 0);
    struct store_route r = {
        .host = "www.shop.test", .path = "", .app_guid = app->guid, .domain = "shop.test"};
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(st, &r), 0);
    assert_int_equal(store_domain_delete(st, "shop.test"), -EEXIST); /* its route */
    assert_int_equal(store_route_delete(st, "www.shop.test", ""), 0);
    assert_int_equal(store_domain_delete(st, "shop.test"), 0);
    assert_int_equal(store_domain_delete(st, "shop.test"), -ENOENT);
    assert_int_equal(store_domain_delete(st, "nowhere.test"), -ENOENT);
    char **names = NULL;
    assert_int_equal(store_domain_list(st, &names, NULL, NULL), 0);
    for (char **n = names; *n; n++)
        assert_string_not_equal(*n, "shop.test");
    strv_free(names);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

/* Two writers read one version of an app: the first update wins, the second is told
 * (-ESTALE) and changes nothing; read again, it succeeds. */
static void test_an_update_of_a_version_read_before_another_write_fails(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *a = open_ok(path), *b = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(a, app), 0);
    assert_int_equal(app->version, 1);
    struct store_app *mine = NULL, *theirs = NULL;
    assert_int_equal(store_app_get(a, app->guid, &mine), 0);
    assert_int_equal(store_app_get(b, app->guid, &theirs), 0);
    assert_int_equal(mine->version, 1);
    assert_int_equal(theirs->version, 1);
    mine->processes[0].instances = 5;
    assert_int_equal(store_app_update(a, mine), 0);
    assert_int_equal(mine->version, 2);
    theirs->processes[0].instances = 7;
    free(theirs->state);
    theirs->state = xstrdup("STOPPED");
    assert_int_equal(store_app_update(b, theirs), -ESTALE);
    store_app_free(theirs);
    /* nothing of the losing write is there, on either handle */
    struct store *handles[] = {a, b};
    for (size_t i = 0; i < ARRAY_SIZE(handles); i++) {
        assert_int_equal(store_app_get(handles[i], app->guid, &theirs), 0);
        assert_int_equal(theirs->version, 2);
        assert_int_equal(theirs->processes[0].instances, 5);
        assert_string_equal(theirs->state, "STARTED");
        store_app_free(theirs);
    }
    /* read again, the second writer's update goes through */
    assert_int_equal(store_app_get(b, app->guid, &theirs), 0);
    theirs->processes[0].instances = 7;
    assert_int_equal(store_app_update(b, theirs), 0);
    assert_int_equal(theirs->version, 3);
    /* an update naming no version read, or an app that is gone, is refused */
    theirs->version = 0;
    assert_int_equal(store_app_update(b, theirs), -EINVAL);
    assert_int_equal(store_app_delete(a, app->guid), 0);
    theirs->version = 3;
    assert_int_equal(store_app_update(b, theirs), -ENOENT);
    store_app_free(theirs);
    store_app_free(mine);
    store_app_free(app);
    store_close(b);
    store_close(a);
    remove_db(path);
}

#define RACE_ROUNDS 40

struct racer {
    const char *path;
    const char *guid;
    int won;       /* increments stored */
    int conflicts; /* updates told another writer came first */
};

static int racer_add_one(void *ctx, struct store_app *app)
{
    (void)ctx;
    app->processes[0].instances++;
    return 0;
}

/* Each racer has a store handle of its own on the database: one skiffd each. Half of its
 * rounds are a plain read-then-update (a conflict is counted, the round lost), half go
 * through store_app_modify (which retries). */
static void *racer_run(void *arg)
{
    struct racer *r = arg;
    char err[256];
    struct store *st = NULL;
    if (store_open(r->path, err, sizeof err, &st) < 0)
        return NULL;
    for (int i = 0; i < RACE_ROUNDS; i++) {
        int rc;
        if (i % 2) {
            rc = store_app_modify(st, r->guid, racer_add_one, NULL, NULL);
        } else {
            struct store_app *app = NULL;
            rc = store_app_get(st, r->guid, &app);
            if (rc == 0) {
                app->processes[0].instances++;
                rc = store_app_update(st, app);
            }
            store_app_free(app);
        }
        if (rc == 0)
            r->won++;
        else if (rc == -ESTALE)
            r->conflicts++;
        else
            break;
    }
    store_close(st);
    return NULL;
}

/* Two writers on one database racing to add to one app's instances: every increment that
 * was reported stored is in the row (none lost), and the version counts every one. */
static void test_racing_writers_lose_no_update(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("race");
    app->processes[0].instances = 0;
    assert_int_equal(store_app_create(st, app), 0);
    struct racer racers[2] = {{.path = path, .guid = app->guid}, {.path = path, .guid = app->guid}};
    pthread_t threads[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&threads[i], NULL, racer_run, &racers[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(threads[i], NULL);
    int won = racers[0].won + racers[1].won;
    assert_int_equal(won + racers[0].conflicts + racers[1].conflicts, 2 * RACE_ROUNDS);
    struct store_app *got = NULL;
    assert_int_equal(store_app_get(st, app->guid, &got), 0);
    assert_int_equal(got->processes[0].instances, won);
    assert_int_equal(got->version, 1 + won);
    store_app_free(got);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

struct seen {
    char guids[8][37];
    int n;
    int any;
};

static void seen_app(void *ctx, const char *app_guid)
{
    struct seen *s = ctx;
    if (!app_guid)
        s->any++;
    else if (s->n < 8)
        snprintf(s->guids[s->n++], 37, "%s", app_guid);
}

/* What one writer changes, a second store on the database hears on its change feed: its
 * change count moves, its (cached) reads show the change, and store_feed_take names the
 * app; its own writes are not news to it. SQLite has no feed: every change comes through
 * its one process. */
static void test_the_change_feed_tells_of_another_writers_changes(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *a = open_ok(path), *b = open_ok(path);
    if (!on_pg(path)) {
        assert_int_equal(store_feed_fd(a), -1);
        assert_int_equal(store_feed_take(a, NULL, NULL), 0);
        store_close(b);
        store_close(a);
        remove_db(path);
        return;
    }
    assert_true(store_feed_fd(b) >= 0);
    struct store_app **list = NULL;
    size_t n = 9;
    assert_int_equal(store_app_list(b, &list, &n), 0); /* b's cache: no apps */
    assert_int_equal(n, 0);
    store_app_list_free(list, n);
    struct store_route *routes = NULL;
    assert_int_equal(store_route_list(b, NULL, &routes, &n), 0);
    assert_int_equal(n, 0);
    store_route_list_free(routes, n);

    uint64_t before = store_change_count(b);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(a, app), 0);
    struct store_route r = {
        .host = "shop.localhost", .path = "", .app_guid = app->guid, .domain = "localhost"};
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(a, &r), 0);
    wait_for_change(b, before);
    struct store_app *got = NULL;
    /* both notifications may not be in yet: wait for the route's too */
    for (int i = 0; i < 1000; i++) {
        store_async_reap(b); /* the app's news: counted once the app is read again */
        assert_int_equal(store_route_list(b, NULL, &routes, &n), 0);
        store_route_list_free(routes, n);
        if (n == 1 && store_app_get(b, "shop", &got) == 0)
            break;
        store_app_free(got);
        got = NULL;
        usleep(10 * 1000);
    }
    assert_int_equal(n, 1);
    assert_non_null(got);
    assert_string_equal(got->guid, app->guid);
    assert_int_equal(got->processes[0].instances, 3);
    store_app_free(got);

    struct seen seen = {0};
    assert_int_equal(store_feed_take(b, seen_app, &seen), 1);
    assert_int_equal(seen.n, 1);
    assert_string_equal(seen.guids[0], app->guid);
    assert_int_equal(store_feed_take(b, seen_app, &seen), 0);

    /* apps made one by one through a come into b's cache in name order */
    struct store_app *first = sample_app("alpha"), *last = sample_app("zulu");
    before = store_change_count(b);
    assert_int_equal(store_app_create(a, last), 0);
    assert_int_equal(store_app_create(a, first), 0);
    for (int i = 0; i < 1000; i++) {
        store_async_reap(b);
        assert_int_equal(store_app_list(b, &list, &n), 0);
        store_app_list_free(list, n);
        if (n == 3)
            break;
        usleep(10 * 1000);
    }
    assert_int_equal(store_app_list(b, &list, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(list[0]->name, "alpha");
    assert_string_equal(list[1]->name, "shop");
    assert_string_equal(list[2]->name, "zulu");
    store_app_list_free(list, n);
    assert_int_equal(store_app_delete(a, first->guid), 0);
    assert_int_equal(store_app_delete(a, last->guid), 0);
    for (int i = 0; i < 1000; i++) {
        store_async_reap(b);
        assert_int_equal(store_app_list(b, &list, &n), 0);
        store_app_list_free(list, n);
        if (n == 1)
            break;
        usleep(10 * 1000);
    }
    assert_int_equal(n, 1);
    store_app_free(first);
    store_app_free(last);
    assert_int_equal(store_feed_take(b, NULL, NULL), 2);

    /* an update through a: b's cached copy is replaced by the new version */
    assert_int_equal(store_app_get(a, app->guid, &got), 0);
    got->processes[0].instances = 9;
    before = store_change_count(b);
    assert_int_equal(store_app_update(a, got), 0);
    store_app_free(got);
    wait_for_change(b, before);
    /* other news (the route's read again) may count first: the app's, once it is read */
    for (int i = 0; i < 1000; i++) {
        store_async_reap(b);
        assert_int_equal(store_app_get(b, app->guid, &got), 0);
        if (got->processes[0].instances == 9)
            break;
        store_app_free(got);
        got = NULL;
        usleep(10 * 1000);
    }
    assert_non_null(got);
    assert_int_equal(got->processes[0].instances, 9);
    assert_int_equal(got->version, 2);
    /* b's own write is not news to b, but is to a */
    got->processes[0].instances = 4;
    before = store_change_count(a);
    assert_int_equal(store_app_update(b, got), 0);
    store_app_free(got);
    wait_for_change(a, before);
    memset(&seen, 0, sizeof seen);
    usleep(100 * 1000); /* room for b's own notification to come, were it taken as news */
    assert_int_equal(store_feed_take(b, seen_app, &seen), 1); /* a's update, not b's */
    assert_int_equal(store_feed_take(a, seen_app, &seen), 1); /* b's update */
    assert_int_equal(seen.n, 2);
    assert_string_equal(seen.guids[1], app->guid);

    /* a deletion through a: gone for b too, and named */
    before = store_change_count(b);
    assert_int_equal(store_app_delete(a, app->guid), 0);
    wait_for_change(b, before);
    /* the routes' news may count first: the app's, once the app is read again */
    for (int i = 0; i < 1000 && store_app_get(b, app->guid, &got) == 0; i++) {
        store_app_free(got);
        got = NULL;
        usleep(10 * 1000);
        store_async_reap(b);
    }
    assert_int_equal(store_app_get(b, app->guid, &got), -ENOENT);
    memset(&seen, 0, sizeof seen);
    assert_int_equal(store_feed_take(b, seen_app, &seen), 1);
    assert_string_equal(seen.guids[0], app->guid);
    store_app_free(app);
    store_close(b);
    store_close(a);
    remove_db(path);
}

/* News of an app another writer changed is read again through the store's writer, not on
 * the caller's thread: until its answer is reaped (store_async_reap, when store_async_fd is
 * readable) the copy answers as it was, the change count stays and store_feed_take names
 * nothing; once reaped, the copy holds the new version and the news counts. */
static void test_news_of_an_app_is_read_through_the_writer_and_counts_once_reaped(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *a = open_ok(path), *b = open_ok(path);
    struct store_app *app = sample_app("shop"), *got = NULL;
    uint64_t before = store_change_count(b);
    assert_int_equal(store_app_create(a, app), 0);
    wait_for_change(b, before);
    assert_int_equal(store_app_get(b, "shop", &got), 0); /* in b's copy */
    store_app_free(got);
    store_feed_take(b, NULL, NULL);

    assert_int_equal(store_app_get(a, "shop", &got), 0);
    got->processes[0].instances = 9;
    before = store_change_count(b);
    assert_int_equal(store_app_update(a, got), 0);
    store_app_free(got);
    struct pollfd done = {.fd = store_async_fd(b), .events = POLLIN};
    assert_true(done.fd >= 0);
    int i = 0;
    for (; i < 1000 && poll(&done, 1, 10) == 0; i++)
        assert_int_equal(store_change_count(b), before); /* reads the feed: the news comes */
    assert_true(i < 1000);
    assert_int_equal(store_change_count(b), before);
    assert_int_equal(store_feed_take(b, NULL, NULL), 0);
    assert_int_equal(store_app_get(b, "shop", &got), 0);
    assert_int_equal(got->processes[0].instances, 3); /* the copy, as it was */
    store_app_free(got);

    assert_true(store_async_reap(b) >= 1);
    assert_true(store_change_count(b) != before);
    struct seen seen = {0};
    assert_int_equal(store_feed_take(b, seen_app, &seen), 1);
    assert_string_equal(seen.guids[0], app->guid);
    assert_int_equal(store_app_get(b, "shop", &got), 0);
    assert_int_equal(got->processes[0].instances, 9);
    store_app_free(got);
    store_app_free(app);
    store_close(b);
    store_close(a);
    remove_db(path);
}

/* News of the routes another writer changed: the same, the whole list read again through the
 * writer, store_routes_news moving once it is in the copy. */
static void test_news_of_the_routes_is_read_through_the_writer_and_counts_once_reaped(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *a = open_ok(path), *b = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(a, app), 0);
    struct store_route *routes = NULL;
    size_t n = 9;
    assert_int_equal(store_route_list(b, NULL, &routes, &n), 0); /* b's copy: none */
    store_route_list_free(routes, n);
    assert_int_equal(n, 0);
    store_async_reap(b);
    uint64_t before = store_routes_news(b);
    struct store_route r = {
        .host = "shop.localhost", .path = "", .app_guid = app->guid, .domain = "localhost"};
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(a, &r), 0);
    struct pollfd done = {.fd = store_async_fd(b), .events = POLLIN};
    int i = 0;
    for (; i < 1000 && poll(&done, 1, 10) == 0; i++)
        assert_int_equal(store_routes_news(b), before); /* reads the feed: the news comes */
    assert_true(i < 1000);
    assert_int_equal(store_routes_news(b), before);
    assert_int_equal(store_route_list(b, NULL, &routes, &n), 0);
    store_route_list_free(routes, n);
    assert_int_equal(n, 0); /* the copy, as it was */
    store_async_reap(b);
    assert_true(store_routes_news(b) != before);
    assert_int_equal(store_route_list(b, NULL, &routes, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(routes[0].host, "shop.localhost");
    store_route_list_free(routes, n);
    store_app_free(app);
    store_close(b);
    store_close(a);
    remove_db(path);
}

/* Droplets another writer deleted are read as gone without the server, the newest 256 of them
 * (older ones are read from the server again); a droplet in the copy is read from it. Shown
 * with the table renamed behind the store's back, which no news announces. */
static void test_droplets_deleted_elsewhere_are_gone_without_the_server(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    enum { N = 260 }; /* the ring keeps 256 */
    struct store *a = open_ok(path), *b = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(a, app), 0);
    struct store_droplet keep = {
        .app_guid = app->guid, .path = "/dr/k", .process_types_json = "{}"};
    uuid_generate_v4(keep.guid);
    assert_int_equal(store_droplet_add(a, &keep), 0);
    struct store_droplet *d = NULL;
    assert_int_equal(store_droplet_get(b, keep.guid, &d), 0); /* now in b's copy */
    store_droplet_free(d);
    static char gone[N][37];
    for (int i = 0; i < N; i++) {
        struct store_droplet x = {
            .app_guid = app->guid, .path = "/dr/x", .process_types_json = "{}"};
        uuid_generate_v4(x.guid);
        memcpy(gone[i], x.guid, sizeof gone[i]);
        assert_int_equal(store_droplet_add(a, &x), 0);
        assert_int_equal(store_droplet_delete(a, x.guid), 0);
    }
    /* news comes in the order of the writes: once the app's is in, so are the droplets' */
    uint64_t before = store_change_count(b);
    app->processes[0].instances = 2;
    assert_int_equal(store_app_update(a, app), 0);
    wait_for_change(b, before);

    raw_sql(path, "ALTER TABLE droplets RENAME TO droplets_elsewhere");
    assert_int_equal(store_droplet_get(b, keep.guid, &d), 0);
    assert_string_equal(d->path, "/dr/k");
    store_droplet_free(d);
    for (int i = N - 256; i < N; i++)
        assert_int_equal(store_droplet_get(b, gone[i], &d), -ENOENT);
    for (int i = 0; i < N - 256; i++) /* fell out of the ring: the server, which fails */
        assert_true(store_droplet_get(b, gone[i], &d) < 0 &&
                    store_droplet_get(b, gone[i], &d) != -ENOENT);
    raw_sql(path, "ALTER TABLE droplets_elsewhere RENAME TO droplets");
    store_app_free(app);
    store_close(b);
    store_close(a);
    remove_db(path);
}

/* Every connection of the store's ended by the server (a restart, an administrator): the next
 * read and write are made on new ones. */
static void test_connections_the_server_ended_are_opened_again(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *a = open_ok(path), *b = open_ok(path);
    struct store_app *app = sample_app("shop"), *got = NULL;
    assert_int_equal(store_app_create(b, app), 0);
    raw_sql(path, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE datname = current_database() AND pid <> pg_backend_pid()");
    char guid[37];
    uuid_generate_v4(guid);
    struct store_droplet *d = NULL;
    /* not in any copy: read from the server, on a new connection */
    assert_int_equal(store_droplet_get(b, guid, &d), -ENOENT);
    assert_int_equal(store_app_get(b, "shop", &got), 0);
    store_app_free(got);
    struct store_app *other = sample_app("other");
    assert_int_equal(store_app_create(b, other), 0); /* the writer's new connection */
    assert_int_equal(store_app_get(a, "other", &got), 0);
    assert_string_equal(got->guid, other->guid);
    store_app_free(got);
    store_app_free(other);
    store_app_free(app);
    store_close(b);
    store_close(a);
    remove_db(path);
}

/* A read on the event loop that the server does not answer (a table locked by another
 * transaction) fails after a bounded wait, rather than waiting for ever; the next reads are
 * made on a new connection once the server answers again. */
static void test_a_read_the_server_does_not_answer_fails_within_its_bound(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *b = open_ok(path);
    PGconn *lock = PQconnectdb(path);
    assert_int_equal(PQstatus(lock), CONNECTION_OK);
    PGresult *res = PQexec(lock, "BEGIN; LOCK TABLE droplets IN ACCESS EXCLUSIVE MODE");
    assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    char guid[37];
    uuid_generate_v4(guid);
    struct store_droplet *d = NULL;
    assert_int_equal(store_droplet_get(b, guid, &d), -EIO); /* and returns: bounded */
    PQclear(PQexec(lock, "ROLLBACK"));
    PQfinish(lock);
    int rc = -EIO;
    for (int i = 0; i < 500 && rc == -EIO; i++) { /* the next try is due 100 ms on */
        rc = store_droplet_get(b, guid, &d);
        if (rc == -EIO)
            usleep(10 * 1000);
    }
    assert_int_equal(rc, -ENOENT);
    store_close(b);
    remove_db(path);
}

/* A document is rewritten only while it exists (a record saved now and then does not come
 * back after another writer deleted it); on PostgreSQL another writer's change of documents is
 * news (store_doc_news), this store's own is not. */
static void
test_documents_are_updated_only_while_they_exist_and_others_changes_are_news(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *a = open_ok(path), *b = open_ok(path);
    assert_int_equal(store_doc_update(a, "k", "x", "{\"v\":1}"), -ENOENT);
    char *json = NULL;
    assert_int_equal(store_doc_get(a, "k", "x", &json), -ENOENT);
    assert_int_equal(store_doc_put(a, "k", "x", "{\"v\":1}"), 0);
    assert_int_equal(store_doc_update(a, "k", "x", "{\"v\":2}"), 0);
    assert_int_equal(store_doc_get(a, "k", "x", &json), 0);
    assert_string_equal(json, "{\"v\":2}");
    free(json);
    assert_int_equal(store_doc_delete(b, "k", "x"), 0);
    assert_int_equal(store_doc_update(a, "k", "x", "{\"v\":3}"), -ENOENT);
    assert_int_equal(store_doc_get(a, "k", "x", &json), -ENOENT);
    if (!on_pg(path)) {
        assert_int_equal(store_doc_news(a), 0); /* every write comes through one process */
        goto done;
    }
    /* the feed is in order: once a hears of b's app, it has heard of b's delete before it */
    struct store_app *app = sample_app("docs");
    assert_int_equal(store_app_create(b, app), 0);
    struct seen seen = {0};
    for (int i = 0; i < 1000 && seen.n == 0; i++, usleep(10 * 1000))
        store_feed_take(a, seen_app, &seen);
    assert_int_equal(seen.n, 1);
    uint64_t before = store_doc_news(a);
    assert_int_equal(store_doc_put(a, "k", "y", "{}"), 0); /* a's own: no news to a */
    assert_int_equal(store_doc_update(a, "k", "y", "{\"v\":1}"), 0);
    app->processes[0].instances = 2;
    assert_int_equal(store_app_update(b, app), 0); /* news of an app, not of documents */
    assert_int_equal(store_doc_put(b, "k", "z", "{}"), 0);
    for (int i = 0; i < 1000 && store_doc_news(a) == before; i++)
        usleep(10 * 1000);
    assert_int_equal(store_doc_news(a), before + 1);
    store_app_free(app);
done:
    store_close(b);
    store_close(a);
    remove_db(path);
}

/* A replace lands only over the body the caller read: of two writers that read one body, the
 * second is told -ESTALE; a deleted document is not made again. */
static void test_doc_replace_lands_only_over_what_was_read(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *a = open_ok(path), *b = open_ok(path);
    assert_int_equal(store_doc_replace(a, "claim", "x", "{}", "{\"v\":1}"), -ESTALE);
    assert_int_equal(store_doc_put(a, "claim", "x", "{\"v\":0}"), 0);
    assert_int_equal(store_doc_replace(a, "claim", "x", "{\"v\":0}", "{\"v\":1}"), 0);
    assert_int_equal(store_doc_replace(b, "claim", "x", "{\"v\":0}", "{\"v\":2}"), -ESTALE);
    char *json = NULL;
    assert_int_equal(store_doc_get(b, "claim", "x", &json), 0);
    assert_string_equal(json, "{\"v\":1}");
    free(json);
    assert_int_equal(store_doc_delete(b, "claim", "x"), 0);
    assert_int_equal(store_doc_replace(a, "claim", "x", "{\"v\":1}", "{\"v\":3}"), -ESTALE);
    assert_int_equal(store_doc_get(a, "claim", "x", &json), -ENOENT);
    store_close(b);
    store_close(a);
    remove_db(path);
}

/* The feed names each document's kind: a reader of one family of kinds hears of its own
 * kinds only, and of anything that names no kind (a long kind, "all"). */
static void test_document_news_is_per_kind(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *a = open_ok(path), *b = open_ok(path);
    if (!on_pg(path)) {
        assert_int_equal(store_doc_put(b, "auth.user", "u", "{}"), 0);
        assert_int_equal(store_doc_news_kind(a, "auth"), 0); /* one process writes */
        goto done;
    }
    uint64_t maps = store_doc_news_kind(a, "event_mapping"), auth = store_doc_news_kind(a, "auth");
    uint64_t any = store_doc_news(a);
    for (int i = 0; i < 1000; i++) { /* heartbeats of a thousand cells in one go */
        char id[16];
        snprintf(id, sizeof id, "c%d", i);
        assert_int_equal(store_doc_put(b, "cell", id, "{}"), 0);
    }
    assert_int_equal(store_doc_put(b, "authx", "y", "{}"), 0); /* not of the "auth" family */
    assert_int_equal(store_doc_put(b, "event_mappingx", "y", "{}"), 0);
    feed_fence(a, b);
    assert_int_equal(store_doc_news_kind(a, "event_mapping"), maps);
    assert_int_equal(store_doc_news_kind(a, "auth"), auth);
    assert_true(store_doc_news(a) != any); /* every kind is still news to store_doc_news */

    assert_int_equal(store_doc_put(b, "auth.token.hash", "h", "{}"), 0);
    feed_fence(a, b);
    assert_true(store_doc_news_kind(a, "auth") != auth);
    assert_int_equal(store_doc_news_kind(a, "event_mapping"), maps);
    auth = store_doc_news_kind(a, "auth");
    assert_int_equal(store_doc_put(a, "event_mapping", "m", "{}"), 0); /* a's own: no news */
    assert_int_equal(store_doc_put(b, "event_mapping", "n", "{}"), 0);
    feed_fence(a, b);
    assert_true(store_doc_news_kind(a, "event_mapping") != maps);
    assert_int_equal(store_doc_news_kind(a, "auth"), auth);

    /* a kind longer than a notification may carry is written, and is news of every kind */
    maps = store_doc_news_kind(a, "event_mapping");
    char *huge = xcalloc(1, 9001);
    memset(huge, 'k', 9000);
    assert_int_equal(store_doc_put(b, huge, "x", "{}"), 0);
    char *json = NULL;
    assert_int_equal(store_doc_get(a, huge, "x", &json), 0);
    free(json);
    feed_fence(a, b);
    assert_true(store_doc_news_kind(a, "event_mapping") != maps);
    free(huge);

    /* kinds past what is counted apart are news of every kind, never lost */
    for (int i = 0; i < 80; i++) {
        char kind[16];
        snprintf(kind, sizeof kind, "many%d", i);
        assert_int_equal(store_doc_put(b, kind, "x", "{}"), 0);
    }
    feed_fence(a, b);
    maps = store_doc_news_kind(a, "event_mapping");
    assert_int_equal(store_doc_put(b, "many79", "y", "{}"), 0);
    feed_fence(a, b);
    assert_true(store_doc_news_kind(a, "event_mapping") != maps);

    /* NOTIFY skiff_store, 'all' is news of every kind */
    maps = store_doc_news_kind(a, "event_mapping");
    auth = store_doc_news_kind(a, "auth");
    raw_sql(path, "NOTIFY skiff_store, 'all';");
    for (int i = 0; i < 1000 && store_doc_news_kind(a, "auth") == auth; i++)
        usleep(10 * 1000);
    assert_true(store_doc_news_kind(a, "auth") != auth);
    assert_true(store_doc_news_kind(a, "event_mapping") != maps);
done:
    store_close(b);
    store_close(a);
    remove_db(path);
}

/* When the feed's connection is lost, the store says so and trusts no cache: reads go to
 * the database (and see what others wrote), the change count moves on every call, and the
 * feed names "any app". */
static void test_a_lost_feed_turns_the_cache_off(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    int64_t first_try = store_pg_feed_retry_ms[0];
    store_pg_feed_retry_ms[0] = 600 * 1000; /* not reopened during this test */
    struct store *st = open_ok(path), *other = open_ok(path);
    struct store_app *app = sample_app("shop"), *got = NULL;
    assert_int_equal(store_app_create(st, app), 0);
    assert_int_equal(store_app_get(st, "shop", &got), 0); /* cached */
    store_app_free(got);
    raw_sql(path, "DO $$ BEGIN PERFORM pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE datname = current_database() AND query = 'LISTEN skiff_store';"
                  " END $$;");
    for (int i = 0; i < 1000 && store_feed_fd(st) >= 0; i++)
        usleep(10 * 1000);
    assert_int_equal(store_feed_fd(st), -1);
    assert_true(store_change_count(st) != store_change_count(st));
    struct seen seen = {0};
    assert_int_equal(store_feed_take(st, seen_app, &seen), 1);
    assert_int_equal(seen.any, 1);
    /* another writer's change (its notification goes nowhere) is read from the database */
    assert_int_equal(store_app_get(other, "shop", &got), 0);
    got->processes[0].instances = 8;
    assert_int_equal(store_app_update(other, got), 0);
    store_app_free(got);
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_int_equal(got->processes[0].instances, 8);
    store_app_free(got);
    struct store_app **list = NULL;
    size_t n = 0;
    assert_int_equal(store_app_list(st, &list, &n), 0);
    assert_int_equal(n, 1);
    store_app_list_free(list, n);
    assert_true(store_feed_retry_ms(st) > 0);
    store_app_free(app);
    store_close(other);
    store_close(st);
    store_pg_feed_retry_ms[0] = first_try;
    remove_db(path);
}

struct watched {
    int lost; /* calls with fd -1 */
    int last_fd;
};

static void watch_feed(void *ctx, int fd, bool writable)
{
    (void)writable;
    struct watched *w = ctx;
    if (fd < 0)
        w->lost++;
    w->last_fd = fd;
}

/* A lost feed is reopened: the owner is told of the descriptor's changes (none while
 * waiting, the new one after), and what another writer changed meanwhile (announced to
 * nobody) is read again, after which reads are cached again (the change count holds). */
static void test_a_lost_feed_is_reopened_and_the_cache_reloaded(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path), *other = open_ok(path);
    struct watched w = {0, store_feed_fd(st)};
    store_feed_watch(st, watch_feed, &w);
    struct store_app *app = sample_app("shop"), *got = NULL;
    assert_int_equal(store_app_create(st, app), 0);
    assert_int_equal(store_app_get(st, "shop", &got), 0); /* cached */
    assert_int_equal(got->processes[0].instances, app->processes[0].instances);
    store_app_free(got);
    store_feed_take(st, NULL, NULL);
    raw_sql(path, "DO $$ BEGIN PERFORM pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE datname = current_database() AND query = 'LISTEN skiff_store';"
                  " END $$;");
    /* changed while st's feed is gone: its notification reaches no listener of st's */
    assert_int_equal(store_app_get(other, "shop", &got), 0);
    got->processes[0].instances = 8;
    assert_int_equal(store_app_update(other, got), 0);
    store_app_free(got);
    /* lost, then reopened (the cache is off meanwhile: the count moves on every call) */
    for (int i = 0; i < 1000 && w.lost == 0; i++) {
        store_change_count(st);
        usleep(10 * 1000);
    }
    assert_int_equal(w.lost, 1);
    for (int i = 0; i < 1000 && store_change_count(st) != store_change_count(st); i++)
        usleep(10 * 1000);
    assert_int_equal(store_change_count(st), store_change_count(st));
    assert_int_equal(store_feed_retry_ms(st), -1);
    assert_true(w.last_fd >= 0);
    assert_int_equal(store_feed_fd(st), w.last_fd);
    struct seen seen = {0};
    assert_int_equal(store_feed_take(st, seen_app, &seen), 1);
    assert_int_equal(seen.any, 1);
    uint64_t count = store_change_count(st);
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_int_equal(got->processes[0].instances, 8);
    store_app_free(got);
    /* and the reopened feed carries news again */
    assert_int_equal(store_app_get(other, "shop", &got), 0);
    got->processes[0].instances = 9;
    assert_int_equal(store_app_update(other, got), 0);
    store_app_free(got);
    wait_for_change(st, count);
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_int_equal(got->processes[0].instances, 9);
    store_app_free(got);
    store_app_free(app);
    store_close(other);
    store_close(st);
    remove_db(path);
}

/* Runs sql (with %s the test database's name) on the server's own database. */
static void admin_sql(const char *path, const char *fmt)
{
    const char *name = path + strlen("postgres:///");
    char db[64];
    snprintf(db, sizeof db, "%.*s", (int)strcspn(name, "?"), name);
    char *admin = pg_throwaway_url("postgres");
    char *sql = xasprintf(fmt, db);
    raw_sql(admin, sql);
    free(sql);
    free(admin);
}

/* While the database refuses connections, the lost feed's tries fail and come further
 * apart (the delay doubles), reads still answer from the database, and once it accepts
 * them again the feed is reopened and the cache is on. */
static void test_a_feed_that_cannot_be_reopened_is_tried_again_later(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop"), *got = NULL;
    assert_int_equal(store_app_create(st, app), 0);
    admin_sql(path, "ALTER DATABASE %s ALLOW_CONNECTIONS false");
    admin_sql(path, "DO $$ BEGIN PERFORM pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = '%s' AND query = 'LISTEN skiff_store'; END $$;");
    /* the first try is due within 100 ms of the loss; after a failed one, within 200 */
    int64_t longest = -1;
    for (int i = 0; i < 1000 && longest <= store_pg_feed_retry_ms[0]; i++) {
        int64_t left = store_feed_retry_ms(st);
        longest = left > longest ? left : longest;
        usleep(5 * 1000);
    }
    assert_true(longest > store_pg_feed_retry_ms[0]);
    assert_true(longest <= 2 * store_pg_feed_retry_ms[0]);
    assert_true(store_change_count(st) != store_change_count(st)); /* no cache */
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    store_app_free(got);
    admin_sql(path, "ALTER DATABASE %s ALLOW_CONNECTIONS true");
    for (int i = 0; i < 1000 && store_change_count(st) != store_change_count(st); i++)
        usleep(10 * 1000);
    assert_int_equal(store_change_count(st), store_change_count(st));
    assert_true(store_feed_fd(st) >= 0);
    assert_int_equal(store_feed_retry_ms(st), -1);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

/* Each of many apps in two spaces (created in no order, renamed, deleted) is found by its
 * guid and by its space and name, and only by those: on PostgreSQL from the cache's index,
 * kept as apps come and go (every read after a write is answered from it). */
static void test_app_get_finds_each_of_many_apps_by_guid_and_by_name(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    enum { N = 60 };
    struct store_app *apps[N];
    const char *spaces[2] = {"11111111-1111-4111-8111-111111111111",
                             "22222222-2222-4222-8222-222222222222"};
    for (int k = 0; k < N; k++) {
        int i = (k * 37) % N; /* every index once, in no order */
        char name[16];
        snprintf(name, sizeof name, "a%02d", i / 2);
        apps[i] = sample_app(name);
        snprintf(apps[i]->space_guid, sizeof apps[i]->space_guid, "%s", spaces[i % 2]);
        assert_int_equal(store_app_create(st, apps[i]), 0);
        struct store_app *got = NULL;
        assert_int_equal(store_app_get(st, apps[i]->guid, &got), 0); /* a cache now */
        store_app_free(got);
    }
    /* renamed to a name that sorts first, and the old name taken by a new app */
    free(apps[10]->name);
    apps[10]->name = xstrdup("0first");
    assert_int_equal(store_app_update(st, apps[10]), 0);
    struct store_app *again = sample_app("a05");
    snprintf(again->space_guid, sizeof again->space_guid, "%s", spaces[0]);
    assert_int_equal(store_app_create(st, again), 0);
    assert_int_equal(store_app_delete(st, apps[33]->guid), 0);
    for (int i = 0; i < N; i++) {
        struct store_app *got = NULL;
        char ref[80];
        snprintf(ref, sizeof ref, "%s/%s", apps[i]->space_guid, apps[i]->name);
        if (i == 33) {
            assert_int_equal(store_app_get(st, apps[i]->guid, &got), -ENOENT);
            assert_int_equal(store_app_get(st, ref, &got), -ENOENT);
            continue;
        }
        assert_int_equal(store_app_get(st, apps[i]->guid, &got), 0);
        assert_string_equal(got->guid, apps[i]->guid);
        assert_string_equal(got->name, apps[i]->name);
        store_app_free(got);
        assert_int_equal(store_app_get(st, ref, &got), 0);
        assert_string_equal(got->guid, apps[i]->guid);
        store_app_free(got);
    }
    struct store_app *got = NULL;
    char ref[80];
    snprintf(ref, sizeof ref, "%s/a05", spaces[0]);
    assert_int_equal(store_app_get(st, ref, &got), 0);
    assert_string_equal(got->guid, again->guid);
    store_app_free(got);
    snprintf(ref, sizeof ref, "%s/a05", spaces[1]); /* apps[11] */
    assert_int_equal(store_app_get(st, ref, &got), 0);
    assert_string_equal(got->guid, apps[11]->guid);
    store_app_free(got);
    snprintf(ref, sizeof ref, "%s/a16", spaces[1]); /* apps[33], deleted */
    assert_int_equal(store_app_get(st, ref, &got), -ENOENT);
    snprintf(ref, sizeof ref, "%s/a99", spaces[0]);
    assert_int_equal(store_app_get(st, ref, &got), -ENOENT);
    assert_int_equal(store_app_get(st, "a00", &got), -ENOENT); /* the default space: none */
    assert_int_equal(store_app_get(st, "ffffffff-ffff-4fff-8fff-ffffffffffff", &got), -ENOENT);
    struct store_app **list = NULL;
    size_t n = 0;
    assert_int_equal(store_app_list(st, &list, &n), 0);
    assert_int_equal(n, N);
    assert_string_equal(list[0]->name, "0first");
    for (size_t i = 1; i < n; i++) {
        int c = strcmp(list[i - 1]->name, list[i]->name);
        assert_true(c < 0 || (c == 0 && strcmp(list[i - 1]->space_guid, list[i]->space_guid) < 0));
    }
    store_app_list_free(list, n);
    for (int i = 0; i < N; i++)
        store_app_free(apps[i]);
    store_app_free(again);
    store_close(st);
    remove_db(path);
}

/* On PostgreSQL, app and route reads are answered from memory while nothing is announced:
 * with the tables renamed behind the store's back (DDL announces nothing), they still
 * answer, and they go to the database again once a change is announced. */
static void test_reads_come_from_the_cache_until_a_change_is_announced(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop"), *got = NULL;
    assert_int_equal(store_app_create(st, app), 0);
    struct store_route r = {
        .host = "shop.localhost", .path = "", .app_guid = app->guid, .domain = "localhost"};
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(st, &r), 0);
    struct store_route *routes = NULL;
    size_t n = 0;
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    store_app_free(got);
    assert_int_equal(store_route_list(st, NULL, &routes, &n), 0);
    store_route_list_free(routes, n);
    raw_sql(path,
            "ALTER TABLE apps RENAME TO apps_away; ALTER TABLE routes RENAME TO routes_away;");
    for (int i = 0; i < 100; i++) {
        assert_int_equal(store_app_get(st, app->guid, &got), 0);
        assert_int_equal(got->n_processes, 2);
        store_app_free(got);
        assert_int_equal(store_route_list(st, app->guid, &routes, &n), 0);
        assert_int_equal(n, 1);
        store_route_list_free(routes, n);
    }
    uint64_t before = store_change_count(st);
    raw_sql(path, "NOTIFY skiff_store, 'all'");
    wait_for_change(st, before);
    got = NULL;
    assert_int_equal(store_app_get(st, app->guid, &got), -EIO);
    assert_null(got);
    assert_int_equal(store_route_list(st, NULL, &routes, &n), -EIO);
    raw_sql(path,
            "ALTER TABLE apps_away RENAME TO apps; ALTER TABLE routes_away RENAME TO routes;");
    assert_int_equal(store_app_get(st, app->guid, &got), 0);
    store_app_free(got);
    store_app_free(app);
    store_close(st);
    remove_db(path);
}

/* ---- writes off the caller's thread ---------------------------------------------------- */

struct done_log;

struct done_tag {
    struct done_log *log;
    int tag;
};

/* What the queued writes of a test reported, each write with note_done and done_tag(log, i)
 * as its callback: the tags in the order reported, and their results. Starts zeroed. */
struct done_log {
    struct done_tag tags[16];
    int order[16]; /* the tags of the finished writes, in the order they were reported */
    int rc[16];
    int n;
};

/* The callback argument of a write tagged tag (0 to 15), reported into log. */
static struct done_tag *done_tag(struct done_log *log, int tag)
{
    assert_true(tag >= 0 && tag < 16);
    log->tags[tag] = (struct done_tag){log, tag};
    return &log->tags[tag];
}

static void note_done(void *ctx, int rc)
{
    struct done_tag *t = ctx;
    assert_true(t->log->n < 16);
    t->log->order[t->log->n] = t->tag;
    t->log->rc[t->log->n++] = rc;
}

/* Reaps until n writes were reported, for at most 20 s. */
static void reap_until(struct store *st, struct done_log *log, int n)
{
    for (int i = 0; i < 2000 && log->n < n; i++) {
        store_async_reap(st);
        if (log->n < n)
            usleep(10 * 1000);
    }
    assert_int_equal(log->n, n);
}

static char *doc_body(struct store *st, const char *kind, const char *id)
{
    char *json = NULL;
    return store_doc_get(st, kind, id, &json) == 0 ? json : NULL;
}

struct doc_ids {
    char ids[256];
};

static int collect_doc_ids(void *ctx, const char *id, const char *json)
{
    (void)json;
    struct doc_ids *d = ctx;
    size_t len = strlen(d->ids);
    snprintf(d->ids + len, sizeof d->ids - len, "%s%s", len ? "," : "", id);
    return 0;
}

/* A PostgreSQL connection holding row (kind, id) of documents locked in an open transaction:
 * a writer of that row waits until it is let go (hold_release), readers do not. */
static PGconn *hold_row(const char *path, const char *kind, const char *id)
{
    PGconn *c = PQconnectdb(path);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    char *sql = xasprintf("BEGIN; SELECT 1 FROM documents WHERE kind = '%s' AND id = '%s'"
                          " FOR UPDATE",
                          kind, id);
    PGresult *res = PQexec(c, sql);
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 1);
    PQclear(res);
    free(sql);
    return c;
}

static void hold_release(PGconn *c)
{
    PQclear(PQexec(c, "ROLLBACK"));
    PQfinish(c);
}

/* What a queued read of the certificates' chains (or of a kind's documents: ids in domains,
 * bodies in chains) or of the audit list gave its callback. */
struct read_log {
    struct done_log *log;
    int tag;
    char **domains, **chains;
    struct store_audit_event *events;
    size_t n_events;
};

static void note_chains(void *ctx, int rc, char **domains, char **chains)
{
    struct read_log *r = ctx;
    note_done(done_tag(r->log, r->tag), rc);
    r->domains = domains;
    r->chains = chains;
}

/* Queued writes are made in the order asked for and reported in that order, on both
 * backends; until they are made (a row held by another transaction on PostgreSQL), reads
 * already see them, and a synchronous write waits behind them rather than overtaking. A
 * queued read of a kind sees the writes queued before it (and a kind without documents is
 * read as empty lists). */
static void test_queued_writes_land_in_order_and_are_read_at_once(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    assert_int_equal(store_doc_put(st, "k", "a", "{\"v\":0}"), 0);
    assert_int_equal(store_doc_put(st, "k", "b", "{}"), 0);
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct done_log log = {0};
    struct read_log kind = {.log = &log, .tag = 5}, none = {.log = &log, .tag = 6};
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(&log, 0)),
                     0);
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":2}", note_done, done_tag(&log, 1)),
                     0);
    assert_int_equal(store_doc_delete_async(st, "k", "b", note_done, done_tag(&log, 2)), 0);
    assert_int_equal(store_doc_put_async(st, "k", "c", "{\"v\":3}", note_done, done_tag(&log, 3)),
                     0);
    assert_int_equal(store_doc_delete_async(st, "k", "nothing", note_done, done_tag(&log, 4)), 0);
    assert_int_equal(store_doc_each_fresh_async(st, "k", note_chains, &kind), 0);
    assert_int_equal(store_doc_each_fresh_async(st, "empty", note_chains, &none), 0);
    if (hold) /* all seven wait behind the held row */
        assert_int_equal(store_async_queued(st), 7);
    char *json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":2}");
    free(json);
    assert_null(doc_body(st, "k", "b"));
    json = doc_body(st, "k", "c");
    assert_string_equal(json, "{\"v\":3}");
    free(json);
    struct doc_ids ids = {""};
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "a,c");
    if (hold)
        hold_release(hold);
    reap_until(st, &log, 7);
    for (int i = 0; i < 7; i++)
        assert_int_equal(log.order[i], i);
    assert_int_equal(log.rc[0], 0);
    assert_int_equal(log.rc[3], 0);
    assert_int_equal(log.rc[4], -ENOENT); /* the answer of the synchronous call */
    assert_int_equal(log.rc[5], 0);
    assert_int_equal(store_async_queued(st), 0);
    assert_string_equal(kind.domains[0], "a");
    assert_string_equal(kind.chains[0], "{\"v\":2}");
    assert_string_equal(kind.domains[1], "c");
    assert_string_equal(kind.chains[1], "{\"v\":3}");
    assert_null(kind.domains[2]);
    assert_null(kind.chains[2]);
    assert_null(none.domains[0]);
    assert_null(none.chains[0]);
    strv_free(kind.domains);
    strv_free(kind.chains);
    strv_free(none.domains);
    strv_free(none.chains);
    store_close(st);
    /* what another store reads from the database afterwards */
    st = open_ok(path);
    json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":2}");
    free(json);
    memset(&ids, 0, sizeof ids);
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "a,c");
    store_close(st);
    remove_db(path);
}

/* A fresh read's answer, with its place among the writes (note_done's log). */
static char *fresh_body;

static void note_fresh(void *ctx, int rc, const char *json)
{
    note_done(ctx, rc);
    free(fresh_body);
    fresh_body = json ? xstrdup(json) : NULL;
}

/* Creates, replaces and a fresh read queued with the other writes are made and reported in
 * the order asked for; while they wait (the row held on PostgreSQL), reads see a create or
 * a replace as made unless what the store knows says it will be refused (an id present, a
 * body other than expected); the fresh read sees the writes queued before it. */
static void test_queued_creates_replaces_and_fresh_reads_land_in_order(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    assert_int_equal(store_doc_put(st, "k", "a", "{\"v\":0}"), 0);
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct done_log log = {0};
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(&log, 0)),
                     0);
    assert_int_equal(
        store_doc_create_async(st, "k", "n", "{\"n\":1}", note_done, done_tag(&log, 1)), 0);
    assert_int_equal(
        store_doc_create_async(st, "k", "a", "{\"x\":1}", note_done, done_tag(&log, 2)), 0);
    char *json = doc_body(st, "k", "n");
    assert_string_equal(json, "{\"n\":1}");
    free(json);
    json = doc_body(st, "k", "a"); /* the create of a present id is not shown */
    assert_string_equal(json, "{\"v\":1}");
    free(json);
    assert_int_equal(store_doc_replace_async(st, "k", "a", "{\"v\":1}", "{\"v\":2}", note_done,
                                             done_tag(&log, 3)),
                     0);
    json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":2}");
    free(json);
    /* expects what the first replace replaced: refused, not shown */
    assert_int_equal(store_doc_replace_async(st, "k", "a", "{\"v\":1}", "{\"v\":9}", note_done,
                                             done_tag(&log, 4)),
                     0);
    json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":2}");
    free(json);
    assert_int_equal(store_doc_get_fresh_async(st, "k", "a", note_fresh, done_tag(&log, 5)), 0);
    struct doc_ids ids = {""};
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "a,n");
    if (hold) {
        assert_int_equal(store_async_queued(st), 6); /* all wait behind the held row */
        assert_int_equal(log.n, 0);
        hold_release(hold);
    }
    reap_until(st, &log, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(log.order[i], i);
    assert_int_equal(log.rc[0], 0);
    assert_int_equal(log.rc[1], 0);
    assert_int_equal(log.rc[2], -EEXIST);
    assert_int_equal(log.rc[3], 0);
    assert_int_equal(log.rc[4], -ESTALE);
    assert_int_equal(log.rc[5], 0);
    assert_string_equal(fresh_body, "{\"v\":2}");
    free(fresh_body);
    fresh_body = NULL;
    struct done_log absent = {0};
    assert_int_equal(store_doc_get_fresh_async(st, "k", "none", note_fresh, done_tag(&absent, 0)),
                     0);
    reap_until(st, &absent, 1);
    assert_int_equal(absent.rc[0], -ENOENT);
    assert_null(fresh_body);
    store_close(st);
    st = open_ok(path);
    json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":2}");
    free(json);
    json = doc_body(st, "k", "n");
    assert_string_equal(json, "{\"n\":1}");
    free(json);
    store_close(st);
    remove_db(path);
}

/* A queued create or replace that another store's write made wrong is refused through its
 * callback (-EEXIST, -ESTALE), and what is read afterwards is the other store's. */
static void test_a_queued_create_or_replace_another_store_beat_is_refused(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path), *other = open_ok(path);
    assert_int_equal(store_doc_put(st, "k", "r", "{\"v\":0}"), 0);
    char *json = doc_body(st, "k", "r"); /* this store's copy holds it */
    assert_string_equal(json, "{\"v\":0}");
    free(json);
    assert_int_equal(store_doc_create(other, "k", "c", "{\"by\":\"other\"}"), 0);
    assert_int_equal(store_doc_replace(other, "k", "r", "{\"v\":0}", "{\"by\":\"other\"}"), 0);
    struct done_log log = {0};
    assert_int_equal(
        store_doc_create_async(st, "k", "c", "{\"by\":\"me\"}", note_done, done_tag(&log, 0)), 0);
    assert_int_equal(store_doc_replace_async(st, "k", "r", "{\"v\":0}", "{\"by\":\"me\"}",
                                             note_done, done_tag(&log, 1)),
                     0);
    reap_until(st, &log, 2);
    assert_int_equal(log.rc[0], -EEXIST);
    assert_int_equal(log.rc[1], -ESTALE);
    json = doc_body(st, "k", "c");
    assert_string_equal(json, "{\"by\":\"other\"}");
    free(json);
    json = doc_body(st, "k", "r");
    assert_string_equal(json, "{\"by\":\"other\"}");
    free(json);
    store_close(other);
    store_close(st);
    remove_db(path);
}

static int web_instances(const struct store_app *app)
{
    const struct store_process *p = store_app_process(app, "web");
    return p ? p->instances : -1;
}

/* A change for store_app_modify_async: web to ctx's count, counting its calls. */
struct scale_to {
    int n;
    int calls;
};

static int scale_web(void *ctx, struct store_app *app)
{
    struct scale_to *c = ctx;
    c->calls++;
    struct store_process *p = store_app_process(app, "web");
    if (!p)
        return -ENOENT;
    if (p->instances == c->n)
        return 1;
    p->instances = c->n;
    return 0;
}

/* Queued app writes (update, create, modify) are made in turn with the queued documents and
 * reported in order; until they are made (on PostgreSQL, the writer held by a document row
 * another transaction locks), reads show them, versions included; a synchronous write made
 * after them (a route of the app being created) waits for them rather than overtaking. */
static void test_queued_app_writes_land_in_order_and_are_read_at_once(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct done_log log = {0};
    struct done_tag tags[4] = {{&log, 0}, {&log, 1}, {&log, 2}, {&log, 3}};
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, &tags[0]), 0);
    app->processes[0].instances = 5;
    assert_int_equal(store_app_update_async(st, app, note_done, &tags[1]), 0);
    assert_int_equal(app->version, 2); /* as it will be once written */
    struct store_app *other = sample_app("cart");
    assert_int_equal(store_app_create_async(st, other, note_done, &tags[2]), 0);
    assert_int_equal(other->version, 1);
    struct scale_to to7 = {.n = 7};
    struct store_app *changed = NULL;
    assert_int_equal(
        store_app_modify_async(st, app->guid, scale_web, &to7, note_done, &tags[3], &changed), 0);
    assert_int_equal(web_instances(changed), 7);
    assert_int_equal(changed->version, 3);
    store_app_free(changed);
    if (hold) /* all four wait behind the held row */
        assert_int_equal(store_async_queued(st), 4);
    struct store_app *read = NULL;
    assert_int_equal(store_app_get(st, app->guid, &read), 0);
    assert_int_equal(web_instances(read), 7);
    assert_int_equal(read->version, 3);
    store_app_free(read);
    read = NULL;
    assert_int_equal(store_app_get(st, "cart", &read), 0); /* by name, in the default space */
    assert_string_equal(read->guid, other->guid);
    store_app_free(read);
    struct store_app **apps = NULL;
    size_t n = 0;
    assert_int_equal(store_app_list(st, &apps, &n), 0);
    assert_int_equal(n, 2);
    assert_string_equal(apps[0]->name, "cart"); /* by name */
    assert_string_equal(apps[1]->name, "shop");
    assert_int_equal(web_instances(apps[1]), 7);
    store_app_list_free(apps, n);
    if (hold)
        hold_release(hold);
    /* the route's app is created by the queued write: the route waits for it */
    struct store_route r = {
        .host = "cart.localhost", .path = "", .app_guid = other->guid, .domain = "localhost"};
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(st, &r), 0);
    reap_until(st, &log, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(log.order[i], i);
        assert_int_equal(log.rc[i], 0);
    }
    assert_int_equal(store_async_queued(st), 0);
    /* as written, in this store's copy: the created app at version 1, updated at once */
    read = NULL;
    assert_int_equal(store_app_get(st, "cart", &read), 0);
    assert_int_equal(read->version, 1);
    read->memory_mb = 64;
    assert_int_equal(store_app_update(st, read), 0);
    assert_int_equal(read->version, 2);
    store_app_free(read);
    store_close(st);
    /* what another store reads from the database afterwards */
    st = open_ok(path);
    read = NULL;
    assert_int_equal(store_app_get(st, app->guid, &read), 0);
    assert_int_equal(web_instances(read), 7);
    assert_int_equal(read->version, 3);
    store_app_free(read);
    struct store_route *routes = NULL;
    assert_int_equal(store_route_list(st, other->guid, &routes, &n), 0);
    assert_int_equal(n, 1);
    store_route_list_free(routes, n);
    store_close(st);
    store_app_free(app);
    store_app_free(other);
    remove_db(path);
}

/* A queued app write the store refuses (a name taken, a version another write passed) is
 * reported through its callback with the synchronous call's error, reads show the app as
 * stored again, and the writes queued after it are made. */
static void test_a_refused_queued_app_write_is_reported_through_its_callback(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_app *stale = store_app_dup(app);
    app->processes[0].instances = 4;
    assert_int_equal(store_app_update(st, app), 0); /* version 2 */
    struct done_log log = {0};
    struct done_tag tags[3] = {{&log, 0}, {&log, 1}, {&log, 2}};
    struct store_app *twin = sample_app("shop"); /* another guid, the same name */
    assert_int_equal(store_app_create_async(st, twin, note_done, &tags[0]), 0);
    stale->processes[0].instances = 9;
    assert_int_equal(store_app_update_async(st, stale, note_done, &tags[1]), 0);
    app->memory_mb = 256;
    assert_int_equal(store_app_update_async(st, app, note_done, &tags[2]), 0);
    reap_until(st, &log, 3);
    assert_int_equal(log.rc[0], -EEXIST);
    assert_int_equal(log.rc[1], -ESTALE);
    assert_int_equal(log.rc[2], 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(log.order[i], i);
    struct store_app *read = NULL;
    assert_int_equal(store_app_get(st, twin->guid, &read), -ENOENT);
    assert_int_equal(store_app_get(st, app->guid, &read), 0);
    assert_int_equal(web_instances(read), 4); /* not the refused 9 */
    assert_int_equal(read->memory_mb, 256);
    assert_int_equal(read->version, 3);
    store_app_free(read);
    struct store_app **apps = NULL;
    size_t n = 0;
    assert_int_equal(store_app_list(st, &apps, &n), 0);
    assert_int_equal(n, 1);
    store_app_list_free(apps, n);
    /* an update of a version never read is refused at once, with no callback */
    stale->version = 0;
    assert_int_equal(store_app_update_async(st, stale, note_done, &tags[0]), -EINVAL);
    assert_int_equal(store_async_reap(st), 0);
    assert_int_equal(log.n, 3);
    store_close(st);
    store_app_free(app);
    store_app_free(stale);
    store_app_free(twin);
    remove_db(path);
}

/* A queued modify whose write loses to another writer's (another store on the same
 * database changed the app after it was read) is made again on the new row: both changes
 * land, and its callback is told once, of the write that was made. */
static void test_a_queued_modify_is_made_again_after_another_writer(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store *st2 = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_app *read = NULL;
    assert_int_equal(store_app_get(st, app->guid, &read), 0); /* st's copy, at version 1 */
    store_app_free(read);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct done_log log = {0};
    struct done_tag tags[2] = {{&log, 0}, {&log, 1}};
    if (hold) /* st's writer waits on the row while the modify is queued from version 1 */
        assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, &tags[0]), 0);
    struct scale_to to6 = {.n = 6};
    assert_int_equal(
        store_app_modify_async(st, app->guid, scale_web, &to6, note_done, &tags[1], NULL), 0);
    /* the other writer changes the app meanwhile (on SQLite, after the modify was made) */
    struct store_app *theirs = NULL;
    assert_int_equal(store_app_get(st2, app->guid, &theirs), 0);
    theirs->memory_mb = 512;
    assert_int_equal(store_app_update(st2, theirs), 0);
    store_app_free(theirs);
    if (hold)
        hold_release(hold);
    reap_until(st, &log, hold ? 2 : 1);
    assert_int_equal(log.rc[log.n - 1], 0);
    assert_int_equal(log.order[log.n - 1], 1);
    assert_int_equal(to6.calls, hold ? 2 : 1); /* made again once on PostgreSQL */
    store_close(st);
    store_close(st2);
    st = open_ok(path);
    assert_int_equal(store_app_get(st, app->guid, &read), 0);
    assert_int_equal(web_instances(read), 6);
    assert_int_equal(read->memory_mb, 512);
    assert_int_equal(read->version, 3);
    store_app_free(read);
    store_close(st);
    store_app_free(app);
    remove_db(path);
}

/* A synchronous write of a row queued for an asynchronous one waits its turn: the queued
 * value never lands over the newer one. */
static void test_a_synchronous_write_never_overtakes_a_queued_one(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct done_log log = {0};
    for (int i = 0; i < 10; i++) {
        char body[32];
        snprintf(body, sizeof body, "{\"v\":%d}", i);
        assert_int_equal(store_doc_put_async(st, "k", "a", body, note_done, done_tag(&log, i)), 0);
    }
    assert_int_equal(store_doc_put(st, "k", "a", "{\"v\":\"last\"}"), 0);
    assert_int_equal(store_async_queued(st), 0);
    reap_until(st, &log, 10);
    store_close(st);
    st = open_ok(path);
    char *json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":\"last\"}");
    free(json);
    store_close(st);
    remove_db(path);
}

/* A write the server refuses (text that is not UTF-8 on PostgreSQL) is reported to its
 * caller as a failure, and the writes queued after it are still made. */
static void test_a_failed_queued_write_is_reported_and_the_next_ones_land(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct done_log log = {0};
    struct store_audit_event ev = {
        .at = 5, .type = "audit.app.update", .actor = "alice", .detail = "{}"};
    assert_int_equal(store_doc_put_async(st, "k", "bad", "\xff\xfe", note_done, done_tag(&log, 0)),
                     0);
    assert_int_equal(store_doc_put_async(st, "k", "good", "{}", note_done, done_tag(&log, 1)), 0);
    assert_int_equal(store_audit_add_async(st, &ev, note_done, done_tag(&log, 2)), 0);
    reap_until(st, &log, 3);
    assert_int_equal(log.rc[0], on_pg(path) ? -EIO : 0); /* SQLite keeps any bytes */
    assert_int_equal(log.rc[1], 0);
    assert_int_equal(log.rc[2], 0);
    char *json = doc_body(st, "k", "good");
    assert_non_null(json);
    free(json);
    struct store_audit_event *list = NULL;
    size_t n = 0;
    assert_int_equal(store_audit_list(st, NULL, NULL, NULL, 0, 10, &list, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].actor, "alice");
    store_audit_list_free(list, n);
    store_close(st);
    remove_db(path);
}

/* Closing waits for the queue while the server answers: every queued write is made. */
static void test_close_makes_the_queued_writes(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    for (int i = 0; i < 200; i++) {
        char id[16];
        snprintf(id, sizeof id, "d%03d", i);
        assert_int_equal(store_doc_put_async(st, "k", id, "{}", NULL, NULL), 0);
    }
    store_close(st);
    st = open_ok(path);
    int n = 0;
    assert_int_equal(store_doc_each(st, "k", count_docs, &n), 0);
    assert_int_equal(n, 200);
    store_close(st);
    remove_db(path);
}

/* A server that does not answer (a row held by another transaction) holds a close up for
 * store_drain_ms at most: the writes not begun are failed with -ECANCELED, the store takes
 * no more, and the write under way stays with its thread, which may finish it later. */
static void test_close_with_a_stuck_queue_is_bounded_and_reports_the_lost_writes(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path);
    assert_int_equal(store_doc_put(st, "k", "a", "{\"v\":0}"), 0);
    PGconn *hold = hold_row(path, "k", "a");
    struct done_log log = {0};
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(&log, 0)),
                     0);
    assert_int_equal(store_doc_put_async(st, "k", "b", "{}", note_done, done_tag(&log, 1)), 0);
    assert_int_equal(store_doc_put_async(st, "k", "c", "{}", note_done, done_tag(&log, 2)), 0);
    int64_t bound = store_drain_ms;
    store_drain_ms = 300;
    int64_t t0 = time_now_ms();
    store_async_drain(st);
    int64_t took = time_now_ms() - t0;
    assert_true(took >= 300);
    assert_true(took < 3000);
    assert_int_equal(log.n, 2); /* b and c, never begun; a is under way */
    assert_int_equal(log.order[0], 1);
    assert_int_equal(log.rc[0], -ECANCELED);
    assert_int_equal(log.order[1], 2);
    assert_int_equal(log.rc[1], -ECANCELED);
    assert_int_equal(store_doc_put_async(st, "k", "d", "{}", note_done, done_tag(&log, 3)),
                     -ECANCELED);
    assert_int_equal(store_doc_put(st, "k", "d", "{}"), -ECANCELED);
    t0 = time_now_ms();
    store_close(st);
    assert_true(time_now_ms() - t0 < 1000);
    store_drain_ms = bound;
    assert_int_equal(log.n, 2); /* a is never reported: its owner may be gone */
    hold_release(hold);
    st = open_ok(path);
    char *json = doc_body(st, "k", "b");
    assert_null(json);
    assert_null(doc_body(st, "k", "c"));
    store_close(st);
    remove_db(path);
}

/* Documents read once (by id, or a kind whole) are answered without the server until another
 * writer changes documents (its notification), this store's own writes included at once. */
static void test_documents_come_from_the_cache_until_another_writer_changes_one(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path), *other = open_ok(path);
    assert_int_equal(store_doc_put(st, "k", "a", "{\"v\":1}"), 0);
    assert_int_equal(store_doc_put(st, "k", "b", "{}"), 0);
    char *json = doc_body(st, "k", "a");
    free(json);
    assert_null(doc_body(st, "k", "missing"));
    struct doc_ids ids = {""};
    assert_int_equal(store_doc_each(st, "other", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "");
    raw_sql(path, "ALTER TABLE documents RENAME TO documents_away");
    for (int i = 0; i < 50; i++) {
        json = doc_body(st, "k", "a");
        assert_string_equal(json, "{\"v\":1}");
        free(json);
        assert_null(doc_body(st, "k", "missing"));
        assert_int_equal(store_doc_each(st, "other", collect_doc_ids, &ids), 0);
        assert_string_equal(ids.ids, "");
    }
    raw_sql(path, "ALTER TABLE documents_away RENAME TO documents");
    /* a kind read whole answers for its ids, with this store's own writes */
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "a,b");
    assert_int_equal(store_doc_put(st, "k", "c", "{}"), 0);
    assert_int_equal(store_doc_delete(st, "k", "a"), 0);
    raw_sql(path, "ALTER TABLE documents RENAME TO documents_away");
    memset(&ids, 0, sizeof ids);
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "b,c");
    assert_null(doc_body(st, "k", "a"));
    raw_sql(path, "ALTER TABLE documents_away RENAME TO documents");
    /* another writer's change is news: the kind read whole is read again (through the
     * writer: reaped), and the news counts once it is in the copy */
    uint64_t news = store_doc_news(st);
    assert_int_equal(store_doc_put(other, "k", "b", "{\"by\":\"other\"}"), 0);
    for (int i = 0; i < 1000 && store_doc_news(st) == news; i++) {
        store_async_reap(st);
        usleep(10 * 1000);
    }
    raw_sql(path, "ALTER TABLE documents RENAME TO documents_away");
    json = doc_body(st, "k", "b");
    assert_string_equal(json, "{\"by\":\"other\"}");
    free(json);
    raw_sql(path, "ALTER TABLE documents_away RENAME TO documents");
    /* news of another kind leaves this kind's copy: answered with the table away */
    news = store_doc_news(st);
    assert_int_equal(store_doc_put(other, "cell", "x", "{}"), 0);
    for (int i = 0; i < 1000 && store_doc_news(st) == news; i++)
        usleep(10 * 1000);
    raw_sql(path, "ALTER TABLE documents RENAME TO documents_away");
    json = doc_body(st, "k", "b");
    assert_string_equal(json, "{\"by\":\"other\"}");
    free(json);
    raw_sql(path, "ALTER TABLE documents_away RENAME TO documents");
    store_close(other);
    store_close(st);
    remove_db(path);
}

/* News of a kind held whole (store_doc_hold) is read again through the writer, in turn with
 * the writes (here behind one waiting on a held row): meanwhile the copy answers as it was and
 * the news is not counted; once the read is back, the copy holds the other writer's change and
 * the news counts. A write of the kind queued here while it is read again stays in the copy
 * over what was read (made before it). */
static void test_news_of_a_kind_held_whole_is_read_again_off_the_callers_thread(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path), *other = open_ok(path);
    assert_int_equal(store_doc_put(st, "k", "a", "{\"v\":0}"), 0);
    assert_int_equal(store_doc_put(st, "k", "held", "{}"), 0);
    assert_int_equal(store_doc_hold(st, "k"), 0); /* read whole: held from now on */
    PGconn *hold = hold_row(path, "k", "held");
    struct done_log log = {0};
    assert_int_equal(
        store_doc_put_async(st, "k", "held", "{\"h\":1}", note_done, done_tag(&log, 0)), 0);
    uint64_t news = store_doc_news(st), kind_news = store_doc_news_kind(st, "k");
    assert_int_equal(store_doc_put(other, "k", "a", "{\"v\":1}"), 0);
    /* heard: the read again waits behind the held write */
    for (int i = 0; i < 1000 && store_async_queued(st) < 2; i++) {
        store_doc_news(st);
        usleep(10 * 1000);
    }
    assert_int_equal(store_async_queued(st), 2);
    char *json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":0}"); /* the copy's (the server has v 1) */
    free(json);
    assert_true(store_doc_news(st) == news);
    assert_true(store_doc_news_kind(st, "k") == kind_news);
    /* a write of the kind queued meanwhile: kept over what is read */
    assert_int_equal(store_doc_put_async(st, "k", "mine", "{}", note_done, done_tag(&log, 1)), 0);
    hold_release(hold);
    reap_until(st, &log, 2);
    for (int i = 0; i < 1000 && (store_async_queued(st) || store_doc_news(st) == news); i++) {
        store_async_reap(st);
        usleep(10 * 1000);
    }
    assert_true(store_doc_news(st) != news);
    assert_true(store_doc_news_kind(st, "k") != kind_news);
    raw_sql(path, "ALTER TABLE documents RENAME TO documents_away"); /* the copy answers */
    json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":1}");
    free(json);
    struct doc_ids ids = {""};
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "a,held,mine");
    raw_sql(path, "ALTER TABLE documents_away RENAME TO documents");
    store_close(other);
    store_close(st);
    remove_db(path);
}

/* A kind held whole (store_doc_hold) outlives what outdates the whole copy: news of every
 * kind ("documents") drops a kind that was only read whole, which is read from the server
 * next, but the held kind is read again through the writer (here behind a write waiting on a
 * held row) and answered from the copy as it was until then; a write of it that fails has it
 * read again the same way. */
static void test_a_held_kind_is_read_again_not_dropped_on_news_of_every_kind(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path);
    assert_int_equal(store_doc_put(st, "k", "a", "{\"v\":0}"), 0);
    assert_int_equal(store_doc_put(st, "k", "held", "{}"), 0);
    assert_int_equal(store_doc_put(st, "plain", "p", "{\"p\":0}"), 0);
    assert_int_equal(store_doc_hold(st, "k"), 0);
    struct doc_ids ids = {""};
    assert_int_equal(store_doc_each(st, "plain", collect_doc_ids, &ids), 0); /* read whole */
    /* changed behind the feed's back, then news of every kind */
    raw_sql(path, "ALTER TABLE documents DISABLE TRIGGER USER;"
                  "UPDATE documents SET body = '{\"v\":1}' WHERE kind = 'k' AND id = 'a';"
                  "UPDATE documents SET body = '{\"p\":1}' WHERE kind = 'plain';"
                  "ALTER TABLE documents ENABLE TRIGGER USER");
    PGconn *hold = hold_row(path, "k", "held");
    struct done_log log = {0};
    assert_int_equal(
        store_doc_put_async(st, "k", "held", "{\"h\":1}", note_done, done_tag(&log, 0)), 0);
    uint64_t news = store_doc_news(st);
    raw_sql(path, "NOTIFY skiff_store, 'documents'");
    for (int i = 0; i < 1000 && store_doc_news(st) == news; i++)
        usleep(10 * 1000);
    assert_true(store_doc_news(st) != news);
    char *json = doc_body(st, "plain", "p"); /* dropped: read from the server */
    assert_string_equal(json, "{\"p\":1}");
    free(json);
    json = doc_body(st, "k", "a"); /* held: the copy's, read again behind the held write */
    assert_string_equal(json, "{\"v\":0}");
    free(json);
    assert_int_equal(store_async_queued(st), 2);
    hold_release(hold);
    reap_until(st, &log, 1);
    for (int i = 0; i < 1000 && store_async_queued(st); i++)
        usleep(10 * 1000);
    assert_int_equal(store_async_queued(st), 0);
    store_async_reap(st);
    raw_sql(path, "ALTER TABLE documents RENAME TO documents_away"); /* the copy answers */
    json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":1}");
    free(json);
    json = doc_body(st, "k", "held");
    assert_string_equal(json, "{\"h\":1}");
    free(json);
    raw_sql(path, "ALTER TABLE documents_away RENAME TO documents");
    /* a write of the held kind that fails: the kind is read again, and answers meanwhile */
    raw_sql(path, "ALTER TABLE documents DISABLE TRIGGER USER;"
                  "UPDATE documents SET body = '{\"v\":2}' WHERE kind = 'k' AND id = 'a';"
                  "ALTER TABLE documents ENABLE TRIGGER USER");
    assert_int_equal(store_doc_update(st, "k", "gone", "{}"), -ENOENT);
    for (int i = 0; i < 1000 && store_async_queued(st); i++)
        usleep(10 * 1000);
    store_async_reap(st);
    raw_sql(path, "ALTER TABLE documents RENAME TO documents_away");
    json = doc_body(st, "k", "a");
    assert_string_equal(json, "{\"v\":2}");
    free(json);
    raw_sql(path, "ALTER TABLE documents_away RENAME TO documents");
    store_close(st);
    remove_db(path);
}

/* A write whose news has not come yet (on PostgreSQL: made with the feed's triggers off) is
 * found by a fresh read. A document read fresh drops a copy that did not hold it, so the kind
 * read whole next shows it too; a kind read fresh replaces the copy's; an app read fresh replaces
 * the copy's; an app the copy lacks is found by store_app_find. */
static void test_fresh_reads_see_a_write_the_feed_has_not_told_of(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path), *other = open_ok(path);
    struct store_app *app = sample_app("shop"), *cart = sample_app("cart"), *got = NULL;
    assert_int_equal(store_app_create(st, app), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    struct doc_ids ids = {""};
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "a");
    assert_int_equal(store_app_get(st, "shop", &got), 0);
    assert_null(got->package_guid);
    store_app_free(got);
    if (on_pg(path))
        raw_sql(path, "ALTER TABLE documents DISABLE TRIGGER USER;"
                      "ALTER TABLE apps DISABLE TRIGGER USER");
    assert_int_equal(store_doc_put(other, "k", "b", "{\"by\":\"other\"}"), 0);
    assert_int_equal(store_app_create(other, cart), 0);
    assert_int_equal(store_app_get(other, app->guid, &got), 0);
    got->package_guid = xstrdup("pkg-1");
    assert_int_equal(store_app_update(other, got), 0);
    store_app_free(got);

    char *json = NULL;
    assert_int_equal(store_doc_get_fresh(st, "k", "b", &json), 0);
    assert_string_equal(json, "{\"by\":\"other\"}");
    free(json);
    memset(&ids, 0, sizeof ids);
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "a,b");
    assert_int_equal(store_doc_get_fresh(st, "k", "none", &json), -ENOENT);
    /* a kind read whole: the copy stands until the kind is read fresh, which replaces it */
    assert_int_equal(store_doc_put(other, "k", "c", "{}"), 0);
    assert_int_equal(store_doc_delete(other, "k", "a"), 0);
    memset(&ids, 0, sizeof ids);
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, on_pg(path) ? "a,b" : "b,c");
    memset(&ids, 0, sizeof ids);
    assert_int_equal(store_doc_each_fresh(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "b,c");
    memset(&ids, 0, sizeof ids);
    assert_int_equal(store_doc_each(st, "k", collect_doc_ids, &ids), 0);
    assert_string_equal(ids.ids, "b,c");

    assert_int_equal(store_app_find(st, STORE_DEFAULT_SPACE_GUID, "cart", &got), 0);
    assert_string_equal(got->guid, cart->guid);
    store_app_free(got);
    assert_int_equal(store_app_get_fresh(st, app->guid, &got), 0);
    assert_string_equal(got->package_guid, "pkg-1");
    store_app_free(got);
    assert_int_equal(store_app_get(st, app->guid, &got), 0); /* the copy holds it now */
    assert_string_equal(got->package_guid, "pkg-1");
    store_app_free(got);
    if (on_pg(path))
        raw_sql(path, "ALTER TABLE documents ENABLE TRIGGER USER;"
                      "ALTER TABLE apps ENABLE TRIGGER USER");
    store_app_free(app);
    store_app_free(cart);
    store_close(other);
    store_close(st);
    remove_db(path);
}

static struct store_route route_of(const char *host, const char *app_guid)
{
    struct store_route r = {
        .host = (char *)host, .path = "", .app_guid = (char *)app_guid, .domain = "localhost"};
    uuid_generate_v4(r.guid);
    return r;
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

/* "host:app-name:balance:https" for each route, in the list's order */
static void routes_text(struct store *st, const char *app_guid, const struct store_app *a,
                        const struct store_app *b, char *out, size_t size)
{
    struct store_route *routes = NULL;
    size_t n = 0;
    assert_int_equal(store_route_list(st, app_guid, &routes, &n), 0);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(out);
        const char *owner = !strcmp(routes[i].app_guid, a->guid)   ? a->name
                            : !strcmp(routes[i].app_guid, b->guid) ? b->name
                                                                   : "?";
        snprintf(out + len, size - len, "%s%s:%s:%s:%d", len ? "," : "", routes[i].host, owner,
                 routes[i].balance, routes[i].https_only);
    }
    store_route_list_free(routes, n);
}

/* "app-seq:state" for each task, in the list's order */
static void tasks_text(struct store *st, const struct store_app *a, char *out, size_t size)
{
    struct store_task *list = NULL;
    size_t n = 0;
    assert_int_equal(store_task_list(st, NULL, &list, &n), 0);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(out);
        snprintf(out + len, size - len, "%s%s-%lld:%s", len ? "," : "",
                 strcmp(list[i].app_guid, a->guid) ? "other" : a->name,
                 (long long)list[i].sequence_id, list[i].state);
    }
    store_task_list_free(list, n);
}

/* Queued route writes, task writes and an app's deletion are made in turn with a queued
 * document and reported in order; until they are made (on PostgreSQL, the writer held by a
 * document row another transaction locks) reads show them as made: the routes added, changed
 * and deleted, the task recorded, the deleted app gone with its routes and tasks. Once made,
 * this store's reads show the same without a queue, and so does another store's. */
static void
test_queued_route_task_and_app_delete_writes_land_in_order_and_are_read_at_once(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *shop = sample_app("shop"), *cart = sample_app("cart");
    assert_int_equal(store_app_create(st, shop), 0);
    assert_int_equal(store_app_create(st, cart), 0);
    struct store_route r = route_of("shop.localhost", shop->guid);
    assert_int_equal(store_route_add(st, &r), 0);
    r = route_of("cart.localhost", cart->guid);
    assert_int_equal(store_route_add(st, &r), 0);
    r = route_of("old.localhost", shop->guid);
    assert_int_equal(store_route_add(st, &r), 0);
    struct store_task t1 = task_of(cart->guid, 1), t2 = task_of(shop->guid, 1);
    assert_int_equal(store_task_put(st, &t1), 0);
    assert_int_equal(store_task_put(st, &t2), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    char text[512];
    routes_text(st, NULL, shop, cart, text, sizeof text); /* the caches loaded */
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct done_log log = {0};
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(&log, 0)),
                     0);
    r = route_of("new.localhost", shop->guid);
    assert_int_equal(store_route_add_async(st, &r, note_done, done_tag(&log, 1)), 0);
    assert_int_equal(store_route_update_async(st, "shop.localhost", "", "least-connection", NULL, 1,
                                              note_done, done_tag(&log, 2)),
                     0);
    assert_int_equal(
        store_route_delete_async(st, "old.localhost", "", note_done, done_tag(&log, 3)), 0);
    t2.state = "RUNNING";
    t2.updated_at = 2000;
    assert_int_equal(store_task_put_async(st, &t2, note_done, done_tag(&log, 4)), 0);
    struct store_task t3 = task_of(shop->guid, 2);
    assert_int_equal(store_task_put_async(st, &t3, note_done, done_tag(&log, 5)), 0);
    assert_int_equal(store_app_delete_async(st, cart->guid, note_done, done_tag(&log, 6)), 0);
    if (hold) /* all seven wait behind the held row */
        assert_int_equal(store_async_queued(st), 7);
    for (int pass = 0; pass < 3; pass++) {
        /* queued (PostgreSQL), made and reaped, and as another store reads the database */
        routes_text(st, NULL, shop, cart, text, sizeof text);
        assert_string_equal(text, "new.localhost:shop:round-robin:0,"
                                  "shop.localhost:shop:least-connection:1");
        routes_text(st, cart->guid, shop, cart, text, sizeof text);
        assert_string_equal(text, "");
        tasks_text(st, shop, text, sizeof text);
        assert_string_equal(text, "shop-1:RUNNING,shop-2:PENDING");
        struct store_app *read = NULL;
        assert_int_equal(store_app_get(st, cart->guid, &read), -ENOENT);
        assert_int_equal(store_app_get(st, "cart", &read), -ENOENT);
        assert_null(read);
        struct store_app **apps = NULL;
        size_t n = 0;
        assert_int_equal(store_app_list(st, &apps, &n), 0);
        assert_int_equal(n, 1);
        assert_string_equal(apps[0]->name, "shop");
        store_app_list_free(apps, n);
        if (pass == 0) {
            if (hold)
                hold_release(hold);
            reap_until(st, &log, 7);
            for (int i = 0; i < 7; i++) {
                assert_int_equal(log.order[i], i);
                assert_int_equal(log.rc[i], 0);
            }
            assert_int_equal(store_async_queued(st), 0);
        } else if (pass == 1) {
            store_close(st);
            st = open_ok(path);
        }
    }
    store_close(st);
    store_app_free(shop);
    store_app_free(cart);
    remove_db(path);
}

/* Route and task writes and an app's deletion the store refuses (a host and path taken, a
 * task's number taken, nothing to delete or change) are reported through their callbacks with
 * the synchronous calls' errors; reads never showed them made, and the writes queued after
 * them are made. */
static void test_a_refused_queued_route_or_task_write_is_reported_through_its_callback(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *shop = sample_app("shop"), *cart = sample_app("cart");
    assert_int_equal(store_app_create(st, shop), 0);
    assert_int_equal(store_app_create(st, cart), 0);
    struct store_route r = route_of("shop.localhost", shop->guid);
    assert_int_equal(store_route_add(st, &r), 0);
    struct store_task t1 = task_of(shop->guid, 1);
    assert_int_equal(store_task_put(st, &t1), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    char text[512];
    routes_text(st, NULL, shop, cart, text, sizeof text);
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct done_log log = {0};
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(&log, 0)),
                     0);
    r = route_of("shop.localhost", cart->guid); /* another app's */
    assert_int_equal(store_route_add_async(st, &r, note_done, done_tag(&log, 1)), 0);
    assert_int_equal(
        store_route_delete_async(st, "none.localhost", "", note_done, done_tag(&log, 2)), 0);
    assert_int_equal(store_route_update_async(st, "none.localhost", "", "least-connection", NULL,
                                              -1, note_done, done_tag(&log, 3)),
                     0);
    struct store_task twin = task_of(shop->guid, 1); /* number 1 is taken */
    assert_int_equal(store_task_put_async(st, &twin, note_done, done_tag(&log, 4)), 0);
    char nobody[37];
    uuid_generate_v4(nobody);
    assert_int_equal(store_app_delete_async(st, nobody, note_done, done_tag(&log, 5)), 0);
    r = route_of("cart.localhost", cart->guid);
    assert_int_equal(store_route_add_async(st, &r, note_done, done_tag(&log, 6)), 0);
    for (int pass = 0; pass < 2; pass++) {
        routes_text(st, NULL, shop, cart, text, sizeof text);
        assert_string_equal(text, "cart.localhost:cart:round-robin:0,"
                                  "shop.localhost:shop:round-robin:0");
        routes_text(st, cart->guid, shop, cart, text, sizeof text); /* not shop's host */
        assert_string_equal(text, "cart.localhost:cart:round-robin:0");
        tasks_text(st, shop, text, sizeof text);
        assert_string_equal(text, "shop-1:PENDING");
        if (pass == 0) {
            if (hold)
                hold_release(hold);
            reap_until(st, &log, 7);
        }
    }
    int want[7] = {0, -EEXIST, -ENOENT, -ENOENT, -EEXIST, -ENOENT, 0};
    for (int i = 0; i < 7; i++) {
        assert_int_equal(log.order[i], i);
        assert_int_equal(log.rc[i], want[i]);
    }
    struct store_task *list = NULL;
    size_t n = 0;
    assert_int_equal(store_task_list(st, shop->guid, &list, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].guid, t1.guid);
    store_task_list_free(list, n);
    store_close(st);
    store_app_free(shop);
    store_app_free(cart);
    remove_db(path);
}

/* The domains are read from a copy until a change is announced: this store's own, or
 * another writer's through the feed (PostgreSQL; a mapping reads them on the loop). */
/* "name:org" for each domain ("" for a shared one), in the list's order */
static void domains_text(struct store *st, char *out, size_t size)
{
    char **names = NULL, **orgs = NULL;
    bool *shared = NULL;
    assert_int_equal(store_domain_list(st, &names, &shared, &orgs), 0);
    out[0] = '\0';
    for (size_t i = 0; names[i]; i++) {
        size_t len = strlen(out);
        assert_int_equal(shared[i], !*orgs[i]);
        snprintf(out + len, size - len, "%s%s:%s", len ? "," : "", names[i], orgs[i]);
    }
    strv_free(names);
    strv_free(orgs);
    free(shared);
}

static void test_domains_come_from_the_cache_until_a_change_is_announced(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path), *other = open_ok(path);
    char text[256];
    assert_int_equal(store_domain_add(st, "a.example", NULL), 0);
    domains_text(st, text, sizeof text);
    assert_string_equal(text, "a.example:,localhost:");
    raw_sql(path, "ALTER TABLE domains RENAME TO domains_away");
    for (int i = 0; i < 5; i++) {
        domains_text(st, text, sizeof text);
        assert_string_equal(text, "a.example:,localhost:");
    }
    raw_sql(path, "ALTER TABLE domains_away RENAME TO domains");
    uint64_t before = store_change_count(st);
    assert_int_equal(store_domain_add(other, "b.example", "org-1"), 0);
    wait_for_change(st, before);
    domains_text(st, text, sizeof text);
    assert_string_equal(text, "a.example:,b.example:org-1,localhost:");
    assert_int_equal(store_domain_delete(st, "b.example"), 0);
    domains_text(st, text, sizeof text);
    assert_string_equal(text, "a.example:,localhost:");
    store_close(other);
    store_close(st);
    remove_db(path);
}

/* The tasks are read from a copy (a task's create, list and cancel read them on the loop)
 * until a change is announced: this store's own writes change it, another writer's come
 * through the feed (PostgreSQL). */
static void test_tasks_come_from_the_cache_until_another_writer_changes_one(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path), *other = open_ok(path);
    struct store_app *shop = sample_app("shop");
    assert_int_equal(store_app_create(st, shop), 0);
    struct store_task t1 = task_of(shop->guid, 1);
    assert_int_equal(store_task_put(st, &t1), 0);
    char text[256];
    tasks_text(st, shop, text, sizeof text);
    assert_string_equal(text, "shop-1:PENDING");
    struct done_log log = {0};
    t1.state = "RUNNING";
    assert_int_equal(store_task_put_async(st, &t1, note_done, done_tag(&log, 0)), 0);
    reap_until(st, &log, 1);
    raw_sql(path, "ALTER TABLE tasks RENAME TO tasks_away");
    for (int i = 0; i < 5; i++) {
        tasks_text(st, shop, text, sizeof text);
        assert_string_equal(text, "shop-1:RUNNING");
    }
    raw_sql(path, "ALTER TABLE tasks_away RENAME TO tasks");
    uint64_t before = store_change_count(st);
    struct store_task t2 = task_of(shop->guid, 2);
    assert_int_equal(store_task_put(other, &t2), 0);
    wait_for_change(st, before);
    tasks_text(st, shop, text, sizeof text);
    assert_string_equal(text, "shop-1:RUNNING,shop-2:PENDING");
    store_app_free(shop);
    store_close(other);
    store_close(st);
    remove_db(path);
}

/* A droplet read once is answered without the server (the scheduler reads it at every
 * converge turn) until a deletion, here or announced by another writer (which names it);
 * another writer's new droplet is no reason to read it again. */
static void test_droplets_come_from_the_cache_until_one_is_deleted(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path), *other = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_droplet d1 = {.app_guid = app->guid, .path = "/dr/1", .digest = "sha256:ab"};
    uuid_generate_v4(d1.guid);
    assert_int_equal(store_droplet_add(st, &d1), 0);
    struct store_droplet *d = NULL;
    assert_int_equal(store_droplet_get(st, d1.guid, &d), 0);
    store_droplet_free(d);
    raw_sql(path, "ALTER TABLE droplets RENAME TO droplets_away");
    for (int i = 0; i < 20; i++) {
        d = NULL;
        assert_int_equal(store_droplet_get(st, d1.guid, &d), 0);
        assert_string_equal(d->path, "/dr/1");
        assert_string_equal(d->digest, "sha256:ab");
        store_droplet_free(d);
    }
    raw_sql(path, "ALTER TABLE droplets_away RENAME TO droplets");
    /* another writer's new droplet outdates none read (they never change): still no read */
    struct store_droplet d2 = {.app_guid = app->guid, .path = "/dr/2", .digest = "sha256:cd"};
    uuid_generate_v4(d2.guid);
    assert_int_equal(store_droplet_add(other, &d2), 0);
    feed_fence(st, other);
    raw_sql(path, "ALTER TABLE droplets RENAME TO droplets_away");
    d = NULL;
    assert_int_equal(store_droplet_get(st, d1.guid, &d), 0);
    assert_string_equal(d->path, "/dr/1");
    store_droplet_free(d);
    raw_sql(path, "ALTER TABLE droplets_away RENAME TO droplets");
    uint64_t before = store_change_count(st);
    assert_int_equal(store_droplet_delete(other, d1.guid), 0);
    wait_for_change(st, before);
    d = NULL;
    assert_int_equal(store_droplet_get(st, d1.guid, &d), -ENOENT);
    assert_null(d);
    store_app_free(app);
    store_close(other);
    store_close(st);
    remove_db(path);
}

/* A prune's or a queued read's callback, reported into a done_log as note_done does; what it
 * got is kept in the log's owner below. */
struct artifact_log {
    struct done_log log;
    char **paths;                 /* the prune's */
    struct store_package *pkg[4]; /* by tag - 8 */
    struct store_app *app[4];     /* by tag - 12 */
};

static void note_pruned(void *ctx, int rc, char **paths)
{
    struct done_tag *t = ctx;
    struct artifact_log *al = (struct artifact_log *)t->log;
    al->paths = paths;
    note_done(ctx, rc);
}

static void note_package(void *ctx, int rc, struct store_package *pkg)
{
    struct done_tag *t = ctx;
    struct artifact_log *al = (struct artifact_log *)t->log;
    assert_true((rc == 0) == (pkg != NULL));
    al->pkg[t->tag - 8] = pkg;
    note_done(ctx, rc);
}

static void note_app(void *ctx, int rc, struct store_app *app)
{
    struct done_tag *t = ctx;
    struct artifact_log *al = (struct artifact_log *)t->log;
    assert_true((rc == 0) == (app != NULL));
    al->app[t->tag - 12] = app;
    note_done(ctx, rc);
}

/* "pkgs:A,B drops:C" of the ones of names that are read (by guid) as there */
static void artifacts_text(struct store *st, const struct store_package *pk, size_t npk,
                           const struct store_droplet *dr, size_t ndr, char *out, size_t size)
{
    snprintf(out, size, "pkgs:");
    for (size_t i = 0; i < npk; i++) {
        struct store_package *got = NULL;
        if (store_package_get(st, pk[i].guid, &got) == 0) {
            assert_string_equal(got->path, pk[i].path);
            size_t len = strlen(out);
            snprintf(out + len, size - len, "%s%s", out[len - 1] == ':' ? "" : ",", got->path);
        }
        store_package_free(got);
    }
    size_t len = strlen(out);
    snprintf(out + len, size - len, " drops:");
    for (size_t i = 0; i < ndr; i++) {
        struct store_droplet *got = NULL;
        if (store_droplet_get(st, dr[i].guid, &got) == 0) {
            assert_string_equal(got->path, dr[i].path);
            len = strlen(out);
            snprintf(out + len, size - len, "%s%s", out[len - 1] == ':' ? "" : ",", got->path);
        }
        store_droplet_free(got);
    }
}

/* Queued adds of a package and a droplet and a prune are made in turn with a queued document
 * and reported in order (the prune with the paths of the rows it deleted); until they are
 * made (the writer held by a locked document row on PostgreSQL) reads show them as made: the
 * package and droplet added are found, those the prune deletes are gone. A queued read of a
 * package this store knows is answered during the call. Once made, this store's reads show
 * the same, and so does another store's. */
static void
test_queued_package_droplet_and_prune_writes_land_in_order_and_are_read_at_once(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_package pk[2] = {{.app_guid = app->guid, .path = "/pk/1", .bytes = 1},
                                  {.app_guid = app->guid, .path = "/pk/2", .bytes = 2}};
    struct store_droplet dr[2] = {
        {.app_guid = app->guid, .path = "/dr/1", .process_types_json = "{}"},
        {.app_guid = app->guid, .path = "/dr/2", .buildpack = "staticfile", .digest = "sha256:x"}};
    for (int i = 0; i < 2; i++) {
        uuid_generate_v4(pk[i].guid);
        uuid_generate_v4(dr[i].guid);
    }
    assert_int_equal(store_package_add(st, &pk[0]), 0);
    assert_int_equal(store_droplet_add(st, &dr[0]), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    char text[256];
    artifacts_text(st, pk, 2, dr, 2, text, sizeof text);
    assert_string_equal(text, "pkgs:/pk/1 drops:/dr/1");
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct artifact_log al = {0};
    struct done_log *log = &al.log;
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(log, 0)),
                     0);
    assert_int_equal(store_package_add_async(st, &pk[1], note_done, done_tag(log, 1)), 0);
    assert_int_equal(store_droplet_add_async(st, &dr[1], note_done, done_tag(log, 2)), 0);
    assert_int_equal(store_app_prune_artifacts_async(st, app->guid, pk[1].guid, dr[1].guid,
                                                     note_pruned, done_tag(log, 3)),
                     0);
    if (hold) /* all four wait behind the held row */
        assert_int_equal(store_async_queued(st), 4);
    for (int pass = 0; pass < 3; pass++) {
        /* queued (PostgreSQL), made and reaped, and as another store reads the database */
        artifacts_text(st, pk, 2, dr, 2, text, sizeof text);
        assert_string_equal(text, "pkgs:/pk/2 drops:/dr/2");
        struct store_droplet *d = NULL;
        assert_int_equal(store_droplet_get(st, dr[1].guid, &d), 0);
        assert_string_equal(d->buildpack, "staticfile");
        assert_string_equal(d->digest, "sha256:x");
        store_droplet_free(d);
        /* known here: answered before the call returns, on both backends */
        int before = log->n;
        assert_int_equal(store_package_get_async(st, pk[1].guid, note_package, done_tag(log, 8)),
                         0);
        assert_int_equal(log->n, before + 1);
        assert_int_equal(log->rc[before], 0);
        assert_int_equal(al.pkg[0]->bytes, 2);
        assert_string_equal(al.pkg[0]->app_guid, app->guid);
        store_package_free(al.pkg[0]);
        al.pkg[0] = NULL;
        log->n--; /* not one of the four */
        if (pass == 0) {
            if (hold)
                hold_release(hold);
            reap_until(st, log, 4);
            for (int i = 0; i < 4; i++) {
                assert_int_equal(log->order[i], i);
                assert_int_equal(log->rc[i], 0);
            }
            assert_non_null(al.paths);
            assert_string_equal(al.paths[0], "/pk/1");
            assert_string_equal(al.paths[1], "/dr/1");
            assert_null(al.paths[2]);
            strv_free(al.paths);
            assert_int_equal(store_async_queued(st), 0);
        } else if (pass == 1) {
            store_close(st);
            st = open_ok(path);
        }
    }
    /* refused: a droplet of an app that does not exist, reported through its callback */
    struct store_droplet orphan = {.app_guid = "no-such-app", .path = "/dr/x"};
    uuid_generate_v4(orphan.guid);
    struct done_log refused = {0};
    assert_int_equal(store_droplet_add_async(st, &orphan, note_done, done_tag(&refused, 0)), 0);
    reap_until(st, &refused, 1);
    assert_int_equal(refused.rc[0], -EEXIST);
    struct store_droplet *d = NULL;
    assert_int_equal(store_droplet_get(st, orphan.guid, &d), -ENOENT);
    store_close(st);
    store_app_free(app);
    remove_db(path);
}

/* The reads staging makes on the event loop, queued: a package this store has not seen (added
 * through another store) and an app read from the database come back through their callbacks
 * after the writes queued before them; an app with a write queued here is answered at once
 * with that write's copy, and one queued for deletion as gone. */
static void test_queued_reads_of_packages_and_apps_answer_in_turn(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path), *other = open_ok(path);
    struct store_app *app = sample_app("shop"), *gone = sample_app("gone");
    assert_int_equal(store_app_create(st, app), 0);
    assert_int_equal(store_app_create(st, gone), 0);
    struct store_package pk = {.app_guid = app->guid, .path = "/pk/o", .bytes = 7};
    uuid_generate_v4(pk.guid);
    assert_int_equal(store_package_add(other, &pk), 0);
    struct store_app *changed = NULL;
    assert_int_equal(store_app_get(other, app->guid, &changed), 0);
    free(changed->package_guid);
    changed->package_guid = xstrdup(pk.guid);
    assert_int_equal(store_app_update(other, changed), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct artifact_log al = {0};
    struct done_log *log = &al.log;
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(log, 0)),
                     0);
    assert_int_equal(store_package_get_async(st, pk.guid, note_package, done_tag(log, 8)), 0);
    assert_int_equal(store_package_get_async(st, "no-such-package", note_package, done_tag(log, 9)),
                     0);
    assert_int_equal(store_app_get_fresh_async(st, app->guid, note_app, done_tag(log, 12)), 0);
    if (hold) {
        assert_int_equal(store_async_queued(st), 4);
        assert_int_equal(log->n, 0);
    }
    assert_int_equal(store_app_delete_async(st, gone->guid, note_done, done_tag(log, 1)), 0);
    assert_int_equal(store_app_get_fresh_async(st, gone->guid, note_app, done_tag(log, 13)), 0);
    if (hold) { /* answered without the server */
        assert_int_equal(log->n, 1);
        assert_int_equal(log->order[0], 13);
        assert_int_equal(log->rc[0], -ENOENT);
        hold_release(hold);
    }
    reap_until(st, log, 6);
    int seen = 0;
    for (int i = 0; i < 6; i++) {
        int tag = log->order[i];
        seen |= 1 << (tag % 16);
        assert_int_equal(log->rc[i], tag == 9 || tag == 13 ? -ENOENT : 0);
    }
    assert_int_equal(seen, (1 << 0) | (1 << 1) | (1 << 8) | (1 << 9) | (1 << 12) | (1 << 13));
    assert_int_equal(al.pkg[0]->bytes, 7);
    assert_string_equal(al.pkg[0]->path, "/pk/o");
    assert_null(al.pkg[1]);
    assert_string_equal(al.app[0]->package_guid, pk.guid);
    assert_null(al.app[1]);
    store_package_free(al.pkg[0]);
    store_app_free(al.app[0]);
    /* an app with an update queued is answered with it, before the call returns */
    struct store_app *mine = NULL;
    assert_int_equal(store_app_get(st, app->guid, &mine), 0);
    hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":2}", NULL, NULL), 0);
    mine->memory_mb = 333;
    assert_int_equal(store_app_update_async(st, mine, NULL, NULL), 0);
    memset(&al, 0, sizeof al);
    assert_int_equal(store_app_get_fresh_async(st, app->guid, note_app, done_tag(log, 12)), 0);
    assert_int_equal(log->n, 1);
    assert_int_equal(al.app[0]->memory_mb, 333);
    assert_int_equal(al.app[0]->version, mine->version);
    store_app_free(al.app[0]);
    if (hold)
        hold_release(hold);
    store_async_drain(st);
    store_app_free(mine);
    store_app_free(changed);
    store_app_free(app);
    store_app_free(gone);
    store_close(other);
    store_close(st);
    remove_db(path);
}

/* Past store_queue_max queued writes (a server that stopped answering: here a locked row), a
 * write or a queued read is refused at once with -EBUSY and its callback is never called,
 * the synchronous ones too (they would wait behind the queue); the message says why and how
 * many wait. Once the queue moves, writes are taken again. On SQLite nothing is ever queued,
 * and nothing is refused. */
static void test_writes_past_the_queue_bound_are_refused_at_once(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    store_queue_max = 3;
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct done_log log = {0};
    for (int i = 0; i < 3; i++)
        assert_int_equal(store_doc_put_async(st, "k", "a", "{}", note_done, done_tag(&log, i)), 0);
    int busy = hold ? -EBUSY : 0;
    assert_int_equal(store_doc_put_async(st, "k", "b", "{}", note_done, done_tag(&log, 3)), busy);
    struct store_package pk = {.app_guid = app->guid, .path = "/pk/1"};
    uuid_generate_v4(pk.guid);
    assert_int_equal(store_package_add_async(st, &pk, note_done, done_tag(&log, 4)), busy);
    struct store_droplet dr = {.app_guid = app->guid, .path = "/dr/1"};
    uuid_generate_v4(dr.guid);
    assert_int_equal(store_droplet_add(st, &dr), busy); /* at once, not behind the queue */
    assert_int_equal(store_package_get_async(st, "p", NULL, NULL), busy);
    if (hold) {
        assert_int_equal(store_async_queued(st), 3);
        char msg[256];
        store_busy_message(st, msg, sizeof msg);
        assert_non_null(strstr(msg, "the database is not answering; 3 writes wait"));
        assert_int_equal(log.n, 0);
        char *json = NULL; /* refused: never seen */
        assert_int_equal(store_doc_get(st, "k", "b", &json), -ENOENT);
        struct store_package *got = NULL;
        assert_int_equal(store_package_get(st, pk.guid, &got), -ENOENT);
        hold_release(hold);
        reap_until(st, &log, 3);
        assert_int_equal(store_package_add_async(st, &pk, note_done, done_tag(&log, 4)), 0);
        reap_until(st, &log, 4);
        assert_int_equal(log.rc[3], 0);
    } else {
        assert_int_equal(log.n, 5);
    }
    store_queue_max = STORE_QUEUE_MAX_DEFAULT;
    store_close(st);
    store_app_free(app);
    remove_db(path);
}

/* Reads of routes and tasks between queued writes show each one made as it is queued (the
 * routes and tasks as the queue leaves them are kept and each write made over them once): an
 * add, an update, a delete, an add of a host taken (not shown: the server refuses it), a
 * task's put and delete; once made, the same, and so does another store. */
static void test_route_and_task_reads_follow_each_queued_write(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    struct store_app *shop = sample_app("shop"), *cart = sample_app("cart");
    assert_int_equal(store_app_create(st, shop), 0);
    assert_int_equal(store_app_create(st, cart), 0);
    struct store_route r = route_of("a.localhost", shop->guid);
    assert_int_equal(store_route_add(st, &r), 0);
    struct store_task t1 = task_of(shop->guid, 1), t2 = task_of(shop->guid, 2);
    assert_int_equal(store_task_put(st, &t1), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    char text[512];
    routes_text(st, NULL, shop, cart, text, sizeof text);
    assert_string_equal(text, "a.localhost:shop:round-robin:0");
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct done_log log = {0};
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(&log, 0)),
                     0);
    r = route_of("b.localhost", cart->guid);
    assert_int_equal(store_route_add_async(st, &r, note_done, done_tag(&log, 1)), 0);
    routes_text(st, NULL, shop, cart, text, sizeof text);
    assert_string_equal(text, "a.localhost:shop:round-robin:0,b.localhost:cart:round-robin:0");
    assert_int_equal(store_route_update_async(st, "a.localhost", "", "least-connection", NULL, -1,
                                              note_done, done_tag(&log, 2)),
                     0);
    routes_text(st, shop->guid, shop, cart, text, sizeof text);
    assert_string_equal(text, "a.localhost:shop:least-connection:0");
    r = route_of("b.localhost", shop->guid); /* taken by cart: refused */
    assert_int_equal(store_route_add_async(st, &r, note_done, done_tag(&log, 3)), 0);
    routes_text(st, NULL, shop, cart, text, sizeof text);
    assert_string_equal(text, "a.localhost:shop:least-connection:0,b.localhost:cart:round-robin:0");
    tasks_text(st, shop, text, sizeof text);
    assert_string_equal(text, "shop-1:PENDING");
    assert_int_equal(store_task_put_async(st, &t2, note_done, done_tag(&log, 4)), 0);
    tasks_text(st, shop, text, sizeof text);
    assert_string_equal(text, "shop-1:PENDING,shop-2:PENDING");
    assert_int_equal(store_route_delete_async(st, "b.localhost", "", note_done, done_tag(&log, 5)),
                     0);
    assert_int_equal(store_task_delete_async(st, t1.guid, note_done, done_tag(&log, 6)), 0);
    for (int pass = 0; pass < 3; pass++) {
        routes_text(st, NULL, shop, cart, text, sizeof text);
        assert_string_equal(text, "a.localhost:shop:least-connection:0");
        routes_text(st, cart->guid, shop, cart, text, sizeof text);
        assert_string_equal(text, "");
        tasks_text(st, shop, text, sizeof text);
        assert_string_equal(text, "shop-2:PENDING");
        if (pass == 0) {
            if (hold)
                hold_release(hold);
            reap_until(st, &log, 7);
            for (int i = 0; i < 7; i++) {
                assert_int_equal(log.order[i], i);
                assert_int_equal(log.rc[i], i == 3 ? -EEXIST : 0);
            }
        } else if (pass == 1) {
            store_close(st);
            st = open_ok(path);
        }
    }
    store_close(st);
    store_app_free(shop);
    store_app_free(cart);
    remove_db(path);
}

/* ---- domains, certificates, mappings, audit off the caller's thread ------------------------- */

static bool strv_has(char **v, const char *s)
{
    for (size_t i = 0; v && v[i]; i++)
        if (!strcmp(v[i], s))
            return true;
    return false;
}

static void note_audit(void *ctx, int rc, struct store_audit_event *list, size_t n)
{
    struct read_log *r = ctx;
    note_done(done_tag(r->log, r->tag), rc);
    r->events = list;
    r->n_events = n;
}

/* The certificates' chains (GET /v1/domains) are read through the writer once, then answered
 * from a copy at once (here with the table away): this store's own certificate writes change
 * the copy as they are queued, another writer's are news that has the chains read again. */
static void test_the_certificates_chains_are_answered_from_a_copy_once_read(void **state)
{
    (void)state;
    char *path = temp_pg_db();
    if (!path)
        return;
    struct store *st = open_ok(path), *other = open_ok(path);
    assert_int_equal(store_domain_add(st, "a.test", NULL), 0);
    assert_int_equal(store_domain_add(st, "b.test", NULL), 0);
    assert_int_equal(store_domain_add(st, "c.test", NULL), 0);
    assert_int_equal(store_domain_cert_set(st, "a.test", "CHAIN-A", "KEY-A"), 0);
    struct done_log log = {0};
    struct read_log chains = {.log = &log, .tag = 0};
    assert_int_equal(store_domain_cert_chains_async(st, note_chains, &chains), 0);
    reap_until(st, &log, 1); /* queued: the first read */
    assert_true(strv_has(chains.domains, "a.test"));
    strv_free(chains.domains);
    strv_free(chains.chains);
    /* this store's own writes: in the copy as queued */
    assert_int_equal(store_domain_cert_set(st, "b.test", "CHAIN-B", "KEY-B"), 0);
    assert_int_equal(store_domain_cert_delete(st, "a.test"), 0);
    raw_sql(path, "ALTER TABLE domain_certs RENAME TO domain_certs_away");
    chains = (struct read_log){.log = &log, .tag = 1};
    assert_int_equal(store_domain_cert_chains_async(st, note_chains, &chains), 0);
    assert_int_equal(log.n, 2); /* answered at once, from the copy */
    assert_int_equal(log.rc[1], 0);
    assert_non_null(chains.domains);
    assert_string_equal(chains.domains[0], "b.test");
    assert_string_equal(chains.chains[0], "CHAIN-B");
    assert_null(chains.domains[1]);
    assert_false(strv_has(chains.chains, "KEY-B"));
    strv_free(chains.domains);
    strv_free(chains.chains);
    raw_sql(path, "ALTER TABLE domain_certs_away RENAME TO domain_certs");
    /* another writer's: news, and the chains read again through the writer */
    uint64_t seen = store_change_count(st);
    assert_int_equal(store_domain_cert_set(other, "c.test", "CHAIN-C", "KEY-C"), 0);
    for (int i = 0; i < 1000 && store_change_count(st) == seen; i++)
        usleep(10 * 1000);
    chains = (struct read_log){.log = &log, .tag = 2};
    assert_int_equal(store_domain_cert_chains_async(st, note_chains, &chains), 0);
    reap_until(st, &log, 3);
    assert_true(strv_has(chains.domains, "b.test"));
    assert_true(strv_has(chains.domains, "c.test"));
    assert_true(strv_has(chains.chains, "CHAIN-C"));
    strv_free(chains.domains);
    strv_free(chains.chains);
    store_close(other);
    store_close(st);
    remove_db(path);
}

/* What store_domain_cert_pairs_async gave, copied during its call (the lists are the store's). */
struct pairs_log {
    struct done_log *log;
    int tag;
    bool got_null;  /* the lists were NULL */
    char text[512]; /* "name=chain/key;" for each */
};

static void note_pairs(void *ctx, int rc, char **names, char **chains, char **keys)
{
    struct pairs_log *r = ctx;
    note_done(done_tag(r->log, r->tag), rc);
    r->got_null = !names && !chains && !keys;
    size_t at = 0;
    for (size_t i = 0; names && names[i]; i++)
        at += (size_t)snprintf(r->text + at, sizeof r->text - at, "%s=%s/%s;", names[i], chains[i],
                               keys[i]);
}

/* The routers on NATS get each domain's chain and key through a read the writer makes in turn
 * with the writes (the bus does not wait for it): it sees the certificate writes queued
 * before it and not those after, lists only domains with a certificate, in name order, and on
 * PostgreSQL always asks the server (no key is kept in memory). */
static void test_the_certificates_and_keys_are_read_in_turn_with_the_writes(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    assert_int_equal(store_domain_add(st, "a.test", NULL), 0);
    assert_int_equal(store_domain_add(st, "b.test", NULL), 0);
    assert_int_equal(store_domain_add(st, "c.test", NULL), 0);
    assert_int_equal(store_domain_cert_set(st, "a.test", "CHAIN-A", "KEY-A"), 0);
    struct done_log log = {0};
    struct pairs_log pairs = {.log = &log, .tag = 1};
    assert_int_equal(
        store_domain_cert_set_async(st, "c.test", "CHAIN-C", "KEY-C", note_done, done_tag(&log, 0)),
        0);
    assert_int_equal(store_domain_cert_pairs_async(st, note_pairs, &pairs), 0);
    assert_int_equal(store_domain_cert_delete_async(st, "a.test", note_done, done_tag(&log, 2)), 0);
    reap_until(st, &log, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(log.order[i], i);
        assert_int_equal(log.rc[i], 0);
    }
    assert_string_equal(pairs.text, "a.test=CHAIN-A/KEY-A;c.test=CHAIN-C/KEY-C;");
    pairs = (struct pairs_log){.log = &log, .tag = 3};
    assert_int_equal(store_domain_cert_pairs_async(st, note_pairs, &pairs), 0);
    reap_until(st, &log, 4);
    assert_string_equal(pairs.text, "c.test=CHAIN-C/KEY-C;");
    if (on_pg(path)) { /* read from the server each time: with the table away, a failure */
        raw_sql(path, "ALTER TABLE domain_certs RENAME TO domain_certs_away");
        pairs = (struct pairs_log){.log = &log, .tag = 4};
        assert_int_equal(store_domain_cert_pairs_async(st, note_pairs, &pairs), 0);
        reap_until(st, &log, 5);
        assert_true(log.rc[4] < 0);
        assert_true(pairs.got_null);
        raw_sql(path, "ALTER TABLE domain_certs_away RENAME TO domain_certs");
    }
    store_close(st);
    remove_db(path);
}

/* Domain and certificate writes, a document's create and update and the two queued reads
 * (the certificates' chains, the audit list) are made in the order asked for, in turn with the
 * document writes; until they are made (a row held on PostgreSQL), store_domain_list shows the
 * queued domains, store_domain_cert_get and _list the queued certificates, store_doc_get the
 * queued create and update, and the reads see the writes queued before them. */
static void
test_queued_domain_and_certificate_writes_land_in_order_and_are_read_at_once(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    assert_int_equal(store_domain_add(st, "gone.test", NULL), 0);
    assert_int_equal(store_domain_add(st, "kept.test", NULL), 0);
    assert_int_equal(store_domain_cert_set(st, "kept.test", "OLD", "OLDKEY"), 0);
    assert_int_equal(store_doc_put(st, "k", "held", "{}"), 0);
    assert_int_equal(store_doc_put(st, "k", "upd", "{\"v\":0}"), 0);
    char *json = doc_body(st, "k", "fresh"); /* known absent */
    assert_null(json);
    /* written by another store: this one's copy does not know it */
    struct store *other = open_ok(path);
    assert_int_equal(store_doc_put(other, "k", "elsewhere", "{\"v\":0}"), 0);
    store_close(other);
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "held") : NULL;
    struct done_log log = {0};
    struct store_audit_event ev = {
        .at = 1, .type = "audit.domain.create", .actor = "admin", .target = "q.test"};
    struct read_log chains = {.log = &log, .tag = 8}, audit = {.log = &log, .tag = 10};
    assert_int_equal(
        store_doc_put_async(st, "k", "held", "{\"v\":1}", note_done, done_tag(&log, 0)), 0);
    assert_int_equal(store_domain_add_async(st, "q.test", NULL, note_done, done_tag(&log, 1)), 0);
    assert_int_equal(
        store_domain_add_async(st, "org.test", "org-guid", note_done, done_tag(&log, 2)), 0);
    assert_int_equal(
        store_domain_cert_set_async(st, "q.test", "CHAIN", "KEY", note_done, done_tag(&log, 3)), 0);
    assert_int_equal(store_domain_cert_delete_async(st, "kept.test", note_done, done_tag(&log, 4)),
                     0);
    assert_int_equal(store_domain_delete_async(st, "gone.test", note_done, done_tag(&log, 5)), 0);
    assert_int_equal(
        store_doc_update_async(st, "k", "upd", "{\"v\":1}", note_done, done_tag(&log, 6)), 0);
    assert_int_equal(
        store_doc_create_async(st, "k", "fresh", "{\"new\":1}", note_done, done_tag(&log, 7)), 0);
    assert_int_equal(
        store_doc_update_async(st, "k", "elsewhere", "{\"v\":1}", note_done, done_tag(&log, 11)),
        0);
    assert_int_equal(store_domain_cert_chains_async(st, note_chains, &chains), 0);
    assert_int_equal(store_audit_add_async(st, &ev, note_done, done_tag(&log, 9)), 0);
    assert_int_equal(store_audit_list_async(st, NULL, NULL, "q.test", 0, 10, note_audit, &audit),
                     0);
    if (hold) /* all of them wait behind the held row */
        assert_int_equal(store_async_queued(st), 12);

    char **names = NULL, **orgs = NULL;
    bool *shared = NULL;
    assert_int_equal(store_domain_list(st, &names, &shared, &orgs), 0);
    assert_true(strv_has(names, "q.test"));
    assert_true(strv_has(names, "kept.test"));
    assert_false(strv_has(names, "gone.test"));
    for (size_t i = 0; names[i]; i++) {
        if (i > 0) /* in byte order, as read */
            assert_true(strcmp(names[i - 1], names[i]) < 0);
        if (!strcmp(names[i], "org.test")) {
            assert_false(shared[i]);
            assert_string_equal(orgs[i], "org-guid");
        }
        if (!strcmp(names[i], "q.test"))
            assert_true(shared[i]);
    }
    assert_true(strv_has(names, "org.test"));
    strv_free(names);
    strv_free(orgs);
    free(shared);
    char *cert = NULL, *key = NULL;
    assert_int_equal(store_domain_cert_get(st, "q.test", &cert, &key), 0);
    assert_string_equal(cert, "CHAIN");
    assert_string_equal(key, "KEY");
    free(cert);
    free(key);
    assert_int_equal(store_domain_cert_get(st, "kept.test", &cert, NULL), -ENOENT);
    if (!hold)
        goto landed; /* SQLite: made during the calls */
    assert_int_equal(store_domain_cert_list(st, &names), 0);
    assert_true(strv_has(names, "q.test"));
    assert_false(strv_has(names, "kept.test"));
    strv_free(names);
    json = doc_body(st, "k", "upd");
    assert_string_equal(json, "{\"v\":1}");
    free(json);
    json = doc_body(st, "k", "fresh");
    assert_string_equal(json, "{\"new\":1}");
    free(json);
    json = doc_body(st, "k", "elsewhere"); /* the server's row, the queued update over it */
    assert_string_equal(json, "{\"v\":1}");
    free(json);
    assert_int_equal(log.n, 0);
    hold_release(hold);
landed:
    reap_until(st, &log, 12);
    int order[] = {0, 1, 2, 3, 4, 5, 6, 7, 11, 8, 9, 10}; /* in the order queued */
    for (int i = 0; i < 12; i++) {
        assert_int_equal(log.order[i], order[i]);
        assert_int_equal(log.rc[i], 0);
    }
    /* the reads saw the writes queued before them */
    assert_non_null(chains.domains);
    assert_string_equal(chains.domains[0], "q.test");
    assert_string_equal(chains.chains[0], "CHAIN");
    assert_null(chains.domains[1]);
    assert_null(chains.chains[1]);
    assert_int_equal(audit.n_events, 1);
    assert_string_equal(audit.events[0].type, "audit.domain.create");
    strv_free(chains.domains);
    strv_free(chains.chains);
    store_audit_list_free(audit.events, audit.n_events);
    store_close(st);
    /* what another store reads from the database afterwards */
    st = open_ok(path);
    assert_int_equal(store_domain_list(st, &names, NULL, NULL), 0);
    assert_true(strv_has(names, "q.test") && strv_has(names, "org.test"));
    assert_false(strv_has(names, "gone.test"));
    strv_free(names);
    assert_int_equal(store_domain_cert_get(st, "q.test", &cert, NULL), 0);
    assert_string_equal(cert, "CHAIN");
    free(cert);
    assert_int_equal(store_domain_cert_get(st, "kept.test", &cert, NULL), -ENOENT);
    json = doc_body(st, "k", "upd");
    assert_string_equal(json, "{\"v\":1}");
    free(json);
    json = doc_body(st, "k", "fresh");
    assert_string_equal(json, "{\"new\":1}");
    free(json);
    json = doc_body(st, "k", "elsewhere");
    assert_string_equal(json, "{\"v\":1}");
    free(json);
    store_close(st);
    remove_db(path);
}

/* Writes the server refuses are reported to their callbacks with what the synchronous calls
 * return, and not shown by the reads once refused: a domain that exists, a certificate of a
 * domain there is not, a domain still referred to by its certificate, an update of a document
 * that is gone, a create of one that is there. */
static void
test_a_refused_queued_domain_or_document_write_is_reported_through_its_callback(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    assert_int_equal(store_domain_add(st, "taken.test", "org-a"), 0);
    assert_int_equal(store_domain_cert_set(st, "taken.test", "C", "K"), 0);
    assert_int_equal(store_doc_put(st, "k", "there", "{\"v\":0}"), 0);
    struct done_log log = {0};
    assert_int_equal(store_domain_add_async(st, "taken.test", NULL, note_done, done_tag(&log, 0)),
                     0);
    assert_int_equal(
        store_domain_cert_set_async(st, "nowhere.test", "C", "K", note_done, done_tag(&log, 1)), 0);
    assert_int_equal(store_domain_delete_async(st, "taken.test", note_done, done_tag(&log, 2)), 0);
    assert_int_equal(
        store_domain_cert_delete_async(st, "nowhere.test", note_done, done_tag(&log, 3)), 0);
    assert_int_equal(store_doc_update_async(st, "k", "absent", "{}", note_done, done_tag(&log, 4)),
                     0);
    assert_int_equal(
        store_doc_create_async(st, "k", "there", "{\"v\":9}", note_done, done_tag(&log, 5)), 0);
    assert_int_equal(store_domain_delete_async(st, "nowhere.test", note_done, done_tag(&log, 6)),
                     0);
    reap_until(st, &log, 7);
    int want[] = {-EEXIST, -EEXIST, -EEXIST, -ENOENT, -ENOENT, -EEXIST, -ENOENT};
    for (int i = 0; i < 7; i++) {
        assert_int_equal(log.order[i], i);
        assert_int_equal(log.rc[i], want[i]);
    }
    char **names = NULL, **orgs = NULL;
    assert_int_equal(store_domain_list(st, &names, NULL, &orgs), 0);
    bool found = false;
    for (size_t i = 0; names[i]; i++)
        if (!strcmp(names[i], "taken.test")) {
            found = true;
            assert_string_equal(orgs[i], "org-a"); /* the first one's, not the refused add's */
        }
    assert_true(found);
    assert_false(strv_has(names, "nowhere.test"));
    strv_free(names);
    strv_free(orgs);
    char *cert = NULL;
    assert_int_equal(store_domain_cert_get(st, "nowhere.test", &cert, NULL), -ENOENT);
    assert_int_equal(store_domain_cert_get(st, "taken.test", &cert, NULL), 0);
    assert_string_equal(cert, "C");
    free(cert);
    assert_null(doc_body(st, "k", "absent"));
    char *json = doc_body(st, "k", "there");
    assert_string_equal(json, "{\"v\":0}");
    free(json);
    store_close(st);
    remove_db(path);
}

/* A droplet's queued deletion is made in turn with the writes queued around it (a revision's
 * document, an app's settings) and reported in order, one of nothing with -ENOENT; from the
 * call on (on PostgreSQL while the writer is held by a document row another transaction
 * locks, and another store still finds the droplet) store_droplet_get no longer finds it. */
static void test_queued_droplet_deletes_land_in_order_and_are_read_at_once(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path), *other = open_ok(path);
    struct store_app *app = sample_app("shop");
    assert_int_equal(store_app_create(st, app), 0);
    struct store_droplet d1 = {.app_guid = app->guid, .path = "/dr/1", .digest = "sha256:ab"};
    struct store_droplet d2 = {.app_guid = app->guid, .path = "/dr/2", .digest = "sha256:cd"};
    uuid_generate_v4(d1.guid);
    uuid_generate_v4(d2.guid);
    assert_int_equal(store_droplet_add(st, &d1), 0);
    assert_int_equal(store_droplet_add(st, &d2), 0);
    struct store_droplet *d = NULL;
    assert_int_equal(store_droplet_get(st, d1.guid, &d), 0); /* in the copy */
    store_droplet_free(d);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    struct done_log log = {0};
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(&log, 0)),
                     0);
    assert_int_equal(store_droplet_delete_async(st, d1.guid, note_done, done_tag(&log, 1)), 0);
    char nobody[37];
    uuid_generate_v4(nobody);
    assert_int_equal(store_droplet_delete_async(st, nobody, note_done, done_tag(&log, 2)), 0);
    free(app->env[0].value);
    app->env[0].value = strdup("changed");
    assert_int_equal(store_app_update_async(st, app, note_done, done_tag(&log, 3)), 0);
    assert_int_equal(store_droplet_delete_async(st, d2.guid, note_done, done_tag(&log, 4)), 0);
    if (hold) {
        assert_int_equal(store_async_queued(st), 5); /* all wait behind the held row */
        d = NULL;
        assert_int_equal(store_droplet_get(other, d1.guid, &d), 0); /* not made yet */
        store_droplet_free(d);
    }
    for (int pass = 0; pass < 3; pass++) {
        d = NULL;
        assert_int_equal(store_droplet_get(st, d1.guid, &d), -ENOENT);
        assert_int_equal(store_droplet_get(st, d2.guid, &d), -ENOENT);
        assert_null(d);
        struct store_app *read = NULL;
        assert_int_equal(store_app_get(st, app->guid, &read), 0);
        assert_string_equal(read->env[0].value, "changed");
        store_app_free(read);
        if (pass == 0) {
            if (hold)
                hold_release(hold);
            reap_until(st, &log, 5);
            int want[5] = {0, 0, -ENOENT, 0, 0};
            for (int i = 0; i < 5; i++) {
                assert_int_equal(log.order[i], i);
                assert_int_equal(log.rc[i], want[i]);
            }
            assert_int_equal(store_async_queued(st), 0);
        } else if (pass == 1) { /* as the database holds it */
            store_close(st);
            st = open_ok(path);
        }
    }
    d = NULL;
    assert_int_equal(store_droplet_get(other, d2.guid, &d), -ENOENT);
    store_app_free(app);
    store_close(other);
    store_close(st);
    remove_db(path);
}

/* What a store_app_find_or_read callback heard: calls, its rc and the app's guid, and how
 * many of the writes of log had been reported before it. */
struct found_log {
    struct done_log *log;
    int calls, rc, after;
    char guid[37];
};

static void note_found(void *ctx, int rc, struct store_app *app)
{
    struct found_log *l = ctx;
    l->calls++;
    l->rc = rc;
    l->after = l->log->n;
    snprintf(l->guid, sizeof l->guid, "%s", app ? app->guid : "");
    assert_true(rc == 0 ? app != NULL : app == NULL);
    store_app_free(app);
}

/* An app the copy holds is found at once; one it does not (on PostgreSQL: written by another
 * store whose news never comes) is read through the writer, in turn after the write queued
 * before it (held behind a document row another transaction locks: nothing is reported
 * meanwhile), and reported through the callback: found, then in the copy; absent; another
 * space's app by guid not found. One queued for deletion is not found, at once. On SQLite
 * every answer comes at once. */
static void test_an_app_missing_from_the_copy_is_read_off_the_callers_thread(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path), *other = open_ok(path);
    struct store_app *shop = sample_app("shop"), *cart = sample_app("cart");
    struct store_app *away = sample_app("away"), *got = NULL;
    snprintf(away->space_guid, sizeof away->space_guid, "%s",
             "0b0b0b0b-0000-4000-8000-000000000001");
    assert_int_equal(store_app_create(st, shop), 0);
    assert_int_equal(store_doc_put(st, "k", "a", "{}"), 0);
    assert_int_equal(store_app_get(st, "shop", &got), 0); /* the copy loaded */
    store_app_free(got);
    if (on_pg(path))
        raw_sql(path, "ALTER TABLE apps DISABLE TRIGGER USER");
    assert_int_equal(store_app_create(other, cart), 0);
    assert_int_equal(store_app_create(other, away), 0);

    struct done_log log = {0};
    struct found_log hit = {.log = &log};
    got = NULL;
    assert_int_equal(
        store_app_find_or_read(st, STORE_DEFAULT_SPACE_GUID, "shop", &got, note_found, &hit), 0);
    assert_string_equal(got->guid, shop->guid);
    store_app_free(got);
    assert_int_equal(hit.calls, 0);

    PGconn *hold = on_pg(path) ? hold_row(path, "k", "a") : NULL;
    assert_int_equal(store_doc_put_async(st, "k", "a", "{\"v\":1}", note_done, done_tag(&log, 0)),
                     0);
    struct found_log lc = {.log = &log}, ln = {.log = &log}, la = {.log = &log};
    got = NULL;
    int rc_c = store_app_find_or_read(st, STORE_DEFAULT_SPACE_GUID, "cart", &got, note_found, &lc);
    struct store_app *none = NULL, *other_space = NULL;
    int rc_n = store_app_find_or_read(st, STORE_DEFAULT_SPACE_GUID, "none", &none, note_found, &ln);
    int rc_a = store_app_find_or_read(st, STORE_DEFAULT_SPACE_GUID, away->guid, &other_space,
                                      note_found, &la);
    assert_null(none);
    assert_null(other_space);
    /* an app queued for deletion is not found, and nothing is read for it */
    assert_int_equal(store_app_delete_async(st, shop->guid, note_done, done_tag(&log, 1)), 0);
    struct found_log ld = {.log = &log};
    assert_int_equal(
        store_app_find_or_read(st, STORE_DEFAULT_SPACE_GUID, "shop", &none, note_found, &ld),
        -ENOENT);
    assert_int_equal(
        store_app_find_or_read(st, STORE_DEFAULT_SPACE_GUID, shop->guid, &none, note_found, &ld),
        -ENOENT);
    assert_null(none);
    if (hold) {
        assert_int_equal(rc_c, -EINPROGRESS);
        assert_int_equal(rc_n, -EINPROGRESS);
        assert_int_equal(rc_a, -EINPROGRESS);
        assert_null(got);
        assert_int_equal(store_async_queued(st), 5); /* behind the held write */
        usleep(100 * 1000);
        store_async_reap(st);
        assert_int_equal(lc.calls + ln.calls + la.calls + log.n, 0);
        hold_release(hold);
        for (int i = 0; i < 2000 && log.n < 2; i++) {
            store_async_reap(st);
            if (log.n < 2)
                usleep(10 * 1000);
        }
        assert_int_equal(log.n, 2);
        assert_int_equal(log.rc[0], 0);
        assert_int_equal(log.rc[1], 0);
        assert_int_equal(lc.calls, 1);
        assert_int_equal(lc.rc, 0);
        assert_string_equal(lc.guid, cart->guid);
        assert_int_equal(lc.after, 1); /* after the write queued before it */
        assert_int_equal(ln.calls, 1);
        assert_int_equal(ln.rc, -ENOENT);
        assert_int_equal(la.calls, 1);
        assert_int_equal(la.rc, -ENOENT);
        /* the copy holds what was read: found at once now */
        got = NULL;
        assert_int_equal(
            store_app_find_or_read(st, STORE_DEFAULT_SPACE_GUID, "cart", &got, note_found, &lc), 0);
        assert_string_equal(got->guid, cart->guid);
        store_app_free(got);
        assert_int_equal(lc.calls, 1);
        raw_sql(path, "ALTER TABLE apps ENABLE TRIGGER USER");
    } else {
        assert_int_equal(rc_c, 0);
        assert_string_equal(got->guid, cart->guid);
        store_app_free(got);
        assert_int_equal(rc_n, -ENOENT);
        assert_int_equal(rc_a, -ENOENT);
        assert_int_equal(lc.calls + ln.calls + la.calls, 0);
        assert_int_equal(log.n, 2);
    }
    assert_int_equal(ld.calls, 0);
    store_app_free(shop);
    store_app_free(cart);
    store_app_free(away);
    store_close(other);
    store_close(st);
    remove_db(path);
}

#define STORE_TESTS                                                                                \
    cmocka_unit_test(test_migrates_an_empty_store),                                                \
        cmocka_unit_test(test_domain_certificates_round_trip),                                     \
        cmocka_unit_test(test_a_domain_is_deleted_once_nothing_refers_to_it),                      \
        cmocka_unit_test(test_migrates_an_older_store_keeping_its_data),                           \
        cmocka_unit_test(test_migration_moves_a_functions_max_into_its_policy),                    \
        cmocka_unit_test(test_migrates_a_store_with_https_only_routes_to_protocols),               \
        cmocka_unit_test(test_refuses_a_newer_store),                                              \
        cmocka_unit_test(test_apps_round_trip_with_processes_and_env),                             \
        cmocka_unit_test(test_app_sidecars_round_trip_per_process_type),                           \
        cmocka_unit_test(test_app_ssh_setting_round_trips),                                        \
        cmocka_unit_test(test_app_reads_fail_when_a_child_query_fails),                            \
        cmocka_unit_test(test_route_and_domain_lists_fail_when_their_query_fails),                 \
        cmocka_unit_test(test_routes_are_unique_and_go_with_their_app),                            \
        cmocka_unit_test(test_artifacts_and_pruning), cmocka_unit_test(test_documents),            \
        cmocka_unit_test(test_doc_create_claims_an_id_once),                                       \
        cmocka_unit_test(test_racing_creates_of_one_id_have_one_winner),                           \
        cmocka_unit_test(test_tasks_round_trip_and_go_with_their_app),                             \
        cmocka_unit_test(test_hostile_names_are_only_data),                                        \
        cmocka_unit_test(test_an_update_of_a_version_read_before_another_write_fails),             \
        cmocka_unit_test(test_racing_writers_lose_no_update),                                      \
        cmocka_unit_test(test_the_change_feed_tells_of_another_writers_changes),                   \
        cmocka_unit_test(                                                                          \
            test_documents_are_updated_only_while_they_exist_and_others_changes_are_news),         \
        cmocka_unit_test(test_document_news_is_per_kind),                                          \
        cmocka_unit_test(test_doc_replace_lands_only_over_what_was_read),                          \
        cmocka_unit_test(test_a_lost_feed_turns_the_cache_off),                                    \
        cmocka_unit_test(test_news_of_an_app_is_read_through_the_writer_and_counts_once_reaped),   \
        cmocka_unit_test(                                                                          \
            test_news_of_the_routes_is_read_through_the_writer_and_counts_once_reaped),            \
        cmocka_unit_test(test_droplets_deleted_elsewhere_are_gone_without_the_server),             \
        cmocka_unit_test(test_connections_the_server_ended_are_opened_again),                      \
        cmocka_unit_test(test_a_read_the_server_does_not_answer_fails_within_its_bound),           \
        cmocka_unit_test(test_a_lost_feed_is_reopened_and_the_cache_reloaded),                     \
        cmocka_unit_test(test_app_get_finds_each_of_many_apps_by_guid_and_by_name),                \
        cmocka_unit_test(test_a_feed_that_cannot_be_reopened_is_tried_again_later),                \
        cmocka_unit_test(test_reads_come_from_the_cache_until_a_change_is_announced),              \
        cmocka_unit_test(test_queued_writes_land_in_order_and_are_read_at_once),                   \
        cmocka_unit_test(test_queued_creates_replaces_and_fresh_reads_land_in_order),              \
        cmocka_unit_test(test_a_queued_create_or_replace_another_store_beat_is_refused),           \
        cmocka_unit_test(test_a_synchronous_write_never_overtakes_a_queued_one),                   \
        cmocka_unit_test(test_queued_app_writes_land_in_order_and_are_read_at_once),               \
        cmocka_unit_test(test_a_refused_queued_app_write_is_reported_through_its_callback),        \
        cmocka_unit_test(test_a_queued_modify_is_made_again_after_another_writer),                 \
        cmocka_unit_test(test_a_failed_queued_write_is_reported_and_the_next_ones_land),           \
        cmocka_unit_test(test_close_makes_the_queued_writes),                                      \
        cmocka_unit_test(test_close_with_a_stuck_queue_is_bounded_and_reports_the_lost_writes),    \
        cmocka_unit_test(test_documents_come_from_the_cache_until_another_writer_changes_one),     \
        cmocka_unit_test(test_news_of_a_kind_held_whole_is_read_again_off_the_callers_thread),     \
        cmocka_unit_test(test_a_held_kind_is_read_again_not_dropped_on_news_of_every_kind),        \
        cmocka_unit_test(test_the_certificates_chains_are_answered_from_a_copy_once_read),         \
        cmocka_unit_test(test_the_certificates_and_keys_are_read_in_turn_with_the_writes),         \
        cmocka_unit_test(test_fresh_reads_see_a_write_the_feed_has_not_told_of),                   \
        cmocka_unit_test(test_droplets_come_from_the_cache_until_one_is_deleted),                  \
        cmocka_unit_test(                                                                          \
            test_queued_route_task_and_app_delete_writes_land_in_order_and_are_read_at_once),      \
        cmocka_unit_test(                                                                          \
            test_a_refused_queued_route_or_task_write_is_reported_through_its_callback),           \
        cmocka_unit_test(test_domains_come_from_the_cache_until_a_change_is_announced),            \
        cmocka_unit_test(test_tasks_come_from_the_cache_until_another_writer_changes_one),         \
        cmocka_unit_test(                                                                          \
            test_queued_package_droplet_and_prune_writes_land_in_order_and_are_read_at_once),      \
        cmocka_unit_test(test_queued_reads_of_packages_and_apps_answer_in_turn),                   \
        cmocka_unit_test(test_writes_past_the_queue_bound_are_refused_at_once),                    \
        cmocka_unit_test(test_route_and_task_reads_follow_each_queued_write),                      \
        cmocka_unit_test(                                                                          \
            test_queued_domain_and_certificate_writes_land_in_order_and_are_read_at_once),         \
        cmocka_unit_test(                                                                          \
            test_a_refused_queued_domain_or_document_write_is_reported_through_its_callback),      \
        cmocka_unit_test(test_queued_droplet_deletes_land_in_order_and_are_read_at_once),          \
        cmocka_unit_test(test_an_app_missing_from_the_copy_is_read_off_the_callers_thread)

int main(void)
{
    const struct CMUnitTest sqlite_tests[] = {
        STORE_TESTS,
        cmocka_unit_test(test_refuses_a_foreign_backend),
        cmocka_unit_test(test_unreachable_postgres_names_no_password),
    };
    const struct CMUnitTest pg_tests[] = {STORE_TESTS};
    int failed = cmocka_run_group_tests_name("store on SQLite", sqlite_tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("store on PostgreSQL", pg_tests, pg_throwaway_start,
                                          pg_throwaway_stop);
    return failed;
}
