"""What a controller's copy of users and tokens costs it on a shared store: two skiffds on one
PostgreSQL, a and b, with log_statement on.

- made-up tokens: b is sent FLOOD requests with made-up bearer tokens, each followed by the
  same request with a good token (the peer); p50 and p99 of both, and the statements b sent
  the server meanwhile.
- churn: a changes a role every CHURN_MS (every change moves the generation record, news to
  b, whose copy is read again) while b and a answer GET /v1/orgs with a good token in turn for
  SECONDS seconds; b's p50 and p99 against a's (the peer: the one making the changes reads
  nothing again), and the statements b sent meanwhile.

    SKIFF_BIN_DIR=BUILD/rel /usr/bin/python3 bench/store/auth_reads.py

Run it with two builds (SKIFF_BIN_DIR) to compare."""
import collections
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "e2e"))
from conftest import Platform, throwaway_postgres  # noqa: E402
from controllers import psql  # noqa: E402

FLOOD = int(os.environ.get("FLOOD", "300"))
SECONDS = float(os.environ.get("SECONDS", "10"))
CHURN_MS = float(os.environ.get("CHURN_MS", "100"))


def pct(v):
    v = sorted(v)
    return v[len(v) // 2], v[min(len(v) - 1, int(len(v) * 0.99))]


def timed(p, path, token):
    t0 = time.monotonic()
    status, body = p.api("GET", path, token=token)
    return status, time.monotonic() - t0


def statements(log, start, name):
    with open(log, errors="replace") as f:
        f.seek(start)
        return sum(1 for line in f if re.match(rf"{name} LOG:  (statement|execute)", line))


def main():
    with throwaway_postgres() as d:
        psql(d, "ALTER SYSTEM SET log_statement = 'all'")
        psql(d, "ALTER SYSTEM SET log_line_prefix = '%a '")
        psql(d, "SELECT pg_reload_conf()")
        log = os.path.join(d, "server.log")

        def skiffd(name):
            store = f"postgresql://postgres@/postgres?host={d}&application_name={name}"
            return Platform(extra_args=["--store", store, "--isolation", "process"],
                            extra_env={"SKIFF_PREWARM": "0"}).start()

        a = skiffd("skiffd-a")
        b = skiffd("skiffd-b")
        try:
            assert a.api("POST", "/v1/users", {"name": "bench", "password": "a bench password"})[0] == 201
            status, tok = b.api("POST", "/v1/auth/token",
                                {"grant_type": "password", "username": "bench",
                                 "password": "a bench password"}, token=False)
            assert status == 200, tok
            good = tok["access_token"]
            a.wait_for(lambda: a.api("GET", "/v1/orgs", token=good)[0] == 200, timeout=10,
                       what="a to know the token")
            print(f"{os.environ.get('SKIFF_BIN_DIR')}:")

            start = os.path.getsize(log)
            made_up, peer = [], []
            for i in range(FLOOD):
                status, took = timed(b, "/v1/orgs", "skiffa_" + f"{i:043d}")
                assert status == 401
                made_up.append(took)
                status, took = timed(b, "/v1/orgs", good)
                assert status == 200
                peer.append(took)
            sent = statements(log, start, "skiffd-b")
            (m50, m99), (p50, p99) = pct(made_up), pct(peer)
            print(f"  made-up tokens: {FLOOD} to b, 401 p50 {m50 * 1000:.2f} ms p99 "
                  f"{m99 * 1000:.2f} ms; a good token's 200 p50 {p50 * 1000:.2f} ms p99 "
                  f"{p99 * 1000:.2f} ms ({m50 / p50:.2f}x, p99 {m99 / p99:.2f}x); b sent "
                  f"{sent} statements")

            stop = threading.Event()
            changes = [0]

            def churn():
                role = "/v1/orgs/default/spaces/dev/users/bench/roles/SpaceAuditor"
                while not stop.is_set():
                    status, body = a.api("DELETE" if changes[0] % 2 else "PUT", role)
                    assert status == 204, body
                    changes[0] += 1
                    stop.wait(CHURN_MS / 1000)

            start = os.path.getsize(log)
            t = threading.Thread(target=churn)
            t.start()
            took = collections.defaultdict(list)
            deadline = time.monotonic() + SECONDS
            try:
                while time.monotonic() < deadline:
                    for who, p in (("a", a), ("b", b)):
                        status, s = timed(p, "/v1/orgs", good)
                        assert status == 200
                        took[who].append(s)
            finally:
                stop.set()
                t.join()
            sent = statements(log, start, "skiffd-b")
            (a50, a99), (b50, b99) = pct(took["a"]), pct(took["b"])
            print(f"  churn: {changes[0]} role changes through a in {SECONDS:.0f} s; "
                  f"GET /v1/orgs on b p50 {b50 * 1000:.2f} ms p99 {b99 * 1000:.2f} ms, on a "
                  f"p50 {a50 * 1000:.2f} ms p99 {a99 * 1000:.2f} ms ({b50 / a50:.2f}x, p99 "
                  f"{b99 / a99:.2f}x; {len(took['b'])} calls each); b sent {sent} statements")
        finally:
            b.close()
            a.close()


main()
