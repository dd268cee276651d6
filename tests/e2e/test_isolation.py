"""The escape suite: what a hostile tenant tries against the platform and the other tenants.

tests/e2e/hostile/ is a web app that, asked GET /attack/NAME?..., really tries that attack
from inside its instance and answers {"escaped": true|false, "detail": ...} (escaped means
the attack got through); its buildpack/ tries the same from bin/compile during staging. A
victim app (the same code under another name, with a secret in its environment) stands for
the other tenants. Each attack is its own test, and its docstring says why it must fail.

Positive controls show that the app's mechanisms work on its own things (its droplet, its
TMPDIR, its own port, its own processes, publishing events), so that a broken app cannot
make these tests pass by failing every attack.

The container every instance and staging runs in: user vcap (uid 2000 inside, an
unprivileged uid >= 100000 on the host) in its own mount, PID, IPC, UTS, cgroup, network and
user namespaces; a read-only stack with a throw-away writable layer under the disk quota;
the droplet at /home/vcap/app = HOME; TMPDIR=/home/vcap/tmp; PORT=8080; its own address
(instances_detail "address"); reachable from it: its own port and SKIFF_EVENTS_URL only; no
capabilities, no_new_privs, a seccomp filter answering EPERM; its own /proc with the
sensitive paths masked or read-only; a minimal /dev.
"""
import json
import os
import re
import secrets
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import Platform, app_json, http_get, out

HOSTILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile")
BUILDPACK = os.path.join(HOSTILE, "buildpack")
VCAP_UID = 2000
HOST_UID_MIN = 100000


# ---- helpers ----------------------------------------------------------------------------------

def running(platform, name):
    return [i for i in app_json(platform, name)["instances_detail"]
            if i["state"] == "RUNNING" and i.get("process_type", "web") == "web"]


def instance(platform, name):
    """The one running instance of name (waits for it)."""
    return platform.wait_for(lambda: running(platform, name), timeout=60,
                             what="%s to have a running instance" % name)[0]


def instance_addr(inst):
    """Where the host reaches an instance: its own address, or (process driver) the host port."""
    return inst.get("address") or "127.0.0.1:%d" % inst["port"]


def call(platform, app, kind, what, /, **params):
    """GET /KIND/WHAT?params on app's instance; the parsed answer (a 200 is required)."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
    url = "http://%s/%s/%s?%s" % (instance_addr(instance(platform, app)), kind, what, query)
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise AssertionError("%s: HTTP %d\n%s" % (url, e.code, e.read().decode(errors="replace")))


def attack(platform, app, what, /, **params):
    r = call(platform, app, "attack", what, **params)
    assert isinstance(r.get("escaped"), bool) and r.get("detail"), r
    return r


def control(platform, app, what, /, **params):
    return call(platform, app, "control", what, **params)


def contained(r, why):
    """The attack must have failed; the message says why it must and what got through."""
    assert r["escaped"] is False, "%s\nThe attack got through: %s" % (why, r["detail"])


def push_hostile(platform, name, *args):
    r = platform.cli("push", name, "-p", HOSTILE, *args, timeout=300)
    assert r.returncode == 0, out(r)
    return r


def host_pids(instance_guid):
    """Host pids of an instance's app processes: the python processes whose environment has
    its CF_INSTANCE_GUID (the platform's own supervisor of the instance is not one of them)."""
    needle = b"CF_INSTANCE_GUID=" + instance_guid.encode() + b"\0"
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % p, "rb") as f:
                argv0 = f.read().split(b"\0")[0]
            if not os.path.basename(argv0).startswith(b"python"):
                continue
            with open("/proc/%s/environ" % p, "rb") as f:
                if needle in f.read():
                    pids.append(int(p))
        except OSError:
            pass
    return pids


def app_pids(platform, name):
    inst = instance(platform, name)
    return platform.wait_for(lambda: host_pids(inst["guid"]), timeout=10,
                             what="the host pids of %s's instance" % name)


def router_pid(platform):
    with open(os.path.join(platform.home, "run", "router.pid")) as f:
        return int(f.read().strip())


def host_addresses():
    """This machine's IPv4 addresses other than loopback, read when a test runs: those of the
    host side of the networks Skiff creates for instances too (an instance's gateway)."""
    r = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True)
    addrs = re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", r.stdout)
    return [a for a in dict.fromkeys(addrs) if not a.startswith("127.")]


def host_side(port):
    """port on loopback and on every other address of the host."""
    return ["127.0.0.1:%d" % port] + ["%s:%d" % (a, port) for a in host_addresses()]


def droplet_dir(platform, name):
    app = app_json(platform, name)
    d = os.path.join(platform.home, "apps", app["guid"], "droplets", app["droplet"])
    assert os.path.isdir(d), "the droplet of %s is not at %s" % (name, d)
    return d


def droplet_file(platform, name, filename="app.py"):
    """The host path of one file of name's droplet."""
    for dirpath, _, files in os.walk(droplet_dir(platform, name)):
        if filename in files:
            return os.path.join(dirpath, filename)
    raise AssertionError("no %s in the droplet of %s" % (filename, name))


def proc_status(pid):
    with open("/proc/%d/status" % pid) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


class World:
    """The shared platform with the hostile and the victim app running."""


@pytest.fixture(scope="module", params=["warm", "made-at-start"])
def world_platform(request):
    """The suite runs twice: every instance started in a warm container (made ahead, the
    droplet and program handed over at start), then every one made at its start."""
    p = Platform(extra_env={"SKIFF_PREWARM": "4" if request.param == "warm" else "0"}).start()
    p.warm = request.param == "warm"
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def world(world_platform):
    """The module's platform with two tenants: "victim" (a secret in its environment) and
    "hostile" (told where the platform's secrets are), both the hostile app's code."""
    p = world_platform
    w = World()
    w.p = p
    w.secret = "victim-secret-" + secrets.token_hex(8)
    push_hostile(p, "victim")
    p.cli("set-env", "victim", "VICTIM_SECRET", w.secret, check=True)
    p.cli("restart", "victim", check=True, timeout=120)
    push_hostile(p, "hostile")
    # the real paths of the two secrets, handed to the app on purpose: knowing where they are
    # must not be enough to read them
    w.admin_token = os.path.join(p.home, "api.json")
    w.signing_key = os.path.join(p.home, "instance_token.key")
    p.cli("set-env", "hostile", "ADMIN_TOKEN_PATH", w.admin_token, check=True)
    p.cli("set-env", "hostile", "SIGNING_KEY_PATH", w.signing_key, check=True)
    p.cli("restart", "hostile", check=True, timeout=120)
    r = control(p, "hostile", "own_droplet")
    assert r["ok"], "the hostile app cannot read its own droplet: %s" % r["detail"]
    for name in ("victim", "hostile"):
        assert instance(p, name)["warm_start"] is p.warm, app_json(p, name)["instances_detail"]
    return w


# ---- positive controls -------------------------------------------------------------------------

def test_positive_controls(world):
    """The hostile app's mechanisms work on its own things: it reads its droplet, writes and
    reads back TMPDIR, connects to its own port (and recognises itself there), sees its own
    process in /proc and may signal itself. Without this, an app that fails every attempt
    for a reason of its own would pass every test below."""
    for what in ("own_droplet", "tmpdir", "loopback", "self"):
        r = control(world.p, "hostile", what)
        assert r["ok"], "control %s failed: %s" % (what, r["detail"])
    assert http_get(world.p.router_url + "/whoami", "victim.localhost")[0] == 200


def test_publishing_events_still_works_from_inside(world):
    """Isolation must leave the one way out an instance is given: POST to SKIFF_EVENTS_URL
    with SKIFF_EVENTS_TOKEN is answered 202 and the event is in the topic."""
    event_id = "hostile-" + secrets.token_hex(6)
    r = control(world.p, "hostile", "events", topic="from-hostile", id=event_id)
    assert r["ok"] and r["status"] == 202, r["detail"]
    status, text = world.p.api("GET", "/v1/topics/from-hostile/events?from=%d" % r["ack"]["offset"])
    assert status == 200, text
    events = [text] if isinstance(text, dict) else [json.loads(l) for l in text.splitlines() if l.strip()]
    assert any(e["id"] == event_id and e["data"] == {"from": "inside"} for e in events), events


# ---- the container as seen from the host and from inside ----------------------------------------

def test_instance_processes_run_as_unprivileged_host_uid(world):
    """A process that is root on the host (or any low uid) owns the host if it gets out of
    its namespaces by any kernel bug; the instance's processes must run as an unprivileged
    uid of the host (>= 100000), checked from the host in /proc/PID/status."""
    pids = app_pids(world.p, "hostile")
    for pid in pids:
        uids = [int(u) for u in proc_status(pid)["Uid"].split()]
        assert min(uids) >= HOST_UID_MIN, \
            "pid %d of the hostile instance runs as host uids %s (real, effective, saved, fs)" % (pid, uids)


def test_instance_has_its_own_namespaces(world):
    """Each instance runs in mount, PID, IPC, UTS, cgroup, network and user namespaces of its
    own: none is skiffd's (the host's), and none but the user namespace may be another
    instance's (checked from the host: /proc/PID/ns/*)."""
    mine, victim = app_pids(world.p, "hostile")[0], app_pids(world.p, "victim")[0]
    shared = []
    for ns in ("mnt", "pid", "ipc", "uts", "cgroup", "net", "user"):
        own = os.readlink("/proc/%d/ns/%s" % (mine, ns))
        if own == os.readlink("/proc/%d/ns/%s" % (world.p.proc.pid, ns)):
            shared.append("%s with skiffd (%s)" % (ns, own))
        if ns != "user" and own == os.readlink("/proc/%d/ns/%s" % (victim, ns)):
            shared.append("%s with the victim" % ns)
    assert not shared, "the hostile instance shares namespaces: " + ", ".join(shared)


def test_container_layout(world):
    """Inside, Cloud Foundry's layout: user vcap (uid 2000), HOME and the working directory
    /home/vcap/app, TMPDIR=/home/vcap/tmp, PORT=8080, hostname = the instance guid, and the
    API gives the instance's own address (ADDRESS:8080) beside its port."""
    inst = instance(world.p, "hostile")
    r = control(world.p, "hostile", "info")
    got = {"uid": r["uid"], "user": r["user"], "HOME": r["env"]["HOME"], "cwd": r["cwd"],
           "TMPDIR": r["env"]["TMPDIR"], "PORT": r["env"]["PORT"], "hostname": r["hostname"]}
    want = {"uid": VCAP_UID, "user": "vcap", "HOME": "/home/vcap/app", "cwd": "/home/vcap/app",
            "TMPDIR": "/home/vcap/tmp", "PORT": "8080", "hostname": inst["guid"]}
    assert got == want, "inside the instance: %s" % r
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:8080", inst.get("address") or ""), inst
    assert inst.get("port"), inst


# ---- secrets of the platform ---------------------------------------------------------------------

def test_cannot_read_admin_token(world):
    """$SKIFF_HOME/api.json holds the admin token: with it a tenant deletes every other app.
    The app knows its real path (set-env ADMIN_TOKEN_PATH); it must not be able to read it."""
    assert os.path.exists(world.admin_token)
    contained(attack(world.p, "hostile", "read", path_env="ADMIN_TOKEN_PATH"),
              "the admin token must not be readable from an instance")


def test_cannot_read_event_token_signing_key(world):
    """$SKIFF_HOME/instance_token.key signs every instance's event token: with it a tenant
    publishes as any app. The app knows its real path (SIGNING_KEY_PATH); it must not read it."""
    assert os.path.exists(world.signing_key)
    contained(attack(world.p, "hostile", "read", path_env="SIGNING_KEY_PATH"),
              "the event-token signing key must not be readable from an instance")


def test_cannot_read_platform_database(world):
    """skiff.db holds every app's environment (their secrets) and the users: nothing of
    $SKIFF_HOME is visible inside an instance."""
    db = os.path.join(world.p.home, "skiff.db")
    assert os.path.exists(db)
    contained(attack(world.p, "hostile", "read", path=db),
              "the platform's database must not be readable from an instance")


def test_cannot_read_tls_private_keys(world):
    """$SKIFF_HOME/tls holds the local CA's key (with it a tenant makes certificates every
    browser that trusts the CA accepts) and the keys of every HTTPS certificate the router
    serves. Their real paths are known; reading them must fail."""
    tls = os.path.join(world.p.home, "tls")
    for name in ("ca.key", "default.pem"):
        path = os.path.join(tls, name)
        assert os.path.exists(path)
        contained(attack(world.p, "hostile", "read", path=path),
                  "%s must not be readable from an instance" % path)


def test_cannot_connect_to_skiffd_bus(world):
    """skiffd's bus socket ($SKIFF_HOME/run/bus.sock, real path passed in) carries the route
    table and access lines between skiffd and the router: a client on it could announce
    routes of its own. It must not be reachable from an instance."""
    bus = os.path.join(world.p.home, "run", "bus.sock")
    assert os.path.exists(bus)
    contained(attack(world.p, "hostile", "unix", path=bus),
              "skiffd's bus socket must not be reachable from an instance")


def test_cannot_take_over_another_instance_supervisor(platform):
    """Each instance's supervisor listens on $SKIFF_HOME/instances/GUID/shim.sock and takes
    the newest connection as skiffd's: a tenant that connects there cuts skiffd off from the
    victim's instance and can command it. The victim's socket (real path passed in) must not
    be reachable from an instance. (Its own platform: a takeover leaves skiffd unable to stop
    the victim.)"""
    push_hostile(platform, "victim")
    push_hostile(platform, "hostile")
    socks = [os.path.join(platform.home, "instances", i["guid"], "shim.sock")
             for i in running(platform, "victim")]
    assert socks and all(os.path.exists(s) for s in socks), socks
    r = attack(platform, "hostile", "unix", path=socks)
    if r["escaped"]:  # skiffd has lost the victim's supervisor: end it, or skiffd cannot stop
        platform.kill_all()
    contained(r, "another instance's supervisor socket must not be reachable from an instance")


def test_cannot_read_etc_shadow(world):
    """/etc of an instance is generated (passwd with vcap, hosts, resolv.conf, CAs): the
    host's /etc/shadow (password hashes) is not there, and vcap could not read one anyway."""
    assert os.path.exists("/etc/shadow")
    contained(attack(world.p, "hostile", "read", path="/etc/shadow"),
              "the host's /etc/shadow must not be readable from an instance")


# ---- other processes ------------------------------------------------------------------------

def test_cannot_see_host_or_other_app_processes(world):
    """An instance has a PID namespace and a /proc of its own: skiffd, the router and the
    victim's processes (their host pids are passed in) are not there, nor any process of
    another PID namespace, so their command lines and state cannot be read."""
    p = world.p
    targets = ["%d:skiffd" % p.proc.pid, "%d:skiff-router" % router_pid(p)]
    targets += ["%d:app.py" % pid for pid in app_pids(p, "victim")]
    contained(attack(p, "hostile", "proc", target=targets),
              "no process beyond the instance's own PID namespace may be visible")


def test_cannot_signal_router_or_skiffd(world):
    """kill(pid, 0) on the host pids of skiffd, the router and the victim: a tenant that can
    signal them can stop the platform or another tenant. They are not in its PID namespace
    and not its uid."""
    p = world.p
    pids = [p.proc.pid, router_pid(p)] + app_pids(p, "victim")
    contained(attack(p, "hostile", "signal", pid=pids),
              "skiffd, the router and other instances must not be signallable from an instance")
    assert p.proc.poll() is None


def test_cannot_read_victim_environment(world):
    """The victim's environment holds its secrets (VICTIM_SECRET here, service credentials
    in real life): /proc/PID/environ of the victim (its host pids passed in) and of every
    process the hostile app can see must not give them away."""
    pids = app_pids(world.p, "victim")
    with open("/proc/%d/environ" % pids[0], "rb") as f:
        assert ("VICTIM_SECRET=" + world.secret).encode() in f.read(), "the victim has no secret"
    contained(attack(world.p, "hostile", "environ", pid=pids, name="VICTIM_SECRET"),
              "another app's environment must not be readable from an instance")


def test_cannot_read_victim_droplet(world):
    """The victim's droplet (its code, often with config) lives under $SKIFF_HOME on the host
    (its real path passed in): another instance must not be able to read it."""
    path = droplet_file(world.p, "victim")
    contained(attack(world.p, "hostile", "read", path=path),
              "another app's droplet must not be readable from an instance")


def test_cannot_write_victim_droplet(world):
    """Writing into the victim's droplet means running code as the victim on its next start:
    a new file in its droplet (real path passed in) must not be created."""
    d = os.path.dirname(droplet_file(world.p, "victim"))
    targets = [os.path.join(d, "hostile-was-here"), os.path.join(droplet_dir(world.p, "victim"),
                                                                 "hostile-was-here")]
    try:
        r = attack(world.p, "hostile", "write", path=targets)
        landed = [t for t in targets if os.path.exists(t)]
        contained(r, "another app's droplet must not be writable from an instance")
        assert not landed, "files appeared in the victim's droplet: %s" % landed
    finally:
        for t in targets:
            if os.path.exists(t):
                os.unlink(t)


# ---- network ------------------------------------------------------------------------------------

def test_cannot_connect_to_victim_instance(world):
    """Instances reach only their own port: the victim's instance, at its own address from the
    API and at its port on 127.0.0.1, must not accept a connection from the hostile app
    (a connection that turns out to be the hostile app itself does not count)."""
    inst = instance(world.p, "victim")
    addrs = ["127.0.0.1:%d" % inst["port"]] + ([inst["address"]] if inst.get("address") else [])
    who = json.loads(urllib.request.urlopen("http://%s/whoami" % instance_addr(inst), timeout=5).read())
    assert who["guid"] == inst["guid"], who  # the host does reach the victim there
    contained(attack(world.p, "hostile", "connect", addr=addrs, identify="1"),
              "an instance must not reach another instance")


def test_cannot_reach_router_admin_port(world):
    """The router's admin port (/routes, /metrics) tells every route and backend: it listens
    on the host, which an instance reaches only at the publish endpoint (tried at 127.0.0.1
    and at every address of the host, the host side of Skiff's own network included)."""
    port = world.p.router_admin_port
    contained(attack(world.p, "hostile", "connect", addr=host_side(port)),
              "the router's admin port must not be reachable from an instance")


def test_cannot_reach_api_beyond_publish(world):
    """The API is the platform's whole admin surface (one stolen token away from owning it):
    an instance must not connect to it at 127.0.0.1 or at any of the host's addresses (the
    host side of Skiff's own network included); at the host:port of SKIFF_EVENTS_URL only publishing may be answered (GET
    /v1/info, /v1/apps, /v1/topics with or without its token must not be 2xx)."""
    port = world.p.api_port
    contained(attack(world.p, "hostile", "connect", addr=host_side(port),
                     publish_only="1"),
              "the API beyond the publish endpoint must not be reachable from an instance")


def test_cannot_publish_into_another_space(world):
    """An instance's publish token is its space's: with it, an app must not put events into
    another tenant's topics (which its mappings would deliver to that tenant's functions), by
    naming the space in the query or in the topic."""
    p = world.p
    assert p.api("POST", "/v1/orgs", {"name": "victim-org"})[0] in (201, 409)
    assert p.api("POST", "/v1/orgs/victim-org/spaces", {"name": "prod"})[0] in (201, 409)
    contained(attack(p, "hostile", "publish_elsewhere", space=["victim-org/prod"]),
              "an instance token must publish only into its own space")
    status, topics = p.api("GET", "/v1/topics?space=victim-org%2Fprod")
    assert status == 200 and "stolen" not in [t["name"] for t in topics["topics"]]


def test_cannot_bind_router_port_with_reuseport(world):
    """An app that joins the router's listening socket with SO_REUSEPORT receives a share of
    every tenant's routed requests, cookies included. The hostile app binds the router's
    address with SO_REUSEPORT while 30 requests go through the router: none may reach it."""
    p = world.p
    start = attack(p, "hostile", "reuseport_start", port=p.router_port, seconds=60)
    answers = []
    try:
        for _ in range(30):
            answers.append(http_get(p.router_url + "/whoami", "victim.localhost"))
    finally:
        r = attack(p, "hostile", "reuseport_result")
    stolen = [a for a in answers if "stolen" in a[1]]
    contained(r, "no request for the router may reach a tenant's socket (bind: %s)" % start["detail"])
    assert not stolen, "%d of 30 routed requests were answered by the hostile app" % len(stolen)
    assert all(s == 200 for s, _ in answers), answers


# ---- privileges ---------------------------------------------------------------------------------

def test_cannot_mount(world):
    """mount(2) (a tmpfs, a proc, a bind mount) lets a process reshape what it sees and, as
    host root, what the host sees: refused (EPERM) by the lack of CAP_SYS_ADMIN and by seccomp."""
    contained(attack(world.p, "hostile", "mount"), "mount must fail inside an instance")


def test_cannot_ptrace_other_processes(world):
    """ptrace of another process reads and changes its memory (secrets, code): attaching to
    the victim (host pids passed in) and to its own parent (the instance's init or
    supervisor, outside its process tree) must fail."""
    contained(attack(world.p, "hostile", "ptrace", who="others", pid=app_pids(world.p, "victim")),
              "ptrace of another process must fail inside an instance")


def test_cannot_ptrace_even_own_child(world):
    """The seccomp filter refuses ptrace itself (EPERM): no debugging interface is left to
    reach kernel bugs through, not even on a child of its own."""
    contained(attack(world.p, "hostile", "ptrace", who="child"),
              "the seccomp filter must refuse ptrace with EPERM")


def test_cannot_load_kernel_module(world):
    """A kernel module runs as the kernel: init_module, finit_module and delete_module must
    be refused with EPERM by the sandbox before the kernel even looks at the image (ENOSYS
    on a kernel without modules means no filter stood in the way)."""
    contained(attack(world.p, "hostile", "module"),
              "module loading must be refused with EPERM inside an instance")


def test_cannot_create_user_namespace(world):
    """A new user namespace gives its creator every capability inside it, the way to most
    container-escape kernel bugs: unshare(CLONE_NEWUSER) must fail (seccomp, EPERM)."""
    contained(attack(world.p, "hostile", "userns"),
              "creating a user namespace must fail inside an instance")


def test_cannot_create_other_namespaces(world):
    """New mount, network, PID, UTS, IPC and cgroup namespaces are for the platform to make:
    without capabilities, unshare of each must fail."""
    contained(attack(world.p, "hostile", "unshare"),
              "creating namespaces must fail inside an instance")


def test_cannot_raise_capability(world):
    """An instance has no capabilities (CapInh, CapPrm, CapEff, CapAmb all 0) and
    no_new_privs (so no setuid binary gives any): capset cannot add CAP_SYS_ADMIN and
    setuid(0) fails."""
    contained(attack(world.p, "hostile", "capability"),
              "no capability may be held or gained inside an instance")


@pytest.mark.parametrize("syscall", ["kexec_load", "bpf", "keyctl", "settimeofday", "reboot",
                                     "swapon", "setns"])
def test_seccomp_refuses_privileged_syscall(world, syscall):
    """The default seccomp filter answers these with EPERM (not a kill, and before the kernel
    looks at the arguments): kexec, bpf, the kernel keyring, clock setting, reboot, swap and
    joining namespaces are each a way into the host kernel."""
    contained(attack(world.p, "hostile", "syscall", name=syscall),
              "%s must be refused with EPERM inside an instance" % syscall)


def test_proc_sensitive_paths_are_masked_or_read_only(world):
    """/proc/kcore (the kernel's memory) is masked, /proc/sysrq-trigger too, and /proc/sys is
    read-only: opening them (for writing, for the last two) must fail. Nothing is written."""
    contained(attack(world.p, "hostile", "proc_paths"),
              "/proc/kcore, /proc/sysrq-trigger and /proc/sys must be masked or read-only")


def test_cannot_change_own_cgroup_limits(world):
    """An instance that can write its cgroup's memory.limit_in_bytes or pids.max, or move
    itself to the root cgroup, lifts its own limits: those files must not open for writing
    (/sys read-only or absent, a cgroup namespace)."""
    contained(attack(world.p, "hostile", "cgroup"),
              "an instance must not be able to change its own cgroup limits")


def test_dev_is_minimal(world):
    """/dev inside holds only null, zero, full, random, urandom, tty (and pts, shm): the
    host's disks, loop devices, kmsg or mem are ways out."""
    contained(attack(world.p, "hostile", "devices"), "/dev must be minimal inside an instance")


def write_buildpack(folder, compile_body):
    """A buildpack that takes any app, builds it with compile_body (a shell script's body:
    $1 the build folder, $2 the cache) and declares no process types. Its path."""
    (folder / "bin").mkdir(parents=True)
    scripts = {"detect": "echo %s\n" % folder.name, "compile": compile_body,
               "release": "echo '--- {}'\n"}
    for name, body in scripts.items():
        (folder / "bin" / name).write_text("#!/bin/sh\n" + body)
        (folder / "bin" / name).chmod(0o755)
    return str(folder)


def test_staging_disk_quota_holds(world, tmp_path):
    """A bin/compile that writes past the staging disk quota fills the host's disk for
    everyone: staging runs on one disk of the app's disk quota (-k 64M) that the build folder,
    the cache and the container's own /tmp share, so its writes there, 1 GB each, fail with
    ENOSPC after less than 64 MB in all, even though it exits 0; staging fails saying
    `staging stagefill failed: disk quota exceeded (64 MB)`, the host's free space is not spent beyond the limit, skiffd
    stays up and the next push stages and runs."""
    p = world.p
    bp = write_buildpack(tmp_path / "filler-buildpack",
                         "for f in \"$1/fill\" \"$2/fill\" /tmp/fill; do\n"
                         "  dd if=/dev/zero of=\"$f\" bs=1M count=1024 2>&1 | tail -n 1\n"
                         "done\n"
                         "echo \"WROTE $(cat \"$1/fill\" \"$2/fill\" /tmp/fill | wc -c)\"\n"
                         "exit 0\n")
    code = tmp_path / "filler-app"
    code.mkdir()
    (code / "README").write_text("nothing to build\n")
    free_before = shutil.disk_usage(p.home).free
    r = p.cli("push", "stagefill", "-p", str(code), "-b", bp, "-k", "64M", "--no-start",
              "--no-route", timeout=300)
    free_after = shutil.disk_usage(p.home).free
    assert r.returncode != 0, "staging past its disk quota succeeded:\n" + out(r)
    assert "staging stagefill failed: disk quota exceeded (64 MB)" in r.stderr, out(r)
    assert "bin/compile filled the staging disk" in r.stderr, out(r)
    wrote = re.search(r"WROTE (\d+)", r.stdout)
    assert wrote, "bin/compile did not say how much it wrote:\n" + out(r)
    assert int(wrote.group(1)) < 64 << 20, "bin/compile wrote %s bytes under a 64 MB quota" % (
        wrote.group(1))
    # the 3 GB the buildpack tried to write would show; other tests' work on this disk may not
    assert free_before - free_after < 512 << 20, "the host lost %d MB of free space" % (
        (free_before - free_after) >> 20)
    assert p.proc.poll() is None, "skiffd ended during the staging"
    app = app_json(p, "stagefill")
    left = os.listdir(os.path.join(p.home, "apps", app["guid"], "droplets"))
    assert not left, "the failed staging left %s behind" % left
    push_hostile(p, "after-fill", "--no-route")
    assert control(p, "after-fill", "info")["ok"], "the app pushed after the full staging disk"


def test_staging_disk_size_is_configurable_and_the_build_comes_off_it(tmp_path):
    """SKIFF_STAGING_DISK_MB gives every staging a disk of that size whatever the app's disk
    quota: bin/compile sees a 48 MB file system under the build folder. What it builds comes
    out as the droplet, and what it leaves in the cache is there at the next staging."""
    from conftest import Platform
    p = Platform(extra_env={"SKIFF_STAGING_DISK_MB": "48"}).start()
    try:
        bp = write_buildpack(tmp_path / "sizer",
                             "echo \"DISK $(df -k \"$1\" | tail -n 1 | awk '{print $2}')\"\n"
                             "echo \"CACHE $(cat \"$2/runs\" 2>/dev/null || echo 0)\"\n"
                             "echo $(( $(cat \"$2/runs\" 2>/dev/null || echo 0) + 1 )) > \"$2/runs\"\n"
                             "echo built > \"$1/built.txt\"\n")
        code = tmp_path / "sized"
        code.mkdir()
        (code / "Procfile").write_text("web: sleep 1000\n")
        for run in range(2):
            r = p.cli("push", "sized", "-p", str(code), "-b", bp, "--no-start", "--no-route",
                      timeout=300)
            assert r.returncode == 0, out(r)
            kb = int(re.search(r"DISK (\d+)", r.stdout).group(1))
            assert 40 << 10 < kb <= 48 << 10, "the build folder is on %d KB, not 48 MB" % kb
            assert "CACHE %d" % run in r.stdout, "the cache did not carry over:\n" + out(r)
        app = app_json(p, "sized")
        droplet = os.path.join(p.home, "apps", app["guid"], "droplets", app["droplet"])
        built = [os.path.join(d, "built.txt") for d, _, files in os.walk(droplet)
                 if "built.txt" in files]
        assert built, "what bin/compile built is not in the droplet at %s" % droplet
        with open(built[0]) as f:
            assert f.read() == "built\n"
    finally:
        p.close()


# ---- disk -----------------------------------------------------------------------------------------

def test_disk_quota_is_enforced_and_reported(world):
    """An instance that writes past its disk_quota fills the host's disk for everyone: with
    -k 64M, writing 128 MB into TMPDIR fails with ENOSPC or EDQUOT, the app keeps answering,
    and the platform reports `disk quota exceeded` in [CELL/n] and in `skiff app`."""
    p = world.p
    push_hostile(p, "filler", "-k", "64M", "--no-route")
    r = attack(p, "filler", "fill_disk", mb=128, keep=1)
    contained(r, "writing 128 MB under a 64 MB disk quota must fail")
    assert r["errno"] in ("ENOSPC", "EDQUOT"), r
    assert control(p, "filler", "info")["ok"], "the app stopped answering after the full disk"

    def reported():
        logs = p.cli("logs", "filler", "--recent").stdout
        return re.search(r"\[CELL/\d+\].*disk quota exceeded", logs) and logs
    p.wait_for(reported, timeout=30, what="`disk quota exceeded` in [CELL/n] logs")
    p.wait_for(lambda: "disk quota exceeded" in p.cli("app", "filler").stdout, timeout=30,
               what="`disk quota exceeded` in `skiff app filler`")


def test_writes_to_droplet_do_not_survive_restart(world):
    """Writes under /home/vcap/app go to the instance's throw-away layer (or fail, the droplet
    being read-only): a restart starts from the droplet as staged. A marker written before
    the restart must be gone after it, inside and in the droplet on the host."""
    p = world.p
    push_hostile(p, "marker", "--no-route")
    token = secrets.token_hex(8)
    w = attack(p, "marker", "write", path="~/marker", content=token)
    before = control(p, "marker", "marker")
    if w["escaped"]:  # it may write there: then it must read it back before the restart
        assert before["exists"] and before["content"] == token, before
    old = instance(p, "marker")["guid"]
    p.cli("restart", "marker", check=True, timeout=120)
    p.wait_for(lambda: [i["guid"] for i in running(p, "marker")] not in ([], [old]) and
               old not in [i["guid"] for i in running(p, "marker")],
               timeout=60, what="only a new instance of marker running")
    after = control(p, "marker", "marker")
    on_host = [os.path.join(d, "marker") for d, _, files in os.walk(droplet_dir(p, "marker"))
               if "marker" in files]
    assert not after["exists"], "the marker written into HOME survived a restart (%s; %s)" % (
        after["detail"], w["detail"])
    assert not on_host, "the marker landed in the droplet on the host: %s" % on_host


# ---- staging ----------------------------------------------------------------------------------

def test_staging_cannot_escape(world, tmp_path):
    """Buildpacks are untrusted code: a hostile bin/compile (hostile/buildpack, pushed with
    -b) tries the same attacks during staging and prints one line per attempt; every one
    must say escaped=0, and its controls (write the build dir, the cache and TMPDIR, read
    the build dir, see itself in /proc) must work."""
    p = world.p
    victim = instance(p, "victim")
    vdroplet = droplet_file(p, "victim")
    vwrite = os.path.join(os.path.dirname(vdroplet), "staging-was-here")
    victim_addrs = ["127.0.0.1:%d" % victim["port"]] + ([victim["address"]] if victim.get("address") else [])
    # every container may connect to the publish endpoint; there only publishing is answered
    events_url = control(p, "hostile", "info")["env"]["SKIFF_EVENTS_URL"] or ""
    publish = urllib.parse.urlsplit(events_url).netloc
    plan = [
        ["admin_token", "read", {"path": [os.path.join(p.home, "api.json")]}],
        ["signing_key", "read", {"path": [os.path.join(p.home, "instance_token.key")]}],
        ["platform_db", "read", {"path": [os.path.join(p.home, "skiff.db")]}],
        ["etc_shadow", "read", {"path": ["/etc/shadow"]}],
        ["bus_socket", "unix", {"path": [os.path.join(p.home, "run", "bus.sock")]}],
        ["victim_droplet_read", "read", {"path": [vdroplet]}],
        ["victim_droplet_write", "write", {"path": [vwrite]}],
        ["victim_environ", "environ", {"pid": [str(x) for x in app_pids(p, "victim")],
                                       "name": ["VICTIM_SECRET"]}],
        ["processes", "proc", {"target": ["%d:skiffd" % p.proc.pid,
                                          "%d:skiff-router" % router_pid(p)]}],
        ["signal", "signal", {"pid": [str(p.proc.pid), str(router_pid(p))]}],
        ["victim_instance", "connect", {"addr": victim_addrs}],
        ["router_admin", "connect", {"addr": host_side(p.router_admin_port)}],
        ["api", "connect", {"addr": host_side(p.api_port), "publish": [publish]}],
        ["mount", "mount", {}],
        ["ptrace_others", "ptrace", {"who": ["others"],
                                     "pid": [str(x) for x in app_pids(p, "victim")]}],
        ["ptrace_child", "ptrace", {"who": ["child"]}],
        ["module", "module", {}],
        ["userns", "userns", {}],
        ["unshare", "unshare", {}],
        ["capability", "capability", {}],
        ["syscalls", "syscall", {"name": ["kexec_load", "bpf", "keyctl", "settimeofday",
                                          "reboot", "swapon", "setns"]}],
        ["proc_paths", "proc_paths", {}],
        ["cgroup", "cgroup", {}],
        ["devices", "devices", {}],
    ]
    code = tmp_path / "hostile-staging"
    shutil.copytree(HOSTILE, code, ignore=shutil.ignore_patterns("buildpack", "__pycache__"))
    (code / "attack_plan.json").write_text(json.dumps(plan))
    try:
        r = p.cli("push", "stager", "-p", str(code), "-b", BUILDPACK, "--no-start", "--no-route",
                  timeout=300)
        landed = os.path.exists(vwrite)
    finally:
        if os.path.exists(vwrite):
            os.unlink(vwrite)
    assert r.returncode == 0, out(r)
    attacks = dict(re.findall(r"ATTACK (\S+) (escaped=[01]|error.*)", r.stdout))
    controls = dict(re.findall(r"CONTROL (\S+) ok=([01])", r.stdout))
    missing = [label for label, _, _ in plan if label not in attacks]
    assert not missing, "the hostile bin/compile did not report %s:\n%s" % (missing, out(r))
    failed = [c for c in ("write_build", "write_cache", "write_tmp", "read_build", "proc_self")
              if controls.get(c) != "1"]
    assert not failed, "staging controls failed: %s\n%s" % (failed, out(r))
    escaped = [l.strip() for l in r.stdout.splitlines()
               if re.search(r"ATTACK \S+ (escaped=1|error)", l)]
    assert not escaped, "attacks from bin/compile got through:\n" + "\n".join(escaped)
    assert not landed, "bin/compile wrote into the victim's droplet"
