"""Readiness checks, health-check timing and log rate limits (Cloud Foundry's keys of those
names), used as a developer would: an instance that is not ready leaves the route table and
is not restarted; a health check's invocation timeout decides how slow an answer may be; an
app that prints past its log rate limit loses the lines over it, with one notice a second,
and nobody else's logs suffer."""
import os
import re
import signal
import urllib.error
import urllib.request

from conftest import app_source, deploy_bits, instance_url, out, write

# tests/e2e/apps/readiness.py: readiness flipped per instance (GET /unready, /ready on the
# instance itself), /health slowed by HEALTH_DELAY after /slow, /probe, and LINES_PER_TICK lines
# of LINE_BYTES printed every 0.1 s
FILES = [("Procfile", b"web: python3 app.py\n"), ("app.py", app_source("readiness.py"))]


def get(p, host, path="/"):
    """(status, headers, body) of a request through the router."""
    req = urllib.request.Request(p.router_url + path, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode(errors="replace")


def instances(p, name):
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return sorted(app["instances_detail"], key=lambda i: i["index"])


def on_instance(inst, path):
    """GET path on the instance itself (the test's switch), which must answer 200."""
    with urllib.request.urlopen(instance_url(inst, path), timeout=10) as r:
        assert r.status == 200


def answering(p, host, n=12):
    """Which instance indexes answered n requests through the router."""
    seen = set()
    for _ in range(n):
        status, _, body = get(p, host)
        assert status == 200, (status, body)
        seen.add(body.split()[1])
    return seen


def recent_logs(p, name):
    r = p.cli("logs", name, "--recent")
    assert r.returncode == 0, out(r)
    return r.stdout


def test_an_instance_that_is_not_ready_leaves_the_route_table_and_is_not_restarted(platform):
    p = platform
    deploy_bits(p, "flip", FILES, {"instances": 2,
                                   "readiness_health_check_type": "http",
                                   "readiness_health_check_http_endpoint": "/readyz",
                                   "readiness_health_check_interval": 1})
    host = "flip.localhost"
    p.wait_for(lambda: answering(p, host) == {"0", "1"}, 60, "both instances routed")
    before = instances(p, "flip")
    assert [i["ready"] for i in before] == [True, True], before

    # instance 0 fails its readiness check: every request goes to instance 1; it still runs
    on_instance(before[0], "/unready")
    p.wait_for(lambda: not instances(p, "flip")[0]["ready"], 30, "instance 0 not ready")
    p.wait_for(lambda: answering(p, host) == {"1"}, 30, "requests only to instance 1")
    assert answering(p, host, 20) == {"1"}
    now = instances(p, "flip")
    assert [(i["guid"], i["state"], i["crash_count"]) for i in now] == \
        [(i["guid"], "RUNNING", 0) for i in before], now
    r = p.cli("app", "flip")
    assert r.returncode == 0, out(r)
    assert "readiness:   http /readyz, every 1s" in r.stdout, r.stdout
    assert "not ready (readiness check failing)" in r.stdout, r.stdout

    # both not ready: the router has nothing to send to and says so
    on_instance(before[1], "/unready")
    p.wait_for(lambda: get(p, host)[0] == 503, 30, "503 with no ready instance")
    status, headers, _ = get(p, host)
    assert status == 503 and headers.get("X-Skiff-Router-Error") == "no-instance", headers

    # ready again: back in the route table, still the same instances, never restarted
    on_instance(before[0], "/ready")
    on_instance(before[1], "/ready")
    p.wait_for(lambda: answering(p, host) == {"0", "1"}, 30, "both instances routed again")
    after = instances(p, "flip")
    assert [(i["guid"], i["crash_count"], i["ready"]) for i in after] == \
        [(i["guid"], 0, True) for i in before], after
    logs = recent_logs(p, "flip")
    assert "Instance 0 of web is not ready (its readiness check failed)" in logs, logs
    assert "Instance 0 of web is ready: it takes requests" in logs, logs
    assert "crashed" not in logs, logs


def test_a_health_check_invocation_timeout_lets_a_slow_check_pass(platform):
    """/health answers after 2 s: with an invocation timeout of 5 s the instance lives through
    many such checks; with the default of 1 s three of them in a row restart it."""
    p = platform
    for name, timeout in (("patient", 5), ("hasty", None)):
        app = {"health_check_type": "http", "health_check_http_endpoint": "/health",
               "health_check_interval": 1, "env": {"HEALTH_DELAY": "2"}}
        if timeout:
            app["health_check_invocation_timeout"] = timeout
        deploy_bits(p, name, FILES, app)
        p.wait_for(lambda: [i["state"] for i in instances(p, name)] == ["RUNNING"], 60,
                   f"{name} running")
    assert p.api("GET", "/v1/apps/patient")[1]["health_check_invocation_timeout"] == 5
    assert p.api("GET", "/v1/apps/hasty")[1]["health_check_invocation_timeout"] is None
    patient = instances(p, "patient")[0]
    for name in ("patient", "hasty"):
        on_instance(instances(p, name)[0], "/slow")

    # the hasty one is killed by its health check and restarted
    p.wait_for(lambda: instances(p, "hasty")[0]["crash_count"] >= 1, 60, "hasty restarted")
    assert "health check failed" in recent_logs(p, "hasty")
    # the patient one answered slow checks, more than three, and is the same instance
    p.wait_for(lambda: recent_logs(p, "patient").count("SLOW-HEALTH-ANSWERED") >= 4, 60,
               "four slow checks answered")
    now = instances(p, "patient")[0]
    assert (now["guid"], now["crash_count"], now["state"]) == (patient["guid"], 0, "RUNNING"), now


def test_a_changed_health_check_applies_once_the_app_restarts(platform):
    """As in Cloud Foundry: a running instance keeps the check it started with, and the CLI
    says that a restart applies the change; the instances started after it use the new one."""
    p = platform
    deploy_bits(p, "later", FILES, {"health_check_type": "http",
                                    "health_check_http_endpoint": "/health",
                                    "health_check_interval": 1})
    p.wait_for(lambda: [i["state"] for i in instances(p, "later")] == ["RUNNING"], 60,
               "later running")
    first = instances(p, "later")[0]
    on_instance(first, "/slow")  # from now on each /health check prints a line
    p.wait_for(lambda: recent_logs(p, "later").count("SLOW-HEALTH-ANSWERED") >= 1, 30,
               "a /health check answered")

    r = p.cli("set-health-check", "later", "http", "--endpoint", "/probe", "--interval", "1")
    assert r.returncode == 0, out(r)
    assert "TIP: An app restart is required for the change to take effect" in r.stdout, out(r)
    assert "skiff restart later" in r.stdout, out(r)
    assert p.api("GET", "/v1/apps/later")[1]["health_check_http_endpoint"] == "/probe"
    # the running instance goes on being checked on /health, never on /probe
    seen = recent_logs(p, "later").count("SLOW-HEALTH-ANSWERED")
    p.wait_for(lambda: recent_logs(p, "later").count("SLOW-HEALTH-ANSWERED") >= seen + 3, 30,
               "three more /health checks after the change")
    assert "PROBE-ANSWERED" not in recent_logs(p, "later")
    now = instances(p, "later")[0]
    assert (now["guid"], now["crash_count"]) == (first["guid"], 0), now

    # a restart starts instances with the new check
    r = p.cli("restart", "later", timeout=120)
    assert r.returncode == 0, out(r)
    p.wait_for(lambda: "PROBE-ANSWERED" in recent_logs(p, "later"), 30, "a /probe check")
    assert instances(p, "later")[0]["guid"] != first["guid"]


def test_output_past_the_log_rate_limit_is_dropped_with_a_notice(platform):
    p = platform
    # 20 lines of 100 bytes every 0.1 s: about 20K a second, against a limit of 1K
    deploy_bits(p, "chatty", FILES, {"log_rate_limit_per_second": 1024,
                                     "env": {"LINES_PER_TICK": "20", "LINE_BYTES": "100"}})
    # the same output, unlimited
    deploy_bits(p, "calm", FILES, {"env": {"LINES_PER_TICK": "20", "LINE_BYTES": "100"}})
    notice = "app instance exceeded log rate limit (1024 bytes/sec)"
    logs = p.wait_for(lambda: (lambda t: t if t.count(notice) >= 3 else None)(
        recent_logs(p, "chatty")), 60, "three notices")
    notices = [line for line in logs.splitlines() if notice in line]
    assert all("[LOG/0]" in line for line in notices), notices
    seqs = [int(s) for s in re.findall(r"SEQ (\d+)", logs)]
    assert seqs, logs
    # lines were dropped: numbers are missing between the first and the last seen
    assert seqs[-1] - seqs[0] + 1 > len(seqs) * 5, (seqs[0], seqs[-1], len(seqs))
    # a second holds at most 1024 bytes of its lines: 10 of 101 bytes (with the newline)
    assert len(seqs) <= 10 * (logs.count(notice) + 2), (len(seqs), logs.count(notice))
    # the platform still answers at once, and the other app's output is whole
    assert p.info()["version"]
    calm = p.wait_for(lambda: (lambda t: t if len(re.findall(r"SEQ \d+", t)) > 40 else None)(
        recent_logs(p, "calm")), 60, "the other app's output")
    got = [int(s) for s in re.findall(r"SEQ (\d+)", calm)]
    assert got == list(range(got[0], got[0] + len(got))), got[:5]
    assert notice not in calm and "exceeded log rate limit" not in calm

    # `skiff scale -l` changes it (a rolling restart) and `skiff app` shows it
    r = p.cli("scale", "chatty", "-l", "-1")
    assert r.returncode == 0, out(r)
    r = p.cli("app", "chatty")
    assert "log rate:    unlimited" in r.stdout, out(r)
    r = p.cli("scale", "calm", "-l", "16K")
    assert r.returncode == 0, out(r)
    assert p.api("GET", "/v1/apps/calm")[1]["log_rate_limit_per_second"] == 16384
    assert "log rate:    16K/s" in p.cli("app", "calm").stdout


def test_bad_values_are_refused_with_what_to_do(platform, tmp_path):
    p = platform
    assert p.api("PUT", "/v1/apps/ok", {})[0] in (200, 201)
    bad = [({"log_rate_limit_per_second": -2}, "log_rate_limit_per_second"),
           ({"log_rate_limit_per_second": 1 << 40}, "1073741824 (1G)"),
           ({"log_rate_limit_per_second": "16K"}, "must be -1 (unlimited)"),
           ({"health_check_interval": 0}, "from 1 to 3600"),
           ({"health_check_invocation_timeout": 100000}, "from 1 to 600"),
           ({"readiness_health_check_interval": -1}, "from 1 to 3600"),
           ({"readiness_health_check_type": "tcp"}, '"http", "port" or "process"'),
           ({"readiness_health_check_http_endpoint": "ready"}, "starting with /"),
           ({"readiness_health_check_http_endpoint": "/a b\r\nX: y"}, "no spaces"),
           ({"health_check_http_endpoint": "/x\r\nHost: elsewhere"}, "no spaces"),
           ({"readiness_health_check_http_endpoint": "/" + "a" * 5000}, "1024 characters"),
           ({"processes": [{"type": "web", "log_rate_limit_per_second": 1.5}]},
            "log_rate_limit_per_second"),
           ({"processes": [{"type": "worker", "health_check_interval": "5"}]},
            "health_check_interval")]
    for body, said in bad:
        status, err = p.api("PATCH", "/v1/apps/ok", body)
        assert status == 422 and said in err["error"]["message"], (body, status, err)
    app = p.api("GET", "/v1/apps/ok")[1]
    assert app["log_rate_limit_per_second"] == -1 and app["health_check_interval"] is None
    assert app["readiness_health_check_type"] is None

    for args, said in ((["-l", "16Q"], '-l needs bytes a second like 16K, 1M or 512B'),
                       (["-l", "1.5K"], "not \"1.5K\""),
                       (["-l", "2T"], "1073741824 (1G)")):
        r = p.cli("scale", "ok", *args)
        assert r.returncode != 0 and said in r.stderr, (args, out(r))
    r = p.cli("set-readiness-health-check", "ok", "tcp")
    assert r.returncode != 0 and "TYPE must be port, http or process" in r.stderr, out(r)
    r = p.cli("set-readiness-health-check", "ok", "port", "--endpoint", "/x")
    assert r.returncode != 0 and "--endpoint goes with the http type" in r.stderr, out(r)
    r = p.cli("set-health-check", "ok", "http", "--interval", "0")
    assert r.returncode != 0 and "seconds above 0" in r.stderr, out(r)

    # set through the CLI: per process, and shown
    r = p.cli("set-readiness-health-check", "ok", "http", "--endpoint", "/readyz",
              "--interval", "5", "--invocation-timeout", "2")
    assert r.returncode == 0, out(r)
    r = p.cli("set-health-check", "ok", "port", "--interval", "10")
    assert r.returncode == 0, out(r)
    app = p.api("GET", "/v1/apps/ok")[1]
    assert (app["readiness_health_check_type"], app["readiness_health_check_http_endpoint"],
            app["readiness_health_check_interval"],
            app["readiness_health_check_invocation_timeout"],
            app["health_check_interval"]) == ("http", "/readyz", 5, 2, 10), app
    # another process type: per process, and a typo of one makes none
    r = p.cli("set-readiness-health-check", "ok", "port", "--process", "wrker")
    assert r.returncode != 0 and "ok has no process type wrker" in r.stderr, out(r)
    assert p.api("PATCH", "/v1/apps/ok", {"processes": [{"type": "worker"}]})[0] == 200
    r = p.cli("set-readiness-health-check", "ok", "process", "--process", "worker")
    assert r.returncode == 0, out(r)
    procs = {q["type"]: q for q in p.api("GET", "/v1/apps/ok")[1]["processes"]}
    assert sorted(procs) == ["web", "worker"], procs
    assert procs["worker"]["readiness_health_check_type"] == "process"
    assert procs["web"]["readiness_health_check_type"] == "http"
    r = p.cli("set-readiness-health-check", "ok", "none")
    assert r.returncode == 0, out(r)
    assert p.api("GET", "/v1/apps/ok")[1]["readiness_health_check_type"] is None

    manifest = write(tmp_path, "manifest.yml", """\
        applications:
        - name: ok
          log-rate-limit-per-second: 16 K
        """)
    r = p.cli("push", "-f", manifest)
    assert r.returncode != 0, out(r)
    assert ('line 3: "log-rate-limit-per-second" must be bytes a second like 16K, 1M or 512B, '
            'or -1 for unlimited, not "16 K"') in r.stderr, out(r)
    manifest = write(tmp_path, "manifest.yml", """\
        applications:
        - name: ok
          processes:
          - type: web
            readiness-health-check-invocation-timeout: -3
        """)
    r = p.cli("push", "-f", manifest)
    assert r.returncode != 0, out(r)
    assert ('line 5: "readiness-health-check-invocation-timeout" must be a whole number of at '
            'least 1, not "-3"') in r.stderr, out(r)
    # skiffd never fell over
    assert p.info()["version"]


def test_another_spaces_developer_cannot_see_or_change_the_checks(platform):
    """The settings live on the app: a developer of another space gets 404 for it, whatever
    they send, and the app keeps its settings."""
    p = platform
    assert p.api("PUT", "/v1/apps/guarded", {"log_rate_limit_per_second": 2048})[0] in (200, 201)
    password = "pw-mallory-123456"
    assert p.api("POST", "/v1/users", {"name": "mallory", "password": password})[0] == 201
    assert p.api("POST", "/v1/orgs", {"name": "other"})[0] == 201
    assert p.api("POST", "/v1/orgs/other/spaces", {"name": "dev"})[0] == 201
    assert p.api("PUT", "/v1/orgs/other/spaces/dev/users/mallory/roles/SpaceDeveloper")[0] == 204
    status, body = p.api("POST", "/v1/auth/token", {"grant_type": "password",
                                                    "username": "mallory", "password": password},
                         token=False)
    assert status == 200, body
    token = body["access_token"]
    for query in ("", "?space=other%2Fdev"):
        for change in ({"log_rate_limit_per_second": -1},
                       {"readiness_health_check_type": "http",
                        "readiness_health_check_http_endpoint": "/"}):
            status, err = p.api("PATCH", "/v1/apps/guarded" + query, change, token=token)
            assert status == 404, (query, status, err)
    app = p.api("GET", "/v1/apps/guarded")[1]
    assert app["log_rate_limit_per_second"] == 2048 and app["readiness_health_check_type"] is None


def test_an_adopted_instance_keeps_its_readiness_check(platform):
    """skiffd restarts while an instance is not ready: the next skiffd adopts it with its
    readiness check (not routed while it fails, not restarted) and routes it once it passes."""
    p = platform
    deploy_bits(p, "steady", FILES, {"readiness_health_check_type": "http",
                                     "readiness_health_check_http_endpoint": "/readyz",
                                     "readiness_health_check_interval": 1})
    host = "steady.localhost"
    p.wait_for(lambda: get(p, host)[0] == 200, 60, "steady routed")
    (before,) = instances(p, "steady")
    on_instance(before, "/unready")
    p.wait_for(lambda: get(p, host)[0] == 503, 30, "steady out of the route table")

    os.kill(p.proc.pid, signal.SIGUSR2)  # exits, leaving its instances to the next skiffd
    p.proc.wait(30)
    assert p.proc.returncode == 0, p.output()
    p.start()
    p.wait_for(lambda: instances(p, "steady")[0]["state"] == "RUNNING", 30, "steady adopted")
    (adopted,) = instances(p, "steady")
    assert (adopted["guid"], adopted["ready"]) == (before["guid"], False), adopted
    status, headers, _ = get(p, host)
    assert status == 503 and headers.get("X-Skiff-Router-Error") == "no-instance", headers

    on_instance(adopted, "/ready")
    p.wait_for(lambda: get(p, host)[0] == 200, 30, "steady routed again")
    (after,) = instances(p, "steady")
    assert (after["guid"], after["crash_count"], after["ready"]) == (before["guid"], 0, True)
