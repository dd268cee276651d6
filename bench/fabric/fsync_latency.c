/* fsync_latency: how long one durable 256-byte record append takes on this disk, three ways.
 *   append   write at the end of a growing file, then fdatasync (size goes through the journal)
 *   prezero  overwrite inside a file already written with zeros and synced, then fdatasync
 *   dsync    pwritev2(RWF_DSYNC) into the same kind of pre-zeroed file
 * Build: cc -O2 -o /tmp/fsync_latency bench/fabric/fsync_latency.c
 * Run:   /tmp/fsync_latency DIR [count]   (DIR on the disk the fabric log lives on) */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum { RECORD = 256 };

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int compare_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int open_prezeroed(const char *path, int count)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return -1;
    static char zeros[1 << 16];
    long total = (long)count * RECORD;
    for (long off = 0; off < total; off += sizeof zeros)
        if (pwrite(fd, zeros, sizeof zeros, off) != (ssize_t)sizeof zeros)
            return -1;
    if (fsync(fd) != 0)
        return -1;
    return fd;
}

static void report(const char *name, double *samples, int count)
{
    qsort(samples, count, sizeof *samples, compare_double);
    printf("%-8s p50 %7.1f us  p99 %7.1f us  max %7.1f us\n", name, samples[count / 2],
           samples[count * 99 / 100], samples[count - 1]);
}

/* How one durable write is made: appended to a growing file then fdatasync, written into
 * space zero-filled and synced ahead then fdatasync, or the same with RWF_DSYNC. */
enum way { WAY_APPEND, WAY_PREZERO, WAY_DSYNC };

/* count durable writes of record into a new file at path, the way w; their times in samples.
 * The file is removed afterwards. -1 (with a message) when a write or sync fails. */
static int measure(const char *path, enum way w, char *record, double *samples, int count)
{
    int fd = w == WAY_APPEND ? open(path, O_RDWR | O_CREAT | O_TRUNC | O_APPEND, 0600)
                             : open_prezeroed(path, count);
    if (fd < 0) {
        perror(path);
        return -1;
    }
    int rc = 0;
    for (int i = 0; i < count && rc == 0; i++) {
        struct iovec iov = {record, RECORD};
        off_t at = (off_t)i * RECORD;
        double start = now_us();
        if (w == WAY_APPEND)
            rc = write(fd, record, RECORD) == RECORD && fdatasync(fd) == 0 ? 0 : -1;
        else if (w == WAY_PREZERO)
            rc = pwrite(fd, record, RECORD, at) == RECORD && fdatasync(fd) == 0 ? 0 : -1;
        else
            rc = pwritev2(fd, &iov, 1, at, RWF_DSYNC) == RECORD ? 0 : -1;
        samples[i] = now_us() - start;
    }
    if (rc < 0)
        perror(path);
    close(fd);
    unlink(path);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [count]\n", argv[0]);
        return 2;
    }
    int count = argc > 2 ? atoi(argv[2]) : 2000;
    char path[4096];
    char record[RECORD];
    memset(record, 'x', sizeof record);
    double *samples = calloc(count, sizeof *samples);
    if (!samples)
        return 1;

    static const char *const ways[] = {"append", "prezero", "dsync"};
    for (enum way w = WAY_APPEND; w <= WAY_DSYNC; w++) {
        snprintf(path, sizeof path, "%s/fsl-%s", argv[1], ways[w]);
        if (measure(path, w, record, samples, count) < 0)
            return 1;
        report(ways[w], samples, count);
    }
    free(samples);
    return 0;
}
