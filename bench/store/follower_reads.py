"""A follower's reads while the other skiffds write all the time: two skiffds on one
PostgreSQL, both writing their heartbeats every HEARTBEAT_MS (documents of kind "cell", news
to the other), the leader running an app's instance and writing its instance record. The
follower answers GET /v1/apps/NAME (the leader's record and heartbeat) and GET /v1/cells from
its copies, read again through its store's writer on news; the leader answers the same calls
from its own memory, the peer. For SECONDS seconds it calls each in turn on each skiffd, one
call every PACE_MS, and prints p50 and p99 and the follower's ratio to the leader, then the
statements each skiffd sent the server meanwhile (log_statement, by application_name) and how
many of them read one document by id: a follower that reads on its event loop after news
sends such reads as it answers.

    SKIFF_BIN_DIR=BUILD/rel /usr/bin/python3 bench/store/follower_reads.py

Run it with two builds (SKIFF_BIN_DIR) to compare."""
import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "e2e"))
from conftest import WEB_APP, Platform, deploy_bits, throwaway_postgres  # noqa: E402
from controllers import leader_and_follower, psql  # noqa: E402

SECONDS = float(os.environ.get("SECONDS", "10"))
PACE_MS = float(os.environ.get("PACE_MS", "5"))
HEARTBEAT_MS = os.environ.get("HEARTBEAT_MS", "300")


def running(p):
    status, app = p.api("GET", "/v1/apps/kept")
    return status == 200 and app["running"] == 1


def measure(calls):
    """calls: {key: (platform, path)}, each called in turn until SECONDS pass: {key: (p50,
    p99)} in seconds."""
    took = collections.defaultdict(list)
    deadline = time.monotonic() + SECONDS
    while time.monotonic() < deadline:
        for key, (p, path) in calls.items():
            t0 = time.monotonic()
            status, body = p.api("GET", path)
            took[key].append(time.monotonic() - t0)
            assert status == 200, body
        time.sleep(PACE_MS / 1000)
    figures = {}
    for key, v in took.items():
        v.sort()
        figures[key] = (v[len(v) // 2], v[min(len(v) - 1, int(len(v) * 0.99))], len(v))
    return figures


def main():
    with throwaway_postgres() as d:
        psql(d, "ALTER SYSTEM SET log_statement = 'all'")
        psql(d, "ALTER SYSTEM SET log_line_prefix = '%a '")
        psql(d, "SELECT pg_reload_conf()")

        def named(zone):
            store = f"postgresql://postgres@/postgres?host={d}&application_name=skiffd-{zone}"
            return Platform(extra_args=["--store", store, "--isolation", "process",
                                        "--zone", zone],
                            extra_env={"SKIFF_CELL_HEARTBEAT_MS": HEARTBEAT_MS,
                                       "SKIFF_PREWARM": "0"})

        def deployed(a):
            files = [("Procfile", b"web: python3 app.py\n"), ("app.py", WEB_APP)]
            deploy_bits(a, "kept", files, {"instances": 1, "memory_mb": 32})
            a.wait_for(lambda: running(a), timeout=60, what="the leader's instance")

        with leader_and_follower(named, then=deployed) as (a, b):
            b.wait_for(lambda: running(b), timeout=30, what="the follower to show it")
            log = os.path.join(d, "server.log")
            start = os.path.getsize(log)
            t0 = time.monotonic()
            figures = measure({(path, who): (p, path) for path in ("/v1/apps/kept", "/v1/cells")
                               for who, p in (("leader", a), ("follower", b))})
            spent = time.monotonic() - t0
            with open(log, errors="replace") as f:
                f.seek(start)
                lines = f.read().splitlines()
        by_id = collections.Counter()
        every = collections.Counter()
        for line in lines:
            m = re.match(r"(skiffd-zone-[ab]) LOG:  (?:statement|execute [^:]*): (.*)", line)
            if not m:
                continue
            who = "leader" if m.group(1).endswith("a") else "follower"
            every[who] += 1
            if re.search(r"SELECT body FROM documents WHERE kind = \$1 AND id = \$2",
                         m.group(2)):
                by_id[who] += 1
        calls = figures[("/v1/cells", "follower")][2]
        print(f"{os.environ.get('SKIFF_BIN_DIR')}: {calls} calls of each in {spent:.1f} s, "
              f"heartbeats every {HEARTBEAT_MS} ms")
        for path in ("/v1/apps/kept", "/v1/cells"):
            (lp50, lp99, _), (fp50, fp99, _) = (figures[(path, "leader")],
                                                figures[(path, "follower")])
            print(f"  GET {path}: leader p50 {lp50 * 1000:.2f} ms p99 {lp99 * 1000:.2f} ms; "
                  f"follower p50 {fp50 * 1000:.2f} ms p99 {fp99 * 1000:.2f} ms "
                  f"({fp50 / lp50:.2f}x, p99 {fp99 / lp99:.2f}x)")
        for who in ("leader", "follower"):
            print(f"  {who}: {every[who]} statements in {spent:.1f} s, {by_id[who]} of them "
                  f"reads of one document by id")


main()
