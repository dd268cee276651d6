"""A function inside an app beside the same function pushed on its own, in one run.

    /usr/bin/python3 bench/appfuncs/bench.py [--runs 10] [--burst 40] [--bin build/rel]

The code is examples/shop's resize (shop/images.py, which imports shop/catalog.py). Peer: the
same folder pushed as a function of its own (`skiff push resize-alone -p examples/shop
--function shop/images.py:resize`). Subject: the function resize inside the app shop, pulled
out by examples/shop/manifest.yml. For each, with skiffd's idle grace at 1 s:

  - from zero: `POST /v1/apps/APP/invoke` to its answer, p50/p99 over --runs, at zero before
    each (an instance started from the app's droplet against one started from its own);
  - a burst: --burst events of 1 s of work each (one batch), the time until all are delivered
    and the most instances running meanwhile (max-instances 20 for both), while the shop's
    web route is asked once every 100 ms (its answers that were not 200 are counted).

Prints each figure and the ratio subject / peer."""
import argparse
import http.client
import json
import os
import sys
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import skiffd  # noqa: E402

SHOP = os.path.join(ROOT, "examples", "shop")


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))]


def ok(r):
    if r.returncode != 0:
        raise SystemExit(f"skiff failed:\n{r.stdout}\n{r.stderr}")
    return r


def running(d, app, process):
    status, body = d.call("GET", f"/v1/apps/{app}")
    insts = json.loads(body)["instances_detail"]
    return sum(1 for i in insts if i["process_type"] == process and i["state"] == "RUNNING")


def delivered(d, app, process):
    status, body = d.call("GET", f"/v1/event-mappings?app={app}")
    return sum(m["delivered"] for m in json.loads(body)["event_mappings"]
               if m["process"] == process and m["topic"].endswith("uploads" + app))


def invoke_from_zero(d, app, process, runs):
    times = []
    query = "" if process == "web" else f"?process={process}"
    for _ in range(runs):
        skiffd.wait_for(lambda: running(d, app, process) == 0, 90, f"{app}/{process} at zero",
                        interval=0.1)
        t = time.monotonic()
        status, body = d.call("POST", f"/v1/apps/{app}/invoke{query}",
                              {"image": "x"}, timeout=90)
        if status != 200:
            raise SystemExit(f"invoke {app}: {status} {body[:300]!r}")
        times.append((time.monotonic() - t) * 1000)
    return times


class WebProbe(threading.Thread):
    """Asks the shop's route every 100 ms until stopped; counts the answers and the failures."""

    def __init__(self, d):
        super().__init__(daemon=True)
        self.d, self.stop, self.asked, self.failed = d, threading.Event(), 0, 0

    def run(self):
        while not self.stop.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.d.router_port, timeout=5)
                c.request("GET", "/", headers={"Host": "shop.localhost"})
                self.failed += c.getresponse().status != 200
                c.close()
            except (OSError, http.client.HTTPException):
                self.failed += 1
            self.asked += 1
            self.stop.wait(0.1)


def burst(d, app, process, topic, n):
    events = [{"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/bench",
               "type": "image.uploaded", "subject": f"img{i}.png", "data": {"work_ms": 1000}}
              for i in range(n)]
    before = delivered(d, app, process)
    peak = 0
    t = time.monotonic()
    status, body = d.call("POST", f"/v1/topics/{topic}/events:batch", events)
    if status != 202:
        raise SystemExit(f"batch: {status} {body[:300]!r}")
    while delivered(d, app, process) < before + n:
        peak = max(peak, running(d, app, process))
        if time.monotonic() - t > 300:
            raise SystemExit(f"{app}: not all {n} events delivered in 300 s")
        time.sleep(0.1)
    return (time.monotonic() - t) * 1000, peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--burst", type=int, default=40)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    a = ap.parse_args()
    if not os.path.isdir(os.path.join(SHOP, "vendor")):
        raise SystemExit("examples/shop/vendor/ is missing: run `make examples` first (it makes "
                         "the wheels of the shop's Flask)")
    d = skiffd.start(a.bin, "skiff-bench-appfuncs-", {"SKIFF_FUNCTION_IDLE_GRACE": "1s"})
    try:
        ok(d.cli("push", "-f", os.path.join(SHOP, "manifest.yml")))
        ok(d.cli("push", "resize-alone", "-p", SHOP, "--function", "shop/images.py:resize"))
        # a function's policy allows 10 unless raised; a mapping asking for more is refused
        ok(d.cli("autoscale", "shop", "--process", "resize", "--max", "20"))
        ok(d.cli("autoscale", "resize-alone", "--max", "20"))
        # each its own topic, so one's burst is not the other's
        ok(d.cli("map-event", "shop/resize", "uploadsshop", "--max-instances", "20",
                 "--idle-grace", "1s"))
        ok(d.cli("map-event", "resize-alone", "uploadsresize-alone", "--max-instances", "20",
                 "--idle-grace", "1s"))
        subject = invoke_from_zero(d, "shop", "resize", a.runs)
        peer = invoke_from_zero(d, "resize-alone", "web", a.runs)
        probe = WebProbe(d)
        probe.start()
        s_ms, s_peak = burst(d, "shop", "resize", "uploadsshop", a.burst)
        skiffd.wait_for(lambda: running(d, "shop", "resize") == 0, 120, "shop/resize at zero")
        p_ms, p_peak = burst(d, "resize-alone", "web", "uploadsresize-alone", a.burst)
        probe.stop.set()
        probe.join()
        print(f"from zero, invoke to answer (ms, {a.runs} runs):")
        print(f"  shop/resize (in the app):  p50 {pct(subject, 50):7.1f}  p99 {pct(subject, 99):7.1f}")
        print(f"  resize-alone (own app):    p50 {pct(peer, 50):7.1f}  p99 {pct(peer, 99):7.1f}")
        print(f"  ratio p50: {pct(subject, 50) / pct(peer, 50):.2f}")
        print(f"burst of {a.burst} events of 1 s each, until all delivered:")
        print(f"  shop/resize:   {s_ms:8.0f} ms, at most {s_peak} instances")
        print(f"  resize-alone:  {p_ms:8.0f} ms, at most {p_peak} instances")
        print(f"  ratio: {s_ms / p_ms:.2f}")
        print(f"shop's web route meanwhile: {probe.asked} requests, {probe.failed} not 200")
    finally:
        d.stop()


if __name__ == "__main__":
    main()
