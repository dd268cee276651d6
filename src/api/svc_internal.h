/* Shared between the services endpoints (services.c) and the broker side (brokers.c); not a
 * contract. */
#ifndef SKIFF_API_SVC_INTERNAL_H
#define SKIFF_API_SVC_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <uv.h>

#include "api/api.h"

struct store_app;
struct svc_op;

struct api_svc {
    uv_loop_t *loop;
    struct api *api;
    struct store *store;
    struct services *records;
    struct logs *logs;
    char *own_addrs[8];
    struct svc_op *ops; /* broker operations in flight */
    int calls_running;  /* broker calls in libuv's pool now */
    uv_timer_t *poll_timer;
    bool stopping;
};

/* services.c */
const char *svc__space(struct api_request *req);
const char *svc__str(const json_t *obj, const char *key);
bool svc__is_user_provided(const json_t *inst);
/* The instance of that name (or guid) in the request's space; NULL after answering 404. */
json_t *svc__instance_named(struct api_svc *a, struct api_request *req, const char *name);
json_t *svc__instance_view(struct api_svc *a, const json_t *inst);
json_t *svc__binding_view(struct api_svc *a, const json_t *b);
json_t *svc__binding_of(struct api_svc *a, const char *app_guid, const char *instance_guid);
/* The app named in the path, in the request's space; NULL after answering 404, or NULL
 * without answering while it is read off the loop (the handler then runs again). */
struct store_app *svc__app(struct api_svc *a, struct api_request *req);
/* Tags of a body: true with *out NULL (absent) or a copy; false after answering 422. */
bool svc__tags(struct api_request *req, json_t *body, json_t **out);
void svc__stamp(json_t *rec, bool created);
/* Stores the instance and answers with its view, or 500. */
void svc__respond_stored(struct api_svc *a, struct api_request *req, int status, json_t *inst);
/* Writes rec (or, with rec NULL, deletes the record guid) of kind through the store's queue and
 * answers status with body (taken; NULL: no body) once it is stored, SVC_STORE_FAILED when
 * the store refused it. */
void svc__answer_stored(struct api_svc *a, struct api_request *req, const char *kind,
                        const json_t *rec, const char *guid, int status, json_t *body);
json_t *svc__json_string_own(char *s);

/* brokers.c: the managed side, through the instance's broker. Each answers the request. */
void svc__brokers_register(struct api_svc *a);
void svc__brokers_stop(struct api_svc *a);
void svc__managed_create(struct api_svc *a, struct api_request *req, json_t *body);
void svc__managed_update(struct api_svc *a, struct api_request *req, json_t *inst, json_t *body);
void svc__managed_delete(struct api_svc *a, struct api_request *req, json_t *inst);
void svc__managed_bind(struct api_svc *a, struct api_request *req, json_t *inst, json_t *bind,
                       json_t *params, const struct store_app *app);
void svc__managed_unbind(struct api_svc *a, struct api_request *req, json_t *inst, json_t *bind);
/* Unbinds a binding of a deleted app at its broker, then forgets it (no request waits). */
void svc__managed_forget_binding(struct api_svc *a, json_t *inst, json_t *bind);

#endif
