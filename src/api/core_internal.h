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
};

void api_core__routes_changed(struct api_core *core);
struct buf;
void api_core__app_write(struct api_core *core, struct buf *b, const struct store_app *app,
                         const struct store_route *const *routes, size_t nroutes);
/* The app of that name, or NULL after answering 404 (no such app, and how to list them) or
 * 500 (the store failed). The caller frees it with store_app_free. */
/* Whether the app's space and org can hold it as it would be stored (replacing the stored
 * app of its guid), with extra_routes more routes: true, or false after answering 422
 * `quota_exceeded` naming the quota, the limit and the numbers. */
bool api_core__quota_admits(struct api_core *core, struct api_request *req,
                            const struct store_app *app, int extra_routes);
/* The space the request is about (its checked space, else the default one). */
const char *api_core__space(struct api_request *req);
struct store_app *api_core__app_named(struct api_core *core, struct api_request *req,
                                      const char *name);
/* The same for the app named in the path (param 0). */
struct store_app *api_core__find_app(struct api_core *core, struct api_request *req);
void api_core__respond_app(struct api_core *core, struct api_request *req, int status,
                           const struct store_app *app);
bool api_core__merge_env(struct api_request *req, struct store_app *app, json_t *env);
/* Maps host/path to app; balance NULL: round-robin for a new route, unchanged for one the
 * app has. Answers and returns false on error. */
bool api_core__map_route(struct api_core *core, struct api_request *req,
                         const struct store_app *app, const char *spec, const char *path_in,
                         const char *balance);
void api_core__follow_forget(struct api_core *core, void *follow);
void api_core__followers_end(struct api_core *core);

/* staging.c */
void api_core__staging_register(struct api_core *core);
bool api_core__staging_busy(struct api_core *core, const char *app_guid);
/* Cancels the staging of an app, or all of them when app_guid is NULL. */
void api_core__staging_cancel(struct api_core *core, const char *app_guid);

/* ssh.c: POST /v1/apps/NAME/ssh (skiff ssh); _end_all ends every session (shutdown). */
void api_core__ssh_register(struct api_core *core);
void api_core__ssh_end_all(struct api_core *core);
void api_core__ssh_free(struct api_core *core);

/* revisions.c */
void api_core__revisions_register(struct api_core *core);
/* GET/PUT/DELETE /v1/apps/NAME/autoscale (autoscale.c). */
void api_core__autoscale_register(struct api_core *core);
/* Records the app's current droplet, environment and commands as its next revision (number
 * in *version_out when not NULL), dropping revisions past the kept number with the droplets
 * only they used. 0, -ENODATA (no droplet) or -EIO. */
int api_core__revision_add(struct api_core *core, const struct store_app *app,
                           const char *description, int *version_out);
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

#endif
