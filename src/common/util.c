#include "common/util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void out_of_memory(void)
{
    fputs("skiff: out of memory\n", stderr);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        out_of_memory();
    return p;
}

void *xcalloc(size_t count, size_t n)
{
    void *p = calloc(count ? count : 1, n ? n : 1);
    if (!p)
        out_of_memory();
    return p;
}

void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        out_of_memory();
    return p;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = NULL;
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        out_of_memory();
    return s;
}

int mkdir_p(const char *path, unsigned mode)
{
    if (!mode)
        mode = 0755;
    char *copy = xstrdup(path);
    int rc = 0;
    for (char *p = copy + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(copy, mode) < 0 && errno != EEXIST) {
                rc = -errno;
                break;
            }
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    free(copy);
    return rc;
}

int rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISDIR(st.st_mode))
        return unlink(path) < 0 ? -errno : 0;
    DIR *dir = opendir(path);
    if (!dir)
        return -errno;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char *child = xasprintf("%s/%s", path, de->d_name);
        int r = rm_rf(child);
        if (r < 0 && !rc)
            rc = r;
        free(child);
    }
    closedir(dir);
    if (rmdir(path) < 0 && !rc)
        rc = -errno;
    return rc;
}

static int copy__take(uint64_t *left, uint64_t n)
{
    if (!left)
        return 0;
    if (n > *left)
        return -EFBIG;
    *left -= n;
    return 0;
}

static int copy__file(const char *src, const char *dst, const struct stat *st,
                      struct copy_budget *b)
{
    int rc = copy__take(b ? &b->bytes : NULL, (uint64_t)st->st_size);
    if (rc < 0)
        return rc;
    int in = open(src, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (in < 0)
        return -errno;
    int out = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (out < 0) {
        rc = -errno;
        close(in);
        return rc;
    }
    char buf[65536];
    uint64_t copied = 0;
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = n < 0 ? -errno : 0;
            break;
        }
        if ((copied += (uint64_t)n) > (uint64_t)st->st_size) {
            rc = -EFBIG; /* it grew while we read: it is not ours to copy more */
            break;
        }
        for (ssize_t off = 0; off < n && rc == 0;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno != EINTR)
                rc = -errno;
            else if (w > 0)
                off += w;
        }
        if (rc < 0)
            break;
    }
    close(in);
    if (close(out) < 0 && rc == 0)
        rc = -errno;
    return rc;
}

/* Owner, mode and times of dst as src's (st). */
static int copy__attrs(const char *dst, const struct stat *st)
{
    if (lchown(dst, st->st_uid, st->st_gid) < 0)
        return -errno;
    if (!S_ISLNK(st->st_mode) && chmod(dst, st->st_mode & 01777) < 0)
        return -errno;
    struct timespec times[2] = {st->st_atim, st->st_mtim};
    return utimensat(AT_FDCWD, dst, times, AT_SYMLINK_NOFOLLOW) < 0 ? -errno : 0;
}

int copy_tree(const char *src, const char *dst, struct copy_budget *b)
{
    struct stat st;
    if (lstat(src, &st) < 0)
        return -errno;
    int rc = copy__take(b ? &b->entries : NULL, 1);
    if (rc < 0)
        return rc;
    if (S_ISREG(st.st_mode)) {
        rc = copy__file(src, dst, &st, b);
    } else if (S_ISLNK(st.st_mode)) {
        if (st.st_size <= 0 || st.st_size >= 65536)
            return -EINVAL;
        char *target = xmalloc((size_t)st.st_size + 1);
        ssize_t n = readlink(src, target, (size_t)st.st_size + 1);
        if (n < 0 || n > st.st_size)
            rc = n < 0 ? -errno : -EINVAL;
        else {
            target[n] = 0;
            rc = symlink(target, dst) < 0 ? -errno : 0;
        }
        free(target);
    } else if (S_ISDIR(st.st_mode)) {
        if (mkdir(dst, 0700) < 0 && errno != EEXIST)
            return -errno;
        DIR *dir = opendir(src);
        if (!dir)
            return -errno;
        struct dirent *de;
        while (rc == 0 && (de = readdir(dir))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
                continue;
            char *from = xasprintf("%s/%s", src, de->d_name);
            char *to = xasprintf("%s/%s", dst, de->d_name);
            rc = copy_tree(from, to, b);
            free(from);
            free(to);
        }
        closedir(dir);
    } else {
        return 0; /* fifos, sockets, devices: nothing a droplet needs */
    }
    return rc < 0 ? rc : copy__attrs(dst, &st);
}

int file_read(const char *path, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t cap = 4096, n = 0;
    char *data = xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap)
            data = xrealloc(data, cap *= 2);
        ssize_t r = read(fd, data + n, cap - n - 1);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            int err = -errno;
            free(data);
            close(fd);
            return err;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    data[n] = '\0';
    *out = data;
    if (len)
        *len = n;
    return 0;
}

static int file__write_whole(const char *path, const void *data, size_t len, unsigned mode,
                             bool durable)
{
    char *tmp = xasprintf("%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    int rc = 0;
    if (fd < 0) {
        rc = -errno;
        goto done;
    }
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            rc = -errno;
            break;
        }
        p += w;
        len -= (size_t)w;
    }
    if (!rc && durable && fsync(fd) < 0)
        rc = -errno;
    close(fd);
    if (!rc && rename(tmp, path) < 0)
        rc = -errno;
    if (rc)
        unlink(tmp);
done:
    free(tmp);
    return rc;
}

int file_write_atomic(const char *path, const void *data, size_t len, unsigned mode)
{
    return file__write_whole(path, data, len, mode, true);
}

int file_replace(const char *path, const void *data, size_t len, unsigned mode)
{
    return file__write_whole(path, data, len, mode, false);
}

static void random_bytes(void *out, size_t n)
{
    unsigned char *p = out;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            abort(); /* the kernel's entropy source is an invariant */
        }
        p += r;
        n -= (size_t)r;
    }
}

void uuid_generate_v4(char out[37])
{
    unsigned char b[16];
    random_bytes(b, sizeof b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

void random_hex(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char *b = xmalloc(n);
    random_bytes(b, n);
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[2 * n] = '\0';
    free(b);
}

int64_t time_now_ms(void) { return time_now_ns() / 1000000; }

int64_t time_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t time_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t time_pace_delay_ms(int64_t now_ms, int64_t last_ms, int64_t period_ms)
{
    if (last_ms < 0 || now_ms < last_ms || now_ms - last_ms >= period_ms)
        return 0; /* never, long enough ago, or a clock gone back: never wait on it */
    return period_ms - (now_ms - last_ms);
}

void time_format_rfc3339(int64_t ms, char *out, size_t size)
{
    /* log lines come many a second: the date and time of the last second are kept per thread */
    static __thread int64_t last_secs = INT64_MIN;
    static __thread char date[24];
    int64_t secs = ms / 1000;
    if (secs != last_secs) {
        time_t t = (time_t)secs;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
        last_secs = secs;
    }
    int milli = (int)(ms % 1000);
    if (milli < 0 || size < sizeof date + 5) {
        snprintf(out, size, "%s.%03dZ", date, milli);
        return;
    }
    /* by hand: a log line is stamped many times a second */
    size_t n = strlen(date);
    memcpy(out, date, n);
    out[n] = '.';
    out[n + 1] = (char)('0' + milli / 100);
    out[n + 2] = (char)('0' + milli / 10 % 10);
    out[n + 3] = (char)('0' + milli % 10);
    out[n + 4] = 'Z';
    out[n + 5] = '\0';
}

char *path_expand_home(const char *path)
{
    if (path[0] == '~' && (path[1] == '/' || path[1] == '\0')) {
        const char *home = getenv("HOME");
        return xasprintf("%s%s", home ? home : "/root", path + 1);
    }
    return xstrdup(path);
}

bool str_has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

char **strv_dup(char *const *v)
{
    if (!v)
        return NULL;
    size_t n = 0;
    while (v[n])
        n++;
    char **out = xcalloc(n + 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = xstrdup(v[i]);
    return out;
}

void strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

bool str_has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

bool name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 63 || !(islower((unsigned char)name[0]) || isdigit((unsigned char)name[0])))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(islower(c) || isdigit(c) || c == '-'))
            return false;
    }
    return true;
}

bool rate_take(struct rate_limit *r, int64_t now_ms, double per_s, double burst)
{
    if (!r->started) {
        r->started = true;
        r->credit = burst;
    } else if (now_ms > r->at_ms) {
        r->credit += (double)(now_ms - r->at_ms) * per_s / 1000;
    }
    if (r->credit > burst)
        r->credit = burst;
    r->at_ms = now_ms;
    if (r->credit < 1)
        return false;
    r->credit -= 1;
    return true;
}
