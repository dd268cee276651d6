/* Cells' tokens and what each may read (api.h "cells' tokens").
 *
 * Documents in the store, so that every controller on it decides alike:
 *   cell.tokens/CELL_ID          {"blake2b": HEX of the token, "created_at": ms}
 *   cell.grants/CELL_ID/DIGEST   {"until": ms, "blobs": [DIGEST, ...]}: the leader started
 *                                DIGEST's droplet there; the cell may read it and the blobs it
 *                                lists (an image's config and layers) until then
 * Each controller keeps a copy of both kinds in memory, read again whole whenever the store's
 * change feed says another writer changed documents of either kind (store_doc_news_kind of
 * each: every call while the feed is lost; the cells' heartbeats, kind "cell", and every other
 * kind are no news here), so a blob request reads nothing from the store, and a token deleted
 * or replaced, or a grant withdrawn, through any controller is refused by every one as soon as
 * its notification has arrived. Writes made here change the copy as they are made. */
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
#define CELLS_CATCH_UP_PER_S 50 /* reads before refusals, a second */
#define CELLS_CATCH_UP_BURST 20

struct api_cells {
    struct store *store;
    bool loaded;
    uint64_t news;  /* cells__news when the copy was read */
    uint64_t reads; /* times the copy was read from the store on news */
    struct rate_limit catch_up_rate; /* of reads before refusals (cells__catch_up) */
    uint64_t catch_ups;         /* reads before a refusal */
    uint64_t catch_ups_refused; /* refusals with no read: one was made too recently */
    json_t *tokens; /* cell id -> its document */
    json_t *grants; /* "CELL/DIGEST" -> its document */
};

static void cell_tokens__hash_hex(const char *token, char out[2 * crypto_generichash_BYTES + 1])
{
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)token, strlen(token), NULL, 0);
    sodium_bin2hex(out, 2 * crypto_generichash_BYTES + 1, hash, sizeof hash);
}

static int cells__keep(void *ctx, const char *id, const char *json)
{
    json_t *doc = json_loads(json, 0, NULL);
    if (json_is_object(doc))
        json_object_set_new(ctx, id, doc);
    else
        json_decref(doc);
    return 0;
}

/* A number that moves whenever another writer may have changed a token or a grant: the sum
 * of the two kinds' news, each of which only grows. */
static uint64_t cells__news(struct store *store)
{
    return store_doc_news_kind(store, CELL_TOKENS_KIND) +
           store_doc_news_kind(store, CELL_GRANTS_KIND);
}

/* Reads the copy whole from the store (fresh: from the database, not the store's own copy of
 * documents); false when the store cannot be read (then nothing is accepted). */
static bool cells__read(struct api_cells *cc, bool fresh)
{
    int (*each)(struct store *, const char *, int (*)(void *, const char *, const char *), void *) =
        fresh ? store_doc_each_fresh : store_doc_each;
    json_t *tokens = json_object(), *grants = json_object();
    if (each(cc->store, CELL_TOKENS_KIND, cells__keep, tokens) < 0 ||
        each(cc->store, CELL_GRANTS_KIND, cells__keep, grants) < 0) {
        json_decref(tokens);
        json_decref(grants);
        cc->loaded = false;
        log_warning("[API] cannot read the cells' tokens and grants: cells' requests are "
                    "refused until the store answers");
        return false;
    }
    json_decref(cc->tokens);
    json_decref(cc->grants);
    cc->tokens = tokens;
    cc->grants = grants;
    cc->loaded = true;
    return true;
}

/* The copy, read again when another writer may have changed tokens or grants; NULL when the
 * store cannot be read (then nothing is accepted). */
static struct api_cells *cells__current(struct api_cells *cc)
{
    if (!cc)
        return NULL;
    uint64_t news = cells__news(cc->store); /* news from now on calls for another read */
    if (cc->loaded && news == cc->news)
        return cc;
    if (!cells__read(cc, false))
        return NULL;
    cc->news = news;
    cc->reads++;
    return cc;
}

/* Before a refusal: another controller may have written the token or the grant a moment ago,
 * its news not yet here (a cell fetches from any controller as soon as the leader placed
 * it). The copy is read again from the database, at most CELLS_CATCH_UP_PER_S times a second
 * after a burst of CELLS_CATCH_UP_BURST, so that refused requests, made-up tokens included,
 * cost the database a bounded load; true when it was read. */
static bool cells__catch_up(struct api_cells *cc)
{
    if (!rate_take(&cc->catch_up_rate, time_mono_ms(), CELLS_CATCH_UP_PER_S,
                   CELLS_CATCH_UP_BURST)) {
        cc->catch_ups_refused++;
        return false;
    }
    cc->catch_ups++;
    return cells__read(cc, true);
}

uint64_t api_cells_reads(const struct api_cells *cc)
{
    return cc ? cc->reads : 0;
}

uint64_t api_cells_catch_ups(const struct api_cells *cc, uint64_t *refused)
{
    if (refused)
        *refused = cc ? cc->catch_ups_refused : 0;
    return cc ? cc->catch_ups : 0;
}

struct api_cells *api_cells_new(struct store *store)
{
    struct api_cells *cc = xcalloc(1, sizeof *cc);
    cc->store = store;
    cc->tokens = json_object();
    cc->grants = json_object();
    return cc;
}

void api_cells_free(struct api_cells *cc)
{
    if (!cc)
        return;
    json_decref(cc->tokens);
    json_decref(cc->grants);
    free(cc);
}

/* Whether the copy holds hash (hex) as cell's token. */
static bool cells__token_is(struct api_cells *cc, const char *cell, const char *hash)
{
    const char *want =
        json_string_value(json_object_get(json_object_get(cc->tokens, cell), "blake2b"));
    return want && strlen(want) == strlen(hash) && sodium_memcmp(want, hash, strlen(hash)) == 0;
}

int api_cell_token_check(struct api *api, const char *token, char *cell_id)
{
    char cell[AUTH_CELL_ID_LEN + 1];
    if (!auth_cell_token_parse(token, cell))
        return -EACCES;
    struct api_cells *cc = cells__current(api_cells_of(api));
    if (!cc)
        return -EACCES;
    char got[2 * crypto_generichash_BYTES + 1];
    cell_tokens__hash_hex(token, got);
    bool ok =
        cells__token_is(cc, cell, got) || (cells__catch_up(cc) && cells__token_is(cc, cell, got));
    if (!ok)
        return -EACCES;
    memcpy(cell_id, cell, sizeof cell);
    return 0;
}

static char *cell_tokens__grant_id(const char *cell_id, const char *digest)
{
    return xasprintf("%s/%s", cell_id, digest);
}

/* blobs (space-separated digests) as a JSON array; NULL when one is no digest. */
static json_t *cells__blob_list(const char *blobs)
{
    json_t *list = json_array();
    char one[80];
    for (const char *p = blobs; p && *p;) {
        size_t n = strcspn(p, " ");
        if (n > 0) {
            if (n >= sizeof one) {
                json_decref(list);
                return NULL;
            }
            memcpy(one, p, n);
            one[n] = '\0';
            if (!blob_digest_valid(one)) {
                json_decref(list);
                return NULL;
            }
            json_array_append_new(list, json_string(one));
        }
        p += n;
        p += strspn(p, " ");
    }
    return list;
}

int api_cell_grant(struct api *api, const char *cell_id, const char *digest, const char *blobs)
{
    if (!auth_cell_id_valid(cell_id) || !blob_digest_valid(digest))
        return -EINVAL;
    json_t *list = cells__blob_list(blobs);
    if (!list)
        return -EINVAL;
    struct api_cells *cc = cells__current(api_cells_of(api));
    char *id = cell_tokens__grant_id(cell_id, digest);
    int64_t now = time_now_ms();
    json_t *had = cc ? json_object_get(cc->grants, id) : NULL;
    if (had && json_integer_value(json_object_get(had, "until")) - now > API_CELL_GRANT_MS / 2 &&
        json_equal(json_object_get(had, "blobs"), list)) {
        json_decref(list); /* it stands long enough: no write */
        free(id);
        return 0;
    }
    json_t *doc =
        json_pack("{s:I,s:o}", "until", (json_int_t)(now + API_CELL_GRANT_MS), "blobs", list);
    char *text = json_dumps(doc, JSON_COMPACT);
    /* queued: the start goes on while the writer writes it, and this skiffd's reads see it */
    int rc = api_cells_of(api) ? store_doc_put_async(api_cells_of(api)->store, CELL_GRANTS_KIND, id,
                                                     text, NULL, NULL)
                               : -ENODEV;
    if (rc == 0 && cc)
        json_object_set(cc->grants, id, doc);
    json_decref(doc);
    free(text);
    free(id);
    return rc;
}

/* A withdrawal's write is over: only a failure is told (the grant then ends by itself). */
static void cells__withdrawn(void *ctx, int rc)
{
    char *id = ctx;
    if (rc < 0 && rc != -ENOENT)
        log_warning("[API] cannot withdraw the grant %s (cell/droplet; it ends by itself within "
                    "%d minutes): %s",
                    id, API_CELL_GRANT_MS / 60000, skiff_strerror(rc));
    free(id);
}

void api_cell_withdraw(struct api *api, const char *cell_id, const char *digest)
{
    struct api_cells *cc = api_cells_of(api);
    if (!cc || !auth_cell_id_valid(cell_id) || !blob_digest_valid(digest))
        return;
    char *id = cell_tokens__grant_id(cell_id, digest);
    json_object_del(cc->grants, id);
    /* queued, as the grant was: the scheduler's turn goes on while the writer deletes it (on
     * the embedded store, done is called, and id freed, before the call returns) */
    if (store_doc_delete_async(cc->store, CELL_GRANTS_KIND, id, cells__withdrawn, id) < 0)
        cells__withdrawn(id, -ECANCELED);
    log_debug("[API] cell %s may no longer read droplet %s: nothing of it runs there", cell_id,
              digest);
}

static bool cells__lists(json_t *grant, const char *digest)
{
    size_t k;
    json_t *e;
    json_array_foreach(json_object_get(grant, "blobs"), k, e)
    {
        if (json_is_string(e) && !strcmp(json_string_value(e), digest))
            return true;
    }
    return false;
}

/* Whether the copy lets cell_id read digest; ended grants met on the way are removed. */
static bool cells__grants(struct api_cells *cc, const char *cell_id, const char *digest)
{
    char prefix[AUTH_CELL_ID_LEN + 2];
    snprintf(prefix, sizeof prefix, "%s/", cell_id);
    int64_t now = time_now_ms();
    bool ok = false;
    char **ended = NULL;
    size_t nended = 0;
    const char *id;
    json_t *grant;
    json_object_foreach(cc->grants, id, grant)
    {
        if (!str_has_prefix(id, prefix))
            continue;
        if (json_integer_value(json_object_get(grant, "until")) <= now) {
            ended = xrealloc(ended, (nended + 1) * sizeof *ended);
            ended[nended++] = xstrdup(id);
        } else if (!strcmp(id + strlen(prefix), digest) || cells__lists(grant, digest)) {
            ok = true;
        }
    }
    for (size_t i = 0; i < nended; i++) { /* ended: they would only ever be refused again */
        if (store_doc_delete_async(cc->store, CELL_GRANTS_KIND, ended[i], NULL, NULL) == 0)
            json_object_del(cc->grants, ended[i]);
        free(ended[i]);
    }
    free(ended);
    return ok;
}

bool api_cell_may_read(struct api *api, const char *cell_id, const char *digest)
{
    if (!auth_cell_id_valid(cell_id) || !blob_digest_valid(digest))
        return false;
    struct api_cells *cc = cells__current(api_cells_of(api));
    if (!cc)
        return false;
    return cells__grants(cc, cell_id, digest) ||
           (cells__catch_up(cc) && cells__grants(cc, cell_id, digest));
}

/* ---- endpoints (platform admin) ---------------------------------------------------------------
 */

/* POST /v1/cell_tokens {"cell": ID}: a new token for the cell, shown once; one it had before is
 * refused from now on. */
static void cell_tokens__create(struct api_request *req, void *ctx)
{
    struct api_cells *cc = ctx;
    struct store *store = cc->store;
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
    int rc = store_doc_put(store, CELL_TOKENS_KIND, cell, text);
    free(text);
    if (rc == 0)
        json_object_set(cc->tokens, cell, doc);
    json_decref(doc);
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
    struct api_cells *cc = ctx;
    struct store *store = cc->store;
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
    struct api_cells *cc = ctx;
    struct store *store = cc->store;
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
    json_object_del(cc->tokens, cell);
    if (store_doc_each(store, CELL_GRANTS_KIND, cell_tokens__grant_of, &l) == 0)
        for (size_t i = 0; i < l.n; i++)
            if (store_doc_delete(store, CELL_GRANTS_KIND, l.ids[i]) == 0)
                json_object_del(cc->grants, l.ids[i]);
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
    struct api_cells *cc = api_cells_new(store);
    api_cells_attach(api, cc);
    api_route_add(api, "POST", "/v1/cell_tokens", API_PERM(AUTH_PERM_ADMIN), cell_tokens__create,
                  cc);
    api_route_add(api, "GET", "/v1/cell_tokens", API_PERM(AUTH_PERM_ADMIN), cell_tokens__list, cc);
    api_route_add(api, "DELETE", "/v1/cell_tokens/*", API_PERM(AUTH_PERM_ADMIN),
                  cell_tokens__delete, cc);
}
