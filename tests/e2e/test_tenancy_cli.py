"""Tenancy through the skiff CLI, as people use it: the local admin makes a user, an org and
a space and gives roles; the user logs in from a shell of their own (their own HOME), targets
the space, pushes an app there and sees only their space's apps; an expired access token is
renewed silently with the refresh token; logging out ends the session; API tokens are made,
used and revoked."""
import json
import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from conftest import BIN_DIR, ROOT, Platform, out, wait_for

PASSWORD = "a long enough password"
PYTHON_WEB = os.path.join(ROOT, "examples", "python-web")


class Shell:
    """A user's shell: a HOME of its own and no SKIFF_API, SKIFF_TOKEN or local skiffd (its
    SKIFF_HOME is its own, empty), so only `skiff login` points it at the platform."""

    def __init__(self, platform):
        self.platform = platform
        self.home = tempfile.mkdtemp(prefix="skiff-user-")

    @property
    def config_path(self):
        return os.path.join(self.home, ".skiff", "cli.json")

    def config(self):
        with open(self.config_path) as f:
            return json.load(f)

    def write_config(self, saved):
        with open(self.config_path, "w") as f:
            json.dump(saved, f)

    def env(self, extra=None):
        env = dict(os.environ)
        for k in ("SKIFF_API", "SKIFF_TOKEN"):
            env.pop(k, None)
        env.update({"HOME": self.home, "SKIFF_HOME": self.home,
                    "SKIFF_BUILDPACKS": os.path.join(ROOT, "buildpacks")})
        env.update(extra or {})
        return env

    def run(self, *args, extra_env=None, timeout=180):
        return subprocess.run([os.path.join(BIN_DIR, "skiff"), *args], env=self.env(extra_env),
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              stdin=subprocess.DEVNULL, start_new_session=True)  # no terminal

    def ok(self, *args, **kw):
        r = self.run(*args, **kw)
        assert r.returncode == 0, f"skiff {' '.join(args)}: {out(r)}"
        return r

    def json(self, *args, **kw):
        return json.loads(self.ok(*args, "--json", **kw).stdout)

    def login(self, user, *more):
        return self.ok("login", "-a", self.platform.api_url, "-u", user, "-p", PASSWORD, *more)

    def close(self):
        shutil.rmtree(self.home, ignore_errors=True)


def admin(p, *args):
    """`skiff ARGS` as the local admin (the skiffd's api.json, target default/dev)."""
    r = p.cli(*args)
    assert r.returncode == 0, f"skiff {' '.join(args)}: {out(r)}"
    return r


@pytest.fixture(scope="module")
def world():
    """acme/web where alice develops (her only space), acme/ops where she has no role, and an
    app of the admin's in default/dev and one in acme/ops."""
    p = Platform().start()
    shells = []
    try:
        for user in ("alice", "bob", "carol", "dave"):
            admin(p, "create-user", user, PASSWORD)
        admin(p, "create-org", "acme")
        admin(p, "create-space", "web", "-o", "acme")
        admin(p, "create-space", "ops", "-o", "acme")
        for user in ("alice", "bob", "carol", "dave"):
            admin(p, "set-space-role", user, "acme", "web", "SpaceDeveloper")
        admin(p, "set-org-role", "bob", "acme", "OrgManager")
        admin(p, "push", "admins", "-p", PYTHON_WEB, "--no-route", "--no-start")

        def shell():
            s = Shell(p)
            shells.append(s)
            return s

        yield {"p": p, "shell": shell}
    finally:
        for s in shells:
            s.close()
        p.close()


def test_roles_are_listed_by_org_and_space(world):
    p = world["p"]
    users = {u["name"]: u for u in json.loads(admin(p, "users", "--json").stdout)["users"]}
    assert {"alice", "bob", "carol", "dave"} <= set(users)
    orgs = json.loads(admin(p, "orgs", "--json").stdout)["orgs"]
    assert "acme" in [o["name"] for o in orgs]
    spaces = json.loads(admin(p, "spaces", "-o", "acme", "--json").stdout)["spaces"]
    assert sorted(s["name"] for s in spaces) == ["ops", "web"]
    org_users = {u["name"]: u["roles"]
                 for u in json.loads(admin(p, "org-users", "acme", "--json").stdout)["users"]}
    assert "OrgManager" in org_users["bob"]
    space_users = {u["name"]: u["roles"] for u in
                   json.loads(admin(p, "space-users", "acme", "web", "--json").stdout)["users"]}
    assert "SpaceDeveloper" in space_users["alice"]
    # a table for people too
    r = admin(p, "space-users", "acme", "web")
    assert "alice" in r.stdout and "SpaceDeveloper" in r.stdout
    rows = [line.split() for line in admin(p, "users").stdout.splitlines()]
    assert rows[0] == ["name", "admin", "created"], rows
    assert ["admin", "yes"] == [c for c in next(r for r in rows if r[0] == "admin")][:2], rows
    assert len(next(r for r in rows if r[0] == "alice")) == 2, rows  # no "yes" for alice
    rows = [line.split() for line in admin(p, "spaces", "-o", "acme").stdout.splitlines()]
    assert rows[0] == ["name", "quota", "created"] and sorted(r[0] for r in rows[1:]) == ["ops", "web"]


def test_the_apis_error_message_is_printed_and_exit_is_1(world):
    p = world["p"]
    r = p.cli("create-org", "acme")
    assert r.returncode == 1, out(r)
    status, body = p.api("POST", "/v1/orgs", {"name": "acme"})
    assert status == 409
    assert body["error"]["message"] in r.stderr
    r = p.cli("set-space-role", "alice", "acme", "web", "SpaceWizard")
    assert r.returncode == 1 and "SpaceDeveloper" in r.stderr, out(r)


@pytest.mark.parametrize("args", [
    ["set-org-role", "alice", "acme"],
    ["set-space-role", "alice", "acme", "web"],
    ["unset-space-role", "alice", "acme", "web", "SpaceDeveloper", "extra"],
    ["create-token"],
    ["create-token", "ci", "--expires", "soon"],
    ["org-users"],
    ["space-users", "acme"],
    ["login", "-a", "ftp://nowhere"],
])
def test_bad_command_lines_exit_2(world, args):
    r = world["shell"]().run(*args)
    assert r.returncode == 2, out(r)
    assert "usage: skiff" in r.stderr, out(r)


def test_login_saves_the_session_and_targets_the_only_space(world):
    alice = world["shell"]()
    r = alice.run("apps")
    assert r.returncode == 1 and "not logged in" in r.stderr, out(r)
    r = alice.login("alice")
    assert "acme" in r.stdout and "web" in r.stdout, out(r)
    assert stat.S_IMODE(os.stat(alice.config_path).st_mode) == 0o600
    saved = alice.config()
    assert saved["url"] == world["p"].api_url
    assert saved["token"].startswith("skiffa_") and saved["refresh_token"].startswith("skiffr_")
    assert (saved["user"], saved["org"], saved["space"]) == ("alice", "acme", "web")
    r = alice.ok("target")
    for word in (world["p"].api_url, "alice", "acme", "web"):
        assert word in r.stdout, out(r)
    t = alice.json("target")
    assert (t["user"], t["org"], t["space"]) == ("alice", "acme", "web")


def test_a_wrong_password_is_refused_and_nothing_is_saved(world):
    s = world["shell"]()
    r = s.run("login", "-a", world["p"].api_url, "-u", "alice", "-p", "not the password")
    assert r.returncode == 1, out(r)
    assert not os.path.exists(s.config_path)


def test_without_a_terminal_a_missing_password_is_an_error_not_a_hang(world):
    s = world["shell"]()
    r = s.run("login", "-a", world["p"].api_url, "-u", "alice", timeout=30)
    assert r.returncode != 0, out(r)
    assert not os.path.exists(s.config_path)


def test_target_checks_the_space_exists_and_keeps_the_old_target_otherwise(world):
    bob = world["shell"]()
    r = bob.login("bob")  # OrgManager of acme: two spaces, so none is picked for him
    assert "skiff target -o ORG -s SPACE" in r.stdout, out(r)
    assert "space" not in bob.config()
    r = bob.run("target", "-o", "acme", "-s", "nope")
    assert r.returncode == 1, out(r)
    assert "space" not in bob.config()
    r = bob.run("target", "-o", "nope", "-s", "web")
    assert r.returncode == 1, out(r)
    bob.ok("target", "-o", "acme", "-s", "ops")
    assert (bob.config()["org"], bob.config()["space"]) == ("acme", "ops")
    bob.ok("target", "-s", "web")  # the org stays
    assert (bob.config()["org"], bob.config()["space"]) == ("acme", "web")
    # -o and -s given at login target at once
    carol = world["shell"]()
    carol.login("carol", "-o", "acme", "-s", "web")
    assert (carol.config()["org"], carol.config()["space"]) == ("acme", "web")


def test_push_goes_to_the_target_space_and_apps_lists_only_its_apps(world):
    p = world["p"]
    alice = world["shell"]()
    alice.login("alice")
    alice.ok("push", "shop", "-p", PYTHON_WEB, "--no-route")
    names = [a["name"] for a in alice.json("apps")["apps"]]
    assert names == ["shop"], names
    r = alice.ok("apps")
    assert "Getting apps in org acme / space web as alice..." in r.stdout, out(r)
    assert "shop" in r.stdout and "admins" not in r.stdout
    # the app is in acme/web, not in default/dev
    status, body = p.api("GET", "/v1/apps/shop?space=acme%2Fweb")
    assert status == 200 and body["space"] == "acme/web", body
    assert p.api("GET", "/v1/apps/shop")[0] == 404
    # the admin's shell targets default/dev
    names = [a["name"] for a in json.loads(admin(p, "apps", "--json").stdout)["apps"]]
    assert "admins" in names and "shop" not in names
    # every command about an app carries the space: app, env, logs
    assert alice.json("app", "shop")["name"] == "shop"
    alice.ok("set-env", "shop", "GREETING", "hi")
    assert "GREETING" in alice.ok("env", "shop").stdout
    alice.ok("logs", "shop", "--recent")
    # a space with apps is not deleted
    bob = world["shell"]()
    bob.login("bob", "-o", "acme", "-s", "web")
    r = bob.run("delete-space", "web", "-f")
    assert r.returncode == 1, out(r)
    assert "web" in [s["name"] for s in bob.json("spaces")["spaces"]]
    alice.ok("delete", "shop", "-f")


def test_an_expired_access_token_is_renewed_silently(world):
    alice = world["shell"]()
    alice.login("alice")
    saved = alice.config()
    old_refresh = saved["refresh_token"]
    saved["token"] = "skiffa_" + "0" * 43  # not a token the API knows: 401
    alice.write_config(saved)
    assert alice.json("apps")["apps"] is not None
    renewed = alice.config()
    assert renewed["token"].startswith("skiffa_") and renewed["token"] != saved["token"]
    assert renewed["refresh_token"] != old_refresh  # a refresh token is good once
    assert (renewed["org"], renewed["space"], renewed["user"]) == ("acme", "web", "alice")
    assert stat.S_IMODE(os.stat(alice.config_path).st_mode) == 0o600
    # the renewed pair works without renewing again
    alice.ok("apps")
    assert alice.config()["token"] == renewed["token"]
    # the old refresh token is spent
    status, _ = world["p"].api("POST", "/v1/auth/token", {"grant_type": "refresh_token",
                                                          "refresh_token": old_refresh},
                               token=False)
    assert status == 401


def test_commands_renewing_at_once_all_go_on(world):
    """A refresh token is good once: skiffs that renew together must not end each other's
    session (the one that loses takes the pair the winner saved)."""
    alice = world["shell"]()
    alice.login("alice")
    saved = alice.config()
    saved["token"] = "skiffa_" + "0" * 43
    alice.write_config(saved)
    skiff = os.path.join(BIN_DIR, "skiff")
    procs = [subprocess.Popen([skiff, "apps", "--json"], env=alice.env(), cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
             for _ in range(4)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    for code, stdout, stderr in results:
        assert code == 0, (code, stdout, stderr)
    alice.ok("apps")


def test_when_the_refresh_token_is_no_good_either_the_session_has_ended(world):
    alice = world["shell"]()
    alice.login("alice")
    saved = alice.config()
    saved["token"] = "skiffa_" + "0" * 43
    saved["refresh_token"] = "skiffr_" + "0" * 43
    alice.write_config(saved)
    r = alice.run("apps")
    assert r.returncode == 1, out(r)
    assert "your session ended" in r.stderr and "skiff login" in r.stderr, out(r)


def test_logout_ends_the_session(world):
    p = world["p"]
    dave = world["shell"]()
    dave.login("dave")
    saved = dave.config()
    r = dave.ok("logout")
    assert not os.path.exists(dave.config_path) or "token" not in dave.config()
    # ended on the server too: neither token works any more
    assert p.api("GET", "/v1/auth/me", token=saved["token"])[0] == 401
    status, _ = p.api("POST", "/v1/auth/token", {"grant_type": "refresh_token",
                                                 "refresh_token": saved["refresh_token"]},
                      token=False)
    assert status == 401
    r = dave.run("apps")
    assert r.returncode == 1 and "not logged in" in r.stderr, out(r)


def test_api_tokens_are_made_used_and_revoked(world):
    p = world["p"]
    alice = world["shell"]()
    alice.login("alice")
    r = alice.ok("create-token", "ci", "--space", "web", "--role", "SpaceDeveloper",
                 "--expires", "30d")
    token = next(w for w in r.stdout.split() if w.startswith("skifft_"))
    listed = {t["name"]: t for t in alice.json("tokens")["tokens"]}
    assert listed["ci"]["space"] == "acme/web" and listed["ci"]["role"] == "SpaceDeveloper"
    assert listed["ci"]["expires_at"]
    assert token not in alice.ok("tokens").stdout  # shown once, never listed
    r = alice.run("create-token", "ci")
    assert r.returncode == 1, out(r)
    # SKIFF_API + SKIFF_TOKEN win over the saved login, in a shell without one too
    ci = world["shell"]()
    env = {"SKIFF_API": p.api_url, "SKIFF_TOKEN": token}
    assert ci.json("apps", extra_env=env)["apps"] is not None
    alice.ok("push", "ci-made", "-p", PYTHON_WEB, "--no-route", "--no-start", extra_env=env)
    status, body = p.api("GET", "/v1/apps/ci-made?space=acme%2Fweb")
    assert status == 200, body
    # `skiff login --token` keeps working, with an API token
    ci.ok("login", p.api_url, "--token", token)
    assert "ci-made" in [a["name"] for a in ci.json("apps")["apps"]]
    alice.ok("revoke-token", "ci")
    assert "ci" not in [t["name"] for t in alice.json("tokens")["tokens"]]
    r = ci.run("apps", extra_env=env)
    assert r.returncode == 1, out(r)
    alice.ok("delete", "ci-made", "-f")


def test_a_user_made_without_a_password_gets_one_shown_once_and_can_be_deleted(world):
    p = world["p"]
    r = admin(p, "create-user", "erin")
    status, body = p.api("POST", "/v1/auth/token", {"grant_type": "password", "username": "erin",
                                                    "password": "wrong password"}, token=False)
    assert status == 401
    words = r.stdout.split()
    password = words[words.index("Password:") + 1]
    status, body = p.api("POST", "/v1/auth/token", {"grant_type": "password", "username": "erin",
                                                    "password": password}, token=False)
    assert status == 200, body
    r = p.cli("delete-user", "erin", "-f")
    assert r.returncode == 0, out(r)
    assert "erin" not in [u["name"] for u in
                          json.loads(admin(p, "users", "--json").stdout)["users"]]


def test_passwd_asks_on_the_terminal_without_echo(world):
    """`skiff passwd` reads the old and new password from the terminal, not echoing them."""
    import pty
    import select
    p = world["p"]
    admin(p, "create-user", "frank", PASSWORD)
    frank = world["shell"]()
    frank.login("frank")
    new_password = "another long password"
    pid, fd = pty.fork()
    if pid == 0:  # the child: skiff on a terminal of its own
        try:
            os.chdir(ROOT)
            os.execve(os.path.join(BIN_DIR, "skiff"), ["skiff", "passwd"], frank.env())
        finally:
            os._exit(127)
    seen = b""

    def read_until(word, timeout=60):
        nonlocal seen
        def got():
            nonlocal seen
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    return True
            return word.encode() in seen.lower()
        wait_for(got, timeout, f"{word!r} from skiff passwd (so far: {seen!r})", interval=0)

    try:
        read_until("password")
        os.write(fd, PASSWORD.encode() + b"\n")
        read_until("new password")
        os.write(fd, new_password.encode() + b"\n")
        # a confirmation, when asked for
        mark = len(seen)
        def finished():
            nonlocal seen
            r, _, _ = select.select([fd], [], [], 0.05)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    return "done"
                if not chunk:
                    return "done"
                seen += chunk
            tail = seen[mark:].lower()
            if b"again" in tail or b"repeat" in tail or b"confirm" in tail:
                return "confirm"
            return os.waitpid(pid, os.WNOHANG)[0] == pid and "exited"
        state = wait_for(finished, 60, "skiff passwd to finish or confirm", interval=0)
        if state == "confirm":
            os.write(fd, new_password.encode() + b"\n")
    finally:
        def reaped():
            if select.select([fd], [], [], 0.05)[0]:
                try:
                    os.read(fd, 4096)  # drain, so skiff is never blocked writing
                except OSError:
                    pass
            done, status = os.waitpid(pid, os.WNOHANG)
            return (done == pid or None) and ("status", status)
        try:
            result = wait_for(reaped, 60, "skiff passwd to exit", interval=0)
        except AssertionError:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise
        finally:
            os.close(fd)
    assert PASSWORD.encode() not in seen and new_password.encode() not in seen, seen
    assert os.waitstatus_to_exitcode(result[1]) == 0, seen
    status, _ = p.api("POST", "/v1/auth/token", {"grant_type": "password", "username": "frank",
                                                 "password": new_password}, token=False)
    assert status == 200
    status, _ = p.api("POST", "/v1/auth/token", {"grant_type": "password", "username": "frank",
                                                 "password": PASSWORD}, token=False)
    assert status == 401


def test_the_local_admin_needs_no_login_and_targets_default_dev(world):
    p = world["p"]
    r = admin(p, "target")
    assert "default" in r.stdout and "dev" in r.stdout, out(r)
    t = json.loads(admin(p, "target", "--json").stdout)
    assert (t.get("org"), t.get("space")) in (("default", "dev"), (None, None))
