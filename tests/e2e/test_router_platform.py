"""The router as skiffd runs it: route changes made through the API reach it over the bus."""
import json
import time
import urllib.error
import urllib.request


def router_answer(platform, host):
    """(status, X-Skiff-Router-Error) of a request through the platform's router."""
    req = urllib.request.Request(platform.router_url + "/", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("X-Skiff-Router-Error")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("X-Skiff-Router-Error")


def test_a_mapped_route_reaches_the_router_quickly(platform):
    status, body = platform.api("POST", "/v1/apps", {"name": "quick", "no_route": True})
    assert status == 201, body
    platform.wait_for(lambda: router_answer(platform, "quick.localhost")[1] == "unknown-route",
                      10, "the router to answer for an unmapped host")
    latencies = []
    for i in range(5):
        host = f"quick{i}.localhost"
        t0 = time.monotonic()
        status, body = platform.api("POST", "/v1/routes", {"app": "quick", "host": host})
        assert status == 201, body
        # the app has no running instance: once the route is known the router says so
        platform.wait_for(lambda: router_answer(platform, host)[1] == "no-instance", 5,
                          f"{host} to reach the router")
        latencies.append(time.monotonic() - t0)
    latencies.sort()
    print(f"API call to route served by the router: median {latencies[2] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")
    status, _ = platform.api("DELETE", "/v1/routes?app=quick&host=quick0.localhost")
    assert status == 204
    platform.wait_for(lambda: router_answer(platform, "quick0.localhost")[1] == "unknown-route",
                      5, "the unmapped route to leave the router")


def router_table(platform):
    """The table the router serves (its admin endpoint): version and routes."""
    req = urllib.request.Request(f"http://127.0.0.1:{platform.router_admin_port}/routes",
                                 headers={"Authorization": "Bearer " + platform.token})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def test_a_table_the_router_has_is_not_sent_again_and_a_changed_one_is(platform):
    """The bus sends a new version only when the routes differ from the last ones sent."""
    status, body = platform.api("POST", "/v1/apps", {"name": "tbl", "no_route": True})
    assert status == 201, body
    assert platform.api("POST", "/v1/routes", {"app": "tbl", "host": "tbl.localhost"})[0] == 201
    platform.wait_for(lambda: router_answer(platform, "tbl.localhost")[1] == "no-instance", 10,
                      "the route to reach the router")
    before = router_table(platform)["version"]
    # changes that leave every route as it was: an app with none, made and deleted, and a
    # route that is refused (its host is taken)
    status, body = platform.api("POST", "/v1/apps", {"name": "tbl-other", "no_route": True})
    assert status == 201, body
    status, body = platform.api("POST", "/v1/routes", {"app": "tbl-other", "host": "tbl.localhost"})
    assert status == 409, body
    assert platform.api("DELETE", "/v1/apps/tbl-other")[0] in (200, 204)
    # then one that changes the table: it comes as the very next version
    assert platform.api("POST", "/v1/routes", {"app": "tbl", "host": "tbl2.localhost"})[0] == 201
    platform.wait_for(lambda: router_answer(platform, "tbl2.localhost")[1] == "no-instance", 10,
                      "the changed table to reach the router")
    after = router_table(platform)
    assert after["version"] == before + 1, (before, after)
    assert {r["host"] for r in after["routes"]} == {"tbl.localhost", "tbl2.localhost"}, after
