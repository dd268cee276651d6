/* A domain's own HTTPS certificate (docs/api.md "Domains"): checked with tls_pair_check, kept
 * in the store (store_domain_cert_set: every skiffd and, through it, every router gets it) and
 * written to HOME/tls/domains/DOMAIN.pem (0600) for this host's router, announced to the
 * routers over the bus (docs/bus.md); the key is never answered or logged. */
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/core_internal.h"
#include "auth/auth.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "store/store.h"
#include "tls/tls.h"

/* HOME/tls/domains/NAME.pem (NAME was found in the store: a DNS name, no '/'). */
static char *certs__path(struct api_core *core, const char *name)
{
    return xasprintf("%s/tls/domains/%s.pem", core->cfg.home, name);
}

/* Writes a domain's pair where this host's router reads it (0600 in a 0700 folder). */
static int certs__write_file(struct api_core *core, const char *name, const char *cert,
                             const char *key)
{
    struct buf pem = {0};
    buf_puts(&pem, cert);
    if (pem.len && pem.data[pem.len - 1] != '\n')
        buf_puts(&pem, "\n");
    buf_puts(&pem, key);
    char *dir = xasprintf("%s/tls/domains", core->cfg.home);
    char *path = certs__path(core, name);
    int r = mkdir_p(dir, 0700);
    if (r == 0)
        r = file_write_atomic(path, pem.data, pem.len, 0600);
    if (r == 0)
        r = chmod(path, 0600) < 0 ? -errno : 0;
    OPENSSL_cleanse(pem.data, pem.len);
    buf_free(&pem);
    free(dir);
    free(path);
    return r;
}

static void certs__free_key(char *key)
{
    if (key)
        OPENSSL_cleanse(key, strlen(key));
    free(key);
}

/* The certificate part of a domain's answer, from its chain; NULL when it cannot be read. */
json_t *api_core__cert_json(const char *chain)
{
    struct tls_cert_info info;
    if (!chain || tls_cert_pem_info(chain, strlen(chain), &info) < 0)
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
    strv_free(names);
    strv_free(owners);
    return r;
}

/* Answers when the domain is not there for this request (or its store could not be read);
 * true when it is. */
static bool certs__found(struct api_request *req, struct api_core *core, const char *name,
                         const char *org)
{
    int r = certs__domain_owned(core, name, org);
    if (r == -EIO)
        api_respond_error(req, r, "cannot read the domains: %s", skiff_strerror(r));
    else if (r < 0)
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          org ? "the org has no private domain %s (see `skiff domains`)"
                              : "there is no domain %s (see `skiff domains`)",
                          name);
    return r == 0;
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

/* A certificate's write, queued: the request, and its body (cert and key) until answered. */
struct certs_put {
    struct api_core *core;
    struct api_request *req;
    const char *name; /* the request's */
    json_t *body;
};

/* Stored: this host's router gets the pair as a file, the routers on NATS are told, and the
 * request is answered with what the certificate is. */
static void certs__stored(void *ctx, int r)
{
    struct certs_put *put = ctx;
    struct api_core *core = put->core;
    const char *cert = json_string_value(json_object_get(put->body, "cert"));
    const char *key = json_string_value(json_object_get(put->body, "key"));
    if (r == -ENOENT || r == -EEXIST) { /* the store's foreign key: no such domain */
        api_respond_error(put->req, SKIFF_E_NOT_FOUND,
                          "the domain %s was deleted meanwhile (see `skiff domains`)", put->name);
    } else if (r < 0) {
        api_respond_error(put->req, r, "cannot store the certificate: %s", skiff_strerror(r));
    } else {
        r = certs__write_file(core, put->name, cert, key);
        if (r < 0) /* stored: the routers on NATS get it; this host's router keeps the one before */
            log_error("cannot write %s's certificate for this host's router: %s", put->name,
                      skiff_strerror(r));
        if (core->cfg.certs_changed)
            core->cfg.certs_changed(core->cfg.certs_ctx);
        api_respond_json(
            put->req, 200,
            json_pack("{s:s,s:o*}", "name", put->name, "certificate", api_core__cert_json(cert)));
    }
    certs__body_free(put->body);
    free(put);
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
    if (!certs__found(req, core, name, org))
        goto done;
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
    if (strlen(json_string_value(cert)) != json_string_length(cert) ||
        strlen(json_string_value(key)) != json_string_length(key)) {
        api_respond_error(req, SKIFF_E_INVALID_VALUE, "cert and key are PEM text, without NUL");
        goto done;
    }
    struct certs_put *put = xcalloc(1, sizeof *put);
    *put = (struct certs_put){.core = core, .req = req, .name = name, .body = body};
    int r = store_domain_cert_set_async(core->cfg.store, name, json_string_value(cert),
                                        json_string_value(key), certs__stored, put);
    if (r < 0)
        certs__stored(put, r);
    return; /* answered once stored */
done:
    certs__body_free(body);
}

/* A removal of a domain's pair, queued: who hears of it. */
struct certs_removal {
    struct api_core *core;
    char *name;
    void (*done)(void *ctx, int rc);
    void *ctx;
};

static void certs__removed(void *ctx, int r)
{
    struct certs_removal *rm = ctx;
    struct api_core *core = rm->core;
    if (r == 0) {
        char *path = certs__path(core, rm->name);
        if (unlink(path) < 0 && errno != ENOENT)
            log_error("cannot remove %s (%s's certificate, out of the store): %s", path, rm->name,
                      skiff_strerror(-errno));
        free(path);
        if (core->cfg.certs_changed)
            core->cfg.certs_changed(core->cfg.certs_ctx);
        log_info("removed %s's certificate", rm->name);
    }
    rm->done(rm->ctx, r);
    free(rm->name);
    free(rm);
}

/* The one removal of a domain's pair (delete-domain-cert and delete-domain): out of the store
 * (the write queued), then this host's router's file goes, and the routers on NATS are told to
 * remove theirs (bus.c). */
void api_core__domain_cert_remove(struct api_core *core, const char *name,
                                  void (*done)(void *ctx, int rc), void *ctx)
{
    struct certs_removal *rm = xcalloc(1, sizeof *rm);
    *rm = (struct certs_removal){.core = core, .name = xstrdup(name), .done = done, .ctx = ctx};
    int r = store_domain_cert_delete_async(core->cfg.store, name, certs__removed, rm);
    if (r < 0)
        certs__removed(rm, r);
}

/* DELETE's answer, once the pair is out of the store. */
static void certs__delete_answer(void *ctx, int r)
{
    struct api_request *req = ctx;
    if (r == -ENOENT)
        api_respond_error(req, SKIFF_E_NOT_FOUND,
                          "the domain %s has no certificate of its own (it is served with the "
                          "default one)",
                          api_request_param(req, api_request_org(req) ? 1 : 0));
    else if (r < 0)
        api_respond_error(req, r, "cannot remove the certificate: %s", skiff_strerror(r));
    else
        api_respond(req, 204, NULL, NULL, 0);
}

/* DELETE /v1/domains/DOMAIN/certificate (the admin) and
 * DELETE /v1/orgs/ORG/domains/DOMAIN/certificate (the org's managers): the pair leaves the
 * store, this host's router's file goes, and the routers on NATS are told to remove theirs
 * (bus.c); every router then answers the domain's names with the default certificate. */
static void certs__delete(struct api_request *req, void *ctx)
{
    struct api_core *core = ctx;
    const char *org = api_request_org(req);
    const char *name = api_request_param(req, org ? 1 : 0);
    if (!certs__found(req, core, name, org))
        return;
    api_core__domain_cert_remove(core, name, certs__delete_answer, req);
}

/* A pair file of a domain that has none in the store yet (written before certificates were
 * kept there) moves in when it passes the checks a new one would. */
static void certs__import_file(struct api_core *core, const char *name)
{
    char *path = certs__path(core, name), *text = NULL, *cert = NULL, *key = NULL;
    size_t len = 0;
    if (file_read(path, &text, &len) < 0)
        goto done;
    char err[512] = "";
    struct tls_cert_info info;
    int r = tls_pem_pair_split(text, len, &cert, &key);
    if (r < 0)
        snprintf(err, sizeof err, "not a certificate chain followed by its key");
    else
        r = certs__check(cert, strlen(cert), key, strlen(key), name, &info, err, sizeof err);
    if (r == 0 || r == -EKEYEXPIRED) /* an expired one was served before: keep it so */
        r = store_domain_cert_set(core->cfg.store, name, cert, key);
    if (r == 0)
        log_info("moved %s's certificate from %s into the store", name, path);
    else
        log_warning("%s's certificate in %s stays out of the store: %s", name, path,
                    *err ? err : "the store refused it");
done:
    if (text)
        OPENSSL_cleanse(text, len);
    free(text);
    free(cert);
    certs__free_key(key);
    free(path);
}

/* At start: files of domains the store has no certificate for move into the store, then this
 * host's router gets the store's pairs as files (the store wins). */
static void certs__sync(struct api_core *core)
{
    char **names = NULL;
    if (store_domain_list(core->cfg.store, &names, NULL, NULL) < 0) {
        log_error("cannot read the domains: their certificates were not synchronised");
        return;
    }
    for (size_t i = 0; names[i]; i++) {
        char *cert = NULL, *key = NULL;
        int r = store_domain_cert_get(core->cfg.store, names[i], &cert, &key);
        if (r == -ENOENT)
            certs__import_file(core, names[i]);
        else if (r == 0 && (r = certs__write_file(core, names[i], cert, key)) < 0)
            log_error("cannot write %s's certificate for this host's router: %s", names[i],
                      skiff_strerror(r));
        free(cert);
        certs__free_key(key);
    }
    strv_free(names);
}

void api_core__certs_register(struct api_core *core)
{
    certs__sync(core);
    api_route_add(core->api, "PUT", "/v1/domains/*/certificate", API_PERM(AUTH_PERM_ADMIN),
                  certs__put, core);
    api_route_add(core->api, "PUT", "/v1/orgs/*/domains/*/certificate",
                  API_PERM(AUTH_PERM_ORG_MANAGE) | API_SCOPE_ORG, certs__put, core);
    api_route_add(core->api, "DELETE", "/v1/domains/*/certificate", API_PERM(AUTH_PERM_ADMIN),
                  certs__delete, core);
    api_route_add(core->api, "DELETE", "/v1/orgs/*/domains/*/certificate",
                  API_PERM(AUTH_PERM_ORG_MANAGE) | API_SCOPE_ORG, certs__delete, core);
}
