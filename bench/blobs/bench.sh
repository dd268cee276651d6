#!/usr/bin/env bash
# Put and get of a SIZE_MB blob (50 by default, a large droplet) through src/blobs: files under
# a home (the embedded store) and chunks in PostgreSQL (a throwaway server on a Unix socket on
# this machine, fsync off as in the tests), and PostgreSQL's large objects as the peer the
# chunks were chosen over, in the same run; medians of ITERATIONS (5).
#   [SIZE_MB=50] bench/blobs/bench.sh [ITERATIONS]
# Needs the release build (make build; BUILD=DIR for another build folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
pkgs="libuv jansson libsodium sqlite3 libpq libcrypto libcurl libarchive"
cc -std=gnu11 -O2 -g -D_GNU_SOURCE -Isrc $(pkg-config --cflags $pkgs) -o "$build/bench_blobs" \
  bench/blobs/bench_blobs.c "$build/rel/libskiff.a" $(pkg-config --libs $pkgs) -lpthread -lm
n=${1:-5}
tmp=$(mktemp -d /tmp/skiff-bench-blobs-XXXXXX)
pg=$(mktemp -d /tmp/skiff-pg-XXXXXX)
trap 'scripts/pg-throwaway.sh stop "$pg"; rm -rf "$tmp"' EXIT
scripts/pg-throwaway.sh start "$pg" >/dev/null
url="postgres:///postgres?host=$pg&user=postgres"
echo "-- files"
"$build/bench_blobs" "sqlite:$tmp/skiff.db" "$tmp" "${SIZE_MB:-50}" "$n"
echo "-- postgresql (unix socket)"
"$build/bench_blobs" "$url" "$tmp" "${SIZE_MB:-50}" "$n"
