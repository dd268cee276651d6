#!/usr/bin/env bash
# The authorisation hook alone against the admin-token compare it replaced (bench_authz.c).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=build/bench
mkdir -p "$out"
pkgs="jansson libsodium sqlite3 libpq"
cc -std=gnu11 -O2 -g -D_GNU_SOURCE -Isrc $(pkg-config --cflags $pkgs) -o "$out/bench_authz" \
  bench/daemon/bench_authz.c src/auth/auth.c src/store/store.c src/store/store_sqlite.c src/store/store_pg.c \
  src/common/util.c src/common/log.c \
  src/common/buf.c $(pkg-config --libs $pkgs) -lpthread -lm
tmp=$(mktemp -d /tmp/skiff-bench-authz-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$out/bench_authz" "$tmp"
