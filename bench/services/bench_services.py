#!/usr/bin/python3
"""What services cost, in one run against the release skiffd and the tests' OSB broker
(tests/e2e/osb_broker.py, Python, in a process of its own on loopback; its `small` plan
answers at once):

  - create + bind to ready: POST /v1/service_instances (the broker provisions synchronously)
    then POST /v1/apps/APP/service_bindings, median and p90 over --rounds; the peer is the
    same two requests made straight to the broker (what the broker itself costs);
  - --concurrent instances created at once, each on its own connection: wall time and rate
    (every broker call runs on libuv's thread pool, so the API keeps answering meanwhile:
    GET /v1/info's latency during the burst is printed beside);
  - VCAP_SERVICES generation, which every instance start does: GET /v1/apps/APP/env of an app
    with --bindings bindings (it runs services_vcap_json, as the scheduler does) minus the
    same for an app with none, median.

Usage: bench/services/bench_services.py [--rounds 50] [--concurrent 100] [--bindings 10]
       [--bin build/rel]"""
import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import skiffd  # noqa: E402
from skiffd import ROOT  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from osb_broker import SERVICE_ID  # noqa: E402


def ms(samples):
    s = sorted(samples)
    return f"median {statistics.median(s) * 1000:.2f} ms, p90 {s[int(len(s) * 0.9)] * 1000:.2f} ms"


def api(port, token, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def broker_direct(broker):
    """The peer: provision and bind straight at the broker, as skiffd does (a connection per
    request, TCP_NODELAY as libcurl sets it)."""
    import base64
    import socket
    auth = base64.b64encode(f"{broker.user}:{broker.password}".encode()).decode()
    headers = {"Authorization": "Basic " + auth, "X-Broker-API-Version": "2.17",
               "Content-Type": "application/json"}
    port = int(broker.url.rsplit(":", 1)[1])
    iid, bid = str(uuid.uuid4()), str(uuid.uuid4())
    t = time.perf_counter()
    for path in (f"/v2/service_instances/{iid}?accepts_incomplete=true",
                 f"/v2/service_instances/{iid}/service_bindings/{bid}"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.request("PUT", path, headers=headers,
                     body=json.dumps({"service_id": SERVICE_ID, "plan_id": "plan-small"}))
        conn.getresponse().read()
        conn.close()
    return time.perf_counter() - t


class BrokerProcess:
    """The test broker in a process of its own, so the load generator's threads do not share
    its interpreter."""

    def __init__(self):
        import subprocess
        code = ("import sys, time; sys.path.insert(0, %r); from osb_broker import OsbBroker; "
                "b = OsbBroker().start(); print(b.url, b.user, b.password, flush=True); "
                "time.sleep(10**6)") % os.path.join(ROOT, "tests", "e2e")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                     text=True)
        self.url, self.user, self.password = self.proc.stdout.readline().split()

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--bindings", type=int, default=10)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    args = ap.parse_args()
    broker = BrokerProcess()
    d = skiffd.start(args.bin, "skiff-bench-services-")
    try:
        port, token = d.api_port, d.token
        st, out = d.call("POST", "/v1/service_brokers", {"name": "bench", "url": broker.url,
                                                         "username": broker.user,
                                                         "password": broker.password})
        assert st == 201, out
        assert d.call("PUT", "/v1/apps/app0", {"no_route": True})[0] in (200, 201)

        # create + bind to ready
        skiff_t, peer_t = [], []
        for i in range(args.rounds):
            t = time.perf_counter()
            st, out = d.call("POST", "/v1/service_instances",
                             {"name": f"db{i}", "service": "testdb", "plan": "small"})
            assert st == 201, out
            st, out = d.call("POST", "/v1/apps/app0/service_bindings", {"service_instance": f"db{i}"})
            assert st == 201, out
            skiff_t.append(time.perf_counter() - t)
            peer_t.append(broker_direct(broker))
        print(f"create + bind to ready ({args.rounds} rounds): skiff {ms(skiff_t)}; "
              f"the broker alone {ms(peer_t)}")

        # concurrent creates, with the API's latency meanwhile
        errors, info_t = [], []
        stop = threading.Event()

        def create(i):
            st, out = api(port, token, "POST", "/v1/service_instances",
                          {"name": f"burst{i}", "service": "testdb", "plan": "small"})
            if st != 201:
                errors.append((st, out[:200]))

        def probe():
            while not stop.is_set():
                t = time.perf_counter()
                api(port, token, "GET", "/v1/info")
                info_t.append(time.perf_counter() - t)

        prober = threading.Thread(target=probe)
        prober.start()
        threads = [threading.Thread(target=create, args=(i,)) for i in range(args.concurrent)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        stop.set()
        prober.join()
        print(f"{args.concurrent} instances created concurrently: {wall:.2f} s "
              f"({args.concurrent / wall:.0f}/s), {len(errors)} failed; GET /v1/info meanwhile "
              f"{ms(info_t)}")
        assert not errors, errors[:3]

        # VCAP_SERVICES generation
        assert d.call("PUT", "/v1/apps/bound", {"no_route": True})[0] in (200, 201)
        assert d.call("PUT", "/v1/apps/unbound", {"no_route": True})[0] in (200, 201)
        for i in range(args.bindings):
            st, out = d.call("POST", "/v1/apps/bound/service_bindings",
                             {"service_instance": f"burst{i}"})
            assert st == 201, out
        st, env = d.call("GET", "/v1/apps/bound/env")
        assert len(json.loads(env)["system"]["VCAP_SERVICES"]["testdb"]) == args.bindings

        def env_times(app, n=300):
            out = []
            for _ in range(n):
                t = time.perf_counter()
                d.call("GET", f"/v1/apps/{app}/env")
                out.append(time.perf_counter() - t)
            return statistics.median(out)

        with_b, without = env_times("bound"), env_times("unbound")
        print(f"VCAP_SERVICES of {args.bindings} bindings ({len(env)} bytes of env): "
              f"{(with_b - without) * 1000:.2f} ms per instance start "
              f"(GET env {with_b * 1000:.2f} ms vs {without * 1000:.2f} ms without bindings; "
              f"{len(json.loads(d.call('GET', '/v1/service_instances')[1])['service_instances'])}"
              f" instances in the store)")
    finally:
        d.stop()
        broker.stop()


if __name__ == "__main__":
    main()
