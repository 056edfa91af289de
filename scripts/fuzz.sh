#!/usr/bin/env bash
# Replays the libFuzzer seed corpora, or fuzzes each target for a fixed time
# (docs/reliability.md "Fuzzing"), and prints one table row per target.
#
# Usage: scripts/fuzz.sh [--seconds N | --cpu-seconds N] [--replay] [--parallel P] [targets...]
#   --replay      run every input of tests/fuzz/corpus/<target>/ once (no fuzzing)
#   --seconds N   fuzz each target for N seconds (default 60), starting from the seed corpus and
#                 the target's work corpus; new inputs go to the work corpus
#   --cpu-seconds N  fuzz each target until its process has used N CPU-seconds (user + system),
#                 however busy the machine is; then it is interrupted and its stats printed
#   --parallel P  run P targets at once (default 1)
#   targets       names as in tests/fuzz/<name>_fuzz.cc (default: all)
# Environment: BUILD_DIR (default build-asan: a build with -DSAMBAY_FUZZ=ON), FUZZ_OUT (default
# $BUILD_DIR/fuzz, git-ignored: work corpora in corpus/<target>/, findings in
# findings/<target>/, logs in logs/), RSS_LIMIT_MB (default 2048), UNIT_TIMEOUT_S (default 10).
# Exits non-zero when any target crashed, leaked, timed out, ran out of memory or is missing;
# the inputs that did are in FUZZ_OUT/findings/<target>/ and the log names them.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build-asan}
FUZZ_OUT=${FUZZ_OUT:-$BUILD_DIR/fuzz}
RSS_LIMIT_MB=${RSS_LIMIT_MB:-2048}
UNIT_TIMEOUT_S=${UNIT_TIMEOUT_S:-10}
SECONDS_PER_TARGET=60
CPU_SECONDS=0
REPLAY=0
PARALLEL=1
TARGETS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECONDS_PER_TARGET=$2; shift 2 ;;
    --seconds=*) SECONDS_PER_TARGET=${1#*=}; shift ;;
    --cpu-seconds) CPU_SECONDS=$2; shift 2 ;;
    --cpu-seconds=*) CPU_SECONDS=${1#*=}; shift ;;
    --replay) REPLAY=1; shift ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --parallel=*) PARALLEL=${1#*=}; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown flag $1" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done
if [[ ${#TARGETS[@]} -eq 0 ]]; then
  for f in tests/fuzz/*_fuzz.cc; do
    n=$(basename "$f" _fuzz.cc)
    TARGETS+=("$n")
  done
fi
mkdir -p "$FUZZ_OUT/logs"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

TICKS=$(getconf CLK_TCK)
# cpu_of PID: the CPU-seconds (user + system) the process has used so far (empty once it is gone).
cpu_of() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }  # fields after the command name; utime and stime are fields 12 and 13 here
  local f
  read -r -a f <<<"$stat"
  echo $(( (f[11] + f[12]) / TICKS ))
}

# run_one TARGET: runs the target, leaving its log, exit status and CPU-seconds in FUZZ_OUT/logs/.
run_one() {
  local t=$1 bin="$BUILD_DIR/bin/fuzz_$1" seeds="tests/fuzz/corpus/$1"
  local log="$FUZZ_OUT/logs/$t.log" rcfile="$FUZZ_OUT/logs/$t.rc" cpufile="$FUZZ_OUT/logs/$t.cpu"
  local findings="$FUZZ_OUT/findings/$t" work="$FUZZ_OUT/corpus/$t"
  rm -f "$log" "$rcfile" "$cpufile"
  if [[ ! -x $bin ]]; then
    echo "fuzz.sh: $bin is missing (configure with CC=clang-14 CXX=clang++-14 -DSAMBAY_FUZZ=ON)" >"$log"
    echo 127 >"$rcfile"
    return
  fi
  mkdir -p "$findings" "$work" "$seeds"
  local args=(-rss_limit_mb="$RSS_LIMIT_MB" -timeout="$UNIT_TIMEOUT_S" -print_final_stats=1
              -artifact_prefix="$findings/")
  [[ -f tests/fuzz/dict/$t.dict ]] && args+=(-dict="tests/fuzz/dict/$t.dict")
  local rc=0
  if [[ $REPLAY -eq 1 ]]; then
    "$bin" "${args[@]}" -runs=0 "$seeds" >"$log" 2>&1 || rc=$?
  else
    local wall=$SECONDS_PER_TARGET cpu=0 now interrupted=0
    [[ $CPU_SECONDS -gt 0 ]] && wall=$((CPU_SECONDS * 20))
    "$bin" "${args[@]}" -max_total_time="$wall" "$work" "$seeds" >"$log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      now=$(cpu_of "$pid")
      [[ -n $now ]] && cpu=$now
      if [[ $CPU_SECONDS -gt 0 && $cpu -ge $CPU_SECONDS && $interrupted -eq 0 ]]; then
        kill -INT "$pid" 2>/dev/null || true  # libFuzzer prints its final stats and exits 72
        interrupted=1
      fi
      sleep 1
    done
    wait "$pid" || rc=$?
    [[ $interrupted -eq 1 && $rc -eq 72 ]] && rc=0
    echo "$cpu" >"$cpufile"
  fi
  echo "$rc" >"$rcfile"
}

T_START=$(date +%s)
running=0
for t in "${TARGETS[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [[ $running -ge $PARALLEL ]]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

stat_of() { sed -n "s/^stat::$2: *//p" "$1" | tail -n 1; }
if [[ $REPLAY -eq 1 ]]; then
  mode=replay
elif [[ $CPU_SECONDS -gt 0 ]]; then
  mode="cpu ${CPU_SECONDS}s"
else
  mode="fuzz ${SECONDS_PER_TARGET}s"
fi
printf '%-18s %-10s %10s %9s %8s %6s %8s %6s %9s\n' target mode runs "execs/s" corpus new "rss MB" "cpu s" \
  findings
failed=0
for t in "${TARGETS[@]}"; do
  log="$FUZZ_OUT/logs/$t.log"
  rc=$(cat "$FUZZ_OUT/logs/$t.rc" 2>/dev/null || echo 127)
  runs=$(stat_of "$log" number_of_executed_units)
  eps=$(stat_of "$log" average_exec_per_sec)
  new=$(stat_of "$log" new_units_added)
  rss=$(stat_of "$log" peak_rss_mb)
  cpu=$(cat "$FUZZ_OUT/logs/$t.cpu" 2>/dev/null || echo -)
  if [[ $REPLAY -eq 1 ]]; then
    corpus=$(find "tests/fuzz/corpus/$t" -type f 2>/dev/null | wc -l)
  else
    corpus=$(find "$FUZZ_OUT/corpus/$t" "tests/fuzz/corpus/$t" -type f 2>/dev/null | wc -l)
  fi
  # Inputs that crashed, leaked, timed out or ran out of memory (slow units are not findings).
  found=$(grep -cE '^(artifact_prefix|Test unit written to)' "$log" 2>/dev/null || true)
  found=${found:-0}
  if [[ $rc -ne 0 ]]; then
    [[ $found -eq 0 ]] && found=1
    failed=1
  fi
  printf '%-18s %-10s %10s %9s %8s %6s %8s %6s %9s\n' "$t" "$mode" "${runs:--}" "${eps:--}" \
    "$corpus" "${new:--}" "${rss:--}" "$cpu" "$found"
done
echo "fuzz.sh: $(( $(date +%s) - T_START )) s wall; logs in $FUZZ_OUT/logs/"
if [[ $failed -ne 0 ]]; then
  for t in "${TARGETS[@]}"; do
    rc=$(cat "$FUZZ_OUT/logs/$t.rc" 2>/dev/null || echo 127)
    [[ $rc -eq 0 ]] && continue
    echo "---- $t (exit $rc): $FUZZ_OUT/logs/$t.log"
    grep -E 'ERROR|SUMMARY|sambay fuzz:|Test unit written|is missing|==[0-9]+==' "$FUZZ_OUT/logs/$t.log" | head -n 20 || true
  done
  exit 1
fi
