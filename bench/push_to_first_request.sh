#!/usr/bin/env bash
# Push examples/python-web and time until its first successful request through the router
# (release build, fresh app each run). Target: 2 s. Usage: bench/push_to_first_request.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/daemon/daemon_bench.py --push-only --runs "${1:-5}"
