#!/usr/bin/env bash
# Durable publishes per second: Skiff's fabric (in-process, and over HTTP through skiffd when
# it can be started) beside NATS JetStream (Debian's nats-server, file storage, on loopback
# with a temporary store; a second one with `sync_interval: always` where the server accepts it,
# as the durable peer), all driven by bench_fabric.c. Prints a table with ratios.
#   bash bench/fabric/bench.sh [SECONDS_PER_SHAPE]     (default 3)
# BUILD=DIR takes skiffd from DIR/rel (as `make BUILD=DIR build` puts it); SKIFFD=PATH names the
# binary itself (to compare two builds in one sitting).
set -uo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-3}
build=${BUILD:-build}
skiffd=${SKIFFD:-$build/rel/skiffd}
out=$build/bench
mkdir -p "$out"
tmp=$(mktemp -d /tmp/skiff-bench-fabric-XXXXXX)
nats_pid=""
nats_sync_pid=""
skiffd_pid=""
cleanup() {
  [ -n "$skiffd_pid" ] && kill -INT "$skiffd_pid" 2>/dev/null && wait "$skiffd_pid" 2>/dev/null
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null
  [ -n "$nats_sync_pid" ] && kill "$nats_sync_pid" 2>/dev/null && wait "$nats_sync_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

pkgs="libuv jansson libsodium libnats"
cc -std=gnu11 -O2 -g -D_GNU_SOURCE -Isrc $(pkg-config --cflags $pkgs) -o "$out/bench_fabric" \
  bench/fabric/bench_fabric.c src/fabric/fabric.c src/fabric/fabric_backend.c src/fabric/fabric_nats.c src/fabric/crc32c.c src/fabric/cloudevents.c src/http/url.c src/natsconn/natsconn.c \
  src/common/*.c $(pkg-config --libs $pkgs) -lpthread -lm || exit 1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
results="$tmp/results"
: >"$results"

"$out/bench_fabric" fsync "$tmp/fsync" "$secs" | tee -a "$results"
"$out/bench_fabric" fsync "$tmp/fsync" "$secs" prezero | tee -a "$results"
"$out/bench_fabric" lib "$tmp/fabric" "$secs" | tee -a "$results"
"$out/bench_fabric" lib "$tmp/fabric-nosync" "$secs" nosync | tee -a "$results"

# NATS JetStream with file storage: publishing to it directly, and Skiff's fabric on it
nats_port=$(free_port)
printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s/nats" }\n' "$nats_port" "$tmp" >"$tmp/nats.conf"
nats-server -c "$tmp/nats.conf" >"$tmp/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 100); do grep -q "Server is ready" "$tmp/nats.log" && break; sleep 0.1; done
nats_url="nats://127.0.0.1:$nats_port"
"$out/bench_fabric" jetstream "$nats_url" "$secs" | tee -a "$results"
"$out/bench_fabric" lib-jetstream "$nats_url" "$secs" | tee -a "$results"

# JetStream that fsyncs every write before it acknowledges (`sync_interval: always`, nats-server
# 2.10 and later): as durable as the Skiff rows. A server without the option refuses the
# configuration, and the row is left out with its words.
sync_note="$tmp/sync-note"
: >"$sync_note"
printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s/nats-sync", sync_interval: always }\n' \
  "$(free_port)" "$tmp" >"$tmp/nats-sync.conf"
if nats-server -t -c "$tmp/nats-sync.conf" >"$tmp/nats-sync-check.log" 2>&1; then
  nats-server -c "$tmp/nats-sync.conf" >"$tmp/nats-sync.log" 2>&1 &
  nats_sync_pid=$!
  for _ in $(seq 100); do grep -q "Server is ready" "$tmp/nats-sync.log" && break; sleep 0.1; done
  sync_url="nats://127.0.0.1:$(sed -n 's/^listen: 127.0.0.1:\([0-9]*\)$/\1/p' "$tmp/nats-sync.conf")"
  BENCH_JS_MODE=jetstream-sync "$out/bench_fabric" jetstream "$sync_url" "$secs" | tee -a "$results"
  kill "$nats_sync_pid" 2>/dev/null && wait "$nats_sync_pid" 2>/dev/null
  nats_sync_pid=""
else
  grep -m1 . "$tmp/nats-sync-check.log" | sed "s/^.*conf:[0-9:]* //" >"$sync_note"
  echo "jetstream-sync: left out, this nats-server refuses sync_interval: $(cat "$sync_note")" >&2
fi

# skiffd over HTTP (MODE, then skiffd's extra arguments), when the release build exists
http_rows() {
  local mode=$1; shift
  local home="$tmp/home-$mode"; mkdir -p "$home"
  local api_port; api_port=$(free_port)
  SKIFF_HOME="$home" HOME="$home" SKIFF_API_ADDR="127.0.0.1:$api_port" \
    SKIFF_ROUTER_ADDR="127.0.0.1:$(free_port)" SKIFF_ROUTER_ADMIN_ADDR="127.0.0.1:$(free_port)" \
    SKIFF_ROUTER_TLS_ADDR="127.0.0.1:$(free_port)" SKIFF_API_TLS_ADDR="127.0.0.1:$(free_port)" \
    "$skiffd" "$@" >"$tmp/skiffd-$mode.log" 2>&1 &
  skiffd_pid=$!
  for _ in $(seq 100); do [ -s "$home/api.json" ] && curl -sf "http://127.0.0.1:$api_port/v1/info" >/dev/null && break; sleep 0.1; done
  if [ -s "$home/api.json" ]; then
    token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$home/api.json")
    # skiffd's CPU time (user + system, from /proc) over each shape, per event
    for shape in single concurrent pipelined batched; do
      cpu0=$(awk '{print $14 + $15}' "/proc/$skiffd_pid/stat")
      BENCH_HTTP_MODE=$mode "$out/bench_fabric" http "http://127.0.0.1:$api_port" "$token" "$secs" "$shape" |
        tee "$tmp/shape" | tee -a "$results"
      cpu1=$(awk '{print $14 + $15}' "/proc/$skiffd_pid/stat")
      awk -v ticks=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v shape="$shape" -v mode="$mode" \
        '$2 == shape { printf "%s cpu %s %.2f\n", mode, shape, ticks / hz * 1e6 / $3 }' \
        "$tmp/shape" | tee -a "$results"
    done
  else
    echo "skiffd did not start; $mode figures skipped (see $tmp/skiffd-$mode.log)" >&2
  fi
  kill -INT "$skiffd_pid" 2>/dev/null && wait "$skiffd_pid" 2>/dev/null
  skiffd_pid=""
}
if [ -x "$skiffd" ]; then
  http_rows skiff-http
  http_rows skiff-http-js --nats "$nats_url"
fi
nats_version=$(nats-server --version)

python3 - "$results" "$nats_version" "$(cat "$sync_note")" <<'PY'
import sys
rows = {}
lat = {}
cpu = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if parts[1] == "latency":
        lat[parts[0]] = (float(parts[2]), float(parts[3]))
        continue
    if parts[1] == "cpu":
        cpu[(parts[0], parts[2])] = float(parts[3])
        continue
    mode, shape, n, secs, rate = parts
    rows[(mode, shape)] = float(rate)
modes = [m for m in ["fdatasync-loop", "fdatasync-prezero", "skiff-lib", "skiff-http", "skiff-lib-nosync", "skiff-lib-js", "skiff-http-js", "jetstream", "jetstream-sync"] if any(k[0] == m for k in rows)]
peers = [p for p in ("jetstream", "jetstream-sync") if p in modes]
shapes = ["single", "concurrent", "pipelined", "batched"]
# JetStream keeps its concurrent publishes on one connection: the peer of HTTP's pipelined shape
for p in peers:
    if (p, "concurrent") in rows:
        rows[(p, "pipelined")] = rows[(p, "concurrent")]
print()
print("durable publishes per second (200-byte events); ratio = Skiff / JetStream")
print("%-28s" % "" + "".join("%14s" % s for s in shapes))
for m in modes:
    print("%-28s" % m + "".join("%14.0f" % rows.get((m, s), 0) for s in shapes))
# the durable peer is compared with the durable rows (the others are there for JetStream's default)
durable = ("fdatasync-loop", "fdatasync-prezero", "skiff-lib", "skiff-http")
for p in peers:
    for m in modes:
        if m in peers or (p == "jetstream-sync" and m not in durable):
            continue
        print("%-28s" % (m + " / " + p.replace("jetstream", "js")) + "".join(
            "%14s" % ("%.2fx" % (rows[(m, s)] / rows[(p, s)]) if (m, s) in rows and rows.get((p, s)) else "-")
            for s in shapes))
for m in ("skiff-http", "skiff-http-js"):
    if any(k[0] == m for k in cpu):
        print("%-28s" % (m + " CPU us/ev") + "".join("%14s" % ("%.1f" % cpu[(m, s)] if (m, s) in cpu else "-") for s in shapes))
print()
print("single-publish acknowledgement latency (microseconds)")
print("%-24s%14s%14s" % ("", "p50", "p99"))
for m in modes:
    if m in lat:
        print("%-24s%14.0f%14.0f" % (m, lat[m][0], lat[m][1]))
print()
print("fdatasync-loop: a bare loop of one append + fdatasync on the same disk, nothing else: the")
print("most single durable publishes per second that any durable path gets here; the file grows")
print("with each record. fdatasync-prezero: the same into zero-filled space, as the fabric writes.")
print("skiff-lib: the fabric in-process, each acknowledgement after fdatasync (group commit).")
print("skiff-http: POST to skiffd, 202 after fdatasync. skiff-lib-nosync: no fsync at all.")
print("pipelined: HTTP only, 64 publishes in flight on one connection; its JetStream figure is")
print("JetStream's concurrent one (64 async publishes on one connection).")
print("jetstream: %s, file storage, its default: it acknowledges before it fsyncs (2.9 syncs" % sys.argv[2])
print("a stream's files every 60 s, 2.10 and later every 2 minutes), so compare it with skiff-lib-nosync.")
if "jetstream-sync" in peers:
    print("jetstream-sync: the same server with sync_interval: always, an fsync before each")
    print("acknowledgement: the durable peer of the Skiff rows.")
else:
    print("jetstream-sync (sync_interval: always, the durable peer) left out: this nats-server")
    print("refuses the option (%s); it came in 2.10.0." % (sys.argv[3] or "no reason given"))
print("skiff-lib-js / skiff-http-js: Skiff's fabric on that same nats-server (skiffd --nats),")
print("acknowledged when JetStream acknowledged (R1): the cost of Skiff over JetStream itself.")
PY
