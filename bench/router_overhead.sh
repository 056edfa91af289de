#!/usr/bin/env bash
# Router overhead benchmark (docs/benchmarks.md, "Router overhead"): sambay-router in front of
# sambay-token-source (a synthetic worker: one token per stream every --step-us, no model), and
# sambay-bench streaming through the router. Prints sambay-bench's table, whose "tokens per
# router CPU-second" row is the router's capacity per core (router utime+stime from /proc).
#
# usage: bench/router_overhead.sh [CONCURRENCY=64] [STEP_US=1000] [ROUTER FLAGS...]
#   e.g. bench/router_overhead.sh 64 1000 --io-threads 1
# Environment: BIN (default build/bin), DURATION (default 20 s), GEN_LEN (default 512).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin}
CONC=${1:-64}
STEP=${2:-1000}
shift $(( $# >= 2 ? 2 : $# ))
DIR=$(mktemp -d)
cleanup() { kill "${RP:-}" "${SP:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
port() { /usr/bin/python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['grpc_port'])" "$1"; }
wait_file() { for _ in $(seq 200); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "no $1" >&2; exit 1; }

"$BIN/sambay-token-source" --step-us "$STEP" --vocab 320 --port-file "$DIR/source.port" \
  2>"$DIR/source.log" &
SP=$!
wait_file "$DIR/source.port"
"$BIN/sambay-router" --model "$BIN/../models/tiny" --port 0 --metrics-port 0 \
  --port-file "$DIR/router.port" --workers "127.0.0.1:$(port "$DIR/source.port")" \
  --log-level warning "$@" 2>"$DIR/router.log" &
RP=$!
wait_file "$DIR/router.port"
sleep 1.5  # the router's first probe of the source
"$BIN/sambay-bench" --target router --address "127.0.0.1:$(port "$DIR/router.port")" \
  --concurrency "$CONC" --duration "${DURATION:-20}" --warmup "$CONC" --prompt-len 16 \
  --gen-len "${GEN_LEN:-512}" --vocab 320 --router-pid "$RP" --worker-pid "$SP"
