"""An app that speaks only h2c (HTTP/2 with prior knowledge), gRPC style, on $PORT: each
stream is answered with HEADERS (200, application/grpc, x-instance), the request body echoed
in DATA, then trailers (grpc-status: 0, grpc-message: ok). The frames are h2frames.py's,
shipped beside this file."""
import os
import socket
import threading

import h2frames


def answer(conn, enc, sid, stream):
    instance = ("x-instance", os.environ.get("CF_INSTANCE_INDEX", "?"))
    conn.sendall(h2frames.grpc_answer(enc, sid, stream["body"], [instance]))


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", int(os.environ.get("PORT", "8080"))))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=lambda c=conn: (h2frames.serve(c, answer), c.close()),
                         daemon=True).start()


if __name__ == "__main__":
    main()
