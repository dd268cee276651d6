/* cell: a droplet's folder on this cell, fetched by its digest from the controllers' blob
 * service when the start request names them (cell.h "droplets").
 *
 * One fetch per digest however many starts wait for it: the blob goes to HOME/blobs/cache/HEX
 * (blob_fetch: verified against the digest before it is renamed there), is unpacked on the
 * thread pool into HOME/blobs/droplets/.HEX-RANDOM and renamed to HOME/blobs/droplets/HEX,
 * which later starts of that droplet use at once. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blobs/blobs.h"
#include "cell/cell.h"
#include "cell/cell_internal.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"

#define CELL__FETCH_TIMEOUT_MS (5 * 60 * 1000)

struct cell__waiter {
    cell_droplet_cb done;
    void *ctx;
    struct cell__waiter *next;
};

/* A droplet on its way here. */
struct cell__fetch {
    struct cell_droplets *cd;
    char digest[BLOB_DIGEST_LEN + 1];
    char *tar; /* the verified blob, once fetched */
    uv_work_t work;
    int rc;
    char why[512];
    struct cell__waiter *waiters;
    struct cell__fetch *next;
};

struct cell_droplets {
    uv_loop_t *loop;
    char *cache_dir, *droplets_dir, *token_file;
    struct cell__fetch *fetches;
    int in_flight;
};

int cell_droplets_new(uv_loop_t *loop, const char *home, const char *token_file,
                      struct cell_droplets **out)
{
    struct cell_droplets *cd = xcalloc(1, sizeof *cd);
    cd->loop = loop;
    cd->cache_dir = xasprintf("%s/blobs/cache", home);
    cd->droplets_dir = xasprintf("%s/blobs/droplets", home);
    cd->token_file =
        token_file && *token_file ? xstrdup(token_file) : xasprintf("%s/cell-token", home);
    int rc = mkdir_p(cd->cache_dir, 0700);
    if (rc == 0)
        rc = mkdir_p(cd->droplets_dir, 0700);
    if (rc < 0) {
        cell_droplets_free(cd);
        return rc;
    }
    *out = cd;
    return 0;
}

static bool cell__is_dir(const char *path)
{
    struct stat st;
    return path && *path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The cells' token from the operator's file: one line, "skiffc_" and hex; a file others may
 * read is refused (the token reads every droplet). */
static int cell__token(const struct cell_droplets *cd, char token[CELL__TOKEN_MAX], char *err,
                       size_t errsize)
{
    struct stat st;
    if (stat(cd->token_file, &st) < 0) {
        snprintf(err, errsize,
                 "the cells' token is not in %s (%s): copy a controller's HOME/cell-token there "
                 "(mode 0600), or give its path with --cell-token-file",
                 cd->token_file, strerror(errno));
        return -ENOENT;
    }
    if (st.st_mode & 077) {
        snprintf(err, errsize,
                 "the cells' token file %s may be read by others (mode %04o): chmod 600 it",
                 cd->token_file, (unsigned)(st.st_mode & 07777));
        return -EACCES;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = file_read(cd->token_file, &text, &len);
    if (rc < 0) {
        snprintf(err, errsize, "cannot read the cells' token file %s: %s", cd->token_file,
                 skiff_strerror(rc));
        return rc;
    }
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        text[--len] = '\0';
    bool ok = len > 7 && len < CELL__TOKEN_MAX && !strncmp(text, "skiffc_", 7) &&
              strspn(text + 7, "0123456789abcdef") == len - 7;
    if (ok)
        memcpy(token, text, len + 1);
    free(text);
    if (!ok) {
        snprintf(err, errsize,
                 "the cells' token file %s does not hold a cells' token (skiffc_ and hex digits, "
                 "as a controller writes it to its HOME/cell-token)",
                 cd->token_file);
        return -EINVAL;
    }
    return 0;
}

static char *cell__droplet_dir(const struct cell_droplets *cd, const char *digest)
{
    return xasprintf("%s/%s", cd->droplets_dir, digest + strlen(BLOB_DIGEST_PREFIX));
}

static void cell__fetch_unlink(struct cell__fetch *f)
{
    for (struct cell__fetch **pp = &f->cd->fetches; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            return;
        }
}

/* Every waiter hears how it ended; then f is freed. */
static void cell__fetch_end(struct cell__fetch *f, int rc, const char *why)
{
    struct cell_droplets *cd = f->cd;
    cell__fetch_unlink(f);
    char *dir = rc == 0 ? cell__droplet_dir(cd, f->digest) : NULL;
    if (rc == 0)
        log_info("[CELL] droplet %s is here: %s", f->digest, dir);
    else
        log_warning("[CELL] droplet %s could not be fetched: %s", f->digest, why);
    for (struct cell__waiter *w = f->waiters, *next; w; w = next) {
        next = w->next;
        w->done(w->ctx, rc, dir, why);
        free(w);
    }
    free(dir);
    free(f->tar);
    free(f);
    cd->in_flight--;
}

static void cell__unpack_work(uv_work_t *w)
{
    struct cell__fetch *f = w->data;
    char *dest = cell__droplet_dir(f->cd, f->digest);
    char *tmp = xasprintf("%s/.%s-%08x", f->cd->droplets_dir,
                          f->digest + strlen(BLOB_DIGEST_PREFIX), (unsigned)random());
    f->rc = blob_droplet_unpack(f->tar, tmp);
    if (f->rc < 0)
        snprintf(f->why, sizeof f->why, "its blob is not a droplet that unpacks here: %s",
                 skiff_strerror(f->rc));
    else if (rename(tmp, dest) < 0 && errno != EEXIST && errno != ENOTEMPTY) {
        f->rc = -errno;
        snprintf(f->why, sizeof f->why, "cannot put it in place at %s: %s", dest, strerror(errno));
    }
    rm_rf(tmp);
    unlink(f->tar); /* the folder is the cache from now on */
    free(tmp);
    free(dest);
}

static void cell__unpack_done(uv_work_t *w, int status)
{
    struct cell__fetch *f = w->data;
    int rc = status < 0 ? status : f->rc;
    cell__fetch_end(f, rc, rc < 0 && !f->why[0] ? skiff_strerror(rc) : f->why);
}

static void cell__fetched(void *ctx, int rc, const char *path, const char *why)
{
    struct cell__fetch *f = ctx;
    if (rc < 0) {
        cell__fetch_end(f, rc, why ? why : skiff_strerror(rc));
        return;
    }
    log_info("[CELL] fetched droplet %s from a controller (verified)", f->digest);
    f->tar = xstrdup(path);
    f->work.data = f;
    rc = uv_queue_work(f->cd->loop, &f->work, cell__unpack_work, cell__unpack_done);
    if (rc < 0)
        cell__fetch_end(f, rc, "cannot queue its unpacking");
}

/* Joins or begins the fetch of l's droplet. */
static int cell__fetch(struct cell_droplets *cd, const struct cell_launch *l, cell_droplet_cb done,
                       void *ctx, char *err, size_t errsize)
{
    struct cell__fetch *f = cd->fetches;
    while (f && strcmp(f->digest, l->droplet_digest))
        f = f->next;
    if (!f) {
        char token[CELL__TOKEN_MAX];
        int rc = cell__token(cd, token, err, errsize);
        if (rc < 0)
            return rc;
        f = xcalloc(1, sizeof *f);
        f->cd = cd;
        snprintf(f->digest, sizeof f->digest, "%s", l->droplet_digest);
        struct blob_fetch_options opt = {.digest = l->droplet_digest,
                                         .urls = l->blob_urls,
                                         .token = token,
                                         .cache_dir = cd->cache_dir,
                                         .timeout_ms = CELL__FETCH_TIMEOUT_MS};
        log_info("[CELL] fetching droplet %s from %s", l->droplet_digest, l->blob_urls[0]);
        rc = blob_fetch(cd->loop, &opt, cell__fetched, f);
        explicit_bzero(token, sizeof token);
        if (rc < 0) {
            snprintf(err, errsize, "cannot fetch droplet %s: %s", l->droplet_digest,
                     skiff_strerror(rc));
            free(f);
            return rc;
        }
        cd->in_flight++;
        f->next = cd->fetches;
        cd->fetches = f;
    }
    struct cell__waiter *w = xcalloc(1, sizeof *w);
    w->done = done;
    w->ctx = ctx;
    w->next = f->waiters;
    f->waiters = w;
    return 0;
}

int cell_droplet_get(struct cell_droplets *cd, const struct cell_launch *l, cell_droplet_cb done,
                     void *ctx, char **dir, char *err, size_t errsize)
{
    *dir = NULL;
    bool fetchable = cd && l->droplet_digest && l->blob_urls && l->blob_urls[0];
    if (fetchable) {
        if (!blob_digest_valid(l->droplet_digest)) {
            snprintf(err, errsize, "droplet digest \"%s\" is not sha256: and 64 hex digits",
                     l->droplet_digest);
            return -EINVAL;
        }
        char *cached = cell__droplet_dir(cd, l->droplet_digest);
        if (cell__is_dir(cached)) {
            *dir = cached;
            return 0;
        }
        free(cached);
        int rc = cell__fetch(cd, l, done, ctx, err, errsize);
        return rc < 0 ? rc : -EINPROGRESS;
    }
    if (cell__is_dir(l->droplet_path)) {
        *dir = xstrdup(l->droplet_path);
        return 0;
    }
    snprintf(err, errsize,
             "droplet %s not on this cell: the start request names no controller to fetch it "
             "from, and the controller's path (%s) is not on this cell's file system",
             l->droplet_digest && *l->droplet_digest ? l->droplet_digest : "sha256:(unknown)",
             l->droplet_path && *l->droplet_path ? l->droplet_path : "none");
    return -ENOENT;
}

int cell__droplets_token(const struct cell_droplets *cd, char token[CELL__TOKEN_MAX], char *err,
                         size_t errsize)
{
    return cell__token(cd, token, err, errsize);
}

bool cell_droplets_busy(const struct cell_droplets *cd)
{
    return cd && cd->in_flight > 0;
}

void cell_droplets_free(struct cell_droplets *cd)
{
    if (!cd)
        return;
    free(cd->cache_dir);
    free(cd->droplets_dir);
    free(cd->token_file);
    free(cd);
}
