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
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception:
            pass
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", type=int, default=1000)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="skiff-bench-")
    api_port, router_port, admin_port = free_port(), free_port(), free_port()
    env = dict(os.environ, SKIFF_HOME=home, HOME=home,
               SKIFF_API_ADDR=f"127.0.0.1:{api_port}",
               SKIFF_ROUTER_ADDR=f"127.0.0.1:{router_port}",
               SKIFF_ROUTER_ADMIN_ADDR=f"127.0.0.1:{admin_port}")
    env.pop("SKIFF_API", None)
    env.pop("SKIFF_TOKEN", None)
    api = f"http://127.0.0.1:{api_port}"
    log = open(os.path.join(home, "skiffd.out"), "wb")
    proc = subprocess.Popen([os.path.join(args.bin, "skiffd")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: urllib.request.urlopen(api + "/v1/info", timeout=1).status == 200, 20,
                 "skiffd")
        token = json.load(open(os.path.join(home, "api.json")))["token"]

        def call(method, path, body=None):
            req = urllib.request.Request(api + path, method=method,
                                         data=json.dumps(body).encode() if body else None)
            req.add_header("Authorization", "Bearer " + token)
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read()

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
        conn.close()
        time.sleep(0.5)
        loaded = rss_kb(proc.pid)
        times.sort()

        # push to first successful request through the router
        t0 = time.perf_counter()
        r = subprocess.run([os.path.join(args.bin, "skiff"), "push", "bench-web", "-p",
                            os.path.join(ROOT, "examples", "python-web")], env=env,
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
        pushed = time.perf_counter() - t0

        def first_ok():
            req = urllib.request.Request(f"http://127.0.0.1:{router_port}/",
                                         headers={"Host": "bench-web.localhost"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                return resp.status == 200

        push_ok = r.returncode == 0
        if push_ok:
            wait_for(first_ok, 30, "the first request")
        first = time.perf_counter() - t0

        print(f"skiffd RSS idle, no apps:          {idle / 1024:6.1f} MB   (target 20 MB)")
        print(f"skiffd RSS with {args.apps} stopped apps: {loaded / 1024:6.1f} MB   (target 40 MB)")
        print(f"GET /v1/apps, {args.apps} apps ({size // 1024} KB): median {statistics.median(times):.2f} ms,"
              f" p90 {times[int(len(times) * 0.9)]:.2f} ms   (target 10 ms median)")
        print(f"GET /v1/apps right after a change:  median {statistics.median(cold):.2f} ms,"
              f" p90 {cold[int(len(cold) * 0.9)]:.2f} ms")
        if push_ok:
            print(f"push to first request (python-web): {first:.2f} s (skiff push {pushed:.2f} s)"
                  f"   (target 2 s)")
        else:
            print("push failed:", r.stderr[-500:])
    finally:
        proc.send_signal(signal.SIGINT)  # interactive stop: the router goes too
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        run = os.path.join(home, "run")
        for name in os.listdir(run) if os.path.isdir(run) else []:
            if name.endswith(".pid"):
                try:
                    os.killpg(int(open(os.path.join(run, name)).read()), signal.SIGKILL)
                except (ValueError, OSError):
                    pass
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
