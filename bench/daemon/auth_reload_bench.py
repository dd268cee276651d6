#!/usr/bin/python3
"""What a skiffd on a shared PostgreSQL store pays on its loop to read users, roles and tokens
again after another skiffd changed them (auth_catch_up, src/auth/README.md), by the number of
token records in the store, against the same read with 1,000 records in the same run.

Starts a throwaway PostgreSQL and one skiffd on it (SKIFF_LOG_LEVEL=debug, whose log says how
long each reading took), adds made-up token records with psql and moves the generation record
as another skiffd's change would, then reads the time from the log.

Usage: SKIFF_BIN_DIR=build/rel bench/daemon/auth_reload_bench.py"""
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from conftest import wait_for  # noqa: E402
from test_controllers import PG, leading, psql, skiffd  # noqa: E402

SIZES = (1000, 10000, 100000)
LINE = re.compile(r"read again from the store in (\d+) ms")


def main():
    d = tempfile.mkdtemp(prefix="skiff-pg-")
    subprocess.run([PG, "start", d], check=True, capture_output=True, timeout=120)
    try:
        p = skiffd(d, "bench")
        p.extra_env["SKIFF_LOG_LEVEL"] = "debug"
        p.start()
        try:
            wait_for(lambda: leading(p), 15, "skiffd to lead")
            took, total = {}, 0
            for n in SIZES:
                psql(d, "INSERT INTO documents SELECT 'auth.token', 'made-up-' || g, "
                        "'{\"hash\":\"' || md5(g::text) || md5((g + 1)::text) || "
                        "'\",\"user\":\"nobody\",\"kind\":\"api\",\"name\":\"t' || g || "
                        "'\",\"expires_at\":0,\"created_at\":0}', 0 "
                        f"FROM generate_series({total}, {n - 1}) g")
                total = n
                seen = len(LINE.findall(p.output()))
                psql(d, "INSERT INTO documents VALUES ('auth.generation', 'auth', "
                        f"'{{\"generation\":\"bench{n}\"}}', 0) ON CONFLICT (kind, id) "
                        "DO UPDATE SET body = excluded.body")
                wait_for(lambda: len(LINE.findall(p.output())) > seen, 30, "the reading")
                took[n] = int(LINE.findall(p.output())[-1])
                time.sleep(2.5)  # ticks with nothing changed read nothing
                assert len(LINE.findall(p.output())) == seen + 1, "read again without a change"
            base = max(took[SIZES[0]], 1)
            for n in SIZES:
                print(f"{n:>7} token records: read again in {took[n]} ms "
                      f"({took[n] / base:.1f}x the {SIZES[0]}-record reading)")
        finally:
            p.stop()
            p.close()
    finally:
        subprocess.run([PG, "stop", d], check=True, timeout=120)


if __name__ == "__main__":
    main()
