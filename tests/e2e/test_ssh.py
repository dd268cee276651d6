"""`skiff ssh`: a command or a shell inside a running instance's container, over the API.

Command mode passes stdin, stdout and stderr and exits as the command did; the command runs
inside the container only (its processes, its files, vcap, no capabilities, the filter), is
bounded by the instance's limits, and everything it started ends with the client. Who may:
developers of the app's space (403 for auditors, 404 for other spaces, 401 without a token),
never an instance's own publish token, and only while the app (enable-ssh) and its space
(allow-space-ssh) allow it. After a skiffd restart an adopted instance's sessions still get its
own environment. Hostile clients (malformed frames, one that never reads, too many sessions) do not hurt
skiffd."""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from conftest import BIN_DIR, ROOT, Platform, http_get, out, wait_for

PASSWORD = "correct horse battery"
APP = os.path.join(ROOT, "examples", "python-web")


@pytest.fixture(scope="module")
def world():
    p = Platform().start()
    try:
        r = p.cli("push", "box", "-p", APP, "-i", "2", timeout=300)
        assert r.returncode == 0, out(r)
        admin = p.token
        for u in ("dev", "aud", "outsider", "spmgr"):
            assert p.api("POST", "/v1/users", {"name": u, "password": PASSWORD})[0] == 201
        assert p.api("PUT", "/v1/orgs/default/spaces/dev/users/dev/roles/SpaceDeveloper")[0] == 204
        assert p.api("PUT", "/v1/orgs/default/spaces/dev/users/spmgr/roles/SpaceManager")[0] == 204
        assert p.api("PUT", "/v1/orgs/default/spaces/dev/users/aud/roles/SpaceAuditor")[0] == 204
        assert p.api("POST", "/v1/orgs", {"name": "other"})[0] == 201
        assert p.api("POST", "/v1/orgs/other/spaces", {"name": "x"})[0] == 201
        assert p.api("PUT", "/v1/orgs/other/spaces/x/users/outsider/roles/SpaceDeveloper")[0] == 204
        tokens = {}
        for u in ("dev", "aud", "outsider", "spmgr"):
            status, body = p.api("POST", "/v1/auth/token", {"grant_type": "password",
                                                            "username": u, "password": PASSWORD},
                                 token=False)
            assert status == 200, body
            tokens[u] = body["access_token"]
        yield {"p": p, "admin": admin, "tokens": tokens}
    finally:
        p.close()


def ssh(p, *args, input=None, timeout=60):
    return p.cli("ssh", *args, input=input, timeout=timeout)


def cli_as(p, token, *args, home=None):
    """`skiff ARGS` with a user's token (SKIFF_API + SKIFF_TOKEN), or with the login saved
    in home when token is None."""
    env = p.env()
    if token:
        env.update({"SKIFF_API": p.api_url, "SKIFF_TOKEN": token})
    if home:
        env["HOME"] = home
    return subprocess.run([os.path.join(BIN_DIR, "skiff"), *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def upgrade(p, path, token, extra=b""):
    """POST path with Upgrade: skiff-ssh on a socket of its own: (status, head, socket)."""
    s = socket.create_connection(("127.0.0.1", p.api_port), timeout=30)
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: skiff-ssh\r\n"
            "Content-Length: 0\r\n")
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    s.sendall(head.encode() + b"\r\n" + extra)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data, s


def read_frames(s, data=b"", until_close=True):
    """Frames from the server until it closes: [(type, bytes)]."""
    frames = []
    while True:
        while len(data) >= 4:
            n = int.from_bytes(data[1:4], "big")
            if len(data) < 4 + n:
                break
            frames.append((data[0], data[4:4 + n]))
            data = data[4 + n:]
        chunk = s.recv(65536)
        if not chunk:
            return frames
        data += chunk


def host_processes(marker):
    """Host pids of the command run inside whose command line ends with marker (not the
    CLI, skiff-init or the shell that carry it as an argument)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").rstrip("\0").split("\0")
        except OSError:
            continue
        if os.path.basename(argv[0]) in ("skiff", "skiff-init", "sh", "dash", "bash"):
            continue
        if " ".join(argv).endswith(marker):
            pids.append(int(name))
    return pids


def instance(p, index):
    body = json.loads(p.cli("app", "box", "--json", check=True).stdout)
    return [i for i in body["instances_detail"]
            if i["index"] == index and i["process_type"] == "web" and i["state"] != "STOPPING"][0]


# ---- command mode --------------------------------------------------------------------------

def test_command_output_and_exit_codes(world):
    p = world["p"]
    r = ssh(p, "box", "-c", "echo out; echo err >&2; exit 3")
    assert r.returncode == 3, out(r)
    assert r.stdout == "out\n" and r.stderr == "err\n", out(r)
    r = ssh(p, "box", "-c", "true")
    assert r.returncode == 0 and r.stdout == "", out(r)
    r = ssh(p, "box", "-c", "kill -KILL $$")
    assert r.returncode == 128 + signal.SIGKILL, out(r)
    r = ssh(p, "box", "-c", "cat; echo done", input="line one\nline two\n")
    assert r.returncode == 0 and r.stdout == "line one\nline two\ndone\n", out(r)


def test_shell_reads_stdin_without_a_terminal(world):
    r = ssh(world["p"], "box", "-i", "1",
            input='echo "$CF_INSTANCE_INDEX $PORT $HOME"; pwd; tty || true; exit 7\n')
    assert r.returncode == 7, out(r)
    lines = r.stdout.splitlines()
    assert lines[0] == "1 8080 /home/vcap/app" and lines[1] == "/home/vcap/app", out(r)
    assert lines[2] == "not a tty", out(r)


def test_a_shell_at_a_terminal_gets_one_inside(world):
    """Typed at a terminal: a login shell on a terminal of the container's own, its size the
    local window's and following it, the local terminal restored at the end."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    p = world["p"]
    pid, fd = pty.fork()
    if pid == 0:
        env = p.env()
        env["TERM"] = "xterm"
        os.execve(os.path.join(BIN_DIR, "skiff"), ["skiff", "ssh", "box"], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    seen = b""

    def read_until(text, timeout=20):
        nonlocal seen
        deadline = time.time() + timeout
        while text not in seen and time.time() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        return text in seen

    try:
        assert read_until(b"$ ", 60), seen  # the prompt: the shell reads its terminal now
        os.write(fd, b"tty; stty size; echo T=$TERM; echo mark-$((40+2))\n")
        assert read_until(b"mark-42\r\n"), seen  # output only: the echoed line has no 42
        assert b"/dev/pts/0\r\n33 101\r\nT=xterm\r\n" in seen, seen
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        os.kill(pid, signal.SIGWINCH)
        wait_for(lambda: os.write(fd, b"stty size\n") and read_until(b"50 160", 1), 20,
                 "the new window size inside")
        os.write(fd, b"exit 5\n")
        read_until(b"logout")
    finally:
        deadline = time.time() + 20
        done, status = os.waitpid(pid, os.WNOHANG)
        while not done and time.time() < deadline:
            time.sleep(0.1)
            done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 5, seen


def test_large_output_arrives_whole(world):
    r = ssh(world["p"], "box", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo")
    assert r.returncode == 0, out(r)[:500]
    assert len(r.stdout) == 3000001 and set(r.stdout[:-1]) == {"x"}


# ---- inside means inside -------------------------------------------------------------------

def test_the_command_sees_only_its_container(world):
    p = world["p"]
    script = ("id -u; id -g; hostname; "
              "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; "
              "for f in /proc/[0-9]*/comm; do cat $f; done 2>/dev/null | sort | tr '\\n' ' '; echo; "
              f"test -e {p.home} && echo HOME-VISIBLE; "
              "cat /proc/1/cmdline | tr '\\0' ' '; echo")
    r = ssh(p, "box", "-c", script)
    assert r.returncode == 0, out(r)
    lines = r.stdout.splitlines()
    assert lines[0] == "2000" and lines[1] == "2000", out(r)
    assert lines[2] == instance(p, 0)["guid"], out(r)
    status = dict(l.split(":\t") for l in lines[3:7])
    assert status["CapEff"] == "0000000000000000" and status["CapBnd"] == "0000000000000000"
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", status
    # the container's init, the app, and this session: nothing of the host or other instances
    comms = lines[7].split()
    assert "skiffd" not in comms and "skiff-router" not in comms and "skiff-shim" not in comms
    assert comms.count("python3") == 1, comms
    assert "HOME-VISIBLE" not in r.stdout, out(r)
    assert "skiff-init" in lines[-1], out(r)  # PID 1 is the container's init
    # its processes run as the containers' unprivileged host uid, never as root
    marker = "sleep 7341"
    proc = subprocess.Popen([os.path.join(BIN_DIR, "skiff"), "ssh", "box", "-c", marker],
                            env=p.env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: host_processes(marker), 20, "the command to run")
        pid = host_processes(marker)[0]
        with open(f"/proc/{pid}/status") as f:
            uids = [l.split()[1:] for l in f if l.startswith("Uid:")][0]
        assert all(int(u) >= 200000 for u in uids), uids
    finally:
        proc.kill()
        proc.wait()


def test_instances_do_not_see_each_other(world):
    p = world["p"]
    r = ssh(p, "box", "-i", "1", "-c", "echo secret > /home/vcap/tmp/mark-7342 && echo ok")
    assert r.returncode == 0 and r.stdout == "ok\n", out(r)
    r = ssh(p, "box", "-i", "0", "-c", "test -e /home/vcap/tmp/mark-7342")
    assert r.returncode == 1, out(r)
    r = ssh(p, "box", "-i", "1", "-c", "cat /home/vcap/tmp/mark-7342")
    assert r.stdout == "secret\n", out(r)


def test_closing_the_client_ends_everything_it_started(world):
    p = world["p"]
    markers = ["sleep 7351", "sleep 7352", "sleep 7353"]
    cmd = f"setsid {markers[0]} & nohup {markers[1]} >/dev/null 2>&1 & {markers[2]}"
    proc = subprocess.Popen([os.path.join(BIN_DIR, "skiff"), "ssh", "box", "-c", cmd],
                            env=p.env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: all(host_processes(m) for m in markers), 20, "the commands to run")
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not any(host_processes(m) for m in markers), 20,
             "every process of the session to end")
    assert instance(p, 0)["state"] == "RUNNING"


def test_a_fork_bomb_is_bounded_and_the_instance_keeps_serving(world):
    p = world["p"]
    before = instance(p, 0)
    marker = "bomb-7361"
    # forks until the kernel refuses, each child staying; then holds them all
    bomb = ("import os, time\n"
            "n = 0\n"
            "while n < 20000:\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError:\n"
            "        break\n"
            "    if pid == 0:\n"
            "        time.sleep(600)\n"
            "        os._exit(0)\n"
            "    n += 1\n"
            "print('forked', n, flush=True)\n"
            "time.sleep(600)\n")
    cmd = f"exec python3 -c \"{bomb}\" {marker}"
    proc = subprocess.Popen([os.path.join(BIN_DIR, "skiff"), "ssh", "box", "-c", cmd],
                            env=p.env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("forked "), line
        assert int(line.split()[1]) < 1024, line  # the instance's pids limit
        # the instance answers while the session holds every process it may have
        status, body = http_get(f"{p.router_url}/", host="box.localhost", timeout=10)
        assert status == 200, body
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not host_processes(marker), 30,
             "the bomb's processes to end with the session")
    after = instance(p, 0)
    assert after["guid"] == before["guid"] and after["state"] == "RUNNING", after


# ---- errors ----------------------------------------------------------------------------------

def test_clear_errors(world):
    p = world["p"]
    r = ssh(p, "box", "-i", "5", "-c", "true")
    assert r.returncode == 1 and "index 5 is not one of 0..1" in r.stderr, out(r)
    r = ssh(p, "box", "--process", "worker", "-c", "true")
    assert r.returncode == 1 and "no instances of process worker" in r.stderr, out(r)
    r = ssh(p, "nope", "-c", "true")
    assert r.returncode == 1 and 'no app named "nope"' in r.stderr, out(r)
    r = p.cli("push", "stopped", "-p", APP, "--no-start", timeout=300)
    assert r.returncode == 0, out(r)
    r = ssh(p, "stopped", "-c", "true")
    assert r.returncode == 1 and "stopped" in r.stderr and "skiff start" in r.stderr, out(r)
    # the endpoint without the protocol: a 400 that says what to use
    status, body = p.api("POST", "/v1/apps/box/ssh")
    assert status == 400 and "skiff ssh" in body["error"]["message"], body
    status, _, s = upgrade(p, "/v1/apps/box/ssh?index=-1", world["admin"])
    s.close()
    assert status == 400


# ---- who may -------------------------------------------------------------------------------

def test_only_the_spaces_developers_may_ssh(world):
    p, t = world["p"], world["tokens"]
    path = "/v1/apps/box/ssh?command=true&space=default/dev"
    for token, expected in [(t["dev"], 101), (t["aud"], 403), (t["outsider"], 404), (None, 401),
                            ("skiffa_" + "A" * 43, 401)]:
        status, head, s = upgrade(p, path, token)
        if status == 101:
            frames = read_frames(s, head.split(b"\r\n\r\n", 1)[1])
            assert frames[-1] == (5, (0).to_bytes(4, "big")), frames
        s.close()
        assert status == expected, (token and token[:10], head[:200])
    # an app guid of the space, named by another space's developer, is not found either
    guid = json.loads(p.cli("app", "box", "--json", check=True).stdout)["guid"]
    status, _, s = upgrade(p, f"/v1/apps/{guid}/ssh?command=true", t["outsider"])
    s.close()
    assert status == 404
    # and the session is on the audit record
    status, body = p.api("GET", "/v1/audit_events?space=default/dev")
    assert status == 200
    events = body["audit_events"]
    assert any(e.get("type") == "audit.app.ssh" and e.get("actor") == "dev" for e in events), events


# ---- enable-ssh, allow-space-ssh ------------------------------------------------------------

def test_ssh_needs_the_app_and_its_space_to_allow_it(world):
    p, t = world["p"], world["tokens"]
    try:
        r = p.cli("ssh-enabled", "box", check=True)
        assert r.stdout == "ssh is enabled for app box.\n", out(r)
        r = p.cli("space-ssh-allowed", "dev", check=True)
        assert r.stdout == "ssh is allowed in space dev.\n", out(r)

        # the app: a developer turns it off; sessions are refused saying why and what to do
        r = cli_as(p, t["dev"], "disable-ssh", "box")
        assert r.returncode == 0 and "ssh is now disabled for app box" in r.stdout, out(r)
        r = ssh(p, "box", "-c", "echo in")
        assert r.returncode == 1 and r.stdout == "", out(r)
        assert "ssh is disabled for app box" in r.stderr, out(r)
        assert "skiff enable-ssh box" in r.stderr, out(r)
        status, head, s = upgrade(p, "/v1/apps/box/ssh?command=true", world["admin"])
        s.close()
        assert status == 409, head
        r = cli_as(p, t["aud"], "ssh-enabled", "box")  # an auditor may look
        assert r.returncode == 0 and "ssh is disabled for app box" in r.stdout, out(r)
        r = cli_as(p, t["dev"], "enable-ssh", "box")
        assert r.returncode == 0, out(r)
        assert ssh(p, "box", "-c", "echo in").stdout == "in\n"

        # the space: its manager disallows it; the app's own setting does not override that
        r = cli_as(p, t["spmgr"], "disallow-space-ssh", "default/dev")
        assert r.returncode == 0 and "ssh is now not allowed in space default/dev" in r.stdout, \
            out(r)
        r = p.cli("space-ssh-allowed", "dev", check=True)
        assert r.stdout == "ssh is not allowed in space dev.\n", out(r)
        r = ssh(p, "box", "-c", "echo in")
        assert r.returncode == 1 and "ssh is not allowed in space dev" in r.stderr, out(r)
        assert "skiff allow-space-ssh dev" in r.stderr, out(r)
        r = cli_as(p, t["dev"], "enable-ssh", "box")
        assert r.returncode == 0, out(r)
        assert ssh(p, "box", "-c", "true").returncode == 1
        r = p.cli("ssh-enabled", "box", check=True)
        assert "not allowed in space dev" in r.stdout, out(r)
        r = cli_as(p, t["spmgr"], "allow-space-ssh", "default/dev")
        assert r.returncode == 0, out(r)
        assert ssh(p, "box", "-c", "echo in").stdout == "in\n"

        # each change is on the audit record, apart from the sessions
        status, body = p.api("GET", "/v1/audit_events?space=default/dev")
        assert status == 200
        kinds = {(e.get("type"), e.get("actor")) for e in body["audit_events"]}
        assert ("audit.app.features", "dev") in kinds, kinds
        assert ("audit.space.features", "spmgr") in kinds, kinds
    finally:
        p.api("PATCH", "/v1/apps/box/features/ssh?space=default/dev", {"enabled": True})
        p.api("PATCH", "/v1/orgs/default/spaces/dev/features/ssh", {"enabled": True})


def test_who_may_turn_ssh_on_and_off(world):
    """CF's table: SpaceDeveloper for the app, SpaceManager (or the OrgManager) for the space;
    an auditor toggles neither, a developer not the space, another space's developer sees
    nothing."""
    p, t = world["p"], world["tokens"]
    app_path = "/v1/apps/box/features/ssh?space=default/dev"
    space_path = "/v1/orgs/default/spaces/dev/features/ssh"
    for who, path, expected in [("aud", app_path, 403), ("spmgr", app_path, 403),
                                ("outsider", app_path, 404), ("aud", space_path, 403),
                                ("dev", space_path, 403), ("outsider", space_path, 404)]:
        status, body = p.api("PATCH", path, {"enabled": False}, token=t[who])
        assert status == expected, (who, path, status, body)
    r = cli_as(p, t["aud"], "disable-ssh", "box")
    assert r.returncode == 1 and "SpaceDeveloper" in r.stderr, out(r)
    for who in ("aud", "dev"):
        r = cli_as(p, t[who], "disallow-space-ssh", "dev")
        assert r.returncode == 1 and "SpaceManager" in r.stderr, out(r)
    # nothing changed, and a body that is not a boolean is refused
    assert p.api("GET", "/v1/apps/box/ssh_enabled?space=default/dev")[1]["enabled"] is True
    for bad in ({"enabled": "no"}, {"enabled": 0}, {}, {"enabled": False, "x": 1}):
        status, body = p.api("PATCH", app_path, bad)
        assert status in (400, 422), (bad, status, body)
        status, body = p.api("PATCH", space_path, bad)
        assert status in (400, 422), (bad, status, body)
    assert p.api("GET", "/v1/apps/box/ssh_enabled?space=default/dev")[1]["enabled"] is True
    assert p.api("GET", space_path)[1]["enabled"] is True
    # ssh is the one feature there is
    status, body = p.api("PATCH", "/v1/apps/box/features/revisions?space=default/dev",
                         {"enabled": False})
    assert status == 404 and "ssh is the one" in body["error"]["message"], body


def test_an_instances_own_token_cannot_ssh(world):
    """The publish token an instance finds in its environment (SKIFF_EVENTS_TOKEN) publishes
    events and nothing else: not an ssh session into its own app, its neighbour or another
    space's app."""
    p = world["p"]
    r = ssh(p, "box", "-c", 'printf %s "$SKIFF_EVENTS_TOKEN"')
    assert r.returncode == 0 and r.stdout, out(r)
    own = r.stdout
    # the other space's instance token too: an app pushed there by the admin
    home = p.home + "/other-login"
    os.makedirs(home + "/.skiff", exist_ok=True)
    with open(home + "/.skiff/cli.json", "w") as f:
        json.dump({"url": p.api_url, "token": world["admin"], "org": "other", "space": "x"}, f)
    r = cli_as(p, None, "push", "far", "-p", APP, home=home)
    assert r.returncode == 0, out(r)
    r = cli_as(p, None, "ssh", "far", "-c", 'printf %s "$SKIFF_EVENTS_TOKEN"', home=home)
    assert r.returncode == 0 and r.stdout, out(r)
    far = r.stdout
    assert own != far
    # refused before the place is looked at: the same 403 (what the token is for) whether the
    # app is its own, in another space, or does not exist
    for token, path in [(own, "/v1/apps/box/ssh?command=true"),
                        (own, "/v1/apps/box/ssh?command=true&space=default/dev"),
                        (own, "/v1/apps/box/ssh?index=1&command=true"),
                        (own, "/v1/apps/far/ssh?command=true&space=other/x"),
                        (own, "/v1/apps/nope/ssh?command=true&space=nope/nope"),
                        (far, "/v1/apps/box/ssh?command=true&space=default/dev"),
                        (far, "/v1/apps/far/ssh?command=true&space=other/x")]:
        status, head, s = upgrade(p, path, token)
        s.close()
        assert status == 403 and b"may only publish events" in head, (path, head[:300])
    # nor can it turn ssh off for its app or space
    status, _ = p.api("PATCH", "/v1/apps/box/features/ssh", {"enabled": False}, token=own)
    assert status == 403
    status, _ = p.api("PATCH", "/v1/orgs/default/spaces/dev/features/ssh", {"enabled": False},
                      token=own)
    assert status == 403
    assert p.api("GET", "/v1/apps/box/ssh_enabled?space=default/dev")[1]["enabled"] is True
    # the token still does what it is for
    status, _ = p.api("POST", "/v1/topics/t/events", {"n": 1}, token=own)
    assert status == 202


# ---- hostile clients -------------------------------------------------------------------------

def test_malformed_frames_end_the_session_not_skiffd(world):
    p = world["p"]
    marker = "sleep 7371"
    for garbage in (b"\xff\x00\x00\x00", b"\x00\xff\xff\xff" + b"x" * 100, b"\x05\x00\x00\x04abcd"):
        status, head, s = upgrade(p, f"/v1/apps/box/ssh?command={marker.replace(' ', '%20')}",
                                  world["admin"])
        assert status == 101
        wait_for(lambda: host_processes(marker), 20, "the command to run")
        s.sendall(garbage)
        frames = read_frames(s, head.split(b"\r\n\r\n", 1)[1])
        s.close()
        assert frames and frames[-1][0] == 6 and b"protocol error" in frames[-1][1], frames
        wait_for(lambda: not host_processes(marker), 20, "the command to end")
    assert p.info()
    r = ssh(p, "box", "-c", "echo still")
    assert r.stdout == "still\n", out(r)


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return [int(l.split()[1]) for l in f if l.startswith("VmRSS:")][0]


def test_a_client_that_never_reads_costs_skiffd_nothing(world):
    p = world["p"]
    status, _, s = upgrade(p, "/v1/apps/box/ssh?command=yes%20never-read-7381", world["admin"])
    assert status == 101
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wait_for(lambda: host_processes("never-read-7381"), 20, "the command to run")
        time.sleep(1)  # skiffd has had time to fill what it may buffer
        start = rss_kb(p.proc.pid)
        deadline = time.time() + 4
        while time.time() < deadline:  # `yes` writes gigabytes a second: none may pile up
            assert p.info()
            time.sleep(0.2)
        grown = rss_kb(p.proc.pid) - start
        assert grown < 32 * 1024, f"skiffd grew by {grown} kB for a client that does not read"
    finally:
        s.close()
    wait_for(lambda: not host_processes("never-read-7381"), 20, "the command to end")


def test_sessions_are_capped(world):
    p = world["p"]
    socks = []
    try:
        for _ in range(8):
            status, _, s = upgrade(p, "/v1/apps/box/ssh?command=sleep%207391", world["admin"])
            socks.append(s)
            assert status == 101
        status, head, s = upgrade(p, "/v1/apps/box/ssh?command=sleep%207391", world["admin"])
        s.close()
        assert status == 503, head
        # another instance has room of its own
        status, _, s = upgrade(p, "/v1/apps/box/ssh?index=1&command=true", world["admin"])
        s.close()
        assert status == 101
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: not host_processes("sleep 7391"), 20, "the sessions to end")
    status, _, s = upgrade(p, "/v1/apps/box/ssh?command=true", world["admin"])
    s.close()
    assert status == 101


# ---- after a skiffd restart ----------------------------------------------------------------------

def test_an_adopted_instance_gives_sessions_its_own_environment(world):
    """skiffd goes away (SIGUSR2: its instances keep running under their shims) and the next
    one adopts them: a session then sees the instance's VCAP_APPLICATION, PORT, CF_INSTANCE_*
    as before, not a plain environment. The ssh settings survive the restart too. Last in
    this file: it restarts the module's skiffd."""
    p = world["p"]
    show = 'printf "%s|%s|%s|%s" "$CF_INSTANCE_GUID" "$PORT" "$VCAP_APPLICATION" "$TMPDIR"'
    before = ssh(p, "box", "-i", "1", "-c", show)
    assert before.returncode == 0 and '"application_name":"box"' in before.stdout.replace(
        " ", ""), out(before)
    guid = instance(p, 1)["guid"]
    assert before.stdout.startswith(guid + "|8080|"), out(before)
    assert p.cli("disable-ssh", "box").returncode == 0
    os.kill(p.proc.pid, signal.SIGUSR2)
    p.proc.wait(20)
    assert p.proc.returncode == 0, p.output()
    p.start()
    def adopted():
        try:
            return instance(p, 1)["state"] == "RUNNING"
        except (IndexError, AssertionError):
            return False
    wait_for(adopted, 30, "instance 1 adopted")
    assert instance(p, 1)["guid"] == guid  # the same instance, not a new one
    r = ssh(p, "box", "-i", "1", "-c", "true")
    assert r.returncode == 1 and "ssh is disabled for app box" in r.stderr, out(r)
    assert p.cli("enable-ssh", "box").returncode == 0
    after = ssh(p, "box", "-i", "1", "-c", show)
    assert after.returncode == 0 and after.stdout == before.stdout, (out(before), out(after))


# ---- over the HTTPS API --------------------------------------------------------------------

def https_env(p, home, trust=True):
    """The CLI in its own HOME aimed at the HTTPS API with the admin token; trust: the local
    CA is where the CLI finds a local skiffd's ($SKIFF_HOME/tls/ca.pem)."""
    if trust:
        os.makedirs(os.path.join(home, "tls"), exist_ok=True)
        shutil.copy(os.path.join(p.home, "tls", "ca.pem"), os.path.join(home, "tls", "ca.pem"))
    env = p.env()
    env.update({"HOME": home, "SKIFF_HOME": home,
                "SKIFF_API": f"https://127.0.0.1:{p.api_tls_port}", "SKIFF_TOKEN": p.token})
    env.pop("SKIFF_SKIP_SSL_VALIDATION", None)
    return env


def skiff_with(env, *args, input=None):
    return subprocess.run([os.path.join(BIN_DIR, "skiff"), *args], env=env, input=input,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_ssh_over_the_https_api(world, tmp_path):
    p = world["p"]
    env = https_env(p, str(tmp_path))
    r = skiff_with(env, "ssh", "box", "-c", "cat; echo out; echo err >&2; exit 3",
                   input="from stdin\n")
    assert r.returncode == 3, out(r)
    assert r.stdout == "from stdin\nout\n" and "err" in r.stderr, out(r)
    # a few MB each way: the relay's queues fill and drain without losing a byte
    big = "y" * 2_000_000 + "\n"
    r = skiff_with(env, "ssh", "box", "-c", "wc -c; head -c 3000000 /dev/zero | tr '\\0' x",
                   input=big)
    assert r.returncode == 0, out(r)[:500]
    lines = r.stdout.split("\n", 1)
    assert lines[0].strip() == str(len(big)) and lines[1] == "x" * 3000000, out(r)[:500]


def test_ssh_over_https_refuses_an_untrusted_certificate(world, tmp_path):
    p = world["p"]
    marker = "sleep 7361"
    r = skiff_with(https_env(p, str(tmp_path), trust=False), "ssh", "box", "-c", marker)
    assert r.returncode == 1, out(r)
    assert "does not trust" in r.stderr and "--skip-ssl-validation" in r.stderr, out(r)
    assert not host_processes(marker)


def test_closing_an_https_ssh_client_ends_its_command(world, tmp_path):
    p = world["p"]
    marker = "sleep 7362"
    proc = subprocess.Popen([os.path.join(BIN_DIR, "skiff"), "ssh", "box", "-c", marker],
                            env=https_env(p, str(tmp_path)), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: host_processes(marker), 20, "the command to run")
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: not host_processes(marker), 20, "the command to end with its client")
    assert p.info()


def test_https_upgrade_attacks_leave_skiffd_serving(world):
    """Over TLS: an upgrade without a token is refused; one that sends garbage frames, or
    leaves in the middle of a record, ends its own session only."""
    p = world["p"]
    ctx = ssl.create_default_context(cafile=os.path.join(p.home, "tls", "ca.pem"))

    def tls_upgrade(token, extra=b""):
        raw = socket.create_connection(("127.0.0.1", p.api_tls_port), timeout=30)
        s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        head = ("POST /v1/apps/box/ssh?command=cat HTTP/1.1\r\nHost: x\r\n"
                "Connection: Upgrade\r\nUpgrade: skiff-ssh\r\nContent-Length: 0\r\n")
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        s.sendall(head.encode() + b"\r\n" + extra)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return (int(data.split(b" ", 2)[1]) if data else 0), s

    status, s = tls_upgrade(None)
    s.close()
    assert status == 401
    status, s = tls_upgrade(world["admin"], b"\xff\xff\xff\xff garbage")
    assert status == 101
    s.settimeout(30)
    frames = read_frames(s)  # the server ends the session and closes, close_notify first
    s.close()
    assert all(t != 1 for t, _ in frames), frames  # nothing of cat's came out
    status, s = tls_upgrade(world["admin"])
    assert status == 101
    # half a record on the same connection, then gone
    raw = socket.socket(fileno=os.dup(s.fileno()))
    raw.sendall(b"\x17\x03\x03\x40\x00" + b"z" * 100)
    raw.close()
    s.close()
    assert p.info()
    r = ssh(p, "box", "-c", "echo still")
    assert r.returncode == 0 and r.stdout == "still\n", out(r)
