#!/usr/bin/env bash
# Multi-host test: the coordinator and 3 workers each in their own network namespace with their own
# address, joined by a bridge, started by deploy/docker/entrypoint.sh with the environment the
# rendered cpu-demo overlay gives their pods (tests/deploy/pod_env.py). They talk gRPC (control
# plane) and Gloo (data plane) across those addresses and serve a generation to a client in a
# fifth namespace. Then one worker's link is cut: the open stream must end cleanly (a gRPC status,
# not a hang) within its deadline while the other processes stay up and health says NOT_SERVING;
# the link returns: health is SERVING again and the same greedy generation gives the same text.
# Last, the client's own link is cut mid-stream, over gRPC and over HTTP: the coordinator drops it
# (keepalive; TCP_USER_TIMEOUT for HTTP) and aborts its request within seconds.
#
#   tests/deploy/multihost_test.sh BUILD_DIR        (as root; ctest: deploy_multihost)
#   TPSERVE_MULTIHOST_KEEP_LOGS=1 keeps the processes' logs; TPSERVE_MULTIHOST_DEADLINE (60 s) is
#   the cut stream's gRPC deadline; TPSERVE_MULTIHOST_CUT_RANK (2) the rank whose link is cut.
#
# Network: namespaces tpsPID-{sw,c,w0,w1,w2,cl}; the bridge lives in -sw, so the host's own
# namespace gets no interface and no route. Addresses come from one private /24 that exists only
# inside these namespaces (no default route there): traffic can reach nothing else. Everything is
# removed on exit, failure included. Exit 77 (ctest: skipped) when not root, without `ip netns`,
# or without the binaries / model; when only tpserve-coordinator is missing, the network and worker
# half runs first and the rest is skipped.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
cd "$ROOT"
SKIP=77
OVERLAY=cpu-demo
NET=10.199.77            # /24 inside the namespaces only
COORD_IP=$NET.10
CLIENT_IP=$NET.5
WORKERS=3
PROMPT="The capital of France is"
CUT_RANK=${TPSERVE_MULTIHOST_CUT_RANK:-2}
STREAM_DEADLINE=${TPSERVE_MULTIHOST_DEADLINE:-60}

passed=0
pass() { passed=$((passed + 1)); echo "multihost: ok   $*"; }
fail() { echo "multihost: FAIL $*"; show_logs; echo "multihost: $passed passed, 1 failed"; exit 1; }
skip() { echo "multihost: SKIP $*"; echo "multihost: $passed passed, 0 failed, 1 skipped"; exit $SKIP; }

[ "$(id -u)" -eq 0 ] || skip "needs root for ip netns"
command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || skip "no working 'ip netns'"
bin_of() { find "$BUILD" -name "$1" -type f -perm -u+x 2>/dev/null | head -1; }
WORKER_BIN=$(bin_of tpserve-worker)
COORD_BIN=$(bin_of tpserve-coordinator)
[ -n "$WORKER_BIN" ] || skip "tpserve-worker is not built in $BUILD"
MODEL_FILE=${TPSERVE_MODELS:-$HOME/.cache/tpserve/models}/SmolLM2-135M-Instruct.Q4_1.gguf
[ -s "$MODEL_FILE" ] || skip "no $MODEL_FILE (scripts/fetch-models.sh)"
DEPLOY_PY=$ROOT/.venv-deploy/bin/python   # renders the overlay (kubectl kustomize)
CLIENT_PY=$ROOT/.venv/bin/python          # grpcio client
[ -x "$DEPLOY_PY" ] || skip "no .venv-deploy (scripts/lint-deploy.sh --setup-only)"
[ -x "$CLIENT_PY" ] || skip "no .venv (scripts/setup.sh)"
[[ $CUT_RANK =~ ^[0-9]+$ ]] && [ "$CUT_RANK" -lt $WORKERS ] || { echo "TPSERVE_MULTIHOST_CUT_RANK must be < $WORKERS"; exit 2; }

TAG=tps$$
SW=${TAG}sw
LOGS=$(mktemp -d /tmp/tpserve-multihost.XXXXXX)
NAMESPACES=()
PIDS=()
declare -A PID_OF

show_logs() {
  for f in "$LOGS"/*.log; do
    [ -f "$f" ] || continue
    echo "---- $(basename "$f") (last 25 lines)"
    tail -n 25 "$f"
  done
}

cleanup() {
  local pid ns
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in 1 2 3 4 5 6; do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive -eq 1 ] || break
    sleep 0.5
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  # Anything else still inside our namespaces was started by this test (via ip netns exec).
  for ns in "${NAMESPACES[@]}"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ -n "${TPSERVE_MULTIHOST_KEEP_LOGS:-}" ]; then echo "multihost: logs in $LOGS"; else rm -rf "$LOGS"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
set -o errtrace
trap 'echo "multihost: FAIL command failed at line $LINENO: $BASH_COMMAND"; show_logs
      echo "multihost: $passed passed, 1 failed"; exit 1' ERR

# ---- network ----------------------------------------------------------------------------------
ip netns add "$SW"
NAMESPACES+=("$SW")
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up

# add_host NAME IP: namespace NAME with eth0 = IP/24 on the bridge.
add_host() {
  local ns=$TAG$1 ip_addr=$2 port=v$$$1
  ip netns add "$ns"
  NAMESPACES+=("$ns")
  ip link add "$port" type veth peer name eth0 netns "$ns"
  ip link set "$port" netns "$SW"
  ip -n "$SW" link set "$port" master br0 up
  ip -n "$ns" addr add "$ip_addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}
add_host c "$COORD_IP"
add_host cl "$CLIENT_IP"
for r in $(seq 0 $((WORKERS - 1))); do add_host "w$r" "$NET.$((11 + r))"; done
for ns in "${NAMESPACES[@]:1}"; do
  other=$(ip -n "$ns" route | grep -v "^$NET.0/24 dev eth0 " || true)
  [ -z "$other" ] || fail "namespace $ns has routes beyond its /24: $other"
done
pass "network: ${#NAMESPACES[@]} namespaces, bridge in $SW, only $NET.0/24 routed"

# ---- processes, started as the manifests start the pods ----------------------------------------
PATH_IN_POD=$(dirname "$COORD_BIN" 2>/dev/null || true):$(dirname "$WORKER_BIN"):/usr/local/bin:/usr/bin:/bin

# start NS LOG COMPONENT [pod_env args...]: entrypoint.sh with exactly the pod's environment,
# plus the flags in EXTRA_FLAGS (an array; what a test needs beyond the manifests).
EXTRA_FLAGS=()
start() {
  local ns=$1 log=$2 comp=$3 line sep=0
  shift 3
  local envs=() args=()
  while IFS= read -r line; do
    if [ "$line" = "--" ]; then sep=1; continue; fi
    if [ $sep -eq 0 ]; then envs+=("$line"); else args+=("$line"); fi
  done < <("$DEPLOY_PY" tests/deploy/pod_env.py "$OVERLAY" "$comp" "$@")
  args+=("${EXTRA_FLAGS[@]}")
  [ ${#envs[@]} -gt 0 ] || fail "pod_env.py gave no environment for $comp"
  echo "$comp in $ns: ${envs[*]} -- ${args[*]}" >"$LOGS/$log.log"
  # The image's own ENV (Dockerfile) plus the pod's; nothing inherited from this shell.
  ip netns exec "$ns" env -i PATH="$PATH_IN_POD" HOME=/tmp TPSERVE_CACHE=/tmp HOSTNAME="$log" \
    "${envs[@]}" "$ROOT/deploy/docker/entrypoint.sh" "${args[@]}" >>"$LOGS/$log.log" 2>&1 &
  PIDS+=($!)
  PID_OF[$log]=$!
}

for r in $(seq 0 $((WORKERS - 1))); do
  start "${TAG}w$r" "tpserve-worker-$r" worker --pod-ip "$NET.$((11 + r))" --pod-index "$r" \
    --set "COORDINATOR=$COORD_IP:50052"
done

# Each worker's control port answers from the coordinator's namespace, across the bridge.
tcp_open() {  # tcp_open NS HOST PORT
  ip netns exec "$1" timeout 2 bash -c "exec 3<>/dev/tcp/$2/$3" 2>/dev/null
}
for r in $(seq 0 $((WORKERS - 1))); do
  ok=0
  for _ in $(seq 1 60); do
    if tcp_open "${TAG}c" "$NET.$((11 + r))" 50061; then ok=1; break; fi
    sleep 0.5
  done
  [ $ok -eq 1 ] || fail "worker $r control port $NET.$((11 + r)):50061 not reachable from ${TAG}c"
done
pass "3 workers started from the $OVERLAY pod environment; control ports reachable across the bridge"

alive() { kill -0 "${PID_OF[$1]}" 2>/dev/null; }
for r in $(seq 0 $((WORKERS - 1))); do
  alive "tpserve-worker-$r" || fail "worker $r exited"
done

if [ -z "$COORD_BIN" ]; then
  skip "tpserve-coordinator is not built in $BUILD: generation, link cut and recovery not run"
fi

# ---- coordinator, health, generation -----------------------------------------------------------
# Keepalive pings every 2 s (default 30 s), so that the vanished client below is dropped soon.
EXTRA_FLAGS=(--keepalive-time-s 2 --keepalive-timeout-s 2)
start "${TAG}c" tpserve-coordinator coordinator --pod-ip "$COORD_IP" --set "MODEL=$MODEL_FILE"
EXTRA_FLAGS=()

client() { ip netns exec "${TAG}cl" "$CLIENT_PY" "$ROOT/tests/deploy/multihost_client.py" "$@"; }
GRPC=$COORD_IP:50051

client health "$GRPC" --timeout 240 >"$LOGS/client.log" 2>&1 ||
  fail "coordinator not SERVING on $GRPC within 240 s: $(tail -1 "$LOGS/client.log")"
pass "grpc.health.v1 SERVING on $GRPC (from ${TAG}cl)"

out=$(client generate "$GRPC" --prompt "$PROMPT" --max-tokens 16 --deadline 120) ||
  fail "generation before the cut: $out"
before=$("$CLIENT_PY" -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["tokens"]==16, r; print(r["text"])' "$out") ||
  fail "generation before the cut did not give 16 tokens: $out"
pass "generation across 4 namespaces: 16 tokens: $(printf %q "$before")"

# ---- every connection the cluster made is one the NetworkPolicies allow ----------------------------
# (with the Gloo pairs, the coordinator's channels and the client's still open after the stream)
roles=("${TAG}c=coordinator" "${TAG}cl=client")
for r in $(seq 0 $((WORKERS - 1))); do roles+=("${TAG}w$r=worker"); done
{
  for nr in "${roles[@]}"; do
    ns=${nr%%=*} role=${nr#*=}
    ip netns exec "$ns" ss -Htln | awk -v r="$role" '{print r, "listen", $4}'
    ip netns exec "$ns" ss -Htn state established | awk -v r="$role" '{print r, "estab", $3, $4}'
  done
} >"$LOGS/sockets.txt"
addr_roles=("$COORD_IP=coordinator" "$CLIENT_IP=client")
for r in $(seq 0 $((WORKERS - 1))); do addr_roles+=("$NET.$((11 + r))=worker"); done
"$CLIENT_PY" tests/deploy/check_flows.py "${addr_roles[@]}" <"$LOGS/sockets.txt" >"$LOGS/flows.txt" 2>&1 ||
  fail "a connection the NetworkPolicies would block: $(cat "$LOGS/flows.txt")"
grep -q "worker .* <-> worker" "$LOGS/flows.txt" || fail "no worker <-> worker (Gloo) connection seen: $(cat "$LOGS/flows.txt")"
cat "$LOGS/flows.txt"
pass "every TCP connection matches deploy/k8s/base/networkpolicy.yaml"

# ---- cut one worker's link in the middle of a stream ---------------------------------------------
progress=$LOGS/progress
: >"$progress"
client generate "$GRPC" --prompt "$PROMPT" --max-tokens 2000 --deadline "$STREAM_DEADLINE" \
  --progress "$progress" --expect UNAVAILABLE,DEADLINE_EXCEEDED,ABORTED >"$LOGS/cut.json" 2>>"$LOGS/client.log" &
CUT_CLIENT=$!
PIDS+=("$CUT_CLIENT")
streamed() { [ "$(tail -1 "$progress" 2>/dev/null || echo 0)" -ge 4 ] 2>/dev/null; }
wait_streaming() {  # wait_streaming WHAT: until the client's stream has given 4 tokens (60 s)
  for _ in $(seq 1 240); do streamed && return 0; sleep 0.25; done
  fail "$1 produced no tokens"
}
wait_streaming "the long stream"
cut_at=$(date +%s.%N)
ip -n "${TAG}w$CUT_RANK" link set eth0 down
echo "multihost: cut worker $CUT_RANK's link after $(tail -1 "$progress") tokens"

client health "$GRPC" --want NOT_SERVING --timeout "$STREAM_DEADLINE" >>"$LOGS/client.log" 2>&1 ||
  fail "health still SERVING $STREAM_DEADLINE s after a rank was cut off"
pass "health NOT_SERVING while rank $CUT_RANK is cut off"

wait "$CUT_CLIENT" || fail "the cut stream did not end with UNAVAILABLE/DEADLINE_EXCEEDED: $(cat "$LOGS/cut.json")"
ended=$(date +%s.%N)
elapsed=$("$CLIENT_PY" -c "print(round($ended - $cut_at, 1))")
"$CLIENT_PY" -c "import sys; sys.exit(0 if $ended - $cut_at <= $STREAM_DEADLINE + 5 else 1)" ||
  fail "the cut stream took $elapsed s (deadline $STREAM_DEADLINE s)"
pass "stream ended cleanly $elapsed s after the cut: $(cat "$LOGS/cut.json" | cut -c1-200)"

for p in tpserve-coordinator $(for r in $(seq 0 $((WORKERS - 1))); do echo "tpserve-worker-$r"; done); do
  [ "$p" = "tpserve-worker-$CUT_RANK" ] && continue
  alive "$p" || fail "$p exited after the cut"
done
pass "coordinator and the other workers survived the cut"

# ---- the link returns --------------------------------------------------------------------------
ip -n "${TAG}w$CUT_RANK" link set eth0 up
client health "$GRPC" --timeout 240 >>"$LOGS/client.log" 2>&1 ||
  fail "coordinator not SERVING again within 240 s of the link's return"
pass "SERVING again after the link returned"

out=$(client generate "$GRPC" --prompt "$PROMPT" --max-tokens 16 --deadline 120) ||
  fail "generation after recovery: $out"
after=$("$CLIENT_PY" -c 'import json,sys; r=json.loads(sys.argv[1]); print(r["text"])' "$out")
[ "$after" = "$before" ] || fail "greedy text changed after recovery: $(printf %q "$before") -> $(printf %q "$after")"
pass "the re-formed group generates the same greedy text"

# ---- a client that vanishes: its own link cut mid-stream ----------------------------------------
# No reset reaches the coordinator: its keepalive ping goes unanswered, the connection is closed
# and the request aborted, its KV blocks freed (seen from the coordinator's own namespace). With
# pings every 2 s that takes ~3 s; without keepalive, gRPC's own TCP_USER_TIMEOUT took ~21 s.
: >"$progress"
client generate "$GRPC" --prompt "$PROMPT" --max-tokens 2000 --deadline 300 --progress "$progress" \
  --expect UNAVAILABLE,DEADLINE_EXCEEDED,CANCELLED >"$LOGS/vanish.json" 2>>"$LOGS/client.log" &
VANISH_CLIENT=$!
PIDS+=("$VANISH_CLIENT")
wait_streaming "the client's stream"
ip -n "${TAG}cl" link set eth0 down
idle=$(ip netns exec "${TAG}c" "$CLIENT_PY" "$ROOT/tests/deploy/multihost_client.py" idle \
  127.0.0.1:50051 --timeout 10) || fail "the vanished client's request still runs 10 s after its link was cut: $idle"
pass "the vanished client's request aborted and its blocks freed: $idle"
kill "$VANISH_CLIENT" 2>/dev/null || true
ip -n "${TAG}cl" link set eth0 up

# The same over the OpenAI HTTP API: no ping there, but the data the stream sends goes
# unacknowledged and the connection is dropped after the keepalive timeout (TCP_USER_TIMEOUT).
: >"$progress"
client http-generate "$COORD_IP:8080" --prompt "$PROMPT" --max-tokens 2000 --progress "$progress" \
  >"$LOGS/vanish-http.json" 2>>"$LOGS/client.log" &
VANISH_CLIENT=$!
PIDS+=("$VANISH_CLIENT")
wait_streaming "the HTTP client's stream"
ip -n "${TAG}cl" link set eth0 down
idle=$(ip netns exec "${TAG}c" "$CLIENT_PY" "$ROOT/tests/deploy/multihost_client.py" idle \
  127.0.0.1:50051 --timeout 10) ||
  fail "the vanished HTTP client's request still runs 10 s after its link was cut: $idle"
pass "the vanished HTTP client's request aborted and its blocks freed: $idle"
kill "$VANISH_CLIENT" 2>/dev/null || true
ip -n "${TAG}cl" link set eth0 up

echo "multihost: $passed passed, 0 failed"
