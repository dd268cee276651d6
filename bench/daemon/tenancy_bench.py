#!/usr/bin/python3
"""What authorisation costs on the API path, in one run against the release skiffd:

  - skiffd CPU per request (utime + stime over the run / requests) and median latency of
    GET /v1/stacks (permission `user`, no place to resolve) with the local admin token, whose
    check is one hash compare (the peer: as before tenancy), and with a user's access token
    (the token looked up among every user's tokens, then the permission checked); and of
    GET /v1/apps/NAME?space=ORG/SPACE as the admin and as the space's developer (the space
    resolved and the roles checked): the difference is the authorisation hook;
  - GET /v1/apps?space=ORG/SPACE for a SpaceDeveloper with 10,000 apps across 100 spaces
    (100 in the space), median and p90.

Usage: bench/daemon/tenancy_bench.py [--spaces 100] [--apps-per-space 100] [--bin build/rel]"""
import argparse
import http.client
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import skiffd  # noqa: E402
from skiffd import ROOT  # noqa: E402

N = 5000


def cpu_ns(pid):
    """CPU time of skiffd's main thread (where the API runs), in ns: /proc/PID/schedstat
    counts in ns, /proc/PID/stat only in 10 ms ticks."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def timed(conn, method, path, token, n=N):
    headers = {"Authorization": "Bearer " + token}
    times = []
    for _ in range(n):
        t = time.perf_counter()
        conn.request(method, path, headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 200, (path, r.status)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spaces", type=int, default=100)
    ap.add_argument("--apps-per-space", type=int, default=100)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    args = ap.parse_args()
    d = skiffd.start(args.bin)
    proc, admin = d.proc, d.token
    try:
        conn = http.client.HTTPConnection("127.0.0.1", d.api_port, timeout=60)

        def call(method, path, body=None, token=admin):
            status, data = d.call(method, path, body, token=token or "")
            assert status < 300, (method, path, status, data[:200])
            return json.loads(data) if data else None

        call("POST", "/v1/orgs", {"name": "bench"})
        call("POST", "/v1/users", {"name": "dev", "password": "a bench password"})
        t0 = time.perf_counter()
        for s in range(args.spaces):
            call("POST", "/v1/orgs/bench/spaces", {"name": f"s{s:03d}"})
            for a in range(args.apps_per_space):
                call("POST", f"/v1/apps?space=bench/s{s:03d}",
                     {"name": f"app-{a:03d}", "no_route": True})
        made = time.perf_counter() - t0
        call("PUT", "/v1/orgs/bench/spaces/s042/users/dev/roles/SpaceDeveloper")
        # other users with tokens, so the token lookup is not of a lonely one
        for u in range(50):
            call("POST", "/v1/users", {"name": f"u{u}", "password": "a bench password"})
            call("POST", "/v1/auth/token", {"grant_type": "password", "username": f"u{u}",
                                            "password": "a bench password"}, token=None)
        dev = call("POST", "/v1/auth/token", {"grant_type": "password", "username": "dev",
                                              "password": "a bench password"},
                   token=None)["access_token"]
        apps = args.spaces * args.apps_per_space
        print(f"{apps} apps in {args.spaces} spaces made in {made:.1f} s")

        def cpu_per_request(method, path, token):
            before = cpu_ns(proc.pid)
            med, p90 = timed(conn, method, path, token)
            return med, p90, (cpu_ns(proc.pid) - before) / N / 1000

        cases = [
            ("GET /v1/stacks, local admin token", "/v1/stacks", admin),
            ("GET /v1/stacks, user access token", "/v1/stacks", dev),
            ("GET /v1/apps/NAME?space=, local admin", "/v1/apps/app-007?space=bench/s042", admin),
            ("GET /v1/apps/NAME?space=, SpaceDeveloper", "/v1/apps/app-007?space=bench/s042", dev),
        ]
        # taking turns, in one order then the other, four rounds; the median of each
        runs = {label: [] for label, _, _ in cases}
        for rnd in range(4):
            for label, path, token in (cases if rnd % 2 == 0 else cases[::-1]):
                runs[label].append(cpu_per_request("GET", path, token))
        rows = []
        for label, _, _ in cases:
            r = runs[label]
            rows.append((label, statistics.median(x[0] for x in r),
                         statistics.median(x[1] for x in r), statistics.median(x[2] for x in r)))
        for label, med, p90, cpu in rows:
            print(f"{label:44s} median {med * 1000:7.1f} us  p90 {p90 * 1000:7.1f} us  "
                  f"skiffd CPU {cpu:6.1f} us/request")
        print(f"authorisation hook, by skiffd CPU: user token vs admin token "
              f"{rows[1][3] - rows[0][3]:+.1f} us; space check as a developer vs admin "
              f"{rows[3][3] - rows[2][3]:+.1f} us  (target <= 5 us)")
        med, p90 = timed(conn, "GET", "/v1/apps?space=bench/s042", dev, n=200)
        print(f"GET /v1/apps?space= as a SpaceDeveloper, {args.apps_per_space} of {apps} apps: "
              f"median {med:.2f} ms, p90 {p90:.2f} ms  (target 10 ms)")
        # nothing cached: each right after a change in the space
        cold = []
        for i in range(50):
            call("PUT", "/v1/apps/app-000/env?space=bench/s042", {"N": str(i)})
            cold.append(timed(conn, "GET", "/v1/apps?space=bench/s042", dev, n=1)[0])
        print(f"  the same right after a change: median {statistics.median(cold):.2f} ms")
    finally:
        d.stop()


if __name__ == "__main__":
    main()
