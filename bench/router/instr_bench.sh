#!/usr/bin/env bash
# Instructions per request of two skiff-router binaries over TLS, counted by callgrind: a
# figure the load of a shared machine does not move (wall-clock CPU per request moves 10-20%
# with it), for changes too small to see otherwise (a copy of a response body is about one
# instruction per byte here: valgrind counts each byte of `rep movsb`). Each router (one
# worker, HTTPS listener, the same EC P-256 certificate) proxies to the same nginx backend;
# h2load warms it with 300 requests, then callgrind's counters are zeroed, N requests are made
# (8 connections; HTTP/2 with 8 streams each, or HTTP/1.1 with --h1) and the count is read.
#   BASE=/tmp/old/rel/skiff-router ROUTER_BIN=build/rel/skiff-router bash bench/router/instr_bench.sh
# Needs valgrind (callgrind_control), h2load, nginx, openssl. N=1000 (64 KB), 3 x N for small.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
router_bin=${ROUTER_BIN:-$root/build/rel/skiff-router}
base_bin=${BASE:?BASE=path of the skiff-router to compare with}
n=${N:-1000}
host=bench.localhost
for b in "$router_bin" "$base_bin"; do [ -x "$b" ] || { echo "no router at $b" >&2; exit 1; }; done
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && command -v h2load >/dev/null &&
  command -v nginx >/dev/null || { echo "needs valgrind, h2load and nginx" >&2; exit 1; }
. "$here/lib.sh"
bench_workdir instr
bench_cert
bench_backend
wait_port "$backend_port"

# count BIN PROTO PATH REQUESTS -> instructions per request, one router under callgrind
count() {
  local bin=$1 proto=$2 path=$3 reqs=$4 home port vpid h1="" m=8 out ok total f
  home=$(mktemp -d "$work/r.XXXXXX")
  router_home "$home" "127.0.0.1:$backend_port" tls
  port=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$home/cg.out" "$bin" --home "$home" \
    --addr "127.0.0.1:$(free_port)" --tls-addr "127.0.0.1:$port" \
    --admin-addr "127.0.0.1:$(free_port)" --workers 1 2>"$home/router.err" &
  vpid=$!
  pids+=("$vpid")
  for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
  [ "$proto" = https1 ] && { h1="--h1"; m=1; }
  h2load $h1 -n 300 -c 8 -m "$m" -H ":authority: $host" "https://127.0.0.1:$port/$path" >/dev/null 2>&1
  callgrind_control -z "$vpid" >/dev/null 2>&1
  out=$(h2load $h1 -n "$reqs" -c 8 -m "$m" -H ":authority: $host" "https://127.0.0.1:$port/$path" 2>&1)
  callgrind_control -d "$vpid" >/dev/null 2>&1 # the counts since the zero, in cg.out.1
  for _ in $(seq 100); do [ -s "$home/cg.out.1" ] && break; sleep 0.1; done
  sleep 0.5
  kill "$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
  ok=$(awk '/^requests:/ {print $8}' <<<"$out")
  [ "${ok:-0}" = "$reqs" ] || echo "$bin $proto $path: $ok of $reqs answered" >&2
  f=$home/cg.out.1
  total=$(awk '/^(summary|totals):/ {t = $2} END {print t + 0}' "$f")
  awk -v t="$total" -v n="${ok:-0}" 'BEGIN { printf "%.0f", (n > 0 ? t / n : 0) }'
}

printf '%-7s %-6s | %12s %12s | %6s\n' proto size base router "x"
for proto in h2 https1; do
  for size in small 64k; do
    reqs=$n
    [ "$size" = small ] && reqs=$((3 * n))
    a=$(count "$base_bin" "$proto" "$size" "$reqs")
    b=$(count "$router_bin" "$proto" "$size" "$reqs")
    printf '%-7s %-6s | %12s %12s | %6s\n' "$proto" "$size" "$a" "$b" \
      "$(awk -v a="$b" -v b="$a" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')"
  done
done
echo "(instructions per request in the router, callgrind, one worker; x = router / base: below 1 is fewer)"
