#!/usr/bin/env bash
# h2c to the instances of an `http2` route: HTTP/2 clients (h2load, prior knowledge, 8 streams
# per connection) through skiff-router (one worker, a route with "protocol": "http2") and
# through nginx (one worker, `grpc_pass` with upstream keepalive, nginx's way to an h2c
# backend) to the same h2c server (nghttpd --no-tls, one worker, serving the small and 64 KB
# files), small and 64 KB at 32 and 256 client connections. After each run it counts the
# TCP connections from the proxy to the backend that are open: the router multiplexes its
# streams on a few (ROUTER_H2C_CONNS per worker at most), nginx sends one request at a time
# per upstream connection.
#   bench/router/h2c_bench.sh       (SECONDS_PER_RUN=3, REPEAT=3)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
router_bin=${ROUTER_BIN:-$root/build/rel/skiff-router}
secs=${SECONDS_PER_RUN:-3}
threads=${H2LOAD_THREADS:-2}
streams=${H2_STREAMS:-8}
host=bench.localhost
[ -x "$router_bin" ] || { echo "build the router first: make build" >&2; exit 1; }
command -v h2load >/dev/null && command -v nginx >/dev/null && command -v nghttpd >/dev/null ||
  { echo "needs h2load, nghttpd and nginx (scripts/deps.sh)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

. "$here/lib.sh"
bench_workdir h2c

backend_port=$(free_port)
nghttpd --no-tls -d "$work/www" -n 1 "$backend_port" >/dev/null 2>&1 & pids+=($!)

nginx_port=$(free_port)
nginx_conf nginx 1 "upstream app { server 127.0.0.1:$backend_port; keepalive 256; }
  server { listen 127.0.0.1:$nginx_port http2; location / { grpc_pass grpc://app; } }"
own_session nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" & pids+=($!)
nginx_pid=$!

skiff_home="$work/skiff"
mkdir -p "$skiff_home/run"
printf '{"type":"routes","version":1,"routes":[{"host":"%s","path":"","app_guid":"","app_name":"bench","protocol":"http2","backends":[{"addr":"127.0.0.1:%s","index":0}]}]}\n' "$host" "$backend_port" >"$skiff_home/run/routes.json"
skiff_port=$(free_port)
"$router_bin" --home "$skiff_home" --addr "127.0.0.1:$skiff_port" --admin-addr "127.0.0.1:$(free_port)" \
  --workers 1 2>"$skiff_home/router.err" & pids+=($!)
skiff_pid=$!
for p in $backend_port $nginx_port $skiff_port; do wait_port "$p"; done

# TCP connections a process has open to the backend
backend_conns() {
  ss -Htnp state established "( dport = :$backend_port )" 2>/dev/null | grep -c "pid=$1," || true
}

repeat=${REPEAT:-3}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n%-7s %-6s | %9s %7s %5s %5s | %9s %7s %5s %5s | %6s\n' size conns nginx p99ms cpuus conns skiff p99ms cpuus conns x
for size in small 64k; do
  for conns in 32 256; do
    n_runs="" s_runs=""
    for _ in $(seq "$repeat"); do
      n_runs+="$(run_h2load_once "$nginx_port" "$conns" "$size" http "$nginx_pid") $(backend_conns "$(pgrep -P "$nginx_pid" | head -1)")"$'\n'
      s_runs+="$(run_h2load_once "$skiff_port" "$conns" "$size" http "$skiff_pid") $(backend_conns "$skiff_pid")"$'\n'
    done
    read -r n np nc nk < <(printf '%s' "$n_runs" | median)
    read -r s sp sc sk < <(printf '%s' "$s_runs" | median)
    printf '%-7s %-6s | %9.0f %7.2f %5s %5s | %9.0f %7.2f %5s %5s | %6s\n' "$size" "$conns" "$n" "$np" "$nc" "$nk" "$s" "$sp" "$sc" "$sk" \
      "$(awk -v a="$s" -v b="$n" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
  done
done
echo "(requests/s, p99 ms, proxy CPU µs per request, and the proxy's TCP connections to the"
echo " backend open after the run: medians of $repeat runs of ${secs} s, $streams streams per client"
echo " connection, one worker each; 'x' = skiff / nginx)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
