#!/usr/bin/env bash
# A function inside an app beside the same function on its own (see bench.py): release build.
#   bash bench/appfuncs/bench.sh [--runs N] [--burst N]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 bench/appfuncs/bench.py --bin "$(realpath -m "${BUILD:-build}")/rel" "$@"
