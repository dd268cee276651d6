"""skiffd on a PostgreSQL store that stops answering (its server SIGSTOPped): the API keeps
answering what it serves from memory, the writes made meanwhile (heartbeats) wait in the
store's queue off the event loop and land once the server answers again, and SIGTERM ends
skiffd within a bounded time even while the server is still silent."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import Platform, postgres_server_pids, throwaway_postgres


@pytest.fixture
def pg_dir():
    with throwaway_postgres() as d:
        yield d


def pause(pids):
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)


def resume(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def heartbeat_at(url):
    """The heartbeat skiffd last wrote, read from the database itself (0: none)."""
    out = subprocess.run(["psql", "-At", url, "-c",
                          "SELECT body FROM documents WHERE kind = 'cell'"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
    return max((json.loads(l)["heartbeat_at_ms"] for l in out.splitlines()), default=0)


def queued_writes(p):
    """The writes skiffd has queued for its store and not finished (GET /metrics)."""
    status, text = p.api("GET", "/metrics")
    assert status == 200, text
    line = next(ln for ln in text.splitlines() if ln.startswith("skiff_store_queued_writes "))
    return int(line.split()[1])


def timed(call):
    t0 = time.monotonic()
    got = call()
    return got, time.monotonic() - t0


def test_a_silent_server_neither_stalls_the_api_nor_holds_up_the_exit(pg_dir):
    url = f"postgresql:///postgres?host={pg_dir}&user=postgres"
    p = Platform(extra_args=["--store", url],
                 extra_env={"SKIFF_CELL_HEARTBEAT_MS": "200"}).start()
    pids = []
    try:
        status, body = p.api("POST", "/v1/apps", {"name": "paused-app"})
        assert status == 201, body
        status, listed = p.api("GET", "/v1/apps")
        assert status == 200, listed
        p.wait_for(lambda: heartbeat_at(url) > 0, timeout=10, what="a first heartbeat")

        pids = postgres_server_pids(pg_dir)
        pause(pids)
        paused_at = time.time() * 1000
        # 3 s: heartbeats (every 200 ms) and the once-a-second catch-up of users and tokens
        # come due many times meanwhile; each answer is bounded
        slowest = 0.0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            info, took = timed(p.info)
            assert info, info
            slowest = max(slowest, took)
            (status, listed), took = timed(lambda: p.api("GET", "/v1/apps"))
            assert status == 200, listed
            assert "paused-app" in [a["name"] for a in listed["apps"]], listed
            slowest = max(slowest, took)
        assert slowest < 1.0, f"an answer took {slowest:.2f} s while the server was paused"
        assert queued_writes(p) > 0  # the heartbeats of those 3 s wait
        resume(pids)
        # the heartbeats queued meanwhile land (and the next ones after them)
        p.wait_for(lambda: heartbeat_at(url) > paused_at, timeout=15,
                   what="the heartbeats queued while paused to land")
        p.wait_for(lambda: queued_writes(p) == 0, timeout=15, what="the store's queue to empty")
        assert "lost a queued write" not in p.output(), p.output()

        # paused again, then SIGTERM: skiffd gives up the queue after its bound and exits
        pause(pids)
        p.wait_for(lambda: queued_writes(p) > 0, timeout=10,
                   what="a heartbeat to queue behind the silent server")
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        try:
            p.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("skiffd did not exit within 30 s of SIGTERM while its store "
                                 "was silent:\n" + p.output())
        took = time.monotonic() - t0
        assert took < 20, f"skiffd took {took:.1f} s to exit"
        out = p.output()
        assert "lost a queued write" in out, out
        assert "Sanitizer" not in out and "runtime error" not in out, out
    finally:
        resume(pids)
        p.close()
