#!/usr/bin/env bash
# The newcomer's main job: install, build, fetch SmolLM2-135M-Instruct, and generate with it.
# Until the cluster lands this runs the single-process engine (`tpserve generate`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
MODELS=$(scripts/fetch-models.sh)
scripts/build.sh
exec build/tools/tpserve generate --model "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --prompt "${1:-What is the capital of France?}" --chat --max-tokens 64
