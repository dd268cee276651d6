#!/usr/bin/env bash
# HTTP/2 through the router: h2load (nghttp2-client) with prior knowledge against skiff-router
# and nginx (`listen ... http2`, cleartext), both proxying to the same static backend (nginx,
# one worker) over HTTP/1.1 with keep-alive, one worker each, then one per core each; a small
# and a 64 KB response, 32 and 256 connections of 8 streams each.
#   bench/router/h2_bench.sh       (SECONDS_PER_RUN=2, REPEAT=3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
router_bin=${ROUTER_BIN:-$root/build/rel/skiff-router}
secs=${SECONDS_PER_RUN:-2}
threads=${H2LOAD_THREADS:-2}
streams=${H2_STREAMS:-8}
host=bench.localhost
[ -x "$router_bin" ] || { echo "build the router first: make build" >&2; exit 1; }
command -v h2load >/dev/null && command -v nginx >/dev/null || { echo "needs h2load and nginx (scripts/deps.sh)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

. "$here/lib.sh"
bench_workdir h2

bench_backend

# nginx as the HTTP/2 peer: the same proxy settings as bench.sh's, on an h2c listener
h2_proxy_conf() { proxy_conf "$1" "$2" | sed "s/listen 127.0.0.1:$1;/listen 127.0.0.1:$1 http2;/"; }
nginx1_port=$(free_port)
nginx_conf nginx1 1 "$(h2_proxy_conf "$nginx1_port" "127.0.0.1:$backend_port")"
own_session nginx -c "$work/nginx1/nginx.conf" -e "$work/nginx1/error.log" & pids+=($!)
nginx1_pid=$!
nginxn_port=$(free_port)
nginx_conf nginxn auto "$(h2_proxy_conf "$nginxn_port" "127.0.0.1:$backend_port")"
own_session nginx -c "$work/nginxn/nginx.conf" -e "$work/nginxn/error.log" & pids+=($!)
nginxn_pid=$!
read -r skiff1_port skiff1_pid < <(start_router skiff1 1 "127.0.0.1:$backend_port")
read -r skiffn_port skiffn_pid < <(start_router skiffn 0 "127.0.0.1:$backend_port")
pids+=("$skiff1_pid" "$skiffn_pid")
for p in $backend_port $nginx1_port $nginxn_port $skiff1_port $skiffn_port; do wait_port "$p"; done

repeat=${REPEAT:-3}
declare -A runs
printf '\n%-7s %-6s | %9s %7s %5s | %9s %7s %5s | %9s %7s %5s | %9s %7s %5s | %6s %6s\n' \
  size conns nginx-1w p99ms cpuus skiff-1w p99ms cpuus nginx-Nw p99ms cpuus skiff-Nw p99ms cpuus "1w x" "Nw x"
for size in small 64k; do
  for conns in 32 256; do
    for name in nginx1 skiff1 nginxn skiffn; do runs[$name]=""; done
    for _ in $(seq "$repeat"); do
      for name in nginx1 skiff1 nginxn skiffn; do
        port_var=${name}_port pid_var=${name}_pid
        runs[$name]+="$(run_h2load_once "${!port_var}" "$conns" "$size" http "${!pid_var}")"$'\n'
      done
    done
    read -r n1 n1p n1c < <(printf '%s' "${runs[nginx1]}" | median)
    read -r s1 s1p s1c < <(printf '%s' "${runs[skiff1]}" | median)
    read -r nn nnp nnc < <(printf '%s' "${runs[nginxn]}" | median)
    read -r sn snp snc < <(printf '%s' "${runs[skiffn]}" | median)
    r1=$(awk -v a="$s1" -v b="$n1" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    rn=$(awk -v a="$sn" -v b="$nn" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf '%-7s %-6s | %9.0f %7.2f %5s | %9.0f %7.2f %5s | %9.0f %7.2f %5s | %9.0f %7.2f %5s | %6s %6s\n' \
      "$size" "$conns" "$n1" "$n1p" "$n1c" "$s1" "$s1p" "$s1c" "$nn" "$nnp" "$nnc" "$sn" "$snp" "$snc" "$r1" "$rn"
  done
done
echo "(HTTP/2 requests/s, p99 time per request in ms and proxy CPU microseconds per request: each"
echo " the median of $repeat runs of ${secs}s, $streams streams per connection; 'x' = skiff-router"
echo " throughput / nginx's with the same workers)"
