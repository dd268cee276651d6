/* Put and get of one blob (random bytes: a droplet is mostly compressed files) through
 * src/blobs on the location given (files under a home, or PostgreSQL's chunks), and for
 * PostgreSQL the peer the chunks were chosen over: the same bytes as a large object (lo_creat,
 * lo_write of 1 MiB pieces in one transaction; lo_read back), each on a connection of its own
 * as src/blobs does. Prints the median of ITERATIONS, in ms, one line per call:
 *   bench_blobs LOCATION HOME SIZE_MB ITERATIONS */
#include <fcntl.h>
#include <libpq-fe.h>
#include <libpq/libpq-fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blobs/blobs.h"
#include "common/util.h"
#include "store/store.h"

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

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return v[n / 2];
}

static void lo_put_get(const char *url, const char *src, const char *dest, double *put,
                       double *get)
{
    double t0 = now_ms();
    PGconn *c = PQconnectdb(url);
    PQclear(PQexec(c, "BEGIN"));
    Oid oid = lo_creat(c, INV_WRITE);
    int fd = lo_open(c, oid, INV_WRITE);
    int in = open(src, O_RDONLY);
    char *buf = xmalloc(1 << 20);
    ssize_t n;
    while ((n = read(in, buf, 1 << 20)) > 0)
        lo_write(c, fd, buf, (size_t)n);
    close(in);
    lo_close(c, fd);
    PQclear(PQexec(c, "COMMIT"));
    PQfinish(c);
    *put = now_ms() - t0;
    t0 = now_ms();
    c = PQconnectdb(url);
    PQclear(PQexec(c, "BEGIN"));
    fd = lo_open(c, oid, INV_READ);
    int out = open(dest, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int r;
    while ((r = lo_read(c, fd, buf, 1 << 20)) > 0)
        if (write(out, buf, (size_t)r) != r)
            break;
    fsync(out);
    close(out);
    lo_close(c, fd);
    PQclear(PQexec(c, "COMMIT"));
    *get = now_ms() - t0;
    lo_unlink(c, oid);
    PQfinish(c);
    free(buf);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s LOCATION HOME SIZE_MB ITERATIONS\n", argv[0]);
        return 2;
    }
    const char *location = argv[1], *home = argv[2];
    size_t size = (size_t)atol(argv[3]) << 20;
    int n = atoi(argv[4]);
    char *src = xasprintf("%s/bench-src", home), *dest = xasprintf("%s/bench-dest", home);
    double *put = xcalloc((size_t)n, sizeof *put), *get = xcalloc((size_t)n, sizeof *get);
    double *lput = xcalloc((size_t)n, sizeof *lput), *lget = xcalloc((size_t)n, sizeof *lget);
    char err[256];
    struct store *st = NULL; /* migrates: the blob tables */
    if (store_open(location, err, sizeof err, &st) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct blob_store *bs = NULL;
    blob_store_open(location, home, &bs);
    char *buf = xmalloc(size);
    for (int i = 0; i < n; i++) {
        /* new content each time: a put that finds its blob there writes nothing */
        int r = open("/dev/urandom", O_RDONLY);
        if (read(r, buf, size) != (ssize_t)size)
            return 1;
        close(r);
        file_write_atomic(src, buf, size, 0600);
        char digest[BLOB_DIGEST_LEN + 1];
        double t0 = now_ms();
        if (blob_put_file(bs, src, digest, NULL) != 0)
            return 1;
        put[i] = now_ms() - t0;
        t0 = now_ms();
        if (blob_get_file(bs, digest, dest, 0) != 0)
            return 1;
        get[i] = now_ms() - t0;
        blob_delete(bs, digest);
        if (blob_store_in_database(bs))
            lo_put_get(location, src, dest, &lput[i], &lget[i]);
    }
    const char *kind = blob_store_in_database(bs) ? "chunks" : "files";
    printf("put %s %zu MB: %.0f ms (%.0f MB/s)\n", kind, size >> 20, median(put, n),
           (size >> 20) / (median(put, n) / 1e3));
    printf("get %s %zu MB: %.0f ms (%.0f MB/s)\n", kind, size >> 20, median(get, n),
           (size >> 20) / (median(get, n) / 1e3));
    if (blob_store_in_database(bs)) {
        printf("put large object: %.0f ms (chunks/large object %.2fx)\n", median(lput, n),
               median(put, n) / median(lput, n));
        printf("get large object: %.0f ms (chunks/large object %.2fx)\n", median(lget, n),
               median(get, n) / median(lget, n));
    }
    blob_store_close(bs);
    store_close(st);
    unlink(src);
    unlink(dest);
    return 0;
}
