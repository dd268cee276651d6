#!/usr/bin/env python3
"""How long a route change takes to reach the router: skiffd (release build) with its router,
an app, then N times: map a new host with POST /v1/routes and poll the router on a keep-alive
connection until it knows the host (it answers 503 no-instance instead of 404 unknown-route);
then unmap it and poll until it is gone. The peer is the API call alone (its own round trip),
so the figure that belongs to the bus and the router is the difference.
Target: within 100 ms of the API call.
Usage: bench/router/route_update.py [--changes N] [--bin build/rel]"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


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
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="skiff-bench-routes-")
    api_port, router_port, admin_port = free_port(), free_port(), free_port()
    env = dict(os.environ, SKIFF_HOME=home, HOME=home, SKIFF_API_ADDR=f"127.0.0.1:{api_port}",
               SKIFF_ROUTER_ADDR=f"127.0.0.1:{router_port}",
               SKIFF_ROUTER_ADMIN_ADDR=f"127.0.0.1:{admin_port}")
    log = open(os.path.join(home, "skiffd.out"), "wb")
    proc = subprocess.Popen([os.path.join(args.bin, "skiffd")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{api_port}/v1/info",
                                                timeout=1).status == 200, 20, "skiffd")
        token = json.load(open(os.path.join(home, "api.json")))["token"]
        api = http.client.HTTPConnection("127.0.0.1", api_port, timeout=10)
        headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}

        def call(method, path, body=None):
            api.request(method, path, body=json.dumps(body) if body else None, headers=headers)
            r = api.getresponse()
            data = r.read()
            if r.status >= 300:
                raise SystemExit(f"{method} {path}: {r.status} {data[:200]!r}")

        call("POST", "/v1/apps", {"name": "routes-bench", "no_route": True})
        router = http.client.HTTPConnection("127.0.0.1", router_port, timeout=10)
        wait_for(lambda: router_error(router, "nothing.localhost") == "unknown-route", 20,
                 "the router")
        api_only, mapped, unmapped = [], [], []
        for i in range(args.changes):
            host = f"r{i}.localhost"
            t0 = time.perf_counter()
            call("POST", "/v1/routes", {"app": "routes-bench", "host": host})
            t1 = time.perf_counter()
            while router_error(router, host) != "no-instance":
                pass
            t2 = time.perf_counter()
            call("DELETE", f"/v1/routes?app=routes-bench&host={host}")
            t3 = time.perf_counter()
            while router_error(router, host) != "unknown-route":
                pass
            t4 = time.perf_counter()
            api_only += [(t1 - t0) * 1000, (t3 - t2) * 1000]
            mapped.append((t2 - t0) * 1000)
            unmapped.append((t4 - t2) * 1000)
        peer = statistics.median(api_only)
        print(f"route changes reaching the router, {args.changes} maps and unmaps (ms from the API "
              f"call; target 100):")
        for name, v in (("map", mapped), ("unmap", unmapped)):
            print(f"  {name:6s} median {statistics.median(v):6.2f}  p99 {pct(v, 0.99):6.2f}  "
                  f"max {max(v):6.2f}   ({statistics.median(v) / peer:.1f}x the API call alone)")
        print(f"  peer: the API call alone, median {peer:.2f} ms")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
