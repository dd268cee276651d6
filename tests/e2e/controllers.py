"""Several skiffds on one PostgreSQL store, for the tests of controllers (test_controllers.py)
and of blobs (test_blobs.py): a throwaway server (pg_dir), a skiffd on it (skiffd), a pair of
them (a leads, b follows) and what the API says of them (cells, leading, running_here)."""
import contextlib
import os
import subprocess

import pytest

from conftest import Platform, http_get, throwaway_postgres, wait_for

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
HEARTBEAT_MS = 300
# src/daemon/leader.h: a follower tries for the lock every second; a dead leader's session
# (kill -9, or ended by the server) frees it at once. Two tries and the time to converge.
LEADER_BOUND_S = 5.0

needs_postgres = pytest.mark.skipif(
    not os.access(os.path.join(PG_BIN, "initdb"), os.X_OK),
    reason=f"PostgreSQL's server binaries are not in {PG_BIN} (scripts/deps.sh installs them)")


@pytest.fixture
def pg_dir():
    with throwaway_postgres() as d:
        yield d


def psql(pg_dir, sql):
    cmd = [os.path.join(PG_BIN, "psql"), "-h", pg_dir, "-U", "postgres", "-d", "postgres",
           "-Atc", sql]
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


def skiffd(pg_dir, zone, heartbeat_ms=HEARTBEAT_MS, more_args=()):
    url = f"postgresql://postgres@/postgres?host={pg_dir}"
    return Platform(extra_args=["--store", url, "--isolation", "process", "--zone", zone,
                                *more_args],
                    extra_env={"SKIFF_CELL_HEARTBEAT_MS": str(heartbeat_ms),
                               "SKIFF_PREWARM": "0"})


def cells(p):
    status, body = p.api("GET", "/v1/cells")
    assert status == 200, body
    return body


def leading(p):
    return cells(p)["leading"]


def running_here(p, name):
    """The RUNNING web instances this skiffd's scheduler runs for the app (any skiffd shows
    the leader's: each instance names its cell)."""
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    here = cells(p)["this_cell"]
    return [i for i in app.get("instances_detail", [])
            if i.get("state") == "RUNNING" and i.get("cell") == here]


def serves(p, name, host=None):
    status, text = http_get(p.router_url + "/", host=host or f"{name}.localhost")
    return status == 200 and text.startswith("instance")


def stop_clean(made, **stop_args):
    """Stops each skiffd still running (p.stop(**stop_args)) and fails on a sanitizer report in
    any one's output."""
    for p in made:
        p.stop(**stop_args)
        text = p.output()
        assert "Sanitizer" not in text and "runtime error" not in text, text


@contextlib.contextmanager
def stopped_clean(**stop_args):
    """Yields a list for the block to add each skiffd it starts to, of any role and on any host
    (Platform, multihost's HostPlatform, HostCell, HostRouter). After the block, each is stopped
    and its output checked (stop_clean); whatever happened, each is closed (its home removed),
    the last added first, the others still when one fails to close."""
    made = []
    try:
        yield made
        stop_clean(made, **stop_args)
    finally:
        for p in reversed(made):
            try:
                p.close()
            except Exception as e:  # close the others still
                print("closing:", e)


@contextlib.contextmanager
def leader_and_follower(make, then=None, heartbeats_s=10):
    """a = make("zone-a") started first and leading, then(a) if given, b = make("zone-b")
    following once both cells' heartbeats show: yields (a, b). After the block, both stopped
    and their output free of sanitizer reports; closed (homes removed) whatever happened."""
    with stopped_clean() as made:
        a = make("zone-a")
        made.append(a)
        a.start()
        wait_for(lambda: leading(a), 15, "the first skiffd to lead")
        if then:
            then(a)
        b = make("zone-b")
        made.append(b)
        b.start()
        wait_for(lambda: len(cells(b)["cells"]) == 2, heartbeats_s, "both cells' heartbeats")
        assert not leading(b), cells(b)
        assert a.home != b.home
        yield a, b


@pytest.fixture
def pair(pg_dir):
    """Two skiffds on the store, each with its own home: a, started first, leads; b follows."""
    with leader_and_follower(lambda zone: skiffd(pg_dir, zone)) as ab:
        yield ab
