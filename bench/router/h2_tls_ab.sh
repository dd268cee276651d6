#!/usr/bin/env bash
# Two skiff-router builds and nginx taking turns in one sitting, HTTP/2 over TLS (h2load, h2 by
# ALPN, $H2_STREAMS streams per connection), each proxying to the same nginx backend with the
# same certificate: one line per run with req/s, the mean, p50, p90 and p99 of the per-request
# times h2load logs, and the proxy's CPU per request. For latency changes on a shared machine,
# where only runs alternated in one sitting compare.
#   ROUTER_A=/tmp/old/rel/skiff-router ROUTER_B=build/rel/skiff-router \
#     [WORKERS=0] [NGINX_WORKERS=1] [REPEAT=3] [SECONDS_PER_RUN=3] [CASES="small 32,64k 32"] \
#     [ORDER="nginx a b"] bash bench/router/h2_tls_ab.sh
# WORKERS is the routers' --workers (0: one per core, as skiffd starts it); WORKERS_A and
# WORKERS_B set one router's alone (the same binary twice compares worker counts).
# PROTO=https1: keep-alive HTTPS/1.1 with wrk (-t2) instead, the same columns (wrk's mean and
# percentiles).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
secs=${SECONDS_PER_RUN:-3}; threads=${H2LOAD_THREADS:-2}; streams=${H2_STREAMS:-8}; host=bench.localhost
workers=${WORKERS:-0}
. "$here/lib.sh"
# run_once PORT CONNS PATH PID -> "rps mean M p50 M p90 M p99 M cpu US" (ms; µs per request)
run_once() {
  local port=$1 conns=$2 path=$3 pid=$4 out reqs t0 t1
  [ "${PROTO:-h2}" = https1 ] && { run_wrk_ab "$@"; return; }
  t0=$(cpu_ticks "$pid")
  out=$(timeout $((secs + 60)) h2load -t"$threads" -c"$conns" -m"$streams" -D"$secs" --warm-up-time=1 -N10 --log-file="$work/h2load.log" -H ":authority: $host" "https://127.0.0.1:$port/$path" 2>&1) || true
  t1=$(cpu_ticks "$pid")
  reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  sort -n -k3,3 "$work/h2load.log" | awk -v rps="$rps" -v t=$((t1 - t0)) -v n="$reqs" -v hz=$(getconf CLK_TCK) '{v[NR]=$3; s+=$3} END {printf "%.0f mean %.2f p50 %.2f p90 %.2f p99 %.2f cpu %.1f", rps, s/NR/1000, v[int(NR*0.5)]/1000, v[int(NR*0.9)]/1000, v[int(NR*0.99)]/1000, (n>0 ? t*1e6/hz/n : 0)}'
  rm -f "$work/h2load.log"
}
# run_wrk_ab PORT CONNS PATH PID: as run_once, HTTPS/1.1 with wrk
run_wrk_ab() {
  local port=$1 conns=$2 path=$3 pid=$4 out t0 t1
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -H "Host: $host" "https://127.0.0.1:$port/$path" 2>&1)
  t1=$(cpu_ticks "$pid")
  awk -v t=$((t1 - t0)) -v hz=$(getconf CLK_TCK) '
    function ms(v) { if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000; if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0; return substr(v, 1, length(v) - 1) * 1000 }
    $1 == "Latency" && !mean { mean = ms($2) } $1 == "50%" { p50 = ms($2) } $1 == "90%" { p90 = ms($2) }
    $1 == "99%" { p99 = ms($2) } /requests in/ { n = $1 } /^Requests\/sec:/ { rps = $2 }
    END { printf "%.0f mean %.2f p50 %.2f p90 %.2f p99 %.2f cpu %.1f", rps, mean, p50, p90, p99, (n > 0 ? t * 1e6 / hz / n : 0) }' <<<"$out"
}
bench_workdir h2tlsab
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$host" -addext "subjectAltName=DNS:$host,IP:127.0.0.1" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
bench_backend
nginx_port=$(free_port)
nginx_conf nginx ${NGINX_WORKERS:-1} "$(tls_proxy_conf "$nginx_port" "127.0.0.1:$backend_port" "$work/cert.pem" "$work/key.pem")"
nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" & pids+=($!)
nginx_pid=$!
start() { # name bin workers
  local h="$work/$1"; mkdir -p "$h/run" "$h/tls"; cat "$work/cert.pem" "$work/key.pem" >"$h/tls/default.pem"; chmod 600 "$h/tls/default.pem"
  printf '{"type":"routes","version":1,"routes":[{"host":"%s","path":"","app_guid":"","app_name":"bench","backends":[{"addr":"127.0.0.1:%s","index":0}]}]}\n' "$host" "$backend_port" >"$h/run/routes.json"
  local port=$(free_port)
  "$2" --home "$h" --addr "127.0.0.1:$(free_port)" --tls-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$(free_port)" --workers "${3:-$workers}" 2>"$h/router.err" &
  echo "$port $!"
}
[ -x "${ROUTER_A:-}" ] && [ -x "${ROUTER_B:-}" ] || { echo "ROUTER_A and ROUTER_B: two skiff-router binaries" >&2; exit 1; }
read -r a_port a_pid < <(start a "$ROUTER_A" "${WORKERS_A:-}"); pids+=("$a_pid")
read -r b_port b_pid < <(start b "$ROUTER_B" "${WORKERS_B:-}"); pids+=("$b_pid")
for p in $backend_port $nginx_port $a_port $b_port; do wait_port "$p"; done
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
IFS=, read -ra cases <<<"${CASES:-small 32,64k 32}"
for case in "${cases[@]}"; do
  set -- $case
  for name in ${ORDER:-nginx a b}; do eval "r_$name=''"; done
  for _ in $(seq ${REPEAT:-3}); do
    for name in ${ORDER:-nginx a b}; do
      pv=${name}_port; pidv=${name}_pid
      eval "r_$name+=\"\$(run_once \${!pv} $2 $1 \${!pidv})\"\$'\n'"
    done
  done
  for name in ${ORDER:-nginx a b}; do v=r_$name; printf '%s' "${!v}" | sed "s/^/$1 $2 $name /"; done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
