"""The event fabric on NATS JetStream: skiffd --nats against a nats-server (one node, and a
3-node JetStream cluster on loopback ports for R3) that the fixtures start and stop.

publish -> map-event -> function invoked (the invoker unchanged); skiffd killed -9 and
restarted: no acknowledged event lost, the mapping's cursor resumes; one node of the R3
cluster killed: publishes still acknowledged; NATS down: publishing answers a clear 503 at
once; topic names with NATS separators or wildcards never reach a subject."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import Platform, free_port, wait_for
from test_fabric_crash import crash_rounds, read_all

pytestmark = pytest.mark.skipif(shutil.which("nats-server") is None,
                                reason="nats-server is not installed (scripts/deps.sh)")


class NatsServer:
    """One nats-server with JetStream on loopback ports, its store in a temp folder."""

    def __init__(self, store, name="n0", cluster_port=None, routes=()):
        self.store = store
        self.name = name
        self.port = free_port()
        self.monitor_port = free_port()
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.proc = None

    @property
    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def start(self):
        args = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port), "-m",
                str(self.monitor_port), "-sd", os.path.join(self.store, self.name), "-n",
                self.name]
        if self.cluster_port:
            args += ["--cluster_name", "skiff", "--cluster",
                     "nats://127.0.0.1:%d" % self.cluster_port, "--routes", ",".join(self.routes)]
        log = open(os.path.join(self.store, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.jsz() is not None, 15, "nats-server %s to answer" % self.name)
        return self

    def jsz(self, query=""):
        with urllib.request.urlopen("http://127.0.0.1:%d/jsz%s" % (self.monitor_port, query),
                                    timeout=2) as r:
            return json.load(r)

    def streams(self):
        out = []
        for acc in self.jsz("?accounts=true&streams=true&config=true").get("account_details", []):
            for st in acc.get("stream_detail", []):
                out.append(st)
        return out

    def stop(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)


@pytest.fixture
def nats():
    store = tempfile.mkdtemp(prefix="skiff-nats-")
    s = NatsServer(store).start()
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(store, ignore_errors=True)


@pytest.fixture
def nats_cluster():
    store = tempfile.mkdtemp(prefix="skiff-nats3-")
    cports = [free_port() for _ in range(3)]
    routes = ["nats://127.0.0.1:%d" % p for p in cports]
    nodes = [NatsServer(store, "n%d" % i, cports[i], routes) for i in range(3)]
    try:
        for n in nodes:
            n.start()
        # JetStream in a cluster serves once its meta group has a leader
        wait_for(lambda: all(n.jsz().get("meta_cluster", {}).get("leader") for n in nodes), 30,
                 "the JetStream cluster to elect a meta leader")
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        shutil.rmtree(store, ignore_errors=True)


def nats_platform(urls, replicas=1):
    return Platform(extra_args=["--nats", ",".join(urls), "--nats-replicas", str(replicas)])


def publish(p, topic, data, timeout=30):
    return p.api("POST", "/v1/topics/%s/events" % topic, raw=json.dumps(data).encode(),
                 headers={"Content-Type": "application/json"})


def test_publish_map_event_invokes_function_and_nats_down_is_503(nats, tmp_path):
    fn = tmp_path / "echo.py"
    fn.write_text("def handle(event):\n    return {'seen': event['data']['n']}\n")
    p = nats_platform([nats.url]).start()
    try:
        p.cli("push", "echo", "--function", "%s:handle" % fn, check=True, timeout=300)
        p.cli("map-event", "echo", "orders", "--reply-topic", "orders-done", check=True)
        for n in range(5):
            status, body = publish(p, "orders", {"n": n})
            assert status == 202, body
            assert body["offset"] == n
        wait_for(lambda: sorted(e["data"]["seen"] for e in read_all(p, "orders-done")) ==
                 list(range(5)), 120, "the function's replies to all five events")
        # the events are in JetStream, not in the embedded log
        names = {st["name"]: st for st in nats.streams()}
        assert "SKIFF_EV_orders" in names and "SKIFF_EV_orders-done" in names, names
        assert "SKIFF_CURSORS" in names
        assert not os.path.exists(os.path.join(p.home, "fabric", "topics"))

        # hostile names: NATS separators and wildcards are refused before any subject
        before = set(names)
        for topic in ("a.%3E", "a.%2A", "%3E", "a%2Eb", "a~b"):
            status, body = publish(p, topic, {"n": 0})
            assert status in (400, 404), (topic, status, body)
        assert set(st["name"] for st in nats.streams()) == before

        nats.stop()
        t0 = time.monotonic()
        status, body = wait_for(lambda: (lambda r: r if r[0] != 202 else None)(
            publish(p, "orders", {"n": 99})), 20, "publishing to fail once NATS is gone")
        assert status == 503, body
        assert "NATS" in body["error"]["message"], body
        t1 = time.monotonic()
        status, body = publish(p, "orders", {"n": 100})
        assert status == 503 and time.monotonic() - t1 < 1.0, (status, body)
        assert p.proc.poll() is None, "skiffd died with NATS down"
        print("NATS down: first refusal after %.2f s, then at once" % (t1 - t0))

        nats.start()  # same port and store: skiffd reconnects by itself
        wait_for(lambda: publish(p, "orders", {"n": 5})[0] == 202, 30,
                 "publishing to work again once NATS is back")
        wait_for(lambda: 5 in [e["data"]["seen"] for e in read_all(p, "orders-done")], 120,
                 "delivery to resume once NATS is back")
    finally:
        p.close()


def test_kill_9_loses_no_acknowledged_event_and_cursor_resumes(nats, tmp_path):
    fn = tmp_path / "echo_id.py"
    fn.write_text("def handle(event):\n    return {'seen': event['id']}\n")
    p = nats_platform([nats.url]).start()
    try:
        p.cli("push", "echoid", "--function", "%s:handle" % fn, check=True, timeout=300)
        p.cli("map-event", "echoid", "crash", "--reply-topic", "crash-replies", check=True)
        acked = {}
        crash_rounds(p, acked, rounds=2)

        def replies():
            seen = {}
            for ev in read_all(p, "crash-replies"):
                k = (ev.get("data") or {}).get("seen")
                seen[k] = seen.get(k, 0) + 1
            return seen
        wait_for(lambda: all(i in replies() for i in acked), 180,
                 "every acknowledged event to be delivered", interval=0.5)
        seen = replies()
        twice = sum(1 for i in seen if seen[i] > 1)
        print("delivery: %d acknowledged, all delivered, %d more than once" % (len(acked), twice))
        # the cursor resumed: redeliveries are bounded by what was in flight at each kill,
        # not the whole topic again
        assert twice < len(acked) // 2, (twice, len(acked))
    finally:
        p.close()


def test_r3_cluster_keeps_acknowledging_with_a_node_down(nats_cluster):
    urls = [n.url for n in nats_cluster]
    p = nats_platform(urls, replicas=3).start()
    try:
        acked = []
        for n in range(20):
            status, body = publish(p, "r3", {"n": n})
            assert status == 202, body
            acked.append(n)
        streams = [st for st in nats_cluster[0].streams() if st["name"] == "SKIFF_EV_r3"]
        assert streams and streams[0]["config"]["num_replicas"] == 3, streams
        # the stream's leader goes: the hardest node to lose
        leader = streams[0]["cluster"]["leader"]
        lost = [n for n in nats_cluster if n.name == leader][0]
        lost.stop()
        survivors = [n for n in nats_cluster if n is not lost]
        # a leader on the lost node is replaced within seconds: publishing may be refused
        # (503) meanwhile, never hang, and is acknowledged again after
        wait_for(lambda: publish(p, "r3", {"n": 1000})[0] == 202, 30,
                 "a publish acknowledged with one node down")
        for n in range(20, 40):
            status, body = publish(p, "r3", {"n": n})
            assert status == 202, body
            acked.append(n)
        got = [e["data"]["n"] for e in read_all(p, "r3") if e["data"]["n"] < 1000]
        assert all(n in got for n in acked), sorted(set(acked) - set(got))
        new_leader = [st for st in survivors[0].streams() if st["name"] == "SKIFF_EV_r3"]
        print("R3: stream leader %s killed, %s leads now, %d acknowledged events all kept" %
              (leader, new_leader[0]["cluster"]["leader"], len(acked)))
    finally:
        p.close()


def test_spaces_stay_apart_on_jetstream(nats):
    """Two orgs' topics of one name are two streams; no name a tenant can send reaches the
    other's stream."""
    from test_tenancy_isolation import PASSWORD, call
    p = nats_platform([nats.url]).start()
    try:
        admin = p.token
        tokens, space_guid = {}, {}
        for user, org in (("alice", "a"), ("bob", "b")):
            assert call(p, admin, "POST", "/v1/users", {"name": user, "password": PASSWORD})[0] == 201
            assert call(p, admin, "POST", "/v1/orgs", {"name": org})[0] == 201
            status, body = call(p, admin, "POST", "/v1/orgs/%s/spaces" % org, {"name": "dev"})
            assert status == 201, body
            space_guid[user] = body["guid"]
            assert call(p, admin, "PUT", "/v1/orgs/%s/spaces/dev/users/%s/roles/SpaceDeveloper"
                        % (org, user))[0] == 204
            status, body = call(p, None, "POST", "/v1/auth/token", {
                "grant_type": "password", "username": user, "password": PASSWORD})
            assert status == 200, body
            tokens[user] = body["access_token"]
        A, B = "space=a%2Fdev", "space=b%2Fdev"
        assert call(p, tokens["alice"], "POST", "/v1/topics/orders/events?" + A,
                    {"from": "alice"})[0] == 202

        def alice_stream():
            hexid = space_guid["alice"].replace("-", "")
            found = [st for st in nats.streams() if st["name"] == "SKIFF_EV_s%s~orders" % hexid]
            assert len(found) == 1, [st["name"] for st in nats.streams()]
            return found[0]["state"]["messages"]
        assert alice_stream() == 1
        hexid = space_guid["alice"].replace("-", "")
        tricks = ["orders", "s%s.orders" % hexid, "s%s~orders" % hexid, "..%2Forders",
                  "a%2Fdev%2Forders", "%2A", "%3E", "s" + hexid + ".%3E", "orders.%2A"]
        for topic in tricks:
            status, body = call(p, tokens["bob"], "POST", "/v1/topics/%s/events?%s" % (topic, B),
                                {"from": "bob"})
            assert status in (202, 400, 403, 404), (topic, status, body)
        assert alice_stream() == 1
        status, text = call(p, tokens["alice"], "GET", "/v1/topics/orders/events?%s&from=start" % A)
        assert status == 200 and "bob" not in json.dumps(text), text
    finally:
        p.close()
