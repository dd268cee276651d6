"""End-to-end: functions inside apps. An app (examples/shop: a Flask web app, Flask vendored as
`make examples` does it) pushed with a manifest whose application lists functions: each function runs from the app's own
droplet as its own process type, receives its events, scales to zero and back on its own and
logs as [APP/FUNC/NAME/n], while the web process serves its route untouched. Removing a
function from the manifest removes it and its event mappings. Without a manifest,
create-function, map-event APP/FUNC, invoke APP/FUNC and delete-function do the same. And a
hostile tenant cannot point a handler out of the droplet nor reach another space's function."""
import json
import os
import shutil
import subprocess
import threading

import pytest

from conftest import ROOT, out, wait_for, http_get

SHOP = os.path.join(ROOT, "examples", "shop")
FLASK_WHEELS = ["Flask", "Werkzeug", "Jinja2", "MarkupSafe", "itsdangerous", "click"]


def cli_ok(platform, *args):
    r = platform.cli(*args, timeout=300)
    assert r.returncode == 0, out(r)
    return r


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """The shop's vendor/ as `make examples` makes it: wheels of Debian's python3-flask and its
    dependencies (scripts/debian_wheels.py), made once for the module."""
    vendor = tmp_path_factory.mktemp("shop-wheels") / "vendor"
    made = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "debian_wheels.py"),
                           "-d", str(vendor), *FLASK_WHEELS], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert len(list(vendor.glob("*.whl"))) == len(FLASK_WHEELS)
    return str(vendor)


def shop_copy(tmp_path, functions, wheels):
    """examples/shop in tmp_path/shop, its vendor/ the wheels, with a manifest listing
    `functions` (YAML text)."""
    app = os.path.join(str(tmp_path), "shop")
    shutil.copytree(SHOP, app, ignore=shutil.ignore_patterns("vendor", "__pycache__"))
    shutil.copytree(wheels, os.path.join(app, "vendor"))
    with open(os.path.join(app, "manifest.yml"), "w") as f:
        f.write("applications:\n- name: shop\n  path: .\n  routes: [{route: shop.localhost}]\n")
        if functions:
            f.write("  functions:\n" + functions)
    return app


RESIZE = """\
  - name: resize
    handler: shop/images.py:resize
    events: [{topic: uploads, filter: {type: image.uploaded}}]
    max-instances: 3
    idle-grace: 2s
"""
REPORT = """\
  - name: nightly-report
    handler: shop/report.py:run
    events: [{schedule: "0 3 * * *"}]
"""


def running(platform, app="shop"):
    """The process types of the app's RUNNING instances, sorted."""
    status, a = platform.api("GET", f"/v1/apps/{app}")
    assert status == 200, a
    return sorted(i["process_type"] for i in a["instances_detail"] if i["state"] == "RUNNING")


def functions(platform, app="shop"):
    status, body = platform.api("GET", f"/v1/apps/{app}/functions")
    assert status == 200, body
    return {f["name"]: f for f in body["functions"]}


def mappings(platform):
    return json.loads(cli_ok(platform, "event-mappings", "--json").stdout)["event_mappings"]


def logs(platform, target="shop"):
    return platform.cli("logs", target, "--recent").stdout


def web(platform, path="/", method="GET", data=None):
    if method == "GET":
        return http_get(platform.router_url + path, host="shop.localhost")
    import urllib.request
    import urllib.error
    req = urllib.request.Request(platform.router_url + path, data=data, method=method,
                                 headers={"Host": "shop.localhost"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_function_pulled_out_of_an_app_by_its_manifest(platform, tmp_path, wheels):
    app = shop_copy(tmp_path, RESIZE + REPORT, wheels)
    r = cli_ok(platform, "push", "-f", os.path.join(app, "manifest.yml"))
    assert "Function shop/resize runs shop/images.py:resize" in r.stdout, out(r)
    assert "Mapped the topic uploads to shop/resize." in r.stdout, out(r)
    assert "Mapped the schedule 0 3 * * * to shop/nightly-report." in r.stdout, out(r)
    status, text = web(platform)
    assert status == 200 and text.startswith("shop: 3 products"), (status, text)
    # the web process serves through Flask, imported from the app's own vendored copy (the
    # buildpack installed vendor/ into the droplet), not from the machine's
    assert "Installing requirements from vendor/ (no package index is configured)" in r.stdout, \
        out(r)
    status, text = web(platform, "/flask")
    assert status == 200, (status, text)
    which = json.loads(text)
    assert which["version"] == "2.2.2", which
    assert which["file"].startswith("/home/vcap/app/.python_packages/flask/"), which
    status, text = web(platform, "/nothing-here")
    assert (status, text) == (404, "not found\n"), (status, text)

    # skiff app lists the functions; they start at zero
    r = cli_ok(platform, "app", "shop")
    assert "shop/resize: shop/images.py:resize (python), 0 running, up to 3" in r.stdout, r.stdout
    assert "shop/nightly-report: shop/report.py:run (python)" in r.stdout, r.stdout
    assert running(platform) == ["web"]
    fns = functions(platform)
    assert fns["resize"]["runtime"] == "python" and fns["resize"]["max_instances"] == 3, fns
    web_guid = [i["guid"] for i in platform.api("GET", "/v1/apps/shop")[1]["instances_detail"]]

    # the web route publishes an upload; the function takes it from zero, with the app's code
    # (shop/images.py imports shop/catalog.py from the droplet)
    status, text = web(platform, "/upload?name=cat.png", "POST", b"PNG")
    assert status == 202, (status, text)
    # from now on the web route is asked all the time: that keeps web busy, not the function
    answers, stop = [], threading.Event()

    def ask_web():
        while not stop.wait(0.1):
            answers.append(web(platform)[0])
    asker = threading.Thread(target=ask_web, daemon=True)
    asker.start()
    wait_for(lambda: "resized cat.png to cat.thumb.png" in logs(platform), 60, "resize ran")
    assert "[APP/FUNC/RESIZE/0]" in logs(platform)
    # an event of another type is not the function's
    cli_ok(platform, "emit", "uploads", "{}", "--type", "video.uploaded", "--subject", "v.mp4")
    ms = {m["process"]: m for m in mappings(platform)}
    assert set(ms) == {"resize", "nightly-report"}, ms
    wait_for(lambda: {m["process"]: m for m in mappings(platform)}["resize"]["delivered"] == 1,
             30, "delivered once")

    # it goes back to zero on its own while web keeps serving, and comes back on the next event
    try:
        wait_for(lambda: running(platform) == ["web"], 60, "resize back to zero, web serving")
    finally:
        stop.set()
        asker.join()
    assert len(answers) > 10 and set(answers) == {200}, answers
    cli_ok(platform, "emit", "uploads", "{}", "--type", "image.uploaded", "--subject", "dog.png")
    wait_for(lambda: "resized dog.png to dog.thumb.png" in logs(platform), 60, "back from zero")

    # invoke APP/FUNC calls it and prints its reply; logs APP/FUNC shows only its lines
    r = cli_ok(platform, "invoke", "shop/resize", "{}", "--subject", "owl.png")
    assert json.loads(r.stdout) == {"image": "owl.png", "thumbnail": "owl.thumb.png"}, r.stdout
    lines = [ln for ln in logs(platform, "shop/resize").splitlines() if ln]
    assert lines and all("[APP/FUNC/RESIZE/" in ln for ln in lines), lines
    # the web instance was never touched by any of it
    now = [i["guid"] for i in platform.api("GET", "/v1/apps/shop")[1]["instances_detail"]
           if i["process_type"] == "web"]
    assert now == web_guid[:1], (now, web_guid)

    # removed from the manifest: the function and its mapping go at once, said on a line; the
    # other function and the web route stay, its mappings now the events its entry lists
    app = shop_copy(tmp_path / "again", REPORT.replace('{schedule: "0 3 * * *"}',
                                                       '{topic: reports}'), wheels)
    r = cli_ok(platform, "push", "-f", os.path.join(app, "manifest.yml"))
    assert ("Removing function shop/resize and its event mappings: the manifest no longer "
            "lists it.") in r.stdout, out(r)
    assert ("Removing the mapping of the schedule 0 3 * * * to shop/nightly-report: the "
            "manifest no longer lists it.") in r.stdout, out(r)
    assert "Mapped the topic reports to shop/nightly-report." in r.stdout, out(r)
    assert set(functions(platform)) == {"nightly-report"}
    assert [(m["process"], m["topic"]) for m in mappings(platform)] == \
        [("nightly-report", "reports")], mappings(platform)
    r = platform.cli("invoke", "shop/resize", "{}")
    assert r.returncode != 0 and "has no function or process named 'resize'" in r.stderr, out(r)
    status, text = web(platform)
    assert status == 200 and text.startswith("shop: 3 products"), (status, text)


def test_create_function_without_a_manifest(platform, tmp_path, wheels):
    app = shop_copy(tmp_path, "", wheels)
    os.remove(os.path.join(app, "manifest.yml"))
    cli_ok(platform, "push", "shop", "-p", app)
    r = cli_ok(platform, "create-function", "shop", "thumbs", "--handler",
               "shop/images.py:resize", "--max-instances", "2")
    assert "Function shop/thumbs runs shop/images.py:resize (python)" in r.stdout, out(r)
    # its policy allows 2: a mapping asking for 3 would be capped, so it is refused
    r = platform.cli("map-event", "shop/thumbs", "pics", "--max-instances", "3")
    assert r.returncode != 0, out(r)
    assert "skiff autoscale shop --process thumbs --max 3" in out(r), out(r)
    # and the reverse: a mapping asking for 2 keeps the function's max from going under it,
    # whether by its own PUT or by `skiff autoscale --process`
    cli_ok(platform, "map-event", "shop/thumbs", "held", "--max-instances", "2")
    held = [m for m in mappings(platform) if m["topic"] == "held"][0]
    status, body = platform.api("PUT", "/v1/apps/shop/functions/thumbs",
                                {"handler": "shop/images.py:resize", "max_instances": 1})
    assert status == 422 and body["error"]["code"] == "invalid_value", body
    assert f"skiff unmap-event shop/thumbs --id {held['id'][:8]}" in body["error"]["message"], body
    assert functions(platform)["thumbs"]["max_instances"] == 2
    r = platform.cli("autoscale", "shop", "--process", "thumbs", "--max", "1")
    assert r.returncode != 0 and "topic held" in out(r), out(r)
    cli_ok(platform, "unmap-event", "shop/thumbs", "--id", held["id"][:8])
    cli_ok(platform, "map-event", "shop/thumbs", "pics", "--idle-grace", "2s")
    r = cli_ok(platform, "event-mappings")
    assert "shop/thumbs" in r.stdout, r.stdout
    cli_ok(platform, "emit", "pics", "{}", "--type", "t", "--subject", "sea.png")
    wait_for(lambda: "resized sea.png" in logs(platform, "shop/thumbs"), 60, "thumbs ran")
    wait_for(lambda: running(platform) == ["web"], 60, "thumbs back to zero")
    # unmap-event APP/FUNC removes only that function's mapping
    cli_ok(platform, "map-event", "shop", "pics")
    cli_ok(platform, "unmap-event", "shop/thumbs", "pics")
    assert [(m["app"], m["process"]) for m in mappings(platform)] == [("shop", "web")]
    cli_ok(platform, "map-event", "shop/thumbs", "pics")
    r = cli_ok(platform, "delete-function", "shop", "thumbs", "-f")
    assert "Deleted the function shop/thumbs and its event mappings." in r.stdout, out(r)
    assert functions(platform) == {}
    assert [m["process"] for m in mappings(platform)] == ["web"], mappings(platform)
    r = platform.cli("delete-function", "shop", "thumbs", "-f")
    assert r.returncode != 0 and "has no function named 'thumbs'" in r.stderr, out(r)


def test_node_and_shell_functions_inside_an_app(platform, tmp_path, wheels):
    """The other runtimes of function snippets run from an app's droplet the same way."""
    app = shop_copy(tmp_path, "", wheels)
    os.remove(os.path.join(app, "manifest.yml"))
    with open(os.path.join(app, "shop", "hooks.js"), "w") as f:
        f.write("const os = require('os');\n"
                "exports.onOrder = async (event) => ({order: event.data.id, node: true});\n")
    with open(os.path.join(app, "shop", "count.sh"), "w") as f:
        f.write('#!/bin/sh\ndata=$(cat)\nprintf \'{"chars": %d, "type": "%s"}\\n\' '
                '"$(printf %s "$data" | wc -c)" "$CE_TYPE"\n')
    cli_ok(platform, "push", "shop", "-p", app)
    cli_ok(platform, "create-function", "shop", "orders", "--handler", "shop/hooks.js:onOrder")
    cli_ok(platform, "create-function", "shop", "count", "--handler", "shop/count.sh:main")
    fns = functions(platform)
    assert (fns["orders"]["runtime"], fns["count"]["runtime"]) == ("node", "shell"), fns
    r = cli_ok(platform, "invoke", "shop/orders", '{"id": 7}')
    assert json.loads(r.stdout) == {"order": 7, "node": True}, r.stdout
    r = cli_ok(platform, "invoke", "shop/count", "hello", "--type", "t.count")
    assert json.loads(r.stdout) == {"chars": 5, "type": "t.count"}, r.stdout
    status, text = web(platform)
    assert status == 200, (status, text)


def test_a_hostile_tenant_and_bad_functions(platform, tmp_path, wheels):
    admin = platform.token
    app = shop_copy(tmp_path, RESIZE, wheels)
    cli_ok(platform, "push", "-f", os.path.join(app, "manifest.yml"))

    def put(name, body, token=admin, app="shop", space=""):
        return platform.api("PUT", f"/v1/apps/{app}/functions/{name}{space}", body, token=token)

    # handlers that leave the droplet, or that a shell would read, are refused with a reason
    for handler in ["../../etc/passwd:x", "/etc/passwd.py:x", "shop/../../../x.py:f",
                    "shop/images.py:x;id", "im'ages.py:f", "$(id).py:f", "images.rb:f", "nocolon"]:
        status, body = put("evil", {"handler": handler})
        assert status == 422 and body["error"]["code"] == "invalid_value", (handler, status, body)
    for name in ["web", "Bad", "a_b", "x" * 70]:
        status, body = put(name, {"handler": "shop/images.py:resize"})
        assert status in (404, 422), (name, status, body)
    status, body = put("ok", {"handler": "shop/images.py:resize", "max_instances": 0})
    assert status == 422, body
    status, body = put("ok", {"handler": "shop/images.py:resize", "owner": "me"})
    assert status == 400 and body["error"]["code"] == "unknown_field", body
    status, body = platform.api("PUT", "/v1/apps/shop/functions/ok", raw=b"{not json",
                                headers={"Content-Type": "application/json"})
    assert status == 400, body
    assert set(functions(platform)) == {"resize"}
    # who made and who removed a function is on record
    status, body = put("audited", {"handler": "shop/images.py:resize"})
    assert status == 201, body
    status, _ = platform.api("DELETE", "/v1/apps/shop/functions/audited")
    assert status == 204
    status, body = platform.api("GET", "/v1/audit_events?limit=50")
    assert status == 200, body
    types = [(e["type"], e["target"]) for e in body["audit_events"]]
    assert ("audit.function.update", "shop") in types, types
    assert ("audit.function.delete", "shop") in types, types

    # another space's developer: the shop of the default space is not theirs to see, invoke,
    # map or change, even through an app of their own called shop
    def ok(method, path, body=None):
        status, res = platform.api(method, path, body, token=admin)
        assert status in (200, 201, 204), (method, path, status, res)
        return res
    ok("POST", "/v1/users", {"name": "mallory", "password": "correct horse battery"})
    ok("POST", "/v1/orgs", {"name": "evil"})
    ok("POST", "/v1/orgs/evil/spaces", {"name": "lair"})
    ok("PUT", "/v1/orgs/evil/spaces/lair/users/mallory/roles/SpaceDeveloper")
    status, tok = platform.api("POST", "/v1/auth/token", {
        "grant_type": "password", "username": "mallory", "password": "correct horse battery"},
        token=False)
    assert status == 200, tok
    mallory = tok["access_token"]
    ok("PUT", "/v1/apps/shop?space=evil/lair", {"no_route": True})
    lair = "?space=evil/lair"
    status, body = platform.api("POST", f"/v1/apps/shop/invoke{lair}&process=resize", {"x": 1},
                                token=mallory)
    assert status == 404, body
    status, body = platform.api("POST", f"/v1/event-mappings{lair}",
                                {"app": "shop", "process": "resize", "topic": "uploads"},
                                token=mallory)
    assert status == 404, body
    status, body = platform.api("GET", f"/v1/apps/shop/functions{lair}", token=mallory)
    assert status == 200 and body["functions"] == [], body
    for space in ["?space=default/dev", ""]:
        status, body = platform.api("GET", f"/v1/apps/shop/functions{space}", token=mallory)
        assert status in (403, 404), (space, status, body)
        status, body = platform.api("DELETE", f"/v1/apps/shop/functions/resize{space}",
                                    token=mallory)
        assert status in (403, 404), (space, status, body)
        status, body = put("resize", {"handler": "shop/report.py:run"}, token=mallory,
                           space=space)
        assert status in (403, 404), (space, status, body)
    fn = functions(platform)["resize"]
    assert fn["handler"] == "shop/images.py:resize", fn

    # a function must live in an app, and may not take the name of another process type
    r = platform.cli("push", "solo", "--function", os.path.join(ROOT, "examples", "functions",
                                                                "resize.py") + ":handle")
    assert r.returncode == 0, out(r)
    status, body = put("x", {"handler": "resize.py:handle"}, app="solo")
    assert status == 422 and "itself a function" in body["error"]["message"], body
    status, body = platform.api("PUT", "/v1/apps/shop",
                                {"processes": [{"type": "worker", "command": "sleep 1000",
                                                "instances": 0}]})
    assert status == 200, body
    status, body = put("worker", {"handler": "shop/images.py:resize"})
    assert status == 409 and body["error"]["code"] == "name_taken", body
    assert set(functions(platform)) == {"resize"}
    # the daemon is still there for everyone
    assert platform.proc.poll() is None
    status, text = web(platform)
    assert status == 200, (status, text)


def test_a_link_in_the_droplet_does_not_lead_the_function_server_out(platform, tmp_path, wheels):
    """The platform writes the function server into the droplet when it lacks one: a droplet
    whose buildpack left .skiff as a link to a host folder gets nothing written there."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(str(outside), 0o777)
    bp = tmp_path / "linky"
    os.makedirs(str(bp / "bin"))
    scripts = {
        "detect": "#!/bin/sh\necho linky\n",
        "compile": f"#!/bin/sh\nln -s {outside} \"$1/.skiff\"\n",
        "release": "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: python3 app.py\\n'\n",
    }
    for name, text in scripts.items():
        path = bp / "bin" / name
        path.write_text(text)
        os.chmod(str(path), 0o755)
    app = shop_copy(tmp_path, "", wheels)
    os.remove(os.path.join(app, "manifest.yml"))
    cli_ok(platform, "push", "shop", "-p", app, "-b", str(bp))
    cli_ok(platform, "create-function", "shop", "resize", "--handler", "shop/images.py:resize")
    status, body = platform.api("PATCH", "/v1/apps/shop",
                                {"processes": [{"type": "resize", "instances": 1}]})
    assert status == 200, body
    wait_for(lambda: "Cannot start function resize: cannot put the function server into the "
             "droplet" in logs(platform), 60, "the start refused")
    assert os.listdir(str(outside)) == []
    status, text = web(platform)
    assert status == 200, (status, text)
