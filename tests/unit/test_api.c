/* Unit tests for the API server's hardening: instance tokens (per instance, checked on every
 * request, revoked by the check), the signing key's permissions, answers decided from the head
 * sent before the body, and the per-client connection cap closing the longest idle first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "common/util.h"

struct fixture {
    uv_loop_t loop;
    char home[64];
    int port;
    struct api *api;
    char live_instance[37]; /* the one instance the check says runs */
};

static bool check_live(void *ctx, const char *app_guid, const char *instance_guid, char *name,
                       size_t size, char space_guid[37])
{
    struct fixture *fx = ctx;
    (void)app_guid;
    snprintf(name, size, "tenant");
    snprintf(space_guid, 37, "%s", SKIFF_DEFAULT_SPACE_GUID);
    return !strcmp(instance_guid, fx->live_instance);
}

static void on_publish(struct api_request *req, void *ctx)
{
    (void)ctx;
    const char *name = api_request_caller_name(req);
    api_respond(req, 202, "text/plain", name ? name : "admin", strlen(name ? name : "admin"));
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    bind(s, (struct sockaddr *)&a, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &len);
    close(s);
    return ntohs(a.sin_port);
}

static struct api *start_api(struct fixture *fx, unsigned per_client)
{
    char addr[64];
    fx->port = free_port();
    snprintf(addr, sizeof addr, "127.0.0.1:%d", fx->port);
    struct api_config cfg = {.home = fx->home,
                             .addr = addr,
                             .admin_token = "admin-token",
                             .max_connections_per_client = per_client};
    struct api *api = NULL;
    assert_int_equal(api_new(&fx->loop, &cfg, &api), 0);
    api_set_instance_check(api, check_live, fx);
    api_route_add(api, "POST", "/v1/topics/*/events", API_PERM(AUTH_PERM_PUBLISH) | API_SCOPE_SPACE, on_publish, NULL);
    char err[256];
    assert_int_equal(api_listen(api, err, sizeof err), 0);
    return api;
}

static void on_api_closed(void *arg)
{
    *(bool *)arg = true;
}

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof *fx);
    uv_loop_init(&fx->loop);
    snprintf(fx->home, sizeof fx->home, "/tmp/skiff-api-XXXXXX");
    if (!mkdtemp(fx->home))
        return -1;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    if (fx->api) {
        bool closed = false;
        api_close(fx->api, on_api_closed, &closed);
        while (!closed)
            uv_run(&fx->loop, UV_RUN_ONCE);
        api_free(fx->api);
    }
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    rm_rf(fx->home);
    free(fx);
    return 0;
}

static int connect_api(struct fixture *fx)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)fx->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(s, (struct sockaddr *)&a, sizeof a);
    assert_true(rc == 0 || errno == EINPROGRESS);
    return s;
}

/* Runs the loop until fd has something to read (or EOF), at most 3 s; what it read, or "" on
 * EOF. */
static void exchange(struct fixture *fx, int s, const char *send_text, char *out, size_t size)
{
    if (send_text) {
        for (int i = 0; i < 100; i++) {
            uv_run(&fx->loop, UV_RUN_NOWAIT);
            if (send(s, send_text, strlen(send_text), MSG_NOSIGNAL) >= 0)
                break;
            usleep(1000);
        }
    }
    out[0] = '\0';
    int64_t deadline = time_mono_ms() + 3000;
    while (time_mono_ms() < deadline) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        struct pollfd p = {.fd = s, .events = POLLIN};
        if (poll(&p, 1, 5) == 1) {
            ssize_t n = recv(s, out, size - 1, 0);
            out[n > 0 ? n : 0] = '\0';
            return;
        }
    }
    fail_msg("no answer within 3 s");
}

static void publish_with(struct fixture *fx, const char *token, const char *extra, char *out,
                         size_t size)
{
    char req[1024];
    snprintf(req, sizeof req,
             "POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n%s"
             "Content-Length: 2\r\n\r\nhi",
             token, extra);
    int s = connect_api(fx);
    exchange(fx, s, req, out, size);
    close(s);
}

static void test_instance_tokens(void **state)
{
    struct fixture *fx = *state;
    fx->api = start_api(fx, 0);
    const char *app = "11111111-2222-3333-4444-555555555555";
    const char *inst = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    const char *other = "aaaaaaaa-bbbb-cccc-dddd-ffffffffffff";
    char t1[200], t2[200], out[4096];
    api_instance_token(fx->api, app, inst, t1, sizeof t1);
    api_instance_token(fx->api, app, other, t2, sizeof t2);
    assert_true(strlen(t1) < 160);
    assert_true(str_has_prefix(t1, "skiffi.11111111-2222-3333-4444-555555555555.aaaaaaaa-"));
    assert_string_not_equal(t1, t2);

    snprintf(fx->live_instance, sizeof fx->live_instance, "%s", inst);
    publish_with(fx, t1, "", out, sizeof out);
    assert_true(str_has_prefix(out, "HTTP/1.1 202 "));
    assert_non_null(strstr(out, "\r\n\r\ntenant"));
    /* the other instance's token is signed, but its instance does not run */
    publish_with(fx, t2, "", out, sizeof out);
    assert_true(str_has_prefix(out, "HTTP/1.1 401 "));
    assert_non_null(strstr(out, "no longer valid"));
    /* revoked: the check no longer knows the instance */
    fx->live_instance[0] = '\0';
    publish_with(fx, t1, "", out, sizeof out);
    assert_true(str_has_prefix(out, "HTTP/1.1 401 "));
    /* tampering with any part breaks the signature */
    char forged[200];
    snprintf(forged, sizeof forged, "%s", t1);
    forged[strlen(forged) - 1] = forged[strlen(forged) - 1] == 'a' ? 'b' : 'a';
    snprintf(fx->live_instance, sizeof fx->live_instance, "%s", inst);
    publish_with(fx, forged, "", out, sizeof out);
    assert_true(str_has_prefix(out, "HTTP/1.1 401 "));
    assert_non_null(strstr(out, "not valid"));
}

static void test_key_permissions(void **state)
{
    struct fixture *fx = *state;
    fx->api = start_api(fx, 0);
    char path[128], t1[200], t2[200];
    snprintf(path, sizeof path, "%s/instance_token.key", fx->home);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_uid, geteuid());
    api_instance_token(fx->api, "a", "b", t1, sizeof t1);
    bool closed = false;
    api_close(fx->api, on_api_closed, &closed);
    while (!closed)
        uv_run(&fx->loop, UV_RUN_ONCE);
    api_free(fx->api);
    /* an existing key left readable by others is made 0600, and kept */
    assert_int_equal(chmod(path, 0644), 0);
    fx->api = start_api(fx, 0);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    api_instance_token(fx->api, "a", "b", t2, sizeof t2);
    assert_string_equal(t1, t2);
}

static void test_401_before_a_huge_body(void **state)
{
    struct fixture *fx = *state;
    fx->api = start_api(fx, 0);
    char out[4096];
    int s = connect_api(fx);
    exchange(fx, s,
             "POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000000\r\n\r\n",
             out, sizeof out);
    assert_true(str_has_prefix(out, "HTTP/1.1 401 "));
    assert_non_null(strstr(out, "Connection: close"));
    /* then the server says it is done (FIN), without waiting for the 9 GB */
    exchange(fx, s, NULL, out, sizeof out);
    assert_string_equal(out, "");
    close(s);
    uv_run(&fx->loop, UV_RUN_NOWAIT);
    assert_true(api_connections(fx->api) <= 1); /* lingering until it sees our close */
}

static void test_per_client_cap_closes_the_longest_idle(void **state)
{
    struct fixture *fx = *state;
    fx->api = start_api(fx, 4);
    int socks[6];
    char out[256];
    for (int i = 0; i < 6; i++) {
        socks[i] = connect_api(fx);
        for (int k = 0; k < 50 && api_connections(fx->api) < (unsigned)(i < 4 ? i + 1 : 4); k++) {
            uv_run(&fx->loop, UV_RUN_NOWAIT);
            usleep(1000);
        }
    }
    for (int k = 0; k < 100; k++) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    assert_int_equal(api_connections(fx->api), 4);
    /* the first two (longest idle) were closed; the newest is served */
    exchange(fx, socks[0], NULL, out, sizeof out);
    assert_string_equal(out, "");
    exchange(fx, socks[1], NULL, out, sizeof out);
    assert_string_equal(out, "");
    exchange(fx, socks[5], "POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                           "admin-token\r\nContent-Length: 0\r\n\r\n",
             out, sizeof out);
    assert_true(str_has_prefix(out, "HTTP/1.1 202 "));
    for (int i = 0; i < 6; i++)
        close(socks[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_instance_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_permissions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_401_before_a_huge_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_per_client_cap_closes_the_longest_idle, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
