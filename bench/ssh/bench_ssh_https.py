"""`skiff ssh` over the API's HTTPS address against the same over its HTTP address, in one run.

    /usr/bin/python3 bench/ssh/bench_ssh_https.py [--mb 200] [--runs 3] [--bin build/rel]

One app (examples/python-web); each run is `skiff ssh box -c "head -c N /dev/zero"`, from the
CLI's start to its exit with every byte of stdout read. Peer: the HTTP address (the socket goes
to the session as it is). Subject: the HTTPS address (the frames go through a TLS relay,
src/http/tls_relay.c). Prints the best run of each in MB/s and the ratio subject / peer."""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import skiffd  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "rel"))
    a = ap.parse_args()
    d = skiffd.start(os.path.abspath(a.bin))
    try:
        r = d.cli("push", "box", "-p", os.path.join(ROOT, "examples", "python-web"))
        if r.returncode != 0:
            raise SystemExit(f"push failed:\n{r.stdout}\n{r.stderr}")
        n = a.mb * 1000 * 1000
        tls_addr = d.env["SKIFF_API_TLS_ADDR"]
        rates = {}
        for name, url in (("http", d.api), ("https", f"https://{tls_addr}")):
            env = dict(d.env, SKIFF_API=url, SKIFF_TOKEN=d.token)
            best = None
            for _ in range(a.runs):
                t = time.monotonic()
                r = subprocess.run([os.path.join(d.bindir, "skiff"), "ssh", "box", "-c",
                                    f"head -c {n} /dev/zero"], env=env, capture_output=True,
                                   timeout=600)
                took = time.monotonic() - t
                if r.returncode != 0 or len(r.stdout) != n:
                    raise SystemExit(f"ssh over {name} failed: {r.stderr[-500:]!r}")
                best = took if best is None else min(best, took)
            rates[name] = a.mb / best
            print(f"ssh stdout over {name}: {a.mb} MB in {best:.2f} s (best of {a.runs}) = "
                  f"{rates[name]:.0f} MB/s")
        print(f"ratio https / http: {rates['https'] / rates['http']:.2f}")
    finally:
        d.stop()


if __name__ == "__main__":
    main()
