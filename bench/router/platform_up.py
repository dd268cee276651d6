#!/usr/bin/env python3
"""The platform side of bench/router/platform_bench.sh.

  platform_up.py start --bin DIR --app FOLDER --name NAME
      starts skiffd (container isolation, the default) in a new home on free loopback ports,
      pushes FOLDER as app NAME with `skiff push` (its default route NAME.localhost), waits for
      its instance to run and for the router to answer through that route, and prints shell
      assignments: home, skiffd_pid, router_pid, router_port, router_tls_port (its HTTPS
      listener), instance_addr (the container's own HOST:PORT, as GET /v1/apps/NAME shows it).
      skiffd keeps running.
  platform_up.py stop HOME
      stops that skiffd (SIGTERM: the router and the instances go too), kills what is left
      of it and removes the home."""
import json
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import skiffd  # noqa: E402
from skiffd import wait_for  # noqa: E402


def start(bindir, app_dir, name):
    d = skiffd.start(bindir, "skiff-bench-platform-")
    try:
        r = d.cli("push", name, "-p", app_dir)
        if r.returncode != 0:
            raise SystemExit(f"skiff push failed:\n{r.stdout}\n{r.stderr}")

        def instance_addr():
            status, body = d.call("GET", f"/v1/apps/{name}")
            app = json.loads(body)
            running = [i for i in app.get("instances_detail", []) if i.get("state") == "RUNNING"]
            return running[0].get("address") if running else None

        addr = wait_for(instance_addr, 60, "the instance to run", interval=0.05)

        def routed():
            req = urllib.request.Request(f"http://127.0.0.1:{d.router_port}/small",
                                         headers={"Host": f"{name}.localhost"})
            return urllib.request.urlopen(req, timeout=2).read() == b"hello, world\n"

        wait_for(routed, 30, f"the router to answer for {name}.localhost", interval=0.05)
        router_pid = int(open(os.path.join(d.home, "run", "router.pid")).read().split()[0])
        tls_port = int(d.env["SKIFF_ROUTER_TLS_ADDR"].rsplit(":", 1)[1])
    except BaseException:
        sys.stderr.write("skiffd's output ends with:\n" + skiffd.tail(d.home))
        d.stop()
        raise
    print(f"home={d.home} skiffd_pid={d.proc.pid} router_pid={router_pid} "
          f"router_port={d.router_port} router_tls_port={tls_port} instance_addr={addr}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "stop":
        skiffd.stop_home(sys.argv[2])
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
