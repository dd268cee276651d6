#!/bin/sh
# detect.sh BUILD_DIR EXTENSION NAME: shared by the function buildpacks.
build="$1"; ext="$2"; name="$3"
handler="${SKIFF_FUNCTION_HANDLER:-}"
if [ -z "$handler" ] && [ -f "$build/.skiff-function" ]; then
  handler=$(head -n 1 "$build/.skiff-function")
fi
[ -n "$handler" ] || exit 1
file="${handler%%:*}"
case "$file" in *."$ext") ;; *) exit 1 ;; esac
[ -f "$build/$file" ] || exit 1
echo "$name"
