"""Tenancy: users, orgs, spaces, roles and tokens, and who may do what.

The matrix test calls every endpoint of docs/roles.md as every role (and with no token, an
expired token, a revoked token, a space-limited token, another org's user) and checks the
answer is what docs/roles.md says: allowed, 403, or 404 where the caller has no role in the
place at all. docs/roles.md itself is checked against the running API's table."""
import json
import os
import re
import time
import urllib.parse
import uuid

import pytest

from conftest import Platform, ROOT, tar_gz, wait_for
from osb_broker import OsbBroker

ROLES_MD = os.path.join(ROOT, "docs", "roles.md")
PASSWORD = "correct horse battery"


def read_roles_md():
    """(perm -> set of roles, [(method, path, perm, place)]) from docs/roles.md."""
    text = open(ROLES_MD).read()
    perms, endpoints = {}, []
    header = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None if not line.strip() else header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "permission":
            header = cells
            continue
        if cells[0] == "method":
            header = cells
            continue
        if set(cells[0]) <= {"-", " "}:
            continue
        if header and header[0] == "permission":
            name = cells[0].strip("`")
            perms[name] = {header[i] for i in range(2, len(header)) if cells[i] == "✓"}
        elif header and header[0] == "method":
            endpoints.append((cells[0], cells[1].strip("`"), cells[2].strip("`"), cells[3]))
    return perms, endpoints


class Who:
    """A caller: its token and the roles it holds in org acme and its space prod."""

    def __init__(self, name, token, org_roles=(), space_roles=(), admin=False, valid=True,
                 limited_to_prod=False):
        self.name, self.token = name, token
        self.org_roles, self.space_roles = set(org_roles), set(space_roles)
        self.admin, self.valid, self.limited = admin, valid, limited_to_prod

    def expect(self, perm, perms, place, path):
        """'ok', 401, 403 or 404 for a call needing perm in acme (or acme/prod)."""
        if perm == "public":
            return "ok"
        if not self.valid:
            return 401
        if self.admin:
            return "ok"
        if perm == "user":
            return "ok"
        if perm == "admin":
            # an org one has no role in is not there, even to be refused
            in_org = place in ("org", "org and space")
            return 404 if in_org and (self.limited or not self.org_roles) else 403
        if place == "platform":
            # held by no org or space role (the admin's, a cell's): refused, nothing to hide
            return 403
        granted = perms[perm]
        space_perm = perm.startswith("space.")
        if self.limited:
            # a limited token sees its own space, and only that
            held = self.space_roles if space_perm else set()
            sees = space_perm or (place == "org and space" and "/spaces/prod/" in path + "/")
        else:
            held = self.org_roles | (self.space_roles if space_perm else set())
            sees = bool(self.org_roles)
        if held & granted:
            return "ok"
        return 403 if sees else 404


@pytest.fixture(scope="module")
def world():
    p = Platform().start()
    try:
        yield setup_world(p)
    finally:
        p.close()
        if getattr(p, "matrix_broker", None):
            p.matrix_broker.stop()


def api(p, method, path, token, body=None, raw=None, headers=None):
    return p.api(method, path, body=body, token=token or False, raw=raw, headers=headers)


def login(p, name, password=PASSWORD):
    status, body = api(p, "POST", "/v1/auth/token", None,
                       {"grant_type": "password", "username": name, "password": password})
    assert status == 200, body
    return body


def setup_world(p):
    admin = p.token
    def ok(method, path, body=None, expect=(200, 201, 204)):
        status, out = api(p, method, path, admin, body)
        assert status in expect, (method, path, status, out)
        return out
    users = ["root2", "orgmgr", "billing", "orgaud", "orguser", "spmgr", "dev", "aud", "sup",
             "outsider", "expiring", "revoked", "target"]
    for u in users:
        ok("POST", "/v1/users", {"name": u, "password": PASSWORD, "admin": u == "root2"})
    ok("POST", "/v1/orgs", {"name": "acme"})
    ok("POST", "/v1/orgs/acme/spaces", {"name": "prod"})
    ok("POST", "/v1/orgs", {"name": "other"})
    ok("POST", "/v1/orgs/other/spaces", {"name": "x"})
    for u, role in [("orgmgr", "OrgManager"), ("billing", "BillingManager"),
                    ("orgaud", "OrgAuditor"), ("orguser", "OrgUser")]:
        ok("PUT", f"/v1/orgs/acme/users/{u}/roles/{role}")
    for u, role in [("spmgr", "SpaceManager"), ("dev", "SpaceDeveloper"), ("aud", "SpaceAuditor"),
                    ("sup", "SpaceSupporter"), ("expiring", "SpaceDeveloper"),
                    ("revoked", "SpaceDeveloper")]:
        ok("PUT", f"/v1/orgs/acme/spaces/prod/users/{u}/roles/{role}")
    ok("PUT", "/v1/orgs/other/spaces/x/users/outsider/roles/SpaceDeveloper")
    # the things the calls are about
    ok("PUT", "/v1/apps/shop?space=acme/prod", {"no_route": True})
    ok("PUT", "/v1/apps/bitsapp?space=acme/prod", {"no_route": True})
    status, _ = api(p, "POST", "/v1/topics/orders/events?space=acme/prod", admin, {"n": 1})
    assert status == 202
    mapping = ok("POST", "/v1/event-mappings?space=acme/prod", {"app": "shop", "topic": "orders"})
    ok("POST", "/v1/quotas", {"name": "matrix"})
    ok("POST", "/v1/service_instances?space=acme/prod",
       {"name": "ups", "user_provided": True, "credentials": {"k": "v"}})
    # a broker for the platform, one for the space, a managed instance with a key
    broker = OsbBroker().start()
    p.matrix_broker = broker  # stopped with the platform
    ok("POST", "/v1/service_brokers", {"name": "matrix", "url": broker.url,
                                      "username": broker.user, "password": broker.password})
    ok("POST", "/v1/service_brokers?space=acme/prod",
       {"name": "matrix-space", "url": broker.url, "username": broker.user,
        "password": broker.password, "space_scoped": True})
    ok("POST", "/v1/service_instances?space=acme/prod",
       {"name": "mdb", "service": "testdb", "plan": "small", "broker": "matrix"})
    ok("POST", "/v1/service_instances/mdb/keys?space=acme/prod", {"name": "k1"})
    tokens = {u: login(p, u)["access_token"] for u in users}
    # an API token that is limited to acme/prod as a SpaceAuditor, though dev develops there
    status, body = api(p, "PUT", "/v1/orgs/acme/spaces/prod/users/dev/roles/SpaceAuditor", admin)
    assert status == 204
    status, limited = api(p, "POST", "/v1/tokens", tokens["dev"],
                          {"name": "ci", "space": "acme/prod", "role": "SpaceAuditor"})
    assert status == 201, limited
    status, _ = api(p, "DELETE", "/v1/orgs/acme/spaces/prod/users/dev/roles/SpaceAuditor", admin)
    assert status == 204
    status, _ = api(p, "PUT", "/v1/orgs/acme/spaces/prod/users/sup/roles/SpaceAuditor", admin)
    assert status == 204
    status, sup_limited = api(p, "POST", "/v1/tokens", tokens["sup"],
                              {"name": "ci", "space": "acme/prod", "role": "SpaceAuditor"})
    assert status == 201, sup_limited
    # an expired token: one second to live, then wait until it is refused
    status, short = api(p, "POST", "/v1/tokens", tokens["expiring"], {"name": "short", "expires_in": 1})
    assert status == 201, short
    wait_for(lambda: api(p, "GET", "/v1/auth/me", short["token"])[0] == 401, timeout=10,
             what="the one-second token to expire")
    status, gone = api(p, "POST", "/v1/tokens", tokens["revoked"], {"name": "gone"})
    assert status == 201
    assert api(p, "DELETE", "/v1/tokens/gone", tokens["revoked"])[0] == 204
    space_dev = {"OrgUser"}
    callers = [
        Who("local admin token", admin, admin=True),
        Who("admin user", tokens["root2"], admin=True),
        Who("OrgManager", tokens["orgmgr"], {"OrgManager"}),
        Who("BillingManager", tokens["billing"], {"BillingManager"}),
        Who("OrgAuditor", tokens["orgaud"], {"OrgAuditor"}),
        Who("OrgUser", tokens["orguser"], {"OrgUser"}),
        Who("SpaceManager", tokens["spmgr"], space_dev, {"SpaceManager"}),
        Who("SpaceDeveloper", tokens["dev"], space_dev, {"SpaceDeveloper"}),
        Who("SpaceAuditor", tokens["aud"], space_dev, {"SpaceAuditor"}),
        Who("SpaceSupporter", tokens["sup"], space_dev, {"SpaceSupporter", "SpaceAuditor"}),
        Who("another org's developer", tokens["outsider"]),
        Who("no token", None, valid=False),
        Who("bad token", "skiffa_" + "A" * 43, valid=False),
        Who("expired token", short["token"], valid=False),
        Who("revoked token", gone["token"], valid=False),
        # dev no longer holds SpaceAuditor: the limited token may do nothing but be a user
        Who("token limited to a role its user lost", limited["token"], limited_to_prod=True),
        Who("token limited to acme/prod as SpaceAuditor", sup_limited["token"], space_dev,
            {"SpaceAuditor"}, limited_to_prod=True),
    ]
    return {"p": p, "admin": admin, "tokens": tokens, "callers": callers,
            "mapping": mapping["id"], "broker": broker}


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fill(world, method, path):
    """The concrete call for an endpoint of docs/roles.md: (path, body, raw, headers).
    Every call names things that exist, so an allowed caller never gets a 404; destructive
    calls get a fresh victim made by the admin first; roles are given to and taken from a
    user who is none of the callers."""
    p, admin = world["p"], world["admin"]
    S = "space=acme/prod"
    def made(method_, path_, body=None):
        status, out = api(p, method_, path_, admin, body)
        assert status in (200, 201, 204), (path_, status, out)
        return out
    body, raw, headers = None, None, None
    if path == "/v1/auth/token":
        return path, {"grant_type": "password", "username": "orguser", "password": PASSWORD}, None, None
    if path.startswith("/v1/apps/*/service_bindings"):
        # a fresh instance per call, bound first when the call unbinds it
        ups = unique("ups")
        made("POST", f"/v1/service_instances?{S}", {"name": ups, "user_provided": True})
        if method == "POST":
            return f"/v1/apps/shop/service_bindings?{S}", {"service_instance": ups}, None, None
        if method == "DELETE":
            made("POST", f"/v1/apps/shop/service_bindings?{S}", {"service_instance": ups})
            return f"/v1/apps/shop/service_bindings/{ups}?{S}", None, None, None
        return f"/v1/apps/shop/service_bindings?{S}", None, None, None
    if path.startswith("/v1/service_instances/*/keys"):
        key = "k1"
        if method == "POST":
            return f"/v1/service_instances/mdb/keys?{S}", {"name": unique("k")}, None, None
        if method == "DELETE":
            key = unique("k")
            made("POST", f"/v1/service_instances/mdb/keys?{S}", {"name": key})
        return path.replace("*", "mdb", 1).replace("*", key) + "?" + S, None, None, None
    if path.startswith("/v1/service_brokers"):
        broker = world["broker"]
        fields = {"url": broker.url, "username": broker.user, "password": broker.password}
        if method == "POST":
            return f"/v1/service_brokers?{S}", dict(fields, name=unique("b"), space_scoped=True), \
                None, None
        if method == "PATCH":
            return f"/v1/service_brokers/matrix-space?{S}", fields, None, None
        if method == "DELETE":
            victim = unique("b")
            made("POST", f"/v1/service_brokers?{S}", dict(fields, name=victim, space_scoped=True))
            return f"/v1/service_brokers/{victim}?{S}", None, None, None
        return f"/v1/service_brokers?{S}", None, None, None
    if path == "/v1/service_access":
        if method == "PUT":
            return path, {"service": "testdb", "broker": "matrix", "plan": "small",
                          "enable": True}, None, None
        return path, None, None, None
    if path == "/v1/marketplace":
        return f"/v1/marketplace?{S}", None, None, None
    if path.startswith("/v1/service_instances"):
        name = "ups"
        if method == "POST":
            return f"/v1/service_instances?{S}", {"name": unique("ups"), "user_provided": True}, \
                None, None
        if method == "DELETE":
            name = unique("ups")
            made("POST", f"/v1/service_instances?{S}", {"name": name, "user_provided": True})
        if method == "PATCH":
            body = {"tags": ["matrix"]}
        return path.replace("*", name) + "?" + S, body, None, None
    if path.startswith("/v1/apps/*/functions/"):
        fn = "resize"
        if method == "DELETE":
            fn = unique("fn")
            made("PUT", f"/v1/apps/shop/functions/{fn}?{S}", {"handler": "images.py:resize"})
        else:
            body = {"handler": "images.py:resize"}
        return f"/v1/apps/shop/functions/{fn}?{S}", body, None, None
    if path.startswith("/v1/apps"):
        app = "shop"
        if method == "DELETE" and path == "/v1/apps/*":
            app = unique("victim")
            made("PUT", f"/v1/apps/{app}?{S}", {"no_route": True})
        if path == "/v1/apps/*/bits":
            app = "bitsapp"
            raw = tar_gz([("index.html", b"hi")])
            headers = {"Content-Type": "application/octet-stream"}
        if method == "POST" and path == "/v1/apps":
            body = {"name": unique("new"), "no_route": True}
        elif method in ("PUT", "PATCH") and path == "/v1/apps/*":
            body = {"memory_mb": 128}
        elif path == "/v1/apps/*/env" and method == "PUT":
            body = {"K": "v"}
        elif path == "/v1/apps/*/invoke":
            body = {"x": 1}
        elif path == "/v1/apps/*/rollback":
            body = {"revision": 0}  # 422 once allowed: nothing is rolled back
        elif path == "/v1/apps/*/metadata" and method == "PATCH":
            body = {"labels": {"env": "prod"}}
        elif path == "/v1/apps/*/features/*":
            body = {"enabled": True}
        query = S + ("&recent=1" if path.endswith("/logs") else "")
        path = path.replace("/features/*", "/features/ssh")
        return path.replace("*", app, 1) + "?" + query, body, raw, headers
    if path == "/v1/routes":
        host = unique("r") + ".localhost"
        if method == "POST":
            return f"/v1/routes?{S}", {"app": "shop", "host": host}, None, None
        if method == "DELETE":
            made("POST", f"/v1/routes?{S}", {"app": "shop", "host": host})
            return f"/v1/routes?{S}&app=shop&host={host}", None, None, None
        return f"/v1/routes?{S}", None, None, None
    if path.startswith("/v1/event-mappings"):
        mid = world["mapping"]
        if method == "DELETE":
            mid = made("POST", f"/v1/event-mappings?{S}", {"app": "shop", "topic": "orders"})["id"]
        if method == "POST" and path == "/v1/event-mappings":
            body = {"app": "shop", "topic": "orders"}
        if path.endswith("/replay"):
            body = {"since": "1h"}
        return path.replace("*", mid) + "?" + S, body, None, None
    if path.startswith("/v1/topics"):
        if path == "/v1/topics":
            return f"/v1/topics?{S}", None, None, None
        if path.endswith(":batch"):
            return f"/v1/topics/orders/events:batch?{S}", None, json.dumps(
                [{"specversion": "1.0", "id": unique("e"), "source": "/t", "type": "t"}]).encode(), \
                {"Content-Type": "application/json"}
        if method == "POST":
            return f"/v1/topics/orders/events?{S}", {"n": 2}, None, None
        return f"/v1/topics/orders/events?{S}&limit=1", None, None, None
    if path in ("/v1/domains/*", "/v1/orgs/*/domains/*") and method == "DELETE":
        # a fresh domain to delete (shared, or acme's private), no route on it
        name = unique("x") + ".test"
        of_org = path.startswith("/v1/orgs/")
        made("POST", "/v1/orgs/acme/domains" if of_org else "/v1/domains", {"name": name})
        return (f"/v1/orgs/acme/domains/{name}" if of_org else f"/v1/domains/{name}"), None, \
            None, None
    if path.endswith("/domains/*/certificate") and method == "DELETE":
        # a fresh domain with a certificate of its own to remove (shared, or acme's private)
        from test_tls import CA
        if "ca" not in world:
            world["ca"] = CA(os.path.join(world["p"].home, "matrix-ca"))
        name = unique("c") + ".test"
        of_org = path.startswith("/v1/orgs/")
        made("POST", "/v1/orgs/acme/domains" if of_org else "/v1/domains", {"name": name})
        cert, key = world["ca"].issue(name, [name])
        base = f"/v1/orgs/acme/domains/{name}" if of_org else f"/v1/domains/{name}"
        with open(cert) as c, open(key) as k:
            made("PUT", base + "/certificate", {"cert": c.read(), "key": k.read()})
        return base + "/certificate", None, None, None
    if path == "/v1/domains" and method == "POST":
        return path, {"name": unique("d") + ".test"}, None, None
    if path == "/v1/users" and method == "POST":
        return path, {"name": unique("u"), "password": PASSWORD}, None, None
    if path == "/v1/users/*" and method == "DELETE":
        victim = unique("u")
        made("POST", "/v1/users", {"name": victim, "password": PASSWORD})
        return f"/v1/users/{victim}", None, None, None
    if path == "/v1/quotas" and method == "POST":
        return path, {"name": unique("q")}, None, None
    if path == "/v1/quotas/*":
        if method == "DELETE":
            victim = unique("q")
            made("POST", "/v1/quotas", {"name": victim})
            return f"/v1/quotas/{victim}", None, None, None
        return "/v1/quotas/matrix", {"apps": 100}, None, None
    if path == "/v1/audit_events":
        return f"/v1/audit_events?{S}", None, None, None
    if path == "/v1/orgs" and method == "POST":
        return path, {"name": unique("o")}, None, None
    if path.startswith("/v1/orgs/*"):
        org = "acme"
        if method == "DELETE" and path == "/v1/orgs/*":
            org = unique("o")
            made("POST", "/v1/orgs", {"name": org})
            made("PUT", f"/v1/orgs/{org}/users/orgmgr/roles/OrgManager")
            # the roles the matrix expects in acme, given here too
            for u, role in [("billing", "BillingManager"), ("orgaud", "OrgAuditor"),
                            ("orguser", "OrgUser")]:
                made("PUT", f"/v1/orgs/{org}/users/{u}/roles/{role}")
            for u in ("spmgr", "dev", "aud", "sup"):
                made("PUT", f"/v1/orgs/{org}/users/{u}/roles/OrgUser")
            return f"/v1/orgs/{org}", None, None, None
        rest = path[len("/v1/orgs/*"):]
        if rest == "/spaces" and method == "POST":
            return "/v1/orgs/acme/spaces", {"name": unique("s")}, None, None
        if rest == "/spaces/*" and method == "DELETE":
            space = unique("s")
            made("POST", "/v1/orgs/acme/spaces", {"name": space})
            return f"/v1/orgs/acme/spaces/{space}", None, None, None
        if rest.startswith("/spaces/*/users/*/roles/*"):
            return "/v1/orgs/acme/spaces/prod/users/target/roles/SpaceAuditor", None, None, None
        if rest == "/domains":
            return "/v1/orgs/acme/domains", {"name": unique("d") + ".test"}, None, None
        if rest.endswith("/quota"):
            return "/v1/orgs/acme" + rest.replace("/spaces/*", "/spaces/prod"), \
                {"quota": None}, None, None
        if rest == "/spaces/*/features/*":
            return "/v1/orgs/acme/spaces/prod/features/ssh", \
                {"enabled": True} if method == "PATCH" else None, None, None
        if rest.startswith("/users/*/roles/*"):
            return "/v1/orgs/acme/users/target/roles/BillingManager", None, None, None
        return "/v1/orgs/acme" + rest.replace("/spaces/*", "/spaces/prod"), None, None, None
    return path, None, None, None


# decided in the handler, or ending the caller's own session: tested on their own below
SPECIAL = {("POST", "/v1/auth/logout"), ("PUT", "/v1/users/*/password"),
           ("POST", "/v1/tokens"), ("DELETE", "/v1/tokens/*")}


def test_roles_md_is_the_api_table(world):
    """docs/roles.md lists exactly the endpoints and permissions the running API decides with."""
    perms, endpoints = read_roles_md()
    status, live = api(world["p"], "GET", "/v1/permissions", world["admin"])
    assert status == 200
    assert [(e["method"], e["path"], e["permission"], e["scope"]) for e in live["endpoints"]] == \
        endpoints, "docs/roles.md is stale: regenerate it with scripts/roles_doc.py"
    for lp in live["permissions"]:
        if lp["name"] not in ("public", "user"):
            assert perms[lp["name"]] == set(lp["roles"]), lp["name"]


def test_every_endpoint_as_every_role(world):
    """Each endpoint x each caller answers as docs/roles.md says."""
    perms, endpoints = read_roles_md()
    p = world["p"]
    wrong = []
    for method, path, perm, place in endpoints:
        if (method, path) in SPECIAL:
            continue
        for who in world["callers"]:
            cpath, body, raw, headers = fill(world, method, path)
            expected = who.expect(perm, perms, place, cpath.split("?")[0])
            status, out = api(p, method, cpath, who.token, body, raw, headers)
            got = "ok" if status not in (401, 403, 404) else status
            if got != expected:
                wrong.append(f"{method} {cpath} as {who.name}: expected {expected}, got {status} {str(out)[:160]}")
    assert not wrong, "\n".join(wrong)


def test_login_refresh_and_logout(world):
    p = world["p"]
    tok = login(p, "orguser")
    status, me = api(p, "GET", "/v1/auth/me", tok["access_token"])
    assert status == 200 and me["user"]["name"] == "orguser"
    # a refresh gives a new pair and ends the refresh token used
    status, again = api(p, "POST", "/v1/auth/token", None,
                        {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
    assert status == 200 and again["access_token"] != tok["access_token"]
    status, _ = api(p, "POST", "/v1/auth/token", None,
                    {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})
    assert status == 401
    # a refresh token is no access token
    assert api(p, "GET", "/v1/auth/me", again["refresh_token"])[0] == 401
    # logout ends the access token at once, and the refresh token given
    assert api(p, "POST", "/v1/auth/logout", again["access_token"],
               {"refresh_token": again["refresh_token"]})[0] == 204
    assert api(p, "GET", "/v1/auth/me", again["access_token"])[0] == 401
    assert api(p, "POST", "/v1/auth/token", None,
               {"grant_type": "refresh_token", "refresh_token": again["refresh_token"]})[0] == 401
    # the other session (the first access token) is untouched
    assert api(p, "GET", "/v1/auth/me", tok["access_token"])[0] == 200


def test_wrong_password_and_unknown_user_look_the_same(world):
    p = world["p"]
    a = api(p, "POST", "/v1/auth/token", None,
            {"grant_type": "password", "username": "orguser", "password": "wrong password"})
    b = api(p, "POST", "/v1/auth/token", None,
            {"grant_type": "password", "username": "nobody-here", "password": "wrong password"})
    assert a == b and a[0] == 401


def test_passwords_never_stored_or_logged_in_clear(world):
    p = world["p"]
    log = open(p.log_path, "rb").read()
    assert PASSWORD.encode() not in log
    store = b""
    for name in os.listdir(p.home):
        if name.startswith("skiff.db"):
            store += open(os.path.join(p.home, name), "rb").read()
    assert b"$argon2id$" in store
    assert PASSWORD.encode() not in store
    # nor are tokens: only their hashes
    assert world["tokens"]["dev"].encode() not in store


def test_changing_a_password(world):
    p, admin = world["p"], world["admin"]
    name = unique("pw")
    assert api(p, "POST", "/v1/users", admin, {"name": name, "password": PASSWORD})[0] == 201
    first, second = login(p, name), login(p, name)
    # another user cannot, and is told there is no such user
    status, _ = api(p, "PUT", f"/v1/users/{name}/password", world["tokens"]["dev"],
                    {"password": "hijacked password", "old_password": PASSWORD})
    assert status == 404
    # the user must give the old password
    status, _ = api(p, "PUT", f"/v1/users/{name}/password", first["access_token"],
                    {"password": "new password 1", "old_password": "not it at all"})
    assert status == 403
    status, _ = api(p, "PUT", f"/v1/users/{name}/password", first["access_token"],
                    {"password": "new password 1", "old_password": PASSWORD})
    assert status == 204
    # the other sessions end; this one goes on; the old password is refused
    assert api(p, "GET", "/v1/auth/me", second["access_token"])[0] == 401
    assert api(p, "GET", "/v1/auth/me", first["access_token"])[0] == 200
    assert api(p, "POST", "/v1/auth/token", None,
               {"grant_type": "password", "username": name, "password": PASSWORD})[0] == 401
    login(p, name, "new password 1")
    # an admin may set it without the old one
    assert api(p, "PUT", f"/v1/users/{name}/password", admin, {"password": "new password 2"})[0] == 204
    login(p, name, "new password 2")


def test_api_tokens(world):
    p = world["p"]
    dev = world["tokens"]["dev"]
    status, t = api(p, "POST", "/v1/tokens", dev, {"name": "deploy", "space": "acme/prod",
                                                    "role": "SpaceDeveloper"})
    assert status == 201 and t["token"].startswith("skifft_")
    status, listed = api(p, "GET", "/v1/tokens", dev)
    assert status == 200
    assert "deploy" in [x["name"] for x in listed["tokens"]]
    assert all("token" not in x for x in listed["tokens"]), "a token is shown only once"
    # it acts in its space with its role ...
    assert api(p, "GET", "/v1/apps?space=acme/prod", t["token"])[0] == 200
    # ... and nowhere else, not even the user's own other spaces or platform lists
    assert api(p, "GET", "/v1/apps?space=default/dev", t["token"])[0] == 404
    assert api(p, "GET", "/v1/orgs/acme/users", t["token"])[0] == 404
    # it cannot mint a broader token
    status, _ = api(p, "POST", "/v1/tokens", t["token"], {"name": "broader"})
    assert status == 403
    # a role the user does not hold cannot be given to a token
    status, _ = api(p, "POST", "/v1/tokens", dev, {"name": "mgr", "space": "acme/prod",
                                                    "role": "SpaceManager"})
    assert status == 403
    # a token of a space the user cannot see: that space is not there
    status, _ = api(p, "POST", "/v1/tokens", dev, {"name": "x", "space": "other/x"})
    assert status == 404
    # revoking takes effect at once; another user cannot revoke it
    assert api(p, "DELETE", "/v1/tokens/deploy", world["tokens"]["aud"])[0] == 404
    assert api(p, "DELETE", "/v1/tokens/deploy", dev)[0] == 204
    assert api(p, "GET", "/v1/apps?space=acme/prod", t["token"])[0] == 401


def test_a_deleted_user_loses_everything(world):
    p, admin = world["p"], world["admin"]
    name = unique("gone")
    assert api(p, "POST", "/v1/users", admin, {"name": name, "password": PASSWORD})[0] == 201
    assert api(p, "PUT", f"/v1/orgs/acme/spaces/prod/users/{name}/roles/SpaceDeveloper", admin)[0] == 204
    tok = login(p, name)
    assert api(p, "GET", "/v1/apps?space=acme/prod", tok["access_token"])[0] == 200
    assert api(p, "DELETE", f"/v1/users/{name}", admin)[0] == 204
    assert api(p, "GET", "/v1/apps?space=acme/prod", tok["access_token"])[0] == 401
    assert api(p, "POST", "/v1/auth/token", None,
               {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"]})[0] == 401
    # a new user of the same name does not inherit the roles
    assert api(p, "POST", "/v1/users", admin, {"name": name, "password": PASSWORD})[0] == 201
    tok = login(p, name)
    assert api(p, "GET", "/v1/apps?space=acme/prod", tok["access_token"])[0] == 404


def test_orgs_and_spaces_are_listed_to_members_only(world):
    p = world["p"]
    # (the matrix gives some callers roles in orgs of its own: only acme and other matter here)
    status, orgs = api(p, "GET", "/v1/orgs", world["tokens"]["outsider"])
    names = {o["name"] for o in orgs["orgs"]}
    assert status == 200 and "other" in names and "acme" not in names and "default" not in names
    status, orgs = api(p, "GET", "/v1/orgs", world["tokens"]["dev"])
    names = {o["name"] for o in orgs["orgs"]}
    assert "acme" in names and "other" not in names and "default" not in names
    status, orgs = api(p, "GET", "/v1/orgs", world["admin"])
    assert {"acme", "other", "default"} <= {o["name"] for o in orgs["orgs"]}


def test_a_space_with_apps_is_not_deleted(world):
    p, admin = world["p"], world["admin"]
    status, body = api(p, "DELETE", "/v1/orgs/acme/spaces/prod", admin)
    assert status == 409 and body["error"]["code"] == "not_empty"
    status, body = api(p, "DELETE", "/v1/orgs/acme", admin)
    assert status == 409 and body["error"]["code"] == "not_empty"


def test_bad_names_and_roles_are_refused(world):
    p, admin = world["p"], world["admin"]
    assert api(p, "POST", "/v1/orgs", admin, {"name": "Bad Name"})[0] == 422
    assert api(p, "POST", "/v1/users", admin, {"name": "x y", "password": PASSWORD})[0] == 422
    assert api(p, "POST", "/v1/users", admin, {"name": "short", "password": "1234"})[0] == 422
    status, body = api(p, "PUT", "/v1/orgs/acme/users/dev/roles/SpaceDeveloper", admin)
    assert status == 422 and "OrgManager" in body["error"]["message"]
    status, body = api(p, "PUT", "/v1/orgs/acme/spaces/prod/users/dev/roles/Emperor", admin)
    assert status == 422
    # a space that does not exist, by name or guid
    assert api(p, "GET", "/v1/apps?space=acme/nope", admin)[0] == 404
    assert api(p, "GET", "/v1/apps?space=" + str(uuid.uuid4()), admin)[0] == 404


def test_quotas_refuse_with_a_clear_message(world):
    p, admin = world["p"], world["admin"]
    def ok(method, path, body=None):
        status, out = api(p, method, path, admin, body)
        assert status in (200, 201, 204), (method, path, status, out)
        return out
    ok("POST", "/v1/quotas", {"name": "tiny", "apps": 2, "total_memory_mb": 512, "routes": 1,
                              "event_mappings": 0, "instance_memory_mb": 256})
    ok("POST", "/v1/orgs", {"name": "small"})
    ok("POST", "/v1/orgs/small/spaces", {"name": "s"})
    ok("PUT", "/v1/orgs/small/users/orgmgr/roles/OrgManager")
    # an org manager gives the space its quota; only an admin gives the org one
    mgr = world["tokens"]["orgmgr"]
    assert api(p, "PUT", "/v1/orgs/small/quota", mgr, {"quota": "tiny"})[0] == 403
    status, space = api(p, "PUT", "/v1/orgs/small/spaces/s/quota", mgr, {"quota": "tiny"})
    assert status == 200 and space["quota"] == "tiny"
    S = "space=small/s"
    ok("PUT", f"/v1/apps/one?{S}", {"memory_mb": 256, "no_route": True})
    def refused(method, path, body, limit):
        status, out = api(p, method, path, admin, body)
        assert status == 422 and out["error"]["code"] == "quota_exceeded", (status, out)
        msg = out["error"]["message"]
        assert "tiny" in msg and limit in msg and "small/s" in msg, msg
    refused("PATCH", f"/v1/apps/one?{S}", {"instances": 3}, "total_memory_mb")
    refused("PATCH", f"/v1/apps/one?{S}", {"memory_mb": 512}, "instance_memory_mb")
    ok("PUT", f"/v1/apps/two?{S}", {"memory_mb": 128, "no_route": True})
    refused("PUT", f"/v1/apps/three?{S}", {"memory_mb": 64, "no_route": True}, "apps")
    ok("POST", f"/v1/routes?{S}", {"app": "one", "host": "one-small.localhost"})
    refused("POST", f"/v1/routes?{S}", {"app": "two", "host": "two-small.localhost"}, "routes")
    refused("POST", f"/v1/event-mappings?{S}", {"app": "one", "topic": "t"}, "event_mappings")
    # nothing refused was stored
    status, apps = api(p, "GET", f"/v1/apps?{S}", admin)
    assert sorted(a["name"] for a in apps["apps"]) == ["one", "two"]
    assert [a["instances"] for a in apps["apps"] if a["name"] == "one"] == [1]
    # lifting it lets the change through
    ok("PUT", "/v1/quotas/tiny", {"apps": None})
    ok("PUT", f"/v1/apps/three?{S}", {"memory_mb": 64, "no_route": True})
    status, quotas = api(p, "GET", "/v1/quotas", world["tokens"]["dev"])
    tiny = [q for q in quotas["quotas"] if q["name"] == "tiny"][0]
    assert tiny["apps"] is None and tiny["routes"] == 1


def test_audit_events_say_who_did_what(world):
    p = world["p"]
    dev = world["tokens"]["dev"]
    S = "space=acme/prod"
    name = unique("audited")
    assert api(p, "PUT", f"/v1/apps/{name}?{S}", dev, {"no_route": True})[0] == 201
    assert api(p, "PUT", f"/v1/apps/{name}/env?{S}", dev, {"TOP_SECRET": "hunter2-value"})[0] == 200
    assert api(p, "DELETE", f"/v1/apps/{name}?{S}", dev)[0] == 204
    # a refused change is no change
    assert api(p, "DELETE", f"/v1/apps/{name}?{S}", world["tokens"]["aud"])[0] in (403, 404)
    status, body = api(p, "GET", f"/v1/audit_events?{S}&target={name}", world["tokens"]["aud"])
    assert status == 200, body
    events = body["audit_events"]
    assert [e["type"] for e in events] == ["audit.app.delete", "audit.app.env", "audit.app.update"]
    assert {e["actor"] for e in events} == {"dev"}
    assert all(e["org"] == "acme" and e["space"] == "prod" and e["target"] == name for e in events)
    assert "hunter2" not in json.dumps(body), "bodies (secrets) are never recorded"
    # another org's user sees nothing of them; the admin sees everything
    assert api(p, "GET", f"/v1/audit_events?{S}", world["tokens"]["outsider"])[0] == 404
    status, everything = api(p, "GET", "/v1/admin/audit_events?limit=1000", world["admin"])
    types = {e["type"] for e in everything["audit_events"]}
    assert {"audit.user.create", "audit.org.create", "audit.role.update"} <= types
    status, org_events = api(p, "GET", "/v1/orgs/acme/audit_events", world["tokens"]["orgaud"])
    assert status == 200 and any(e["type"] == "audit.role.update" for e in org_events["audit_events"])
