/* Certificates: the checks a user's pair must pass, and the local CA. See tls.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/buf.h"
#include "common/util.h"
#include "tls/tls_internal.h"

static void cert_info_fill(X509 *x, struct tls_cert_info *info);

#define TLS_CA_DAYS 3650
#define TLS_LEAF_DAYS 397 /* what browsers accept for a server certificate */

int tls__parse_pair(const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                    X509 **leaf, STACK_OF(X509) * *chain, EVP_PKEY **key, char *err, size_t errsize)
{
    *leaf = NULL;
    *chain = NULL;
    *key = NULL;
    if (cert_len > TLS_PEM_MAX || key_len > TLS_PEM_MAX) {
        tls__set_err(err, errsize, "the %s is larger than %d KB",
                     cert_len > TLS_PEM_MAX ? "certificate file" : "key file", TLS_PEM_MAX / 1024);
        return -EFBIG;
    }
    BIO *b = BIO_new_mem_buf(cert_pem, (int)cert_len);
    *leaf = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    if (!*leaf) {
        BIO_free(b);
        tls__set_err(err, errsize,
                     "the certificate is not PEM (expected a \"-----BEGIN CERTIFICATE-----\" "
                     "block)");
        return -EINVAL;
    }
    *chain = sk_X509_new_null();
    X509 *more;
    while ((more = PEM_read_bio_X509(b, NULL, NULL, NULL)))
        sk_X509_push(*chain, more);
    ERR_clear_error(); /* the end of the chain */
    BIO_free(b);
    b = BIO_new_mem_buf(key_pem, (int)key_len);
    /* an empty passphrase callback: an encrypted key fails instead of prompting */
    *key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, (void *)"") : NULL;
    BIO_free(b);
    if (!*key) {
        tls__set_err(err, errsize,
                     "the private key is not an unencrypted PEM key (expected a \"-----BEGIN "
                     "PRIVATE KEY-----\" block)");
        goto fail;
    }
    if (X509_check_private_key(*leaf, *key) != 1) {
        ERR_clear_error();
        tls__set_err(err, errsize, "the private key does not match the certificate");
        goto fail;
    }
    return 0;
fail:
    X509_free(*leaf);
    sk_X509_pop_free(*chain, X509_free);
    EVP_PKEY_free(*key);
    *leaf = NULL;
    *chain = NULL;
    *key = NULL;
    return -EINVAL;
}

static int64_t asn1_time_unix(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

int tls_pair_check(const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                   const char *domain, struct tls_cert_info *info, char *err, size_t errsize)
{
    X509 *leaf;
    STACK_OF(X509) * chain;
    EVP_PKEY *key;
    int r =
        tls__parse_pair(cert_pem, cert_len, key_pem, key_len, &leaf, &chain, &key, err, errsize);
    if (r < 0)
        return r;
    int64_t now = time(NULL);
    int64_t not_after = asn1_time_unix(X509_get0_notAfter(leaf));
    int64_t not_before = asn1_time_unix(X509_get0_notBefore(leaf));
    if (not_after <= now) {
        tls__set_err(err, errsize, "the certificate expired; give one that is valid now");
        r = -EKEYEXPIRED;
    } else if (not_before > now) {
        tls__set_err(err, errsize, "the certificate is not valid yet");
        r = -EINVAL;
    } else if (domain && X509_check_host(leaf, domain, 0, 0, NULL) != 1) {
        tls__set_err(err, errsize,
                     "the certificate's names do not cover %s (it needs a subject alternative "
                     "name DNS:%s or a wildcard for it)",
                     domain, domain);
        r = -EINVAL;
    }
    if (r == 0 && info)
        cert_info_fill(leaf, info);
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    /* what OpenSSL queued on the way (a name check, a time) must not reach a later
     * SSL_get_error on this thread, where it would read as a failed connection */
    ERR_clear_error();
    return r;
}

static void cert_info_fill(X509 *x, struct tls_cert_info *info)
{
    memset(info, 0, sizeof *info);
    X509_NAME_oneline(X509_get_subject_name(x), info->subject, sizeof info->subject);
    X509_NAME_oneline(X509_get_issuer_name(x), info->issuer, sizeof info->issuer);
    info->not_after = asn1_time_unix(X509_get0_notAfter(x));
    info->not_before = asn1_time_unix(X509_get0_notBefore(x));
}

int tls_cert_file_info(const char *path, struct tls_cert_info *info)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    ERR_clear_error();
    if (!x)
        return -EINVAL;
    cert_info_fill(x, info);
    X509_free(x);
    return 0;
}

int tls_cert_pem_info(const char *pem, size_t len, struct tls_cert_info *info)
{
    if (len > TLS_PEM_MAX)
        return -E2BIG;
    BIO *b = BIO_new_mem_buf(pem, (int)len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    ERR_clear_error();
    if (!x)
        return -EINVAL;
    cert_info_fill(x, info);
    X509_free(x);
    return 0;
}

int tls_pem_pair_split(const char *pem, size_t len, char **cert_pem, char **key_pem)
{
    const char *end = pem + len;
    const char *key = NULL;
    for (const char *p = pem; (p = memmem(p, (size_t)(end - p), "-----BEGIN ", 11)); p += 11) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol ? eol : end;
        if (memmem(p, (size_t)(line_end - p), "PRIVATE KEY-----", 16)) {
            key = p;
            break;
        }
    }
    if (!key || !memmem(pem, (size_t)(key - pem), "-----BEGIN CERTIFICATE-----", 27))
        return -EINVAL;
    const char *key_end = memmem(key, (size_t)(end - key), "-----END ", 9);
    const char *eol = key_end ? memchr(key_end, '\n', (size_t)(end - key_end)) : NULL;
    if (!key_end)
        return -EINVAL;
    key_end = eol ? eol + 1 : end;
    *cert_pem = xstrndup(pem, (size_t)(key - pem));
    *key_pem = xstrndup(key, (size_t)(key_end - key));
    return 0;
}

/* ---- making certificates ----------------------------------------------------------------------
 */

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer ? issuer : x, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ext)
        return -1;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : -1;
}

/* "DNS:a,DNS:b,IP:127.0.0.1" for the names. */
static void san_value(const char *const *names, struct buf *out)
{
    for (size_t i = 0; names[i]; i++) {
        unsigned char ip[16];
        bool is_ip =
            inet_pton(AF_INET, names[i], ip) == 1 || inet_pton(AF_INET6, names[i], ip) == 1;
        buf_printf(out, "%s%s:%s", i ? "," : "", is_ip ? "IP" : "DNS", names[i]);
    }
}

int tls__issue(X509 *issuer, EVP_PKEY *issuer_key, const char *const *names, bool ca, int days,
               char **pem, size_t *len, size_t *key_off, char *err, size_t errsize)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    BIO *out = BIO_new(BIO_s_mem());
    struct buf san = {0};
    int r = -EINVAL;
    if (!key || !x || !out) {
        tls__set_err(err, errsize, "cannot make a key");
        goto done;
    }
    unsigned char serial[16];
    RAND_bytes(serial, sizeof serial);
    serial[0] &= 0x7f; /* positive */
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_set_version(x, X509_VERSION_3);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600); /* a clock a little behind still accepts it */
    X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL);
    X509_set_pubkey(x, key);
    X509_NAME *subject = X509_get_subject_name(x);
    char cn[128];
    if (ca) {
        char host[64] = "";
        gethostname(host, sizeof host - 1);
        snprintf(cn, sizeof cn, "Skiff local CA (%s)", host);
    } else {
        snprintf(cn, sizeof cn, "%s", names[0]);
    }
    X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_UTF8, (const unsigned char *)"Skiff", -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : subject);
    int bad = add_ext(x, issuer, NID_subject_key_identifier, "hash");
    if (ca) {
        bad |= add_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
        bad |= add_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        san_value(names, &san);
        bad |= add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE");
        bad |= add_ext(x, issuer, NID_key_usage, "critical,digitalSignature");
        bad |= add_ext(x, issuer, NID_ext_key_usage, "serverAuth");
        bad |= add_ext(x, issuer, NID_subject_alt_name, san.data);
        if (issuer)
            bad |= add_ext(x, issuer, NID_authority_key_identifier, "keyid");
    }
    if (bad || !X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256())) {
        tls__set_err(err, errsize, "cannot sign the certificate");
        goto done;
    }
    if (PEM_write_bio_X509(out, x) != 1)
        goto done;
    size_t off = (size_t)BIO_pending(out);
    if (PEM_write_bio_PrivateKey(out, key, NULL, NULL, 0, NULL, NULL) != 1)
        goto done;
    char *data;
    long n = BIO_get_mem_data(out, &data);
    *pem = xmalloc((size_t)n + 1);
    memcpy(*pem, data, (size_t)n);
    (*pem)[n] = '\0';
    *len = (size_t)n;
    if (key_off)
        *key_off = off;
    r = 0;
done:
    if (r < 0 && err && !err[0])
        tls__set_err(err, errsize, "cannot write the certificate");
    buf_free(&san);
    BIO_free(out);
    X509_free(x);
    EVP_PKEY_free(key);
    return r;
}

int tls__ca_load(const char *dir, X509 **cert, EVP_PKEY **key, char *err, size_t errsize)
{
    char *cert_path = xasprintf("%s/ca.pem", dir), *key_path = xasprintf("%s/ca.key", dir);
    char *c = NULL, *k = NULL;
    size_t clen = 0, klen = 0;
    STACK_OF(X509) *chain = NULL;
    int r = file_read(cert_path, &c, &clen);
    if (r == 0)
        r = file_read(key_path, &k, &klen);
    if (r < 0)
        tls__set_err(err, errsize, "cannot read the local CA in %s: %s", dir, skiff_strerror(r));
    else
        r = tls__parse_pair(c, clen, k, klen, cert, &chain, key, err, errsize);
    sk_X509_pop_free(chain, X509_free);
    if (k)
        OPENSSL_cleanse(k, klen);
    free(c);
    free(k);
    free(cert_path);
    free(key_path);
    return r;
}

static bool file_exists(const char *dir, const char *name)
{
    char *path = xasprintf("%s/%s", dir, name);
    bool yes = access(path, F_OK) == 0;
    free(path);
    return yes;
}

static int write_file(const char *dir, const char *name, const char *data, size_t len,
                      unsigned mode, char *err, size_t errsize)
{
    char *path = xasprintf("%s/%s", dir, name);
    int r = file_write_atomic(path, data, len, mode);
    if (r == 0)
        r = chmod(path, mode) < 0 ? -errno : 0; /* whatever the umask said */
    if (r < 0)
        tls__set_err(err, errsize, "cannot write %s: %s", path, skiff_strerror(r));
    free(path);
    return r;
}

int tls_local_ca_ensure(const char *dir, bool *created, char *err, size_t errsize)
{
    *created = false;
    if (mkdir_p(dir, 0700) < 0 || chmod(dir, 0700) < 0) {
        tls__set_err(err, errsize, "cannot make %s: %s", dir, skiff_strerror(-errno));
        return -errno;
    }
    char *domains = xasprintf("%s/domains", dir);
    int r = mkdir_p(domains, 0700);
    free(domains);
    if (r < 0) {
        tls__set_err(err, errsize, "cannot make %s/domains", dir);
        return r;
    }
    if (!file_exists(dir, "ca.pem") || !file_exists(dir, "ca.key")) {
        char *pem = NULL;
        size_t len, key_off;
        const char *none[] = {NULL};
        r = tls__issue(NULL, NULL, none, true, TLS_CA_DAYS, &pem, &len, &key_off, err, errsize);
        if (r == 0)
            r = write_file(dir, "ca.key", pem + key_off, len - key_off, 0600, err, errsize);
        if (r == 0)
            r = write_file(dir, "ca.pem", pem, key_off, 0644, err, errsize);
        if (pem)
            OPENSSL_cleanse(pem, len);
        free(pem);
        if (r < 0)
            return r;
        *created = true;
        char *old = xasprintf("%s/default.pem", dir); /* signed by a CA that is gone */
        unlink(old);
        free(old);
    }
    if (file_exists(dir, "default.pem"))
        return 0;
    X509 *ca;
    EVP_PKEY *ca_key;
    if ((r = tls__ca_load(dir, &ca, &ca_key, err, errsize)) < 0)
        return r;
    const char *names[] = {"localhost", "*.localhost", "127.0.0.1", "::1", NULL};
    char *pem = NULL;
    size_t len;
    r = tls__issue(ca, ca_key, names, false, TLS_LEAF_DAYS, &pem, &len, NULL, err, errsize);
    if (r == 0)
        r = write_file(dir, "default.pem", pem, len, 0600, err, errsize);
    if (pem)
        OPENSSL_cleanse(pem, len);
    free(pem);
    X509_free(ca);
    EVP_PKEY_free(ca_key);
    if (r == 0)
        *created = true;
    return r;
}
