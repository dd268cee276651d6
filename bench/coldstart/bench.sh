#!/usr/bin/env bash
# Cold starts from zero beside the bare start (see README.md): bench.py on the release build.
#   bash bench/coldstart/bench.sh [--runs N]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 bench/coldstart/bench.py --bin "$(realpath -m "${BUILD:-build}")/rel" "$@"
