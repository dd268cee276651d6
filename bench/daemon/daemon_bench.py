#!/usr/bin/env python3
"""skiffd's footprint and API speed, on the release build:
  - resident memory (RSS) of skiffd idle with no apps, and with 1,000 stopped apps
  - GET /v1/apps with 1,000 apps: median and p90 latency over 50 requests
  - push to first successful request for examples/python-web (skiff push, then the router)
Targets: 20 MB / 40 MB RSS, 10 ms median, 2 s push-to-first-request.
Usage: bench/daemon/daemon_bench.py [--apps N] [--bin build/rel]"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import skiffd  # noqa: E402
from skiffd import ROOT, free_port, wait_for  # noqa: E402


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().split(")")[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def push_to_first_request(env, bindir, router_port, name):
    """skiff push of examples/python-web, then GET through the router until the first 200."""
    t0 = time.perf_counter()
    r = subprocess.run([os.path.join(bindir, "skiff"), "push", name, "-p",
                        os.path.join(ROOT, "examples", "python-web")], env=env,
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    if r.returncode != 0:
        raise SystemExit("push failed: " + r.stderr[-500:])
    pushed = time.perf_counter() - t0
    refused = 0  # answers before the first 200 (the router's 503 while its table lacks it)

    def first_ok():
        nonlocal refused
        req = urllib.request.Request(f"http://127.0.0.1:{router_port}/",
                                     headers={"Host": f"{name}.localhost"})
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                return resp.status == 200
        except urllib.error.HTTPError:
            refused += 1
            raise

    wait_for(first_ok, 30, "the first request")
    first = time.perf_counter() - t0
    print(f"  {name}: push returned at {pushed:.3f} s, first 200 at {first:.3f} s, "
          f"{refused} answer(s) before it")
    return first


def direct_start_to_first_request():
    """The peer: the same app started by hand (python3 app.py on a free port), to its first 200.
    What push adds on top of this is the platform's cost: pack, upload, stage, schedule, route."""
    port = free_port()
    app_dir = os.path.join(ROOT, "examples", "python-web")
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/python3", "app.py"], cwd=app_dir, env=dict(os.environ, PORT=str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def first_ok():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                return resp.status == 200
        wait_for(first_ok, 30, "the app started by hand")
        return time.perf_counter() - t0
    finally:
        proc.kill()
        proc.wait()


def print_push_figures(firsts):
    directs = sorted(direct_start_to_first_request() for _ in range(len(firsts)))
    firsts = sorted(firsts)
    push, direct = statistics.median(firsts), statistics.median(directs)
    print(f"push to first request (python-web), {len(firsts)} runs: median {push:.2f} s, "
          f"max {firsts[-1]:.2f} s   (target 2 s)")
    print(f"  peer, /usr/bin/python3 app.py started by hand to first request: median {direct:.2f} s; "
          f"push / by hand = {push / direct:.1f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", type=int, default=1000)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    ap.add_argument("--push-only", action="store_true",
                    help="only push to first request, --runs times (fresh app each time)")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    d = skiffd.start(args.bin)
    proc, env, router_port, api_port, token = d.proc, d.env, d.router_port, d.api_port, d.token
    try:
        def call(method, path, body=None):
            status, data = d.call(method, path, body)
            if status >= 300:
                raise SystemExit(f"{method} {path}: {status} {data[:200]!r}")
            return status, data

        if args.push_only:
            print_push_figures([push_to_first_request(env, args.bin, router_port, f"bench-web-{i}")
                                for i in range(args.runs)])
            return
        time.sleep(1)
        idle = rss_kb(proc.pid)
        for i in range(args.apps):
            call("POST", "/v1/apps", {"name": f"app-{i:04d}", "env": {"K": "v"}})
        # one keep-alive connection, as the CLI's libcurl uses: the time is the request's
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=30)
        headers = {"Authorization": "Bearer " + token}
        times = []
        size = 0
        for i in range(51):
            t0 = time.perf_counter()
            conn.request("GET", "/v1/apps", headers=headers)
            body = conn.getresponse().read()
            if i:  # the first one warms up
                times.append((time.perf_counter() - t0) * 1000)
            size = len(body)
        # the same, each time right after a change (so nothing cached can answer)
        cold = []
        for i in range(30):
            conn.request("PUT", "/v1/apps/app-0000/env", body=json.dumps({"N": str(i)}),
                         headers=headers)
            conn.getresponse().read()
            t0 = time.perf_counter()
            conn.request("GET", "/v1/apps", headers=headers)
            conn.getresponse().read()
            cold.append((time.perf_counter() - t0) * 1000)
        cold.sort()
        # skiffd's own CPU time per uncached list: what the machine's load cannot inflate
        t = cpu_seconds(proc.pid)
        for i in range(50):
            conn.request("PUT", "/v1/apps/app-0000/env", body=json.dumps({"M": str(i)}),
                         headers=headers)
            conn.getresponse().read()
        put_cpu = (cpu_seconds(proc.pid) - t) / 50
        t = cpu_seconds(proc.pid)
        for i in range(50):
            conn.request("PUT", "/v1/apps/app-0000/env", body=json.dumps({"M": str(i)}),
                         headers=headers)
            conn.getresponse().read()
            conn.request("GET", "/v1/apps", headers=headers)
            conn.getresponse().read()
        list_cpu = (cpu_seconds(proc.pid) - t) / 50 - put_cpu
        conn.close()
        time.sleep(0.5)
        loaded = rss_kb(proc.pid)
        times.sort()

        first = push_to_first_request(env, args.bin, router_port, "bench-web")

        print(f"skiffd RSS idle, no apps:          {idle / 1024:6.1f} MB   (target 20 MB)")
        print(f"skiffd RSS with {args.apps} stopped apps: {loaded / 1024:6.1f} MB   (target 40 MB)")
        print(f"GET /v1/apps, {args.apps} apps ({size // 1024} KB): median {statistics.median(times):.2f} ms,"
              f" p90 {times[int(len(times) * 0.9)]:.2f} ms   (target 10 ms median)")
        print(f"GET /v1/apps right after a change:  median {statistics.median(cold):.2f} ms,"
              f" p90 {cold[int(len(cold) * 0.9)]:.2f} ms; skiffd CPU {list_cpu * 1000:.2f} ms"
              f" per list")
        print_push_figures([first])
    finally:
        d.stop()


if __name__ == "__main__":
    main()
