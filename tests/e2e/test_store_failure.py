"""A store that fails a read (here: its routes table renamed behind skiffd's back) must not be
taken for a store without routes: no empty route table goes to the routers, no app is shown
without its routes, and no instance starts with an environment that lacks them."""
import json
import os
import socket
import sqlite3
import threading
import urllib.error
import urllib.request

import pytest

from conftest import Platform, deploy_bits

# A web app that says which instance answered, and exits at once on /exit (a crash).
APP = b"""
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/exit":
            os._exit(3)
        body = os.environ["CF_INSTANCE_GUID"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


def deploy(p, name):
    deploy_bits(p, name, [("Procfile", b"web: python3 app.py\n"), ("app.py", APP)],
                {"instances": 1})


def get(p, host, path="/"):
    """(status, body) of a request through the platform's router; network errors are 0."""
    req = urllib.request.Request(p.router_url + path, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, repr(e)


class FakeRouter:
    """A router's end of the bus (docs/bus.md) that keeps every message skiffd sends it."""

    def __init__(self, home, index):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.path.join(home, "run", "bus.sock"))
        hello = {"type": "hello", "pid": os.getpid(), "router_index": index}
        self.sock.sendall((json.dumps(hello) + "\n").encode())
        self.messages = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        f = self.sock.makefile("rb")
        for line in f:
            with self.lock:
                self.messages.append(json.loads(line))

    def tables(self):
        with self.lock:
            return [m for m in self.messages if m.get("type") == "routes"]

    def close(self):
        self.sock.close()


def shop_route(table):
    return next((r for r in table["routes"] if r["host"] == "shop.localhost"), None)


def rename_table(home, old, new):
    db = sqlite3.connect(os.path.join(home, "skiff.db"), timeout=10)
    try:
        db.execute(f"ALTER TABLE {old} RENAME TO {new}")
        db.commit()
    finally:
        db.close()


def recent_logs(p, name):
    status, text = p.api("GET", f"/v1/apps/{name}/logs?recent=1")
    assert status == 200, text
    return text


@pytest.fixture
def shop():
    p = Platform().start()
    try:
        deploy(p, "shop")
        p.wait_for(lambda: get(p, "shop.localhost")[0] == 200, 60, "shop to answer")
        yield p
    finally:
        p.close()


def test_routes_unreadable_keeps_the_routers_on_their_last_table(shop):
    p = shop
    first = FakeRouter(p.home, 7)
    late = None
    try:
        table = p.wait_for(lambda: first.tables() and first.tables()[-1], 10, "a route table")
        before = shop_route(table)
        assert before and len(before["backends"]) == 1, table
        old_guid = before["backends"][0]["instance_guid"]

        rename_table(p.home, "routes", "routes_away")
        # the API does not show the app as one without routes
        status, body = p.api("GET", "/v1/apps/shop")
        assert status == 500 and body["error"]["code"] == "internal", body
        status, body = p.api("GET", "/v1/apps/shop/env")
        assert status == 500 and body["error"]["code"] == "internal", body
        # a router that connects meanwhile gets no table (it keeps its own last one)
        late = FakeRouter(p.home, 8)
        # the instance crashes: it leaves the table, and its restart needs its routes
        get(p, "shop.localhost", "/exit")
        p.wait_for(lambda: "cannot read the app's routes" in recent_logs(p, "shop"), 30,
                   "the restart to fail for want of the app's routes")

        rename_table(p.home, "routes_away", "routes")

        def restarted():
            route = shop_route(first.tables()[-1])
            backends = route["backends"] if route else []
            return len(backends) == 1 and backends[0]["instance_guid"] != old_guid
        # restarts that failed back off like crashes (three at once, then 30 s)
        p.wait_for(restarted, 90, "the restarted instance in the routers' table")
        # every table that went out had the route: none was sent while the store failed
        assert all(shop_route(t) for t in first.tables()), first.tables()
        late_tables = p.wait_for(late.tables, 10, "a table for the router that came late")
        assert all(shop_route(t) for t in late_tables), late_tables
        versions = [t["version"] for t in first.tables()]
        assert versions == sorted(versions), versions
        # said once, not at every retry, and its end too
        p.wait_for(lambda: "the store answers again" in p.output(), 10, "the recovery message")
        assert p.output().count("cannot read the route table from the store") == 1, p.output()

        status, app = p.api("GET", "/v1/apps/shop")
        assert status == 200 and app["routes"], app
        status, env = p.api("GET", "/v1/apps/shop/env")
        assert status == 200, env
        assert env["system"]["VCAP_APPLICATION"]["uris"] == ["shop.localhost"], env
    finally:
        first.close()
        if late:
            late.close()
