#!/usr/bin/env bash
# Router overhead benchmark (docs/benchmarks.md, "Router overhead"): sambay-router in front of
# sambay-token-source (a synthetic worker: one token per stream every --step-us, no model), and
# sambay-bench streaming through the router. Prints sambay-bench's table, whose "tokens per
# router CPU-second" row is the router's capacity per core (router utime+stime from /proc), then
# the router's peak and final resident memory (VmHWM, VmRSS from /proc/PID/status).
#
# usage: bench/router_overhead.sh [CONCURRENCY=64] [STEP_US=1000] [ROUTER FLAGS...]
#   e.g. bench/router_overhead.sh 64 1000 --io-threads 1
#        API=http bench/router_overhead.sh 1000 20000 --max-concurrent 1000
# Environment: BIN (default build/bin), DURATION (default 20 s), GEN_LEN (default 512),
#   API (grpc, the default: sambay.v1.Generation/Generate; http: the router also serves its
#   OpenAI-compatible HTTP API on a free --http-port and sambay-bench streams POST
#   /v1/completions through it), VOCAB (default 320: the token ids of prompts and of the source;
#   128 keeps every token one ASCII byte, so each SSE event carries exactly one token).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin}
API=${API:-grpc}
VOCAB=${VOCAB:-320}
CONC=${1:-64}
STEP=${2:-1000}
shift $(( $# >= 2 ? 2 : $# ))
case "$API" in grpc|http) ;; *) echo "API: grpc or http, not $API" >&2; exit 2 ;; esac
DIR=$(mktemp -d)
cleanup() { kill "${RP:-}" "${SP:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
port() { /usr/bin/python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['grpc_port'])" "$1"; }
free_port() { /usr/bin/python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])"; }
wait_file() { for _ in $(seq 200); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "no $1" >&2; exit 1; }

"$BIN/sambay-token-source" --step-us "$STEP" --vocab "$VOCAB" --port-file "$DIR/source.port" \
  2>"$DIR/source.log" &
SP=$!
wait_file "$DIR/source.port"
HTTP_FLAGS=()
[ "$API" = http ] && HTTP_FLAGS=(--http-port "$(free_port)")
"$BIN/sambay-router" --model "$BIN/../models/tiny" --port 0 --metrics-port 0 \
  --port-file "$DIR/router.port" --workers "127.0.0.1:$(port "$DIR/source.port")" \
  --log-level warning "${HTTP_FLAGS[@]}" "$@" 2>"$DIR/router.log" &
RP=$!
wait_file "$DIR/router.port"
sleep 1.5  # the router's first probe of the source
ADDRESS="127.0.0.1:$(port "$DIR/router.port")"
[ "$API" = http ] && ADDRESS="127.0.0.1:${HTTP_FLAGS[1]}"
RC=0
"$BIN/sambay-bench" --target router --api "$API" --address "$ADDRESS" \
  --concurrency "$CONC" --duration "${DURATION:-20}" --warmup "$CONC" --prompt-len 16 \
  --gen-len "${GEN_LEN:-512}" --vocab "$VOCAB" --router-pid "$RP" --worker-pid "$SP" || RC=$?
echo
echo "| router memory (/proc/$RP/status) | MiB |"
echo "|---|---:|"
awk '/^VmHWM/ { printf "| VmHWM (peak resident) | %.1f |\n", $2 / 1024 }
     /^VmRSS/ { printf "| VmRSS (resident at the end) | %.1f |\n", $2 / 1024 }' "/proc/$RP/status"
exit "$RC"
