/* api/tenancy: users, logging in, tokens, orgs, spaces and roles over HTTP (see tenancy.h). */
#include "api/tenancy.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth.h"
#include "common/err.h"
#include "common/util.h"
#include "services/services.h"
#include "store/store.h"

/* Password hashes being computed at once; past it a login is 503 `busy` rather than a queue
 * that keeps the thread pool from the event log's writes. */
#define TENANCY_HASHING_MAX 8

struct api_tenancy {
    struct api *api;
    struct api_tenancy_config cfg;
    unsigned hashing;
};

/* ---- helpers ------------------------------------------------------------------------------- */

static struct auth *tenancy__auth(struct api_tenancy *t)
{
    return t->cfg.auth;
}

static json_t *tenancy__time(int64_t ms)
{
    if (!ms)
        return json_null();
    char text[40];
    time_format_rfc3339(ms, text, sizeof text);
    return json_string(text);
}

static json_t *tenancy__user_json(const struct auth_user *u)
{
    return json_pack("{s:s, s:s, s:b, s:o}", "guid", u->guid, "name", u->name, "admin", u->admin,
                     "created_at", tenancy__time(u->created_at));
}

static json_t *tenancy__quota_name(struct api_tenancy *t, const char *guid)
{
    const struct auth_quota *q = *guid ? auth_quota_find(t->cfg.auth, guid) : NULL;
    return q ? json_string(q->name) : json_null();
}

static json_t *tenancy__org_json(struct api_tenancy *t, const struct auth_org *o)
{
    return json_pack("{s:s, s:s, s:o, s:o}", "guid", o->guid, "name", o->name, "quota",
                     tenancy__quota_name(t, o->quota_guid), "created_at",
                     tenancy__time(o->created_at));
}

static json_t *tenancy__space_json(struct api_tenancy *t, const struct auth_space *s)
{
    const struct auth_org *o = auth_org_find(tenancy__auth(t), s->org_guid);
    return json_pack("{s:s, s:s, s:s, s:o, s:o}", "guid", s->guid, "name", s->name, "org",
                     o ? o->name : "", "quota", tenancy__quota_name(t, s->quota_guid),
                     "created_at", tenancy__time(s->created_at));
}

static json_t *tenancy__quota_json(const struct auth_quota *q)
{
    json_t *o = json_pack("{s:s, s:s}", "guid", q->guid, "name", q->name);
    for (int i = 0; i < AUTH_QUOTA_LIMITS; i++)
        json_object_set_new(o, auth_quota_limit_name((enum auth_quota_limit)i),
                            q->limit[i] == AUTH_UNLIMITED ? json_null()
                                                          : json_integer(q->limit[i]));
    return o;
}

/* "ORG/SPACE" of a space guid, into out. */
static void tenancy__space_ref(struct api_tenancy *t, const char *space_guid, char *out,
                               size_t size)
{
    const struct auth_space *s = space_guid && *space_guid
                                     ? auth_space_get(tenancy__auth(t), space_guid)
                                     : NULL;
    const struct auth_org *o = s ? auth_org_find(tenancy__auth(t), s->org_guid) : NULL;
    snprintf(out, size, "%s/%s", o ? o->name : "?", s ? s->name : "?");
}

static json_t *tenancy__token_json(struct api_tenancy *t, const struct auth_token_info *k)
{
    char space[2 * AUTH_NAME_MAX + 2];
    tenancy__space_ref(t, k->space_guid, space, sizeof space);
    return json_pack("{s:s, s:s, s:o, s:o, s:o, s:o}", "guid", k->guid, "name", k->name, "space",
                     k->space_guid[0] ? json_string(space) : json_null(), "role",
                     k->space_role >= 0 ? json_string(auth_role_name(k->space_role))
                                        : json_null(),
                     "expires_at", tenancy__time(k->expires_at), "created_at",
                     tenancy__time(k->created_at));
}

/* Answers a failed auth call; what names "what" (e.g. "user \"bob\""). */
static void tenancy__fail(struct api_request *req, int rc, const char *what)
{
    /* auth's -EINVAL is a name against its rules and its -EPERM a role that cannot be held in
     * that place (auth.h): errors of the request's body, not of the store */
    if (rc == -EINVAL)
        api_respond_error(req, SKIFF_E_INVALID_NAME,
                          "%s: names are 1-63 of a-z, 0-9 and '-', starting with a letter or "
                          "digit (user names: 1-64 of A-Z a-z 0-9 . _ @ -)",
                          what);
    else if (rc == -EPERM)
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s cannot be held there", what);
    else if (rc == -ENOENT)
        api_respond_error(req, rc, "no %s", what);
    else if (rc == -EEXIST)
        api_respond_error(req, rc, "%s exists already", what);
    else
        api_respond_error(req, rc, "the store failed: %s (see skiffd's log)", skiff_strerror(rc));
}

/* An answer held until the writes of the change just made are made (auth_landed): auth
 * changes its copy at once and queues its records, so the client hears only of what is
 * stored. */
struct tenancy_held {
    struct api_request *req;
    int status;
    json_t *body;      /* NULL: none */
    char *unlink_path; /* removed once stored (the first start's password note) */
};

static void tenancy__held_landed(void *ctx, int rc)
{
    struct tenancy_held *h = ctx;
    if (rc < 0) {
        json_decref(h->body);
        tenancy__fail(h->req, rc, "change");
    } else {
        if (h->unlink_path)
            unlink(h->unlink_path);
        if (h->body)
            api_respond_json(h->req, h->status, h->body);
        else
            api_respond(h->req, h->status, NULL, NULL, 0);
    }
    free(h->unlink_path);
    free(h);
}

/* Answers status with body (taken; NULL: none) once every change auth queued is stored. */
static void tenancy__answer_landed(struct api_tenancy *t, struct api_request *req, int status,
                                   json_t *body)
{
    struct tenancy_held *h = xcalloc(1, sizeof *h);
    h->req = req;
    h->status = status;
    h->body = body;
    auth_landed(tenancy__auth(t), tenancy__held_landed, h);
}

/* The principal's user, or NULL (the local admin token has none). */
static const struct auth_user *tenancy__me(struct api_tenancy *t, struct api_request *req)
{
    const struct auth_principal *p = api_request_principal(req);
    return p->kind == AUTH_USER ? auth_user_find(tenancy__auth(t), p->user_guid) : NULL;
}

/* ---- password work on the thread pool ----------------------------------------------------- */

enum tenancy_job_kind { JOB_LOGIN, JOB_CREATE_USER, JOB_PASSWORD };

struct tenancy_job {
    uv_work_t work;
    struct api_tenancy *t;
    struct api_request *req;
    enum tenancy_job_kind kind;
    char *hash;     /* JOB_LOGIN, JOB_PASSWORD: the stored hash to check (NULL: no user) */
    char *password; /* checked (login, old password) */
    char *new_password;
    char new_hash[AUTH_PASSWORD_HASH_MAX];
    char user_guid[AUTH_GUID_LEN + 1];
    char name[AUTH_NAME_MAX + 1];
    bool admin;
    bool generated;
    bool verified;
    int hash_rc;
};

static void tenancy__job_work(uv_work_t *w)
{
    struct tenancy_job *j = (struct tenancy_job *)w;
    j->verified = !j->password || auth_password_verify(j->hash, j->password);
    if (j->verified && j->new_password)
        j->hash_rc = auth_password_hash(j->new_password, j->new_hash);
}

static void tenancy__job_free(struct tenancy_job *j)
{
    if (j->password)
        sodium_memzero(j->password, strlen(j->password));
    if (j->new_password)
        sodium_memzero(j->new_password, strlen(j->new_password));
    sodium_memzero(j->new_hash, sizeof j->new_hash);
    free(j->hash);
    free(j->password);
    free(j->new_password);
    free(j);
}

/* The answer to a login or a refresh: the new pair. */
static json_t *tenancy__tokens_json(struct api_tenancy *t, const char *user_guid,
                                    const char *access, const char *refresh)
{
    const struct auth_user *u = auth_user_find(tenancy__auth(t), user_guid);
    return json_pack("{s:s, s:s, s:s, s:I, s:s}", "access_token", access, "refresh_token", refresh,
                     "token_type", "bearer", "expires_in", (json_int_t)(AUTH_ACCESS_TTL_MS / 1000),
                     "user", u ? u->name : "");
}

/* A login whose tokens are being written. */
struct tenancy_login {
    struct api_tenancy *t;
    struct api_request *req;
    char user_guid[AUTH_GUID_LEN + 1];
    char access[AUTH_TOKEN_TEXT_MAX];
    char refresh[AUTH_TOKEN_TEXT_MAX];
};

static void tenancy__login_landed(void *ctx, int rc)
{
    struct tenancy_login *l = ctx;
    if (rc < 0)
        tenancy__fail(l->req, rc, "session");
    else
        api_respond_json(l->req, 200,
                         tenancy__tokens_json(l->t, l->user_guid, l->access, l->refresh));
    sodium_memzero(l, sizeof *l);
    free(l);
}

static void tenancy__answer_login(struct api_request *req, struct api_tenancy *t,
                                  const char *user_guid)
{
    struct tenancy_login *l = xcalloc(1, sizeof *l);
    l->t = t;
    l->req = req;
    snprintf(l->user_guid, sizeof l->user_guid, "%s", user_guid);
    int rc = auth_login(tenancy__auth(t), user_guid, l->access, l->refresh);
    if (rc < 0) {
        tenancy__fail(req, rc, "session");
        sodium_memzero(l, sizeof *l);
        free(l);
        return;
    }
    auth_landed(tenancy__auth(t), tenancy__login_landed, l);
}

static void tenancy__refresh_refused(struct api_request *req)
{
    api_respond_error(req, SKIFF_E_UNAUTHORIZED,
                      "the refresh token is not valid (unknown, used, ended or expired): log in "
                      "again with `skiff login`");
}

struct tenancy_refresh {
    struct api_tenancy *t;
    struct api_request *req;
};

static void tenancy__refreshed(void *ctx, int rc, const char *user_guid, const char *access,
                               const char *refresh)
{
    struct tenancy_refresh *r = ctx;
    if (rc < 0)
        tenancy__refresh_refused(r->req);
    else
        api_respond_json(r->req, 200, tenancy__tokens_json(r->t, user_guid, access, refresh));
    free(r);
}

/* A user whose records are being written (a new user's password shown once, when made up). */
struct tenancy_user_made {
    struct api_tenancy *t;
    struct api_request *req;
    char name[AUTH_NAME_MAX + 1];
    char *password;
};

static void tenancy__user_made(void *ctx, int rc, const char *guid)
{
    struct tenancy_user_made *m = ctx;
    const struct auth_user *u = rc == 0 ? auth_user_find(tenancy__auth(m->t), guid) : NULL;
    if (rc == 0 && !u)
        rc = -ENOENT; /* deleted meanwhile */
    if (rc < 0) {
        char what[AUTH_NAME_MAX + 16];
        snprintf(what, sizeof what, "user \"%s\"", m->name);
        tenancy__fail(m->req, rc, what);
    } else {
        json_t *o = tenancy__user_json(u);
        if (m->password)
            json_object_set_new(o, "password", json_string(m->password));
        api_respond_json(m->req, 201, o);
    }
    if (m->password) {
        sodium_memzero(m->password, strlen(m->password));
        free(m->password);
    }
    free(m);
}

static void tenancy__job_done(uv_work_t *w, int status)
{
    struct tenancy_job *j = (struct tenancy_job *)w;
    struct api_tenancy *t = j->t;
    struct api_request *req = j->req;
    t->hashing--;
    struct auth *a = tenancy__auth(t);
    if (status < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, "the password work was cancelled");
    } else if (j->kind == JOB_LOGIN) {
        /* the user may have gone while the hash was checked */
        const struct auth_user *u = j->verified ? auth_user_find(a, j->user_guid) : NULL;
        if (u && !strcmp(u->guid, j->user_guid))
            tenancy__answer_login(req, t, u->guid);
        else
            api_respond_error(req, SKIFF_E_UNAUTHORIZED, "wrong user name or password");
    } else if (!j->verified) {
        api_respond_error(req, SKIFF_E_FORBIDDEN, "the old password is not right");
    } else if (j->hash_rc < 0) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "a password is %d to %d bytes long",
                          AUTH_PASSWORD_MIN, AUTH_PASSWORD_MAX);
    } else if (j->kind == JOB_CREATE_USER) {
        struct tenancy_user_made *m = xcalloc(1, sizeof *m);
        m->t = t;
        m->req = req;
        snprintf(m->name, sizeof m->name, "%s", j->name);
        m->password = j->generated ? xstrdup(j->new_password) : NULL;
        int rc = auth_user_create_async(a, j->name, j->new_hash, j->admin, tenancy__user_made, m);
        if (rc < 0) {
            char what[AUTH_NAME_MAX + 16];
            snprintf(what, sizeof what, "user \"%s\"", j->name);
            tenancy__fail(req, rc, what);
            if (m->password) {
                sodium_memzero(m->password, strlen(m->password));
                free(m->password);
            }
            free(m);
        }
    } else {
        const struct auth_principal *p = api_request_principal(req);
        const char *keep = p->kind == AUTH_USER && !strcmp(p->user_guid, j->user_guid)
                               ? p->token_guid
                               : NULL;
        int rc = auth_user_set_password(a, j->user_guid, j->new_hash, keep);
        if (rc < 0) {
            tenancy__fail(req, rc, "user");
        } else {
            struct tenancy_held *h = xcalloc(1, sizeof *h);
            h->req = req;
            h->status = 204;
            const struct auth_user *u = auth_user_find(a, j->user_guid);
            if (u && !strcmp(u->name, "admin")) /* the first start's password is no longer
                                                    good: its note goes */
                h->unlink_path = xasprintf("%s/admin-password", t->cfg.home);
            auth_landed(a, tenancy__held_landed, h);
        }
    }
    tenancy__job_free(j);
}

static bool tenancy__job_start(struct api_tenancy *t, struct api_request *req,
                               struct tenancy_job *j)
{
    if (t->hashing >= TENANCY_HASHING_MAX) {
        api_response_header(req, "Retry-After", "1");
        api_respond_error(req, SKIFF_E_BUSY,
                          "too many passwords are being checked: retry in a "
                          "moment");
        tenancy__job_free(j);
        return false;
    }
    j->t = t;
    j->req = req;
    t->hashing++;
    if (uv_queue_work(api_loop(t->api), &j->work, tenancy__job_work, tenancy__job_done) < 0) {
        t->hashing--;
        api_respond_error(req, SKIFF_E_INTERNAL, "cannot check the password now");
        tenancy__job_free(j);
        return false;
    }
    return true;
}

/* ---- logging in ---------------------------------------------------------------------------- */

static void tenancy__login_reread(void *ctx, int rc);

/* The login's user known (or not) by its name: its record read again, then its password
 * checked. */
static void tenancy__login_named(void *ctx, int rc)
{
    (void)rc; /* the copy decides */
    struct tenancy_job *j = ctx;
    const struct auth_user *u = j->name[0] ? auth_user_find(tenancy__auth(j->t), j->name) : NULL;
    if (!u || strcmp(u->name, j->name)) { /* by name only: a guid is no user name */
        tenancy__job_start(j->t, j->req, j);
        return;
    }
    /* its password may have changed through another skiffd on a shared store: its record is
     * read again (queued, off the loop), then the password checked */
    snprintf(j->user_guid, sizeof j->user_guid, "%s", u->guid);
    auth_user_reread_async(tenancy__auth(j->t), j->user_guid, tenancy__login_reread, j);
}

/* The user's record read again before a login: its password checked against it. */
static void tenancy__login_reread(void *ctx, int rc)
{
    (void)rc; /* not read: the copy decides */
    struct tenancy_job *j = ctx;
    const struct auth_user *u = auth_user_find(tenancy__auth(j->t), j->user_guid);
    if (u && !strcmp(u->guid, j->user_guid))
        j->hash = xstrdup(u->password_hash);
    else
        j->user_guid[0] = '\0';
    tenancy__job_start(j->t, j->req, j);
}

static void tenancy__token(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"grant_type", "username", "password", "refresh_token",
                                         NULL};
    if (!api_json_check_fields(req, body, fields)) {
        json_decref(body);
        return;
    }
    const char *grant = json_string_value(json_object_get(body, "grant_type"));
    if (grant && !strcmp(grant, "refresh_token")) {
        const char *refresh = json_string_value(json_object_get(body, "refresh_token"));
        struct tenancy_refresh *r = xcalloc(1, sizeof *r);
        r->t = t;
        r->req = req;
        int rc = refresh ? auth_refresh_async(tenancy__auth(t), refresh, tenancy__refreshed, r)
                         : -ENOENT;
        if (rc < 0) {
            tenancy__refresh_refused(req);
            free(r);
        }
        json_decref(body);
        return;
    }
    if (!grant || strcmp(grant, "password")) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "grant_type is \"password\" (with username and password) or "
                          "\"refresh_token\" (with refresh_token)");
        json_decref(body);
        return;
    }
    const char *name = json_string_value(json_object_get(body, "username"));
    const char *password = json_string_value(json_object_get(body, "password"));
    if (!name || !password) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "username and password are needed");
        json_decref(body);
        return;
    }
    struct tenancy_job *j = xcalloc(1, sizeof *j);
    j->kind = JOB_LOGIN;
    j->t = t;
    j->req = req;
    j->password = xstrndup(password, strnlen(password, AUTH_PASSWORD_MAX + 1));
    if (strlen(name) < sizeof j->name) /* a longer one is no user's name */
        snprintf(j->name, sizeof j->name, "%s", name);
    json_decref(body);
    /* a user made through another skiffd a moment ago: its name looked for in the store
     * (queued, off the loop) */
    int looking =
        auth_user_find(tenancy__auth(t), j->name)
            ? -ENOENT
            : auth_catch_up_user_async(tenancy__auth(t), j->name, tenancy__login_named, j);
    if (looking != 0)
        tenancy__login_named(j, 0);
}

static void tenancy__logout(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    const struct auth_principal *p = api_request_principal(req);
    size_t len = 0;
    api_request_body(req, &len);
    if (len) {
        json_t *body = api_request_json_object(req);
        if (!body)
            return;
        const char *refresh = json_string_value(json_object_get(body, "refresh_token"));
        if (refresh)
            auth_token_revoke_text(tenancy__auth(t), refresh);
        json_decref(body);
    }
    if (p->kind == AUTH_USER && p->token_kind == AUTH_TOKEN_ACCESS)
        auth_token_revoke(tenancy__auth(t), p->token_guid);
    tenancy__answer_landed(t, req, 204, NULL);
}

struct tenancy_roles_ctx {
    struct api_tenancy *t;
    json_t *list;
};

static void tenancy__role_item(void *ctx, const char *org_guid, const char *space_guid,
                               enum auth_role role)
{
    struct tenancy_roles_ctx *c = ctx;
    const struct auth_org *o = auth_org_find(tenancy__auth(c->t), org_guid);
    const struct auth_space *s = *space_guid ? auth_space_get(tenancy__auth(c->t), space_guid)
                                             : NULL;
    json_t *item = json_pack("{s:s, s:s}", "org", o ? o->name : "?", "role", auth_role_name(role));
    if (s)
        json_object_set_new(item, "space", json_string(s->name));
    json_array_append_new(c->list, item);
}

static void tenancy__me_get(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    const struct auth_principal *p = api_request_principal(req);
    const struct auth_user *u = tenancy__me(t, req);
    json_t *roles = json_array();
    json_t *token;
    if (u) {
        struct tenancy_roles_ctx c = {t, roles};
        auth_user_roles_each(tenancy__auth(t), u->guid, tenancy__role_item, &c);
        const struct auth_token_info *k = auth_token_get(tenancy__auth(t), p->token_guid);
        token = k ? tenancy__token_json(t, k) : json_object();
        json_object_set_new(token, "kind", json_string(p->token_kind == AUTH_TOKEN_API ? "api"
                                                                                       : "access"));
    } else {
        token = json_pack("{s:s}", "kind", "admin");
    }
    api_respond_json(req, 200,
                     json_pack("{s:o, s:o, s:o}", "user",
                               u ? tenancy__user_json(u) : json_null(), "token", token, "roles",
                               roles));
}

/* ---- users --------------------------------------------------------------------------------- */

static void tenancy__user_list_item(void *ctx, const struct auth_user *u)
{
    json_array_append_new(ctx, tenancy__user_json(u));
}

static void tenancy__users_list(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    json_t *list = json_array();
    auth_user_each(tenancy__auth(t), tenancy__user_list_item, list);
    api_respond_json(req, 200, json_pack("{s:o}", "users", list));
}

static void tenancy__users_create(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"name", "password", "admin", NULL};
    if (!api_json_check_fields(req, body, fields)) {
        json_decref(body);
        return;
    }
    const char *name = json_string_value(json_object_get(body, "name"));
    const char *password = json_string_value(json_object_get(body, "password"));
    json_t *admin = json_object_get(body, "admin");
    if (!name || !auth_user_name_valid(name) || (admin && !json_is_boolean(admin))) {
        api_respond_error(req, SKIFF_E_INVALID_NAME,
                          "a user needs a name of 1-64 of A-Z a-z 0-9 . _ @ - (and admin, when "
                          "given, is true or false)");
        json_decref(body);
        return;
    }
    /* this copy's word; one made through another skiffd is refused by the name's claim */
    if (auth_user_find(tenancy__auth(t), name)) {
        api_respond_error(req, SKIFF_E_NAME_TAKEN, "user \"%s\" exists already", name);
        json_decref(body);
        return;
    }
    struct tenancy_job *j = xcalloc(1, sizeof *j);
    j->kind = JOB_CREATE_USER;
    snprintf(j->name, sizeof j->name, "%s", name);
    j->admin = json_is_true(admin);
    if (password) {
        j->new_password = xstrndup(password, strnlen(password, AUTH_PASSWORD_MAX + 1));
    } else {
        j->new_password = xcalloc(1, 33);
        random_hex(j->new_password, 16);
        j->generated = true;
    }
    json_decref(body);
    tenancy__job_start(t, req, j);
}

static void tenancy__users_delete(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    const char *name = api_request_param(req, 0);
    bool waiting;
    const struct auth_user *u = api_request_user_find(req, name, &waiting);
    if (waiting)
        return; /* run again once the store answers */
    char what[AUTH_NAME_MAX + 16];
    snprintf(what, sizeof what, "user \"%s\"", name);
    if (!u) {
        tenancy__fail(req, -ENOENT, what);
        return;
    }
    char guid[AUTH_GUID_LEN + 1];
    snprintf(guid, sizeof guid, "%s", u->guid);
    int rc = auth_user_delete(tenancy__auth(t), guid);
    if (rc < 0)
        tenancy__fail(req, rc, what);
    else
        tenancy__answer_landed(t, req, 204, NULL);
}

static void tenancy__password(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    const struct auth_principal *p = api_request_principal(req);
    const char *name = api_request_param(req, 0);
    bool waiting;
    const struct auth_user *u = api_request_user_find(req, name, &waiting);
    if (waiting)
        return; /* run again once the store answers */
    const struct auth_user *me = tenancy__me(t, req);
    bool admin = p->admin || p->kind == AUTH_LOCAL_ADMIN;
    /* only the user, or an admin: anyone else is told there is no such user */
    if (!u || (!admin && (!me || strcmp(me->guid, u->guid)))) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no user \"%s\"", name);
        return;
    }
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"password", "old_password", NULL};
    if (!api_json_check_fields(req, body, fields)) {
        json_decref(body);
        return;
    }
    const char *password = json_string_value(json_object_get(body, "password"));
    const char *old = json_string_value(json_object_get(body, "old_password"));
    bool self = me && !strcmp(me->guid, u->guid);
    if (!password || (self && !old)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          self ? "password and old_password are needed" : "password is needed");
        json_decref(body);
        return;
    }
    struct tenancy_job *j = xcalloc(1, sizeof *j);
    j->kind = JOB_PASSWORD;
    snprintf(j->user_guid, sizeof j->user_guid, "%s", u->guid);
    if (self) {
        j->hash = xstrdup(u->password_hash);
        j->password = xstrndup(old, strnlen(old, AUTH_PASSWORD_MAX + 1));
    }
    j->new_password = xstrndup(password, strnlen(password, AUTH_PASSWORD_MAX + 1));
    json_decref(body);
    tenancy__job_start(t, req, j);
}

/* ---- API tokens ---------------------------------------------------------------------------- */

struct tenancy_list_ctx {
    struct api_tenancy *t;
    json_t *list;
    const struct auth_principal *p;
};

static void tenancy__token_item(void *ctx, const struct auth_token_info *k)
{
    struct tenancy_list_ctx *c = ctx;
    json_array_append_new(c->list, tenancy__token_json(c->t, k));
}

static bool tenancy__need_user(struct api_tenancy *t, struct api_request *req)
{
    if (tenancy__me(t, req))
        return true;
    api_respond_error(req, SKIFF_E_INVALID_VALUE,
                      "the local admin token is no user: log in as a user (`skiff login -u "
                      "admin`) to have tokens of your own");
    return false;
}

static void tenancy__tokens_list(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    if (!tenancy__need_user(t, req))
        return;
    struct tenancy_list_ctx c = {t, json_array(), NULL};
    auth_token_each(tenancy__auth(t), tenancy__me(t, req)->guid, tenancy__token_item, &c);
    api_respond_json(req, 200, json_pack("{s:o}", "tokens", c.list));
}

/* An API token whose claim and records are being written. */
struct tenancy_token_made {
    struct api_tenancy *t;
    struct api_request *req;
    char name[AUTH_NAME_MAX + 1];
    char text[AUTH_TOKEN_TEXT_MAX];
};

static void tenancy__token_made(void *ctx, int rc, const char *guid)
{
    struct tenancy_token_made *m = ctx;
    const struct auth_token_info *k = rc == 0 ? auth_token_get(tenancy__auth(m->t), guid) : NULL;
    if (rc == 0 && !k)
        rc = -ENOENT; /* ended meanwhile */
    if (rc < 0) {
        char what[AUTH_NAME_MAX + 16];
        snprintf(what, sizeof what, "token \"%s\"", m->name);
        tenancy__fail(m->req, rc, what);
    } else {
        json_t *o = tenancy__token_json(m->t, k);
        json_object_set_new(o, "token", json_string(m->text));
        api_respond_json(m->req, 201, o);
    }
    sodium_memzero(m->text, sizeof m->text);
    free(m);
}

static void tenancy__tokens_create(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    struct auth *a = tenancy__auth(t);
    if (!tenancy__need_user(t, req))
        return;
    const struct auth_principal *p = api_request_principal(req);
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"name", "space", "role", "expires_in", NULL};
    if (!api_json_check_fields(req, body, fields)) {
        json_decref(body);
        return;
    }
    const char *name = json_string_value(json_object_get(body, "name"));
    const char *space_ref = json_string_value(json_object_get(body, "space"));
    const char *role_name = json_string_value(json_object_get(body, "role"));
    json_t *expires_in = json_object_get(body, "expires_in");
    const struct auth_space *space = NULL;
    int role = -1;
    char msg[256] = "";
    if (!name || !name_valid(name))
        snprintf(msg, sizeof msg, "a token needs a name of 1-63 of a-z, 0-9 and '-'");
    else if (expires_in && (!json_is_integer(expires_in) || json_integer_value(expires_in) <= 0 ||
                            json_integer_value(expires_in) > 10LL * 365 * 86400))
        snprintf(msg, sizeof msg, "expires_in is a number of seconds, at most ten years");
    else if (role_name && !space_ref)
        snprintf(msg, sizeof msg, "a token limited to a role needs the space too");
    else if (space_ref && !(space = auth_space_resolve(a, space_ref)))
        snprintf(msg, sizeof msg, "no space \"%s\" (write ORG/SPACE)", space_ref);
    else if (role_name && ((role = auth_role_parse(role_name)) < 0 ||
                           !auth_role_in_space((enum auth_role)role)))
        snprintf(msg, sizeof msg,
                 "role is one of SpaceManager, SpaceDeveloper, SpaceAuditor, SpaceSupporter");
    if (*msg) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s", msg);
        json_decref(body);
        return;
    }
    /* a token never grants more than its maker has: a limited token from a limited token
     * stays in its space, and the role must be the user's there */
    if (space && !p->admin && !auth_can_see_space(a, p, space)) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no space \"%s\" that you can see", space_ref);
        json_decref(body);
        return;
    }
    if (space && role >= 0 && !p->admin &&
        !(auth_roles_of(a, p->user_guid, space->org_guid, space->guid) & (1u << role))) {
        api_respond_error(req, SKIFF_E_FORBIDDEN, "you do not hold %s in %s yourself",
                          auth_role_name((enum auth_role)role), space_ref);
        json_decref(body);
        return;
    }
    if (p->space_guid[0] && (!space || strcmp(space->guid, p->space_guid))) {
        api_respond_error(req, SKIFF_E_FORBIDDEN,
                          "a token limited to a space can only make tokens for that space");
        json_decref(body);
        return;
    }
    if (p->space_role >= 0 && role != p->space_role) {
        api_respond_error(req, SKIFF_E_FORBIDDEN,
                          "a token limited to a role can only make tokens with that role");
        json_decref(body);
        return;
    }
    int64_t expires = expires_in ? time_now_ms() + json_integer_value(expires_in) * 1000 : 0;
    struct tenancy_token_made *m = xcalloc(1, sizeof *m);
    m->t = t;
    m->req = req;
    snprintf(m->name, sizeof m->name, "%s", name);
    int rc = auth_token_create_async(a, p->user_guid, name, space ? space->guid : NULL, role,
                                     expires, m->text, tenancy__token_made, m);
    if (rc < 0) {
        char what[AUTH_NAME_MAX + 16];
        snprintf(what, sizeof what, "token \"%s\"", name);
        tenancy__fail(req, rc, what);
        free(m);
    }
    json_decref(body);
}

static void tenancy__tokens_delete(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    struct auth *a = tenancy__auth(t);
    const struct auth_principal *p = api_request_principal(req);
    const char *name = api_request_param(req, 0);
    const char *user_name = api_request_query(req, "user");
    const struct auth_user *owner = NULL;
    if (user_name && (p->admin || p->kind == AUTH_LOCAL_ADMIN))
        owner = auth_user_find(a, user_name);
    else if (!user_name)
        owner = tenancy__me(t, req);
    const struct auth_token_info *k = owner ? auth_token_find_named(a, owner->guid, name) : NULL;
    if (!k) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no token \"%s\" (`skiff tokens` lists yours)",
                          name);
        return;
    }
    char guid[AUTH_GUID_LEN + 1];
    snprintf(guid, sizeof guid, "%s", k->guid);
    int rc = auth_token_revoke(a, guid);
    if (rc < 0)
        tenancy__fail(req, rc, "token");
    else
        tenancy__answer_landed(t, req, 204, NULL);
}

/* ---- orgs and spaces ----------------------------------------------------------------------- */

static void tenancy__org_item(void *ctx, const struct auth_org *o)
{
    struct tenancy_list_ctx *c = ctx;
    if (auth_can_see_org(tenancy__auth(c->t), c->p, o))
        json_array_append_new(c->list, tenancy__org_json(c->t, o));
}

static void tenancy__orgs_list(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    struct tenancy_list_ctx c = {t, json_array(), api_request_principal(req)};
    auth_org_each(tenancy__auth(t), tenancy__org_item, &c);
    api_respond_json(req, 200, json_pack("{s:o}", "orgs", c.list));
}

/* An org, a space or a quota whose claim and records are being written. */
enum tenancy_made_kind { MADE_ORG, MADE_SPACE, MADE_QUOTA };

struct tenancy_made {
    struct api_tenancy *t;
    struct api_request *req;
    enum tenancy_made_kind kind;
    int status;
    char what[AUTH_NAME_MAX + 16];
    char me[AUTH_GUID_LEN + 1];  /* the maker's user ("": the local admin): its roles in it */
    char org[AUTH_GUID_LEN + 1]; /* a space's */
};

/* The made thing's answer, with its maker's roles given (as Cloud Foundry does: who makes an
 * org manages it; who makes a space manages it and develops in it); NULL: gone meanwhile. */
static json_t *tenancy__made_json(struct tenancy_made *m, const char *guid)
{
    struct auth *a = tenancy__auth(m->t);
    if (m->kind == MADE_QUOTA) {
        const struct auth_quota *q = auth_quota_find(a, guid);
        return q ? tenancy__quota_json(q) : NULL;
    }
    if (m->kind == MADE_ORG) {
        const struct auth_org *o = auth_org_find(a, guid);
        if (!o)
            return NULL;
        if (m->me[0])
            auth_role_set(a, m->me, guid, NULL, AUTH_ROLE_ORG_MANAGER);
        return tenancy__org_json(m->t, auth_org_find(a, guid));
    }
    const struct auth_space *s = auth_space_get(a, guid);
    if (!s)
        return NULL;
    json_t *out = tenancy__space_json(m->t, s);
    if (m->me[0]) {
        auth_role_set(a, m->me, m->org, guid, AUTH_ROLE_SPACE_MANAGER);
        auth_role_set(a, m->me, m->org, guid, AUTH_ROLE_SPACE_DEVELOPER);
    }
    return out;
}

static void tenancy__made(void *ctx, int rc, const char *guid)
{
    struct tenancy_made *m = ctx;
    json_t *out = rc == 0 ? tenancy__made_json(m, guid) : NULL;
    if (rc < 0 || !out)
        tenancy__fail(m->req, rc < 0 ? rc : -ENOENT, m->what);
    else
        tenancy__answer_landed(m->t, m->req, m->status, out);
    free(m);
}

static struct tenancy_made *tenancy__made_new(struct api_tenancy *t, struct api_request *req,
                                              enum tenancy_made_kind kind, int status,
                                              const char *what, const char *name)
{
    struct tenancy_made *m = xcalloc(1, sizeof *m);
    m->t = t;
    m->req = req;
    m->kind = kind;
    m->status = status;
    snprintf(m->what, sizeof m->what, "%s \"%s\"", what, name ? name : "");
    const struct auth_user *me = tenancy__me(t, req);
    if (me)
        snprintf(m->me, sizeof m->me, "%s", me->guid);
    return m;
}

/* Answers a make that could not begin (rc < 0) and lets m go. */
static void tenancy__made_refused(struct tenancy_made *m, int rc)
{
    tenancy__fail(m->req, rc, m->what);
    free(m);
}

static void tenancy__orgs_create(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"name", NULL};
    if (!api_json_check_fields(req, body, fields)) {
        json_decref(body);
        return;
    }
    const char *name = json_string_value(json_object_get(body, "name"));
    struct tenancy_made *m = tenancy__made_new(t, req, MADE_ORG, 201, "org", name);
    int rc = name ? auth_org_create_async(tenancy__auth(t), name, tenancy__made, m) : -EINVAL;
    json_decref(body);
    if (rc < 0)
        tenancy__made_refused(m, rc);
}

static void tenancy__org_get(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    api_respond_json(req, 200, tenancy__org_json(t, auth_org_find(tenancy__auth(t),
                                                                   api_request_org(req))));
}

/* Whether a space (or, with space_guid NULL, any space of the org) still holds apps; answers
 * 409 itself when it does. */
static bool tenancy__refuse_if_apps(struct api_tenancy *t, struct api_request *req,
                                    const char *org_guid, const char *space_guid)
{
    struct store_app **apps = NULL;
    size_t n = 0;
    if (store_app_list_in(t->cfg.store, space_guid, &apps, &n) < 0) {
        api_respond_error(req, SKIFF_E_INTERNAL, "cannot read the apps from the store");
        return true;
    }
    size_t held = 0;
    const char *example = NULL;
    for (size_t i = 0; i < n; i++) {
        const struct auth_space *s = auth_space_get(tenancy__auth(t), apps[i]->space_guid);
        if (space_guid || (s && !strcmp(s->org_guid, org_guid))) {
            held++;
            if (!example)
                example = apps[i]->name;
        }
    }
    if (held)
        api_respond_error(req, SKIFF_E_NOT_EMPTY,
                          "it still holds %zu app%s (\"%s\"%s): delete them first (`skiff "
                          "delete`)",
                          held, held == 1 ? "" : "s", example, held > 1 ? ", ..." : "");
    store_app_list_free(apps, n);
    return held > 0;
}

/* The same for service instances and space-scoped brokers, which belong to a space too. */
static bool tenancy__refuse_if_services(struct api_tenancy *t, struct api_request *req,
                                        const char *org_guid, const char *space_guid)
{
    if (!t->cfg.services)
        return false;
    static const char *const kinds[] = {SERVICES_KIND_INSTANCE, SERVICES_KIND_BROKER};
    static const char *const what[] = {"service instance", "service broker"};
    for (size_t k = 0; k < 2; k++) {
        json_t *all = services_list(t->cfg.services, kinds[k], NULL, NULL);
        if (!all) {
            api_respond_error(req, SKIFF_E_INTERNAL, "cannot read the services from the store");
            return true;
        }
        size_t held = 0, i;
        const char *example = NULL;
        json_t *rec;
        json_array_foreach(all, i, rec)
        {
            const char *sg = json_string_value(json_object_get(rec, "space_guid"));
            const struct auth_space *s = sg ? auth_space_get(tenancy__auth(t), sg) : NULL;
            if (sg && (space_guid ? !strcmp(sg, space_guid)
                                  : s && !strcmp(s->org_guid, org_guid))) {
                held++;
                if (!example)
                    example = json_string_value(json_object_get(rec, "name"));
            }
        }
        if (held)
            api_respond_error(req, SKIFF_E_NOT_EMPTY,
                              "it still holds %zu %s%s (\"%s\"%s): delete them first", held,
                              what[k], held == 1 ? "" : "s", example ? example : "",
                              held > 1 ? ", ..." : "");
        json_decref(all);
        if (held)
            return true;
    }
    return false;
}

static void tenancy__org_delete(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    const char *org = api_request_org(req);
    if (tenancy__refuse_if_apps(t, req, org, NULL) ||
        tenancy__refuse_if_services(t, req, org, NULL))
        return;
    int rc = auth_org_delete(tenancy__auth(t), org);
    if (rc < 0)
        tenancy__fail(req, rc, "org");
    else
        tenancy__answer_landed(t, req, 204, NULL);
}

static void tenancy__space_item(void *ctx, const struct auth_space *s)
{
    struct tenancy_list_ctx *c = ctx;
    json_array_append_new(c->list, tenancy__space_json(c->t, s));
}

static void tenancy__spaces_list(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    struct tenancy_list_ctx c = {t, json_array(), api_request_principal(req)};
    auth_space_each(tenancy__auth(t), api_request_org(req), tenancy__space_item, &c);
    api_respond_json(req, 200, json_pack("{s:o}", "spaces", c.list));
}

static void tenancy__spaces_create(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"name", NULL};
    if (!api_json_check_fields(req, body, fields)) {
        json_decref(body);
        return;
    }
    const char *name = json_string_value(json_object_get(body, "name"));
    struct tenancy_made *m = tenancy__made_new(t, req, MADE_SPACE, 201, "space", name);
    snprintf(m->org, sizeof m->org, "%s", api_request_org(req));
    int rc =
        name ? auth_space_create_async(tenancy__auth(t), m->org, name, tenancy__made, m) : -EINVAL;
    json_decref(body);
    if (rc < 0)
        tenancy__made_refused(m, rc);
}

static void tenancy__space_delete(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    const char *space = api_request_space(req);
    if (tenancy__refuse_if_apps(t, req, api_request_org(req), space) ||
        tenancy__refuse_if_services(t, req, api_request_org(req), space))
        return;
    int rc = auth_space_delete(tenancy__auth(t), space);
    if (rc < 0)
        tenancy__fail(req, rc, "space");
    else
        tenancy__answer_landed(t, req, 204, NULL);
}

/* ---- roles --------------------------------------------------------------------------------- */

struct tenancy_members {
    struct api_tenancy *t;
    json_t *by_user; /* name -> [roles] */
};

static void tenancy__member(void *ctx, const char *user_guid, enum auth_role role)
{
    struct tenancy_members *m = ctx;
    const struct auth_user *u = auth_user_find(tenancy__auth(m->t), user_guid);
    if (!u)
        return;
    json_t *roles = json_object_get(m->by_user, u->name);
    if (!roles) {
        roles = json_array();
        json_object_set_new(m->by_user, u->name, roles);
    }
    json_array_append_new(roles, json_string(auth_role_name(role)));
}

static void tenancy__members(struct api_request *req, struct api_tenancy *t,
                             const char *space_guid)
{
    struct tenancy_members m = {t, json_object()};
    auth_role_each(tenancy__auth(t), api_request_org(req), space_guid, tenancy__member, &m);
    json_t *list = json_array();
    const char *name;
    json_t *roles;
    json_object_foreach(m.by_user, name, roles)
    {
        json_array_append_new(list, json_pack("{s:s, s:O}", "name", name, "roles", roles));
    }
    json_decref(m.by_user);
    api_respond_json(req, 200, json_pack("{s:o}", "users", list));
}

static void tenancy__org_users(struct api_request *req, void *ctx)
{
    tenancy__members(req, ctx, NULL);
}

static void tenancy__space_users(struct api_request *req, void *ctx)
{
    tenancy__members(req, ctx, api_request_space(req));
}

/* PUT or DELETE .../users/USER/roles/ROLE; user and role are the last two path parameters. */
/* A role's change whose user this copy lacks: looked for in the store first (queued). */
struct tenancy_role_change {
    struct api_tenancy *t;
    struct api_request *req;
    char space[AUTH_GUID_LEN + 1]; /* "": an org role */
    unsigned first;
};

static void tenancy__role_change_known(struct api_request *req, struct api_tenancy *t,
                                       const char *space_guid, unsigned first);

static void tenancy__role_user_looked(void *ctx, int rc)
{
    (void)rc; /* the copy decides */
    struct tenancy_role_change *c = ctx;
    tenancy__role_change_known(c->req, c->t, c->space[0] ? c->space : NULL, c->first);
    free(c);
}

static void tenancy__role_change(struct api_request *req, struct api_tenancy *t,
                                 const char *space_guid, unsigned first)
{
    const char *user_name = api_request_param(req, first);
    if (!auth_user_find(tenancy__auth(t), user_name)) {
        struct tenancy_role_change *c = xcalloc(1, sizeof *c);
        c->t = t;
        c->req = req;
        snprintf(c->space, sizeof c->space, "%s", space_guid ? space_guid : "");
        c->first = first;
        if (auth_catch_up_user_async(tenancy__auth(t), user_name, tenancy__role_user_looked, c) ==
            0)
            return; /* goes on once the store answers */
        free(c);
    }
    tenancy__role_change_known(req, t, space_guid, first);
}

static void tenancy__role_change_known(struct api_request *req, struct api_tenancy *t,
                                       const char *space_guid, unsigned first)
{
    struct auth *a = tenancy__auth(t);
    const char *user_name = api_request_param(req, first);
    const char *role_name = api_request_param(req, first + 1);
    const struct auth_user *u = auth_user_find(a, user_name);
    int role = auth_role_parse(role_name);
    if (!u) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no user \"%s\"", user_name);
        return;
    }
    if (role < 0 || auth_role_in_space((enum auth_role)role) != (space_guid != NULL)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "\"%s\" is no %s role: they are %s",
                          role_name, space_guid ? "space" : "org",
                          space_guid ? "SpaceManager, SpaceDeveloper, SpaceAuditor, SpaceSupporter"
                                     : "OrgManager, BillingManager, OrgAuditor, OrgUser");
        return;
    }
    char guid[AUTH_GUID_LEN + 1];
    snprintf(guid, sizeof guid, "%s", u->guid);
    bool set = !strcmp(api_request_method(req), "PUT");
    int rc = set ? auth_role_set(a, guid, api_request_org(req), space_guid, (enum auth_role)role)
                 : auth_role_unset(a, guid, api_request_org(req), space_guid,
                                   (enum auth_role)role);
    if (rc < 0)
        tenancy__fail(req, rc, "role");
    else
        tenancy__answer_landed(t, req, 204, NULL);
}

static void tenancy__org_role(struct api_request *req, void *ctx)
{
    tenancy__role_change(req, ctx, NULL, 1);
}

static void tenancy__space_role(struct api_request *req, void *ctx)
{
    tenancy__role_change(req, ctx, api_request_space(req), 2);
}

/* ---- quotas ------------------------------------------------------------------------------- */

static void tenancy__quota_item(void *ctx, const struct auth_quota *q)
{
    json_array_append_new(ctx, tenancy__quota_json(q));
}

static void tenancy__quotas_list(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    json_t *list = json_array();
    auth_quota_each(tenancy__auth(t), tenancy__quota_item, list);
    api_respond_json(req, 200, json_pack("{s:o}", "quotas", list));
}

/* POST /v1/quotas and PUT /v1/quotas/NAME: limits absent or null are unlimited (on PUT,
 * absent ones keep their value). */
static void tenancy__quota_put(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    bool create = !strcmp(api_request_method(req), "POST");
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"name", "total_memory_mb", "instance_memory_mb",
                                         "instances", "apps", "routes", "event_mappings", NULL};
    if (!api_json_check_fields(req, body, fields)) {
        json_decref(body);
        return;
    }
    struct auth_quota q = {0};
    const struct auth_quota *have = create ? NULL
                                           : auth_quota_find(tenancy__auth(t),
                                                             api_request_param(req, 0));
    if (!create && !have) {
        api_respond_error(req, SKIFF_E_NOT_FOUND, "no quota \"%s\" (`skiff quotas`)",
                          api_request_param(req, 0));
        json_decref(body);
        return;
    }
    if (have)
        q = *have;
    else
        for (int i = 0; i < AUTH_QUOTA_LIMITS; i++)
            q.limit[i] = AUTH_UNLIMITED;
    const char *name = json_string_value(json_object_get(body, "name"));
    if (name || create)
        snprintf(q.name, sizeof q.name, "%s", name ? name : "");
    for (int i = 0; i < AUTH_QUOTA_LIMITS; i++) {
        const char *key = auth_quota_limit_name((enum auth_quota_limit)i);
        json_t *v = json_object_get(body, key);
        if (!v)
            continue;
        if (json_is_null(v)) {
            q.limit[i] = AUTH_UNLIMITED;
        } else if (json_is_integer(v) && json_integer_value(v) >= 0) {
            q.limit[i] = json_integer_value(v);
        } else {
            api_respond_error(req, SKIFF_E_INVALID_VALUE,
                              "%s is a whole number of at least 0, or null for no limit", key);
            json_decref(body);
            return;
        }
    }
    json_decref(body);
    struct tenancy_made *m =
        tenancy__made_new(t, req, MADE_QUOTA, create ? 201 : 200, "quota", q.name);
    int rc = auth_quota_put_async(tenancy__auth(t), &q, tenancy__made, m);
    if (rc < 0)
        tenancy__made_refused(m, rc);
}

static void tenancy__quota_delete(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    const struct auth_quota *q = auth_quota_find(tenancy__auth(t), api_request_param(req, 0));
    char guid[AUTH_GUID_LEN + 1];
    snprintf(guid, sizeof guid, "%s", q ? q->guid : "");
    int rc = q ? auth_quota_delete(tenancy__auth(t), guid) : -ENOENT;
    if (rc < 0)
        tenancy__fail(req, rc, "such quota");
    else
        tenancy__answer_landed(t, req, 204, NULL);
}

/* PUT /v1/orgs/ORG/quota and PUT /v1/orgs/ORG/spaces/SPACE/quota: {"quota": NAME or null}. */
static void tenancy__assign_quota(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    static const char *const fields[] = {"quota", NULL};
    if (!api_json_check_fields(req, body, fields)) {
        json_decref(body);
        return;
    }
    json_t *v = json_object_get(body, "quota");
    const struct auth_quota *q = json_is_string(v)
                                     ? auth_quota_find(tenancy__auth(t), json_string_value(v))
                                     : NULL;
    if (!json_is_null(v) && !q) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "quota is the name of a quota (`skiff quotas`), or null for none");
        json_decref(body);
        return;
    }
    json_decref(body);
    const char *space = api_request_space(req);
    int rc = space ? auth_space_set_quota(tenancy__auth(t), space, q ? q->guid : NULL)
                   : auth_org_set_quota(tenancy__auth(t), api_request_org(req),
                                        q ? q->guid : NULL);
    if (rc < 0) {
        tenancy__fail(req, rc, "such org or space");
        return;
    }
    if (space)
        tenancy__answer_landed(t, req, 200,
                               tenancy__space_json(t, auth_space_get(t->cfg.auth, space)));
    else
        tenancy__answer_landed(
            t, req, 200, tenancy__org_json(t, auth_org_find(t->cfg.auth, api_request_org(req))));
}

/* ---- the permission table ------------------------------------------------------------------ */

static void tenancy__permissions(struct api_request *req, void *ctx)
{
    struct api_tenancy *t = ctx;
    json_t *perms = json_array();
    for (int p = 0; p < AUTH_PERM_COUNT; p++) {
        json_t *roles = json_array();
        unsigned mask = auth_perm_roles((enum auth_perm)p);
        for (int r = 0; r < AUTH_ROLE_COUNT; r++)
            if (mask >> r & 1)
                json_array_append_new(roles, json_string(auth_role_name((enum auth_role)r)));
        json_array_append_new(perms, json_pack("{s:s, s:s, s:o}", "name",
                                               auth_perm_name((enum auth_perm)p), "meaning",
                                               auth_perm_meaning((enum auth_perm)p), "roles",
                                               roles));
    }
    api_respond_json(req, 200,
                     json_pack("{s:o, s:o}", "permissions", perms, "endpoints",
                               api_routes_json(t->api)));
}

/* ---- registration -------------------------------------------------------------------------- */

int api_tenancy_register(struct api *api, const struct api_tenancy_config *cfg,
                         struct api_tenancy **out)
{
    struct api_tenancy *t = xcalloc(1, sizeof *t);
    t->api = api;
    t->cfg = *cfg;
#define P(perm, scope) (API_PERM(AUTH_PERM_##perm) | API_SCOPE_##scope)
    static const struct {
        const char *method, *pattern;
        int flags;
        api_handler_fn fn;
    } routes[] = {
        {"POST", "/v1/auth/token", P(PUBLIC, NONE) | API_SMALL_BODY, tenancy__token},
        {"POST", "/v1/auth/logout", P(USER, NONE), tenancy__logout},
        {"GET", "/v1/auth/me", P(USER, NONE), tenancy__me_get},
        {"GET", "/v1/permissions", P(USER, NONE), tenancy__permissions},
        {"GET", "/v1/users", P(ADMIN, NONE), tenancy__users_list},
        {"POST", "/v1/users", P(ADMIN, NONE), tenancy__users_create},
        {"DELETE", "/v1/users/*", P(ADMIN, NONE), tenancy__users_delete},
        /* the user themself or an admin, decided in the handler: others get a 404 */
        {"PUT", "/v1/users/*/password", P(USER, NONE), tenancy__password},
        {"GET", "/v1/tokens", P(USER, NONE), tenancy__tokens_list},
        {"POST", "/v1/tokens", P(USER, NONE), tenancy__tokens_create},
        {"DELETE", "/v1/tokens/*", P(USER, NONE), tenancy__tokens_delete},
        {"GET", "/v1/orgs", P(USER, NONE), tenancy__orgs_list},
        {"POST", "/v1/orgs", P(ADMIN, NONE), tenancy__orgs_create},
        {"GET", "/v1/orgs/*", P(ORG_READ, ORG), tenancy__org_get},
        {"DELETE", "/v1/orgs/*", P(ADMIN, ORG), tenancy__org_delete},
        {"GET", "/v1/orgs/*/spaces", P(ORG_READ, ORG), tenancy__spaces_list},
        {"POST", "/v1/orgs/*/spaces", P(ORG_MANAGE, ORG), tenancy__spaces_create},
        {"DELETE", "/v1/orgs/*/spaces/*", P(ORG_MANAGE, ORG_SPACE), tenancy__space_delete},
        {"GET", "/v1/orgs/*/users", P(ORG_READ, ORG), tenancy__org_users},
        {"GET", "/v1/quotas", P(USER, NONE), tenancy__quotas_list},
        {"POST", "/v1/quotas", P(ADMIN, NONE), tenancy__quota_put},
        {"PUT", "/v1/quotas/*", P(ADMIN, NONE), tenancy__quota_put},
        {"DELETE", "/v1/quotas/*", P(ADMIN, NONE), tenancy__quota_delete},
        {"PUT", "/v1/orgs/*/quota", P(ADMIN, ORG), tenancy__assign_quota},
        {"PUT", "/v1/orgs/*/spaces/*/quota", P(ORG_MANAGE, ORG_SPACE), tenancy__assign_quota},
        {"PUT", "/v1/orgs/*/users/*/roles/*", P(ORG_MANAGE, ORG), tenancy__org_role},
        {"DELETE", "/v1/orgs/*/users/*/roles/*", P(ORG_MANAGE, ORG), tenancy__org_role},
        {"GET", "/v1/orgs/*/spaces/*/users", P(SPACE_READ, ORG_SPACE), tenancy__space_users},
        {"PUT", "/v1/orgs/*/spaces/*/users/*/roles/*", P(SPACE_MANAGE, ORG_SPACE),
         tenancy__space_role},
        {"DELETE", "/v1/orgs/*/spaces/*/users/*/roles/*", P(SPACE_MANAGE, ORG_SPACE),
         tenancy__space_role},
    };
#undef P
    for (size_t i = 0; i < ARRAY_SIZE(routes); i++)
        api_route_add(api, routes[i].method, routes[i].pattern, routes[i].flags, routes[i].fn, t);
    *out = t;
    return 0;
}

void api_tenancy_free(struct api_tenancy *t)
{
    free(t);
}
