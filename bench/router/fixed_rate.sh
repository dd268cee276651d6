#!/usr/bin/env bash
# Latency at the same offered load: nginx and skiff-router (one worker each, HTTPS/1.1 or, with
# PROTO=h2, HTTP/2 over TLS, on the same certificate, as tls_bench.sh) in front of the same backend, each sent the same fixed
# rate of requests, so that their percentiles compare like with like. A closed loop (wrk,
# tls_bench.sh) gives each proxy the load it can take: the faster one then runs its backend
# and the clients harder, and its p99 is measured at a higher throughput than the other's.
#
# For each size and connection count: each proxy's closed-loop rate (wrk, or h2load for h2;
# $secs s), then
# RATE_PCT (default 80) percent of the lower of the two is offered to both in turn with
# h2load --h1 --rps (the same rate per connection, for about $secs s), REPEAT times, the
# order alternated.
# Prints the offered rate, what each completed, and the p50 / p99 / p99.9 of its requests'
# times (h2load's log: from a request's send to its response's end); 'x' is skiff's p99 over
# nginx's.
#   bench/router/fixed_rate.sh   (PROTO=https1|h2, SECONDS_PER_RUN=5, REPEAT=3, RATE_PCT=80,
#                                 CASES="small 32,small 256,64k 32,64k 256", H2_STREAMS=8)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
router_bin=${ROUTER_BIN:-$root/build/rel/skiff-router}
secs=${SECONDS_PER_RUN:-5}
threads=${WRK_THREADS:-2}
pct=${RATE_PCT:-80}
repeat=${REPEAT:-3}
cases=${CASES:-small 32,small 256,64k 32,64k 256}
proto=${PROTO:-https1}
streams=${H2_STREAMS:-8}
case $proto in
  https1) wire=h1 proto_name="HTTPS/1.1" ;;
  h2) wire=h2 proto_name="HTTP/2 over TLS ($streams streams a connection)" ;;
  *) echo "PROTO is https1 or h2" >&2; exit 2 ;;
esac
host=bench.localhost
scheme=https
[ -x "$router_bin" ] || { echo "build the router first: make build" >&2; exit 1; }
command -v wrk >/dev/null && command -v nginx >/dev/null && command -v h2load >/dev/null ||
  { echo "needs wrk, nginx and h2load (scripts/deps.sh)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

. "$here/lib.sh"
bench_workdir rate
tls_proxies_start

printf '%-6s %-5s %8s | %8s %6s %6s %6s | %8s %6s %6s %6s | %5s\n' size conns offered \
  nginx p50 p99 p99.9 skiff p50 p99 p99.9 x
IFS=, read -ra case_list <<<"$cases"
for c in "${case_list[@]}"; do
  read -r size conns <<<"$c"
  if [ "$proto" = h2 ]; then
    n_max=$(run_h2load_once "$nginx_port" "$conns" "$size" https | awk '{print $1}')
    s_max=$(run_h2load_once "$skiff_port" "$conns" "$size" https | awk '{print $1}')
  else
    n_max=$(run_wrk_once "$nginx_port" "$conns" "$size" | awk '{print $1}')
    s_max=$(run_wrk_once "$skiff_port" "$conns" "$size" | awk '{print $1}')
  fi
  per_conn=$(rate_per_conn "$n_max" "$s_max" "$pct" "$conns")
  read -r n n50 n99 n999 s s50 s99 s999 < <(at_rate_both "$nginx_port" "$skiff_port" "$conns" "$size" "$per_conn" https "$wire")
  printf '%-6s %-5s %8.0f | %8.0f %6.2f %6.2f %6.2f | %8.0f %6.2f %6.2f %6.2f | %5s\n' "$size" "$conns" \
    "$(awk -v r="$per_conn" -v c="$conns" 'BEGIN { print r * c }')" \
    "$n" "$n50" "$n99" "$n999" "$s" "$s50" "$s99" "$s999" \
    "$(awk -v a="$s99" -v b="$n99" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
done
echo "($proto_name at a fixed offered rate, ${pct}% of the lower closed-loop rate of the two: completed"
echo " requests/s and p50 / p99 / p99.9 ms per request, medians of $repeat runs of ${secs} s, one worker"
echo " each; 'x' = skiff's p99 / nginx's)"
