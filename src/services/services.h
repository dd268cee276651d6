/* services: service instances, bindings, service keys and brokers (Cloud Foundry's services,
 * the Open Service Broker API's records), and what an app's instances see of them
 * (VCAP_SERVICES).
 *
 * Records are JSON objects kept as store documents (store_doc_*), one kind each:
 *
 *   "service.instance"  guid, name, space_guid, type ("user-provided" or "managed"), tags,
 *                       syslog_drain_url, route_service_url, credentials (sealed; user-provided),
 *                       and for managed ones broker_guid, service_id, service_name, plan_id,
 *                       plan_name, dashboard_url, last_operation {type, state, description},
 *                       operation (the broker's token of an operation in progress)
 *   "service.binding"   guid, type ("app" or "key"), name (binding name or key name; null for
 *                       an app binding without one), app_guid (type app), instance_guid,
 *                       space_guid, credentials (sealed), syslog_drain_url, volume_mounts,
 *                       last_operation
 *   "service.broker"    guid, name, url, username, password (sealed), space_guid (null: the
 *                       whole platform), catalog (as validated), created_at
 *
 * Secrets (credentials, broker passwords) are sealed with libsodium's secretbox under a key
 * kept in $SKIFF_HOME/services.key (mode 0600, skiffd's user only) before they reach the
 * store: a copy of the database alone does not give them away. Only services_unseal opens
 * them, and only callers that decided the reader may see them call it.
 *
 * Everything runs on skiffd's loop (the store is synchronous). Errors are negative errno
 * values: -ENOENT no such record, -EIO the store failed, -EINVAL a sealed text that does not
 * open (another key, or damaged).
 *
 * Ownership: json_t results are new references the caller decrefs; records passed in are
 * only read. */
#ifndef SKIFF_SERVICES_H
#define SKIFF_SERVICES_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "store/store.h"

struct store;
struct services;

#define SERVICES_KIND_INSTANCE "service.instance"
#define SERVICES_KIND_BINDING "service.binding"
#define SERVICES_KIND_BROKER "service.broker"
#define SERVICES_KIND_KEY_CHECK "service.key_check"
#define SERVICES_KIND_EVENTS_KEY "service.events_key"
#define SERVICES_KIND_BUILTIN_OWNER "service.builtin_owner" /* whose built-in brokers */

/* The label of user-provided instances in VCAP_SERVICES. */
#define SERVICES_USER_PROVIDED "user-provided"

/* Opens the records in st, with the sealing key of home/services.key (made on first use). */
int services_open(struct store *st, const char *home, struct services **out);
void services_free(struct services *s);

/* The one rule for names of service instances, bindings, keys and brokers: 1 to 255
 * characters, letters, digits, '-', '_', '.' and spaces inside, not starting or ending with a
 * space. */
bool services_name_valid(const char *name);

/* ---- records ------------------------------------------------------------------------------ */

/* Stores rec (a JSON object with a "guid") under kind, replacing the one of that guid. The
 * write is queued on the store's writer (store_doc_put_async), never waited for on the
 * caller's thread: reads see it at once, and done(ctx, rc) hears how it went (0, -EIO), from
 * store_async_reap (on SQLite before the call returns). An answer to a client is sent from
 * done. -EINVAL (no guid) or a write that cannot be queued: done is not called. */
int services_put_async(struct services *s, const char *kind, const json_t *rec, store_done_fn *done,
                       void *ctx);
int services_delete_async(struct services *s, const char *kind, const char *guid,
                          store_done_fn *done, void *ctx);
/* The same for a write no one waits for (a broker operation's bookkeeping): 0 once queued; a
 * refusal is logged by the store. */
int services_put(struct services *s, const char *kind, const json_t *rec);
int services_delete(struct services *s, const char *kind, const char *guid);
/* The record of that guid as the store holds it once the writes queued before this call are
 * made (store_doc_get_fresh_async): done(ctx, rec) with the record (the callback's) or NULL
 * (absent, or the store failed). A call that returns an error never calls done. */
typedef void services_rec_fn(void *ctx, json_t *rec);
int services_get_stored_async(struct services *s, const char *kind, const char *guid,
                              services_rec_fn *done, void *ctx);
/* The record of that guid, or NULL (absent or the store failed). */
json_t *services_get(struct services *s, const char *kind, const char *guid);
/* Every record of kind whose field equals value (field NULL: all), in creation order;
 * NULL when the store failed. */
json_t *services_list(struct services *s, const char *kind, const char *field, const char *value);
/* The record of kind in the space (space_guid NULL: one with a null space_guid, the
 * platform's) named name, or whose guid is name; NULL when there is none. For bindings, use
 * services_list. */
json_t *services_find(struct services *s, const char *kind, const char *space_guid,
                      const char *name);

/* ---- secrets ------------------------------------------------------------------------------ */

/* Seals value (any JSON) into text for a record (caller frees). */
char *services_seal(struct services *s, const json_t *value);
/* The value sealed in text, or NULL when it does not open. */
json_t *services_unseal(struct services *s, const char *text);

/* The value sealed in document kind/"key" of the store: the one there, or (when there is none
 * yet) plain, which this skiffd then leaves there as the first (a create that fails for every
 * skiffd but one: two starting at once agree on one value). NULL when the sealed value does not
 * open (*rc -EKEYREJECTED) or the store failed (*rc its error). Synchronous: for skiffd's start. */
json_t *services_shared(struct services *s, const char *kind, const json_t *plain, int *rc);
/* Deletes that document (queued; a failure is logged): the next services_shared is first. */
void services_shared_forget(struct services *s, const char *kind);
/* On a store several skiffds share (PostgreSQL), every one must seal with the same key
 * ($SKIFF_HOME/services.key): the first to start leaves a value sealed with its key in the
 * store (document SERVICES_KIND_KEY_CHECK), and the key of every later start must open it.
 * 0, or -EKEYREJECTED (logged, with what to do) for a key that does not: credentials the others
 * sealed could not be read here, nor those sealed here there. The store's error otherwise. */
int services_key_check(struct services *s, const char *home);
/* The same store's copy of a 32-byte key kept in path (64 hex digits, 0600), sealed in document
 * kind: the first skiffd leaves its own key there (made when path has none), and every later
 * one takes the store's into key and into path. 0, or -errno (key wiped). */
int services_shared_key(struct services *s, const char *kind, const char *path,
                        unsigned char key[32]);

/* ---- VCAP_SERVICES ------------------------------------------------------------------------ */

/* What one binding of an app shows, from its records (credentials already unsealed). The
 * service's own tags (a managed offering's) come before the instance's. */
struct services_vcap_binding {
    const json_t *instance; /* the service.instance record */
    const json_t *binding;  /* the service.binding record */
    const json_t *credentials;
    const json_t *service_tags; /* the catalog's tags of the offering, or NULL */
};

/* Adds one binding to vcap (a JSON object) in Cloud Foundry's shape: under the label (the
 * offering's name, or "user-provided"), an object with name (the binding's name, else the
 * instance's), instance_name, binding_name, instance_guid, binding_guid, label, tags,
 * credentials, syslog_drain_url and volume_mounts, plus plan and provider for managed
 * instances. Pure. */
void services_vcap_add(json_t *vcap, const struct services_vcap_binding *b);
/* VCAP_SERVICES of an app from its bindings in the store, as JSON text (caller frees);
 * "{}" without any. NULL when the store failed (the instance should not start without what
 * it was bound to). */
char *services_vcap_json(struct services *s, const char *app_guid);
/* The same without credentials: the instance names an app is bound to, for listings. */
json_t *services_app_bound_names(struct services *s, const char *app_guid);

/* ---- binding tokens (pure) --------------------------------------------------------------- */

/* A built-in `events` binding's token: "skiffb_<instance>.<binding>.<hex HMAC-SHA256 of
 * "<instance>.<binding>" under key>". It lets its holder publish to the topic named like the
 * instance, in the instance's space, while the binding exists (skiffd checks the record at
 * every request, so unbinding ends it). key is 32 bytes. out has room for
 * SERVICES_BINDING_TOKEN_MAX. */
#define SERVICES_BINDING_TOKEN_PREFIX "skiffb_"
#define SERVICES_BINDING_TOKEN_MAX 256
void services_binding_token(const unsigned char key[32], const char *instance_guid,
                            const char *binding_guid, char *out, size_t size);
/* Whether token is one services_binding_token made under key; its instance and binding ids
 * into the buffers (at most 64 characters each). */
bool services_binding_token_check(const unsigned char key[32], const char *token,
                                  char instance_guid[65], char binding_guid[65]);
/* The key in path (64 hex digits), made (0600) when absent. -errno when it cannot be. */
int services_binding_key(const char *path, unsigned char key[32]);

/* ---- broker catalogs (pure) --------------------------------------------------------------- */

/* Checks a broker's GET /v2/catalog answer against the Open Service Broker API (2.17): a
 * "services" list whose offerings have a CLI-friendly name, an id unique in the catalog, a
 * description, bindable, and plans (at least one) with an id and a name unique in the
 * offering and a description; typed optional fields (tags, requires, free, bindable,
 * plan_updateable, maximum_polling_duration, schemas, metadata). 0, or -EINVAL with a
 * message naming the field ("services[1].plans[0].id: missing") in err. */
int services_catalog_validate(const json_t *catalog, char *err, size_t errsize);
/* The offering named (or of that id) and its plan named (or of that id) in a validated
 * catalog: borrowed references, or false. */
bool services_catalog_find(const json_t *catalog, const char *service, const char *plan,
                           json_t **offering, json_t **plan_out);

/* Checks parameters (NULL: none, checked as {}) against the plan's JSON schema for what:
 * "service_instance.create", "service_instance.update" or "service_binding.create". The
 * common keywords are checked (type, enum, required, properties, additionalProperties: false,
 * items, minimum, maximum, minLength, maxLength); others are left to the broker. 0 (also
 * without a schema), or -EINVAL with a message naming the parameter in err. */
int services_parameters_check(const json_t *plan, const char *what, const json_t *parameters,
                              char *err, size_t errsize);

/* ---- the Open Service Broker client (blocking: run it off the loop) ----------------------- */

#define SERVICES_OSB_VERSION "2.17"
#define SERVICES_OSB_BODY_MAX (1u << 20)

/* One request to a broker: X-Broker-API-Version, X-Broker-API-Request-Identity (a new uuid),
 * basic auth, JSON in and out; no redirects
 * followed, answers over SERVICES_OSB_BODY_MAX refused. Filled in by the caller (strings are
 * the call's, freed by services_osb_call_clean), answered by services_osb_perform. */
struct services_osb_call {
    const char *method;
    char *url;
    char *body;     /* JSON text or NULL */
    char *username; /* basic auth */
    char *password;
    char *identity;            /* X-Broker-API-Originating-Identity's value, or NULL */
    long timeout_s;            /* the whole request; the connection gets at most 10 s of it */
    const volatile int *abort; /* non-zero: give up now (skiffd stopping) */
    /* answer */
    long status; /* 0: none (error says why; timed_out when it was the deadline) */
    bool timed_out;
    json_t *json;     /* the body when it is JSON */
    long retry_after; /* Retry-After in seconds, -1 when absent */
    char error[256];
};
/* Sets libcurl up, once per process (services_open calls it, before any worker thread
 * performs a call). */
void services_osb_init(void);
/* Performs the call; may be called on any thread (uses nothing of skiffd's). */
void services_osb_perform(struct services_osb_call *c);
void services_osb_call_clean(struct services_osb_call *c);
/* The broker's own words for a failure: its JSON "description" (and "error" code), at most
 * 300 characters, or "" when it gave none. A body that is not the broker API's error shape is
 * never shown (the broker URL could name something that is not a broker). */
void services_osb_describe(const struct services_osb_call *c, char *out, size_t size);
/* "cloudfoundry BASE64({"user_id": "..."})" (caller frees). */
char *services_osb_identity(const char *user_id);

#endif
