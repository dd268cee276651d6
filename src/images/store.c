/* store: the content-addressed blob store. A blob is written to tmp/ under a random name
 * while its sha256 is computed, and renamed to blobs/sha256/HEX only once the digest is known
 * (and matches the one expected): a reader never sees a blob that is not whole and right. */
#include "images/images.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/util.h"
#include "images/images_internal.h"

#define IMAGE_DEFAULT_MAX_BLOB (2ull << 30)
#define IMAGE_DEFAULT_MAX_LAYER (8ull << 30)

int image__fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

bool image_digest_valid(const char *digest)
{
    if (!digest || strncmp(digest, "sha256:", 7) != 0 || strlen(digest) != 7 + 64)
        return false;
    for (const char *p = digest + 7; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

uint64_t image__max_image(const struct image_store *s)
{
    return s->max_image ? s->max_image : IMAGE_DEFAULT_MAX_IMAGE;
}

static uint64_t store__min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

uint64_t image__max_blob(const struct image_store *s)
{
    return store__min(s->max_blob ? s->max_blob : IMAGE_DEFAULT_MAX_BLOB, image__max_image(s));
}

uint64_t image__max_layer(const struct image_store *s)
{
    return store__min(s->max_layer ? s->max_layer : IMAGE_DEFAULT_MAX_LAYER, image__max_image(s));
}

int image_store_open(struct image_store *s, const char *home, unsigned uid_base, char *err,
                     size_t errlen)
{
    memset(s, 0, sizeof(*s));
    if (sodium_init() < 0)
        return image__fail(err, errlen, SKIFF_E_INTERNAL, "libsodium cannot start");
    s->root = xasprintf("%s/images", home);
    s->uid_base = uid_base;
    static const char *const dirs[] = {"blobs/sha256", "layers/sha256", "tmp"};
    for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
        char *d = xasprintf("%s/%s", s->root, dirs[i]);
        int rc = mkdir_p(d, 0700);
        free(d);
        if (rc < 0) {
            int code =
                image__fail(err, errlen, skiff_err_disk(rc),
                            "cannot make the image store in %s: %s", s->root, skiff_strerror(rc));
            image_store_close(s);
            return code;
        }
    }
    /* the container's root must reach its layers' folders; blobs and tmp stay private */
    char *layers = xasprintf("%s/layers", s->root);
    chmod(s->root, 0711);
    chmod(layers, 0711);
    free(layers);
    layers = xasprintf("%s/layers/sha256", s->root);
    chmod(layers, 0711);
    free(layers);
    return SKIFF_OK;
}

void image_store_close(struct image_store *s)
{
    free(s->root);
    s->root = NULL;
}

static char *image__path(const struct image_store *s, const char *kind, const char *digest)
{
    if (!image_digest_valid(digest))
        return NULL;
    return xasprintf("%s/%s/sha256/%s", s->root, kind, digest + 7);
}

char *image_store_blob_path(const struct image_store *s, const char *digest)
{
    return image__path(s, "blobs", digest);
}

char *image_store_layer_path(const struct image_store *s, const char *digest)
{
    return image__path(s, "layers", digest);
}

bool image_store_has_blob(const struct image_store *s, const char *digest)
{
    char *p = image_store_blob_path(s, digest);
    bool has = p && access(p, F_OK) == 0;
    free(p);
    return has;
}

char *image__tmp_path(const struct image_store *s, const char *what)
{
    char rnd[17];
    random_hex(rnd, 8);
    return xasprintf("%s/tmp/%s-%s", s->root, what, rnd);
}

/* sha256 by libcrypto, which uses the CPU's SHA instructions where it has them: 12x
 * libsodium's portable one on the machine bench/images ran on (1978 against 167 MB/s), and
 * every byte of every layer goes through it. */
void image__sha256(const void *data, size_t len, char out[IMAGE_DIGEST_LEN])
{
    unsigned char sum[32];
    EVP_Digest(data, len, sum, NULL, EVP_sha256(), NULL);
    memcpy(out, "sha256:", 7);
    sodium_bin2hex(out + 7, IMAGE_DIGEST_LEN - 7, sum, sizeof sum);
}

struct image_blob_writer {
    EVP_MD_CTX *sha;
    int fd;
    char *tmp;
    char *final_dir; /* blobs/sha256 */
    char expected[IMAGE_DIGEST_LEN];
    char *what;
    uint64_t written, max;
};

int image_blob_begin(const struct image_store *s, const char *expected, const char *what,
                     struct image_blob_writer **out, char *err, size_t errlen)
{
    return image__blob_begin(s, expected, what, true, out, err, errlen);
}

int image__blob_begin(const struct image_store *s, const char *expected, const char *what,
                      bool keep, struct image_blob_writer **out, char *err, size_t errlen)
{
    *out = NULL;
    if (expected && !image_digest_valid(expected))
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE,
                           "%s: '%.80s' is not a sha256 digest (sha256:64 hex digits)", what,
                           expected);
    struct image_blob_writer *w = xcalloc(1, sizeof(*w));
    w->fd = -1;
    if (keep) {
        w->tmp = image__tmp_path(s, "blob");
        w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (w->fd < 0) {
            int e = errno;
            free(w->tmp);
            free(w);
            return image__fail(err, errlen, skiff_err_disk(-e), "cannot store %s: %s", what,
                               skiff_strerror(-e));
        }
    }
    w->sha = EVP_MD_CTX_new();
    if (!w->sha || EVP_DigestInit_ex(w->sha, EVP_sha256(), NULL) != 1) {
        image_blob_abort(w);
        return image__fail(err, errlen, SKIFF_E_INTERNAL, "libcrypto cannot compute sha256");
    }
    if (expected)
        snprintf(w->expected, sizeof w->expected, "%s", expected);
    w->what = xstrdup(what);
    w->final_dir = xasprintf("%s/blobs/sha256", s->root);
    w->max = image__max_blob(s);
    *out = w;
    return SKIFF_OK;
}

int image_blob_write(struct image_blob_writer *w, const void *data, size_t len, char *err,
                     size_t errlen)
{
    if (len > w->max - w->written)
        return image__fail(err, errlen, SKIFF_E_TOO_LARGE, "%s is larger than the limit of %llu MB",
                           w->what, (unsigned long long)(w->max >> 20));
    EVP_DigestUpdate(w->sha, data, len);
    if (w->fd < 0) { /* nothing kept: only the digest */
        w->written += len;
        return SKIFF_OK;
    }
    const char *p = data;
    while (len) {
        ssize_t n = write(w->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return image__fail(err, errlen, skiff_err_disk(-errno), "cannot store %s: %s", w->what,
                               skiff_strerror(-errno));
        /* its writeback starts now: the fsync before it is named finds little left */
        sync_file_range(w->fd, (off_t)w->written, n, SYNC_FILE_RANGE_WRITE);
        p += n;
        len -= (size_t)n;
        w->written += (uint64_t)n;
    }
    return SKIFF_OK;
}

void image_blob_abort(struct image_blob_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (w->tmp)
        unlink(w->tmp);
    EVP_MD_CTX_free(w->sha);
    free(w->tmp);
    free(w->what);
    free(w->final_dir);
    free(w);
}

/* The blob's digest into got; SKIFF_E_DIGEST_MISMATCH when it is not the one expected. */
static int blob__check(struct image_blob_writer *w, char got[IMAGE_DIGEST_LEN], char *err,
                       size_t errlen)
{
    unsigned char sum[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(w->sha, sum, &n);
    memcpy(got, "sha256:", 7);
    sodium_bin2hex(got + 7, IMAGE_DIGEST_LEN - 7, sum, sizeof sum);
    if (w->expected[0] && strcmp(w->expected, got) != 0)
        return image__fail(err, errlen, SKIFF_E_DIGEST_MISMATCH,
                           "%s does not match its digest: its content is %s (%llu bytes): the "
                           "image is damaged or was changed",
                           w->what, got, (unsigned long long)w->written);
    return SKIFF_OK;
}

int image_blob_commit(struct image_blob_writer *w, char digest[IMAGE_DIGEST_LEN], char *err,
                      size_t errlen)
{
    char got[IMAGE_DIGEST_LEN];
    int rc = blob__check(w, got, err, errlen);
    if (rc != SKIFF_OK || w->fd < 0)
        goto done;
    if (fsync(w->fd) != 0 || close(w->fd) != 0) {
        w->fd = -1;
        rc = image__fail(err, errlen, skiff_err_disk(-errno), "cannot store %s: %s", w->what,
                         skiff_strerror(-errno));
        goto done;
    }
    w->fd = -1;
    char *final = xasprintf("%s/%s", w->final_dir, got + 7);
    /* a blob stored meanwhile by another pull is the same bytes: either copy may win */
    if (rename(w->tmp, final) != 0)
        rc = image__fail(err, errlen, skiff_err_disk(-errno), "cannot store %s: %s", w->what,
                         skiff_strerror(-errno));
    free(final);
done:
    if (digest && rc == SKIFF_OK)
        memcpy(digest, got, IMAGE_DIGEST_LEN);
    image_blob_abort(w);
    return rc;
}

int image__blob_verify(struct image_blob_writer *w, struct image_pending *p, char *err,
                       size_t errlen)
{
    char got[IMAGE_DIGEST_LEN];
    int rc = blob__check(w, got, err, errlen);
    if (rc == SKIFF_OK && w->fd >= 0 && close(w->fd) != 0)
        rc = image__fail(err, errlen, skiff_err_disk(-errno), "cannot store %s: %s", w->what,
                         skiff_strerror(-errno));
    w->fd = -1;
    if (rc == SKIFF_OK && w->tmp) {
        image__pending_add(p, w->tmp, xasprintf("%s/%s", w->final_dir, got + 7));
        w->tmp = NULL; /* the pending list's now */
    }
    image_blob_abort(w);
    return rc;
}

/* ---- what a pull stored, made durable at once --------------------------------------------- */

void image__pending_add(struct image_pending *p, char *tmp, char *final)
{
    pthread_mutex_lock(&p->lock);
    if (p->n == p->cap) {
        p->cap = p->cap ? 2 * p->cap : 8;
        p->tmp = xrealloc(p->tmp, p->cap * sizeof(char *));
        p->final = xrealloc(p->final, p->cap * sizeof(char *));
    }
    p->tmp[p->n] = tmp;
    p->final[p->n++] = final;
    pthread_mutex_unlock(&p->lock);
}

static void pending__free(struct image_pending *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->tmp[i]);
        free(p->final[i]);
    }
    free(p->tmp);
    free(p->final);
    p->tmp = p->final = NULL;
    p->n = p->cap = 0;
}

void image__pending_abort(struct image_pending *p)
{
    for (size_t i = 0; i < p->n; i++)
        rm_rf(p->tmp[i]);
    pending__free(p);
}

int image__pending_commit(const struct image_store *s, struct image_pending *p, char *err,
                          size_t errlen)
{
    (void)s;
    int rc = SKIFF_OK;
    /* everything on disk before any of it is named: a crash never leaves a blob or a layer in
     * place whose data is not there (a layer's files were synced as it was unpacked, so its
     * folder's fsync finds nothing left; a blob's is its one wait). Only what this pull wrote
     * is waited for: a syncfs would wait for every other writer of the file system too. */
    for (size_t i = 0; i < p->n && rc == SKIFF_OK; i++) {
        int fd = open(p->tmp[i], O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0)
            rc = image__fail(err, errlen, skiff_err_disk(-errno), "cannot store %s: %s",
                             p->final[i], skiff_strerror(-errno));
        if (fd >= 0)
            close(fd);
    }
    for (size_t i = 0; i < p->n && rc == SKIFF_OK; i++) {
        /* one stored meanwhile by another pull is the same content: it stays */
        if (rename(p->tmp[i], p->final[i]) != 0 && access(p->final[i], F_OK) != 0)
            rc = image__fail(err, errlen, skiff_err_disk(-errno), "cannot store %s: %s",
                             p->final[i], skiff_strerror(-errno));
    }
    image__pending_abort(p); /* what was not moved */
    return rc;
}

int image_blob_read(const struct image_store *s, const char *digest, size_t max, char **out,
                    size_t *len, char *err, size_t errlen)
{
    *out = NULL;
    char *p = image_store_blob_path(s, digest);
    if (!p)
        return image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "'%.80s' is not a sha256 digest",
                           digest);
    struct stat st;
    int rc = SKIFF_OK;
    if (stat(p, &st) != 0)
        rc = image__fail(err, errlen, SKIFF_E_BAD_IMAGE, "the image has no blob %s", digest);
    else if ((uint64_t)st.st_size > max)
        rc = image__fail(err, errlen, SKIFF_E_TOO_LARGE,
                         "blob %s has %lld bytes, over the limit of %zu for it", digest,
                         (long long)st.st_size, max);
    else if (file_read(p, out, len) < 0)
        rc = image__fail(err, errlen, SKIFF_E_INTERNAL, "cannot read blob %s", digest);
    free(p);
    return rc;
}
