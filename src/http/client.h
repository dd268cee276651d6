/* http/client: Skiff's HTTP/1.1 client with a connection pool per address, for what skiffd
 * calls over HTTP (the invoker's deliveries to instances).
 *
 * One pool per instance address keeps idle keep-alive connections; a call takes an idle
 * connection or opens one, writes one request, parses the response with llhttp and gives the
 * connection back when the server lets it be reused. A call that failed on a reused connection
 * before any byte of the response came (the server closed an idle connection meanwhile) is
 * sent once more on a fresh connection, so a stale keep-alive never looks like a failure.
 *
 * Ownership: the caller keeps the request's head and body alive until the callback; the
 * response passed to the callback lives only during it. A pool is freed by
 * http_pool_release(): idle connections close at once, calls in progress finish (their
 * callbacks still run), then the pool goes away.
 *
 * Threading: one libuv loop; callbacks run on it, never from inside http_pool_send. */
#ifndef SKIFF_HTTP_CLIENT_H
#define SKIFF_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/buf.h"
#include "http/message.h"

struct http_pool;
struct http_call;

struct http_response {
    int status;        /* HTTP status; 0 on a network error or timeout */
    const char *error; /* with status 0: what went wrong ("connection refused", "timed out") */
    struct http_header *headers;
    size_t header_count;
    const char *body;
    size_t body_len;
};

typedef void (*http_response_cb)(void *arg, const struct http_response *resp);

/* addr is "127.0.0.1:PORT" (IPv4 or [IPv6]:PORT). -EINVAL when it is not. */
int http_pool_new(uv_loop_t *loop, const char *addr, struct http_pool **out);
/* With abort_calls, calls in progress fail at once ("cancelled"; their callbacks run before
 * this returns) instead of finishing. */
void http_pool_release(struct http_pool *pool, bool abort_calls);
/* Fails every call in progress at once ("cancelled"; callbacks run before this returns). Valid
 * on a released pool while it still has calls in progress (it is freed after the last). */
void http_pool_abort(struct http_pool *pool);
/* Calls in progress on the pool. */
size_t http_pool_active(const struct http_pool *pool);

/* Sends head (the request line and headers, ending with the blank line; the caller adds
 * Content-Length) and body. cb runs exactly once. timeout_ms bounds the whole call. */
void http_pool_send(struct http_pool *pool, const char *head, size_t head_len,
                       const void *body, size_t body_len, int64_t timeout_ms, http_response_cb cb,
                       void *arg);

/* What http_pool_send_limited adds to a call's deadline. */
struct http_call_limits {
    int64_t timeout_ms;         /* bounds the whole call; 0: none */
    int64_t connect_timeout_ms; /* a new connection must be up within this, after which
                                   timeout_ms runs afresh; 0: timeout_ms covers the connect */
    bool discard_body;          /* the body is read and dropped (resp->body is empty): for a
                                   caller that wants the status only, whatever the size */
};

/* http_pool_send with limits (NULL: none). */
void http_pool_send_limited(struct http_pool *pool, const char *head, size_t head_len,
                            const void *body, size_t body_len,
                            const struct http_call_limits *limits, http_response_cb cb, void *arg);

/* The value of a response header by lower-case name; NULL when absent. */
const char *http_response_header(const struct http_response *resp, const char *name);

#endif
