#!/bin/sh
# supply.sh BUILD_DIR: puts the function servers into an app's droplet (BUILD_DIR/.skiff/function/)
# when a function buildpack runs as a supply step before the app's own buildpack, so that an app
# can declare functions in its manifest that run from its own code:
#   python3 .skiff/function/skiff_function.py thumbs.py:make
#   node .skiff/function/skiff_function.js lib/hooks.js:onOrder
set -e
build="$1"
lib="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$build/.skiff/function"
cp "$lib/skiff_function.py" "$lib/../../function-node/lib/skiff_function.js" "$build/.skiff/function/"
echo "-----> Skiff function servers in .skiff/function"
