"""skiff-router against a hostile tenant: each test is what an attacker would try, and asserts
that it fails for them.

- joining the router's listening socket (SO_REUSEPORT, as root and as the router's own uid) to
  receive a share of every app's requests;
- routing by one authority and presenting another to the app (absolute-form targets);
- holding a backend connection with chunk data longer than its declared size;
- reading the route table and metrics from the admin port without the admin token.
"""
import errno
import json
import os
import pwd
import socket
import subprocess
import sys
import time

import pytest

from conftest import wait_for
from test_router import RawBackend, Router, read_head, route

# Fixtures of test_router.py, used here under the same names.
from test_router import backends, bus, home, router_factory  # noqa: F401

# ---- the listening socket ---------------------------------------------------------------------

# What a tenant's process runs to take the router's port: bind it with SO_REUSEPORT (and
# SO_REUSEADDR), listen, and report whether that worked; then accept (and count) connections
# until told to stop. Prints one JSON line per address tried, then the count.
JOINER = r"""
import json, select, socket, sys, threading, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
tries = [(socket.AF_INET, "127.0.0.1", False), (socket.AF_INET, "0.0.0.0", False),
         (socket.AF_INET6, "::1", True), (socket.AF_INET6, "::", True), (socket.AF_INET6, "::", False)]
held = []
for family, addr, v6only in tries:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
    try:
        s.bind((addr, port))
        s.listen(128)
        s.setblocking(False)
        held.append(s)
        print(json.dumps({"addr": addr, "v6only": v6only, "bound": True}), flush=True)
    except OSError as e:
        s.close()
        print(json.dumps({"addr": addr, "v6only": v6only, "bound": False, "errno": e.errno}),
              flush=True)
print("ready", flush=True)
accepted, stop = 0, []
threading.Thread(target=lambda: stop.append(sys.stdin.readline()), daemon=True).start()
deadline = time.monotonic() + seconds
while not stop and time.monotonic() < deadline:
    for s in select.select(held, [], [], 0.05)[0] if held else time.sleep(0.05) or []:
        try:
            c, _ = s.accept()
            accepted += 1
            c.close()  # what the client sent was the joiner's to read: cookies and all
        except OSError:
            pass
print(json.dumps({"accepted": accepted}), flush=True)
"""


def join_router_port(port, user=None):
    """Starts a process (as `user`, or as this test) that tries to join the router's port;
    returns it and what it reported for each address, once it is listening where it could."""
    p = subprocess.Popen([sys.executable, "-c", JOINER, str(port), "60"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, user=user)
    tries = []
    for line in p.stdout:
        if line.strip() == "ready":
            break
        tries.append(json.loads(line))
    return p, tries


def joined_connections(p):
    p.stdin.write("stop\n")
    p.stdin.flush()
    out = p.stdout.readline()
    p.wait(10)
    return json.loads(out)["accepted"]


def assert_port_cannot_be_joined(r, backend, user=None):
    p, tries = join_router_port(r.port, user)
    try:
        # whatever the attempts gave, requests sent meanwhile must all reach the router's app
        answers = []
        for i in range(30):
            try:
                resp = r.get("app.localhost", f"/n{i}")
                answers.append(resp.status == 200 and resp.json()["name"] == backend.server.name)
            except (OSError, EOFError, ValueError):
                answers.append(False)
        stolen = joined_connections(p)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert stolen == 0 and all(answers), \
        f"a process joined the router's port ({tries}) and received {stolen} of 30 connections"
    for t in tries:
        if t["addr"] in ("127.0.0.1", "0.0.0.0") or not t["v6only"]:
            # an IPv4 address the router holds, or a dual-stack socket that would include it
            assert not t["bound"] and t["errno"] == errno.EADDRINUSE, t
        elif t["addr"] == "::1" and socket.has_ipv6 and ipv6_loopback():
            # the router holds [::1] too: *.localhost resolves there first in browsers and curl
            assert not t["bound"] and t["errno"] == errno.EADDRINUSE, t
        elif t["addr"] == "::":
            # [::] IPv6-only covers [::1], which the router holds
            assert not t["bound"] or not ipv6_loopback(), t


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_router_port_cannot_be_joined_by_root(router_factory, backends):
    """SO_REUSEPORT with the router's own listening sockets would let the kernel hand any
    joiner a share of every app's connections (cookies included). The router's sockets do
    not have it, so even root is refused; and nothing sent to the router reaches the joiner."""
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    assert_port_cannot_be_joined(r, a)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the router as another uid")
def test_router_port_cannot_be_joined_by_its_own_uid(home, bus, backends):
    """The same attack from a process of the router's own uid (an app under the process
    driver runs as skiffd's user): the kernel admits a SO_REUSEPORT joiner of the same uid
    into the group, so the router must not form one at all."""
    uid = pwd.getpwnam("nobody").pw_uid
    a = backends("a")
    bus.set_routes([route("app.localhost", [a])])
    with open(os.path.join(home, "run", "routes.json"), "w") as f:
        json.dump({"type": "routes", "version": bus.version, "routes": bus.routes}, f)
    with open(os.path.join(home, "api.json"), "w") as f:
        json.dump({"token": "skiff_" + os.urandom(32).hex()}, f)
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, -1)
    os.chown(home, uid, -1)
    r = Router(home).start(user=uid)
    try:
        assert r.proc.pid and os.stat(f"/proc/{r.proc.pid}").st_uid == uid
        wait_for(lambda: r.get("app.localhost").status == 200, 10, "the router to serve")
        assert_port_cannot_be_joined(r, a, user=uid)
    finally:
        r.stop()


# ---- chunk data longer than its declared size -------------------------------------------------

CHUNKED_HEAD = (b"POST /upload HTTP/1.1\r\nHost: app.localhost\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


class HeldBackend:
    """A backend that reads what the router forwards and notes when the router lets go of the
    connection (EOF or reset)."""

    def __init__(self):
        self.received = b""
        self.released_at = None
        self.backend = RawBackend(self._run)
        self.addr = self.backend.addr

    def _run(self, conn):
        conn.settimeout(120)
        try:
            while True:
                d = conn.recv(65536)
                if not d:
                    break
                self.received += d
        except OSError:
            pass
        self.released_at = time.monotonic()

    def close(self):
        self.backend.close()


@pytest.mark.parametrize("pieces", [
    # 10 bytes declared; the 6 more would be read by llhttp as CRLF + the size of a next chunk
    # (0xCDEF bytes, which never come)
    [b"A\r\n0123456789ABCDEF"],
    [b"5\r\nhello", b"XX", b"1\r\n"],                  # any two bytes taken for the CRLF
    [b"5\r\nhello\r", b"X1\r\n"],                      # the CR right, the LF not
    [b"5\r\nhello\nF\r\n"],                            # a bare LF where CRLF ends the data
    [b"5;name=value\r\nhelloABC"],                     # with a chunk extension
    [b"3\r\nabc\r\n", b"4\r\nabcdefff\r\n"],           # the second chunk is the long one
])
def test_chunk_data_longer_than_declared_is_400_at_once(router_factory, pieces):
    """A hostile client declares a small chunk and sends more: the router must answer 400 and
    close at once, and let go of the backend connection, instead of waiting for a chunk the
    extra bytes seem to announce (which would hold the backend for the upstream timeout)."""
    held = HeldBackend()
    try:
        r = router_factory([route("app.localhost", [held])])
        c = r.client(timeout=10)
        c.send(CHUNKED_HEAD)
        wait_for(lambda: b"\r\n\r\n" in held.received, 5, "the head to reach the backend")
        t0 = time.monotonic()
        for piece in pieces:
            c.send(piece)
            time.sleep(0.05)  # let the pieces arrive apart: the check spans reads
        resp = c.response()
        assert resp.status == 400 and resp.headers["x-skiff-router-error"] == "bad-request"
        assert time.monotonic() - t0 < 3, "the 400 must not wait for a timeout"
        assert c.closed(5)
        wait_for(lambda: held.released_at is not None, 3, "the router to release the backend")
        # nothing past the declared data reached the app as if it were a chunk
        assert b"CDEF" not in held.received and b"XX" not in held.received
    finally:
        held.close()


def test_chunk_data_longer_than_declared_from_a_backend_cuts_the_response(router_factory):
    """The same from a hostile app answering chunked: the client's response is cut at once
    (its head is out; nothing truthful can follow), not left hanging for the timeout."""
    def liar(conn):
        f = conn.makefile("rb")
        read_head(f)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"A\r\n0123456789ABCDEF")
        time.sleep(30)

    b = RawBackend(liar)
    try:
        r = router_factory([route("app.localhost", [b])])
        c = r.client(timeout=10)
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n")
        with pytest.raises(EOFError):
            c.response()
        assert time.monotonic() - t0 < 3
    finally:
        b.close()


def test_well_formed_chunks_split_anywhere_still_pass(router_factory, backends):
    """The positive control: the CRLF after chunk data may arrive in pieces of one byte."""
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    c = r.client()
    c.send(CHUNKED_HEAD)
    for piece in [b"5\r\nhel", b"lo", b"\r", b"\n", b"6\r\n world\r", b"\n0\r\n\r\n"]:
        c.send(piece)
        time.sleep(0.02)
    resp = c.response()
    assert resp.status == 200, resp.body
    assert resp.json()["body_len"] == 11
    c.close()


# ---- absolute-form request targets ----------------------------------------------------------


def absolute_router(router_factory, backends):
    a, v = backends("a"), backends("victim")
    return router_factory([route("a.localhost", [a], app="a"),
                           route("victim.localhost", [v], app="victim")])


@pytest.mark.parametrize("target,host,path", [
    ("http://a.localhost/x?q=1", "a.localhost", "/x?q=1"),
    ("HTTP://A.LOCALHOST:8080", "A.LOCALHOST:8080", "/"),
    ("https://a.localhost?q=/../victim", "a.localhost", "/?q=/../victim"),
    ("http://a.localhost/v1/../admin", "a.localhost", "/admin"),
])
def test_absolute_form_is_routed_by_its_authority_and_says_so(router_factory, backends, target,
                                                             host, path):
    """`GET http://a.localhost/ HTTP/1.1` with `Host: victim.localhost`: routed to a, and a
    must be told a.localhost (Host and X-Forwarded-Host), never the victim's name, so an app
    cannot be handed a request that names another tenant's host (links, cookies, caches keyed
    by Host); the app gets the origin form."""
    r = absolute_router(router_factory, backends)
    c = r.client()
    resp = c.request("GET", target, host="victim.localhost")
    assert resp.status == 200, resp.body
    seen = resp.json()
    assert seen["name"] == "a"
    assert seen["path"] == path
    assert seen["headers"]["host"] == host
    assert seen["headers"]["x-forwarded-host"] == host
    # the connection goes on: the next request is routed by its own Host
    assert c.request("GET", "/", host="victim.localhost").json()["name"] == "victim"
    c.close()


@pytest.mark.parametrize("head", [
    b"GET http://victim.localhost@a.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    b"GET http://a.localhost@victim.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    b"GET http:///victim HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    b"GET http://a.localhost#@victim.localhost/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    b"GET http://a.localhost%2fvictim/ HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: victim.localhost@a.localhost\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.localhost/../victim.localhost\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.localhost, victim.localhost\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: victim.localhost\r\n\r\n",
])
def test_ambiguous_authorities_are_400(router_factory, backends, head):
    """Userinfo, an empty authority, a fragment, encodings, lists and a second Host: each is
    a way to make the router and the app disagree on which host a request is for."""
    r = absolute_router(router_factory, backends)
    c = r.client()
    c.send(head)
    resp = c.response()
    assert resp.status == 400, (head, resp.status, resp.body)
    assert resp.headers["x-skiff-router-error"] == "bad-request"
    assert c.closed(5)


# ---- the admin port ---------------------------------------------------------------------------


def admin_raw(port, request):
    """Sends request bytes to the admin port; returns (status, headers text, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.decode(), body.decode()


@pytest.mark.parametrize("auth", [
    "",
    "Authorization: Bearer \r\n",
    "Authorization: Bearer skiff_guess\r\n",
    "Authorization: Basic {token}\r\n",
    "Authorization: Bearer {token}x\r\n",
    "Authorization: Bearer {short}\r\n",
    "Authorization: Bearer wrong\r\nAuthorization: Bearer {token}\r\n",
    "X-Forwarded-For: 127.0.0.1\r\n",
])
@pytest.mark.parametrize("path", ["/routes", "/metrics", "/routes?token={token}"])
def test_admin_port_refuses_without_the_token(router_factory, backends, auth, path):
    """The route table names every app's host and instance address; metrics tell its traffic.
    A process on the machine that reaches the admin port gets neither without skiffd's admin
    token: not with none, an empty one, a guess, a prefix, a longer one, another scheme, two
    Authorization fields, or the token in the query string."""
    a = backends("a")
    r = router_factory([route("secret-app.localhost", [a])])
    fill = {"token": r.token, "short": r.token[:-1]}
    req = f"GET {path.format(**fill)} HTTP/1.1\r\nHost: x\r\n{auth.format(**fill)}\r\n"
    status, head, body = admin_raw(r.admin_port, req.encode())
    assert status == 401, (status, body)
    assert "WWW-Authenticate: Bearer" in head
    assert "secret-app" not in body and a.addr not in body and "skiff_router" not in body
    # the positive control: with the token, the same router answers
    status, body = r.admin("/routes")
    assert status == 200 and "secret-app.localhost" in body


def test_admin_health_stays_open_and_says_nothing(router_factory, backends):
    """Liveness probes need no token; /health tells nothing but "ok"."""
    r = router_factory([route("secret-app.localhost", [backends("a")])])
    assert r.admin("/health", token=False) == (200, "ok\n")


def test_admin_port_without_a_token_file_opens_nothing(home, bus, backends):
    """A router whose $SKIFF_HOME/api.json has no usable token (missing, or too short to be
    safe) refuses /routes and /metrics to everyone instead of serving them to anyone."""
    with open(os.path.join(home, "api.json"), "w") as f:
        json.dump({"token": "short"}, f)
    bus.set_routes([route("secret-app.localhost", [backends("a")])])
    r = Router(home).start()
    try:
        for token in (True, False, "short", ""):
            status, body = r.admin("/routes", token=token)
            assert status == 503 and "secret-app" not in body, (token, status, body)
        assert r.admin("/health", token=False)[0] == 200
    finally:
        r.stop()


def test_admin_port_cannot_be_exhausted(router_factory, backends):
    """Hundreds of silent connections to the admin port do not stop it (they are capped and
    time out) nor the router's own traffic."""
    a = backends("a")
    r = router_factory([route("app.localhost", [a])])
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", r.admin_port), timeout=5))
        assert r.get("app.localhost").status == 200
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: r.admin("/health", token=False)[0] == 200, 10, "the admin port to answer")
    assert r.admin("/routes")[0] == 200


def test_the_platform_router_takes_skiffds_admin_token(platform):
    """Under skiffd the router checks the token skiffd keeps in $SKIFF_HOME/api.json."""
    port = platform.router_admin_port
    wait_for(lambda: admin_raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200, 20,
             "the platform's router")
    status, _, body = admin_raw(port, b"GET /routes HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 401, body
    auth = f"Authorization: Bearer {platform.token}\r\n"
    status, _, body = admin_raw(port, f"GET /routes HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    assert status == 200 and "routes" in json.loads(body), body
