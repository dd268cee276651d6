#!/usr/bin/env bash
# The store's calls on SQLite (a file) and on PostgreSQL (a throwaway server on a Unix socket
# on this machine), per call, and PostgreSQL's p50 over SQLite's. On PostgreSQL app_get and
# app_list are answered from the read cache the change feed keeps (src/store/README.md);
# doc_put is a write, a round trip. With BASE=REV, the store of that git revision runs too,
# on the same server in the same run (before/after). APPS apps are made (20 by default).
#   [BASE=REV] [APPS=N] bench/store/bench.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/bench
mkdir -p "$out"
pkgs="jansson libsodium sqlite3 libpq"
build() { # SRCDIR BINARY: that tree's store, this tree's benchmark
  cc -std=gnu11 -O2 -g -D_GNU_SOURCE -I"$1/src" $(pkg-config --cflags $pkgs) -o "$2" \
    bench/store/bench_store.c "$1/src/store/store.c" "$1/src/store/store_sqlite.c" \
    "$1/src/store/store_pg.c" "$1/src/common/util.c" "$1/src/common/log.c" "$1/src/common/buf.c" \
    $(pkg-config --libs $pkgs) -lpthread -lm
}
build . "$out/bench_store"
n=${1:-2000}
tmp=$(mktemp -d /tmp/skiff-bench-store-XXXXXX)
pg=$(mktemp -d /tmp/skiff-pg-XXXXXX)
trap 'scripts/pg-throwaway.sh stop "$pg"; rm -rf "$tmp"' EXIT
if [ -n "${BASE:-}" ]; then
  mkdir "$tmp/base"
  git archive "$BASE" src | tar -x -C "$tmp/base"
  build "$tmp/base" "$out/bench_store_base"
fi
scripts/pg-throwaway.sh start "$pg" >/dev/null
url() { echo "postgres:///$1?host=$pg&user=postgres"; }
echo "-- sqlite"
"$out/bench_store" "sqlite:$tmp/skiff.db" "$n" "${APPS:-20}" | tee "$tmp/sqlite.txt"
if [ -n "${BASE:-}" ]; then
  psql -q -h "$pg" -U postgres -c "CREATE DATABASE base" postgres
  echo "-- postgresql (unix socket), $BASE"
  "$out/bench_store_base" "$(url base)" "$n" "${APPS:-20}" | tee "$tmp/base.txt"
fi
echo "-- postgresql (unix socket)"
"$out/bench_store" "$(url postgres)" "$n" "${APPS:-20}" | tee "$tmp/pg.txt"
echo "-- postgresql / sqlite, p50"
if [ -n "${BASE:-}" ]; then
  paste "$tmp/sqlite.txt" "$tmp/base.txt" "$tmp/pg.txt" |
    awk '{printf "%-14s %s %8.1fx   now %8.1fx\n", $1, ENVIRON["BASE"], $10 / $3, $17 / $3}'
else
  paste "$tmp/sqlite.txt" "$tmp/pg.txt" | awk '{printf "%-14s %6.1fx\n", $1, $10 / $3}'
fi
