#!/usr/bin/env bash
# The router inside the running platform, the path users get: skiffd (container isolation, the
# default) with one app pushed through the binary buildpack, a static keep-alive HTTP server
# (bench_server.c: 13 bytes on /small, 64 KB on /64k), measured with wrk through skiffd's own
# skiff-router at 32 and 256 connections. Peers in the same run, taking turns with it:
#   - loopback: the same program as a bare process on loopback, behind the same skiff-router
#     binary started alone with a static route (no skiffd, so no bus and no access lines);
#   - nginx: proxy_pass (one worker, upstream keepalive) to the container's own address,
#     writing a buffered access log (the platform logs every request too);
#   - direct: wrk to the container's address, and to the bare process, with no proxy.
# Then HTTPS: skiffd's router on its HTTPS listener against nginx terminating TLS with the
# same certificate (the platform's default.pem, which both serve to a client that connects by
# address) and proxying to the same container, HTTP/1.1 (wrk) and HTTP/2 (h2load, ALPN h2,
# $H2_STREAMS streams per connection), taking turns.
# Root only (containers). BUILD=DIR for binaries elsewhere (default build, i.e. build/rel).
#   bench/router/platform_bench.sh       (REPEAT=3, SECONDS_PER_RUN=3: about three minutes)
# SIZES ("small 64k"), CONNS ("32 256") and PROTOS ("https1 h2") choose the rows; PROTOS=none
# skips HTTPS: CONNS=256 PROTOS=https1 SIZES=small for the 256-connection rows alone.
# HTTP_ROWS=no skips the plain HTTP table (HTTP_ROWS=no PROTOS="https1 h2": the TLS rows alone).
# RATE_PCT=N adds, under each row, the platform's router and nginx offered the same rate, N
# percent of the lower of their two closed-loop rates (h2load --rps, taking turns): p50 / p99
# / p99.9 at equal load, where the closed loop compares p99s at two throughputs
# (bench/router/README.md, "The same offered load").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD:-$root/build}
bin=$build/rel
router_bin=$bin/skiff-router
secs=${SECONDS_PER_RUN:-3}
repeat=${REPEAT:-3}
threads=${WRK_THREADS:-2}
host=bench.localhost # the app is "bench": skiff push routes bench.localhost to it
for b in skiffd skiff skiff-router skiff-init skiff-shim; do
  [ -x "$bin/$b" ] || { echo "build Skiff first: make build (or BUILD=DIR for $bin)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "runs as root: skiffd makes containers" >&2; exit 1; }
command -v wrk >/dev/null && command -v nginx >/dev/null && command -v h2load >/dev/null ||
  { echo "needs wrk, nginx and h2load (scripts/deps.sh)" >&2; exit 1; }
streams=${H2_STREAMS:-8}
sizes=${SIZES:-small 64k}
conn_counts=${CONNS:-32 256}
protos=${PROTOS:-https1 h2}
http_rows=${HTTP_ROWS:-yes}
ulimit -n 65536 2>/dev/null || true

work=$(mktemp -d /tmp/skiff-bench-platform.XXXXXX)
chmod 755 "$work"
pids=()
platform_home=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -z "$platform_home" ] || /usr/bin/python3 "$here/platform_up.py" stop "$platform_home"
  rm -rf "$work"
}
trap cleanup EXIT
. "$here/lib.sh"

# the app: the program, static (it runs on the container's stack as is), and its Procfile
mkdir -p "$work/app"
cc -O2 -static -Wall -Wextra -Werror -o "$work/app/bench_server" "$here/bench_server.c"
echo 'web: ./bench_server' >"$work/app/Procfile"
chmod -R a+rX "$work/app"

echo "starting skiffd and pushing the app..." >&2
started=$(/usr/bin/python3 "$here/platform_up.py" start --bin "$bin" --app "$work/app" --name bench)
eval "$started" # home, skiffd_pid, router_pid, router_port, router_tls_port, instance_addr
platform_home=$home

# loopback: the same program bare, behind the same router binary alone (workers: one per core,
# as skiffd starts it)
bare_port=$(free_port)
PORT=$bare_port own_session "$work/app/bench_server" & pids+=($!)
bare_pid=$!
read -r alone_port alone_pid < <(start_router alone 0 "127.0.0.1:$bare_port")
pids+=("$alone_pid") # started in a subshell: remember it here

# nginx to the container's address
nginx_port=$(free_port)
# nginx logs each request as the platform does (its router sends every request's access line
# to skiffd, which writes it to the app's log): buffered, as a tuned nginx would
nginx_conf nginx 1 "$(proxy_conf "$nginx_port" "$instance_addr")" \
  "$work/nginx/access.log combined buffer=64k flush=1s"
own_session nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" & pids+=($!)
nginx_pid=$!
# nginx terminating TLS on the platform's own default certificate, to the container's address,
# logging as the plain one does
tls_pem=$platform_home/tls/default.pem
nginx_tls_port=$(free_port)
nginx_conf nginx_tls 1 "$(tls_proxy_conf "$nginx_tls_port" "$instance_addr" "$tls_pem" "$tls_pem")" \
  "$work/nginx_tls/access.log combined buffer=64k flush=1s"
own_session nginx -c "$work/nginx_tls/nginx.conf" -e "$work/nginx_tls/error.log" & pids+=($!)
nginx_tls_pid=$!
for p in $bare_port $alone_port $nginx_port $nginx_tls_port $router_tls_port; do wait_port "$p"; done
# so that a "failures from ADDR" line below names its proxy
echo "HTTP on 127.0.0.1: the platform's router $router_port, nginx $nginx_port; HTTPS: the" \
  "platform's router $router_tls_port, nginx $nginx_tls_port"

# name -> address and the processes whose CPU is counted (the proxy's; for the platform's
# router also skiffd's, which receives its access lines)
declare -A addr_of=([platform]="$router_port" [loopback]="$alone_port" [nginx]="$nginx_port"
  [direct_veth]="$instance_addr" [direct_lo]="$bare_port")
declare -A pids_of=([platform]="$router_pid self:$skiffd_pid" [loopback]="$alone_pid" [nginx]="$nginx_pid"
  [direct_veth]="" [direct_lo]="")
cases=(platform loopback nginx direct_veth direct_lo)
declare -A runs
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
rate_pct=${RATE_PCT:-}
# same_rate SCHEME PROTO PLATFORM_ADDR NGINX_ADDR CONNS SIZE PLATFORM_RATE NGINX_RATE: with
# RATE_PCT, a line with both offered the same rate (at_rate_both)
same_rate() {
  [ -n "$rate_pct" ] || return 0
  local per_conn p50 p99 p999 n50 n99 n999 q
  per_conn=$(rate_per_conn "$7" "$8" "$rate_pct" "$5")
  read -r q p50 p99 p999 q n50 n99 n999 < <(at_rate_both "$3" "$4" "$5" "$6" "$per_conn" "$1" "$2")
  printf '  at %s req/s offered to both: platform p50/p99/p99.9 %s / %s / %s ms, nginx %s / %s / %s ms: p99 %sx\n' \
    "$(awk -v r="$per_conn" -v c="$5" 'BEGIN { printf "%.0f", r * c }')" "$p50" "$p99" "$p999" \
    "$n50" "$n99" "$n999" "$(ratio "$p99" "$n99")"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$http_rows" = no ] && sizes_http="" || sizes_http=$sizes
printf '\n%-6s %-5s | %-25s | %-25s | %-25s | %-15s | %-15s | %6s %6s\n' "" "" \
  "platform router->veth" "router alone->loopback" "nginx->veth" "direct veth" "direct loopback" \
  "plat/" "veth/"
printf '%-6s %-5s | %8s %6s %4s %4s | %8s %6s %4s %4s | %8s %6s %4s %4s | %8s %6s | %8s %6s | %6s %6s\n' \
  size conns req/s p99ms cpu skfd req/s p99ms cpu "" req/s p99ms cpu "" req/s p99ms req/s p99ms nginx lo
for size in $sizes_http; do
  for conns in $conn_counts; do
    for name in "${cases[@]}"; do runs[$name]=""; done
    for _ in $(seq "$repeat"); do
      for name in "${cases[@]}"; do
        # shellcheck disable=SC2086 # the pids are words
        runs[$name]+="$(run_wrk_once "${addr_of[$name]}" "$conns" "$size" ${pids_of[$name]})"$'\n'
      done
    done
    read -r p pp pc ps < <(printf '%s' "${runs[platform]}" | median)
    read -r l lp lc < <(printf '%s' "${runs[loopback]}" | median)
    read -r n np nc < <(printf '%s' "${runs[nginx]}" | median)
    read -r dv dvp < <(printf '%s' "${runs[direct_veth]}" | median)
    read -r dl dlp < <(printf '%s' "${runs[direct_lo]}" | median)
    printf '%-6s %-5s | %8.0f %6.2f %4s %4s | %8.0f %6.2f %4s %4s | %8.0f %6.2f %4s %4s | %8.0f %6.2f | %8.0f %6.2f | %6s %6s\n' \
      "$size" "$conns" "$p" "$pp" "$pc" "$ps" "$l" "$lp" "$lc" "" "$n" "$np" "$nc" "" \
      "$dv" "$dvp" "$dl" "$dlp" "$(ratio "$p" "$n")" "$(ratio "$p" "$l")"
    same_rate http h1 "${addr_of[platform]}" "${addr_of[nginx]}" "$conns" "$size" "$p" "$n"
  done
done
echo "(requests/s, p99 latency in ms, CPU microseconds per request of the proxy (cpu) and of"
echo " skiffd (skfd), each the median of $repeat runs of ${secs}s, the cases taking turns;"
echo " plat/nginx = the platform's router / nginx to the same container;"
echo " veth/lo = the platform's router to the container / the router alone to the bare process)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"

# HTTPS/1.1 (wrk) and HTTP/2 over TLS (h2load): the platform's router on its HTTPS listener and
# nginx with the same certificate, both to the container, taking turns
for name in platform nginx; do
  port=$router_tls_port
  [ "$name" = nginx ] && port=$nginx_tls_port
  printf '%-8s %s\n' "$name" "$(openssl s_client -connect "127.0.0.1:$port" </dev/null 2>/dev/null |
    awk '/^Server Temp Key/ {k = $4} /^New,/ {p = $2 " " $5} END {print p, k}')"
done
declare -A tls_addr_of=([platform]="$router_tls_port" [nginx]="$nginx_tls_port")
declare -A tls_pids_of=([platform]="$router_pid self:$skiffd_pid" [nginx]="$nginx_tls_pid")
for proto in $protos; do
  [ "$proto" = none ] && continue
  printf '\n%-6s %-6s %-5s | %8s %7s %5s %5s | %8s %7s %5s | %6s %6s\n' "" "" "" \
    "platform" "" "" "" "nginx" "" "" "plat/" "p99"
  printf '%-6s %-6s %-5s | %8s %7s %5s %5s | %8s %7s %5s | %6s %6s\n' proto size conns \
    req/s p99ms cpu skfd req/s p99ms cpu nginx "plat/n"
  for size in $sizes; do
    for conns in $conn_counts; do
      for name in platform nginx; do runs[$name]=""; done
      for _ in $(seq "$repeat"); do
        for name in platform nginx; do
          # shellcheck disable=SC2086 # the pids are words
          if [ "$proto" = https1 ]; then
            runs[$name]+="$(scheme=https run_wrk_once "${tls_addr_of[$name]}" "$conns" "$size" ${tls_pids_of[$name]})"$'\n'
          else
            runs[$name]+="$(run_h2load_once "${tls_addr_of[$name]}" "$conns" "$size" https ${tls_pids_of[$name]})"$'\n'
          fi
        done
      done
      read -r p pp pc ps < <(printf '%s' "${runs[platform]}" | median)
      read -r n np nc < <(printf '%s' "${runs[nginx]}" | median)
      printf '%-6s %-6s %-5s | %8.0f %7.2f %5s %5s | %8.0f %7.2f %5s | %6s %6s\n' \
        "$proto" "$size" "$conns" "$p" "$pp" "$pc" "$ps" "$n" "$np" "$nc" "$(ratio "$p" "$n")" "$(ratio "$pp" "$np")"
      same_rate https "$([ "$proto" = h2 ] && echo h2 || echo h1)" "${tls_addr_of[platform]}" \
        "${tls_addr_of[nginx]}" "$conns" "$size" "$p" "$n"
    done
  done
done
echo "(https1: keep-alive HTTPS/1.1 with wrk; h2: HTTP/2 over TLS with h2load, $streams streams per"
echo " connection; requests/s, p99 ms, CPU µs per request of the proxy (cpu) and of skiffd (skfd),"
echo " medians of $repeat runs of ${secs}s, the two taking turns; plat/nginx = throughput ratio,"
echo " p99 plat/n = the platform's p99 / nginx's: below 1 is better)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
