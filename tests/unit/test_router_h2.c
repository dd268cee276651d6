/* Unit tests for the router's HTTP/2 session (router_h2.c): the preface test, the field
 * checks, and a session driven by frames in memory: the HTTP/1.1 request it builds, the
 * response it sends back, and what it refuses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "router/router_h2.h"

static void test_preface(void **state)
{
    (void)state;
    const char *p = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_int_equal(router_h2_preface_match(p, 24), 1);
    assert_int_equal(router_h2_preface_match(p, 30), 1);
    assert_int_equal(router_h2_preface_match(p, 3), 0);
    assert_int_equal(router_h2_preface_match("P", 1), 0);
    assert_int_equal(router_h2_preface_match("PUT / HTTP/1.1\r\n", 16), -1);
    assert_int_equal(router_h2_preface_match("GET", 3), -1);
}

#define CHECK(n, v) router_h2_field_check(n, sizeof(n) - 1, v, sizeof(v) - 1)

static void test_field_checks(void **state)
{
    (void)state;
    assert_null(CHECK("x-a", "1"));
    assert_null(CHECK("te", "trailers"));
    assert_null(CHECK("content-length", "10"));
    assert_null(CHECK("x-empty", ""));
    assert_non_null(CHECK("X-A", "1"));
    assert_non_null(CHECK("x:a", "1"));
    assert_non_null(CHECK("x a", "1"));
    assert_non_null(CHECK("", "1"));
    assert_non_null(CHECK("x-a", "1\r\nx-b: 2"));
    assert_non_null(CHECK("x-a", "1\n"));
    assert_non_null(CHECK("x-a", "a\0b"));
    assert_non_null(CHECK("x-a", " 1"));
    assert_non_null(CHECK("x-a", "1\t"));
    assert_non_null(CHECK("transfer-encoding", "chunked"));
    assert_non_null(CHECK("connection", "close"));
    assert_non_null(CHECK("keep-alive", "5"));
    assert_non_null(CHECK("proxy-connection", "x"));
    assert_non_null(CHECK("upgrade", "h2c"));
    assert_non_null(CHECK("te", "gzip"));
}

/* ---- a session in memory ---- */

struct owner {
    struct router_h2_stream *st;
    struct buf req;
    bool ended, closed;
};

static struct owner owners[4];
static int owner_count;

static void *on_open(void *ctx, struct router_h2_stream *st)
{
    struct owner *o = &owners[owner_count++];
    o->st = st;
    return o;
}

static void on_request(void *owner, const char *p, size_t n, bool end)
{
    struct owner *o = owner;
    buf_append(&o->req, p, n);
    o->ended |= end;
}

static void on_drained(void *owner) {}

static void on_closed(void *owner)
{
    ((struct owner *)owner)->closed = true;
}

static void on_output(void *ctx) {}

static const struct router_h2_ops ops = {on_open, on_request, on_drained, on_closed, on_output};

static void frame(struct buf *b, int type, int flags, int sid, const void *payload, size_t n)
{
    uint8_t hd[9] = {
        (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n, (uint8_t)type, (uint8_t)flags, 0, 0, 0,
        (uint8_t)sid};
    buf_append(b, hd, 9);
    buf_append(b, payload, n);
}

/* A literal field with a new name, not indexed, no Huffman (names and values under 127). */
static void literal(struct buf *b, const char *name, const char *value, size_t value_len)
{
    buf_putc(b, 0);
    buf_putc(b, (char)strlen(name));
    buf_puts(b, name);
    buf_putc(b, (char)value_len);
    buf_append(b, value, value_len);
}

static void request_block(struct buf *b, const char *method, const char *path)
{
    literal(b, ":method", method, strlen(method));
    literal(b, ":scheme", "http", 4);
    literal(b, ":path", path, strlen(path));
    literal(b, ":authority", "app.localhost", 13);
}

static struct router_h2_session *session_with(const struct buf *frames)
{
    for (size_t i = 0; i < sizeof(owners) / sizeof(owners[0]); i++)
        buf_free(&owners[i].req); /* what an earlier test left */
    memset(owners, 0, sizeof(owners));
    owner_count = 0;
    struct router_h2_limits l;
    router_h2_limits_defaults(&l);
    struct router_h2_session *s = router_h2_session_new(&l, &ops, NULL);
    struct buf in = {0};
    buf_puts(&in, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    frame(&in, 4, 0, 0, "", 0); /* SETTINGS */
    buf_append(&in, frames->data, frames->len);
    assert_int_equal(router_h2_session_input(s, in.data, in.len), 0);
    buf_free(&in);
    return s;
}

static void test_a_stream_becomes_an_http11_request(void **state)
{
    (void)state;
    struct buf block = {0}, frames = {0};
    request_block(&block, "POST", "/p?q=1");
    literal(&block, "cookie", "a=1", 3);
    literal(&block, "x-a", "1", 1);
    literal(&block, "cookie", "b=2", 3);
    frame(&frames, 1, 4, 1, block.data, block.len); /* HEADERS, END_HEADERS */
    frame(&frames, 0, 1, 1, "hello", 5);            /* DATA, END_STREAM */
    struct router_h2_session *s = session_with(&frames);
    assert_int_equal(owner_count, 1);
    buf_putc(&owners[0].req, '\0');
    assert_string_equal(owners[0].req.data,
                        "POST /p?q=1 HTTP/1.1\r\nHost: app.localhost\r\nx-a: 1\r\n"
                        "cookie: a=1; b=2\r\ntransfer-encoding: chunked\r\n\r\n"
                        "5\r\nhello\r\n0\r\n\r\n");
    assert_true(owners[0].ended);
    /* the answer goes out as HEADERS and DATA */
    const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok";
    assert_int_equal(router_h2_stream_response(owners[0].st, resp, sizeof(resp) - 1), 0);
    struct buf out = {0};
    assert_true(router_h2_session_output(s, &out, 1 << 20) > 0);
    assert_non_null(memmem(out.data, out.len, "ok", 2));
    assert_null(memmem(out.data, out.len, "keep-alive", 10)); /* no connection fields */
    assert_true(owners[0].closed); /* the stream ended with its response */
    router_h2_session_free(s);
    buf_free(&out);
    buf_free(&owners[0].req);
    buf_free(&block);
    buf_free(&frames);
}

static void test_a_crlf_in_a_value_never_reaches_an_owner(void **state)
{
    (void)state;
    struct buf block = {0}, frames = {0};
    request_block(&block, "GET", "/");
    literal(&block, "x-a", "1\r\nx-b: 2", 9);
    frame(&frames, 1, 5, 1, block.data, block.len);
    struct router_h2_session *s = session_with(&frames);
    assert_int_equal(owner_count, 0);
    struct buf out = {0};
    router_h2_session_output(s, &out, 1 << 20);
    /* RST_STREAM (type 3) on stream 1 with PROTOCOL_ERROR */
    static const uint8_t rst[] = {0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 1};
    assert_non_null(memmem(out.data, out.len, rst, sizeof(rst)));
    router_h2_session_free(s);
    buf_free(&out);
    buf_free(&block);
    buf_free(&frames);
}

/* What a sink is given: each piece, in order. */
struct pieces {
    struct buf all;
    size_t count, lens[64];
};

static void pieces_write(void *ctx, const char *p, size_t n)
{
    struct pieces *ps = ctx;
    assert_true(ps->count < 64);
    ps->lens[ps->count++] = n;
    buf_append(&ps->all, p, n);
}

static void test_a_data_frame_reaches_the_sink_as_one_piece_of_frame_max(void **state)
{
    (void)state;
    struct buf block = {0}, frames = {0};
    request_block(&block, "GET", "/big");
    frame(&frames, 1, 5, 1, block.data, block.len); /* HEADERS, END_HEADERS | END_STREAM */
    struct router_h2_session *s = session_with(&frames);
    router_h2_session_set_frame_max(s, 4096);
    assert_int_equal(owner_count, 1);
    static char body[20000];
    for (size_t i = 0; i < sizeof(body); i++)
        body[i] = (char)('a' + i % 26);
    struct buf resp = {0};
    buf_printf(&resp, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", sizeof(body));
    buf_append(&resp, body, 5000);
    struct pieces ps = {0};
    struct router_h2_sink sink = {pieces_write, &ps};
    /* the body in two parts, the first sent before the second comes: the queue's room for a
     * frame head is kept after what was sent */
    assert_int_equal(router_h2_stream_response(owners[0].st, resp.data, resp.len), 0);
    size_t given = router_h2_session_output_to(s, &sink, 1 << 20);
    assert_int_equal(given, ps.all.len);
    assert_int_equal(router_h2_stream_response(owners[0].st, body + 5000, sizeof(body) - 5000), 0);
    router_h2_session_output_to(s, &sink, 1 << 20);
    assert_true(owners[0].closed);
    /* every DATA frame is one piece: its head, then its payload, at most 4096 bytes in all */
    struct buf got = {0};
    size_t at = 0, data_frames = 0;
    for (size_t i = 0; i < ps.count; i++) {
        const uint8_t *f = (const uint8_t *)ps.all.data + at;
        size_t len = (size_t)f[0] << 16 | (size_t)f[1] << 8 | f[2];
        if (f[3] == 0) { /* DATA */
            assert_int_equal(ps.lens[i], 9 + len);
            assert_true(ps.lens[i] <= 4096);
            buf_append(&got, f + 9, len);
            data_frames++;
        }
        at += ps.lens[i];
    }
    assert_int_equal(at, ps.all.len);
    assert_int_equal(got.len, sizeof(body));
    assert_memory_equal(got.data, body, sizeof(body));
    assert_true(data_frames >= 6); /* 5000 = 4087 + 913, then 15000 in four and a bit */
    router_h2_session_free(s);
    buf_free(&got);
    buf_free(&ps.all);
    buf_free(&resp);
    buf_free(&block);
    buf_free(&frames);
}

/* The stream ids of the DATA frames in what a session wrote, in order, and their bytes. */
static size_t data_frame_streams(const struct buf *out, int *ids, size_t max, size_t *bytes)
{
    size_t n = 0, at = 0;
    while (at + 9 <= out->len) {
        const uint8_t *f = (const uint8_t *)out->data + at;
        size_t len = (size_t)f[0] << 16 | (size_t)f[1] << 8 | f[2];
        if (f[3] == 0 && len > 0 && n < max) {
            ids[n++] = (int)((f[5] & 0x7f) << 24 | f[6] << 16 | f[7] << 8 | f[8]);
            *bytes += len;
        }
        at += 9 + len;
    }
    assert_int_equal(at, out->len);
    return n;
}

/* RFC 9218 scheduling: a response is sent whole before the next (not 16 KB of each in turn,
 * which ends every response of a connection when its last one ends), and a stream waiting
 * for its body holds no other. */
static void test_responses_go_one_after_another_and_a_waiting_one_holds_none(void **state)
{
    (void)state;
    struct buf block = {0}, frames = {0};
    request_block(&block, "GET", "/a");
    frame(&frames, 1, 5, 1, block.data, block.len);
    block.len = 0;
    request_block(&block, "GET", "/b");
    frame(&frames, 1, 5, 3, block.data, block.len);
    block.len = 0;
    request_block(&block, "GET", "/c");
    frame(&frames, 1, 5, 5, block.data, block.len);
    struct router_h2_session *s = session_with(&frames);
    assert_int_equal(owner_count, 3);
    static char body[20000]; /* three fit the client's initial 65535-byte window */
    memset(body, 'x', sizeof(body));
    struct buf head = {0};
    buf_printf(&head, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", sizeof(body));
    for (int i = 0; i < 2; i++) { /* /a and /b whole, /a first */
        assert_int_equal(router_h2_stream_response(owners[i].st, head.data, head.len), 0);
        assert_int_equal(router_h2_stream_response(owners[i].st, body, sizeof(body)), 0);
    }
    /* /c has its head and a part of its body, the rest still to come */
    assert_int_equal(router_h2_stream_response(owners[2].st, head.data, head.len), 0);
    assert_int_equal(router_h2_stream_response(owners[2].st, body, 1000), 0);
    struct buf out = {0};
    router_h2_session_output(s, &out, 1 << 20);
    int ids[32];
    size_t bytes = 0, n = data_frame_streams(&out, ids, 32, &bytes);
    assert_int_equal(bytes, 2 * sizeof(body) + 1000);
    assert_true(owners[0].closed && owners[1].closed && !owners[2].closed);
    /* /a's frames, then /b's, never mixed; /c's first part wherever it came */
    size_t i = 0;
    while (i < n && ids[i] != 1)
        assert_int_equal(ids[i++], 5);
    while (i < n && ids[i] == 1)
        i++;
    while (i < n && ids[i] == 5)
        i++;
    while (i < n && ids[i] == 3)
        i++;
    while (i < n && ids[i] == 5)
        i++;
    assert_int_equal(i, n);
    /* the rest of /c follows once it comes */
    out.len = 0;
    assert_int_equal(router_h2_stream_response(owners[2].st, body, sizeof(body) - 1000), 0);
    router_h2_session_output(s, &out, 1 << 20);
    bytes = 0;
    n = data_frame_streams(&out, ids, 32, &bytes);
    assert_int_equal(bytes, sizeof(body) - 1000);
    assert_true(owners[2].closed);
    router_h2_session_free(s);
    for (int k = 0; k < 3; k++)
        buf_free(&owners[k].req);
    buf_free(&out);
    buf_free(&head);
    buf_free(&block);
    buf_free(&frames);
}

/* ---- h2c to an instance (router_h2c.c) ---- */

/* The instance's SETTINGS frame, with SETTINGS_MAX_CONCURRENT_STREAMS when max >= 0. */
static void instance_settings(struct buf *in, int max)
{
    uint8_t mcs[6] = {0, 3, 0, 0, (uint8_t)(max >> 8), (uint8_t)max};
    frame(in, 4, 0, 0, mcs, max >= 0 ? 6 : 0);
}

static void test_h2c_turns_a_request_into_a_stream_and_a_stream_into_http11(void **state)
{
    (void)state;
    struct router_h2c *c = router_h2c_new();
    assert_false(router_h2c_can_open(c)); /* not before the instance's SETTINGS */
    struct buf in = {0}, out = {0}, block = {0}, trailers = {0}, resp = {0};
    instance_settings(&in, -1);
    assert_int_equal(router_h2c_input(c, in.data, in.len), 0);
    assert_true(router_h2c_can_open(c));
    struct router_h2c_stream *s = router_h2c_stream_open(c);
    const char req[] = "POST /pkg.S/M HTTP/1.1\r\nHost: grpc.localhost\r\nTE: trailers\r\n"
                       "Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n0\r\n\r\n";
    assert_int_equal(router_h2c_stream_request(s, req, sizeof(req) - 1), 0);
    assert_true(router_h2c_output(c, &out) > 24);
    assert_memory_equal(out.data, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    assert_non_null(memmem(out.data, out.len, "hello", 5));
    assert_null(memmem(out.data, out.len, "keep-alive", 10)); /* no connection fields */
    /* the instance: HEADERS (:status 200, literal fields), DATA, trailers */
    in.len = 0;
    buf_putc(&block, (char)0x88); /* :status 200, from the static table */
    literal(&block, "content-type", "application/grpc", 16);
    frame(&in, 1, 4, 1, block.data, block.len);
    frame(&in, 0, 0, 1, "world", 5);
    literal(&trailers, "grpc-status", "0", 1);
    frame(&in, 1, 5, 1, trailers.data, trailers.len);
    assert_int_equal(router_h2c_input(c, in.data, in.len), 0);
    router_h2c_stream_take_response(s, &resp);
    buf_putc(&resp, '\0');
    assert_string_equal(resp.data, "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n"
                                   "0\r\ngrpc-status: 0\r\n\r\n");
    assert_int_equal(router_h2c_stream_state(s), ROUTER_H2C_DONE);
    router_h2c_stream_close(s);
    assert_int_equal(router_h2c_streams(c), 0);
    router_h2c_free(c);
    buf_free(&out);
    buf_free(&in);
    buf_free(&block);
    buf_free(&trailers);
    buf_free(&resp);
}

/* Two streams at once: one reset by the instance fails alone, the other is answered; a GOAWAY
 * refuses the streams above its last id, and no stream opens after it. */
static void test_h2c_streams_share_a_connection_and_fail_alone(void **state)
{
    (void)state;
    struct router_h2c *c = router_h2c_new();
    struct buf in = {0}, out = {0}, resp = {0};
    instance_settings(&in, 3);
    assert_int_equal(router_h2c_input(c, in.data, in.len), 0);
    const char get[] = "GET / HTTP/1.1\r\nHost: grpc.localhost\r\n\r\n";
    struct router_h2c_stream *st[3];
    for (int i = 0; i < 3; i++) {
        st[i] = router_h2c_stream_open(c);
        assert_non_null(st[i]);
        assert_int_equal(router_h2c_stream_request(st[i], get, sizeof(get) - 1), 0);
    }
    assert_false(router_h2c_can_open(c)); /* the instance allows 3 */
    assert_null(router_h2c_stream_open(c));
    router_h2c_output(c, &out);
    /* stream 1 (the first opened) reset, stream 3 answered, then GOAWAY with last id 3 */
    in.len = 0;
    static const uint8_t rst[] = {0, 0, 0, 2};                /* INTERNAL_ERROR */
    static const uint8_t goaway[] = {0, 0, 0, 3, 0, 0, 0, 0}; /* last 3, NO_ERROR */
    frame(&in, 3, 0, 1, rst, 4);
    uint8_t status = 0x88;
    frame(&in, 1, 5, 3, &status, 1);
    frame(&in, 7, 0, 0, goaway, 8);
    assert_int_equal(router_h2c_input(c, in.data, in.len), 0);
    assert_int_equal(router_h2c_stream_state(st[0]), ROUTER_H2C_FAILED);
    assert_int_equal(router_h2c_stream_state(st[1]), ROUTER_H2C_DONE);
    router_h2c_stream_take_response(st[1], &resp);
    assert_true(resp.len > 12 && memcmp(resp.data, "HTTP/1.1 200", 12) == 0);
    assert_int_equal(router_h2c_stream_state(st[2]), ROUTER_H2C_REFUSED); /* stream 5 */
    assert_true(router_h2c_finished(c));
    for (int i = 0; i < 3; i++)
        router_h2c_stream_close(st[i]);
    assert_false(router_h2c_can_open(c));
    /* frames for a stream never opened break the connection, not the process */
    struct router_h2c *d = router_h2c_new();
    in.len = 0;
    instance_settings(&in, -1);
    frame(&in, 0, 0, 9, "boo", 3);
    router_h2c_input(d, in.data, in.len);
    assert_true(router_h2c_finished(d));
    assert_false(router_h2c_can_open(d));
    router_h2c_free(d);
    router_h2c_free(c);
    buf_free(&out);
    buf_free(&in);
    buf_free(&resp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preface),
        cmocka_unit_test(test_field_checks),
        cmocka_unit_test(test_a_stream_becomes_an_http11_request),
        cmocka_unit_test(test_a_crlf_in_a_value_never_reaches_an_owner),
        cmocka_unit_test(test_a_data_frame_reaches_the_sink_as_one_piece_of_frame_max),
        cmocka_unit_test(test_responses_go_one_after_another_and_a_waiting_one_holds_none),
        cmocka_unit_test(test_h2c_turns_a_request_into_a_stream_and_a_stream_into_http11),
        cmocka_unit_test(test_h2c_streams_share_a_connection_and_fail_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
