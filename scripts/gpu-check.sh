#!/usr/bin/env bash
# Every GPU step in one script, run ON THE DEVICE MACHINE from the repository root with
# carry/gpu/ (made here by scripts/gpu-pack.sh) carried along. docs/gpu.md has the plan:
#   call 1 (correctness, the default STAGES):  run(command="bash scripts/gpu-check.sh",
#           carry=["carry/gpu"], timeout_s=480)
#   call 2 (performance): STAGES="model bench torch" bash scripts/gpu-check.sh
# Stages, in this order (each bounded, and never past the call's budget):
#   machine   the GPU, driver, runtime (Firecracker or gVisor), the libraries the binaries resolve
#   localize  the three tests that localize a failure best, in one process (<= 90 s): the cuBLASLt
#             GEMM against a double reference, block-table differential attention against the CPU
#             row, the tiny model's logits against the CPU
#   tests     every other cuda_tests test in its own process (<= 90 s each), ordered
#             ops -> attention -> sampling -> model -> state transfer -> TP -> NCCL (NCCL last:
#             an init hang must not eat the run; NCCL_DEBUG=WARN, one retry with
#             NCCL_CUMEM_ENABLE=0)
#   worker    worker_tests CudaWorker*: sambay-worker --device cuda as prefill / decode / both
#   sanitize  compute-sanitizer memcheck (model and sampling tests) and racecheck (attention and
#             sampling); skipped, saying why, where the runtime does not support it (gVisor)
#   model     the phi4-mini-flash-shape checkpoint (random bf16, 7.7 GB) in MODEL_DIR
#   check     sambay-gpu-bench --check-only: GPU bf16 logits vs the CPU f32 engine on that model
#   bench     sambay-gpu-bench, reduced defaults (decode c=1,32, 32 steps, 2K prefill) unless
#             BENCH_FLAGS says otherwise; writes bench.json after every row
#   torch     tools/gpu/torch_eager.py, the PyTorch eager peer, in the device's own environment
#   profile   ncu (Firecracker only) per-kernel time of one decode step at c=1 and c=32 and of a
#             2K prefill (sambay-gpu-bench --profile), summed by kernel: profile.txt
# Writes under $OUT (8 files at most come back): gpu-check.log, tests.txt, summary.md,
# check.json, bench.json, torch.json, sanitize.log, profile.txt.
# Environment: STAGES (default "localize tests worker sanitize model check bench": bench runs
# only if MIN_BENCH_S are left), CALL_BUDGET (seconds for the whole script, default 450: keep it
# under the run's timeout_s), FILTER (a gtest filter: only those cuda_tests), BENCH_FLAGS,
# TORCH_FLAGS, MODEL_DIR (default /tmp/sambay-phi4), DRY_RUN=1 (on a machine without a GPU:
# every stage's command path runs, the tests skip, the bench must refuse cleanly; a CI test).
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT=${OUT:-/tmp/sambay-gpu-out}
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
DRY_RUN=${DRY_RUN:-0}
STAGES=${STAGES:-"localize tests worker sanitize model check bench"}
CALL_BUDGET=${CALL_BUDGET:-450}
MIN_BENCH_S=${MIN_BENCH_S:-100}
FILTER=${FILTER:-}
MODEL_DIR=${MODEL_DIR:-/tmp/sambay-phi4}
CARRY=${CARRY:-carry/gpu}
BIN=$CARRY/bin
ORIG_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
status=0
exec > >(tee -a "$LOG") 2>&1
say() { printf '\n== %s (%s, %d s in)\n' "$*" "$(date -u +%H:%M:%S)" $(($(date +%s) - T0)); }
has() { [[ " $STAGES " == *" $1 "* ]]; }
left() { echo $((T0 + CALL_BUDGET - $(date +%s))); }
# bound S: S, or less so that the stage ends 5 s before the call's budget.
bound() {
  local l=$(($(left) - 5))
  ((l < $1)) && echo "$l" || echo "$1"
}
record() { echo "$*" | tee -a "$OUT/tests.txt"; }

say "machine"
if [[ $DRY_RUN == 1 ]]; then
  echo "DRY_RUN=1: no GPU expected; every stage's command path runs"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv ||
    echo "nvidia-smi failed"
fi
RUNTIME=other
case "$(uname -r)" in
  4.4.0*) RUNTIME=gvisor ;;
  *-fc-*) RUNTIME=firecracker ;;
esac
echo "kernel $(uname -r): runtime $RUNTIME; $(nproc) CPUs"
[[ -d $BIN ]] || { echo "error: $BIN missing: run scripts/gpu-pack.sh here and carry carry/gpu"; exit 2; }
head -3 "$CARRY/MANIFEST" 2>/dev/null

LIBS=/tmp/sambay-libs
rm -rf "$LIBS" && mkdir -p "$LIBS"
tar -C "$LIBS" -xJf "$CARRY/libs.tar.xz" 2>/dev/null ||
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$CARRY/libs.tar.xz" "$LIBS" || { echo "error: cannot unpack libs.tar.xz"; exit 2; }
# The CUDA libraries come from the device image: the toolkit, or the nvidia-* wheels of its
# python3 (cuBLAS, NCCL). Each directory holding a missing one goes on the library path.
cuda_dirs=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib)
py_nvidia=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null || true)
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
  if ldd "$BIN/cuda_tests" | grep -q "$lib => /"; then continue; fi
  found=$(find "${cuda_dirs[@]}" ${py_nvidia:+"$py_nvidia/nvidia"} -name "$lib" 2>/dev/null | head -1)
  if [[ -n $found ]]; then
    echo "using $found"
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$found")"
  fi
done
# NCCL is loaded at run time (engine/tp/nccl_loader.h): without it only the NCCL tests skip.
if [[ $LD_LIBRARY_PATH != *nccl* ]] && ! ldconfig -p 2>/dev/null | grep -q libnccl.so.2 &&
  [[ -z $(find "${cuda_dirs[@]}" -name libnccl.so.2 2>/dev/null | head -1) ]]; then
  echo "note: libnccl.so.2 not found: the NCCL tests will skip"
fi
BINS=("$BIN/cuda_tests" "$BIN/sambay-gpu-bench" "$BIN/worker_tests" "$BIN/sambay-worker"
  "$BIN/libsambay_worker_cuda.so" "$BIN/sambay-run" "$BIN/sambay-mkmodel")
missing=$(ldd "${BINS[@]}" | grep "not found" | sort -u)
if [[ -n $missing ]]; then # perhaps only the C++ runtime: try compat/
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$LIBS/compat"
  missing=$(ldd "${BINS[@]}" | grep "not found" | sort -u)
fi
if [[ -n $missing ]]; then
  echo "error: unresolved libraries:"; echo "$missing"; exit 3
fi
# Debian 12's libstdc++ / libgcc_s (compat/) only if the image's do not run the binaries.
if ! "$BIN/cuda_tests" --gtest_list_tests >/dev/null 2>"$OUT/start.err"; then
  cat "$OUT/start.err"
  echo "the binaries do not start with the image's C++ runtime: using compat/"
  export LD_LIBRARY_PATH="$LIBS/compat:$LD_LIBRARY_PATH"
  "$BIN/cuda_tests" --gtest_list_tests >/dev/null || { echo "error: cuda_tests does not start"; exit 3; }
fi
rm -f "$OUT/start.err"
# The driver's libcuda: if the tests cannot see the GPU that nvidia-smi sees, look for it.
probe() { "$BIN/cuda_tests" --gtest_filter=CudaOpsTest.EmbeddingIsExact 2>&1 | grep -c '^\[  SKIPPED \]'; }
if [[ $DRY_RUN != 1 ]] && [[ $(probe) != 0 ]]; then
  cuda1=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/compat \
    -name libcuda.so.1 2>/dev/null | head -1)
  echo "the tests see no GPU; libcuda.so.1: ${cuda1:-none found}"
  [[ -n ${cuda1:-} ]] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$cuda1")"
  [[ $(probe) == 0 ]] || { echo "error: the CUDA runtime sees no device"; status=1; }
fi
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
: >"$OUT/tests.txt"

# run_tests LABEL SECONDS FILTER [ENV...]: one cuda_tests process; records PASS/FAIL/SKIP.
run_tests() {
  local label=$1 secs=$2 filter=$3 t0 rc r
  shift 3
  t0=$(date +%s)
  env "$@" timeout -k 5 "$secs" "$BIN/cuda_tests" --gtest_filter="$filter" >"$OUT/t.log" 2>&1
  rc=$?
  cat "$OUT/t.log"
  if ((rc == 124 || rc == 137)); then
    r=TIMEOUT
  elif ((rc != 0)); then
    r=FAIL
  elif grep -q '^\[  SKIPPED \]' "$OUT/t.log" && ! grep -q '^\[       OK \]' "$OUT/t.log"; then
    r=SKIP
  elif grep -q '^\[==========\] 0 tests' "$OUT/t.log"; then
    r=NONE
  else
    r=PASS
  fi
  [[ $r == FAIL || $r == TIMEOUT ]] && status=1
  record "$r $label ($(($(date +%s) - t0)) s of $secs, exit $rc)"
  rm -f "$OUT/t.log"
  LAST=$r
}

LOCALIZE="CudaOpsTest.GemmMatchesDoubleReference:CudaAttentionTest.BlocksMatchCpuDiffAttendRow"
LOCALIZE+=":CudaModelTest.TinyLogitsMatchCpu"
if has localize && [[ -z $FILTER ]]; then
  say "localize: GEMM vs double, block-table attention vs CPU, tiny model logits vs CPU"
  run_tests "localize ($LOCALIZE)" "$(bound 90)" "$LOCALIZE"
fi

# The order of suites: a failure in an early one explains the later ones.
suite_rank() {
  case "$1" in
    CudaValidationTest.*) echo 0 ;; CudaOpsTest.*) echo 1 ;; CudaAttentionTest.*) echo 2 ;;
    CudaSamplingTest.*) echo 3 ;; CudaModelTest.*) echo 4 ;; CudaStateTransferTest.*) echo 5 ;;
    CudaGroupArgs.*) echo 6 ;; CudaTpTest.Nccl*) echo 9 ;; CudaTpTest.*) echo 7 ;;
    NcclCommunicatorTest.*) echo 8 ;; *) echo 5 ;;
  esac
}
if has tests; then
  say "tests: cuda_tests, one process per test (a device fault in one does not hide the others)"
  list=$("$BIN/cuda_tests" --gtest_list_tests ${FILTER:+--gtest_filter="$FILTER"} |
    awk '/^[^ ]/ {s = $1} /^  / {print s $1}')
  ordered=$(for t in $list; do echo "$(suite_rank "$t") $t"; done | sort -s -n -k1,1 | cut -d' ' -f2)
  for t in $ordered; do
    if [[ -z $FILTER ]] && has localize && [[ ":$LOCALIZE:" == *":$t:"* ]]; then continue; fi
    b=$(bound 90)
    if ((b < 10)); then record "NOT-RUN $t (call budget spent)"; status=1; continue; fi
    if [[ $t == Nccl* || $t == CudaTpTest.Nccl* ]]; then
      run_tests "$t" "$(bound 60)" "$t"
      if [[ $LAST == FAIL || $LAST == TIMEOUT ]] && (($(left) > 40)); then
        echo "retrying $t once with NCCL_CUMEM_ENABLE=0"
        run_tests "$t (NCCL_CUMEM_ENABLE=0)" "$(bound 60)" "$t" NCCL_CUMEM_ENABLE=0
      fi
    else
      run_tests "$t" "$b" "$t"
    fi
  done
fi

if has worker && [[ -z $FILTER ]]; then
  say "worker: sambay-worker --device cuda (worker_tests --gtest_filter='CudaWorker*')"
  b=$(bound 150)
  if ((b < 30)); then
    record "NOT-RUN worker_tests CudaWorker* (call budget spent)"; status=1
  else
    t0=$(date +%s)
    SAMBAY_TEST_BIN_DIR=$PWD/$BIN timeout -k 5 "$b" "$BIN/worker_tests" \
      --gtest_filter='CudaWorker*' >"$OUT/t.log" 2>&1
    rc=$?
    cat "$OUT/t.log"
    if ((rc != 0)); then r=FAIL; status=1; else r=PASS; fi
    ((rc == 124 || rc == 137)) && r=TIMEOUT
    record "$r worker_tests CudaWorker* ($(($(date +%s) - t0)) s of $b, exit $rc)"
    rm -f "$OUT/t.log"
  fi
fi

if has sanitize && [[ -z $FILTER ]]; then
  say "sanitize: compute-sanitizer memcheck (model, sampling) and racecheck (attention, sampling)"
  if [[ $DRY_RUN == 1 ]]; then
    echo "skipped: dry run (no GPU)"
  elif [[ $RUNTIME == gvisor ]]; then
    echo "skipped: gVisor runtime: compute-sanitizer reports 'Device not supported' there"
    record "SKIP compute-sanitizer (gVisor runtime)"
  elif ! command -v compute-sanitizer >/dev/null; then
    echo "skipped: compute-sanitizer is not on the PATH"
    record "SKIP compute-sanitizer (not installed)"
  else
    for tool in memcheck racecheck; do
      if [[ $tool == memcheck ]]; then
        f='CudaSampling*:CudaModelTest.TinyLogitsMatchCpu:CudaModelTest.GreedyGenerationMatchesCpu'
        b=$(bound 100)
      else
        f='CudaAttentionTest.*:CudaSampling*'
        b=$(bound 70)
      fi
      if ((b < 20)); then record "NOT-RUN compute-sanitizer $tool (call budget spent)"; continue; fi
      t0=$(date +%s)
      timeout -k 5 "$b" compute-sanitizer --tool "$tool" --error-exitcode 9 \
        "$BIN/cuda_tests" --gtest_filter="$f" --gtest_brief=1 >>"$OUT/sanitize.log" 2>&1
      rc=$?
      tail -n 15 "$OUT/sanitize.log"
      case $rc in
        0) r=PASS ;; 9) r=FAIL; status=1 ;; 124 | 137) r=TIMEOUT ;; *) r=FAIL; status=1 ;;
      esac
      record "$r compute-sanitizer $tool $f ($(($(date +%s) - t0)) s of $b, exit $rc)"
    done
  fi
fi

if has model; then
  say "model: phi4-mini-flash shape, random bf16, in $MODEL_DIR"
  if [[ $DRY_RUN == 1 ]]; then
    MODEL_DIR=$CARRY/models/tiny
    echo "dry run: using $MODEL_DIR"
  elif [[ ! -f $MODEL_DIR/config.json ]]; then
    b=$(bound 150)
    t0=$(date +%s)
    timeout -k 5 "$b" "$BIN/sambay-mkmodel" --out "$MODEL_DIR" --preset phi4-mini-flash \
      --dtype bf16 --seed 1 --threads "$(nproc)" || { echo "error: sambay-mkmodel failed"; status=1; }
    echo "model written in $(($(date +%s) - t0)) s: $(du -sh "$MODEL_DIR" 2>/dev/null | cut -f1)"
  fi
fi
[[ $DRY_RUN == 1 ]] && MODEL_DIR=$CARRY/models/tiny

# bench_run LABEL SECONDS ARGS...: sambay-gpu-bench; in a dry run it must refuse cleanly.
bench_run() {
  local label=$1 secs=$2 rc
  shift 2
  timeout -k 5 "$secs" "$BIN/sambay-gpu-bench" --model "$MODEL_DIR" --threads "$(nproc)" "$@"
  rc=$?
  if [[ $DRY_RUN == 1 ]]; then
    # No GPU: exit 1 with one error line, never a crash or a hang.
    if ((rc == 1)); then r=PASS; else r=FAIL; status=1; fi
    record "$r dry run: sambay-gpu-bench $label refuses without a GPU (exit $rc, want 1)"
  else
    if ((rc == 0)); then r=PASS; else r=FAIL; status=1; fi
    ((rc == 124 || rc == 137)) && r=TIMEOUT
    record "$r sambay-gpu-bench $label (exit $rc)"
  fi
}
if has check; then
  say "check: GPU bf16 logits vs the CPU f32 engine on the phi4-mini-flash shape"
  b=$(bound 150)
  if ((b < 40)); then record "NOT-RUN check (call budget spent)"; status=1; else
    bench_run check "$b" --check-only --check-tokens 64 --check-steps 8 \
      --concurrency 1 --prompt 64 --decode-steps 1 --prefill-lengths "" --json "$OUT/check.json"
  fi
fi
if has bench; then
  say "bench: sambay-gpu-bench ${BENCH_FLAGS:-(reduced defaults)}"
  b=$(bound 420)
  if ((b < MIN_BENCH_S)) && [[ $DRY_RUN != 1 ]]; then
    echo "skipped: $b s left in the call (MIN_BENCH_S=$MIN_BENCH_S)"
    record "NOT-RUN bench ($b s left)"
  else
    # shellcheck disable=SC2086
    bench_run bench "$b" --json "$OUT/bench.json" \
      ${BENCH_FLAGS:---concurrency 1,32 --decode-steps 32 --prefill-lengths 2048}
  fi
fi
if has profile; then
  say "profile: ncu per-kernel times (decode c=1, c=32, prefill 2K)"
  if [[ $DRY_RUN == 1 ]]; then
    echo "skipped: dry run"
  elif [[ $RUNTIME == gvisor ]] || ! command -v ncu >/dev/null; then
    echo "skipped: ncu reads no counters under gVisor, or is not installed"
  else
    for spec in "decode-c1|decode|--concurrency 1" "decode-c32|decode|--concurrency 32" \
      "prefill-2k|prefill|--concurrency 1 --prefill-lengths 2048"; do
      IFS='|' read -r name phase flags <<<"$spec"
      b=$(bound 90)
      if ((b < 30)); then record "NOT-RUN profile $name ($b s left)"; continue; fi
      echo "### $name" >>"$OUT/profile.txt"
      t0=$(date +%s)
      # shellcheck disable=SC2086
      timeout -k 5 "$b" ncu --clock-control none --profile-from-start off --print-summary per-kernel \
        --metrics gpu__time_duration.sum,dram__bytes.sum "$BIN/sambay-gpu-bench" \
        --model "$MODEL_DIR" --threads "$(nproc)" --profile "$phase" --graph-rows=false \
        --decode-steps 1 --prefill-lengths "" $flags >>"$OUT/profile.txt" 2>&1
      rc=$?
      if ((rc == 0)); then r=PASS; else r=FAIL; fi
      record "$r profile $name ($(($(date +%s) - t0)) s of $b, exit $rc)"
    done
    python3 tools/gpu/ncu_summary.py "$OUT/profile.txt" || true
  fi
fi

if has torch; then
  say "torch: the PyTorch eager peer, in the device's own environment"
  b=$(bound 300)
  if [[ $DRY_RUN == 1 ]]; then
    echo "skipped: dry run"
  elif ((b < 60)); then
    record "NOT-RUN torch ($b s left)"
  else
    # The carried Debian libraries would shadow PyTorch's own: the original environment.
    # shellcheck disable=SC2086
    LD_LIBRARY_PATH=$ORIG_LD_LIBRARY_PATH PYTHONUNBUFFERED=1 timeout -k 5 "$b" \
      python3 tools/gpu/torch_eager.py --json "$OUT/torch.json" \
      ${TORCH_FLAGS:---concurrency 1,32 --decode-steps 32 --prefill-lengths 2048} ||
      { record "FAIL torch_eager.py"; status=1; }
  fi
fi

say "summary"
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    try:
        return json.load(open(p)) if os.path.exists(p) else None
    except ValueError:
        return None
b, t, c = load("bench.json"), load("torch.json"), load("check.json")
if c and "check" in c:
    k = c["check"]
    print(f"check (phi4-mini-flash shape): worst logits rel err {k['worst_rel_err']:.4g} vs the fp32 "
          f"CPU (tolerance {k['tolerance']}), {k.get('worst_rel_err_emulated', float('nan')):.4g} vs "
          f"the bf16-emulating CPU (tolerance {k.get('tolerance_emulated')}) over {k['rows']} rows: "
          f"{'PASS' if k['pass'] else 'FAIL'}; argmax equal {k['argmax_equal']}/{k['rows']}")
if b:
    print(f"GPU {b['gpu']}: copy {b['copy_bandwidth_GBps']:.0f} GB/s, GEMM {b['gemm_tflops']:.0f} TFLOP/s")
    tmap = {d["concurrency"]: d for d in (t or {}).get("decode", [])}
    print("| decode c | graph | sambay tok/s | step ms | HBM floor ms | step/floor | torch tok/s | x torch |")
    print("|---|---|---|---|---|---|---|---|")
    best = {}
    for d in b.get("decode", []):
        n = d["concurrency"]
        if n not in best or d["tokens_per_s"] > best[n]["tokens_per_s"]:
            best[n] = d
        tt = tmap.get(n, {}).get("tokens_per_s")
        ratio = f"{d['tokens_per_s'] / tt:.1f}" if tt else "-"
        print(f"| {n} | {'yes' if d.get('cuda_graph') else 'no'} | {d['tokens_per_s']:.0f} | {d['step_ms']:.2f} | {d['hbm_floor_ms']:.2f} | "
              f"{d['step_ms'] / d['hbm_floor_ms']:.2f} | {tt or 0:.0f} | {ratio} |")
    pmap = {d["tokens"]: d for d in (t or {}).get("prefill", [])}
    print("| prefill | sambay tok/s | s | matrix floor s | torch tok/s |")
    print("|---|---|---|---|---|")
    for d in b.get("prefill", []):
        tt = pmap.get(d["tokens"], {}).get("tokens_per_s", 0)
        print(f"| {d['tokens']} | {d['tokens_per_s']:.0f} | {d['seconds']:.3f} | "
              f"{d['matrix_floor_s']:.3f} | {tt:.0f} |")
    for e in b.get("errors", []):
        print(f"FAILED row {e['row']}: {e['status']}")
    if 1 in best:
        r = best[1]["step_ms"] / best[1]["hbm_floor_ms"]
        print(f"target: c=1 step within 1.5x of the HBM floor: {r:.2f}x -> {'MET' if r <= 1.5 else 'NOT MET'}")
    if 32 in best and 32 in tmap:
        r = best[32]["tokens_per_s"] / tmap[32]["tokens_per_s"]
        print(f"target: c=32 >= 5x PyTorch eager: {r:.1f}x -> {'MET' if r >= 5 else 'NOT MET'}")
EOF
{
  echo "tests: $(grep -c '^PASS' "$OUT/tests.txt") passed, $(grep -c -E '^(FAIL|TIMEOUT)' "$OUT/tests.txt") failed, $(grep -c '^SKIP' "$OUT/tests.txt") skipped, $(grep -c '^NOT-RUN' "$OUT/tests.txt") not run"
  grep -E '^(FAIL|TIMEOUT|NOT-RUN)' "$OUT/tests.txt" | sed 's/^/  /'
  grep -h -E "worst logits rel err|greedy:|greedy ids equal|first divergence" "$LOG" |
    grep -v "^check (phi4" | sort -u | head -30 | sed 's/^/  /'
} | tee -a "$OUT/summary.md"
echo "gpu-check: exit status $status, $(($(date +%s) - T0)) s"
exit $status
