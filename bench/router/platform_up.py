#!/usr/bin/env python3
"""The platform side of bench/router/platform_bench.sh.

  platform_up.py start --bin DIR --app FOLDER --name NAME
      starts skiffd (container isolation, the default) in a new home on free loopback ports,
      pushes FOLDER as app NAME with `skiff push` (its default route NAME.localhost), waits for
      its instance to run and for the router to answer through that route, and prints shell
      assignments: home, skiffd_pid, router_pid, router_port, instance_addr (the container's
      own HOST:PORT, as GET /v1/apps/NAME shows it). skiffd keeps running.
  platform_up.py stop HOME
      stops that skiffd (SIGTERM: the router and the instances go too), kills what is left
      of it and removes the home."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except (OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def start(bindir, app_dir, name):
    home = tempfile.mkdtemp(prefix="skiff-bench-platform-")
    os.chmod(home, 0o755)
    api_port, router_port, admin_port = free_port(), free_port(), free_port()
    env = dict(os.environ, SKIFF_HOME=home, HOME=home, SKIFF_API_ADDR=f"127.0.0.1:{api_port}",
               SKIFF_ROUTER_ADDR=f"127.0.0.1:{router_port}",
               SKIFF_ROUTER_ADMIN_ADDR=f"127.0.0.1:{admin_port}",
               SKIFF_BUILDPACKS=os.path.join(ROOT, "buildpacks"))
    env.pop("SKIFF_API", None)
    env.pop("SKIFF_TOKEN", None)
    with open(os.path.join(home, "skiffd.out"), "wb") as log:
        proc = subprocess.Popen([os.path.join(bindir, "skiffd")], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(home, "skiffd.pid"), "w") as f:
        f.write(str(proc.pid))
    api = f"http://127.0.0.1:{api_port}"
    try:
        wait_for(lambda: proc.poll() is None and
                 urllib.request.urlopen(api + "/v1/info", timeout=1).status == 200, 30, "skiffd")
        r = subprocess.run([os.path.join(bindir, "skiff"), "push", name, "-p", app_dir], env=env,
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"skiff push failed:\n{r.stdout}\n{r.stderr}")
        token = json.load(open(os.path.join(home, "api.json")))["token"]

        def instance_addr():
            req = urllib.request.Request(api + f"/v1/apps/{name}",
                                         headers={"Authorization": "Bearer " + token})
            app = json.load(urllib.request.urlopen(req, timeout=5))
            running = [i for i in app.get("instances_detail", []) if i.get("state") == "RUNNING"]
            return running[0].get("address") if running else None

        addr = wait_for(instance_addr, 60, "the instance to run")

        def routed():
            req = urllib.request.Request(f"http://127.0.0.1:{router_port}/small",
                                         headers={"Host": f"{name}.localhost"})
            return urllib.request.urlopen(req, timeout=2).read() == b"hello, world\n"

        wait_for(routed, 30, f"the router to answer for {name}.localhost")
        router_pid = int(open(os.path.join(home, "run", "router.pid")).read().split()[0])
    except BaseException:
        try:
            with open(os.path.join(home, "skiffd.out"), errors="replace") as f:
                sys.stderr.write("skiffd's output ends with:\n" + f.read()[-3000:])
        except OSError:
            pass
        stop(home)
        raise
    print(f"home={home} skiffd_pid={proc.pid} router_pid={router_pid} "
          f"router_port={router_port} instance_addr={addr}")


def kill_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(home):
    try:
        pid = int(open(os.path.join(home, "skiffd.pid")).read())
    except (OSError, ValueError):
        pid = 0
    gone = not pid
    if pid:
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:  # our own child when stop follows a failed start
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        gone = True
                        break
                except ChildProcessError:
                    pass
                os.kill(pid, 0)  # raises once it is gone
                time.sleep(0.05)
        except ProcessLookupError:
            gone = True
    if not gone:  # skiffd did not stop: end what it started (recorded under run/)
        kill_group(pid, signal.SIGKILL)
        run = os.path.join(home, "run")
        for entry in os.listdir(run) if os.path.isdir(run) else []:
            if entry.endswith(".pid"):
                try:
                    kill_group(int(open(os.path.join(run, entry)).read().split()[0]),
                               signal.SIGKILL)
                except (OSError, ValueError, IndexError):
                    pass
    shutil.rmtree(home, ignore_errors=True)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "stop":
        stop(sys.argv[2])
        return
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["start"])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--app", required=True)
    ap.add_argument("--name", default="bench")
    args = ap.parse_args()
    start(args.bin, args.app, args.name)


if __name__ == "__main__":
    main()
