/* router: skiff-router, the shared HTTP routing tier (a reverse proxy in front of instances).
 *
 * Process shape: the main thread runs the bus client (route table from skiffd, access lines
 * back), the admin server (/metrics, /health, /routes) and signal handling; N worker threads
 * each run their own libuv loop and accept from one shared listening socket (no SO_REUSEPORT:
 * no other process can join it), and no lock is taken on the request path. Workers read the
 * route table through route_table_current() (an immutable, reference-counted snapshot).
 *
 * Everything here returns 0 or a negative errno/libuv code; bad input from clients, backends
 * or skiffd never aborts the process (only out-of-memory does, through xmalloc). */
#ifndef SKIFF_ROUTER_H
#define SKIFF_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "natsconn/natsconn.h"

struct router_config {
    const char *home;       /* $SKIFF_HOME: run/bus.sock, run/router.pid, run/routes.json */
    const char *addr;       /* HOST:PORT for clients */
    const char *admin_addr; /* HOST:PORT for /metrics; NULL or "" disables it */
    int workers;            /* loops (threads); <= 0 means one per core */
    int router_index;       /* n in [RTR/n] */
    const char *nats_urls;  /* learn routes from NATS core instead of run/bus.sock; NULL: no */
    struct natsconn_security nats_security; /* credentials and TLS for nats_urls */
    const char *host_addr; /* with nats_urls: this host's address between hosts, announced so
                              that cells let this router in; their pools routed (src/hosts) */

    uint64_t max_body_bytes; /* 0: unlimited (bodies are streamed, never held) */
    size_t max_header_bytes; /* request line + headers */
    size_t max_headers;      /* header count */
    size_t max_url_bytes;    /* request target */
    int header_timeout_ms;   /* from the first byte of a request to the end of its headers */
    int idle_timeout_ms;     /* keep-alive idle, and silence in a tunnel */
    int upstream_timeout_ms; /* silence on both sides while a request is in progress */
    int connect_timeout_ms;  /* TCP connect to a backend */
    int connect_hedge_ms;    /* a connect not done by then: another instance is tried beside it
                                (0: never) */
    int hold_timeout_ms;     /* a request for an app starting from zero waits this long */
    int hold_max;            /* requests held per app process at zero (the activator's queue) */
    int max_connections;     /* client connections, all workers together */
    int upstream_idle_max;   /* idle pooled connections per backend per worker */
    int upstream_idle_timeout_ms;

    /* HTTPS beside HTTP (src/router/README.md, "HTTPS") */
    const char *tls_addr;         /* HOST:PORT for HTTPS; NULL or "" disables it */
    const char *tls_client_ca;    /* PEM file: ask clients for certificates signed by it and
                                     pass them on in X-Forwarded-Client-Cert; NULL: never */
    int tls_handshake_timeout_ms; /* from accept to the end of the handshake */
    int tls_max_handshakes;       /* handshakes in flight per worker; over it the oldest goes */
    int tls_ocsp_retry_ms;        /* OCSP stapling: a failed fetch is tried again after this long */
};

/* Fills the defaults (documented in src/router/README.md). */
void router_config_defaults(struct router_config *cfg);

/* Runs the router until SIGTERM/SIGINT (then requests in flight get 5 s to finish); returns 0
 * after a clean shutdown, or a negative code with a message on stderr when it cannot start
 * (address in use, bad address, ...). */
int router_run(const struct router_config *cfg);

/* ---- HTTP head handling (router_http.c), pure functions the proxy and the tests share ---- */

struct router_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* Finds the end of a request or response head in a stream given piece by piece, rejecting
 * what llhttp lets through but a proxy must not: a bare LF or bare CR as a line end, and
 * obsolete line folding. Zero it (or call router_head_scan_reset) before each message. */
struct router_head_scan {
    uint32_t lines;    /* non-empty lines seen */
    uint32_t line_len; /* bytes in the current line */
    char last;
};
void router_head_scan_reset(struct router_head_scan *s);
/* Returns 1 and sets *end (bytes of p that belong to the head) when the head ends in p, 0 when
 * all of p belongs to the head so far, -1 when the head is malformed. */
int router_head_scan(struct router_head_scan *s, const char *p, size_t n, size_t *end);

/* A request id a client may choose: 1-128 of [A-Za-z0-9._:+/=-]. */
bool router_request_id_valid(const char *s, size_t n);
/* True when the header name is a token (RFC 9110) */
bool router_header_name_valid(const char *s, size_t n);

struct router_request_head {
    const char *method;
    const char *url;
    size_t url_len;
    const struct router_header *headers;
    size_t header_count;
    const char *host; /* the authority routed on: sent as Host and X-Forwarded-Host (NULL: the
                         client's Host header) */
    size_t host_len;
    const char *client_ip;  /* appended to X-Forwarded-For */
    const char *request_id; /* the one to send (kept from the client when valid) */
    bool chunked;           /* the body is sent chunked */
    bool has_length;
    uint64_t content_length;
    bool upgrade; /* keep Connection: upgrade and the Upgrade header */
    bool https;   /* the client came over TLS: X-Forwarded-Proto: https */
    const char *client_cert; /* base64 DER of the client's verified certificate, or NULL:
                                sent as X-Forwarded-Client-Cert (a client's own is dropped) */
};

/* Writes the request head for a backend: Host (the authority routed on), the client's
 * headers minus hop-by-hop ones (and those named in Connection) and its Host, its own framing,
 * X-Forwarded-For appended, X-Forwarded-Proto, X-Forwarded-Host (the authority routed on) and
 * X-Request-Id. A client-sent X-Forwarded-Client-Cert is always dropped; the router's own is
 * written when h->client_cert is set. */
void router_head_build_request(struct buf *out, const struct router_request_head *h);

/* Writes the response head for the client: status line, the backend's headers minus hop-by-hop
 * ones, and Connection: close when the router will close the client connection after it (or
 * Connection: keep-alive when `http10_keep_alive`: an HTTP/1.0 client needs to be told). */
void router_head_build_response(struct buf *out, int status, const char *reason, size_t reason_len,
                                const struct router_header *headers, size_t count,
                                bool close_client, bool upgrade, bool http10_keep_alive);

/* Writes the end of a chunked body: the last chunk, the trailer fields a proxy passes on
 * (framing, hop-by-hop, Host and the forwarding headers are dropped; so are invalid names),
 * and the final empty line. */
void router_trailers_build(struct buf *out, const struct router_header *trailers, size_t count);
/* Normalises a request target in place (RFC 3986 6.2.2, on the path only; the query is
 * kept as sent): percent-encoded unreserved characters are decoded, other percent-encodings
 * get uppercase hex digits, and "." and ".." segments are removed (".." never climbs above the
 * root). Routes are matched on the result and the backend receives it, so the router and the
 * app agree on the path. Returns the new length (never more than len), or 0 with a message in
 * *why when the target is not a path ("*" passes), has a bad percent-encoding or encodes a NUL. */
size_t router_target_normalize(char *target, size_t len, const char **why);
/* Whether a Host value (or the authority of an absolute-form target) is host[:port]: a name
 * of letters, digits and - . _ ~, or an IP literal in brackets; the port digits only. No
 * userinfo (user@host), no percent-encoding, nothing else. */
bool router_authority_valid(const char *s, size_t n);
/* An absolute-form request target (RFC 9112 3.2.2, "http://host:port/path?query", scheme http
 * or https in any case) is rewritten in place into its authority followed by its origin form
 * ("/path?query"; "/" when the path is empty): *authority_len and *origin_len give their
 * lengths. Returns 1 then, 0 when the target is not absolute-form (left as it is), or -1 with
 * a message in *why when its authority is not valid (router_authority_valid). */
int router_target_absolute(char *target, size_t len, size_t *authority_len, size_t *origin_len,
                           const char **why);
/* Case-insensitive header name comparison with a NUL-terminated lowercase name. */
bool router_header_is(const struct router_header *h, const char *lower_name);
/* Whether a comma-separated header value contains the token (case-insensitive). */
bool router_header_has_token(const char *value, size_t len, const char *lower_token);

#endif
