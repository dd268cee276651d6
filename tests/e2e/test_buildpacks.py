"""Staging with the built-in buildpacks, run for real: every example is pushed with the CLI,
staged by the buildpack that detects it (or the one named with -b), and answers HTTP on its
instance's port. A staging that fails says why and leaves the running droplet alone; an app
that outgrows its memory limit is reported as out of memory."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT, app_json, http_get, out

EXAMPLES = os.path.join(ROOT, "examples")


def running_ports(platform, name):
    """Where the running instances are: their addresses (IP:PORT)."""
    app = app_json(platform, name)
    return [i["address"] for i in app["instances_detail"] if i["state"] == "RUNNING"]


def push_and_get(platform, name, path, *args):
    r = platform.cli("push", name, "-p", path, *args, timeout=300)
    assert r.returncode == 0, out(r)
    ports = platform.wait_for(lambda: running_ports(platform, name), timeout=30,
                              what=f"{name} running")
    return r, http_get(f"http://{ports[0]}/")


@pytest.fixture
def binary_example(tmp_path):
    """examples/binary with its program built (no binaries live in git)."""
    code = tmp_path / "binary"
    shutil.copytree(os.path.join(EXAMPLES, "binary"), code,
                    ignore=shutil.ignore_patterns("hello-server"))
    subprocess.run(["make", "-s", "-C", str(code)], check=True, capture_output=True)
    return str(code)


@pytest.mark.parametrize("example,buildpack,answer", [
    ("python-web", "python", "hello from instance 0"),
    ("node-web", "nodejs", "hello from node instance 0"),
    ("static", "staticfile", "Hello from a static site on Skiff"),
])
def test_example_is_detected_and_served(platform, example, buildpack, answer):
    r, (status, body) = push_and_get(platform, example, os.path.join(EXAMPLES, example))
    assert f"detected buildpack {buildpack}" in r.stdout, out(r)
    assert status == 200 and answer in body, (status, body)


def test_prebuilt_binary_with_procfile(platform, binary_example):
    r, (status, body) = push_and_get(platform, "bin", binary_example)
    assert "detected buildpack binary" in r.stdout, out(r)
    assert status == 200 and "from a prebuilt binary" in body, body
    logs = platform.cli("logs", "bin", "--recent", check=True).stdout
    assert "GET / HTTP/1.1" in logs, logs


def test_named_buildpack(platform, tmp_path):
    # an index.html beside app.py: detection would choose python; -b staticfile wins
    code = tmp_path / "site"
    shutil.copytree(os.path.join(EXAMPLES, "static"), code)
    (code / "tool.py").write_text("print('not the app')\n")
    r, (status, body) = push_and_get(platform, "site", str(code), "-b", "staticfile")
    assert "with buildpack staticfile" in r.stdout, out(r)
    assert status == 200 and "static site" in body


def test_unknown_buildpack_is_refused_with_the_known_ones(platform):
    r = platform.cli("push", "nope", "-p", os.path.join(EXAMPLES, "static"), "-b", "no-such-bp")
    assert r.returncode != 0, out(r)
    msg = r.stdout + r.stderr
    assert "buildpack 'no-such-bp' is not known" in msg, msg
    assert "staticfile" in msg and "python" in msg, msg


def test_failed_staging_keeps_the_running_droplet(platform, tmp_path):
    code = tmp_path / "app"
    shutil.copytree(os.path.join(EXAMPLES, "python-web"), code)
    _, (status, body) = push_and_get(platform, "keep", str(code))
    assert status == 200
    before = running_ports(platform, "keep")

    # a requirement that no vendored package provides: staging fails and says which
    (code / "requirements.txt").write_text("skiff-missing-package==9.9\n")
    r = platform.cli("push", "keep", "-p", str(code), timeout=300)
    assert r.returncode != 0, out(r)
    msg = r.stdout + r.stderr
    assert "cannot install skiff-missing-package" in msg, msg
    assert "vendor/" in msg, msg
    assert running_ports(platform, "keep") == before
    status, body = http_get(f"http://{before[0]}/")
    assert status == 200 and "hello" in body


def greeting_app(tmp_path, word):
    """examples/python-web answering with skiffgreet.WORD, and a wheel of skiffgreet whose WORD
    is `word` (not yet anywhere the buildpack looks): (app folder, wheel path)."""
    import zipfile
    code = tmp_path / "app"
    shutil.copytree(os.path.join(EXAMPLES, "python-web"), code)
    wheel = tmp_path / "skiffgreet-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("skiffgreet/__init__.py", f"WORD = '{word}'\n")
        z.writestr("skiffgreet-1.0.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: skiffgreet\nVersion: 1.0\n")
        z.writestr("skiffgreet-1.0.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("skiffgreet-1.0.dist-info/RECORD", "")
    (code / "requirements.txt").write_text("skiffgreet==1.0\n")
    (code / "app.py").write_text(
        (code / "app.py").read_text().replace(
            'greeting = os.environ.get("GREETING", "hello")',
            'import skiffgreet\n        greeting = skiffgreet.WORD'))
    return code, wheel


def test_python_requirements_from_vendor(platform, tmp_path):
    code, wheel = greeting_app(tmp_path, "vendored")
    (code / "vendor").mkdir()
    shutil.move(str(wheel), code / "vendor" / wheel.name)
    r, (status, body) = push_and_get(platform, "vend", str(code))
    assert "no package index is configured" in r.stdout, out(r)
    assert "Successfully installed skiffgreet-1.0" in r.stdout, out(r)
    assert status == 200 and "vendored from instance 0" in body, body

    # the same requirements again: the build cache serves them
    r = platform.cli("push", "vend", "-p", str(code), timeout=300)
    assert r.returncode == 0, out(r)
    assert "Requirements unchanged" in r.stdout, out(r)


FLASK_WHEELS = ["Flask", "Werkzeug", "Jinja2", "MarkupSafe", "itsdangerous", "click"]


def test_the_flask_sample_with_debians_flask_vendored(platform, tmp_path):
    """examples/python-flask (Cloud Foundry's Python sample's shape) as `make examples` makes
    it: wheels of Debian's python3-flask and its dependencies in vendor/, installed by the
    buildpack without a package index, and Flask imported from the app's own copy, not from
    the machine's."""
    code = tmp_path / "python-flask"
    shutil.copytree(os.path.join(EXAMPLES, "python-flask"), code,
                    ignore=shutil.ignore_patterns("vendor"))
    made = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "scripts", "debian_wheels.py"),
                           "-d", str(code / "vendor"), *FLASK_WHEELS],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert len(list((code / "vendor").glob("*.whl"))) == len(FLASK_WHEELS)
    r = platform.cli("push", "-f", str(code / "manifest.yml"), "-p", str(code), timeout=300)
    assert r.returncode == 0, out(r)
    assert "no package index is configured" in r.stdout, out(r)
    assert "Successfully installed" in r.stdout and "Flask-2.2.2" in r.stdout, out(r)
    ports = platform.wait_for(lambda: running_ports(platform, "python-flask"), timeout=30,
                              what="python-flask running")
    status, body = http_get(f"http://{ports[0]}/")
    assert status == 200 and body == "Hello World! I am instance 0\n", (status, body)
    status, body = http_get(f"http://{ports[0]}/flask")
    assert status == 200, body
    assert '"version":"2.2.2"' in body.replace(" ", ""), body
    assert "/home/vcap/app/.python_packages/flask/" in body, body
    # the manifest's random route and http health check are what Cloud Foundry's sample has
    app = app_json(platform, "python-flask")
    assert app["health_check_type"] == "http", app


def simple_index(root, wheel):
    """A package index in PEP 503's layout under root/simple, serving `wheel` (pip reads
    file: indexes as it reads http ones: the project's page, then the link on it)."""
    project = root / "simple" / "skiffgreet"
    project.mkdir(parents=True)
    shutil.move(str(wheel), project / wheel.name)
    (project / "index.html").write_text(
        f'<html><body><a href="{wheel.name}">{wheel.name}</a></body></html>\n')


def test_python_requirements_from_a_package_index(platform, tmp_path):
    """An index configured the way pip reads one is used: PIP_INDEX_URL in the app's env, or
    a pip.conf in the app's root. Without one and without the package in vendor/, the
    error says both ways out. (Staging containers reach no private address, so the index
    is a file: one inside the upload, at the path the build folder has while staging.)"""
    code, wheel = greeting_app(tmp_path, "from the index")
    r = platform.cli("push", "noidx", "-p", str(code), timeout=300)
    assert r.returncode != 0, out(r)
    assert "no package index is configured and vendor/ does not have it" in r.stderr + r.stdout, out(r)
    assert "PIP_INDEX_URL" in r.stderr + r.stdout and "vendor/" in r.stderr + r.stdout, out(r)

    simple_index(code / "index", wheel)
    (code / "manifest.yml").write_text(
        "applications:\n- name: idx\n  env:\n    PIP_INDEX_URL: file:///tmp/app/index/simple\n")
    r, (status, body) = push_and_get(platform, "idx", str(code), "-f", str(code / "manifest.yml"))
    assert "from the package index (file:///tmp/app/index/simple)" in r.stdout, out(r)
    assert status == 200 and "from the index from instance 0" in body, body

    (code / "manifest.yml").unlink()
    (code / "pip.conf").write_text("[global]\nindex-url = file:///tmp/app/index/simple\n")
    r, (status, body) = push_and_get(platform, "conf", str(code))
    assert "from the package index (the one in pip.conf)" in r.stdout, out(r)
    assert status == 200 and "from the index from instance 0" in body, body

    # an index that does not have the package: the error names it
    (code / "pip.conf").write_text("[global]\nindex-url = file:///tmp/app/nowhere/simple\n")
    r = platform.cli("push", "conf2", "-p", str(code), timeout=300)
    assert r.returncode != 0, out(r)
    assert "neither the package index (the one in pip.conf) nor vendor/ has it" in \
        r.stderr + r.stdout, out(r)


def test_memory_hog_is_reported_out_of_memory(platform, tmp_path):
    if not (os.path.isdir("/sys/fs/cgroup/memory") or
            os.path.exists("/sys/fs/cgroup/cgroup.controllers")):
        pytest.skip("no cgroups on this machine: memory limits are not enforced")
    code = tmp_path / "hog"
    code.mkdir()
    (code / "app.py").write_text(
        "x = []\nprint('eating memory', flush=True)\n"
        "while True:\n    x.append(bytearray(8 << 20))\n")
    r = platform.cli("push", "hog", "-p", str(code), "-m", "64M", timeout=300)
    assert "eating memory" in platform.cli("logs", "hog", "--recent").stdout or r.returncode != 0

    def says_out_of_memory():
        logs = platform.cli("logs", "hog", "--recent").stdout
        return "out of memory" in logs and logs
    logs = platform.wait_for(says_out_of_memory, timeout=60, what="an out-of-memory report")
    assert "[CELL/0] ERR Instance 0 of web crashed" in logs, logs
