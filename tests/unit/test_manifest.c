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
    assert_string_equal(a->services[0], "db");
    assert_string_equal(a->services[1], "cache");
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
    expect_error("applications:\n- name: a\n  routes:\n  - host: a.localhost\n",
                 MANIFEST_ERR_SCHEMA,
                 "manifest.yml line 4: unknown key \"host\" in a route (known keys: route, protocol, options)");
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
                 "manifest.yml line 2: the function f needs a \"handler\" like file.py:handle");
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
