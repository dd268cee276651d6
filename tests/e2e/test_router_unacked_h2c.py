"""skiff-router when the host of an h2c instance (a route marked http2) vanishes with no table
to say so yet (no RST, no FIN: its packets are dropped), as test_router_unacked.py does for
HTTP/1.1 instances. The streams of one connection share its socket: when their bytes go
unacknowledged for 400 ms with a retransmission timeout passed, or when a keepalive probe goes
unanswered while a stream waits for its answer, the router marks the address down for every
route and worker, closes the connection, sends each idempotent request without a body to
another instance over a new connection and answers any other one 502 `backend-lost` (never
sent twice).

The lost instance is an h2c server (tests/e2e/apps/h2frames.py) in a network namespace the test
creates; an iptables rule there drops every TCP segment once the router has a connection to
it. No route table is sent after the loss. Needs root, iproute2 and iptables; skipped without.
"""
import contextlib
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_for
from test_router import Client, route
from test_router import backends, bus, home, router_factory  # noqa: F401
from test_router_h2 import H2cInstance
from test_router_unacked import far_instance

CONNECT_TIMEOUT_MS = 2000  # far below the 4-5 s a table without the instance takes to come
# What a request answered through the router's own loss check must come within: far below the
# 30 s the clients wait and the 60 s upstream timeout a stream waited for before (the times
# themselves are printed; under load they have varied from 0.4 s to over 4 s)
FOUND_WITHIN_S = 15
HEDGE_MS = 100

# The h2c instance in the namespace: answers every stream 200 with "far METHOD PATH" (and
# gRPC trailers), and writes "METHOD PATH" to its log for each request it reads whole; /slow
# answers after 20 s, /pause after 3 s, each from a thread of its own (the connection reads on).
# A third argument is its SETTINGS_MAX_CONCURRENT_STREAMS.
FAR_H2C_APP = r"""
import socket
import struct
import sys
import threading
import time

import h2frames


class Conn:
    # one writer at a time: an answer's HPACK encoding and its frames go out together
    def __init__(self, sock):
        self.sock, self.lock = sock, threading.RLock()

    def makefile(self, *args):
        return self.sock.makefile(*args)

    def sendall(self, data):
        with self.lock:
            self.sock.sendall(data)


def serve(sock):
    conn = Conn(sock)

    def answer(c, enc, sid, stream):
        fields = dict(stream["headers"])
        line = "%s %s" % (fields[":method"], fields[":path"])
        with open(sys.argv[2], "a") as f:
            f.write(line + "\n")
        delay = {"/slow": 20, "/pause": 3}.get(fields[":path"], 0)

        def send():
            time.sleep(delay)
            with conn.lock:
                conn.sendall(h2frames.grpc_answer(enc, sid, ("far " + line).encode()))

        threading.Thread(target=send, daemon=True).start()

    try:
        if len(sys.argv) > 3:  # before serve()'s own SETTINGS, which change nothing
            conn.sendall(h2frames.frame(h2frames.SETTINGS, 0, 0,
                                        struct.pack(">HI", 3, int(sys.argv[3]))))
        h2frames.serve(conn, answer)
    except OSError:
        pass


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("0.0.0.0", int(sys.argv[1])))
listener.listen(64)
while True:
    s, _ = listener.accept()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
"""


@pytest.fixture
def far_h2c(tmp_path):
    with far_h2c_host(tmp_path) as host:
        yield host


@pytest.fixture
def far_h2c_one_stream(tmp_path):
    with far_h2c_host(tmp_path, "1") as host:
        yield host


@contextlib.contextmanager
def far_h2c_host(tmp_path, *args):
    shutil.copy(Path(__file__).parent / "apps" / "h2frames.py", tmp_path / "h2frames.py")
    with far_instance(tmp_path, FAR_H2C_APP, "sk2far", *args) as host:
        yield host


@pytest.fixture
def good_h2c():
    inst = H2cInstance()
    yield inst
    inst.backend.close()


def h2(r):
    return dict(r, protocol="http2")


def start(router_factory, far, good):
    # app.localhost tries far first: a worker's round robin starts at its index (0)
    return router_factory([h2(route("app.localhost", [far.addr, good])),
                           h2(route("far.localhost", [far.addr]))],
                          "--workers", "1", "--connect-timeout-ms", str(CONNECT_TIMEOUT_MS),
                          "--connect-hedge-ms", str(HEDGE_MS))


def kept_alive_to(r, far):
    """The router's worker holds an h2c connection to far with no stream on it (far.localhost
    leads to far alone; the pool is per address, whatever the route)."""
    resp = r.get("far.localhost", "/warm")
    assert resp.status == 200 and resp.body == b"far GET /warm", (resp.status, resp.body)
    assert resp.trailers.get("grpc-status") == "0", resp.trailers
    assert far.requests() == ["GET /warm"]
    settled(far)


def settled(far):
    """Waits for far's kernel to have its answers acknowledged: one it retransmits after the
    loss would bring the router an ACK then, and the router counts 400 ms from the last."""
    def acked():
        out = subprocess.run(["ip", "netns", "exec", far.ns, "ss", "-tnH", "state",
                              "established"], capture_output=True, text=True, timeout=30).stdout
        return out and all(line.split()[1] == "0" for line in out.splitlines())

    wait_for(acked, 10, "far's answers to be acknowledged")


def send(client, method, path, host, body=None):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    client.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))


def paths(inst):
    return [dict(s["headers"])[":path"] for s in inst.requests]


def connection_to(far):
    """The router's established connections to far, as the kernel shows them (with -o: its
    timers, "keepalive" once the router has the kernel probe the host)."""
    ip, port = far.addr.rsplit(":", 1)
    return subprocess.run(["ss", "-tno", "state", "established", "dst", ip, "dport",
                           "= :" + port], capture_output=True, text=True, timeout=30).stdout


def answers(clients):
    """Each client's response, read at once on threads of their own: (response, seconds from
    now) in the clients' order."""
    out = [None] * len(clients)
    t0 = time.monotonic()

    def read(i):
        try:
            out[i] = (clients[i].response(), time.monotonic() - t0)
        except Exception as e:  # the assertion below says what came instead
            out[i] = (e, time.monotonic() - t0)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_streams_sent_on_a_kept_connection_to_a_lost_host_go_to_another_or_get_a_502(
        router_factory, bus, far_h2c, good_h2c):
    """A GET and a POST go out as two streams of the connection the router kept to far, whose
    host is gone: nothing of them is acknowledged. The GET (app.localhost: far, then good) is
    answered by the other instance, the POST (far.localhost: far alone) gets its 502; both
    well within the connect timeout (before, they waited for the upstream timeout, 60 s)."""
    r = start(router_factory, far_h2c, good_h2c)
    kept_alive_to(r, far_h2c)
    far_h2c.lose()
    reused = r.metric('skiff_router_upstream_connections_total{reused="true"}')
    get, post = Client(r.port, timeout=30), Client(r.port, timeout=30)
    send(get, "GET", "/get", "app.localhost")
    send(post, "POST", "/post", "far.localhost", b"p" * 1000)
    (got, get_took), (posted, post_took) = answers([get, post])
    log = r.log()
    assert getattr(got, "status", None) == 200, (got, get_took, log[-2000:])
    assert got.trailers.get("grpc-status") == "0", got.trailers
    assert getattr(posted, "status", None) == 502, (posted, log[-2000:])
    assert posted.headers["x-skiff-router-error"] == "backend-lost"
    assert b"not idempotent" in posted.body
    # both went to far on the kept connection first (no table came: the router saw it)
    assert r.metric('skiff_router_upstream_connections_total{reused="true"}') == reused + 2
    assert "backend %s acknowledged nothing of a request" % far_h2c.addr in log, log[-2000:]
    assert max(get_took, post_took) < FOUND_WITHIN_S, (get_took, post_took)
    print("answered %.2f s and %.2f s after the requests" % (get_took, post_took))
    # the POST was never sent to another instance, and the lost one read nothing
    assert paths(good_h2c) == ["/get"]
    assert far_h2c.requests() == ["GET /warm"]
    # far is passed over: later requests go to the other instance, with no connect to far
    connects = r.metric('skiff_router_upstream_connections_total{reused="false"}')
    for i in range(3):
        resp = get.request(path="/later%d" % i)
        assert resp.status == 200, (resp.status, resp.body)
    assert paths(good_h2c) == ["/get", "/later0", "/later1", "/later2"]
    assert r.metric('skiff_router_upstream_connections_total{reused="false"}') == connects
    get.close()
    post.close()


def test_a_request_waiting_for_a_stream_to_the_lost_host_goes_to_another_with_its_body(
        router_factory, bus, far_h2c_one_stream, good_h2c):
    """far allows one stream at a time: a GET holds it on the connection the router kept, and
    a POST with a body waits in the pool for a stream to far (one more connection to it on its
    way, which the lost host never answers). When the GET's connection is found lost, the GET
    goes to the other instance, and so does the POST, whose request was never sent: with its
    body, whatever its method. Before, it waited for a stream for the upstream timeout (60 s)."""
    far = far_h2c_one_stream
    r = router_factory([h2(route("app.localhost", [far.addr, good_h2c])),
                        h2(route("post.localhost", [far.addr, good_h2c])),
                        h2(route("far.localhost", [far.addr]))],
                       "--workers", "1", "--connect-timeout-ms", str(CONNECT_TIMEOUT_MS),
                       "--connect-hedge-ms", str(HEDGE_MS))
    kept_alive_to(r, far)
    far.lose()
    get, post = Client(r.port, timeout=30), Client(r.port, timeout=30)
    send(get, "GET", "/get", "app.localhost")  # each route's round robin starts at far
    wait_for(lambda: r.metric('skiff_router_upstream_connections_total{reused="true"}') == 1,
             10, "the GET to take far's one stream")
    send(post, "POST", "/post", "post.localhost", b"p" * 1000)
    (got, get_took), (posted, post_took) = answers([get, post])
    log = r.log()
    assert getattr(got, "status", None) == 200, (got, get_took, log[-2000:])
    assert getattr(posted, "status", None) == 200, (posted, post_took, log[-2000:])
    assert posted.body == b"p" * 1000  # good echoes the body it read
    assert max(get_took, post_took) < FOUND_WITHIN_S, (get_took, post_took)
    assert sorted(paths(good_h2c)) == ["/get", "/post"]
    assert far.requests() == ["GET /warm"]
    get.close()
    post.close()


def test_streams_its_lost_host_had_acknowledged_go_to_another_or_get_a_502(
        router_factory, bus, far_h2c, good_h2c):
    """far had a GET and a POST whole, on one connection, and its app was working on them when
    its host vanished: the router, which saw them acknowledged and no answer for 400 ms, has
    the kernel probe the host (TCP keepalive, after a second without a packet); an unanswered
    probe ends the connection a second later. The GET (app.localhost) goes to the other
    instance, the POST (far.localhost) gets its 502: far had it, it is not sent twice."""
    r = start(router_factory, far_h2c, good_h2c)
    get, post = Client(r.port, timeout=30), Client(r.port, timeout=30)
    send(get, "GET", "/slow", "app.localhost")
    wait_for(lambda: far_h2c.requests() == ["GET /slow"], 10, "the GET to reach far")
    send(post, "POST", "/slow", "far.localhost", b"p" * 1000)
    wait_for(lambda: far_h2c.requests() == ["GET /slow", "POST /slow"], 10,
             "the POST to reach far")
    # both streams on one connection
    assert r.metric('skiff_router_upstream_connections_total{reused="true"}') == 1
    wait_for(lambda: "keepalive" in connection_to(far_h2c), 10,
             "the router to have the kernel probe far")
    far_h2c.lose()
    (got, get_took), (posted, post_took) = answers([get, post])
    log = r.log()
    assert getattr(got, "status", None) == 200, (got, get_took, log[-2000:])
    assert got.trailers.get("grpc-status") == "0", got.trailers
    assert getattr(posted, "status", None) == 502, (posted, log[-2000:])
    assert posted.headers["x-skiff-router-error"] == "backend-lost"
    assert "backend %s answered no keepalive probe" % far_h2c.addr in log, log[-2000:]
    # a second without a packet, a second for the probe: well before a table without far
    # (4-5 s), and far below the upstream timeout (60 s)
    assert max(get_took, post_took) < FOUND_WITHIN_S, (get_took, post_took, log[-2000:])
    print("answered %.2f s and %.2f s after the loss" % (get_took, post_took))
    assert paths(good_h2c) == ["/slow"]
    get.close()
    post.close()


def test_a_slow_live_h2c_instance_is_not_taken_for_lost(router_factory, bus, far_h2c,
                                                       good_h2c):
    """An h2c app that answers after 3 s, its host there: the router sees the request
    acknowledged and has the kernel probe the host, which answers. 200 from it, nothing marked
    down, and the next request of app.localhost goes to far again (after good's turn)."""
    r = start(router_factory, far_h2c, good_h2c)
    c = Client(r.port, timeout=30)
    t0 = time.monotonic()
    send(c, "GET", "/pause", "far.localhost")
    wait_for(lambda: "keepalive" in connection_to(far_h2c), 10,
             "the router to have the kernel probe far")
    resp = c.response()
    took = time.monotonic() - t0
    assert resp.status == 200 and resp.body == b"far GET /pause", (resp.status, resp.body)
    assert took >= 3, took
    log = r.log()
    assert "acknowledged nothing" not in log and "keepalive probe" not in log, log[-2000:]
    for path in ("/a", "/b"):  # far is not passed over
        assert c.request(path=path).status == 200
    assert far_h2c.requests() == ["GET /pause", "GET /a"]
    assert paths(good_h2c) == ["/b"]
    c.close()


def test_an_h2c_instance_that_shuts_its_window_is_not_taken_for_lost(router_factory, bus):
    """An h2c app that opens its HTTP/2 windows wide, then reads nothing of its socket for
    3 s while an 8 MB body comes: its TCP window shuts, the router's bytes wait unsent and its
    kernel's window probes are answered. Not a lost instance: 200 with the whole body read,
    nothing marked down (a POST taken for lost would be a 502)."""
    from test_router import RawBackend
    from apps import h2frames
    from apps.h2frames import SETTINGS, WINDOW_UPDATE, frame

    def shut_reader(conn):
        wide = 2 ** 31 - 1
        conn.sendall(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, wide)) +
                     frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", wide - 65535)))
        time.sleep(3)  # the app's own pace, not the test's wait
        h2frames.serve(conn, lambda c, enc, sid, stream: c.sendall(h2frames.grpc_answer(
            enc, sid, b"read %d" % len(stream["body"]))))

    reader = RawBackend(shut_reader)
    try:
        r = router_factory([h2(route("read.localhost", [reader]))], "--workers", "1")
        c = Client(r.port, timeout=30)
        body = b"b" * (8 << 20)
        t0 = time.monotonic()
        resp = c.request("POST", path="/upload", host="read.localhost", body=body)
        took = time.monotonic() - t0
        log = r.log()
        assert resp.status == 200 and resp.body == b"read %d" % len(body), (resp.status,
                                                                         resp.body, log[-2000:])
        assert took >= 3, took
        assert "acknowledged nothing" not in log and "keepalive probe" not in log, log[-2000:]
        c.close()
    finally:
        reader.close()
