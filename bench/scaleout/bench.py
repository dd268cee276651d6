"""Scale-out on the namespace cluster of tests/e2e/multihost.py (hosts as network namespaces,
a 3-node JetStream cluster, PostgreSQL), in one run (rows: routes, fabric, scale, loss):

1. route convergence across hosts: POST /v1/routes on host A's API until the router on host B
   serves the new host name (A runs skiffd on PostgreSQL + NATS, B runs skiffd --role router);
   the peer is the same map-route served by A's own router (on NATS too on PostgreSQL, as
   every router of a skiffd on a shared store; the local socket bus with STORE=sqlite);
2. publishes/s and deliveries/s of the event fabric on JetStream R3 (A) vs the embedded log (a
   skiffd on host C with no NATS): HTTP publishes from PUBLISHERS threads on keep-alive
   connections, then the time until a function mapped to the topic has replied to every event;
3. (scale) 300 instances placed and running across 3 cells, against one `--role all` skiffd;
4. (loss) a cell lost, by its link and by kill -9, to its instances serving elsewhere
   (3 and 4: cells.py, on a cluster of their own).

    make build && /usr/bin/python3 bench/scaleout/bench.py          # as root, all four rows
    ... bench.py --only scale,loss                                   # some rows (or --rows)
    ROUTES=20 EVENTS=2000 PUBLISHERS=8 SKIFF_BIN_DIR=/tmp/b/rel ...  # the defaults shown
    SCALE=300 LOSS_N=20 MEMORY_MB=16 SCALE_ORDER=cells,one ...      # cells.py's, the same
    STORE=sqlite ...   # host A on its embedded store instead of PostgreSQL (NATS all the same)
    GAP_MS=0 ...       # map the routes back to back (default: 10 ms after the last was served)
"""
import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
os.environ.setdefault("SKIFF_BIN_DIR", os.path.join(ROOT, "build", "rel"))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))

from conftest import wait_for  # noqa: E402
from multihost import HOSTS_MS, Cluster, HostPlatform, HostRouter  # noqa: E402

import cells  # noqa: E402

ROUTES = int(os.environ.get("ROUTES", "20"))
EVENTS = int(os.environ.get("EVENTS", "2000"))
PUBLISHERS = int(os.environ.get("PUBLISHERS", "8"))
STORE = os.environ.get("STORE", "postgres")
# Each map-route comes this long after the last one was served: a lone change, which the bus
# sends at once. At 0 (back to back) each change follows a table by less than the bus's 5 ms
# pace (BUS_COALESCE_MS) and waits out the rest of it.
GAP_MS = float(os.environ.get("GAP_MS", "10"))
# The app the routes lead to. Nagle's algorithm is off (TCP_NODELAY): Python's http.server
# writes a response's headers and its body apart, and on a kept connection (the router's
# pooled one) the body then waits for the router's delayed ACK, 40 ms on Linux. That is the
# app's time, not the route's: with it on, every "first 200" here took ~45 ms more.
APP = b"""import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def get(addr, host, path="/"):
    c = http.client.HTTPConnection(addr, timeout=5)
    try:
        return get_on(c, host, path)
    finally:
        c.close()


def get_on(conn, host, path="/"):
    """GET on a keep-alive connection (made again after an error); the status, 0 on error."""
    try:
        conn.request("GET", path, headers={"Host": host})
        r = conn.getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        conn.close()
        return 0


def push(p, name, tmp):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "app.py"), "wb") as f:
        f.write(APP)
    with open(os.path.join(d, "Procfile"), "w") as f:
        f.write("web: python3 app.py\n")
    r = p.cli("push", name, "-p", d, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def convergence(p, router_addr, prefix):
    """For ROUTES new routes: ms from POST /v1/routes to the first 200 from the router at
    router_addr (polled on a keep-alive connection), and ms of the API call alone."""
    ms, api_ms, known_ms = [], [], []
    conn = http.client.HTTPConnection(router_addr, timeout=5)
    for i in range(ROUTES):
        host = "%s%d.localhost" % (prefix, i)
        time.sleep(GAP_MS / 1000)
        t0 = time.monotonic()
        status, body = p.api("POST", "/v1/routes", {"app": "conv", "host": host})
        api_ms.append((time.monotonic() - t0) * 1000)
        assert status in (200, 201), body
        deadline = t0 + 30
        known = None
        while True:
            got = get_on(conn, host)
            if got not in (0, 404) and known is None:  # the router has the route
                known = time.monotonic()
            if got == 200:
                break
            assert time.monotonic() < deadline, "%s never served at %s" % (host, router_addr)
        ms.append((time.monotonic() - t0) * 1000)
        known_ms.append((known - t0) * 1000)
    conn.close()
    return ms, api_ms, known_ms


def served(router_addr, host):
    """ms of ROUTES requests for a host the router already serves, on a keep-alive connection:
    what a first 200 costs beyond the route reaching the router (the router and the app)."""
    ms = []
    conn = http.client.HTTPConnection(router_addr, timeout=5)
    for _ in range(ROUTES):
        t0 = time.monotonic()
        assert get_on(conn, host) == 200, "%s not served at %s" % (host, router_addr)
        ms.append((time.monotonic() - t0) * 1000)
    conn.close()
    return ms


def publish_all(p, topic):
    """EVENTS publishes from PUBLISHERS threads; returns seconds taken."""
    per = EVENTS // PUBLISHERS
    host = p.api_url[len("http://"):]
    token = p.token
    errors = []

    def run(k):
        c = http.client.HTTPConnection(host, timeout=30)
        for n in range(per):
            body = json.dumps({"n": k * per + n}).encode()
            c.request("POST", "/v1/topics/%s/events" % topic, body=body,
                      headers={"Authorization": "Bearer " + token,
                               "Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 202:
                errors.append(r.status)
        c.close()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(PUBLISHERS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    assert not errors, errors[:5]
    return took, per * PUBLISHERS


def replies(p, topic):
    status, text = p.api("GET", "/v1/topics/%s/events?from=start" % topic)
    if isinstance(text, dict):
        return 1
    return len([line for line in text.splitlines() if line.strip()])


def fabric(p, tmp, label):
    fn = os.path.join(tmp, "fn-%s.py" % label)
    with open(fn, "w") as f:
        f.write("def handle(event):\n    return {'n': event['data']['n']}\n")
    r = p.cli("push", "sink", "--function", "%s:handle" % fn, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    r = p.cli("map-event", "sink", "load", "--reply-topic", "done")
    assert r.returncode == 0, r.stdout + r.stderr
    t0 = time.monotonic()
    took, n = publish_all(p, "load")
    wait_for(lambda: replies(p, "done") >= n, 600, "%d replies (%s)" % (n, label), interval=0.2)
    delivered = time.monotonic() - t0
    return n / took, n / delivered


ROWS = ("routes", "fabric", "scale", "loss")


def parse_rows(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", "--rows", dest="rows", default=",".join(ROWS),
                    help="comma-separated rows to run, of: %s (default: all)" % ", ".join(ROWS))
    rows = [r for r in ap.parse_args(argv).rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error("no row %s: the rows are %s" % (", ".join(unknown), ", ".join(ROWS)))
    return rows


def routes_and_fabric(rows, tmp):
    c = Cluster(("a", "b", "c")).up()
    started = []
    try:
        A, B, C = c.host("a"), c.host("b"), c.host("c")
        store = ["--store", c.create_database("bench")] if STORE == "postgres" else []
        a = HostPlatform(A, extra_args=[*store, "--nats", c.nats_urls, "--nats-replicas", "3",
                                        "--host-addr", A.addr, "--prewarm", "0"],
                         extra_env=HOSTS_MS).start()
        print("host A's store: %s" % STORE)
        started.append(a)
        if "routes" in rows:
            b = HostRouter(B, c.nats_urls, extra_env=HOSTS_MS).start()
            started.append(b)
            route_convergence(a, b, tmp)
        if "fabric" in rows:
            e = HostPlatform(C, extra_args=["--prewarm", "0"]).start()  # embedded store and log
            started.append(e)
            fabric_rates(a, e, tmp)
    finally:
        for s in reversed(started):
            try:
                s.close()
            except Exception as ex:
                print("closing:", ex)
        c.down()


def route_convergence(a, b, tmp):
    push(a, "conv", tmp)
    wait_for(lambda: get(b.router_url[7:], "conv.localhost") == 200, 60, "conv through B")
    remote, api_r, known_r = convergence(a, b.router_url[7:], "r")
    local, api_l, known_l = convergence(a, a.router_url[7:], "l")
    api = api_r + api_l
    req_b = served(b.router_url[7:], "conv.localhost")
    req_a = served(a.router_url[7:], "conv.localhost")
    print("route convergence, map-route on A to a 200 (%d routes, each %g ms after the last"
          " was served):" % (ROUTES, GAP_MS))
    print("  the API call alone:         p50 %6.1f ms  p99 %6.1f ms" %
          (statistics.median(api), pct(api, 99)))
    print("  a request on a route served already (router and app), B: p50 %.1f ms  p99 %.1f"
          " ms; A: %.1f / %.1f ms" % (statistics.median(req_b), pct(req_b, 99),
                                       statistics.median(req_a), pct(req_a, 99)))
    print("  to B's first answer that is not 404 unknown-route: p50 %.1f ms  p99 %.1f ms;"
          " A's: %.1f / %.1f ms" % (statistics.median(known_r), pct(known_r, 99),
                                    statistics.median(known_l), pct(known_l, 99)))
    print("  router on B (NATS):        p50 %6.1f ms  p99 %6.1f ms" %
          (statistics.median(remote), pct(remote, 99)))
    # on PostgreSQL A's own router learns the routes on NATS too (docs/bus.md "On NATS")
    print("  router on A (%s): p50 %6.1f ms  p99 %6.1f ms" %
          ("its own, on NATS" if STORE == "postgres" else "its own, local socket",
           statistics.median(local), pct(local, 99)))
    print("  ratio B/A: p50 %.2fx  p99 %.2fx; target p99 <= 100 ms: %s" %
          (statistics.median(remote) / statistics.median(local),
           pct(remote, 99) / pct(local, 99), "met" if pct(remote, 99) <= 100 else "MISSED"))


def fabric_rates(a, e, tmp):
    js_pub, js_del = fabric(a, tmp, "jetstream")
    em_pub, em_del = fabric(e, tmp, "embedded")
    print("event fabric, %d events from %d publishers (HTTP keep-alive), one function:" %
          (EVENTS, PUBLISHERS))
    print("  JetStream R3:  %8.0f publishes/s  %8.0f deliveries/s" % (js_pub, js_del))
    print("  embedded log:  %8.0f publishes/s  %8.0f deliveries/s" % (em_pub, em_del))
    print("  ratio JetStream/embedded: publishes %.2fx  deliveries %.2fx" %
          (js_pub / em_pub, js_del / em_del))


def cell_rows(rows, tmp):
    c = Cluster(cells.HOSTS).up()
    world = None
    try:
        files = cells.build_instance(tmp)
        world = cells.CellsWorld(c)
        if "scale" in rows:
            cells.scale_row(c, world, files)
        if "loss" in rows:
            cells.loss_row(world, files)
    finally:
        if world:
            world.close()
        c.down()


def main():
    rows = parse_rows(sys.argv[1:])
    if os.getuid() != 0:
        sys.exit("bench/scaleout needs root (network namespaces)")
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    tmp = tempfile.mkdtemp(prefix="skiff-scaleout-")
    if "routes" in rows or "fabric" in rows:
        routes_and_fabric(rows, tmp)
    if "scale" in rows or "loss" in rows:
        cell_rows(rows, tmp)
    print("load average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
