#!/usr/bin/env bash
# Reads of routes, tasks and apps while writes wait in the store's queue, against the same
# reads with an empty queue in the same run (bench/store/queued_reads.c), on a throwaway
# PostgreSQL server on a Unix socket. With BASE=REV, that git revision's store runs too, on
# the same server in the same run (before/after).
#   [BASE=REV] bench/store/queued_reads.sh [QUEUED] [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/bench
mkdir -p "$out"
pkgs="jansson libsodium sqlite3 libpq"
build() { # SRCDIR BINARY: that tree's store, this tree's benchmark
  cc -std=gnu11 -O2 -g -D_GNU_SOURCE -I"$1/src" $(pkg-config --cflags $pkgs) -o "$2" \
    bench/store/queued_reads.c "$1/src/store/store.c" "$1/src/store/store_sqlite.c" \
    "$1/src/store/store_pg.c" "$1/src/common/util.c" "$1/src/common/log.c" "$1/src/common/buf.c" "$1/src/common/err.c" \
    $(pkg-config --libs $pkgs) -lpthread -lm
}
build . "$out/queued_reads"
tmp=$(mktemp -d /tmp/skiff-bench-queued-XXXXXX)
pg=$(mktemp -d /tmp/skiff-pg-XXXXXX)
trap 'scripts/pg-throwaway.sh stop "$pg"; rm -rf "$tmp"' EXIT
if [ -n "${BASE:-}" ]; then
  mkdir "$tmp/base"
  git archive "$BASE" src | tar -x -C "$tmp/base"
  build "$tmp/base" "$out/queued_reads_base"
fi
scripts/pg-throwaway.sh start "$pg" >/dev/null
url() { echo "postgres:///$1?host=$pg&user=postgres"; }
if [ -n "${BASE:-}" ]; then
  psql -q -h "$pg" -U postgres -c "CREATE DATABASE base" postgres
  echo "-- $BASE"
  "$out/queued_reads_base" "$(url base)" "${1:-5000}" "${2:-200}"
fi
echo "-- this tree"
"$out/queued_reads" "$(url postgres)" "${1:-5000}" "${2:-200}"
