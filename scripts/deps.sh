#!/usr/bin/env bash
# Installs the Debian packages Skiff builds, runs and tests with, when any is missing.
# Called by `make run` and `make test`; safe to run again (it does nothing when all are there).
set -euo pipefail

packages=(
  build-essential pkg-config clang libclang-rt-14-dev
  libuv1-dev node-llhttp libjansson-dev libsqlite3-dev libcurl4-openssl-dev libyaml-dev
  libarchive-dev libsodium-dev libseccomp-dev libcap-dev libnats-dev libpq-dev libssl-dev openssl
  libnghttp2-dev
  libcmocka-dev python3 python3-pytest python3-pytest-xdist python3-pytest-timeout python3-pip
  python3-flask
  nodejs npm e2fsprogs
  nginx-light wrk hyperfine nats-server postgresql redis-server python3-psycopg2 curl iproute2
  procps nftables docker-registry skopeo nghttp2-client nghttp2-server python3-hpack python3-cryptography
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

# nodejs/npm may come from elsewhere on this machine; a working `node` is what matters.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  filtered=()
  for p in "${missing[@]}"; do
    case "$p" in nodejs|npm) ;; *) filtered+=("$p") ;; esac
  done
  missing=("${filtered[@]+"${filtered[@]}"}")
  [ ${#missing[@]} -eq 0 ] && exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "skiff: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
