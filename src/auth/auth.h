/* auth: who is calling, and what they may do (Cloud Foundry's users, orgs, spaces and roles).
 *
 * `struct auth` holds the platform's users, orgs, spaces, role assignments and tokens in
 * memory and writes every change through to the store as documents (kinds "auth.user",
 * "auth.org", "auth.space", "auth.role", "auth.token"), so a decision never waits for the
 * store: authenticating a bearer token and checking a permission are lookups in memory.
 * skiffd is the only writer of these documents.
 *
 * Tokens are 32 random bytes, written "skiffa_" (access), "skiffr_" (refresh) or "skifft_"
 * (API token) followed by base64url; only their BLAKE2b hash is kept. Passwords are argon2id
 * hashes (libsodium's crypto_pwhash_str). Hashing a password takes tens of milliseconds on
 * purpose, so auth_password_hash and auth_password_verify are pure functions that callers run
 * on a worker thread; everything else runs on skiffd's loop and must not be called from
 * another thread.
 *
 * Errors are negative errno values: -ENOENT no such thing, -EEXIST a name taken, -EINVAL a
 * malformed name or role, -ENOTEMPTY (org/space still holding apps, checked by the caller),
 * -EPERM a role that cannot be held there, -EIO the store failed (nothing changed then).
 *
 * Ownership: names and guids passed in are copied. Pointers returned by lookups (struct
 * auth_user, auth_org, auth_space) stay valid until the next call that changes auth. */
#ifndef SKIFF_AUTH_H
#define SKIFF_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store/store.h"

struct auth;

#define AUTH_GUID_LEN 36
#define AUTH_NAME_MAX 64
/* The org and space everything made before tenancy belongs to ("default" / "dev"). */
#define AUTH_DEFAULT_ORG_GUID "00000000-0000-4000-8000-00000000000a"
#define AUTH_DEFAULT_SPACE_GUID STORE_DEFAULT_SPACE_GUID

#define AUTH_ACCESS_TTL_MS (20 * 60 * 1000LL)
#define AUTH_REFRESH_TTL_MS (30 * 24 * 3600 * 1000LL)
#define AUTH_PASSWORD_MIN 8
#define AUTH_PASSWORD_MAX 1024
/* Room for a token as text ("skiffa_" + 43 base64url characters + NUL). */
#define AUTH_TOKEN_TEXT_MAX 64
/* Room for an argon2id hash string. */
#define AUTH_PASSWORD_HASH_MAX 128

enum auth_role {
    AUTH_ROLE_ORG_MANAGER,
    AUTH_ROLE_BILLING_MANAGER,
    AUTH_ROLE_ORG_AUDITOR,
    AUTH_ROLE_ORG_USER,
    AUTH_ROLE_SPACE_MANAGER,
    AUTH_ROLE_SPACE_DEVELOPER,
    AUTH_ROLE_SPACE_AUDITOR,
    AUTH_ROLE_SPACE_SUPPORTER,
    AUTH_ROLE_COUNT
};

/* "OrgManager", ... as Cloud Foundry's CLI writes them. */
const char *auth_role_name(enum auth_role role);
/* The role named (case-insensitive; "space_developer" style accepted too), or -1. */
int auth_role_parse(const char *name);
bool auth_role_in_space(enum auth_role role);

/* What an endpoint needs. The roles that grant each are in one table (auth.c), which
 * docs/roles.md is generated from (GET /v1/permissions, scripts/roles_doc.py). The platform
 * admin may do all. */
enum auth_perm {
    AUTH_PERM_PUBLIC,        /* anyone, no token */
    AUTH_PERM_USER,          /* any user or admin token (not an instance's) */
    AUTH_PERM_ADMIN,         /* the platform admin */
    AUTH_PERM_ORG_READ,      /* any role in the org or one of its spaces */
    AUTH_PERM_ORG_MANAGE,    /* OrgManager */
    AUTH_PERM_SPACE_READ,    /* any space role, the org's manager: see apps, routes, mappings */
    AUTH_PERM_SPACE_LOGS,    /* read logs and events */
    AUTH_PERM_SPACE_OPERATE, /* start, stop, restart, restage, invoke, replay */
    AUTH_PERM_SPACE_DEVELOP, /* push, change, delete, env, routes, mappings */
    AUTH_PERM_SPACE_MANAGE,  /* give and take space roles */
    AUTH_PERM_PUBLISH,       /* publish events: SpaceDeveloper, or an instance of the space */
    AUTH_PERM_SPACE_SECRETS, /* read service credentials (user-provided, service keys) */
    AUTH_PERM_BLOBS,         /* read packages and droplets by digest: the admin and cells */
    AUTH_PERM_COUNT
};

const char *auth_perm_name(enum auth_perm perm);
/* Whether a perm is decided in a space (else in an org, or platform-wide). */
bool auth_perm_in_space(enum auth_perm perm);
bool auth_perm_in_org(enum auth_perm perm);
/* Bit (1 << role) set for each role that grants perm. */
unsigned auth_perm_roles(enum auth_perm perm);

enum auth_kind {
    AUTH_NOBODY,      /* no or a bad token */
    AUTH_LOCAL_ADMIN, /* $SKIFF_HOME/api.json's token */
    AUTH_USER,        /* a user's access or API token */
    AUTH_INSTANCE,    /* an instance's publish token */
    AUTH_CELL,        /* a cell's own token: reads the blobs placed on it, nothing else */
};

/* A cell's token: "skiffc_", the cell's id (32 lowercase hex digits, its HOME/cell-id), then
 * 64 lowercase hex digits of secret. The one check of the form, for the API that accepts one
 * and the cell that sends it: true with the cell's id in cell_id when token has that form. */
#define AUTH_CELL_TOKEN_PREFIX "skiffc_"
#define AUTH_CELL_ID_LEN 32
#define AUTH_CELL_SECRET_LEN 64
#define AUTH_CELL_TOKEN_LEN (7 + AUTH_CELL_ID_LEN + AUTH_CELL_SECRET_LEN)
bool auth_cell_token_parse(const char *token, char cell_id[AUTH_CELL_ID_LEN + 1]);
/* Whether id is a cell's id: 32 lowercase hex digits. */
bool auth_cell_id_valid(const char *id);

enum auth_token_kind { AUTH_TOKEN_ACCESS, AUTH_TOKEN_REFRESH, AUTH_TOKEN_API };

/* The caller of one request. Filled by auth_authenticate (users) or by the API (the local
 * admin and instances). */
struct auth_principal {
    enum auth_kind kind;
    bool admin;                          /* may do everything */
    char user_guid[AUTH_GUID_LEN + 1];   /* AUTH_USER */
    char user_name[AUTH_NAME_MAX + 1];   /* AUTH_USER */
    char token_guid[AUTH_GUID_LEN + 1];  /* AUTH_USER */
    enum auth_token_kind token_kind;     /* AUTH_USER */
    char space_guid[AUTH_GUID_LEN + 1];  /* a limited token's or an instance's space, else "" */
    int space_role;                      /* a limited token's role, -1 when none */
};

struct auth_user {
    char guid[AUTH_GUID_LEN + 1];
    char name[AUTH_NAME_MAX + 1];
    char *password_hash;
    bool admin;
    int64_t created_at;
};

struct auth_org {
    char guid[AUTH_GUID_LEN + 1];
    char name[AUTH_NAME_MAX + 1];
    char quota_guid[AUTH_GUID_LEN + 1]; /* "" without a quota */
    int64_t created_at;
};

struct auth_space {
    char guid[AUTH_GUID_LEN + 1];
    char org_guid[AUTH_GUID_LEN + 1];
    char name[AUTH_NAME_MAX + 1];
    char quota_guid[AUTH_GUID_LEN + 1]; /* "" without a quota */
    /* Cloud Foundry's allow_ssh, inverted so that a zeroed space allows ssh (CF's default):
     * `skiff ssh` enters an app's instance only when the app and its space allow it */
    bool ssh_disallowed;
    int64_t created_at;
};

/* A quota plan, given to orgs and spaces (Cloud Foundry's org and space quotas). Each limit
 * is a number, or AUTH_UNLIMITED. */
#define AUTH_UNLIMITED (-1)
enum auth_quota_limit {
    AUTH_QUOTA_TOTAL_MEMORY_MB,    /* all instances of all apps together */
    AUTH_QUOTA_INSTANCE_MEMORY_MB, /* one instance */
    AUTH_QUOTA_INSTANCES,          /* all instances of all apps */
    AUTH_QUOTA_APPS,
    AUTH_QUOTA_ROUTES,
    AUTH_QUOTA_EVENT_MAPPINGS,
    AUTH_QUOTA_LIMITS
};

struct auth_quota {
    char guid[AUTH_GUID_LEN + 1];
    char name[AUTH_NAME_MAX + 1];
    int64_t limit[AUTH_QUOTA_LIMITS];
};

/* What an org or space uses (or would use after a change), in the quota's terms. */
struct auth_usage {
    int64_t use[AUTH_QUOTA_LIMITS]; /* INSTANCE_MEMORY_MB: the largest instance */
};

/* The JSON field name of a limit ("total_memory_mb", ...). */
const char *auth_quota_limit_name(enum auth_quota_limit limit);

struct auth_token_info {
    char guid[AUTH_GUID_LEN + 1];
    char user_guid[AUTH_GUID_LEN + 1];
    enum auth_token_kind kind;
    char name[AUTH_NAME_MAX + 1]; /* API tokens */
    char space_guid[AUTH_GUID_LEN + 1];
    int space_role;
    int64_t expires_at; /* ms since the epoch; 0: never */
    int64_t created_at;
};

/* Loads everything from the store. On a store without orgs, makes org "default" with space
 * "dev" (AUTH_DEFAULT_*_GUID), and when there is no user, the user "admin" (platform admin)
 * with a random password written into *new_admin_password (caller frees; NULL otherwise). */
int auth_open(struct store *st, char **new_admin_password, struct auth **out);
void auth_free(struct auth *a);

/* ---- writes --------------------------------------------------------------------------------
 *
 * Every change is made in memory at once and its records queued on the store's writer
 * (store_doc_put_async and the others), in order, so the event loop never waits for the
 * database. auth_landed(a, done, ctx) calls done(ctx, rc) once every write queued by the
 * changes made since the last auth_landed is made: 0, or -EIO when the store refused one
 * (everything is then read again from the store, so memory holds what the store holds), or
 * -ECANCELED when the store closed first. A request is answered from done, never before. On
 * SQLite the writes are made during the calls, and done is called before auth_landed returns.
 * auth_wait does the same waiting itself (reaping the store): for the first start and tests,
 * never from skiffd's loop. */
typedef void auth_done_fn(void *ctx, int rc);
void auth_landed(struct auth *a, auth_done_fn *done, void *ctx);
int auth_wait(struct auth *a);
/* A record made once its unique name is claimed in the store (a user, an API token): done(ctx,
 * rc, guid) once its writes are made: 0 with its guid (find it with auth_user_find or
 * auth_token_get), -EEXIST a name taken (through another skiffd too), -EIO. A call that
 * returns an error (-EINVAL a name against the rules, -EEXIST a name this copy knows, -EIO)
 * never calls done. */
typedef void auth_made_fn(void *ctx, int rc, const char *guid);

/* Several skiffds on one store (PostgreSQL): what another one wrote (users, passwords, roles,
 * orgs, spaces, quotas, tokens made or ended) is seen here after auth_reload, which reads
 * everything again and replaces what is in memory (pointers from lookups are invalid after
 * it; on -EIO nothing changed). With shared set, every change but a token made also writes
 * a new value into one generation record, and auth_catch_up (skiffd calls it once a second)
 * reads that record and reloads only when it changed: 1, reloaded; 0, nothing new; -EIO.
 * With shared set, a miss
 * looks in the store first, by key (one read): a bearer or refresh token (auth_authenticate,
 * auth_refresh) or a user name (auth_catch_up_user, auth_user_create) that another skiffd
 * made is found at once, and a made-up one costs that one read. */
int auth_reload(struct auth *a);
/* On a store with a change feed (PostgreSQL), the record is read only when the feed told of
 * another writer's write of it (store_doc_news_kind), so a second with nothing new reads
 * nothing. */
int auth_catch_up(struct auth *a);
/* auth_catch_up with the reads queued on the store's writer, for skiffd's loop: the generation
 * record read fresh, and when it moved, every kind read again (in turn with the writes queued
 * before) and put in place of the copy at once when the last read is back. A change made here
 * meanwhile has the kinds read again (their reads may lack it; after 5 tries, auth_reload).
 * 0: nothing new (no read); 1: queued, done(ctx, rc) hears 1 (read again), 0 (the record had
 * not moved), -EIO or -ECANCELED (auth_free ran); -EALREADY: one is under way (what it may
 * have missed is for the next call); -EIO: not queued. On SQLite done runs during the call. */
int auth_catch_up_async(struct auth *a, auth_done_fn *done, void *ctx);
/* How old a name's claim must be before it may be taken over when the record it names does
 * not exist (its skiffd died between the two writes): 30 s; tests may change it. A claim whose
 * record exists is never taken over. */
extern int64_t auth_claim_grace_ms;
void auth_set_shared(struct auth *a, bool shared);
/* The key tokens made from now on are signed with (32 bytes; a random one from auth_open).
 * On a shared store every skiffd must have the same (the store keeps it: the document kind
 * AUTH_TOKEN_KEY_KIND): a token this copy lacks is looked for in the store only when its
 * signature holds, so made-up ones cost no read and no share of the reads a second. Tokens
 * made before tokens were signed still work where they are known. */
#define AUTH_TOKEN_KEY_KIND "auth.token_key"
void auth_set_token_key(struct auth *a, const unsigned char key[32]);
/* Whether the store holds a user of that name this skiffd did not know; it has reloaded
 * then (look again). */
bool auth_catch_up_user(struct auth *a, const char *name);
/* The same with the read queued on the store's writer: 0 queued (done(ctx, 0) once this copy
 * was read again and may hold the user, -ENOENT not there), 1 known now (look again),
 * -ENOENT nothing to read (not shared, a name against the rules, past the rate). */
int auth_catch_up_user_async(struct auth *a, const char *name, auth_done_fn *done, void *ctx);
/* Before a request is refused (403, or 404 for an org or space this copy does not hold) on a
 * shared store: whether users, roles, orgs, spaces or quotas changed through another skiffd
 * since this copy was read, which the change feed may not have told yet (a few ms). The
 * generation record is read fresh from the database (one keyed read, counted with the
 * misses' below), and everything read again when it changed, all queued on the store's
 * writer: 0 queued, done(ctx, 1) once everything was read again (decide again), 0 when
 * nothing changed (or only through this skiffd), -EIO or -ECANCELED; -ENOENT: nothing to
 * read (not shared, or past the reads a second). */
int auth_catch_up_denied_async(struct auth *a, auth_done_fn *done, void *ctx);
/* How many keyed reads for unknown tokens or user names were refused so far (at most 50 are
 * made a second; a client sending made-up credentials gets its 401 without one). */
uint64_t auth_catch_up_refused(const struct auth *a);
/* Before a login: the user's record is read again (one read), and everything reloaded when its
 * password changed or it was deleted through another skiffd. 0, or -EIO. */
int auth_user_reread(struct auth *a, const char *guid);
/* The same with the read queued on the store's writer: done(ctx, rc) once made (during the
 * call when there is nothing to read: not shared, or no such user here). */
void auth_user_reread_async(struct auth *a, const char *guid, auth_done_fn *done, void *ctx);

/* ---- passwords (any thread) ---------------------------------------------------------------- */

/* 0, or -EINVAL when the password's length is out of bounds, -ENOMEM when hashing fails. */
int auth_password_hash(const char *password, char out[AUTH_PASSWORD_HASH_MAX]);
/* Whether password matches hash. With hash NULL it does the same work against a fixed hash
 * and says no, so a missing user costs what a wrong password does. */
bool auth_password_verify(const char *hash, const char *password);
bool auth_user_name_valid(const char *name);

/* ---- users --------------------------------------------------------------------------------- */

const struct auth_user *auth_user_find(const struct auth *a, const char *name_or_guid);
/* password_hash from auth_password_hash. */
int auth_user_create(struct auth *a, const char *name, const char *password_hash, bool admin,
                     const struct auth_user **out);
/* auth_user_create with its claim and writes queued (above, "writes"). */
int auth_user_create_async(struct auth *a, const char *name, const char *password_hash, bool admin,
                           auth_made_fn *done, void *ctx);
/* Also ends the user's roles and tokens. */
int auth_user_delete(struct auth *a, const char *guid);
/* Sets a new hash and ends every token of the user except keep_token_guid (may be NULL). */
int auth_user_set_password(struct auth *a, const char *guid, const char *password_hash,
                           const char *keep_token_guid);
/* Calls fn for every user in name order. */
void auth_user_each(const struct auth *a, void (*fn)(void *ctx, const struct auth_user *u),
                    void *ctx);

/* ---- orgs and spaces ----------------------------------------------------------------------- */

const struct auth_org *auth_org_find(const struct auth *a, const char *name_or_guid);
const struct auth_space *auth_space_find(const struct auth *a, const char *org_guid,
                                         const char *name_or_guid);
/* By guid alone. */
const struct auth_space *auth_space_get(const struct auth *a, const char *guid);
/* "ORG/SPACE" or a space guid. */
const struct auth_space *auth_space_resolve(const struct auth *a, const char *ref);
int auth_org_create(struct auth *a, const char *name, const struct auth_org **out);
/* auth_org_create and auth_space_create with their claims and writes queued (above,
 * "writes"): done gets the guid (auth_org_find, auth_space_get). */
int auth_org_create_async(struct auth *a, const char *name, auth_made_fn *done, void *ctx);
int auth_space_create_async(struct auth *a, const char *org_guid, const char *name,
                            auth_made_fn *done, void *ctx);
/* The caller has checked that no app lives in it; its spaces and roles go too. */
int auth_org_delete(struct auth *a, const char *guid);
int auth_space_create(struct auth *a, const char *org_guid, const char *name,
                      const struct auth_space **out);
int auth_space_delete(struct auth *a, const char *guid);
/* In name order. */
void auth_org_each(const struct auth *a, void (*fn)(void *ctx, const struct auth_org *o),
                   void *ctx);
void auth_space_each(const struct auth *a, const char *org_guid,
                     void (*fn)(void *ctx, const struct auth_space *s), void *ctx);

/* ---- quotas ------------------------------------------------------------------------------- */

const struct auth_quota *auth_quota_find(const struct auth *a, const char *name_or_guid);
/* Creates (q->guid "" or unknown) or replaces a plan by guid; -EEXIST a name taken. */
int auth_quota_put(struct auth *a, const struct auth_quota *q, const struct auth_quota **out);
/* The same with its claim (a new name) and writes queued: done gets the guid. */
int auth_quota_put_async(struct auth *a, const struct auth_quota *q, auth_made_fn *done, void *ctx);
/* Also takes it from every org and space that had it. */
int auth_quota_delete(struct auth *a, const char *guid);
void auth_quota_each(const struct auth *a, void (*fn)(void *ctx, const struct auth_quota *q),
                     void *ctx);
/* quota_guid NULL: none. */
int auth_org_set_quota(struct auth *a, const char *org_guid, const char *quota_guid);
int auth_space_set_quota(struct auth *a, const char *space_guid, const char *quota_guid);
/* allow-space-ssh / disallow-space-ssh. -ENOENT: no such space; -EIO: not stored. */
int auth_space_set_ssh_allowed(struct auth *a, const char *space_guid, bool allowed);
/* Whether use fits the quota: true, or false with a message naming the quota, the limit and
 * the numbers (where: "org acme" or "space acme/prod"). */
bool auth_quota_admits(const struct auth_quota *q, const struct auth_usage *use,
                       const char *where, char *msg, size_t size);

/* ---- roles --------------------------------------------------------------------------------- */

/* space_guid NULL for an org role. A space role needs a space; an org role needs none. Giving
 * a space role also gives OrgUser in its org. Setting a role held already is fine. */
int auth_role_set(struct auth *a, const char *user_guid, const char *org_guid,
                  const char *space_guid, enum auth_role role);
/* Taking OrgUser (or the last org role) away also takes the user's space roles in the org. */
int auth_role_unset(struct auth *a, const char *user_guid, const char *org_guid,
                    const char *space_guid, enum auth_role role);
/* Bit (1 << role) for each role the user holds in the org (space_guid NULL) or space. */
unsigned auth_roles_of(const struct auth *a, const char *user_guid, const char *org_guid,
                       const char *space_guid);
/* Calls fn for every assignment in the org (space_guid NULL: org roles only) or space. */
void auth_role_each(const struct auth *a, const char *org_guid, const char *space_guid,
                    void (*fn)(void *ctx, const char *user_guid, enum auth_role role), void *ctx);
/* Every assignment of a user: space_guid "" for org roles. */
void auth_user_roles_each(const struct auth *a, const char *user_guid,
                          void (*fn)(void *ctx, const char *org_guid, const char *space_guid,
                                     enum auth_role role),
                          void *ctx);

/* ---- tokens -------------------------------------------------------------------------------- */

/* Makes an access and a refresh token for the user (text into the buffers). */
int auth_login(struct auth *a, const char *user_guid, char access[AUTH_TOKEN_TEXT_MAX],
               char refresh[AUTH_TOKEN_TEXT_MAX]);
/* Ends the refresh token given and makes a new pair; -ENOENT for a refresh token that is
 * unknown, ended or expired. The user's guid is written into user_guid. */
int auth_refresh(struct auth *a, const char *refresh_token, char user_guid[AUTH_GUID_LEN + 1],
                 char access[AUTH_TOKEN_TEXT_MAX], char refresh[AUTH_TOKEN_TEXT_MAX]);
/* auth_refresh with the token's deletion (which decides whether it is still good: once,
 * whichever skiffd takes it), the new pair's writes, and on a miss its keyed read in the
 * store, all queued: done(ctx, rc, user_guid, access, refresh) (valid during the call) with 0,
 * -ENOENT (unknown, used, ended, expired) or -EIO. A call that returns an error never calls
 * done. */
typedef void auth_refresh_fn(void *ctx, int rc, const char *user_guid, const char *access,
                             const char *refresh);
int auth_refresh_async(struct auth *a, const char *refresh_token, auth_refresh_fn *done, void *ctx);
/* An API token; space_guid NULL and role -1 for one acting as the user; expires_at 0: never. */
int auth_token_create(struct auth *a, const char *user_guid, const char *name,
                      const char *space_guid, int role, int64_t expires_at,
                      char text[AUTH_TOKEN_TEXT_MAX], const struct auth_token_info **out);
/* auth_token_create with its claim and writes queued; text (the caller's, alive until done is
 * called) gets the token once it is made. */
int auth_token_create_async(struct auth *a, const char *user_guid, const char *name,
                            const char *space_guid, int role, int64_t expires_at,
                            char text[AUTH_TOKEN_TEXT_MAX], auth_made_fn *done, void *ctx);
/* Ends a token by guid (any kind), or by text (the token itself). */
int auth_token_revoke(struct auth *a, const char *guid);
int auth_token_revoke_text(struct auth *a, const char *text);
const struct auth_token_info *auth_token_find_named(const struct auth *a, const char *user_guid,
                                                    const char *name);
const struct auth_token_info *auth_token_get(const struct auth *a, const char *guid);
/* The user's API tokens, oldest first. */
void auth_token_each(const struct auth *a, const char *user_guid,
                     void (*fn)(void *ctx, const struct auth_token_info *t), void *ctx);

/* A bearer token of a user (access or API token) → principal. -ENOENT for anything else
 * (unknown, ended, expired, a refresh token, its user gone). */
int auth_authenticate(struct auth *a, const char *token, struct auth_principal *out);
/* The same from this copy alone, never reading the store (a miss is -ENOENT). */
int auth_authenticate_cached(struct auth *a, const char *token, struct auth_principal *out);
/* After a miss of auth_authenticate_cached on a shared store: the keyed read for the token
 * (auth_authenticate's catch-up) queued on the store's writer. 0: queued, done(ctx, rc) once
 * it is made (0: the store held it and this copy was read again: authenticate again;
 * -ENOENT); 1: known now (news of auth's documents read the copy again: authenticate again);
 * -ENOENT: nothing to read (not shared, not a bearer token, or past the 50 reads a second). */
int auth_authenticate_lookup_async(struct auth *a, const char *token, auth_done_fn *done,
                                   void *ctx);

/* ---- decisions ----------------------------------------------------------------------------- */

/* Whether p may do perm on a thing in that org/space (space_guid NULL for org perms; both
 * NULL for platform perms): 0 yes, -EACCES no but it may see the place (403), -ENOENT it has
 * no role there at all, so the place must look absent (404). Limited tokens act only in their
 * space, with their role, and only while the user still holds it. */
int auth_check(const struct auth *a, const struct auth_principal *p, enum auth_perm perm,
               const char *org_guid, const char *space_guid);
/* auth_check for a user by guid, as the user itself (no token's limits): what a standing
 * grant the user made (a mapping reading another space's events) is checked against while
 * it runs. -ENOENT also when the user is gone. */
int auth_user_check(const struct auth *a, const char *user_guid, enum auth_perm perm,
                    const char *org_guid, const char *space_guid);
/* Whether p has any role in the space or its org (what may be listed to it). */
bool auth_can_see_space(const struct auth *a, const struct auth_principal *p,
                        const struct auth_space *space);
bool auth_can_see_org(const struct auth *a, const struct auth_principal *p,
                      const struct auth_org *org);

/* What a permission allows, in a few words (docs/roles.md). */
const char *auth_perm_meaning(enum auth_perm perm);

#endif
