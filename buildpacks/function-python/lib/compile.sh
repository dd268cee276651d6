#!/bin/sh
# compile.sh BUILD_DIR RUNTIME: records the handler and puts the function server in the droplet
# (BUILD_DIR/.skiff/function/), so the droplet runs without the buildpack.
set -e
build="$1"; runtime="$2"
lib="$(cd "$(dirname "$0")" && pwd)"
handler="${SKIFF_FUNCTION_HANDLER:-}"
if [ -z "$handler" ] && [ -f "$build/.skiff-function" ]; then
  handler=$(head -n 1 "$build/.skiff-function")
fi
if [ -z "$handler" ]; then
  echo "no function handler given: push with --function FILE:HANDLER" >&2
  exit 1
fi
case "$handler" in
  *[!A-Za-z0-9._/:-]*)
    echo "the handler '$handler' may hold only letters, digits and . _ / : -: rename the file or function" >&2
    exit 1 ;;
esac
file="${handler%%:*}"
if [ ! -f "$build/$file" ]; then
  echo "the handler file $file is not in the pushed folder: check the path in --function $handler" >&2
  exit 1
fi
mkdir -p "$build/.skiff/function"
case "$runtime" in
  python|shell) cp "$lib/skiff_function.py" "$build/.skiff/function/" ;;
  node) cp "$lib/../../function-node/lib/skiff_function.js" "$build/.skiff/function/" ;;
esac
printf '%s\n' "$handler" > "$build/.skiff-function"
echo "-----> Skiff $runtime function: $handler"
