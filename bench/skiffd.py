"""Starting and stopping a real skiffd for the benchmarks, in one place.

    sys.path.insert(0, <bench folder>); import skiffd
    d = skiffd.start(bindir, "skiff-bench-")   # a new home, free loopback ports, API up
    d.call("GET", "/v1/apps")                  # the admin token's API call: (status, body)
    d.stop()                                   # SIGTERM, then whatever is left, then the home

skiffd runs in a session of its own, with its output in HOME/skiffd.out and its pid in
HOME/skiffd.pid, so `stop_home(HOME)` ends it from another process too (what
bench/router/platform_bench.sh does between its steps)."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout, what, interval=0.02):
    """cond()'s first true value, tried every interval until timeout; exits the benchmark
    naming what it waited for when it never comes (errors on the way count as not yet)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except (OSError, ValueError, KeyError, http.client.HTTPException) as e:
            last = e
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Skiffd:
    def __init__(self, bindir, home, env, proc, api_port, router_port, admin_port):
        self.bindir, self.home, self.env, self.proc = bindir, home, env, proc
        self.api_port, self.router_port, self.admin_port = api_port, router_port, admin_port
        self.api = f"http://127.0.0.1:{api_port}"
        self.token = json.load(open(os.path.join(home, "api.json")))["token"]
        self._conn = None

    def call(self, method, path, body=None, token=None, timeout=60):
        """One API request on a kept connection: (status, raw body). token: the admin's
        unless given ("" for none)."""
        token = self.token if token is None else token
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Bearer " + token
        data = json.dumps(body) if body is not None else None
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.api_port,
                                                        timeout=timeout)
            try:
                self._conn.request(method, path, body=data, headers=headers)
                r = self._conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise

    def cli(self, *args, timeout=300):
        return subprocess.run([os.path.join(self.bindir, "skiff"), *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self):
        if self._conn:
            self._conn.close()
        stop_home(self.home)


def start(bindir, prefix="skiff-bench-", extra_env=None, extra_args=()):
    """skiffd from bindir (with extra_args) in a new home on free loopback ports, once its API
    answers."""
    home = tempfile.mkdtemp(prefix=prefix)
    os.chmod(home, 0o755)
    api_port, router_port, admin_port = free_port(), free_port(), free_port()
    env = dict(os.environ, SKIFF_HOME=home, HOME=home, SKIFF_API_ADDR=f"127.0.0.1:{api_port}",
               SKIFF_ROUTER_ADDR=f"127.0.0.1:{router_port}",
               SKIFF_ROUTER_ADMIN_ADDR=f"127.0.0.1:{admin_port}",
               SKIFF_ROUTER_TLS_ADDR=f"127.0.0.1:{free_port()}",
               SKIFF_API_TLS_ADDR=f"127.0.0.1:{free_port()}",
               SKIFF_BUILDPACKS=os.path.join(ROOT, "buildpacks"), **(extra_env or {}))
    env.pop("SKIFF_API", None)
    env.pop("SKIFF_TOKEN", None)
    with open(os.path.join(home, "skiffd.out"), "wb") as log:
        proc = subprocess.Popen([os.path.join(bindir, "skiffd"), *extra_args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(home, "skiffd.pid"), "w") as f:
        f.write(str(proc.pid))
    try:
        def up():
            if proc.poll() is not None:
                raise SystemExit(f"skiffd exited with {proc.returncode}:\n" + tail(home))
            with socket.create_connection(("127.0.0.1", api_port), timeout=1) as s:
                s.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return s.recv(16).startswith(b"HTTP/1.1 200")
        wait_for(up, 30, "skiffd's API")
        return Skiffd(bindir, home, env, proc, api_port, router_port, admin_port)
    except BaseException:
        stop_home(home)
        raise


def tail(home, n=3000):
    try:
        with open(os.path.join(home, "skiffd.out"), errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def _kill_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_home(home):
    """Stops the skiffd of that home (SIGTERM: its router and instances go with it), kills
    what is left of it if it does not stop within 30 s, and removes the home."""
    try:
        pid = int(open(os.path.join(home, "skiffd.pid")).read())
    except (OSError, ValueError):
        pid = 0
    gone = not pid
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:  # our own child when we started it
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        gone = True
                        break
                except ChildProcessError:
                    pass
                os.kill(pid, 0)  # raises once it is gone
                time.sleep(0.05)
        except ProcessLookupError:
            gone = True
    if not gone:  # skiffd did not stop: end what it started (recorded under run/)
        _kill_group(pid, signal.SIGKILL)
        run = os.path.join(home, "run")
        for entry in os.listdir(run) if os.path.isdir(run) else []:
            if entry.endswith(".pid"):
                try:
                    _kill_group(int(open(os.path.join(run, entry)).read().split()[0]),
                                signal.SIGKILL)
                except (OSError, ValueError, IndexError):
                    pass
    shutil.rmtree(home, ignore_errors=True)
