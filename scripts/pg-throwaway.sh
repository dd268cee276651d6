#!/bin/sh
# A throwaway PostgreSQL server for tests, listening only on a Unix socket in DIR.
#   scripts/pg-throwaway.sh start DIR   initdb into DIR/data and start; prints the socket dir
#   scripts/pg-throwaway.sh stop DIR    stop it and remove DIR
# The server runs as the postgres OS user when started by root (PostgreSQL refuses root).
# Connect with postgres:///postgres?host=DIR&user=postgres; no password (trust, socket only).
set -eu
bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?start or stop}
dir=${2:?a directory}
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case $cmd in
start)
  mkdir -p "$dir"
  [ "$(id -u)" -ne 0 ] || chown postgres "$dir"
  if ! as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync \
      >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    exit 1
  fi
  if ! as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-k $dir -c listen_addresses='' -c fsync=off" start >/dev/null; then
    cat "$dir/server.log" >&2
    exit 1
  fi
  echo "$dir"
  ;;
stop)
  [ ! -d "$dir/data" ] || as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null || true
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start|stop DIR" >&2
  exit 2
  ;;
esac
