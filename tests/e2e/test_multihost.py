"""Several hosts (network namespaces on a bridge, tests/e2e/multihost.py): host A runs skiffd
(all roles) on PostgreSQL and a 3-node JetStream cluster, host B runs `skiffd --role router`,
host C runs nothing of Skiff.

An app pushed on A is served by B's router (a request from the root namespace to B's address):
B routes A's container pool via A's address, learnt from A's announcement on NATS. Only the
hosts announced as routers or controllers get through A's firewall to an instance: C, with a
route to A's pool of its own making, cannot connect; an instance cannot reach B's router, its
admin port, NATS or PostgreSQL. B's link taken down loses its routes; up again, they come back
and B serves again. A pool that overlaps one another host announced is refused at start."""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse

import pytest

from conftest import BIN_DIR, WEB_APP, free_port, out, wait_for
from multihost import HOSTS_MS, NS_PREFIX, Cluster, HostPlatform, HostRouter, cleanup_leftovers
from test_fabric_crash import read_all
from test_isolation import HOSTILE

pytestmark = [
    pytest.mark.skipif(shutil.which("nats-server") is None, reason="nats-server is not installed"),
    pytest.mark.skipif(os.getuid() != 0, reason="network namespaces need root"),
]



@pytest.fixture(scope="module")
def cluster():
    c = Cluster(("a", "b", "c"))
    c.up()
    try:
        yield c
    finally:
        c.down()


_db = [0]


def start_a(cluster, host="a", extra_args=(), check=True):
    _db[0] += 1
    url = cluster.create_database("skiff_%d_%d" % (os.getpid(), _db[0]))
    h = cluster.host(host)
    p = HostPlatform(h, extra_args=["--store", url, "--nats", cluster.nats_urls,
                                    "--nats-replicas", "3", "--host-addr", h.addr,
                                    "--prewarm", "0", *extra_args],
                     extra_env=dict(HOSTS_MS))
    return p.start() if check else p


@pytest.fixture
def hosts(cluster):
    """(A's platform, B's router), both stopped and removed at the end."""
    started = []
    try:
        a = start_a(cluster)
        started.append(a)
        b = HostRouter(cluster.host("b"), cluster.nats_urls, extra_env=HOSTS_MS).start()
        started.append(b)
        yield a, b
    finally:
        for s in reversed(started):
            try:
                s.close()
            except Exception as e:  # the other one is closed still
                print("closing:", e)


def write_web(tmp_path, version):
    d = tmp_path / version
    d.mkdir(exist_ok=True)
    (d / "app.py").write_bytes(WEB_APP)
    (d / "Procfile").write_text("web: python3 app.py\n")
    if version != "index":  # "index": it answers "instance N"
        (d / "version.txt").write_text(version + "\n")
    return str(d)


def push_web(a, tmp_path, name, version="v0", instances=1):
    r = a.cli("push", name, "-p", write_web(tmp_path, version), "-i", str(instances),
              timeout=300)
    assert r.returncode == 0, out(r)


def instances(a, name):
    status, app = a.api("GET", "/v1/apps/%s" % name)
    assert status == 200, app
    return app["instances_detail"]


def connect_from(host, addr, timeout=2):
    """Whether a TCP connection from host's namespace to addr (HOST:PORT) is accepted."""
    ip, port = addr.rsplit(":", 1)
    code = ("import socket,sys\n"
            "s=socket.socket(); s.settimeout(%s)\n"
            "try:\n s.connect((%r,%s)); print('connected')\n"
            "except OSError as e: print('failed', e)\n" % (timeout, ip, port))
    r = host.run("/usr/bin/python3", "-c", code, check=False, timeout=30)
    return r.stdout.strip()


def test_an_app_on_host_a_is_served_by_the_router_on_host_b_and_only_routers_reach_it(
        cluster, hosts, tmp_path):
    a, b = hosts
    A, B, C = cluster.host("a"), cluster.host("b"), cluster.host("c")
    # B routes A's pool via A, from A's announcement; A lets B in
    wait_for(lambda: "10.244.0.0/16 via %s" % A.addr in B.routes(proto=83), 15,
             "B's route to A's pool")
    push_web(a, tmp_path, "web")
    status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(b.get("web.localhost")),
                            30, "web served by the router on B")
    assert body == "v0\n", body
    addr = instances(a, "web")[0]["address"]
    assert addr.startswith("10.244."), addr

    # B reaches the instance itself; C, given the same route B has, does not
    assert connect_from(B, addr) == "connected"
    C.run("ip", "route", "replace", "10.244.0.0/16", "via", A.addr)
    got = connect_from(C, addr)
    assert got.startswith("failed"), "host C, which runs no router, reached %s: %s" % (addr, got)

    # an instance on A reaches neither B's router nor its admin port, NATS or PostgreSQL
    r = a.cli("push", "hostile", "-p", HOSTILE, timeout=300)
    assert r.returncode == 0, out(r)
    targets = ["%s:%d" % (B.addr, b.port), "%s:%d" % (B.addr, b.admin_port),
               "%s:%d" % (cluster.gateway, cluster.pg_port)]
    targets += [n.url[len("nats://"):] for n in cluster.nats]
    query = urllib.parse.urlencode([("addr", t) for t in targets])
    status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        b.get("hostile.localhost", "/attack/connect?" + query, timeout=60)), 60,
        "the hostile app to answer through B")
    result = json.loads(body)
    assert result["escaped"] is False, "an instance on A reached: %s" % result["detail"]


def test_a_router_host_whose_link_goes_down_and_up_gets_its_routes_back(cluster, hosts, tmp_path):
    a, b = hosts
    A, B = cluster.host("a"), cluster.host("b")
    push_web(a, tmp_path, "flap")
    wait_for(lambda: b.get("flap.localhost") == (200, "v0\n"), 30, "flap served through B")
    B.link_down()
    try:
        assert "proto 83" not in B.routes(), B.routes()  # the kernel took it with the link
        assert b.get("flap.localhost", timeout=3)[0] != 200
    finally:
        B.link_up()
    t0 = time.monotonic()
    wait_for(lambda: "10.244.0.0/16 via %s" % A.addr in B.routes(proto=83), 15,
             "B's route to A's pool after the link came back")
    wait_for(lambda: b.get("flap.localhost") == (200, "v0\n"), 30, "flap served through B again")
    print("B served again %.2f s after its link came back" % (time.monotonic() - t0))


def test_the_walkthrough_across_hosts(cluster, hosts, tmp_path):
    """push, map-route, map-event with a function and publish, scale, logs: through A's API,
    every request through B's router."""
    a, b = hosts
    push_web(a, tmp_path, "shop", "index")
    r = a.cli("map-route", "shop", "store.localhost")
    assert r.returncode == 0, out(r)
    wait_for(lambda: b.get("store.localhost") == (200, "instance 0\n"), 30,
             "store.localhost through B")

    fn = tmp_path / "resize.py"
    fn.write_text("def handle(event):\n    return {'resized': event['data']['n']}\n")
    r = a.cli("push", "resize", "--function", "%s:handle" % fn, timeout=300)
    assert r.returncode == 0, out(r)
    r = a.cli("map-event", "resize", "uploads", "--reply-topic", "resized")
    assert r.returncode == 0, out(r)
    for n in range(3):
        status, body = a.api("POST", "/v1/topics/uploads/events", raw=json.dumps({"n": n}).encode(),
                             headers={"Content-Type": "application/json"})
        assert status == 202, body

    wait_for(lambda: sorted(e["data"]["resized"] for e in read_all(a, "resized")) == [0, 1, 2],
             120, "the function's three replies")

    r = a.cli("scale", "shop", "-i", "2")
    assert r.returncode == 0, out(r)
    # both instances answer through B (round robin over the two backends it learnt)
    wait_for(lambda: {b.get("shop.localhost")[1] for _ in range(4)} ==
             {"instance 0\n", "instance 1\n"}, 60, "B to balance over both instances")

    # B's access lines reach A's log of the app as [RTR/n]
    def rtr_lines():
        r = a.cli("logs", "shop", "--recent")
        return r.returncode == 0 and "[RTR/" in r.stdout and r.stdout
    wait_for(rtr_lines, 30, "B's access lines in `skiff logs shop --recent`")


def test_a_pool_that_overlaps_another_hosts_is_refused_and_a_disjoint_one_is_routed(cluster,
                                                                                   hosts):
    a, b = hosts
    A, B, C = cluster.host("a"), cluster.host("b"), cluster.host("c")
    clash = start_a(cluster, "c", extra_args=["--network-pool", "10.244.128.0/17"], check=False)
    try:
        r = subprocess.run(C.cmd(os.path.join(BIN_DIR, "skiffd"), *clash.extra_args),
                           env=clash.env(), capture_output=True, text=True, timeout=60)
        text = r.stdout + r.stderr
        assert r.returncode != 0, text
        assert ("the container pool 10.244.128.0/17 of this host overlaps the pool "
                "10.244.0.0/16 announced by the host at %s" % A.addr) in text, text
        assert "--network-pool" in text, text
    finally:
        clash.close()
    assert "10.244.128.0/17" not in B.routes(proto=83)

    other = start_a(cluster, "c", extra_args=["--network-pool", "10.245.0.0/16"])
    try:
        wait_for(lambda: "10.245.0.0/16 via %s" % C.addr in B.routes(proto=83) and
                 "10.245.0.0/16 via %s" % C.addr in A.routes(proto=83), 15,
                 "A and B routing C's pool via C")
    finally:
        other.close()
    # C is forgotten once its announcements stop: its pool is no longer routed
    wait_for(lambda: "10.245.0.0/16" not in B.routes(proto=83), 15, "C's pool forgotten on B")


def test_leftover_namespaces_are_named_for_the_run_that_made_them(cluster):
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    mine = [line.split()[0] for line in names.splitlines()
            if line.startswith("%s%d-" % (NS_PREFIX, os.getpid()))]
    assert sorted(mine) == sorted([cluster.switch_ns] + [h.ns for h in cluster.hosts.values()]), \
        names


def nats_publish(cluster, messages):
    """Publishes (subject, payload) pairs in order on one connection to the first NATS node,
    with the plain text protocol, from the root namespace."""
    node = cluster.nats[0]
    with socket.create_connection((cluster.gateway, node.port), timeout=5) as s:
        s.recv(4096)  # INFO
        data = b"CONNECT {\"verbose\":false}\r\n"
        for subject, payload in messages:
            body = json.dumps(payload).encode()
            data += b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(body), body)
        s.sendall(data + b"PING\r\n")
        got = b""
        while b"PONG" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk


def test_forged_host_announcements_route_nothing(cluster, hosts):
    """What a client that may publish on skiff.hosts.* could try: a router's subject claiming
    a pool, and another address claiming A's pool. Neither is routed; A's pool stays via A. A
    well-formed announcement sent after them on the same connection is the mark that they were
    all read."""
    a, b = hosts
    A, B = cluster.host("a"), cluster.host("b")
    wait_for(lambda: "10.244.0.0/16 via %s" % A.addr in B.routes(proto=83), 15, "A's pool on B")
    forger = cluster.subnet + ".99"
    base = {"v": 1, "addr": forger, "ttl_ms": 60000}
    nats_publish(cluster, [
        ("skiff.hosts.router", dict(base, id="f1", roles=["cell"], pool="10.99.0.0/16")),
        ("skiff.hosts.router", dict(base, id="f2", roles=["router"], pool="10.98.0.0/16")),
        ("skiff.hosts.skiffd", dict(base, id="f3", roles=["controller", "cell"],
                                    pool="10.244.0.0/17")),
        ("skiff.hosts.skiffd", dict(base, id="f4", roles=["cell"], pool="10.97.0.0/16")),
    ])
    wait_for(lambda: "10.97.0.0/16 via %s" % forger in B.routes(proto=83), 15,
             "the well-formed announcement routed on B")
    routes = B.routes(proto=83)
    assert "10.99.0.0" not in routes and "10.98.0.0" not in routes, routes
    assert "10.244.0.0/17" not in routes, routes
    assert "10.244.0.0/16 via %s" % A.addr in routes, routes
    assert "overlaps the pool 10.244.0.0/16 of the host at %s: not routed" % A.addr in b.output()


def test_what_a_killed_run_left_is_removed_by_the_next():
    """A namespace named for a run whose process is gone, with a process still in it, is
    removed (the process killed) by cleanup_leftovers, which every Cluster.up calls first; a
    namespace of a live run is left alone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead, live = "%s%d-x" % (NS_PREFIX, gone.pid), "%s%d-y" % (NS_PREFIX, os.getpid())
    try:
        for ns in (dead, live):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", dead, "sleep", "600"])
        wait_for(lambda: str(sleeper.pid) in subprocess.run(
            ["ip", "netns", "pids", dead], capture_output=True, text=True).stdout, 10,
            "the process in the leftover namespace")
        cleanup_leftovers()
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert dead not in names and live in names, names
        assert sleeper.wait(10) == -9
    finally:
        for ns in (dead, live):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_host_address_is_checked_before_anything_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIFF_")}
    env.update({"SKIFF_HOME": str(tmp_path), "SKIFF_BUILTIN_BROKERS": "0"})
    skiffd = os.path.join(BIN_DIR, "skiffd")

    def run(*args):
        r = subprocess.run([skiffd, *args], env=env, capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr
    rc, text = run("--host-addr", "10.250.0.10")
    assert rc == 2 and "--host-addr is announced to the other hosts on NATS: give --nats" in text
    rc, text = run("--role", "router", "--nats", "nats://127.0.0.1:1", "--host-addr", "host-b")
    assert rc == 2 and "--host-addr \"host-b\" needs --nats and an IPv4 address" in text, text
    ports = ["--api-addr", "127.0.0.1:%d" % free_port(), "--router-addr",
             "127.0.0.1:%d" % free_port(), "--router-admin-addr", "127.0.0.1:%d" % free_port(),
             "--router-tls-addr", "", "--api-tls-addr", ""]
    rc, text = run("--nats", "nats://127.0.0.1:1", "--host-addr", "10.250.0.300", *ports)
    assert rc == 1 and "--host-addr \"10.250.0.300\" is not an IPv4 address" in text, text
    rc, text = run("--nats", "nats://127.0.0.1:1", "--host-addr", "10.250.0.10",
                   "--isolation", "process", *ports)
    assert rc == 1 and "--host-addr needs --isolation container" in text, text
