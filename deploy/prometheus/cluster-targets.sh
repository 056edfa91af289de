#!/usr/bin/env bash
# Writes Prometheus file_sd target files for a cluster started by deploy/local/cluster.sh, from
# the port files in its work folder (router.port, prefill-N.port, decode-N.port, both-N.port):
#
#   deploy/prometheus/cluster-targets.sh WORKDIR [OUTDIR]
#
# OUTDIR (default: deploy/prometheus/targets, git-ignored) gets router.json (job sambay-router)
# and workers.json (job sambay-worker; labels role and name), each written atomically, which
# deploy/prometheus/prometheus.yml reads. Start the cluster with --workdir WORKDIR. Exit codes:
# 0 written; 1 no port files; 2 bad arguments.
set -euo pipefail
readonly SCRIPT=cluster-targets.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $# -lt 1 || $# -gt 2 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
WORKDIR="$1"
OUTDIR="${2:-$HERE/targets}"
[[ -d "$WORKDIR" ]] || { echo "$SCRIPT: error: $WORKDIR is not a folder" >&2; exit 2; }
mkdir -p "$OUTDIR"

metrics_port() { # PORT_FILE -> the metrics_port number
  grep -o '"metrics_port"[[:space:]]*:[[:space:]]*[0-9]*' "$1" | grep -o '[0-9]*$'
}

router=()
workers=()
shopt -s nullglob
for f in "$WORKDIR"/*.port; do
  name="$(basename "$f" .port)"
  port="$(metrics_port "$f")" || { echo "$SCRIPT: error: no metrics_port in $f" >&2; exit 1; }
  if [[ "$name" == router ]]; then
    router+=("{\"targets\": [\"127.0.0.1:$port\"], \"labels\": {\"name\": \"$name\"}}")
  else
    workers+=("{\"targets\": [\"127.0.0.1:$port\"], \"labels\": {\"name\": \"$name\", \"role\": \"${name%%-*}\"}}")
  fi
done
((${#router[@]} + ${#workers[@]} > 0)) || { echo "$SCRIPT: error: no *.port files in $WORKDIR" >&2; exit 1; }

write() { # FILE ENTRIES...: a JSON array, written to FILE.tmp then renamed
  local file="$1" first=1
  shift
  {
    echo "["
    for e in "$@"; do
      ((first)) || echo ","
      printf '  %s' "$e"
      first=0
    done
    echo
    echo "]"
  } >"$file.tmp"
  mv "$file.tmp" "$file"
}
write "$OUTDIR/router.json" "${router[@]}"
write "$OUTDIR/workers.json" "${workers[@]}"
echo "$SCRIPT: ${#router[@]} router and ${#workers[@]} worker targets in $OUTDIR" >&2
