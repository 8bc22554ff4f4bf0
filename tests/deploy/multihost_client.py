#!/usr/bin/env python3
"""gRPC client of the multi-host test (tests/deploy/multihost_test.sh), run inside the client's
network namespace with the project's .venv (grpcio, grpcio-tools, grpcio-health-checking).

  multihost_client.py health ADDR [--service S] [--want SERVING] [--timeout SECONDS]
      polls grpc.health.v1 Check until the status is --want; exit 0 when it is, 1 at the timeout
  multihost_client.py generate ADDR --prompt TEXT --max-tokens N --deadline SECONDS
                      [--progress FILE] [--expect OK,UNAVAILABLE]
      streams tpserve.v1.Inference/Generate (greedy, ignore_eos) under a gRPC deadline; appends
      the running token count to --progress after every response; prints one JSON line (final
      status code, message, tokens, text, elapsed seconds, finish reason); exit 0 when the final
      code is in --expect
  multihost_client.py http-generate HOST:PORT --prompt TEXT --max-tokens N --progress FILE
      streams POST /v1/completions (stream, greedy, ignore_eos) and appends the running count of
      text chunks to --progress; prints one JSON line (chunks, how it ended) when the stream ends
  multihost_client.py idle ADDR [--timeout SECONDS]
      polls tpserve.v1.Inference/GetServerStats until no sequence runs or waits and no KV block
      is in use; prints the seconds that took and the last stats as one JSON line; exit 0 when
      it got there, 1 at the timeout
"""
import argparse
import json
import pathlib
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def inference_modules():
    """tpserve.v1 stubs generated from the repository's proto into a temporary folder."""
    from grpc_tools import protoc
    import importlib.resources
    out = tempfile.mkdtemp(prefix="tpserve-proto-")
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", str(ROOT / "proto/tpserve/v1/inference.proto")])
    if rc != 0:
        raise SystemExit(f"protoc failed ({rc})")
    sys.path.insert(0, out)
    from tpserve.v1 import inference_pb2, inference_pb2_grpc
    return inference_pb2, inference_pb2_grpc


def cmd_health(a):
    want = health_pb2.HealthCheckResponse.ServingStatus.Value(a.want)
    end = time.monotonic() + a.timeout
    last = "no answer"
    with grpc.insecure_channel(a.addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < end:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=a.service), timeout=2)
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
                if r.status == want:
                    print(f"health {a.addr} [{a.service}]: {last}")
                    return 0
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
            time.sleep(0.5)
    print(f"health {a.addr} [{a.service}]: still {last} after {a.timeout}s (wanted {a.want})")
    return 1


def cmd_generate(a):
    pb, pb_grpc = inference_modules()
    req = pb.GenerateRequest(prompt=pb.Prompt(text=a.prompt),
                             sampling=pb.SamplingParams(temperature=0.0, seed=1),
                             stopping=pb.StoppingCriteria(max_tokens=a.max_tokens, ignore_eos=True))
    progress = open(a.progress, "a", buffering=1) if a.progress else None
    tokens, text, finish = 0, [], "none"
    code, message = "OK", ""
    start = time.monotonic()
    with grpc.insecure_channel(a.addr) as ch:
        stub = pb_grpc.InferenceStub(ch)
        try:
            for resp in stub.Generate(req, timeout=a.deadline):
                tokens += len(resp.tokens)
                text.append(resp.text)
                if resp.finish_reason:
                    finish = pb.FinishReason.Name(resp.finish_reason)
                if progress:
                    progress.write(f"{tokens}\n")
        except grpc.RpcError as e:
            code, message = e.code().name, e.details() or ""
    result = {"code": code, "message": message, "tokens": tokens, "text": "".join(text),
              "elapsed_s": round(time.monotonic() - start, 2), "finish_reason": finish}
    print(json.dumps(result))
    return 0 if code in a.expect.split(",") else 1


def cmd_http_generate(a):
    import urllib.request
    body = json.dumps({"prompt": a.prompt, "max_tokens": a.max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()
    req = urllib.request.Request(f"http://{a.addr}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    chunks, ended = 0, "eof"
    with open(a.progress, "a", buffering=1) as progress:
        try:
            with urllib.request.urlopen(req, timeout=a.timeout) as resp:
                for line in resp:
                    if line.startswith(b"data: [DONE]"):
                        ended = "done"
                        break
                    if line.startswith(b"data:"):
                        chunks += 1
                        progress.write(f"{chunks}\n")
        except Exception as e:  # noqa: BLE001 - how it ended is the result
            ended = f"{type(e).__name__}: {e}"
    print(json.dumps({"chunks": chunks, "ended": ended}))
    return 0


def cmd_idle(a):
    pb, pb_grpc = inference_modules()
    start = time.monotonic()
    last = {}
    with grpc.insecure_channel(a.addr) as ch:
        stub = pb_grpc.InferenceStub(ch)
        while time.monotonic() - start < a.timeout:
            try:
                st = stub.GetServerStats(pb.GetServerStatsRequest(), timeout=2)
                last = {"running": st.running, "waiting": st.waiting,
                        "kv_blocks_used": st.kv_blocks_used,
                        "generation_tokens": st.generation_tokens}
                if st.running == 0 and st.waiting == 0 and st.kv_blocks_used == 0:
                    print(json.dumps({"idle_after_s": round(time.monotonic() - start, 1), **last}))
                    return 0
            except grpc.RpcError as e:
                last = {"error": f"{e.code().name}: {e.details()}"}
            time.sleep(0.25)
    print(json.dumps({"idle_after_s": None, **last}))
    return 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("health")
    h.add_argument("addr")
    h.add_argument("--service", default="")
    h.add_argument("--want", default="SERVING")
    h.add_argument("--timeout", type=float, default=60)
    g = sub.add_parser("generate")
    g.add_argument("addr")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-tokens", type=int, required=True)
    g.add_argument("--deadline", type=float, required=True)
    g.add_argument("--progress")
    g.add_argument("--expect", default="OK")
    hg = sub.add_parser("http-generate")
    hg.add_argument("addr")
    hg.add_argument("--prompt", required=True)
    hg.add_argument("--max-tokens", type=int, required=True)
    hg.add_argument("--progress", required=True)
    hg.add_argument("--timeout", type=float, default=300)
    i = sub.add_parser("idle")
    i.add_argument("addr")
    i.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()
    return {"health": cmd_health, "generate": cmd_generate, "http-generate": cmd_http_generate,
            "idle": cmd_idle}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
