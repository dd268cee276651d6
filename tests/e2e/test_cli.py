"""The skiff CLI as a script sees it: help, exit statuses, and the messages that say what to do
when something is wrong (daemon not running, not logged in, unknown app, bad flags, the API's
own error messages)."""
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile

import pytest

from conftest import BIN_DIR, cli_at_home

CORE_COMMANDS = ["login", "push", "apps", "app", "scale", "start", "stop", "restart", "restage",
                 "delete", "logs", "env", "set-env", "unset-env", "map-route", "unmap-route",
                 "routes", "domains", "create-domain", "help"]


@pytest.fixture
def bare_home():
    """A HOME and SKIFF_HOME with nothing in them: no login, no local skiffd."""
    home = tempfile.mkdtemp(prefix="skiff-cli-")
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_help_lists_every_command_and_each_has_its_own_help(bare_home):
    r = cli_at_home(bare_home, "help")
    assert r.returncode == 0, r.stderr
    for name in CORE_COMMANDS:
        assert f"\n  {name} " in r.stdout, f"{name} missing from `skiff help`"
    for name in CORE_COMMANDS:
        a = cli_at_home(bare_home, "help", name)
        b = cli_at_home(bare_home, name, "--help")
        assert a.returncode == 0 and b.returncode == 0, (name, a.stderr, b.stderr)
        assert a.stdout.startswith(f"usage: skiff {name}"), a.stdout
        assert a.stdout == b.stdout


def test_no_arguments_prints_help_and_exits_2(bare_home):
    r = cli_at_home(bare_home)
    assert r.returncode == 2
    assert "usage: skiff COMMAND" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["frobnicate"], 'unknown command "frobnicate"'),
    (["help", "frobnicate"], 'unknown command "frobnicate"'),
    (["scale"], "missing NAME"),
    (["scale", "hello", "-i", "two"], '-i needs a whole number, not "two"'),
    (["scale", "hello", "-m", "lots"], '-m needs a size like 256M or 1G, not "lots"'),
    (["scale", "hello"], "say what to change"),
    (["scale", "hello", "-i", "-1"], "-i needs 0 or more instances, not -1"),
    (["push", "hello", "--instances"], "--instances needs a value"),
    (["push", "hello", "--bogus"], "unknown option --bogus"),
    (["push", "hello", "--function", "resize"], "--function needs FILE:HANDLER"),
    (["apps", "extra"], 'unexpected argument "extra"'),
    (["set-env", "hello", "KEY"], "missing VALUE"),
    (["map-route", "hello"], "missing HOST"),
    (["map-route", "hello", "http://x.localhost"], "without a scheme"),
    (["login", "127.0.0.1:8090", "--token", "x"], "must start with http://"),
    (["login", "http://127.0.0.1:1"], "or --token TOKEN, is needed"),
    (["delete", "hello"], "needs -f"),
])
def test_bad_command_lines_exit_2_with_the_reason_and_usage(bare_home, args, message):
    r = cli_at_home(bare_home, *args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    if args[0] != "frobnicate" and args[:2] != ["help", "frobnicate"]:
        assert f"usage: skiff {args[0]}" in r.stderr


def test_not_logged_in_says_what_to_do(bare_home):
    r = cli_at_home(bare_home, "apps")
    assert r.returncode == 1
    assert "not logged in" in r.stderr
    assert "make run" in r.stderr and "skiff login" in r.stderr


@contextlib.contextmanager
def refused_port():
    """A loopback port held bound and not listening while the block runs: every connection to
    it is refused, and no server of a test running beside this one can take it meanwhile (as it
    could a port found free and let go)."""
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    try:
        yield held.getsockname()[1]
    finally:
        held.close()


def test_daemon_not_running_says_to_start_it(bare_home):
    # what a local skiffd leaves behind after it stopped
    with refused_port() as port:
        with open(os.path.join(bare_home, "api.json"), "w") as f:
            json.dump({"url": f"http://127.0.0.1:{port}", "token": "x"}, f)
        for args in (["apps"], ["app", "hello"], ["logs", "hello", "--recent"]):
            r = cli_at_home(bare_home, *args)
            assert r.returncode == 1, r
            assert "is skiffd running?" in r.stderr, r.stderr
            assert "make run" in r.stderr


def test_environment_wins_over_local_daemon(bare_home):
    with open(os.path.join(bare_home, "api.json"), "w") as f:
        json.dump({"url": "http://127.0.0.1:1", "token": "x"}, f)
    with refused_port() as port:
        r = cli_at_home(bare_home, "apps", extra_env={"SKIFF_API": f"http://127.0.0.1:{port}/",
                                                      "SKIFF_TOKEN": "t"})
    assert r.returncode == 1
    assert f"http://127.0.0.1:{port} (found through SKIFF_API)" in r.stderr


def test_manifest_errors_need_no_daemon(bare_home):
    path = os.path.join(bare_home, "manifest.yml")
    with open(path, "w") as f:
        f.write("applications:\n- name: a\n  instance: 2\n")
    r = cli_at_home(bare_home, "push", "-f", path)
    assert r.returncode == 1
    assert f'{path} line 3: unknown key "instance" (did you mean "instances"?)' in r.stderr


# ---- against a running skiffd ----------------------------------------------------------------

def test_unknown_app_says_to_list_apps(platform):
    for args in (["app", "nope"], ["start", "nope"], ["scale", "nope", "-i", "2"],
                 ["env", "nope"], ["set-env", "nope", "A", "b"], ["logs", "nope", "--recent"],
                 ["delete", "nope", "-f"]):
        r = platform.cli(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert 'app "nope" not found' in r.stderr and "skiff apps" in r.stderr, r.stderr


def test_apps_empty_then_json_for_scripts(platform):
    r = platform.cli("apps", check=True)
    assert "No apps yet" in r.stdout
    r = platform.cli("apps", "--json", check=True)
    assert json.loads(r.stdout) == {"apps": []}
    status, _ = platform.api("POST", "/v1/apps", {"name": "jsonapp", "no_route": True})
    assert status == 201
    r = platform.cli("apps", "--json", check=True)
    assert [a["name"] for a in json.loads(r.stdout)["apps"]] == ["jsonapp"]
    r = platform.cli("app", "jsonapp", "--json", check=True)
    assert json.loads(r.stdout)["name"] == "jsonapp"
    r = platform.cli("apps", check=True)
    header, row = r.stdout.splitlines()[:2]
    assert header.split() == ["name", "state", "instances", "memory", "kind", "routes"]
    assert row.split()[:3] == ["jsonapp", "STOPPED", "0/1"]


def test_api_error_message_is_printed_verbatim(platform, tmp_path):
    status, body = platform.api("PUT", "/v1/apps/Bad_Name", {})
    assert 400 <= status < 500 and status != 404, (status, body)
    (tmp_path / "Procfile").write_text("web: true\n")
    r = platform.cli("push", "Bad_Name", "-p", str(tmp_path))
    assert r.returncode == 1
    assert body["error"]["message"] in r.stderr, r.stderr
    # a taken route is the API's message, word for word
    platform.api("POST", "/v1/apps", {"name": "one", "no_route": True})
    platform.api("POST", "/v1/apps", {"name": "two", "no_route": True})
    platform.cli("map-route", "one", "shared.localhost", check=True)
    r = platform.cli("map-route", "two", "shared.localhost")
    assert r.returncode == 1
    status, body = platform.api("POST", "/v1/routes", {"app": "two", "host": "shared.localhost",
                                                       "path": ""})
    assert status == 409
    assert body["error"]["message"] in r.stderr


def test_wrong_token_says_to_log_in_again(platform):
    env_token = {"SKIFF_API": platform.api_url, "SKIFF_TOKEN": "wrong"}
    r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "apps"],
                       env={**platform.env(), **env_token}, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1
    assert "refused the token" in r.stderr and "skiff login" in r.stderr


def test_api_without_token_says_how_to_give_one(platform):
    r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "apps"],
                       env={**platform.env(), "SKIFF_API": platform.api_url}, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert "needs a token" in r.stderr and "SKIFF_TOKEN" in r.stderr, r.stderr


def test_login_checks_and_saves_the_login(platform):
    other_home = tempfile.mkdtemp(prefix="skiff-login-")
    try:
        env = {**platform.env(), "HOME": other_home, "SKIFF_HOME": other_home}
        skiff = os.path.join(BIN_DIR, "skiff")
        r = subprocess.run([skiff, "apps"], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "not logged in" in r.stderr
        r = subprocess.run([skiff, "login", platform.api_url, "--token", "wrong"], env=env,
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "refused the token" in r.stderr
        assert not os.path.exists(os.path.join(other_home, ".skiff", "cli.json"))
        r = subprocess.run([skiff, "login", platform.api_url, "--token", platform.token],
                           env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        saved = os.path.join(other_home, ".skiff", "cli.json")
        assert os.stat(saved).st_mode & 0o777 == 0o600
        r = subprocess.run([skiff, "apps", "--json"], env=env, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert "apps" in json.loads(r.stdout)
    finally:
        shutil.rmtree(other_home, ignore_errors=True)


def test_upload_over_the_limit_gives_the_apis_reason(tmp_path):
    from conftest import Platform
    p = Platform(extra_env={"SKIFF_MAX_UPLOAD_MB": "1"}).start()
    try:
        code = tmp_path / "big"
        code.mkdir()
        (code / "app.py").write_text("print('hi')\n")
        (code / "noise.bin").write_bytes(os.urandom(3 << 20))  # does not compress
        r = p.cli("push", "big", "-p", str(code))
        assert r.returncode == 1, r.stdout + r.stderr
        status, body = p.api("PUT", "/v1/apps/big/bits", raw=(code / "noise.bin").read_bytes(),
                             headers={"Content-Type": "application/gzip"})
        assert status == 413, (status, body)
        # the same message, word for word (only the byte counts differ)
        assert re.sub(r"\d+", "N", body["error"]["message"]) in re.sub(r"\d+", "N", r.stderr)
    finally:
        p.close()


def test_login_to_the_local_daemon_needs_no_token(platform):
    other_home = tempfile.mkdtemp(prefix="skiff-login-")
    try:
        # the login is kept in another HOME; SKIFF_HOME is the local skiffd's
        env = {**platform.env(), "HOME": other_home}
        r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "login", platform.api_url + "/"],
                           env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert "Using the token of the local skiffd." in r.stdout
        with open(os.path.join(other_home, ".skiff", "cli.json")) as f:
            saved = json.load(f)
        assert saved["url"] == platform.api_url and saved["token"] == platform.token
    finally:
        shutil.rmtree(other_home, ignore_errors=True)


def test_delete_asks_on_a_terminal(platform):
    import pty
    import select
    import time
    status, _ = platform.api("POST", "/v1/apps", {"name": "asked", "no_route": True})
    assert status == 201

    def delete_answering(answer):
        pid, fd = pty.fork()
        if pid == 0:  # the child: skiff on a terminal
            os.execve(os.path.join(BIN_DIR, "skiff"), ["skiff", "delete", "asked"], platform.env())
        out = b""
        deadline = time.monotonic() + 30
        answered = False
        try:
            while time.monotonic() < deadline:
                if not answered and b"[y/N]" in out:
                    os.write(fd, answer)
                    answered = True
                if not select.select([fd], [], [], max(0, deadline - time.monotonic()))[0]:
                    break
                try:
                    chunk = os.read(fd, 1024)
                except OSError:  # the terminal closes when skiff exits
                    break
                if not chunk:
                    break
                out += chunk
        finally:
            end = time.monotonic() + 10
            done, st = os.waitpid(pid, os.WNOHANG)
            while not done and time.monotonic() < end:
                time.sleep(0.02)
                done, st = os.waitpid(pid, os.WNOHANG)
            if not done:  # still waiting for an answer that never came
                os.kill(pid, 9)
                _, st = os.waitpid(pid, 0)
            os.close(fd)
        return os.waitstatus_to_exitcode(st), out.decode(errors="replace")

    rc, out = delete_answering(b"n\n")
    assert rc == 0 and "Not deleted." in out, out
    assert platform.cli("app", "asked").returncode == 0
    rc, out = delete_answering(b"y\n")
    assert rc == 0 and "Deleted asked." in out, out
    assert platform.cli("app", "asked").returncode == 1


def test_stacks_lists_the_host_stack(shared_platform):
    """`skiff stacks` names the root file systems instances run on: the host's /usr under a
    generated /etc, with what it is in words."""
    r = shared_platform.cli("stacks")
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert rows[0].split()[:2] == ["name", "description"], r.stdout
    assert any(l.startswith("host ") and "read-only" in l for l in rows[1:]), r.stdout
    r = shared_platform.cli("stacks", "--json")
    assert r.returncode == 0 and '"default": true' in r.stdout.replace('"default":true', '"default": true'), r.stdout
