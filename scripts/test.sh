#!/usr/bin/env bash
# Builds with warnings as errors and runs every test:
#   1. the Release build in build/ and all of its CTest tests (unit, golden, CLI, reference);
#   2. an AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/ running the C++
#      test binaries again (the worker, router and client integration tests against sanitized
#      sambay-worker and sambay-router processes).
# Exits non-zero on the first failure. Environment: JOBS (default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}

echo "== Release build (warnings are errors)"
BUILD_DIR=build bash scripts/build.sh -DSAMBAY_WERROR=ON

echo "== Sanitizer build (ASan + UBSan)"
BUILD_DIR=build-asan bash scripts/build.sh -DSAMBAY_WERROR=ON -DSAMBAY_SANITIZE=ON -DSAMBAY_CUDA=OFF
echo "== Sanitizer run"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
build-asan/bin/common_tests --gtest_brief=1
build-asan/bin/engine_tests --gtest_brief=1
# The worker tests start build-asan/bin/sambay-worker processes: the server runs sanitized too
# (a report makes it exit non-zero, which the tests check).
build-asan/bin/worker_tests --gtest_brief=1
# The router and client tests start the sanitized sambay-router (and workers) the same way.
build-asan/bin/router_tests --gtest_brief=1
build-asan/bin/client_tests --gtest_brief=1

echo "== Release tests"
ctest --test-dir build --output-on-failure -j "$JOBS"
