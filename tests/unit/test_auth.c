/* Unit tests for auth/: the first start's org, space and admin; passwords; roles and what they
 * allow (the 403/404 line); tokens (login, refresh, limited, expiry, revocation); and that
 * everything comes back from the store after a restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "common/util.h"
#include "store/store.h"
#include "feed_fence.h"
#include "pg_throwaway.h"

struct fixture {
    char *dir;
    char *db;
    struct store *st;
    struct auth *auth;
    char *admin_password;
};

static void reopen(struct fixture *fx)
{
    auth_free(fx->auth);
    fx->auth = NULL;
    store_close(fx->st);
    char err[256] = "";
    assert_int_equal(store_open(fx->db, err, sizeof err, &fx->st), 0);
    char *pw = NULL;
    assert_int_equal(auth_open(fx->st, &pw, &fx->auth), 0);
    assert_null(pw); /* made once, on the first start only */
}

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof *fx);
    char dir[] = "/tmp/skiff-test-auth-XXXXXX";
    assert_non_null(mkdtemp(dir));
    fx->dir = xstrdup(dir);
    fx->db = xasprintf("%s/skiff.db", dir);
    char err[256] = "";
    assert_int_equal(store_open(fx->db, err, sizeof err, &fx->st), 0);
    assert_int_equal(auth_open(fx->st, &fx->admin_password, &fx->auth), 0);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    auth_free(fx->auth);
    store_close(fx->st);
    rm_rf(fx->dir);
    free(fx->dir);
    free(fx->db);
    free(fx->admin_password);
    free(fx);
    return 0;
}

static const struct auth_user *make_user(struct fixture *fx, const char *name)
{
    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("a good password", hash), 0);
    const struct auth_user *u = NULL;
    assert_int_equal(auth_user_create(fx->auth, name, hash, false, &u), 0);
    return u;
}

static struct auth_principal as_user(struct fixture *fx, const char *name)
{
    char access[AUTH_TOKEN_TEXT_MAX], refresh[AUTH_TOKEN_TEXT_MAX];
    const struct auth_user *u = auth_user_find(fx->auth, name);
    assert_non_null(u);
    assert_int_equal(auth_login(fx->auth, u->guid, access, refresh), 0);
    struct auth_principal p;
    assert_int_equal(auth_authenticate(fx->auth, access, &p), 0);
    return p;
}

/* The tokens' key of skiffds sharing a store (the store keeps it: services_shared_key). */
static const unsigned char SHARED_TOKEN_KEY[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9};

/* What a queued call told its callback. */
struct refreshed {
    bool done;
    int rc;
    char access[AUTH_TOKEN_TEXT_MAX];
};

static void note_landed(void *ctx, int rc)
{
    struct refreshed *r = ctx;
    r->done = true;
    r->rc = rc;
}

/* Reaps st until *flag is set, for at most 20 s. */
static void reap_until(struct store *st, const bool *flag)
{
    for (int i = 0; i < 2000 && !*flag; i++) {
        store_async_reap(st);
        if (!*flag)
            usleep(10 * 1000);
    }
    assert_true(*flag);
}

/* auth_catch_up_denied_async, waited for: whether the copy was read again (the refusal is to
 * be decided again). */
static bool denied(struct auth *x, struct store *st)
{
    struct refreshed w = {0};
    if (auth_catch_up_denied_async(x, note_landed, &w) != 0)
        return false;
    reap_until(st, &w.done);
    return w.rc == 1;
}

/* Two copies as two skiffds on one store have them. */
static void share(struct auth *a, struct auth *b)
{
    auth_set_shared(a, true);
    auth_set_shared(b, true);
    auth_set_token_key(a, SHARED_TOKEN_KEY);
    auth_set_token_key(b, SHARED_TOKEN_KEY);
}

static void test_first_start_makes_default_space_and_admin(void **state)
{
    struct fixture *fx = *state;
    assert_non_null(fx->admin_password);
    const struct auth_space *dev = auth_space_resolve(fx->auth, "default/dev");
    assert_non_null(dev);
    assert_string_equal(dev->guid, AUTH_DEFAULT_SPACE_GUID);
    const struct auth_user *admin = auth_user_find(fx->auth, "admin");
    assert_non_null(admin);
    assert_true(admin->admin);
    assert_true(auth_password_verify(admin->password_hash, fx->admin_password));
    assert_false(auth_password_verify(admin->password_hash, "not the password"));
    assert_false(auth_password_verify(NULL, fx->admin_password)); /* no user: always no */
    reopen(fx);
    assert_non_null(auth_user_find(fx->auth, "admin"));
}

/* allow-space-ssh: allowed by default (also for a space stored before the setting existed),
 * kept across a restart. */
static void test_space_ssh_setting_is_kept(void **state)
{
    struct fixture *fx = *state;
    const struct auth_space *dev = auth_space_get(fx->auth, AUTH_DEFAULT_SPACE_GUID);
    assert_false(dev->ssh_disallowed);
    assert_int_equal(auth_space_set_ssh_allowed(fx->auth, AUTH_DEFAULT_SPACE_GUID, false), 0);
    assert_true(auth_space_get(fx->auth, AUTH_DEFAULT_SPACE_GUID)->ssh_disallowed);
    reopen(fx);
    assert_true(auth_space_get(fx->auth, AUTH_DEFAULT_SPACE_GUID)->ssh_disallowed);
    assert_int_equal(auth_space_set_ssh_allowed(fx->auth, AUTH_DEFAULT_SPACE_GUID, true), 0);
    reopen(fx);
    assert_false(auth_space_get(fx->auth, AUTH_DEFAULT_SPACE_GUID)->ssh_disallowed);
    assert_int_equal(auth_space_set_ssh_allowed(fx->auth, "no-such-space", false), -ENOENT);
    /* a record written before allow_ssh was one */
    assert_int_equal(store_doc_put(fx->st, "auth.space", AUTH_DEFAULT_SPACE_GUID,
                                   "{\"org\":\"" AUTH_DEFAULT_ORG_GUID "\",\"name\":\"dev\","
                                   "\"quota\":\"\",\"created_at\":1}"),
                     0);
    reopen(fx);
    assert_false(auth_space_get(fx->auth, AUTH_DEFAULT_SPACE_GUID)->ssh_disallowed);
}

static void test_passwords_and_names(void **state)
{
    struct fixture *fx = *state;
    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("short", hash), -EINVAL);
    assert_int_equal(auth_password_hash("long enough", hash), 0);
    assert_non_null(strstr(hash, "$argon2id$"));
    assert_null(strstr(hash, "long enough"));
    assert_int_equal(auth_user_create(fx->auth, "bad name", hash, false, NULL), -EINVAL);
    assert_int_equal(auth_user_create(fx->auth, "ann@example.com", hash, false, NULL), 0);
    assert_int_equal(auth_user_create(fx->auth, "ann@example.com", hash, false, NULL), -EEXIST);
    assert_int_equal(auth_org_create(fx->auth, "Upper", NULL), -EINVAL);
    assert_int_equal(auth_org_create(fx->auth, "default", NULL), -EEXIST);
}

static void test_roles_decide_with_404_for_strangers(void **state)
{
    struct fixture *fx = *state;
    const struct auth_org *acme = NULL;
    assert_int_equal(auth_org_create(fx->auth, "acme", &acme), 0);
    char org[AUTH_GUID_LEN + 1];
    snprintf(org, sizeof org, "%s", acme->guid);
    const struct auth_space *prod = NULL;
    assert_int_equal(auth_space_create(fx->auth, org, "prod", &prod), 0);
    char space[AUTH_GUID_LEN + 1];
    snprintf(space, sizeof space, "%s", prod->guid);
    char dev[AUTH_GUID_LEN + 1], aud[AUTH_GUID_LEN + 1], mgr[AUTH_GUID_LEN + 1];
    snprintf(dev, sizeof dev, "%s", make_user(fx, "dev")->guid);
    snprintf(aud, sizeof aud, "%s", make_user(fx, "aud")->guid);
    snprintf(mgr, sizeof mgr, "%s", make_user(fx, "mgr")->guid);
    make_user(fx, "stranger");
    assert_int_equal(auth_role_set(fx->auth, dev, org, space, AUTH_ROLE_SPACE_DEVELOPER), 0);
    assert_int_equal(auth_role_set(fx->auth, aud, org, space, AUTH_ROLE_SPACE_AUDITOR), 0);
    assert_int_equal(auth_role_set(fx->auth, mgr, org, NULL, AUTH_ROLE_ORG_MANAGER), 0);
    /* a space role is no org role, and the other way round */
    assert_int_equal(auth_role_set(fx->auth, dev, org, NULL, AUTH_ROLE_SPACE_DEVELOPER), -EPERM);
    assert_int_equal(auth_role_set(fx->auth, dev, org, space, AUTH_ROLE_ORG_MANAGER), -EPERM);
    /* a space role comes with OrgUser */
    assert_true(auth_roles_of(fx->auth, dev, org, NULL) & (1u << AUTH_ROLE_ORG_USER));

    struct auth_principal pdev = as_user(fx, "dev"), paud = as_user(fx, "aud");
    struct auth_principal pmgr = as_user(fx, "mgr"), pstr = as_user(fx, "stranger");
    assert_int_equal(auth_check(fx->auth, &pdev, AUTH_PERM_SPACE_DEVELOP, org, space), 0);
    assert_int_equal(auth_check(fx->auth, &paud, AUTH_PERM_SPACE_DEVELOP, org, space), -EACCES);
    assert_int_equal(auth_check(fx->auth, &paud, AUTH_PERM_SPACE_LOGS, org, space), 0);
    assert_int_equal(auth_check(fx->auth, &pmgr, AUTH_PERM_SPACE_READ, org, space), 0);
    assert_int_equal(auth_check(fx->auth, &pmgr, AUTH_PERM_SPACE_LOGS, org, space), -EACCES);
    assert_int_equal(auth_check(fx->auth, &pmgr, AUTH_PERM_ORG_MANAGE, org, NULL), 0);
    assert_int_equal(auth_check(fx->auth, &pdev, AUTH_PERM_ORG_MANAGE, org, NULL), -EACCES);
    /* a stranger is told nothing exists, whatever it asks */
    assert_int_equal(auth_check(fx->auth, &pstr, AUTH_PERM_SPACE_READ, org, space), -ENOENT);
    assert_int_equal(auth_check(fx->auth, &pstr, AUTH_PERM_ORG_READ, org, NULL), -ENOENT);
    assert_int_equal(auth_check(fx->auth, &pstr, AUTH_PERM_ADMIN, org, NULL), -ENOENT);
    assert_int_equal(auth_check(fx->auth, &pdev, AUTH_PERM_ADMIN, NULL, NULL), -EACCES);
    /* taking OrgUser away takes the space roles with it */
    assert_int_equal(auth_role_unset(fx->auth, dev, org, NULL, AUTH_ROLE_ORG_USER), 0);
    assert_int_equal(auth_check(fx->auth, &pdev, AUTH_PERM_SPACE_DEVELOP, org, space), -ENOENT);
    reopen(fx);
    pdev = as_user(fx, "dev");
    paud = as_user(fx, "aud");
    assert_int_equal(auth_check(fx->auth, &pdev, AUTH_PERM_SPACE_READ, org, space), -ENOENT);
    assert_int_equal(auth_check(fx->auth, &paud, AUTH_PERM_SPACE_LOGS, org, space), 0);
    /* a standing grant is checked as the user itself, by guid only, and ends with the user */
    assert_int_equal(auth_user_check(fx->auth, aud, AUTH_PERM_SPACE_LOGS, org, space), 0);
    assert_int_equal(auth_user_check(fx->auth, dev, AUTH_PERM_SPACE_LOGS, org, space), -ENOENT);
    assert_int_equal(auth_user_check(fx->auth, "aud", AUTH_PERM_SPACE_LOGS, org, space), -ENOENT);
    assert_int_equal(auth_role_unset(fx->auth, aud, org, space, AUTH_ROLE_SPACE_AUDITOR), 0);
    assert_int_not_equal(auth_user_check(fx->auth, aud, AUTH_PERM_SPACE_LOGS, org, space), 0);
    assert_int_equal(auth_role_set(fx->auth, aud, org, space, AUTH_ROLE_SPACE_AUDITOR), 0);
    assert_int_equal(auth_user_delete(fx->auth, aud), 0);
    assert_int_equal(auth_user_check(fx->auth, aud, AUTH_PERM_SPACE_LOGS, org, space), -ENOENT);
    /* deleting the space ends its roles */
    assert_int_equal(auth_space_delete(fx->auth, space), 0);
    assert_int_equal(auth_roles_of(fx->auth, aud, org, space), 0u);
}

static void test_tokens(void **state)
{
    struct fixture *fx = *state;
    const struct auth_org *acme = NULL;
    assert_int_equal(auth_org_create(fx->auth, "acme", &acme), 0);
    char org[AUTH_GUID_LEN + 1];
    snprintf(org, sizeof org, "%s", acme->guid);
    const struct auth_space *prod = NULL, *test = NULL;
    assert_int_equal(auth_space_create(fx->auth, org, "prod", &prod), 0);
    char space[AUTH_GUID_LEN + 1];
    snprintf(space, sizeof space, "%s", prod->guid);
    assert_int_equal(auth_space_create(fx->auth, org, "test", &test), 0);
    char other[AUTH_GUID_LEN + 1];
    snprintf(other, sizeof other, "%s", test->guid);
    char dev[AUTH_GUID_LEN + 1];
    snprintf(dev, sizeof dev, "%s", make_user(fx, "dev")->guid);
    assert_int_equal(auth_role_set(fx->auth, dev, org, space, AUTH_ROLE_SPACE_DEVELOPER), 0);
    assert_int_equal(auth_role_set(fx->auth, dev, org, other, AUTH_ROLE_SPACE_DEVELOPER), 0);

    char access[AUTH_TOKEN_TEXT_MAX], refresh[AUTH_TOKEN_TEXT_MAX];
    assert_int_equal(auth_login(fx->auth, dev, access, refresh), 0);
    assert_true(str_has_prefix(access, "skiffa_"));
    struct auth_principal p;
    assert_int_equal(auth_authenticate(fx->auth, refresh, &p), -ENOENT); /* no access token */
    char user[AUTH_GUID_LEN + 1], access2[AUTH_TOKEN_TEXT_MAX], refresh2[AUTH_TOKEN_TEXT_MAX];
    assert_int_equal(auth_refresh(fx->auth, refresh, user, access2, refresh2), 0);
    assert_string_equal(user, dev);
    assert_int_equal(auth_refresh(fx->auth, refresh, user, access2, refresh2), -ENOENT);

    /* limited to prod as SpaceDeveloper */
    char text[AUTH_TOKEN_TEXT_MAX];
    const struct auth_token_info *k = NULL;
    assert_int_equal(auth_token_create(fx->auth, dev, "ci", space, AUTH_ROLE_SPACE_DEVELOPER, 0,
                                       text, &k),
                     0);
    assert_int_equal(auth_token_create(fx->auth, dev, "ci", NULL, -1, 0, text, NULL), -EEXIST);
    assert_int_equal(auth_authenticate(fx->auth, text, &p), 0);
    assert_int_equal(auth_check(fx->auth, &p, AUTH_PERM_SPACE_DEVELOP, org, space), 0);
    assert_int_equal(auth_check(fx->auth, &p, AUTH_PERM_SPACE_READ, org, other), -ENOENT);
    assert_int_equal(auth_check(fx->auth, &p, AUTH_PERM_ORG_READ, org, NULL), -ENOENT);
    /* only while the user holds the role */
    assert_int_equal(auth_role_unset(fx->auth, dev, org, space, AUTH_ROLE_SPACE_DEVELOPER), 0);
    assert_int_equal(auth_check(fx->auth, &p, AUTH_PERM_SPACE_DEVELOP, org, space), -EACCES);
    /* revoked at once, and still after a restart */
    assert_int_equal(auth_token_revoke_text(fx->auth, text), 0);
    assert_int_equal(auth_authenticate(fx->auth, text, &p), -ENOENT);
    assert_int_equal(auth_authenticate(fx->auth, access2, &p), 0);
    reopen(fx);
    assert_int_equal(auth_authenticate(fx->auth, text, &p), -ENOENT);
    assert_int_equal(auth_authenticate(fx->auth, access2, &p), 0);
    /* expired */
    assert_int_equal(auth_token_create(fx->auth, dev, "old", NULL, -1, time_now_ms() - 1, text,
                                       NULL),
                     0);
    assert_int_equal(auth_authenticate(fx->auth, text, &p), -ENOENT);
    /* a user's deletion ends its tokens */
    assert_int_equal(auth_user_delete(fx->auth, dev), 0);
    assert_int_equal(auth_authenticate(fx->auth, access2, &p), -ENOENT);
}

/* Two skiffds on one store, as on PostgreSQL: each holds a copy and catches up with the other. */
static void test_two_copies_on_one_store_catch_up(void **state)
{
    struct fixture *fx = *state;
    struct store *st2 = NULL;
    struct auth *b = NULL;
    char err[256] = "";
    assert_int_equal(store_open(fx->db, err, sizeof err, &st2), 0);
    char *pw = NULL;
    assert_int_equal(auth_open(st2, &pw, &b), 0);
    assert_null(pw);
    struct auth *a = fx->auth;
    share(a, b);
    assert_int_equal(auth_catch_up(b), 1); /* the first call reads */
    assert_int_equal(auth_catch_up(b), 0); /* nothing changed since */

    /* a user made through a: unknown to b's copy, found by its name in one read */
    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("a long password", hash), 0);
    const struct auth_user *u = NULL;
    assert_int_equal(auth_user_create(a, "dev", hash, false, &u), 0);
    char guid[AUTH_GUID_LEN + 1];
    snprintf(guid, sizeof guid, "%s", u->guid);
    assert_null(auth_user_find(b, "dev"));
    assert_false(auth_catch_up_user(b, "nobody"));
    assert_false(auth_catch_up_user(b, "../x"));
    assert_true(auth_catch_up_user(b, "dev"));
    assert_non_null(auth_user_find(b, "dev"));
    /* the same name cannot be made through b */
    assert_int_equal(auth_user_create(b, "dev", hash, false, NULL), -EEXIST);

    /* a token made through a works through b at once; a made-up one does not */
    char access[AUTH_TOKEN_TEXT_MAX], refresh[AUTH_TOKEN_TEXT_MAX];
    assert_int_equal(auth_login(a, guid, access, refresh), 0);
    struct auth_principal p;
    assert_int_equal(auth_authenticate(b, access, &p), 0);
    assert_string_equal(p.user_guid, guid);
    assert_int_equal(auth_authenticate(b, "skiffa_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &p),
                     -ENOENT);
    assert_int_equal(auth_catch_up(b), 1); /* the user made through a moved the generation */
    assert_int_equal(auth_catch_up(b), 0); /* a token made does not */

    /* revoked through a: b's copy accepts it until b catches up, then refuses it */
    assert_int_equal(auth_token_revoke_text(a, access), 0);
    assert_int_equal(auth_authenticate(b, access, &p), 0);
    assert_int_equal(auth_catch_up(b), 1);
    assert_int_equal(auth_authenticate(b, access, &p), -ENOENT);
    /* a refresh token used through a is not good again through b */
    char user[AUTH_GUID_LEN + 1], access2[AUTH_TOKEN_TEXT_MAX], refresh2[AUTH_TOKEN_TEXT_MAX];
    assert_int_equal(auth_refresh(a, refresh, user, access2, refresh2), 0);
    /* at once, b's copy still holding it: its record is gone from the store */
    char access3[AUTH_TOKEN_TEXT_MAX], refresh3[AUTH_TOKEN_TEXT_MAX];
    assert_int_equal(auth_refresh(b, refresh, user, access3, refresh3), -ENOENT);
    assert_int_equal(auth_refresh(b, refresh, user, access3, refresh3), -ENOENT);
    /* a new password through a ends the user's tokens on b too */
    assert_int_equal(auth_authenticate(b, access2, &p), 0);
    assert_int_equal(auth_user_set_password(a, guid, hash, NULL), 0);
    assert_int_equal(auth_catch_up(b), 1);
    assert_int_equal(auth_authenticate(b, access2, &p), -ENOENT);

    /* made-up tokens, and tokens signed with another key, are refused unread: they take
     * none of the reads a second, so a token made through a right after is still found */
    for (int i = 0; i < 300; i++) {
        char made_up[AUTH_TOKEN_TEXT_MAX];
        snprintf(made_up, sizeof made_up, "skiffa_%043d", i);
        assert_int_equal(auth_authenticate(b, made_up, &p), -ENOENT);
    }
    struct auth *stranger = NULL;
    assert_int_equal(auth_open(st2, &pw, &stranger), 0); /* a key of its own */
    char foreign[AUTH_TOKEN_TEXT_MAX], foreign_refresh[AUTH_TOKEN_TEXT_MAX];
    for (int i = 0; i < 30; i++) {
        assert_int_equal(auth_login(stranger, guid, foreign, foreign_refresh), 0);
        assert_int_equal(auth_authenticate(b, foreign, &p), -ENOENT);
    }
    auth_free(stranger);
    assert_int_equal(auth_catch_up_refused(b), 0);
    assert_int_equal(auth_login(a, guid, access, refresh), 0);
    assert_int_equal(auth_authenticate(b, access, &p), 0);

    /* unknown names: at most 50 keyed reads a second for them after a burst of 20, the rest
     * refused unread */
    int64_t began = time_mono_ms();
    for (int i = 0; i < 300; i++) {
        char name[32];
        snprintf(name, sizeof name, "nobody-%d", i);
        assert_false(auth_catch_up_user(b, name));
    }
    int64_t elapsed = time_mono_ms() - began;
    int64_t most = 20 + 50 * elapsed / 1000 + 1; /* reads allowed in that time */
    assert_true((int64_t)auth_catch_up_refused(b) >= 300 - most);
    assert_true(auth_catch_up_refused(b) > 0 || most >= 300);

    auth_free(b);
    store_close(st2);
}

/* Writes a claim of a name as a skiffd that died before writing its record would leave it
 * (claimed_at < 0: a claim from before claims carried their time). */
static void put_claim(struct fixture *fx, const char *kind, const char *name, const char *field,
                      const char *guid, int64_t claimed_at)
{
    char *text = claimed_at < 0 ? xasprintf("{\"%s\":\"%s\"}", field, guid)
                                : xasprintf("{\"%s\":\"%s\",\"claimed_at\":%lld}", field, guid,
                                            (long long)claimed_at);
    assert_int_equal(store_doc_put(fx->st, kind, name, text), 0);
    free(text);
}

static const char *claim_owner(struct fixture *fx, const char *kind, const char *name,
                               const char *field, char *out, size_t size)
{
    char *text = NULL;
    assert_int_equal(store_doc_get(fx->st, kind, name, &text), 0);
    json_t *o = json_loads(text, 0, NULL);
    snprintf(out, size, "%s", json_string_value(json_object_get(o, field)));
    json_decref(o);
    free(text);
    return out;
}

/* A claim whose record was never written is the name's only after the grace period; then a
 * new create takes it over. A claim whose record exists is never taken over, however old. */
static void test_an_orphaned_claim_is_taken_over_after_its_grace(void **state)
{
    struct fixture *fx = *state;
    struct auth *a = fx->auth;
    const char *ghost = "0b7c1a52-57a5-4c2e-9a31-3f6a4c0d9e11";
    int64_t now = time_now_ms();
    char owner[64];

    put_claim(fx, "auth.org.name", "acme", "org", ghost, now);
    assert_int_equal(auth_org_create(a, "acme", NULL), -EEXIST); /* within the grace */
    put_claim(fx, "auth.org.name", "acme", "org", ghost, now - auth_claim_grace_ms - 1000);
    const struct auth_org *o = NULL;
    assert_int_equal(auth_org_create(a, "acme", &o), 0);
    assert_string_equal(claim_owner(fx, "auth.org.name", "acme", "org", owner, sizeof owner),
                        o->guid);

    /* a claim from before claims carried their time, its record missing */
    put_claim(fx, "auth.quota.name", "small", "quota", ghost, -1);
    struct auth_quota q = {0};
    snprintf(q.name, sizeof q.name, "small");
    assert_int_equal(auth_quota_put(a, &q, NULL), 0);

    /* a user's name, whose claim is also the index of users by name */
    put_claim(fx, "auth.user.name", "ghost", "user", ghost, now - auth_claim_grace_ms - 1);
    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("a long password", hash), 0);
    const struct auth_user *u = NULL;
    assert_int_equal(auth_user_create(a, "ghost", hash, false, &u), 0);
    assert_string_equal(claim_owner(fx, "auth.user.name", "ghost", "user", owner, sizeof owner),
                        u->guid);

    /* an old claim naming a record that exists stays: "acme" names an org */
    o = auth_org_find(a, "acme");
    assert_non_null(o);
    char acme[64];
    snprintf(acme, sizeof acme, "%s", o->guid);
    put_claim(fx, "auth.org.name", "gamma", "org", acme, 0);
    assert_int_equal(auth_org_create(a, "gamma", NULL), -EEXIST);
    assert_string_equal(claim_owner(fx, "auth.org.name", "gamma", "org", owner, sizeof owner),
                        acme);
}

/* On PostgreSQL the change feed names each document's kind: with tokens made and other
 * documents written through another skiffd, but no change of users, roles, orgs, spaces or
 * quotas, a catch-up reads nothing (here it could not: the table is away); a password
 * changed there is read and reloaded. */
static void test_catch_up_reads_the_generation_only_on_its_news(void **state)
{
    (void)state;
    char *url = pg_throwaway_database();
    char err[256] = "";
    struct store *s1 = NULL, *s2 = NULL;
    assert_int_equal(store_open(url, err, sizeof err, &s1), 0);
    assert_int_equal(store_open(url, err, sizeof err, &s2), 0);
    struct auth *a = NULL, *b = NULL;
    char *pw = NULL;
    assert_int_equal(auth_open(s1, &pw, &a), 0);
    free(pw);
    assert_int_equal(auth_open(s2, &pw, &b), 0);
    assert_null(pw);
    share(a, b);
    assert_int_equal(auth_catch_up(b), 1); /* the first call reads */

    char guid[AUTH_GUID_LEN + 1];
    snprintf(guid, sizeof guid, "%s", auth_user_find(a, "admin")->guid);
    char access[AUTH_TOKEN_TEXT_MAX], refresh[AUTH_TOKEN_TEXT_MAX];
    assert_int_equal(auth_login(a, guid, access, refresh), 0);
    assert_int_equal(store_doc_put(s1, "cell", "c1", "{}"), 0);
    feed_fence(s2, s1);
    pg_throwaway_sql(url, "ALTER TABLE documents RENAME TO documents_away");
    assert_int_equal(auth_catch_up(b), 0);
    pg_throwaway_sql(url, "ALTER TABLE documents_away RENAME TO documents");

    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("another long password", hash), 0);
    assert_int_equal(auth_user_set_password(a, guid, hash, NULL), 0);
    int rc = 0;
    for (int i = 0; i < 1000 && (rc = auth_catch_up(b)) == 0; i++)
        usleep(10 * 1000);
    assert_int_equal(rc, 1);
    struct auth_principal p;
    assert_int_equal(auth_authenticate(b, access, &p), -ENOENT); /* ended by the password */

    auth_free(b);
    auth_free(a);
    store_close(s2);
    store_close(s1);
    free(url);
}

/* On PostgreSQL, news of some of auth's documents (an org made through a) may come before the
 * news of a later write (a user, a token): the reload that news causes reads a copy that is
 * still behind, so what it lacks is read fresh from the database. Here the later writes are
 * made with the feed's triggers off, so that their news never comes. */
static void test_a_miss_is_read_fresh_when_the_feed_told_only_of_older_writes(void **state)
{
    (void)state;
    char *url = pg_throwaway_database();
    char err[256] = "";
    struct store *s1 = NULL, *s2 = NULL;
    assert_int_equal(store_open(url, err, sizeof err, &s1), 0);
    assert_int_equal(store_open(url, err, sizeof err, &s2), 0);
    struct auth *a = NULL, *b = NULL;
    char *pw = NULL;
    assert_int_equal(auth_open(s1, &pw, &a), 0);
    free(pw);
    assert_int_equal(auth_open(s2, &pw, &b), 0);
    assert_null(pw);
    share(a, b);
    assert_int_equal(auth_catch_up(b), 1); /* b's copy holds every kind of auth's now */

    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("a long password", hash), 0);
    const char *names[] = {"dev", "ops"};
    for (int round = 0; round < 2; round++) {
        char org[16];
        snprintf(org, sizeof org, "org-%d", round);
        assert_int_equal(auth_org_create(a, org, NULL), 0);
        feed_fence(s2, s1); /* b heard of the org */
        pg_throwaway_sql(url, "ALTER TABLE documents DISABLE TRIGGER USER");
        const struct auth_user *u = NULL;
        assert_int_equal(auth_user_create(a, names[round], hash, false, &u), 0);
        char access[AUTH_TOKEN_TEXT_MAX], refresh[AUTH_TOKEN_TEXT_MAX];
        assert_int_equal(auth_login(a, u->guid, access, refresh), 0);
        assert_int_equal(auth_wait(a), 0); /* made with the triggers off */
        pg_throwaway_sql(url, "ALTER TABLE documents ENABLE TRIGGER USER");
        if (round == 0) { /* the token first */
            struct auth_principal p;
            assert_int_equal(auth_authenticate(b, access, &p), 0);
            assert_string_equal(p.user_name, "dev");
        } else { /* the user's name first */
            assert_true(auth_catch_up_user(b, "ops"));
            assert_non_null(auth_user_find(b, "ops"));
        }
    }

    auth_free(b);
    auth_free(a);
    store_close(s2);
    store_close(s1);
    free(url);
}

/* A refusal decided on a copy behind another skiffd's change (a role given, a space made, their
 * news not come: here made with the feed's triggers off, so it never comes) is decided again
 * after auth_catch_up_denied_async read the generation record fresh and reloaded; with nothing
 * changed it reloads nothing. */
static void test_a_refusal_catches_up_with_a_change_the_feed_has_not_told_of(void **state)
{
    (void)state;
    char *url = pg_throwaway_database();
    char err[256] = "";
    struct store *s1 = NULL, *s2 = NULL;
    assert_int_equal(store_open(url, err, sizeof err, &s1), 0);
    assert_int_equal(store_open(url, err, sizeof err, &s2), 0);
    struct auth *a = NULL, *b = NULL;
    char *pw = NULL;
    assert_int_equal(auth_open(s1, &pw, &a), 0);
    free(pw);
    assert_int_equal(auth_open(s2, &pw, &b), 0);
    assert_null(pw);
    share(a, b);

    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("a long password", hash), 0);
    const struct auth_user *u = NULL;
    assert_int_equal(auth_user_create(a, "dev", hash, false, &u), 0);
    char dev[AUTH_GUID_LEN + 1];
    snprintf(dev, sizeof dev, "%s", u->guid);
    const struct auth_org *o = NULL;
    assert_int_equal(auth_org_create(a, "acme", &o), 0);
    char org[AUTH_GUID_LEN + 1];
    snprintf(org, sizeof org, "%s", o->guid);
    assert_int_equal(auth_wait(a), 0);     /* its writes made */
    assert_int_equal(auth_catch_up(b), 1); /* b knows the user and the org */
    struct auth_principal p = {.kind = AUTH_USER, .space_role = -1};
    snprintf(p.user_guid, sizeof p.user_guid, "%s", dev);
    assert_int_equal(auth_check(b, &p, AUTH_PERM_ORG_READ, org, NULL), -ENOENT);
    assert_false(denied(b, s2)); /* nothing changed: the refusal stands */

    pg_throwaway_sql(url, "ALTER TABLE documents DISABLE TRIGGER USER");
    const struct auth_space *sp = NULL;
    assert_int_equal(auth_space_create(a, org, "prod", &sp), 0);
    char space[AUTH_GUID_LEN + 1];
    snprintf(space, sizeof space, "%s", sp->guid);
    assert_int_equal(auth_role_set(a, dev, org, space, AUTH_ROLE_SPACE_DEVELOPER), 0);
    assert_int_equal(auth_wait(a), 0); /* its writes made, with the triggers still off */
    pg_throwaway_sql(url, "ALTER TABLE documents ENABLE TRIGGER USER");
    assert_null(auth_space_find(b, org, "prod"));
    assert_int_not_equal(auth_check(b, &p, AUTH_PERM_SPACE_DEVELOP, org, space), 0);
    assert_true(denied(b, s2));
    assert_non_null(auth_space_find(b, org, "prod"));
    assert_int_equal(auth_check(b, &p, AUTH_PERM_SPACE_DEVELOP, org, space), 0);
    assert_false(denied(b, s2));
    /* b's own change moved the record: no reason to read everything again */
    assert_int_equal(auth_org_create(b, "mine", NULL), 0);
    assert_false(denied(b, s2));
    assert_int_equal(auth_wait(b), 0);
    /* another's after it is */
    assert_int_equal(auth_org_create(a, "theirs", NULL), 0);
    assert_int_equal(auth_wait(a), 0);
    assert_true(denied(b, s2));
    assert_non_null(auth_org_find(b, "theirs"));

    auth_free(b);
    auth_free(a);
    store_close(s2);
    store_close(s1);
    free(url);
}

/* Two skiffds on one PostgreSQL, shared, both holding the admin and a refresh token made
 * through a (opened on url). */
struct two {
    char *url;
    struct store *s1, *s2;
    struct auth *a, *b;
    char guid[AUTH_GUID_LEN + 1];
};

static void two_open(struct two *t)
{
    t->url = pg_throwaway_database();
    char err[256] = "";
    assert_int_equal(store_open(t->url, err, sizeof err, &t->s1), 0);
    assert_int_equal(store_open(t->url, err, sizeof err, &t->s2), 0);
    char *pw = NULL;
    assert_int_equal(auth_open(t->s1, &pw, &t->a), 0);
    free(pw);
    assert_int_equal(auth_open(t->s2, &pw, &t->b), 0);
    assert_null(pw);
    share(t->a, t->b);
    snprintf(t->guid, sizeof t->guid, "%s", auth_user_find(t->a, "admin")->guid);
}

static void two_close(struct two *t)
{
    auth_free(t->b);
    auth_free(t->a);
    store_close(t->s2);
    store_close(t->s1);
    free(t->url);
}

static void note_refreshed(void *ctx, int rc, const char *user, const char *access,
                           const char *refresh)
{
    (void)user;
    (void)refresh;
    struct refreshed *r = ctx;
    r->done = true;
    r->rc = rc;
    if (access)
        snprintf(r->access, sizeof r->access, "%s", access);
}

/* A user made through x with a password of its own; the user as x's copy holds it. */
static const struct auth_user *user_made(struct auth *x, const char *name)
{
    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("a long password", hash), 0);
    const struct auth_user *u = NULL;
    assert_int_equal(auth_user_create(x, name, hash, false, &u), 0);
    return u;
}

/* Reaps both stores until both flags are set, for at most 20 s. */
static void reap_both(struct two *t, const bool *x, const bool *y)
{
    for (int i = 0; i < 2000 && !(*x && *y); i++) {
        store_async_reap(t->s1);
        store_async_reap(t->s2);
        if (!(*x && *y))
            usleep(10 * 1000);
    }
    assert_true(*x && *y);
}

/* A refresh token sent to two skiffds at the same moment, both copies holding it, is good
 * once: the deletion of its record, queued on each, decides, and the loser answers -ENOENT
 * (no second pair). Sent again to either, it is refused. */
static void test_a_refresh_token_is_good_once_across_two_stores(void **state)
{
    (void)state;
    struct two t;
    two_open(&t);
    for (int round = 0; round < 5; round++) {
        char access[AUTH_TOKEN_TEXT_MAX], refresh[AUTH_TOKEN_TEXT_MAX];
        assert_int_equal(auth_login(t.a, t.guid, access, refresh), 0);
        assert_int_equal(auth_wait(t.a), 0);
        assert_int_equal(auth_reload(t.b), 0); /* b's copy holds it too */
        struct refreshed ra = {0}, rb = {0};
        /* one first, then the other, and the other way round */
        struct auth *first = round % 2 ? t.b : t.a, *second = round % 2 ? t.a : t.b;
        assert_int_equal(auth_refresh_async(first, refresh, note_refreshed, &ra), 0);
        assert_int_equal(auth_refresh_async(second, refresh, note_refreshed, &rb), 0);
        reap_both(&t, &ra.done, &rb.done);
        assert_true((ra.rc == 0) != (rb.rc == 0));
        assert_int_equal(ra.rc == 0 ? rb.rc : ra.rc, -ENOENT);
        struct auth_principal p;
        const char *won = ra.rc == 0 ? ra.access : rb.access;
        assert_int_equal(auth_authenticate(ra.rc == 0 ? first : second, won, &p), 0);
        char user[AUTH_GUID_LEN + 1], a2[AUTH_TOKEN_TEXT_MAX], r2[AUTH_TOKEN_TEXT_MAX];
        assert_int_equal(auth_refresh(t.a, refresh, user, a2, r2), -ENOENT);
        assert_int_equal(auth_refresh(t.b, refresh, user, a2, r2), -ENOENT);
    }
    two_close(&t);
}

/* A change is in memory at once and its writes queued: auth_landed hears once they are made,
 * never before (here they wait behind a row another transaction holds), and another skiffd's
 * fresh read then finds them. */
static void test_a_change_is_landed_only_once_its_writes_are_made(void **state)
{
    (void)state;
    struct two t;
    two_open(&t);
    /* a first change writes the generation record */
    assert_int_equal(auth_role_set(t.a, t.guid, AUTH_DEFAULT_ORG_GUID, NULL, AUTH_ROLE_ORG_AUDITOR),
                     0);
    assert_int_equal(auth_wait(t.a), 0);
    PGconn *hold = PQconnectdb(t.url);
    assert_int_equal(PQstatus(hold), CONNECTION_OK);
    PGresult *res = PQexec(hold, "BEGIN; SELECT 1 FROM documents WHERE kind = 'auth.generation'"
                                 " FOR UPDATE");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 1);
    PQclear(res);
    assert_int_equal(
        auth_role_set(t.a, t.guid, AUTH_DEFAULT_ORG_GUID, NULL, AUTH_ROLE_BILLING_MANAGER), 0);
    assert_true(auth_roles_of(t.a, t.guid, AUTH_DEFAULT_ORG_GUID, NULL) &
                (1u << AUTH_ROLE_BILLING_MANAGER)); /* in memory at once */
    struct refreshed landed = {0};
    auth_landed(t.a, note_landed, &landed);
    for (int i = 0; i < 30; i++) { /* 300 ms: still waiting for the row */
        store_async_reap(t.s1);
        usleep(10 * 1000);
    }
    assert_false(landed.done);
    assert_true(store_async_queued(t.s1) > 0);
    PQclear(PQexec(hold, "ROLLBACK"));
    PQfinish(hold);
    bool other = true;
    reap_both(&t, &landed.done, &other);
    assert_int_equal(landed.rc, 0);
    assert_true(denied(t.b, t.s2)); /* the generation moved: b reads everything */
    assert_true(auth_roles_of(t.b, t.guid, AUTH_DEFAULT_ORG_GUID, NULL) &
                (1u << AUTH_ROLE_BILLING_MANAGER));
    /* nothing changed: heard at once */
    struct refreshed nothing = {0};
    auth_landed(t.a, note_landed, &nothing);
    assert_true(nothing.done);
    two_close(&t);
}

/* skiffd's once-a-second catch-up queues its reads: the copy answers as it was until every
 * kind's read is back, then is replaced at once. A change made here while they are under way
 * has them made again (they may lack it), so it is never lost from the copy. */
static void test_a_catch_up_off_the_loop_replaces_the_copy_once_its_reads_are_back(void **state)
{
    (void)state;
    struct two t;
    two_open(&t);
    assert_int_equal(auth_catch_up(t.b), 1); /* the first call reads */
    user_made(t.a, "far");
    feed_fence(t.s2, t.s1);
    struct refreshed r = {0};
    assert_int_equal(auth_catch_up_async(t.b, note_landed, &r), 1);
    assert_int_equal(auth_catch_up_async(t.b, NULL, NULL), -EALREADY);
    assert_false(r.done);
    assert_null(auth_user_find(t.b, "far")); /* not yet: the reads are queued */
    user_made(t.b, "near");                  /* made meanwhile */
    reap_until(t.s2, &r.done);
    assert_int_equal(r.rc, 1);
    assert_non_null(auth_user_find(t.b, "far"));
    assert_non_null(auth_user_find(t.b, "near"));
    /* once it is done, the next finds nothing new (or reads again, the change made here
     * having moved the generation) */
    struct refreshed again = {0};
    int rc = auth_catch_up_async(t.b, note_landed, &again);
    if (rc == 1)
        reap_until(t.s2, &again.done);
    assert_true(rc == 0 || (rc == 1 && again.rc >= 0));
    assert_non_null(auth_user_find(t.b, "near"));
    two_close(&t);
}

/* A token made through another skiffd, looked for after the feed told of it: everything is
 * read again off the caller's thread (queued), not during the call, and the request's wait
 * ends once the copy holds it. */
static void test_a_token_from_another_skiffd_is_read_with_the_copy_off_the_loop(void **state)
{
    (void)state;
    struct two t;
    two_open(&t);
    assert_int_equal(auth_catch_up(t.b), 1);
    char access[AUTH_TOKEN_TEXT_MAX], refresh[AUTH_TOKEN_TEXT_MAX];
    assert_int_equal(auth_login(t.a, user_made(t.a, "newcomer")->guid, access, refresh), 0);
    assert_int_equal(auth_wait(t.a), 0);
    feed_fence(t.s2, t.s1);
    struct auth_principal p;
    assert_int_equal(auth_authenticate_cached(t.b, access, &p), -ENOENT);
    struct refreshed r = {0};
    assert_int_equal(auth_authenticate_lookup_async(t.b, access, note_landed, &r), 0);
    assert_false(r.done);
    assert_null(auth_user_find(t.b, "newcomer")); /* nothing read during the call */
    reap_until(t.s2, &r.done);
    assert_int_equal(r.rc, 0);
    assert_int_equal(auth_authenticate_cached(t.b, access, &p), 0);
    assert_non_null(auth_user_find(t.b, "newcomer"));
    two_close(&t);
}

/* A name's claim goes with its record, through the queue: a user deleted through a (its
 * claim's read and delete queued, landed with the deletion) may be made again at once
 * through b, and a made through b is refused through a. */
static void test_a_deleted_users_name_is_free_again_once_landed(void **state)
{
    (void)state;
    struct two t;
    two_open(&t);
    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("a long password", hash), 0);
    const struct auth_user *u = NULL;
    assert_int_equal(auth_user_create(t.a, "again", hash, false, &u), 0);
    char guid[AUTH_GUID_LEN + 1];
    snprintf(guid, sizeof guid, "%s", u->guid);
    assert_int_equal(auth_user_delete(t.a, guid), 0);
    assert_int_equal(auth_wait(t.a), 0);
    char *claim = NULL;
    assert_int_equal(store_doc_get_fresh(t.s2, "auth.user.name", "again", &claim), -ENOENT);
    assert_int_equal(auth_user_create(t.b, "again", hash, false, NULL), 0);
    assert_int_equal(auth_user_create(t.a, "again", hash, false, NULL), -EEXIST);
    two_close(&t);
}

static void test_role_names_round_trip(void **state)
{
    (void)state;
    for (int r = 0; r < AUTH_ROLE_COUNT; r++)
        assert_int_equal(auth_role_parse(auth_role_name((enum auth_role)r)), r);
    assert_int_equal(auth_role_parse("space_developer"), AUTH_ROLE_SPACE_DEVELOPER);
    assert_int_equal(auth_role_parse("Emperor"), -1);
    for (int p = 0; p < AUTH_PERM_COUNT; p++)
        assert_true(*auth_perm_meaning((enum auth_perm)p));
}

/* A cell's token: skiffc_, the cell's id, 64 hex digits; nothing else passes for one. */
static void test_a_cells_token_names_its_cell(void **state)
{
    (void)state;
    const char *id = "0123456789abcdef0123456789abcdef";
    const char *secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    char token[160], cell[AUTH_CELL_ID_LEN + 1] = "";
    snprintf(token, sizeof token, "skiffc_%s%s", id, secret);
    assert_true(auth_cell_token_parse(token, cell));
    assert_string_equal(cell, id);
    assert_true(auth_cell_id_valid(id));
    /* the one token cells shared before: no cell in it */
    snprintf(token, sizeof token, "skiffc_%s", secret);
    assert_false(auth_cell_token_parse(token, cell));
    snprintf(token, sizeof token, "skiffc_%s%s0", id, secret); /* too long */
    assert_false(auth_cell_token_parse(token, cell));
    snprintf(token, sizeof token, "skiffc_%s%.63s", id, secret); /* too short */
    assert_false(auth_cell_token_parse(token, cell));
    snprintf(token, sizeof token, "skiffc_%s%s", "0123456789ABCDEF0123456789abcdef", secret);
    assert_false(auth_cell_token_parse(token, cell)); /* upper case */
    snprintf(token, sizeof token, "skiffx_%s%s", id, secret);
    assert_false(auth_cell_token_parse(token, cell));
    snprintf(token, sizeof token, "skiffc_../../etc/passwd%s%s", id + 16, secret);
    assert_false(auth_cell_token_parse(token, cell));
    assert_false(auth_cell_token_parse(NULL, cell));
    assert_false(auth_cell_id_valid("0123456789abcdef0123456789abcde"));
    assert_false(auth_cell_id_valid("0123456789abcdef0123456789abcdeg"));
    assert_false(auth_cell_id_valid(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_first_start_makes_default_space_and_admin, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_passwords_and_names, setup, teardown),
        cmocka_unit_test_setup_teardown(test_space_ssh_setting_is_kept, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roles_decide_with_404_for_strangers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_copies_on_one_store_catch_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_an_orphaned_claim_is_taken_over_after_its_grace, setup,
                                        teardown),
        cmocka_unit_test(test_role_names_round_trip),
        cmocka_unit_test(test_a_cells_token_names_its_cell),
    };
    const struct CMUnitTest pg_tests[] = {
        cmocka_unit_test(test_catch_up_reads_the_generation_only_on_its_news),
        cmocka_unit_test(test_a_miss_is_read_fresh_when_the_feed_told_only_of_older_writes),
        cmocka_unit_test(test_a_refusal_catches_up_with_a_change_the_feed_has_not_told_of),
        cmocka_unit_test(test_a_refresh_token_is_good_once_across_two_stores),
        cmocka_unit_test(test_a_change_is_landed_only_once_its_writes_are_made),
        cmocka_unit_test(test_a_catch_up_off_the_loop_replaces_the_copy_once_its_reads_are_back),
        cmocka_unit_test(test_a_token_from_another_skiffd_is_read_with_the_copy_off_the_loop),
        cmocka_unit_test(test_a_deleted_users_name_is_free_again_once_landed),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("auth on PostgreSQL", pg_tests, pg_throwaway_start,
                                          pg_throwaway_stop);
    return failed;
}
