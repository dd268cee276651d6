/* Unit tests for stager/: release YAML and Procfile parsing, detection order, named
 * buildpacks, the supply/finalize contract, failures, timeouts and the built-in buildpacks
 * on the examples. Runs from the repository root (scripts/test.sh does). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"
#include "stager/release.h"
#include "stager/stager.h"

/* ---- parsers ---------------------------------------------------------------------------- */

static void test_release_yaml(void **state)
{
    (void)state;
    char err[256];
    const char *yaml = "---\naddons: []\ndefault_process_types:\n  web: \"python3 app.py\"\n"
                       "  worker: ./work --fast\n";
    json_t *t = stager_release_parse(yaml, strlen(yaml), err, sizeof(err));
    assert_non_null(t);
    assert_string_equal(json_string_value(json_object_get(t, "web")), "python3 app.py");
    assert_string_equal(json_string_value(json_object_get(t, "worker")), "./work --fast");
    json_decref(t);

    const char *empty_types = "default_process_types: {}\n";
    t = stager_release_parse(empty_types, strlen(empty_types), err, sizeof(err));
    assert_non_null(t);
    assert_int_equal(json_object_size(t), 0);
    json_decref(t);

    t = stager_release_parse("", 0, err, sizeof(err));
    assert_non_null(t);
    assert_int_equal(json_object_size(t), 0);
    json_decref(t);

    const char *broken = "default_process_types:\n  web: [unclosed\n";
    assert_null(stager_release_parse(broken, strlen(broken), err, sizeof(err)));
    assert_non_null(strstr(err, "broken YAML"));

    const char *nested = "default_process_types:\n  web:\n    - a\n";
    assert_null(stager_release_parse(nested, strlen(nested), err, sizeof(err)));
    assert_non_null(strstr(err, "map process names to commands"));

    const char *list = "- a\n- b\n";
    assert_null(stager_release_parse(list, strlen(list), err, sizeof(err)));
}

static void test_procfile(void **state)
{
    (void)state;
    char err[256];
    const char *text = "# processes\nweb: python3 app.py --port $PORT\r\n\n  worker : ./w\n";
    json_t *t = stager_procfile_parse(text, strlen(text), err, sizeof(err));
    assert_non_null(t);
    assert_string_equal(json_string_value(json_object_get(t, "web")),
                        "python3 app.py --port $PORT");
    assert_string_equal(json_string_value(json_object_get(t, "worker")), "./w");
    json_decref(t);

    const char *bad = "web: ok\nthis is not a process\n";
    assert_null(stager_procfile_parse(bad, strlen(bad), err, sizeof(err)));
    assert_non_null(strstr(err, "line 2"));
    const char *no_cmd = "web:\n";
    assert_null(stager_procfile_parse(no_cmd, strlen(no_cmd), err, sizeof(err)));
}

/* ---- staging ---------------------------------------------------------------------------- */

struct world {
    uv_loop_t loop;
    char dir[64];
    char *bps;     /* test buildpacks */
    char *app;     /* the app folder that gets packed */
    char *package; /* app.tar.gz */
    char *cache;
    char *droplet;
    struct buf out;
    bool done;
    bool ok;
    char *buildpack, *types, *error;
};

static int setup(void **state)
{
    struct world *w = xcalloc(1, sizeof(*w));
    uv_loop_init(&w->loop);
    strcpy(w->dir, "/tmp/skiff-stg-XXXXXX");
    if (!mkdtemp(w->dir))
        return -1;
    w->bps = xasprintf("%s/buildpacks", w->dir);
    w->app = xasprintf("%s/app", w->dir);
    w->package = xasprintf("%s/app.tar.gz", w->dir);
    w->cache = xasprintf("%s/cache", w->dir);
    w->droplet = xasprintf("%s/droplets/d1", w->dir);
    mkdir_p(w->app, 0755);
    mkdir_p(w->bps, 0755);
    char *droplets = xasprintf("%s/droplets", w->dir);
    mkdir_p(droplets, 0755);
    free(droplets);
    *state = w;
    return 0;
}

static void reset_result(struct world *w)
{
    free(w->buildpack);
    free(w->types);
    free(w->error);
    w->buildpack = w->types = w->error = NULL;
    w->done = w->ok = false;
    buf_reset(&w->out);
}

static int teardown(void **state)
{
    struct world *w = *state;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    rm_rf(w->dir);
    reset_result(w);
    buf_free(&w->out);
    free(w->bps);
    free(w->app);
    free(w->package);
    free(w->cache);
    free(w->droplet);
    free(w);
    return 0;
}

static void write_file(const char *dir, const char *name, const char *text, unsigned mode)
{
    char *path = xasprintf("%s/%s", dir, name);
    char *parent = xstrdup(path);
    *strrchr(parent, '/') = '\0';
    mkdir_p(parent, 0755);
    assert_int_equal(file_write_atomic(path, text, strlen(text), mode), 0);
    free(parent);
    free(path);
}

/* A test buildpack: each script is a shell body (NULL: no such script). */
static void make_buildpack(struct world *w, const char *name, const char *detect,
                           const char *compile, const char *release)
{
    char *dir = xasprintf("%s/%s", w->bps, name);
    struct {
        const char *file, *body;
    } scripts[] = {{"bin/detect", detect}, {"bin/compile", compile}, {"bin/release", release}};
    for (size_t i = 0; i < ARRAY_SIZE(scripts); i++) {
        if (!scripts[i].body)
            continue;
        char *text = xasprintf("#!/bin/sh\n%s\n", scripts[i].body);
        write_file(dir, scripts[i].file, text, 0755);
        free(text);
    }
    free(dir);
}

static void pack(struct world *w, const char *app_dir)
{
    char *cmd = xasprintf("tar -C '%s' -czf '%s' .", app_dir, w->package);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

static void on_output(void *ctx, const char *line, size_t len)
{
    struct world *w = ctx;
    buf_append(&w->out, line, len);
    buf_putc(&w->out, '\n');
}

static void on_done(void *ctx, const struct stage_result *r)
{
    struct world *w = ctx;
    assert_false(w->done); /* exactly once */
    w->done = true;
    w->ok = r->ok;
    w->buildpack = r->buildpack ? xstrdup(r->buildpack) : NULL;
    w->types = r->process_types_json ? xstrdup(r->process_types_json) : NULL;
    w->error = r->error ? xstrdup(r->error) : NULL;
}

static void stop_loop(uv_timer_t *t)
{
    *(bool *)t->data = true;
}
static void poke(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until cond holds or the staging is done; false at the deadline. */
static bool run_until(struct world *w, bool (*cond)(struct world *, const char *), const char *arg,
                      int timeout_ms)
{
    bool expired = false;
    uv_timer_t deadline, poker;
    uv_timer_init(&w->loop, &deadline);
    uv_timer_init(&w->loop, &poker);
    deadline.data = &expired;
    uv_timer_start(&deadline, stop_loop, (uint64_t)timeout_ms, 0);
    uv_timer_start(&poker, poke, 5, 5); /* UV_RUN_ONCE must not sleep past the condition */
    while (!cond(w, arg) && !w->done && !expired)
        uv_run(&w->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&deadline, NULL);
    uv_close((uv_handle_t *)&poker, NULL);
    uv_run(&w->loop, UV_RUN_NOWAIT);
    return cond(w, arg);
}

static bool is_done(struct world *w, const char *unused)
{
    (void)unused;
    return w->done;
}

static bool has_output(struct world *w, const char *needle)
{
    return w->out.data && strstr(w->out.data, needle);
}

static void run_until_done(struct world *w, int timeout_ms)
{
    if (!run_until(w, is_done, NULL, timeout_ms))
        fail_msg("staging did not finish within %d ms; output:\n%s", timeout_ms,
                 w->out.data ? w->out.data : "");
}

static void run_until_output(struct world *w, const char *needle, int timeout_ms)
{
    if (!run_until(w, has_output, needle, timeout_ms))
        fail_msg("no '%s' in the output within %d ms:\n%s", needle, timeout_ms,
                 w->out.data ? w->out.data : "");
}

static struct staging *stage(struct world *w, const char *buildpacks_dir, const char *const *named,
                             int timeout_s)
{
    reset_result(w);
    rm_rf(w->droplet);
    struct stager_config cfg = {.buildpacks_dir = buildpacks_dir, .home = w->dir};
    struct stage_request req = {
        .app_name = "myapp",
        .package_path = w->package,
        .buildpacks = named,
        .cache_dir = w->cache,
        .droplet_dir = w->droplet,
        .timeout_s = timeout_s,
    };
    struct staging *s = NULL;
    assert_int_equal(stager_start(&w->loop, &cfg, &req, on_output, on_done, w, &s), 0);
    assert_non_null(s);
    return s;
}

static const char release_web[] = "echo '---'; echo 'default_process_types:'; echo '  web: ./run'";

/* true when no "<droplet>.staging-*" folder is left behind */
static bool no_leftovers(struct world *w)
{
    char *cmd = xasprintf("ls -d '%s'.staging-* '%s'/tmp/staging-* '%s'/home >/dev/null 2>&1",
                          w->droplet, w->dir, w->droplet);
    int rc = system(cmd);
    free(cmd);
    return rc != 0;
}

static void test_detects_in_order(void **state)
{
    struct world *w = *state;
    make_buildpack(w, "aaa", "exit 1", "exit 9", release_web);
    make_buildpack(w, "bbb", "[ -f \"$1/marker\" ] && echo bbb-1.2 && exit 0; exit 1",
                   "echo compiling in $PWD; echo line two >&2; touch \"$1/built\"", release_web);
    make_buildpack(w, "ccc", "echo ccc; exit 0", "exit 9", release_web);
    write_file(w->bps, "order", "# comment\naaa\nbbb\nccc\n", 0644);
    write_file(w->app, "marker", "x", 0644);
    pack(w, w->app);

    stage(w, w->bps, NULL, 30);
    run_until_done(w, 20000);
    if (!w->ok)
        fail_msg("staging failed: %s", w->error);
    assert_string_equal(w->buildpack, "bbb");
    assert_non_null(strstr(w->out.data, "detected buildpack bbb (bbb-1.2)\n"));
    assert_non_null(strstr(w->out.data, "\nline two\n")); /* stderr streams too */
    json_t *types = json_loads(w->types, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(types, "web")), "./run");
    json_decref(types);

    char *built = xasprintf("%s/app/built", w->droplet);
    assert_int_equal(access(built, F_OK), 0);
    free(built);
    char *info_path = xasprintf("%s/staging_info.json", w->droplet);
    json_t *info = json_load_file(info_path, 0, NULL);
    free(info_path);
    assert_non_null(info);
    assert_string_equal(json_string_value(json_object_get(info, "buildpack")), "bbb");
    assert_string_equal(json_string_value(json_object_get(info, "detect_output")), "bbb-1.2");
    assert_string_equal(json_string_value(json_object_get(info, "start_command")), "./run");
    json_decref(info);
    assert_true(no_leftovers(w));

    /* without the marker, ccc is next in order */
    unlink(w->package);
    char *marker = xasprintf("%s/marker", w->app);
    unlink(marker);
    free(marker);
    write_file(w->app, "other", "x", 0644);
    pack(w, w->app);
    stage(w, w->bps, NULL, 30);
    run_until_done(w, 20000);
    assert_false(w->ok); /* ccc's compile exits 9 */
    assert_non_null(strstr(w->error, "buildpack ccc failed: bin/compile exited with status 9"));
    assert_int_not_equal(access(w->droplet, F_OK), 0);
    assert_true(no_leftovers(w));
}

static void test_nothing_detected(void **state)
{
    struct world *w = *state;
    make_buildpack(w, "aaa", "exit 1", "true", release_web);
    make_buildpack(w, "bbb", "exit 1", "true", release_web);
    write_file(w->app, "x", "x", 0644);
    pack(w, w->app);
    stage(w, w->bps, NULL, 30);
    run_until_done(w, 20000);
    assert_false(w->ok);
    assert_non_null(strstr(w->error, "no buildpack detected this app (tried aaa, bbb)"));
    assert_true(no_leftovers(w));

    /* no buildpacks at all: refused at once */
    char *empty = xasprintf("%s/empty", w->dir);
    mkdir_p(empty, 0755);
    struct stager_config cfg = {.buildpacks_dir = empty, .home = w->dir};
    struct stage_request req = {.package_path = w->package, .droplet_dir = w->droplet};
    struct staging *s = NULL;
    assert_int_equal(stager_start(&w->loop, &cfg, &req, on_output, on_done, w, &s), -ENOENT);
    assert_true(no_leftovers(w));
    free(empty);
}

static void test_named_buildpacks_and_procfile(void **state)
{
    struct world *w = *state;
    make_buildpack(w, "never", "exit 1", "echo compiled-by-never", release_web);
    write_file(w->app, "Procfile", "web: ./from-procfile\nworker: ./w\n", 0644);
    pack(w, w->app);

    /* named: detect is not asked, and the Procfile wins over release */
    const char *named[] = {"never", NULL};
    stage(w, w->bps, named, 30);
    run_until_done(w, 20000);
    if (!w->ok)
        fail_msg("staging failed: %s", w->error);
    assert_string_equal(w->buildpack, "never");
    assert_non_null(strstr(w->out.data, "compiled-by-never"));
    json_t *types = json_loads(w->types, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(types, "web")), "./from-procfile");
    assert_string_equal(json_string_value(json_object_get(types, "worker")), "./w");
    json_decref(types);

    /* without bin/release the Procfile alone gives the process types */
    char *release = xasprintf("%s/never/bin/release", w->bps);
    unlink(release);
    free(release);
    stage(w, w->bps, named, 30);
    run_until_done(w, 20000);
    assert_true(w->ok);
    types = json_loads(w->types, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(types, "web")), "./from-procfile");
    json_decref(types);

    /* a folder path names a buildpack too */
    char *path = xasprintf("%s/never", w->bps);
    const char *by_path[] = {path, NULL};
    stage(w, "/nonexistent", by_path, 30);
    run_until_done(w, 20000);
    assert_true(w->ok);
    assert_string_equal(w->buildpack, path);
    free(path);

    /* an unknown name fails with a message that lists the known ones */
    const char *unknown[] = {"no-such-buildpack", NULL};
    stage(w, w->bps, unknown, 30);
    run_until_done(w, 20000);
    assert_false(w->ok);
    assert_non_null(strstr(w->error, "buildpack 'no-such-buildpack' is not known: name a "
                                     "built-in one (never)"));
}

static void test_script_that_cannot_run(void **state)
{
    struct world *w = *state;
    make_buildpack(w, "noexec", NULL, "true", release_web);
    char *dir = xasprintf("%s/noexec", w->bps);
    write_file(dir, "bin/detect", "#!/bin/sh\nexit 0\n", 0644); /* not executable */
    free(dir);
    write_file(w->app, "x", "x", 0644);
    pack(w, w->app);
    stage(w, w->bps, NULL, 30);
    run_until_done(w, 20000);
    assert_false(w->ok);
    assert_non_null(strstr(w->error, "buildpack noexec: cannot run bin/detect"));
    assert_non_null(strstr(w->error, "executable"));
    assert_true(no_leftovers(w));
}

static void test_supply_finalize_and_cache(void **state)
{
    struct world *w = *state;
    char *sup = xasprintf("%s/sup", w->bps);
    write_file(sup, "bin/supply",
               "#!/bin/sh\nmkdir -p \"$3/$4\" && echo from-supply > \"$3/$4/dep\"\n"
               "[ -f \"$2/seen\" ] && echo cache-hit; touch \"$2/seen\"\n",
               0755);
    char *fin = xasprintf("%s/fin", w->bps);
    write_file(fin, "bin/finalize", "#!/bin/sh\ncat \"$3/0/dep\"; echo \"idx=$4\"\n", 0755);
    write_file(fin, "bin/release", "#!/bin/sh\necho 'default_process_types: {web: ./x}'\n", 0755);
    write_file(w->app, "x", "x", 0644);
    pack(w, w->app);
    const char *named[] = {"sup", "fin", NULL};
    stage(w, w->bps, named, 30);
    run_until_done(w, 20000);
    if (!w->ok)
        fail_msg("staging failed: %s\n%s", w->error, w->out.data);
    assert_non_null(strstr(w->out.data, "from-supply\nidx=1\n"));
    assert_null(strstr(w->out.data, "cache-hit"));
    char *dep = xasprintf("%s/deps/0/dep", w->droplet);
    assert_int_equal(access(dep, F_OK), 0);
    free(dep);
    /* the second stage sees what the first left in the app's cache */
    stage(w, w->bps, named, 30);
    run_until_done(w, 20000);
    assert_true(w->ok);
    assert_non_null(strstr(w->out.data, "cache-hit"));
    free(sup);
    free(fin);
}

static void test_timeout_kills_the_build(void **state)
{
    struct world *w = *state;
    make_buildpack(w, "slow", "echo slow", "echo started; sleep 41.5 & sleep 41.5; echo never",
                   release_web);
    write_file(w->app, "x", "x", 0644);
    pack(w, w->app);
    stage(w, w->bps, NULL, 1);
    run_until_done(w, 15000);
    assert_false(w->ok);
    assert_non_null(strstr(w->error, "timed out after 1 s"));
    assert_null(strstr(w->out.data, "never"));
    assert_int_not_equal(access(w->droplet, F_OK), 0);
    assert_true(no_leftovers(w));
    /* the whole process group goes, the background sleep too (killed, so within moments) */
    bool gone = false;
    for (int i = 0; i < 200 && !gone; i++) {
        gone = system("pgrep -f '^sleep 41[.]5' >/dev/null") != 0;
        if (!gone)
            usleep(10000);
    }
    assert_true(gone);
}

static void test_cancel(void **state)
{
    struct world *w = *state;
    make_buildpack(w, "slow", "echo slow", "sleep 30", release_web);
    write_file(w->app, "x", "x", 0644);
    pack(w, w->app);
    struct staging *s = stage(w, w->bps, NULL, 60);
    stager_cancel(s); /* while unpacking */
    assert_false(w->done);
    run_until_done(w, 15000);
    assert_false(w->ok);
    assert_non_null(strstr(w->error, "cancelled"));
    assert_true(no_leftovers(w));

    /* while a buildpack runs: it is killed, and on_done comes later from the loop */
    make_buildpack(w, "slow", "echo slow", "echo compiling; sleep 43.5", release_web);
    s = stage(w, w->bps, NULL, 60);
    run_until_output(w, "compiling", 15000);
    stager_cancel(s);
    stager_cancel(s); /* twice is harmless */
    assert_false(w->done);
    run_until_done(w, 15000);
    assert_false(w->ok);
    assert_string_equal(w->error, "staging was cancelled");
    assert_true(no_leftovers(w));
    bool gone = false;
    for (int i = 0; i < 200 && !gone; i++) {
        gone = system("pgrep -f '^sleep 43[.]5' >/dev/null") != 0;
        if (!gone)
            usleep(10000);
    }
    assert_true(gone);
}

static void test_not_an_archive(void **state)
{
    struct world *w = *state;
    make_buildpack(w, "any", "echo any", "true", release_web);
    write_file(w->dir, "app.tar.gz", "hello, not an archive", 0644);
    stage(w, w->bps, NULL, 30);
    run_until_done(w, 15000);
    assert_false(w->ok);
    assert_non_null(strstr(w->error, "not an archive"));
}

/* ---- the built-in buildpacks on the examples -------------------------------------------- */

static void stage_example(struct world *w, const char *example, const char *buildpack,
                          const char *web)
{
    char *dir = xasprintf("examples/%s", example);
    unlink(w->package);
    pack(w, dir);
    free(dir);
    stage(w, "buildpacks", NULL, 120);
    run_until_done(w, 120000);
    if (!w->ok)
        fail_msg("staging %s failed: %s\n%s", example, w->error, w->out.data);
    assert_string_equal(w->buildpack, buildpack);
    json_t *types = json_loads(w->types, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(types, "web")), web);
    json_decref(types);
}

static void test_builtin_python(void **state)
{
    stage_example(*state, "python-web", "python", "python3 app.py");
}

static void test_builtin_nodejs(void **state)
{
    stage_example(*state, "node-web", "nodejs", "node server.js");
}

static void test_builtin_staticfile(void **state)
{
    stage_example(*state, "static", "staticfile", "sh .skiff/start-nginx");
}

static void test_builtin_nodejs_lockfile_and_cache(void **state)
{
    struct world *w = *state;
    /* a dependency from a folder of the app, so no registry is needed */
    write_file(w->app, "greet/package.json",
               "{\"name\":\"greet\",\"version\":\"1.0.0\",\"main\":\"index.js\"}\n", 0644);
    write_file(w->app, "greet/index.js", "module.exports = 'hi';\n", 0644);
    write_file(w->app, "package.json",
               "{\"name\":\"app\",\"version\":\"1.0.0\",\"dependencies\":{\"greet\":"
               "\"file:./greet\"},\"scripts\":{\"start\":\"node server.js\"}}\n",
               0644);
    write_file(w->app, "server.js", "console.log(require('greet'));\n", 0644);
    char *lock = xasprintf("cd '%s' && npm install --package-lock-only --no-audit --no-fund "
                           "--offline >/dev/null 2>&1",
                           w->app);
    assert_int_equal(system(lock), 0);
    free(lock);
    pack(w, w->app);
    stage(w, "buildpacks", NULL, 120);
    run_until_done(w, 120000);
    if (!w->ok)
        fail_msg("staging failed: %s\n%s", w->error, w->out.data);
    assert_non_null(strstr(w->out.data, "Installing dependencies (npm ci)"));
    json_t *types = json_loads(w->types, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(types, "web")), "npm start");
    json_decref(types);
    char *run = xasprintf("cd '%s/app' && node server.js | grep -q hi", w->droplet);
    assert_int_equal(system(run), 0);

    /* unchanged package.json and lockfile: node_modules comes from the build cache */
    stage(w, "buildpacks", NULL, 120);
    run_until_done(w, 120000);
    assert_true(w->ok);
    assert_non_null(strstr(w->out.data, "Dependencies unchanged"));
    assert_int_equal(system(run), 0);
    free(run);
}

static void test_builtin_staticfile_root(void **state)
{
    struct world *w = *state;
    write_file(w->app, "Staticfile", "root: public\n", 0644);
    write_file(w->app, "public/index.html", "<p>hi</p>\n", 0644);
    pack(w, w->app);
    stage(w, "buildpacks", NULL, 60);
    run_until_done(w, 60000);
    if (!w->ok)
        fail_msg("staging failed: %s\n%s", w->error, w->out.data);
    assert_string_equal(w->buildpack, "staticfile");
    char *script = NULL;
    char *path = xasprintf("%s/app/.skiff/start-nginx", w->droplet);
    assert_int_equal(file_read(path, &script, NULL), 0);
    assert_non_null(strstr(script, "root $app/public;"));
    free(script);
    free(path);

    /* a root outside the app is refused */
    write_file(w->app, "Staticfile", "root: ../..\n", 0644);
    unlink(w->package);
    pack(w, w->app);
    stage(w, "buildpacks", NULL, 60);
    run_until_done(w, 60000);
    assert_false(w->ok);
    assert_non_null(strstr(w->out.data, "must be a folder inside the app"));
}

static void test_builtin_procfile(void **state)
{
    struct world *w = *state;
    write_file(w->app, "Procfile", "web: sh -c 'echo serving'\n", 0644);
    write_file(w->app, "run.sh", "echo hi\n", 0644);
    pack(w, w->app);
    stage(w, "buildpacks", NULL, 60);
    run_until_done(w, 60000);
    if (!w->ok)
        fail_msg("staging failed: %s\n%s", w->error, w->out.data);
    assert_string_equal(w->buildpack, "procfile");
}

static void test_builtin_python_missing_requirement(void **state)
{
    struct world *w = *state;
    write_file(w->app, "app.py", "print('hi')\n", 0644);
    write_file(w->app, "requirements.txt", "skiff-no-such-package==1.0\n", 0644);
    pack(w, w->app);
    stage(w, "buildpacks", NULL, 120);
    run_until_done(w, 120000);
    assert_false(w->ok);
    assert_string_equal(w->error, "buildpack python failed: bin/compile exited with status 1 "
                                  "(see the output above)");
    assert_non_null(strstr(w->out.data, "cannot install skiff-no-such-package"));
}

static void test_builtin_python_vendored_wheel_and_cache(void **state)
{
    struct world *w = *state;
    /* a pure-Python wheel made here, so nothing comes from a package index */
    char *vendor = xasprintf("%s/vendor", w->app);
    mkdir_p(vendor, 0755);
    char *cmd = xasprintf(
        "python3 -c 'import sys, zipfile\n"
        "z = zipfile.ZipFile(sys.argv[1], \"w\")\n"
        "z.writestr(\"skiffdemo/__init__.py\", \"GREETING = 1\")\n"
        "z.writestr(\"skiffdemo-1.0.dist-info/METADATA\", \"Metadata-Version: 2.1\\nName: "
        "skiffdemo\\nVersion: 1.0\\n\")\n"
        "z.writestr(\"skiffdemo-1.0.dist-info/WHEEL\", \"Wheel-Version: 1.0\\nGenerator: t\\n"
        "Root-Is-Purelib: true\\nTag: py3-none-any\\n\")\n"
        "z.writestr(\"skiffdemo-1.0.dist-info/RECORD\", \"\")\n"
        "z.close()' %s/skiffdemo-1.0-py3-none-any.whl",
        vendor);
    assert_int_equal(system(cmd), 0);
    free(cmd);
    free(vendor);
    write_file(w->app, "requirements.txt", "skiffdemo==1.0\n", 0644);
    write_file(w->app, "app.py", "import skiffdemo\n", 0644);
    pack(w, w->app);
    stage(w, "buildpacks", NULL, 120);
    run_until_done(w, 120000);
    if (!w->ok)
        fail_msg("staging failed: %s\n%s", w->error, w->out.data);
    assert_non_null(strstr(w->out.data, "Successfully installed skiffdemo-1.0"));
    char *installed = xasprintf("%s/app/.python_packages/skiffdemo/__init__.py", w->droplet);
    assert_int_equal(access(installed, F_OK), 0);
    json_t *types = json_loads(w->types, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(types, "web")),
                        ". ./.skiff/env.sh; exec python3 app.py");
    json_decref(types);
    /* the command's environment finds the package */
    char *run =
        xasprintf("cd %s/app && . ./.skiff/env.sh && python3 -c 'import skiffdemo'", w->droplet);
    assert_int_equal(system(run), 0);
    free(run);

    /* the same requirements again: installed from the build cache, not by pip */
    stage(w, "buildpacks", NULL, 120);
    run_until_done(w, 120000);
    assert_true(w->ok);
    assert_non_null(strstr(w->out.data, "Requirements unchanged"));
    assert_null(strstr(w->out.data, "Successfully installed"));
    assert_int_equal(access(installed, F_OK), 0);
    free(installed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_release_yaml),
        cmocka_unit_test(test_procfile),
        cmocka_unit_test_setup_teardown(test_detects_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nothing_detected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_named_buildpacks_and_procfile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_script_that_cannot_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_supply_finalize_and_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_kills_the_build, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_an_archive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_python, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_nodejs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_staticfile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_nodejs_lockfile_and_cache, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_staticfile_root, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_procfile, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_python_missing_requirement, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builtin_python_vendored_wheel_and_cache, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
