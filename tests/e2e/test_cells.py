"""skiffd --role cell: an executor that takes start and stop requests over NATS and reports on
it (docs/bus.md "Cells"). Here the test plays the leader: it speaks NATS's text protocol with
the controller's credentials, asks two cells (each its own home, port range and NATS user) to
start instances of a droplet on this machine's file system, and reads their heartbeats, state
reports and batched output. A cell's credentials cannot send another cell a start (the server
refuses the publish), nor can a client without credentials connect. A cell killed with kill -9
and started again keeps the instance its shim kept running (adopted, same guid and address).

The first tests play the leader themselves; the last ones run a controller (`--role
controller` on PostgreSQL) that places instances on the two cells, which fetch the droplet by
its digest from the controllers they were given (--controller-url), each with its own token,
which reads only the droplets placed on that cell (src/cell/README.md)."""
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import BIN_DIR, free_port, http_get, wait_for
from controllers import psql
from test_bus_nats import ROUTER_PERMISSIONS, RemoteRouter
from test_fabric_nats import NatsServer

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None,
                                reason="nats-server is not installed (scripts/deps.sh)")

CELL_A, CELL_B = "a" * 32, "b" * 32
PASSWORDS = {"skiffd": "ctl-pw-1", "router": "router-pw-1", CELL_A: "cell-a-pw-1",
             CELL_B: "cell-b-pw-1"}
CONTROLLER_PERMISSIONS = {"publish": ["skiff.>", "$JS.API.>", "$JS.ACK.>", "_INBOX.>"],
                          "subscribe": ["skiff.>", "_INBOX.>"]}


def cell_permissions(cell_id):
    """docs/bus.md: a cell publishes only its own reports, subscribes only to its requests."""
    return {"publish": ["skiff.cell.%s.up" % cell_id],
            "subscribe": ["skiff.cell.%s.req" % cell_id]}


class UsersNats(NatsServer):
    def start(self):
        conf = os.path.join(self.store, "nats.conf")
        users = [{"user": "skiffd", "password": PASSWORDS["skiffd"],
                  "permissions": CONTROLLER_PERMISSIONS}]
        users += [{"user": c, "password": PASSWORDS[c], "permissions": cell_permissions(c)}
                  for c in (CELL_A, CELL_B)]
        users.append({"user": "router", "password": PASSWORDS["router"],
                      "permissions": ROUTER_PERMISSIONS})
        with open(conf, "w") as f:
            json.dump({"listen": "127.0.0.1:%d" % self.port,
                       "http": "127.0.0.1:%d" % self.monitor_port,
                       "server_name": self.name,
                       "jetstream": {"store_dir": os.path.join(self.store, self.name)},
                       "authorization": {"users": users}}, f)
        log = open(os.path.join(self.store, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(["nats-server", "-c", conf], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.varz(), 15, "the nats-server with users to answer")
        return self

    def varz(self):
        import urllib.request
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/varz" % self.monitor_port,
                                        timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def url_for(self, user):
        return "nats://%s:%s@127.0.0.1:%d" % (user, PASSWORDS[user], self.port)


class Client:
    """NATS's text protocol, enough for a test: CONNECT, SUB, PUB, and reading MSGs."""

    def __init__(self, port, user=None, password=None, host="127.0.0.1"):
        self.s = socket.create_connection((host, port), timeout=5)
        self.buf = b""
        self._line()  # INFO
        connect = {"verbose": False, "pedantic": False}
        if user:
            connect.update(user=user, **{"pass": password})
        self.s.sendall(b"CONNECT %s\r\nPING\r\n" % json.dumps(connect).encode())
        self.errors = []
        self.msgs = []
        self.sid = 0
        self._until(lambda: self._pong, 5)

    _pong = False

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def _read_one(self):
        line = self._line()
        if line.startswith("MSG "):
            parts = line.split()
            n = int(parts[-1])
            while len(self.buf) < n + 2:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            self.msgs.append((parts[1], json.loads(data)))
        elif line == "PING":
            self.s.sendall(b"PONG\r\n")
        elif line == "PONG":
            self._pong = True
        elif line.startswith("-ERR"):
            self.errors.append(line)

    def _until(self, cond, timeout):
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("NATS: condition not met")
            self.s.settimeout(left)
            try:
                self._read_one()
            except socket.timeout:
                raise TimeoutError("NATS: condition not met")

    def sub(self, subject):
        self.sid += 1
        self.s.sendall(b"SUB %s %d\r\n" % (subject.encode(), self.sid))
        self.flush()

    def pub(self, subject, obj):
        data = json.dumps(obj).encode()
        self.s.sendall(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data))
        self.flush()

    def flush(self):
        self._pong = False
        self.s.sendall(b"PING\r\n")
        self._until(lambda: self._pong, 5)

    def wait_msg(self, pred, timeout, what):
        """The first message (subject, body) so far or to come for which pred is true."""
        found = []

        def seen():
            for m in self.msgs:
                if pred(*m):
                    found.append(m)
                    return True
            return False
        try:
            self._until(seen, timeout)
        except TimeoutError:
            raise AssertionError("no NATS message: %s" % what)
        return found[0]

    def close(self):
        self.s.close()


class Cell:
    """skiffd --role cell with its own home (its id written there first, as an operator does
    to name it in NATS permissions), port range and NATS user."""

    def __init__(self, nats, cell_id, zone, ports):
        self.nats, self.id, self.zone, self.ports = nats, cell_id, zone, ports
        self.home = tempfile.mkdtemp(prefix="skiff-cell-")
        with open(os.path.join(self.home, "cell-id"), "w") as f:
            f.write(cell_id + "\n")
        self.proc = None
        self.controllers = []  # --controller-url, in order

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKIFF_")}
        env.update(HOME=self.home, SKIFF_NATS=self.nats.url_for(self.id),
                   SKIFF_PORT_MIN=str(self.ports[0]), SKIFF_PORT_MAX=str(self.ports[1]),
                   SKIFF_CELL_HEARTBEAT_MS="300", SKIFF_PREWARM="1", SKIFF_GRACE_MS="2000")
        log = open(os.path.join(self.home, "cell.out"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "skiffd"), "--role", "cell", "--home", self.home,
             "--zone", self.zone, "--memory", "2G"]
            + [arg for url in self.controllers for arg in ("--controller-url", url)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def output(self):
        with open(os.path.join(self.home, "cell.out"), errors="replace") as f:
            return f.read()[-20000:]

    stuck = False  # a stop it did not obey within 30 s (then killed)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.stuck = True
                self.proc.kill()
                self.proc.wait()

    def close(self):
        self.stop()
        # what a kill -9 of the cell left under its shims
        for name in os.listdir(os.path.join(self.home, "run")) if os.path.isdir(
                os.path.join(self.home, "run")) else []:
            if name.startswith("instance-") and name.endswith(".pid"):
                try:
                    with open(os.path.join(self.home, "run", name)) as f:
                        os.killpg(int(f.read().split()[0]), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        shutil.rmtree(self.home, ignore_errors=True)


WEB_APP = b"""import os, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("instance %s\\n" % os.environ["CF_INSTANCE_INDEX"]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
print("listening on", os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


@pytest.fixture
def setup():
    store = tempfile.mkdtemp(prefix="skiff-cells-")
    nats = UsersNats(store).start()
    droplet = os.path.join(store, "droplet")
    os.makedirs(os.path.join(droplet, "app"))
    with open(os.path.join(droplet, "app", "app.py"), "wb") as f:
        f.write(WEB_APP)
    base = 40000 + (os.getpid() % 500) * 20
    cells = [Cell(nats, CELL_A, "zone-a", (base, base + 9)),
             Cell(nats, CELL_B, "zone-b", (base + 10, base + 19))]
    ctl = None
    try:
        for c in cells:
            c.start()
        ctl = Client(nats.port, "skiffd", PASSWORDS["skiffd"])
        ctl.sub("skiff.cell.*.up")
        yield nats, ctl, cells, droplet
        for c in cells:
            c.stop()
            text = c.output()
            assert not c.stuck, "the cell did not exit on SIGTERM:\n" + text
            assert "Sanitizer" not in text and "runtime error" not in text, text
            assert "cannot make a warm container" not in text, text  # the warm pool works
    finally:
        if ctl:
            ctl.close()
        for c in cells:
            c.close()
        nats.stop()
        shutil.rmtree(store, ignore_errors=True)


def launch(droplet, index=0, guid=None, digest="sha256:" + "0" * 64):
    return {"app_guid": "0b3a0c0e-1111-4222-8333-444455556666", "app_name": "shop",
            "process_type": "web", "index": index,
            "instance_guid": guid or str(uuid.uuid4()),
            "droplet_guid": "7b3a0c0e-1111-4222-8333-444455556666",
            "droplet_digest": digest, "droplet_path": droplet,
            "command": "python3 app.py", "memory_mb": 128, "health": "port",
            "uris": ["shop.localhost"], "user_env": []}


def heartbeat(ctl, cell_id, pred=lambda hb: True, timeout=15, what="a heartbeat"):
    subject = "skiff.cell.%s.up" % cell_id
    _, hb = ctl.wait_msg(lambda s, m: s == subject and m.get("type") == "heartbeat" and pred(m),
                         timeout, what)
    return hb


def state_of(ctl, cell_id, guid, state, timeout=30):
    subject = "skiff.cell.%s.up" % cell_id
    _, m = ctl.wait_msg(lambda s, b: s == subject and b.get("type") == "state" and
                        b.get("guid") == guid and b.get("state") == state, timeout,
                        "%s of %s on cell %s" % (state, guid, cell_id[:4]))
    return m


def answers(addr):
    try:
        return http_get("http://%s/" % addr)
    except OSError:
        return 0, ""


def in_pool(addr):
    """A container's address in the default pool (10.244.0.0/16), on the port instances
    listen on inside it."""
    return re.fullmatch(r"10\.244\.\d+\.\d+:8080", addr) is not None


def serves(addr, index):
    return answers(addr) == (200, "instance %d\n" % index)


def test_cells_announce_themselves_and_run_what_the_leader_asks(setup):
    nats, ctl, (a, b), droplet = setup
    for c in (a, b):
        hb = heartbeat(ctl, c.id, what="cell %s's heartbeat" % c.zone)
        assert hb["v"] == 1 and hb["zone"] == c.zone and hb["id"] == c.id, hb
        assert hb["memory_capacity_bytes"] == 2 << 30 and hb["interval_ms"] == 300, hb
        assert hb["instances"] == [], hb
    # one instance on each cell
    guids = [str(uuid.uuid4()), str(uuid.uuid4())]
    for i, c in enumerate((a, b)):
        ctl.pub("skiff.cell.%s.req" % c.id,
                {"v": 1, "op": "start", "launch": launch(droplet, i, guids[i])})
    addrs = []
    for i, c in enumerate((a, b)):
        starting = state_of(ctl, c.id, guids[i], "STARTING")
        running = state_of(ctl, c.id, guids[i], "RUNNING")
        assert running["addr"] == starting["addr"], (starting, running)
        addrs.append(running["addr"])
        assert in_pool(running["addr"]), running  # a container of the cell's own
        wait_for(lambda: serves(addrs[i], i), 10, "instance %d to answer" % i)
        hb = heartbeat(ctl, c.id, lambda m: [x["state"] for x in m["instances"]] == ["RUNNING"],
                       what="one instance, running")
        inst = hb["instances"][0]
        assert inst["guid"] == guids[i] and inst["state"] == "RUNNING", hb
        assert inst["addr"] == addrs[i] and inst["index"] == i, hb
        assert inst["droplet_guid"] == "7b3a0c0e-1111-4222-8333-444455556666", hb
    # two executors on one host share the pool: each took a slot the other did not hold
    assert addrs[0] != addrs[1], addrs
    # its output comes back batched, naming the instance
    _, out = ctl.wait_msg(lambda s, m: m.get("type") == "output" and any(
        ln["guid"] == guids[0] and "listening on" in ln["line"] for ln in m["lines"]),
        10, "the instance's output")
    assert all(ln["stream"] in (1, 2) for ln in out["lines"]), out
    # asked twice (a leader that did not hear): one instance still
    ctl.pub("skiff.cell.%s.req" % a.id,
            {"v": 1, "op": "start", "launch": launch(droplet, 0, guids[0])})
    heartbeat(ctl, a.id, lambda m: len(m["instances"]) == 1)
    # a stop ends it: DOWN, no longer listed, no longer answering
    ctl.pub("skiff.cell.%s.req" % a.id, {"v": 1, "op": "stop", "guid": guids[0]})
    state_of(ctl, a.id, guids[0], "DOWN", timeout=15)
    heartbeat(ctl, a.id, lambda m: m["instances"] == [], what="no instance on a")
    assert answers(addrs[0])[0] != 200
    assert serves(addrs[1], 1)


def test_a_droplet_not_on_the_cell_fails_the_start_with_its_digest(setup):
    nats, ctl, (a, b), droplet = setup
    heartbeat(ctl, a.id)
    guid = str(uuid.uuid4())
    digest = "sha256:" + "ab" * 32
    ctl.pub("skiff.cell.%s.req" % a.id, {"v": 1, "op": "start", "launch": launch(
        os.path.join(droplet, "not-here"), 0, guid, digest)})
    m = state_of(ctl, a.id, guid, "CRASHED", timeout=10)
    assert "droplet %s not on this cell" % digest in m["reason"], m
    # a malformed one is refused with the field named, and nothing runs
    bad = launch(droplet, 0, str(uuid.uuid4()))
    bad["droplet_path"] = "../../etc"
    ctl.pub("skiff.cell.%s.req" % a.id, {"v": 1, "op": "start", "launch": bad})
    m = state_of(ctl, a.id, bad["instance_guid"], "CRASHED", timeout=10)
    assert '"droplet_path" must be an absolute path' in m["reason"], m
    heartbeat(ctl, a.id, lambda hb: hb["instances"] == [])
    assert a.proc.poll() is None


def test_only_the_controllers_credentials_can_ask_a_cell(setup):
    nats, ctl, (a, b), droplet = setup
    heartbeat(ctl, a.id)
    # cell b's credentials forging a start for cell a: the server refuses the publish
    forger = Client(nats.port, CELL_B, PASSWORDS[CELL_B])
    try:
        guid = str(uuid.uuid4())
        forger.pub("skiff.cell.%s.req" % a.id,
                   {"v": 1, "op": "start", "launch": launch(droplet, 0, guid)})
        assert any("Permissions Violation for Publish" in e for e in forger.errors), \
            forger.errors
        # nor may it read another cell's requests, nor speak as another cell
        forger.sub("skiff.cell.%s.req" % a.id)
        forger.pub("skiff.cell.%s.up" % a.id, {"v": 1, "type": "state", "guid": guid,
                                                "state": "RUNNING", "addr": "10.9.9.9:80"})
        assert sum("Permissions Violation" in e for e in forger.errors) == 3, forger.errors
    finally:
        forger.close()
    # nothing started on a (two fresh heartbeats say so), and no forged report reached the
    # controller
    ctl.msgs.clear()
    heartbeat(ctl, a.id)
    ctl.msgs.clear()
    hb = heartbeat(ctl, a.id)
    assert hb["instances"] == [], hb
    assert not [m for s, m in ctl.msgs if m.get("addr") == "10.9.9.9:80"]
    assert "starting instance" not in a.output()
    # without credentials: no connection at all
    with pytest.raises((AssertionError, ConnectionError, TimeoutError, OSError)):
        anon = Client(nats.port)
        anon.pub("skiff.cell.%s.req" % a.id, {"v": 1, "op": "start", "launch": launch(droplet)})
        assert not anon.errors, anon.errors


def test_a_cell_killed_and_started_again_keeps_its_instance(setup):
    nats, ctl, (a, b), droplet = setup
    heartbeat(ctl, a.id)
    guid = str(uuid.uuid4())
    ctl.pub("skiff.cell.%s.req" % a.id, {"v": 1, "op": "start", "launch": launch(droplet, 0,
                                                                                   guid)})
    addr = state_of(ctl, a.id, guid, "RUNNING")["addr"]
    wait_for(lambda: serves(addr, 0), 10, "the instance to answer")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    assert serves(addr, 0), "the instance outlives its cell's process (its shim keeps it)"
    ctl.msgs.clear()
    restarted_ms = time.time() * 1000
    a.start()
    hb = heartbeat(ctl, a.id, lambda m: m["at_ms"] >= restarted_ms and len(m["instances"]) == 1,
                   timeout=20, what="the restarted cell to list the instance it kept")
    inst = hb["instances"][0]
    assert inst["guid"] == guid and inst["addr"] == addr, hb
    assert inst["droplet_guid"] == "7b3a0c0e-1111-4222-8333-444455556666", hb
    assert serves(addr, 0)
    assert "kept instance 0 of web" in a.output(), a.output()
    # and it still obeys: a stop ends it
    ctl.pub("skiff.cell.%s.req" % a.id, {"v": 1, "op": "stop", "guid": guid})
    state_of(ctl, a.id, guid, "DOWN", timeout=15)


# ---- a controller and two cells: placement, convergence, controllers coming and going -------

from types import SimpleNamespace  # noqa: E402

from conftest import Platform, WEB_APP as PLATFORM_WEB_APP, deploy_bits, throwaway_postgres  # noqa

from controllers import needs_postgres  # noqa: E402

LOST_MS = 5000  # SKIFF_CELL_LOST_MS's default: a cell silent that long is lost


def kill_cell_with_everything(cell):
    """kill -9 the cell and every process it started: its instances' shims and programs."""
    cell.proc.send_signal(signal.SIGKILL)
    cell.proc.wait(10)
    run = os.path.join(cell.home, "run")
    for name in os.listdir(run):
        if name.endswith(".pid"):
            try:
                with open(os.path.join(run, name)) as f:
                    os.killpg(int(f.read().split()[0]), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass


def controller(pg_dir, nats, home=None):
    url = f"postgresql://postgres@/postgres?host={pg_dir}"
    return Platform(home=home, extra_args=["--role", "controller", "--store", url,
                                           "--zone", "zone-c"],
                    extra_env={"SKIFF_NATS": nats.url_for("skiffd"), "SKIFF_PREWARM": "0",
                               "SKIFF_CELL_HEARTBEAT_MS": "500"})


def instances(p, name):
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return [i for i in app.get("instances_detail", []) if i.get("guid")]


def running(p, name):
    return [i for i in instances(p, name) if i["state"] == "RUNNING"]


def deploy_two_running(ctl, name):
    """An app of two instances with the route NAME.localhost, pushed through ctl: its
    instances once both run."""
    deploy_bits(ctl, name, [("Procfile", b"web: python3 app.py\n"),
                            ("app.py", PLATFORM_WEB_APP)], {"instances": 2})
    status, body = ctl.api("POST", "/v1/routes", {"app": name, "host": f"{name}.localhost"})
    assert status in (200, 201), body
    wait_for(lambda: len(running(ctl, name)) == 2, 60, f"two instances of {name} running")
    return running(ctl, name)


def through_router(p, name):
    try:
        status, text = http_get(p.router_url + "/", host=f"{name}.localhost")
    except OSError:
        return False
    return status == 200 and text.startswith("instance")


def give_token(cell, token):
    """What an operator does with a cell's token: into the cell's home, mode 0600, at once
    (written aside and renamed, so the cell never reads half of it)."""
    assert re.fullmatch(r"skiffc_%s[0-9a-f]{64}" % cell.id, token), token
    path = os.path.join(cell.home, "cell-token")
    with open(path + ".new", "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token + "\n")
    os.rename(path + ".new", path)


def token_of(cell):
    with open(os.path.join(cell.home, "cell-token")) as f:
        return f.read().strip()


def blob_status(p, digest, token):
    """GET /v1/blobs/DIGEST from p with a bearer token: (status, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", p.api_port, timeout=30)
    c.request("GET", "/v1/blobs/" + digest, headers={"Authorization": "Bearer " + token})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


@pytest.fixture
def cluster():
    with throwaway_postgres() as pg_dir:
        store = tempfile.mkdtemp(prefix="skiff-cluster-")
        nats = UsersNats(store).start()
        base = 42000 + (os.getpid() % 400) * 20
        cells = [Cell(nats, CELL_A, "zone-a", (base, base + 9)),
                 Cell(nats, CELL_B, "zone-b", (base + 10, base + 19))]
        ctl = None
        try:
            ctl = controller(pg_dir, nats).start()
            # b's first controller is down (nothing listens there): b fetches from the next
            dead = "http://127.0.0.1:%d" % free_port()
            cells[0].controllers = [ctl.api_url]
            cells[1].controllers = [dead, ctl.api_url]
            # the operator makes each cell its own token and puts it in the cell's home
            for c in cells:
                give_token(c, ctl.cli("create-cell-token", c.id, check=True).stdout.strip())
                c.start()
            wait_for(lambda: ctl.api("GET", "/v1/cells")[1]["leading"], 15, "the controller "
                     "to lead")
            yield SimpleNamespace(pg_dir=pg_dir, nats=nats, cells=cells, ctl=ctl, dead=dead)
            ctl.stop()
            for c in cells:
                c.stop()
                assert not c.stuck, "the cell did not exit on SIGTERM:\n" + c.output()
            for text in [ctl.output()] + [c.output() for c in cells]:
                assert "Sanitizer" not in text and "runtime error" not in text, text
        finally:
            if ctl:
                ctl.close()
            for c in cells:
                c.close()
            nats.stop()
            shutil.rmtree(store, ignore_errors=True)


@needs_postgres
def test_a_controller_places_instances_on_cells_and_converges(cluster):
    ctl, (a, b) = cluster.ctl, cluster.cells
    listed = lambda: {c["id"]: c for c in ctl.api("GET", "/v1/cells")[1]["cells"]
                      if c.get("role") == "cell"}
    wait_for(lambda: {k for k, c in listed().items() if c["state"] == "up"} == {a.id, b.id},
             15, "both cells to be listed up")
    assert listed()[a.id]["zone"] == "zone-a" and listed()[b.id]["zone"] == "zone-b"
    spy = Client(cluster.nats.port, "skiffd", PASSWORDS["skiffd"])
    spy.sub("skiff.cell.*.req")
    spy.sub("skiff.cell.*.up")
    # one instance on each cell (the controller runs none)
    placed = {i["cell"]: i for i in deploy_two_running(ctl, "two")}
    assert set(placed) == {a.id, b.id}, placed
    for c in (a, b):
        assert "starting instance" in c.output(), c.output()
        assert in_pool(placed[c.id]["address"]), placed
    wait_for(lambda: through_router(ctl, "two"), 20, "the route to serve")
    # each cell's own executor runs one (its heartbeat says so)
    for c in (a, b):
        heartbeat(spy, c.id, lambda m: [(i["guid"], i["state"]) for i in m["instances"]] == [
            (placed[c.id]["guid"], "RUNNING")], what="cell %s to list its one instance" % c.zone)
    # the start requests carried the droplet's guid and digest
    _, start = spy.wait_msg(lambda s, m: m.get("op") == "start", 5, "a start request")
    spy.close()
    r = ctl.cli("cells", check=True)
    assert a.id in r.stdout and b.id in r.stdout and "zone-a" in r.stdout, r.stdout
    digest = start["launch"]["droplet_digest"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), start
    # and where to fetch it: each cell did, into its own home, once
    assert start["launch"]["blob_urls"] == [ctl.api_url], start
    for c in (a, b):
        assert c.output().count("fetched droplet %s" % digest) == 1, c.output()
        assert os.path.isdir(os.path.join(c.home, "blobs", "droplets", digest[7:], "app"))
    # b's first controller is down: its fetch went on to the next one it was given
    assert "fetching droplet %s from %s, %s (in turn)" % (digest, cluster.dead, ctl.api_url) \
        in b.output(), b.output()
    assert "fetched droplet %s from %s (verified)" % (digest, ctl.api_url) in b.output()
    assert start["launch"]["droplet_guid"] == placed[a.id]["droplet"], start

    # kill -9 cell a with its instance: lost after LOST_MS, its instance started on b
    kill_cell_with_everything(a)
    killed = time.monotonic()
    failures = 0

    def both_on_b():
        nonlocal failures
        if not through_router(ctl, "two"):
            failures += 1
        now = running(ctl, "two")
        return len(now) == 2 and {i["cell"] for i in now} == {b.id}
    wait_for(both_on_b, 30, "the lost cell's instance to run on the other cell", interval=0.2)
    took = time.monotonic() - killed
    print(f"cell lost to its instance running elsewhere: {took:.1f} s "
          f"({failures} failed requests through the router meanwhile)")
    assert "is lost: no heartbeat" in ctl.output(), ctl.output()
    for _ in range(20):
        assert through_router(ctl, "two")

    # a restarted cell a comes back empty (its processes were killed): placed on again later
    a.start()
    wait_for(lambda: listed()[a.id]["state"] == "up", 15, "cell a to be back")

    # a cell that goes silent while its instances run (stopped, not killed), then comes back:
    # its instances were started elsewhere meanwhile, and its duplicates are stopped
    b_guids = {i["guid"] for i in running(ctl, "two")}
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: {i["cell"] for i in running(ctl, "two")} == {a.id}
                 and len(running(ctl, "two")) == 2, 30,
                 "b's instances to run on a while b is silent", interval=0.2)
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    wait_for(lambda: "stopping instance" in b.output() and b.output().count("stopping instance")
             >= 2, 20, "b to be told to stop both of its duplicates")
    for g in b_guids:
        wait_for(lambda: f"({g})" in b.output(), 5, "b to name the stopped duplicate")
    assert len(running(ctl, "two")) == 2
    assert through_router(ctl, "two")


@needs_postgres
def test_instances_outlive_the_controller_and_a_new_one_adopts_them(cluster, request):
    ctl, (a, b) = cluster.ctl, cluster.cells
    rr = RemoteRouter(cluster.nats.url,
                      extra_env={"SKIFF_NATS": cluster.nats.url_for("router")})
    request.addfinalizer(rr.close)
    rr.start()
    before = {i["guid"]: i for i in deploy_two_running(ctl, "keep")}
    assert {i["cell"] for i in before.values()} == {a.id, b.id}, before
    addrs = [i["address"] for i in before.values()]

    remote_serves = lambda: rr.get("keep.localhost")[0] == 200  # noqa: E731
    wait_for(remote_serves, 20, "a router on NATS to serve the app")

    # the controller stops: the instances keep answering, where they run and through the
    # router on NATS (which keeps a route for its TTL, 30 s, after the last announcement)
    ctl.stop()
    for addr in addrs:
        assert answers(addr)[0] == 200, addr
    for _ in range(10):
        assert remote_serves()
    # it starts again (same home and store): it leads, adopts both, starts nothing
    ctl.start()
    wait_for(lambda: ctl.api("GET", "/v1/cells")[1]["leading"], 15, "the controller to lead")
    wait_for(lambda: set(i["guid"] for i in running(ctl, "keep")) == set(before), 20,
             "the restarted controller to show the cells' instances")
    # a second look, after two more heartbeats of each cell (the convergence came between)
    watch = Client(cluster.nats.port, "skiffd", PASSWORDS["skiffd"])
    try:
        watch.sub("skiff.cell.*.up")
        for c in (a, b):
            for _ in range(2):
                watch.msgs.clear()
                hb = heartbeat(watch, c.id)
                assert [i["guid"] for i in hb["instances"]] == [
                    g for g, i in before.items() if i["cell"] == c.id], hb
    finally:
        watch.close()
    assert set(i["guid"] for i in running(ctl, "keep")) == set(before)
    for c in (a, b):
        assert c.output().count("starting instance") == 1, c.output()
        assert "stopping instance" not in c.output(), c.output()
    for addr in addrs:
        assert answers(addr)[0] == 200, addr
    assert remote_serves()


@needs_postgres
def test_a_cells_token_reads_only_what_was_placed_on_it(cluster):
    """A cell's token reads the droplet the leader placed on that cell and nothing else; a
    start request forged with the controllers' NATS credentials cannot send the token to a URL
    of its own; a deleted token is refused at once; a rotated one is taken by the cell at its
    next fetch without a restart."""
    ctl, (a, b) = cluster.ctl, cluster.cells
    spy = Client(cluster.nats.port, "skiffd", PASSWORDS["skiffd"])
    try:
        spy.sub("skiff.cell.*.req")
        spy.sub("skiff.cell.*.up")
        deploy_bits(ctl, "solo", [("Procfile", b"web: python3 app.py\n"),
                                  ("app.py", PLATFORM_WEB_APP)], {"instances": 1})
        wait_for(lambda: len(running(ctl, "solo")) == 1, 60, "the instance running")
        (inst,) = running(ctl, "solo")
        on, other = (a, b) if inst["cell"] == a.id else (b, a)
        _, start = spy.wait_msg(lambda s, m: m.get("op") == "start", 5, "the start request")
        digest = start["launch"]["droplet_digest"]

        # the cell it was placed on reads it; the other cell's token does not
        status, body = blob_status(ctl, digest, token_of(on))
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
        status, body = blob_status(ctl, digest, token_of(other))
        assert status == 403 and b"was not asked to start" in body, body

        # a start forged for the other cell (the controllers' NATS credentials), naming a URL
        # of the forger's: the cell never connects there, asks only its own controllers, which
        # refuse it (nothing was placed there), and the start fails
        trap = socket.socket()
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.setblocking(False)
        trap_url = "http://127.0.0.1:%d" % trap.getsockname()[1]
        forged = dict(start["launch"], instance_guid=str(uuid.uuid4()), blob_urls=[trap_url])
        spy.pub("skiff.cell.%s.req" % other.id, {"v": 1, "op": "start", "launch": forged})
        m = state_of(spy, other.id, forged["instance_guid"], "CRASHED", timeout=30)
        assert "answered 403" in m["reason"], m
        with pytest.raises(BlockingIOError):
            trap.accept()
        trap.close()
        assert "names %s to fetch droplet %s from, which is not one of this cell's " \
            "controllers (--controller-url): ignored" % (trap_url, digest) in other.output()
        assert not os.path.isdir(os.path.join(other.home, "blobs", "droplets", digest[7:]))

        # deleted: refused at once
        old = token_of(on)
        ctl.cli("delete-cell-token", on.id, check=True)
        assert blob_status(ctl, digest, old)[0] == 401
        assert on.id not in ctl.cli("cell-tokens", check=True).stdout
        assert other.id in ctl.cli("cell-tokens", check=True).stdout

        # rotated: the old one refused at once; the new one in the cell's file, the cell (not
        # restarted) fetches with it when the leader places the next instance there
        pid = other.proc.pid
        old = token_of(other)
        r = ctl.cli("create-cell-token", other.id, check=True)
        assert "previous token is refused" in r.stderr, r.stderr
        assert blob_status(ctl, digest, old)[0] == 401
        give_token(other, r.stdout.strip())
        other.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "holds this cell's token (%s)" % other.id in other.output(), 10,
                 "the cell to check its new token on SIGHUP")
        assert ctl.api("PUT", "/v1/apps/solo", {"instances": 2})[0] == 200
        wait_for(lambda: {i["cell"] for i in running(ctl, "solo")} == {a.id, b.id}, 60,
                 "the second instance running on the other cell")
        assert other.proc.pid == pid and other.proc.poll() is None
        assert "fetched droplet %s from %s (verified)" % (digest, ctl.api_url) in other.output()
    finally:
        spy.close()


def grants(pg_dir, cell_id):
    """The grants the store holds for a cell: {droplet digest: document}."""
    rows = psql(pg_dir, "SELECT id, body FROM documents WHERE kind = 'cell.grants' AND id LIKE "
                "'%s/%%' ORDER BY id" % cell_id)
    out = {}
    for line in rows.splitlines():
        gid, body = line.split("|", 1)
        out[gid.split("/", 1)[1]] = json.loads(body)
    return out


@needs_postgres
def test_a_grant_stands_while_its_droplet_runs_on_the_cell_and_goes_with_it(cluster):
    """One grant per droplet placed on a cell, written once while it stands (a second instance
    of the droplet on the same cell writes nothing), and withdrawn as soon as nothing of that
    droplet runs there: the app stopped; started again, then a cell lost (its instances moved
    to the other); the app deleted. The cell's token reads the droplet only meanwhile."""
    ctl, (a, b) = cluster.ctl, cluster.cells
    deploy_bits(ctl, "granted", [("Procfile", b"web: python3 app.py\n"),
                                 ("app.py", PLATFORM_WEB_APP)], {"instances": 1})
    wait_for(lambda: len(running(ctl, "granted")) == 1, 60, "the instance running")
    (inst,) = running(ctl, "granted")
    on, other = (a, b) if inst["cell"] == a.id else (b, a)
    (digest,) = grants(cluster.pg_dir, on.id).keys()
    first = grants(cluster.pg_dir, on.id)[digest]
    assert first["blobs"] == [] and first["until"] > time.time() * 1000, first
    assert grants(cluster.pg_dir, other.id) == {}
    assert blob_status(ctl, digest, token_of(on))[0] == 200
    assert blob_status(ctl, digest, token_of(other))[0] == 403

    # three instances on two cells: one cell runs two; the standing grant is not written again
    assert ctl.api("PUT", "/v1/apps/granted", {"instances": 3})[0] == 200
    wait_for(lambda: len(running(ctl, "granted")) == 3, 60, "three instances running")
    assert grants(cluster.pg_dir, on.id)[digest] == first, "the standing grant was rewritten"
    assert digest in grants(cluster.pg_dir, other.id)

    # stopped: nothing of it runs on either cell, both grants go, the tokens read it no more
    assert ctl.api("POST", "/v1/apps/granted/stop")[0] == 200
    wait_for(lambda: grants(cluster.pg_dir, on.id) == {} and
             grants(cluster.pg_dir, other.id) == {}, 30, "the grants withdrawn")
    for c in (on, other):
        status, body = blob_status(ctl, digest, token_of(c))
        assert status == 403 and b"was not asked to start" in body, body

    # started again: granted again
    assert ctl.api("POST", "/v1/apps/granted/start")[0] == 200
    wait_for(lambda: len(running(ctl, "granted")) == 3, 60, "three instances running again")
    assert all(digest in grants(cluster.pg_dir, c.id) for c in (a, b))

    # a cell lost (killed with its instances): they move to the other cell, the lost cell's
    # grant goes, the other's stands
    kill_cell_with_everything(other)
    wait_for(lambda: grants(cluster.pg_dir, other.id) == {}, LOST_MS / 1000 + 30,
             "the lost cell's grant withdrawn")
    wait_for(lambda: len(running(ctl, "granted")) == 3, 90, "the instances running again")
    assert {i["cell"] for i in running(ctl, "granted")} == {on.id}
    assert digest in grants(cluster.pg_dir, on.id)
    assert blob_status(ctl, digest, token_of(other))[0] == 403

    # deleted: withdrawn again
    assert ctl.api("DELETE", "/v1/apps/granted")[0] in (200, 202, 204)
    wait_for(lambda: grants(cluster.pg_dir, on.id) == {}, 30,
             "the grants withdrawn after the app's deletion")
    for c in (a, b):
        assert blob_status(ctl, digest, token_of(c))[0] == 403


@needs_postgres
def test_a_fetch_goes_to_the_next_controller_when_one_is_down(cluster):
    """Two controllers on the store, a cell given both: the leader stops, the other leads, and
    the cell's next fetch, refused by the first (down), comes from the second, under the grant
    the new leader wrote."""
    ctl, (a, b) = cluster.ctl, cluster.cells
    second = controller(cluster.pg_dir, cluster.nats)
    try:
        second.start()
        assert not second.api("GET", "/v1/cells")[1]["leading"]
        for c in (a, b):
            c.stop()
            c.controllers = [ctl.api_url, second.api_url]
            c.start()
        deploy_bits(ctl, "first", [("Procfile", b"web: python3 app.py\n"),
                                   ("app.py", PLATFORM_WEB_APP)], {"instances": 2})
        wait_for(lambda: len(running(ctl, "first")) == 2, 60, "two instances running")
        m = re.search(r"fetched droplet (sha256:[0-9a-f]{64}) from (\S+) ", a.output())
        assert m and m.group(2) == ctl.api_url, a.output()

        ctl.stop()  # down: nothing answers at its address any more
        wait_for(lambda: second.api("GET", "/v1/cells")[1]["leading"], 30, "the second to lead")
        deploy_bits(second, "next", [("Procfile", b"web: python3 app.py\n"),
                                     ("app.py", PLATFORM_WEB_APP + b"\n# another droplet\n")],
                    {"instances": 2})
        wait_for(lambda: len(running(second, "next")) == 2, 90, "the new app's instances")
        for c in (a, b):
            fetched = re.findall(r"fetched droplet (sha256:[0-9a-f]{64}) from (\S+) ", c.output())
            assert len(fetched) == 2 and fetched[0][0] != fetched[1][0], c.output()
            assert fetched[1][1] == second.api_url, c.output()
            assert "fetching droplet %s from %s, %s (in turn)" % (
                fetched[1][0], ctl.api_url, second.api_url) in c.output(), c.output()
    finally:
        second.close()


@needs_postgres
def test_a_grant_of_an_instance_a_new_leader_adopted_is_withdrawn_when_it_stops(cluster):
    """The leader places an instance on a cell and is killed; the other controller leads and
    takes the instance over as it runs (not started again). When the app is stopped through the
    new leader, the grant the killed one wrote goes with the instance, as for one the new leader
    started: the cell's token reads the droplet no more (before, it stood its 15 minutes)."""
    ctl, (a, b) = cluster.ctl, cluster.cells
    second = controller(cluster.pg_dir, cluster.nats)
    try:
        second.start()
        assert not second.api("GET", "/v1/cells")[1]["leading"]
        deploy_bits(ctl, "adopted", [("Procfile", b"web: python3 app.py\n"),
                                     ("app.py", PLATFORM_WEB_APP)], {"instances": 1})
        wait_for(lambda: len(running(ctl, "adopted")) == 1, 60, "the instance running")
        (inst,) = running(ctl, "adopted")
        on, other = (a, b) if inst["cell"] == a.id else (b, a)
        (digest,) = grants(cluster.pg_dir, on.id).keys()
        # the follower's copy heard of the leader's grant
        wait_for(lambda: blob_status(second, digest, token_of(on))[0] == 200, 10,
                 "the follower to let the cell read its droplet")
        assert blob_status(second, digest, token_of(other))[0] == 403

        ctl.proc.send_signal(signal.SIGKILL)
        ctl.proc.wait(10)
        wait_for(lambda: second.api("GET", "/v1/cells")[1]["leading"], 30, "the second to lead")
        wait_for(lambda: [i["guid"] for i in running(second, "adopted")] == [inst["guid"]], 30,
                 "the new leader to show the instance it took over")
        assert on.output().count("starting instance") == 1, on.output()  # adopted, not restarted
        assert digest in grants(cluster.pg_dir, on.id)

        assert second.api("POST", "/v1/apps/adopted/stop")[0] == 200
        wait_for(lambda: re.search(r"stopping instance \d+ of web \(%s\)" % inst["guid"],
                                   on.output()), 30, "the cell to stop the instance")
        wait_for(lambda: grants(cluster.pg_dir, on.id) == {}, 30,
                 "the adopted instance's grant withdrawn")
        status, body = blob_status(second, digest, token_of(on))
        assert status == 403 and b"was not asked to start" in body, body
        out = second.output()
        assert "Sanitizer" not in out and "runtime error" not in out, out
    finally:
        second.close()
