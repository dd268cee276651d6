#!/usr/bin/env bash
# Router benchmark: the same static backend (nginx, one worker) reached directly, through nginx
# as a reverse proxy (upstream keepalive; one worker, then worker_processes auto), and through
# skiff-router (one worker, then one per core), with wrk at 32 and 256 connections, for a small
# and a 64 KB response; then the memory of skiff-router holding 10,000 idle keep-alive clients;
# then the route update time, and HTTP/2 against nginx (h2_bench.sh).
#   bench/router/bench.sh       (SECONDS_PER_RUN=2, REPEAT=5: about four minutes in all)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
router_bin=${ROUTER_BIN:-$root/build/rel/skiff-router}
secs=${SECONDS_PER_RUN:-2}
threads=${WRK_THREADS:-2}
host=bench.localhost
[ -x "$router_bin" ] || { echo "build the router first: make build" >&2; exit 1; }
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (scripts/deps.sh)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

. "$here/lib.sh"
bench_workdir router

bench_backend
direct_pid=$backend_pid

nginx1_port=$(free_port)
nginx_conf nginx1 1 "$(proxy_conf "$nginx1_port" "127.0.0.1:$backend_port")"
own_session nginx -c "$work/nginx1/nginx.conf" -e "$work/nginx1/error.log" & pids+=($!)
nginx1_pid=$!
nginxn_port=$(free_port)
nginx_conf nginxn auto "$(proxy_conf "$nginxn_port" "127.0.0.1:$backend_port")"
own_session nginx -c "$work/nginxn/nginx.conf" -e "$work/nginxn/error.log" & pids+=($!)
nginxn_pid=$!

read -r skiff1_port skiff1_pid < <(start_router skiff1 1 "127.0.0.1:$backend_port")
read -r skiffn_port skiffn_pid < <(start_router skiffn 0 "127.0.0.1:$backend_port")
pids+=("$skiff1_pid" "$skiffn_pid") # started in a subshell: remember them here
for p in $backend_port $nginx1_port $nginxn_port $skiff1_port $skiffn_port; do wait_port "$p"; done

# The machine is shared and noisy: each case runs REPEAT times, the proxies taking turns, and
# the median of each figure (throughput, p99, CPU per request) over the runs is reported.
repeat=${REPEAT:-5}
declare -A runs
printf '\n%-7s %-6s | %9s | %9s %7s %5s | %9s %7s %5s | %9s %7s %5s | %9s %7s %5s | %6s %6s\n' \
  size conns direct nginx-1w p99ms cpuus skiff-1w p99ms cpuus nginx-Nw p99ms cpuus skiff-Nw p99ms cpuus "1w x" "Nw x"
for size in small 64k; do
  for conns in 32 256; do
    for name in direct nginx1 skiff1 nginxn skiffn; do runs[$name]=""; done
    for _ in $(seq "$repeat"); do
      for name in direct nginx1 skiff1 nginxn skiffn; do
        port_var=${name}_port pid_var=${name}_pid
        [ "$name" = direct ] && port_var=backend_port
        runs[$name]+="$(run_wrk_once "${!port_var}" "$conns" "$size" "${!pid_var}")"$'\n'
      done
    done
    read -r d _ < <(printf '%s' "${runs[direct]}" | median)
    read -r n1 n1p n1c < <(printf '%s' "${runs[nginx1]}" | median)
    read -r s1 s1p s1c < <(printf '%s' "${runs[skiff1]}" | median)
    read -r nn nnp nnc < <(printf '%s' "${runs[nginxn]}" | median)
    read -r sn snp snc < <(printf '%s' "${runs[skiffn]}" | median)
    r1=$(awk -v a="$s1" -v b="$n1" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    rn=$(awk -v a="$sn" -v b="$nn" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf '%-7s %-6s | %9.0f | %9.0f %7.2f %5s | %9.0f %7.2f %5s | %9.0f %7.2f %5s | %9.0f %7.2f %5s | %6s %6s\n' \
      "$size" "$conns" "$d" "$n1" "$n1p" "$n1c" "$s1" "$s1p" "$s1c" "$nn" "$nnp" "$nnc" "$sn" "$snp" "$snc" "$r1" "$rn"
  done
done
echo "(requests/s, p99 latency in ms and proxy CPU microseconds per request: each the median of"
echo " $repeat runs of ${secs}s; 'x' = skiff-router throughput / nginx's with the same workers)"

# 10,000 idle keep-alive clients on the router with one worker per core
rss_before=$(awk '/^VmRSS:/ {print $2}' "/proc/$skiffn_pid/status")
python3 "$here/idle_clients.py" "$skiffn_port" 10000 "/proc/$skiffn_pid/status"
echo "(router RSS before: $((rss_before / 1024)) MB)"

# how long a route change made through the API takes to reach the router
echo
/usr/bin/python3 "$here/route_update.py" --bin "$(dirname "$router_bin")"

# the same proxies over HTTP/2 (h2load, prior knowledge)
echo
ROUTER_BIN="$router_bin" bash "$here/h2_bench.sh"
