#!/usr/bin/env bash
# Aggregate serving throughput at 1, 8 and 32 concurrent streams on a real local cluster
# (`tpserve up`: coordinator + N CPU workers on loopback) measured with `tpserve bench`, and how it
# scales: output tokens/s, ratio to one stream, TTFT and inter-token latency p50/p99, KV use and
# preemptions, plus the server's mean step time and tokens per step (from GetServerStats) that
# explain the scaling.
#
#   bench/cluster/serving.sh [--tp N] [--model PATH] [--input-len L] [--output-len L]
#                            [--streams "1 8 32"] [--waves W] [--dtype D] [--kv-cache-dtype K]
#                            [--temperature T] [--out DIR]
#   defaults: SmolLM2-135M-Instruct Q4_1 from the model cache, TP=1, 64-token prompts, 128-token
#   outputs (ignore_eos), greedy (--temperature T > 0: seeded sampling at T), the workers'
#   default dtype (--dtype: int8x2, int8, fp32) and KV cache dtype (--kv-cache-dtype: fp16, fp32,
#   int8); each level runs one warm-up wave, then W waves
#   (W x streams requests, at least 4) measured; JSON per level in DIR (default: a fresh folder
#   under /tmp).
#   Also reports the CPU time the cluster's processes got during each level (/proc), since the
#   machine is shared: output tokens per cluster CPU-second scales independently of other load.
#   Env: TPSERVE_BUILD_DIR (default build), TPSERVE_MODELS.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${TPSERVE_BUILD_DIR:-build}
TPSERVE=$BUILD/tools/tpserve
MODEL=${TPSERVE_MODELS:-$HOME/.cache/tpserve/models}/SmolLM2-135M-Instruct.Q4_1.gguf
TP=1 INPUT=64 OUTPUT=128 STREAMS="1 8 32" WAVES=2 OUT="" DTYPE="" KV_DTYPE="" TEMP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tp) TP=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    --kv-cache-dtype) KV_DTYPE=$2; shift 2 ;;
    --temperature) TEMP=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --input-len) INPUT=$2; shift 2 ;;
    --output-len) OUTPUT=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --waves) WAVES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "serving.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$TPSERVE" ] || { echo "serving.sh: no $TPSERVE (build it, or set TPSERVE_BUILD_DIR)" >&2; exit 2; }
[ -e "$MODEL" ] || { echo "serving.sh: no model at $MODEL" >&2; exit 2; }
OUT=${OUT:-$(mktemp -d /tmp/tpserve-serving.XXXXXX)}
mkdir -p "$OUT"
LOG=$OUT/cluster.log

UP_ARGS=(--model "$MODEL" --tp "$TP")
[ -n "$DTYPE" ] && UP_ARGS+=(--dtype "$DTYPE")
[ -n "$KV_DTYPE" ] && UP_ARGS+=(--kv-cache-dtype "$KV_DTYPE")
coproc UP { exec "$TPSERVE" up "${UP_ARGS[@]}" 2>"$LOG"; }
UP_PID=$UP_PID
stop_cluster() { kill -INT "$UP_PID" 2>/dev/null && wait "$UP_PID" 2>/dev/null || true; }
trap stop_cluster EXIT
if ! read -r -t 600 ADDR <&"${UP[0]}"; then
  echo "serving.sh: the cluster did not become SERVING; log: $LOG" >&2
  exit 1
fi
echo "serving.sh: TP=$TP dtype=${DTYPE:-default} kv=${KV_DTYPE:-default} cluster SERVING at $ADDR; load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# CPU seconds used so far by the cluster's processes (children of `tpserve up`), and the machine's
# busy / total CPU seconds (/proc/stat): the machine is shared, so the report says how much CPU
# the cluster actually got while each level ran.
TCK=$(getconf CLK_TCK)
cpu_snapshot() {
  local pids ticks=0 p
  pids=$(pgrep -P "$UP_PID" | tr '\n' ' ')
  for p in $pids; do
    ticks=$(( ticks + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0) ))
  done
  read -r _ u n s idle iow irq sirq steal _ < /proc/stat
  echo "$ticks $(( u + n + s + irq + sirq + steal )) $(( u + n + s + idle + iow + irq + sirq + steal ))"
}

for c in $STREAMS; do
  n=$(( c * WAVES )); [ "$n" -ge 4 ] || n=4
  echo "serving.sh: $c stream(s): $c warm-up requests, then $n measured" >&2
  "$TPSERVE" bench --server "$ADDR" --concurrency "$c" --num-requests "$c" -q \
    --input-len "$INPUT" --output-len "$OUTPUT" --temperature "$TEMP" --seed 1000 >/dev/null
  before=$(cpu_snapshot)
  "$TPSERVE" bench --server "$ADDR" --concurrency "$c" --num-requests "$n" \
    --input-len "$INPUT" --output-len "$OUTPUT" --temperature "$TEMP" \
    --json "$OUT/c$c.json" | tee "$OUT/c$c.txt"
  after=$(cpu_snapshot)
  echo "$before $after $TCK $(cut -d' ' -f1 /proc/loadavg)" > "$OUT/c$c.cpu"
done
stop_cluster
trap - EXIT

python3 - "$OUT" "$STREAMS" "$TP" "$INPUT" "$OUTPUT" "$TEMP" <<'PY'
import json, os, sys
out, streams, tp, inp, outp = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5]
temp = float(sys.argv[6])
decoding = f"temperature {temp:g}" if temp > 0 else "greedy"
rows = []
for c in streams:
    r = json.load(open(os.path.join(out, f"c{c}.json")))
    b_cl, b_busy, b_tot, a_cl, a_busy, a_tot, tck, load = open(os.path.join(out, f"c{c}.cpu")).read().split()
    tck = float(tck)
    r["cluster_cpu_s"] = (int(a_cl) - int(b_cl)) / tck
    busy, total = int(a_busy) - int(b_busy), int(a_tot) - int(b_tot)
    r["machine_busy"] = busy / total if total else 0
    # Of the CPU time the machine had (all CPUs), the share the cluster got.
    r["cluster_share"] = (r["cluster_cpu_s"] * tck) / total if total else 0
    r["load1"] = float(load)
    r["tok_per_cpu_s"] = r["output_tokens"] / r["cluster_cpu_s"] if r["cluster_cpu_s"] else 0
    rows.append(r)
base, base_cpu = rows[0]["output_throughput"] or 1, rows[0]["tok_per_cpu_s"] or 1
print(f"\nSmolLM2 serving, TP={tp}, {inp}-token prompts, {outp}-token outputs, {decoding}, "
      f"{os.cpu_count()} CPUs (results in {out})")
print("| streams | ok/failed | output tok/s | vs 1 stream | TTFT p50 / p99 ms | ITL p50 / p99 ms "
      "| KV max | preemptions | step ms (compute) | tok/step |")
print("|---|---|---|---|---|---|---|---|---|---|")
for c, r in zip(streams, rows):
    print(f"| {c} | {r['requests_ok']}/{r['requests_failed']} | {r['output_throughput']:.1f} "
          f"| {r['output_throughput'] / base:.2f}x "
          f"| {r['ttft_ms']['p50']:.0f} / {r['ttft_ms']['p99']:.0f} "
          f"| {r['itl_ms']['p50']:.1f} / {r['itl_ms']['p99']:.1f} "
          f"| {100 * r['kv_usage_max']:.1f}% | {r['preemptions']} "
          f"| {r['mean_step_ms']:.1f} ({r['mean_compute_ms']:.1f}) | {r['generated_per_step']:.1f} |")
print("\nCPU the cluster got (the machine is shared; 'tok per cluster CPU-s' does not depend on it):")
print("| streams | cluster CPU s | cluster share of machine | machine busy | load 1 min "
      "| tok per cluster CPU-s | vs 1 stream | client CPU |")
print("|---|---|---|---|---|---|---|---|")
for c, r in zip(streams, rows):
    print(f"| {c} | {r['cluster_cpu_s']:.1f} | {100 * r['cluster_share']:.0f}% "
          f"| {100 * r['machine_busy']:.0f}% | {r['load1']:.1f} | {r['tok_per_cpu_s']:.1f} "
          f"| {r['tok_per_cpu_s'] / base_cpu:.2f}x | {r['client_cpu_percent']:.1f}% |")
PY
