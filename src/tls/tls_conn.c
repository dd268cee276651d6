/* A TLS connection over memory BIOs: the caller owns the socket. See tls.h. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "tls/tls_internal.h"

struct tls_conn {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    bool established;
};

struct tls_conn *tls_conn_new(struct tls_store *s)
{
    SSL_CTX *initial = tls__store_initial(s);
    SSL *ssl = SSL_new(initial);
    SSL_CTX_free(initial);
    if (!ssl)
        return NULL;
    struct tls_conn *c = xcalloc(1, sizeof *c);
    c->ssl = ssl;
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(c->rbio, -1); /* empty: "retry", not end of stream */
    SSL_set_bio(ssl, c->rbio, c->wbio);
    SSL_set_accept_state(ssl);
    return c;
}

void tls_conn_free(struct tls_conn *c)
{
    if (!c)
        return;
    SSL_free(c->ssl);
    free(c);
}

void tls_conn_feed(struct tls_conn *c, const char *data, size_t len)
{
    if (len)
        BIO_write(c->rbio, data, (int)len);
}

int tls_conn_handshake(struct tls_conn *c, char *err, size_t errsize)
{
    if (c->established)
        return 1;
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->established = true;
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    tls__set_err(err, errsize, "TLS handshake failed");
    return -1;
}

bool tls_conn_established(const struct tls_conn *c)
{
    return c->established;
}

long tls_conn_read(struct tls_conn *c, char *out, size_t cap)
{
    size_t n = 0;
    ERR_clear_error();
    if (SSL_read_ex(c->ssl, out, cap, &n) == 1)
        return (long)n;
    int e = SSL_get_error(c->ssl, 0);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    return e == SSL_ERROR_ZERO_RETURN ? -1 : -2;
}

int tls_conn_write(struct tls_conn *c, const char *data, size_t len)
{
    size_t n = 0;
    if (len == 0)
        return 0;
    ERR_clear_error();
    if (SSL_write_ex(c->ssl, data, len, &n) != 1 || n != len) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

void tls_conn_close_notify(struct tls_conn *c)
{
    if (c->established) {
        SSL_shutdown(c->ssl);
        ERR_clear_error();
    }
}

size_t tls_conn_output(struct tls_conn *c, const char **data)
{
    char *p = NULL;
    long n = BIO_get_mem_data(c->wbio, &p);
    *data = p;
    return n > 0 ? (size_t)n : 0;
}

void tls_conn_output_consumed(struct tls_conn *c, size_t n)
{
    char sink[4096];
    if (n >= (size_t)BIO_pending(c->wbio)) {
        (void)BIO_reset(c->wbio);
        return;
    }
    while (n > 0) {
        int k = BIO_read(c->wbio, sink, (int)(n < sizeof sink ? n : sizeof sink));
        if (k <= 0)
            break;
        n -= (size_t)k;
    }
}

const char *tls_conn_alpn(const struct tls_conn *c, size_t *len)
{
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(c->ssl, &p, &n);
    *len = n;
    return p ? (const char *)p : "";
}

const char *tls_conn_server_name(const struct tls_conn *c)
{
    return SSL_get_servername(c->ssl, TLSEXT_NAMETYPE_host_name);
}

bool tls_conn_resumed(const struct tls_conn *c)
{
    return SSL_session_reused(c->ssl) == 1;
}

size_t tls_conn_client_cert_b64(struct tls_conn *c, char *out, size_t cap)
{
    X509 *x = SSL_get0_peer_certificate(c->ssl);
    if (!x || SSL_get_verify_result(c->ssl) != X509_V_OK)
        return 0;
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    if (n <= 0)
        return 0;
    size_t need = 4 * (((size_t)n + 2) / 3) + 1;
    size_t len = 0;
    if (need <= cap)
        len = (size_t)EVP_EncodeBlock((unsigned char *)out, der, n);
    OPENSSL_free(der);
    return len;
}
