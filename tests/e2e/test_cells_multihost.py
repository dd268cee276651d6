"""Cells on hosts of their own (network namespaces on a bridge, tests/e2e/multihost.py): host A
runs `skiffd --role controller` on PostgreSQL, hosts B and C each run `skiffd --role cell
--host-addr` (containers, each host its own pool and its own home), host D runs
`skiffd --role router`.

An app of two instances lands one on B and one on C, and D's router serves both (D routes each
cell's pool via that cell's address, learnt from the cells' announcements). B's link goes down:
B is lost, its instance comes back on C within 30 s, and the requests sent through D meanwhile
are counted; B's link comes back: its duplicate is stopped."""
import hashlib
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import deploy_bits, free_port, wait_for
from controllers import stopped_clean
from multihost import (HOSTS_MS, PG_BIN, Cluster, HostCell, HostRouter, backends, cells_up,
                       running, start_controller)
from test_images import (DEFAULT_CONFIG, HostileRegistry, digest, image_config, image_manifest,
                         layers_of, oci_archive)
from test_images import server_binary  # noqa: F401 (a fixture)
from test_multihost import nats_publish

pytestmark = [
    pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed"),
    pytest.mark.skipif(os.getuid() != 0, reason="network namespaces need root"),
]

POOLS = {"a": "10.244.0.0/18", "b": "10.244.64.0/18", "c": "10.244.128.0/18"}
LOST_MS = 5000  # SKIFF_CELL_LOST_MS's default


@pytest.fixture
def world():
    c = Cluster(("a", "b", "c", "d"))
    c.up()
    try:
        with stopped_clean() as started:
            # where a test's registry listens: the bridge's side of the root namespace
            registry_addr = "%s:%d" % (c.gateway, free_port())
            ctl = start_controller(c, c.host("a"), POOLS["a"], "skiff_cells_%d" % os.getpid(),
                                   extra_args=["--insecure-registry", registry_addr])
            started.append(ctl)
            ctl.registry_addr = registry_addr
            cells = {}
            for name in ("b", "c"):
                cells[name] = HostCell(c.host(name), c.nats_urls, POOLS[name])
                started.append(cells[name])
                cells[name].join(ctl).start()
            router = HostRouter(c.host("d"), c.nats_urls, extra_env=HOSTS_MS)
            started.append(router)
            router.start()
            yield c, ctl, cells, router
    finally:
        c.down()


# tests/e2e/apps/web.py's answers, without http.server's socket.getfqdn at bind: the namespace
# hosts reach no DNS server, and that lookup would wait for the resolver's timeout (5 s)
CELL_APP = b"""import os, socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("instance %s\\n" % os.environ["CF_INSTANCE_INDEX"]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "instance", self.server_address[1]
S(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


def in_pool(addr, pool):
    """Whether addr (IP:PORT) lies in a /18 pool like 10.244.64.0/18."""
    base = int(pool.split(".")[2])
    ip = addr.rsplit(":", 1)[0].split(".")
    return ip[:2] == ["10", "244"] and base <= int(ip[2]) < base + 64


def test_cells_on_their_own_hosts_serve_and_a_lost_cells_instance_comes_back_elsewhere(world):
    cluster, ctl, cells, router = world
    B, C, D = cluster.host("b"), cluster.host("c"), cluster.host("d")
    b, c = cells["b"], cells["c"]
    wait_for(lambda: cells_up(ctl) == {b.id, c.id}, 30, "both cells to be listed up")
    # D routes each cell's pool via that cell's host
    wait_for(lambda: all("%s via %s" % (POOLS[n], cluster.host(n).addr) in D.routes(proto=83)
                         for n in ("b", "c")), 15, "D's routes to the cells' pools")

    deploy_bits(ctl, "two", [("Procfile", b"web: python3 app.py\n"), ("app.py", CELL_APP)],
                {"instances": 2})
    status, body = ctl.api("POST", "/v1/routes", {"app": "two", "host": "two.localhost"})
    assert status in (200, 201), body
    wait_for(lambda: len(running(ctl, "two")) == 2, 120, "two instances running")
    status, app = ctl.api("GET", "/v1/apps/two")
    assert status == 200, app
    placed = {i["cell"]: i for i in running(ctl, "two")}
    assert set(placed) == {b.id, c.id}, placed
    assert in_pool(placed[b.id]["address"], POOLS["b"]), placed
    assert in_pool(placed[c.id]["address"], POOLS["c"]), placed
    # each cell fetched the droplet by its digest from the controller, into its own home
    m = re.search(r"fetching droplet (sha256:[0-9a-f]{64}) from (\S+)", b.output())
    assert m and m.group(2) == ctl.api_url, b.output()
    digest = m.group(1)
    # it is the blob the controller serves under that name (its content hashes to it)
    req = urllib.request.Request(ctl.api_url + "/v1/blobs/" + digest,
                                 headers={"Authorization": "Bearer " + ctl.token})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert "sha256:" + hashlib.sha256(r.read()).hexdigest() == digest
    for x in (b, c):
        assert "fetching droplet %s from %s" % (digest, ctl.api_url) in x.output(), x.output()
        assert "fetched droplet %s from %s (verified)" % (digest, ctl.api_url) in x.output()
        with open(os.path.join(x.home, "blobs", "droplets", digest[7:], "app", "app.py"),
                  "rb") as f:
            assert f.read() == CELL_APP
    # the router on D serves both instances
    wait_for(lambda: {router.get("two.localhost")[1] for _ in range(4)} ==
             {"instance 0\n", "instance 1\n"}, 30, "D's router to serve both instances")

    # a start whose digest names no blob is refused by the cell, though the controller's path
    # it carries is on the file system the namespaces share: the cell never reads it
    forged = "sha256:" + "ab" * 32
    guid = str(uuid.uuid4())
    nats_publish(cluster, [("skiff.cell.%s.req" % b.id, {"v": 1, "op": "start", "launch": {
        "app_guid": app["guid"], "app_name": "two", "process_type": "web", "index": 5,
        "instance_guid": guid, "droplet_guid": app["droplet"], "droplet_digest": forged,
        "droplet_path": ctl.home, "blob_urls": [ctl.api_url], "command": "python3 app.py",
        "memory_mb": 64, "health": "port", "uris": [], "user_env": []}})])
    wait_for(lambda: "droplet %s could not be fetched" % forged in b.output(), 20,
             "B to refuse the forged digest")
    assert "starting instance 5" not in b.output()
    assert not os.path.exists(os.path.join(b.home, "blobs", "droplets", forged[7:]))
    assert not [f for f in os.listdir(os.path.join(b.home, "blobs", "cache"))
                if f.startswith("ab" * 4)]
    assert len(running(ctl, "two")) == 2

    # B's link goes down: B is lost, its instance is started on C, the router keeps serving
    b_index = placed[b.id]["index"]
    b_addr = placed[b.id]["address"]
    listed = backends(router, "two.localhost")
    assert sorted(listed) == sorted(i["address"] for i in placed.values()), listed
    B.link_down()
    down_at = time.monotonic()
    # requests through D all along, apart from the polls of the leader's view
    # (the client waits longer than the router's connect timeout, 5 s: a request the router
    # sent to B's address is tried on another instance when that connect times out)
    sent, failed, slowest, stop = [0], [0], [0.0], threading.Event()

    lock = threading.Lock()

    def send():  # four of them: one request hanging does not stop the others
        while not stop.is_set():
            t0 = time.monotonic()
            ok = router.get("two.localhost", timeout=15)[0] == 200
            with lock:
                sent[0] += 1
                failed[0] += not ok
                slowest[0] = max(slowest[0], time.monotonic() - t0)
            time.sleep(0.05)
    senders = [threading.Thread(target=send) for _ in range(4)]
    for t in senders:
        t.start()
    seen = {}  # when the leader logged B lost, when D's router stopped listing B's instance

    def both_on_c():
        if "lost" not in seen and "is lost: no heartbeat" in ctl.output():
            seen["lost"] = time.monotonic()
        if "dropped" not in seen and b_addr not in backends(router, "two.localhost"):
            seen["dropped"] = time.monotonic()
        if "started" not in seen and "starting instance %d of web" % b_index in c.output():
            seen["started"] = time.monotonic()
        if "healthy" not in seen and "instance %d of web" % b_index in c.output().split(
                "starting instance %d of web" % b_index, 1)[-1].replace("is running", "@@") and \
                "@@" in c.output().split("starting instance %d of web" % b_index, 1)[-1].replace(
                    "is running", "@@"):
            seen["healthy"] = time.monotonic()
        now = running(ctl, "two")
        return len(now) == 2 and {i["cell"] for i in now} == {c.id}
    try:
        try:
            wait_for(both_on_c, 30, "B's instance to run on C", interval=0.1)
            took = time.monotonic() - down_at
        finally:
            stop.set()
            for t in senders:
                t.join()
        print("cell B's link down to its instance running on C: %.1f s; %d of %d requests "
              "through D's router failed meanwhile, the slowest took %.1f s" % (
                  took, failed[0], sent[0], slowest[0]))
        assert took < 30
        assert "is lost: no heartbeat" in ctl.output(), ctl.output()
        # the router drops the lost cell's instance when the leader marks it lost, not later
        assert "dropped" in seen, backends(router, "two.localhost")
        print("B lost %.1f s after its link went down; D's router dropped its instance %.1f s "
              "after that; C was asked to start it %.1f s after that, and found it running "
              "%.1f s after that" % (
                  seen["lost"] - down_at, seen["dropped"] - seen["lost"],
                  seen.get("started", float("nan")) - seen["lost"],
                  seen.get("healthy", float("nan")) - seen.get("started", float("nan"))))
        assert LOST_MS / 1000 - 1 <= seen["lost"] - down_at
        assert seen["dropped"] - seen["lost"] < 2
        # D's router took B's instance for lost (not drained): what it had in flight to it
        # went to C at that table, or got a 502 (src/router/README.md "Lost instances")
        wait_for(lambda: "backend %s left the table without a drain" % b_addr in
                 router.output(), 5, "D's router to log B's instance lost")
        # once the leader moved it, every request succeeds, and both indexes answer from C
        for _ in range(20):
            assert router.get("two.localhost")[0] == 200
        wait_for(lambda: {router.get("two.localhost")[1] for _ in range(4)} ==
                 {"instance 0\n", "instance 1\n"}, 20, "both indexes served from C")
    finally:
        B.link_up()
    # B comes back with the instance it kept: the duplicate is stopped there
    wait_for(lambda: "stopping instance %d" % b_index in b.output(), 30,
             "B to be told to stop its duplicate")
    wait_for(lambda: b.id in cells_up(ctl), 20, "B to be listed up again")
    now = running(ctl, "two")
    assert len(now) == 2 and {i["cell"] for i in now} == {c.id}, now
    for _ in range(10):
        assert router.get("two.localhost")[0] == 200


def layer_files(home):
    """What a cell's image store holds: unpacked layers and blobs (HEX names)."""
    def names(*path):
        d = os.path.join(home, "images", *path)
        return sorted(os.listdir(d)) if os.path.isdir(d) else []
    return names("layers", "sha256"), names("blobs", "sha256")


def cell_token(cell):
    """The token the operator put in the cell's home (HostCell.join)."""
    with open(os.path.join(cell.home, "cell-token")) as f:
        return f.read().strip()


def blob_get(ctl, d, token):
    """GET /v1/blobs/DIGEST from the controller with token: (status, body bytes)."""
    req = urllib.request.Request(ctl.api_url + "/v1/blobs/" + d,
                                 headers={"Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def psql(cluster, db, sql):
    return cluster._as_pg(os.path.join(PG_BIN, "psql"), "-h", cluster.pg_dir, "-p",
                          str(cluster.pg_port), "-U", "postgres", "-d", db, "-At", "-c", sql)


def test_an_image_app_runs_on_cells_of_other_hosts_from_its_layers_blobs(
        world, tmp_path, server_binary):
    """An image staged on the controller's host runs on cells of their own hosts: each fetches
    the layers it lacks by digest from the controller's blob service (verified, unpacked once,
    its compressed blob not kept); a layer whose stored content was changed is refused; once
    the apps are deleted the cells collect the layers."""
    cluster, ctl, cells, router = world
    b, c = cells["b"], cells["c"]
    wait_for(lambda: cells_up(ctl) == {b.id, c.id}, 30, "both cells to be listed up")
    wait_for(lambda: all("%s via %s" % (POOLS[n], cluster.host(n).addr) in
                         cluster.host("d").routes(proto=83) for n in ("b", "c")), 15,
             "D's routes to the cells' pools")
    layers = layers_of(server_binary, "on-a-cell")
    oci_archive(tmp_path / "web.tar", layers, image_config(**DEFAULT_CONFIG))
    r = ctl.cli("push", "img", "--docker-image", "oci-archive:%s" % (tmp_path / "web.tar"),
                "-i", "2", timeout=300)
    # staged; an instance that crashed while the machine stalled (a cell's heartbeats late,
    # so taken for lost) is restarted, and the wait below is for both running
    assert r.returncode == 0 or "crashed" in r.stdout + r.stderr, r.stdout + r.stderr
    wait_for(lambda: len(running(ctl, "img")) == 2, 120, "two image instances running")
    assert {i["cell"] for i in running(ctl, "img")} == {b.id, c.id}
    wait_for(lambda: "greeting=on-a-cell" in router.get("img.localhost")[1], 30,
             "D's router to serve the image app")
    for x in (b, c):
        for layer in layers:
            d = "sha256:" + hashlib.sha256(layer).hexdigest()
            assert "fetching layer %s from %s" % (d, ctl.api_url) in x.output(), x.output()
            assert "layer %s is here (verified, unpacked)" % d in x.output(), x.output()
        unpacked, blobs = layer_files(x.home)
        assert unpacked == sorted(hashlib.sha256(l).hexdigest() for l in layers), unpacked
        assert blobs == [], blobs  # the folder is what instances mount

    # from a registry: the controller keeps the pulled layers' blobs (it has --nats), and the
    # cells fetch the one they lack (the base layer is the first image's, there already)
    pulled = layers_of(server_binary, "from-a-registry")
    config = image_config(**DEFAULT_CONFIG)
    host, port = ctl.registry_addr.split(":")
    reg = HostileRegistry({digest(x): x for x in pulled + [config]},
                          image_manifest(pulled, config), at=(host, int(port)))
    try:
        r = ctl.cli("push", "pulled", "--docker-image", "%s/app:v1" % ctl.registry_addr,
                    timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr + ctl.output()
        wait_for(lambda: len(running(ctl, "pulled")) == 1, 120, "the pulled image running")
        wait_for(lambda: "greeting=from-a-registry" in router.get("pulled.localhost")[1], 30,
                 "D's router to serve the pulled image")
    finally:
        reg.close()
    top_pulled = digest(pulled[1])
    on = [x for x in (b, c) if x.id == running(ctl, "pulled")[0]["cell"]][0]
    assert "fetching layer %s from %s" % (top_pulled, ctl.api_url) in on.output(), on.output()
    assert "fetching layer %s" % digest(pulled[0]) not in on.output().split(
        "fetching layer %s" % top_pulled)[1]  # the base layer was there

    # a cell's token reads a layer only while the leader's grant for that cell stands: the
    # cell the pulled image runs on reads its top layer with its own token; the other cell's
    # token is refused it, and a cell given nothing is refused the layer and the config
    off = [x for x in (b, c) if x is not on][0]
    status, body = blob_get(ctl, top_pulled, cell_token(on))
    assert status == 200 and digest(body) == top_pulled, status
    status, body = blob_get(ctl, top_pulled, cell_token(off))
    assert status == 403 and b"was not asked to start" in body, (status, body)
    status, made = ctl.api("POST", "/v1/cell_tokens", {"cell": "e" * 32})
    assert status == 201, made
    for d in (top_pulled, digest(config), digest(layers[0])):
        assert blob_get(ctl, d, made["token"])[0] == 403, d

    # controller's database before any cell has it: the cell refuses it, unpacks nothing
    forged_layers = layers_of(server_binary, "forged")
    assert forged_layers[0] == layers[0]
    top = "sha256:" + hashlib.sha256(forged_layers[1]).hexdigest()
    oci_archive(tmp_path / "forged.tar", forged_layers, image_config(**DEFAULT_CONFIG))
    r = ctl.cli("push", "forged", "--docker-image", "oci-archive:%s" % (tmp_path / "forged.tar"),
                "--no-start", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    db = "skiff_cells_%d" % os.getpid()
    changed = psql(cluster, db, "UPDATE blob_chunks SET data = 'forged'::bytea WHERE blob_id = "
                   "(SELECT id FROM blobs WHERE digest = '%s') AND seq = 0" % top)
    assert "UPDATE 1" in changed.stdout, changed.stdout + changed.stderr
    ctl.cli("start", "forged", "--timeout", "5")
    wait_for(lambda: any("layer %s could not be fetched" % top in x.output() for x in (b, c)),
             60, "a cell to refuse the forged layer")
    assert not running(ctl, "forged")
    for x in (b, c):
        unpacked, blobs = layer_files(x.home)
        assert top[7:] not in unpacked and not [f for f in blobs if top[7:] in f], (unpacked,
                                                                                   blobs)
    assert "greeting=on-a-cell" in router.get("img.localhost")[1]

    # deleted: the cells' instances stop and the layers no instance mounts are collected once
    # the cells' grace for unused layers (2 s here) has passed
    for name in ("forged", "img", "pulled"):
        status, body = ctl.api("DELETE", "/v1/apps/%s" % name)
        assert status in (200, 202, 204), body
    try:
        wait_for(lambda: all(layer_files(x.home) == ([], []) for x in (b, c)), 60,
                 "the cells to collect the layers")
    except AssertionError:
        raise AssertionError("%r\n%s\n%s" % ([layer_files(x.home) for x in (b, c)],
                                              b.output()[-6000:], c.output()[-6000:]))
    for x in (b, c):
        assert "collected" in x.output() and "image layers" in x.output(), x.output()
