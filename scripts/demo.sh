#!/usr/bin/env bash
# The newcomer's main job: install, build, fetch SmolLM2-135M-Instruct, start a local
# tensor-parallel cluster serving it (`tpserve up`: one tpserve-coordinator + 2 tpserve-worker
# processes on loopback, Gloo between the ranks), ask it one chat question over gRPC, stop it.
# The single-process engine is still there: build/tools/tpserve generate --model ... --prompt ...
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODELS=$(scripts/fetch-models.sh)
scripts/build.sh
TPSERVE=build/tools/tpserve
QUESTION=${1:-What is the capital of France?}

# `tpserve up` prints the address on stdout once health says SERVING; its logs go to stderr.
coproc UP { exec "$TPSERVE" up --model "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" --tp 2 \
  --max-context 2048; }
UP_PID=$UP_PID
trap 'kill -INT "$UP_PID" 2>/dev/null || true; wait "$UP_PID" 2>/dev/null || true' EXIT
if ! read -r -t 600 ADDR <&"${UP[0]}"; then
  echo "demo: the local cluster did not become SERVING" >&2
  exit 1
fi
echo "demo: cluster serving on $ADDR; asking: $QUESTION" >&2
"$TPSERVE" generate --server "$ADDR" --chat --max-tokens 64 "$QUESTION"
