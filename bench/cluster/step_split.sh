#!/usr/bin/env bash
# Time per decode step split into worker compute, collectives and control plane (plan fan-out +
# results), at several TP degrees, on a real local cluster (`tpserve up`: coordinator + N workers on
# loopback, Gloo between ranks). The split is what the coordinator measures and logs at shutdown.
#
#   bench/cluster/step_split.sh [MODEL] [TOKENS] [TP...]
#   default: SmolLM2-135M-Instruct Q4_1 from the model cache, 64 tokens, TP 1 2 3
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${TPSERVE_BUILD_DIR:-build}
MODEL=${1:-${TPSERVE_MODELS:-$HOME/.cache/tpserve/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
TOKENS=${2:-64}
shift $(( $# > 2 ? 2 : $# )) || true
TPS=("$@"); [ ${#TPS[@]} -gt 0 ] || TPS=(1 2 3)
TPSERVE=$BUILD/tools/tpserve
PROMPT="The history of the printing press"

rows=()
for tp in "${TPS[@]}"; do
  log=$(mktemp)
  coproc UP { exec "$TPSERVE" up --model "$MODEL" --tp "$tp" --max-context 2048 2>"$log"; }
  up_pid=$UP_PID
  if ! read -r -t 600 addr <&"${UP[0]}"; then
    echo "step_split: TP=$tp cluster did not become SERVING; log: $log" >&2; kill -INT "$up_pid" || true
    exit 1
  fi
  "$TPSERVE" generate --server "$addr" --max-tokens "$TOKENS" --ignore-eos "$PROMPT" >/dev/null 2>&1
  kill -INT "$up_pid"; wait "$up_pid" || true
  line=$(grep -o 'total: .*' "$log" | tail -1)
  [ -n "$line" ] || { echo "step_split: no 'total:' line for TP=$tp; log: $log" >&2; exit 1; }
  # total: S steps, T tokens generated, F failed steps; mean step X ms = worker compute A + collectives B + control plane C
  read -r steps step compute coll ctrl < <(echo "$line" | sed -E \
    's/total: ([0-9]+) steps.*mean step ([0-9.]+) ms = worker compute ([0-9.]+) \+ collectives ([0-9.]+) \+ control plane ([0-9.]+).*/\1 \2 \3 \4 \5/')
  rows+=("$(printf '| %2s | %5s | %8.2f ms | %8.2f ms | %8.2f ms | %8.2f ms | %5.1f%% |' "$tp" "$steps" \
    "$step" "$compute" "$coll" "$ctrl" "$(awk -v c="$ctrl" -v s="$step" 'BEGIN{print 100*c/s}')")")
  rm -f "$log"
done
echo "model: $(basename "$MODEL"), $TOKENS greedy tokens, $(nproc) CPUs"
echo "| TP | steps | mean step   | compute     | collectives | control     | ctrl share |"
echo "|----|-------|-------------|-------------|-------------|-------------|------------|"
printf '%s\n' "${rows[@]}"
