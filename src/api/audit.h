/* api/audit: who changed what. Every change made through the API (a request other than
 * GET/HEAD, publishing and logging in, answered below 400) is recorded in the store as an
 * audit event: its type (audit.NOUN.VERB, after Cloud Foundry's), the actor (user, or the
 * local admin token), the token, the target's name, the org and space, the method, path and
 * status (never a body: bodies hold secrets). Listed newest first:
 *   GET /v1/audit_events?space=ORG/SPACE[&target=NAME][&limit=N][&before=ID]  (space.read)
 *   GET /v1/orgs/ORG/audit_events                                             (org.read)
 *   GET /v1/admin/audit_events                                                (admin) */
#ifndef SKIFF_API_AUDIT_H
#define SKIFF_API_AUDIT_H

#include <stddef.h>

#include "api/api.h"

struct api_audit;
struct store;
struct auth;

int api_audit_register(struct api *api, struct store *store, struct auth *auth,
                       struct api_audit **out);
void api_audit_free(struct api_audit *au);

/* The event type of a change: "audit.app.create" for POST /v1/apps (written into out). */
void api_audit_type(const char *method, const char *pattern, char *out, size_t size);

#endif
