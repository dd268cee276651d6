"""Delivery benchmarks: a real skiffd (release build), real function instances.

    /usr/bin/python3 bench/invoker/bench_invoker.py [--events 20000] [--rate 1000] [--seconds 5]
                                                    [--cold 10] [--runtime python|node]

1. deliveries/s to a warm function that answers at once: N events are published first, then
   a mapping with `from: beginning` (concurrency 16, one instance, already warm) delivers them;
   the time is from the mapping's creation to the last acknowledgement.
2. publish-to-invocation latency at a steady rate: a client publishes events (binary mode,
   one HTTP request each, 202 once durable) at --rate per second for --seconds; the function
   writes the time it received each one; latency = receive time - send time.
3. cold first invocation: the function is scaled to zero (idle grace 1 s), one event is
   published, and the time until the function receives it is measured, --cold times.
"""
import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
os.environ.setdefault("SKIFF_BIN_DIR", os.path.join(ROOT, "build", "rel"))
from conftest import Platform, wait_for  # noqa: E402

PY_FUNCTION = """
import os, time
OUT = os.environ.get("BENCH_OUT", os.devnull)
f = open(OUT, "a", buffering=1)
def handle(event):
    f.write("%s %.6f\\n" % (event["id"], time.time()))
    return None
"""

NODE_FUNCTION = """
const fs = require('fs');
const fd = fs.openSync(process.env.BENCH_OUT || "/dev/null", "a");
exports.handle = async (event) => {
  fs.writeSync(fd, `${event.id} ${(Date.now() / 1000).toFixed(6)}\\n`);
  return null;
};
"""


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


class Api:
    """A keep-alive connection to the API (one per thread)."""

    def __init__(self, platform):
        self.host, self.port = platform.api_url[len("http://"):].split(":")
        self.token = platform.token
        self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=60)

    def call(self, method, path, body=None, headers=None):
        h = {"Authorization": "Bearer " + self.token}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        self.conn.request(method, path, body=body, headers=h)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, data


def cpu_seconds(pid):
    """User + system CPU time of a process (0 when it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def instance_pids(home):
    """Processes whose working directory is under home (the function's instances)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink("/proc/%s/cwd" % name).startswith(home):
                    pids.append(int(name))
            except OSError:
                pass
    return pids


def mapping_of(api, app):
    status, data = api.call("GET", "/v1/event-mappings?app=" + app)
    return json.loads(data)["event_mappings"]


def bench_throughput(p, api, app, n, out_path):
    batch = 1000
    for start in range(0, n, batch):
        events = [{"specversion": "1.0", "id": "t%d" % i, "source": "/bench", "type": "bench.t",
                   "data": i} for i in range(start, min(n, start + batch))]
        status, data = api.call("POST", "/v1/topics/bench-t/events:batch", events)
        assert status == 202, data
    fn_pids = instance_pids(p.home)
    cpu0 = (cpu_seconds(p.proc.pid), sum(cpu_seconds(x) for x in fn_pids))
    t0 = time.monotonic()
    status, data = api.call("POST", "/v1/event-mappings",
                            {"app": app, "topic": "bench-t", "from": "beginning",
                             "concurrency": 16, "max_instances": 1})
    assert status == 201, data
    mid = json.loads(data)["id"]
    while True:
        m = mapping_of(api, app)
        m = next(x for x in m if x["id"] == mid)
        if m["delivered"] >= n:
            break
        time.sleep(0.005)
    dt = time.monotonic() - t0
    cpu = (cpu_seconds(p.proc.pid) - cpu0[0], sum(cpu_seconds(x) for x in fn_pids) - cpu0[1])
    api.call("DELETE", "/v1/event-mappings/" + mid)
    with open(out_path) as f:
        got = len({l.split()[0] for l in f if l.startswith("t")})
    assert got == n, "the function saw %d distinct events of %d" % (got, n)
    return n / dt, dt, cpu


def bench_latency(p, app, out_path, rate, seconds):
    api = Api(p)
    status, data = api.call("POST", "/v1/event-mappings",
                            {"app": app, "topic": "bench-l", "concurrency": 16,
                             "max_instances": 1})
    assert status == 201, data
    mid = json.loads(data)["id"]
    total = rate * seconds
    threads = 32
    sent = {}
    publish_ms = []
    lock = threading.Lock()
    start = time.time() + 0.2

    def publisher(k):
        c = Api(p)
        for i in range(k, total, threads):
            due = start + i / rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            eid = "l%d" % i
            t = time.time()
            status, _ = c.call("POST", "/v1/topics/bench-l/events", b"x",
                               {"ce-id": eid, "ce-source": "/bench", "ce-type": "bench.latency",
                                "ce-specversion": "1.0", "Content-Type": "text/plain"})
            acked = time.time()
            assert status == 202
            with lock:
                sent[eid] = t
                publish_ms.append((acked - t) * 1000)

    ts = [threading.Thread(target=publisher, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    achieved = total / (time.time() - start)

    def received():
        try:
            with open(out_path) as f:
                lines = [l.split() for l in f if l.startswith("l")]
        except OSError:
            return None
        return lines if len(lines) >= total else None

    lines = wait_for(received, 60, "every latency event received")
    lat = [(float(t) - sent[eid]) * 1000 for eid, t in lines if eid in sent]
    api.call("DELETE", "/v1/event-mappings/" + mid)
    return lat, achieved, publish_ms


def bench_cold(p, app, out_path, runs):
    api = Api(p)
    status, data = api.call("POST", "/v1/event-mappings",
                            {"app": app, "topic": "bench-c", "idle_grace_ms": 1000})
    assert status == 201, data
    results = []
    for k in range(runs):
        wait_for(lambda: not [i for i in json.loads(api.call("GET", "/v1/apps/" + app)[1])
                              ["instances_detail"] if i["state"] in ("RUNNING", "STARTING",
                                                                     "STOPPING")],
                 60, "scaled to zero")
        eid = "c%d" % k
        t = time.time()
        status, _ = api.call("POST", "/v1/topics/bench-c/events", b"x",
                             {"ce-id": eid, "ce-source": "/bench", "ce-type": "bench.latency",
                              "ce-specversion": "1.0", "Content-Type": "text/plain"})
        assert status == 202

        def got():
            with open(out_path) as f:
                for line in f:
                    if line.startswith(eid + " "):
                        return float(line.split()[1])
            return None

        r = wait_for(got, 60, "the cold event")
        results.append((r - t) * 1000)
    return results


def print_beside_jetstream(args, rate, lat, pub):
    """Skiff's figures beside jetstream_peer's (same machine, same run, same event counts)."""
    js = {}
    with open(args.jetstream_results) as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[0] == "jetstream":
                js[parts[1]] = [float(x) for x in parts[2:]]
    if "deliveries" not in js or "latency" not in js:
        print("no JetStream figures in %s" % args.jetstream_results)
        return
    rows = [
        ("deliveries/s", rate, js["deliveries"][2], "%.0f"),
        ("publish-to-delivery p50 ms", pct(lat, 50), js["latency"][2], "%.2f"),
        ("publish-to-delivery p99 ms", pct(lat, 99), js["latency"][3], "%.2f"),
        ("publish ack p50 ms", pct(pub, 50), js.get("publish-ack", [0, 0, 0])[1], "%.2f"),
        ("publish ack p99 ms", pct(pub, 99), js.get("publish-ack", [0, 0, 0])[2], "%.2f"),
    ]
    print()
    print("beside NATS JetStream (%s, file storage), ratio = Skiff / JetStream "
          "(deliveries/s: higher is better; latencies: lower is better)" % args.jetstream_version)
    print("%-28s%14s%14s%10s" % ("", "skiff", "jetstream", "ratio"))
    for name, mine, theirs, fmt in rows:
        print("%-28s%14s%14s%10s" % (name, fmt % mine, fmt % theirs,
                                     "%.2fx" % (mine / theirs) if theirs else "-"))
    print("skiff: an HTTP invocation of a warm %s function per event (concurrency 16); an event "
          "is delivered once durable (fdatasync)." % args.runtime)
    print("jetstream: %d events fetched by a pull consumer in batches of 256 and acked, no "
          "function; at %d/s a push consumer with explicit ack. nats-server acknowledges "
          "before fsync." % (args.events, args.rate))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--cold", type=int, default=10)
    ap.add_argument("--runtime", choices=("python", "node"), default="python")
    ap.add_argument("--jetstream-results", metavar="FILE",
                    help="jetstream_peer's output from the same run (bench.sh passes it): "
                         "printed beside Skiff's figures with ratios")
    ap.add_argument("--jetstream-version", default="nats-server")
    args = ap.parse_args()

    home = tempfile.mkdtemp(prefix="skiff-bench-invoker-")
    src = os.path.join(home, "src")
    os.makedirs(src)
    out_path = os.path.join(home, "received.txt")
    name = "fn.py" if args.runtime == "python" else "fn.js"
    with open(os.path.join(src, name), "w") as f:
        f.write(PY_FUNCTION if args.runtime == "python" else NODE_FUNCTION)
    os.makedirs(os.path.join(home, "skiff"))
    p = Platform(home=os.path.join(home, "skiff")).start()
    try:
        app = "bench"
        r = p.cli("push", app, "--function", os.path.join(src, name) + ":handle")
        assert r.returncode == 0, r.stdout + r.stderr
        p.cli("set-env", app, "BENCH_OUT", out_path, check=True)
        p.cli("restart", app)
        api = Api(p)
        status, data = api.call("POST", "/v1/apps/%s/invoke" % app, b"warm",
                                {"Content-Type": "text/plain"})
        assert status in (200, 204), data

        rate, dt, cpu = bench_throughput(p, api, app, args.events, out_path)
        print("runtime: %s, machine: %d cores, load average %.1f" %
              (args.runtime, os.cpu_count(), os.getloadavg()[0]))
        print("deliveries/s to a warm function: %.0f (%d events in %.2f s, concurrency 16, "
              "1 instance)" % (rate, args.events, dt))
        print("  CPU per delivery: skiffd %.1f us, the function %.1f us" %
              (cpu[0] / args.events * 1e6, cpu[1] / args.events * 1e6))
        lat, achieved, pub = bench_latency(p, app, out_path, args.rate, args.seconds)
        print("publish-to-invocation at %.0f events/s (%d events): p50 %.2f ms, p99 %.2f ms, "
              "max %.2f ms" % (achieved, len(lat), pct(lat, 50), pct(lat, 99), max(lat)))
        print("  for scale: publish until 202 (durable, group commit + fsync) p50 %.2f ms, "
              "p99 %.2f ms" % (pct(pub, 50), pct(pub, 99)))
        cold = bench_cold(p, app, out_path, args.cold)
        if cold:
            print("cold first invocation from publish (%d runs): p50 %.0f ms, p99 %.0f ms" %
                  (len(cold), pct(cold, 50), pct(cold, 99)))
        if args.jetstream_results:
            print_beside_jetstream(args, rate, lat, pub)
    finally:
        try:
            p.stop()
        finally:
            p.kill_all()
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
