/* http/server: Skiff's HTTP/1.1 server on libuv and llhttp, for the API (src/api) and any
 * other part that serves HTTP. It owns connections; its owner owns what requests mean.
 *
 * The life of a request:
 *   1. The head is parsed. A request the server refuses by itself (a path with an escaped NUL,
 *      more than HTTP_MAX_HEADERS headers) is answered at once.
 *   2. on_head runs: the owner routes the request, authenticates and authorises it, and says
 *      how much body it takes (body_limit, body_to_file), or refuses it (http_request_refuse).
 *      A refusal or a body past the limit is answered at once, before any body is read, and
 *      the connection closes after a linger (its client may still be sending).
 *   3. The body is read into memory (body, at most HTTP_BODY_MEMORY_BUDGET bytes for all
 *      connections together: past it, 503) or into a file under tmp_dir (body_path).
 *   4. on_request runs; the owner answers then or later (http_respond, the stream calls). A
 *      client that leaves meanwhile is told through http_request_on_abort.
 *   5. Once answered (or dropped), on_free runs and the request is freed.
 *
 * Pipelining: while a request is handled, the requests a client sent after it on the same
 * connection are parsed and handed to on_request too (up to HTTP_PIPELINE_MAX at a time), so
 * one connection can keep many in flight; their answers go out in the order of the requests
 * (an answer ready before the ones ahead of it waits in memory). Parsing stops after a request
 * that closes the connection or asks for an upgrade, and while answers the client does not
 * take (sent or waiting) pass HTTP_WRITE_PENDING_MAX bytes. Caps: open connections in all and per
 * client address; past a cap, the connection that has waited longest for a request head is closed
 * to make room, so idle or slow clients cannot lock others out. A head must arrive within
 * HTTP_HEAD_MS, a body may not stall for HTTP_REQUEST_MS, an idle keep-alive connection closes
 * after HTTP_IDLE_MS. Resource errors while accepting (EMFILE, ENOMEM, ...) pause accepting for a
 * moment and never stop it.
 *
 * Errors: every error the server answers has the body {"error": {"code", "message"}}, the
 * codes and statuses of common/err.h.
 *
 * Ownership: the owner's request type starts with struct http_request (the server allocates
 * request_size bytes, zeroed); the owner frees its own fields in on_free. Strings handed to
 * the respond calls are copied. One libuv loop; nothing here is thread-safe. */
#ifndef SKIFF_HTTP_SERVER_H
#define SKIFF_HTTP_SERVER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "common/buf.h"
#include "common/err.h"
#include "http/message.h"

#define HTTP_MAX_HEADERS 100
#define HTTP_MAX_HEAD_BYTES (64u << 10)
#define HTTP_BODY_MEMORY_BUDGET (256u << 20)
#define HTTP_MAX_CONNECTIONS 4096
#define HTTP_HEAD_MS 30000
#define HTTP_REQUEST_MS 60000
#define HTTP_IDLE_MS 300000
#define HTTP_MAX_LISTENERS 4
#define HTTP_PIPELINE_MAX 64 /* requests handled at once on one connection */
#define HTTP_WRITE_PENDING_MAX (1u << 20)

struct http_server;
struct http_conn;
struct http_request;

enum http_request_state {
    HTTP_REQ_PARSING,   /* head or body still coming */
    HTTP_REQ_HANDLING,  /* whole: the owner is answering */
    HTTP_REQ_STREAMING, /* the answer has begun (http_stream_begin) */
    HTTP_REQ_DONE
};

struct http_server_config {
    const char *tmp_dir; /* where bodies that go to a file are written (made 0700) */
    size_t request_size; /* of the owner's request type, which starts with http_request */
    const char *name;    /* for log lines: "the API" */
    /* Open connections, all listeners together, and per client address (0: the defaults,
     * HTTP_MAX_CONNECTIONS and a quarter of the cap). The cap is lowered to half of
     * RLIMIT_NOFILE, so the rest of the process keeps descriptors whatever clients do. */
    unsigned max_connections;
    unsigned max_connections_per_client;
    void (*on_head)(struct http_request *req, void *ctx);
    void (*on_request)(struct http_request *req, void *ctx);
    void (*on_free)(struct http_request *req, void *ctx);
    void *ctx;
};

struct http_request {
    struct http_server *server;
    struct http_conn *conn; /* NULL once the connection is gone */
    enum http_request_state state;
    int listener;    /* the tag given to http_server_listen */
    char method[16]; /* "GET", ... */
    char *target;    /* the request target as sent: path and query, not decoded */
    char *path;      /* percent-decoded */
    char *query;     /* as sent, without '?'; NULL when none */
    char **segs;     /* the path's segments, each percent-decoded */
    size_t nsegs;
    struct http_header *headers; /* as sent, in order; the strings are in head_text */
    size_t nheaders;
    bool keep_alive;
    /* Set by on_head: the largest body taken (0: none), and whether it goes to a file
     * (body_path) instead of memory (body). A hint is added to the 413 message. */
    uint64_t body_limit;
    bool body_to_file;
    const char *too_large_hint;
    /* The body, once on_request runs. */
    struct buf body;
    char *body_path; /* the file of a body_to_file body, removed with the request */
    uint64_t body_size;
    int status; /* of the answer, once begun */
    bool aborted;
    /* the rest is the server's */
    enum skiff_err early_err;
    char *early_message;
    int early_status; /* http_request_refuse_with: early_message is the body */
    char *early_type;
    bool headers_dropped;
    bool expect_continue;
    int body_fd;
    uint64_t body_memory;
    void (*abort_fn)(void *ctx);
    void *abort_ctx;
    struct http_header *resp_headers;
    size_t nresp_headers;
    char *head_text;                   /* the headers' names and values, one allocation */
    bool no_pipeline;                  /* nothing after it is parsed until it is answered */
    struct http_request *next_in_conn; /* the next request handled on its connection */
    struct buf held;                   /* its answer, while one ahead of it is unanswered */
};

/* -EIO when the tmp folder cannot be made. */
int http_server_new(uv_loop_t *loop, const struct http_server_config *cfg,
                    struct http_server **out);
/* Binds and listens on addr ("HOST:PORT", "[V6]:PORT", "localhost:PORT"); requests that come
 * in on it carry tag in req->listener. -EINVAL for an address that is not one, or a negative
 * errno (libuv's codes, uv_strerror). */
int http_server_listen(struct http_server *s, const char *addr, int tag);
/* The same for HTTPS: connections speak TLS with the certificates of tls (src/tls; the caller
 * keeps it alive until the server is freed). An upgrade's taker gets
 * plaintext there: one end of a socketpair that a relay (tls_relay.h) carries over TLS. */
struct tls_store;
int http_server_listen_tls(struct http_server *s, const char *addr, int tag, struct tls_store *tls);
/* Stops listening and closes every connection (requests being handled are aborted); cb runs
 * once every handle is closed. Then http_server_free. */
void http_server_close(struct http_server *s, void (*cb)(void *arg), void *arg);
void http_server_free(struct http_server *s);
unsigned http_server_connections(const struct http_server *s);
/* The segments of a path ("/a//b/" is a, b), each percent-decoded when decode is set; NULL
 * when one holds an escaped NUL. One allocation: the caller frees the array alone. */
char **http_path_split(const char *path, size_t *n, bool decode);
/* Whether addr is one http_server_listen takes. */
bool http_server_addr_valid(const char *addr);

/* From on_head: refuse the request with err and a message saying why and what to do. The
 * first refusal counts. */
void http_request_refuse(struct http_request *req, enum skiff_err err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same, answered with the owner's own status and body (a protocol with error bodies of its
 * own, as the Open Service Broker API has). */
void http_request_refuse_with(struct http_request *req, int status, const char *content_type,
                              const char *body);
const char *http_request_header(const struct http_request *req, const char *name);
/* A query parameter, decoded ('+' is a space); NULL when absent or holding a NUL. The caller
 * frees it. */
char *http_request_query(const struct http_request *req, const char *name);
const char *http_request_peer(const struct http_request *req); /* "IP:PORT", "" when gone */
/* fn runs once if the client leaves before the answer is finished. */
void http_request_on_abort(struct http_request *req, void (*fn)(void *ctx), void *ctx);

/* Answering. A response header added before the answer begins goes with it. */
void http_respond_header(struct http_request *req, const char *name, const char *value);
void http_respond(struct http_request *req, int status, const char *content_type, const void *body,
                  size_t len);
/* {"error": {"code", "message"}} with err's status; fmt NULL: err's own message. err is the one
 * error type of common/err.h: an enum skiff_err or a negative errno, answered as its row says. */
void http_respond_error(struct http_request *req, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void http_respond_verror(struct http_request *req, int err, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Switching protocols (RFC 9110 section 15.2.2), in place of an answer: sends 101 with
 * `Upgrade: protocol` (and the headers added), and once it is out hands the connection over:
 * taken(ctx, fd, early, len) gets a descriptor of the socket of its own (close-on-exec,
 * non-blocking; the taker closes it) and the bytes the client sent after the request (valid
 * during the call only); then the request is finished (on_free runs, status 101) and the
 * server forgets the connection. A client gone before that: taken gets fd -1. Called at
 * most once per request, instead of any other answer; taken may run before this returns. */
typedef void (*http_upgrade_fn)(void *ctx, int fd, const char *early, size_t len);
void http_upgrade(struct http_request *req, const char *protocol, http_upgrade_fn taken, void *ctx);
/* A chunked answer: begin, write (-EPIPE once the client is gone), end. pending: bytes
 * queued and not yet taken by the client. */
void http_stream_begin(struct http_request *req, int status, const char *content_type);
int http_stream_write(struct http_request *req, const void *data, size_t len);
size_t http_stream_pending(const struct http_request *req);
void http_stream_end(struct http_request *req);

#endif
