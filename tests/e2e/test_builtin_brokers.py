"""The built-in service brokers (skiff-brokers: PostgreSQL and Redis from Debian), used as a
user does: the marketplace, create-service, bind-service, an app in its container reading
VCAP_SERVICES and really using the database over HTTP through its route, service keys,
unbind and delete. And as a hostile tenant would: one binding's credentials against another
instance, logins without a binding, the broker's OSB port without its password."""
import base64
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import psycopg2
import pytest

from conftest import Platform, http_get, out, tar_gz, wait_for

# The app: /pg/... and /redis/... act with the first binding of each label in VCAP_SERVICES.
APP = [("Procfile", b"web: python3 app.py\n"), ("app.py", rb'''
import http.server, json, os, socket, urllib.error, urllib.parse, urllib.request

def creds(label):
    return json.loads(os.environ.get("VCAP_SERVICES", "{}"))[label][0]["credentials"]

def pg(dbname=None):
    import psycopg2
    c = creds("postgresql")
    return psycopg2.connect(host=c["host"], port=c["port"], user=c["username"],
                            password=c["password"], dbname=dbname or c["name"], connect_timeout=5)

def resp(sock, *words):
    out = b"*%d\r\n" % len(words)
    for w in words:
        w = w.encode()
        out += b"$%d\r\n%s\r\n" % (len(w), w)
    sock.sendall(out)
    f = sock.makefile("rb")
    line = f.readline().rstrip(b"\r\n")
    if line[:1] == b"$":
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    return line.decode()

def redis(*words):
    c = creds("redis")
    s = socket.create_connection((c["host"], c["port"]), timeout=5)
    with s:
        auth = resp(s, "AUTH", c["username"], c["password"])
        if auth != "+OK":
            return auth
        return resp(s, *words)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        try:
            if u.path == "/pg/write":
                with pg() as c, c.cursor() as cur:
                    cur.execute("CREATE TABLE IF NOT EXISTS notes (body text)")
                    cur.execute("INSERT INTO notes VALUES (%s)", (q["v"],))
                body = "written"
            elif u.path == "/pg/read":
                with pg() as c, c.cursor() as cur:
                    cur.execute("SELECT body FROM notes ORDER BY body")
                    body = json.dumps([r[0] for r in cur.fetchall()])
            elif u.path == "/pg/other":
                pg(q["db"]).close()
                body = "connected"
            elif u.path == "/redis":
                body = str(redis(*q["cmd"].split(" ")))
            elif u.path == "/events":
                c = creds("events")
                url = c["url"].replace("/topics/%s/" % c["topic"], "/topics/%s/" % q["topic"])
                req = urllib.request.Request(url, data=q["data"].encode(), method="POST",
                                             headers={"Authorization": "Bearer " + c["token"],
                                                      "Content-Type": "text/plain"})
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        body = str(r.status)
                except urllib.error.HTTPError as e:
                    body = str(e.code)
            elif u.path == "/creds":
                body = json.dumps(creds(q["label"]))
            else:
                body = "?"
        except Exception as e:
            body = "error: %s" % e
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass

http.server.HTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
''')]


@pytest.fixture(scope="module")
def plat():
    p = Platform(extra_env={"SKIFF_BUILTIN_BROKERS": "1"}).start()
    try:
        wait_for(lambda: "skiff-builtin" in p.cli("service-brokers").stdout, timeout=30,
                 what="the built-in brokers registered")
        yield p
    finally:
        p.close()


def push_app(p, name):
    status, body = p.api("PUT", f"/v1/apps/{name}", {})
    assert status in (200, 201), body
    status, body = p.api("PUT", f"/v1/apps/{name}/bits", raw=tar_gz(APP),
                         headers={"Content-Type": "application/octet-stream"})
    assert status == 201, body
    status, text = p.api("POST", f"/v1/apps/{name}/stage")
    assert status == 200 and '"ok":true' in text.replace(" ", ""), text
    assert p.api("POST", f"/v1/apps/{name}/start")[0] == 200
    wait_for(lambda: p.api("GET", f"/v1/apps/{name}")[1].get("running") == 1, timeout=60,
             what=f"{name} running")


def get(p, app, path):
    host = p.api("GET", f"/v1/apps/{app}")[1]["routes"][0]
    status, text = http_get(p.router_url + path, host=host, timeout=20)
    assert status == 200, (text, p.cli("logs", app, "--recent").stdout[-6000:].replace("\\n", "\n"))
    return text


def redis_cmd(p, app, cmd):
    return get(p, app, "/redis?cmd=" + urllib.parse.quote(cmd))


def restart(p, app):
    r = p.cli("restart", app)
    assert r.returncode == 0, out(r)


def key_creds(p, inst, key):
    r = p.cli("create-service-key", inst, key)
    assert r.returncode == 0, out(r)
    r = p.cli("service-key", inst, key)
    assert r.returncode == 0, out(r)
    return json.loads(r.stdout)


def pg_connect(c, dbname=None):
    return psycopg2.connect(host=c["host"], port=c["port"], user=c["username"],
                            password=c["password"], dbname=dbname or c["name"], connect_timeout=5)


def superuser(p):
    """The broker's own way in: the superuser on the server's Unix socket (a test's look at
    what the broker left in the server)."""
    with open(os.path.join(p.home, "brokers", "postgresql.password")) as f:
        pw = f.read().strip()
    c = psycopg2.connect(host=os.path.join(p.home, "brokers", "postgresql", "run"),
                         port=broker_config(p)["postgres_port"], user="postgres", password=pw,
                         dbname="postgres")
    c.autocommit = True
    return c


def broker_config(p):
    with open(os.path.join(p.home, "brokers", "config.json")) as f:
        return json.load(f)


def test_marketplace_lists_the_builtin_offerings(plat):
    r = plat.cli("marketplace")
    assert r.returncode == 0, out(r)
    assert "postgresql" in r.stdout and "redis" in r.stdout and "shared" in r.stdout, out(r)
    # the stores start on first use, not with skiffd
    assert not os.path.exists(os.path.join(plat.home, "brokers", "postgresql", "data"))
    # the broker's settings and the stores' secrets are skiffd's only
    for name in ("config.json",):
        assert os.stat(os.path.join(plat.home, "brokers", name)).st_mode & 0o077 == 0


def test_postgresql_create_bind_restart_and_use(plat):
    p = plat
    t0 = time.monotonic()
    r = p.cli("create-service", "postgresql", "shared", "orders")
    assert r.returncode == 0, out(r)
    first = time.monotonic() - t0  # initdb on first use
    assert p.api("GET", "/v1/service_instances/orders")[1]["last_operation"]["state"] == "succeeded"
    r = p.cli("create-service", "postgresql", "shared", "other-db")
    assert r.returncode == 0, out(r)
    push_app(p, "notes")
    r = p.cli("bind-service", "notes", "orders")
    assert r.returncode == 0, out(r)
    restart(p, "notes")
    creds = json.loads(get(p, "notes", "/creds?label=postgresql"))
    assert set(creds) >= {"uri", "jdbcUrl", "host", "port", "name", "username", "password"}
    assert creds["host"] not in ("127.0.0.1", "localhost")  # what the container reaches
    assert creds["uri"].startswith("postgres://")
    assert get(p, "notes", "/pg/write?v=first") == "written"
    assert get(p, "notes", "/pg/write?v=second") == "written"
    assert json.loads(get(p, "notes", "/pg/read")) == ["first", "second"]
    # the row is in the store, not in the instance: a restarted app reads it back
    restart(p, "notes")
    assert json.loads(get(p, "notes", "/pg/read")) == ["first", "second"]

    # hostile: the binding's credentials reach only its own database
    other = p.api("GET", "/v1/service_instances/other-db")[1]["guid"]
    other_db = "si_" + other.replace("-", "_")
    for db in (other_db, "postgres", "template1"):
        text = get(p, "notes", "/pg/other?db=" + db)
        assert text.startswith("error:") and "pg_hba" in text, (db, text)

    # a service key is a binding of its own, usable from outside the app
    kc = key_creds(p, "orders", "ci")
    assert kc["username"] != creds["username"] and kc["password"] != creds["password"]
    with pg_connect(kc) as c, c.cursor() as cur:
        cur.execute("SELECT body FROM notes ORDER BY body")
        assert [r[0] for r in cur.fetchall()] == ["first", "second"]
    c.close()
    with pytest.raises(psycopg2.OperationalError):
        pg_connect(kc, other_db)
    # the superuser never logs in over TCP, whatever the password
    with pytest.raises(psycopg2.OperationalError):
        pg_connect(dict(kc, username="postgres"), "postgres")
    assert p.cli("delete-service-key", "orders", "ci", "-f").returncode == 0
    with pytest.raises(psycopg2.OperationalError):
        pg_connect(kc)

    # unbind: the app's login is gone
    r = p.cli("unbind-service", "notes", "orders")
    assert r.returncode == 0, out(r)
    with pytest.raises(psycopg2.OperationalError):
        pg_connect(creds)
    orders_db = creds["name"]
    assert p.cli("delete-service", "orders", "-f").returncode == 0
    assert p.cli("delete-service", "other-db", "-f").returncode == 0
    assert p.api("GET", "/v1/service_instances/orders")[0] == 404
    # deprovision dropped the databases and every role of the instances
    with superuser(p) as c, c.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname IN (%s, %s)",
                    (orders_db, other_db))
        assert cur.fetchall() == []
        cur.execute("SELECT rolname FROM pg_roles WHERE rolname IN (%s, %s, %s, %s)",
                    (orders_db, other_db, creds["username"], kc["username"]))
        assert cur.fetchall() == []
    c.close()
    print(f"first create (initdb): {first:.2f}s")


def test_postgresql_create_and_bind_are_fast(plat):
    p = plat
    p.cli("create-service", "postgresql", "shared", "warm")  # the server is up after this
    t0 = time.monotonic()
    status, body = p.api("POST", "/v1/service_instances",
                         {"name": "timed", "service": "postgresql", "plan": "shared"})
    assert status in (200, 201), body
    r = p.cli("create-service-key", "timed", "k")
    assert r.returncode == 0, out(r)
    elapsed = time.monotonic() - t0
    print(f"create + bind: {elapsed:.3f}s")
    for name in ("timed", "warm"):
        p.cli("delete-service-key", name, "k", "-f")
        assert p.cli("delete-service", name, "-f").returncode == 0, name


def test_redis_create_bind_and_use(plat):
    p = plat
    assert p.cli("create-service", "redis", "shared", "cache").returncode == 0
    assert p.cli("create-service", "redis", "shared", "cache2").returncode == 0
    push_app(p, "cacher")
    r = p.cli("bind-service", "cacher", "cache")
    assert r.returncode == 0, out(r)
    restart(p, "cacher")
    creds = json.loads(get(p, "cacher", "/creds?label=redis"))
    assert set(creds) >= {"host", "port", "username", "password", "uri", "key_prefix"}
    prefix = creds["key_prefix"]
    assert redis_cmd(p, "cacher", f"SET {prefix}greeting hello") == "+OK"
    assert redis_cmd(p, "cacher", f"GET {prefix}greeting") == "hello"

    # hostile: another instance's keys, keys outside the prefix, commands that see or change
    # the whole server
    kc = key_creds(p, "cache2", "k")
    other = kc["key_prefix"]
    for cmd in (f"GET {other}x", f"SET {other}x 1", "GET greeting", "KEYS *", "SCAN 0",
                "FLUSHALL", "FLUSHDB", "CONFIG GET *", "ACL LIST", "SELECT 1", "INFO",
                "CLIENT LIST", "DBSIZE", "EVAL return 0", f"PUBLISH {other}c x", "MONITOR"):
        text = redis_cmd(p, "cacher", cmd)
        assert text.startswith("-NOPERM") or text.startswith("-ERR"), (cmd, text)
    assert redis_cmd(p, "cacher", f"PUBLISH {prefix}c x") == ":0"

    # no login without a binding: the default user is off
    s = socket.create_connection((kc["host"], kc["port"]), timeout=5)
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    assert s.recv(100).startswith(b"-NOAUTH")
    s.close()

    r = p.cli("unbind-service", "cacher", "cache")
    assert r.returncode == 0, out(r)
    s = socket.create_connection((creds["host"], creds["port"]), timeout=5)
    words = ["AUTH", creds["username"], creds["password"]]
    s.sendall(("*3\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)).encode())
    assert s.recv(100).startswith(b"-WRONGPASS")
    s.close()
    assert p.cli("delete-service-key", "cache2", "k", "-f").returncode == 0
    for name in ("cache", "cache2"):
        assert p.cli("delete-service", name, "-f").returncode == 0


def osb(p, method, path, body=None, auth=True, version="2.17", raw=None):
    cfg = broker_config(p)
    url = f"http://127.0.0.1:{cfg['broker_port']}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if auth:
        user, pw = (cfg["username"], cfg["password"]) if auth is True else auth
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
    if version:
        req.add_header("X-Broker-API-Version", version)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_the_broker_refuses_strangers_and_bad_input(plat):
    p = plat
    assert osb(p, "GET", "/v2/catalog", auth=False)[0] == 401
    assert osb(p, "GET", "/v2/catalog", auth=("skiff-builtin", "guess"))[0] == 401
    assert osb(p, "GET", "/v2/catalog", version=None)[0] == 412
    status, cat = osb(p, "GET", "/v2/catalog")
    assert status == 200
    assert {s["name"] for s in cat["services"]} == {"postgresql", "redis", "events"}
    pg_id = [s for s in cat["services"] if s["name"] == "postgresql"][0]
    body = {"service_id": pg_id["id"], "plan_id": pg_id["plans"][0]["id"]}
    # ids that would be SQL or globs are refused before anything reaches a store
    for bad in ("x;DROP", "a%27b", "a*", "a" * 65):
        status, res = osb(p, "PUT", f"/v2/service_instances/{bad}", body)
        assert status in (400, 404), (bad, status, res)
    assert osb(p, "PUT", "/v2/service_instances/i-1", {"service_id": "nope", "plan_id": "x"})[0] == 400
    assert osb(p, "PUT", "/v2/service_instances/i-1", raw=b"{not json")[0] == 400
    assert osb(p, "PUT", "/v2/service_instances/i-1/service_bindings/b-1", {})[0] == 404
    assert osb(p, "DELETE", "/v2/service_instances/never-made")[0] == 410
    # provisioning is idempotent, and a different plan for a taken id is a conflict
    assert osb(p, "PUT", "/v2/service_instances/i-2?accepts_incomplete=true", body)[0] == 201
    assert osb(p, "PUT", "/v2/service_instances/i-2", body)[0] == 200
    redis_id = [s for s in cat["services"] if s["name"] == "redis"][0]
    other = {"service_id": redis_id["id"], "plan_id": redis_id["plans"][0]["id"]}
    assert osb(p, "PUT", "/v2/service_instances/i-2", other)[0] == 409
    status, b1 = osb(p, "PUT", "/v2/service_instances/i-2/service_bindings/b-2", body)
    assert status == 201 and b1["credentials"]["username"]
    status, b2 = osb(p, "PUT", "/v2/service_instances/i-2/service_bindings/b-2", body)
    assert status == 200 and b2 == b1
    assert osb(p, "GET", "/v2/service_instances/i-2/last_operation")[1]["state"] == "succeeded"
    assert osb(p, "DELETE", "/v2/service_instances/i-2/service_bindings/b-2")[0] == 200
    assert osb(p, "DELETE", "/v2/service_instances/i-2")[0] == 200
    # malformed HTTP and a huge body: answered, and the broker still serves
    cfg = broker_config(p)
    with socket.create_connection(("127.0.0.1", cfg["broker_port"]), timeout=5) as s:
        s.sendall(b"GARBAGE \x00\x01\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    # a stranger's body is never read: refused from the head
    with socket.create_connection(("127.0.0.1", cfg["broker_port"]), timeout=5) as s:
        s.sendall(b"PUT /v2/service_instances/x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n")
        s.sendall(b"x" * (1 << 21))
        assert s.recv(100).startswith(b"HTTP/1.1 401")
    # the platform's own: past 1 MiB is 413, also when the length is not announced
    basic = base64.b64encode(f"{cfg['username']}:{cfg['password']}".encode())
    head = (b"PUT /v2/service_instances/x HTTP/1.1\r\nAuthorization: Basic " + basic +
            b"\r\nX-Broker-API-Version: 2.17\r\n")
    with socket.create_connection(("127.0.0.1", cfg["broker_port"]), timeout=5) as s:
        s.sendall(head + b"Content-Length: 99999999\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", cfg["broker_port"]), timeout=5) as s:
        s.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n200000\r\n" + b"x" * (1 << 21))
        assert s.recv(100).startswith(b"HTTP/1.1 413")
    assert osb(p, "GET", "/v2/catalog")[0] == 200


def test_a_tenant_cannot_delete_take_over_or_shadow_the_builtin_brokers(plat):
    p = plat
    assert p.api("POST", "/v1/users", {"name": "eve", "password": "a long enough password"})[0] == 201
    assert p.api("POST", "/v1/orgs", {"name": "evil"})[0] == 201
    assert p.api("POST", "/v1/orgs/evil/spaces", {"name": "dev"})[0] == 201
    assert p.api("PUT", "/v1/orgs/evil/spaces/dev/users/eve/roles/SpaceDeveloper")[0] == 204
    status, body = p.api("POST", "/v1/auth/token", {"grant_type": "password", "username": "eve",
                                                    "password": "a long enough password"},
                         token=False)
    assert status == 200, body
    eve, S = body["access_token"], "space=evil%2Fdev"
    before = p.api("GET", "/v1/service_brokers")[1]["service_brokers"]
    assert [b["name"] for b in before] == ["skiff-builtin"]
    status, res = p.api("DELETE", f"/v1/service_brokers/skiff-builtin?{S}", token=eve)
    assert status == 403, res
    status, res = p.api("PATCH", f"/v1/service_brokers/skiff-builtin?{S}",
                        {"url": "http://127.0.0.1:1/", "password": "mine"}, token=eve)
    assert status == 403, res
    # a broker of her space by that name, or one claiming to be the platform's own
    broker = {"name": "skiff-builtin", "url": "http://127.0.0.1:1/", "username": "u",
              "password": "p", "space_scoped": True}
    status, res = p.api("POST", f"/v1/service_brokers?{S}", broker, token=eve)
    assert status == 409, res
    status, res = p.api("POST", f"/v1/service_brokers?{S}",
                        dict(broker, name="mine", builtin_owner="me"), token=eve)
    assert status == 400 and "builtin_owner" in res["error"]["message"], res
    assert p.api("GET", "/v1/service_brokers")[1]["service_brokers"] == before
    status, market = p.api("GET", f"/v1/marketplace?{S}", token=eve)
    assert status == 200
    assert {s["service"] for s in market["services"]} == {"postgresql", "redis", "events"}


def post(url, token, data=b"x", method="POST"):
    req = urllib.request.Request(url, data=data if method == "POST" else None, method=method,
                                 headers={"Authorization": "Bearer " + token,
                                          "Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_events_a_topic_as_a_service(plat):
    p = plat
    assert "events" in p.cli("marketplace").stdout
    assert p.cli("create-service", "events", "shared", "news").returncode == 0
    topic = p.api("GET", "/v1/service_instances/news")[1]["guid"]
    push_app(p, "newsroom")
    assert p.cli("bind-service", "newsroom", "news").returncode == 0
    restart(p, "newsroom")
    creds = json.loads(get(p, "newsroom", "/creds?label=events"))
    assert set(creds) >= {"url", "topic", "token"} and creds["topic"] == topic
    assert creds["url"].endswith(f"/v1/topics/{topic}/events")
    # the app publishes to its topic, from its container, with the binding's token
    assert get(p, "newsroom", f"/events?topic={topic}&data=hello") == "202"
    # and to no other topic
    assert get(p, "newsroom", "/events?topic=other&data=x") == "403"
    status, text = p.api("GET", f"/v1/topics/{topic}/events")
    assert status == 200 and "hello" in json.dumps(text), text

    # a service key publishes too, and does nothing else on the API
    kc = key_creds(p, "news", "k")
    assert post(kc["url"], kc["token"], b"from-key")[0] == 202
    api = p.api_url
    for method, path in (("GET", "/v1/apps"), ("GET", f"/v1/topics/{topic}/events"),
                         ("GET", "/v1/service_instances"), ("POST", "/v1/topics/x/events")):
        status, _ = post(api + path, kc["token"], method=method)
        assert status in (401, 403, 404), (method, path, status)
    # a forged token (another binding's id, or a changed signature) is refused
    forged = kc["token"][:-1] + ("1" if kc["token"].endswith("0") else "0")
    assert post(kc["url"], forged)[0] == 401
    inst, bind, mac = kc["token"][len("skiffb_"):].split(".")
    other_bind = bind[:-1] + ("1" if bind.endswith("0") else "0")
    assert post(kc["url"], f"skiffb_{inst}.{other_bind}.{mac}")[0] == 401
    # deleting the key, or unbinding, ends its token at once
    assert p.cli("delete-service-key", "news", "k", "-f").returncode == 0
    assert post(kc["url"], kc["token"])[0] == 401
    assert p.cli("unbind-service", "newsroom", "news").returncode == 0
    assert post(creds["url"].replace(creds["url"].split("/v1/")[0], api), creds["token"])[0] == 401
    assert p.cli("delete-service", "news", "-f").returncode == 0


def test_a_database_outlives_a_restart_of_skiffd():
    p = Platform(extra_env={"SKIFF_BUILTIN_BROKERS": "1"}).start()
    try:
        wait_for(lambda: "skiff-builtin" in p.cli("service-brokers").stdout, timeout=30,
                 what="the built-in brokers registered")
        assert p.cli("create-service", "postgresql", "shared", "kept").returncode == 0
        push_app(p, "keeper")
        assert p.cli("bind-service", "keeper", "kept").returncode == 0
        restart(p, "keeper")
        assert get(p, "keeper", "/pg/write?v=before") == "written"
        p.stop()
        assert p.proc.returncode == 0, p.output()
        # skiff-brokers and the stores stopped with skiffd: nothing runs on this home
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert p.home not in ps, [line for line in ps.splitlines() if p.home in line]
        p.start()
        # the same port, the same credentials: the app reads its row without a new binding
        wait_for(lambda: get(p, "keeper", "/pg/read") == '["before"]', timeout=60,
                 what="the app reading its row after skiffd's restart")
        assert "skiff-builtin" in p.cli("service-brokers").stdout
        assert len([b for b in p.api("GET", "/v1/service_brokers")[1]["service_brokers"]]) == 1
    finally:
        p.close()


def test_the_stores_keep_serving_while_skiffd_is_away():
    p = Platform(extra_env={"SKIFF_BUILTIN_BROKERS": "1"}).start()
    try:
        wait_for(lambda: "skiff-builtin" in p.cli("service-brokers").stdout, timeout=30,
                 what="the built-in brokers registered")
        assert p.cli("create-service", "postgresql", "shared", "steady").returncode == 0
        push_app(p, "steady")
        assert p.cli("bind-service", "steady", "steady").returncode == 0
        restart(p, "steady")
        assert get(p, "steady", "/pg/write?v=one") == "written"
        host = p.api("GET", "/v1/apps/steady")[1]["routes"][0]
        p.stop(sig=signal.SIGUSR2)
        # skiffd is gone (an upgrade): the instance, the router and PostgreSQL keep serving
        status, text = http_get(p.router_url + "/pg/write?v=two", host=host, timeout=20)
        assert (status, text) == (200, "written"), text
        p.start()
        wait_for(lambda: "kept" in p.output(), timeout=30,
                 what="the new skiff-brokers keeping the running stores")
        assert json.loads(get(p, "steady", "/pg/read")) == ["one", "two"]
        assert get(p, "steady", "/pg/write?v=three") == "written"
        p.stop()
        assert p.proc.returncode == 0, p.output()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert p.home not in ps, [line for line in ps.splitlines() if p.home in line]
    finally:
        p.close()


def test_no_builtin_brokers_when_turned_off(tmp_path):
    p = Platform(extra_args=["--no-builtin-brokers"],
                 extra_env={"SKIFF_BUILTIN_BROKERS": "1"}).start()
    try:
        time.sleep(0)  # the registration would happen at start: nothing to wait for
        assert p.api("GET", "/v1/service_brokers")[1]["service_brokers"] == []
        assert not os.path.exists(os.path.join(p.home, "brokers"))
    finally:
        p.close()
