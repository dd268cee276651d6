/* A domain's own HTTPS certificate (docs/api.md "Domains"): checked with tls_pair_check, kept
 * in HOME/tls/domains/DOMAIN.pem (0600, read by skiffd and the router only), announced to the
 * routers over the bus; the key is never answered, logged or stored elsewhere. */
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/core_internal.h"
#include "auth/auth.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "store/store.h"
#include "tls/tls.h"

/* HOME/tls/domains/NAME.pem (NAME was found in the store: a DNS name, no '/'). */
static char *certs__path(struct api_core *core, const char *name)
{
    return xasprintf("%s/tls/domains/%s.pem", core->cfg.home, name);
}

/* The certificate part of a domain's answer, or NULL when it has none. */
json_t *api_core__domain_cert_json(struct api_core *core, const char *name)
{
    char *path = certs__path(core, name);
    struct tls_cert_info info;
    int r = tls_cert_file_info(path, &info);
    free(path);
    if (r < 0)
        return NULL;
    char not_after[40], not_before[40];
    time_format_rfc3339(info.not_after * 1000, not_after, sizeof not_after);
    time_format_rfc3339(info.not_before * 1000, not_before, sizeof not_before);
    return json_pack("{s:s,s:s,s:s,s:s}", "subject", info.subject, "issuer", info.issuer,
                     "not_before", not_before, "not_after", not_after);
}

/* Whether the domain exists and, for an org's request, belongs to that org. */
static int certs__domain_owned(struct api_core *core, const char *name, const char *org)
{
    char **names = NULL, **owners = NULL;
    if (store_domain_list(core->cfg.store, &names, NULL, &owners) < 0)
        return -EIO;
    int r = -ENOENT;
    for (size_t i = 0; names[i]; i++)
        if (!strcmp(names[i], name))
            r = !org || !strcmp(owners[i], org) ? 0 : -ENOENT;
    store_strv_free(names);
    store_strv_free(owners);
    return r;
}

/* The names must cover the domain itself or the hosts of its routes (a wildcard *.DOMAIN). */
static int certs__check(const char *cert, size_t cert_len, const char *key, size_t key_len,
                        const char *name, struct tls_cert_info *info, char *err, size_t errsize)
{
    int r = tls_pair_check(cert, cert_len, key, key_len, name, info, err, errsize);
    if (r == 0 || !strstr(err, "do not cover"))
        return r;
    char *host = xasprintf("host.%s", name);
    char other[64];
    r = tls_pair_check(cert, cert_len, key, key_len, host, info, other, sizeof other);
    free(host);
    if (r < 0)
        snprintf(err, errsize,
                 "the certificate's names cover neither %s nor the hosts under it (it needs a "
                 "subject alternative name DNS:%s or DNS:*.%s)",
                 name, name, name);
    return r;
}

/* The key is in the request's JSON: wiped before jansson frees it. */
static void certs__body_free(json_t *body)
{
    json_t *k = json_object_get(body, "key");
    if (json_is_string(k))
        OPENSSL_cleanse((char *)json_string_value(k), json_string_length(k));
    json_decref(body);
}

/* PUT /v1/domains/DOMAIN/certificate (the admin, any domain) and
 * PUT /v1/orgs/ORG/domains/DOMAIN/certificate (the org's managers, its private domains):
 * {"cert": PEM chain, "key": PEM key}. */
static void certs__put(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    static const char *const fields[] = {"cert", "key", NULL};
    const char *org = api_request_org(req);
    const char *name = api_request_param(req, org ? 1 : 0);
    json_t *body = api_request_json_object(req);
    if (!body)
        return;
    if (!api_json_check_fields(req, body, fields))
        goto done;
    int r = certs__domain_owned(core, name, org);
    if (r == -EIO) {
        api_respond_error(req, r, "cannot read the domains: %s", skiff_strerror(r));
        goto done;
    }
    if (r < 0) {
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          org ? "the org has no private domain %s (see `skiff domains`)"
                              : "there is no domain %s (see `skiff domains`)",
                          name);
        goto done;
    }
    json_t *cert = json_object_get(body, "cert"), *key = json_object_get(body, "key");
    if (!json_is_string(cert) || !json_is_string(key)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE,
                          "cert and key are PEM text: skiff update-domain %s --cert FILE --key "
                          "FILE",
                          name);
        goto done;
    }
    char err[512] = "";
    struct tls_cert_info info;
    if (certs__check(json_string_value(cert), json_string_length(cert), json_string_value(key),
                     json_string_length(key), name, &info, err, sizeof err) < 0) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "%s", err);
        goto done;
    }
    struct buf pem = {0};
    buf_append(&pem, json_string_value(cert), json_string_length(cert));
    buf_puts(&pem, "\n");
    buf_append(&pem, json_string_value(key), json_string_length(key));
    char *dir = xasprintf("%s/tls/domains", core->cfg.home);
    char *path = certs__path(core, name);
    r = mkdir_p(dir, 0700);
    if (r == 0)
        r = file_write_atomic(path, pem.data, pem.len, 0600);
    if (r == 0)
        r = chmod(path, 0600) < 0 ? -errno : 0;
    OPENSSL_cleanse(pem.data, pem.len);
    buf_free(&pem);
    free(dir);
    free(path);
    if (r < 0) {
        api_respond_error(req, r, "cannot store the certificate: %s", skiff_strerror(r));
        goto done;
    }
    if (core->cfg.certs_changed)
        core->cfg.certs_changed(core->cfg.certs_ctx);
    json_t *out = api_core__domain_cert_json(core, name);
    api_respond_json(req, 200, json_pack("{s:s,s:o*}", "name", name, "certificate", out));
done:
    certs__body_free(body);
}

void api_core__certs_register(struct api_core *core)
{
    api_route_add(core->api, "PUT", "/v1/domains/*/certificate", API_PERM(AUTH_PERM_ADMIN),
                  certs__put, core);
    api_route_add(core->api, "PUT", "/v1/orgs/*/domains/*/certificate",
                  API_PERM(AUTH_PERM_ORG_MANAGE) | API_SCOPE_ORG, certs__put, core);
}
