"""End-to-end: sidecars (Cloud Foundry's extra processes in an instance's container).

A web app pushed by manifest with a sidecar (a tiny HTTP server on localhost:8081) answers its
route through it: same network namespace, same environment, same files. The sidecar's lines
are tagged [APP/PROC/WEB/SIDECAR/NAME/n]; killing it restarts the instance, with the reason in
the log; a push without sidecars removes them. Bad sidecars (a process type the app does not
have, more memory than the process, no command) are refused with messages that say what to do.
Hostile: a sidecar runs as the program does (same unprivileged uid, no capabilities,
no_new_privs, the filter, the same cgroup), sees no host process, and a fork bomb in it is
bounded by the instance's process limit while the platform goes on serving."""
import json
import os
import signal

import pytest

from conftest import http_get, out, wait_for

APP_PY = '''\
import json, os, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def me():
    status = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("CapEff", "CapBnd", "NoNewPrivs", "Seccomp"):
                status[k] = v.strip()
    with open("/proc/self/cgroup") as f:
        cgroup = f.read()
    return {"uid": os.getuid(), "pid": os.getpid(), "status": status, "cgroup": cgroup,
            "guid": os.environ.get("CF_INSTANCE_GUID"),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit())}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/forks":
            try:
                with open("/home/vcap/tmp/forks") as f:
                    body = f.read()
            except OSError:
                self.send_error(503)
                return
        else:
            with urllib.request.urlopen("http://127.0.0.1:8081/", timeout=5) as r:
                sidecar = json.load(r)
            body = json.dumps({"web": me(), "sidecar": sidecar})
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


# a program may claim to be a sidecar it does not have: its line stays its own
print("\\x1eevil\\x1eforged line", flush=True)
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
'''

SIDECAR_PY = '''\
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from app_info import me


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        info = me()
        info["port_env"] = os.environ.get("PORT")
        info["vcap_application"] = json.loads(os.environ.get("VCAP_APPLICATION", "{}"))
        info["cwd"] = os.getcwd()
        data = json.dumps(info).encode()
        print("sidecar served", self.path, flush=True)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


print("sidecar listening on 8081", flush=True)
ThreadingHTTPServer(("127.0.0.1", 8081), Handler).serve_forever()
'''

# Forks sleepers until the kernel says no, says how many it got, lets them go, stays up.
BOMB_PY = '''\
import os, signal, sys, time
kids = []
while len(kids) < 100000:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        try:
            os.execv("/bin/sleep", ["sleep", "1000"])
        finally:
            os._exit(1)
    kids.append(pid)
for pid in kids:
    os.kill(pid, signal.SIGKILL)
for pid in kids:
    os.waitpid(pid, 0)
with open("/home/vcap/tmp/forks.new", "w") as f:
    f.write(str(len(kids)))
os.rename("/home/vcap/tmp/forks.new", "/home/vcap/tmp/forks")
print("forked", len(kids), flush=True)
time.sleep(100000)
'''


def make_app(tmp_path, name, sidecars_yaml, memory="256M", extra=None):
    app = os.path.join(str(tmp_path), name)
    os.makedirs(app, exist_ok=True)
    files = {"app.py": APP_PY, "sidecar.py": SIDECAR_PY, "bomb.py": BOMB_PY,
             # the sidecar's helper: the same me() as the web program's, read from the app
             "app_info.py": APP_PY.split("\n\nclass Handler")[0] + "\n"}
    files.update(extra or {})
    for fname, text in files.items():
        with open(os.path.join(app, fname), "w") as f:
            f.write(text)
    manifest = (f"applications:\n- name: {name}\n  path: .\n  memory: {memory}\n"
                f"  command: python3 app.py\n  routes: [{{route: {name}.localhost}}]\n")
    if sidecars_yaml:
        manifest += "  sidecars:\n" + sidecars_yaml
    path = os.path.join(app, "manifest.yml")
    with open(path, "w") as f:
        f.write(manifest)
    return path


BACKEND = """\
  - name: backend
    process_types: [web]
    command: python3 sidecar.py
    memory: 64M
"""


def push(platform, manifest, ok=True):
    r = platform.cli("push", "-f", manifest, timeout=300)
    if ok:
        assert r.returncode == 0, out(r)
    return r


def through_route(platform, name):
    """The JSON the app answers on its route once it answers (through its sidecar)."""
    def get():
        status, text = http_get(platform.router_url + "/", host=f"{name}.localhost")
        return json.loads(text) if status == 200 else None
    return wait_for(get, timeout=60, what=f"{name} answering through its sidecar")


def recent_logs(platform, name):
    return platform.cli("logs", name, "--recent").stdout


def instances(platform, name):
    status, app = platform.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return app["instances_detail"]


def host_pids_of(instance_guid, script):
    """Host pids of the python processes running `script` in that instance."""
    needle = b"CF_INSTANCE_GUID=" + instance_guid.encode() + b"\0"
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if script.encode() not in argv:
                continue
            with open(f"/proc/{p}/environ", "rb") as f:
                if needle in f.read():
                    pids.append(int(p))
        except OSError:
            pass
    return pids


def cgroup_lines(text):
    """{controllers: path} of a /proc/PID/cgroup."""
    return {l.split(":", 2)[1]: l.split(":", 2)[2] for l in text.splitlines() if l.count(":") >= 2}


def cgroup_v1(text):
    return any("memory" in c.split(",") for c in cgroup_lines(text))


def assert_own_memory_cgroup(web, side, name):
    """A sidecar with `memory` is in a cgroup of its own under the program's (cgroup v1; on v2
    it shares the program's, which cannot have limited children while it holds processes)."""
    if not cgroup_v1(web):
        assert side == web
        return
    web_lines, side_lines = cgroup_lines(web), cgroup_lines(side)
    for controllers, path in web_lines.items():
        if set(controllers.split(",")) & {"memory", "pids", "cpuacct"}:
            assert side_lines[controllers] == path.rstrip("/") + "/sidecar-" + name, (web, side)


def test_web_app_answers_through_its_sidecar_in_one_container(platform, tmp_path):
    manifest = make_app(tmp_path, "shop", BACKEND)
    push(platform, manifest)
    info = through_route(platform, "shop")
    web, side = info["web"], info["sidecar"]
    # one instance, one container: same instance, environment, folder, cgroup, processes
    assert side["guid"] == web["guid"] and side["guid"]
    assert side["port_env"] == "8080"
    assert side["vcap_application"]["application_name"] == "shop"
    assert side["cwd"] == "/home/vcap/app"
    assert_own_memory_cgroup(web["cgroup"], side["cgroup"], "backend")
    assert side["pid"] in web["pids"] and web["pid"] in side["pids"]
    # as the program is: vcap, nothing of root, the filter
    for who in (web, side):
        assert who["uid"] == 2000, who
        assert who["status"]["CapEff"] == "0000000000000000", who
        assert who["status"]["CapBnd"] == "0000000000000000", who
        assert who["status"]["NoNewPrivs"] == "1", who
        assert who["status"]["Seccomp"] == "2", who
    # the host is out of sight: a handful of processes, not skiffd's
    assert len(side["pids"]) < 20, side["pids"]
    # its lines are its own
    logs = wait_for(lambda: (l := recent_logs(platform, "shop")) and
                    "sidecar served" in l and l, timeout=20, what="the sidecar's lines")
    assert "[APP/PROC/WEB/SIDECAR/BACKEND/0]" in logs, logs
    tagged = [l for l in logs.splitlines() if "sidecar listening on 8081" in l]
    assert tagged and all("[APP/PROC/WEB/SIDECAR/BACKEND/0]" in l for l in tagged), logs
    assert "with sidecar backend" in logs, logs
    assert "SIDECAR/EVIL" not in logs and "forged line" in logs, logs
    # skiff app shows them
    r = platform.cli("app", "shop")
    assert r.returncode == 0, out(r)
    assert "sidecars:    backend (in web, 64M): python3 sidecar.py" in r.stdout, r.stdout

    # a push without them removes them: the instance runs without it
    with open(manifest) as f:
        text = f.read()
    with open(manifest, "w") as f:
        f.write(text.split("  sidecars:\n")[0])
    push(platform, manifest)
    status, app = platform.api("GET", "/v1/apps/shop")
    assert app["sidecars"] == [], app

    def proxy_fails():
        status, _ = http_get(platform.router_url + "/", host="shop.localhost")
        return status >= 500 and all(not host_pids_of(i["guid"], "sidecar.py")
                                     for i in instances(platform, "shop"))
    wait_for(proxy_fails, timeout=60, what="the app running without its sidecar")
    assert "sidecars:" not in platform.cli("app", "shop").stdout
    # the old instance was stopped: its sidecar ended as asked, which is no failure to tell
    assert "the instance ends with it" not in recent_logs(platform, "shop")

    # a revision carries them: rolling back to the first push brings the sidecar back
    r = platform.cli("rollback", "shop", "1", timeout=300)
    assert r.returncode == 0, out(r)
    assert [s["name"] for s in platform.api("GET", "/v1/apps/shop")[1]["sidecars"]] == ["backend"]
    assert through_route(platform, "shop")["sidecar"]["cwd"] == "/home/vcap/app"


def test_a_sidecar_that_ends_restarts_the_instance(platform, tmp_path):
    push(platform, make_app(tmp_path, "shop", BACKEND))
    first = through_route(platform, "shop")["web"]["guid"]
    pids = wait_for(lambda: host_pids_of(first, "sidecar.py"), timeout=10,
                    what="the sidecar's host pid")
    os.kill(pids[0], signal.SIGKILL)

    def replaced():
        info = through_route(platform, "shop")
        return info["web"]["guid"] != first and info
    info = wait_for(replaced, timeout=60, what="a new instance with its sidecar")
    assert info["sidecar"]["guid"] == info["web"]["guid"]
    logs = recent_logs(platform, "shop")
    assert ("[APP/PROC/WEB/SIDECAR/BACKEND/0] sidecar backend was killed by signal 9" in logs
            or "sidecar backend was killed by signal 9" in logs), logs
    assert any(i["crash_count"] >= 1 for i in instances(platform, "shop")), \
        instances(platform, "shop")


# Takes memory 4 MB at a time, saying how much it holds, then holds it: past its limit the
# kernel kills it on the way.
HOG_PY = '''\
import sys, time
held = []
for i in range(1, 33):
    held.append(b"x" * (4 << 20))
    print("holding", 4 * i, "MB", flush=True)
print("held it all", flush=True)
time.sleep(100000)
'''


def test_a_sidecar_past_its_memory_is_killed_not_the_program(platform, tmp_path):
    """Cloud Foundry's sidecar `memory`, enforced apart (cgroup v1): a sidecar that takes more
    than its 32M is killed by the kernel at its limit, although the instance (256M) has room;
    the program is not what is killed for it. As in Cloud Foundry (a sidecar and its process
    are codependent), the instance then ends with the sidecar and is restarted, its crash
    naming the sidecar."""
    with open("/proc/self/cgroup") as f:
        if not cgroup_v1(f.read()) and not os.path.isdir("/sys/fs/cgroup/memory"):
            pytest.skip("cgroup v2: a sidecar's memory is not enforced apart there")
    sidecars = ("  - name: hog\n    process_types: [web]\n    command: python3 hog.py\n"
                "    memory: 32M\n")
    push(platform, make_app(tmp_path, "hoggy", sidecars, extra={"hog.py": HOG_PY}), ok=False)

    def crashed_for_it():
        logs = recent_logs(platform, "hoggy")
        return "sidecar hog out of memory (its limit: 32 MB)" in logs and logs
    logs = wait_for(crashed_for_it, timeout=120, what="the instance's crash naming the sidecar")
    held = [int(l.split("holding ")[1].split()[0]) for l in logs.splitlines()
            if "[APP/PROC/WEB/SIDECAR/HOG/0]" in l and "holding " in l]
    assert held and max(held) <= 32, logs  # stopped at its own limit, not the instance's
    assert "held it all" not in logs, logs
    assert "crashed: out of memory" not in logs, logs  # the instance's own limit was not hit
    assert any(i["crash_count"] >= 1 for i in instances(platform, "hoggy"))
    # restarted, and killed again at the same place: the program never outlives it
    wait_for(lambda: recent_logs(platform, "hoggy").count(
        "sidecar hog out of memory") >= 2, timeout=120, what="a second start and kill")


@pytest.mark.parametrize("sidecars, message", [
    ("  - name: s\n    process_types: [worker]\n    command: python3 sidecar.py\n",
     'sidecar "s": the app has no process type "worker" (it has: web'),
    ("  - name: s\n    process_types: [web]\n    command: python3 sidecar.py\n"
     "    memory: 256M\n",
     "the sidecars of process web take 256 MB of memory, not less than the process's 256 MB"),
])
def test_bad_sidecars_are_refused_with_what_to_do(platform, tmp_path, sidecars, message):
    r = push(platform, make_app(tmp_path, "shop", sidecars), ok=False)
    assert r.returncode != 0, out(r)
    assert message in r.stderr, out(r)


def test_api_refuses_bad_sidecar_bodies(platform):
    assert platform.api("PUT", "/v1/apps/shop", {})[0] in (200, 201)
    bad = [
        ([{"name": "s", "process_types": ["web"], "command": "  "}], 'sidecar "s" needs a command'),
        ([{"name": "s", "process_types": ["web"]}], 'sidecar "s" needs a command'),
        ([{"name": "s", "process_types": ["web"], "command": "x" * 5000}],
         "at most 4096 characters"),
        ([{"name": "s", "process_types": [], "command": "x"}], "needs process_types"),
        ([{"name": "../x", "process_types": ["web"], "command": "x"}], "sidecars[].name"),
        ([{"name": "a\u001eb", "process_types": ["web"], "command": "x"}], "sidecars[].name"),
        ([{"name": "s", "process_types": ["web"], "command": "x"}] * 2, "named twice"),
        ([{"name": f"s{i}", "process_types": ["web"], "command": "x"} for i in range(9)],
         "at most 8"),
        ([{"name": "s", "process_types": ["web"], "command": "x", "memory_mb": -1}],
         "memory_mb must be"),
        ([{"name": "s", "process_types": ["web"], "command": "x", "user": "root"}], "user"),
        ("all of them", "sidecars"),
        ([{"name": "s", "process_types": [{"$ne": 1}], "command": "x"}], "no process type"),
    ]
    for body, message in bad:
        status, res = platform.api("PATCH", "/v1/apps/shop", {"sidecars": body})
        assert status in (400, 422), (body, status, res)
        assert message in res["error"]["message"], (body, res)
    status, app = platform.api("GET", "/v1/apps/shop")
    assert app["sidecars"] == []
    # the process's memory cannot then shrink under its sidecars'
    status, res = platform.api("PATCH", "/v1/apps/shop", {"sidecars": [
        {"name": "s", "process_types": ["web"], "command": "x", "memory_mb": 100}]})
    assert status == 200, res
    status, res = platform.api("PATCH", "/v1/apps/shop", {"memory_mb": 64})
    assert status == 422 and "give the sidecars less or the process more" in \
        res["error"]["message"], res
    # null removes them
    status, res = platform.api("PATCH", "/v1/apps/shop", {"sidecars": None})
    assert status == 200 and res["sidecars"] == [], res


def test_a_fork_bombing_sidecar_is_bounded(platform, tmp_path):
    sidecars = "  - name: bomb\n    process_types: [web]\n    command: python3 bomb.py\n"
    push(platform, make_app(tmp_path, "bomb", sidecars, memory="1G"))

    def forks():
        status, text = http_get(platform.router_url + "/forks", host="bomb.localhost")
        return status == 200 and int(text)
    count = wait_for(forks, timeout=120, what="the sidecar's fork count")
    # the instance's process limit (1024, the sidecar's own and the program's together)
    assert 10 < count < 1024, count
    assert "forked" in recent_logs(platform, "bomb")
    # the platform and the instance go on
    assert platform.cli("apps").returncode == 0
    assert forks() == count
