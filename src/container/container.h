/* container: Skiff's native container runtime, the isolation under every instance and every
 * staging step.
 *
 * A container is a process tree in its own mount, PID, IPC, UTS, cgroup, network and user
 * namespaces. The user namespace maps container uids 0..65535 onto host uids
 * uid_base..uid_base+65535, so nothing in a container is root on the host; the program runs
 * as `vcap` (CONTAINER_VCAP_UID inside) with no capabilities, no_new_privs and the default
 * seccomp filter (seccomp.h), on this root filesystem:
 *
 *   /               overlay: the stack's skeleton (generated /etc, empty mount points) under
 *                   the container's own writable layer on its disk (thrown away at the end)
 *   /usr            the stack's /usr, read-only (bin, lib, sbin are links into it)
 *   /home/vcap/app  overlay: the droplet (read-only) under the container's writable layer
 *   /proc           its own PID namespace's, with the sensitive files masked or read-only
 *   /dev            tmpfs: null zero full random urandom tty, pts (new instance), shm
 *
 * The writable layer lives on an ext4 file system of disk_mb in a file of its own (a loop
 * device), so writing past disk_mb fails with ENOSPC inside and nowhere else. Every mount is
 * made in a private mount namespace: when the container's last process ends, the kernel
 * unmounts everything and frees the loop device; nothing is left on the host but the
 * scratch folder, which the caller removes.
 *
 * skiff-init (src/init/) is the program that does this: its caller (skiff-shim for an
 * instance, the stager for a staging step) runs `skiff-init --config FILE -- PROGRAM ARG...`
 * as root; skiff-init stays on the host side as the container's keeper and ends as the
 * program ends: same exit status, or killed by the same signal. Inside, a small init is
 * PID 1: it reaps orphans and passes on SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2
 * to the program's process group; when the program ends, the rest of the container ends.
 *
 * Sidecars (Cloud Foundry's): more programs started beside the program, each with /bin/sh -c
 * COMMAND, the same environment, working directory and drops (vcap, no capabilities,
 * no_new_privs, the filter), in its own process group that gets the same signals. When the
 * program or any sidecar ends, the container ends, with that one's wait status (a sidecar's
 * end is told first on stderr, as a line of that sidecar). A sidecar's output reaches the
 * container's stdout and stderr a line at a time, each line marked as
 * CONTAINER_SIDECAR_MARK NAME CONTAINER_SIDECAR_MARK TEXT, so that whoever reads the output
 * tells it from the program's (the program can write such a line too: the mark says which
 * sidecar a line claims to be from, it proves nothing). */
#ifndef SKIFF_CONTAINER_H
#define SKIFF_CONTAINER_H

#include <stdbool.h>
#include <stddef.h>

#define CONTAINER_VCAP_UID 2000
#define CONTAINER_UID_RANGE 65536
#define CONTAINER_DEFAULT_UID_BASE 200000
#define CONTAINER_APP_DIR "/home/vcap/app"
#define CONTAINER_TMP_DIR "/home/vcap/tmp"
#define CONTAINER_PORT 8080
#define CONTAINER_DEFAULT_STACK "host"
#define CONTAINER_DEFAULT_STACK_DESCRIPTION                                                     \
    "the machine's own /usr, read-only, under a generated /etc (no download, starts at once)"
#define CONTAINER_NOFILE 16384 /* Cloud Foundry's default file descriptor limit */

enum container_mount_kind {
    CONTAINER_MOUNT_RO,      /* a read-only bind mount */
    CONTAINER_MOUNT_RW,      /* a writable bind mount (staging's build and cache folders) */
    CONTAINER_MOUNT_OVERLAY, /* read-only source under the container's writable layer */
};

struct container_mount {
    char *source; /* host path */
    char *target; /* path inside, absolute */
    enum container_mount_kind kind;
};

/* A sidecar's output line is at most this long (with its mark and newline): one write of
 * at most PIPE_BUF, so that it never interleaves with the program's lines. */
#define CONTAINER_SIDECAR_MARK '\x1e'
#define CONTAINER_SIDECAR_NAME_MAX 63
#define CONTAINER_SIDECAR_LINE_MAX 4096
#define CONTAINER_SIDECARS_MAX 8

#define CONTAINER_SIDECAR_CGROUP_FILES 4 /* v1's hierarchies: memory, pids, cpuacct, cpu */

struct container_sidecar {
    char *name;    /* 1 to CONTAINER_SIDECAR_NAME_MAX of [a-z0-9_-]: marks its output */
    char *command; /* run with /bin/sh -c */
    /* NULL-terminated cgroup.procs files (at most CONTAINER_SIDECAR_CGROUP_FILES) of a cgroup
     * of its own under the container's, which the sidecar joins before it runs (a memory
     * limit apart from the program's), or NULL: it stays in the container's. skiff-init opens
     * them on the host side and the sidecar writes itself to them from inside. */
    char **cgroup_procs;
};

struct container_config {
    char *hostname;
    char *stack;   /* the stack's skeleton folder (container_stack_prepare) */
    char *scratch; /* a host folder of this container's own: disk image, mount points */
    int disk_mb;   /* size of the writable layer; > 0 */
    char *disk_from; /* a disk mounted already to use instead of one of its own (the path of
                        its root, /proc/PID/fd/N of a detached mount its holder keeps open):
                        staging's steps share one; or NULL */
    char *disk_pool; /* folder of ready-made disk images (container_disk_pool_fill), or NULL */
    char *seccomp_bpf; /* the default filter built ahead (seccomp_export_default), or NULL */
    unsigned uid_base;
    char *net_pool;  /* "A.B.C.D/P", or NULL for no network (only lo) */
    int net_slot;
    char *cwd;       /* working directory inside */
    char **cgroup_procs; /* NULL-terminated cgroup.procs files to join first, or NULL */
    struct container_mount *mounts;
    size_t n_mounts;
    char *warm_socket; /* a warm container (see below): the Unix socket, relative to scratch,
                          it listens on once ready; NULL for one that runs its program now */
    char **warm_program; /* a warm container's program run ahead (a runtime's zygote), or
                            NULL: NULL-terminated argv, run as any program is (vcap, no
                            capabilities, the filter), the start then comes to it on fd 3 */
    struct container_sidecar *sidecars; /* run beside the program (see above); none in a
                                           warm container */
    size_t n_sidecars;
    char *image_layers;          /* an image's root instead of the stack's: its layers' folders,
top first, ':'-separated (overlayfs's lowerdir), read-only under
the writable layer; the stack gives only /etc/hosts and
/etc/resolv.conf, the host's /usr is not mounted. NULL: the stack */
    unsigned user_uid, user_gid; /* the program's ids inside (an image's User); 0: vcap */
};

/* What every container of one daemon shares. The executor sets it up (and owns the network
 * slots); the stager borrows it to stage in containers too. */
struct container_site {
    const char *init_path; /* skiff-init */
    const char *stack_dir;
    const char *disk_pool;
    const char *seccomp_bpf; /* or NULL */
    const char *net_pool;
    unsigned uid_base;
    int (*slot_take)(void *ctx); /* a free network slot, or a negative errno */
    void (*slot_give)(void *ctx, int slot);
    void *slot_ctx;
};

/* Gives a tree (never following links) to the containers' vcap: what a container writes to
 * through a writable bind mount (staging's build and cache folders). */
int container_chown_tree(const char *path, unsigned uid_base);

/* The config as JSON (caller frees) and back. */
char *container_config_to_json(const struct container_config *cfg);
int container_config_from_json(const char *text, struct container_config *out, char *err,
                               size_t errlen);
void container_config_clear(struct container_config *cfg);
/* Whether name may name a sidecar (what its output lines are marked with). */
bool container_sidecar_name_valid(const char *name);

/* Runs argv (argv[0] looked up in the container's PATH) with envp in a container as cfg
 * says, and returns once it has ended: its wait status (as waitpid gives it), or a negative
 * errno with a message in err when the container could not be made (nothing of it is left
 * running then). The caller is root on the host. */
int container_run(const struct container_config *cfg, char *const argv[], char *const envp[],
                  char *err, size_t errlen);

/* Warm containers: made ahead, started in a moment. skiff-init with a config naming
 * warm_socket and no program makes the whole container (disk, root, namespaces, network,
 * /proc, pivot_root, the filter read) but for the droplet and the program, then listens on
 * scratch/warm_socket (0600) and waits. container_warm_start hands it what an instance is:
 * the keeper mounts the droplet (an overlay under the writable layer, as for any container)
 * at /home/vcap/app, where it reaches the container by mount propagation (a slave of the
 * keeper's mount: nothing flows back), sets the hostname in the container's UTS namespace,
 * and hands argv and environment to the program, which init forked ahead and which waits
 * for them already as any container's program is (vcap, nothing of root, the filter): it
 * enters /home/vcap/app and execs them. From then on it is an ordinary container: same
 * keeper, same exit. The
 * scratch folder may be renamed once the socket is there (the keeper works relative to it).
 * One start per warm container: the socket is gone once a start is taken, so a container
 * never carries anything from one instance to another.
 *
 * A warm container may run a program ahead (warm_program: a language runtime that loads
 * itself before any app is known). It starts in /home/vcap with PATH, HOME and LANG only,
 * as vcap with everything taken away as from any program, and reads its start from fd 3 to
 * the end: argc, the argv, then the environment, each NUL-terminated (the droplet is mounted
 * and the hostname set by then). It is the program from then on: its end is the container's.
 * If it ends before a start comes, the container ends with it (exit 125). A start marked
 * afresh ends it instead and runs its argv as any container does. */
struct container_start {
    const char *hostname; /* the instance's guid */
    const char *app_dir;  /* host path of the droplet's app/ folder */
    char *const *argv;    /* NULL-terminated; argv[0] looked up in PATH inside */
    char *const *envp;    /* NULL-terminated */
    bool afresh; /* in a container with a program run ahead: end that program and run argv
                    as a container made at start would (what the environment asks for
                    cannot be taken on by a program already started) */
};
/* Sends start to the warm container listening at socket_path (its connection closed at
 * once: what goes wrong later is the program's end, exit 125 with the reason on stderr, as
 * for a container that could not be made). -ECONNREFUSED or -ENOENT when none listens
 * there (not ready yet, or gone). */
int container_warm_start(const char *socket_path, const struct container_start *start,
                         char *err, size_t errlen);

/* Running a command inside a container that runs already (`skiff ssh`): in all of its
 * namespaces (user, mount, PID, IPC, UTS, network, cgroup), as vcap with what any program of
 * a container gets (no capabilities, no_new_privs, the rlimits, the seccomp filter), with
 * envp, in cwd (else /home/vcap/app). The container's init is found in cgroup_procs (its cgroup),
 * and the command first joins the cgroups of join (one of its own under the container's, so the
 * container's limits hold and its owner can end every process the command started). With
 * tty, the command gets a terminal of the container's /dev/pts (rows x cols) and this
 * process moves bytes between its stdin/stdout and the terminal, reading window sizes from
 * fd 3 (rows and columns, two bytes each, big-endian); without, the command has this
 * process's stdin, stdout and stderr. Returns the command's wait status once it has ended
 * (127: not found, 126: could not run, with a message on its stderr), or a negative errno
 * with a message in err when it could not start (-ESRCH: the container is not running).
 * The caller is root on the host and single-threaded (setns into a user namespace refuses
 * threads); skiff-init --enter is that process. */
struct container_enter {
    const char *cgroup_procs;
    char *const *join;       /* NULL-terminated, or NULL */
    const char *seccomp_bpf; /* the filter built ahead (seccomp_export_default), or NULL */
    bool tty;
    unsigned short rows, cols; /* 0: 24 x 80 */
    unsigned uid, gid; /* the command's ids inside, the program's (an image's User); 0: vcap */
    const char *cwd; /* where it starts inside (an image's WorkingDir), or NULL: CONTAINER_APP_DIR;
                        one that is not there: the next of /home/vcap/app, /home/vcap, / */
};
int container_enter(const struct container_enter *e, char *const argv[], char *const envp[],
                    char *err, size_t errlen);

/* The stack "host" under home/stacks/host: a skeleton root (generated /etc with passwd and
 * group naming vcap, hosts, resolv.conf, nsswitch.conf; mount points; /bin /lib /sbin as links
 * into /usr) made once and brought up to date at each daemon start. *dir is set to its path
 * (caller frees). */
int container_stack_prepare(const char *home, char **dir, char *err, size_t errlen);

/* Disk images: ext4 file systems in sparse files, made ahead of time so that a start only
 * takes one (a rename). container_disk_pool_fill makes images of size_mb in pool_dir until
 * `keep` of that size are ready (run it off the event loop: mkfs takes ~10 ms each).
 * container_disk_take moves a ready image of size_mb to path, or makes one there. */
int container_disk_pool_fill(const char *pool_dir, int size_mb, int keep, char *err,
                             size_t errlen);
int container_disk_take(const char *pool_dir, int size_mb, const char *path, char *err,
                        size_t errlen);
/* The disk server: keeps disks of the sizes asked for (starting with size_mb) mounted ahead,
 * as detached mounts only this process holds, and hands them to starting containers over
 * POOL_DIR/mounted.sock, so that a start does no loop device and no ext4 mount of its own.
 * When the process ends or stops the server, the disks it still holds unmount themselves;
 * when no server answers, a start makes its disk as before. Runs two threads of its own
 * (mkfs and mounts never touch the caller's thread); the caller owns *out and stops it. */
struct container_disk_server;
int container_disk_server_start(const char *pool_dir, int size_mb,
                                struct container_disk_server **out, char *err, size_t errlen);
void container_disk_server_stop(struct container_disk_server *server);
/* How many disks of size_mb it holds ready now. */
int container_disk_server_ready(struct container_disk_server *server, int size_mb);

/* A disk of size_mb as a detached mount: the fd (close-on-exec; the caller owns it) of one the
 * disk server of pool_dir holds ready when it has one, else of an image of the pool (or a new
 * one) attached and mounted here. Its files are reached at /proc/PID/fd/N; a container takes
 * it through disk_from. Closing the fd unmounts it (once no container uses it) and frees its
 * loop device; nothing is mounted on the host. A negative errno with err filled. */
int container_disk_open(const char *pool_dir, int size_mb, char *err, size_t errlen);

/* Bytes used and total of a mounted disk (statfs of dir). */
int container_disk_usage(const char *dir, unsigned long long *used, unsigned long long *total);
/* Whether a disk with these figures is full: ext4 keeps back ~2% (at most 16 MB, at least
 * about 1 MB) for its own allocations, so writes fail with ENOSPC while statfs still shows
 * that much free. */
bool container_disk_is_full(unsigned long long used, unsigned long long total);

#endif
