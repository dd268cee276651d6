#!/usr/bin/env bash
# HTTPS benchmark: the same static backend (nginx, one worker) behind nginx terminating TLS
# (proxy_pass with upstream keepalive, one worker) and behind skiff-router's HTTPS listener
# (one worker), with the same certificate (EC P-256) and the cipher both pick (TLS 1.3,
# TLS_AES_256_GCM_SHA384, X25519, checked below): keep-alive requests with wrk at 32 and 256
# connections for a small and a 64 KB response, then new handshakes per second with
# `openssl s_time`, full (-new) and resumed by session ticket (-reuse); last, HTTP/2 over TLS
# (ALPN h2; nginx `listen ... ssl http2`) with h2load at 32 and 256 connections of 8 streams.
#   bench/router/tls_bench.sh   (SECONDS_PER_RUN=3, REPEAT=3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
router_bin=${ROUTER_BIN:-$root/build/rel/skiff-router}
secs=${SECONDS_PER_RUN:-3}
threads=${WRK_THREADS:-2}
streams=${H2_STREAMS:-8}
host=bench.localhost
scheme=https
[ -x "$router_bin" ] || { echo "build the router first: make build" >&2; exit 1; }
command -v wrk >/dev/null && command -v nginx >/dev/null && command -v openssl >/dev/null &&
  command -v h2load >/dev/null || { echo "needs wrk, nginx, openssl and h2load (scripts/deps.sh)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

. "$here/lib.sh"
bench_workdir tls

tls_proxies_start

for name in nginx skiff; do
  port_var=${name}_port
  printf '%-6s ' "$name"
  openssl s_client -connect "127.0.0.1:${!port_var}" -servername "$host" </dev/null 2>/dev/null |
    awk '/^Server Temp Key/ {k = $4} /^New,/ {p = $2 " " $5} END {print p, k}'
done

repeat=${REPEAT:-3}
printf '\n%-7s %-6s | %9s %7s %5s | %9s %7s %5s | %6s\n' size conns nginx p99ms cpuus skiff p99ms cpuus "x"
for size in small 64k; do
  for conns in 32 256; do
    n_runs="" s_runs=""
    for _ in $(seq "$repeat"); do
      n_runs+="$(run_wrk_once "$nginx_port" "$conns" "$size" "$nginx_pid")"$'\n'
      s_runs+="$(run_wrk_once "$skiff_port" "$conns" "$size" "$skiff_pid")"$'\n'
    done
    read -r n np nc < <(printf '%s' "$n_runs" | median)
    read -r s sp sc < <(printf '%s' "$s_runs" | median)
    printf '%-7s %-6s | %9.0f %7.2f %5s | %9.0f %7.2f %5s | %6s\n' "$size" "$conns" "$n" "$np" "$nc" "$s" "$sp" "$sc" \
      "$(awk -v a="$s" -v b="$n" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
  done
done
echo "(requests/s over keep-alive HTTPS/1.1, p99 ms, CPU µs per request: medians of $repeat runs of ${secs} s)"

# handshakes per second: two s_time clients at once (one per core), summed; a median of runs
handshakes() { # PORT MODE -> connections per second (of wall time)
  local total=0 rate k
  local -a clients=()
  for k in 1 2; do
    openssl s_time -connect "127.0.0.1:$1" "$2" -time "$secs" >"$work/st.$k" 2>/dev/null &
    clients+=($!)
  done
  wait "${clients[@]}" || true
  for k in 1 2; do
    rate=$(awk '/connections in .* real seconds/ {r = ($4 > 0 ? $1 / $4 : 0)} END {print r + 0}' "$work/st.$k")
    total=$(awk -v a="$total" -v b="$rate" 'BEGIN { print a + b }')
  done
  echo "$total"
}
printf '\n%-8s | %9s %9s | %6s\n' handshake nginx skiff x
for mode in -new -reuse; do
  n_runs="" s_runs=""
  for _ in $(seq "$repeat"); do
    n_runs+="$(handshakes "$nginx_port" "$mode")"$'\n'
    s_runs+="$(handshakes "$skiff_port" "$mode")"$'\n'
  done
  n=$(printf '%s' "$n_runs" | median)
  s=$(printf '%s' "$s_runs" | median)
  printf '%-8s | %9.0f %9.0f | %6s\n' "${mode#-}" "$n" "$s" "$(awk -v a="$s" -v b="$n" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
done
echo "(new TLS connections per second, two openssl s_time clients side by side; new = full handshake, reuse = resumed)"

# HTTP/2 over TLS: h2load, h2 agreed by ALPN, on the same listeners
printf '\n%-7s %-6s | %9s %7s %5s | %9s %7s %5s | %6s\n' size conns nginx-h2 p99ms cpuus skiff-h2 p99ms cpuus "x"
for size in small 64k; do
  for conns in 32 256; do
    n_runs="" s_runs=""
    for _ in $(seq "$repeat"); do
      n_runs+="$(run_h2load_once "$nginx_port" "$conns" "$size" https "$nginx_pid")"$'\n'
      s_runs+="$(run_h2load_once "$skiff_port" "$conns" "$size" https "$skiff_pid")"$'\n'
    done
    read -r n np nc < <(printf '%s' "$n_runs" | median)
    read -r s sp sc < <(printf '%s' "$s_runs" | median)
    printf '%-7s %-6s | %9.0f %7.2f %5s | %9.0f %7.2f %5s | %6s\n' "$size" "$conns" "$n" "$np" "$nc" "$s" "$sp" "$sc" \
      "$(awk -v a="$s" -v b="$n" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
  done
done
echo "(HTTP/2 over TLS: requests/s, p99 ms per request, CPU µs per request: medians of $repeat runs"
echo " of ${secs} s, $streams streams per connection, one worker each; 'x' = skiff / nginx)"
