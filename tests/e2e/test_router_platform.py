"""The router as skiffd runs it: route changes made through the API reach it over the bus."""
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
