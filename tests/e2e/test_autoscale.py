"""Request-driven autoscaling: the routers report the requests in flight, the autoscaler scales a
process between its policy's min and max (`skiff autoscale`), to zero and back, and the
router's activator holds requests for a process at zero (bounded queue, timeout answered with
503 `X-Skiff-Router-Error: scale-from-zero-timeout`).

The stable window is set per policy (--window 6s: panic window 1 s) so each test finishes in
seconds; every wait is for a condition, with a deadline."""
import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import Platform, WEB_APP, deploy_bits, out, wait_for

APP = WEB_APP  # tests/e2e/apps/web.py


def deploy(p, name, instances=1):
    """The app up with its route, its instances running: a request sent before the first one
    is ready would be refused (503 no-instance: a process not at zero is not held for)."""
    deploy_bits(p, name, [("Procfile", b"web: python3 app.py\n"), ("app.py", APP)],
                {"instances": instances})
    status, body = p.api("POST", "/v1/routes", {"app": name, "host": f"{name}.localhost"})
    assert status in (200, 201), body
    wait_for(lambda: running(p, name) >= instances, 60, f"{name}'s {instances} instances to run")


def get(p, host, path="/", timeout=60, method="GET"):
    """(status, headers, body) through the router; network errors are status 0."""
    req = urllib.request.Request(p.router_url + path, headers={"Host": host}, method=method,
                                 data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode(errors="replace")
    except OSError as e:
        return 0, {}, repr(e)


def autoscale(p, name, *args):
    r = p.cli("autoscale", name, *args)
    assert r.returncode == 0, out(r)
    return r.stdout


def status(p, name):
    code, body = p.api("GET", f"/v1/apps/{name}/autoscale")
    assert code == 200, body
    return body


def running(p, name):
    code, app = p.api("GET", f"/v1/apps/{name}")
    assert code == 200, app
    return sum(1 for i in app["instances_detail"] if i["state"] == "RUNNING")


def desired(p, name):
    return status(p, name)["instances"]


def recent_logs(p, name):
    r = p.cli("logs", name, "--recent")
    assert r.returncode == 0, out(r)
    return r.stdout


class Load:
    """n client threads, each sending requests back to back until stopped; counts answers."""

    def __init__(self, p, host, n, path="/sleep/0.3", method="GET"):
        self.p, self.host, self.path, self.method = p, host, path, method
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]

    def run(self):
        while not self.stop_flag.is_set():
            code, headers, body = get(self.p, self.host, self.path, method=self.method)
            with self.lock:
                if code == 200:
                    self.ok += 1
                else:
                    self.failed.append((code, headers.get("X-Skiff-Router-Error"), body[:200]))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        for t in self.threads:
            t.join(90)


@pytest.fixture
def plat():
    p = Platform().start()
    try:
        yield p
    finally:
        p.close()


def test_policy_round_trip_and_bad_input(plat):
    p = plat
    deploy(p, "pol")
    body = status(p, "pol")
    assert body["policy"] is None and body["process"] == "web"
    text = autoscale(p, "pol", "--min", "1", "--max", "4", "--target-concurrency", "10",
                     "--window", "6s")
    assert "1 to 4 instances, target 10 in flight" in text, text
    body = status(p, "pol")
    assert body["policy"] == {"min_instances": 1, "max_instances": 4, "target_concurrency": 10,
                              "window_ms": 6000, "panic_window_ms": 1000,
                              "scale_down_delay_ms": 0}
    # the policy survives an update of the app (a push patches it)
    assert p.api("PATCH", "/v1/apps/pol", {"memory_mb": 128})[0] == 200
    assert status(p, "pol")["policy"]["max_instances"] == 4
    # what a hostile or careless client sends gets a clear 4xx, and changes nothing
    for bad in ({"min_instances": 5, "max_instances": 2}, {"max_instances": 0},
                {"max_instances": 100000}, {"target_concurrency": 0},
                {"target_concurrency": 5, "target_rps": 5}, {"window_ms": 10},
                {"scale_down_delay_ms": -1}, {"max_instances": "many"}, {"nope": 1}):
        code, err = p.api("PUT", "/v1/apps/pol/autoscale", bad)
        assert code in (400, 422), (bad, code, err)
        assert err["error"]["message"], err
    code, err = p.api("PUT", "/v1/apps/pol/autoscale", raw=b"{not json",
                      headers={"Content-Type": "application/json"})
    assert code == 400, err
    code, err = p.api("GET", "/v1/apps/pol/autoscale?process=nosuch")
    assert code == 404 and "nosuch" in err["error"]["message"], err
    code, _ = p.api("GET", "/v1/apps/nobody/autoscale")
    assert code == 404
    assert status(p, "pol")["policy"]["max_instances"] == 4
    # rps instead of concurrency
    autoscale(p, "pol", "--target-rps", "50")
    pol = status(p, "pol")["policy"]
    assert pol["target_rps"] == 50 and "target_concurrency" not in pol
    # off: the count is the user's again
    autoscale(p, "pol", "--off")
    assert status(p, "pol")["policy"] is None
    r = p.cli("autoscale", "pol", "--off", "--max", "3")
    assert r.returncode != 0


def test_zero_to_n_to_zero_without_a_failed_request(plat):
    p = plat
    deploy(p, "z")
    autoscale(p, "z", "--min", "0", "--max", "4", "--target-concurrency", "1", "--window", "4s")
    # idle: down to zero within the window (and the rate limit's halving)
    wait_for(lambda: desired(p, "z") == 0 and running(p, "z") == 0, 60, "z to scale to zero")
    # the first request wakes it and is not lost
    code, _, body = get(p, "z.localhost")
    assert code == 200, body
    with Load(p, "z.localhost", 3) as load:
        wait_for(lambda: running(p, "z") >= 2, 60, "z to scale up under load")
    assert load.failed == [], load.failed[:5]
    assert load.ok > 0
    wait_for(lambda: desired(p, "z") == 0 and running(p, "z") == 0, 60, "z back to zero")
    logs = recent_logs(p, "z")
    assert "[AUTOSCALER]" in logs and "in flight, target 1" in logs, logs[-3000:]
    decisions = status(p, "z")["status"]["decisions"]
    assert any(d["to"] == 0 for d in decisions) and any(d["to"] >= 2 for d in decisions)
    # each change is a platform event on the space's skiff.app.scaled topic
    code, text = p.api("GET", "/v1/topics/skiff.app.scaled/events?from=start")
    assert code == 200, text
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    counts = [e["data"]["instances"] for e in events if e["data"].get("app") == "z"]
    assert 0 in counts and max(counts) >= 2, events
    assert any(" -> 0: " in e["data"].get("reason", "") for e in events), events


def test_eight_clients_reach_eight_instances_then_drop_back(plat):
    p = plat
    deploy(p, "eight")
    autoscale(p, "eight", "--min", "1", "--max", "8", "--target-concurrency", "1",
              "--window", "4s")
    started = time.monotonic()
    with Load(p, "eight.localhost", 8, "/sleep/0.5") as load:
        wait_for(lambda: desired(p, "eight") == 8, 60, "eight to want 8 instances")
        reacted = time.monotonic() - started
        wait_for(lambda: running(p, "eight") == 8, 120, "8 instances to run")
        st = status(p, "eight")["status"]
    assert load.failed == [], load.failed[:5]
    print(f"8 clients: 8 instances wanted after {reacted:.1f} s")
    # the panic window (a tenth of the stable window) reacts within seconds
    assert reacted < 20
    assert st["metric"]["in_flight"] > 0
    wait_for(lambda: desired(p, "eight") == 1, 60, "eight back to its min after the window")


def test_max_instances_is_respected(plat):
    p = plat
    deploy(p, "capped")
    autoscale(p, "capped", "--min", "1", "--max", "2", "--target-concurrency", "1",
              "--window", "4s")
    with Load(p, "capped.localhost", 6, "/sleep/0.5") as load:
        wait_for(lambda: desired(p, "capped") == 2, 60, "capped to reach its max")
        # a few more decisions: never above the max
        seen = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen.add(desired(p, "capped"))
            time.sleep(0.2)
    assert max(seen) == 2, seen
    assert load.failed == [], load.failed[:5]


def test_activator_queue_bound_and_timeout():
    """An app whose instance never gets ready: requests for it at zero are held up to the
    queue bound (the rest get queue-full at once), and the held ones time out with the
    documented 503."""
    p = Platform(extra_env={"SKIFF_ROUTER_HOLD_TIMEOUT_MS": "1500",
                            "SKIFF_ROUTER_HOLD_MAX": "2"}).start()
    try:
        deploy_bits(p, "never", [("Procfile", b"web: sleep 1000\n")], {"instances": 0})
        code, body = p.api("POST", "/v1/routes", {"app": "never", "host": "never.localhost"})
        assert code in (200, 201), body
        autoscale(p, "never", "--min", "0", "--max", "1", "--window", "4s")
        # held, then answered when the hold times out
        t0 = time.monotonic()
        code, headers, body = get(p, "never.localhost", timeout=30)
        waited = time.monotonic() - t0
        assert code == 503, (code, headers, body)
        assert headers.get("X-Skiff-Router-Error") == "scale-from-zero-timeout", headers
        assert 1.2 < waited < 10, waited
        # six at once: two are held (and time out), four are refused at once
        results = []
        lock = threading.Lock()

        def one():
            t = time.monotonic()
            r = get(p, "never.localhost", timeout=30)
            with lock:
                results.append((r[0], r[1].get("X-Skiff-Router-Error"), time.monotonic() - t))

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        reasons = sorted(r[1] for r in results)
        assert all(r[0] == 503 for r in results), results
        assert reasons == ["scale-from-zero-queue-full"] * 4 + ["scale-from-zero-timeout"] * 2, \
            results
        assert all(r[2] < 1.3 for r in results if r[1] == "scale-from-zero-queue-full"), results
        # the daemon and router are fine afterwards
        assert p.api("GET", "/v1/apps/never/autoscale")[0] == 200
    finally:
        p.close()


def test_one_app_filling_its_hold_bound_does_not_refuse_another_apps_requests():
    """A hostile tenant's app that never gets ready, its held requests at the bound: the bound
    is per app process, so another app at zero is still woken and served."""
    p = Platform(extra_env={"SKIFF_ROUTER_HOLD_TIMEOUT_MS": "20000",
                            "SKIFF_ROUTER_HOLD_MAX": "2"}).start()
    try:
        deploy_bits(p, "never", [("Procfile", b"web: sleep 1000\n")], {"instances": 0})
        code, body = p.api("POST", "/v1/routes", {"app": "never", "host": "never.localhost"})
        assert code in (200, 201), body
        autoscale(p, "never", "--min", "0", "--max", "1", "--window", "4s")
        deploy(p, "good", instances=0)
        autoscale(p, "good", "--min", "0", "--max", "1", "--window", "4s")
        results = []

        def flood():
            r = get(p, "never.localhost", timeout=60)
            results.append((r[0], r[1].get("X-Skiff-Router-Error")))

        threads = [threading.Thread(target=flood, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        # the bound of never is full once two of its requests were refused at once
        wait_for(lambda: sorted(results) == [(503, "scale-from-zero-queue-full")] * 2, 20,
                 what="never's hold bound to be full")
        code, headers, body = get(p, "good.localhost", timeout=30)
        assert code == 200 and body.startswith("instance "), (code, headers, body)
        for t in threads:
            t.join(60)
        assert sorted(results) == [(503, "scale-from-zero-queue-full")] * 2 + \
            [(503, "scale-from-zero-timeout")] * 2, results
    finally:
        p.close()


def test_manifest_sets_the_policy(plat, tmp_path):
    p = plat
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "app.py").write_bytes(APP)
    (tmp_path / "app" / "Procfile").write_text("web: python3 app.py\n")
    (tmp_path / "manifest.yml").write_text(
        "applications:\n"
        "- name: man\n"
        "  path: app\n"
        "  min-instances: 1\n"
        "  max-instances: 3\n"
        "  target-concurrency: 5\n")
    r = p.cli("push", "-f", str(tmp_path / "manifest.yml"), timeout=300)
    assert r.returncode == 0, out(r)
    assert "autoscaling web between 1 and 3 instances" in r.stdout, r.stdout
    pol = status(p, "man")["policy"]
    assert (pol["min_instances"], pol["max_instances"], pol["target_concurrency"]) == (1, 3, 5)
    text = autoscale(p, "man")
    assert "1 to 3 instances, target 5 in flight" in text and "metric:" in text, text


def test_a_function_scales_with_its_requests(plat, tmp_path):
    """A function with a policy scales with routed requests like an app, to zero and back,
    without the invoker's idle grace (the autoscaler owns its count)."""
    p = plat
    (tmp_path / "slow.py").write_text("import time\n\n\ndef handle(event):\n"
                                      "    time.sleep(0.4)\n    return 'ok'\n")
    r = p.cli("push", "slowfn", "--function", f"{tmp_path / 'slow.py'}:handle", timeout=300)
    assert r.returncode == 0, out(r)
    autoscale(p, "slowfn", "--min", "0", "--max", "3", "--target-concurrency", "1",
              "--window", "4s")
    # a POST runs the handler (0.4 s); a function answers a GET at once (its health check)
    with Load(p, "slowfn.localhost", 4, "/", method="POST") as load:
        wait_for(lambda: desired(p, "slowfn") == 3, 60, "the function to reach its max")
        wait_for(lambda: running(p, "slowfn") == 3, 120, "3 instances of the function to run")
    assert load.failed == [], load.failed[:5]
    assert load.ok > 0
    wait_for(lambda: desired(p, "slowfn") == 0 and running(p, "slowfn") == 0, 60,
             "the function back to zero")


def test_the_quota_must_hold_max_instances(plat):
    p = plat
    deploy(p, "q")
    code, body = p.api("POST", "/v1/quotas", {"name": "small", "instances": 3})
    assert code == 201, body
    code, body = p.api("PUT", "/v1/orgs/default/quota", {"quota": "small"})
    assert code == 200, body
    code, err = p.api("PUT", "/v1/apps/q/autoscale", {"min_instances": 0, "max_instances": 5})
    assert code == 422 and err["error"]["code"] == "quota_exceeded", err
    assert status(p, "q")["policy"] is None
    code, body = p.api("PUT", "/v1/apps/q/autoscale", {"min_instances": 0, "max_instances": 3})
    assert code == 200 and body["policy"]["max_instances"] == 3, body


def test_event_work_is_a_floor_within_the_policy_max(plat, tmp_path):
    """A function with a policy and an event backlog: the invoker's work keeps it up (the
    autoscaler never goes below it, though no request comes) and never past the policy's
    max; once the backlog is done it goes back to zero."""
    p = plat
    (tmp_path / "job.py").write_text("import time\n\n\ndef handle(event):\n"
                                     "    time.sleep(0.3)\n")
    r = p.cli("push", "jobs", "--function", f"{tmp_path / 'job.py'}:handle", timeout=300)
    assert r.returncode == 0, out(r)
    autoscale(p, "jobs", "--min", "0", "--max", "2", "--target-concurrency", "1",
              "--window", "4s")
    wait_for(lambda: desired(p, "jobs") == 0, 60, "jobs at zero")
    # no max of its own: the mapping's default (10) is the policy's to bound
    code, body = p.api("POST", "/v1/event-mappings", {"app": "jobs", "topic": "work"})
    assert code == 201, body
    for i in range(40):
        code, body = p.api("POST", "/v1/topics/work/events", {"n": i})
        assert code == 202, body
    wait_for(lambda: desired(p, "jobs") == 2, 60, "the backlog to scale jobs to its max")
    seen = set()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        seen.add(desired(p, "jobs"))
        time.sleep(0.2)
    assert max(seen) == 2 and min(seen) >= 1, seen  # up while work waits, never past max
    wait_for(lambda: desired(p, "jobs") == 0 and running(p, "jobs") == 0, 120,
             "jobs back to zero once the backlog is done")


def test_lowering_the_policy_under_a_mapping_max_is_refused_naming_the_mapping(plat, tmp_path):
    """The reverse of the refusal above: a policy lowered (`skiff autoscale --max`, or back to
    the default) under the max_instances a mapping asked for is refused 422, naming the mapping
    and what to do; a mapping that asked for no max (default 10) is the policy's to bound and
    never blocks. A body claiming its max was not asked for is not believed, and what a mapping
    asked for survives a restart."""
    p = plat
    (tmp_path / "fn.py").write_text("def handle(event):\n    return None\n")
    r = p.cli("push", "lowered", "--function", f"{tmp_path / 'fn.py'}:handle", timeout=300)
    assert r.returncode == 0, out(r)
    code, asked = p.api("POST", "/v1/event-mappings",
                        {"app": "lowered", "topic": "work", "max_instances": 8})
    assert code == 201 and asked["max_instances_given"] is True, asked
    code, dflt = p.api("POST", "/v1/event-mappings", {"app": "lowered", "topic": "other"})
    assert code == 201 and dflt["max_instances"] == 10, dflt
    assert dflt["max_instances_given"] is False, dflt
    r = p.cli("autoscale", "lowered", "--max", "5")
    assert r.returncode != 0, out(r)
    msg = out(r)
    assert asked["id"][:8] in msg and "topic work" in msg and "max_instances 8" in msg, msg
    assert f"skiff unmap-event lowered --id {asked['id'][:8]}" in msg, msg
    assert "--max-instances 5 or fewer" in msg and "8 or more" in msg, msg
    assert dflt["id"][:8] not in msg, msg  # the default max does not block
    assert status(p, "lowered")["policy"]["max_instances"] == 10
    # down to what the mapping asked for: taken (the default mapping's 10 is bounded by it)
    autoscale(p, "lowered", "--max", "8")
    assert status(p, "lowered")["policy"]["max_instances"] == 8
    # a body that says its max was not asked for is not believed
    code, liar = p.api("POST", "/v1/event-mappings",
                       {"app": "lowered", "topic": "third", "max_instances": 7,
                        "max_instances_given": False})
    assert code == 201 and liar["max_instances_given"] is True, liar
    # what was asked for is remembered across a restart
    p.stop()
    p.start()
    code, err = p.api("PUT", "/v1/apps/lowered/autoscale", {"max_instances": 6})
    assert code == 422 and err["error"]["code"] == "invalid_value", err
    m = err["error"]["message"]
    assert "these event mappings of lowered ask for more than 6" in m, m
    assert asked["id"][:8] in m and liar["id"][:8] in m and "8 or more" in m, m
    assert status(p, "lowered")["policy"]["max_instances"] == 8
    # raised, then back to the default policy (max 10) under a mapping asking 15: refused too
    autoscale(p, "lowered", "--max", "20")
    code, big = p.api("POST", "/v1/event-mappings",
                      {"app": "lowered", "topic": "big", "max_instances": 15})
    assert code == 201, big
    code, err = p.api("DELETE", "/v1/apps/lowered/autoscale")
    assert code == 422 and big["id"][:8] in err["error"]["message"], err
    assert status(p, "lowered")["policy"]["max_instances"] == 20
    # done as the message says: unmapped, the policy goes down
    for m in (asked, liar, big):
        r = p.cli("unmap-event", "lowered", "--id", m["id"][:8])
        assert r.returncode == 0, out(r)
    autoscale(p, "lowered", "--max", "2")
    assert status(p, "lowered")["policy"]["max_instances"] == 2
    code, body = p.api("DELETE", "/v1/apps/lowered/autoscale")
    assert code == 200 and body["policy"]["max_instances"] == 10, body


def test_a_mapping_max_above_the_policy_is_refused_with_the_command_to_raise_it(plat, tmp_path):
    """A mapping asking for more instances than its function's autoscale policy allows (max 10
    by default) would be capped without a word: it is refused, naming `skiff autoscale FN
    --max N`; once the policy is raised the same mapping is taken, and a mapping within the
    policy, or without a max of its own, always was."""
    p = plat
    (tmp_path / "fn.py").write_text("def handle(event):\n    return None\n")
    r = p.cli("push", "capped", "--function", f"{tmp_path / 'fn.py'}:handle", timeout=300)
    assert r.returncode == 0, out(r)
    assert status(p, "capped")["policy"]["max_instances"] == 10
    r = p.cli("map-event", "capped", "work", "--max-instances", "20")
    assert r.returncode != 0, out(r)
    assert "skiff autoscale capped --max 20" in out(r) and "10" in out(r), out(r)
    code, err = p.api("POST", "/v1/event-mappings",
                      {"app": "capped", "topic": "work", "max_instances": 11})
    assert code == 422 and err["error"]["code"] == "invalid_value", err
    assert "skiff autoscale capped --max 11" in err["error"]["message"], err
    code, body = p.api("GET", "/v1/event-mappings")
    assert code == 200 and not [m for m in body["event_mappings"] if m["app"] == "capped"], body
    # within the policy, or with the default max: taken
    r = p.cli("map-event", "capped", "work", "--max-instances", "10")
    assert r.returncode == 0, out(r)
    code, body = p.api("POST", "/v1/event-mappings", {"app": "capped", "topic": "other"})
    assert code == 201, body
    # raised as the message says: the same mapping is taken and the policy bounds it no more
    autoscale(p, "capped", "--max", "20")
    r = p.cli("map-event", "capped", "work2", "--max-instances", "20")
    assert r.returncode == 0, out(r)
    assert status(p, "capped")["policy"]["max_instances"] == 20
