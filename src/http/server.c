/* The HTTP/1.1 server: listeners, connection caps, parsing, bodies, answers, timeouts.
 * See server.h for the life of a request. */
#include "http/server.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "http/parser.h"
#include "http/url.h"
#include "http/tls_relay.h"
#include "tls/tls.h"

#define HTTP_PENDING_MAX (1u << 20)
#define HTTP_CLIENT_BUCKETS 1024
#define HTTP_ACCEPT_BATCH 64
/* Accepting stops this long after a resource error (EMFILE, ENOMEM, ...), then resumes. */
#define HTTP_ACCEPT_PAUSE_MS 100
/* After an answer sent before the body was read, the rest of what the client sends is read
 * and dropped for at most this long (or this much), so that the answer is not lost to a reset;
 * the client has been told (FIN) at once. */
#define HTTP_LINGER_MS 2000
#define HTTP_LINGER_BYTES (16u << 20)
/* One read's worth: every connection reads into the same buffer (s->read_buf), since what a
 * read brings is parsed, copied or dropped before the next read. */
#define HTTP_READ_BYTES 65536
#define HTTP_SWEEP_MS 1000
/* A connection's own buffers (answers of a turn, header text) are kept between requests up to
 * this size, and freed past it, so that idle connections hold little. */
#define HTTP_KEEP_BYTES (16u << 10)

/* A listening socket, polled and accepted from by hand (not uv_listen), so that a resource
 * error pauses accepting instead of spinning or giving up. */
struct http_listener {
    struct http_server *server;
    uv_poll_t poll;
    int fd;
    int tag;
    bool open;             /* poll initialised and not closed */
    struct tls_store *tls; /* HTTPS: connections speak TLS (not owned) */
};

/* The connections of one client address (IPv4 as v4-mapped IPv6). */
struct http_client {
    struct http_client *next;
    unsigned char addr[16];
    unsigned count;
};

struct http_server {
    uv_loop_t *loop;
    struct http_server_config cfg;
    char *tmp_dir;
    char *name;
    struct http_listener listeners[HTTP_MAX_LISTENERS];
    int nlisteners;
    uv_timer_t accept_timer; /* resumes accepting after a pause */
    bool timers_open;
    bool accept_paused;
    int reserve_fd; /* held so that accept-and-close works when out of descriptors */
    int64_t last_pressure_log_ms;
    struct http_conn *conns;
    /* connections waiting for a request head (or lingering), longest waiting first: the
     * ones closed when a cap is reached */
    struct http_conn *idle_head, *idle_tail;
    unsigned nconns, max_conns, max_per_client;
    struct http_client *clients[HTTP_CLIENT_BUCKETS];
    uint64_t body_memory; /* request bodies held in memory now */
    unsigned tmp_seq;
    bool closing;
    int handles_open;
    uv_timer_t sweep; /* closes connections that stall (see http__sweep) */
    /* connections with answers written this loop turn, sent together in one send each (see
     * http__write): before the loop polls (prepare) and after it has (check) */
    struct http_conn *flush_head;
    uv_prepare_t flush_prepare;
    uv_check_t flush_check;
    void (*close_cb)(void *arg);
    void *close_arg;
    char read_buf[HTTP_READ_BYTES];
    char tls_plain[HTTP_READ_BYTES]; /* what one TLS read decrypts into */
};

struct http_conn {
    uv_tcp_t tcp;
    struct http_server *server;
    int listener;
    llhttp_t parser;
    struct http_conn *prev, *next;
    struct http_request *req; /* the request being parsed */
    /* requests handed to the owner, oldest first: only the first writes to the socket, the
     * others' answers are held (held_bytes in all) until it is finished */
    struct http_request *first, *last;
    unsigned inflight;
    size_t held_bytes;
    bool parse_paused; /* the parser stopped between requests: what comes waits in pending */
    bool parse_failed; /* a malformed request: trailer (its 400) goes once the rest are out */
    struct buf trailer;
    struct http_request *upgrade_req;
    struct buf url;
    struct buf hfield;
    struct buf hvalue;
    /* the head's headers so far, "name\0value\0" each, and where each starts: reused from
     * request to request, then copied into the request in one piece (req->head_text) */
    struct buf hstore;
    size_t *hoff; /* name and value offsets, two per header */
    size_t nhoff, hoff_cap;
    bool in_value;
    size_t header_bytes;
    struct buf pending;
    struct buf out;       /* written this loop turn, not sent yet */
    size_t write_queued;  /* handed to libuv (uv_write), not taken by the client yet */
    size_t write_pending; /* out and write_queued */
    struct http_conn *flush_prev, *flush_next;
    bool in_flush;
    bool reading;
    bool in_execute;   /* inside llhttp_execute: http__feed goes on with what follows */
    int64_t active_ms; /* last byte read or request finished (monotonic) */
    bool close_after_write;
    bool closing;
    /* waiting for a request head: in the server's idle list since idle_since_ms */
    struct http_conn *idle_prev, *idle_next;
    bool in_idle;
    int64_t idle_since_ms;
    int64_t head_start_ms; /* first byte of the head being read; 0 when none */
    bool served;           /* a request was answered on it */
    struct http_client *client;
    bool write_blocked; /* responses wait to be taken: pipelined requests wait too */
    bool linger_wanted; /* answered before the body was read: linger when closing */
    bool lingering;
    int64_t linger_until_ms;
    uint64_t linger_bytes;
    uv_shutdown_t shutdown;
    char peer[80];
    /* http_upgrade: the taker, once the 101 is out and the parser has let go */
    void (*upgrade_fn)(void *ctx, int fd, const char *early, size_t len);
    void *upgrade_ctx;
    struct tls_conn *tls; /* HTTPS: every byte passes through it */
};

struct http_write {
    uv_write_t req;
    struct http_conn *conn;
    size_t len;
    char data[];
};

static void http__conn_close(struct http_conn *c);
static void http__process_pending(struct http_conn *c);
static void http__start_reading(struct http_conn *c);
static void http__settings_fill(llhttp_settings_t *st);
static void http__close_or_linger(struct http_conn *c);
static void http__answer_now(struct http_conn *c, struct http_request *req, bool body_follows);
static void http__resume_accepting(uv_timer_t *t);
static void http__on_listen_ready(uv_poll_t *h, int status, int events);
static void http__sweep(uv_timer_t *t);
static void http__upgrade_maybe(struct http_conn *c);
static void http__continue(struct http_conn *c);
static void http__flush_all(struct http_server *s);

/* ---- connection caps ------------------------------------------------------------------- */

static void http__client_key(const struct sockaddr_storage *ss, unsigned char key[16])
{
    memset(key, 0, 16);
    if (ss->ss_family == AF_INET) {
        key[10] = key[11] = 0xff; /* as ::ffff:a.b.c.d, which a dual-stack socket reports */
        memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    }
}

static size_t http__client_bucket(const unsigned char key[16])
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % HTTP_CLIENT_BUCKETS;
}

/* The record of a client address with one more connection counted. */
static struct http_client *http__client_get(struct http_server *s, const unsigned char key[16])
{
    struct http_client **head = &s->clients[http__client_bucket(key)];
    struct http_client *cl = *head;
    while (cl && memcmp(cl->addr, key, 16))
        cl = cl->next;
    if (!cl) {
        cl = xcalloc(1, sizeof *cl);
        memcpy(cl->addr, key, 16);
        cl->next = *head;
        *head = cl;
    }
    cl->count++;
    return cl;
}

/* One connection fewer; the record goes with the last one. */
static void http__client_put(struct http_server *s, struct http_client *cl)
{
    if (!cl || --cl->count > 0)
        return;
    for (struct http_client **pp = &s->clients[http__client_bucket(cl->addr)]; *pp;
         pp = &(*pp)->next)
        if (*pp == cl) {
            *pp = cl->next;
            free(cl);
            return;
        }
}

static void http__idle_remove(struct http_conn *c)
{
    struct http_server *s = c->server;
    if (!c->in_idle)
        return;
    if (c->idle_prev)
        c->idle_prev->idle_next = c->idle_next;
    else
        s->idle_head = c->idle_next;
    if (c->idle_next)
        c->idle_next->idle_prev = c->idle_prev;
    else
        s->idle_tail = c->idle_prev;
    c->idle_prev = c->idle_next = NULL;
    c->in_idle = false;
}

/* The connection waits for a request head from now on: the newest of the list. */
static void http__idle_add(struct http_conn *c)
{
    struct http_server *s = c->server;
    http__idle_remove(c);
    c->idle_since_ms = time_mono_ms();
    c->head_start_ms = 0;
    c->idle_prev = s->idle_tail;
    c->idle_next = NULL;
    if (s->idle_tail)
        s->idle_tail->idle_next = c;
    else
        s->idle_head = c;
    s->idle_tail = c;
    c->in_idle = true;
}

/* A lingering connection is the first to go when room is needed. */
static void http__idle_add_front(struct http_conn *c)
{
    struct http_server *s = c->server;
    http__idle_remove(c);
    c->idle_next = s->idle_head;
    c->idle_prev = NULL;
    if (s->idle_head)
        s->idle_head->idle_prev = c;
    else
        s->idle_tail = c;
    s->idle_head = c;
    c->in_idle = true;
}

/* The connection that has waited longest for a request head (of client cl when not NULL), or
 * NULL when every one is busy with a request. */
static struct http_conn *http__idle_victim(struct http_server *s, const struct http_client *cl)
{
    for (struct http_conn *c = s->idle_head; c; c = c->idle_next)
        if (!cl || c->client == cl)
            return c;
    return NULL;
}

/* Makes room for one more connection of cl (already counted in cl): false when there is
 * none, because every connection over the cap is busy with a request. */
static bool http__admit(struct http_server *s, struct http_client *cl)
{
    if (cl->count > s->max_per_client) {
        struct http_conn *victim = http__idle_victim(s, cl);
        if (!victim)
            return false;
        http__conn_close(victim);
    }
    if (s->nconns >= s->max_conns) {
        struct http_conn *victim = http__idle_victim(s, NULL);
        if (!victim)
            return false;
        http__conn_close(victim);
    }
    return true;
}

/* The connection caps for a descriptor limit: never more than half of it. */
static void http__caps(struct http_server *s, const struct http_server_config *cfg)
{
    struct rlimit rl;
    uint64_t nofile = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        nofile = rl.rlim_cur == RLIM_INFINITY ? (1u << 20) : (uint64_t)rl.rlim_cur;
    uint64_t max = cfg->max_connections ? cfg->max_connections : HTTP_MAX_CONNECTIONS;
    if (max > nofile / 2)
        max = nofile / 2;
    if (max < 16)
        max = 16;
    uint64_t per = cfg->max_connections_per_client ? cfg->max_connections_per_client : max / 4;
    if (per > max)
        per = max;
    if (per < 1)
        per = 1;
    s->max_conns = (unsigned)max;
    s->max_per_client = (unsigned)per;
}

/* ---- life of the server ------------------------------------------------------------------ */

int http_server_new(uv_loop_t *loop, const struct http_server_config *cfg, struct http_server **out)
{
    if (cfg->tmp_dir && mkdir_p(cfg->tmp_dir, 0700) < 0)
        return -EIO;
    struct http_server *s = xcalloc(1, sizeof *s);
    s->loop = loop;
    s->cfg = *cfg;
    if (s->cfg.request_size < sizeof(struct http_request))
        s->cfg.request_size = sizeof(struct http_request);
    s->tmp_dir = xstrdup(cfg->tmp_dir ? cfg->tmp_dir : "/tmp");
    s->name = xstrdup(cfg->name ? cfg->name : "the HTTP server");
    s->cfg.tmp_dir = s->tmp_dir;
    s->cfg.name = s->name;
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < HTTP_MAX_LISTENERS; i++)
        s->listeners[i].fd = -1;
    http__caps(s, cfg);
    *out = s;
    return 0;
}

unsigned http_server_connections(const struct http_server *s)
{
    return s->nconns;
}

static int http__parse_addr(const char *addr, struct sockaddr_storage *ss)
{
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (!colon)
        return -EINVAL;
    char host[256];
    size_t hl = (size_t)(colon - addr);
    if (hl >= sizeof host)
        return -EINVAL;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    int port = atoi(colon + 1);
    if (port <= 0 || port > 65535)
        return -EINVAL;
    if (host[0] == '[') {
        if (hl < 2 || host[hl - 1] != ']')
            return -EINVAL;
        host[hl - 1] = '\0';
        return uv_ip6_addr(host + 1, port, (struct sockaddr_in6 *)ss);
    }
    if (!strcmp(host, "localhost"))
        snprintf(host, sizeof host, "127.0.0.1");
    return uv_ip4_addr(host[0] ? host : "0.0.0.0", port, (struct sockaddr_in *)ss);
}

bool http_server_addr_valid(const char *addr)
{
    struct sockaddr_storage ss;
    return http__parse_addr(addr, &ss) == 0;
}

static void http__timers_start(struct http_server *s)
{
    if (s->timers_open)
        return;
    s->timers_open = true;
    uv_timer_init(s->loop, &s->sweep);
    s->sweep.data = s;
    s->handles_open++;
    uv_timer_start(&s->sweep, http__sweep, HTTP_SWEEP_MS, HTTP_SWEEP_MS);
    uv_unref((uv_handle_t *)&s->sweep);
    uv_timer_init(s->loop, &s->accept_timer);
    s->accept_timer.data = s;
    s->handles_open++;
    uv_unref((uv_handle_t *)&s->accept_timer);
    uv_prepare_init(s->loop, &s->flush_prepare);
    s->flush_prepare.data = s;
    s->handles_open++;
    uv_check_init(s->loop, &s->flush_check);
    s->flush_check.data = s;
    s->handles_open++;
}

int http_server_listen(struct http_server *s, const char *addr, int tag)
{
    return http_server_listen_tls(s, addr, tag, NULL);
}

int http_server_listen_tls(struct http_server *s, const char *addr, int tag, struct tls_store *tls)
{
    if (s->nlisteners >= HTTP_MAX_LISTENERS || s->closing)
        return -EINVAL;
    struct sockaddr_storage ss;
    int rc = http__parse_addr(addr, &ss);
    if (rc < 0)
        return rc;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    socklen_t len =
        ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (const struct sockaddr *)&ss, len) < 0 || listen(fd, 511) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    struct http_listener *l = &s->listeners[s->nlisteners];
    l->server = s;
    l->tag = tag;
    l->tls = tls;
    if ((rc = uv_poll_init(s->loop, &l->poll, fd)) < 0) {
        close(fd);
        return rc;
    }
    l->fd = fd;
    l->poll.data = l;
    l->open = true;
    s->handles_open++;
    s->nlisteners++;
    uv_poll_start(&l->poll, UV_READABLE, http__on_listen_ready);
    http__timers_start(s);
    return 0;
}

static void http__handle_closed(struct http_server *s)
{
    if (--s->handles_open == 0 && s->closing && s->close_cb) {
        void (*cb)(void *) = s->close_cb;
        s->close_cb = NULL;
        cb(s->close_arg);
    }
}

static void http__timer_closed(uv_handle_t *h)
{
    http__handle_closed(h->data);
}

static void http__listener_closed(uv_handle_t *h)
{
    struct http_listener *l = h->data;
    close(l->fd);
    l->fd = -1;
    http__handle_closed(l->server);
}

void http_server_close(struct http_server *s, void (*cb)(void *arg), void *arg)
{
    s->closing = true;
    s->close_cb = cb;
    s->close_arg = arg;
    s->handles_open++; /* held until every close below was started */
    for (int i = 0; i < s->nlisteners; i++)
        if (s->listeners[i].open) {
            s->listeners[i].open = false;
            uv_close((uv_handle_t *)&s->listeners[i].poll, http__listener_closed);
        }
    if (s->timers_open) {
        s->timers_open = false;
        uv_close((uv_handle_t *)&s->accept_timer, http__timer_closed);
        uv_close((uv_handle_t *)&s->sweep, http__timer_closed);
        uv_close((uv_handle_t *)&s->flush_prepare, http__timer_closed);
        uv_close((uv_handle_t *)&s->flush_check, http__timer_closed);
    }
    struct http_conn *c = s->conns;
    while (c) {
        struct http_conn *next = c->next;
        http__conn_close(c);
        c = next;
    }
    http__handle_closed(s);
}

void http_server_free(struct http_server *s)
{
    if (!s)
        return;
    if (s->reserve_fd >= 0)
        close(s->reserve_fd);
    for (size_t i = 0; i < HTTP_CLIENT_BUCKETS; i++)
        while (s->clients[i]) {
            struct http_client *next = s->clients[i]->next;
            free(s->clients[i]);
            s->clients[i] = next;
        }
    free(s->tmp_dir);
    free(s->name);
    free(s);
}

/* ---- writing ------------------------------------------------------------------------------ */

/* What follows a send the client took: an upgrade, a close, or the requests that waited. */
static void http__after_write(struct http_conn *c)
{
    if (c->closing)
        return;
    if (c->upgrade_fn) {
        http__upgrade_maybe(c);
    } else if (c->close_after_write && c->write_pending == 0) {
        http__close_or_linger(c);
    } else if (c->write_blocked && c->write_pending <= HTTP_WRITE_PENDING_MAX / 2) {
        /* the client took its answers: go on with the requests it pipelined */
        c->write_blocked = false;
        http__continue(c);
    }
}

static void http__write_done(uv_write_t *w, int status)
{
    struct http_write *hw = (struct http_write *)w;
    struct http_conn *c = hw->conn;
    c->write_queued -= hw->len;
    c->write_pending -= hw->len;
    free(hw);
    /* a peer that is gone ends the connection (and aborts a stream to it) */
    if (status < 0)
        http__conn_close(c);
    else
        http__after_write(c);
}

static void http__flush_remove(struct http_conn *c)
{
    if (!c->in_flush)
        return;
    if (c->flush_prev)
        c->flush_prev->flush_next = c->flush_next;
    else
        c->server->flush_head = c->flush_next;
    if (c->flush_next)
        c->flush_next->flush_prev = c->flush_prev;
    c->flush_prev = c->flush_next = NULL;
    c->in_flush = false;
}

/* Sends len bytes to c's socket: at once what it takes when nothing is queued before them (most
 * answers: no copy, no write request, no callback on a later loop turn), the rest queued; what
 * went at once is added to *sent_now. A failed send is left to the queued write, whose callback
 * ends the connection as for any write error. */
static int http__send(struct http_conn *c, const char *data, size_t len, size_t *sent_now)
{
    size_t sent = 0;
    if (c->write_queued == 0) {
        uv_buf_t now = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &now, 1);
        if (n > 0)
            sent = (size_t)n;
    }
    *sent_now += sent;
    if (sent == len)
        return 0;
    struct http_write *hw = xmalloc(sizeof *hw + (len - sent));
    hw->conn = c;
    hw->len = len - sent;
    memcpy(hw->data, data + sent, len - sent);
    uv_buf_t b = uv_buf_init(hw->data, (unsigned)hw->len);
    if (uv_write(&hw->req, (uv_stream_t *)&c->tcp, &b, 1, http__write_done) < 0) {
        free(hw);
        return -EPIPE;
    }
    c->write_queued += hw->len;
    return 0;
}

/* Sends what TLS has for the peer (records, alerts). */
static int http__tls_send(struct http_conn *c, size_t *sent_now)
{
    const char *out;
    size_t n = tls_conn_output(c->tls, &out);
    if (n == 0)
        return 0;
    int rc = http__send(c, out, n, sent_now);
    tls_conn_output_consumed(c->tls, n);
    return rc;
}

/* Sends what c was given this turn, through TLS on an HTTPS connection. */
static void http__flush(struct http_conn *c)
{
    http__flush_remove(c);
    if (c->closing || c->out.len == 0)
        return;
    size_t sent = 0;
    int rc;
    if (c->tls)
        rc =
            tls_conn_write(c->tls, c->out.data, c->out.len) < 0 ? -EPIPE : http__tls_send(c, &sent);
    else
        rc = http__send(c, c->out.data, c->out.len, &sent);
    /* kept for the next turn unless one large answer grew it: idle connections hold little */
    if (c->out.cap > HTTP_KEEP_BYTES)
        buf_free(&c->out);
    else
        buf_reset(&c->out);
    c->write_pending = c->write_queued;
    if (rc < 0) {
        http__conn_close(c);
        return;
    }
    if (sent)
        http__after_write(c);
}

/* A connection closed on purpose in the turn it was written to (a stream ended as the server
 * stops, an answer followed by a close): what the socket takes of it goes now, as a send made
 * at once would have. Nothing is queued: the handle is about to close. */
static void http__flush_last(struct http_conn *c)
{
    if (c->out.len == 0 || c->write_queued)
        return;
    const char *data = c->out.data;
    size_t len = c->out.len;
    if (c->tls) {
        if (tls_conn_write(c->tls, c->out.data, c->out.len) < 0)
            return;
        len = tls_conn_output(c->tls, &data);
    }
    uv_buf_t now = uv_buf_init((char *)data, (unsigned)len);
    (void)uv_try_write((uv_stream_t *)&c->tcp, &now, 1);
}

/* What TLS itself has to send now (the handshake, alerts, close_notify), apart from answers. */
static void http__tls_flush(struct http_conn *c)
{
    size_t sent = 0;
    if (c->closing)
        return;
    if (http__tls_send(c, &sent) < 0)
        http__conn_close(c);
    c->write_pending = c->write_queued + c->out.len;
}

static void http__flush_all(struct http_server *s)
{
    while (s->flush_head)
        http__flush(s->flush_head);
    uv_prepare_stop(&s->flush_prepare);
    uv_check_stop(&s->flush_check);
}

static void http__on_flush_prepare(uv_prepare_t *h)
{
    http__flush_all(h->data);
}

static void http__on_flush_check(uv_check_t *h)
{
    http__flush_all(h->data);
}

/* Bytes for c's client. They go out at the end of this loop turn (before the loop next waits),
 * together with whatever else is written to c meanwhile: the answers of the pipelined requests
 * that one fsync made durable leave in one send. */
static int http__write(struct http_conn *c, const void *data, size_t len)
{
    if (!c || c->closing)
        return -EPIPE;
    if (len == 0)
        return 0;
    buf_append(&c->out, data, len);
    c->write_pending += len;
    if (!c->in_flush) {
        struct http_server *s = c->server;
        c->in_flush = true;
        c->flush_prev = NULL;
        c->flush_next = s->flush_head;
        if (s->flush_head)
            s->flush_head->flush_prev = c;
        s->flush_head = c;
        if (s->timers_open && !uv_is_active((uv_handle_t *)&s->flush_check)) {
            uv_prepare_start(&s->flush_prepare, http__on_flush_prepare);
            uv_check_start(&s->flush_check, http__on_flush_check);
        }
    }
    return 0;
}

/* A request's bytes: to the socket when it is the oldest unanswered on its connection, else
 * held until the ones ahead of it are answered (answers go out in the order of requests). */
static int http__req_write(struct http_request *req, const void *data, size_t len)
{
    struct http_conn *c = req->conn;
    if (!c || c->closing)
        return -EPIPE;
    if (c->first == req || !c->first)
        return http__write(c, data, len);
    buf_append(&req->held, data, len);
    c->held_bytes += len;
    return 0;
}

/* Whether the parser may go on to the next request on c. */
static bool http__may_parse(const struct http_conn *c)
{
    if (c->closing || c->close_after_write || c->parse_failed || c->write_blocked ||
        c->upgrade_fn || c->lingering)
        return false;
    if (c->inflight >= HTTP_PIPELINE_MAX ||
        c->write_pending + c->held_bytes > HTTP_WRITE_PENDING_MAX)
        return false;
    return !c->last || (c->last->keep_alive && !c->last->no_pipeline);
}

/* Lets the parser go on: after a pause, or after an upgrade request that was answered without
 * an upgrade (what follows it is HTTP again). */
static void http__parser_resume(struct http_conn *c)
{
    if (llhttp_get_errno(&c->parser) == HPE_PAUSED_UPGRADE)
        llhttp_resume_after_upgrade(&c->parser);
    else
        llhttp_resume(&c->parser);
}

/* The parser goes on with what waits in pending, when it stopped and may go on now. */
static void http__continue(struct http_conn *c)
{
    if (!c->parse_paused || c->in_execute || !http__may_parse(c))
        return;
    c->parse_paused = false;
    http__parser_resume(c);
    http__process_pending(c);
}

/* A parsed request goes to the owner: it joins the connection's queue of requests handled. */
static void http__enqueue(struct http_conn *c, struct http_request *req)
{
    if (c->req == req)
        c->req = NULL;
    req->next_in_conn = NULL;
    if (c->last)
        c->last->next_in_conn = req;
    else
        c->first = req;
    c->last = req;
    c->inflight++;
}

/* Takes req out of c's queue, wherever it is in it. */
static void http__unlink(struct http_conn *c, struct http_request *req)
{
    struct http_request *prev = NULL;
    for (struct http_request *r = c->first; r; prev = r, r = r->next_in_conn) {
        if (r != req)
            continue;
        if (prev)
            prev->next_in_conn = r->next_in_conn;
        else
            c->first = r->next_in_conn;
        if (c->last == r)
            c->last = prev;
        c->inflight--;
        r->next_in_conn = NULL;
        return;
    }
}

static void http__head(struct http_request *req, struct buf *out, int status,
                       const char *content_type, long long content_length)
{
    /* pieces, not printf: every answer goes through here (3% of skiffd's CPU per publish) */
    buf_puts(out, "HTTP/1.1 ");
    buf_put_uint(out, status > 0 ? (unsigned)status : 0);
    buf_putc(out, ' ');
    buf_puts(out, http_status_reason(status));
    buf_puts(out, "\r\n");
    if (content_type) {
        buf_puts(out, "Content-Type: ");
        buf_puts(out, content_type);
        buf_puts(out, "\r\n");
    }
    if (content_length >= 0) {
        buf_puts(out, "Content-Length: ");
        buf_put_uint(out, (unsigned long long)content_length);
        buf_puts(out, "\r\n");
    } else if (content_length == -1) {
        buf_puts(out, "Transfer-Encoding: chunked\r\n");
    }
    for (size_t i = 0; i < req->nresp_headers; i++) {
        buf_puts(out, req->resp_headers[i].name);
        buf_puts(out, ": ");
        buf_puts(out, req->resp_headers[i].value);
        buf_puts(out, "\r\n");
    }
    buf_puts(out, req->keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
    buf_puts(out, "\r\n");
}

static void http__request_free(struct http_request *req)
{
    struct http_server *s = req->server;
    if (s->cfg.on_free)
        s->cfg.on_free(req, s->cfg.ctx);
    free(req->target);
    free(req->path);
    free(req->query);
    free(req->segs);
    free(req->headers);
    free(req->head_text);
    for (size_t i = 0; i < req->nresp_headers; i++) {
        free(req->resp_headers[i].name);
        free(req->resp_headers[i].value);
    }
    free(req->resp_headers);
    buf_free(&req->body);
    buf_free(&req->held);
    s->body_memory -= req->body_memory;
    if (req->body_fd >= 0)
        close(req->body_fd);
    if (req->body_path) {
        unlink(req->body_path);
        free(req->body_path);
    }
    free(req->early_message);
    free(req->early_type);
    free(req);
}

static void http__drain(struct http_conn *c);

/* The response is queued (or held): release the request and go on with the connection, in
 * the order of its requests. */
static void http__finish(struct http_request *req)
{
    struct http_conn *c = req->conn;
    req->state = HTTP_REQ_DONE;
    if (!c) {
        http__request_free(req);
        return;
    }
    if (c->req == req) /* answered while parsing (never handed over) */
        c->req = NULL;
    if (c->closing) {
        http__unlink(c, req);
        http__request_free(req);
    } else if (c->first == req) {
        http__drain(c);
    } else if (!c->first) {
        http__request_free(req);
    }
    /* else held, and freed by the drain once the ones ahead of it are finished */
}

/* Frees the finished requests at the head of c's queue, sends the held answers behind them
 * in order, and goes on with the connection. */
static void http__drain(struct http_conn *c)
{
    while (c->first && c->first->state == HTTP_REQ_DONE) {
        struct http_request *req = c->first;
        http__unlink(c, req);
        bool keep = req->keep_alive;
        http__request_free(req);
        if (c->closing)
            return;
        c->active_ms = time_mono_ms();
        c->served = true;
        if (!keep) {
            c->close_after_write = true;
            if (c->write_pending == 0)
                http__close_or_linger(c);
            return;
        }
        struct http_request *next = c->first;
        if (next && next->held.len) {
            c->held_bytes -= next->held.len;
            http__write(c, next->held.data, next->held.len);
            buf_free(&next->held);
            if (c->closing)
                return;
        }
    }
    if (c->first) {
        if (c->first == c->upgrade_req)
            http__upgrade_maybe(c);
    } else if (c->parse_failed) {
        http__write(c, c->trailer.data, c->trailer.len);
        buf_free(&c->trailer);
        c->close_after_write = true;
        if (c->write_pending == 0)
            http__close_or_linger(c);
        return;
    } else if (!c->req || !c->req->path) {
        /* waiting for a head again (one may be under way: it keeps its deadline), so the
         * first to close when room is needed */
        int64_t head_start = c->head_start_ms;
        http__idle_add(c);
        c->head_start_ms = head_start;
    }
    if (c->write_pending > HTTP_WRITE_PENDING_MAX)
        c->write_blocked = true; /* http__write_done goes on once the client reads */
    http__continue(c);
}

void http_respond_header(struct http_request *req, const char *name, const char *value)
{
    req->resp_headers =
        xrealloc(req->resp_headers, (req->nresp_headers + 1) * sizeof *req->resp_headers);
    req->resp_headers[req->nresp_headers].name = xstrdup(name);
    req->resp_headers[req->nresp_headers].value = xstrdup(value);
    req->nresp_headers++;
}

void http_respond(struct http_request *req, int status, const char *content_type, const void *body,
                  size_t len)
{
    if (req->state == HTTP_REQ_DONE || req->state == HTTP_REQ_STREAMING)
        return;
    req->status = status;
    if (req->conn && !req->conn->closing) {
        struct buf out = {0};
        bool head = !strcmp(req->method, "HEAD");
        bool no_body = status == 204 || status == 304;
        /* 204 and 304 carry neither a length nor a body (-2) */
        http__head(req, &out, status, no_body ? NULL : content_type, no_body ? -2 : (long long)len);
        if (!head && !no_body && len)
            buf_append(&out, body, len);
        http__req_write(req, out.data, out.len);
        buf_free(&out);
    }
    http__finish(req);
}

void http_respond_verror(struct http_request *req, int err, const char *fmt, va_list ap)
{
    struct buf msg = {0};
    if (fmt)
        buf_vprintf(&msg, fmt, ap);
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", skiff_err_name(err), "message",
                             msg.data ? msg.data : skiff_strerror(err));
    buf_free(&msg);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    size_t len = text ? strlen(text) : 0;
    if (text) {
        text = xrealloc(text, len + 2);
        text[len++] = '\n';
    }
    http_respond(req, skiff_err_http_status(err), "application/json", text, len);
    free(text);
}

void http_respond_error(struct http_request *req, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    http_respond_verror(req, err, fmt, ap);
    va_end(ap);
}

void http_stream_begin(struct http_request *req, int status, const char *content_type)
{
    if (req->state != HTTP_REQ_HANDLING)
        return;
    req->state = HTTP_REQ_STREAMING;
    req->status = status;
    http_respond_header(req, "Cache-Control", "no-store");
    http_respond_header(req, "X-Content-Type-Options", "nosniff");
    if (req->conn && !req->conn->closing) {
        struct buf out = {0};
        http__head(req, &out, status, content_type, -1);
        http__req_write(req, out.data, out.len);
        buf_free(&out);
    }
}

int http_stream_write(struct http_request *req, const void *data, size_t len)
{
    if (req->state != HTTP_REQ_STREAMING || !req->conn || req->conn->closing || req->aborted)
        return -EPIPE;
    if (len == 0)
        return 0;
    struct buf out = {0};
    buf_printf(&out, "%zx\r\n", len);
    buf_append(&out, data, len);
    buf_puts(&out, "\r\n");
    int rc = http__req_write(req, out.data, out.len);
    buf_free(&out);
    return rc;
}

size_t http_stream_pending(const struct http_request *req)
{
    if (!req->conn)
        return 0;
    return req->conn->first == req ? req->conn->write_pending : req->held.len;
}

void http_stream_end(struct http_request *req)
{
    if (req->state == HTTP_REQ_DONE)
        return;
    if (req->state == HTTP_REQ_HANDLING) {
        http_respond(req, 204, NULL, NULL, 0);
        return;
    }
    if (req->conn && !req->conn->closing)
        http__req_write(req, "0\r\n\r\n", 5);
    http__finish(req);
}

/* ---- request accessors -------------------------------------------------------------------- */

const char *http_request_header(const struct http_request *req, const char *name)
{
    return http_header_find(req->headers, req->nheaders, name);
}

char *http_request_query(const struct http_request *req, const char *name)
{
    if (!req->query)
        return NULL;
    const char *p = req->query;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t klen = eq ? (size_t)(eq - p) : len;
        char *key = http_percent_decode(p, klen, HTTP_DECODE_FORM);
        bool match = key && !strcmp(key, name);
        free(key);
        if (match)
            return eq ? http_percent_decode(eq + 1, len - klen - 1, HTTP_DECODE_FORM) : xstrdup("");
        p += len;
        if (*p == '&')
            p++;
    }
    return NULL;
}

const char *http_request_peer(const struct http_request *req)
{
    return req->conn ? req->conn->peer : "";
}

void http_request_on_abort(struct http_request *req, void (*fn)(void *ctx), void *ctx)
{
    req->abort_fn = fn;
    req->abort_ctx = ctx;
}

void http_request_refuse(struct http_request *req, enum skiff_err err, const char *fmt, ...)
{
    if (req->early_err)
        return;
    req->early_err = err;
    struct buf msg = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);
    req->early_message = buf_steal(&msg);
}

void http_request_refuse_with(struct http_request *req, int status, const char *content_type,
                              const char *body)
{
    if (req->early_err)
        return;
    req->early_err = SKIFF_E_BAD_REQUEST; /* a refusal is set; the answer is the owner's */
    req->early_status = status;
    req->early_type = xstrdup(content_type ? content_type : "text/plain");
    req->early_message = xstrdup(body ? body : "");
}

/* ---- parsing ------------------------------------------------------------------------------ */

/* Hands the connection over once the 101 is out and the parser is not running: a descriptor
 * of the socket for the taker (over HTTPS, of a relay's socketpair), then the request ends and the
 * server forgets the connection (closing its own descriptor only). */
static void http__upgrade_maybe(struct http_conn *c)
{
    if (!c->upgrade_fn || c->first != c->upgrade_req || c->in_execute || c->write_pending > 0 ||
        c->closing)
        return;
    void (*fn)(void *, int, const char *, size_t) = c->upgrade_fn;
    c->upgrade_fn = NULL;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
    uv_os_fd_t sock = -1;
    int fd = uv_fileno((uv_handle_t *)&c->tcp, &sock) == 0 ? fcntl(sock, F_DUPFD_CLOEXEC, 3) : -1;
    if (c->tls && fd >= 0) { /* over HTTPS the taker gets plaintext, through a relay */
        fd = tls_relay_start(c->server->loop, fd, c->tls);
        c->tls = NULL;
    }
    struct buf early = c->pending;
    memset(&c->pending, 0, sizeof c->pending);
    fn(c->upgrade_ctx, fd, early.data, early.len);
    buf_free(&early);
    struct http_request *req = c->upgrade_req;
    c->upgrade_req = NULL;
    http__unlink(c, req);
    req->conn = NULL;
    req->state = HTTP_REQ_DONE;
    http__request_free(req);
    http__conn_close(c); /* requests pipelined after it, if any, are aborted */
}

void http_upgrade(struct http_request *req, const char *protocol, http_upgrade_fn taken, void *ctx)
{
    struct http_conn *c = req->conn;
    req->status = 101;
    if (!c || c->closing) {
        taken(ctx, -1, NULL, 0);
        req->state = HTTP_REQ_DONE;
        http__request_free(req);
        return;
    }
    req->state = HTTP_REQ_STREAMING; /* what the client sends meanwhile waits in pending */
    struct buf head = {0};
    buf_printf(&head, "HTTP/1.1 101 %s\r\nConnection: Upgrade\r\nUpgrade: %s\r\n",
               http_status_reason(101), protocol);
    for (size_t i = 0; i < req->nresp_headers; i++)
        buf_printf(&head, "%s: %s\r\n", req->resp_headers[i].name, req->resp_headers[i].value);
    buf_puts(&head, "\r\n");
    c->upgrade_fn = taken;
    c->upgrade_ctx = ctx;
    c->upgrade_req = req;
    http__req_write(req, head.data, head.len);
    buf_free(&head);
    http__upgrade_maybe(c);
}

char **http_path_split(const char *path, size_t *n, bool decode)
{
    /* one block: the pointers, then the segments (decoding never makes one longer) */
    size_t count = 0, bytes = 0;
    for (const char *p = path; *p;) {
        while (*p == '/')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, "/");
        count++;
        bytes += len + 1;
        p += len;
    }
    char **segs = xmalloc((count + 1) * sizeof *segs + bytes);
    char *out = (char *)(segs + count + 1);
    size_t i = 0;
    for (const char *p = path; i < count;) {
        while (*p == '/')
            p++;
        size_t len = strcspn(p, "/");
        if (!decode) {
            memcpy(out, p, len);
            out[len] = '\0';
        } else if (http_percent_decode_into(p, len, 0, out) < 0) {
            free(segs);
            return NULL;
        }
        segs[i++] = out;
        out += strlen(out) + 1;
        p += len;
    }
    segs[count] = NULL;
    *n = count;
    return segs;
}

static int http__on_message_begin(llhttp_t *p)
{
    struct http_conn *c = p->data;
    struct http_server *s = c->server;
    struct http_request *req = xcalloc(1, s->cfg.request_size);
    req->server = s;
    req->conn = c;
    req->listener = c->listener;
    req->body_fd = -1;
    req->state = HTTP_REQ_PARSING;
    c->req = req;
    buf_reset(&c->url);
    buf_reset(&c->hfield);
    buf_reset(&c->hvalue);
    buf_reset(&c->hstore);
    c->nhoff = 0;
    c->in_value = false;
    c->header_bytes = 0;
    if (!c->head_start_ms)
        c->head_start_ms = time_mono_ms();
    return 0;
}

static int http__on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    if (c->url.len + len > HTTP_MAX_HEAD_BYTES)
        return -1;
    buf_append(&c->url, at, len);
    return 0;
}

static void http__push_header(struct http_conn *c)
{
    struct http_request *req = c->req;
    if (!c->hfield.len)
        return;
    if (c->nhoff / 2 < HTTP_MAX_HEADERS) {
        if (c->nhoff + 2 > c->hoff_cap) {
            c->hoff_cap = c->hoff_cap ? 2 * c->hoff_cap : 32;
            c->hoff = xrealloc(c->hoff, c->hoff_cap * sizeof *c->hoff);
        }
        c->hoff[c->nhoff++] = c->hstore.len;
        buf_append(&c->hstore, c->hfield.data, c->hfield.len + 1);
        c->hoff[c->nhoff++] = c->hstore.len;
        if (c->hvalue.data)
            buf_append(&c->hstore, c->hvalue.data, c->hvalue.len + 1);
        else
            buf_append(&c->hstore, "", 1);
    } else {
        req->headers_dropped = true;
    }
    buf_reset(&c->hfield);
    buf_reset(&c->hvalue);
}

static int http__on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    c->header_bytes += len;
    if (c->header_bytes > HTTP_MAX_HEAD_BYTES)
        return -1;
    if (c->in_value) {
        http__push_header(c);
        c->in_value = false;
    }
    buf_append(&c->hfield, at, len);
    return 0;
}

static int http__on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    c->header_bytes += len;
    if (c->header_bytes > HTTP_MAX_HEAD_BYTES)
        return -1;
    c->in_value = true;
    buf_append(&c->hvalue, at, len);
    if (!c->hvalue.data)
        buf_puts(&c->hvalue, "");
    return 0;
}

/* After the owner's on_head: the body's limits and where it goes. */
static void http__body_plan(struct http_server *s, struct http_request *req, llhttp_t *p)
{
    bool length_known = p->flags & F_CONTENT_LENGTH;
    if (length_known && p->content_length > req->body_limit)
        http_request_refuse(
            req, SKIFF_E_TOO_LARGE, "the body is %llu bytes, more than the limit of %llu bytes%s",
            (unsigned long long)p->content_length, (unsigned long long)req->body_limit,
            req->too_large_hint ? req->too_large_hint : "");
    else if (!req->body_to_file && length_known &&
             s->body_memory + p->content_length > HTTP_BODY_MEMORY_BUDGET)
        http_request_refuse(req, SKIFF_E_BUSY,
                            "%s is receiving too many request bodies at once: retry in a moment",
                            s->name);
    else if (req->body_to_file) {
        req->body_path = xasprintf("%s/upload-%d-%u", s->tmp_dir, (int)getpid(), ++s->tmp_seq);
        req->body_fd = open(req->body_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (req->body_fd < 0)
            http_request_refuse(req, SKIFF_E_INTERNAL, "cannot store the upload: %s",
                                skiff_strerror(-errno));
    }
}

static int http__on_headers_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    struct http_request *req = c->req;
    struct http_server *s = c->server;
    if (c->in_value)
        http__push_header(c);
    c->in_value = false;
    /* the headers, in two allocations whatever their number */
    req->nheaders = c->nhoff / 2;
    if (req->nheaders) {
        req->head_text = xmalloc(c->hstore.len);
        memcpy(req->head_text, c->hstore.data, c->hstore.len);
        req->headers = xmalloc(req->nheaders * sizeof *req->headers);
        for (size_t i = 0; i < req->nheaders; i++) {
            req->headers[i].name = req->head_text + c->hoff[2 * i];
            req->headers[i].value = req->head_text + c->hoff[2 * i + 1];
        }
    }
    if (c->hstore.cap > HTTP_KEEP_BYTES)
        buf_free(&c->hstore);
    /* busy with a request from here: no longer the first to close when room is needed */
    http__idle_remove(c);
    c->head_start_ms = 0;
    snprintf(req->method, sizeof req->method, "%s", llhttp_method_name(p->method));
    req->keep_alive = llhttp_should_keep_alive(p) != 0;

    const char *url = c->url.data ? c->url.data : "/";
    const char *q = strchr(url, '?');
    size_t plen = q ? (size_t)(q - url) : strlen(url);
    req->target = xstrdup(url);
    req->query = q ? xstrdup(q + 1) : NULL;
    char *raw_path = xstrndup(url, plen);
    req->path = http_percent_decode(raw_path, plen, 0);
    req->segs = req->path ? http_path_split(raw_path, &req->nsegs, true) : NULL;
    free(raw_path);
    if (!req->path || !req->segs) {
        if (!req->path)
            req->path = xstrdup("/");
        if (!req->segs)
            req->segs = xcalloc(1, sizeof *req->segs);
        http_request_refuse(
            req, SKIFF_E_BAD_VALUE,
            "the request path holds an escaped NUL byte (%%00): names never contain one");
    }
    /* answered rather than read without the headers past the limit, which may be the ones
     * that matter (ce-* attributes, Authorization) */
    if (req->headers_dropped)
        http_request_refuse(req, SKIFF_E_HEAD_TOO_LARGE,
                            "the request has more than %d headers: send fewer", HTTP_MAX_HEADERS);
    const char *expect = http_request_header(req, "expect");
    req->expect_continue = expect && !strcasecmp(expect, "100-continue");
    req->no_pipeline = http_request_header(req, "upgrade") || p->method == HTTP_CONNECT;

    if (!req->early_err && s->cfg.on_head)
        s->cfg.on_head(req, s->cfg.ctx);
    if (!req->early_err)
        http__body_plan(s, req, p);
    if (req->early_err) {
        /* decided from the head: answered now, whatever body was announced is not read */
        http__answer_now(c, req,
                         (p->flags & F_CHUNKED) ||
                             ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0));
        return HPE_PAUSED;
    }
    /* pipelined behind unanswered requests, a 100 would come before their answers: the
     * client sends its body after its own wait instead */
    if (req->expect_continue && !c->first) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        http__write(c, cont, sizeof cont - 1);
    }
    return 0;
}

static int http__on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_conn *c = p->data;
    struct http_request *req = c->req;
    struct http_server *s = c->server;
    req->body_size += len;
    if (req->early_err)
        return 0;
    if (req->body_size > req->body_limit) {
        http_request_refuse(req, SKIFF_E_TOO_LARGE,
                            "the body is larger than the limit of %llu bytes",
                            (unsigned long long)req->body_limit);
        http__answer_now(c, req, true);
        return HPE_PAUSED;
    }
    if (req->body_fd >= 0) {
        while (len > 0) {
            ssize_t w = write(req->body_fd, at, len);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                http_request_refuse(req, SKIFF_E_INTERNAL, "cannot store the upload: %s",
                                    skiff_strerror(-errno));
                http__answer_now(c, req, true);
                return HPE_PAUSED;
            }
            at += w;
            len -= (size_t)w;
        }
    } else {
        if (s->body_memory + len > HTTP_BODY_MEMORY_BUDGET) {
            http_request_refuse(
                req, SKIFF_E_BUSY,
                "%s is receiving too many request bodies at once: retry in a moment", s->name);
            http__answer_now(c, req, true);
            return HPE_PAUSED;
        }
        buf_append(&req->body, at, len);
        req->body_memory += len;
        s->body_memory += len;
    }
    return 0;
}

static void http__dispatch(struct http_request *req)
{
    if (req->early_status) {
        http_respond(req, req->early_status, req->early_type, req->early_message,
                     strlen(req->early_message));
        return;
    }
    if (req->early_err) {
        http_respond_error(req, req->early_err, "%s", req->early_message);
        return;
    }
    if (req->body_fd >= 0) {
        close(req->body_fd);
        req->body_fd = -1;
    }
    struct http_server *s = req->server;
    if (s->cfg.on_request)
        s->cfg.on_request(req, s->cfg.ctx);
    else
        http_respond_error(req, SKIFF_E_NOT_FOUND, NULL);
}

/* Answers an error found before the body was read, at once, and ends the connection after
 * the answer: lingering (reading and dropping for a while) when a body may still come. */
static void http__answer_now(struct http_conn *c, struct http_request *req, bool body_follows)
{
    req->keep_alive = false;
    c->linger_wanted = body_follows;
    req->state = HTTP_REQ_HANDLING;
    http__enqueue(c, req);
    http__dispatch(req);
}

static int http__on_message_complete(llhttp_t *p)
{
    struct http_conn *c = p->data;
    struct http_request *req = c->req;
    req->state = HTTP_REQ_HANDLING;
    bool upgrade = req->no_pipeline; /* req may be answered and freed by the dispatch */
    http__enqueue(c, req);
    http__dispatch(req);
    /* on with the next request pipelined, unless this one (or the queue) says wait. After an
     * upgrade request always a pause, answered or not: going on from here, llhttp would take
     * what follows for the new protocol (HPE_PAUSED_UPGRADE); resumed, it reads HTTP again. */
    if (upgrade)
        return HPE_PAUSED;
    return http__may_parse(c) ? 0 : HPE_PAUSED;
}

static void http__settings_fill(llhttp_settings_t *st)
{
    st->on_message_begin = http__on_message_begin;
    st->on_url = http__on_url;
    st->on_header_field = http__on_header_field;
    st->on_header_value = http__on_header_value;
    st->on_headers_complete = http__on_headers_complete;
    st->on_body = http__on_body;
    st->on_message_complete = http__on_message_complete;
}

/* ---- connections -------------------------------------------------------------------------- */

static void http__conn_closed(uv_handle_t *h)
{
    struct http_conn *c = h->data;
    struct http_server *s = c->server;
    buf_free(&c->url);
    buf_free(&c->hfield);
    buf_free(&c->hvalue);
    buf_free(&c->hstore);
    free(c->hoff);
    buf_free(&c->pending);
    buf_free(&c->trailer);
    buf_free(&c->out);
    tls_conn_free(c->tls);
    free(c);
    http__handle_closed(s);
}

static void http__conn_close(struct http_conn *c)
{
    if (c->closing)
        return;
    if (c->upgrade_fn) {
        /* gone before it was handed over: the taker hears so, the request is over */
        void (*fn)(void *, int, const char *, size_t) = c->upgrade_fn;
        c->upgrade_fn = NULL;
        fn(c->upgrade_ctx, -1, NULL, 0);
        if (c->upgrade_req)
            c->upgrade_req->state = HTTP_REQ_DONE; /* freed with the queue below */
        c->upgrade_req = NULL;
    }
    struct http_server *s = c->server;
    c->closing = true;
    http__flush_last(c);
    http__flush_remove(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    http__idle_remove(c);
    s->nconns--;
    http__client_put(s, c->client);
    c->client = NULL;
    struct http_request *req = c->req;
    c->req = NULL;
    if (req) {
        req->conn = NULL;
        http__request_free(req); /* still being parsed: the owner never had it */
    }
    /* the requests handed over: answered ones are freed, the others are the owner's to end (an
     * abort may end others of the queue: http__finish takes them out of it) */
    while ((req = c->first)) {
        http__unlink(c, req);
        req->conn = NULL;
        if (req->state == HTTP_REQ_DONE) {
            http__request_free(req);
        } else {
            req->aborted = true;
            if (req->abort_fn) {
                void (*fn)(void *) = req->abort_fn;
                req->abort_fn = NULL;
                fn(req->abort_ctx);
            }
        }
    }
    uv_close((uv_handle_t *)&c->tcp, http__conn_closed);
}

static void http__bad_request(struct http_conn *c, const char *why)
{
    enum skiff_err err = SKIFF_E_BAD_REQUEST;
    char body[512];
    int n = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s: %s\"}}\n",
                     skiff_err_name(err), skiff_strerror(err), why);
    char head[256];
    int status = skiff_err_http_status(err);
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nConnection: close\r\n\r\n",
                     status, http_status_reason(status), n);
    c->linger_wanted = true; /* the rest of what it sends is not read */
    if (c->req && c->req->state == HTTP_REQ_PARSING) {
        http__request_free(c->req);
        c->req = NULL;
    }
    if (c->first) {
        /* after the answers of the requests before it */
        c->parse_failed = true;
        buf_append(&c->trailer, head, (size_t)h);
        buf_append(&c->trailer, body, (size_t)n);
        return;
    }
    http__write(c, head, (size_t)h);
    http__write(c, body, (size_t)n);
    c->close_after_write = true;
    if (c->write_pending == 0)
        http__close_or_linger(c);
}

static void http__on_shutdown(uv_shutdown_t *sr, int status)
{
    struct http_conn *c = sr->data;
    if (status < 0 && !c->closing)
        http__conn_close(c);
}

/* Closes c once its answer is out; when it was answered before its body was read, first
 * sends FIN and reads and drops what still comes for a while, so that the close does not
 * reset the connection before the client has read the answer. */
static void http__close_or_linger(struct http_conn *c)
{
    if (c->closing || c->lingering)
        return;
    if (!c->linger_wanted) {
        http__conn_close(c);
        return;
    }
    c->lingering = true;
    c->linger_until_ms = time_mono_ms() + HTTP_LINGER_MS;
    http__idle_add_front(c);
    c->shutdown.data = c;
    if (c->tls) {
        tls_conn_close_notify(c->tls);
        http__tls_flush(c);
    }
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, http__on_shutdown) < 0) {
        http__conn_close(c);
        return;
    }
    if (!c->reading) {
        c->reading = true;
        http__start_reading(c);
    }
}

/* Feeds bytes to the parser; whatever arrives after a complete request waits in pending. */
static void http__feed(struct http_conn *c, const char *data, size_t len)
{
    enum llhttp_errno e;
    for (;;) {
        c->in_execute = true;
        e = llhttp_execute(&c->parser, data, len);
        c->in_execute = false;
        if (e == HPE_OK)
            return;
        if (e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE)
            break;
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t rest = pos && pos >= data && pos < data + len ? (size_t)(data + len - pos) : 0;
        if (http__may_parse(c)) {
            /* the pause is over already (answered at once): go on with the pipelined rest */
            http__parser_resume(c);
            if (!rest)
                return;
            data = pos;
            len = rest;
            continue;
        }
        /* pending may be what we are parsing: copy out first */
        struct buf keep = {0};
        if (rest)
            buf_append(&keep, pos, rest);
        buf_free(&c->pending);
        c->pending = keep;
        c->parse_paused = true;
        http__upgrade_maybe(c);
        return;
    }
    const char *reason = llhttp_get_error_reason(&c->parser);
    char why[200];
    snprintf(why, sizeof why, "%s", reason ? reason : llhttp_errno_name(e));
    for (char *q = why; *q; q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20)
            *q = ' ';
    http__bad_request(c, why);
}

static void http__process_pending(struct http_conn *c)
{
    if (!c->reading && !c->closing) {
        c->reading = true;
        http__start_reading(c);
    }
    if (c->pending.len == 0)
        return;
    struct buf data = c->pending;
    memset(&c->pending, 0, sizeof c->pending);
    http__feed(c, data.data, data.len);
    buf_free(&data);
}

static void http__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct http_conn *c = h->data;
    *b = uv_buf_init(c->server->read_buf, sizeof c->server->read_buf);
}

/* Plaintext from the client: parsed now, or kept while requests are being handled. */
static void http__on_plain(struct http_conn *c, const char *data, size_t n)
{
    if (n == 0 || c->closing || c->close_after_write || c->parse_failed)
        return;
    if (c->parse_paused || !http__may_parse(c)) {
        /* the parser waits for requests being handled: keep what comes for later */
        c->parse_paused = true;
        buf_append(&c->pending, data, n);
        if (c->pending.len > HTTP_PENDING_MAX && c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = false;
        }
        return;
    }
    http__feed(c, data, n);
}

/* Ciphertext from an HTTPS client: the handshake, then each record's plaintext. */
static void http__on_tls(struct http_conn *c, const char *data, size_t n)
{
    struct http_server *s = c->server;
    tls_conn_feed(c->tls, data, n);
    if (!tls_conn_established(c->tls)) {
        char err[256];
        int r = tls_conn_handshake(c->tls, err, sizeof err);
        http__tls_flush(c);
        if (r < 0) {
            log_debug("%s: TLS from %s: %s", s->name, c->peer, err);
            http__conn_close(c);
        }
        if (r <= 0)
            return;
    }
    for (;;) {
        if (c->closing)
            return;
        long got = tls_conn_read(c->tls, s->tls_plain, sizeof s->tls_plain);
        if (got == 0)
            break;
        if (got < 0) { /* close_notify, a renegotiation attempt, a bad record */
            http__tls_flush(c);
            http__conn_close(c);
            return;
        }
        http__on_plain(c, s->tls_plain, (size_t)got);
    }
    if (!c->closing)
        http__tls_flush(c);
}

static void http__on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct http_conn *c = st->data;
    c->active_ms = time_mono_ms();
    if (n < 0) {
        http__conn_close(c);
        return;
    }
    if (c->lingering) {
        c->linger_bytes += (uint64_t)n;
        if (c->linger_bytes > HTTP_LINGER_BYTES)
            http__conn_close(c);
        return;
    }
    if (c->tls && n > 0)
        http__on_tls(c, b->base, (size_t)n);
    else
        http__on_plain(c, b->base, (size_t)n);
}

static void http__start_reading(struct http_conn *c)
{
    uv_read_start((uv_stream_t *)&c->tcp, http__alloc, http__on_read);
}

/* Takes over an accepted socket, once there is room for it under the caps. */
static void http__conn_start(struct http_server *s, struct http_listener *l, int fd,
                             const struct sockaddr_storage *ss)
{
    unsigned char key[16];
    http__client_key(ss, key);
    struct http_client *cl = http__client_get(s, key);
    if (!http__admit(s, cl)) {
        /* every connection over the cap is busy with a request: this one waits no longer */
        http__client_put(s, cl);
        close(fd);
        return;
    }
    struct http_conn *c = xcalloc(1, sizeof *c);
    c->server = s;
    c->listener = l->tag;
    if (l->tls && !(c->tls = tls_conn_new(l->tls))) {
        http__client_put(s, cl);
        free(c);
        close(fd);
        return;
    }
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    s->handles_open++;
    if (uv_tcp_open(&c->tcp, fd) < 0) {
        close(fd);
        http__client_put(s, cl);
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, http__conn_closed);
        return;
    }
    c->client = cl;
    s->nconns++;
    uv_tcp_nodelay(&c->tcp, 1);
    char ip[48] = "";
    if (ss->ss_family == AF_INET) {
        uv_ip4_name((const struct sockaddr_in *)ss, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "%s:%d", ip,
                 ntohs(((const struct sockaddr_in *)ss)->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)ss, ip, sizeof ip);
        snprintf(c->peer, sizeof c->peer, "[%s]:%d", ip,
                 ntohs(((const struct sockaddr_in6 *)ss)->sin6_port));
    }
    http_parser_init(&c->parser, HTTP_ROLE_SERVER, http__settings_fill, c);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    c->reading = true;
    c->active_ms = time_mono_ms();
    http__idle_add(c);
    http__start_reading(c);
}

/* Stops accepting for HTTP_ACCEPT_PAUSE_MS after a resource error (the connections wait in
 * the backlog meanwhile); accepting always resumes by itself. */
static void http__pause_accepting(struct http_server *s, int err)
{
    int64_t now = time_mono_ms();
    if (now - s->last_pressure_log_ms > 10000) {
        s->last_pressure_log_ms = now;
        log_error("%s cannot accept connections now (%s): trying again every %d ms; "
                  "%u connections open",
                  s->name, skiff_strerror(-err), HTTP_ACCEPT_PAUSE_MS, s->nconns);
    }
    if (s->accept_paused || !s->timers_open)
        return;
    s->accept_paused = true;
    for (int i = 0; i < s->nlisteners; i++)
        if (s->listeners[i].open)
            uv_poll_stop(&s->listeners[i].poll);
    uv_timer_start(&s->accept_timer, http__resume_accepting, HTTP_ACCEPT_PAUSE_MS, 0);
}

static void http__resume_accepting(uv_timer_t *t)
{
    struct http_server *s = t->data;
    s->accept_paused = false;
    if (s->closing)
        return;
    if (s->reserve_fd < 0)
        s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < s->nlisteners; i++)
        if (s->listeners[i].open)
            uv_poll_start(&s->listeners[i].poll, UV_READABLE, http__on_listen_ready);
}

static void http__on_listen_ready(uv_poll_t *h, int status, int events)
{
    struct http_listener *l = h->data;
    struct http_server *s = l->server;
    (void)events;
    if (s->closing)
        return;
    if (status < 0) {
        http__pause_accepting(s, -status);
        return;
    }
    for (int n = 0; n < HTTP_ACCEPT_BATCH; n++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            http__conn_start(s, l, fd, &ss);
            continue;
        }
        int err = errno;
        if (err == EINTR || err == ECONNABORTED || err == EPROTO)
            continue;
        if (err == EAGAIN || err == EWOULDBLOCK)
            return;
        if ((err == EMFILE || err == ENFILE) && s->reserve_fd >= 0) {
            /* out of descriptors: the reserve makes room to take the waiting connection and
             * close it, so its client hears at once rather than hanging in the backlog */
            close(s->reserve_fd);
            s->reserve_fd = -1;
            int shed = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
            if (shed >= 0)
                close(shed);
            s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        http__pause_accepting(s, err);
        return;
    }
}

static void http__sweep(uv_timer_t *t)
{
    struct http_server *s = t->data;
    int64_t now = time_mono_ms();
    struct http_conn *c = s->conns;
    while (c) {
        struct http_conn *next = c->next;
        struct http_request *req = c->req;
        if (c->lingering) {
            if (now >= c->linger_until_ms)
                http__conn_close(c);
        } else if (c->first) {
            /* a request being handled or streamed is the handler's business, not a stall */
        } else if (req && req->path) {
            if (now - c->active_ms > HTTP_REQUEST_MS) /* a body that stalls */
                http__conn_close(c);
        } else if (c->head_start_ms) {
            if (now - c->head_start_ms > HTTP_HEAD_MS) /* a head that never ends */
                http__conn_close(c);
        } else if (now - c->idle_since_ms > (c->served ? HTTP_IDLE_MS : HTTP_HEAD_MS)) {
            http__conn_close(c); /* silent since it connected, or idle since its last answer */
        }
        c = next;
    }
}
