#!/usr/bin/env bash
# Runs every benchmark under bench/ (each folder's bench.sh), briefly: the machine is shared.
#   bench/run.sh            all of them
#   bench/run.sh router     one of them
set -euo pipefail
cd "$(dirname "$0")"
for dir in */; do
  name=${dir%/}
  [ $# -gt 0 ] && [ "$1" != "$name" ] && continue
  [ -x "$dir/bench.sh" ] || continue
  echo "== bench: $name"
  "$dir/bench.sh"
done
