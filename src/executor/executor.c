/* executor: see executor.h.
 *
 * Two drivers run an instance: the process driver (a process group, proc.h, the executor's
 * child) and the shim driver (under skiff-shim, outliving the executor); either runs the
 * command in a container (container.h, through skiff-init) or, unsafe, as a host process in
 * its cgroup (cgroup.h). Everything driver-specific goes through struct executor__driver.
 * Warm containers (made ahead, container.h) are the shim driver's: see "warm containers".
 *
 * Life of an instance: STARTING (health probes, 1 to HEALTH_STARTING_MS ms apart as it ages,
 * until one passes or the start timeout fires) -> RUNNING (liveness probes every
 * health_interval_ms, LIVENESS_FAILURES failed probes in a row kill it; readiness probes, when
 * the spec asks for them, only report ready/not ready and never kill) -> exit of its main process
 * -> DOWN when a stop was asked for, CRASHED otherwise. The final state is reported once the
 * process is gone and its output drained; the instance is freed right after that callback. */
#include "common/err.h"
#include "common/start_trace.h"
#include "executor/executor.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <poll.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <ctype.h>
#include <dirent.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/log.h"
#include "common/buf.h"
#include "common/util.h"
#include "container/container.h"
#include "container/net.h"
#include "container/seccomp.h"
#include "executor/cgroup.h"
#include "executor/proc.h"
#include "http/client.h"
#include "shim/shim.h"

#define HEALTH_STARTING_MS 20 /* at most, between probes of a starting instance */
#define DEFAULT_LIVENESS_MS 3000
#define HEALTH_PROBE_TIMEOUT_MS 1000
/* a starting instance's probe connects within this or is tried again: a SYN sent while its
 * network was being wired is lost, and its retransmission would come only after a second */
#define HEALTH_CONNECT_STARTING_MS 50
#define LIVENESS_FAILURES 3
#define USAGE_SAMPLE_MS 1000
#define DEFAULT_PIDS_MAX 1024
#define DEFAULT_GRACE_MS 10000
#define DEFAULT_START_TIMEOUT_S 60
#define CGROUP_STALE_AGE_S 60 /* an empty instance cgroup this old is a dead daemon's */
#define DEFAULT_DISK_MB 1024
#define DISK_POOL_KEEP 2 /* ready-made disk images kept per size in use */
#define EXECUTOR_WARM_SOCKET "warm.sock" /* where a warm container waits, in its folder */
#define WARM_RETRY_MS 100 /* after a warm container failed: the next is made this much later */
/* the refill waits for the starts under way to be up (making a container beside a start
 * slowed the start 3-fold: it forks skiffd, and its cgroup join (v1) stalls every fork and
 * exit on the machine for a grace period), but no longer than this */
#define WARM_AFTER_STARTS_MS 100
/* and a moment after the last is up, for its first request or event (the delivery took 6-15
 * ms p50 in bench/coldstart/bench.py) to run before a container, and for a Python or Node.js
 * pool its interpreter, is made beside it */
#define WARM_AFTER_RUNNING_MS 20
#define EXECUTOR_RUNTIMES 2 /* executor__runtimes */
#define WARM_POLL_MS 20     /* while a warm container comes up, the refill looks this often */
/* a pool grown by a burst is looked at this often (or a quarter of the window, if shorter) */
#define WARM_SHRINK_CHECK_MS 5000
#define WARM_FAILURES_MAX 5 /* warm containers ending unused in a row before none are made */

struct probe;

struct instance {
    struct instance *prev, *next;
    struct executor *ex;
    /* the spec, copied */
    char *app_guid, *app_name, *process_type, *guid, *app_dir, *command, *health_endpoint;
    char **env;
    char *image_layers, **argv, *cwd; /* an image app's (instance_spec) */
    unsigned user_uid, user_gid;
    int inside_port;
    int index, port, memory_mb, disk_mb, pids_max, start_timeout_s;
    enum health_check_type health;
    int health_interval_ms, health_timeout_ms; /* resolved: never 0 */
    bool readiness;
    enum health_check_type readiness_type;
    char *readiness_endpoint;
    int readiness_interval_ms, readiness_timeout_ms; /* resolved: never 0 */
    bool log_rate_limited;
    int64_t log_rate_limit;
    struct container_sidecar *sidecars; /* owned */
    size_t n_sidecars;
    int *sidecar_memory_mb;       /* [n_sidecars]: 0 shares the instance's limit */
    struct cgroup **sidecar_cgs;  /* [n_sidecars]: its own under cg, or NULL (released, never
                                     destroyed: destroying cg removes them) */
    char sidecar_oom_reason[128]; /* info.reason when a sidecar ran out of its memory */
    char *scratch_dir;

    enum instance_state state;
    int64_t since_ms;
    struct proc *proc;           /* process driver */
    struct executor__shim *shim; /* shim driver */
    int pid;                     /* the main process (its group's id), 0 while not known */
    struct cgroup *cg;
    uv_timer_t start_timer, health_timer, grace_timer, readiness_timer;
    int handles; /* open timers; freed at zero once final */
    struct probe *probe;           /* the liveness probe in flight */
    struct probe *readiness_probe; /* the readiness probe in flight */
    struct http_pool *http;        /* the HTTP checks' client, made at the first one */
    bool ready;                    /* the readiness check's last result, as reported */
    int liveness_failures;
    /* the log rate limit's window: a second from log_window_ms, log_bytes written in it */
    int64_t log_window_ms, log_bytes;
    bool log_dropped; /* a line was dropped in this window (and the notice said) */
    bool stop_requested, final;
    bool detached;           /* left running for a later executor: nothing of it is ended */
    bool warm_started;       /* it took a warm container */
    const char *warm_runtime; /* the runtime that container had started ahead, or NULL */
    const char *kill_reason; /* why the executor killed it, when it did */
    void *user_data;
    /* usage, sampled by the executor's timer */
    uint64_t last_cpu_ns;
    int64_t last_sample_ms;
    double cpu;
    uint64_t memory_bytes;
    uint64_t disk_used, disk_total;
    bool disk_full_told; /* "disk quota exceeded" said once per time it fills up */
};

struct executor__driver;
struct executor__disk_job;

struct executor {
    uv_loop_t *loop;
    const struct executor__driver *driver;
    char *shim_path;
    struct executor__shim *shims; /* connections to shims, until their handles are closed */
    uv_signal_t *reaper;          /* SIGCHLD: the shims we spawned are waited for */
    pid_t *spawned;               /* shims spawned and not yet waited for */
    size_t n_spawned, cap_spawned;
    char *home;
    int port_min, port_max, grace_ms, liveness_ms;
    unsigned char *port_used;
    int port_cursor;
    /* containers */
    enum executor_isolation isolation;
    char *init_path, *stack_dir, *disk_pool, *net_pool_text;
    char *seccomp_bpf; /* the containers' filter, built once per start; NULL: each builds it */
    struct net_pool net;
    unsigned uid_base;
    struct container_site site;
    int slots;                 /* network slots of the pool */
    unsigned char *slot_used;  /* ours, by slot */
    int slot_cursor;
    int disk_pool_sizes[8];    /* sizes of disk images kept ready */
    struct executor__disk_job *disk_job; /* the refill under way, if any */
    int prewarm;                         /* warm containers kept, of each kind in use */
    int64_t prewarm_window_ms;           /* how long a burst keeps the pool grown */
    uint64_t prewarm_budget;             /* bytes the pool may use (executor_config) */
    /* the most memory a warm container of each kind has used, as measured: [0] plain */
    uint64_t warm_charge_seen[1 + EXECUTOR_RUNTIMES];
    bool warm_budget_told;               /* the budget stopped a refill, and the log says so */
    char *runtimes_dir;                  /* where the runtimes' zygotes are (buildpacks) */
    bool runtime_usable[EXECUTOR_RUNTIMES]; /* its zygote is there */
    bool runtime_wanted[EXECUTOR_RUNTIMES]; /* an instance of that runtime has started */
    struct executor__warm *warm;         /* those made */
    uv_timer_t *warm_timer;              /* the refill */
    /* when warm containers of each kind were last asked for (executor_port_allocate_for),
     * uv_now ms + 1 (0: never), a ring: the pool's size follows them (executor_warm_target) */
    uint64_t warm_asked[1 + EXECUTOR_RUNTIMES][EXECUTOR_WARM_POOL_MAX];
    unsigned warm_asked_next[1 + EXECUTOR_RUNTIMES];
    /* warm containers that ended unused, in a row, by kind: [0] plain, [1 + r] runtime r */
    int warm_failures[1 + EXECUTOR_RUNTIMES];
    struct container_disk_server *disk_server; /* disks mounted ahead, or NULL */
    bool disk_pool_again;                /* a size was used meanwhile: refill once more */
    bool disk_pool_told;                 /* a refill error was logged */
    instance_output_cb on_output;
    instance_readiness_cb on_readiness;
    instance_state_cb on_state;
    void *ctx;
    struct instance *instances;
    uv_timer_t *usage_timer;
    uv_timer_t *done_timer;
    bool shutting_down;
    void (*shutdown_done)(void *arg);
    void *shutdown_arg;
};

/* ---- driver seam ------------------------------------------------------------------------ */

/* What a driver does for an instance. The process driver below is the only one today. */
struct executor__driver {
    const char *name;
    int (*start)(struct instance *inst);
    void (*signal)(struct instance *inst, int sig); /* every process of the instance */
    bool (*oom_killed)(struct instance *inst);
    bool (*pids_limited)(struct instance *inst); /* a fork failed at the process limit */
    void (*usage)(struct instance *inst, uint64_t *cpu_ns, uint64_t *memory_bytes);
    /* Whether the socket listening on port belongs to the instance: on a shared network a
     * port check must not pass because some other program took the port. */
    bool (*listens_on)(struct instance *inst, int port);
    void (*cleanup)(struct instance *inst); /* after the main process is gone */
    /* Lets go of a running instance without ending it (a later executor adopts it); NULL
     * when the driver's instances cannot outlive the executor. */
    void (*release)(struct instance *inst);
};

static void executor__instance_output(void *ctx, int stream, const char *line, size_t len);
static void executor__instance_exited(void *ctx, int exit_status, int term_signal);

/* Joins the cgroup (the pid files follow the command as $2...), then runs the command, so
 * nothing the app forks can start outside its limits. */
static const char executor__join_script[] =
    "cmd=$1; shift; for f; do echo $$ > \"$f\" || { echo \"skiff: cannot join cgroup $f\" >&2; "
    "exit 125; }; done; exec /bin/sh -c \"$cmd\"";

/* Language runtimes a warm container may start ahead (container.h, warm_program): an
 * instance whose command is `LAUNCHER SCRIPT ARG...` (the function buildpacks' web command,
 * buildpacks/function-python/lib/release.sh; words bare or in single quotes, nothing a shell would
 * expand) starts from one, which runs SCRIPT with the ARGs in the interpreter it has up. The
 * zygote is the buildpack's own warm/ program, mounted read-only at /opt/skiff/. */
static const struct executor__runtime {
    const char *name, *launcher, *script, *interpreter;
    const char *zygote, *preload; /* in the buildpacks folder; preload: what it compiles
                                     ahead, or NULL */
    /* settings the interpreter reads only as it starts: an environment with one of these
     * (but the one that the zygote takes on) is run afresh */
    const char *env_prefix, *env_taken;
} executor__runtimes[EXECUTOR_RUNTIMES] = {
    {"python", "python3", ".skiff/function/skiff_function.py", "/usr/bin/python3",
     "function-python/warm/zygote.py", "function-python/lib/skiff_function.py", "PYTHON",
     "PYTHONUNBUFFERED"},
    {"node", "node", ".skiff/function/skiff_function.js", "/usr/bin/node",
     "function-node/warm/zygote.js", NULL, "NODE_", "NODE_ENV"},
};

/* Whether env holds a setting runtime's zygote cannot take on. */
static bool executor__runtime_refuses(const struct executor__runtime *rt, char *const *env)
{
    size_t plen = strlen(rt->env_prefix), tlen = strlen(rt->env_taken);
    for (; env && *env; env++)
        if (!strncmp(*env, rt->env_prefix, plen) &&
            !(!strncmp(*env, rt->env_taken, tlen) && (*env)[tlen] == '='))
            return true;
    return false;
}

/* The runtime whose warm containers can run command, with the words it is made of in argv
 * (owned by *storage, NULL-terminated), or -1. */
static int executor__runtime_of(const char *command, char ***argv, char **storage)
{
    char *copy = xstrdup(command);
    size_t n = 0, cap = 8;
    char **words = xcalloc(cap + 1, sizeof *words);
    char *p = copy;
    bool ok = true;
    while (ok && *p) {
        bool quoted = *p == '\'';
        char *start = quoted ? p + 1 : p;
        char *end = start;
        while (*end && (quoted ? *end != '\'' : *end != ' '))
            end++;
        ok = end > start && (!quoted || *end == '\'');
        for (char *c = start; ok && c < end; c++)
            ok = isalnum((unsigned char)*c) || strchr("._/:=-", *c);
        if (!ok)
            break;
        if (n == cap)
            words = xrealloc(words, ((cap *= 2) + 1) * sizeof *words);
        words[n++] = start;
        p = end + (quoted ? 1 : 0);
        ok = *p == ' ' || !*p;
        if (*p == ' ')
            *p++ = '\0';
        if (quoted)
            end[0] = '\0';
    }
    words[n] = NULL;
    for (int r = 0; ok && r < EXECUTOR_RUNTIMES && n >= 2; r++)
        if (!strcmp(words[0], executor__runtimes[r].launcher) &&
            !strcmp(words[1], executor__runtimes[r].script)) {
            *argv = words;
            *storage = copy;
            return r;
        }
    free(words);
    free(copy);
    return -1;
}

static int executor__runtime_of_command(const char *command)
{
    char **argv = NULL, *storage = NULL;
    int r = executor__runtime_of(command, &argv, &storage);
    free(argv);
    free(storage);
    return r;
}

/* The config of a container, written in its folder where skiff-init reads it: an instance's
 * (hostname its guid, its droplet), or a warm one's (app_dir NULL: no droplet yet). */
static int executor__write_container_config(struct executor *ex, const char *dir,
                                            const char *hostname, const char *app_dir, int runtime,
                                            int slot, int disk_mb, const struct cgroup *cg,
                                            const struct container_sidecar *sidecars,
                                            size_t n_sidecars, const struct instance *image,
                                            char **path_out)
{
    struct container_mount droplet = {.source = (char *)app_dir,
                                      .target = CONTAINER_APP_DIR,
                                      .kind = CONTAINER_MOUNT_OVERLAY};
    /* a runtime's zygote and what it preloads, read-only at /opt/skiff/ */
    struct container_mount runtime_files[2];
    size_t n_runtime_files = 0;
    char *program[3] = {NULL, NULL, NULL};
    if (!app_dir && runtime >= 0) {
        const struct executor__runtime *rt = &executor__runtimes[runtime];
        const char *files[2] = {rt->zygote, rt->preload};
        n_runtime_files = rt->preload ? 2 : 1;
        for (size_t i = 0; i < n_runtime_files; i++)
            runtime_files[i] = (struct container_mount){
                .source = xasprintf("%s/%s", ex->runtimes_dir, files[i]),
                .target = xasprintf("/opt/skiff/%s", strrchr(files[i], '/') + 1),
                .kind = CONTAINER_MOUNT_RO};
        program[0] = (char *)rt->interpreter;
        program[1] = runtime_files[0].target;
    }
    struct container_config cfg = {
        .hostname = (char *)hostname,
        .stack = ex->stack_dir,
        .scratch = (char *)dir,
        .disk_mb = disk_mb,
        .disk_pool = ex->disk_pool,
        .seccomp_bpf = ex->seccomp_bpf,
        .uid_base = ex->uid_base,
        .net_pool = ex->net_pool_text,
        .net_slot = slot,
        .cwd = CONTAINER_APP_DIR,
        .cgroup_procs = cg ? (char **)cgroup_join_files(cg) : NULL,
        .mounts = app_dir      ? &droplet
                  : program[0] ? runtime_files
                               : NULL,
        .n_mounts = app_dir ? 1 : n_runtime_files,
        .warm_socket = app_dir ? NULL : (char *)EXECUTOR_WARM_SOCKET,
        .warm_program = program[0] ? program : NULL,
        .sidecars = (struct container_sidecar *)sidecars,
        .n_sidecars = n_sidecars,
    };
    if (image) { /* its layers are all of it: no droplet */
        cfg.image_layers = image->image_layers;
        cfg.cwd = image->cwd;
        cfg.mounts = NULL;
        cfg.n_mounts = 0;
        cfg.user_uid = image->user_uid;
        cfg.user_gid = image->user_gid;
    }
    char *text = container_config_to_json(&cfg);
    for (size_t i = 0; i < n_runtime_files; i++) {
        free(runtime_files[i].source);
        free(runtime_files[i].target);
    }
    char *path = xasprintf("%s/container.json", dir);
    int rc = file_replace(path, text, strlen(text), 0600);
    free(text);
    if (rc < 0) {
        free(path);
        return rc;
    }
    *path_out = path;
    return 0;
}

#define EXECUTOR_ARGV_MAX 64 /* an image's Entrypoint and Cmd words count too */

/* Sidecar k's own cgroup under the instance's, limited to its memory (Cloud Foundry's
 * sidecar `memory`), so that a sidecar past it is what the kernel kills, never the program for
 * it. Only with cgroup v1: v2 lets a cgroup that holds processes (the instance's) have no
 * children with limits, so there the sidecar shares the instance's limit. 0 or a negative
 * errno. */
static int executor__sidecar_cgroup(struct instance *inst, size_t k)
{
    if (!inst->sidecar_cgs || inst->sidecar_cgs[k] || !inst->cg ||
        inst->sidecar_memory_mb[k] <= 0 || strcmp(cgroup_mode(), "v1"))
        return 0;
    char name[8 + CONTAINER_SIDECAR_NAME_MAX + 1];
    snprintf(name, sizeof name, "sidecar-%s", inst->sidecars[k].name);
    struct cgroup *cg = NULL;
    int rc = cgroup_create_child(inst->cg, name, &cg);
    if (rc == 0)
        rc = cgroup_set_limits(cg, inst->sidecar_memory_mb[k], 0);
    if (rc < 0) {
        cgroup_destroy(cg);
        log_warning("instance %s: cannot make sidecar %s's cgroup: %s", inst->guid,
                    inst->sidecars[k].name, skiff_strerror(rc));
        return rc;
    }
    inst->sidecar_cgs[k] = cg;
    return 0;
}

/* The sidecar the kernel killed for its own memory limit: a reason naming it, or NULL. */
static const char *executor__sidecar_oom(struct instance *inst)
{
    for (size_t k = 0; inst->sidecar_cgs && k < inst->n_sidecars; k++)
        if (inst->sidecar_cgs[k] && cgroup_oom_killed(inst->sidecar_cgs[k])) {
            snprintf(inst->sidecar_oom_reason, sizeof inst->sidecar_oom_reason,
                     "sidecar %s out of memory (its limit: %d MB)", inst->sidecars[k].name,
                     inst->sidecar_memory_mb[k]);
            return inst->sidecar_oom_reason;
        }
    return NULL;
}

/* The argv that runs the instance's command in its isolation: skiff-init with the
 * container's config, or (host processes) a shell that joins the cgroup first. The strings
 * that argv borrows from are kept in owned[0..1] (the caller frees them). */
static int executor__instance_argv(struct instance *inst, const char **argv, int *argc,
                                   char **owned)
{
    char *command = proc_exec_form(inst->command);
    owned[0] = command;
    if (inst->ex->isolation == EXECUTOR_CONTAINER) {
        /* a sidecar's command is run as the instance's is: its own end is what is told */
        struct container_sidecar *sidecars = xcalloc(inst->n_sidecars + 1, sizeof *sidecars);
        for (size_t k = 0; k < inst->n_sidecars; k++) {
            int rc = executor__sidecar_cgroup(inst, k);
            if (rc < 0) {
                for (size_t j = 0; j < k; j++)
                    free(sidecars[j].command);
                free(sidecars);
                return rc;
            }
            sidecars[k] = (struct container_sidecar){
                .name = inst->sidecars[k].name,
                .command = proc_exec_form(inst->sidecars[k].command),
                .cgroup_procs =
                    inst->sidecar_cgs[k] ? (char **)cgroup_join_files(inst->sidecar_cgs[k]) : NULL};
        }
        int rc = executor__write_container_config(
            inst->ex, inst->scratch_dir, inst->guid, inst->app_dir, -1, inst->port, inst->disk_mb,
            inst->cg, sidecars, inst->n_sidecars, inst->image_layers ? inst : NULL, &owned[1]);
        for (size_t k = 0; k < inst->n_sidecars; k++)
            free(sidecars[k].command);
        free(sidecars);
        if (rc < 0)
            return rc;
        argv[(*argc)++] = inst->ex->init_path;
        argv[(*argc)++] = "--config";
        argv[(*argc)++] = owned[1];
        argv[(*argc)++] = "--";
        if (inst->argv) { /* an image's own command: it may have no shell */
            for (char **w = inst->argv; *w; w++) {
                if (*argc >= EXECUTOR_ARGV_MAX - 1)
                    return -E2BIG;
                argv[(*argc)++] = *w;
            }
        } else {
            argv[(*argc)++] = "/bin/sh";
            argv[(*argc)++] = "-c";
            argv[(*argc)++] = command;
        }
    } else {
        argv[(*argc)++] = "/bin/sh";
        argv[(*argc)++] = "-c";
        if (inst->cg) {
            argv[(*argc)++] = executor__join_script;
            argv[(*argc)++] = "skiff-instance";
            argv[(*argc)++] = command;
            for (const char *const *f = cgroup_join_files(inst->cg);
                 *f && *argc < EXECUTOR_ARGV_MAX - 1; f++)
                argv[(*argc)++] = *f;
        } else {
            argv[(*argc)++] = command;
        }
    }
    argv[*argc] = NULL;
    return 0;
}

static int process_driver_start(struct instance *inst)
{
    int rc = cgroup_create(inst->guid, inst->memory_mb, inst->pids_max, &inst->cg);
    if (rc < 0)
        inst->cg = NULL; /* no usable cgroups here: a plain process group */

    const char *argv[EXECUTOR_ARGV_MAX];
    int argc = 0;
    char *owned[2] = {NULL, NULL};
    rc = executor__instance_argv(inst, argv, &argc, owned);
    static char *const empty_env[] = {NULL};
    struct proc_options opt = {
        .argv = argv,
        .env = inst->env ? inst->env : empty_env,
        .cwd = inst->app_dir,
        .on_line = executor__instance_output,
        .on_exit = executor__instance_exited,
        .ctx = inst,
    };
    if (rc == 0)
        rc = proc_spawn(inst->ex->loop, &opt, &inst->proc);
    free(owned[0]);
    free(owned[1]);
    if (rc == 0)
        inst->pid = proc_pid(inst->proc);
    if (rc < 0) {
        cgroup_destroy(inst->cg);
        inst->cg = NULL;
    }
    return rc;
}

static void process_driver_signal(struct instance *inst, int sig)
{
    if (inst->proc)
        proc_signal_group(inst->proc, sig);
    if (sig == SIGKILL && inst->cg)
        cgroup_kill_all(inst->cg);
}

static bool process_driver_oom_killed(struct instance *inst)
{
    return inst->cg && cgroup_oom_killed(inst->cg);
}

static bool process_driver_pids_limited(struct instance *inst)
{
    return inst->cg && cgroup_pids_limited(inst->cg);
}

/* utime + stime of one process and its resident set, when no cgroup measures the group. */
static void executor__proc_usage(int pid, uint64_t *cpu_ns, uint64_t *memory_bytes)
{
    *cpu_ns = 0;
    *memory_bytes = 0;
    char path[64], *text = NULL;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (file_read(path, &text, NULL) == 0) {
        char *p = strrchr(text, ')'); /* the command name may hold spaces */
        unsigned long long utime = 0, stime = 0;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                        &stime) == 2)
            *cpu_ns = (utime + stime) * (1000000000ULL / (uint64_t)sysconf(_SC_CLK_TCK));
        free(text);
    }
    snprintf(path, sizeof(path), "/proc/%d/statm", pid);
    if (file_read(path, &text, NULL) == 0) {
        unsigned long long size = 0, resident = 0;
        if (sscanf(text, "%llu %llu", &size, &resident) == 2)
            *memory_bytes = resident * (uint64_t)sysconf(_SC_PAGESIZE);
        free(text);
    }
}

static void process_driver_usage(struct instance *inst, uint64_t *cpu_ns, uint64_t *memory_bytes)
{
    if (inst->cg)
        cgroup_usage(inst->cg, cpu_ns, memory_bytes);
    else if (inst->pid > 0)
        executor__proc_usage(inst->pid, cpu_ns, memory_bytes);
}

/* Inodes of the sockets listening on port (IPv4 and IPv6); returns how many. */
static size_t executor__listen_inodes(int port, unsigned long *inodes, size_t max)
{
    size_t n = 0;
    const char *tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    for (size_t t = 0; t < ARRAY_SIZE(tables); t++) {
        FILE *f = fopen(tables[t], "re");
        if (!f)
            continue;
        char line[512];
        if (!fgets(line, sizeof(line), f)) { /* the header */
            fclose(f);
            continue;
        }
        while (n < max && fgets(line, sizeof(line), f)) {
            /* "  0: 0100007F:1F90 00000000:0000 0A ... uid timeout inode" */
            char local[64];
            unsigned state;
            unsigned long inode;
            if (sscanf(line, "%*s %63s %*s %x %*s %*s %*s %*s %*s %lu", local, &state, &inode) != 3)
                continue;
            const char *colon = strrchr(local, ':');
            if (state == 0x0A && colon && strtol(colon + 1, NULL, 16) == port)
                inodes[n++] = inode;
        }
        fclose(f);
    }
    return n;
}

/* The pids of the instance: its cgroup's members, or else its process group's. */
static size_t executor__instance_pids(struct instance *inst, int *pids, size_t max)
{
    size_t n = 0;
    if (inst->cg) {
        FILE *f = fopen(cgroup_join_files(inst->cg)[0], "re");
        int pid;
        while (f && n < max && fscanf(f, "%d", &pid) == 1)
            pids[n++] = pid;
        if (f)
            fclose(f);
        return n;
    }
    if (inst->pid <= 0)
        return 0;
    int group = inst->pid;
    uv_fs_t req;
    uv_dirent_t ent;
    if (uv_fs_scandir(NULL, &req, "/proc", 0, NULL) < 0)
        return 0;
    /* read to the end: libuv leaks the last entry when a scan stops right on it */
    while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
        int pid = atoi(ent.name);
        if (pid <= 0 || n == max)
            continue;
        char path[64], *text = NULL;
        snprintf(path, sizeof(path), "/proc/%d/stat", pid);
        if (file_read(path, &text, NULL) != 0)
            continue;
        const char *p = strrchr(text, ')');
        int pgrp = 0;
        if (p && sscanf(p + 2, "%*c %*d %d", &pgrp) == 1 && pgrp == group)
            pids[n++] = pid;
        free(text);
    }
    uv_fs_req_cleanup(&req);
    return n;
}

static bool process_driver_listens_on(struct instance *inst, int port)
{
    if (inst->ex->isolation == EXECUTOR_CONTAINER)
        return true; /* its address is its own: nothing else can listen there */
    unsigned long inodes[16];
    size_t ninodes = executor__listen_inodes(port, inodes, ARRAY_SIZE(inodes));
    if (ninodes == 0)
        return false;
    int pids[256];
    size_t npids = executor__instance_pids(inst, pids, ARRAY_SIZE(pids));
    for (size_t i = 0; i < npids; i++) {
        char dir[64];
        snprintf(dir, sizeof(dir), "/proc/%d/fd", pids[i]);
        uv_fs_t req;
        uv_dirent_t ent;
        if (uv_fs_scandir(NULL, &req, dir, 0, NULL) < 0)
            continue;
        bool found = false;
        while (uv_fs_scandir_next(&req, &ent) != UV_EOF) { /* to the end, as above */
            if (found)
                continue;
            char link[96], target[64];
            snprintf(link, sizeof(link), "%s/%s", dir, ent.name);
            ssize_t len = readlink(link, target, sizeof(target) - 1);
            if (len <= 0)
                continue;
            target[len] = '\0';
            unsigned long inode;
            if (sscanf(target, "socket:[%lu]", &inode) != 1)
                continue;
            for (size_t k = 0; k < ninodes && !found; k++)
                found = inodes[k] == inode;
        }
        uv_fs_req_cleanup(&req);
        if (found)
            return true;
    }
    return false;
}

static void process_driver_cleanup(struct instance *inst)
{
    cgroup_destroy(inst->cg);
    inst->cg = NULL;
}

static const struct executor__driver executor__process_driver = {
    .name = "process",
    .start = process_driver_start,
    .signal = process_driver_signal,
    .oom_killed = process_driver_oom_killed,
    .pids_limited = process_driver_pids_limited,
    .usage = process_driver_usage,
    .listens_on = process_driver_listens_on,
    .cleanup = process_driver_cleanup,
};

/* ---- shim driver: instances that outlive the daemon -------------------------------------- */

/* Our end of one shim's socket (protocol in shim/shim.h). Lives until its handle is closed;
 * inst is NULL once the instance is gone. A shim we started is waited for by shim__reap. */
struct executor__shim {
    struct executor__shim *prev, *next;
    struct executor *ex;
    struct instance *inst;
    uv_pipe_t pipe;
    int handles;
    bool pipe_closed;
    bool connected;
    int pending_sig; /* asked for before the connection was up: sent once it is */
    struct buf in;   /* what the shim sent, up to a line */
    struct executor__warm *warm; /* a warm container's shim (inst NULL), until a start */
};

#define SHIM_LINE_MAX (PROC_LINE_MAX + 64) /* an output line and its header */

static void shim__unref(struct executor__shim *sh)
{
    if (--sh->handles > 0)
        return;
    struct executor *ex = sh->ex; /* NULL once the executor is gone, and its list with it */
    if (ex) {
        if (sh->prev)
            sh->prev->next = sh->next;
        else
            ex->shims = sh->next;
        if (sh->next)
            sh->next->prev = sh->prev;
    }
    buf_free(&sh->in);
    free(sh);
}

static void shim__pipe_closed(uv_handle_t *h)
{
    shim__unref(h->data);
}

static void shim__close_pipe(struct executor__shim *sh)
{
    if (sh->pipe_closed)
        return;
    sh->pipe_closed = true;
    uv_close((uv_handle_t *)&sh->pipe, shim__pipe_closed);
}

/* One short command; the socket's buffer is empty enough for it in practice. */
static bool shim__send(struct executor__shim *sh, const char *msg)
{
    if (!sh || sh->pipe_closed)
        return false;
    uv_buf_t b = uv_buf_init((char *)msg, (unsigned)strlen(msg));
    return uv_try_write((uv_stream_t *)&sh->pipe, &b, 1) == (int)b.len;
}

/* The shim is gone without telling how the instance ended (killed, or it never started). */
static void warm__ended(struct executor__warm *w, const char *why);

static void shim__lost(struct executor__shim *sh)
{
    struct instance *inst = sh->inst;
    shim__close_pipe(sh);
    if (sh->warm)
        warm__ended(sh->warm, "its shim went away");
    if (!inst)
        return;
    if (!inst->kill_reason && !inst->stop_requested)
        inst->kill_reason = "its supervisor (skiff-shim) ended";
    if (inst->pid > 0)
        kill(-inst->pid, SIGKILL);
    executor__instance_exited(inst, -1, SIGKILL);
}

static void warm__message(struct executor__warm *w, char *line, size_t len);

static void shim__message(struct executor__shim *sh, char *line, size_t len)
{
    struct instance *inst = sh->inst;
    if (sh->warm)
        warm__message(sh->warm, line, len);
    if (!inst)
        return;
    int a = 0, b = 0, c = 0, d = 0;
    if (line[0] == 'O' && len >= 4 && (line[2] == '1' || line[2] == '2')) {
        executor__instance_output(inst, line[2] - '0', line + 4, len - 4);
    } else if (line[0] == 'H' && sscanf(line + 1, "%d %d %d %d", &a, &b, &c, &d) == 4) {
        if (a > 0)
            inst->pid = a;
    } else if (line[0] == 'X' && sscanf(line + 1, "%d %d", &a, &b) == 2) {
        executor__instance_exited(inst, a, b);
    }
}

static void shim__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct executor__shim *sh = h->data;
    (void)suggested;
    buf_reserve(&sh->in, SHIM_LINE_MAX);
    buf->base = sh->in.data + sh->in.len;
    buf->len = sh->in.cap - 1 - sh->in.len;
}

static void shim__read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct executor__shim *sh = stream->data;
    (void)buf;
    if (nread < 0) {
        shim__lost(sh);
        return;
    }
    sh->in.len += (size_t)nread;
    sh->in.data[sh->in.len] = '\0';
    size_t pos = 0, len;
    char *line;
    while (!sh->pipe_closed && (line = buf_next_line(&sh->in, &pos, &len)))
        shim__message(sh, line, len);
    if (sh->pipe_closed)
        return;
    buf_consume(&sh->in, pos);
    if (sh->in.len >= SHIM_LINE_MAX)
        buf_reset(&sh->in); /* longer than any message: not from a shim of ours */
}

static void shim__connected(uv_connect_t *req, int status)
{
    struct executor__shim *sh = req->data;
    free(req);
    if (sh->pipe_closed)
        return;
    if (status < 0 || uv_read_start((uv_stream_t *)&sh->pipe, shim__alloc, shim__read) < 0) {
        shim__lost(sh);
        return;
    }
    sh->connected = true;
    if (sh->pending_sig && sh->inst)
        sh->inst->ex->driver->signal(sh->inst, sh->pending_sig);
}

/* inst is NULL for a warm container's shim */
static struct executor__shim *shim__new(struct executor *ex, struct instance *inst)
{
    struct executor__shim *sh = xcalloc(1, sizeof *sh);
    sh->ex = ex;
    sh->inst = inst;
    uv_pipe_init(ex->loop, &sh->pipe, 0);
    sh->pipe.data = sh;
    sh->handles = 1;
    sh->next = ex->shims;
    if (ex->shims)
        ex->shims->prev = sh;
    ex->shims = sh;
    if (inst)
        inst->shim = sh;
    return sh;
}

static char *shim__pid_path(struct executor *ex, const char *kind, const char *guid)
{
    return xasprintf("%s/run/%s-%s.pid", ex->home, kind, guid);
}

/* The listening socket the shim will own: bound before it starts, so our connect cannot
 * come too early and a second skiffd cannot take the name. */
static int shim__listen(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path))
        return -ENAMETOOLONG;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    unlink(path);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || chmod(path, 0600) < 0 ||
        listen(fd, 8) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

/* SIGCHLD: the shims this executor spawned that have ended are waited for (libuv waits only
 * for its own process handles, and a shim is spawned without one: shim__spawn). */
static void shim__reap(uv_signal_t *h, int sig)
{
    struct executor *ex = h->data;
    (void)sig;
    for (size_t i = 0; i < ex->n_spawned;) {
        if (waitpid(ex->spawned[i], NULL, WNOHANG) != 0) /* ended, or not ours any more */
            ex->spawned[i] = ex->spawned[--ex->n_spawned];
        else
            i++;
    }
}

/* Runs the shim in a session of its own with the listening socket as fd 3: posix_spawn, so
 * that skiffd is not copied (a fork of skiffd held its loop 1.3 to 8 ms per shim, measured
 * with bench/coldstart/trace.py; posix_spawn shares the memory until the exec). */
static int shim__exec(struct executor *ex, const char *const *argv, char **env, const char *cwd,
                      int listen_fd, pid_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&at);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, listen_fd, 3); /* clears close-on-exec, even on 3 */
    if (cwd)
        posix_spawn_file_actions_addchdir_np(&fa, cwd);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setsigdefault(&at, &all);
    posix_spawnattr_setflags(&at,
                             POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    int rc = -posix_spawn(pid, ex->shim_path, &fa, &at, (char *const *)argv, env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    if (rc == 0) {
        if (ex->n_spawned == ex->cap_spawned) {
            ex->cap_spawned = ex->cap_spawned ? 2 * ex->cap_spawned : 16;
            ex->spawned = xrealloc(ex->spawned, ex->cap_spawned * sizeof *ex->spawned);
        }
        ex->spawned[ex->n_spawned++] = *pid;
    }
    return rc;
}

/* Starts skiff-shim for what is named `name` (an instance's guid, or a warm container's id)
 * in folder dir, running cmd with env; its socket bound ahead at dir/shim.sock and connected
 * to (sh->pipe). Writes run/shim-NAME.pid. */
static int shim__spawn(struct executor__shim *sh, const char *dir, const char *name,
                       const char *const *cmd, char **env, const char *cwd)
{
    struct executor *ex = sh->ex;
    char *sock_path = xasprintf("%s/%s", dir, SHIM_SOCKET_NAME);
    char *pid_path = shim__pid_path(ex, "instance", name);
    int rc = shim__listen(sock_path);
    if (rc < 0)
        goto out;
    int listen_fd = rc;
    const char *argv[EXECUTOR_ARGV_MAX + 6];
    int argc = 0;
    argv[argc++] = ex->shim_path;
    argv[argc++] = "--listen-fd";
    argv[argc++] = "3";
    argv[argc++] = "--pid-file";
    argv[argc++] = pid_path;
    argv[argc++] = "--";
    for (; *cmd && argc < EXECUTOR_ARGV_MAX + 5; cmd++)
        argv[argc++] = *cmd;
    argv[argc] = NULL;
    static char *const empty_env[] = {NULL};
    start_trace("make: executor: shim socket bound");
    pid_t pid = 0;
    rc = shim__exec(ex, argv, env ? env : (char **)empty_env, cwd, listen_fd, &pid);
    start_trace("make: executor: shim exec'd");
    close(listen_fd);
    if (rc < 0) {
        unlink(sock_path);
        goto out;
    }
    /* what cleanup finds when everything else is gone; removed when the instance ends */
    char *shim_pid_path = shim__pid_path(ex, "shim", name);
    char pid_text[32];
    int n = snprintf(pid_text, sizeof pid_text, "%d\n", (int)pid);
    file_replace(shim_pid_path, pid_text, (size_t)n, 0644);
    free(shim_pid_path);
    uv_connect_t *req = xcalloc(1, sizeof *req);
    req->data = sh;
    uv_pipe_connect(req, &sh->pipe, sock_path, shim__connected);
    rc = 0;
out:
    free(sock_path);
    free(pid_path);
    return rc;
}

static int warm__start(struct instance *inst);

static void executor__scratch_make(struct instance *inst)
{
    char *tmp = xasprintf("%s/tmp", inst->scratch_dir);
    mkdir_p(tmp, 0700);
    free(tmp);
}

static int shim_driver_start(struct instance *inst)
{
    int rc = warm__start(inst);
    if (rc != -ENOENT)
        return rc; /* started warm, or a warm container meant for it failed */
    executor__scratch_make(inst); /* made at start only when no warm container was reserved */
    rc = cgroup_create(inst->guid, inst->memory_mb, inst->pids_max, &inst->cg);
    if (rc < 0)
        inst->cg = NULL; /* no usable cgroups here: a plain process group */
    const char *cmd[EXECUTOR_ARGV_MAX];
    int argc = 0;
    char *owned[2] = {NULL, NULL};
    rc = executor__instance_argv(inst, cmd, &argc, owned);
    if (rc == 0) {
        struct executor__shim *sh = shim__new(inst->ex, inst);
        rc = shim__spawn(sh, inst->scratch_dir, inst->guid, cmd, inst->env, inst->app_dir);
        if (rc < 0) {
            sh->inst = NULL;
            inst->shim = NULL;
            shim__close_pipe(sh);
        }
    }
    if (rc < 0) {
        cgroup_destroy(inst->cg);
        inst->cg = NULL;
    }
    free(owned[0]);
    free(owned[1]);
    return rc;
}

static void shim_driver_signal(struct instance *inst, int sig)
{
    char msg[32];
    if (sig == SIGTERM)
        snprintf(msg, sizeof msg, "T %d\n", inst->ex->grace_ms);
    else
        snprintf(msg, sizeof msg, "S %d\n", sig);
    struct executor__shim *sh = inst->shim;
    if (sh && !sh->connected && !sh->pipe_closed) {
        if (sh->pending_sig != SIGKILL)
            sh->pending_sig = sig; /* the shim has not answered yet */
    } else if (!shim__send(sh, msg) && inst->pid > 0) {
        kill(-inst->pid, sig); /* without its shim, the instance is reached directly */
    }
    if (sig == SIGKILL && inst->cg)
        cgroup_kill_all(inst->cg);
}

static void shim__forget(struct instance *inst, bool ended)
{
    struct executor__shim *sh = inst->shim;
    if (!sh)
        return;
    inst->shim = NULL;
    sh->inst = NULL;
    if (ended)
        shim__send(sh, "A\n"); /* the shim removes its files and exits */
    shim__close_pipe(sh);
}

static void shim_driver_cleanup(struct instance *inst)
{
    shim__forget(inst, true);
    char *path = shim__pid_path(inst->ex, "shim", inst->guid);
    unlink(path);
    free(path);
    cgroup_destroy(inst->cg);
    inst->cg = NULL;
}

static void shim_driver_release(struct instance *inst)
{
    shim__forget(inst, false);
    cgroup_release(inst->cg);
    inst->cg = NULL;
}

static const struct executor__driver executor__shim_driver = {
    .name = "shim",
    .start = shim_driver_start,
    .signal = shim_driver_signal,
    .oom_killed = process_driver_oom_killed,
    .pids_limited = process_driver_pids_limited,
    .usage = process_driver_usage,
    .listens_on = process_driver_listens_on,
    .cleanup = shim_driver_cleanup,
    .release = shim_driver_release,
};

/* ---- warm containers: made ahead, so that a start takes milliseconds ------------------- */


static int executor__slot_allocate(struct executor *ex);

/* A slot of ours goes back: to us and to the other daemons on the machine. */
static void executor__slot_free(struct executor *ex, int slot)
{
    ex->slot_used[slot] = 0;
    net_slot_release(slot);
}

/* One warm container (container.h) kept for the next instance of the default disk size: its
 * folder home/instances/warm-ID, its cgroup warm-ID, its network slot and its own shim. The
 * slot is handed out for a start (executor_port_allocate_for), executor_start finds it by the
 * slot and the instance takes it whole: folder and pid files renamed to the instance's guid,
 * the cgroup keeping its name. A warm container is never given to a second instance. */
struct warm__job;
struct executor__warm {
    struct executor__warm *next;
    struct executor *ex;
    char id[48];
    char *dir;
    int runtime; /* executor__runtimes' index of the program it runs ahead, or -1 */
    int slot;
    int pid;       /* its keeper (skiff-init), once the shim said */
    bool reserved; /* its slot was handed out for a start */
    struct cgroup *cg;     /* NULL while job makes it */
    struct warm__job *job; /* its folder and cgroup being made on the thread pool */
    struct executor__shim *sh;
    char last_line[160]; /* what it said last: why it ended, when it ends unused */
};

/* Making a cgroup takes the kernel's cgroup mutex, which any process joining a cgroup on the
 * machine holds for an RCU grace period (10-15 ms here, v1): skiffd's loop does not make a
 * warm container's, the thread pool does (this job), so that a start, a probe or a request
 * never waits behind a warm container being made (bench/coldstart/cgroup_lock.py). Removing
 * one stays on the loop: done on the thread pool, an ended instance's removal ran beside the
 * next start and made the slowest starts slower (bench/coldstart/README.md). */
struct warm__job {
    uv_work_t work;
    struct executor__warm *w; /* NULL once it was discarded meanwhile */
    char id[48];
    char *dir;
    struct cgroup *cg;
    int rc;
};

/* An instance's cgroup is named after it, but for one that took a warm container: that
 * keeps the name it was made with (warm__start), written in the container's folder, which
 * becomes the instance's. */
#define EXECUTOR_CGROUP_NAME_FILE "cgroup"

static int executor__cgroup_name_keep(const char *scratch, const char *name)
{
    char *path = xasprintf("%s/%s", scratch, EXECUTOR_CGROUP_NAME_FILE);
    int rc = file_replace(path, name, strlen(name), 0600);
    free(path);
    return rc;
}

/* Whether name is what warm__start names a warm container's cgroup: "warm-" and a guid. */
static bool executor__warm_name(const char *name)
{
    static const char prefix[] = "warm-";
    if (strncmp(name, prefix, sizeof prefix - 1))
        return false;
    const char *g = name + sizeof prefix - 1;
    return strlen(g) == 36 && strspn(g, "0123456789abcdef-") == 36;
}

/* The name of the cgroup of the instance whose folder is scratch (caller frees): its guid,
 * or the warm container's name the folder keeps. Anything else found there is not taken (the
 * cgroup named is ended with the instance: it must be the instance's own, never another's). */
static char *executor__cgroup_name(const char *scratch, const char *guid)
{
    char *path = xasprintf("%s/%s", scratch, EXECUTOR_CGROUP_NAME_FILE);
    char *name = NULL;
    if (file_read(path, &name, NULL) < 0 || !executor__warm_name(name)) {
        if (name)
            log_warning("instance %s: the cgroup its folder names is no warm container's: "
                        "its own is used",
                        guid);
        free(name);
        name = xstrdup(guid);
    }
    free(path);
    return name;
}

static void warm__unlink(struct executor__warm *w)
{
    for (struct executor__warm **p = &w->ex->warm; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            break;
        }
}

static void warm__refill_soon(struct executor *ex, uint64_t delay_ms);

/* Ends it and everything it holds; the slot comes free once its namespace is gone. */
static void warm__discard(struct executor__warm *w)
{
    struct executor *ex = w->ex;
    warm__unlink(w);
    if (w->sh) {
        w->sh->warm = NULL;
        shim__send(w->sh, "S 9\nA\n"); /* the shim ends its keeper, then itself */
        shim__close_pipe(w->sh);
    }
    if (w->pid > 0)
        kill(-w->pid, SIGKILL);
    if (w->job)
        w->job->w = NULL; /* it removes what it made once done */
    cgroup_destroy(w->cg);
    rm_rf(w->dir);
    char *shim_pid = shim__pid_path(ex, "shim", w->id);
    unlink(shim_pid);
    free(shim_pid);
    if (w->slot >= 0 && w->slot < ex->slots)
        executor__slot_free(ex, w->slot);
    free(w->dir);
    free(w);
}

static void warm__ended(struct executor__warm *w, const char *why)
{
    struct executor *ex = w->ex;
    int kind = w->runtime;
    const char *what = kind >= 0 ? executor__runtimes[kind].name : "plain";
    log_error("a warm container (%s) ended before it was used (%s)%s%s", what, why,
              w->last_line[0] ? ": " : "", w->last_line);
    warm__discard(w);
    if (++ex->warm_failures[1 + kind] == WARM_FAILURES_MAX)
        log_error("%d warm containers (%s) in a row ended unused: no more of them are made; "
                  "instances start without them",
                  WARM_FAILURES_MAX, what);
    warm__refill_soon(ex, WARM_RETRY_MS);
}

static void warm__message(struct executor__warm *w, char *line, size_t len)
{
    int pid = 0, exited = 0;
    if (line[0] == 'H' && sscanf(line + 1, "%d %d", &pid, &exited) == 2) {
        w->pid = pid;
        if (exited)
            warm__ended(w, "it exited");
    } else if (line[0] == 'O' && len >= 4) {
        snprintf(w->last_line, sizeof w->last_line, "%.*s", (int)(len - 4), line + 4);
    } else if (line[0] == 'X') {
        warm__ended(w, "it exited");
    }
}

/* Ready for a start: made (its socket is there) and its shim connected. */
static bool warm__ready(struct executor__warm *w)
{
    if (w->reserved || !w->sh || !w->sh->connected || w->pid <= 0)
        return false;
    char *sock = xasprintf("%s/%s", w->dir, EXECUTOR_WARM_SOCKET);
    bool ready = access(sock, F_OK) == 0;
    free(sock);
    return ready;
}

static void warm__make_work(uv_work_t *work)
{
    struct warm__job *job = work->data;
    job->rc = mkdir_p(job->dir, 0700);
    if (job->rc == 0)
        job->rc = cgroup_create(job->id, 0, DEFAULT_PIDS_MAX, &job->cg);
    if (job->rc == 0)
        job->rc = executor__cgroup_name_keep(job->dir, job->id);
    start_trace("make: executor: folder, cgroup");
}

/* Its folder and cgroup are there: its config, then its shim, which makes the rest. */
static void warm__made(uv_work_t *work, int status)
{
    struct warm__job *job = work->data;
    struct executor__warm *w = job->w;
    if (!w) { /* discarded meanwhile */
        cgroup_destroy(job->cg);
        rm_rf(job->dir);
        free(job->dir);
        free(job);
        return;
    }
    struct executor *ex = w->ex;
    w->job = NULL;
    w->cg = job->cg;
    int rc = status < 0 ? status : job->rc;
    free(job->dir);
    free(job);
    char *config = NULL;
    if (rc == 0)
        rc = executor__write_container_config(ex, w->dir, "warm", NULL, w->runtime, w->slot,
                                              DEFAULT_DISK_MB, w->cg, NULL, 0, NULL, &config);
    start_trace("make: executor: config written");
    if (rc == 0) {
        const char *cmd[] = {ex->init_path, "--config", config, NULL};
        w->sh = shim__new(ex, NULL);
        w->sh->warm = w;
        rc = shim__spawn(w->sh, w->dir, w->id, cmd, NULL, w->dir);
        start_trace("make: executor: shim spawned");
        if (rc < 0) {
            w->sh->warm = NULL;
            shim__close_pipe(w->sh);
            w->sh = NULL;
        }
    }
    free(config);
    if (rc < 0) {
        char why[160];
        snprintf(why, sizeof why, "cannot make it: %s", skiff_strerror(rc));
        warm__ended(w, why);
    }
}

/* One more warm container of that kind, in the pool at once, ready once made. */
static int warm__add(struct executor *ex, int runtime)
{
    start_trace("make: executor: warm container wanted");
    int slot = executor__slot_allocate(ex);
    if (slot < 0)
        return slot;
    struct executor__warm *w = xcalloc(1, sizeof *w);
    w->ex = ex;
    w->slot = slot;
    w->runtime = runtime;
    char guid[37];
    uuid_generate_v4(guid);
    snprintf(w->id, sizeof w->id, "warm-%s", guid);
    w->dir = xasprintf("%s/instances/%s", ex->home, w->id);
    w->next = ex->warm;
    ex->warm = w;
    struct warm__job *job = xcalloc(1, sizeof *job);
    job->w = w;
    snprintf(job->id, sizeof job->id, "%s", w->id);
    job->dir = xstrdup(w->dir);
    job->work.data = job;
    w->job = job;
    if (uv_queue_work(ex->loop, &job->work, warm__make_work, warm__made) < 0) {
        warm__make_work(&job->work);
        warm__made(&job->work, 0);
    }
    return 0;
}

bool executor_warm_fits(uint64_t pool_bytes, uint64_t next_bytes, uint64_t budget_bytes)
{
    return pool_bytes <= budget_bytes && next_bytes <= budget_bytes - pool_bytes;
}

int executor_warm_target(int prewarm, const uint64_t *asked, size_t n, uint64_t now_ms,
                         int64_t window_ms)
{
    if (prewarm <= 0)
        return 0;
    int burst = 0;
    for (size_t i = 0; i < n; i++) {
        if (!asked[i] || asked[i] + (uint64_t)window_ms <= now_ms)
            continue;
        int within = 0;
        for (size_t k = 0; k < n; k++)
            within += asked[k] >= asked[i] && asked[k] < asked[i] + EXECUTOR_WARM_BURST_MS;
        burst = within > burst ? within : burst;
    }
    int most = prewarm > EXECUTOR_WARM_POOL_MAX ? prewarm : EXECUTOR_WARM_POOL_MAX;
    return burst < prewarm ? prewarm : burst > most ? most : burst;
}

/* How many warm containers of a kind the pool keeps now: --prewarm, or more after a burst
 * of starts asked for them (executor_warm_target). */
static int warm__target(struct executor *ex, int kind)
{
    return executor_warm_target(ex->prewarm, ex->warm_asked[1 + kind], EXECUTOR_WARM_POOL_MAX,
                                uv_now(ex->loop) + 1, ex->prewarm_window_ms);
}

/* A start asked for a warm container of a kind (taken or not): remembered for the pool's
 * size; the refill comes once the starts are up (warm__after_starts). */
static void warm__asked(struct executor *ex, int kind)
{
    unsigned *next = &ex->warm_asked_next[1 + kind];
    ex->warm_asked[1 + kind][*next] = uv_now(ex->loop) + 1;
    *next = (*next + 1) % EXECUTOR_WARM_POOL_MAX;
    warm__refill_soon(ex, WARM_AFTER_STARTS_MS);
}

/* An instance is up: when no other is starting, the refill runs a moment later. (Not when
 * one ends: the next start often comes right then.) */
static void warm__after_starts(struct executor *ex)
{
    for (struct instance *i = ex->instances; i; i = i->next)
        if (i->state == INSTANCE_STARTING && !i->final)
            return;
    warm__refill_soon(ex, WARM_AFTER_RUNNING_MS);
}

static bool warm__ready(struct executor__warm *w);

/* What the warm pool uses now, by its containers' cgroups; the measure of a ready one (its
 * program up and listening) raises the most its kind has used: the charge of the next one. */
static uint64_t warm__pool_bytes(struct executor *ex)
{
    uint64_t total = 0;
    for (struct executor__warm *w = ex->warm; w; w = w->next) {
        uint64_t cpu = 0, mem = 0;
        if (!w->cg || cgroup_usage(w->cg, &cpu, &mem) < 0)
            continue;
        total += mem;
        if (warm__ready(w) && mem > ex->warm_charge_seen[1 + w->runtime])
            ex->warm_charge_seen[1 + w->runtime] = mem;
    }
    return total;
}

/* Keeps the pool within its budget once measured: a container whose kind was not measured
 * before it was made may not fit; the newest that are not taken go. */
static uint64_t warm__trim(struct executor *ex)
{
    uint64_t total = warm__pool_bytes(ex);
    while (total > ex->prewarm_budget) {
        struct executor__warm *w = ex->warm; /* newest first */
        while (w && w->reserved)
            w = w->next;
        if (!w)
            break;
        uint64_t cpu = 0, mem = 0;
        if (w->cg)
            cgroup_usage(w->cg, &cpu, &mem);
        log_info("a warm container (%llu K) goes: the pool is over its memory budget "
                 "(%llu K of %llu K)",
                 (unsigned long long)(mem >> 10), (unsigned long long)(total >> 10),
                 (unsigned long long)(ex->prewarm_budget >> 10));
        warm__discard(w);
        total = total > mem ? total - mem : 0;
    }
    return total;
}

/* A pool grown by a burst of starts shrinks back once the burst is forgotten: the newest of
 * those not taken go first. Returns how many of the kind are left. */
static int warm__shrink(struct executor *ex, int kind, int have, int target)
{
    for (struct executor__warm *w = ex->warm, *next; w && have > target; w = next) {
        next = w->next;
        if (w->runtime != kind || w->reserved)
            continue;
        warm__discard(w);
        have--;
    }
    return have;
}

static void warm__refill(uv_timer_t *t)
{
    struct executor *ex = t->data;
    bool again = false, over = false, above = false;
    warm__trim(ex);
    /* prewarm plain ones, and prewarm of each runtime an instance has started with; more
     * while starts come in bursts (warm__target) */
    for (int kind = -1; kind < EXECUTOR_RUNTIMES; kind++) {
        if (kind >= 0 && !ex->runtime_wanted[kind])
            continue;
        int have = 0, coming = 0, target = warm__target(ex, kind);
        for (struct executor__warm *w = ex->warm; w; w = w->next)
            if (w->runtime == kind) {
                have++;
                coming += !w->reserved && !warm__ready(w);
            }
        have = warm__shrink(ex, kind, have, target);
        above |= target > ex->prewarm;
        /* the pool is measured again once those coming are up */
        again |= coming > 0;
        while (!ex->shutting_down && have < target &&
               ex->warm_failures[1 + kind] < WARM_FAILURES_MAX) {
            /* the first of a kind alone, measured once up before another is made; once its
             * size is known, those missing are made together (starts in quick succession
             * outran a refill of one at a time), each counted at that size until it is up.
             * The budget: what the pool uses, and the most one of this kind has used */
            uint64_t next = ex->warm_charge_seen[1 + kind];
            if (coming > 0 && next == 0)
                break;
            uint64_t pool = warm__pool_bytes(ex) + (uint64_t)coming * next;
            if (!executor_warm_fits(pool, next, ex->prewarm_budget)) {
                if (!ex->warm_budget_told)
                    log_info("warm containers: the pool's memory budget holds no more (%llu K "
                             "in use, %llu K the next, of %llu K)",
                             (unsigned long long)(pool >> 10), (unsigned long long)(next >> 10),
                             (unsigned long long)(ex->prewarm_budget >> 10));
                over = true;
                break;
            }
            if (warm__add(ex, kind) < 0)
                break;
            have++;
            coming++;
            again = true;
        }
    }
    ex->warm_budget_told = over;
    if (again) /* the next is made once this one is up and measured: a few ms */
        warm__refill_soon(ex, WARM_POLL_MS);
    else if (above) /* a pool grown by a burst: looked at again to shrink back */
        warm__refill_soon(ex, ex->prewarm_window_ms / 4 < WARM_SHRINK_CHECK_MS
                                  ? (uint64_t)ex->prewarm_window_ms / 4
                                  : WARM_SHRINK_CHECK_MS);
}

/* The refill runs within delay_ms (or sooner, when it was due sooner already). */
static void warm__refill_soon(struct executor *ex, uint64_t delay_ms)
{
    if (!ex->warm_timer || ex->shutting_down)
        return;
    if (uv_is_active((uv_handle_t *)ex->warm_timer) &&
        uv_timer_get_due_in(ex->warm_timer) <= delay_ms)
        return;
    uv_timer_start(ex->warm_timer, warm__refill, delay_ms, 0);
}

static void warm__discard_all(struct executor *ex)
{
    while (ex->warm)
        warm__discard(ex->warm);
}

static bool warm__is_ours(struct executor *ex, const char *name)
{
    for (struct executor__warm *w = ex->warm; w; w = w->next)
        if (!strcmp(w->id, name))
            return true;
    return false;
}

/* The instance takes the warm container reserved for its slot: -ENOENT when there is none
 * (it starts as any other), 0 when it runs, another error when the warm container failed
 * (it is gone then, and nothing of the instance runs). */
/* Whether a warm container is reserved for the instance on that slot. */
static bool warm__reserved_for(struct executor *ex, int slot)
{
    for (struct executor__warm *w = ex->warm; w; w = w->next)
        if (w->reserved && w->slot == slot)
            return true;
    return false;
}

static int warm__start(struct instance *inst)
{
    struct executor *ex = inst->ex;
    struct executor__warm *w = ex->warm;
    while (w && !(w->reserved && w->slot == inst->port))
        w = w->next;
    if (!w)
        return -ENOENT;
    warm__unlink(w);
    w->next = NULL;
    start_trace("executor: warm container found");
    char err[256] = "";
    int rc = inst->disk_mb == DEFAULT_DISK_MB && !inst->n_sidecars ? 0 : -EINVAL;
    if (rc < 0 && inst->n_sidecars)
        snprintf(err, sizeof err,
                 "it runs no sidecars (the instance's slot must come from "
                 "executor_port_allocate)");
    else if (rc < 0)
        snprintf(err, sizeof err, "it was made for %d MB of disk, not %d", DEFAULT_DISK_MB,
                 inst->disk_mb);
    /* the instance's folder, cgroup and pid files are the warm container's, renamed */
    rm_rf(inst->scratch_dir);
    if (rc == 0 && rename(w->dir, inst->scratch_dir) < 0) {
        rc = -errno;
        snprintf(err, sizeof err, "cannot rename its folder: %s", skiff_strerror(-errno));
    }
    start_trace("executor: folder renamed");
    if (rc == 0) {
        free(w->dir);
        w->dir = xstrdup(inst->scratch_dir);
        /* the cgroup keeps its name (the folder says it: executor__cgroup_name); a rename
         * would wait for the kernel's cgroup lock, which a warm container being made holds
         * for milliseconds while it joins its cgroups */
        rc = cgroup_set_limits(w->cg, inst->memory_mb, inst->pids_max);
        if (rc < 0)
            snprintf(err, sizeof err, "cannot set its cgroup's limits: %s", skiff_strerror(rc));
    }
    start_trace("executor: limits set");
    char *tmp = xasprintf("%s/tmp", inst->scratch_dir);
    mkdir_p(tmp, 0700);
    free(tmp);
    char *from = shim__pid_path(ex, "shim", w->id), *to = shim__pid_path(ex, "shim", inst->guid);
    if (rc == 0)
        (void)!rename(from, to);
    free(from);
    free(to);
    char *command = proc_exec_form(inst->command);
    char *shell[] = {"/bin/sh", "-c", command, NULL};
    char **words = NULL, *storage = NULL;
    if (rc == 0 && w->runtime >= 0 &&
        executor__runtime_of(inst->command, &words, &storage) != w->runtime) {
        rc = -EINVAL;
        snprintf(err, sizeof err, "its runtime is not the command's");
    }
    static char *const empty_env[] = {NULL};
    struct container_start start = {.hostname = inst->guid,
                                    .app_dir = inst->app_dir,
                                    .argv = words ? words : shell,
                                    .envp = inst->env ? inst->env : empty_env};
    /* an environment its runtime cannot take on: the command as it is, in the same container */
    if (w->runtime >= 0 && executor__runtime_refuses(&executor__runtimes[w->runtime], inst->env)) {
        start.argv = shell;
        start.afresh = true;
    }
    char *sock = xasprintf("%s/%s", inst->scratch_dir, EXECUTOR_WARM_SOCKET);
    start_trace("executor: renamed, limits set; sending the start");
    if (rc == 0)
        rc = container_warm_start(sock, &start, err, sizeof err);
    start_trace("executor: start sent");
    free(sock);
    free(command);
    free(words);
    free(storage);
    if (rc < 0) {
        log_error("instance %s cannot take its warm container: %s", inst->guid, err);
        warm__discard(w);
        warm__refill_soon(ex, WARM_RETRY_MS);
        return rc;
    }
    struct executor__shim *sh = w->sh;
    sh->warm = NULL;
    sh->inst = inst;
    inst->shim = sh;
    inst->cg = w->cg;
    inst->pid = w->pid;
    inst->warm_started = true;
    inst->warm_runtime = w->runtime >= 0 ? executor__runtimes[w->runtime].name : NULL;
    char *pid_path = shim__pid_path(ex, "instance", inst->guid);
    char *msg = xasprintf("P %s\n", pid_path);
    shim__send(sh, msg); /* its pid file follows the instance's name */
    free(msg);
    free(pid_path);
    ex->warm_failures[1 + w->runtime] = 0;
    free(w->dir);
    free(w);
    warm__refill_soon(ex, WARM_AFTER_STARTS_MS); /* or sooner: warm__after_starts */
    return 0;
}

/* ---- where instances are reached ------------------------------------------------------- */

static void executor__sockaddr(const struct executor *ex, int slot, int inside_port,
                               struct sockaddr_in *out)
{
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    if (ex->isolation == EXECUTOR_CONTAINER) {
        struct in_addr host;
        net_slot_addresses(&ex->net, slot, &host, &out->sin_addr);
        out->sin_port = htons((uint16_t)(inside_port > 0 ? inside_port : CONTAINER_PORT));
    } else {
        out->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        out->sin_port = htons((uint16_t)slot);
    }
}

void executor_endpoint(const struct executor *ex, int slot, struct instance_endpoint *out)
{
    executor_endpoint_at(ex, slot, 0, out);
}

void instance_endpoint(const struct instance *inst, struct instance_endpoint *out)
{
    executor_endpoint_at(inst->ex, inst->port, inst->inside_port, out);
}

void executor_endpoint_at(const struct executor *ex, int slot, int inside_port,
                          struct instance_endpoint *out)
{
    struct sockaddr_in sa;
    executor__sockaddr(ex, slot, inside_port, &sa);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    snprintf(out->addr, sizeof out->addr, "%s:%d", ip, ntohs(sa.sin_port));
    out->port = ntohs(sa.sin_port);
}

void executor_instance_dirs(const struct executor *ex, const char *instance_guid,
                            const char *app_dir, char **home, char **tmpdir)
{
    if (ex->isolation == EXECUTOR_CONTAINER) {
        *home = xstrdup(CONTAINER_APP_DIR);
        *tmpdir = xstrdup(CONTAINER_TMP_DIR);
    } else {
        *home = xstrdup(app_dir);
        *tmpdir = xasprintf("%s/instances/%s/tmp", ex->home, instance_guid);
    }
}

enum executor_isolation executor_isolation(const struct executor *ex)
{
    return ex->isolation;
}

const struct container_site *executor_container_site(struct executor *ex)
{
    return ex->isolation == EXECUTOR_CONTAINER ? &ex->site : NULL;
}

static int executor__site_slot_take(void *ctx)
{
    return executor_port_allocate(ctx);
}

static void executor__site_slot_give(void *ctx, int slot)
{
    executor_port_release(ctx, slot);
}

/* ---- health probes ---------------------------------------------------------------------- */

/* One check with a deadline: a TCP connect (HEALTH_PORT), or a GET through the instance's HTTP
 * client (HEALTH_HTTP, src/http/client.h: llhttp reads the status, the body is dropped). It
 * outlives its instance when that goes first (inst is then NULL) and frees itself once done. */
struct probe {
    struct instance *inst;
    bool readiness; /* a readiness probe (else liveness) */
    int answer_ms;  /* the deadline once connected */
    /* HEALTH_PORT */
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_timer_t timeout;
    int handles;
    bool done;
    /* HEALTH_HTTP */
    char *request;
};

static void executor__health_result(struct instance *inst, bool healthy);
static void executor__readiness_result(struct instance *inst, bool ready);

/* Tells the probe's instance, if it is still there, what the probe found. */
static void probe__report(struct probe *pr, bool healthy)
{
    struct instance *inst = pr->inst;
    if (inst && pr->readiness) {
        inst->readiness_probe = NULL;
        executor__readiness_result(inst, healthy);
    } else if (inst) {
        inst->probe = NULL;
        executor__health_result(inst, healthy);
    }
}

static void probe__closed(uv_handle_t *h)
{
    struct probe *pr = h->data;
    if (--pr->handles == 0)
        free(pr);
}

static void probe__finish(struct probe *pr, bool healthy)
{
    if (pr->done)
        return;
    pr->done = true;
    uv_close((uv_handle_t *)&pr->tcp, probe__closed);
    uv_close((uv_handle_t *)&pr->timeout, probe__closed);
    probe__report(pr, healthy);
}

static void probe__timed_out(uv_timer_t *t)
{
    probe__finish(t->data, false);
}

static void probe__connected(uv_connect_t *c, int status)
{
    struct probe *pr = c->data;
    if (!pr->done)
        probe__finish(pr, status == 0); /* accepting connections is healthy */
}

/* An HTTP check passes on a 200 (Cloud Foundry's rule), nothing else. Runs once, also when
 * the instance's client is released under it ("cancelled"). */
static void probe__answered(void *arg, const struct http_response *resp)
{
    struct probe *pr = arg;
    probe__report(pr, resp->status == 200);
    free(pr->request);
    free(pr);
}

/* Starts the liveness probe, or with `readiness` the readiness probe, of inst. While the
 * instance starts, a connect gets HEALTH_CONNECT_STARTING_MS, then the answer its deadline. */
static void executor__probe_start(struct instance *inst, bool readiness)
{
    struct executor *ex = inst->ex;
    struct probe *pr = xcalloc(1, sizeof(*pr));
    pr->inst = inst;
    pr->readiness = readiness;
    pr->answer_ms = readiness ? inst->readiness_timeout_ms : inst->health_timeout_ms;
    if (readiness)
        inst->readiness_probe = pr;
    else
        inst->probe = pr;
    bool starting = inst->state == INSTANCE_STARTING;
    enum health_check_type type = readiness ? inst->readiness_type : inst->health;
    struct instance_endpoint ep;
    instance_endpoint(inst, &ep); /* an image's where it listens inside */
    if (type == HEALTH_HTTP) {
        if (!inst->http && http_pool_new(ex->loop, ep.addr, &inst->http) < 0) {
            probe__report(pr, false); /* cannot happen with an address of ours; fails safe */
            free(pr);
            return;
        }
        const char *endpoint = readiness ? inst->readiness_endpoint : inst->health_endpoint;
        const char *path = endpoint && endpoint[0] == '/' ? endpoint : "/";
        /* Connection: close: an idle kept-alive check connection would hold a single-threaded
         * server's only worker away from the requests the router sends */
        pr->request = xasprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: "
                                "skiff-health-check\r\nConnection: close\r\n\r\n",
                                path, ep.addr);
        struct http_call_limits limits = {.timeout_ms = pr->answer_ms,
                                          .connect_timeout_ms =
                                              starting ? HEALTH_CONNECT_STARTING_MS : 0,
                                          .discard_body = true};
        http_pool_send_limited(inst->http, pr->request, strlen(pr->request), NULL, 0, &limits,
                               probe__answered, pr);
        return;
    }
    uv_tcp_init(ex->loop, &pr->tcp);
    uv_timer_init(ex->loop, &pr->timeout);
    pr->tcp.data = pr->timeout.data = pr->connect.data = pr;
    pr->handles = 2;
    struct sockaddr_in addr;
    executor__sockaddr(ex, inst->port, inst->inside_port, &addr);
    uv_timer_start(&pr->timeout, probe__timed_out,
                   starting ? HEALTH_CONNECT_STARTING_MS : (uint64_t)pr->answer_ms, 0);
    if (uv_tcp_connect(&pr->connect, &pr->tcp, (const struct sockaddr *)&addr, probe__connected) <
        0)
        probe__finish(pr, false);
}

/* ---- instance state --------------------------------------------------------------------- */

static void executor__set_state(struct instance *inst, enum instance_state state)
{
    inst->state = state;
    inst->since_ms = time_now_ms();
}

static void executor__kill(struct instance *inst, const char *reason)
{
    if (!inst->kill_reason && !inst->stop_requested)
        inst->kill_reason = reason;
    inst->ex->driver->signal(inst, SIGKILL);
}

static void executor__health_tick(uv_timer_t *t)
{
    struct instance *inst = t->data;
    if (inst->final || inst->probe || inst->stop_requested || inst->kill_reason)
        return;
    if (inst->health == HEALTH_PROCESS || inst->port <= 0) {
        executor__health_result(inst, true);
        return;
    }
    if (inst->state == INSTANCE_STARTING)
        start_trace("executor: probe");
    executor__probe_start(inst, false);
}

static void executor__readiness_tick(uv_timer_t *t)
{
    struct instance *inst = t->data;
    if (inst->final || inst->readiness_probe || inst->stop_requested || inst->kill_reason)
        return;
    if (inst->readiness_type == HEALTH_PROCESS || inst->port <= 0) {
        executor__readiness_result(inst, true);
        return;
    }
    executor__probe_start(inst, true);
}

static void executor__readiness_result(struct instance *inst, bool ready)
{
    struct executor *ex = inst->ex;
    if (inst->final || inst->stop_requested || inst->kill_reason || ready == inst->ready)
        return;
    inst->ready = ready;
    if (ex->on_readiness)
        ex->on_readiness(ex->ctx, inst, ready);
}

/* A RUNNING instance's periodic checks: liveness (unless a process check) and readiness,
 * the first readiness probe at once so that a ready instance is routed to without a wait. */
static void executor__checks_start(struct instance *inst)
{
    if (inst->health != HEALTH_PROCESS && inst->port > 0)
        uv_timer_start(&inst->health_timer, executor__health_tick,
                       (uint64_t)inst->health_interval_ms, (uint64_t)inst->health_interval_ms);
    else
        uv_timer_stop(&inst->health_timer);
    if (inst->readiness)
        uv_timer_start(&inst->readiness_timer, executor__readiness_tick, 0,
                       (uint64_t)inst->readiness_interval_ms);
}

static void executor__health_result(struct instance *inst, bool healthy)
{
    struct executor *ex = inst->ex;
    if (inst->final || inst->stop_requested || inst->kill_reason)
        return;
    /* Before the first pass only: someone else's program on the instance's port (another
     * daemon on this machine handed out the same port) must not make it look ready. */
    if (healthy && inst->state == INSTANCE_STARTING && inst->health != HEALTH_PROCESS &&
        inst->port > 0 && !inst->ex->driver->listens_on(inst, inst->port))
        healthy = false;
    if (inst->state == INSTANCE_STARTING) {
        if (!healthy) {
            /* not listening yet: tried again after an eighth of the time it has taken so
             * far (1 to HEALTH_STARTING_MS ms), so that a start of a few ms is seen within
             * a ms and a slow one costs few probes */
            int64_t waited = time_now_ms() - inst->since_ms;
            int64_t next = waited / 8 < 1 ? 1 : waited / 8 > HEALTH_STARTING_MS ? HEALTH_STARTING_MS : waited / 8;
            uv_timer_start(&inst->health_timer, executor__health_tick, (uint64_t)next, 0);
            return;
        }
        uv_timer_stop(&inst->start_timer);
        executor__set_state(inst, INSTANCE_RUNNING);
        executor__checks_start(inst);
        warm__after_starts(ex);
        ex->on_state(ex->ctx, inst, INSTANCE_RUNNING, NULL);
        return;
    }
    if (healthy) {
        inst->liveness_failures = 0;
    } else if (++inst->liveness_failures >= LIVENESS_FAILURES) {
        executor__kill(inst, "health check failed");
    }
}

static void executor__start_timed_out(uv_timer_t *t)
{
    struct instance *inst = t->data;
    if (inst->state == INSTANCE_STARTING && !inst->stop_requested)
        executor__kill(inst, "start timeout");
}

static void executor__grace_expired(uv_timer_t *t)
{
    struct instance *inst = t->data;
    inst->ex->driver->signal(inst, SIGKILL);
}

/* Whether a line of len bytes fits the instance's log rate limit (Cloud Foundry's: bytes a
 * second, counted per one-second window); the first line dropped in a window is told once
 * through on_output. The line's newline counts, as it would in CF's loggregator. */
static bool executor__log_allowed(struct instance *inst, size_t len)
{
    if (!inst->log_rate_limited)
        return true;
    int64_t now = time_mono_ms();
    if (now - inst->log_window_ms >= 1000) {
        inst->log_window_ms = now;
        inst->log_bytes = 0;
        inst->log_dropped = false;
    }
    if (inst->log_bytes + (int64_t)len + 1 <= inst->log_rate_limit) {
        inst->log_bytes += (int64_t)len + 1;
        return true; /* after a drop too: a later, shorter line may still fit */
    }
    if (!inst->log_dropped) {
        inst->log_dropped = true;
        char msg[96];
        int n = snprintf(msg, sizeof msg, "app instance exceeded log rate limit (%lld bytes/sec)",
                         (long long)inst->log_rate_limit);
        inst->ex->on_output(inst->ex->ctx, inst, INSTANCE_STREAM_LOG, msg, (size_t)n);
    }
    return false;
}

/* A line the container marked as one of a sidecar's (container.h): stream becomes that
 * sidecar's and line its text. A mark naming no sidecar of the instance is left as it is. */
static void executor__sidecar_line(const struct instance *inst, int *stream, const char **line,
                                   size_t *len)
{
    if (!inst->n_sidecars || *len < 3 || (*line)[0] != CONTAINER_SIDECAR_MARK ||
        (*stream != 1 && *stream != 2))
        return;
    const char *name = *line + 1;
    const char *end = memchr(name, CONTAINER_SIDECAR_MARK, *len - 1);
    if (!end)
        return;
    for (size_t k = 0; k < inst->n_sidecars; k++) {
        const char *sc = inst->sidecars[k].name;
        if (strlen(sc) == (size_t)(end - name) && !memcmp(sc, name, (size_t)(end - name))) {
            *stream = INSTANCE_STREAM_SIDECAR + 2 * (int)k + (*stream == 2);
            *len -= (size_t)(end + 1 - *line);
            *line = end + 1;
            return;
        }
    }
}

static void executor__instance_output(void *ctx, int stream, const char *line, size_t len)
{
    struct instance *inst = ctx;
    executor__sidecar_line(inst, &stream, &line, &len);
    if (!inst->final && executor__log_allowed(inst, len))
        inst->ex->on_output(inst->ex->ctx, inst, stream, line, len);
}

static void executor__sidecars_free(struct container_sidecar *sc, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(sc[i].name);
        free(sc[i].command);
    }
    free(sc);
}

static void executor__port_release(struct executor *ex, int port)
{
    if (ex->isolation == EXECUTOR_CONTAINER) {
        for (struct executor__warm *w = ex->warm; w; w = w->next)
            if (w->slot == port) {
                w->reserved = false; /* not taken after all: still warm */
                return;
            }
        if (port >= 0 && port < ex->slots)
            executor__slot_free(ex, port);
    } else if (port >= ex->port_min && port <= ex->port_max) {
        ex->port_used[port - ex->port_min] = 0;
    }
}

static void executor__free_instance(struct instance *inst)
{
    free(inst->app_guid);
    free(inst->app_name);
    free(inst->process_type);
    free(inst->guid);
    free(inst->app_dir);
    free(inst->command);
    free(inst->health_endpoint);
    free(inst->readiness_endpoint);
    for (size_t k = 0; inst->sidecar_cgs && k < inst->n_sidecars; k++)
        cgroup_release(inst->sidecar_cgs[k]);
    free(inst->sidecar_cgs);
    free(inst->sidecar_memory_mb);
    executor__sidecars_free(inst->sidecars, inst->n_sidecars);
    free(inst->scratch_dir);
    free(inst->image_layers);
    free(inst->cwd);
    for (char **w = inst->argv; w && *w; w++)
        free(*w);
    free(inst->argv);
    if (inst->env) {
        for (char **e = inst->env; *e; e++)
            free(*e);
        free(inst->env);
    }
    free(inst);
}

static void executor__timer_closed(uv_handle_t *h)
{
    struct instance *inst = h->data;
    if (--inst->handles == 0)
        executor__free_instance(inst);
}

/* Unlinks the instance and releases everything; memory goes once the timers are closed. */
static void executor__retire(struct instance *inst)
{
    struct executor *ex = inst->ex;
    if (inst->prev)
        inst->prev->next = inst->next;
    else
        ex->instances = inst->next;
    if (inst->next)
        inst->next->prev = inst->prev;
    if (inst->probe) {
        inst->probe->inst = NULL;
        inst->probe = NULL;
    }
    if (inst->readiness_probe) {
        inst->readiness_probe->inst = NULL;
        inst->readiness_probe = NULL;
    }
    if (inst->http) { /* a check in flight ends now, telling nobody (its inst is NULL) */
        http_pool_release(inst->http, true);
        inst->http = NULL;
    }
    if (inst->proc) {
        proc_close(inst->proc);
        inst->proc = NULL;
    }
    if (inst->detached) {
        ex->driver->release(inst); /* it keeps running, and keeps its folder */
    } else {
        ex->driver->cleanup(inst);
        char *pid_path = shim__pid_path(ex, "instance", inst->guid);
        unlink(pid_path);
        free(pid_path);
        if (inst->scratch_dir)
            rm_rf(inst->scratch_dir);
    }
    executor__port_release(ex, inst->port);
    uv_close((uv_handle_t *)&inst->start_timer, executor__timer_closed);
    uv_close((uv_handle_t *)&inst->health_timer, executor__timer_closed);
    uv_close((uv_handle_t *)&inst->grace_timer, executor__timer_closed);
    uv_close((uv_handle_t *)&inst->readiness_timer, executor__timer_closed);
}

static void executor__maybe_shutdown_done(struct executor *ex)
{
    if (ex->shutting_down && !ex->instances && ex->shutdown_done) {
        void (*done)(void *) = ex->shutdown_done;
        ex->shutdown_done = NULL;
        done(ex->shutdown_arg);
    }
}

static void executor__instance_exited(void *ctx, int exit_status, int term_signal)
{
    struct instance *inst = ctx;
    struct executor *ex = inst->ex;
    struct instance_exit info = {.exit_status = exit_status, .term_signal = term_signal};
    enum instance_state final;
    if (inst->stop_requested) {
        final = INSTANCE_DOWN;
        info.reason = "stopped";
    } else {
        final = INSTANCE_CRASHED;
        const char *sidecar_oom = executor__sidecar_oom(inst);
        if (sidecar_oom)
            info.reason = sidecar_oom;
        else if (inst->ex->driver->oom_killed(inst))
            info.reason = "out of memory";
        else if (inst->kill_reason)
            info.reason = inst->kill_reason;
        else if (inst->ex->driver->pids_limited(inst))
            info.reason = "process limit reached";
        else
            info.reason = "exited";
    }
    /* the process group is gone; make sure nothing else of the instance is left */
    inst->ex->driver->signal(inst, SIGKILL);
    inst->final = true;
    uv_timer_stop(&inst->start_timer);
    uv_timer_stop(&inst->health_timer);
    uv_timer_stop(&inst->grace_timer);
    uv_timer_stop(&inst->readiness_timer);
    executor__set_state(inst, final);
    ex->on_state(ex->ctx, inst, final, &info);
    executor__retire(inst);
    executor__maybe_shutdown_done(ex);
}

/* ---- usage ------------------------------------------------------------------------------ */

/* Whether something is mounted on dir: until the keeper has mounted the disk, the folder is
 * on its parent's file system and its figures would be the host's. */
static bool executor__mounted(const char *dir)
{
    char *parent = xasprintf("%s/..", dir);
    struct stat here, above;
    bool mounted =
        stat(dir, &here) == 0 && stat(parent, &above) == 0 && here.st_dev != above.st_dev;
    free(parent);
    return mounted;
}

/* The container's disk is mounted in its keeper's (skiff-init's) mount namespace only:
 * /proc/PID/root walks that namespace. A layer that fills up is told once in [CELL/n]. */
static void executor__sample_disk(struct instance *inst)
{
    char *dir = xasprintf("/proc/%d/root%s/disk", inst->pid, inst->scratch_dir);
    unsigned long long used = 0, total = 0;
    if (executor__mounted(dir) && container_disk_usage(dir, &used, &total) == 0 && total > 0) {
        inst->disk_used = used;
        inst->disk_total = total;
        bool full = container_disk_is_full(used, total);
        if (full && !inst->disk_full_told) {
            char *msg = xasprintf("disk quota exceeded: the instance has written %llu MB of "
                                  "its %d MB disk; writes fail with \"No space left on "
                                  "device\" until it frees some",
                                  used >> 20, inst->disk_mb);
            inst->ex->on_output(inst->ex->ctx, inst, INSTANCE_STREAM_CELL, msg, strlen(msg));
            free(msg);
        }
        inst->disk_full_told = full;
    }
    free(dir);
}

static void executor__sample_usage(struct instance *inst)
{
    uint64_t cpu_ns = 0, memory = 0;
    inst->ex->driver->usage(inst, &cpu_ns, &memory);
    int64_t now = time_mono_ms();
    if (inst->last_sample_ms && now > inst->last_sample_ms && cpu_ns >= inst->last_cpu_ns)
        inst->cpu =
            (double)(cpu_ns - inst->last_cpu_ns) / 1e6 / (double)(now - inst->last_sample_ms);
    inst->last_cpu_ns = cpu_ns;
    inst->last_sample_ms = now;
    inst->memory_bytes = memory;
    if (inst->ex->isolation == EXECUTOR_CONTAINER && inst->pid > 0)
        executor__sample_disk(inst);
}

static void executor__usage_tick(uv_timer_t *t)
{
    struct executor *ex = t->data;
    for (struct instance *inst = ex->instances; inst; inst = inst->next)
        if (!inst->final)
            executor__sample_usage(inst);
}

/* ---- public calls ----------------------------------------------------------------------- */

/* ---- leftovers of a daemon that died ----------------------------------------------------- */

/* A connection to a shim's socket, or a negative errno (no shim listens there). */
static int shim__connect_blocking(const char *path)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(addr.sun_path))
        return -ENAMETOOLONG;
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

/* Ends an instance nobody keeps any more (its shim is gone, or the daemon that ran it
 * without one died): the process run/instance-GUID.pid names, if it is still that process,
 * and its process group, then whatever else is in its cgroup (children that left the group),
 * then its pid file and scratch folder. */
static void executor__end_leftover(struct executor *ex, const char *guid)
{
    char *path = shim__pid_path(ex, "instance", guid);
    int pid = proc_pid_file_read(path);
    if (pid > 0) {
        kill(-pid, SIGKILL);
        kill(pid, SIGKILL);
        log_info("stopped instance %s (pid %d) left by a previous skiffd", guid, pid);
    }
    char *scratch = xasprintf("%s/instances/%s", ex->home, guid);
    char *cg_name = executor__cgroup_name(scratch, guid);
    struct cgroup *cg = NULL;
    if (cgroup_create(cg_name, 0, 0, &cg) == 0)
        cgroup_destroy(cg); /* kills whatever is still in it */
    free(cg_name);
    unlink(path);
    free(path);
    rm_rf(scratch);
    free(scratch);
}

/* Instances whose scratch folder is still there were left running by a daemon that did not
 * shut down (killed, crashed): nobody reads their output or checks them any more, so they are
 * ended, with their cgroup, before this executor starts its own. */
static void executor__end_leftovers(struct executor *ex)
{
    char *dir = xasprintf("%s/instances", ex->home);
    uv_fs_t req;
    uv_dirent_t ent;
    if (uv_fs_scandir(NULL, &req, dir, 0, NULL) < 0) {
        free(dir);
        return;
    }
    while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
        if (ent.name[0] == '.')
            continue;
        char *scratch = xasprintf("%s/%s", dir, ent.name);
        char *sock = xasprintf("%s/%s", scratch, SHIM_SOCKET_NAME);
        bool shim_run = access(sock, F_OK) == 0;
        free(sock);
        if (shim_run) {
            /* executor_adopt takes it or ends it (a connection here would take the output
             * the shim kept for the one that adopts it) */
            free(scratch);
            continue;
        }
        free(scratch);
        executor__end_leftover(ex, ent.name);
    }
    uv_fs_req_cleanup(&req);
    free(dir);
}

/* ---- container set-up ------------------------------------------------------------------ */

/* Disk images are made on the thread pool (mkfs takes ~10 ms), never on the loop. The job
 * owns copies of what it needs; executor_free lets go of a job still under way. */
struct executor__disk_job {
    uv_work_t work;
    struct executor *ex; /* NULL once the executor is gone */
    char *pool_dir;
    int sizes[8];
    char err[256];
    int rc;
};

static void executor__disk_fill(uv_work_t *w)
{
    struct executor__disk_job *job = w->data;
    for (size_t i = 0; i < ARRAY_SIZE(job->sizes) && job->sizes[i] > 0 && job->rc == 0; i++)
        job->rc = container_disk_pool_fill(job->pool_dir, job->sizes[i], DISK_POOL_KEEP,
                                           job->err, sizeof job->err);
}

static void executor__disk_pool_refill(struct executor *ex);

static void executor__disk_filled(uv_work_t *w, int status)
{
    struct executor__disk_job *job = w->data;
    struct executor *ex = job->ex;
    if (ex) {
        ex->disk_job = NULL;
        if (job->rc < 0 && !ex->disk_pool_told) {
            log_error("cannot make disk images ahead (starts make their own): %s",
                    job->err);
            ex->disk_pool_told = true;
        }
        if (ex->disk_pool_again && status == 0 && job->rc == 0) {
            ex->disk_pool_again = false;
            executor__disk_pool_refill(ex);
        }
    }
    free(job->pool_dir);
    free(job);
}

static void executor__disk_pool_refill(struct executor *ex)
{
    if (ex->disk_job) {
        ex->disk_pool_again = true;
        return;
    }
    struct executor__disk_job *job = xcalloc(1, sizeof *job);
    job->ex = ex;
    job->pool_dir = xstrdup(ex->disk_pool);
    memcpy(job->sizes, ex->disk_pool_sizes, sizeof job->sizes);
    job->work.data = job;
    if (uv_queue_work(ex->loop, &job->work, executor__disk_fill, executor__disk_filled) < 0) {
        free(job->pool_dir);
        free(job);
        return;
    }
    ex->disk_job = job;
}

/* Keeps images of that size ready from now on (the few most recent sizes). */
static void executor__disk_pool_use(struct executor *ex, int size_mb)
{
    size_t n = ARRAY_SIZE(ex->disk_pool_sizes);
    size_t i = 0;
    while (i < n && ex->disk_pool_sizes[i] > 0 && ex->disk_pool_sizes[i] != size_mb)
        i++;
    if (i == n)
        i = n - 1; /* the oldest size gives way */
    memmove(&ex->disk_pool_sizes[1], &ex->disk_pool_sizes[0], i * sizeof(int));
    ex->disk_pool_sizes[0] = size_mb;
    executor__disk_pool_refill(ex);
}

static void executor__free_container(struct executor *ex)
{
    if (ex->disk_job)
        ex->disk_job->ex = NULL; /* it finishes and frees itself */
    container_disk_server_stop(ex->disk_server); /* the disks it holds unmount themselves */
    free(ex->init_path);
    free(ex->stack_dir);
    free(ex->disk_pool);
    free(ex->seccomp_bpf);
    free(ex->net_pool_text);
    free(ex->slot_used);
}

static int executor__container_setup(struct executor *ex, const struct executor_config *cfg)
{
    char err[256] = "";
    if (!cfg->init_path || !*cfg->init_path) {
        log_error("containers need skiff-init");
        return -EINVAL;
    }
    ex->init_path = xstrdup(cfg->init_path);
    ex->uid_base = cfg->uid_base ? cfg->uid_base : CONTAINER_DEFAULT_UID_BASE;
    ex->net_pool_text = xstrdup(cfg->net_pool && *cfg->net_pool ? cfg->net_pool : NET_DEFAULT_POOL);
    int rc = net_pool_parse(ex->net_pool_text, &ex->net, err, sizeof err);
    if (rc == 0)
        rc = net_host_setup(&ex->net, cfg->egress, err, sizeof err);
    if (rc == 0)
        rc = container_stack_prepare(ex->home, &ex->stack_dir, err, sizeof err);
    if (rc < 0) {
        log_error("cannot set up containers: %s", err);
        return rc;
    }
    ex->slots = net_pool_slots(&ex->net);
    ex->slot_used = xcalloc((size_t)ex->slots, 1);
    ex->slot_cursor = (int)((uint64_t)(time_now_ns() ^ ((int64_t)getpid() << 20)) %
                            (uint64_t)ex->slots);
    ex->disk_pool = xasprintf("%s/containers/disks", ex->home);
    char *containers = xasprintf("%s/containers", ex->home);
    ex->seccomp_bpf = xasprintf("%s/seccomp.bpf", containers);
    rc = mkdir_p(containers, 0700);
    free(containers);
    if (rc < 0)
        snprintf(err, sizeof err, "cannot create the folder: %s", skiff_strerror(rc));
    if (rc < 0 || seccomp_export_default(ex->seccomp_bpf, err, sizeof err) < 0) {
        log_error("cannot build the seccomp filter ahead (starts build it): %s",
                err);
        free(ex->seccomp_bpf);
        ex->seccomp_bpf = NULL;
    }
    ex->site = (struct container_site){.init_path = ex->init_path,
                                       .stack_dir = ex->stack_dir,
                                       .disk_pool = ex->disk_pool,
                                       .seccomp_bpf = ex->seccomp_bpf,
                                       .net_pool = ex->net_pool_text,
                                       .uid_base = ex->uid_base,
                                       .slot_take = executor__site_slot_take,
                                       .slot_give = executor__site_slot_give,
                                       .slot_ctx = ex};
    executor__disk_pool_use(ex, DEFAULT_DISK_MB);
    /* without it every start mounts its own disk: slower, not broken */
    if (container_disk_server_start(ex->disk_pool, DEFAULT_DISK_MB, &ex->disk_server, err,
                                    sizeof err) < 0)
        log_error("cannot keep disks mounted ahead (starts mount their own): %s",
                err);
    return 0;
}

int executor_new(uv_loop_t *loop, const struct executor_config *cfg, instance_output_cb on_output,
                 instance_state_cb on_state, void *ctx, struct executor **out)
{
    if (!loop || !cfg || !cfg->home || !on_output || !on_state || cfg->port_min <= 0 ||
        cfg->port_max < cfg->port_min || cfg->port_max > 65535)
        return -EINVAL;
    struct executor *ex = xcalloc(1, sizeof(*ex));
    ex->loop = loop;
    ex->home = xstrdup(cfg->home);
    ex->port_min = cfg->port_min;
    ex->port_max = cfg->port_max;
    ex->grace_ms = cfg->grace_ms > 0 ? cfg->grace_ms : DEFAULT_GRACE_MS;
    ex->liveness_ms = cfg->liveness_ms > 0 ? cfg->liveness_ms : DEFAULT_LIVENESS_MS;
    ex->port_used = xcalloc((size_t)(cfg->port_max - cfg->port_min + 1), 1);
    /* daemons sharing a machine start at different ports, so they rarely race for one */
    ex->port_cursor = (int)((uint64_t)(time_now_ns() ^ ((int64_t)getpid() << 20)) %
                            (uint64_t)(cfg->port_max - cfg->port_min + 1));
    ex->isolation = cfg->isolation;
    if (ex->isolation == EXECUTOR_CONTAINER && executor__container_setup(ex, cfg) < 0) {
        executor__free_container(ex);
        free(ex->port_used);
        free(ex->home);
        free(ex);
        return -EPERM;
    }
    ex->driver = &executor__process_driver;
    if (cfg->shim_path && *cfg->shim_path) {
        ex->driver = &executor__shim_driver;
        ex->shim_path = xstrdup(cfg->shim_path);
        ex->reaper = xmalloc(sizeof(uv_signal_t));
        uv_signal_init(loop, ex->reaper);
        ex->reaper->data = ex;
        uv_signal_start(ex->reaper, shim__reap, SIGCHLD);
        uv_unref((uv_handle_t *)ex->reaper);
    }
    ex->on_output = on_output;
    ex->on_readiness = cfg->on_readiness;
    ex->on_state = on_state;
    ex->ctx = ctx;
    ex->usage_timer = xmalloc(sizeof(uv_timer_t));
    uv_timer_init(loop, ex->usage_timer);
    ex->usage_timer->data = ex;
    uv_timer_start(ex->usage_timer, executor__usage_tick, USAGE_SAMPLE_MS, USAGE_SAMPLE_MS);
    uv_unref((uv_handle_t *)ex->usage_timer); /* sampling alone keeps nobody waiting */
    char *run = xasprintf("%s/run", ex->home);
    mkdir_p(run, 0755);
    free(run);
    executor__end_leftovers(ex);
    cgroup_remove_stale(CGROUP_STALE_AGE_S);
    ex->prewarm = cfg->prewarm;
    ex->prewarm_window_ms =
        cfg->prewarm_window_ms > 0 ? cfg->prewarm_window_ms : EXECUTOR_WARM_DEMAND_MS;
    ex->prewarm_budget = cfg->prewarm_memory_bytes
                             ? cfg->prewarm_memory_bytes
                             : (uint64_t)EXECUTOR_DEFAULT_PREWARM_MEMORY_MB << 20;
    ex->runtimes_dir = cfg->runtimes_dir ? xstrdup(cfg->runtimes_dir) : NULL;
    for (int r = 0; r < EXECUTOR_RUNTIMES; r++) {
        char *zygote = ex->runtimes_dir
                           ? xasprintf("%s/%s", ex->runtimes_dir, executor__runtimes[r].zygote)
                           : NULL;
        ex->runtime_usable[r] = zygote && access(zygote, R_OK) == 0 &&
                                access(executor__runtimes[r].interpreter, X_OK) == 0;
        free(zygote);
    }
    if (ex->isolation == EXECUTOR_CONTAINER && ex->shim_path && ex->prewarm > 0) {
        ex->warm_timer = xmalloc(sizeof(uv_timer_t));
        uv_timer_init(loop, ex->warm_timer);
        ex->warm_timer->data = ex;
        uv_unref((uv_handle_t *)ex->warm_timer);
        warm__refill_soon(ex, 0); /* from the loop: after executor_adopt, when it is called */
    }
    *out = ex;
    return 0;
}

static bool executor__port_is_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    bool free_port = bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0;
    close(fd);
    return free_port;
}

/* A network slot neither we nor another daemon on the machine holds (net_slot_claim: its
 * interface, or another's claim while it makes it; ours ends in executor__slot_free). */
static int executor__slot_allocate(struct executor *ex)
{
    for (int i = 0; i < ex->slots; i++) {
        int slot = (ex->slot_cursor + i) % ex->slots;
        if (ex->slot_used[slot] || net_slot_claim(slot) < 0)
            continue;
        ex->slot_used[slot] = 1;
        ex->slot_cursor = (slot + 1) % ex->slots;
        return slot;
    }
    return -EADDRNOTAVAIL;
}

int executor_port_allocate(struct executor *ex)
{
    if (ex->isolation == EXECUTOR_CONTAINER)
        return executor__slot_allocate(ex);
    int span = ex->port_max - ex->port_min + 1;
    for (int i = 0; i < span; i++) {
        int slot = (ex->port_cursor + i) % span;
        if (ex->port_used[slot])
            continue;
        int port = ex->port_min + slot;
        if (!executor__port_is_free(port))
            continue;
        ex->port_used[slot] = 1;
        /* round-robin, so a port just given up is not handed out again at once */
        ex->port_cursor = (slot + 1) % span;
        return port;
    }
    return -EADDRNOTAVAIL;
}

int executor_port_allocate_for(struct executor *ex, int disk_mb, const char *command)
{
    if (ex->isolation != EXECUTOR_CONTAINER || !ex->warm_timer ||
        (disk_mb > 0 ? disk_mb : DEFAULT_DISK_MB) != DEFAULT_DISK_MB)
        return executor_port_allocate(ex);
    int runtime = command ? executor__runtime_of_command(command) : -1;
    if (runtime >= 0 && !ex->runtime_usable[runtime])
        runtime = -1;
    if (runtime >= 0)
        ex->runtime_wanted[runtime] = true; /* from now on its pool is kept */
    warm__asked(ex, runtime);
    /* one that runs the command's runtime ahead, else a plain one (it runs anything) */
    for (int pass = 0; pass < 2; pass++)
        for (struct executor__warm *w = ex->warm; w; w = w->next)
            if (w->runtime == (pass ? -1 : runtime) && warm__ready(w)) {
                w->reserved = true;
                return w->slot;
            }
    return executor_port_allocate(ex);
}

void executor_port_release(struct executor *ex, int port)
{
    executor__port_release(ex, port);
}

static char **executor__copy_env(char *const *env)
{
    if (!env)
        return NULL;
    size_t n = 0;
    while (env[n])
        n++;
    char **copy = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        copy[i] = xstrdup(env[i]);
    return copy;
}

static char *executor__dup(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void executor__write_spec(struct instance *inst);

/* The spec's check and log settings into inst, defaults resolved (one place for a new
 * instance and an adopted one). */
static void executor__copy_checks(struct instance *inst, const struct instance_spec *spec)
{
    int liveness_ms = inst->ex->liveness_ms;
    inst->health_interval_ms =
        spec->health_interval_ms > 0 ? spec->health_interval_ms : liveness_ms;
    inst->health_timeout_ms =
        spec->health_timeout_ms > 0 ? spec->health_timeout_ms : HEALTH_PROBE_TIMEOUT_MS;
    inst->readiness = spec->readiness;
    inst->readiness_type = spec->readiness_type;
    inst->readiness_endpoint = executor__dup(spec->readiness_endpoint);
    inst->readiness_interval_ms =
        spec->readiness_interval_ms > 0 ? spec->readiness_interval_ms : inst->health_interval_ms;
    inst->readiness_timeout_ms =
        spec->readiness_timeout_ms > 0 ? spec->readiness_timeout_ms : HEALTH_PROBE_TIMEOUT_MS;
    inst->log_rate_limited = spec->log_rate_limited;
    inst->log_rate_limit = spec->log_rate_limit;
}

int executor_start(struct executor *ex, const struct instance_spec *spec, struct instance **out)
{
    int rc = 0;
    if (ex->shutting_down) {
        rc = -ESHUTDOWN;
        goto fail_port;
    }
    struct stat st;
    if (!spec->command || !spec->command[0] || !spec->instance_guid || !spec->app_dir) {
        rc = -EINVAL;
        goto fail_port;
    }
    if (stat(spec->app_dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        rc = -ENOENT;
        goto fail_port;
    }
    if (spec->n_sidecars && ex->isolation != EXECUTOR_CONTAINER) {
        rc = -ENOTSUP; /* "extra processes in the same container": there is none */
        goto fail_port;
    }
    for (size_t k = 0; k < spec->n_sidecars; k++)
        if (spec->n_sidecars > CONTAINER_SIDECARS_MAX || !spec->sidecars[k].name ||
            !container_sidecar_name_valid(spec->sidecars[k].name) || !spec->sidecars[k].command ||
            !spec->sidecars[k].command[0]) {
            rc = -EINVAL;
            goto fail_port;
        }
    if (spec->image_layers && (ex->isolation != EXECUTOR_CONTAINER || !spec->argv)) {
        rc = -ENOTSUP; /* an image is a root file system: only a container has one */
        goto fail_port;
    }
    struct instance *inst = xcalloc(1, sizeof(*inst));
    inst->ex = ex;
    inst->app_guid = executor__dup(spec->app_guid);
    inst->app_name = executor__dup(spec->app_name);
    inst->process_type = executor__dup(spec->process_type);
    inst->guid = xstrdup(spec->instance_guid);
    inst->app_dir = xstrdup(spec->app_dir);
    inst->command = xstrdup(spec->command);
    inst->health_endpoint = executor__dup(spec->health_endpoint);
    inst->sidecars = xcalloc(spec->n_sidecars + 1, sizeof *inst->sidecars);
    inst->sidecar_memory_mb = xcalloc(spec->n_sidecars + 1, sizeof *inst->sidecar_memory_mb);
    inst->sidecar_cgs = xcalloc(spec->n_sidecars + 1, sizeof *inst->sidecar_cgs);
    for (size_t k = 0; k < spec->n_sidecars; k++) {
        inst->sidecars[k] = (struct container_sidecar){
            .name = xstrdup(spec->sidecars[k].name), .command = xstrdup(spec->sidecars[k].command)};
        inst->sidecar_memory_mb[k] = spec->sidecars[k].memory_mb;
    }
    inst->n_sidecars = spec->n_sidecars;
    inst->env = executor__copy_env(spec->env);
    if (spec->image_layers) {
        inst->image_layers = xstrdup(spec->image_layers);
        inst->argv = executor__copy_env(spec->argv);
        inst->cwd = xstrdup(spec->cwd ? spec->cwd : "/");
        inst->user_uid = spec->user_uid;
        inst->user_gid = spec->user_gid;
    }
    inst->index = spec->index;
    inst->port = spec->port;
    inst->inside_port = spec->inside_port;
    inst->memory_mb = spec->memory_mb;
    inst->disk_mb = spec->disk_mb > 0 ? spec->disk_mb : DEFAULT_DISK_MB;
    inst->pids_max = spec->pids_max > 0 ? spec->pids_max : DEFAULT_PIDS_MAX;
    inst->health = spec->health;
    inst->start_timeout_s =
        spec->start_timeout_s > 0 ? spec->start_timeout_s : DEFAULT_START_TIMEOUT_S;
    executor__copy_checks(inst, spec);
    /* scratch space the caller may point HOME/TMPDIR at; removed with the instance. A warm
     * container's folder becomes it (warm__start): made here only otherwise, as making it to
     * remove it again cost a few ms of a start from zero */
    inst->scratch_dir = xasprintf("%s/instances/%s", ex->home, inst->guid);
    if (!warm__reserved_for(ex, inst->port))
        executor__scratch_make(inst);
    executor__set_state(inst, INSTANCE_STARTING);

    if (ex->isolation == EXECUTOR_CONTAINER)
        executor__disk_pool_use(ex, inst->disk_mb);
    if (strchr(inst->guid, '/') || (rc = inst->ex->driver->start(inst)) < 0) {
        if (rc == 0)
            rc = -EINVAL;
        rm_rf(inst->scratch_dir);
        executor__free_instance(inst);
        goto fail_port;
    }
    if (inst->proc) {
        /* what a later daemon needs to end this instance if this one dies without stopping
         * it: the pid file a shim would write */
        char *pid_path = shim__pid_path(ex, "instance", inst->guid);
        proc_pid_file_write(pid_path, proc_pid(inst->proc));
        free(pid_path);
    } else {
        executor__write_spec(inst); /* what a later daemon needs to adopt it */
    }
    uv_timer_init(ex->loop, &inst->start_timer);
    uv_timer_init(ex->loop, &inst->health_timer);
    uv_timer_init(ex->loop, &inst->grace_timer);
    uv_timer_init(ex->loop, &inst->readiness_timer);
    inst->start_timer.data = inst->health_timer.data = inst->grace_timer.data = inst;
    inst->readiness_timer.data = inst;
    inst->handles = 4;
    uv_timer_start(&inst->start_timer, executor__start_timed_out,
                   (uint64_t)inst->start_timeout_s * 1000, 0);
    /* the first check comes on the next loop turn, never inside this call */
    uv_timer_start(&inst->health_timer, executor__health_tick, 0, 0);
    executor__sample_usage(inst);

    inst->next = ex->instances;
    if (ex->instances)
        ex->instances->prev = inst;
    ex->instances = inst;
    *out = inst;
    return 0;

fail_port:
    executor__port_release(ex, spec->port);
    return rc;
}

void executor_stop(struct instance *inst)
{
    if (inst->final || inst->stop_requested)
        return;
    inst->stop_requested = true;
    executor__set_state(inst, INSTANCE_STOPPING);
    uv_timer_stop(&inst->start_timer);
    uv_timer_stop(&inst->health_timer);
    uv_timer_stop(&inst->readiness_timer);
    inst->ex->driver->signal(inst, SIGTERM);
    uv_timer_start(&inst->grace_timer, executor__grace_expired, (uint64_t)inst->ex->grace_ms, 0);
}

static void executor__done_soon(uv_timer_t *t)
{
    struct executor *ex = t->data;
    executor__maybe_shutdown_done(ex);
}

void executor_shutdown(struct executor *ex, void (*done)(void *arg), void *arg)
{
    ex->shutting_down = true;
    warm__discard_all(ex);
    ex->shutdown_done = done;
    ex->shutdown_arg = arg;
    for (struct instance *inst = ex->instances; inst; inst = inst->next)
        executor_stop(inst);
    if (!ex->instances) {
        /* nothing to wait for; done still comes from the loop, not from inside this call */
        if (!ex->done_timer) {
            ex->done_timer = xmalloc(sizeof(uv_timer_t));
            uv_timer_init(ex->loop, ex->done_timer);
            ex->done_timer->data = ex;
        }
        uv_timer_start(ex->done_timer, executor__done_soon, 0, 0);
    }
}

/* ---- adoption: instances a previous daemon left running under their shims ---------------- */

static void executor__write_spec(struct instance *inst)
{
    json_t *j =
        json_pack("{s:s?,s:s?,s:s?,s:i,s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:s?,s:i,s:b,s:i}", "app_guid",
                  inst->app_guid, "app_name", inst->app_name, "process_type", inst->process_type,
                  "index", inst->index, "instance_guid", inst->guid, "app_dir", inst->app_dir,
                  "command", inst->command, "port", inst->port, "memory_mb", inst->memory_mb,
                  "pids_max", inst->pids_max, "health", (int)inst->health, "health_endpoint",
                  inst->health_endpoint, "start_timeout_s", inst->start_timeout_s, "warm_started",
                  inst->warm_started, "inside_port", inst->inside_port);
    if (j)
        json_object_update_new(
            j, json_pack("{s:i,s:i,s:b,s:i,s:s?,s:i,s:i,s:b,s:I}", "health_interval_ms",
                         inst->health_interval_ms, "health_timeout_ms", inst->health_timeout_ms,
                         "readiness", inst->readiness, "readiness_type", (int)inst->readiness_type,
                         "readiness_endpoint", inst->readiness_endpoint, "readiness_interval_ms",
                         inst->readiness_interval_ms, "readiness_timeout_ms",
                         inst->readiness_timeout_ms, "log_rate_limited", inst->log_rate_limited,
                         "log_rate_limit", (json_int_t)inst->log_rate_limit));
    if (j && inst->n_sidecars) {
        json_t *a = json_array();
        for (size_t k = 0; k < inst->n_sidecars; k++)
            json_array_append_new(a, json_pack("{s:s,s:s}", "name", inst->sidecars[k].name,
                                               "command", inst->sidecars[k].command));
        json_object_set_new(j, "sidecars", a);
    }
    if (j && inst->env) {
        /* for the sessions (instance_exec_new) of whichever daemon adopts it; the file is
         * skiffd's (0600, outside the container), as the store holding the same values is */
        json_t *a = json_array();
        for (char **e = inst->env; *e; e++)
            json_array_append_new(a, json_string(*e));
        json_object_set_new(j, "env", a);
    }
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text)
        return;
    char *path = xasprintf("%s/spec.json", inst->scratch_dir);
    file_replace(path, text, strlen(text), 0600);
    free(path);
    free(text);
}

/* Reads one line from a blocking socket within timeout_ms, byte by byte so that nothing after
 * it is taken from the stream. */
static int shim__read_line(int fd, char *out, size_t size, int timeout_ms)
{
    size_t n = 0;
    int64_t deadline = time_mono_ms() + timeout_ms;
    while (n + 1 < size) {
        int left = (int)(deadline - time_mono_ms());
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            return -ETIMEDOUT;
        char c;
        ssize_t r = read(fd, &c, 1);
        if (r <= 0)
            return r == 0 ? -ECONNRESET : -errno;
        if (c == '\n') {
            out[n] = '\0';
            return 0;
        }
        out[n++] = c;
    }
    return -EPROTO;
}

/* A quick, blocking check that an adopted instance answers on its port: it connects, and the
 * listening socket is one of the instance's. */
static bool executor__answers_now(struct instance *inst)
{
    if (inst->health == HEALTH_PROCESS || inst->port <= 0)
        return true;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in addr;
    executor__sockaddr(inst->ex, inst->port, inst->inside_port, &addr);
    bool ok = connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0;
    if (!ok && errno == EINPROGRESS) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t len = sizeof(err);
        ok = poll(&pfd, 1, HEALTH_PROBE_TIMEOUT_MS) == 1 &&
             getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
    }
    close(fd);
    return ok && inst->ex->driver->listens_on(inst, inst->port);
}

static char *executor__json_str(json_t *j, const char *key)
{
    const char *v = json_string_value(json_object_get(j, key));
    return v ? xstrdup(v) : NULL;
}

/* The environment executor__write_spec kept, NULL when none was (an instance started by a
 * daemon that did not keep it, or a spec.json that is not what it wrote): strings only. */
static char **executor__env_from_json(json_t *a)
{
    size_t n = json_array_size(a);
    if (!n)
        return NULL;
    char **env = xcalloc(n + 1, sizeof *env);
    for (size_t i = 0; i < n; i++) {
        const char *v = json_string_value(json_array_get(a, i));
        if (!v || !strchr(v, '=')) {
            for (size_t k = 0; k < i; k++)
                free(env[k]);
            free(env);
            return NULL;
        }
        env[i] = xstrdup(v);
    }
    return env;
}

/* One instance folder: its shim answers and tells how the instance is. NULL when there is
 * nothing to adopt there. */
static struct instance *executor__adopt_one(struct executor *ex, const char *guid)
{
    char *scratch = xasprintf("%s/instances/%s", ex->home, guid);
    char *sock = xasprintf("%s/%s", scratch, SHIM_SOCKET_NAME);
    char *spec_path = xasprintf("%s/spec.json", scratch);
    char *text = NULL;
    json_t *j = NULL;
    struct instance *inst = NULL;
    int fd = -1;
    char hello[128];
    int pid = 0, exited = 0, status = 0, sig = 0;
    if (file_read(spec_path, &text, NULL) == 0)
        j = json_loads(text, 0, NULL);
    fd = shim__connect_blocking(sock);
    if (!j || fd < 0 || shim__read_line(fd, hello, sizeof hello, 2000) < 0 ||
        sscanf(hello, "H %d %d %d %d", &pid, &exited, &status, &sig) != 4 || pid <= 0) {
        /* its shim is gone (killed), or it cannot be told what it runs: what is left of the
         * instance in its cgroup is ended here, its process group by the caller through the
         * instance's pid file; a shim that still runs ends once its instance has */
        if (fd >= 0 && write(fd, "S 9\nA\n", 6) < 0)
            perror("skiffd: ending an instance nobody can adopt");
        char *cg_name = executor__cgroup_name(scratch, guid);
        struct cgroup *cg = NULL;
        if (cgroup_create(cg_name, 0, 0, &cg) == 0)
            cgroup_destroy(cg);
        free(cg_name);
        rm_rf(scratch);
        char *shim_pid = shim__pid_path(ex, "shim", guid);
        unlink(shim_pid);
        free(shim_pid);
        goto out;
    }
    inst = xcalloc(1, sizeof(*inst));
    inst->ex = ex;
    inst->app_guid = executor__json_str(j, "app_guid");
    inst->app_name = executor__json_str(j, "app_name");
    inst->process_type = executor__json_str(j, "process_type");
    inst->guid = xstrdup(guid);
    inst->app_dir = executor__json_str(j, "app_dir");
    inst->command = executor__json_str(j, "command");
    inst->health_endpoint = executor__json_str(j, "health_endpoint");
    json_t *sidecars = json_object_get(j, "sidecars");
    inst->sidecars = xcalloc(json_array_size(sidecars) + 1, sizeof *inst->sidecars);
    for (size_t k = 0; k < json_array_size(sidecars) && k < CONTAINER_SIDECARS_MAX; k++) {
        char *name = executor__json_str(json_array_get(sidecars, k), "name");
        char *command = executor__json_str(json_array_get(sidecars, k), "command");
        if (name && command)
            inst->sidecars[inst->n_sidecars++] =
                (struct container_sidecar){.name = name, .command = command};
        else {
            free(name);
            free(command);
        }
    }
    inst->env = executor__env_from_json(json_object_get(j, "env"));
    inst->index = (int)json_integer_value(json_object_get(j, "index"));
    inst->port = (int)json_integer_value(json_object_get(j, "port"));
    inst->memory_mb = (int)json_integer_value(json_object_get(j, "memory_mb"));
    inst->pids_max = (int)json_integer_value(json_object_get(j, "pids_max"));
    inst->health = (enum health_check_type)json_integer_value(json_object_get(j, "health"));
    inst->start_timeout_s = (int)json_integer_value(json_object_get(j, "start_timeout_s"));
    inst->inside_port = (int)json_integer_value(json_object_get(j, "inside_port"));
    inst->warm_started = json_is_true(json_object_get(j, "warm_started"));
    struct instance_spec checks = {
        .health_interval_ms = (int)json_integer_value(json_object_get(j, "health_interval_ms")),
        .health_timeout_ms = (int)json_integer_value(json_object_get(j, "health_timeout_ms")),
        .readiness = json_is_true(json_object_get(j, "readiness")),
        .readiness_type =
            (enum health_check_type)json_integer_value(json_object_get(j, "readiness_type")),
        .readiness_endpoint = json_string_value(json_object_get(j, "readiness_endpoint")),
        .readiness_interval_ms =
            (int)json_integer_value(json_object_get(j, "readiness_interval_ms")),
        .readiness_timeout_ms = (int)json_integer_value(json_object_get(j, "readiness_timeout_ms")),
        .log_rate_limited = json_is_true(json_object_get(j, "log_rate_limited")),
        .log_rate_limit = json_integer_value(json_object_get(j, "log_rate_limit"))};
    executor__copy_checks(inst, &checks);
    if (inst->start_timeout_s <= 0)
        inst->start_timeout_s = DEFAULT_START_TIMEOUT_S;
    inst->scratch_dir = scratch;
    scratch = NULL;
    inst->pid = pid;
    char *cg_name = executor__cgroup_name(inst->scratch_dir, inst->guid);
    if (cgroup_open(cg_name, &inst->cg) < 0)
        inst->cg = NULL;
    free(cg_name);
    if (inst->port >= ex->port_min && inst->port <= ex->port_max)
        ex->port_used[inst->port - ex->port_min] = 1;
    struct executor__shim *sh = shim__new(inst->ex, inst);
    if (uv_pipe_open(&sh->pipe, fd) < 0) {
        close(fd);
        fd = -1;
    } else {
        fd = -1; /* the pipe has it */
        sh->connected = true;
        uv_read_start((uv_stream_t *)&sh->pipe, shim__alloc, shim__read);
    }
    uv_timer_init(ex->loop, &inst->start_timer);
    uv_timer_init(ex->loop, &inst->health_timer);
    uv_timer_init(ex->loop, &inst->grace_timer);
    uv_timer_init(ex->loop, &inst->readiness_timer);
    inst->start_timer.data = inst->health_timer.data = inst->grace_timer.data = inst;
    inst->readiness_timer.data = inst;
    inst->handles = 4;
    /* An instance that exited while no daemon listened is reported by its shim (X) on the
     * loop; one that answers is RUNNING at once, so no request is turned away; one that does
     * not yet goes through STARTING as a new one would. */
    if (!exited && executor__answers_now(inst)) {
        executor__set_state(inst, INSTANCE_RUNNING);
        executor__checks_start(inst);
    } else {
        executor__set_state(inst, INSTANCE_STARTING);
        if (!exited) {
            uv_timer_start(&inst->start_timer, executor__start_timed_out,
                           (uint64_t)inst->start_timeout_s * 1000, 0);
            uv_timer_start(&inst->health_timer, executor__health_tick, 0, 0);
        }
    }
    executor__sample_usage(inst);
    inst->next = ex->instances;
    if (ex->instances)
        ex->instances->prev = inst;
    ex->instances = inst;
out:
    if (fd >= 0)
        close(fd);
    json_decref(j);
    free(text);
    free(spec_path);
    free(sock);
    free(scratch);
    return inst;
}

/* Every run/instance-GUID.pid of an instance this executor does not run (it was not adopted). */
static void executor__reap_unadopted(struct executor *ex)
{
    char *run = xasprintf("%s/run", ex->home);
    DIR *d = opendir(run);
    free(run);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (!str_has_prefix(de->d_name, "instance-") || !str_has_suffix(de->d_name, ".pid") ||
            n != strlen("instance-") + 36 + strlen(".pid"))
            continue;
        char guid[37];
        snprintf(guid, sizeof guid, "%.36s", de->d_name + strlen("instance-"));
        if (!strchr(guid, '/') && !executor_find(ex, guid))
            executor__end_leftover(ex, guid);
    }
    closedir(d);
}

int executor_adopt(struct executor *ex, executor_adopt_cb cb, void *ctx)
{
    char *dir = xasprintf("%s/instances", ex->home);
    uv_fs_t req;
    uv_dirent_t ent;
    int adopted = 0;
    if (uv_fs_scandir(NULL, &req, dir, 0, NULL) < 0) {
        free(dir);
        executor__reap_unadopted(ex);
        return 0;
    }
    while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
        if (ent.name[0] == '.' || strchr(ent.name, '/') || executor_find(ex, ent.name) ||
            warm__is_ours(ex, ent.name))
            continue;
        struct instance *inst = executor__adopt_one(ex, ent.name);
        if (!inst)
            continue;
        adopted++;
        struct instance_spec spec = {.health_interval_ms = inst->health_interval_ms,
                                     .health_timeout_ms = inst->health_timeout_ms,
                                     .readiness = inst->readiness,
                                     .readiness_type = inst->readiness_type,
                                     .readiness_endpoint = inst->readiness_endpoint,
                                     .readiness_interval_ms = inst->readiness_interval_ms,
                                     .readiness_timeout_ms = inst->readiness_timeout_ms,
                                     .log_rate_limited = inst->log_rate_limited,
                                     .log_rate_limit = inst->log_rate_limit,
                                     .app_guid = inst->app_guid,
                                     .app_name = inst->app_name,
                                     .process_type = inst->process_type,
                                     .index = inst->index,
                                     .instance_guid = inst->guid,
                                     .app_dir = inst->app_dir,
                                     .command = inst->command,
                                     .port = inst->port,
                                     .memory_mb = inst->memory_mb,
                                     .pids_max = inst->pids_max,
                                     .health = inst->health,
                                     .health_endpoint = inst->health_endpoint,
                                     .start_timeout_s = inst->start_timeout_s};
        struct instance_sidecar *sidecars = xcalloc(inst->n_sidecars + 1, sizeof *sidecars);
        for (size_t k = 0; k < inst->n_sidecars; k++)
            sidecars[k] = (struct instance_sidecar){.name = inst->sidecars[k].name,
                                                    .command = inst->sidecars[k].command};
        spec.sidecars = sidecars;
        spec.n_sidecars = inst->n_sidecars;
        cb(ctx, inst, &spec);
        free(sidecars);
    }
    uv_fs_req_cleanup(&req);
    free(dir);
    executor__reap_unadopted(ex);
    return adopted;
}

struct instance *executor_find(struct executor *ex, const char *instance_guid)
{
    for (struct instance *inst = ex->instances; inst; inst = inst->next)
        if (!strcmp(inst->guid, instance_guid))
            return inst;
    return NULL;
}

void executor_detach(struct executor *ex, void (*done)(void *arg), void *arg)
{
    ex->shutting_down = true;
    warm__discard_all(ex); /* the next executor makes its own */
    ex->shutdown_done = done;
    ex->shutdown_arg = arg;
    while (ex->instances) {
        struct instance *inst = ex->instances;
        inst->final = true;
        if (ex->driver->release)
            inst->detached = true;
        else
            ex->driver->signal(inst, SIGKILL);
        executor__retire(inst);
    }
    if (!ex->done_timer) {
        ex->done_timer = xmalloc(sizeof(uv_timer_t));
        uv_timer_init(ex->loop, ex->done_timer);
        ex->done_timer->data = ex;
    }
    uv_timer_start(ex->done_timer, executor__done_soon, 0, 0);
}

static void executor__free_handle(uv_handle_t *h)
{
    free(h);
}

void executor_free(struct executor *ex)
{
    if (!ex)
        return;
    /* instances still here were not shut down: under a shim they keep running for the
     * next executor; else they are ended without telling anyone */
    while (ex->instances) {
        struct instance *inst = ex->instances;
        inst->final = true;
        if (ex->driver->release)
            inst->detached = true;
        else
            inst->ex->driver->signal(inst, SIGKILL);
        executor__retire(inst);
    }
    warm__discard_all(ex);
    /* shims that ended or were let go: their handles close, what is left is freed there */
    struct executor__shim *sh = ex->shims;
    ex->shims = NULL;
    while (sh) {
        struct executor__shim *next = sh->next;
        sh->ex = NULL; /* freed on its own once closed */
        sh->prev = sh->next = NULL;
        shim__close_pipe(sh);
        sh = next;
    }
    free(ex->shim_path);
    free(ex->runtimes_dir);
    executor__free_container(ex);
    uv_close((uv_handle_t *)ex->usage_timer, executor__free_handle);
    if (ex->warm_timer)
        uv_close((uv_handle_t *)ex->warm_timer, executor__free_handle);
    if (ex->reaper)
        uv_close((uv_handle_t *)ex->reaper, executor__free_handle);
    free(ex->spawned); /* those still running are init's to wait for once we are gone */
    if (ex->done_timer)
        uv_close((uv_handle_t *)ex->done_timer, executor__free_handle);
    free(ex->port_used);
    free(ex->home);
    free(ex);
}

enum instance_state instance_state(const struct instance *inst)
{
    return inst->state;
}

const char *instance_state_name(enum instance_state state)
{
    switch (state) {
    case INSTANCE_STARTING:
        return "STARTING";
    case INSTANCE_RUNNING:
        return "RUNNING";
    case INSTANCE_STOPPING:
        return "STOPPING";
    case INSTANCE_DOWN:
        return "DOWN";
    case INSTANCE_CRASHED:
        return "CRASHED";
    }
    return "UNKNOWN";
}

const char *instance_guid(const struct instance *inst)
{
    return inst->guid;
}
int instance_port(const struct instance *inst)
{
    return inst->port;
}
int instance_pid(const struct instance *inst)
{
    return inst->pid;
}
int64_t instance_since_ms(const struct instance *inst)
{
    return inst->since_ms;
}

void instance_usage(const struct instance *inst, double *cpu, uint64_t *memory_bytes)
{
    if (cpu)
        *cpu = inst->cpu;
    if (memory_bytes)
        *memory_bytes = inst->memory_bytes;
}

bool instance_disk_usage(const struct instance *inst, uint64_t *used, uint64_t *total)
{
    *used = inst->disk_used;
    *total = inst->disk_total;
    return inst->disk_full_told;
}

char **executor_image_layers(struct executor *ex)
{
    char *dir = xasprintf("%s/instances", ex->home);
    DIR *d = opendir(dir);
    size_t n = 0, cap = 8;
    char **out = xcalloc(cap, sizeof *out);
    for (struct dirent *de; d && (de = readdir(d));) {
        if (de->d_name[0] == '.')
            continue;
        char *path = xasprintf("%s/%s/container.json", dir, de->d_name);
        char *text = NULL;
        json_t *j = file_read(path, &text, NULL) == 0 ? json_loads(text, 0, NULL) : NULL;
        const char *layers = json_string_value(json_object_get(j, "image_layers"));
        if (layers) {
            if (n + 1 == cap)
                out = xrealloc(out, (cap *= 2) * sizeof *out);
            out[n++] = xstrdup(layers);
            out[n] = NULL;
        }
        json_decref(j);
        free(text);
        free(path);
    }
    if (d)
        closedir(d);
    free(dir);
    return out;
}

char **executor_app_dirs(struct executor *ex)
{
    size_t n = 0;
    for (struct instance *i = ex->instances; i; i = i->next)
        n++;
    char **out = xcalloc(n + 1, sizeof *out);
    n = 0;
    for (struct instance *i = ex->instances; i; i = i->next)
        if (i->app_dir)
            out[n++] = xstrdup(i->app_dir);
    return out;
}

int64_t instance_host_uid(const struct instance *inst)
{
    if (inst->ex->isolation == EXECUTOR_CONTAINER)
        return (int64_t)inst->ex->uid_base + (inst->user_uid ? inst->user_uid : CONTAINER_VCAP_UID);
    return inst->pid > 0 ? (int64_t)getuid() : -1;
}

bool instance_started_warm(const struct instance *inst)
{
    return inst->warm_started;
}

const char *instance_warm_runtime(const struct instance *inst)
{
    return inst->warm_runtime;
}

const char *instance_sidecar_name(const struct instance *inst, size_t k)
{
    return k < inst->n_sidecars ? inst->sidecars[k].name : NULL;
}

void *instance_user_data(const struct instance *inst)
{
    return inst->user_data;
}
void instance_set_user_data(struct instance *inst, void *data)
{
    inst->user_data = data;
}

/* ---- commands inside an instance (skiff ssh) ------------------------------------------------ */

struct instance_exec {
    struct cgroup *cg;
    char **argv;
    char **env;
};

/* The shell a session without a command gets: bash when the container has it, as Cloud
 * Foundry's stacks do, else sh; a login shell either way. */
#define EXECUTOR_LOGIN_SHELL                                                                       \
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"

int instance_exec_new(struct instance *inst, const struct instance_exec_spec *spec,
                      struct instance_exec **out)
{
    if (inst->ex->isolation != EXECUTOR_CONTAINER || !inst->cg)
        return -ENOTSUP;
    if (inst->final || inst->state == INSTANCE_STOPPING)
        return -ESRCH;
    struct instance_exec *x = xcalloc(1, sizeof *x);
    char name[80];
    snprintf(name, sizeof name, "ssh-%s", spec->id);
    int rc = cgroup_create_child(inst->cg, name, &x->cg);
    if (rc < 0) {
        free(x);
        return rc;
    }
    /* a quarter of the instance's processes stay its own, so that a fork bomb typed into a
     * session does not stop the instance from serving (threads count too). Where a cgroup
     * with processes cannot have limited children (v2), the instance's limit alone holds. */
    int pids = inst->pids_max > 0 ? inst->pids_max : DEFAULT_PIDS_MAX;
    cgroup_set_limits(x->cg, 0, pids - pids / 4 > 8 ? pids - pids / 4 : 8);
    size_t argc = 0;
    x->argv = xcalloc(40, sizeof *x->argv);
    x->argv[argc++] = xstrdup(inst->ex->init_path);
    x->argv[argc++] = xstrdup("--enter");
    x->argv[argc++] = xstrdup(cgroup_join_files(inst->cg)[0]);
    for (const char *const *f = cgroup_join_files(x->cg); *f && argc < 20; f++) {
        x->argv[argc++] = xstrdup("--join");
        x->argv[argc++] = xstrdup(*f);
    }
    if (inst->ex->seccomp_bpf) {
        x->argv[argc++] = xstrdup("--seccomp");
        x->argv[argc++] = xstrdup(inst->ex->seccomp_bpf);
    }
    if (inst->user_uid) { /* an image's User: the session is its, as the program is */
        x->argv[argc++] = xstrdup("--user");
        x->argv[argc++] = xasprintf("%u:%u", inst->user_uid, inst->user_gid);
    }
    if (inst->cwd) { /* an image's WorkingDir: a session starts where the program does */
        x->argv[argc++] = xstrdup("--cwd");
        x->argv[argc++] = xstrdup(inst->cwd);
    }
    if (spec->tty) {
        x->argv[argc++] = xstrdup("--tty");
        x->argv[argc++] = xasprintf("%ux%u", spec->rows, spec->cols);
    }
    x->argv[argc++] = xstrdup("--");
    x->argv[argc++] = xstrdup("/bin/sh");
    x->argv[argc++] = xstrdup("-c");
    x->argv[argc++] = xstrdup(spec->command ? spec->command : EXECUTOR_LOGIN_SHELL);
    /* the instance's own environment (an adopted one's from its spec.json); one adopted from
     * a daemon that did not keep it gets what every container's program starts from */
    static char *const fallback[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=" CONTAINER_APP_DIR,
                                     "TMPDIR=" CONTAINER_TMP_DIR, "LANG=C.UTF-8", NULL};
    char *const *env = inst->env ? inst->env : fallback;
    size_t n = 0;
    while (env[n])
        n++;
    x->env = xcalloc(n + 2, sizeof *x->env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!(spec->term && str_has_prefix(env[i], "TERM=")))
            x->env[k++] = xstrdup(env[i]);
    if (spec->term)
        x->env[k++] = xasprintf("TERM=%s", spec->term);
    *out = x;
    return 0;
}

char *const *instance_exec_argv(const struct instance_exec *x)
{
    return x->argv;
}

char *const *instance_exec_env(const struct instance_exec *x)
{
    return x->env;
}

void instance_exec_free(struct instance_exec *x)
{
    if (!x)
        return;
    cgroup_destroy(x->cg);
    for (char **v = x->argv; *v; v++)
        free(*v);
    free(x->argv);
    for (char **v = x->env; *v; v++)
        free(*v);
    free(x->env);
    free(x);
}
