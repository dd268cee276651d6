#!/usr/bin/env bash
# Starts the whole platform on this machine in the foreground (Ctrl-C stops it cleanly).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$PWD/build/rel
# Put the CLI on PATH: /usr/local/bin when we may write there, otherwise say how.
if [ -w /usr/local/bin ]; then
  ln -sf "$bin/skiff" /usr/local/bin/skiff
else
  echo "skiff: add the CLI to your PATH:  export PATH=$bin:\$PATH" >&2
fi
exec "$bin/skiffd" "$@"
