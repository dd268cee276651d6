"""Services: user-provided service instances, bindings and VCAP_SERVICES as an app's instances
see it; who may see which credentials; service brokers over the Open Service Broker API (a
test broker, tests/e2e/osb_broker.py)."""
import base64
import json
import os
import sqlite3
import urllib.parse

import pytest

from conftest import Platform, http_get, out, tar_gz, wait_for, write

PASSWORD = "a long enough password"

# Serves its VCAP_SERVICES at /, so a test reads what an instance really got.
ENV_APP = [("Procfile", b"web: python3 app.py\n"), ("app.py", b"""
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("VCAP_SERVICES", "<unset>").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
""")]


def push_env_app(p, name, token=True, space=None):
    """Creates, uploads, stages and starts the env app (through the API); waits for it to run."""
    q = "?space=" + urllib.parse.quote(space, safe="") if space else ""
    status, body = p.api("PUT", f"/v1/apps/{name}{q}", {}, token=token)
    assert status in (200, 201), body
    status, body = p.api("PUT", f"/v1/apps/{name}/bits{q}", raw=tar_gz(ENV_APP), token=token,
                         headers={"Content-Type": "application/octet-stream"})
    assert status == 201, body
    status, text = p.api("POST", f"/v1/apps/{name}/stage{q}", token=token)
    assert status == 200 and '"ok":true' in text.replace(" ", ""), text
    assert p.api("POST", f"/v1/apps/{name}/start{q}", token=token)[0] == 200
    wait_for(lambda: p.api("GET", f"/v1/apps/{name}{q}", token=token)[1].get("running") == 1,
             timeout=60, what=f"{name} running")
    return p.api("GET", f"/v1/apps/{name}{q}", token=token)[1]


def seen_by_instance(p, app):
    """The VCAP_SERVICES the app's running instance has, parsed."""
    host = p.api("GET", f"/v1/apps/{app}")[1]["routes"][0]
    status, text = http_get(p.router_url + "/", host=host)
    assert status == 200, text
    return json.loads(text)


def restart(p, app):
    r = p.cli("restart", app)
    assert r.returncode == 0, out(r)


@pytest.fixture(scope="module")
def plat():
    p = Platform().start()
    try:
        yield p
    finally:
        p.close()


def test_user_provided_service_reaches_the_instance_after_restart(plat):
    p = plat
    push_env_app(p, "envapp")
    creds = {"uri": "postgres://u:s3cret-pw@db.example:5432/shop", "port": 5432}
    r = p.cli("cups", "shop-db", "-p", json.dumps(creds), "-t", "db, postgres",
              "-l", "syslog-tls://logs.example:6514")
    assert r.returncode == 0 and "OK" in r.stdout, out(r)
    r = p.cli("bind-service", "envapp", "shop-db", "--binding-name", "main-db")
    assert r.returncode == 0, out(r)
    assert "TIP: Use 'skiff restage envapp'" in r.stdout, out(r)
    # as in Cloud Foundry, the running instance learns nothing until it restarts
    assert seen_by_instance(p, "envapp") == {}
    restart(p, "envapp")
    vcap = seen_by_instance(p, "envapp")
    inst = p.api("GET", "/v1/service_instances/shop-db")[1]
    bindings = p.api("GET", "/v1/apps/envapp/service_bindings")[1]["service_bindings"]
    assert len(bindings) == 1
    assert vcap == {"user-provided": [{
        "label": "user-provided",
        "name": "main-db",
        "tags": ["db", "postgres"],
        "instance_guid": inst["guid"],
        "instance_name": "shop-db",
        "binding_guid": bindings[0]["guid"],
        "binding_name": "main-db",
        "credentials": creds,
        "syslog_drain_url": "syslog-tls://logs.example:6514",
        "volume_mounts": [],
    }]}
    # what `skiff env` shows a developer is what the instance got
    status, env = p.api("GET", "/v1/apps/envapp/env")
    assert status == 200 and env["system"]["VCAP_SERVICES"] == vcap

    # listings name the binding, never the credentials
    r = p.cli("services")
    assert r.returncode == 0 and "shop-db" in r.stdout and "envapp" in r.stdout, out(r)
    assert "s3cret-pw" not in r.stdout
    r = p.cli("service", "shop-db")
    assert r.returncode == 0 and "envapp" in r.stdout and "user-provided" in r.stdout, out(r)
    assert "s3cret-pw" not in r.stdout
    listed = p.api("GET", "/v1/service_instances")[1]
    assert "s3cret-pw" not in json.dumps(listed)
    assert p.api("GET", "/v1/service_instances/shop-db/credentials")[1] == {"credentials": creds}

    # uups: new credentials, seen after the next restart
    r = p.cli("uups", "shop-db", "-p", '{"uri": "postgres://new"}')
    assert r.returncode == 0 and "TIP" in r.stdout, out(r)
    restart(p, "envapp")
    assert seen_by_instance(p, "envapp")["user-provided"][0]["credentials"] == {"uri": "postgres://new"}

    # a bound instance is not deleted
    r = p.cli("delete-service", "shop-db", "-f")
    assert r.returncode == 1 and "unbind" in r.stderr and "envapp" in r.stderr, out(r)
    r = p.cli("unbind-service", "envapp", "shop-db")
    assert r.returncode == 0 and "TIP" in r.stdout, out(r)
    r = p.cli("unbind-service", "envapp", "shop-db")
    assert r.returncode == 0 and "did not exist" in r.stdout, out(r)
    restart(p, "envapp")
    assert seen_by_instance(p, "envapp") == {}
    r = p.cli("delete-service", "shop-db", "-f")
    assert r.returncode == 0, out(r)
    assert p.api("GET", "/v1/service_instances/shop-db")[0] == 404


def test_two_bindings_and_a_deleted_app(plat):
    p = plat
    push_env_app(p, "twoapp")
    for name in ("cache", "queue"):
        assert p.cli("cups", name, "-p", json.dumps({"host": name})).returncode == 0
        r = p.cli("bs", "twoapp", name)
        assert r.returncode == 0, out(r)
    r = p.cli("bind-service", "twoapp", "cache")
    assert r.returncode == 0 and "already bound" in r.stdout, out(r)
    restart(p, "twoapp")
    ups = seen_by_instance(p, "twoapp")["user-provided"]
    assert [(e["name"], e["binding_name"], e["credentials"]) for e in ups] == \
        [("cache", None, {"host": "cache"}), ("queue", None, {"host": "queue"})]
    # deleting the app deletes its bindings: the instances can go then
    assert p.cli("delete", "twoapp", "-f").returncode == 0
    for name in ("cache", "queue"):
        r = p.cli("delete-service", name, "-f")
        assert r.returncode == 0, out(r)


def test_bad_input_is_refused_clearly(plat, tmp_path):
    p = plat
    r = p.cli("cups", "x1", "-p", "not json")
    assert r.returncode == 2 and "JSON object" in r.stderr, out(r)
    r = p.cli("cups", "x1", "-p", "[1, 2]")
    assert r.returncode == 2 and "JSON object" in r.stderr, out(r)
    path = write(tmp_path, "creds.json", '{"from": "file"}')
    r = p.cli("cups", "fromfile", "-p", path)
    assert r.returncode == 0, out(r)
    assert p.api("GET", "/v1/service_instances/fromfile/credentials")[1] == \
        {"credentials": {"from": "file"}}
    r = p.cli("cups", "fromfile", "-p", "{}")
    assert r.returncode == 1 and "exists" in r.stderr, out(r)
    r = p.cli("cups", "bad/name", "-p", "{}")
    assert r.returncode == 1 and "name" in r.stderr, out(r)
    r = p.cli("cups", "drain", "-l", "ftp://x")
    assert r.returncode == 1 and "syslog" in r.stderr, out(r)
    r = p.cli("cups", "route", "-r", "http://plain")
    assert r.returncode == 1 and "https://" in r.stderr, out(r)
    for body in ({"name": "y", "user_provided": True, "credentials": "text"},
                 {"name": "y", "user_provided": True, "tags": "db"},
                 {"name": "y", "user_provided": True, "bogus": 1},
                 {"name": "y", "user_provided": True, "plan": "small"},
                 {"user_provided": True}):
        status, res = p.api("POST", "/v1/service_instances", body)
        assert 400 <= status < 500 and res["error"]["message"], (body, status, res)
    status, res = p.api("POST", "/v1/service_instances", raw=b"{not json",
                        headers={"Content-Type": "application/json"})
    assert status == 400
    push_env_app(p, "badapp")
    r = p.cli("bind-service", "badapp", "nothing-here")
    assert r.returncode == 1 and "no service instance named" in r.stderr, out(r)
    r = p.cli("bind-service", "no-such-app", "fromfile")
    assert r.returncode == 1 and "no app named" in r.stderr, out(r)
    r = p.cli("bind-service", "badapp", "fromfile", "-c", '{"x": 1}')
    assert r.returncode == 1 and "not supported for a user-provided" in r.stderr, out(r)
    r = p.cli("unbind-service", "badapp", "nothing-here")
    assert r.returncode == 1 and "no service instance named" in r.stderr, out(r)
    # the daemon is still there and well
    assert p.api("GET", "/v1/service_instances")[0] == 200


def test_credentials_are_sealed_at_rest_and_never_logged(plat):
    p = plat
    secret = "sealed-secret-7731"
    assert p.cli("cups", "sealed", "-p", json.dumps({"password": secret})).returncode == 0
    assert p.cli("uups", "sealed", "-t", "x").returncode == 0
    db = sqlite3.connect(os.path.join(p.home, "skiff.db"))
    try:
        rows = db.execute("select * from documents").fetchall()
    finally:
        db.close()
    assert any("sealed" in str(r) for r in rows)
    assert not any(secret in str(r) for r in rows)
    assert secret not in p.output()
    status, audit = p.api("GET", "/v1/audit_events")
    assert status == 200 and secret not in json.dumps(audit)
    assert os.stat(os.path.join(p.home, "services.key")).st_mode & 0o077 == 0


# ---- tenancy -------------------------------------------------------------------------------


def call(p, token, method, path, body=None):
    return p.api(method, path, body=body, token=token)


@pytest.fixture(scope="module")
def tenants():
    p = Platform().start()
    admin = p.token
    try:
        for user in ("alice", "bob", "aud", "mgr"):
            assert call(p, admin, "POST", "/v1/users", {"name": user, "password": PASSWORD})[0] == 201
        for org in ("a", "b"):
            assert call(p, admin, "POST", "/v1/orgs", {"name": org})[0] == 201
            assert call(p, admin, "POST", f"/v1/orgs/{org}/spaces", {"name": "dev"})[0] == 201
        for user, space, role in (("alice", "a", "SpaceDeveloper"), ("bob", "b", "SpaceDeveloper"),
                                  ("aud", "a", "SpaceAuditor"), ("mgr", "a", "SpaceManager")):
            assert call(p, admin, "PUT",
                        f"/v1/orgs/{space}/spaces/dev/users/{user}/roles/{role}")[0] == 204
        tokens = {}
        for user in ("alice", "bob", "aud", "mgr"):
            status, body = call(p, None, "POST", "/v1/auth/token",
                                {"grant_type": "password", "username": user, "password": PASSWORD})
            assert status == 200, body
            tokens[user] = body["access_token"]
        A, B = "space=a%2Fdev", "space=b%2Fdev"
        status, inst = call(p, tokens["alice"], "POST", f"/v1/service_instances?{A}",
                            {"name": "vault", "user_provided": True,
                             "credentials": {"key": "alice-only-secret"}})
        assert status == 201, inst
        status, app = call(p, tokens["alice"], "PUT", f"/v1/apps/web?{A}", {"no_route": True})
        assert status in (200, 201), app
        status, bapp = call(p, tokens["bob"], "PUT", f"/v1/apps/web?{B}", {"no_route": True})
        assert status in (200, 201), bapp
        status, res = call(p, tokens["alice"], "POST", f"/v1/apps/web/service_bindings?{A}",
                           {"service_instance": "vault"})
        assert status == 201, res
        yield {"p": p, "admin": admin, "tokens": tokens, "inst": inst, "A": A, "B": B,
               "app": app, "bapp": bapp}
    finally:
        p.close()


def test_another_space_cannot_see_bind_or_read(tenants):
    p, bob, A, B = tenants["p"], tenants["tokens"]["bob"], tenants["A"], tenants["B"]
    guid = tenants["inst"]["guid"]
    status, listed = call(p, bob, "GET", f"/v1/service_instances?{B}")
    assert status == 200 and listed["service_instances"] == []
    for method, path, body in [
            ("GET", f"/v1/service_instances?{A}", None),
            ("GET", f"/v1/service_instances/vault?{A}", None),
            ("GET", f"/v1/service_instances/vault/credentials?{A}", None),
            ("GET", f"/v1/service_instances/{guid}?{B}", None),
            ("GET", f"/v1/service_instances/{guid}/credentials?{B}", None),
            ("PATCH", f"/v1/service_instances/vault?{A}", {"credentials": {"key": "owned"}}),
            ("DELETE", f"/v1/service_instances/vault?{A}", None),
            ("GET", f"/v1/apps/web/env?{A}", None),
            ("GET", f"/v1/apps/web/service_bindings?{A}", None),
            ("DELETE", f"/v1/apps/web/service_bindings/vault?{A}", None)]:
        status, res = call(p, bob, method, path, body)
        assert status == 404, (method, path, status, res)
        assert "alice-only-secret" not in json.dumps(res)
    # his own app cannot be bound to her instance, by name or by guid
    for ref in ("vault", guid):
        status, res = call(p, bob, "POST", f"/v1/apps/web/service_bindings?{B}",
                           {"service_instance": ref})
        assert status == 404, res
    # nor hers bound by him through her app's guid
    status, res = call(p, bob, "POST", f"/v1/apps/{tenants['app']['guid']}/service_bindings",
                       {"service_instance": guid})
    assert status == 404, res
    assert call(p, bob, "GET", f"/v1/apps/web/env?{B}")[1]["system"]["VCAP_SERVICES"] == {}


def test_auditor_and_manager_see_the_instance_not_its_credentials(tenants):
    p, A = tenants["p"], tenants["A"]
    for who in ("aud", "mgr"):
        token = tenants["tokens"][who]
        status, listed = call(p, token, "GET", f"/v1/service_instances?{A}")
        assert status == 200 and [i["name"] for i in listed["service_instances"]] == ["vault"]
        assert listed["service_instances"][0]["bound_apps"] == ["web"]
        assert "alice-only-secret" not in json.dumps(listed)
        for path in (f"/v1/service_instances/vault/credentials?{A}", f"/v1/apps/web/env?{A}"):
            status, res = call(p, token, "GET", path)
            assert status == 403, (who, path, status, res)
        status, res = call(p, token, "GET", f"/v1/apps/web/service_bindings?{A}")
        assert status == 200 and "alice-only-secret" not in json.dumps(res)
        for method, path, body in [
                ("POST", f"/v1/service_instances?{A}", {"name": "z", "user_provided": True}),
                ("PATCH", f"/v1/service_instances/vault?{A}", {"tags": ["x"]}),
                ("DELETE", f"/v1/apps/web/service_bindings/vault?{A}", None)]:
            status, res = call(p, token, method, path, body)
            assert status == 403, (who, method, path, status, res)
    status, res = call(p, tenants["tokens"]["alice"], "GET",
                       f"/v1/service_instances/vault/credentials?{A}")
    assert status == 200 and res["credentials"] == {"key": "alice-only-secret"}


def test_manifest_binds_services_before_the_first_start(plat, tmp_path):
    p = plat
    assert p.cli("cups", "mf-db", "-p", '{"uri": "db://one"}').returncode == 0
    assert p.cli("cups", "mf-cache", "-p", '{"host": "c"}').returncode == 0
    app = tmp_path / "app"
    app.mkdir()
    for name, content in ENV_APP:
        (app / name).write_bytes(content)
    manifest = write(tmp_path, "manifest.yml", f"""
        applications:
        - name: mfapp
          path: {app}
          services:
          - mf-db
          - name: mf-cache
            binding_name: cache
            parameters: {{ttl: 60}}
        """)
    # parameters are the broker's: a user-provided instance takes none, and says so
    r = p.cli("push", "-f", manifest, timeout=300)
    assert r.returncode == 1 and "not supported for a user-provided" in r.stderr, out(r)
    manifest = write(tmp_path, "manifest.yml", f"""
        applications:
        - name: mfapp
          path: {app}
          services:
          - mf-db
          - name: mf-cache
            binding_name: cache
        """)
    r = p.cli("push", "-f", manifest, timeout=300)
    assert r.returncode == 0, out(r)
    vcap = seen_by_instance(p, "mfapp")["user-provided"]
    assert [(e["instance_name"], e["name"]) for e in vcap] == [("mf-db", "mf-db"),
                                                               ("mf-cache", "cache")]
    # pushing again leaves the bindings as they are
    r = p.cli("push", "-f", manifest, timeout=300)
    assert r.returncode == 0 and "Bound service" not in r.stdout, out(r)
    assert len(p.api("GET", "/v1/apps/mfapp/service_bindings")[1]["service_bindings"]) == 2


# ---- service brokers -----------------------------------------------------------------------

from osb_broker import OsbBroker, SERVICE_ID  # noqa: E402


@pytest.fixture(scope="module")
def brokered():
    broker = OsbBroker(user="bu", password="broker-secret-pw").start()
    p = Platform(extra_env={"SKIFF_BROKER_TIMEOUT_S": "2"}).start()
    try:
        r = p.cli("create-service-broker", "test-broker", "bu", "broker-secret-pw", broker.url)
        assert r.returncode == 0, out(r)
        yield p, broker
    finally:
        p.close()
        broker.stop()


def instance(p, name):
    return p.api("GET", f"/v1/service_instances/{name}")[1]


def test_broker_registration_catalog_and_marketplace(brokered):
    p, broker = brokered
    (catalog_call,) = broker.calls("GET", "/v2/catalog")[:1]
    assert catalog_call["headers"]["X-Broker-API-Version"] == "2.17"
    r = p.cli("service-brokers")
    assert r.returncode == 0 and "test-broker" in r.stdout and "testdb" in r.stdout, out(r)
    listed = p.api("GET", "/v1/service_brokers")[1]
    assert "broker-secret-pw" not in json.dumps(listed)
    assert listed["service_brokers"][0]["username"] == "bu"
    r = p.cli("marketplace")
    assert r.returncode == 0 and "testdb" in r.stdout and "large*" in r.stdout, out(r)
    r = p.cli("marketplace", "-e", "testdb")
    assert r.returncode == 0 and "the async plan" in r.stdout and "paid" in r.stdout, out(r)
    r = p.cli("marketplace", "-e", "nosuch")
    assert r.returncode == 1 and "no service offering named nosuch" in r.stderr, out(r)
    # the password is sealed at rest too
    db = sqlite3.connect(os.path.join(p.home, "skiff.db"))
    try:
        assert not any("broker-secret-pw" in str(row) for row in db.execute("select * from documents"))
    finally:
        db.close()


def test_a_broken_catalog_is_refused_naming_the_field(brokered):
    p, broker = brokered
    broker.broken_catalog = True
    try:
        r = p.cli("create-service-broker", "broken", "bu", "broker-secret-pw", broker.url)
        assert r.returncode == 1, out(r)
        assert "services[0].plans[1].id: missing" in r.stderr, out(r)
        r = p.cli("update-service-broker", "test-broker", "bu", "broker-secret-pw", broker.url)
        assert r.returncode == 1 and "plans[1].id" in r.stderr, out(r)
    finally:
        broker.broken_catalog = False
    assert "broken" not in p.cli("service-brokers").stdout
    r = p.cli("create-service-broker", "wrongpw", "bu", "nope", broker.url)
    assert r.returncode == 1 and "HTTP 401" in r.stderr, out(r)
    r = p.cli("create-service-broker", "nowhere", "bu", "x", "http://127.0.0.1:1")
    assert r.returncode == 1 and "cannot reach" in r.stderr, out(r)
    r = p.cli("create-service-broker", "test-broker", "bu", "broker-secret-pw", broker.url)
    assert r.returncode == 1 and "exists already" in r.stderr, out(r)


def test_the_platforms_own_addresses_are_not_brokers(brokered):
    p, broker = brokered
    api_port = p.api_port
    for url in (p.api_url, f"http://localhost:{api_port}", f"http://127.0.0.2:{api_port}/x",
                f"http://127.0.0.1:{p.router_admin_port}", p.router_url, "ftp://x",
                f"http://bu:pw@127.0.0.1:{api_port}"):
        r = p.cli("create-service-broker", "ssrf", "u", "p", url)
        assert r.returncode == 1, (url, out(r))
        assert "own addresses" in r.stderr or "http://" in r.stderr or "URL" in r.stderr, out(r)
    assert "ssrf" not in p.cli("service-brokers").stdout


def test_sync_create_bind_and_vcap_services(brokered):
    p, broker = brokered
    r = p.cli("create-service", "testdb", "small", "orders", "-c", '{"size": 3}', "-t", "mine")
    assert r.returncode == 0 and "OK" in r.stdout, out(r)
    inst = instance(p, "orders")
    assert inst["last_operation"]["state"] == "succeeded" and inst["plan_name"] == "small"
    assert inst["dashboard_url"] == f"https://dash.example/{inst['guid']}"
    (put,) = [c for c in broker.calls("PUT", f"/v2/service_instances/{inst['guid']}")]
    assert put["query"]["accepts_incomplete"] == "true"
    assert put["body"]["service_id"] == SERVICE_ID and put["body"]["plan_id"] == "plan-small"
    assert put["body"]["parameters"] == {"size": 3}
    assert put["body"]["context"]["platform"] == "cloudfoundry"
    assert put["body"]["context"]["instance_name"] == "orders"
    assert len(put["headers"]["X-Broker-API-Request-Identity"]) == 36
    platform_name, identity = put["headers"]["X-Broker-API-Originating-Identity"].split(" ")
    assert platform_name == "cloudfoundry" and "user_id" in json.loads(base64.b64decode(identity))

    push_env_app(p, "shop")
    r = p.cli("bind-service", "shop", "orders", "-c", '{"role": "rw"}')
    assert r.returncode == 0 and "TIP" in r.stdout, out(r)
    binding = p.api("GET", "/v1/apps/shop/service_bindings")[1]["service_bindings"][0]
    (bput,) = broker.calls("PUT", f"/service_bindings/{binding['guid']}")
    assert bput["body"]["bind_resource"]["app_guid"] == p.api("GET", "/v1/apps/shop")[1]["guid"]
    assert bput["body"]["parameters"] == {"role": "rw"}
    restart(p, "shop")
    vcap = seen_by_instance(p, "shop")
    assert vcap == {"testdb": [{
        "label": "testdb", "provider": None, "plan": "small", "name": "orders",
        "tags": ["sql", "test", "mine"], "instance_guid": inst["guid"], "instance_name": "orders",
        "binding_guid": binding["guid"], "binding_name": None,
        "credentials": broker.bindings[binding["guid"]]["credentials"],
        "syslog_drain_url": None, "volume_mounts": []}]}
    assert broker.bindings[binding["guid"]]["credentials"]["password"] not in p.output()

    # a plan change goes to the broker with the previous values
    r = p.cli("update-service", "orders", "-p", "large", "-c", '{"size": 11}')
    assert r.returncode == 1 and "parameters.size must be at most 10" in r.stderr, out(r)
    assert instance(p, "orders")["last_operation"]["state"] == "succeeded"
    r = p.cli("update-service", "orders", "-p", "large")
    assert r.returncode == 0, out(r)
    (patch,) = broker.calls("PATCH", inst["guid"])
    assert patch["body"]["plan_id"] == "plan-large"
    assert patch["body"]["previous_values"]["plan_id"] == "plan-small"
    assert instance(p, "orders")["plan_name"] == "large"

    r = p.cli("delete-service", "orders", "-f")
    assert r.returncode == 1 and "unbind" in r.stderr, out(r)
    r = p.cli("unbind-service", "shop", "orders")
    assert r.returncode == 0, out(r)
    assert binding["guid"] not in broker.bindings
    (bdel,) = broker.calls("DELETE", f"/service_bindings/{binding['guid']}")
    assert bdel["query"]["service_id"] == SERVICE_ID and bdel["query"]["plan_id"] == "plan-large"
    r = p.cli("delete-service", "orders", "-f")
    assert r.returncode == 0, out(r)
    assert inst["guid"] not in broker.instances
    assert p.api("GET", "/v1/service_instances/orders")[0] == 404


def test_async_provision_polls_last_operation(brokered):
    p, broker = brokered
    r = p.cli("create-service", "testdb", "async", "slowdb")
    assert r.returncode == 0 and "Create in progress" in r.stdout, out(r)
    assert instance(p, "slowdb")["last_operation"]["state"] == "in progress"
    wait_for(lambda: instance(p, "slowdb")["last_operation"]["state"] == "succeeded",
             timeout=20, what="the async create to succeed")
    guid = instance(p, "slowdb")["guid"]
    polls = broker.calls("GET", f"/v2/service_instances/{guid}/last_operation")
    assert len(polls) == 3
    assert all(c["query"]["operation"] == f"provision-{guid[:8]}" for c in polls)
    assert all(c["query"]["service_id"] == SERVICE_ID for c in polls)
    # Retry-After: 1 was honoured between polls
    gaps = [b["at"] - a["at"] for a, b in zip(polls, polls[1:])]
    assert all(g >= 0.9 for g in gaps), gaps
    # an asynchronous deprovision: 202, polled until the broker says 410 Gone
    r = p.cli("delete-service", "slowdb", "-f", "--wait")
    assert r.returncode == 0, out(r)
    assert p.api("GET", "/v1/service_instances/slowdb")[0] == 404
    assert guid not in broker.instances
    (dele,) = broker.calls("DELETE", f"/v2/service_instances/{guid}")
    assert dele["query"]["accepts_incomplete"] == "true"
    assert broker.calls("GET", f"/v2/service_instances/{guid}/last_operation")[-1]["query"][
        "operation"] == f"deprovision-{guid[:8]}"
    # --wait waits for the end, and an async binding gets its credentials with a GET
    r = p.cli("create-service", "testdb", "async-bind", "bindlater", "--wait")
    assert r.returncode == 0 and "in progress" not in r.stdout, out(r)
    push_env_app(p, "asyncapp")
    r = p.cli("bind-service", "asyncapp", "bindlater", "--wait")
    assert r.returncode == 0, out(r)
    (b,) = p.api("GET", "/v1/apps/asyncapp/service_bindings")[1]["service_bindings"]
    assert b["last_operation"]["state"] == "succeeded"
    assert broker.calls("GET", f"/service_bindings/{b['guid']}")
    env = p.api("GET", "/v1/apps/asyncapp/env")[1]["system"]["VCAP_SERVICES"]
    assert env["testdb"][0]["credentials"]["uri"] == f"testdb://{b['guid']}"


def test_failures_are_clear_and_orphans_are_cleaned_up(brokered):
    p, broker = brokered
    # a 500 on provision: nothing is recorded, and the broker is asked to delete (orphan mitigation)
    r = p.cli("create-service", "testdb", "fail500", "boom")
    assert r.returncode == 1 and "HTTP 500" in r.stderr and "failed on purpose" in r.stderr, out(r)
    assert p.api("GET", "/v1/service_instances/boom")[0] == 404
    wait_for(lambda: not broker.instances.get(_guid_of_put(broker, "plan-fail500")),
             timeout=10, what="orphan mitigation of the 500")
    # orphan mitigation is the platform's own doing: no user's identity on it
    (om,) = broker.calls("DELETE", _guid_of_put(broker, "plan-fail500"))
    assert "X-Broker-API-Originating-Identity" not in om["headers"]
    assert om["query"]["service_id"] == SERVICE_ID and om["query"]["plan_id"] == "plan-fail500"
    # a malformed 201: the same
    r = p.cli("create-service", "testdb", "bad201", "bad")
    assert r.returncode == 1, out(r)
    wait_for(lambda: not broker.instances.get(_guid_of_put(broker, "plan-bad201")),
             timeout=10, what="orphan mitigation of the malformed 201")
    # a timeout (the platform waits 2 s here): the same
    r = p.cli("create-service", "testdb", "slow", "late")
    assert r.returncode == 1 and "did not answer" in r.stderr, out(r)
    wait_for(lambda: broker.calls("DELETE", _guid_of_put(broker, "plan-slow") or "none") and
             not broker.instances.get(_guid_of_put(broker, "plan-slow")),
             timeout=20, what="orphan mitigation of the timed-out provision")
    # an async provision that fails: the instance says why, and the broker is told to delete
    r = p.cli("create-service", "testdb", "async-fail", "sad", "--wait")
    assert r.returncode == 1 and "async provision failed" in r.stderr, out(r)
    inst = instance(p, "sad")
    assert inst["last_operation"] == {"type": "create", "state": "failed",
                                      "description": "the test broker's async provision failed"}
    wait_for(lambda: inst["guid"] not in broker.instances, timeout=10, what="orphan mitigation")
    r = p.cli("service", "sad")
    assert "create failed" in r.stdout and "async provision failed" in r.stdout, out(r)
    assert p.cli("delete-service", "sad", "-f").returncode == 0
    # one that never finishes: given up after the plan's maximum_polling_duration (2 s)
    r = p.cli("create-service", "testdb", "never", "forever", "--wait")
    assert r.returncode == 1 and "maximum_polling_duration" in r.stderr, out(r)
    # bad requests name what is wrong; parameters are checked against the plan's schema first
    puts = len(broker.calls("PUT"))
    for args, why in ((("testdb", "nosuchplan", "x"), "no plan named nosuchplan"),
                      (("testdb", "large", "x", "-c", '{"size": "big"}'),
                       "parameters.size must be of type integer"),
                      (("testdb", "large", "x", "-c", '{"size": 3, "disk": 1}'),
                       "parameters.disk is not a parameter the plan takes"),
                      (("nosuch", "small", "x"), "no service offering named nosuch"),
                      (("testdb", "small", "x", "-c", "[1]"), "JSON object")):
        r = p.cli("create-service", *args)
        assert r.returncode in (1, 2) and why in r.stderr, out(r)
    assert len(broker.calls("PUT")) == puts
    # a binding answered with a 5xx: not recorded, and unbound at the broker
    assert p.cli("create-service", "testdb", "bindfail", "bf").returncode == 0
    push_env_app(p, "bfapp")
    r = p.cli("bind-service", "bfapp", "bf")
    assert r.returncode == 1 and "HTTP 502" in r.stderr and "on purpose" in r.stderr, out(r)
    assert p.api("GET", "/v1/apps/bfapp/service_bindings")[1]["service_bindings"] == []
    wait_for(lambda: not [b for b in broker.bindings.values()
                          if b["instance_id"] == instance(p, "bf")["guid"]],
             timeout=10, what="orphan mitigation of the failed binding")
    assert p.cli("delete-service", "bf", "-f").returncode == 0
    assert p.cli("create-service", "testdb", "nobind", "nb").returncode == 0
    push_env_app(p, "nbapp")
    r = p.cli("bind-service", "nbapp", "nb")
    assert r.returncode == 1 and "not bindable" in r.stderr, out(r)
    r = p.cli("update-service", "nb", "-p", "nosuch")
    assert r.returncode == 1 and "no plan named nosuch" in r.stderr, out(r)
    # a broker with instances is not deleted
    r = p.cli("delete-service-broker", "test-broker", "-f")
    assert r.returncode == 1 and "service instance" in r.stderr, out(r)
    assert p.api("GET", "/v1/info")[0] == 200


def _guid_of_put(broker, plan_id):
    for c in broker.calls("PUT", "/v2/service_instances/"):
        if isinstance(c["body"], dict) and c["body"].get("plan_id") == plan_id and \
                "service_bindings" not in c["path"]:
            return c["path"].split("/")[3]
    return None


def test_service_keys(brokered):
    p, broker = brokered
    assert p.cli("create-service", "testdb", "small", "keyed").returncode == 0
    r = p.cli("create-service-key", "keyed", "ci-key", "-c", '{"ro": true}')
    assert r.returncode == 0, out(r)
    r = p.cli("service-keys", "keyed")
    assert r.returncode == 0 and "ci-key" in r.stdout and "create succeeded" in r.stdout, out(r)
    r = p.cli("service-key", "keyed", "ci-key")
    assert r.returncode == 0, out(r)
    creds = json.loads(r.stdout)
    assert creds["uri"].startswith("testdb://")
    assert "service_keys" in instance(p, "keyed") and instance(p, "keyed")["service_keys"] == ["ci-key"]
    r = p.cli("delete-service", "keyed", "-f")
    assert r.returncode == 1 and "delete-service-key" in r.stderr, out(r)
    r = p.cli("create-service-key", "keyed", "ci-key")
    assert r.returncode == 1 and "already" in r.stderr, out(r)
    assert p.cli("delete-service-key", "keyed", "ci-key", "-f").returncode == 0
    assert p.cli("delete-service", "keyed", "-f").returncode == 0
    assert p.cli("cups", "upskeys", "-p", "{}").returncode == 0
    r = p.cli("create-service-key", "upskeys", "k")
    assert r.returncode == 1 and "not supported for a user-provided" in r.stderr, out(r)


def test_skiffd_restart_resumes_polling(tmp_path):
    broker = OsbBroker().start()
    p = Platform().start()
    try:
        assert p.cli("create-service-broker", "b", broker.user, broker.password,
                     broker.url).returncode == 0
        r = p.cli("create-service", "testdb", "async", "resumed")
        assert r.returncode == 0 and "in progress" in r.stdout, out(r)
        # an orphan whose broker refuses to delete it for now is still deleted after a restart
        broker.refuse_deletes = True
        r = p.cli("create-service", "testdb", "fail500", "orphaned")
        assert r.returncode == 1, out(r)
        wait_for(lambda: broker.calls("DELETE"), timeout=10, what="a first orphan mitigation try")
        p.stop()
        broker.refuse_deletes = False
        p.start()
        wait_for(lambda: instance(p, "resumed")["last_operation"]["state"] == "succeeded",
                 timeout=20, what="polling to resume after the restart")
        orphan = _guid_of_put(broker, "plan-fail500")
        assert orphan
        wait_for(lambda: orphan not in broker.instances, timeout=20,
                 what="the orphan to be deleted after the restart")
    finally:
        p.close()
        broker.stop()


def test_brokers_and_keys_across_tenants(tenants):
    p, A, B = tenants["p"], tenants["A"], tenants["B"]
    alice, bob, aud = (tenants["tokens"][u] for u in ("alice", "bob", "aud"))
    broker = OsbBroker().start()
    try:
        body = {"name": "alices-broker", "url": broker.url, "username": broker.user,
                "password": broker.password}
        # a platform-wide broker is the admin's to register
        status, res = call(p, alice, "POST", f"/v1/service_brokers?{A}", body)
        assert status == 403 and "--space-scoped" in res["error"]["message"], res
        status, res = call(p, alice, "POST", f"/v1/service_brokers?{A}", dict(body, space_scoped=True))
        assert status == 201 and res["space_scoped"] and "password" not in res, res
        # her space sees it; bob's does not, in the marketplace or the broker list
        status, market = call(p, alice, "GET", f"/v1/marketplace?{A}")
        assert [s["service"] for s in market["services"]] == ["testdb"]
        assert call(p, bob, "GET", f"/v1/marketplace?{B}")[1]["services"] == []
        assert call(p, bob, "GET", f"/v1/service_brokers?{B}")[1]["service_brokers"] == []
        status, res = call(p, bob, "POST", f"/v1/service_instances?{B}",
                           {"name": "x", "service": "testdb", "plan": "small"})
        assert status == 422, res
        for method in ("PATCH", "DELETE"):
            status, res = call(p, bob, method, f"/v1/service_brokers/alices-broker?{B}",
                               {"password": "stolen"} if method == "PATCH" else None)
            assert status == 404, (method, res)
        # a key: its credentials are for developers of the space only
        status, inst = call(p, alice, "POST", f"/v1/service_instances?{A}",
                            {"name": "kdb", "service": "testdb", "plan": "small"})
        assert status == 201, inst
        status, key = call(p, alice, "POST", f"/v1/service_instances/kdb/keys?{A}", {"name": "k1"})
        assert status == 201, key
        status, res = call(p, alice, "GET", f"/v1/service_instances/kdb/keys/k1?{A}")
        assert status == 200 and res["credentials"]["uri"].startswith("testdb://")
        secret = res["credentials"]["password"]
        status, res = call(p, aud, "GET", f"/v1/service_instances/kdb/keys/k1?{A}")
        assert status == 403, res
        status, res = call(p, aud, "GET", f"/v1/service_instances/kdb/keys?{A}")
        assert status == 200 and secret not in json.dumps(res)
        for path in (f"/v1/service_instances/kdb/keys/k1?{A}", f"/v1/service_instances/kdb/keys?{A}",
                     f"/v1/service_instances/{inst['guid']}/keys/k1?{B}"):
            status, res = call(p, bob, "GET", path)
            assert status == 404 and secret not in json.dumps(res), (path, status, res)
        status, res = call(p, alice, "GET", f"/v1/audit_events?{A}")
        assert status == 200 and secret not in json.dumps(res) and broker.password not in json.dumps(res)
        assert call(p, alice, "DELETE", f"/v1/service_instances/kdb/keys/k1?{A}")[0] == 204
        assert call(p, alice, "DELETE", f"/v1/service_instances/kdb?{A}")[0] == 204
        assert call(p, alice, "DELETE", f"/v1/service_brokers/alices-broker?{A}")[0] == 204
    finally:
        broker.stop()


def test_a_space_with_service_instances_is_not_deleted(tenants):
    p, admin = tenants["p"], tenants["admin"]
    for path in ("/v1/orgs/a/spaces/dev", "/v1/orgs/a"):
        status, res = call(p, admin, "DELETE", path)
        assert status == 409, (path, res)
    # the app goes first; then the instance is what holds the space
    assert call(p, admin, "DELETE", f"/v1/apps/web?{tenants['A']}")[0] == 204
    status, res = call(p, admin, "DELETE", "/v1/orgs/a/spaces/dev")
    assert status == 409 and "service instance" in res["error"]["message"] and "vault" in \
        res["error"]["message"], res


def test_platform_plans_are_for_the_orgs_the_admin_enables(tenants):
    p, admin, A, B = tenants["p"], tenants["admin"], tenants["A"], tenants["B"]
    alice, bob = tenants["tokens"]["alice"], tenants["tokens"]["bob"]
    broker = OsbBroker().start()
    try:
        body = {"name": "platform", "url": broker.url, "username": broker.user,
                "password": broker.password}
        assert call(p, admin, "POST", "/v1/service_brokers", body)[0] == 201

        def plans(token, q):
            market = call(p, token, "GET", f"/v1/marketplace?{q}")[1]["services"]
            return sorted(pl["name"] for s in market if s["broker"] == "platform"
                          for pl in s["plans"])

        # as in Cloud Foundry, a new platform broker's plans are nobody's yet
        assert plans(alice, A) == [] and plans(bob, B) == []
        status, res = call(p, alice, "POST", f"/v1/service_instances?{A}",
                           {"name": "pdb", "service": "testdb", "plan": "small"})
        assert status == 422 and "enable-service-access" in res["error"]["message"], res
        # the admin opens one plan to org a
        r = p.cli("enable-service-access", "testdb", "-p", "small", "-o", "a")
        assert r.returncode == 0, out(r)
        assert plans(alice, A) == ["small"] and plans(bob, B) == []
        status, res = call(p, alice, "POST", f"/v1/service_instances?{A}",
                           {"name": "pdb", "service": "testdb", "plan": "small", "broker": "platform"})
        assert status == 201, res
        status, res = call(p, alice, "PATCH", f"/v1/service_instances/pdb?{A}", {"plan": "large"})
        assert status == 422 and "for this org" in res["error"]["message"], res
        r = p.cli("service-access", "-e", "testdb")
        assert r.returncode == 0 and "limited" in r.stdout and "none" in r.stdout, out(r)
        # then every plan to every org; one org cannot be taken from a plan open to all
        assert p.cli("enable-service-access", "testdb", "-b", "platform").returncode == 0
        assert "large" in plans(bob, B) and "async" in plans(alice, A)
        r = p.cli("disable-service-access", "testdb", "-p", "small", "-o", "b")
        assert r.returncode == 1 and "every org" in r.stderr, out(r)
        assert p.cli("disable-service-access", "testdb", "-b", "platform").returncode == 0
        assert plans(bob, B) == []
        # only the admin decides
        status, res = call(p, alice, "PUT", "/v1/service_access",
                           {"service": "testdb", "enable": True})
        assert status == 403, res
        r = p.cli("enable-service-access", "nosuch")
        assert r.returncode == 1 and "no platform broker offers nosuch" in r.stderr, out(r)
        r = p.cli("enable-service-access", "testdb", "-o", "nosuchorg")
        assert r.returncode == 1 and "no org named nosuchorg" in r.stderr, out(r)
        assert call(p, alice, "DELETE", f"/v1/service_instances/pdb?{A}")[0] == 204
        assert call(p, admin, "DELETE", "/v1/service_brokers/platform")[0] == 204
    finally:
        broker.stop()


def test_slow_brokers_hold_neither_the_api_nor_logins(brokered):
    """Broker calls take at most half of libuv's pool: four creates stuck on a slow broker
    leave logins (argon2id on the pool) and the API answering."""
    import threading
    import time as _time
    p, broker = brokered
    assert p.api("POST", "/v1/users", {"name": "patient", "password": PASSWORD})[0] == 201
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        p.api("POST", "/v1/service_instances",
              {"name": f"stuck{i}", "service": "testdb", "plan": "slow"})[0])) for i in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len([c for c in broker.calls("PUT") if c["body"].get("plan_id") == "plan-slow"
                          ]) >= 3, timeout=10, what="slow provisions to reach the broker")
    t0 = _time.monotonic()
    status, body = p.api("POST", "/v1/auth/token", {"grant_type": "password", "username": "patient",
                                                    "password": PASSWORD}, token=False)
    took = _time.monotonic() - t0
    assert status == 200, body
    assert took < 1.5, f"a login took {took:.2f} s while brokers were slow"
    assert p.api("GET", "/v1/service_instances")[0] == 200
    for t in threads:
        t.join()
    assert results == [502] * 4, results
