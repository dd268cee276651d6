#!/usr/bin/env bash
# Runs Skiff's tests: unit tests (cmocka) and end-to-end tests (pytest), both against the
# AddressSanitizer + UndefinedBehaviorSanitizer build, then each fuzz target for a bounded time.
#   scripts/test.sh            everything
#   scripts/test.sh unit|e2e|fuzz
set -uo pipefail
cd "$(dirname "$0")/.."
build=$(realpath -m "${BUILD:-build}")
what=${1:-all}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
failed=0
passed=0

run_unit() {
  for t in $build/asan/tests/test_*; do
    [ -x "$t" ] || continue
    echo "== unit: $(basename "$t")"
    if "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $t"; fi
  done
}

run_e2e() {
  echo "== e2e (pytest)"
  # each test starts its own skiffd on free ports in its own home: they run side by side,
  # every one under a deadline
  SKIFF_BIN_DIR=$build/asan /usr/bin/python3 -m pytest -q -p no:cacheprovider \
    -n "${E2E_WORKERS:-2}" --timeout "${E2E_TIMEOUT:-600}" tests/e2e "$@"
  rc=$?
  # exit 5 means no test was collected: that is a failure of the suite, not a pass
  if [ $rc -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}

run_fuzz() {
  for f in $build/fuzz/fuzz_*; do
    [ -x "$f" ] || continue
    echo "== fuzz: $(basename "$f") for ${FUZZ_SECONDS:-30}s"
    corpus=tests/fuzz/corpus/$(basename "$f")
    mkdir -p "$build/fuzz/corpus-$(basename "$f")"
    if "$f" -max_total_time="${FUZZ_SECONDS:-30}" -print_final_stats=0 "$build/fuzz/corpus-$(basename "$f")" $( [ -d "$corpus" ] && echo "$corpus" ) 2>$build/fuzz/$(basename "$f").log; then
      passed=$((passed + 1))
    else
      failed=$((failed + 1)); tail -50 $build/fuzz/$(basename "$f").log
    fi
  done
}

case "$what" in
  unit) run_unit ;;
  e2e) shift || true; run_e2e "$@" ;;
  fuzz) run_fuzz ;;
  all)
    run_unit
    run_e2e
    run_fuzz
    ;;
esac
echo "suites: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
