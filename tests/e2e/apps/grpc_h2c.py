"""An app that speaks only h2c (HTTP/2 with prior knowledge), gRPC style, on $PORT: each
stream is answered with HEADERS (200, application/grpc, x-instance), the request body echoed
in DATA, then trailers (grpc-status: 0, grpc-message: ok). HPACK is python3-hpack's."""
import os
import socket
import struct
import threading

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 4, 6, 7, 8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4


def frame(type_, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([type_, flags]) + \
        struct.pack(">I", sid) + payload


def serve(conn):
    f = conn.makefile("rb")
    if f.read(24) != PREFACE:
        return
    conn.sendall(frame(SETTINGS, 0, 0))
    dec, enc = hpack.Decoder(), hpack.Encoder()
    streams = {}
    while True:
        head = f.read(9)
        if len(head) < 9:
            return
        length = int.from_bytes(head[:3], "big")
        type_, flags = head[3], head[4]
        sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = f.read(length)
        if type_ == SETTINGS and not flags & ACK:
            conn.sendall(frame(SETTINGS, ACK, 0))
        elif type_ == PING and not flags & ACK:
            conn.sendall(frame(PING, ACK, 0, payload))
        elif type_ == HEADERS:
            fields = dec.decode(payload)
            streams.setdefault(sid, {"headers": fields, "body": b""})
        elif type_ == DATA and sid in streams:
            streams[sid]["body"] += payload
            if payload:
                inc = struct.pack(">I", len(payload))
                conn.sendall(frame(WINDOW_UPDATE, 0, 0, inc) + frame(WINDOW_UPDATE, 0, sid, inc))
        elif type_ == GOAWAY:
            return
        if type_ in (HEADERS, DATA) and flags & END_STREAM and sid in streams:
            s = streams.pop(sid)
            out = frame(HEADERS, END_HEADERS, sid, enc.encode(
                [(":status", "200"), ("content-type", "application/grpc"),
                 ("x-instance", os.environ.get("CF_INSTANCE_INDEX", "?"))]))
            if s["body"]:
                out += frame(DATA, 0, sid, s["body"])
            out += frame(HEADERS, END_HEADERS | END_STREAM, sid,
                         enc.encode([("grpc-status", "0"), ("grpc-message", "ok")]))
            conn.sendall(out)


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=lambda c=conn: (serve(c), c.close()), daemon=True).start()


if __name__ == "__main__":
    main()
