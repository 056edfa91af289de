#!/usr/bin/env bash
# A sambay-serve cluster on loopback: sambay-router + N prefill + M decode sambay-worker
# processes (each its own process group), with the bundled tiny model by default.
#
#   deploy/local/cluster.sh [flags]                     start, print the address, wait for Ctrl-C
#   deploy/local/cluster.sh [flags] --run -- CMD ARGS   start, run CMD (with SAMBAY_ADDRESS set to
#                                                       the router), stop, exit with CMD's status
#
# Flags (environment variable in brackets):
#   --prefill N        prefill workers (SAMBAY_CLUSTER_PREFILL, 1)
#   --decode M         decode workers (SAMBAY_CLUSTER_DECODE, 1)
#   --both K           role-both workers, given to the router as --workers (SAMBAY_CLUSTER_BOTH, 0)
#   --model DIR        model directory (SAMBAY_CLUSTER_MODEL, BIN/../models/tiny)
#   --bin DIR          folder of sambay-router, sambay-worker, sambay-client (SAMBAY_CLUSTER_BIN,
#                      build/bin of this checkout)
#   --port P           router gRPC port, 0 = any free port (SAMBAY_CLUSTER_PORT, 50050)
#   --workdir DIR      logs and port files (SAMBAY_CLUSTER_WORKDIR, a new mktemp -d folder)
#   --timeout S        seconds to wait for each port file and for readiness (SAMBAY_CLUSTER_TIMEOUT,
#                      120)
#   --worker-args "A"  extra flags for every worker, split on spaces (SAMBAY_CLUSTER_WORKER_ARGS)
#   --router-args "A"  extra flags for the router, split on spaces (SAMBAY_CLUSTER_ROUTER_ARGS)
#   --restart          restart a worker that exits, on its port (SAMBAY_CLUSTER_RESTART=1)
#   --secure           TLS everywhere (SAMBAY_CLUSTER_SECURE=1): makes a throwaway CA and
#                      certificates (7 days) and an API key file in WORKDIR/tls with openssl;
#                      the router's public port wants TLS, a client certificate (mTLS) and the API
#                      key; router and workers talk mTLS. WORKDIR/client.env holds the client's
#                      settings (source it); --run exports them: SAMBAY_TLS_CA, SAMBAY_TLS_CERT,
#                      SAMBAY_TLS_KEY, SAMBAY_API_KEY. Plaintext is the default, and then --run
#                      removes any SAMBAY_TLS* variables from CMD's environment.
#
# Everything the script says goes to stderr; the --run command owns stdout. The router address is
# also written to WORKDIR/router.address. While it serves (without --run), a worker that exits is
# reported and the cluster keeps serving on the others (the router fails over); with --restart
# the worker is started again on the same port (at most once every 2 s), and the router
# re-admits it. The router exiting stops the cluster (exit 1). On exit, Ctrl-C, SIGTERM, SIGHUP
# or SIGQUIT every process group gets SIGTERM (router first), then SIGKILL after 15 s, and is
# reaped; a second signal while stopping sends SIGKILL at once, and the script still reaps every
# process before it exits. Exit codes: the command's status with --run; 130 on Ctrl-C; 143 on
# SIGTERM; 129 on SIGHUP; 131 on SIGQUIT; 1 when startup fails or the router exits; 2 for bad
# flags. See docs/client.md.
set -euo pipefail

readonly SCRIPT=cluster.sh
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

PREFILL="${SAMBAY_CLUSTER_PREFILL:-1}"
DECODE="${SAMBAY_CLUSTER_DECODE:-1}"
BOTH="${SAMBAY_CLUSTER_BOTH:-0}"
BIN="${SAMBAY_CLUSTER_BIN:-$REPO/build/bin}"
MODEL="${SAMBAY_CLUSTER_MODEL:-}"
PORT="${SAMBAY_CLUSTER_PORT:-50050}"
WORKDIR="${SAMBAY_CLUSTER_WORKDIR:-}"
TIMEOUT="${SAMBAY_CLUSTER_TIMEOUT:-120}"
WORKER_ARGS="${SAMBAY_CLUSTER_WORKER_ARGS:-}"
ROUTER_ARGS="${SAMBAY_CLUSTER_ROUTER_ARGS:-}"
RESTART="${SAMBAY_CLUSTER_RESTART:-0}"
SECURE="${SAMBAY_CLUSTER_SECURE:-0}"
readonly HOST=127.0.0.1
readonly STOP_TIMEOUT=15
RUN=0
CMD=()

say() { echo "$SCRIPT: $*" >&2; }
die() {
  echo "$SCRIPT: error: $*" >&2
  exit 1
}
usage_error() {
  echo "$SCRIPT: error: $*" >&2
  exit 2
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

need_value() { [[ $# -ge 2 ]] || usage_error "$1: missing value"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --prefill) need_value "$@"; PREFILL="$2"; shift 2 ;;
    --decode) need_value "$@"; DECODE="$2"; shift 2 ;;
    --both) need_value "$@"; BOTH="$2"; shift 2 ;;
    --model) need_value "$@"; MODEL="$2"; shift 2 ;;
    --bin) need_value "$@"; BIN="$2"; shift 2 ;;
    --port) need_value "$@"; PORT="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --timeout) need_value "$@"; TIMEOUT="$2"; shift 2 ;;
    --worker-args) need_value "$@"; WORKER_ARGS="$2"; shift 2 ;;
    --router-args) need_value "$@"; ROUTER_ARGS="$2"; shift 2 ;;
    --restart) RESTART=1; shift ;;
    --secure) SECURE=1; shift ;;
    --prefill=* | --decode=* | --both=* | --model=* | --bin=* | --port=* | --workdir=* | \
      --timeout=* | --worker-args=* | --router-args=*)
      set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
    --run)
      RUN=1
      shift
      [[ $# -gt 0 && "$1" == "--" ]] && shift
      [[ $# -gt 0 ]] || usage_error "--run: give the command after --run -- "
      CMD=("$@")
      break ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument \"$1\" (--help lists the flags)" ;;
  esac
done

is_count() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_count "$PREFILL" || usage_error "--prefill: \"$PREFILL\" is not a count"
is_count "$DECODE" || usage_error "--decode: \"$DECODE\" is not a count"
is_count "$BOTH" || usage_error "--both: \"$BOTH\" is not a count"
if ! is_count "$PORT" || ((PORT > 65535)); then usage_error "--port: \"$PORT\" is not a port"; fi
[[ "$RESTART" == 0 || "$RESTART" == 1 ]] || usage_error "SAMBAY_CLUSTER_RESTART: \"$RESTART\" is not 0 or 1"
[[ "$SECURE" == 0 || "$SECURE" == 1 ]] || usage_error "SAMBAY_CLUSTER_SECURE: \"$SECURE\" is not 0 or 1"
if ! is_count "$TIMEOUT" || ((TIMEOUT == 0)); then
  usage_error "--timeout: \"$TIMEOUT\" is not a number of seconds"
fi
((PREFILL + BOTH >= 1)) || usage_error "--prefill/--both: at least one prefill-capable worker"
((DECODE + BOTH >= 1)) || usage_error "--decode/--both: at least one decode-capable worker"

BIN="$(cd "$BIN" 2>/dev/null && pwd)" || die "--bin: $BIN is not a folder (build first: bash scripts/build.sh)"
for tool in sambay-router sambay-worker sambay-client; do
  [[ -x "$BIN/$tool" ]] || die "$BIN/$tool: not found or not executable (build it, or pass --bin DIR)"
done
[[ -n "$MODEL" ]] || MODEL="$BIN/../models/tiny"
[[ -f "$MODEL/config.json" ]] || die "--model: $MODEL/config.json not found"
MODEL="$(cd "$MODEL" && pwd)"
if [[ -z "$WORKDIR" ]]; then
  WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/sambay-cluster.XXXXXX")"
else
  mkdir -p "$WORKDIR" || die "--workdir: cannot create $WORKDIR"
fi
WORKDIR="$(cd "$WORKDIR" && pwd)"
rm -f "$WORKDIR/router.address"
read -r -a WORKER_EXTRA <<<"$WORKER_ARGS"
read -r -a ROUTER_EXTRA <<<"$ROUTER_ARGS"

# --secure: a throwaway CA and certificates in WORKDIR/tls (never in the checkout), ECDSA P-256,
# valid TLS_DAYS days, and an API key file; keys and the key file are readable by the user only.
readonly TLS_DAYS=7
readonly INTERNAL_NAME=sambay-internal # the name every internal certificate carries (DNS SAN)
TLS_DIR="$WORKDIR/tls"
ossl() { # openssl ARGS..., its output in TLS_DIR/openssl.log; dies when it fails
  openssl "$@" >>"$TLS_DIR/openssl.log" 2>&1 && return
  tail -n 5 "$TLS_DIR/openssl.log" >&2
  die "--secure: openssl $1 failed (log: $TLS_DIR/openssl.log)"
}
ec_key() { ossl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
leaf_cert() { # NAME CN EXTENSIONS: NAME.key and NAME.pem signed by the CA
  local name="$1" cn="$2" ext="$3"
  ec_key "$TLS_DIR/$name.key"
  ossl req -new -key "$TLS_DIR/$name.key" -subj "/CN=$cn" -out "$TLS_DIR/$name.csr"
  printf '%b\n' "$ext" >"$TLS_DIR/$name.ext"
  ossl x509 -req -in "$TLS_DIR/$name.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
    -CAcreateserial -days "$TLS_DAYS" -sha256 -extfile "$TLS_DIR/$name.ext" -out "$TLS_DIR/$name.pem"
  rm -f "$TLS_DIR/$name.csr" "$TLS_DIR/$name.ext"
}
make_tls() {
  command -v openssl >/dev/null 2>&1 || die "--secure: openssl not found (apt-get install openssl)"
  rm -rf "$TLS_DIR"
  (umask 077 && mkdir "$TLS_DIR") || die "--secure: cannot create $TLS_DIR"
  (
    local key usage="basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature"
    umask 077
    ec_key "$TLS_DIR/ca.key"
    ossl req -x509 -new -key "$TLS_DIR/ca.key" -subj "/CN=sambay local CA" -days "$TLS_DAYS" \
      -sha256 -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$TLS_DIR/ca.pem"
    leaf_cert server localhost "$usage\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost"
    leaf_cert internal "$INTERNAL_NAME" \
      "$usage\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:$INTERNAL_NAME"
    leaf_cert client sambay-client "$usage\nextendedKeyUsage=clientAuth"
    key="$(openssl rand -hex 24)" || die "--secure: openssl rand failed"
    echo "$key local" >"$TLS_DIR/api-keys"
  ) || exit 1
  API_KEY="$(cut -d' ' -f1 "$TLS_DIR/api-keys")"
}
INTERNAL_TLS=()
PUBLIC_TLS=()
CLIENT_TLS=()
API_KEY=""
if ((SECURE)); then
  make_tls
  INTERNAL_TLS=(--internal-tls-cert "$TLS_DIR/internal.pem" --internal-tls-key "$TLS_DIR/internal.key"
    --internal-tls-ca "$TLS_DIR/ca.pem")
  PUBLIC_TLS=(--tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key"
    --tls-client-ca "$TLS_DIR/ca.pem" --api-keys-file "$TLS_DIR/api-keys")
  CLIENT_TLS=(--tls-ca "$TLS_DIR/ca.pem" --tls-cert "$TLS_DIR/client.pem" --tls-key "$TLS_DIR/client.key")
  say "--secure: CA, certificates (valid $TLS_DAYS days) and the API key file in $TLS_DIR"
fi
# The clients' TLS variables (common/client_flags.h) are removed from what this script starts:
# the servers (SAMBAY_TLS_CERT and SAMBAY_TLS_KEY are also the router's --tls-cert/--tls-key),
# the readiness probe and the --run command, which gets them set with --secure.
CLIENT_UNSET=(-u SAMBAY_TLS -u SAMBAY_TLS_CA -u SAMBAY_TLS_CERT -u SAMBAY_TLS_KEY -u SAMBAY_TLS_SERVER_NAME)

# Every process is the leader of its own process group (setsid), so stopping one stops all it
# started and Ctrl-C on the terminal reaches this script only.
PIDS=()
NAMES=()
SETSID=()
command -v setsid >/dev/null 2>&1 && SETSID=(setsid)

# alive PID: running and not a zombie.
alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# Signals: the first one exits (through cleanup); one that comes while cleanup runs makes it
# SIGKILL what is left at once (FORCE), and cleanup still reaps everything before exiting.
STOPPING=0
FORCE=0
on_signal() { # EXIT_CODE
  if ((STOPPING)); then
    FORCE=1
    return
  fi
  exit "$1"
}

# stop_group PID...: SIGTERM to each group, wait up to STOP_TIMEOUT (or until FORCE), then
# SIGKILL; reap.
stop_group() {
  local pid deadline=$((SECONDS + STOP_TIMEOUT)) left
  for pid in "$@"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  while true; do
    left=0
    for pid in "$@"; do alive "$pid" && left=1; done
    ((left == 0 || SECONDS >= deadline || FORCE)) && break
    sleep 0.1
  done
  for pid in "$@"; do
    if alive "$pid" && ((FORCE)); then
      say "pid $pid: SIGKILL (second signal)"
    elif alive "$pid"; then
      say "pid $pid did not stop in ${STOP_TIMEOUT}s; SIGKILL"
    fi
    kill -KILL -- "-$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

ROUTER_PID=""
SLEEP_PID=""
cleanup() {
  local rc=$?
  STOPPING=1 # from here on a signal only sets FORCE (the traps stay)
  trap - EXIT
  set +e
  [[ -n "$SLEEP_PID" ]] && kill "$SLEEP_PID" 2>/dev/null
  local pid workers=()
  for pid in "${PIDS[@]}"; do [[ -n "$pid" && "$pid" != "$ROUTER_PID" ]] && workers+=("$pid"); done
  if [[ -n "$ROUTER_PID" ]] || ((${#workers[@]} > 0)); then
    say "stopping $((${#workers[@]} + (${#ROUTER_PID} > 0))) processes (logs in $WORKDIR)"
    [[ -n "$ROUTER_PID" ]] && stop_group "$ROUTER_PID"
    ((${#workers[@]} > 0)) && stop_group "${workers[@]}"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP
trap 'on_signal 131' QUIT

# launch NAME BINARY ARGS...: stdout/stderr to WORKDIR/NAME.{stdout,log} (appended), port file
# NAME.port; sets LAUNCHED to its pid.
declare -A STARTED_AT=()
launch() {
  local name="$1"
  shift
  rm -f "$WORKDIR/$name.port"
  "${SETSID[@]}" env "${CLIENT_UNSET[@]}" "$@" --port-file "$WORKDIR/$name.port" \
    >>"$WORKDIR/$name.stdout" 2>>"$WORKDIR/$name.log" </dev/null &
  LAUNCHED=$!
  STARTED_AT[$name]=$SECONDS
}
# start NAME BINARY ARGS...: launch, and track it in PIDS / NAMES.
start() {
  : >"$WORKDIR/$1.stdout"
  : >"$WORKDIR/$1.log"
  launch "$@"
  PIDS+=("$LAUNCHED")
  NAMES+=("$1")
}

# wait_port_file NAME PID: waits for NAME.port; prints its grpc_port.
wait_port_file() {
  local name="$1" pid="$2" file="$WORKDIR/$1.port" deadline=$((SECONDS + TIMEOUT)) port
  until [[ -s "$file" ]]; do
    if ! alive "$pid"; then
      echo "$SCRIPT: error: $name exited before serving; last lines of $WORKDIR/$name.log:" >&2
      tail -n 20 "$WORKDIR/$name.log" >&2 || true
      exit 1
    fi
    ((SECONDS < deadline)) || die "$name: no port file after ${TIMEOUT}s (log: $WORKDIR/$name.log)"
    sleep 0.1
  done
  port="$(grep -o '"grpc_port"[[:space:]]*:[[:space:]]*[0-9]*' "$file" | grep -o '[0-9]*$')" ||
    die "$name: no grpc_port in $file: $(cat "$file")"
  echo "$port"
}

worker_cmd() { # ROLE PORT -> WORKER_CMD
  WORKER_CMD=("$BIN/sambay-worker" --model "$MODEL" --role "$1" --host "$HOST" --port "$2"
    --metrics-port 0 "${INTERNAL_TLS[@]}" "${WORKER_EXTRA[@]}")
}

worker_list() { # ROLE COUNT -> starts them; sets LIST to their names
  local role="$1" n="$2" i
  LIST=()
  for ((i = 0; i < n; i++)); do
    worker_cmd "$role" 0
    start "$role-$i" "${WORKER_CMD[@]}"
    LIST+=("$role-$i")
  done
}

join_by_comma() { local IFS=,; echo "$*"; }

say "starting $PREFILL prefill + $DECODE decode + $BOTH both workers ($MODEL); logs in $WORKDIR"
worker_list prefill "$PREFILL"; PREFILL_NAMES=("${LIST[@]}")
worker_list decode "$DECODE"; DECODE_NAMES=("${LIST[@]}")
worker_list both "$BOTH"; BOTH_NAMES=("${LIST[@]}")

address_of() { # NAME -> host:port once its port file is there
  local name="$1" i port
  for i in "${!NAMES[@]}"; do
    if [[ "${NAMES[$i]}" == "$name" ]]; then
      port="$(wait_port_file "$name" "${PIDS[$i]}")" || exit 1
      echo "$HOST:$port"
      return
    fi
  done
  die "internal: no process $name"
}
PREFILL_ADDRS=(); DECODE_ADDRS=(); BOTH_ADDRS=()
for n in "${PREFILL_NAMES[@]}"; do a="$(address_of "$n")" || exit 1; PREFILL_ADDRS+=("$a"); done
for n in "${DECODE_NAMES[@]}"; do a="$(address_of "$n")" || exit 1; DECODE_ADDRS+=("$a"); done
for n in "${BOTH_NAMES[@]}"; do a="$(address_of "$n")" || exit 1; BOTH_ADDRS+=("$a"); done
declare -A PORT_OF=() # worker name -> its gRPC port (a restart reuses it: the router knows it)
ALL_NAMES=("${PREFILL_NAMES[@]}" "${DECODE_NAMES[@]}" "${BOTH_NAMES[@]}")
ALL_ADDRS=("${PREFILL_ADDRS[@]}" "${DECODE_ADDRS[@]}" "${BOTH_ADDRS[@]}")
for i in "${!ALL_NAMES[@]}"; do PORT_OF[${ALL_NAMES[$i]}]="${ALL_ADDRS[$i]##*:}"; done

# usage.workers on: a local cluster has no topology to hide, and it shows where each request ran.
ROUTER_FLAGS=(--model "$MODEL" --host "$HOST" --port "$PORT" --metrics-port 0 --usage-workers true)
((${#PREFILL_ADDRS[@]} > 0)) && ROUTER_FLAGS+=(--prefill-workers "$(join_by_comma "${PREFILL_ADDRS[@]}")")
((${#DECODE_ADDRS[@]} > 0)) && ROUTER_FLAGS+=(--decode-workers "$(join_by_comma "${DECODE_ADDRS[@]}")")
((${#BOTH_ADDRS[@]} > 0)) && ROUTER_FLAGS+=(--workers "$(join_by_comma "${BOTH_ADDRS[@]}")")
start router "$BIN/sambay-router" "${ROUTER_FLAGS[@]}" "${PUBLIC_TLS[@]}" "${INTERNAL_TLS[@]}" \
  "${ROUTER_EXTRA[@]}"
ROUTER_PID="${PIDS[-1]}"
ROUTER_PORT="$(wait_port_file router "$ROUTER_PID")" || exit 1
ADDRESS="$HOST:$ROUTER_PORT"

# Readiness: health service sambay.v1.Generation SERVING (one prefill- and one decode-capable
# worker healthy).
PROBE=(env "${CLIENT_UNSET[@]}" "$BIN/sambay-client" --address "$ADDRESS" "${CLIENT_TLS[@]}" --health)
deadline=$((SECONDS + TIMEOUT))
until "${PROBE[@]}" --quiet --timeout 2 2>/dev/null; do
  if ! alive "$ROUTER_PID"; then
    echo "$SCRIPT: error: the router exited; last lines of $WORKDIR/router.log:" >&2
    tail -n 20 "$WORKDIR/router.log" >&2 || true
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    "${PROBE[@]}" --timeout 2 >&2 || true
    die "the router at $ADDRESS is not ready after ${TIMEOUT}s (log: $WORKDIR/router.log)"
  fi
  sleep 0.2
done
# What a client needs: the address, and with --secure the TLS files and the API key (the key is
# never printed; client.env is readable by the user only).
CLIENT_ENV=(SAMBAY_ADDRESS="$ADDRESS")
if ((SECURE)); then
  CLIENT_ENV+=(SAMBAY_TLS_CA="$TLS_DIR/ca.pem" SAMBAY_TLS_CERT="$TLS_DIR/client.pem"
    SAMBAY_TLS_KEY="$TLS_DIR/client.key" SAMBAY_API_KEY="$API_KEY")
fi
(
  umask 077
  for v in "${CLIENT_ENV[@]}"; do printf 'export %s=%q\n' "${v%%=*}" "${v#*=}"; done >"$WORKDIR/client.env"
)
echo "$ADDRESS" >"$WORKDIR/router.address"
say "router ready at $ADDRESS (prefill: ${PREFILL_ADDRS[*]:-none}; decode: ${DECODE_ADDRS[*]:-none}; both: ${BOTH_ADDRS[*]:-none}); logs in $WORKDIR"
((SECURE)) && say "TLS + client certificate + API key; for a client: source $WORKDIR/client.env"

if ((RUN)); then
  rc=0
  env "${CLIENT_UNSET[@]}" "${CLIENT_ENV[@]}" SAMBAY_CLUSTER_WORKDIR="$WORKDIR" "${CMD[@]}" || rc=$?
  exit "$rc"
fi

# worker_exited INDEX: reaps the worker; restarts it with --restart, else drops it.
worker_exited() {
  local i="$1" name="${NAMES[$1]}" status=0 started
  wait "${PIDS[$i]}" 2>/dev/null || status=$?
  if ((!RESTART)); then
    say "$name exited (status $status; log: $WORKDIR/$name.log); serving on the other workers"
    PIDS[i]=""
    return
  fi
  # A worker that keeps failing is restarted at most once every 2 s.
  started="${STARTED_AT[$name]}"
  ((SECONDS - started >= 2)) || sleep 2
  say "$name exited (status $status; log: $WORKDIR/$name.log); restarting it on port ${PORT_OF[$name]}"
  worker_cmd "${name%-*}" "${PORT_OF[$name]}"
  launch "$name" "${WORKER_CMD[@]}"
  PIDS[i]="$LAUNCHED"
}

say "press Ctrl-C to stop"
while true; do
  for i in "${!PIDS[@]}"; do
    [[ -z "${PIDS[$i]}" ]] || alive "${PIDS[$i]}" && continue
    [[ "${PIDS[$i]}" == "$ROUTER_PID" ]] &&
      die "the router exited unexpectedly (log: $WORKDIR/router.log); stopping the cluster"
    worker_exited "$i"
  done
  sleep 1 &
  SLEEP_PID=$!
  wait "$SLEEP_PID" || true
  SLEEP_PID=""
done
