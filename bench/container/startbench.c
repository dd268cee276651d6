/* Start-to-ready: runs `CMD...` RUNS times; each time, from fork to the first TCP connect to
 * HOST:PORT that succeeds (tried every 50 us), then kills the process group and waits.
 * A %d in any argument is replaced by the run's number (for a fresh network slot or
 * folder). Prints p50 and p90 in ms.
 *   startbench RUNS HOST PORT CMD ARG...
 * With WARM_SOCKET (a warm container's socket, %d as above) and WARM_START (a file holding a
 * start, container.h), a run is: connect to the socket, send the start, close; then the same
 * connects; the caller ends the warm container. CMD is not run then. */
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* What container_warm_start does, without the library: connect, send the start, close. */
static int warm_send(const char *path, const char *start_file)
{
    static char start[1 << 16];
    static size_t len;
    if (!len) {
        FILE *f = fopen(start_file, "r");
        if (!f)
            return -1;
        len = fread(start, 1, sizeof start, f);
        fclose(f);
    }
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&un, sizeof un) < 0 || write(fd, start, len) != (ssize_t)len) {
        perror(path);
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    int runs = atoi(argv[1]);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &sa.sin_addr);
    double *t = calloc(runs, sizeof *t);
    int ok = 0;
    for (int r = 0; r < runs; r++) {
        char *args[64];
        int n = 0;
        for (int i = 4; i < argc && n < 63; i++) {
            if (strstr(argv[i], "%d")) {
                char *s = malloc(strlen(argv[i]) + 16);
                sprintf(s, argv[i], r);
                args[n++] = s;
            } else {
                args[n++] = argv[i];
            }
        }
        args[n] = NULL;
        const char *warm = getenv("WARM_SOCKET");
        double start = now_ms();
        pid_t pid = warm ? 0 : fork();
        if (warm) {
            char path[108];
            snprintf(path, sizeof path, warm, r);
            if (warm_send(path, getenv("WARM_START")) < 0) {
                printf("never ready\n");
                return 1;
            }
        } else if (pid == 0) {
            setpgid(0, 0);
            int null = open("/dev/null", 1);
            dup2(null, 1);
            execvp(args[0], args);
            _exit(127);
        }
        double ready = 0;
        while (now_ms() - start < 5000) {
            /* non-blocking, 2 ms at most: a SYN sent before the address is wired would
             * otherwise wait a whole retransmission (1 s) */
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
            if (rc < 0 && errno == EINPROGRESS) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                int err = 1;
                socklen_t len = sizeof err;
                if (poll(&pfd, 1, 2) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0)
                    rc = err == 0 ? 0 : -1;
            }
            close(fd);
            if (rc == 0) {
                ready = now_ms() - start;
                break;
            }
            usleep(50);
        }
        if (!warm) {
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
        const char *cleanup = getenv("CLEANUP"); /* e.g. "runc delete -f bench-%d" */
        if (cleanup) {
            char cmd[512];
            snprintf(cmd, sizeof cmd, cleanup, r);
            if (system(cmd) != 0)
                fprintf(stderr, "cleanup failed: %s\n", cmd);
        }
        if (ready > 0)
            t[ok++] = ready;
        usleep(20000); /* the previous run's namespaces go away */
    }
    if (!ok) {
        printf("never ready\n");
        return 1;
    }
    qsort(t, ok, sizeof *t, cmp);
    printf("%.2f %.2f %d\n", t[ok / 2], t[ok * 9 / 10], ok);
    return 0;
}
