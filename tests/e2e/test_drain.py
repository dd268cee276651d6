"""Draining: an instance stopped on purpose (scale down, stop, restart) leaves the route table,
finishes the requests in flight to it, and only then gets its SIGTERM; one that never finishes
is stopped anyway once the drain timeout passes."""
import json
import os
import re
import threading
import urllib.error
import urllib.request

from conftest import Platform, WEB_APP, deploy_bits, out, push_function, write

APP = WEB_APP  # tests/e2e/apps/web.py


def deploy(p, name, instances, env=None):
    deploy_bits(p, name, [("Procfile", b"web: python3 app.py\n"), ("app.py", APP)],
                {"instances": instances, "env": env or {}})
    wait_routed(p, name, instances)


def detail(p, name):
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return app["instances_detail"]


def states(p, name):
    return sorted(i["state"] for i in detail(p, name))


def scale(p, name, n):
    status, app = p.api("PATCH", f"/v1/apps/{name}", {"instances": n})
    assert status == 200 and app["instances"] == n, app


def get(p, host, path="/", timeout=30):
    """(status, body) of a request through the router; network errors are status 0."""
    req = urllib.request.Request(p.router_url + path, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return 0, repr(e)


def wait_routed(p, name, n):
    """Waits until n instances run and the router has all of them: n requests in a row (round
    robin) reach n different instances."""
    host = f"{name}.localhost"

    def ready():
        if states(p, name) != ["RUNNING"] * n:
            return False
        answers = [get(p, host) for _ in range(n)]
        return all(a[0] == 200 for a in answers) and len({a[1] for a in answers}) == n
    p.wait_for(ready, 60, f"{n} routed instances of {name}")


def in_background(fn, *args):
    result = {}

    def run():
        result["value"] = fn(*args)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def marks(p, name):
    """The MARK lines the app printed so far: one per request it began."""
    status, body = p.api("GET", f"/v1/apps/{name}/logs?recent=1")
    text = body if isinstance(body, str) else json.dumps(body)
    return re.findall(r"MARK (\d+-\d+-\d+)", text)


def request_in_flight(p, host, path, timeout=30):
    """Starts GET path in the background and returns (thread, result) once the app has begun
    it (a new MARK line in its logs); fails with the request's own answer if that came back
    first."""
    name = host.split(".")[0]
    before = len(marks(p, name))
    t, result = in_background(get, p, host, path, timeout)
    p.wait_for(lambda: len(marks(p, name)) > before or "value" in result, 30,
               f"{path} to reach the app")
    assert len(marks(p, name)) > before, result
    return t, result


def test_requests_in_flight_finish_when_their_instance_is_scaled_away(tmp_path):
    p = Platform().start()
    try:
        deploy(p, "slow", 2)
        # requests until both instances have one in flight (round robin, per router worker),
        # so one is in flight to #1, which the scale down stops
        calls = []
        served_by = set()
        while served_by != {"0", "1"} and len(calls) < 12:
            calls.append(request_in_flight(p, "slow.localhost", "/sleep/1.5"))
            served_by = {m.split("-")[0] for m in marks(p, "slow")}
        assert served_by == {"0", "1"}, served_by
        scale(p, "slow", 1)
        # the instance being drained still shows, as STOPPING, in the API and in `skiff app`
        p.wait_for(lambda: "STOPPING" in states(p, "slow"), 5, "the drained instance to show")
        p.wait_for(lambda: "STOPPING" in p.cli("app", "slow").stdout, 5, "`skiff app` to show it")
        for t, result in calls:
            t.join(30)
            assert result["value"][0] == 200, result["value"]
        assert {r["value"][1] for _, r in calls} == {"instance 0\n", "instance 1\n"}
        p.wait_for(lambda: states(p, "slow") == ["RUNNING"], 30, "the drained instance to stop")
        status, logs = p.api("GET", "/v1/apps/slow/logs?recent=1")
        assert "is draining" in logs, logs
    finally:
        p.close()


def test_a_stop_and_a_restart_wait_for_requests_in_flight(tmp_path):
    p = Platform().start()
    try:
        deploy(p, "steady", 1)
        for action in ["restart", "stop"]:
            t, result = request_in_flight(p, "steady.localhost", "/sleep/1.5")
            assert p.api("POST", f"/v1/apps/steady/{action}")[0] == 200
            t.join(30)
            assert result["value"] == (200, "instance 0\n"), (action, result["value"])
            if action == "restart":
                wait_routed(p, "steady", 1)
        p.wait_for(lambda: detail(p, "steady") == [], 30, "the stopped app's instance to end")
    finally:
        p.close()


def test_no_request_fails_while_scaling_down_and_up():
    p = Platform().start()
    try:
        deploy(p, "busy", 3)
        stop = threading.Event()
        outcomes = []

        def loop():
            while not stop.is_set():
                outcomes.append(get(p, "busy.localhost", "/sleep/0.2", timeout=30))
        workers = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            for n in (1, 3, 1):
                # requests are in flight to every instance when the scale changes
                done = len(outcomes)
                p.wait_for(lambda: len(outcomes) >= done + 8, 30, "requests to go on")
                scale(p, "busy", n)
                p.wait_for(lambda: states(p, "busy") == ["RUNNING"] * n, 60,
                           f"{n} instances and no other")
            done = len(outcomes)
            p.wait_for(lambda: len(outcomes) >= done + 8, 30, "requests to go on")
        finally:
            stop.set()
            for w in workers:
                w.join(30)
        print(f"{len(outcomes)} requests while scaling 3 -> 1 -> 3 -> 1")
        failed = [o for o in outcomes if o[0] != 200]
        assert outcomes and not failed, (len(outcomes), failed[:5])
    finally:
        p.close()


def test_an_instance_that_never_finishes_is_stopped_at_the_drain_timeout(tmp_path):
    p = Platform(extra_args=["--drain-timeout-ms", "1000"]).start()
    try:
        deploy(p, "stuck", 1)
        t, result = request_in_flight(p, "stuck.localhost", "/sleep/3600", 60)
        assert p.api("POST", "/v1/apps/stuck/stop")[0] == 200
        p.wait_for(lambda: detail(p, "stuck") == [], 20, "the stuck instance to be stopped")
        t.join(30)
        # the router could not finish it: the client learns its request was cut
        assert result["value"][0] in (0, 502), result["value"]
        status, logs = p.api("GET", "/v1/apps/stuck/logs?recent=1")
        assert "after the drain timeout" in logs, logs
    finally:
        p.close()


def test_the_drain_timeout_option_is_checked():
    import subprocess
    from conftest import BIN_DIR
    r = subprocess.run([os.path.join(BIN_DIR, "skiffd"), "--drain-timeout-ms", "soon"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "--drain-timeout-ms soon is not a number of milliseconds" in r.stderr


def test_an_event_delivery_in_flight_finishes_before_its_instance_stops(tmp_path):
    """With no retry allowed, an event whose delivery the stop cut would be recorded as failed."""
    p = Platform().start()
    try:
        handler = write(tmp_path, "slow.py", """
            import time

            def handle(event):
                print("handling " + str(event.get("subject")), flush=True)
                time.sleep(2)
                return None
        """)
        push_function(p, "slowfn", handler)
        r = p.cli("map-event", "slowfn", "jobs", "--retries", "0")
        assert r.returncode == 0, out(r)

        def counts():
            r = p.cli("event-mappings", "--json", "slowfn")
            assert r.returncode == 0, out(r)
            return json.loads(r.stdout)["event_mappings"][0]
        r = p.cli("emit", "jobs", "--subject", "job-1", '{"n": 1}')
        assert r.returncode == 0, out(r)
        p.wait_for(lambda: counts()["in_flight"] == 1, 60, "the delivery to start")
        p.wait_for(lambda: "handling job-1" in p.api("GET", "/v1/apps/slowfn/logs?recent=1")[1],
                   30, "the function to be handling the event")
        assert p.api("POST", "/v1/apps/slowfn/restart")[0] == 200
        m = p.wait_for(lambda: (lambda m: m if m["in_flight"] == 0 else None)(counts()), 30,
                       "the delivery to end")
        assert m["delivered"] == 1 and m["failed"] == 0 and m["dead_lettered"] == 0, m
    finally:
        p.close()


def test_skiffd_stopping_does_not_wait_for_drains(tmp_path):
    # a drain that could last ten minutes: skiffd's own stop must not wait for it
    p = Platform(extra_args=["--drain-timeout-ms", "600000"]).start()
    try:
        deploy(p, "lingering", 1)
        t, result = request_in_flight(p, "lingering.localhost", "/sleep/3600", 60)
        assert p.api("POST", "/v1/apps/lingering/stop")[0] == 200
        p.wait_for(lambda: states(p, "lingering") == ["STOPPING"], 10, "the drain to begin")
        p.stop(timeout=30)  # raises if skiffd is still running after 30 s
        assert p.proc.returncode == 0, p.output()
        t.join(30)
        assert result["value"][0] in (0, 502), result["value"]
    finally:
        p.close()
