"""skiffd's life: SIGTERM stops instances and the router and exits 0; a restart keeps every
app, route and setting and starts what should run; after a kill -9 or SIGUSR2 the instances
(under their shims) and the router keep serving, and the next skiffd adopts them."""
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import BIN_DIR, ROOT, WEB_APP, Platform, deploy_bits, read_pid_file

PYTHON_WEB = os.path.join(ROOT, "examples", "python-web")


def instance_pids(p):
    """The pids of p's instances (not of the warm containers waiting for one)."""
    run = os.path.join(p.home, "run")
    pids = []
    for name in os.listdir(run):
        if name.startswith("instance-") and name.endswith(".pid") and "-warm-" not in name:
            try:
                pids.append(read_pid_file(os.path.join(run, name)))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def instance_shims(run):
    """The shims' pid files of instances (not of warm containers) in a run/ folder."""
    return [n for n in os.listdir(run) if n.startswith("shim-") and not n.startswith("shim-warm-")]


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is as good as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def through_router(p, host, path="/"):
    req = urllib.request.Request(p.router_url + path, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def running(p, name, n=1):
    status, app = p.api("GET", f"/v1/apps/{name}")
    return status == 200 and app["running"] >= n and app


def router_pid(p):
    return int(open(os.path.join(p.home, "run", "router.pid")).read())


def test_sigterm_exits_zero_and_stops_instances(platform):
    r = platform.cli("push", "hello", "-p", PYTHON_WEB)
    assert r.returncode == 0, r.stdout + r.stderr
    platform.wait_for(lambda: running(platform, "hello"), 30, "hello running")
    pids = instance_pids(platform)
    assert pids and all(pid_alive(pid) for pid in pids)
    platform.stop(signal.SIGTERM)
    assert platform.proc.returncode == 0, platform.output()
    for pid in pids:
        platform.wait_for(lambda: not pid_alive(pid), 5, f"instance {pid} to be stopped")
    assert "ERROR: AddressSanitizer" not in platform.output()
    assert "LeakSanitizer" not in platform.output()


def test_a_slow_stop_says_what_it_waits_for():
    """An instance that ignores SIGTERM holds skiffd's stop for its grace period: the log says
    every 5 s which step is waited for, so a skiffd slow to exit leaves the reason behind."""
    p = Platform(extra_env={"SKIFF_GRACE_MS": "8000"}).start()
    try:
        stubborn = b"import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + WEB_APP
        deploy_bits(p, "stubborn", [("Procfile", b"web: python3 app.py\n"),
                                    ("app.py", stubborn)], {"instances": 1})
        p.wait_for(lambda: running(p, "stubborn"), 60, "the instance to run")
        p.stop(signal.SIGTERM)
        assert p.proc.returncode == 0, p.output()
        assert "still stopping after 5 s: waiting for the instances to stop" in p.output(), \
            p.output()
    finally:
        p.close()


def test_restart_keeps_apps_routes_and_settings(platform):
    p = platform
    r = p.cli("push", "keep", "-p", PYTHON_WEB, "-i", "2", "-m", "128M")
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.api("PUT", "/v1/apps/keep/env", {"GREETING": "kept"})[0] == 200
    assert p.api("POST", "/v1/routes", {"app": "keep", "host": "kept.localhost",
                                        "path": "/k"})[0] == 201
    assert p.api("POST", "/v1/domains", {"name": "example.test"})[0] == 201
    assert p.api("POST", "/v1/apps", {"name": "idle", "no_route": True, "env": {"X": "1"}})[0] == 201
    p.wait_for(lambda: running(p, "keep", 2), 30, "2 instances of keep")
    status, before = p.api("GET", "/v1/apps/keep")
    token = p.token

    p.stop(signal.SIGTERM)
    assert p.proc.returncode == 0, p.output()
    p.start()

    assert p.token == token  # the CLI's login stays valid
    status, after = p.api("GET", "/v1/apps/keep")
    assert status == 200
    for key in ["guid", "state", "instances", "memory_mb", "env", "droplet", "package",
                "detected_buildpack", "buildpacks", "health_check_type"]:
        assert after[key] == before[key], key
    assert after["env"]["GREETING"] == "kept"
    assert sorted(after["routes"]) == ["keep.localhost", "kept.localhost/k"]
    status, idle = p.api("GET", "/v1/apps/idle")
    assert idle["state"] == "STOPPED" and idle["env"] == {"X": "1"} and idle["routes"] == []
    domains = [d["name"] for d in p.api("GET", "/v1/domains")[1]["domains"]]
    assert "example.test" in domains
    # what should run runs again, and sees its settings
    p.wait_for(lambda: running(p, "keep", 2), 30, "keep running again after restart")
    p.wait_for(lambda: through_router(p, "keep.localhost")[0] == 200, 10, "keep via router")
    assert "kept" in through_router(p, "keep.localhost")[1]
    # the router's access lines reach the app's log over the bus
    p.wait_for(lambda: "[RTR/0] OUT GET / 200" in p.api("GET", "/v1/apps/keep/logs?recent=1")[1],
               10, "an [RTR/0] line in the log")


def logging_app(tmp_path):
    """python-web, answering 200 on /n/... too, so every request of a loop is one log line."""
    app = tmp_path / "logger"
    shutil.copytree(PYTHON_WEB, app)
    src = (app / "app.py").read_text()
    patched = src.replace('if self.path != "/":',
                          'if self.path != "/" and not self.path.startswith("/n/"):')
    assert patched != src
    (app / "app.py").write_text(patched)
    return str(app)


def web_instance(p, name):
    status, app = p.api("GET", f"/v1/apps/{name}")
    running = [i for i in app.get("instances_detail", []) if i["state"] == "RUNNING"]
    return running[0] if len(running) == 1 else None


def app_log(p, name):
    return p.api("GET", f"/v1/apps/{name}/logs?recent=1&lines=1000")[1]


class RequestLoop:
    """Requests through the router, about 20 a second (so the app's log, which keeps its last
    1000 lines, still holds what a test looks for), until stopped; records every failure."""

    def __init__(self, p, host):
        import threading
        self.p, self.host = p, host
        self.count = 0
        self.failures = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        while not self.stopped.is_set():
            try:
                status, body = through_router(self.p, self.host, f"/n/loop-{self.count}")
            except Exception as e:  # a refused or reset connection is a failure too
                status, body = None, repr(e)
            if status != 200:
                self.failures.append((self.count, status, body[:200]))
            self.count += 1
            self.stopped.wait(0.05)

    def stop(self):
        self.stopped.set()
        self.thread.join()
        return self.failures


@pytest.mark.parametrize("how", ["kill -9", "SIGUSR2"])
def test_instances_keep_serving_while_skiffd_is_away_and_are_adopted(platform, tmp_path, how):
    p = platform
    r = p.cli("push", "keeper", "-p", logging_app(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    p.wait_for(lambda: web_instance(p, "keeper"), 30, "keeper running")
    p.wait_for(lambda: through_router(p, "keeper.localhost")[0] == 200, 10, "via router")
    before = web_instance(p, "keeper")
    pids = instance_pids(p)
    router = router_pid(p)
    assert len(pids) == 1

    loop = RequestLoop(p, "keeper.localhost")
    p.wait_for(lambda: loop.count >= 10, 10, "the request loop to run")
    if how == "kill -9":
        os.kill(p.proc.pid, signal.SIGKILL)
        p.proc.wait()
    else:
        os.kill(p.proc.pid, signal.SIGUSR2)
        p.proc.wait(10)
        assert p.proc.returncode == 0, p.output()
        assert "Sanitizer" not in p.output()
    # skiffd is away: the app keeps answering and logging each request (its shim reads)
    marks = []
    for i in range(50):
        status, body = through_router(p, "keeper.localhost", f"/n/away-{i}")
        assert status == 200, (i, status, body)
        marks.append(f"GET /n/away-{i} 200")
    assert pid_alive(router) and all(pid_alive(pid) for pid in pids)

    p.start()
    # adopted: the same instance on the same port, not restarted, RUNNING
    p.wait_for(lambda: web_instance(p, "keeper"), 30, "keeper adopted")
    after = web_instance(p, "keeper")
    assert (after["guid"], after["port"]) == (before["guid"], before["port"])
    assert instance_pids(p) == pids and all(pid_alive(pid) for pid in pids)
    assert router_pid(p) == router
    assert "kept running across a restart" in app_log(p, "keeper")
    # what it wrote while skiffd was away reaches its log
    p.wait_for(lambda: all(m in app_log(p, "keeper") for m in marks), 10,
               "the lines written while skiffd was away in the app's log")
    seen = loop.count
    p.wait_for(lambda: loop.count >= seen + 10, 10, "more requests after the restart")
    failures = loop.stop()
    assert not failures, failures[:5]
    # the app's log still gets lines as they come
    assert through_router(p, "keeper.localhost", "/n/after")[0] == 200
    p.wait_for(lambda: "GET /n/after 200" in app_log(p, "keeper"), 10, "a line after adoption")


def guid_pids(p, name):
    """{instance guid: pid} of the web instances of `name` the API shows RUNNING (the pid from
    the executor's run/instance-GUID.pid)."""
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return {i["guid"]: read_pid_file(os.path.join(p.home, "run", f"instance-{i['guid']}.pid"))
            for i in app["instances_detail"] if i["state"] == "RUNNING"}


def test_sigusr2_adopts_every_instance_with_its_guid_and_pid(platform):
    """kill -USR2, then a new skiffd: each instance of several apps is adopted (the same guid
    and the same process), none is started anew, and each is RUNNING and routed at once."""
    p = platform
    for name, n in (("pair", 2), ("solo", 1)):
        r = p.cli("push", name, "-p", PYTHON_WEB, "-i", str(n))
        assert r.returncode == 0, r.stdout + r.stderr
    before = {name: guid_pids(p, name) for name in ("pair", "solo")}
    assert [len(before["pair"]), len(before["solo"])] == [2, 1], before

    p.stop(signal.SIGUSR2)
    assert p.proc.returncode == 0, p.output()
    assert all(pid_alive(pid) for pids in before.values() for pid in pids.values())

    p.start()
    p.wait_for(lambda: all(len(guid_pids(p, name)) == len(before[name]) for name in before), 30,
               "every instance RUNNING again")
    for name in before:
        assert guid_pids(p, name) == before[name], (name, app_log(p, name))
        # the log skiffd keeps in memory starts empty: nothing was started since
        assert "Starting instance" not in app_log(p, name), app_log(p, name)
        assert through_router(p, f"{name}.localhost")[0] == 200
    assert "kept running across a restart" in app_log(p, "pair")


def processes_of(home):
    """Pids of processes whose command line or environment names the home folder."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if (home.encode() in cmd or home.encode() in env) and pid_alive(int(name)):
            found.append((int(name), cmd.replace(b"\0", b" ")[:120]))
    return found


def test_sigterm_leaves_no_process_behind(platform):
    p = platform
    r = p.cli("push", "gone", "-p", PYTHON_WEB, "-i", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    p.wait_for(lambda: running(p, "gone", 2), 30, "2 instances of gone")
    run = os.path.join(p.home, "run")
    shims = instance_shims(run)
    assert len(shims) == 2 and len(instance_pids(p)) == 2
    assert processes_of(p.home)
    p.stop(signal.SIGTERM)
    assert p.proc.returncode == 0, p.output()
    assert "Sanitizer" not in p.output()
    assert processes_of(p.home) == []


def test_an_instance_that_exits_while_skiffd_is_away_is_reported_and_restarted(platform):
    p = platform
    r = p.cli("push", "fragile", "-p", PYTHON_WEB)
    assert r.returncode == 0, r.stdout + r.stderr
    p.wait_for(lambda: web_instance(p, "fragile"), 30, "fragile running")
    before = web_instance(p, "fragile")
    [pid] = instance_pids(p)
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    os.kill(pid, signal.SIGKILL)
    p.wait_for(lambda: not pid_alive(pid), 5, "the instance to die")
    p.start()
    p.wait_for(lambda: "crashed: killed by signal 9" in app_log(p, "fragile"), 10,
               "the crash reported with its signal")
    p.wait_for(lambda: web_instance(p, "fragile"), 30, "fragile running again")
    assert web_instance(p, "fragile")["guid"] != before["guid"]
    status, app = p.api("GET", "/v1/apps/fragile")
    assert app["instances_detail"][0]["crash_count"] >= 1
    p.wait_for(lambda: through_router(p, "fragile.localhost")[0] == 200, 10, "via router")


def test_an_instance_whose_shim_died_with_skiffd_is_ended_and_replaced(platform):
    p = platform
    r = p.cli("push", "orphan", "-p", PYTHON_WEB)
    assert r.returncode == 0, r.stdout + r.stderr
    p.wait_for(lambda: web_instance(p, "orphan"), 30, "orphan running")
    before = web_instance(p, "orphan")
    [pid] = instance_pids(p)
    run = os.path.join(p.home, "run")
    [shim_file] = instance_shims(run)
    shim = int(open(os.path.join(run, shim_file)).read())
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    os.kill(shim, signal.SIGKILL)  # nobody can adopt the instance now
    p.start()
    # the instance goes with its shim or, failing that, the next skiffd ends what it cannot
    # adopt (tests/unit/test_executor.c); either way a new instance runs in its place
    p.wait_for(lambda: not pid_alive(pid), 20, "the orphaned instance to be ended")
    p.wait_for(lambda: web_instance(p, "orphan") and
               web_instance(p, "orphan")["guid"] != before["guid"], 30, "a new instance")
    p.wait_for(lambda: through_router(p, "orphan.localhost")[0] == 200, 10, "via router")
    assert pid not in instance_pids(p)


def test_instances_of_an_app_stopped_while_skiffd_was_away_are_stopped(platform):
    p = platform
    r = p.cli("push", "doomed", "-p", PYTHON_WEB)
    assert r.returncode == 0, r.stdout + r.stderr
    p.wait_for(lambda: web_instance(p, "doomed"), 30, "doomed running")
    [pid] = instance_pids(p)
    p.stop(signal.SIGUSR2)
    assert p.proc.returncode == 0, p.output()
    assert pid_alive(pid)
    # stopped behind its back (the store is all a new skiffd trusts)
    import sqlite3
    db = sqlite3.connect(os.path.join(p.home, "skiff.db"))
    changed = db.execute("UPDATE apps SET state = 'STOPPED' WHERE name = 'doomed'").rowcount
    db.commit()
    db.close()
    assert changed == 1
    p.start()
    p.wait_for(lambda: not pid_alive(pid), 20, "the unwanted instance to be stopped")
    # its pid file goes once skiffd has heard from its shim that it ended (a moment after)
    p.wait_for(lambda: instance_pids(p) == [], 10, "its pid file to be removed")


def test_a_router_that_dies_is_started_again(platform):
    p = platform
    first = platform.wait_for(lambda: os.path.exists(os.path.join(p.home, "run", "router.pid"))
                              and router_pid(p), 10, "router pid")
    platform.wait_for(lambda: pid_alive(first), 10, "router alive")
    os.kill(first, signal.SIGKILL)
    p.wait_for(lambda: router_pid(p) != first and pid_alive(router_pid(p)), 10,
               "a new router")
    assert p.proc.poll() is None


def test_a_second_skiffd_on_the_same_home_is_refused(platform):
    other = Platform(home=platform.home)  # same home, other ports
    r = subprocess.run([os.path.join(BIN_DIR, "skiffd")], env=other.env(), capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert "another skiffd is running" in r.stderr
    # the first one is untouched
    assert platform.info()["api_url"] == platform.api_url
    assert platform.api("GET", "/v1/apps")[0] == 200


def slow_buildpack(tmp_path, seconds):
    bp = tmp_path / "slow-bp"
    (bp / "bin").mkdir(parents=True)
    (bp / "bin" / "detect").write_text("#!/bin/sh\necho slow\n")
    (bp / "bin" / "compile").write_text(
        f"#!/bin/sh\necho compiling slowly\nsleep {seconds}\necho done compiling\n")
    (bp / "bin" / "release").write_text(
        "#!/bin/sh\nprintf 'default_process_types:\\n  web: python3 -m http.server $PORT\\n'\n")
    for f in ("detect", "compile", "release"):
        (bp / "bin" / f).chmod(0o755)
    return str(bp)


def start_stage(p, name):
    import http.client
    host, port = p.api_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", f"/v1/apps/{name}/stage", headers={"Authorization": "Bearer " + p.token})
    r = conn.getresponse()
    assert r.status == 200
    return conn, r


def tar_of(files):
    import io
    import tarfile
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as t:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return data.getvalue()


def test_sigterm_during_staging_exits_cleanly(platform, tmp_path):
    p = platform
    bp = slow_buildpack(tmp_path, 60)
    assert p.api("PUT", "/v1/apps/slow", {"buildpacks": [bp]})[0] == 201
    assert p.api("PUT", "/v1/apps/slow/bits", raw=tar_of({"a.txt": b"x"}))[0] == 201
    conn, r = start_stage(p, "slow")
    p.wait_for(lambda: "compiling slowly" in r.readline().decode(), 20, "staging to begin")
    p.stop(signal.SIGTERM, timeout=20)
    assert p.proc.returncode == 0, p.output()
    assert "Sanitizer" not in p.output()
    conn.close()


def test_staging_that_times_out_fails_and_says_why(tmp_path):
    p = Platform(extra_env={"SKIFF_STAGING_TIMEOUT": "2"}).start()
    try:
        bp = slow_buildpack(tmp_path, 60)
        assert p.api("PUT", "/v1/apps/slow", {"buildpacks": [bp]})[0] == 201
        assert p.api("PUT", "/v1/apps/slow/bits", raw=tar_of({"a.txt": b"x"}))[0] == 201
        conn, r = start_stage(p, "slow")
        lines = [json.loads(l) for l in r.read().decode().splitlines() if l.strip()]
        conn.close()
        assert lines[-1]["done"] and lines[-1]["ok"] is False, lines
        assert lines[-1]["error"]["code"] == "staging_failed"
        assert "time" in lines[-1]["error"]["message"].lower(), lines[-1]
        status, app = p.api("GET", "/v1/apps/slow")
        assert app["droplet"] is None
    finally:
        p.stop()
        p.kill_all()


def test_a_request_for_a_function_at_zero_wakes_it_through_the_bus(platform):
    p = platform
    r = p.cli("push", "resize", "--function",
              os.path.join(ROOT, "examples", "functions", "resize.py") + ":handle")
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.api("PATCH", "/v1/apps/resize", {"instances": 0})[0] == 200
    p.wait_for(lambda: p.api("GET", "/v1/apps/resize")[1]["running"] == 0, 15, "zero instances")
    p.wait_for(lambda: json.load(open(os.path.join(p.home, "run", "routes.json")))["routes"][0]
               ["backends"] == [], 10, "the router to know there is no backend")
    req = urllib.request.Request(
        p.router_url + "/", data=json.dumps({"size": 10}).encode(), method="POST",
        headers={"Host": "resize.localhost", "ce-id": "1", "ce-source": "test",
                 "ce-specversion": "1.0", "ce-type": "image.uploaded",
                 "Content-Type": "application/json"})
    # the router holds the request, asks skiffd over the bus, and the new instance answers
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["size"] == 5
    status, app = p.api("GET", "/v1/apps/resize")
    assert app["instances"] == 1 and app["running"] == 1


def test_kill_9_during_writes_loses_nothing_that_was_answered(platform):
    import threading
    p = platform
    created = []
    stop = threading.Event()

    def writer(k):
        i = 0
        while not stop.is_set():
            try:
                status, _ = p.api("POST", "/v1/apps", {"name": f"w{k}-{i}", "env": {"I": str(i)}})
            except Exception:
                return  # skiffd is gone
            if status == 201:
                created.append(f"w{k}-{i}")
            i += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    p.wait_for(lambda: len(created) >= 60, 30, "some apps created")
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    p.start()
    status, body = p.api("GET", "/v1/apps")
    names = {a["name"] for a in body["apps"]}
    missing = [n for n in created if n not in names]
    assert not missing, missing
    status, app = p.api("GET", f"/v1/apps/{created[-1]}")
    assert app["env"]["I"] == created[-1].split("-")[1]


def egress_pools():
    r = subprocess.run(["nft", "list", "set", "inet", "skiff", "egress_pools"],
                       capture_output=True, text=True)
    return r.stdout


def test_skiff_egress_0_turns_egress_off(tmp_path):
    """SKIFF_EGRESS=0 (README: instances reach public addresses through NAT unless it is 0):
    the pool is left out of the firewall's egress set. A pool of its own, so that no other
    platform on the machine decides for it."""
    pool = "10.239.0.0/16"
    for egress, listed in (("0", False), ("1", True)):
        p = Platform(extra_env={"SKIFF_EGRESS": egress, "SKIFF_NETWORK_POOL": pool}).start()
        try:
            assert (pool in egress_pools()) == listed, (egress, egress_pools())
            assert "SKIFF_EGRESS" not in p.output(), p.output()
        finally:
            p.stop()
            p.kill_all()
            shutil.rmtree(p.home, ignore_errors=True)
    # a value that is no number is said, and the default (on) kept
    p = Platform(extra_env={"SKIFF_EGRESS": "off", "SKIFF_NETWORK_POOL": pool}).start()
    try:
        assert "SKIFF_EGRESS=off is not a whole number of at least 0" in p.output(), p.output()
    finally:
        p.stop()
        p.kill_all()
        shutil.rmtree(p.home, ignore_errors=True)
