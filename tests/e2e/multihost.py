"""Several hosts on one machine, for the end-to-end tests and bench/scaleout.

Each host is a network namespace the harness creates ("skmh-<pid>-<name>"), joined to the
others by a veth pair into one bridge on a private /24 of 10.250.0.0/16 that no route of the
machine uses yet. The bridge lives in a namespace of its own ("skmh-<pid>-switch"): in the
root namespace, the machine's br_netfilter (bridge-nf-call-iptables) would hand every frame
between hosts to the root namespace's firewall, which is not the one under test. The root
namespace joins the bridge too (a veth "skm<pid36>g" holding .1); hosts get .10, .11, ...
A 3-node nats-server cluster with JetStream and a PostgreSQL server run in the root
namespace and listen on .1 only, so every host reaches them and nothing outside the machine
does. skiffd and its routers run in their host's namespace through `ip netns exec`.

Everything is torn down by Cluster.down (the fixtures call it in a finally), and what a killed
run left (namespaces named after a pid that no longer runs; the veths go with them) is removed
by cleanup_leftovers, which Cluster.up calls first. Names carry the pytest-xdist worker's pid,
so parallel workers never share one.

Needs root (netns, bridges), iproute2, nats-server and PostgreSQL 15's server binaries.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

from conftest import BIN_DIR, Platform, free_port, kill_all, wait_for

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
NS_PREFIX = "skmh-"
LINK_PREFIX = "skm"
# hosts announce and forget each other quickly, so that a test or a bench waits little for them
HOSTS_MS = {"SKIFF_HOSTS_ANNOUNCE_MS": "500", "SKIFF_HOSTS_TTL_MS": "3000"}


def _ip(*args, ns=None, check=True):
    cmd = ["ip"] + (["-n", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), r.stderr.strip()))
    return r.stdout


def _b36(n):
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    s = ""
    while True:
        n, r = divmod(n, 36)
        s = digits[r] + s
        if n == 0:
            return s


def _alive(pid):
    return os.path.exists("/proc/%d" % pid)


def _kill_netns_pids(ns):
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
    for pid in r.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ValueError, OSError):
            pass


def cleanup_leftovers():
    """Removes the namespaces and bridges of runs whose process is gone (a killed run)."""
    for line in _ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"^skmh-(\d+)-", name)
        if m and not _alive(int(m.group(1))):
            _kill_netns_pids(name)
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", "type", "veth").splitlines():
        m = re.match(r"^\d+: (skm([0-9a-z]+)g)[:@]", line)
        if m and not _alive(int(m.group(2), 36)):
            _ip("link", "del", m.group(1), check=False)


def _free_subnet():
    """A 10.250.X.0/24 that no address or route of the root namespace uses."""
    used = _ip("-4", "route", "show") + _ip("-4", "addr", "show")
    start = os.getpid() % 250
    for i in range(250):
        x = (start + i) % 250 + 1
        if ("10.250.%d." % x) not in used:
            return "10.250.%d" % x
    raise RuntimeError("no free /24 in 10.250.0.0/16")


class Host:
    """One network namespace on the bridge."""

    def __init__(self, cluster, name, index):
        self.cluster = cluster
        self.name = name
        self.ns = "%s%d-%s" % (NS_PREFIX, os.getpid(), name)
        self.addr = "%s.%d" % (cluster.subnet, 10 + index)
        self.link = "h%d" % index  # its end in the switch's namespace

    def up(self):
        sw = self.cluster.switch_ns
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.link, "type", "veth", "peer", "name", "lan0", "netns", self.ns,
            ns=sw)
        _ip("link", "set", self.link, "master", "br0", "up", ns=sw)
        _ip("addr", "add", self.addr + "/24", "dev", "lan0", ns=self.ns)
        _ip("link", "set", "lo", "up", ns=self.ns)
        _ip("link", "set", "lan0", "up", ns=self.ns)

    def cmd(self, *args):
        """argv that runs args in this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *args]

    def enter(self, *args):
        """argv that runs args in this host's network namespace only: `ip netns exec` would
        also mount a sysfs of its own, without the cgroup file systems under it, which a host
        that runs containers needs."""
        return ["nsenter", "--net=/run/netns/" + self.ns, *args]

    def run(self, *args, check=True, timeout=60):
        r = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("%s on %s: %s" % (" ".join(args), self.name, r.stderr.strip()))
        return r

    def link_down(self):
        _ip("link", "set", "lan0", "down", ns=self.ns)

    def link_up(self):
        _ip("link", "set", "lan0", "up", ns=self.ns)

    def routes(self, proto=None):
        args = ["-4", "route", "show"] + (["proto", str(proto)] if proto else [])
        return _ip(*args, ns=self.ns)

    def down(self):
        _kill_netns_pids(self.ns)
        _ip("netns", "del", self.ns, check=False)


class NatsNode:
    def __init__(self, cluster, name, store):
        self.cluster, self.name, self.store = cluster, name, store
        self.port, self.cluster_port, self.monitor_port = free_port(), free_port(), free_port()
        self.proc = None

    @property
    def url(self):
        return "nats://%s:%d" % (self.cluster.gateway, self.port)

    def start(self, routes):
        args = ["nats-server", "-js", "-a", self.cluster.gateway, "-p", str(self.port),
                "-m", str(self.monitor_port), "-sd", os.path.join(self.store, self.name),
                "-n", self.name, "--cluster_name", "skmh", "--cluster",
                "nats://%s:%d" % (self.cluster.gateway, self.cluster_port),
                "--routes", ",".join(routes)]
        log = open(os.path.join(self.store, self.name + ".log"), "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()

    def jsz(self):
        with urllib.request.urlopen("http://%s:%d/jsz" % (self.cluster.gateway, self.monitor_port),
                                    timeout=2) as r:
            return json.load(r)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(15)


class Cluster:
    """A bridge, hosts on it, and the shared engines (NATS JetStream R3, PostgreSQL)."""

    def __init__(self, names=("a", "b", "c"), nats_nodes=3, postgres=True):
        self.names = list(names)
        self.tag = _b36(os.getpid())
        self.switch_ns = "%s%d-switch" % (NS_PREFIX, os.getpid())
        self.uplink = "%s%sg" % (LINK_PREFIX, self.tag)  # the root namespace's port
        self.subnet = None
        self.gateway = None
        self.hosts = {}
        self.nats = []
        self.n_nats = nats_nodes
        self.want_postgres = postgres
        self.pg_dir = None
        self.pg_port = None
        self.store = tempfile.mkdtemp(prefix="skiff-mh-")

    def up(self):
        try:
            return self._up()
        except BaseException:
            self.down()
            raise

    def _up(self):
        cleanup_leftovers()
        self.subnet = _free_subnet()
        self.gateway = self.subnet + ".1"
        _ip("netns", "add", self.switch_ns)
        _ip("link", "add", "br0", "type", "bridge", ns=self.switch_ns)
        _ip("link", "set", "br0", "up", ns=self.switch_ns)
        _ip("link", "add", self.uplink, "type", "veth", "peer", "name", "up0", "netns",
            self.switch_ns)
        _ip("link", "set", "up0", "master", "br0", "up", ns=self.switch_ns)
        _ip("addr", "add", self.gateway + "/24", "dev", self.uplink)
        _ip("link", "set", self.uplink, "up")
        for i, name in enumerate(self.names):
            h = Host(self, name, i)
            self.hosts[name] = h
            h.up()
        if self.n_nats:
            self._start_nats()
        if self.want_postgres:
            self._start_postgres()
        return self

    def host(self, name):
        return self.hosts[name]

    @property
    def nats_urls(self):
        return ",".join(n.url for n in self.nats)

    def _start_nats(self):
        self.nats = [NatsNode(self, "n%d" % i, self.store) for i in range(self.n_nats)]
        routes = ["nats://%s:%d" % (self.gateway, n.cluster_port) for n in self.nats]
        for n in self.nats:
            n.start(routes)
        wait_for(lambda: all(n.jsz().get("meta_cluster", {}).get("leader") for n in self.nats)
                 if self.n_nats > 1 else self.nats[0].jsz(), 60,
                 "the JetStream cluster to elect a meta leader")

    def _as_pg(self, *args):
        cmd = list(args)
        if os.getuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError("%s: %s%s" % (" ".join(args), r.stdout, r.stderr))
        return r

    def _start_postgres(self):
        self.pg_dir = os.path.join(self.store, "pg")
        os.makedirs(self.pg_dir)
        if os.getuid() == 0:
            shutil.chown(self.pg_dir, "postgres")
            os.chmod(self.store, 0o755)
        data = os.path.join(self.pg_dir, "data")
        self._as_pg(os.path.join(PG_BIN, "initdb"), "-D", data, "-A", "trust", "-U", "postgres",
                    "-E", "UTF8", "--no-sync")
        with open(os.path.join(data, "pg_hba.conf"), "a") as f:
            f.write("host all all %s.0/24 trust\n" % self.subnet)
        self.pg_port = free_port()
        self._as_pg(os.path.join(PG_BIN, "pg_ctl"), "-D", data, "-l",
                    os.path.join(self.pg_dir, "server.log"), "-w", "-t", "60", "-o",
                    "-k %s -c listen_addresses=%s -p %d -c fsync=off -c max_connections=200"
                    % (self.pg_dir, self.gateway, self.pg_port), "start")

    def postgres_url(self, db="postgres"):
        return "postgres://postgres@%s:%d/%s" % (self.gateway, self.pg_port, db)

    def create_database(self, name):
        self._as_pg(os.path.join(PG_BIN, "psql"), "-h", self.pg_dir, "-p", str(self.pg_port),
                    "-U", "postgres", "-d", "postgres", "-c", "CREATE DATABASE %s" % name)
        return self.postgres_url(name)

    def down(self):
        errors = []
        for h in self.hosts.values():
            try:
                h.down()
            except Exception as e:  # keep tearing down the rest
                errors.append(e)
        for n in self.nats:
            n.stop()
        if self.pg_dir and os.path.isdir(os.path.join(self.pg_dir, "data")):
            try:
                self._as_pg(os.path.join(PG_BIN, "pg_ctl"), "-D",
                            os.path.join(self.pg_dir, "data"), "-m", "immediate", "-w", "-t",
                            "60", "stop")
            except RuntimeError as e:
                errors.append(e)
        _ip("netns", "del", self.switch_ns, check=False)
        _ip("link", "del", self.uplink, check=False)
        shutil.rmtree(self.store, ignore_errors=True)
        if errors:
            raise errors[0]


class HostPlatform(Platform):
    """skiffd (all roles) in a host's namespace, its API and router on the host's address.
    containers=True: entered with Host.enter, so that it can run its instances in containers."""

    def __init__(self, host, extra_args=(), extra_env=None, containers=False):
        super().__init__(extra_args=extra_args, extra_env=extra_env)
        self.host = host
        self.containers = containers
        a = host.addr
        self.api_url = "http://%s:%d" % (a, self.api_port)
        self.router_url = "http://%s:%d" % (a, self.router_port)
        self.extra_env.update({
            "SKIFF_API_ADDR": "%s:%d" % (a, self.api_port),
            "SKIFF_ROUTER_ADDR": "%s:%d" % (a, self.router_port),
            "SKIFF_ROUTER_ADMIN_ADDR": "%s:%d" % (a, self.router_admin_port),
            "SKIFF_ROUTER_TLS_ADDR": "",
            "SKIFF_API_TLS_ADDR": "",
        })

    def start(self, timeout=60):
        out = open(self.log_path, "ab")
        argv = [os.path.join(BIN_DIR, "skiffd"), *self.extra_args]
        self.proc = subprocess.Popen(self.host.enter(*argv) if self.containers else
                                     self.host.cmd(*argv),
                                     env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        wait_for(lambda: self.proc.poll() is not None or self.info(), timeout,
                 "skiffd on host %s to answer /v1/info" % self.host.name)
        assert self.proc.poll() is None, "skiffd exited at start:\n" + self.output()
        return self


class HostProcess:
    """A skiffd role started in a host's namespace with a home of its own: its output is
    home/LOG, it is stopped with SIGTERM (SIGKILL after STOP_WAIT s) and its home removed."""

    LOG = "skiffd.out"
    STOP_WAIT = 15
    OUTPUT_TAIL = 10000

    def output(self):
        try:
            with open(os.path.join(self.home, self.LOG), errors="replace") as f:
                return f.read()[-self.OUTPUT_TAIL:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.STOP_WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def close(self):
        try:
            self.stop()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


class HostRouter(HostProcess):
    """`skiffd --role router --nats ... --host-addr ...` in a host's namespace."""

    LOG = "router.out"

    def __init__(self, host, nats_urls, extra_env=None):
        self.host = host
        self.nats_urls = nats_urls
        self.home = tempfile.mkdtemp(prefix="skiff-mhrtr-")
        self.port, self.admin_port = free_port(), free_port()
        self.router_url = "http://%s:%d" % (host.addr, self.port)
        self.admin_url = "http://%s:%d" % (host.addr, self.admin_port)
        self.extra_env = dict(extra_env or {})
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKIFF_")}
        env["HOME"] = self.home
        env["SKIFF_NATS"] = self.nats_urls
        env.update(self.extra_env)
        log = open(os.path.join(self.home, "router.out"), "ab")
        self.proc = subprocess.Popen(self.host.cmd(
            os.path.join(BIN_DIR, "skiffd"), "--role", "router", "--home", self.home,
            "--host-addr", self.host.addr,
            "--router-addr", "%s:%d" % (self.host.addr, self.port),
            "--router-admin-addr", "%s:%d" % (self.host.addr, self.admin_port)),
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self.proc.poll() is not None or self.health(), 30,
                 "the router on host %s to start" % self.host.name)
        assert self.proc.poll() is None, self.output()
        return self

    def health(self):
        with urllib.request.urlopen(self.admin_url + "/health", timeout=2) as r:
            return r.status == 200

    def get(self, host, path="/", timeout=10):
        req = urllib.request.Request(self.router_url + path, headers={"Host": host})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("X-Skiff-Router-Error", "")
        except OSError as e:
            return 0, repr(e)


def until(cond, timeout, what):
    """wait_for with a monotonic start returned: (value, seconds it took)."""
    t0 = time.monotonic()
    v = wait_for(cond, timeout, what)
    return v, time.monotonic() - t0


def start_controller(cluster, host, pool, database, extra_env=None, extra_args=()):
    """`skiffd --role controller` on host, on PostgreSQL database and the cluster's JetStream
    R3 (HostCell.join gives a cell its token and the controller's address)."""
    ctl = HostPlatform(host, extra_args=[*extra_args,
        "--role", "controller", "--store", cluster.create_database(database), "--nats",
        cluster.nats_urls, "--nats-replicas", "3", "--host-addr", host.addr, "--network-pool",
        pool, "--prewarm", "0", "--zone", "zone-" + host.name],
        extra_env={**HOSTS_MS, "SKIFF_CELL_HEARTBEAT_MS": "500", **(extra_env or {})})
    try:
        ctl.start()
    except BaseException:
        ctl.close()
        raise
    return ctl


class HostCell(HostProcess):
    """`skiffd --role cell --host-addr` in a host's namespace, with a home of its own."""

    LOG = "cell.out"
    STOP_WAIT = 30
    OUTPUT_TAIL = 40000

    def __init__(self, host, nats_urls, pool, memory="2G", prewarm=1, extra_env=None):
        self.host, self.nats_urls, self.pool = host, nats_urls, pool
        self.memory, self.prewarm = memory, prewarm
        self.extra_env = dict(extra_env or {})
        self.home = tempfile.mkdtemp(prefix="skiff-mhcell-")
        self.id = uuid.uuid4().hex
        with open(os.path.join(self.home, "cell-id"), "w") as f:
            f.write(self.id + "\n")
        self.proc = None
        self.controllers = []  # --controller-url, in order

    def join(self, ctl):
        """What the operator does: makes the cell its own token on the controller, puts it in
        the cell's home (mode 0600) and names the controller it fetches droplets from (the
        API's address on the controller's host)."""
        status, made = ctl.api("POST", "/v1/cell_tokens", {"cell": self.id})
        assert status == 201, made
        with open(os.path.join(self.home, "cell-token"), "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(made["token"] + "\n")
        self.controllers.append(ctl.api_url)
        return self

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKIFF_")}
        # unused image layers kept 2 s (not the default 10 minutes): the tests see them collected
        env.update(HOME=self.home, SKIFF_NATS=self.nats_urls, SKIFF_CELL_HEARTBEAT_MS="300",
                   SKIFF_GRACE_MS="2000", SKIFF_CELL_LAYER_GRACE_MS="2000", **HOSTS_MS)
        env.update(self.extra_env)
        log = open(os.path.join(self.home, "cell.out"), "ab")
        self.proc = subprocess.Popen(self.host.enter(
            os.path.join(BIN_DIR, "skiffd"), "--role", "cell", "--home", self.home,
            "--host-addr", self.host.addr, "--network-pool", self.pool, "--prewarm",
            str(self.prewarm), "--zone", "zone-" + self.host.name, "--memory", self.memory,
            *[arg for url in self.controllers for arg in ("--controller-url", url)]),
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def kill9(self):
        """The host's crash, as far as the cell goes: kill -9 of the agent, its shims and its
        instances."""
        kill_all(self.proc, self.home)
        self.proc.wait()


def cells_up(ctl):
    """The ids of the cells the controller lists up."""
    return {x["id"] for x in cells_listed(ctl) if x["state"] == "up"}


def cells_listed(ctl):
    """The cells (`--role cell`) the controller lists, whatever their state."""
    status, body = ctl.api("GET", "/v1/cells")
    return [x for x in body.get("cells", []) if x.get("role") == "cell"] if status == 200 else []


def running(ctl, name):
    """The app's instances the controller shows RUNNING."""
    status, app = ctl.api("GET", "/v1/apps/%s" % name)
    assert status == 200, app
    return [i for i in app.get("instances_detail", []) if i.get("guid") and
            i["state"] == "RUNNING"]


def backends(router, host):
    """The addresses the router sends host's requests to (its admin port's /routes)."""
    path = os.path.join(router.home, "api.json")  # the admin token the router checks against
    if not os.path.exists(path):
        with open(path, "w") as f:
            json.dump({"token": uuid.uuid4().hex}, f)
    with open(path) as f:
        token = json.load(f)["token"]
    req = urllib.request.Request(router.admin_url + "/routes",
                                 headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=5) as r:
        table = json.load(r)
    return [a for x in table["routes"] if x["host"] == host for a in x["backends"]]
