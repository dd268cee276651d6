#!/usr/bin/python3
"""What the built-in PostgreSQL broker costs, in one run against the release skiffd (its
skiff-brokers and Debian's PostgreSQL, initdb'd on the first create, which is timed apart):

  - create + bind to ready: POST /v1/service_instances (postgresql/shared) then a service key
    (a binding with its own login role), median and p90 over --rounds; the peer is the same
    SQL made straight on the server as its superuser over its Unix socket (CREATE ROLE,
    CREATE DATABASE, REVOKE/GRANT, CREATE ROLE ... LOGIN), so the difference is what the
    platform adds (the API, records, sealing, the OSB hop);
  - --concurrent instances created at once, each on its own connection: wall time and rate
    (the broker provisions one at a time; skiffd holds at most 2 broker calls at once);
  - VCAP_SERVICES generation per instance start with --bindings PostgreSQL bindings:
    GET /v1/apps/APP/env (services_vcap_json, as the scheduler runs it) minus an app with none.

Usage: bench/services/bench_builtin.py [--rounds 20] [--concurrent 100] [--bindings 10]
       [--bin build/rel]"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import skiffd  # noqa: E402
from skiffd import ROOT  # noqa: E402


def ms(samples):
    s = sorted(samples)
    return f"median {statistics.median(s) * 1000:.1f} ms, p90 {s[int(len(s) * 0.9)] * 1000:.1f} ms"


def api(port, token, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def superuser(home, port):
    """A connection as the broker keeps one: the superuser on the server's Unix socket."""
    with open(os.path.join(home, "brokers", "postgresql.password")) as f:
        pw = f.read().strip()
    c = psycopg2.connect(host=os.path.join(home, "brokers", "postgresql", "run"), port=port,
                         user="postgres", password=pw, dbname="postgres")
    c.autocommit = True
    return c


def peer(c, i):
    """The same statements the broker runs, straight on the server."""
    cur = c.cursor()
    t = time.perf_counter()
    name, role = f"peer_{i}", f"peer_b_{i}"
    cur.execute(f"CREATE ROLE {name} NOLOGIN")
    cur.execute(f"CREATE DATABASE {name} OWNER {name}")
    cur.execute(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC; "
                f"GRANT CONNECT, TEMPORARY ON DATABASE {name} TO {name}")
    cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'x{i}' IN ROLE {name}; "
                f"ALTER ROLE {role} SET role = '{name}'")
    elapsed = time.perf_counter() - t
    cur.execute(f"DROP DATABASE {name}")
    cur.execute(f"DROP ROLE {role}; DROP ROLE {name}")
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--bindings", type=int, default=10)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    args = ap.parse_args()
    d = skiffd.start(args.bin, "skiff-bench-builtin-", extra_env={"SKIFF_BUILTIN_BROKERS": "1"})
    try:
        port, token = d.api_port, d.token
        skiffd.wait_for(lambda: b"postgresql" in d.call("GET", "/v1/marketplace")[1], 30,
                        "the built-in brokers in the marketplace")
        t = time.perf_counter()
        st, out = d.call("POST", "/v1/service_instances",
                         {"name": "first", "service": "postgresql", "plan": "shared"})
        assert st == 201, out
        print(f"first create (initdb and the server's start): {time.perf_counter() - t:.2f} s")
        with open(os.path.join(d.home, "brokers", "config.json")) as f:
            pg_port = json.load(f)["postgres_port"]

        su = superuser(d.home, pg_port)
        skiff_t, peer_t = [], []
        for i in range(args.rounds):
            t = time.perf_counter()
            st, out = d.call("POST", "/v1/service_instances",
                             {"name": f"db{i}", "service": "postgresql", "plan": "shared"})
            assert st == 201, out
            st, out = d.call("POST", f"/v1/service_instances/db{i}/keys", {"name": "k"})
            assert st == 201, out
            skiff_t.append(time.perf_counter() - t)
            peer_t.append(peer(su, i))
        print(f"create + bind to ready ({args.rounds} rounds): skiff {ms(skiff_t)}; "
              f"the same SQL alone {ms(peer_t)}; ratio "
              f"{statistics.median(skiff_t) / statistics.median(peer_t):.2f}x")
        su.close()

        errors = []

        def create(i):
            st, out = api(port, token, "POST", "/v1/service_instances",
                          {"name": f"burst{i}", "service": "postgresql", "plan": "shared"})
            if st != 201:
                errors.append((st, out[:200]))

        threads = [threading.Thread(target=create, args=(i,)) for i in range(args.concurrent)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        print(f"{args.concurrent} PostgreSQL instances created concurrently: {wall:.2f} s "
              f"({args.concurrent / wall:.0f}/s), {len(errors)} failed")
        assert not errors, errors[:3]

        assert d.call("PUT", "/v1/apps/bound", {"no_route": True})[0] in (200, 201)
        assert d.call("PUT", "/v1/apps/unbound", {"no_route": True})[0] in (200, 201)
        for i in range(args.bindings):
            st, out = d.call("POST", "/v1/apps/bound/service_bindings",
                             {"service_instance": f"burst{i}"})
            assert st == 201, out
        st, env = d.call("GET", "/v1/apps/bound/env")
        assert len(json.loads(env)["system"]["VCAP_SERVICES"]["postgresql"]) == args.bindings

        def env_times(app, n=300):
            out = []
            for _ in range(n):
                t = time.perf_counter()
                d.call("GET", f"/v1/apps/{app}/env")
                out.append(time.perf_counter() - t)
            return statistics.median(out)

        with_b, without = env_times("bound"), env_times("unbound")
        print(f"VCAP_SERVICES of {args.bindings} PostgreSQL bindings: "
              f"{(with_b - without) * 1000:.2f} ms per instance start "
              f"(GET env {with_b * 1000:.2f} ms vs {without * 1000:.2f} ms without bindings)")
    finally:
        d.stop()


if __name__ == "__main__":
    main()
