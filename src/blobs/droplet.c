/* blobs: droplets as blobs (a tar of the folder), materialised on the hosts that need them,
 * and the thread-pool work behind blobs.h's calls that take a loop. */
#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blobs/blobs_internal.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

void blobs__work_begin(struct blob_store *bs)
{
    uv_mutex_lock(&bs->lock);
    bs->working++;
    uv_mutex_unlock(&bs->lock);
}

void blobs__work_end(struct blob_store *bs)
{
    uv_mutex_lock(&bs->lock);
    bool last = --bs->working == 0 && bs->closing;
    uv_mutex_unlock(&bs->lock);
    if (last)
        blobs__free(bs);
}

/* ---- packing ------------------------------------------------------------------------------ */

static int pack__cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Writes dir/rel (rel "" for dir itself: only its children) and what is below, by name. */
static int pack__tree(struct archive *a, const char *dir, const char *rel)
{
    char *full = *rel ? xasprintf("%s/%s", dir, rel) : xstrdup(dir);
    DIR *d = opendir(full);
    if (!d) {
        int rc = -errno;
        free(full);
        return rc;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            names = xrealloc(names, (n + 1) * sizeof *names);
            names[n++] = xstrdup(e->d_name);
        }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, pack__cmp);
    int rc = 0;
    char *buf = NULL;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char *name = *rel ? xasprintf("%s/%s", rel, names[i]) : xstrdup(names[i]);
        char *path = xasprintf("%s/%s", full, names[i]);
        struct stat st;
        if (lstat(path, &st) < 0)
            rc = -errno;
        else if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) || S_ISLNK(st.st_mode)) {
            struct archive_entry *en = archive_entry_new();
            archive_entry_set_pathname(en, name);
            archive_entry_set_mode(en, st.st_mode & (S_IFMT | 0777));
            archive_entry_set_size(en, S_ISREG(st.st_mode) ? st.st_size : 0);
            archive_entry_set_mtime(en, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
            char target[4096];
            ssize_t tl = S_ISLNK(st.st_mode) ? readlink(path, target, sizeof target - 1) : 0;
            if (tl < 0)
                rc = -errno;
            else if (S_ISLNK(st.st_mode)) {
                target[tl] = '\0';
                archive_entry_set_symlink(en, target);
            }
            if (rc == 0 && archive_write_header(a, en) != ARCHIVE_OK) {
                log_error("blobs: cannot pack %s: %s", path, archive_error_string(a));
                rc = -EIO;
            }
            archive_entry_free(en);
            if (rc == 0 && S_ISREG(st.st_mode)) {
                int fd = open(path, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                    rc = -errno;
                if (!buf)
                    buf = xmalloc(1 << 16);
                ssize_t r;
                while (rc == 0 && (r = read(fd, buf, 1 << 16)) > 0)
                    if (archive_write_data(a, buf, (size_t)r) != r)
                        rc = -EIO;
                if (fd >= 0)
                    close(fd);
            }
            if (rc == 0 && S_ISDIR(st.st_mode))
                rc = pack__tree(a, dir, name);
        } /* sockets, fifos and devices are no part of a droplet */
        free(name);
        free(path);
    }
    free(buf);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    free(full);
    return rc;
}

int blob_droplet_pack(const char *droplet_dir, const char *tmp_dir, char **tar_path)
{
    char *path = NULL;
    int fd = blobs__temp_file(tmp_dir, &path);
    if (fd < 0)
        return fd;
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    archive_write_set_bytes_in_last_block(a, 1);
    int rc = archive_write_open_fd(a, fd) == ARCHIVE_OK ? 0 : -EIO;
    if (rc == 0)
        rc = pack__tree(a, droplet_dir, "");
    if (archive_write_close(a) != ARCHIVE_OK && rc == 0)
        rc = -EIO;
    archive_write_free(a);
    close(fd);
    if (rc < 0) {
        unlink(path);
        free(path);
        return rc;
    }
    *tar_path = path;
    return 0;
}

/* ---- unpacking ---------------------------------------------------------------------------- */

/* Whether name stays inside: relative, no "." or ".." component, no empty one. */
static bool unpack__name_ok(const char *name)
{
    if (!*name || *name == '/')
        return false;
    for (const char *p = name; *p;) {
        size_t len = strcspn(p, "/");
        if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        p += len;
        if (*p == '/' && !*++p)
            return true; /* a folder's trailing slash */
    }
    return true;
}

/* Whether name lies below one of the links unpacked so far (writing it would go through). */
static bool unpack__under_link(const char *name, char **links, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(links[i]);
        if (!strncmp(name, links[i], len) && name[len] == '/')
            return true;
    }
    return false;
}

int blob_droplet_unpack(const char *tar_path, const char *dir)
{
    if (mkdir(dir, 0700) < 0)
        return -errno;
    struct archive *in = archive_read_new();
    archive_read_support_format_tar(in);
    struct archive *out = archive_write_disk_new();
    archive_write_disk_set_options(out, ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME |
                                            ARCHIVE_EXTRACT_NO_OVERWRITE |
                                            ARCHIVE_EXTRACT_SECURE_NODOTDOT);
    int rc = archive_read_open_filename(in, tar_path, 1 << 16) == ARCHIVE_OK ? 0 : -EIO;
    char **links = NULL;
    size_t n_links = 0;
    struct archive_entry *en;
    while (rc == 0) {
        int r = archive_read_next_header(in, &en);
        if (r == ARCHIVE_EOF)
            break;
        if (r != ARCHIVE_OK) {
            rc = -EIO;
            break;
        }
        const char *name = archive_entry_pathname(en);
        mode_t type = archive_entry_filetype(en);
        if (!name || !unpack__name_ok(name) || unpack__under_link(name, links, n_links) ||
            (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK) ||
            archive_entry_hardlink(en)) {
            log_error("blobs: a droplet's entry \"%.200s\" is refused (it would leave its folder, "
                      "or is not a file, folder or link)",
                      name ? name : "");
            rc = -EBADMSG;
            break;
        }
        if (type == AE_IFLNK) {
            links = xrealloc(links, (n_links + 1) * sizeof *links);
            links[n_links++] = xstrdup(name);
        }
        char *full = xasprintf("%s/%s", dir, name);
        archive_entry_set_pathname(en, full);
        free(full);
        archive_entry_set_uid(en, getuid());
        archive_entry_set_gid(en, getgid());
        if (archive_write_header(out, en) != ARCHIVE_OK) {
            log_error("blobs: cannot unpack a droplet's \"%.200s\": %s", name,
                      archive_error_string(out));
            rc = -EIO;
            break;
        }
        const void *buf;
        size_t len;
        la_int64_t off;
        while ((r = archive_read_data_block(in, &buf, &len, &off)) == ARCHIVE_OK)
            if (archive_write_data_block(out, buf, len, off) != ARCHIVE_OK) {
                r = ARCHIVE_FATAL;
                break;
            }
        if (r != ARCHIVE_EOF)
            rc = -EIO;
        else if (archive_write_finish_entry(out) != ARCHIVE_OK)
            rc = -EIO;
    }
    archive_read_free(in);
    if (archive_write_close(out) != ARCHIVE_OK && rc == 0)
        rc = -EIO;
    archive_write_free(out);
    for (size_t i = 0; i < n_links; i++)
        free(links[i]);
    free(links);
    if (rc < 0)
        rm_rf(dir);
    return rc;
}

/* ---- materialising droplets --------------------------------------------------------------- */

struct blobs_waiter {
    char app_guid[37];
    blob_droplet_ready_cb ready;
    void *ctx;
};

struct blobs_pending {
    struct blobs_pending *next;
    struct blob_store *bs;
    char digest[BLOB_DIGEST_LEN + 1];
    bool in_flight;
    bool forgotten;    /* blob_droplet_forget: nobody waits, and it is off the list */
    int64_t failed_at; /* time_mono_ms of the last failure */
    struct blobs_waiter *waiters;
    size_t n_waiters;
    uv_work_t work;
    int rc;
};

static struct blobs_pending *pending__find(struct blob_store *bs, const char *digest)
{
    for (struct blobs_pending *p = bs->pending; p; p = p->next)
        if (!strcmp(p->digest, digest))
            return p;
    return NULL;
}

static void pending__unlink(struct blob_store *bs, struct blobs_pending *p)
{
    for (struct blobs_pending **pp = &bs->pending; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            return;
        }
}

static bool blobs__is_dir(const char *path)
{
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void materialise__work(uv_work_t *w)
{
    struct blobs_pending *p = w->data;
    struct blob_store *bs = p->bs;
    char *tar = NULL;
    int fd = blobs__temp_file(bs->tmp, &tar);
    p->rc = fd < 0 ? fd : 0;
    if (fd >= 0)
        close(fd);
    if (p->rc == 0)
        p->rc = blob_get_file(bs, p->digest, tar, 0);
    char *dest = xasprintf("%s/%s", bs->droplets, blobs__hex(p->digest));
    char *tmp_dir =
        xasprintf("%s/.%s-%08x", bs->droplets, blobs__hex(p->digest), (unsigned)random());
    if (p->rc == 0)
        p->rc = mkdir_p(bs->droplets, 0700);
    if (p->rc == 0)
        p->rc = blob_droplet_unpack(tar, tmp_dir);
    if (p->rc == 0 && rename(tmp_dir, dest) < 0) {
        p->rc = errno == EEXIST || errno == ENOTEMPTY ? 0 : -errno;
        rm_rf(tmp_dir);
    }
    if (tar)
        unlink(tar);
    free(tar);
    free(tmp_dir);
    free(dest);
}

static void materialise__done(uv_work_t *w, int status)
{
    struct blobs_pending *p = w->data;
    struct blob_store *bs = p->bs;
    int rc = status < 0 ? status : p->rc;
    if (!p->forgotten) {
        if (rc < 0)
            log_error("blobs: the droplet %s cannot be brought here from the %s: %s", p->digest,
                      bs->pg_url ? "database" : "blob files", skiff_strerror(rc));
        p->in_flight = false;
        p->failed_at = rc < 0 ? time_mono_ms() : 0;
        struct blobs_waiter *waiters = p->waiters;
        size_t n = p->n_waiters;
        p->waiters = NULL;
        p->n_waiters = 0;
        if (rc == 0) {
            pending__unlink(bs, p);
            p->forgotten = true;
        }
        for (size_t i = 0; i < n; i++)
            waiters[i].ready(waiters[i].ctx, waiters[i].app_guid, rc);
        free(waiters);
    }
    bool gone = p->forgotten;
    if (gone) {
        free(p->waiters);
        free(p);
    }
    blobs__work_end(bs);
}

int blob_droplet_local(struct blob_store *bs, uv_loop_t *loop, const char *path, const char *digest,
                       const char *app_guid, blob_droplet_ready_cb ready, void *ctx, char **local)
{
    if (blobs__is_dir(path) || !blob_digest_valid(digest)) {
        *local = xstrdup(path ? path : "");
        return 0;
    }
    char *cached = xasprintf("%s/%s", bs->droplets, blobs__hex(digest));
    if (blobs__is_dir(cached)) {
        *local = cached;
        return 0;
    }
    free(cached);
    struct blobs_pending *p = pending__find(bs, digest);
    if (p && !p->in_flight && time_mono_ms() - p->failed_at < BLOB_DROPLET_RETRY_MS) {
        *local = xstrdup(path ? path : "");
        return 0;
    }
    if (!p) {
        p = xcalloc(1, sizeof *p);
        p->bs = bs;
        snprintf(p->digest, sizeof p->digest, "%s", digest);
        p->next = bs->pending;
        bs->pending = p;
    }
    bool known = false;
    for (size_t i = 0; i < p->n_waiters && !known; i++)
        known = p->waiters[i].ready == ready && p->waiters[i].ctx == ctx &&
                !strcmp(p->waiters[i].app_guid, app_guid ? app_guid : "");
    if (!known && ready) {
        p->waiters = xrealloc(p->waiters, (p->n_waiters + 1) * sizeof *p->waiters);
        struct blobs_waiter *wt = &p->waiters[p->n_waiters++];
        snprintf(wt->app_guid, sizeof wt->app_guid, "%s", app_guid ? app_guid : "");
        wt->ready = ready;
        wt->ctx = ctx;
    }
    if (!p->in_flight) {
        p->work.data = p;
        blobs__work_begin(bs);
        int rc = uv_queue_work(loop, &p->work, materialise__work, materialise__done);
        if (rc < 0) {
            blobs__work_end(bs);
            pending__unlink(bs, p);
            free(p->waiters);
            free(p);
            *local = xstrdup(path ? path : "");
            return 0;
        }
        p->in_flight = true;
    }
    return -EINPROGRESS;
}

void blob_droplet_forget(struct blob_store *bs)
{
    struct blobs_pending *p = bs->pending;
    bs->pending = NULL;
    while (p) {
        struct blobs_pending *next = p->next;
        free(p->waiters);
        p->waiters = NULL;
        p->n_waiters = 0;
        if (p->in_flight)
            p->forgotten = true; /* its done frees it */
        else
            free(p);
        p = next;
    }
}

/* ---- puts on the thread pool -------------------------------------------------------------- */

struct blobs_put {
    uv_work_t work;
    struct blob_store *bs;
    char *path;
    char *dest; /* a get's: path is then the digest */
    bool droplet;
    blob_put_cb done;
    void *ctx;
    int rc;
    char digest[BLOB_DIGEST_LEN + 1];
};

static void put__work(uv_work_t *w)
{
    struct blobs_put *p = w->data;
    if (p->dest) {
        snprintf(p->digest, sizeof p->digest, "%s", p->path);
        p->rc = blob_get_file(p->bs, p->path, p->dest, 0);
        return;
    }
    if (!p->droplet) {
        p->rc = blob_put_file(p->bs, p->path, p->digest, NULL);
        return;
    }
    char *tar = NULL;
    p->rc = blob_droplet_pack(p->path, p->bs->tmp, &tar);
    if (p->rc == 0)
        p->rc = blobs__put_owned(p->bs, tar, p->digest, NULL);
    free(tar);
}

static void put__done(uv_work_t *w, int status)
{
    struct blobs_put *p = w->data;
    int rc = status < 0 ? status : p->rc;
    p->done(p->ctx, rc, rc == 0 ? p->digest : NULL);
    blobs__work_end(p->bs);
    free(p->path);
    free(p->dest);
    free(p);
}

static int put__start(struct blob_store *bs, uv_loop_t *loop, const char *path, bool droplet,
                      const char *dest, blob_put_cb done, void *ctx)
{
    struct blobs_put *p = xcalloc(1, sizeof *p);
    p->bs = bs;
    p->path = xstrdup(path);
    p->dest = dest ? xstrdup(dest) : NULL;
    p->droplet = droplet;
    p->done = done;
    p->ctx = ctx;
    p->work.data = p;
    blobs__work_begin(bs);
    int rc = uv_queue_work(loop, &p->work, put__work, put__done);
    if (rc < 0) {
        blobs__work_end(bs);
        free(p->path);
        free(p->dest);
        free(p);
    }
    return rc;
}

int blob_put_file_async(struct blob_store *bs, uv_loop_t *loop, const char *path, blob_put_cb done,
                        void *ctx)
{
    return put__start(bs, loop, path, false, NULL, done, ctx);
}

int blob_put_droplet_async(struct blob_store *bs, uv_loop_t *loop, const char *droplet_dir,
                           blob_put_cb done, void *ctx)
{
    return put__start(bs, loop, droplet_dir, true, NULL, done, ctx);
}

int blob_get_file_async(struct blob_store *bs, uv_loop_t *loop, const char *digest,
                        const char *dest, blob_put_cb done, void *ctx)
{
    if (!blob_digest_valid(digest))
        return -EINVAL;
    return put__start(bs, loop, digest, false, dest, done, ctx);
}

/* ---- garbage collection on the thread pool ------------------------------------------------ */

struct blobs_gc {
    uv_work_t work;
    struct blob_store *bs;
    char **keep;
    size_t n_keep;
    int64_t min_age_ms;
    blob_gc_cb done;
    void *ctx;
    int rc;
    size_t deleted;
};

static void gc__work(uv_work_t *w)
{
    struct blobs_gc *g = w->data;
    g->rc = blob_gc(g->bs, (const char *const *)g->keep, g->n_keep, g->min_age_ms, &g->deleted);
}

static void gc__done(uv_work_t *w, int status)
{
    struct blobs_gc *g = w->data;
    if (g->done)
        g->done(g->ctx, status < 0 ? status : g->rc, g->deleted);
    blobs__work_end(g->bs);
    for (size_t i = 0; i < g->n_keep; i++)
        free(g->keep[i]);
    free(g->keep);
    free(g);
}

int blob_gc_async(struct blob_store *bs, uv_loop_t *loop, const char *const *keep, size_t n_keep,
                  int64_t min_age_ms, blob_gc_cb done, void *ctx)
{
    struct blobs_gc *g = xcalloc(1, sizeof *g);
    g->bs = bs;
    g->keep = xcalloc(n_keep + 1, sizeof *g->keep);
    for (size_t i = 0; i < n_keep; i++)
        g->keep[i] = xstrdup(keep[i] ? keep[i] : "");
    g->n_keep = n_keep;
    g->min_age_ms = min_age_ms;
    g->done = done;
    g->ctx = ctx;
    g->work.data = g;
    blobs__work_begin(bs);
    int rc = uv_queue_work(loop, &g->work, gc__work, gc__done);
    if (rc < 0) {
        g->done = NULL;
        gc__done(&g->work, rc);
    }
    return rc;
}

/* ---- collecting what is materialised here -------------------------------------------------- */

static bool cache__kept(const char *digest, const char *const *keep, size_t n_keep)
{
    for (size_t i = 0; i < n_keep; i++)
        if (keep[i] && !strcmp(keep[i], digest))
            return true;
    return false;
}

/* Whether one of in_use is path or lies below it. */
static bool cache__in_use(const char *path, const char *const *in_use, size_t n_in_use)
{
    size_t len = strlen(path);
    for (size_t i = 0; i < n_in_use; i++)
        if (in_use[i] && !strncmp(in_use[i], path, len) &&
            (in_use[i][len] == '\0' || in_use[i][len] == '/'))
            return true;
    return false;
}

/* One cache folder: every entry named HEX (droplets) or HEX.KIND (packages, dot_ok). Names
 * that are no digest (a materialising's .HEX-RANDOM, a fetch's temporary file) are left to
 * whoever writes them. */
static void cache__collect(const char *dir, bool dot_ok, const char *const *keep, size_t n_keep,
                           const char *const *in_use, size_t n_in_use, int64_t since_ms,
                           size_t *deleted, size_t *busy)
{
    DIR *d = opendir(dir);
    int rc;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        char digest[BLOB_DIGEST_LEN + 1];
        snprintf(digest, sizeof digest, BLOB_DIGEST_PREFIX "%.64s", e->d_name);
        if (len < 64 || (len > 64 && (!dot_ok || e->d_name[64] != '.')) ||
            !blob_digest_valid(digest) || cache__kept(digest, keep, n_keep))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        /* the change time: when it was renamed into place */
        int64_t came = (int64_t)st.st_ctim.tv_sec * 1000 + st.st_ctim.tv_nsec / 1000000;
        if (since_ms > 0 && came + BLOB_CACHE_CLOCK_SLACK_MS >= since_ms)
            continue;
        char *path = xasprintf("%s/%s", dir, e->d_name);
        if (cache__in_use(path, in_use, n_in_use))
            (*busy)++;
        else if ((rc = rm_rf(path)) == 0)
            (*deleted)++;
        else
            log_warning("blobs: cannot remove %s: %s", path, skiff_strerror(rc));
        free(path);
    }
    if (d)
        closedir(d);
}

int blob_cache_gc(struct blob_store *bs, const char *const *keep, size_t n_keep,
                  const char *const *in_use, size_t n_in_use, int64_t since_ms, size_t *deleted,
                  size_t *busy)
{
    size_t del = 0, held = 0;
    cache__collect(bs->droplets, false, keep, n_keep, in_use, n_in_use, since_ms, &del, &held);
    cache__collect(bs->packages, true, keep, n_keep, in_use, n_in_use, since_ms, &del, &held);
    if (deleted)
        *deleted = del;
    if (busy)
        *busy = held;
    return 0;
}

struct blobs_cache_gc {
    uv_work_t work;
    struct blob_store *bs;
    char **keep, **in_use;
    size_t n_keep, n_in_use;
    int64_t since_ms;
    blob_cache_gc_cb done;
    void *ctx;
    int rc;
    size_t deleted, busy;
};

static void cache_gc__work(uv_work_t *w)
{
    struct blobs_cache_gc *g = w->data;
    g->rc = blob_cache_gc(g->bs, (const char *const *)g->keep, g->n_keep,
                          (const char *const *)g->in_use, g->n_in_use, g->since_ms, &g->deleted,
                          &g->busy);
}

static void cache_gc__done(uv_work_t *w, int status)
{
    struct blobs_cache_gc *g = w->data;
    if (g->done)
        g->done(g->ctx, status < 0 ? status : g->rc, g->deleted, g->busy);
    blobs__work_end(g->bs);
    for (size_t i = 0; i < g->n_keep; i++)
        free(g->keep[i]);
    for (size_t i = 0; i < g->n_in_use; i++)
        free(g->in_use[i]);
    free(g->keep);
    free(g->in_use);
    free(g);
}

static char **cache__copy(const char *const *v, size_t n, size_t extra)
{
    char **out = xcalloc(n + extra + 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = xstrdup(v[i] ? v[i] : "");
    return out;
}

int blob_cache_gc_async(struct blob_store *bs, uv_loop_t *loop, const char *const *keep,
                        size_t n_keep, const char *const *in_use, size_t n_in_use,
                        blob_cache_gc_cb done, void *ctx)
{
    struct blobs_cache_gc *g = xcalloc(1, sizeof *g);
    g->bs = bs;
    size_t n_pending = 0;
    for (struct blobs_pending *p = bs->pending; p; p = p->next)
        n_pending++;
    g->keep = cache__copy(keep, n_keep, n_pending);
    g->n_keep = n_keep;
    for (struct blobs_pending *p = bs->pending; p; p = p->next)
        g->keep[g->n_keep++] = xstrdup(p->digest); /* being materialised: not named yet */
    g->in_use = cache__copy(in_use, n_in_use, 0);
    g->n_in_use = n_in_use;
    g->since_ms = time_now_ms();
    g->done = done;
    g->ctx = ctx;
    g->work.data = g;
    blobs__work_begin(bs);
    int rc = uv_queue_work(loop, &g->work, cache_gc__work, cache_gc__done);
    if (rc < 0) {
        g->done = NULL;
        cache_gc__done(&g->work, rc);
    }
    return rc;
}
