#!/usr/bin/python3
"""How often a follower reads every event mapping again from the store while another skiffd
heartbeats and writes documents of other kinds, for two builds in the same run.

For each build: a throwaway PostgreSQL, a leading skiffd `a` and a following one `b` on it
(cell heartbeats every 300 ms each), and through `a` a login every 100 ms (token documents)
for DURATION seconds. b's GET /metrics counts its reads of the mappings
(skiff_event_mapping_store_reads_total); the rate is printed with the ratio between builds.
BASE_BIN_DIR must carry that counter (a build before the change with only it added).

Usage: BASE_BIN_DIR=DIR SKIFF_BIN_DIR=DIR bench/store/mapping_reads.py [DURATION]"""
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import conftest  # noqa: E402
from conftest import throwaway_postgres, wait_for  # noqa: E402
from controllers import cells, leading, skiffd  # noqa: E402

METRIC = re.compile(r"^skiff_event_mapping_store_reads_total (\d+)$", re.M)


def reads(p):
    status, text = p.api("GET", "/metrics")
    assert status == 200, text
    return int(METRIC.search(text).group(1))


def login(p):
    with open(os.path.join(p.home, "admin-password")) as f:
        password = f.read().strip()
    status, body = p.api("POST", "/v1/auth/token", {"grant_type": "password",
                                                    "username": "admin",
                                                    "password": password},
                         token=False)
    assert status == 200, body


def rate(bin_dir, duration):
    conftest.BIN_DIR = bin_dir
    with throwaway_postgres() as d:
        a = skiffd(d, "zone-a").start()
        b = None
        try:
            wait_for(lambda: leading(a), 15, "a to lead")
            b = skiffd(d, "zone-b").start()
            wait_for(lambda: len(cells(b)["cells"]) == 2, 15, "both cells' heartbeats")
            time.sleep(1)
            before, began = reads(b), time.monotonic()
            logins = 0
            while time.monotonic() - began < duration:
                login(a)
                logins += 1
                time.sleep(0.1)
            after, took = reads(b), time.monotonic() - began
            return (after - before) / took, logins / took
        finally:
            for p in (b, a):
                if p:
                    p.stop()
                    p.close()


def main():
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 20
    base, new = os.environ["BASE_BIN_DIR"], os.environ["SKIFF_BIN_DIR"]
    r_base, l_base = rate(base, duration)
    r_new, l_new = rate(new, duration)
    print(f"base ({base}): {r_base:.2f} mapping reads/s on the follower "
          f"({l_base:.1f} logins/s through the leader)")
    print(f"new  ({new}): {r_new:.2f} mapping reads/s on the follower "
          f"({l_new:.1f} logins/s through the leader)")
    print(f"new / base: {r_new / r_base:.3f}" if r_base else "base read nothing")


if __name__ == "__main__":
    main()
