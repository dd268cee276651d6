# Helpers shared by the built-in buildpacks (sourced, not run).

# Prints a step the way staging output shows it.
step() { printf -- '-----> %s\n' "$*"; }
# Indents another tool's output under the current step.
indent() { sed -u '/^[[:space:]]*$/d; s/^/       /'; }
# A stable key for the build cache from the given files (missing files count as empty).
cache_key() { for f in "$@"; do [ -e "$f" ] && ls -lR "$f" 2>/dev/null; [ -f "$f" ] && cat "$f"; done | sha256sum | cut -c1-16; }
# The web command of a Procfile, or nothing.
procfile_web() { [ -f "$1/Procfile" ] && sed -n 's/^[[:space:]]*web[[:space:]]*:[[:space:]]*//p' "$1/Procfile" | head -n 1; }
# The process types a Procfile declares ("web worker"), or nothing.
procfile_types() { [ -f "$1/Procfile" ] && sed -n 's/^[[:space:]]*\([A-Za-z0-9_-][A-Za-z0-9_-]*\)[[:space:]]*:.*/\1/p' "$1/Procfile" | tr '\n' ' ' | sed 's/ $//'; }
# Runs a command with its output streamed (indented) as it comes and kept in the file $1;
# returns the command's status.
run_logged() {
  local log_file rc_file rc
  log_file=$1
  shift
  rc_file=$(mktemp)
  { "$@" 2>&1; echo $? >"$rc_file"; } | tee "$log_file" | indent
  rc=$(cat "$rc_file")
  rm -f "$rc_file"
  return "$rc"
}
