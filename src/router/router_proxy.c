/* The proxy: one libuv loop per worker thread; all of them accept from one listening socket
 * (see router_listen below for why not SO_REUSEPORT).
 *
 * A client connection parses requests with llhttp. At the end of a request head the parser
 * is paused, the route is looked up and a backend connection is taken from the worker's pool
 * (or connected); then the head is written and the body streams through. At the end of the
 * request the parser is paused again until the response has been forwarded, so pipelined
 * requests are answered in order and unread bytes stay bounded (reading stops meanwhile).
 *
 * Bytes move without copies where possible: pieces to write are gathered (pointers into the
 * read buffer plus small framing kept in a scratch buffer) and written with one writev via
 * uv_try_write; only what the socket does not take at once is copied into a write request.
 * When a side's write queue passes ROUTER_HIGH_WATER the other side stops reading until it
 * drains, so a body of any size streams in bounded memory. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/sockios.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/buf.h"
#include "common/start_trace.h"
#include "common/util.h"
#include "router/route_table.h"
#include "http/message.h"
#include "router/router_internal.h"
#include "router/router_h2.h"
#include "tls/tls.h"

#define ROUTER_HIGH_WATER (256 * 1024)
#define ROUTER_LOW_WATER (64 * 1024)
#define ROUTER_READ_BUF (256 * 1024)
#define ROUTER_MAX_ATTEMPTS 3
/* Connects to different instances one request may have under way at once (its own and its
 * hedges): a lost host's instances may be many, and one after another in a route's order. */
#define ROUTER_MAX_CONNECTS 8
#define ROUTER_RESPONSE_HEADER_BYTES (64 * 1024)
#define ROUTER_RESPONSE_HEADERS 256
#define OUTQ_PIECES 48
#define ROUTER_PENDING_MAX (64 * 1024)
#define ROUTER_SPARE_EXCHANGES 64
#define ROUTER_DRAIN_MS 5000
#define ROUTER_BACKEND_DOWN_MS 2000
/* A request whose bytes the instance's host has not acknowledged for this long, with a
 * retransmission timeout passed (the kernel's RTO: 200 ms at least, after a tail loss probe),
 * went to a host that is gone: a live one acknowledges within a round trip, whatever its app
 * is doing. Checked every ROUTER_ACK_CHECK_MS while such a request waits for its answer. */
#define ROUTER_UNACKED_MS 400
#define ROUTER_ACK_CHECK_MS 100
#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)
#define ROUTER_LISTENERS 4 /* the address, and [::1] beside 127.0.0.1; the same for HTTPS */
#define ROUTER_TLS_PLAIN (64 * 1024) /* plaintext decrypted per step */
#define ROUTER_ACCEPT_BATCH 8      /* connections one worker takes per wakeup */
/* held requests go on when a table is published (router_proxy_table_published); this poll
 * only sends their wake again and is a backstop */
#define ROUTER_HOLD_POLL_MS 100
#define ROUTER_ACCEPT_PAUSE_MS 100 /* after EMFILE and the like */
#define ROUTER_ACCEPT_SLACK 4      /* clients more than another worker's before yielding */
#define ROUTER_ACCEPT_YIELD_MS 1
#define ROUTER_QUICKACK_READ (16 * 1024) /* a read under this leaves a response unfinished: ACK */
#define ROUTER_H2C_CONNS 4 /* h2c connections per instance and worker, each of many streams */

const uint64_t router_latency_bounds_us[ROUTER_LATENCY_BUCKETS] = {
    500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000, 5000000, 30000000};

/* ---- types ------------------------------------------------------------------------------ */

struct worker;
struct exchange;

/* Bytes waiting to be written to one stream: pieces that point either into memory valid
 * until the current callback returns (ptr != NULL) or into `scratch` (by offset). */
struct outq {
    struct buf scratch;
    struct {
        const char *ptr;
        size_t off;
        size_t len;
    } pieces[OUTQ_PIECES];
    unsigned count;
};

enum peer_kind { PEER_CLIENT = 1, PEER_UPSTREAM, PEER_H2C };

/* What clients and backend connections share: first member of both. */
struct peer {
    uv_tcp_t tcp;
    struct outq out;
    struct worker *w;
    enum peer_kind kind;
    bool reading;
    bool throttled; /* reading stopped because the other side's writes are backed up */
    bool closing;
    int write_error;
    struct tls_conn *tls; /* a client over HTTPS: bytes pass through it both ways */
};

struct write_req {
    uv_write_t req;
    struct peer *peer;
    char data[];
};

struct headers {
    struct buf raw;
    struct hdr_ix {
        uint32_t name_off, name_len, value_off, value_len;
    } * ix;
    uint32_t count, cap;
    uint8_t last; /* 0 nothing yet, 1 in a name, 2 in a value */
};

enum client_state {
    C_HEAD,          /* reading a request head (or idle between requests) */
    C_WAIT_UPSTREAM, /* head read, waiting for a backend connection; not reading */
    C_BODY,          /* streaming the request body to the backend */
    C_WAIT_RESPONSE, /* request done, response in progress; not reading */
    C_TUNNEL,        /* after 101 Switching Protocols: bytes both ways */
};

enum deadline_kind {
    D_NONE,
    D_IDLE,
    D_HEADER,
    D_CONNECT,
    D_ACTIVE,
    D_TUNNEL,
    D_CLOSING,
    D_HOLD,
    D_HANDSHAKE,
    D_STREAM_SLOT, /* an h2c instance that answers has no stream free for the request yet */
    D_HEDGE        /* a connect under way: time to try another instance beside it */
};

enum pause_reason { PAUSE_NONE, PAUSE_HEADERS, PAUSE_MESSAGE };

struct client {
    struct peer p;
    uv_timer_t timer;
    llhttp_t parser;
    const char *feed_end; /* end of the bytes the parser is running over */
    struct client *prev, *next;
    struct exchange *x;
    struct buf pending; /* unparsed bytes held while the parser waits */
    struct router_head_scan scan;
    uint64_t deadline, timer_due;
    uint8_t state, deadline_kind, pause;
    bool scan_done, shutting_down, seen_bytes;
    bool fin_sent, peer_gone; /* lingering close: our FIN went out / the client's came */
    uint32_t discarded;       /* bytes read and dropped while closing */
    bool eof;                 /* the client half-closed while a request was in flight */
    bool held;                /* waiting for an app to start from zero */
    struct client *hold_prev, *hold_next;
    uint64_t woken_at;
    int open_handles;
    struct client *hs_prev, *hs_next; /* in the worker's handshakes in flight, oldest first */
    bool handshaking;
    char ip[INET6_ADDRSTRLEN];
    /* HTTP/2 (router_h2.h): a connection that sent the client preface has a session; each of
     * its streams is a client of its own without a socket (h2s set), whose request bytes come
     * from the session and whose response bytes go back to it */
    struct router_h2_session *h2;
    struct router_h2_stream *h2s;
    struct client *h2_conn;       /* the connection a stream belongs to */
    struct client *h2_dirty_next; /* in the worker's list of sessions with output */
    bool h2_dirty;
    struct buf h2_out; /* frames to send, made by the session */
    bool proto_known;  /* HTTP/1.1 or HTTP/2, told by the first bytes */
    uint8_t preface_len;
    char preface[24];
};

enum upstream_state { U_CONNECTING, U_ACTIVE, U_IDLE };

struct pool {
    struct pool *next;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    bool h2c;              /* its connections speak h2c (a route marked protocol http2) */
    struct upstream *idle; /* most recently used first */
    int idle_count;
    /* h2c: the connections (each carrying streams), and the exchanges waiting for a stream */
    struct h2c_conn *conns;
    int conn_count;
    struct upstream *waiting, *waiting_last;
    int in_flight; /* exchanges of this worker using this backend (a drain waits for 0) */
    int drains;    /* drain requests waiting for in_flight to reach 0: nothing is pooled */
    struct exchange *exchanges; /* those in_flight exchanges (pool_prev/pool_next) */
    bool lost; /* its exchanges are being ended (backend lost): no stream is handed out */
};

/* Backends that left the table without a drain, for one worker (router_proxy_backends_lost). */
struct lost_notice {
    struct route_addr *addrs;
    size_t count;
    struct lost_notice *next;
};

/* One drain request, shared by the workers; the last to report answers skiffd. */
struct router_drain {
    uint64_t id;
    struct sockaddr_storage addr;
    socklen_t addr_len;
    int workers_left; /* atomic */
};

/* A drain request in a worker: in its inbox (pool NULL), or waiting on a pool. */
struct drain_wait {
    struct router_drain *d;
    struct pool *pool;
    struct drain_wait *next;
};

/* A backend connection, or (h2c set) one stream of an h2c connection: then its socket is
 * never connected (its handle only defers the free to the loop, as for the others), what it
 * writes goes to its stream and what the instance answers on the stream is fed to it. */
struct upstream {
    struct peer p;
    llhttp_t parser;
    const char *feed_end; /* end of the bytes the parser is running over */
    struct pool *pool;
    struct exchange *x;
    struct upstream *idle_prev, *idle_next;
    uv_connect_t connect_req;
    bool h2c;                      /* a stream of an h2c connection (a route marked http2) */
    struct h2c_conn *conn;         /* its connection, once it has a stream */
    struct router_h2c_stream *h2s; /* its stream (router_h2c.c) */
    struct upstream *conn_prev, *conn_next; /* in conn's streams, or in the pool's waiting */
    uint64_t idle_since;
    uint64_t sent_at; /* loop time its exchange's request began to go out */
    uint8_t state;
    bool reused, got_bytes, pause_done, reusable;
    bool waiting; /* in the pool's waiting: no stream yet */
    bool acked;   /* the instance's host acknowledged the whole request: no more checks */
    bool keepalive; /* TCP keepalive probes on (connection_probe) */
};

/* An h2c connection to an instance (router_h2c.c): its socket and session, shared by the
 * streams of as many exchanges as the instance allows at once. */
struct h2c_conn {
    struct peer p; /* PEER_H2C */
    struct pool *pool;
    struct router_h2c *h2c;
    struct h2c_conn *next;    /* in the pool's conns */
    struct upstream *streams; /* the upstreams of its streams */
    uv_connect_t connect_req;
    uint64_t idle_since; /* when its last stream ended */
    unsigned served;     /* streams it has carried */
    bool connected, dispatching;
    bool keepalive; /* TCP keepalive probes on (connection_probe) */
};

/* A worker's hold on a route table: the exchanges that route with it count themselves here
 * (no atomics: only the worker touches it), and it keeps the worker's own round-robin cursor
 * of each route. When a newer table comes, a hold still in use waits in `retired`. */
struct table_hold {
    struct route_table *table;
    unsigned *cursors; /* one per route of the table */
    unsigned users;
    struct table_hold *next; /* in the worker's retired list */
};

/* llhttp 8 takes any two bytes after a chunk's data for the CRLF that must end it, so data
 * longer than its declared size is read on as the next chunk's size: "A\r\n0123456789ABCDEF"
 * is 10 bytes, then a 0xCDEF-byte chunk that never comes, and the backend is held until the
 * timeout. The router checks those two bytes itself, in both directions. */
struct chunk_guard {
    uint64_t left; /* data bytes of the current chunk still to come */
    uint8_t crlf;  /* bytes of the CRLF after them still to check: 2, 1 or 0 */
};

/* A connect beside an exchange's own (struct exchange, hedges). */
struct hedge {
    struct upstream *u;
    struct route_backend *b; /* its instance (in tried, not counted in active) */
    /* its pool while it connects, counted in its in_flight: a drain of its instance waits for
     * it as for a request sent (it may yet carry this one) */
    struct pool *pool;
    uint64_t started, due; /* loop times */
};

struct exchange {
    struct client *c;
    struct upstream *u;
    struct table_hold *hold; /* the table x->route lives in */
    struct route *route;
    struct route_backend *backend; /* counted in backend->active while set */
    struct route_stats *stats;     /* counted in its worker's in-flight slot while set */
    struct pool *pool;             /* backend's pool, counted in pool->in_flight while set */
    struct exchange *pool_prev, *pool_next; /* in pool->exchanges while pool is set */
    struct route_backend *tried[ROUTER_MAX_CONNECTS];
    int attempts;
    /* Connects beside x->u while none has completed (hedges, one more each --connect-hedge-ms):
     * the first to complete carries the request, the others are closed. Only ever one of them
     * is sent to. */
    struct hedge hedges[ROUTER_MAX_CONNECTS - 1];
    uint8_t hedge_count;
    uint64_t connect_started; /* loop time the connect under way (x->u) began */
    uint64_t connect_due;     /* and times out; a hedge, begun later, times out later */
    uint64_t hedge_next;      /* loop time the next hedge is due */
    struct headers req, resp;
    struct headers req_trailers; /* the response's trailers reuse resp, free after its head */
    uint32_t url_off, url_len;
    uint32_t host_off, host_len; /* the host routed on, in req.raw */
    size_t trailer_bytes;
    struct buf head;   /* the request head for the backend, kept for a retry */
    struct buf replay; /* what a refused h2c stream was given: the next one's request */
    uint64_t body_bytes, content_length;
    uint64_t resp_bytes;
    uint64_t start_us;
    int status;
    int error_status; /* set by a parser callback that rejects the request */
    const char *error_code, *error_text;
    uint8_t method;
    bool chunked, has_length, upgrade, is_head, in_trailers, resp_in_trailers;
    bool req_done, resp_done, resp_started, client_close, local;
    bool interim;
    bool fresh_connection; /* a pooled connection failed: do not take another */
    uint8_t refusals;      /* h2c streams refused unprocessed, sent again */
    bool client_http10;    /* the client speaks HTTP/1.0: no chunked framing towards it */
    bool client_ends;      /* the request says the connection ends after it (Connection: close,
                            * or HTTP/1.0 without keep-alive) */
    bool dechunk;          /* a chunked response forwarded unframed, ended by closing */
    uint64_t req_chunk_size, resp_chunk_size; /* of the chunk being read */
    struct chunk_guard req_guard, resp_guard;
    char request_id[130];
};

struct worker {
    uv_loop_t loop;
    uv_poll_t accepts[ROUTER_LISTENERS]; /* one per shared listening socket */
    uv_timer_t accept_pause;             /* accepting stopped for a moment */
    bool accepting;                      /* polling the listening sockets */
    bool accept_blocked; /* out of descriptors, or stopping (read by the others: atomics) */
    uv_async_t wakeup;
    uv_timer_t sweep;
    uv_timer_t ack_check; /* while requests wait for an answer: are they acknowledged? */
    pthread_t thread;
    int index;
    const struct router_config *cfg;
    struct table_hold *hold;    /* the newest table this worker has taken */
    struct table_hold *retired; /* older ones exchanges still route with */
    uint64_t table_generation;
    struct pool *pools;
    struct client *clients;
    int client_count; /* written by the worker only; read by the others (relaxed atomics) */
    int client_cap;
    struct exchange *spare; /* finished exchanges kept for their buffers */
    struct client *held;    /* requests waiting for an app to start */
    bool holding;           /* held is not empty (atomic: read by the main thread) */
    uv_async_t table_wakeup; /* a new table was published while requests are held */
    uv_timer_t hold_poll;
    uv_timer_t drain;           /* bounds the wait for requests in flight at stop */
    uv_async_t drain_wakeup;    /* drain requests arrived in drain_inbox */
    pthread_mutex_t drain_lock; /* guards drain_inbox (the main thread adds to it) */
    struct drain_wait *drain_inbox;
    struct drain_wait *drain_waits; /* requests waiting for a pool's in_flight to reach 0 */
    struct lost_notice *lost_inbox; /* backends lost, under drain_lock, woken by drain_wakeup */
    uv_check_t access_flush;
    struct buf access; /* access lines of this loop turn */
    size_t access_lines;
    bool handles_closed;
    int spare_count;
    bool stopping;
    uint64_t id_prefix, id_counter;
    unsigned hedge_seed; /* where in a route hedges are picked from (hedge_start) */
    struct router_metrics m;
    /* HTTP/2 connections with output to send, in the order they came to have it: the one whose
     * response came first in a turn is written first (pushed in front, it was written last,
     * after every other connection's frames had been encrypted) */
    struct client *h2_dirty, *h2_dirty_last;
    struct buf h2c_resp;               /* HTTP/1.1 bytes made from an h2c backend's frames */
    struct router_h2_limits h2_limits; /* from cfg */
    struct router_header *view; /* scratch for one head's headers */
    size_t view_cap;
    struct client *hs_first, *hs_last; /* TLS handshakes in flight, oldest first */
    int hs_count;
    struct buf tls_out;   /* plaintext gathered for one TLS write (peer_tls_write) */
    struct buf h2_gather; /* likewise, for HTTP/2 frames on their way into records */
    char tls_plain[ROUTER_TLS_PLAIN];
    char readbuf[ROUTER_READ_BUF];
};

static struct worker *workers;
static int worker_count;
static bool stop_sent; /* main thread: the workers were asked to stop */
/* The listening sockets, opened by the main thread and polled by every worker. */
static int listen_fds[ROUTER_LISTENERS];
static bool listen_tls[ROUTER_LISTENERS]; /* HTTPS */
static int listen_count;
/* The certificates, shared by the workers (see src/tls/README.md). */
static struct tls_store *tls_store;

const unsigned char router_alpn_protocols[] = "\x02h2\x08http/1.1";
const size_t router_alpn_protocols_len = sizeof(router_alpn_protocols) - 1;

static llhttp_settings_t request_settings, response_settings;

static void client_close(struct client *c);
static void client_feed(struct client *c, const char *data, size_t len);
static void client_update_reading(struct client *c);
static void client_drain_pending(struct client *c);
static void client_set_deadline(struct client *c, enum deadline_kind kind, int ms);
static void exchange_finish(struct exchange *x);
static bool exchange_end(struct exchange *x);
static void upstream_close(struct upstream *u);
static void upstream_failed(struct upstream *u, int err, bool connect_phase);
static void exchange_drop_hedges(struct exchange *x);
static void hedge_start(struct exchange *x);
static void hedge_won(struct exchange *x, int i);
static void connect_wait_arm(struct exchange *x);
static void hedge_connect_failed(struct exchange *x, struct upstream *u);
static void upstream_update_reading(struct upstream *u);
static void ack_check_arm(struct worker *w);
static void exchange_unacknowledged(struct exchange *x, const char *what);
static bool h2c_conn_probe_failed(struct h2c_conn *conn, ssize_t err);
static void route_and_connect(struct client *c);
static void hold_request(struct client *c);
static void hold_unlink(struct client *c);
static void connect_backend(struct exchange *x);
static void worker_maybe_done(struct worker *w);
static int stream_flush(struct client *c);
static int h2c_stream_flush(struct upstream *u);
static void h2c_conn_pull(struct h2c_conn *conn);
static void h2c_conn_fail(struct h2c_conn *conn, int err);
static void h2c_pool_serve(struct pool *pool);
static bool h2c_pool_answering(const struct pool *pool);
static void h2_want_output(void *ctx);
static void h2_conn_input(struct client *c, const char *data, size_t len);
static void h2_conn_flush(struct client *c);
static void client_h2_start(struct client *c);
static bool client_sniff(struct client *c, const char *data, size_t len);
static void handshake_unlink(struct client *c);

/* ---- output queue ----------------------------------------------------------------------- */

static int peer_flush(struct peer *p);

static void outq_add(struct peer *p, const char *ptr, size_t len)
{
    if (len == 0)
        return;
    if (p->out.count == OUTQ_PIECES)
        peer_flush(p);
    p->out.pieces[p->out.count].ptr = ptr;
    p->out.pieces[p->out.count].len = len;
    p->out.count++;
}

/* Lets a caller write framing or a head straight into the scratch buffer: returns the buffer
 * to append to; outq_scratch_end makes what was appended since one piece. */
static struct buf *outq_scratch_begin(struct peer *p, size_t *off)
{
    if (p->out.count == OUTQ_PIECES)
        peer_flush(p);
    *off = p->out.scratch.len;
    return &p->out.scratch;
}

static void outq_scratch_end(struct peer *p, size_t off)
{
    p->out.pieces[p->out.count].ptr = NULL;
    p->out.pieces[p->out.count].off = off;
    p->out.pieces[p->out.count].len = p->out.scratch.len - off;
    p->out.count++;
}

/* Appends framing or a head to the scratch buffer as one piece. */
static void outq_printf(struct peer *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outq_printf(struct peer *p, const char *fmt, ...)
{
    size_t off;
    struct buf *b = outq_scratch_begin(p, &off);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(b, fmt, ap);
    va_end(ap);
    outq_scratch_end(p, off);
}

static void on_write(uv_write_t *req, int status);
static void h2c_conn_drained(struct h2c_conn *conn);

/* Plaintext a TLS record carries at most (RFC 8446 5.1). */
#define TLS_RECORD_MAX 16384
/* A piece of plaintext at least this long is encrypted where it lies, as records of its own. */
#define TLS_IN_PLACE_MIN 4096

/* Plaintext on its way into one connection's TLS records. Small pieces are gathered so that a
 * head and a short body go in one record (as nginx's ssl_buffer_size does); a small piece that
 * does not fit tops the gathered bytes up to a full record. A piece of TLS_IN_PLACE_MIN or more
 * (a body read from the backend, an HTTP/2 DATA frame) is encrypted where it lies, never
 * copied: what was gathered goes first as a record of its own, then the piece (a short rest
 * of it is gathered). Copying it would cost more than the one record more (callgrind,
 * bench/router/README.md "HTTP/2 over TLS without the frame copy"). */
struct tls_records {
    struct tls_conn *tls;
    struct buf *gather;
    int rc;
};

static void tls_records_put(struct tls_records *r, const char *d, size_t len)
{
    struct buf *g = r->gather;
    if (len >= TLS_IN_PLACE_MIN) {
        if (g->len) {
            r->rc |= tls_conn_write(r->tls, g->data, g->len);
            g->len = 0;
        }
        size_t rest = len % TLS_RECORD_MAX;
        size_t here = rest >= TLS_IN_PLACE_MIN ? len : len - rest;
        r->rc |= tls_conn_write(r->tls, d, here);
        buf_append(g, d + here, len - here);
        return;
    }
    if (g->len + len <= TLS_RECORD_MAX) {
        buf_append(g, d, len);
        return;
    }
    size_t top = TLS_RECORD_MAX - g->len;
    buf_append(g, d, top);
    r->rc |= tls_conn_write(r->tls, g->data, g->len);
    g->len = 0;
    buf_append(g, d + top, len - top);
}

/* Encrypts what is still gathered: 0, or -1 when a write failed. */
static int tls_records_end(struct tls_records *r)
{
    r->rc |= tls_conn_write(r->tls, r->gather->data, r->gather->len);
    r->gather->len = 0;
    return r->rc < 0 ? -1 : 0;
}

/* The pieces queued for a TLS client become records. */
static int peer_tls_write(struct peer *p, const uv_buf_t *bufs, unsigned nbufs)
{
    struct tls_records r = {p->tls, &p->w->tls_out, 0};
    r.gather->len = 0;
    for (unsigned i = 0; i < nbufs; i++)
        tls_records_put(&r, bufs[i].base, bufs[i].len);
    return tls_records_end(&r);
}

/* Writes what is queued: as much as the socket takes now without copying, the rest copied
 * into one write request. Errors are kept in p->write_error for the owner to act on. */
static int peer_flush(struct peer *p)
{
    struct outq *q = &p->out;
    if (p->kind == PEER_UPSTREAM && ((struct upstream *)p)->h2c)
        return h2c_stream_flush((struct upstream *)p);
    if (p->kind == PEER_H2C && !p->closing && !p->write_error)
        h2c_conn_pull((struct h2c_conn *)p);
    if (q->count == 0) { /* a TLS client may still have handshake records or an alert */
        const char *unused;
        if (!p->tls || tls_conn_output(p->tls, &unused) == 0)
            return 0;
    }
    if (p->closing || p->write_error) {
        q->count = 0;
        q->scratch.len = 0;
        return p->write_error;
    }
    if (p->kind == PEER_CLIENT && ((struct client *)p)->h2_conn)
        return stream_flush((struct client *)p);
    uv_buf_t bufs[OUTQ_PIECES];
    size_t total = 0;
    for (unsigned i = 0; i < q->count; i++) {
        const char *base = q->pieces[i].ptr ? q->pieces[i].ptr : q->scratch.data + q->pieces[i].off;
        bufs[i] = uv_buf_init((char *)base, (unsigned)q->pieces[i].len);
        total += q->pieces[i].len;
    }
    unsigned nbufs = q->count;
    size_t plain_total = total;
    if (p->tls) { /* the pieces become records: one buffer of ciphertext to write */
        if (peer_tls_write(p, bufs, q->count) < 0)
            p->write_error = UV_EPROTO;
        const char *cipher;
        total = tls_conn_output(p->tls, &cipher);
        bufs[0] = uv_buf_init((char *)cipher, (unsigned)total);
        nbufs = 1;
    }
    size_t written = 0;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&p->tcp) == 0) {
        int r = uv_try_write((uv_stream_t *)&p->tcp, bufs, nbufs);
        if (r >= 0)
            written = (size_t)r;
        else if (r != UV_EAGAIN && r != UV_ENOSYS)
            p->write_error = r;
    }
    if (!p->write_error && written < total) {
        struct write_req *wr = xmalloc(sizeof(*wr) + (total - written));
        size_t skip = written, at = 0;
        for (unsigned i = 0; i < nbufs; i++) {
            size_t len = bufs[i].len;
            if (skip >= len) {
                skip -= len;
                continue;
            }
            memcpy(wr->data + at, bufs[i].base + skip, len - skip);
            at += len - skip;
            skip = 0;
        }
        wr->peer = p;
        uv_buf_t one = uv_buf_init(wr->data, (unsigned)at);
        int r = uv_write(&wr->req, (uv_stream_t *)&p->tcp, &one, 1, on_write);
        if (r < 0) {
            free(wr);
            p->write_error = r;
        }
    }
    if (p->tls)
        tls_conn_output_consumed(p->tls, total);
    if (p->kind == PEER_CLIENT)
        ROUTER_METRIC_ADD(p->w->m.bytes_to_clients, plain_total);
    q->count = 0;
    q->scratch.len = 0;
    if (q->scratch.cap > 64 * 1024) { /* a huge head once should not stay with the connection */
        buf_free(&q->scratch);
    }
    return p->write_error;
}

/* A stream of an HTTP/2 connection: its response bytes go to the session, which sends them
 * as the client's window allows (router_h2_stream_queued counts what waits). */
static int stream_flush(struct client *c)
{
    struct outq *q = &c->p.out;
    for (unsigned i = 0; i < q->count && c->h2s; i++) {
        const char *base = q->pieces[i].ptr ? q->pieces[i].ptr : q->scratch.data + q->pieces[i].off;
        if (router_h2_stream_response(c->h2s, base, q->pieces[i].len) < 0) {
            c->p.write_error = UV_EPROTO;
            break;
        }
    }
    q->count = 0;
    q->scratch.len = 0;
    if (q->scratch.cap > 64 * 1024)
        buf_free(&q->scratch);
    return c->p.write_error;
}

/* What an h2c connection's session has to send (SETTINGS, HEADERS, DATA the instance's
 * windows now admit, WINDOW_UPDATE, RST_STREAM) joins its queue. */
static void h2c_conn_pull(struct h2c_conn *conn)
{
    struct outq *q = &conn->p.out;
    if (q->count == OUTQ_PIECES)
        return; /* written first; peer_flush pulls again next time */
    size_t off = q->scratch.len;
    if (router_h2c_output(conn->h2c, &q->scratch) > 0) {
        q->pieces[q->count].ptr = NULL;
        q->pieces[q->count].off = off;
        q->pieces[q->count].len = q->scratch.len - off;
        q->count++;
    }
}

/* A stream of an h2c connection: the HTTP/1.1 bytes queued become its frames (router_h2c.c),
 * sent on the connection with whatever else the session has. */
static int h2c_stream_flush(struct upstream *u)
{
    struct outq *q = &u->p.out;
    int rc = u->p.write_error;
    for (unsigned i = 0; i < q->count && rc == 0; i++) {
        const char *base = q->pieces[i].ptr ? q->pieces[i].ptr : q->scratch.data + q->pieces[i].off;
        if (!u->h2s || router_h2c_stream_request(u->h2s, base, q->pieces[i].len) < 0)
            rc = UV_EPROTO;
    }
    q->count = 0;
    q->scratch.len = 0;
    if (rc && !u->p.write_error)
        u->p.write_error = rc;
    if (u->conn && !u->conn->dispatching)
        peer_flush(&u->conn->p);
    return u->p.write_error;
}

static size_t peer_queued(struct peer *p)
{
    if (p->kind == PEER_UPSTREAM && ((struct upstream *)p)->h2c) {
        struct upstream *u = (struct upstream *)p;
        if (!u->conn || !u->h2s)
            return 0;
        return uv_stream_get_write_queue_size((uv_stream_t *)&u->conn->p.tcp) +
               router_h2c_stream_queued(u->h2s);
    }
    if (p->kind == PEER_CLIENT && ((struct client *)p)->h2_conn) {
        struct client *c = (struct client *)p;
        return c->h2s ? router_h2_stream_queued(c->h2s) : 0;
    }
    return uv_stream_get_write_queue_size((uv_stream_t *)&p->tcp);
}

/* ---- headers ---------------------------------------------------------------------------- */

static void headers_reset(struct headers *h)
{
    h->raw.len = 0;
    h->count = 0;
    h->last = 0;
}

static void headers_free(struct headers *h)
{
    buf_free(&h->raw);
    free(h->ix);
    memset(h, 0, sizeof(*h));
}

static int headers_field(struct headers *h, const char *at, size_t len, size_t max_count)
{
    if (h->last != 1) {
        if (h->count >= max_count)
            return -1;
        if (h->count == h->cap) {
            h->cap = h->cap ? h->cap * 2 : 16;
            h->ix = xrealloc(h->ix, h->cap * sizeof(*h->ix));
        }
        h->ix[h->count++] = (struct hdr_ix){(uint32_t)h->raw.len, 0, 0, 0};
        h->last = 1;
    }
    buf_append(&h->raw, at, len);
    h->ix[h->count - 1].name_len += (uint32_t)len;
    return 0;
}

static void headers_value(struct headers *h, const char *at, size_t len)
{
    if (h->count == 0)
        return;
    if (h->last != 2) {
        h->ix[h->count - 1].value_off = (uint32_t)h->raw.len;
        h->last = 2;
    }
    buf_append(&h->raw, at, len);
    h->ix[h->count - 1].value_len += (uint32_t)len;
}

/* The headers as router_header views (valid until the next change to h). */
static struct router_header *headers_view(struct worker *w, const struct headers *h)
{
    if (w->view_cap < h->count + 1) {
        w->view_cap = h->count + 16;
        w->view = xrealloc(w->view, w->view_cap * sizeof(*w->view));
    }
    for (uint32_t i = 0; i < h->count; i++) {
        w->view[i].name = h->raw.data + h->ix[i].name_off;
        w->view[i].name_len = h->ix[i].name_len;
        w->view[i].value = h->raw.data + h->ix[i].value_off;
        w->view[i].value_len = h->ix[i].value_len;
    }
    return w->view;
}

/* A request id of the worker's random prefix and its request count: 32 hex digits, unique
 * without coordination (formatted by hand: it is made for every request). */
static void new_request_id(struct worker *w, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t parts[2] = {w->id_prefix, ++w->id_counter};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < 16; i++)
            out[k * 16 + i] = hex[(parts[k] >> (60 - 4 * i)) & 15];
    out[32] = '\0';
}

/* ---- route tables ------------------------------------------------------------------------- */

static void table_hold_free(struct table_hold *h)
{
    route_table_unref(h->table);
    free(h->cursors);
    free(h);
}

/* The worker's newest table, taking the current one first if it changed since. */
static struct table_hold *worker_table(struct worker *w)
{
    uint64_t gen = route_table_current_generation();
    if (w->hold && gen == w->table_generation)
        return w->hold;
    struct table_hold *old = w->hold;
    if (old && old->users == 0) {
        table_hold_free(old);
    } else if (old) {
        old->next = w->retired;
        w->retired = old;
    }
    struct table_hold *h = xcalloc(1, sizeof(*h));
    h->table = route_table_current();
    size_t n = route_table_route_count(h->table);
    h->cursors = xcalloc(n ? n : 1, sizeof(*h->cursors));
    for (size_t i = 0; i < n; i++) /* workers start at different instances */
        h->cursors[i] = (unsigned)w->index;
    w->hold = h;
    w->table_generation = gen;
    return h;
}

static struct table_hold *table_hold_take(struct table_hold *h)
{
    h->users++;
    return h;
}

static void table_hold_release(struct worker *w, struct table_hold *h)
{
    if (!h || --h->users > 0 || h == w->hold)
        return;
    for (struct table_hold **pp = &w->retired; *pp; pp = &(*pp)->next)
        if (*pp == h) {
            *pp = h->next;
            break;
        }
    table_hold_free(h);
}

/* Ends a chunked body towards a peer: the last chunk, then the trailer fields received (if
 * any) that a proxy passes on, then the empty line. */
static void end_chunked(struct peer *to, const struct headers *trailers)
{
    if (trailers->count == 0) {
        outq_add(to, "0\r\n\r\n", 5);
        return;
    }
    size_t off;
    struct buf *b = outq_scratch_begin(to, &off);
    router_trailers_build(b, headers_view(to->w, trailers), trailers->count);
    outq_scratch_end(to, off);
}

static void chunk_guard_start(struct chunk_guard *g, uint64_t size)
{
    g->left = size;
    g->crlf = size > 0 ? 2 : 0; /* the last chunk has no data, and no CRLF of its own */
}

/* Checks the bytes in [p, end) that follow a chunk's data, if its data is complete; false
 * when one is not the CRLF that must come there. Bytes past `end` are checked by the next
 * call. */
static bool chunk_guard_check(struct chunk_guard *g, const char *p, const char *end)
{
    if (g->left)
        return true;
    for (; g->crlf && p < end; p++, g->crlf--)
        if (*p != (g->crlf == 2 ? '\r' : '\n'))
            return false;
    return true;
}

/* Counts len bytes of chunk data at `at`; once the chunk's data is complete, checks what
 * follows it in the parser's input (up to feed_end). False on anything there but CRLF. */
static bool chunk_guard_body(struct chunk_guard *g, const char *at, size_t len,
                             const char *feed_end)
{
    g->left = len < g->left ? g->left - len : 0;
    return g->left > 0 || chunk_guard_check(g, at + len, feed_end);
}

/* ---- exchanges (one request and its response) --------------------------------------------- */

static uint64_t now_us(void)
{
    return uv_hrtime() / 1000;
}

static struct exchange *exchange_new(struct client *c)
{
    struct worker *w = c->p.w;
    struct exchange *x = w->spare;
    if (x) {
        /* keep the buffers' memory, clear the rest */
        w->spare = (struct exchange *)x->u;
        w->spare_count--;
        struct headers req = x->req, resp = x->resp, req_trailers = x->req_trailers;
        struct buf head = x->head;
        memset(x, 0, sizeof(*x));
        x->req = req;
        x->resp = resp;
        x->req_trailers = req_trailers;
        x->head = head;
        headers_reset(&x->req);
        headers_reset(&x->resp);
        headers_reset(&x->req_trailers);
        x->head.len = 0;
    } else {
        x = xcalloc(1, sizeof(*x));
    }
    x->c = c;
    x->start_us = now_us();
    return x;
}

static void worker_drain_pool_idle(struct worker *w, struct pool *p);

/* The backend has answered: least-connection stops counting the request before the answer's
 * last bytes reach the client, whose next request (on any worker) must see the backend idle. */
static void exchange_backend_answered(struct exchange *x)
{
    if (x->backend) {
        if (x->route->balance == ROUTE_BALANCE_LEAST_CONNECTION)
            __atomic_sub_fetch(&x->backend->active, 1, __ATOMIC_RELAXED);
        x->backend = NULL;
    }
}

static void exchange_release_backend(struct exchange *x)
{
    if (x->pool) {
        struct pool *p = x->pool;
        if (x->pool_prev)
            x->pool_prev->pool_next = x->pool_next;
        else
            p->exchanges = x->pool_next;
        if (x->pool_next)
            x->pool_next->pool_prev = x->pool_prev;
        x->pool_prev = x->pool_next = NULL;
        x->pool = NULL;
        if (--p->in_flight == 0 && p->drains)
            worker_drain_pool_idle(x->c->p.w, p);
    }
    exchange_backend_answered(x);
}

static void exchange_destroy(struct exchange *x)
{
    headers_free(&x->req);
    headers_free(&x->resp);
    headers_free(&x->req_trailers);
    buf_free(&x->head);
    buf_free(&x->replay);
    free(x);
}

/* Ends an exchange; its memory goes to the worker's spares (linked through `u`). */
static void exchange_free(struct exchange *x)
{
    struct worker *w = x->c->p.w;
    exchange_release_backend(x);
    if (x->stats) {
        route_stats_change(x->stats, w->index, -1, now_us());
        x->stats = NULL;
    }
    table_hold_release(w, x->hold);
    x->hold = NULL;
    buf_free(&x->replay); /* rare: not kept with a spare */
    bool small = x->req.raw.cap <= 8192 && x->resp.raw.cap <= 8192 && x->head.cap <= 8192 &&
                 x->req_trailers.raw.cap <= 8192;
    if (small && w->spare_count < ROUTER_SPARE_EXCHANGES && !w->stopping) {
        x->u = (struct upstream *)w->spare;
        w->spare = x;
        w->spare_count++;
        return;
    }
    exchange_destroy(x);
}

static void metrics_count(struct worker *w, struct exchange *x)
{
    int cls = x->status / 100;
    if (cls < 1 || cls > 5)
        cls = 5;
    ROUTER_METRIC_ADD(w->m.requests_by_class[cls], 1);
    uint64_t us = now_us() - x->start_us;
    int b = 0;
    while (b < ROUTER_LATENCY_BUCKETS && us > router_latency_bounds_us[b])
        b++;
    ROUTER_METRIC_ADD(w->m.latency_buckets[b], 1);
    ROUTER_METRIC_ADD(w->m.latency_sum_us, us);
}

/* The access line for skiffd (docs/bus.md), batched per worker and sent once per loop turn.
 * Written piece by piece, numbers by hand: it is made for every request, and a printf format
 * (the %.1f of the duration above all) cost more than the rest of it. */
static void access_log(struct exchange *x)
{
    if (!x->route || !x->route->app_guid[0] || !router_bus_connected())
        return;
    struct worker *w = x->c->p.w;
    struct buf *b = &w->access;
    if (b->len > 1024 * 1024) { /* skiffd is not keeping up: the bus client counts it */
        router_bus_count_dropped(1);
        return;
    }
    const char *url = x->req.raw.data ? x->req.raw.data + x->url_off : "";
    uint64_t tenths_ms = (now_us() - x->start_us + 50) / 100; /* rounded as %.1f would */
    int index = w->cfg->router_index;
    buf_puts(b, "{\"type\":\"access\",\"app_guid\":\"");
    buf_append_json_escaped(b, x->route->app_guid, strlen(x->route->app_guid),
                            BUF_JSON_PERCENT_NON_ASCII);
    buf_puts(b, "\",\"router_index\":");
    if (index < 0)
        buf_putc(b, '-');
    buf_put_uint(b, index < 0 ? 0ull - (unsigned long long)index : (unsigned long long)index);
    buf_puts(b, ",\"line\":\"");
    buf_puts(b, llhttp_method_name((llhttp_method_t)x->method));
    buf_putc(b, ' ');
    buf_append_json_escaped(b, url, x->url_len > 2048 ? 2048 : x->url_len,
                            BUF_JSON_PERCENT_NON_ASCII);
    buf_putc(b, ' ');
    if (x->status < 0)
        buf_putc(b, '-');
    buf_put_uint(b, x->status < 0 ? 0ull - (unsigned long long)x->status
                                  : (unsigned long long)x->status);
    buf_putc(b, ' ');
    buf_put_uint(b, (unsigned long long)x->resp_bytes);
    buf_puts(b, "B ");
    buf_put_uint(b, (unsigned long long)(tenths_ms / 10));
    buf_putc(b, '.');
    buf_putc(b, (char)('0' + tenths_ms % 10));
    buf_puts(b, "ms x_request_id:");
    buf_append_json_escaped(b, x->request_id, strnlen(x->request_id, sizeof x->request_id),
                            BUF_JSON_PERCENT_NON_ASCII);
    buf_puts(b, "\"}\n");
    w->access_lines++;
}

static void h2_conn_flush(struct client *c);

/* Writes the HTTP/2 connections that have output, first come first written. */
static void h2_flush_dirty(struct worker *w)
{
    while (w->h2_dirty) {
        struct client *c = w->h2_dirty;
        w->h2_dirty = c->h2_dirty_next;
        if (!w->h2_dirty)
            w->h2_dirty_last = NULL;
        c->h2_dirty = false;
        h2_conn_flush(c);
    }
}

static void on_access_flush(uv_check_t *h)
{
    struct worker *w = h->data;
    h2_flush_dirty(w); /* HTTP/2 output made during this turn */
    if (w->access.len == 0)
        return;
    router_bus_send_lines(w->access.data, w->access.len, w->access_lines);
    w->access.len = 0;
    w->access_lines = 0;
    if (w->access.cap > 1024 * 1024)
        buf_free(&w->access);
}

/* ---- local responses (errors the router answers itself) ------------------------------------ */

/* Answers the current request with an error. `close` ends the connection after it (always so
 * when the request's body was not read). */
static void client_respond_error(struct client *c, int status, const char *code, const char *text,
                                 bool close)
{
    struct exchange *x = c->x;
    if (!x) {
        x = c->x = exchange_new(c);
    }
    if (x->resp_started) { /* part of a response went out already: all we can do is close */
        x->client_close = true;
        client_close(c);
        return;
    }
    if (!x->request_id[0])
        new_request_id(c->p.w, x->request_id);
    x->status = status;
    x->local = true;
    x->resp_started = true;
    x->resp_done = true;
    if (close)
        x->client_close = true;
    size_t len = strlen(text);
    outq_printf(&c->p,
                "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: "
                "%zu\r\nX-Skiff-Router-Error: %s\r\nX-Request-Id: %s\r\n%s\r\n",
                status, http_status_reason(status), len + 1, code, x->request_id,
                x->client_close    ? "Connection: close\r\n"
                : x->client_http10 ? "Connection: keep-alive\r\n"
                                   : "");
    if (!x->is_head)
        outq_printf(&c->p, "%s\n", text);
    x->resp_bytes = len + 1;
    peer_flush(&c->p);
    if (x->client_close)
        exchange_finish(x);
}

/* Answers a request the router cannot route; the connection goes on to the next request when
 * this one has no body to skip and the client did not ask for it to end. */
static void client_answer_and_continue(struct client *c, int status, const char *code,
                                       const char *text, bool drain)
{
    struct exchange *x = c->x;
    bool has_body = x->chunked || x->content_length > 0;
    bool close = has_body || x->client_ends;
    client_respond_error(c, status, code, text, close);
    if (!close && !c->p.closing && !c->shutting_down) {
        c->state = C_BODY; /* the parser still has to reach the end of the request */
        if (drain)
            client_drain_pending(c);
    }
}

/* The TLS connection a request came over: its own, or its HTTP/2 connection's; NULL for
 * plain HTTP. */
static struct tls_conn *client_tls(const struct client *c)
{
    return c->h2_conn ? c->h2_conn->p.tls : c->p.tls;
}

/* The HTTPS listener's port as text ("" for 443 or without HTTPS: the scheme's own). */
static const char *tls_port_text(const struct router_config *cfg)
{
    const char *colon = cfg->tls_addr && *cfg->tls_addr ? strrchr(cfg->tls_addr, ':') : NULL;
    return colon && strcmp(colon + 1, "443") ? colon : "";
}

/* A route that is HTTPS only, asked over HTTP: 301 (GET, HEAD) or 308 (other methods, which
 * must be repeated as they were) to the same host and target on the HTTPS port. The host was
 * checked by router_authority_valid and the target by the parser: neither holds CR or LF. */
static void client_redirect_https(struct client *c, const char *host, size_t host_len,
                                  const char *url, size_t url_len)
{
    struct exchange *x = c->x;
    size_t name_len = host_len;
    const char *close_bracket = host[0] == '[' ? memchr(host, ']', host_len) : NULL;
    const char *colon = close_bracket ? NULL : memchr(host, ':', host_len);
    if (close_bracket)
        name_len = (size_t)(close_bracket - host) + 1;
    else if (colon)
        name_len = (size_t)(colon - host);
    bool keep_method = x->method == HTTP_GET || x->method == HTTP_HEAD;
    int status = keep_method ? 301 : 308;
    bool has_body = x->chunked || x->content_length > 0;
    x->status = status;
    x->local = true;
    x->resp_started = x->resp_done = true;
    x->client_close = has_body || !llhttp_should_keep_alive(&c->parser);
    static const char text[] = "This route is served over HTTPS only.\n";
    outq_printf(&c->p,
                "HTTP/1.1 %d %s\r\nLocation: https://%.*s%s%.*s\r\nContent-Type: text/plain; "
                "charset=utf-8\r\nContent-Length: %zu\r\nX-Request-Id: %s\r\n%s\r\n",
                status, http_status_reason(status), (int)name_len, host, tls_port_text(c->p.w->cfg),
                (int)url_len, url, sizeof text - 1, x->request_id,
                x->client_close    ? "Connection: close\r\n"
                : x->client_http10 ? "Connection: keep-alive\r\n"
                                   : "");
    if (!x->is_head)
        outq_add(&c->p, text, sizeof text - 1);
    x->resp_bytes = sizeof text - 1;
    peer_flush(&c->p);
    if (x->client_close) {
        exchange_finish(x);
        return;
    }
    c->state = C_BODY; /* the parser still has to reach the end of the request */
}

/* ---- client connection ---------------------------------------------------------------------- */

static void on_client_handle_closed(uv_handle_t *h)
{
    struct client *c = h->data;
    if (--c->open_handles > 0)
        return;
    buf_free(&c->pending);
    buf_free(&c->p.out.scratch);
    buf_free(&c->h2_out);
    tls_conn_free(c->p.tls);
    free(c);
}

static void client_close(struct client *c)
{
    if (c->p.closing)
        return;
    c->p.closing = true;
    struct worker *w = c->p.w;
    struct exchange *x = c->x;
    hold_unlink(c);
    handshake_unlink(c);
    if (x) {
        c->x = NULL;
        exchange_drop_hedges(x);
        if (x->u) {
            x->u->x = NULL;
            upstream_close(x->u);
            x->u = NULL;
        }
        if (x->status == 0)
            x->status = 499; /* closed before a response: counted with client errors */
        metrics_count(w, x);
        exchange_free(x);
    }
    if (c->h2_conn) { /* a stream: no socket of its own, not in the worker's list */
        if (c->h2s) {
            router_h2_stream_detach(c->h2s);
            c->h2s = NULL;
            h2_want_output(c->h2_conn);
        }
        uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
        return;
    }
    if (c->h2) {
        router_h2_session_free(c->h2); /* closes its streams' clients */
        c->h2 = NULL;
        struct client *before = NULL;
        for (struct client **pp = &w->h2_dirty; *pp; before = *pp, pp = &(*pp)->h2_dirty_next)
            if (*pp == c) {
                *pp = c->h2_dirty_next;
                if (w->h2_dirty_last == c)
                    w->h2_dirty_last = before;
                break;
            }
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    __atomic_store_n(&w->client_count, w->client_count - 1, __ATOMIC_RELAXED);
    ROUTER_METRIC_ADD(w->m.connections_open, -1);
    uv_close((uv_handle_t *)&c->p.tcp, on_client_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_client_handle_closed);
    worker_maybe_done(w);
}

static void on_client_shutdown(uv_shutdown_t *req, int status)
{
    struct client *c = req->data;
    free(req);
    c->fin_sent = true;
    if (status < 0 || c->peer_gone || c->eof)
        client_close(c);
}

/* Closes after what is queued has been written. Until the client closes too (or a few seconds
 * pass) what it still sends is read and dropped: closing a socket with unread input makes the
 * kernel send a reset, which can destroy the response before the client has read it. */
static void client_shutdown(struct client *c)
{
    if (c->p.closing || c->shutting_down)
        return;
    if (c->h2_conn) { /* a stream ends with its exchange */
        client_close(c);
        return;
    }
    c->shutting_down = true;
    c->p.throttled = false;
    client_update_reading(c);
    if (c->p.write_error) {
        client_close(c);
        return;
    }
    if (c->p.tls) {
        tls_conn_close_notify(c->p.tls);
        peer_flush(&c->p);
    }
    uv_shutdown_t *req = xmalloc(sizeof(*req));
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->p.tcp, on_client_shutdown) < 0) {
        free(req);
        client_close(c);
        return;
    }
    client_set_deadline(c, D_CLOSING, 5000);
}

static void on_timer(uv_timer_t *t);

static void client_set_deadline(struct client *c, enum deadline_kind kind, int ms)
{
    if (c->p.closing)
        return;
    uint64_t now = uv_now(&c->p.w->loop);
    c->deadline_kind = kind;
    c->deadline = now + (uint64_t)ms;
    if (!uv_is_active((uv_handle_t *)&c->timer) || c->timer_due > c->deadline) {
        c->timer_due = c->deadline;
        uv_timer_start(&c->timer, on_timer, (uint64_t)ms, 0);
    }
}

/* Activity on a streaming exchange pushes its deadline without touching the timer. */
static void client_touch(struct client *c)
{
    const struct router_config *cfg = c->p.w->cfg;
    if (c->deadline_kind == D_ACTIVE)
        c->deadline = uv_now(&c->p.w->loop) + (uint64_t)cfg->upstream_timeout_ms;
    else if (c->deadline_kind == D_TUNNEL)
        c->deadline = uv_now(&c->p.w->loop) + (uint64_t)cfg->idle_timeout_ms;
}

static void on_timer(uv_timer_t *t)
{
    struct client *c = t->data;
    uint64_t now = uv_now(&c->p.w->loop);
    if (c->p.closing || c->deadline_kind == D_NONE)
        return;
    if (now < c->deadline) {
        c->timer_due = c->deadline;
        uv_timer_start(&c->timer, on_timer, c->deadline - now, 0);
        return;
    }
    struct exchange *x = c->x;
    switch (c->deadline_kind) {
    case D_HEADER:
        ROUTER_METRIC_ADD(c->p.w->m.timeouts, 1);
        if (c->seen_bytes)
            client_respond_error(c, 408, "request-timeout",
                                 "The request head did not arrive in time.", true);
        else
            client_close(c);
        break;
    case D_CONNECT:
        if (x && x->u && x->u->waiting && h2c_pool_answering(x->pool)) {
            /* the instance answers; it has no stream free yet: not a connect that failed */
            client_set_deadline(c, D_STREAM_SLOT, c->p.w->cfg->upstream_timeout_ms);
            break;
        }
        if (x && x->u && x->u->state == U_CONNECTING) {
            upstream_failed(x->u, UV_ETIMEDOUT, true);
            break;
        }
        client_close(c);
        break;
    case D_HEDGE:
        if (x && x->u && x->u->state == U_CONNECTING && !x->u->h2c) {
            hedge_start(x);
            x->hedge_next = now + (uint64_t)c->p.w->cfg->connect_hedge_ms;
            connect_wait_arm(x);
            break;
        }
        client_close(c);
        break;
    case D_ACTIVE:
        ROUTER_METRIC_ADD(c->p.w->m.timeouts, 1);
        if (x && !x->req_done)
            client_respond_error(c, 408, "request-timeout",
                                 "The request body stopped arriving; the router gave up waiting.",
                                 true);
        else
            client_respond_error(c, 504, "backend-timeout", "The app did not answer in time.",
                                 true);
        break;
    case D_HANDSHAKE: /* a slow or silent handshake holds nothing but its socket, then goes */
        ROUTER_METRIC_ADD(c->p.w->m.timeouts, 1);
        client_close(c);
        break;
    case D_STREAM_SLOT:
        ROUTER_METRIC_ADD(c->p.w->m.timeouts, 1);
        client_respond_error(c, 504, "backend-timeout",
                             "The app's instance had no stream free for this request in time.",
                             true);
        break;
    case D_HOLD:
        hold_unlink(c);
        client_respond_error(c, 503, "scale-from-zero-timeout",
                             "The app did not start an instance in time for this request.", true);
        break;
    default: /* idle keep-alive, tunnel silence, a close that waits on a slow reader */
        client_close(c);
        break;
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct peer *p = h->data;
    buf->base = p->w->readbuf;
    buf->len = sizeof(p->w->readbuf);
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void client_update_reading(struct client *c)
{
    if (c->p.closing)
        return;
    /* While a request waits on its backend the connection keeps reading into `pending` (up
     * to a bound): stopping and restarting costs two epoll_ctl calls per request. */
    bool waiting = c->state == C_WAIT_UPSTREAM || c->state == C_WAIT_RESPONSE;
    bool want = !c->p.throttled && !c->eof &&
                (c->shutting_down || !waiting || c->pending.len < ROUTER_PENDING_MAX);
    if (want == c->p.reading)
        return;
    c->p.reading = want;
    if (c->h2_conn) {
        if (c->h2s)
            router_h2_stream_set_reading(c->h2s, want);
        return;
    }
    if (want)
        uv_read_start((uv_stream_t *)&c->p.tcp, on_alloc, on_client_read);
    else
        uv_read_stop((uv_stream_t *)&c->p.tcp);
}

static void client_expect_request(struct client *c)
{
    c->state = C_HEAD;
    c->scan_done = false;
    c->seen_bytes = false;
    router_head_scan_reset(&c->scan);
    client_set_deadline(c, D_IDLE, c->p.w->cfg->idle_timeout_ms);
}

/* Starts the next request on a kept-alive connection. */
static void client_next_request(struct client *c)
{
    if (c->h2_conn || (c->eof && c->pending.len == 0)) { /* a stream carries one request */
        client_shutdown(c);
        return;
    }
    client_expect_request(c);
    client_drain_pending(c);
}

/* Runs the parser over the held bytes (moved out first: parsing may hold new ones). */
static void client_drain_pending(struct client *c)
{
    struct buf held = c->pending;
    memset(&c->pending, 0, sizeof(c->pending));
    if (held.len || c->state == C_BODY)
        client_feed(c, held.data ? held.data : "", held.len);
    buf_free(&held);
    if (c->eof && !c->p.closing && !c->shutting_down &&
        (c->state == C_HEAD || c->state == C_BODY) && c->pending.len == 0) {
        /* the client is gone and what it sent ends before a request does */
        client_shutdown(c);
        return;
    }
    client_update_reading(c);
}

static void client_hold(struct client *c, const char *data, size_t len)
{
    if (len)
        buf_append(&c->pending, data, len);
}

static void client_parse_error(struct client *c, llhttp_errno_t err)
{
    struct exchange *x = c->x;
    ROUTER_METRIC_ADD(c->p.w->m.bad_requests, 1);
    if (x && x->error_status) {
        client_respond_error(c, x->error_status, x->error_code, x->error_text, true);
        return;
    }
    if (x && x->u && x->resp_started) { /* mid-stream garbage after a response began */
        client_close(c);
        return;
    }
    char text[200];
    snprintf(text, sizeof(text), "The request is not valid HTTP/1.1 (%s).",
             err == HPE_USER ? "rejected" : llhttp_get_error_reason(&c->parser));
    client_respond_error(c, 400, "bad-request", text, true);
}

static void client_feed(struct client *c, const char *data, size_t len)
{
    struct worker *w = c->p.w;
    for (;;) {
        if (c->p.closing || c->shutting_down)
            return;
        if (c->state == C_TUNNEL) {
            if (c->x && c->x->u && len) {
                outq_add(&c->x->u->p, data, len);
                peer_flush(&c->x->u->p);
                if (peer_queued(&c->x->u->p) > ROUTER_HIGH_WATER) {
                    c->p.throttled = true;
                    client_update_reading(c);
                }
            }
            return;
        }
        if (c->state != C_HEAD && c->state != C_BODY) {
            client_hold(c, data, len);
            client_update_reading(c);
            return;
        }
        if (c->state == C_HEAD) {
            if (len == 0)
                return;
            if (!c->x) {
                c->x = exchange_new(c);
                c->seen_bytes = true;
                client_set_deadline(c, D_HEADER, w->cfg->header_timeout_ms);
            }
            if (!c->scan_done) {
                size_t end = 0;
                int r = router_head_scan(&c->scan, data, len, &end);
                if (r < 0) {
                    ROUTER_METRIC_ADD(w->m.bad_requests, 1);
                    client_respond_error(c, 400, "bad-request",
                                         "The request has a bare CR or LF, or a folded header "
                                         "line; lines must end with CRLF.",
                                         true);
                    return;
                }
                c->scan_done = r == 1;
            }
        }
        c->pause = PAUSE_NONE;
        if (c->state == C_BODY && c->x && c->x->req_guard.crlf &&
            !chunk_guard_check(&c->x->req_guard, data, data + len)) {
            ROUTER_METRIC_ADD(w->m.bad_requests, 1);
            client_respond_error(c, 400, "bad-request",
                                 "A chunk's data is longer than its size says (or does not end "
                                 "with CRLF).",
                                 true);
            return;
        }
        c->feed_end = data + len;
        llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
        struct exchange *x = c->x;
        if (x && x->u)
            peer_flush(&x->u->p);
        if (err == HPE_OK) {
            if (x && x->u && peer_queued(&x->u->p) > ROUTER_HIGH_WATER) {
                c->p.throttled = true;
                client_update_reading(c);
            }
            return;
        }
        size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
        if (used > len)
            used = len;
        data += used;
        len -= used;
        if (err == HPE_PAUSED && c->pause == PAUSE_HEADERS) {
            llhttp_resume(&c->parser);
            c->state = C_WAIT_UPSTREAM;
            route_and_connect(c);
            /* answered by the router, or a pooled connection took it: parse on in this loop
             * (not by recursion: a pipeline of thousands of requests must not grow the stack) */
            if (c->state == C_BODY)
                continue;
            client_hold(c, data, len);
            client_update_reading(c);
            return;
        }
        if (err == HPE_PAUSED && c->pause == PAUSE_MESSAGE) {
            llhttp_resume(&c->parser);
            x->req_done = true;
            if (x->resp_done) { /* answered by the router: on to the next request */
                if (!exchange_end(x))
                    return;
                if (c->eof && len == 0) {
                    client_shutdown(c);
                    return;
                }
                client_expect_request(c);
                continue;
            }
            c->state = C_WAIT_RESPONSE;
            client_hold(c, data, len);
            client_update_reading(c);
            return;
        }
        if (err == HPE_PAUSED_UPGRADE && x && x->upgrade) {
            x->req_done = true;
            if (x->resp_done) { /* answered by the router: no tunnel, and no more requests */
                x->client_close = true;
                exchange_finish(x);
                return;
            }
            /* what follows the head belongs to the tunnel, sent once the backend agrees */
            c->state = C_WAIT_RESPONSE;
            client_hold(c, data, len);
            client_update_reading(c);
            return;
        }
        client_parse_error(c, err);
        return;
    }
}

static void on_half_close_done(uv_shutdown_t *req, int status)
{
    free(req);
}

/* ---- HTTPS clients: ciphertext in, plaintext to client_feed -------------------------------- */

static void handshake_unlink(struct client *c)
{
    if (!c->handshaking)
        return;
    struct worker *w = c->p.w;
    c->handshaking = false;
    if (c->hs_prev)
        c->hs_prev->hs_next = c->hs_next;
    else
        w->hs_first = c->hs_next;
    if (c->hs_next)
        c->hs_next->hs_prev = c->hs_prev;
    else
        w->hs_last = c->hs_prev;
    c->hs_prev = c->hs_next = NULL;
    w->hs_count--;
}

/* A new HTTPS connection waits for its handshake. Past the cap the oldest handshake in flight
 * is dropped, not the new one: a client that opens connections and never says a word holds
 * the oldest places, and a real client's handshake lasts milliseconds. */
static void handshake_begin(struct client *c)
{
    struct worker *w = c->p.w;
    int cap = w->cfg->tls_max_handshakes > 0 ? w->cfg->tls_max_handshakes : 1;
    while (w->hs_count >= cap && w->hs_first) {
        ROUTER_METRIC_ADD(w->m.timeouts, 1);
        client_close(w->hs_first);
    }
    c->handshaking = true;
    c->hs_prev = w->hs_last;
    if (w->hs_last)
        w->hs_last->hs_next = c;
    else
        w->hs_first = c;
    w->hs_last = c;
    w->hs_count++;
    client_set_deadline(c, D_HANDSHAKE, w->cfg->tls_handshake_timeout_ms);
}

/* Ciphertext from an HTTPS client: the handshake first, then every record's plaintext goes to
 * client_feed (all of it: what one read brings stays bounded by the read buffer). */
static void client_tls_input(struct client *c, const char *data, size_t len)
{
    struct worker *w = c->p.w;
    tls_conn_feed(c->p.tls, data, len);
    if (c->handshaking) {
        char err[256];
        int r = tls_conn_handshake(c->p.tls, err, sizeof err);
        peer_flush(&c->p);
        if (r < 0) {
            log_debug("TLS handshake from %s: %s", c->ip, err);
            client_close(c);
            return;
        }
        if (r == 0)
            return;
        handshake_unlink(c);
        c->proto_known = true; /* by ALPN only: h2 over TLS needs it (RFC 9113 3.2) */
        size_t alpn_len = 0;
        const char *alpn = tls_conn_alpn(c->p.tls, &alpn_len);
        if (alpn_len == 2 && memcmp(alpn, "h2", 2) == 0) {
            client_h2_start(c);
            h2_conn_flush(c); /* the server's SETTINGS */
        } else {
            client_set_deadline(c, D_IDLE, w->cfg->header_timeout_ms);
        }
    }
    for (;;) {
        if (c->p.closing || (c->h2 && c->shutting_down))
            return;
        long n = tls_conn_read(c->p.tls, w->tls_plain, sizeof(w->tls_plain));
        if (n == 0)
            break;
        if (n < 0) { /* close_notify, a renegotiation attempt or a bad record */
            peer_flush(&c->p);
            client_close(c);
            return;
        }
        if (c->h2) { /* HTTP/2: the session decides what keeps the connection alive */
            h2_conn_input(c, w->tls_plain, (size_t)n);
            continue;
        }
        client_touch(c);
        client_feed(c, w->tls_plain, (size_t)n);
    }
    if (!c->p.closing)
        peer_flush(&c->p); /* records TLS writes by itself (a key update's answer) */
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = s->data;
    if (c->shutting_down) { /* lingering close: drop what comes, close when the client does */
        if (nread < 0 || (c->discarded += (uint32_t)nread) > 1024 * 1024) {
            c->peer_gone = true;
            uv_read_stop(s);
            c->p.reading = false;
            if (c->fin_sent || nread != UV_EOF)
                client_close(c);
        }
        return;
    }
    if (nread > 0 && c->p.tls) {
        client_tls_input(c, buf->base, (size_t)nread);
        return;
    }
    if (nread > 0) {
        if (c->h2) {
            h2_conn_input(c, buf->base, (size_t)nread);
            return;
        }
        client_touch(c);
        if (!c->proto_known && !client_sniff(c, buf->base, (size_t)nread))
            return;
        client_feed(c, buf->base, (size_t)nread);
        return;
    }
    if (nread == 0)
        return;
    /* end of stream or error */
    struct exchange *x = c->x;
    if (c->state == C_TUNNEL && x && x->u && nread == UV_EOF) {
        /* half-close: pass the client's end on, keep the other direction open */
        c->eof = true; /* never read again (client_update_reading) */
        client_update_reading(c);
        uv_shutdown_t *req = xmalloc(sizeof(*req));
        req->data = NULL;
        peer_flush(&x->u->p);
        if (uv_shutdown(req, (uv_stream_t *)&x->u->p.tcp, on_half_close_done) < 0) {
            free(req);
            client_close(c);
        }
        return;
    }
    if (nread == UV_EOF && (c->state == C_WAIT_UPSTREAM || c->state == C_WAIT_RESPONSE)) {
        /* a client may half-close after its last request: answer what was asked */
        c->eof = true;
        client_update_reading(c);
        return;
    }
    client_close(c);
}

/* ---- HTTP/2 connections (router_h2.h) ---------------------------------------------------- */

/* The client's response queue drained: its backend may be read again. */
static void client_drained(struct client *c)
{
    if (c->x && c->x->u && c->x->u->p.throttled && !(c->state == C_TUNNEL && c->p.closing)) {
        c->x->u->p.throttled = false;
        upstream_update_reading(c->x->u);
    }
}

static void h2_tls_sink_write(void *ctx, const char *p, size_t n)
{
    tls_records_put(ctx, p, n);
}

/* Up to `max` bytes of the session's frames made ready for the socket: over TLS encrypted at
 * once, as the session gives them (a DATA frame's payload from the stream's queue, without a
 * copy: the session's frames are records, router_h2_session_set_frame_max); in cleartext
 * gathered into h2_out (kept with its capacity) and queued. */
static size_t h2_conn_output(struct client *c, size_t max)
{
    if (!c->p.tls) {
        c->h2_out.len = 0;
        size_t n = router_h2_session_output(c->h2, &c->h2_out, max);
        outq_add(&c->p, c->h2_out.data, n);
        return n;
    }
    struct tls_records r = {c->p.tls, &c->p.w->h2_gather, 0};
    r.gather->len = 0;
    struct router_h2_sink sink = {h2_tls_sink_write, &r};
    size_t n = router_h2_session_output_to(c->h2, &sink, max);
    if (tls_records_end(&r) < 0 && !c->p.write_error)
        c->p.write_error = UV_EPROTO;
    ROUTER_METRIC_ADD(c->p.w->m.bytes_to_clients, n);
    return n;
}

/* Sends what the session has, while the socket keeps up; closes once the session is over. */
static void h2_conn_flush(struct client *c)
{
    struct worker *w = c->p.w;
    while (!c->p.closing && !c->shutting_down && c->h2 && peer_queued(&c->p) <= ROUTER_HIGH_WATER) {
        /* what the socket does not take now is copied into a write request by peer_flush */
        size_t n = h2_conn_output(c, 64 * 1024);
        peer_flush(&c->p);
        if (c->p.write_error) {
            client_close(c);
            return;
        }
        if (n == 0)
            break;
    }
    if (c->p.closing || c->shutting_down || !c->h2)
        return;
    if (router_h2_session_done(c->h2) ||
        (w->stopping && router_h2_session_streams(c->h2) == 0 && peer_queued(&c->p) == 0)) {
        const char *why = router_h2_session_error(c->h2);
        if (why[0])
            log_debug("router: HTTP/2 connection from %s ends: %s", c->ip, why);
        client_shutdown(c);
    }
}

static void h2_want_output(void *ctx)
{
    struct client *conn = ctx;
    struct worker *w = conn->p.w;
    if (conn->h2_dirty || conn->p.closing)
        return;
    conn->h2_dirty = true;
    conn->h2_dirty_next = NULL;
    if (w->h2_dirty_last)
        w->h2_dirty_last->h2_dirty_next = conn;
    else
        w->h2_dirty = conn;
    w->h2_dirty_last = conn;
}

/* A stream's request head is complete: it becomes a client of its own, without a socket. */
static void *h2_stream_open(void *ctx, struct router_h2_stream *s)
{
    struct client *conn = ctx;
    struct worker *w = conn->p.w;
    if (w->stopping)
        return NULL;
    struct client *c = xcalloc(1, sizeof(*c));
    c->p.w = w;
    c->p.kind = PEER_CLIENT;
    c->h2s = s;
    c->h2_conn = conn;
    c->proto_known = true;
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    c->open_handles = 1;
    memcpy(c->ip, conn->ip, sizeof(c->ip));
    llhttp_init(&c->parser, HTTP_REQUEST, &request_settings);
    c->parser.data = c;
    c->state = C_HEAD;
    client_update_reading(c);
    return c;
}

static void h2_stream_request(void *owner, const char *p, size_t n, bool end)
{
    struct client *c = owner;
    if (end) /* as a client that half-closes after its request: answered, then closed */
        c->eof = true;
    if (n)
        client_feed(c, p, n);
    if (c->p.closing)
        return;
    if (end && c->state == C_HEAD && !c->x) { /* already answered */
        client_close(c);
        return;
    }
    client_update_reading(c);
}

static void h2_stream_drained(void *owner)
{
    client_drained(owner);
}

static void h2_stream_closed(void *owner)
{
    struct client *c = owner;
    c->h2s = NULL; /* the session forgets it: nothing more is said to it */
    client_close(c);
}

static const struct router_h2_ops h2_ops = {
    .stream_open = h2_stream_open,
    .stream_request = h2_stream_request,
    .stream_drained = h2_stream_drained,
    .stream_closed = h2_stream_closed,
    .want_output = h2_want_output,
};

static void h2_conn_input(struct client *c, const char *data, size_t len)
{
    if (router_h2_session_input(c->h2, data, len) < 0)
        ROUTER_METRIC_ADD(c->p.w->m.bad_requests, 1);
    /* only a connection with streams is kept from its idle timeout: PINGs or SETTINGS alone
     * do not hold a connection open forever */
    if (c->h2 && router_h2_session_streams(c->h2) > 0)
        client_touch(c);
    h2_conn_flush(c);
}

/* The connection speaks HTTP/2 from now on (the client preface seen, or h2 agreed by ALPN). */
static void client_h2_start(struct client *c)
{
    c->h2 = router_h2_session_new(&c->p.w->h2_limits, &h2_ops, c);
    if (c->p.tls) /* a DATA frame and its head make one record, encrypted where it lies */
        router_h2_session_set_frame_max(c->h2, TLS_RECORD_MAX);
    client_set_deadline(c, D_TUNNEL, c->p.w->cfg->idle_timeout_ms);
}

/* Tells HTTP/2's client preface from HTTP/1.1 on a new connection. Returns whether `data` is
 * for the HTTP/1.1 parser (the bytes held while it was unclear are fed to it first). */
static bool client_sniff(struct client *c, const char *data, size_t len)
{
    char head[sizeof(c->preface)];
    size_t have = c->preface_len;
    size_t add = len < sizeof(head) - have ? len : sizeof(head) - have;
    memcpy(head, c->preface, have);
    memcpy(head + have, data, add);
    int m = router_h2_preface_match(head, have + add);
    if (m == 0) { /* all of data matches so far */
        memcpy(c->preface, head, have + add);
        c->preface_len = (uint8_t)(have + add);
        return false;
    }
    c->proto_known = true;
    if (m > 0) {
        client_h2_start(c);
        if (have)
            router_h2_session_input(c->h2, c->preface, have);
        h2_conn_input(c, data, len);
        return false;
    }
    if (have)
        client_feed(c, c->preface, have);
    return !c->p.closing;
}

/* Takes a connection accepted from the shared listening socket. */
static void client_start(struct worker *w, int fd, bool tls)
{
    struct client *c = xcalloc(1, sizeof(*c));
    c->p.w = w;
    c->p.kind = PEER_CLIENT;
    uv_tcp_init(&w->loop, &c->p.tcp);
    uv_timer_init(&w->loop, &c->timer);
    c->p.tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    c->next = w->clients;
    if (w->clients)
        w->clients->prev = c;
    w->clients = c;
    __atomic_store_n(&w->client_count, w->client_count + 1, __ATOMIC_RELAXED);
    ROUTER_METRIC_ADD(w->m.connections_open, 1);
    ROUTER_METRIC_ADD(w->m.connections_total, 1);
    if (uv_tcp_open(&c->p.tcp, fd) < 0) {
        close(fd);
        client_close(c);
        return;
    }
    if (w->client_count > w->client_cap || w->stopping) {
        ROUTER_METRIC_ADD(w->m.connections_refused, 1);
        client_close(c);
        return;
    }
    uv_tcp_nodelay(&c->p.tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    strcpy(c->ip, "unknown");
    if (uv_tcp_getpeername(&c->p.tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, c->ip, sizeof(c->ip));
        else if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->ip, sizeof(c->ip));
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &request_settings);
    c->parser.data = c;
    c->state = C_HEAD;
    if (tls) {
        c->p.tls = tls_conn_new(tls_store);
        if (!c->p.tls) {
            client_close(c);
            return;
        }
        handshake_begin(c);
    } else {
        client_set_deadline(c, D_IDLE, w->cfg->header_timeout_ms);
    }
    client_update_reading(c);
}

static void on_accept_ready(uv_poll_t *h, int status, int events);

static void worker_set_accepting(struct worker *w, bool on)
{
    if (w->accepting == on)
        return;
    w->accepting = on;
    for (int i = 0; i < listen_count; i++) {
        if (on)
            uv_poll_start(&w->accepts[i], UV_READABLE, on_accept_ready);
        else
            uv_poll_stop(&w->accepts[i]);
    }
}

static void on_accept_pause_end(uv_timer_t *t)
{
    struct worker *w = t->data;
    if (w->stopping)
        return;
    __atomic_store_n(&w->accept_blocked, false, __ATOMIC_RELAXED);
    worker_set_accepting(w, true);
}

/* Stops accepting for a while; a blocked worker is not counted on to take connections. */
static void worker_pause_accepting(struct worker *w, int ms, bool blocked)
{
    if (blocked)
        __atomic_store_n(&w->accept_blocked, true, __ATOMIC_RELAXED);
    worker_set_accepting(w, false);
    uv_timer_start(&w->accept_pause, on_accept_pause_end, (uint64_t)ms, 0);
}

/* Whether another worker that can accept has ROUTER_ACCEPT_SLACK clients fewer than this
 * one: it polls the same socket (or will again within ROUTER_ACCEPT_YIELD_MS) and takes the
 * connection instead. Without this, whichever
 * worker the scheduler runs first takes a burst of new connections (a load generator's 32 at
 * once), and keep-alive keeps them there. */
static bool worker_should_yield(const struct worker *w)
{
    for (int i = 0; i < worker_count; i++) {
        const struct worker *o = &workers[i];
        if (o != w && !__atomic_load_n(&o->accept_blocked, __ATOMIC_RELAXED) &&
            __atomic_load_n(&o->client_count, __ATOMIC_RELAXED) + ROUTER_ACCEPT_SLACK <=
                w->client_count)
            return true;
    }
    return false;
}

/* Every worker polls the same listening socket and takes a few connections per wakeup: a
 * busy worker wakes less often, and one with more clients than another yields for a moment,
 * so connections go to the workers with room for them. */
static void on_accept_ready(uv_poll_t *h, int status, int events)
{
    struct worker *w = h->data;
    int fd;
    if (w->stopping || uv_fileno((uv_handle_t *)h, &fd) < 0)
        return;
    bool tls = false;
    for (int i = 0; i < listen_count; i++)
        if (listen_fds[i] == fd)
            tls = listen_tls[i];
    if (status < 0) { /* libuv stopped the poll: try again in a while */
        worker_pause_accepting(w, ROUTER_ACCEPT_PAUSE_MS, true);
        return;
    }
    for (int n = 0; n < ROUTER_ACCEPT_BATCH;) {
        if (worker_should_yield(w)) {
            worker_pause_accepting(w, ROUTER_ACCEPT_YIELD_MS, false);
            return;
        }
        int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd >= 0) {
            client_start(w, cfd, tls);
            n++;
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* the connection waits in the backlog until descriptors are free again; polling
             * on would only spin */
            worker_pause_accepting(w, ROUTER_ACCEPT_PAUSE_MS, true);
        }
        return; /* EAGAIN: another worker took it; EINVAL: the socket is shut down (stop) */
    }
}

/* ---- request parser callbacks ------------------------------------------------------------ */

static int req_reject(struct exchange *x, int status, const char *code, const char *text)
{
    x->error_status = status;
    x->error_code = code;
    x->error_text = text;
    return HPE_USER;
}

static int on_req_url(llhttp_t *p, const char *at, size_t len)
{
    struct client *c = p->data;
    struct exchange *x = c->x;
    if (x->req.raw.len + len > c->p.w->cfg->max_url_bytes)
        return req_reject(x, 414, "url-too-long", "The request target is too long.");
    if (x->url_len == 0)
        x->url_off = (uint32_t)x->req.raw.len;
    buf_append(&x->req.raw, at, len);
    x->url_len += (uint32_t)len;
    return 0;
}

/* Counts len more bytes of a request's head, or of its trailers, against the header limit.
 * False when that is exceeded: the exchange is then set to answer 431. */
static bool req_head_fits(struct exchange *x, const struct router_config *cfg, size_t len)
{
    if (x->in_trailers) {
        x->trailer_bytes += len;
        if (x->trailer_bytes > cfg->max_header_bytes) {
            req_reject(x, 431, "headers-too-large", "The request trailers are too large.");
            return false;
        }
        return true;
    }
    if (x->req.raw.len + len > cfg->max_header_bytes) {
        req_reject(x, 431, "headers-too-large",
                   "The request headers are too large; keep them under the limit.");
        return false;
    }
    return true;
}

static int on_req_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct client *c = p->data;
    struct exchange *x = c->x;
    const struct router_config *cfg = c->p.w->cfg;
    if (!req_head_fits(x, cfg, len))
        return HPE_USER;
    if (headers_field(x->in_trailers ? &x->req_trailers : &x->req, at, len, cfg->max_headers) < 0)
        return req_reject(x, 431, "too-many-headers",
                          x->in_trailers ? "The request has too many trailer fields."
                                         : "The request has too many headers.");
    return 0;
}

static int on_req_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct client *c = p->data;
    struct exchange *x = c->x;
    const struct router_config *cfg = c->p.w->cfg;
    if (!req_head_fits(x, cfg, len))
        return HPE_USER;
    headers_value(x->in_trailers ? &x->req_trailers : &x->req, at, len);
    return 0;
}

static int on_req_header_field_complete(llhttp_t *p)
{
    struct client *c = p->data;
    struct exchange *x = c->x;
    if (x->in_trailers || x->req.count == 0)
        return 0;
    struct hdr_ix *ix = &x->req.ix[x->req.count - 1];
    if (!router_header_name_valid(x->req.raw.data + ix->name_off, ix->name_len))
        return req_reject(x, 400, "bad-request",
                          "A header name has a character that is not allowed (a space before "
                          "the colon?).");
    return 0;
}

/* Whether the request asks to upgrade to h2c (and so to nothing the router offers). */
static bool upgrade_to_h2c(const struct exchange *x)
{
    for (uint32_t i = 0; i < x->req.count; i++) {
        const struct hdr_ix *ix = &x->req.ix[i];
        struct router_header h = {x->req.raw.data + ix->name_off, ix->name_len,
                                  x->req.raw.data + ix->value_off, ix->value_len};
        if (router_header_is(&h, "upgrade") && router_header_has_token(h.value, h.value_len, "h2c"))
            return true;
    }
    return false;
}

static int on_req_headers_complete(llhttp_t *p)
{
    struct client *c = p->data;
    struct exchange *x = c->x;
    x->in_trailers = true;
    x->method = (uint8_t)p->method;
    x->is_head = p->method == HTTP_HEAD;
    x->chunked = (p->flags & F_CHUNKED) != 0;
    x->has_length = (p->flags & F_CONTENT_LENGTH) != 0;
    x->content_length = x->has_length ? p->content_length : 0;
    x->upgrade = p->upgrade != 0;
    x->client_http10 = p->http_major == 1 && p->http_minor == 0;
    x->client_ends = !llhttp_should_keep_alive(p);
    if (x->upgrade && upgrade_to_h2c(x)) {
        /* h2c by Upgrade (RFC 7540 3.2; RFC 9113 dropped it) is declined, as the RFC allows:
         * the request is answered in HTTP/1.1, and the backend sees no Upgrade. HTTP/2 in
         * cleartext starts with the client preface instead. */
        x->upgrade = false;
        p->upgrade = 0;
    }
    if (p->method == HTTP_CONNECT)
        return req_reject(x, 400, "bad-request", "CONNECT is not supported by this router.");
    if ((p->flags & F_TRANSFER_ENCODING) && !x->chunked)
        return req_reject(x, 400, "bad-request",
                          "Transfer-Encoding must end with chunked in a request.");
    if (p->http_major == 1 && p->http_minor == 0 && (p->flags & F_TRANSFER_ENCODING))
        return req_reject(x, 400, "bad-request", "HTTP/1.0 requests cannot be chunked.");
    c->pause = PAUSE_HEADERS;
    return HPE_PAUSED;
}

static int on_req_body(llhttp_t *p, const char *at, size_t len)
{
    struct client *c = p->data;
    struct exchange *x = c->x;
    uint64_t max = c->p.w->cfg->max_body_bytes;
    x->body_bytes += len;
    if (max && x->body_bytes > max)
        return req_reject(x, 413, "body-too-large", "The request body is larger than allowed.");
    if (x->chunked && !chunk_guard_body(&x->req_guard, at, len, c->feed_end))
        return req_reject(x, 400, "bad-request",
                          "A chunk's data is longer than its size says (or does not end with "
                          "CRLF).");
    if (x->u)
        outq_add(&x->u->p, at, len);
    return 0;
}

static int on_req_chunk_header(llhttp_t *p)
{
    struct client *c = p->data;
    struct exchange *x = c->x;
    x->req_chunk_size = p->content_length;
    chunk_guard_start(&x->req_guard, p->content_length);
    if (x->u && p->content_length > 0)
        outq_printf(&x->u->p, "%llx\r\n", (unsigned long long)p->content_length);
    return 0;
}

static int on_req_chunk_complete(llhttp_t *p)
{
    struct client *c = p->data;
    struct exchange *x = c->x;
    /* content_length is 0 here after a data chunk and for the last chunk alike; the last
     * chunk is written at the end of the message */
    if (x->u && x->chunked && x->req_chunk_size > 0)
        outq_add(&x->u->p, "\r\n", 2);
    return 0;
}

static int on_req_message_complete(llhttp_t *p)
{
    struct client *c = p->data;
    struct exchange *x = c->x;
    if (x->u && x->chunked)
        end_chunked(&x->u->p, &x->req_trailers);
    if (p->upgrade)
        return 0; /* llhttp stops with HPE_PAUSED_UPGRADE right after */
    c->pause = PAUSE_MESSAGE;
    return HPE_PAUSED;
}

/* ---- routing ------------------------------------------------------------------------------ */

static const struct router_header *find_header(const struct router_header *h, size_t n,
                                               const char *lower, int *count)
{
    const struct router_header *found = NULL;
    *count = 0;
    for (size_t i = 0; i < n; i++)
        if (router_header_is(&h[i], lower)) {
            if (!found)
                found = &h[i];
            (*count)++;
        }
    return found;
}

static void route_and_connect(struct client *c)
{
    struct worker *w = c->p.w;
    struct exchange *x = c->x;
    struct router_header *hv = headers_view(w, &x->req);
    size_t hn = x->req.count;
    int n;
    const struct router_header *host = find_header(hv, hn, "host", &n);
    if (n > 1) {
        client_respond_error(c, 400, "bad-request", "The request has more than one Host header.",
                             true);
        return;
    }
    const char *host_s = host ? host->value : NULL;
    size_t host_len = host ? host->value_len : 0;
    char *target = x->req.raw.data + x->url_off;
    const char *why = NULL;
    size_t authority_len, origin_len;
    /* absolute form (http://host/path): the authority in the target is what is routed on and
     * what the app is told (Host, X-Forwarded-Host), whatever Host the client also sent */
    int absolute = router_target_absolute(target, x->url_len, &authority_len, &origin_len, &why);
    if (absolute < 0) {
        client_respond_error(c, 400, "bad-request", why, true);
        return;
    }
    if (absolute > 0) {
        host_s = target;
        host_len = authority_len;
        target += authority_len;
        x->url_off += (uint32_t)authority_len;
        x->url_len = (uint32_t)origin_len;
    }
    /* routed on, and sent on, in one normal form: the app sees that */
    size_t url_len = router_target_normalize(target, x->url_len, &why);
    if (url_len == 0) {
        client_respond_error(c, 400, "bad-request", why, true);
        return;
    }
    x->url_len = (uint32_t)url_len;
    const char *url = target;
    if (!host_s || host_len == 0) {
        client_respond_error(c, 400, "bad-request",
                             "The request has no Host header; say which app it is for.", true);
        return;
    }
    if (!router_authority_valid(host_s, host_len)) {
        client_respond_error(c, 400, "bad-request",
                             "The Host header is not host[:port] (no user@, no odd characters).",
                             true);
        return;
    }
    const struct router_header *rid = find_header(hv, hn, "x-request-id", &n);
    if (rid && n == 1 && router_request_id_valid(rid->value, rid->value_len)) {
        memcpy(x->request_id, rid->value, rid->value_len);
        x->request_id[rid->value_len] = '\0';
    } else {
        new_request_id(w, x->request_id);
    }
    x->hold = table_hold_take(worker_table(w));
    x->host_off = (uint32_t)(host_s - x->req.raw.data);
    x->host_len = (uint32_t)host_len;
    x->route = route_table_lookup(x->hold->table, host_s, host_len, url, url_len);
    if (!x->route) {
        client_answer_and_continue(c, 404, "unknown-route",
                                   "No app is mapped to this host and path; map one with `skiff "
                                   "map-route APP HOST`.",
                                   false);
        return;
    }
    struct tls_conn *tls = client_tls(c);
    if (x->route->https_only && !tls) {
        client_redirect_https(c, host_s, host_len, url, url_len);
        return;
    }
    uint64_t max = w->cfg->max_body_bytes;
    if (max && x->has_length && x->content_length > max) {
        client_respond_error(c, 413, "body-too-large",
                             "The request body is larger than the router allows.", true);
        return;
    }
    struct router_request_head rh = {
        .method = llhttp_method_name((llhttp_method_t)x->method),
        .url = url,
        .url_len = url_len,
        .host = host_s,
        .host_len = host_len,
        .headers = hv,
        .header_count = hn,
        .client_ip = c->ip,
        .request_id = x->request_id,
        .chunked = x->chunked,
        .has_length = x->has_length,
        .content_length = x->content_length,
        .upgrade = x->upgrade,
        .https = tls != NULL,
    };
    char cert_b64[8192];
    if (tls && w->cfg->tls_client_ca &&
        tls_conn_client_cert_b64(tls, cert_b64, sizeof cert_b64) > 0)
        rh.client_cert = cert_b64;
    router_head_build_request(&x->head, &rh);
    x->stats = x->route->stats;
    if (x->stats) { /* what the autoscaler sees: requests in flight, held ones included */
        route_stats_change(x->stats, w->index, 1, now_us());
        __atomic_add_fetch(&x->stats->requests, 1, __ATOMIC_RELAXED);
    }
    if (x->route->backend_count == 0) {
        if (x->route->scale_from_zero && w->cfg->hold_timeout_ms > 0) {
            /* the activator's queue is bounded: past it, a clear 503 rather than memory */
            if (x->stats && w->cfg->hold_max > 0 &&
                __atomic_load_n(&x->stats->held, __ATOMIC_RELAXED) >= w->cfg->hold_max) {
                client_answer_and_continue(c, 503, "scale-from-zero-queue-full",
                                           "Too many requests wait for this app to start from "
                                           "zero; try again in a moment.",
                                           false);
                return;
            }
            hold_request(c);
            return;
        }
        client_answer_and_continue(c, 503, "no-instance",
                                   "The app has no instance ready to take requests; start or "
                                   "scale it.",
                                   false);
        return;
    }
    connect_backend(x);
}

/* ---- requests held while an app starts from zero ------------------------------------------- */

static void hold_unlink(struct client *c)
{
    struct worker *w = c->p.w;
    if (!c->held)
        return;
    c->held = false;
    if (c->x && c->x->stats)
        __atomic_sub_fetch(&c->x->stats->held, 1, __ATOMIC_RELAXED);
    if (c->hold_prev)
        c->hold_prev->hold_next = c->hold_next;
    else
        w->held = c->hold_next;
    if (c->hold_next)
        c->hold_next->hold_prev = c->hold_prev;
    c->hold_prev = c->hold_next = NULL;
    if (!w->held)
        __atomic_store_n(&w->holding, false, __ATOMIC_SEQ_CST);
}

/* Serves the held requests whose route has instances in the newest table (or has gone), and
 * asks again for those whose wake skiffd may have missed. Each is looked up again whenever
 * the newest table is not the one it was held with: the worker may have taken a new table for
 * another request before this runs, and that table may be the one its instance came in. */
static void hold_check(struct worker *w)
{
    struct table_hold *h = worker_table(w);
    uint64_t now = uv_now(&w->loop);
    struct client *next;
    for (struct client *c = w->held; c; c = next) {
        next = c->hold_next;
        struct exchange *x = c->x;
        if (x->hold != h) {
            const char *url = x->req.raw.data + x->url_off;
            struct route *r = route_table_lookup(h->table, x->req.raw.data + x->host_off,
                                                 x->host_len, url, x->url_len);
            table_hold_release(w, x->hold);
            x->hold = table_hold_take(h);
            if (!r) {
                hold_unlink(c);
                x->route = NULL;
                client_answer_and_continue(c, 404, "unknown-route",
                                           "The route went away while the app was starting.", true);
                continue;
            }
            x->route = r; /* held on with the newest table: older ones can go */
            if (r->backend_count > 0) {
                hold_unlink(c);
                start_trace("router: held request goes on");
                connect_backend(x);
                continue;
            }
        }
        if (now - c->woken_at >= 2000) { /* skiffd may have missed it while restarting */
            c->woken_at = now;
            router_bus_wake(x->route->app_guid);
        }
    }
    if (!w->held)
        uv_timer_stop(&w->hold_poll);
}

/* A table published while requests are held (router_proxy_table_published): they go to
 * their instance now, not at the next poll. */
static void on_table_wakeup(uv_async_t *a)
{
    struct worker *w = a->data;
    if (w->held)
        hold_check(w);
}

/* The backstop while requests are held: the wake sent again every 2 s, a table missed. */
static void on_hold_poll(uv_timer_t *t)
{
    hold_check(t->data);
}

void router_proxy_table_published(void)
{
    if (stop_sent || worker_count == 0)
        return; /* stopping: held requests end with the workers */
    /* the table's generation, then each worker's flag; a worker sets its flag, then reads
     * the generation (hold_request): one of the two sees the other */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (int i = 0; i < worker_count; i++)
        if (__atomic_load_n(&workers[i].holding, __ATOMIC_SEQ_CST))
            uv_async_send(&workers[i].table_wakeup);
}

static void hold_request(struct client *c)
{
    struct worker *w = c->p.w;
    start_trace("router: request held");
    c->held = true;
    if (c->x->stats)
        __atomic_add_fetch(&c->x->stats->held, 1, __ATOMIC_RELAXED);
    c->hold_prev = NULL;
    c->hold_next = w->held;
    if (w->held)
        w->held->hold_prev = c;
    w->held = c;
    c->woken_at = uv_now(&w->loop);
    router_bus_wake(c->x->route->app_guid);
    client_set_deadline(c, D_HOLD, w->cfg->hold_timeout_ms);
    __atomic_store_n(&w->holding, true, __ATOMIC_SEQ_CST);
    /* a table published after this request's lookup, before the store above, woke no one */
    if (route_table_current_generation() != w->table_generation)
        uv_async_send(&w->table_wakeup);
    if (!uv_is_active((uv_handle_t *)&w->hold_poll))
        uv_timer_start(&w->hold_poll, on_hold_poll, ROUTER_HOLD_POLL_MS, ROUTER_HOLD_POLL_MS);
}

/* ---- backend connections ------------------------------------------------------------------ */

static struct pool *pool_for(struct worker *w, const struct route_backend *b, bool h2c)
{
    for (struct pool *p = w->pools; p; p = p->next)
        if (p->addr_len == b->addr_len && memcmp(&p->addr, &b->addr, b->addr_len) == 0 &&
            p->h2c == h2c)
            return p;
    struct pool *p = xcalloc(1, sizeof(*p));
    p->h2c = h2c;
    memcpy(&p->addr, &b->addr, b->addr_len);
    p->addr_len = b->addr_len;
    p->next = w->pools;
    w->pools = p;
    return p;
}

static void pool_remove(struct upstream *u)
{
    struct pool *p = u->pool;
    if (u->idle_prev)
        u->idle_prev->idle_next = u->idle_next;
    else if (p->idle == u)
        p->idle = u->idle_next;
    if (u->idle_next)
        u->idle_next->idle_prev = u->idle_prev;
    u->idle_prev = u->idle_next = NULL;
    p->idle_count--;
}

static void on_upstream_closed(uv_handle_t *h)
{
    struct upstream *u = h->data;
    buf_free(&u->p.out.scratch);
    free(u);
}

static void h2c_stream_detach(struct upstream *u);

static void upstream_close(struct upstream *u)
{
    if (u->p.closing)
        return;
    if (u->state == U_IDLE)
        pool_remove(u);
    u->p.closing = true;
    if (u->h2c)
        h2c_stream_detach(u);
    uv_close((uv_handle_t *)&u->p.tcp, on_upstream_closed);
}

static void on_upstream_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void upstream_update_reading(struct upstream *u)
{
    if (u->p.closing || u->state == U_CONNECTING)
        return;
    bool want = !u->p.throttled;
    if (want == u->p.reading)
        return;
    u->p.reading = want;
    if (u->h2c) { /* the connection reads on: the stream's window stays shut while throttled */
        if (u->h2s)
            router_h2c_stream_set_reading(u->h2s, want);
        if (want && u->conn && !u->conn->dispatching)
            peer_flush(&u->conn->p);
        return;
    }
    if (want)
        uv_read_start((uv_stream_t *)&u->p.tcp, on_alloc, on_upstream_read);
    else
        uv_read_stop((uv_stream_t *)&u->p.tcp);
}

/* The backend connection is ready: send the head and let the body follow. */
static void upstream_start(struct upstream *u, struct exchange *x)
{
    struct client *c = x->c;
    u->state = U_ACTIVE;
    u->x = x;
    x->u = u;
    u->got_bytes = false;
    u->pause_done = false;
    u->reusable = false; /* until this exchange's response ends cleanly */
    u->acked = false;
    u->sent_at = uv_now(&c->p.w->loop);
    ack_check_arm(c->p.w);
    llhttp_init(&u->parser, HTTP_RESPONSE, &response_settings);
    u->parser.data = u;
    headers_reset(&x->resp);
    if (x->replay.len) /* a refused h2c stream's request, its body so far included */
        outq_add(&u->p, x->replay.data, x->replay.len);
    else
        outq_add(&u->p, x->head.data, x->head.len);
    peer_flush(&u->p);
    x->replay.len = 0;
    upstream_update_reading(u);
    client_set_deadline(c, D_ACTIVE, c->p.w->cfg->upstream_timeout_ms);
    if (x->req_done) {
        /* a replay of a request already read whole: what is pending is the next request */
        c->state = C_WAIT_RESPONSE;
        return;
    }
    c->state = C_BODY;
    client_drain_pending(c);
}

static void on_upstream_connect(uv_connect_t *req, int status)
{
    struct upstream *u = req->data;
    if (u->p.closing)
        return;
    if (status < 0) {
        ROUTER_METRIC_ADD(u->p.w->m.upstream_connect_failures, 1);
        upstream_failed(u, status, true);
        return;
    }
    uv_tcp_nodelay(&u->p.tcp, 1);
    struct exchange *x = u->x;
    if (!x) { /* the client went away meanwhile */
        upstream_close(u);
        return;
    }
    int hedge = -1;
    for (int i = 0; i < x->hedge_count; i++)
        if (x->hedges[i].u == u)
            hedge = i;
    if (hedge >= 0)
        hedge_won(x, hedge);
    else
        exchange_drop_hedges(x); /* the first connect made it after all */
    if (x->backend)
        route_backend_connected(x->backend);
    upstream_start(u, x);
}

static void h2c_stream_begin(struct exchange *x, struct pool *pool);

/* The exchange is to be sent to b: counted in its active requests and its pool's in-flight
 * exchanges (what a drain waits for). Returns that pool. */
static struct pool *exchange_take_backend(struct exchange *x, struct route_backend *b)
{
    x->backend = b;
    /* counted only where it decides: a shared counter costs every core a cache miss */
    if (x->route->balance == ROUTE_BALANCE_LEAST_CONNECTION)
        __atomic_add_fetch(&b->active, 1, __ATOMIC_RELAXED);
    struct pool *pool = pool_for(x->c->p.w, b, x->route->protocol == ROUTE_PROTOCOL_HTTP2);
    x->pool = pool;
    pool->in_flight++;
    x->pool_next = pool->exchanges;
    if (pool->exchanges)
        pool->exchanges->pool_prev = x;
    pool->exchanges = x;
    return pool;
}

/* Passes over an instance for ROUTER_BACKEND_DOWN_MS: its address's mark, which every route
 * with that address reads in every table (route_table.h, struct route_addr_mark), so every
 * worker's requests go elsewhere whatever route and table they were routed with. */
static void backend_mark_down(struct route_backend *b)
{
    route_backend_mark_down(b, ROUTER_BACKEND_DOWN_MS);
}

/* A new connection to b for x, connecting. NULL when no socket could be made or the address
 * refused at once (b is then marked down). */
static struct upstream *upstream_connect(struct exchange *x, struct pool *pool,
                                         struct route_backend *b)
{
    struct worker *w = x->c->p.w;
    struct upstream *u = xcalloc(1, sizeof(*u));
    u->p.w = w;
    u->p.kind = PEER_UPSTREAM;
    u->pool = pool;
    u->state = U_CONNECTING;
    uv_tcp_init(&w->loop, &u->p.tcp);
    u->p.tcp.data = u;
    u->connect_req.data = u;
    u->x = x;
    ROUTER_METRIC_ADD(w->m.upstream_connects, 1);
    int r = uv_tcp_connect(&u->connect_req, &u->p.tcp, (struct sockaddr *)&b->addr,
                           on_upstream_connect);
    if (r < 0) {
        u->p.closing = true;
        uv_close((uv_handle_t *)&u->p.tcp, on_upstream_closed);
        ROUTER_METRIC_ADD(w->m.upstream_connect_failures, 1);
        backend_mark_down(b);
        return NULL;
    }
    return u;
}

/* Whether a connect to x's instance may get a hedge: enabled, shorter than the connect
 * timeout, fewer than ROUTER_MAX_CONNECTS instances tried and another one in the route,
 * HTTP/1.1 (an h2c connection is shared by many exchanges and has its own wait). Whether
 * another instance is up is asked when it is due. */
static bool hedge_possible(const struct exchange *x)
{
    const struct router_config *cfg = x->c->p.w->cfg;
    return cfg->connect_hedge_ms > 0 && cfg->connect_hedge_ms < cfg->connect_timeout_ms &&
           x->attempts < ROUTER_MAX_CONNECTS && x->route->protocol == ROUTE_PROTOCOL_HTTP1 &&
           x->route->backend_count > (size_t)x->attempts;
}

/* The client's deadline while x's connects are under way: the next hedge, if one may come
 * before the first connect times out, else that timeout (hedges, begun later, time out
 * later). */
static void connect_wait_arm(struct exchange *x)
{
    struct worker *w = x->c->p.w;
    uint64_t now = uv_now(&w->loop);
    if (hedge_possible(x) && x->hedge_next < x->connect_due) {
        client_set_deadline(x->c, D_HEDGE, x->hedge_next > now ? (int)(x->hedge_next - now) : 0);
        return;
    }
    client_set_deadline(x->c, D_CONNECT, x->connect_due > now ? (int)(x->connect_due - now) : 0);
}

/* A request on its way again (its connect or its pooled connection failed) goes by the
 * worker's newest table, not the one it came with: an instance drained since has left that
 * table (and may be stopping), a new one may have come. The instances it tried carry over by
 * address. It keeps its table when its route went, or went to another app. */
static void exchange_follow_table(struct exchange *x)
{
    struct worker *w = x->c->p.w;
    struct table_hold *h = worker_table(w);
    if (x->hold == h)
        return;
    const char *url = x->req.raw.data + x->url_off;
    struct route *r =
        route_table_lookup(h->table, x->req.raw.data + x->host_off, x->host_len, url, x->url_len);
    if (!r || r->backend_count == 0 || strcmp(r->app_guid, x->route->app_guid) != 0)
        return;
    for (int i = 0; i < x->attempts; i++) {
        struct route_backend *same = NULL;
        for (size_t k = 0; k < r->backend_count && !same && x->tried[i]; k++)
            if (r->backends[k].mark == x->tried[i]->mark) /* one mark per address */
                same = &r->backends[k];
        x->tried[i] = same;
    }
    table_hold_release(w, x->hold);
    x->hold = table_hold_take(h);
    x->route = r;
}

static void connect_backend(struct exchange *x)
{
    struct client *c = x->c;
    struct worker *w = c->p.w;
    exchange_drop_hedges(x);
    exchange_release_backend(x);
    exchange_follow_table(x);
    struct route_backend *b = route_pick_backend(x->route, &x->hold->cursors[x->route->index],
                                                 x->tried, (size_t)x->attempts);
    if (!b || x->attempts >= ROUTER_MAX_ATTEMPTS) {
        client_respond_error(c, 502, "backend-unreachable",
                             "No instance of the app accepted the connection.", true);
        return;
    }
    x->tried[x->attempts++] = b;
    struct pool *pool = exchange_take_backend(x, b);
    if (pool->h2c) {
        h2c_stream_begin(x, pool);
        return;
    }
    while (pool->idle && !x->fresh_connection && !route_backend_suspect(b)) {
        struct upstream *u = pool->idle;
        pool_remove(u);
        u->reused = true;
        ROUTER_METRIC_ADD(w->m.upstream_reused, 1);
        upstream_start(u, x);
        return;
    }
    struct upstream *u = upstream_connect(x, pool, b);
    if (!u) { /* no socket, or the address refused at once: the next instance (3 at most) */
        connect_backend(x);
        return;
    }
    x->u = u;
    x->connect_started = uv_now(&w->loop);
    x->connect_due = x->connect_started + (uint64_t)w->cfg->connect_timeout_ms;
    x->hedge_next = x->connect_started + (uint64_t)w->cfg->connect_hedge_ms;
    connect_wait_arm(x);
}

/* The hedge no longer counts in its pool (it won and the exchange is counted there itself,
 * or it was dropped): a drain waiting only for it is done. */
static void hedge_uncount(struct exchange *x, struct hedge *h)
{
    struct pool *p = h->pool;
    if (!p)
        return;
    h->pool = NULL;
    if (--p->in_flight == 0 && p->drains)
        worker_drain_pool_idle(x->c->p.w, p);
}

/* Takes hedge i out of x's list (its connection and count are the caller's business). */
static void hedge_remove(struct exchange *x, int i)
{
    for (int k = i + 1; k < x->hedge_count; k++)
        x->hedges[k - 1] = x->hedges[k];
    x->hedge_count--;
    memset(&x->hedges[x->hedge_count], 0, sizeof(x->hedges[0]));
}

/* The connects under way have not completed within --connect-hedge-ms of the last one
 * begun: another instance that is not marked down gets a connect too (or gives a pooled
 * connection at once). Nothing has been sent on any; the first to complete carries the
 * request (hedge_won, or on_upstream_connect dropping the hedges). */
static void hedge_start(struct exchange *x)
{
    struct worker *w = x->c->p.w;
    if (x->hedge_count >= ROUTER_MAX_CONNECTS - 1)
        return;
    /* from anywhere in the route, not the round robin's next: the instances of a lost host
     * may come one after another in its order */
    w->hedge_seed = w->hedge_seed * 1103515245u + 12345u;
    unsigned spread = w->hedge_seed >> 8;
    struct route_backend *b =
        route_pick_backend_up(x->route, &spread, x->tried, (size_t)x->attempts);
    if (!b)
        return; /* every other instance is tried or down: asked again at the next hedge time */
    x->tried[x->attempts++] = b;
    ROUTER_METRIC_ADD(w->m.upstream_hedges, 1);
    struct pool *pool = pool_for(w, b, false);
    struct hedge *h = &x->hedges[x->hedge_count];
    memset(h, 0, sizeof(*h));
    h->b = b;
    h->started = uv_now(&w->loop);
    if (pool->idle && !x->fresh_connection && !route_backend_suspect(b)) {
        struct upstream *u = pool->idle;
        pool_remove(u);
        u->reused = true;
        ROUTER_METRIC_ADD(w->m.upstream_reused, 1);
        h->u = u;
        x->hedge_count++;
        hedge_won(x, x->hedge_count - 1);
        upstream_start(u, x);
        return;
    }
    struct upstream *u = upstream_connect(x, pool, b);
    if (!u)
        return;
    h->u = u;
    h->pool = pool;
    pool->in_flight++;
    h->due = h->started + (uint64_t)w->cfg->connect_timeout_ms;
    x->hedge_count++;
}

/* Closes a connect that lost the race, unsent to; its instance is marked down when it had had
 * --connect-hedge-ms to complete (it did not while another did: its host is gone or
 * overloaded). */
static void connect_lost_race(struct exchange *x, struct upstream *u, struct route_backend *b,
                              uint64_t started)
{
    struct worker *w = x->c->p.w;
    if (u) {
        u->x = NULL;
        upstream_close(u);
    }
    if (b && uv_now(&w->loop) - started >= (uint64_t)w->cfg->connect_hedge_ms)
        backend_mark_down(b);
}

/* Hedge i completed first: the other connects are closed and the exchange goes to the
 * hedge's instance. The caller starts the request on the hedge's connection (taken from
 * here). */
static void hedge_won(struct exchange *x, int i)
{
    struct hedge won = x->hedges[i];
    hedge_remove(x, i);
    connect_lost_race(x, x->u, x->backend, x->connect_started);
    x->u = NULL;
    while (x->hedge_count > 0) {
        struct hedge *h = &x->hedges[0];
        connect_lost_race(x, h->u, h->b, h->started);
        hedge_uncount(x, h);
        hedge_remove(x, 0);
    }
    exchange_release_backend(x);
    exchange_take_backend(x, won.b);
    hedge_uncount(x, &won);
}

/* Closes the hedges, if any, unsent to. */
static void exchange_drop_hedges(struct exchange *x)
{
    while (x->hedge_count > 0) {
        struct hedge *h = &x->hedges[0];
        h->u->x = NULL;
        upstream_close(h->u);
        hedge_uncount(x, h);
        hedge_remove(x, 0);
    }
}

/* One of the connects under way failed (refused, or the first timed out): its instance is
 * marked down and the others go on, each with its own connect timeout; the earliest hedge
 * becomes the exchange's own connect when the first one failed. */
static void hedge_connect_failed(struct exchange *x, struct upstream *u)
{
    struct worker *w = x->c->p.w;
    u->x = NULL;
    upstream_close(u);
    ROUTER_METRIC_ADD(w->m.upstream_retries, 1);
    for (int i = 0; i < x->hedge_count; i++) {
        struct hedge *h = &x->hedges[i];
        if (h->u != u)
            continue;
        backend_mark_down(h->b);
        hedge_uncount(x, h);
        hedge_remove(x, i);
        connect_wait_arm(x);
        return;
    }
    /* the first one failed: the earliest hedge becomes the exchange's connect */
    if (x->backend)
        backend_mark_down(x->backend);
    struct hedge next = x->hedges[0];
    hedge_remove(x, 0);
    exchange_release_backend(x);
    exchange_take_backend(x, next.b);
    hedge_uncount(x, &next);
    x->u = next.u;
    x->connect_started = next.started;
    x->connect_due = next.due;
    connect_wait_arm(x);
}

/* A backend connection failed (connect, read, write, or closed early). */
static void upstream_failed(struct upstream *u, int err, bool connect_phase)
{
    struct exchange *x = u->x;
    if (x && connect_phase && x->hedge_count > 0) {
        hedge_connect_failed(x, u);
        return;
    }
    bool was_reused = u->reused;
    bool got_bytes = u->got_bytes;
    bool h2c_stream = u->h2c;
    u->x = NULL;
    upstream_close(u);
    if (!x)
        return;
    x->u = NULL;
    struct client *c = x->c;
    if (x->resp_started) {
        client_close(c); /* the client sees a cut response: nothing truthful can be added */
        return;
    }
    bool replayable = !x->chunked && x->content_length == 0 && !got_bytes;
    if (connect_phase) {
        /* other instances take this one's requests for a while: it may be starting or gone */
        if (x->backend)
            backend_mark_down(x->backend);
        ROUTER_METRIC_ADD(c->p.w->m.upstream_retries, 1);
        connect_backend(x);
        return;
    }
    if (was_reused && replayable && !h2c_stream) {
        /* a pooled connection the backend had closed: once more on a fresh one (not for an
         * h2c stream: the instance answered it with a reset; h2c_stream_refused replays) */
        x->attempts--;
        x->fresh_connection = true;
        if (!x->req_done)
            c->state = C_WAIT_UPSTREAM;
        client_update_reading(c);
        ROUTER_METRIC_ADD(c->p.w->m.upstream_retries, 1);
        connect_backend(x);
        return;
    }
    (void)err;
    client_respond_error(c, 502, "backend-failed",
                         "The app closed the connection before it finished its response.", true);
}

static void upstream_to_pool(struct upstream *u)
{
    struct worker *w = u->p.w;
    struct pool *p = u->pool;
    if (w->stopping || p->drains || p->idle_count >= w->cfg->upstream_idle_max ||
        u->p.write_error) {
        upstream_close(u);
        return;
    }
    u->state = U_IDLE;
    u->x = NULL;
    u->idle_since = uv_now(&w->loop);
    u->p.throttled = false;
    u->idle_prev = NULL;
    u->idle_next = p->idle;
    if (p->idle)
        p->idle->idle_prev = u;
    p->idle = u;
    p->idle_count++;
    upstream_update_reading(u);
}

/* Both the request and the response are complete (or the exchange is abandoned). */
/* Accounts for and frees a finished exchange; returns whether the connection goes on (else it
 * is being closed). The caller starts the next request. */
static bool exchange_end(struct exchange *x)
{
    struct client *c = x->c;
    struct worker *w = c->p.w;
    struct upstream *u = x->u;
    exchange_drop_hedges(x);
    if (u) {
        u->x = NULL;
        x->u = NULL;
        if (u->reusable && x->req_done && x->resp_done && !x->upgrade && !u->h2c)
            upstream_to_pool(u);
        else
            upstream_close(u);
    }
    metrics_count(w, x);
    access_log(x);
    bool close = x->client_close;
    c->x = NULL;
    exchange_free(x);
    if (close || c->p.write_error) {
        client_shutdown(c);
        return false;
    }
    return true;
}

static void exchange_finish(struct exchange *x)
{
    struct client *c = x->c;
    if (exchange_end(x))
        client_next_request(c);
}

/* ---- response parser callbacks ------------------------------------------------------------ */

static int on_resp_status(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = p->data;
    struct exchange *x = u->x;
    if (x->resp.raw.len + len > ROUTER_RESPONSE_HEADER_BYTES)
        return HPE_USER;
    /* the reason phrase is kept as header #0's name-less value */
    if (x->resp.count == 0)
        headers_field(&x->resp, "", 0, 1);
    headers_value(&x->resp, at, len);
    return 0;
}

static int on_resp_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = p->data;
    struct exchange *x = u->x;
    if (x->resp.count == 0 && !x->resp_in_trailers)
        headers_field(&x->resp, "", 0, 1); /* no reason phrase */
    if (x->resp.raw.len + len > ROUTER_RESPONSE_HEADER_BYTES ||
        headers_field(&x->resp, at, len, ROUTER_RESPONSE_HEADERS) < 0)
        return HPE_USER;
    return 0;
}

static int on_resp_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = p->data;
    struct exchange *x = u->x;
    if (x->resp.raw.len + len > ROUTER_RESPONSE_HEADER_BYTES)
        return HPE_USER;
    headers_value(&x->resp, at, len);
    return 0;
}

static int on_resp_headers_complete(llhttp_t *p)
{
    struct upstream *u = p->data;
    struct exchange *x = u->x;
    struct client *c = x->c;
    int status = p->status_code;
    if (x->resp.count == 0)
        headers_field(&x->resp, "", 0, 1);
    bool upgrade = status == 101 && x->upgrade;
    bool interim = status >= 100 && status < 200 && !upgrade;
    if (status == 101 && !x->upgrade)
        return HPE_USER; /* switching protocols nobody asked for */
    bool needs_eof = !interim && !upgrade && !x->is_head && llhttp_message_needs_eof(p);
    if (!interim && (needs_eof || !llhttp_should_keep_alive(&c->parser)))
        x->client_close = true;
    if (!interim && x->upgrade && !upgrade)
        x->client_close = true; /* the client may already send tunnel bytes: do not parse them */
    struct router_header *hv = headers_view(c->p.w, &x->resp);
    size_t count = x->resp.count;
    if (!interim && x->client_http10 && (p->flags & F_CHUNKED)) {
        /* an HTTP/1.0 client cannot read chunks: send the bytes and end with the connection */
        x->dechunk = true;
        x->client_close = true;
        size_t k = 1;
        for (size_t i = 1; i < count; i++)
            if (!router_header_is(&hv[i], "transfer-encoding"))
                hv[k++] = hv[i];
        count = k;
    }
    /* entry 0 holds the reason phrase */
    size_t off;
    struct buf *b = outq_scratch_begin(&c->p, &off);
    router_head_build_response(b, status, hv[0].value, hv[0].value_len, hv + 1, count - 1,
                               x->client_close && !interim, upgrade, x->client_http10);
    outq_scratch_end(&c->p, off);
    x->resp_started = true;
    x->interim = interim;
    if (!interim) {
        x->status = status;
        x->resp_in_trailers = true; /* header fields from now on are trailers */
    }
    headers_reset(&x->resp);
    if (upgrade)
        return 2;
    if (x->is_head)
        return 1;
    return 0;
}

static int on_resp_body(llhttp_t *p, const char *at, size_t len)
{
    struct upstream *u = p->data;
    struct exchange *x = u->x;
    x->resp_bytes += len;
    if ((p->flags & F_CHUNKED) && !chunk_guard_body(&x->resp_guard, at, len, u->feed_end))
        return HPE_USER; /* the backend's framing is broken: 502, or a cut response */
    outq_add(&x->c->p, at, len);
    return 0;
}

static int on_resp_chunk_header(llhttp_t *p)
{
    struct upstream *u = p->data;
    struct exchange *x = u->x;
    x->resp_chunk_size = p->content_length;
    chunk_guard_start(&x->resp_guard, p->content_length);
    if (p->content_length > 0 && !x->dechunk)
        outq_printf(&x->c->p, "%llx\r\n", (unsigned long long)p->content_length);
    return 0;
}

static int on_resp_chunk_complete(llhttp_t *p)
{
    struct upstream *u = p->data;
    struct exchange *x = u->x;
    if (x->resp_chunk_size > 0 && !x->dechunk)
        outq_add(&x->c->p, "\r\n", 2);
    return 0;
}

static int on_resp_message_complete(llhttp_t *p)
{
    struct upstream *u = p->data;
    struct exchange *x = u->x;
    if (x->interim) {
        x->interim = false;
        x->resp_started = false; /* a 1xx does not stop the router from answering 502 later */
        return 0;
    }
    if (p->flags & F_CHUNKED && !x->is_head && !x->dechunk)
        end_chunked(&x->c->p, &x->resp);
    if (p->upgrade)
        return 0;
    exchange_backend_answered(x);
    u->pause_done = true;
    return HPE_PAUSED;
}

/* The response goes on after this read: ACK what came now rather than after the delayed-ACK
 * timer (up to 40 ms). An app that writes its head and its body apart, with Nagle's
 * algorithm on (most runtimes' default), sends the body only once its head is acknowledged;
 * the router, having nothing to send back, would hold that ACK (bench/router/split_write.py).
 * Linux's quick-ACK mode does not stick, so it is asked again after each such read; not
 * after a large one, which the kernel acknowledges soon anyway (every second full segment),
 * so that a large body costs no system call per read. */
static void upstream_quickack(struct upstream *u)
{
    uv_os_fd_t fd;
    int on = 1;
    if (uv_fileno((uv_handle_t *)&u->p.tcp, &fd) == 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &on, sizeof on);
}

/* Bytes from a backend: parse, forward, and finish the exchange at the end of the response. */
static void upstream_feed(struct upstream *u, const char *data, size_t len)
{
    struct exchange *x = u->x;
    struct client *c = x->c;
    u->got_bytes = true;
    if (c->state == C_TUNNEL) {
        outq_add(&c->p, data, len);
        peer_flush(&c->p);
        if (peer_queued(&c->p) > ROUTER_HIGH_WATER) {
            u->p.throttled = true;
            upstream_update_reading(u);
        }
        return;
    }
    if (x->resp_guard.crlf && !chunk_guard_check(&x->resp_guard, data, data + len)) {
        upstream_failed(u, UV_EPROTO, false);
        return;
    }
    u->feed_end = data + len;
    llhttp_errno_t err = llhttp_execute(&u->parser, data, len);
    size_t used = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&u->parser) - data);
    if (used > len)
        used = len;
    peer_flush(&c->p);
    if (c->p.write_error) {
        client_close(c);
        return;
    }
    if (err == HPE_OK) {
        if (peer_queued(&c->p) > ROUTER_HIGH_WATER) {
            u->p.throttled = true;
            upstream_update_reading(u);
        } else if (!u->h2c && len < ROUTER_QUICKACK_READ) {
            upstream_quickack(u);
        }
        return;
    }
    if (err == HPE_PAUSED && u->pause_done) {
        /* bytes after a complete response are a protocol error: do not reuse the connection */
        u->reusable = used == len && llhttp_should_keep_alive(&u->parser);
        x->resp_done = true;
        if (!x->req_done) {
            /* answered before the request ended (e.g. 413): the rest of it is not read */
            x->client_close = true;
        }
        exchange_finish(x);
        return;
    }
    if (err == HPE_PAUSED_UPGRADE && x->upgrade) {
        c->state = C_TUNNEL;
        x->resp_done = true;
        client_set_deadline(c, D_TUNNEL, c->p.w->cfg->idle_timeout_ms);
        /* what the backend sent after its 101, then what the client sent after its request */
        if (used < len) {
            outq_add(&c->p, data + used, len - used);
            peer_flush(&c->p);
        }
        client_drain_pending(c);
        return;
    }
    upstream_failed(u, UV_EPROTO, false);
}

static void on_upstream_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct upstream *u = s->data;
    if (nread == 0)
        return;
    if (u->state == U_IDLE || !u->x) {
        /* an idle pooled connection spoke or closed: it cannot be used any more */
        upstream_close(u);
        return;
    }
    struct exchange *x = u->x;
    if (nread > 0) {
        struct worker *w = u->p.w;
        bool h2_now = x->c->h2_conn && router_h2_write_now((size_t)nread);
        client_touch(x->c);
        upstream_feed(u, buf->base, (size_t)nread);
        if (h2_now) /* not at the end of the turn: router_h2_write_now says why */
            h2_flush_dirty(w);
        return;
    }
    if (x->c->state == C_TUNNEL) {
        if (nread == UV_EOF) {
            /* pass the backend's end on; the client may still send */
            u->p.throttled = true;
            upstream_update_reading(u);
            peer_flush(&x->c->p);
            client_shutdown(x->c);
            return;
        }
        client_close(x->c);
        return;
    }
    if (nread == UV_EOF && u->got_bytes && x->resp_started) {
        /* a response delimited by the end of the connection ends here */
        u->pause_done = false;
        llhttp_errno_t err = llhttp_finish(&u->parser);
        peer_flush(&x->c->p);
        if (err == HPE_OK || (err == HPE_PAUSED && u->pause_done)) {
            if (u->pause_done || llhttp_message_needs_eof(&u->parser)) {
                u->reusable = false;
                x->resp_done = true;
                x->client_close = true;
                if (!u->pause_done) {
                    /* finish did not call on_message_complete: body ended with the stream */
                }
                exchange_finish(x);
                return;
            }
        }
    }
    if ((nread == UV_ETIMEDOUT || nread == UV_EHOSTUNREACH || nread == UV_ENETUNREACH) &&
        !u->got_bytes && !x->resp_started) {
        /* a keepalive probe went unanswered (connection_probe): the host is gone; the kernel
         * reports the last ICMP error it had for the connection, if any, instead of the
         * timeout (a host whose neighbour entry failed) */
        exchange_unacknowledged(x, "answered no keepalive probe while a request waited");
        return;
    }
    upstream_failed(u, (int)nread, false);
}

/* ---- h2c connections (router_h2c.c) ------------------------------------------------------ */

/* An exchange to an instance of a route marked http2 has an upstream that is a stream: it
 * waits in its pool until a connection can open one (connected, the instance's SETTINGS read,
 * fewer streams than it allows), then goes as any upstream. A pool has ROUTER_H2C_CONNS
 * connections at most; one more opens when exchanges wait and none is on its way. */

static void on_h2c_conn_closed(uv_handle_t *h)
{
    struct h2c_conn *conn = h->data;
    router_h2c_free(conn->h2c);
    buf_free(&conn->p.out.scratch);
    free(conn);
}

static void waiting_unlink(struct upstream *u)
{
    struct pool *pool = u->pool;
    if (u->conn_prev)
        u->conn_prev->conn_next = u->conn_next;
    else
        pool->waiting = u->conn_next;
    if (u->conn_next)
        u->conn_next->conn_prev = u->conn_prev;
    else
        pool->waiting_last = u->conn_prev;
    u->conn_prev = u->conn_next = NULL;
    u->waiting = false;
}

/* Closes the connection; the owners of its streams were told first (h2c_conn_dispatch). */
static void h2c_conn_close(struct h2c_conn *conn)
{
    if (conn->p.closing)
        return;
    conn->p.closing = true;
    struct pool *pool = conn->pool;
    for (struct h2c_conn **pp = &pool->conns; *pp; pp = &(*pp)->next)
        if (*pp == conn) {
            *pp = conn->next;
            break;
        }
    pool->conn_count--;
    while (conn->streams)
        h2c_stream_detach(conn->streams);
    uv_close((uv_handle_t *)&conn->p.tcp, on_h2c_conn_closed);
}

/* The connection could not serve: the exchanges waiting try another instance (as after a
 * refused connect), unless another connection of the pool may still take them. */
static void h2c_conn_connect_failed(struct h2c_conn *conn, int err)
{
    struct pool *pool = conn->pool;
    ROUTER_METRIC_ADD(conn->p.w->m.upstream_connect_failures, 1);
    h2c_conn_close(conn);
    for (struct h2c_conn *other = pool->conns; other; other = other->next)
        if (!router_h2c_finished(other->h2c))
            return; /* it may still take them */
    struct upstream *u = pool->waiting;
    pool->waiting = pool->waiting_last = NULL;
    while (u) {
        struct upstream *next = u->conn_next;
        u->conn_prev = u->conn_next = NULL;
        u->waiting = false;
        upstream_failed(u, err, true);
        u = next;
    }
}

static void on_h2c_conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_h2c_conn_connect(uv_connect_t *req, int status)
{
    struct h2c_conn *conn = req->data;
    if (conn->p.closing)
        return;
    if (status < 0) {
        h2c_conn_connect_failed(conn, status);
        return;
    }
    uv_tcp_nodelay(&conn->p.tcp, 1);
    conn->connected = true;
    conn->p.reading = true;
    uv_read_start((uv_stream_t *)&conn->p.tcp, on_alloc, on_h2c_conn_read);
    peer_flush(&conn->p); /* the preface and SETTINGS; streams wait for the instance's */
}

static void h2c_conn_open(struct worker *w, struct pool *pool)
{
    struct h2c_conn *conn = xcalloc(1, sizeof(*conn));
    conn->p.w = w;
    conn->p.kind = PEER_H2C;
    conn->pool = pool;
    conn->h2c = router_h2c_new();
    conn->idle_since = uv_now(&w->loop);
    uv_tcp_init(&w->loop, &conn->p.tcp);
    conn->p.tcp.data = conn;
    conn->connect_req.data = conn;
    conn->next = pool->conns;
    pool->conns = conn;
    pool->conn_count++;
    ROUTER_METRIC_ADD(w->m.upstream_connects, 1);
    int r = uv_tcp_connect(&conn->connect_req, &conn->p.tcp, (struct sockaddr *)&pool->addr,
                           on_h2c_conn_connect);
    if (r < 0)
        h2c_conn_connect_failed(conn, r);
}

/* The waiting exchange gets a stream on conn and starts. */
static void h2c_attach(struct upstream *u, struct h2c_conn *conn)
{
    waiting_unlink(u);
    u->h2s = router_h2c_stream_open(conn->h2c);
    u->conn = conn;
    u->conn_next = conn->streams;
    if (conn->streams)
        conn->streams->conn_prev = u;
    conn->streams = u;
    u->reused = conn->served++ > 0;
    if (u->reused)
        ROUTER_METRIC_ADD(u->p.w->m.upstream_reused, 1);
    upstream_start(u, u->x);
}

/* Whether the instance answers on one of the pool's connections (connected, its SETTINGS
 * read, still taking streams): an exchange waiting then waits for one of its streams to end,
 * which is not a connect timing out, and says nothing against the instance. */
static bool h2c_pool_answering(const struct pool *pool)
{
    for (const struct h2c_conn *conn = pool->conns; conn; conn = conn->next)
        if (conn->connected && !conn->p.closing && router_h2c_ready(conn->h2c) &&
            !router_h2c_finished(conn->h2c))
            return true;
    return false;
}

/* Gives waiting exchanges streams where connections can open them; opens a connection when
 * some still wait and none is on its way. */
static void h2c_pool_serve(struct pool *pool)
{
    if (pool->lost)
        return;
    while (pool->waiting) {
        struct h2c_conn *conn = pool->conns;
        while (conn && !(conn->connected && router_h2c_can_open(conn->h2c)))
            conn = conn->next;
        if (!conn)
            break;
        h2c_attach(pool->waiting, conn);
    }
    if (!pool->waiting || pool->conn_count >= ROUTER_H2C_CONNS)
        return;
    for (struct h2c_conn *conn = pool->conns; conn; conn = conn->next)
        if (!conn->connected || !router_h2c_ready(conn->h2c))
            return; /* one on its way */
    h2c_conn_open(pool->waiting->p.w, pool);
}

/* After a change on the connection: its output goes, an idle one that cannot serve closes,
 * and waiting exchanges may get its free streams. */
static void h2c_conn_settle(struct h2c_conn *conn)
{
    if (conn->p.closing)
        return;
    struct pool *pool = conn->pool;
    struct worker *w = conn->p.w;
    peer_flush(&conn->p);
    if (router_h2c_streams(conn->h2c) == 0) {
        bool finished = router_h2c_finished(conn->h2c);
        if (finished && conn->served == 0) {
            /* the instance allows no stream (SETTINGS_MAX_CONCURRENT_STREAMS 0, GOAWAY) */
            h2c_conn_connect_failed(conn, UV_ECONNREFUSED);
            return;
        }
        if (finished || conn->p.write_error || ((w->stopping || pool->drains) && !pool->waiting)) {
            h2c_conn_close(conn);
            h2c_pool_serve(pool);
            return;
        }
    }
    h2c_pool_serve(pool);
}

/* The exchange's upstream lets go of its stream (reset if still open) or of its place in the
 * waiting line. */
static void h2c_stream_detach(struct upstream *u)
{
    if (u->waiting) {
        waiting_unlink(u);
        return;
    }
    struct h2c_conn *conn = u->conn;
    if (!conn)
        return;
    if (u->h2s) {
        router_h2c_stream_close(u->h2s);
        u->h2s = NULL;
    }
    if (u->conn_prev)
        u->conn_prev->conn_next = u->conn_next;
    else
        conn->streams = u->conn_next;
    if (u->conn_next)
        u->conn_next->conn_prev = u->conn_prev;
    u->conn_prev = u->conn_next = NULL;
    u->conn = NULL;
    if (conn->p.closing)
        return;
    if (router_h2c_streams(conn->h2c) == 0)
        conn->idle_since = uv_now(&conn->p.w->loop);
    if (!conn->dispatching)
        h2c_conn_settle(conn);
}

static void h2c_stream_begin(struct exchange *x, struct pool *pool)
{
    struct worker *w = x->c->p.w;
    struct upstream *u = xcalloc(1, sizeof(*u));
    u->p.w = w;
    u->p.kind = PEER_UPSTREAM;
    u->pool = pool;
    u->state = U_CONNECTING;
    u->h2c = true;
    uv_tcp_init(&w->loop, &u->p.tcp); /* never connected: no socket is made */
    u->p.tcp.data = u;
    u->x = x;
    x->u = u;
    u->waiting = true;
    u->conn_prev = pool->waiting_last;
    if (pool->waiting_last)
        pool->waiting_last->conn_next = u;
    else
        pool->waiting = u;
    pool->waiting_last = u;
    if (h2c_pool_answering(pool)) /* waiting for a stream, not for a connection */
        client_set_deadline(x->c, D_STREAM_SLOT, w->cfg->upstream_timeout_ms);
    else
        client_set_deadline(x->c, D_CONNECT, w->cfg->connect_timeout_ms);
    h2c_pool_serve(pool);
}

/* The instance did not process the stream (RFC 9113 8.7): the request goes again on a
 * stream of its own, on this instance (a few times at most), with what the stream was given
 * of its body when it kept it all (ROUTER_H2C_REPLAY_MAX). Otherwise the client hears the
 * truth: a 503 that says nothing was processed, so that it may send the request again
 * itself (a 502 would say the app failed on it, which a client cannot safely retry). */
static void h2c_stream_refused(struct upstream *u)
{
    struct exchange *x = u->x;
    bool body = x->chunked || x->content_length > 0;
    bool kept = router_h2c_stream_take_request(u->h2s, &x->replay);
    if (u->got_bytes) {
        x->replay.len = 0;
        upstream_failed(u, UV_EPROTO, false);
        return;
    }
    u->x = NULL;
    x->u = NULL;
    upstream_close(u);
    struct client *c = x->c;
    if ((body && !kept) || x->refusals >= ROUTER_MAX_ATTEMPTS) {
        x->replay.len = 0;
        client_respond_error(c, 503, "backend-refused",
                             body && !kept
                                 ? "The app refused the request without processing it, and its "
                                   "body was too large for the router to send again (over 64 "
                                   "KB); nothing was done: send the request again."
                                 : "The app refused the request without processing it, three "
                                   "times; nothing was done: send the request again later.",
                             true);
        return;
    }
    x->refusals++;
    if (!x->req_done)
        c->state = C_WAIT_UPSTREAM;
    client_update_reading(c);
    ROUTER_METRIC_ADD(c->p.w->m.upstream_retries, 1);
    h2c_stream_begin(x, x->pool);
}

/* What the instance said on the stream goes to its exchange: response bytes, then the end,
 * a failure or a refusal. */
static void h2c_stream_deliver(struct upstream *u)
{
    struct buf *resp = &u->p.w->h2c_resp;
    router_h2c_stream_take_response(u->h2s, resp);
    if (resp->len && u->x) {
        client_touch(u->x->c);
        upstream_feed(u, resp->data, resp->len);
    }
    if (u->p.closing || !u->h2s)
        return;
    if (!u->x) {
        upstream_close(u);
        return;
    }
    switch (router_h2c_stream_state(u->h2s)) {
    case ROUTER_H2C_FAILED:
        upstream_failed(u, UV_EPROTO, false);
        return;
    case ROUTER_H2C_REFUSED:
        h2c_stream_refused(u);
        return;
    default:
        break;
    }
    struct client *c = u->x->c;
    if (c->p.throttled && peer_queued(&u->p) <= ROUTER_LOW_WATER) {
        c->p.throttled = false; /* the instance's window took more of the request body */
        client_update_reading(c);
    }
}

/* Each stream of the connection hears what input (or its failure) did to it. */
static void h2c_conn_dispatch(struct h2c_conn *conn)
{
    struct upstream *list[ROUTER_H2C_MAX_STREAMS];
    size_t n = 0;
    for (struct upstream *u = conn->streams; u && n < ROUTER_H2C_MAX_STREAMS; u = u->conn_next)
        list[n++] = u;
    conn->dispatching = true;
    for (size_t i = 0; i < n; i++) /* closed ones stay allocated until the loop frees them */
        if (!list[i]->p.closing && list[i]->conn == conn)
            h2c_stream_deliver(list[i]);
    conn->dispatching = false;
}

static void h2c_conn_fail(struct h2c_conn *conn, int err)
{
    (void)err;
    if (conn->p.closing)
        return;
    struct pool *pool = conn->pool;
    router_h2c_abort(conn->h2c);
    h2c_conn_dispatch(conn);
    h2c_conn_close(conn);
    h2c_pool_serve(pool);
}

static void h2c_conn_drained(struct h2c_conn *conn)
{
    if (peer_queued(&conn->p) > ROUTER_LOW_WATER)
        return;
    for (struct upstream *u = conn->streams; u; u = u->conn_next)
        if (u->x && u->x->c->p.throttled && peer_queued(&u->p) <= ROUTER_LOW_WATER) {
            u->x->c->p.throttled = false;
            client_update_reading(u->x->c);
        }
}

static void on_h2c_conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct h2c_conn *conn = s->data;
    if (nread == 0 || conn->p.closing)
        return;
    if (nread < 0) {
        if (!h2c_conn_probe_failed(conn, nread))
            h2c_conn_fail(conn, (int)nread);
        return;
    }
    if (router_h2c_input(conn->h2c, buf->base, (size_t)nread) < 0) {
        h2c_conn_fail(conn, UV_EPROTO);
        return;
    }
    h2c_conn_dispatch(conn);
    h2c_conn_settle(conn);
}

static void on_write(uv_write_t *req, int status)
{
    struct write_req *wr = (struct write_req *)req;
    struct peer *p = wr->peer;
    free(wr);
    if (p->closing)
        return;
    if (status < 0) {
        p->write_error = status;
        if (p->kind == PEER_CLIENT)
            client_close((struct client *)p);
        else if (p->kind == PEER_H2C)
            h2c_conn_fail((struct h2c_conn *)p, status);
        else
            upstream_failed((struct upstream *)p, status, false);
        return;
    }
    if (p->kind == PEER_H2C) {
        h2c_conn_drained((struct h2c_conn *)p);
        return;
    }
    /* a slow reader that still reads is not idle */
    if (p->kind == PEER_CLIENT)
        client_touch((struct client *)p);
    else if (((struct upstream *)p)->x)
        client_touch(((struct upstream *)p)->x->c);
    if (peer_queued(p) > ROUTER_LOW_WATER)
        return;
    /* drained: let the other side read again */
    if (p->kind == PEER_CLIENT) {
        struct client *c = (struct client *)p;
        if (c->h2)
            h2_conn_flush(c);
        else
            client_drained(c);
    } else {
        struct upstream *u = (struct upstream *)p;
        if (u->x && u->x->c->p.throttled) {
            u->x->c->p.throttled = false;
            client_update_reading(u->x->c);
        }
    }
}

/* ---- worker ------------------------------------------------------------------------------- */

static void sweep_idle(uv_timer_t *t)
{
    struct worker *w = t->data;
    uint64_t now = uv_now(&w->loop);
    for (struct pool *p = w->pools; p; p = p->next) {
        struct upstream *u = p->idle, *next;
        for (; u; u = next) {
            next = u->idle_next;
            if (now - u->idle_since >= (uint64_t)w->cfg->upstream_idle_timeout_ms)
                upstream_close(u);
        }
        struct h2c_conn *conn = p->conns, *cnext;
        for (; conn; conn = cnext) {
            cnext = conn->next;
            if (router_h2c_streams(conn->h2c) == 0 &&
                now - conn->idle_since >= (uint64_t)w->cfg->upstream_idle_timeout_ms)
                h2c_conn_close(conn);
        }
    }
}

/* Closes the pool's connections that carry nothing (the others close after their last
 * exchange, while stopping or draining). */
static void pool_close_idle(struct pool *p)
{
    while (p->idle)
        upstream_close(p->idle);
    struct h2c_conn *conn = p->conns, *next;
    for (; conn && !p->waiting; conn = next) { /* those waiting need a connection */
        next = conn->next;
        if (router_h2c_streams(conn->h2c) == 0)
            h2c_conn_close(conn);
    }
}

static void close_handle_if_open(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Once the last client is gone, the worker's own handles close and its loop ends. */
static void worker_maybe_done(struct worker *w)
{
    if (!w->stopping || w->clients || w->handles_closed)
        return;
    w->handles_closed = true;
    close_handle_if_open((uv_handle_t *)&w->sweep);
    close_handle_if_open((uv_handle_t *)&w->ack_check);
    close_handle_if_open((uv_handle_t *)&w->hold_poll);
    close_handle_if_open((uv_handle_t *)&w->table_wakeup);
    close_handle_if_open((uv_handle_t *)&w->wakeup);
    close_handle_if_open((uv_handle_t *)&w->drain);
    close_handle_if_open((uv_handle_t *)&w->drain_wakeup);
    close_handle_if_open((uv_handle_t *)&w->access_flush);
    close_handle_if_open((uv_handle_t *)&w->accept_pause);
    for (int i = 0; i < listen_count; i++)
        close_handle_if_open((uv_handle_t *)&w->accepts[i]);
    for (struct pool *p = w->pools; p; p = p->next)
        pool_close_idle(p);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct worker *w = t->data;
    while (w->clients)
        client_close(w->clients);
}

/* Stop: no new connections, idle ones close now, requests in flight get ROUTER_DRAIN_MS to
 * finish (their connections close after them). */
static void on_wakeup(uv_async_t *a)
{
    struct worker *w = a->data;
    if (w->stopping)
        return;
    w->stopping = true;
    __atomic_store_n(&w->accept_blocked, true, __ATOMIC_RELAXED);
    worker_set_accepting(w, false);
    struct client *next;
    for (struct client *c = w->clients; c; c = next) {
        next = c->next;
        if (c->h2 && router_h2_session_streams(c->h2) > 0 && !c->shutting_down) {
            router_h2_session_goaway(c->h2); /* its streams finish; it closes after them */
            continue;
        }
        if (!c->x || c->held || c->shutting_down)
            client_close(c);
        else
            c->x->client_close = true;
    }
    for (struct pool *p = w->pools; p; p = p->next)
        pool_close_idle(p);
    if (w->clients)
        uv_timer_start(&w->drain, on_drain_timeout, ROUTER_DRAIN_MS, 0);
    worker_maybe_done(w);
}

/* ---- backends lost (left the table without a drain) --------------------------------------- */

/* Why a request whose instance was lost cannot go to another one; NULL when it can: nothing
 * of it was sent (still connecting), or it is idempotent (RFC 9110 9.2.2) and has no body
 * (a body streams through the router and is not kept). */
static const char *lost_replay_refusal(const struct exchange *x, bool sent)
{
    if (!sent)
        return NULL;
    switch (x->method) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_PUT:
    case HTTP_DELETE:
        break;
    default:
        return "The app's instance was lost (its host is unreachable) before it answered; the "
               "request was not sent again: its method is not idempotent.";
    }
    if (x->chunked || x->content_length > 0)
        return "The app's instance was lost (its host is unreachable) before it answered; the "
               "request was not sent again: its body was not kept.";
    return NULL;
}

/* The exchange's instance left the table without a drain, or its host stopped acknowledging
 * the request: its connection (or stream) is dropped, and the request goes to another
 * instance of its route in the newest table (over new connections only, with fresh), or is
 * answered 502 (cut when part of the answer went out). */
static void exchange_backend_lost(struct exchange *x, bool fresh)
{
    struct client *c = x->c;
    struct worker *w = c->p.w;
    struct upstream *u = x->u;
    bool sent = u && u->state != U_CONNECTING;
    exchange_drop_hedges(x);
    exchange_release_backend(x);
    if (u) {
        u->x = NULL;
        x->u = NULL;
        upstream_close(u);
    }
    if (x->resp_started) { /* part of the answer went out: nothing truthful can be added */
        client_close(c);
        return;
    }
    const char *why = lost_replay_refusal(x, sent);
    struct table_hold *h = worker_table(w);
    const char *url = x->req.raw.data + x->url_off;
    struct route *r = why ? NULL
                          : route_table_lookup(h->table, x->req.raw.data + x->host_off, x->host_len,
                                               url, x->url_len);
    /* only to the same app: the table may have given the path to another one meanwhile */
    if (!why && (!r || r->backend_count == 0 || strcmp(r->app_guid, x->route->app_guid) != 0))
        why = "The app's instance was lost (its host is unreachable) before it answered, and "
              "no other instance is there to take the request.";
    if (why) {
        client_respond_error(c, 502, "backend-lost", why, true);
        return;
    }
    table_hold_release(w, x->hold);
    x->hold = table_hold_take(h);
    x->route = r;
    x->attempts = 0;
    x->fresh_connection = fresh;
    if (!x->req_done)
        c->state = C_WAIT_UPSTREAM;
    client_update_reading(c);
    ROUTER_METRIC_ADD(w->m.upstream_retries, 1);
    connect_backend(x);
}

/* Ends this worker's use of a backend that left the table without a drain: its exchanges
 * (see exchange_backend_lost), then its idle connections. */
static void worker_backend_lost(struct worker *w, const struct route_addr *a)
{
    for (struct pool *p = w->pools; p; p = p->next) {
        if (p->addr_len != a->len || memcmp(&p->addr, &a->addr, a->len) != 0)
            continue;
        p->lost = true; /* its connections hand no stream to those still waiting */
        /* each call takes its exchange off the list; bounded all the same, should a newer
         * table have brought the address back meanwhile */
        for (int n = p->in_flight; n > 0 && p->exchanges; n--)
            exchange_backend_lost(p->exchanges, false);
        p->lost = false;
        pool_close_idle(p);
    }
}

/* ---- requests the instance's host never acknowledged -------------------------------------- */

enum ack_state { ACK_WAITING, ACK_DONE, ACK_SILENT };

/* What the kernel knows of the requests written to p's socket (an HTTP/1.1 connection's one,
 * or an h2c connection's streams; whole when nothing of them is still to come from their
 * clients): all acknowledged (and all of it sent), still on its way, or unacknowledged for
 * ROUTER_UNACKED_MS with a retransmission timeout passed (no ACK at all meanwhile: a live
 * host's kernel acknowledges within a round trip, even when its app is busy or its window
 * shut). */
static enum ack_state peer_ack_state(struct peer *p, bool whole)
{
    uv_os_fd_t fd;
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    if (uv_fileno((uv_handle_t *)&p->tcp, &fd) < 0 ||
        getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return ACK_WAITING;
    int queued = 0; /* bytes in the socket not yet sent or not yet acknowledged */
    if (ti.tcpi_unacked == 0)
        return whole && peer_queued(p) == 0 && ioctl(fd, SIOCOUTQ, &queued) == 0 && queued == 0
                   ? ACK_DONE
                   : ACK_WAITING;
    if (ti.tcpi_retransmits > 0 && ti.tcpi_last_ack_recv >= ROUTER_UNACKED_MS)
        return ACK_SILENT;
    return ACK_WAITING;
}

/* x's request went to a host that acknowledges nothing (`what` says how that was seen): its
 * address is passed over by every route and worker, this worker's idle connections to it
 * close, and the request goes to another instance over a new connection (idempotent and
 * without a body) or gets a 502 backend-lost, as when a table drops the instance. */
static void exchange_unacknowledged(struct exchange *x, const char *what)
{
    struct route_backend *b = x->backend;
    struct pool *p = x->pool;
    if (b && !route_backend_down(b))
        log_warning("backend %s %s: its host is unreachable; passed over for %d ms, its "
                    "requests go to another instance or are answered 502 backend-lost",
                    b->addr_text, what, ROUTER_BACKEND_DOWN_MS);
    if (b)
        backend_mark_down(b);
    if (p)
        pool_close_idle(p);
    exchange_backend_lost(x, true);
}

/* Whether x waits for an answer to a request whose acknowledgement is still to be seen. */
static bool exchange_ack_watched(const struct exchange *x)
{
    const struct upstream *u = x->u;
    return u && !u->h2c && u->state == U_ACTIVE && !u->got_bytes && !u->acked && !x->resp_started;
}

/* p's requests are acknowledged and an answer slow to come: from now on the kernel probes
 * the instance's host after a second without a packet from it, and a probe unanswered for a
 * second ends the connection (UV_ETIMEDOUT, on_upstream_read, h2c_conn_probe_failed): a host
 * that vanished while its app worked on a request is found without waiting for the table.
 * The probes go on while the connection waits in the pool (the instance's kernel answers
 * them; its app sees none). *keepalive says they are on. */
static void connection_probe(struct peer *p, bool *keepalive)
{
    uv_os_fd_t fd;
    int on = 1, one = 1;
    if (*keepalive || uv_fileno((uv_handle_t *)&p->tcp, &fd) < 0)
        return;
    *keepalive = true;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &one, sizeof(one)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &one, sizeof(one)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) < 0)
        log_debug("TCP keepalive on a backend connection: %s", strerror(errno));
}

/* Whether u, a stream of an h2c connection, waits for the answer to its request. */
static bool h2c_stream_waits(const struct upstream *u)
{
    return u->x && !u->p.closing && u->state == U_ACTIVE && !u->got_bytes && !u->x->resp_started;
}

/* conn's instance's host acknowledges nothing (`what` says how that was seen): the connection
 * closes, and each exchange it carried ends as exchange_unacknowledged ends one (the address
 * passed over, the request sent to another instance over a new connection when idempotent
 * and without a body, else a 502 backend-lost; an answer begun is cut). The exchanges
 * waiting for a stream of the pool sent nothing: they go to another instance. */
static void h2c_conn_lost(struct h2c_conn *conn, const char *what)
{
    struct pool *pool = conn->pool;
    struct upstream *list[ROUTER_H2C_MAX_STREAMS];
    size_t n = 0;
    for (struct upstream *u = conn->streams; u && n < ROUTER_H2C_MAX_STREAMS; u = u->conn_next)
        list[n++] = u;
    h2c_conn_close(conn);            /* its streams let go of it; their upstreams stay allocated */
    for (size_t i = 0; i < n; i++) { /* ending one exchange may end others of its client */
        if (list[i]->p.closing)
            continue;
        if (list[i]->x)
            exchange_unacknowledged(list[i]->x, what);
        else
            upstream_close(list[i]);
    }
    pool->lost = true; /* no connection opens to the address for those still waiting */
    for (int left = pool->in_flight; left > 0 && pool->waiting && pool->waiting->x; left--)
        exchange_backend_lost(pool->waiting->x, true);
    pool->lost = false;
    pool_close_idle(pool);
    h2c_pool_serve(pool); /* should the only instances left be on this address */
}

/* A read error on conn that says a keepalive probe went unanswered (connection_probe) while
 * a stream waited for its answer: the host is gone (h2c_conn_lost). The kernel reports the
 * last ICMP error it had for the connection, if any, instead of the timeout. */
static bool h2c_conn_probe_failed(struct h2c_conn *conn, ssize_t err)
{
    if (err != UV_ETIMEDOUT && err != UV_EHOSTUNREACH && err != UV_ENETUNREACH)
        return false;
    for (struct upstream *u = conn->streams; u; u = u->conn_next)
        if (h2c_stream_waits(u)) {
            h2c_conn_lost(conn, "answered no keepalive probe while a request waited");
            return true;
        }
    return false;
}

/* The streams of an h2c connection share its socket: while one waits for its answer and was
 * sent ROUTER_UNACKED_MS ago, the socket is checked as an HTTP/1.1 request's is, at every
 * tick (streams come and go: acknowledged once is not acknowledged for good). Returns whether
 * a stream waits (the check goes on) and sets *lost when the connection was found lost. */
static bool h2c_conn_ack_check(struct h2c_conn *conn, uint64_t now, bool *lost)
{
    bool waits = false, due = false, whole = true;
    *lost = false;
    for (struct upstream *u = conn->streams; u; u = u->conn_next) {
        if (!h2c_stream_waits(u))
            continue;
        waits = true;
        whole = whole && u->x->req_done;
        due = due || now - u->sent_at >= ROUTER_UNACKED_MS;
    }
    if (!due || conn->p.closing)
        return waits;
    enum ack_state st = peer_ack_state(&conn->p, whole);
    if (st == ACK_DONE)
        connection_probe(&conn->p, &conn->keepalive);
    if (st != ACK_SILENT)
        return true;
    h2c_conn_lost(conn,
                  "acknowledged nothing of a request for " STRINGIFY(ROUTER_UNACKED_MS) " ms");
    *lost = true;
    return true;
}

static void on_ack_check(uv_timer_t *t)
{
    struct worker *w = t->data;
    uint64_t now = uv_now(&w->loop);
    bool watching = false;
    for (struct pool *p = w->pools; p; p = p->next) {
        if (p->h2c) {
        again_h2c: /* a lost connection left the list, and its exchanges went elsewhere */
            for (struct h2c_conn *conn = p->conns; conn; conn = conn->next) {
                bool lost;
                watching = h2c_conn_ack_check(conn, now, &lost) || watching;
                if (lost)
                    goto again_h2c;
            }
            continue;
        }
    again:
        for (struct exchange *x = p->exchanges; x; x = x->pool_next) {
            if (!exchange_ack_watched(x))
                continue;
            watching = true;
            if (now - x->u->sent_at < ROUTER_UNACKED_MS)
                continue;
            enum ack_state st = peer_ack_state(&x->u->p, x->req_done);
            if (st == ACK_DONE) {
                x->u->acked = true;
                connection_probe(&x->u->p, &x->u->keepalive);
            }
            if (st != ACK_SILENT)
                continue;
            /* x leaves this list (its replay goes over a new connection, not yet sent) */
            exchange_unacknowledged(
                x, "acknowledged nothing of a request for " STRINGIFY(ROUTER_UNACKED_MS) " ms");
            goto again;
        }
    }
    if (!watching || w->stopping)
        uv_timer_stop(t);
}

/* A request was sent: the check runs while any request waits for its answer. */
static void ack_check_arm(struct worker *w)
{
    if (!uv_is_active((uv_handle_t *)&w->ack_check) && !w->stopping)
        uv_timer_start(&w->ack_check, on_ack_check, ROUTER_ACK_CHECK_MS, ROUTER_ACK_CHECK_MS);
}

/* ---- drains (docs/bus.md) ---------------------------------------------------------------- */

static void drain_report(struct router_drain *d)
{
    if (__atomic_sub_fetch(&d->workers_left, 1, __ATOMIC_ACQ_REL) > 0)
        return;
    router_bus_drained(d->id);
    free(d);
}

/* The pool's last exchange ended: every drain waiting on it is done in this worker. */
static void worker_drain_pool_idle(struct worker *w, struct pool *p)
{
    struct drain_wait **pp = &w->drain_waits;
    while (*pp) {
        struct drain_wait *dw = *pp;
        if (dw->pool != p) {
            pp = &dw->next;
            continue;
        }
        *pp = dw->next;
        p->drains--;
        drain_report(dw->d);
        free(dw);
    }
}

static void worker_backend_lost(struct worker *w, const struct route_addr *a);

static void on_drain_wakeup(uv_async_t *a)
{
    struct worker *w = a->data;
    pthread_mutex_lock(&w->drain_lock);
    struct drain_wait *inbox = w->drain_inbox;
    w->drain_inbox = NULL;
    struct lost_notice *lost = w->lost_inbox;
    w->lost_inbox = NULL;
    pthread_mutex_unlock(&w->drain_lock);
    while (lost) {
        struct lost_notice *n = lost;
        lost = n->next;
        for (size_t i = 0; i < n->count && !w->stopping; i++)
            worker_backend_lost(w, &n->addrs[i]);
        free(n->addrs);
        free(n);
    }
    while (inbox) {
        struct drain_wait *dw = inbox;
        inbox = dw->next;
        struct pool *p = w->pools;
        while (p && !(p->addr_len == dw->d->addr_len &&
                      memcmp(&p->addr, &dw->d->addr, p->addr_len) == 0))
            p = p->next;
        if (p) /* idle connections would only be cut by the instance's stop */
            pool_close_idle(p);
        if (!p || p->in_flight == 0) {
            drain_report(dw->d);
            free(dw);
            continue;
        }
        dw->pool = p;
        p->drains++;
        dw->next = w->drain_waits;
        w->drain_waits = dw;
    }
}

void router_proxy_drain(const struct sockaddr_storage *addr, socklen_t addr_len, uint64_t id)
{
    if (stop_sent || worker_count == 0) {
        router_bus_drained(id); /* stopping: requests in flight end with the workers */
        return;
    }
    struct router_drain *d = xcalloc(1, sizeof(*d));
    d->id = id;
    memcpy(&d->addr, addr, addr_len);
    d->addr_len = addr_len;
    d->workers_left = worker_count;
    for (int i = 0; i < worker_count; i++) {
        struct worker *w = &workers[i];
        struct drain_wait *dw = xcalloc(1, sizeof(*dw));
        dw->d = d;
        pthread_mutex_lock(&w->drain_lock);
        dw->next = w->drain_inbox;
        w->drain_inbox = dw;
        pthread_mutex_unlock(&w->drain_lock);
        uv_async_send(&w->drain_wakeup);
    }
}

void router_proxy_backends_lost(const struct route_addr *addrs, size_t count)
{
    if (stop_sent || worker_count == 0 || count == 0)
        return; /* stopping: requests in flight end with the workers */
    for (int i = 0; i < worker_count; i++) {
        struct worker *w = &workers[i];
        struct lost_notice *n = xcalloc(1, sizeof(*n));
        n->addrs = xmalloc(count * sizeof(*addrs));
        memcpy(n->addrs, addrs, count * sizeof(*addrs));
        n->count = count;
        pthread_mutex_lock(&w->drain_lock);
        n->next = w->lost_inbox;
        w->lost_inbox = n;
        pthread_mutex_unlock(&w->drain_lock);
        uv_async_send(&w->drain_wakeup);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void init_settings(void)
{
    llhttp_settings_init(&request_settings);
    request_settings.on_url = on_req_url;
    request_settings.on_header_field = on_req_header_field;
    request_settings.on_header_value = on_req_header_value;
    request_settings.on_header_field_complete = on_req_header_field_complete;
    request_settings.on_headers_complete = on_req_headers_complete;
    request_settings.on_body = on_req_body;
    request_settings.on_chunk_header = on_req_chunk_header;
    request_settings.on_chunk_complete = on_req_chunk_complete;
    request_settings.on_message_complete = on_req_message_complete;

    llhttp_settings_init(&response_settings);
    response_settings.on_status = on_resp_status;
    response_settings.on_header_field = on_resp_header_field;
    response_settings.on_header_value = on_resp_header_value;
    response_settings.on_headers_complete = on_resp_headers_complete;
    response_settings.on_body = on_resp_body;
    response_settings.on_chunk_header = on_resp_chunk_header;
    response_settings.on_chunk_complete = on_resp_chunk_complete;
    response_settings.on_message_complete = on_resp_message_complete;
}

/* Binds and listens on one address, exclusively: no SO_REUSEPORT, so the kernel refuses
 * every other socket that asks for this address and port, whatever its owner (a tenant's app
 * of the same uid, or root). SO_REUSEADDR only lets a restart bind while connections of the
 * previous router are in TIME_WAIT; it never admits a second listener. */
static int listen_on(const struct sockaddr_storage *ss, const char *addr_text, bool v6only,
                     bool tls, int *out_fd)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (v6only)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    socklen_t len =
        ss->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (bind(fd, (const struct sockaddr *)ss, len) < 0 || listen(fd, 4096) < 0) {
        int e = errno;
        close(fd);
        if (e == EADDRINUSE)
            log_error("%s is in use by another process; stop it or choose "
                      "another address (%s)",
                      addr_text,
                      tls ? "--tls-addr, SKIFF_ROUTER_TLS_ADDR" : "--addr, SKIFF_ROUTER_ADDR");
        else if (!v6only)
            log_error("cannot listen on %s: %s", addr_text, skiff_strerror(-e));
        return -e;
    }
    *out_fd = fd;
    return 0;
}

/* Opens the listening sockets every worker accepts from: one socket for the address (one
 * SO_REUSEPORT socket per worker would spread connections in the kernel, but any process of
 * the same uid could join that group and receive a share of every request; an accept queue
 * shared by the workers costs nothing measurable with keep-alive clients, see
 * bench/router/README.md). Beside 127.0.0.1 the same port of [::1] is held too: browsers and
 * curl try ::1 first for *.localhost, and whoever listened there would receive them. */
static int router_listen(const char *addr_text, bool tls)
{
    int first = listen_count;
    char host[256];
    const char *colon = strrchr(addr_text, ':');
    if (!colon || (size_t)(colon - addr_text) >= sizeof(host)) {
        log_error("address %s is not HOST:PORT", addr_text);
        return -EINVAL;
    }
    memcpy(host, addr_text, (size_t)(colon - addr_text));
    host[colon - addr_text] = '\0';
    int port = atoi(colon + 1);
    struct sockaddr_storage ss;
    const char *h = host;
    if (strcmp(h, "localhost") == 0 || h[0] == '\0')
        h = "127.0.0.1";
    char h6[256];
    if (h[0] == '[') {
        snprintf(h6, sizeof(h6), "%.*s", (int)strlen(h) - 2, h + 1);
        h = h6;
    }
    if (uv_ip4_addr(h, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(h, port, (struct sockaddr_in6 *)&ss) != 0) {
        log_error("%s is not an IP address and port", addr_text);
        return -EINVAL;
    }
    int r = listen_on(&ss, addr_text, false, tls, &listen_fds[first]);
    if (r < 0)
        return r;
    listen_tls[first] = tls;
    listen_count = first + 1;
    if (ss.ss_family != AF_INET || strcmp(h, "127.0.0.1") != 0 || port == 0)
        return 0;
    struct sockaddr_storage ss6;
    uv_ip6_addr("::1", port, (struct sockaddr_in6 *)&ss6);
    char text6[64];
    snprintf(text6, sizeof(text6), "[::1]:%d", port);
    r = listen_on(&ss6, text6, true, tls, &listen_fds[first + 1]);
    if (r == 0) {
        listen_tls[first + 1] = tls;
        listen_count = first + 2;
    } else if (r == -EADDRINUSE) {
        close(listen_fds[first]);
        listen_count = first;
        return r;
    } /* else no IPv6 loopback on this machine: nobody can listen there either */
    return 0;
}

/* The local CA signs a certificate only for a host some route names (exactly): a client
 * sending random names in SNI would otherwise have one made for each. */
static bool router_tls_name_routed(void *ctx, const char *name)
{
    (void)ctx;
    struct route_table *t = route_table_current();
    bool found = false;
    for (size_t i = 0; !found && i < route_table_route_count(t); i++)
        found = !strcmp(route_table_route_at(t, i)->host, name);
    route_table_unref(t);
    return found;
}

/* Loads the certificates and opens the HTTPS listening sockets. */
static int router_tls_start(const struct router_config *cfg)
{
    char err[512] = "";
    struct tls_store_options opts = {.alpn = router_alpn_protocols,
                                     .alpn_len = router_alpn_protocols_len,
                                     .client_ca_file = cfg->tls_client_ca};
    char *dir = xasprintf("%s/tls", cfg->home);
    int r = tls_store_new(&opts, &tls_store, err, sizeof err);
    if (r == 0)
        r = tls_store_load_dir(tls_store, dir, err, sizeof err);
    if (r == 0 && tls_store_count(tls_store) == 0) {
        snprintf(err, sizeof err,
                 "no certificate in %s (default.pem or domains/*.pem); skiffd makes one at start",
                 dir);
        r = -ENOENT;
    }
    if (r == 0) {
        char why[256] = "";
        /* without a local CA, APP.localhost is served the default certificate */
        if (tls_store_set_issuer(tls_store, dir, "localhost", why, sizeof why) < 0)
            log_info("HTTPS: no local CA in %s, no certificate is made per APP.localhost", dir);
        tls_store_set_issue_filter(tls_store, router_tls_name_routed, NULL);
        /* OCSP stapling for certificates that name a responder: fetched on a thread of its own */
        int retry_s = (cfg->tls_ocsp_retry_ms + 999) / 1000;
        if (tls_store_ocsp_start(tls_store, retry_s, why, sizeof why) < 0)
            log_warning("HTTPS: no OCSP stapling: %s", why);
    }
    free(dir);
    if (r < 0) {
        log_error("HTTPS: %s", err);
        return r;
    }
    return router_listen(cfg->tls_addr, true);
}

int router_tls_reload(const struct router_config *cfg)
{
    if (!tls_store)
        return 0;
    char err[512] = "";
    char *dir = xasprintf("%s/tls", cfg->home);
    int r = tls_store_load_dir(tls_store, dir, err, sizeof err);
    free(dir);
    if (r < 0)
        log_error("HTTPS: the certificates were not reloaded, the ones before stay: %s", err);
    else
        log_info("HTTPS: %zu certificates loaded", tls_store_count(tls_store));
    return r;
}

int router_proxy_start(const struct router_config *cfg)
{
    /* a peer that resets while the router writes is an error code, not a reason to die */
    signal(SIGPIPE, SIG_IGN);
    init_settings();
    int n = cfg->workers > 0 ? cfg->workers : (int)uv_available_parallelism();
    if (n < 1)
        n = 1;
    if (n > 64)
        n = 64;
    int r = router_listen(cfg->addr, false);
    if (r < 0)
        return r;
    if (cfg->tls_addr && *cfg->tls_addr && (r = router_tls_start(cfg)) < 0) {
        for (int i = 0; i < listen_count; i++)
            close(listen_fds[i]);
        listen_count = 0;
        return r;
    }
    workers = xcalloc((size_t)n, sizeof(*workers));
    uint64_t prefix;
    prefix = ((uint64_t)time_now_ns() ^ ((uint64_t)getpid() << 40));
    worker_count = n;
    for (int i = 0; i < n; i++) {
        struct worker *w = &workers[i];
        w->index = i;
        w->cfg = cfg;
        w->client_cap = cfg->max_connections / n + 1;
        router_h2_limits_defaults(&w->h2_limits);
        w->h2_limits.max_header_bytes = cfg->max_header_bytes;
        w->h2_limits.max_headers = cfg->max_headers;
        w->id_prefix = prefix + (uint64_t)i;
        w->hedge_seed = (unsigned)w->id_prefix;
        uv_loop_init(&w->loop);
        for (int k = 0; k < listen_count; k++) {
            uv_poll_init(&w->loop, &w->accepts[k], listen_fds[k]);
            w->accepts[k].data = w;
        }
        uv_timer_init(&w->loop, &w->accept_pause);
        w->accept_pause.data = w;
        worker_set_accepting(w, true);
        uv_async_init(&w->loop, &w->wakeup, on_wakeup);
        w->wakeup.data = w;
        uv_async_init(&w->loop, &w->drain_wakeup, on_drain_wakeup);
        w->drain_wakeup.data = w;
        uv_async_init(&w->loop, &w->table_wakeup, on_table_wakeup);
        w->table_wakeup.data = w;
        pthread_mutex_init(&w->drain_lock, NULL);
        uv_timer_init(&w->loop, &w->sweep);
        w->sweep.data = w;
        uv_timer_init(&w->loop, &w->ack_check);
        w->ack_check.data = w;
        uv_timer_init(&w->loop, &w->hold_poll);
        w->hold_poll.data = w;
        uv_timer_init(&w->loop, &w->drain);
        w->drain.data = w;
        uv_check_init(&w->loop, &w->access_flush);
        w->access_flush.data = w;
        uv_check_start(&w->access_flush, on_access_flush);
        uv_unref((uv_handle_t *)&w->access_flush);
        uv_timer_start(&w->sweep, sweep_idle, 1000, 1000);
        pthread_create(&w->thread, NULL, worker_main, w);
    }
    return 0;
}

void router_proxy_stop_async(void)
{
    if (stop_sent)
        return; /* a worker's wakeup handle may be closed by now */
    stop_sent = true;
    /* no new connections from now on: a shut-down listening socket refuses them (and wakes
     * every worker's poll); it stays open until the workers are gone */
    for (int i = 0; i < listen_count; i++)
        shutdown(listen_fds[i], SHUT_RD);
    for (int i = 0; i < worker_count; i++)
        uv_async_send(&workers[i].wakeup);
}

void router_proxy_stop(void)
{
    router_proxy_stop_async();
    for (int i = 0; i < worker_count; i++) {
        struct worker *w = &workers[i];
        pthread_join(w->thread, NULL);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        uv_loop_close(&w->loop);
        /* drains the workers had no time for: the requests they waited for are over */
        struct drain_wait *left[2] = {w->drain_inbox, w->drain_waits};
        for (int k = 0; k < 2; k++)
            while (left[k]) {
                struct drain_wait *dw = left[k];
                left[k] = dw->next;
                drain_report(dw->d);
                free(dw);
            }
        w->drain_inbox = w->drain_waits = NULL;
        while (w->lost_inbox) { /* nothing is in flight any more */
            struct lost_notice *n = w->lost_inbox;
            w->lost_inbox = n->next;
            free(n->addrs);
            free(n);
        }
        pthread_mutex_destroy(&w->drain_lock);
        while (w->pools) {
            struct pool *p = w->pools;
            w->pools = p->next;
            free(p);
        }
        if (w->hold)
            table_hold_free(w->hold);
        while (w->retired) {
            struct table_hold *h = w->retired;
            w->retired = h->next;
            table_hold_free(h);
        }
        free(w->view);
        buf_free(&w->access);
        buf_free(&w->h2c_resp);
        buf_free(&w->tls_out);
        buf_free(&w->h2_gather);
        while (w->spare) {
            struct exchange *x = w->spare;
            w->spare = (struct exchange *)x->u;
            exchange_destroy(x);
        }
    }
    free(workers);
    workers = NULL;
    worker_count = 0;
    for (int i = 0; i < listen_count; i++)
        close(listen_fds[i]);
    listen_count = 0;
    stop_sent = false;
    tls_store_free(tls_store);
    tls_store = NULL;
}

void router_proxy_metrics(struct router_metrics *out)
{
    memset(out, 0, sizeof(*out));
    for (int i = 0; i < worker_count; i++) {
        const uint64_t *src = (const uint64_t *)&workers[i].m;
        uint64_t *dst = (uint64_t *)out;
        for (size_t k = 0; k < sizeof(*out) / sizeof(uint64_t); k++)
            dst[k] += __atomic_load_n(&src[k], __ATOMIC_RELAXED);
    }
}
