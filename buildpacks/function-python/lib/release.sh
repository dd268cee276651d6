#!/bin/sh
# release.sh BUILD_DIR RUNTIME: the process type that runs the function server.
build="$1"; runtime="$2"
handler=$(head -n 1 "$build/.skiff-function" 2>/dev/null)
file="${handler%%:*}"
case "$runtime" in
  python) cmd="python3 .skiff/function/skiff_function.py '$handler'" ;;
  shell) cmd="python3 .skiff/function/skiff_function.py --shell '$file'" ;;
  node) cmd="node .skiff/function/skiff_function.js '$handler'" ;;
esac
echo "---"
echo "default_process_types:"
echo "  web: $cmd"
