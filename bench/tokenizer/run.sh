#!/usr/bin/env bash
# Encode throughput, single thread, tpserve vs Hugging Face `tokenizers`, same corpus, same run.
#   bench/tokenizer/run.sh [build-dir] [seconds]
# Needs the bench binary (ninja -C <build-dir> tpserve_tokenizer_bench) and .venv-ref.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
SECS=${2:-3}
MODELS=${TPSERVE_MODELS:-$HOME/.cache/tpserve/models}
PY=${TPSERVE_REF_PYTHON:-.venv-ref/bin/python}
CORPUS=tests/data/golden/tokenizer/corpus.jsonl
G=tests/data/golden/tokenizer
for tok in "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/all-MiniLM-L6-v2/tokenizer.json" \
           "$G/llama3_bpe/tokenizer.json" "$G/qwen2_bpe/tokenizer.json" "$G/sp_bpe/tokenizer.json"; do
  [ -e "$tok" ] || { echo "skip $tok (missing)"; continue; }
  ours=$("$BUILD/bench/tokenizer/tpserve_tokenizer_bench" "$tok" "$CORPUS" "$SECS")
  theirs=$("$PY" bench/tokenizer/hf_bench.py "$tok" "$CORPUS" "$SECS" 2>/dev/null | tail -1)
  echo "$ours"
  echo "$theirs"
  a=$(echo "$ours" | sed -E 's/.*: ([0-9.]+) MB\/s.*/\1/')
  b=$(echo "$theirs" | sed -E 's/.*: ([0-9.]+) MB\/s.*/\1/')
  echo "ratio tpserve/tokenizers: $(echo "scale=2; $a / $b" | bc)"
done
