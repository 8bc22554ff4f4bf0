#!/usr/bin/env bash
# The one entrypoint of the tpserve images: runs the coordinator, a worker, or the model fetch, from
# arguments and environment variables (Kubernetes sets the variables; deploy/k8s). The multi-host
# test (tests/deploy/multihost_test.sh) runs this same script with the environment the rendered
# manifests give each pod, so what it proves is what the pods run.
#
#   entrypoint.sh coordinator [EXTRA FLAGS...]
#     MODEL (required)        model file or folder, e.g. /var/lib/tpserve/models/SmolLM2-...gguf
#     TP (required)           tensor-parallel degree = number of workers
#     LISTEN                  public gRPC + health            (default 0.0.0.0:50051)
#     CLUSTER_LISTEN          Cluster service for the workers (default 0.0.0.0:50052)
#     HTTP_LISTEN             OpenAI-compatible HTTP API and /metrics, e.g. 0.0.0.0:8080
#                             (--http-listen; default: off)
#     LOG_FORMAT, LOG_LEVEL   text|json, info|debug|... (--log-format, --log-level)
#     KV_BLOCK_SIZE, MAX_BATCH_TOKENS, MAX_SEQS, MEMORY_BUDGET, MAX_CONTEXT, MAX_WAITING,
#     STEP_TIMEOUT_MS, COLLECTIVE_TIMEOUT_MS, LOAD_TIMEOUT_S, RESUME_WINDOW_S,
#     HEALTH_TIMEOUT_MS, HEALTH_MISSES, KEEPALIVE_TIME_S, KEEPALIVE_TIMEOUT_S:
#                             passed as the flags of the same name when set
#     NO_PREFIX_CACHE=1       --no-prefix-cache
#   entrypoint.sh worker [EXTRA FLAGS...]
#     COORDINATOR             HOST:PORT of the coordinator's Cluster service; default under
#                             LeaderWorkerSet: $LWS_LEADER_ADDRESS:50052
#     RANK                    default: POD_INDEX (the StatefulSet ordinal, from the pod label
#                             apps.kubernetes.io/pod-index), else LWS_WORKER_INDEX - 1 (index 0 is
#                             the coordinator, the group's leader), else the host name's -N suffix
#     TP (required)           group size, must equal the coordinator's
#     DEVICE                  cpu (default) or cuda:K
#     DTYPE                   int8x2, int8, fp32 (cpu) or bf16 (cuda) (--dtype; default: the
#                             device's)
#     KV_CACHE_DTYPE          auto, fp16, fp32 or int8 (cpu) (--kv-cache-dtype; default auto:
#                             fp16 on cuda with bf16)
#     HOST_SAMPLING           1: sample on the host, not the GPU (--host-sampling; a way round)
#     CUDA_GRAPH_MAX_BATCH    decode steps of up to this many sequences replayed as CUDA graphs
#                             (--cuda-graph-max-batch; default 64, 0: never)
#     COLLECTIVES             gloo (default) or nccl (--collectives; GPU ranks)
#     LISTEN                  Worker control service          (default 0.0.0.0:50061)
#     ADVERTISE               address peers and the coordinator dial; default POD_IP
#     DATA_INTERFACE, THREADS, MEMORY_BUDGET, MODEL, REGISTER_INTERVAL, LOG_FORMAT, LOG_LEVEL:
#                             the flags of the same name
#   entrypoint.sh fetch-models
#     TPSERVE_CACHE           where scripts/fetch-models.sh puts models/ (the model volume)
#
# TPSERVE_DRY_RUN=1 prints the command instead of running it (the lint tests check the mapping).
set -euo pipefail

die() { echo "entrypoint: $*" >&2; exit 2; }

# args+=(--flag "$VAR") when VAR is set and not empty.
args=()
opt() { local flag=$1 value=${2:-}; [ -z "$value" ] || args+=("$flag" "$value"); }

# Ordinal from a host name such as tpserve-worker-3 -> 3.
ordinal_from_hostname() {
  local h=${HOSTNAME:-$(hostname)}
  [[ $h =~ -([0-9]+)$ ]] && echo "${BASH_REMATCH[1]}"
}

role=${1:-${ROLE:-}}
[ $# -eq 0 ] || shift
case $role in
  coordinator)
    [ -n "${MODEL:-}" ] || die "coordinator: set MODEL to the model file or folder"
    [ -n "${TP:-}" ] || die "coordinator: set TP to the number of workers"
    bin=tpserve-coordinator
    opt --model "$MODEL"
    opt --tp "$TP"
    opt --listen "${LISTEN:-0.0.0.0:50051}"
    opt --cluster-listen "${CLUSTER_LISTEN:-0.0.0.0:50052}"
    opt --http-listen "${HTTP_LISTEN:-}"
    opt --kv-block-size "${KV_BLOCK_SIZE:-}"
    opt --max-batch-tokens "${MAX_BATCH_TOKENS:-}"
    opt --max-seqs "${MAX_SEQS:-}"
    opt --memory-budget "${MEMORY_BUDGET:-}"
    opt --max-context "${MAX_CONTEXT:-}"
    opt --max-waiting "${MAX_WAITING:-}"
    opt --step-timeout-ms "${STEP_TIMEOUT_MS:-}"
    opt --collective-timeout-ms "${COLLECTIVE_TIMEOUT_MS:-}"
    opt --resume-window-s "${RESUME_WINDOW_S:-}"
    opt --load-timeout-s "${LOAD_TIMEOUT_S:-}"
    opt --health-timeout-ms "${HEALTH_TIMEOUT_MS:-}"
    opt --health-misses "${HEALTH_MISSES:-}"
    opt --keepalive-time-s "${KEEPALIVE_TIME_S:-}"
    opt --keepalive-timeout-s "${KEEPALIVE_TIMEOUT_S:-}"
    case ${NO_PREFIX_CACHE:-} in
      ""|0|false) ;;
      *) args+=(--no-prefix-cache) ;;
    esac
    opt --log-format "${LOG_FORMAT:-}"
    opt --log-level "${LOG_LEVEL:-}"
    ;;
  worker)
    coordinator=${COORDINATOR:-}
    if [ -z "$coordinator" ] && [ -n "${LWS_LEADER_ADDRESS:-}" ]; then
      coordinator=$LWS_LEADER_ADDRESS:${COORDINATOR_CLUSTER_PORT:-50052}
    fi
    [ -n "$coordinator" ] || die "worker: set COORDINATOR to the coordinator's Cluster HOST:PORT"
    rank=${RANK:-}
    if [ -z "$rank" ] && [ -n "${POD_INDEX:-}" ]; then rank=$POD_INDEX; fi
    if [ -z "$rank" ] && [ -n "${LWS_WORKER_INDEX:-}" ]; then
      [ "$LWS_WORKER_INDEX" -ge 1 ] || die "worker: LWS_WORKER_INDEX 0 is the leader (coordinator)"
      rank=$((LWS_WORKER_INDEX - 1))
    fi
    [ -n "$rank" ] || rank=$(ordinal_from_hostname) || true
    [[ $rank =~ ^[0-9]+$ ]] || die "worker: no rank: set RANK, POD_INDEX or LWS_WORKER_INDEX"
    [ -n "${TP:-}" ] || die "worker: set TP to the group size"
    bin=tpserve-worker
    opt --coordinator "$coordinator"
    opt --rank "$rank"
    opt --tp "$TP"
    opt --device "${DEVICE:-cpu}"
    opt --dtype "${DTYPE:-}"
    opt --kv-cache-dtype "${KV_CACHE_DTYPE:-}"
    opt --collectives "${COLLECTIVES:-}"
    case "${HOST_SAMPLING:-}" in 1 | true) args+=(--host-sampling) ;; esac
    opt --cuda-graph-max-batch "${CUDA_GRAPH_MAX_BATCH:-}"
    opt --listen "${LISTEN:-0.0.0.0:50061}"
    opt --advertise "${ADVERTISE:-${POD_IP:-}}"
    opt --data-interface "${DATA_INTERFACE:-}"
    opt --threads "${THREADS:-}"
    opt --memory-budget "${MEMORY_BUDGET:-}"
    opt --model "${MODEL:-}"
    opt --register-interval "${REGISTER_INTERVAL:-}"
    opt --log-format "${LOG_FORMAT:-}"
    opt --log-level "${LOG_LEVEL:-}"
    ;;
  fetch-models)
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    # Image layout: /opt/tpserve/bin/entrypoint.sh; source tree: deploy/docker/entrypoint.sh.
    for root in "$here/.." "$here/../.."; do
      if [ -x "$root/scripts/fetch-models.sh" ]; then
        fetch=$root/scripts/fetch-models.sh
        break
      fi
    done
    [ -n "${fetch:-}" ] || die "fetch-models: scripts/fetch-models.sh not found near $here"
    bin=$fetch
    ;;
  *)
    die "usage: entrypoint.sh coordinator|worker|fetch-models [EXTRA FLAGS...] (got '${role}')"
    ;;
esac

cmd=("$bin" "${args[@]}" "$@")
echo "entrypoint: ${cmd[*]}" >&2
if [ -n "${TPSERVE_DRY_RUN:-}" ]; then
  printf '%s\n' "${cmd[@]}"
  exit 0
fi
exec "${cmd[@]}"
