#!/usr/bin/env bash
# Soak benchmark (docs/reliability.md "Soak"): bench/soak.py against a loopback cluster of the
# build in BIN. Not part of CI (10 minutes).
#
# usage: bench/soak.sh
# Environment: BIN (default build/bin), STREAMS (64), DURATION (600 s), KILL_EVERY (60 s; 0 = no
# kills), WARMUP (60 s), CANCEL_RATE (0.1), SOAK_OUT (default: a new temporary folder: the logs
# and rss.csv stay there).
set -euo pipefail
cd "$(dirname "$0")/.."
export BIN=${BIN:-build/bin}
export SAMBAY_PYTHON_STUBS=${SAMBAY_PYTHON_STUBS:-$BIN/../python}
if [[ ! -f "$SAMBAY_PYTHON_STUBS/sambay/v1/generate_pb2.py" ]]; then
  echo "soak.sh: no Python stubs in $SAMBAY_PYTHON_STUBS (build the target python_stubs)" >&2
  exit 2
fi
exec /usr/bin/python3 bench/soak.py
