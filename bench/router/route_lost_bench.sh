#!/bin/bash
# Builds and runs route_lost_bench.c against the router's route_table.c (optimised as the
# release build is). ROUTES, BACKENDS, RUNS as in the .c file.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/route_lost_bench}
cc -std=gnu11 -O2 -D_GNU_SOURCE -Isrc -o "$out" bench/router/route_lost_bench.c \
    src/router/route_table.c src/router/route_stats.c src/common/util.c -ljansson -lpthread
"$out"
