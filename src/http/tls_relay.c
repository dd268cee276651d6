/* tls_relay: see tls_relay.h. */
#include "http/tls_relay.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "common/util.h"
#include "tls/tls.h"

/* Bytes queued towards one side before reading from the other stops (until half drained):
 * neither a fast client nor a fast taker can make the relay hold more than this each way. */
#define TLS_RELAY_QUEUE_MAX (1u << 20)
#define TLS_RELAY_READ_BYTES 16384
/* Once the taker has closed, what is queued for the client gets this long to go out: a
 * client that stopped reading cannot keep the relay (or skiffd's shutdown) waiting. */
#define TLS_RELAY_LINGER_MS 5000

struct tls_relay {
    uv_tcp_t tcp;   /* the client: TLS records */
    uv_pipe_t pair; /* our end of the socketpair: plaintext for and from the taker */
    uv_timer_t linger;
    struct tls_conn *tls;
    int handles; /* open handles; the relay is freed when the last one closed */
    bool closing;
    bool ending;            /* the taker closed: close_notify queued, closing once sent */
    size_t to_tcp, to_pair; /* bytes queued on each side */
    bool tcp_reading, pair_reading;
    char read_buf[TLS_RELAY_READ_BYTES];
    char plain[TLS_RELAY_READ_BYTES];
};

struct tls_relay_write {
    uv_write_t req;
    struct tls_relay *relay;
    bool to_tcp;
    size_t len;
    char data[];
};

static void tls_relay__close(struct tls_relay *r);
static void tls_relay__on_tcp(uv_stream_t *st, ssize_t n, const uv_buf_t *b);
static void tls_relay__on_pair(uv_stream_t *st, ssize_t n, const uv_buf_t *b);

static void tls_relay__alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct tls_relay *r = h->data;
    *b = uv_buf_init(r->read_buf, sizeof r->read_buf);
}

static void tls_relay__closed(uv_handle_t *h)
{
    struct tls_relay *r = h->data;
    if (--r->handles > 0)
        return;
    tls_conn_free(r->tls);
    free(r);
}

static void tls_relay__close(struct tls_relay *r)
{
    if (r->closing)
        return;
    r->closing = true;
    uv_close((uv_handle_t *)&r->tcp, tls_relay__closed);
    uv_close((uv_handle_t *)&r->pair, tls_relay__closed);
    uv_close((uv_handle_t *)&r->linger, tls_relay__closed);
}

static void tls_relay__linger_over(uv_timer_t *t)
{
    tls_relay__close(t->data);
}

/* Reading from one side goes on only while the other side's queue has room. */
static void tls_relay__flow(struct tls_relay *r)
{
    if (r->closing)
        return;
    bool tcp_want = r->to_pair <= TLS_RELAY_QUEUE_MAX / 2;
    if (tcp_want != r->tcp_reading) {
        r->tcp_reading = tcp_want;
        if (tcp_want)
            uv_read_start((uv_stream_t *)&r->tcp, tls_relay__alloc, tls_relay__on_tcp);
        else
            uv_read_stop((uv_stream_t *)&r->tcp);
    }
    bool pair_want = !r->ending && r->to_tcp <= TLS_RELAY_QUEUE_MAX / 2;
    if (pair_want != r->pair_reading) {
        r->pair_reading = pair_want;
        if (pair_want)
            uv_read_start((uv_stream_t *)&r->pair, tls_relay__alloc, tls_relay__on_pair);
        else
            uv_read_stop((uv_stream_t *)&r->pair);
    }
}

static void tls_relay__written(uv_write_t *w, int status)
{
    struct tls_relay_write *rw = (struct tls_relay_write *)w;
    struct tls_relay *r = rw->relay;
    if (rw->to_tcp)
        r->to_tcp -= rw->len;
    else
        r->to_pair -= rw->len;
    free(rw);
    if (status < 0 || (r->ending && r->to_tcp == 0))
        tls_relay__close(r);
    else
        tls_relay__flow(r);
}

static int tls_relay__send(struct tls_relay *r, bool to_tcp, const char *data, size_t len)
{
    if (len == 0)
        return 0;
    struct tls_relay_write *rw = xmalloc(sizeof *rw + len);
    rw->relay = r;
    rw->to_tcp = to_tcp;
    rw->len = len;
    memcpy(rw->data, data, len);
    uv_buf_t b = uv_buf_init(rw->data, (unsigned)len);
    uv_stream_t *st = to_tcp ? (uv_stream_t *)&r->tcp : (uv_stream_t *)&r->pair;
    if (uv_write(&rw->req, st, &b, 1, tls_relay__written) < 0) {
        free(rw);
        return -EPIPE;
    }
    if (to_tcp)
        r->to_tcp += len;
    else
        r->to_pair += len;
    return 0;
}

/* Sends the records TLS has for the client. */
static int tls_relay__flush(struct tls_relay *r)
{
    const char *out;
    size_t n = tls_conn_output(r->tls, &out);
    int rc = tls_relay__send(r, true, out, n);
    tls_conn_output_consumed(r->tls, n);
    return rc;
}

/* Records from the client: their plaintext goes to the taker. */
static void tls_relay__on_tcp(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct tls_relay *r = st->data;
    if (n < 0) { /* the client left: the taker hears the end when its end of the pair closes */
        tls_relay__close(r);
        return;
    }
    tls_conn_feed(r->tls, b->base, (size_t)n);
    for (;;) {
        long got = tls_conn_read(r->tls, r->plain, sizeof r->plain);
        if (got == 0)
            break;
        if (got < 0 || tls_relay__send(r, false, r->plain, (size_t)got) < 0) {
            tls_relay__close(r); /* close_notify, a bad record, or the taker is gone */
            return;
        }
    }
    if (tls_relay__flush(r) < 0)
        tls_relay__close(r);
    else
        tls_relay__flow(r);
}

/* What the taker writes: encrypted for the client. Its end: close_notify, then the close. */
static void tls_relay__on_pair(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    struct tls_relay *r = st->data;
    if (n < 0) {
        r->ending = true;
        uv_timer_start(&r->linger, tls_relay__linger_over, TLS_RELAY_LINGER_MS, 0);
        tls_conn_close_notify(r->tls);
        if (tls_relay__flush(r) < 0 || r->to_tcp == 0)
            tls_relay__close(r);
        else
            tls_relay__flow(r);
        return;
    }
    if (n == 0)
        return;
    if (tls_conn_write(r->tls, b->base, (size_t)n) < 0 || tls_relay__flush(r) < 0) {
        tls_relay__close(r);
        return;
    }
    tls_relay__flow(r);
}

int tls_relay_start(uv_loop_t *loop, int sock, struct tls_conn *tls)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        log_warning("https upgrade: socketpair: %s", skiff_strerror(-errno));
        close(sock);
        tls_conn_free(tls);
        return -1;
    }
    struct tls_relay *r = xcalloc(1, sizeof *r);
    r->tls = tls;
    uv_tcp_init(loop, &r->tcp);
    uv_pipe_init(loop, &r->pair, 0);
    uv_timer_init(loop, &r->linger);
    r->tcp.data = r;
    r->pair.data = r;
    r->linger.data = r;
    r->handles = 3;
    if (uv_tcp_open(&r->tcp, sock) < 0) {
        close(sock);
        close(sv[0]);
        close(sv[1]);
        tls_relay__close(r);
        return -1;
    }
    if (uv_pipe_open(&r->pair, sv[1]) < 0) {
        close(sv[0]);
        close(sv[1]);
        tls_relay__close(r);
        return -1;
    }
    tls_relay__flow(r);
    return sv[0];
}
