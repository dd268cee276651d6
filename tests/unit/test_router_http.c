/* Unit tests for the router's head handling: strict line endings, request and response
 * header rewriting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "common/buf.h"
#include "router/router.h"

#define H(n, v)                                                                                    \
    {                                                                                              \
        n, sizeof(n) - 1, v, sizeof(v) - 1                                                         \
    }

static int scan_all(const char *s, size_t *end)
{
    struct router_head_scan sc;
    router_head_scan_reset(&sc);
    return router_head_scan(&sc, s, strlen(s), end);
}

static void test_scan_finds_the_end_of_a_head(void **state)
{
    (void)state;
    size_t end = 0;
    const char *req = "GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
    assert_int_equal(scan_all(req, &end), 1);
    assert_int_equal(end, strlen(req) - 4);
    /* byte by byte gives the same answer */
    struct router_head_scan sc;
    router_head_scan_reset(&sc);
    size_t i;
    int r = 0;
    for (i = 0; i < strlen(req) && r == 0; i++)
        r = router_head_scan(&sc, req + i, 1, &end);
    assert_int_equal(r, 1);
    assert_int_equal(i, strlen(req) - 4);
    assert_int_equal(scan_all("GET / HTTP/1.1\r\nHost: a\r\n", &end), 0);
}

static void test_scan_rejects_bare_lf_cr_and_folding(void **state)
{
    (void)state;
    size_t end;
    assert_int_equal(scan_all("GET / HTTP/1.1\nHost: a\r\n\r\n", &end), -1);
    assert_int_equal(scan_all("GET / HTTP/1.1\r\nHost: a\n\r\n", &end), -1);
    assert_int_equal(scan_all("GET / HTTP/1.1\r\nHost: a\r\n\n", &end), -1);
    assert_int_equal(scan_all("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", &end), -1);
    assert_int_equal(scan_all("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", &end), -1);
    assert_int_equal(scan_all("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", &end), -1);
}

static void test_request_id_and_header_names(void **state)
{
    (void)state;
    assert_true(router_request_id_valid("abc-123_x.y:z", 13));
    assert_false(router_request_id_valid("", 0));
    assert_false(router_request_id_valid("a b", 3));
    assert_false(router_request_id_valid("a\r\nX: y", 7));
    char long_id[200];
    memset(long_id, 'a', sizeof(long_id));
    assert_false(router_request_id_valid(long_id, sizeof(long_id)));
    assert_true(router_header_name_valid("X-Forwarded-For", 15));
    assert_false(router_header_name_valid("Host ", 5));
    assert_false(router_header_name_valid("A:B", 3));
    assert_false(router_header_name_valid("", 0));
    assert_true(router_header_has_token("keep-alive, Upgrade", 19, "upgrade"));
    assert_false(router_header_has_token("keep-alive, Upgraded", 20, "upgrade"));
}

static void test_request_head_rewriting(void **state)
{
    (void)state;
    struct router_header hs[] = {
        H("Host", "App.localhost:8080"),
        H("X-Forwarded-For", "10.0.0.1"),
        H("Connection", "keep-alive, X-Hop"),
        H("X-Hop", "secret"),
        H("Keep-Alive", "timeout=5"),
        H("Transfer-Encoding", "chunked"),
        H("TE", "trailers"),
        H("X-Forwarded-For", "10.0.0.2"),
        H("X-Request-Id", "client-chosen"),
        H("X-Forwarded-Proto", "https"),
        H("Accept", "*/*"),
        H("Upgrade", "websocket"),
    };
    struct router_request_head h = {
        .method = "POST",
        .url = "/v1/x?y=1",
        .url_len = 9,
        .headers = hs,
        .header_count = sizeof(hs) / sizeof(hs[0]),
        .client_ip = "127.0.0.9",
        .request_id = "rid-1",
        .chunked = true,
    };
    struct buf out = {0};
    router_head_build_request(&out, &h);
    assert_string_equal(out.data, "POST /v1/x?y=1 HTTP/1.1\r\n"
                                  "Host: App.localhost:8080\r\n"
                                  "Accept: */*\r\n"
                                  "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 127.0.0.9\r\n"
                                  "X-Forwarded-Proto: http\r\n"
                                  "X-Forwarded-Host: App.localhost:8080\r\n"
                                  "X-Request-Id: rid-1\r\n"
                                  "TE: trailers\r\n"
                                  "Transfer-Encoding: chunked\r\n"
                                  "\r\n");
    buf_reset(&out);
    hs[6] = (struct router_header)H("TE", "gzip, deflate"); /* only "trailers" is passed on */
    router_head_build_request(&out, &h);
    assert_null(strstr(out.data, "TE:"));
    assert_null(strstr(out.data, "gzip"));
    buf_reset(&out);
    h.chunked = false;
    h.has_length = true;
    h.content_length = 12;
    h.upgrade = true;
    h.header_count = 1;
    hs[1] = (struct router_header)H("Upgrade", "websocket");
    h.header_count = 2;
    router_head_build_request(&out, &h);
    assert_string_equal(out.data, "POST /v1/x?y=1 HTTP/1.1\r\n"
                                  "Host: App.localhost:8080\r\n"
                                  "X-Forwarded-For: 127.0.0.9\r\n"
                                  "X-Forwarded-Proto: http\r\n"
                                  "X-Forwarded-Host: App.localhost:8080\r\n"
                                  "X-Request-Id: rid-1\r\n"
                                  "Content-Length: 12\r\n"
                                  "Connection: upgrade\r\nUpgrade: websocket\r\n"
                                  "\r\n");
    buf_free(&out);
}

/* GET / routed by a.localhost, from 127.0.0.9, with the client's headers hs (of which only
 * an Accept: star/star is passed on), and what the backend is sent for it over proto. */
static struct router_request_head get_for_a_localhost(const struct router_header *hs, size_t n)
{
    return (struct router_request_head){.method = "GET",
                                        .url = "/",
                                        .url_len = 1,
                                        .host = "a.localhost",
                                        .host_len = 11,
                                        .headers = hs,
                                        .header_count = n,
                                        .client_ip = "127.0.0.9",
                                        .request_id = "rid-1"};
}
#define GET_FOR_A_LOCALHOST(proto)                                                                 \
    "GET / HTTP/1.1\r\nHost: a.localhost\r\nAccept: */*\r\nX-Forwarded-For: 127.0.0.9\r\n"         \
    "X-Forwarded-Proto: " proto "\r\nX-Forwarded-Host: a.localhost\r\nX-Request-Id: rid-1\r\n\r\n"

/* Over HTTPS: X-Forwarded-Proto says so; a client's X-Forwarded-Client-Cert never passes, in
 * any spelling, and the router's own is written only when it verified a certificate. */
static void test_https_head_and_client_cert_header(void **state)
{
    (void)state;
    struct router_header hs[] = {
        H("X-Forwarded-Client-Cert", "forged"),
        H("x-forwarded-client-cert", "forged too"),
        H("Accept", "*/*"),
    };
    struct router_request_head h = get_for_a_localhost(hs, 3);
    h.https = true;
    struct buf out = {0};
    router_head_build_request(&out, &h);
    assert_string_equal(out.data, GET_FOR_A_LOCALHOST("https"));
    buf_reset(&out);
    h.client_cert = "TUlJQg==";
    router_head_build_request(&out, &h);
    assert_non_null(strstr(out.data, "X-Forwarded-Client-Cert: TUlJQg==\r\n"));
    assert_null(strstr(out.data, "forged"));
    buf_free(&out);
}

static void test_response_head_rewriting(void **state)
{
    (void)state;
    struct router_header hs[] = {
        H("Content-Type", "text/plain"), H("Connection", "keep-alive"),
        H("Keep-Alive", "timeout=5"),    H("Transfer-Encoding", "chunked"),
        H("Set-Cookie", "a=1"),
    };
    struct buf out = {0};
    router_head_build_response(&out, 200, "OK", 2, hs, 5, false, false, false);
    assert_string_equal(out.data, "HTTP/1.1 200 OK\r\n"
                                  "Content-Type: text/plain\r\n"
                                  "Transfer-Encoding: chunked\r\n"
                                  "Set-Cookie: a=1\r\n"
                                  "\r\n");
    buf_reset(&out);
    router_head_build_response(&out, 404, "", 0, hs, 1, true, false, false);
    assert_string_equal(out.data, "HTTP/1.1 404 \r\nContent-Type: text/plain\r\n"
                                  "Connection: close\r\n\r\n");
    buf_reset(&out);
    struct router_header up[] = {H("Upgrade", "websocket"), H("Connection", "Upgrade")};
    router_head_build_response(&out, 101, "Switching Protocols", 19, up, 2, false, true, false);
    assert_string_equal(out.data, "HTTP/1.1 101 Switching Protocols\r\n"
                                  "Upgrade: websocket\r\nConnection: upgrade\r\n\r\n");
    buf_free(&out);
}

static void test_trailers_end_a_chunked_body(void **state)
{
    (void)state;
    struct buf out = {0};
    router_trailers_build(&out, NULL, 0);
    assert_string_equal(out.data, "0\r\n\r\n");
    buf_reset(&out);
    struct router_header ts[] = {
        H("Grpc-Status", "0"),        H("Content-Length", "5"), H("Transfer-Encoding", "chunked"),
        H("Connection", "close"),     H("Host", "evil.test"),   H("X-Forwarded-For", "1.2.3.4"),
        H("Bad Name", "x"),           H("TE", "trailers"),      H("Server-Timing", "db;dur=53"),
        H("Keep-Alive", "timeout=1"),
    };
    router_trailers_build(&out, ts, sizeof(ts) / sizeof(ts[0]));
    assert_string_equal(out.data, "0\r\nGrpc-Status: 0\r\nServer-Timing: db;dur=53\r\n\r\n");
    buf_free(&out);
}

static void test_trailer_announcement_is_forwarded(void **state)
{
    (void)state;
    struct router_header hs[] = {H("Trailer", "Server-Timing"), H("Transfer-Encoding", "chunked")};
    struct buf out = {0};
    router_head_build_response(&out, 200, "OK", 2, hs, 2, false, false, false);
    assert_string_equal(out.data, "HTTP/1.1 200 OK\r\nTrailer: Server-Timing\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n");
    buf_free(&out);
}

static void check_target(const char *in, const char *want)
{
    char t[256];
    size_t n = strlen(in);
    memcpy(t, in, n);
    const char *why = NULL;
    size_t m = router_target_normalize(t, n, &why);
    if (!want) {
        assert_int_equal(m, 0);
        assert_non_null(why);
        return;
    }
    t[m] = '\0';
    assert_string_equal(t, want);
}

static void test_targets_are_normalized(void **state)
{
    (void)state;
    check_target("/", "/");
    check_target("*", "*");
    check_target("/a/b?q=1", "/a/b?q=1");
    check_target("/a/./b", "/a/b");
    check_target("/a/.", "/a/");
    check_target("/a/b/../c", "/a/c");
    check_target("/a/b/..", "/a/");
    check_target("/..", "/");
    check_target("/../../etc/passwd", "/etc/passwd");
    check_target("/./a", "/a");
    check_target("/a//b", "/a//b"); /* empty segments are kept: they are a different URI */
    check_target("/a/", "/a/");
    check_target("/a/.b/..c", "/a/.b/..c");
    check_target("/v1/../admin?x=/../y", "/admin?x=/../y"); /* the query is the app's */
    check_target("/%7Euser/%61bc", "/~user/abc");
    check_target("/%2e%2E/x", "/x"); /* decoded dots are dots */
    check_target("/v%31", "/v1");
    check_target("/a%2fb%20c", "/a%2Fb%20c"); /* reserved stays encoded, in uppercase */
    check_target("/a#frag/../b", "/a#frag/../b");
    check_target("/a/b/../../../c/./d/", "/c/d/");
    check_target("", NULL);
    check_target("a/b", NULL);
    check_target("/a%2", NULL);
    check_target("/a%zz", NULL);
    check_target("/a%", NULL);
    check_target("/a%2?x", NULL);
    check_target("/a%00b", NULL);
}

/* What an absolute-form target becomes: "AUTHORITY" then the origin form, or -1. */
static int absolute(const char *in, char *authority, char *origin)
{
    char t[256];
    size_t alen = 0, olen = 0;
    const char *why = NULL;
    snprintf(t, sizeof(t), "%s", in);
    int r = router_target_absolute(t, strlen(t), &alen, &olen, &why);
    if (r == 1) {
        snprintf(authority, 128, "%.*s", (int)alen, t);
        snprintf(origin, 128, "%.*s", (int)olen, t + alen);
    } else if (r < 0) {
        assert_non_null(why);
    }
    return r;
}

static void test_absolute_form_targets(void **state)
{
    (void)state;
    char a[128], o[128];
    assert_int_equal(absolute("http://a.localhost/x/y?q=1", a, o), 1);
    assert_string_equal(a, "a.localhost");
    assert_string_equal(o, "/x/y?q=1");
    assert_int_equal(absolute("HTTP://A.localhost:8080", a, o), 1);
    assert_string_equal(a, "A.localhost:8080");
    assert_string_equal(o, "/");
    assert_int_equal(absolute("https://a.localhost?q=/../x", a, o),
                     1); /* the query is not a path */
    assert_string_equal(a, "a.localhost");
    assert_string_equal(o, "/?q=/../x");
    assert_int_equal(absolute("http://[::1]:80/", a, o), 1);
    assert_string_equal(a, "[::1]:80");
    assert_string_equal(o, "/");
    /* what an attacker tries: another host in userinfo, nothing, odd characters */
    assert_int_equal(absolute("http://b.localhost@a.localhost/", a, o), -1);
    assert_int_equal(absolute("http:///x", a, o), -1);
    assert_int_equal(absolute("http://a.localhost#frag/", a, o), -1);
    assert_int_equal(absolute("http://a%2elocalhost/", a, o), -1);
    assert_int_equal(absolute("http://a.localhost:80x/", a, o), -1);
    assert_int_equal(absolute("http://a.localhost,b.localhost/", a, o), -1);
    /* not absolute form: left for the origin-form checks */
    assert_int_equal(absolute("/http://a.localhost/", a, o), 0);
    assert_int_equal(absolute("*", a, o), 0);
    assert_int_equal(absolute("ftp://a.localhost/", a, o), 0);
}

static void test_authorities(void **state)
{
    (void)state;
    const char *good[] = {"a.localhost", "APP.localhost:8080",     "a-b_c~d.x", "127.0.0.1:1",
                          "[::1]",       "[::ffff:127.0.0.1]:443", "a:"};
    const char *bad[] = {"",   ":80",    "a b",    "a/b",  "user@a", "a:123456", "a:8o", "[::1",
                         "[]", "[::1]x", "[g::1]", "a%41", "a\tb",   "a,b",      "*.a"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(router_authority_valid(good[i], strlen(good[i])));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(router_authority_valid(bad[i], strlen(bad[i])));
}

static void test_the_app_sees_the_authority_it_was_routed_by(void **state)
{
    (void)state;
    struct router_header hs[] = {
        H("Accept", "*/*"),
        H("Host", "victim.localhost"),
        H("X-Forwarded-Host", "victim.localhost"),
    };
    struct router_request_head h = get_for_a_localhost(hs, 3);
    struct buf out = {0};
    router_head_build_request(&out, &h);
    assert_string_equal(out.data, GET_FOR_A_LOCALHOST("http"));
    buf_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scan_finds_the_end_of_a_head),
        cmocka_unit_test(test_scan_rejects_bare_lf_cr_and_folding),
        cmocka_unit_test(test_request_id_and_header_names),
        cmocka_unit_test(test_request_head_rewriting),
        cmocka_unit_test(test_https_head_and_client_cert_header),
        cmocka_unit_test(test_response_head_rewriting),
        cmocka_unit_test(test_trailers_end_a_chunked_body),
        cmocka_unit_test(test_targets_are_normalized),
        cmocka_unit_test(test_trailer_announcement_is_forwarded),
        cmocka_unit_test(test_absolute_form_targets),
        cmocka_unit_test(test_authorities),
        cmocka_unit_test(test_the_app_sees_the_authority_it_was_routed_by),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
