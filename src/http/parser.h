/* parser: the one place llhttp is set up, for Skiff's HTTP server (src/api) and client
 * (client.c). Each role registers its callbacks the first time it starts a parser; every
 * parser of that role then shares those settings, made once. The router (a program of its own,
 * tuned for forwarding) keeps its own. */
#ifndef SKIFF_HTTP_PARSER_H
#define SKIFF_HTTP_PARSER_H

#include <llhttp.h>

enum http_role {
    HTTP_ROLE_SERVER, /* reads requests */
    HTTP_ROLE_CLIENT, /* reads responses */
    HTTP_ROLE_COUNT
};

/* Sets the callbacks of a role's settings (which start as llhttp_settings_init leaves them). */
typedef void (*http_settings_fill_fn)(llhttp_settings_t *settings);

/* Starts p for role, with data as p->data. fill runs once per role, on the first call; a role
 * has one owner, so later calls pass the same fill. */
void http_parser_init(llhttp_t *p, enum http_role role, http_settings_fill_fn fill, void *data);

#endif
