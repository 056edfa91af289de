#!/usr/bin/env bash
# Checks the format (clang-format-14, .clang-format), builds with warnings as errors and runs
# every test:
#   1. the Release build in build/ and all of its CTest tests (unit, golden, CLI, reference);
#   2. an AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/ (clang-14, -O1,
#      with the libFuzzer targets: -DSAMBAY_FUZZ=ON) running the C++ test binaries again (the
#      worker, router and client integration tests against sanitized sambay-worker and
#      sambay-router processes), then scripts/fuzz.sh: every seed corpus replayed and every fuzz
#      target fuzzed for FUZZ_SECONDS (default 20) seconds (docs/reliability.md);
#   3. a ThreadSanitizer build in build-tsan/ (clang-14, -O1, -Wthread-safety) running the
#      common, worker and router test suites (scripts/tsan.sh);
#   4. when the Release build has the CUDA backend: scripts/gpu-pack.sh into build/carry-gpu and
#      the GPU run's script as a dry run (DRY_RUN=1 scripts/gpu-check.sh: binaries start,
#      libraries resolve, GPU tests skip, the benchmark refuses cleanly), so it cannot rot.
# Every stage prints its wall time. Exits non-zero on the first failure.
# Environment: JOBS (default: number of cores), FUZZ_SECONDS (default 20).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-$(nproc)}
T0=$(date +%s)
T_STAGE=$T0
# stage NAME: closes the previous stage (its wall time) and opens the next.
stage() {
  local now
  now=$(date +%s)
  echo "-- $((now - T_STAGE)) s (total $((now - T0)) s)"
  T_STAGE=$now
  echo "== $*"
}
trap 'echo "-- $(($(date +%s) - T_STAGE)) s (total $(($(date +%s) - T0)) s)"' EXIT

echo "== Format check (clang-format-14 --dry-run -Werror over every C++ and CUDA file)"
git ls-files -z '*.cc' '*.h' '*.cu' '*.cuh' | xargs -0 clang-format-14 --dry-run -Werror

stage "Release build (warnings are errors)"
BUILD_DIR=build bash scripts/build.sh -DSAMBAY_WERROR=ON

if [[ -x build/bin/cuda_tests ]]; then
  stage "GPU run script: pack build/carry-gpu and DRY_RUN=1 scripts/gpu-check.sh"
  CARRY_DIR=build/carry-gpu BUILD_DIR=build JOBS=$JOBS bash scripts/gpu-pack.sh >build/gpu-pack.log 2>&1 ||
    { cat build/gpu-pack.log; exit 1; }
  tail -n 2 build/gpu-pack.log
  rm -rf build/gpu-dry-run
  DRY_RUN=1 CARRY=build/carry-gpu OUT=build/gpu-dry-run bash scripts/gpu-check.sh >/dev/null 2>&1 ||
    { cat build/gpu-dry-run/gpu-check.log; exit 1; }
  tail -n 3 build/gpu-dry-run/gpu-check.log
fi

stage "Sanitizer build (clang-14, ASan + UBSan, libFuzzer targets)"
# clang for libFuzzer; -O1 keeps the build no slower than the g++ -O3 one it replaced. A cache
# from another compiler cannot be switched in place.
if [[ -f build-asan/CMakeCache.txt ]] &&
   ! grep -q '^CMAKE_CXX_COMPILER:[A-Z]*=.*clang++-14$' build-asan/CMakeCache.txt; then
  rm -rf build-asan
fi
CC=clang-14 CXX=clang++-14 BUILD_DIR=build-asan bash scripts/build.sh -DSAMBAY_WERROR=ON \
  -DSAMBAY_FUZZ=ON -DSAMBAY_CUDA=OFF "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG" \
  "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG"
stage "Sanitizer run"
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
# TLS, mTLS and API keys (tests/security/): the sanitized servers with OpenSSL in the path.
build-asan/bin/security_tests --gtest_brief=1

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
stage "Fuzz: replay corpora + $FUZZ_SECONDS s per target"
BUILD_DIR=build-asan bash scripts/fuzz.sh --replay
BUILD_DIR=build-asan bash scripts/fuzz.sh --seconds "$FUZZ_SECONDS" --parallel "$JOBS"

stage "ThreadSanitizer build (clang-14, -Wthread-safety) and run (scripts/tsan.sh)"
JOBS=$JOBS bash scripts/tsan.sh

stage "Release tests"
ctest --test-dir build --output-on-failure -j "$JOBS"
