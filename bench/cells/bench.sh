#!/bin/sh
# Cells' grants: writes per start of an image app and a blob fetch's time, this build against
# BASE's (bench/cells/grants.py; as root, PostgreSQL and nats-server as the e2e tests need).
#   BASE_BIN_DIR=/tmp/b-main/rel SKIFF_BIN_DIR=/tmp/b/rel sh bench/cells/bench.sh
#   LAYERS=10 INSTANCES=4 FETCHES=200 ...
set -e
cd "$(dirname "$0")/../.."
: "${BASE_BIN_DIR:?the peer build's binaries (make BUILD=... build of the base)}"
: "${SKIFF_BIN_DIR:=build/rel}"
OUT=$(mktemp)
for bin in "$BASE_BIN_DIR" "$SKIFF_BIN_DIR"; do
    SKIFF_BIN_DIR=$bin OUT=$OUT /usr/bin/python3 -m pytest -q -s -p no:cacheprovider \
        bench/cells/grants.py --timeout 900 >/dev/null
done
/usr/bin/python3 - "$OUT" <<'PY'
import json, sys
base, now = [json.loads(l) for l in open(sys.argv[1])]
for row in (base, now):
    print("%-28s layers %d, %d instances: %d grant writes (%.2f per start), fetch p50 %.2f ms, "
          "p90 %.2f ms" % (row["bin"], row["layers"], row["instances"], row["grant_writes"],
                           row["writes_per_start"], row["fetch_p50_ms"], row["fetch_p90_ms"]))
print("writes per start: %.3fx the base's; fetch p50: %.2fx" % (
    now["writes_per_start"] / base["writes_per_start"], now["fetch_p50_ms"] / base["fetch_p50_ms"]))
PY
rm -f "$OUT"
