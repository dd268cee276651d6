#!/usr/bin/env bash
# The store's calls on SQLite (a file) and on PostgreSQL (a throwaway server on a Unix socket
# on this machine), per call, and PostgreSQL's p50 over SQLite's: the time a call holds
# skiffd's event loop, as every store call is synchronous today (src/store/README.md).
#   bench/store/bench.sh [ITERATIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/bench
mkdir -p "$out"
pkgs="jansson libsodium sqlite3 libpq"
cc -std=gnu11 -O2 -g -D_GNU_SOURCE -Isrc $(pkg-config --cflags $pkgs) -o "$out/bench_store" \
  bench/store/bench_store.c src/store/store.c src/store/store_sqlite.c src/store/store_pg.c \
  src/common/util.c src/common/log.c src/common/buf.c $(pkg-config --libs $pkgs) -lpthread -lm
n=${1:-2000}
tmp=$(mktemp -d /tmp/skiff-bench-store-XXXXXX)
pg=$(mktemp -d /tmp/skiff-pg-XXXXXX)
trap 'scripts/pg-throwaway.sh stop "$pg"; rm -rf "$tmp"' EXIT
scripts/pg-throwaway.sh start "$pg" >/dev/null
echo "-- sqlite"
"$out/bench_store" "sqlite:$tmp/skiff.db" "$n" | tee "$tmp/sqlite.txt"
echo "-- postgresql (unix socket)"
"$out/bench_store" "postgres:///postgres?host=$pg&user=postgres" "$n" | tee "$tmp/pg.txt"
echo "-- postgresql / sqlite, p50"
paste "$tmp/sqlite.txt" "$tmp/pg.txt" | awk '{printf "%-14s %6.1fx\n", $1, $10 / $3}'
