# What the router benchmarks share (sourced by bench.sh, h2_bench.sh, h2c_bench.sh,
# instr_bench.sh, tls_bench.sh, fixed_rate.sh and platform_bench.sh): ports, nginx configs, a certificate, a
# router's home, a standalone router, wrk runs with the CPU each process spent on them,
# medians. Uses $work (a temporary folder), $secs (seconds per wrk run), $threads (wrk
# threads), $host (the Host header) and $router_bin.

# own_session CMD...: CMD in a session of its own, as skiffd starts the platform's router and
# instances and as nginx puts itself when it daemonizes. Run with & from a script (no job
# control, so not a group leader) setsid execs in place and $! is CMD's pid. Without it a
# server shares the script's session, hence wrk's CFS autogroup, while the platform's router
# has one of its own: the kernel then shares the CPU between the groups, not the threads, and
# the two sides of a comparison are not scheduled alike (bench/router/README.md, "Sessions").
own_session() { exec setsid "$@"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_workdir NAME: $work (a temporary folder, removed at exit with every process in $pids)
# and the two bodies every router benchmark serves, $work/www/small and $work/www/64k
bench_workdir() {
  work=$(mktemp -d "/tmp/skiff-bench-$1.XXXXXX")
  chmod 755 "$work"
  pids=()
  trap bench_cleanup EXIT
  mkdir -p "$work/www"
  printf 'hello, world\n' >"$work/www/small"
  head -c 65536 /dev/zero | tr '\0' 'x' >"$work/www/64k"
  chmod -R a+rX "$work/www"
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# bench_backend: nginx (one worker) serving $work/www on $backend_port; its pid is $backend_pid
bench_backend() {
  backend_port=$(free_port)
  nginx_conf backend 1 "server { listen 127.0.0.1:$backend_port; root $work/www; }"
  own_session nginx -c "$work/backend/nginx.conf" -e "$work/backend/error.log" &
  backend_pid=$!
  pids+=("$backend_pid")
}

# wait_port PORT [ADDRESS]: until something accepts there (5 s at most)
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/"${2:-127.0.0.1}"/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on ${2:-127.0.0.1}:$1" >&2
  return 1
}

# nginx_conf NAME WORKERS BODY [ACCESS_LOG]: a config with one server block; ACCESS_LOG is
# nginx's access_log directive ("off" unless given)
nginx_conf() {
  mkdir -p "$work/$1"
  cat >"$work/$1/nginx.conf" <<CONF
worker_processes $2;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
daemon off;
events { worker_connections 20000; multi_accept on; }
http {
  access_log ${4:-off};
  client_body_temp_path $work/$1/body;
  proxy_temp_path $work/$1/proxy;
  fastcgi_temp_path $work/$1/fastcgi;
  uwsgi_temp_path $work/$1/uwsgi;
  scgi_temp_path $work/$1/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  $3
}
CONF
}

# proxy_conf PORT UPSTREAM: nginx as a reverse proxy on 127.0.0.1:PORT to UPSTREAM (HOST:PORT),
# with upstream keepalive
proxy_conf() {
  echo "upstream app { server $2; keepalive 256; }
  server { listen 127.0.0.1:$1; location / { proxy_pass http://app; proxy_http_version 1.1;
    proxy_set_header Connection \"\"; proxy_set_header Host \$host;
    proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto \$scheme;
    proxy_buffering on; proxy_buffer_size 16k; proxy_buffers 16 16k; } }"
}

# tls_proxy_conf PORT UPSTREAM CERT KEY: proxy_conf listening with TLS (h2 and http/1.1 by
# ALPN, as the router's HTTPS listener) on CERT and KEY, with the router's TLS settings
tls_proxy_conf() {
  proxy_conf "$1" "$2" | sed "s|listen 127.0.0.1:$1;|listen 127.0.0.1:$1 ssl http2;\\
    ssl_certificate $3; ssl_certificate_key $4;\\
    ssl_protocols TLSv1.2 TLSv1.3; ssl_ecdh_curve X25519:prime256v1:secp384r1;\\
    ssl_session_tickets on; ssl_session_cache off;|"
}

# bench_cert: a self-signed P-256 certificate for $host and 127.0.0.1 in $work/cert.pem, its
# key in $work/key.pem
bench_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$host" -addext "subjectAltName=DNS:$host,IP:127.0.0.1" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
}

# tls_proxies_start: bench_cert and bench_backend, then nginx (one worker) terminating TLS with
# that certificate ($nginx_port, $nginx_pid) and $router_bin (one worker) on its HTTPS listener
# with the same one as its default ($skiff_port, $skiff_pid, home $skiff_home), both in front
# of the backend, each in a session of its own; returns once all three accept
tls_proxies_start() {
  bench_cert
  bench_backend
  nginx_port=$(free_port)
  nginx_conf nginx 1 "$(tls_proxy_conf "$nginx_port" "127.0.0.1:$backend_port" "$work/cert.pem" "$work/key.pem")"
  own_session nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
  nginx_pid=$!
  pids+=("$nginx_pid")
  skiff_home="$work/skiff"
  router_home "$skiff_home" "127.0.0.1:$backend_port" tls
  skiff_port=$(free_port)
  own_session "$router_bin" --home "$skiff_home" --addr "127.0.0.1:$(free_port)" --tls-addr "127.0.0.1:$skiff_port" \
    --admin-addr "127.0.0.1:$(free_port)" --workers 1 2>"$skiff_home/router.err" &
  skiff_pid=$!
  pids+=("$skiff_pid")
  local p
  for p in $backend_port $nginx_port $skiff_port; do wait_port "$p"; done
}

# router_home HOME BACKEND [tls]: a router's home with a saved table of one route, $host to
# BACKEND (HOST:PORT); with tls, bench_cert's certificate as its default one
router_home() {
  mkdir -p "$1/run"
  printf '{"type":"routes","version":1,"routes":[{"host":"%s","path":"","app_guid":"","app_name":"bench","backends":[{"addr":"%s","index":0}]}]}\n' "$host" "$2" >"$1/run/routes.json"
  if [ "${3:-}" = tls ]; then
    mkdir -p "$1/tls"
    cat "$work/cert.pem" "$work/key.pem" >"$1/tls/default.pem"
    chmod 600 "$1/tls/default.pem"
  fi
}

# start_router NAME WORKERS BACKEND -> "PORT PID": $router_bin on a free loopback port with a
# saved table of one route, $host to BACKEND (HOST:PORT); no skiffd, so no bus
start_router() {
  local home="$work/$1" port
  port=$(free_port)
  router_home "$home" "$3"
  own_session "$router_bin" --home "$home" --addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$(free_port)" --workers "$2" 2>"$home/router.err" &
  echo "$port $!"
}

# CPU time (in clock ticks) used so far by a process (all its threads) and its children
# (nginx's workers); by the process alone when given as self:PID (skiffd, whose children are
# the router and the instances)
cpu_ticks() {
  local total=0 p procs
  if [[ $1 == self:* ]]; then procs=${1#self:}; else procs="$1 $(pgrep -P "$1" | tr '\n' ' ')"; fi
  for p in $procs; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# run_wrk_once ADDR CONNS PATH [PID...] -> "rps p99_ms cpu_us_per_request..." of one run, one CPU
# figure per PID (as cpu_ticks takes it). ADDR is HOST:PORT, or a port on 127.0.0.1. CPU time per request is a
# process's own cost, which the noise of a shared machine hardly moves.
run_wrk_once() {
  local addr=$1 conns=$2 path=$3 out rps p99 reqs p cpus="" hz
  shift 3
  [[ $addr == *:* ]] || addr=127.0.0.1:$addr
  local -a before=()
  for p in "$@"; do before+=("$(cpu_ticks "$p")"); done
  out=$(wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -H "Host: $host" "${scheme:-http}://$addr/$path" 2>&1)
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers from $addr:" >&2; echo "$out" >&2; fi
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v=v*1000}; print v}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  hz=$(getconf CLK_TCK)
  local i=0
  for p in "$@"; do
    cpus+=" $(awk -v t=$(($(cpu_ticks "$p") - before[i])) -v n="${reqs:-0}" -v hz="$hz" \
      'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')"
    i=$((i + 1))
  done
  echo "${rps:-0} ${p99:-0}$cpus"
}

# run_h2load_once ADDR CONNS PATH SCHEME [PID...] -> "rps p99_ms cpu_us_per_request...": h2load
# with $threads threads and $streams streams per connection for $secs s (after 1 s of warm-up),
# :authority $host; SCHEME http: prior knowledge, https: h2 by ALPN. ADDR is HOST:PORT, or a
# port on 127.0.0.1. p99 is of the per-request times h2load logs (--log-file); one CPU figure
# per PID, as for run_wrk_once.
run_h2load_once() {
  local addr=$1 conns=$2 path=$3 scheme=$4 out rps p99 reqs p cpus="" hz
  shift 4
  [[ $addr == *:* ]] || addr=127.0.0.1:$addr
  local -a before=()
  for p in "$@"; do before+=("$(cpu_ticks "$p")"); done
  # a stream that never ends would hold h2load past -D: a connection silent for 10 s is
  # closed (-N), and h2load itself is stopped a minute after its time (a run counted as failed)
  out=$(timeout $((secs + 60)) h2load -t"$threads" -c"$conns" -m"$streams" -D"$secs" \
    --warm-up-time=1 -N10 --log-file="$work/h2load.log" -H ":authority: $host" \
    "$scheme://$addr/$path" 2>&1) || true
  if ! grep -q " 0 failed, 0 errored" <<<"$out" || grep -q "status codes: [0-9]* 2xx.* [1-9][0-9]* [45]xx" <<<"$out"; then
    echo "failures from $addr:" >&2
    grep -E "requests:|status codes:" <<<"$out" >&2 || tail -n 5 <<<"$out" >&2
  fi
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
  p99=$(sort -n -k3,3 "$work/h2load.log" | awk '{v[NR] = $3} END {i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f", (NR ? v[i] / 1000 : 0)}')
  rm -f "$work/h2load.log"
  hz=$(getconf CLK_TCK)
  local i=0
  for p in "$@"; do
    cpus+=" $(awk -v t=$(($(cpu_ticks "$p") - before[i])) -v n="${reqs:-0}" -v hz="$hz" \
      'BEGIN { printf "%.1f", (n > 0 ? t * 1e6 / hz / n : 0) }')"
    i=$((i + 1))
  done
  echo "${rps:-0} ${p99:-0}$cpus"
}

# run_at_rate ADDR CONNS PATH PER_CONN SCHEME PROTO -> "completed/s p50 p99 p99.9" (ms): h2load
# offering PER_CONN requests a second on each of CONNS connections for about $secs s (PROTO h1:
# HTTP/1.1; h2: HTTP/2, $streams streams a connection, by ALPN over https, by prior knowledge
# over http), :authority $host; the percentiles are of the requests' times in h2load's log,
# from a request's send to its response's end.
run_at_rate() {
  local addr=$1 conns=$2 path=$3 rate=$4 scheme=$5 out done_rps
  local -a proto=(--h1)
  [ "$6" = h2 ] && proto=(-m"$streams")
  [[ $addr == *:* ]] || addr=127.0.0.1:$addr
  # a count of requests, not -D: h2load 1.52 with --rps and -D never stops
  out=$(timeout $((secs + 60)) h2load "${proto[@]}" -t"$threads" -c"$conns" --rps="$rate" \
    -n"$(awk -v r="$rate" -v c="$conns" -v s="$secs" 'BEGIN { printf "%d", r * c * s }')" \
    -N10 --log-file="$work/rate.log" -H ":authority: $host" "$scheme://$addr/$path" 2>&1) || true
  if ! grep -q " 0 failed, 0 errored" <<<"$out"; then
    echo "failures from $addr:" >&2
    grep -E "requests:|status codes:" <<<"$out" >&2 || tail -n 5 <<<"$out" >&2
  fi
  done_rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  sort -n -k3,3 "$work/rate.log" 2>/dev/null | awk -v r="${done_rps:-0}" '{v[NR] = $3}
    function at(q,  i) { i = int(NR * q); if (i < 1) i = 1; return (NR ? v[i] / 1000 : 0) }
    END { printf "%s %.2f %.2f %.2f\n", r, at(0.5), at(0.99), at(0.999) }'
  rm -f "$work/rate.log"
}

# at_rate_both ADDR_A ADDR_B CONNS PATH PER_CONN SCHEME PROTO -> "A's median B's median": run_at_rate
# on A and B $repeat times each, taking turns (A first in odd rounds, B first in even ones);
# each median is "completed/s p50 p99 p99.9"
at_rate_both() {
  local k a="" b=""
  for k in $(seq "$repeat"); do
    if ((k % 2)); then
      a+="$(run_at_rate "$1" "$3" "$4" "$5" "$6" "$7")"$'\n'
      b+="$(run_at_rate "$2" "$3" "$4" "$5" "$6" "$7")"$'\n'
    else
      b+="$(run_at_rate "$2" "$3" "$4" "$5" "$6" "$7")"$'\n'
      a+="$(run_at_rate "$1" "$3" "$4" "$5" "$6" "$7")"$'\n'
    fi
  done
  echo "$(printf '%s' "$a" | median) $(printf '%s' "$b" | median)"
}

# rate_per_conn RATE_A RATE_B PCT CONNS: PCT percent of the lower of two rates, per connection
rate_per_conn() {
  awk -v a="$1" -v b="$2" -v p="$3" -v c="$4" \
    'BEGIN { m = (a < b ? a : b); r = m * p / 100 / c; printf "%.1f", (r < 0.1 ? 0.1 : r) }'
}

# The median of each column of the lines on stdin (one run a line).
median_col() { sort -n -k"$1","$1" | awk -v c="$1" '{a[NR]=$c} END {print a[int((NR+1)/2)]}'; }
median() {
  local lines cols c out=""
  lines=$(cat)
  cols=$(head -1 <<<"$lines" | awk '{print NF}')
  for c in $(seq "$cols"); do out+="$(median_col "$c" <<<"$lines") "; done
  echo "${out% }"
}
