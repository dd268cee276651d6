/* images_gc: the image store's garbage collection, run off the loop after what can leave a
 * layer unused: an app deleted, a staging ended (a droplet replaced, or a pull that failed),
 * revisions trimmed, and at skiffd's start. What stays is what a droplet on disk (every app's, and
 * those kept for rollback) or a running instance names; a layer kept only for an instance that is
 * stopping is collected once it has stopped (the collection runs again while there is one). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "api/core_internal.h"
#include "common/log.h"
#include "common/util.h"
#include "container/container.h"
#include "executor/executor.h"
#include "images/images.h"
#include "scheduler/scheduler.h"

/* How soon a collection runs again while something keeps it from finishing. */
#define IMAGES_GC_RETRY_MS 1000

struct api_core_images_gc {
    struct api_core *core; /* NULL once the core is freed while a collection runs */
    uv_timer_t timer;
    uv_work_t work;
    bool running, again, closed;
    char *home;
    unsigned uid_base;
    char **instance_layers; /* the running instances' lowerdirs, read on the loop */
    /* the collection's outcome */
    int rc;
    char err[256];
    struct image_gc_result res;
    bool waiting; /* a layer only a running instance names, or the store was held */
};

/* Every droplet record in the folders of folder (its entries being droplets). */
static void gc__keep_records_in(const char *folder, struct image_keep *keep)
{
    DIR *d = opendir(folder);
    for (struct dirent *drop; d && (drop = readdir(d));) {
        if (drop->d_name[0] == '.')
            continue;
        char *dir = xasprintf("%s/%s", folder, drop->d_name);
        image_keep_record(keep, dir);
        free(dir);
    }
    if (d)
        closedir(d);
}

/* home/apps/APP/droplets/DROPLET: every droplet's record; and those of the droplets staged
 * elsewhere and brought here from the blob store (home/blobs/droplets/HEX), whose layers this
 * skiffd read from the blob store to run them. */
static void gc__keep_droplets(const char *home, struct image_keep *keep)
{
    char *apps = xasprintf("%s/apps", home);
    DIR *a = opendir(apps);
    for (struct dirent *app; a && (app = readdir(a));) {
        if (app->d_name[0] == '.')
            continue;
        char *droplets = xasprintf("%s/%s/droplets", apps, app->d_name);
        gc__keep_records_in(droplets, keep);
        free(droplets);
    }
    if (a)
        closedir(a);
    free(apps);
    char *fetched = xasprintf("%s/blobs/droplets", home);
    gc__keep_records_in(fetched, keep);
    free(fetched);
}

static void gc__work(uv_work_t *w)
{
    struct api_core_images_gc *gc = w->data;
    struct image_keep keep = {0};
    gc__keep_droplets(gc->home, &keep);
    size_t by_droplets = keep.n;
    for (char **l = gc->instance_layers; l && *l; l++)
        image_keep_layers(&keep, *l);
    /* a layer named by an instance and by no droplet: its app is gone or moved on, and the
     * instance is stopping */
    gc->waiting = false;
    for (size_t i = by_droplets; i < keep.n && !gc->waiting; i++) {
        bool named = false;
        for (size_t k = 0; k < by_droplets && !named; k++)
            named = !strcmp(keep.digests[i], keep.digests[k]);
        gc->waiting = !named;
    }
    struct image_store store;
    gc->rc = image_store_open(&store, gc->home, gc->uid_base, gc->err, sizeof gc->err);
    if (gc->rc == SKIFF_OK) {
        gc->rc = image_store_gc(&store, &keep, &gc->res, gc->err, sizeof gc->err);
        image_store_close(&store);
    }
    if (gc->rc == SKIFF_E_BUSY)
        gc->waiting = true;
    image_keep_clear(&keep);
}

static void gc__free(struct api_core_images_gc *gc)
{
    free(gc->home);
    free(gc);
}

static void gc__closed(uv_handle_t *h)
{
    struct api_core_images_gc *gc = h->data;
    gc->closed = true;
    if (!gc->running)
        gc__free(gc);
    /* else the collection's end frees it */
}

static void gc__start(uv_timer_t *t);

static void gc__done(uv_work_t *w, int status)
{
    struct api_core_images_gc *gc = w->data;
    gc->running = false;
    strv_free(gc->instance_layers);
    gc->instance_layers = NULL;
    if (!gc->core) { /* the core went while it ran: freed once its timer is closed too */
        if (gc->closed)
            gc__free(gc);
        return;
    }
    if (status == 0 && gc->rc != SKIFF_OK && gc->rc != SKIFF_E_BUSY)
        log_warning("image garbage collection: %s", gc->err);
    else if (status == 0 && (gc->res.blobs || gc->res.layers))
        log_info("image garbage collection removed %zu layers and %zu blobs no app uses",
                 gc->res.layers, gc->res.blobs);
    if (gc->again || gc->waiting)
        uv_timer_start(&gc->timer, gc__start, gc->again ? 0 : IMAGES_GC_RETRY_MS, 0);
    gc->again = false;
}

static void gc__start(uv_timer_t *t)
{
    struct api_core_images_gc *gc = t->data;
    if (gc->running) {
        gc->again = true;
        return;
    }
    struct scheduler *sched = gc->core->cfg.scheduler;
    gc->instance_layers = sched ? executor_image_layers(scheduler_executor(sched)) : NULL;
    gc->running = true;
    gc->again = false;
    if (uv_queue_work(t->loop, &gc->work, gc__work, gc__done) < 0) {
        gc->running = false;
        strv_free(gc->instance_layers);
        gc->instance_layers = NULL;
    }
}

void api_core__images_gc_init(struct api_core *core)
{
    const struct container_site *site = core->cfg.containers;
    if (!site)
        return; /* images run only in containers: there is no store to collect */
    struct api_core_images_gc *gc = xcalloc(1, sizeof *gc);
    gc->core = core;
    gc->home = xstrdup(core->cfg.home);
    gc->uid_base = site->uid_base ? site->uid_base : CONTAINER_DEFAULT_UID_BASE;
    gc->work.data = gc;
    uv_timer_init(api_loop(core->api), &gc->timer);
    gc->timer.data = gc;
    core->images_gc = gc;
    /* what a skiffd that ended mid-way left (an app deleted, a pull killed) goes at the start */
    api_core__images_gc_soon(core);
}

void api_core__images_gc_soon(struct api_core *core)
{
    struct api_core_images_gc *gc = core->images_gc;
    if (!gc)
        return;
    if (gc->running)
        gc->again = true;
    else
        uv_timer_start(&gc->timer, gc__start, 0, 0);
}

void api_core__images_gc_close(struct api_core *core)
{
    struct api_core_images_gc *gc = core->images_gc;
    if (!gc)
        return;
    core->images_gc = NULL;
    gc->core = NULL;
    uv_close((uv_handle_t *)&gc->timer, gc__closed);
}
