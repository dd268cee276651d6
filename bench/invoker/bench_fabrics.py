#!/usr/bin/python3
"""Deliveries/s of one event mapping on the embedded log and on NATS JetStream, in one run.

    /usr/bin/python3 bench/invoker/bench_fabrics.py [--events 20000] [--rounds 2] [--bin DIR ...]

For each build (--bin, default build/rel; give two to compare a build with another) and each
round, alternating: a skiffd on the embedded log, then one on a fresh nats-server (-js, file
storage, loopback) of its own; a Python function that returns nothing, mapped with concurrency
16 and one instance; N events published in batches of 100; the time from the first publish to
the mapping's `delivered` count reaching N. Prints each run, then JetStream / embedded per
build and, with two builds, the second / the first on each fabric."""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

FUNCTION = "def handle(event):\n    return None\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_once(bin_dir, events, on_nats):
    os.environ["SKIFF_BIN_DIR"] = bin_dir
    import conftest  # the e2e harness reads SKIFF_BIN_DIR once: a fresh import per build
    import importlib
    importlib.reload(conftest)
    home = tempfile.mkdtemp(prefix="skiff-bench-fabrics-")
    nats = None
    extra = []
    if on_nats:
        port = free_port()
        nats = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(port),
                                 "-sd", os.path.join(home, "nats")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conftest.wait_for(lambda: socket.create_connection(("127.0.0.1", port), 1), 10,
                          "nats-server")
        extra = ["--nats", "nats://127.0.0.1:%d" % port]
    fn = os.path.join(home, "nop.py")
    with open(fn, "w") as f:
        f.write(FUNCTION)
    p = conftest.Platform(extra_args=extra).start()
    try:
        p.cli("push", "nop", "--function", fn + ":handle", check=True, timeout=300)
        p.cli("map-event", "nop", "load", "-c", "16", "--max-instances", "1", check=True)

        def delivered():
            status, body = p.api("GET", "/v1/event-mappings")
            return body["event_mappings"][0]["delivered"]
        t0 = time.monotonic()
        for b in range(events // 100):
            batch = [{"specversion": "1.0", "id": "e%d-%d" % (b, i), "source": "/bench",
                      "type": "bench"} for i in range(100)]
            status, body = p.api("POST", "/v1/topics/load/events:batch",
                                 raw=json.dumps(batch).encode(),
                                 headers={"Content-Type": "application/cloudevents-batch+json"})
            assert status == 202, (status, body)
        conftest.wait_for(lambda: delivered() >= events, 600, "every delivery", interval=0.05)
        return events / (time.monotonic() - t0)
    finally:
        p.close()
        if nats:
            nats.kill()
            nats.wait()
        shutil.rmtree(home, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bin", action="append", help="a build's binaries (default build/rel)")
    args = ap.parse_args()
    bins = args.bin or [os.path.join(ROOT, "build", "rel")]
    got = {}
    for rnd in range(args.rounds):
        for b in bins:
            for on_nats in (False, True):
                rate = run_once(b, args.events, on_nats)
                got.setdefault((b, on_nats), []).append(rate)
                print("round %d, %s, %s: %.0f deliveries/s (load average %.1f)" %
                      (rnd + 1, b, "jetstream" if on_nats else "embedded log", rate,
                       os.getloadavg()[0]), flush=True)
    for b in bins:
        ratios = [j / e for j, e in zip(got[(b, True)], got[(b, False)])]
        print("%s: JetStream / embedded log: %s" % (b, ", ".join("%.2fx" % r for r in ratios)))
    if len(bins) == 2:
        for on_nats in (False, True):
            ratios = [n / o for n, o in zip(got[(bins[1], on_nats)], got[(bins[0], on_nats)])]
            print("%s / %s on %s: %s" % (bins[1], bins[0],
                                         "jetstream" if on_nats else "the embedded log",
                                         ", ".join("%.2fx" % r for r in ratios)))


if __name__ == "__main__":
    main()
