/* auth: users, orgs, spaces, roles and tokens in memory, written through to the store. */
#include "auth/auth.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "store/store.h"

#define AUTH_HASH_BYTES 32
#define AUTH_TOKEN_BYTES 32 /* 24 random, 8 of their MAC (auth__token_mac) */
#define AUTH_TOKEN_MAC_BYTES 8

struct auth_role_row {
    char user_guid[AUTH_GUID_LEN + 1];
    char org_guid[AUTH_GUID_LEN + 1];
    char space_guid[AUTH_GUID_LEN + 1]; /* "" for an org role */
    enum auth_role role;
};

struct auth_token_row {
    struct auth_token_info info;
    unsigned char hash[AUTH_HASH_BYTES];
};

struct auth {
    struct store *store;
    struct auth_user *users; /* by name */
    size_t n_users;
    size_t *users_by_guid;   /* indexes into users, by guid (rebuilt when users change) */
    struct auth_org *orgs;
    size_t n_orgs;
    struct auth_space *spaces;
    size_t n_spaces;
    struct auth_role_row *roles;
    size_t n_roles;
    struct auth_token_row *tokens;
    size_t n_tokens;
    struct auth_quota *quotas;
    size_t n_quotas;
    bool shared;      /* other skiffds write the same store (auth_set_shared) */
    char *generation; /* the AUTH_DOC_GENERATION read at the last auth_catch_up */
    uint64_t generation_news; /* store_doc_news_kind of that record before that read */
    uint64_t loaded_news;     /* store_doc_news_kind of "auth" before this copy was read */
    char own_generation[33];  /* the AUTH_DOC_GENERATION this skiffd wrote last */
    struct auth_reloading *reloads; /* reads of every kind under way (auth__reload_async) */
    uint64_t changes; /* writes queued and reloads made here: an older read lacks them */
    /* signs the tokens made here (auth_set_token_key: on a shared store, every skiffd's) */
    unsigned char token_key[crypto_auth_hmacsha256_KEYBYTES];
    /* keyed reads for what the copy lacks (auth__catch_up); those refused are counted per
     * second for the log */
    struct rate_limit catch_up_rate;
    int64_t catch_up_second;
    unsigned catch_up_refused;
    uint64_t catch_up_refused_total;
    /* the writes of the change being made, queued (auth_landed closes it), and every batch
     * whose writes are not all reported yet */
    struct auth_batch *batch;
    struct auth_batch *batches;
};

/* The writes of one change (or of several, until auth_landed closes it), queued in order on
 * the store's writer: done hears once every one of them is reported. */
struct auth_batch {
    struct auth *a; /* NULL once auth_free ran: the writes still report here */
    int rc;         /* the first failure */
    unsigned pending;
    bool closed;
    auth_done_fn *done;
    void *ctx;
    struct auth_batch *next;
};

/* Keyed reads of the store for a token or user name the copy lacks, at most this many a
 * second: a client sending made-up tokens or names cannot make each request a database read
 * on the event loop. One made through another skiffd is found without such a read once the
 * change feed told of auth's documents (the copy is then read again). */
#define AUTH_CATCH_UP_READS_PER_S 50
#define AUTH_CATCH_UP_BURST 20

static void auth__copy(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

#define AUTH_COPY(dst, src) auth__copy((dst), sizeof(dst), (src))

/* ---- roles and permissions: the one table ------------------------------------------------- */

static const char *const auth__role_names[AUTH_ROLE_COUNT] = {
    [AUTH_ROLE_ORG_MANAGER] = "OrgManager",         [AUTH_ROLE_BILLING_MANAGER] = "BillingManager",
    [AUTH_ROLE_ORG_AUDITOR] = "OrgAuditor",         [AUTH_ROLE_ORG_USER] = "OrgUser",
    [AUTH_ROLE_SPACE_MANAGER] = "SpaceManager",     [AUTH_ROLE_SPACE_DEVELOPER] = "SpaceDeveloper",
    [AUTH_ROLE_SPACE_AUDITOR] = "SpaceAuditor",     [AUTH_ROLE_SPACE_SUPPORTER] = "SpaceSupporter",
};

static const char *const auth__role_snake[AUTH_ROLE_COUNT] = {
    "org_manager",   "billing_manager", "org_auditor",   "org_user",
    "space_manager", "space_developer", "space_auditor", "space_supporter",
};

#define R(x) (1u << AUTH_ROLE_##x)

/* Who may do what, after Cloud Foundry's published role table: managers manage people and
 * see what runs, developers change what runs, supporters keep it running, auditors read. */
static const struct {
    const char *name;
    enum { AUTH_SCOPE_NONE, AUTH_SCOPE_ORG, AUTH_SCOPE_SPACE } scope;
    unsigned roles;
    const char *meaning;
} auth__perms[AUTH_PERM_COUNT] = {
    [AUTH_PERM_PUBLIC] = {"public", AUTH_SCOPE_NONE, 0, "anyone, without a token"},
    [AUTH_PERM_USER] = {"user", AUTH_SCOPE_NONE, 0,
                        "any valid token of a user (and the local admin token); not an instance's"},
    [AUTH_PERM_ADMIN] = {"admin", AUTH_SCOPE_NONE, 0, "the platform admin only"},
    [AUTH_PERM_ORG_READ] = {"org.read", AUTH_SCOPE_ORG,
                            R(ORG_MANAGER) | R(BILLING_MANAGER) | R(ORG_AUDITOR) | R(ORG_USER),
                            "see the org, its spaces and its members"},
    [AUTH_PERM_ORG_MANAGE] = {"org.manage", AUTH_SCOPE_ORG, R(ORG_MANAGER),
                              "make and delete spaces; give and take org roles"},
    [AUTH_PERM_SPACE_READ] = {"space.read", AUTH_SCOPE_SPACE,
                              R(ORG_MANAGER) | R(SPACE_MANAGER) | R(SPACE_DEVELOPER) |
                                  R(SPACE_AUDITOR) | R(SPACE_SUPPORTER),
                              "see the space's apps (state, instances, limits), routes, event "
                              "mappings, topics, members"},
    [AUTH_PERM_SPACE_LOGS] = {"space.logs", AUTH_SCOPE_SPACE,
                              R(SPACE_DEVELOPER) | R(SPACE_AUDITOR) | R(SPACE_SUPPORTER),
                              "read the apps' logs and the topics' events"},
    [AUTH_PERM_SPACE_OPERATE] =
        {"space.operate", AUTH_SCOPE_SPACE, R(SPACE_DEVELOPER) | R(SPACE_SUPPORTER),
         "start, stop, restart and restage apps; invoke them; replay events"},
    [AUTH_PERM_SPACE_DEVELOP] =
        {"space.develop", AUTH_SCOPE_SPACE, R(SPACE_DEVELOPER),
         "push, change and delete apps; their env (secrets); routes; event mappings"},
    [AUTH_PERM_SPACE_MANAGE] = {"space.manage", AUTH_SCOPE_SPACE, R(ORG_MANAGER) | R(SPACE_MANAGER),
                                "give and take space roles"},
    [AUTH_PERM_PUBLISH] = {"space.publish", AUTH_SCOPE_SPACE, R(SPACE_DEVELOPER),
                           "publish events (and the space's instances, with their own token)"},
    [AUTH_PERM_SPACE_SECRETS] =
        {"space.secrets", AUTH_SCOPE_SPACE, R(SPACE_DEVELOPER),
         "read service credentials: user-provided services' and service keys'"},
    [AUTH_PERM_BLOBS] = {"blobs.read", AUTH_SCOPE_NONE, 0,
                         "read packages and droplets by digest (GET /v1/blobs): the platform "
                         "admin, and a cell with its own token for a droplet placed on it"},
};

#undef R

const char *auth_role_name(enum auth_role role)
{
    return (unsigned)role < AUTH_ROLE_COUNT ? auth__role_names[role] : "unknown";
}

int auth_role_parse(const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < AUTH_ROLE_COUNT; i++)
        if (!strcasecmp(name, auth__role_names[i]) || !strcasecmp(name, auth__role_snake[i]))
            return i;
    return -1;
}

bool auth_role_in_space(enum auth_role role)
{
    return role >= AUTH_ROLE_SPACE_MANAGER && role < AUTH_ROLE_COUNT;
}

const char *auth_perm_name(enum auth_perm perm)
{
    return (unsigned)perm < AUTH_PERM_COUNT ? auth__perms[perm].name : "unknown";
}

bool auth_perm_in_space(enum auth_perm perm)
{
    return (unsigned)perm < AUTH_PERM_COUNT && auth__perms[perm].scope == AUTH_SCOPE_SPACE;
}

bool auth_perm_in_org(enum auth_perm perm)
{
    return (unsigned)perm < AUTH_PERM_COUNT && auth__perms[perm].scope == AUTH_SCOPE_ORG;
}

unsigned auth_perm_roles(enum auth_perm perm)
{
    return (unsigned)perm < AUTH_PERM_COUNT ? auth__perms[perm].roles : 0;
}

const char *auth_perm_meaning(enum auth_perm perm)
{
    return (unsigned)perm < AUTH_PERM_COUNT ? auth__perms[perm].meaning : "";
}

/* ---- names and passwords ------------------------------------------------------------------ */

bool auth_user_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > AUTH_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (!(isalnum(c) || c == '.' || c == '_' || c == '@' || c == '-'))
            return false;
    }
    return true;
}

int auth_password_hash(const char *password, char out[AUTH_PASSWORD_HASH_MAX])
{
    size_t n = strlen(password);
    if (n < AUTH_PASSWORD_MIN || n > AUTH_PASSWORD_MAX)
        return -EINVAL;
    _Static_assert(crypto_pwhash_STRBYTES <= AUTH_PASSWORD_HASH_MAX, "hash room");
    if (crypto_pwhash_str(out, password, n, crypto_pwhash_OPSLIMIT_INTERACTIVE,
                          crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0)
        return -ENOMEM;
    return 0;
}

bool auth_password_verify(const char *hash, const char *password)
{
    /* a fixed hash of the same cost, so an unknown user takes as long as a wrong password */
    static char dummy[crypto_pwhash_STRBYTES];
    static int dummy_ready;
    if (!hash) {
        if (!__atomic_load_n(&dummy_ready, __ATOMIC_ACQUIRE)) {
            char tmp[crypto_pwhash_STRBYTES];
            if (crypto_pwhash_str(tmp, "no such user here", 17,
                                  crypto_pwhash_OPSLIMIT_INTERACTIVE,
                                  crypto_pwhash_MEMLIMIT_INTERACTIVE) == 0) {
                memcpy(dummy, tmp, sizeof dummy);
                __atomic_store_n(&dummy_ready, 1, __ATOMIC_RELEASE);
            }
        }
        if (__atomic_load_n(&dummy_ready, __ATOMIC_ACQUIRE) &&
            crypto_pwhash_str_verify(dummy, password, strlen(password)) == 0)
            return false;
        return false;
    }
    return crypto_pwhash_str_verify(hash, password, strlen(password)) == 0;
}

/* ---- persistence --------------------------------------------------------------------------- */

#define AUTH_DOC_USER "auth.user"
#define AUTH_DOC_ORG "auth.org"
#define AUTH_DOC_SPACE "auth.space"
#define AUTH_DOC_ROLE "auth.role"
#define AUTH_DOC_TOKEN "auth.token"
#define AUTH_DOC_QUOTA "auth.quota"
/* Indexes for other skiffds on a shared store, so that a miss there costs one keyed read:
 * a token's hash (hex) and a user's name, each to the guid. */
#define AUTH_DOC_TOKEN_HASH "auth.token.hash"
#define AUTH_DOC_USER_NAME "auth.user.name"
/* Claims of names that must be unique among every skiffd on the store (auth__claim): an org's
 * name, a space's "ORG_GUID/NAME", a quota's name, an API token's "USER_GUID/NAME". A user's
 * name is claimed by its AUTH_DOC_USER_NAME index. */
#define AUTH_DOC_ORG_NAME "auth.org.name"
#define AUTH_DOC_SPACE_NAME "auth.space.name"
#define AUTH_DOC_QUOTA_NAME "auth.quota.name"
#define AUTH_DOC_TOKEN_NAME "auth.token.name"
/* One document, rewritten with a new random value after every change other than a token made
 * (those are found by their hash), so that the others read everything again only then. */
#define AUTH_DOC_GENERATION "auth.generation"

/* ---- writes: queued, in order, the change made in memory at once -------------------------- */

static struct auth_batch *auth__batch(struct auth *a)
{
    if (!a->batch) {
        a->batch = xcalloc(1, sizeof *a->batch);
        a->batch->a = a;
        a->batch->next = a->batches;
        a->batches = a->batch;
    }
    return a->batch;
}

/* Every write reported and the batch closed: a refused write leaves memory ahead of the
 * store, so everything is read again (a write given up as the store closes leaves it be). */
static void auth__batch_end(struct auth_batch *b)
{
    struct auth *a = b->a;
    if (a) {
        for (struct auth_batch **p = &a->batches; *p; p = &(*p)->next)
            if (*p == b) {
                *p = b->next;
                break;
            }
    }
    int rc = b->rc == -ECANCELED ? b->rc : b->rc < 0 ? -EIO : 0;
    if (a && rc == -EIO) {
        log_error("auth: the store refused a write (%s): everything is read again",
                  skiff_strerror(b->rc));
        auth_reload(a);
    }
    if (b->done)
        b->done(b->ctx, rc);
    free(b);
}

static void auth__batch_note(struct auth_batch *b, int rc)
{
    if (rc < 0 && !b->rc)
        b->rc = rc;
    if (--b->pending == 0 && b->closed)
        auth__batch_end(b);
}

static void auth__put_landed(void *ctx, int rc)
{
    auth__batch_note(ctx, rc);
}

static void auth__delete_landed(void *ctx, int rc)
{
    auth__batch_note(ctx, rc == -ENOENT ? 0 : rc); /* absent already is fine */
}

/* Queues a put (json NULL: a delete) into the open batch; -EIO when it cannot be queued. */
static int auth__queue(struct auth *a, const char *kind, const char *id, const char *json)
{
    struct auth_batch *b = auth__batch(a);
    b->pending++;
    a->changes++;
    int rc = json ? store_doc_put_async(a->store, kind, id, json, auth__put_landed, b)
                  : store_doc_delete_async(a->store, kind, id, auth__delete_landed, b);
    if (rc < 0) { /* its callback is not called */
        b->pending--;
        if (!b->rc)
            b->rc = rc;
        return -EIO;
    }
    return 0;
}

void auth_landed(struct auth *a, auth_done_fn *done, void *ctx)
{
    struct auth_batch *b = a->batch;
    if (!b) {
        done(ctx, 0);
        return;
    }
    a->batch = NULL;
    b->closed = true;
    b->done = done;
    b->ctx = ctx;
    if (!b->pending)
        auth__batch_end(b);
}

/* Reaps the store until *flag is set (SQLite sets it during the call). */
static void auth__wait_for(struct auth *a, const bool *flag)
{
    while (!*flag) {
        int fd = store_async_fd(a->store);
        if (fd < 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, 100);
        store_async_reap(a->store);
    }
}

struct auth_waited {
    bool done;
    int rc;
};

static void auth__waited(void *ctx, int rc)
{
    struct auth_waited *w = ctx;
    w->rc = rc;
    w->done = true;
}

int auth_wait(struct auth *a)
{
    struct auth_waited w = {0};
    auth_landed(a, auth__waited, &w);
    auth__wait_for(a, &w.done);
    return w.done ? w.rc : -EIO;
}

/* Tells the other skiffds on the store that something changed (auth_catch_up). */
static void auth__changed(struct auth *a)
{
    if (!a->shared)
        return;
    char value[33];
    random_hex(value, 16);
    char *text = xasprintf("{\"generation\":\"%s\"}", value);
    if (auth__queue(a, AUTH_DOC_GENERATION, "auth", text) == 0)
        memcpy(a->own_generation, value, sizeof value);
    free(text);
}

/* A record goes from the store (absent already is fine), and the others are told. */
static int auth__delete(struct auth *a, const char *kind, const char *id)
{
    if (auth__queue(a, kind, id, NULL) < 0)
        return -EIO;
    auth__changed(a);
    return 0;
}

static int auth__put(struct auth *a, const char *kind, const char *id, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
    if (!text)
        return -ENOMEM;
    int rc = auth__queue(a, kind, id, text);
    free(text);
    if (rc < 0)
        return -EIO;
    if (strcmp(kind, AUTH_DOC_TOKEN) && strcmp(kind, AUTH_DOC_TOKEN_HASH))
        auth__changed(a);
    return 0;
}

int64_t auth_claim_grace_ms = 30 * 1000;

/* Claims a unique name (kind, id) for the record guid: a document {field: guid, claimed_at}
 * created only when absent (store_doc_create_async), so that of two skiffds making one name
 * at the same moment, on one PostgreSQL, one is told -EEXIST; the check against this copy in
 * memory comes first and answers most. A claim the record already holds (a fixed guid made
 * again) is fine. An orphaned claim (older than auth_claim_grace_ms, a claim without a time
 * counting as old, and naming a record that does not exist: its skiffd died between the
 * claim and the record's write, or between the record's delete and the claim's) is taken
 * over by replacing exactly the body read (store_doc_replace_async), so of two skiffds
 * taking it over at once one wins; a claim whose record exists never is. Every step is
 * queued on the store's writer, in turn: the create, and after -EEXIST a fresh read of the
 * claim, then of its record, then the replace. then(a, rc, arg) hears 0 (claimed), -EEXIST
 * or -EIO, from store_async_reap (during the call on SQLite). */
struct auth_claim {
    struct auth *a;
    char *kind, *id, *field, *text, *have;
    char guid[AUTH_GUID_LEN + 1];
    void (*then)(struct auth *a, int rc, void *arg);
    void *arg;
};

static void auth__claim_end(struct auth_claim *c, int rc)
{
    c->then(c->a, rc == 0 || rc == -EEXIST ? rc : -EIO, c->arg);
    free(c->kind);
    free(c->id);
    free(c->field);
    free(c->text);
    free(c->have);
    free(c);
}

static void auth__claim_replaced(void *ctx, int rc)
{
    struct auth_claim *c = ctx;
    if (rc == 0)
        log_warning("the name %s (%s) was claimed by a record that was never written or is "
                    "gone: taken over",
                    c->id, c->kind);
    auth__claim_end(c, rc == 0 ? 0 : -EEXIST);
}

static void auth__claim_record_read(void *ctx, int rc, const char *json)
{
    (void)json;
    struct auth_claim *c = ctx;
    if (rc != -ENOENT || store_doc_replace_async(c->a->store, c->kind, c->id, c->have, c->text,
                                                 auth__claim_replaced, c) < 0)
        auth__claim_end(c, -EEXIST);
}

static void auth__claim_read(void *ctx, int rc, const char *have)
{
    struct auth_claim *c = ctx;
    if (rc < 0) {
        auth__claim_end(c, -EEXIST);
        return;
    }
    json_t *o = json_loads(have, 0, NULL);
    const char *owner = json_string_value(json_object_get(o, c->field));
    int64_t at = (int64_t)json_integer_value(json_object_get(o, "claimed_at"));
    if (owner && !strcmp(owner, c->guid)) {
        json_decref(o);
        auth__claim_end(c, 0);
        return;
    }
    int queued = -1;
    if (owner && time_now_ms() - at >= auth_claim_grace_ms) {
        c->have = xstrdup(have);
        char *record_kind = xasprintf("auth.%s", c->field);
        queued =
            store_doc_get_fresh_async(c->a->store, record_kind, owner, auth__claim_record_read, c);
        free(record_kind);
    }
    json_decref(o);
    if (queued < 0)
        auth__claim_end(c, -EEXIST);
}

static void auth__claim_created(void *ctx, int rc)
{
    struct auth_claim *c = ctx;
    if (rc != -EEXIST)
        auth__claim_end(c, rc);
    else if (store_doc_get_fresh_async(c->a->store, c->kind, c->id, auth__claim_read, c) < 0)
        auth__claim_end(c, -EIO);
}

/* Returns -EIO (then not called) when nothing could be queued. */
static int auth__claim_async(struct auth *a, const char *kind, const char *id, const char *field,
                             const char *guid, void (*then)(struct auth *a, int rc, void *arg),
                             void *arg)
{
    json_t *doc = json_pack("{s:s, s:I}", field, guid, "claimed_at", (json_int_t)time_now_ms());
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!text)
        return -ENOMEM;
    struct auth_claim *c = xcalloc(1, sizeof *c);
    c->a = a;
    c->kind = xstrdup(kind);
    c->id = xstrdup(id);
    c->field = xstrdup(field);
    c->text = text;
    AUTH_COPY(c->guid, guid);
    c->then = then;
    c->arg = arg;
    if (store_doc_create_async(a->store, kind, id, text, auth__claim_created, c) < 0) {
        c->then = NULL;
        free(c->kind);
        free(c->id);
        free(c->field);
        free(c->text);
        free(c);
        return -EIO;
    }
    return 0;
}

/* Lets a name go, only while guid holds it: a copy that is behind (another skiffd made the
 * name again since) must not free the new owner's claim. */
struct auth_unclaim {
    struct store *store;
    struct auth_batch *b;
    char *kind, *id, *field;
    char guid[AUTH_GUID_LEN + 1];
};

static void auth__unclaim_read(void *ctx, int rc, const char *have)
{
    struct auth_unclaim *u = ctx;
    json_t *o = rc == 0 ? json_loads(have, 0, NULL) : NULL;
    const char *owner = json_string_value(json_object_get(o, u->field));
    if (owner && !strcmp(owner, u->guid)) {
        u->b->pending++;
        if (store_doc_delete_async(u->store, u->kind, u->id, auth__delete_landed, u->b) < 0)
            u->b->pending--;
    }
    json_decref(o);
    auth__batch_note(u->b, rc == -ENOENT ? 0 : rc); /* the read's */
    free(u->kind);
    free(u->id);
    free(u->field);
    free(u);
}

/* The read and the delete are queued, in the open batch: the change is landed once both are
 * made. */
static void auth__unclaim(struct auth *a, const char *kind, const char *id, const char *field,
                          const char *guid)
{
    struct auth_unclaim *u = xcalloc(1, sizeof *u);
    u->store = a->store;
    u->b = auth__batch(a);
    u->kind = xstrdup(kind);
    u->id = xstrdup(id);
    u->field = xstrdup(field);
    AUTH_COPY(u->guid, guid);
    u->b->pending++;
    if (store_doc_get_fresh_async(a->store, kind, id, auth__unclaim_read, u) < 0) {
        u->b->pending--;
        free(u->kind);
        free(u->id);
        free(u->field);
        free(u);
    }
}

/* "A/B": a claim of a name unique within A (a space in its org, a token of its user). */
static char *auth__pair_id(const char *org_guid, const char *name)
{
    return xasprintf("%s/%s", org_guid, name);
}

static int auth__user_save(struct auth *a, const struct auth_user *u)
{
    int rc = auth__put(a, AUTH_DOC_USER, u->guid,
                       json_pack("{s:s, s:s, s:b, s:I}", "name", u->name, "password_hash",
                                 u->password_hash ? u->password_hash : "", "admin", u->admin,
                                 "created_at", (json_int_t)u->created_at));
    if (rc < 0)
        return rc;
    return auth__put(a, AUTH_DOC_USER_NAME, u->name, json_pack("{s:s}", "user", u->guid));
}

static int auth__org_save(struct auth *a, const struct auth_org *o)
{
    return auth__put(a, AUTH_DOC_ORG, o->guid,
                     json_pack("{s:s, s:s, s:I}", "name", o->name, "quota", o->quota_guid,
                               "created_at", (json_int_t)o->created_at));
}

static int auth__space_save(struct auth *a, const struct auth_space *s)
{
    return auth__put(a, AUTH_DOC_SPACE, s->guid,
                     json_pack("{s:s, s:s, s:s, s:b, s:I}", "org", s->org_guid, "name", s->name,
                               "quota", s->quota_guid, "allow_ssh", !s->ssh_disallowed,
                               "created_at", (json_int_t)s->created_at));
}

static const char *const auth__limit_names[AUTH_QUOTA_LIMITS] = {
    "total_memory_mb", "instance_memory_mb", "instances", "apps", "routes", "event_mappings",
};

const char *auth_quota_limit_name(enum auth_quota_limit limit)
{
    return (unsigned)limit < AUTH_QUOTA_LIMITS ? auth__limit_names[limit] : "?";
}

static int auth__quota_save(struct auth *a, const struct auth_quota *q)
{
    json_t *o = json_pack("{s:s}", "name", q->name);
    for (int i = 0; i < AUTH_QUOTA_LIMITS; i++)
        json_object_set_new(o, auth__limit_names[i], json_integer(q->limit[i]));
    return auth__put(a, AUTH_DOC_QUOTA, q->guid, o);
}

static int auth__load_quota(void *ctx, const char *id, const char *text)
{
    struct auth *a = ctx;
    json_t *o = json_loads(text, 0, NULL);
    const char *name = json_string_value(json_object_get(o, "name"));
    if (name) {
        a->quotas = xrealloc(a->quotas, (a->n_quotas + 1) * sizeof *a->quotas);
        struct auth_quota *q = &a->quotas[a->n_quotas++];
        memset(q, 0, sizeof *q);
        AUTH_COPY(q->guid, id);
        AUTH_COPY(q->name, name);
        for (int i = 0; i < AUTH_QUOTA_LIMITS; i++) {
            json_t *v = json_object_get(o, auth__limit_names[i]);
            q->limit[i] = json_is_integer(v) ? json_integer_value(v) : AUTH_UNLIMITED;
        }
    }
    json_decref(o);
    return 0;
}

static char *auth__role_id(const struct auth_role_row *r)
{
    return xasprintf("%s/%s/%s/%s", r->user_guid, r->org_guid, r->space_guid,
                     auth__role_names[r->role]);
}

static int auth__role_save(struct auth *a, const struct auth_role_row *r)
{
    char *id = auth__role_id(r);
    int rc = auth__put(a, AUTH_DOC_ROLE, id,
                       json_pack("{s:s, s:s, s:s, s:s}", "user", r->user_guid, "org", r->org_guid,
                                 "space", r->space_guid, "role", auth__role_names[r->role]));
    free(id);
    return rc;
}

static int auth__role_forget(struct auth *a, const struct auth_role_row *r)
{
    char *id = auth__role_id(r);
    int rc = auth__delete(a, AUTH_DOC_ROLE, id);
    free(id);
    return rc;
}

/* A token ends in the store: its record and its hash's index. */
static int auth__token_forget(struct auth *a, const struct auth_token_row *t)
{
    char hex[2 * AUTH_HASH_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, t->hash, sizeof t->hash);
    auth__queue(a, AUTH_DOC_TOKEN_HASH, hex, NULL); /* absent for older tokens */
    if (t->info.kind == AUTH_TOKEN_API) {
        char *id = auth__pair_id(t->info.user_guid, t->info.name);
        auth__unclaim(a, AUTH_DOC_TOKEN_NAME, id, "token", t->info.guid);
        free(id);
    }
    return auth__delete(a, AUTH_DOC_TOKEN, t->info.guid);
}

static int auth__token_save(struct auth *a, const struct auth_token_row *t)
{
    static const char *const kinds[] = {"access", "refresh", "api"};
    char hex[2 * AUTH_HASH_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, t->hash, sizeof t->hash);
    int rc = auth__put(a, AUTH_DOC_TOKEN_HASH, hex, json_pack("{s:s}", "token", t->info.guid));
    if (rc < 0)
        return rc;
    return auth__put(a, AUTH_DOC_TOKEN, t->info.guid,
                     json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I}", "hash", hex, "user",
                               t->info.user_guid, "kind", kinds[t->info.kind], "name",
                               t->info.name, "space", t->info.space_guid, "role",
                               t->info.space_role >= 0 ? auth__role_names[t->info.space_role]
                                                       : "",
                               "expires_at", (json_int_t)t->info.expires_at, "created_at",
                               (json_int_t)t->info.created_at));
}


static int auth__load_user(void *ctx, const char *id, const char *text)
{
    struct auth *a = ctx;
    json_t *o = json_loads(text, 0, NULL);
    const char *name = NULL, *hash = NULL;
    int admin = 0;
    json_int_t created = 0;
    if (o && json_unpack(o, "{s:s, s:s, s:b, s?:I}", "name", &name, "password_hash", &hash,
                         "admin", &admin, "created_at", &created) == 0) {
        a->users = xrealloc(a->users, (a->n_users + 1) * sizeof *a->users);
        struct auth_user *u = &a->users[a->n_users++];
        memset(u, 0, sizeof *u);
        AUTH_COPY(u->guid, id);
        AUTH_COPY(u->name, name);
        u->password_hash = xstrdup(hash);
        u->admin = admin;
        u->created_at = created;
    }
    json_decref(o);
    return 0;
}

static int auth__load_org(void *ctx, const char *id, const char *text)
{
    struct auth *a = ctx;
    json_t *o = json_loads(text, 0, NULL);
    const char *name = NULL, *quota = "";
    json_int_t created = 0;
    if (o && json_unpack(o, "{s:s, s?:s, s?:I}", "name", &name, "quota", &quota, "created_at",
                         &created) == 0) {
        a->orgs = xrealloc(a->orgs, (a->n_orgs + 1) * sizeof *a->orgs);
        struct auth_org *org = &a->orgs[a->n_orgs++];
        memset(org, 0, sizeof *org);
        AUTH_COPY(org->guid, id);
        AUTH_COPY(org->name, name);
        AUTH_COPY(org->quota_guid, quota);
        org->created_at = created;
    }
    json_decref(o);
    return 0;
}

static int auth__load_space(void *ctx, const char *id, const char *text)
{
    struct auth *a = ctx;
    json_t *o = json_loads(text, 0, NULL);
    const char *name = NULL, *org = NULL, *quota = "";
    json_int_t created = 0;
    int allow_ssh = 1; /* spaces stored before it was a setting allow it, as CF's default */
    if (o && json_unpack(o, "{s:s, s:s, s?:s, s?:b, s?:I}", "org", &org, "name", &name, "quota",
                         &quota, "allow_ssh", &allow_ssh, "created_at", &created) == 0) {
        a->spaces = xrealloc(a->spaces, (a->n_spaces + 1) * sizeof *a->spaces);
        struct auth_space *s = &a->spaces[a->n_spaces++];
        memset(s, 0, sizeof *s);
        AUTH_COPY(s->guid, id);
        AUTH_COPY(s->org_guid, org);
        AUTH_COPY(s->name, name);
        AUTH_COPY(s->quota_guid, quota);
        s->ssh_disallowed = !allow_ssh;
        s->created_at = created;
    }
    json_decref(o);
    return 0;
}

static int auth__load_role(void *ctx, const char *id, const char *text)
{
    struct auth *a = ctx;
    (void)id;
    json_t *o = json_loads(text, 0, NULL);
    const char *user = NULL, *org = NULL, *space = NULL, *role = NULL;
    if (o && json_unpack(o, "{s:s, s:s, s:s, s:s}", "user", &user, "org", &org, "space", &space,
                         "role", &role) == 0 &&
        auth_role_parse(role) >= 0) {
        a->roles = xrealloc(a->roles, (a->n_roles + 1) * sizeof *a->roles);
        struct auth_role_row *r = &a->roles[a->n_roles++];
        memset(r, 0, sizeof *r);
        AUTH_COPY(r->user_guid, user);
        AUTH_COPY(r->org_guid, org);
        AUTH_COPY(r->space_guid, space);
        r->role = (enum auth_role)auth_role_parse(role);
    }
    json_decref(o);
    return 0;
}

static int auth__load_token(void *ctx, const char *id, const char *text)
{
    struct auth *a = ctx;
    json_t *o = json_loads(text, 0, NULL);
    const char *hash = NULL, *user = NULL, *kind = NULL, *name = "", *space = "", *role = "";
    json_int_t expires = 0, created = 0;
    if (o && json_unpack(o, "{s:s, s:s, s:s, s?:s, s?:s, s?:s, s?:I, s?:I}", "hash", &hash,
                         "user", &user, "kind", &kind, "name", &name, "space", &space, "role",
                         &role, "expires_at", &expires, "created_at", &created) == 0) {
        struct auth_token_row t = {0};
        size_t bin_len = 0;
        if (sodium_hex2bin(t.hash, sizeof t.hash, hash, strlen(hash), NULL, &bin_len, NULL) ==
                0 &&
            bin_len == sizeof t.hash) {
            AUTH_COPY(t.info.guid, id);
            AUTH_COPY(t.info.user_guid, user);
            t.info.kind = !strcmp(kind, "access")    ? AUTH_TOKEN_ACCESS
                          : !strcmp(kind, "refresh") ? AUTH_TOKEN_REFRESH
                                                     : AUTH_TOKEN_API;
            AUTH_COPY(t.info.name, name);
            AUTH_COPY(t.info.space_guid, space);
            t.info.space_role = *role ? auth_role_parse(role) : -1;
            t.info.expires_at = expires;
            t.info.created_at = created;
            a->tokens = xrealloc(a->tokens, (a->n_tokens + 1) * sizeof *a->tokens);
            a->tokens[a->n_tokens++] = t;
        }
    }
    json_decref(o);
    return 0;
}

/* ---- lookups ------------------------------------------------------------------------------- */

/* A request looks its user up by guid, a command by name: both are binary searches. */
static const struct auth_user *auth__sorted_users;

static int auth__cmp_user_index(const void *x, const void *y)
{
    return strcmp(auth__sorted_users[*(const size_t *)x].guid,
                  auth__sorted_users[*(const size_t *)y].guid);
}

static void auth__users_indexed(struct auth *a)
{
    free(a->users_by_guid);
    a->users_by_guid = xcalloc(a->n_users + 1, sizeof *a->users_by_guid);
    for (size_t i = 0; i < a->n_users; i++)
        a->users_by_guid[i] = i;
    auth__sorted_users = a->users; /* qsort has no context argument; loop thread only */
    if (a->n_users)
        qsort(a->users_by_guid, a->n_users, sizeof *a->users_by_guid, auth__cmp_user_index);
}

const struct auth_user *auth_user_find(const struct auth *a, const char *name_or_guid)
{
    size_t lo = 0, hi = a->n_users;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(a->users[a->users_by_guid[mid]].guid, name_or_guid);
        if (c == 0)
            return &a->users[a->users_by_guid[mid]];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    lo = 0, hi = a->n_users;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(a->users[mid].name, name_or_guid);
        if (c == 0)
            return &a->users[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const struct auth_org *auth_org_find(const struct auth *a, const char *name_or_guid)
{
    for (size_t i = 0; i < a->n_orgs; i++)
        if (!strcmp(a->orgs[i].guid, name_or_guid) || !strcmp(a->orgs[i].name, name_or_guid))
            return &a->orgs[i];
    return NULL;
}

const struct auth_space *auth_space_get(const struct auth *a, const char *guid)
{
    for (size_t i = 0; i < a->n_spaces; i++)
        if (!strcmp(a->spaces[i].guid, guid))
            return &a->spaces[i];
    return NULL;
}

const struct auth_space *auth_space_find(const struct auth *a, const char *org_guid,
                                         const char *name_or_guid)
{
    for (size_t i = 0; i < a->n_spaces; i++) {
        const struct auth_space *s = &a->spaces[i];
        if (!strcmp(s->org_guid, org_guid) &&
            (!strcmp(s->guid, name_or_guid) || !strcmp(s->name, name_or_guid)))
            return s;
    }
    return NULL;
}

const struct auth_space *auth_space_resolve(const struct auth *a, const char *ref)
{
    if (!ref)
        return NULL;
    const char *slash = strchr(ref, '/');
    if (!slash)
        return auth_space_get(a, ref);
    char org_name[AUTH_NAME_MAX + 1];
    size_t n = (size_t)(slash - ref);
    if (n == 0 || n > AUTH_NAME_MAX)
        return NULL;
    memcpy(org_name, ref, n);
    org_name[n] = '\0';
    const struct auth_org *org = auth_org_find(a, org_name);
    return org ? auth_space_find(a, org->guid, slash + 1) : NULL;
}

/* ---- records made once their name is claimed ------------------------------------------------ */

/* A user or an API token being made: its name claimed (auth__claim_async), then apply puts it
 * in memory and queues its writes, then done hears once they are made. */
struct auth_make {
    int (*apply)(struct auth *a, struct auth_make *m);
    auth_made_fn *done;
    void *ctx;
    char *claim_kind, *claim_id;
    char guid[AUTH_GUID_LEN + 1];
    struct auth_user user; /* a user's: its password_hash goes to memory once applied */
    /* an API token's */
    char user_guid[AUTH_GUID_LEN + 1];
    char name[AUTH_NAME_MAX + 1];
    char space_guid[AUTH_GUID_LEN + 1];
    int role;
    int64_t expires_at;
    char *text; /* the caller's buffer, AUTH_TOKEN_TEXT_MAX */
    struct auth_org org;
    struct auth_space space;
    struct auth_quota quota;          /* as it will be */
    char old_name[AUTH_NAME_MAX + 1]; /* a quota renamed: the name it lets go */
};

static void auth__make_free(struct auth_make *m)
{
    free(m->claim_kind);
    free(m->claim_id);
    free(m->user.password_hash);
    free(m);
}

static void auth__make_end(struct auth *a, struct auth_make *m, int rc)
{
    if (rc < 0 && rc != -EEXIST && a && m->claim_kind) /* the name goes with the record */
        store_doc_delete_async(a->store, m->claim_kind, m->claim_id, NULL, NULL);
    m->done(m->ctx, rc, rc == 0 ? m->guid : NULL);
    auth__make_free(m);
}

static void auth__make_landed(void *ctx, int rc)
{
    auth__make_end(NULL, ctx, rc);
}

static void auth__make_claimed(struct auth *a, int rc, void *arg)
{
    struct auth_make *m = arg;
    if (rc == 0)
        rc = m->apply(a, m);
    if (rc < 0)
        auth__make_end(a, m, rc);
    else
        auth_landed(a, auth__make_landed, m);
}

/* Claims the name and goes on from the callbacks; -EIO (done not called) when nothing could be
 * queued. */
static int auth__make(struct auth *a, struct auth_make *m, const char *kind, const char *id,
                      const char *field)
{
    if (!kind) { /* no name to claim */
        auth__make_claimed(a, 0, m);
        return 0;
    }
    m->claim_kind = xstrdup(kind);
    m->claim_id = xstrdup(id);
    int rc = auth__claim_async(a, kind, id, field, m->guid, auth__make_claimed, m);
    if (rc < 0)
        auth__make_free(m);
    return rc;
}

struct auth_made_wait {
    bool done;
    int rc;
    char guid[AUTH_GUID_LEN + 1];
};

static void auth__made_wait(void *ctx, int rc, const char *guid)
{
    struct auth_made_wait *w = ctx;
    w->rc = rc;
    AUTH_COPY(w->guid, guid);
    w->done = true;
}

/* ---- users --------------------------------------------------------------------------------- */

static int auth__cmp_user(const void *x, const void *y)
{
    return strcmp(((const struct auth_user *)x)->name, ((const struct auth_user *)y)->name);
}

/* The user claimed its name: into memory, its records queued. */
static int auth__user_apply(struct auth *a, struct auth_make *m)
{
    if (auth_user_find(a, m->user.name)) /* made here meanwhile */
        return -EEXIST;
    if (auth__user_save(a, &m->user) < 0)
        return -EIO;
    a->users = xrealloc(a->users, (a->n_users + 1) * sizeof *a->users);
    a->users[a->n_users++] = m->user;
    m->user.password_hash = NULL; /* memory's now */
    qsort(a->users, a->n_users, sizeof *a->users, auth__cmp_user);
    auth__users_indexed(a);
    return 0;
}

int auth_user_create_async(struct auth *a, const char *name, const char *password_hash, bool admin,
                           auth_made_fn *done, void *ctx)
{
    if (!auth_user_name_valid(name))
        return -EINVAL;
    if (auth_user_find(a, name)) /* one made through another skiffd: its claim refuses it */
        return -EEXIST;
    struct auth_make *m = xcalloc(1, sizeof *m);
    m->apply = auth__user_apply;
    m->done = done;
    m->ctx = ctx;
    uuid_generate_v4(m->guid);
    AUTH_COPY(m->user.guid, m->guid);
    AUTH_COPY(m->user.name, name);
    m->user.password_hash = xstrdup(password_hash);
    m->user.admin = admin;
    m->user.created_at = time_now_ms();
    return auth__make(a, m, AUTH_DOC_USER_NAME, name, "user");
}

int auth_user_create(struct auth *a, const char *name, const char *password_hash, bool admin,
                     const struct auth_user **out)
{
    struct auth_made_wait w = {0};
    int rc = auth_user_create_async(a, name, password_hash, admin, auth__made_wait, &w);
    if (rc < 0)
        return rc;
    auth__wait_for(a, &w.done);
    if (w.rc == 0 && out)
        *out = auth_user_find(a, w.guid);
    return w.rc;
}

static void auth__tokens_end_where(struct auth *a, const char *user_guid, const char *keep)
{
    size_t w = 0;
    for (size_t i = 0; i < a->n_tokens; i++) {
        struct auth_token_row *t = &a->tokens[i];
        if (!strcmp(t->info.user_guid, user_guid) && !(keep && !strcmp(t->info.guid, keep))) {
            auth__token_forget(a, t);
            continue;
        }
        a->tokens[w++] = *t;
    }
    a->n_tokens = w;
}

int auth_user_delete(struct auth *a, const char *guid)
{
    const struct auth_user *u = auth_user_find(a, guid);
    if (!u || strcmp(u->guid, guid))
        return -ENOENT;
    if (auth__delete(a, AUTH_DOC_USER, guid) < 0)
        return -EIO;
    auth__unclaim(a, AUTH_DOC_USER_NAME, u->name, "user", u->guid);
    size_t w = 0;
    for (size_t i = 0; i < a->n_roles; i++) {
        if (!strcmp(a->roles[i].user_guid, guid)) {
            auth__role_forget(a, &a->roles[i]);
            continue;
        }
        a->roles[w++] = a->roles[i];
    }
    a->n_roles = w;
    auth__tokens_end_where(a, guid, NULL);
    size_t idx = (size_t)(u - a->users);
    free(a->users[idx].password_hash);
    memmove(&a->users[idx], &a->users[idx + 1], (a->n_users - idx - 1) * sizeof *a->users);
    a->n_users--;
    auth__users_indexed(a);
    return 0;
}

int auth_user_set_password(struct auth *a, const char *guid, const char *password_hash,
                           const char *keep_token_guid)
{
    struct auth_user *u = (struct auth_user *)auth_user_find(a, guid);
    if (!u || strcmp(u->guid, guid))
        return -ENOENT;
    char *old = u->password_hash;
    u->password_hash = xstrdup(password_hash);
    if (auth__user_save(a, u) < 0) {
        free(u->password_hash);
        u->password_hash = old;
        return -EIO;
    }
    free(old);
    auth__tokens_end_where(a, guid, keep_token_guid);
    return 0;
}

void auth_user_each(const struct auth *a, void (*fn)(void *ctx, const struct auth_user *u),
                    void *ctx)
{
    for (size_t i = 0; i < a->n_users; i++)
        fn(ctx, &a->users[i]);
}

/* ---- orgs and spaces ----------------------------------------------------------------------- */

static int auth__cmp_org(const void *x, const void *y)
{
    return strcmp(((const struct auth_org *)x)->name, ((const struct auth_org *)y)->name);
}

static int auth__cmp_space(const void *x, const void *y)
{
    const struct auth_space *s = x, *t = y;
    int c = strcmp(s->org_guid, t->org_guid);
    return c ? c : strcmp(s->name, t->name);
}

static int auth__org_apply(struct auth *a, struct auth_make *m)
{
    if (auth_org_find(a, m->org.name)) /* made here meanwhile */
        return -EEXIST;
    if (auth__org_save(a, &m->org) < 0)
        return -EIO;
    a->orgs = xrealloc(a->orgs, (a->n_orgs + 1) * sizeof *a->orgs);
    a->orgs[a->n_orgs++] = m->org;
    qsort(a->orgs, a->n_orgs, sizeof *a->orgs, auth__cmp_org);
    return 0;
}

static int auth__org_add_async(struct auth *a, const char *guid, const char *name,
                               auth_made_fn *done, void *ctx)
{
    if (!name_valid(name))
        return -EINVAL;
    if (auth_org_find(a, name))
        return -EEXIST;
    struct auth_make *m = xcalloc(1, sizeof *m);
    m->apply = auth__org_apply;
    m->done = done;
    m->ctx = ctx;
    if (guid)
        AUTH_COPY(m->guid, guid);
    else
        uuid_generate_v4(m->guid);
    AUTH_COPY(m->org.guid, m->guid);
    AUTH_COPY(m->org.name, name);
    m->org.created_at = time_now_ms();
    return auth__make(a, m, AUTH_DOC_ORG_NAME, name, "org");
}

int auth_org_create_async(struct auth *a, const char *name, auth_made_fn *done, void *ctx)
{
    return auth__org_add_async(a, NULL, name, done, ctx);
}

/* Waits for a make begun (rc from its call): its guid into w. */
static int auth__made_waited(struct auth *a, int rc, struct auth_made_wait *w)
{
    if (rc < 0)
        return rc;
    auth__wait_for(a, &w->done);
    return w->rc;
}

static int auth__org_add(struct auth *a, const char *guid, const char *name,
                         const struct auth_org **out)
{
    struct auth_made_wait w = {0};
    int rc = auth__made_waited(a, auth__org_add_async(a, guid, name, auth__made_wait, &w), &w);
    if (rc == 0 && out)
        *out = auth_org_find(a, w.guid);
    return rc;
}

int auth_org_create(struct auth *a, const char *name, const struct auth_org **out)
{
    return auth__org_add(a, NULL, name, out);
}

static int auth__space_apply(struct auth *a, struct auth_make *m)
{
    const struct auth_org *org = auth_org_find(a, m->space.org_guid);
    if (!org || strcmp(org->guid, m->space.org_guid)) /* deleted meanwhile */
        return -ENOENT;
    if (auth_space_find(a, m->space.org_guid, m->space.name))
        return -EEXIST;
    if (auth__space_save(a, &m->space) < 0)
        return -EIO;
    a->spaces = xrealloc(a->spaces, (a->n_spaces + 1) * sizeof *a->spaces);
    a->spaces[a->n_spaces++] = m->space;
    qsort(a->spaces, a->n_spaces, sizeof *a->spaces, auth__cmp_space);
    return 0;
}

static int auth__space_add_async(struct auth *a, const char *guid, const char *org_guid,
                                 const char *name, auth_made_fn *done, void *ctx)
{
    if (!name_valid(name))
        return -EINVAL;
    const struct auth_org *org = auth_org_find(a, org_guid);
    if (!org || strcmp(org->guid, org_guid))
        return -ENOENT;
    if (auth_space_find(a, org_guid, name))
        return -EEXIST;
    struct auth_make *m = xcalloc(1, sizeof *m);
    m->apply = auth__space_apply;
    m->done = done;
    m->ctx = ctx;
    if (guid)
        AUTH_COPY(m->guid, guid);
    else
        uuid_generate_v4(m->guid);
    AUTH_COPY(m->space.guid, m->guid);
    AUTH_COPY(m->space.org_guid, org_guid);
    AUTH_COPY(m->space.name, name);
    m->space.created_at = time_now_ms();
    char *claim = auth__pair_id(org_guid, name);
    int rc = auth__make(a, m, AUTH_DOC_SPACE_NAME, claim, "space");
    free(claim);
    return rc;
}

int auth_space_create_async(struct auth *a, const char *org_guid, const char *name,
                            auth_made_fn *done, void *ctx)
{
    return auth__space_add_async(a, NULL, org_guid, name, done, ctx);
}

static int auth__space_add(struct auth *a, const char *guid, const char *org_guid, const char *name,
                           const struct auth_space **out)
{
    struct auth_made_wait w = {0};
    int rc = auth__made_waited(
        a, auth__space_add_async(a, guid, org_guid, name, auth__made_wait, &w), &w);
    if (rc == 0 && out)
        *out = auth_space_get(a, w.guid);
    return rc;
}

int auth_space_create(struct auth *a, const char *org_guid, const char *name,
                      const struct auth_space **out)
{
    return auth__space_add(a, NULL, org_guid, name, out);
}

/* Drops the roles held in a space (space_guid) or in an org and all its spaces (org_guid). */
static void auth__roles_drop(struct auth *a, const char *org_guid, const char *space_guid)
{
    size_t w = 0;
    for (size_t i = 0; i < a->n_roles; i++) {
        struct auth_role_row *r = &a->roles[i];
        bool drop = space_guid ? !strcmp(r->space_guid, space_guid)
                               : !strcmp(r->org_guid, org_guid);
        if (drop) {
            auth__role_forget(a, r);
            continue;
        }
        a->roles[w++] = *r;
    }
    a->n_roles = w;
}

int auth_space_delete(struct auth *a, const char *guid)
{
    const struct auth_space *s = auth_space_get(a, guid);
    if (!s)
        return -ENOENT;
    if (auth__delete(a, AUTH_DOC_SPACE, guid) < 0)
        return -EIO;
    char *claim = auth__pair_id(s->org_guid, s->name);
    auth__unclaim(a, AUTH_DOC_SPACE_NAME, claim, "space", s->guid);
    free(claim);
    auth__roles_drop(a, NULL, guid);
    /* tokens limited to the space are of no use any more */
    size_t w = 0;
    for (size_t i = 0; i < a->n_tokens; i++) {
        if (!strcmp(a->tokens[i].info.space_guid, guid)) {
            auth__token_forget(a, &a->tokens[i]);
            continue;
        }
        a->tokens[w++] = a->tokens[i];
    }
    a->n_tokens = w;
    size_t idx = (size_t)(s - a->spaces);
    memmove(&a->spaces[idx], &a->spaces[idx + 1], (a->n_spaces - idx - 1) * sizeof *a->spaces);
    a->n_spaces--;
    return 0;
}

int auth_org_delete(struct auth *a, const char *guid)
{
    const struct auth_org *o = auth_org_find(a, guid);
    if (!o || strcmp(o->guid, guid))
        return -ENOENT;
    for (size_t i = a->n_spaces; i-- > 0;)
        if (!strcmp(a->spaces[i].org_guid, guid)) {
            int rc = auth_space_delete(a, a->spaces[i].guid);
            if (rc < 0)
                return rc;
        }
    if (auth__delete(a, AUTH_DOC_ORG, guid) < 0)
        return -EIO;
    auth__roles_drop(a, guid, NULL);
    o = auth_org_find(a, guid);
    auth__unclaim(a, AUTH_DOC_ORG_NAME, o->name, "org", o->guid);
    size_t idx = (size_t)(o - a->orgs);
    memmove(&a->orgs[idx], &a->orgs[idx + 1], (a->n_orgs - idx - 1) * sizeof *a->orgs);
    a->n_orgs--;
    return 0;
}

void auth_org_each(const struct auth *a, void (*fn)(void *ctx, const struct auth_org *o),
                   void *ctx)
{
    for (size_t i = 0; i < a->n_orgs; i++)
        fn(ctx, &a->orgs[i]);
}

void auth_space_each(const struct auth *a, const char *org_guid,
                     void (*fn)(void *ctx, const struct auth_space *s), void *ctx)
{
    for (size_t i = 0; i < a->n_spaces; i++)
        if (!org_guid || !strcmp(a->spaces[i].org_guid, org_guid))
            fn(ctx, &a->spaces[i]);
}

/* ---- quotas -------------------------------------------------------------------------------- */

const struct auth_quota *auth_quota_find(const struct auth *a, const char *name_or_guid)
{
    for (size_t i = 0; i < a->n_quotas; i++)
        if (!strcmp(a->quotas[i].guid, name_or_guid) || !strcmp(a->quotas[i].name, name_or_guid))
            return &a->quotas[i];
    return NULL;
}

/* The plan by guid exactly (NULL: none). */
static struct auth_quota *auth__quota_by_guid(struct auth *a, const char *guid)
{
    struct auth_quota *q = guid[0] ? (struct auth_quota *)auth_quota_find(a, guid) : NULL;
    return q && !strcmp(q->guid, guid) ? q : NULL;
}

static int auth__quota_apply(struct auth *a, struct auth_make *m)
{
    struct auth_quota *have = auth__quota_by_guid(a, m->quota.guid);
    const struct auth_quota *named = auth_quota_find(a, m->quota.name);
    if (named && named != have) /* made here meanwhile */
        return -EEXIST;
    if (auth__quota_save(a, &m->quota) < 0)
        return -EIO;
    if (m->old_name[0])
        auth__unclaim(a, AUTH_DOC_QUOTA_NAME, m->old_name, "quota", m->quota.guid);
    if (!have) {
        a->quotas = xrealloc(a->quotas, (a->n_quotas + 1) * sizeof *a->quotas);
        have = &a->quotas[a->n_quotas++];
    }
    *have = m->quota;
    return 0;
}

int auth_quota_put_async(struct auth *a, const struct auth_quota *q, auth_made_fn *done, void *ctx)
{
    if (!name_valid(q->name))
        return -EINVAL;
    const struct auth_quota *named = auth_quota_find(a, q->name);
    struct auth_quota *have = auth__quota_by_guid(a, q->guid);
    if (named && named != have)
        return -EEXIST;
    struct auth_make *m = xcalloc(1, sizeof *m);
    m->apply = auth__quota_apply;
    m->done = done;
    m->ctx = ctx;
    m->quota = *q;
    if (!have)
        uuid_generate_v4(m->quota.guid);
    AUTH_COPY(m->guid, m->quota.guid);
    bool renamed = !have || strcmp(have->name, q->name);
    if (have && renamed)
        AUTH_COPY(m->old_name, have->name);
    return auth__make(a, m, renamed ? AUTH_DOC_QUOTA_NAME : NULL, q->name, "quota");
}

int auth_quota_put(struct auth *a, const struct auth_quota *q, const struct auth_quota **out)
{
    struct auth_made_wait w = {0};
    int rc = auth__made_waited(a, auth_quota_put_async(a, q, auth__made_wait, &w), &w);
    if (rc == 0 && out)
        *out = auth_quota_find(a, w.guid);
    return rc;
}

int auth_quota_delete(struct auth *a, const char *guid)
{
    const struct auth_quota *q = auth_quota_find(a, guid);
    if (!q || strcmp(q->guid, guid))
        return -ENOENT;
    for (size_t i = 0; i < a->n_orgs; i++)
        if (!strcmp(a->orgs[i].quota_guid, guid))
            auth_org_set_quota(a, a->orgs[i].guid, NULL);
    for (size_t i = 0; i < a->n_spaces; i++)
        if (!strcmp(a->spaces[i].quota_guid, guid))
            auth_space_set_quota(a, a->spaces[i].guid, NULL);
    if (auth__delete(a, AUTH_DOC_QUOTA, guid) < 0)
        return -EIO;
    auth__unclaim(a, AUTH_DOC_QUOTA_NAME, q->name, "quota", q->guid);
    size_t idx = (size_t)(q - a->quotas);
    a->quotas[idx] = a->quotas[--a->n_quotas];
    return 0;
}

void auth_quota_each(const struct auth *a, void (*fn)(void *ctx, const struct auth_quota *q),
                     void *ctx)
{
    for (size_t i = 0; i < a->n_quotas; i++)
        fn(ctx, &a->quotas[i]);
}

int auth_org_set_quota(struct auth *a, const char *org_guid, const char *quota_guid)
{
    struct auth_org *o = (struct auth_org *)auth_org_find(a, org_guid);
    if (!o || (quota_guid && !auth_quota_find(a, quota_guid)))
        return -ENOENT;
    struct auth_org next = *o;
    AUTH_COPY(next.quota_guid, quota_guid);
    if (auth__org_save(a, &next) < 0)
        return -EIO;
    *o = next;
    return 0;
}

int auth_space_set_quota(struct auth *a, const char *space_guid, const char *quota_guid)
{
    struct auth_space *s = (struct auth_space *)auth_space_get(a, space_guid);
    if (!s || (quota_guid && !auth_quota_find(a, quota_guid)))
        return -ENOENT;
    struct auth_space next = *s;
    AUTH_COPY(next.quota_guid, quota_guid);
    if (auth__space_save(a, &next) < 0)
        return -EIO;
    *s = next;
    return 0;
}

int auth_space_set_ssh_allowed(struct auth *a, const char *space_guid, bool allowed)
{
    struct auth_space *s = (struct auth_space *)auth_space_get(a, space_guid);
    if (!s)
        return -ENOENT;
    struct auth_space next = *s;
    next.ssh_disallowed = !allowed;
    if (auth__space_save(a, &next) < 0)
        return -EIO;
    *s = next;
    return 0;
}

bool auth_quota_admits(const struct auth_quota *q, const struct auth_usage *use,
                       const char *where, char *msg, size_t size)
{
    static const char *const what[AUTH_QUOTA_LIMITS] = {
        "MB of memory in all", "MB of memory per instance", "instances in all", "apps",
        "routes", "event mappings",
    };
    for (int i = 0; q && i < AUTH_QUOTA_LIMITS; i++) {
        if (q->limit[i] == AUTH_UNLIMITED || use->use[i] <= q->limit[i])
            continue;
        snprintf(msg, size,
                 "%s's quota \"%s\" allows %lld %s (%s), and this would make it %lld: ask an "
                 "admin for a larger quota, or make room first",
                 where, q->name, (long long)q->limit[i], what[i], auth__limit_names[i],
                 (long long)use->use[i]);
        return false;
    }
    return true;
}

/* ---- roles --------------------------------------------------------------------------------- */

static int auth__cmp_role(const void *x, const void *y)
{
    const struct auth_role_row *r = x, *t = y;
    int c = strcmp(r->user_guid, t->user_guid);
    if (!c)
        c = strcmp(r->org_guid, t->org_guid);
    if (!c)
        c = strcmp(r->space_guid, t->space_guid);
    return c ? c : (int)r->role - (int)t->role;
}

/* Roles are kept by user, so a decision reads only the caller's rows. */
static void auth__roles_sorted(struct auth *a)
{
    if (a->n_roles)
        qsort(a->roles, a->n_roles, sizeof *a->roles, auth__cmp_role);
}

/* The first role row of the user (or where it would be). */
static size_t auth__roles_of_user(const struct auth *a, const char *user_guid)
{
    size_t lo = 0, hi = a->n_roles;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (strcmp(a->roles[mid].user_guid, user_guid) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct auth_role_row *auth__role_find(struct auth *a, const char *user_guid,
                                             const char *org_guid, const char *space_guid,
                                             enum auth_role role)
{
    for (size_t i = 0; i < a->n_roles; i++) {
        struct auth_role_row *r = &a->roles[i];
        if (r->role == role && !strcmp(r->user_guid, user_guid) &&
            !strcmp(r->org_guid, org_guid) && !strcmp(r->space_guid, space_guid ? space_guid : ""))
            return r;
    }
    return NULL;
}

static int auth__role_add(struct auth *a, const char *user_guid, const char *org_guid,
                          const char *space_guid, enum auth_role role)
{
    if (auth__role_find(a, user_guid, org_guid, space_guid, role))
        return 0;
    struct auth_role_row r = {0};
    AUTH_COPY(r.user_guid, user_guid);
    AUTH_COPY(r.org_guid, org_guid);
    AUTH_COPY(r.space_guid, space_guid);
    r.role = role;
    if (auth__role_save(a, &r) < 0)
        return -EIO;
    a->roles = xrealloc(a->roles, (a->n_roles + 1) * sizeof *a->roles);
    a->roles[a->n_roles++] = r;
    auth__roles_sorted(a);
    return 0;
}

int auth_role_set(struct auth *a, const char *user_guid, const char *org_guid,
                  const char *space_guid, enum auth_role role)
{
    if ((unsigned)role >= AUTH_ROLE_COUNT)
        return -EINVAL;
    const struct auth_user *u = auth_user_find(a, user_guid);
    const struct auth_org *o = auth_org_find(a, org_guid);
    if (!u || strcmp(u->guid, user_guid) || !o || strcmp(o->guid, org_guid))
        return -ENOENT;
    if (auth_role_in_space(role) != (space_guid != NULL))
        return -EPERM;
    if (space_guid) {
        const struct auth_space *s = auth_space_get(a, space_guid);
        if (!s || strcmp(s->org_guid, org_guid))
            return -ENOENT;
        int rc = auth__role_add(a, user_guid, org_guid, NULL, AUTH_ROLE_ORG_USER);
        if (rc < 0)
            return rc;
    }
    return auth__role_add(a, user_guid, org_guid, space_guid, role);
}

int auth_role_unset(struct auth *a, const char *user_guid, const char *org_guid,
                    const char *space_guid, enum auth_role role)
{
    struct auth_role_row *r = auth__role_find(a, user_guid, org_guid, space_guid, role);
    if (!r)
        return 0;
    if (auth__role_forget(a, r) < 0)
        return -EIO;
    size_t idx = (size_t)(r - a->roles);
    memmove(&a->roles[idx], &a->roles[idx + 1], (a->n_roles - idx - 1) * sizeof *a->roles);
    a->n_roles--;
    /* out of the org: no space roles in it either */
    if (!space_guid && !(auth_roles_of(a, user_guid, org_guid, NULL) &
                         (1u << AUTH_ROLE_ORG_USER | 1u << AUTH_ROLE_ORG_MANAGER |
                          1u << AUTH_ROLE_ORG_AUDITOR | 1u << AUTH_ROLE_BILLING_MANAGER))) {
        size_t w = 0;
        for (size_t i = 0; i < a->n_roles; i++) {
            struct auth_role_row *x = &a->roles[i];
            if (!strcmp(x->user_guid, user_guid) && !strcmp(x->org_guid, org_guid)) {
                auth__role_forget(a, x);
                continue;
            }
            a->roles[w++] = *x;
        }
        a->n_roles = w;
    }
    return 0;
}

unsigned auth_roles_of(const struct auth *a, const char *user_guid, const char *org_guid,
                       const char *space_guid)
{
    unsigned mask = 0;
    for (size_t i = auth__roles_of_user(a, user_guid);
         i < a->n_roles && !strcmp(a->roles[i].user_guid, user_guid); i++) {
        const struct auth_role_row *r = &a->roles[i];
        if (strcmp(r->org_guid, org_guid))
            continue;
        if (!strcmp(r->space_guid, space_guid ? space_guid : ""))
            mask |= 1u << r->role;
    }
    return mask;
}

void auth_role_each(const struct auth *a, const char *org_guid, const char *space_guid,
                    void (*fn)(void *ctx, const char *user_guid, enum auth_role role), void *ctx)
{
    for (size_t i = 0; i < a->n_roles; i++) {
        const struct auth_role_row *r = &a->roles[i];
        if (!strcmp(r->org_guid, org_guid) &&
            !strcmp(r->space_guid, space_guid ? space_guid : ""))
            fn(ctx, r->user_guid, r->role);
    }
}

void auth_user_roles_each(const struct auth *a, const char *user_guid,
                          void (*fn)(void *ctx, const char *org_guid, const char *space_guid,
                                     enum auth_role role),
                          void *ctx)
{
    for (size_t i = 0; i < a->n_roles; i++) {
        const struct auth_role_row *r = &a->roles[i];
        if (!strcmp(r->user_guid, user_guid))
            fn(ctx, r->org_guid, r->space_guid, r->role);
    }
}

/* ---- tokens -------------------------------------------------------------------------------- */

static const char *const auth__token_prefix[] = {"skiffa_", "skiffr_", "skifft_"};

static bool auth__catch_up_token(struct auth *a, const char *text);

static void auth__hash(const char *text, unsigned char hash[AUTH_HASH_BYTES])
{
    crypto_generichash(hash, AUTH_HASH_BYTES, (const unsigned char *)text, strlen(text), NULL, 0);
}

/* Drops expired tokens (kept until the next token is made, so memory stays bounded). */
static void auth__tokens_prune(struct auth *a)
{
    int64_t now = time_now_ms();
    size_t w = 0;
    for (size_t i = 0; i < a->n_tokens; i++) {
        struct auth_token_row *t = &a->tokens[i];
        if (t->info.expires_at && t->info.expires_at <= now) {
            auth__token_forget(a, t);
            continue;
        }
        a->tokens[w++] = *t;
    }
    a->n_tokens = w;
}

static int auth__cmp_token_hash(const void *x, const void *y)
{
    return memcmp(((const struct auth_token_row *)x)->hash, ((const struct auth_token_row *)y)->hash,
                  AUTH_HASH_BYTES);
}

/* Tokens are kept in hash order, so a request finds its token by binary search: the
 * hash of a 32-byte random secret tells nothing about the secret, so comparing hashes need
 * not take constant time. */
static struct auth_token_row *auth__token_by_text(const struct auth *a, const char *text)
{
    struct auth_token_row key;
    auth__hash(text, key.hash);
    return a->n_tokens ? bsearch(&key, a->tokens, a->n_tokens, sizeof *a->tokens,
                                 auth__cmp_token_hash)
                       : NULL;
}

static void auth__token_insert(struct auth *a, const struct auth_token_row *t)
{
    a->tokens = xrealloc(a->tokens, (a->n_tokens + 1) * sizeof *a->tokens);
    size_t at = a->n_tokens;
    while (at > 0 && auth__cmp_token_hash(&a->tokens[at - 1], t) > 0)
        at--;
    memmove(&a->tokens[at + 1], &a->tokens[at], (a->n_tokens - at) * sizeof *a->tokens);
    a->tokens[at] = *t;
    a->n_tokens++;
}

/* A token's bytes are a random part and the first AUTH_TOKEN_MAC_BYTES of its HMAC under
 * the token key (over the prefix and the random part), so that a skiffd on a shared store
 * tells a token another one made from one made up before it reads the store for it. */
static void auth__token_mac(const struct auth *a, const char *prefix, const unsigned char *random,
                            unsigned char mac[AUTH_TOKEN_MAC_BYTES])
{
    crypto_auth_hmacsha256_state st;
    unsigned char full[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256_init(&st, a->token_key, sizeof a->token_key);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)prefix, strlen(prefix));
    crypto_auth_hmacsha256_update(&st, random, AUTH_TOKEN_BYTES - AUTH_TOKEN_MAC_BYTES);
    crypto_auth_hmacsha256_final(&st, full);
    memcpy(mac, full, AUTH_TOKEN_MAC_BYTES);
    sodium_memzero(full, sizeof full);
    sodium_memzero(&st, sizeof st);
}

/* Whether text is a token of a known kind signed with this token key. */
static bool auth__token_signed(const struct auth *a, const char *text)
{
    for (size_t k = 0; k < ARRAY_SIZE(auth__token_prefix); k++) {
        const char *prefix = auth__token_prefix[k];
        if (strncmp(text, prefix, strlen(prefix)))
            continue;
        unsigned char raw[AUTH_TOKEN_BYTES], mac[AUTH_TOKEN_MAC_BYTES];
        size_t n = 0;
        const char *b64 = text + strlen(prefix);
        bool ok = sodium_base642bin(raw, sizeof raw, b64, strlen(b64), NULL, &n, NULL,
                                    sodium_base64_VARIANT_URLSAFE_NO_PADDING) == 0 &&
                  n == sizeof raw;
        if (ok) {
            auth__token_mac(a, prefix, raw, mac);
            ok = sodium_memcmp(mac, raw + sizeof raw - sizeof mac, sizeof mac) == 0;
        }
        sodium_memzero(raw, sizeof raw);
        return ok;
    }
    return false;
}

static int auth__token_make(struct auth *a, const char *guid, const char *user_guid,
                            enum auth_token_kind kind, const char *name, const char *space_guid,
                            int role, int64_t expires_at, char text[AUTH_TOKEN_TEXT_MAX])
{
    unsigned char raw[AUTH_TOKEN_BYTES];
    randombytes_buf(raw, AUTH_TOKEN_BYTES - AUTH_TOKEN_MAC_BYTES);
    auth__token_mac(a, auth__token_prefix[kind], raw,
                    raw + AUTH_TOKEN_BYTES - AUTH_TOKEN_MAC_BYTES);
    size_t prefix = strlen(auth__token_prefix[kind]);
    memcpy(text, auth__token_prefix[kind], prefix);
    sodium_bin2base64(text + prefix, AUTH_TOKEN_TEXT_MAX - prefix, raw, sizeof raw,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    struct auth_token_row t = {0};
    if (guid)
        AUTH_COPY(t.info.guid, guid);
    else
        uuid_generate_v4(t.info.guid);
    AUTH_COPY(t.info.user_guid, user_guid);
    t.info.kind = kind;
    AUTH_COPY(t.info.name, name);
    AUTH_COPY(t.info.space_guid, space_guid);
    t.info.space_role = role;
    t.info.expires_at = expires_at;
    t.info.created_at = time_now_ms();
    auth__hash(text, t.hash);
    if (auth__token_save(a, &t) < 0) {
        sodium_memzero(text, AUTH_TOKEN_TEXT_MAX);
        return -EIO;
    }
    auth__token_insert(a, &t);
    return 0;
}


int auth_login(struct auth *a, const char *user_guid, char access[AUTH_TOKEN_TEXT_MAX],
               char refresh[AUTH_TOKEN_TEXT_MAX])
{
    auth__tokens_prune(a);
    int64_t now = time_now_ms();
    int rc = auth__token_make(a, NULL, user_guid, AUTH_TOKEN_ACCESS, "", NULL, -1,
                              now + AUTH_ACCESS_TTL_MS, access);
    if (rc < 0)
        return rc;
    rc = auth__token_make(a, NULL, user_guid, AUTH_TOKEN_REFRESH, "", NULL, -1,
                          now + AUTH_REFRESH_TTL_MS, refresh);
    if (rc < 0)
        auth_token_revoke_text(a, access);
    return rc;
}

/* A refresh token being taken: looked for (in the store too, on a miss), its record deleted
 * (which decides), then the new pair made and written. */
struct auth_refreshing {
    struct auth *a;
    auth_refresh_fn *done;
    void *ctx;
    char *token;
    char user[AUTH_GUID_LEN + 1];
    char guid[AUTH_GUID_LEN + 1];
    char access[AUTH_TOKEN_TEXT_MAX];
    char refresh[AUTH_TOKEN_TEXT_MAX];
};

static void auth__refresh_end(struct auth_refreshing *r, int rc)
{
    r->done(r->ctx, rc, rc == 0 ? r->user : NULL, rc == 0 ? r->access : NULL,
            rc == 0 ? r->refresh : NULL);
    sodium_memzero(r->token, strlen(r->token));
    free(r->token);
    sodium_memzero(r, sizeof *r);
    free(r);
}

static void auth__unheard(void *ctx, int rc)
{
    (void)ctx;
    (void)rc; /* a refusal was logged, and memory read again */
}

static void auth__refresh_landed(void *ctx, int rc)
{
    auth__refresh_end(ctx, rc);
}

/* Good once, whichever skiffd it is sent to: another one that took it first (this copy not
 * told yet, or both at the same moment) left no record to delete, and the store says so. */
static void auth__refresh_taken(void *ctx, int taken)
{
    struct auth_refreshing *r = ctx;
    if (taken < 0 && taken != -ENOENT) {
        auth__refresh_end(r, -EIO);
        return;
    }
    auth_token_revoke(r->a, r->guid); /* gone from memory already is fine */
    if (taken == -ENOENT) {
        auth_landed(r->a, auth__unheard, NULL); /* the revoke's writes: no one waits */
        auth__refresh_end(r, -ENOENT);
        return;
    }
    int rc = auth_login(r->a, r->user, r->access, r->refresh);
    if (rc < 0) {
        auth__refresh_end(r, rc);
        return;
    }
    auth_landed(r->a, auth__refresh_landed, r);
}

/* The token as this copy holds it: its record's delete queued (0), or -ENOENT. */
static int auth__refresh_take(struct auth_refreshing *r)
{
    struct auth *a = r->a;
    struct auth_token_row *t = auth__token_by_text(a, r->token);
    if (!t || t->info.kind != AUTH_TOKEN_REFRESH ||
        (t->info.expires_at && t->info.expires_at <= time_now_ms()) ||
        !auth_user_find(a, t->info.user_guid))
        return -ENOENT;
    AUTH_COPY(r->user, t->info.user_guid);
    AUTH_COPY(r->guid, t->info.guid);
    return store_doc_delete_async(a->store, AUTH_DOC_TOKEN, r->guid, auth__refresh_taken, r) < 0
               ? -EIO
               : 0;
}

static void auth__refresh_caught_up(struct auth *a, bool found, void *arg)
{
    struct auth_refreshing *r = arg;
    int rc = found ? auth__refresh_take(r) : -ENOENT;
    if (rc < 0)
        auth__refresh_end(r, rc);
}

static int auth__catch_up_token_async(struct auth *a, const char *text,
                                      void (*then)(struct auth *a, bool found, void *arg),
                                      void *arg);

int auth_refresh_async(struct auth *a, const char *refresh_token, auth_refresh_fn *done, void *ctx)
{
    struct auth_refreshing *r = xcalloc(1, sizeof *r);
    r->a = a;
    r->done = done;
    r->ctx = ctx;
    r->token = xstrdup(refresh_token);
    int rc = auth__token_by_text(a, refresh_token)
                 ? auth__refresh_take(r)
                 : auth__catch_up_token_async(a, refresh_token, auth__refresh_caught_up, r);
    if (rc == 1) /* found in the store at once (a reload) */
        rc = auth__refresh_take(r);
    if (rc < 0) {
        sodium_memzero(r->token, strlen(r->token));
        free(r->token);
        free(r);
    }
    return rc;
}

struct auth_refresh_wait {
    bool done;
    int rc;
    char *user, *access, *refresh;
};

static void auth__refresh_waited(void *ctx, int rc, const char *user, const char *access,
                                 const char *refresh)
{
    struct auth_refresh_wait *w = ctx;
    w->rc = rc;
    if (rc == 0) {
        snprintf(w->user, AUTH_GUID_LEN + 1, "%s", user);
        snprintf(w->access, AUTH_TOKEN_TEXT_MAX, "%s", access);
        snprintf(w->refresh, AUTH_TOKEN_TEXT_MAX, "%s", refresh);
    }
    w->done = true;
}

int auth_refresh(struct auth *a, const char *refresh_token, char user_guid[AUTH_GUID_LEN + 1],
                 char access[AUTH_TOKEN_TEXT_MAX], char refresh[AUTH_TOKEN_TEXT_MAX])
{
    struct auth_refresh_wait w = {.user = user_guid, .access = access, .refresh = refresh};
    int rc = auth_refresh_async(a, refresh_token, auth__refresh_waited, &w);
    if (rc < 0)
        return rc;
    auth__wait_for(a, &w.done);
    return w.rc;
}

/* The API token claimed its name: made, into memory, its records queued. */
static int auth__token_apply(struct auth *a, struct auth_make *m)
{
    if (auth_token_find_named(a, m->user_guid, m->name)) /* made here meanwhile */
        return -EEXIST;
    int rc =
        auth__token_make(a, m->guid, m->user_guid, AUTH_TOKEN_API, m->name,
                         m->space_guid[0] ? m->space_guid : NULL, m->role, m->expires_at, m->text);
    if (rc == 0) /* named: the others list it (and find it by name) once they caught up */
        auth__changed(a);
    return rc;
}

int auth_token_create_async(struct auth *a, const char *user_guid, const char *name,
                            const char *space_guid, int role, int64_t expires_at,
                            char text[AUTH_TOKEN_TEXT_MAX], auth_made_fn *done, void *ctx)
{
    if (!name_valid(name))
        return -EINVAL;
    if (auth_token_find_named(a, user_guid, name))
        return -EEXIST;
    auth__tokens_prune(a);
    struct auth_make *m = xcalloc(1, sizeof *m);
    m->apply = auth__token_apply;
    m->done = done;
    m->ctx = ctx;
    uuid_generate_v4(m->guid);
    AUTH_COPY(m->user_guid, user_guid);
    AUTH_COPY(m->name, name);
    AUTH_COPY(m->space_guid, space_guid);
    m->role = role;
    m->expires_at = expires_at;
    m->text = text;
    char *claim = auth__pair_id(user_guid, name);
    int rc = auth__make(a, m, AUTH_DOC_TOKEN_NAME, claim, "token");
    free(claim);
    return rc;
}

int auth_token_create(struct auth *a, const char *user_guid, const char *name,
                      const char *space_guid, int role, int64_t expires_at,
                      char text[AUTH_TOKEN_TEXT_MAX], const struct auth_token_info **out)
{
    struct auth_made_wait w = {0};
    int rc = auth_token_create_async(a, user_guid, name, space_guid, role, expires_at, text,
                                     auth__made_wait, &w);
    if (rc < 0)
        return rc;
    auth__wait_for(a, &w.done);
    if (w.rc == 0 && out)
        *out = auth_token_get(a, w.guid);
    return w.rc;
}

int auth_token_revoke(struct auth *a, const char *guid)
{
    for (size_t i = 0; i < a->n_tokens; i++) {
        if (strcmp(a->tokens[i].info.guid, guid))
            continue;
        if (auth__token_forget(a, &a->tokens[i]) < 0)
            return -EIO;
        memmove(&a->tokens[i], &a->tokens[i + 1], (a->n_tokens - i - 1) * sizeof *a->tokens);
        a->n_tokens--;
        return 0;
    }
    return -ENOENT;
}

int auth_token_revoke_text(struct auth *a, const char *text)
{
    struct auth_token_row *t = auth__token_by_text(a, text);
    if (!t)
        return -ENOENT;
    char guid[AUTH_GUID_LEN + 1];
    AUTH_COPY(guid, t->info.guid);
    return auth_token_revoke(a, guid);
}

const struct auth_token_info *auth_token_find_named(const struct auth *a, const char *user_guid,
                                                    const char *name)
{
    for (size_t i = 0; i < a->n_tokens; i++) {
        const struct auth_token_info *t = &a->tokens[i].info;
        if (t->kind == AUTH_TOKEN_API && !strcmp(t->user_guid, user_guid) &&
            !strcmp(t->name, name))
            return t;
    }
    return NULL;
}

const struct auth_token_info *auth_token_get(const struct auth *a, const char *guid)
{
    for (size_t i = 0; i < a->n_tokens; i++)
        if (!strcmp(a->tokens[i].info.guid, guid))
            return &a->tokens[i].info;
    return NULL;
}

static int auth__cmp_token_age(const void *x, const void *y)
{
    const struct auth_token_info *s = *(const struct auth_token_info *const *)x;
    const struct auth_token_info *t = *(const struct auth_token_info *const *)y;
    return (s->created_at > t->created_at) - (s->created_at < t->created_at);
}

void auth_token_each(const struct auth *a, const char *user_guid,
                     void (*fn)(void *ctx, const struct auth_token_info *t), void *ctx)
{
    const struct auth_token_info **mine = xcalloc(a->n_tokens + 1, sizeof *mine);
    size_t n = 0;
    for (size_t i = 0; i < a->n_tokens; i++)
        if (a->tokens[i].info.kind == AUTH_TOKEN_API &&
            !strcmp(a->tokens[i].info.user_guid, user_guid))
            mine[n++] = &a->tokens[i].info;
    if (n)
        qsort(mine, n, sizeof *mine, auth__cmp_token_age);
    for (size_t i = 0; i < n; i++)
        fn(ctx, mine[i]);
    free(mine);
}

/* Whether a keyed read may be made now (AUTH_CATCH_UP_READS_PER_S on average, after a burst
 * of AUTH_CATCH_UP_BURST); those refused in a second are logged once it is over. */
static bool auth__catch_up_allowed(struct auth *a)
{
    int64_t now = time_mono_ms();
    if (now / 1000 != a->catch_up_second) {
        if (a->catch_up_refused)
            log_warning("auth: %u reads for unknown tokens or user names refused within a "
                        "second (at most %d a second are made): a client sending made-up "
                        "credentials?",
                        a->catch_up_refused, AUTH_CATCH_UP_READS_PER_S);
        a->catch_up_second = now / 1000;
        a->catch_up_refused = 0;
    }
    if (!rate_take(&a->catch_up_rate, now, AUTH_CATCH_UP_READS_PER_S, AUTH_CATCH_UP_BURST)) {
        a->catch_up_refused++;
        a->catch_up_refused_total++;
        return false;
    }
    return true;
}

/* Whether the store holds what this skiffd missed (known(a, what) is false now): then it reads
 * everything again, so a miss costs a reload only when something new is there. With a change
 * feed that told of auth's documents since the copy was read, that is the reload first; what
 * the reload still lacks, or every miss without such news, is one keyed read, fresh from the
 * database, within AUTH_CATCH_UP_READS_PER_S: the feed may have told of earlier writes and
 * not yet of this one (its notification is a few ms behind the commit), and the copy it
 * reloaded from is then behind too. */
static bool auth__catch_up(struct auth *a, const char *kind, const char *id,
                           bool (*known)(const struct auth *, const char *), const char *what)
{
    if (!a->shared)
        return false;
    if (store_feed_fd(a->store) >= 0 && store_doc_news_kind(a->store, "auth") != a->loaded_news) {
        if (auth_reload(a) < 0)
            return false;
        if (known(a, what))
            return true;
    }
    if (!auth__catch_up_allowed(a))
        return false;
    char *json = NULL;
    if (store_doc_get_fresh(a->store, kind, id, &json) < 0)
        return false;
    free(json);
    return auth_reload(a) == 0;
}

/* auth__catch_up with its keyed read queued: 1 when known now (a reload found it), 0 when the
 * read is queued (then(a, found, arg) once it is made, everything read again when the store
 * held it), -ENOENT when nothing is to be read (not shared, or past the rate). */
struct auth_catching {
    struct auth *a;
    char kind[32], id[2 * AUTH_HASH_BYTES + 1]; /* the keyed read's */
    bool (*known)(const struct auth *, const char *);
    char *what; /* a copy (a token's text: wiped when freed) */
    void (*then)(struct auth *a, bool found, void *arg);
    void *arg;
};

static int auth__reload_async(struct auth *a, auth_done_fn *done, void *ctx);

static void auth__catching_free(struct auth_catching *c)
{
    sodium_memzero(c->what, strlen(c->what));
    free(c->what);
    free(c);
}

static void auth__catching_end(struct auth_catching *c, bool found)
{
    c->then(c->a, found, c->arg);
    auth__catching_free(c);
}

static void auth__caught_reloaded(void *ctx, int rc)
{
    auth__catching_end(ctx, rc == 1);
}

static void auth__caught(void *ctx, int rc, const char *json)
{
    (void)json;
    struct auth_catching *c = ctx;
    if (rc < 0 || auth__reload_async(c->a, auth__caught_reloaded, c) < 0)
        auth__catching_end(c, false);
}

/* The keyed read, within the rate; false (nothing queued) past it or when it cannot be. */
static bool auth__catching_read(struct auth_catching *c)
{
    return auth__catch_up_allowed(c->a) &&
           store_doc_get_fresh_async(c->a->store, c->kind, c->id, auth__caught, c) == 0;
}

/* Everything read again after news: found, or the keyed read still to make. */
static void auth__news_reloaded(void *ctx, int rc)
{
    struct auth_catching *c = ctx;
    if (rc == 1 && c->known(c->a, c->what))
        auth__catching_end(c, true);
    else if (rc == -ECANCELED || !auth__catching_read(c)) /* -ECANCELED: auth is gone */
        auth__catching_end(c, false);
}

static int auth__catch_up_async(struct auth *a, const char *kind, const char *id,
                                bool (*known)(const struct auth *, const char *), const char *what,
                                void (*then)(struct auth *a, bool found, void *arg), void *arg)
{
    if (!a->shared)
        return -ENOENT;
    struct auth_catching *c = xcalloc(1, sizeof *c);
    c->a = a;
    snprintf(c->kind, sizeof c->kind, "%s", kind);
    snprintf(c->id, sizeof c->id, "%s", id);
    c->known = known;
    c->what = xstrdup(what);
    c->then = then;
    c->arg = arg;
    /* news of auth's documents since the copy was read: everything read again first (queued),
     * then the keyed read only when that did not find it */
    if (store_feed_fd(a->store) >= 0 && store_doc_news_kind(a->store, "auth") != a->loaded_news &&
        auth__reload_async(a, auth__news_reloaded, c) == 0)
        return 0;
    if (!auth__catching_read(c)) {
        auth__catching_free(c);
        return -ENOENT;
    }
    return 0;
}

uint64_t auth_catch_up_refused(const struct auth *a)
{
    return a->catch_up_refused_total;
}

static bool auth__token_known(const struct auth *a, const char *text)
{
    return auth__token_by_text(a, text) != NULL;
}

static bool auth__user_known(const struct auth *a, const char *name)
{
    return auth_user_find(a, name) != NULL;
}

static bool auth__catch_up_token(struct auth *a, const char *text)
{
    if (!auth__token_signed(a, text)) /* made up, or made before tokens were signed */
        return false;
    unsigned char hash[AUTH_HASH_BYTES];
    char hex[2 * AUTH_HASH_BYTES + 1];
    auth__hash(text, hash);
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    return auth__catch_up(a, AUTH_DOC_TOKEN_HASH, hex, auth__token_known, text);
}

static int auth__catch_up_token_async(struct auth *a, const char *text,
                                      void (*then)(struct auth *a, bool found, void *arg),
                                      void *arg)
{
    if (!auth__token_signed(a, text))
        return -ENOENT;
    unsigned char hash[AUTH_HASH_BYTES];
    char hex[2 * AUTH_HASH_BYTES + 1];
    auth__hash(text, hash);
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    return auth__catch_up_async(a, AUTH_DOC_TOKEN_HASH, hex, auth__token_known, text, then, arg);
}

/* A user name's keyed read: the caller's done, once it is made. */
struct auth_user_looking {
    auth_done_fn *done;
    void *ctx;
};

static void auth__user_looked(struct auth *a, bool found, void *arg)
{
    (void)a;
    struct auth_user_looking *l = arg;
    l->done(l->ctx, found ? 0 : -ENOENT);
    free(l);
}

int auth_catch_up_user_async(struct auth *a, const char *name, auth_done_fn *done, void *ctx)
{
    if (!auth_user_name_valid(name))
        return -ENOENT;
    struct auth_user_looking *l = xcalloc(1, sizeof *l);
    l->done = done;
    l->ctx = ctx;
    int rc = auth__catch_up_async(a, AUTH_DOC_USER_NAME, name, auth__user_known, name,
                                  auth__user_looked, l);
    if (rc != 0)
        free(l);
    return rc;
}

bool auth_catch_up_user(struct auth *a, const char *name)
{
    return auth_user_name_valid(name) &&
           auth__catch_up(a, AUTH_DOC_USER_NAME, name, auth__user_known, name);
}

struct auth_rereading {
    struct auth *a;
    char guid[AUTH_GUID_LEN + 1];
    auth_done_fn *done;
    void *ctx;
};

static void auth__reread(void *ctx, int rc, const char *json)
{
    struct auth_rereading *r = ctx;
    struct auth *a = r->a;
    const struct auth_user *u = auth_user_find(a, r->guid);
    if (rc == -ENOENT) {
        rc = u ? auth_reload(a) : 0; /* deleted through another skiffd */
    } else if (rc < 0) {
        rc = -EIO;
    } else if (u) {
        json_t *o = json_loads(json, 0, NULL);
        const char *hash = json_string_value(json_object_get(o, "password_hash"));
        bool same = hash && u->password_hash && !strcmp(hash, u->password_hash);
        json_decref(o);
        rc = same ? 0 : auth_reload(a); /* a new password, and the user's tokens ended */
    }
    r->done(r->ctx, rc);
    free(r);
}

void auth_user_reread_async(struct auth *a, const char *guid, auth_done_fn *done, void *ctx)
{
    if (!a->shared || !auth_user_find(a, guid)) {
        done(ctx, 0);
        return;
    }
    struct auth_rereading *r = xcalloc(1, sizeof *r);
    r->a = a;
    AUTH_COPY(r->guid, guid);
    r->done = done;
    r->ctx = ctx;
    if (store_doc_get_fresh_async(a->store, AUTH_DOC_USER, guid, auth__reread, r) < 0) {
        free(r);
        done(ctx, -EIO);
    }
}

int auth_user_reread(struct auth *a, const char *guid)
{
    struct auth_waited w = {0};
    auth_user_reread_async(a, guid, auth__waited, &w);
    auth__wait_for(a, &w.done);
    return w.rc;
}

static bool auth__bearer(const char *token)
{
    return token && (!strncmp(token, auth__token_prefix[AUTH_TOKEN_ACCESS], 7) ||
                     !strncmp(token, auth__token_prefix[AUTH_TOKEN_API], 7));
}

static int auth__principal(struct auth *a, const struct auth_token_row *t,
                           struct auth_principal *out);

int auth_authenticate_cached(struct auth *a, const char *token, struct auth_principal *out)
{
    if (!auth__bearer(token))
        return -ENOENT;
    return auth__principal(a, auth__token_by_text(a, token), out);
}

/* A bearer token's keyed read for a miss: the caller's done, called with the token's answer
 * once it is made. */
struct auth_looking {
    char *token;
    auth_done_fn *done;
    void *ctx;
};

static void auth__looked(struct auth *a, bool found, void *arg)
{
    (void)a;
    struct auth_looking *l = arg;
    l->done(l->ctx, found ? 0 : -ENOENT);
    sodium_memzero(l->token, strlen(l->token));
    free(l->token);
    free(l);
}

int auth_authenticate_lookup_async(struct auth *a, const char *token, auth_done_fn *done, void *ctx)
{
    if (!auth__bearer(token))
        return -ENOENT;
    struct auth_looking *l = xcalloc(1, sizeof *l);
    l->token = xstrdup(token);
    l->done = done;
    l->ctx = ctx;
    int rc = auth__catch_up_token_async(a, token, auth__looked, l);
    if (rc != 0) {
        sodium_memzero(l->token, strlen(l->token));
        free(l->token);
        free(l);
    }
    return rc;
}

int auth_authenticate(struct auth *a, const char *token, struct auth_principal *out)
{
    if (!auth__bearer(token))
        return -ENOENT;
    const struct auth_token_row *t = auth__token_by_text(a, token);
    if (!t && auth__catch_up_token(a, token))
        t = auth__token_by_text(a, token);
    return auth__principal(a, t, out);
}

/* The principal of a bearer token's row (NULL: unknown): -ENOENT for a refresh token, an
 * expired one, or one whose user is gone. */
static int auth__principal(struct auth *a, const struct auth_token_row *t,
                           struct auth_principal *out)
{
    if (!t || t->info.kind == AUTH_TOKEN_REFRESH ||
        (t->info.expires_at && t->info.expires_at <= time_now_ms()))
        return -ENOENT;
    const struct auth_user *u = auth_user_find(a, t->info.user_guid);
    if (!u)
        return -ENOENT;
    memset(out, 0, sizeof *out);
    out->kind = AUTH_USER;
    out->admin = u->admin && !t->info.space_guid[0];
    AUTH_COPY(out->user_guid, u->guid);
    AUTH_COPY(out->user_name, u->name);
    AUTH_COPY(out->token_guid, t->info.guid);
    out->token_kind = t->info.kind;
    AUTH_COPY(out->space_guid, t->info.space_guid);
    out->space_role = t->info.space_role;
    return 0;
}

static bool auth__sees(const struct auth *a, const struct auth_principal *p, const char *org_guid,
                       const char *space_guid);

/* ---- decisions ----------------------------------------------------------------------------- */

#define AUTH_ORG_ROLES                                                                             \
    (1u << AUTH_ROLE_ORG_MANAGER | 1u << AUTH_ROLE_BILLING_MANAGER | 1u << AUTH_ROLE_ORG_AUDITOR |  \
     1u << AUTH_ROLE_ORG_USER)

/* The roles p holds for a decision in org/space (the space's own plus the org's). */
static unsigned auth__effective(const struct auth *a, const struct auth_principal *p,
                                const char *org_guid, const char *space_guid)
{
    if (p->kind != AUTH_USER)
        return 0;
    unsigned mask = auth_roles_of(a, p->user_guid, org_guid, NULL);
    if (space_guid)
        mask |= auth_roles_of(a, p->user_guid, org_guid, space_guid);
    if (p->space_guid[0]) {
        /* a limited token: its space only, its role only, while the user holds it */
        if (!space_guid || strcmp(space_guid, p->space_guid))
            return 0;
        if (p->space_role >= 0)
            mask &= 1u << p->space_role;
    }
    return mask;
}

int auth_check(const struct auth *a, const struct auth_principal *p, enum auth_perm perm,
               const char *org_guid, const char *space_guid)
{
    if ((unsigned)perm >= AUTH_PERM_COUNT)
        return -EACCES;
    if (perm == AUTH_PERM_PUBLIC)
        return 0;
    if (p->kind == AUTH_NOBODY)
        return -EACCES;
    if (p->kind == AUTH_INSTANCE) {
        /* publish only, and only in its own space */
        if (perm != AUTH_PERM_PUBLISH)
            return -EACCES;
        return space_guid && !strcmp(space_guid, p->space_guid) ? 0 : -ENOENT;
    }
    if (p->kind == AUTH_CELL) /* blobs only */
        return perm == AUTH_PERM_BLOBS ? 0 : -EACCES;
    if (p->admin || p->kind == AUTH_LOCAL_ADMIN)
        return 0;
    if (perm == AUTH_PERM_USER)
        return 0;
    if (perm == AUTH_PERM_ADMIN || perm == AUTH_PERM_BLOBS)
        /* an org one has no role in is not there, even to be refused */
        return org_guid && !auth__sees(a, p, org_guid, space_guid) ? -ENOENT : -EACCES;
    if (!org_guid)
        return -ENOENT;
    const char *space = auth_perm_in_space(perm) ? space_guid : NULL;
    unsigned mask = auth__effective(a, p, org_guid, space);
    if (mask & auth__perms[perm].roles)
        return 0;
    return auth__sees(a, p, org_guid, space_guid) ? -EACCES : -ENOENT;
}

int auth_user_check(const struct auth *a, const char *user_guid, enum auth_perm perm,
                    const char *org_guid, const char *space_guid)
{
    const struct auth_user *u = auth_user_find(a, user_guid);
    if (!u || strcmp(u->guid, user_guid) != 0)
        return -ENOENT;
    struct auth_principal p = {.kind = AUTH_USER, .admin = u->admin, .space_role = -1};
    snprintf(p.user_guid, sizeof(p.user_guid), "%s", u->guid);
    snprintf(p.user_name, sizeof(p.user_name), "%s", u->name);
    return auth_check(a, &p, perm, org_guid, space_guid);
}

/* Whether p may know the place exists: any role in its org (space roles come with OrgUser);
 * a limited token sees its own space only. */
static bool auth__sees(const struct auth *a, const struct auth_principal *p, const char *org_guid,
                       const char *space_guid)
{
    if (p->kind == AUTH_LOCAL_ADMIN || (p->kind == AUTH_USER && p->admin))
        return true;
    if (p->kind != AUTH_USER)
        return false;
    if (p->space_guid[0])
        return space_guid && !strcmp(space_guid, p->space_guid);
    return (auth_roles_of(a, p->user_guid, org_guid, NULL) & AUTH_ORG_ROLES) != 0;
}

bool auth_can_see_space(const struct auth *a, const struct auth_principal *p,
                        const struct auth_space *space)
{
    return auth__sees(a, p, space->org_guid, space->guid);
}

bool auth_can_see_org(const struct auth *a, const struct auth_principal *p,
                      const struct auth_org *org)
{
    if (p->kind == AUTH_USER && p->space_guid[0] && !p->admin) {
        const struct auth_space *s = auth_space_get(a, p->space_guid);
        return s && !strcmp(s->org_guid, org->guid);
    }
    return auth__sees(a, p, org->guid, NULL);
}

/* ---- opening ------------------------------------------------------------------------------- */

/* The kinds auth keeps, each with what reads one document of it into a copy. */
static const struct {
    const char *kind;
    int (*load)(void *a, const char *id, const char *text);
} auth__kinds[] = {{AUTH_DOC_USER, auth__load_user},   {AUTH_DOC_ORG, auth__load_org},
                   {AUTH_DOC_SPACE, auth__load_space}, {AUTH_DOC_ROLE, auth__load_role},
                   {AUTH_DOC_TOKEN, auth__load_token}, {AUTH_DOC_QUOTA, auth__load_quota}};

static void auth__index(struct auth *a);

/* Everything auth keeps, read from the store and indexed; NULL when the store failed. */
static struct auth *auth__load(struct store *st)
{
    struct auth *a = xcalloc(1, sizeof *a);
    a->store = st;
    a->loaded_news = store_doc_news_kind(st, "auth"); /* news during the reads: read again */
    /* read fresh: a reload follows news of one kind (the generation), which may come before
     * the store's copy of the others has caught up */
    for (size_t k = 0; k < ARRAY_SIZE(auth__kinds); k++)
        if (store_doc_each_fresh(st, auth__kinds[k].kind, auth__kinds[k].load, a) < 0) {
            auth_free(a);
            return NULL;
        }
    auth__index(a);
    return a;
}

/* A copy's lists sorted and indexed once its documents are read. */
static void auth__index(struct auth *a)
{
    if (a->n_users)
        qsort(a->users, a->n_users, sizeof *a->users, auth__cmp_user);
    auth__users_indexed(a);
    auth__roles_sorted(a);
    if (a->n_orgs)
        qsort(a->orgs, a->n_orgs, sizeof *a->orgs, auth__cmp_org);
    if (a->n_spaces)
        qsort(a->spaces, a->n_spaces, sizeof *a->spaces, auth__cmp_space);
    if (a->n_tokens)
        qsort(a->tokens, a->n_tokens, sizeof *a->tokens, auth__cmp_token_hash);
}

/* The contents of a and b change places (the store and the setting stay). */
static void auth__swap(struct auth *a, struct auth *b)
{
    struct auth t = *a;
    *a = *b;
    *b = t;
    a->store = t.store;
    a->shared = t.shared;
    a->generation = t.generation;
    a->generation_news = t.generation_news;
    memcpy(a->own_generation, t.own_generation, sizeof a->own_generation);
    memcpy(a->token_key, t.token_key, sizeof a->token_key);
    a->reloads = t.reloads;
    a->changes = t.changes;
    b->reloads = NULL;
    a->catch_up_rate = t.catch_up_rate;
    a->catch_up_second = t.catch_up_second;
    a->catch_up_refused = t.catch_up_refused;
    a->catch_up_refused_total = t.catch_up_refused_total;
    a->batch = t.batch; /* the writes under way are this auth's */
    a->batches = t.batches;
    b->generation = NULL;
    b->batch = b->batches = NULL;
}

int auth_reload(struct auth *a)
{
    struct auth *fresh = auth__load(a->store);
    if (!fresh)
        return -EIO;
    a->changes++; /* newer than what a reload under way reads */
    auth__swap(a, fresh);
    auth_free(fresh); /* what was in memory before */
    return 0;
}

int auth_catch_up(struct auth *a)
{
    /* With a change feed, the record is read only once another skiffd wrote it: their
     * tokens, heartbeats and counts are no reason to. Without one (SQLite) it is read. */
    uint64_t news = store_doc_news_kind(a->store, AUTH_DOC_GENERATION);
    if (a->generation && news == a->generation_news && store_feed_fd(a->store) >= 0)
        return 0;
    char *text = NULL;
    int rc = store_doc_get(a->store, AUTH_DOC_GENERATION, "auth", &text);
    if (rc == -ENOENT)
        text = xstrdup("");
    else if (rc < 0)
        return -EIO;
    if (a->generation && !strcmp(a->generation, text)) {
        free(text);
        a->generation_news = news;
        return 0;
    }
    rc = auth_reload(a); /* what changes after the read above is seen at the next call */
    if (rc == 0) {
        free(a->generation);
        a->generation = text;
        a->generation_news = news;
        return 1;
    }
    free(text);
    return rc;
}

/* ---- catching up off the loop ----------------------------------------------------------- */

/* An auth_catch_up_async under way: the generation's read, then every kind's, queued on the
 * store's writer; its callbacks run on the caller's loop. */
/* What a reloading is for: every kind read again (after a miss found in the store), or first
 * the generation record, read for auth_catch_up_async or for auth_catch_up_denied_async (where
 * the value this skiffd wrote last is no reason to read again). */
enum auth_reload_kind { AUTH_RELOAD_KINDS, AUTH_RELOAD_CATCH_UP, AUTH_RELOAD_REFUSAL };

struct auth_reloading {
    struct auth_reloading *next; /* in a->reloads */
    struct auth *a;     /* NULL once auth_free ran: the reads still report here */
    struct auth *fresh; /* the copy being read */
    char *generation;   /* the record read (not for AUTH_RELOAD_KINDS), else NULL */
    enum auth_reload_kind kind;
    uint64_t news;      /* store_doc_news_kind of the generation before its read */
    uint64_t changes;   /* a->changes when the kinds' reads were queued */
    int pending, rc;    /* reads still to report; the first failure */
    int tries;          /* reads of every kind made again (a change made here meanwhile) */
    auth_done_fn *done;
    void *ctx;
};

#define AUTH_RELOAD_TRIES 5

static void auth__reloading_end(struct auth_reloading *r, int rc)
{
    struct auth *a = r->a;
    for (struct auth_reloading **pp = a ? &a->reloads : NULL; pp && *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    auth_free(r->fresh);
    free(r->generation);
    if (r->done)
        r->done(r->ctx, rc);
    free(r);
}

static void auth__kinds_read(struct auth_reloading *r);

/* The generation record a catch-up read, now the copy's. */
static void auth__generation_take(struct auth *a, struct auth_reloading *r)
{
    if (!r->generation)
        return;
    free(a->generation);
    a->generation = r->generation;
    r->generation = NULL;
    a->generation_news = r->news;
}

/* One kind's read for a reloading. */
struct auth_kind_read {
    struct auth_reloading *r;
    size_t k; /* in auth__kinds */
};

static void auth__kind_read(void *ctx, int rc, char **ids, char **bodies)
{
    struct auth_kind_read *kr = ctx;
    struct auth_reloading *r = kr->r;
    if (rc < 0 && !r->rc)
        r->rc = rc;
    for (size_t i = 0; rc == 0 && !r->rc && ids && ids[i]; i++)
        if (auth__kinds[kr->k].load(r->fresh, ids[i], bodies[i]) < 0)
            r->rc = -EIO;
    free(kr);
    strv_free(ids);
    strv_free(bodies);
    if (--r->pending > 0)
        return;
    struct auth *a = r->a;
    if (!a || r->rc < 0) {
        auth__reloading_end(r, a ? -EIO : -ECANCELED);
        return;
    }
    if (a->changes != r->changes) { /* a change made here since: the reads may lack it */
        auth_free(r->fresh);
        r->fresh = NULL;
        if (++r->tries < AUTH_RELOAD_TRIES) {
            auth__kinds_read(r);
            return;
        }
        int reloaded = auth_reload(a); /* changes keep coming: read at once, as before */
        if (reloaded == 0)
            auth__generation_take(a, r);
        auth__reloading_end(r, reloaded < 0 ? -EIO : 1);
        return;
    }
    auth__index(r->fresh);
    auth__swap(a, r->fresh); /* r->fresh now holds what was in memory before */
    auth__generation_take(a, r);
    auth__reloading_end(r, 1);
}

/* Every kind's read queued, in turn with the writes (so they see those queued before). */
static void auth__kinds_read(struct auth_reloading *r)
{
    struct auth *a = r->a;
    r->fresh = xcalloc(1, sizeof *r->fresh);
    r->fresh->store = a->store;
    r->fresh->loaded_news = store_doc_news_kind(a->store, "auth");
    r->changes = a->changes;
    r->rc = 0;
    r->pending = (int)ARRAY_SIZE(auth__kinds);
    for (size_t k = 0; k < ARRAY_SIZE(auth__kinds); k++) {
        struct auth_kind_read *kr = xcalloc(1, sizeof *kr);
        *kr = (struct auth_kind_read){.r = r, .k = k};
        if (store_doc_each_fresh_async(a->store, auth__kinds[k].kind, auth__kind_read, kr) < 0)
            auth__kind_read(kr, -EIO, NULL, NULL);
    }
}

static void auth__generation_read(void *ctx, int rc, const char *json)
{
    struct auth_reloading *r = ctx;
    struct auth *a = r->a;
    if (!a) {
        auth__reloading_end(r, -ECANCELED);
        return;
    }
    if (rc < 0 && rc != -ENOENT) {
        auth__reloading_end(r, -EIO);
        return;
    }
    r->generation = xstrdup(rc == -ENOENT || !json ? "" : json);
    bool own = false;
    if (r->kind ==
        AUTH_RELOAD_REFUSAL) { /* last written here: a user alternating changes of their own with
                                * refused requests would otherwise make each refusal a reload */
        json_t *o = json_loads(r->generation, 0, NULL);
        const char *value = json_string_value(json_object_get(o, "generation"));
        own = value && !strcmp(value, a->own_generation);
        json_decref(o);
    }
    if (own || (a->generation && !strcmp(a->generation, r->generation))) {
        a->generation_news = r->news;
        auth__reloading_end(r, 0);
        return;
    }
    auth__kinds_read(r);
}

/* A reloading of a, listed there. */
static struct auth_reloading *auth__reloading_new(struct auth *a, auth_done_fn *done, void *ctx)
{
    struct auth_reloading *r = xcalloc(1, sizeof *r);
    r->a = a;
    r->done = done;
    r->ctx = ctx;
    r->next = a->reloads;
    a->reloads = r;
    return r;
}

/* Every kind read again, queued after the writes queued so far, the copy replaced once the
 * reads are back: done(ctx, 1), or -EIO / -ECANCELED. 0: queued (on SQLite, done during the
 * call). Several may be under way: they land in the order they were queued. */
static int auth__reload_async(struct auth *a, auth_done_fn *done, void *ctx)
{
    auth__kinds_read(auth__reloading_new(a, done, ctx));
    return 0;
}

/* The generation record's fresh read queued for r; false (r ended, its done not called) when
 * it cannot be. */
static bool auth__generation_queue(struct auth_reloading *r)
{
    if (store_doc_get_fresh_async(r->a->store, AUTH_DOC_GENERATION, "auth", auth__generation_read,
                                  r) == 0)
        return true;
    r->done = NULL;
    auth__reloading_end(r, -EIO);
    return false;
}

int auth_catch_up_async(struct auth *a, auth_done_fn *done, void *ctx)
{
    for (struct auth_reloading *q = a->reloads; q; q = q->next)
        if (q->kind == AUTH_RELOAD_CATCH_UP) /* news meanwhile is seen by the next call */
            return -EALREADY;
    uint64_t news = store_doc_news_kind(a->store, AUTH_DOC_GENERATION);
    if (a->generation && news == a->generation_news && store_feed_fd(a->store) >= 0)
        return 0;
    struct auth_reloading *r = auth__reloading_new(a, done, ctx);
    r->news = news;
    r->kind = AUTH_RELOAD_CATCH_UP;
    return auth__generation_queue(r) ? 1 : -EIO;
}

int auth_catch_up_denied_async(struct auth *a, auth_done_fn *done, void *ctx)
{
    if (!a->shared || !auth__catch_up_allowed(a))
        return -ENOENT;
    struct auth_reloading *r = auth__reloading_new(a, done, ctx);
    r->news = store_doc_news_kind(a->store, AUTH_DOC_GENERATION);
    r->kind = AUTH_RELOAD_REFUSAL;
    return auth__generation_queue(r) ? 0 : -ENOENT;
}

void auth_set_shared(struct auth *a, bool shared)
{
    a->shared = shared;
}

void auth_set_token_key(struct auth *a, const unsigned char key[32])
{
    memcpy(a->token_key, key, sizeof a->token_key);
}

int auth_open(struct store *st, char **new_admin_password, struct auth **out)
{
    if (sodium_init() < 0)
        return -ENOMEM;
    *new_admin_password = NULL;
    struct auth *a = auth__load(st);
    if (!a)
        return -EIO;
    randombytes_buf(a->token_key, sizeof a->token_key); /* until auth_set_token_key */
    int rc = 0;
    if (a->n_orgs == 0) {
        if ((rc = auth__org_add(a, AUTH_DEFAULT_ORG_GUID, "default", NULL)) < 0 ||
            (rc = auth__space_add(a, AUTH_DEFAULT_SPACE_GUID, AUTH_DEFAULT_ORG_GUID, "dev",
                                  NULL)) < 0)
            goto fail;
    }
    if (a->n_users == 0) {
        char password[33];
        random_hex(password, 12);
        char hash[AUTH_PASSWORD_HASH_MAX];
        if ((rc = auth_password_hash(password, hash)) < 0)
            goto fail;
        const struct auth_user *admin = NULL;
        rc = auth_user_create(a, "admin", hash, true, &admin);
        if (rc == -EEXIST) { /* another skiffd starting on the same new store made it */
            sodium_memzero(password, sizeof password);
            rc = auth_reload(a);
            if (rc < 0)
                goto fail;
            *out = a;
            return 0;
        }
        if (rc < 0)
            goto fail;
        const struct auth_org *def = auth_org_find(a, AUTH_DEFAULT_ORG_GUID);
        if (def && auth_space_get(a, AUTH_DEFAULT_SPACE_GUID)) {
            char guid[AUTH_GUID_LEN + 1];
            AUTH_COPY(guid, admin->guid);
            auth_role_set(a, guid, def->guid, NULL, AUTH_ROLE_ORG_MANAGER);
            auth_role_set(a, guid, def->guid, AUTH_DEFAULT_SPACE_GUID, AUTH_ROLE_SPACE_MANAGER);
            auth_role_set(a, guid, def->guid, AUTH_DEFAULT_SPACE_GUID,
                          AUTH_ROLE_SPACE_DEVELOPER);
        }
        *new_admin_password = xstrdup(password);
        sodium_memzero(password, sizeof password);
    }
    if ((rc = auth_wait(a)) < 0) /* the first start's records are made before it goes on */
        goto fail;
    *out = a;
    return 0;
fail:
    if (*new_admin_password) { /* its user was not made after all */
        sodium_memzero(*new_admin_password, strlen(*new_admin_password));
        free(*new_admin_password);
        *new_admin_password = NULL;
    }
    auth_free(a);
    return rc;
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n_users; i++)
        free(a->users[i].password_hash);
    free(a->users);
    free(a->users_by_guid);
    free(a->orgs);
    free(a->spaces);
    free(a->roles);
    free(a->quotas);
    free(a->generation);
    sodium_memzero(a->tokens, a->n_tokens * sizeof *a->tokens);
    free(a->tokens);
    sodium_memzero(a->token_key, sizeof a->token_key);
    for (struct auth_reloading *r = a->reloads; r; r = r->next)
        r->a = NULL;
    for (struct auth_batch *b = a->batches, *next; b; b = next) {
        next = b->next;
        b->a = NULL; /* its writes still report to it: the last frees it */
        b->closed = true;
        if (!b->pending)
            auth__batch_end(b);
    }
    free(a);
}

/* ---- cells' tokens --------------------------------------------------------------------------- */

static bool auth__lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

bool auth_cell_id_valid(const char *id)
{
    return id && strlen(id) == AUTH_CELL_ID_LEN && auth__lower_hex(id, AUTH_CELL_ID_LEN);
}

bool auth_cell_token_parse(const char *token, char cell_id[AUTH_CELL_ID_LEN + 1])
{
    size_t prefix = strlen(AUTH_CELL_TOKEN_PREFIX);
    if (!token || strlen(token) != AUTH_CELL_TOKEN_LEN ||
        strncmp(token, AUTH_CELL_TOKEN_PREFIX, prefix) ||
        !auth__lower_hex(token + prefix, AUTH_CELL_ID_LEN + AUTH_CELL_SECRET_LEN))
        return false;
    memcpy(cell_id, token + prefix, AUTH_CELL_ID_LEN);
    cell_id[AUTH_CELL_ID_LEN] = '\0';
    return true;
}
