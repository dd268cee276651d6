"""bench/scaleout's rows on cells (bench.py runs them): a controller on host K (PostgreSQL, JetStream
R3), three cells X, Y, Z (`skiffd --role cell --host-addr`, containers, a pool each) and a router
on host R (`skiffd --role router`), all from tests/e2e/multihost.py.

- scale: SCALE instances (default 300) of a static binary (instance.c) placed and running
  across the three cells: seconds from the scale request (PATCH instances) to all RUNNING, and to
  every index answering through R's router; the spread per cell. The peer in the same run: the
  same app scaled the same way on one `skiffd` (`--role all`, the single-host default) on host S,
  through its own router.
- loss: an app of 3 x LOSS_N instances (LOSS_N on each cell), then cell X lost, twice: its link
  down, then (with a fresh app, X back) kill -9 of its agent, shims and instances. Seconds from
  the loss to the leader listing X lost, to every instance RUNNING on the other cells, and to
  every index X had answering through R's router again; the requests sent through R meanwhile
  (REQUESTERS threads) and how many failed; the ratio to the 30 s target.
"""
import http.client
import os
import subprocess
import threading
import time

from conftest import deploy_bits, wait_for
from multihost import (HostCell, HostPlatform, HostRouter, cells_listed, cells_up,
                       running, start_controller)

HERE = os.path.dirname(os.path.abspath(__file__))
SCALE = int(os.environ.get("SCALE", "300"))
LOSS_N = int(os.environ.get("LOSS_N", "20"))
MEMORY_MB = int(os.environ.get("MEMORY_MB", "16"))
DISK_MB = int(os.environ.get("DISK_MB", "64"))
PREWARM = os.environ.get("PREWARM", "1")  # warm containers of each cell and of the peer
REQUESTERS = int(os.environ.get("REQUESTERS", "8"))
CELL_MEMORY = os.environ.get("CELL_MEMORY", "6G")
# which of the scale row's two runs goes first: "cells,one" or "one,cells"
SCALE_ORDER = os.environ.get("SCALE_ORDER", "cells,one").split(",")
TARGET_S = 30.0
# the product's defaults, not the tests' quicker ones (HOSTS_MS, a cell's beat every 300 ms): on
# 2 shared cores starting hundreds of containers, the tests' 3 s TTL forgot hosts that were up
HOSTS_DEFAULTS = {"SKIFF_HOSTS_ANNOUNCE_MS": "2000", "SKIFF_HOSTS_TTL_MS": "10000"}
CELL_DEFAULTS = dict(HOSTS_DEFAULTS, SKIFF_CELL_HEARTBEAT_MS="1000")
# each host its own pool; a /18 is 4096 slots of a /30
POOLS = {"k": "10.244.0.0/18", "x": "10.244.64.0/18", "y": "10.244.128.0/18",
         "z": "10.244.192.0/18"}
HOSTS = ("k", "x", "y", "z", "r", "s")


def build_instance(tmp):
    """instance.c as a static binary, with the Procfile the binary buildpack runs."""
    exe = os.path.join(tmp, "instance")
    subprocess.run(["cc", "-O2", "-static", "-o", exe, os.path.join(HERE, "instance.c")],
                   check=True)
    with open(exe, "rb") as f:
        return [("Procfile", b"web: ./instance\n"), ("instance", f.read())]


def deploy(p, name, files, instances):
    deploy_bits(p, name, files, {"instances": instances, "memory_mb": MEMORY_MB,
                                 "disk_mb": DISK_MB})
    status, body = p.api("POST", "/v1/routes", {"app": name, "host": name + ".localhost"})
    assert status in (200, 201), body


def scale(p, name, instances):
    status, body = p.api("PATCH", "/v1/apps/%s" % name, {"instances": instances})
    assert status == 200, body


def get_index(router_addr, host, timeout=15):
    """GET / through the router: the index that answered, or None (any failure)."""
    got = get_answer(router_addr, host, timeout)
    return got if isinstance(got, int) else None


def get_answer(router_addr, host, timeout=15):
    """GET / through the router: the index that answered, or why not (a string: the status and
    the router's X-Skiff-Router-Error, or the client's error)."""
    c = http.client.HTTPConnection(router_addr, timeout=timeout)
    try:
        c.request("GET", "/", headers={"Host": host})
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        if r.status == 200 and body.startswith("instance "):
            return int(body.split()[1])
        return "%d %s" % (r.status, r.getheader("X-Skiff-Router-Error", body[:40].strip()))
    except (OSError, ValueError, http.client.HTTPException) as e:
        return type(e).__name__
    finally:
        c.close()


class Requests:
    """REQUESTERS threads sending GETs through a router for one host, each recorded as
    (start, end, index or None), monotonic seconds."""

    def __init__(self, router_addr, host, threads=REQUESTERS):
        self.router_addr, self.host = router_addr, host
        self.log, self.lock, self.stop_event = [], threading.Lock(), threading.Event()
        self.why = {}
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self):
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            got = get_answer(self.router_addr, self.host)
            index = got if isinstance(got, int) else None
            with self.lock:
                self.log.append((t0, time.monotonic(), index))
                if index is None:
                    self.why[got] = self.why.get(got, 0) + 1
            if index is None:
                time.sleep(0.02)  # a refusal comes back at once: do not spin on it

    def reasons(self):
        """The failures by reason, as text."""
        return ", ".join("%d %s" % (n, why) for why, n in sorted(self.why.items())) or "none"

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_event.set()
        for t in self.threads:
            t.join()
        return self.log

    def seen_since(self, t):
        """The indexes answered by requests started at t or later, each with its first end."""
        first = {}
        with self.lock:
            for start, end, index in self.log:
                if start >= t and index is not None and index not in first:
                    first[index] = end
        return first


def wait_scaled(p, name, n, router_addr, timeout):
    """After a scale request at t0 (now): seconds to all n RUNNING, to every index answering
    through the router, and per cell (its id, or "-" on a `--role all` skiffd) the count and
    the seconds to its last instance RUNNING."""
    t0 = time.monotonic()
    req = Requests(router_addr, name + ".localhost", threads=2).start()
    per_cell, run_at, serve_at, api_max = {}, None, None, 0.0
    try:
        deadline = t0 + timeout
        while run_at is None or serve_at is None:
            now = time.monotonic()
            assert now < deadline, "%s: %d of %d running, %d indexes served after %d s" % (
                name, len(running(p, name)), n, len(req.seen_since(t0)), timeout)
            if run_at is None:
                t_api = time.monotonic()
                up = running(p, name)
                api_max = max(api_max, time.monotonic() - t_api)
                counts = {}
                for i in up:
                    counts[i.get("cell") or "-"] = counts.get(i.get("cell") or "-", 0) + 1
                for cell, k in counts.items():
                    if per_cell.get(cell, (0, 0))[0] != k:
                        per_cell[cell] = (k, now - t0)
                if len(up) >= n:
                    run_at = now - t0
            if serve_at is None and len(req.seen_since(t0)) >= n:
                serve_at = max(req.seen_since(t0).values()) - t0
            time.sleep(0.25)
    finally:
        log = req.stop()
    failed = sum(1 for x in log if x[2] is None)
    return (run_at, serve_at, per_cell, len(log), "%d (%s)" % (failed, req.reasons()),
            api_max)


class CellsWorld:
    """The controller, the cells and the router on a cluster with hosts HOSTS."""

    def __init__(self, cluster):
        self.c = cluster
        self.started = []
        try:
            self._start(cluster)
        except BaseException:
            self.close()
            raise

    def _start(self, cluster):
        self.ctl = start_controller(cluster, cluster.host("k"), POOLS["k"], "bench_cells",
                                    extra_env=HOSTS_DEFAULTS)
        self.started.append(self.ctl)
        self.cells = {}
        for name in ("x", "y", "z"):
            cell = HostCell(cluster.host(name), cluster.nats_urls, POOLS[name],
                            memory=CELL_MEMORY, prewarm=PREWARM, extra_env=CELL_DEFAULTS)
            self.started.append(cell)
            self.cells[name] = cell.join(self.ctl).start()
        self.router = HostRouter(cluster.host("r"), cluster.nats_urls, extra_env=HOSTS_DEFAULTS)
        self.started.append(self.router)
        self.router.start()
        ids = {x.id for x in self.cells.values()}
        wait_for(lambda: cells_up(self.ctl) == ids, 60, "the three cells to be listed up")
        r = cluster.host("r")
        wait_for(lambda: all("%s via %s" % (POOLS[n], cluster.host(n).addr) in
                             r.routes(proto=83) for n in self.cells), 30,
                 "R's routes to the cells' pools")

    def names(self):
        return {x.id: n for n, x in self.cells.items()}

    def close(self):
        for s in reversed(self.started):
            try:
                s.close()
            except Exception as ex:  # close the others still
                print("closing:", ex)


def memory_used_mb(p):
    """The instances' memory as the cells (or one skiffd) last reported it, their cgroups'
    count, summed, in MB."""
    status, body = p.api("GET", "/v1/cells")
    assert status == 200, body
    return sum(x.get("memory_used_bytes", 0) for x in body.get("cells", [])) // (1 << 20)


def scale_on(p, router_addr, files, label):
    """One instance of "many" on p, then the scale to SCALE timed (wait_scaled), then back to 0."""
    deploy(p, "many", files, 1)
    wait_for(lambda: get_index(router_addr, "many.localhost") == 0, 120,
             "many's first instance (%s)" % label)
    print("load average before the scale on %s: %.2f %.2f %.2f" % ((label,) + os.getloadavg()))
    scale(p, "many", SCALE)
    figures = wait_scaled(p, "many", SCALE, router_addr, 600)
    time.sleep(6)  # a heartbeat of each after the last start (a skiffd's every 5 s)
    figures += (memory_used_mb(p),)
    scale(p, "many", 0)
    wait_for(lambda: not running(p, "many"), 300, "many back to 0 (%s)" % label, interval=0.5)
    return figures


def scale_row(cluster, world, files):
    """SCALE instances on the three cells and on one `--role all` skiffd, in SCALE_ORDER."""
    assert sorted(SCALE_ORDER) == ["cells", "one"], \
        "SCALE_ORDER is cells,one or one,cells, not %s" % ",".join(SCALE_ORDER)
    got = {}
    for which in SCALE_ORDER:
        if which == "cells":
            got[which] = scale_on(world.ctl, world.router.router_url[7:], files, "the cells")
            continue
        peer = HostPlatform(cluster.host("s"), extra_args=["--prewarm", PREWARM],
                            containers=True)
        try:
            peer.start()
            got[which] = scale_on(peer, peer.router_url[7:], files, "one skiffd")
        finally:
            peer.close()
    run_c, serve_c, per_cell, sent_c, failed_c, api_c, mem_c = got["cells"]
    run_p, serve_p, _, sent_p, failed_p, api_p, mem_p = got["one"]
    names = world.names()
    print("%d instances (%d MB each), from the scale request (run %s):" % (
        SCALE, MEMORY_MB, " then ".join(SCALE_ORDER)))
    print("  3 cells: all RUNNING %.1f s; every index answering through R's router %.1f s "
          "(%d requests meanwhile, failed: %s); the slowest GET of the app %.2f s; the"
          " instances' memory %d MB" % (run_c, serve_c, sent_c, failed_c, api_c, mem_c))
    for cell, (k, at) in sorted(per_cell.items(), key=lambda kv: names.get(kv[0], kv[0])):
        print("    cell %s: %d instances, its last RUNNING at %.1f s" % (
            names.get(cell, cell[:8]), k, at))
    print("  one skiffd (--role all): all RUNNING %.1f s; every index answering through its"
          " router %.1f s (%d requests, failed: %s); the slowest GET of the app %.2f s; %d MB" % (
              run_p, serve_p, sent_p, failed_p, api_p, mem_p))
    print("  ratio 3 cells / one skiffd: RUNNING %.2fx, serving %.2fx" % (
        run_c / run_p, serve_c / serve_p))


def lose_cell(world, name, how, files):
    """An app of 3 x LOSS_N instances; cell X lost (how: "link" or "kill"); the figures."""
    ctl, addr, cell = world.ctl, world.router.router_url[7:], world.cells["x"]
    host = name + ".localhost"
    deploy(ctl, name, files, 3 * LOSS_N)
    wait_for(lambda: len(running(ctl, name)) == 3 * LOSS_N, 300,
             "%s's %d instances running" % (name, 3 * LOSS_N), interval=0.5)
    on_x = {i["index"] for i in running(ctl, name) if i["cell"] == cell.id}
    assert len(on_x) == LOSS_N, "%d of %s's instances on X, not %d" % (len(on_x), name, LOSS_N)
    warm = Requests(addr, host, threads=2).start()
    try:
        t = time.monotonic()
        wait_for(lambda: len(warm.seen_since(t)) == 3 * LOSS_N, 60, "every index via R")
    finally:
        warm.stop()
    req = Requests(addr, host).start()
    addresses = [i["address"] for i in running(ctl, name) if i["cell"] == cell.id]
    time.sleep(1)  # requests before the loss, for comparison
    t0 = time.monotonic()  # every figure counts from the start of the loss
    if how == "link":
        cell.host.link_down()
    else:
        cell.kill9()
    # a request started before the loss was complete may still have reached X
    done = time.monotonic()
    if how == "kill":
        alive = answering(cell.host, addresses)
        assert not alive, "X's instances at %s still answer after kill -9" % alive
    lost_at = running_at = serving_at = None
    try:
        deadline = t0 + 120
        while lost_at is None or running_at is None or serving_at is None:
            now = time.monotonic()
            assert now < deadline, "X %s: lost %s, running %s, serving %s after 120 s" % (
                how, lost_at, running_at, serving_at)
            if lost_at is None and any(x["id"] == cell.id and x["state"] == "lost"
                                       for x in cells_listed(ctl)):
                lost_at = now - t0
            if running_at is None:
                up = running(ctl, name)
                if len(up) == 3 * LOSS_N and all(i["cell"] != cell.id for i in up):
                    running_at = now - t0
            seen = req.seen_since(done)
            if serving_at is None and on_x <= set(seen):
                serving_at = max(seen[i] for i in on_x) - t0
            time.sleep(0.1)
        time.sleep(3)  # and a while after, to see whether any request still fails
    finally:
        log = req.stop()
    # a request in flight at the loss counts with those after it
    before = [x for x in log if x[1] < t0]
    after = [x for x in log if x[1] >= t0]
    failed = [x for x in after if x[2] is None]
    last_failed = max((x[1] for x in failed), default=t0) - t0
    slowest = max((x[1] - x[0] for x in after), default=0)
    # what waited: a connect to a lost instance, or an answer on a connection to one
    slow = [x for x in after if x[1] - x[0] > 1.0]
    slow_sent_after = [x for x in slow if x[0] >= t0]
    what = "its link down" if how == "link" else "kill -9 of its agent, shims and instances"
    print("cell X lost (%s, which took %.2f s), %d of %d instances on it:" % (
        what, done - t0, LOSS_N, 3 * LOSS_N))
    print("  the leader lists X lost after %.1f s; all %d RUNNING on Y and Z after %.1f s;"
          " every one of X's indexes answering through R again after %.1f s" % (
              lost_at, 3 * LOSS_N, running_at, serving_at))
    print("  requests through R: %d in the second before (%d failed); %d from the loss (in flight"
          " then or sent after) to 3 s after the last index came back, %d failed (all: %s),"
          " the last failure ending at %.1f s,"
          " the slowest %.1f s" % (len(before), sum(1 for x in before if x[2] is None),
                                   len(after), len(failed), req.reasons(), last_failed, slowest))
    print("  %d of them took over 1 s, %d of those sent after the loss began (the slowest of"
          " those %.1f s)" % (len(slow), len(slow_sent_after),
                              max((x[1] - x[0] for x in slow_sent_after), default=0)))
    print("  ratio to the 30 s target: %.2fx (%s)" % (
        serving_at / TARGET_S, "met" if serving_at <= TARGET_S else "MISSED"))
    return serving_at


def answering(host, addresses):
    """Those of addresses (IP:PORT) that accept a TCP connection from host's namespace."""
    probe = ("import socket, sys\nfor a in sys.argv[1:]:\n"
             "    try:\n        socket.create_connection((a.rsplit(':', 1)[0],"
             " int(a.rsplit(':', 1)[1])), 1).close(); print(a)\n"
             "    except OSError:\n        pass\n")
    r = subprocess.run(host.enter("/usr/bin/python3", "-c", probe, *addresses),
                       capture_output=True, text=True, timeout=60)
    return r.stdout.split()


def loss_row(world, files):
    x = world.cells["x"]
    try:
        lose_cell(world, "lossa", "link", files)
    finally:
        x.host.link_up()
    wait_for(lambda: x.id in cells_up(world.ctl), 60, "X to be listed up again")
    # X stops the duplicates it kept; the next app must find it with room
    wait_for(lambda: len(running(world.ctl, "lossa")) == 3 * LOSS_N, 60, "lossa settled")
    scale(world.ctl, "lossa", 0)
    wait_for(lambda: not running(world.ctl, "lossa"), 120, "lossa back to 0", interval=0.5)
    lose_cell(world, "lossb", "kill", files)
