/* Unit tests for the HTTP server on its own, with a small owner: the owner's request type
 * extends the server's, listener tags reach the owner, a refusal from on_head is answered
 * before the body is read, bodies go to memory or to a file under tmp_dir (removed with the
 * request), on_free runs once per request, a client that leaves aborts the request it was
 * waiting for, a path with an escaped NUL never reaches the owner, and pipelined requests are
 * handled together (up to HTTP_PIPELINE_MAX) and answered in their order. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "loop_socket.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "http/server.h"

#define BIG_ANSWER (200u << 10)

struct owner_request {
    struct http_request http;
    char *note; /* the owner's own field, freed in on_free */
};

struct fixture {
    uv_loop_t loop;
    char tmp[64];
    int port[2];
    struct http_server *server;
    int heads, requests, frees, aborts;
    char last_body_path[256];
    struct owner_request *held; /* a request answered only when the test says */
    struct owner_request *parked[2 * HTTP_PIPELINE_MAX]; /* /park: answered when the test says */
    int nparked;
    int taken_fd;               /* http_upgrade: the socket handed over, -2 before */
    char early[64];             /* ... and what came after the request */
};

static void on_head(struct http_request *req, void *ctx)
{
    struct fixture *fx = ctx;
    struct owner_request *r = (struct owner_request *)req;
    fx->heads++;
    r->note = xasprintf("listener %d", req->listener);
    if (!strcmp(req->path, "/refuse")) {
        http_request_refuse(req, SKIFF_E_FORBIDDEN, "not for you");
        return;
    }
    if (!strcmp(req->path, "/own")) {
        http_request_refuse_with(req, 412, "application/json", "{\"description\":\"no\"}");
        return;
    }
    req->body_limit = 64;
    req->body_to_file = !strcmp(req->path, "/file");
}

static void on_abort(void *ctx)
{
    struct fixture *fx = ctx;
    fx->aborts++;
    http_respond(&fx->held->http, 200, "text/plain", "late", 4);
    fx->held = NULL;
}

/* A parked request whose client left: the owner still ends it, as an owner must. */
static void on_park_abort(void *ctx)
{
    struct fixture *fx = ctx;
    fx->aborts++;
    for (int i = 0; i < fx->nparked; i++)
        if (fx->parked[i] && fx->parked[i]->http.aborted) {
            http_respond(&fx->parked[i]->http, 200, "text/plain", "gone", 4);
            fx->parked[i] = NULL;
        }
}

static void on_taken(void *ctx, int fd, const char *early, size_t len)
{
    struct fixture *fx = ctx;
    fx->taken_fd = fd;
    snprintf(fx->early, sizeof fx->early, "%.*s", (int)len, early ? early : "");
}

static void on_request(struct http_request *req, void *ctx)
{
    struct fixture *fx = ctx;
    struct owner_request *r = (struct owner_request *)req;
    fx->requests++;
    if (!strcmp(req->path, "/upgrade")) {
        http_upgrade(req, "test-proto", on_taken, fx);
        return;
    }
    if (!strcmp(req->path, "/park")) {
        assert_true(fx->nparked < 2 * HTTP_PIPELINE_MAX);
        fx->parked[fx->nparked++] = r;
        http_request_on_abort(req, on_park_abort, fx);
        return;
    }
    if (!strcmp(req->path, "/big")) {
        char *big = xmalloc(BIG_ANSWER);
        memset(big, 'b', BIG_ANSWER);
        http_respond(req, 200, "text/plain", big, BIG_ANSWER);
        free(big);
        return;
    }
    if (!strcmp(req->path, "/hold")) {
        fx->held = r;
        http_request_on_abort(req, on_abort, fx);
        return;
    }
    if (req->body_path) {
        snprintf(fx->last_body_path, sizeof fx->last_body_path, "%s", req->body_path);
        struct stat st;
        assert_int_equal(stat(req->body_path, &st), 0);
        assert_int_equal((uint64_t)st.st_size, req->body_size);
    }
    char out[256];
    int n = snprintf(out, sizeof out, "%s %s %s body=%.*s", r->note, req->method, req->path,
                     (int)req->body.len, req->body.data ? req->body.data : "");
    http_respond(req, 200, "text/plain", out, (size_t)n);
}

static void on_free(struct http_request *req, void *ctx)
{
    struct fixture *fx = ctx;
    fx->frees++;
    free(((struct owner_request *)req)->note);
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

static int setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof *fx);
    fx->taken_fd = -2;
    uv_loop_init(&fx->loop);
    snprintf(fx->tmp, sizeof fx->tmp, "/tmp/skiff-http-XXXXXX");
    if (!mkdtemp(fx->tmp))
        return -1;
    struct http_server_config cfg = {.tmp_dir = fx->tmp,
                                     .request_size = sizeof(struct owner_request),
                                     .name = "the test server",
                                     .on_head = on_head,
                                     .on_request = on_request,
                                     .on_free = on_free,
                                     .ctx = fx};
    if (http_server_new(&fx->loop, &cfg, &fx->server) < 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        char addr[64];
        fx->port[i] = loop_socket_free_port();
        snprintf(addr, sizeof addr, "127.0.0.1:%d", fx->port[i]);
        if (http_server_listen(fx->server, addr, 10 + i) < 0)
            return -1;
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    bool closed = false;
    http_server_close(fx->server, on_closed, &closed);
    while (!closed)
        uv_run(&fx->loop, UV_RUN_ONCE);
    http_server_free(fx->server);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    rm_rf(fx->tmp);
    free(fx);
    return 0;
}

static void exchange(struct fixture *fx, int s, const char *text, char *out, size_t size)
{
    loop_socket_exchange(&fx->loop, s, text, out, size);
}

/* Runs the loop until cond holds, at most 3 s. */
#define RUN_UNTIL(fx, cond)                                                                        \
    do {                                                                                           \
        int64_t until_ = time_mono_ms() + 3000;                                                    \
        while (!(cond) && time_mono_ms() < until_)                                                 \
            uv_run(&(fx)->loop, UV_RUN_NOWAIT);                                                    \
        assert_true(cond);                                                                         \
    } while (0)

static void test_owner_sees_its_fields_and_listener_tags(void **state)
{
    struct fixture *fx = *state;
    char out[1024];
    for (int i = 0; i < 2; i++) {
        int s = loop_socket_connect(fx->port[i]);
        exchange(fx, s, "POST /a%2Fb HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi", out,
                 sizeof out);
        char want[64];
        snprintf(want, sizeof want, "listener %d POST /a/b body=hi", 10 + i);
        assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
        assert_non_null(strstr(out, want));
        close(s);
    }
    RUN_UNTIL(fx, fx->frees == 2);
    assert_int_equal(fx->requests, 2);
}

static void test_refusal_comes_before_the_body(void **state)
{
    struct fixture *fx = *state;
    char out[1024];
    int s = loop_socket_connect(fx->port[0]);
    /* a body of 1 GB is announced and never sent: the answer must not wait for it */
    exchange(fx, s, "POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n", out,
             sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 403 Forbidden\r\n"));
    assert_non_null(strstr(out, "not for you"));
    assert_non_null(strstr(out, "Connection: close"));
    assert_int_equal(fx->requests, 0);
    close(s);
    RUN_UNTIL(fx, fx->frees == 1);
    /* a refusal in the owner's own words */
    s = loop_socket_connect(fx->port[0]);
    exchange(fx, s, "POST /own HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 412 "));
    assert_non_null(strstr(out, "\r\n\r\n{\"description\":\"no\"}"));
    close(s);
    RUN_UNTIL(fx, fx->frees == 2);
}

static void test_body_over_the_owners_limit_is_413(void **state)
{
    struct fixture *fx = *state;
    char out[1024];
    int s = loop_socket_connect(fx->port[0]);
    exchange(fx, s, "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 65\r\n\r\n", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 413 "));
    assert_non_null(strstr(out, "limit of 64 bytes"));
    close(s);
    /* chunked: no length to refuse from the head, refused once the body passes the limit */
    s = loop_socket_connect(fx->port[0]);
    char chunk[256];
    snprintf(chunk, sizeof chunk,
             "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n%065d\r\n", 0);
    exchange(fx, s, chunk, out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 413 "));
    close(s);
    assert_int_equal(fx->requests, 0);
}

static void test_body_to_a_file_is_removed_with_the_request(void **state)
{
    struct fixture *fx = *state;
    char out[1024];
    int s = loop_socket_connect(fx->port[0]);
    exchange(fx, s, "PUT /file HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", out,
             sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
    assert_true(str_has_prefix(fx->last_body_path, fx->tmp));
    RUN_UNTIL(fx, fx->frees == 1);
    assert_int_equal(access(fx->last_body_path, F_OK), -1);
    close(s);
}

static void test_client_that_leaves_aborts_its_request(void **state)
{
    struct fixture *fx = *state;
    int s = loop_socket_connect(fx->port[1]);
    const char *text = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
    int64_t deadline = time_mono_ms() + 3000;
    while (send(s, text, strlen(text), MSG_NOSIGNAL) < 0 && time_mono_ms() < deadline)
        uv_run(&fx->loop, UV_RUN_NOWAIT);
    RUN_UNTIL(fx, fx->held != NULL);
    close(s);
    RUN_UNTIL(fx, fx->aborts == 1);
    RUN_UNTIL(fx, fx->frees == 1);
}

static void test_escaped_nul_never_reaches_the_owner(void **state)
{
    struct fixture *fx = *state;
    char out[1024];
    int s = loop_socket_connect(fx->port[0]);
    exchange(fx, s, "GET /a%00b HTTP/1.1\r\nHost: x\r\n\r\n", out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 400 "));
    assert_int_equal(fx->heads, 0);
    close(s);
    RUN_UNTIL(fx, fx->frees == 1);
}

static void test_pipelined_requests_answered_in_order(void **state)
{
    struct fixture *fx = *state;
    char out[4096];
    int s = loop_socket_connect(fx->port[0]);
    exchange(fx, s, "GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n", out,
             sizeof out);
    RUN_UNTIL(fx, fx->requests == 2);
    size_t have = strlen(out);
    if (!strstr(out, "/two")) {
        char more[2048];
        exchange(fx, s, NULL, more, sizeof more);
        snprintf(out + have, sizeof out - have, "%s", more);
    }
    char *one = strstr(out, "GET /one"), *two = strstr(out, "GET /two");
    assert_non_null(one);
    assert_non_null(two);
    assert_true(one < two);
    close(s);
}

/* Reads from s, running the loop, until want appears in what came or 3 s pass. */
static void read_until(struct fixture *fx, int s, char *out, size_t size, const char *want)
{
    size_t have = strlen(out);
    int64_t deadline = time_mono_ms() + 3000;
    while (!strstr(out, want) && time_mono_ms() < deadline && have + 1 < size) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        ssize_t n = recv(s, out + have, size - 1 - have, MSG_DONTWAIT);
        if (n > 0)
            have += (size_t)n;
        out[have] = '\0';
        if (n == 0)
            break;
    }
    assert_non_null(strstr(out, want));
}

/* Sends all of data (once), running the loop meanwhile, at most 3 s. */
static void send_all(struct fixture *fx, int s, const char *data, size_t len)
{
    int64_t deadline = time_mono_ms() + 3000;
    while (len > 0 && time_mono_ms() < deadline) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        ssize_t n = send(s, data, len, MSG_NOSIGNAL);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
        }
    }
    assert_int_equal(len, 0);
}

/* Runs the loop for ms (to show that something does not happen in that time). */
static void run_for(struct fixture *fx, int ms)
{
    int64_t until = time_mono_ms() + ms;
    while (time_mono_ms() < until) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
}

/* The requests after an unanswered one are handed over at once (a slow request does not hold
 * back the handling of the ones behind it), but their answers wait for it: out in order. */
static void test_pipelined_requests_handled_together_answered_in_order(void **state)
{
    struct fixture *fx = *state;
    int s = loop_socket_connect(fx->port[0]);
    const char *reqs = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"
                       "GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                       "POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    send_all(fx, s, reqs, strlen(reqs));
    RUN_UNTIL(fx, fx->requests == 3);
    run_for(fx, 50);
    char out[4096] = "";
    assert_int_equal(recv(s, out, sizeof out - 1, MSG_DONTWAIT), -1); /* nothing before /hold's */
    http_respond(&fx->held->http, 200, "text/plain", "held answer", 11);
    fx->held = NULL;
    read_until(fx, s, out, sizeof out, "body=hi");
    char *held = strstr(out, "held answer"), *one = strstr(out, "GET /one"),
         *two = strstr(out, "POST /two body=hi");
    assert_non_null(held);
    assert_non_null(one);
    assert_non_null(two);
    assert_true(held < one && one < two);
    close(s);
    RUN_UNTIL(fx, fx->frees == 3);
}

/* A client that pipelines without end gets HTTP_PIPELINE_MAX requests handled at once, no
 * more; the rest are handled as answers go out; when it leaves, every one unanswered is
 * aborted and each request is freed once. */
static void test_pipelining_is_bounded_per_connection(void **state)
{
    struct fixture *fx = *state;
    int s = loop_socket_connect(fx->port[0]);
    struct buf reqs = {0};
    for (int i = 0; i < HTTP_PIPELINE_MAX + 10; i++)
        buf_puts(&reqs, "GET /park HTTP/1.1\r\nHost: x\r\n\r\n");
    send_all(fx, s, reqs.data, reqs.len);
    buf_free(&reqs);
    RUN_UNTIL(fx, fx->requests == HTTP_PIPELINE_MAX);
    run_for(fx, 50);
    assert_int_equal(fx->requests, HTTP_PIPELINE_MAX);
    /* answering the first lets one more in */
    http_respond(&fx->parked[0]->http, 200, "text/plain", "first", 5);
    fx->parked[0] = NULL;
    RUN_UNTIL(fx, fx->requests == HTTP_PIPELINE_MAX + 1);
    char out[1024] = "";
    read_until(fx, s, out, sizeof out, "first");
    close(s);
    RUN_UNTIL(fx, fx->aborts == HTTP_PIPELINE_MAX);
    RUN_UNTIL(fx, fx->frees == HTTP_PIPELINE_MAX + 1);
    RUN_UNTIL(fx, http_server_connections(fx->server) == 0);
}

/* Answers held behind an unanswered request are bounded: a client that pipelines requests
 * with large answers behind a slow one gets no more handled once about
 * HTTP_WRITE_PENDING_MAX bytes wait; the rest are handled as it reads. */
static void test_held_answers_are_bounded(void **state)
{
    struct fixture *fx = *state;
    int s = loop_socket_connect(fx->port[0]);
    struct buf reqs = {0};
    buf_puts(&reqs, "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
    for (int i = 0; i < 30; i++)
        buf_puts(&reqs, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n");
    send_all(fx, s, reqs.data, reqs.len);
    buf_free(&reqs);
    int bound = 1 + (int)(HTTP_WRITE_PENDING_MAX / BIG_ANSWER) + 1;
    RUN_UNTIL(fx, fx->requests == bound);
    run_for(fx, 100);
    assert_int_equal(fx->requests, bound); /* 6 MB of answers are not held for it */
    http_respond(&fx->held->http, 200, "text/plain", "held", 4);
    fx->held = NULL;
    /* reading everything lets every request through */
    size_t want = 30 * (size_t)BIG_ANSWER, got = 0;
    char chunk[65536];
    int64_t deadline = time_mono_ms() + 10000;
    while (got < want && time_mono_ms() < deadline) {
        uv_run(&fx->loop, UV_RUN_NOWAIT);
        ssize_t n = recv(s, chunk, sizeof chunk, MSG_DONTWAIT);
        if (n > 0)
            for (ssize_t i = 0; i < n; i++)
                got += chunk[i] == 'b';
    }
    assert_int_equal(got, want);
    assert_int_equal(fx->requests, 31);
    close(s);
}

/* A malformed request behind unanswered ones: its 400 comes after their answers, and the
 * connection closes then. */
static void test_bad_request_after_pipelined_ones_waits_its_turn(void **state)
{
    struct fixture *fx = *state;
    int s = loop_socket_connect(fx->port[0]);
    const char *reqs = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP AT ALL\r\n\r\n";
    send_all(fx, s, reqs, strlen(reqs));
    RUN_UNTIL(fx, fx->requests == 1);
    run_for(fx, 50);
    char out[4096] = "";
    assert_int_equal(recv(s, out, sizeof out - 1, MSG_DONTWAIT), -1);
    http_respond(&fx->held->http, 200, "text/plain", "held answer", 11);
    fx->held = NULL;
    read_until(fx, s, out, sizeof out, "invalid_request");
    char *held = strstr(out, "held answer"), *bad = strstr(out, "HTTP/1.1 400 ");
    assert_non_null(held);
    assert_non_null(bad);
    assert_true(held < bad);
    RUN_UNTIL(fx, http_server_connections(fx->server) == 0);
    close(s);
}

/* An upgrade request answered without an upgrade (a refusal) leaves an ordinary connection:
 * the next request on it is read as HTTP. */
static void test_upgrade_refused_then_next_request(void **state)
{
    struct fixture *fx = *state;
    int s = loop_socket_connect(fx->port[0]);
    const char *reqs = "POST /refuse HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                       "Upgrade: test-proto\r\nContent-Length: 0\r\n\r\n";
    char out[4096] = "";
    send_all(fx, s, reqs, strlen(reqs));
    read_until(fx, s, out, sizeof out, "not for you");
    assert_non_null(strstr(out, "HTTP/1.1 403 Forbidden\r\n"));
    assert_null(strstr(out, "HTTP/1.1 400 "));
    close(s);
    /* and answered by the owner (no early refusal), the connection stays open for more */
    s = loop_socket_connect(fx->port[0]);
    reqs = "POST /plain HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
           "Upgrade: test-proto\r\nContent-Length: 0\r\n\r\n";
    out[0] = '\0';
    send_all(fx, s, reqs, strlen(reqs));
    read_until(fx, s, out, sizeof out, "POST /plain");
    run_for(fx, 50);
    size_t have = strlen(out);
    ssize_t n = recv(s, out + have, sizeof out - 1 - have, MSG_DONTWAIT);
    out[have + (n > 0 ? (size_t)n : 0)] = '\0';
    assert_null(strstr(out, "HTTP/1.1 400 "));
    out[0] = '\0';
    {
        const char *after = "GET /after HTTP/1.1\r\nHost: x\r\n\r\n";
        send_all(fx, s, after, strlen(after));
    }
    read_until(fx, s, out, sizeof out, "GET /after");
    close(s);
}

/* 101, then the socket is the owner's: the bytes sent after the request come with it, both
 * directions work on it, and the server has forgotten the connection and the request. */
static void test_upgrade_hands_the_connection_over(void **state)
{
    struct fixture *fx = *state;
    char out[1024];
    int s = loop_socket_connect(fx->port[0]);
    exchange(fx, s,
             "POST /upgrade HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
             "Upgrade: test-proto\r\nContent-Length: 0\r\n\r\nEARLY",
             out, sizeof out);
    assert_non_null(strstr(out, "HTTP/1.1 101 Switching Protocols\r\n"));
    assert_non_null(strstr(out, "Upgrade: test-proto\r\n"));
    RUN_UNTIL(fx, fx->taken_fd >= 0);
    assert_string_equal(fx->early, "EARLY");
    RUN_UNTIL(fx, fx->frees == 1 && http_server_connections(fx->server) == 0);
    assert_int_equal(write(fx->taken_fd, "back", 4), 4);
    char got[16] = "";
    struct pollfd p = {.fd = s, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 3000), 1);
    assert_int_equal(recv(s, got, sizeof got - 1, 0), 4);
    assert_string_equal(got, "back");
    assert_int_equal(send(s, "more", 4, MSG_NOSIGNAL), 4);
    p.fd = fx->taken_fd;
    assert_int_equal(poll(&p, 1, 3000), 1);
    memset(got, 0, sizeof got);
    assert_int_equal(read(fx->taken_fd, got, sizeof got - 1), 4);
    assert_string_equal(got, "more");
    close(fx->taken_fd);
    close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_owner_sees_its_fields_and_listener_tags, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_refusal_comes_before_the_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_over_the_owners_limit_is_413, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_to_a_file_is_removed_with_the_request, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_client_that_leaves_aborts_its_request, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_escaped_nul_never_reaches_the_owner, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_requests_answered_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_hands_the_connection_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_requests_handled_together_answered_in_order,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelining_is_bounded_per_connection, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_request_after_pipelined_ones_waits_its_turn, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_refused_then_next_request, setup, teardown),
        cmocka_unit_test_setup_teardown(test_held_answers_are_bounded, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
