/* The API: routing, authentication and authorisation, responses and JSON helpers, on the
 * HTTP server of src/http (which owns connections, parsing, bodies and timeouts).
 *
 * Every request passes through api__on_head once its head is in: the route is matched, the
 * caller authenticated and authorised for the route's permission in its org/space, and the
 * body limit set, before any body is read; the handler runs once the body is in. */
#include "api/api.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "http/server.h"
#include "services/services.h"
#include "store/store.h"

#define API_MAX_PARAMS 8

/* The listeners' tags: the API, and the containers' publish endpoint. */
enum { API_LISTENER_API, API_LISTENER_PUBLISH };

struct api_route {
    char method[16];
    char *pattern;
    char **segs;
    size_t nsegs;
    int flags;
    api_handler_fn fn;
    void *ctx;
    struct api_route *next;
};

#define API_ROUTE_BUCKETS 12

struct api {
    uv_loop_t *loop;
    struct http_server *server;
    char *publish_addr;
    char *tls_addr;
    struct tls_store *tls;
    char *home;
    char *addr;
    char *url;
    unsigned char admin_hash[crypto_generichash_BYTES];
    unsigned char instance_key[crypto_auth_hmacsha256_KEYBYTES];
    uint64_t upload_max;
    struct api_route *routes; /* in the order they were added: the first that matches wins */
    struct api_route **routes_tail;
    /* the same routes by their number of segments (the last: that many or more), in the same
     * order: a request walks only those that can match, in an array */
    struct api_route **by_nsegs[API_ROUTE_BUCKETS];
    size_t nby_nsegs[API_ROUTE_BUCKETS];
    api_instance_live_fn instance_live;
    void *instance_live_ctx;
    api_binding_check_fn binding_check;
    void *binding_check_ctx;
    api_audit_fn audit;
    void *audit_ctx;
    struct auth *auth;
    struct store *store;
    struct api_cells *cells; /* cells' tokens and grants (cell_tokens.c) */
};

/* An HTTP request (first, so the server's request is the API's) with what the API learns of it
 * from its head. */
struct api_request {
    struct http_request http;
    struct api *api;
    const struct api_route *route;
    const char *params[API_MAX_PARAMS];
    unsigned nparams;
    char caller_app[37];
    char caller_instance[37];
    char caller_name[64];
    bool by_instance;
    char topic_limit[64]; /* a service-binding token's one topic, else "" */
    struct auth_principal principal;
    char org_guid[AUTH_GUID_LEN + 1];   /* "" when the route is platform-wide */
    char space_guid[AUTH_GUID_LEN + 1]; /* "" unless the route is in a space */
    char **scratch; /* strings handed out by accessors, freed with the request */
    size_t nscratch;
    struct api_auth_wait *auth_wait; /* its bearer token looked for in the store */
    struct api_app_read *app_reads;  /* apps read for it off the loop (api_request_app_find) */
    struct api_user_read *user_read; /* a user name looked for (api_request_user_find) */
};

/* A user name looked for in the store for a request, off the loop: the handler runs again
 * once the read is made, and finds what the copy then holds. */
struct api_user_read {
    struct api_request *req; /* NULL once the request is gone */
    bool made;
    bool calling; /* answered during the call: the handler goes on, not again */
};

/* An app read for a request from the database, off the loop: kept with the request, so that
 * its handler, run again, takes the answer. */
struct api_app_read {
    struct api_request *req; /* NULL once the request is gone */
    char *space;
    char *name;
    bool made; /* the read is made: rc, app */
    int rc;
    struct store_app *app;
    struct api_app_read *next;
};

/* A request whose bearer token this controller's copy lacks (made through another one a
 * moment ago): the keyed read for it is queued on the store's writer, and the request is
 * authorised and run once both that read is made and its body is read (on_request). */
struct api_auth_wait {
    struct api_request *req; /* NULL once the request is gone */
    char *token;             /* NULL for a refusal's */
    int rc;
    bool looked;    /* the read is made: rc */
    bool body_read; /* on_request ran */
    bool refused;   /* authorised, refused: auth_catch_up_denied_async's reads, then again */
};

static void api__auth_wait_free(struct api_auth_wait *w)
{
    if (w->token) {
        sodium_memzero(w->token, strlen(w->token));
        free(w->token);
    }
    free(w);
}

static void api__on_head(struct http_request *hreq, void *ctx);
static void api__on_request(struct http_request *hreq, void *ctx);
static void api__on_free(struct http_request *hreq, void *ctx);

/* ---- small helpers ---------------------------------------------------------------------- */

static char *api__scratch(struct api_request *req, char *s)
{
    req->scratch = xrealloc(req->scratch, (req->nscratch + 1) * sizeof *req->scratch);
    req->scratch[req->nscratch++] = s;
    return s;
}
/* ---- life of the API --------------------------------------------------------------------- */

/* Loads the key that signs instance tokens, or makes one. It must be readable by skiffd only:
 * an existing key file that is not 0600 and owned by skiffd's user is made so (and said); one
 * that is not a regular file of the right size is replaced (tokens made with it stop working). */
static int api__load_key(const char *path, unsigned char *key, size_t len)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (size_t)st.st_size == len) {
        if (st.st_uid != geteuid() || st.st_gid != getegid()) {
            if (fchown(fd, geteuid(), getegid()) < 0) {
                int rc = -errno;
                log_warning("%s is owned by uid %u, not skiffd's: %s", path, (unsigned)st.st_uid,
                            skiff_strerror(-errno));
                close(fd);
                return rc;
            }
            log_warning("%s was owned by uid %u: now skiffd's own", path, (unsigned)st.st_uid);
        }
        if ((st.st_mode & 07777) != 0600) {
            if (fchmod(fd, 0600) < 0) {
                int rc = -errno;
                close(fd);
                return rc;
            }
            log_warning("%s had mode %04o: now 0600 (readable by skiffd only)", path,
                        (unsigned)(st.st_mode & 07777));
        }
        size_t got = 0;
        while (got < len) {
            ssize_t r = read(fd, key + got, len - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        close(fd);
        if (got == len)
            return 0;
    } else if (fd >= 0) {
        close(fd);
    }
    /* missing, a symlink, not a regular file, or the wrong size: a new key */
    unlink(path);
    randombytes_buf(key, len);
    mode_t old = umask(077);
    int rc = file_write_atomic(path, key, len, 0600);
    umask(old);
    if (rc == 0 && chmod(path, 0600) < 0)
        rc = -errno;
    return rc;
}

int api_new(uv_loop_t *loop, const struct api_config *cfg, struct api **out)
{
    if (sodium_init() < 0)
        return -EIO;
    struct api *api = xcalloc(1, sizeof *api);
    api->loop = loop;
    api->home = xstrdup(cfg->home);
    api->addr = xstrdup(cfg->addr);
    api->publish_addr = cfg->publish_addr ? xstrdup(cfg->publish_addr) : NULL;
    api->tls_addr = cfg->tls_addr && *cfg->tls_addr && cfg->tls ? xstrdup(cfg->tls_addr) : NULL;
    api->tls = cfg->tls;
    api->url = xasprintf("http://%s", cfg->addr);
    api->upload_max = cfg->upload_max ? cfg->upload_max : (1ull << 30);
    api->auth = cfg->auth;
    api->store = cfg->store;
    api->routes_tail = &api->routes;
    crypto_generichash(api->admin_hash, sizeof api->admin_hash,
                       (const unsigned char *)cfg->admin_token, strlen(cfg->admin_token), NULL, 0);
    char *key_path = xasprintf("%s/instance_token.key", cfg->home);
    int rc = api__load_key(key_path, api->instance_key, sizeof api->instance_key);
    free(key_path);
    char *tmp = xasprintf("%s/tmp", cfg->home);
    struct http_server_config scfg = {
        .tmp_dir = tmp,
        .request_size = sizeof(struct api_request),
        .name = "skiffd",
        .max_connections = cfg->max_connections ? cfg->max_connections : API_MAX_CONNECTIONS,
        .max_connections_per_client = cfg->max_connections_per_client,
        .on_head = api__on_head,
        .on_request = api__on_request,
        .on_free = api__on_free,
        .ctx = api,
    };
    if (rc == 0)
        rc = http_server_new(loop, &scfg, &api->server);
    free(tmp);
    if (rc < 0) {
        api_free(api);
        return rc;
    }
    *out = api;
    return 0;
}

uv_loop_t *api_loop(struct api *api)
{
    return api->loop;
}
const char *api_url(struct api *api)
{
    return api->url;
}

unsigned api_connections(const struct api *api)
{
    return http_server_connections(api->server);
}

void api_set_instance_check(struct api *api, api_instance_live_fn fn, void *ctx)
{
    api->instance_live = fn;
    api->instance_live_ctx = ctx;
}

void api_set_binding_check(struct api *api, api_binding_check_fn fn, void *ctx)
{
    api->binding_check = fn;
    api->binding_check_ctx = ctx;
}

const char *api_request_topic_limit(const struct api_request *req)
{
    return req->topic_limit[0] ? req->topic_limit : NULL;
}

int api_listen(struct api *api, char *err, size_t errsize)
{
    if (!http_server_addr_valid(api->addr)) {
        snprintf(err, errsize, "invalid API address \"%s\": use HOST:PORT", api->addr);
        return -EINVAL;
    }
    int rc = http_server_listen(api->server, api->addr, API_LISTENER_API);
    if (rc < 0) {
        snprintf(err, errsize,
                 "cannot listen on %s: %s (another skiffd running? set "
                 "SKIFF_API_ADDR or --api-addr)",
                 api->addr, skiff_strerror(rc));
        return rc;
    }
    if (api->publish_addr &&
        (rc = http_server_listen(api->server, api->publish_addr, API_LISTENER_PUBLISH)) < 0) {
        snprintf(err, errsize, "cannot listen for publishing on %s: %s", api->publish_addr,
                 skiff_strerror(rc));
        return rc;
    }
    if (api->tls_addr &&
        (rc = http_server_listen_tls(api->server, api->tls_addr, API_LISTENER_API, api->tls)) < 0) {
        snprintf(err, errsize,
                 "cannot listen for HTTPS on %s: %s (set SKIFF_API_TLS_ADDR or --api-tls-addr; "
                 "\"\" for none)",
                 api->tls_addr, skiff_strerror(rc));
        return rc;
    }
    return 0;
}

void api_cells_attach(struct api *api, struct api_cells *cells)
{
    api_cells_free(api->cells);
    api->cells = cells;
}

struct api_cells *api_cells_of(struct api *api)
{
    return api ? api->cells : NULL;
}

void api_close(struct api *api, void (*close_cb)(void *arg), void *arg)
{
    http_server_close(api->server, close_cb, arg);
}

void api_free(struct api *api)
{
    if (!api)
        return;
    api_cells_free(api->cells);
    struct api_route *r = api->routes;
    while (r) {
        struct api_route *next = r->next;
        free(r->segs);
        free(r->pattern);
        free(r);
        r = next;
    }
    for (size_t i = 0; i < API_ROUTE_BUCKETS; i++)
        free(api->by_nsegs[i]);
    sodium_memzero(api->instance_key, sizeof api->instance_key);
    http_server_free(api->server);
    free(api->home);
    free(api->addr);
    free(api->publish_addr);
    free(api->tls_addr);
    free(api->url);
    free(api);
}

/* ---- routes ------------------------------------------------------------------------------- */

int api_route_add(struct api *api, const char *method, const char *pattern, int flags,
                  api_handler_fn handler, void *ctx)
{
    if (!method || strlen(method) >= 16 || !pattern || pattern[0] != '/' || !handler)
        return -EINVAL;
    struct api_route *r = xcalloc(1, sizeof *r);
    snprintf(r->method, sizeof r->method, "%s", method);
    r->pattern = xstrdup(pattern);
    r->segs = http_path_split(pattern, &r->nsegs, false);
    /* a literal segment another route has at the same place becomes that route's string, so
     * that matching compares each distinct one once per request (api__match) */
    for (size_t i = 0; i < r->nsegs; i++)
        for (const struct api_route *o = api->routes; o; o = o->next)
            if (i < o->nsegs && !strcmp(o->segs[i], r->segs[i])) {
                r->segs[i] = o->segs[i];
                break;
            }
    r->flags = flags;
    r->fn = handler;
    r->ctx = ctx;
    *api->routes_tail = r;
    api->routes_tail = &r->next;
    size_t k = r->nsegs < API_ROUTE_BUCKETS ? r->nsegs : API_ROUTE_BUCKETS - 1;
    api->by_nsegs[k] = xrealloc(api->by_nsegs[k], (api->nby_nsegs[k] + 1) * sizeof(r));
    api->by_nsegs[k][api->nby_nsegs[k]++] = r;
    return 0;
}

json_t *api_routes_json(struct api *api)
{
    static const char *const scopes[] = {"platform", "space", "space (an app's)", "org",
                                         "org and space"};
    json_t *list = json_array();
    for (const struct api_route *r = api->routes; r; r = r->next) {
        struct buf path = {0};
        for (size_t i = 0; i < r->nsegs; i++) {
            buf_puts(&path, "/");
            buf_puts(&path, r->segs[i]);
        }
        unsigned scope = (unsigned)(r->flags & API_SCOPE_MASK) >> 5;
        json_array_append_new(list,
                              json_pack("{s:s, s:s%, s:s, s:s}", "method", r->method, "path",
                                        path.data ? path.data : "/", path.len, "permission",
                                        auth_perm_name((enum auth_perm)(r->flags & API_PERM_MASK)),
                                        "scope", scope < ARRAY_SIZE(scopes) ? scopes[scope] : "?"));
        buf_free(&path);
    }
    return list;
}

/* The route for the request, or NULL with *path_known telling 404 from 405. */
static const struct api_route *api__match(struct api *api, struct api_request *req,
                                          bool *path_known)
{
    /* Every request is matched against the whole table, in order. Routes share their literal
     * segments (api_route_add), so a comparison made for one route at a place holds for every
     * route with the same string there: remembered, each distinct segment is compared once. */
    enum { MEMO = 8 };
    const char *memo_want[MEMO] = {NULL};
    bool memo_equal[MEMO];
    *path_known = false;
    size_t k = req->http.nsegs < API_ROUTE_BUCKETS ? req->http.nsegs : API_ROUTE_BUCKETS - 1;
    for (size_t j = 0; j < api->nby_nsegs[k]; j++) {
        const struct api_route *r = api->by_nsegs[k][j];
        if (r->nsegs != req->http.nsegs)
            continue;
        unsigned np = 0;
        size_t i;
        for (i = 0; i < r->nsegs; i++) {
            const char *want = r->segs[i], *got = req->http.segs[i];
            bool equal;
            if (want[0] == '*' && want[1] == '\0') {
                if (np < API_MAX_PARAMS)
                    req->params[np++] = got;
                continue;
            }
            if (i < MEMO && memo_want[i] == want) {
                equal = memo_equal[i];
            } else {
                equal = want[0] == got[0] && !strcmp(want, got);
                if (i < MEMO) {
                    memo_want[i] = want;
                    memo_equal[i] = equal;
                }
            }
            if (!equal)
                break;
        }
        if (i < r->nsegs)
            continue;
        *path_known = true;
        if (strcmp(r->method, req->http.method) &&
            !(strcmp(req->http.method, "HEAD") == 0 && strcmp(r->method, "GET") == 0))
            continue;
        req->nparams = np;
        return r;
    }
    return NULL;
}

/* ---- auth --------------------------------------------------------------------------------- */

#define API_INSTANCE_TOKEN_PREFIX "skiffi."

#define API_GUID_LEN 36

/* skiffi.APP.INSTANCE.MAC, MAC = HMAC-SHA256 of "APP.INSTANCE" under the instance key */
void api_instance_token(struct api *api, const char *app_guid, const char *instance_guid, char *out,
                        size_t size)
{
    char subject[2 * API_GUID_LEN + 2];
    int n = snprintf(subject, sizeof subject, "%s.%s", app_guid, instance_guid);
    if (n < 0 || (size_t)n >= sizeof subject)
        n = (int)strlen(subject);
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256(mac, (const unsigned char *)subject, (size_t)n, api->instance_key);
    char hex[2 * sizeof mac + 1];
    sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
    snprintf(out, size, API_INSTANCE_TOKEN_PREFIX "%s.%s", subject, hex);
    sodium_memzero(mac, sizeof mac);
}

static void api__token_looked(void *ctx, int rc);

#define API_TOKEN_INVALID                                                                          \
    "the bearer token is not valid (unknown, ended or expired): log in again with `skiff "         \
    "login`"

/* Fills req->principal from the bearer token: 0, or -1 missing, -2 not valid (unknown,
 * ended, expired), -3 an instance token that was good but is no longer (its instance
 * stopped, its app was stopped or deleted), -4 a user's token this copy lacks, looked for
 * in the store (req->auth_wait; decided once the read is made). */
static int api__authenticate(struct api *api, struct api_request *req)
{
    struct auth_principal *p = &req->principal;
    memset(p, 0, sizeof *p);
    p->space_role = -1;
    const char *h = api_request_header(req, "authorization");
    if (!h)
        return -1;
    if (strncasecmp(h, "Bearer ", 7))
        return -2;
    const char *token = h + 7;
    while (*token == ' ')
        token++;
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)token, strlen(token), NULL, 0);
    if (sodium_memcmp(hash, api->admin_hash, sizeof hash) == 0) {
        p->kind = AUTH_LOCAL_ADMIN;
        p->admin = true;
        return 0;
    }
    if (str_has_prefix(token, API_INSTANCE_TOKEN_PREFIX)) {
        const char *subject = token + strlen(API_INSTANCE_TOKEN_PREFIX);
        size_t len = strlen(subject);
        if (len == 2 * API_GUID_LEN + 2 + 2 * crypto_auth_hmacsha256_BYTES &&
            subject[API_GUID_LEN] == '.' && subject[2 * API_GUID_LEN + 1] == '.') {
            char app[API_GUID_LEN + 1], inst[API_GUID_LEN + 1];
            memcpy(app, subject, API_GUID_LEN);
            app[API_GUID_LEN] = '\0';
            memcpy(inst, subject + API_GUID_LEN + 1, API_GUID_LEN);
            inst[API_GUID_LEN] = '\0';
            char expect[200];
            api_instance_token(api, app, inst, expect, sizeof expect);
            if (strlen(expect) == strlen(token) &&
                sodium_memcmp(expect, token, strlen(token)) == 0) {
                if (!api->instance_live ||
                    !api->instance_live(api->instance_live_ctx, app, inst, req->caller_name,
                                        sizeof req->caller_name, p->space_guid))
                    return -3;
                snprintf(req->caller_app, sizeof req->caller_app, "%s", app);
                snprintf(req->caller_instance, sizeof req->caller_instance, "%s", inst);
                req->by_instance = true;
                p->kind = AUTH_INSTANCE;
                return 0;
            }
        }
    }
    if (str_has_prefix(token, AUTH_CELL_TOKEN_PREFIX)) {
        /* against the copy the change feed keeps current: a token deleted or replaced
         * through any controller is refused by every one at once */
        if (api_cell_token_check(api, token, req->caller_name) < 0)
            return -2;
        p->kind = AUTH_CELL;
        return 0;
    }
    if (str_has_prefix(token, SERVICES_BINDING_TOKEN_PREFIX)) {
        /* publishing only (as an instance's), to the binding's one topic */
        if (!api->binding_check ||
            !api->binding_check(api->binding_check_ctx, token, req->topic_limit, p->space_guid,
                                req->caller_name, sizeof req->caller_name))
            return -2;
        p->kind = AUTH_INSTANCE;
        return 0;
    }
    if (!api->auth)
        return -2;
    if (auth_authenticate_cached(api->auth, token, p) == 0)
        return 0;
    struct api_auth_wait *w = xcalloc(1, sizeof *w);
    w->req = req;
    w->token = xstrdup(token);
    int rc = auth_authenticate_lookup_async(api->auth, token, api__token_looked, w);
    if (rc != 0) { /* known now (1), or nothing to look for */
        api__auth_wait_free(w);
        return rc == 1 && auth_authenticate_cached(api->auth, token, p) == 0 ? 0 : -2;
    }
    req->auth_wait = w;
    return -4;
}

static bool api__looks_like_guid(const char *s)
{
    if (!s || strlen(s) != API_GUID_LEN)
        return false;
    for (size_t i = 0; i < API_GUID_LEN; i++)
        if (!(i == 8 || i == 13 || i == 18 || i == 23 ? s[i] == '-'
                                                      : isxdigit((unsigned char)s[i])))
            return false;
    return true;
}

/* Finds the org/space the route's permission is decided in. SKIFF_OK, or the error the caller
 * answers early (*msg set). */
static enum skiff_err api__scope(struct api *api, struct api_request *req, int scope, char *msg,
                                 size_t msgsize)
{
    const struct auth_principal *p = &req->principal;
    const struct auth_space *space = NULL;
    const struct auth_org *org = NULL;
    switch (scope) {
    case API_SCOPE_NONE:
        return SKIFF_OK;
    case API_SCOPE_APP:
    case API_SCOPE_SPACE: {
        const char *ref = api_request_query(req, "space");
        if (ref && *ref) {
            space = auth_space_resolve(api->auth, ref);
            if (!space) {
                snprintf(msg, msgsize,
                         "no space \"%s\" (write ORG/SPACE; `skiff spaces` lists "
                         "the spaces of an org)",
                         ref);
                return SKIFF_E_NOT_FOUND;
            }
        } else if (scope == API_SCOPE_APP && api->store &&
                   api__looks_like_guid(api_request_param(req, 0))) {
            struct store_app *app = NULL;
            if (store_app_get(api->store, api_request_param(req, 0), &app) == 0) {
                space = auth_space_get(api->auth, app->space_guid);
                store_app_free(app);
            }
        }
        if (!space)
            space = auth_space_get(api->auth,
                                   p->space_guid[0] ? p->space_guid : AUTH_DEFAULT_SPACE_GUID);
        if (!space) {
            snprintf(msg, msgsize,
                     "no space given, and the default space default/dev is gone: "
                     "add ?space=ORG/SPACE (`skiff target -o ORG -s SPACE`)");
            return SKIFF_E_NOT_FOUND;
        }
        org = auth_org_find(api->auth, space->org_guid);
        break;
    }
    case API_SCOPE_ORG:
    case API_SCOPE_ORG_SPACE: {
        const char *name = api_request_param(req, 0);
        org = name ? auth_org_find(api->auth, name) : NULL;
        if (!org) {
            snprintf(msg, msgsize, "no org \"%s\": `skiff orgs` lists yours", name ? name : "");
            return SKIFF_E_NOT_FOUND;
        }
        if (scope == API_SCOPE_ORG_SPACE) {
            const char *sname = api_request_param(req, 1);
            space = sname ? auth_space_find(api->auth, org->guid, sname) : NULL;
            if (!space) {
                snprintf(msg, msgsize, "no space \"%s\" in org %s: `skiff spaces` lists them",
                         sname ? sname : "", org->name);
                return SKIFF_E_NOT_FOUND;
            }
        }
        break;
    }
    default:
        return SKIFF_OK;
    }
    if (org)
        snprintf(req->org_guid, sizeof req->org_guid, "%s", org->guid);
    if (space)
        snprintf(req->space_guid, sizeof req->space_guid, "%s", space->guid);
    return SKIFF_OK;
}

/* Whether the caller may use the route: SKIFF_OK, or why not with msg set, as this copy of
 * users, roles, orgs and spaces says. */
static enum skiff_err api__authorize_now(struct api *api, struct api_request *req, char *msg,
                                         size_t msgsize)
{
    int perm = req->route->flags & API_PERM_MASK;
    int scope = req->route->flags & API_SCOPE_MASK;
    if (perm == AUTH_PERM_PUBLIC)
        return SKIFF_OK;
    if (!api->auth) {
        /* without users, only the admin token and instances' publishing exist */
        if (req->principal.kind == AUTH_LOCAL_ADMIN)
            return SKIFF_OK;
        if (perm == AUTH_PERM_PUBLISH && req->principal.kind == AUTH_INSTANCE)
            return SKIFF_OK;
        if (perm == AUTH_PERM_BLOBS && req->principal.kind == AUTH_CELL)
            return SKIFF_OK;
        snprintf(msg, msgsize, "an instance token may only publish events");
        return SKIFF_E_FORBIDDEN;
    }
    enum skiff_err err = api__scope(api, req, scope, msg, msgsize);
    if (err)
        return err;
    int rc = auth_check(api->auth, &req->principal, (enum auth_perm)perm,
                        req->org_guid[0] ? req->org_guid : NULL,
                        req->space_guid[0] ? req->space_guid : NULL);
    if (rc == 0)
        return SKIFF_OK;
    const struct auth_space *space =
        req->space_guid[0] ? auth_space_get(api->auth, req->space_guid) : NULL;
    const struct auth_org *org = req->org_guid[0] ? auth_org_find(api->auth, req->org_guid) : NULL;
    if (rc == -ENOENT) {
        if (space)
            snprintf(msg, msgsize,
                     "no space %s/%s that you can see (`skiff target` shows "
                     "where you are; `skiff spaces` lists yours)",
                     org ? org->name : "?", space->name);
        else if (org)
            snprintf(msg, msgsize, "no org \"%s\": `skiff orgs` lists yours", org->name);
        else
            snprintf(msg, msgsize, "not found");
        return SKIFF_E_NOT_FOUND;
    }
    if (req->principal.kind == AUTH_INSTANCE)
        snprintf(msg, msgsize, "an instance token may only publish events, in its own space");
    else if (perm == AUTH_PERM_ADMIN)
        snprintf(msg, msgsize, "only a platform admin may do this");
    else {
        char roles[160] = "";
        unsigned mask = auth_perm_roles((enum auth_perm)perm);
        for (int r = 0; r < AUTH_ROLE_COUNT; r++)
            if (mask >> r & 1) {
                size_t used = strlen(roles);
                snprintf(roles + used, sizeof roles - used, "%s%s", used ? ", " : "",
                         auth_role_name((enum auth_role)r));
            }
        snprintf(msg, msgsize, "your roles%s%s%s%s do not allow this (%s needs one of: %s)",
                 space || org ? " in " : "", org ? org->name : "", space ? "/" : "",
                 space ? space->name : "", auth_perm_name((enum auth_perm)perm), roles);
    }
    return SKIFF_E_FORBIDDEN;
}

/* Whether the caller may use the route; a refusal is decided again once when the copy was
 * behind another skiffd's change on a shared store (a role given, a space made a moment ago
 * through another controller behind the same address): true when that was queued
 * (auth_catch_up_denied_async: the request waits in req->auth_wait, w reused when given),
 * and the request is authorised again once the reads are back. */
static bool api__refusal_wait(struct api *api, struct api_request *req, enum skiff_err err,
                              struct api_auth_wait *w)
{
    if ((err != SKIFF_E_FORBIDDEN && err != SKIFF_E_NOT_FOUND) || !api->auth)
        return false;
    bool given = w != NULL;
    if (!w)
        w = xcalloc(1, sizeof *w);
    w->req = req;
    w->refused = true;
    w->looked = false;
    req->auth_wait = w; /* before the call: its answer may come during it */
    if (auth_catch_up_denied_async(api->auth, api__token_looked, w) != 0) {
        if (!given) {
            req->auth_wait = NULL;
            api__auth_wait_free(w);
        }
        return false;
    }
    return true;
}

/* ---- writing ------------------------------------------------------------------------------ */

/* ---- answering ---------------------------------------------------------------------------- */

/* Changes are told to the audit hook once answered: what the caller changed, not what it
 * tried (a refused request changed nothing); publishing is data, not a change. */
static void api__audit(struct api *api, struct api_request *req)
{
    if (!api->audit || !req->route || req->http.status >= 400 || req->http.status == 0 ||
        !strcmp(req->http.method, "GET") || !strcmp(req->http.method, "HEAD"))
        return;
    int perm = req->route->flags & API_PERM_MASK;
    if (perm == AUTH_PERM_PUBLIC || perm == AUTH_PERM_PUBLISH)
        return;
    api->audit(api->audit_ctx, req, req->http.status);
}

static void api__app_read_free(struct api_app_read *r)
{
    free(r->space);
    free(r->name);
    store_app_free(r->app);
    free(r);
}

/* The request is freed: the answers read for it go, and a read still to come lets itself go. */
static void api__app_reads_drop(struct api_request *req)
{
    while (req->app_reads) {
        struct api_app_read *r = req->app_reads;
        req->app_reads = r->next;
        if (r->made)
            api__app_read_free(r);
        else
            r->req = NULL;
    }
}

/* The server is done with the request: audit what it changed, free what the API added. */
static void api__on_free(struct http_request *hreq, void *ctx)
{
    struct api_request *req = (struct api_request *)hreq;
    api__app_reads_drop(req);
    if (req->user_read && req->user_read->made)
        free(req->user_read);
    else if (req->user_read)
        req->user_read->req = NULL; /* its read's callback lets it go */
    if (req->auth_wait) {
        struct api_auth_wait *w = req->auth_wait;
        if (w->looked) {
            api__auth_wait_free(w);
        } else {
            w->req = NULL; /* its read's callback lets it go */
        }
    }
    if (hreq->state == HTTP_REQ_DONE)
        api__audit(ctx, req);
    for (size_t i = 0; i < req->nscratch; i++)
        free(req->scratch[i]);
    free(req->scratch);
}

void api_response_header(struct api_request *req, const char *name, const char *value)
{
    http_respond_header(&req->http, name, value);
}

void api_respond(struct api_request *req, int status, const char *content_type, const void *body,
                 size_t len)
{
    http_respond(&req->http, status, content_type, body, len);
}

void api_upgrade(struct api_request *req, const char *protocol, api_upgrade_fn taken, void *ctx)
{
    http_upgrade(&req->http, protocol, taken, ctx);
}

void api_respond_json(struct api_request *req, int status, json_t *body)
{
    if (!body) {
        api_respond(req, status, NULL, NULL, 0);
        return;
    }
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) {
        api_respond_error(req, SKIFF_E_INTERNAL, "cannot encode the response");
        return;
    }
    size_t len = strlen(text);
    text = xrealloc(text, len + 2);
    text[len++] = '\n';
    api_respond(req, status, "application/json", text, len);
    free(text);
}

void api_respond_error(struct api_request *req, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    http_respond_verror(&req->http, err, fmt, ap);
    va_end(ap);
}

void api_stream_begin(struct api_request *req, int status, const char *content_type)
{
    http_stream_begin(&req->http, status, content_type);
}

int api_stream_write(struct api_request *req, const void *data, size_t len)
{
    return http_stream_write(&req->http, data, len);
}

size_t api_stream_pending(const struct api_request *req)
{
    return http_stream_pending(&req->http);
}

void api_stream_end(struct api_request *req)
{
    http_stream_end(&req->http);
}

/* ---- request accessors -------------------------------------------------------------------- */

const char *api_request_method(const struct api_request *req)
{
    return req->http.method;
}
const char *api_request_path(const struct api_request *req)
{
    return req->http.path;
}

const char *api_request_param(const struct api_request *req, unsigned n)
{
    return n < req->nparams ? req->params[n] : NULL;
}

const char *api_request_query(const struct api_request *req, const char *name)
{
    char *v = http_request_query(&req->http, name);
    return v ? api__scratch((struct api_request *)req, v) : NULL;
}

const char *api_request_header(const struct api_request *req, const char *name)
{
    return http_request_header(&req->http, name);
}

void api_request_headers_each(const struct api_request *req,
                              void (*fn)(void *ctx, const char *name, const char *value), void *ctx)
{
    for (size_t i = 0; i < req->http.nheaders; i++)
        fn(ctx, req->http.headers[i].name, req->http.headers[i].value);
}

const char *api_request_body(const struct api_request *req, size_t *len)
{
    if (req->route && (req->route->flags & API_BODY_FILE))
        return NULL;
    if (len)
        *len = req->http.body.len;
    return req->http.body.data ? req->http.body.data : "";
}

const char *api_request_body_path(const struct api_request *req)
{
    return req->http.body_size ? req->http.body_path : NULL;
}

uint64_t api_request_body_size(const struct api_request *req)
{
    return req->http.body_size;
}

const char *api_request_caller_app(const struct api_request *req)
{
    return req->by_instance ? req->caller_app : NULL;
}

const char *api_request_caller_instance(const struct api_request *req)
{
    return req->by_instance ? req->caller_instance : NULL;
}

const char *api_request_caller_name(const struct api_request *req)
{
    return req->by_instance ? req->caller_name : NULL;
}

const char *api_request_cell(const struct api_request *req)
{
    return req->principal.kind == AUTH_CELL ? req->caller_name : NULL;
}

const char *api_request_route(const struct api_request *req)
{
    return req->route ? req->route->pattern : NULL;
}

void api_set_audit(struct api *api, api_audit_fn fn, void *ctx)
{
    api->audit = fn;
    api->audit_ctx = ctx;
}

const struct auth_principal *api_request_principal(const struct api_request *req)
{
    return &req->principal;
}

const char *api_request_org(const struct api_request *req)
{
    return req->org_guid[0] ? req->org_guid : NULL;
}

const char *api_request_space(const struct api_request *req)
{
    return req->space_guid[0] ? req->space_guid : NULL;
}

struct auth *api_auth(struct api *api)
{
    return api->auth;
}

struct auth *api_request_auth(const struct api_request *req)
{
    return req->api->auth;
}

const char *api_request_peer(const struct api_request *req)
{
    return http_request_peer(&req->http);
}

void api_request_on_abort(struct api_request *req, void (*fn)(void *ctx), void *ctx)
{
    http_request_on_abort(&req->http, fn, ctx);
}

bool api_request_aborted(const struct api_request *req)
{
    return req->http.aborted;
}

json_t *api_request_json_object(struct api_request *req)
{
    size_t len = 0;
    const char *body = api_request_body(req, &len);
    if (!body || len == 0) {
        api_respond_error(req, SKIFF_E_BAD_JSON, "the request needs a JSON object as its body");
        return NULL;
    }
    json_error_t jerr;
    json_t *obj = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!obj) {
        api_respond_error(req, SKIFF_E_BAD_JSON,
                          "the body is not valid JSON (line %d, column %d: %s); send a JSON "
                          "object",
                          jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(obj)) {
        json_decref(obj);
        api_respond_error(req, SKIFF_E_BAD_JSON, "the body must be a JSON object");
        return NULL;
    }
    return obj;
}

bool api_json_check_fields(struct api_request *req, json_t *obj, const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (!strcmp(*a, key)) {
                ok = true;
                break;
            }
        if (!ok) {
            struct buf list = {0};
            for (const char *const *a = allowed; *a; a++)
                buf_printf(&list, "%s%s", a == allowed ? "" : ", ", *a);
            api_respond_error(req, SKIFF_E_UNKNOWN_FIELD, "unknown field \"%s\"; known fields: %s",
                              key, list.data ? list.data : "none");
            buf_free(&list);
            return false;
        }
    }
    return true;
}

/* ---- parsing ------------------------------------------------------------------------------ */

/* ---- the head: route, authenticate, authorise, body limit ---------------------------------- */

static void api__on_head(struct http_request *hreq, void *ctx)
{
    struct api *api = ctx;
    struct api_request *req = (struct api_request *)hreq;
    req->api = api;
    bool path_known = false;
    req->route = api__match(api, req, &path_known);
    if (!req->route) {
        if (path_known)
            http_request_refuse(hreq, SKIFF_E_METHOD, "%s is not allowed on %s", hreq->method,
                                hreq->path);
        else
            http_request_refuse(hreq, SKIFF_E_NOT_FOUND,
                                "no such endpoint: %s %s (see docs/api.md)", hreq->method,
                                hreq->path);
        return;
    }
    int perm = req->route->flags & API_PERM_MASK;
    if (hreq->listener == API_LISTENER_PUBLISH && perm != AUTH_PERM_PUBLISH) {
        req->route = NULL;
        http_request_refuse(hreq, SKIFF_E_NOT_FOUND,
                            "this address serves only publishing: POST /v1/topics/TOPIC/events");
        return;
    }
    if (perm != AUTH_PERM_PUBLIC) {
        int who = api__authenticate(api, req);
        if (who == -4) {
            /* undecided until the store answers: a small body at most meanwhile */
            hreq->body_to_file = req->route->flags & API_BODY_FILE;
            hreq->body_limit = API_SMALL_BODY_MAX;
            hreq->too_large_hint = ": this controller does not know the bearer token yet (made "
                                   "through another controller a moment ago): send it again";
            return;
        }
        if (who == -1)
            http_request_refuse(
                hreq, SKIFF_E_UNAUTHORIZED,
                "missing bearer token: send \"Authorization: Bearer TOKEN\" (`skiff "
                "login` gets one; a local skiffd's admin token is in $SKIFF_HOME/api.json)");
        else if (who == -2)
            http_request_refuse(hreq, SKIFF_E_UNAUTHORIZED, API_TOKEN_INVALID);
        else if (who == -3)
            http_request_refuse(
                hreq, SKIFF_E_UNAUTHORIZED,
                "this instance token is no longer valid: it was given to an instance "
                "that has stopped, or its app was stopped or deleted (each instance "
                "gets a token of its own in SKIFF_EVENTS_TOKEN)");
        else if (req->principal.kind == AUTH_INSTANCE && perm != AUTH_PERM_PUBLISH)
            http_request_refuse(
                hreq, SKIFF_E_FORBIDDEN,
                "an instance token may only publish events; this needs a user's token");
        else if (req->principal.kind == AUTH_CELL && perm != AUTH_PERM_BLOBS)
            http_request_refuse(hreq, SKIFF_E_FORBIDDEN,
                                "a cell's token may only read blobs; this needs a user's token");
        else {
            char msg[512];
            enum skiff_err err = api__authorize_now(api, req, msg, sizeof msg);
            /* an upload is refused at once: a role given a moment ago through another
             * controller is here within a second, and a caller refused must not make skiffd
             * take an upload before it is told */
            if (err && !(req->route->flags & API_BODY_FILE) &&
                api__refusal_wait(api, req, err, NULL)) {
                /* refused until the store says otherwise: a small body at most meanwhile */
                hreq->body_limit = API_SMALL_BODY_MAX;
                hreq->too_large_hint = ": this controller refuses it unless a role or space "
                                       "given through another controller a moment ago allows "
                                       "it, and takes no larger body until it knows: send it "
                                       "again";
                return;
            }
            if (err)
                http_request_refuse(hreq, err, "%s", msg);
        }
        if (hreq->early_err)
            return;
    }
    /* public routes take no body: nobody unknown gets to make skiffd hold one */
    hreq->body_to_file = req->route->flags & API_BODY_FILE;
    hreq->body_limit = perm == AUTH_PERM_PUBLIC
                           ? ((req->route->flags & API_SMALL_BODY) ? API_SMALL_BODY_MAX : 0)
                       : hreq->body_to_file ? api->upload_max
                                            : API_BODY_MEMORY_MAX;
    if (hreq->body_to_file)
        hreq->too_large_hint = ": make the upload smaller (.cfignore/.skiffignore can leave "
                               "files out) or raise SKIFF_MAX_UPLOAD_MB";
}

/* A request whose token was looked for in the store, its body read: authorised and run, or
 * refused. */
static void api__run_looked(struct api_request *req)
{
    struct api *api = req->api;
    struct api_auth_wait *w = req->auth_wait;
    bool refused = w->refused;
    if (!refused) {
        bool known =
            w->rc == 0 && auth_authenticate_cached(api->auth, w->token, &req->principal) == 0;
        sodium_memzero(w->token, strlen(w->token));
        free(w->token);
        w->token = NULL;
        if (!known) {
            req->auth_wait = NULL;
            api__auth_wait_free(w);
            api_respond_error(req, SKIFF_E_UNAUTHORIZED, API_TOKEN_INVALID);
            return;
        }
    }
    char msg[512];
    enum skiff_err err = api__authorize_now(api, req, msg, sizeof msg);
    if (err && !refused && api__refusal_wait(api, req, err, w))
        return; /* run again once the store answers */
    req->auth_wait = NULL;
    api__auth_wait_free(w);
    if (err)
        api_respond_error(req, err, "%s", msg);
    else
        req->route->fn(req, req->route->ctx);
}

static void api__token_looked(void *ctx, int rc)
{
    struct api_auth_wait *w = ctx;
    w->looked = true;
    w->rc = rc;
    if (!w->req) /* the request went meanwhile */
        api__auth_wait_free(w);
    else if (w->body_read)
        api__run_looked(w->req);
}

static void api__on_request(struct http_request *hreq, void *ctx)
{
    (void)ctx;
    struct api_request *req = (struct api_request *)hreq;
    if (req->auth_wait) {
        req->auth_wait->body_read = true;
        if (req->auth_wait->looked)
            api__run_looked(req);
        return; /* run once the store answers (api__token_looked) */
    }
    req->route->fn(req, req->route->ctx);
}

void api_request_handle_again(struct api_request *req)
{
    req->route->fn(req, req->route->ctx);
}

/* An app read for a request is made: its handler runs again and takes the answer. */
static void api__app_read(void *ctx, int rc, struct store_app *app)
{
    struct api_app_read *r = ctx;
    r->made = true;
    r->rc = rc;
    r->app = app;
    struct api_request *req = r->req;
    if (!req)
        api__app_read_free(r);
    else if (req->http.aborted) /* ends it (skiffd stopping, or the client left) */
        api_respond_error(req, SKIFF_E_UNAVAILABLE, "the request ended before its app was read");
    else
        api_request_handle_again(req);
}

static void api__user_read(void *ctx, int rc)
{
    (void)rc; /* the copy says */
    struct api_user_read *r = ctx;
    r->made = true;
    struct api_request *req = r->req;
    if (r->calling)
        return;
    if (!req)
        free(r);
    else if (req->http.aborted)
        api_respond_error(req, SKIFF_E_UNAVAILABLE, "the request ended before its user was read");
    else
        api_request_handle_again(req);
}

const struct auth_user *api_request_user_find(struct api_request *req, const char *name,
                                              bool *waiting)
{
    struct auth *auth = req->api->auth;
    *waiting = false;
    const struct auth_user *u = auth ? auth_user_find(auth, name) : NULL;
    if (u || !auth || req->user_read) /* found, or looked for once already */
        return u;
    struct api_user_read *r = xcalloc(1, sizeof *r);
    r->req = req;
    req->user_read = r;
    r->calling = true;
    int rc = auth_catch_up_user_async(auth, name, api__user_read, r);
    r->calling = false;
    if (rc == 0 && !r->made) {
        *waiting = true;
        return NULL;
    }
    r->made = true; /* known now, answered during the call, or nothing to read */
    return auth_user_find(auth, name);
}

int api_request_app_find(struct api_request *req, struct store *st, const char *space,
                         const char *name, struct store_app **out)
{
    for (struct api_app_read *r = req->app_reads; r; r = r->next) {
        if (!r->made || strcmp(r->space, space) || strcmp(r->name, name))
            continue;
        *out = r->rc == 0 ? store_app_dup(r->app) : NULL;
        return r->rc;
    }
    struct api_app_read *r = xcalloc(1, sizeof *r);
    *r = (struct api_app_read){.req = req, .space = xstrdup(space), .name = xstrdup(name)};
    int rc = store_app_find_or_read(st, space, name, out, api__app_read, r);
    if (rc != -EINPROGRESS) {
        api__app_read_free(r);
        return rc;
    }
    r->next = req->app_reads;
    req->app_reads = r;
    return rc;
}
