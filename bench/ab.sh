#!/usr/bin/env bash
# Before/after check of a change (docs/benchmarks.md "Before and after a refactor"): the same
# sambay-bench run through the router of a loopback cluster (1 prefill + 1 decode sambay-worker,
# the tiny model), with two sets of binaries, alternated ROUNDS times (A B A B ...) so that drift
# on the machine hits both. Prints one row per run: throughput, router CPU per token, TTFT and
# ITL (mean and p90).
#
# usage: bench/ab.sh BIN_A BIN_B [ROUNDS=2]
#   e.g. (a tree built from an older commit in /tmp/before)
#   bench/ab.sh /tmp/before/build/bin build/bin 3
# Environment: REQUESTS (default 1500), CONCURRENCY (default 8), OUT (default a new temp dir;
# every run's full table and JSON stay there).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "$1") B=$(realpath "$2") ROUNDS=${3:-2}
REQUESTS=${REQUESTS:-1500} CONCURRENCY=${CONCURRENCY:-8}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
run() {  # LABEL BIN
  deploy/local/cluster.sh --bin "$2" --model "$PWD/build/models/tiny" --port 0 --run -- bash -c '
    rpid=$(pgrep -n -x sambay-router || echo 0)
    "'"$2"'"/sambay-bench --address "$SAMBAY_ADDRESS" --concurrency '"$CONCURRENCY"' \
      --requests '"$REQUESTS"' --warmup 50 --prompt-len 16-64 --gen-len 64 --seed 3 --quiet \
      --router-pid "$rpid" --json "'"$OUT/$1.json"'"' >"$OUT/$1.txt" 2>"$OUT/$1.err"
  /usr/bin/python3 - "$OUT/$1.json" "$1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
s, cpu = j["seconds"], j["router_cpu"]
us_tok = 1e6 * cpu["cpu_seconds"] / max(1, cpu["tokens_streamed"])
print(f"| {sys.argv[2]} | {j['output_tokens_per_second']:.0f} | {us_tok:.2f} | "
      f"{1e3 * s['ttft']['mean']:.1f} | {1e3 * s['ttft']['p90']:.1f} | "
      f"{1e3 * s['itl']['mean']:.3f} | {1e3 * s['itl']['p90']:.3f} | {j['requests_failed']} |")
PY
}
echo "| run | output tok/s | router CPU us/token | TTFT mean ms | TTFT p90 ms | ITL mean ms | ITL p90 ms | failed |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
  run "A$r" "$A"
  run "B$r" "$B"
done
echo "(A = $A, B = $B; tables in $OUT)"
