/* Unit tests for cli/manifest: the manifest.yml subset, and every kind of error naming its line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/manifest.h"
#include "common/buf.h"
#include "common/util.h"

static struct manifest *parse_ok(const char *text)
{
    struct manifest *m = NULL;
    char *err = NULL;
    int rc = manifest_parse(text, strlen(text), "manifest.yml", "/apps", NULL, &m, &err);
    if (rc != 0)
        fail_msg("expected a valid manifest, got: %s", err ? err : "(no message)");
    assert_non_null(m);
    assert_null(err);
    return m;
}

/* Parses text that must fail with `code`; returns the message (caller frees). */
static char *parse_err(const char *text, int code)
{
    struct manifest *m = NULL;
    char *err = NULL;
    int rc = manifest_parse(text, strlen(text), "manifest.yml", "/apps", NULL, &m, &err);
    assert_int_equal(rc, code);
    assert_null(m);
    assert_non_null(err);
    return err;
}

static void expect_error(const char *text, int code, const char *message)
{
    char *err = parse_err(text, code);
    if (strcmp(err, message) != 0)
        fail_msg("expected error\n  %s\ngot\n  %s", message, err);
    free(err);
}

static void test_full_application(void **state)
{
    (void)state;
    struct manifest *m = parse_ok("---\n"
                                  "version: 1\n"
                                  "applications:\n"
                                  "- name: shop\n"
                                  "  path: ./shop\n"
                                  "  instances: 3\n"
                                  "  memory: 1G\n"
                                  "  disk_quota: 512M\n"
                                  "  command: python app.py\n"
                                  "  buildpacks: [python, /opt/bp/extra]\n"
                                  "  env:\n"
                                  "    GREETING: hi\n"
                                  "    COUNT: 3\n"
                                  "    EMPTY:\n"
                                  "  routes:\n"
                                  "  - route: shop.localhost\n"
                                  "  - route: api.localhost/v1\n"
                                  "  health-check-type: http\n"
                                  "  health-check-http-endpoint: /health\n"
                                  "  timeout: 30\n"
                                  "  services: [db, {name: cache}]\n"
                                  "  processes:\n"
                                  "  - type: worker\n"
                                  "    command: python worker.py\n"
                                  "    instances: 2\n"
                                  "    memory: 128M\n");
    assert_int_equal(m->app_count, 1);
    const struct manifest_app *a = &m->apps[0];
    assert_string_equal(a->name, "shop");
    assert_string_equal(a->path, "/apps/./shop");
    assert_int_equal(a->instances, 3);
    assert_int_equal(a->memory_mb, 1024);
    assert_int_equal(a->disk_mb, 512);
    assert_string_equal(a->command, "python app.py");
    assert_int_equal(a->buildpack_count, 2);
    assert_string_equal(a->buildpacks[0], "python");
    assert_string_equal(a->buildpacks[1], "/opt/bp/extra");
    assert_int_equal(a->env_count, 3);
    assert_string_equal(a->env[0].key, "GREETING");
    assert_string_equal(a->env[0].value, "hi");
    assert_string_equal(a->env[1].value, "3");
    assert_string_equal(a->env[2].value, "");
    assert_int_equal(a->route_count, 2);
    assert_string_equal(a->routes[1].route, "api.localhost/v1");
    assert_false(a->no_route);
    assert_string_equal(a->health_check_type, "http");
    assert_string_equal(a->health_check_http_endpoint, "/health");
    assert_int_equal(a->timeout, 30);
    assert_int_equal(a->service_count, 2);
    assert_string_equal(a->services[0].name, "db");
    assert_string_equal(a->services[1].name, "cache");
    assert_int_equal(a->process_count, 1);
    assert_string_equal(a->processes[0].type, "worker");
    assert_int_equal(a->processes[0].instances, 2);
    assert_int_equal(a->processes[0].memory_mb, 128);
    assert_int_equal(a->line, 4);
    manifest_free(m);
}

static void test_unset_values_and_several_apps(void **state)
{
    (void)state;
    struct manifest *m = parse_ok("applications:\n"
                                  "- name: a\n"
                                  "- name: b\n"
                                  "  path: /abs/b\n"
                                  "  no-route: true\n"
                                  "  buildpack: staticfile\n");
    assert_int_equal(m->app_count, 2);
    assert_null(m->apps[0].path);
    assert_int_equal(m->apps[0].instances, -1);
    assert_int_equal(m->apps[0].memory_mb, -1);
    assert_false(m->apps[0].no_route_set);
    assert_string_equal(m->apps[1].path, "/abs/b");
    assert_true(m->apps[1].no_route);
    assert_int_equal(m->apps[1].buildpack_count, 1);
    assert_string_equal(m->apps[1].buildpacks[0], "staticfile");
    assert_string_equal(m->dir, "/apps");
    manifest_free(m);
}

static void test_functions(void **state)
{
    (void)state;
    struct manifest *m = parse_ok("applications:\n"
                                  "- name: shop\n"
                                  "  functions:\n"
                                  "  - name: resize\n"
                                  "    handler: resize.py:handle\n"
                                  "    concurrency: 4\n"
                                  "    idle-grace: 30s\n"
                                  "    events:\n"
                                  "    - topic: uploads\n"
                                  "      filter: {type: image.created, subject: photos/*}\n"
                                  "functions:\n"
                                  "- name: nightly\n"
                                  "  path: fn\n"
                                  "  handler: job.sh:main\n"
                                  "  min-instances: 0\n"
                                  "  max-instances: 5\n"
                                  "  memory: 64M\n"
                                  "  events:\n"
                                  "  - schedule: \"@every 30s\"\n"
                                  "  - schedule: 0 3 * * *\n");
    assert_int_equal(m->app_count, 2);
    const struct manifest_app *shop = &m->apps[0];
    assert_int_equal(shop->function_count, 1);
    const struct manifest_function *f = &shop->functions[0];
    assert_string_equal(f->name, "resize");
    assert_string_equal(f->handler, "resize.py:handle");
    assert_int_equal(f->concurrency, 4);
    assert_string_equal(f->idle_grace, "30s");
    assert_int_equal(f->min_instances, -1);
    assert_int_equal(f->event_count, 1);
    assert_string_equal(f->events[0].topic, "uploads");
    assert_null(f->events[0].schedule);
    assert_int_equal(f->events[0].filter_count, 2);
    assert_string_equal(f->events[0].filters[1].key, "subject");
    assert_string_equal(f->events[0].filters[1].value, "photos/*");

    const struct manifest_app *nightly = &m->apps[1];
    assert_string_equal(nightly->name, "nightly");
    assert_string_equal(nightly->path, "/apps/fn");
    assert_int_equal(nightly->function_count, 1);
    assert_true(nightly->is_function);
    assert_false(shop->is_function);
    f = &nightly->functions[0];
    assert_int_equal(f->max_instances, 5);
    assert_int_equal(f->min_instances, 0);
    assert_int_equal(f->memory_mb, 64);
    assert_int_equal(f->event_count, 2);
    assert_string_equal(f->events[0].schedule, "@every 30s");
    assert_string_equal(f->events[1].schedule, "0 3 * * *");
    manifest_free(m);
}

static void test_unknown_key_names_key_line_and_suggestion(void **state)
{
    (void)state;
    expect_error("applications:\n"
                 "- name: shop\n"
                 "  memory: 256M\n"
                 "  env:\n"
                 "    A: b\n"
                 "\n"
                 "  instance: 2\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 7: unknown key \"instance\" (did you mean \"instances\"?)");
    expect_error("applications:\n- name: a\n  health_check_type: http\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: unknown key \"health_check_type\" (did you mean "
                 "\"health-check-type\"?)");
    expect_error("applications:\n- name: a\n  processes:\n  - type: web\n    comand: x\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 5: unknown key \"comand\" (did you mean \"command\"?)");
    expect_error("aplications:\n- name: a\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 1: unknown key \"aplications\" (did you mean "
                 "\"applications\"?)");
    /* nothing close: the known keys are listed instead */
    char *err = parse_err("applications:\n- name: a\n  zzzzzz: 1\n", MANIFEST_ERR_SCHEMA);
    assert_non_null(strstr(err, "manifest.yml line 3: unknown key \"zzzzzz\" in an application"));
    assert_non_null(strstr(err, "known keys: name, path, instances"));
    free(err);
}

static void test_wrong_types_name_key_and_line(void **state)
{
    (void)state;
    expect_error("applications:\n- name: a\n  instances: three\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"instances\" must be a whole number of at least 0, not "
                 "\"three\"");
    expect_error("applications:\n- name: a\n  instances: -1\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"instances\" must be a whole number of at least 0, not "
                 "\"-1\"");
    expect_error("applications:\n- name: a\n  memory: lots\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"memory\" must be a size like 256M or 1G, not \"lots\"");
    expect_error("applications:\n- name: a\n  disk_quota: [1G]\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"disk_quota\" must be a size like 256M or 1G, not a "
                 "list");
    expect_error("applications:\n- name: a\n  no-route: maybe\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"no-route\" must be true or false, not \"maybe\"");
    expect_error("applications:\n- name: a\n  command: {x: 1}\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"command\" must be a single value, not a map of keys");
    expect_error("applications:\n- name: a\n  env: [A, B]\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"env\" must be a map of NAME: value, not a list");
    expect_error("applications:\n- name: a\n  env:\n    A: [1]\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 4: the value of A in \"env\" must be a single value, not a "
                 "list");
    expect_error("applications:\n- name: a\n  health-check-type: tcp\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"health-check-type\" must be one of port, http, process, "
                 "none, not \"tcp\"");
    expect_error("applications:\n- name: a\n  routes: a.localhost\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"routes\" must be a list, not a single value");
    expect_error(
        "applications:\n- name: a\n  routes:\n  - host: a.localhost\n", MANIFEST_ERR_SCHEMA,
        "manifest.yml line 4: unknown key \"host\" in a route (known keys: route, protocol, "
        "https_only, options)");
    expect_error("applications:\n  name: a\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 2: \"applications\" must be a list (each entry starting "
                 "with \"- \"), not a map of keys");
    expect_error("applications:\n- just-a-name\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 2: an application must be a map of keys, not a single value");
    expect_error("applications:\n- name: a\n  timeout: 0\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"timeout\" must be a whole number of at least 1, not "
                 "\"0\"");
}

static void test_structural_errors(void **state)
{
    (void)state;
    expect_error("applications:\n- memory: 1G\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 2: an application needs a \"name\"");
    expect_error("applications:\n- name: a\n  memory: 1G\n  memory: 2G\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 4: the key \"memory\" is given twice");
    expect_error("applications:\n- name: a\n- name: a\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: the name \"a\" is used twice");
    expect_error("", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 1: the manifest is empty: it needs \"applications:\"");
    expect_error("applications: []\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 1: the manifest lists no applications");
    expect_error("applications:\n- name: a\n  no-route: true\n  routes:\n  - route: x.localhost\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 2: the app a has both \"routes\" and \"no-route: true\"");
    expect_error("version: 2\napplications:\n- name: a\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 1: \"version\" must be 1, not 2");
    expect_error("applications:\n- name: a\n  processes:\n  - command: x\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 4: a process needs a \"type\" (like web or worker)");
    expect_error("functions:\n- name: f\n  handler: f.py\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 2: the function f needs a \"handler\" like file.py:handle "
                 "(or a \"docker\" image that serves it)");
    expect_error("functions:\n- name: f\n  handler: f.py:h\n  docker: {image: x/y}\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 2: the function f has both a \"handler\" and a \"docker\" "
                 "image: an image serves the function itself, keep one of them");
    expect_error("applications:\n- name: a\n  functions:\n  - name: f\n    docker: {image: x}\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 5: \"docker\" belongs to a top-level function (an image is "
                 "an app of its own), not to a function inside an app");
    expect_error("functions:\n- name: f\n  handler: f.py:h\n  events:\n  - topic: t\n"
                 "    schedule: \"@every 1s\"\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 5: an event needs either a \"topic\" or a \"schedule\", not "
                 "both");
    expect_error("functions:\n- name: f\n  handler: f.py:h\n  events:\n  - filter: {type: x}\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 5: an event needs either a \"topic\" or a \"schedule\"");
    expect_error("functions:\n- name: f\n  handler: f.py:h\n  min-instances: 3\n"
                 "  max-instances: 2\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 2: the function f has min-instances above max-instances");
    expect_error("applications:\n- name: a\n  functions:\n  - name: f\n    handler: f.py:h\n"
                 "    path: x\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 6: \"path\" belongs to the app, not to a function in it");
    expect_error("applications:\n- name: a\n  sidecars:\n  - name: s\n    process_types: [web]\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 4: sidecar s needs a \"command\" (what runs beside the "
                 "process)");
    expect_error("applications:\n- name: a\n  sidecars:\n  - name: s\n    command: ./s\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 4: sidecar s needs \"process_types\": the process types it "
                 "runs beside, e.g. [web]");
    expect_error("applications:\n- name: a\n  sidecars:\n  - command: ./s\n"
                 "    process_types: [web]\n",
                 MANIFEST_ERR_SCHEMA, "manifest.yml line 4: a sidecar needs a \"name\"");
}

static void test_not_yaml(void **state)
{
    (void)state;
    char *err = parse_err("applications:\n- name: a\n  env: {A: b\n", MANIFEST_ERR_SYNTAX);
    assert_true(str_has_prefix(err, "manifest.yml line "));
    assert_non_null(strstr(err, "not valid YAML"));
    free(err);
    err = parse_err("applications:\n\t- name: a\n", MANIFEST_ERR_SYNTAX);
    assert_true(str_has_prefix(err, "manifest.yml line 2: not valid YAML"));
    free(err);
}

static void test_megabytes(void **state)
{
    (void)state;
    long mb = 0;
    assert_int_equal(manifest_parse_megabytes("256M", &mb), 0);
    assert_int_equal(mb, 256);
    assert_int_equal(manifest_parse_megabytes("256MB", &mb), 0);
    assert_int_equal(mb, 256);
    assert_int_equal(manifest_parse_megabytes("1G", &mb), 0);
    assert_int_equal(mb, 1024);
    assert_int_equal(manifest_parse_megabytes("2gb", &mb), 0);
    assert_int_equal(mb, 2048);
    assert_int_equal(manifest_parse_megabytes("512", &mb), 0);
    assert_int_equal(mb, 512);
    assert_int_equal(manifest_parse_megabytes("1T", &mb), 0);
    assert_int_equal(mb, 1024 * 1024);
    assert_int_equal(manifest_parse_megabytes("0M", &mb), -1);
    assert_int_equal(manifest_parse_megabytes("-1G", &mb), -1);
    assert_int_equal(manifest_parse_megabytes("1K", &mb), -1);
    assert_int_equal(manifest_parse_megabytes("G", &mb), -1);
    assert_int_equal(manifest_parse_megabytes("", &mb), -1);
    assert_int_equal(manifest_parse_megabytes("1.5G", &mb), -1);
    assert_int_equal(manifest_parse_megabytes("99999999999999999999M", &mb), -1);
    assert_int_equal(manifest_parse_megabytes(NULL, &mb), -1);
}

static void test_load_resolves_paths_and_reports_missing_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-manifest-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *path = xasprintf("%s/manifest.yml", dir);
    const char *text = "applications:\n- name: web\n  path: site\n";
    assert_int_equal(file_write_atomic(path, text, strlen(text), 0644), 0);
    struct manifest *m = NULL;
    char *err = NULL;
    assert_int_equal(manifest_load(path, NULL, &m, &err), 0);
    char *want = xasprintf("%s/site", dir);
    assert_string_equal(m->apps[0].path, want);
    assert_string_equal(m->dir, dir);
    assert_string_equal(m->file, path);
    free(want);
    manifest_free(m);

    /* messages name the file as the user gave it */
    const char *bad = "applications:\n- name: web\n  instancs: 1\n";
    assert_int_equal(file_write_atomic(path, bad, strlen(bad), 0644), 0);
    assert_int_equal(manifest_load(path, NULL, &m, &err), MANIFEST_ERR_SCHEMA);
    char *msg =
        xasprintf("%s line 3: unknown key \"instancs\" (did you mean \"instances\"?)", path);
    assert_string_equal(err, msg);
    free(msg);
    free(err);

    unlink(path);
    assert_int_equal(manifest_load(path, NULL, &m, &err), MANIFEST_ERR_IO);
    assert_null(m);
    assert_non_null(strstr(err, "cannot read the manifest"));
    assert_non_null(strstr(err, "No such file"));
    free(err);
    rmdir(dir);
    free(path);
}

static void test_hostile_input_does_not_crash(void **state)
{
    (void)state;
    static const char *const inputs[] = {
        "&a [*a]\n",
        "applications: &x\n- name: a\n  env: *x\n",
        "? [a, b]\n: c\n",
        "applications:\n- {name: a, 1: 2}\n",
        "applications:\n- name: a\n  memory: 99999999999G\n",
        "applications:\n- name: a\n  instances: 99999999999999999999\n",
        "!!binary aGVsbG8=\n",
        "applications:\n- name: a\n---\napplications:\n- name: b\n",
        "\xff\xfe\x00",
        "applications:\n- name: " /* a very long key and value */
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
        "  xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa: 1\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(inputs); i++) {
        struct manifest *m = NULL;
        char *err = NULL;
        int rc = manifest_parse(inputs[i], strlen(inputs[i]), "m.yml", ".", NULL, &m, &err);
        if (rc == 0) {
            manifest_free(m);
        } else {
            assert_null(m);
            assert_non_null(err);
            assert_true(str_has_prefix(err, "m.yml line "));
            free(err);
        }
    }
}

/* Parses with variables; NULL err_out means it must succeed. */
static struct manifest *parse_vars(const char *text, const struct manifest_vars *vars,
                                   char **err_out)
{
    struct manifest *m = NULL;
    char *err = NULL;
    int rc = manifest_parse(text, strlen(text), "manifest.yml", "/apps", vars, &m, &err);
    if (err_out) {
        assert_int_not_equal(rc, 0);
        *err_out = err;
        return NULL;
    }
    if (rc != 0)
        fail_msg("expected a valid manifest, got: %s", err ? err : "(no message)");
    return m;
}

/* Whether one of the app's warnings is about `key`, and how many are. */
static size_t warnings_about(const struct manifest_app *a, const char *key)
{
    char *needle = xasprintf(": %s: \"%s\" has no effect here: ", a->name, key);
    size_t n = 0;
    for (size_t i = 0; i < a->warning_count; i++)
        n += strstr(a->warnings[i], needle) != NULL;
    free(needle);
    return n;
}

/* Every key of Cloud Foundry's app manifest at least once, as its documentation describes
 * them: read into the app, or accepted with one warning per key, never refused. */
static void test_cloud_foundry_kitchen_sink(void **state)
{
    (void)state;
    struct manifest *m =
        parse_ok("---\n"
                 "version: 1\n"
                 "applications:\n"
                 "- name: storefront\n"
                 "  path: ./store\n"
                 "  buildpacks:\n"
                 "  - python_buildpack\n"
                 "  command: gunicorn app:app\n"
                 "  disk_quota: 1G\n"
                 "  env:\n"
                 "    MODE: production\n"
                 "  health-check-type: http\n"
                 "  health-check-http-endpoint: /healthz\n"
                 "  health-check-invocation-timeout: 5\n"
                 "  health-check-interval: 10\n"
                 "  readiness-health-check-type: http\n"
                 "  readiness-health-check-http-endpoint: /ready\n"
                 "  readiness-health-check-invocation-timeout: 3\n"
                 "  readiness-health-check-interval: 7\n"
                 "  instances: 2\n"
                 "  log-rate-limit-per-second: 16K\n"
                 "  memory: 512M\n"
                 "  metadata:\n"
                 "    labels:\n"
                 "      tier: web\n"
                 "    annotations:\n"
                 "      contact: team@example.com\n"
                 "  default-route: true\n"
                 "  routes:\n"
                 "  - route: store.localhost\n"
                 "    protocol: http1\n"
                 "    options:\n"
                 "      loadbalancing: least-connection\n"
                 "  - route: store.localhost/api\n"
                 "    protocol: http2\n"
                 "    https_only: true\n"
                 "    options:\n"
                 "      loadbalancing: round-robin\n"
                 "  - route: store-tcp.localhost\n"
                 "    protocol: tcp\n"
                 "    options: {loadbalancing: hash, hash_header: X-User, hash_balance: 1.5}\n"
                 "  services:\n"
                 "  - orders-db\n"
                 "  - name: cache\n"
                 "    binding_name: page-cache\n"
                 "    parameters:\n"
                 "      ttl: 60\n"
                 "  sidecars:\n"
                 "  - name: metrics\n"
                 "    process_types: [web]\n"
                 "    command: ./exporter\n"
                 "    memory: 64M\n"
                 "  stack: cflinuxfs4\n"
                 "  timeout: 90\n"
                 "  lifecycle: buildpack\n"
                 "  processes:\n"
                 "  - type: web\n"
                 "    command: gunicorn app:app\n"
                 "    disk_quota: 1G\n"
                 "    health-check-type: http\n"
                 "    health-check-http-endpoint: /healthz\n"
                 "    health-check-invocation-timeout: 5\n"
                 "    health-check-interval: 10\n"
                 "    readiness-health-check-type: port\n"
                 "    readiness-health-check-http-endpoint: /ready\n"
                 "    readiness-health-check-invocation-timeout: 3\n"
                 "    readiness-health-check-interval: 7\n"
                 "    instances: 2\n"
                 "    memory: 512M\n"
                 "    log-rate-limit-per-second: 1M\n"
                 "    timeout: 60\n"
                 "  - type: worker\n"
                 "    command: python worker.py\n"
                 "    instances: 1\n"
                 "    memory: 256M\n"
                 "- name: batch\n"
                 "  no-route: true\n"
                 "  buildpack: binary_buildpack\n"
                 "  disk-quota: 2G\n"
                 "  lifecycle: cnb\n"
                 "  cnb-credentials:\n"
                 "    registry.example.com:\n"
                 "      username: u\n"
                 "      password: p\n"
                 "- name: canary\n"
                 "  random-route: true\n");
    assert_int_equal(m->app_count, 3);
    const struct manifest_app *a = &m->apps[0];
    assert_string_equal(a->name, "storefront");
    assert_string_equal(a->path, "/apps/./store");
    assert_int_equal(a->buildpack_count, 1);
    assert_string_equal(a->command, "gunicorn app:app");
    assert_int_equal(a->disk_mb, 1024);
    assert_int_equal(a->env_count, 1);
    assert_string_equal(a->health_check_type, "http");
    assert_string_equal(a->health_check_http_endpoint, "/healthz");
    assert_int_equal(a->instances, 2);
    assert_int_equal(a->memory_mb, 512);
    assert_int_equal(a->timeout, 90);
    assert_string_equal(a->stack, "cflinuxfs4");
    assert_false(a->random_route);
    assert_false(a->no_route);
    assert_int_equal(a->route_count, 3);
    assert_string_equal(a->routes[0].route, "store.localhost");
    assert_string_equal(a->routes[0].balance, "least-connection");
    assert_string_equal(a->routes[1].route, "store.localhost/api");
    assert_string_equal(a->routes[1].balance, "round-robin");
    assert_null(a->routes[2].balance); /* hash: the router has none, the route keeps its own */
    assert_string_equal(a->routes[0].protocol, "http1");
    assert_string_equal(a->routes[1].protocol, "http2"); /* h2c to the instances */
    assert_null(a->routes[2].protocol); /* tcp: no TCP routes, mapped as http1 with a warning */
    assert_true(a->routes[1].https_only && a->routes[1].https_only_set); /* beside http2 */
    assert_false(a->routes[0].https_only_set); /* not given: the route keeps its own */
    assert_int_equal(a->service_count, 2);
    assert_string_equal(a->services[0].name, "orders-db");
    assert_null(a->services[0].binding_name);
    assert_null(a->services[0].parameters);
    assert_string_equal(a->services[1].name, "cache");
    assert_string_equal(a->services[1].binding_name, "page-cache");
    assert_string_equal(a->services[1].parameters, "{\"ttl\":60}");
    assert_int_equal(a->process_count, 2);
    assert_int_equal(a->processes[0].disk_mb, 1024);
    assert_int_equal(a->processes[0].timeout, 60);
    assert_string_equal(a->processes[1].command, "python worker.py");

    /* one warning per key, whether at app level, in a process or in several routes */
    static const char *const no_effect[] = {"protocol", "loadbalancing: hash", "hash_header",
                                            "hash_balance"};
    for (size_t i = 0; i < ARRAY_SIZE(no_effect); i++)
        if (warnings_about(a, no_effect[i]) != 1)
            fail_msg("expected one warning about %s", no_effect[i]);
    assert_int_equal(a->warning_count, ARRAY_SIZE(no_effect));
    /* metadata: kept, for the push to set on the app */
    assert_string_equal(a->metadata_json,
                        "{\"labels\":{\"tier\":\"web\"},\"annotations\":{\"contact\":"
                        "\"team@example.com\"}}");
    /* the health-check timing, readiness check and log rate limit: read, app level (its web
     * process) and per process */
    assert_int_equal(a->checks.health_timeout, 5);
    assert_int_equal(a->checks.health_interval, 10);
    assert_string_equal(a->checks.readiness_type, "http");
    assert_string_equal(a->checks.readiness_endpoint, "/ready");
    assert_int_equal(a->checks.readiness_timeout, 3);
    assert_int_equal(a->checks.readiness_interval, 7);
    assert_int_equal(a->checks.log_rate, 16 * 1024);
    assert_string_equal(a->processes[0].checks.readiness_type, "port");
    assert_int_equal(a->processes[0].checks.log_rate, 1024 * 1024);
    assert_int_equal(a->processes[1].checks.log_rate, MANIFEST_LOG_RATE_UNSET);
    assert_int_equal(a->processes[1].checks.health_interval, -1);
    assert_null(a->processes[1].checks.readiness_type);
    assert_int_equal(a->sidecar_count, 1);
    assert_string_equal(a->sidecars[0].name, "metrics");
    assert_int_equal(a->sidecars[0].process_type_count, 1);
    assert_string_equal(a->sidecars[0].process_types[0], "web");
    assert_string_equal(a->sidecars[0].command, "./exporter");
    assert_int_equal(a->sidecars[0].memory_mb, 64);

    const struct manifest_app *b = &m->apps[1];
    assert_true(b->no_route);
    assert_int_equal(b->disk_mb, 2048);
    assert_string_equal(b->buildpacks[0], "binary_buildpack");
    assert_int_equal(b->warning_count, 2);
    assert_int_equal(warnings_about(b, "lifecycle: cnb"), 1);
    assert_int_equal(warnings_about(b, "cnb-credentials"), 1);

    const struct manifest_app *c = &m->apps[2];
    assert_true(c->random_route);
    assert_int_equal(c->route_count, 0);
    assert_int_equal(c->warning_count, 0);
    manifest_free(m);
}

/* log-rate-limit-per-second and `skiff scale -l`: CF's units, -1 for unlimited; anything
 * else refused, in the manifest with its line. */
static void test_log_rate_limits_and_bad_check_values(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        long long bytes;
    } good[] = {{"-1", -1},        {"0", 0},         {"512", 512},    {"512B", 512},
                {"1K", 1024},      {"16k", 16384},   {"16KB", 16384}, {"1M", 1 << 20},
                {"2G", 2LL << 30}, {"1T", 1LL << 40}};
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        long long v = 0;
        if (manifest_parse_log_rate(good[i].text, &v) != 0 || v != good[i].bytes)
            fail_msg("%s: expected %lld, got %lld", good[i].text, good[i].bytes, v);
    }
    static const char *const bad[] = {"",         "-2",   "-1K", "K",    "16Q",
                                      "1.5M",     "16 K", "abc", "0x10", "99999999999999999999",
                                      "1048577T", NULL};
    for (size_t i = 0; bad[i]; i++) {
        long long v = 7;
        if (manifest_parse_log_rate(bad[i], &v) == 0)
            fail_msg("\"%s\" should be refused, got %lld", bad[i], v);
    }
    assert_int_equal(manifest_parse_log_rate(NULL, &(long long){0}), -1);

    char *err = parse_err("applications:\n- name: a\n  log-rate-limit-per-second: 16Q\n",
                          MANIFEST_ERR_SCHEMA);
    assert_string_equal(err, "manifest.yml line 3: \"log-rate-limit-per-second\" must be bytes a "
                             "second like 16K, 1M or 512B, or -1 for unlimited, not \"16Q\"");
    free(err);
    err = parse_err("applications:\n- name: a\n  processes:\n  - type: web\n"
                    "    health-check-interval: -5\n",
                    MANIFEST_ERR_SCHEMA);
    assert_string_equal(err, "manifest.yml line 5: \"health-check-interval\" must be a whole "
                             "number of at least 1, not \"-5\"");
    free(err);
    err = parse_err("applications:\n- name: a\n  readiness-health-check-type: tcp\n",
                    MANIFEST_ERR_SCHEMA);
    assert_string_equal(err, "manifest.yml line 3: \"readiness-health-check-type\" must be one "
                             "of http, port, process, not \"tcp\"");
    free(err);
    err = parse_err("applications:\n- name: a\n  readiness-health-check-http-endpoint: ready\n",
                    MANIFEST_ERR_SCHEMA);
    assert_string_equal(err, "manifest.yml line 3: \"readiness-health-check-http-endpoint\" must "
                             "be a path starting with /, not \"ready\"");
    free(err);
}

static void test_cloud_foundry_keys_that_are_refused_or_conflict(void **state)
{
    (void)state;
    /* Cloud Foundry's docker block: the image and its registry's user */
    struct manifest *img = parse_ok("applications:\n- name: a\n  lifecycle: docker\n  docker:\n"
                                    "    image: registry.example:5000/team/web:1.4\n"
                                    "    username: bob\n");
    assert_string_equal(img->apps[0].docker_image, "registry.example:5000/team/web:1.4");
    assert_string_equal(img->apps[0].docker_username, "bob");
    manifest_free(img);
    char *err =
        parse_err("applications:\n- name: a\n  docker:\n    username: bob\n", MANIFEST_ERR_SCHEMA);
    assert_true(str_has_prefix(err, "manifest.yml line 4: \"docker\" needs \"image\""));
    free(err);
    /* the password is never written in a manifest: CF_DOCKER_PASSWORD */
    err = parse_err("applications:\n- name: a\n  docker:\n    image: x\n    password: p\n",
                    MANIFEST_ERR_SCHEMA);
    assert_non_null(strstr(err, "unknown key \"password\""));
    free(err);
    expect_error("applications:\n- name: a\n  random-route: true\n  no-route: true\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 2: the app a has both \"random-route: true\" and "
                 "\"no-route: true\"");
    expect_error("applications:\n- name: a\n  routes:\n  - route: a.localhost\n"
                 "    protocol: http3\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 5: \"protocol\" must be one of http1, http2, tcp, not "
                 "\"http3\"");
    expect_error("applications:\n- name: a\n  routes:\n  - route: a.localhost\n"
                 "    options: {loadbalancing: random}\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 5: \"loadbalancing\" must be one of round-robin, "
                 "least-connection, hash, not \"random\"");
    expect_error("applications:\n- name: a\n  metadata: {label: {a: b}}\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: unknown key \"label\" (did you mean \"labels\"?)");
    expect_error("applications:\n- name: a\n  default-route: sometimes\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"default-route\" must be true or false, not "
                 "\"sometimes\"");
    /* random-route with routes listed: the routes are used, and the push says so */
    struct manifest *m = parse_ok("applications:\n- name: a\n  random-route: true\n  routes:\n"
                                  "  - route: a.localhost\n");
    assert_int_equal(warnings_about(&m->apps[0], "random-route"), 1);
    manifest_free(m);
}

/* A typo is corrected only when what it means is clear: never to a key of contrary meaning. */
static void test_autoscale_keys(void **state)
{
    (void)state;
    struct manifest *m = parse_ok("applications:\n"
                                  "- name: shop\n"
                                  "  min-instances: 0\n"
                                  "  max-instances: 20\n"
                                  "  target-concurrency: 10\n"
                                  "  processes:\n"
                                  "  - type: api\n"
                                  "    max-instances: 4\n"
                                  "    target-rps: 50\n"
                                  "- name: plain\n");
    const struct manifest_app *a = &m->apps[0];
    assert_true(manifest_autoscale_set(&a->autoscale));
    assert_int_equal(a->autoscale.min_instances, 0);
    assert_int_equal(a->autoscale.max_instances, 20);
    assert_int_equal(a->autoscale.target_concurrency, 10);
    assert_int_equal(a->autoscale.target_rps, -1);
    assert_int_equal(a->processes[0].autoscale.max_instances, 4);
    assert_int_equal(a->processes[0].autoscale.target_rps, 50);
    assert_int_equal(a->processes[0].autoscale.min_instances, -1);
    assert_false(manifest_autoscale_set(&m->apps[1].autoscale));
    manifest_free(m);
    char *err = parse_err("applications:\n- name: shop\n  min-instances: 5\n  max-instances: 2\n",
                          MANIFEST_ERR_SCHEMA);
    assert_non_null(strstr(err, "min-instances above max-instances"));
    free(err);
    err = parse_err("applications:\n- name: shop\n  target-rps: 5\n  target-concurrency: 2\n",
                    MANIFEST_ERR_SCHEMA);
    assert_non_null(strstr(err, "target-concurrency and target-rps"));
    free(err);
    err = parse_err("applications:\n- name: shop\n  max-instances: 0\n", MANIFEST_ERR_SCHEMA);
    free(err);
}

static void test_misspellings_never_suggest_the_opposite(void **state)
{
    (void)state;
    static const struct {
        const char *key, *hint; /* NULL: no suggestion, the known keys are listed */
    } cases[] = {
        {"random-rout", "random-route"},
        {"randomroute", "random-route"},
        {"random_route", "random-route"},
        {"no-rout", "no-route"},
        {"noroute", "no-route"},
        {"nd-route", "no-route"},
        {"default-rout", "default-route"},
        {"defaultroute", "default-route"},
        {"ran-route", NULL},
        {"rnd-route", NULL},
        {"o-route", NULL},
        {"no-routes", "no-route"},
        {"disk-quote", "disk-quota"},
        {"readiness-health-check-typ", "readiness-health-check-type"},
        {"sidecar", "sidecars"},
        {"log-rate-limit", "log-rate-limit-per-second"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *text = xasprintf("applications:\n- name: a\n  %s: true\n", cases[i].key);
        char *err = parse_err(text, MANIFEST_ERR_SCHEMA);
        if (cases[i].hint) {
            char *want = xasprintf("manifest.yml line 3: unknown key \"%s\" (did you mean "
                                   "\"%s\"?)",
                                   cases[i].key, cases[i].hint);
            if (strcmp(err, want) != 0)
                fail_msg("%s: expected\n  %s\ngot\n  %s", cases[i].key, want, err);
            free(want);
        } else if (strstr(err, "did you mean") || !strstr(err, "known keys: ")) {
            fail_msg("%s: expected no suggestion, got\n  %s", cases[i].key, err);
        }
        free(err);
        free(text);
    }
    /* min and max instances of a function: one letter apart, still told apart */
    expect_error("functions:\n- name: f\n  handler: f.py:h\n  min-instance: 1\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 4: unknown key \"min-instance\" (did you mean "
                 "\"min-instances\"?)");
}

static void test_variables(void **state)
{
    (void)state;
    struct manifest_vars vars = {0};
    assert_int_equal(manifest_vars_set(&vars, "app=shop"), 0);
    assert_int_equal(manifest_vars_set(&vars, "n=3"), 0);
    assert_int_equal(manifest_vars_set(&vars, "env=prod"), 0);
    assert_int_equal(manifest_vars_set(&vars, "mem=1G"), 0);
    assert_int_equal(manifest_vars_set(&vars, "evil=x\n  instances: 99\n- name: injected"), 0);
    assert_int_equal(manifest_vars_set(&vars, "nested=((app))"), 0);
    assert_int_equal(manifest_vars_set(&vars, "n=4"), 0); /* a later one wins */
    assert_int_equal(manifest_vars_set(&vars, "no-equals"), -1);
    assert_int_equal(manifest_vars_set(&vars, "=value"), -1);
    assert_int_equal(manifest_vars_set(&vars, "bad name=1"), -1);
    struct manifest *m = parse_vars("applications:\n"
                                    "- name: ((app))\n"
                                    "  instances: ((n))\n"
                                    "  memory: ((mem))\n"
                                    "  routes:\n"
                                    "  - route: ((app))-((env)).localhost\n"
                                    "  env:\n"
                                    "    NOTE: ((evil))\n"
                                    "    SELF: ((nested))\n"
                                    "    KEPT: a ((literal but not a variable\n"
                                    "    ((app)): key too\n",
                                    &vars, NULL);
    assert_int_equal(m->app_count, 1);
    const struct manifest_app *a = &m->apps[0];
    assert_string_equal(a->name, "shop");
    assert_int_equal(a->instances, 4);
    assert_int_equal(a->memory_mb, 1024);
    assert_string_equal(a->routes[0].route, "shop-prod.localhost");
    /* a value is text in one scalar: it cannot add keys or apps */
    assert_string_equal(a->env[0].value, "x\n  instances: 99\n- name: injected");
    /* and it is not read again for variables */
    assert_string_equal(a->env[1].value, "((app))");
    assert_string_equal(a->env[2].value, "a ((literal but not a variable");
    assert_string_equal(a->env[3].key, "shop");
    manifest_free(m);

    /* a missing variable: named, with its line and how to give it */
    char *err = NULL;
    parse_vars("applications:\n- name: a\n  env:\n    X: pre-((missing))\n", &vars, &err);
    assert_string_equal(err, "manifest.yml line 4: no value for the variable ((missing)): give it "
                             "with --var missing=VALUE or in a --vars-file");
    free(err);
    parse_vars("applications:\n- name: ((app))\n", NULL, &err);
    assert_non_null(strstr(err, "line 2: no value for the variable ((app))"));
    free(err);
    /* the value still has to fit the key */
    assert_int_equal(manifest_vars_set(&vars, "n=many"), 0);
    parse_vars("applications:\n- name: a\n  instances: ((n))\n", &vars, &err);
    assert_string_equal(err, "manifest.yml line 3: \"instances\" must be a whole number of at "
                             "least 0, not \"many\"");
    free(err);
    manifest_vars_free(&vars);
}

static void test_vars_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-vars-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *one = xasprintf("%s/one.yml", dir), *two = xasprintf("%s/two.yml", dir);
    char *bad = xasprintf("%s/bad.yml", dir);
    const char *t1 = "app: shop\nn: 2\nempty:\nquoted: \"007\"\n";
    const char *t2 = "n: 5\n";
    const char *tb = "n: 1\nroutes: [a, b]\n";
    assert_int_equal(file_write_atomic(one, t1, strlen(t1), 0644), 0);
    assert_int_equal(file_write_atomic(two, t2, strlen(t2), 0644), 0);
    assert_int_equal(file_write_atomic(bad, tb, strlen(tb), 0644), 0);
    struct manifest_vars vars = {0};
    char *err = NULL;
    assert_int_equal(manifest_vars_load(&vars, one, &err), 0);
    assert_int_equal(manifest_vars_load(&vars, two, &err), 0);
    struct manifest *m = parse_vars("applications:\n- name: ((app))\n  instances: ((n))\n"
                                    "  env: {E: ((empty)), Q: ((quoted))}\n",
                                    &vars, NULL);
    assert_string_equal(m->apps[0].name, "shop");
    assert_int_equal(m->apps[0].instances, 5);
    assert_string_equal(m->apps[0].env[0].value, "");
    assert_string_equal(m->apps[0].env[1].value, "007");
    manifest_free(m);
    assert_int_equal(manifest_vars_set(&vars, "n=7"), 0); /* --var wins over files */
    m = parse_vars("applications:\n- name: a\n  instances: ((n))\n", &vars, NULL);
    assert_int_equal(m->apps[0].instances, 7);
    manifest_free(m);

    assert_int_equal(manifest_vars_load(&vars, bad, &err), MANIFEST_ERR_SCHEMA);
    char *want =
        xasprintf("%s line 2: the variable routes must be a single value, not a list", bad);
    assert_string_equal(err, want);
    free(want);
    free(err);
    unlink(bad);
    assert_int_equal(manifest_vars_load(&vars, bad, &err), MANIFEST_ERR_IO);
    assert_non_null(strstr(err, "cannot read the vars file"));
    free(err);
    manifest_vars_free(&vars);
    unlink(one);
    unlink(two);
    rmdir(dir);
    free(one);
    free(two);
    free(bad);
}

/* Aliases, depth and size: what a hostile manifest could use to exhaust the CLI. */
static void test_alias_bombs_depth_and_size_are_bounded(void **state)
{
    (void)state;
    /* a "billion laughs": nine levels of nine aliases. libyaml keeps each alias as a reference
     * to its node, and nothing here walks a value of no effect, so it costs its text only. */
    struct buf b = {0};
    buf_printf(&b, "applications:\n- name: a\n  cnb-credentials:\n    labels:\n");
    buf_printf(&b, "      l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (int i = 1; i < 9; i++)
        buf_printf(&b, "      l%d: &l%d [*l%d, *l%d, *l%d, *l%d, *l%d, *l%d, *l%d, *l%d, *l%d]\n",
                   i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    struct manifest *m = parse_ok(b.data);
    assert_int_equal(m->apps[0].warning_count, 1);
    manifest_free(m);
    /* the same bomb where values are read: refused at its first entry */
    buf_printf(&b, "  env: *l8\n");
    char *err = parse_err(b.data, MANIFEST_ERR_SCHEMA);
    assert_non_null(strstr(err, "\"env\" must be a map of NAME: value, not a list"));
    free(err);
    buf_reset(&b);
    buf_printf(&b, "applications:\n- name: a\n  metadata:\n    labels:\n");
    buf_printf(&b, "      l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (int i = 1; i < 9; i++)
        buf_printf(&b, "      l%d: &l%d [*l%d, *l%d, *l%d, *l%d, *l%d, *l%d, *l%d, *l%d, *l%d]\n",
                   i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    err = parse_err(b.data, MANIFEST_ERR_SCHEMA);
    assert_non_null(strstr(err, "\"metadata.labels\" maps a key to a text value"));
    free(err);
    buf_reset(&b);
    /* an alias repeated in a list read entry by entry: linear in the text */
    buf_printf(&b, "applications:\n- name: a\n  routes:\n  - &r {route: a.localhost}\n");
    for (int i = 0; i < 20000; i++)
        buf_printf(&b, "  - *r\n");
    m = parse_ok(b.data);
    assert_int_equal(m->apps[0].route_count, 20001);
    manifest_free(m);
    buf_reset(&b);
    /* deep nesting: refused before libyaml's loader recurses into it */
    buf_printf(&b, "applications:\n- name: a\n  metadata: ");
    for (int i = 0; i < 100000; i++)
        buf_printf(&b, "[");
    for (int i = 0; i < 100000; i++)
        buf_printf(&b, "]");
    buf_printf(&b, "\n");
    err = parse_err(b.data, MANIFEST_ERR_SYNTAX);
    assert_string_equal(err, "manifest.yml line 3: nested more than 64 levels deep, which no "
                             "manifest needs");
    free(err);
    buf_reset(&b);
    /* too large */
    buf_printf(&b, "applications:\n- name: a\n  env:\n");
    for (int i = 0; b.len <= MANIFEST_MAX_BYTES; i++)
        buf_printf(&b, "    K%d: some value to fill the manifest with\n", i);
    err = parse_err(b.data, MANIFEST_ERR_SYNTAX);
    assert_string_equal(err, "manifest.yml: larger than 4 MB, which no manifest needs");
    free(err);
    buf_free(&b);
}

/* YAML anchors with merge keys, as Cloud Foundry manifests share settings between apps. */
static void test_merge_keys(void **state)
{
    (void)state;
    struct manifest *m = parse_ok("applications:\n"
                                  "- &base\n"
                                  "  name: one\n"
                                  "  memory: 128M\n"
                                  "  instances: 2\n"
                                  "  env: {MODE: shared}\n"
                                  "- <<: *base\n"
                                  "  name: two\n"
                                  "  instances: 1\n"
                                  "- <<: [{memory: 64M, timeout: 9}, *base]\n"
                                  "  name: three\n");
    assert_int_equal(m->app_count, 3);
    assert_string_equal(m->apps[1].name, "two");
    assert_int_equal(m->apps[1].memory_mb, 128);
    assert_int_equal(m->apps[1].instances, 1); /* its own key wins */
    assert_string_equal(m->apps[1].env[0].value, "shared");
    assert_int_equal(m->apps[2].memory_mb, 64); /* the first merged map wins */
    assert_int_equal(m->apps[2].timeout, 9);
    assert_int_equal(m->apps[2].instances, 2);
    manifest_free(m);
    expect_error("applications:\n- <<: {name: a, instanse: 2}\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 2: unknown key \"instanse\" (did you mean \"instances\"?)");
    expect_error("applications:\n- name: a\n  <<: [x]\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: \"<<\" merges a map (like <<: *defaults) or a list of at "
                 "most 16 maps");
    expect_error("applications:\n- name: a\n  <<: {<<: {memory: 1G}}\n", MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 3: a map merged with \"<<\" cannot merge another");
    /* a top-level block of shared settings, as CF manifests keep them beside applications */
    m = parse_ok("defaults: &defaults\n"
                 "  memory: 256M\n"
                 "  instances: 2\n"
                 "applications:\n"
                 "- name: a\n"
                 "  <<: *defaults\n"
                 "- name: b\n"
                 "  <<: [*defaults]\n"
                 "  instances: 1\n");
    assert_int_equal(m->app_count, 2);
    assert_int_equal(m->apps[0].memory_mb, 256);
    assert_int_equal(m->apps[0].instances, 2);
    assert_int_equal(m->apps[1].instances, 1);
    manifest_free(m);
    /* ... but only one that something merges: anything else at the top is still an error */
    char *err = parse_err("defaults:\n  memory: 256M\napplications:\n- name: a\n",
                          MANIFEST_ERR_SCHEMA);
    assert_non_null(strstr(err, "unknown key \"defaults\""));
    free(err);
    err = parse_err("shared: &s {memory: 1G}\naplications:\n- name: a\n  <<: *s\n",
                    MANIFEST_ERR_SCHEMA);
    assert_non_null(strstr(err, "did you mean \"applications\""));
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_application),
        cmocka_unit_test(test_unset_values_and_several_apps),
        cmocka_unit_test(test_functions),
        cmocka_unit_test(test_unknown_key_names_key_line_and_suggestion),
        cmocka_unit_test(test_wrong_types_name_key_and_line),
        cmocka_unit_test(test_structural_errors),
        cmocka_unit_test(test_not_yaml),
        cmocka_unit_test(test_megabytes),
        cmocka_unit_test(test_load_resolves_paths_and_reports_missing_file),
        cmocka_unit_test(test_hostile_input_does_not_crash),
        cmocka_unit_test(test_cloud_foundry_kitchen_sink),
        cmocka_unit_test(test_log_rate_limits_and_bad_check_values),
        cmocka_unit_test(test_cloud_foundry_keys_that_are_refused_or_conflict),
        cmocka_unit_test(test_misspellings_never_suggest_the_opposite),
        cmocka_unit_test(test_autoscale_keys),
        cmocka_unit_test(test_variables),
        cmocka_unit_test(test_vars_files),
        cmocka_unit_test(test_alias_bombs_depth_and_size_are_bounded),
        cmocka_unit_test(test_merge_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
