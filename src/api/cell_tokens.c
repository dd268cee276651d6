/* Cells' tokens and what each may read (api.h "cells' tokens").
 *
 * Documents in the store, so that every controller on it decides alike and at once:
 *   cell.tokens/CELL_ID          {"blake2b": HEX of the token, "created_at": ms}
 *   cell.grants/CELL_ID/DIGEST   {"until": ms}: the leader started DIGEST's droplet there
 * A token is checked against its cell's document on every request that carries one (no copy
 * kept in a controller's memory to go stale), and a cell's token reads a blob only under a
 * grant that stands. */
#include <errno.h>
#include <jansson.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/api.h"
#include "auth/auth.h"
#include "blobs/blobs.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "store/store.h"

#define CELL_TOKENS_KIND "cell.tokens"
#define CELL_GRANTS_KIND "cell.grants"

static void cell_tokens__hash_hex(const char *token, char out[2 * crypto_generichash_BYTES + 1])
{
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)token, strlen(token), NULL, 0);
    sodium_bin2hex(out, 2 * crypto_generichash_BYTES + 1, hash, sizeof hash);
}

int api_cell_token_check(struct store *store, const char *token, char *cell_id)
{
    char cell[AUTH_CELL_ID_LEN + 1];
    if (!auth_cell_token_parse(token, cell))
        return -EACCES;
    char *json = NULL;
    if (store_doc_get(store, CELL_TOKENS_KIND, cell, &json) < 0)
        return -EACCES;
    json_t *doc = json_loads(json, 0, NULL);
    free(json);
    const char *want = json_string_value(json_object_get(doc, "blake2b"));
    char got[2 * crypto_generichash_BYTES + 1];
    cell_tokens__hash_hex(token, got);
    bool ok = want && strlen(want) == strlen(got) && sodium_memcmp(want, got, strlen(got)) == 0;
    json_decref(doc);
    if (!ok)
        return -EACCES;
    memcpy(cell_id, cell, sizeof cell);
    return 0;
}

static char *cell_tokens__grant_id(const char *cell_id, const char *digest)
{
    return xasprintf("%s/%s", cell_id, digest);
}

int api_cell_grant(struct store *store, const char *cell_id, const char *digest)
{
    if (!auth_cell_id_valid(cell_id) || !blob_digest_valid(digest))
        return -EINVAL;
    char *id = cell_tokens__grant_id(cell_id, digest);
    json_t *doc = json_pack("{s:I}", "until", (json_int_t)(time_now_ms() + API_CELL_GRANT_MS));
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    int rc = store_doc_put(store, CELL_GRANTS_KIND, id, text);
    free(text);
    free(id);
    return rc;
}

bool api_cell_may_read(struct store *store, const char *cell_id, const char *digest)
{
    if (!auth_cell_id_valid(cell_id) || !blob_digest_valid(digest))
        return false;
    char *id = cell_tokens__grant_id(cell_id, digest);
    char *json = NULL;
    bool ok = false;
    if (store_doc_get(store, CELL_GRANTS_KIND, id, &json) == 0) {
        json_t *doc = json_loads(json, 0, NULL);
        ok = json_integer_value(json_object_get(doc, "until")) > time_now_ms();
        json_decref(doc);
        free(json);
        if (!ok) /* ended: it would only ever be refused again */
            store_doc_delete(store, CELL_GRANTS_KIND, id);
    }
    free(id);
    return ok;
}

/* ---- endpoints (platform admin) ---------------------------------------------------------------
 */

/* POST /v1/cell_tokens {"cell": ID}: a new token for the cell, shown once; one it had before is
 * refused from now on. */
static void cell_tokens__create(struct api_request *req, void *ctx)
{
    struct store *store = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"cell", NULL};
    if (!api_json_check_fields(req, body, fields)) {
        json_decref(body);
        return;
    }
    const char *cell = json_string_value(json_object_get(body, "cell"));
    if (!auth_cell_id_valid(cell)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "\"cell\" must be a cell's id, 32 lowercase hex digits (its "
                          "HOME/cell-id; `skiff cells` lists the cells' ids)");
        json_decref(body);
        return;
    }
    char secret[AUTH_CELL_SECRET_LEN + 1], token[AUTH_CELL_TOKEN_LEN + 1];
    random_hex(secret, AUTH_CELL_SECRET_LEN / 2);
    snprintf(token, sizeof token, AUTH_CELL_TOKEN_PREFIX "%s%s", cell, secret);
    char hash[2 * crypto_generichash_BYTES + 1];
    cell_tokens__hash_hex(token, hash);
    char *old = NULL;
    bool replaced = store_doc_get(store, CELL_TOKENS_KIND, cell, &old) == 0;
    free(old);
    json_t *doc = json_pack("{s:s,s:I}", "blake2b", hash, "created_at", (json_int_t)time_now_ms());
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    int rc = store_doc_put(store, CELL_TOKENS_KIND, cell, text);
    free(text);
    if (rc < 0) {
        api_respond_error(req, rc, "cannot keep the token of cell %s", cell);
    } else {
        log_info("[API] cell %s has a new token%s", cell,
                 replaced ? ": its previous one is refused from now on" : "");
        api_respond_json(
            req, 201,
            json_pack("{s:s,s:s,s:b}", "cell", cell, "token", token, "replaced", replaced));
    }
    sodium_memzero(secret, sizeof secret);
    sodium_memzero(token, sizeof token);
    json_decref(body);
}

struct cell_tokens__list {
    json_t *rows;
    char **ids; /* for the grants' deletion */
    size_t n;
    const char *prefix;
};

static int cell_tokens__row(void *ctx, const char *id, const char *json)
{
    struct cell_tokens__list *l = ctx;
    json_t *doc = json_loads(json, 0, NULL);
    char when[40] = "";
    json_int_t at = json_integer_value(json_object_get(doc, "created_at"));
    if (at > 0)
        time_format_rfc3339(at, when, sizeof when);
    json_array_append_new(l->rows, json_pack("{s:s,s:s}", "cell", id, "created_at", when));
    json_decref(doc);
    return 0;
}

static void cell_tokens__list(struct api_request *req, void *ctx)
{
    struct store *store = ctx;
    struct cell_tokens__list l = {.rows = json_array()};
    int rc = store_doc_each(store, CELL_TOKENS_KIND, cell_tokens__row, &l);
    if (rc < 0) {
        json_decref(l.rows);
        api_respond_error(req, rc, "cannot list the cells' tokens");
        return;
    }
    api_respond_json(req, 200, json_pack("{s:o}", "cell_tokens", l.rows));
}

static int cell_tokens__grant_of(void *ctx, const char *id, const char *json)
{
    (void)json;
    struct cell_tokens__list *l = ctx;
    if (str_has_prefix(id, l->prefix)) {
        l->ids = xrealloc(l->ids, (l->n + 1) * sizeof *l->ids);
        l->ids[l->n++] = xstrdup(id);
    }
    return 0;
}

/* DELETE /v1/cell_tokens/ID: the cell's token is refused from now on, by every controller, and
 * the grants it had go with it. */
static void cell_tokens__delete(struct api_request *req, void *ctx)
{
    struct store *store = ctx;
    const char *cell = api_request_param(req, 0);
    if (!auth_cell_id_valid(cell)) {
        api_respond_error(req, SKIFF_E_BAD_NAME,
                          "a cell is named by its id, 32 lowercase hex digits (`skiff "
                          "cell-tokens` lists the cells that have a token)");
        return;
    }
    int rc = store_doc_delete(store, CELL_TOKENS_KIND, cell);
    if (rc == -ENOENT) {
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "cell %s has no token (`skiff cell-tokens` lists those that have)", cell);
        return;
    }
    if (rc < 0) {
        api_respond_error(req, rc, "cannot delete the token of cell %s", cell);
        return;
    }
    char *prefix = xasprintf("%s/", cell);
    struct cell_tokens__list l = {.prefix = prefix};
    if (store_doc_each(store, CELL_GRANTS_KIND, cell_tokens__grant_of, &l) == 0)
        for (size_t i = 0; i < l.n; i++)
            store_doc_delete(store, CELL_GRANTS_KIND, l.ids[i]);
    for (size_t i = 0; i < l.n; i++)
        free(l.ids[i]);
    free(l.ids);
    free(prefix);
    log_info("[API] cell %s's token was deleted: it is refused from now on", cell);
    api_respond(req, 204, NULL, NULL, 0);
}

static void cell_tokens__remove_shared(const char *home)
{
    char *path = xasprintf("%s/cell-token", home);
    if (access(path, F_OK) == 0) {
        if (unlink(path) == 0)
            log_warning("%s held the one token all cells shared, which no controller accepts "
                        "any more: removed. Give each cell its own (`skiff create-cell-token "
                        "CELL_ID`, src/cell/README.md)",
                        path);
        else
            log_warning("%s held the one token all cells shared, which no controller accepts "
                        "any more; it could not be removed: %s",
                        path, skiff_strerror(-errno));
    }
    free(path);
}

void api_cell_tokens_setup(struct api *api, struct store *store, const char *home)
{
    cell_tokens__remove_shared(home);
    api_route_add(api, "POST", "/v1/cell_tokens", API_PERM(AUTH_PERM_ADMIN), cell_tokens__create,
                  store);
    api_route_add(api, "GET", "/v1/cell_tokens", API_PERM(AUTH_PERM_ADMIN), cell_tokens__list,
                  store);
    api_route_add(api, "DELETE", "/v1/cell_tokens/*", API_PERM(AUTH_PERM_ADMIN),
                  cell_tokens__delete, store);
}
