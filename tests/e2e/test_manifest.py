"""`skiff push -f manifest.yml`: broken manifests are refused before anything is sent, with an
error that names the file, the line and the key; a good one sets every app up as it says."""
import json
import re
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import BIN_DIR, ROOT, cli_at_home

EXAMPLE = os.path.join(ROOT, "examples", "python-web")


def skiff(home, *args):
    return cli_at_home(home, *args, cwd=home)


@pytest.fixture
def home():
    h = tempfile.mkdtemp(prefix="skiff-manifest-")
    try:
        yield h
    finally:
        shutil.rmtree(h, ignore_errors=True)


BROKEN = [
    ("applications:\n- name: shop\n  memory: 256M\n\n  instance: 2\n",
     'line 5: unknown key "instance" (did you mean "instances"?)'),
    ("applications:\n- name: shop\n  instances: three\n",
     'line 3: "instances" must be a whole number of at least 0, not "three"'),
    ("applications:\n- name: shop\n  memory: 256X\n",
     'line 3: "memory" must be a size like 256M or 1G, not "256X"'),
    ("applications:\n- name: shop\n  env: [A]\n",
     'line 3: "env" must be a map of NAME: value, not a list'),
    ("applications:\n- name: shop\n  no-route: perhaps\n",
     'line 3: "no-route" must be true or false, not "perhaps"'),
    ("applications:\n- name: shop\n  routes:\n  - route: a.localhost\n    port: 80\n",
     'line 5: unknown key "port" in a route'),
    ("applications:\n- path: .\n", 'line 2: an application needs a "name"'),
    ("applications:\n- name: shop\n  buildpacks: python\n",
     'line 3: "buildpacks" must be a list, not a single value'),
    ("applications:\n- name: shop\n  health-check-type: tcp\n",
     'line 3: "health-check-type" must be one of port, http, process, none, not "tcp"'),
    ("applications:\n- name: shop\n  functions:\n  - name: f\n    handler: f.py:h\n"
     "    events:\n    - topic: t\n      filtr: {type: x}\n",
     'line 8: unknown key "filtr" (did you mean "filter"?)'),
    ("applications:\n- name: shop\n  env: {A: b\n", "not valid YAML"),
    ("apps:\n- name: shop\n", 'line 1: unknown key "apps"'),
    ("", 'the manifest is empty'),
]


@pytest.mark.parametrize("text, message", BROKEN)
def test_broken_manifest_names_key_and_line(home, text, message):
    path = os.path.join(home, "manifest.yml")
    with open(path, "w") as f:
        f.write(text)
    r = skiff(home, "push", "-f", path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"{path} {message}" in r.stderr or (message in r.stderr and path in r.stderr), r.stderr
    # nothing was attempted: no API is known here, and the CLI did not get as far as asking
    assert "not logged in" not in r.stderr


def test_manifest_found_in_current_folder(home):
    with open(os.path.join(home, "manifest.yml"), "w") as f:
        f.write("applications:\n- name: shop\n  instancs: 1\n")
    r = skiff(home, "push")
    assert r.returncode == 1
    assert 'manifest.yml line 3: unknown key "instancs" (did you mean "instances"?)' in r.stderr


def test_missing_manifest_file(home):
    r = skiff(home, "push", "-f", os.path.join(home, "nope.yml"))
    assert r.returncode == 1
    assert "cannot read the manifest" in r.stderr and "nope.yml" in r.stderr


def test_manifest_settings_reach_the_app(platform, tmp_path):
    """path is relative to the manifest's folder; instances, memory, env, routes and command
    become the app's settings; naming one app pushes only that one."""
    shutil.copytree(EXAMPLE, tmp_path / "code" / "web")
    manifest = tmp_path / "code" / "manifest.yml"
    manifest.write_text(
        "applications:\n"
        "- name: mf-one\n"
        "  path: web\n"
        "  instances: 2\n"
        "  memory: 64M\n"
        "  env:\n"
        "    GREETING: from-manifest\n"
        "  routes:\n"
        "  - route: mf-one.localhost\n"
        "  - route: api.localhost/mf\n"
        "- name: mf-two\n"
        "  path: web\n"
        "  no-route: true\n")
    r = platform.cli("push", "mf-one", "-f", str(manifest))
    assert r.returncode == 0, r.stdout + r.stderr
    # the URLs printed work as written: the port after the host, the path after the port
    port = platform.router_url.rsplit(":", 1)[1]
    assert f"route: http://api.localhost:{port}/mf\n" in r.stdout, r.stdout
    assert f"route: http://mf-one.localhost:{port}/\n" in r.stdout, r.stdout
    app = json.loads(platform.cli("app", "mf-one", "--json", check=True).stdout)
    assert app["instances"] == 2
    assert app["memory_mb"] == 64
    assert app["env"]["GREETING"] == "from-manifest"
    assert sorted(app["routes"]) == ["api.localhost/mf", "mf-one.localhost"]
    running = [i for i in app["instances_detail"] if i["state"] == "RUNNING"]
    assert len(running) == 2
    names = [a["name"] for a in json.loads(platform.cli("apps", "--json", check=True).stdout)["apps"]]
    assert "mf-two" not in names
    # flags win over the manifest for the app they name
    r = platform.cli("push", "mf-two", "-f", str(manifest), "-i", "1", "--no-start")
    assert r.returncode == 0, r.stdout + r.stderr
    app = json.loads(platform.cli("app", "mf-two", "--json", check=True).stdout)
    assert app["routes"] == [] and app["state"] == "STOPPED"


def test_manifest_functions_become_function_apps_with_event_mappings(platform, tmp_path):
    shutil.copytree(os.path.join(ROOT, "examples", "functions"), tmp_path / "fns")
    manifest = tmp_path / "manifest.yml"
    manifest.write_text(
        "functions:\n"
        "- name: mf-upper\n"
        "  path: fns\n"
        "  handler: upper.js:handle\n"
        "  max-instances: 2\n"
        "  events:\n"
        "  - topic: mf-words\n"
        "    filter: {type: text.new, subject: 'docs/*'}\n")

    def mappings():
        r = platform.cli("event-mappings", "--json", check=True)
        data = json.loads(r.stdout)
        items = next(v for v in data.values() if isinstance(v, list)) if isinstance(data, dict) else data
        return [m for m in items if m.get("app") == "mf-upper"]

    for attempt in range(2):  # pushing again changes nothing about the mappings
        r = platform.cli("push", "-f", str(manifest))
        assert r.returncode == 0, r.stdout + r.stderr
        app = json.loads(platform.cli("app", "mf-upper", "--json", check=True).stdout)
        assert app["kind"] == "function"
        assert app["function"]["handler"] == "upper.js:handle"
        (m,) = mappings()
        assert m["topic"] == "mf-words"
        # a value ending in * is a prefix filter
        assert sorted(m["filters"]) == ["subject^=docs/", "type=text.new"]
        assert m["max_instances"] == 2
    r = platform.cli("invoke", "mf-upper", "abc")
    assert r.returncode == 0 and "ABC" in r.stdout, r.stdout + r.stderr


def test_one_app_flags_with_a_several_app_manifest_are_refused(home):
    path = os.path.join(home, "manifest.yml")
    with open(path, "w") as f:
        f.write("applications:\n- name: a\n- name: b\n")
    for flags in (["-i", "2"], ["-p", home], ["-m", "1G"]):
        r = skiff(home, "push", "-f", path, *flags)
        assert r.returncode == 2, (flags, r.stderr)
        assert "apply to one app: name it" in r.stderr


def test_manifest_in_the_current_folder_is_used_for_the_app_it_names(platform, tmp_path):
    shutil.copytree(EXAMPLE, tmp_path / "web")
    (tmp_path / "manifest.yml").write_text(
        "applications:\n- name: here\n  path: web\n  env:\n    GREETING: from-cwd\n")

    def skiff_here(*args):
        return subprocess.run([os.path.join(BIN_DIR, "skiff"), *args], env=platform.env(),
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)

    r = skiff_here("push", "here")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Using the manifest manifest.yml" in r.stdout
    app = json.loads(platform.cli("app", "here", "--json", check=True).stdout)
    assert app["env"] == {"GREETING": "from-cwd"}
    # an app the manifest does not list is pushed from the flags, and says so
    r = skiff_here("push", "elsewhere", "-p", "web")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "./manifest.yml has no app named elsewhere" in r.stdout
    assert json.loads(platform.cli("app", "elsewhere", "--json", check=True).stdout)["env"] == {}
    # --no-manifest leaves it out even for the app it lists
    r = skiff_here("push", "here", "-p", "web", "--no-manifest", "--no-start")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Using the manifest" not in r.stdout


CF_MANIFEST = """\
---
version: 1
applications:
- name: ((app))
  path: web
  instances: ((instances))
  memory: ((memory))
  disk_quota: 256M
  stack: cflinuxfs4
  lifecycle: buildpack
  default-route: true
  health-check-type: port
  health-check-interval: 5
  readiness-health-check-type: process
  log-rate-limit-per-second: 16K
  metadata:
    labels: {team: ((team))}
    annotations: {note: "pushed by ((team))"}
  env:
    GREETING: hello from ((team)) in ((space))
  routes:
  - route: ((app)).localhost
    protocol: http1
    options:
      loadbalancing: least-connection
  - route: api.localhost/((app))
    protocol: http2
    https_only: true
  services: [((app))-db]
  sidecars:
  - name: exporter
    process_types: [web]
    command: sleep 3600
- name: ((app))-canary
  path: web
  random-route: true
  instances: 1
"""


def test_cloud_foundry_manifest_with_vars(platform, tmp_path):
    """A Cloud Foundry manifest with ((vars)) from a vars file and --var: the keys Skiff has are
    applied, each other one is said once per app, and the push succeeds."""
    shutil.copytree(EXAMPLE, tmp_path / "web")
    manifest = tmp_path / "manifest.yml"
    manifest.write_text(CF_MANIFEST)
    (tmp_path / "vars.yml").write_text("app: cfmf\ninstances: 1\nmemory: 64M\nteam: web\n")
    # a variable missing: refused before anything is created, naming it and its line
    r = platform.cli("push", "-f", str(manifest), "--vars-file", str(tmp_path / "vars.yml"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "line 20: no value for the variable ((space))" in r.stderr, r.stderr
    assert "cfmf" not in platform.cli("apps", check=True).stdout

    # services: are bound before the first start
    platform.cli("cups", "cfmf-db", "-p", '{"uri": "db://x"}', check=True)
    r = platform.cli("push", "-f", str(manifest), "--vars-file", str(tmp_path / "vars.yml"),
                     "--var", "space=dev", "--var", "instances=2", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Bound service instance cfmf-db to cfmf" in r.stdout, r.stdout
    env = platform.api("GET", "/v1/apps/cfmf/env")[1]
    assert env["system"]["VCAP_SERVICES"]["user-provided"][0]["credentials"] == {"uri": "db://x"}
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    said = [w for w in warnings if ': cfmf: "stack" has no effect here: ' in w]
    assert len(said) == 1, warnings
    # protocol: http1 and http2 are the routes' protocols, with no warning
    assert not [w for w in warnings if '"protocol"' in w], warnings
    routes = {(r["host"], r["path"]): r for r in platform.api("GET", "/v1/routes")[1]["routes"]}
    assert routes[("cfmf.localhost", "")]["protocol"] == "http1"
    assert routes[("api.localhost", "/cfmf")]["protocol"] == "http2"
    # https_only beside the protocol; not given: off
    assert routes[("api.localhost", "/cfmf")]["https_only"] is True
    assert routes[("cfmf.localhost", "")]["https_only"] is False
    # health-check timing, readiness checks and log rate limits are applied, not warned about
    for key in ("health-check-interval", "readiness-health-check-type",
                "log-rate-limit-per-second"):
        assert not [w for w in warnings if f'"{key}"' in w], (key, warnings)
    assert not [w for w in warnings if "cfmf-canary" in w], warnings
    app = json.loads(platform.cli("app", "cfmf", "--json", check=True).stdout)
    assert app["instances"] == 2  # --var wins over the vars file
    assert (app["health_check_interval"], app["readiness_health_check_type"],
            app["log_rate_limit_per_second"]) == (5, "process", 16384), app
    assert app["memory_mb"] == 64 and app["disk_mb"] == 256
    assert [(s["name"], s["process_types"], s["command"]) for s in app["sidecars"]] == \
        [("exporter", ["web"], "sleep 3600")]
    assert not [w for w in warnings if '"sidecars"' in w], warnings
    assert app["env"]["GREETING"] == "hello from web in dev"
    assert app["metadata"] == {"labels": {"team": "web"},
                               "annotations": {"note": "pushed by web"}}, app["metadata"]
    assert not [w for w in warnings if '"metadata"' in w], warnings
    assert sorted(app["routes"]) == ["api.localhost/cfmf", "cfmf.localhost"]
    routes = json.loads(platform.cli("routes", "--json", check=True).stdout)["routes"]
    balance = {(r["host"], r["path"]): r["balance"] for r in routes if r["app"] == "cfmf"}
    assert balance == {("cfmf.localhost", ""): "least-connection",
                       ("api.localhost", "/cfmf"): "round-robin"}, balance

    # random-route: NAME-adjective-noun on the shared domain, kept by the next push
    canary = json.loads(platform.cli("app", "cfmf-canary", "--json", check=True).stdout)
    (route,) = canary["routes"]
    assert re.fullmatch(r"cfmf-canary-[a-z]+-[a-z]+\.localhost", route), route
    r = platform.cli("push", "cfmf-canary", "-f", str(manifest), "--vars-file",
                     str(tmp_path / "vars.yml"), "--var", "space=dev", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    canary = json.loads(platform.cli("app", "cfmf-canary", "--json", check=True).stdout)
    assert canary["routes"] == [route]


def test_bad_docker_and_vars_are_refused_before_anything_is_sent(home):
    path = os.path.join(home, "manifest.yml")
    with open(path, "w") as f:
        f.write("applications:\n- name: img\n  docker:\n    username: bob\n")
    r = skiff(home, "push", "-f", path)
    assert r.returncode == 1
    assert "line 4: \"docker\" needs \"image\"" in r.stderr, r.stderr
    with open(path, "w") as f:
        f.write("applications:\n- name: ((n))\n")
    r = skiff(home, "push", "-f", path, "--var", "n")
    assert r.returncode == 2 and '--var needs NAME=VALUE, not "n"' in r.stderr, r.stderr
    r = skiff(home, "push", "-f", path, "--vars-file", os.path.join(home, "none.yml"))
    assert r.returncode == 1 and "cannot read the vars file" in r.stderr, r.stderr
    assert "not logged in" not in r.stderr


def test_labels_and_annotations(platform, tmp_path):
    """Cloud Foundry's metadata on apps: set by a manifest or `skiff set-label`, shown by
    `skiff app` and `skiff labels`, selected on by `skiff apps --labels`; keys and values are
    checked, and a stranger's app is not there to label."""
    p = platform
    for name in ("shop", "blog", "tools"):
        r = p.cli("push", name, "-p", str(EXAMPLE), "--no-start")
        assert r.returncode == 0, r.stdout + r.stderr
    manifest = tmp_path / "manifest.yml"
    manifest.write_text("applications:\n- name: shop\n  path: %s\n"
                        "  metadata:\n    labels: {env: prod, tier: web}\n"
                        "    annotations: {contact: \"ops@example.com, on call\"}\n" % EXAMPLE)
    r = p.cli("push", "-f", str(manifest), "--no-start", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = p.cli("set-label", "app", "blog", "env=staging", "example.com/team=content")
    assert r.returncode == 0 and "Set the labels for app blog." in r.stdout, r.stdout + r.stderr
    shown = p.cli("app", "shop").stdout
    assert "labels:      env=prod, tier=web" in shown, shown
    assert "annotations: contact=ops@example.com, on call" in shown, shown
    r = p.cli("labels", "app", "blog")
    assert r.returncode == 0 and "example.com/team" in r.stdout and "content" in r.stdout, r.stdout

    def selected(selector):
        r = p.cli("apps", "--labels", selector, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        return sorted(a["name"] for a in json.loads(r.stdout)["apps"])
    assert selected("env") == ["blog", "shop"]
    assert selected("env=prod") == ["shop"]
    assert selected("env!=prod") == ["blog", "tools"]
    assert selected("!env") == ["tools"]
    assert selected("env in (prod, staging),tier") == ["shop"]
    assert selected("example.com/team notin (content)") == ["shop", "tools"]
    r = p.cli("apps", "--labels", "env in prod")
    assert r.returncode == 1 and "label_selector" in r.stderr, r.stdout + r.stderr
    # the unfiltered list is still whole after a filtered one (only the whole list is kept)
    assert sorted(a["name"] for a in json.loads(p.cli("apps", "--json").stdout)["apps"]) == \
        ["blog", "shop", "tools"]

    r = p.cli("unset-label", "app", "shop", "tier")
    assert r.returncode == 0, r.stdout + r.stderr
    assert p.api("GET", "/v1/apps/shop/metadata")[1]["labels"] == {"env": "prod"}
    # a later manifest push sets what it lists and leaves the others
    assert p.cli("set-label", "app", "shop", "owner=ann").returncode == 0
    r = p.cli("push", "-f", str(manifest), "--no-start", timeout=300)
    assert p.api("GET", "/v1/apps/shop/metadata")[1]["labels"] == \
        {"env": "prod", "tier": "web", "owner": "ann"}

    # what is refused, and why
    for body, why in (({"labels": {"-bad": "x"}}, "label key"),
                      ({"labels": {"Example.com/x": "y"}}, "label key"),
                      ({"labels": {"env": "a b"}}, "the value is text of at most 63"),
                      ({"labels": {"env": "x" * 64}}, "the value is text of at most 63"),
                      ({"labels": {"env": 3}}, "the value is text"),
                      ({"annotations": {"note": "x" * 5001}}, "at most 5000"),
                      ({"labels": {f"k{i}": "v" for i in range(65)}}, "at most 64 labels"),
                      ({"labels": []}, "object"),
                      ({"tags": {}}, "unknown field \"tags\"")):
        status, err = p.api("PATCH", "/v1/apps/blog/metadata", body)
        assert status in (400, 422) and why in err["error"]["message"], (body.keys(), status, err)
    r = p.cli("set-label", "app", "blog", "novalue")
    assert r.returncode == 2, r.stdout + r.stderr
    r = p.cli("set-label", "route", "blog", "a=b")
    assert r.returncode == 2 and "labels are kept on apps" in r.stderr, r.stderr
    assert p.api("PATCH", "/v1/apps/nobody/metadata", {"labels": {"a": "b"}})[0] == 404
    # deleting an app takes its metadata with it: a new app of the same name starts bare
    assert p.cli("delete", "blog", "-f").returncode == 0
    assert p.cli("push", "blog", "-p", str(EXAMPLE), "--no-start").returncode == 0
    assert p.api("GET", "/v1/apps/blog/metadata")[1] == {"labels": {}, "annotations": {}}
