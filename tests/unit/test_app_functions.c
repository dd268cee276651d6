/* Unit tests for functions inside apps: which handlers a function may have (a file inside the
 * app and a function name, nothing that escapes the droplet or that a shell would read), the
 * runtime its file's extension gives, the command that runs it, and that the store keeps a
 * function process apart from the app's other processes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/core_internal.h"
#include "common/util.h"
#include "store/store.h"

static void test_handlers_that_are_accepted(void **state)
{
    (void)state;
    char err[256];
    assert_string_equal(api_function_runtime("shop/images.py:resize", err, sizeof err), "python");
    assert_string_equal(api_function_runtime("images.py:resize_2", err, sizeof err), "python");
    assert_string_equal(api_function_runtime("lib/hooks.js:onOrder", err, sizeof err), "node");
    assert_string_equal(api_function_runtime("bin/count.sh:main", err, sizeof err), "shell");
    assert_string_equal(api_function_runtime("a-b/c_d.e.py:_f", err, sizeof err), "python");
}

static void test_handlers_that_are_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "images.py",              /* no function */
        "images.py:",             /* empty function */
        ":resize",                /* no file */
        "../../etc/passwd:x",     /* out of the droplet */
        "shop/../../etc/x.py:f",  /* out of the droplet, further in */
        "/etc/passwd.py:x",       /* absolute */
        "./images.py:resize",     /* a "." part */
        "shop//images.py:resize", /* an empty part */
        "images.rb:resize",       /* no runtime */
        "images.py:re size",      /* not a name */
        "images.py:1resize",      /* not a name */
        "ima'ges.py:resize",      /* a quote would end the command's word */
        "im$(id).py:resize",      /* nor may anything a shell reads */
        "images.py:resize;id",
        "images.py:x:y", /* the function part is what follows the last colon */
    };
    char err[256];
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        if (api_function_runtime(bad[i], err, sizeof err))
            fail_msg("accepted the handler \"%s\"", bad[i]);
        assert_true(err[0] != '\0');
    }
    assert_null(api_function_runtime(NULL, err, sizeof err));
    char longest[400];
    memset(longest, 'a', sizeof longest);
    memcpy(longest + sizeof longest - 6, ".py:f", 6);
    assert_null(api_function_runtime(longest, err, sizeof err));
}

static void test_commands_run_the_servers_from_the_droplet(void **state)
{
    (void)state;
    char *c = api_function_command("python", "shop/images.py:resize");
    assert_string_equal(c, "python3 .skiff/function/skiff_function.py 'shop/images.py:resize'");
    free(c);
    c = api_function_command("node", "lib/hooks.js:onOrder");
    assert_string_equal(c, "node .skiff/function/skiff_function.js 'lib/hooks.js:onOrder'");
    free(c);
    c = api_function_command("shell", "bin/count.sh:main");
    assert_string_equal(c, "python3 .skiff/function/skiff_function.py --shell 'bin/count.sh'");
    free(c);
}

static void test_the_store_keeps_a_function_process(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-appfn-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char *db = xasprintf("%s/store.db", dir);
    char err[256];
    struct store *st = NULL;
    assert_int_equal(store_open(db, err, sizeof err, &st), 0);
    struct store_process procs[2] = {
        {.type = "web", .instances = 1, .min_instances = STORE_SCALE_MANUAL},
        {.type = "resize",
         .command = "python3 .skiff/function/skiff_function.py 'images.py:resize'",
         .min_instances = 0,
         .function_json = "{\"handler\":\"images.py:resize\",\"runtime\":\"python\"}"}};
    struct store_app app = {.guid = "6f1c5b0e-0000-4000-8000-000000000001",
                            .name = "shop",
                            .state = "STARTED",
                            .kind = "app",
                            .memory_mb = 256,
                            .disk_mb = 1024,
                            .timeout = 60,
                            .buildpacks_json = "[]",
                            .health_check_type = "port",
                            .health_check_http_endpoint = "/",
                            .processes = procs,
                            .n_processes = 2};
    assert_int_equal(store_app_create(st, &app), 0);
    struct store_app *got = NULL;
    assert_int_equal(store_app_get(st, app.guid, &got), 0);
    assert_int_equal(got->n_processes, 2);
    assert_false(store_process_is_function(store_app_process(got, "web")));
    const struct store_process *fn = store_app_process(got, "resize");
    assert_true(store_process_is_function(fn));
    assert_string_equal(fn->function_json, procs[1].function_json);
    struct store_app *copy = store_app_dup(got);
    assert_string_equal(store_app_process(copy, "resize")->function_json, procs[1].function_json);
    store_app_free(copy);
    /* listing reads it too */
    struct store_app **all = NULL;
    size_t n = 0;
    assert_int_equal(store_app_list(st, &all, &n), 0);
    assert_int_equal(n, 1);
    assert_true(store_process_is_function(store_app_process(all[0], "resize")));
    store_app_list_free(all, n);
    store_app_free(got);
    store_close(st);
    char *cmd = xasprintf("rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(db);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handlers_that_are_accepted),
        cmocka_unit_test(test_handlers_that_are_refused),
        cmocka_unit_test(test_commands_run_the_servers_from_the_droplet),
        cmocka_unit_test(test_the_store_keeps_a_function_process),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
