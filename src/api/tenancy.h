/* api/tenancy: the endpoints of users, logging in, tokens, orgs, spaces and roles
 * (docs/api.md, "Users, orgs, spaces, roles and tokens"), and the table every endpoint of
 * the API declares its permission in (docs/roles.md). The decisions themselves are auth.h's;
 * this file turns requests into its calls and its answers into JSON. */
#ifndef SKIFF_API_TENANCY_H
#define SKIFF_API_TENANCY_H

#include "api/api.h"

struct api_tenancy;
struct store;

struct services;

struct api_tenancy_config {
    const char *home; /* $SKIFF_HOME: admin-password lives there until changed */
    struct auth *auth;
    struct store *store; /* to tell whether an org or space still holds apps */
    struct services *services; /* ... or service instances and brokers (NULL: not asked) */
};

/* Adds the routes; the config's pointers must outlive the returned object. */
int api_tenancy_register(struct api *api, const struct api_tenancy_config *cfg,
                         struct api_tenancy **out);
void api_tenancy_free(struct api_tenancy *t);

#endif
