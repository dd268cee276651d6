#!/usr/bin/python3
"""Request-driven autoscaling under a wrk ramp, against the same app scaled by hand, in one run.

Starts the release skiffd (bench/skiffd.py), pushes examples/static (nginx), and runs a wrk
ramp through the router: 1, 2, 4, ... 64 connections, STEP seconds each. Twice:
  peer        the app scaled by hand to MAX instances before the ramp (what autoscaling aims at);
  autoscaled  `skiff autoscale --min 1 --max MAX --target-concurrency T` (window WINDOW), from 1
              instance: the routers report the requests in flight, the autoscaler adds
              instances (wrk keeps each connection busy: in flight is most of the connections).
Prints, for each: requests/s over the ramp, p99 of the last step, failed requests (socket errors
and non-2xx answers: must be 0); for the autoscaled run, when MAX instances were RUNNING (from
the ramp's start and from the first step whose connections ask for MAX at target T) and the
autoscaler's decisions; then the ratio of requests/s autoscaled / by hand.

Usage: bench/autoscale/bench_autoscale.py [--step 3] [--target 4] [--max 8] [--window 6]
                                          [--bin build/rel]"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import skiffd  # noqa: E402
from skiffd import ROOT, wait_for  # noqa: E402

RAMP = (1, 2, 4, 8, 16, 32, 64)


def wrk(port, host, connections, seconds):
    r = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s",
                        "--latency", "-H", f"Host: {host}", f"http://127.0.0.1:{port}/"],
                       capture_output=True, text=True, timeout=seconds + 60)
    text = r.stdout
    total = int(re.search(r"(\d+) requests in", text).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)] if m else 0.0
    failed = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        failed += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        failed += int(m.group(1))
    return {"requests": total, "failed": failed, "p99_ms": p99}


def running(d, name):
    status, body = d.call("GET", f"/v1/apps/{name}")
    app = json.loads(body)
    return sum(1 for i in app["instances_detail"] if i["state"] == "RUNNING")


def ramp(d, host, step, name, enough):
    """Runs the ramp; returns totals and when (seconds from its start) `enough` instances of
    name first ran (None: never during the ramp)."""
    reached = {}
    stop = threading.Event()
    t0 = time.monotonic()

    def watch():
        while not stop.is_set():
            try:
                if running(d, name) >= enough:
                    reached["s"] = time.monotonic() - t0
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    runs = [wrk(d.router_port, host, c, step) for c in RAMP]
    elapsed = time.monotonic() - t0
    stop.set()
    watcher.join()
    return {"requests": sum(r["requests"] for r in runs),
            "failed": sum(r["failed"] for r in runs),
            "rps": sum(r["requests"] for r in runs) / elapsed,
            "p99_last_ms": runs[-1]["p99_ms"], "enough_s": reached.get("s")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--step", type=int, default=3)
    ap.add_argument("--target", type=int, default=4)
    ap.add_argument("--max", type=int, default=8)
    ap.add_argument("--window", type=int, default=6)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install wrk)")
    enough = args.max
    d = skiffd.start(args.bin, "skiff-bench-autoscale-")
    name, host = "ramp", "ramp.localhost"
    try:
        r = d.cli("push", name, "-p", os.path.join(ROOT, "examples", "static"), "-i", "1")
        if r.returncode:
            raise SystemExit(f"push failed:\n{r.stdout}\n{r.stderr}")
        wait_for(lambda: subprocess.run(["curl", "-sf", "-H", f"Host: {host}",
                                         f"http://127.0.0.1:{d.router_port}/"],
                                        capture_output=True).returncode == 0, 30, "the app")
        # the peer first: scaled by hand to what the ramp needs
        r = d.cli("scale", name, "-i", str(enough))
        if r.returncode:
            raise SystemExit(f"scale failed:\n{r.stdout}\n{r.stderr}")
        peer = ramp(d, host, args.step, name, enough)
        r = d.cli("scale", name, "-i", "1")
        wait_for(lambda: running(d, name) == 1, 60, "the app back at 1 instance")
        r = d.cli("autoscale", name, "--min", "1", "--max", str(enough),
                  "--target-concurrency", str(args.target), "--window", f"{args.window}s")
        if r.returncode:
            raise SystemExit(f"autoscale failed:\n{r.stdout}\n{r.stderr}")
        # a clean start: the peer's last reports have gone stale and the app runs 1 instance
        def settled():
            status, body = d.call("GET", f"/v1/apps/{name}/autoscale")
            st = json.loads(body)
            m = st["status"]["metric"]
            return st["instances"] == 1 and m is not None and m["in_flight"] == 0 and \
                running(d, name) == 1
        wait_for(settled, 60, "the autoscaled app to settle at 1 instance")
        auto = ramp(d, host, args.step, name, enough)
        print(f"wrk ramp {'-'.join(map(str, RAMP))} connections, {args.step} s each, through the "
              f"router to examples/static (nginx), load average {os.getloadavg()[0]:.1f}:")
        for label, x in (("peer: scaled by hand", peer), ("autoscaled from 1", auto)):
            print(f"  {label:22s} req/s {x['rps']:8.0f}  p99 at 64 conns {x['p99_last_ms']:7.2f} "
                  f"ms  failed {x['failed']} of {x['requests']}")
        # the first step whose connections need that many instances
        needed_at = args.step * next(i for i, c in enumerate(RAMP) if c > (enough - 1) * args.target)
        when = (f"running {auto['enough_s']:.1f} s into the ramp, "
                f"{auto['enough_s'] - needed_at:.1f} s after the load needed them"
                if auto["enough_s"] is not None else "not running during the ramp")
        print(f"  autoscaled (target {args.target} in flight, window {args.window} s): "
              f"{enough} instances {when}")
        status, body = d.call("GET", f"/v1/apps/{name}/autoscale")
        for x in json.loads(body)["status"]["decisions"]:
            print(f"    {x['at']}  {x['from']} -> {x['to']}: {x['reason']}")
        print(f"  req/s autoscaled / by hand: {auto['rps'] / peer['rps']:.2f}x  (target: 0 failed)")
    finally:
        d.stop()


if __name__ == "__main__":
    main()
