/* Shared between the files of the API core (core.c, staging.c); not a contract. */
#ifndef SKIFF_API_CORE_INTERNAL_H
#define SKIFF_API_CORE_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>

#include "api/api.h"
#include "api/core.h"

struct store_app;
struct store_route;
struct api_core_staging;

struct api_core {
    struct api *api;
    struct api_core_config cfg;
    api_mappings_within_fn mappings_within; /* api_core_set_mappings_check */
    void *mappings_ctx;
    struct api_core_staging *stagings; /* in progress */
    void **follows;                    /* log followers (struct core_follow) */
    size_t nfollows;
    /* GET /v1/apps, kept while neither the store nor any instance's readiness changed */
    char *apps_cache;
    char apps_cache_space[37]; /* the space the cached listing is of */
    size_t apps_cache_len;
    uint64_t apps_cache_changes;
    uint64_t instance_changes;
    int hub_sub; /* on cfg.hub: instance changes */
    uint64_t apps_cache_instance_changes;
    struct api_core_ssh *ssh; /* ssh.c: the sessions open */
    struct api_core_images_gc *images_gc; /* images_gc.c; NULL without containers */
    uv_timer_t *blobs_gc;                 /* blobs.c; NULL without a blob store */
    char (*touched)[37]; /* apps whose instances changed since the last record (guids) */
    size_t ntouched;
};

/* The instances the scheduler runs here for the app, as GET /v1/apps/NAME shows them. */
json_t *api_core__instances_detail(struct api_core *core, const char *app_guid);

void api_core__routes_changed(struct api_core *core);
struct buf;
void api_core__app_write(struct api_core *core, struct buf *b, const struct store_app *app,
                         const struct store_route *const *routes, size_t nroutes);
/* Whether the app's space and org can hold it as it would be stored (replacing the stored
 * app of its guid), with extra_routes more routes: true, or false after answering 422
 * `quota_exceeded` naming the quota, the limit and the numbers. */
bool api_core__quota_admits(struct api_core *core, struct api_request *req,
                            const struct store_app *app, int extra_routes);
/* Whether process p of app may scale to at most max instances with the event mappings aimed
 * at it: true, or false after answering 422 `invalid_value` naming the mappings that ask for
 * more and what to do (api_core_set_mappings_check). A policy that is not stored (the process
 * is not request-scaled) bounds nothing and is admitted. */
bool api_core__mappings_admit(struct api_core *core, struct api_request *req,
                              const struct store_app *app, const struct store_process *p);
/* The space the request is about (its checked space, else the default one). */
const char *api_core__space(struct api_request *req);
/* The app of that name, or NULL after answering 404 (no such app, and how to list them) or
 * 500 (the store failed), or NULL without answering while the app is read off the loop (the
 * handler then runs again: api_core__app_lookup). The caller frees it with store_app_free. */
struct store_app *api_core__app_named(struct api_core *core, struct api_request *req,
                                      const char *name);
/* The same for the app named in the path (param 0). */
struct store_app *api_core__find_app(struct api_core *core, struct api_request *req);
/* The app of that name (or guid) in the request's space: 0 with *out, a negative errno
 * (-ENOENT: none), or -EINPROGRESS when the store's copy does not hold it and its read from
 * the database is queued (store_app_find_or_read): the caller returns without finishing the
 * request, its handler is run again once the read is made, and this call then gives the
 * read's answer (api_request_app_find, which services and the invoker use too). api_core__app_named
 * answers with it; NULL without an answer on -EINPROGRESS. */
int api_core__app_lookup(struct api_core *core, struct api_request *req, const char *name,
                         struct store_app **out);
/* Called once a request's app write is made: req NULL when it was refused (the request is
 * answered already: 409, or 500 naming what), then only to free ctx. app is the app as
 * written (the write's; copy what must outlive the call). */
typedef void api_core_stored_fn(struct api_core *core, struct api_request *req,
                                struct store_app *app, void *ctx);
/* Queues the app's create or (compare-and-swap) update and returns; then is called when it is
 * made or refused (before this returns on SQLite). Takes app. The loop goes on meanwhile: a
 * response that depends on the write is sent from then. */
void api_core__app_store_then(struct api_core *core, struct api_request *req, struct store_app *app,
                              bool create, const char *what, api_core_stored_fn *then, void *ctx);
void api_core__respond_app(struct api_core *core, struct api_request *req, int status,
                           const struct store_app *app);
bool api_core__merge_env(struct api_request *req, struct store_app *app, json_t *env);
/* A request's route writes, queued: begun, given any number of routes to map, ended; then
 * is called once every write queued is made or refused (before api_core__routes_end returns
 * on SQLite), with req NULL when the request was answered already (an error: a route that
 * could not be mapped, or a write the store refused, answered from its callback), then only
 * to free ctx. The routers are told of the routes written. */
struct api_core_routes;
typedef void api_core_routed_fn(struct api_core *core, struct api_request *req, void *ctx);
struct api_core_routes *api_core__routes_begin(struct api_core *core, struct api_request *req,
                                               api_core_routed_fn *then, void *ctx);
void api_core__routes_end(struct api_core_routes *rw);
/* Maps host/path to app (queues its write in rw); balance NULL: round-robin for a new route,
 * unchanged for one the app has; protocol likewise (NULL: http1, or unchanged); https_only 0
 * or 1 sets it, -1 keeps it (off for a new route). Answers and returns false on an error
 * known now (a bad route, another app's); one the store finds is answered at the end. */
bool api_core__map_route(struct api_core *core, struct api_core_routes *rw,
                         const struct store_app *app, const char *spec, const char *path_in,
                         const char *balance, const char *protocol, int https_only);
void api_core__follow_forget(struct api_core *core, void *follow);
void api_core__followers_end(struct api_core *core);

/* blobs.c: GET /v1/blobs/DIGEST, and the collection of blobs nothing names, soon (after
 * packages or droplets were deleted) */
void api_core__blobs_register(struct api_core *core);
void api_core__blobs_gc_soon(struct api_core *core);
void api_core__blobs_close(struct api_core *core);

/* certs.c: a domain's own HTTPS certificate */
void api_core__certs_register(struct api_core *core);
/* {"subject", "issuer", "not_before", "not_after"} of a certificate chain (PEM; new
 * reference), or NULL when it cannot be read. */
json_t *api_core__cert_json(const char *chain);
/* Removes a domain's certificate everywhere (store, this host's router, the routers on NATS),
 * the store's write queued: done(ctx, rc) gets 0, -ENOENT when it had none, or the store's
 * error, once it is made (on the loop, never during the call). */
void api_core__domain_cert_remove(struct api_core *core, const char *name,
                                  void (*done)(void *ctx, int rc), void *ctx);

/* core.c: the one check before a package or droplet the store records is removed from disk.
 * The store may name another skiffd's path (a store shared by hosts, or homes on one host),
 * or one nobody here owns: path goes only when, resolved, it is HOME/apps/APP/packages/NAME or
 * HOME/apps/APP/droplets/NAME of that app (a link at NAME is removed, not followed). 0 when it
 * went or is not on this host; -EPERM (logged) when it is elsewhere here and was left. Its
 * blob is the blob store's collection's to remove. */
int api_core__artifact_remove(struct api_core *core, const char *app_guid, const char *path);

/* staging.c */
void api_core__staging_register(struct api_core *core);
bool api_core__staging_busy(struct api_core *core, const char *app_guid);
/* Cancels the staging of an app, or all of them when app_guid is NULL. */
void api_core__staging_cancel(struct api_core *core, const char *app_guid);
/* The package of every staging under way (its path here): NULL-terminated, the caller frees
 * each and the list. */
char **api_core__staging_packages(struct api_core *core);

/* metadata.c: labels and annotations of apps */
void api_core__metadata_register(struct api_core *core);
/* The app's {"labels": {...}, "annotations": {...}} (new reference; empty objects when none). */
json_t *api_core__metadata_get(struct api_core *core, const char *app_guid);
void api_core__metadata_forget(struct api_core *core, const char *app_guid);
/* Whether key is a metadata key: an optional DNS-subdomain prefix and '/', then a name of at
 * most 63 of [A-Za-z0-9_.-] starting and ending with a letter or digit. */
bool api_metadata_key_valid(const char *key);
/* Whether value is a label's value: empty, or what a key's name may be. */
bool api_label_value_valid(const char *value);
/* Whether labels (a JSON object of strings) match a label selector ("env=prod,!legacy,tier in
 * (web,api)"): 1 or 0, or -EINVAL with what is wrong in err. */
int api_labels_match(json_t *labels, const char *selector, char *err, size_t errlen);
/* images_gc.c: the image store's garbage collection. _soon after anything that can leave a
 * layer unused (it runs off the loop, again while an instance still uses one); _close at
 * shutdown. */
void api_core__images_gc_init(struct api_core *core);
void api_core__images_gc_soon(struct api_core *core);
void api_core__images_gc_close(struct api_core *core);

/* ssh.c: POST /v1/apps/NAME/ssh (skiff ssh); _end_all ends every session (shutdown). */
void api_core__ssh_register(struct api_core *core);
void api_core__ssh_end_all(struct api_core *core);
void api_core__ssh_free(struct api_core *core);

/* revisions.c */
void api_core__revisions_register(struct api_core *core);
/* GET/PUT/DELETE /v1/apps/NAME/autoscale (autoscale.c). */
void api_core__autoscale_register(struct api_core *core);
/* Hears once of a revision's write: rc its outcome (0, -ENODATA: no droplet, -EIO: the
 * revisions could not be read, or the write's error), version the revision's number (0 when
 * none was written). */
typedef void api_core_revised_fn(struct api_core *core, void *ctx, int rc, int version);
/* Records the app's current droplet, environment and commands as its next revision, queued
 * (the loop does not wait for the store); then (when not NULL) hears once it is written (on
 * SQLite before this returns). Once it is, revisions past the kept number go, with the
 * droplets only they used. */
void api_core__revision_add_then(struct api_core *core, const struct store_app *app,
                                 const char *description, api_core_revised_fn *then, void *ctx);
/* The same without a callback: 0 once queued (its number in *version_out when not NULL),
 * -ENODATA (no droplet) or -EIO (the revisions could not be read). */
int api_core__revision_add(struct api_core *core, const struct store_app *app,
                           const char *description, int *version_out);
/* When the app's droplet, environment or commands differ from its newest revision's (a
 * set-env or a new command, applied by a restart), records them as a new revision named after
 * what changed, as Cloud Foundry does; then hears once: of the write (version > 0), or at once
 * with version 0 when nothing changed (or the app has no revision yet: staging makes its
 * first), rc -EIO when the revisions could not be read. */
void api_core__revision_if_changed_then(struct api_core *core, const struct store_app *app,
                                        api_core_revised_fn *then, void *ctx);
/* After a deployment failed (the store's droplet is the one that ran before again): the
 * environment and commands of the newest revision of that droplet are put back, by a queued
 * store_app_modify_async (read again after another writer's change), and the app's log says
 * so once they are written. */
void api_core__revision_settings_restore(struct api_core *core, const char *app_guid);
bool api_core__revisions_any(struct api_core *core, const char *app_guid);
/* Deletes every revision of an app being deleted (its droplets go with the app). */
void api_core__revisions_forget(struct api_core *core, const char *app_guid);

/* functions.c */
void api_core__functions_register(struct api_core *core);
/* The app's functions as the API shows them (a new JSON array). */
json_t *api_core__functions_json(struct api_core *core, const struct store_app *app);
/* The runtime of a function's handler "FILE:FUNC" ("python", "node" or "shell", from the
 * file's extension), or NULL with a message in err when it is not one a function may have:
 * the file a relative path inside the app (no "..", no absolute path, plain characters), the
 * function a name. */
const char *api_function_runtime(const char *handler, char *err, size_t errsize);
/* The command that runs the function server of runtime against handler (checked by
 * api_function_runtime) in the app's droplet; caller frees. */
char *api_function_command(const char *runtime, const char *handler);

/* tasks.c: one-off tasks (POST/GET /v1/apps/APP/tasks...) */
#define API_TASKS_KEEP 100        /* records kept per app, the newest */
#define API_TASKS_RUNNING_MAX 10  /* tasks of one app running at once */
#define API_TASK_COMMAND_MAX 4096 /* bytes of a task's command */
struct store_task;
struct scheduler_task_end;
void api_core__tasks_register(struct api_core *core);
/* The memory of the app's tasks that run (or wait to), among list: what the quota counts. */
int64_t api_core__tasks_memory_mb(const struct store_task *list, size_t n, const char *app_guid);
/* Whether the task is PENDING, RUNNING or CANCELING (it holds its memory). */
bool api_task_active(const struct store_task *t);
/* Whether name may be a task's name (1 to SCHEDULER_TASK_NAME_MAX of [A-Za-z0-9._-]), and
 * whether command may be a task's (not blank, at most API_TASK_COMMAND_MAX bytes); when not,
 * a message for the user in err. */
bool api_task_name_check(const char *name, char *err, size_t errsize);
bool api_task_command_check(const char *command, char *err, size_t errsize);
/* The failure reason of a task that ended by itself other than with status 0. */
void api_task_failure_reason(const struct scheduler_task_end *end, int memory_mb, char *out,
                             size_t size);
/* The integer field key of obj into *out when present: true, or false after answering 422 when
 * it is not a whole number from min to max. */
bool api_core__int_field(struct api_request *req, json_t *obj, const char *key, int min, int max,
                         int *out);

#endif
