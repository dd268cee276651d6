/* Unit tests for invoker/http_client.c against a small blocking HTTP peer on a thread:
 * responses and headers, keep-alive reuse, a stale keep-alive connection resent once,
 * chunked bodies, refused connections, timeouts, and aborting calls in flight. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"
#include "http/client.h"

/* ---- the peer: one thread per connection, behaviour chosen by the request path ---------- */

struct peer {
    int listen_fd;
    int port;
    pthread_t thread;
    int connections; /* accepted so far */
    pthread_mutex_t lock;
};

static void *peer_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[8192];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (!end)
            continue;
        size_t body_len = 0;
        char *cl = strcasestr(buf, "content-length:");
        if (cl)
            body_len = (size_t)atoi(cl + 15);
        size_t total = (size_t)(end + 4 - buf) + body_len;
        while (have < total) {
            n = read(fd, buf + have, sizeof(buf) - 1 - have);
            if (n <= 0)
                goto out;
            have += (size_t)n;
        }
        buf[have] = '\0';
        const char *resp;
        bool close_after = false;
        if (!strncmp(buf, "POST /ok ", 9)) {
            resp = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCe-Id: r1\r\nCE-Type: reply\r\n\r\n"
                   "hello";
        } else if (!strncmp(buf, "POST /stale ", 12)) {
            /* answers as if the connection stays open, then closes it */
            resp = "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
            close_after = true;
        } else if (!strncmp(buf, "POST /chunked ", 14)) {
            resp =
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n"
                "\r\n";
        } else if (!strncmp(buf, "POST /fail ", 11)) {
            resp = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy";
        } else if (!strncmp(buf, "POST /eof ", 10)) {
            resp = "HTTP/1.1 200 OK\r\n\r\nuntil-close";
            close_after = true;
        } else if (!strncmp(buf, "POST /hang ", 11)) {
            /* never answers; the client gives up */
            while (read(fd, buf, sizeof(buf)) > 0)
                ;
            goto out;
        } else {
            resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        }
        if (write(fd, resp, strlen(resp)) < 0)
            break;
        memmove(buf, buf + total, have - total);
        have -= total;
        if (close_after)
            break;
    }
out:
    close(fd);
    return NULL;
}

static void *peer_accept(void *arg)
{
    struct peer *p = arg;
    for (;;) {
        int fd = accept(p->listen_fd, NULL, NULL);
        if (fd < 0)
            return NULL;
        pthread_mutex_lock(&p->lock);
        p->connections++;
        pthread_mutex_unlock(&p->lock);
        pthread_t t;
        pthread_create(&t, NULL, peer_conn, (void *)(intptr_t)fd);
        pthread_detach(t);
    }
}

static void peer_start(struct peer *p)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->lock, NULL);
    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(p->listen_fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    getsockname(p->listen_fd, (struct sockaddr *)&a, &len);
    p->port = ntohs(a.sin_port);
    assert_int_equal(listen(p->listen_fd, 16), 0);
    pthread_create(&p->thread, NULL, peer_accept, p);
}

static void peer_stop(struct peer *p)
{
    shutdown(p->listen_fd, SHUT_RDWR);
    close(p->listen_fd);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->lock);
}

static int peer_connections(struct peer *p)
{
    pthread_mutex_lock(&p->lock);
    int n = p->connections;
    pthread_mutex_unlock(&p->lock);
    return n;
}

/* ---- the client side ------------------------------------------------------------------- */

struct result {
    bool done;
    int status;
    char error[128];
    char body[256];
    char ce_id[64];
};

static void on_response(void *arg, const struct http_response *resp)
{
    struct result *r = arg;
    assert_false(r->done); /* exactly once */
    r->done = true;
    r->status = resp->status;
    snprintf(r->error, sizeof(r->error), "%s", resp->error ? resp->error : "");
    snprintf(r->body, sizeof(r->body), "%.*s", (int)resp->body_len, resp->body);
    const char *id = http_response_header(resp, "ce-id");
    snprintf(r->ce_id, sizeof(r->ce_id), "%s", id ? id : "");
}

static char *head_for(const char *path, size_t body_len)
{
    return xasprintf("POST %s HTTP/1.1\r\nHost: test\r\nContent-Length: %zu\r\n\r\n", path,
                     body_len);
}

/* Runs the loop until r is done (or a generous deadline). */
static void run_until(uv_loop_t *loop, struct result *r)
{
    int64_t deadline = time_mono_ms() + 10000;
    while (!r->done && time_mono_ms() < deadline)
        uv_run(loop, UV_RUN_ONCE);
    assert_true(r->done);
}

static void call(uv_loop_t *loop, struct http_pool *pool, const char *path,
                 int64_t timeout_ms, struct result *r)
{
    memset(r, 0, sizeof(*r));
    char *head = head_for(path, 4);
    http_pool_send(pool, head, strlen(head), "data", 4, timeout_ms, on_response, r);
    assert_false(r->done); /* never from inside the send */
    run_until(loop, r);
    free(head);
}

static void close_loop(uv_loop_t *loop)
{
    for (int i = 0; i < 100 && uv_run(loop, UV_RUN_NOWAIT); i++)
        ;
    assert_int_equal(uv_loop_close(loop), 0);
}

/* What each test starts from: the peer, a loop, and a pool of connections to the peer. */
struct fixture {
    struct peer peer;
    uv_loop_t loop;
    char addr[64];
    struct http_pool *pool;
};

static void fixture_start(struct fixture *f)
{
    peer_start(&f->peer);
    uv_loop_init(&f->loop);
    snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%d", f->peer.port);
    assert_int_equal(http_pool_new(&f->loop, f->addr, &f->pool), 0);
}

/* After the test released the pool. */
static void fixture_stop(struct fixture *f)
{
    close_loop(&f->loop);
    peer_stop(&f->peer);
}

static void test_response_and_keep_alive(void **state)
{
    (void)state;
    struct fixture f;
    fixture_start(&f);
    struct result r;
    for (int i = 0; i < 5; i++) {
        call(&f.loop, f.pool, "/ok", 5000, &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "hello");
        assert_string_equal(r.ce_id, "r1"); /* header names come lower-cased */
    }
    assert_int_equal(peer_connections(&f.peer), 1); /* one connection served all five */
    call(&f.loop, f.pool, "/fail", 5000, &r);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "busy");
    call(&f.loop, f.pool, "/chunked", 5000, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "abcde");
    call(&f.loop, f.pool, "/eof", 5000, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "until-close");
    assert_int_equal(http_pool_active(f.pool), 0);
    http_pool_release(f.pool, false);
    fixture_stop(&f);
}

static void test_stale_connection_is_resent_once(void **state)
{
    (void)state;
    struct fixture f;
    fixture_start(&f);
    struct result r;
    call(&f.loop, f.pool, "/stale", 5000, &r); /* the peer closes after answering */
    assert_int_equal(r.status, 204);
    /* let the close reach the client, or not: either way the next call must succeed */
    call(&f.loop, f.pool, "/ok", 5000, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello");
    assert_int_equal(peer_connections(&f.peer), 2);
    http_pool_release(f.pool, false);
    fixture_stop(&f);
}

static void test_refused_and_timeout(void **state)
{
    (void)state;
    struct fixture f;
    fixture_start(&f);
    struct result r;
    call(&f.loop, f.pool, "/hang", 200, &r);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.error, "timed out"));
    http_pool_release(f.pool, false);
    peer_stop(&f.peer);

    /* nobody listens there any more */
    assert_int_equal(http_pool_new(&f.loop, f.addr, &f.pool), 0);
    call(&f.loop, f.pool, "/ok", 5000, &r);
    assert_int_equal(r.status, 0);
    assert_true(r.error[0] != '\0');
    http_pool_release(f.pool, false);

    assert_int_equal(http_pool_new(&f.loop, "not-an-address", &f.pool), -EINVAL);
    assert_int_equal(http_pool_new(&f.loop, "127.0.0.1:0", &f.pool), -EINVAL);
    close_loop(&f.loop);
}

static void test_release_with_abort(void **state)
{
    (void)state;
    struct fixture f;
    fixture_start(&f);
    struct result r = {0};
    char *head = head_for("/hang", 0);
    http_pool_send(f.pool, head, strlen(head), NULL, 0, 60000, on_response, &r);
    /* let it connect and send */
    for (int i = 0; i < 50 && peer_connections(&f.peer) == 0; i++)
        uv_run(&f.loop, UV_RUN_NOWAIT), usleep(2000);
    for (int i = 0; i < 10; i++)
        uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_false(r.done);
    http_pool_release(f.pool, true);
    assert_true(r.done);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.error, "cancelled"));
    free(head);
    fixture_stop(&f);
}

/* http_pool_send_limited: a body dropped when the status is all that is wanted; a connect
 * deadline that, once met, leaves the call its own deadline. */
static void test_limits(void **state)
{
    (void)state;
    struct fixture f;
    fixture_start(&f);
    struct result r = {0};
    char *head = head_for("/ok", 0);
    struct http_call_limits drop = {.timeout_ms = 5000, .discard_body = true};
    http_pool_send_limited(f.pool, head, strlen(head), NULL, 0, &drop, on_response, &r);
    run_until(&f.loop, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "");
    assert_string_equal(r.ce_id, "r1");
    free(head);
    memset(&r, 0, sizeof r);
    head = head_for("/hang", 0);
    struct http_call_limits connect = {.timeout_ms = 200, .connect_timeout_ms = 5000};
    http_pool_send_limited(f.pool, head, strlen(head), NULL, 0, &connect, on_response, &r);
    run_until(&f.loop, &r);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.error, "timed out")); /* the call's own deadline ran once connected */
    free(head);
    http_pool_release(f.pool, false);
    fixture_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_response_and_keep_alive),
        cmocka_unit_test(test_stale_connection_is_resent_once),
        cmocka_unit_test(test_refused_and_timeout),
        cmocka_unit_test(test_release_with_abort),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
