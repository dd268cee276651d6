"""skiff-router when an instance's host vanishes with no table to say so yet (no RST, no FIN:
its packets are dropped). A request sent on a kept-alive connection to it is never
acknowledged by that host's kernel: after 400 ms without an ACK (a retransmission timeout
passed), the router marks the address down for every route and worker, sends an idempotent
request without a body to another instance over a new connection, and answers any other one
502 `backend-lost` (not sent twice). Hedged connects (one more every --connect-hedge-ms, three
attempts in all) keep a request with two of three instances lost within the connect timeout.

The lost instance runs in a network namespace the test creates (a veth pair of its own); an
iptables rule there drops every TCP segment once the router has a kept-alive connection to it.
No route table is sent after the loss: only the router's own checks end these requests in
time. Needs root, iproute2 and iptables; skipped without.
"""
import contextlib
import subprocess
import sys
import time

import pytest

from conftest import wait_for
from test_router import Client, route
from test_router import backends, bus, home, router_factory  # noqa: F401
from test_router_hedge import _run, black_hole, timed_request, veth_namespace  # noqa: F401

CONNECT_TIMEOUT_MS = 2000  # far below the 4-5 s a table without the instance takes to come
HEDGE_MS = 100

# The instance in the namespace: answers every request 200 with "far METHOD PATH", and writes
# "METHOD PATH" to its log for each request it reads whole (its count of requests); /slow
# answers after 20 s.
FAR_APP = r"""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        with open(sys.argv[2], "a") as f:
            f.write("%s %s\n" % (self.command, self.path))
        if self.path == "/slow":
            time.sleep(20)
        body = ("far %s %s" % (self.command, self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""


class FarHost:
    """An instance on a host of its own (a namespace), which lose() makes vanish."""

    def __init__(self, ns, addr, log):
        self.ns, self.addr, self.log = ns, addr, log

    def requests(self):
        with open(self.log) as f:
            return f.read().splitlines()

    def lose(self):
        _run("ip", "netns", "exec", self.ns, "iptables", "-A", "INPUT", "-p", "tcp", "-j",
             "DROP")


@contextlib.contextmanager
def far_instance(tmp_path, source, ns_prefix, *args):
    """An instance on a host of its own: the app in source (a Python program run with its
    port, its log and args) in a network namespace the test creates, listening; a FarHost."""
    app, log = tmp_path / "far.py", tmp_path / "far.log"
    app.write_text(source)
    log.write_text("")
    with veth_namespace(ns_prefix) as (ns, net):
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(app), "8080",
                                 str(log), *args])
        try:
            host = FarHost(ns, net + ".2:8080", str(log))

            def listening():
                out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltn"],
                                     capture_output=True, text=True, timeout=30).stdout
                return ":8080 " in out

            wait_for(listening, 30, "the instance in the namespace to listen")
            yield host
        finally:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def far_host(tmp_path):
    with far_instance(tmp_path, FAR_APP, "skfar") as host:
        yield host


def kept_alive_to(r, far):
    """The router's worker holds an idle kept-alive connection to far (far.localhost leads to
    far alone; the pool is per address, whatever the route)."""
    resp = r.get("far.localhost", "/warm")
    assert resp.status == 200 and resp.body == b"far GET /warm", (resp.status, resp.body)
    assert far.requests() == ["GET /warm"]


def start(router_factory, far, good):
    # app.localhost tries far first: a worker's round robin starts at its index (0)
    return router_factory([route("app.localhost", [far.addr, good]),
                           route("far.localhost", [far.addr]),
                           route("other.localhost", [far.addr, good], app="other")],
                          "--workers", "1", "--connect-timeout-ms", str(CONNECT_TIMEOUT_MS),
                          "--connect-hedge-ms", str(HEDGE_MS))


def test_a_get_on_a_kept_alive_connection_to_a_lost_host_is_answered_by_another(
        router_factory, bus, backends, far_host):
    good = backends("good")
    r = start(router_factory, far_host, good)
    kept_alive_to(r, far_host)
    far_host.lose()
    reused = r.metric('skiff_router_upstream_connections_total{reused="true"}')
    c = Client(r.port, timeout=30)
    resp, took = timed_request("/get", client=c)
    assert resp.status == 200, (resp.status, resp.headers, resp.body, r.log()[-2000:])
    assert resp.json()["name"] == "good" and resp.json()["path"] == "/get"
    # it went to far on the kept-alive connection first (no table came: the router saw it)
    assert r.metric('skiff_router_upstream_connections_total{reused="true"}') == reused + 1
    assert "backend %s acknowledged nothing of a request" % far_host.addr in r.log()
    # a table without far takes 4-5 s to come; this is bounded by the connect timeout
    assert took < CONNECT_TIMEOUT_MS / 1000, took
    # the connection to the client goes on
    assert c.request(path="/next").json()["name"] == "good"
    c.close()
    assert good.hits == 2


def test_a_post_on_a_kept_alive_connection_to_a_lost_host_is_a_502_sent_once(
        router_factory, bus, backends, far_host):
    good = backends("good")
    r = start(router_factory, far_host, good)
    kept_alive_to(r, far_host)
    far_host.lose()
    c = Client(r.port, timeout=30)
    resp, took = timed_request("/post", client=c, method="POST", body=b"p" * 1000)
    assert resp.status == 502, (resp.status, resp.body)
    assert resp.headers["x-skiff-router-error"] == "backend-lost"
    assert b"not idempotent" in resp.body
    assert took < CONNECT_TIMEOUT_MS / 1000, took
    c.close()
    # never sent to another instance, and the lost one never read it
    assert good.hits == 0
    assert far_host.requests() == ["GET /warm"]


def test_a_get_its_lost_host_had_acknowledged_is_answered_by_another(router_factory, bus,
                                                                      backends, far_host):
    """The host had the whole request and its app was working on it when the host vanished:
    the router, which had seen the request acknowledged and no answer for 400 ms, has the
    kernel probe the host (TCP keepalive, after a second without a packet); an unanswered
    probe ends the connection a second later and the GET goes to the other instance."""
    good = backends("good")
    r = start(router_factory, far_host, good)
    c = Client(r.port, timeout=30)
    c.send(b"GET /slow HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
    wait_for(lambda: far_host.requests() == ["GET /slow"], 10, "the request to reach far")
    ip, port = far_host.addr.rsplit(":", 1)

    def probing():  # the router's connection to far, as the kernel shows it
        return "keepalive" in subprocess.run(
            ["ss", "-tno", "state", "established", "dst", ip, "dport", "= :" + port],
            capture_output=True, text=True, timeout=30).stdout

    wait_for(probing, 10, "the router to have the kernel probe far")
    far_host.lose()
    t0 = time.monotonic()
    resp = c.response()
    took = time.monotonic() - t0
    log = r.log()
    assert resp.status == 200, (resp.status, resp.headers, resp.body, took, log[-2000:])
    assert resp.json()["name"] == "good" and resp.json()["path"] == "/slow"
    assert "backend %s answered no keepalive probe" % far_host.addr in log, log[-2000:]
    # a second without a packet, a second for the probe: well before a table without far
    # (4-5 s), and within the default connect timeout (5 s)
    assert took < 3.5, (took, log[-2000:])
    print("answered %.2f s after the loss" % took)
    c.close()
    assert good.hits == 1


def test_a_mark_covers_every_route_with_the_address(router_factory, bus, backends, black_hole):
    """An instance found lost through app.localhost (its connect lost to a hedge) is passed
    over by other.localhost too (another app's route to the same address): no hedge, no wait.
    A mark used to cover the route it was made on only."""
    good = backends("good")
    r = router_factory([route("app.localhost", [black_hole, good]),
                        route("other.localhost", [black_hole, good], app="other")],
                       "--workers", "1", "--connect-timeout-ms", str(CONNECT_TIMEOUT_MS),
                       "--connect-hedge-ms", str(HEDGE_MS))
    # one worker: each route's round robin starts at the lost instance
    assert r.get("app.localhost", "/a").json()["name"] == "good"
    assert r.metric("skiff_router_upstream_hedges_total") == 1
    for i in range(4):
        resp = r.get("other.localhost", "/o%d" % i)
        assert resp.status == 200 and resp.json()["name"] == "good", (resp.status, resp.body)
    assert r.metric("skiff_router_upstream_hedges_total") == 1
    assert good.hits == 5


@pytest.fixture
def two_black_holes(black_hole):
    """Two instance addresses on one vanished host (the namespace drops every TCP segment)."""
    ip = black_hole.rsplit(":", 1)[0]
    return [ip + ":8080", ip + ":8081"]


def test_two_lost_of_three_cost_no_request_a_connect_timeout(router_factory, bus, backends,
                                                             two_black_holes):
    good = backends("good")
    # one worker: its round robin starts at the first lost instance, then hedges to the other
    r = router_factory([route("app.localhost", two_black_holes + [good])], "--workers", "1",
                       "--connect-timeout-ms", str(CONNECT_TIMEOUT_MS),
                       "--connect-hedge-ms", str(HEDGE_MS))
    took = []
    for i in range(12):
        resp, t = timed_request("/r%d" % i, r.port)
        took.append(t)
        assert resp.status == 200, (i, resp.status, resp.body, r.log()[-2000:])
        assert resp.json()["name"] == "good"
    # the first connect and its first hedge both went to lost instances: a second hedge went
    # to the third; one hedge per connect waited for the first one's connect timeout here
    assert max(took) < CONNECT_TIMEOUT_MS / 1000, took
    assert r.metric("skiff_router_upstream_hedges_total") >= 2
    assert good.hits == 12


def test_a_live_instance_that_is_slow_or_shuts_its_window_is_not_taken_for_lost(
        router_factory, bus, backends):
    """What an app can do without its host vanishing: answer after 3 s (its kernel answers the
    keepalive probes meanwhile), or read nothing of an 8 MB body for 3 s (its window shut: the
    router's bytes wait unsent, and the window probes are answered). Neither is a lost
    instance: both answer 200, nothing is sent twice, no address is marked down."""
    from test_router import RawBackend, requests_on
    seen = []

    def slow_reader(conn):
        for first, headers, f in requests_on(conn):
            seen.append(first.split()[1])
            time.sleep(3)  # the app's own pace, not the test's wait
            n = int(headers.get("content-length", "0"))
            got = len(f.read(n)) if n else 0
            body = b"read %d" % got
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    reader = RawBackend(slow_reader)
    slow = backends("slow")
    try:
        r = router_factory([route("read.localhost", [reader]), route("slow.localhost", [slow])],
                           "--workers", "1")
        c = Client(r.port, timeout=30)
        body = b"b" * (8 << 20)
        t0 = time.monotonic()
        resp = c.request("POST", path="/upload", host="read.localhost", body=body)
        assert resp.status == 200 and resp.body == b"read %d" % len(body), (resp.status,
                                                                         resp.body)
        assert time.monotonic() - t0 >= 3
        resp = c.request(path="/delay/3000", host="slow.localhost")
        assert resp.status == 200 and resp.json()["name"] == "slow", (resp.status, resp.body)
        c.close()
        assert seen == ["/upload"] and slow.hits == 1
        log = r.log()
        assert "acknowledged nothing" not in log and "keepalive probe" not in log, log[-2000:]
    finally:
        reader.close()
