/* Unit tests for natsconn's one-owner helpers: which settings mean TLS (and so whether keys may
 * be sent), the masking of passwords in server lists, and the security files checked before a
 * connection is tried (each refusal names its flag). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "natsconn/natsconn.h"

static void test_which_settings_mean_tls(void **state)
{
    (void)state;
    struct natsconn_security none = {0}, ca = {.tls_ca = "ca.pem"},
                             cert = {.tls_cert = "c.pem", .tls_key = "k.pem"},
                             creds = {.creds = "u.creds"}, empty = {.tls_ca = ""};
    assert_false(natsconn_security_tls("nats://h:4222", NULL));
    assert_false(natsconn_security_tls("nats://h:4222", &none));
    assert_false(natsconn_security_tls("nats://h:4222", &creds)); /* credentials are not TLS */
    assert_false(natsconn_security_tls("nats://h:4222", &empty));
    assert_false(natsconn_security_tls("nats://tls.example:4222", &none));
    assert_true(natsconn_security_tls("tls://h:4222", NULL));
    assert_true(natsconn_security_tls("TLS://h:4222", NULL));
    assert_true(natsconn_security_tls("nats://a:1, tls://b:2", NULL));
    assert_true(natsconn_security_tls("nats://h:4222", &ca));
    assert_true(natsconn_security_tls("nats://h:4222", &cert));
}

static void test_passwords_are_masked(void **state)
{
    (void)state;
    char *m = natsconn_url_masked("nats://u:secret@a:1,tls://token@b:2,nats://c:3");
    assert_string_equal(m, "nats://***@a:1,tls://***@b:2,nats://c:3");
    free(m);
}

static void test_security_files_are_checked_with_their_flag(void **state)
{
    (void)state;
    char dir[] = "/tmp/skiff-test-natsconn-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char junk[64];
    snprintf(junk, sizeof junk, "%s/junk.pem", dir);
    FILE *f = fopen(junk, "w");
    assert_non_null(f);
    fputs("not a certificate\n", f);
    fclose(f);
    static const struct {
        struct natsconn_security sec;
        const char *flag;
    } cases[] = {
        {{.tls_ca = "/nonexistent/ca.pem"}, "--nats-tls-ca /nonexistent/ca.pem: cannot read"},
        {{.tls_ca = NULL}, NULL}, /* placeholder: the junk CA below */
        {{.tls_cert = "/nonexistent/c.pem"}, "go together"},
        {{.tls_key = "/nonexistent/k.pem"}, "go together"},
        {{.tls_cert = "/nonexistent/c.pem", .tls_key = "/nonexistent/k.pem"}, "--nats-tls-cert"},
        {{.creds = "/nonexistent/u.creds"}, "--nats-creds /nonexistent/u.creds: cannot read"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct natsconn_security sec = cases[i].sec;
        const char *flag = cases[i].flag;
        if (!flag) {
            sec.tls_ca = junk;
            flag = "not a PEM file of CA certificates";
        }
        natsOptions *opts = NULL;
        char err[512] = "";
        int rc = natsconn_options("nats://127.0.0.1:1", &sec, 1000, &opts, err, sizeof err);
        if (rc != -EINVAL || !strstr(err, flag))
            fail_msg("case %zu: rc %d, err \"%s\" (wanted \"%s\")", i, rc, err, flag);
        assert_null(opts);
    }
    natsOptions *opts = NULL;
    char err[256] = "";
    assert_int_equal(natsconn_options("tls://127.0.0.1:1", NULL, 1000, &opts, err, sizeof err), 0);
    natsOptions_Destroy(opts);
    unlink(junk);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_which_settings_mean_tls),
        cmocka_unit_test(test_passwords_are_masked),
        cmocka_unit_test(test_security_files_are_checked_with_their_flag),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
