#!/usr/bin/python3
"""What an instance that prints without pause costs skiffd, with a log rate limit and without,
in one run.

Starts the release skiffd (bench/skiffd.py) and pushes a Python app that writes 100-byte lines
as fast as it can; then, for SECONDS, samples skiffd's CPU (from /proc) and times GET /v1/info
every 0.25 s (is the daemon still responsive?). Once with `log-rate-limit-per-second` 16K, once
unlimited, ROUNDS times, alternating, one flooding app at a time. Prints, for each: skiffd's
CPU as a share of one core and /v1/info's median and maximum.

Usage: bench/logs/bench_log_rate.py [--seconds 5] [--rounds 2] [--bin build/rel]"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import skiffd  # noqa: E402

APP = """\
import sys
chunk = ("x" * 99 + "\\n") * 100
while True:
    sys.stdout.write(chunk)
"""


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--bin", default=os.path.join(skiffd.ROOT, "build", "rel"))
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="skiff-bench-logs-")
    with open(os.path.join(work, "app.py"), "w") as f:
        f.write(APP)
    with open(os.path.join(work, "Procfile"), "w") as f:
        f.write("web: python3 app.py\n")
    d = skiffd.start(args.bin, "skiff-bench-logs-home-")
    pid = d.proc.pid
    try:
        for rnd in range(args.rounds):
            for limit in ("16K", "-1"):
                name = f"flood{rnd}{'l' if limit != '-1' else 'u'}"
                # it listens on no port: a process health check
                for step in (("push", name, "-p", work, "--no-route", "--no-start"),
                             ("set-health-check", name, "process"),
                             ("scale", name, "-l", limit), ("start", name)):
                    r = d.cli(*step)
                    if r.returncode:
                        raise SystemExit(f"{step[0]} failed:\n{r.stdout}\n{r.stderr}")
                time.sleep(1)  # the flood under way
                c0, t0 = cpu_seconds(pid), time.monotonic()
                lat = []
                while time.monotonic() - t0 < args.seconds:
                    s = time.perf_counter()
                    d.call("GET", "/v1/info")
                    lat.append(time.perf_counter() - s)
                    time.sleep(0.25)
                c1, t1 = cpu_seconds(pid), time.monotonic()
                d.cli("stop", name)
                print(f"limit {limit:>3}: skiffd {100 * (c1 - c0) / (t1 - t0):.0f}% of a core; "
                      f"/v1/info median {1000 * statistics.median(lat):.1f} ms, "
                      f"max {1000 * max(lat):.1f} ms", flush=True)
    finally:
        d.stop()


if __name__ == "__main__":
    main()
