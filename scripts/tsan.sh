#!/usr/bin/env bash
# ThreadSanitizer run (docs/reliability.md "ThreadSanitizer"): a clang-14 build with
# -DSAMBAY_TSAN=ON in build-tsan/ (only the test binaries and what they start: sanitized
# sambay-worker and sambay-router processes), then the common, worker and router test suites.
# A report makes the process that found it exit 66: a test binary fails, and a server's exit
# fails the test that started it. Every report (a test binary's or a server's) is written to
# build-tsan/reports/ and printed at the end, so a server's report is not lost with its test's
# scratch directory. The build also carries clang's -Wthread-safety (as every clang
# build does), so one build checks the locking annotations and runs TSan.
# Suppressions, only for Debian's prebuilt, uninstrumented libraries: tests/tsan/suppressions.txt.
# Skipped under TSan: RouterRobustness.HugeRequestsDoNotGrowTheRouter (an RSS bound; TSan's
# shadow memory makes RSS meaningless). Part of scripts/test.sh (CI).
# Environment: JOBS (default: number of cores), TSAN_FILTER (a --gtest_filter, default all).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
stage() { echo "== $1 ($(date +%T))"; }
stage "TSan build"
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
CC=clang-14 CXX=clang++-14 cmake -S . -B build-tsan "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DSAMBAY_TSAN=ON -DSAMBAY_CUDA=OFF -DSAMBAY_WERROR=ON \
  "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG" "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG" >/dev/null
cmake --build build-tsan -j "$JOBS" --target common_tests worker_tests router_tests
REPORTS=$PWD/build-tsan/reports
rm -rf "$REPORTS" && mkdir -p "$REPORTS"
export TSAN_OPTIONS="suppressions=$PWD/tests/tsan/suppressions.txt:halt_on_error=1:exitcode=66:second_deadlock_stack=1:log_path=$REPORTS/report"
SKIP=RouterRobustness.HugeRequestsDoNotGrowTheRouter
status=0
for t in common_tests worker_tests router_tests; do
  stage "TSan $t"
  build-tsan/bin/$t --gtest_brief=1 --gtest_filter="${TSAN_FILTER:-*}:-$SKIP" || status=1
done
for r in "$REPORTS"/report*; do
  [[ -e $r ]] || continue
  echo "---- TSan report $r"
  cat "$r"
  status=1
done
stage "TSan done (status $status)"
exit $status
