"""Two `skiffd --role all` on hosts of their own (network namespaces on a bridge,
tests/e2e/multihost.py), on one PostgreSQL database and a 3-node JetStream cluster: each runs
in containers with its own network pool and its own warm container; one leads, and both are
cells for it: the leader places instances on its own executor and on the other's (a start
request on NATS), spreading each process over both.

An image staged through the follower runs on both: each brings the droplet and the image's
layers it lacks from the blob store they share (no file system is shared); a leader that runs
none of an image's instances copies none of its layers. The leader killed with SIGKILL (it and
everything it started: its router, shims, instances): the other leads, keeps the instances it
runs (the same processes, adopted), runs the dead one's within RUNNING_BOUND_S, serves their
routes through its own router, and delivers every event that was published and acknowledged
before the kill. The killed one restarted on its home follows, and no app runs more instances
than asked."""
import hashlib
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BIN_DIR, http_get, read_pid_file, wait_for
from controllers import cells, leading, stopped_clean
from multihost import HOSTS_MS, Cluster, HostPlatform, HostRouter, backends, running
from test_fabric_crash import read_all
from test_images import DEFAULT_CONFIG, image_config, layers_of, oci_archive
from test_images import server_binary  # noqa: F401 (a fixture)
from test_cells import Client

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


def start_all(cluster, name, database, more_args=(), env=None):
    """`skiffd --role all` on host NAME: containers, its own pool, one warm container."""
    h = cluster.host(name)
    p = HostPlatform(h, extra_args=[
        "--store", cluster.postgres_url(database), "--nats", cluster.nats_urls,
        "--nats-replicas", "3", "--host-addr", h.addr, "--network-pool", POOLS[name],
        "--prewarm", "1", "--zone", "zone-" + name, *more_args],
        extra_env={**HOSTS_MS, "SKIFF_CELL_HEARTBEAT_MS": "500", "SKIFF_GRACE_MS": "2000",
                   **(env or {})},
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
        def start(name, more_args=(), env=None):
            p = start_all(cluster, name, database, more_args, env)
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


def leader_then_follower(pair, first, second, leader_args=(), follower_args=(), env=None):
    """skiffd `first` started and leading, then `second` started, heard and following."""
    lead = pair(first, leader_args, env)
    wait_for(lambda: leading(lead), 15, "%s to lead" % first.upper())
    follow = pair(second, follower_args, env)
    wait_for(lambda: len(cells(follow)["cells"]) == 2, 15, "both skiffds' heartbeats")
    assert not leading(follow)
    return lead, follow


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


def instance_pids(p):
    """guid -> pid of every instance whose process skiffd p's executor started and still lives
    (its run/instance-GUID.pid; warm containers aside)."""
    run = os.path.join(p.home, "run")
    out = {}
    for name in os.listdir(run) if os.path.isdir(run) else []:
        if not (name.startswith("instance-") and name.endswith(".pid")):
            continue
        guid = name[len("instance-"):-len(".pid")]
        if guid.startswith("warm-"):
            continue  # a warm container waiting for an instance
        try:
            pid = read_pid_file(os.path.join(run, name))
        except (OSError, ValueError, IndexError):
            continue
        if os.path.exists("/proc/%d" % pid):
            out[guid] = pid
    return out


def environ_of(pid):
    with open("/proc/%d/environ" % pid, "rb") as f:
        return f.read()


def spread(leader, a, b, name):
    """The app's RUNNING instances, one on each skiffd (as the leader records them)."""
    return len(on(a, leader, name)) == 1 and len(on(b, leader, name)) == 1


def test_an_image_staged_through_the_follower_runs_on_both_from_the_blob_store(
        pair, tmp_path, server_binary):
    b, a = leader_then_follower(pair, "b", "a")
    r, layers = push_image(a, tmp_path, server_binary, "img", "staged-on-a", 2)
    # staged on A (its API was asked); the push waits for the leader's instances
    assert r.returncode == 0, r.stdout + r.stderr
    # the leader B places one instance on its own executor and one on A's: a process is
    # never twice on one cell while another with room has none
    wait_for(lambda: spread(b, a, b, "img"), 120, "one instance of A's image on each skiffd")
    wait_for(lambda: greets(b, "img.localhost", "staged-on-a"), 30,
             "B's router to serve the image app")
    for d in layers:  # B had none of them: read from the blob store, verified, unpacked
        assert "reading layer %s from the blob store" % d in b.output(), b.output()
        assert "layer %s is here (verified, unpacked)" % d in b.output(), b.output()
        assert os.path.isdir(os.path.join(b.home, "images", "layers", "sha256", d[7:]))
    # A's instance runs on A's executor, started at B's request over NATS
    on_a = {i["guid"] for i in on(a, b, "img")}
    assert alive(a, on_a) == on_a, "A runs its instance itself"
    assert "for the leader" in a.output(), a.output()
    # the layers B read are kept by its image collection while the droplet is here (a
    # collection runs at a staging's end: another push through B's API)
    r, _ = push_image(b, tmp_path, server_binary, "img2", "staged-on-b", 1)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: greets(b, "img2.localhost", "staged-on-b"), 60, "the second image app")
    for d in layers:
        assert os.path.isdir(os.path.join(b.home, "images", "layers", "sha256", d[7:]))
    assert spread(b, a, b, "img")


def test_a_leader_that_runs_none_of_an_image_copies_none_of_its_layers(
        pair, tmp_path, server_binary):
    """B leads with no room for the image's instances on its own executor (--memory): they
    all go to A, which staged the image; B reads neither its droplet nor its layers."""
    b, a = leader_then_follower(pair, "b", "a", leader_args=("--memory", "64M"))
    r, layers = push_image(a, tmp_path, server_binary, "img", "only-on-a", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: len(on(a, b, "img")) == 2, 120, "both instances on A")
    wait_for(lambda: greets(b, "img.localhost", "only-on-a"), 30, "B's router to serve them")
    assert on(b, b, "img") == []
    for d in layers:
        assert "reading layer %s from the blob store" % d not in b.output(), b.output()
        assert not os.path.exists(os.path.join(b.home, "images", "layers", "sha256", d[7:]))
    drops = os.path.join(b.home, "blobs", "droplets")
    assert not os.path.isdir(drops) or os.listdir(drops) == [], os.listdir(drops)


def droplets_here(p):
    """The droplets brought to skiffd p from the blob store (HOME/blobs/droplets/HEX)."""
    d = os.path.join(p.home, "blobs", "droplets")
    return {n for n in os.listdir(d) if len(n) == 64} if os.path.isdir(d) else set()


def test_droplets_brought_to_a_skiffd_go_once_nothing_there_runs_them(
        pair, tmp_path, server_binary):
    """Two image apps staged through the leader B, which has no room for them (--memory):
    their instances run on A, which brings their droplets from the blob store (B's apps/
    folder is removed after each staging: the hosts share no file system). Once one app
    stops, A removes its droplet after the grace, and keeps the other's, which an instance
    runs from."""
    grace = ("--droplet-grace-ms", "1000")
    b, a = leader_then_follower(pair, "b", "a", leader_args=("--memory", "64M", *grace),
                                follower_args=grace)

    def push(name, greeting):
        layers = layers_of(server_binary, greeting)
        archive = tmp_path / (name + ".tar")
        oci_archive(archive, layers, image_config(**DEFAULT_CONFIG))
        b.cli("push", name, "--docker-image", "oci-archive:%s" % archive, "--no-start",
              check=True, timeout=300)
        shutil.rmtree(os.path.join(b.home, "apps"))  # A finds the droplet in the blob store
        b.cli("start", name, check=True, timeout=300)
        wait_for(lambda: len(on(a, b, name)) == 1, 120, "%s's instance on A" % name)

    push("one", "first")
    first = droplets_here(a)
    assert len(first) == 1, first
    push("two", "second")
    both = droplets_here(a)
    assert len(both) == 2 and first < both, both
    assert droplets_here(b) == set(), "B runs none of them: it brought none here"

    b.cli("stop", "two", check=True)
    stopped = time.monotonic()
    wait_for(lambda: droplets_here(a) == first, 30, "A to remove the stopped app's droplet")
    print("the stopped app's droplet left A %.1f s after the stop (grace 1 s)" % (
        time.monotonic() - stopped))
    assert time.monotonic() - stopped >= 1.0, "not before the grace"
    gone = (both - first).pop()
    assert "droplet sha256:%s" % gone in a.output() and "was removed from" in a.output()
    # the one an instance runs from stayed through that collection, and still serves
    assert len(on(a, b, "one")) == 1
    assert greets(b, "one.localhost", "first")


def test_a_killed_leaders_instances_routes_and_events_come_back_on_the_other_and_its_restart_adds_no_duplicate(
        pair, tmp_path, server_binary):
    a, b = leader_then_follower(pair, "a", "b")
    a_id, b_id = this_cell(a), this_cell(b)

    # on A: an image app of two instances (one on each skiffd) and a function mapped to a
    # topic, slow enough that A is killed with events still to deliver
    r, _ = push_image(a, tmp_path, server_binary, "img", "before-the-kill", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: spread(a, a, b, "img"), 120, "one instance of the image app on each")
    wait_for(lambda: greets(a, "img.localhost", "before-the-kill"), 30, "A's router to serve it")
    kept = {i["guid"] for i in on(b, a, "img")}
    kept_pids = {g: instance_pids(b)[g] for g in kept}
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
             "A's image instance to run on B beside B's own")
    took = time.monotonic() - killed
    wait_for(lambda: greets(b, "img.localhost", "before-the-kill"), 20,
             "B's router to serve the image app")
    served = time.monotonic() - killed
    print("A killed (it had delivered %d of %d events): B led %.2f s later, ran A's image "
          "instance at %.1f s, its router served them at %.1f s" % (
              len(delivered_by_a), total, led, took, served))
    now = running(b, "img")
    assert len(now) == 2 and all(i["cell"] == b_id for i in now), now
    # B's own instance was adopted, not started again: the same guid, the same process
    assert kept <= {i["guid"] for i in now}, (kept, now)
    assert {g: instance_pids(b).get(g) for g in kept} == kept_pids
    # and no duplicate: B's executor runs exactly the two image instances and the function's
    assert len(instance_pids(b)) <= 2 + 1, instance_pids(b)

    # every event acknowledged before the kill is delivered (at least once)
    wait_for(lambda: {e["data"]["seen"] for e in read_all(b, "work-done")} ==
             set(range(total)), 180, "every acknowledged event delivered after the kill",
             interval=0.5)
    print("every one of the %d events delivered %.1f s after the kill" % (
        total, time.monotonic() - killed))

    # A comes back on its home: it follows, and no app runs more than asked
    a.start(timeout=120)
    wait_for(lambda: "[LEADER] another skiffd leads" in a.output(), 30, "A to follow")
    assert leading(b) and not leading(a)

    def asked(name):
        status, app = b.api("GET", "/v1/apps/" + name)
        assert status == 200, app
        return app["instances"]

    def total_processes():
        return len(instance_pids(a)) + len(instance_pids(b))
    wait_for(lambda: len(running(b, "img")) == asked("img") and
             total_processes() <= asked("img") + 1, 30,
             "A's leftovers gone and the image app to run as asked")
    deadline = time.monotonic() + 10  # and it stays so
    while time.monotonic() < deadline:
        assert len(running(b, "img")) <= asked("img"), running(b, "img")
        assert len(running(b, "slow")) <= 1, running(b, "slow")
        assert total_processes() <= asked("img") + 1, (instance_pids(a), instance_pids(b))
        time.sleep(0.5)
    assert greets(b, "img.localhost", "before-the-kill")
    assert {c["id"] for c in cells(b)["cells"]} == {a_id, b_id}


def test_every_router_serves_the_leaders_table_the_followers_own_included(
        pair, cluster, tmp_path, server_binary):
    """Both skiffds are on NATS, but only the leader announces the routes there: a router on
    NATS (another process on A's host) and the follower's own router serve the app's two
    instances announcement after announcement. Before, each skiffd announced its own table,
    the follower's without backends, and a router on NATS served the one it heard last (503
    no-instance while it was the follower's); the follower's own router, fed by its skiffd
    on the socket, served nothing. The leader killed, the other announces (its versions above
    the dead one's, so routers acknowledge them) and both routers serve the app from it."""
    fast = {"SKIFF_BUS_ANNOUNCE_MS": "200", "SKIFF_BUS_TTL_MS": "5000"}
    b, a = leader_then_follower(pair, "b", "a", env=fast)
    router = HostRouter(cluster.host("a"), cluster.nats_urls, extra_env=HOSTS_MS)
    try:
        router.start()
        r, _ = push_image(b, tmp_path, server_binary, "img", "from-the-leader", 2)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: spread(b, a, b, "img"), 120, "one instance on each skiffd")
        wait_for(lambda: router.get("img.localhost")[0] == 200, 30,
                 "the router on NATS to serve the app")
        wait_for(lambda: greets(a, "img.localhost", "from-the-leader"), 30,
                 "the follower's own router to serve the app")
        # 20 announcements of each skiffd's (200 ms): every request answered by an instance
        failed, sent = [], 0
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for via in (router.router_url, a.router_url):
                status, text = http_get(via + "/", host="img.localhost", timeout=5)
                sent += 1
                if status != 200 or "greeting=from-the-leader" not in text:
                    failed.append((via, status, text[:80]))
            time.sleep(0.02)
        assert not failed, "%d of %d requests through the routers failed: %s" % (
            len(failed), sent, failed[:5])
        assert len(backends(router, "img.localhost")) == 2
        assert "not announcing the route table on NATS" in a.output(), a.output()
        # the NATS servers (a URL may hold a password) are in the routers' environment only:
        # not in skiffd's, nor in what it starts for tenants
        for p in (a, b):
            assert b"SKIFF_ROUTER_NATS=" in environ_of(read_pid_file(
                os.path.join(p.home, "run", "router.pid")))
            assert b"SKIFF_ROUTER_NATS" not in environ_of(p.proc.pid)
            pids = instance_pids(p)
            assert pids, "an instance runs on %s" % p.name
            for pid in pids.values():
                assert b"NATS" not in environ_of(pid), (p.name, environ_of(pid))

        # the leader's host crashes: A leads, runs both instances and announces them
        b.kill_all()
        b.proc.wait(10)
        wait_for(lambda: leading(a), 10, "A to lead after B's kill")
        wait_for(lambda: len(on(a, a, "img")) == 2, RUNNING_BOUND_S, "both instances on A")
        wait_for(lambda: router.get("img.localhost")[0] == 200 and
                 set(backends(router, "img.localhost")) ==
                 {i["address"] for i in running(a, "img")}, 20,
                 "the router on NATS to serve A's instances")
        wait_for(lambda: greets(a, "img.localhost", "from-the-leader"), 20,
                 "A's own router to serve its instances")
        assert "announcing the route table on NATS (this skiffd runs" in a.output()
    finally:
        router.close()


def test_a_leader_killed_alone_leaves_an_instance_that_its_restart_stops(
        pair, tmp_path, server_binary):
    """kill -9 of the leading skiffd only: its instance goes on under its shim while the
    other leads and starts it again (so the image app runs one more than asked), until the
    killed one, restarted on its home, follows and lists it in its heartbeat, and the leader,
    its slot taken, has it stopped (the surplus of a lost cell that came back)."""
    a, b = leader_then_follower(pair, "a", "b")
    r, _ = push_image(a, tmp_path, server_binary, "img", "left-over", 2)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: spread(a, a, b, "img"), 120, "one instance of the image app on each")
    on_a = {i["guid"] for i in on(a, a, "img")}
    assert alive(a, on_a) == on_a

    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    wait_for(lambda: leading(b), 10, "B to lead after A's kill")
    wait_for(lambda: len(on(b, b, "img")) == 2, RUNNING_BOUND_S, "B to run the image app")
    assert alive(a, on_a) == on_a, "A's instance outlives its skiffd (its shim)"

    a.start(timeout=120)
    restarted = time.monotonic()
    wait_for(lambda: not alive(a, on_a), 30, "A, following, to stop what it left running")
    print("A restarted: its leftover instance stopped %.1f s later" % (
        time.monotonic() - restarted))
    assert "[LEADER] another skiffd leads" in a.output(), a.output()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        now = running(b, "img")
        assert len(now) == 2 and {i["cell"] for i in now} == {this_cell(b)}, now
        time.sleep(0.5)
    assert greets(b, "img.localhost", "left-over")


def test_a_leader_takes_no_start_request_and_a_follower_refuses_a_malformed_one(
        cluster, pair, tmp_path):
    """Whoever reaches NATS and sends start requests to the skiffds' subjects: the leader
    ignores them (it places, it is not placed on), a follower refuses a malformed one naming
    the field, and neither starts anything."""
    b, a = leader_then_follower(pair, "b", "a")
    a_id, b_id = this_cell(a), this_cell(b)
    node = cluster.nats[0]
    spy = Client(node.port, host=cluster.gateway)
    spy.sub("skiff.cell.*.up")
    # both announce themselves as cells: the follower says it does not lead
    heard = {}
    spy.wait_msg(lambda s, m: m.get("type") == "heartbeat" and
                 heard.update({m["id"]: m}) is None and {a_id, b_id} <= set(heard),
                 15, "both skiffds' heartbeats on NATS")
    assert heard[b_id]["leading"] is True and heard[a_id]["leading"] is False, heard
    assert heard[a_id]["blobs"] == "store"

    droplet = tmp_path / "droplet"
    (droplet / "app").mkdir(parents=True)
    (droplet / "app" / "app.py").write_text("print('forged')\n")
    forged = {"app_guid": "0b3a0c0e-1111-4222-8333-444455556666", "app_name": "forged",
              "process_type": "web", "index": 0,
              "instance_guid": "1b3a0c0e-1111-4222-8333-444455556666",
              "droplet_guid": "7b3a0c0e-1111-4222-8333-444455556666",
              "droplet_path": str(droplet), "command": "python3 app.py", "memory_mb": 64,
              "health": "process", "uris": [], "user_env": []}
    spy.pub("skiff.cell.%s.req" % b_id, {"v": 1, "op": "start", "launch": forged})
    bad = dict(forged, instance_guid="2b3a0c0e-1111-4222-8333-444455556666",
               process_type="../web")
    spy.pub("skiff.cell.%s.req" % a_id, {"v": 1, "op": "start", "launch": bad})
    _, m = spy.wait_msg(lambda s, m: s == "skiff.cell.%s.up" % a_id and
                        m.get("type") == "state" and m.get("guid") == bad["instance_guid"],
                        15, "the follower's refusal")
    assert m["state"] == "CRASHED" and "process_type" in m.get("reason", ""), m
    # two heartbeats of each later: nothing runs, nothing was started for the forger
    for _ in range(2):
        for cid in (a_id, b_id):
            _, hb = spy.wait_msg(lambda s, m, cid=cid: s == "skiff.cell.%s.up" % cid and
                                 m.get("type") == "heartbeat" and m.get("at_ms", 0) >
                                 heard[cid]["at_ms"], 15, "a later heartbeat")
            heard[cid] = hb
            assert hb["instances"] == [], hb
    assert instance_pids(a) == {} and instance_pids(b) == {}
    assert "for the leader" not in b.output() + a.output()
    spy.close()


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
