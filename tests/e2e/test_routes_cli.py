"""The route commands of the CLI (map-route, unmap-route, routes, domains, create-domain,
delete-domain) and what they do to traffic through the router."""
import json
import os
import urllib.error
import urllib.request

from conftest import ROOT, out

PYTHON_WEB = os.path.join(ROOT, "examples", "python-web")


def routes(platform):
    r = platform.cli("routes", "--json", check=True)
    return {(rt["host"], rt["path"]): rt["app"] for rt in json.loads(r.stdout)["routes"]}


def routes_balance(platform):
    r = platform.cli("routes", "--json", check=True)
    return {(rt["host"], rt["path"]): rt["balance"] for rt in json.loads(r.stdout)["routes"]}


def router_table(platform, field="balance"):
    """{(host, path): balance (or another field)} as the router serves it (its admin port's
    /routes, which needs the admin token)."""
    req = urllib.request.Request(f"http://127.0.0.1:{platform.router_admin_port}/routes",
                                 headers={"Authorization": "Bearer " + platform.token})
    with urllib.request.urlopen(req, timeout=5) as r:
        return {(rt["host"], rt["path"]): rt[field] for rt in json.load(r)["routes"]}


def through_router(platform, host, path="/"):
    """(status, body, router error or None): the router marks its own answers with
    X-Skiff-Router-Error, so an answer without it came from the app."""
    req = urllib.request.Request(platform.router_url + path, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode(errors="replace"), r.headers.get("X-Skiff-Router-Error")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), e.headers.get("X-Skiff-Router-Error")


def reaches_app(platform, host, path="/"):
    status, body, router_error = through_router(platform, host, path)
    return router_error is None and status < 500


def new_app(platform, name):
    status, body = platform.api("POST", "/v1/apps", {"name": name, "no_route": True})
    assert status == 201, body


def test_map_unmap_and_list_routes(platform):
    new_app(platform, "ra")
    new_app(platform, "rb")
    r = platform.cli("map-route", "ra", "ra.localhost")
    assert r.returncode == 0, out(r)
    assert "Mapped ra.localhost to ra." in r.stdout
    r = platform.cli("map-route", "ra", "api.localhost", "--path", "/v1")
    assert r.returncode == 0, out(r)
    r = platform.cli("map-route", "rb", "api.localhost/v2")  # the path may be part of HOST
    assert r.returncode == 0, out(r)
    assert routes(platform) == {("ra.localhost", ""): "ra", ("api.localhost", "/v1"): "ra",
                                ("api.localhost", "/v2"): "rb"}
    r = platform.cli("routes", check=True)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["host", "path", "app", "instances", "balance", "protocol",
                                "https-only"]
    assert any(l.split()[:3] == ["api.localhost", "/v1", "ra"] for l in lines), r.stdout
    r = platform.cli("app", "ra", check=True)
    assert "api.localhost/v1" in r.stdout

    # taken by another app: the API's message, exit 1
    r = platform.cli("map-route", "rb", "api.localhost", "--path", "/v1")
    assert r.returncode == 1, out(r)
    assert r.stderr.startswith("error: ") and len(r.stderr.strip()) > len("error: ")
    # a host outside every domain
    r = platform.cli("map-route", "ra", "ra.example.invalid")
    assert r.returncode == 1, out(r)

    r = platform.cli("unmap-route", "ra", "api.localhost", "--path", "/v1")
    assert r.returncode == 0, out(r)
    assert ("api.localhost", "/v1") not in routes(platform)

    # deleting an app unmaps its routes
    platform.cli("delete", "rb", "-f", check=True)
    assert all(app != "rb" for app in routes(platform).values())


def test_balance_is_a_per_route_option_the_router_receives(platform):
    new_app(platform, "lb")
    r = platform.cli("map-route", "lb", "lb.localhost", "--balance", "least-connection")
    assert r.returncode == 0, out(r)
    assert "Mapped lb.localhost to lb (least-connection)." in r.stdout
    platform.cli("map-route", "lb", "lb.localhost", "--path", "/rr", check=True)

    assert routes_balance(platform) == {("lb.localhost", ""): "least-connection",
                                        ("lb.localhost", "/rr"): "round-robin"}  # the default
    status, body = platform.api("GET", "/v1/routes?app=lb")
    assert status == 200 and {rt["balance"] for rt in body["routes"]} == {
        "least-connection", "round-robin"}, body
    lines = platform.cli("routes", check=True).stdout.splitlines()
    assert any(l.split() == ["lb.localhost", "lb", "0", "least-connection", "http1", "no"]
               for l in lines), lines

    platform.wait_for(lambda: router_table(platform).get(("lb.localhost", "")) == "least-connection"
                      and router_table(platform).get(("lb.localhost", "/rr")) == "round-robin",
                      timeout=10, what="the router to receive both routes with their balance")

    # a value the router does not know: a message naming the allowed ones, exit 1, no change
    r = platform.cli("map-route", "lb", "lb.localhost", "--balance", "fastest")
    assert r.returncode == 1, out(r)
    assert r.stderr.startswith("error: ") and "round-robin" in r.stderr \
        and "least-connection" in r.stderr, out(r)
    r = platform.cli("map-route", "lb", "new.localhost", "--balance", "least")
    assert r.returncode == 1, out(r)
    assert ("new.localhost", "") not in routes(platform)
    status, body = platform.api("POST", "/v1/routes", {"app": "lb", "host": "lb.localhost",
                                                       "balance": 1})
    assert status == 422 and body["error"]["code"] == "invalid_value", body
    assert "least-connection" in body["error"]["message"], body
    assert routes_balance(platform)[("lb.localhost", "")] == "least-connection"

    # mapping a route the app has again changes its balance, in the API and the router
    platform.cli("map-route", "lb", "lb.localhost", "--balance", "round-robin", check=True)
    assert routes_balance(platform)[("lb.localhost", "")] == "round-robin"
    platform.wait_for(lambda: router_table(platform).get(("lb.localhost", "")) == "round-robin",
                      timeout=10, what="the router to receive the changed balance")


def router_version(platform):
    """The version of the table the router serves (its admin port's /routes)."""
    req = urllib.request.Request(f"http://127.0.0.1:{platform.router_admin_port}/routes",
                                 headers={"Authorization": "Bearer " + platform.token})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)["version"]


def test_a_change_that_leaves_the_table_as_it_was_sends_no_new_version(platform):
    """Mapping a route an app has already tells the routers nothing: no new table version goes
    out (each router would parse it and save it with an fsync), while the next real change
    still does, as one version."""
    new_app(platform, "same")
    platform.cli("map-route", "same", "same-a.localhost", check=True)
    platform.wait_for(lambda: ("same-a.localhost", "") in router_table(platform), timeout=10,
                      what="the router to serve same-a.localhost")
    before = router_version(platform)
    for _ in range(3):  # each one asks the bus for a table, the same as the one served
        status, body = platform.api("POST", "/v1/routes", {"app": "same",
                                                           "host": "same-a.localhost"})
        assert status in (200, 201), body
        assert ("same-a.localhost", "") in routes(platform)
    platform.cli("map-route", "same", "same-b.localhost", check=True)
    platform.wait_for(lambda: ("same-b.localhost", "") in router_table(platform), timeout=10,
                      what="the router to serve same-b.localhost")
    assert router_version(platform) == before + 1


def test_protocol_is_a_per_route_option_the_router_receives(platform):
    new_app(platform, "gr")
    r = platform.cli("map-route", "gr", "gr.localhost", "--protocol", "http2")
    assert r.returncode == 0, out(r)
    assert "Mapped gr.localhost to gr (http2)." in r.stdout
    platform.cli("map-route", "gr", "gr.localhost", "--path", "/h1", check=True)
    r = platform.cli("routes", "--json", check=True)
    got = {(rt["host"], rt["path"]): rt["protocol"] for rt in json.loads(r.stdout)["routes"]}
    assert got[("gr.localhost", "")] == "http2" and got[("gr.localhost", "/h1")] == "http1"
    platform.wait_for(lambda: router_table(platform, "protocol").get(("gr.localhost", ""))
                      == "http2", timeout=10, what="the router to receive the http2 route")

    # a value the router does not speak: a message naming the allowed ones, exit 1, no change
    r = platform.cli("map-route", "gr", "gr.localhost", "--protocol", "http3")
    assert r.returncode == 1, out(r)
    assert "http1" in r.stderr and "http2" in r.stderr, out(r)
    status, body = platform.api("POST", "/v1/routes", {"app": "gr", "host": "gr.localhost",
                                                       "protocol": 2})
    assert status == 422 and body["error"]["code"] == "invalid_value", body

    # mapped again with the other protocol: changed, the balance kept
    platform.cli("map-route", "gr", "gr.localhost", "--balance", "least-connection", check=True)
    platform.cli("map-route", "gr", "gr.localhost", "--protocol", "http1", check=True)
    r = platform.cli("routes", "--json", check=True)
    rt = [x for x in json.loads(r.stdout)["routes"] if (x["host"], x["path"]) == ("gr.localhost", "")]
    assert rt[0]["protocol"] == "http1" and rt[0]["balance"] == "least-connection", rt
    platform.wait_for(lambda: router_table(platform, "protocol").get(("gr.localhost", ""))
                      == "http1", timeout=10, what="the router to receive the change")


def test_protocol_and_https_only_are_kept_apart(platform):
    """A route has both a protocol and https_only: each is set by its own flag, changing one
    keeps the other, in the API, the CLI's table and the router's table."""
    new_app(platform, "both")
    r = platform.cli("map-route", "both", "both.localhost", "--protocol", "http2", "--https-only")
    assert r.returncode == 0, out(r)
    assert "Mapped both.localhost to both (http2); plain HTTP requests are redirected to HTTPS." \
        in r.stdout, out(r)

    def api_route():
        rts = json.loads(platform.cli("routes", "--json", check=True).stdout)["routes"]
        return [x for x in rts if (x["host"], x["path"]) == ("both.localhost", "")][0]

    rt = api_route()
    assert (rt["protocol"], rt["https_only"], rt["balance"]) == ("http2", True, "round-robin"), rt
    row = [l.split() for l in platform.cli("routes", check=True).stdout.splitlines()
           if l.startswith("both.localhost")]
    assert row and row[0][-2:] == ["http2", "yes"], row
    platform.wait_for(lambda: router_table(platform, "protocol").get(("both.localhost", ""))
                      == "http2" and router_table(platform, "https_only").get(
                          ("both.localhost", "")) is True,
                      timeout=10, what="the router to receive protocol and https_only")
    # the protocol changed: https_only kept
    platform.cli("map-route", "both", "both.localhost", "--protocol", "http1", check=True)
    rt = api_route()
    assert (rt["protocol"], rt["https_only"]) == ("http1", True), rt
    # https_only turned off through the API: the protocol kept
    status, body = platform.api("POST", "/v1/routes", {"app": "both", "host": "both.localhost",
                                                       "https_only": False, "protocol": None})
    assert status == 201 and body["https_only"] is False and body["protocol"] == "http1", body
    platform.wait_for(lambda: router_table(platform, "https_only").get(("both.localhost", ""))
                      is False and router_table(platform, "protocol").get(
                          ("both.localhost", "")) == "http1",
                      timeout=10, what="the router to receive the change")


def test_domains(platform):
    r = platform.cli("domains", check=True)
    assert r.stdout.splitlines()[0].split() == ["name", "type"]
    assert any(l.split() == ["localhost", "shared"] for l in r.stdout.splitlines())
    r = platform.cli("create-domain", "example.test")
    assert r.returncode == 0, out(r)
    names = [d["name"] for d in json.loads(platform.cli("domains", "--json", check=True).stdout)["domains"]]
    assert "example.test" in names
    new_app(platform, "dom")
    r = platform.cli("map-route", "dom", "dom.example.test")
    assert r.returncode == 0, out(r)
    r = platform.cli("create-domain", "example.test")
    assert r.returncode == 1, out(r)


def domain_names(platform):
    r = platform.cli("domains", "--json", check=True)
    return [d["name"] for d in json.loads(r.stdout)["domains"]]


def test_delete_domain(platform):
    platform.cli("create-domain", "gone.test", check=True)
    # without a terminal to ask, -f is needed, and nothing is deleted
    r = platform.cli("delete-domain", "gone.test", input="")
    assert r.returncode != 0 and "-f" in r.stderr, out(r)
    assert "gone.test" in domain_names(platform)
    r = platform.cli("delete-domain", "gone.test", "-f")
    assert r.returncode == 0 and "Deleted the domain gone.test" in r.stdout, out(r)
    assert "gone.test" not in domain_names(platform)
    assert not any(l.split()[:1] == ["gone.test"]
                   for l in platform.cli("domains", check=True).stdout.splitlines())
    # gone: a second delete, and a route on it, are refused
    r = platform.cli("delete-domain", "gone.test", "-f")
    assert r.returncode == 1 and "no domain gone.test" in r.stderr, out(r)
    status, body = platform.api("DELETE", "/v1/domains/gone.test")
    assert status == 404, body
    new_app(platform, "gonehost")
    r = platform.cli("map-route", "gonehost", "www.gone.test")
    assert r.returncode == 1, out(r)
    # created again, it starts empty
    platform.cli("create-domain", "gone.test", check=True)
    platform.cli("delete-domain", "gone.test", "-f", check=True)


def test_delete_domain_is_refused_while_routes_use_it(platform):
    platform.cli("create-domain", "busy.test", check=True)
    new_app(platform, "busyapp")
    platform.cli("map-route", "busyapp", "www.busy.test", check=True)
    platform.cli("map-route", "busyapp", "api.busy.test", "--path", "/v1", check=True)
    status, body = platform.api("DELETE", "/v1/domains/busy.test")
    assert status == 422 and body["error"]["code"] == "domain_in_use", body
    message = body["error"]["message"]
    assert "www.busy.test" in message and "api.busy.test/v1" in message, body
    r = platform.cli("delete-domain", "busy.test", "-f")
    assert r.returncode == 1 and "www.busy.test" in r.stderr and "unmap" in r.stderr, out(r)
    assert "busy.test" in domain_names(platform)
    assert routes(platform).get(("www.busy.test", "")) == "busyapp"  # nothing was deleted
    # many routes: the first ten are named, then how many more
    for i in range(11):
        platform.cli("map-route", "busyapp", f"h{i:02}.busy.test", check=True)
    status, body = platform.api("DELETE", "/v1/domains/busy.test")
    message = body["error"]["message"]
    assert status == 422 and "and 3 more" in message and message.count(".busy.test") == 10, body
    for i in range(11):
        platform.cli("unmap-route", "busyapp", f"h{i:02}.busy.test", check=True)
    platform.cli("unmap-route", "busyapp", "www.busy.test", check=True)
    r = platform.cli("delete-domain", "busy.test", "-f")
    assert r.returncode == 1 and "api.busy.test/v1" in r.stderr and "www." not in r.stderr, out(r)
    platform.cli("unmap-route", "busyapp", "api.busy.test", "--path", "/v1", check=True)
    platform.cli("delete-domain", "busy.test", "-f", check=True)
    assert "busy.test" not in domain_names(platform)


def test_the_localhost_domain_cannot_be_deleted(platform):
    r = platform.cli("delete-domain", "localhost", "-f")
    assert r.returncode == 1 and "built-in" in r.stderr, out(r)
    status, body = platform.api("DELETE", "/v1/domains/localhost")
    assert status == 422 and "built-in" in body["error"]["message"], body
    assert "localhost" in domain_names(platform)


def test_push_maps_default_route_unless_told_not_to(platform):
    r = platform.cli("push", "web1", "-p", PYTHON_WEB)
    assert r.returncode == 0, out(r)
    assert routes(platform).get(("web1.localhost", "")) == "web1"
    r = platform.cli("push", "web2", "-p", PYTHON_WEB, "--no-route", "--no-start")
    assert r.returncode == 0, out(r)
    assert all(app != "web2" for app in routes(platform).values())

    # traffic reaches the app through the router, then stops when unmapped
    platform.wait_for(lambda: through_router(platform, "web1.localhost")[0] == 200, timeout=10,
                      what="web1.localhost to answer through the router")
    status, body, _ = through_router(platform, "web1.localhost")
    assert "from instance 0" in body
    platform.cli("map-route", "web1", "other.localhost", "--path", "/x", check=True)
    # host matching ignores case and port; the app itself answers 404 for /x/y
    platform.wait_for(lambda: reaches_app(platform, "OTHER.localhost:1234", "/x/y"), timeout=5,
                      what="a new route to reach the app")
    platform.cli("unmap-route", "web1", "other.localhost", "--path", "/x", check=True)
    platform.wait_for(lambda: through_router(platform, "other.localhost", "/x/y")[2] is not None,
                      timeout=5, what="an unmapped route to be answered by the router")
    assert through_router(platform, "other.localhost", "/x/y")[0] == 404
