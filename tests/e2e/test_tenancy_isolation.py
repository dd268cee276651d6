"""Two users in two orgs push apps of the same name, map routes, publish and read events:
neither sees, changes, invokes, logs or receives anything of the other's."""
import json
import re
import urllib.parse

import pytest

from conftest import Platform, http_get, tar_gz, wait_for

PASSWORD = "a long enough password"


def call(p, token, method, path, body=None, raw=None, headers=None):
    return p.api(method, path, body=body, token=token, raw=raw, headers=headers)


# Answers every POST with 200 and prints its body: an app that events are delivered to.
LISTENER = b"""
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        print("got", body.decode(errors="replace"), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
http.server.HTTPServer(("", int(os.environ["PORT"])), H).serve_forever()
"""


def push(p, token, space, name, secret, files=None):
    """Creates, uploads, stages and starts a small web app answering with its secret."""
    q = "space=" + urllib.parse.quote(space, safe="")
    status, body = call(p, token, "PUT", f"/v1/apps/{name}?{q}", {"env": {"SECRET": secret}})
    assert status in (200, 201), body
    app = tar_gz(files or [("Procfile", b"web: python3 -m http.server $PORT\n"),
                           ("index.html", secret.encode())])
    status, body = call(p, token, "PUT", f"/v1/apps/{name}/bits?{q}", raw=app,
                        headers={"Content-Type": "application/octet-stream"})
    assert status == 201, body
    status, text = call(p, token, "POST", f"/v1/apps/{name}/stage?{q}")
    assert status == 200 and '"ok":true' in text.replace(" ", ""), text
    status, body = call(p, token, "POST", f"/v1/apps/{name}/start?{q}")
    assert status == 200, body
    wait_for(lambda: call(p, token, "GET", f"/v1/apps/{name}?{q}")[1].get("running") == 1,
             timeout=60, what=f"{space}/{name} running")
    return call(p, token, "GET", f"/v1/apps/{name}?{q}")[1]


@pytest.fixture(scope="module")
def two_orgs():
    p = Platform().start()
    admin = p.token
    try:
        for user, org in (("alice", "a"), ("bob", "b")):
            assert call(p, admin, "POST", "/v1/users", {"name": user, "password": PASSWORD})[0] == 201
            assert call(p, admin, "POST", "/v1/orgs", {"name": org})[0] == 201
            assert call(p, admin, "POST", f"/v1/orgs/{org}/spaces", {"name": "dev"})[0] == 201
            assert call(p, admin, "PUT",
                        f"/v1/orgs/{org}/spaces/dev/users/{user}/roles/SpaceDeveloper")[0] == 204
        tokens = {}
        for user in ("alice", "bob"):
            status, body = call(p, None, "POST", "/v1/auth/token",
                                {"grant_type": "password", "username": user, "password": PASSWORD})
            assert status == 200, body
            tokens[user] = body["access_token"]
        apps = {"alice": push(p, tokens["alice"], "a/dev", "shop", "alice-secret"),
                "bob": push(p, tokens["bob"], "b/dev", "shop", "bob-secret")}
        yield {"p": p, "admin": admin, "tokens": tokens, "apps": apps}
    finally:
        p.close()


A, B = "space=a%2Fdev", "space=b%2Fdev"


def test_same_name_in_two_orgs_runs_two_apps(two_orgs):
    apps = two_orgs["apps"]
    assert apps["alice"]["guid"] != apps["bob"]["guid"]
    assert apps["alice"]["space"] == "a/dev" and apps["bob"]["space"] == "b/dev"
    # the first took shop.localhost; the second a host naming its space and org
    assert apps["alice"]["routes"] == ["shop.localhost"]
    assert apps["bob"]["routes"] == ["shop-dev-b.localhost"]
    p = two_orgs["p"]
    assert "alice-secret" in http_get(p.router_url + "/", host="shop.localhost")[1]
    assert "bob-secret" in http_get(p.router_url + "/", host="shop-dev-b.localhost")[1]


def test_neither_sees_the_others_app(two_orgs):
    p, bob = two_orgs["p"], two_orgs["tokens"]["bob"]
    status, listed = call(p, bob, "GET", f"/v1/apps?{B}")
    assert status == 200 and [a["space"] for a in listed["apps"]] == ["b/dev"]
    alice_guid = two_orgs["apps"]["alice"]["guid"]
    for method, path in [("GET", f"/v1/apps?{A}"), ("GET", f"/v1/apps/shop?{A}"),
                         ("GET", f"/v1/apps/{alice_guid}"), ("GET", f"/v1/apps/{alice_guid}?{B}"),
                         ("GET", f"/v1/apps/shop/env?{A}"), ("GET", f"/v1/apps/shop/logs?{A}&recent=1"),
                         ("GET", f"/v1/routes?{A}"), ("GET", f"/v1/topics?{A}"),
                         ("GET", f"/v1/event-mappings?{A}"), ("GET", "/v1/orgs/a"),
                         ("GET", "/v1/orgs/a/spaces"), ("GET", "/v1/orgs/a/spaces/dev/users")]:
        status, body = call(p, bob, method, path)
        assert status == 404, (method, path, status, body)
    # nor in his own space's lists
    status, routes = call(p, bob, "GET", f"/v1/routes?{B}")
    assert [r["host"] for r in routes["routes"]] == ["shop-dev-b.localhost"]


def test_neither_changes_or_invokes_the_others_app(two_orgs):
    p, bob = two_orgs["p"], two_orgs["tokens"]["bob"]
    alice_guid = two_orgs["apps"]["alice"]["guid"]
    attempts = [("PATCH", f"/v1/apps/shop?{A}", {"instances": 0}),
                ("PATCH", f"/v1/apps/{alice_guid}", {"instances": 0}),
                ("PUT", f"/v1/apps/shop/env?{A}", {"SECRET": "owned"}),
                ("POST", f"/v1/apps/shop/stop?{A}", None),
                ("POST", f"/v1/apps/{alice_guid}/restart", None),
                ("POST", f"/v1/apps/shop/invoke?{A}", {"x": 1}),
                ("DELETE", f"/v1/apps/{alice_guid}", None),
                ("DELETE", f"/v1/apps/shop?{A}", None),
                ("POST", f"/v1/routes?{A}", {"app": "shop", "host": "evil.localhost"}),
                ("POST", f"/v1/event-mappings?{A}", {"app": "shop", "topic": "orders"})]
    for method, path, body in attempts:
        status, out = call(p, bob, method, path, body)
        assert status == 404, (method, path, status, out)
    # a route of the other's app cannot be unmapped from one's own space either
    status, out = call(p, bob, "DELETE", f"/v1/routes?{B}&host=shop.localhost")
    assert status == 404, out
    # a route of one's own space cannot be pointed at the other's app (it is not there)
    status, out = call(p, bob, "POST", f"/v1/routes?{B}",
                       {"app": alice_guid, "host": "steal.localhost"})
    assert status == 404, out
    # ... and the other's app is untouched
    alice = call(p, two_orgs["tokens"]["alice"], "GET", f"/v1/apps/shop?{A}")[1]
    assert alice["state"] == "STARTED" and alice["running"] == 1
    assert alice["env"] == {"SECRET": "alice-secret"}
    assert alice["routes"] == ["shop.localhost"]
    assert "alice-secret" in http_get(p.router_url + "/", host="shop.localhost")[1]


def test_topics_of_the_same_name_are_separate(two_orgs):
    p, tokens = two_orgs["p"], two_orgs["tokens"]
    for user, q in (("alice", A), ("bob", B)):
        status, body = call(p, tokens[user], "POST", f"/v1/topics/orders/events?{q}",
                            {"from": user})
        assert status == 202, body
    for user, q, other in (("alice", A, "bob"), ("bob", B, "alice")):
        status, text = call(p, tokens[user], "GET", f"/v1/topics/orders/events?{q}&from=start")
        assert status == 200
        lines = [json.loads(l) for l in str(text).splitlines() if l.strip()] \
            if isinstance(text, str) else [text]
        seen = json.dumps(lines)
        assert f'"from": "{user}"' in seen and f'"from": "{other}"' not in seen, seen
        status, topics = call(p, tokens[user], "GET", f"/v1/topics?{q}")
        assert [t["name"] for t in topics["topics"] if t["name"] == "orders"] == ["orders"]
        # shown by their names in the space, never by the fabric's
        assert not any(re.match(r"s[0-9a-f]{32}\.", t["name"]) for t in topics["topics"])
    # publishing into or reading from the other's space is refused as if it did not exist
    assert call(p, tokens["bob"], "POST", f"/v1/topics/orders/events?{A}", {"x": 1})[0] == 404
    assert call(p, tokens["bob"], "POST", f"/v1/topics/a%2Fdev%2Forders/events?{B}", {"x": 1})[0] == 404
    assert call(p, tokens["bob"], "GET", f"/v1/topics/a%2Fdev%2Forders/events?{B}&limit=1")[0] == 404
    # with a role there, ORG/SPACE/NAME reaches it
    admin = two_orgs["admin"]
    assert call(p, admin, "PUT", "/v1/orgs/a/spaces/dev/users/bob/roles/SpaceAuditor")[0] == 204
    try:
        assert call(p, tokens["bob"], "GET", f"/v1/topics/a%2Fdev%2Forders/events?{B}&limit=1")[0] == 200
        assert call(p, tokens["bob"], "POST", f"/v1/topics/a%2Fdev%2Forders/events?{B}",
                    {"x": 1})[0] == 403
    finally:
        assert call(p, admin, "DELETE", "/v1/orgs/a/spaces/dev/users/bob/roles/SpaceAuditor")[0] == 204
        assert call(p, admin, "DELETE", "/v1/orgs/a/users/bob/roles/OrgUser")[0] == 204


def test_logs_are_each_apps_own(two_orgs):
    p, tokens = two_orgs["p"], two_orgs["tokens"]
    http_get(p.router_url + "/", host="shop.localhost")
    wait_for(lambda: "RTR" in call(p, tokens["alice"], "GET", f"/v1/apps/shop/logs?{A}&recent=1")[1],
             timeout=10, what="alice's access line")
    status, logs = call(p, tokens["bob"], "GET", f"/v1/apps/shop/logs?{B}&recent=1")
    assert status == 200
    assert "alice" not in logs and two_orgs["apps"]["alice"]["guid"] not in logs


def test_private_domains_are_their_orgs(two_orgs):
    p, tokens, admin = two_orgs["p"], two_orgs["tokens"], two_orgs["admin"]
    # an org's domain is made by its manager (or an admin), not by a developer
    assert call(p, tokens["alice"], "POST", "/v1/orgs/a/domains", {"name": "alice.test"})[0] == 403
    assert call(p, admin, "POST", "/v1/orgs/a/domains", {"name": "alice.test"})[0] == 201
    status, out = call(p, tokens["alice"], "POST", f"/v1/routes?{A}",
                       {"app": "shop", "host": "www.alice.test"})
    assert status == 201, out
    wait_for(lambda: "alice-secret" in http_get(p.router_url + "/", host="www.alice.test")[1],
             timeout=10, what="the route in the router")
    # the other org neither sees it nor maps a host in it
    names = [d["name"] for d in call(p, tokens["bob"], "GET", "/v1/domains")[1]["domains"]]
    assert "alice.test" not in names and "localhost" in names
    assert "alice.test" in [d["name"] for d in call(p, tokens["alice"], "GET", "/v1/domains")[1]["domains"]]
    status, out = call(p, tokens["bob"], "POST", f"/v1/routes?{B}",
                       {"app": "shop", "host": "evil.alice.test"})
    assert status == 422 and out["error"]["code"] == "unknown_domain", out


def test_a_mapping_consumes_another_spaces_topic_only_with_a_role_there(two_orgs):
    p, tokens, admin = two_orgs["p"], two_orgs["tokens"], two_orgs["admin"]
    bob = tokens["bob"]
    push(p, bob, "b/dev", "listener", "-", files=[("Procfile", b"web: python3 server.py\n"),
                                                  ("server.py", LISTENER)])
    # (a body cannot say whose right the mapping stands on either)
    mapping = {"app": "listener", "topic": "a/dev/payments", "retries": 0,
               "granted_by_guid": "local-admin"}
    # without a role in a/dev the space is not there for him
    status, out = call(p, bob, "POST", f"/v1/event-mappings?{B}", mapping)
    assert status == 404, out
    assert call(p, bob, "POST", f"/v1/event-mappings?{B}",
                {"app": "listener", "topic": "a/nowhere/payments"})[0] == 404
    assert call(p, admin, "PUT", "/v1/orgs/a/spaces/dev/users/bob/roles/SpaceAuditor")[0] == 204
    mapping_id = None
    try:
        # a body cannot name the topic's space by guid and skip the check
        alices_space = [sp["guid"] for sp in call(p, admin, "GET", "/v1/orgs/a/spaces")[1]["spaces"]
                        if sp["name"] == "dev"][0]
        status, out = call(p, bob, "POST", f"/v1/event-mappings?{B}",
                           {"app": "listener", "topic": "mine", "topic_space_guid": alices_space})
        assert status == 201, out
        assert out["topic"] == "mine" and "topic_space_guid" not in out, out
        assert call(p, bob, "DELETE", f"/v1/event-mappings/{out['id']}?{B}")[0] == 204
        # with a role there that reads events, the mapping consumes a/dev's topic
        status, out = call(p, bob, "POST", f"/v1/event-mappings?{B}", mapping)
        assert status == 201, out
        mapping_id = out["id"]
        assert out["topic"] == "a/dev/payments", out
        assert out["granted_by_guid"] not in ("local-admin", ""), out
        # his own space's topic of the same name is not what it consumes
        assert call(p, bob, "POST", f"/v1/topics/payments/events?{B}", {"pay": "bob-own"})[0] == 202
        assert call(p, tokens["alice"], "POST", f"/v1/topics/payments/events?{A}",
                    {"pay": "alice-to-bob"})[0] == 202

        def delivered():
            logs = call(p, bob, "GET", f"/v1/apps/listener/logs?{B}&recent=1")[1]
            return logs if "alice-to-bob" in logs else None
        logs = wait_for(delivered, timeout=30, what="alice's event delivered to bob's listener")
        assert "bob-own" not in logs
        # counted once the listener's answer is back (a moment after it printed the event)
        wait_for(lambda: call(p, bob, "GET", f"/v1/event-mappings/{mapping_id}?{B}")[1]
                 .get("delivered", 0) >= 1, timeout=30, what="the delivery counted")
        # the mapping is bob's: alice neither sees nor removes it
        assert call(p, tokens["alice"], "GET", f"/v1/event-mappings/{mapping_id}?{A}")[0] == 404

        # it stands on bob's role in a/dev: once that is taken, nothing more reaches him
        def state():
            return call(p, bob, "GET", f"/v1/event-mappings/{mapping_id}?{B}")[1]
        before = state()
        assert call(p, admin, "DELETE", "/v1/orgs/a/spaces/dev/users/bob/roles/SpaceAuditor")[0] == 204
        assert call(p, tokens["alice"], "POST", f"/v1/topics/payments/events?{A}",
                    {"pay": "after-revoke"})[0] == 202
        # once the invoker has seen the event (its end moved), it has decided about it
        after = wait_for(lambda: (lambda s: s if s["end_offset"] > before["end_offset"] else None)(state()),
                         timeout=30, what="the mapping hearing of the new event")
        assert "suspended" in (after["last_error"] or ""), after
        assert after["delivered"] == before["delivered"] and after["cursor"] == before["cursor"], after
        assert after["in_flight"] == 0, after
        assert "after-revoke" not in call(p, bob, "GET", f"/v1/apps/listener/logs?{B}&recent=1")[1]
        # given back, the role lets the mapping catch up from where it stopped
        assert call(p, admin, "PUT", "/v1/orgs/a/spaces/dev/users/bob/roles/SpaceAuditor")[0] == 204
        wait_for(lambda: "after-revoke" in call(p, bob, "GET", f"/v1/apps/listener/logs?{B}&recent=1")[1],
                 timeout=30, what="the held event delivered once the role is back")
        wait_for(lambda: state()["last_error"] is None, timeout=30, what="the mapping resumed")
    finally:
        if mapping_id:
            assert call(p, bob, "DELETE", f"/v1/event-mappings/{mapping_id}?{B}")[0] == 204
        assert call(p, admin, "DELETE", "/v1/orgs/a/spaces/dev/users/bob/roles/SpaceAuditor")[0] == 204
        assert call(p, admin, "DELETE", "/v1/orgs/a/users/bob/roles/OrgUser")[0] == 204
