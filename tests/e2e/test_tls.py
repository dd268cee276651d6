"""HTTPS in the router, with real TLS clients (curl, Python's ssl module, openssl s_client) and
certificates made here with the openssl command line.

The router runs alone with a bus server playing skiffd (tests/e2e/test_router.py's tools);
the platform test at the end runs skiffd, which makes the local CA itself.
"""
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

from conftest import Platform, free_port, wait_for
from test_router import Backend, BusServer, Router, route


# ---- certificates -------------------------------------------------------------------------


def openssl(*args, cwd=None, input=None):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, input=input,
                       timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(args)}: {r.stderr}"
    return r.stdout


class CA:
    """A certificate authority in a folder: ca.pem and ca.key (EC P-256)."""

    def __init__(self, folder, name="Test CA"):
        self.dir = folder
        os.makedirs(folder, exist_ok=True)
        self.pem = os.path.join(folder, "ca.pem")
        self.key = os.path.join(folder, "ca.key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", self.key, "-out", self.pem, "-days", "30",
                "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        os.chmod(self.key, 0o600)

    def issue(self, name, sans, days=30, client=False, expired=False, ocsp=None):
        """(cert path, key path) of a leaf for the names (DNS names; 'IP:x' for addresses)."""
        base = os.path.join(self.dir, name.replace("*", "star"))
        key, csr, cert = base + ".key", base + ".csr", base + ".pem"
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        ext = os.path.join(self.dir, name.replace("*", "star") + ".ext")
        alt = ",".join(s if s.startswith("IP:") else "DNS:" + s for s in sans)
        with open(ext, "w") as f:
            f.write(f"subjectAltName={alt}\n")
            f.write("extendedKeyUsage=" + ("clientAuth" if client else "serverAuth") + "\n")
            if ocsp:  # the responder's URL (Authority Information Access)
                f.write(f"authorityInfoAccess=OCSP;URI:{ocsp}\n")
        args = ["x509", "-req", "-in", csr, "-CA", self.pem, "-CAkey", self.key,
                "-CAcreateserial", "-out", cert, "-extfile", ext]
        # expired: its end a day before now (openssl 3.0's x509 has no -not_after)
        args += ["-days", "-1" if expired else str(days)]
        openssl(*args)
        return cert, key


def pem_pair(cert, key):
    with open(cert) as c, open(key) as k:
        return c.read() + k.read()


def install(home, name, cert, key, default=False):
    """Writes a chain and key where the router reads them ($SKIFF_HOME/tls)."""
    tls = os.path.join(home, "tls")
    os.makedirs(os.path.join(tls, "domains"), mode=0o700, exist_ok=True)
    path = os.path.join(tls, "default.pem" if default else os.path.join("domains", name + ".pem"))
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(pem_pair(cert, key))
    os.rename(tmp, path)


# ---- a router with HTTPS ------------------------------------------------------------------


@pytest.fixture
def tls_env():
    home = tempfile.mkdtemp(prefix="skiff-e2e-tls-")
    ca = CA(os.path.join(home, "ca"))
    # the local CA the router issues APP.localhost certificates with
    shutil.copy(ca.pem, os.path.join(home, "lca.pem"))
    os.makedirs(os.path.join(home, "tls", "domains"), mode=0o700)
    shutil.copy(ca.pem, os.path.join(home, "tls", "ca.pem"))
    shutil.copy(ca.key, os.path.join(home, "tls", "ca.key"))
    cert, key = ca.issue("default.test", ["default.test", "localhost", "IP:127.0.0.1"])
    install(home, "default", cert, key, default=True)
    bus = BusServer(home)
    backend = Backend("b")
    env = {"home": home, "ca": ca, "bus": bus, "backend": backend, "routers": []}
    yield env
    for r in env["routers"]:
        r.stop()
    backend.close()
    bus.stop()
    shutil.rmtree(home, ignore_errors=True)


def start_router(env, *args):
    tls_port = free_port()
    r = Router(env["home"], ["--tls-addr", f"127.0.0.1:{tls_port}", *args]).start()
    r.tls_port = tls_port
    env["routers"].append(r)
    return r


def set_routes(env, router, hosts):
    env["bus"].set_routes([route(h, [env["backend"]]) for h in hosts])
    wait_for(lambda: router.get(hosts[0]).status == 200, 10, "routes")


def context(cafile, **kw):
    ctx = ssl.create_default_context(cafile=cafile)
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def tls_connect(port, host, cafile, **kw):
    ctx = context(cafile, **kw)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(sock, server_hostname=host)


def https_get(sock, host, path="/", headers=None):
    """One keep-alive request on an open TLS socket; returns (status, parsed JSON body)."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
    f = sock.makefile("rb")
    status = int(f.readline().split()[1])
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        if k.lower() == "content-length":
            length = int(v)
    body = f.read(length)
    f.close()
    return status, json.loads(body) if body.startswith(b"{") else body


def subject_cn(sock):
    for rdn in sock.getpeercert()["subject"]:
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True,
                          text=True, timeout=60)


# ---- tests ----------------------------------------------------------------------------------


def test_curl_https_to_an_app_localhost_with_the_local_ca(tls_env):
    r = start_router(tls_env)
    set_routes(tls_env, r, ["web.localhost"])
    ca = os.path.join(tls_env["home"], "lca.pem")
    out = curl("--cacert", ca, "--resolve", f"web.localhost:{r.tls_port}:127.0.0.1",
               "-H", "X-Forwarded-Proto: http", f"https://web.localhost:{r.tls_port}/hello")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["path"] == "/hello"
    assert seen["headers"]["x-forwarded-proto"] == "https"  # the client's own is replaced
    assert seen["headers"]["host"] == f"web.localhost:{r.tls_port}"
    # ALPN: h2 when the client offers it (curl offers h2 first), http/1.1 when it asks for it
    out = curl("-v", "--cacert", ca, "--resolve", f"web.localhost:{r.tls_port}:127.0.0.1",
               f"https://web.localhost:{r.tls_port}/")
    assert "ALPN: server accepted h2" in out.stderr, out.stderr
    out = curl("-v", "--http1.1", "--cacert", ca, "--resolve",
               f"web.localhost:{r.tls_port}:127.0.0.1", f"https://web.localhost:{r.tls_port}/")
    assert "ALPN: server accepted http/1.1" in out.stderr, out.stderr
    # plain HTTP stays as it was
    assert r.get("web.localhost").json()["headers"]["x-forwarded-proto"] == "http"
    # a name under localhost that no route has: the default certificate, nothing issued
    with context(ca, check_hostname=False).wrap_socket(
            socket.create_connection(("127.0.0.1", r.tls_port)),
            server_hostname="random-name.localhost") as s:
        assert subject_cn(s) == "default.test"
    # a client that does not trust the CA is refused by curl itself
    out = curl("--resolve", f"web.localhost:{r.tls_port}:127.0.0.1",
               f"https://web.localhost:{r.tls_port}/")
    assert out.returncode == 60, out


def test_sni_picks_each_domains_certificate(tls_env):
    ca = tls_env["ca"]
    for name in ("shop.example.test", "blog.example.test"):
        cert, key = ca.issue(name, [name])
        install(tls_env["home"], name, cert, key)
    cert, key = ca.issue("*.wild.test", ["*.wild.test"])
    install(tls_env["home"], "wild.test", cert, key)
    r = start_router(tls_env)
    set_routes(tls_env, r, ["shop.example.test", "blog.example.test", "a.wild.test",
                            "other.test"])
    for host, cn in [("shop.example.test", "shop.example.test"),
                     ("blog.example.test", "blog.example.test"),
                     ("a.wild.test", "*.wild.test")]:
        with tls_connect(r.tls_port, host, ca.pem) as s:
            assert subject_cn(s) == cn
            status, seen = https_get(s, host)
            assert status == 200 and seen["headers"]["host"] == host
    # a name no certificate has: the default, which the client then refuses for that name
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(r.tls_port, "other.test", ca.pem)
    ctx = context(ca.pem, check_hostname=False)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", r.tls_port)),
                         server_hostname="other.test") as s:
        assert subject_cn(s) == "default.test"


def s_client_status(port, host, cafile):
    """What `openssl s_client -status` prints of a handshake asking for a stapled response."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                        host, "-status", "-CAfile", cafile, "-verify_return_error"],
                       input="", capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout


class LoopbackOcsp:
    """An OCSP responder on 127.0.0.1 only (`openssl ocsp -port` takes a port and listens on
    every address): a small HTTP server here, each POSTed request answered by `openssl ocsp
    -reqin ... -respout ...` with the given index, signer and key."""

    def __init__(self, port, index, ca, signer, signer_key):
        import http.server
        import threading
        args = ["openssl", "ocsp", "-index", index, "-CA", ca, "-rsigner", signer,
                "-rkey", signer_key, "-nmin", "1"]
        folder = tempfile.mkdtemp(prefix="skiff-ocsp-")
        self.folder = folder

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                req = os.path.join(folder, "req-%d.der" % threading.get_ident())
                resp = req.replace("req-", "resp-")
                with open(req, "wb") as f:
                    f.write(body)
                r = subprocess.run(args + ["-reqin", req, "-respout", resp],
                                   capture_output=True, timeout=30)
                data = open(resp, "rb").read() if r.returncode == 0 else b""
                self.send_response(200 if data else 500)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
        shutil.rmtree(self.folder, ignore_errors=True)


def host_addresses():
    """This host's IPv4 addresses outside 127.0.0.0/8."""
    r = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, timeout=10)
    addrs = [line.split()[3].split("/")[0] for line in r.stdout.splitlines()
             if len(line.split()) > 3]
    return [a for a in addrs if not a.startswith("127.")]


def ocsp_index(ca, *certs):
    """An `openssl ocsp` index where every cert is good."""
    index = os.path.join(ca.dir, "index.txt")
    with open(index, "w") as f:
        for cert in certs:
            serial = openssl("x509", "-in", cert, "-noout", "-serial").strip().split("=")[1]
            f.write(f"V\t301231235959Z\t\t{serial}\tunknown\t/CN=x\n")
    return index


def ocsp_responder(ca, port, *certs):
    """A responder for the CA on 127.0.0.1:port: every cert good, nextUpdate 1 min on."""
    return LoopbackOcsp(port, ocsp_index(ca, *certs), ca.pem, ca.pem, ca.key)


def this_update(text):
    for line in text.splitlines():
        if "This Update:" in line:
            return line.split("This Update:")[1].strip()
    return None


def test_ocsp_stapling_fetched_refreshed_and_optional(tls_env):
    ca = tls_env["ca"]
    port = free_port()
    host = "shop.ocsp.test"
    leaf, key = ca.issue(host, [host], ocsp=f"http://127.0.0.1:{port}/")
    # the issuer goes in the chain: a response is checked against it
    cert = os.path.join(ca.dir, "shop-chain.pem")
    with open(cert, "w") as f:
        f.write(open(leaf).read() + open(ca.pem).read())
    install(tls_env["home"], host, cert, key)
    r = start_router(tls_env, "--tls-ocsp-retry-ms", "1000")
    set_routes(tls_env, r, [host])
    # the responder is down: handshakes go on, unstapled
    rc, text = s_client_status(r.tls_port, host, ca.pem)
    assert rc == 0 and "OCSP response: no response sent" in text, text
    wait_for(lambda: "no response from" in r.log(), 20, "the failed fetch in the log")
    # up: within the retry, the response is stapled and verifies against the CA
    responder = ocsp_responder(ca, port, leaf)
    try:
        def stapled():
            rc, text = s_client_status(r.tls_port, host, ca.pem)
            return text if rc == 0 and "Cert Status: good" in text else None
        text = wait_for(stapled, 20, "a stapled response")
        assert "OCSP Response Status: successful" in text
        # the responder is on loopback alone: the host's other addresses refuse
        for addr in host_addresses():
            with pytest.raises(OSError):
                socket.create_connection((addr, port), timeout=2).close()
        first = this_update(text)
        # fetched again before its nextUpdate (1 min): halfway there
        text = wait_for(lambda: (t := stapled()) and this_update(t) != first and t, 60,
                        "a newer stapled response")
        # a certificate without a responder never staples; the default has none
        rc, text = s_client_status(r.tls_port, "default.test", ca.pem)
        assert rc == 0 and "OCSP response: no response sent" in text, text
    finally:
        responder.close()


def test_ocsp_response_not_signed_by_the_issuer_is_never_stapled(tls_env):
    """A responder (or anyone on the path to it) signing with a key of its own: the router
    checks the signature against the certificate's issuer and staples nothing."""
    ca = tls_env["ca"]
    rogue = CA(os.path.join(tls_env["home"], "rogue"), "Rogue CA")
    port = free_port()
    host = "forged.ocsp.test"
    leaf, key = ca.issue(host, [host], ocsp=f"http://127.0.0.1:{port}/")
    cert = os.path.join(ca.dir, "forged-chain.pem")
    with open(cert, "w") as f:
        f.write(open(leaf).read() + open(ca.pem).read())
    install(tls_env["home"], host, cert, key)
    responder = LoopbackOcsp(port, ocsp_index(ca, leaf), ca.pem, rogue.pem, rogue.key)
    try:
        r = start_router(tls_env, "--tls-ocsp-retry-ms", "1000")
        set_routes(tls_env, r, [host])
        wait_for(lambda: "does not verify against the issuer" in r.log(), 20,
                 "the forged response refused")
        rc, text = s_client_status(r.tls_port, host, ca.pem)
        assert rc == 0 and "OCSP response: no response sent" in text, text
    finally:
        responder.close()


def test_rotation_without_restart_keeps_open_connections(tls_env):
    ca = tls_env["ca"]
    cert, key = ca.issue("shop.example.test", ["shop.example.test"])
    install(tls_env["home"], "shop.example.test", cert, key)
    r = start_router(tls_env)
    set_routes(tls_env, r, ["shop.example.test"])
    old = tls_connect(r.tls_port, "shop.example.test", ca.pem)
    old_serial = old.getpeercert()["serialNumber"]
    assert https_get(old, "shop.example.test")[0] == 200

    cert2, key2 = ca.issue("shop.example.test", ["shop.example.test"], days=60)
    install(tls_env["home"], "shop.example.test", cert2, key2)
    tls_env["bus"].set_routes(tls_env["bus"].routes)  # nothing new in the table...
    with tls_env["bus"].lock:  # ...and the message skiffd sends when a certificate changed
        for c in tls_env["bus"].conns:
            c.sendall(b'{"type": "certs"}\n')

    def new_serial():
        with tls_connect(r.tls_port, "shop.example.test", ca.pem) as s:
            return s.getpeercert()["serialNumber"]
    wait_for(lambda: new_serial() != old_serial, 10, "the new certificate")
    # the connection made before goes on with its certificate
    assert https_get(old, "shop.example.test")[0] == 200
    old.close()

    # a broken file is refused and the certificate before stays
    path = os.path.join(tls_env["home"], "tls", "domains", "shop.example.test.pem")
    with open(path, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\ngarbage\n")
    served = new_serial()
    with tls_env["bus"].lock:
        for c in tls_env["bus"].conns:
            c.sendall(b'{"type": "certs"}\n')
    wait_for(lambda: "were not reloaded" in r.log(), 10, "the refused reload")
    assert new_serial() == served


def test_old_versions_refused_and_tls12_13_accepted(tls_env):
    r = start_router(tls_env)
    set_routes(tls_env, r, ["web.localhost"])
    lca = os.path.join(tls_env["home"], "lca.pem")
    for v in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        ctx = context(lca, minimum_version=v, maximum_version=v)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer it at all
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(socket.create_connection(("127.0.0.1", r.tls_port), timeout=5),
                            server_hostname="web.localhost")
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        with tls_connect(r.tls_port, "web.localhost", lca, minimum_version=v,
                         maximum_version=v) as s:
            assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                   ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[v]
            assert https_get(s, "web.localhost")[0] == 200


def test_renegotiation_refused(tls_env):
    r = start_router(tls_env)
    set_routes(tls_env, r, ["web.localhost"])
    lca = os.path.join(tls_env["home"], "lca.pem")
    # s_client's "R" line asks for a renegotiation
    p = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{r.tls_port}",
                        "-servername", "web.localhost", "-CAfile", lca, "-tls1_2"],
                       input="R\n", capture_output=True, text=True, timeout=30)
    out = p.stdout + p.stderr
    assert "RENEGOTIATING" in out, out
    assert "no renegotiation" in out, out  # the router's answer: the no_renegotiation alert


def test_session_resumption(tls_env):
    r = start_router(tls_env)
    set_routes(tls_env, r, ["web.localhost"])
    lca = os.path.join(tls_env["home"], "lca.pem")
    sess = os.path.join(tls_env["home"], "sess.pem")
    # -ign_eof with Connection: close: s_client reads until the router closes, so the ticket
    # that follows the handshake has arrived when the session is saved
    request = "GET / HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n"
    for version in ("-tls1_3", "-tls1_2"):
        base = ["openssl", "s_client", "-connect", f"127.0.0.1:{r.tls_port}", "-servername",
                "web.localhost", "-CAfile", lca, version, "-ign_eof"]
        p = subprocess.run(base + ["-sess_out", sess], input=request, capture_output=True,
                           text=True, timeout=30)
        assert "New," in p.stdout and "HTTP/1.1 200" in p.stdout, p.stdout + p.stderr
        p = subprocess.run(base + ["-sess_in", sess], input=request, capture_output=True,
                           text=True, timeout=30)
        assert "Reused," in p.stdout and "HTTP/1.1 200" in p.stdout, (version, p.stdout)


def test_silent_connections_do_not_stop_others(tls_env):
    r = start_router(tls_env, "--tls-max-handshakes", "8", "--tls-handshake-timeout-ms", "2000")
    set_routes(tls_env, r, ["web.localhost"])
    lca = os.path.join(tls_env["home"], "lca.pem")
    idle = [socket.create_connection(("127.0.0.1", r.tls_port)) for _ in range(100)]
    try:
        # others still get through at once: the oldest silent handshakes made room for them
        start = time.monotonic()
        for _ in range(5):
            with tls_connect(r.tls_port, "web.localhost", lca) as s:
                assert https_get(s, "web.localhost")[0] == 200
        assert time.monotonic() - start < 10
        # and a silent connection is closed by the handshake timeout
        late = socket.create_connection(("127.0.0.1", r.tls_port))
        late.settimeout(10)
        start = time.monotonic()
        assert late.recv(1) == b""
        assert time.monotonic() - start >= 1.5
        late.close()
    finally:
        for s in idle:
            s.close()


def test_client_sent_xfcc_is_stripped_and_client_certs_forwarded(tls_env):
    ca = tls_env["ca"]
    r = start_router(tls_env)
    set_routes(tls_env, r, ["web.localhost"])
    lca = os.path.join(tls_env["home"], "lca.pem")
    with tls_connect(r.tls_port, "web.localhost", lca) as s:
        status, seen = https_get(s, "web.localhost", headers={"X-Forwarded-Client-Cert": "forged"})
        assert status == 200 and "x-forwarded-client-cert" not in seen["headers"]
    seen = r.get("web.localhost", headers={"X-Forwarded-Client-Cert": "forged"}).json()
    assert "x-forwarded-client-cert" not in seen["headers"]

    # with client certificates asked for, a verified one is passed on (base64 DER)
    clients = CA(os.path.join(tls_env["home"], "clients"), "Client CA")
    ccert, ckey = clients.issue("alice", ["alice.test"], client=True)
    r2 = start_router(tls_env, "--tls-client-ca", clients.pem)
    set_routes(tls_env, r2, ["web.localhost"])
    ctx = context(lca)
    ctx.load_cert_chain(ccert, ckey)
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", r2.tls_port)),
                         server_hostname="web.localhost") as s:
        status, seen = https_get(s, "web.localhost", headers={"X-Forwarded-Client-Cert": "forged"})
    der = ssl.PEM_cert_to_DER_cert(open(ccert).read())
    assert seen["headers"]["x-forwarded-client-cert"] == base64.b64encode(der).decode()
    # without a certificate the connection goes on, with no header
    with tls_connect(r2.tls_port, "web.localhost", lca) as s:
        status, seen = https_get(s, "web.localhost", headers={"X-Forwarded-Client-Cert": "forged"})
    assert status == 200 and "x-forwarded-client-cert" not in seen["headers"]
    # a certificate of another CA fails the handshake
    ctx = context(lca)
    ctx.load_cert_chain(*ca.issue("mallory", ["mallory.test"], client=True))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", r2.tls_port)),
                             server_hostname="web.localhost") as s:
            https_get(s, "web.localhost")


def test_https_only_route_redirects_plain_http(tls_env):
    r = start_router(tls_env)
    secure = route("secure.localhost", [tls_env["backend"]])
    secure["https_only"] = True
    tls_env["bus"].set_routes([secure, route("open.localhost", [tls_env["backend"]])])
    wait_for(lambda: r.get("open.localhost").status == 200, 10, "routes")
    c = r.client()
    try:
        resp = c.request("GET", "/a/b?x=1", "secure.localhost:8080")
        assert resp.status == 301
        assert resp.headers["location"] == f"https://secure.localhost:{r.tls_port}/a/b?x=1"
        # the connection goes on (keep-alive); a POST keeps its method: 308
        resp = c.request("POST", "/form", "secure.localhost", body=b"k=v")
        assert resp.status == 308
        assert resp.headers["location"] == f"https://secure.localhost:{r.tls_port}/form"
    finally:
        c.close()
    assert tls_env["backend"].hits == 1  # only the probe of open.localhost reached it
    # over HTTPS the route is served
    lca = os.path.join(tls_env["home"], "lca.pem")
    with tls_connect(r.tls_port, "secure.localhost", lca) as s:
        status, seen = https_get(s, "secure.localhost", "/a")
        assert status == 200 and seen["headers"]["x-forwarded-proto"] == "https"
    # a route without the flag is served over HTTP
    assert r.get("open.localhost").status == 200


def test_private_keys_never_in_the_log(tls_env):
    r = start_router(tls_env)
    set_routes(tls_env, r, ["web.localhost"])
    path = os.path.join(tls_env["home"], "tls", "domains", "bad.pem")
    with open(path, "w") as f:
        f.write(open(tls_env["ca"].key).read())  # a key and no certificate
    with tls_env["bus"].lock:
        for c in tls_env["bus"].conns:
            c.sendall(b'{"type": "certs"}\n')
    wait_for(lambda: "were not reloaded" in r.log(), 10, "the refused reload")
    log = r.log()
    assert "PRIVATE KEY" not in log
    key_body = open(tls_env["ca"].key).read().splitlines()[1]
    assert key_body not in log


# ---- with skiffd: the local CA ----------------------------------------------------------------


def test_skiffd_makes_a_local_ca_and_serves_https():
    tls_port = free_port()
    p = Platform(extra_env={"SKIFF_ROUTER_TLS_ADDR": f"127.0.0.1:{tls_port}",
                            "SKIFF_ISOLATION": "process"})
    try:
        p.start()
        tls = os.path.join(p.home, "tls")
        wait_for(lambda: "ca.pem" in p.output(), 10, "the start line")
        assert f"{tls}/ca.pem" in p.output()
        assert os.stat(tls).st_mode & 0o777 == 0o700
        assert os.stat(os.path.join(tls, "ca.key")).st_mode & 0o777 == 0o600
        assert os.stat(os.path.join(tls, "default.pem")).st_mode & 0o777 == 0o600
        ca = os.path.join(tls, "ca.pem")
        # a routed APP.localhost gets a certificate curl trusts through the local CA (503: the
        # app has no instance)
        assert p.api("POST", "/v1/apps", {"name": "routed"})[0] == 201
        out = wait_for(lambda: (lambda o: o if o.returncode == 0 else None)(
            curl("--cacert", ca, "--resolve", f"routed.localhost:{tls_port}:127.0.0.1",
                 "-o", "/dev/null", "-w", "%{http_code}",
                 f"https://routed.localhost:{tls_port}/")), 20, "HTTPS")
        assert out.stdout == "503"
        # a name no route has gets none made for it (the default's *.localhost, which curl
        # refuses): a client cannot have the CA sign whatever names it sends
        out = curl("--cacert", ca, "--resolve", f"nothing.localhost:{tls_port}:127.0.0.1",
                   f"https://nothing.localhost:{tls_port}/")
        assert out.returncode == 60, out
        # and the same CA is kept across a restart
        first = open(ca).read()
        p.stop()
        p.start()
        assert open(ca).read() == first
    finally:
        p.close()


@pytest.mark.parametrize("taken", ["api_port", "api_tls_port"])
def test_a_taken_api_port_stops_the_start_cleanly(taken):
    p = Platform(extra_env={"SKIFF_ISOLATION": "process"})
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", getattr(p, taken)))
        holder.listen(1)
        with pytest.raises(AssertionError):
            p.start(timeout=20)
        p.proc.wait(30)
        assert p.proc.returncode == 1, p.output()
        assert "Address already in use" in p.output(), p.output()
        assert "Assertion" not in p.output() and "Sanitizer" not in p.output(), p.output()
    finally:
        holder.close()
        p.close()


@pytest.mark.parametrize("taken,setting", [("router_port", "SKIFF_ROUTER_ADDR"),
                                           ("router_tls_port", "SKIFF_ROUTER_TLS_ADDR")])
def test_a_taken_router_port_is_named_with_its_setting(taken, setting):
    """skiffd answers while its router cannot listen (it restarts it each second): the router
    says which address is taken and which setting chooses it."""
    p = Platform(extra_env={"SKIFF_ISOLATION": "process"})
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", getattr(p, taken)))  # bound, not listening: as a client's port
        p.start()
        line = wait_for(lambda: [l for l in p.output().splitlines()
                                 if "is in use by another process" in l], 20,
                        "the router to say its port is taken")[0]
        assert f"127.0.0.1:{getattr(p, taken)} " in line and setting in line, line
        other = {"SKIFF_ROUTER_ADDR": "SKIFF_ROUTER_TLS_ADDR",
                 "SKIFF_ROUTER_TLS_ADDR": "SKIFF_ROUTER_ADDR)"}[setting]
        assert other not in line, line
    finally:
        holder.close()
        p.close()


def test_empty_https_addresses_in_the_environment_mean_no_https():
    p = Platform(extra_env={"SKIFF_ROUTER_TLS_ADDR": "", "SKIFF_API_TLS_ADDR": "",
                            "SKIFF_ISOLATION": "process"})
    try:
        p.start()
        status, info = p.api("GET", "/v1/info")
        assert status == 200 and "tls_url" not in info, info
        assert "HTTPS" not in p.output()
        assert not os.path.exists(os.path.join(p.home, "tls", "ca.key"))
    finally:
        p.close()


# ---- domains with their own certificate (skiff create-domain / update-domain) -------------------

PASSWORD = "a long enough password"


class Shell:
    """A user's own HOME, logged in with `skiff login` (no local admin token)."""

    def __init__(self, p):
        self.p = p
        self.home = tempfile.mkdtemp(prefix="skiff-user-")

    def run(self, *args):
        env = dict(os.environ, HOME=self.home, SKIFF_HOME=self.home)
        for k in ("SKIFF_API", "SKIFF_TOKEN"):
            env.pop(k, None)
        from conftest import BIN_DIR
        return subprocess.run([os.path.join(BIN_DIR, "skiff"), *args], env=env,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def platform_ca():
    p = Platform(extra_env={"SKIFF_PREWARM": "0"}).start()
    folder = tempfile.mkdtemp(prefix="skiff-e2e-ca-")
    try:
        yield p, CA(folder)
    finally:
        p.close()
        shutil.rmtree(folder, ignore_errors=True)


def ok(p, *args):
    r = p.cli(*args)
    assert r.returncode == 0, f"skiff {' '.join(args)}: {r.stdout}{r.stderr}"
    return r


def serial_for(p, ca, host):
    with tls_connect(p.router_tls_port, host, ca.pem) as s:
        return s.getpeercert()["serialNumber"]


def test_create_and_update_domain_with_a_certificate(platform_ca):
    p, ca = platform_ca
    cert, key = ca.issue("shop.example.test", ["shop.example.test", "*.shop.example.test"])
    r = ok(p, "create-domain", "shop.example.test", "--cert", cert, "--key", key)
    assert "HTTPS on shop.example.test" in r.stdout
    path = os.path.join(p.home, "tls", "domains", "shop.example.test.pem")
    assert os.stat(path).st_mode & 0o777 == 0o600
    # the API shows what the certificate is, never its key
    status, body = p.api("GET", "/v1/domains")
    d = [d for d in body["domains"] if d["name"] == "shop.example.test"][0]
    assert "CN=shop.example.test" in d["certificate"]["subject"]
    assert d["certificate"]["not_after"]
    assert "PRIVATE" not in json.dumps(body)
    # the router serves it by SNI for hosts under the domain
    first = wait_for(lambda: serial_for(p, ca, "web.shop.example.test"), 10, "the certificate")
    old = tls_connect(p.router_tls_port, "web.shop.example.test", ca.pem)
    assert https_get(old, "web.shop.example.test")[0] == 404  # no route, but served

    cert2, key2 = ca.issue("shop.example.test", ["*.shop.example.test"], days=60)
    ok(p, "update-domain", "shop.example.test", "--cert", cert2, "--key", key2)
    wait_for(lambda: serial_for(p, ca, "web.shop.example.test") != first, 10, "the new one")
    assert https_get(old, "web.shop.example.test")[0] == 404  # the open connection goes on
    old.close()
    # no key in skiffd's or the router's output
    assert "PRIVATE KEY" not in p.output()
    assert open(key2).read().splitlines()[1] not in p.output()


def test_curl_https_to_a_pushed_app(platform_ca):
    """A real app, pushed and running in its container, over HTTPS with the local CA only."""
    p, _ = platform_ca
    from conftest import ROOT
    r = p.cli("push", "tlsweb", "-p", os.path.join(ROOT, "examples", "python-web"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    ca = os.path.join(p.home, "tls", "ca.pem")
    url = f"https://tlsweb.localhost:{p.router_tls_port}/"
    out = wait_for(lambda: (lambda o: o if o.returncode == 0 else None)(
        curl("--cacert", ca, "--resolve", f"tlsweb.localhost:{p.router_tls_port}:127.0.0.1",
             "-D", "-", url)), 30, "the app over HTTPS")
    assert out.stdout.startswith("HTTP/1.1 200") or out.stdout.startswith("HTTP/2 200"), out.stdout
    # HTTP/2 over TLS to the app (ALPN h2), then HTTP/1.1 when asked for
    for flag, status_line in (("--http2", "HTTP/2 200"), ("--http1.1", "HTTP/1.1 200")):
        out = curl(flag, "--cacert", ca, "--resolve",
                   f"tlsweb.localhost:{p.router_tls_port}:127.0.0.1", "-D", "-", url)
        assert out.returncode == 0 and out.stdout.startswith(status_line), out.stdout + out.stderr
    # the same through Python's ssl module, keep-alive: two requests on one connection
    with tls_connect(p.router_tls_port, "tlsweb.localhost", ca) as s:
        assert s.version() == "TLSv1.3"
        assert https_get(s, "tlsweb.localhost")[0] == 200
        assert https_get(s, "tlsweb.localhost")[0] == 200


@pytest.mark.parametrize("case,message", [
    ("mismatch", "does not match"),
    ("expired", "expired"),
    ("names", "cover neither"),
    ("garbage", "not PEM"),
])
def test_update_domain_refuses_bad_pairs(platform_ca, case, message):
    p, ca = platform_ca
    name = f"{case}.example.test"
    ok(p, "create-domain", name)
    cert, key = ca.issue(name, [name], expired=case == "expired")
    if case == "mismatch":
        key = ca.issue("other-" + name, [name])[1]
    if case == "names":
        cert, key = ca.issue("elsewhere.test", ["elsewhere.test"])
    if case == "garbage":
        cert = os.path.join(ca.dir, "garbage.pem")
        with open(cert, "w") as f:
            f.write("hello\n")
    r = p.cli("update-domain", name, "--cert", cert, "--key", key)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(p.home, "tls", "domains", name + ".pem"))
    # nor a domain that does not exist
    r = p.cli("update-domain", "nowhere.test", "--cert", cert, "--key", key)
    assert r.returncode == 1 and "no domain nowhere.test" in r.stderr


def test_only_admins_and_the_orgs_managers_set_a_domains_certificate(platform_ca):
    p, ca = platform_ca
    for user in ("mgr", "dev"):
        ok(p, "create-user", user, PASSWORD)
    ok(p, "create-org", "acme")
    ok(p, "create-space", "web", "-o", "acme")
    ok(p, "set-space-role", "dev", "acme", "web", "SpaceDeveloper")
    ok(p, "set-org-role", "mgr", "acme", "OrgManager")
    ok(p, "create-private-domain", "acme", "acme.test")
    ok(p, "create-domain", "shared.test")
    cert, key = ca.issue("acme.test", ["*.acme.test"])
    scert, skey = ca.issue("shared.test", ["*.shared.test"])
    dev, mgr = Shell(p), Shell(p)
    for shell, user in ((dev, "dev"), (mgr, "mgr")):
        r = shell.run("login", "-a", p.api_url, "-u", user, "-p", PASSWORD)
        assert r.returncode == 0, r.stderr
    # a space developer: neither
    r = dev.run("update-domain", "acme.test", "--cert", cert, "--key", key)
    assert r.returncode == 1, r.stdout
    r = dev.run("update-domain", "shared.test", "--cert", scert, "--key", skey)
    assert r.returncode == 1
    # the org's manager: its private domain, not a shared one
    r = mgr.run("update-domain", "acme.test", "--cert", cert, "--key", key)
    assert r.returncode == 0, r.stderr
    status, _ = p.api("PUT", "/v1/domains/shared.test/certificate",
                      {"cert": open(scert).read(), "key": open(skey).read()},
                      token=json.load(open(os.path.join(mgr.home, ".skiff", "cli.json")))["token"])
    assert status == 403
    r = mgr.run("update-domain", "shared.test", "--cert", scert, "--key", skey)
    assert r.returncode == 1
    assert not os.path.exists(os.path.join(p.home, "tls", "domains", "shared.test.pem"))
    # another org's manager cannot reach acme's domain through their own org
    ok(p, "create-org", "other")
    ok(p, "set-org-role", "dev", "other", "OrgManager")
    status, body = p.api("PUT", "/v1/orgs/other/domains/acme.test/certificate",
                         {"cert": open(cert).read(), "key": open(key).read()})
    assert status == 404, body  # the admin's token, through the wrong org: not that org's
    for s in (dev, mgr):
        shutil.rmtree(s.home, ignore_errors=True)


def test_another_orgs_developer_cannot_read_or_replace_a_domains_certificate(platform_ca):
    p, ca = platform_ca
    ok(p, "create-user", "mallory", PASSWORD)
    ok(p, "create-org", "victim")
    ok(p, "create-org", "evil")
    ok(p, "create-space", "s", "-o", "evil")
    ok(p, "set-space-role", "mallory", "evil", "s", "SpaceDeveloper")
    ok(p, "create-private-domain", "victim", "victim.test")
    cert, key = ca.issue("victim.test", ["*.victim.test"])
    ok(p, "update-domain", "victim.test", "--cert", cert, "--key", key)
    good = wait_for(lambda: serial_for(p, ca, "www.victim.test"), 10, "victim's certificate")
    sh = Shell(p)
    try:
        r = sh.run("login", "-a", p.api_url, "-u", "mallory", "-p", PASSWORD)
        assert r.returncode == 0, r.stderr
        token = json.load(open(os.path.join(sh.home, ".skiff", "cli.json")))["token"]
        secret = open(key).read().splitlines()[1]
        # reading: the domains list names no key (nor does any answer she can get)
        for path in ("/v1/domains", "/v1/orgs/victim/domains", "/v1/orgs/evil/domains",
                     "/v1/domains/victim.test/certificate",
                     "/v1/orgs/victim/domains/victim.test/certificate"):
            status, body = p.api("GET", path, token=token)
            assert secret not in json.dumps(body) and "PRIVATE" not in json.dumps(body), body
        # replacing: through the domain, its org, and her own org
        mine, mykey = ca.issue("victim.test", ["*.victim.test"])
        pair = {"cert": open(mine).read(), "key": open(mykey).read()}
        for path in ("/v1/domains/victim.test/certificate",
                     "/v1/orgs/victim/domains/victim.test/certificate",
                     "/v1/orgs/evil/domains/victim.test/certificate"):
            status, body = p.api("PUT", path, pair, token=token)
            assert status in (403, 404), (path, status, body)
        r = sh.run("update-domain", "victim.test", "--cert", mine, "--key", mykey)
        assert r.returncode == 1, r.stdout
        assert serial_for(p, ca, "www.victim.test") == good
    finally:
        shutil.rmtree(sh.home, ignore_errors=True)


def served_der(port, host):
    """The certificate the router sends for SNI host (DER), whoever issued it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=host) as s:
            return s.getpeercert(binary_form=True)


def test_delete_domain_cert_falls_back_to_the_default_at_once(platform_ca):
    """The pair leaves the store and the router's home; new handshakes for the domain get the
    default certificate, connections already open go on."""
    p, ca = platform_ca
    cert, key = ca.issue("gone.example.test", ["*.gone.example.test"])
    ok(p, "create-domain", "gone.example.test", "--cert", cert, "--key", key)
    path = os.path.join(p.home, "tls", "domains", "gone.example.test.pem")
    wait_for(lambda: serial_for(p, ca, "www.gone.example.test"), 10, "the domain's certificate")
    default = served_der(p.router_tls_port, "nothing-here.invalid")
    assert served_der(p.router_tls_port, "www.gone.example.test") != default
    old = tls_connect(p.router_tls_port, "www.gone.example.test", ca.pem)
    assert https_get(old, "www.gone.example.test")[0] == 404

    r = ok(p, "delete-domain-cert", "gone.example.test")
    assert "default certificate" in r.stdout, r.stdout
    assert not os.path.exists(path)
    wait_for(lambda: served_der(p.router_tls_port, "www.gone.example.test") == default, 10,
             "the default certificate for the domain")
    assert https_get(old, "www.gone.example.test")[0] == 404  # the open connection goes on
    old.close()
    status, body = p.api("GET", "/v1/domains")
    d = [d for d in body["domains"] if d["name"] == "gone.example.test"][0]
    assert not d.get("certificate"), d
    # a second removal says there is none; a domain that does not exist neither
    r = p.cli("delete-domain-cert", "gone.example.test")
    assert r.returncode == 1 and "has no certificate" in r.stderr, r.stderr
    status, _ = p.api("DELETE", "/v1/domains/nowhere.test/certificate")
    assert status == 404
    # nothing of it is left in the router's home
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith("gone.")]


def test_another_orgs_developer_cannot_delete_a_domains_certificate(platform_ca):
    p, ca = platform_ca
    ok(p, "create-user", "eve", PASSWORD)
    ok(p, "create-user", "vmgr", PASSWORD)
    ok(p, "create-org", "target")
    ok(p, "create-org", "attacker")
    ok(p, "create-space", "s", "-o", "attacker")
    ok(p, "set-space-role", "eve", "attacker", "s", "SpaceDeveloper")
    ok(p, "set-org-role", "vmgr", "target", "OrgManager")
    ok(p, "create-private-domain", "target", "target.test")
    ok(p, "create-domain", "sharedgone.test")
    cert, key = ca.issue("target.test", ["*.target.test"])
    scert, skey = ca.issue("sharedgone.test", ["*.sharedgone.test"])
    ok(p, "update-domain", "target.test", "--cert", cert, "--key", key)
    ok(p, "update-domain", "sharedgone.test", "--cert", scert, "--key", skey)
    good = wait_for(lambda: serial_for(p, ca, "www.target.test"), 10, "target's certificate")
    path = os.path.join(p.home, "tls", "domains", "target.test.pem")
    eve, mgr = Shell(p), Shell(p)
    try:
        for shell, user in ((eve, "eve"), (mgr, "vmgr")):
            r = shell.run("login", "-a", p.api_url, "-u", user, "-p", PASSWORD)
            assert r.returncode == 0, r.stderr
        token = json.load(open(os.path.join(eve.home, ".skiff", "cli.json")))["token"]
        for url in ("/v1/domains/target.test/certificate",
                    "/v1/orgs/target/domains/target.test/certificate",
                    "/v1/orgs/attacker/domains/target.test/certificate"):
            status, body = p.api("DELETE", url, token=token)
            assert status in (403, 404), (url, status, body)
        r = eve.run("delete-domain-cert", "target.test")
        assert r.returncode == 1, r.stdout
        assert os.path.exists(path)
        assert serial_for(p, ca, "www.target.test") == good
        # the org's manager: its private domain, not a shared one
        mtoken = json.load(open(os.path.join(mgr.home, ".skiff", "cli.json")))["token"]
        status, _ = p.api("DELETE", "/v1/domains/sharedgone.test/certificate", token=mtoken)
        assert status == 403
        assert os.path.exists(os.path.join(p.home, "tls", "domains", "sharedgone.test.pem"))
        r = mgr.run("delete-domain-cert", "target.test")
        assert r.returncode == 0, r.stderr
        assert not os.path.exists(path)
    finally:
        for sh in (eve, mgr):
            shutil.rmtree(sh.home, ignore_errors=True)


def test_delete_domain_takes_its_certificate_and_sni_falls_back(platform_ca):
    """Deleting a domain removes its pair through delete-domain-cert's path: out of the store
    and the router's home; new handshakes for its names get the default certificate."""
    p, ca = platform_ca
    cert, key = ca.issue("bye.example.test", ["*.bye.example.test"])
    ok(p, "create-domain", "bye.example.test", "--cert", cert, "--key", key)
    path = os.path.join(p.home, "tls", "domains", "bye.example.test.pem")
    wait_for(lambda: serial_for(p, ca, "www.bye.example.test"), 10, "the domain's certificate")
    default = served_der(p.router_tls_port, "nothing-here.invalid")
    assert served_der(p.router_tls_port, "www.bye.example.test") != default
    r = ok(p, "delete-domain", "bye.example.test", "-f")
    assert "Deleted the domain bye.example.test" in r.stdout, r.stdout
    assert not os.path.exists(path)
    wait_for(lambda: served_der(p.router_tls_port, "www.bye.example.test") == default, 10,
             "the default certificate for the deleted domain")
    status, body = p.api("GET", "/v1/domains")
    assert "bye.example.test" not in [d["name"] for d in body["domains"]], body
    status, _ = p.api("DELETE", "/v1/domains/bye.example.test/certificate")
    assert status == 404
    # created again, it has no certificate of its own: the old pair did not survive anywhere
    ok(p, "create-domain", "bye.example.test")
    status, body = p.api("GET", "/v1/domains")
    d = [d for d in body["domains"] if d["name"] == "bye.example.test"][0]
    assert not d.get("certificate"), d
    assert served_der(p.router_tls_port, "www.bye.example.test") == default
    ok(p, "delete-domain", "bye.example.test", "-f")


def test_delete_domain_with_a_route_keeps_domain_and_certificate(platform_ca):
    p, ca = platform_ca
    cert, key = ca.issue("kept.example.test", ["*.kept.example.test"])
    ok(p, "create-domain", "kept.example.test", "--cert", cert, "--key", key)
    good = wait_for(lambda: serial_for(p, ca, "www.kept.example.test"), 10, "its certificate")
    assert p.api("POST", "/v1/apps", {"name": "keptapp", "no_route": True})[0] == 201
    ok(p, "map-route", "keptapp", "www.kept.example.test")
    r = p.cli("delete-domain", "kept.example.test", "-f")
    assert r.returncode == 1 and "www.kept.example.test" in r.stderr, r.stderr
    # refused before anything was removed: the certificate is still served
    assert os.path.exists(os.path.join(p.home, "tls", "domains", "kept.example.test.pem"))
    assert serial_for(p, ca, "www.kept.example.test") == good
    ok(p, "unmap-route", "keptapp", "www.kept.example.test")
    ok(p, "delete-domain", "kept.example.test", "-f")


def test_other_orgs_users_cannot_delete_a_private_domain(platform_ca):
    p, ca = platform_ca
    ok(p, "create-user", "dd-eve", PASSWORD)
    ok(p, "create-user", "dd-evemgr", PASSWORD)
    ok(p, "create-user", "dd-mgr", PASSWORD)
    ok(p, "create-org", "ddtarget")
    ok(p, "create-org", "ddattacker")
    ok(p, "create-space", "s", "-o", "ddattacker")
    ok(p, "set-space-role", "dd-eve", "ddattacker", "s", "SpaceDeveloper")
    ok(p, "set-org-role", "dd-evemgr", "ddattacker", "OrgManager")
    ok(p, "set-org-role", "dd-mgr", "ddtarget", "OrgManager")
    ok(p, "create-private-domain", "ddtarget", "ddtarget.test")
    ok(p, "create-domain", "ddshared.test")
    cert, key = ca.issue("ddtarget.test", ["*.ddtarget.test"])
    ok(p, "update-domain", "ddtarget.test", "--cert", cert, "--key", key)
    good = wait_for(lambda: serial_for(p, ca, "www.ddtarget.test"), 10, "target's certificate")
    path = os.path.join(p.home, "tls", "domains", "ddtarget.test.pem")
    shells = {u: Shell(p) for u in ("dd-eve", "dd-evemgr", "dd-mgr")}
    try:
        tokens = {}
        for user, sh in shells.items():
            r = sh.run("login", "-a", p.api_url, "-u", user, "-p", PASSWORD)
            assert r.returncode == 0, r.stderr
            tokens[user] = json.load(open(os.path.join(sh.home, ".skiff", "cli.json")))["token"]
        # another org's developer and another org's manager: through the domain, its org and
        # their own org; neither the API nor the CLI deletes it
        for user in ("dd-eve", "dd-evemgr"):
            for url in ("/v1/domains/ddtarget.test", "/v1/orgs/ddtarget/domains/ddtarget.test",
                        "/v1/orgs/ddattacker/domains/ddtarget.test"):
                status, body = p.api("DELETE", url, token=tokens[user])
                assert status in (403, 404), (user, url, status, body)
            r = shells[user].run("delete-domain", "ddtarget.test", "-f")
            assert r.returncode == 1, r.stdout
        status, _ = p.api("DELETE", "/v1/orgs/ddtarget/domains/ddtarget.test",
                          token=tokens["dd-eve"])
        assert status == 404  # no role in the org: as if it did not exist (docs/roles.md)
        status, _ = p.api("DELETE", "/v1/orgs/ddattacker/domains/ddtarget.test",
                          token=tokens["dd-evemgr"])
        assert status == 404  # allowed in their own org, which has no such domain
        status, body = p.api("GET", "/v1/domains")
        assert "ddtarget.test" in [d["name"] for d in body["domains"]]
        assert os.path.exists(path) and serial_for(p, ca, "www.ddtarget.test") == good
        # the org's own manager: not a shared domain, nor through the shared path
        status, _ = p.api("DELETE", "/v1/domains/ddshared.test", token=tokens["dd-mgr"])
        assert status == 403
        status, _ = p.api("DELETE", "/v1/domains/ddtarget.test", token=tokens["dd-mgr"])
        assert status == 403
        r = shells["dd-mgr"].run("delete-domain", "ddshared.test", "-f")
        assert r.returncode == 1
        # the admin cannot delete a private domain as if it were shared, nor through another org
        status, _ = p.api("DELETE", "/v1/domains/ddtarget.test")
        assert status == 404
        status, _ = p.api("DELETE", "/v1/orgs/ddattacker/domains/ddtarget.test")
        assert status == 404
        # its manager deletes it, and its certificate with it
        r = shells["dd-mgr"].run("delete-domain", "ddtarget.test", "-f")
        assert r.returncode == 0, r.stderr
        assert not os.path.exists(path)
        status, body = p.api("GET", "/v1/domains")
        names = [d["name"] for d in body["domains"]]
        assert "ddtarget.test" not in names and "ddshared.test" in names
    finally:
        for sh in shells.values():
            shutil.rmtree(sh.home, ignore_errors=True)


def test_domain_certificate_files_move_into_the_store_at_start(tmp_path):
    """A skiffd from before certificates were kept in the store wrote them to
    tls/domains/NAME.pem only: at start they move into the store (SQLite file 0600), and the
    router goes on serving them."""
    import sqlite3
    ca = CA(str(tmp_path / "ca"))
    p = Platform(extra_env={"SKIFF_PREWARM": "0"}).start()
    try:
        ok(p, "create-domain", "legacy.test")
        p.stop()
        cert, key = ca.issue("legacy.test", ["*.legacy.test"])
        install(p.home, "legacy.test", cert, key)
        # and a file for a domain the store does not know stays out
        other, other_key = ca.issue("unknown.test", ["*.unknown.test"])
        install(p.home, "unknown.test", other, other_key)
        p.start()
        assert "moved legacy.test's certificate" in p.output(), p.output()
        db = os.path.join(p.home, "skiff.db")
        assert os.stat(db).st_mode & 0o777 == 0o600
        with sqlite3.connect(db) as c:
            rows = c.execute("SELECT domain, cert, key FROM domain_certs").fetchall()
        assert [r[0] for r in rows] == ["legacy.test"], rows
        assert rows[0][1] == open(cert).read() and rows[0][2] == open(key).read()
        status, body = p.api("GET", "/v1/domains")
        d = [d for d in body["domains"] if d["name"] == "legacy.test"][0]
        assert "CN=legacy.test" in d["certificate"]["subject"], d
        serial = ca_serial(cert)
        wait_for(lambda: serial_for(p, ca, "www.legacy.test").upper() == serial, 10,
                 "the moved certificate served")
    finally:
        p.close()


def ca_serial(cert):
    return openssl("x509", "-in", cert, "-noout", "-serial").strip().split("=")[1].upper()


def test_map_route_https_only_is_stored_and_redirects(platform_ca):
    p, _ = platform_ca
    status, body = p.api("POST", "/v1/apps", {"name": "secureweb"})
    assert status == 201, body
    r = ok(p, "map-route", "secureweb", "secureweb.localhost", "--https-only")
    assert "redirected to HTTPS" in r.stdout
    routes = json.loads(ok(p, "routes", "--json").stdout)["routes"]
    assert [x["https_only"] for x in routes if x["host"] == "secureweb.localhost"] == [True]

    def redirect():
        c = socket.create_connection(("127.0.0.1", p.router_port), timeout=5)
        c.sendall(b"GET /x HTTP/1.1\r\nHost: secureweb.localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
        c.close()
        return data.decode()
    got = wait_for(lambda: (lambda d: d if " 301 " in d.split("\r\n")[0] else None)(redirect()),
                   20, "the redirect")
    assert f"Location: https://secureweb.localhost:{p.router_tls_port}/x\r\n" in got
    # mapping it again without the flag keeps it; the API turns it off
    ok(p, "map-route", "secureweb", "secureweb.localhost")
    routes = json.loads(ok(p, "routes", "--json").stdout)["routes"]
    assert [x["https_only"] for x in routes if x["host"] == "secureweb.localhost"] == [True]
    status, body = p.api("POST", "/v1/routes", {"app": "secureweb", "host": "secureweb.localhost",
                                                "https_only": False})
    assert status == 201 and body["https_only"] is False, body
    status, body = p.api("POST", "/v1/routes", {"app": "secureweb", "host": "secureweb.localhost",
                                                "https_only": "yes"})
    assert status == 422 and "https_only" in body["error"]["message"], body


# ---- the API over HTTPS and the CLI's checks ------------------------------------------------------


class CliShell(Shell):
    """A user's HOME and SKIFF_HOME; ca: a CA file put where the CLI finds a local skiffd's."""

    def __init__(self, p, ca=None):
        super().__init__(p)
        if ca:
            os.makedirs(os.path.join(self.home, "tls"))
            shutil.copy(ca, os.path.join(self.home, "tls", "ca.pem"))


def test_cli_over_https_with_the_local_ca(platform_ca):
    p, _ = platform_ca
    url = f"https://127.0.0.1:{p.api_tls_port}"
    assert f"API:    {url}  (HTTPS)" in p.output()
    # the CLI beside this skiffd: its CA ($SKIFF_HOME/tls/ca.pem) is trusted by itself, and
    # the local admin token fits the HTTPS address too (api.json's tls_url)
    r = p.cli("login", url)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning" not in r.stderr
    r = p.cli("domains")
    assert r.returncode == 0 and "localhost" in r.stdout, r.stdout + r.stderr
    # the API answers the same over HTTPS as over HTTP
    out = curl("--cacert", os.path.join(p.home, "tls", "ca.pem"), f"{url}/v1/info")
    assert out.returncode == 0 and json.loads(out.stdout) == p.info()
    # an upgrade (skiff ssh) over HTTPS is answered as over HTTP (tests/e2e/test_ssh.py runs
    # sessions over it): here, an app that does not exist
    out = curl("--cacert", os.path.join(p.home, "tls", "ca.pem"), "-X", "POST", "-H",
               "Authorization: Bearer " + p.token, "-H", "Connection: Upgrade", "-H",
               "Upgrade: skiff-ssh", "-w", "%{http_code}", "-o", "/dev/null",
               f"{url}/v1/apps/nothing/ssh")
    assert out.stdout == "404", out
    assert p.info()
    r = p.cli("logout")


@pytest.fixture(scope="module")
def api_with_cert():
    """A skiffd whose API serves a certificate of a CA no system trusts (and an expired one)."""
    folder = tempfile.mkdtemp(prefix="skiff-e2e-apica-")
    ca = CA(folder, "API CA")
    good = ca.issue("api-good", ["localhost", "IP:127.0.0.1"])
    old = ca.issue("api-old", ["localhost", "IP:127.0.0.1"], expired=True)
    ps = []
    try:
        for cert, key in (good, old):
            ps.append(Platform(extra_env={"SKIFF_PREWARM": "0"},
                               extra_args=["--tls-cert", cert, "--tls-key", key]).start())
        yield ca, ps[0], ps[1]
    finally:
        for p in ps:
            p.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_cli_trusts_verifies_and_refuses_certificates(api_with_cert):
    ca, good, expired = api_with_cert
    assert "the certificate expired" in expired.output()  # said at start, served anyway
    token = good.token
    url = f"https://127.0.0.1:{good.api_tls_port}"
    # trusted (its CA is known to this CLI): works
    trusting = CliShell(good, ca.pem)
    r = trusting.run("login", url, "--token", token)
    assert r.returncode == 0, r.stderr
    assert trusting.run("domains").returncode == 0
    # untrusted: refused, with what to do
    stranger = CliShell(good)
    r = stranger.run("login", url, "--token", token)
    assert r.returncode == 1
    assert "does not trust" in r.stderr and "--skip-ssl-validation" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(stranger.home, ".skiff", "cli.json"))
    # --skip-ssl-validation works, warns, and is kept with the login
    r = stranger.run("login", url, "--token", token, "--skip-ssl-validation")
    assert r.returncode == 0 and "warning: --skip-ssl-validation" in r.stderr, r.stderr
    saved = json.load(open(os.path.join(stranger.home, ".skiff", "cli.json")))
    assert saved["skip_ssl_validation"] is True
    assert stranger.run("domains").returncode == 0
    # a certificate whose name is not the host's: refused even by a CLI that trusts its CA
    r = trusting.run("login", f"https://localhost.localdomain:{good.api_tls_port}", "--token",
                     token)
    assert r.returncode == 1
    # expired: refused, the reason named
    url_old = f"https://127.0.0.1:{expired.api_tls_port}"
    r = CliShell(expired, ca.pem).run("login", url_old, "--token", expired.token)
    assert r.returncode == 1 and "expired" in r.stderr, r.stderr
    for s in (trusting, stranger):
        shutil.rmtree(s.home, ignore_errors=True)


def test_sighup_reloads_the_apis_certificate():
    """skiffd reads --tls-cert/--tls-key again on SIGHUP: a connection made after it gets the
    new certificate, one made before keeps working; a bad pair keeps the one served."""
    folder = tempfile.mkdtemp(prefix="skiff-e2e-apireload-")
    ca = CA(folder, "Reload CA")
    first = ca.issue("api-first", ["localhost", "IP:127.0.0.1"])
    second = ca.issue("api-second", ["localhost", "IP:127.0.0.1"])
    cert, key = os.path.join(folder, "api.pem"), os.path.join(folder, "api.key")
    shutil.copy(first[0], cert)
    shutil.copy(first[1], key)
    p = Platform(extra_env={"SKIFF_PREWARM": "0"},
                 extra_args=["--tls-cert", cert, "--tls-key", key]).start()

    def served_cn():
        with tls_connect(p.api_tls_port, "localhost", ca.pem) as s:
            return dict(x[0] for x in s.getpeercert()["subject"])["commonName"]

    try:
        assert served_cn() == "api-first"
        before = tls_connect(p.api_tls_port, "localhost", ca.pem)
        shutil.copy(second[0], cert)
        shutil.copy(second[1], key)
        assert served_cn() == "api-first"  # nothing is read until the signal
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: served_cn() == "api-second", 10, "the new certificate to be served")
        assert "the API's certificate was reloaded" in p.output()
        status, body = https_get(before, "localhost", "/v1/info")
        assert status == 200 and body == p.info()
        before.close()
        # a broken pair: said in the log, the one served stays
        with open(key, "w") as f:
            f.write("garbage")
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "was not reloaded" in p.output(), 10, "the refusal in the log")
        assert served_cn() == "api-second"
        assert p.proc.poll() is None
    finally:
        p.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_skiff_api_sets_the_target_and_checks_its_certificate(api_with_cert):
    ca, good, expired = api_with_cert
    url = f"https://127.0.0.1:{good.api_tls_port}"
    # untrusted: refused, nothing saved
    stranger = CliShell(good)
    saved_path = os.path.join(stranger.home, ".skiff", "cli.json")
    r = stranger.run("api", url)
    assert r.returncode == 1 and "does not trust" in r.stderr, r.stderr
    assert not os.path.exists(saved_path)
    # --skip-ssl-validation: saved with the URL, warned about, and login goes on with it
    r = stranger.run("api", url + "/", "--skip-ssl-validation")
    assert r.returncode == 0 and "warning: --skip-ssl-validation" in r.stderr, r.stdout + r.stderr
    assert "Not logged in" in r.stdout
    saved = json.load(open(saved_path))
    assert saved == {"url": url, "router_url": saved["router_url"], "skip_ssl_validation": True}
    r = stranger.run("api")
    assert r.returncode == 0 and url in r.stdout and "not checked" in r.stdout, r.stdout
    r = stranger.run("login", "--token", good.token)
    assert r.returncode == 0, r.stdout + r.stderr
    assert stranger.run("domains").returncode == 0
    # trusted: no warning; the login stays while the API is the same, goes when it changes
    trusting = CliShell(good, ca.pem)
    r = trusting.run("api", url)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stdout + r.stderr
    assert trusting.run("login", "--token", good.token).returncode == 0
    r = trusting.run("api", url)
    assert r.returncode == 0 and "Still logged in" in r.stdout, r.stdout
    assert trusting.run("domains").returncode == 0
    r = trusting.run("api", f"http://127.0.0.1:{expired.api_port}")
    assert r.returncode == 0 and "Not logged in" in r.stdout, r.stdout
    assert "token" not in json.load(open(os.path.join(trusting.home, ".skiff", "cli.json")))
    # an expired certificate, a URL that is not http(s), nothing listening: refused, kept
    r = trusting.run("api", f"https://127.0.0.1:{expired.api_tls_port}")
    assert r.returncode == 1 and "expired" in r.stderr, r.stderr
    r = trusting.run("api", "ftp://127.0.0.1/")
    assert r.returncode != 0 and "http:// or https://" in r.stderr, r.stderr
    r = trusting.run("api", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot reach" in r.stderr, r.stderr
    assert json.load(open(os.path.join(trusting.home, ".skiff", "cli.json")))["url"] == \
        f"http://127.0.0.1:{expired.api_port}"
    r = trusting.run("api", "--unset")
    assert r.returncode == 0 and not os.path.exists(os.path.join(trusting.home, ".skiff",
                                                                 "cli.json"))
    for s in (trusting, stranger):
        shutil.rmtree(s.home, ignore_errors=True)
