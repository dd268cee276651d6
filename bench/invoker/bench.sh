#!/usr/bin/env bash
# Delivery benchmark with its peer: NATS JetStream (Debian's nats-server, file storage, on
# loopback with a temporary store) measured by jetstream_peer.c through libnats, then Skiff
# measured by bench_invoker.py (release build of skiffd), printed side by side with ratios.
#   bash bench/invoker/bench.sh [bench_invoker.py options: --events N --rate R --seconds S ...]
# Needs `make build` (build/rel) and libnats, nats-server (scripts/deps.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=build/bench
mkdir -p "$out"
tmp=$(mktemp -d /tmp/skiff-bench-invoker-js-XXXXXX)
nats_pid=""
cleanup() {
  [ -n "$nats_pid" ] && kill "$nats_pid" 2>/dev/null && wait "$nats_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# The peer uses the same event count, rate and duration as the Skiff run.
events=20000 rate=1000 seconds=5
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --events) events=${args[$((i + 1))]} ;;
    --rate) rate=${args[$((i + 1))]} ;;
    --seconds) seconds=${args[$((i + 1))]} ;;
  esac
done

cc -std=gnu11 -O2 -g -Wall -Wextra -o "$out/jetstream_peer" bench/invoker/jetstream_peer.c \
  $(pkg-config --cflags --libs libnats) -lpthread || exit 1

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s/nats" }\n' "$nats_port" "$tmp" >"$tmp/nats.conf"
nats-server -c "$tmp/nats.conf" >"$tmp/nats.log" 2>&1 &
nats_pid=$!
for _ in $(seq 100); do grep -q "Server is ready" "$tmp/nats.log" && break; sleep 0.1; done
if ! grep -q "Server is ready" "$tmp/nats.log"; then
  echo "nats-server did not start:" >&2
  cat "$tmp/nats.log" >&2
  exit 1
fi
"$out/jetstream_peer" "nats://127.0.0.1:$nats_port" "$events" "$rate" "$seconds" | tee "$tmp/js" || exit 1
# Stopped before Skiff's run so the two never share the 2 cores.
kill "$nats_pid" && wait "$nats_pid" 2>/dev/null
nats_pid=""

/usr/bin/python3 bench/invoker/bench_invoker.py "$@" --jetstream-results "$tmp/js" \
  --jetstream-version "$(nats-server --version)"
