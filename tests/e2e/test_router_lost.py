"""skiff-router when an instance is lost: a table drops a backend without draining it (its host
vanished, so nothing will ever come back from it). Requests in flight to it end at once: an
idempotent one without a body, or one whose connect had not finished, goes to another
instance; any other gets a 502 `backend-lost`. A drained instance, or one whose route was
unmapped, keeps its requests in flight until they finish.

The upstream timeout (60 s) and the connect timeout (20 s here) are far above the deadlines
below: only the table change can end these requests in time.
"""
import hashlib
import json
import socket
import threading
import time
import urllib.request

from conftest import wait_for
from test_router import Backend, Client, RawBackend, requests_on, route
from test_router import backends, bus, home, router_factory  # noqa: F401

ANSWER_WITHIN = 3.0  # seconds from the table change; upstream timeout 60 s, connect 20 s


class Silent:
    """A backend that reads requests and answers none until released; each then gets a 200
    naming this backend."""

    def __init__(self, name):
        self.name = name.encode()
        self.seen = []
        self.release = threading.Event()
        self.raw = RawBackend(self._behaviour)
        self.addr = self.raw.addr

    def _behaviour(self, conn):
        for first, headers, f in requests_on(conn):
            n = int(headers.get("content-length", "0"))
            if n:
                f.read(n)
            self.seen.append(first.split()[1])
            self.release.wait(60)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" %
                         (len(self.name), self.name))

    def close(self):
        self.release.set()
        self.raw.close()


def send_request(client, method, path, host, body=None):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    client.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))


def set_table(bus, routes, draining=()):
    """A table as skiffd sends it: with "draining", the instances it stops on purpose."""
    with bus.lock:
        bus.version += 1
        bus.routes = routes
        msg = {"type": "routes", "version": bus.version, "routes": routes}
        if draining:
            msg["draining"] = list(draining)
        data = (json.dumps(msg) + "\n").encode()
        for c in list(bus.conns):
            c.sendall(data)


def new_connections(r):
    for line in r.admin("/metrics")[1].splitlines():
        if line.startswith('skiff_router_upstream_connections_total{reused="false"} '):
            return float(line.rsplit(" ", 1)[1])
    return 0


def table_served(r, bus):
    wait_for(lambda: r.metric("skiff_router_route_table_version") == bus.version, 10,
             "the router to take the table")


def test_requests_to_a_lost_instance_go_elsewhere_or_get_a_502_at_once(router_factory, bus,
                                                                       backends):
    good = backends("good")
    hang = Silent("hang")
    # a listener that never accepts, its queue filled: the router's connect to it never ends
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    stuck_addr = "127.0.0.1:%d" % stuck.getsockname()[1]
    filler = socket.create_connection(stuck.getsockname(), timeout=5)
    try:
        r = router_factory([route("app.localhost", [hang]), route("b.localhost", [stuck_addr])],
                           "--workers", "1", "--connect-timeout-ms", "20000")
        get, post, connecting = (Client(r.port, timeout=30) for _ in range(3))
        send_request(get, "GET", "/get", "app.localhost")
        send_request(post, "POST", "/post", "app.localhost", b"x" * 1000)
        wait_for(lambda: sorted(hang.seen) == ["/get", "/post"], 10,
                 "both requests to reach the silent instance")
        body = b"y" * 5000
        send_request(connecting, "POST", "/late", "b.localhost", body)
        wait_for(lambda: new_connections(r) >= 3, 10,
                 "the router to connect to the listener that never accepts")
        # both instances' hosts vanish: the table brings the good instance instead
        t0 = time.monotonic()
        set_table(bus, [route("app.localhost", [good]), route("b.localhost", [good])])

        resp = get.response()
        took = time.monotonic() - t0
        assert resp.status == 200 and resp.json()["name"] == "good", (resp.status, resp.body)
        assert resp.json()["path"] == "/get"
        assert took < ANSWER_WITHIN, took

        resp = post.response()
        took = time.monotonic() - t0
        assert resp.status == 502, (resp.status, resp.body)
        assert resp.headers["x-skiff-router-error"] == "backend-lost"
        assert b"not idempotent" in resp.body
        assert took < ANSWER_WITHIN, took
        assert post.closed()

        # its connect had not finished: nothing of it was sent, so it goes elsewhere, body
        # and all, whatever its method
        resp = connecting.response()
        took = time.monotonic() - t0
        assert resp.status == 200, (resp.status, resp.body)
        sent = resp.json()
        assert sent["name"] == "good" and sent["path"] == "/late" and sent["method"] == "POST"
        assert sent["body_sha"] == hashlib.sha256(body).hexdigest()
        assert took < ANSWER_WITHIN, took

        # the connection that carried the GET goes on with the next request
        assert get.request(path="/next").json()["name"] == "good"
        assert good.hits == 3
        assert "backend %s left the table without a drain" % hang.addr in r.log()
        assert "backend %s left the table without a drain" % stuck_addr in r.log()
        for c in (get, post, connecting):
            c.close()
    finally:
        hang.close()
        filler.close()
        stuck.close()


def test_a_put_without_body_is_replayed_and_a_delete_with_one_is_not(router_factory, bus,
                                                                    backends):
    good = backends("good")
    hang = Silent("hang")
    try:
        r = router_factory([route("app.localhost", [hang])], "--workers", "1")
        put, delete = Client(r.port, timeout=30), Client(r.port, timeout=30)
        send_request(put, "PUT", "/put", "app.localhost")
        send_request(delete, "DELETE", "/delete", "app.localhost", b"{}")
        wait_for(lambda: sorted(hang.seen) == ["/delete", "/put"], 10, "both requests")
        set_table(bus, [route("app.localhost", [good])])
        resp = put.response()
        assert resp.status == 200 and resp.json()["method"] == "PUT", resp.body
        resp = delete.response()
        assert resp.status == 502 and resp.headers["x-skiff-router-error"] == "backend-lost"
        assert b"body was not kept" in resp.body
        put.close()
        delete.close()
    finally:
        hang.close()


def test_a_lost_instance_with_no_other_is_a_502_and_its_idle_connections_close(
        router_factory, bus):
    hang = Silent("hang")
    events = []

    def kept_alive(conn):
        for _ in requests_on(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nkept")
        events.append("closed")

    kept = RawBackend(kept_alive)
    try:
        r = router_factory([route("app.localhost", [hang]), route("k.localhost", [kept])],
                           "--workers", "1")
        # a kept-alive connection to "kept" waits in the pool (for 30 s)
        assert r.get("k.localhost").body == b"kept"
        get = Client(r.port, timeout=30)
        send_request(get, "GET", "/only", "app.localhost")
        wait_for(lambda: hang.seen == ["/only"], 10, "the request to reach the instance")
        # both hosts vanish; the routes stay, with no instance left
        set_table(bus, [route("app.localhost", []), route("k.localhost", [])])
        resp = get.response()
        assert resp.status == 502 and resp.headers["x-skiff-router-error"] == "backend-lost"
        assert b"no other instance" in resp.body
        get.close()
        wait_for(lambda: events == ["closed"], ANSWER_WITHIN,
                 "the idle connection to the lost instance to close")
        assert r.get("k.localhost").status == 503
    finally:
        hang.close()
        kept.close()


def test_drained_or_unmapped_instances_finish_their_requests(router_factory, bus, backends):
    good = backends("good")
    drained, unmapped = Silent("drained"), Silent("unmapped")
    try:
        r = router_factory([route("app.localhost", [drained]),
                            route("old.localhost", [unmapped])], "--workers", "1")
        a, b = Client(r.port, timeout=30), Client(r.port, timeout=30)
        send_request(a, "GET", "/a", "app.localhost")
        send_request(b, "GET", "/b", "old.localhost")
        wait_for(lambda: drained.seen == ["/a"] and unmapped.seen == ["/b"], 10,
                 "both requests to reach their instances")
        # skiffd stops one instance on purpose (it says so), and unmaps the other's route
        set_table(bus, [route("app.localhost", [good])], draining=[drained.addr])
        table_served(r, bus)
        # the worker has handled the table change once it served a request after it
        assert r.get("app.localhost").json()["name"] == "good"
        drained.release.set()
        unmapped.release.set()
        assert a.response().body == b"drained"
        assert b.response().body == b"unmapped"
        assert "left the table without a drain" not in r.log()
        a.close()
        b.close()
    finally:
        drained.close()
        unmapped.close()


def test_streams_to_a_lost_h2c_instance_go_elsewhere_or_get_a_502(router_factory, bus):
    from test_router_h2 import MuxInstance
    silent = MuxInstance(hook=lambda ctx, sid, stream: True)  # takes streams, answers none
    good = MuxInstance()
    try:
        r = router_factory([dict(route("grpc.localhost", [silent]), protocol="http2")],
                           "--workers", "1")
        get, post = Client(r.port, timeout=30), Client(r.port, timeout=30)
        send_request(get, "GET", "/get", "grpc.localhost")
        send_request(post, "POST", "/post", "grpc.localhost", b"p" * 100)
        wait_for(lambda: len(silent.requests) == 2, 10, "both streams to reach the instance")
        t0 = time.monotonic()
        set_table(bus, [dict(route("grpc.localhost", [good]), protocol="http2")])
        resp = get.response()
        assert resp.status == 200 and resp.trailers.get("grpc-status") == "0", resp.status
        assert [dict(s["headers"])[":path"] for s in good.requests] == ["/get"]
        resp = post.response()
        assert resp.status == 502 and resp.headers["x-skiff-router-error"] == "backend-lost"
        assert time.monotonic() - t0 < ANSWER_WITHIN
        get.close()
        post.close()
    finally:
        silent.backend.close()
        good.backend.close()


def test_a_request_is_sent_again_only_to_its_own_app(router_factory, bus, backends):
    other = backends("other")
    hang = Silent("hang")
    try:
        r = router_factory([route("app.localhost", [hang], path="/v1")], "--workers", "1")
        get = Client(r.port, timeout=30)
        send_request(get, "GET", "/v1/admin/x", "app.localhost")
        wait_for(lambda: hang.seen == ["/v1/admin/x"], 10, "the request to reach the instance")
        # the instance is lost, and the same table gives /v1/admin to another app
        set_table(bus, [route("app.localhost", [], path="/v1"),
                        route("app.localhost", [other], path="/v1/admin", app="other")])
        resp = get.response()
        assert resp.status == 502 and resp.headers["x-skiff-router-error"] == "backend-lost"
        assert other.hits == 0
        get.close()
    finally:
        hang.close()


def test_an_instance_failing_readiness_finishes_its_requests_in_flight(platform):
    """An instance whose readiness check fails leaves the table as a drained one does: its
    process still runs, so a POST in flight to it (which the router cannot send again) gets
    its answer, not a 502 `backend-lost`."""
    from conftest import app_source, deploy_bits, instance_url

    # tests/e2e/apps/readiness.py: /readyz follows GET /unready (sent to the instance itself); a
    # POST is read whole, then answered once GET /release came; GET /posts counts the POSTs read
    p = platform
    deploy_bits(p, "held", [("Procfile", b"web: python3 app.py\n"),
                            ("app.py", app_source("readiness.py"))],
                {"instances": 1, "readiness_health_check_type": "http",
                 "readiness_health_check_http_endpoint": "/readyz",
                 "readiness_health_check_interval": 1})
    def routed():
        c = Client(p.router_port, timeout=30)
        ok = c.request(host="held.localhost").status == 200
        c.close()
        return ok

    p.wait_for(routed, 60, "the instance routed")
    status, app = p.api("GET", "/v1/apps/held")
    inst = app["instances_detail"][0]

    def on_instance(path):
        with urllib.request.urlopen(instance_url(inst, path), timeout=10) as r:
            assert r.status == 200
            return r.read().decode()

    post = Client(p.router_port, timeout=60)
    send_request(post, "POST", "/work", "held.localhost", b"z" * 3000)
    p.wait_for(lambda: on_instance("/posts") == "1", 10, "the POST to reach the instance")
    on_instance("/unready")
    p.wait_for(lambda: p.api("GET", "/v1/apps/held")[1]["instances_detail"][0]["ready"] is False,
               30, "the instance not ready")

    def out_of_table():
        c2 = Client(p.router_port, timeout=30)
        resp = c2.request(host="held.localhost")
        c2.close()
        return resp.status == 503

    p.wait_for(out_of_table, 30, "the instance out of the route table")
    on_instance("/release")
    resp = post.response()
    assert resp.status == 200, (resp.status, resp.headers, resp.body)
    assert resp.body == b"got 3000\n"
    post.close()
