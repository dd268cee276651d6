"""The user sequence of the core issue, run for real with the skiff CLI against skiffd:
push, apps, app, scale, logs, set-env + restart, stop/start/restage/delete, push -f a manifest,
and an app that exits at once (shown crashed with its status, and restarted)."""
import json
import os
import re
import shutil

from conftest import ROOT, app_json, http_get, instance_url, out

EXAMPLES = os.path.join(ROOT, "examples")
PYTHON_WEB = os.path.join(EXAMPLES, "python-web")


def running(app):
    return [i for i in app["instances_detail"]
            if i["state"] == "RUNNING" and i.get("process_type", "web") == "web"]


def test_user_sequence(platform):
    # push: upload, staging output streamed, started, default route
    r = platform.cli("push", "hello", "-p", PYTHON_WEB)
    assert r.returncode == 0, out(r)
    lines = r.stdout.splitlines()
    staging = lines.index("Staging hello...")
    staged = next(i for i, l in enumerate(lines) if l.startswith("Staged hello"))
    assert staged > staging + 1, "no staging output between the start and end of staging:\n" + r.stdout
    assert "Uploading" in r.stdout
    assert "hello is running: 1 of 1 instances." in r.stdout
    assert "hello.localhost" in r.stdout

    # apps: name, state, instances running/desired, memory, routes
    r = platform.cli("apps", check=True)
    row = next(l for l in r.stdout.splitlines() if l.startswith("hello "))
    cols = row.split()
    assert cols[1:3] == ["STARTED", "1/1"], row
    assert re.fullmatch(r"\d+[MG]", cols[3]), row
    assert cols[-1] == "hello.localhost", row

    # app: per instance index, state, since, cpu, memory, port
    r = platform.cli("app", "hello", check=True)
    header = next(l for l in r.stdout.splitlines() if l.startswith("index"))
    assert header.split()[:7] == ["index", "type", "state", "since", "cpu", "memory", "port"]
    inst_row = next(l for l in r.stdout.splitlines() if l.startswith("#0"))
    assert "RUNNING" in inst_row
    app = app_json(platform, "hello")
    assert len(running(app)) == 1, (app, platform.cli("logs", "hello", "--recent").stdout)
    (inst,) = running(app)
    assert inst["port"] > 0 and str(inst["port"]) in inst_row
    # where it runs and as whom: its own address, an unprivileged host uid, its disk
    assert header.split()[7:10] == ["address", "uid", "disk"], header
    assert inst["address"] in inst_row and str(inst["host_uid"]) in inst_row, inst_row
    assert inst["host_uid"] >= 100000, inst
    assert inst["since"] and "cpu" in inst and "memory_bytes" in inst
    status, _ = http_get(instance_url(inst))
    assert status == 200

    # scale: 3 instances running, each with its own PORT
    r = platform.cli("scale", "hello", "-i", "3")
    assert r.returncode == 0, out(r)
    assert "3 of 3 instances" in r.stdout
    app = app_json(platform, "hello")
    insts = running(app)
    assert len(insts) == 3
    addresses = {i["address"] for i in insts}
    assert len(addresses) == 3
    assert sorted(i["index"] for i in insts) == [0, 1, 2]
    for i in insts:
        assert http_get(instance_url(i))[0] == 200

    # logs --recent: staging and app output, with their source tags
    def recent_logs():
        r = platform.cli("logs", "hello", "--recent")
        assert r.returncode == 0, out(r)
        return r.stdout if "[STG/0]" in r.stdout and "[APP/PROC/WEB/" in r.stdout else None
    logs = platform.wait_for(recent_logs, timeout=10, what="[STG/0] and [APP/PROC/WEB/n] lines")
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z \[STG/0\] ", logs, re.M), logs

    # set-env + restart: the app sees GREETING
    r = platform.cli("set-env", "hello", "GREETING", "hi-from-e2e")
    assert r.returncode == 0, out(r)
    assert "skiff restart hello" in r.stdout
    r = platform.cli("env", "hello", check=True)
    assert "GREETING=hi-from-e2e" in r.stdout
    r = platform.cli("restart", "hello")
    assert r.returncode == 0, out(r)
    app = app_json(platform, "hello")
    insts = running(app)
    assert len(insts) == 3
    for i in insts:
        status, body = http_get(instance_url(i))
        assert status == 200 and "hi-from-e2e" in body, body
    # and through the router, on the default route
    platform.wait_for(lambda: "hi-from-e2e" in http_get(platform.router_url + "/", "hello.localhost")[1],
                      timeout=10, what="the new GREETING through the router")

    # stop: nothing runs
    r = platform.cli("stop", "hello")
    assert r.returncode == 0, out(r)
    platform.wait_for(lambda: not running(app_json(platform, "hello")), timeout=20,
                      what="hello to stop")
    assert app_json(platform, "hello")["state"] == "STOPPED"

    # start: back to 3 instances
    r = platform.cli("start", "hello")
    assert r.returncode == 0, out(r)
    assert len(running(app_json(platform, "hello"))) == 3

    # restage: staging output again, and still running
    r = platform.cli("restage", "hello")
    assert r.returncode == 0, out(r)
    assert "Staging hello..." in r.stdout and "Staged hello" in r.stdout
    assert len(running(app_json(platform, "hello"))) == 3

    # delete: gone, with its routes
    r = platform.cli("delete", "hello", "-f")
    assert r.returncode == 0, out(r)
    r = platform.cli("app", "hello")
    assert r.returncode == 1 and 'app "hello" not found' in r.stderr
    r = platform.cli("routes", "--json", check=True)
    assert all(rt["app"] != "hello" for rt in json.loads(r.stdout)["routes"])


def manifest_app_names(path):
    """Names of the top-level entries ("- name: x" indented by at most two spaces)."""
    names = []
    for line in open(path):
        m = re.match(r"^ {0,2}- +name: *['\"]?([a-z0-9-]+)", line)
        if m:
            names.append(m.group(1))
    return names


def test_push_manifest_with_several_apps(platform):
    manifest = os.path.join(EXAMPLES, "manifest.yml")
    names = manifest_app_names(manifest)
    assert len(names) >= 2, names
    r = platform.cli("push", "-f", manifest, timeout=600)
    assert r.returncode == 0, out(r)
    apps = {a["name"]: a for a in json.loads(platform.cli("apps", "--json", check=True).stdout)["apps"]}
    for name in names:
        assert name in apps, (name, list(apps))
        assert f"Staged {name}" in r.stdout
        a = apps[name]
        if a["state"] == "STARTED":
            assert a["running"] == a["instances"], a


def test_app_that_exits_at_once_is_crashed_and_restarted(platform, tmp_path):
    code = tmp_path / "crashy"
    shutil.copytree(PYTHON_WEB, code)
    cmd = "python3 -c 'import sys; print(\"going down\", flush=True); sys.exit(3)'"
    r = platform.cli("push", "crashy", "-p", str(code), "-c", cmd, "--timeout", "30")
    assert r.returncode == 1, out(r)
    assert "crashed" in r.stderr and "exit status 3" in r.stderr, r.stderr
    assert "skiff logs crashy --recent" in r.stderr

    def crashed_twice():
        app = app_json(platform, "crashy")
        return [i for i in app["instances_detail"] if i["crash_count"] >= 2]
    (inst,) = platform.wait_for(crashed_twice, timeout=30, what="the instance to be restarted")
    assert inst["exit_status"] == 3 or inst["state"] != "CRASHED"
    r = platform.cli("app", "crashy", check=True)
    assert "exit status 3" in r.stdout or "crashed" in r.stdout, r.stdout
    logs = platform.cli("logs", "crashy", "--recent", check=True).stdout
    assert re.search(r"\[APP/PROC/WEB/0\] OUT going down", logs), logs


def read_until(proc, needle, timeout, what):
    """Reads proc's stdout (raw, so nothing waits in a buffer) until it contains needle; returns
    everything read so far, up to the end of the line with needle."""
    import select
    import time
    fd = proc.stdout.fileno()
    seen = getattr(proc, "seen", b"")
    deadline = time.monotonic() + timeout
    while True:
        at = seen.find(needle.encode())
        if at >= 0 and b"\n" in seen[at:]:
            end = seen.index(b"\n", at) + 1
            proc.seen = seen[end:]
            return seen[:end].decode(errors="replace")
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        seen += chunk
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; output so far:\n"
                         + seen.decode(errors="replace"))


def skiff_popen(platform, *args):
    import subprocess
    from conftest import BIN_DIR
    return subprocess.Popen([os.path.join(BIN_DIR, "skiff"), *args], env=platform.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)


def test_staging_output_streams_as_it_comes(platform, tmp_path):
    """A buildpack that waits, in the middle of its output, for the test to see the first half:
    the CLI must have printed it while staging is still going on."""
    bp = tmp_path / "waiting-bp"
    # the buildpack's folder is what staging sees of the host (read-only, live): the go-on
    # sign is put there
    marker = bp / "go-on"
    (bp / "bin").mkdir(parents=True)
    (bp / "bin" / "detect").write_text("#!/bin/sh\necho waiting\n")
    (bp / "bin" / "compile").write_text(
        "#!/bin/sh\n"
        "echo '-----> first half'\n"
        "i=0\n"
        "while [ ! -e \"$(dirname \"$0\")/../go-on\" ]; do\n"
        "  i=$((i+1)); [ $i -gt 600 ] && { echo 'never told to go on'; exit 1; }\n"
        "  sleep 0.05\n"
        "done\n"
        "echo '-----> second half'\n")
    (bp / "bin" / "release").write_text(
        "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: python3 app.py\\n'\n")
    for f in (bp / "bin").iterdir():
        f.chmod(0o755)
    proc = skiff_popen(platform, "push", "streamy", "-p", PYTHON_WEB, "-b", str(bp))
    try:
        read_until(proc, "first half", 30, "the first half of the staging output")
        assert proc.poll() is None, "push ended before staging was told to go on"
        marker.touch()
        stdout, stderr = proc.communicate(timeout=120)
        stdout, stderr = stdout.decode(), stderr.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "second half" in stdout and "streamy is running" in stdout


def test_logs_follow(platform):
    r = platform.cli("push", "follow", "-p", PYTHON_WEB)
    assert r.returncode == 0, out(r)
    inst = running(app_json(platform, "follow"))[0]
    proc = skiff_popen(platform, "logs", "follow")
    try:
        # the recent lines come first, then what happens from now on
        read_until(proc, "[STG/0]", 20, "the recent staging lines")
        assert http_get(instance_url(inst, "/followed-request"))[0] == 404  # the app's own 404
        line = read_until(proc, "/followed-request", 20, "the request's log line").splitlines()[-1]
        assert re.search(r"\[APP/PROC/WEB/0\] OUT GET /followed-request 404", line), line
        assert proc.poll() is None, "logs stopped following"
        # when skiffd goes away, following ends and says so
        platform.stop()
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert b"the log stream of follow ended" in stderr, stderr
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.communicate(timeout=10)


def test_push_again_runs_the_new_code(platform, tmp_path):
    code = tmp_path / "again"
    shutil.copytree(PYTHON_WEB, code)
    r = platform.cli("push", "again", "-p", str(code), "-i", "2")
    assert r.returncode == 0, out(r)
    old = {i["guid"] for i in running(app_json(platform, "again"))}
    app_py = code / "app.py"
    app_py.write_text(app_py.read_text().replace('f"{greeting} from instance {index}\\n"',
                                                 'f"{greeting} from the second push\\n"'))
    assert "second push" in app_py.read_text()
    starts_before = platform.cli("logs", "again", "--recent").stdout.count("Starting instance")
    r = platform.cli("push", "again", "-p", str(code))
    assert r.returncode == 0, out(r)
    assert "Deploying the new droplet of again" in r.stdout, out(r)
    assert "2 of 2 instances updated" in r.stdout, out(r)
    app = app_json(platform, "again")
    insts = running(app)
    assert len(insts) == 2, "the instance count of the first push is kept"
    assert not old & {i["guid"] for i in insts}, "old instances still listed as running"
    assert {i["droplet"] for i in insts} == {app["droplet"]}
    for i in insts:
        assert "from the second push" in http_get(instance_url(i))[1]
    # one restart, not two: each index started once more, and nothing restarts afterwards
    logs = platform.cli("logs", "again", "--recent").stdout
    assert logs.count("Starting instance") - starts_before == 2, logs
    assert {i["guid"] for i in running(app_json(platform, "again"))} == {i["guid"] for i in insts}


def test_ignore_files_keep_things_out_of_the_upload(platform, tmp_path):
    code = tmp_path / "ignoring"
    shutil.copytree(PYTHON_WEB, code)
    (code / "secret.txt").write_text("do not upload\n")
    (code / "logs").mkdir()
    (code / "logs" / "old.log").write_text("noise\n")
    (code / ".cfignore").write_text("secret.txt\n")
    (code / ".skiffignore").write_text("logs/\n")
    # the start command proves what the droplet holds
    cmd = ("sh -c 'test ! -e secret.txt && test ! -e logs && test -e .cfignore "
           "&& exec python3 app.py'")
    r = platform.cli("push", "ignoring", "-p", str(code), "-c", cmd)
    assert r.returncode == 0, out(r)
    # app.py, .cfignore and .skiffignore: three entries
    assert re.search(r"Uploading ignoring: 3 files", r.stdout), r.stdout


def test_failed_staging_says_why_and_keeps_the_app_running(platform, tmp_path):
    r = platform.cli("push", "steady", "-p", PYTHON_WEB)
    assert r.returncode == 0, out(r)
    before = running(app_json(platform, "steady"))
    bp = tmp_path / "failing-bp"
    (bp / "bin").mkdir(parents=True)
    (bp / "bin" / "detect").write_text("#!/bin/sh\necho failing\n")
    (bp / "bin" / "compile").write_text("#!/bin/sh\necho 'cannot build this on purpose'\nexit 7\n")
    (bp / "bin" / "release").write_text("#!/bin/sh\necho '--- {}'\n")
    for f in (bp / "bin").iterdir():
        f.chmod(0o755)
    r = platform.cli("push", "steady", "-p", PYTHON_WEB, "-b", str(bp))
    assert r.returncode == 1, out(r)
    assert "cannot build this on purpose" in r.stdout  # the buildpack's own output, streamed
    assert r.stderr.startswith("error: staging steady failed: "), r.stderr
    after = running(app_json(platform, "steady"))
    assert {i["guid"] for i in after} == {i["guid"] for i in before}
    assert http_get(instance_url(after[0]))[0] == 200

    r = platform.cli("push", "steady", "-p", PYTHON_WEB, "-b", "no-such-buildpack")
    assert r.returncode == 1, out(r)
    assert "no-such-buildpack" in r.stderr, r.stderr


def test_start_deadline_says_which_instances_are_not_running(platform):
    # nothing ever listens on PORT, so the instance stays STARTING (the start timeout is 60 s)
    r = platform.cli("push", "slow", "-p", PYTHON_WEB, "-c", "sleep 120", "--timeout", "2")
    assert r.returncode == 1, out(r)
    assert "slow: only 0 of 1 instances running after 2s (#0 STARTING)" in r.stderr, r.stderr
    assert "skiff logs slow --recent" in r.stderr
