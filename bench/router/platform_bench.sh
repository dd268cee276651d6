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
# Root only (containers). BUILD=DIR for binaries elsewhere (default build, i.e. build/rel).
#   bench/router/platform_bench.sh       (REPEAT=3, SECONDS_PER_RUN=3: about three minutes)
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
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "needs wrk and nginx (scripts/deps.sh)" >&2; exit 1; }
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
eval "$started" # home, skiffd_pid, router_pid, router_port, instance_addr
platform_home=$home

# loopback: the same program bare, behind the same router binary alone (workers: one per core,
# as skiffd starts it)
bare_port=$(free_port)
PORT=$bare_port "$work/app/bench_server" & pids+=($!)
bare_pid=$!
read -r alone_port alone_pid < <(start_router alone 0 "127.0.0.1:$bare_port")
pids+=("$alone_pid") # started in a subshell: remember it here

# nginx to the container's address
nginx_port=$(free_port)
# nginx logs each request as the platform does (its router sends every request's access line
# to skiffd, which writes it to the app's log): buffered, as a tuned nginx would
nginx_conf nginx 1 "$(proxy_conf "$nginx_port" "$instance_addr")" \
  "$work/nginx/access.log combined buffer=64k flush=1s"
nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" & pids+=($!)
nginx_pid=$!
for p in $bare_port $alone_port $nginx_port; do wait_port "$p"; done

# name -> address and the processes whose CPU is counted (the proxy's; for the platform's
# router also skiffd's, which receives its access lines)
declare -A addr_of=([platform]="$router_port" [loopback]="$alone_port" [nginx]="$nginx_port"
  [direct_veth]="$instance_addr" [direct_lo]="$bare_port")
declare -A pids_of=([platform]="$router_pid self:$skiffd_pid" [loopback]="$alone_pid" [nginx]="$nginx_pid"
  [direct_veth]="" [direct_lo]="")
cases=(platform loopback nginx direct_veth direct_lo)
declare -A runs
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '\n%-6s %-5s | %-25s | %-25s | %-25s | %-15s | %-15s | %6s %6s\n' "" "" \
  "platform router->veth" "router alone->loopback" "nginx->veth" "direct veth" "direct loopback" \
  "plat/" "veth/"
printf '%-6s %-5s | %8s %6s %4s %4s | %8s %6s %4s %4s | %8s %6s %4s %4s | %8s %6s | %8s %6s | %6s %6s\n' \
  size conns req/s p99ms cpu skfd req/s p99ms cpu "" req/s p99ms cpu "" req/s p99ms req/s p99ms nginx lo
for size in small 64k; do
  for conns in 32 256; do
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
  done
done
echo "(requests/s, p99 latency in ms, CPU microseconds per request of the proxy (cpu) and of"
echo " skiffd (skfd), each the median of $repeat runs of ${secs}s, the cases taking turns;"
echo " plat/nginx = the platform's router / nginx to the same container;"
echo " veth/lo = the platform's router to the container / the router alone to the bare process)"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
