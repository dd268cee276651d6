"""One-off tasks (`skiff run-task`, `skiff tasks`, `skiff terminate-task`), as Cloud Foundry's:
a command run once from the app's droplet with the app's environment and services, its output
in the app's logs as [APP/TASK/NAME/0], its end recorded (SUCCEEDED, or FAILED with a reason);
and what a hostile tenant would try: other spaces, auditors, odd input, a task that eats
memory or forks without end, a task looking at the host, a skiffd killed under a task."""
import os
import re
import signal
import sqlite3
import urllib.parse

import pytest

from conftest import Platform, deploy_bits, http_get, out, wait_for

PASSWORD = "a long enough password"
WEB = [("Procfile", b"web: python3 -m http.server $PORT\n"), ("index.html", b"serving")]


def deploy(p, name="shop", memory=128, env=None):
    deploy_bits(p, name, WEB, {"memory_mb": memory, "env": env or {}})
    wait_for(lambda: p.api("GET", f"/v1/apps/{name}")[1].get("running") == 1, 60,
             f"{name} running")


def tasks(p, app="shop", token=True, query=""):
    status, body = p.api("GET", f"/v1/apps/{app}/tasks{query}", token=token)
    assert status == 200, body
    return body["tasks"]


def task(p, seq, app="shop"):
    return next(t for t in tasks(p, app) if t["sequence_id"] == seq)


def ended(p, seq, app="shop"):
    t = task(p, seq, app)
    return t["state"] in ("SUCCEEDED", "FAILED") and t


def wait_ended(p, seq, app="shop", timeout=60):
    try:
        wait_for(lambda: ended(p, seq, app), timeout, f"task {seq} of {app} to end")
    except AssertionError as e:  # what the task and skiffd said, to tell why
        raise AssertionError(f"{e}\ntask: {task(p, seq, app)}\n{p.output()}") from None
    return task(p, seq, app)


def run(p, command, app="shop", **fields):
    status, body = p.api("POST", f"/v1/apps/{app}/tasks", {"command": command, **fields})
    assert status == 202, body
    return body


def serves(p, host="shop.localhost"):
    return http_get(p.router_url + "/", host=host) == (200, "serving")


def recent_logs(p, app="shop"):
    r = p.cli("logs", app, "--recent")
    assert r.returncode == 0, out(r)
    return r.stdout


@pytest.fixture(scope="module")
def plat():
    p = Platform().start()
    try:
        deploy(p, env={"GREETING": "hello from the app"})
        yield p
    finally:
        p.close()


def test_exit_status_env_and_logs(plat):
    """A task runs once with the app's environment; its lines are tagged with its name and its
    exit status decides SUCCEEDED or FAILED ("exited with status 3"). The app's instances are
    untouched: a task is not one of them and takes no requests."""
    p = plat
    r = p.cli("run-task", "shop", 'echo "$GREETING"; echo "to stderr" >&2; exit 3',
              "--name", "three")
    assert r.returncode == 0, out(r)
    m = re.search(r"Task (\d+) \(three\) of shop is running", r.stdout)
    assert m, out(r)
    three = int(m.group(1))
    t = wait_ended(p, three)
    assert t["state"] == "FAILED" and t["failure_reason"] == "exited with status 3", t
    assert t["exit_status"] == 3 and t["memory_mb"] == 128 and t["name"] == "three", t

    script = ("import json, os; a = json.loads(os.environ['VCAP_APPLICATION']); "
              "print('app', a['application_name'], 'services', os.environ['VCAP_SERVICES'])")
    ok = run(p, f'python3 -c "{script}"')
    assert ok["state"] == "RUNNING" and re.fullmatch(r"[0-9a-f]{8}", ok["name"]), ok
    assert ok["sequence_id"] == three + 1
    t = wait_ended(p, ok["sequence_id"])
    assert t["state"] == "SUCCEEDED" and t["exit_status"] == 0 and t["failure_reason"] is None, t

    def logged():
        logs = recent_logs(p)
        return ("[APP/TASK/three/0] OUT hello from the app" in logs
                and "[APP/TASK/three/0] ERR to stderr" in logs
                and f"[APP/TASK/{ok['name']}/0] OUT app shop services {{}}" in logs and logs)
    wait_for(logged, 30, "the tasks' lines in the app's logs")

    listing = p.cli("tasks", "shop")
    assert listing.returncode == 0, out(listing)
    assert re.search(r"\bthree\s+FAILED\b.*exited with status 3", listing.stdout), out(listing)
    assert re.search(rf"\b{ok['name']}\s+SUCCEEDED\b", listing.stdout), out(listing)
    status, app = p.api("GET", "/v1/apps/shop")
    assert app["instances"] == 1 and app["running"] == 1, app
    assert serves(p)
    status, one = p.api("GET", f"/v1/apps/shop/tasks/{three}")
    assert status == 200 and one["name"] == "three", one


def test_a_started_task_is_answered_202_when_its_running_state_cannot_be_recorded(plat):
    """The task's record is written, it starts, and then the store refuses the write of its
    RUNNING state (a trigger in skiff.db here; an unreachable database in a cluster): the
    answer is still 202, since an error would have the client run it a second time. Its end
    is recorded as usual."""
    p = plat
    db = sqlite3.connect(os.path.join(p.home, "skiff.db"))
    db.execute("CREATE TRIGGER refuse_running BEFORE UPDATE ON tasks WHEN NEW.state = 'RUNNING'"
               " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    db.commit()
    try:
        status, body = p.api("POST", "/v1/apps/shop/tasks", {"command": "echo ran once",
                                                             "name": "unrecorded"})
        assert status == 202, (status, body)
        assert body["state"] == "RUNNING", body
        wait_for(lambda: "cannot record task %s as RUNNING" % body["guid"] in p.output(), 30,
                 "skiffd to log the refused write")
    finally:
        db.execute("DROP TRIGGER refuse_running")
        db.commit()
        db.close()
    t = wait_ended(p, body["sequence_id"])
    assert t["state"] == "SUCCEEDED", t
    wait_for(lambda: "[APP/TASK/unrecorded/0] OUT ran once" in recent_logs(p), 30,
             "the task's line in the app's logs")


def test_terminate_task(plat):
    """terminate-task stops a running task (CANCELING, then FAILED "task was cancelled"); one
    that ended cannot be cancelled; an id of one app's task names nothing of another app's."""
    p = plat
    deploy(p, "other")
    theirs = run(p, "sleep 600", app="other", name="sleeper")
    mine = run(p, "sleep 600", name="long")
    r = p.cli("terminate-task", "shop", str(mine["sequence_id"]))
    assert r.returncode == 0 and "Terminating task" in r.stdout, out(r)
    t = wait_ended(p, mine["sequence_id"], timeout=30)
    assert t["state"] == "FAILED" and t["failure_reason"] == "task was cancelled", t
    r = p.cli("terminate-task", "shop", str(mine["sequence_id"]))
    assert r.returncode == 1 and "FAILED already and cannot be cancelled" in r.stderr, out(r)
    # shop has no task of the other app's number (or one that ended): theirs runs on
    missing = max(t["sequence_id"] for t in tasks(p)) + theirs["sequence_id"] + 5
    status, body = p.api("POST", f"/v1/apps/shop/tasks/{missing}/cancel")
    assert status == 404, body
    status, body = p.api("POST", f"/v1/apps/shop/tasks/{theirs['guid']}/cancel")
    assert status == 400 and "named by its number" in body["error"]["message"], body
    status, body = p.api("POST", "/v1/apps/shop/tasks/1/cancel")
    assert status == 422, body
    assert task(p, theirs["sequence_id"], "other")["state"] == "RUNNING"
    r = p.cli("terminate-task", "shop", "abc")
    assert r.returncode == 2, out(r)
    assert p.api("POST", f"/v1/apps/other/tasks/{theirs['sequence_id']}/cancel")[0] == 202
    wait_ended(p, theirs["sequence_id"], "other", timeout=30)


def test_bad_input_is_refused_with_a_reason(plat):
    p = plat
    before = len(tasks(p))
    r = p.cli("run-task", "shop", "")
    assert r.returncode == 1 and "a task needs a command" in r.stderr, out(r)
    for body, code, words in (
            ({"command": "   "}, 422, "a task needs a command"),
            ({}, 422, "a task needs a command"),
            ({"command": 5}, 422, "a task needs a command"),
            ({"command": "x" * 5000}, 422, "at most 4096"),
            ({"command": "true", "name": "../../etc"}, 422, "a task's name is"),
            ({"command": "true", "name": "a" * 49}, 422, "a task's name is"),
            ({"command": "true", "name": "a b"}, 422, "a task's name is"),
            ({"command": "true", "name": 7}, 422, "a task's name is"),
            ({"command": "true", "memory_mb": 0}, 422, "memory_mb"),
            ({"command": "true", "memory_mb": "1G"}, 422, "memory_mb"),
            ({"command": "true", "disk": 1}, 400, "unknown field \"disk\"")):
        status, err = p.api("POST", "/v1/apps/shop/tasks", body)
        assert status == code and words in err["error"]["message"], (body, status, err)
    status, err = p.api("POST", "/v1/apps/shop/tasks", raw=b"x" * ((8 << 20) + 1),
                        headers={"Content-Type": "application/json"})
    assert status == 413, err
    r = p.cli("run-task", "shop", "true", "-m", "lots")
    assert r.returncode == 2 and "-m needs a size" in r.stderr, out(r)
    status, err = p.api("POST", "/v1/apps/nosuch/tasks", {"command": "true"})
    assert status == 404, err
    assert p.api("PUT", "/v1/apps/unstaged", {})[0] in (200, 201)
    status, err = p.api("POST", "/v1/apps/unstaged/tasks", {"command": "true"})
    assert status == 422 and "no droplet" in err["error"]["message"], err
    assert len(tasks(p)) == before
    assert p.proc.poll() is None


def test_a_task_cannot_see_the_host(plat):
    p = plat
    probe = (f"test -e {p.home}/api.json && echo LEAK-home; "
             "test -e /etc/shadow && cat /etc/shadow >/dev/null 2>&1 && echo LEAK-shadow; "
             "echo uid=$(id -u) pids=$(ls /proc | grep -c '^[0-9]') home=$HOME")
    t = run(p, probe, name="probe")
    t = wait_ended(p, t["sequence_id"])
    assert t["state"] == "SUCCEEDED", t
    logs = wait_for(lambda: "[APP/TASK/probe/0] OUT uid=" in (lg := recent_logs(p)) and lg,
                    30, "the probe's line")
    line = re.search(r"\[APP/TASK/probe/0\] OUT uid=(\d+) pids=(\d+) home=(\S+)", logs)
    assert "[APP/TASK/probe/0] OUT LEAK" not in logs, logs
    assert line and line.group(3) == "/home/vcap/app", logs
    assert int(line.group(2)) < 10, "a task sees the host's processes:\n" + logs


def test_memory_and_forks_are_contained(plat):
    """A task that outgrows its memory is killed by its cgroup and ends FAILED saying so; one
    that forks without end meets its process limit and ends FAILED; the app serves on."""
    p = plat
    hog = run(p, "python3 -c \"x = bytearray(400 << 20); import time; time.sleep(30)\"",
              name="hog", memory_mb=64)
    assert hog["memory_mb"] == 64
    t = wait_ended(p, hog["sequence_id"])
    assert t["state"] == "FAILED" and "out of memory" in t["failure_reason"], t
    bomb = run(p, "python3 -c \"import os\nwhile True: os.fork()\"", name="bomb")
    t = wait_ended(p, bomb["sequence_id"], timeout=120)
    assert t["state"] == "FAILED", t
    assert serves(p)
    assert p.api("GET", "/v1/apps/shop")[1]["running"] == 1


def test_memory_counts_against_the_quota(plat):
    p = plat
    # what the org's apps hold already, and 344 MB more
    apps = p.api("GET", "/v1/apps")[1]["apps"]
    used = sum(a["memory_mb"] * a["instances"] for a in apps)
    code, body = p.api("POST", "/v1/quotas", {"name": "tasks-mem", "total_memory_mb": used + 344})
    assert code == 201, body
    code, body = p.api("PUT", "/v1/orgs/default/quota", {"quota": "tasks-mem"})
    assert code == 200, body
    try:
        r = p.cli("run-task", "shop", "sleep 600", "-m", "512M")
        assert r.returncode == 1 and "total_memory_mb" in r.stderr, out(r)
        first = run(p, "sleep 600", name="first", memory_mb=300)
        status, err = p.api("POST", "/v1/apps/shop/tasks", {"command": "true", "memory_mb": 100})
        assert status == 422 and err["error"]["code"] == "quota_exceeded", err
        # while the task runs, scaling the app up is held to the same quota
        status, err = p.api("PUT", "/v1/apps/shop", {"instances": 2})
        assert status == 422 and err["error"]["code"] == "quota_exceeded", err
        assert p.api("POST", f"/v1/apps/shop/tasks/{first['sequence_id']}/cancel")[0] == 202
        wait_ended(p, first["sequence_id"], timeout=30)
        second = run(p, "true", memory_mb=100)
        wait_ended(p, second["sequence_id"])
    finally:
        assert p.api("PUT", "/v1/orgs/default/quota", {"quota": None})[0] == 200


def test_other_spaces_and_auditors(plat):
    """Another space's developer cannot run, list, see or cancel a task (404: the app does not
    exist for them); the space's auditor lists them but cannot run or cancel one (403)."""
    p = plat
    admin = p.token
    assert p.api("POST", "/v1/users", {"name": "mallory", "password": PASSWORD})[0] == 201
    assert p.api("POST", "/v1/users", {"name": "audrey", "password": PASSWORD})[0] == 201
    assert p.api("POST", "/v1/orgs", {"name": "evil"})[0] == 201
    assert p.api("POST", "/v1/orgs/evil/spaces", {"name": "dev"})[0] == 201
    assert p.api("PUT", "/v1/orgs/evil/spaces/dev/users/mallory/roles/SpaceDeveloper")[0] == 204
    assert p.api("PUT", "/v1/orgs/default/spaces/dev/users/audrey/roles/SpaceAuditor")[0] == 204

    def login(user):
        status, body = p.api("POST", "/v1/auth/token", {"grant_type": "password",
                                                        "username": user, "password": PASSWORD},
                             token=False)
        assert status == 200, body
        return body["access_token"]
    mallory, audrey = login("mallory"), login("audrey")
    victim = run(p, "sleep 600", name="victim")
    seq = victim["sequence_id"]
    spaces = ("", "?space=" + urllib.parse.quote("default/dev", safe=""),
              "?space=" + urllib.parse.quote("evil/dev", safe=""))
    for q in spaces:
        for method, path, body in (("POST", "/v1/apps/shop/tasks", {"command": "true"}),
                                   ("GET", "/v1/apps/shop/tasks", None),
                                   ("GET", f"/v1/apps/shop/tasks/{seq}", None),
                                   ("POST", f"/v1/apps/shop/tasks/{seq}/cancel", None)):
            status, err = p.api(method, path + q, body, token=mallory)
            assert status == 404, (method, path, q, status, err)
    app_guid = p.api("GET", "/v1/apps/shop")[1]["guid"]
    status, err = p.api("GET", f"/v1/apps/{app_guid}/tasks", token=mallory)
    assert status == 404, err
    assert tasks(p, token=audrey)
    status, err = p.api("POST", "/v1/apps/shop/tasks", {"command": "true"}, token=audrey)
    assert status == 403, err
    status, err = p.api("POST", f"/v1/apps/shop/tasks/{seq}/cancel", token=audrey)
    assert status == 403, err
    assert task(p, seq)["state"] == "RUNNING"
    assert p.api("POST", f"/v1/apps/shop/tasks/{seq}/cancel", token=admin)[0] == 202
    wait_ended(p, seq, timeout=30)
    events = p.api("GET", "/v1/audit_events?target=shop&limit=1000")[1]["audit_events"]
    types = [e["type"] for e in events]
    assert "audit.app.task.create" in types and "audit.app.task.cancel" in types, events


def test_history_is_bounded(plat):
    p = plat
    deploy(p, "busy")
    for _ in range(105):
        status, body = p.api("POST", "/v1/apps/busy/tasks", {"command": "true"})
        assert status == 202, body
        wait_ended(p, body["sequence_id"], "busy")
    listed = tasks(p, "busy")
    assert len(listed) == 100, len(listed)
    assert listed[-1]["sequence_id"] == 105 and listed[0]["sequence_id"] == 6


def test_a_killed_skiffd_leaves_no_task_running(platform):
    """skiffd killed under a running task: the next skiffd ends what is left of it and records
    it FAILED with a reason, never RUNNING forever."""
    p = platform
    deploy(p)
    t = run(p, "sleep 600", name="orphan")
    pidfile = os.path.join(p.home, "run", f"instance-{t['guid']}.pid")
    wait_for(lambda: os.path.exists(pidfile), 30, "the task's pid file")
    pid = int(open(pidfile).read().split()[0])
    os.kill(p.proc.pid, signal.SIGKILL)
    p.proc.wait()
    p.start()
    after = wait_ended(p, t["sequence_id"], timeout=30)
    assert after["state"] == "FAILED" and "skiffd stopped" in after["failure_reason"], after

    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    wait_for(gone, 30, "the orphaned task's process to end")
    # and the next task runs as before
    again = run(p, "true")
    assert wait_ended(p, again["sequence_id"])["state"] == "SUCCEEDED"


def test_a_stopped_skiffd_ends_its_tasks(platform):
    """skiffd stopped (SIGTERM) with a task running: it stops the task with its instances,
    exits cleanly, and the next skiffd shows the task FAILED with a reason."""
    p = platform
    deploy(p)
    t = run(p, "sleep 600", name="cut")
    p.stop(signal.SIGTERM)
    assert p.proc.returncode == 0, p.output()
    assert "AddressSanitizer" not in p.output() and "LeakSanitizer" not in p.output()
    p.start()
    after = wait_ended(p, t["sequence_id"], timeout=30)
    assert after["state"] == "FAILED" and "skiffd stopped" in after["failure_reason"], after


def test_deleting_the_app_ends_its_tasks(plat):
    p = plat
    deploy(p, "doomed")
    t = run(p, "sleep 600", app="doomed", name="orphan")
    pidfile = os.path.join(p.home, "run", f"instance-{t['guid']}.pid")
    wait_for(lambda: os.path.exists(pidfile), 30, "the task's pid file")
    r = p.cli("delete", "doomed", "-f")
    assert r.returncode == 0, out(r)
    wait_for(lambda: not os.path.exists(pidfile), 30, "the deleted app's task to end")
    status, body = p.api("GET", "/v1/apps/doomed/tasks")
    assert status == 404, body
    assert serves(p)
