#include "daemon/router_proc.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

#define ROUTER_PROC_RETRY_MS 1000
#define ROUTER_PROC_WATCH_MS 500
#define ROUTER_PROC_STOP_MS 5000 /* SIGTERM -> SIGKILL when the platform stops */
#define ROUTER_PROC_STOP_POLL_MS 20

struct router_proc {
    uv_loop_t *loop;
    char *binary, *home, *addr, *admin_addr, *tls_addr;
    char **env;         /* NULL: skiffd's own */
    uv_process_t *proc; /* our child while it lives (closed and freed when it exits) */
    int adopted_pid;    /* a router we did not start, or 0 */
    int stopping_pid;   /* the router being stopped with the platform, or 0 */
    int64_t stop_deadline;
    bool stop_killed;
    uv_timer_t timer;
    unsigned spawn_failures;
    bool closing;
    int handles;
    void (*done)(void *);
    void *done_arg;
};

static void router_proc__spawn(struct router_proc *rp);

/* The pid in run/router.pid when it is a live skiff-router, else 0. */
static int router_proc__running(struct router_proc *rp)
{
    char *path = xasprintf("%s/run/router.pid", rp->home);
    char *text = NULL;
    int pid = 0;
    if (file_read(path, &text, NULL) == 0)
        pid = atoi(text);
    free(text);
    free(path);
    if (pid <= 1 || kill(pid, 0) < 0)
        return 0;
    char *cmd_path = xasprintf("/proc/%d/cmdline", pid);
    char *cmd = NULL;
    size_t len = 0;
    bool is_router = false;
    if (file_read(cmd_path, &cmd, &len) == 0)
        is_router = strstr(cmd, "skiff-router") != NULL;
    free(cmd);
    free(cmd_path);
    return is_router ? pid : 0;
}

static void router_proc__closed(uv_handle_t *h)
{
    struct router_proc *rp = h->data;
    if (--rp->handles == 0 && rp->closing && rp->done) {
        void (*done)(void *) = rp->done;
        rp->done = NULL;
        done(rp->done_arg);
    }
}

static void router_proc__tick(uv_timer_t *t)
{
    struct router_proc *rp = t->data;
    if (rp->closing)
        return;
    if (rp->adopted_pid) {
        if (kill(rp->adopted_pid, 0) == 0)
            return;
        log_warning("the router (pid %d) is gone; starting a new one",
                rp->adopted_pid);
        rp->adopted_pid = 0;
        uv_timer_stop(&rp->timer);
    }
    if (!rp->proc)
        router_proc__spawn(rp);
}

static void router_proc__proc_freed(uv_handle_t *h)
{
    struct router_proc *rp = h->data;
    free(h);
    router_proc__closed((uv_handle_t *)&rp->timer);
}

static void router_proc__exited(uv_process_t *p, int64_t status, int sig)
{
    struct router_proc *rp = p->data;
    rp->proc = NULL;
    uv_close((uv_handle_t *)p, router_proc__proc_freed);
    if (rp->closing)
        return;
    log_warning("the router exited (status %lld, signal %d); restarting it in %d ms",
            (long long)status, sig, ROUTER_PROC_RETRY_MS);
    uv_timer_start(&rp->timer, router_proc__tick, ROUTER_PROC_RETRY_MS, 0);
}

static void router_proc__spawn(struct router_proc *rp)
{
    int existing = router_proc__running(rp);
    if (existing) {
        rp->adopted_pid = existing;
        log_info("the router from before is still serving (pid %d); keeping it",
                existing);
        uv_timer_start(&rp->timer, router_proc__tick, ROUTER_PROC_WATCH_MS, ROUTER_PROC_WATCH_MS);
        return;
    }
    char *args[] = {rp->binary,     "--home",       rp->home,     "--addr",     rp->addr,
                    "--admin-addr", rp->admin_addr, "--tls-addr", rp->tls_addr, NULL};
    uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE},
                                     {.flags = UV_INHERIT_FD, .data.fd = 1},
                                     {.flags = UV_INHERIT_FD, .data.fd = 2}};
    uv_process_options_t opts = {.exit_cb = router_proc__exited,
                                 .file = rp->binary,
                                 .args = args,
                                 .env = rp->env,
                                 .stdio_count = 3,
                                 .stdio = stdio,
                                 .flags = UV_PROCESS_DETACHED};
    uv_process_t *proc = xcalloc(1, sizeof *proc);
    proc->data = rp;
    rp->handles++; /* released by router_proc__proc_freed */
    int rc = uv_spawn(rp->loop, proc, &opts);
    if (rc < 0) {
        /* say it once, then once a minute: a missing binary must not flood the output */
        if (rp->spawn_failures++ % 60 == 0)
            log_error("cannot start the router %s: %s (build it with `make`); "
                    "retrying every second",
                    rp->binary, uv_strerror(rc));
        /* a failed spawn still needs its handle closed */
        uv_close((uv_handle_t *)proc, router_proc__proc_freed);
        uv_timer_start(&rp->timer, router_proc__tick, ROUTER_PROC_RETRY_MS, 0);
        return;
    }
    rp->proc = proc;
    rp->spawn_failures = 0;
    /* the pid file is the router's to write; write it too so cleanup finds it at once */
    char *path = xasprintf("%s/run/router.pid", rp->home);
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%d\n", proc->pid);
    file_write_atomic(path, pid, (size_t)n, 0644);
    free(path);
}

int router_proc_start(uv_loop_t *loop, const struct router_proc_config *cfg,
                      struct router_proc **out)
{
    struct router_proc *rp = xcalloc(1, sizeof *rp);
    rp->loop = loop;
    rp->binary = xstrdup(cfg->binary);
    rp->home = xstrdup(cfg->home);
    rp->addr = xstrdup(cfg->addr);
    rp->admin_addr = xstrdup(cfg->admin_addr);
    rp->tls_addr = xstrdup(cfg->tls_addr ? cfg->tls_addr : "");
    rp->env = strv_dup(cfg->env);
    uv_timer_init(loop, &rp->timer);
    rp->timer.data = rp;
    rp->handles = 1;
    router_proc__spawn(rp);
    *out = rp;
    return 0;
}

static void router_proc__close_handles(struct router_proc *rp)
{
    if (rp->proc) {
        /* a detached router outlives us: stop watching it */
        uv_process_t *proc = rp->proc;
        rp->proc = NULL;
        uv_close((uv_handle_t *)proc, router_proc__proc_freed);
    }
    uv_close((uv_handle_t *)&rp->timer, router_proc__closed);
}

/* Gone, or a zombie that is as good as gone (its parent reaps it). */
static bool router_proc__gone(int pid)
{
    if (kill(pid, 0) < 0)
        return true;
    char *path = xasprintf("/proc/%d/stat", pid);
    char *text = NULL;
    bool zombie = false;
    if (file_read(path, &text, NULL) == 0) {
        const char *p = strrchr(text, ')');
        zombie = p && p[1] == ' ' && p[2] == 'Z';
    }
    free(text);
    free(path);
    return zombie;
}

static void router_proc__stop_tick(uv_timer_t *t)
{
    struct router_proc *rp = t->data;
    /* our own child is reaped by its exit callback, which clears rp->proc */
    bool gone = rp->proc ? false : router_proc__gone(rp->stopping_pid);
    if (!gone && time_mono_ms() >= rp->stop_deadline) {
        if (rp->stop_killed) {
            log_warning("the router (pid %d) does not go away; leaving it",
                    rp->stopping_pid);
            gone = true;
        } else {
            log_warning("the router (pid %d) did not stop within %d ms; killing it",
                    rp->stopping_pid, ROUTER_PROC_STOP_MS);
            kill(rp->stopping_pid, SIGKILL);
            rp->stop_killed = true;
            rp->stop_deadline = time_mono_ms() + ROUTER_PROC_STOP_MS;
        }
    }
    if (!gone)
        return;
    uv_timer_stop(&rp->timer);
    char *path = xasprintf("%s/run/router.pid", rp->home);
    unlink(path);
    free(path);
    router_proc__close_handles(rp);
}

void router_proc_close(struct router_proc *rp, bool kill_router, void (*done)(void *arg), void *arg)
{
    rp->closing = true;
    rp->done = done;
    rp->done_arg = arg;
    int pid = !kill_router ? 0 : rp->proc ? rp->proc->pid : rp->adopted_pid;
    if (pid > 0 && kill(pid, SIGTERM) == 0) {
        /* the platform stops: done comes once the router has gone */
        rp->stopping_pid = pid;
        rp->stop_deadline = time_mono_ms() + ROUTER_PROC_STOP_MS;
        uv_timer_start(&rp->timer, router_proc__stop_tick, ROUTER_PROC_STOP_POLL_MS,
                       ROUTER_PROC_STOP_POLL_MS);
        return;
    }
    router_proc__close_handles(rp);
}

void router_proc_free(struct router_proc *rp)
{
    if (!rp)
        return;
    free(rp->binary);
    free(rp->home);
    free(rp->addr);
    free(rp->admin_addr);
    free(rp->tls_addr);
    strv_free(rp->env);
    free(rp);
}
