/* api core: the endpoints of docs/api.md other than events: info, apps, bits and staging,
 * env, logs, routes and domains. They read and write the store, tell the scheduler what
 * changed, and tell the bus when the route table may have changed.
 *
 * api_core_register adds the routes to an api; the core lives until api_core_free, which
 * must come after the api stopped calling handlers (api_close done) and after
 * api_core_shutdown cancelled stagings in progress. */
#ifndef SKIFF_API_CORE_H
#define SKIFF_API_CORE_H

#include <stdint.h>

struct api;
struct api_core;
struct store;
struct scheduler;
struct logs;

struct container_site;

struct api_core_config {
    const char *home;
    const char *router_url;
    const char *buildpacks_dir; /* built-in buildpacks */
    uint64_t max_unpacked;      /* largest unpacked package, bytes */
    int staging_timeout_s;
    int staging_disk_mb; /* every staging's disk; 0: the app's disk quota, as Cloud Foundry */
    const struct container_site *containers; /* where stagings run; NULL: host processes */
    const char *const *insecure_registries;  /* image registries over http (HOST:PORT) */
    uint64_t max_image_bytes; /* the largest image staging takes; 0: IMAGE_DEFAULT_MAX_IMAGE */
    struct store *store;
    struct scheduler *scheduler;
    struct hub *hub; /* platform events: it publishes what users do, and follows instances */
    struct logs *logs;
    struct autoscaler *autoscaler; /* what `skiff autoscale` shows (NULL: nothing) */
    struct auth *auth; /* spaces' names for the app objects */
    struct services *services; /* the app's VCAP_SERVICES in its env (NULL: "{}") */
    /* called when an app is deleted, before its record goes (NULL: nobody) */
    void (*app_deleted)(void *ctx, const char *app_guid);
    void *app_deleted_ctx;
    /* called after any change of routes or domains */
    void (*routes_changed)(void *ctx);
    void *routes_ctx;
    /* called after a domain's certificate changed in HOME/tls/domains (NULL: nobody) */
    void (*certs_changed)(void *ctx);
    void *certs_ctx;
    /* Several skiffds on one store: the leader records its instances' states there
     * (api_core_record_instances), and a skiffd that runs none of an app's instances shows
     * the record of the cell that leads now (NULL: the embedded store, nothing recorded).
     * Asked of its own cell_id, it answers whether this skiffd leads without reading the store. */
    bool (*cell_leads)(void *ctx, const char *cell_id);
    void *cell_ctx;
    const char *cell_id; /* this skiffd's cell (copied): each instance says where it runs */
    /* Packages and droplets are put there as they are made, and named by their digest in the
     * store (src/blobs); GET /v1/blobs/DIGEST serves them. NULL: neither. */
    struct blob_store *blobs;
    /* Instances may run on cells of other hosts (NATS): an image's config and layers go into
     * blobs too at staging (a pull keeps each layer's compressed blob for it). False: a single
     * host, where a pull keeps only the unpacked layers, as fast as it can. */
    bool image_blobs;
};

int api_core_register(struct api *api, const struct api_core_config *cfg, struct api_core **out);
/* Cancels stagings in progress (their requests get a failure line and end). */
void api_core_shutdown(struct api_core *core);
void api_core_free(struct api_core *core);
/* The store may have changed under this skiffd (another one on a shared store wrote it): what
 * the core keeps from it (the app list) is read again on its next use. */
void api_core_store_changed(struct api_core *core);
/* Another skiffd on the same store deleted an app: what only it used here (image layers, the
 * droplets and packages brought here from the blob store) is collected soon, as after a
 * delete through this one. */
void api_core_app_deleted_elsewhere(struct api_core *core);
/* The leader, once a tick: the instances of every app whose instances changed since the last
 * call are written to the store as this cell's record (an app with none: its record goes).
 * Not leading: nothing is written, and the changes are forgotten. */
void api_core_record_instances(struct api_core *core, bool leading);
/* Lowering a process's autoscale policy (`skiff autoscale`, a function's max_instances, the
 * default policy back) asks fn whether the event mappings of that process still fit under the
 * new max; when fn says no (why filled), the change is refused 422 with why. The invoker's
 * invoker_mappings_within (wired by skiffd). NULL: nothing is checked. */
typedef bool (*api_mappings_within_fn)(void *ctx, const char *space_guid, const char *app,
                                       const char *process, int max, char *why, size_t whysize);
void api_core_set_mappings_check(struct api_core *core, api_mappings_within_fn fn, void *ctx);

#endif
