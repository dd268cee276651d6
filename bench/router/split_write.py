#!/usr/bin/env python3
"""An app that writes its response head and its body in two writes (Nagle on, as most
runtimes leave it), reached directly and through skiff-router (one or two builds): the
second write waits for the peer's ACK of the first, which a receiver that delays its ACKs
holds for up to 40 ms. Prints the median and p90 latency of sequential requests on one
kept-alive connection, and each router's median over the direct one's.

    bench/router/split_write.py --bin build/rel [--peer-bin OTHER/rel] [--requests 200]
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time

HOST = "split.localhost"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app(sock):
    """Answers each request with its head, then (a separate send) its body."""
    def serve(conn):
        f = conn.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                while f.readline() not in (b"\r\n", b""):
                    pass
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                conn.sendall(b"hello")
        except OSError:
            pass
        finally:
            conn.close()

    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def measure(port, n):
    c = socket.create_connection(("127.0.0.1", port))
    req = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % HOST).encode()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.sendall(req)
        buf = b""
        while not buf.endswith(b"hello"):
            d = c.recv(4096)
            if not d:
                raise SystemExit("connection closed")
            buf += d
        times.append((time.perf_counter() - t0) * 1000)
    c.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def start_router(bin_dir, backend, home):
    os.makedirs(os.path.join(home, "run"))
    with open(os.path.join(home, "run", "routes.json"), "w") as f:
        f.write('{"type":"routes","version":1,"routes":[{"host":"%s","path":"","app_guid":"",'
                '"app_name":"split","backends":[{"addr":"%s","index":0}]}]}\n' % (HOST, backend))
    port = free_port()
    proc = subprocess.Popen([os.path.join(bin_dir, "skiff-router"), "--home", home, "--addr",
                             "127.0.0.1:%d" % port, "--admin-addr", "127.0.0.1:%d" % free_port(),
                             "--workers", "1"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the router did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--peer-bin")
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    threading.Thread(target=app, args=(sock,), daemon=True).start()
    backend = "127.0.0.1:%d" % sock.getsockname()[1]
    work = tempfile.mkdtemp(prefix="skiff-split-")
    procs = []
    try:
        targets = [("direct", sock.getsockname()[1])]
        for name, b in (("router", args.bin), ("peer router", args.peer_bin)):
            if b:
                proc, port = start_router(b, backend, os.path.join(work, name.replace(" ", "-")))
                procs.append(proc)
                targets.append((name + " (" + b + ")", port))
        results = {}
        for name, port in targets:
            measure(port, 5)  # connections made, caches warm
            results[name] = measure(port, args.requests)
        direct = results["direct"][0]
        for name, (p50, p90) in results.items():
            print("%-40s median %7.2f ms  p90 %7.2f ms  %7.4fx direct" % (name, p50, p90,
                                                                       p50 / direct))
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
