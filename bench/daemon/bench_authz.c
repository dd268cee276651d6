/* The authorisation hook alone, in one run beside its peer: nanoseconds per request to turn a
 * bearer token into a principal and decide a permission in a space (auth_authenticate +
 * auth_check), with 1,000 users holding a token each, 100 spaces and a role per user, against
 * what the API did before tenancy for every request: one BLAKE2b of the token compared with
 * the admin token's hash.
 *   bench/daemon/bench_authz.sh */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "common/util.h"
#include "store/store.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    char *db = xasprintf("%s/authz-bench.db", dir);
    unlink(db);
    char err[256];
    struct store *st = NULL;
    if (store_open(db, err, sizeof err, &st) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    char *pw = NULL;
    struct auth *a = NULL;
    if (auth_open(st, &pw, &a) < 0)
        return 1;
    free(pw);
    const struct auth_org *org = NULL;
    auth_org_create(a, "bench", &org);
    char org_guid[37];
    snprintf(org_guid, sizeof org_guid, "%s", org->guid);
    char spaces[100][37];
    for (int s = 0; s < 100; s++) {
        char name[16];
        snprintf(name, sizeof name, "s%03d", s);
        const struct auth_space *sp = NULL;
        auth_space_create(a, org_guid, name, &sp);
        snprintf(spaces[s], sizeof spaces[s], "%s", sp->guid);
    }
    char hash[AUTH_PASSWORD_HASH_MAX];
    auth_password_hash("a bench password", hash);
    enum { USERS = 1000 };
    static char tokens[USERS][AUTH_TOKEN_TEXT_MAX];
    for (int u = 0; u < USERS; u++) {
        char name[16], refresh[AUTH_TOKEN_TEXT_MAX];
        snprintf(name, sizeof name, "user%04d", u);
        const struct auth_user *user = NULL;
        auth_user_create(a, name, hash, false, &user);
        char guid[37];
        snprintf(guid, sizeof guid, "%s", user->guid);
        auth_role_set(a, guid, org_guid, spaces[u % 100], AUTH_ROLE_SPACE_DEVELOPER);
        auth_login(a, guid, tokens[u], refresh);
    }
    unsigned char admin_hash[crypto_generichash_BYTES];
    crypto_generichash(admin_hash, sizeof admin_hash, (const unsigned char *)"admin", 5, NULL, 0);
    const int rounds = 200000;
    volatile int sink = 0;
    double best_hook = 1e18, best_peer = 1e18;
    for (int rep = 0; rep < 5; rep++) {
        double t = now_ns();
        for (int i = 0; i < rounds; i++) {
            const char *tok = tokens[(i * 7919) % USERS];
            unsigned char h[crypto_generichash_BYTES];
            crypto_generichash(h, sizeof h, (const unsigned char *)tok, strlen(tok), NULL, 0);
            sink += sodium_memcmp(h, admin_hash, sizeof h);
        }
        double peer = (now_ns() - t) / rounds;
        t = now_ns();
        for (int i = 0; i < rounds; i++) {
            int u = (i * 7919) % USERS;
            const char *tok = tokens[u];
            unsigned char h[crypto_generichash_BYTES];
            crypto_generichash(h, sizeof h, (const unsigned char *)tok, strlen(tok), NULL, 0);
            sink += sodium_memcmp(h, admin_hash, sizeof h); /* the API still tries the admin's */
            struct auth_principal p;
            sink += auth_authenticate(a, tok, &p);
            sink += auth_check(a, &p, AUTH_PERM_SPACE_DEVELOP, org_guid, spaces[u % 100]);
        }
        double hook = (now_ns() - t) / rounds;
        if (hook < best_hook)
            best_hook = hook;
        if (peer < best_peer)
            best_peer = peer;
    }
    printf("peer (admin token hash compare, as before tenancy): %7.0f ns/request\n", best_peer);
    printf("authz hook (token -> principal -> space check), %d users, 100 spaces: %7.0f ns/request\n",
           USERS, best_hook);
    printf("hook cost over the peer: %.2f us per request (target <= 5 us); ratio %.1fx\n",
           (best_hook - best_peer) / 1000, best_hook / best_peer);
    auth_free(a);
    store_close(st);
    unlink(db);
    free(db);
    return sink == 42 ? 2 : 0;
}
