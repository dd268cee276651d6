"""HTTP/2 frames by hand, for the apps and tests that speak h2c: the frame and flag numbers,
frame() to write one, read_frame() to read one, and serve() that plays the server side of a
connection (preface, SETTINGS and PING acks, window updates) and hands each finished request
stream to its caller. An app that uses it ships this file beside itself. HPACK is python3-hpack's."""
import struct

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
PROTOCOL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 0x1, 0x2, 0x7, 0x8, 0xB


def frame(type_, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([type_, flags]) + \
        struct.pack(">I", stream) + payload


def read_frame(f):
    """The next frame of a binary file as (type, flags, stream, payload); None at its end."""
    head = f.read(9)
    if len(head) < 9:
        return None
    length = int.from_bytes(head[:3], "big")
    sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
    return head[3], head[4], sid, f.read(length)


def grpc_answer(enc, sid, body, fields=()):
    """The frames of a gRPC-style answer: HEADERS (200, application/grpc and fields), the body
    in DATA when there is one, then trailers (grpc-status 0, grpc-message ok)."""
    out = frame(HEADERS, END_HEADERS, sid, enc.encode(
        [(":status", "200"), ("content-type", "application/grpc")] + list(fields)))
    if body:
        out += frame(DATA, 0, sid, body)
    return out + frame(HEADERS, END_HEADERS | END_STREAM, sid, enc.encode(
        [("grpc-status", "0"), ("grpc-message", "ok")]))


def serve(conn, on_stream, on_ping_ack=None):
    """Serves one h2c connection (prior knowledge) until the peer ends it or sends GOAWAY.
    Each request stream, once it ends, goes to on_stream(conn, enc, sid, stream), stream being
    a dict of "headers" and "trailers" (lists of str pairs) and "body" (bytes); enc is the
    connection's HPACK encoder, for the answer. on_ping_ack() is called for each PING ack."""
    f = conn.makefile("rb")
    if f.read(24) != PREFACE:
        return
    conn.sendall(frame(SETTINGS, 0, 0))
    dec, enc = hpack.Decoder(), hpack.Encoder()
    streams = {}
    while True:
        got = read_frame(f)
        if got is None:
            return
        type_, flags, sid, payload = got
        if type_ == SETTINGS and not flags & ACK:
            conn.sendall(frame(SETTINGS, ACK, 0))
        elif type_ == PING and not flags & ACK:
            conn.sendall(frame(PING, ACK, 0, payload))
        elif type_ == PING and on_ping_ack:
            on_ping_ack()
        elif type_ == HEADERS:
            fields = [(k.decode(), v.decode()) for k, v in dec.decode(payload, raw=True)]
            s = streams.setdefault(sid, {"headers": None, "body": b"", "trailers": []})
            if s["headers"] is None:
                s["headers"] = fields
            else:
                s["trailers"] = fields
        elif type_ == DATA and sid in streams:
            streams[sid]["body"] += payload
            if payload:
                inc = struct.pack(">I", len(payload))
                conn.sendall(frame(WINDOW_UPDATE, 0, 0, inc) + frame(WINDOW_UPDATE, 0, sid, inc))
        elif type_ == GOAWAY:
            return
        if type_ in (HEADERS, DATA) and flags & END_STREAM and sid in streams:
            on_stream(conn, enc, sid, streams.pop(sid))
