/* skiff-init: runs one program in a Skiff container (container/container.h).
 *
 *   skiff-init --config FILE -- PROGRAM ARG...
 *   skiff-init --config FILE          (a warm container: the config names warm_socket)
 *
 * FILE is a container_config as JSON. The program gets skiff-init's own environment; a warm
 * container's program and environment come with its start (container_warm_start). It runs
 * as root on the host and stays there as the container's keeper: it exits as the program
 * does (its exit status, or killed by the same signal), or with 125 and a message on stderr
 * when the container could not be made. Signals to its process group reach the container's
 * init, which passes them on to the program. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/util.h"
#include "container/container.h"

#define INIT_CANNOT_RUN 125

static int init_usage(void)
{
    fputs("usage: skiff-init --config FILE [-- PROGRAM ARG...]\n"
          "Runs a program in a Skiff container; started by skiff-shim and the stager.\n",
          stderr);
    return 2;
}

int main(int argc, char **argv)
{
    /* nothing the caller left open may reach the container */
    if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0)
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
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
        fprintf(stderr, "skiff: cannot read the container config %s: %s\n", config_path,
                strerror(-rc));
        return INIT_CANNOT_RUN;
    }
    struct container_config cfg;
    char err[512] = "";
    rc = container_config_from_json(text, &cfg, err, sizeof err);
    free(text);
    if (rc < 0) {
        fprintf(stderr, "skiff: %s\n", err);
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
        fprintf(stderr, "skiff: cannot start the container: %s\n", err);
        return INIT_CANNOT_RUN;
    }
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
