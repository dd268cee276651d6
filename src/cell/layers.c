/* cell: an image droplet's layers on this cell, fetched by their digests from the controllers'
 * blob service when this cell's image store lacks them (cell.h "image layers").
 *
 * One fetch per digest however many starts wait for it: the layer's blob goes to
 * HOME/images/blobs/sha256/HEX (blob_fetch: verified against its digest before it is renamed
 * there), is unpacked on the thread pool by image_layer_unpack (the hostile-layer checks of
 * src/images) into HOME/images/layers/sha256/HEX, and the blob removed (the folder is what
 * instances mount). A collection (image_store_gc, keeping what the executor's instances
 * mount) never runs while a fetch is in flight, and a start that comes while one runs waits
 * for its end: a layer found here is never removed before the instance that needs it names
 * it. */
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
#include "images/images.h"

#define CELL__LAYER_FETCH_TIMEOUT_MS (5 * 60 * 1000)
/* the largest image record read from a droplet */
#define CELL__RECORD_MAX (1u << 20)

/* A layer on its way here. */
struct cell__layer_fetch {
    struct cell_layers *cl;
    char digest[BLOB_DIGEST_LEN + 1];
    char token[CELL__TOKEN_MAX]; /* what was sent, to tell a rotated one when it is refused */
    bool retried;                /* with a token read again after a refusal */
    uv_work_t work;
    int rc;
    char why[512];
    struct cell__layer_fetch *next;
};

/* A start waiting for its layers (or for a collection to end before they are looked at). */
struct cell__layers_wait {
    struct cell_layers *cl;
    char **layers;  /* the image's, NULL-terminated */
    char **missing; /* those still on their way (after a look: not before) */
    size_t n_missing;
    bool looked; /* false while a collection runs: nothing looked at yet */
    cell_layers_cb done;
    void *ctx;
    struct cell__layers_wait *next;
};

struct cell_layers {
    uv_loop_t *loop;
    struct image_store store;
    struct cell_droplets *cd; /* this cell's token and controllers */
    struct blob_store *bs;    /* or the blob store itself (cell_layers_read_from) */
    struct executor *ex;
    struct cell__layer_fetch *fetches;
    struct cell__layers_wait *waits;
    uv_work_t gc_work;
    struct image_keep gc_keep;
    struct image_gc_result gc_result;
    int gc_rc;
    char gc_err[256];
    size_t gc_live; /* as the last cell_layers_collect was told */
    bool gc_running, gc_again, gc_waiting;
    int64_t grace_ms;
    int64_t gc_due_mono; /* a collection put off for the grace: when it is due (0: none) */
};

int cell_layers_new(uv_loop_t *loop, const char *home, unsigned uid_base, struct cell_droplets *cd,
                    struct executor *ex, struct cell_layers **out)
{
    struct cell_layers *cl = xcalloc(1, sizeof *cl);
    char err[256];
    if (image_store_open(&cl->store, home, uid_base, err, sizeof err) != SKIFF_OK) {
        log_error("[CELL] cannot open the image store under %s: %s", home, err);
        free(cl);
        return -EIO;
    }
    cl->loop = loop;
    cl->cd = cd;
    cl->ex = ex;
    *out = cl;
    return 0;
}

void cell_layers_free(struct cell_layers *cl)
{
    if (!cl)
        return;
    image_keep_clear(&cl->gc_keep);
    image_store_close(&cl->store);
    free(cl);
}

static bool cell__layer_here(const struct cell_layers *cl, const char *digest)
{
    char *dir = image_store_layer_path(&cl->store, digest);
    struct stat st;
    bool here = dir && stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
    free(dir);
    return here;
}

static void cell__collect_start(struct cell_layers *cl);

/* w is told how it ended, taken off the list and freed. */
static void cell__wait_end(struct cell__layers_wait *w, int rc, const char *why)
{
    struct cell_layers *cl = w->cl;
    for (struct cell__layers_wait **pp = &cl->waits; *pp; pp = &(*pp)->next)
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    w->done(w->ctx, rc, why);
    strv_free(w->layers);
    strv_free(w->missing);
    free(w);
}

static void cell__layer_unpack_work(uv_work_t *work)
{
    struct cell__layer_fetch *f = work->data;
    char err[400] = "";
    int rc = image_layer_unpack(&f->cl->store, f->digest, err, sizeof err);
    if (rc != SKIFF_OK) {
        f->rc = rc == SKIFF_E_UNSAFE_ARCHIVE || rc == SKIFF_E_TOO_LARGE ? -EBADMSG : -EIO;
        snprintf(f->why, sizeof f->why, "%s", err);
    }
    char *blob = image_store_blob_path(&f->cl->store, f->digest);
    if (blob)
        unlink(blob); /* the folder is what instances mount */
    free(blob);
}

/* Every start waiting for f's layer hears of it; then f is freed, and a collection that was
 * put off runs once nothing is in flight. */
static void cell__layer_fetch_end(struct cell__layer_fetch *f)
{
    struct cell_layers *cl = f->cl;
    for (struct cell__layer_fetch **pp = &cl->fetches; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    if (f->rc == 0)
        log_info("[CELL] layer %s is here (verified, unpacked)", f->digest);
    else
        log_warning("[CELL] layer %s could not be fetched: %s", f->digest, f->why);
    for (struct cell__layers_wait *w = cl->waits, *next; w; w = next) {
        next = w->next;
        bool mine = false;
        for (size_t i = 0; i < w->n_missing; i++)
            if (!strcmp(w->missing[i], f->digest)) {
                free(w->missing[i]);
                w->missing[i] = w->missing[--w->n_missing];
                w->missing[w->n_missing] = NULL;
                mine = true;
                break;
            }
        if (!mine)
            continue;
        if (f->rc < 0) {
            char why[700];
            snprintf(why, sizeof why, "layer %s: %s", f->digest, f->why);
            cell__wait_end(w, f->rc, why);
        } else if (w->n_missing == 0) {
            cell__wait_end(w, 0, NULL);
        }
    }
    free(f);
    if (!cl->fetches && cl->gc_again)
        cell__collect_start(cl);
}

bool cell_layers_waiting(const struct cell_layers *cl)
{
    return cl && ((cl->gc_waiting && !cl->gc_running) ||
                  (cl->gc_due_mono && time_mono_ms() >= cl->gc_due_mono));
}

void cell_layers_set_grace(struct cell_layers *cl, int64_t grace_ms)
{
    if (cl)
        cl->grace_ms = grace_ms > 0 ? grace_ms : 0;
}

static void cell__layer_unpack_done(uv_work_t *work, int status)
{
    struct cell__layer_fetch *f = work->data;
    if (status < 0 && f->rc == 0) {
        f->rc = status;
        snprintf(f->why, sizeof f->why, "its unpacking was cancelled");
    }
    cell__layer_fetch_end(f);
}

static void cell__layer_fetched(void *ctx, int rc, const char *path, const char *why);

/* Sends the fetch of f's layer to the cell's controllers with f->token. */
static int cell__layer_send(struct cell__layer_fetch *f)
{
    struct cell_layers *cl = f->cl;
    char *dir = xasprintf("%s/blobs/sha256", cl->store.root);
    int rc = mkdir_p(dir, 0700);
    const char *const *urls = cell__controllers(cl->cd);
    struct blob_fetch_options opt = {.digest = f->digest,
                                     .urls = urls,
                                     .token = f->token,
                                     .cache_dir = dir,
                                     .max_bytes = IMAGE_DEFAULT_MAX_IMAGE,
                                     .timeout_ms = CELL__LAYER_FETCH_TIMEOUT_MS,
                                     .stall_ms = cell__stall_ms(cl->cd)};
    if (rc == 0) {
        log_info("[CELL] fetching layer %s from %s", f->digest, urls[0]);
        rc = blob_fetch(cl->loop, &opt, cell__layer_fetched, f);
    }
    free(dir);
    return rc;
}

static void cell__layer_fetched(void *ctx, int rc, const char *path, const char *why)
{
    struct cell__layer_fetch *f = ctx;
    if (rc == -EACCES && !f->retried && cell__token_rotated(f->cl->cd, f->token, f->digest, why)) {
        f->retried = true;
        if (cell__layer_send(f) == 0)
            return;
    }
    explicit_bzero(f->token, sizeof f->token);
    if (rc == 0) {
        log_info("[CELL] fetched layer %s from %s (verified)", f->digest,
                 f->cl->bs ? "the blob store" : "a controller");
        f->work.data = f;
        rc = uv_queue_work(f->cl->loop, &f->work, cell__layer_unpack_work, cell__layer_unpack_done);
        if (rc == 0)
            return;
        why = "cannot queue its unpacking";
    }
    f->rc = rc;
    snprintf(f->why, sizeof f->why, "%s", why ? why : skiff_strerror(rc));
    cell__layer_fetch_end(f);
}

static void cell__layer_read(void *ctx, int rc, const char *digest)
{
    (void)digest;
    const char *why = rc == -ENOENT    ? "it is not in the blob store"
                      : rc == -EBADMSG ? "its content in the blob store does not match its digest"
                      : rc < 0         ? skiff_strerror(rc)
                                       : NULL;
    cell__layer_fetched(ctx, rc, NULL, why);
}

void cell_layers_read_from(struct cell_layers *cl, struct blob_store *bs)
{
    cl->bs = bs;
}

/* Begins reading digest's blob from the blob store (a --role all skiffd's) into the image
 * store's blobs, where its unpacking takes it. */
static int cell__layer_read_start(struct cell_layers *cl, const char *digest,
                                  struct cell__layer_fetch *f)
{
    char *dir = xasprintf("%s/blobs/sha256", cl->store.root);
    char *dest = image_store_blob_path(&cl->store, digest);
    int rc = mkdir_p(dir, 0700);
    if (rc == 0 && !dest)
        rc = -EINVAL;
    if (rc == 0) {
        log_info("[CELL] reading layer %s from the blob store", digest);
        rc = blob_get_file_async(cl->bs, cl->loop, digest, dest, cell__layer_read, f);
    }
    free(dest);
    free(dir);
    return rc;
}

/* Joins or begins the fetch of digest: from the blob store when the cell reads it directly,
 * else from the controllers of this cell's configuration, with its own token (never from a
 * URL a start request names: the token would go to its writer). */
static int cell__layer_fetch(struct cell_layers *cl, const char *digest, char *err, size_t errsize)
{
    for (struct cell__layer_fetch *f = cl->fetches; f; f = f->next)
        if (!strcmp(f->digest, digest))
            return 0;
    if (cl->bs) {
        struct cell__layer_fetch *f = xcalloc(1, sizeof *f);
        f->cl = cl;
        snprintf(f->digest, sizeof f->digest, "%s", digest);
        int rc = cell__layer_read_start(cl, digest, f);
        if (rc < 0) {
            snprintf(err, errsize, "cannot read layer %s from the blob store: %s", digest,
                     skiff_strerror(rc));
            free(f);
            return rc;
        }
        f->next = cl->fetches;
        cl->fetches = f;
        return 0;
    }
    const char *const *urls = cl->cd ? cell__controllers(cl->cd) : NULL;
    if (!urls || !urls[0]) {
        snprintf(err, errsize,
                 "layer %s is not on this cell, and this cell has no controller to fetch it from "
                 "(give skiffd --role cell --controller-url URL)",
                 digest);
        return -ENOENT;
    }
    struct cell__layer_fetch *f = xcalloc(1, sizeof *f);
    f->cl = cl;
    snprintf(f->digest, sizeof f->digest, "%s", digest);
    int rc = cell__token(cl->cd, f->token, err, errsize);
    if (rc == 0) {
        rc = cell__layer_send(f);
        if (rc < 0)
            snprintf(err, errsize, "cannot fetch layer %s: %s", digest, skiff_strerror(rc));
    }
    if (rc < 0) {
        explicit_bzero(f->token, sizeof f->token);
        free(f);
        return rc;
    }
    f->next = cl->fetches;
    cl->fetches = f;
    return 0;
}

/* Looks at w's layers: those not here are fetched (w waits for them). 0 when all are here
 * (w->n_missing 0), or a negative errno with err (w is still the caller's). */
static int cell__wait_look(struct cell__layers_wait *w, char *err, size_t errsize)
{
    struct cell_layers *cl = w->cl;
    w->looked = true;
    for (char **d = w->layers; *d; d++) {
        if (cell__layer_here(cl, *d))
            continue;
        int rc = cell__layer_fetch(cl, *d, err, errsize);
        if (rc < 0)
            return rc;
        w->missing = xrealloc(w->missing, (w->n_missing + 2) * sizeof *w->missing);
        w->missing[w->n_missing++] = xstrdup(*d);
        w->missing[w->n_missing] = NULL;
    }
    return 0;
}

static char **cell__strv_dup(const char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **out = xcalloc(n + 1, sizeof *out);
    for (size_t i = 0; i < n; i++)
        out[i] = xstrdup(v[i]);
    return out;
}

/* The image's layers as the droplet's record names them (each a valid digest, at most
 * IMAGE_MAX_LAYERS: image_from_json's checks, the record being another host's). */
static int cell__record_layers(const char *droplet_dir, char ***layers, char *err, size_t errsize)
{
    char *path = xasprintf("%s/%s", droplet_dir, IMAGE_RECORD);
    struct stat st;
    char *text = NULL;
    int rc = stat(path, &st) < 0                       ? -errno
             : (uint64_t)st.st_size > CELL__RECORD_MAX ? -EFBIG
                                                       : file_read(path, &text, NULL);
    free(path);
    if (rc < 0) {
        snprintf(err, errsize, "cannot read the droplet's image record: %s", skiff_strerror(rc));
        return rc;
    }
    struct image img;
    char why[400];
    rc = image_from_json(text, &img, why, sizeof why);
    free(text);
    if (rc != SKIFF_OK) {
        snprintf(err, errsize, "the droplet's image record is refused: %s", why);
        return -EBADMSG;
    }
    *layers = cell__strv_dup((const char *const *)img.manifest.layers);
    image_clear(&img);
    return 0;
}

int cell_layers_get(struct cell_layers *cl, const char *droplet_dir, cell_layers_cb done, void *ctx,
                    char *err, size_t errsize)
{
    char **layers = NULL;
    int rc = cell__record_layers(droplet_dir, &layers, err, errsize);
    if (rc < 0)
        return rc;
    struct cell__layers_wait *w = xcalloc(1, sizeof *w);
    w->cl = cl;
    w->layers = layers;
    w->done = done;
    w->ctx = ctx;
    if (!cl->gc_running) {
        rc = cell__wait_look(w, err, errsize);
        if (rc < 0 || w->n_missing == 0) {
            strv_free(w->layers);
            strv_free(w->missing);
            free(w);
            return rc;
        }
    }
    w->next = cl->waits;
    cl->waits = w;
    return -EINPROGRESS;
}

/* ---- collection ---------------------------------------------------------------------------- */

static void cell__collect_work(uv_work_t *work)
{
    struct cell_layers *cl = work->data;
    cl->gc_rc =
        image_store_gc(&cl->store, &cl->gc_keep, &cl->gc_result, cl->gc_err, sizeof cl->gc_err);
}

static void cell__collect_done(uv_work_t *work, int status)
{
    struct cell_layers *cl = work->data;
    cl->gc_running = false;
    image_keep_clear(&cl->gc_keep);
    if (status == 0 && cl->gc_rc == SKIFF_E_BUSY)
        cl->gc_waiting = true;
    if (status == 0 && cl->gc_rc == SKIFF_OK && cl->gc_result.layers + cl->gc_result.blobs)
        log_info("[CELL] collected %zu image layers and %zu blobs no instance uses",
                 cl->gc_result.layers, cl->gc_result.blobs);
    else if (status == 0 && cl->gc_rc != SKIFF_OK)
        log_warning("[CELL] the image store was not collected: %s", cl->gc_err);
    /* the starts that came meanwhile look at their layers now */
    for (struct cell__layers_wait *w = cl->waits, *next; w; w = next) {
        next = w->next;
        if (w->looked)
            continue;
        char err[600] = "";
        int rc = cell__wait_look(w, err, sizeof err);
        if (rc < 0)
            cell__wait_end(w, rc, err);
        else if (w->n_missing == 0)
            cell__wait_end(w, 0, NULL);
    }
    if (cl->gc_again && !cl->fetches)
        cell__collect_start(cl);
}

static void cell__collect_start(struct cell_layers *cl)
{
    cl->gc_again = false;
    char **lowers = cl->ex ? executor_image_layers(cl->ex) : NULL;
    size_t listed = 0;
    for (char **p = lowers; p && *p; p++, listed++)
        image_keep_layers(&cl->gc_keep, *p);
    cl->gc_waiting = listed > cl->gc_live;
    strv_free(lowers);
    cl->gc_work.data = cl;
    cl->gc_running = true;
    if (uv_queue_work(cl->loop, &cl->gc_work, cell__collect_work, cell__collect_done) < 0) {
        cl->gc_running = false;
        image_keep_clear(&cl->gc_keep);
    }
}

void cell_layers_collect(struct cell_layers *cl, size_t live)
{
    if (!cl)
        return;
    cl->gc_live = live;
    if (cl->grace_ms > 0 && !cl->gc_waiting) {
        /* unused layers stay for the grace after the last ask (an instance's end); once it
         * has passed, the caller's next ask (cell_layers_waiting) runs it */
        int64_t now = time_mono_ms();
        if (!cl->gc_due_mono || now < cl->gc_due_mono) {
            cl->gc_due_mono = now + cl->grace_ms;
            return;
        }
    }
    cl->gc_due_mono = 0;
    if (cl->gc_running || cl->fetches) {
        cl->gc_again = true; /* once they end */
        return;
    }
    cell__collect_start(cl);
}
