"""skiff-router speaking HTTP/2 in cleartext (prior knowledge: the client preface on the HTTP
port) and over TLS (ALPN h2 on the HTTPS port), with real clients (curl, nghttp, h2load) and with frames written by hand here, for
what real clients never send: smuggling attempts across the HTTP/2 -> HTTP/1.1 downgrade and
the attacks on HTTP/2 itself (rapid reset, CONTINUATION and settings floods, HPACK bombs,
stream and window limits). HPACK is python3-hpack's where it can be; a field no encoder would
write is written literally by hand.
"""
import hashlib
import json
import signal
import os
import socket
import ssl
import struct
import subprocess
import threading
import time

import hpack
import pytest

from conftest import free_port, wait_for
from test_router import Backend, RawBackend, chunked_backend, requests_on, route
from test_tls import CA, install
from apps import h2frames
from apps.h2frames import (ACK, CANCEL, CONTINUATION, DATA, END_HEADERS, END_STREAM,
                           ENHANCE_YOUR_CALM, GOAWAY, HEADERS, INTERNAL_ERROR, PING, PREFACE,
                           PROTOCOL_ERROR, REFUSED_STREAM, RST_STREAM, SETTINGS, WINDOW_UPDATE,
                           frame, grpc_answer)

# Fixtures of test_router.py, used here under the same names.
from test_router import backends, bus, home, router_factory  # noqa: F401


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name, value, indexed=False):
    """A field as a literal with a new name, no Huffman: whatever bytes it holds."""
    name = name if isinstance(name, bytes) else name.encode()
    value = value if isinstance(value, bytes) else value.encode()
    first = 0x40 if indexed else 0x00
    return bytes([first]) + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


class Response:
    def __init__(self):
        self.headers, self.body, self.trailers, self.reset = [], b"", [], None
        self.interim = []  # 1xx heads
        self.ended = False

    @property
    def status(self):
        return int(dict(self.headers).get(":status", 0))

    def header(self, name):
        return dict(self.headers).get(name)

    def json(self):
        return json.loads(self.body)


class H2:
    """A client connection: frames out exactly as written, frames in read and recorded."""

    def __init__(self, port, settings=None, window_updates=True, timeout=10, tls_ca=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls_ca:  # HTTP/2 over TLS: h2 agreed by ALPN, then the same frames
            ctx = ssl.create_default_context(cafile=tls_ca)
            ctx.set_alpn_protocols(["h2"])
            self.sock = ctx.wrap_socket(self.sock, server_hostname="app.localhost")
            assert self.sock.selected_alpn_protocol() == "h2"
        self.enc, self.dec = hpack.Encoder(), hpack.Decoder()
        self.dec.max_allowed_table_size = 65536
        self.buf = b""
        self.streams = {}
        self.goaway = None
        self.closed = False
        self.server_settings = {}
        self.window_updates = window_updates
        self.next_id = 1
        payload = b"".join(struct.pack(">HI", k, v) for k, v in (settings or {}).items())
        self.send(PREFACE + frame(SETTINGS, 0, 0, payload))

    def send(self, data):
        self.sock.sendall(data)

    def new_stream(self):
        sid = self.next_id
        self.next_id += 2
        self.streams[sid] = Response()
        return sid

    def block(self, method="GET", path="/", authority="app.localhost", fields=()):
        pseudo = [(":method", method), (":scheme", "http"), (":path", path)]
        if authority is not None:
            pseudo.append((":authority", authority))
        return self.enc.encode(pseudo + list(fields))

    def headers(self, sid, block, end_stream=True):
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        self.send(frame(HEADERS, flags, sid, block))

    def data(self, sid, payload, end_stream=False):
        """DATA frames of at most 16 KB (the default SETTINGS_MAX_FRAME_SIZE)."""
        pieces = [payload[i:i + 16384] for i in range(0, len(payload), 16384)] or [b""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            self.send(frame(DATA, END_STREAM if end_stream and last else 0, sid, piece))

    def request(self, method="GET", path="/", authority="app.localhost", fields=(), body=None,
                trailers=None, wait=True):
        sid = self.new_stream()
        end = body is None and not trailers
        self.headers(sid, self.block(method, path, authority, fields), end_stream=end)
        if body is not None:
            self.data(sid, body, end_stream=not trailers)
        if trailers:
            self.headers(sid, self.enc.encode(trailers), end_stream=True)
        if wait:
            self.wait(lambda: self.streams[sid].ended or self.streams[sid].reset is not None,
                      f"stream {sid} to end")
        return self.streams[sid]

    def read_frame(self):
        while len(self.buf) < 9:
            data = self.sock.recv(1 << 20)
            if not data:
                self.closed = True
                raise EOFError
            self.buf += data
        length = int.from_bytes(self.buf[:3], "big")
        while len(self.buf) < 9 + length:
            data = self.sock.recv(1 << 20)
            if not data:
                self.closed = True
                raise EOFError
            self.buf += data
        type_, flags = self.buf[3], self.buf[4]
        sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload = self.buf[9:9 + length]
        self.buf = self.buf[9 + length:]
        return type_, flags, sid, payload

    def pump(self):
        """Reads one frame and records what it says."""
        type_, flags, sid, payload = self.read_frame()
        r = self.streams.get(sid)
        if type_ == SETTINGS and not flags & ACK:
            for i in range(0, len(payload), 6):
                k, v = struct.unpack(">HI", payload[i:i + 6])
                self.server_settings[k] = v
            self.send(frame(SETTINGS, ACK, 0))
        elif type_ == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        elif type_ == HEADERS and r is not None:
            fields = [(k.decode() if isinstance(k, bytes) else k,
                       v.decode() if isinstance(v, bytes) else v)
                      for k, v in self.dec.decode(payload, raw=True)]
            if dict(fields).get(":status", "").startswith("1"):
                r.interim.append(fields)
            elif r.headers:
                r.trailers += fields
            else:
                r.headers = fields
            if flags & END_STREAM:
                r.ended = True
        elif type_ == DATA and r is not None:
            r.body += payload
            if payload and self.window_updates:
                inc = struct.pack(">I", len(payload))
                self.send(frame(WINDOW_UPDATE, 0, 0, inc) + frame(WINDOW_UPDATE, 0, sid, inc))
            if flags & END_STREAM:
                r.ended = True
        elif type_ == RST_STREAM and r is not None:
            r.reset = struct.unpack(">I", payload)[0]
        elif type_ == GOAWAY:
            self.goaway = struct.unpack(">II", payload[:8])
        return type_

    def wait(self, cond, what="condition", timeout=10):
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for " + what)
            self.pump()

    def wait_closed(self, timeout=10):
        """Reads until the router closes the connection; True when it did in time."""
        self.sock.settimeout(timeout)
        try:
            while True:
                self.pump()
        except (EOFError, ConnectionResetError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()


@pytest.fixture
def app(router_factory, backends):
    b = backends("a")
    r = router_factory([route("app.localhost", [b])])
    return r, b


def tls_router(home, router_factory, routes):
    """A router with an HTTPS listener whose certificate (made here) covers app.localhost;
    r.tls_port is the HTTPS port, r.ca the CA that signed it."""
    ca = CA(os.path.join(home, "ca"))
    cert, key = ca.issue("app.localhost", ["app.localhost", "*.localhost", "IP:127.0.0.1"])
    install(home, "default", cert, key, default=True)
    port = free_port()
    r = router_factory(routes, "--tls-addr", f"127.0.0.1:{port}")
    r.tls_port, r.ca = port, ca.pem
    return r


@pytest.fixture
def tls_app(home, router_factory, backends):
    b = backends("a")
    return tls_router(home, router_factory, [route("app.localhost", [b])]), b


@pytest.fixture(params=["h2c", "tls"])
def either_app(request, home, router_factory, backends):
    """(router, backend, port, CA or None): the same app over h2c and over HTTP/2 in TLS."""
    b = backends("a")
    routes = [route("app.localhost", [b])]
    if request.param == "h2c":
        r = router_factory(routes)
        return r, b, r.port, None
    r = tls_router(home, router_factory, routes)
    return r, b, r.tls_port, r.ca


def curl(*args):
    out = subprocess.run(["curl", "-s", "--max-time", "20", *args], capture_output=True,
                         text=True, timeout=30)
    return out.stdout


# ---- HTTP/2 -> HTTP/1.1 to instances -----------------------------------------------------------


def test_real_clients_speak_h2_and_the_app_sees_what_http11_gives_it(app):
    r, b = app
    out = curl("--http2-prior-knowledge", "-H", "Host: app.localhost", "-w",
               "\n%{http_version}", f"http://127.0.0.1:{r.port}/hello?x=1")
    body, version = out.rsplit("\n", 1)
    assert version == "2"
    seen = json.loads(body)
    assert seen["path"] == "/hello?x=1"
    h = seen["headers"]
    assert h["host"] == "app.localhost" and h["x-forwarded-host"] == "app.localhost"
    assert h["x-forwarded-for"] == "127.0.0.1" and h["x-forwarded-proto"] == "http"
    assert len(h["x-request-id"]) == 32
    out = subprocess.run(["nghttp", "-n", "-s", "-H", ":authority: app.localhost",
                          f"http://127.0.0.1:{r.port}/a", f"http://127.0.0.1:{r.port}/b"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("200") >= 2, out.stdout


# ---- HTTP/2 over TLS (ALPN h2) ---------------------------------------------------------------


def test_real_clients_speak_h2_over_tls(tls_app):
    r, b = tls_app
    resolve = ["--cacert", r.ca, "--resolve", f"app.localhost:{r.tls_port}:127.0.0.1"]
    url = f"https://app.localhost:{r.tls_port}"
    out = curl(*resolve, "--http2", "-H", "X-Forwarded-Proto: http", "-w", "\n%{http_version}",
               url + "/hello?x=1")
    body, version = out.rsplit("\n", 1)
    assert version == "2", out
    seen = json.loads(body)
    assert seen["path"] == "/hello?x=1"
    # the stream came over TLS: https, the client's own value replaced
    assert seen["headers"]["x-forwarded-proto"] == "https", seen
    assert seen["headers"]["host"] == f"app.localhost:{r.tls_port}"
    # a client that asks for HTTP/1.1 by ALPN still gets it
    out = curl(*resolve, "--http1.1", "-w", "\n%{http_version}", url + "/")
    assert out.rsplit("\n", 1)[1] == "1.1", out
    # the router's own answers go over the same streams
    out = curl(*resolve, "--http2", "-H", "Host: nothing.localhost", "-w", "\n%{http_code}",
               "-o", "/dev/null", url + "/")
    assert out.strip() == "404", out
    out = subprocess.run(["nghttp", "-n", "-s", "-H", ":authority: app.localhost",
                          f"https://127.0.0.1:{r.tls_port}/a", f"https://127.0.0.1:{r.tls_port}/b"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("200") >= 2, out.stdout
    out = subprocess.run(["h2load", "-n", "200", "-c", "2", "-m", "10", "-H",
                          ":authority: app.localhost", f"https://127.0.0.1:{r.tls_port}/"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Application protocol: h2" in out.stdout, out.stdout
    assert "200 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    assert "status codes: 200 2xx" in out.stdout, out.stdout
    assert r.proc.poll() is None


def test_responses_written_from_the_backend_read_arrive_whole_over_tls(home, router_factory):
    """A read of 16 KB or more of a response writes its HTTP/2 connection at once, inside the
    backend's read callback (router_h2_write_now): streams end and close there, and small
    responses still wait for the end of the turn. Three connections of eight streams each,
    sizes around the record size and past the 256 KB high water, every body checked."""
    sizes = [1, 100, 16383, 16384, 16385, 65536, 100000, 300000]

    def body_for(path):
        n = int(path.rsplit("/", 1)[1].split("-")[0])
        return (path.encode() * (n // len(path) + 1))[:n]

    def serve(conn):
        for first, headers, f in requests_on(conn):
            body = body_for(first.split()[1])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
            for i in range(0, len(body), 40000):  # in pieces, as an app writes a long body
                conn.sendall(body[i:i + 40000])

    backend = RawBackend(serve)
    r = tls_router(home, router_factory, [route("app.localhost", [backend])])
    out_dir = os.path.join(home, "bodies")
    os.makedirs(out_dir)
    resolve = ["--cacert", r.ca, "--resolve", f"app.localhost:{r.tls_port}:127.0.0.1"]
    procs, paths = [], []
    for conn in range(3):
        args = ["curl", "-s", "--max-time", "30", "--http2", "--parallel", "--parallel-max", "8",
                *resolve]
        for size in sizes:
            path = f"/{size}-{conn}"
            paths.append(path)
            args += ["-o", os.path.join(out_dir, path[1:]), f"https://app.localhost:{r.tls_port}{path}"]
        procs.append(subprocess.Popen(args, stderr=subprocess.PIPE))
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
    for path in paths:
        with open(os.path.join(out_dir, path[1:]), "rb") as f:
            got = f.read()
        want = body_for(path)
        assert len(got) == len(want) and hashlib.sha256(got).digest() == hashlib.sha256(want).digest(), path
    assert r.proc.poll() is None


def test_h2_over_tls_is_by_alpn_only_and_https_only_routes_are_served(home, router_factory,
                                                                      backends):
    b = backends("a")
    secure = route("app.localhost", [b])
    secure["https_only"] = True
    r = tls_router(home, router_factory, [secure])
    # HTTP/2 over TLS is HTTPS: an HTTPS-only route answers, no redirect
    c = H2(r.tls_port, tls_ca=r.ca)
    resp = c.request(path="/s")
    assert resp.status == 200, resp.headers
    assert resp.json()["headers"]["x-forwarded-proto"] == "https"
    c.close()
    # the same route over h2c is plain HTTP: redirected to HTTPS
    c = H2(r.port)
    resp = c.request(path="/s")
    assert resp.status == 301 and resp.header("location").startswith("https://app.localhost:")
    c.close()
    # the client preface over TLS after ALPN said http/1.1 is not HTTP/2 (RFC 9113 3.2)
    ctx = ssl.create_default_context(cafile=r.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", r.tls_port), timeout=10),
                         server_hostname="app.localhost") as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        got = s.recv(65536)
        assert got.startswith(b"HTTP/1.1 4"), got[:200]
    assert b.hits == 1  # only the stream over TLS reached the backend


def test_streams_of_one_connection_are_answered_each_with_its_own(app):
    r, b = app
    c = H2(r.port)
    sids = []
    for i in range(40):
        sid = c.new_stream()
        c.headers(sid, c.block(path=f"/n/{i}", fields=[("x-n", str(i))]))
        sids.append((sid, i))
    c.wait(lambda: all(c.streams[s].ended for s, _ in sids), "40 answers")
    for sid, i in sids:
        seen = c.streams[sid].json()
        assert seen["path"] == f"/n/{i}" and seen["headers"]["x-n"] == str(i)
    c.close()


def test_request_bodies_with_and_without_length(app):
    r, b = app
    c = H2(r.port)
    body = bytes(range(256)) * 100
    with_length = c.request("POST", "/p", fields=[("content-length", str(len(body)))],
                            body=body).json()
    assert with_length["headers"]["content-length"] == str(len(body))
    assert with_length["body_sha"] == hashlib.sha256(body).hexdigest()
    without = c.request("POST", "/p", body=body).json()
    assert without["headers"]["transfer-encoding"] == "chunked"
    assert without["body_sha"] == hashlib.sha256(body).hexdigest()
    # split cookies are one field again for HTTP/1.1
    seen = c.request(fields=[("cookie", "a=1"), ("cookie", "b=2")]).json()
    assert seen["headers"]["cookie"] == "a=1; b=2"
    c.close()


def test_head_404_and_router_errors_keep_their_reason(app):
    r, b = app
    c = H2(r.port)
    head = c.request("HEAD", "/")
    assert head.status == 200 and head.body == b""
    missing = c.request(authority="nope.localhost")
    assert missing.status == 404 and missing.header("x-skiff-router-error") == "unknown-route"
    assert b"map-route" in missing.body
    # the connection goes on after both
    assert c.request().status == 200
    c.close()


def test_expect_100_continue_is_passed_as_interim_headers(app):
    r, b = app
    c = H2(r.port)
    sid = c.new_stream()
    c.headers(sid, c.block("PUT", "/up", fields=[("content-length", "4"),
                                                ("expect", "100-continue")]), end_stream=False)
    c.wait(lambda: c.streams[sid].interim, "100 Continue")
    assert dict(c.streams[sid].interim[0])[":status"] == "100"
    c.data(sid, b"data", end_stream=True)
    c.wait(lambda: c.streams[sid].ended, "the answer")
    assert c.streams[sid].status == 200 and c.streams[sid].json()["body_len"] == 4
    c.close()


def test_response_trailers_pass_through(router_factory):
    backend = RawBackend(chunked_backend)
    r = router_factory([route("app.localhost", [backend])])
    c = H2(r.port)
    resp = c.request(fields=[("te", "trailers")])
    assert resp.status == 200
    assert resp.body == b"hello, world"
    assert ("x-trailer", "1") in resp.trailers, resp.trailers
    c.close()


def test_request_trailers_reach_the_backend(router_factory):
    seen = {}

    def behaviour(conn):
        for first, headers, f in requests_on(conn):
            seen["headers"] = headers
            raw = b""
            while not raw.endswith(b"0\r\n") and b"\r\n0\r\n" not in raw:
                raw += f.read1(65536)
            while not raw.endswith(b"\r\n\r\n"):
                raw += f.read1(65536)
            seen["raw"] = raw
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

    backend = RawBackend(behaviour)
    r = router_factory([route("app.localhost", [backend])])
    c = H2(r.port)
    resp = c.request("POST", "/", fields=[("te", "trailers")], body=b"abc",
                     trailers=[("x-sum", "42")])
    assert resp.status == 204
    assert seen["headers"]["transfer-encoding"] == "chunked"
    assert b"x-sum: 42\r\n" in seen["raw"]
    c.close()


def test_access_lines_and_metrics_count_h2_requests(app, bus):
    r, b = app
    before = r.metric("skiff_router_requests_total")
    c = H2(r.port)
    c.request(path="/counted")
    c.close()
    wait_for(lambda: r.metric("skiff_router_requests_total") >= before + 1, 10, "the metric")
    wait_for(lambda: any("GET /counted 200" in m["line"] for m in bus.messages("access")), 10,
             "the access line")


def test_upgrade_to_h2c_is_declined_and_answered_in_http11(app):
    r, b = app
    out = curl("--http2", "-H", "Host: app.localhost", "-w", "\n%{http_version}",
               f"http://127.0.0.1:{r.port}/up")
    body, version = out.rsplit("\n", 1)
    assert version == "1.1"
    h = json.loads(body)["headers"]
    assert "upgrade" not in h and "http2-settings" not in h


def test_upgrade_h2c_by_hand_is_served_as_http11(app):
    """Upgrade: h2c with HTTP2-Settings, on a GET and on a POST with a body (RFC 7540 3.2's
    form, deprecated by RFC 9113 3.1): each is answered with an HTTP/1.1 status line, never
    101, the backend sees neither field, and the connection goes on in HTTP/1.1."""
    r, b = app
    from test_router import Client
    c = Client(r.port)
    fields = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
              "HTTP2-Settings": "AAMAAABkAAQAoAAAAAIAAAAA"}
    for method, body in (("GET", None), ("POST", b"payload")):
        resp = c.request(method, "/up", "app.localhost", headers=fields, body=body)
        assert resp.status == 200, (method, resp.status)  # not 101: no switch
        h = resp.json()["headers"]
        assert "upgrade" not in h and "http2-settings" not in h, h
    c.send(b"GET /raw HTTP/1.1\r\nHost: app.localhost\r\n\r\n")  # still HTTP/1.1
    assert c._line().startswith(b"HTTP/1.1 200 ")
    c.close()


# Requests that mean one thing to the router and could mean another to an HTTP/1.1 backend:
# none of them reaches the backend.
SMUGGLING = {
    "uppercase name": [literal("X-Upper", "1")],
    "colon in a name": [literal("x-a:b", "1")],
    "space in a name": [literal("x a", "1")],
    "CRLF in a value": [literal("x-a", "1\r\nx-injected: 1")],
    "LF in a value": [literal("x-a", "1\nGET /admin HTTP/1.1")],
    "NUL in a value": [literal("x-a", "1\x002")],
    "transfer-encoding": [literal("transfer-encoding", "chunked")],
    "connection": [literal("connection", "close")],
    "keep-alive": [literal("keep-alive", "timeout=5")],
    "upgrade": [literal("upgrade", "websocket")],
    "proxy-connection": [literal("proxy-connection", "keep-alive")],
    "te other than trailers": [literal("te", "gzip")],
    "two hosts": [literal("host", "app.localhost"), literal("host", "other.localhost")],
}


@pytest.mark.parametrize("case", sorted(SMUGGLING))
def test_smuggling_fields_are_refused_before_the_backend(app, case):
    r, b = app
    c = H2(r.port)
    sid = c.new_stream()
    c.headers(sid, c.block() + b"".join(SMUGGLING[case]))
    c.wait(lambda: c.streams[sid].reset is not None or c.streams[sid].ended, "an answer")
    resp = c.streams[sid]
    assert resp.reset == PROTOCOL_ERROR or resp.status == 400, (case, resp.headers)
    assert b.hits == 0
    # the connection still serves a good request
    assert c.request().status == 200 and b.hits == 1
    c.close()


def test_authority_and_host_must_agree(app):
    r, b = app
    c = H2(r.port)
    resp = c.request(fields=[("host", "other.localhost")])
    assert resp.status == 400 and resp.header("x-skiff-router-error") == "bad-request"
    same = c.request(fields=[("host", "APP.localhost")])
    assert same.status == 200
    # no :authority: host is the authority
    assert c.request(authority=None, fields=[("host", "app.localhost")]).status == 200
    assert b.hits == 2
    c.close()


def test_content_length_must_match_the_data(app):
    r, b = app
    for sent in (b"abc", b"x" * 20):
        c = H2(r.port)
        sid = c.new_stream()
        c.headers(sid, c.block("POST", fields=[("content-length", "10")]), end_stream=False)
        c.data(sid, sent, end_stream=True)
        c.wait(lambda: c.streams[sid].reset is not None or c.streams[sid].ended, "an answer")
        assert c.streams[sid].reset == PROTOCOL_ERROR, c.streams[sid].headers
        c.close()
    # what reached the backend (the head, before the body fell short) got no complete body
    # to act on: the router never wrote more than the 10 bytes it announced


# ---- attacks on HTTP/2 itself --------------------------------------------------------------------


def test_rapid_reset_gets_goaway(either_app):
    r, b, port, ca = either_app
    c = H2(port, tls_ca=ca)
    block = c.block(path="/delay/200")
    burst = b""
    for _ in range(1000):
        sid = c.new_stream()
        burst += frame(HEADERS, END_HEADERS | END_STREAM, sid, block)
        burst += frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))
    try:
        c.send(burst)
    except OSError:
        pass
    assert c.wait_closed(15), "the connection stayed open"
    # nghttp2's reset rate limit ends the session with INTERNAL_ERROR
    assert c.goaway is not None and c.goaway[1] == INTERNAL_ERROR, c.goaway
    # far from every one of the thousand reached the backend
    assert b.hits < 400, b.hits
    assert r.proc.poll() is None


def test_continuation_flood_gets_goaway(either_app):
    r, b, port, ca = either_app
    c = H2(port, tls_ca=ca)
    sid = c.new_stream()
    flood = frame(HEADERS, 0, sid, c.block())
    for _ in range(5000):
        flood += frame(CONTINUATION, 0, sid, literal("x-a", "b"))
    try:
        c.send(flood)
    except OSError:
        pass
    assert c.wait_closed(10)
    assert c.goaway is not None
    assert b.hits == 0


def test_hpack_bomb_is_refused_with_431(app):
    r, b = app
    c = H2(r.port)
    sid = c.new_stream()
    # one 4 KB value in the dynamic table, then referenced a thousand times: about 20 bytes
    # on the wire for each 4 KB decoded (62 is the first dynamic table entry)
    block = c.block() + literal("x-bomb", "A" * 4000, indexed=True) + bytes([0x80 | 62]) * 1000
    c.headers(sid, block)
    c.wait(lambda: c.streams[sid].ended or c.streams[sid].reset is not None, "an answer")
    assert c.streams[sid].status == 431
    assert c.streams[sid].header("x-skiff-router-error") == "headers-too-large"
    assert b.hits == 0
    c.close()


def test_settings_flood_gets_goaway(app):
    r, b = app
    c = H2(r.port)
    try:
        c.send(frame(SETTINGS, 0, 0) * 5000)
    except OSError:
        pass
    assert c.wait_closed(10)
    assert c.goaway is not None and c.goaway[1] == ENHANCE_YOUR_CALM, c.goaway


def test_ping_flood_gets_goaway(app):
    r, b = app
    c = H2(r.port)
    try:
        c.send(frame(PING, 0, 0, b"12345678") * 5000)
    except OSError:
        pass
    assert c.wait_closed(10)
    assert c.goaway is not None and c.goaway[1] == ENHANCE_YOUR_CALM, c.goaway


def test_too_many_concurrent_streams_are_refused(router_factory):
    release = threading.Event()

    def slow(conn):  # answers only once released
        for first, headers, f in requests_on(conn):
            release.wait(20)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    backend = RawBackend(slow)
    r = router_factory([route("app.localhost", [backend])])
    c = H2(r.port)
    c.wait(lambda: 3 in c.server_settings, "the router's SETTINGS")
    limit = c.server_settings[3]
    assert limit == 100
    sids = []
    for _ in range(limit + 5):
        sid = c.new_stream()
        c.headers(sid, c.block())
        sids.append(sid)
    c.wait(lambda: sum(c.streams[s].reset is not None for s in sids) >= 5 or c.goaway,
           "the streams over the limit refused")
    if not c.goaway:
        refused = [s for s in sids if c.streams[s].reset is not None]
        assert refused == sids[limit:]
        assert all(c.streams[s].reset in (REFUSED_STREAM, PROTOCOL_ERROR) for s in refused)
    release.set()
    c.close()


def test_a_client_that_never_opens_its_window_holds_bounded_memory(router_factory):
    size = 16 * 1024 * 1024
    sent = {"bytes": 0}

    def big(conn):
        for first, headers, f in requests_on(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            chunk = b"x" * 65536
            for _ in range(size // len(chunk)):
                conn.sendall(chunk)
                sent["bytes"] += len(chunk)

    backend = RawBackend(big)
    r = router_factory([route("app.localhost", [backend])])
    before = r.rss_kb()
    # a window of 0 for every stream: the router may send no DATA at all
    c = H2(r.port, settings={4: 0}, window_updates=False)
    streams = 20
    for _ in range(streams):
        c.headers(c.new_stream(), c.block())
    wait_for(lambda: sent["bytes"] > 0, 10, "the backends to start")
    # each backend stops being read once its stream's queue is full: the total sent stays
    # a small part of the 320 MB asked for (kernel buffers, plus the router's bound)
    last = -1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sent["bytes"] != last:
        last = sent["bytes"]
        time.sleep(0.5)
    grown = r.rss_kb() - before
    print(f"backends sent {sent['bytes']} bytes; the router grew by {grown} KB")
    assert sent["bytes"] < streams * size / 2, sent["bytes"]
    assert grown < 64 * 1024, f"router grew by {grown} KB"
    c.close()


# ---- routes marked protocol http2: h2c to the instance ------------------------------------------


class H2cInstance:
    """An instance that speaks only h2c, gRPC style: each stream is answered with HEADERS
    (200, application/grpc), its request body echoed in DATA, then trailers (grpc-status),
    then a PING a moment later. A request to /reset is answered with RST_STREAM instead."""

    def __init__(self):
        self.requests = []
        self.ping_acks = 0
        self.backend = RawBackend(self.serve)
        self.addr = self.backend.addr

    @property
    def accepted(self):
        return self.backend.accepted

    def serve(self, conn):
        h2frames.serve(conn, self.answer, on_ping_ack=self.ping_acked)

    def ping_acked(self):
        self.ping_acks += 1

    def answer(self, conn, enc, sid, stream):
        self.requests.append(stream)
        if dict(stream["headers"]).get(":path") == "/reset":
            conn.sendall(frame(RST_STREAM, 0, sid, struct.pack(">I", INTERNAL_ERROR)))
            return
        conn.sendall(grpc_answer(enc, sid, stream["body"]))
        # a keepalive PING once the stream is over, as gRPC servers send them: the
        # router answers it and keeps the connection in its pool
        time.sleep(0.05)
        conn.sendall(frame(PING, 0, 0, b"keepaliv"))


@pytest.fixture
def grpc_app(router_factory):
    inst = H2cInstance()
    r = router_factory([dict(route("grpc.localhost", [inst]), protocol="http2")])
    yield r, inst
    inst.backend.close()


def grpc_message(data):
    return b"\x00" + struct.pack(">I", len(data)) + data


def test_http2_route_is_h2c_end_to_end_and_trailers_pass_through(grpc_app):
    r, inst = grpc_app
    assert json.loads(r.admin("/routes")[1])["routes"][0]["protocol"] == "http2"
    c = H2(r.port)
    msg = grpc_message(b"hello")
    resp = c.request("POST", "/pkg.Greeter/SayHello", authority="grpc.localhost",
                     fields=[("content-type", "application/grpc"), ("te", "trailers")], body=msg)
    assert resp.status == 200 and resp.header("content-type") == "application/grpc"
    assert resp.body == msg
    assert ("grpc-status", "0") in resp.trailers and ("grpc-message", "ok") in resp.trailers
    seen = inst.requests[-1]
    h = dict(seen["headers"])
    assert h[":method"] == "POST" and h[":path"] == "/pkg.Greeter/SayHello"
    assert h[":authority"] == "grpc.localhost" and h["te"] == "trailers"
    assert h["x-forwarded-for"] == "127.0.0.1" and len(h["x-request-id"]) == 32
    assert not any(k in h for k in ("connection", "transfer-encoding", "host", "keep-alive"))
    assert seen["body"] == msg
    # the connection, idle in the router's pool, answers the instance's PING and stays there:
    # more requests reuse it, one stream each
    wait_for(lambda: inst.ping_acks >= 1, 10, "the router to answer the idle connection's PING")
    for i in range(3):
        again = c.request("POST", "/pkg.Greeter/SayHello", authority="grpc.localhost",
                          fields=[("te", "trailers")], body=grpc_message(b"x%d" % i))
        assert again.body == grpc_message(b"x%d" % i)
        assert ("grpc-status", "0") in again.trailers
    assert inst.accepted == 1
    c.close()


def test_http11_clients_reach_an_http2_route_with_trailers(grpc_app):
    r, inst = grpc_app
    from test_router import Client
    c = Client(r.port)
    resp = c.request("POST", "/pkg.Greeter/SayHello", "grpc.localhost",
                     headers={"TE": "trailers", "Content-Type": "application/grpc"},
                     body=grpc_message(b"hi"))
    assert resp.status == 200 and resp.body == grpc_message(b"hi")
    assert resp.trailers.get("grpc-status") == "0"
    c.close()


def test_an_instance_resetting_its_stream_is_a_502(grpc_app):
    r, inst = grpc_app
    c = H2(r.port)
    resp = c.request("GET", "/reset", authority="grpc.localhost")
    assert resp.status == 502 and resp.header("x-skiff-router-error") == "backend-failed"
    ok = c.request("POST", "/pkg.Greeter/SayHello", authority="grpc.localhost",
                   body=grpc_message(b"after"))
    assert ok.status == 200 and ok.body == grpc_message(b"after")
    c.close()


def test_grpc_through_the_platform_to_a_pushed_h2c_app(platform, tmp_path):
    """The whole path: an app pushed with a command that speaks only h2c, a route mapped with
    `skiff map-route --protocol http2`, an HTTP/2 client through skiffd's router: the stream
    reaches the app as HTTP/2 and its trailers come back."""
    app = tmp_path / "grpc"
    app.mkdir()
    apps = os.path.join(os.path.dirname(__file__), "apps")
    for src, dst in (("grpc_h2c.py", "app.py"), ("h2frames.py", "h2frames.py")):
        with open(os.path.join(apps, src), "rb") as f:
            (app / dst).write_bytes(f.read())
    (app / "Procfile").write_text("web: python3 app.py\n")
    r = platform.cli("push", "greeter", "-p", str(app), "--no-route", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = platform.cli("map-route", "greeter", "greeter.localhost", "--protocol", "http2")
    assert r.returncode == 0, r.stdout + r.stderr

    def answered():
        c = H2(platform.router_port)
        try:
            return c.request("POST", "/pkg.Greeter/SayHello", authority="greeter.localhost",
                             fields=[("content-type", "application/grpc"), ("te", "trailers")],
                             body=grpc_message(b"through the platform"))
        finally:
            c.close()

    resp = wait_for(lambda: (lambda x: x if x.status == 200 else None)(answered()), 30,
                    "the app to answer over h2c")
    assert resp.header("x-instance") == "0"
    assert resp.body == grpc_message(b"through the platform")
    assert ("grpc-status", "0") in resp.trailers, resp.trailers


def test_a_stream_in_flight_finishes_when_the_router_stops(router_factory):
    started = threading.Event()

    def slow(conn):
        for first, headers, f in requests_on(conn):
            started.set()
            time.sleep(0.5)  # the backend's own pace: the router's stop comes meanwhile
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")

    backend = RawBackend(slow)
    r = router_factory([route("app.localhost", [backend])])
    c = H2(r.port)
    sid = c.new_stream()
    c.headers(sid, c.block())
    assert started.wait(10)
    r.proc.send_signal(signal.SIGTERM)
    c.wait(lambda: c.streams[sid].ended, "the answer")
    assert c.streams[sid].body == b"done"
    assert c.wait_closed(10)
    assert c.goaway is not None and c.goaway[1] == 0  # NO_ERROR: a graceful end
    r.proc.wait(20)
    assert r.proc.returncode == 0, r.log()


def test_an_instance_hpack_bomb_is_a_502(router_factory):
    """A hostile h2c instance: a small header block that decodes to megabytes."""

    def bomb(conn):
        f = conn.makefile("rb")
        if f.read(24) != PREFACE:
            return
        conn.sendall(frame(SETTINGS, 0, 0))
        while True:
            head = f.read(9)
            if len(head) < 9:
                return
            length, type_, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            f.read(length)
            if type_ == SETTINGS and not flags & ACK:
                conn.sendall(frame(SETTINGS, ACK, 0))
            if type_ in (HEADERS, DATA) and flags & END_STREAM:
                block = bytes([0x88]) + literal("x-bomb", "B" * 4000, indexed=True) + \
                    bytes([0x80 | 62]) * 4000
                conn.sendall(frame(HEADERS, END_HEADERS | END_STREAM, sid, block))

    backend = RawBackend(bomb)
    r = router_factory([dict(route("app.localhost", [backend]), protocol="http2")])
    before = r.rss_kb()
    c = H2(r.port)
    resp = c.request()
    assert resp.status == 502 and resp.header("x-skiff-router-error") == "backend-failed"
    assert r.rss_kb() - before < 32 * 1024
    c.close()


def test_an_idle_h2_connection_is_closed(router_factory, backends):
    b = backends("a")
    r = router_factory([route("app.localhost", [b])], "--idle-timeout-ms", "500")
    c = H2(r.port)
    assert c.request().status == 200
    start = time.monotonic()
    assert c.wait_closed(10)
    assert time.monotonic() - start < 5
    # PINGs alone do not keep a connection without streams open
    c = H2(r.port)
    c.wait(lambda: 3 in c.server_settings, "the router's SETTINGS")
    start = time.monotonic()
    closed = False
    while time.monotonic() - start < 5 and not closed:
        try:
            c.send(frame(PING, 0, 0, b"12345678"))
            closed = c.wait_closed(0.1)
        except OSError:
            closed = True
    assert closed, "PINGs kept an idle connection open"


# ---- many streams on one h2c connection to an instance ------------------------------------------


class MuxInstance:
    """An h2c instance that answers many streams at once on one connection and records what
    the router does with it: connections accepted, the most streams open at once on one of them,
    the RST_STREAMs it received. Streams are answered as H2cInstance does (HEADERS, the body
    echoed, grpc-status trailers), once `hold` complete requests are waiting on the connection
    (or 5 s passed): so a test sees whether they were all in flight together. `hook(ctx, sid,
    stream)` may answer a complete request itself (True) with ctx.send(frames)."""

    def __init__(self, settings=None, window_updates=True, hold=1, hook=None, on_headers=None):
        self.settings = settings or {}
        self.window_updates = window_updates
        self.hold = hold
        self.hook = hook
        # on_headers(ctx, sid, fields) when a stream's HEADERS come: True when it answered
        # (a refusal) and the stream is to be forgotten, its DATA dropped
        self.on_headers = on_headers
        self.max_open = 0
        self.resets = []
        self.requests = []
        self.lock = threading.Lock()
        self.backend = RawBackend(self.serve)
        self.addr = self.backend.addr

    @property
    def accepted(self):
        return self.backend.accepted

    class Ctx:
        def __init__(self, conn):
            self.conn, self.enc, self.lock = conn, hpack.Encoder(), threading.Lock()
            # the router's windows for what this side sends (RFC 9113 6.9)
            self.cv = threading.Condition()
            self.initial, self.conn_window, self.windows = 65535, 65535, {}
            self.reset, self.closed = set(), False

        def send_data(self, sid, total, sent):
            """DATA on sid up to `total` bytes as the router's windows allow (sent[0] counts),
            then END_STREAM; stops when the stream is reset or the connection goes."""
            piece = b"d" * 16384
            while sent[0] < total:
                n = min(len(piece), total - sent[0])
                with self.cv:
                    while not self.closed and sid not in self.reset and \
                            min(self.conn_window, self.windows.get(sid, self.initial)) < n:
                        self.cv.wait(0.2)
                    if self.closed or sid in self.reset:
                        return
                    self.conn_window -= n
                    self.windows[sid] = self.windows.get(sid, self.initial) - n
                self.send(frame(DATA, 0, sid, piece[:n]))
                sent[0] += n
            self.send(frame(DATA, END_STREAM, sid))

        def send(self, data):
            with self.lock:
                self.conn.sendall(data)

        def answer(self, sid, body=b"", status="200"):
            out = frame(HEADERS, END_HEADERS, sid, self.enc.encode(
                [(":status", status), ("content-type", "application/grpc")]))
            for i in range(0, len(body), 16384):
                out += frame(DATA, 0, sid, body[i:i + 16384])
            out += frame(HEADERS, END_HEADERS | END_STREAM, sid, self.enc.encode(
                [("grpc-status", "0"), ("grpc-message", "ok")]))
            self.send(out)

    def serve(self, conn):
        buf = b""
        conn.settimeout(10)
        while len(buf) < 24:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
        if buf[:24] != PREFACE:
            return
        buf = buf[24:]
        ctx = self.Ctx(conn)
        try:
            self._serve(conn, ctx, buf)
        finally:
            with ctx.cv:
                ctx.closed = True
                ctx.cv.notify_all()

    def _serve(self, conn, ctx, buf):
        payload = b"".join(struct.pack(">HI", k, v) for k, v in self.settings.items())
        ctx.send(frame(SETTINGS, 0, 0, payload))
        dec = hpack.Decoder()
        streams, ready, first_ready = {}, [], None
        conn.settimeout(0.05)
        while True:
            if ready and (len(ready) >= self.hold or time.monotonic() - first_ready > 5):
                for sid in ready:
                    s = streams.pop(sid, None)
                    if s is not None:
                        ctx.answer(sid, s["body"])
                ready, first_ready = [], None
            while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                try:
                    data = conn.recv(1 << 20)
                except socket.timeout:
                    break
                if not data:
                    return
                buf += data
            if len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
                continue
            length = int.from_bytes(buf[:3], "big")
            type_, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload, buf = buf[9:9 + length], buf[9 + length:]
            if type_ == SETTINGS and not flags & ACK:
                with ctx.cv:
                    for i in range(0, len(payload), 6):
                        k, v = struct.unpack(">HI", payload[i:i + 6])
                        if k == 4:  # SETTINGS_INITIAL_WINDOW_SIZE
                            for w in ctx.windows:
                                ctx.windows[w] += v - ctx.initial
                            ctx.initial = v
                    ctx.cv.notify_all()
                ctx.send(frame(SETTINGS, ACK, 0))
            elif type_ == PING and not flags & ACK:
                ctx.send(frame(PING, ACK, 0, payload))
            elif type_ == WINDOW_UPDATE:
                inc = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                with ctx.cv:
                    if sid == 0:
                        ctx.conn_window += inc
                    else:
                        ctx.windows[sid] = ctx.windows.get(sid, ctx.initial) + inc
                    ctx.cv.notify_all()
            elif type_ == RST_STREAM:
                with ctx.cv:
                    ctx.reset.add(sid)
                    ctx.cv.notify_all()
                with self.lock:
                    self.resets.append((sid, struct.unpack(">I", payload)[0]))
                streams.pop(sid, None)
                ready = [r for r in ready if r != sid]
            elif type_ == HEADERS:
                fields = [(k.decode(), v.decode()) for k, v in dec.decode(payload, raw=True)]
                if sid not in streams and self.on_headers and self.on_headers(ctx, sid, fields):
                    continue
                if sid not in streams:
                    streams[sid] = {"headers": fields, "body": b"", "done": False}
                    with self.lock:
                        self.max_open = max(self.max_open, len(streams))
            elif type_ == DATA and sid in streams:
                streams[sid]["body"] += payload
                if payload and self.window_updates:
                    inc = struct.pack(">I", len(payload))
                    ctx.send(frame(WINDOW_UPDATE, 0, 0, inc) + frame(WINDOW_UPDATE, 0, sid, inc))
            elif type_ == DATA and payload and self.window_updates:
                # a stream reset (or refused) here: its DATA still counts against the
                # connection's window (RFC 9113 6.9), given back
                ctx.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload))))
            elif type_ == GOAWAY:
                return
            if type_ in (HEADERS, DATA) and flags & END_STREAM and sid in streams:
                s = streams[sid]
                with self.lock:
                    self.requests.append(s)
                if self.hook and self.hook(ctx, sid, s):
                    streams.pop(sid, None)
                    continue
                ready.append(sid)
                first_ready = first_ready or time.monotonic()


def mux_app(router_factory, *args, **kw):
    inst = MuxInstance(**kw)
    r = router_factory([dict(route("grpc.localhost", [inst]), protocol="http2")], *args)
    return r, inst


def grpc_call(c, data, path="/pkg.Greeter/SayHello", wait=False):
    return c.request("POST", path, authority="grpc.localhost",
                     fields=[("content-type", "application/grpc"), ("te", "trailers")],
                     body=grpc_message(data), wait=wait)


def test_twenty_concurrent_calls_share_one_connection_with_trailers(router_factory):
    """20 gRPC calls in flight at once on one client connection: the instance holds its
    answers until all 20 are open on its side, so they can only succeed if they are
    multiplexed; one TCP connection carries them, each answer keeps its trailers."""
    r, inst = mux_app(router_factory, hold=20)
    c = H2(r.port)
    calls = [grpc_call(c, b"call %d" % i) for i in range(20)]
    sids = sorted(c.streams)
    c.wait(lambda: all(c.streams[s].ended or c.streams[s].reset is not None for s in sids),
           "the 20 answers", timeout=20)
    for i, resp in enumerate(calls):
        assert resp.status == 200 and resp.body == grpc_message(b"call %d" % i), i
        assert ("grpc-status", "0") in resp.trailers and ("grpc-message", "ok") in resp.trailers
    assert inst.accepted == 1 and inst.max_open == 20
    c.close()


def test_twenty_clients_over_http11_use_a_few_connections(router_factory):
    """20 HTTP/1.1 clients at once (spread over the router's 2 workers): at most one h2c
    connection per worker, every answer with its trailers."""
    from test_router import Client
    r, inst = mux_app(router_factory, hold=5)
    results = [None] * 20

    def call(i):
        cl = Client(r.port, timeout=20)
        results[i] = cl.request("POST", "/pkg.Greeter/SayHello", "grpc.localhost",
                                headers={"TE": "trailers", "Content-Type": "application/grpc"},
                                body=grpc_message(b"hi %d" % i))
        cl.close()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i, resp in enumerate(results):
        assert resp is not None and resp.status == 200, i
        assert resp.body == grpc_message(b"hi %d" % i)
        assert resp.trailers.get("grpc-status") == "0"
    assert 1 <= inst.accepted <= 2, inst.accepted
    assert inst.max_open >= 5


def test_an_instance_allowing_one_stream_gets_one_at_a_time(router_factory):
    """SETTINGS_MAX_CONCURRENT_STREAMS 1: never two streams at once on one connection; the
    calls beyond wait for a stream or go on another connection (4 per worker at most)."""
    r, inst = mux_app(router_factory, settings={3: 1})
    c = H2(r.port)
    calls = [grpc_call(c, b"one %d" % i) for i in range(8)]
    sids = sorted(c.streams)
    c.wait(lambda: all(c.streams[s].ended or c.streams[s].reset is not None for s in sids),
           "the answers", timeout=20)
    for i, resp in enumerate(calls):
        assert resp.status == 200 and resp.body == grpc_message(b"one %d" % i), i
        assert ("grpc-status", "0") in resp.trailers
    assert inst.max_open == 1
    assert 1 <= inst.accepted <= 4, inst.accepted
    c.close()


def test_an_instance_allowing_no_stream_is_a_502_and_the_router_goes_on(router_factory, backends):
    inst = MuxInstance(settings={3: 0})
    other = backends("other")
    r = router_factory([dict(route("grpc.localhost", [inst]), protocol="http2"),
                        route("app.localhost", [other])])
    c = H2(r.port)
    start = time.monotonic()
    resp = c.request("GET", "/", authority="grpc.localhost")
    assert resp.status == 502 and resp.header("x-skiff-router-error") == "backend-unreachable"
    assert time.monotonic() - start < 5
    assert inst.requests == []  # no stream was ever sent to it
    assert c.request().status == 200  # another route, the same client connection
    c.close()
    assert r.proc.poll() is None


def test_a_reset_stream_fails_alone(router_factory):
    """The instance resets one stream while another is in flight on the same connection: the
    first is a 502, the second is answered, and the connection stays (one accept)."""
    r, inst = mux_app(router_factory, hold=2,
                      hook=lambda ctx, sid, s: dict(s["headers"]).get(":path") == "/reset" and
                      (ctx.send(frame(RST_STREAM, 0, sid, struct.pack(">I", INTERNAL_ERROR))) or True))
    c = H2(r.port)
    held = grpc_call(c, b"a")
    reset = c.request("GET", "/reset", authority="grpc.localhost")
    assert reset.status == 502 and reset.header("x-skiff-router-error") == "backend-failed"
    second = grpc_call(c, b"b")  # the held one is answered with this one
    c.wait(lambda: held.ended and second.ended, "the two answers")
    assert held.body == grpc_message(b"a") and second.body == grpc_message(b"b")
    assert ("grpc-status", "0") in held.trailers
    assert inst.accepted == 1
    c.close()


def test_a_client_that_goes_cancels_only_its_stream(router_factory):
    """A client resets its stream (and another closes its connection) while their calls are in
    flight: the instance gets RST_STREAM CANCEL for those streams, and a call of a third client
    on the same connection to the instance is answered."""
    r, inst = mux_app(router_factory, hold=3)
    a, b, keep = H2(r.port), H2(r.port), H2(r.port)
    sa = grpc_call(a, b"a")
    grpc_call(b, b"b")
    wait_for(lambda: len(inst.requests) == 2, 10, "two calls at the instance")
    a.send(frame(RST_STREAM, 0, 1, struct.pack(">I", CANCEL)))
    b.close()
    wait_for(lambda: len(inst.resets) == 2, 10, "two RST_STREAMs at the instance")
    assert all(code == CANCEL for _, code in inst.resets), inst.resets
    assert sa.status == 0
    inst.hold = 1
    resp = grpc_call(keep, b"kept", wait=True)
    assert resp.status == 200 and resp.body == grpc_message(b"kept")
    assert ("grpc-status", "0") in resp.trailers
    assert inst.accepted <= 2  # the two workers at most; no connection was cut for a cancel
    a.close()
    keep.close()


def test_an_instance_that_never_opens_its_window_stalls_only_its_streams(router_factory):
    """No WINDOW_UPDATE ever: a call with a body over the initial window (64 KB) stalls there,
    calls without a body on the same connection are answered meanwhile, and the stalled call
    ends with the router's timeout (504), its stream reset at the instance, the connection
    kept."""
    r, inst = mux_app(router_factory, "--upstream-timeout-ms", "3000", window_updates=False)
    from test_router import Client
    big = Client(r.port, timeout=20)
    body = b"x" * (200 * 1024)
    big.send(b"POST /big HTTP/1.1\r\nHost: grpc.localhost\r\nContent-Length: %d\r\n\r\n"
             % len(body) + body)
    wait_for(lambda: inst.max_open >= 1, 10, "the big call at the instance")
    c = H2(r.port)
    for i in range(3):
        small = c.request("GET", "/small%d" % i, authority="grpc.localhost")
        assert small.status == 200 and ("grpc-status", "0") in small.trailers
    assert inst.requests and all(dict(q["headers"])[":path"] != "/big" for q in inst.requests)
    resp = big.response()
    assert resp.status == 504 and resp.headers.get("x-skiff-router-error") == "backend-timeout"
    wait_for(lambda: any(code == CANCEL for _, code in inst.resets), 10, "the reset")
    assert inst.accepted <= 2  # one per worker: the stall cut no connection
    assert c.request("GET", "/after", authority="grpc.localhost").status == 200
    c.close()
    big.close()


def test_goaway_mid_flight_retries_what_was_not_processed(router_factory):
    """The instance says GOAWAY with the first stream as its last while a second is in flight:
    the first is answered; the second, a GET, was not processed and goes again on a new
    connection; so does a call with a small body (kept until the instance answers), whose
    body arrives whole; one with a body over the 64 KB the router keeps is a 503 that says
    nothing was done."""
    state = {"conns": 0}

    def hook(ctx, sid, s):
        path = dict(s["headers"]).get(":path")
        if path == "/first":
            state["first"] = (ctx, sid)
            return True
        if path in ("/second", "/posted") and "first" in state:
            first_ctx, first_sid = state.pop("first")
            if first_ctx is ctx:
                ctx.send(frame(GOAWAY, 0, 0, struct.pack(">II", first_sid, 0)))
                ctx.answer(first_sid, b"first")
                return True
        return False

    r, inst = mux_app(router_factory, "--workers", "1", hook=hook)  # one h2c connection
    c = H2(r.port)
    first = c.request("GET", "/first", authority="grpc.localhost", wait=False)
    wait_for(lambda: len(inst.requests) == 1, 10, "the first stream at the instance")
    second = c.request("GET", "/second", authority="grpc.localhost")
    c.wait(lambda: first.ended, "the first answer")
    assert first.status == 200 and first.body == b"first"
    assert second.status == 200 and ("grpc-status", "0") in second.trailers
    assert inst.accepted == 2  # the second went again on a new connection
    # the same with a body the router kept: sent again whole on a new connection
    first = c.request("GET", "/first", authority="grpc.localhost", wait=False)
    wait_for(lambda: "first" in state, 10, "the first stream at the instance")
    posted = c.request("POST", "/posted", authority="grpc.localhost", body=b"data" * 1000)
    c.wait(lambda: first.ended, "the first answer")
    assert first.status == 200
    assert posted.status == 200 and posted.body == b"data" * 1000
    assert inst.accepted == 3
    # over the bound: not kept, so not sent again (from an HTTP/1.1 client: this one's DATA
    # would not wait for the router's window)
    from test_router import Client
    first = c.request("GET", "/first", authority="grpc.localhost", wait=False)
    wait_for(lambda: "first" in state, 10, "the first stream at the instance")
    h1 = Client(r.port, timeout=20)
    big = h1.request("POST", "/posted", "grpc.localhost", body=b"b" * (100 * 1024))
    assert big.status == 503 and big.headers.get("x-skiff-router-error") == "backend-refused"
    h1.close()
    c.wait(lambda: first.ended, "the first answer")
    assert first.status == 200
    assert c.request("GET", "/after", authority="grpc.localhost").status == 200
    c.close()


def refuse_first(paths):
    """An on_headers hook: the first stream for each of `paths` is reset REFUSED_STREAM as
    its HEADERS come (as an instance over its stream limit does); `refused` counts them."""
    refused = []

    def on_headers(ctx, sid, fields):
        path = dict(fields).get(":path")
        if path in paths and path not in refused:
            refused.append(path)
            ctx.send(frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM)))
            return True
        return False
    return on_headers, refused


def test_a_refused_stream_with_a_body_goes_again_with_its_body(router_factory):
    """REFUSED_STREAM from the instance on streams whose requests have bodies: with a length
    and chunked, from an HTTP/2 and an HTTP/1.1 client, and a body still arriving when the
    refusal comes. Each goes again on a new stream and the instance gets the whole body."""
    from test_router import Client
    paths = ["/h2-length", "/h2-chunked", "/h1-length", "/h1-slow"]
    on_headers, refused = refuse_first(paths)
    r, inst = mux_app(router_factory, on_headers=on_headers)
    c = H2(r.port)
    body = bytes(range(256)) * 100  # 25.6 KB, two DATA frames
    resp = c.request("POST", "/h2-length", authority="grpc.localhost",
                     fields=[("content-length", str(len(body)))], body=body)
    assert resp.status == 200 and resp.body == body
    resp = c.request("POST", "/h2-chunked", authority="grpc.localhost", body=body)
    assert resp.status == 200 and resp.body == body
    h1 = Client(r.port, timeout=20)
    resp = h1.request("POST", "/h1-length", "grpc.localhost", body=body)
    assert resp.status == 200 and resp.body == body
    # the head and part of the body; the rest once the instance has refused the stream
    h1.send(b"POST /h1-slow HTTP/1.1\r\nHost: grpc.localhost\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n1000\r\n" + body[:4096] + b"\r\n")
    wait_for(lambda: "/h1-slow" in refused, 10, "the refusal")
    h1.send(b"%x\r\n" % (len(body) - 4096) + body[4096:] + b"\r\n0\r\n\r\n")
    resp = h1.response()
    assert resp.status == 200 and resp.body == body
    assert refused == paths
    bodies = {dict(q["headers"])[":path"]: q["body"] for q in inst.requests}
    assert all(bodies[p] == body for p in paths), {p: len(bodies[p]) for p in bodies}
    assert inst.accepted <= 2  # a refused stream cuts no connection
    h1.close()
    c.close()


def test_a_refused_stream_not_sent_again_is_a_503_that_says_nothing_was_done(router_factory):
    """A body over the 64 KB the router keeps for a replay, refused once the instance has it
    all, and a request the instance refuses every time: neither can be sent again by the
    router, and the client hears that nothing was done (503 backend-refused, which it may
    retry), not that the app failed on it (502). The next call is answered."""
    from test_router import Client

    def refuse(ctx, sid, s):
        if dict(s["headers"]).get(":path") not in ("/big", "/always"):
            return False
        ctx.send(frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM)))
        return True
    r, inst = mux_app(router_factory, hook=refuse)
    h1 = Client(r.port, timeout=20)
    resp = h1.request("POST", "/big", "grpc.localhost", body=b"x" * (100 * 1024))
    assert resp.status == 503 and resp.headers.get("x-skiff-router-error") == "backend-refused"
    assert b"nothing was done" in resp.body and b"64 KB" in resp.body
    assert [len(q["body"]) for q in inst.requests] == [100 * 1024]  # sent once, not again
    h1.close()
    h1 = Client(r.port, timeout=20)
    resp = h1.request("POST", "/always", "grpc.localhost", body=b"small")
    assert resp.status == 503 and resp.headers.get("x-skiff-router-error") == "backend-refused"
    assert b"nothing was done" in resp.body and b"three times" in resp.body
    always = [q for q in inst.requests if dict(q["headers"])[":path"] == "/always"]
    assert [q["body"] for q in always] == [b"small"] * 4  # once, then sent again 3 times
    h1.close()
    c = H2(r.port)
    resp = c.request("GET", "/always", authority="grpc.localhost")  # over HTTP/2 alike
    assert resp.status == 503 and resp.header("x-skiff-router-error") == "backend-refused"
    assert grpc_call(c, b"after", wait=True).status == 200
    c.close()


def test_waiting_for_a_stream_is_no_connect_timeout_and_marks_no_instance_down(router_factory):
    """Two instances allowing one stream each, answering after 1.5 s, and a connect timeout of
    300 ms: 12 calls at once from one client take the 4 connections a worker opens to each
    instance, the others wait for a stream longer than the connect timeout. None fails, and
    each instance gets its round-robin half: a wait marked neither down."""
    def slow(ctx, sid, s):
        threading.Timer(1.5, ctx.answer, (sid, s["body"])).start()
        return True
    a = MuxInstance(settings={3: 1}, hook=slow)
    b = MuxInstance(settings={3: 1}, hook=slow)
    r = router_factory([dict(route("grpc.localhost", [a, b]), protocol="http2")],
                       "--connect-timeout-ms", "300")
    c = H2(r.port)
    start = time.monotonic()
    calls = [grpc_call(c, b"call %d" % i) for i in range(12)]
    sids = sorted(c.streams)
    c.wait(lambda: all(c.streams[s].ended or c.streams[s].reset is not None for s in sids),
           "the 12 answers", timeout=30)
    for i, resp in enumerate(calls):
        assert resp.status == 200 and resp.body == grpc_message(b"call %d" % i), \
            (i, resp.status, resp.header("x-skiff-router-error"))
    assert time.monotonic() - start >= 3  # some waited for a second round of streams
    assert len(a.requests) == 6 and len(b.requests) == 6, (len(a.requests), len(b.requests))
    assert a.max_open == 1 and b.max_open == 1
    assert a.accepted <= 4 and b.accepted <= 4
    c.close()


def test_a_stream_that_never_frees_is_a_504_after_the_upstream_timeout(router_factory):
    """An instance allowing one stream that never answers: 5 calls from one client, 4 on the
    4 connections a worker opens, the fifth waits for a stream past the connect timeout. Each
    ends with the upstream timeout (504), none with a 502."""
    r, inst = mux_app(router_factory, "--connect-timeout-ms", "200", "--upstream-timeout-ms",
                      "1500", settings={3: 1}, hook=lambda ctx, sid, s: True)
    c = H2(r.port)
    calls = [grpc_call(c, b"%d" % i) for i in range(5)]
    start = time.monotonic()
    sids = sorted(c.streams)
    c.wait(lambda: all(c.streams[s].ended or c.streams[s].reset is not None for s in sids),
           "the answers", timeout=20)
    assert time.monotonic() - start >= 1.4
    assert [resp.status for resp in calls] == [504] * 5, \
        [(resp.status, resp.header("x-skiff-router-error")) for resp in calls]
    assert all(resp.header("x-skiff-router-error") == "backend-timeout" for resp in calls)
    c.close()


def test_frames_for_a_stream_never_opened_end_that_connection_only(router_factory, backends):
    """The instance sends DATA and HEADERS on a stream the router never opened: a protocol
    error that ends that connection (its call is a 502); the router stays up, the next call
    goes on a new connection and other routes are served."""
    sent = []

    def hook(ctx, sid, s):
        if dict(s["headers"]).get(":path") == "/bogus" and not sent:
            sent.append(sid)
            ctx.send(frame(DATA, 0, sid + 40, b"who asked") +
                     frame(HEADERS, END_HEADERS, sid + 42, ctx.enc.encode([(":status", "200")])))
            return True
        return False

    inst = MuxInstance(hook=hook)
    other = backends("other")
    r = router_factory([dict(route("grpc.localhost", [inst]), protocol="http2"),
                        route("app.localhost", [other])])
    c = H2(r.port)
    bad = c.request("GET", "/bogus", authority="grpc.localhost")
    assert bad.status == 502
    ok = grpc_call(c, b"next", wait=True)
    assert ok.status == 200 and ("grpc-status", "0") in ok.trailers
    assert inst.accepted == 2
    assert c.request().status == 200
    assert r.proc.poll() is None
    c.close()


def test_a_client_that_does_not_read_stops_only_its_stream_at_the_instance(router_factory):
    """Per-stream flow control: an instance sends 8 MB on a stream as the router's windows
    allow, to a client that never opens its own window. The router queues a bounded amount and
    stops acknowledging that stream, so the instance stops there; other calls on the same
    connection to the instance go on (its window is reopened as bytes come)."""
    sent = [0]

    def hook(ctx, sid, s):
        if dict(s["headers"]).get(":path") != "/big":
            return False
        ctx.send(frame(HEADERS, END_HEADERS, sid, ctx.enc.encode([(":status", "200")])))
        threading.Thread(target=ctx.send_data, args=(sid, 8 << 20, sent), daemon=True).start()
        return True

    r, inst = mux_app(router_factory, hook=hook)
    before = r.rss_kb()
    slow = H2(r.port, window_updates=False)
    slow.request("GET", "/big", authority="grpc.localhost", wait=False)
    wait_for(lambda: sent[0] > 0, 10, "the instance to start sending")
    # the router's share: its client window (64 KB), its high water (256 KB) and the stream's
    # window at the instance (256 KB), with frames in flight
    plateau = wait_for(lambda: (lambda a: (time.sleep(0.5), a == sent[0] and a)[1])(sent[0]),
                       20, "the instance to be stopped by the stream's window")
    assert plateau < 1 << 20, plateau
    fast = H2(r.port)
    for i in range(3):
        resp = grpc_call(fast, b"meanwhile %d" % i, wait=True)
        assert resp.status == 200 and ("grpc-status", "0") in resp.trailers
    assert sent[0] == plateau  # still stopped
    assert inst.accepted <= 2  # one per worker: nothing cut for the stall
    assert r.rss_kb() - before < 16 * 1024
    slow.close()  # the client goes: its stream is reset at the instance
    wait_for(lambda: any(code == CANCEL for _, code in inst.resets), 10, "the reset")
    fast.close()
