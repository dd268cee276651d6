/* skiff-init: runs one program in a Skiff container (container/container.h).
 *
 *   skiff-init --config FILE -- PROGRAM ARG...
 *   skiff-init --config FILE          (a warm container: the config names warm_socket)
 *   skiff-init --enter PROCS [--join FILE]... [--seccomp BPF] [--tty ROWSxCOLS] [--user UID:GID]
 *              [--cwd DIR] -- PROGRAM ARG...
 *
 * FILE is a container_config as JSON. The program gets skiff-init's own environment; a warm
 * container's program and environment come with its start (container_warm_start). It runs
 * as root on the host and stays there as the container's keeper: it exits as the program
 * does (its exit status, or killed by the same signal), or with 125 and a message on stderr
 * when the container could not be made. Signals to its process group reach the container's
 * init, which passes them on to the program.
 *
 * --enter runs a program inside a container that runs already (container_enter: `skiff
 * ssh`): PROCS is the container's cgroup.procs, each --join a cgroup.procs the program joins
 * first; it starts in DIR (an image's WorkingDir; else /home/vcap/app); it gets skiff-init's
 * environment, and skiff-init ends as the program does (127 and
 * 126 as a shell's "not found" and "cannot run"; 125 when the container cannot be entered). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "container/container.h"

#define INIT_CANNOT_RUN 125

static int init_usage(void)
{
    fputs("usage: skiff-init --config FILE [-- PROGRAM ARG...]\n"
          "       skiff-init --enter PROCS [--join FILE]... [--seccomp BPF] [--tty ROWSxCOLS]"
          " [--user UID:GID] [--cwd DIR]"
          " -- PROGRAM ARG...\n"
          "Runs a program in a Skiff container; started by skiff-shim, the stager and skiffd.\n",
          stderr);
    return 2;
}

/* Ends as the program ended: its exit status, or killed by the same signal. */
static int init_exit_as(int status)
{
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        struct rlimit no_core = {0, 0};
        setrlimit(RLIMIT_CORE, &no_core); /* the program's crash, not ours to dump */
        signal(sig, SIG_DFL);
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, sig);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
        raise(sig);
        return 128 + sig;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : INIT_CANNOT_RUN;
}

/* --enter: the arguments after it, up to the program. */
static int init_enter(int argc, char **argv)
{
    struct container_enter e = {.cgroup_procs = argv[0]};
    char *join[8] = {0};
    size_t njoin = 0;
    int i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            i++;
            break;
        }
        if (i + 1 >= argc)
            return init_usage();
        if (!strcmp(argv[i], "--join") && njoin + 1 < ARRAY_SIZE(join)) {
            join[njoin++] = argv[++i];
        } else if (!strcmp(argv[i], "--user")) {
            if (sscanf(argv[++i], "%u:%u", &e.uid, &e.gid) != 2 || e.uid > 65535 || e.gid > 65535)
                return init_usage();
        } else if (!strcmp(argv[i], "--cwd")) {
            e.cwd = argv[++i];
        } else if (!strcmp(argv[i], "--seccomp")) {
            e.seccomp_bpf = argv[++i];
        } else if (!strcmp(argv[i], "--tty")) {
            unsigned rows = 0, cols = 0;
            if (sscanf(argv[++i], "%ux%u", &rows, &cols) != 2 || rows > 0xffff || cols > 0xffff)
                return init_usage();
            e.tty = true;
            e.rows = (unsigned short)rows;
            e.cols = (unsigned short)cols;
        } else {
            return init_usage();
        }
    }
    if (i >= argc)
        return init_usage();
    e.join = join;
    extern char **environ;
    char err[512] = "";
    int status = container_enter(&e, argv + i, environ, err, sizeof err);
    if (status < 0) {
        log_error("cannot enter the container: %s", err);
        return INIT_CANNOT_RUN;
    }
    /* _exit: nothing of ours is left to flush, and a leak checker's exit handler cannot
     * trace a process that is not dumpable inside another user namespace (it would hang) */
    _exit(init_exit_as(status));
}

int main(int argc, char **argv)
{
    /* nothing the caller left open may reach the container (but --enter's window sizes) */
    bool enter = argc > 2 && !strcmp(argv[1], "--enter");
    unsigned first = enter ? 4 : 3;
    if (syscall(SYS_close_range, first, ~0U, 0U) < 0)
        for (int fd = (int)first; fd < 1024; fd++)
            close(fd);
    if (enter)
        return init_enter(argc - 2, argv + 2);
    const char *config_path = NULL;
    int i = 1;
    for (; i < argc; i++) {
        if (!strcmp(argv[i], "--")) {
            i++;
            break;
        }
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            config_path = argv[++i];
        else
            return init_usage();
    }
    if (!config_path)
        return init_usage();
    char *text = NULL;
    int rc = file_read(config_path, &text, NULL);
    if (rc < 0) {
        log_error("cannot read the container config %s: %s", config_path, skiff_strerror(rc));
        return INIT_CANNOT_RUN;
    }
    struct container_config cfg;
    char err[512] = "";
    rc = container_config_from_json(text, &cfg, err, sizeof err);
    free(text);
    if (rc < 0) {
        log_error("%s", err);
        return INIT_CANNOT_RUN;
    }
    if ((i >= argc) != (cfg.warm_socket != NULL)) {
        container_config_clear(&cfg);
        return init_usage();
    }
    /* the container's init takes these and passes them on; its keeper only waits */
    static const int passed[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH};
    for (size_t k = 0; k < ARRAY_SIZE(passed); k++)
        signal(passed[k], SIG_IGN);
    extern char **environ;
    int status = container_run(&cfg, cfg.warm_socket ? NULL : argv + i,
                               cfg.warm_socket ? NULL : environ, err, sizeof err);
    container_config_clear(&cfg);
    if (status < 0) {
        log_error("cannot start the container: %s", err);
        return INIT_CANNOT_RUN;
    }
    return init_exit_as(status);
}
