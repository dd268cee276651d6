"""Warm containers (skiffd --prewarm N): containers made ahead but for the droplet and the
program, so that an instance starts in milliseconds. A start takes one whole, the pool
refills, a warm container is never given to a second instance, and none outlives skiffd.
Isolation of instances started warm is the escape suite's (test_isolation.py runs it against
both kinds)."""
import json
import os
import signal
import subprocess

import pytest

from conftest import Platform, app_json, http_get, instance_url, out, read_pid_file


def warm_dirs(p, ready=False):
    d = os.path.join(p.home, "instances")
    names = [n for n in os.listdir(d) if n.startswith("warm-")] if os.path.isdir(d) else []
    if ready:
        names = [n for n in names if os.path.exists(os.path.join(d, n, "warm.sock"))]
    return sorted(names)


def warm_pool(p, n, what, timeout=30, at_least=False):
    """Waits for n ready warm containers (n or more with at_least); returns the names of all
    the warm containers then."""
    def sized():
        ready = len(warm_dirs(p, ready=True))
        return (ready >= n if at_least else ready == n) and warm_dirs(p)
    return p.wait_for(sized, timeout=timeout, what=what)


def argv_of(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return [b""]


def keepers_of(home):
    """Host pids of the containers' keepers: skiff-init under a shim, its config under home
    (the container's init is a copy of skiff-init, under the keeper)."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        argv = argv_of(pid)
        if os.path.basename(argv[0]) != b"skiff-init" or not any(
                a.startswith(home.encode() + b"/") for a in argv):
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                ppid = f.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            continue
        if os.path.basename(argv_of(ppid)[0]) == b"skiff-shim":
            pids.append(int(pid))
    return pids


def cgroups_left(names):
    """Those of names that are still a cgroup of skiffd's (v2 or v1)."""
    roots = ("/sys/fs/cgroup/skiff", "/sys/fs/cgroup/memory/skiff", "/sys/fs/cgroup/pids/skiff")
    return {n for n in names for r in roots if os.path.isdir(os.path.join(r, n))}


def started(p, name, n):
    def ready():
        insts = [i for i in app_json(p, name)["instances_detail"] if i["state"] == "RUNNING"]
        return insts if len(insts) == n else None
    return p.wait_for(ready, timeout=60, what="%d running instances of %s" % (n, name))


def test_instances_take_warm_containers_and_the_pool_refills():
    p = Platform(extra_env={"SKIFF_PREWARM": "2"}).start()
    try:
        first = warm_pool(p, 2, what="two warm containers")
        r = p.cli("push", "web", "-p", "examples/static", "-i", "3", timeout=300)
        assert r.returncode == 0, out(r)
        insts = started(p, "web", 3)
        # one pass of the scheduler starts all three: two take the warm containers, the third
        # is made at its start (the pool refills after the starts, not during them)
        assert sorted(i["warm_start"] for i in insts) == [False, True, True], insts
        for i in insts:
            assert http_get(instance_url(i))[0] == 200
        # the two it took are the instances' now (renamed), and new ones are made: three, as
        # three starts came at once (test_a_burst_of_starts_grows_the_pool_to_match)
        warm_pool(p, 3, what="the pool to refill")
        assert not set(first) & set(warm_dirs(p)), (first, warm_dirs(p))
        folders = set(os.listdir(os.path.join(p.home, "instances")))
        assert {i["guid"] for i in insts} <= folders
        # a warm instance is an instance like any other: it runs as vcap's host uid, its pid
        # file follows its name, and a stop ends it with its cgroup
        warm = [i for i in insts if i["warm_start"]][0]
        pid = read_pid_file(os.path.join(p.home, "run", "instance-%s.pid" % warm["guid"]))
        assert pid and os.path.exists("/proc/%d" % pid)
        r = p.cli("stop", "web")
        assert r.returncode == 0, out(r)
        p.wait_for(lambda: not os.path.exists("/proc/%d" % pid), timeout=30,
                   what="the warm-started instance to end")
    finally:
        p.close()


def test_a_burst_of_starts_grows_the_pool_to_match():
    # --prewarm 1, then three starts in one pass: the pool keeps three from then on (for a
    # minute), new ones, none of them an instance's
    p = Platform(extra_env={"SKIFF_PREWARM": "1"}).start()
    try:
        first = warm_pool(p, 1, what="one warm container")
        r = p.cli("push", "web", "-p", "examples/static", "-i", "3", timeout=300)
        assert r.returncode == 0, out(r)
        insts = started(p, "web", 3)
        assert sorted(i["warm_start"] for i in insts) == [False, False, True], insts
        grown = warm_pool(p, 3, timeout=60, what="the pool to grow to three")
        assert len(warm_dirs(p)) == 3, warm_dirs(p)
        assert not set(first) & set(grown), (first, grown)
        guids = {i["guid"] for i in insts}
        for i in insts:
            assert http_get(instance_url(i))[0] == 200
        # a start from the grown pool takes one of them; the pool makes it up again (to four
        # when this start came within a second of the three)
        r = p.cli("scale", "web", "-i", "4")
        assert r.returncode == 0, out(r)
        fourth = [i for i in started(p, "web", 4) if i["guid"] not in guids]
        assert [i["warm_start"] for i in fourth] == [True], fourth
        after = warm_pool(p, 3, at_least=True, timeout=60, what="the pool to refill to three")
        assert len(set(grown) - set(after)) == 1, (grown, after)
        assert len(after) <= 4, after
    finally:
        p.close()


def test_another_disk_quota_is_made_at_start_and_leaves_the_pool_alone():
    p = Platform(extra_env={"SKIFF_PREWARM": "1"}).start()
    try:
        pool = p.wait_for(lambda: warm_dirs(p, ready=True), timeout=30, what="a warm container")
        r = p.cli("push", "small", "-p", "examples/static", "-k", "256M", timeout=300)
        assert r.returncode == 0, out(r)
        (inst,) = started(p, "small", 1)
        assert inst["warm_start"] is False
        assert inst["disk_quota_bytes"] < 300 << 20
        assert warm_dirs(p, ready=True) == pool
    finally:
        p.close()


def test_prewarm_zero_makes_none():
    p = Platform(extra_env={"SKIFF_PREWARM": "0"}).start()
    try:
        r = p.cli("push", "web", "-p", "examples/static", timeout=300)
        assert r.returncode == 0, out(r)
        (inst,) = started(p, "web", 1)
        assert inst["warm_start"] is False
        assert warm_dirs(p) == []
    finally:
        p.close()


def test_a_grown_pool_shrinks_back_once_its_window_passes():
    # --prewarm 1 and a window of 3 s (--prewarm-window-ms, SKIFF_PREWARM_WINDOW_MS): three
    # starts in one pass grow the pool to three, then, the burst 3 s old, it goes back to one;
    # those it let go are ended with their cgroups
    p = Platform(extra_env={"SKIFF_PREWARM": "1", "SKIFF_PREWARM_WINDOW_MS": "3000"}).start()
    try:
        warm_pool(p, 1, what="one warm container")
        r = p.cli("push", "web", "-p", "examples/static", "-i", "3", timeout=300)
        assert r.returncode == 0, out(r)
        started(p, "web", 3)
        grown = warm_pool(p, 3, timeout=60, what="the pool to grow to three")
        # the window, then a quarter of it between looks, at most
        left = p.wait_for(lambda: len(warm_dirs(p)) == 1 and warm_dirs(p), timeout=30,
                          what="the pool to shrink back to one")
        gone = set(grown) - set(left)
        assert len(gone) >= 2, (grown, left)
        p.wait_for(lambda: not cgroups_left(gone), timeout=30,
                   what="the cgroups of the warm containers let go to be removed")
        def keepers_of_gone():
            return [k for k in keepers_of(p.home)
                    if any(("/" + n + "/").encode() in a for n in gone for a in argv_of(k))]
        p.wait_for(lambda: not keepers_of_gone(), timeout=30,
                   what="the keepers of the warm containers let go to end")
        # and it stays at one: no start came since
        assert len(warm_dirs(p)) == 1, warm_dirs(p)
    finally:
        p.close()


def refused_at_start(args, flag):
    """skiffd started with args exits 2 and names flag on stderr."""
    p = Platform()
    try:
        r = subprocess.run([os.path.join(os.environ.get("SKIFF_BIN_DIR", "build/asan"),
                                         "skiffd"), "--home", p.home, *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and flag in r.stderr, (args, r.stderr)
    finally:
        p.close()


def test_prewarm_window_must_be_milliseconds_in_range():
    for bad in ("lots", "0", "999", "3600001", "5s", "-3000"):
        refused_at_start(["--prewarm-window-ms", bad], "--prewarm-window-ms")


def test_prewarm_must_be_a_number():
    refused_at_start(["--prewarm", "lots"], "--prewarm")


def test_prewarm_memory_must_be_a_size():
    for bad in ("lots", "0", "12T", "-5M", "99999999G"):
        refused_at_start(["--prewarm-memory", bad], "--prewarm-memory")


def warm_memory(name):
    """A warm container's memory as the executor counts it (its cgroup's anonymous memory),
    or None when its cgroup is not there."""
    for path, key in (("/sys/fs/cgroup/skiff/%s/memory.stat" % name, "anon"),
                      ("/sys/fs/cgroup/memory/skiff/%s/memory.stat" % name, "total_rss")):
        try:
            with open(path) as f:
                return int(dict(line.split() for line in f)[key])
        except (OSError, KeyError, ValueError):
            continue
    return None


def skiffd_said(p, text):
    with open(p.log_path, errors="replace") as f:
        return text in f.read()


def test_the_pool_stays_within_its_memory_budget():
    # with room to spare: 4 containers, and how much one takes
    p = Platform(extra_env={"SKIFF_PREWARM": "4"}).start()
    try:
        names = warm_pool(p, 4, timeout=60, what="four warm containers")
        sizes = p.wait_for(lambda: (lambda m: m if all(m) else None)(
            [warm_memory(n) for n in names]), timeout=30, what="their memory counted")
    except AssertionError:
        if all(warm_memory(n) is None for n in warm_dirs(p)):
            pytest.skip("no memory cgroup for containers on this machine")
        raise
    finally:
        p.close()
    one = max(sizes)
    # a budget for two and a half: two are kept, a third would not fit beside them
    budget_k = (one * 5 // 2) >> 10
    p = Platform(extra_env={"SKIFF_PREWARM": "4", "SKIFF_PREWARM_MEMORY": "%dK" % budget_k})
    p.start()
    try:
        p.wait_for(lambda: skiffd_said(p, "the pool's memory budget holds no more"), timeout=60,
                   what="the refill to stop at the budget")

        # two fit, or three when each is measured a little smaller than the first run's
        # largest; never the four asked for, and once measured, within the budget (one
        # that grew past it goes)
        def within_budget():
            kept = warm_dirs(p)
            used = sum(warm_memory(n) or 0 for n in kept)
            return kept if 1 <= len(kept) < 4 and used <= budget_k << 10 else None
        p.wait_for(within_budget, timeout=30, what="the pool within its budget")
        # an instance takes one; the refill makes one again, and still within the budget
        r = p.cli("push", "web", "-p", "examples/static", timeout=300)
        assert r.returncode == 0, out(r)
        (inst,) = started(p, "web", 1)
        assert inst["warm_start"] is True
        warm_pool(p, 1, at_least=True, what="the pool to refill")
        p.wait_for(within_budget, timeout=30, what="the refilled pool within its budget")
    finally:
        p.close()
    # a budget below one container: the one made to learn the size goes, none is made again
    p = Platform(extra_env={"SKIFF_PREWARM": "4", "SKIFF_PREWARM_MEMORY": "1K"}).start()
    try:
        p.wait_for(lambda: skiffd_said(p, "the pool's memory budget holds no more")
                   and warm_dirs(p) == [], timeout=60, what="an empty pool")
        r = p.cli("push", "web", "-p", "examples/static", timeout=300)
        assert r.returncode == 0, out(r)
        (inst,) = started(p, "web", 1)
        assert inst["warm_start"] is False
        assert warm_dirs(p) == []
    finally:
        p.close()


def test_a_stopped_skiffd_leaves_no_warm_container():
    p = Platform(extra_env={"SKIFF_PREWARM": "3"}).start()
    try:
        names = warm_pool(p, 3, what="three warm containers")
        assert len(keepers_of(p.home)) == 3
        assert cgroups_left(names) == set(names)
        p.stop()
        assert warm_dirs(p) == []
        assert keepers_of(p.home) == []
        assert cgroups_left(names) == set()
    finally:
        p.close()


def test_warm_containers_of_a_killed_skiffd_are_ended_by_the_next():
    p = Platform(extra_env={"SKIFF_PREWARM": "2"}).start()
    try:
        old = warm_pool(p, 2, what="two warm containers")
        old_keepers = keepers_of(p.home)
        assert len(old_keepers) == 2
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(timeout=10)
        # nobody can use them any more (their shims outlive skiffd, as instances' do)
        assert all(os.path.exists("/proc/%d" % k) for k in old_keepers)
        p.start()
        p.wait_for(lambda: not any(os.path.exists("/proc/%d" % k) for k in old_keepers),
                   timeout=30, what="the old warm containers to end")
        warm_pool(p, 2, what="two new warm containers")
        assert not set(old) & set(warm_dirs(p))
    finally:
        p.close()


def test_an_instance_in_a_warm_container_keeps_its_cgroup_across_skiffds():
    """An instance that took a warm container stays in the cgroup the container was made with
    (a start renames no cgroup); a skiffd killed and started again adopts it with that cgroup,
    and stopping it then removes the cgroup: nothing of it is left running or behind."""
    p = Platform(extra_env={"SKIFF_PREWARM": "1"}).start()
    try:
        p.wait_for(lambda: warm_dirs(p, ready=True), timeout=30, what="a warm container")
        r = p.cli("push", "web", "-p", "examples/static", "-m", "64M", timeout=300)
        assert r.returncode == 0, out(r)
        (inst,) = started(p, "web", 1)
        assert inst["warm_start"] is True, inst
        pid = read_pid_file(os.path.join(p.home, "run", "instance-%s.pid" % inst["guid"]))
        cgroup = memory_cgroup(pid)
        if not cgroup or "/skiff/" not in cgroup:
            pytest.skip("no memory cgroup here")
        assert os.path.basename(cgroup).startswith("warm-"), cgroup
        assert memory_limit(cgroup) == 64 << 20
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(timeout=10)
        p.start()
        (adopted,) = started(p, "web", 1)
        assert adopted["guid"] == inst["guid"], adopted
        assert http_get(instance_url(adopted))[0] == 200
        assert memory_cgroup(pid) == cgroup
        r = p.cli("stop", "web")
        assert r.returncode == 0, out(r)
        p.wait_for(lambda: not os.path.exists("/proc/%d" % pid), timeout=30,
                   what="the instance to end")
        p.wait_for(lambda: not os.path.isdir(cgroup), timeout=30, what="its cgroup to go")
    finally:
        p.close()


RUNTIME_PROBE = '''
import json, os, socket, sys

def handle(event):
    status = dict(line.rstrip("\\n").split(":\\t", 1) for line in open("/proc/self/status")
                  if ":\\t" in line)
    try:
        open("/opt/skiff/zygote.py", "a").close()
        zygote_writable = True
    except OSError:
        zygote_writable = False
    return {"uid": os.getuid(), "hostname": socket.gethostname(), "cwd": os.getcwd(),
            "argv": sys.argv, "main": sys.modules["__main__"].__file__,
            "path": sys.path[:2], "color": os.environ.get("COLOR"),
            "port": os.environ.get("PORT"), "cap_eff": status["CapEff"],
            "no_new_privs": status["NoNewPrivs"], "seccomp": status["Seccomp"],
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "zygote_writable": zygote_writable}
'''


def restart_and_invoke(p, name, handler_file, runtime, warm, extra_env=None):
    """Pushes the function, waits for the runtime's warm pool when there is one, restarts it
    with COLOR (and extra_env) set and invokes it: (the new instance, what it answered)."""
    r = p.cli("push", name, "--function", handler_file + ":handle", timeout=300)
    assert r.returncode == 0, out(r)
    (first,) = started(p, name, 1)
    assert first["warm_runtime"] is None  # the runtime's pool is made from now on
    if warm:
        warm_pool(p, 2, what=f"a plain and a {runtime} warm container")
    for var, value in {"COLOR": "teal", **(extra_env or {})}.items():
        r = p.cli("set-env", name, var, value)
        assert r.returncode == 0, out(r)
    r = p.cli("restart", name, timeout=120)
    assert r.returncode == 0, out(r)
    (inst,) = p.wait_for(lambda: [i for i in started(p, name, 1) if i["guid"] != first["guid"]],
                         timeout=60, what="the restarted instance")
    status, body = p.api("POST", f"/v1/apps/{name}/invoke", raw=b"x",
                         headers={"Content-Type": "text/plain"})
    assert status == 200, body
    return inst, body if isinstance(body, dict) else json.loads(body)


@pytest.mark.parametrize("prewarm", ["1", "0", "1-afresh"])
def test_a_python_function_starts_from_a_warm_python_runtime(tmp_path, prewarm):
    """Once a Python function has started, warm containers with the Python runtime up are
    kept; the next start takes one, and the function runs as if started afresh (the same
    test without warm containers says what afresh is): its own environment, argv, working
    directory, module path and __main__, as vcap with nothing of root. A setting the
    interpreter reads only as it starts (PYTHONDONTWRITEBYTECODE) has the command run afresh
    in that container."""
    (tmp_path / "probe.py").write_text(RUNTIME_PROBE)
    warm = prewarm != "0"
    p = Platform(extra_env={"SKIFF_PREWARM": prewarm.split("-")[0]}).start()
    try:
        extra_env = {"PYTHONDONTWRITEBYTECODE": "1"} if prewarm.endswith("afresh") else {}
        inst, got = restart_and_invoke(p, "probe", str(tmp_path / "probe.py"), "python", warm,
                                       extra_env)
        assert inst["warm_start"] is warm, inst
        assert inst["warm_runtime"] == ("python" if warm else None), inst
        assert got["uid"] == 2000 and got["hostname"] == inst["guid"], got
        assert got["cwd"] == "/home/vcap/app" and got["color"] == "teal" and got["port"] == "8080"
        assert got["argv"] == [".skiff/function/skiff_function.py", "probe.py:handle"], got
        assert got["main"] == "/home/vcap/app/.skiff/function/skiff_function.py", got
        assert got["path"] == ["/home/vcap/app", "/home/vcap/app/.skiff/function"], got
        assert got["cap_eff"] == "0000000000000000" and got["no_new_privs"] == "1"
        assert got["seccomp"] == "2" and not got["zygote_writable"]
        assert len(got["pids"]) <= 3, got["pids"]  # init and the function: nothing else
    finally:
        p.close()


NODE_PROBE = """
const fs = require('fs');
const os = require('os');
exports.handle = async (event) => {
  const status = Object.fromEntries(fs.readFileSync('/proc/self/status', 'utf8').split('\\n')
    .filter((l) => l.includes(':\\t')).map((l) => l.split(':\\t')));
  return {uid: process.getuid(), hostname: os.hostname(), cwd: process.cwd(),
          argv: process.argv.slice(1), main: require.main.filename, color: process.env.COLOR,
          port: process.env.PORT, cap_eff: status.CapEff, seccomp: status.Seccomp,
          no_new_privs: status.NoNewPrivs};
};
"""


@pytest.mark.parametrize("prewarm", ["1", "0"])
def test_a_node_function_starts_from_a_warm_node_runtime(tmp_path, prewarm):
    """The same for Node.js: warm containers with Node.js up, and a function started from
    one sees what `node SCRIPT ARGS` would have given it."""
    (tmp_path / "probe.js").write_text(NODE_PROBE)
    warm = prewarm != "0"
    p = Platform(extra_env={"SKIFF_PREWARM": prewarm}).start()
    try:
        inst, got = restart_and_invoke(p, "nprobe", str(tmp_path / "probe.js"), "node", warm)
        assert inst["warm_runtime"] == ("node" if warm else None), inst
        assert got["uid"] == 2000 and got["hostname"] == inst["guid"], got
        assert got["cwd"] == "/home/vcap/app" and got["color"] == "teal" and got["port"] == "8080"
        assert got["argv"] == ["/home/vcap/app/.skiff/function/skiff_function.js",
                               "probe.js:handle"], got
        assert got["main"] == "/home/vcap/app/.skiff/function/skiff_function.js", got
        assert got["cap_eff"] == "0000000000000000" and got["no_new_privs"] == "1"
        assert got["seccomp"] == "2"
    finally:
        p.close()


def memory_cgroup(pid):
    """The folder of the memory cgroup process pid is in (v1, else v2), or None without one:
    an instance's cgroup is named after it or after the warm container it took."""
    v2 = None
    with open("/proc/%d/cgroup" % pid) as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if "memory" in controllers.split(","):
                return "/sys/fs/cgroup/memory" + path
            if controllers == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                v2 = "/sys/fs/cgroup" + path
    return v2


def memory_limit(cgroup):
    """The memory limit of a cgroup folder in bytes (v2 or v1), or None when it is not there."""
    for name in ("memory.max", "memory.limit_in_bytes"):
        try:
            with open(os.path.join(cgroup, name)) as f:
                return int(f.read())
        except (OSError, ValueError):
            continue
    return None


def test_a_warm_container_never_carries_one_app_into_the_next():
    """App A, started warm, writes marker files everywhere it may write (its droplet's
    overlay, /tmp, TMPDIR) and is stopped; app B, started warm from the refilled pool, sees
    none of them, and its environment and cgroup limit are B's own."""
    import test_isolation as iso
    p = Platform(extra_env={"SKIFF_PREWARM": "1"}).start()
    try:
        p.wait_for(lambda: warm_dirs(p, ready=True), timeout=30, what="a warm container")
        iso.push_hostile(p, "tenant-a", "-m", "128M")
        a = iso.instance(p, "tenant-a")
        assert a["warm_start"] is True, a
        marks = {"path": ["~/skiff-marker", "/tmp/skiff-marker"], "path_env": ["TMPDIR"]}
        wrote = iso.attack(p, "tenant-a", "write", **marks)
        assert wrote["escaped"] is True, "A cannot write its own files: %s" % wrote["detail"]
        assert iso.attack(p, "tenant-a", "read", **marks)["escaped"] is True
        a_pid = read_pid_file(os.path.join(p.home, "run", "instance-%s.pid" % a["guid"]))
        a_cgroup = memory_cgroup(a_pid)
        r = p.cli("stop", "tenant-a")
        assert r.returncode == 0, out(r)
        p.wait_for(lambda: not os.path.exists("/proc/%d" % a_pid), timeout=30,
                   what="A's instance to end")
        p.wait_for(lambda: warm_dirs(p, ready=True), timeout=30, what="the pool to refill")
        iso.push_hostile(p, "tenant-b", "-m", "64M")
        b = iso.instance(p, "tenant-b")
        assert b["warm_start"] is True, b
        assert b["guid"] != a["guid"]
        seen = iso.attack(p, "tenant-b", "read", **marks)
        assert seen["escaped"] is False, "B sees what A left: %s" % seen["detail"]
        status, body = http_get(instance_url(b, "/whoami"))
        assert status == 200 and json.loads(body) == {"app": "tenant-b", "guid": b["guid"]}, body
        b_pid = read_pid_file(os.path.join(p.home, "run", "instance-%s.pid" % b["guid"]))
        b_cgroup = memory_cgroup(b_pid)
        if a_cgroup and "/skiff/" in a_cgroup:
            assert b_cgroup != a_cgroup, b_cgroup
            assert memory_limit(b_cgroup) == 64 << 20, b_cgroup
            assert memory_limit(a_cgroup) is None, a_cgroup  # A's cgroup went with A
    finally:
        p.close()
