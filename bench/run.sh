#!/usr/bin/env bash
# Runs every benchmark under bench/ (each folder's bench.sh and *_bench.sh, or else its
# bench_*.py), briefly: the machine is shared.
#   bench/run.sh            all of them
#   bench/run.sh router     one of them
set -euo pipefail
cd "$(dirname "$0")"
for dir in */; do
  name=${dir%/}
  [ $# -gt 0 ] && [ "$1" != "$name" ] && continue
  if [ -x "$dir/bench.sh" ]; then
    echo "== bench: $name"
    "$dir/bench.sh"
    for script in "$dir"*_bench.sh; do
      [ -x "$script" ] || continue
      echo "== bench: $name ($(basename "$script"))"
      "$script"
    done
  else
    for script in "$dir"bench_*.py; do
      [ -f "$script" ] || continue
      echo "== bench: $name ($(basename "$script"))"
      /usr/bin/python3 "$script"
    done
  fi
done
