/* container_enter: runs a command inside a container that runs already (see container.h).
 *
 * The order matters:
 *   1. (host root) join the command's cgroups, so everything after counts against the
 *      container's limits;
 *   2. (host root) find the container's init in its cgroup and hold it by a pidfd, so that a
 *      pid reused meanwhile cannot send us into another process's namespaces; read the
 *      seccomp filter while host paths are still ours;
 *   3. setns into all of init's namespaces at once (one call through the pidfd: the kernel
 *      orders user namespace first), then become the container's root: this process has
 *      nothing of the host left to offer (not dumpable, no host file open, host uid gone);
 *   4. fork (a new PID namespace takes only children): the child is the command, made by the
 *      same code as any container's program (container__program_exec); the parent stays
 *      and, with a terminal, moves bytes between its own stdin/stdout and the terminal.
 * The caller must be single-threaded: setns into a user namespace refuses threads. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "container/container.h"
#include "container/container_internal.h"
#include "container/seccomp.h"

#define ENTER_NAMESPACES                                                                           \
    (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET |     \
     CLONE_NEWCGROUP)

static int enter__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int enter__fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

/* Whether pid is PID 1 of a namespace one level below ours: a container's init. Its
 * programs cannot make PID namespaces of their own (the filter denies it), so nothing else
 * in the container's cgroup looks like this. */
static bool enter__is_init(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    char line[256];
    bool init = false;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "NSpid:", 6))
            continue;
        long ids[3];
        int n = 0;
        char *p = line + 6, *end;
        while (n < 3) {
            long v = strtol(p, &end, 10);
            if (end == p)
                break;
            ids[n++] = v;
            p = end;
        }
        init = n == 2 && ids[0] == pid && ids[1] == 1;
        break;
    }
    fclose(f);
    return init;
}

static int enter__find_init(const char *procs, char *err, size_t errlen)
{
    FILE *f = fopen(procs, "re");
    if (!f)
        return enter__fail(err, errlen, -ESRCH, "the container is gone (cannot read %s: %s)", procs,
                           skiff_strerror(-errno));
    long pid;
    int found = -ESRCH;
    while (fscanf(f, "%ld", &pid) == 1)
        if (pid > 1 && enter__is_init((pid_t)pid)) {
            found = (int)pid;
            break;
        }
    fclose(f);
    if (found < 0)
        return enter__fail(err, errlen, found, "the container is not running: no init in %s",
                           procs);
    return found;
}

/* The parent's side of a terminal: stdin to the terminal, the terminal to stdout, window
 * sizes from fd 3 (rows and columns, two bytes each, big-endian), until the command has
 * ended and its output is read. */
static void enter__relay(int master, int child_pidfd)
{
    signal(SIGPIPE, SIG_IGN);
    bool in_open = true, ctl_open = true, child_done = false;
    unsigned char ctl[4];
    size_t ctl_len = 0;
    char buf[16384];
    for (;;) {
        struct pollfd p[4] = {{.fd = master, .events = POLLIN},
                              {.fd = in_open ? 0 : -1, .events = POLLIN},
                              {.fd = ctl_open ? 3 : -1, .events = POLLIN},
                              {.fd = child_done ? -1 : child_pidfd, .events = POLLIN}};
        /* once the command ended, what is left in the terminal is read without waiting */
        if (poll(p, 4, child_done ? 0 : -1) < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        if (p[3].revents)
            child_done = true;
        if (p[0].revents) {
            ssize_t n = read(master, buf, sizeof buf);
            if (n <= 0)
                return; /* EIO: every holder of the terminal's other side is gone */
            for (ssize_t off = 0; off < n;) {
                ssize_t w = write(1, buf + off, (size_t)(n - off));
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0)
                    return;
                off += w;
            }
        } else if (child_done) {
            return;
        }
        if (p[1].revents) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n <= 0)
                in_open = false;
            for (ssize_t off = 0; n > 0 && off < n;) {
                ssize_t w = write(master, buf + off, (size_t)(n - off));
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0)
                    break;
                off += w;
            }
        }
        if (p[2].revents) {
            ssize_t n = read(3, ctl + ctl_len, sizeof ctl - ctl_len);
            if (n <= 0) {
                ctl_open = false;
            } else if ((ctl_len += (size_t)n) == sizeof ctl) {
                struct winsize ws = {.ws_row = (unsigned short)(ctl[0] << 8 | ctl[1]),
                                     .ws_col = (unsigned short)(ctl[2] << 8 | ctl[3])};
                ioctl(master, TIOCSWINSZ, &ws);
                ctl_len = 0;
            }
        }
    }
}

/* The command, in the container's namespaces as its root: its terminal, then the program's
 * user (vcap, or an image's) and the rest as any program gets it. Does not return. */
static void enter__command(const struct container_enter *e, int master, char *const argv[],
                           char *const envp[])
{
    setsid();
    if (e->tty) {
        char name[64];
        int slave = -1;
        if (ptsname_r(master, name, sizeof name) == 0)
            slave = open(name, O_RDWR | O_NOCTTY);
        /* the user's own terminal, as a login's is, so the shell may open /dev/tty */
        if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) < 0 ||
            fchown(slave, e->uid ? e->uid : CONTAINER_VCAP_UID,
                   e->uid ? e->gid : CONTAINER_VCAP_UID) < 0 ||
            dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0) {
            dprintf(2, "skiff: cannot set up the terminal: %s\n", skiff_strerror(-errno));
            _exit(126);
        }
        if (slave > 2)
            close(slave);
        close(master);
    }
    if ((!e->cwd || chdir(e->cwd) < 0) && chdir(CONTAINER_APP_DIR) < 0 && chdir("/home/vcap") < 0 &&
        chdir("/") < 0)
        _exit(126);
    char err[512];
    /* as the container's program runs: an image's user, else vcap */
    int rc = container__program_exec(argv, envp, e->uid, e->gid, err, sizeof err);
    dprintf(2, "skiff: %s\n", err);
    _exit(rc == -ENOENT ? 127 : 126); /* as a shell says "not found" and "cannot run" */
}

int container_enter(const struct container_enter *e, char *const argv[], char *const envp[],
                    char *err, size_t errlen)
{
    err[0] = '\0';
    if (!argv || !argv[0])
        return enter__fail(err, errlen, -EINVAL, "no command to run");
    for (char *const *f = e->join; f && *f; f++) {
        char pid[32];
        int len = snprintf(pid, sizeof pid, "%d\n", getpid());
        int fd = open(*f, O_WRONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? write(fd, pid, (size_t)len) : -1;
        int saved = errno;
        if (fd >= 0)
            close(fd);
        if (n != len)
            return enter__fail(err, errlen, -saved, "cannot join cgroup %s: %s", *f,
                               skiff_strerror(-saved));
    }
    int pid = enter__find_init(e->cgroup_procs, err, errlen);
    if (pid < 0)
        return pid;
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0 || !enter__is_init(pid)) { /* checked again: the pidfd holds this one */
        if (pidfd >= 0)
            close(pidfd);
        return enter__fail(err, errlen, -ESRCH, "the container is not running any more");
    }
    char why[256];
    if ((!e->seccomp_bpf || seccomp_prepare_from(e->seccomp_bpf, why, sizeof why) < 0) &&
        seccomp_prepare_default(why, sizeof why) < 0) {
        close(pidfd);
        return enter__fail(err, errlen, -EIO, "cannot build the seccomp filter: %s", why);
    }
    /* nothing in the container may read this process's memory or descriptors */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    int rc = setns(pidfd, ENTER_NAMESPACES);
    int saved = errno;
    close(pidfd);
    if (rc < 0)
        return enter__fail(err, errlen, -saved, "cannot enter the container's namespaces: %s",
                           skiff_strerror(-saved));
    /* setns of a mount namespace moved our root and working directory to the container's */
    if (setgroups(0, NULL) < 0 || setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0)
        return enter__fail(err, errlen, -errno, "cannot take the container's root: %s",
                           skiff_strerror(-errno));
    /* set after the credentials changed (a change clears it): a caller that dies takes the
     * session with it, the command then loses its input and output */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    int master = -1;
    if (e->tty) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || unlockpt(master) < 0)
            return enter__fail(err, errlen, -errno, "cannot open a terminal in the container: %s",
                               skiff_strerror(-errno));
        struct winsize ws = {.ws_row = e->rows ? e->rows : 24, .ws_col = e->cols ? e->cols : 80};
        ioctl(master, TIOCSWINSZ, &ws);
    }
    pid_t child = fork();
    if (child < 0)
        return enter__fail(err, errlen, -errno, "cannot fork: %s", skiff_strerror(-errno));
    if (child == 0)
        enter__command(e, master, argv, envp);
    if (e->tty) {
        int child_pidfd = (int)syscall(SYS_pidfd_open, child, 0);
        enter__relay(master, child_pidfd);
        close(master);
        if (child_pidfd >= 0)
            close(child_pidfd);
    } else {
        /* the command's output ends when the command's does, not ours */
        for (int fd = 0; fd <= 2; fd++) {
            int null = open("/dev/null", O_RDWR | O_CLOEXEC);
            if (null >= 0 && null != fd) {
                dup2(null, fd);
                close(null);
            }
        }
    }
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    return status;
}
