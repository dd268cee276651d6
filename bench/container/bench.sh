#!/usr/bin/env bash
# Start of an instance to ready: a static program that listens, started (a) bare on the host,
# (b) in a Skiff container by skiff-init as the executor starts one (network slot, pooled
# disk, droplet overlay, seccomp), (c) by `runc run` from the same rootfs (Debian's runc, host
# network). Prints p50/p90 of each and the ratios. Root only; everything it makes it removes.
#   bash bench/container/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-30}
build=$(realpath -m "${BUILD:-build}")
init=$build/rel/skiff-init
[ -x "$init" ] || make -s build >/dev/null
work=$(mktemp -d /tmp/skiff-bench-container.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

cc -O2 -o "$work/startbench" bench/container/startbench.c
cc -O2 -static -o "$work/listen" bench/container/listen.c
cat > "$work/prep.c" <<'C'
#include <stdio.h>
#include "container/container.h"
#include "container/net.h"
int main(int argc, char **argv)
{
    char err[256] = "", *stack = NULL;
    struct net_pool pool;
    if (container_stack_prepare(argv[1], &stack, err, sizeof err) < 0 ||
        net_pool_parse(NET_DEFAULT_POOL, &pool, err, sizeof err) < 0 ||
        net_host_setup(&pool, 0, err, sizeof err) < 0 ||
        container_disk_pool_fill(argv[2], 64, atoi(argv[3]), err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    puts(stack);
    return 0;
}
C
sed -i 's/#include <stdio.h>/#include <stdio.h>\n#include <stdlib.h>/' "$work/prep.c"
cc -D_GNU_SOURCE -Isrc -o "$work/prep" "$work/prep.c" "$build/rel/libskiff.a" \
  $(pkg-config --libs libuv jansson libseccomp) -lcap
stack=$("$work/prep" "$work/home" "$work/pool" $((runs + 5)))
mkdir -p "$work/droplet"
cp "$work/listen" "$work/droplet/listen"
chown -R 202000:202000 "$work/droplet"
# slots far from where skiffd's random cursor usually lands are still checked: a taken one
# fails that run, which is then not counted
base=$((16000 + RANDOM % 300))
for r in $(seq 0 $((runs - 1))); do
  mkdir -p "$work/s$r"
  cat > "$work/c$r.json" <<J
{"hostname":"bench","stack":"$stack","scratch":"$work/s$r","disk_mb":64,"disk_pool":"$work/pool",
 "uid_base":200000,"cwd":"/home/vcap/app","net_pool":"10.244.0.0/16","net_slot":$((base + r)),
 "mounts":[{"source":"$work/droplet","target":"/home/vcap/app","kind":"overlay"}],"cgroup_procs":[]}
J
done
addr_of() { # the container address of slot $1 in 10.244.0.0/16 (/30 each, host .1, container .2)
  local n=$(( $1 * 4 + 2 )); echo "10.244.$((n / 256)).$((n % 256))"; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bare=$(PORT=$port "$work/startbench" "$runs" 127.0.0.1 "$port" "$work/listen")

# the same slot every run would wait for the last run's namespace to go: a slot per run
skiff_times=()
for r in $(seq 0 $((runs - 1))); do
  out=$("$work/startbench" 1 "$(addr_of $((base + r)))" 8080 "$init" --config "$work/c$r.json" -- ./listen || true)
  [ "${out% *}" != "never" ] && skiff_times+=("${out%% *}")
done
skiff=$(printf '%s\n' "${skiff_times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f %d", a[int((NR+1)/2)], a[int(NR*0.9+0.5)], NR}')

runc_line="runc: not installed"
if command -v runc >/dev/null; then
  b="$work/bundle"; mkdir -p "$b/rootfs"; cp "$work/listen" "$b/rootfs/listen"
  (cd "$b" && runc spec)
  rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 - "$b/config.json" "$rport" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["args"] = ["/listen"]; c["process"]["terminal"] = False
c["process"]["env"].append("PORT=" + sys.argv[2])
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
json.dump(c, open(p, "w"))
PY
  r=$(cd "$b" && CLEANUP="runc delete -f bench-%d >/dev/null 2>&1" \
      "$work/startbench" "$runs" 127.0.0.1 "$rport" runc run "bench-%d" || true)
  runc_line="runc run: p50/p90 ${r% *} ms"
  runc_p50=${r%% *}
fi
bare_p50=${bare%% *}; skiff_p50=${skiff%% *}
echo "start to ready, $runs runs (p50 / p90 ms):"
echo "  bare process:     ${bare% *}"
echo "  skiff container:  ${skiff% *}"
echo "  $runc_line"
awk -v b="$bare_p50" -v s="$skiff_p50" -v r="${runc_p50:-0}" 'BEGIN {
  printf "  container overhead over bare, p50: %.2f ms (target <= 3 ms)\n", s - b
  if (r > 0) printf "  skiff / runc, p50: %.2f (target <= 0.20)\n", s / r }'
