"""Cells' grants, measured (bench/cells/bench.sh runs this once per build and prints the ratio).

The cluster of tests/e2e/test_cells.py (a controller on a throwaway PostgreSQL, two cells on
NATS, each with its own token). An image app of LAYERS layers (default 10) is pushed with
INSTANCES instances (default 4, so two on each cell):

- grant writes per start: inserts and updates of `cell.grants` documents, counted by a trigger
  the bench adds to the database, divided by the instances started;
- a fetch's time: FETCHES (default 200) GET /v1/blobs/DIGEST of the image's top layer with
  the token of a cell that runs it (what a cell's fetch asks of the controller: the token and
  the grant checked, the blob streamed), one after another; p50 and p90 in ms.

One JSON line per run goes to $OUT (and stdout)."""
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "e2e"))

from conftest import wait_for  # noqa: E402
from controllers import psql  # noqa: E402
from test_cells import blob_status, cluster, running, token_of  # noqa: E402,F401 (a fixture)
from test_images import (DEFAULT_CONFIG, digest, image_config, layers_of,  # noqa: E402
                         oci_archive, server_binary, tar_bytes)  # noqa: F401 (a fixture)

LAYERS = int(os.environ.get("LAYERS", "10"))
INSTANCES = int(os.environ.get("INSTANCES", "4"))
FETCHES = int(os.environ.get("FETCHES", "200"))

COUNT_SQL = """
CREATE TABLE bench_grant_writes (n bigint NOT NULL);
INSERT INTO bench_grant_writes VALUES (0);
CREATE FUNCTION bench_count_grant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN UPDATE bench_grant_writes SET n = n + 1; RETURN NEW; END $$;
CREATE TRIGGER bench_count_grant AFTER INSERT OR UPDATE ON documents FOR EACH ROW
    WHEN (NEW.kind = 'cell.grants') EXECUTE FUNCTION bench_count_grant();
"""


def test_grant_writes_per_start_and_a_fetchs_time(cluster, server_binary, tmp_path):
    ctl = cluster.ctl
    psql(cluster.pg_dir, COUNT_SQL)
    base, top = layers_of(server_binary, "measured")
    extra = [tar_bytes([("srv/extra-%d" % i, b"layer %d\n" % i)], compress=True)
             for i in range(max(0, LAYERS - 2))]
    layers = [base] + extra + [top]
    oci_archive(tmp_path / "img.tar", layers, image_config(**DEFAULT_CONFIG))
    r = ctl.cli("push", "img", "--docker-image", "oci-archive:%s" % (tmp_path / "img.tar"),
                "-i", str(INSTANCES), timeout=600)
    assert r.returncode == 0 or "crashed" in r.stdout + r.stderr, r.stdout + r.stderr
    wait_for(lambda: len(running(ctl, "img")) == INSTANCES, 300, "the instances running")
    writes = int(psql(cluster.pg_dir, "SELECT n FROM bench_grant_writes").strip())
    cell_id = running(ctl, "img")[0]["cell"]
    (cell,) = [c for c in cluster.cells if c.id == cell_id]
    token, layer = token_of(cell), digest(top)
    times = []
    for _ in range(FETCHES):
        began = time.perf_counter()
        status, body = blob_status(ctl, layer, token)
        times.append((time.perf_counter() - began) * 1000)
        assert status == 200 and digest(body) == layer
    q = statistics.quantiles(times, n=10)
    row = {"bin": os.environ.get("SKIFF_BIN_DIR", ""), "layers": len(layers),
           "instances": INSTANCES, "grant_writes": writes,
           "writes_per_start": round(writes / INSTANCES, 2),
           "fetch_p50_ms": round(statistics.median(times), 3), "fetch_p90_ms": round(q[8], 3)}
    print(json.dumps(row))
    if os.environ.get("OUT"):
        with open(os.environ["OUT"], "a") as f:
            f.write(json.dumps(row) + "\n")
