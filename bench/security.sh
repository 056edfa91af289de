#!/usr/bin/env bash
# The cost of TLS (docs/benchmarks.md, "TLS and mTLS"). Three comparisons, each plaintext first,
# then secured, on the same machine in one run:
#   1. end to end: deploy/local/cluster.sh (router + 1 prefill + 1 decode worker, the tiny model)
#      and sambay-bench at CONCURRENCY streams, plaintext versus --secure (public mTLS + an API
#      key + internal mTLS between router and workers and for the state push);
#   2. the router's own cost per token: sambay-router in front of sambay-token-source (a
#      synthetic worker, no model), plaintext versus TLS on the public port (sambay-bench checks
#      the server against the CA; the API key file is on as well);
#   3. the state handoff: sambay-handoff-bench (a real decode worker, the push over loopback)
#      without and with --internal-tls-*.
# Certificates are throwaway ones that cluster.sh --secure makes in the work folder.
#
# usage: bench/security.sh [CONCURRENCY=64]
# Environment: BIN (default build/bin), DURATION (default 20 s per run), GEN_LEN (default 256),
#   HANDOFF_MODEL (default BIN/../models/tiny), HANDOFF_TOKENS (default 2048,32768), REPS (5).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin}
CONC=${1:-64}
DURATION=${DURATION:-20}
GEN_LEN=${GEN_LEN:-256}
DIR=$(mktemp -d)
cleanup() { kill "${RP:-}" "${SP:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
port() { /usr/bin/python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['grpc_port'])" "$1"; }
wait_file() { for _ in $(seq 200); do [ -s "$1" ] && return 0; sleep 0.05; done; echo "no $1" >&2; exit 1; }
BENCH=(--concurrency "$CONC" --duration "$DURATION" --warmup "$CONC" --prompt-len 16
  --gen-len "$GEN_LEN")

echo "## 1. End to end: cluster.sh, tiny model, $CONC streams"
for mode in plaintext secure; do
  echo
  echo "### $mode"
  SECURE=()
  [ "$mode" = secure ] && SECURE=(--secure)
  deploy/local/cluster.sh --bin "$BIN" --port 0 --workdir "$DIR/$mode" "${SECURE[@]}" --run -- \
    sh -c "exec \"$BIN/sambay-bench\" --target router --address \"\$SAMBAY_ADDRESS\" $(printf '%q ' "${BENCH[@]}")"
done
TLS="$DIR/secure/tls"

echo
echo "## 2. Router cost per token: sambay-token-source (1 token / 1 ms per stream), $CONC streams"
for mode in plaintext tls; do
  echo
  echo "### $mode"
  "$BIN/sambay-token-source" --step-us 1000 --port-file "$DIR/source-$mode.port" \
    2>"$DIR/source-$mode.log" &
  SP=$!
  wait_file "$DIR/source-$mode.port"
  ROUTER_TLS=()
  CLIENT_TLS=()
  if [ "$mode" = tls ]; then
    ROUTER_TLS=(--tls-cert "$TLS/server.pem" --tls-key "$TLS/server.key"
      --api-keys-file "$TLS/api-keys")
    CLIENT_TLS=(--tls-ca "$TLS/ca.pem" --api-key "$(cut -d' ' -f1 "$TLS/api-keys")")
  fi
  "$BIN/sambay-router" --model "$BIN/../models/tiny" --port 0 --metrics-port 0 \
    --port-file "$DIR/router-$mode.port" --workers "127.0.0.1:$(port "$DIR/source-$mode.port")" \
    --log-level warning "${ROUTER_TLS[@]}" 2>"$DIR/router-$mode.log" &
  RP=$!
  wait_file "$DIR/router-$mode.port"
  sleep 1.5  # the router's first probe of the source
  env -u SAMBAY_TLS_CA -u SAMBAY_API_KEY "$BIN/sambay-bench" --target router \
    --address "127.0.0.1:$(port "$DIR/router-$mode.port")" "${CLIENT_TLS[@]}" "${BENCH[@]}" \
    --router-pid "$RP" --worker-pid "$SP"
  kill "$RP" "$SP"
  wait "$RP" "$SP" 2>/dev/null || true
  RP="" SP=""
done

echo
echo "## 3. State handoff: sambay-handoff-bench"
for mode in plaintext mtls; do
  echo
  echo "### $mode"
  MTLS=()
  [ "$mode" = mtls ] && MTLS=(--internal_tls_cert "$TLS/internal.pem"
    --internal_tls_key "$TLS/internal.key" --internal_tls_ca "$TLS/ca.pem")
  "$BIN/sambay-handoff-bench" --model "${HANDOFF_MODEL:-$BIN/../models/tiny}" \
    --tokens "${HANDOFF_TOKENS:-2048,32768}" --reps "${REPS:-5}" "${MTLS[@]}" || true
done
