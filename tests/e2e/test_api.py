"""The API refuses every bad request with a 4xx and {"error": {"code", "message"}}, and keeps
running: malformed JSON, unknown fields, missing or wrong token, taken or invalid names,
unknown apps, and hostile uploads."""
import io
import json
import os
import socket
import zipfile

import pytest

from conftest import Platform, tar_gz


def assert_error(result, status, code, *words):
    got_status, body = result
    assert got_status == status, f"expected {status}, got {got_status}: {body!r}"
    assert isinstance(body, dict) and "error" in body, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert message, body
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"
    return message


def alive(p):
    assert p.info()["api_url"] == p.api_url


def zip_bytes(entries):
    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as z:
        for name, content in entries:
            z.writestr(name, content)
    return data.getvalue()


def upload(p, app, raw, token=True):
    return p.api("PUT", f"/v1/apps/{app}/bits", raw=raw, token=token,
                 headers={"Content-Type": "application/octet-stream"})


@pytest.fixture(scope="module")
def api(shared_platform):
    p = shared_platform
    status, _ = p.api("POST", "/v1/apps", {"name": "existing"})
    assert status == 201
    yield p
    # after all that abuse, skiffd still stops cleanly: exit 0, nothing for the sanitizers
    p.stop()
    assert p.proc.returncode == 0, p.output()
    assert "Sanitizer" not in p.output() and "runtime error" not in p.output(), p.output()


def test_info_needs_no_token(api):
    info = api.info()
    assert set(info) >= {"version", "api_url", "router_url", "events_url"}


def test_missing_and_wrong_token(api):
    assert_error(api.api("GET", "/v1/apps", token=False), 401, "unauthorized", "Bearer")
    assert_error(api.api("GET", "/v1/apps", token="not-the-token"), 401, "unauthorized")
    assert_error(api.api("GET", "/v1/apps", headers={"Authorization": "Basic eDp5"}, token=False),
                 401, "unauthorized")
    # a request with a body and a bad token is refused without touching anything
    assert_error(api.api("POST", "/v1/apps", {"name": "sneaky"}, token="nope"), 401,
                 "unauthorized")
    status, body = api.api("GET", "/v1/apps/sneaky")
    assert status == 404
    alive(api)


def test_malformed_json(api):
    for raw in [b"{", b"not json", b"[1, 2]", b'"a string"', b"", b'{"name": "x",}',
                b"\xff\xfe\x00garbage"]:
        status, body = api.api("POST", "/v1/apps", raw=raw,
                               headers={"Content-Type": "application/json"})
        assert_error((status, body), 400, "invalid_json")
    assert_error(api.api("PATCH", "/v1/apps/existing", raw=b"{{{",
                         headers={"Content-Type": "application/json"}), 400, "invalid_json")
    assert_error(api.api("PUT", "/v1/apps/existing/env", raw=b"[]",
                         headers={"Content-Type": "application/json"}), 400, "invalid_json")
    alive(api)


def test_unknown_fields_are_named(api):
    assert_error(api.api("POST", "/v1/apps", {"name": "x1", "instanses": 2}), 400,
                 "unknown_field", "instanses")
    assert_error(api.api("PATCH", "/v1/apps/existing", {"memory": 5}), 400, "unknown_field",
                 "memory")
    assert_error(api.api("POST", "/v1/routes", {"app": "existing", "host": "a.localhost",
                                                "port": 1}), 400, "unknown_field", "port")
    assert_error(api.api("POST", "/v1/apps", {"name": "x2", "processes": [{"type": "web",
                                                                          "cmd": "x"}]}),
                 400, "unknown_field", "cmd")
    # nothing was created by the refused requests
    status, body = api.api("GET", "/v1/apps/x1")
    assert status == 404


def test_invalid_values(api):
    assert_error(api.api("POST", "/v1/apps", {"name": "v1", "instances": -1}), 422,
                 "invalid_value", "instances")
    assert_error(api.api("POST", "/v1/apps", {"name": "v1", "instances": "three"}), 422,
                 "invalid_value", "instances")
    assert_error(api.api("POST", "/v1/apps", {"name": "v1", "memory_mb": 0}), 422,
                 "invalid_value", "memory_mb")
    assert_error(api.api("POST", "/v1/apps", {"name": "v1", "health_check_type": "magic"}), 422,
                 "invalid_value", "health_check_type")
    assert_error(api.api("POST", "/v1/apps", {"name": "v1", "env": {"A": {"nested": 1}}}), 422,
                 "invalid_value", "A")
    assert_error(api.api("POST", "/v1/apps", {"name": "v1", "env": {"A=B": "x"}}), 422,
                 "invalid_value")
    assert_error(api.api("POST", "/v1/apps", {"name": "v1", "routes": ["v1.nowhere.test"]}), 422,
                 "unknown_domain")
    assert_error(api.api("POST", "/v1/apps", {"name": 12}), 422, "invalid_name")
    assert_error(api.api("POST", "/v1/apps", {}), 422, "invalid_value", "name")
    status, _ = api.api("GET", "/v1/apps/v1")
    assert status == 404
    alive(api)


def test_invalid_and_taken_names(api):
    for bad in ["Upper", "-dash", "with space", "x" * 64, "under_score", "ünï", "a/b", ""]:
        assert_error(api.api("POST", "/v1/apps", {"name": bad}), 422, "invalid_name")
    assert_error(api.api("POST", "/v1/apps", {"name": "existing"}), 409, "name_taken", "existing")
    assert_error(api.api("POST", "/v1/domains", {"name": "Bad Domain"}), 422, "invalid_name")
    assert_error(api.api("POST", "/v1/domains", {"name": "localhost"}), 409, "name_taken")


def test_app_routes_are_listed_in_one_order_everywhere(api):
    mine = ["zz-order.localhost", "aa-order.localhost/b", "aa-order.localhost/a",
            "mm-order.localhost"]
    status, body = api.api("POST", "/v1/apps", {"name": "route-order", "routes": mine})
    assert status == 201, body
    status, body = api.api("POST", "/v1/apps", {"name": "route-order-2",
                                                "routes": ["bb-order.localhost"]})
    assert status == 201, body
    status, one = api.api("GET", "/v1/apps/route-order")
    assert status == 200, one
    assert one["routes"] == sorted(mine), one["routes"]
    status, listed = api.api("GET", "/v1/apps")
    assert status == 200, listed
    [app] = [a for a in listed["apps"] if a["name"] == "route-order"]
    assert app["routes"] == one["routes"]


def test_path_with_an_escaped_nul_is_refused_saying_so(api):
    assert_error(api.api("GET", "/v1/apps/a%00b"), 400, "invalid_value", "%00")


def test_too_many_headers_are_refused_not_dropped(api):
    many = {f"x-filler-{i}": "1" for i in range(120)}
    assert_error(api.api("GET", "/v1/apps", headers=many), 431, "too_large", "headers")
    some = {f"x-filler-{i}": "1" for i in range(80)}
    status, body = api.api("GET", "/v1/apps", headers=some)
    assert status == 200, body


def test_unknown_app(api):
    for method, path, body in [("GET", "/v1/apps/ghost", None), ("PATCH", "/v1/apps/ghost",
                                                                  {"instances": 2}),
                               ("DELETE", "/v1/apps/ghost", None),
                               ("POST", "/v1/apps/ghost/start", None),
                               ("POST", "/v1/apps/ghost/stop", None),
                               ("POST", "/v1/apps/ghost/restart", None),
                               ("POST", "/v1/apps/ghost/stage", None),
                               ("GET", "/v1/apps/ghost/env", None),
                               ("PUT", "/v1/apps/ghost/env", {"A": "b"}),
                               ("GET", "/v1/apps/ghost/logs?recent=1", None)]:
        assert_error(api.api(method, path, body), 404, "not_found", "ghost")
    assert_error(upload(api, "ghost", tar_gz([("a.txt", b"x")])), 404, "not_found", "ghost")
    assert_error(api.api("POST", "/v1/routes", {"app": "ghost", "host": "g.localhost"}), 404,
                 "not_found", "ghost")
    assert_error(api.api("GET", "/v1/no/such/endpoint"), 404, "not_found")


def test_env_shows_user_and_system_variables(api):
    assert api.api("PUT", "/v1/apps/existing/env", {"GREETING": "hi", "N": 3})[0] == 200
    status, body = api.api("GET", "/v1/apps/existing/env")
    assert status == 200
    assert body["env"]["GREETING"] == "hi" and body["env"]["N"] == "3"
    vcap = body["system"]["VCAP_APPLICATION"]
    assert vcap["application_name"] == "existing"
    assert "existing.localhost" in vcap["application_uris"]
    assert body["system"]["VCAP_SERVICES"] == {}
    status, body = api.api("PUT", "/v1/apps/existing/env", {"N": None})
    assert "N" not in body["env"]


def test_start_without_droplet_is_refused(api):
    assert_error(api.api("POST", "/v1/apps/existing/start"), 422, "not_staged", "push")


def test_route_taken_by_another_app(api):
    status, _ = api.api("POST", "/v1/apps", {"name": "other-app"})
    assert status == 201
    assert_error(api.api("POST", "/v1/routes", {"app": "other-app", "host": "existing.localhost"}),
                 409, "route_taken")


def test_uploads_that_escape_are_refused_naming_the_entry(api):
    cases = {
        "dotdot": tar_gz([("ok.txt", b"fine"), ("../evil.txt", b"x")]),
        "absolute": tar_gz([("/etc/evil", b"x")]),
        "symlink": tar_gz([("link", ("symlink", "../../../../etc/passwd"))]),
        "abs-symlink": tar_gz([("link", ("symlink", "/etc/passwd"))]),
        "zip-dotdot": zip_bytes([("a/../../evil.txt", b"x")]),
    }
    for name, raw in cases.items():
        msg = assert_error(upload(api, "existing", raw), 422, "unsafe_archive")
        assert any(s in msg for s in ["evil", "link", "/etc"]), (name, msg)
    status, body = api.api("GET", "/v1/apps/existing")
    assert body["package"] is None
    assert not [f for f in os.listdir(os.path.join(api.home, "tmp")) if f.startswith("upload")]


def test_upload_that_is_not_an_archive(api):
    assert_error(upload(api, "existing", b"just some text, not an archive\n" * 10), 422,
                 "not_an_archive")
    assert_error(upload(api, "existing", b""), 422, "not_an_archive")


def test_good_upload_is_accepted(api):
    status, body = upload(api, "existing", tar_gz([("app.py", b"print('hi')\n")]))
    assert status == 201, body
    assert body["bytes"] > 0 and body["package"]
    status, app = api.api("GET", "/v1/apps/existing")
    assert app["package"] == body["package"]
    status, body = upload(api, "existing", zip_bytes([("app.py", b"print('hi')\n")]))
    assert status == 201, body


def test_malformed_http_does_not_hurt_the_daemon(api):
    host, port = api.api_url.split("//")[1].split(":")
    for raw in [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"\x00\x01\x02\x03" * 100,
                b"POST /v1/apps HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                b"GET /v1/info HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 100000 + b"\r\n\r\n"]:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
            if reply:
                assert reply.startswith(b"HTTP/1.1 4"), reply[:100]
    # a client that goes away in the middle of a body
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /v1/apps HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"na")
    alive(api)


def test_keep_alive_serves_several_requests_on_one_connection(api):
    host, port = api.api_url.split("//")[1].split(":")
    req = b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(req * 3)  # pipelined
        data = b""
        while data.count(b"HTTP/1.1 200") < 3:
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk


def test_instance_token_may_only_publish(api):
    status, app = api.api("GET", "/v1/apps/existing")
    # an instance token is made for the app's instances; a forged one is refused
    forged = "skiffi." + app["guid"] + "." + "0" * 64
    assert_error(api.api("GET", "/v1/apps", token=forged), 401, "unauthorized")


def test_upload_over_the_limit_is_refused():
    p = Platform(extra_env={"SKIFF_MAX_UPLOAD_MB": "1"}).start()
    try:
        status, _ = p.api("POST", "/v1/apps", {"name": "big"})
        assert status == 201
        raw = tar_gz([("blob.bin", os.urandom(2 * 1024 * 1024))])
        assert_error(upload(p, "big", raw), 413, "too_large", "limit")
        status, body = p.api("GET", "/v1/apps/big")
        assert body["package"] is None
        alive(p)
    finally:
        p.close()


def test_upload_that_unpacks_too_large_is_refused():
    p = Platform(extra_env={"SKIFF_MAX_UNPACKED_MB": "1"}).start()
    try:
        status, _ = p.api("POST", "/v1/apps", {"name": "bomb"})
        assert status == 201
        raw = tar_gz([("zeros.bin", b"\0" * (3 * 1024 * 1024))])  # compresses to a few KB
        assert len(raw) < 100000
        assert_error(upload(p, "bomb", raw), 413, "too_large")
        alive(p)
    finally:
        p.close()


def test_missing_buildpacks_folder_is_named_at_start_and_on_push():
    missing = "/nonexistent/skiff-buildpacks"
    p = Platform(extra_env={"SKIFF_BUILDPACKS": missing}).start()
    try:
        p.wait_for(lambda: "SKIFF_BUILDPACKS" in p.output(), 10, "the start-up warning")
        r = p.cli("push", "hello", "-p", "examples/python-web")
        assert r.returncode == 1
        assert missing in r.stderr and "SKIFF_BUILDPACKS" in r.stderr, r.stderr
        alive(p)
    finally:
        p.close()


# ---- staging, crashes, logs and restarts through the API --------------------------------------

def procfile_app(command, extra=()):
    return tar_gz([("Procfile", f"web: {command}\n".encode())] + list(extra))


def stage(p, name):
    """Runs a stage and returns (lines, final object)."""
    status, text = p.api("POST", f"/v1/apps/{name}/stage")
    assert status == 200, text
    objs = [json.loads(l) for l in (text if isinstance(text, str) else json.dumps(text)).splitlines()
            if l.strip()]
    assert objs and objs[-1].get("done"), objs
    return objs[:-1], objs[-1]


def app_detail(p, name):
    status, body = p.api("GET", f"/v1/apps/{name}")
    assert status == 200, body
    return body


def test_a_failed_stage_keeps_the_previous_droplet_running(platform):
    p = platform
    server = "python3 -m http.server $PORT"
    assert p.api("PUT", "/v1/apps/steady", {"instances": 1})[0] == 201
    assert upload(p, "steady", procfile_app(server, [("data.txt", b"v1\n")]))[0] == 201
    lines, done = stage(p, "steady")
    assert done["ok"] is True and done["droplet"], done
    assert done["buildpack"] == "procfile" and lines
    assert p.api("POST", "/v1/apps/steady/start")[0] == 200
    p.wait_for(lambda: app_detail(p, "steady")["running"] == 1, 30, "steady running")
    first = app_detail(p, "steady")
    old_guid = first["instances_detail"][0]["guid"]

    # a stage that fails: an unknown buildpack
    assert p.api("PATCH", "/v1/apps/steady", {"buildpacks": ["no-such-buildpack"]})[0] == 200
    assert upload(p, "steady", procfile_app(server, [("data.txt", b"v2\n")]))[0] == 201
    lines, done = stage(p, "steady")
    assert done["ok"] is False
    assert done["error"]["code"] == "staging_failed" and done["error"]["message"]
    after = app_detail(p, "steady")
    assert after["droplet"] == first["droplet"]
    assert after["running"] == 1
    assert after["instances_detail"][0]["guid"] == old_guid  # not even restarted
    status, logs = p.api("GET", "/v1/apps/steady/logs?recent=1")
    assert "[STG/0]" in logs and "Staging failed" in logs


def test_an_app_that_exits_at_once_shows_crashed_and_is_restarted(platform):
    p = platform
    assert p.api("PUT", "/v1/apps/crasher", {"health_check_type": "process"})[0] == 201
    assert upload(p, "crasher", procfile_app("echo going down; exit 3"))[0] == 201
    assert stage(p, "crasher")[1]["ok"]
    assert p.api("POST", "/v1/apps/crasher/start")[0] == 200

    def crashed_twice():
        d = app_detail(p, "crasher")["instances_detail"][0]
        return d["crash_count"] >= 2 and d["exit_status"] == 3 and d
    d = p.wait_for(crashed_twice, 30, "crasher to crash and be restarted")
    assert d["exit_signal"] is None
    status, logs = p.api("GET", "/v1/apps/crasher/logs?recent=1")
    assert "[APP/PROC/WEB/0] OUT going down" in logs
    assert "[CELL/0] ERR" in logs and "exit status 3" in logs
    # after 3 crashes in a row the restart waits (30 s): it shows as CRASHED meanwhile
    d = p.wait_for(lambda: app_detail(p, "crasher")["instances_detail"][0]["crash_count"] >= 4
                   and app_detail(p, "crasher")["instances_detail"][0], 30, "4 crashes")
    assert d["state"] == "CRASHED"


def test_logs_follow_streams_new_lines(platform):
    p = platform
    assert p.api("POST", "/v1/apps", {"name": "chatty"})[0] == 201
    import http.client
    host, port = p.api_url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/v1/apps/chatty/logs?follow=1",
                 headers={"Authorization": "Bearer " + p.token})
    r = conn.getresponse()
    assert r.status == 200
    assert r.getheader("Transfer-Encoding") == "chunked"
    got = r.readline().decode()  # the recent buffer comes first
    assert "[API] OUT Created app chatty" in got
    assert p.api("PUT", "/v1/apps/chatty/env", {"A": "1"})[0] == 200
    line = r.readline().decode()
    assert "[API] OUT Updated environment" in line, line
    assert line[:4].isdigit() and "T" in line.split()[0] and line.split()[0].endswith("Z")
    conn.close()
    # the daemon noticed the follower left and still answers
    alive(p)
    assert p.api("PUT", "/v1/apps/chatty/env", {"A": "2"})[0] == 200


def test_scale_and_rolling_restart(platform):
    p = platform
    assert p.api("PUT", "/v1/apps/roller", {"instances": 2})[0] == 201
    assert upload(p, "roller", procfile_app("python3 -m http.server $PORT"))[0] == 201
    assert stage(p, "roller")[1]["ok"]
    assert p.api("POST", "/v1/apps/roller/start")[0] == 200
    p.wait_for(lambda: app_detail(p, "roller")["running"] == 2, 30, "2 running")
    before = {d["guid"] for d in app_detail(p, "roller")["instances_detail"]}
    addresses = {d["address"] for d in app_detail(p, "roller")["instances_detail"]}
    assert len(addresses) == 2
    status, body = p.api("POST", "/v1/apps/roller/restart?rolling=1")
    assert status == 200, body

    def replaced():
        d = app_detail(p, "roller")
        guids = {i["guid"] for i in d["instances_detail"]}
        return d["running"] == 2 and guids.isdisjoint(before)
    p.wait_for(replaced, 30, "both instances replaced one by one")
    # scale down and up
    assert p.api("PATCH", "/v1/apps/roller", {"instances": 1})[1]["instances"] == 1
    p.wait_for(lambda: len(app_detail(p, "roller")["instances_detail"]) == 1, 10, "1 instance")
    assert p.api("PATCH", "/v1/apps/roller", {"instances": 3})[0] == 200
    p.wait_for(lambda: app_detail(p, "roller")["running"] == 3, 30, "3 running")
    # stop: nothing runs; delete: gone
    assert p.api("POST", "/v1/apps/roller/stop")[1]["state"] == "STOPPED"
    p.wait_for(lambda: app_detail(p, "roller")["running"] == 0, 15, "stopped")
    assert p.api("DELETE", "/v1/apps/roller")[0] == 204
    assert p.api("GET", "/v1/apps/roller")[0] == 404


def test_app_detail_lists_every_instance(platform):
    """GET /v1/apps/NAME once stopped at 256 instances; it lists every slot, up to the API's
    cap of 1000 per process."""
    web = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples",
                       "python-web")
    r = platform.cli("push", "many", "-p", web, "-c", "sleep 600", "--no-route", "--no-start")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_error(platform.api("PATCH", "/v1/apps/many", {"instances": 1001}), 422,
                 "invalid_value", "instances")
    # a process that only sleeps: health-checked as a process, nothing to listen on
    status, body = platform.api("PATCH", "/v1/apps/many",
                                {"instances": 300, "health_check_type": "process"})
    assert status == 200, body
    status, body = platform.api("POST", "/v1/apps/many/start")
    assert status == 200, body
    status, app = platform.api("GET", "/v1/apps/many")
    assert status == 200, app
    assert app["instances"] == 300
    assert sorted(i["index"] for i in app["instances_detail"]) == list(range(300))
    status, body = platform.api("PATCH", "/v1/apps/many", {"instances": 0})
    assert status == 200, body
