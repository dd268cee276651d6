/* The certificate store: one SSL_CTX per certificate, picked by SNI. See tls.h. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/util.h"
#include "tls/tls.h"
#include "tls/tls_internal.h"

#define TLS_ISSUED_MAX 4096
#define TLS_NAME_MAX 253

/* TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3's are all of that kind). */
static const char tls_ciphers_12[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                     "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                     "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

struct tls_entry {
    char *name; /* lowercase; "*.example.test" for a wildcard */
    SSL_CTX *ctx;
};

/* What a load publishes at once: entries sorted by name, and the default. */
struct tls_certs {
    struct tls_entry *v;
    size_t n;
    SSL_CTX *def;
    size_t count; /* certificates */
};

struct ticket_key {
    unsigned char name[16], aes[32], hmac[32];
    time_t created;
    bool set;
};

struct tls_store {
    pthread_rwlock_t lock; /* guards certs and issued */
    struct tls_certs *certs;
    struct tls_entry *issued; /* certificates the store made itself, sorted by name */
    size_t issued_n;
    X509 *issuer_cert;
    EVP_PKEY *issuer_key;
    char *issuer_suffix; /* ".localhost" */
    bool (*issue_allow)(void *ctx, const char *name);
    void *issue_ctx;
    SSL_CTX *base; /* what a connection starts with, before SNI picks its certificate */
    struct tls_store_options opts;
    char *client_ca_file;
    pthread_mutex_t ticket_lock;
    struct ticket_key ticket[2]; /* [0] current, [1] previous */
    struct tls_ocsp_fetcher *ocsp; /* tls_store_ocsp_start */
};

void tls__set_err(char *err, size_t errsize, const char *fmt, ...)
{
    if (!err || !errsize)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errsize, fmt, ap);
    va_end(ap);
    unsigned long e = ERR_peek_last_error();
    if (e && n >= 0 && (size_t)n < errsize) {
        char why[200];
        ERR_error_string_n(e, why, sizeof why);
        snprintf(err + n, errsize - (size_t)n, " (%s)", why);
    }
    ERR_clear_error();
}

static void certs_free(struct tls_certs *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].name);
        SSL_CTX_free(c->v[i].ctx);
    }
    free(c->v);
    SSL_CTX_free(c->def);
    free(c);
}

/* ---- session tickets under rotating keys ------------------------------------------------- */

static void ticket_key_new(struct ticket_key *k)
{
    RAND_bytes(k->name, sizeof k->name);
    RAND_bytes(k->aes, sizeof k->aes);
    RAND_bytes(k->hmac, sizeof k->hmac);
    k->created = time(NULL);
    k->set = true;
}

/* Encrypts new tickets with the current key (a new one every ticket_key_rotate_s, the old
 * one kept one more period to decrypt, then forgotten, so a stolen key opens a bounded
 * window of past sessions). */
static int ticket_cb(SSL *ssl, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc)
{
    struct tls_store *s = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (!s)
        return -1;
    struct ticket_key k;
    int rc = 1;
    pthread_mutex_lock(&s->ticket_lock);
    if (enc) {
        if (!s->ticket[0].set || time(NULL) - s->ticket[0].created >= s->opts.ticket_key_rotate_s) {
            s->ticket[1] = s->ticket[0];
            ticket_key_new(&s->ticket[0]);
        }
        k = s->ticket[0];
    } else if (s->ticket[0].set && !memcmp(key_name, s->ticket[0].name, 16)) {
        k = s->ticket[0];
    } else if (s->ticket[1].set && !memcmp(key_name, s->ticket[1].name, 16) &&
               time(NULL) - s->ticket[1].created < 2 * s->opts.ticket_key_rotate_s) {
        k = s->ticket[1];
        rc = 2; /* good, but issue a ticket under the current key */
    } else {
        rc = 0; /* unknown or expired key: a full handshake */
    }
    pthread_mutex_unlock(&s->ticket_lock);
    if (rc == 0)
        return 0;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                           OSSL_PARAM_construct_end()};
    if (enc) {
        memcpy(key_name, k.name, 16);
        if (RAND_bytes(iv, 16) != 1 ||
            EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1)
            rc = -1;
    } else if (EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k.aes, iv) != 1) {
        rc = -1;
    }
    if (rc > 0 && EVP_MAC_CTX_set_params(hctx, params) != 1)
        rc = -1;
    if (rc > 0 && EVP_MAC_init(hctx, k.hmac, sizeof k.hmac, NULL) != 1)
        rc = -1;
    OPENSSL_cleanse(&k, sizeof k);
    return rc;
}

/* ---- contexts ------------------------------------------------------------------------------ */

static int servername_cb(SSL *ssl, int *alert, void *arg);

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    struct tls_store *s = arg;
    unsigned char *chosen = NULL;
    if (SSL_select_next_proto(&chosen, outlen, s->opts.alpn, (unsigned)s->opts.alpn_len, in,
                              inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no protocol in common: go on without ALPN */
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

/* Every context is configured alike: after SNI switches a connection to a certificate's
 * context, OpenSSL reads some settings from it (ALPN, client certificates). */
static SSL_CTX *ctx_new(struct tls_store *s, char *err, size_t errsize)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        tls__set_err(err, errsize, "cannot create a TLS context");
        return NULL;
    }
    SSL_CTX_set_app_data(ctx, s);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_set_cipher_list(ctx, tls_ciphers_12) != 1 ||
        SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1) {
        tls__set_err(err, errsize, "cannot set the TLS cipher suites");
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"skiff", 5);
    /* resumption by tickets only: no session cache shared (and locked) by the workers */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_cb);
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, s);
    if (s->opts.alpn && s->opts.alpn_len)
        SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, s);
    if (s->client_ca_file) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(s->client_ca_file);
        if (!names || SSL_CTX_load_verify_locations(ctx, s->client_ca_file, NULL) != 1) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            tls__set_err(err, errsize, "cannot read the client CA file %s", s->client_ca_file);
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_set_client_CA_list(ctx, names);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return ctx;
}

int tls_store_new(const struct tls_store_options *opts, struct tls_store **out, char *err,
                  size_t errsize)
{
    struct tls_store *s = xcalloc(1, sizeof *s);
    if (opts)
        s->opts = *opts;
    if (s->opts.ticket_key_rotate_s <= 0)
        s->opts.ticket_key_rotate_s = 3600;
    if (s->opts.client_ca_file)
        s->client_ca_file = xstrdup(s->opts.client_ca_file);
    pthread_rwlock_init(&s->lock, NULL);
    pthread_mutex_init(&s->ticket_lock, NULL);
    s->certs = xcalloc(1, sizeof *s->certs);
    s->base = ctx_new(s, err, errsize);
    if (!s->base) {
        tls_store_free(s);
        return -EINVAL;
    }
    *out = s;
    return 0;
}

void tls_store_free(struct tls_store *s)
{
    if (!s)
        return;
    tls__ocsp_fetcher_stop(s->ocsp);
    certs_free(s->certs);
    for (size_t i = 0; i < s->issued_n; i++) {
        free(s->issued[i].name);
        SSL_CTX_free(s->issued[i].ctx);
    }
    free(s->issued);
    X509_free(s->issuer_cert);
    EVP_PKEY_free(s->issuer_key);
    free(s->issuer_suffix);
    SSL_CTX_free(s->base);
    free(s->client_ca_file);
    pthread_rwlock_destroy(&s->lock);
    pthread_mutex_destroy(&s->ticket_lock);
    OPENSSL_cleanse(s->ticket, sizeof s->ticket);
    free(s);
}

SSL_CTX *tls__store_initial(struct tls_store *s)
{
    /* the default certificate's context when there is one: a handshake without SNI (or
     * for a name served by the default) then needs no switch, which copies the certificate */
    pthread_rwlock_rdlock(&s->lock);
    SSL_CTX *ctx = s->certs->def ? s->certs->def : s->base;
    SSL_CTX_up_ref(ctx);
    pthread_rwlock_unlock(&s->lock);
    return ctx;
}

size_t tls__store_contexts(struct tls_store *s, SSL_CTX ***out)
{
    pthread_rwlock_rdlock(&s->lock);
    SSL_CTX **v = xcalloc(s->certs->n + 1, sizeof *v);
    size_t n = 0;
    for (size_t i = 0; i <= s->certs->n; i++) {
        SSL_CTX *ctx = i < s->certs->n ? s->certs->v[i].ctx : s->certs->def;
        bool seen = !ctx;
        for (size_t k = 0; k < n && !seen; k++)
            seen = v[k] == ctx;
        if (!seen) {
            SSL_CTX_up_ref(ctx);
            v[n++] = ctx;
        }
    }
    pthread_rwlock_unlock(&s->lock);
    *out = v;
    return n;
}

int tls_store_ocsp_start(struct tls_store *s, int retry_s, char *err, size_t errsize)
{
    if (s->ocsp)
        return 0;
    s->ocsp = tls__ocsp_fetcher_start(s, retry_s, err, errsize);
    return s->ocsp ? 0 : -EAGAIN;
}

/* ---- names ---------------------------------------------------------------------------------- */

/* Lowercases a host name for lookup (a trailing dot dropped); false when it is not one. */
static bool name_normalize(const char *in, char *out, size_t size)
{
    size_t n = strlen(in);
    if (n && in[n - 1] == '.')
        n--;
    if (n == 0 || n > TLS_NAME_MAX || n >= size)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (!(isalnum(ch) || ch == '-' || ch == '.' || ch == '_' || (ch == '*' && i == 0)))
            return false;
        out[i] = (char)tolower(ch);
    }
    out[n] = '\0';
    return true;
}

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct tls_entry *)a)->name, ((const struct tls_entry *)b)->name);
}

static SSL_CTX *entries_find(const struct tls_entry *v, size_t n, const char *name)
{
    struct tls_entry key = {.name = (char *)name};
    const struct tls_entry *e = n ? bsearch(&key, v, n, sizeof *v, entry_cmp) : NULL;
    return e ? e->ctx : NULL;
}

/* The DNS names a certificate serves: its subject alternative names, or its CN without any. */
static size_t cert_names(X509 *x, char names[][TLS_NAME_MAX + 1], size_t max)
{
    size_t n = 0;
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens) && n < max; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type != GEN_DNS)
            continue;
        const char *d = (const char *)ASN1_STRING_get0_data(g->d.dNSName);
        int len = ASN1_STRING_length(g->d.dNSName);
        if (len <= 0 || len > TLS_NAME_MAX || memchr(d, 0, (size_t)len))
            continue;
        char raw[TLS_NAME_MAX + 1];
        memcpy(raw, d, (size_t)len);
        raw[len] = '\0';
        if (name_normalize(raw, names[n], TLS_NAME_MAX + 1))
            n++;
    }
    bool had_sans = gens != NULL;
    GENERAL_NAMES_free(gens);
    if (!had_sans && max) {
        char cn[TLS_NAME_MAX + 1];
        if (X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, cn, sizeof cn) >
                0 &&
            name_normalize(cn, names[0], TLS_NAME_MAX + 1))
            n = 1;
    }
    return n;
}

/* ---- loading -------------------------------------------------------------------------------- */

/* A context serving the chain and key in pem; *leaf gets the first certificate (a reference). */
static SSL_CTX *ctx_from_pem(struct tls_store *s, const char *pem, size_t len, X509 **leaf,
                             char *err, size_t errsize)
{
    X509 *x = NULL;
    EVP_PKEY *key = NULL;
    STACK_OF(X509) *chain = NULL;
    if (tls__parse_pair(pem, len, pem, len, &x, &chain, &key, err, errsize) < 0)
        return NULL;
    SSL_CTX *ctx = ctx_new(s, err, errsize);
    if (!ctx)
        goto out;
    if (SSL_CTX_use_certificate(ctx, x) != 1 || SSL_CTX_set1_chain(ctx, chain) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        tls__set_err(err, errsize, "the certificate and key cannot be served together");
        SSL_CTX_free(ctx);
        ctx = NULL;
        goto out;
    }
    tls__ocsp_attach(ctx, x, chain);
    *leaf = x;
    x = NULL;
out:
    X509_free(x);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    ERR_clear_error(); /* this runs inside handshakes too (issued certificates) */
    return ctx;
}

/* Adds a certificate's names to certs (a name already there keeps its first certificate). */
static int certs_add(struct tls_store *s, struct tls_certs *c, const char *pem, size_t len,
                     bool default_cert, char *err, size_t errsize)
{
    X509 *leaf = NULL;
    SSL_CTX *ctx = ctx_from_pem(s, pem, len, &leaf, err, errsize);
    if (!ctx)
        return -EINVAL;
    char(*names)[TLS_NAME_MAX + 1] = xmalloc(64 * sizeof *names);
    size_t n = cert_names(leaf, names, 64);
    for (size_t i = 0; i < n; i++) {
        bool taken = false;
        for (size_t k = 0; k < c->n && !taken; k++)
            taken = !strcmp(c->v[k].name, names[i]);
        if (taken)
            continue;
        c->v = xrealloc(c->v, (c->n + 1) * sizeof *c->v);
        c->v[c->n].name = xstrdup(names[i]);
        SSL_CTX_up_ref(ctx);
        c->v[c->n].ctx = ctx;
        c->n++;
    }
    free(names);
    if (default_cert && !c->def) {
        SSL_CTX_up_ref(ctx);
        c->def = ctx;
    }
    c->count++;
    X509_free(leaf);
    SSL_CTX_free(ctx);
    return 0;
}

static void store_publish(struct tls_store *s, struct tls_certs *c)
{
    if (c->n)
        qsort(c->v, c->n, sizeof *c->v, entry_cmp);
    pthread_rwlock_wrlock(&s->lock);
    struct tls_certs *old = s->certs;
    s->certs = c;
    pthread_rwlock_unlock(&s->lock);
    certs_free(old); /* connections that picked one of its contexts hold their own reference */
}

/* A copy of the published certificates, to add one to. */
static struct tls_certs *certs_copy(struct tls_store *s)
{
    struct tls_certs *c = xcalloc(1, sizeof *c);
    pthread_rwlock_rdlock(&s->lock);
    c->v = xcalloc(s->certs->n + 1, sizeof *c->v);
    for (size_t i = 0; i < s->certs->n; i++) {
        c->v[i].name = xstrdup(s->certs->v[i].name);
        c->v[i].ctx = s->certs->v[i].ctx;
        SSL_CTX_up_ref(c->v[i].ctx);
    }
    c->n = s->certs->n;
    c->def = s->certs->def;
    if (c->def)
        SSL_CTX_up_ref(c->def);
    c->count = s->certs->count;
    pthread_rwlock_unlock(&s->lock);
    return c;
}

int tls_store_add_pem(struct tls_store *s, const char *pem, size_t len, bool default_cert,
                      char *err, size_t errsize)
{
    struct tls_certs *c = certs_copy(s);
    if (default_cert && c->def) {
        SSL_CTX_free(c->def);
        c->def = NULL;
    }
    int r = certs_add(s, c, pem, len, default_cert, err, errsize);
    if (r < 0) {
        certs_free(c);
        return r;
    }
    store_publish(s, c);
    return 0;
}

int tls_store_set_only_pem(struct tls_store *s, const char *pem, size_t len, char *err,
                           size_t errsize)
{
    struct tls_certs *c = xcalloc(1, sizeof *c);
    int r = certs_add(s, c, pem, len, true, err, errsize);
    if (r < 0) {
        certs_free(c);
        return r;
    }
    store_publish(s, c);
    return 0;
}

static int load_file(struct tls_store *s, struct tls_certs *c, const char *path, bool def,
                     char *err, size_t errsize)
{
    char *pem = NULL;
    size_t len = 0;
    int r = file_read(path, &pem, &len);
    if (r < 0) {
        tls__set_err(err, errsize, "cannot read %s: %s", path, skiff_strerror(r));
        return r;
    }
    char why[400] = "";
    r = len > 2 * TLS_PEM_MAX ? -EFBIG : certs_add(s, c, pem, len, def, why, sizeof why);
    OPENSSL_cleanse(pem, len);
    free(pem);
    if (r < 0)
        tls__set_err(err, errsize, "%s: %s", path, why[0] ? why : "the file is too large");
    return r;
}

static int name_sort(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int tls_store_load_dir(struct tls_store *s, const char *dir, char *err, size_t errsize)
{
    struct tls_certs *c = xcalloc(1, sizeof *c);
    char *path = xasprintf("%s/default.pem", dir);
    int r = load_file(s, c, path, true, err, errsize);
    free(path);
    if (r < 0 && r != -ENOENT)
        goto fail;
    char *domains = xasprintf("%s/domains", dir);
    struct dirent **list = NULL;
    int n = scandir(domains, &list, NULL, name_sort);
    for (int i = 0; i < n; i++) {
        if (r >= 0 || r == -ENOENT) {
            if (str_has_suffix(list[i]->d_name, ".pem") && list[i]->d_name[0] != '.') {
                path = xasprintf("%s/%s", domains, list[i]->d_name);
                r = load_file(s, c, path, false, err, errsize);
                free(path);
            }
        }
        free(list[i]);
    }
    free(list);
    free(domains);
    if (r < 0 && r != -ENOENT)
        goto fail;
    store_publish(s, c);
    return 0;
fail:
    certs_free(c);
    return r;
}

size_t tls_store_count(struct tls_store *s)
{
    pthread_rwlock_rdlock(&s->lock);
    size_t n = s->certs->count;
    pthread_rwlock_unlock(&s->lock);
    return n;
}

/* ---- certificates issued on first use ----------------------------------------------------------
 */

int tls_store_set_issuer(struct tls_store *s, const char *dir, const char *suffix, char *err,
                         size_t errsize)
{
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    if (tls__ca_load(dir, &cert, &key, err, errsize) < 0)
        return -EINVAL;
    pthread_rwlock_wrlock(&s->lock);
    X509_free(s->issuer_cert);
    EVP_PKEY_free(s->issuer_key);
    free(s->issuer_suffix);
    s->issuer_cert = cert;
    s->issuer_key = key;
    s->issuer_suffix = xasprintf(".%s", suffix);
    pthread_rwlock_unlock(&s->lock);
    return 0;
}

void tls_store_set_issue_filter(struct tls_store *s, bool (*allow)(void *ctx, const char *name),
                                void *ctx)
{
    pthread_rwlock_wrlock(&s->lock);
    s->issue_allow = allow;
    s->issue_ctx = ctx;
    pthread_rwlock_unlock(&s->lock);
}

static bool issuable(const struct tls_store *s, const char *name)
{
    if (!s->issuer_suffix || name[0] == '*')
        return false;
    size_t n = strlen(name), k = strlen(s->issuer_suffix);
    return n > k && !strcmp(name + n - k, s->issuer_suffix);
}

/* A context for a name under the issuer's suffix: the one made before, or a new one. */
static SSL_CTX *issued_get(struct tls_store *s, const char *name)
{
    pthread_rwlock_rdlock(&s->lock);
    SSL_CTX *ctx = entries_find(s->issued, s->issued_n, name);
    if (ctx)
        SSL_CTX_up_ref(ctx);
    pthread_rwlock_unlock(&s->lock);
    if (ctx)
        return ctx;
    if (s->issue_allow && !s->issue_allow(s->issue_ctx, name))
        return NULL; /* the default serves it */
    pthread_rwlock_wrlock(&s->lock);
    ctx = entries_find(s->issued, s->issued_n, name);
    if (!ctx && s->issuer_cert) {
        char *pem = NULL;
        size_t len = 0;
        const char *names[] = {name, NULL};
        if (tls__issue(s->issuer_cert, s->issuer_key, names, false, 90, &pem, &len, NULL, NULL,
                       0) == 0) {
            X509 *leaf = NULL;
            ctx = ctx_from_pem(s, pem, len, &leaf, NULL, 0);
            X509_free(leaf);
            OPENSSL_cleanse(pem, len);
            free(pem);
        }
        if (ctx) {
            if (s->issued_n == TLS_ISSUED_MAX) { /* bounded: forget them all and start over */
                for (size_t i = 0; i < s->issued_n; i++) {
                    free(s->issued[i].name);
                    SSL_CTX_free(s->issued[i].ctx);
                }
                s->issued_n = 0;
            }
            s->issued = xrealloc(s->issued, (s->issued_n + 1) * sizeof *s->issued);
            s->issued[s->issued_n].name = xstrdup(name);
            s->issued[s->issued_n].ctx = ctx;
            s->issued_n++;
            qsort(s->issued, s->issued_n, sizeof *s->issued, entry_cmp);
        }
    }
    if (ctx)
        SSL_CTX_up_ref(ctx);
    pthread_rwlock_unlock(&s->lock);
    return ctx;
}

/* ---- selection ---------------------------------------------------------------------------------
 */

/* The context for host (a reference the caller frees) and how it was found. */
static SSL_CTX *store_pick(struct tls_store *s, const char *host, int *how)
{
    char name[TLS_NAME_MAX + 2];
    bool valid = host && name_normalize(host, name, sizeof name) && name[0] != '*';
    SSL_CTX *ctx = NULL;
    *how = 0;
    pthread_rwlock_rdlock(&s->lock);
    const struct tls_certs *c = s->certs;
    if (valid && (ctx = entries_find(c->v, c->n, name)))
        *how = 1;
    /* under the issuer's suffix a wildcard would be refused by clients ("*.localhost") */
    bool issue = !ctx && valid && issuable(s, name);
    const char *dot = valid ? strchr(name, '.') : NULL;
    if (!ctx && !issue && dot && dot[1]) {
        char wild[TLS_NAME_MAX + 3];
        snprintf(wild, sizeof wild, "*%s", dot);
        if ((ctx = entries_find(c->v, c->n, wild)))
            *how = 2;
    }
    if (ctx)
        SSL_CTX_up_ref(ctx);
    pthread_rwlock_unlock(&s->lock);
    if (issue && (ctx = issued_get(s, name)))
        *how = 4;
    if (!ctx) {
        pthread_rwlock_rdlock(&s->lock);
        if ((ctx = s->certs->def)) {
            SSL_CTX_up_ref(ctx);
            *how = 3;
        }
        pthread_rwlock_unlock(&s->lock);
    }
    return ctx;
}

static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    struct tls_store *s = arg;
    int how;
    SSL_CTX *ctx = store_pick(s, SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name), &how);
    if (!ctx) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    if (ctx != SSL_get_SSL_CTX(ssl))
        SSL_set_SSL_CTX(ssl, ctx); /* takes its own reference */
    SSL_CTX_free(ctx);
    return SSL_TLSEXT_ERR_OK;
}

int tls_store_select(struct tls_store *s, const char *host, char *subject, size_t size)
{
    int how;
    SSL_CTX *ctx = store_pick(s, host, &how);
    if (size)
        subject[0] = '\0';
    if (!ctx)
        return 0;
    X509 *x = SSL_CTX_get0_certificate(ctx);
    if (x && size)
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, subject, (int)size);
    SSL_CTX_free(ctx);
    return how;
}
