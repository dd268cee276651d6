/* cell: a droplet's folder on this cell, fetched by its digest from the controllers' blob
 * service when the start request names them (cell.h "droplets").
 *
 * One fetch per digest however many starts wait for it: the blob goes to HOME/blobs/cache/HEX
 * (blob_fetch: verified against the digest before it is renamed there), is unpacked on the
 * thread pool into HOME/blobs/droplets/.HEX-RANDOM and renamed to HOME/blobs/droplets/HEX,
 * which later starts of that droplet use at once.
 *
 * The cell's token goes only to the controllers of its own configuration; a start request
 * cannot add one (src/cell/README.md "Droplets"). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth/auth.h"
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
    char token[CELL__TOKEN_MAX]; /* what was sent, to tell a rotated one when it is refused */
    bool retried;                /* with a token read again after a refusal */
    uv_work_t work;
    int rc;
    char why[512];
    struct cell__waiter *waiters;
    struct cell__fetch *next;
};

/* A droplet's folder found by a collection. */
struct cell__cached {
    char hex[BLOB_DIGEST_LEN + 1];
    uint64_t bytes;
    int64_t used_ns; /* its mtime: touched at each start from it */
};

struct cell_droplets {
    uv_loop_t *loop;
    uint64_t cache_bytes;
    bool collect_unused;
    int64_t unused_grace_ms;
    char **(*in_use)(void *ctx);
    void *in_use_ctx;
    uv_work_t gc_work;
    bool gc_running, gc_again;
    struct cell__cached *found;
    size_t nfound;
    char **trash; /* folders renamed aside, removed on the pool */
    size_t ntrash;
    char *cache_dir, *droplets_dir, *token_file;
    char cell_id[AUTH_CELL_ID_LEN + 1];
    char **urls; /* the controllers, from the cell's configuration */
    size_t nurls;
    size_t first; /* the one that served last: tried first */
    long stall_ms;
    struct cell__fetch *fetches;
    int in_flight;
};

int cell_droplets_new(uv_loop_t *loop, const struct cell_droplets_config *cfg,
                      struct cell_droplets **out)
{
    struct cell_droplets *cd = xcalloc(1, sizeof *cd);
    cd->loop = loop;
    cd->cache_dir = xasprintf("%s/blobs/cache", cfg->home);
    cd->droplets_dir = xasprintf("%s/blobs/droplets", cfg->home);
    cd->token_file = cfg->token_file && *cfg->token_file ? xstrdup(cfg->token_file)
                                                         : xasprintf("%s/cell-token", cfg->home);
    snprintf(cd->cell_id, sizeof cd->cell_id, "%s", cfg->cell_id ? cfg->cell_id : "");
    cd->stall_ms = cfg->fetch_stall_ms > 0 ? cfg->fetch_stall_ms : CELL_FETCH_STALL_MS;
    cd->cache_bytes = cfg->cache_bytes;
    cd->collect_unused = cfg->collect_unused;
    cd->unused_grace_ms = cfg->unused_grace_ms > 0 ? cfg->unused_grace_ms : 0;
    cd->in_use = cfg->in_use;
    cd->in_use_ctx = cfg->in_use_ctx;
    while (cfg->controller_urls && cfg->controller_urls[cd->nurls])
        cd->nurls++;
    cd->urls = xcalloc(cd->nurls + 1, sizeof *cd->urls);
    for (size_t i = 0; i < cd->nurls; i++) {
        cd->urls[i] = xstrdup(cfg->controller_urls[i]);
        size_t len = strlen(cd->urls[i]);
        while (len > 0 && cd->urls[i][len - 1] == '/')
            cd->urls[i][--len] = '\0';
    }
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

/* The index of url among the cell's controllers, or -1. */
static long cell__controller_index(const struct cell_droplets *cd, const char *url)
{
    size_t len = url ? strlen(url) : 0;
    while (len > 0 && url[len - 1] == '/')
        len--;
    for (size_t i = 0; i < cd->nurls; i++)
        if (strlen(cd->urls[i]) == len && !strncmp(cd->urls[i], url, len))
            return (long)i;
    return -1;
}

static bool cell__is_dir(const char *path)
{
    struct stat st;
    return path && *path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The cell's token from the operator's file: one line of auth.h's form, for this cell; a file
 * others may read is refused (the token reads the droplets placed on this cell). */
int cell__token(const struct cell_droplets *cd, char token[CELL__TOKEN_MAX], char *err,
                size_t errsize)
{
    struct stat st;
    if (stat(cd->token_file, &st) < 0) {
        snprintf(err, errsize,
                 "this cell's token is not in %s (%s): make one on a controller with `skiff "
                 "create-cell-token %s` and put it there (mode 0600), or give its path with "
                 "--cell-token-file",
                 cd->token_file, skiff_strerror(-errno), cd->cell_id);
        return -ENOENT;
    }
    if (st.st_mode & 077) {
        snprintf(err, errsize,
                 "the cell's token file %s may be read by others (mode %04o): chmod 600 it",
                 cd->token_file, (unsigned)(st.st_mode & 07777));
        return -EACCES;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = file_read(cd->token_file, &text, &len);
    if (rc < 0) {
        snprintf(err, errsize, "cannot read the cell's token file %s: %s", cd->token_file,
                 skiff_strerror(rc));
        return rc;
    }
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        text[--len] = '\0';
    char id[AUTH_CELL_ID_LEN + 1] = "";
    bool form = auth_cell_token_parse(text, id);
    bool mine = form && !strcmp(id, cd->cell_id);
    if (mine)
        memcpy(token, text, len + 1);
    bool shared = !form && len == 7 + 64 && !strncmp(text, AUTH_CELL_TOKEN_PREFIX, 7);
    explicit_bzero(text, len);
    free(text);
    if (mine)
        return 0;
    if (form)
        snprintf(err, errsize,
                 "the token in %s is cell %s's, and this cell is %s: make this one its own "
                 "with `skiff create-cell-token %s`",
                 cd->token_file, id, cd->cell_id, cd->cell_id);
    else if (shared)
        snprintf(err, errsize,
                 "%s holds the one token all cells once shared, which controllers no longer "
                 "accept: make this cell its own with `skiff create-cell-token %s`",
                 cd->token_file, cd->cell_id);
    else
        snprintf(err, errsize,
                 "%s does not hold a cell's token (skiffc_, the cell's id and 64 hex digits, "
                 "as `skiff create-cell-token %s` prints it)",
                 cd->token_file, cd->cell_id);
    return -EINVAL;
}

int cell_droplets_check_token(struct cell_droplets *cd, char *err, size_t errsize)
{
    char token[CELL__TOKEN_MAX];
    int rc = cell__token(cd, token, err, errsize);
    explicit_bzero(token, sizeof token);
    if (rc == 0)
        log_info("[CELL] %s holds this cell's token (%s); %zu controllers to fetch droplets from",
                 cd->token_file, cd->cell_id, cd->nurls);
    return rc;
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
    if (rc == 0)
        cell_droplets_collect(cd);
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
        snprintf(f->why, sizeof f->why, "cannot put it in place at %s: %s", dest, skiff_strerror(-errno));
    } else {
        utimensat(AT_FDCWD, dest, NULL, 0); /* used now, for the cache's order */
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

static void cell__fetched(void *ctx, int rc, const char *path, const char *why);

/* Sends the fetch of f->digest to the cell's controllers, from the one that served last, with
 * f->token. */
static int cell__fetch_send(struct cell__fetch *f)
{
    struct cell_droplets *cd = f->cd;
    const char **urls = xcalloc(cd->nurls + 1, sizeof *urls);
    for (size_t i = 0; i < cd->nurls; i++)
        urls[i] = cd->urls[(cd->first + i) % cd->nurls];
    struct blob_fetch_options opt = {.digest = f->digest,
                                     .urls = urls,
                                     .token = f->token,
                                     .cache_dir = cd->cache_dir,
                                     .timeout_ms = CELL__FETCH_TIMEOUT_MS,
                                     .stall_ms = cd->stall_ms};
    char list[1024] = "";
    for (size_t i = 0, n = 0; urls[i] && n < sizeof list; i++)
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", urls[i]);
    log_info("[CELL] fetching droplet %s from %s%s", f->digest, list,
             cd->nurls > 1 ? " (in turn)" : "");
    int rc = blob_fetch(cd->loop, &opt, cell__fetched, f);
    free(urls);
    return rc;
}

static void cell__fetched(void *ctx, int rc, const char *path, const char *why)
{
    struct cell__fetch *f = ctx;
    struct cell_droplets *cd = f->cd;
    if (rc == -EACCES && !f->retried && cell__token_rotated(cd, f->token, f->digest, why)) {
        f->retried = true;
        if (cell__fetch_send(f) == 0)
            return;
    }
    explicit_bzero(f->token, sizeof f->token);
    if (rc < 0) {
        cell__fetch_end(f, rc, why ? why : skiff_strerror(rc));
        return;
    }
    long at = why ? cell__controller_index(cd, why) : -1;
    if (at >= 0)
        cd->first = (size_t)at;
    log_info("[CELL] fetched droplet %s from %s (verified)", f->digest, why ? why : "the cache");
    f->tar = xstrdup(path);
    f->work.data = f;
    rc = uv_queue_work(f->cd->loop, &f->work, cell__unpack_work, cell__unpack_done);
    if (rc < 0)
        cell__fetch_end(f, rc, "cannot queue its unpacking");
}

/* Logs each URL the start request names that is not one of this cell's controllers: it is
 * never asked anything (the token would go to whoever wrote the request). */
static void cell__ignore_strangers(const struct cell_droplets *cd, const struct cell_launch *l)
{
    for (size_t i = 0; l->blob_urls && l->blob_urls[i]; i++)
        if (cell__controller_index(cd, l->blob_urls[i]) < 0)
            log_warning("[CELL] the start of %s names %s to fetch droplet %s from, which is not "
                        "one of this cell's controllers (--controller-url): ignored",
                        l->instance_guid ? l->instance_guid : "an instance", l->blob_urls[i],
                        l->droplet_digest);
}

/* Joins or begins the fetch of l's droplet. */
static int cell__fetch(struct cell_droplets *cd, const struct cell_launch *l, cell_droplet_cb done,
                       void *ctx, char *err, size_t errsize)
{
    cell__ignore_strangers(cd, l);
    struct cell__fetch *f = cd->fetches;
    while (f && strcmp(f->digest, l->droplet_digest))
        f = f->next;
    if (!f) {
        f = xcalloc(1, sizeof *f);
        int rc = cell__token(cd, f->token, err, errsize);
        if (rc < 0) {
            free(f);
            return rc;
        }
        f->cd = cd;
        snprintf(f->digest, sizeof f->digest, "%s", l->droplet_digest);
        rc = cell__fetch_send(f);
        if (rc < 0) {
            snprintf(err, errsize, "cannot fetch droplet %s: %s", l->droplet_digest,
                     skiff_strerror(rc));
            explicit_bzero(f->token, sizeof f->token);
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
    bool fetchable = cd && cd->nurls > 0 && l->droplet_digest && *l->droplet_digest;
    if (fetchable) {
        if (!blob_digest_valid(l->droplet_digest)) {
            snprintf(err, errsize, "droplet digest \"%s\" is not sha256: and 64 hex digits",
                     l->droplet_digest);
            return -EINVAL;
        }
        char *cached = cell__droplet_dir(cd, l->droplet_digest);
        if (cell__is_dir(cached)) {
            utimensat(AT_FDCWD, cached, NULL, 0); /* used now, for the cache's order */
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
    if (cd && l->blob_urls && l->blob_urls[0])
        cell__ignore_strangers(cd, l);
    snprintf(err, errsize,
             "droplet %s not on this cell: %s, and the controller's path (%s) is not on this "
             "cell's file system",
             l->droplet_digest && *l->droplet_digest ? l->droplet_digest : "sha256:(unknown)",
             cd && cd->nurls == 0 ? "this cell has no controller to fetch it from (give "
                                    "skiffd --role cell --controller-url URL)"
                                  : "the start request names no blob to fetch",
             l->droplet_path && *l->droplet_path ? l->droplet_path : "none");
    return -ENOENT;
}

const char *const *cell__controllers(const struct cell_droplets *cd)
{
    return (const char *const *)cd->urls;
}

long cell__stall_ms(const struct cell_droplets *cd)
{
    return cd ? cd->stall_ms : CELL_FETCH_STALL_MS;
}

bool cell__token_rotated(const struct cell_droplets *cd, char token[CELL__TOKEN_MAX],
                         const char *what, const char *why)
{
    char now[CELL__TOKEN_MAX], err[512];
    bool other = cell__token(cd, now, err, sizeof err) == 0 && strcmp(now, token);
    if (other) {
        log_info("[CELL] a controller refused this cell's token for %s (%s); %s holds another "
                 "one now: fetching with it",
                 what, why ? why : "", cd->token_file);
        memcpy(token, now, sizeof now);
    }
    explicit_bzero(now, sizeof now);
    return other;
}

/* ---- the cache's bound ------------------------------------------------------------------- */

#define CELL__GONE_PREFIX ".gone-"

/* Bytes of the files under the folder fd (closed), not following links. */
static uint64_t cell__tree_bytes(int fd)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return 0;
    }
    uint64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;
        n += (uint64_t)st.st_blocks * 512;
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0)
                n += cell__tree_bytes(sub);
        }
    }
    closedir(d);
    return n;
}

static bool cell__hex64(const char *name)
{
    size_t n = strspn(name, "0123456789abcdef");
    return n == 64 && !name[n];
}

/* On the pool: what an earlier collection set aside goes; every droplet's size and last use. */
static void cell__scan_work(uv_work_t *w)
{
    struct cell_droplets *cd = w->data;
    for (size_t i = 0; i < cd->ntrash; i++)
        rm_rf(cd->trash[i]);
    DIR *d = opendir(cd->droplets_dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strncmp(e->d_name, CELL__GONE_PREFIX, strlen(CELL__GONE_PREFIX))) {
            char *gone = xasprintf("%s/%s", cd->droplets_dir, e->d_name);
            rm_rf(gone); /* left by a cell stopped while it removed it */
            free(gone);
            continue;
        }
        struct stat st;
        if (!cell__hex64(e->d_name) || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
            !S_ISDIR(st.st_mode))
            continue;
        int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            continue;
        cd->found = xrealloc(cd->found, (cd->nfound + 1) * sizeof *cd->found);
        struct cell__cached *c = &cd->found[cd->nfound++];
        memcpy(c->hex, e->d_name, 65);
        c->bytes = cell__tree_bytes(fd) + (uint64_t)st.st_blocks * 512;
        c->used_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    }
    if (d)
        closedir(d);
}

static int cell__by_use(const void *x, const void *y)
{
    const struct cell__cached *a = x, *b = y;
    return a->used_ns < b->used_ns ? -1 : a->used_ns > b->used_ns;
}

/* Whether dir is one of the paths in use or holds one. */
static bool cell__held(char **in_use, const char *dir)
{
    size_t n = strlen(dir);
    for (char **p = in_use; p && *p; p++)
        if (!strncmp(*p, dir, n) && ((*p)[n] == '\0' || (*p)[n] == '/'))
            return true;
    return false;
}

static bool cell__on_its_way(const struct cell_droplets *cd, const char *hex)
{
    for (const struct cell__fetch *f = cd->fetches; f; f = f->next)
        if (!strcmp(f->digest + strlen(BLOB_DIGEST_PREFIX), hex))
            return true;
    return false;
}

static void cell__trash_clear(struct cell_droplets *cd)
{
    for (size_t i = 0; i < cd->ntrash; i++)
        free(cd->trash[i]);
    free(cd->trash);
    cd->trash = NULL;
    cd->ntrash = 0;
}

static void cell__scan_done(uv_work_t *w, int status);

/* Whether a droplet last used at used_ns (wall clock) is past the grace for unused ones. */
static bool cell__unused_long(const struct cell_droplets *cd, int64_t used_ns, int64_t now_ns)
{
    return cd->collect_unused && now_ns - used_ns >= cd->unused_grace_ms * 1000000;
}

/* On the loop: the least recently used that nothing holds are renamed aside until the rest
 * fit, and those unused past the grace (collect_unused), and removed on the pool by the next
 * scan (queued at once). */
static void cell__scan_decide(struct cell_droplets *cd)
{
    cell__trash_clear(cd);
    uint64_t total = 0;
    for (size_t i = 0; i < cd->nfound; i++)
        total += cd->found[i].bytes;
    if (cd->nfound > 1)
        qsort(cd->found, cd->nfound, sizeof *cd->found, cell__by_use);
    bool bounded = cd->cache_bytes > 0;
    int64_t now_ns = time_now_ms() * 1000000;
    bool any_unused = false;
    for (size_t i = 0; i < cd->nfound; i++)
        any_unused |= cell__unused_long(cd, cd->found[i].used_ns, now_ns);
    char **in_use = ((bounded && total > cd->cache_bytes) || any_unused) && cd->in_use
                        ? cd->in_use(cd->in_use_ctx)
                        : NULL;
    for (size_t i = 0; i < cd->nfound; i++) {
        const struct cell__cached *c = &cd->found[i];
        bool over = bounded && total > cd->cache_bytes;
        bool unused = cell__unused_long(cd, c->used_ns, now_ns);
        if (!over && !unused)
            continue;
        char *dir = xasprintf("%s/%s", cd->droplets_dir, c->hex);
        char *gone = xasprintf("%s/" CELL__GONE_PREFIX "%s", cd->droplets_dir, c->hex);
        if (!cell__held(in_use, dir) && !cell__on_its_way(cd, c->hex) && rename(dir, gone) == 0) {
            total -= c->bytes;
            if (over)
                log_info("[CELL] droplet sha256:%s (%llu KiB) left this cell's cache, the least "
                         "recently used that no instance uses: the cache now holds %llu KiB of "
                         "its %llu",
                         c->hex, (unsigned long long)(c->bytes >> 10),
                         (unsigned long long)(total >> 10),
                         (unsigned long long)(cd->cache_bytes >> 10));
            else
                log_info("[CELL] droplet sha256:%s (%llu KiB) was removed from %s: nothing here "
                         "has run it for %lld ms",
                         c->hex, (unsigned long long)(c->bytes >> 10), cd->droplets_dir,
                         (long long)((now_ns - c->used_ns) / 1000000));
            cd->trash = xrealloc(cd->trash, (cd->ntrash + 1) * sizeof *cd->trash);
            cd->trash[cd->ntrash++] = gone;
            gone = NULL;
        }
        free(gone);
        free(dir);
    }
    for (char **p = in_use; p && *p; p++)
        free(*p);
    free(in_use);
    if (bounded && total > cd->cache_bytes)
        log_info("[CELL] the droplet cache holds %llu KiB, over its %llu: what is over is in "
                 "use",
                 (unsigned long long)(total >> 10), (unsigned long long)(cd->cache_bytes >> 10));
}

static void cell__scan_done(uv_work_t *w, int status)
{
    struct cell_droplets *cd = w->data;
    if (status == 0) /* (the scan removed what the last decision set aside first) */
        cell__scan_decide(cd);
    else
        cell__trash_clear(cd);
    free(cd->found);
    cd->found = NULL;
    cd->nfound = 0;
    if (cd->ntrash > 0 ||
        cd->gc_again) { /* remove what was set aside; or what was asked meanwhile */
        cd->gc_again = false;
        if (uv_queue_work(cd->loop, &cd->gc_work, cell__scan_work, cell__scan_done) == 0)
            return;
        cell__trash_clear(cd);
    }
    cd->gc_running = false;
}

void cell_droplets_collect(struct cell_droplets *cd)
{
    if (!cd || (!cd->cache_bytes && !cd->collect_unused))
        return;
    if (cd->gc_running) {
        cd->gc_again = true;
        return;
    }
    cd->gc_work.data = cd;
    cd->gc_running = uv_queue_work(cd->loop, &cd->gc_work, cell__scan_work, cell__scan_done) == 0;
}

bool cell_droplets_busy(const struct cell_droplets *cd)
{
    return cd && cd->in_flight > 0;
}

void cell_droplets_free(struct cell_droplets *cd)
{
    if (!cd)
        return;
    cell__trash_clear(cd);
    free(cd->found);
    free(cd->cache_dir);
    free(cd->droplets_dir);
    free(cd->token_file);
    for (size_t i = 0; i < cd->nurls; i++)
        free(cd->urls[i]);
    free(cd->urls);
    free(cd);
}
