/* executor: runs instances and tells the caller what happens to them.
 *
 * An instance is a supervised process group running one process of a staged app. The
 * executor starts it with the environment it is given, captures stdout and stderr line by
 * line, runs its health check, and reports state changes. It never restarts anything itself:
 * what to do about a crash is the scheduler's decision (see daemon/).
 *
 * The executor is driven from one libuv loop and is not thread-safe. Callbacks run on that
 * loop. A `struct instance` is owned by the executor; the caller's pointer stays valid until
 * the on_state callback reports INSTANCE_DOWN or INSTANCE_CRASHED, after which it is freed as
 * soon as the callback returns.
 *
 * Isolation: EXECUTOR_CONTAINER (what skiffd uses) runs every instance in a container of its
 * own (container/container.h) with its own address from the network pool; EXECUTOR_PROCESS
 * runs plain process groups in cgroups on the host's loopback, with no isolation between
 * instances or from the platform: for development and tests of the executor itself. */
#ifndef SKIFF_EXECUTOR_H
#define SKIFF_EXECUTOR_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct executor;
struct instance;

enum instance_state {
    INSTANCE_STARTING, /* process running, health check not yet passed */
    INSTANCE_RUNNING,  /* healthy: may take traffic */
    INSTANCE_STOPPING, /* SIGTERM sent */
    INSTANCE_DOWN,     /* stopped on request (final) */
    INSTANCE_CRASHED,  /* exited or was killed without being asked to stop (final) */
};

enum health_check_type { HEALTH_PORT, HEALTH_HTTP, HEALTH_PROCESS };

struct instance_exit {
    int exit_status;    /* -1 when killed by a signal */
    int term_signal;    /* 0 when it exited */
    const char *reason; /* "exited", "start timeout", "health check failed", "out of memory",
                           "process limit reached" (it exited after a fork was refused) */
};

/* A RUNNING instance's readiness check changed its result (instance_spec.readiness). */
typedef void (*instance_readiness_cb)(void *ctx, struct instance *inst, bool ready);

enum executor_isolation {
    EXECUTOR_PROCESS,   /* host processes on 127.0.0.1:PORT: UNSAFE for untrusted code */
    EXECUTOR_CONTAINER, /* containers, each at its own address, listening on 8080 */
};

struct executor_config {
    const char *home; /* $SKIFF_HOME: instance scratch lives under home/instances */
    int port_min;     /* instance ports are taken from [port_min, port_max] */
    int port_max;
    int grace_ms;          /* SIGTERM -> SIGKILL; default 10000 */
    int liveness_ms;       /* health check period once RUNNING; default 3000. Three failed
                              checks in a row crash the instance ("health check failed") */
    const char *shim_path; /* skiff-shim: each instance runs under one (shim/shim.h) and
                              outlives the executor, for executor_adopt in the next one.
                              NULL: instances are the executor's children and end with it */
    enum executor_isolation isolation;
    /* containers only */
    const char *init_path; /* skiff-init */
    const char *net_pool;  /* "A.B.C.D/P"; NULL: NET_DEFAULT_POOL */
    unsigned uid_base;     /* host uid of container root; 0: CONTAINER_DEFAULT_UID_BASE */
    bool egress;           /* instances may reach public addresses (through NAT) */
    int prewarm; /* warm containers kept ready (container.h; with a shim only): an instance
                    of the default disk size takes one and starts in a few milliseconds
                    instead of having its container made; 0: none. As many again run a
                    language runtime ahead, for each runtime an instance has started with;
                    more of a kind after a burst of starts (executor_warm_target) */
    int64_t prewarm_window_ms;     /* how long a burst of starts keeps the pool grown (its
                                      window, executor_warm_target); 0: EXECUTOR_WARM_DEMAND_MS */
    uint64_t prewarm_memory_bytes; /* the warm containers' memory budget: refill stops when
                                      the pool's memory (each container's cgroup, as
                                      measured) and one more of the kind (the most one of its
                                      kind has used) would pass it; 0: the default,
                                      EXECUTOR_DEFAULT_PREWARM_MEMORY_MB */
    const char *runtimes_dir; /* the buildpacks folder: the runtimes' warm programs
                                 (function-python/warm/zygote.py); NULL: none */
    instance_readiness_cb on_readiness; /* NULL: readiness results are not reported */
};

#define EXECUTOR_DEFAULT_PREWARM_MEMORY_MB 256

/* Whether a warm container of `next_bytes` fits beside a pool that uses `pool_bytes` within
 * `budget_bytes` (the refill's rule). */
bool executor_warm_fits(uint64_t pool_bytes, uint64_t next_bytes, uint64_t budget_bytes);

/* The warm pool follows the starts: after a burst (starts asked for warm containers of one
 * kind within EXECUTOR_WARM_BURST_MS of each other, within the window: by default the last
 * EXECUTOR_WARM_DEMAND_MS, skiffd --prewarm-window-ms), that many of the kind are kept, up to
 * EXECUTOR_WARM_POOL_MAX (the memory budget still holds). */
#define EXECUTOR_WARM_BURST_MS 1000
#define EXECUTOR_WARM_DEMAND_MS 60000
#define EXECUTOR_WARM_WINDOW_MIN_MS 1000    /* the shortest window --prewarm-window-ms takes */
#define EXECUTOR_WARM_WINDOW_MAX_MS 3600000 /* and the longest */
#define EXECUTOR_WARM_POOL_MAX 8

/* How many warm containers of a kind to keep: prewarm (0: none, whatever the starts), or the
 * most of the n times in `asked` (ms, 0: unused) that fall within EXECUTOR_WARM_BURST_MS of
 * each other, counting from those within window_ms before now_ms, at most
 * EXECUTOR_WARM_POOL_MAX (or prewarm, when more). */
int executor_warm_target(int prewarm, const uint64_t *asked, size_t n, uint64_t now_ms,
                         int64_t window_ms);

/* A sidecar (Cloud Foundry's): a command run beside the instance's, in its container (same
 * network, files, environment, limits, drops), started and ended with it; its end is the
 * instance's (a crash). Containers only, and never in a warm one: an instance with sidecars
 * takes its slot from executor_port_allocate. */
struct instance_sidecar {
    const char *name;    /* container_sidecar_name_valid(); tags its output */
    const char *command; /* run with /bin/sh -c */
    int memory_mb;       /* > 0: its own memory limit (a cgroup under the instance's, cgroup v1
                            only); past it the kernel kills it, and its end is the instance's */
};

struct instance_spec {
    const char *app_guid;
    const char *app_name;
    const char *process_type; /* "web", or a function's name */
    int index;
    const char *instance_guid;
    const char *app_dir; /* the staged app (droplet's app/ folder); the working directory */
    const char *command; /* run with /bin/sh -c */
    char *const *env;    /* NULL-terminated KEY=VALUE list, complete (PORT included) */
    int port;            /* from executor_port_allocate (a network slot for containers) */
    int memory_mb;       /* 0: no limit */
    int disk_mb;         /* the writable layer of a container (0: 1024); not enforced for
                            EXECUTOR_PROCESS */
    int pids_max; /* 0: a safe default */
    enum health_check_type health;
    const char *health_endpoint; /* for HEALTH_HTTP */
    int start_timeout_s;         /* default 60 */
    int health_interval_ms;      /* liveness probe period once RUNNING; 0: the executor's */
    int health_timeout_ms;       /* one probe's deadline (connect and answer); 0: 1000 */
    /* A readiness check (Cloud Foundry's): once RUNNING, probed every readiness_interval_ms
     * (0: as the liveness check); each change of its result goes to on_readiness, starting
     * from "not ready". A failing readiness check never kills the instance. */
    bool readiness;
    enum health_check_type readiness_type;
    const char *readiness_endpoint; /* for HEALTH_HTTP; NULL: "/" */
    int readiness_interval_ms;
    int readiness_timeout_ms; /* 0: 1000 */
    /* Output past log_rate_limit bytes in a second is dropped, with one notice a second
     * through on_output (INSTANCE_STREAM_LOG). */
    bool log_rate_limited;
    int64_t log_rate_limit;
    const struct instance_sidecar *sidecars; /* at most CONTAINER_SIDECARS_MAX */
    size_t n_sidecars;
    /* an image app's instance (containers only): its root is the image's layers (container.h
     * image_layers) instead of the stack and the droplet, argv (NULL-terminated) is exec'd as
     * it is (command is then only what is shown), in cwd, as user_uid:user_gid (0: vcap) */
    const char *image_layers;
    char *const *argv;
    const char *cwd;
    unsigned user_uid, user_gid;
    int inside_port; /* the port it listens on inside its container (an image's exposed
                        one); 0: CONTAINER_PORT. Containers only */
};

/* stream 1 and 2 are the instance's stdout and stderr; INSTANCE_STREAM_CELL is a notice of
 * the executor's own about it (e.g. "disk quota exceeded"). */
#define INSTANCE_STREAM_CELL 3
/* a notice of the executor's about the instance's logging (its log rate limit) */
#define INSTANCE_STREAM_LOG 4
/* INSTANCE_STREAM_SIDECAR + 2k and + 2k + 1: the stdout and stderr of the instance's sidecar
 * k (instance_sidecar_name), or the container's word on why it ended (stderr). */
#define INSTANCE_STREAM_SIDECAR 5
typedef void (*instance_output_cb)(void *ctx, struct instance *inst, int stream,
                                   const char *line, size_t len);
typedef void (*instance_state_cb)(void *ctx, struct instance *inst, enum instance_state state,
                                  const struct instance_exit *exit /* final states only */);

int executor_new(uv_loop_t *loop, const struct executor_config *cfg, instance_output_cb on_output,
                 instance_state_cb on_state, void *ctx, struct executor **out);
/* Stops every instance (SIGTERM, SIGKILL after the grace period), then calls done. */
void executor_shutdown(struct executor *ex, void (*done)(void *arg), void *arg);
/* Lets go of every instance without stopping it (with shims; without, they are killed) and
 * without any callback, then calls done from the loop: for a daemon that exits so that its
 * successor adopts the instances. No instance can be started afterwards. */
void executor_detach(struct executor *ex, void (*done)(void *arg), void *arg);
/* Lets go of one instance as executor_detach does (no callback; inst is freed): for an
 * instance that outlives this daemon while executor_shutdown, called after, stops the others. */
void executor_let_go(struct instance *inst);
/* Frees the executor. Instances still here are let go as by executor_detach. */
void executor_free(struct executor *ex);

/* Adoption. executor_new ends what a previous executor on the same home left without a
 * shim; instances whose shim still answers are left for executor_adopt, which takes each
 * one over and calls cb with it and its spec (as it was started; env is NULL). The output
 * the shim kept while nobody listened comes through on_output afterwards, on the loop. An
 * adopted instance that answers its health check at once (checked, blocking, within a
 * second) is INSTANCE_RUNNING from the start and this is not reported through on_state;
 * otherwise it is INSTANCE_STARTING and goes on as a new one would. One that exited while
 * nobody listened is reported CRASHED (with its exit status) through on_state, later.
 * The caller stops those it does not want (executor_stop). Then what is still running but
 * could not be adopted (its shim is gone: killed with the daemon) is ended: the executor is
 * the one owner of the pid files under home/run and of leftover processes. Returns how many
 * were adopted. */
typedef void (*executor_adopt_cb)(void *ctx, struct instance *inst,
                                  const struct instance_spec *spec);
int executor_adopt(struct executor *ex, executor_adopt_cb cb, void *ctx);
/* The live instance with that guid, or NULL. */
struct instance *executor_find(struct executor *ex, const char *instance_guid);
/* The image layers (an overlay lowerdir each) of every instance whose container this machine
 * has configured and not yet ended, adopted ones included: NULL-terminated, caller frees each
 * and the list. Read from their container configs on disk: what is told here is what they
 * mount. */
char **executor_image_layers(struct executor *ex);
/* The app_dir of every instance this executor has not yet retired (starting, running,
 * stopping, adopted): NULL-terminated, caller frees each and the list. What a droplet's
 * folder may not be removed under. */
char **executor_app_dirs(struct executor *ex);

/* A free slot for a new instance, or a negative errno when none is left: a port on
 * 127.0.0.1 for EXECUTOR_PROCESS, a network slot (its own address) for containers. */
int executor_port_allocate(struct executor *ex);
/* The same for an instance whose writable layer is disk_mb (0: the default) and which runs
 * command: the slot of a warm container when one is ready (one running the command's
 * language runtime ahead, when it has one), which executor_start then uses. */
int executor_port_allocate_for(struct executor *ex, int disk_mb, const char *command);

/* How the platform reaches an instance on that slot, and what the instance sees. */
struct instance_endpoint {
    char addr[64]; /* "IP:PORT": where the router, health checks and the invoker connect */
    int port;      /* $PORT: what the instance listens on */
};
void executor_endpoint(const struct executor *ex, int slot, struct instance_endpoint *out);
/* The same for a program that listens on inside_port in its container (0: CONTAINER_PORT). */
void executor_endpoint_at(const struct executor *ex, int slot, int inside_port,
                          struct instance_endpoint *out);
/* Where a live instance is reached (its spec's inside_port taken into account). */
void instance_endpoint(const struct instance *inst, struct instance_endpoint *out);
/* HOME and TMPDIR as the instance sees them (caller frees both). */
void executor_instance_dirs(const struct executor *ex, const char *instance_guid,
                            const char *app_dir, char **home, char **tmpdir);
/* The executor's isolation. */
enum executor_isolation executor_isolation(const struct executor *ex);
/* What containers share (the stager's containers use it too), or NULL for EXECUTOR_PROCESS.
 * Valid for the executor's life. */
struct container_site;
const struct container_site *executor_container_site(struct executor *ex);
/* Gives back a port that was allocated but not passed to a started instance (an instance's
 * port is released by the executor when it ends, or when executor_start fails). */
void executor_port_release(struct executor *ex, int port);

/* Starts an instance. On error nothing was started, no callback will come, and the port is
 * released. The spec is copied. The instance begins in INSTANCE_STARTING; on_state reports
 * RUNNING and the final state, never from inside executor_start or executor_stop (STARTING
 * and STOPPING are entered by those calls and are not reported). The executor makes
 * home/instances/<instance_guid>/tmp for HOME/TMPDIR and removes it when the instance ends. */
int executor_start(struct executor *ex, const struct instance_spec *spec, struct instance **out);
/* SIGTERM, then SIGKILL after the grace period; ends with INSTANCE_DOWN. Idempotent. */
void executor_stop(struct instance *inst);

/* A command run inside a running instance's container (`skiff ssh`; container_enter says
 * what inside means). instance_exec_new makes it a cgroup of its own under the instance's
 * (the instance's memory and process limits hold for it; instance_exec_free ends every
 * process it started) and the command line that runs it: argv (skiff-init --enter ...,
 * `/bin/sh -c command`, or a login shell when command is NULL) with env (the instance's own
 * environment, TERM replaced by term when given); the caller spawns it single-threaded (a
 * process of its own). -ENOTSUP for an instance not in a container, -ESRCH for one that is
 * stopping or gone, -EEXIST for an id in use. x does not depend on inst afterwards: when the
 * instance ends, the command ends with its container. */
struct instance_exec;
struct instance_exec_spec {
    const char *id;      /* unique among the instance's commands: [A-Za-z0-9-] */
    const char *command; /* or NULL: a login shell */
    bool tty;            /* a terminal of rows x cols (skiff-init reads resizes on fd 3) */
    unsigned rows, cols;
    const char *term; /* TERM for the command, or NULL */
};
int instance_exec_new(struct instance *inst, const struct instance_exec_spec *spec,
                      struct instance_exec **out);
char *const *instance_exec_argv(const struct instance_exec *x);
char *const *instance_exec_env(const struct instance_exec *x);
/* Kills what the command left running, removes its cgroup, frees x. */
void instance_exec_free(struct instance_exec *x);

enum instance_state instance_state(const struct instance *inst);
const char *instance_state_name(enum instance_state state);
const char *instance_guid(const struct instance *inst);
int instance_port(const struct instance *inst);
int instance_pid(const struct instance *inst);
/* Time of the last state change, milliseconds since the epoch. */
int64_t instance_since_ms(const struct instance *inst);
/* CPU use (fraction of one core over the last sample) and resident memory in bytes. */
void instance_usage(const struct instance *inst, double *cpu, uint64_t *memory_bytes);
/* Bytes written to a container's writable layer and its size (0 and 0 without one); true
 * when it is full (its disk quota is used: writes fail with ENOSPC). */
bool instance_disk_usage(const struct instance *inst, uint64_t *used, uint64_t *total);
/* The host uid its program runs as (a container's vcap), or -1 when not known. */
int64_t instance_host_uid(const struct instance *inst);
/* Whether it started in a warm container (executor_config.prewarm). */
bool instance_started_warm(const struct instance *inst);
/* The language runtime its warm container had started ahead ("python"), or NULL. */
const char *instance_warm_runtime(const struct instance *inst);
/* The name of its sidecar k (as its spec gave it), or NULL past the last. */
const char *instance_sidecar_name(const struct instance *inst, size_t k);
void *instance_user_data(const struct instance *inst);
void instance_set_user_data(struct instance *inst, void *data);

#endif
