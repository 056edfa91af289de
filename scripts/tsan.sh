#!/usr/bin/env bash
# ThreadSanitizer run (docs/reliability.md "ThreadSanitizer"): a clang-14 build with
# -DSAMBAY_TSAN=ON in build-tsan/ (sanitized tests and sanitized sambay-worker / sambay-router
# processes), then the worker and router test suites. A report makes the process that found it
# exit 66: a test binary fails, and a server's exit fails the test that started it.
# Suppressions for Debian's prebuilt gRPC and Abseil (not instrumented): tests/tsan/suppressions.txt.
# Not part of CI (the build and the slowed-down suites take about 40 minutes on 2 cores).
# Environment: JOBS (default: number of cores), TSAN_FILTER (a --gtest_filter, default all).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
stage() { echo "== $1 ($(date +%T))"; }
stage "TSan build"
CC=clang-14 CXX=clang++-14 BUILD_DIR=build-tsan JOBS=$JOBS bash scripts/build.sh \
  -DSAMBAY_TSAN=ON -DSAMBAY_CUDA=OFF -DSAMBAY_WERROR=ON \
  "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG" "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG"
export TSAN_OPTIONS="suppressions=$PWD/tests/tsan/suppressions.txt:halt_on_error=1:exitcode=66:second_deadlock_stack=1"
status=0
for t in common_tests worker_tests router_tests; do
  stage "TSan $t"
  build-tsan/bin/$t --gtest_brief=1 --gtest_filter="${TSAN_FILTER:-*}" || status=1
done
stage "TSan done (status $status)"
exit $status
