#!/usr/bin/env bash
# skiffd: RSS idle and with 1,000 stopped apps, GET /v1/apps latency, push to first request.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 bench/daemon/daemon_bench.py "$@"
