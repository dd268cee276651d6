/* Tokens of the built-in `events` offering's bindings (services.h): made by skiff-brokers,
 * checked by skiffd, under a key both read from $SKIFF_HOME/brokers/events.key. */
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "services/services.h"

#define TOKEN_ID_MAX 64

static bool token__id_ok(const char *s, size_t n)
{
    if (n == 0 || n > TOKEN_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return false;
    return true;
}

void services_binding_token(const unsigned char key[32], const char *instance_guid,
                            const char *binding_guid, char *out, size_t size)
{
    char subject[2 * TOKEN_ID_MAX + 2];
    snprintf(subject, sizeof subject, "%s.%s", instance_guid, binding_guid);
    unsigned char mac[crypto_auth_hmacsha256_BYTES];
    crypto_auth_hmacsha256(mac, (const unsigned char *)subject, strlen(subject), key);
    char hex[2 * sizeof mac + 1];
    sodium_bin2hex(hex, sizeof hex, mac, sizeof mac);
    snprintf(out, size, SERVICES_BINDING_TOKEN_PREFIX "%s.%s", subject, hex);
    sodium_memzero(mac, sizeof mac);
}

bool services_binding_token_check(const unsigned char key[32], const char *token,
                                  char instance_guid[65], char binding_guid[65])
{
    if (!token || !str_has_prefix(token, SERVICES_BINDING_TOKEN_PREFIX))
        return false;
    const char *inst = token + strlen(SERVICES_BINDING_TOKEN_PREFIX);
    const char *dot1 = strchr(inst, '.');
    const char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    if (!dot2 || !token__id_ok(inst, (size_t)(dot1 - inst)) ||
        !token__id_ok(dot1 + 1, (size_t)(dot2 - dot1 - 1)) ||
        strlen(dot2 + 1) != 2 * crypto_auth_hmacsha256_BYTES)
        return false;
    snprintf(instance_guid, 65, "%.*s", (int)(dot1 - inst), inst);
    snprintf(binding_guid, 65, "%.*s", (int)(dot2 - dot1 - 1), dot1 + 1);
    char expect[SERVICES_BINDING_TOKEN_MAX];
    services_binding_token(key, instance_guid, binding_guid, expect, sizeof expect);
    bool ok = strlen(expect) == strlen(token) && sodium_memcmp(expect, token, strlen(token)) == 0;
    sodium_memzero(expect, sizeof expect);
    return ok;
}

int services_binding_key(const char *path, unsigned char key[32])
{
    char *text = NULL;
    size_t len = 0;
    if (file_read(path, &text, &len) == 0) {
        size_t n = 0;
        int rc = len >= 64 && sodium_hex2bin(key, 32, text, 64, NULL, &n, NULL) == 0 && n == 32
                     ? 0
                     : -EINVAL;
        sodium_memzero(text, len);
        free(text);
        return rc;
    }
    free(text);
    randombytes_buf(key, 32);
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, key, 32);
    int rc = file_write_atomic(path, hex, 64, 0600);
    sodium_memzero(hex, sizeof hex);
    return rc;
}
