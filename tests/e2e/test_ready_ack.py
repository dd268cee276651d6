"""RUNNING, as the API shows it, means the routers have the instance (docs/bus.md "ack"): every
instance shown RUNNING is in the router's table at that moment, so a request sent as soon as
`skiff push`, `restart` or `scale` returns is never the router's own 503; and a router that does
not acknowledge its tables delays that by BUS_ACK_TIMEOUT_MS at most (logged), never for ever."""
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, WEB_APP, Platform, deploy_bits, out

PYTHON_WEB = os.path.join(ROOT, "examples", "python-web")


def router_backends(p):
    """The backend addresses of the table the router serves now (its admin /routes)."""
    req = urllib.request.Request(f"http://127.0.0.1:{p.router_admin_port}/routes",
                                 headers={"Authorization": "Bearer " + p.token})
    with urllib.request.urlopen(req, timeout=10) as r:
        table = json.load(r)
    return {b for route in table["routes"] for b in route["backends"]}


def address(inst):
    return inst.get("address") or "127.0.0.1:%d" % inst["port"]


def shown_running(p, name):
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return [i for i in app["instances_detail"]
            if i["state"] == "RUNNING" and i.get("process_type", "web") == "web"]


def get(p, host):
    req = urllib.request.Request(p.router_url + "/", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def from_zero(p, name, n):
    """Scales name to 0, waits until none runs, then asks for n instances through the API
    (which answers at once; the instances start after)."""
    r = p.cli("scale", name, "-i", "0")
    assert r.returncode == 0, out(r)
    p.wait_for(lambda: not shown_running(p, name), 30, "no instance running")
    status, app = p.api("PATCH", f"/v1/apps/{name}", {"instances": n})
    assert status == 200, app


def check_running_are_routed(p, name):
    """Every instance the API shows RUNNING is in the router's table already; returns them."""
    running = shown_running(p, name)
    backends = router_backends(p)
    missing = [address(i) for i in running if address(i) not in backends]
    assert not missing, f"shown RUNNING but not in the router's table: {missing} ({backends})"
    return running


def test_instances_shown_running_are_in_the_routers_table_at_once():
    p = Platform().start()
    try:
        r = p.cli("push", "quick", "-p", PYTHON_WEB)
        assert r.returncode == 0, out(r)
        status, text = get(p, "quick.localhost")  # at once: no retry
        assert status == 200, (status, text)

        r = p.cli("restart", "quick")
        assert r.returncode == 0, out(r)
        status, text = get(p, "quick.localhost")
        assert status == 200, (status, text)

        # from none to N instances, N times: each poll of the API that shows an instance
        # RUNNING finds it in the router's table, and a request sent then is answered by one
        for n in range(1, 5):
            from_zero(p, "quick", n)
            deadline = time.monotonic() + 60
            while True:
                running = check_running_are_routed(p, "quick")
                if running:
                    status, text = get(p, "quick.localhost")
                    assert status == 200, (n, status, text)
                if len(running) == n:
                    break
                assert time.monotonic() < deadline, f"{n} instances never all RUNNING"
                time.sleep(0.005)
    finally:
        p.close()


class SilentRouter:
    """A process on the bus socket that says hello as a router and never acknowledges a table:
    what it sends that looks like an acknowledgement is not one."""

    def __init__(self, home, index):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.path.join(home, "run", "bus.sock"))
        self.sock.sendall(json.dumps({"type": "hello", "pid": os.getpid(),
                                      "router_index": index}).encode() + b"\n")
        self.sock.sendall(b'{"type":"ack"}\n{"type":"ack","version":"99999999999999"}\n'
                          b'{"type":"ack","version":-1}\n{"type":"ack","version":1.5e300}\n'
                          b'{"type":"ack","version":[1]}\n{"type":"ack","version":null}\n')
        self.tables = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            self.tables += buf.count(b'"type":"routes"')
            buf = buf[buf.rfind(b"\n") + 1:]

    def close(self):
        self.sock.close()


def test_a_router_that_never_acknowledges_is_not_waited_for_beyond_the_bound():
    p = Platform().start()
    silent = None
    try:
        p.wait_for(lambda: os.path.exists(os.path.join(p.home, "run", "bus.sock")), 10,
                   "the bus socket")
        silent = SilentRouter(p.home, 7)
        deploy_bits(p, "held", [("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)],
                    {"instances": 1})
        # shown RUNNING all the same, once the bound passed, and the real router has it
        p.wait_for(lambda: shown_running(p, "held"), 30, "held RUNNING")
        check_running_are_routed(p, "held")
        assert silent.tables >= 1, "the silent router got no table"
        status, text = get(p, "held.localhost")
        assert status == 200, (status, text)
        p.wait_for(lambda: "router 7 did not acknowledge a route table with instance" in
                   p.output(), 10, "the silent router logged")
        assert p.proc.poll() is None and "Sanitizer" not in p.output()
    finally:
        if silent:
            silent.close()
        p.close()


@pytest.mark.skipif(shutil.which("nats-server") is None,
                    reason="nats-server is not installed (scripts/deps.sh)")
def test_a_router_on_nats_has_the_instance_when_it_is_shown_running(tmp_path):
    from test_bus_nats import RemoteRouter, nats_platform, push_web
    from test_fabric_nats import NatsServer
    store = tempfile.mkdtemp(prefix="skiff-readyack-")
    nats = NatsServer(store).start()
    p = nats_platform(nats).start()
    rr = RemoteRouter(nats.url).start()
    try:
        p.wait_for(lambda: "a router on NATS said hello" in p.output(), 20, "the router's hello")
        push_web(p, tmp_path, "far")
        assert rr.get("far.localhost") == (200, "v0\n")  # at once: no retry
        for n in range(1, 5):
            from_zero(p, "far", n)
            p.wait_for(lambda: shown_running(p, "far"), 60, "an instance RUNNING", interval=0.005)
            assert rr.get("far.localhost") == (200, "v0\n"), n
        assert "did not acknowledge" not in p.output(), p.output()
    finally:
        rr.close()
        p.close()
        nats.stop()
        shutil.rmtree(store, ignore_errors=True)
