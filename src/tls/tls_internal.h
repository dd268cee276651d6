/* What the files of src/tls/ share. Nothing outside src/tls/ includes this. */
#ifndef SKIFF_TLS_INTERNAL_H
#define SKIFF_TLS_INTERNAL_H

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdarg.h>

#include "tls/tls.h"

/* Writes a message into err, followed by OpenSSL's last error when there is one (the error
 * queue is then cleared). */
void tls__set_err(char *err, size_t errsize, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Parses a certificate chain (the first certificate is the leaf, the others its chain) and a
 * private key from PEM text, each within TLS_PEM_MAX; checks that the key matches the leaf. */
int tls__parse_pair(const char *cert_pem, size_t cert_len, const char *key_pem, size_t key_len,
                    X509 **leaf, STACK_OF(X509) * *chain, EVP_PKEY **key, char *err,
                    size_t errsize);

/* Loads DIR/ca.pem and DIR/ca.key. */
int tls__ca_load(const char *dir, X509 **cert, EVP_PKEY **key, char *err, size_t errsize);

/* Makes a new key and a certificate for names (DNS names, or IP addresses) signed by the issuer
 * (NULL: self-signed, then `ca` makes it a CA), valid for `days`; *pem gets the certificate
 * followed by its key, and *key_off (may be NULL) where the key begins. */
int tls__issue(X509 *issuer, EVP_PKEY *issuer_key, const char *const *names, bool ca, int days,
               char **pem, size_t *len, size_t *key_off, char *err, size_t errsize);

/* The context a connection starts with (a reference the caller frees), before SNI picks a
 * certificate: the default's, or one without a certificate. */
SSL_CTX *tls__store_initial(struct tls_store *s);

/* Every certificate context the store serves now (the default and each name's, once each,
 * issued ones left out), each a reference the caller frees, in a malloc'ed array. */
size_t tls__store_contexts(struct tls_store *s, SSL_CTX ***out);

/* OCSP (tls_ocsp.c): gives ctx a place for a stapled response and the status callback when
 * the leaf names an OCSP responder and its issuer is in the chain; otherwise nothing. */
void tls__ocsp_attach(SSL_CTX *ctx, X509 *leaf, STACK_OF(X509) * chain);
struct tls_ocsp_fetcher;
struct tls_ocsp_fetcher *tls__ocsp_fetcher_start(struct tls_store *s, int retry_s, char *err,
                                                 size_t errsize);
void tls__ocsp_fetcher_stop(struct tls_ocsp_fetcher *f);

#endif
