"""Instances keep running while the skiffd that runs them restarts or loses its database
session, on one PostgreSQL store and one NATS server (so that every `--role all` skiffd is a
cell for the leader):

- a follower stopped with SIGTERM and started again on its home keeps what it ran for the
  leader (the same processes, taken over again), and the leader, hearing it back within its
  lost-cell window, starts nothing elsewhere;
- a leader whose session the server ends keeps its instances: alone, its router serves them
  all along and it leads again with the same processes, even while heartbeats forged on NATS
  say that another leads (only the store's word gives them up); beside another skiffd, that
  one leads and adopts them (the same guids and processes) instead of starting them again;
- a restart asked of a skiffd that does not lead (a follower that kept instances across its
  own restart, or a leader that lost its session and holds its own) stops nothing there and
  is carried out by whoever leads.

Each skiffd has its own home and its own range of instance ports; instances run as host
processes (--isolation process)."""
import os
import signal
import threading
import time
import uuid

import pytest

from conftest import WEB_APP, Platform, deploy_bits, http_get, read_pid_file, wait_for
from controllers import (LEADER_BOUND_S, cells, leading, needs_postgres, pg_dir,  # noqa: F401
                         psql, stopped_clean)
from test_cells import Client
from test_fabric_nats import nats  # noqa: F401  (a fixture)

pytestmark = [
    needs_postgres,
    pytest.mark.skipif(not os.access("/usr/sbin/nats-server", os.X_OK) and
                       not os.access("/usr/bin/nats-server", os.X_OK),
                       reason="nats-server is not installed (scripts/deps.sh)"),
]

PORTS = {"zone-a": (61000, 61999), "zone-b": (62000, 62999)}


def keeper(pg_dir, nats, zone, lost_ms=5000):
    """`skiffd --role all` on the shared store and NATS, in zone `zone`."""
    url = f"postgresql://postgres@/postgres?host={pg_dir}"
    low, high = PORTS[zone]
    return Platform(extra_args=["--store", url, "--isolation", "process", "--zone", zone,
                                "--nats", nats.url],
                    extra_env={"SKIFF_CELL_HEARTBEAT_MS": "300", "SKIFF_PREWARM": "0",
                               "SKIFF_CELL_LOST_MS": str(lost_ms),
                               "SKIFF_PORT_MIN": str(low), "SKIFF_PORT_MAX": str(high)})


def leader_and_follower(made, pg_dir, nats, lost_ms=5000):
    """Two keepers started in turn (recorded in made): a leads, b follows; both have sent
    their heartbeats."""
    a = keeper(pg_dir, nats, "zone-a", lost_ms=lost_ms)
    made.append(a)
    a.start()
    wait_for(lambda: leading(a), 15, "the first skiffd to lead")
    b = keeper(pg_dir, nats, "zone-b")
    made.append(b)
    b.start()
    wait_for(lambda: len(cells(a)["cells"]) == 2, 15, "both skiffds' heartbeats")
    return a, b


def deploy(p, name, instances):
    deploy_bits(p, name, [("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)],
                {"instances": instances})
    status, body = p.api("POST", "/v1/routes", {"app": name, "host": f"{name}.localhost"})
    assert status in (200, 201), body


def this_cell(p):
    return cells(p)["this_cell"]


def running(leader, name):
    """The app's RUNNING instances, as the leader shows them (each names its cell)."""
    status, app = leader.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return [i for i in app.get("instances_detail", []) if i.get("state") == "RUNNING"]


def pid_of(p, guid):
    """The live pid of instance guid on skiffd p's home, or None."""
    try:
        pid = read_pid_file(os.path.join(p.home, "run", "instance-%s.pid" % guid))
    except (OSError, ValueError, IndexError):
        return None
    return pid if os.path.exists("/proc/%d" % pid) else None


def instance_processes(*ps):
    """How many instance processes the skiffds' homes record as alive."""
    n = 0
    for p in ps:
        run = os.path.join(p.home, "run")
        for name in os.listdir(run) if os.path.isdir(run) else []:
            if name.startswith("instance-") and name.endswith(".pid") and \
                    pid_of(p, name[len("instance-"):-len(".pid")]):
                n += 1
    return n


def serves(p, name):
    status, text = http_get(p.router_url + "/", host=f"{name}.localhost", timeout=2)
    return status == 200 and text.startswith("instance")


class Ticking:
    """Calls self.tick() from a thread every self.every seconds, from entering the context
    until leaving it (then self.close())."""
    every = 0.05

    def __init__(self):
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.done.is_set():
            self.tick()
            time.sleep(self.every)

    def close(self):
        pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(10)
        self.close()


class Prober(Ticking):
    """Sends a request through p's router every 50 ms from a thread until stopped; counts
    the answers that are not the app's."""

    def __init__(self, p, name):
        super().__init__()
        self.p, self.name = p, name
        self.sent = self.failed = 0
        self.failures = []

    def tick(self):
        status, text = http_get(self.p.router_url + "/", host=f"{self.name}.localhost",
                                timeout=2)
        self.sent += 1
        if not (status == 200 and text.startswith("instance")):
            self.failed += 1
            self.failures.append((round(time.monotonic(), 2), status, text[:80]))


def lone_leader_serving(made, pg_dir, nats, name):
    """A keeper started alone (appended to made), leading, with one instance of the app name
    running and served through its router: (the platform, the instance's guid, its pid)."""
    a = keeper(pg_dir, nats, "zone-a")
    made.append(a)
    a.start()
    wait_for(lambda: leading(a), 15, "the skiffd to lead")
    deploy(a, name, 1)
    wait_for(lambda: len(running(a, name)) == 1, 60, "the instance to run")
    wait_for(lambda: serves(a, name), 20, "the router to serve the app")
    guid = running(a, name)[0]["guid"]
    pid = pid_of(a, guid)
    assert pid
    return a, guid, pid


def end_leader_session(pg_dir, p):
    ended = psql(pg_dir, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         f"WHERE application_name = 'skiffd leader {this_cell(p)}'")
    assert ended.strip() == "1", ended


def test_a_follower_restarted_with_sigterm_keeps_what_it_runs_and_the_leader_starts_nothing(
        pg_dir, nats):  # noqa: F811
    with stopped_clean() as made:
        # the leader's lost-cell window is wide enough for a restart under the sanitizers
        a, b = leader_and_follower(made, pg_dir, nats, lost_ms=30000)
        b_id = this_cell(b)
        deploy(a, "keep", 2)
        wait_for(lambda: len(running(a, "keep")) == 2 and
                 {i["cell"] for i in running(a, "keep")} == {this_cell(a), b_id}, 60,
                 "one instance on each skiffd")
        wait_for(lambda: serves(a, "keep"), 20, "the leader's router to serve the app")
        before = {i["guid"]: i["cell"] for i in running(a, "keep")}
        on_b = next(g for g, c in before.items() if c == b_id)
        pid = pid_of(b, on_b)
        assert pid, "the follower's instance has a live process"

        with Prober(a, "keep") as probe:
            stopping = time.monotonic()
            b.stop(signal.SIGTERM)
            assert b.proc.returncode == 0, b.output()
            assert pid_of(b, on_b) == pid, "the follower's SIGTERM left its instance running"
            b.start()
            wait_for(lambda: "[LEADER] another skiffd leads" in b.output().split(
                "skiffd stopped")[-1], 15, "the restarted follower to follow")
            back = time.monotonic() - stopping
            # a few of its heartbeats: the leader lists the same two instances
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                now = {i["guid"]: i["cell"] for i in running(a, "keep")}
                assert now == before, (before, now)
                time.sleep(0.3)
        print("follower back %.1f s after its SIGTERM; %d of %d requests through the leader's "
              "router failed meanwhile" % (back, probe.failed, probe.sent))
        assert pid_of(b, on_b) == pid, "the same process, taken over again"
        assert "kept instance 0" in b.output() or "kept instance 1" in b.output(), b.output()
        assert "is lost" not in a.output(), a.output()
        assert instance_processes(a, b) == 2
        assert probe.failed == 0, probe.failures
        # the kept instance is the leader's still: a stop through the leader stops it
        assert a.api("POST", "/v1/apps/keep/stop")[0] == 200
        wait_for(lambda: pid_of(b, on_b) is None, 20, "the kept instance to stop when asked")


def test_a_restart_asked_of_a_follower_that_keeps_instances_is_carried_out_by_the_leader(
        pg_dir, nats):  # noqa: F811
    with stopped_clean() as made:
        a, b = leader_and_follower(made, pg_dir, nats, lost_ms=30000)
        b_id = this_cell(b)
        deploy(a, "again", 2)
        wait_for(lambda: {i["cell"] for i in running(a, "again")} == {this_cell(a), b_id}, 60,
                 "one instance on each skiffd")
        before = {i["guid"] for i in running(a, "again")}
        on_b = next(i["guid"] for i in running(a, "again") if i["cell"] == b_id)
        pid = pid_of(b, on_b)
        assert pid
        # b restarted keeps the instance it runs for the leader
        b.stop(signal.SIGTERM)
        b.start()
        wait_for(lambda: "[LEADER] another skiffd leads" in b.output().split(
            "skiffd stopped")[-1], 15, "the restarted follower to follow")
        assert pid_of(b, on_b) == pid
        # a restart asked of b: the leader restarts both instances (new guids), wherever
        # they run, and two run again
        status, body = b.api("POST", "/v1/apps/again/restart")
        assert status == 200, body
        wait_for(lambda: len(running(a, "again")) == 2 and
                 not {i["guid"] for i in running(a, "again")} & before, 60,
                 "the leader to restart both instances")
        wait_for(lambda: pid_of(b, on_b) is None, 20, "the old instance on b to stop")
        wait_for(lambda: serves(a, "again"), 20, "the leader's router to serve the app")
        assert "restarting app" in a.output(), a.output()
        assert instance_processes(a, b) == 2


def test_a_restart_asked_of_a_skiffd_that_holds_its_instances_waits_for_a_leader(
        pg_dir, nats):  # noqa: F811
    with stopped_clean() as made:
        a, guid, pid = lone_leader_serving(made, pg_dir, nats, "held")
        end_leader_session(pg_dir, a)
        wait_for(lambda: "[LEADER] this skiffd stopped leading" in a.output(), 5,
                 "the skiffd to see its session end")
        # asked while it holds its instance and nobody leads: it stops nothing ...
        status, body = a.api("POST", "/v1/apps/held/restart")
        assert status == 200, body
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not leading(a):
            assert pid_of(a, guid) == pid and serves(a, "held"), a.output()
            time.sleep(0.1)
        # ... and once it leads again, the restart is carried out (a new instance)
        wait_for(lambda: leading(a), 15, "the skiffd to lead again")
        wait_for(lambda: [i["guid"] for i in running(a, "held")] not in ([], [guid]), 60,
                 "the restart to be carried out")
        wait_for(lambda: pid_of(a, guid) is None, 20, "the old instance to stop")
        wait_for(lambda: serves(a, "held"), 20, "the router to serve the new instance")
        assert instance_processes(a) == 1


def test_a_leader_alone_that_loses_its_session_keeps_serving_and_leads_again(
        pg_dir, nats):  # noqa: F811
    with stopped_clean() as made:
        a, guid, pid = lone_leader_serving(made, pg_dir, nats, "alone")
        with Prober(a, "alone") as probe:
            ended = time.monotonic()
            end_leader_session(pg_dir, a)
            wait_for(lambda: "[LEADER] this skiffd stopped leading" in a.output(), 5,
                     "the skiffd to see its session end")
            wait_for(lambda: leading(a), 15, "the skiffd to lead again")
            again = time.monotonic() - ended
            sent = probe.sent  # a second of requests (20, one each 50 ms) after it leads again
            wait_for(lambda: probe.sent >= sent + 20, 15, "20 requests after it leads again")
        print("led again %.1f s after its session ended; %d of %d requests through its router "
              "failed" % (again, probe.failed, probe.sent))
        assert probe.failed == 0, probe.failures
        assert [i["guid"] for i in running(a, "alone")] == [guid]
        assert pid_of(a, guid) == pid, "the same process, kept"
        assert instance_processes(a) == 1


class Forger(Ticking):
    """From a thread until stopped, any client on the bus (a cell's credentials would do)
    saying every 100 ms that another skiffd leads: a heartbeat with "leading": true from a
    made-up cell, and a request on the target's own req subject, as a leader would send."""
    every = 0.1

    def __init__(self, nats, target_id):  # noqa: F811
        super().__init__()
        self.client = Client(nats.port)
        self.target_id = target_id
        self.fake_id = uuid.uuid4().hex
        self.sent = 0

    def tick(self):
        self.client.pub("skiff.cell.%s.up" % self.fake_id, {
            "v": 1, "type": "heartbeat", "id": self.fake_id, "host": "forged",
            "zone": "zone-a", "memory_capacity_bytes": 1 << 30, "memory_used_bytes": 0,
            "interval_ms": 100, "at_ms": int(time.time() * 1000), "instances": [],
            "leading": True, "blobs": "store"})
        self.client.pub("skiff.cell.%s.req" % self.target_id,
                        {"v": 1, "op": "stop", "guid": str(uuid.uuid4())})
        self.sent += 1

    def close(self):
        self.client.s.close()


def test_a_leader_that_lost_its_session_keeps_its_instances_despite_forged_heartbeats(
        pg_dir, nats):  # noqa: F811
    with stopped_clean() as made:
        a, guid, pid = lone_leader_serving(made, pg_dir, nats, "forged")
        with Prober(a, "forged") as probe:
            end_leader_session(pg_dir, a)
            wait_for(lambda: "[LEADER] this skiffd stopped leading" in a.output(), 5,
                     "the skiffd to see its session end")
            # until it leads again, the bus says every 100 ms that another skiffd leads
            with Forger(nats, this_cell(a)) as forger:
                wait_for(lambda: leading(a), 15, "the skiffd to lead again")
            sent = probe.sent  # a second of requests (20, one each 50 ms) after it leads again
            wait_for(lambda: probe.sent >= sent + 20, 15, "20 requests after it leads again")
        print("%d forged heartbeats and requests; %d of %d requests through its router failed"
              % (forger.sent, probe.failed, probe.sent))
        assert forger.sent >= 5, forger.sent
        assert probe.failed == 0, probe.failures
        after = a.output().split("[LEADER] this skiffd stopped leading")[-1]
        assert "another skiffd leads" not in after, after
        assert [i["guid"] for i in running(a, "forged")] == [guid]
        assert pid_of(a, guid) == pid, "the same process, kept"
        assert instance_processes(a) == 1


def test_a_leader_that_loses_its_session_hands_its_instances_to_the_next_leader(
        pg_dir, nats):  # noqa: F811
    with stopped_clean() as made:
        a, b = leader_and_follower(made, pg_dir, nats)
        a_id, b_id = this_cell(a), this_cell(b)
        deploy(a, "moved", 2)
        wait_for(lambda: {i["cell"] for i in running(a, "moved")} == {a_id, b_id}, 60,
                 "one instance on each skiffd")
        before = {i["guid"]: i["cell"] for i in running(a, "moved")}
        on_a = next(g for g, c in before.items() if c == a_id)
        pid = pid_of(a, on_a)
        assert pid

        ended = time.monotonic()
        end_leader_session(pg_dir, a)
        wait_for(lambda: leading(b), LEADER_BOUND_S, "the other skiffd to lead")
        led = time.monotonic() - ended
        wait_for(lambda: {i["guid"]: i["cell"] for i in running(b, "moved")} == before, 20,
                 "the new leader to adopt both instances where they run")
        adopted = time.monotonic() - ended
        wait_for(lambda: serves(b, "moved"), 10, "the new leader's router to serve the app")
        # the old leader's router learns the table from NATS too: it serves them on (on the
        # socket it served nothing once its skiffd handed the instances over)
        wait_for(lambda: serves(a, "moved"), 10, "the old leader's router to serve the app")
        print("B led %.2f s after A's session ended and had adopted both instances at %.2f s"
              % (led, adopted))
        assert pid_of(a, on_a) == pid, "A's instance runs on: the same process"
        # A tries again, finds the lock taken and follows; nothing is started twice
        wait_for(lambda: a.output().count("[LEADER] another skiffd leads") >= 1, 15,
                 "the old leader to follow")
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            now = {i["guid"]: i["cell"] for i in running(b, "moved")}
            assert now == before, (before, now)
            assert instance_processes(a, b) == 2
            time.sleep(0.3)
        assert not leading(a) and leading(b)
        # the handed-over instance is the new leader's: scaled down to one, one of the two goes
        assert b.api("PATCH", "/v1/apps/moved", {"instances": 1})[0] == 200
        wait_for(lambda: instance_processes(a, b) == 1 and len(running(b, "moved")) == 1, 30,
                 "the new leader to stop one of the two")
