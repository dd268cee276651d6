/* Unit tests for tls: SNI selection (exact, wildcard, default, issued), the checks a
 * certificate and key pass, the local CA's files, and a handshake through memory BIOs with a
 * real OpenSSL client (versions, ALPN, renegotiation refused). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util.h"
#include "tls/tls.h"
#include "tls/tls_internal.h"

struct pair {
    char *pem; /* certificate then key */
    size_t len, key_off;
};

static X509 *ca_cert;
static EVP_PKEY *ca_key;
static char ca_dir[] = "/tmp/skiff-test-tls-XXXXXX";

static struct pair issue(const char *const *names, int days)
{
    struct pair p = {0};
    char err[256] = "";
    if (tls__issue(ca_cert, ca_key, names, false, days, &p.pem, &p.len, &p.key_off, err,
                   sizeof err) < 0)
        fail_msg("issue: %s", err);
    return p;
}

static int setup(void **state)
{
    if (!mkdtemp(ca_dir))
        return -1;
    bool created;
    char err[256] = "";
    if (tls_local_ca_ensure(ca_dir, &created, err, sizeof err) < 0 || !created) {
        fprintf(stderr, "local CA: %s\n", err);
        return -1;
    }
    return tls__ca_load(ca_dir, &ca_cert, &ca_key, err, sizeof err) < 0 ? -1 : 0;
}

static int teardown(void **state)
{
    X509_free(ca_cert);
    EVP_PKEY_free(ca_key);
    rm_rf(ca_dir);
    return 0;
}

static struct tls_store *store_with(const char *const *a, const char *const *b, bool def)
{
    struct tls_store *s;
    char err[256] = "";
    assert_int_equal(tls_store_new(NULL, &s, err, sizeof err), 0);
    if (def) {
        const char *names[] = {"default.test", NULL};
        struct pair p = issue(names, 30);
        assert_int_equal(tls_store_add_pem(s, p.pem, p.len, true, err, sizeof err), 0);
        free(p.pem);
    }
    const char *const *sets[] = {a, b};
    for (int i = 0; i < 2; i++) {
        if (!sets[i])
            continue;
        struct pair p = issue(sets[i], 30);
        assert_int_equal(tls_store_add_pem(s, p.pem, p.len, false, err, sizeof err), 0);
        free(p.pem);
    }
    return s;
}

static void test_sni_exact_then_wildcard_then_default(void **state)
{
    const char *shop[] = {"shop.example.test", NULL};
    const char *wild[] = {"*.example.test", NULL};
    struct tls_store *s = store_with(shop, wild, true);
    char subject[256];
    assert_int_equal(tls_store_select(s, "shop.example.test", subject, sizeof subject), 1);
    assert_string_equal(subject, "shop.example.test");
    assert_int_equal(tls_store_select(s, "SHOP.Example.Test.", subject, sizeof subject), 1);
    assert_int_equal(tls_store_select(s, "blog.example.test", subject, sizeof subject), 2);
    assert_string_equal(subject, "*.example.test");
    /* a wildcard covers one label only */
    assert_int_equal(tls_store_select(s, "a.blog.example.test", subject, sizeof subject), 3);
    assert_string_equal(subject, "default.test");
    assert_int_equal(tls_store_select(s, "example.test", subject, sizeof subject), 3);
    assert_int_equal(tls_store_select(s, NULL, subject, sizeof subject), 3);
    /* names that are not host names never match an entry, and a client cannot ask for "*" */
    assert_int_equal(tls_store_select(s, "*.example.test", subject, sizeof subject), 3);
    assert_int_equal(tls_store_select(s, "shop.example.test/x", subject, sizeof subject), 3);
    tls_store_free(s);

    s = store_with(shop, NULL, false);
    assert_int_equal(tls_store_select(s, "other.test", subject, sizeof subject), 0);
    assert_string_equal(subject, "");
    tls_store_free(s);
}

static bool only_shop(void *ctx, const char *name)
{
    return !strcmp(name, "shop.localhost");
}

static void test_issuer_makes_a_certificate_per_localhost_name(void **state)
{
    struct tls_store *s = store_with(NULL, NULL, true);
    char err[256] = "", subject[256];
    assert_int_equal(tls_store_set_issuer(s, ca_dir, "localhost", err, sizeof err), 0);
    assert_int_equal(tls_store_select(s, "web.localhost", subject, sizeof subject), 4);
    assert_string_equal(subject, "web.localhost");
    assert_int_equal(tls_store_select(s, "web.localhost", subject, sizeof subject), 4);
    /* only under the suffix */
    assert_int_equal(tls_store_select(s, "web.localhost.evil.test", subject, sizeof subject), 3);
    assert_int_equal(tls_store_select(s, "localhost", subject, sizeof subject), 3);
    /* with a filter, only the names it allows get one (those made before are kept) */
    tls_store_set_issue_filter(s, only_shop, NULL);
    assert_int_equal(tls_store_select(s, "random.localhost", subject, sizeof subject), 3);
    assert_string_equal(subject, "default.test");
    assert_int_equal(tls_store_select(s, "shop.localhost", subject, sizeof subject), 4);
    assert_int_equal(tls_store_select(s, "web.localhost", subject, sizeof subject), 4);
    tls_store_free(s);
}

static void test_reload_from_a_directory_replaces_the_certificates(void **state)
{
    char dir[] = "/tmp/skiff-test-tls-dir-XXXXXX";
    assert_non_null(mkdtemp(dir));
    bool created;
    char err[256] = "", subject[256];
    assert_int_equal(tls_local_ca_ensure(dir, &created, err, sizeof err), 0);
    struct tls_store *s;
    assert_int_equal(tls_store_new(NULL, &s, err, sizeof err), 0);
    assert_int_equal(tls_store_load_dir(s, dir, err, sizeof err), 0);
    assert_int_equal(tls_store_select(s, "localhost", subject, sizeof subject), 1);
    assert_int_equal(tls_store_select(s, "x.test", subject, sizeof subject), 3);

    const char *names[] = {"shop.example.test", NULL};
    struct pair p = issue(names, 30);
    char *path = xasprintf("%s/domains/shop.example.test.pem", dir);
    assert_int_equal(file_write_atomic(path, p.pem, p.len, 0600), 0);
    assert_int_equal(tls_store_load_dir(s, dir, err, sizeof err), 0);
    assert_int_equal(tls_store_select(s, "shop.example.test", subject, sizeof subject), 1);
    assert_int_equal(tls_store_count(s), 2);

    /* a broken file fails the reload and keeps what was served */
    assert_int_equal(file_write_atomic(path, "garbage", 7, 0600), 0);
    assert_true(tls_store_load_dir(s, dir, err, sizeof err) < 0);
    assert_non_null(strstr(err, "shop.example.test.pem"));
    assert_int_equal(tls_store_select(s, "shop.example.test", subject, sizeof subject), 1);
    free(path);
    free(p.pem);
    tls_store_free(s);
    rm_rf(dir);
}

/* tls_store_set_only_pem (the API's certificate on SIGHUP): the new one takes every name and
 * the default; names only the old one had are gone; a bad pair changes nothing. */
static void test_set_only_replaces_every_certificate(void **state)
{
    const char *old_names[] = {"localhost", "old.test", NULL};
    const char *new_names[] = {"localhost", "new.test", NULL};
    struct tls_store *s = store_with(NULL, NULL, false);
    char err[256] = "", subject[256];
    struct pair a = issue(old_names, 30), b = issue(new_names, 30);
    assert_int_equal(tls_store_set_only_pem(s, a.pem, a.len, err, sizeof err), 0);
    assert_int_equal(tls_store_select(s, "old.test", subject, sizeof subject), 1);
    assert_int_equal(tls_store_set_only_pem(s, b.pem, b.len, err, sizeof err), 0);
    assert_int_equal(tls_store_select(s, "localhost", subject, sizeof subject), 1);
    assert_string_equal(subject, "localhost");
    assert_int_equal(tls_store_select(s, "new.test", subject, sizeof subject), 1);
    assert_int_equal(tls_store_select(s, "old.test", subject, sizeof subject), 3);
    assert_int_equal(tls_store_select(s, NULL, subject, sizeof subject), 3);
    assert_int_equal(tls_store_count(s), 1);
    assert_true(tls_store_set_only_pem(s, "garbage", 7, err, sizeof err) < 0);
    assert_int_equal(tls_store_select(s, "new.test", subject, sizeof subject), 1);
    free(a.pem);
    free(b.pem);
    tls_store_free(s);
}

static void test_pair_check(void **state)
{
    const char *names[] = {"shop.example.test", "*.shop.example.test", NULL};
    struct pair p = issue(names, 30), q = issue(names, 30);
    char err[512] = "";
    struct tls_cert_info info;
    const char *cert = p.pem, *key = p.pem + p.key_off;
    size_t cert_len = p.key_off, key_len = p.len - p.key_off;
    assert_int_equal(
        tls_pair_check(cert, cert_len, key, key_len, "shop.example.test", &info, err, sizeof err),
        0);
    assert_non_null(strstr(info.subject, "CN=shop.example.test"));
    assert_true(info.not_after > info.not_before);
    assert_int_equal(
        tls_pair_check(cert, cert_len, key, key_len, "a.shop.example.test", NULL, err, sizeof err),
        0);
    /* names that do not cover the domain */
    assert_true(tls_pair_check(cert, cert_len, key, key_len, "other.test", NULL, err, sizeof err) <
                0);
    assert_non_null(strstr(err, "do not cover other.test"));
    /* the key of another certificate */
    assert_true(tls_pair_check(cert, cert_len, q.pem + q.key_off, q.len - q.key_off, NULL, NULL,
                               err, sizeof err) < 0);
    assert_non_null(strstr(err, "does not match"));
    /* not PEM */
    assert_true(tls_pair_check("hello", 5, key, key_len, NULL, NULL, err, sizeof err) < 0);
    assert_non_null(strstr(err, "certificate is not PEM"));
    assert_true(tls_pair_check(cert, cert_len, "hello", 5, NULL, NULL, err, sizeof err) < 0);
    assert_non_null(strstr(err, "private key is not"));
    /* too large */
    char *big = xcalloc(1, TLS_PEM_MAX + 2);
    memset(big, 'A', TLS_PEM_MAX + 1);
    assert_true(tls_pair_check(big, TLS_PEM_MAX + 1, key, key_len, NULL, NULL, err, sizeof err) <
                0);
    assert_non_null(strstr(err, "larger than"));
    free(big);
    /* expired */
    struct pair old = issue(names, -1);
    assert_true(tls_pair_check(old.pem, old.key_off, old.pem + old.key_off, old.len - old.key_off,
                               NULL, NULL, err, sizeof err) < 0);
    assert_non_null(strstr(err, "expired"));
    free(old.pem);
    free(p.pem);
    free(q.pem);
}

/* A pair file (chain then key) splits into the two; what has no certificate before a private
 * key, or no key, does not; the first certificate's details come from memory too. */
static void test_pair_split_and_info_from_memory(void **state)
{
    const char *names[] = {"split.example.test", NULL};
    struct pair p = issue(names, 30);
    char *cert = NULL, *key = NULL;
    assert_int_equal(tls_pem_pair_split(p.pem, p.len, &cert, &key), 0);
    assert_int_equal(strlen(cert), p.key_off);
    assert_memory_equal(cert, p.pem, p.key_off);
    assert_string_equal(key, p.pem + p.key_off);
    char err[256] = "";
    assert_int_equal(tls_pair_check(cert, strlen(cert), key, strlen(key), "split.example.test",
                                    NULL, err, sizeof err),
                     0);
    struct tls_cert_info info;
    assert_int_equal(tls_cert_pem_info(cert, strlen(cert), &info), 0);
    assert_non_null(strstr(info.subject, "CN=split.example.test"));
    assert_int_equal(tls_cert_pem_info("hello", 5, &info), -EINVAL);
    free(cert);
    free(key);
    char *c2 = NULL, *k2 = NULL;
    /* the key alone, the chain alone, the key before the chain, nothing */
    assert_int_equal(tls_pem_pair_split(p.pem + p.key_off, p.len - p.key_off, &c2, &k2), -EINVAL);
    assert_int_equal(tls_pem_pair_split(p.pem, p.key_off, &c2, &k2), -EINVAL);
    char *swapped = xasprintf("%s%.*s", p.pem + p.key_off, (int)p.key_off, p.pem);
    assert_int_equal(tls_pem_pair_split(swapped, strlen(swapped), &c2, &k2), -EINVAL);
    assert_int_equal(tls_pem_pair_split("", 0, &c2, &k2), -EINVAL);
    assert_null(c2);
    assert_null(k2);
    free(swapped);
    free(p.pem);
}

static void test_local_ca_files_and_modes(void **state)
{
    struct stat st;
    char *key = xasprintf("%s/ca.key", ca_dir), *def = xasprintf("%s/default.pem", ca_dir);
    assert_int_equal(stat(key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(def, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(ca_dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* a second call keeps what is there */
    bool created = true;
    char err[256];
    assert_int_equal(tls_local_ca_ensure(ca_dir, &created, err, sizeof err), 0);
    assert_false(created);
    free(key);
    free(def);
}

/* ---- a handshake with an OpenSSL client through memory ------------------------------------- */

struct client {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *in, *out; /* in: what the server sent; out: what the client sends */
};

static void client_open(struct client *cl, int max_version, const char *sni, SSL_SESSION *resume)
{
    cl->ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(cl->ctx, TLS1_VERSION);
    if (max_version)
        SSL_CTX_set_max_proto_version(cl->ctx, max_version);
    SSL_CTX_set_security_level(cl->ctx, 0); /* let the client offer TLS 1.0 */
    X509_STORE_add_cert(SSL_CTX_get_cert_store(cl->ctx), ca_cert);
    SSL_CTX_set_verify(cl->ctx, SSL_VERIFY_PEER, NULL);
    cl->ssl = SSL_new(cl->ctx);
    cl->in = BIO_new(BIO_s_mem());
    cl->out = BIO_new(BIO_s_mem());
    SSL_set_bio(cl->ssl, cl->in, cl->out);
    SSL_set_connect_state(cl->ssl);
    if (sni) {
        SSL_set_tlsext_host_name(cl->ssl, sni);
        SSL_set1_host(cl->ssl, sni);
    }
    static const unsigned char protos[] = "\x02h2\x08http/1.1";
    SSL_set_alpn_protos(cl->ssl, protos, sizeof protos - 1);
    if (resume)
        SSL_set_session(cl->ssl, resume);
}

static void client_close(struct client *cl)
{
    SSL_free(cl->ssl);
    SSL_CTX_free(cl->ctx);
}

/* Moves bytes both ways until neither side has more to say; returns the server's handshake
 * result. */
static int pump(struct client *cl, struct tls_conn *sc)
{
    int server = 0;
    char err[256];
    for (int round = 0; round < 20; round++) {
        SSL_do_handshake(cl->ssl);
        char *p;
        long n = BIO_get_mem_data(cl->out, &p);
        if (n > 0) {
            tls_conn_feed(sc, p, (size_t)n);
            (void)BIO_reset(cl->out);
        }
        if (server >= 0)
            server = tls_conn_handshake(sc, err, sizeof err);
        const char *q;
        size_t m = tls_conn_output(sc, &q);
        if (m) {
            BIO_write(cl->in, q, (int)m);
            tls_conn_output_consumed(sc, m);
        }
        if (n <= 0 && m == 0)
            break;
    }
    ERR_clear_error();
    return server;
}

static void test_handshake_versions_alpn_and_data(void **state)
{
    struct tls_store *s;
    char err[256] = "";
    static const unsigned char alpn[] = "\x08http/1.1";
    struct tls_store_options opts = {.alpn = alpn, .alpn_len = sizeof alpn - 1};
    assert_int_equal(tls_store_new(&opts, &s, err, sizeof err), 0);
    assert_int_equal(tls_store_set_issuer(s, ca_dir, "localhost", err, sizeof err), 0);
    assert_int_equal(tls_store_load_dir(s, ca_dir, err, sizeof err), 0);

    struct client cl;
    struct tls_conn *sc = tls_conn_new(s);
    client_open(&cl, 0, "web.localhost", NULL);
    assert_int_equal(pump(&cl, sc), 1);
    assert_int_equal(SSL_do_handshake(cl.ssl), 1);
    assert_int_equal(SSL_get_verify_result(cl.ssl), X509_V_OK); /* issued for web.localhost */
    assert_int_equal(SSL_version(cl.ssl), TLS1_3_VERSION);
    size_t alen;
    const char *a = tls_conn_alpn(sc, &alen);
    assert_int_equal(alen, 8); /* h2 offered first, but only http/1.1 is advertised */
    assert_memory_equal(a, "http/1.1", 8);
    assert_string_equal(tls_conn_server_name(sc), "web.localhost");

    /* data both ways */
    assert_int_equal(SSL_write(cl.ssl, "GET / HTTP/1.1\r\n", 16), 16);
    char *p;
    long n = BIO_get_mem_data(cl.out, &p);
    tls_conn_feed(sc, p, (size_t)n);
    (void)BIO_reset(cl.out);
    char buf[64];
    assert_int_equal(tls_conn_read(sc, buf, sizeof buf), 16);
    assert_memory_equal(buf, "GET / HTTP/1.1\r\n", 16);
    assert_int_equal(tls_conn_read(sc, buf, sizeof buf), 0);
    assert_int_equal(tls_conn_write(sc, "ok", 2), 0);
    const char *q;
    size_t m = tls_conn_output(sc, &q);
    BIO_write(cl.in, q, (int)m);
    tls_conn_output_consumed(sc, m);
    assert_int_equal(SSL_read(cl.ssl, buf, sizeof buf), 2);
    tls_conn_free(sc);
    client_close(&cl);

    /* TLS 1.1 and 1.0 are refused */
    int olds[] = {TLS1_1_VERSION, TLS1_VERSION};
    for (int i = 0; i < 2; i++) {
        sc = tls_conn_new(s);
        client_open(&cl, olds[i], "web.localhost", NULL);
        assert_int_equal(pump(&cl, sc), -1);
        tls_conn_free(sc);
        client_close(&cl);
    }

    /* TLS 1.2 works, and a renegotiation is refused */
    sc = tls_conn_new(s);
    client_open(&cl, TLS1_2_VERSION, "web.localhost", NULL);
    assert_int_equal(pump(&cl, sc), 1);
    assert_int_equal(SSL_version(cl.ssl), TLS1_2_VERSION);
    assert_int_equal(SSL_renegotiate(cl.ssl), 1);
    pump(&cl, sc);
    assert_true(tls_conn_read(sc, buf, sizeof buf) <= 0);
    assert_int_equal(SSL_renegotiate_pending(cl.ssl), 1); /* never completed */
    tls_conn_free(sc);
    client_close(&cl);
    tls_store_free(s);
}

/* Reads n bytes the client receives from sc's output, which is consumed; they must be `want`. */
static void client_receives(struct client *cl, struct tls_conn *sc, const char *want, size_t n)
{
    const char *q;
    size_t m = tls_conn_output(sc, &q);
    BIO_write(cl->in, q, (int)m);
    tls_conn_output_consumed(sc, m);
    char *got = malloc(n);
    size_t have = 0;
    while (have < n) {
        int r = SSL_read(cl->ssl, got + have, (int)(n - have));
        assert_true(r > 0);
        have += (size_t)r;
    }
    assert_memory_equal(got, want, n);
    free(got);
}

/* Connections of one thread encrypt into the same output buffer once each one's output is
 * consumed; one whose output waits keeps its bytes while another writes. */
static void test_connections_share_the_output_buffer_and_keep_what_waits(void **state)
{
    struct tls_store *s;
    char err[256] = "";
    struct tls_store_options opts = {0};
    assert_int_equal(tls_store_new(&opts, &s, err, sizeof err), 0);
    assert_int_equal(tls_store_set_issuer(s, ca_dir, "localhost", err, sizeof err), 0);
    assert_int_equal(tls_store_load_dir(s, ca_dir, err, sizeof err), 0);
    struct client ca, cb;
    struct tls_conn *a = tls_conn_new(s), *b = tls_conn_new(s);
    client_open(&ca, 0, "web.localhost", NULL);
    client_open(&cb, 0, "web.localhost", NULL);
    assert_int_equal(pump(&ca, a), 1);
    assert_int_equal(pump(&cb, b), 1);
    size_t big = 40000;
    char *xs = malloc(big), *ys = malloc(big);
    memset(xs, 'x', big);
    memset(ys, 'y', big);

    assert_int_equal(tls_conn_write(a, xs, big), 0);
    const char *pa, *pb;
    assert_true(tls_conn_output(a, &pa) > big);
    client_receives(&ca, a, xs, big);
    assert_int_equal(tls_conn_write(b, ys, big), 0);
    assert_true(tls_conn_output(b, &pb) > big);
    assert_ptr_equal(pa, pb); /* a's buffer, given back, now b's */
    client_receives(&cb, b, ys, big);

    /* a's output is not consumed: b writes elsewhere, and a's bytes are still a's */
    assert_int_equal(tls_conn_write(a, xs, big), 0);
    assert_int_equal(tls_conn_write(b, ys, 100), 0);
    assert_true(tls_conn_output(a, &pa) > big);
    assert_true(tls_conn_output(b, &pb) > 100);
    assert_ptr_not_equal(pa, pb);
    client_receives(&cb, b, ys, 100);
    client_receives(&ca, a, xs, big);

    /* a connection freed with output unsent leaves nothing behind (LSan) */
    assert_int_equal(tls_conn_write(a, xs, 1000), 0);
    tls_conn_free(a);
    tls_conn_free(b);
    client_close(&ca);
    client_close(&cb);
    free(xs);
    free(ys);
    tls_store_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sni_exact_then_wildcard_then_default),
        cmocka_unit_test(test_issuer_makes_a_certificate_per_localhost_name),
        cmocka_unit_test(test_reload_from_a_directory_replaces_the_certificates),
        cmocka_unit_test(test_set_only_replaces_every_certificate),
        cmocka_unit_test(test_pair_check),
        cmocka_unit_test(test_pair_split_and_info_from_memory),
        cmocka_unit_test(test_local_ca_files_and_modes),
        cmocka_unit_test(test_handshake_versions_alpn_and_data),
        cmocka_unit_test(test_connections_share_the_output_buffer_and_keep_what_waits),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
