"""Two `skiffd --role all` on hosts of their own (network namespaces on a bridge,
tests/e2e/multihost.py), on one PostgreSQL database and a 3-node JetStream cluster: each runs
in containers with its own network pool and its own warm container; one leads and runs the
instances, the other serves the API.

An image staged through the follower runs on the leader: the leader brings the droplet and the
image's layers it lacks from the blob store they share (no file system is shared). The leader
killed with SIGKILL (it and everything it started: its router, shims, instances): the other
leads, runs the dead one's instances within RUNNING_BOUND_S, serves their routes through its
own router, and delivers every event that was published and acknowledged before the kill.
The killed one restarted on its home follows, and no app runs more instances than asked."""
import hashlib
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BIN_DIR, http_get, read_pid_file, wait_for
from controllers import cells, leading, stopped_clean
from multihost import HOSTS_MS, Cluster, HostPlatform, running
from test_fabric_crash import read_all
from test_images import DEFAULT_CONFIG, image_config, layers_of, oci_archive
from test_images import server_binary  # noqa: F401 (a fixture)

pytestmark = [
    pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed"),
    pytest.mark.skipif(os.getuid() != 0, reason="network namespaces need root"),
]

POOLS = {"a": "10.244.0.0/18", "b": "10.244.64.0/18"}
RUNNING_BOUND_S = 30  # from the leader's kill to its instances running on the other


@pytest.fixture
def cluster():
    c = Cluster(("a", "b"))
    c.up()
    try:
        yield c
    finally:
        c.down()


def start_all(cluster, name, database):
    """`skiffd --role all` on host NAME: containers, its own pool, one warm container."""
    h = cluster.host(name)
    p = HostPlatform(h, extra_args=[
        "--store", cluster.postgres_url(database), "--nats", cluster.nats_urls,
        "--nats-replicas", "3", "--host-addr", h.addr, "--network-pool", POOLS[name],
        "--prewarm", "1", "--zone", "zone-" + name],
        extra_env={**HOSTS_MS, "SKIFF_CELL_HEARTBEAT_MS": "500", "SKIFF_GRACE_MS": "2000"},
        containers=True)
    p.name = name
    return p.start(timeout=120)


@pytest.fixture
def pair(cluster):
    """start(name) starts `--role all` on that host (the first started leads); every one is
    stopped and its home removed at the end, its log checked for sanitizer reports."""
    database = "skiff_roleall_%d" % os.getpid()
    cluster.create_database(database)
    with stopped_clean(timeout=60) as started:
        def start(name):
            p = start_all(cluster, name, database)
            started.append(p)
            return p
        yield start


def this_cell(p):
    return cells(p)["this_cell"]


def on(p, leader, name):
    """The app's RUNNING instances (as the leader records them) on skiffd p."""
    here = this_cell(p)
    return [i for i in running(leader, name) if i.get("cell") == here]


def greets(p, host, greeting):
    status, text = http_get(p.router_url + "/", host=host)
    return status == 200 and ("greeting=" + greeting) in text


def push_image(p, tmp_path, server, name, greeting, instances):
    layers = layers_of(server, greeting)
    archive = tmp_path / (name + ".tar")
    oci_archive(archive, layers, image_config(**DEFAULT_CONFIG))
    r = p.cli("push", name, "--docker-image", "oci-archive:%s" % archive, "-i", str(instances),
              timeout=300)
    return r, ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]


def leader_then_follower(pair, first, second):
    """skiffd `first` started and leading, then `second` started, heard and following."""
    lead = pair(first)
    wait_for(lambda: leading(lead), 15, "%s to lead" % first.upper())
    follow = pair(second)
    wait_for(lambda: len(cells(follow)["cells"]) == 2, 15, "both skiffds' heartbeats")
    assert not leading(follow)
    return lead, follow


def test_an_image_staged_through_the_follower_runs_on_the_leader_from_the_blob_store(
        pair, tmp_path, server_binary):
    b, a = leader_then_follower(pair, "b", "a")
    r, layers = push_image(a, tmp_path, server_binary, "img", "staged-on-a", 2)
    # staged on A (its API was asked); the push waits for the leader's instances
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: len(on(b, b, "img")) == 2, 120, "B to run both instances of A's image")
    wait_for(lambda: greets(b, "img.localhost", "staged-on-a"), 30,
             "B's router to serve the image app")
    for d in layers:  # B had none of them: read from the blob store, verified, unpacked
        assert "reading layer %s from the blob store" % d in b.output(), b.output()
        assert "layer %s is here (verified, unpacked)" % d in b.output(), b.output()
        assert os.path.isdir(os.path.join(b.home, "images", "layers", "sha256", d[7:]))
    # the layers B read are kept by its image collection while the droplet is here (a
    # collection runs at a staging's end: another push through B's API)
    r, _ = push_image(b, tmp_path, server_binary, "img2", "staged-on-b", 1)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: greets(b, "img2.localhost", "staged-on-b"), 60, "the second image app")
    for d in layers:
        assert os.path.isdir(os.path.join(b.home, "images", "layers", "sha256", d[7:]))
    assert len(on(b, b, "img")) == 2 and on(a, b, "img") == []


def test_a_killed_leaders_instances_routes_and_events_come_back_on_the_other_and_its_restart_adds_no_duplicate(
        pair, tmp_path, server_binary):
    a, b = leader_then_follower(pair, "a", "b")
    a_id, b_id = this_cell(a), this_cell(b)

    # on A: an image app of two instances and a function mapped to a topic, slow enough
    # that A is killed with events still to deliver
    r, _ = push_image(a, tmp_path, server_binary, "img", "before-the-kill", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: len(on(a, a, "img")) == 2, 120, "A to run the image app")
    wait_for(lambda: greets(a, "img.localhost", "before-the-kill"), 30, "A's router to serve it")
    fn = tmp_path / "slow.py"
    fn.write_text("import time\n\ndef handle(event):\n    time.sleep(0.3)\n"
                  "    return {'seen': event['data']['n']}\n")
    a.cli("push", "slow", "--function", "%s:handle" % fn, check=True, timeout=300)
    a.cli("map-event", "slow", "work", "--reply-topic", "work-done", "--max-instances", "1",
          check=True)
    total = 60
    for n in range(total):
        status, body = a.api("POST", "/v1/topics/work/events",
                             raw=('{"n": %d}' % n).encode(),
                             headers={"Content-Type": "application/json"})
        assert status == 202, body  # acknowledged: it must be delivered
    wait_for(lambda: len(read_all(b, "work-done")) >= 3, 120, "A to deliver some events")

    # A's host crashes: skiffd, its router, its shims and its instances, all SIGKILL
    a.kill_all()
    a.proc.wait(10)
    killed = time.monotonic()
    delivered_by_a = {e["data"]["seen"] for e in read_all(b, "work-done")}
    assert len(delivered_by_a) < total, "A was to be killed with events left to deliver"
    wait_for(lambda: leading(b), 10, "B to lead after A's kill")
    led = time.monotonic() - killed
    wait_for(lambda: len(on(b, b, "img")) == 2, RUNNING_BOUND_S,
             "A's image instances to run on B")
    took = time.monotonic() - killed
    wait_for(lambda: greets(b, "img.localhost", "before-the-kill"), 20,
             "B's router to serve the image app")
    served = time.monotonic() - killed
    print("A killed (it had delivered %d of %d events): B led %.2f s later, ran A's 2 image "
          "instances at %.1f s, its router served them at %.1f s" % (
              len(delivered_by_a), total, led, took, served))
    assert all(i["cell"] == b_id for i in running(b, "img"))

    # every event acknowledged before the kill is delivered (at least once)
    wait_for(lambda: {e["data"]["seen"] for e in read_all(b, "work-done")} ==
             set(range(total)), 180, "every acknowledged event delivered after the kill",
             interval=0.5)
    print("every one of the %d events delivered %.1f s after the kill" % (
        total, time.monotonic() - killed))

    # A comes back on its home: it follows, runs nothing, and no app runs more than asked
    a.start(timeout=120)
    wait_for(lambda: "[LEADER] another skiffd leads" in a.output(), 30, "A to follow")
    assert leading(b) and not leading(a)

    def asked(name):
        status, app = b.api("GET", "/v1/apps/" + name)
        assert status == 200, app
        return app["instances"]

    def a_runs():
        return {c["id"]: c for c in cells(b)["cells"]}[a_id]["instances"]
    wait_for(lambda: a_runs() == 0 and len(running(b, "img")) == asked("img"), 30,
             "A to run nothing and the image app to run as asked")
    deadline = time.monotonic() + 10  # and it stays so
    while time.monotonic() < deadline:
        assert len(running(b, "img")) <= asked("img"), running(b, "img")
        assert len(running(b, "slow")) <= 1, running(b, "slow")
        assert a_runs() == 0, cells(b)
        time.sleep(0.5)
    assert greets(b, "img.localhost", "before-the-kill")


def alive(p, guids):
    """Those of guids whose process skiffd p's executor started (run/instance-GUID.pid) lives."""
    live = set()
    for g in guids:
        try:
            pid = read_pid_file(os.path.join(p.home, "run", "instance-%s.pid" % g))
        except (OSError, ValueError, IndexError):
            continue
        if os.path.exists("/proc/%d" % pid):
            live.add(g)
    return live


def test_a_leader_killed_alone_leaves_instances_that_its_restart_stops(
        pair, tmp_path, server_binary):
    """kill -9 of the leading skiffd only: its instances go on under their shims while the
    other leads and starts them again (so the image app runs twice as many as asked), until
    the killed one, restarted on its home, follows and stops them."""
    a, b = leader_then_follower(pair, "a", "b")
    r, _ = push_image(a, tmp_path, server_binary, "img", "left-over", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: len(on(a, a, "img")) == 2, 120, "A to run the image app")
    on_a = {i["guid"] for i in running(a, "img")}
    assert alive(a, on_a) == on_a

    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    wait_for(lambda: leading(b), 10, "B to lead after A's kill")
    wait_for(lambda: len(on(b, b, "img")) == 2, RUNNING_BOUND_S, "B to run the image app")
    assert alive(a, on_a) == on_a, "A's instances outlive its skiffd (their shims)"

    a.start(timeout=120)
    restarted = time.monotonic()
    wait_for(lambda: not alive(a, on_a), 30, "A, following, to stop what it left running")
    print("A restarted: its 2 leftover instances stopped %.1f s later" % (
        time.monotonic() - restarted))
    assert "[LEADER] another skiffd leads" in a.output(), a.output()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = running(b, "img")
        assert len(now) == 2 and {i["cell"] for i in now} == {this_cell(b)}, now
        time.sleep(0.5)
    assert greets(b, "img.localhost", "left-over")


def test_controller_urls_are_for_cells_only(tmp_path):
    """A skiffd with a store reads droplets and layers from its blob store: --controller-url
    given to it is refused, naming the flag and what to do, before anything starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIFF_")}
    env["HOME"] = str(tmp_path)
    for role in ("all", "controller", "router"):
        r = subprocess.run([os.path.join(BIN_DIR, "skiffd"), "--role", role, "--home",
                            str(tmp_path / role), "--controller-url", "http://10.0.0.1:8090"],
                           env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "--controller-url is where a --role cell fetches" in r.stderr + r.stdout, r.stderr
        assert "drop --controller-url" in r.stderr + r.stdout
        assert not os.path.exists(tmp_path / role / "run"), "nothing started"
