"""Deploys: `skiff push` of a running app replaces its instances one at a time, each only once
its successor on the new droplet runs (rolling, the default), so requests never fail; a new
version whose instance crashes leaves the old one serving and the push fails saying why;
`--strategy recreate` stops everything, then starts the new droplet."""
import http.client
import os
import threading

import pytest

from conftest import WEB_APP, out, wait_for

APP = WEB_APP  # tests/e2e/apps/web.py


def write_app(tmp_path, version):
    d = tmp_path / version
    d.mkdir(exist_ok=True)
    (d / "app.py").write_bytes(APP)
    (d / "Procfile").write_text("web: python3 app.py\n")
    (d / "version.txt").write_text(version + "\n")
    return str(d)


class Traffic:
    """Requests through the router for as long as it runs, on one keep-alive connection and
    on a new connection each time; every answer that is not a 200 is kept."""

    def __init__(self, p, host):
        self.p, self.host = p, host
        self.port = int(p.router_url.rsplit(":", 1)[1])
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.failures, self.seen, self.count = [], set(), 0
        self.threads = [threading.Thread(target=self.run, args=(keep,)) for keep in (True, False)]

    def one(self, conn):
        conn.request("GET", "/", headers={"Host": self.host})
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
        with self.lock:
            self.count += 1
            if r.status == 200:
                self.seen.add(body.strip())
            else:
                self.failures.append((r.status, r.getheader("X-Skiff-Router-Error"), body[:200]))
        return r.getheader("Connection", "").lower() != "close"

    def run(self, keep_alive):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if not self.one(conn) or not keep_alive:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.failures.append((0, None, repr(e)))
                if conn:
                    conn.close()
                conn = None

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def answered(self):
        with self.lock:
            return self.count


def serving(p, host):
    conn = http.client.HTTPConnection("127.0.0.1", int(p.router_url.rsplit(":", 1)[1]), timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        return r.read().decode().strip() if r.status == 200 else None
    finally:
        conn.close()


def app(p, name):
    status, body = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, body
    return body


@pytest.mark.parametrize("instances,pushes", [(1, 3), (3, 2)])
def test_a_rolling_push_fails_no_request(platform, tmp_path, instances, pushes):
    p, name = platform, f"roll{instances}"
    host = f"{name}.localhost"
    r = p.cli("push", name, "-p", write_app(tmp_path, "v0"), "-i", str(instances))
    assert r.returncode == 0, out(r)
    wait_for(lambda: serving(p, host) == "v0", 30, what="v0 served")
    with Traffic(p, host) as traffic:
        wait_for(lambda: traffic.answered() > 20, 30, what="traffic flowing")
        for n in range(1, pushes + 1):
            version = f"v{n}"
            r = p.cli("push", name, "-p", write_app(tmp_path, version), "-i", str(instances))
            assert r.returncode == 0, out(r)
            assert "instances updated" in r.stdout, out(r)
            # every instance runs the new droplet once the push returns
            detail = [i for i in app(p, name)["instances_detail"] if i["state"] == "RUNNING"]
            assert len({i["droplet"] for i in detail}) == 1, detail
            wait_for(lambda: serving(p, host) == version, 30, what=f"{version} served")
            before = traffic.answered()
            wait_for(lambda: traffic.answered() > before + 20, 30, what="traffic after the push")
    assert traffic.failures == [], traffic.failures[:10]
    assert {f"v{n}" for n in range(pushes + 1)} <= traffic.seen, traffic.seen
    dep = app(p, name)["deployment"]
    assert dep["state"] == "DEPLOYED" and dep["updated"] == dep["total"] == instances, dep


def test_a_new_version_that_crashes_leaves_the_old_one_serving(platform, tmp_path):
    p, name = platform, "sturdy"
    host = f"{name}.localhost"
    r = p.cli("push", name, "-p", write_app(tmp_path, "good"), "-i", "2")
    assert r.returncode == 0, out(r)
    good_droplet = app(p, name)["droplet"]
    wait_for(lambda: serving(p, host) == "good", 30, what="the good version served")
    with Traffic(p, host) as traffic:
        r = p.cli("push", name, "-p", write_app(tmp_path, "crash"), "-i", "2")
        assert r.returncode == 1, out(r)
        assert "deployment of sturdy failed" in r.stderr and "exit status 3" in r.stderr, out(r)
        assert "previous droplet" in r.stderr, out(r)
        before = traffic.answered()
        wait_for(lambda: traffic.answered() > before + 20, 30, what="traffic after the push")
    assert traffic.failures == [], traffic.failures[:10]
    assert traffic.seen == {"good"}, traffic.seen
    # the app stays on the droplet that serves: a restart later brings the good one back
    body = app(p, name)
    assert body["droplet"] == good_droplet, body
    assert body["deployment"]["state"] == "FAILED", body["deployment"]
    assert {i["droplet"] for i in body["instances_detail"] if i["state"] == "RUNNING"} == \
        {good_droplet}, body["instances_detail"]
    shown = p.cli("app", name).stdout
    assert "deployment:  FAILED" in shown and "exit status 3" in shown, shown
    r = p.cli("restart", name)
    assert r.returncode == 0, out(r)
    assert serving(p, host) == "good"
    logs = p.cli("logs", name, "--recent").stdout
    assert "Deployment failed" in logs and "this version cannot start" in logs, logs


def test_recreate_stops_then_starts(platform, tmp_path):
    p, name = platform, "recreated"
    host = f"{name}.localhost"
    assert p.cli("push", name, "-p", write_app(tmp_path, "one")).returncode == 0
    r = p.cli("push", name, "-p", write_app(tmp_path, "two"), "--strategy", "recreate")
    assert r.returncode == 0, out(r)
    assert "Restarting recreated onto its new droplet" in r.stdout, out(r)
    wait_for(lambda: serving(p, host) == "two", 30, what="two served")
    r = p.cli("push", name, "-p", write_app(tmp_path, "three"), "--strategy", "sideways")
    assert r.returncode == 2 and "rolling (the default) or recreate" in r.stderr, out(r)
    status, body = p.api("POST", f"/v1/apps/{name}/stage?strategy=sideways")
    assert status == 422 and "strategy" in str(body), body


def test_an_empty_folder_is_refused_before_anything_is_made(platform, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = platform.cli("push", "hollow", "-p", str(empty))
    assert r.returncode == 1 and "is empty" in r.stderr, out(r)
    assert platform.api("GET", "/v1/apps/hollow")[0] == 404


def revisions(p, name):
    status, body = p.api("GET", f"/v1/apps/{name}/revisions")
    assert status == 200, body
    return body["revisions"]


def test_revisions_and_rollback(platform, tmp_path):
    p, name = platform, "rewind"
    host = f"{name}.localhost"
    assert p.cli("push", name, "-p", write_app(tmp_path, "r1"), "-i", "2").returncode == 0
    assert p.cli("set-env", name, "FLAVOUR", "vanilla").returncode == 0
    for v in ("r2", "r3"):
        r = p.cli("push", name, "-p", write_app(tmp_path, v))
        assert r.returncode == 0, out(r)
    revs = revisions(p, name)
    assert [r["version"] for r in revs] == [3, 2, 1], revs
    assert [r["current"] for r in revs] == [True, False, False], revs
    # values of the environment never show here (they may be secrets), their names do
    assert revs[0]["env_names"] == ["FLAVOUR"] and "env" not in revs[0], revs[0]
    assert "vanilla" not in str(revs)
    r = p.cli("revisions", name)
    assert r.returncode == 0 and "3 (current)" in r.stdout, out(r)
    with Traffic(p, host) as traffic:
        wait_for(lambda: traffic.answered() > 10, 30, what="traffic flowing")
        # no REVISION: the one before the current
        r = p.cli("rollback", name)
        assert r.returncode == 0, out(r)
        assert "2 of 2 instances updated" in r.stdout, out(r)
        wait_for(lambda: serving(p, host) == "r2", 30, what="r2 served again")
        # revision 1 had no FLAVOUR: the environment goes back with it
        r = p.cli("rollback", name, "1")
        assert r.returncode == 0, out(r)
        wait_for(lambda: serving(p, host) == "r1", 30, what="r1 served again")
        before = traffic.answered()
        wait_for(lambda: traffic.answered() > before + 10, 30, what="traffic after the rollback")
    assert traffic.failures == [], traffic.failures[:10]
    status, env = p.api("GET", f"/v1/apps/{name}/env")
    assert status == 200 and "FLAVOUR" not in env["env"], env
    revs = revisions(p, name)
    assert [(r["version"], r["description"]) for r in revs[:2]] == \
        [(5, "rollback to revision 1"), (4, "rollback to revision 2")], revs
    # only the newest five are kept, with their droplets; the others' droplets are gone
    for v in ("r6", "r7", "r8"):
        assert p.cli("push", name, "-p", write_app(tmp_path, v)).returncode == 0
    revs = revisions(p, name)
    assert [r["version"] for r in revs] == [8, 7, 6, 5, 4], revs
    guid = app(p, name)["guid"]
    on_disk = set(os.listdir(os.path.join(p.home, "apps", guid, "droplets")))
    assert on_disk == {r["droplet"] for r in revs}, (on_disk, revs)
    status, body = p.api("POST", f"/v1/apps/{name}/rollback", {"revision": 2})
    assert status == 404 and "skiff revisions" in body["error"]["message"], body
    for bad in ({"revision": "2; rm -rf /"}, {"revision": 0}, {}, {"revision": 2.5}):
        status, body = p.api("POST", f"/v1/apps/{name}/rollback", bad)
        assert status == 422, (bad, body)
    r = p.cli("rollback", name, "two")
    assert r.returncode == 2, out(r)


def test_an_environment_change_applied_by_a_restart_is_a_revision(platform, tmp_path):
    p, name = platform, "envrev"
    assert p.cli("push", name, "-p", write_app(tmp_path, "e1")).returncode == 0
    assert p.cli("set-env", name, "FLAVOUR", "vanilla").returncode == 0
    # set-env alone deploys nothing: no revision until a restart applies it
    assert [r["version"] for r in revisions(p, name)] == [1]
    assert p.cli("restart", name).returncode == 0
    revs = revisions(p, name)
    assert [(r["version"], r["description"]) for r in revs] == \
        [(2, "new environment variables deployed"), (1, revs[1]["description"])], revs
    assert revs[0]["droplet"] == revs[1]["droplet"] and revs[0]["env_names"] == ["FLAVOUR"], revs
    logs = p.cli("logs", name, "--recent").stdout
    assert f"Restarted app {name} as revision 2" in logs, logs
    # a restart that changes nothing makes none
    assert p.cli("restart", name).returncode == 0
    assert [r["version"] for r in revisions(p, name)] == [2, 1]
    # a stopped app started with a changed environment: one more
    assert p.cli("stop", name).returncode == 0
    assert p.cli("unset-env", name, "FLAVOUR").returncode == 0
    assert p.cli("start", name).returncode == 0
    revs = revisions(p, name)
    assert [(r["version"], r["env_names"]) for r in revs[:2]] == [(3, []), (2, ["FLAVOUR"])], revs
    # and rolling back to the revision with the variable brings it back
    assert p.cli("rollback", name, "2").returncode == 0
    status, env = p.api("GET", f"/v1/apps/{name}/env")
    assert status == 200 and env["env"].get("FLAVOUR") == "vanilla", env


def test_a_rollback_that_crashes_puts_back_the_environment_that_ran(platform, tmp_path):
    p, name = platform, "undo"
    host = f"{name}.localhost"
    assert p.cli("push", name, "-p", write_app(tmp_path, "good")).returncode == 0
    r = p.cli("push", name, "-p", write_app(tmp_path, "crash"))
    assert r.returncode == 1, out(r)
    assert p.cli("set-env", name, "FLAVOUR", "vanilla").returncode == 0
    assert p.cli("restart", name).returncode == 0
    revs = revisions(p, name)
    assert [r["version"] for r in revs] == [3, 2, 1], revs
    # revision 2 is the crashing droplet, without FLAVOUR: rolling back to it fails, and the
    # app is left as it ran: the good droplet with its environment
    r = p.cli("rollback", name, "2")
    assert r.returncode == 1, out(r)
    status, env = p.api("GET", f"/v1/apps/{name}/env")
    assert status == 200 and env["env"].get("FLAVOUR") == "vanilla", env
    assert app(p, name)["droplet"] == revs[0]["droplet"]
    logs = p.cli("logs", name, "--recent").stdout
    assert "The environment and commands of revision 3, which ran before, are back" in logs, logs
    assert p.cli("restart", name).returncode == 0
    assert serving(p, host) == "good"


def test_a_procfile_without_web_is_staged_and_named(platform, tmp_path):
    d = tmp_path / "workers"
    d.mkdir()
    (d / "Procfile").write_text("worker: sleep 3600\nclock: sleep 3600\n")
    r = platform.cli("push", "workers", "-p", str(d), timeout=60)
    assert r.returncode == 1, out(r)
    assert "Using the Procfile: worker clock" in r.stdout, out(r)
    assert "declares worker, clock and no web" in r.stderr, out(r)
    # with no web instance wanted it is pushed as it is
    r = platform.cli("push", "workers", "-p", str(d), "-i", "0", timeout=60)
    assert r.returncode == 0, out(r)
    types = sorted(p["type"] for p in app(platform, "workers")["processes"])
    assert types == ["clock", "web", "worker"], types


def test_instances_already_replaced_go_back_when_a_later_one_crashes(platform, tmp_path):
    p, name = platform, "halfway"
    host = f"{name}.localhost"
    assert p.cli("push", name, "-p", write_app(tmp_path, "steady"), "-i", "3").returncode == 0
    steady = app(p, name)["droplet"]
    with Traffic(p, host) as traffic:
        # instance 0 of the new version runs; instance 1 of it crashes
        r = p.cli("push", name, "-p", write_app(tmp_path, "second-crashes"), "-i", "3")
        assert r.returncode == 1 and "instance 1 of web" in r.stderr, out(r)

        def back():
            body = app(p, name)
            running = [i for i in body["instances_detail"] if i["state"] == "RUNNING"]
            return len(running) == 3 and {i["droplet"] for i in running} == {steady}
        wait_for(back, 60, what="every instance back on the steady droplet")
        before = traffic.answered()
        wait_for(lambda: traffic.answered() > before + 10, 30, what="traffic afterwards")
    assert traffic.failures == [], traffic.failures[:10]
    assert app(p, name)["droplet"] == steady
    assert serving(p, host) == "steady"
