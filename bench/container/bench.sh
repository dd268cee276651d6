#!/usr/bin/env bash
# Start of an instance to ready: a static program that listens, started (a) bare on the host,
# (b) in a Skiff container by skiff-init as the executor starts one (network slot, a disk
# mounted ahead by the disk server, the seccomp filter built ahead, droplet overlay),
# (b') the same with the disk mounted and the filter built by skiff-init, as before both were
# made ahead (runs of b and b' alternate), (c) by `runc run` from the same rootfs (Debian's
# runc, host network). Prints p50/p90 of each and the ratios. Root only; everything it makes
# it removes.
#   bash bench/container/bench.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-30}
build=$(realpath -m "${BUILD:-build}")
init=$build/rel/skiff-init
[ -x "$init" ] || make -s build >/dev/null
work=$(mktemp -d /tmp/skiff-bench-container.XXXXXX)
prep_pid=
cleanup() { # prep's disks unmount themselves as it ends
  [ -n "$prep_pid" ] && { kill "$prep_pid" 2>/dev/null; wait "$prep_pid" 2>/dev/null || true; }
  rm -rf "$work"; }
trap cleanup EXIT

cc -O2 -o "$work/startbench" bench/container/startbench.c
cc -O2 -static -o "$work/listen" bench/container/listen.c
# prep: the stack, the host network, the seccomp filter built ahead, disk images in two
# pools, and a disk server on the first (as skiffd has them); it stays until it is killed,
# and its disks go with it
cat > "$work/prep.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "container/container.h"
#include "container/net.h"
#include "container/seccomp.h"
int main(int argc, char **argv)
{
    char err[256] = "", *stack = NULL, c;
    struct net_pool pool;
    struct container_disk_server *server = NULL;
    if (container_stack_prepare(argv[1], &stack, err, sizeof err) < 0 ||
        net_pool_parse(NET_DEFAULT_POOL, &pool, err, sizeof err) < 0 ||
        net_host_setup(&pool, 0, err, sizeof err) < 0 ||
        container_disk_pool_fill(argv[2], 64, atoi(argv[4]), err, sizeof err) < 0 ||
        container_disk_pool_fill(argv[3], 64, atoi(argv[4]), err, sizeof err) < 0 ||
        container_disk_server_start(argv[2], 64, &server, err, sizeof err) < 0 ||
        seccomp_export_default(argv[5], err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    printf("%s\n", stack);
    fflush(stdout);
    while (read(0, &c, 1) > 0)
        ;
    container_disk_server_stop(server);
    return 0;
}
C
cc -D_GNU_SOURCE -Isrc -o "$work/prep" "$work/prep.c" "$build/rel/libskiff.a" \
  $(pkg-config --libs libuv jansson libseccomp) -lcap -lpthread
coproc PREP { "$work/prep" "$work/home" "$work/pool" "$work/pool-files" $((runs * 3 + 5)) "$work/seccomp.bpf"; }
prep_pid=$PREP_PID
read -r stack <&"${PREP[0]}"
[ -n "$stack" ] || { echo "prep failed" >&2; exit 1; }
mkdir -p "$work/droplet"
cp "$work/listen" "$work/droplet/listen"
chown -R 202000:202000 "$work/droplet"
# slots far from where skiffd's random cursor usually lands are still checked: a taken one
# fails that run, which is then not counted
base=$((15500 + RANDOM % 300))
# run r's config. $2 warm: a warm container (no droplet, no program: they come with the
# start); ahead: as skiffd starts one (a disk mounted ahead by the server, the
# seccomp filter built ahead); anything else: as before both (the disk mounted and the
# filter built by skiff-init)
config() {
  local pool=pool-files seccomp= mounts='{"source":"'$work/droplet'","target":"/home/vcap/app","kind":"overlay"}'
  [ "$2" != at-start ] && { pool=pool; seccomp="\"seccomp_bpf\":\"$work/seccomp.bpf\","; }
  [ "$2" = warm ] && { mounts=; seccomp="$seccomp\"warm_socket\":\"warm.sock\","; }
  rm -rf "$work/s$1"; mkdir -p "$work/s$1"
  cat > "$work/c$1.json" <<J
{"hostname":"bench","stack":"$stack","scratch":"$work/s$1","disk_mb":64,"disk_pool":"$work/$pool",$seccomp
 "uid_base":200000,"cwd":"/home/vcap/app","net_pool":"10.244.0.0/16","net_slot":$((base + $1)),
 "mounts":[$mounts],"cgroup_procs":[]}
J
}
addr_of() { # the container address of slot $1 in 10.244.0.0/16 (/30 each, host .1, container .2)
  local n=$(( $1 * 4 + 2 )); echo "10.244.$((n / 256)).$((n % 256))"; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
bare=$(PORT=$port "$work/startbench" "$runs" 127.0.0.1 "$port" "$work/listen")

# the same slot every run would wait for the last run's namespace to go: a slot per run.
# Runs alternate between the two ways, so that both see the same load.
start_one() { # $1 run, $2 ahead or not: the time to ready, or nothing
  config "$1" "$2"
  local out
  out=$("$work/startbench" 1 "$(addr_of $((base + $1)))" 8080 "$init" --config "$work/c$1.json" -- ./listen || true)
  [ "${out% *}" != "never" ] && echo "${out%% *}"
}
# a warm container: made (and waited for) first, then the time from the start sent to ready
cat > "$work/start.json" <<J
{"hostname":"bench","app_dir":"$work/droplet","argv":["./listen"],"env":["PATH=/usr/bin:/bin"]}
J
warm_one() { # $1 run: the time to ready, or nothing
  config "$1" warm
  setsid "$init" --config "$work/c$1.json" </dev/null >/dev/null 2>"$work/s$1.err" &
  local keeper=$! out i
  for i in $(seq 1 500); do [ -S "$work/s$1/warm.sock" ] && break; sleep 0.01; done
  out=$(WARM_SOCKET="$work/s$1/warm.sock" WARM_START="$work/start.json" \
        "$work/startbench" 1 "$(addr_of $((base + $1)))" 8080 - || true)
  kill -9 -- "-$keeper" 2>/dev/null; wait "$keeper" 2>/dev/null || true
  [ "${out% *}" != "never" ] && echo "${out%% *}"
}
served=(); unserved=(); warmed=()
for r in $(seq 0 $((runs - 1))); do
  t=$(start_one "$r" ahead); [ -n "$t" ] && served+=("$t")
  t=$(start_one "$((runs + r))" at-start); [ -n "$t" ] && unserved+=("$t")
  t=$(warm_one "$((2 * runs + r))"); [ -n "$t" ] && warmed+=("$t")
done
p50p90() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "%.2f %.2f %d", a[int((NR+1)/2)], a[int(NR*0.9+0.5)], NR}'; }
skiff=$(p50p90 "${served[@]}")
skiff_unserved=$(p50p90 "${unserved[@]}")
warm=$(p50p90 "${warmed[@]}")

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
echo "  skiff, disk and filter made at start: ${skiff_unserved% *}"
echo "  skiff warm container (start sent to ready): ${warm% *}"
echo "  $runc_line"
awk -v b="$bare_p50" -v s="$skiff_p50" -v w="${warm%% *}" -v r="${runc_p50:-0}" 'BEGIN {
  printf "  container overhead over bare, p50: %.2f ms made at start, %.2f ms warm (target <= 3 ms)\n", s - b, w - b
  if (r > 0) printf "  skiff / runc, p50: %.2f made at start, %.2f warm (target <= 0.20)\n", s / r, w / r }'
