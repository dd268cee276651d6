/* stager: see stager.h.
 *
 * A staging is a small state machine on the caller's loop:
 *   unpack (thread pool) -> detect (each candidate in order, unless buildpacks are named)
 *   -> supply of every named buildpack but the last -> finalize or compile of the last
 *   -> release -> Procfile merge -> staging_info.json -> rename into place.
 * Layout while it runs: <droplet_dir>.staging-<random>/{app,deps,staging_info.json}, so the
 * final rename stays on one filesystem; a failure removes that folder and nothing else.
 *
 * In containers, the build happens on a staging disk of its own (an ext4 of the quota,
 * container_disk_open) that skiffd holds as a detached mount and every step takes as its
 * disk: app, deps and cache are folders of it, and the steps' writable layer (/tmp, $HOME)
 * is on it too, so whatever staging writes counts against one limit. The upload is unpacked on
 * the host as before (bounded by the unpack limit) and copied onto it, the app's cache after
 * it; after release, the build and deps are copied out to the folder above (at most what the
 * disk held) and the cache back, then the disk goes. */
#include "stager/stager.h"

#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "common/err.h"
#include "common/buf.h"
#include "common/util.h"
#include "container/container.h"
#include "executor/cgroup.h"
#include "executor/proc.h"
#include "stager/release.h"

#define STAGER_DEFAULT_TIMEOUT_S 900
#define STAGER_MAX_UNPACKED ((size_t)4 << 30) /* the API checks its own, smaller limit */
#define STAGER_MAX_CAPTURE (256 * 1024)       /* detect/release output kept for parsing */
#define STAGER_MEMORY_MB 1024                 /* a staging container's memory */
#define STAGER_DEFAULT_DISK_MB 1024           /* the staging disk, when the request names none */

extern char **environ;

enum stager__step { STEP_UNPACK, STEP_DETECT, STEP_SUPPLY, STEP_FINAL, STEP_RELEASE, STEP_DONE };

struct stager__buildpack {
    char *name; /* what the user sees: the built-in's name or the folder path */
    char *dir;
    bool builtin; /* a folder of buildpacks_dir (whose real path s->buildpacks_dir is) */
};

struct staging {
    uv_loop_t *loop;
    stage_output_cb on_output;
    stage_done_cb on_done;
    void *ctx;

    char *app_name, *package_path, *cache_dir, *droplet_dir, *buildpacks_dir;
    char **env;
    int timeout_s;
    char *work_dir, *build_dir, *deps_dir;
    char *scratch_dir; /* HOME of the scripts (and CACHE when the caller gave none): not
                          part of the droplet, removed at the end */
    /* the staging disk (containers only): its detached mount, held while the staging runs */
    int disk_mb;
    int disk_fd;        /* -1: none */
    char *disk_dir;     /* its root as a path: /proc/PID/fd/N */
    bool cache_dropped; /* the cache did not fit on the disk: staged without it */

    struct stager__buildpack *candidates;
    size_t candidate_count;
    bool named;     /* buildpacks named by the caller: no detection, multi-buildpack rules */
    size_t current; /* index into candidates */
    char *detect_output;
    char *unknown_buildpack; /* a named buildpack that does not exist */

    enum stager__step step;
    struct proc *proc;
    /* containers: the site, and what the running step holds */
    const struct container_site *site;
    int memory_mb;
    struct cgroup *cg;
    int slot; /* -1: none */
    unsigned steps;
    struct buf captured; /* stdout of detect and release */
    uv_work_t job;       /* on the thread pool: the unpack, then the copy out of the disk */
    int job_rc;
    char job_err[512];
    uv_timer_t timer;
    bool in_job, timed_out, cancelled, finished;
};

static void stager__next(struct staging *s);
static void stager__load_order(struct staging *s, const char *buildpacks_dir);
static void stager__complete(struct staging *s);
static void stager__step_release(struct staging *s);
static void stager__finish_build(struct staging *s);

/* ---- output and ending ------------------------------------------------------------------ */

static void stager__say(struct staging *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void stager__say(struct staging *s, const char *fmt, ...)
{
    struct buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    s->on_output(s->ctx, b.data, b.len);
    buf_free(&b);
}

static void stager__timer_closed(uv_handle_t *h)
{
    struct staging *s = h->data;
    for (size_t i = 0; i < s->candidate_count; i++) {
        free(s->candidates[i].name);
        free(s->candidates[i].dir);
    }
    free(s->candidates);
    free(s->app_name);
    free(s->package_path);
    free(s->cache_dir);
    free(s->droplet_dir);
    free(s->buildpacks_dir);
    free(s->work_dir);
    free(s->scratch_dir);
    free(s->build_dir);
    free(s->deps_dir);
    free(s->disk_dir);
    free(s->detect_output);
    free(s->unknown_buildpack);
    strv_free(s->env);
    buf_free(&s->captured);
    free(s);
}

/* ---- the staging disk ------------------------------------------------------------------ */

/* A folder of the staging disk (caller frees). */
static char *stager__on_disk(const struct staging *s, const char *name)
{
    return xasprintf("%s/%s", s->disk_dir, name);
}

static bool stager__disk_full(const struct staging *s)
{
    unsigned long long used = 0, total = 0;
    return s->disk_dir && container_disk_usage(s->disk_dir, &used, &total) == 0 &&
           container_disk_is_full(used, total);
}

/* Unmounts the disk once no step holds it (a running step's container keeps its clone until
 * it ends); its loop device and image go with it. */
static void stager__disk_close(struct staging *s)
{
    if (s->disk_fd >= 0)
        close(s->disk_fd);
    s->disk_fd = -1;
}

#define STAGER_QUOTA_ADVICE                                                                        \
    "make the build smaller, or raise the app's disk quota (skiff push -k, or disk_quota in "      \
    "the manifest)"

/* Reports the result once and releases the staging. */
static void stager__finish(struct staging *s, bool ok, const char *buildpack,
                           const char *process_types_json, const char *error)
{
    if (s->finished)
        return;
    s->finished = true;
    s->step = STEP_DONE;
    if (s->proc) {
        proc_close(s->proc);
        s->proc = NULL;
    }
    stager__step_release(s);
    stager__disk_close(s);
    uv_timer_stop(&s->timer);
    if (!ok && s->work_dir)
        rm_rf(s->work_dir);
    rm_rf(s->scratch_dir);
    struct stage_result result = {
        .ok = ok,
        .buildpack = buildpack,
        .process_types_json = process_types_json,
        .error = error,
    };
    s->on_done(s->ctx, &result);
    uv_close((uv_handle_t *)&s->timer, stager__timer_closed);
}

static void stager__fail(struct staging *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void stager__fail(struct staging *s, const char *fmt, ...)
{
    struct buf b = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&b, fmt, ap);
    va_end(ap);
    if (!s->finished)
        s->on_output(s->ctx, b.data, b.len);
    stager__finish(s, false, NULL, NULL, b.data);
    buf_free(&b);
}

/* The one message for a staging that wrote past its disk: what filled it, and the limit. */
static void stager__fail_quota(struct staging *s, const char *what)
{
    stager__fail(s, "disk quota exceeded (%d MB): %s; " STAGER_QUOTA_ADVICE, s->disk_mb, what);
}

/* A stop from outside (timeout or cancel) while a step runs: kill it and report why. */
static void stager__abort(struct staging *s)
{
    if (s->in_job)
        return; /* the job finishes on its thread, then its callback reports */
    if (s->timed_out)
        stager__fail(s,
                     "staging timed out after %d s: make the build faster, or raise the "
                     "staging timeout",
                     s->timeout_s);
    else
        stager__fail(s, "staging was cancelled");
}

static void stager__timed_out(uv_timer_t *t)
{
    struct staging *s = t->data;
    s->timed_out = true;
    stager__abort(s);
}

static void stager__cancelled(uv_timer_t *t)
{
    stager__abort(t->data);
}

void stager_cancel(struct staging *s)
{
    if (s->finished || s->cancelled)
        return;
    s->cancelled = true;
    if (s->proc)
        proc_signal_group(s->proc, SIGKILL); /* the work stops now */
    /* on_done comes from the loop, never from inside this call: callers cancel while they
     * walk their own lists */
    if (!s->in_job)
        uv_timer_start(&s->timer, stager__cancelled, 0, 0);
}

/* ---- running buildpack steps ------------------------------------------------------------ */

static void stager__line(void *ctx, int stream, const char *line, size_t len)
{
    struct staging *s = ctx;
    bool capture = stream == 1 && (s->step == STEP_DETECT || s->step == STEP_RELEASE);
    if (capture) {
        if (s->captured.len + len + 1 <= STAGER_MAX_CAPTURE) {
            buf_append(&s->captured, line, len);
            buf_putc(&s->captured, '\n');
        }
        return;
    }
    if (s->step == STEP_DETECT)
        return; /* a buildpack saying why it does not apply is noise */
    s->on_output(s->ctx, line, len);
}

static void stager__step_exited(void *ctx, int exit_status, int term_signal);

/* What a container step holds (its cgroup and network slot) goes back when it ends. */
static void stager__step_release(struct staging *s)
{
    if (s->cg) {
        cgroup_destroy(s->cg);
        s->cg = NULL;
    }
    if (s->slot >= 0 && s->site && s->site->slot_give)
        s->site->slot_give(s->site->slot_ctx, s->slot);
    s->slot = -1;
}

#define STAGER_BUILDPACKS_IN "/tmp/buildpacks"

/* Where a buildpack is inside a staging container (caller frees). */
static char *stager__buildpack_in(const struct staging *s, const struct stager__buildpack *bp)
{
    if (bp->builtin)
        return xasprintf(STAGER_BUILDPACKS_IN "/%s", bp->dir + strlen(s->buildpacks_dir) + 1);
    return xasprintf("/tmp/user-buildpacks/%zu", s->current);
}

/* A step's container: on the staging disk, whose build, deps and cache folders it sees
 * writable, the buildpack read-only. Returns the config's path (caller frees) or NULL with err
 * filled. */
static char *stager__container(struct staging *s, const struct stager__buildpack *bp, char *err,
                               size_t errlen)
{
    /* cgroups are machine-wide: the name is this staging's own (its scratch folder's) */
    char name[64];
    const char *base = strrchr(s->scratch_dir, '/');
    snprintf(name, sizeof name, "%s-%u", base ? base + 1 : "staging", s->steps++);
    int rc = cgroup_create(name, s->memory_mb, 1024, &s->cg);
    if (rc < 0)
        s->cg = NULL; /* no usable cgroups: the container still isolates */
    s->slot = s->site->slot_take ? s->site->slot_take(s->site->slot_ctx) : -1;
    if (s->slot < 0) {
        snprintf(err, errlen, "no free network slot for the staging container");
        return NULL;
    }
    /* the built-in buildpacks share files (../../lib.sh): all of them are mounted, as in
     * their folder; a buildpack of the user's is mounted on its own */
    const char *bp_source = bp->builtin ? s->buildpacks_dir : bp->dir;
    char *bp_in = stager__buildpack_in(s, bp);
    if (bp->builtin) {
        free(bp_in);
        bp_in = xstrdup(STAGER_BUILDPACKS_IN);
    }
    char *scratch = xasprintf("%s/step-%u", s->scratch_dir, s->steps);
    mkdir_p(scratch, 0700);
    /* the folders of the disk as the container's keeper sees it, mounted at scratch/disk */
    char *build = xasprintf("%s/disk/app", scratch), *deps = xasprintf("%s/disk/deps", scratch),
         *cache = xasprintf("%s/disk/cache", scratch);
    struct container_mount mounts[] = {
        {.source = build, .target = "/tmp/app", .kind = CONTAINER_MOUNT_RW},
        {.source = deps, .target = "/tmp/deps", .kind = CONTAINER_MOUNT_RW},
        {.source = cache, .target = "/tmp/cache", .kind = CONTAINER_MOUNT_RW},
        {.source = (char *)bp_source, .target = bp_in, .kind = CONTAINER_MOUNT_RO},
    };
    struct container_config cfg = {
        .hostname = name,
        .stack = (char *)s->site->stack_dir,
        .scratch = scratch,
        .disk_mb = s->disk_mb,
        .disk_from = s->disk_dir,
        .disk_pool = (char *)s->site->disk_pool,
        .seccomp_bpf = (char *)s->site->seccomp_bpf,
        .uid_base = s->site->uid_base,
        .net_pool = (char *)s->site->net_pool,
        .net_slot = s->slot,
        .cwd = "/tmp/app",
        .cgroup_procs = s->cg ? (char **)cgroup_join_files(s->cg) : NULL,
        .mounts = mounts,
        .n_mounts = ARRAY_SIZE(mounts),
    };
    char *text = container_config_to_json(&cfg);
    char *path = xasprintf("%s/container.json", scratch);
    rc = file_replace(path, text, strlen(text), 0600);
    free(text);
    free(scratch);
    free(build);
    free(deps);
    free(cache);
    free(bp_in);
    if (rc < 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, skiff_strerror(rc));
        free(path);
        return NULL;
    }
    return path;
}

static int stager__run(struct staging *s, const char *script, bool with_deps)
{
    const struct stager__buildpack *bp = &s->candidates[s->current];
    char idx[16];
    snprintf(idx, sizeof(idx), "%zu", s->current);
    /* the paths the step sees: the host's, or the container's */
    char *program, *config = NULL;
    const char *build = s->build_dir, *cache = s->cache_dir, *deps = s->deps_dir;
    if (s->site) {
        char err[256];
        config = stager__container(s, bp, err, sizeof err);
        if (!config) {
            stager__say(s, "cannot start the staging container: %s", err);
            stager__step_release(s);
            return -EIO;
        }
        char *dir = stager__buildpack_in(s, bp);
        program = xasprintf("%s/bin/%s", dir, script);
        free(dir);
        build = "/tmp/app";
        cache = "/tmp/cache";
        deps = "/tmp/deps";
    } else {
        program = xasprintf("%s/bin/%s", bp->dir, script);
    }
    const char *argv[11] = {NULL};
    int argc = 0;
    if (config) {
        argv[argc++] = s->site->init_path;
        argv[argc++] = "--config";
        argv[argc++] = config;
        argv[argc++] = "--";
    }
    argv[argc++] = program;
    argv[argc++] = build;
    if (s->step == STEP_SUPPLY || s->step == STEP_FINAL) {
        argv[argc++] = cache;
        if (with_deps) {
            argv[argc++] = deps;
            argv[argc++] = idx;
        }
    }
    buf_reset(&s->captured);
    struct proc_options opt = {
        .argv = argv,
        .env = s->env,
        .cwd = s->build_dir,
        .on_line = stager__line,
        .on_exit = stager__step_exited,
        .ctx = s,
    };
    int rc = proc_spawn(s->loop, &opt, &s->proc);
    if (rc < 0)
        stager__step_release(s);
    free(program);
    free(config);
    return rc;
}

static bool stager__has_script(const struct stager__buildpack *bp, const char *script)
{
    char *path = xasprintf("%s/bin/%s", bp->dir, script);
    bool ok = access(path, F_OK) == 0;
    free(path);
    return ok;
}

static bool stager__is_last(const struct staging *s)
{
    return s->current + 1 == s->candidate_count;
}

/* Starts the step s->step for s->current; on a spawn error fails the staging. */
static void stager__start_step(struct staging *s)
{
    const struct stager__buildpack *bp = &s->candidates[s->current];
    const char *script = NULL;
    bool with_deps = false;
    switch (s->step) {
    case STEP_DETECT:
        script = "detect";
        break;
    case STEP_SUPPLY:
        script = "supply";
        with_deps = true;
        break;
    case STEP_FINAL:
        with_deps = stager__has_script(bp, "finalize");
        script = with_deps ? "finalize" : "compile";
        if (!with_deps && !stager__has_script(bp, "compile")) {
            stager__fail(s,
                         "buildpack %s has neither bin/finalize nor bin/compile: it cannot "
                         "build the app",
                         bp->name);
            return;
        }
        break;
    case STEP_RELEASE:
        if (!stager__has_script(bp, "release")) {
            /* no process types from the buildpack: the Procfile has to give them */
            buf_reset(&s->captured);
            stager__finish_build(s);
            return;
        }
        script = "release";
        break;
    default:
        return;
    }
    int rc = stager__run(s, script, with_deps);
    if (rc < 0)
        stager__fail(s,
                     "buildpack %s: cannot run bin/%s (%s): check that it exists and is "
                     "executable",
                     bp->name, script, skiff_strerror(rc));
}

/* Merges the release's process types with the app's Procfile, writes staging_info.json and
 * moves the droplet into place. */
static void stager__complete(struct staging *s)
{
    char err[512];
    json_t *types = stager_release_parse(s->captured.data ? s->captured.data : "", s->captured.len,
                                         err, sizeof(err));
    json_t *info = NULL;
    char *types_text = NULL;
    const struct stager__buildpack *bp = &s->candidates[s->current];
    if (!types) {
        stager__fail(s, "buildpack %s: %s", bp->name, err);
        return;
    }
    char *procfile_path = xasprintf("%s/Procfile", s->build_dir);
    char *procfile = NULL;
    size_t procfile_len = 0;
    if (file_read(procfile_path, &procfile, &procfile_len) == 0) {
        json_t *declared = stager_procfile_parse(procfile, procfile_len, err, sizeof(err));
        free(procfile);
        if (!declared) {
            free(procfile_path);
            json_decref(types);
            stager__fail(s, "%s: fix the Procfile and push again", err);
            return;
        }
        json_object_update(types, declared); /* the app's Procfile wins */
        json_decref(declared);
    }
    free(procfile_path);

    /* Buildpacks that set up the environment in .profile.d expect it sourced before every
     * process starts, with DEPS_DIR pointing at the droplet's deps: one small script does
     * that, and each command starts by sourcing it. */
    char *profile_d = xasprintf("%s/.profile.d", s->build_dir);
    struct stat st;
    bool has_profile_d = stat(profile_d, &st) == 0 && S_ISDIR(st.st_mode);
    free(profile_d);
    if (has_profile_d) {
        static const char env_script[] =
            "# Written by the stager: the environment buildpacks asked for in .profile.d.\n"
            "DEPS_DIR=\"$(cd \"$PWD/../deps\" 2>/dev/null && pwd)\"\n"
            "export DEPS_DIR\n"
            "for f in ./.profile.d/*.sh; do\n"
            "  [ -r \"$f\" ] && . \"$f\"\n"
            "done\n";
        char *skiff_dir = xasprintf("%s/.skiff", s->build_dir);
        char *script = xasprintf("%s/env.sh", skiff_dir);
        int wrc = mkdir_p(skiff_dir, 0755);
        if (wrc == 0)
            wrc = file_write_atomic(script, env_script, strlen(env_script), 0644);
        free(script);
        free(skiff_dir);
        if (wrc < 0) {
            json_decref(types);
            stager__fail(s, "cannot write the droplet: %s", skiff_strerror(wrc));
            return;
        }
        const char *name;
        json_t *cmd;
        json_object_foreach(types, name, cmd)
        {
            char *exec_form = proc_exec_form(json_string_value(cmd));
            char *wrapped = xasprintf(". ./.skiff/env.sh; %s", exec_form);
            json_object_set_new(types, name, json_string(wrapped));
            free(wrapped);
            free(exec_form);
        }
    }

    json_t *web = json_object_get(types, "web");
    info =
        json_pack("{s:s, s:s?, s:O, s:O}", "buildpack", bp->name, "detect_output", s->detect_output,
                  "process_types", types, "start_command", web ? web : json_null());
    char *info_text = json_dumps(info, JSON_INDENT(2));
    char *info_path = xasprintf("%s/staging_info.json", s->work_dir);
    int rc = file_write_atomic(info_path, info_text, strlen(info_text), 0644);
    free(info_path);
    free(info_text);
    json_decref(info);
    if (rc < 0) {
        json_decref(types);
        stager__fail(s, "cannot write the droplet: %s", skiff_strerror(rc));
        return;
    }
    if (rename(s->work_dir, s->droplet_dir) != 0) {
        int e = errno;
        json_decref(types);
        stager__fail(s, "cannot move the droplet into place at %s: %s", s->droplet_dir,
                     skiff_strerror(-e));
        return;
    }
    types_text = json_dumps(types, JSON_COMPACT);
    json_decref(types);
    char *bp_name = xstrdup(bp->name);
    stager__finish(s, true, bp_name, types_text, NULL);
    free(bp_name);
    free(types_text);
}

/* The script of the step running now. */
static const char *stager__script(const struct staging *s, const struct stager__buildpack *bp)
{
    switch (s->step) {
    case STEP_DETECT:
        return "detect";
    case STEP_SUPPLY:
        return "supply";
    case STEP_RELEASE:
        return "release";
    default:
        return stager__has_script(bp, "finalize") ? "finalize" : "compile";
    }
}

static void stager__step_exited(void *ctx, int exit_status, int term_signal)
{
    struct staging *s = ctx;
    proc_close(s->proc);
    s->proc = NULL;
    stager__step_release(s);
    if (s->finished)
        return;
    if (s->cancelled || s->timed_out) {
        stager__abort(s); /* killed on purpose: say why, not what signal */
        return;
    }
    const struct stager__buildpack *bp = &s->candidates[s->current];
    bool ok = exit_status == 0 && term_signal == 0;
    /* whatever the step's exit says: a full disk means some write of it failed, and what the
     * build goes on with is not what the buildpack meant */
    if (stager__disk_full(s)) {
        char *what = xasprintf("buildpack %s's bin/%s filled the staging disk", bp->name,
                               stager__script(s, bp));
        stager__fail_quota(s, what);
        free(what);
        return;
    }
    switch (s->step) {
    case STEP_DETECT:
        if (ok) {
            /* stdout names the buildpack (and often a version) */
            size_t n = s->captured.len;
            while (n > 0 && (s->captured.data[n - 1] == '\n' || s->captured.data[n - 1] == ' '))
                n--;
            s->detect_output = xstrndup(s->captured.data ? s->captured.data : "", n);
            bool same = strcmp(s->detect_output, bp->name) == 0;
            stager__say(s, "Staging %s: detected buildpack %s%s%s%s", s->app_name, bp->name,
                        n && !same ? " (" : "", same ? "" : s->detect_output,
                        n && !same ? ")" : "");
            s->step = STEP_FINAL;
            stager__next(s);
            return;
        }
        if (term_signal) {
            stager__fail(s, "buildpack %s: bin/detect was killed by signal %d", bp->name,
                         term_signal);
            return;
        }
        s->current++;
        stager__next(s);
        return;
    case STEP_SUPPLY:
    case STEP_FINAL:
    case STEP_RELEASE: {
        if (!ok) {
            const char *script = stager__script(s, bp);
            if (term_signal)
                stager__fail(s, "buildpack %s failed: bin/%s was killed by signal %d", bp->name,
                             script, term_signal);
            else
                stager__fail(s,
                             "buildpack %s failed: bin/%s exited with status %d (see the "
                             "output above)",
                             bp->name, script, exit_status);
            return;
        }
        if (s->step == STEP_SUPPLY) {
            s->current++;
            s->step = stager__is_last(s) ? STEP_FINAL : STEP_SUPPLY;
        } else if (s->step == STEP_FINAL) {
            s->step = STEP_RELEASE;
        } else {
            stager__finish_build(s);
            return;
        }
        stager__next(s);
        return;
    }
    default:
        return;
    }
}

/* Moves to the step in s->step (after detection: the final buildpack's build). */
static void stager__next(struct staging *s)
{
    if (s->finished)
        return;
    if (s->step == STEP_DETECT) {
        while (s->current < s->candidate_count &&
               !stager__has_script(&s->candidates[s->current], "detect"))
            s->current++;
        if (s->current == s->candidate_count) {
            struct buf names = {0};
            for (size_t i = 0; i < s->candidate_count; i++)
                buf_printf(&names, "%s%s", i ? ", " : "", s->candidates[i].name);
            stager__fail(s,
                         "no buildpack detected this app (tried %s): add a Procfile with a "
                         "'web:' command, or name a buildpack with -b",
                         names.data ? names.data : "none");
            buf_free(&names);
            return;
        }
    }
    stager__start_step(s);
}

/* ---- the thread pool: unpacking, copying out ---------------------------------------- */

/* Opens the staging disk and makes its folders. */
static int stager__disk_prepare(struct staging *s)
{
    char err[256] = "";
    int fd = container_disk_open(s->site->disk_pool, s->disk_mb, err, sizeof err);
    if (fd < 0) {
        snprintf(s->job_err, sizeof s->job_err, "cannot make the staging disk: %s", err);
        return fd;
    }
    s->disk_fd = fd;
    s->disk_dir = xasprintf("/proc/%d/fd/%d", (int)getpid(), fd);
    static const char *const names[] = {"app", "deps", "cache"};
    int rc = 0;
    for (size_t i = 0; i < ARRAY_SIZE(names) && rc == 0; i++) {
        char *dir = stager__on_disk(s, names[i]);
        if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
            rc = -errno;
            snprintf(s->job_err, sizeof s->job_err, "cannot make %s on the staging disk: %s",
                     names[i], skiff_strerror(-errno));
        }
        free(dir);
    }
    return rc;
}

/* What may come off the disk: no more than it holds, in bytes and in entries. */
static int stager__disk_budget(const struct staging *s, struct copy_budget *out)
{
    struct statvfs st;
    if (statvfs(s->disk_dir, &st) < 0)
        return -errno;
    out->bytes = (uint64_t)st.f_blocks * st.f_frsize;
    out->entries = st.f_files;
    return 0;
}

/* The app's cache onto the disk, after the app: one that no longer fits is left behind (the
 * build then runs as a first one would), never the reason a staging fails. */
static void stager__cache_in(struct staging *s)
{
    char *cache = stager__on_disk(s, "cache");
    struct copy_budget budget;
    if (stager__disk_budget(s, &budget) < 0 || copy_tree(s->cache_dir, cache, &budget) < 0) {
        rm_rf(cache);
        mkdir(cache, 0755);
        s->cache_dropped = true;
    }
    free(cache);
}

/* The unpacked app (in the droplet's folder on the host, bounded by the unpack limit as the
 * upload is) onto the disk; that folder is left empty for the copy out. libarchive refuses to
 * extract through a symbolic link, and the disk is reached only through /proc/PID/fd/N. */
static int stager__app_in(struct staging *s, const char *on_disk)
{
    struct copy_budget budget;
    int rc = stager__disk_budget(s, &budget);
    if (rc == 0)
        rc = copy_tree(s->build_dir, on_disk, &budget);
    if (rc == -EFBIG || rc == -ENOSPC || rc == -EDQUOT)
        rc = -EDQUOT;
    else if (rc < 0)
        snprintf(s->job_err, sizeof s->job_err, "cannot put the app on the staging disk: %s",
                 skiff_strerror(rc));
    int cleared = rm_rf(s->build_dir);
    if (cleared == 0)
        cleared = mkdir_p(s->build_dir, 0755);
    if (rc == 0 && cleared < 0) {
        rc = cleared;
        snprintf(s->job_err, sizeof s->job_err, "cannot empty %s: %s", s->build_dir,
                 skiff_strerror(rc));
    }
    return rc;
}

static void stager__unpack_work(uv_work_t *w)
{
    struct staging *s = w->data;
    char *trees[3] = {xstrdup(s->build_dir), xstrdup(s->deps_dir), xstrdup(s->cache_dir)};
    if (s->site) {
        s->job_rc = stager__disk_prepare(s);
        if (s->job_rc < 0)
            goto out;
        static const char *const names[] = {"app", "deps", "cache"};
        for (size_t i = 0; i < ARRAY_SIZE(trees); i++) {
            free(trees[i]);
            trees[i] = stager__on_disk(s, names[i]);
        }
    }
    s->job_rc = package_extract(s->package_path, s->build_dir, STAGER_MAX_UNPACKED, s->job_err,
                                sizeof(s->job_err));
    if (s->site && s->job_rc == 0)
        s->job_rc = stager__app_in(s, trees[0]);
    if (s->site && s->job_rc == 0)
        stager__cache_in(s);
    /* the containers' vcap writes the build, its dependencies and the cache */
    for (size_t i = 0; s->site && s->job_rc == 0 && i < ARRAY_SIZE(trees); i++) {
        s->job_rc = container_chown_tree(trees[i], s->site->uid_base);
        if (s->job_rc < 0)
            snprintf(s->job_err, sizeof s->job_err, "cannot hand %s to the container: %s", trees[i],
                     skiff_strerror(s->job_rc));
    }
out:
    for (size_t i = 0; i < ARRAY_SIZE(trees); i++)
        free(trees[i]);
}

/* The build and deps off the disk into the droplet's folder, and the cache back to the app's
 * (replacing the old one only once the new one is whole). */
static void stager__copy_out_work(uv_work_t *w)
{
    struct staging *s = w->data;
    struct copy_budget budget;
    s->job_rc = stager__disk_budget(s, &budget);
    static const char *const names[] = {"app", "deps"};
    const char *dests[] = {s->build_dir, s->deps_dir};
    for (size_t i = 0; i < ARRAY_SIZE(names) && s->job_rc == 0; i++) {
        char *from = stager__on_disk(s, names[i]);
        s->job_rc = copy_tree(from, dests[i], &budget);
        free(from);
    }
    if (s->job_rc < 0) {
        snprintf(s->job_err, sizeof s->job_err, "%s", skiff_strerror(s->job_rc));
        return;
    }
    char *from = stager__on_disk(s, "cache");
    char *fresh = xasprintf("%s.new", s->cache_dir);
    rm_rf(fresh);
    if (copy_tree(from, fresh, &budget) == 0) {
        rm_rf(s->cache_dir);
        if (rename(fresh, s->cache_dir) < 0)
            rm_rf(fresh);
    } else {
        rm_rf(fresh); /* the old cache stays: the next build is no worse off */
    }
    free(fresh);
    free(from);
}

static void stager__copied(uv_work_t *w, int status)
{
    struct staging *s = w->data;
    s->in_job = false;
    if (s->timed_out || s->cancelled || status == UV_ECANCELED) {
        stager__abort(s);
        return;
    }
    stager__disk_close(s);
    if (s->job_rc == -EFBIG)
        stager__fail_quota(s, "the build's files add up to more than the staging disk holds");
    else if (s->job_rc < 0)
        stager__fail(s, "cannot copy the droplet off the staging disk: %s", s->job_err);
    else
        stager__complete(s);
}

/* The steps are done: the droplet comes off the staging disk (on the thread pool), then
 * stager__complete writes it into place. */
static void stager__finish_build(struct staging *s)
{
    if (!s->disk_dir) {
        stager__complete(s);
        return;
    }
    s->in_job = true;
    s->job.data = s;
    int rc = uv_queue_work(s->loop, &s->job, stager__copy_out_work, stager__copied);
    if (rc < 0) {
        s->in_job = false;
        stager__fail(s, "cannot copy the droplet off the staging disk: %s", skiff_strerror(rc));
    }
}

static void stager__unpacked(uv_work_t *w, int status)
{
    struct staging *s = w->data;
    s->in_job = false;
    if (s->timed_out || s->cancelled || status == UV_ECANCELED) {
        stager__abort(s);
        return;
    }
    if (s->job_rc < 0) {
        if (s->job_rc == -EDQUOT || stager__disk_full(s))
            stager__fail_quota(s, "the app's files do not fit on the staging disk");
        else
            stager__fail(s, "cannot unpack the app: %s", s->job_err);
        return;
    }
    if (s->cache_dropped)
        stager__say(s,
                    "The build cache does not fit on the staging disk (%d MB): staging without "
                    "it",
                    s->disk_mb);
    if (s->unknown_buildpack) {
        struct staging *probe = xcalloc(1, sizeof(*probe));
        stager__load_order(probe, s->buildpacks_dir);
        struct buf names = {0};
        for (size_t i = 0; i < probe->candidate_count; i++) {
            buf_printf(&names, "%s%s", i ? ", " : "", probe->candidates[i].name);
            free(probe->candidates[i].name);
            free(probe->candidates[i].dir);
        }
        free(probe->candidates);
        free(probe);
        stager__fail(s,
                     "buildpack '%s' is not known: name a built-in one (%s) or give the path of "
                     "a buildpack folder with bin/detect, bin/compile and bin/release",
                     s->unknown_buildpack, names.data ? names.data : "none installed");
        buf_free(&names);
        return;
    }
    if (s->named) {
        s->current = 0;
        s->step = s->candidate_count > 1 ? STEP_SUPPLY : STEP_FINAL;
        stager__say(s, "Staging %s with buildpack %s", s->app_name, s->candidates[0].name);
    } else {
        s->step = STEP_DETECT;
    }
    stager__next(s);
}

/* ---- setting up ------------------------------------------------------------------------- */

/* The buildpack folder for a name: a path when it has a '/', else a built-in. */
static int stager__resolve(const char *buildpacks_dir, const char *name,
                           struct stager__buildpack *out)
{
    struct stat st;
    if (!name[0] || (!strchr(name, '/') && name[0] == '.'))
        return -ENOENT;
    char *given = strchr(name, '/') ? xstrdup(name) : xasprintf("%s/%s", buildpacks_dir, name);
    /* absolute, since the scripts run with the build folder as their working directory */
    char *dir = realpath(given, NULL);
    free(given);
    if (!dir)
        return -ENOENT;
    char *bin = xasprintf("%s/bin", dir);
    int rc = stat(bin, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -ENOENT;
    free(bin);
    if (rc < 0) {
        free(dir);
        return rc;
    }
    out->name = xstrdup(name);
    out->dir = dir;
    char *root = realpath(buildpacks_dir, NULL);
    size_t rl = root ? strlen(root) : 0;
    out->builtin = root && !strncmp(dir, root, rl) && dir[rl] == '/' && !strchr(dir + rl + 1, '/');
    free(root);
    return 0;
}

static int stager__compare_names(const void *a, const void *b)
{
    return strcmp(((const struct stager__buildpack *)a)->name,
                  ((const struct stager__buildpack *)b)->name);
}

/* Detection order: <buildpacks_dir>/order (one name a line) when present, else every
 * folder with a bin/detect in name order. */
static void stager__load_order(struct staging *s, const char *buildpacks_dir)
{
    size_t cap = 16;
    s->candidates = xcalloc(cap, sizeof(*s->candidates));
    char *order_path = xasprintf("%s/order", buildpacks_dir);
    char *order = NULL;
    if (file_read(order_path, &order, NULL) == 0) {
        char *save = NULL;
        for (char *line = strtok_r(order, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            while (*line == ' ' || *line == '\t')
                line++;
            if (!*line || *line == '#' || strchr(line, '/'))
                continue;
            if (s->candidate_count == cap)
                s->candidates = xrealloc(s->candidates, (cap *= 2) * sizeof(*s->candidates));
            if (stager__resolve(buildpacks_dir, line, &s->candidates[s->candidate_count]) == 0)
                s->candidate_count++;
        }
        free(order);
    } else {
        uv_fs_t req;
        uv_dirent_t ent;
        if (uv_fs_scandir(NULL, &req, buildpacks_dir, 0, NULL) >= 0) {
            while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
                if (s->candidate_count == cap)
                    s->candidates = xrealloc(s->candidates, (cap *= 2) * sizeof(*s->candidates));
                if (ent.name[0] != '.' && stager__resolve(buildpacks_dir, ent.name,
                                                          &s->candidates[s->candidate_count]) == 0)
                    s->candidate_count++;
            }
        }
        uv_fs_req_cleanup(&req);
        qsort(s->candidates, s->candidate_count, sizeof(*s->candidates), stager__compare_names);
    }
    free(order_path);
}

/* The environment of buildpack processes: the caller's (or ours), with PATH and HOME made
 * sure of, since package managers need both. */
static char **stager__make_env(char *const *given, const char *home)
{
    char *const *src = given ? given : environ;
    size_t n = 0;
    bool has_path = false, has_home = false;
    for (; src[n]; n++) {
        has_path |= str_has_prefix(src[n], "PATH=");
        has_home |= str_has_prefix(src[n], "HOME=");
    }
    char **env = xcalloc(n + 3, sizeof(char *));
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        env[k++] = xstrdup(src[i]);
    if (!has_path)
        env[k++] = xstrdup("PATH=/usr/local/bin:/usr/bin:/bin");
    if (!has_home)
        env[k++] = xstrdup(home);
    return env;
}

int stager_start(uv_loop_t *loop, const struct stager_config *cfg, const struct stage_request *req,
                 stage_output_cb on_output, stage_done_cb on_done, void *ctx, struct staging **out)
{
    if (!loop || !cfg || !cfg->buildpacks_dir || !req || !req->package_path || !req->droplet_dir ||
        !on_output || !on_done)
        return -EINVAL;
    struct stat st;
    if (stat(req->droplet_dir, &st) == 0)
        return -EEXIST;
    if (stat(req->package_path, &st) != 0)
        return -errno;

    struct staging *s = xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->on_output = on_output;
    s->on_done = on_done;
    s->ctx = ctx;
    s->app_name = xstrdup(req->app_name ? req->app_name : "app");
    s->package_path = xstrdup(req->package_path);
    s->droplet_dir = xstrdup(req->droplet_dir);
    s->buildpacks_dir = realpath(cfg->buildpacks_dir, NULL);
    if (!s->buildpacks_dir)
        s->buildpacks_dir = xstrdup(cfg->buildpacks_dir);
    s->timeout_s = req->timeout_s > 0 ? req->timeout_s : STAGER_DEFAULT_TIMEOUT_S;
    s->site = cfg->containers;
    s->memory_mb = cfg->memory_mb > 0 ? cfg->memory_mb : STAGER_MEMORY_MB;
    s->slot = -1;
    s->disk_fd = -1;
    s->disk_mb = req->disk_mb > 0 ? req->disk_mb : STAGER_DEFAULT_DISK_MB;
    char hex[17];
    random_hex(hex, 8);
    s->work_dir = xasprintf("%s.staging-%s", req->droplet_dir, hex);
    s->build_dir = xasprintf("%s/app", s->work_dir);
    s->deps_dir = xasprintf("%s/deps", s->work_dir);
    s->scratch_dir = cfg->home ? xasprintf("%s/tmp/staging-%s", cfg->home, hex)
                               : xasprintf("%s.scratch-%s", req->droplet_dir, hex);
    s->cache_dir = req->cache_dir ? xstrdup(req->cache_dir) : xasprintf("%s/cache", s->scratch_dir);
    char *home_var =
        s->site ? xstrdup("HOME=/home/vcap") : xasprintf("HOME=%s/home", s->scratch_dir);
    s->env = stager__make_env(req->env, home_var);
    free(home_var);

    int rc = 0;
    if (req->buildpacks && req->buildpacks[0]) {
        s->named = true;
        size_t n = 0;
        while (req->buildpacks[n])
            n++;
        s->candidates = xcalloc(n, sizeof(*s->candidates));
        for (size_t i = 0; i < n; i++) {
            if (stager__resolve(cfg->buildpacks_dir, req->buildpacks[i], &s->candidates[i]) < 0) {
                /* reported through on_done, where the user gets to read why */
                s->unknown_buildpack = xstrdup(req->buildpacks[i]);
                break;
            }
            s->candidate_count++;
        }
    } else {
        stager__load_order(s, cfg->buildpacks_dir);
        if (s->candidate_count == 0)
            rc = -ENOENT;
    }
    if (rc == 0 &&
        ((rc = mkdir_p(s->build_dir, 0755)) < 0 || (rc = mkdir_p(s->deps_dir, 0755)) < 0 ||
         (rc = mkdir_p(s->cache_dir, 0755)) < 0))
        goto fail;
    if (rc == 0) {
        char *home = xasprintf("%s/home", s->scratch_dir);
        rc = mkdir_p(home, 0700);
        free(home);
    }
    if (rc < 0)
        goto fail;
    uv_timer_init(loop, &s->timer);
    s->timer.data = s;
    s->step = STEP_UNPACK;
    s->in_job = true;
    s->job.data = s;
    rc = uv_queue_work(loop, &s->job, stager__unpack_work, stager__unpacked);
    if (rc < 0) {
        rm_rf(s->work_dir);
        rm_rf(s->scratch_dir);
        s->finished = true;
        uv_close((uv_handle_t *)&s->timer, stager__timer_closed);
        return rc;
    }
    uv_timer_start(&s->timer, stager__timed_out, (uint64_t)s->timeout_s * 1000, 0);
    if (out)
        *out = s;
    return 0;

fail:
    rm_rf(s->work_dir);
    rm_rf(s->scratch_dir);
    /* nothing started: free at once (the timer was never initialised) */
    s->timer.data = s;
    stager__timer_closed((uv_handle_t *)&s->timer);
    return rc;
}
