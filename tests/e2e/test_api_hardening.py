"""The API against a hostile client or tenant: answers decided from the head go out at once
(not after a declared 9 GB body), idle connections by the ten thousand neither stop publishing
nor instances and their health checks, and the API recovers once they are gone; instance event
tokens are per instance, stop working when their instance stops or their app is deleted, cannot
choose the source of what they publish; the key that signs them is skiffd's alone."""
import json
import os
import socket
import stat
import subprocess
import time
import urllib.request

import pytest

from conftest import Platform, deploy_bits, http_get

# A web app that hands its own event token to the test (as a tenant that leaked it would) and
# publishes with it when asked, from inside its container.
APP = b"""
import json, os, time, urllib.error, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/token":
            out = {"token": os.environ["SKIFF_EVENTS_TOKEN"], "url": os.environ["SKIFF_EVENTS_URL"],
                   "guid": os.environ["CF_INSTANCE_GUID"]}
        elif self.path == "/publish":
            req = urllib.request.Request(
                os.environ["SKIFF_EVENTS_URL"].rstrip("/") + "/topics/from-app/events",
                data=b'{"n": 1}', method="POST",
                headers={"Authorization": "Bearer " + os.environ["SKIFF_EVENTS_TOKEN"],
                         "ce-specversion": "1.0", "ce-id": "in-%d" % time.time_ns(),
                         "ce-type": "t", "ce-source": "/apps/someone-else",
                         "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    out = {"status": r.status, "body": json.loads(r.read())}
            except urllib.error.HTTPError as e:
                out = {"status": e.code}
            except Exception as e:
                out = {"status": 0, "error": repr(e)}
        else:
            out = {"ok": True}
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""

CE = {"ce-specversion": "1.0", "ce-type": "t", "Content-Type": "application/json"}


def deploy(p, name):
    deploy_bits(p, name, [("Procfile", b"web: python3 app.py\n"), ("app.py", APP)],
                {"health_check_type": "http", "health_check_http_endpoint": "/"})
    p.wait_for(lambda: running(p, name), timeout=60, what=f"{name} running")


def detail(p, name):
    status, app = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, app
    return app["instances_detail"]


def running(p, name):
    """The one RUNNING instance of the app, once it is the only instance left."""
    insts = detail(p, name)
    if len(insts) == 1 and insts[0]["state"] == "RUNNING":
        return insts[0]
    return None


def app_get(p, name, path):
    """GET path of the app through the router, once the router has its instance."""
    def answer():
        status, text = http_get(p.router_url + path, host=f"{name}.localhost", timeout=15)
        return json.loads(text) if status == 200 else None
    return p.wait_for(answer, timeout=30, what=f"{name}{path} through the router")


def publish(p, token, headers=None, raw=b'{"n": 1}', topic="t1"):
    return p.api("POST", f"/v1/topics/{topic}/events", raw=raw, token=token,
                 headers=headers or {**CE, "ce-id": "e-%d" % time.time_ns(),
                                     "ce-source": "/apps/someone-else"})


def read_event(p, topic, offset):
    status, text = p.api("GET", f"/v1/topics/{topic}/events?from={offset}&limit=1")
    assert status == 200, text
    return text if isinstance(text, dict) else json.loads(text.splitlines()[0])


def raw_exchange(p, head, body=b"", read_for=1.0):
    """Sends head (and body), then reads what comes back within read_for seconds: (answer
    bytes, whether the server closed, seconds until the answer's first byte)."""
    s = socket.create_connection(("127.0.0.1", p.api_port), timeout=5)
    try:
        start = time.monotonic()
        s.sendall(head + body)
        s.settimeout(read_for)
        data, closed, first = b"", False, None
        deadline = start + read_for
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            if first is None:
                first = time.monotonic() - start
            data += chunk
        return data, closed, first
    finally:
        s.close()


# ---- answers decided from the head ---------------------------------------------------------

HUGE = b"Content-Length: 9000000000\r\n"


@pytest.mark.parametrize("auth", [b"", b"Authorization: Bearer not-a-token\r\n",
                                  b"Authorization: Bearer skiffi." + b"0" * 36 + b"." + b"1" * 36
                                  + b"." + b"a" * 64 + b"\r\n",
                                  b"Authorization: Basic YWRtaW46YWRtaW4=\r\n"])
def test_a_401_before_a_9gb_body_comes_at_once_and_closes(shared_platform, auth):
    """An attacker announces 9 GB and sends none of it: the 401 must not wait for the body."""
    head = b"POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\n" + auth + HUGE + b"\r\n"
    data, closed, first = raw_exchange(shared_platform, head, body=b"x" * 4096, read_for=3)
    assert data.startswith(b"HTTP/1.1 401 "), data[:200]
    assert first is not None and first < 1.0, first
    assert b"Connection: close" in data and closed, data[:300]


def test_a_413_before_the_body_comes_at_once_and_closes(shared_platform):
    p = shared_platform
    auth = b"Authorization: Bearer " + p.token.encode() + b"\r\n"
    for path in (b"/v1/topics/t/events", b"/v1/apps/nope/bits"):
        head = b"PUT " if b"bits" in path else b"POST "
        head += path + b" HTTP/1.1\r\nHost: x\r\n" + auth + HUGE + b"\r\n"
        data, closed, first = raw_exchange(p, head, read_for=3)
        assert data.startswith(b"HTTP/1.1 413 "), data[:200]
        assert first < 1.0 and closed, (first, closed)


def test_a_chunked_body_past_the_limit_is_cut_off_when_it_passes(shared_platform):
    """No length announced: the 413 comes once the limit (8 MiB) is passed, not at the end."""
    p = shared_platform
    head = (b"POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + p.token.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % (1 << 20) + b"x" * (1 << 20) + b"\r\n"
    s = socket.create_connection(("127.0.0.1", p.api_port), timeout=5)
    try:
        s.sendall(head)
        answer = b""
        deadline = time.monotonic() + 20
        sent = 0
        while b"\r\n\r\n" not in answer and time.monotonic() < deadline:
            try:
                s.sendall(chunk)
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                break
            s.setblocking(False)
            try:
                answer += s.recv(65536)
            except BlockingIOError:
                pass
            finally:
                s.setblocking(True)
        s.settimeout(3)
        while b"\r\n\r\n" not in answer:
            part = s.recv(65536)
            if not part:
                break
            answer += part
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert sent <= 64, sent  # not after the whole (endless) body
    finally:
        s.close()


def test_public_routes_take_no_body(shared_platform):
    """GET /v1/info needs no token: so it reads no body either."""
    head = b"GET /v1/info HTTP/1.1\r\nHost: x\r\n" + HUGE + b"\r\n"
    data, closed, first = raw_exchange(shared_platform, head, read_for=3)
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert first < 1.0 and closed


def test_expect_continue_with_a_bad_token_gets_401_not_100(shared_platform):
    head = (b"POST /v1/topics/t/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Authorization: Bearer nope\r\n" + HUGE + b"\r\n")
    data, closed, first = raw_exchange(shared_platform, head, read_for=3)
    assert data.startswith(b"HTTP/1.1 401 ") and closed, data[:200]


def test_malformed_heads_get_4xx_and_never_crash(shared_platform):
    p = shared_platform
    for junk in [b"\x00" * 100 + b"\r\n\r\n", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n",
                 b"POST /v1/topics/t/events HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                 b"POST /v1/topics/t/events HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                 b"POST /v1/topics/t/events HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"]:
        data, closed, _ = raw_exchange(p, junk, read_for=2)
        assert data.startswith(b"HTTP/1.1 4"), (junk[:60], data[:100])
    assert p.info()["version"]


# ---- idle connections ----------------------------------------------------------------------

def closed_by_server(sock):
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def skiffd_fds(p):
    return len(os.listdir(f"/proc/{p.proc.pid}/fd"))


def open_idle(p, count, sources):
    """count connections to the API that never send a byte, spread over source addresses."""
    socks = []
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((sources[i % len(sources)], 0))
        try:
            s.connect(("127.0.0.1", p.api_port))
        except BlockingIOError:
            pass
        socks.append(s)
    return socks


# Holds COUNT idle connections to the API from the given source addresses until its stdin
# closes; says "held" once skiffd has taken them in: it closed one of them to stay under its
# caps. (Which one depends on the order skiffd accepted them in: four floods at once overflow
# the listen backlog, and a connection whose handshake the kernel dropped there comes in
# later, when the server resends its SYN-ACK, so the first one opened need not be the
# longest idle.)
FLOODER = r"""
import resource, socket, sys, time
port, count, sources = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
socks = []
for i in range(count):
    s = socket.socket()
    s.setblocking(False)
    s.bind((sources[i % len(sources)], 0))
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    socks.append(s)
def closed(s):
    try:
        return s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
def any_closed():
    return any(closed(s) for s in socks)
deadline = time.monotonic() + 60
while not any_closed() and time.monotonic() < deadline:
    time.sleep(0.1)
print("held" if any_closed() else "not taken in", flush=True)
sys.stdin.read()
"""


def flood(p, count, sources):
    """Starts a process holding count idle connections to the API (one process holds at
    most RLIMIT_NOFILE of them, so a big flood is several)."""
    return subprocess.Popen(["/usr/bin/python3", "-c", FLOODER, str(p.api_port), str(count),
                             ",".join(sources)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_twenty_thousand_idle_connections_stop_nothing():
    p = Platform().start()
    flooders = []
    try:
        deploy(p, "steady")
        before = running(p, "steady")
        per = 20000 // 4
        for k in range(4):
            flooders.append(flood(p, per, ["127.0.0.%d" % (2 + 3 * k + i) for i in range(3)]))
        for f in flooders:
            assert f.stdout.readline().strip() == "held"
        fds = skiffd_fds(p)
        assert fds < 4096 + 1024, f"skiffd holds {fds} descriptors: the connection cap did not hold"
        # publishing with a token still works, promptly
        start = time.monotonic()
        status, body = p.api("POST", "/v1/topics/flood/events", raw=b"still here",
                             headers={"Content-Type": "text/plain"})
        assert status == 202, body
        assert time.monotonic() - start < 5
        # an instance publishes with its own token, and its health checks keep passing
        reply = app_get(p, "steady", "/publish")
        assert reply["status"] == 202, reply
        # through several health check periods under the flood, it stays the same RUNNING one
        until = time.monotonic() + 3
        while time.monotonic() < until:
            now = running(p, "steady")
            assert now and now["guid"] == before["guid"] and now["crash_count"] == 0, now
        assert p.api("GET", "/v1/apps")[0] == 200
    finally:
        for f in flooders:
            f.stdin.close()
            f.wait(30)
    try:
        # the API recovers by itself once they are gone
        p.wait_for(lambda: skiffd_fds(p) < 1000, timeout=30, what="skiffd to let go of them")
        for _ in range(50):
            assert p.info()["version"]
        status, _ = p.api("POST", "/v1/topics/flood/events", raw=b"after",
                          headers={"Content-Type": "text/plain"})
        assert status == 202
        assert app_get(p, "steady", "/publish")["status"] == 202
        assert "refusing appends" not in p.output()
    finally:
        p.close()


def test_per_client_cap_closes_the_oldest_idle_connection_first(tmp_path):
    p = Platform(extra_env={"SKIFF_API_MAX_CONNECTIONS_PER_CLIENT": "50"}).start()
    try:
        base = skiffd_fds(p)
        socks = open_idle(p, 200, ["127.0.0.1"])
        try:
            # the oldest idle connections are the ones closed to stay under the cap
            p.wait_for(lambda: closed_by_server(socks[0]) and closed_by_server(socks[149]),
                       timeout=10, what="the per-client cap to close the oldest")
            assert not closed_by_server(socks[-1])
            assert skiffd_fds(p) <= base + 55
            # a real client is the newest: it gets in and is answered
            for _ in range(10):
                assert p.info()["version"]
        finally:
            for s in socks:
                s.close()
    finally:
        p.close()


# ---- instance tokens -----------------------------------------------------------------------

def test_instance_token_source_restart_and_delete(platform):
    p = platform
    deploy(p, "tenant")
    first = app_get(p, "tenant", "/token")
    token = first["token"]
    # the platform names the source, whatever the caller says: binary, structured, batch, bare
    status, ack = publish(p, token, topic="src")
    assert status == 202, ack
    assert read_event(p, "src", ack["offset"])["source"] == "/apps/tenant"
    structured = {"specversion": "1.0", "id": "s-1", "type": "t", "source": "/apps/victim"}
    status, ack = p.api("POST", "/v1/topics/src/events", raw=json.dumps(structured).encode(),
                        token=token, headers={"Content-Type": "application/cloudevents+json"})
    assert status == 202, ack
    assert read_event(p, "src", ack["offset"])["source"] == "/apps/tenant"
    status, ack = p.api("POST", "/v1/topics/src/events:batch", body=[structured, structured],
                        token=token)
    assert status == 202, ack
    assert read_event(p, "src", ack["first_offset"] + 1)["source"] == "/apps/tenant"
    status, ack = p.api("POST", "/v1/topics/src/events", raw=b"bare", token=token,
                        headers={"Content-Type": "text/plain"})
    assert read_event(p, "src", ack["offset"])["source"] == "/apps/tenant"
    # the admin still says what it likes
    status, ack = publish(p, True, topic="src")
    assert read_event(p, "src", ack["offset"])["source"] == "/apps/someone-else"
    # and from inside the container, through the publish endpoint
    reply = app_get(p, "tenant", "/publish")
    assert reply["status"] == 202, reply
    assert read_event(p, "from-app", reply["body"]["offset"])["source"] == "/apps/tenant"

    # forgeries: another instance's guid under this signature, the old per-app form
    app_guid, inst, mac = token[len("skiffi."):].split(".")
    forged = "skiffi.%s.%s.%s" % (app_guid, "0" * 8 + inst[8:], mac)
    assert publish(p, forged)[0] == 401
    assert publish(p, "skiffi.%s.%s" % (app_guid, mac))[0] == 401

    # a restart gives new tokens: the previous run's no longer publishes
    assert p.api("POST", "/v1/apps/tenant/restart")[0] == 200
    p.wait_for(lambda: (running(p, "tenant") or {}).get("guid") not in (None, first["guid"]),
               timeout=60, what="the restarted instance alone")
    status, body = publish(p, token)
    assert status == 401 and "no longer valid" in body["error"]["message"], body
    second = app_get(p, "tenant", "/token")
    assert second["token"] != token
    assert publish(p, second["token"])[0] == 202

    # deleting the app revokes its tokens at once, while its instance may still be stopping
    assert p.api("DELETE", "/v1/apps/tenant")[0] == 204
    status, body = publish(p, second["token"])
    assert status == 401, body
    # and an app of the same name later does not inherit them
    deploy(p, "tenant")
    assert publish(p, second["token"])[0] == 401
    assert publish(p, app_get(p, "tenant", "/token")["token"])[0] == 202


def test_the_signing_key_is_readable_by_skiffd_only(tmp_path):
    home = str(tmp_path / "home")
    os.makedirs(home)
    p = Platform(home=home).start()
    try:
        key = os.path.join(home, "instance_token.key")
        st = os.stat(key)
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        assert st.st_uid == os.geteuid()
        content = open(key, "rb").read()
        p.stop()
        # a key left readable (by an older version, a careless copy, a restore) is fixed
        os.chmod(key, 0o644)
        if os.geteuid() == 0:
            os.chown(key, 4321, 4321)
        p.start()
        st = os.stat(key)
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        assert st.st_uid == os.geteuid() and st.st_gid == os.getegid()
        assert open(key, "rb").read() == content  # the same key: tokens stay good
        assert "now 0600" in p.output()
    finally:
        p.close()
