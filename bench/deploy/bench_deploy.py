#!/usr/bin/python3
"""A rolling push under load, against the same app at rest, in one run.

Starts the release skiffd (bench/skiffd.py), pushes a 3-instance Python web app, then runs
`wrk -t2 -c32` through the router for SECONDS while nothing changes (the peer: steady state),
then for SECONDS again while `skiff push` deploys a new version of the app (rolling, the
default), ROUNDS times, alternating. Prints, for each: requests/s, p99 latency, requests that
failed (socket errors and non-2xx answers: must be 0 during a deploy) and, for the deploys,
how long the push took and whether every instance ended on the new droplet.

Usage: bench/deploy/bench_deploy.py [--seconds 8] [--rounds 3] [--instances 3] [--bin build/rel]"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import skiffd  # noqa: E402
from skiffd import ROOT, wait_for  # noqa: E402

APP = """\
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
VERSION = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "version.txt")).read().strip()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (VERSION + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


def write_app(root, version):
    d = os.path.join(root, version)
    os.makedirs(d, exist_ok=True)
    for name, text in (("app.py", APP), ("Procfile", "web: python3 app.py\n"),
                       ("version.txt", version + "\n")):
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    return d


def wrk(port, host, seconds):
    r = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-H", f"Host: {host}",
                        f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                       timeout=seconds + 60)
    text = r.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    failed = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        failed += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        failed += int(m.group(1))
    return {"rps": rps, "p99_ms": p99, "failed": failed, "requests": total}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (apt-get install wrk)")
    work = tempfile.mkdtemp(prefix="skiff-bench-deploy-")
    os.chmod(work, 0o755)
    d = skiffd.start(args.bin, "skiff-bench-deploy-home-")
    name, host = "deploy", "deploy.localhost"
    try:
        r = d.cli("push", name, "-p", write_app(work, "v0"), "-i", str(args.instances))
        if r.returncode:
            raise SystemExit(f"push failed:\n{r.stdout}\n{r.stderr}")
        wait_for(lambda: subprocess.run(["curl", "-sf", "-H", f"Host: {host}",
                                         f"http://127.0.0.1:{d.router_port}/"],
                                        capture_output=True).returncode == 0, 30, "the app")
        steady, deploys = [], []
        for rnd in range(args.rounds):
            steady.append(wrk(d.router_port, host, args.seconds))
            version = f"v{rnd + 1}"
            app_dir = write_app(work, version)
            push = {}

            def deploy():
                time.sleep(1)  # load first, then the push, well inside the wrk run
                t0 = time.perf_counter()
                res = d.cli("push", name, "-p", app_dir, "-i", str(args.instances))
                push["seconds"] = time.perf_counter() - t0
                push["rc"] = res.returncode
                push["out"] = res.stdout + res.stderr

            t = threading.Thread(target=deploy)
            t.start()
            run = wrk(d.router_port, host, args.seconds)
            t.join()
            status, body = d.call("GET", f"/v1/apps/{name}")
            app = json.loads(body)
            dropl = {i["droplet"] for i in app["instances_detail"] if i["state"] == "RUNNING"}
            run.update(push_s=push["seconds"], push_rc=push["rc"],
                       on_new=dropl == {app["droplet"]})
            if push["rc"]:
                print(push["out"], file=sys.stderr)
            deploys.append(run)
        print(f"rolling push of a {args.instances}-instance Python app under wrk -t2 -c32, "
              f"{args.rounds} rounds of {args.seconds} s, load average {os.getloadavg()[0]:.1f}:")
        for label, runs in (("steady state", steady), ("during a push", deploys)):
            print(f"  {label:14s} req/s median {statistics.median(x['rps'] for x in runs):8.0f}  "
                  f"p99 median {statistics.median(x['p99_ms'] for x in runs):7.2f} ms  "
                  f"failed {sum(x['failed'] for x in runs)} of "
                  f"{sum(x['requests'] for x in runs)}")
        print(f"  pushes: {[round(x['push_s'], 2) for x in deploys]} s, exit codes "
              f"{[x['push_rc'] for x in deploys]}, every instance on the new droplet after each: "
              f"{all(x['on_new'] for x in deploys)}")
        p99s = statistics.median(x['p99_ms'] for x in deploys) / \
            statistics.median(x['p99_ms'] for x in steady)
        print(f"  p99 during a push / steady: {p99s:.2f}x  (target: 0 failed)")
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
