#!/usr/bin/env python3
"""How long a route change takes to reach the router: skiffd (release build) with its router,
an app, then N times: map a new host with POST /v1/routes and poll the router on a keep-alive
connection until it knows the host (it answers 503 no-instance instead of 404 unknown-route);
then unmap it and poll until it is gone. The peer is the API call alone (its own round trip),
so the figure that belongs to the bus and the router is the difference.
Two series: back to back (each change made as soon as the last one was seen, so each follows
a table by less than the bus's 5 ms pace and waits out the rest of it: BUS_COALESCE_MS), and
apart (each change --apart-ms after the last one was seen: a lone change, sent at once).
Target: within 100 ms of the API call.
Usage: bench/router/route_update.py [--changes N] [--apart-ms MS] [--bin build/rel]"""
import argparse
import http.client
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import skiffd  # noqa: E402
from skiffd import ROOT, wait_for  # noqa: E402


def router_error(conn, host):
    conn.request("GET", "/", headers={"Host": host})
    r = conn.getresponse()
    r.read()
    return r.getheader("X-Skiff-Router-Error")


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--apart-ms", type=float, default=10.0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    args = ap.parse_args()
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    d = skiffd.start(args.bin, "skiff-bench-routes-")
    try:
        def call(method, path, body=None):
            status, data = d.call(method, path, body, timeout=10)
            if status >= 300:
                raise SystemExit(f"{method} {path}: {status} {data[:200]!r}")

        call("POST", "/v1/apps", {"name": "routes-bench", "no_route": True})
        router = http.client.HTTPConnection("127.0.0.1", d.router_port, timeout=10)
        wait_for(lambda: router_error(router, "nothing.localhost") == "unknown-route", 20,
                 "the router")
        print(f"route changes reaching the router, {args.changes} maps and unmaps in each series "
              f"(ms from the API call; target 100):")
        for series, gap in (("back to back", 0.0), (f"{args.apart_ms:g} ms apart", args.apart_ms)):
            api_only, mapped, unmapped = [], [], []
            for i in range(args.changes):
                host = f"r{i}-{int(gap)}.localhost"
                time.sleep(gap / 1000)
                t0 = time.perf_counter()
                call("POST", "/v1/routes", {"app": "routes-bench", "host": host})
                t1 = time.perf_counter()
                while router_error(router, host) != "no-instance":
                    pass
                t2 = time.perf_counter()
                time.sleep(gap / 1000)
                t2b = time.perf_counter()
                call("DELETE", f"/v1/routes?app=routes-bench&host={host}")
                t3 = time.perf_counter()
                while router_error(router, host) != "unknown-route":
                    pass
                t4 = time.perf_counter()
                api_only += [(t1 - t0) * 1000, (t3 - t2b) * 1000]
                mapped.append((t2 - t0) * 1000)
                unmapped.append((t4 - t2b) * 1000)
            peer = statistics.median(api_only)
            print(f" {series}:")
            for name, v in (("map", mapped), ("unmap", unmapped)):
                print(f"  {name:6s} median {statistics.median(v):6.2f}  p99 {pct(v, 0.99):6.2f}  "
                      f"max {max(v):6.2f}   ({statistics.median(v) / peer:.1f}x the API call alone)")
            print(f"  peer: the API call alone, median {peer:.2f} ms")
        print("load average at end: %.2f %.2f %.2f" % os.getloadavg())
    finally:
        d.stop()

if __name__ == "__main__":
    main()
