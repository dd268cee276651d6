/* libFuzzer target: arbitrary HTTP/2 frames from a client through the router's HTTP/2 session
 * (router_h2.c: nghttp2, the field checks, the HTTP/1.1 request it builds, the response it
 * parses back), with no sockets; or (first byte & 4) arbitrary frames from an instance of an
 * http2 route through router_h2c.
 *
 * The input follows the client preface. Its first byte picks how streams are answered: at
 * once with a canned response (chunked, with trailers), with the input's own tail as the
 * HTTP/1.1 response bytes, not at all (the owner walks away), or only after the request
 * ends. Each request head the session builds must be one valid HTTP/1.1 head by the router's
 * strict scan (no bare CR or LF, no folding, nothing after its end): a field that smuggled a
 * line break through would fail that. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "router/router.h"
#include "router/router_h2.h"

struct owner {
    struct router_h2_stream *st;
    bool head_seen;
};

static int mode;
static const char *tail_bytes;
static size_t tail_len;

static void answer(struct owner *o)
{
    static const char canned[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n"
                                 "5\r\nhello\r\n0\r\nGrpc-Status: 0\r\n\r\n";
    if (mode == 1 && tail_len)
        router_h2_stream_response(o->st, tail_bytes, tail_len);
    else
        router_h2_stream_response(o->st, canned, sizeof(canned) - 1);
}

static void *on_open(void *ctx, struct router_h2_stream *st)
{
    struct owner *o = calloc(1, sizeof(*o));
    o->st = st;
    return o;
}

static void on_request(void *owner, const char *p, size_t n, bool end)
{
    struct owner *o = owner;
    if (!o->head_seen) {
        o->head_seen = true;
        struct router_head_scan sc;
        router_head_scan_reset(&sc);
        size_t at = 0;
        if (router_head_scan(&sc, p, n, &at) != 1 || at != n)
            abort(); /* the session built a head HTTP/1.1 would read differently */
        if (mode == 0 || mode == 1)
            answer(o);
        else if (mode == 2) { /* the owner walks away: the session says nothing more to it */
            router_h2_stream_detach(o->st);
            free(o);
            return;
        }
    }
    if (end && mode == 3)
        answer(o);
}

static void on_drained(void *owner) {}

static void on_closed(void *owner)
{
    free(owner);
}

static void on_output(void *ctx) {}

static const struct router_h2_ops ops = {on_open, on_request, on_drained, on_closed, on_output};

/* The other side: the frames an instance of an http2 route answers with, into router_h2c
 * (after two requests it was given on two streams of the connection), which must turn them
 * into HTTP/1.1 the proxy's own response parser accepts or into failures; a stream refused
 * gives back the request it was given, whole, for another. */
static void instance_frames(const char *in, size_t n)
{
    static const char request[] = "POST /pkg.S/M HTTP/1.1\r\nHost: app.localhost\r\n"
                                  "TE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  "5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n";
    static const char settings[9] = {0, 0, 0, 4, 0, 0, 0, 0, 0};
    struct router_h2c *c = router_h2c_new();
    struct buf out = {0}, resp = {0};
    struct router_h2c_stream *st[2] = {NULL, NULL};
    router_h2c_input(c, settings, sizeof(settings));
    for (int i = 0; i < 2; i++) {
        st[i] = router_h2c_stream_open(c);
        if (st[i])
            router_h2c_stream_request(st[i], request, sizeof(request) - 1);
    }
    router_h2c_output(c, &out);
    size_t half = n / 2;
    if (router_h2c_input(c, in, half) == 0)
        router_h2c_input(c, in + half, n - half);
    for (int i = 0; i < 2; i++)
        if (st[i]) {
            router_h2c_stream_take_response(st[i], &resp);
            router_h2c_stream_set_reading(st[i], i == 0);
            /* a refused stream gives back what it was given, byte for byte, or nothing */
            struct buf kept = {0};
            if (router_h2c_stream_take_request(st[i], &kept) &&
                (kept.len != sizeof(request) - 1 || memcmp(kept.data, request, kept.len) != 0))
                abort();
            if (router_h2c_stream_state(st[i]) != ROUTER_H2C_REFUSED && kept.len)
                abort();
            buf_free(&kept);
        }
    if (st[0])
        router_h2c_stream_close(st[0]); /* one owner goes early: a reset, the other goes on */
    router_h2c_output(c, &out);
    router_h2c_free(c); /* before the second owner closes its stream */
    if (st[1])
        router_h2c_stream_close(st[1]);
    buf_free(&out);
    buf_free(&resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    if (data[0] & 4) {
        instance_frames((const char *)data + 1, size - 1);
        return 0;
    }
    mode = data[0] & 3;
    size_t split = size > 2 ? (size_t)data[1] * (size - 2) / 255 : 0;
    const char *in = (const char *)data + 2;
    size_t in_len = size - 2;
    tail_bytes = in + split;
    tail_len = in_len - split;
    if (mode == 1)
        in_len = split;
    struct router_h2_limits limits;
    router_h2_limits_defaults(&limits);
    limits.max_header_bytes = 4096;
    limits.max_headers = 32;
    struct router_h2_session *s = router_h2_session_new(&limits, &ops, NULL);
    struct buf out = {0};
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    router_h2_session_input(s, preface, sizeof(preface) - 1);
    /* in two pieces, as a socket may give them */
    size_t half = in_len / 2;
    if (router_h2_session_input(s, in, half) == 0)
        router_h2_session_input(s, in + half, in_len - half);
    for (int i = 0; i < 64 && router_h2_session_output(s, &out, 1 << 20) > 0; i++)
        out.len = 0;
    router_h2_session_free(s);
    buf_free(&out);
    return 0;
}
