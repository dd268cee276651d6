/* router_h2: the server side of an HTTP/2 connection (nghttp2), driven by bytes in and bytes
 * out, so a cleartext connection that sent the client preface and a TLS connection whose ALPN
 * said "h2" are served alike.
 *
 * Each stream is handed to its owner as one HTTP/1.1 request: a head the session builds from
 * the stream's fields (after checking them: no CR, LF, NUL or ':' where HTTP/1.1 would read
 * them as framing, no connection-specific fields, :authority and host in agreement), then
 * the body framed with Content-Length or chunked, then request trailers. The owner answers
 * with the bytes of an HTTP/1.1 response, which the session parses and sends as HEADERS, DATA
 * and trailers. The proxy runs each stream through the same path as an HTTP/1.1 request, so
 * routing, head rewriting, access lines and metrics are the same for both.
 *
 * The session owns its streams' memory; an owner hears of the end of its stream once
 * (stream_closed) and calls nothing on it after. Calls an owner makes on its own stream
 * (router_h2_stream_*) make no callback but want_output; the others come from
 * router_h2_session_input, router_h2_session_output (stream_drained, and stream_closed once a
 * stream's last frame is sent) and router_h2_session_free. */
#ifndef SKIFF_ROUTER_H2_H
#define SKIFF_ROUTER_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nghttp2/nghttp2.h>

#include "common/buf.h"

struct router_h2_session;
struct router_h2_stream;

/* What a client may ask of one connection (src/router/README.md, "HTTP/2"). */
struct router_h2_limits {
    size_t max_header_bytes;            /* decoded header list: name + value + 32 per field */
    size_t max_headers;                 /* fields in one header block */
    uint32_t max_concurrent_streams;    /* SETTINGS_MAX_CONCURRENT_STREAMS */
    uint32_t stream_window;             /* request body bytes one stream may have unread */
    uint32_t resets_burst;              /* RST_STREAM from the client: a token bucket of this */
    uint32_t resets_per_second;         /* size, refilled at this rate; empty: GOAWAY */
    uint32_t control_frames_per_second; /* SETTINGS, PING, PRIORITY, empty DATA; past: GOAWAY */
    uint32_t max_continuations;         /* CONTINUATION frames after one HEADERS */
};
void router_h2_limits_defaults(struct router_h2_limits *l);

struct router_h2_ops {
    /* A stream has a complete request head: returns its owner, or NULL to refuse it (the
     * stream is reset with REFUSED_STREAM). The head is given by stream_request next. */
    void *(*stream_open)(void *ctx, struct router_h2_stream *s);
    /* HTTP/1.1 request bytes for the owner: the head, then body and framing; `end` with the
     * last of them. The bytes are valid during the call only. */
    void (*stream_request)(void *owner, const char *p, size_t n, bool end);
    /* Response bytes queued on the stream fell to the low water mark: the owner may read its
     * backend again. */
    void (*stream_drained)(void *owner);
    /* The stream is over (answered, reset by the client, or the connection is going): the
     * owner forgets it. */
    void (*stream_closed)(void *owner);
    /* The session has bytes to send: the caller should call router_h2_session_output soon,
     * from its own loop (never from within this callback). */
    void (*want_output)(void *ctx);
};

/* When a stream's queued response bytes (router_h2_stream_queued) fall to this level from
 * above, stream_drained is called: the owner, which stops reading its backend past its own
 * high water, may read again. */
#define ROUTER_H2_LOW_WATER (64 * 1024)

/* Whether `n` response bytes just read from a backend for a stream make its connection worth
 * writing at once, from the read's callback, rather than with the other connections' output
 * at the end of the loop turn: n is a full TLS record's worth (16 KB) or more. A large
 * response so leaves as soon as it is read, instead of waiting for every other event of the
 * turn to be handled; small ones still wait, so that several go out in one write and one
 * record. */
bool router_h2_write_now(size_t n);

/* A new server session. The client preface is expected first in the input. */
struct router_h2_session *router_h2_session_new(const struct router_h2_limits *limits,
                                                const struct router_h2_ops *ops, void *ctx);
/* Frees the session; stream_closed is called for each stream that still has an owner. */
void router_h2_session_free(struct router_h2_session *s);
/* Bytes from the client. Returns 0, or -1 when the connection is to end: a protocol error or
 * a limit crossed (the GOAWAY that says why is in the output). */
int router_h2_session_input(struct router_h2_session *s, const char *p, size_t n);
/* Where a session's frames go. write() is given bytes valid during the call only: it consumes
 * them (copies, encrypts or writes them) before it returns. A DATA frame comes as one piece,
 * its head right before its payload, so a consumer that encrypts frames into TLS records
 * encrypts the payload where it lies (with frame_max at the record size, one frame is one
 * record). */
struct router_h2_sink {
    void (*write)(void *ctx, const char *p, size_t n);
    void *ctx;
};
/* Gives the sink up to about `max` bytes to send; returns how many it was given. */
size_t router_h2_session_output_to(struct router_h2_session *s, const struct router_h2_sink *sink,
                                   size_t max);
/* router_h2_session_output_to with a sink that appends to out. */
size_t router_h2_session_output(struct router_h2_session *s, struct buf *out, size_t max);
/* DATA frames, head included, of at most frame_max bytes (default 16393: the largest payload
 * every client accepts); the client's SETTINGS_MAX_FRAME_SIZE and windows bound them too. */
void router_h2_session_set_frame_max(struct router_h2_session *s, size_t frame_max);
/* Whether the connection should close once its output is written: the session ended (a
 * GOAWAY sent, or the client's received) and nothing is left to send. */
bool router_h2_session_done(const struct router_h2_session *s);
/* Streams open (with or without owners). */
size_t router_h2_session_streams(const struct router_h2_session *s);
/* A graceful end: GOAWAY with the last stream accepted; streams open are finished. */
void router_h2_session_goaway(struct router_h2_session *s);
/* Why the session ended, for the log ("" while it runs). */
const char *router_h2_session_error(const struct router_h2_session *s);

/* HTTP/1.1 response bytes from the owner for its stream (status line, fields, body in its
 * framing, trailers). Returns 0, or -1 when they are not a valid response (the stream is
 * reset). */
int router_h2_stream_response(struct router_h2_stream *st, const char *p, size_t n);
/* Response bytes queued on the stream, not yet sent (the client's window decides). */
size_t router_h2_stream_queued(const struct router_h2_stream *st);
/* Whether the owner takes more request body: while not, the stream's window is not reopened,
 * so a client can have at most `stream_window` bytes of it in the router. */
void router_h2_stream_set_reading(struct router_h2_stream *st, bool reading);
/* The owner is gone: the stream is reset (CANCEL) unless its whole response was given. */
void router_h2_stream_detach(struct router_h2_stream *st);

/* ---- h2c to instances (router_h2c.c) ----
 *
 * A connection to an instance of a route marked `protocol: http2` speaks h2c (prior
 * knowledge) and carries many streams at once, as many as the instance's
 * SETTINGS_MAX_CONCURRENT_STREAMS allows (ROUTER_H2C_MAX_STREAMS at most). Each exchange of
 * the proxy has a stream; it keeps writing and reading HTTP/1.1: the request bytes it writes
 * become the stream's HEADERS, DATA and trailers, and what the instance answers on the stream
 * becomes HTTP/1.1 response bytes (always chunked when there is a body, so trailers such as
 * grpc-status pass through).
 *
 * The session (router_h2c) belongs to the proxy's connection; a stream belongs to its
 * exchange, which closes it (router_h2c_stream_close) before the session is freed. Nothing
 * here calls back: after router_h2c_input the owner of each stream looks at its state and
 * takes its response bytes. */
struct router_h2c;
struct router_h2c_stream;

/* Streams one connection carries at most, whatever the instance allows. */
#define ROUTER_H2C_MAX_STREAMS 128
/* Response body bytes one stream may receive that its client has not taken yet (the
 * instance's window for the stream); the connection's window is reopened at once. */
#define ROUTER_H2C_STREAM_WINDOW (256 * 1024)
/* Request bytes (head and body) a stream keeps until the instance begins to answer it, so
 * that a stream the instance refused unprocessed can go again on another with its body. */
#define ROUTER_H2C_REPLAY_MAX (64 * 1024)

enum router_h2c_state {
    ROUTER_H2C_OPEN,    /* the response is still to come, or to end */
    ROUTER_H2C_DONE,    /* the whole response was given */
    ROUTER_H2C_FAILED,  /* reset, or ended without its whole response: a 502 or a cut */
    ROUTER_H2C_REFUSED, /* never processed by the instance (REFUSED_STREAM, above a GOAWAY's
                         * last stream, or never sent): another connection may take it */
};

struct router_h2c *router_h2c_new(void);
/* Frees the session; its streams are closed first by their owners. */
void router_h2c_free(struct router_h2c *c);
/* Whether the instance's SETTINGS came: until then no stream opens (its limit is unknown). */
bool router_h2c_ready(const struct router_h2c *c);
/* Whether a stream may open now: ready, neither failed nor going away, and fewer streams than
 * the instance allows. */
bool router_h2c_can_open(const struct router_h2c *c);
/* Whether no stream will open on it any more: it failed, a GOAWAY came, or the instance
 * allows none. */
bool router_h2c_finished(const struct router_h2c *c);
/* Streams open on the connection (closed by their owners or not yet). */
size_t router_h2c_streams(const struct router_h2c *c);
/* Bytes from the instance. Returns 0, or -1 when the connection is broken (the instance broke
 * the protocol): every stream is then FAILED, or REFUSED if its request never went out. */
int router_h2c_input(struct router_h2c *c, const char *p, size_t n);
/* The connection is gone (closed, or a read or write failed): as input's -1. */
void router_h2c_abort(struct router_h2c *c);
/* Appends what is to be sent to the instance to out; returns how many bytes. */
size_t router_h2c_output(struct router_h2c *c, struct buf *out);

/* A new stream; the request bytes given next are its request. NULL unless can_open. */
struct router_h2c_stream *router_h2c_stream_open(struct router_h2c *c);
/* HTTP/1.1 request bytes from the proxy: head, body in its framing, trailers. Returns 0, or -1
 * when they cannot be sent (the stream fails). */
int router_h2c_stream_request(struct router_h2c_stream *s, const char *p, size_t n);
enum router_h2c_state router_h2c_stream_state(const struct router_h2c_stream *s);
/* Moves the HTTP/1.1 response bytes made since the last call into `into` (emptied first). */
void router_h2c_stream_take_response(struct router_h2c_stream *s, struct buf *into);
/* A stream that ended ROUTER_H2C_REFUSED gives the request bytes it was given, for another
 * stream: moves them into `into` (emptied first) and returns true when it kept them all (at
 * most ROUTER_H2C_REPLAY_MAX, and the instance never began to answer); else false, and `into`
 * is left empty. */
bool router_h2c_stream_take_request(struct router_h2c_stream *s, struct buf *into);
/* Request body bytes waiting for the instance's window. */
size_t router_h2c_stream_queued(const struct router_h2c_stream *s);
/* While not reading, response bytes received on the stream are not acknowledged, so the
 * instance stops at the stream's window; reading again acknowledges them. */
void router_h2c_stream_set_reading(struct router_h2c_stream *s, bool reading);
/* The owner is done with it: reset (CANCEL) if it is still open on the wire, and freed. */
void router_h2c_stream_close(struct router_h2c_stream *s);

/* ---- pure functions (unit-tested) ---- */

/* Whether p[0..n) is the start of the HTTP/2 client preface: 1 when the whole preface (24
 * bytes) is there, 0 when what there is matches so far, -1 when it is not the preface. */
int router_h2_preface_match(const char *p, size_t n);
/* Whether a field describes one HTTP/1.1 connection and so means nothing (or harm) in HTTP/2:
 * connection, keep-alive, proxy-connection, transfer-encoding, upgrade, http2-settings. */
bool router_h2_connection_specific(const char *name, size_t len);
/* Whether name[0..len) is lower (itself lowercase), case aside. */
bool router_h2_name_is(const char *name, size_t len, const char *lower);
/* Header fields as both sides of the router keep them between HTTP/1.1 and HTTP/2: pairs
 * "name\0value\0" in one buf, names lowercased, *count of them. */
void router_h2_fields_push(struct buf *b, size_t *count, const char *name, size_t nl,
                           const char *value, size_t vl);
/* nghttp2's view of b's count fields after `extra` slots left zero at the front (for
 * pseudo-fields): the array is the caller's to free, the strings stay b's. */
nghttp2_nv *router_h2_fields_nv(const struct buf *b, size_t count, size_t extra);
/* Checks a regular (not pseudo) request field before it becomes an HTTP/1.1 header line:
 * NULL when it may pass, else the reason. Refused: a name that is not a lowercase token (so
 * no ':', CR, LF, NUL or space), a value with CR, LF or NUL or white space at either end, the
 * connection-specific fields (connection, keep-alive, proxy-connection, transfer-encoding,
 * upgrade, http2-settings) and te other than "trailers". */
const char *router_h2_field_check(const char *name, size_t name_len, const char *value,
                                  size_t value_len);

#endif
