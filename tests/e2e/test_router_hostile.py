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

import pytest

from conftest import wait_for
from test_router import Router, route

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
