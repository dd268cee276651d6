"""Where a static binary app's start from zero goes, step by step, on a traced build.

    make BUILD=/tmp/bt REL_CFLAGS='-O2 -DSKIFF_START_TRACE=\\"/tmp/skiff-start-trace.log\\"' build
    /usr/bin/python3 bench/coldstart/trace.py --bin /tmp/bt/rel [--runs 10] [--via router]

(src/common/start_trace.h). The client does what bench.py does for the static binary app
(PATCH instances 0 -> 1, GET the app until its instance has an address, connect until the
first byte) and writes its own steps to the same file; skiffd, the keeper and the container's
program write theirs. With `--via router` the app scales itself (`skiff autoscale --min 0`)
and each start is one GET through the router while it is at zero: the router holds the
request, wakes skiffd and sends it on once a table brings the instance; the next start waits
for the autoscaler to bring it back to zero (its shortest window, 2 s). Prints, for each step, the p50 and minimum over the runs of the time
since the client's PATCH and of the time since the step before (the minimum is nearest the
work itself: on a loaded machine most of the rest is waiting for a CPU)."""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import bench  # noqa: E402
import skiffd  # noqa: E402

TRACE = "/tmp/skiff-start-trace.log"  # the build's SKIFF_START_TRACE (--trace)


def mark(step):
    with open(TRACE, "a") as f:
        f.write("%.6f %d %s\n" % (time.monotonic(), os.getpid(), step))


def one_start(d, app, gap):
    d.call("PATCH", "/v1/apps/" + app, {"instances": 0})
    bench.at_zero(d, app)
    time.sleep(gap)  # the previous instance's teardown and the refill out of the way
    mark("=== start")
    mark("client: PATCH sent")
    d.call("PATCH", "/v1/apps/" + app, {"instances": 1})
    mark("client: PATCH answered")
    addr, t = None, time.monotonic()
    while time.monotonic() - t < 60:
        if not addr:
            _, body = d.call("GET", "/v1/apps/" + app)
            insts = [i for i in json.loads(body)["instances_detail"] if i.get("address")]
            addr = insts[0]["address"].split(":") if insts else None
            mark("client: GET answered" + (" (address)" if addr else ""))
        elif bench.first_byte(addr[0], int(addr[1])):
            mark("client: first byte")
            return
        else:
            time.sleep(0.0002)
    raise SystemExit("the instance never answered")


def one_request(d, app, gap):
    """One GET through the router to app at zero, to its first byte."""
    bench.at_zero(d, app)
    time.sleep(gap)
    mark("=== start")
    mark("client: GET sent to the router")
    with socket.create_connection(("127.0.0.1", d.router_port), timeout=60) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: %s.localhost\r\nConnection: close\r\n\r\n"
                  % app.encode())
        first = s.recv(1)
    mark("client: first byte")
    if not first:
        raise SystemExit("the router closed the connection without an answer")


def report_steps(runs, title):
    """p50, p99, the maximum and the minimum of each step over the runs: the time since the
    first step and since the step before"""
    since, step_gap, order = {}, {}, []
    for events in runs:
        if not events:
            continue
        t0, prev, seen = events[0][0], events[0][0], set()
        for t, step in events:
            if step in seen:
                continue  # a step's first time only (probes repeat)
            seen.add(step)
            if step not in since:
                order.append(step)
            since.setdefault(step, []).append((t - t0) * 1000)
            step_gap.setdefault(step, []).append((t - prev) * 1000)
            prev = t
    print("%-52s %33s %33s" % (title, "since first p50/p99/max/min", "since last p50/p99/max/min"))
    for step in sorted(order, key=lambda s: bench.pct(since[s], 50)):
        row = []
        for v in (since[step], step_gap[step]):
            row += [bench.pct(v, 50), bench.pct(v, 99), max(v), min(v)]
        print("%-52s %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f %8.2f" % tuple([step] + row))


def report_slowest(runs, count):
    """The slowest starts (to the client's first byte), each with its steps' own times: where
    the p99's milliseconds go"""
    done = []
    for r in runs:
        end = next((k for k, e in enumerate(r) if e[1] == "client: first byte"), None)
        if end is not None:
            done.append((r[end][0] - r[0][0], r[:end + 1]))
    done.sort(key=lambda x: -x[0])
    for total, r in done[:count]:
        print("a slow start: %.2f ms to the first byte" % (total * 1000))
        prev = r[0][0]
        for t, step in r:
            if (t - prev) * 1000 >= 0.5:
                print("    %8.2f ms  %s" % ((t - prev) * 1000, step))
            prev = t


def report(runs, slowest):
    """The start's steps since the client's PATCH; then the making of the warm container that
    replaced the one taken (steps named "make: ..."), since the executor wanted it: one is
    made per run, as one is taken."""
    report_steps([[e for e in r if not e[1].startswith("make: ")] for r in runs],
                 "step (first time in each run)")
    print()
    report_slowest(runs, slowest)
    made = []
    for r in runs:
        make = [e for e in r if e[1].startswith("make: ")]
        first = next((k for k, e in enumerate(make) if e[1].endswith("warm container wanted")),
                     None)
        if first is not None:
            made.append(make[first:])
    print()
    report_steps(made, "a warm container made, %d times" % len(made))


def main():
    global TRACE
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", help="a build made with -DSKIFF_START_TRACE")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--gap", type=float, default=0.3,
                    help="seconds between the instance's end and the next start (bench.py: 0)")
    ap.add_argument("--via", choices=("api", "router"), default="api",
                    help="api: PATCH instances 0 -> 1 (bench.py); router: a GET through the "
                    "router to the app at zero (the activator)")
    ap.add_argument("--trace", help="the file the build writes to (its SKIFF_START_TRACE; "
                    "default " + TRACE + ")")
    ap.add_argument("--slowest", type=int, default=3,
                    help="how many of the slowest starts to show step by step (steps of 0.5 ms "
                    "or more, every process's, the warm container made meanwhile included)")
    ap.add_argument("--report-only", action="store_true",
                    help="no starts: the report of what the trace file holds (a run before)")
    args = ap.parse_args()
    if args.trace:
        TRACE = args.trace
    if not args.report_only:
        if not args.bin:
            ap.error("--bin is needed to run starts")
        run_starts(args)
    runs, cur = [], None
    with open(TRACE) as f:
        for line in f:
            t, _pid, step = line.rstrip("\n").split(" ", 2)
            if step == "=== start":
                cur = []
                runs.append(cur)
            elif cur is not None:
                cur.append((float(t), step))
    runs = [r for r in runs if any(s == "client: first byte" for _, s in r)]
    print("bench/coldstart/trace.py: %d starts, load %.1f" % (len(runs), os.getloadavg()[0]))
    report(runs, args.slowest)


def run_starts(args):
    work = tempfile.mkdtemp(prefix="skiff-bench-trace-")
    os.chmod(work, 0o755)
    listen = os.path.join(work, "hello")
    subprocess.run(["cc", "-O2", "-static", "-o", listen,
                    os.path.join(os.path.dirname(HERE), "container", "listen.c")], check=True)
    with open(TRACE, "w"):
        pass
    os.chmod(TRACE, 0o666)  # the container's init and program write as unprivileged uids
    d = skiffd.start(args.bin, "skiff-bench-trace-", {"SKIFF_PREWARM": "2"})
    try:
        with open(listen, "rb") as f:
            bench.push(d, work, "traced", {"hello": (f.read(), 0o755),
                                           "Procfile": ("web: ./hello\n", 0o644)})
        if args.via == "router":
            r = d.cli("autoscale", "traced", "--min", "0", "--max", "1",
                      "--target-concurrency", "1", "--window", "2s")
            if r.returncode != 0:
                raise SystemExit("skiff autoscale failed:\n%s%s" % (r.stdout, r.stderr))
            d.call("POST", "/v1/routes", {"app": "traced", "host": "traced.localhost"})
        for _ in range(args.runs):
            if args.via == "router":
                one_request(d, "traced", args.gap)
            else:
                one_start(d, "traced", args.gap)
    finally:
        d.stop()


if __name__ == "__main__":
    main()
