"""The bus on NATS core: skiffd --nats announces its route table (skiff.bus.register with a
TTL, re-announced; skiff.bus.unregister), and a router on "another host" (`skiffd --role router
--nats`, its own home and ports) learns every route from NATS alone: it serves an app pushed to
skiffd, drops an unmapped route at once, prunes a route not announced again within its TTL
while skiffd announces the others, keeps every route while skiffd is gone (its instances run
on) and when it is back, keeps serving its last table (and its saved routes.json after a restart) while NATS is down,
and loses no request through a rolling push (drain over NATS). Messages on NATS that are not
well-formed are skipped; an instance cannot connect to the NATS port at all.

The announce interval and TTL are shortened here (1 s and 3 s) through SKIFF_BUS_ANNOUNCE_MS
and SKIFF_BUS_TTL_MS; the defaults are 10 s and 30 s."""
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from conftest import BIN_DIR, Platform, free_port, out, packets_dropped, wait_for
from test_deploy import Traffic, write_app
from test_fabric_nats import NatsServer
from test_isolation import attack, contained, host_side, push_hostile

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None,
                                reason="nats-server is not installed (scripts/deps.sh)")

ANNOUNCE_MS, TTL_MS = 1000, 3000


@pytest.fixture
def nats():
    store = tempfile.mkdtemp(prefix="skiff-natsbus-")
    s = NatsServer(store).start()
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(store, ignore_errors=True)


class RemoteRouter:
    """`skiffd --role router --nats URL` with a home and ports of its own."""

    def __init__(self, nats_url, home=None, extra_args=(), extra_env=None):
        self.nats_url = nats_url
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.home = home or tempfile.mkdtemp(prefix="skiff-rtr-")
        self.port, self.admin_port = free_port(), free_port()
        self.router_url = "http://127.0.0.1:%d" % self.port
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKIFF_")}
        env["HOME"] = self.home
        env.update(self.extra_env)
        nats = [] if "SKIFF_NATS" in self.extra_env else ["--nats", self.nats_url]
        log = open(os.path.join(self.home, "router.out"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "skiffd"), "--role", "router", *nats,
             "--home", self.home, "--router-addr", "127.0.0.1:%d" % self.port,
             "--router-admin-addr", "127.0.0.1:%d" % self.admin_port, *self.extra_args],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.proc.poll() is not None or self.health(), 20, "the router to start")
        assert self.proc.poll() is None, self.output()
        return self

    def health(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % self.admin_port,
                                    timeout=2) as r:
            return r.status == 200

    def get(self, host, path="/"):
        req = urllib.request.Request(self.router_url + path, headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("X-Skiff-Router-Error", "")
        except OSError as e:
            return 0, repr(e)

    def output(self):
        with open(os.path.join(self.home, "router.out"), errors="replace") as f:
            return f.read()[-10000:]

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def nats_platform(nats):
    return Platform(extra_args=["--nats", nats.url],
                    extra_env={"SKIFF_BUS_ANNOUNCE_MS": str(ANNOUNCE_MS),
                               "SKIFF_BUS_TTL_MS": str(TTL_MS)})


def nats_publish(nats, subject, payload, reply=None):
    """Publishes on NATS core with the plain text protocol (no client library needed)."""
    with socket.create_connection(("127.0.0.1", nats.port), timeout=5) as s:
        s.recv(4096)  # INFO
        data = payload if isinstance(payload, bytes) else payload.encode()
        head = subject if reply is None else "%s %s" % (subject, reply)
        s.sendall(b"CONNECT {\"verbose\":false}\r\nPUB %s %d\r\n%s\r\nPING\r\n"
                  % (head.encode(), len(data), data))
        got = b""
        while b"PONG" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk


def push_web(p, tmp_path, name, version="v0", instances=1):
    r = p.cli("push", name, "-p", write_app(tmp_path, version), "-i", str(instances), timeout=300)
    assert r.returncode == 0, out(r)


def test_a_router_on_another_host_learns_routes_from_nats(nats, tmp_path):
    p = nats_platform(nats).start()
    rr = RemoteRouter(nats.url).start()
    try:
        push_web(p, tmp_path, "far")
        wait_for(lambda: rr.get("far.localhost") == (200, "v0\n"), 30,
                 "the remote router to serve far")
        # it saved what it learnt, as a router of skiffd's own socket does
        saved = json.load(open(os.path.join(rr.home, "run", "routes.json")))
        assert [r["host"] for r in saved["routes"]] == ["far.localhost"], saved

        # its access lines come back over NATS into the app's log (no request went through
        # skiffd's own router)
        rr.get("far.localhost", "/from-the-remote-router")
        wait_for(lambda: "GET /from-the-remote-router 200" in str(
            p.api("GET", "/v1/apps/far/logs?recent=1")[1]), 10, "the access line in the log")

        # unmap: unregistered at once, well within the announce interval
        r = p.cli("unmap-route", "far", "far.localhost")
        assert r.returncode == 0, out(r)
        t0 = time.monotonic()
        wait_for(lambda: rr.get("far.localhost")[0] == 404, ANNOUNCE_MS / 1000,
                 "the unmapped route to leave the remote router")
        print("unmap -> gone from the remote router in %.0f ms" % ((time.monotonic() - t0) * 1000))
        t0 = time.monotonic()
        r = p.cli("map-route", "far", "far.localhost")
        assert r.returncode == 0, out(r)
        wait_for(lambda: rr.get("far.localhost") == (200, "v0\n"), 10, "the route back")
        print("map-route -> served by the remote router in %.0f ms (CLI included)"
              % ((time.monotonic() - t0) * 1000))

        # a route announced once and never again is pruned after its TTL, while skiffd
        # announces the others (a forged register: whoever may publish on skiff.bus can)
        nats_publish(nats, "skiff.bus.register", json.dumps(
            {"v": 1, "ttl_ms": 1000, "route": {"host": "ghost.localhost", "path": "",
                                               "app_guid": "0" * 36, "backends": []}}))
        wait_for(lambda: rr.get("ghost.localhost")[0] == 503, 5, "the ghost route")
        wait_for(lambda: rr.get("ghost.localhost")[0] == 404, 1 + 2 * ANNOUNCE_MS / 1000 + 2,
                 "the ghost route to be pruned after its TTL")
        assert "route ghost.localhost was not announced again" in rr.output(), rr.output()

        # skiffd killed (its instance runs on under its shim): nothing announces any more,
        # which says nothing of the routes, and the remote router serves far well past the
        # TTL (before, it pruned every route: 404, with the instance still running)
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(10)
        deadline = time.monotonic() + TTL_MS / 1000 + 2 * ANNOUNCE_MS / 1000
        while time.monotonic() < deadline:
            assert rr.get("far.localhost") == (200, "v0\n")
            time.sleep(0.1)
        wait_for(lambda: "no skiffd has announced a route" in rr.output(), 5,
                 "the router to say it keeps its table")
        assert "far.localhost was not announced again" not in rr.output(), rr.output()

        # skiffd back on its home: it adopts the instance and announces again; the route stays
        p.start()
        wait_for(lambda: "routes are announced again" in rr.output(), 30,
                 "the router to hear announcements again")
        deadline = time.monotonic() + TTL_MS / 1000 + 2 * ANNOUNCE_MS / 1000
        while time.monotonic() < deadline:
            assert rr.get("far.localhost") == (200, "v0\n")
            time.sleep(0.1)
    finally:
        rr.close()
        p.close()


def test_the_remote_router_keeps_its_table_while_nats_is_down(nats, tmp_path):
    p = nats_platform(nats).start()
    rr = RemoteRouter(nats.url).start()
    try:
        push_web(p, tmp_path, "steady")
        wait_for(lambda: rr.get("steady.localhost") == (200, "v0\n"), 30, "steady served")
        nats.stop()
        # well past the TTL: nothing expires while NATS is unreachable
        deadline = time.monotonic() + TTL_MS / 1000 + 2
        while time.monotonic() < deadline:
            assert rr.get("steady.localhost") == (200, "v0\n")
            time.sleep(0.2)
        # restarted with NATS still down: it serves its saved routes.json
        rr.stop()
        rr = RemoteRouter(nats.url, home=rr.home).start()
        assert rr.get("steady.localhost") == (200, "v0\n"), rr.output()
        # NATS back: the table is announced again and stays
        nats.start()
        time.sleep(TTL_MS / 1000 + 1)
        assert rr.get("steady.localhost") == (200, "v0\n"), rr.output()
    finally:
        rr.close()
        p.close()


def nats_client_ports(nats_port, pgid):
    """The local ports of the connections to NATS made by the processes of group pgid."""
    pids = set(subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True,
                              text=True).stdout.split())
    listed = subprocess.run(["ss", "-tnpH", "state", "established", f"dport = :{nats_port}"],
                            capture_output=True, text=True).stdout
    return [int(m.group(1)) for line in listed.splitlines()
            for m in [re.search(r"127\.0\.0\.1:(\d+)\s+127\.0\.0\.1:%d\b" % nats_port, line)]
            if m and pids & set(re.findall(r"pid=(\d+)", line))]


def test_a_router_whose_link_to_nats_dies_without_a_word_notices_and_keeps_serving(nats,
                                                                                  tmp_path):
    """The remote router's connection to NATS goes silent (its packets dropped both ways; NATS
    and skiffd are fine): it notices within seconds by its pings, serves its table meanwhile,
    and is on a new connection before any route's TTL runs out. Before, it noticed after
    minutes, and pruned its whole table at the TTL: every app answered 404. Then the same
    for skiffd's own connection, whose announcements every router needs."""
    p = Platform(extra_args=["--nats", nats.url],
                 extra_env={"SKIFF_BUS_ANNOUNCE_MS": str(ANNOUNCE_MS),
                            "SKIFF_BUS_TTL_MS": "20000"}).start()
    rr = RemoteRouter(nats.url).start()
    try:
        push_web(p, tmp_path, "steady")
        wait_for(lambda: rr.get("steady.localhost") == (200, "v0\n"), 30, "steady served")
        ports = nats_client_ports(nats.port, rr.proc.pid)
        assert ports, "the router's connection to NATS"
        with packets_dropped(*ports, peer=nats.port):
            failed = []

            def noticed():
                got = rr.get("steady.localhost")
                if got != (200, "v0\n"):
                    failed.append(got)
                return rr.output().count("bus: connected to NATS") >= 2

            wait_for(noticed, 20, "the router to notice and connect again", interval=0.2)
            assert "NATS is unreachable; serving the last route table" in rr.output()
            assert failed == [], failed
            # the new connection carries announcements
            assert p.cli("map-route", "steady", "again.localhost").returncode == 0
            wait_for(lambda: rr.get("again.localhost") == (200, "v0\n"), 15,
                     "a route mapped after the cut served")
        # the same for skiffd's own connection: it connects again and announces on it
        ports = nats_client_ports(nats.port, p.proc.pid)
        assert ports, "skiffd's connection to NATS"
        with packets_dropped(*ports, peer=nats.port):
            wait_for(lambda: p.output().count("bus: connected to NATS; announcing") >= 2, 20,
                     "skiffd to notice and connect again")
            assert p.cli("map-route", "steady", "third.localhost").returncode == 0
            wait_for(lambda: rr.get("third.localhost") == (200, "v0\n"), 15,
                     "a route mapped after skiffd's cut served remotely")
        assert rr.get("steady.localhost") == (200, "v0\n")
    finally:
        rr.close()
        p.close()


def test_a_rolling_push_fails_no_request_through_the_remote_router(nats, tmp_path):
    p = nats_platform(nats).start()
    rr = RemoteRouter(nats.url).start()
    try:
        push_web(p, tmp_path, "roll", "v0", instances=2)
        wait_for(lambda: rr.get("roll.localhost") == (200, "v0\n"), 30, "v0 served remotely")
        # the remote router said hello, so drains wait for it
        wait_for(lambda: "a router on NATS said hello" in p.output(), 10, "the router's hello")
        with Traffic(SimpleNamespace(router_url=rr.router_url), "roll.localhost") as traffic:
            wait_for(lambda: traffic.answered() > 20, 30, what="traffic flowing")
            for version in ("v1", "v2"):
                push_web(p, tmp_path, "roll", version, instances=2)
                wait_for(lambda: rr.get("roll.localhost") == (200, version + "\n"), 30,
                         version + " served remotely")
                before = traffic.answered()
                wait_for(lambda: traffic.answered() > before + 20, 30, what="traffic after")
        print("%d requests through the remote router, %d failed" % (traffic.answered(),
                                                                    len(traffic.failures)))
        assert traffic.failures == [], (traffic.failures[:10], rr.output())
        assert {"v0", "v1", "v2"} <= traffic.seen, traffic.seen
    finally:
        rr.close()
        p.close()


def test_malformed_messages_on_nats_are_skipped(nats, tmp_path):
    p = nats_platform(nats).start()
    rr = RemoteRouter(nats.url).start()
    try:
        push_web(p, tmp_path, "calm")
        wait_for(lambda: rr.get("calm.localhost") == (200, "v0\n"), 30, "calm served")
        hostile = [
            ("skiff.bus.register", b"not json"),
            ("skiff.bus.register", b"{\"v\":2,\"ttl_ms\":1000,\"route\":{}}"),
            ("skiff.bus.register", b"{\"v\":1,\"ttl_ms\":-5,\"route\":{\"host\":\"a\",\"path\":\"\"}}"),
            ("skiff.bus.register", b"{\"v\":1,\"ttl_ms\":1000,\"route\":{\"host\":7}}"),
            ("skiff.bus.register", b"[1,2,3]"),
            ("skiff.bus.unregister", b"{\"v\":1}"),
            ("skiff.bus.drain", b"{\"v\":1,\"addr\":\"nowhere\",\"id\":-1}"),
            ("skiff.bus.certs", b"\x00\xff"),
            ("skiff.bus.whatever", b"{}"),
            ("skiff.bus.register", b"{" * 100000),
            ("skiff.bus.router.abc", b"{\"type\":\"wake\",\"app_guid\":12}\n\n\x00garbage\n"),
            ("skiff.bus.router.abc", b"{\"type\":\"metrics\",\"apps\":[{\"app_guid\":1e999}]}"),
            ("skiff.bus.router.NOT-HEX", b"{\"type\":\"wake\",\"app_guid\":\"x\"}"),
        ]
        for subject, payload in hostile:
            nats_publish(nats, subject, payload)
        # a register of a route that points at nothing real is still only a route: the app's
        # own route keeps working and both processes are alive
        nats_publish(nats, "skiff.bus.register", json.dumps(
            {"v": 1, "ttl_ms": 1000, "route": {"host": "calm.localhost", "path": "/x",
                                               "app_guid": "0" * 36, "backends": []}}))
        wait_for(lambda: rr.get("calm.localhost", "/x")[0] == 503, 5, "the extra route")
        assert rr.get("calm.localhost") == (200, "v0\n")
        assert rr.proc.poll() is None and p.proc.poll() is None
        # each subject comes on a subscription of its own, read by a thread of its own: the
        # register's may be read before the unregister's, published earlier, is
        wait_for(lambda: all(s in rr.output() for s in
                             ("on skiff.bus.drain", "on skiff.bus.unregister")), 10,
                 "the malformed drain and unregister to be logged")
        log = rr.output()
        assert log.count("skipping NATS messages on skiff.bus.register") == 1, log
    finally:
        rr.close()
        p.close()


def test_an_instance_cannot_reach_nats(nats):
    """NATS carries every route and drain: a tenant that could publish there could send any
    router's traffic anywhere. nats-server listens on the host's loopback and instances live in
    their own network namespaces: the NATS port must not accept a connection from one (tried at
    127.0.0.1 and at every address of the host)."""
    p = nats_platform(nats).start()
    try:
        push_hostile(p, "hostile")
        contained(attack(p, "hostile", "connect", addr=host_side(nats.port)),
                  "an instance must not reach the NATS server")
    finally:
        p.close()


class Backend:
    """An HTTP server on loopback that answers every GET with its name. After hang_next(), the
    next request gets no answer: it waits until release(), then its connection is closed."""

    def __init__(self, name):
        body = (name + "\n").encode()
        self.hang, self.hung, self.released = False, threading.Event(), threading.Event()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if backend.hang:
                    backend.hang = False
                    backend.hung.set()
                    backend.released.wait(60)
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.addr = "127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hang_next(self):
        self.hang = True

    def release(self):
        self.released.set()

    def close(self):
        """Stops listening (connections open stay until their handler ends)."""
        self.server.shutdown()
        self.server.server_close()


def register_by_hand(nats, version, *backends, host="order.localhost"):
    """skiffd's register of a route with backends, as version (of one route)."""
    nats_publish(nats, "skiff.bus.register", json.dumps(
        {"v": 1, "ttl_ms": 30000, "version": version, "count": 1,
         "route": {"host": host, "path": "", "app_guid": "1" * 36,
                   "backends": [{"addr": b.addr} for b in backends]}}))


def never_within(cond, seconds):
    """True when cond() stayed false for seconds (what must not happen, looked for that long)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return False
        time.sleep(0.02)
    return not cond()


def test_a_drain_that_comes_before_its_table_waits_for_it(nats):
    """skiffd sends the table without an instance, then the drain of that instance; a router
    gets the two on different subscriptions, which libnats delivers on threads of their own, so
    the drain can come first. Answered then, the instance would stop while new requests still
    go to it (502s in a rolling push). So a drain is answered only once the table version it
    follows came whole, or once no route has its address. Here the messages are sent by hand
    in the bad order: the drain first, then its table."""
    a, b = Backend("a"), Backend("b")
    rr = RemoteRouter(nats.url).start()
    sniffer = Sniffer(nats)
    sniffer.start()

    def register(version, backend):
        register_by_hand(nats, version, backend)

    def drain(drain_id, backend, **more):
        nats_publish(nats, "skiff.bus.drain",
                     json.dumps({"v": 1, "addr": backend.addr, "id": drain_id, **more}),
                     reply="skiff.bus.drained.by-hand")

    def answered(drain_id):
        return ('"type":"drained","id":%d' % drain_id).encode() in sniffer.data

    try:
        wait_for(lambda: b"PONG" in sniffer.data, 5, "the sniffer's subscription")
        register(100, a)
        wait_for(lambda: rr.get("order.localhost") == (200, "a\n"), 10, "a served")
        drain(5, a, version=101)
        assert never_within(lambda: answered(5), 1.0), rr.output()
        assert rr.get("order.localhost") == (200, "a\n")  # still its table's only instance
        register(101, b)
        wait_for(lambda: answered(5), 10, "the drain's answer once its table came")
        for _ in range(10):  # answered: the table without a is served
            assert rr.get("order.localhost") == (200, "b\n")

        # an older skiffd's drain, without a version: it waits until no route has its address
        drain(6, b)
        assert never_within(lambda: answered(6), 1.0), rr.output()
        nats_publish(nats, "skiff.bus.unregister",
                     json.dumps({"v": 1, "host": "order.localhost", "path": ""}))
        wait_for(lambda: answered(6), 10, "the drain's answer once the route went")
        assert rr.get("order.localhost")[0] == 404
        # a drain of an address no route has is answered at once
        drain(7, a, version=1)
        wait_for(lambda: answered(7), 10, "the answer to a drain of nothing routed")
    finally:
        sniffer.stop()
        rr.close()
        a.close()
        b.close()


def test_an_unregister_that_comes_after_a_newer_register_leaves_the_route(nats):
    """Unmapped, then mapped again at once: skiffd sends an unregister (table N), then a
    register (table N+1), on two subjects a router gets on two threads. Taken in the other
    order, the route would be gone until the next announcement (10 s). An unregister names its
    table version, and one older than the route's last register is passed over."""
    a = Backend("a")
    rr = RemoteRouter(nats.url).start()
    try:
        register_by_hand(nats, 7, a)
        wait_for(lambda: rr.get("order.localhost") == (200, "a\n"), 10, "a served")
        unregister = {"v": 1, "host": "order.localhost", "path": ""}
        nats_publish(nats, "skiff.bus.unregister", json.dumps({**unregister, "version": 6}))
        assert never_within(lambda: rr.get("order.localhost")[0] != 200, 1.0), rr.output()
        nats_publish(nats, "skiff.bus.unregister", json.dumps({**unregister, "version": 8}))
        wait_for(lambda: rr.get("order.localhost")[0] == 404, 10, "the route gone")
        register_by_hand(nats, 9, a)  # an older skiffd's unregister, without a version, is taken
        wait_for(lambda: rr.get("order.localhost") == (200, "a\n"), 10, "a served again")
        nats_publish(nats, "skiff.bus.unregister", json.dumps(unregister))
        wait_for(lambda: rr.get("order.localhost")[0] == 404, 10, "the route gone again")
    finally:
        rr.close()
        a.close()


def test_a_request_sent_again_goes_by_the_newest_table(nats):
    """A request whose pooled connection the instance closed unanswered is sent again on a new
    connection, to another instance if need be. It goes by the router's newest table, not by
    the one it came with: an instance that left the table since (drained, then stopped) is not
    tried. Here x leaves the table (for y) and stops while a request hangs in d; d then closes
    that request's connection and stops listening: the request must end at y, where with its
    first table it would try x and d, both gone, and answer 502."""
    d, x, y = Backend("d"), Backend("x"), Backend("y")
    # one worker: the request that hangs in d goes on the connection pooled from before
    rr = RemoteRouter(nats.url, extra_env={"SKIFF_ROUTER_WORKERS": "1"}).start()
    answers = []
    try:
        register_by_hand(nats, 1, d, x)
        seen = set()
        wait_for(lambda: seen.add(rr.get("order.localhost")) or
                 {(200, "d\n"), (200, "x\n")} <= seen, 10, "d and x both served", interval=0)
        d.hang_next()

        def requests_until_one_hangs():
            while not d.hung.is_set():
                answers.append(rr.get("order.localhost"))
        sender = threading.Thread(target=requests_until_one_hangs)
        sender.start()
        assert d.hung.wait(10), answers
        register_by_hand(nats, 2, d, y)  # x leaves the table ...
        wait_for(lambda: rr.get("order.localhost") == (200, "y\n"), 10, "y served")
        x.close()  # ... and stops, as a drained instance does
        d.close()
        d.release()  # the hanging request's connection closes unanswered
        sender.join(30)
        assert answers[-1] == (200, "y\n"), (answers, rr.output())
    finally:
        d.release()
        rr.close()
        for b in (d, x, y):
            b.close()


def test_a_request_in_flight_through_the_remote_router_finishes_before_its_instance_stops(
        nats, tmp_path):
    """Scale 2 -> 1 while a slow request is in flight to the instance that goes, through the
    remote router only: skiffd's drain request over NATS is answered by that router once the
    request ended, so the request succeeds, and the instance stops well before the 10 s drain
    timeout (the answer, not the timeout, released it)."""
    p = nats_platform(nats).start()
    rr = RemoteRouter(nats.url).start()
    try:
        push_web(p, tmp_path, "slow", "v0", instances=2)
        wait_for(lambda: rr.get("slow.localhost") == (200, "v0\n"), 30, "slow served remotely")
        wait_for(lambda: "a router on NATS said hello" in p.output(), 10, "the router's hello")
        # one slow request in flight to each instance (round robin), so one is to index 1
        results = []
        threads = []
        for _ in range(2):
            t = threading.Thread(target=lambda: results.append(
                rr.get("slow.localhost", "/sleep/2")))
            t.start()
            threads.append(t)
        wait_for(lambda: len(re.findall(r"MARK \d", p.api(
            "GET", "/v1/apps/slow/logs?recent=1")[1])) >= 2, 10, "both requests at the app")
        t0 = time.monotonic()
        status, body = p.api("PATCH", "/v1/apps/slow", {"instances": 1})
        assert status == 200, body
        for t in threads:
            t.join(30)
        assert results == [(200, "v0\n")] * 2, results

        def one_left():
            _, app = p.api("GET", "/v1/apps/slow")
            return [i["state"] for i in app["instances_detail"]] == ["RUNNING"]
        wait_for(one_left, 30, "the drained instance to stop")
        took = time.monotonic() - t0
        print("drained through the remote router and stopped in %.1f s" % took)
        assert took < 8, took
    finally:
        rr.close()
        p.close()


def test_the_router_role_needs_nats_and_a_role_it_knows(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIFF_")}
    skiffd = os.path.join(BIN_DIR, "skiffd")
    r = subprocess.run([skiffd, "--role", "router", "--home", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "give --nats" in r.stderr, (r.returncode, r.stderr)
    for role in ("cell", "controller"):
        r = subprocess.run([skiffd, "--role", role, "--home", str(tmp_path), "--isolation",
                            "process"], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "give --nats" in r.stderr, (role, r.returncode, r.stderr)
    r = subprocess.run([skiffd, "--role", "hub", "--home", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--role is all, controller, cell or router" in r.stderr, \
        (r.returncode, r.stderr)
    # the announce interval must be under the TTL
    env.update({"SKIFF_BUS_ANNOUNCE_MS": "5000", "SKIFF_BUS_TTL_MS": "4000",
                "SKIFF_HOME": str(tmp_path), "SKIFF_BUILTIN_BROKERS": "0"})
    r = subprocess.run([skiffd, "--nats", "nats://127.0.0.1:1", "--isolation", "process",
                        "--api-addr", "127.0.0.1:%d" % free_port(),
                        "--router-addr", "127.0.0.1:%d" % free_port(),
                        "--router-admin-addr", "127.0.0.1:%d" % free_port(),
                        "--router-tls-addr", "127.0.0.1:%d" % free_port(),
                        "--api-tls-addr", "127.0.0.1:%d" % free_port()],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "must be over SKIFF_BUS_ANNOUNCE_MS" in r.stderr, r.stderr


# ---- credentials, permissions and TLS -------------------------------------------------------
#
# nats-server as an operator would run it across hosts (docs/bus.md, "Credentials and
# permissions"): TLS only, with certificates from a CA made here; every client must show a
# certificate of that CA, and the certificate's subject is its user (verify_and_map), whose
# permissions say what it may publish and subscribe to. skiffd is "CN=skiffd", every router
# "CN=skiff-router".

SKIFFD_PERMISSIONS = {
    "publish": ["skiff.>", "$JS.API.>", "$JS.ACK.>", "_INBOX.>"],
    "subscribe": ["skiff.>", "_INBOX.>"],
}
ROUTER_PERMISSIONS = {
    "publish": ["skiff.bus.router.*", "skiff.bus.drained.>"],
    "subscribe": ["skiff.bus.register", "skiff.bus.unregister", "skiff.bus.drain",
                  "skiff.bus.certs"],
}


class SecureNats(NatsServer):
    """A nats-server with TLS required, client certificates mapped to users, and the users'
    permissions; the certificates under store/pki."""

    def __init__(self, store):
        super().__init__(store)
        from test_tls import CA
        pki = os.path.join(store, "pki")
        self.ca = CA(os.path.join(pki, "ca"), "NATS Test CA")
        self.server_cert = self.ca.issue("nats.test", ["localhost", "IP:127.0.0.1"])
        self.skiffd_cert = self.ca.issue("skiffd", ["skiffd.test"], client=True)
        self.router_cert = self.ca.issue("skiff-router", ["router.test"], client=True)
        # another CA, and a client certificate of it with the router's name
        self.other_ca = CA(os.path.join(pki, "other"), "Another CA")
        self.impostor_cert = self.other_ca.issue("skiff-router", ["router.test"], client=True)

    @property
    def url(self):
        return "tls://127.0.0.1:%d" % self.port

    def config(self):
        users = [{"user": "CN=skiffd", "permissions": SKIFFD_PERMISSIONS},
                 {"user": "CN=skiff-router", "permissions": ROUTER_PERMISSIONS}]
        # the nats-server configuration format accepts JSON
        return json.dumps({
            "listen": "127.0.0.1:%d" % self.port,
            "http": "127.0.0.1:%d" % self.monitor_port,
            "server_name": self.name,
            "jetstream": {"store_dir": os.path.join(self.store, self.name)},
            "tls": {"cert_file": self.server_cert[0], "key_file": self.server_cert[1],
                    "ca_file": self.ca.pem, "verify_and_map": True, "timeout": 2},
            "authorization": {"users": users},
        }, indent=1)

    def start(self):
        conf = os.path.join(self.store, "nats.conf")
        with open(conf, "w") as f:
            f.write(self.config())
        log = open(os.path.join(self.store, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(["nats-server", "-c", conf], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.jsz() is not None, 15, "the secure nats-server to answer")
        return self

    def flags(self, who):
        cert, key = self.skiffd_cert if who == "skiffd" else self.router_cert
        return ["--nats-tls-ca", self.ca.pem, "--nats-tls-cert", cert, "--nats-tls-key", key]


@pytest.fixture
def secure_nats():
    store = tempfile.mkdtemp(prefix="skiff-natssec-")
    s = SecureNats(store).start()
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(store, ignore_errors=True)


def secure_platform(nats):
    return Platform(extra_args=["--nats", nats.url, *nats.flags("skiffd")],
                    extra_env={"SKIFF_BUS_ANNOUNCE_MS": str(ANNOUNCE_MS),
                               "SKIFF_BUS_TTL_MS": str(TTL_MS)})


def nats_talk(nats, lines, cafile=None, cert=None, tls=True):
    """Connects as a host process would (TLS with cafile and the client certificate cert, a
    (cert, key) pair, or none; or no TLS at all), sends the protocol lines and a PING, and
    returns what the server answered (b"" when it closed the connection), or the TLS error."""
    raw = socket.create_connection(("127.0.0.1", nats.port), timeout=5)
    try:
        raw.recv(4096)  # INFO, in the clear, before the TLS handshake
        sock = raw
        if tls:
            ctx = ssl.create_default_context(cafile=cafile or nats.ca.pem)
            if cert:
                ctx.load_cert_chain(*cert)
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
        sock.sendall(b"CONNECT {\"verbose\":false}\r\n" + b"".join(lines) + b"PING\r\n")
        got = b""
        while b"PONG" not in got:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        return got
    except (ssl.SSLError, OSError) as e:
        return repr(e).encode()
    finally:
        raw.close()


def pub(subject, payload):
    data = payload.encode() if isinstance(payload, str) else payload
    return b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data)


def test_routers_with_credentials_learn_routes_over_tls_and_others_cannot_forge_them(
        secure_nats, tmp_path):
    nats = secure_nats
    p = secure_platform(nats).start()
    rr = RemoteRouter(nats.url, extra_args=nats.flags("router")).start()
    try:
        push_web(p, tmp_path, "safe")
        wait_for(lambda: rr.get("safe.localhost") == (200, "v0\n"), 30,
                 "the remote router to serve safe over TLS NATS")
        # its lines come back over NATS: the router may publish on its own subject
        wait_for(lambda: "a router on NATS said hello" in p.output(), 10, "the router's hello")
        # both connections are TLS, both authenticated as their certificate's user
        conns = json.load(urllib.request.urlopen(
            "http://127.0.0.1:%d/connz?auth=true" % nats.monitor_port, timeout=5))["connections"]
        names = {c.get("name"): c for c in conns}
        assert names["skiff-router"]["authorized_user"] == "CN=skiff-router", names
        assert names["skiff-router"].get("tls_version"), names
        assert names["skiffd"]["authorized_user"] == "CN=skiffd", names

        forged = json.dumps({"v": 1, "ttl_ms": 60000, "route": {
            "host": "safe.localhost", "path": "", "app_guid": "0" * 36,
            "backends": [{"addr": "127.0.0.1:1", "index": 0, "instance_guid": "x"}]}})
        # no client certificate: the server ends the handshake
        got = nats_talk(nats, [pub("skiff.bus.register", forged)])
        assert b"PONG" not in got, got
        # no TLS at all: refused
        got = nats_talk(nats, [pub("skiff.bus.register", forged)], tls=False)
        assert b"PONG" not in got, got
        # a certificate of another CA with the router's name: refused
        got = nats_talk(nats, [pub("skiff.bus.register", forged)], cert=nats.impostor_cert)
        assert b"PONG" not in got, got
        # the router's own credentials: connected, but the server refuses the publish
        got = nats_talk(nats, [pub("skiff.bus.register", forged),
                               pub("skiff.bus.unregister", '{"v":1,"host":"safe.localhost",'
                                                           '"path":""}'),
                               pub("skiff.bus.drain", '{"v":1,"addr":"127.0.0.1:1","id":1}'),
                               pub("skiff.bus.certs", '{"v":1,"domain":"safe.localhost",'
                                                      '"removed":true}'),
                               pub("skiff.events.orders", "x")],
                        cert=nats.router_cert)
        assert b"PONG" in got, got
        assert got.count(b"Permissions Violation for Publish") == 5, got
        # ... and may not read what other routers send either
        got = nats_talk(nats, [b"SUB skiff.bus.router.* 1\r\n", b"SUB skiff.> 2\r\n"],
                        cert=nats.router_cert)
        assert got.count(b"Permissions Violation for Subscription") == 2, got
        # the routers keep routing correctly, well past the forged entry's would-be effect
        deadline = time.monotonic() + 2 * ANNOUNCE_MS / 1000
        while time.monotonic() < deadline:
            assert rr.get("safe.localhost") == (200, "v0\n")
            time.sleep(0.1)
        assert rr.proc.poll() is None and p.proc.poll() is None
    finally:
        rr.close()
        p.close()


def test_a_router_refuses_a_nats_server_its_ca_does_not_vouch_for(secure_nats):
    nats = secure_nats
    cert, key = nats.router_cert
    rr = RemoteRouter(nats.url, extra_args=["--nats-tls-ca", nats.other_ca.pem,
                                            "--nats-tls-cert", cert, "--nats-tls-key", key])
    rr.start()  # it serves (its saved table) while NATS is not usable
    try:
        wait_for(lambda: "NATS at tls://127.0.0.1:%d refused the connection" % nats.port
                 in rr.output(), 10, "the router to say why it is not connected")
        log = rr.output()
        assert "unable to get local issuer certificate" in log, log
        assert "must be signed by the CA of --nats-tls-ca" in log, log
        conns = json.load(urllib.request.urlopen(
            "http://127.0.0.1:%d/connz" % nats.monitor_port, timeout=5))["connections"]
        assert not [c for c in conns if c.get("name") == "skiff-router"], conns
    finally:
        rr.close()


def test_nats_security_files_that_do_not_load_stop_the_start(secure_nats, tmp_path):
    nats = secure_nats
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIFF_")}
    skiffd = os.path.join(BIN_DIR, "skiffd")
    base = [skiffd, "--role", "router", "--nats", nats.url, "--home", str(tmp_path),
            "--router-addr", "127.0.0.1:%d" % free_port(),
            "--router-admin-addr", "127.0.0.1:%d" % free_port()]
    cert, key = nats.router_cert
    cases = [
        (["--nats-tls-ca", str(tmp_path / "missing.pem")], "--nats-tls-ca"),
        (["--nats-tls-ca", key], "--nats-tls-ca"),
        (["--nats-tls-ca", nats.ca.pem, "--nats-tls-cert", cert], "go together"),
        (["--nats-creds", str(tmp_path / "none.creds")], "--nats-creds"),
    ]
    for extra, message in cases:
        r = subprocess.run(base + extra, env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and message in r.stderr, (extra, r.returncode, r.stderr)


# ---- domain certificates to routers on other hosts ------------------------------------------


class Sniffer(threading.Thread):
    """A host process on a cleartext NATS that reads everything under skiff.> (what anyone on
    the network path could read)."""

    def __init__(self, nats):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", nats.port), timeout=5)
        self.sock.recv(4096)
        self.sock.sendall(b"CONNECT {\"verbose\":false}\r\nSUB skiff.> 1\r\nPING\r\n")
        self.data = b""
        self.stopped = False

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stopped:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not chunk:
                break
            self.data += chunk
            if b"PING\r\n" in chunk:
                self.sock.sendall(b"PONG\r\n")

    def stop(self):
        self.stopped = True
        self.join(5)
        self.sock.close()


def https_router(nats_url, web_ca, extra_args=()):
    """A remote router with HTTPS: a default certificate of its own host (the operator's), the
    domains' certificates from skiffd."""
    from test_tls import install
    rr = RemoteRouter(nats_url, extra_args=list(extra_args))
    rr.tls_port = free_port()
    rr.extra_args += ["--router-tls-addr", "127.0.0.1:%d" % rr.tls_port]
    cert, key = web_ca.issue("router-default.test", ["router-default.test"])
    install(rr.home, "default", cert, key, default=True)
    return rr.start()


def serial_at(port, host, cafile):
    """The serial of the certificate served for host (SNI), whichever names it has."""
    from test_tls import tls_connect
    with tls_connect(port, host, cafile, check_hostname=False) as s:
        return s.getpeercert()["serialNumber"]


def test_a_remote_router_on_tls_nats_serves_a_domains_certificate_and_its_rotation(
        secure_nats, tmp_path):
    from test_tls import CA
    nats = secure_nats
    web_ca = CA(str(tmp_path / "web-ca"), "Web CA")
    p = secure_platform(nats).start()
    rr = https_router(nats.url, web_ca, nats.flags("router"))
    try:
        for args in (("create-org", "acme"), ("create-private-domain", "acme", "acme.test")):
            r = p.cli(*args)
            assert r.returncode == 0, out(r)
        cert, key = web_ca.issue("acme.test", ["acme.test", "*.acme.test"])
        r = p.cli("update-domain", "acme.test", "--cert", cert, "--key", key)
        assert r.returncode == 0, out(r)
        first = wait_for(lambda: (lambda s: s if s == serial_of(cert) else None)(
            serial_at(rr.tls_port, "shop.acme.test", web_ca.pem)), 20,
            "the remote router to serve acme.test's certificate by SNI")
        path = os.path.join(rr.home, "tls", "domains", "acme.test.pem")
        assert os.stat(path).st_mode & 0o777 == 0o600
        # other names still get the router's own default
        assert serial_at(rr.tls_port, "other.test", web_ca.pem) != first

        # rotation, no restart
        cert2, key2 = web_ca.issue("acme.test", ["*.acme.test"], days=60)
        t0 = time.monotonic()
        r = p.cli("update-domain", "acme.test", "--cert", cert2, "--key", key2)
        assert r.returncode == 0, out(r)
        wait_for(lambda: serial_at(rr.tls_port, "shop.acme.test", web_ca.pem) ==
                 serial_of(cert2), 20, "the rotated certificate on the remote router")
        print("update-domain -> served by the remote router in %.0f ms (CLI included)"
              % ((time.monotonic() - t0) * 1000))

        # a router that starts later gets it too (sent when it first says hello)
        late = https_router(nats.url, web_ca, nats.flags("router"))
        try:
            wait_for(lambda: serial_at(late.tls_port, "shop.acme.test", web_ca.pem) ==
                     serial_of(cert2), 20, "a router started later to get the certificate")
        finally:
            late.close()

        # removal: the store, this host's router and the remote router's copy; both then serve
        # their default certificate for the name, connections open going on
        from test_tls import https_get, tls_connect
        local_default = serial_at(p.router_tls_port, "nothing.invalid", p.home + "/tls/ca.pem")
        remote_default = serial_at(rr.tls_port, "nothing.invalid", web_ca.pem)
        open_conn = tls_connect(rr.tls_port, "shop.acme.test", web_ca.pem)
        assert https_get(open_conn, "shop.acme.test")[0] == 404
        t0 = time.monotonic()
        r = p.cli("delete-domain-cert", "acme.test")
        assert r.returncode == 0, out(r)
        wait_for(lambda: serial_at(rr.tls_port, "shop.acme.test", web_ca.pem) == remote_default,
                 20, "the remote router to serve its default certificate for acme.test")
        print("delete-domain-cert -> default served by the remote router in %.0f ms (CLI "
              "included)" % ((time.monotonic() - t0) * 1000))
        wait_for(lambda: serial_at(p.router_tls_port, "shop.acme.test",
                                   p.home + "/tls/ca.pem") == local_default, 10,
                 "this host's router to serve the default certificate for acme.test")
        assert not os.path.exists(path)
        assert not os.path.exists(os.path.join(p.home, "tls", "domains", "acme.test.pem"))
        assert https_get(open_conn, "shop.acme.test")[0] == 404
        open_conn.close()
        assert "acme.test's certificate was removed by skiffd" in rr.output()

        for text in (p.output(), rr.output()):
            assert "PRIVATE KEY" not in text
            assert open(key2).read().splitlines()[1] not in text
        assert p.proc.poll() is None and rr.proc.poll() is None
    finally:
        rr.close()
        p.close()


def serial_of(cert):
    from test_tls import openssl
    return openssl("x509", "-in", cert, "-noout", "-serial").strip().split("=")[1].upper()


def test_over_cleartext_nats_no_key_is_sent(nats, tmp_path):
    from test_tls import CA
    web_ca = CA(str(tmp_path / "web-ca"), "Web CA")
    p = nats_platform(nats).start()
    rr = https_router(nats.url, web_ca)
    sniffer = Sniffer(nats)
    sniffer.start()
    try:
        r = p.cli("create-domain", "shop.test")
        assert r.returncode == 0, out(r)
        cert, key = web_ca.issue("shop.test", ["*.shop.test"])
        r = p.cli("update-domain", "shop.test", "--cert", cert, "--key", key)
        assert r.returncode == 0, out(r)
        # the notice to reload goes, the pair does not
        wait_for(lambda: b"MSG skiff.bus.certs" in sniffer.data, 10, "the certs notice")
        # this host's router serves it (from the store through skiffd's files)
        wait_for(lambda: serial_at(p.router_tls_port, "www.shop.test", web_ca.pem) ==
                 serial_of(cert), 10, "skiffd's own router to serve it")
        # a router saying hello later does not make skiffd send it either
        late = https_router(nats.url, web_ca)
        wait_for(lambda: p.output().count("a router on NATS said hello") >= 2, 15,
                 "the second router's hello")
        late.close()
        time.sleep(0.5)  # whatever skiffd sent after that hello has arrived on loopback
        secret = open(key).read().splitlines()[1].encode()
        assert secret not in sniffer.data and b"PRIVATE KEY" not in sniffer.data
        assert not os.path.exists(os.path.join(rr.home, "tls", "domains", "shop.test.pem"))
        assert serial_at(rr.tls_port, "www.shop.test", web_ca.pem) != serial_of(cert)
        log = p.output()
        assert log.count("domain certificates are not sent to routers on NATS") == 1, log
    finally:
        sniffer.stop()
        rr.close()
        p.close()


# ---- a user and password in the URL ---------------------------------------------------------

SKIFFD_PASSWORD, ROUTER_PASSWORD = "skiffd-s3cret-pw", "router-s3cret-pw"


class PasswordNats(NatsServer):
    """A nats-server (no TLS: loopback) whose users authenticate with passwords and carry the
    permissions of docs/bus.md."""

    def start(self):
        conf = os.path.join(self.store, "nats.conf")
        with open(conf, "w") as f:
            json.dump({
                "listen": "127.0.0.1:%d" % self.port,
                "http": "127.0.0.1:%d" % self.monitor_port,
                "server_name": self.name,
                "jetstream": {"store_dir": os.path.join(self.store, self.name)},
                "authorization": {"users": [
                    {"user": "skiffd", "password": SKIFFD_PASSWORD,
                     "permissions": SKIFFD_PERMISSIONS},
                    {"user": "router", "password": ROUTER_PASSWORD,
                     "permissions": ROUTER_PERMISSIONS}]},
            }, f)
        log = open(os.path.join(self.store, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(["nats-server", "-c", conf], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.jsz() is not None, 15, "the nats-server with users to answer")
        return self

    def url_for(self, user, password):
        return "nats://%s:%s@127.0.0.1:%d" % (user, password, self.port)


def test_a_password_in_the_url_authenticates_and_is_never_shown(tmp_path):
    store = tempfile.mkdtemp(prefix="skiff-natspw-")
    nats = PasswordNats(store).start()
    p = Platform(extra_env={"SKIFF_NATS": nats.url_for("skiffd", SKIFFD_PASSWORD),
                            "SKIFF_BUS_ANNOUNCE_MS": str(ANNOUNCE_MS),
                            "SKIFF_BUS_TTL_MS": str(TTL_MS)}).start()
    rr = RemoteRouter(nats.url, extra_env={
        "SKIFF_NATS": nats.url_for("router", ROUTER_PASSWORD)}).start()
    bad = RemoteRouter(nats.url, extra_env={
        "SKIFF_NATS": nats.url_for("router", "not-the-" + ROUTER_PASSWORD)}).start()
    try:
        push_web(p, tmp_path, "pw")
        wait_for(lambda: rr.get("pw.localhost") == (200, "v0\n"), 30,
                 "the router with the router's password to serve pw")
        wait_for(lambda: "refused the connection" in bad.output(), 10, "the refusal logged")
        assert "Authorization Violation" in bad.output(), bad.output()
        assert "check the credentials" in bad.output(), bad.output()
        assert "nats://***@127.0.0.1:%d" % nats.port in bad.output(), bad.output()
        assert bad.get("pw.localhost")[0] == 404
        # nowhere in what the processes print, nor on their command lines
        for proc in (p.proc, rr.proc, bad.proc):
            with open("/proc/%d/cmdline" % proc.pid, "rb") as f:
                cmdline = f.read()
            assert b"s3cret" not in cmdline, cmdline
        for text in (p.output(), rr.output(), bad.output()):
            assert "s3cret" not in text, text
    finally:
        bad.close()
        rr.close()
        p.close()
        nats.stop()
        shutil.rmtree(store, ignore_errors=True)


# ---- a NATS credentials file (operator mode: JWTs signed with nkeys, made here) --------------


def _crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _b32(b):
    return base64.b32encode(b).decode().rstrip("=")


def _b64url(b):
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


class NKey:
    """An ed25519 key in NATS's nkey encoding (O: operator, A: account, U: user)."""
    PREFIX = {"O": 14 << 3, "A": 0, "U": 20 << 3}

    def __init__(self, kind):
        from cryptography.hazmat.primitives import serialization as ser
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        self.key = Ed25519PrivateKey.generate()
        seed = self.key.private_bytes(ser.Encoding.Raw, ser.PrivateFormat.Raw,
                                      ser.NoEncryption())
        pub = self.key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
        p = self.PREFIX[kind]
        b = bytes([p]) + pub
        self.public = _b32(b + _crc16(b).to_bytes(2, "little"))
        s = bytes([(18 << 3) | (p >> 5), (p & 31) << 3]) + seed
        self.seed = _b32(s + _crc16(s).to_bytes(2, "little"))

    def jwt(self, subject, name, nats):
        """A JWT about subject, signed by this key."""
        header = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
        claims = {"iat": int(time.time()), "iss": self.public, "name": name,
                  "sub": subject.public, "nats": nats}
        claims["jti"] = _b32(hashlib.sha256(json.dumps(claims, sort_keys=True).encode())
                             .digest())
        body = _b64url(json.dumps(claims).encode())
        return "%s.%s.%s" % (header, body, _b64url(self.key.sign((header + "." + body)
                                                                 .encode())))


class OperatorNats(NatsServer):
    """A nats-server in operator mode (accounts and users as JWTs, the way `nsc` sets it up),
    with a user for skiffd and one for routers, each with the permissions of docs/bus.md."""

    def __init__(self, store):
        super().__init__(store)
        self.operator, self.system, self.account = NKey("O"), NKey("A"), NKey("A")
        self.creds = {}

    def user_creds(self, name, permissions):
        user = NKey("U")
        token = self.account.jwt(user, name, {
            "type": "user", "version": 2, "pub": {"allow": permissions["publish"]},
            "sub": {"allow": permissions["subscribe"]}, "subs": -1, "data": -1, "payload": -1})
        path = os.path.join(self.store, name + ".creds")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write("-----BEGIN NATS USER JWT-----\n%s\n------END NATS USER JWT------\n\n"
                    "-----BEGIN USER NKEY SEED-----\n%s\n------END USER NKEY SEED------\n"
                    % (token, user.seed))
        return path, user, token

    def start(self):
        op = self.operator
        limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                  "wildcards": True, "conn": -1, "leaf": -1}
        op_jwt = os.path.join(self.store, "operator.jwt")
        with open(op_jwt, "w") as f:
            f.write(op.jwt(op, "skiff-test", {"type": "operator", "version": 2,
                                              "system_account": self.system.public}))
        accounts = {
            self.system.public: op.jwt(self.system, "SYS", {"type": "account", "version": 2,
                                                            "limits": limits}),
            self.account.public: op.jwt(self.account, "skiff", {
                "type": "account", "version": 2,
                "limits": dict(limits, mem_storage=-1, disk_storage=-1, streams=-1,
                               consumer=-1)}),
        }
        conf = os.path.join(self.store, "nats.conf")
        with open(conf, "w") as f:
            json.dump({"listen": "127.0.0.1:%d" % self.port,
                       "http": "127.0.0.1:%d" % self.monitor_port,
                       "server_name": self.name, "operator": op_jwt,
                       "system_account": self.system.public, "resolver": "MEMORY",
                       "resolver_preload": accounts,
                       "jetstream": {"store_dir": os.path.join(self.store, self.name)}}, f)
        log = open(os.path.join(self.store, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(["nats-server", "-c", conf], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.jsz() is not None, 15, "the operator-mode nats-server to answer")
        return self


def test_credentials_files_authenticate_skiffd_and_routers(tmp_path):
    store = tempfile.mkdtemp(prefix="skiff-natscreds-")
    nats = OperatorNats(store).start()
    skiffd_creds, _, _ = nats.user_creds("skiffd", SKIFFD_PERMISSIONS)
    router_creds, router_user, router_jwt = nats.user_creds("router", ROUTER_PERMISSIONS)
    p = Platform(extra_args=["--nats", nats.url, "--nats-creds", skiffd_creds],
                 extra_env={"SKIFF_BUS_ANNOUNCE_MS": str(ANNOUNCE_MS),
                            "SKIFF_BUS_TTL_MS": str(TTL_MS)}).start()
    rr = RemoteRouter(nats.url, extra_args=["--nats-creds", router_creds]).start()
    try:
        push_web(p, tmp_path, "jwt")
        wait_for(lambda: rr.get("jwt.localhost") == (200, "v0\n"), 30,
                 "the router with the router's credentials file to serve jwt")

        def talk(lines, creds=True):
            with socket.create_connection(("127.0.0.1", nats.port), timeout=5) as s:
                info = json.loads(s.recv(4096).decode().split(" ", 1)[1])
                connect = {"verbose": False}
                if creds:  # what libnats does with the file: the JWT and the nonce signed
                    connect.update(jwt=router_jwt, sig=_b64url(router_user.key.sign(
                        info["nonce"].encode())))
                s.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\n" +
                          b"".join(lines) + b"PING\r\n")
                got = b""
                while b"PONG" not in got and b"-ERR" not in got:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                return got
        forged = json.dumps({"v": 1, "ttl_ms": 60000, "route": {
            "host": "jwt.localhost", "path": "", "backends": [{"addr": "127.0.0.1:1"}]}})
        assert b"Authorization Violation" in talk([pub("skiff.bus.register", forged)], False)
        got = talk([pub("skiff.bus.register", forged)])
        assert b"Permissions Violation for Publish" in got, got
        for _ in range(10):
            assert rr.get("jwt.localhost") == (200, "v0\n")
            time.sleep(0.1)
    finally:
        rr.close()
        p.close()
        nats.stop()
        shutil.rmtree(store, ignore_errors=True)
