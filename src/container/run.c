/* container_run: makes a container and runs one program in it (see container.h).
 *
 * The order matters:
 *   1. (host root) join the cgroups, so everything after is inside the limits;
 *   2. (host root) a private mount namespace; the disk, the root overlay, /usr, the droplet,
 *      /dev, all mounted with full privilege under scratch/root;
 *   3. clone into new user, mount, PID, IPC, UTS, network and cgroup namespaces. The mounts
 *      of step 2 come along, locked: nothing inside can unmount or remount them writable;
 *   4. (host root) uid and gid maps, the network (net_attach), then "go";
 *   5. (container root) hostname, /proc, /dev/pts, pivot_root; fork the program;
 *   6. (vcap) no capabilities, no_new_privs, rlimits, seccomp, exec.
 * The child tells the host side what went wrong through a close-on-exec pipe, so an error
 * is a message, and the end of that pipe without one means the program is running. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <poll.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "common/start_trace.h"
#include "common/util.h"
#include "container/container.h"
#include "container/container_internal.h"
#include "container/net.h"
#include "container/seccomp.h"

#define RUN_START_MAX (16 << 20) /* a warm container's start: argv and env */

struct run_child {
    const struct container_config *cfg;
    char *const *argv;
    char *const *envp;
    const char *root;
    int sync_rd;   /* "go" from the host side */
    int err_wr;    /* a message when something fails before exec (close-on-exec) */
    int status_wr; /* init: the program's wait status when it ends */
    /* a warm container only */
    int ready_wr; /* init says 'r' once all is made but the program */
    int start_rd; /* the start from the keeper: hostname, argc, argv, env; NUL-separated */
    int start_wr; /* (the keeper's end, closed in init) */
    char *start;  /* the start as init read it, and its length */
    size_t start_len;
    bool start_afresh; /* the program run ahead is ended, argv run as usual */
    /* sidecar i's cgroup.procs files, opened on the host side (close-on-exec):
     * sidecar_cgroups[i * CONTAINER_SIDECAR_CGROUP_FILES + k], -1 past its last */
    int *sidecar_cgroups;
};

/* ---- small helpers ------------------------------------------------------------------------ */

static int run__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int run__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

static int run__write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int rc = n == (ssize_t)strlen(text) ? 0 : -errno;
    close(fd);
    return rc;
}

static int run__write_all(int fd, const void *data, size_t len)
{
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, (const char *)data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        off += (size_t)n;
    }
    return 0;
}

/* mount(2) with a message; bind mounts made read-only take a second call, as the kernel
 * ignores MS_RDONLY on the first. */
static int run__mount(const char *src, const char *dst, const char *type, unsigned long flags,
                      const char *data, char *err, size_t errlen)
{
    if (mount(src, dst, type, flags, data) < 0)
        return run__fail(err, errlen, -errno, "cannot mount %s on %s: %s", src ? src : type, dst,
                         skiff_strerror(-errno));
    return 0;
}

static int run__bind(const char *src, const char *dst, bool writable, char *err, size_t errlen)
{
    int rc = run__mount(src, dst, NULL, MS_BIND | MS_REC, NULL, err, errlen);
    if (rc == 0)
        rc = run__mount(NULL, dst, NULL,
                        MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (writable ? 0 : MS_RDONLY),
                        NULL, err, errlen);
    return rc;
}

static char *run__path(const char *root, const char *inside)
{
    return xasprintf("%s%s", root, inside);
}

/* An empty file or folder to mount over, made like its source. */
static int run__mountpoint(const char *path, bool dir)
{
    if (dir)
        return mkdir_p(path, 0755);
    char *parent = xstrdup(path);
    char *slash = strrchr(parent, '/');
    if (slash)
        *slash = '\0';
    int rc = slash && slash != parent ? mkdir_p(parent, 0755) : 0;
    free(parent);
    if (rc < 0)
        return rc;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    close(fd);
    return 0;
}

/* ---- step 2: the root file system, as host root ---------------------------------------- */

static int run__overlay(const char *lower, const char *disk, const char *name, const char *dst,
                        char *err, size_t errlen)
{
    char *upper = xasprintf("%s/%s-upper", disk, name);
    char *work = xasprintf("%s/%s-work", disk, name);
    int rc = mkdir_p(upper, 0755);
    if (rc == 0)
        rc = mkdir_p(work, 0700);
    /* the merged root takes the upper folder's owner and mode: make them the lower's */
    struct stat st;
    if (rc == 0 && stat(lower, &st) == 0) {
        if (chown(upper, st.st_uid, st.st_gid) < 0 || chmod(upper, st.st_mode & 07777) < 0)
            rc = -errno;
    }
    if (rc < 0) {
        rc = run__fail(err, errlen, rc, "cannot prepare the writable layer %s: %s", upper,
                       skiff_strerror(rc));
    } else {
        char *opts = xasprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, upper, work);
        rc = run__mount("overlay", dst, "overlay", MS_NOSUID | MS_NODEV, opts, err, errlen);
        free(opts);
    }
    free(upper);
    free(work);
    return rc;
}

static int run__dev(const char *root, char *err, size_t errlen)
{
    char *dev = run__path(root, "/dev");
    int rc = run__mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k", err,
                        errlen);
    static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    for (size_t i = 0; i < ARRAY_SIZE(nodes) && rc == 0; i++) {
        char *src = xasprintf("/dev/%s", nodes[i]);
        char *dst = xasprintf("%s/%s", dev, nodes[i]);
        rc = run__mountpoint(dst, false);
        if (rc == 0)
            rc = run__mount(src, dst, NULL, MS_BIND, NULL, err, errlen);
        else
            rc = run__fail(err, errlen, rc, "cannot create %s: %s", dst, skiff_strerror(rc));
        free(src);
        free(dst);
    }
    static const char *const links[][2] = {{"fd", "/proc/self/fd"},
                                           {"stdin", "/proc/self/fd/0"},
                                           {"stdout", "/proc/self/fd/1"},
                                           {"stderr", "/proc/self/fd/2"},
                                           {"ptmx", "pts/ptmx"}};
    for (size_t i = 0; i < ARRAY_SIZE(links) && rc == 0; i++) {
        char *dst = xasprintf("%s/%s", dev, links[i][0]);
        if (symlink(links[i][1], dst) < 0)
            rc =
                run__fail(err, errlen, -errno, "cannot create %s: %s", dst, skiff_strerror(-errno));
        free(dst);
    }
    if (rc == 0) {
        char *pts = xasprintf("%s/pts", dev);
        char *shm = xasprintf("%s/shm", dev);
        rc = mkdir_p(pts, 0755);
        if (rc == 0)
            rc = mkdir_p(shm, 01777);
        if (rc == 0)
            rc = run__mount("shm", shm, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                            "mode=1777,size=65536k", err, errlen);
        free(pts);
        free(shm);
    }
    free(dev);
    return rc;
}

/* The writable layer's disk at dir: the caller's (disk_from, a clone of its mount: the
 * caller's stays its own), else one mounted ahead by the disk server when it has one, else an
 * image of the pool (or a new one) attached and mounted here. */
static int run__disk(const struct container_config *cfg, const char *image, const char *dir,
                     char *err, size_t errlen)
{
    if (cfg->disk_from) {
        /* no disk of our own in its place: the caller's quota is the one that must hold */
        int tree = open_tree(AT_FDCWD, cfg->disk_from, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
        if (tree < 0)
            return run__fail(err, errlen, -errno, "cannot take the disk at %s: %s", cfg->disk_from,
                             skiff_strerror(-errno));
        int moved = move_mount(tree, "", AT_FDCWD, dir, MOVE_MOUNT_F_EMPTY_PATH);
        int rc = moved < 0 ? -errno : 0;
        close(tree);
        if (rc < 0)
            return run__fail(err, errlen, rc, "cannot mount the disk at %s: %s", cfg->disk_from,
                             skiff_strerror(rc));
        return 0;
    }
    int fd = container__disk_receive(cfg->disk_pool, cfg->disk_mb);
    if (fd >= 0) {
        int moved = move_mount(fd, "", AT_FDCWD, dir, MOVE_MOUNT_F_EMPTY_PATH);
        close(fd); /* attached, the mount no longer needs it; unattached, it goes with it */
        if (moved == 0)
            return 0;
    }
    int rc = container_disk_take(cfg->disk_pool, cfg->disk_mb, image, err, errlen);
    if (rc == 0)
        rc = container__disk_mount(image, dir, err, errlen);
    return rc;
}

/* A warm container's /home/vcap/app, where its droplet arrives after the container is made:
 * a mount of its own, shared, so that the container's copy (made in a less privileged
 * namespace, the kernel turns it into a slave) receives the droplet mounted on the keeper's
 * side later, and nothing mounted inside comes back. */
static int run__warm_mountpoint(const char *root, char *err, size_t errlen)
{
    char *app = run__path(root, CONTAINER_APP_DIR);
    int rc = run__mountpoint(app, true);
    if (rc < 0)
        rc = run__fail(err, errlen, rc, "cannot create %s: %s", app, skiff_strerror(rc));
    if (rc == 0)
        rc = run__mount(app, app, NULL, MS_BIND, NULL, err, errlen);
    if (rc == 0)
        rc = run__mount(NULL, app, NULL, MS_SHARED, NULL, err, errlen);
    free(app);
    return rc;
}

static int run__rootfs(const struct container_config *cfg, const char *root, char *err,
                       size_t errlen)
{
    char *disk = xasprintf("%s/disk", cfg->scratch);
    char *image = xasprintf("%s/disk.img", cfg->scratch);
    uid_t vcap = cfg->uid_base + CONTAINER_VCAP_UID;
    int rc = mkdir_p(disk, 0700);
    if (rc == 0)
        rc = mkdir_p(root, 0755);
    if (rc < 0) {
        rc = run__fail(err, errlen, rc, "cannot create %s: %s", disk, skiff_strerror(rc));
        goto out;
    }
    rc = run__disk(cfg, image, disk, err, errlen);
    start_trace("make: keeper: disk");
    if (rc == 0)
        rc = run__overlay(cfg->image_layers ? cfg->image_layers : cfg->stack, disk, "root", root,
                          err, errlen);
    start_trace("make: keeper: root overlay");
    if (rc == 0 && cfg->image_layers)
        rc = container__image_root(cfg, root, err, errlen);
    if (rc < 0)
        goto out;
    /* vcap's home in this container's own layer */
    static const char *const homes[] = {"/home/vcap", CONTAINER_TMP_DIR};
    for (size_t i = 0; i < ARRAY_SIZE(homes) && rc == 0; i++) {
        char *p = run__path(root, homes[i]);
        if (chown(p, vcap, vcap) < 0)
            rc = run__fail(err, errlen, -errno, "cannot chown %s: %s", p, skiff_strerror(-errno));
        free(p);
    }
    char *usr = run__path(root, "/usr");
    if (rc == 0 && !cfg->image_layers) /* an image brings its own */
        rc = run__bind("/usr", usr, false, err, errlen);
    free(usr);
    /* public material the host's programs look for: CA certificates, alternatives links */
    static const char *const etc[] = {"/etc/ssl", "/etc/alternatives"};
    for (size_t i = 0; i < ARRAY_SIZE(etc) && rc == 0 && !cfg->image_layers; i++) {
        struct stat st;
        if (stat(etc[i], &st) < 0 || !S_ISDIR(st.st_mode))
            continue;
        char *p = run__path(root, etc[i]);
        rc = run__bind(etc[i], p, false, err, errlen);
        free(p);
    }
    for (size_t i = 0; i < cfg->n_mounts && rc == 0; i++) {
        const struct container_mount *m = &cfg->mounts[i];
        if (strstr(m->target, "/..") || !strcmp(m->target, "/")) {
            rc = run__fail(err, errlen, -EINVAL, "bad mount target %s", m->target);
            break;
        }
        struct stat st;
        if (stat(m->source, &st) < 0) {
            rc = run__fail(err, errlen, -errno, "cannot mount %s: %s", m->source,
                           skiff_strerror(-errno));
            break;
        }
        char *dst = run__path(root, m->target);
        rc = run__mountpoint(dst, S_ISDIR(st.st_mode));
        if (rc < 0) {
            rc = run__fail(err, errlen, rc, "cannot create %s: %s", dst, skiff_strerror(rc));
        } else if (m->kind == CONTAINER_MOUNT_OVERLAY) {
            char name[32];
            snprintf(name, sizeof name, "mount%zu", i);
            rc = run__overlay(m->source, disk, name, dst, err, errlen);
        } else {
            rc = run__bind(m->source, dst, m->kind == CONTAINER_MOUNT_RW, err, errlen);
        }
        free(dst);
    }
    if (rc == 0 && cfg->warm_socket)
        rc = run__warm_mountpoint(root, err, errlen);
    start_trace("make: keeper: binds (/usr, /etc, the app's mount point)");
    if (rc == 0)
        rc = run__dev(root, err, errlen);
    start_trace("make: keeper: /dev");
out:
    free(disk);
    free(image);
    return rc;
}

/* ---- steps 5 and 6: inside ------------------------------------------------------------------ */

static void run__child_fail(struct run_child *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), noreturn));
static void run__child_fail(struct run_child *c, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n > 0) {
        ssize_t w = write(c->err_wr, msg, (size_t)(n < (int)sizeof msg ? n : (int)sizeof msg - 1));
        (void)w; /* nothing more to tell anyone when even this fails */
    }
    _exit(125);
}

static void run__lo_up(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    close(fd);
}

/* /proc of the container's own PID namespace, with Docker's masked and read-only paths. */
static void run__proc(struct run_child *c)
{
    char *proc = run__path(c->root, "/proc");
    if (mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        run__child_fail(c, "cannot mount /proc: %s", skiff_strerror(-errno));
    static const char *const masked[] = {"kcore",      "keys",        "latency_stats",
                                         "timer_list", "timer_stats", "sched_debug",
                                         "sysrq-trigger"};
    char *null = run__path(c->root, "/dev/null");
    for (size_t i = 0; i < ARRAY_SIZE(masked); i++) {
        char *p = xasprintf("%s/%s", proc, masked[i]);
        if (access(p, F_OK) == 0 && mount(null, p, NULL, MS_BIND, NULL) < 0)
            run__child_fail(c, "cannot mask /proc/%s: %s", masked[i], skiff_strerror(-errno));
        free(p);
    }
    static const char *const hidden[] = {"acpi", "asound", "scsi"};
    for (size_t i = 0; i < ARRAY_SIZE(hidden); i++) {
        char *p = xasprintf("%s/%s", proc, hidden[i]);
        if (access(p, F_OK) == 0 &&
            mount("tmpfs", p, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0") < 0)
            run__child_fail(c, "cannot hide /proc/%s: %s", hidden[i], skiff_strerror(-errno));
        free(p);
    }
    static const char *const readonly[] = {"bus", "fs", "irq", "sys"};
    for (size_t i = 0; i < ARRAY_SIZE(readonly); i++) {
        char *p = xasprintf("%s/%s", proc, readonly[i]);
        if (access(p, F_OK) == 0 &&
            (mount(p, p, NULL, MS_BIND | MS_REC, NULL) < 0 ||
             mount(NULL, p, NULL,
                   MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                   NULL) < 0))
            run__child_fail(c, "cannot make /proc/%s read-only: %s", readonly[i],
                            skiff_strerror(-errno));
        free(p);
    }
    free(null);
    free(proc);
}

/* This process as uid:gid (uid 0: vcap) with nothing of root left (see
 * container_internal.h): what every process of the container's own runs as. */
int container__drop(unsigned uid, unsigned gid, char *err, size_t errlen)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++)
        signal(s, SIG_DFL);
    setsid();
    for (int cap = 0; cap <= CAP_LAST_CAP; cap++)
        prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
    uid_t u = uid ? uid : CONTAINER_VCAP_UID;
    gid_t g = uid ? gid : CONTAINER_VCAP_UID;
    if (setgroups(1, &g) < 0 || setresgid(g, g, g) < 0 || setresuid(u, u, u) < 0)
        return run__fail(err, errlen, -errno, "cannot become uid %u: %s", (unsigned)u,
                         skiff_strerror(-errno));
    /* a uid change from 0 clears the permitted and effective sets; the ambient and
     * inheritable ones are cleared too, so no exec can bring a capability back */
    cap_t none_caps = cap_init();
    if (!none_caps || cap_set_proc(none_caps) < 0)
        return run__fail(err, errlen, -errno, "cannot drop capabilities: %s",
                         skiff_strerror(-errno));
    cap_free(none_caps);
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return run__fail(err, errlen, -errno, "cannot set no_new_privs: %s",
                         skiff_strerror(-errno));
    struct rlimit core = {0, 0}, nofile = {CONTAINER_NOFILE, CONTAINER_NOFILE};
    setrlimit(RLIMIT_CORE, &core);
    setrlimit(RLIMIT_NOFILE, &nofile);
    char why[256] = "";
    if (seccomp_install_default(why, sizeof why) < 0)
        return run__fail(err, errlen, -EPERM, "cannot install the seccomp filter: %s", why);
    return 0;
}

/* container_internal.h; the form is proc_exec_form's simple command */
char **container__shell_words(char *const argv[])
{
    static const char plain[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                                "_-./:,+@%^ \t";
    if (!argv[0] || strcmp(argv[0], "/bin/sh") || !argv[1] || strcmp(argv[1], "-c") || !argv[2] ||
        argv[3] || strncmp(argv[2], "exec ", 5))
        return NULL;
    const char *cmd = argv[2] + 5;
    if (cmd[strspn(cmd, plain)] != '\0')
        return NULL;
    char *copy = xstrdup(cmd);
    size_t n = 0;
    char **words = xcalloc(strlen(copy) / 2 + 2, sizeof *words);
    for (char *save = NULL, *w = strtok_r(copy, " \t", &save); w; w = strtok_r(NULL, " \t", &save))
        words[n++] = w;
    if (n == 0) {
        free(copy);
        free(words);
        return NULL;
    }
    return words;
}

/* envp with PWD added as the shell adds it (the working directory) when it has none; NULL
 * when it has one (the shell might change it: the shell runs then). */
static char **run__with_pwd(char *const envp[])
{
    size_t n = 0;
    for (; envp[n]; n++)
        if (!strncmp(envp[n], "PWD=", 4))
            return NULL;
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd))
        return NULL;
    char **env = xcalloc(n + 2, sizeof *env);
    memcpy(env, envp, n * sizeof *env);
    env[n] = xasprintf("PWD=%s", cwd);
    return env;
}

static int run__exec_dropped(char *const argv[], char *const envp[], char *err, size_t errlen);

/* The program, dropped as container__drop says: the one place that decides what a container's
 * program may do, for instances, stagings and commands run in a running container (exec.c). */
int container__program_exec(char *const argv[], char *const envp[], unsigned uid, unsigned gid,
                            char *err, size_t errlen)
{
    int rc = container__drop(uid, gid, err, errlen);
    if (rc < 0)
        return rc;
    return run__exec_dropped(argv, envp, err, errlen);
}

/* The exec of container__program_exec, for a caller already dropped. */
static int run__exec_dropped(char *const argv[], char *const envp[], char *err, size_t errlen)
{
    extern char **environ;
    /* a command the shell would only split: run without the shell, in the environment the
     * shell would have given it (one program's start less); should that exec fail, the shell
     * runs as asked and says why as it always did */
    char **words = container__shell_words(argv), **env = words ? run__with_pwd(envp) : NULL;
    if (words && env) {
        environ = env;
        execvp(words[0], words);
    }
    environ = (char **)envp; /* execvp looks PATH up in the program's own environment */
    execvp(argv[0], argv);
    return run__fail(err, errlen, -errno, "cannot run %s: %s", argv[0], skiff_strerror(-errno));
}

/* This process as the container's program runs (its sidecars, their output's relay). */
static void run__drop(struct run_child *c)
{
    char err[512];
    if (container__drop(c->cfg->user_uid, c->cfg->user_gid, err, sizeof err) < 0)
        run__child_fail(c, "%s", err);
}

/* The program of this container. Does not return. */
static void run__exec(struct run_child *c)
{
    char err[512];
    container__program_exec(c->argv, c->envp, c->cfg->user_uid, c->cfg->user_gid, err, sizeof err);
    run__child_fail(c, "%s", err);
}

/* ---- sidecars --------------------------------------------------------------------------- */

struct run_relay_stream {
    int fd;  /* a sidecar's stdout or stderr, -1 once ended */
    int out; /* 1 or 2: where its lines go */
    const char *name;
    size_t len; /* what is read of the current line */
    char line[CONTAINER_SIDECAR_LINE_MAX];
};

/* One line of a sidecar, marked with its name, in one write (<= PIPE_BUF: never interleaved
 * with another writer's line). */
static void run__relay_line(const struct run_relay_stream *r, const char *text, size_t len)
{
    char out[CONTAINER_SIDECAR_LINE_MAX];
    size_t head = strlen(r->name) + 2;
    size_t room = sizeof out - head - 1;
    if (len > room)
        len = room;
    out[0] = CONTAINER_SIDECAR_MARK;
    memcpy(out + 1, r->name, head - 2);
    out[head - 1] = CONTAINER_SIDECAR_MARK;
    memcpy(out + head, text, len);
    out[head + len] = '\n';
    (void)run__write_all(r->out, out, head + len + 1);
}

/* The sidecars' output relay (as vcap, like them): each of their lines to the container's
 * stdout or stderr, marked. Ends when every sidecar's pipes have. Does not return. */
static void run__relay(struct run_child *c, struct run_relay_stream *rs, size_t n)
{
    run__drop(c);
    close(c->err_wr); /* the host side waits for its end to know that all is running */
    signal(SIGPIPE, SIG_IGN);
    struct pollfd *pfd = xcalloc(n, sizeof *pfd);
    size_t room = CONTAINER_SIDECAR_LINE_MAX - CONTAINER_SIDECAR_NAME_MAX - 3;
    for (;;) {
        size_t live = 0;
        for (size_t i = 0; i < n; i++) {
            pfd[i] = (struct pollfd){.fd = rs[i].fd, .events = POLLIN};
            live += rs[i].fd >= 0;
        }
        if (!live)
            _exit(0);
        if (poll(pfd, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            _exit(1);
        }
        for (size_t i = 0; i < n; i++) {
            struct run_relay_stream *r = &rs[i];
            if (r->fd < 0 || !pfd[i].revents)
                continue;
            ssize_t got = read(r->fd, r->line + r->len, room - r->len);
            if (got < 0 && (errno == EINTR || errno == EAGAIN))
                continue;
            if (got <= 0) {
                if (r->len)
                    run__relay_line(r, r->line, r->len);
                close(r->fd);
                r->fd = -1;
                continue;
            }
            r->len += (size_t)got;
            char *start = r->line, *nl;
            while ((nl = memchr(start, '\n', r->len - (size_t)(start - r->line)))) {
                run__relay_line(r, start, (size_t)(nl - start));
                start = nl + 1;
            }
            r->len -= (size_t)(start - r->line);
            memmove(r->line, start, r->len);
            if (r->len == room) { /* a line longer than a line may be: cut */
                run__relay_line(r, r->line, r->len);
                r->len = 0;
            }
        }
    }
}

/* In sidecar i, before anything runs: into its own cgroup ("0" is the writer itself, whatever
 * its PID namespace), through the files opened outside (the kernel checks the opener). */
static void run__sidecar_join(struct run_child *c, size_t i)
{
    for (size_t k = 0; c->sidecar_cgroups && k < CONTAINER_SIDECAR_CGROUP_FILES; k++) {
        int fd = c->sidecar_cgroups[i * CONTAINER_SIDECAR_CGROUP_FILES + k];
        if (fd >= 0 && write(fd, "0", 1) != 1)
            run__child_fail(c, "sidecar %s cannot join its cgroup (%s): %s",
                            c->cfg->sidecars[i].name, c->cfg->sidecars[i].cgroup_procs[k],
                            skiff_strerror(-errno));
    }
}

/* Opens the sidecars' cgroup.procs files while the host's are in view (c->sidecar_cgroups);
 * 0 or a negative errno with a message. */
static int run__sidecar_cgroups_open(const struct container_config *cfg, struct run_child *c,
                                     char *err, size_t errlen)
{
    size_t n = cfg->n_sidecars * CONTAINER_SIDECAR_CGROUP_FILES;
    c->sidecar_cgroups = xmalloc((n ? n : 1) * sizeof *c->sidecar_cgroups);
    for (size_t i = 0; i < n; i++)
        c->sidecar_cgroups[i] = -1;
    for (size_t i = 0; i < cfg->n_sidecars; i++)
        for (size_t k = 0; cfg->sidecars[i].cgroup_procs && cfg->sidecars[i].cgroup_procs[k] &&
                           k < CONTAINER_SIDECAR_CGROUP_FILES;
             k++) {
            const char *f = cfg->sidecars[i].cgroup_procs[k];
            int fd = open(f, O_WRONLY | O_CLOEXEC);
            if (fd < 0)
                return run__fail(err, errlen, -errno, "cannot open sidecar %s's cgroup %s: %s",
                                 cfg->sidecars[i].name, f, skiff_strerror(-errno));
            c->sidecar_cgroups[i * CONTAINER_SIDECAR_CGROUP_FILES + k] = fd;
        }
    return 0;
}

static void run__sidecar_cgroups_close(const struct container_config *cfg, struct run_child *c)
{
    for (size_t i = 0; c->sidecar_cgroups && i < cfg->n_sidecars * CONTAINER_SIDECAR_CGROUP_FILES;
         i++)
        if (c->sidecar_cgroups[i] >= 0)
            close(c->sidecar_cgroups[i]);
    free(c->sidecar_cgroups);
    c->sidecar_cgroups = NULL;
}

/* Forks the sidecars (pids[i]: sidecar i's, its own group's leader) and the relay of their
 * output (its pid returned); init keeps none of their pipes. */
static pid_t run__sidecars(struct run_child *c, pid_t *pids)
{
    size_t n = c->cfg->n_sidecars;
    struct run_relay_stream *rs = xcalloc(2 * n, sizeof *rs);
    for (size_t i = 0; i < n; i++) {
        int out[2], errp[2];
        if (pipe2(out, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
            run__child_fail(c, "cannot make a sidecar's pipes: %s", skiff_strerror(-errno));
        pids[i] = fork();
        if (pids[i] < 0)
            run__child_fail(c, "cannot fork sidecar %s: %s", c->cfg->sidecars[i].name,
                            skiff_strerror(-errno));
        if (pids[i] == 0) {
            run__sidecar_join(c, i);
            if (dup2(out[1], 1) < 0 || dup2(errp[1], 2) < 0)
                _exit(125);
            char *argv[] = {"/bin/sh", "-c", c->cfg->sidecars[i].command, NULL};
            c->argv = argv;
            run__exec(c);
        }
        close(out[1]);
        close(errp[1]);
        rs[2 * i] =
            (struct run_relay_stream){.fd = out[0], .out = 1, .name = c->cfg->sidecars[i].name};
        rs[2 * i + 1] =
            (struct run_relay_stream){.fd = errp[0], .out = 2, .name = c->cfg->sidecars[i].name};
    }
    pid_t relay = fork();
    if (relay < 0)
        run__child_fail(c, "cannot fork the sidecars' relay: %s", skiff_strerror(-errno));
    if (relay == 0)
        run__relay(c, rs, 2 * n);
    for (size_t i = 0; i < 2 * n; i++)
        close(rs[i].fd);
    free(rs);
    return relay;
}

/* The container is ending: its processes go first, so that the relay reads the sidecars'
 * last lines (why one failed, often) to their end; a process that left its group and keeps a
 * pipe open is waited for a second at most. */
static void run__drain_relay(pid_t relay, const pid_t *groups, size_t n, const sigset_t *chld)
{
    for (size_t i = 0; i < n; i++)
        kill(-groups[i], SIGKILL);
    int64_t deadline = time_mono_ms() + 1000;
    for (;;) {
        pid_t pid;
        while ((pid = waitpid(-1, NULL, WNOHANG)) > 0)
            if (pid == relay)
                return;
        int64_t left = deadline - time_mono_ms();
        if (pid < 0 || left <= 0)
            return;
        struct timespec ts = {.tv_sec = left / 1000, .tv_nsec = (left % 1000) * 1000000};
        sigtimedwait(chld, NULL, &ts);
    }
}

/* Says on stderr, as a line of the sidecar, why the container ends. */
static void run__sidecar_ended(const struct container_sidecar *sc, int status)
{
    char text[256];
    int n;
    if (WIFSIGNALED(status))
        n = snprintf(text, sizeof text,
                     "sidecar %s was killed by signal %d (%s): the instance ends with it", sc->name,
                     WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        n = snprintf(text, sizeof text,
                     "sidecar %s exited with status %d: the instance ends with it", sc->name,
                     WEXITSTATUS(status));
    struct run_relay_stream r = {.out = 2, .name = sc->name};
    run__relay_line(&r, text, n > 0 ? (size_t)n : 0);
}

/* A warm container's program run ahead: forked now, as vcap like any program, reading its
 * start from fd 3 (the write end is *start_wr). */
static pid_t run__warm_program(struct run_child *c, int *start_wr)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0)
        run__child_fail(c, "cannot make the warm program's pipe: %s", skiff_strerror(-errno));
    pid_t pid = fork();
    if (pid < 0)
        run__child_fail(c, "cannot fork: %s", skiff_strerror(-errno));
    if (pid == 0) {
        /* fd 3 is the start; what init had there moves out of the way first */
        int start_fd = fcntl(p[0], F_DUPFD_CLOEXEC, 10);
        int err_fd = fcntl(c->err_wr, F_DUPFD_CLOEXEC, 10);
        if (start_fd < 0 || err_fd < 0 || dup2(start_fd, 3) < 0 || chdir("/home/vcap") < 0)
            _exit(125);
        c->err_wr = err_fd;
        static char *const env[] = {"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/home/vcap/app",
                                    "LANG=C.UTF-8", NULL};
        c->argv = c->cfg->warm_program;
        c->envp = env;
        run__exec(c);
    }
    close(p[0]);
    *start_wr = p[1];
    return pid;
}

static void run__start_read(struct run_child *c, int pidfd);

/* A warm container's init, all made: says so, then takes the start the keeper passes on
 * (the droplet is mounted and the hostname set by then) and becomes the instance's. */
static void run__warm_wait(struct run_child *c, pid_t program)
{
    close(c->start_wr);
    int pidfd = program > 0 ? (int)syscall(SYS_pidfd_open, program, 0) : -1;
    if (program > 0 && pidfd < 0)
        run__child_fail(c, "cannot watch the warm program: %s", skiff_strerror(-errno));
    if (write(c->ready_wr, "r", 1) != 1)
        _exit(125);
    close(c->ready_wr);
    run__start_read(c, pidfd);
}

/* A plain warm container's program, forked ahead by init: already all a program is
 * (container__drop: vcap, no capability, the filter), it waits for its start, enters the
 * working directory and execs. A start then wakes one process that execs at once, instead
 * of init, which forked, and the child, which dropped everything before its exec. Returns
 * its pid, in init, once init has said it is ready. */
static pid_t run__warm_stem(struct run_child *c)
{
    close(c->start_wr);
    pid_t pid = fork();
    if (pid < 0)
        run__child_fail(c, "cannot fork: %s", skiff_strerror(-errno));
    if (pid == 0) {
        close(c->ready_wr);
        char err[512];
        if (container__drop(c->cfg->user_uid, c->cfg->user_gid, err, sizeof err) < 0)
            run__child_fail(c, "%s", err);
        start_trace("make: program: dropped");
        run__start_read(c, -1);
        start_trace("program: start read, exec");
        if (chdir(c->cfg->cwd) < 0)
            run__child_fail(c, "cannot enter %s: %s", c->cfg->cwd, skiff_strerror(-errno));
        run__exec_dropped(c->argv, c->envp, err, sizeof err);
        run__child_fail(c, "%s", err);
    }
    close(c->start_rd);
    start_trace("make: init: stem forked, ready");
    if (write(c->ready_wr, "r", 1) != 1)
        _exit(125);
    close(c->ready_wr);
    return pid;
}

/* The start from the keeper, read to its end (watching the program run ahead through pidfd,
 * when >= 0): c->argv, c->envp and c->start_afresh are set from it. Ends the process when
 * there is none. */
static void run__start_read(struct run_child *c, int pidfd)
{
    size_t len = 0, cap = 64 * 1024;
    char *buf = xmalloc(cap);
    for (;;) {
        if (pidfd >= 0) {
            /* the program run ahead must still be there when its start comes */
            struct pollfd pfd[2] = {{.fd = c->start_rd, .events = POLLIN}, {.fd = pidfd, .events = POLLIN}};
            if (poll(pfd, 2, -1) < 0 && errno == EINTR)
                continue;
            if ((pfd[1].revents & POLLIN) && !(pfd[0].revents & (POLLIN | POLLHUP)))
                run__child_fail(c, "the warm container's program ended before its start");
        }
        if (len == cap) {
            if (cap >= RUN_START_MAX)
                run__child_fail(c, "the start is larger than %d bytes", RUN_START_MAX);
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
        ssize_t n = read(c->start_rd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            run__child_fail(c, "cannot read the start: %s", skiff_strerror(-errno));
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(c->start_rd);
    if (pidfd >= 0)
        close(pidfd);
    c->start = buf;
    c->start_len = len;
    /* hostname, afresh, argc, argv..., env...: each NUL-terminated */
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        count += buf[i] == '\0';
    if (len == 0 || buf[len - 1] != '\0' || count < 4)
        _exit(125); /* the keeper went away before it handed the start on */
    char **strs = xcalloc(count + 1, sizeof *strs);
    for (size_t i = 0, k = 0; i < len; i += strlen(buf + i) + 1)
        strs[k++] = buf + i;
    long argc = strtol(strs[2], NULL, 10);
    if (argc < 1 || (size_t)argc > count - 3)
        run__child_fail(c, "the start is malformed");
    char **argv = xcalloc((size_t)argc + 1, sizeof *argv);
    memcpy(argv, strs + 3, (size_t)argc * sizeof *argv);
    c->argv = argv;
    c->envp = strs + 3 + argc; /* NULL-terminated by the calloc */
    c->start_afresh = strs[1][0] == '1';
}

static void run__noop(int sig)
{
    (void)sig;
}

/* PID 1: reaps, passes signals on to the program's group, ends with the program. */
static int run__init(void *arg)
{
    struct run_child *c = arg;
    /* the filter is read (built ahead by the daemon) or else compiled while the host side
     * writes the maps and wires the network */
    char prep_err[256];
    if ((!c->cfg->seccomp_bpf ||
         seccomp_prepare_from(c->cfg->seccomp_bpf, prep_err, sizeof prep_err) < 0) &&
        seccomp_prepare_default(prep_err, sizeof prep_err) < 0)
        run__child_fail(c, "cannot build the seccomp filter: %s", prep_err);
    char go = 0;
    if (read(c->sync_rd, &go, 1) != 1 || go != 'g')
        _exit(125);
    start_trace_keep_open();
    start_trace("make: init: filter read, go");
    close(c->sync_rd);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* The root's mount came from the host's namespace and is locked there: a bind of it made
     * here is ours to pivot to (what is under it stays locked and hidden). Both happen while
     * our file system uid is still the host's root, the owner of the folders on the way
     * (the scratch folder is 0700); from then on every path is relative to the new root. */
    if (mount(c->root, c->root, NULL, MS_BIND | MS_REC, NULL) < 0 || chdir(c->root) < 0)
        run__child_fail(c, "cannot enter the root file system: %s", skiff_strerror(-errno));
    c->root = ".";
    if (setgroups(0, NULL) < 0 || setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
        run__child_fail(c, "cannot take the container's root: %s", skiff_strerror(-errno));
    const struct container_config *cfg = c->cfg;
    if (sethostname(cfg->hostname, strlen(cfg->hostname)) < 0)
        run__child_fail(c, "cannot set the hostname: %s", skiff_strerror(-errno));
    run__proc(c);
    start_trace("make: init: /proc");
    char *pts = run__path(c->root, "/dev/pts");
    if (mount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620") <
        0)
        run__child_fail(c, "cannot mount /dev/pts: %s", skiff_strerror(-errno));
    free(pts);
    if (syscall(SYS_pivot_root, ".", ".") < 0 ||
        umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
        run__child_fail(c, "cannot enter the root file system: %s", skiff_strerror(-errno));
    start_trace("make: init: /dev/pts, pivot_root");
    if (!cfg->net_pool)
        run__lo_up();
    pid_t app = 0;
    int program_start = -1;
    bool forked_ahead = cfg->warm_socket && !cfg->warm_program; /* it enters cwd itself */
    if (cfg->warm_socket && cfg->warm_program)
        app = run__warm_program(c, &program_start);
    if (forked_ahead)
        app = run__warm_stem(c);
    else if (cfg->warm_socket)
        run__warm_wait(c, app);
    if (!forked_ahead && chdir(cfg->cwd) < 0)
        run__child_fail(c, "cannot enter %s: %s", cfg->cwd, skiff_strerror(-errno));
    if (program_start >= 0 && c->start_afresh) {
        close(program_start);
        program_start = -1;
        kill(app, SIGKILL);
        while (waitpid(app, NULL, 0) < 0 && errno == EINTR)
            ;
        app = 0; /* forked afresh below */
    }
    if (program_start >= 0) {
        /* the program run ahead takes the start (but the hostname and the flag, used here) */
        size_t skip = strlen(c->start) + 1 + 2;
        signal(SIGPIPE, SIG_IGN);
        if (run__write_all(program_start, c->start + skip, c->start_len - skip) < 0)
            run__child_fail(c, "the warm container's program did not take its start");
        close(program_start);
    }

    static const int passed[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    for (size_t i = 0; i < ARRAY_SIZE(passed); i++)
        sigaddset(&set, passed[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    /* PID 1 of a namespace gets no signal it has no handler for */
    for (int s = 1; s < NSIG; s++)
        if (sigismember(&set, s) == 1)
            signal(s, run__noop);
    if (!app)
        app = fork();
    if (app < 0)
        run__child_fail(c, "cannot fork: %s", skiff_strerror(-errno));
    if (app == 0)
        run__exec(c);
    size_t n_sidecars = cfg->n_sidecars;
    pid_t *sidecars = xcalloc(n_sidecars + 1, sizeof *sidecars);
    pid_t relay = n_sidecars ? run__sidecars(c, sidecars) : 0;
    run__sidecar_cgroups_close(cfg, c);
    sidecars[n_sidecars] = app;
    close(c->err_wr);
    int status = 0;
    bool told_to_end = false; /* a sidecar that ends then was asked to: nothing to say */
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&set, &si);
        if (sig == SIGCHLD) {
            pid_t pid;
            int st;
            bool done = false;
            while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
                if (pid == relay)
                    relay = 0; /* gone already (killed): nothing to drain */
                for (size_t i = 0; i < n_sidecars && !done; i++)
                    if (pid == sidecars[i]) {
                        /* one process of the instance is gone: so is the instance */
                        if (!told_to_end)
                            run__sidecar_ended(&cfg->sidecars[i], st);
                        status = st;
                        done = true;
                    }
                if (pid == app && !done) {
                    status = st;
                    done = true;
                }
            }
            if (done)
                break;
        } else if (sig > 0) {
            told_to_end = told_to_end || sig == SIGTERM || sig == SIGINT || sig == SIGQUIT;
            for (size_t i = 0; i <= n_sidecars; i++)
                if (kill(-sidecars[i], sig) < 0)
                    kill(sidecars[i], sig); /* not yet its own group leader */
        }
    }
    if (relay > 0) {
        sigset_t chld;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        run__drain_relay(relay, sidecars, n_sidecars + 1, &chld);
    }
    free(sidecars);
    kill(-1, SIGKILL); /* what the program left behind ends with it */
    if (write(c->status_wr, &status, sizeof status) != sizeof status)
        _exit(125);
    _exit(0);
}

/* ---- the host side ----------------------------------------------------------------------- */

static int run__maps(pid_t pid, unsigned base, char *err, size_t errlen)
{
    char path[64], map[64];
    snprintf(map, sizeof map, "0 %u %u\n", base, CONTAINER_UID_RANGE);
    snprintf(path, sizeof path, "/proc/%d/uid_map", pid);
    int rc = run__write_file(path, map);
    if (rc == 0) {
        snprintf(path, sizeof path, "/proc/%d/gid_map", pid);
        rc = run__write_file(path, map);
    }
    if (rc < 0)
        return run__fail(err, errlen, rc, "cannot write the user namespace's maps: %s",
                         skiff_strerror(rc));
    return 0;
}


/* The start, read to its end from the one connection a warm container takes. */
/* Returned when the container's init ended while the keeper waited for a start: what went
 * wrong is on init's error pipe. */
#define RUN_INIT_ENDED 1

static int run__warm_accept(const struct container_config *cfg, int init_err, char **text,
                            char *err, size_t errlen)
{
    /* bound and listening under another name first, then renamed: whoever sees the socket
     * (the executor, by its name) may connect at once */
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s.new", cfg->warm_socket);
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return run__fail(err, errlen, -errno, "cannot make the warm socket: %s",
                         skiff_strerror(-errno));
    unlink(cfg->warm_socket);
    unlink(addr.sun_path);
    mode_t old = umask(0177); /* 0600 from the start: root alone may start it */
    int rc = bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 1) < 0 ||
                     rename(addr.sun_path, cfg->warm_socket) < 0
                 ? -errno
                 : 0;
    umask(old);
    start_trace("make: keeper: listening");
    int fd = -1;
    while (rc == 0 && fd < 0) {
        /* init's error pipe says when it ends first (a warm program that died): then this
         * container can take no start */
        struct pollfd pfd[2] = {{.fd = lfd, .events = POLLIN}, {.fd = init_err, .events = POLLIN}};
        if (poll(pfd, 2, -1) < 0) {
            if (errno != EINTR)
                rc = -errno;
        } else if (pfd[1].revents) {
            rc = RUN_INIT_ENDED;
        } else if ((fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) < 0 && errno != EINTR &&
                   errno != ECONNABORTED && errno != EAGAIN) {
            rc = -errno;
        }
    }
    unlink(cfg->warm_socket); /* one start: nobody else gets this far */
    close(lfd);
    if (rc == RUN_INIT_ENDED)
        return rc;
    if (rc < 0)
        return run__fail(err, errlen, rc, "cannot wait on the warm socket: %s", skiff_strerror(rc));
    size_t len = 0, cap = 64 * 1024;
    char *buf = xmalloc(cap + 1);
    for (;;) {
        if (len == cap) {
            if (cap >= RUN_START_MAX) {
                rc = run__fail(err, errlen, -E2BIG, "the start is larger than %d bytes",
                               RUN_START_MAX);
                break;
            }
            cap *= 2;
            buf = xrealloc(buf, cap + 1);
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0)
                rc = run__fail(err, errlen, -errno, "cannot read the start: %s",
                               skiff_strerror(-errno));
            break;
        }
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    if (rc < 0) {
        free(buf);
        return rc;
    }
    *text = buf;
    return 0;
}

/* The container's hostname, set from the host side in its UTS namespace (init's), so that
 * it is there before the program has its start. */
static int run__hostname(pid_t init, const char *name, char *err, size_t errlen)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/uts", (int)init);
    int ns = open(path, O_RDONLY | O_CLOEXEC),
        self = open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC);
    int rc = ns < 0 || self < 0 || setns(ns, CLONE_NEWUTS) < 0 ? -errno : 0;
    if (rc == 0 && sethostname(name, strlen(name)) < 0)
        rc = -errno;
    if (rc < 0)
        run__fail(err, errlen, rc, "cannot set the hostname: %s", skiff_strerror(rc));
    if (self >= 0 && setns(self, CLONE_NEWUTS) < 0)
        abort(); /* the keeper must not stay in the container's namespace */
    if (ns >= 0)
        close(ns);
    if (self >= 0)
        close(self);
    return rc;
}

/* The keeper of a warm container whose init is ready: takes the start, mounts its droplet
 * (propagated into the container), sets the hostname and hands the rest on (to the program
 * waiting for it, or to init). Relative paths: the scratch folder (the keeper's working
 * directory) may have been renamed since. */
static int run__warm_serve(const struct container_config *cfg, pid_t init, int start_wr,
                           int init_err, char *err, size_t errlen)
{
    char *text = NULL;
    int rc = run__warm_accept(cfg, init_err, &text, err, errlen);
    start_trace("keeper: start accepted");
    if (rc != 0)
        return rc;
    struct container__start start;
    rc = container__start_from_json(text, &start, err, errlen);
    free(text);
    if (rc < 0)
        return rc;
    struct stat st;
    if (stat(start.app_dir, &st) < 0 || !S_ISDIR(st.st_mode))
        rc = run__fail(err, errlen, -ENOENT, "the droplet %s is not a folder", start.app_dir);
    else
        rc = run__overlay(start.app_dir, "disk", "app", "root" CONTAINER_APP_DIR, err, errlen);
    start_trace("keeper: droplet mounted");
    if (rc == 0)
        rc = run__hostname(init, start.hostname, err, errlen);
    size_t argc = 0;
    while (start.argv[argc])
        argc++;
    char count[24];
    snprintf(count, sizeof count, "%zu", argc);
    if (rc == 0)
        rc = run__write_all(start_wr, start.hostname, strlen(start.hostname) + 1);
    if (rc == 0)
        rc = run__write_all(start_wr, start.afresh ? "1" : "0", 2);
    if (rc == 0)
        rc = run__write_all(start_wr, count, strlen(count) + 1);
    for (char **v = start.argv; rc == 0 && *v; v++)
        rc = run__write_all(start_wr, *v, strlen(*v) + 1);
    for (char **v = start.envp; rc == 0 && *v; v++)
        rc = run__write_all(start_wr, *v, strlen(*v) + 1);
    if (rc < 0 && !err[0])
        run__fail(err, errlen, rc, "the container's init went away");
    start_trace("keeper: hostname set, start handed on");
    container__start_clear(&start);
    return rc;
}

int container_run(const struct container_config *cfg, char *const argv[], char *const envp[],
                  char *err, size_t errlen)
{
    err[0] = '\0';
    start_trace("make: keeper: up, config read");
    int rc = 0;
    for (char **f = cfg->cgroup_procs; f && *f && rc == 0; f++) {
        char pid[32];
        snprintf(pid, sizeof pid, "%d\n", getpid());
        rc = run__write_file(*f, pid);
        if (rc < 0)
            return run__fail(err, errlen, rc, "cannot join cgroup %s: %s", *f, skiff_strerror(rc));
    }
    start_trace("make: keeper: cgroup joined");
    /* The output pipes are the program's: given to vcap, so that it can open /dev/stdout
     * (a link to /proc/self/fd/1, reopened with the pipe's own permissions), as nginx does */
    for (int fd = 0; fd <= 2; fd++) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode))
            (void)!fchown(fd, cfg->uid_base + CONTAINER_VCAP_UID, cfg->uid_base + CONTAINER_VCAP_UID);
    }
    bool warm = cfg->warm_socket != NULL;
    if (warm && cfg->n_sidecars)
        return run__fail(err, errlen, -EINVAL,
                         "a warm container runs no sidecars: make the "
                         "container at start instead");
    if (warm && (strchr(cfg->warm_socket, '/') || (!argv) != warm || chdir(cfg->scratch) < 0))
        return run__fail(err, errlen, -EINVAL, "a warm container needs its socket's name in "
                                                "its scratch folder, and no program yet");
    if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
        return run__fail(err, errlen, -errno, "cannot make a mount namespace: %s",
                         skiff_strerror(-errno));
    start_trace("make: keeper: mount namespace");
    char *root = xasprintf("%s/root", cfg->scratch);
    rc = run__rootfs(cfg, root, err, errlen);
    if (rc < 0) {
        free(root);
        return rc;
    }
    int sync[2], errp[2], statusp[2], ready[2] = {-1, -1}, startp[2] = {-1, -1};
    if (pipe2(sync, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0 || pipe2(statusp, O_CLOEXEC) < 0 ||
        (warm && (pipe2(ready, O_CLOEXEC) < 0 || pipe2(startp, O_CLOEXEC) < 0))) {
        free(root);
        return run__fail(err, errlen, -errno, "cannot make pipes: %s", skiff_strerror(-errno));
    }
    struct run_child c = {.cfg = cfg,
                          .argv = argv,
                          .envp = envp,
                          .root = root,
                          .sync_rd = sync[0],
                          .err_wr = errp[1],
                          .status_wr = statusp[1],
                          .ready_wr = ready[1],
                          .start_rd = startp[0],
                          .start_wr = startp[1]};
    rc = run__sidecar_cgroups_open(cfg, &c, err, errlen);
    if (rc < 0) {
        run__sidecar_cgroups_close(cfg, &c);
        close(sync[0]);
        close(sync[1]);
        close(errp[0]);
        close(errp[1]);
        close(statusp[0]);
        close(statusp[1]);
        if (warm) {
            close(ready[0]);
            close(ready[1]);
            close(startp[0]);
            close(startp[1]);
        }
        free(root);
        return rc;
    }
    /* clone as fork does (no new stack: the child runs on a copy of ours), so that nothing
     * switches stacks under a sanitizer's feet */
    pid_t pid = (pid_t)syscall(SYS_clone,
                               CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC |
                                   CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWCGROUP | SIGCHLD,
                               NULL, NULL, NULL, 0);
    if (pid == 0)
        _exit(run__init(&c));
    start_trace("make: keeper: cloned");
    run__sidecar_cgroups_close(cfg, &c);
    close(sync[0]);
    close(errp[1]);
    close(statusp[1]);
    if (warm) {
        close(ready[1]);
        close(startp[0]);
    }
    if (pid < 0) {
        rc = run__fail(err, errlen, -errno, "cannot make the container's namespaces: %s",
                       skiff_strerror(-errno));
        close(sync[1]);
        goto out;
    }
    rc = run__maps(pid, cfg->uid_base, err, errlen);
    start_trace("make: keeper: uid and gid maps");
    if (rc == 0 && cfg->net_pool) {
        struct net_pool pool;
        rc = net_pool_parse(cfg->net_pool, &pool, err, errlen);
        if (rc == 0)
            rc = net_attach(&pool, cfg->net_slot, pid, err, errlen);
    }
    start_trace("make: keeper: network attached");
    if (rc == 0 && write(sync[1], "g", 1) != 1)
        rc = run__fail(err, errlen, -EIO, "the container's init went away");
    close(sync[1]);
    if (warm) {
        char r = 0;
        ssize_t n = 0;
        while (rc == 0 && (n = read(ready[0], &r, 1)) < 0 && errno == EINTR)
            ;
        /* not ready: init failed, and its message follows on errp */
        if (rc == 0 && n == 1 && r == 'r')
            rc = run__warm_serve(cfg, pid, startp[1], errp[0], err, errlen);
        if (rc == RUN_INIT_ENDED)
            rc = 0; /* its message follows on errp */
        close(ready[0]);
        close(startp[1]);
    }
    if (rc == 0) {
        char msg[512];
        ssize_t n;
        while ((n = read(errp[0], msg, sizeof msg - 1)) < 0 && errno == EINTR)
            ;
        if (n > 0) {
            msg[n] = '\0';
            rc = run__fail(err, errlen, -EIO, "%s", msg);
        }
    }
    int st = 0;
    if (rc < 0)
        kill(pid, SIGKILL);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (rc == 0) {
        int app = 0;
        ssize_t n = read(statusp[0], &app, sizeof app);
        rc = n == sizeof app ? app : st; /* init killed: report how it ended */
    }
out:
    close(errp[0]);
    close(statusp[0]);
    free(root);
    return rc;
}
