/* blobs: the store of blobs behind blobs.h, in files or in PostgreSQL (see blobs_internal.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blobs/blobs_internal.h"
#include "common/log.h"
#include "common/util.h"

bool blob_digest_valid(const char *digest)
{
    if (!digest || strlen(digest) != BLOB_DIGEST_LEN || !str_has_prefix(digest, BLOB_DIGEST_PREFIX))
        return false;
    for (const char *p = digest + strlen(BLOB_DIGEST_PREFIX); *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

const char *blobs__hex(const char *digest)
{
    return digest + strlen(BLOB_DIGEST_PREFIX);
}

/* ---- hashing ------------------------------------------------------------------------------ */

int blobs__hash_init(struct blobs_hash *h)
{
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(h->ctx);
        h->ctx = NULL;
        return -ENOMEM;
    }
    return 0;
}

void blobs__hash_update(struct blobs_hash *h, const void *data, size_t len)
{
    EVP_DigestUpdate(h->ctx, data, len);
}

void blobs__hash_final(struct blobs_hash *h, char digest[BLOB_DIGEST_LEN + 1])
{
    unsigned char sum[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_DigestFinal_ex(h->ctx, sum, &n);
    EVP_MD_CTX_free(h->ctx);
    h->ctx = NULL;
    char *out = digest + snprintf(digest, BLOB_DIGEST_LEN + 1, BLOB_DIGEST_PREFIX);
    for (unsigned i = 0; i < n && i < 32; i++)
        out += sprintf(out, "%02x", sum[i]);
}

void blobs__hash_drop(struct blobs_hash *h)
{
    EVP_MD_CTX_free(h->ctx);
    h->ctx = NULL;
}

/* Reads fd to its end, hashing (and, with out_fd >= 0, copying) it. */
int blobs__hash_fd(int fd, int out_fd, char digest[BLOB_DIGEST_LEN + 1], uint64_t *size)
{
    struct blobs_hash h;
    int rc = blobs__hash_init(&h);
    if (rc < 0)
        return rc;
    char *buf = xmalloc(BLOB_CHUNK_BYTES);
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, BLOB_CHUNK_BYTES);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            break;
        }
        if (n == 0)
            break;
        blobs__hash_update(&h, buf, (size_t)n);
        total += (uint64_t)n;
        if (out_fd >= 0 && (rc = blobs__write_all(out_fd, buf, (size_t)n)) < 0)
            break;
    }
    free(buf);
    if (rc < 0) {
        blobs__hash_drop(&h);
        return rc;
    }
    blobs__hash_final(&h, digest);
    if (size)
        *size = total;
    return 0;
}

int blobs__write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* A new, empty file under dir for what is being written (*path the caller's). */
int blobs__temp_file(const char *dir, char **path)
{
    int rc = mkdir_p(dir, 0700);
    if (rc < 0)
        return rc;
    char *p = xasprintf("%s/blob-XXXXXX", dir);
    int fd = mkstemp(p);
    if (fd < 0) {
        rc = -errno;
        free(p);
        return rc;
    }
    *path = p;
    return fd;
}

/* ---- the store ---------------------------------------------------------------------------- */

int blob_store_open(const char *store_location, const char *home, struct blob_store **out)
{
    struct blob_store *bs = xcalloc(1, sizeof *bs);
    if (store_location && (str_has_prefix(store_location, "postgres://") ||
                           str_has_prefix(store_location, "postgresql://")))
        bs->pg_url = xstrdup(store_location);
    bs->dir = xasprintf("%s/blobs", home);
    bs->files = xasprintf("%s/blobs/sha256", home);
    bs->tmp = xasprintf("%s/blobs/tmp", home);
    bs->droplets = xasprintf("%s/blobs/droplets", home);
    bs->packages = xasprintf("%s/blobs/packages", home);
    uv_mutex_init(&bs->lock);
    *out = bs;
    return 0;
}

void blob_store_close(struct blob_store *bs)
{
    if (!bs)
        return;
    blob_droplet_forget(bs);
    uv_mutex_lock(&bs->lock);
    bool in_use = bs->working > 0;
    bs->closing = true;
    uv_mutex_unlock(&bs->lock);
    if (in_use)
        return; /* the last work to end frees it (blobs__work_end) */
    blobs__free(bs);
}

void blobs__free(struct blob_store *bs)
{
    uv_mutex_destroy(&bs->lock);
    free(bs->pg_url);
    free(bs->dir);
    free(bs->files);
    free(bs->tmp);
    free(bs->droplets);
    free(bs->packages);
    free(bs);
}

bool blob_store_in_database(const struct blob_store *bs)
{
    return bs->pg_url != NULL;
}

int blob_package_local(struct blob_store *bs, const char *digest, const char *kind, char **path)
{
    if (!blob_digest_valid(digest))
        return -EINVAL;
    int rc = mkdir_p(bs->packages, 0700);
    if (rc < 0)
        return rc;
    *path = xasprintf("%s/%s%s%s", bs->packages, digest + strlen("sha256:"), kind ? "." : "",
                      kind ? kind : "");
    return 0;
}

/* ---- files -------------------------------------------------------------------------------- */

static char *blobs__file(const struct blob_store *bs, const char *digest)
{
    return xasprintf("%s/%s", bs->files, blobs__hex(digest));
}

/* Puts tmp (a file under bs->tmp, consumed) in place under its digest. */
static int blobs__file_adopt(struct blob_store *bs, const char *tmp, const char *digest)
{
    int rc = mkdir_p(bs->files, 0700);
    char *dest = blobs__file(bs, digest);
    struct stat st;
    if (rc == 0 && stat(dest, &st) == 0)
        unlink(tmp); /* there already: the same content */
    else if (rc == 0 && rename(tmp, dest) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    free(dest);
    return rc;
}

int blobs__put_owned(struct blob_store *bs, const char *tmp, char digest[BLOB_DIGEST_LEN + 1],
                     uint64_t *size)
{
    if (bs->pg_url) {
        int rc = blobs__pg_put(bs, tmp, digest, size);
        unlink(tmp);
        return rc;
    }
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        unlink(tmp);
        return rc;
    }
    int rc = blobs__hash_fd(fd, -1, digest, size);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    close(fd);
    if (rc < 0) {
        unlink(tmp);
        return rc;
    }
    return blobs__file_adopt(bs, tmp, digest);
}

int blob_put_file(struct blob_store *bs, const char *path, char digest[BLOB_DIGEST_LEN + 1],
                  uint64_t *size)
{
    if (bs->pg_url)
        return blobs__pg_put(bs, path, digest, size);
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -errno;
    char *tmp = NULL;
    int out = blobs__temp_file(bs->tmp, &tmp);
    if (out < 0) {
        close(in);
        return out;
    }
    int rc = blobs__hash_fd(in, out, digest, size);
    close(in);
    if (rc == 0 && fsync(out) < 0)
        rc = -errno;
    close(out);
    if (rc == 0)
        rc = blobs__file_adopt(bs, tmp, digest);
    else
        unlink(tmp);
    free(tmp);
    return rc;
}

int blob_put_immutable(struct blob_store *bs, const char *path, const char *digest)
{
    if (!blob_digest_valid(digest))
        return -EINVAL;
    if (bs->pg_url) {
        if (blobs__pg_has(bs, digest, NULL) == 0)
            return 0;
        char got[BLOB_DIGEST_LEN + 1];
        int rc = blobs__pg_put(bs, path, got, NULL);
        return rc == 0 && strcmp(got, digest) ? -EBADMSG : rc;
    }
    char *dest = blobs__file(bs, digest);
    /* there already, or linked now: its age is the put's, not the file's, so a collection
     * spares it until the row that names it is written */
    int rc = utimensat(AT_FDCWD, dest, NULL, 0) == 0 ? 0 : -errno;
    free(dest);
    if (rc != -ENOENT)
        return rc;
    char *tmp = NULL;
    int fd = blobs__temp_file(bs->tmp, &tmp);
    if (fd < 0)
        return fd;
    close(fd);
    unlink(tmp);
    if (link(path, tmp) < 0) { /* another file system: a copy, hashed as it is written */
        free(tmp);
        char got[BLOB_DIGEST_LEN + 1];
        rc = blob_put_file(bs, path, got, NULL);
        return rc == 0 && strcmp(got, digest) ? -EBADMSG : rc;
    }
    rc = utimensat(AT_FDCWD, tmp, NULL, 0) == 0 ? 0 : -errno;
    if (rc == 0)
        rc = blobs__file_adopt(bs, tmp, digest);
    else
        unlink(tmp);
    free(tmp);
    return rc;
}

int blob_has(struct blob_store *bs, const char *digest, uint64_t *size)
{
    if (!blob_digest_valid(digest))
        return -EINVAL;
    if (bs->pg_url)
        return blobs__pg_has(bs, digest, size);
    char *file = blobs__file(bs, digest);
    struct stat st;
    int rc = stat(file, &st) == 0 ? 0 : -errno;
    free(file);
    if (rc == 0 && size)
        *size = (uint64_t)st.st_size;
    return rc;
}

int blob_delete(struct blob_store *bs, const char *digest)
{
    if (!blob_digest_valid(digest))
        return -EINVAL;
    if (bs->pg_url)
        return blobs__pg_delete(bs, digest);
    char *file = blobs__file(bs, digest);
    int rc = unlink(file) == 0 ? 0 : -errno;
    free(file);
    return rc;
}

static bool blobs__kept(const char *digest, const char *const *keep, size_t n_keep)
{
    for (size_t i = 0; i < n_keep; i++)
        if (keep[i] && !strcmp(keep[i], digest))
            return true;
    return false;
}

int blob_gc(struct blob_store *bs, const char *const *keep, size_t n_keep, int64_t min_age_ms,
            size_t *deleted)
{
    if (deleted)
        *deleted = 0;
    if (bs->pg_url)
        return blobs__pg_gc(bs, keep, n_keep, min_age_ms, deleted);
    DIR *d = opendir(bs->files);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    int64_t now = time_now_ms();
    struct dirent *e;
    while ((e = readdir(d))) {
        char digest[BLOB_DIGEST_LEN + 1];
        snprintf(digest, sizeof digest, BLOB_DIGEST_PREFIX "%.64s", e->d_name);
        struct stat st;
        if (strlen(e->d_name) != 64 || !blob_digest_valid(digest) ||
            blobs__kept(digest, keep, n_keep) || fstatat(dirfd(d), e->d_name, &st, 0) < 0)
            continue;
        int64_t age = now - ((int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000);
        if (age > min_age_ms && unlinkat(dirfd(d), e->d_name, 0) == 0 && deleted)
            (*deleted)++;
    }
    closedir(d);
    return 0;
}

/* ---- reading ------------------------------------------------------------------------------ */

int blob_reader_open(struct blob_store *bs, const char *digest, struct blob_reader **out,
                     uint64_t *size)
{
    if (!blob_digest_valid(digest))
        return -EINVAL;
    if (bs->pg_url)
        return blobs__pg_reader_open(bs, digest, out, size);
    char *file = blobs__file(bs, digest);
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    free(file);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    struct blob_reader *r = xcalloc(1, sizeof *r);
    r->fd = fd;
    r->size = (uint64_t)st.st_size;
    *out = r;
    if (size)
        *size = r->size;
    return 0;
}

long blob_reader_read(struct blob_reader *r, void *buf, size_t cap)
{
    if (r->pg)
        return blobs__pg_reader_read(r, buf, cap);
    for (;;) {
        ssize_t n = read(r->fd, buf, cap);
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : (long)n;
    }
}

void blob_reader_close(struct blob_reader *r)
{
    if (!r)
        return;
    if (r->pg)
        blobs__pg_reader_close(r);
    if (r->fd >= 0)
        close(r->fd);
    free(r->chunk);
    free(r);
}

int blob_get_file(struct blob_store *bs, const char *digest, const char *dest, uint64_t max_bytes)
{
    struct blob_reader *r = NULL;
    uint64_t size = 0;
    int rc = blob_reader_open(bs, digest, &r, &size);
    if (rc < 0)
        return rc;
    if (max_bytes && size > max_bytes) {
        blob_reader_close(r);
        return -EFBIG;
    }
    char *dir = xstrdup(dest);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    char *tmp = NULL;
    int fd = blobs__temp_file(slash ? dir : ".", &tmp);
    free(dir);
    if (fd < 0) {
        blob_reader_close(r);
        return fd;
    }
    struct blobs_hash h;
    rc = blobs__hash_init(&h);
    char *buf = xmalloc(BLOB_CHUNK_BYTES);
    uint64_t total = 0;
    while (rc == 0) {
        long n = blob_reader_read(r, buf, BLOB_CHUNK_BYTES);
        if (n < 0)
            rc = (int)n;
        if (n <= 0)
            break;
        total += (uint64_t)n;
        if (max_bytes && total > max_bytes)
            rc = -EFBIG;
        else {
            blobs__hash_update(&h, buf, (size_t)n);
            rc = blobs__write_all(fd, buf, (size_t)n);
        }
    }
    free(buf);
    blob_reader_close(r);
    char got[BLOB_DIGEST_LEN + 1];
    if (rc == 0) {
        blobs__hash_final(&h, got);
        if (strcmp(got, digest)) {
            log_error("blob %s read from the %s has the content of %s: refused", digest,
                      bs->pg_url ? "database" : "files", got);
            rc = -EBADMSG;
        }
    } else if (h.ctx)
        blobs__hash_drop(&h);
    if (rc == 0 && fsync(fd) < 0)
        rc = -errno;
    close(fd);
    if (rc == 0 && rename(tmp, dest) < 0)
        rc = -errno;
    if (rc < 0)
        unlink(tmp);
    free(tmp);
    return rc;
}
