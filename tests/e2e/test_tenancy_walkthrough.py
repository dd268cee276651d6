"""The tenancy walkthrough with the `skiff` CLI, as users do it: the local admin makes a user,
an org and a space; the user logs in from another shell (another HOME), targets the space,
pushes and sees only its own; the session renews itself; tokens, quotas and audit events."""
import json
import os
import subprocess
import tempfile

import pytest

from conftest import BIN_DIR, ROOT, Platform, out

PASSWORD = "a long enough password"


class Shell:
    """Another user's shell: its own HOME (and so its own ~/.skiff/cli.json), no SKIFF_HOME
    of the local skiffd, so nothing but its login says who it is."""

    def __init__(self, platform):
        self.home = tempfile.mkdtemp(prefix="skiff-shell-")
        self.env = {**platform.env(), "HOME": self.home, "SKIFF_HOME": self.home}

    def run(self, *args, input=None):
        return subprocess.run([os.path.join(BIN_DIR, "skiff"), *args], env=self.env, input=input,
                              capture_output=True, text=True, timeout=180, cwd=ROOT)

    def ok(self, *args):
        r = self.run(*args)
        assert r.returncode == 0, out(r)
        return r

    def saved(self):
        with open(os.path.join(self.home, ".skiff", "cli.json")) as f:
            return json.load(f)


@pytest.fixture(scope="module")
def walkthrough():
    p = Platform().start()
    try:
        # the local admin (api.json) makes the second user a place to work
        for args in (("create-user", "carol", PASSWORD), ("create-org", "acme"),
                     ("create-space", "web", "-o", "acme"),
                     ("set-space-role", "carol", "acme", "web", "SpaceDeveloper"),
                     ("create-user", "dave", PASSWORD), ("create-org", "rival"),
                     ("create-space", "web", "-o", "rival"),
                     ("set-space-role", "dave", "rival", "web", "SpaceDeveloper")):
            r = p.cli(*args)
            assert r.returncode == 0, out(r)
        carol, dave = Shell(p), Shell(p)
        # carol's app, which every test here may rely on (they can run on different workers)
        carol.ok("login", "-a", p.api_url, "-u", "carol", "-p", PASSWORD)
        carol.ok("push", "shop", "-p", "examples/static")
        yield p, carol, dave
    finally:
        p.close()


def test_a_second_user_logs_in_and_works_in_its_space(walkthrough):
    p, carol, dave = walkthrough
    r = carol.ok("login", "-a", p.api_url, "-u", "carol", "-p", PASSWORD)
    # the one space carol has is targeted
    assert "Targeting org acme, space web" in r.stdout, r.stdout
    saved = carol.saved()
    assert saved["user"] == "carol" and saved["org"] == "acme" and saved["space"] == "web"
    assert os.stat(os.path.join(carol.home, ".skiff", "cli.json")).st_mode & 0o777 == 0o600
    assert PASSWORD not in json.dumps(saved)
    r = carol.ok("target")
    assert "acme" in r.stdout and "web" in r.stdout and "carol" in r.stdout
    carol.ok("push", "shop", "-p", "examples/static")
    r = carol.ok("apps")
    assert "Getting apps in org acme / space web as carol" in r.stdout and "shop" in r.stdout
    # dave pushes an app of the same name into his own space: two apps
    dave.ok("login", p.api_url, "-u", "dave", "-p", PASSWORD, "-o", "rival", "-s", "web")
    dave.ok("push", "shop", "-p", "examples/static")
    apps = json.loads(dave.ok("apps", "--json").stdout)["apps"]
    assert [(a["name"], a["space"]) for a in apps] == [("shop", "rival/web")]
    apps = json.loads(carol.ok("apps", "--json").stdout)["apps"]
    assert [(a["name"], a["space"]) for a in apps] == [("shop", "acme/web")]
    # carol cannot reach dave's space at all
    r = carol.run("target", "-o", "rival", "-s", "web")
    assert r.returncode == 1 and "no org" in r.stderr.lower(), out(r)
    # nor does the local admin see either in default/dev
    assert "shop" not in p.cli("apps").stdout


def test_the_session_renews_itself(walkthrough):
    p, carol, _ = walkthrough
    carol.ok("login", "-a", p.api_url, "-u", "carol", "-p", PASSWORD)
    saved = carol.saved()
    # an access token that is no longer good (as after 20 minutes)
    saved["token"] = "skiffa_" + "x" * 43
    with open(os.path.join(carol.home, ".skiff", "cli.json"), "w") as f:
        json.dump(saved, f)
    r = carol.ok("apps", "--json")
    assert "apps" in json.loads(r.stdout)
    renewed = carol.saved()
    assert renewed["token"] != saved["token"] and renewed["refresh_token"] != saved["refresh_token"]
    # the old refresh token was used up
    status, _ = p.api("POST", "/v1/auth/token", {"grant_type": "refresh_token",
                                                  "refresh_token": saved["refresh_token"]},
                      token=False)
    assert status == 401
    # logging out ends the session on the server too
    access = renewed["token"]
    carol.ok("logout")
    assert not os.path.exists(os.path.join(carol.home, ".skiff", "cli.json"))
    assert p.api("GET", "/v1/auth/me", token=access)[0] == 401
    r = carol.run("apps")
    assert r.returncode == 1 and "not logged in" in r.stderr


def test_api_tokens_from_the_cli(walkthrough):
    p, carol, _ = walkthrough
    carol.ok("login", "-a", p.api_url, "-u", "carol", "-p", PASSWORD)
    r = carol.ok("create-token", "ci", "--space", "web", "--role", "SpaceDeveloper",
                 "--expires", "30d")
    token = [l.strip() for l in r.stdout.splitlines() if l.strip().startswith("skifft_")][0]
    listed = carol.ok("tokens").stdout
    assert "ci" in listed and token not in listed
    # a script uses it with SKIFF_API and SKIFF_TOKEN
    env = {**carol.env, "SKIFF_API": p.api_url, "SKIFF_TOKEN": token}
    r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "apps", "--json"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "shop" in r.stdout, out(r)
    carol.ok("revoke-token", "ci")
    r = subprocess.run([os.path.join(BIN_DIR, "skiff"), "apps"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "refused the token" in r.stderr, out(r)


def test_quotas_and_events_from_the_cli(walkthrough):
    p, carol, _ = walkthrough
    carol.ok("login", "-a", p.api_url, "-u", "carol", "-p", PASSWORD)
    for args in (("create-quota", "small", "-m", "1G", "--apps", "1"), ("set-quota", "acme", "small")):
        r = p.cli(*args)
        assert r.returncode == 0, out(r)
    assert "small" in p.cli("quotas").stdout
    # carol's org holds one app already: a second is refused, saying why
    r = carol.run("push", "second", "-p", "examples/static")
    assert r.returncode == 1 and "quota" in r.stderr and "small" in r.stderr, out(r)
    # who did what
    r = carol.ok("events", "shop")
    assert "audit.app" in r.stdout and "carol" in r.stdout
    r = p.cli("events", "--all")
    assert r.returncode == 0 and "audit.org.create" in r.stdout, out(r)
    # a user cannot change the quotas
    r = carol.run("set-quota", "acme", "none")
    assert r.returncode == 1 and "admin" in r.stderr, out(r)
    r = p.cli("set-quota", "acme", "none")
    assert r.returncode == 0, out(r)


def test_passwd(walkthrough):
    p, _, dave = walkthrough
    dave.ok("login", "-a", p.api_url, "-u", "dave", "-p", PASSWORD)
    dave.ok("passwd", "--old", PASSWORD, "--new", "another long password")
    r = dave.run("login", "-a", p.api_url, "-u", "dave", "-p", PASSWORD)
    assert r.returncode == 1
    dave.ok("login", "-a", p.api_url, "-u", "dave", "-p", "another long password")
    dave.ok("passwd", "--old", "another long password", "--new", PASSWORD)
