/* Blobs on the API: GET /v1/blobs/sha256:HEX streams a package or droplet as stored (for
 * cells on other hosts: the platform admin, or a cell's token), and the collection of blobs no
 * package or droplet names any more.
 *
 * The stream reads the blob piece by piece on libuv's thread pool (a file, or the database's
 * chunks over a connection of its own) and writes each piece on the loop; it reads the next
 * only while less than BLOBS_PENDING_MAX waits to be sent, so a slow client holds at most
 * that much of skiffd's memory. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/core_internal.h"
#include "blobs/blobs.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "executor/executor.h"
#include "scheduler/scheduler.h"
#include "store/store.h"

#define BLOBS_PENDING_MAX (4u << 20)
#define BLOBS_PENDING_WAIT_MS 5
/* A blob younger than this is never collected: its row may be on its way into the store. */
#define BLOBS_GC_MIN_AGE_MS (10 * 60 * 1000LL)
/* Changes that leave blobs unused come in bursts (a push prunes a package, then a droplet). */
#define BLOBS_GC_DELAY_MS 2000
/* How soon the droplets and packages brought here are looked at again while one that nothing
 * names is still run from (an instance stopping): that collection alone, on its own timer,
 * since the blob store's (which connects to PostgreSQL for a store there) has nothing new to
 * do. */
#define BLOBS_CACHE_RETRY_MS 1000

struct blob_serve {
    uv_work_t work;
    uv_timer_t wait; /* the client has not taken what was sent yet */
    struct api_request *req;
    struct blob_store *bs;
    char digest[BLOB_DIGEST_LEN + 1];
    struct blob_reader *reader;
    int rc; /* of the last step */
    char *buf;
    long len; /* what the last read gave */
    bool started, aborted;
};

static void serve__read(struct blob_serve *sv);

static void serve__closed(uv_handle_t *h)
{
    struct blob_serve *sv = h->data;
    free(sv->buf);
    free(sv);
}

/* Ends the request (the stream, or an error when nothing was sent) and frees sv. */
static void serve__end(struct blob_serve *sv)
{
    if (sv->started) {
        api_request_on_abort(sv->req, NULL, NULL);
        api_stream_end(sv->req);
    } else if (sv->rc == -ENOENT) {
        api_respond_error(sv->req, SKIFF_E_NOT_FOUND, "no blob %s", sv->digest);
    } else {
        api_respond_error(sv->req, sv->rc, "cannot read blob %s", sv->digest);
    }
    blob_reader_close(sv->reader); /* a close may talk to the database: short, once */
    sv->reader = NULL;
    uv_close((uv_handle_t *)&sv->wait, serve__closed);
}

static void serve__read_work(uv_work_t *w)
{
    struct blob_serve *sv = w->data;
    if (!sv->reader) {
        sv->rc = blob_reader_open(sv->bs, sv->digest, &sv->reader, NULL);
        sv->len = 0;
        return;
    }
    sv->len = blob_reader_read(sv->reader, sv->buf, BLOB_CHUNK_BYTES);
    sv->rc = sv->len < 0 ? (int)sv->len : 0;
}

static void serve__wait_done(uv_timer_t *t)
{
    serve__read(t->data);
}

/* Sends what was read, and reads on (or waits for the client, or ends). */
static void serve__read_done(uv_work_t *w, int status)
{
    struct blob_serve *sv = w->data;
    if (status < 0)
        sv->rc = status;
    if (sv->rc < 0 || sv->aborted) {
        if (sv->rc < 0 && sv->started)
            log_error("blob %s: a read failed while it was sent (%s): the stream was cut",
                      sv->digest, skiff_strerror(sv->rc));
        serve__end(sv);
        return;
    }
    if (!sv->started) {
        sv->started = true;
        api_stream_begin(sv->req, 200, "application/octet-stream");
    } else if (sv->len == 0) {
        serve__end(sv);
        return;
    } else if (api_stream_write(sv->req, sv->buf, (size_t)sv->len) < 0) {
        sv->aborted = true;
        serve__end(sv);
        return;
    }
    serve__read(sv);
}

static void serve__read(struct blob_serve *sv)
{
    if (sv->aborted) {
        serve__end(sv);
        return;
    }
    if (sv->started && api_stream_pending(sv->req) > BLOBS_PENDING_MAX) {
        uv_timer_start(&sv->wait, serve__wait_done, BLOBS_PENDING_WAIT_MS, 0);
        return;
    }
    int rc = uv_queue_work(sv->wait.loop, &sv->work, serve__read_work, serve__read_done);
    if (rc < 0) {
        sv->rc = rc;
        serve__end(sv);
    }
}

static void serve__abort(void *ctx)
{
    struct blob_serve *sv = ctx;
    sv->aborted = true; /* the read in flight, or the timer, ends it */
}

static void blobs__get(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    const char *digest = api_request_param(req, 0);
    if (!blob_digest_valid(digest)) {
        api_respond_error(req, SKIFF_E_BAD_VALUE,
                          "a blob is named sha256:HEX, HEX its 64 lowercase hex digits");
        return;
    }
    /* a cell reads only what was placed on it, and learns nothing of other blobs (whether
     * there or not, the same answer) */
    const char *cell = api_request_cell(req);
    if (cell && !api_cell_may_read(core->api, cell, digest)) {
        api_respond_error(req, SKIFF_E_FORBIDDEN,
                          "cell %s was not asked to start droplet %s: a cell's token reads only "
                          "the droplets the leader places on that cell (and the blobs they "
                          "list) while something of them runs or starts there, at most %d "
                          "minutes after",
                          cell, digest, API_CELL_GRANT_MS / 60000);
        return;
    }
    if (!core->cfg.blobs) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no blob %s", digest);
        return;
    }
    struct blob_serve *sv = xcalloc(1, sizeof *sv);
    sv->req = req;
    sv->bs = core->cfg.blobs;
    snprintf(sv->digest, sizeof sv->digest, "%s", digest);
    sv->buf = xmalloc(BLOB_CHUNK_BYTES);
    sv->work.data = sv;
    sv->wait.data = sv;
    uv_timer_init(api_loop(core->api), &sv->wait);
    api_request_on_abort(req, serve__abort, sv);
    serve__read(sv);
}

/* ---- collection --------------------------------------------------------------------------- */

static void blobs__gc_done(void *ctx, int rc, size_t deleted)
{
    (void)ctx;
    if (rc < 0)
        log_warning("blob garbage collection: %s", skiff_strerror(rc));
    else if (deleted)
        log_info("blob garbage collection removed %zu blobs no package or droplet names", deleted);
}

/* The collections' timers, and what outlives the core while a collection of what is
 * materialised here runs (its end may start the cache's timer again). */
struct api_blobs_gc {
    uv_timer_t timer;       /* first: core->blobs_gc points here; both collections */
    uv_timer_t cache_retry; /* what is materialised here only, while some is in use */
    bool running;           /* a blob_cache_gc_async in flight */
    bool reading;           /* the store's list of blobs being read (off the loop) */
    bool want_full;         /* what that read is for: both collections, or the cache's */
    bool closing;           /* the core is closing: nothing starts again */
    int open_timers;        /* whose close callback has not come yet */
};

static void blobs__cache_gc_retry(uv_timer_t *t);

static void blobs__cache_gc_done(void *ctx, int rc, size_t deleted, size_t busy)
{
    struct api_blobs_gc *g = ctx;
    g->running = false;
    if (g->closing) {
        if (!g->open_timers && !g->reading)
            free(g);
        return;
    }
    if (rc < 0)
        log_warning("collection of the droplets and packages brought here: %s", skiff_strerror(rc));
    else if (deleted)
        log_info("removed %zu droplets and packages brought here that nothing names any more",
                 deleted);
    /* one no longer named is still run from by an instance that is stopping: again soon */
    if (busy)
        uv_timer_start(&g->cache_retry, blobs__cache_gc_retry, BLOBS_CACHE_RETRY_MS, 0);
}

/* Where a droplet or package brought here may be in use now: instances' app_dirs (the
 * executor's, stopping ones included) and stagings' packages. NULL-terminated, n its length. */
static char **blobs__in_use(struct api_core *core, size_t *n)
{
    struct scheduler *sched = core->cfg.scheduler;
    struct executor *ex = sched ? scheduler_executor(sched) : NULL;
    char **dirs = ex ? executor_app_dirs(ex) : xcalloc(1, sizeof(char *));
    char **pkgs = api_core__staging_packages(core);
    size_t nd = 0, np = 0;
    while (dirs[nd])
        nd++;
    while (pkgs[np])
        np++;
    dirs = xrealloc(dirs, (nd + np + 1) * sizeof *dirs);
    memcpy(dirs + nd, pkgs, (np + 1) * sizeof *dirs);
    free(pkgs);
    *n = nd + np;
    return dirs;
}

/* The collection of what is materialised here against keep (the names the store gave), unless
 * one is in flight. */
static void blobs__cache_gc_run(struct api_core *core, struct api_blobs_gc *g,
                                const char *const *keep, size_t n_keep)
{
    if (g->running)
        return;
    size_t n_in_use = 0;
    char **in_use = blobs__in_use(core, &n_in_use);
    g->running =
        blob_cache_gc_async(core->cfg.blobs, g->timer.loop, keep, n_keep,
                            (const char *const *)in_use, n_in_use, blobs__cache_gc_done, g) == 0;
    strv_free(in_use);
}

/* The store's names of blobs came (NULL: it could not give them, and nothing is collected
 * from a list the store could not give). */
static void blobs__refs_read(void *ctx, int rc, char **keep)
{
    struct api_blobs_gc *g = ctx;
    g->reading = false;
    if (g->closing) {
        strv_free(keep);
        if (!g->open_timers && !g->running)
            free(g);
        return;
    }
    struct api_core *core = g->timer.data;
    if (!keep) {
        if (!g->want_full) /* the cache's collection waits for a list: again later */
            uv_timer_start(&g->cache_retry, blobs__cache_gc_retry, BLOBS_CACHE_RETRY_MS, 0);
        return;
    }
    size_t n = 0;
    while (keep[n])
        n++;
    if (g->want_full)
        blob_gc_async(core->cfg.blobs, g->timer.loop, (const char *const *)keep, n,
                      BLOBS_GC_MIN_AGE_MS, blobs__gc_done, NULL);
    blobs__cache_gc_run(core, g, (const char *const *)keep, n);
    strv_free(keep);
}

/* Asks the store for its names of blobs, off the loop; full: for both collections. */
static void blobs__refs(struct api_core *core, struct api_blobs_gc *g, bool full)
{
    if (g->reading) {
        g->want_full |= full;
        return;
    }
    g->want_full = full;
    g->reading = true; /* before: on SQLite the answer comes during the call */
    if (store_blob_refs_async(core->cfg.store, blobs__refs_read, g) < 0)
        g->reading = false;
}

static void blobs__gc_start(uv_timer_t *t)
{
    blobs__refs(t->data, (struct api_blobs_gc *)t, true);
}

static void blobs__cache_gc_retry(uv_timer_t *t)
{
    struct api_core *core = t->data;
    blobs__refs(core, (struct api_blobs_gc *)core->blobs_gc, false);
}

void api_core__blobs_gc_soon(struct api_core *core)
{
    if (core->blobs_gc)
        uv_timer_start(core->blobs_gc, blobs__gc_start, BLOBS_GC_DELAY_MS, 0);
}

static void blobs__gc_closed(uv_handle_t *h)
{
    struct api_blobs_gc *g = h->data;
    if (!--g->open_timers && !g->running && !g->reading)
        free(g);
    /* else the collection's end frees it */
}

void api_core__blobs_close(struct api_core *core)
{
    if (!core->blobs_gc)
        return;
    struct api_blobs_gc *g = (struct api_blobs_gc *)core->blobs_gc;
    g->closing = true;
    g->timer.data = g->cache_retry.data = g; /* for the close callbacks, the core going */
    uv_close((uv_handle_t *)&g->timer, blobs__gc_closed);
    uv_close((uv_handle_t *)&g->cache_retry, blobs__gc_closed);
    core->blobs_gc = NULL;
}

void api_core__blobs_register(struct api_core *core)
{
    api_route_add(core->api, "GET", "/v1/blobs/*", API_PERM(AUTH_PERM_BLOBS), blobs__get, core);
    if (!core->cfg.blobs)
        return;
    struct api_blobs_gc *g = xcalloc(1, sizeof *g);
    core->blobs_gc = &g->timer;
    uv_timer_init(api_loop(core->api), &g->timer);
    uv_timer_init(api_loop(core->api), &g->cache_retry);
    g->timer.data = g->cache_retry.data = core;
    g->open_timers = 2;
    uv_unref((uv_handle_t *)&g->timer);
    uv_unref((uv_handle_t *)&g->cache_retry);
    /* what a skiffd that ended mid-way left goes, once it is old enough */
    api_core__blobs_gc_soon(core);
}
