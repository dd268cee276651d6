/* The pure parts of the built-in brokers: names in the stores, credentials, passwords, basic
 * auth, and the config file. */
#include <ctype.h>
#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "brokers/brokers.h"
#include "common/util.h"

#define BROKERS_ID_MAX 64

bool brokers_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > BROKERS_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)id[i]) && id[i] != '-')
            return false;
    return true;
}

static void brokers__name(const char *prefix, const char *id, char out[68])
{
    size_t n = 0;
    for (const char *p = prefix; *p; p++)
        out[n++] = *p;
    for (const char *p = id; *p && n < 67; p++)
        out[n++] = *p == '-' ? '_' : (char)tolower((unsigned char)*p);
    out[n] = '\0';
}

void brokers_pg_instance_name(const char *instance_id, char out[68])
{
    brokers__name("si_", instance_id, out);
}

void brokers_pg_binding_name(const char *binding_id, char out[68])
{
    brokers__name("sb_", binding_id, out);
}

json_t *brokers_pg_credentials(const char *host, int port, const char *db, const char *user,
                               const char *password)
{
    /* generated names and passwords (base64url) need no percent-encoding in a URI */
    char *uri = xasprintf("postgres://%s:%s@%s:%d/%s", user, password, host, port, db);
    char *jdbc =
        xasprintf("jdbc:postgresql://%s:%d/%s?user=%s&password=%s", host, port, db, user, password);
    json_t *c = json_pack("{s:s,s:s,s:s,s:i,s:s,s:s,s:s}", "uri", uri, "jdbcUrl", jdbc, "host",
                          host, "port", port, "name", db, "username", user, "password", password);
    free(uri);
    free(jdbc);
    return c;
}

json_t *brokers_redis_credentials(const char *host, int port, const char *instance_id,
                                  const char *user, const char *password)
{
    char *uri = xasprintf("redis://%s:%s@%s:%d", user, password, host, port);
    char *prefix = xasprintf("%s:", instance_id);
    json_t *c = json_pack("{s:s,s:i,s:s,s:s,s:s,s:s}", "host", host, "port", port, "username", user,
                          "password", password, "uri", uri, "key_prefix", prefix);
    free(uri);
    free(prefix);
    return c;
}

char *brokers_redis_acl_rules(const char *instance_id)
{
    /* SCAN, RANDOMKEY and KEYS list names across prefixes (key patterns do not filter them);
     * scripts, modules and functions could reach beyond them; SELECT and SWAPDB, MOVE and
     * COPY ... DB reach other databases; the admin, dangerous and blocking-admin categories
     * see or change the whole server */
    return xasprintf("resetkeys ~%s:* resetchannels &%s:* -@all +@read +@write +@string +@hash "
                     "+@list +@set +@sortedset +@stream +@bitmap +@hyperloglog +@geo "
                     "+@pubsub +@transaction +@connection -@dangerous -@admin -@scripting "
                     "-scan -randomkey -keys -select -swapdb -move -copy -migrate -object "
                     "-pubsub -dbsize +ping +auth +hello",
                     instance_id, instance_id);
}

void brokers_password(char out[44])
{
    unsigned char raw[32];
    randombytes_buf(raw, sizeof raw);
    sodium_bin2base64(out, 44, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
}

bool brokers_basic_auth_ok(const char *header, const char *user, const char *password)
{
    if (!header || strncasecmp(header, "Basic ", 6))
        return false;
    const char *b64 = header + 6;
    while (*b64 == ' ')
        b64++;
    unsigned char dec[512];
    size_t len = 0;
    if (sodium_base642bin(dec, sizeof dec - 1, b64, strlen(b64), NULL, &len, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return false;
    dec[len] = '\0';
    char *expect = xasprintf("%s:%s", user, password);
    bool ok = strlen(expect) == len && sodium_memcmp(expect, dec, len) == 0;
    sodium_memzero(expect, strlen(expect));
    sodium_memzero(dec, sizeof dec);
    free(expect);
    return ok;
}

/* ---- the config file ---------------------------------------------------------------------- */

static int brokers__field(json_t *doc, const char *key, char **out, char *err, size_t errlen)
{
    const char *v = json_string_value(json_object_get(doc, key));
    if (!v || !*v) {
        snprintf(err, errlen, "%s: missing (a string)", key);
        return -EINVAL;
    }
    *out = xstrdup(v);
    return 0;
}

int brokers_config_load(const char *path, struct brokers_config *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    if (!json_is_object(doc)) {
        snprintf(err, errlen, "%s: %s", path, doc ? "not a JSON object" : jerr.text);
        json_decref(doc);
        return -EINVAL;
    }
    int rc = 0;
    if ((rc = brokers__field(doc, "home", &cfg->home, err, errlen)) < 0 ||
        (rc = brokers__field(doc, "listen", &cfg->listen, err, errlen)) < 0 ||
        (rc = brokers__field(doc, "username", &cfg->username, err, errlen)) < 0 ||
        (rc = brokers__field(doc, "password", &cfg->password, err, errlen)) < 0 ||
        (rc = brokers__field(doc, "service_host", &cfg->service_host, err, errlen)) < 0 ||
        (rc = brokers__field(doc, "listen_hosts", &cfg->listen_hosts, err, errlen)) < 0)
        goto out;
    cfg->postgres_port = (int)json_integer_value(json_object_get(doc, "postgres_port"));
    cfg->redis_port = (int)json_integer_value(json_object_get(doc, "redis_port"));
    if (cfg->postgres_port <= 0 || cfg->postgres_port > 65535 || cfg->redis_port <= 0 ||
        cfg->redis_port > 65535) {
        snprintf(err, errlen, "postgres_port and redis_port: TCP ports");
        rc = -EINVAL;
        goto out;
    }
    const char *pg = json_string_value(json_object_get(doc, "postgres_bin"));
    const char *rs = json_string_value(json_object_get(doc, "redis_server"));
    cfg->postgres_bin = xstrdup(pg ? pg : "/usr/lib/postgresql/15/bin");
    cfg->redis_server = xstrdup(rs ? rs : "/usr/bin/redis-server");
    const char *eu = json_string_value(json_object_get(doc, "events_url"));
    const char *ek = json_string_value(json_object_get(doc, "events_key"));
    if (eu && ek) {
        cfg->events_url = xstrdup(eu);
        cfg->events_key = xstrdup(ek);
    }
out:
    json_decref(doc);
    if (rc < 0)
        brokers_config_clean(cfg);
    return rc;
}

void brokers_config_clean(struct brokers_config *cfg)
{
    free(cfg->home);
    free(cfg->listen);
    free(cfg->username);
    if (cfg->password)
        sodium_memzero(cfg->password, strlen(cfg->password));
    free(cfg->password);
    free(cfg->service_host);
    free(cfg->listen_hosts);
    free(cfg->postgres_bin);
    free(cfg->redis_server);
    free(cfg->events_url);
    free(cfg->events_key);
    memset(cfg, 0, sizeof *cfg);
}
