#!/usr/bin/env bash
# Every GPU step of issue 7 in one script, run ON THE DEVICE MACHINE from the repository root
# with carry/gpu/ (made here by scripts/gpu-pack.sh) carried along (docs/gpu.md):
#   1. the GPU, driver and the libraries the carried binaries resolve;
#   2. cuda_tests (ops vs CPU ops, CUDA model vs CPU model, slot <-> CPU state transfer, NCCL),
#      then worker_tests' CudaWorker* (sambay-worker --device cuda handing off to and from a
#      CPU worker, vs sambay-run), then the op tests again under compute-sanitizer memcheck;
#   3. the benchmark model: sambay-mkmodel --preset phi4-mini-flash --dtype bf16;
#   4. sambay-gpu-bench (decode at concurrency 1/8/32/64 with 2K prompts, prefill 2K and 32K);
#   5. tools/gpu/torch_eager.py, the PyTorch eager peer, same shapes, same GPU;
#   6. a short side-by-side table, printed last.
# Writes under $OUT (at most 8 files come back): gpu-check.log, tests.txt, bench.json,
# torch.json, summary.md. Environment: STAGES (default "tests sanitize bench torch"),
# BENCH_FLAGS / TORCH_FLAGS (extra flags), MODEL_DIR (default /tmp/sambay-phi4).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sambay-gpu-out}
mkdir -p "$OUT"
LOG=$OUT/gpu-check.log
STAGES=${STAGES:-"tests sanitize bench torch"}
MODEL_DIR=${MODEL_DIR:-/tmp/sambay-phi4}
CARRY=carry/gpu
BIN=$CARRY/bin
status=0
exec > >(tee -a "$LOG") 2>&1
say() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }

say "1. machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv || true
[[ -d $BIN ]] || { echo "error: $BIN missing: run scripts/gpu-pack.sh here and carry carry/gpu"; exit 2; }
cat "$CARRY/MANIFEST" 2>/dev/null | head -3

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
missing=$(ldd "$BIN/cuda_tests" "$BIN/sambay-gpu-bench" "$BIN/worker_tests" "$BIN/sambay-worker" "$BIN/libsambay_worker_cuda.so" "$BIN/sambay-run" | grep "not found" | sort -u)
if [[ -n $missing ]]; then  # perhaps only the C++ runtime: try compat/
  export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$LIBS/compat"
  missing=$(ldd "$BIN/cuda_tests" "$BIN/sambay-gpu-bench" "$BIN/worker_tests" "$BIN/sambay-worker" "$BIN/libsambay_worker_cuda.so" "$BIN/sambay-run" | grep "not found" | sort -u)
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
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

if has tests; then
  say "2. cuda_tests, one process per test (a device fault in one does not hide the others)"
  : > "$OUT/tests.txt"
  for t in $("$BIN/cuda_tests" --gtest_list_tests | awk '/^[^ ]/ {s = $1} /^  / {print s $1}'); do
    t0=$(date +%s)
    timeout 600 "$BIN/cuda_tests" --gtest_filter="$t" > "$OUT/t.log" 2>&1
    rc=$?
    cat "$OUT/t.log"
    if (( rc != 0 )); then
      r=FAIL
      status=1
    elif grep -q "^\[  SKIPPED \] $t" "$OUT/t.log"; then
      r=SKIP
    else
      r=PASS
    fi
    echo "$r $t ($(( $(date +%s) - t0 )) s, exit $rc)" | tee -a "$OUT/tests.txt"
  done
  rm -f "$OUT/t.log"
  say "2a. sambay-worker --device cuda: worker_tests --gtest_filter='CudaWorker*'"
  t0=$(date +%s)
  SAMBAY_TEST_BIN_DIR=$PWD/$BIN timeout 600 "$BIN/worker_tests" --gtest_filter='CudaWorker*' \
    > "$OUT/t.log" 2>&1
  rc=$?
  cat "$OUT/t.log"
  if (( rc != 0 )); then r=FAIL; status=1; else r=PASS; fi
  echo "$r worker_tests CudaWorker* ($(( $(date +%s) - t0 )) s, exit $rc)" | tee -a "$OUT/tests.txt"
  rm -f "$OUT/t.log"
fi
if has sanitize && command -v compute-sanitizer >/dev/null; then
  say "2b. compute-sanitizer memcheck on the op tests"
  timeout 300 compute-sanitizer --tool memcheck --error-exitcode 9 "$BIN/cuda_tests" \
    --gtest_filter='CudaOps*:CudaAttention*:CudaSampling*:CudaModelTest.TinyLogitsMatchCpu' \
    --gtest_brief=1 || status=1
fi
if has bench; then
  say "3. benchmark model (phi4-mini-flash shape, random bf16)"
  if [[ ! -f $MODEL_DIR/config.json ]]; then
    timeout 600 "$BIN/sambay-mkmodel" --out "$MODEL_DIR" --preset phi4-mini-flash --dtype bf16 \
      --seed 1 --threads "$(nproc)" || status=1
  fi
  say "4. sambay-gpu-bench"
  # shellcheck disable=SC2086
  timeout 900 "$BIN/sambay-gpu-bench" --model "$MODEL_DIR" --json "$OUT/bench.json" \
    ${BENCH_FLAGS:-} || status=1
fi
if has torch; then
  say "5. PyTorch eager peer"
  # shellcheck disable=SC2086
  PYTHONUNBUFFERED=1 timeout 900 python3 tools/gpu/torch_eager.py --json "$OUT/torch.json" \
    ${TORCH_FLAGS:-} || status=1
fi

say "6. summary"
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, os, sys
out = sys.argv[1]
def load(name):
    p = os.path.join(out, name)
    return json.load(open(p)) if os.path.exists(p) else None
b, t = load("bench.json"), load("torch.json")
if b:
    print(f"GPU {b['gpu']}: copy {b['copy_bandwidth_GBps']:.0f} GB/s, GEMM {b['gemm_tflops']:.0f} TFLOP/s")
    tmap = {d["concurrency"]: d for d in (t or {}).get("decode", [])}
    print("| decode c | graph | sambay tok/s | step ms | HBM floor ms | step/floor | torch tok/s | x torch |")
    print("|---|---|---|---|---|---|---|---|")
    best = {}
    for d in b.get("decode", []):
        c = d["concurrency"]
        if c not in best or d["tokens_per_s"] > best[c]["tokens_per_s"]:
            best[c] = d
        tt = tmap.get(c, {}).get("tokens_per_s")
        ratio = f"{d['tokens_per_s'] / tt:.1f}" if tt else "-"
        print(f"| {c} | {'yes' if d.get('cuda_graph') else 'no'} | {d['tokens_per_s']:.0f} | {d['step_ms']:.2f} | {d['hbm_floor_ms']:.2f} | "
              f"{d['step_ms'] / d['hbm_floor_ms']:.2f} | {tt or 0:.0f} | {ratio} |")
    pmap = {d["tokens"]: d for d in (t or {}).get("prefill", [])}
    print("| prefill | sambay tok/s | s | matrix floor s | torch tok/s |")
    print("|---|---|---|---|---|")
    for d in b.get("prefill", []):
        tt = pmap.get(d["tokens"], {}).get("tokens_per_s", 0)
        print(f"| {d['tokens']} | {d['tokens_per_s']:.0f} | {d['seconds']:.3f} | "
              f"{d['matrix_floor_s']:.3f} | {tt:.0f} |")
    dec = best
    if 1 in dec:
        r = dec[1]["step_ms"] / dec[1]["hbm_floor_ms"]
        print(f"target: c=1 step within 1.5x of the HBM floor: {r:.2f}x -> {'MET' if r <= 1.5 else 'NOT MET'}")
    if 32 in dec and 32 in tmap:
        r = dec[32]["tokens_per_s"] / tmap[32]["tokens_per_s"]
        print(f"target: c=32 >= 5x PyTorch eager: {r:.1f}x -> {'MET' if r >= 5 else 'NOT MET'}")
else:
    print("no bench.json (bench stage skipped or failed)")
EOF
if [[ -f $OUT/tests.txt ]]; then
  {
    echo "cuda_tests: $(grep -c '^PASS' "$OUT/tests.txt") passed, $(grep -c '^FAIL' "$OUT/tests.txt") failed, $(grep -c '^SKIP' "$OUT/tests.txt") skipped"
    grep '^FAIL' "$OUT/tests.txt" | sed 's/^/  /'
    grep -h -E "worst logits rel err|greedy:|score 40" "$LOG" | grep -v "decode step\|prefill [0-9]" | sed 's/^/  /'
  } | tee -a "$OUT/summary.md"
fi
echo "gpu-check: exit status $status"
exit $status
