/* Unit tests for the API server's hardening: instance tokens (per instance, checked on every
 * request, revoked by the check), the signing key's permissions, answers decided from the head
 * (401, 413 for a declared huge body, 431 for too many headers) sent before the body, the
 * per-client connection cap closing the longest idle first, answers larger than the socket
 * takes at once arriving whole and in order, pipelined requests answered in their order
 * when a handler answers later, a handler's error answered with the one table's status and
 * code whether it is an enum skiff_err or a part's negative errno, and (on PostgreSQL) the
 * copy of the cells' tokens and grants read again on news of those kinds only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "loop_socket.h"
#include "pg_throwaway.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/api.h"
#include "auth/auth.h"
#include "common/buf.h"
#include "common/err.h"
#include "common/util.h"
#include "store/store.h"

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

#define BIG_ANSWER_BYTES (3u << 20)

/* An answer far larger than a socket takes at once: part is sent now, the rest queued. */
static void on_big(struct api_request *req, void *ctx)
{
    (void)ctx;
    char *body = xmalloc(BIG_ANSWER_BYTES);
    for (size_t i = 0; i < BIG_ANSWER_BYTES; i++)
        body[i] = (char)('a' + i % 26);
    api_respond(req, 200, "text/plain", body, BIG_ANSWER_BYTES);
    free(body);
}

/* Answers with the request's body. */
static void on_echo(struct api_request *req, void *ctx)
{
    (void)ctx;
    size_t len = 0;
    const char *body = api_request_body(req, &len);
    api_respond(req, 200, "text/plain", body, len);
}

struct later {
    uv_timer_t timer;
    struct api_request *req;
};

static void later_closed(uv_handle_t *h)
{
    free(h->data);
}

static void later_fire(uv_timer_t *t)
{
    struct later *l = t->data;
    on_echo(l->req, NULL);
    uv_close((uv_handle_t *)&l->timer, later_closed);
}

/* Answers with the request's body, 20 ms later: what was pipelined after it must wait. */
static void on_later(struct api_request *req, void *ctx)
{
    struct later *l = xcalloc(1, sizeof *l);
    l->req = req;
    uv_timer_init(ctx, &l->timer);
    l->timer.data = l;
    uv_timer_start(&l->timer, later_fire, 20, 0);
}

/* Answers with api_respond_error(err from ?err=N): ?detail=1 adds the handler's own words. */
static void on_fail(struct api_request *req, void *ctx)
{
    (void)ctx;
    const char *err = api_request_query(req, "err"), *detail = api_request_query(req, "detail");
    int e = err ? atoi(err) : 0;
    if (detail)
        api_respond_error(req, e, "cannot keep the thing: %s", skiff_strerror(e));
    else
        api_respond_error(req, e, NULL);
}

static struct api *start_api(struct fixture *fx, unsigned per_client)
{
    char addr[64];
    fx->port = loop_socket_free_port();
    snprintf(addr, sizeof addr, "127.0.0.1:%d", fx->port);
    struct api_config cfg = {.home = fx->home,
                             .addr = addr,
                             .admin_token = "admin-token",
                             .max_connections_per_client = per_client};
    struct api *api = NULL;
    assert_int_equal(api_new(&fx->loop, &cfg, &api), 0);
    api_set_instance_check(api, check_live, fx);
    api_route_add(api, "POST", "/v1/topics/*/events", API_PERM(AUTH_PERM_PUBLISH) | API_SCOPE_SPACE, on_publish, NULL);
    api_route_add(api, "POST", "/v1/big", API_PERM(AUTH_PERM_PUBLISH) | API_SCOPE_SPACE, on_big,
                  NULL);
    api_route_add(api, "POST", "/v1/echo", API_PERM(AUTH_PERM_PUBLISH) | API_SCOPE_SPACE, on_echo,
                  NULL);
    api_route_add(api, "GET", "/v1/fail", API_PERM(AUTH_PERM_PUBLISH) | API_SCOPE_SPACE, on_fail,
                  NULL);
    api_route_add(api, "POST", "/v1/later", API_PERM(AUTH_PERM_PUBLISH) | API_SCOPE_SPACE, on_later,
                  &fx->loop);
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
    return loop_socket_connect(fx->port);
}

static void exchange(struct fixture *fx, int s, const char *text, char *out, size_t size)
{
    loop_socket_exchange(&fx->loop, s, text, out, size);
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

static void on_ok(struct api_request *req, void *ctx)
{
    (void)ctx;
    /* the place the permission was decided in, for the test to see */
    const char *space = api_request_space(req), *org = api_request_org(req);
    char body[128];
    snprintf(body, sizeof body, "org=%s space=%s", org ? org : "-", space ? space : "-");
    api_respond(req, 200, "text/plain", body, strlen(body));
}

static int status_of(struct fixture *fx, const char *method, const char *path, const char *token,
                     char *out, size_t size)
{
    char req[1024];
    snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: x\r\n%s%s%sContent-Length: 0\r\n\r\n",
             method, path, token ? "Authorization: Bearer " : "", token ? token : "",
             token ? "\r\n" : "");
    int s = connect_api(fx);
    exchange(fx, s, req, out, size);
    close(s);
    int status = 0;
    sscanf(out, "HTTP/1.1 %d", &status);
    return status;
}

/* Every route names a permission and a place; the API decides before the handler: 401 without
 * a valid token, 404 for a caller with no role in the place, 403 for one whose roles there do
 * not grant it, and the handler only for the rest. */
static void test_authorization_step(void **state)
{
    struct fixture *fx = *state;
    char *db = xasprintf("%s/skiff.db", fx->home), err[256];
    struct store *st = NULL;
    assert_int_equal(store_open(db, err, sizeof err, &st), 0);
    char *pw = NULL;
    struct auth *auth = NULL;
    assert_int_equal(auth_open(st, &pw, &auth), 0);
    free(pw);
    const struct auth_org *org = NULL;
    assert_int_equal(auth_org_create(auth, "acme", &org), 0);
    char org_guid[37];
    snprintf(org_guid, sizeof org_guid, "%s", org->guid);
    const struct auth_space *space = NULL;
    assert_int_equal(auth_space_create(auth, org_guid, "prod", &space), 0);
    char space_guid[37];
    snprintf(space_guid, sizeof space_guid, "%s", space->guid);
    char hash[AUTH_PASSWORD_HASH_MAX];
    assert_int_equal(auth_password_hash("a long password", hash), 0);
    char dev_token[AUTH_TOKEN_TEXT_MAX], aud_token[AUTH_TOKEN_TEXT_MAX];
    char out_token[AUTH_TOKEN_TEXT_MAX], refresh[AUTH_TOKEN_TEXT_MAX];
    struct {
        const char *name;
        int role;
        char *token;
    } users[] = {{"dev", AUTH_ROLE_SPACE_DEVELOPER, dev_token},
                 {"aud", AUTH_ROLE_SPACE_AUDITOR, aud_token},
                 {"outsider", -1, out_token}};
    for (size_t i = 0; i < 3; i++) {
        const struct auth_user *u = NULL;
        assert_int_equal(auth_user_create(auth, users[i].name, hash, false, &u), 0);
        char guid[37];
        snprintf(guid, sizeof guid, "%s", u->guid);
        if (users[i].role >= 0)
            assert_int_equal(auth_role_set(auth, guid, org_guid, space_guid,
                                           (enum auth_role)users[i].role),
                             0);
        assert_int_equal(auth_login(auth, guid, users[i].token, refresh), 0);
    }

    char addr[64];
    fx->port = loop_socket_free_port();
    snprintf(addr, sizeof addr, "127.0.0.1:%d", fx->port);
    struct api_config cfg = {
        .home = fx->home, .addr = addr, .admin_token = "admin-token", .auth = auth, .store = st};
    assert_int_equal(api_new(&fx->loop, &cfg, &fx->api), 0);
    api_route_add(fx->api, "GET", "/v1/info", API_PERM(AUTH_PERM_PUBLIC), on_ok, NULL);
    api_route_add(fx->api, "GET", "/v1/apps", API_PERM(AUTH_PERM_SPACE_READ) | API_SCOPE_SPACE,
                  on_ok, NULL);
    api_route_add(fx->api, "POST", "/v1/apps", API_PERM(AUTH_PERM_SPACE_DEVELOP) | API_SCOPE_SPACE,
                  on_ok, NULL);
    api_route_add(fx->api, "GET", "/v1/orgs/*/users", API_PERM(AUTH_PERM_ORG_READ) | API_SCOPE_ORG,
                  on_ok, NULL);
    api_route_add(fx->api, "GET", "/v1/users", API_PERM(AUTH_PERM_ADMIN), on_ok, NULL);
    assert_int_equal(api_listen(fx->api, err, sizeof err), 0);

    char out[4096];
    const char *Q = "/v1/apps?space=acme%2Fprod";
    assert_int_equal(status_of(fx, "GET", "/v1/info", NULL, out, sizeof out), 200);
    assert_int_equal(status_of(fx, "GET", Q, NULL, out, sizeof out), 401);
    assert_int_equal(status_of(fx, "GET", Q, "skiffa_not-a-token", out, sizeof out), 401);
    assert_int_equal(status_of(fx, "GET", Q, dev_token, out, sizeof out), 200);
    char expect[128];
    snprintf(expect, sizeof expect, "org=%s space=%s", org_guid, space_guid);
    assert_non_null(strstr(out, expect));
    assert_int_equal(status_of(fx, "POST", Q, dev_token, out, sizeof out), 200);
    assert_int_equal(status_of(fx, "GET", Q, aud_token, out, sizeof out), 200);
    assert_int_equal(status_of(fx, "POST", Q, aud_token, out, sizeof out), 403);
    assert_non_null(strstr(out, "SpaceDeveloper"));
    assert_int_equal(status_of(fx, "GET", Q, out_token, out, sizeof out), 404);
    assert_int_equal(status_of(fx, "POST", Q, out_token, out, sizeof out), 404);
    /* a space that does not exist looks like one the caller cannot see */
    assert_int_equal(status_of(fx, "GET", "/v1/apps?space=acme%2Fnope", dev_token, out,
                               sizeof out),
                     404);
    assert_int_equal(status_of(fx, "GET", "/v1/orgs/acme/users", aud_token, out, sizeof out), 200);
    assert_int_equal(status_of(fx, "GET", "/v1/orgs/acme/users", out_token, out, sizeof out), 404);
    assert_int_equal(status_of(fx, "GET", "/v1/users", dev_token, out, sizeof out), 403);
    assert_int_equal(status_of(fx, "GET", "/v1/users", "admin-token", out, sizeof out), 200);
    /* a token ended is refused at once */
    assert_int_equal(auth_token_revoke_text(auth, dev_token), 0);
    assert_int_equal(status_of(fx, "GET", Q, dev_token, out, sizeof out), 401);

    bool closed = false;
    api_close(fx->api, on_api_closed, &closed);
    while (!closed)
        uv_run(&fx->loop, UV_RUN_ONCE);
    api_free(fx->api);
    fx->api = NULL;
    auth_free(auth);
    store_close(st);
    free(db);
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

static void test_413_before_a_huge_body(void **state)
{
    struct fixture *fx = *state;
    fx->api = start_api(fx, 0);
    char out[4096];
    int s = connect_api(fx);
    exchange(fx, s,
             "POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n"
             "Content-Length: 9000000000\r\n\r\n",
             out, sizeof out);
    assert_true(str_has_prefix(out, "HTTP/1.1 413 "));
    assert_non_null(strstr(out, "Connection: close"));
    assert_non_null(strstr(out, "\"too_large\""));
    exchange(fx, s, NULL, out, sizeof out);
    assert_string_equal(out, "");
    close(s);
}

static void test_too_many_headers_is_431(void **state)
{
    struct fixture *fx = *state;
    fx->api = start_api(fx, 0);
    struct buf req = {0};
    buf_printf(&req, "POST /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n");
    for (int i = 0; i < 200; i++)
        buf_printf(&req, "X-H%d: v\r\n", i);
    buf_printf(&req, "Content-Length: 0\r\n\r\n");
    char out[4096];
    int s = connect_api(fx);
    exchange(fx, s, req.data, out, sizeof out);
    assert_true(str_has_prefix(out, "HTTP/1.1 431 "));
    assert_non_null(strstr(out, "\"too_large\""));
    buf_free(&req);
    close(s);
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

static void test_big_answer_then_pipelined_one(void **state)
{
    struct fixture *fx = *state;
    fx->api = start_api(fx, 0);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int small = 4096;
    setsockopt(s, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)fx->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(s, (struct sockaddr *)&a, sizeof a);
    assert_true(rc == 0 || errno == EINPROGRESS);
    const char *two = "POST /v1/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token\r\n"
                      "Content-Length: 0\r\n\r\n"
                      "POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                      "admin-token\r\nContent-Length: 0\r\n\r\n";
    for (int i = 0; i < 100; i++) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        if (send(s, two, strlen(two), MSG_NOSIGNAL) >= 0)
            break;
        usleep(1000);
    }
    /* read slowly enough that the server must queue most of the first answer */
    size_t cap = BIG_ANSWER_BYTES + 4096, got = 0;
    char *in = xmalloc(cap + 1);
    const char *second = NULL;
    int64_t deadline = time_mono_ms() + 10000;
    while (time_mono_ms() < deadline && !second) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        ssize_t n = recv(s, in + got, cap - got, 0);
        if (n > 0) {
            got += (size_t)n;
            in[got] = '\0';
            char *head_end = strstr(in, "\r\n\r\n");
            if (head_end && got >= (size_t)(head_end + 4 - in) + BIG_ANSWER_BYTES) {
                char *rest = head_end + 4 + BIG_ANSWER_BYTES;
                if (strstr(rest, "\r\n\r\nadmin"))
                    second = rest;
            }
        } else if (n == 0) {
            break;
        } else {
            usleep(200);
        }
    }
    assert_non_null(second);
    assert_true(str_has_prefix(in, "HTTP/1.1 200 "));
    char *body = strstr(in, "\r\n\r\n") + 4;
    for (size_t i = 0; i < BIG_ANSWER_BYTES; i++)
        if (body[i] != (char)('a' + i % 26))
            fail_msg("byte %zu of the first answer is wrong", i);
    assert_true(str_has_prefix(second, "HTTP/1.1 202 "));
    free(in);
    close(s);
}

/* Several requests in one write, some answered later than those after them could be, the last
 * answered from its head (which closes the connection): the answers come in the order of the
 * requests. */
static void test_pipelined_requests_are_answered_in_order(void **state)
{
    struct fixture *fx = *state;
    fx->api = start_api(fx, 0);
#define AUTH "Host: x\r\nAuthorization: Bearer admin-token\r\n"
    const char *all = "POST /v1/later HTTP/1.1\r\n" AUTH "Content-Length: 5\r\n\r\nfirst"
                      "POST /v1/echo HTTP/1.1\r\n" AUTH "Content-Length: 6\r\n\r\nsecond"
                      "POST /v1/later HTTP/1.1\r\n" AUTH "Content-Length: 5\r\n\r\nthird"
                      "POST /v1/echo HTTP/1.1\r\n" AUTH "Content-Length: 6\r\n\r\nfourth"
                      "GET /v1/nowhere HTTP/1.1\r\n" AUTH "\r\n";
#undef AUTH
    int s = connect_api(fx);
    char in[16384];
    size_t got = 0;
    exchange(fx, s, all, in, sizeof in);
    got = strlen(in);
    int64_t deadline = time_mono_ms() + 5000;
    while (time_mono_ms() < deadline && !strstr(in, "not_found")) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        ssize_t n = recv(s, in + got, sizeof in - 1 - got, MSG_DONTWAIT);
        if (n > 0) {
            got += (size_t)n;
            in[got] = '\0';
        } else if (n == 0) {
            break;
        } else {
            struct pollfd p = {.fd = s, .events = POLLIN};
            poll(&p, 1, 5);
        }
    }
    const char *want[] = {"\r\n\r\nfirst", "\r\n\r\nsecond", "\r\n\r\nthird", "\r\n\r\nfourth",
                          "HTTP/1.1 404 "};
    const char *at = in;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const char *next = strstr(at, want[i]);
        if (!next)
            fail_msg("answer %zu (%s) missing or out of order in:\n%s", i + 1, want[i] + 4, in);
        at = next + strlen(want[i]);
    }
    close(s);
}

/* What a handler answers for an error: the status and code of the one table's row, for an
 * enum skiff_err and for a part's negative errno alike, and the table's words or its own. */
static void check_error_answer(struct fixture *fx, int err, bool detail, int status,
                               const char *code, const char *words)
{
    char path[128], out[4096];
    snprintf(path, sizeof path, "/v1/fail?err=%d%s", err, detail ? "&detail=1" : "");
    int got = status_of(fx, "GET", path, "admin-token", out, sizeof out);
    char want[64];
    snprintf(want, sizeof want, "\"code\":\"%s\"", code);
    if (got != status || !strstr(out, want) || !strstr(out, words))
        fail_msg("error %d: want %d %s \"%s\", got:\n%s", err, status, code, words, out);
}

static void test_errors_are_answered_from_the_one_table(void **state)
{
    struct fixture *fx = *state;
    fx->api = start_api(fx, 0);
    check_error_answer(fx, SKIFF_E_QUOTA, false, 422, "quota_exceeded", "over the quota");
    check_error_answer(fx, -ENOENT, false, 404, "not_found", "not found");
    check_error_answer(fx, -EEXIST, false, 409, "name_taken", "exists already");
    check_error_answer(fx, -EIO, true, 500, "internal",
                       "cannot keep the thing: a disk or a backend failed");
    check_error_answer(fx, -ENOSPC, true, 507, "insufficient_storage", "the disk is full");
    check_error_answer(fx, -EAGAIN, false, 503, "busy", "retry in a moment");
    check_error_answer(fx, -ESRCH, false, 503, "no_instance", "stopping");
    /* an errno the table does not have is Skiff's failure, in the C library's words */
    check_error_answer(fx, -ENOTSOCK, true, 500, "internal", strerror(ENOTSOCK));
    /* nor does an out-of-range value give a client anything but a 500 */
    check_error_answer(fx, 9999, false, 500, "internal", "unknown error");
}

/* An API on the store with its copy of the cells' tokens and grants attached. */
static struct api *cells_api(struct fixture *fx, struct store *st)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", loop_socket_free_port());
    struct api_config cfg = {.home = fx->home, .addr = addr, .admin_token = "admin-token"};
    struct api *api = NULL;
    assert_int_equal(api_new(&fx->loop, &cfg, &api), 0);
    api_cells_attach(api, api_cells_new(st));
    return api;
}

static void cells_api_free(struct fixture *fx, struct api *api)
{
    bool closed = false;
    api_close(api, on_api_closed, &closed);
    while (!closed)
        uv_run(&fx->loop, UV_RUN_ONCE);
    api_free(api);
}

/* Waits (10 s at most) until the store has heard another writer's news of the family (news of
 * a kind its copy holds whole counts once that kind is read again: its writer's reads reaped,
 * as skiffd's loop does). */
static void wait_news(struct store *st, const char *family, uint64_t before)
{
    for (int i = 0; i < 1000 && store_doc_news_kind(st, family) == before; i++) {
        store_async_reap(st);
        usleep(10 * 1000);
    }
    assert_true(store_doc_news_kind(st, family) != before);
}

/* Waits (10 s at most) until the API's copy says whether cell may read digest as wanted. */
static void wait_may_read(struct api *api, struct store *st, const char *cell, const char *digest,
                          bool want)
{
    for (int i = 0; i < 1000 && api_cell_may_read(api, cell, digest) != want; i++) {
        store_async_reap(st);
        usleep(10 * 1000);
    }
    assert_true(api_cell_may_read(api, cell, digest) == want);
}

/* Two controllers on one PostgreSQL store: one's copy of the cells' tokens and grants is read
 * again when the other writes a grant or a token (its own kinds), never for the other's
 * heartbeats (kind "cell", written every second by every skiffd) nor its mappings' counts. */
static void test_the_cells_copy_is_read_again_on_its_own_kinds_only(void **state)
{
    struct fixture *fx = *state;
    char *url = pg_throwaway_database(), err[256];
    struct store *mine = NULL, *other = NULL;
    assert_int_equal(store_open(url, err, sizeof err, &mine), 0);
    assert_int_equal(store_open(url, err, sizeof err, &other), 0);
    struct api *api = cells_api(fx, mine), *peer = cells_api(fx, other);
    struct api_cells *copy = api_cells_of(api);
    const char *cell = "0123456789abcdef0123456789abcdef";
    const char *digest = "sha256:"
                         "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0";

    assert_false(api_cell_may_read(api, cell, digest));
    assert_int_equal(api_cells_reads(copy), 1);
    assert_false(api_cell_may_read(api, cell, digest)); /* nothing new: not read again */
    assert_int_equal(api_cells_reads(copy), 1);

    /* the other controller grants: read again once on its news, and the grant is seen (its
     * news waited for first: a refusal before it would read the database) */
    uint64_t grants = store_doc_news_kind(mine, "cell.grants");
    assert_int_equal(api_cell_grant(peer, cell, digest, NULL), 0);
    wait_news(mine, "cell.grants", grants);
    assert_true(api_cell_may_read(api, cell, digest));
    assert_int_equal(api_cells_reads(copy), 2);

    /* heartbeats and counts of the other's: heard, and no reason to read the copy again */
    uint64_t beats = store_doc_news_kind(mine, "cell");
    uint64_t counts = store_doc_news_kind(mine, "event_mapping");
    for (int i = 0; i < 20; i++) {
        char beat[128];
        snprintf(beat, sizeof beat, "{\"id\":\"%s\",\"heartbeat_at_ms\":%d}", cell, i);
        assert_int_equal(store_doc_put(other, "cell", cell, beat), 0);
        assert_int_equal(store_doc_put(other, "event_mapping", "m", "{\"stats\":{}}"), 0);
    }
    wait_news(mine, "cell", beats);
    wait_news(mine, "event_mapping", counts);
    assert_true(api_cell_may_read(api, cell, digest));
    char token[AUTH_CELL_TOKEN_LEN + 1], named[AUTH_CELL_ID_LEN + 1];
    snprintf(token, sizeof token, AUTH_CELL_TOKEN_PREFIX "%s%064d", cell, 7);
    assert_int_equal(api_cell_token_check(api, token, named), -EACCES);
    assert_int_equal(api_cells_reads(copy), 2);

    /* the other withdraws: read again, refused */
    api_cell_withdraw(peer, cell, digest);
    wait_may_read(api, mine, cell, digest, false);
    assert_int_equal(api_cells_reads(copy), 3);

    /* a token the other recorded (its hash, as POST /v1/cell_tokens keeps it) is accepted */
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)token, strlen(token), NULL, 0);
    char hex[2 * crypto_generichash_BYTES + 1], doc[256];
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    snprintf(doc, sizeof doc, "{\"blake2b\":\"%s\",\"created_at\":1}", hex);
    uint64_t tokens = store_doc_news_kind(mine, "cell.tokens");
    assert_int_equal(store_doc_put(other, "cell.tokens", cell, doc), 0);
    wait_news(mine, "cell.tokens", tokens);
    assert_int_equal(api_cell_token_check(api, token, named), 0);
    assert_string_equal(named, cell);
    assert_int_equal(api_cells_reads(copy), 4);

    cells_api_free(fx, peer);
    cells_api_free(fx, api);
    store_close(other);
    store_close(mine);
    free(url);
}

/* Waits (10 s at most) until the API accepts cell's token. */
static void wait_token(struct api *api, const char *token)
{
    char named[AUTH_CELL_ID_LEN + 1];
    for (int i = 0; i < 1000 && api_cell_token_check(api, token, named) < 0; i++)
        usleep(5 * 1000);
    assert_int_equal(api_cell_token_check(api, token, named), 0);
}

/* Waits (10 s at most) until the API lets cell read digest. */
static void wait_granted(struct api *api, const char *cell, const char *digest)
{
    for (int i = 0; i < 1000 && !api_cell_may_read(api, cell, digest); i++)
        usleep(5 * 1000);
    assert_true(api_cell_may_read(api, cell, digest));
}

/* A token or a grant another controller wrote a moment ago, whose news has not come (here:
 * written with the feed's triggers off, so none ever comes), is read from the database before
 * a refusal: a cell fetches from any controller as soon as the leader placed it. Such reads
 * are made at most 50 a second after a burst of 20, however many refusals: made-up tokens cost
 * the database a bounded load. */
static void test_a_refusal_first_reads_what_the_feed_has_not_told_of(void **state)
{
    struct fixture *fx = *state;
    char *url = pg_throwaway_database(), err[256];
    struct store *mine = NULL;
    assert_int_equal(store_open(url, err, sizeof err, &mine), 0);
    struct api *api = cells_api(fx, mine);
    struct api_cells *copy = api_cells_of(api);
    const char *cell = "0123456789abcdef0123456789abcdef";
    const char *droplet = "sha256:"
                          "d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0d0";
    const char *layer = "sha256:"
                        "1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a";
    char token[AUTH_CELL_TOKEN_LEN + 1], named[AUTH_CELL_ID_LEN + 1];
    snprintf(token, sizeof token, AUTH_CELL_TOKEN_PREFIX "%s%064d", cell, 42);
    assert_int_equal(api_cell_token_check(api, token, named), -EACCES);
    assert_false(api_cell_may_read(api, cell, droplet));
    assert_int_equal(api_cells_reads(copy), 1);

    /* the token, the grant, then the grant listing a layer: each seen with no news */
    unsigned char hash[crypto_generichash_BYTES];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)token, strlen(token), NULL, 0);
    char hex[2 * crypto_generichash_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, hash, sizeof hash);
    char *sql = xasprintf("SET session_replication_role = replica;"
                          "INSERT INTO documents VALUES ('cell.tokens', '%s',"
                          " '{\"blake2b\": \"%s\", \"created_at\": 1}', 0)",
                          cell, hex);
    pg_throwaway_sql(url, sql);
    free(sql);
    wait_token(api, token);
    long long until = (long long)time_now_ms() + 600000;
    sql = xasprintf("SET session_replication_role = replica;"
                    "INSERT INTO documents VALUES ('cell.grants', '%s/%s', '{\"until\": %lld}', 0)",
                    cell, droplet, until);
    pg_throwaway_sql(url, sql);
    free(sql);
    wait_granted(api, cell, droplet);
    assert_false(api_cell_may_read(api, cell, layer));
    sql = xasprintf("SET session_replication_role = replica;"
                    "UPDATE documents SET body = '{\"until\": %lld, \"blobs\": [\"%s\"]}'"
                    " WHERE kind = 'cell.grants'",
                    until, layer);
    pg_throwaway_sql(url, sql);
    free(sql);
    wait_granted(api, cell, layer);
    assert_int_equal(api_cells_reads(copy), 1); /* no news came: every read was a catch-up */

    /* refusals for 200 ms on end: a burst of 20 reads at most, then one per 20 ms, the rest
     * refused unread */
    uint64_t refused0 = 0, refused = 0, calls = 0;
    uint64_t before = api_cells_catch_ups(copy, &refused0);
    int64_t t0 = time_now_ms(), elapsed = 0;
    for (; elapsed < 200; elapsed = time_now_ms() - t0, calls++) {
        snprintf(token, sizeof token, AUTH_CELL_TOKEN_PREFIX "%s%064d", cell, (int)calls + 1000);
        assert_int_equal(api_cell_token_check(api, token, named), -EACCES);
    }
    uint64_t reads = api_cells_catch_ups(copy, &refused) - before;
    assert_true(reads >= 10); /* what 200 ms gives back alone, and what was left of the burst */
    assert_true(reads <= (uint64_t)(20 + elapsed / 20 + 1));
    assert_true(refused - refused0 > reads);
    assert_int_equal(reads + (refused - refused0), calls);

    cells_api_free(fx, api);
    store_close(mine);
    free(url);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_instance_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_authorization_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_permissions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_401_before_a_huge_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_413_before_a_huge_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_too_many_headers_is_431, setup, teardown),
        cmocka_unit_test_setup_teardown(test_per_client_cap_closes_the_longest_idle, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_big_answer_then_pipelined_one, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_requests_are_answered_in_order, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_errors_are_answered_from_the_one_table, setup,
                                        teardown),
    };
    const struct CMUnitTest pg_tests[] = {
        cmocka_unit_test_setup_teardown(test_a_refusal_first_reads_what_the_feed_has_not_told_of,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_the_cells_copy_is_read_again_on_its_own_kinds_only,
                                        setup, teardown),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    failed += cmocka_run_group_tests_name("the API on PostgreSQL", pg_tests, pg_throwaway_start,
                                          pg_throwaway_stop);
    return failed;
}
