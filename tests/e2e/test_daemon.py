"""skiffd's life: SIGTERM stops instances and exits 0; a restart keeps every app, route and
setting and starts what should run; after a kill -9 the next skiffd cleans up the instances
left behind, and the router keeps serving meanwhile."""
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request

from conftest import BIN_DIR, ROOT, Platform

PYTHON_WEB = os.path.join(ROOT, "examples", "python-web")


def instance_pids(p):
    run = os.path.join(p.home, "run")
    pids = []
    for name in os.listdir(run):
        if name.startswith("instance-") and name.endswith(".pid"):
            try:
                pids.append(int(open(os.path.join(run, name)).read()))
            except (OSError, ValueError):
                pass
    return pids


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


def test_kill_9_leaves_the_router_serving_and_the_next_skiffd_cleans_up(platform):
    p = platform
    r = p.cli("push", "survivor", "-p", PYTHON_WEB)
    assert r.returncode == 0, r.stdout + r.stderr
    p.wait_for(lambda: running(p, "survivor"), 30, "survivor running")
    p.wait_for(lambda: through_router(p, "survivor.localhost")[0] == 200, 10, "via router")
    old_pids = instance_pids(p)
    router = router_pid(p)
    assert old_pids

    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    # skiffd is gone: the router still answers with the table it knew. (The instance's
    # stdout pipe went with skiffd, so an app that logs each request may fail it: 502.)
    assert pid_alive(router)
    assert through_router(p, "survivor.localhost")[0] in (200, 502)
    assert through_router(p, "unknown.localhost")[0] == 404

    p.start()
    # the old instances are stopped, new ones run, and the same router is kept
    for pid in old_pids:
        p.wait_for(lambda: not pid_alive(pid), 10, f"leftover instance {pid} to be stopped")
    p.wait_for(lambda: running(p, "survivor"), 30, "survivor running again")
    assert router_pid(p) == router and pid_alive(router)
    p.wait_for(lambda: through_router(p, "survivor.localhost")[0] == 200, 10, "via router again")
    assert set(instance_pids(p)).isdisjoint(old_pids)


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
