/* Unit tests for store/: migrations from an empty and from an older schema, apps with their
 * processes and env, routes, domains, artifacts and documents. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"
#include "store/store.h"

extern const char *const store_sqlite_migrations[];
extern const size_t store_sqlite_migrations_count;

static char *temp_db(void)
{
    char dir[] = "/tmp/skiff-test-store-XXXXXX";
    assert_non_null(mkdtemp(dir));
    return xasprintf("%s/skiff.db", dir);
}

static void remove_db(char *path)
{
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
    assert_int_equal(store_schema_version(st), (int)store_sqlite_migrations_count);
    char **domains = NULL;
    bool *shared = NULL;
    assert_int_equal(store_domain_list(st, &domains, &shared, NULL), 0);
    assert_string_equal(domains[0], "localhost");
    assert_true(shared[0]);
    assert_null(domains[1]);
    store_strv_free(domains);
    free(shared);
    store_close(st);
    /* opening again applies nothing and keeps the version */
    st = open_ok(path);
    assert_int_equal(store_schema_version(st), (int)store_sqlite_migrations_count);
    store_close(st);
    remove_db(path);
}

static void test_migrates_an_older_store_keeping_its_data(void **state)
{
    (void)state;
    char *path = temp_db();
    /* a store made by a skiffd that knew only migration 1, with an app in it */
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "CREATE TABLE schema_version (version INTEGER NOT NULL,"
                                  " applied_at INTEGER NOT NULL);"
                                  "INSERT INTO schema_version VALUES (1, 0);",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, store_sqlite_migrations[0], NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "INSERT INTO apps (guid, name, state, memory_mb, disk_mb, "
                                  "timeout, created_at, updated_at) VALUES ('g-old', 'old', "
                                  "'STOPPED', 64, 128, 60, 1, 1);"
                                  "INSERT INTO routes VALUES ('r-old', 'old.localhost', '', "
                                  "'g-old', 'localhost');"
                                  "INSERT INTO apps (guid, name, state, kind, memory_mb, "
                                  "disk_mb, timeout, created_at, updated_at) VALUES ('g-fn', "
                                  "'fn', 'STARTED', 'function', 64, 128, 60, 1, 1);"
                                  "INSERT INTO processes VALUES ('g-old', 'web', NULL, 2, 0);"
                                  "INSERT INTO processes VALUES ('g-old', 'resize', NULL, 0, 0);"
                                  "INSERT INTO processes VALUES ('g-fn', 'web', NULL, 0, 0);",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);

    struct store *st = open_ok(path);
    assert_int_equal(store_schema_version(st), (int)store_sqlite_migrations_count);
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
    store_route_list_free(routes, n);
    /* the newer tables work */
    assert_int_equal(store_doc_put(st, "mapping", "m1", "{\"a\":1}"), 0);
    store_close(st);
    remove_db(path);
}

static void test_refuses_a_newer_store(void **state)
{
    (void)state;
    char *path = temp_db();
    struct store *st = open_ok(path);
    store_close(st);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(
        sqlite3_exec(db, "INSERT INTO schema_version VALUES (999, 0);", NULL, NULL, NULL),
        SQLITE_OK);
    sqlite3_close(db);
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

/* Renames a table behind the store's back, through a connection of its own. */
static void rename_table(const char *path, const char *from, const char *to)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *sql = xasprintf("ALTER TABLE %s RENAME TO %s", from, to);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    free(sql);
    sqlite3_close(db);
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

        rename_table(path, children[c], "gone");
        assert_int_equal(store_app_get(st, "shop", &got), -EIO);
        assert_null(got);
        assert_int_equal(store_app_list(st, &list, &n), -EIO);
        assert_null(list);
        assert_int_equal(n, 7);

        /* and the store reads again once the table is back */
        rename_table(path, "gone", children[c]);
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

    rename_table(path, "routes", "gone");
    assert_int_equal(store_route_list(st, app->guid, &routes, &n), -EIO);
    assert_int_equal(store_route_list(st, NULL, &routes, &n), -EIO);
    assert_null(routes);
    assert_int_equal(n, 0);
    rename_table(path, "gone", "routes");

    rename_table(path, "domains", "gone");
    char **domains = NULL;
    assert_int_equal(store_domain_list(st, &domains, NULL, NULL), -EIO);
    assert_null(domains);
    rename_table(path, "gone", "domains");
    assert_int_equal(store_domain_list(st, &domains, NULL, NULL), 0);
    assert_string_equal(domains[0], "localhost");
    store_strv_free(domains);
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
    store_route_list_free(routes, n);
    assert_int_equal(store_route_set_balance(st, "shop.localhost", "/api", "least-connection"), 0);
    assert_int_equal(store_route_set_balance(st, "shop.localhost", "/none", "round-robin"),
                     -ENOENT);
    r.path = "/lc";
    r.balance = "least-connection";
    uuid_generate_v4(r.guid);
    assert_int_equal(store_route_add(st, &r), 0);
    assert_int_equal(store_route_list(st, app->guid, &routes, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(routes[0].balance, "round-robin");
    assert_string_equal(routes[1].path, "/api");
    assert_string_equal(routes[1].balance, "least-connection");
    assert_string_equal(routes[2].balance, "least-connection");
    store_route_list_free(routes, n);
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
    store_strv_free(names);
    store_strv_free(orgs);
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
    store_strv_free(old);
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
    store_strv_free(old);
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

static void test_refuses_a_foreign_backend(void **state)
{
    (void)state;
    char err[256] = "";
    struct store *st = NULL;
    assert_true(store_open("postgres://localhost/skiff", err, sizeof err, &st) < 0);
    assert_non_null(strstr(err, "sqlite"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrates_an_empty_store),
        cmocka_unit_test(test_migrates_an_older_store_keeping_its_data),
        cmocka_unit_test(test_refuses_a_newer_store),
        cmocka_unit_test(test_apps_round_trip_with_processes_and_env),
        cmocka_unit_test(test_app_reads_fail_when_a_child_query_fails),
        cmocka_unit_test(test_route_and_domain_lists_fail_when_their_query_fails),
        cmocka_unit_test(test_routes_are_unique_and_go_with_their_app),
        cmocka_unit_test(test_artifacts_and_pruning),
        cmocka_unit_test(test_documents),
        cmocka_unit_test(test_refuses_a_foreign_backend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
