/* OCSP stapling: see tls.h (tls_store_ocsp_start) and README.md.
 *
 * A context whose leaf names an OCSP responder (Authority Information Access) carries a
 * struct tls_ocsp (ex_data). One thread per store fetches its response with libcurl, checks
 * it against the issuer, and keeps it until its nextUpdate; handshakes copy what is kept, under
 * a mutex held for a memcpy, and never wait for the network. */
#include <curl/curl.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ocsp.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "tls/tls_internal.h"

#define TLS_OCSP_RESPONSE_MAX (64 * 1024)
#define TLS_OCSP_TIMEOUT_S 10L
#define TLS_OCSP_MIN_REFRESH_S 5
#define TLS_OCSP_NO_NEXT_UPDATE_S 3600 /* a response without nextUpdate: fetched again hourly */

struct tls_ocsp {
    pthread_mutex_t lock;
    char *url;
    X509 *leaf, *issuer;
    unsigned char *der; /* the response to staple; NULL when none is valid */
    size_t len;
    time_t expires;    /* its nextUpdate */
    time_t next_fetch; /* fetcher thread only */
};

static int tls_ocsp_index = -1;
static pthread_once_t tls_ocsp_once = PTHREAD_ONCE_INIT;

static void tls_ocsp__free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                           void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    struct tls_ocsp *o = ptr;
    if (!o)
        return;
    pthread_mutex_destroy(&o->lock);
    free(o->url);
    X509_free(o->leaf);
    X509_free(o->issuer);
    OPENSSL_free(o->der);
    free(o);
}

static void tls_ocsp__init(void)
{
    tls_ocsp_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tls_ocsp__free);
}

static struct tls_ocsp *tls_ocsp__of(SSL_CTX *ctx)
{
    pthread_once(&tls_ocsp_once, tls_ocsp__init);
    return tls_ocsp_index < 0 ? NULL : SSL_CTX_get_ex_data(ctx, tls_ocsp_index);
}

/* Handshakes: the kept response when it is still valid, else none (never an error). */
static int tls_ocsp__status_cb(SSL *ssl, void *arg)
{
    (void)arg;
    struct tls_ocsp *o = tls_ocsp__of(SSL_get_SSL_CTX(ssl));
    if (!o)
        return SSL_TLSEXT_ERR_NOACK;
    unsigned char *copy = NULL;
    size_t len = 0;
    pthread_mutex_lock(&o->lock);
    if (o->der && time(NULL) < o->expires && (copy = OPENSSL_malloc(o->len))) {
        memcpy(copy, o->der, o->len);
        len = o->len;
    }
    pthread_mutex_unlock(&o->lock);
    if (!copy)
        return SSL_TLSEXT_ERR_NOACK;
    if (SSL_set_tlsext_status_ocsp_resp(ssl, copy, (long)len) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

void tls__ocsp_attach(SSL_CTX *ctx, X509 *leaf, STACK_OF(X509) * chain)
{
    STACK_OF(OPENSSL_STRING) *urls = X509_get1_ocsp(leaf);
    const char *url =
        urls && sk_OPENSSL_STRING_num(urls) > 0 ? sk_OPENSSL_STRING_value(urls, 0) : NULL;
    X509 *issuer = NULL;
    for (int i = 0; url && chain && i < sk_X509_num(chain) && !issuer; i++)
        if (X509_check_issued(sk_X509_value(chain, i), leaf) == X509_V_OK)
            issuer = sk_X509_value(chain, i);
    if (url && !issuer)
        log_warning("OCSP: a certificate names a responder (%s) but its issuer is not in its "
                    "chain (put the issuing CA's certificate after it): no stapling for it",
                    url);
    if (url && issuer && (str_has_prefix(url, "http://") || str_has_prefix(url, "https://")) &&
        tls_ocsp__of(ctx) == NULL && tls_ocsp_index >= 0) {
        struct tls_ocsp *o = xcalloc(1, sizeof *o);
        pthread_mutex_init(&o->lock, NULL);
        o->url = xstrdup(url);
        X509_up_ref(leaf);
        o->leaf = leaf;
        X509_up_ref(issuer);
        o->issuer = issuer;
        if (SSL_CTX_set_ex_data(ctx, tls_ocsp_index, o) == 1)
            SSL_CTX_set_tlsext_status_cb(ctx, tls_ocsp__status_cb);
        else
            tls_ocsp__free(NULL, o, NULL, 0, 0, NULL);
    }
    X509_email_free(urls);
}

/* ---- fetching ---------------------------------------------------------------------------- */

static size_t tls_ocsp__body(char *data, size_t size, size_t n, void *arg)
{
    struct buf *b = arg;
    if (b->len + size * n > TLS_OCSP_RESPONSE_MAX)
        return 0;
    buf_append(b, data, size * n);
    return size * n;
}

static time_t tls_ocsp__time(const ASN1_GENERALIZEDTIME *t)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return timegm(&tm);
}

/* POSTs the request to the responder: the response's DER in out, or <0 with why. */
static int tls_ocsp__post(const char *url, const unsigned char *req, size_t req_len,
                          struct buf *out, char *why, size_t whysize)
{
    CURL *curl = curl_easy_init();
    if (!curl) {
        snprintf(why, whysize, "out of memory");
        return -ENOMEM;
    }
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/ocsp-request");
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, (const char *)req);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)req_len);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, tls_ocsp__body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, TLS_OCSP_TIMEOUT_S);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode cc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    if (cc != CURLE_OK) {
        snprintf(why, whysize, "%s", curl_easy_strerror(cc));
        return -EIO;
    }
    if (status != 200) {
        snprintf(why, whysize, "the responder answered HTTP %ld", status);
        return -EIO;
    }
    return 0;
}

/* Fetches and checks one response: 0 with it kept (and when to fetch again), <0 with why. */
static int tls_ocsp__fetch(struct tls_ocsp *o, time_t now, char *why, size_t whysize)
{
    int r = -EINVAL;
    OCSP_REQUEST *req = OCSP_REQUEST_new();
    OCSP_CERTID *id = OCSP_cert_to_id(NULL, o->leaf, o->issuer);
    OCSP_CERTID *id_copy = id ? OCSP_CERTID_dup(id) : NULL;
    unsigned char *req_der = NULL;
    OCSP_RESPONSE *resp = NULL;
    OCSP_BASICRESP *basic = NULL;
    X509_STORE *store = X509_STORE_new();
    STACK_OF(X509) *certs = sk_X509_new_null();
    struct buf body = {0};
    int req_len;
    if (!req || !id_copy || !store || !certs || !OCSP_request_add0_id(req, id_copy)) {
        snprintf(why, whysize, "cannot make the request");
        goto out;
    }
    id_copy = NULL;
    if ((req_len = i2d_OCSP_REQUEST(req, &req_der)) <= 0) {
        snprintf(why, whysize, "cannot encode the request");
        goto out;
    }
    if ((r = tls_ocsp__post(o->url, req_der, (size_t)req_len, &body, why, whysize)) < 0)
        goto out;
    r = -EINVAL;
    const unsigned char *p = (const unsigned char *)body.data;
    if (!body.len || !(resp = d2i_OCSP_RESPONSE(NULL, &p, (long)body.len)) ||
        p != (const unsigned char *)body.data + body.len) {
        snprintf(why, whysize, "the answer is not an OCSP response");
        goto out;
    }
    if (OCSP_response_status(resp) != OCSP_RESPONSE_STATUS_SUCCESSFUL ||
        !(basic = OCSP_response_get1_basic(resp))) {
        snprintf(why, whysize, "the responder refused (%s)",
                 OCSP_response_status_str(OCSP_response_status(resp)));
        goto out;
    }
    /* signed by the issuer, or by a responder the issuer delegated to */
    X509_STORE_add_cert(store, o->issuer);
    sk_X509_push(certs, o->issuer);
    if (OCSP_basic_verify(basic, certs, store, OCSP_TRUSTOTHER) <= 0) {
        snprintf(why, whysize, "its signature does not verify against the issuer");
        goto out;
    }
    int status = -1, reason = 0;
    ASN1_GENERALIZEDTIME *revoked = NULL, *this_upd = NULL, *next_upd = NULL;
    if (!OCSP_resp_find_status(basic, id, &status, &reason, &revoked, &this_upd, &next_upd) ||
        status == V_OCSP_CERTSTATUS_UNKNOWN) {
        snprintf(why, whysize, "it says nothing of this certificate");
        goto out;
    }
    if (!OCSP_check_validity(this_upd, next_upd, 300, -1)) {
        snprintf(why, whysize, "it is not valid now (thisUpdate/nextUpdate)");
        goto out;
    }
    time_t next = next_upd ? tls_ocsp__time(next_upd) : now + TLS_OCSP_NO_NEXT_UPDATE_S;
    unsigned char *der = OPENSSL_memdup(body.data, body.len);
    if (!der || next <= now) {
        OPENSSL_free(der);
        snprintf(why, whysize, "it expires at once");
        goto out;
    }
    pthread_mutex_lock(&o->lock);
    OPENSSL_free(o->der);
    o->der = der;
    o->len = body.len;
    o->expires = next;
    pthread_mutex_unlock(&o->lock);
    /* fetched again halfway to its nextUpdate, so a responder down for a while costs nothing */
    time_t wait = (next - now) / 2;
    o->next_fetch = now + (wait < TLS_OCSP_MIN_REFRESH_S ? TLS_OCSP_MIN_REFRESH_S : wait);
    if (status == V_OCSP_CERTSTATUS_REVOKED)
        log_warning("OCSP: %s says the certificate is revoked", o->url);
    r = 0;
out:
    ERR_clear_error();
    buf_free(&body);
    OCSP_BASICRESP_free(basic);
    OCSP_RESPONSE_free(resp);
    OPENSSL_free(req_der);
    OCSP_CERTID_free(id_copy);
    OCSP_CERTID_free(id);
    OCSP_REQUEST_free(req);
    X509_STORE_free(store);
    sk_X509_free(certs);
    return r;
}

struct tls_ocsp_fetcher {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stop;
    int retry_s;
    struct tls_store *store;
};

static void tls_ocsp__fetch_due(struct tls_ocsp_fetcher *f)
{
    SSL_CTX **ctxs = NULL;
    size_t n = tls__store_contexts(f->store, &ctxs);
    for (size_t i = 0; i < n; i++) {
        struct tls_ocsp *o = tls_ocsp__of(ctxs[i]);
        time_t now = time(NULL);
        if (o && o->next_fetch <= now) {
            char why[256] = "";
            if (tls_ocsp__fetch(o, now, why, sizeof why) < 0) {
                o->next_fetch = now + f->retry_s;
                log_warning("OCSP: no response from %s to staple (%s); handshakes go on without "
                            "one, trying again in %d s",
                            o->url, why, f->retry_s);
            } else {
                char until[32];
                struct tm tm;
                strftime(until, sizeof until, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&o->expires, &tm));
                log_info("OCSP: a response from %s is stapled until %s", o->url, until);
            }
        }
        SSL_CTX_free(ctxs[i]);
    }
    free(ctxs);
}

static void *tls_ocsp__thread(void *arg)
{
    struct tls_ocsp_fetcher *f = arg;
    pthread_mutex_lock(&f->lock);
    while (!f->stop) {
        pthread_mutex_unlock(&f->lock);
        tls_ocsp__fetch_due(f);
        pthread_mutex_lock(&f->lock);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        if (!f->stop)
            pthread_cond_timedwait(&f->wake, &f->lock, &until);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

struct tls_ocsp_fetcher *tls__ocsp_fetcher_start(struct tls_store *s, int retry_s, char *err,
                                                 size_t errsize)
{
    pthread_once(&tls_ocsp_once, tls_ocsp__init);
    struct tls_ocsp_fetcher *f = xcalloc(1, sizeof *f);
    f->store = s;
    f->retry_s = retry_s > 0 ? retry_s : 60;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->wake, NULL);
    int r = pthread_create(&f->thread, NULL, tls_ocsp__thread, f);
    if (r != 0) {
        tls__set_err(err, errsize, "cannot start the OCSP thread: %s", skiff_strerror(-r));
        pthread_mutex_destroy(&f->lock);
        pthread_cond_destroy(&f->wake);
        free(f);
        return NULL;
    }
    return f;
}

void tls__ocsp_fetcher_stop(struct tls_ocsp_fetcher *f)
{
    if (!f)
        return;
    pthread_mutex_lock(&f->lock);
    f->stop = true;
    pthread_cond_signal(&f->wake);
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->thread, NULL);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->wake);
    free(f);
}
