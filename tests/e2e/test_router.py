"""End-to-end tests of skiff-router: the real binary between real clients and real backends.

The router gets its table over the bus protocol of docs/bus.md; until skiffd is part of the
picture, a small bus server here plays skiffd's side (same socket, same messages). Backends
are Python HTTP servers or raw socket servers written for each behaviour.
"""
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import BIN_DIR, free_port, wait_for

# ---- test tools: a bus server playing skiffd, backends, a raw HTTP client -------------------


class BusServer:
    """skiffd's side of the bus: sends the route table on connect and on set_routes()."""

    def __init__(self, home):
        self.path = os.path.join(home, "run", "bus.sock")
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.version = 0
        self.routes = []
        self.conns = []
        self.received = []
        self.lock = threading.Lock()
        self.sock = None
        self.start()

    def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()

    def _message(self):
        return (json.dumps({"type": "routes", "version": self.version, "routes": self.routes})
                + "\n").encode()

    def _accept(self, sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
                conn.sendall(self._message())
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                with self.lock:
                    self.received.append(json.loads(line))

    def set_routes(self, routes):
        with self.lock:
            self.version += 1
            self.routes = routes
            msg = self._message()
            for c in list(self.conns):
                try:
                    c.sendall(msg)
                except OSError:
                    self.conns.remove(c)

    def messages(self, type_):
        with self.lock:
            return [m for m in self.received if m.get("type") == type_]

    def stop(self):
        """skiffd going away: the socket closes and the path disappears."""
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns = []
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class Handler(http.server.BaseHTTPRequestHandler):
    """A backend that answers with what it saw, as JSON, plus a few behaviours by path."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _answer(self):
        self.server.hits += 1
        body = self._body()
        if self.path.startswith("/delay/"):
            time.sleep(int(self.path.split("/")[2]) / 1000)
        if self.path.startswith("/status/"):
            code = int(self.path.split("/")[2])
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        out = json.dumps({
            "name": self.server.name, "method": self.command, "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_len": len(body), "body_sha": hashlib.sha256(body).hexdigest(),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("Connection", "keep-alive")
        self.send_header("Keep-Alive", "timeout=5")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer


class Backend:
    def __init__(self, name):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.name = name
        self.server.hits = 0
        self.port = self.server.server_address[1]
        self.addr = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def hits(self):
        return self.server.hits

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class RawBackend:
    """A socket server whose behaviour is a function of the accepted connection."""

    def __init__(self, behaviour):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.behaviour = behaviour
        self.accepted = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn):
        try:
            self.behaviour(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def read_head(sock_file):
    """Reads a request head from a file-like socket reader; returns (first line, headers)."""
    first = sock_file.readline().decode()
    headers = {}
    while True:
        line = sock_file.readline()
        if line in (b"\r\n", b"\n", b""):
            return first, headers
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()


def requests_on(conn):
    """The request heads a backend connection receives, until the router closes it: yields
    (first line, headers, reader); a body is the behaviour's to read from the reader."""
    f = conn.makefile("rb")
    while True:
        first, headers = read_head(f)
        if not first:
            return
        yield first, headers, f


class Response:
    def __init__(self, status, headers, body, trailers=None):
        self.status, self.headers, self.body = status, headers, body
        self.trailers = trailers or {}

    def json(self):
        return json.loads(self.body)


class Client:
    """A raw HTTP/1.1 client on one connection: what it sends is exactly what is written."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("connection closed")
        self.buf += data

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head=False):
        status_line = self._line().decode()
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = self._line()
            if not line:
                break
            k, v = line.decode().split(":", 1)
            headers.setdefault(k.strip().lower(), v.strip())
        body = b""
        trailers = {}
        if head or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, body)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while line := self._line():
                        k, v = line.decode().split(":", 1)
                        trailers[k.strip().lower()] = v.strip()
                    break
                body += self._exact(size)
                self._line()
        elif "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        else:
            try:
                while True:
                    self._fill()
            except EOFError:
                body, self.buf = self.buf, b""
        return Response(status, headers, body, trailers)

    def request(self, method="GET", path="/", host="app.localhost", headers=None, body=None):
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        self.send(data)
        return self.response(head=method == "HEAD")

    def closed(self, timeout=5):
        """True when the router closes the connection (EOF or reset) within the timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


def route(host, backends, path="", app="app", balance="round-robin", guid=None):
    return {"host": host, "path": path, "app_guid": guid or f"guid-{app}", "app_name": app,
            "process": "web", "balance": balance,
            "backends": [{"addr": b.addr if hasattr(b, "addr") else b, "index": i,
                          "instance_guid": f"inst-{i}"} for i, b in enumerate(backends)]}


class Router:
    def __init__(self, home, extra_args=(), env=None):
        self.env = dict(os.environ, **(env or {}))
        self.home = home
        self.port = free_port()
        self.admin_port = free_port()
        self.extra_args = list(extra_args)
        self.proc = None
        self.err_path = os.path.join(home, "router.err")

    def start(self, user=None):
        """Starts the router (as `user` when given); its admin token is the one in
        $SKIFF_HOME/api.json, written here as skiffd writes it."""
        token_path = os.path.join(self.home, "api.json")
        if not os.path.exists(token_path):
            with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                json.dump({"token": "skiff_" + os.urandom(32).hex()}, f)
        with open(token_path) as f:
            self.token = json.load(f)["token"]
        err = open(self.err_path, "ab")
        self.proc = subprocess.Popen(
            [os.path.join(BIN_DIR, "skiff-router"), "--home", self.home,
             "--addr", f"127.0.0.1:{self.port}", "--admin-addr", f"127.0.0.1:{self.admin_port}",
             "--workers", "2", *self.extra_args],
            stdout=err, stderr=subprocess.STDOUT, env=self.env, user=user)
        err.close()
        wait_for(lambda: self.proc.poll() is not None or self.admin("/health")[0] == 200, 20,
                 "router admin port")
        assert self.proc.poll() is None, self.log()
        return self

    def admin(self, path, token=True, raw=None):
        """(status, body) of GET path on the admin port, with the admin token unless told
        otherwise (a string is sent as the token); raw is sent as the whole request instead."""
        auth = ""
        if token:
            auth = f"Authorization: Bearer {token if isinstance(token, str) else self.token}\r\n"
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as s:
            s.sendall(raw or f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
            data = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split()[1]), body.decode()

    def metric(self, name):
        total = 0.0
        for line in self.admin("/metrics")[1].splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def client(self, timeout=10):
        return Client(self.port, timeout)

    def get(self, host, path="/", headers=None):
        c = self.client()
        try:
            return c.request("GET", path, host, headers)
        finally:
            c.close()

    def log(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def stop(self):
        """SIGTERM, a clean exit, and nothing from the sanitizers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("router did not exit on SIGTERM:\n" + self.log())
        log = self.log()
        assert "Sanitizer" not in log and "runtime error" not in log, log
        assert self.proc.returncode == 0, log

    def rss_kb(self, field="VmRSS"):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0


@pytest.fixture
def home():
    d = tempfile.mkdtemp(prefix="skiff-router-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def bus(home):
    b = BusServer(home)
    yield b
    b.stop()


@pytest.fixture
def backends():
    made = []

    def make(name="a"):
        b = Backend(name)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def start_router(home, bus, routes, *args, env=None):
    bus.set_routes(routes)
    r = Router(home, args, env).start()
    wait_for(lambda: r.metric("skiff_router_route_table_version") == bus.version, 10,
             "the router to take the table")
    return r


@pytest.fixture
def router_factory(home, bus):
    started = []

    def make(routes, *args, env=None):
        r = start_router(home, bus, routes, *args, env=env)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


# ---- routing ---------------------------------------------------------------------------------


def test_host_is_matched_without_case_or_port(router_factory, backends):
    a = backends("a")
    r = router_factory([route("hello.localhost", [a])])
    resp = r.get("HELLO.LocalHost:8080", "/abc?q=1")
    assert resp.status == 200, resp.body
    assert resp.json()["name"] == "a" and resp.json()["path"] == "/abc?q=1"


def test_longest_path_prefix_and_wildcards(router_factory, backends):
    a, b, c, d = backends("a"), backends("b"), backends("c"), backends("d")
    r = router_factory([
        route("api.localhost", [a], app="root"),
        route("api.localhost", [b], path="/v1", app="v1"),
        route("api.localhost", [d], path="/v1/admin", app="admin"),
        route("*.wild.test", [c], app="wild"),
    ])
    cases = {("api.localhost", "/"): "a", ("api.localhost", "/v1"): "b",
             ("api.localhost", "/v1/x?y"): "b", ("api.localhost", "/v10"): "a",
             ("api.localhost", "/v1/admin/users"): "d", ("x.wild.test", "/"): "c",
             ("a.b.wild.test", "/z"): "c"}
    for (host, path), name in cases.items():
        resp = r.get(host, path)
        assert resp.status == 200 and resp.json()["name"] == name, (host, path, resp.body)
    resp = r.get("wild.test", "/")
    assert resp.status == 404


def test_paths_are_normalized_before_routing(router_factory, backends):
    a, b = backends("a"), backends("b")
    r = router_factory([route("api.localhost", [a], app="root"),
                        route("api.localhost", [b], path="/admin", app="admin")])
    # the app is chosen by, and receives, the same path: dot segments and encoded unreserved
    # characters cannot make one app's path reach another app
    cases = {"/v1/../admin/x": ("b", "/admin/x"), "/%61dmin": ("b", "/admin"),
             "/admin/../other?q=/../admin": ("a", "/other?q=/../admin"),
             "/admin/%2e%2e/x": ("a", "/x"), "/a%2fb": ("a", "/a%2Fb")}
    for path, (name, seen) in cases.items():
        resp = r.get("api.localhost", path)
        assert resp.status == 200, (path, resp.body)
        assert (resp.json()["name"], resp.json()["path"]) == (name, seen), path
    for bad in ("/a%zz", "/a%00"):
        c = r.client()
        c.send(f"GET {bad} HTTP/1.1\r\nHost: api.localhost\r\n\r\n")
        resp = c.response()
        assert resp.status == 400 and resp.headers["x-skiff-router-error"] == "bad-request"
        assert c.closed()
        c.close()


def test_unknown_route_is_404_and_connection_stays_usable(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client()
    resp = c.request(host="nobody.localhost")
    assert resp.status == 404
    assert resp.headers["x-skiff-router-error"] == "unknown-route"
    assert b"map-route" in resp.body
    assert c.request(host="app.localhost").status == 200
    c.close()


def test_router_errors_honour_connection_close(router_factory, backends):
    """The router's own answers (404, 503) end the connection when the client said so
    (Connection: close, or HTTP/1.0 without keep-alive), and only then."""
    a = backends("a")
    r = router_factory([route("app.localhost", [a]), route("empty.localhost", [])])
    for host in ("nobody.localhost", "empty.localhost"):
        c = r.client()
        resp = c.request(host=host, headers={"Connection": "close"})
        assert resp.status in (404, 503) and resp.headers["x-skiff-router-error"], resp.headers
        assert resp.headers.get("connection", "").lower() == "close", resp.headers
        assert c.closed(), f"the connection stayed open after a {resp.status} to Connection: close"
        c.close()
    # HTTP/1.0 without keep-alive: closed as well; with keep-alive: kept
    c = r.client()
    c.send(b"GET / HTTP/1.0\r\nHost: nobody.localhost\r\n\r\n")
    assert c.response().status == 404
    assert c.closed()
    c.close()
    c = r.client()
    c.send(b"GET / HTTP/1.0\r\nHost: nobody.localhost\r\nConnection: keep-alive\r\n\r\n")
    resp = c.response()
    assert resp.status == 404 and resp.headers.get("connection", "").lower() == "keep-alive"
    assert c.request(host="app.localhost").status == 200
    c.close()
    # without Connection: close the connection goes on (as before)
    c = r.client()
    assert c.request(host="nobody.localhost").status == 404
    assert not c.closed(timeout=0.5)
    assert c.request(host="app.localhost").status == 200
    c.close()
    assert a.hits == 2


def test_no_ready_instance_is_503(router_factory):
    r = router_factory([route("app.localhost", [])])
    resp = r.get("app.localhost")
    assert resp.status == 503
    assert resp.headers["x-skiff-router-error"] == "no-instance"


def test_forwarded_headers(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    h = r.get("App.localhost:1", headers={"X-Forwarded-For": "10.0.0.1, 10.0.0.2",
                                          "X-Request-Id": "abc-123",
                                          "X-Forwarded-Proto": "https"}).json()["headers"]
    assert h["x-forwarded-for"] == "10.0.0.1, 10.0.0.2, 127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == "App.localhost:1"
    assert h["x-request-id"] == "abc-123"
    h = r.get("app.localhost", headers={"X-Request-Id": "bad id with spaces"}).json()["headers"]
    assert h["x-request-id"] != "bad id with spaces" and len(h["x-request-id"]) >= 16
    assert h["x-forwarded-for"] == "127.0.0.1"
    # hop-by-hop headers stay on their hop
    h = r.get("app.localhost", headers={"Connection": "keep-alive, X-Secret",
                                        "X-Secret": "1", "Keep-Alive": "timeout=1"}).json()["headers"]
    assert "x-secret" not in h and "keep-alive" not in h


def test_keep_alive_reuses_backend_connections(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client()
    for i in range(20):
        resp = c.request(path=f"/n/{i}")
        assert resp.status == 200 and resp.json()["path"] == f"/n/{i}"
    c.close()
    assert r.metric("skiff_router_upstream_connections_total{reused=\"true\"}") >= 15


def test_pipelined_requests_are_answered_in_order(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client()
    reqs = b"".join(f"GET /delay/{ms} HTTP/1.1\r\nHost: app.localhost\r\n\r\n".encode()
                    for ms in (300, 10, 100, 0))
    reqs += b"POST /body HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 5\r\n\r\nhello"
    c.send(reqs)
    paths = [c.response().json()["path"] for _ in range(5)]
    assert paths == ["/delay/300", "/delay/10", "/delay/100", "/delay/0", "/body"]
    c.close()


def test_a_long_pipeline_of_unroutable_requests(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client(timeout=30)
    n = 3000  # all in a few reads: the router must answer them one by one, in bounded stack
    c.send(b"GET /x HTTP/1.1\r\nHost: nobody\r\n\r\n" * n)
    for _ in range(n):
        assert c.response().status == 404
    assert c.request(path="/after").json()["path"] == "/after"
    c.close()


def test_head_request_has_no_body(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client()
    resp = c.request("HEAD", "/")
    assert resp.status == 200 and int(resp.headers["content-length"]) > 0
    # the next response on the same connection parses cleanly: no stray body was sent
    assert c.request("GET", "/after").json()["path"] == "/after"
    c.close()


def test_expect_100_continue(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client()
    c.send("PUT /up HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\n"
           "Expect: 100-continue\r\n\r\n")
    interim = c.response()
    assert interim.status == 100
    c.send("data")
    resp = c.response()
    assert resp.status == 200 and resp.json()["body_len"] == 4
    c.close()


def test_chunked_request_body_is_streamed(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client()
    parts = [b"x" * 1000, b"y" * 5, b"z" * 70000]
    data = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nTrailer: t\r\n\r\n"
    c.send(b"POST /c HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n" + data)
    j = c.response().json()
    assert j["body_len"] == 71005
    assert j["body_sha"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert c.request(path="/next").status == 200
    c.close()


def chunked_backend(conn):
    for _ in requests_on(conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n1;ext=x\r\n,\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")


def test_chunked_response_passes_through(router_factory):
    be = RawBackend(chunked_backend)
    r = router_factory([route("app.localhost", [be])])
    c = r.client()
    for _ in range(3):  # framing stays exact, so the connection stays usable
        resp = c.request()
        assert resp.status == 200 and resp.body == b"hello, world"
        assert resp.headers["transfer-encoding"] == "chunked"
        assert resp.trailers == {"x-trailer": "1"}
    c.close()
    be.close()


def test_request_trailers_reach_the_backend(router_factory):
    seen = []

    def recording(conn):
        f = conn.makefile("rb")
        first, headers = read_head(f)
        chunks = []
        while (size := int(f.readline().split(b";")[0], 16)) > 0:
            chunks.append(f.read(size))
            f.readline()
        trailers = []
        while (line := f.readline()) not in (b"\r\n", b""):
            trailers.append(line)
        seen.append((headers, b"".join(chunks), trailers))
        conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    be = RawBackend(recording)
    r = router_factory([route("app.localhost", [be])])
    c = r.client()
    c.send(b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTE: trailers\r\n"
           b"Trailer: Digest\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\nDigest: sha-256=abc\r\nContent-Length: 99\r\n"
           b"Host: elsewhere.test\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")
    assert c.response().status == 204
    headers, body, trailers = seen[0]
    assert body == b"hello"
    assert headers["te"] == "trailers" and headers["trailer"] == "Digest"
    # framing, routing and forwarding fields are not passed on from trailers
    assert trailers == [b"Digest: sha-256=abc\r\n"]
    c.close()
    be.close()


def test_response_ended_by_close(router_factory):
    def old_style(conn):
        read_head(conn.makefile("rb"))
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + b"z" * 100000)

    be = RawBackend(old_style)
    r = router_factory([route("app.localhost", [be])])
    c = r.client()
    resp = c.request()
    assert resp.status == 200 and resp.body == b"z" * 100000
    assert resp.headers.get("connection") == "close"
    c.close()
    be.close()


def test_http10_clients(router_factory, backends):
    be = RawBackend(chunked_backend)
    a = backends("a")
    r = router_factory([route("app.localhost", [be]), route("kept.localhost", [a])])
    c = r.client()
    c.send(b"GET / HTTP/1.0\r\nHost: app.localhost\r\n\r\n")
    resp = c.response()  # no chunks for HTTP/1.0: the body ends with the connection
    assert resp.status == 200 and resp.body == b"hello, world"
    assert "transfer-encoding" not in resp.headers
    c.close()
    c = r.client()
    for i in range(2):
        c.send(b"GET /%d HTTP/1.0\r\nHost: kept.localhost\r\nConnection: keep-alive\r\n\r\n" % i)
        resp = c.response()
        assert resp.status == 200 and resp.headers["connection"] == "keep-alive"
        assert resp.json()["path"] == "/%d" % i
    c.close()
    be.close()


def test_connection_close_is_honoured(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client()
    resp = c.request(headers={"Connection": "close"})
    assert resp.status == 200 and resp.headers.get("connection") == "close"
    assert c.closed()


def test_round_robin_and_least_connection(router_factory):
    release = threading.Event()
    holder = []

    def named(name):
        def behaviour(conn):
            for first, _, _ in requests_on(conn):
                if first.split()[1] == "/hold":
                    holder.append(name)
                    release.wait(30)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + name)
        return behaviour

    a, b = RawBackend(named(b"a")), RawBackend(named(b"b"))
    r = router_factory([route("rr.localhost", [a, b]),
                        route("lc.localhost", [a, b], balance="least-connection")])
    # each worker goes round on its own: requests on one connection alternate exactly
    c = r.client()
    names = [c.request(host="rr.localhost").body for _ in range(10)]
    assert names.count(b"a") == 5 and names.count(b"b") == 5
    c.close()
    names = [r.get("rr.localhost").body for _ in range(20)]  # new connections, any worker
    assert names.count(b"a") >= 5 and names.count(b"b") >= 5
    # least-connection: while one request holds a backend, the others go to the other one
    held = r.client(timeout=30)
    held.send("GET /hold HTTP/1.1\r\nHost: lc.localhost\r\n\r\n")
    busy = wait_for(lambda: holder, 5, "the held request to reach a backend")[0]

    def setbacks():  # a connection to the idle backend that failed marks it down for a while
        return (r.metric("skiff_router_upstream_connect_failures_total") +
                r.metric("skiff_router_upstream_retries_total"))

    before = setbacks()
    for _ in range(6):
        body = r.get("lc.localhost").body
        assert body != busy or setbacks() > before, "a request went to the busy backend"
    release.set()
    assert held.response().status == 200
    held.close()
    a.close()
    b.close()


def test_refused_instance_is_skipped(router_factory, backends):
    a = backends("a")
    dead = f"127.0.0.1:{free_port()}"
    r = router_factory([route("app.localhost", [dead, a])])
    for _ in range(6):
        resp = r.get("app.localhost")
        assert resp.status == 200 and resp.json()["name"] == "a"
    assert r.metric("skiff_router_upstream_connect_failures_total") >= 1


def test_stale_pooled_connection_is_retried_on_a_fresh_one(router_factory):
    served = []

    def one_per_connection(conn):
        # answers the first request with keep-alive, then drops the connection on the next one,
        # as a backend does when its keep-alive timeout passes just as a request arrives
        f = conn.makefile("rb")
        first, _ = read_head(f)
        served.append(first.split()[1])
        body = first.split()[1].encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        read_head(f)

    be = RawBackend(one_per_connection)
    r = router_factory([route("app.localhost", [be])])
    c = r.client()
    assert c.request(path="/one").body == b"/one"
    c.send(b"GET /two HTTP/1.1\r\nHost: app.localhost\r\n\r\n"
           b"GET /three HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
    assert c.response().body == b"/two"
    assert c.response().body == b"/three"
    c.close()
    assert served == ["/one", "/two", "/three"]
    assert r.metric("skiff_router_upstream_retries_total") >= 1
    be.close()


def test_half_closed_client_still_gets_its_answers(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client()
    c.send(b"GET /1 HTTP/1.1\r\nHost: app.localhost\r\n\r\n"
           b"GET /2 HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.response().json()["path"] == "/1"
    assert c.response().json()["path"] == "/2"
    assert c.closed()


def test_all_instances_refusing_is_502(router_factory):
    dead = [f"127.0.0.1:{free_port()}" for _ in range(5)]
    r = router_factory([route("app.localhost", dead)])
    resp = r.get("app.localhost")
    assert resp.status == 502
    assert resp.headers["x-skiff-router-error"] == "backend-unreachable"
    assert r.metric("skiff_router_upstream_connect_failures_total") == 3


# ---- backends that misbehave -------------------------------------------------------------------


def test_backend_dying_before_its_response_is_502(router_factory):
    def die(conn):
        f = conn.makefile("rb")
        read_head(f)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Le")

    be = RawBackend(die)
    r = router_factory([route("app.localhost", [be])])
    resp = r.get("app.localhost")
    assert resp.status == 502
    assert resp.headers["x-skiff-router-error"] == "backend-failed"
    be.close()


def test_backend_dying_mid_body_cuts_the_client(router_factory):
    def die(conn):
        f = conn.makefile("rb")
        read_head(f)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)

    be = RawBackend(die)
    r = router_factory([route("app.localhost", [be])])
    c = r.client()
    c.send("GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
    with pytest.raises(EOFError):
        c.response()
    c.close()
    assert r.get("nobody.localhost").status == 404  # the router is still fine
    be.close()


def test_backend_that_never_answers_is_504(router_factory):
    hold = threading.Event()

    def silent(conn):
        conn.makefile("rb").readline()
        hold.wait(30)

    be = RawBackend(silent)
    r = router_factory([route("app.localhost", [be])], "--upstream-timeout-ms", "1500")
    resp = r.get("app.localhost")
    assert resp.status == 504
    assert resp.headers["x-skiff-router-error"] == "backend-timeout"
    hold.set()
    be.close()


def test_a_timed_out_backend_connection_is_not_reused(router_factory):
    late_sent = threading.Event()

    def backend(conn):
        for first, _, _ in requests_on(conn):
            path = first.split()[1].encode()
            if path == b"/slow":
                time.sleep(1.5)  # the backend's own slowness, past the router's timeout
                path = b"late"
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(path), path))
            if path == b"late":
                late_sent.set()

    be = RawBackend(backend)
    r = router_factory([route("app.localhost", [be])], "--upstream-timeout-ms", "700",
                       "--workers", "1")
    c = r.client()
    assert c.request(path="/warm").body == b"/warm"  # a pooled connection now exists
    assert c.request(path="/slow").status == 504
    c.close()
    wait_for(late_sent.is_set, 10, "the late response to be sent")
    # the late answer never reaches anyone: its connection was not pooled
    for i in range(6):
        assert r.get("app.localhost", f"/next/{i}").body == f"/next/{i}".encode()
    be.close()


def test_websocket_upgrade_is_tunnelled(router_factory):
    def ws(conn):
        f = conn.makefile("rb")
        first, headers = read_head(f)
        assert headers.get("upgrade") == "websocket"
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\n")
        while True:
            data = conn.recv(65536)
            if not data:
                return
            conn.sendall(data.upper())

    be = RawBackend(ws)
    r = router_factory([route("app.localhost", [be])])
    c = r.client()
    c.send("GET /ws HTTP/1.1\r\nHost: app.localhost\r\nConnection: Upgrade\r\n"
           "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\nearly")
    resp = c.response()
    assert resp.status == 101 and resp.headers["upgrade"] == "websocket"
    got = b""
    while len(got) < 5:
        got += c._exact(1) if c.buf else c.sock.recv(100)
    assert got == b"EARLY"
    c.send(b"ping" * 10000)
    want = b"PING" * 10000
    got = c.buf
    c.buf = b""
    while len(got) < len(want):
        got += c.sock.recv(65536)
    assert got == want
    # half-close: the client's end reaches the backend, whose last words still come back
    c.send(b"bye")
    c.sock.shutdown(socket.SHUT_WR)
    rest = b""
    while True:
        data = c.sock.recv(65536)
        if not data:
            break
        rest += data
    assert rest == b"BYE"
    c.close()
    be.close()


# ---- a router that defends itself ------------------------------------------------------------

SMUGGLING = {
    "content-length and transfer-encoding":
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicated content-length":
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n"
        b"hello",
    "bad chunk size":
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4x\r\nabcd\r\n0\r\n\r\n",
    "chunk size overflow":
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffff1\r\nabcd\r\n0\r\n\r\n",
    "bare LF in the request line": b"GET / HTTP/1.1\nHost: app.localhost\r\n\r\n",
    "bare LF between headers": b"GET / HTTP/1.1\r\nHost: app.localhost\nX: y\r\n\r\n",
    "bare LF ending the head": b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\n",
    "bare LF after a chunk size":
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\nabcd\r\n0\r\n\r\n",
    "transfer-encoding not ending in chunked":
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: gzip\r\n\r\nabcd",
    "space before the colon": b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-A : 1\r\n\r\n",
    "folded header": b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-A: 1\r\n 2\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: app.localhost\r\nHost: other.localhost\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "negative content-length":
        b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: -1\r\n\r\n",
}


BODY_ERRORS = {"bad chunk size", "chunk size overflow", "bare LF after a chunk size"}


@pytest.fixture
def smuggle_router(router_factory, backends):
    a = backends("a")
    return router_factory([route("app.localhost", [a])]), a


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_attempts_get_400_and_close(smuggle_router, case):
    r, a = smuggle_router
    before = a.hits
    c = r.client()
    c.send(SMUGGLING[case])
    resp = c.response()
    assert resp.status == 400, (case, resp.status, resp.body)
    assert resp.headers.get("x-skiff-router-error") == "bad-request"
    assert resp.headers.get("connection") == "close"
    assert c.closed(), case
    if case not in BODY_ERRORS:
        assert a.hits == before, "a rejected request reached the backend"
    # (a body error is found while the body streams: the backend saw a valid head and then
    # its connection closed before the body was complete, never a second request)
    assert r.get("app.localhost").status == 200


def test_limits(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])], "--max-body-bytes", "1000",
                       "--max-header-bytes", "4096", "--max-headers", "20",
                       "--max-url-bytes", "1024")
    cases = [
        (b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: app.localhost\r\n" + b"".join(b"X-%d: 1\r\n" % i
                                                               for i in range(30)) + b"\r\n", 431),
        (b"GET /" + b"u" * 2000 + b" HTTP/1.1\r\nHost: app.localhost\r\n\r\n", 414),
        (b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 1001\r\n\r\n", 413),
        (b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3e8\r\n" + b"b" * 1000 + b"\r\n10\r\n" + b"c" * 16 + b"\r\n0\r\n\r\n", 413),
    ]
    for data, status in cases:
        c = r.client()
        c.send(data)
        resp = c.response()
        assert resp.status == status, (data[:60], resp.status, resp.body)
        assert "x-skiff-router-error" in resp.headers
        assert c.closed()
    assert r.get("app.localhost").status == 200


def test_an_early_answer_survives_the_rest_of_the_body(router_factory, backends):
    """The router answers 413 before reading the body; the client sends the body anyway and
    reads afterwards. The answer must still be there (no reset from closing with unread input)."""
    import select
    a = backends("a")
    r = router_factory([route("app.localhost", [a])], "--max-body-bytes", "1000")
    c = r.client()
    c.send(b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 200000\r\n\r\n")
    assert select.select([c.sock], [], [], 10)[0], "no answer"
    try:
        c.send(b"x" * 200000)
        c.sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the router may stop reading after a while; what matters is the answer
    resp = c.response()
    assert resp.status == 413 and resp.headers["x-skiff-router-error"] == "body-too-large"
    c.close()


def test_slow_client_cannot_hold_the_router(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])], "--header-timeout-ms", "2000")
    c = r.client(timeout=15)
    head = b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Slow: " + b"s" * 100 + b"\r\n\r\n"
    status = None
    for byte in head:  # one byte a second would take 130 s: the router cuts it short
        try:
            c.send(bytes([byte]))
        except OSError:
            break
        c.sock.settimeout(1.0)
        try:
            data = c.sock.recv(65536)
        except socket.timeout:
            data = None
        if data:
            c.buf += data
            status = int(c.buf.split()[1])
            break
        if data == b"":
            break
        # others are served meanwhile
        if byte % 7 == 0:
            assert r.get("app.localhost").status == 200
    assert status == 408, status
    assert c.closed()


def test_idle_connections_are_closed(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])], "--idle-timeout-ms", "1000",
                       "--header-timeout-ms", "1000")
    c = r.client()
    assert c.request().status == 200
    assert c.closed(timeout=10)
    silent = r.client()
    assert silent.closed(timeout=10)


def test_connection_cap(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])], "--max-connections", "10")
    held = [r.client() for _ in range(16)]
    for c in held:
        try:
            c.send("GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        except OSError:
            pass
    answered = 0
    for c in held:
        try:
            answered += c.response().status == 200
        except (EOFError, OSError):
            pass
        c.close()
    assert 0 < answered < 16
    wait_for(lambda: r.metric("skiff_router_open_connections") == 0, 10, "connections to close")
    assert r.metric("skiff_router_connections_refused_total") >= 1
    assert r.get("app.localhost").status == 200


def test_garbage_does_not_hurt(router_factory, backends):
    import random
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    rnd = random.Random(1234)
    seeds = [b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n",
             b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]
    for i in range(300):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 6)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        c = r.client(timeout=5)
        try:
            c.send(bytes(data))
            c.sock.shutdown(socket.SHUT_WR)
            c.closed(timeout=5)
        except OSError:
            pass
        c.close()
    assert r.get("app.localhost").status == 200


# ---- big bodies in bounded memory ------------------------------------------------------------

GB = 1 << 30


def test_one_gigabyte_each_way_in_bounded_memory(router_factory):
    chunk = b"\0" * (1 << 20)

    def big(conn):
        for first, headers, f in requests_on(conn):
            if first.startswith("PUT"):
                left = int(headers["content-length"])
                while left:
                    got = f.read(min(left, 1 << 20))
                    if not got:
                        return
                    left -= len(got)
                body = str(int(headers["content-length"])).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % GB)
                for _ in range(GB // len(chunk)):
                    conn.sendall(chunk)

    be = RawBackend(big)
    # AddressSanitizer keeps freed memory in a quarantine (256 MB by default), which would be
    # counted as the router's; a small one leaves the router's own memory use visible
    asan = os.environ.get("ASAN_OPTIONS", "")
    r = router_factory([route("app.localhost", [be])],
                       env={"ASAN_OPTIONS": (asan + ":" if asan else "") + "quarantine_size_mb=4"})
    base = r.rss_kb()
    c = r.client(timeout=60)
    c.send("GET /down HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.sock.recv(65536)
    head, _, rest = head.partition(b"\r\n\r\n")
    got = len(rest)
    peak = 0
    while got < GB:
        data = c.sock.recv(1 << 20)
        assert data, "download cut at %d bytes" % got
        got += len(data)
        if got % (64 << 20) < len(data):
            peak = max(peak, r.rss_kb())
    c.send(b"PUT /up HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: %d\r\n\r\n" % GB)
    for i in range(GB // len(chunk)):
        c.sock.sendall(chunk)
        if i % 64 == 0:
            peak = max(peak, r.rss_kb())
    resp = c.response()
    assert resp.status == 200 and int(resp.body) == GB
    c.close()
    grown_mb = (max(peak, r.rss_kb()) - base) / 1024
    print(f"router RSS grew by {grown_mb:.1f} MB while 2 GB passed through")
    assert grown_mb < 64, grown_mb
    be.close()


# ---- the route table over the bus ------------------------------------------------------------


def test_route_changes_under_load_drop_nothing(router_factory, bus, backends):
    a, b = backends("a"), backends("b")
    r = router_factory([route("app.localhost", [a])])
    stop = threading.Event()
    failures, done = [], [0]

    def load():
        c = r.client()
        while not stop.is_set():
            try:
                resp = c.request(path="/load")
                if resp.status != 200:
                    failures.append(resp.status)
                done[0] += 1
            except Exception as e:  # a dropped request is exactly what this test looks for
                failures.append(repr(e))
                c = r.client()
        c.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    latencies = []
    for i in range(40):
        new = b if i % 2 == 0 else a
        extra = [route(f"other{j}.localhost", [a]) for j in range(i % 5)]
        t0 = time.monotonic()
        # the host goes from one app to the other (blue-green): the other's requests in
        # flight finish (an instance leaving its own app's route without a drain is lost:
        # test_router_lost.py)
        app = "b" if new is b else "a"
        bus.set_routes([route("app.localhost", [new], app=app),
                        route(f"v{i}.localhost", [new], app=app)] + extra)
        wait_for(lambda: r.get(f"v{i}.localhost").status == 200, 5, f"version {i} to serve")
        latencies.append(time.monotonic() - t0)
    stop.set()
    for t in threads:
        t.join(30)
    assert done[0] > 40 and not failures, failures[:5]
    latencies.sort()
    print(f"table update to first request served: median {latencies[len(latencies)//2]*1000:.1f} ms,"
          f" max {latencies[-1]*1000:.1f} ms over {len(latencies)} updates; {done[0]} requests")


def test_router_serves_while_skiffd_is_down_and_reconnects(home, bus, backends):
    a = backends("a")
    r = start_router(home, bus, [route("app.localhost", [a])])
    try:
        wait_for(lambda: bus.messages("hello"), 5, "hello from the router")
        hello = bus.messages("hello")[0]
        assert hello["pid"] == r.proc.pid
        bus.stop()
        assert r.get("app.localhost").status == 200
        # a router started while skiffd is down serves the table it saved
        r.stop()
        assert os.path.exists(os.path.join(home, "run", "routes.json"))
        r = Router(home).start()
        wait_for(lambda: r.get("app.localhost").status == 200, 5, "the saved table to serve")
        assert os.path.exists(os.path.join(home, "run", "router.pid"))
        # skiffd comes back: the router reconnects and takes the new table
        bus.received.clear()
        bus.routes = [route("new.localhost", [a])]
        bus.start()
        wait_for(lambda: bus.messages("hello"), 5, "the router to reconnect")
        wait_for(lambda: r.get("new.localhost").status == 200, 5, "the new table")
        assert r.get("app.localhost").status == 404
    finally:
        r.stop()


def test_request_for_an_app_at_zero_is_held_until_it_starts(router_factory, bus, backends):
    a = backends("a")
    cold = route("fn.localhost", [], app="fn", guid="fn-guid")
    cold["scale_from_zero"] = True
    r = router_factory([cold], "--hold-timeout-ms", "20000")
    wait_for(lambda: bus.messages("hello"), 5, "hello")
    result = {}

    def call():
        result["resp"] = r.get("fn.localhost", "/hello")

    t = threading.Thread(target=call)
    t.start()
    wake = wait_for(lambda: bus.messages("wake"), 5, "a wake message")[0]
    assert wake["app_guid"] == "fn-guid"
    assert "resp" not in result  # held, not refused
    warm = route("fn.localhost", [a], app="fn", guid="fn-guid")
    warm["scale_from_zero"] = True
    bus.set_routes([warm])
    t.join(20)
    assert result["resp"].status == 200 and result["resp"].json()["path"] == "/hello"


def test_one_table_sends_on_the_requests_held_on_every_worker(router_factory, bus, backends):
    # requests held on both workers (a held request waits for the table that brings its app an
    # instance, not for a poll) all go on with that one table; those whose route the table
    # drops are answered 404 rather than held on
    a = backends("a")
    cold = route("fn.localhost", [], app="fn", guid="fn-guid")
    cold["scale_from_zero"] = True
    gone = route("gone.localhost", [], app="gone", guid="gone-guid")
    gone["scale_from_zero"] = True
    r = router_factory([cold, gone], "--hold-timeout-ms", "20000")
    wait_for(lambda: bus.messages("hello"), 5, "hello")
    results = []
    lock = threading.Lock()

    def call(host):
        resp = r.get(host, "/hello")
        with lock:
            results.append((host, resp.status, resp.headers.get("x-skiff-router-error")))

    threads = [threading.Thread(target=call, args=(h,))
               for h in ["fn.localhost"] * 8 + ["gone.localhost"] * 2]
    for t in threads:
        t.start()
    wait_for(lambda: {w["app_guid"] for w in bus.messages("wake")} == {"fn-guid", "gone-guid"},
             5, "both apps to be woken")
    assert results == []  # held, not refused
    warm = route("fn.localhost", [a], app="fn", guid="fn-guid")
    warm["scale_from_zero"] = True
    bus.set_routes([warm])
    for t in threads:
        t.join(20)
    assert sorted(results) == sorted([("fn.localhost", 200, None)] * 8 +
                                     [("gone.localhost", 404, "unknown-route")] * 2), results


def test_a_held_request_goes_on_when_other_requests_took_the_table_first(router_factory, bus,
                                                                         backends):
    # one worker, busy with another app's requests: each of them takes the newest table as it
    # comes, so the held request must be looked up again in whatever table is newest, not only
    # when the worker sees a table change itself
    a, b = backends("a"), backends("b")
    cold = route("fn.localhost", [], app="fn", guid="fn-guid")
    cold["scale_from_zero"] = True
    busy = route("busy.localhost", [b], app="busy", guid="busy-guid")
    r = router_factory([cold, busy], "--hold-timeout-ms", "20000", "--workers", "1")
    wait_for(lambda: bus.messages("hello"), 5, "hello")
    stop = threading.Event()
    busy_codes = []

    def hammer():
        while not stop.is_set():
            busy_codes.append(r.get("busy.localhost").status)

    result = {}

    def call():
        result["resp"] = r.get("fn.localhost", "/hello")

    hammers = [threading.Thread(target=hammer) for _ in range(3)]
    held = threading.Thread(target=call)
    try:
        for t in hammers:
            t.start()
        held.start()
        wait_for(lambda: bus.messages("wake"), 5, "a wake message")
        wait_for(lambda: len(busy_codes) > 20, 10, "the busy app's requests under way")
        warm = route("fn.localhost", [a], app="fn", guid="fn-guid")
        warm["scale_from_zero"] = True
        bus.set_routes([warm, busy])
        held.join(20)
    finally:
        stop.set()
        for t in hammers:
            t.join(10)
    assert "resp" in result, "the held request was never answered"
    assert result["resp"].status == 200 and result["resp"].json()["path"] == "/hello"
    assert set(busy_codes) == {200}, set(busy_codes)


def test_held_request_gives_up_with_503(router_factory, bus):
    cold = route("fn.localhost", [], app="fn", guid="fn-guid")
    cold["scale_from_zero"] = True
    r = router_factory([cold], "--hold-timeout-ms", "800")
    resp = r.get("fn.localhost")
    assert resp.status == 503 and resp.headers["x-skiff-router-error"] == "scale-from-zero-timeout"


def test_access_lines_go_to_the_bus(router_factory, bus, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a], guid="app-guid-1")])
    wait_for(lambda: bus.messages("hello"), 5, "hello")
    resp = r.get("app.localhost", "/some/path?x=1", headers={"X-Request-Id": "rid-42"})
    assert resp.status == 200
    lines = wait_for(lambda: bus.messages("access"), 5, "an access line")
    m = lines[0]
    assert m["app_guid"] == "app-guid-1" and m["router_index"] == 0
    assert m["line"].startswith("GET /some/path?x=1 200 ")
    assert "x_request_id:rid-42" in m["line"]
    # method, target, status, bytes, duration to a tenth of a millisecond, request id
    assert re.fullmatch(r"GET /some/path\?x=1 200 [1-9][0-9]*B [0-9]+\.[0-9]ms x_request_id:rid-42",
                        m["line"]), m["line"]
    # whatever bytes a request target carries, the line stays valid JSON (and valid UTF-8)
    c = r.client()
    c.send(b'GET /odd"\\\xc3\xa9{} HTTP/1.1\r\nHost: app.localhost\r\n\r\n')
    assert c.response().status == 200
    c.close()
    odd = wait_for(lambda: [l for l in bus.messages("access") if "/odd" in l["line"]], 5,
                   "the odd line")[0]
    assert odd["line"].startswith('GET /odd"\\%C3%A9{} 200 '), odd["line"]


def test_metrics(router_factory, backends):
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    r.get("app.localhost")
    r.get("none.localhost")
    status, text = r.admin("/metrics")
    assert status == 200
    for name in ("skiff_router_requests_total{code=\"2xx\"} ",
                 "skiff_router_requests_total{code=\"4xx\"} ",
                 "skiff_router_request_duration_seconds_bucket{le=\"+Inf\"} ",
                 "skiff_router_open_connections ",
                 "skiff_router_upstream_connections_total{reused=\"true\"} "):
        assert name in text, name
    # a request is counted once its response is written, which may be just after the client
    # has read it
    wait_for(lambda: r.metric("skiff_router_requests_total{code=\"2xx\"}") >= 1, 10,
             "the 2xx request to be counted")
    assert r.admin("/nope")[0] == 404
    status, body = r.admin("/routes")
    table = json.loads(body)
    assert status == 200 and table["routes"][0]["host"] == "app.localhost"
    assert table["routes"][0]["backends"] == [a.addr]


def test_sigterm_lets_requests_in_flight_finish(home, bus):
    arrived, release = threading.Event(), threading.Event()

    def slow(conn):
        read_head(conn.makefile("rb"))
        arrived.set()
        release.wait(20)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")

    be = RawBackend(slow)
    r = start_router(home, bus, [route("app.localhost", [be])])
    idle = r.client()
    busy = r.client(timeout=20)
    busy.send("GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
    wait_for(arrived.is_set, 10, "the request to reach the backend")
    r.proc.send_signal(signal.SIGTERM)
    assert idle.closed(timeout=10), "an idle connection stays open after SIGTERM"
    release.set()
    resp = busy.response()
    assert resp.status == 200 and resp.body == b"done"
    assert resp.headers.get("connection") == "close"
    assert busy.closed()
    r.stop()
    be.close()


def test_bad_options_are_explained(home):
    p = subprocess.run([os.path.join(BIN_DIR, "skiff-router"), "--home", home, "--workers", "x"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "workers must be a non-negative number" in p.stderr
    p = subprocess.run([os.path.join(BIN_DIR, "skiff-router"), "--home", home, "--addr", "nope"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "HOST:PORT" in p.stderr
