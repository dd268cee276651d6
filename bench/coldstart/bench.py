"""Cold starts from zero, in one run on this machine, beside their floor.

    /usr/bin/python3 bench/coldstart/bench.py [--runs 20] [--bin build/rel]

Floor: the bare start of `python3 -c pass`, `node -e 0`, and of a static binary to its first
accepted connection (fork to connect, bench/container/listen.c).

Skiff, twice: with warm containers (skiffd --prewarm 2, the default) and with every
container made at its start (--prewarm 0). For a Python function and a Node.js function at
zero instances: one event published, the time until the function has it (its own clock);
and one request (POST /v1/apps/NAME/invoke) to the first byte of its answer. For a static
binary app (the binary buildpack) at zero instances: `skiff scale -i 1`'s request to the
first byte of a GET to the instance; and, 10 times (runs / 2), one scale from 0 to 4 to the
first byte of all four, counting those that found a warm container (`--only burst`); and
the same app scaled by its requests (`skiff autoscale --min 0`), one GET through the router
while it is at zero to its first byte: the router holds the request and wakes skiffd
(`--only router`; each run waits for the autoscaler to bring it back to zero, 2 s or more).
p50/p99 of each, and the share of each step from the app's log: arrival -> "Starting
instance" (the decision) -> "is running" (container made and the process listening, as the
health check saw it) -> the function has the event."""
import argparse
import datetime
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import skiffd  # noqa: E402

# each prints the event's id: the line's time in the app's log (skiffd's clock, ms) is when
# the function had the event
PY_FUNCTION = """
def handle(event):
    print("got", event["id"], flush=True)
    return "ok"
"""

NODE_FUNCTION = """
exports.handle = async (event) => {
  console.log("got " + event.id);
  return "ok";
};
"""


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))] if s else float("nan")


def floor_command(argv, runs):
    times = []
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run(argv, check=True)
        times.append((time.monotonic() - t) * 1000)
    return times


def first_byte(host, port):
    """A GET's first byte from host:port, or None when nothing answers yet (a connection not
    made within 5 ms is tried again: a SYN lost while the network is wired would otherwise
    wait a second for its retransmission)."""
    try:
        with socket.create_connection((host, port), timeout=0.005) as s:
            s.settimeout(5)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(1) or None
    except OSError:
        return None


def floor_listen(listen_bin, runs):
    """fork to the first byte of a static binary's answer on loopback"""
    times = []
    while len(times) < runs:
        port = skiffd.free_port()
        t = time.monotonic()
        proc = subprocess.Popen([listen_bin], env={"PORT": str(port)})
        while not first_byte("127.0.0.1", port) and proc.poll() is None:
            time.sleep(0.0002)
        if proc.poll() is not None:  # the port was taken meanwhile: another one
            continue
        times.append((time.monotonic() - t) * 1000)
        proc.kill()
        proc.wait()
    return times


def log_time(line):
    stamp = line.split(" ", 1)[0]
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def log_marks(d, app, since, marker=None):
    """Wall times from the app's log after since: the first "Starting instance", the first
    "is running" and (marker given) the first line holding marker; None for each not there."""
    r = d.cli("logs", app, "--recent")
    marks = {"start": None, "ready": None, "marker": None}
    for line in r.stdout.splitlines():
        try:
            t = log_time(line)
        except ValueError:
            continue
        if t < since - 0.002:
            continue
        if "Starting instance" in line and marks["start"] is None:
            marks["start"] = t
        elif " is running at " in line and marks["ready"] is None:
            marks["ready"] = t
        elif marker and marker in line and marks["marker"] is None:
            marks["marker"] = t
    return marks


def at_zero(d, app):
    def zero():
        status, body = d.call("GET", "/v1/apps/" + app)
        return status == 200 and not json.loads(body)["instances_detail"]
    skiffd.wait_for(zero, 60, app + " at zero instances")


def post(d, path, body, headers):
    conn = http.client.HTTPConnection("127.0.0.1", d.api_port, timeout=60)
    try:
        conn.request("POST", path, body, dict(headers, Authorization="Bearer " + d.token))
        r = conn.getresponse()
        first = r.read(1)
        return r.status, first
    finally:
        conn.close()


def warm_started(d, app):
    status, body = d.call("GET", "/v1/apps/" + app)
    insts = json.loads(body)["instances_detail"] if status == 200 else []
    return bool(insts) and all(i.get("warm_start") for i in insts)


def bench_function(d, app, runs, tag):
    """event-to-invocation and request-to-first-byte from zero, alternating; the steps of the
    event's path (arrival -> decision -> running -> the function has it) from the log"""
    event, request, shares, warm = [], [], [], 0
    for k in range(runs):
        at_zero(d, app)
        eid = "%s-e%d" % (tag, k)
        t = time.time()
        status, _ = post(d, "/v1/topics/cold-%s/events" % app, b"x",
                         {"ce-id": eid, "ce-source": "/bench", "ce-type": "bench.cold",
                          "ce-specversion": "1.0", "Content-Type": "text/plain"})
        assert status == 202, status
        marks = skiffd.wait_for(lambda: (lambda m: m["marker"] and m)(
            log_marks(d, app, t, "got " + eid)), 60, "the cold event in the log")
        warm += warm_started(d, app)
        event.append((marks["marker"] - t) * 1000)
        if marks["start"] and marks["ready"]:
            shares.append(((marks["start"] - t) * 1000, (marks["ready"] - marks["start"]) * 1000,
                           (marks["marker"] - marks["ready"]) * 1000))
        at_zero(d, app)
        t = time.monotonic()
        status, first = post(d, "/v1/apps/%s/invoke" % app, b"x", {"Content-Type": "text/plain"})
        request.append((time.monotonic() - t) * 1000)
        assert status == 200 and first, status
    return event, request, shares, warm


def bench_binary(d, app, runs):
    """scale 0 -> 1 (PATCH instances) to the instance's first byte, polled every 0.2 ms"""
    times, shares, warm = [], [], 0
    for _ in range(runs):
        status, body = d.call("PATCH", "/v1/apps/" + app, {"instances": 0})
        assert status == 200, body
        at_zero(d, app)
        wall, t = time.time(), time.monotonic()
        status, body = d.call("PATCH", "/v1/apps/" + app, {"instances": 1})
        assert status == 200, body
        addr = None
        while time.monotonic() - t < 60:
            if not addr:
                status, body = d.call("GET", "/v1/apps/" + app)
                insts = [i for i in json.loads(body)["instances_detail"] if i.get("address")]
                addr = insts[0]["address"].split(":") if insts else None
            elif first_byte(addr[0], int(addr[1])):
                break
            else:
                time.sleep(0.0002)
        else:
            raise SystemExit("%s never answered" % app)
        times.append((time.monotonic() - t) * 1000)
        warm += warm_started(d, app)
        marks = log_marks(d, app, wall)
        if marks["start"] and marks["ready"]:
            shares.append(((marks["start"] - wall) * 1000, (marks["ready"] - marks["start"]) * 1000))
    return times, shares, warm


def router_first_byte(d, app):
    """One GET through the router to app (at zero: held until an instance is up), to its first
    byte, in ms; None when the router answered something else than 200."""
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", d.router_port), timeout=60) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: %s.localhost\r\nConnection: close\r\n\r\n"
                  % app.encode())
        head = s.recv(12)
        ms = (time.monotonic() - t) * 1000
        return ms if head.startswith(b"HTTP/1.1 200") else None


def bench_router(d, app, runs):
    """a GET through the router to the app at zero (it scales itself: the router holds the
    request and wakes skiffd), to its first byte; the steps from the log"""
    times, shares, warm = [], [], 0
    for _ in range(runs):
        at_zero(d, app)
        wall = time.time()
        ms = router_first_byte(d, app)
        if ms is None:
            raise SystemExit("%s: the router did not answer 200 from zero" % app)
        times.append(ms)
        warm += warm_started(d, app)
        marks = log_marks(d, app, wall)
        if marks["start"] and marks["ready"]:
            shares.append(((marks["start"] - wall) * 1000, (marks["ready"] - marks["start"]) * 1000))
    return times, shares, warm


def bench_burst(d, app, runs, n):
    """scale 0 -> n in one request to the first byte of every instance, and how many of the n
    found a warm container: a pool that does not follow bursts has --prewarm of them"""
    times, warm = [], 0
    for _ in range(runs):
        status, body = d.call("PATCH", "/v1/apps/" + app, {"instances": 0})
        assert status == 200, body
        at_zero(d, app)
        t = time.monotonic()
        status, body = d.call("PATCH", "/v1/apps/" + app, {"instances": n})
        assert status == 200, body
        answered = set()
        while len(answered) < n and time.monotonic() - t < 60:
            status, body = d.call("GET", "/v1/apps/" + app)
            for i in json.loads(body)["instances_detail"]:
                if i.get("address") and i["guid"] not in answered:
                    host, port = i["address"].split(":")
                    if first_byte(host, int(port)):
                        answered.add(i["guid"])
        if len(answered) < n:
            raise SystemExit("%s: %d of %d instances never answered" % (app, n - len(answered), n))
        times.append((time.monotonic() - t) * 1000)
        status, body = d.call("GET", "/v1/apps/" + app)
        warm += sum(1 for i in json.loads(body)["instances_detail"] if i.get("warm_start"))
    return times, warm


def push(d, work, app, files, *args):
    src = os.path.join(work, app)
    os.makedirs(src, exist_ok=True)
    for name, (content, mode) in files.items():
        path = os.path.join(src, name)
        if isinstance(content, bytes):
            with open(path, "wb") as f:
                f.write(content)
        else:
            with open(path, "w") as f:
                f.write(content)
        os.chmod(path, mode)
    r = d.cli("push", app, "-p", src, *args) if "--function" not in args else \
        d.cli("push", app, *args)
    if r.returncode != 0:
        raise SystemExit("push %s failed:\n%s%s" % (app, r.stdout, r.stderr))


def measure_platform(bindir, prewarm, runs, work, listen, only):
    d = skiffd.start(bindir, "skiff-bench-coldstart-", {"SKIFF_PREWARM": str(prewarm)})
    rows = {}
    try:
        for runtime, name, code in (("python", "fn.py", PY_FUNCTION),
                                    ("node", "fn.js", NODE_FUNCTION)):
            if only and runtime not in only:
                continue
            app = "cold" + runtime
            src = os.path.join(work, "%s-%d" % (app, prewarm))
            os.makedirs(src, exist_ok=True)
            with open(os.path.join(src, name), "w") as f:
                f.write(code)
            r = d.cli("push", app, "--function", os.path.join(src, name) + ":handle")
            if r.returncode != 0:
                raise SystemExit("push %s failed:\n%s%s" % (app, r.stdout, r.stderr))
            status, body = d.call("POST", "/v1/event-mappings",
                                  {"app": app, "topic": "cold-" + app, "idle_grace_ms": 1000})
            assert status == 201, body
            rows[runtime] = bench_function(d, app, runs, "%s%d" % (runtime, prewarm))
        if only and not {"binary", "burst", "router"} & set(only):
            return rows
        with open(listen, "rb") as f:
            binary = f.read()
        push(d, work, "coldbin%d" % prewarm, {"hello": (binary, 0o755),
                                             "Procfile": ("web: ./hello\n", 0o644)})
        if not only or "binary" in only:
            rows["binary"] = bench_binary(d, "coldbin%d" % prewarm, runs)
        if not only or "burst" in only:
            rows["burst"] = bench_burst(d, "coldbin%d" % prewarm, max(1, runs // 2), BURST)
        if not only or "router" in only:
            app = "coldrtr%d" % prewarm
            push(d, work, app, {"hello": (binary, 0o755), "Procfile": ("web: ./hello\n", 0o644)})
            # (the push may have mapped it already: the first GET tells whether it is there)
            d.call("POST", "/v1/routes", {"app": app, "host": app + ".localhost"})
            r = d.cli("autoscale", app, "--min", "0", "--max", "1", "--target-concurrency", "1",
                      "--window", "2s")
            if r.returncode != 0:
                raise SystemExit("skiff autoscale %s failed:\n%s%s" % (app, r.stdout, r.stderr))
            rows["router"] = bench_router(d, app, runs)
    finally:
        d.stop()
    return rows


BURST = 4  # instances started by one scale from zero (bench_burst)


def show(label, values, floor, share_names=None, shares=None, warm=None, runs=None):
    shares_text = ""
    if shares:
        shares_text = " / ".join("%s %.1f" % (n, pct([s[i] for s in shares], 50))
                                 for i, n in enumerate(share_names))
    print("  %-40s %6.1f / %6.1f   %5.2fx   %s%s" %
          (label, pct(values, 50), pct(values, 99), pct(values, 50) / pct(floor, 50),
           shares_text, "" if warm is None else "  (%d of %d warm)" % (warm, runs)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    ap.add_argument("--only", default="", help="comma-separated: python, node, binary, burst, "
                    "router (default all)")
    ap.add_argument("--prewarm", default="2,0", help="the skiffd runs: --prewarm values")
    args = ap.parse_args()
    only = [w for w in args.only.split(",") if w]
    work = tempfile.mkdtemp(prefix="skiff-bench-coldstart-")
    os.chmod(work, 0o755)
    try:
        listen = os.path.join(work, "hello")
        subprocess.run(["cc", "-O2", "-static", "-o", listen,
                        os.path.join(ROOT, "bench", "container", "listen.c")], check=True)
        # the interpreters the containers run: the stack's, the host's /usr
        floor = {"python": floor_command(["/usr/bin/python3", "-c", "pass"], args.runs),
                 "node": floor_command(["/usr/bin/node", "-e", "0"], args.runs),
                 "binary": floor_listen(listen, args.runs)}
        measured = {p: measure_platform(args.bin, p, args.runs, work, listen, only)
                    for p in (int(w) for w in args.prewarm.split(","))}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("bench/coldstart: %d runs each, %d cores, load %.1f; p50 / p99 ms, the ratio to the "
          "bare start's p50, and the steps' p50 from the app's log" %
          (args.runs, os.cpu_count(), os.getloadavg()[0]))
    print("floor: bare start")
    show("/usr/bin/python3 -c pass", floor["python"], floor["python"])
    show("/usr/bin/node -e 0", floor["node"], floor["node"])
    show("static binary, fork to first byte", floor["binary"], floor["binary"])
    for prewarm, rows in measured.items():
        print("skiff, %s:" % ("warm containers (--prewarm 2)" if prewarm else
                              "containers made at start (--prewarm 0)"))
        for runtime in ("python", "node"):
            if runtime not in rows:
                continue
            event, request, shares, warm = rows[runtime]
            show("%s function: event to invocation" % runtime, event, floor[runtime],
                 ("decision", "container+runtime", "delivery"), shares, warm, len(event))
            show("%s function: request to first byte" % runtime, request, floor[runtime])
        if "binary" in rows:
            times, shares, warm = rows["binary"]
            show("static binary app: scale to first byte", times, floor["binary"],
                 ("decision", "container+process"), shares, warm, len(times))
        if "router" in rows:
            times, shares, warm = rows["router"]
            show("static binary app: GET via router from 0", times, floor["binary"],
                 ("decision", "container+process"), shares, warm, len(times))
        if "burst" in rows:
            times, warm = rows["burst"]
            show("static binary app: 0 -> %d, all answer" % BURST, times, floor["binary"],
                 warm=warm, runs=len(times) * BURST)


if __name__ == "__main__":
    main()
