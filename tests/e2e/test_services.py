"""Services: user-provided service instances, bindings and VCAP_SERVICES as an app's instances
see it; who may see which credentials; service brokers over the Open Service Broker API (a
test broker, tests/e2e/osb_broker.py)."""
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
