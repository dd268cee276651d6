/* Bits and staging: PUT /v1/apps/NAME/bits, POST /v1/apps/NAME/stage and /restage.
 *
 * A stage streams ndjson to the client as the buildpacks print, and the same lines go into
 * the app's log as [STG/0]. The droplet is recorded only when staging succeeded, so a failed
 * stage leaves the previous droplet running. The staging goes on when the client leaves. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "api/core_internal.h"
#include "blobs/blobs.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "container/container.h"
#include "hub/hub.h"
#include "images/images.h"
#include "logs/logs.h"
#include "scheduler/scheduler.h"
#include "stager/stager.h"
#include "store/store.h"

struct api_core_staging {
    struct api_core *core;
    struct api_request *req; /* NULL once the response ended */
    struct staging *staging;
    char app_guid[37];
    char *app_name;
    char droplet_guid[37];
    char *droplet_dir;
    char **buildpacks;
    char **env;
    bool recreate; /* ?strategy=recreate: stop every instance, then start on the new droplet */
    bool restage;
    /* a staging that succeeded, while its droplet is put into the blob store: its result */
    char *buildpack, *process_types_json;
    char *image_blobs;      /* an image's config and layers put as blobs, space-separated */
    char *package_path;     /* the upload here, or where its blob is fetched to */
    const char *image_kind; /* a static string: the package is an image's (NULL: code) */
    char *cache_dir;
    int disk_mb;
    bool cancelled;             /* while its package is read or fetched */
    bool fresh_tried;           /* the app was read from the database for its package */
    struct store_app *app;      /* while its package is read */
    struct store_app *recorded; /* the app as the droplet's record changed it */
    struct api_core_staging *next;
};

/* Why the store failed a write or read (rc): a full queue says how full, in the store's
 * words; anything else its errno's. */
static void staging__store_why(struct api_core *core, int rc, char *buf, size_t size)
{
    if (rc == -EBUSY)
        store_busy_message(core->cfg.store, buf, size);
    else
        snprintf(buf, size, "%s", skiff_strerror(rc));
}

static void staging__unlink(struct api_core *core, struct api_core_staging *s)
{
    for (struct api_core_staging **pp = &core->stagings; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            return;
        }
}

bool api_core__staging_busy(struct api_core *core, const char *app_guid)
{
    for (struct api_core_staging *s = core->stagings; s; s = s->next)
        if (!strcmp(s->app_guid, app_guid))
            return true;
    return false;
}

char **api_core__staging_packages(struct api_core *core)
{
    size_t n = 0;
    for (struct api_core_staging *s = core->stagings; s; s = s->next)
        n++;
    char **out = xcalloc(n + 1, sizeof *out);
    n = 0;
    for (struct api_core_staging *s = core->stagings; s; s = s->next)
        if (s->package_path)
            out[n++] = xstrdup(s->package_path);
    return out;
}

void api_core__staging_cancel(struct api_core *core, const char *app_guid)
{
    struct api_core_staging *s = core->stagings;
    while (s) {
        /* on_done may come from inside stager_cancel and free s */
        struct api_core_staging *next = s->next;
        if ((!app_guid || !strcmp(s->app_guid, app_guid)) && s->staging)
            stager_cancel(s->staging); /* an image's import ends on its own */
        else if (!app_guid || !strcmp(s->app_guid, app_guid))
            s->cancelled = true; /* a package being fetched: nothing starts after it */
        s = next;
    }
}

static void staging__output(void *ctx, const char *line, size_t len);
static void staging__done(void *ctx, const struct stage_result *res);

/* ---- images: staging an image = storing its blobs and unpacking its layers --------------- */

/* a tarball's kind, or "registry": a JSON {"ref", "username", "password"} to pull from */
static const char *const staging__image_kinds[] = {"oci-archive", "docker-archive", "registry"};

static bool staging__image_kind_valid(const char *kind)
{
    for (size_t i = 0; i < ARRAY_SIZE(staging__image_kinds); i++)
        if (!strcmp(kind, staging__image_kinds[i]))
            return true;
    return false;
}

/* An image tarball is kept as its package under "GUID.KIND" (staging__bits). */
static const char *staging__image_kind_of(const char *package_path)
{
    const char *dot = strrchr(package_path, '.');
    return dot && !strchr(dot, '/') && staging__image_kind_valid(dot + 1) ? dot + 1 : NULL;
}

/* A registry package: {"ref": REF, "username": U?, "password": P?}, REF an image reference.
 * Answers the request (422) and returns false when it is not. */
static bool staging__image_ref_ok(struct api_request *req, const char *path)
{
    char *text = NULL;
    size_t len = 0;
    json_error_t jerr;
    json_t *j = NULL;
    char err[512] = "";
    bool ok = false;
    if (file_read(path, &text, &len) == 0 && len <= 16384)
        j = json_loadb(text, len, 0, &jerr);
    free(text);
    const char *ref = json_string_value(json_object_get(j, "ref"));
    struct image_ref parsed;
    json_t *user = json_object_get(j, "username"), *pass = json_object_get(j, "password");
    if (!json_is_object(j) || !ref || (user && !json_is_string(user)) ||
        (pass && !json_is_string(pass)) || json_object_size(j) > 3)
        api_respond_error(
            req, SKIFF_E_BAD_JSON,
            "an image from a registry is {\"ref\": \"[REGISTRY/]NAME[:TAG][@DIGEST]\", "
            "\"username\": \"...\", \"password\": \"...\"}");
    else if (image_ref_parse(ref, &parsed, err, sizeof err) != SKIFF_OK)
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s", err);
    else {
        image_ref_clear(&parsed);
        ok = true;
    }
    json_decref(j);
    return ok;
}

struct staging_image {
    uv_work_t work;
    uv_async_t progress; /* lines from the pull, to the loop */
    uv_mutex_t lock;
    struct buf lines; /* under lock */
    struct api_core_staging *s;
    char *home, *kind, *path;
    const char *const *insecure;
    unsigned uid_base;
    uint64_t max_image;
    struct blob_store *blobs; /* or NULL */
    int rc;
    char err[512];
    char *command; /* the image's own: the droplet's web process */
    char *blobs_put;     /* its config and layers in the blob store, space-separated, or NULL */
    char blobs_err[256]; /* why they are not */
    char summary[256];
};

static void staging__image_progress(void *ctx, const char *fmt, ...)
{
    struct staging_image *si = ctx;
    va_list ap;
    va_start(ap, fmt);
    uv_mutex_lock(&si->lock);
    buf_vprintf(&si->lines, fmt, ap);
    buf_putc(&si->lines, '\n');
    uv_mutex_unlock(&si->lock);
    va_end(ap);
    uv_async_send(&si->progress);
}

static void staging__image_flush(uv_async_t *a)
{
    struct staging_image *si = a->data;
    uv_mutex_lock(&si->lock);
    char *text = buf_steal(&si->lines);
    uv_mutex_unlock(&si->lock);
    for (char *line = text, *nl; line && (nl = strchr(line, '\n')); line = nl + 1)
        staging__output(si->s, line, (size_t)(nl - line));
    free(text);
}

/* The pull of a registry package: {"ref", "username", "password"}. */
static int staging__image_pull(struct staging_image *si, const struct image_store *store,
                               struct image *img)
{
    char *text = NULL;
    if (file_read(si->path, &text, NULL) < 0)
        return snprintf(si->err, sizeof si->err, "cannot read the image's reference"),
               SKIFF_E_INTERNAL;
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    struct image_pull_options opt = {.username = json_string_value(json_object_get(j, "username")),
                                     .password = json_string_value(json_object_get(j, "password")),
                                     .insecure = si->insecure,
                                     .keep_layer_blobs = si->blobs != NULL,
                                     .progress = staging__image_progress,
                                     .progress_ctx = si};
    const char *ref = json_string_value(json_object_get(j, "ref"));
    int rc =
        ref ? image_pull(store, ref, &opt, img, si->err, sizeof si->err)
            : (snprintf(si->err, sizeof si->err, "the package names no image"), SKIFF_E_BAD_IMAGE);
    json_decref(j);
    return rc;
}

/* The image's config and layers into the blob store, so that a cell on another host fetches
 * what it lacks by digest (src/cell). A blob the store has already is not read again; on the
 * embedded store a layer's blob is linked, not copied (the image store verified it). */
static void staging__image_blobs_put(struct staging_image *si, const struct image_store *store,
                                     const struct image *img)
{
    struct buf names = {0};
    const char *config[] = {img->manifest.config, NULL};
    const char *const *lists[] = {config, (const char *const *)img->manifest.layers};
    for (size_t k = 0; k < 2; k++)
        for (const char *const *d = lists[k]; d && *d; d++) {
            if (!**d)
                continue;
            char *path = image_store_blob_path(store, *d);
            int rc = path ? blob_put_immutable(si->blobs, path, *d) : -EINVAL;
            free(path);
            if (rc < 0) {
                snprintf(si->blobs_err, sizeof si->blobs_err, "%.80s: %s", *d, skiff_strerror(rc));
                buf_free(&names);
                return;
            }
            buf_printf(&names, "%s%s", names.len ? " " : "", *d);
        }
    si->blobs_put = buf_steal(&names);
}

static void staging__image_work(uv_work_t *w)
{
    struct staging_image *si = w->data;
    struct image_store store;
    struct image img;
    si->rc = image_store_open(&store, si->home, si->uid_base, si->err, sizeof si->err);
    store.max_image = si->max_image;
    /* held until the droplet names what is stored: no collection runs in between */
    int hold = si->rc == SKIFF_OK ? image_store_hold(&store) : -1;
    if (si->rc == SKIFF_OK && hold < 0) {
        snprintf(si->err, sizeof si->err, "cannot lock the image store: %s", skiff_strerror(hold));
        si->rc = SKIFF_E_INTERNAL;
    }
    if (si->rc == SKIFF_OK)
        si->rc = strcmp(si->kind, "registry") ? image_import_archive(&store, si->kind, si->path,
                                                                     &img, si->err, sizeof si->err)
                                              : staging__image_pull(si, &store, &img);
    if (si->rc == SKIFF_OK &&
        (si->rc = image_user_resolve(&store, &img, si->err, sizeof si->err)) != SKIFF_OK)
        image_clear(&img);
    if (si->rc == SKIFF_OK) {
        si->rc = image_droplet_write(&img, si->s->droplet_dir, si->err, sizeof si->err);
        if (si->rc == SKIFF_OK && si->blobs)
            staging__image_blobs_put(si, &store, &img);
        si->command = image_default_command(&img.config);
        snprintf(si->summary, sizeof si->summary, "Image %.160s, %zu layers, digest %s", img.ref,
                 img.manifest.n_layers, img.digest);
        image_clear(&img);
    }
    image_store_release(hold);
    image_store_close(&store);
}

static void staging__image_closed(uv_handle_t *h)
{
    struct staging_image *si = h->data;
    buf_free(&si->lines);
    uv_mutex_destroy(&si->lock);
    free(si);
}

static void staging__image_done(uv_work_t *w, int status)
{
    struct staging_image *si = w->data;
    staging__image_flush(&si->progress);
    struct stage_result res = {.ok = si->rc == SKIFF_OK && status == 0};
    json_t *types = json_pack("{s:s}", "web", si->command ? si->command : "");
    char *types_text = json_dumps(types, JSON_COMPACT);
    json_decref(types);
    if (res.ok) {
        staging__output(si->s, si->summary, strlen(si->summary));
        res.process_types_json = types_text;
        if (si->blobs_err[0]) {
            char line[400];
            snprintf(line, sizeof line,
                     "The image's layers were not put into the blob store (%s): only this host "
                     "can run it",
                     si->blobs_err);
            staging__output(si->s, line, strlen(line));
        }
        si->s->image_blobs = si->blobs_put;
        si->blobs_put = NULL;
    } else {
        res.error = si->err[0] ? si->err : "the image could not be imported";
    }
    staging__done(si->s, &res);
    free(types_text);
    free(si->blobs_put);
    free(si->command);
    free(si->home);
    free(si->kind);
    free(si->path);
    uv_close((uv_handle_t *)&si->progress, staging__image_closed);
}

/* Like stager_start: 0 and staging__done later, or a negative errno and nothing started. */
static int staging__image_start(struct api_core_staging *s, const char *kind, const char *path)
{
    const struct container_site *site = s->core->cfg.containers;
    if (!site)
        return -ENOTSUP; /* an image is a root file system: it runs only in a container */
    struct staging_image *si = xcalloc(1, sizeof *si);
    si->s = s;
    si->home = xstrdup(s->core->cfg.home);
    si->kind = xstrdup(kind);
    si->path = xstrdup(path);
    si->uid_base = site->uid_base ? site->uid_base : CONTAINER_DEFAULT_UID_BASE;
    si->insecure = s->core->cfg.insecure_registries;
    si->max_image = s->core->cfg.max_image_bytes;
    si->blobs = s->core->cfg.image_blobs ? s->core->cfg.blobs : NULL;
    si->work.data = si;
    si->progress.data = si;
    uv_mutex_init(&si->lock);
    uv_async_init(api_loop(s->core->api), &si->progress, staging__image_flush);
    char line[160];
    snprintf(line, sizeof line,
             strcmp(kind, "registry") ? "Importing the image from its %s tarball"
                                      : "Pulling the image from its %s",
             kind);
    staging__output(s, line, strlen(line));
    int rc =
        uv_queue_work(api_loop(s->core->api), &si->work, staging__image_work, staging__image_done);
    if (rc < 0) {
        free(si->home);
        free(si->kind);
        free(si->path);
        uv_close((uv_handle_t *)&si->progress, staging__image_closed);
    }
    return rc;
}

/* The droplet, its buildpack and the process types it declares (s's result), on the app's
 * row: a function of the row, made again on the new row when another writer came first
 * (store_app_modify_async). The app as changed is kept in s->recorded. */
static int staging__record_change(void *ctx, struct store_app *app)
{
    struct api_core_staging *s = ctx;
    free(app->droplet_guid);
    app->droplet_guid = xstrdup(s->droplet_guid);
    free(app->detected_buildpack);
    app->detected_buildpack = s->buildpack ? xstrdup(s->buildpack) : NULL;
    /* process types the droplet declares become processes (web exists already) */
    json_t *types = s->process_types_json ? json_loads(s->process_types_json, 0, NULL) : NULL;
    const char *type;
    json_t *cmd;
    json_object_foreach(types, type, cmd)
    {
        if (!name_valid(type) || store_app_process(app, type))
            continue;
        app->processes = xrealloc(app->processes, (app->n_processes + 1) * sizeof *app->processes);
        struct store_process *p = &app->processes[app->n_processes++];
        memset(p, 0, sizeof *p);
        p->type = xstrdup(type);
        /* a function's own process starts at zero: events scale it */
        p->instances = 0;
        store_process_default_policy(app->kind, p);
    }
    json_decref(types);
    app->updated_at = time_now_ms();
    store_app_free(s->recorded);
    s->recorded = store_app_dup(app);
    return 0;
}

/* ---- bits ---------------------------------------------------------------------------------- */

/* An upload kept under its package's path, while its blob is put and its rows written. */
struct staging_bits {
    struct api_core *core;
    struct api_request *req;
    struct store_package pkg; /* app_guid and path are this struct's */
    char *droplet_guid;       /* the app's, as the package's record found it */
};

static void staging__bits_free(struct staging_bits *bits)
{
    free(bits->pkg.app_guid);
    free(bits->pkg.path);
    free(bits->pkg.digest);
    free(bits->droplet_guid);
    free(bits);
}

/* The uploaded package on the app's row (store_app_modify_async, as above). */
static int staging__set_package(void *ctx, struct store_app *app)
{
    struct staging_bits *bits = ctx;
    free(app->package_guid);
    app->package_guid = xstrdup(bits->pkg.guid);
    app->updated_at = time_now_ms();
    free(bits->droplet_guid);
    bits->droplet_guid = app->droplet_guid ? xstrdup(app->droplet_guid) : NULL;
    return 0;
}

/* The older packages gone (and their files): the upload is answered. */
static void staging__bits_pruned(void *ctx, int rc, char **old)
{
    struct staging_bits *bits = ctx;
    struct api_core *core = bits->core;
    struct store_package *pkg = &bits->pkg;
    if (rc < 0)
        log_warning("the older packages of app %s were not pruned (%s): the next upload does",
                    pkg->app_guid, skiff_strerror(rc));
    for (char **p = old; p && *p; p++)
        api_core__artifact_remove(core, pkg->app_guid, *p);
    strv_free(old);
    api_core__blobs_gc_soon(core); /* their blobs, when nothing else names them */
    logs_appendf(core->cfg.logs, pkg->app_guid, "API", LOGS_OUT, "Uploaded bits (%llu bytes)",
                 (unsigned long long)pkg->bytes);
    json_t *body = json_pack("{s:s,s:I}", "package", pkg->guid, "bytes", (json_int_t)pkg->bytes);
    if (pkg->digest)
        json_object_set_new(body, "digest", json_string(pkg->digest));
    api_respond_json(bits->req, 201, body);
    staging__bits_free(bits);
}

/* The package on the app's row: older packages go; droplets stay with their revisions
 * (revisions.c), except those of an app that has none yet (made before revisions were kept):
 * all but its current one. */
static void staging__bits_recorded(void *ctx, int rc)
{
    struct staging_bits *bits = ctx;
    struct api_core *core = bits->core;
    char why[256];
    if (rc < 0) {
        staging__store_why(core, rc, why, sizeof why);
        api_respond_error(bits->req, rc, "cannot record the package on the app: %s", why);
        staging__bits_free(bits);
        return;
    }
    const char *app_guid = bits->pkg.app_guid;
    rc = store_app_prune_artifacts_async(
        core->cfg.store, app_guid, bits->pkg.guid,
        api_core__revisions_any(core, app_guid) ? NULL : bits->droplet_guid, staging__bits_pruned,
        bits);
    if (rc < 0)
        staging__bits_pruned(bits, rc, NULL);
}

static void staging__bits_added(void *ctx, int rc)
{
    struct staging_bits *bits = ctx;
    struct api_core *core = bits->core;
    char why[256];
    if (rc == 0) {
        rc = store_app_modify_async(core->cfg.store, bits->pkg.app_guid, staging__set_package, bits,
                                    staging__bits_recorded, bits, NULL);
        if (rc != 0) /* else it is called when the write lands */
            staging__bits_recorded(bits, rc > 0 ? 0 : rc);
        return;
    }
    unlink(bits->pkg.path);
    staging__store_why(core, rc, why, sizeof why);
    api_respond_error(bits->req, rc == -EBUSY ? rc : SKIFF_E_INTERNAL,
                      "cannot store the package: %s", why);
    staging__bits_free(bits);
}

/* Records the package (its digest: the blob's, NULL when it could not be put) on the app,
 * prunes older ones and answers the upload: each write queued once the one before landed
 * (a row naming a package never written would point at nothing). */
static void staging__bits_put(void *ctx, int put_rc, const char *digest)
{
    struct staging_bits *bits = ctx;
    struct store_package *pkg = &bits->pkg;
    if (put_rc < 0 && put_rc != -ENOTSUP)
        log_warning("the package of app %s was not put into the blob store (%s): only this "
                    "skiffd can stage it",
                    pkg->app_guid, skiff_strerror(put_rc));
    pkg->digest = digest ? xstrdup(digest) : NULL;
    int rc = store_package_add_async(bits->core->cfg.store, pkg, staging__bits_added, bits);
    if (rc < 0)
        staging__bits_added(bits, rc);
}

static void staging__bits(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    const char *path = api_request_body_path(req);
    char err[512] = "";
    char *dir = NULL, *dest = NULL;
    if (api_core__staging_busy(core, app->guid)) {
        /* the staging reads the current package: it must not be replaced under it */
        api_respond_error(req, SKIFF_E_STAGING,
                          "app \"%s\" is being staged: upload again when that staging ends",
                          app->name);
        goto done;
    }
    if (!path) {
        api_respond_error(req, SKIFF_E_NOT_AN_ARCHIVE,
                          "the upload is empty: send the app's folder as a tar.gz, tar or zip");
        goto done;
    }
    /* ?image=oci-archive|docker-archive: an image tarball, read when it is staged */
    const char *image = api_request_query(req, "image");
    if (image && !staging__image_kind_valid(image)) {
        api_respond_error(req, SKIFF_E_BAD_VALUE,
                          "image=%.40s is not a tarball kind: oci-archive (an OCI image layout) "
                          "or docker-archive (`docker save` output)",
                          image);
        goto done;
    }
    if (image && !strcmp(image, "registry") && !staging__image_ref_ok(req, path))
        goto done;
    int rc = image ? 0 : package_check(path, core->cfg.max_unpacked, err, sizeof err);
    if (rc == PACKAGE_NOT_ARCHIVE) {
        api_respond_error(req, SKIFF_E_NOT_AN_ARCHIVE,
                          "the upload is not a tar.gz, tar or zip archive%s%s", *err ? ": " : "",
                          err);
        goto done;
    }
    if (rc == PACKAGE_UNSAFE) {
        api_respond_error(req, SKIFF_E_UNSAFE_ARCHIVE, "the upload was refused: %s", err);
        goto done;
    }
    if (rc == PACKAGE_TOO_LARGE) {
        api_respond_error(req, SKIFF_E_TOO_LARGE, "the upload unpacks to too much: %s", err);
        goto done;
    }
    if (rc < 0) {
        api_respond_error(req, SKIFF_E_NOT_AN_ARCHIVE, "the upload cannot be read: %s",
                          *err ? err : skiff_strerror(rc));
        goto done;
    }
    struct store_package pkg = {
        .app_guid = app->guid, .bytes = api_request_body_size(req), .created_at = time_now_ms()};
    uuid_generate_v4(pkg.guid);
    dir = xasprintf("%s/apps/%s/packages", core->cfg.home, app->guid);
    dest = xasprintf("%s/%s%s%s", dir, pkg.guid, image ? "." : "", image ? image : "");
    int e = mkdir_p(dir, 0700);
    if (e == 0 && rename(path, dest) < 0)
        e = -errno;
    if (e < 0) {
        api_respond_error(req, e, "cannot keep the upload: %s", skiff_strerror(e));
        goto done;
    }
    pkg.path = dest;
    struct staging_bits *bits = xcalloc(1, sizeof *bits);
    bits->core = core;
    bits->req = req;
    bits->pkg = pkg;
    bits->pkg.app_guid = xstrdup(app->guid);
    bits->pkg.path = dest;
    dest = NULL;
    /* its blob first (off the loop), so that the row names it */
    if (!core->cfg.blobs || blob_put_file_async(core->cfg.blobs, api_loop(core->api),
                                                bits->pkg.path, staging__bits_put, bits) < 0)
        staging__bits_put(bits, -ENOTSUP, NULL);
done:
    free(dir);
    free(dest);
    store_app_free(app);
}

/* ---- staging ------------------------------------------------------------------------------- */

static void staging__send(struct api_core_staging *s, json_t *obj)
{
    if (!s->req) {
        json_decref(obj);
        return;
    }
    char *text = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    if (!text)
        return;
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len++] = '\n';
    api_stream_write(s->req, text, len);
    free(text);
}

static void staging__output(void *ctx, const char *line, size_t len)
{
    struct api_core_staging *s = ctx;
    logs_append(s->core->cfg.logs, s->app_guid, "STG/0", LOGS_OUT, line, len);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    staging__send(s, json_pack("{s:s%}", "line", line, len));
}

static void staging__free(struct api_core_staging *s)
{
    store_app_free(s->app);
    store_app_free(s->recorded);
    free(s->package_path);
    free(s->image_blobs);
    free(s->cache_dir);
    free(s->buildpack);
    free(s->process_types_json);
    free(s->app_name);
    free(s->droplet_dir);
    for (char **p = s->buildpacks; p && *p; p++)
        free(*p);
    free(s->buildpacks);
    for (char **p = s->env; p && *p; p++)
        free(*p);
    free(s->env);
    free(s);
}

static void staging__abort(void *ctx)
{
    struct api_core_staging *s = ctx;
    /* the client left; staging goes on and its result is recorded */
    api_stream_end(s->req);
    s->req = NULL;
}

/* The files of the packages and droplets a prune deleted, removed once it landed. */
struct staging_prune {
    struct api_core *core;
    char app_guid[37];
};

static void staging__pruned(void *ctx, int rc, char **old)
{
    struct staging_prune *p = ctx;
    for (char **path = old; path && *path; path++)
        api_core__artifact_remove(p->core, p->app_guid, *path);
    strv_free(old);
    api_core__blobs_gc_soon(p->core); /* the packages pruned */
    free(p);
}

static void staging__end(struct api_core_staging *s, const char *why);

/* The app's row names the droplet: the staging is done. */
static void staging__recorded(void *ctx, int rc)
{
    struct api_core_staging *s = ctx;
    struct api_core *core = s->core;
    char why[400], err[256];
    if (rc < 0 || !s->recorded) {
        staging__store_why(core, rc < 0 ? rc : -EIO, err, sizeof err);
        snprintf(why, sizeof why, "cannot record the droplet on the app: %s", err);
        staging__end(s, why);
        return;
    }
    const struct store_app *app = s->recorded;
    char description[160];
    snprintf(description, sizeof description, "staged%s%s", s->buildpack ? " with " : "",
             s->buildpack ? s->buildpack : "");
    api_core__revision_add(core, app, description, NULL);
    bool started = !strcmp(app->state, "STARTED");
    hub_publish(core->cfg.hub, &PLATFORM_APP_EVENT(PLATFORM_APP_STAGED, app->guid, app->name));
    if (core->cfg.scheduler) {
        if (started)
            scheduler_app_deploy(core->cfg.scheduler, s->app_guid, !s->recreate);
        else
            scheduler_app_changed(core->cfg.scheduler, s->app_guid);
    }
    staging__end(s, NULL);
}

/* The droplet's row is written: the app's row names it next. */
static void staging__droplet_added(void *ctx, int rc)
{
    struct api_core_staging *s = ctx;
    char why[400], err[256];
    if (rc == 0) {
        rc = store_app_modify_async(s->core->cfg.store, s->app_guid, staging__record_change, s,
                                    staging__recorded, s, NULL);
        if (rc != 0) /* else it is called when the write lands */
            staging__recorded(s, rc > 0 ? 0 : rc);
        return;
    }
    staging__store_why(s->core, rc, err, sizeof err);
    snprintf(why, sizeof why, "cannot store the droplet: %s", err);
    staging__end(s, why);
}

/* Records a successful droplet (s's result) on the app: the older packages pruned, the
 * droplet's row, then the app's, each queued in turn; staging__end is called once they
 * landed. 0 when queued (s may be gone already: on SQLite the writes are made during the
 * call), or a message in err. */
static int staging__record(struct api_core_staging *s, const char *digest, char *err,
                           size_t errsize)
{
    struct api_core *core = s->core;
    struct store_app *app = NULL;
    if (store_app_get(core->cfg.store, s->app_guid, &app) < 0) {
        snprintf(err, errsize, "the app was deleted while staging");
        return -ENOENT;
    }
    /* droplets go with the revisions that use them (revisions.c); a droplet made before
     * revisions were kept becomes one first, so that it is trimmed with them */
    if (app->droplet_guid && !api_core__revisions_any(core, app->guid))
        api_core__revision_add(core, app, "earlier droplet", NULL);
    struct staging_prune *p = xcalloc(1, sizeof *p);
    p->core = core;
    memcpy(p->app_guid, app->guid, sizeof p->app_guid);
    if (store_app_prune_artifacts_async(core->cfg.store, app->guid, app->package_guid, NULL,
                                        staging__pruned, p) < 0)
        free(p); /* the next staging prunes them */
    struct store_droplet d = {.app_guid = app->guid,
                              .path = s->droplet_dir,
                              .buildpack = s->buildpack,
                              .process_types_json = s->process_types_json,
                              .created_at = time_now_ms(),
                              .digest = (char *)digest,
                              .blobs = s->image_blobs};
    memcpy(d.guid, s->droplet_guid, sizeof d.guid);
    int rc = store_droplet_add_async(core->cfg.store, &d, staging__droplet_added, s);
    store_app_free(app);
    if (rc < 0) {
        char why[256];
        staging__store_why(core, rc, why, sizeof why);
        snprintf(err, errsize, "cannot store the droplet: %s", why);
    }
    return rc;
}

/* The stream's last line for a staging that ended without a droplet: done, not ok, and the
 * error as every API error is worded, its code from the one table. */
static void staging__send_failure(struct api_core_staging *s, const char *why)
{
    staging__send(s, json_pack("{s:b,s:b,s:{s:s,s:s}}", "done", 1, "ok", 0, "error", "code",
                               skiff_err_name(SKIFF_E_STAGING_FAILED), "message", why));
}

/* The staging's end: its stream's last line, its log, and s freed; why is NULL for a
 * droplet recorded, else what failed (the droplet's folder is then removed). */
static void staging__end(struct api_core_staging *s, const char *why)
{
    struct api_core *core = s->core;
    staging__unlink(core, s);
    if (!why) {
        logs_appendf(core->cfg.logs, s->app_guid, "STG/0", LOGS_OUT,
                     "Staging complete: buildpack %s, droplet %s",
                     s->buildpack ? s->buildpack : "?", s->droplet_guid);
        json_t *types = s->process_types_json ? json_loads(s->process_types_json, 0, NULL) : NULL;
        staging__send(s, json_pack("{s:b,s:b,s:s,s:s?,s:o}", "done", 1, "ok", 1, "droplet",
                                   s->droplet_guid, "buildpack", s->buildpack, "process_types",
                                   types ? types : json_object()));
    } else {
        logs_appendf(core->cfg.logs, s->app_guid, "STG/0", LOGS_ERR,
                     "Staging failed: %s (the previous droplet, if any, keeps running)", why);
        staging__send_failure(s, why);
        rm_rf(s->droplet_dir);
    }
    api_core__images_gc_soon(core); /* a droplet replaced, or what a failed pull stored */
    api_core__blobs_gc_soon(core);
    if (s->req) {
        api_request_on_abort(s->req, NULL, NULL);
        api_stream_end(s->req);
        s->req = NULL;
    }
    staging__free(s);
}

/* The staging's end, its droplet (when res->ok) put into the blob store as digest (NULL:
 * not put): recorded, then ended. */
static void staging__finish(struct api_core_staging *s, const struct stage_result *res,
                            const char *digest)
{
    if (!res->ok) {
        staging__end(s, res->error ? res->error : "staging failed");
        return;
    }
    if (res->buildpack != s->buildpack) { /* kept for the record, which comes later */
        free(s->buildpack);
        s->buildpack = res->buildpack ? xstrdup(res->buildpack) : NULL;
    }
    if (res->process_types_json != s->process_types_json) {
        free(s->process_types_json);
        s->process_types_json = res->process_types_json ? xstrdup(res->process_types_json) : NULL;
    }
    char err[512] = "";
    if (staging__record(s, digest, err, sizeof err) < 0)
        staging__end(s, err);
}

static void staging__droplet_put(void *ctx, int rc, const char *digest)
{
    struct api_core_staging *s = ctx;
    if (rc < 0) {
        char line[256];
        snprintf(line, sizeof line,
                 "The droplet was not put into the blob store (%s): only this host can run it",
                 skiff_strerror(rc));
        staging__output(s, line, strlen(line));
    }
    struct stage_result res = {
        .ok = true, .buildpack = s->buildpack, .process_types_json = s->process_types_json};
    staging__finish(s, &res, digest);
}

static void staging__done(void *ctx, const struct stage_result *res)
{
    struct api_core_staging *s = ctx;
    s->staging = NULL; /* ended: nothing to cancel while its droplet is put */
    if (res->ok && s->core->cfg.blobs) {
        s->buildpack = res->buildpack ? xstrdup(res->buildpack) : NULL;
        s->process_types_json = res->process_types_json ? xstrdup(res->process_types_json) : NULL;
        if (blob_put_droplet_async(s->core->cfg.blobs, api_loop(s->core->api), s->droplet_dir,
                                   staging__droplet_put, s) == 0)
            return;
    }
    staging__finish(s, res, NULL);
}

/* Ends a staging that could not start: its failure line, the stream, s. */
static void staging__start_failed(struct api_core_staging *s, const char *why)
{
    struct api_core *core = s->core;
    staging__unlink(core, s);
    logs_appendf(core->cfg.logs, s->app_guid, "STG/0", LOGS_ERR, "%s", why);
    staging__send_failure(s, why);
    if (s->req) {
        api_request_on_abort(s->req, NULL, NULL);
        api_stream_end(s->req);
        s->req = NULL;
    }
    staging__free(s);
}

/* Runs the buildpacks (or an image's import) on s->package_path. */
static void staging__run(struct api_core_staging *s)
{
    struct api_core *core = s->core;
    struct stager_config scfg = {.buildpacks_dir = core->cfg.buildpacks_dir,
                                 .home = core->cfg.home,
                                 .containers = core->cfg.containers};
    struct stage_request sreq = {.app_name = s->app_name,
                                 .package_path = s->package_path,
                                 .buildpacks = (const char *const *)s->buildpacks,
                                 .cache_dir = s->cache_dir,
                                 .droplet_dir = s->droplet_dir,
                                 .env = s->env,
                                 .timeout_s = core->cfg.staging_timeout_s,
                                 .disk_mb = s->disk_mb};
    int rc = s->image_kind ? staging__image_start(s, s->image_kind, s->package_path)
                           : stager_start(api_loop(core->api), &scfg, &sreq, staging__output,
                                          staging__done, s, &s->staging);
    if (rc == 0)
        return;
    /* the cases a user can fix: say which and how */
    char *why =
        rc == -ENOENT    ? xasprintf("staging could not start: no buildpack found in %s; set "
                                        "SKIFF_BUILDPACKS to the folder of Skiff's buildpacks and "
                                        "restart skiffd",
                                     core->cfg.buildpacks_dir)
        : rc == -ENOTSUP ? xstrdup("staging could not start: an image runs only in a container, "
                                   "and this skiffd runs apps as host processes")
                         : xasprintf("staging could not start: %s", skiff_strerror(rc));
    staging__start_failed(s, why);
    free(why);
}

static void staging__package_fetched(void *ctx, int rc, const char *digest)
{
    struct api_core_staging *s = ctx;
    if (s->cancelled) {
        staging__start_failed(s, "staging was cancelled");
        return;
    }
    if (rc < 0) {
        char *why = xasprintf("staging could not start: the package (%s) could not be fetched "
                              "from the blob store: %s; upload it again",
                              digest ? digest : "?", skiff_strerror(rc));
        staging__start_failed(s, why);
        free(why);
        return;
    }
    staging__run(s);
}

/* Ends a staging whose package could not be read, before its stream began: the request is
 * answered with the error. */
static void staging__refuse(struct api_core_staging *s, int code, const char *why)
{
    staging__unlink(s->core, s);
    api_respond_error(s->req, code, "%s", why);
    staging__free(s);
}

/* The package read: the staging's stream begins, and its buildpacks (or an image's import) run
 * on the package, fetched from the blob store first when it was uploaded elsewhere. */
static void staging__begin(struct api_core_staging *s, const struct store_app *app,
                           const struct store_package *pkg)
{
    struct api_core *core = s->core;
    struct api_request *req = s->req;
    uuid_generate_v4(s->droplet_guid);
    s->droplet_dir =
        xasprintf("%s/apps/%s/droplets/%s", core->cfg.home, app->guid, s->droplet_guid);
    char *droplets = xasprintf("%s/apps/%s/droplets", core->cfg.home, app->guid);
    char *cache = xasprintf("%s/apps/%s/cache", core->cfg.home, app->guid);
    mkdir_p(droplets, 0700);
    mkdir_p(cache, 0700);
    json_t *bps = json_loads(app->buildpacks_json ? app->buildpacks_json : "[]", 0, NULL);
    size_t nb = json_array_size(bps);
    if (nb) {
        s->buildpacks = xcalloc(nb + 1, sizeof *s->buildpacks);
        for (size_t i = 0; i < nb; i++)
            s->buildpacks[i] = xstrdup(json_string_value(json_array_get(bps, i)) ?: "");
    }
    json_decref(bps);
    /* what buildpacks read: the app's env, Cloud Foundry's staging variables, and for
     * functions the handler (the function buildpacks read SKIFF_FUNCTION_*) */
    s->env = xcalloc(app->n_env + 5, sizeof *s->env);
    size_t ne = 0;
    for (size_t i = 0; i < app->n_env; i++)
        s->env[ne++] = xasprintf("%s=%s", app->env[i].name, app->env[i].value);
    s->env[ne++] = xasprintf("MEMORY_LIMIT=%dM", app->memory_mb);
    struct scheduler_env_input vin = {.app_guid = app->guid,
                                      .app_name = app->name,
                                      .memory_mb = app->memory_mb,
                                      .disk_mb = app->disk_mb};
    char *vcap = scheduler_vcap_application(&vin);
    s->env[ne++] = xasprintf("VCAP_APPLICATION=%s", vcap ? vcap : "{}");
    free(vcap);
    if (app->function_json) {
        json_t *fn = json_loads(app->function_json, 0, NULL);
        const char *handler = json_string_value(json_object_get(fn, "handler"));
        const char *runtime = json_string_value(json_object_get(fn, "runtime"));
        s->env[ne++] = xasprintf("SKIFF_FUNCTION_HANDLER=%s", handler ? handler : "");
        s->env[ne++] = xasprintf("SKIFF_FUNCTION_RUNTIME=%s", runtime ? runtime : "");
        json_decref(fn);
    }
    s->env[ne] = NULL;
    s->package_path = xstrdup(pkg->path);
    s->image_kind = staging__image_kind_of(pkg->path);
    s->cache_dir = cache;
    s->disk_mb = core->cfg.staging_disk_mb > 0 ? core->cfg.staging_disk_mb : app->disk_mb;
    free(droplets);
    api_stream_begin(req, 200, "application/x-ndjson");
    logs_appendf(core->cfg.logs, app->guid, "STG/0", LOGS_OUT, "%s app %s",
                 s->restage ? "Restaging" : "Staging", app->name);
    api_request_on_abort(req, staging__abort, s);
    if (access(pkg->path, R_OK) == 0 || !blob_digest_valid(pkg->digest) || !core->cfg.blobs) {
        staging__run(s);
        return;
    }
    /* uploaded through another skiffd: its package comes from the blob store */
    char line[160];
    snprintf(line, sizeof line, "Fetching the package (%s) from the blob store", pkg->digest);
    staging__output(s, line, strlen(line));
    char *dest = NULL;
    int rc = blob_package_local(core->cfg.blobs, pkg->digest, s->image_kind, &dest);
    if (rc == 0) {
        free(s->package_path);
        s->package_path = dest;
    }
    if (rc == 0 && access(dest, R_OK) == 0)
        staging__package_fetched(s, 0, pkg->digest);
    else if (rc < 0 || (rc = blob_get_file_async(core->cfg.blobs, api_loop(core->api), pkg->digest,
                                                 dest, staging__package_fetched, s)) < 0)
        staging__package_fetched(s, rc, NULL);
}

static void staging__app_read(void *ctx, int rc, struct store_app *fresh);

/* The app's package as read (rc, pkg): else the app is read from the database once, as it
 * may have been uploaded through another skiffd a moment ago, before the feed told this one. */
static void staging__package_read(void *ctx, int rc, struct store_package *pkg)
{
    struct api_core_staging *s = ctx;
    struct api_core *core = s->core;
    char why[256];
    if (s->cancelled) {
        staging__refuse(s, SKIFF_E_STAGING, "staging was cancelled (the app was deleted)");
    } else if (rc == 0) {
        struct store_app *app = s->app; /* s may end within */
        s->app = NULL;
        staging__begin(s, app, pkg);
        store_app_free(app);
    } else if (rc == -EBUSY) {
        staging__store_why(core, rc, why, sizeof why);
        staging__refuse(s, rc, why);
    } else if (!s->fresh_tried) {
        s->fresh_tried = true;
        rc = store_app_get_fresh_async(core->cfg.store, s->app_guid, staging__app_read, s);
        if (rc < 0)
            staging__app_read(s, rc, NULL);
    } else {
        snprintf(why, sizeof why, "app \"%s\" has no uploaded code: upload it first (`skiff push`)",
                 s->app_name);
        staging__refuse(s, SKIFF_E_NO_PACKAGE, why);
    }
    store_package_free(pkg);
}

static void staging__app_read(void *ctx, int rc, struct store_app *fresh)
{
    struct api_core_staging *s = ctx;
    if (rc == 0) {
        store_app_free(s->app);
        s->app = fresh;
    }
    if (rc == -EBUSY || rc == 0) {
        if (rc == 0 && s->app->package_guid)
            rc = store_package_get_async(s->core->cfg.store, s->app->package_guid,
                                         staging__package_read, s);
        else if (rc == 0)
            rc = -ENOENT;
        if (rc < 0)
            staging__package_read(s, rc, NULL);
        return;
    }
    staging__package_read(s, -ENOENT, NULL);
}

static void staging__start(struct api_request *req, struct api_core *core, bool restage)
{
    struct store_app *app = api_core__find_app(core, req);
    if (!app)
        return;
    const char *strategy = api_request_query(req, "strategy");
    if (strategy && strcmp(strategy, "rolling") && strcmp(strategy, "recreate")) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "strategy \"%s\" is not one: rolling (the default: each instance is "
                          "replaced once its successor runs) or recreate (all stop, then start)",
                          strategy);
        store_app_free(app);
        return;
    }
    if (api_core__staging_busy(core, app->guid)) {
        api_respond_error(req, SKIFF_E_STAGING,
                          "app \"%s\" is being staged already: wait for that staging to end",
                          app->name);
        store_app_free(app);
        return;
    }
    /* busy from now on: a second stage or an upload waits for this one's end */
    struct api_core_staging *s = xcalloc(1, sizeof *s);
    s->core = core;
    s->req = req;
    s->restage = restage;
    s->recreate = strategy && !strcmp(strategy, "recreate");
    memcpy(s->app_guid, app->guid, sizeof s->app_guid);
    s->app_name = xstrdup(app->name);
    s->app = app;
    s->next = core->stagings;
    core->stagings = s;
    int rc = app->package_guid ? store_package_get_async(core->cfg.store, app->package_guid,
                                                         staging__package_read, s)
                               : -ENOENT;
    if (rc < 0)
        staging__package_read(s, rc, NULL);
}

static void staging__stage(struct api_request *req, void *ctx)
{
    staging__start(req, ctx, false);
}

static void staging__restage(struct api_request *req, void *ctx)
{
    staging__start(req, ctx, true);
}

void api_core__staging_register(struct api_core *core)
{
    api_route_add(core->api, "PUT", "/v1/apps/*/bits",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP | API_BODY_FILE,
                  staging__bits, core);
    api_route_add(core->api, "POST", "/v1/apps/*/stage",
                  API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_APP, staging__stage, core);
    api_route_add(core->api, "POST", "/v1/apps/*/restage",
                  API_PERM(AUTH_PERM_SPACE_OPERATE) | API_SCOPE_APP, staging__restage, core);
}
