/* A TLS connection over in-memory BIOs: the caller owns the socket. See tls.h. */
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "tls/tls_internal.h"

/* Bytes between the socket and OpenSSL, from off to len. OpenSSL's memory BIO zeroes what it
 * grows into and all of its buffer at each reset: two more passes over every byte of a 64 KB
 * response (5-6% of the router's CPU over HTTPS, bench/router/README.md). These are plain
 * buffers that keep their capacity. */
struct tls_bytes {
    char *data;
    size_t off, len, cap;
};

struct tls_conn {
    SSL *ssl;
    struct tls_bytes in, out; /* ciphertext fed and not yet read; records not yet sent */
    bool established;
};

/* Past this, a buffer emptied is freed rather than kept with the connection. */
#define TLS_BYTES_KEEP (256 * 1024)

/* One output buffer per thread, lent to the connection that encrypts and taken back once its
 * output is consumed: a caller that sends (or copies) what tls_conn_output holds after each
 * write, as the router does, uses the same memory for every connection of its thread, still
 * in the cache from the last one, instead of one cold buffer per connection (256 of 128 KB
 * at 256 connections with 64 KB responses: 32 MB written through the cache for nothing). A
 * connection whose output is not consumed keeps the buffer, and the next one makes its own. */
struct tls_spare {
    char *data;
    size_t cap;
};
static pthread_key_t spare_key;

static void spare_free(void *p)
{
    struct tls_spare *sp = p;
    free(sp->data);
    free(sp);
}

static struct tls_spare *spare_get(void)
{
    struct tls_spare *sp = pthread_getspecific(spare_key);
    if (!sp) {
        sp = xcalloc(1, sizeof *sp);
        pthread_setspecific(spare_key, sp);
    }
    return sp;
}

/* The thread's buffer for an output that has none. */
static void out_borrow(struct tls_bytes *b)
{
    struct tls_spare *sp = spare_get();
    if (b->data || !sp->data)
        return;
    b->data = sp->data;
    b->cap = sp->cap;
    sp->data = NULL;
    sp->cap = 0;
}

/* An empty output's buffer back to the thread (freed when the thread has one already). */
static void out_return(struct tls_bytes *b)
{
    if (!b->data || b->len != b->off)
        return;
    struct tls_spare *sp = spare_get();
    if (sp->data)
        free(b->data);
    else {
        sp->data = b->data;
        sp->cap = b->cap;
    }
    b->data = NULL;
    b->cap = 0;
    b->off = b->len = 0;
}

static void bytes_append(struct tls_bytes *b, const char *p, size_t n)
{
    if (b->off && b->len + n > b->cap) { /* the consumed front makes room first */
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 16 * 1024;
        while (cap < b->len + n)
            cap *= 2;
        b->data = xrealloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void bytes_consume(struct tls_bytes *b, size_t n)
{
    b->off += n;
    if (b->off < b->len)
        return;
    b->off = b->len = 0;
    if (b->cap > TLS_BYTES_KEEP) {
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static int bio_write(BIO *b, const char *data, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    if (len <= 0)
        return 0;
    out_borrow(&c->out);
    bytes_append(&c->out, data, (size_t)len);
    return len;
}

static int bio_read(BIO *b, char *data, int len)
{
    struct tls_conn *c = BIO_get_data(b);
    size_t avail = c->in.len - c->in.off;
    BIO_clear_retry_flags(b);
    if (avail == 0) { /* "retry": more comes with the next read from the socket */
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = avail < (size_t)len ? avail : (size_t)len;
    memcpy(data, c->in.data + c->in.off, n);
    bytes_consume(&c->in, n);
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct tls_conn *c = BIO_get_data(b);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_PENDING:
        return (long)(c->in.len - c->in.off);
    case BIO_CTRL_WPENDING:
        return (long)(c->out.len - c->out.off);
    default:
        return 0;
    }
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_method_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void)
{
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "skiff tls bytes");
    if (!bio_method || !BIO_meth_set_create(bio_method, bio_create) ||
        !BIO_meth_set_write(bio_method, bio_write) || !BIO_meth_set_read(bio_method, bio_read) ||
        !BIO_meth_set_ctrl(bio_method, bio_ctrl) || pthread_key_create(&spare_key, spare_free))
        abort(); /* out of memory */
}

struct tls_conn *tls_conn_new(struct tls_store *s)
{
    pthread_once(&bio_method_once, bio_method_init);
    SSL_CTX *initial = tls__store_initial(s);
    SSL *ssl = SSL_new(initial);
    SSL_CTX_free(initial);
    if (!ssl)
        return NULL;
    BIO *bio = BIO_new(bio_method); /* one BIO both ways: reads take in, writes fill out */
    if (!bio) {
        SSL_free(ssl);
        return NULL;
    }
    struct tls_conn *c = xcalloc(1, sizeof *c);
    c->ssl = ssl;
    BIO_set_data(bio, c);
    SSL_set_bio(ssl, bio, bio);
    SSL_set_accept_state(ssl);
    return c;
}

void tls_conn_free(struct tls_conn *c)
{
    if (!c)
        return;
    SSL_free(c->ssl);
    free(c->in.data);
    c->out.off = c->out.len; /* what was not sent is dropped */
    out_return(&c->out);
    free(c);
}

void tls_conn_feed(struct tls_conn *c, const char *data, size_t len)
{
    if (len)
        bytes_append(&c->in, data, len);
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
    *data = c->out.data ? c->out.data + c->out.off : "";
    return c->out.len - c->out.off;
}

void tls_conn_output_consumed(struct tls_conn *c, size_t n)
{
    size_t pending = c->out.len - c->out.off;
    bytes_consume(&c->out, n < pending ? n : pending);
    out_return(&c->out);
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
