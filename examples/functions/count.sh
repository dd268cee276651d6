#!/bin/sh
# Shell function: the event's data on stdin, attributes in CE_* variables, reply on stdout.
data=$(cat)
echo "count $CE_TYPE $CE_ID: $data" >&2
printf '{"chars": %d}\n' "$(printf '%s' "$data" | wc -c)"
