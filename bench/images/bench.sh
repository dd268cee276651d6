#!/usr/bin/env bash
# Prebuilt images beside skopeo, a second push, starts beside a droplet (see README.md):
# bench.py on the release build.
#   bash bench/images/bench.sh [--runs N] [--starts N]
set -euo pipefail
cd "$(dirname "$0")/../.."
exec /usr/bin/python3 bench/images/bench.py --bin "$(realpath -m "${BUILD:-build}")/rel" "$@"
