"""Shared fixtures for end-to-end tests: a real skiffd with its own home and free ports,
and the real skiff CLI pointed at it. Tests use the platform as a user does.

    def test_something(platform):
        r = platform.cli("apps")            # runs `skiff apps`, returns CompletedProcess
        assert r.returncode == 0
        platform.wait_for(lambda: ..., timeout=10, what="app running")
"""
import contextlib
import errno
import fcntl
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import textwrap
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN_DIR = os.environ.get("SKIFF_BIN_DIR", os.path.join(ROOT, "build", "asan"))


@contextlib.contextmanager
def throwaway_postgres():
    """A PostgreSQL server of its own on a Unix socket in a new folder (scripts/pg-throwaway.sh),
    stopped at the end; a server that cannot start fails the test (there is no skip)."""
    d = tempfile.mkdtemp(prefix="skiff-pg-")
    script = os.path.join(ROOT, "scripts", "pg-throwaway.sh")
    subprocess.run([script, "start", d], check=True, capture_output=True, timeout=120)
    try:
        yield d
    finally:
        subprocess.run([script, "stop", d], check=True, timeout=120)


def postgres_ctl(pg_dir, action, tcp_port=None):
    """Stops, starts or restarts a throwaway_postgres server (pg_ctl, waiting for it), with the
    options scripts/pg-throwaway.sh starts it with; with tcp_port, it listens on that port of
    127.0.0.1 too (its Unix socket then has that port's number)."""
    as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
    listen = f"-c listen_addresses=127.0.0.1 -p {tcp_port}" if tcp_port else "-c listen_addresses=''"
    subprocess.run(as_pg + ["/usr/lib/postgresql/15/bin/pg_ctl", "-D", os.path.join(pg_dir, "data"),
                            "-l", os.path.join(pg_dir, "server.log"), "-m", "fast", "-w",
                            "-t", "60", "-o", f"-k {pg_dir} {listen} -c fsync=off",
                            action], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def packets_dropped(*ports, peer=None):
    """For the block, every TCP packet to or from each of ports on this machine is dropped (a
    table of its own in nft): a link cut without a word, as a pulled cable or a host gone.
    With peer, only those between each of ports and peer (one connection each, when ports are
    its client's: another test's connection may have the same client port to another peer)."""
    table = "skiff_test_cut_%d_%d" % (os.getpid(), ports[0])
    other = f"tcp dport {peer} " if peer else ""
    back = f"tcp sport {peer} " if peer else ""
    rules = "\n".join(f"        {other}tcp sport {p} drop\n        {back}tcp dport {p} drop"
                      for p in ports)
    subprocess.run(["nft", "-f", "-"], check=True, text=True, input=f"""
table inet {table} {{
    chain input {{
        type filter hook input priority -10; policy accept;
{rules}
    }}
}}""")
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=True)


def postgres_server_pids(pg_dir):
    """The postmaster of a throwaway_postgres server and its children (to pause it with
    SIGSTOP, say)."""
    with open(os.path.join(pg_dir, "data", "postmaster.pid")) as f:
        master = int(f.readline())
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True,
                         text=True).stdout
    return [master] + [int(p) for p in out.split()]


def _threads_stopped(pid):
    """Whether every thread of pid is stopped (state T or t); a process that ended is too (a
    zombie as well: a backend that exits after its postmaster was stopped stays one)."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:
        return True
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


def stop_processes(pids):
    """SIGSTOP to each of pids, then waits until every thread of each is stopped. kill()
    returns before that: one thread takes the signal and stops the others, so a many-threaded
    server (nats-server) can still answer a request that comes in the meantime."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:  # ended since it was listed (a backend of psql's, say)
            pass
    wait_for(lambda: all(_threads_stopped(pid) for pid in pids), 10,
             "the stopped processes' threads to stop", interval=0.005)


def read_pid_file(path):
    """The pid in a pid file of skiffd's run/ ("PID" or, for instances, "PID STARTTIME")."""
    with open(path) as f:
        return int(f.read().split()[0])


PORT_RESERVATIONS = os.path.join(tempfile.gettempdir(), "skiff-e2e-ports")
PORT_RESERVED_S = 900  # longer than a test may take (--timeout 600) to bind what it was given


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(family, host, port):
    try:
        with socket.socket(family) as s:
            s.bind((host, port))
            return True
    except OSError as e:
        # no IPv6 on this machine: nothing can hold [::1]:port either
        return family == socket.AF_INET6 and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


def free_port():
    """A port for a server of the test to listen on (127.0.0.1 and [::1] both free), reserved
    for this caller among every test process on the machine for PORT_RESERVED_S.

    Not the kernel's choice (a bind to port 0): that port is free again once the probe socket
    closes, and the kernel hands out the same range to any process's bind to port 0 and to
    outgoing connections, so in the seconds before skiffd or its router bound it another
    process could take it (the router then exits and is restarted each second while skiffd
    answers, and requests to it are refused). Here the port is below the ephemeral range,
    which the kernel never gives out by itself, and a file per port, written under a lock
    shared by all test processes, keeps other tests from choosing it again meanwhile."""
    if not os.path.isdir(PORT_RESERVATIONS):
        os.makedirs(PORT_RESERVATIONS, exist_ok=True)
        with contextlib.suppress(OSError):  # shared by the test runs of every user, as /tmp
            os.chmod(PORT_RESERVATIONS, 0o1777)
    high = min(_ephemeral_low(), 65536) - 1
    low = max(1024, high - 16383)
    with open(os.path.join(PORT_RESERVATIONS, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        now = time.time()
        for _ in range(1000):
            port = random.randint(low, high)
            path = os.path.join(PORT_RESERVATIONS, str(port))
            try:
                if now - os.stat(path).st_mtime < PORT_RESERVED_S:
                    continue
            except FileNotFoundError:
                pass
            if not (_bindable(socket.AF_INET, "127.0.0.1", port)
                    and _bindable(socket.AF_INET6, "::1", port)):
                continue
            try:
                with open(path, "w"):
                    pass
                os.utime(path, (now, now))
            except PermissionError:  # another user's reservation, expired: theirs to renew
                continue
            return port
    raise AssertionError(f"no free port in {low}-{high} after 1000 tries")


def wait_for(cond, timeout=10.0, what="condition", interval=0.02):
    """Polls cond() until it returns a truthy value, which is returned; fails at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = cond()
            if last:
                return last
        except Exception as e:  # the condition may raise while the thing is coming up
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def app_source(name):
    """tests/e2e/apps/NAME as bytes: the source of an app a test pushes."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "apps", name), "rb") as f:
        return f.read()


# the web app of the deploy, drain and autoscaling tests
WEB_APP = app_source("web.py")


def kill_all(proc, home):
    """kill -9 of a skiffd (proc, started in a session of its own) and of what it started in
    that session or under the shims whose pids it keeps in home/run (instances, routers)."""
    if proc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run = os.path.join(home, "run")
    if os.path.isdir(run):
        for name in os.listdir(run):
            if name.endswith(".pid"):
                try:
                    pid = read_pid_file(os.path.join(run, name))
                    os.killpg(pid, signal.SIGKILL)
                except (ValueError, OSError, IndexError):
                    pass


# Every skiffd on one PostgreSQL store must seal service credentials with the same key
# (services_key_check refuses to start another): the tests' skiffds on PostgreSQL all get this
# one, as an operator copies services.key to every controller.
SHARED_SERVICES_KEY = bytes(range(32))


def share_services_key(home, args):
    """Puts SHARED_SERVICES_KEY in home when args name a PostgreSQL store and home has no key."""
    store = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--store"), "")
    path = os.path.join(home, "services.key")
    if store.startswith(("postgres://", "postgresql://")) and not os.path.exists(path):
        os.makedirs(home, exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(SHARED_SERVICES_KEY)


class Platform:
    def __init__(self, home=None, extra_env=None, extra_args=()):
        self.home = home or tempfile.mkdtemp(prefix="skiff-e2e-")
        share_services_key(self.home, list(extra_args))
        self.api_port = free_port()
        self.router_port = free_port()
        self.router_admin_port = free_port()
        self.router_tls_port = free_port()
        self.api_tls_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.router_url = f"http://127.0.0.1:{self.router_port}"
        self.extra_env = dict(extra_env or {})
        self.extra_args = list(extra_args)
        self.proc = None
        self.log_path = os.path.join(self.home, "skiffd.out")

    def env(self):
        env = dict(os.environ)
        env.update({
            "SKIFF_HOME": self.home,
            "SKIFF_API_ADDR": f"127.0.0.1:{self.api_port}",
            "SKIFF_ROUTER_ADDR": f"127.0.0.1:{self.router_port}",
            "SKIFF_ROUTER_ADMIN_ADDR": f"127.0.0.1:{self.router_admin_port}",
            "SKIFF_ROUTER_TLS_ADDR": f"127.0.0.1:{self.router_tls_port}",
            "SKIFF_API_TLS_ADDR": f"127.0.0.1:{self.api_tls_port}",
            "HOME": self.home,  # the CLI keeps its login under $HOME/.skiff: keep it per test
            # the binaries may be built outside the tree (make BUILD=...): name the buildpacks
            "SKIFF_BUILDPACKS": os.path.join(ROOT, "buildpacks"),
            # the built-in brokers (PostgreSQL, Redis) run only where a test asks for them
            # (extra_env SKIFF_BUILTIN_BROKERS=1: tests/e2e/test_builtin_brokers.py)
            "SKIFF_BUILTIN_BROKERS": "0",
        })
        env.pop("SKIFF_API", None)
        env.pop("SKIFF_TOKEN", None)
        env.update(self.extra_env)
        return env

    def start(self, timeout=20):
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen([os.path.join(BIN_DIR, "skiffd"), *self.extra_args],
                                     env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        wait_for(lambda: self.proc.poll() is not None or self.info(), timeout,
                 "skiffd to answer /v1/info")
        assert self.proc.poll() is None, "skiffd exited at start:\n" + self.output()
        return self

    def info(self):
        with urllib.request.urlopen(self.api_url + "/v1/info", timeout=2) as r:
            return json.load(r)

    @property
    def token(self):
        with open(os.path.join(self.home, "api.json")) as f:
            return json.load(f)["token"]

    def api(self, method, path, body=None, token=True, headers=None, raw=None):
        """Calls the API directly; returns (status, parsed JSON or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.api_url + path, data=data, method=method)
        if token:
            req.add_header("Authorization", "Bearer " + (token if isinstance(token, str) else self.token))
        if body is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def cli(self, *args, input=None, timeout=120, check=False):
        r = subprocess.run([os.path.join(BIN_DIR, "skiff"), *args], env=self.env(), input=input,
                           capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and r.returncode != 0:
            raise AssertionError(f"skiff {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def output(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-20000:]
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError("skiffd did not exit on SIGTERM within %ss" % timeout)

    def kill_all(self):
        """Last-resort cleanup: whatever skiffd started in its session (router, instances)."""
        kill_all(self.proc, self.home)

    def report(self):
        """Prints the end of skiffd's output (its router's lines included) before
        its home goes: pytest shows what a test printed only when it fails, so a failure that
        does not come back when run again still leaves the logs that explain it."""
        print(f"--- skiffd output ({self.log_path}, last 20000 characters)\n{self.output()}")

    def close(self):
        """Stops skiffd, kills whatever it left running, reports its output and removes its home."""
        try:
            self.stop()
        finally:
            self.kill_all()
            self.report()
            shutil.rmtree(self.home, ignore_errors=True)

    wait_for = staticmethod(wait_for)


def cli_at_home(home, *args, extra_env=None, input=None, cwd=ROOT):
    """Runs `skiff ARGS` with HOME and SKIFF_HOME at home and no SKIFF_API or SKIFF_TOKEN: no
    login and no platform, unless extra_env names one."""
    env = dict(os.environ)
    for k in ("SKIFF_API", "SKIFF_TOKEN"):
        env.pop(k, None)
    env.update({"HOME": home, "SKIFF_HOME": home})
    env.update(extra_env or {})
    return subprocess.run([os.path.join(BIN_DIR, "skiff"), *args], env=env, input=input,
                          capture_output=True, text=True, timeout=60, cwd=cwd)


def http_get(url, host=None, timeout=5):
    """GET url (with that Host header, for the router); returns (status, text), errors too."""
    req = urllib.request.Request(url)
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def instance_url(inst, path="/"):
    """The URL of an instance itself: its own address in a container (IP:8080), or the
    loopback port of a host process (--isolation process)."""
    return "http://%s%s" % (inst.get("address") or "127.0.0.1:%d" % inst["port"], path)


def app_json(platform, name):
    """`skiff app NAME --json`, parsed."""
    r = platform.cli("app", name, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def tar_gz(entries):
    """A .tar.gz of entries: (name, bytes) or (name, ('symlink', target))."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as t:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = content[1]
                t.addfile(info)
            else:
                info.size = len(content)
                t.addfile(info, io.BytesIO(content))
    return data.getvalue()


def deploy_bits(platform, name, files, app):
    """Through the API as the CLI does: creates or updates app `name` with the fields in `app`,
    uploads `files` (tar_gz entries) as its bits, stages and starts it."""
    status, text = platform.api("PUT", f"/v1/apps/{name}", app)
    assert status in (200, 201), text
    status, text = platform.api("PUT", f"/v1/apps/{name}/bits", raw=tar_gz(files),
                                headers={"Content-Type": "application/octet-stream"})
    assert status == 201, text
    status, text = platform.api("POST", f"/v1/apps/{name}/stage")
    assert status == 200 and '"ok":true' in text.replace(" ", ""), text
    assert platform.api("POST", f"/v1/apps/{name}/start")[0] == 200


def out(r):
    """A finished `skiff` run as text for an assertion message."""
    return f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


def write(dirpath, name, text):
    """Writes text (dedented) to dirpath/name; returns the path."""
    path = os.path.join(str(dirpath), name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


def push_function(platform, name, path, handler="handle"):
    """`skiff push NAME --function PATH:HANDLER`, which must succeed."""
    r = platform.cli("push", name, "--function", f"{path}:{handler}")
    assert r.returncode == 0, out(r)
    return r


@pytest.fixture
def platform():
    p = Platform().start()
    try:
        yield p
    finally:
        try:
            p.stop()
        finally:
            p.kill_all()
            p.report()
            shutil.rmtree(p.home, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_platform():
    """One daemon for a whole test module, for tests that do not disturb each other."""
    p = Platform().start()
    try:
        yield p
    finally:
        p.close()
