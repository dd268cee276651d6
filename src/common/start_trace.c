/* start_trace.h: compiled in with -DSKIFF_START_TRACE=\"FILE\" only. */
#include "common/start_trace.h"

#ifdef SKIFF_START_TRACE
#include <fcntl.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static int start_trace__fd = -1;

void start_trace_keep_open(void)
{
    if (start_trace__fd < 0)
        start_trace__fd = open(SKIFF_START_TRACE, O_WRONLY | O_APPEND | O_CLOEXEC);
}

void start_trace(const char *step)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char line[160];
    int n = snprintf(line, sizeof line, "%lld.%06ld %d %s\n", (long long)ts.tv_sec,
                     ts.tv_nsec / 1000, (int)getpid(), step);
    int fd = start_trace__fd >= 0 ? start_trace__fd
                                  : open(SKIFF_START_TRACE, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0)
        return;
    (void)!write(fd, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
    if (fd != start_trace__fd)
        close(fd);
}
#endif
