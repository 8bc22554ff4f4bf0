"""The public API from Python: `tpserve up` starts a TP=2 cluster on loopback, a grpcio client
generated from proto/tpserve/v1/inference.proto (grpc_tools, at test time) streams a greedy
generation that must equal the transformers golden, grpc.health.v1 says SERVING; a worker killed
mid-stream is started again by `up` and the stream goes on to its last token; Ctrl-C (SIGINT)
stops every process.

Run: python tests/integration/python_client_test.py TPSERVE_BIN  (ctest passes the path).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests/data/golden/models/llama-gqa-llama3")


def generated_stubs():
    out = tempfile.mkdtemp(prefix="tpserve-py-")
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_dir, "tpserve/v1/inference.proto")])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)
    from tpserve.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
    return inference_pb2, inference_pb2_grpc


def worker_pid(parent, rank):
    """The pid of `parent`'s child process started with --rank `rank`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == parent and b"--rank" in argv and argv[argv.index(b"--rank") + 1] == b"%d" % rank:
            return int(entry)
    raise AssertionError(f"no child of {parent} with --rank {rank}")


def main():
    tpserve = sys.argv[1]
    pb, pb_grpc = generated_stubs()
    expected = json.load(open(os.path.join(GOLDEN, "expected.json")))
    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could fill and block `up`
    up = subprocess.Popen([tpserve, "up", "--model", GOLDEN, "--tp", "2", "--threads", "1",
                           "--ready-timeout", "120"],
                          stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        address = up.stdout.readline().strip()  # printed once SERVING
        assert address.startswith("127.0.0.1:"), f"tpserve up printed {address!r}"
        channel = grpc.insecure_channel(address)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                           timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING, health
        stub = pb_grpc.InferenceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        assert info.tensor_parallel == 2 and info.architecture == "llama", info
        for case in expected["cases"]:
            req = pb.GenerateRequest(
                prompt=pb.Prompt(tokens=pb.TokenIds(ids=case["input_ids"])),
                sampling=pb.SamplingParams(temperature=0.0),
                stopping=pb.StoppingCriteria(max_tokens=len(case["greedy"]), ignore_eos=True))
            ids, last = [], None
            for resp in stub.Generate(req, timeout=60):
                ids.extend(t.id for t in resp.tokens)
                last = resp
            assert ids == case["greedy"], (ids, case["greedy"])
            assert last.finish_reason == pb.FINISH_REASON_LENGTH
            assert last.usage.completion_tokens == len(case["greedy"])
        try:
            stub.Complete(pb.GenerateRequest(prompt=pb.Prompt(tokens=pb.TokenIds(ids=[]))),
                          timeout=5)
            raise AssertionError("empty prompt accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        done = stub.Complete(pb.GenerateRequest(
            prompt=pb.Prompt(tokens=pb.TokenIds(ids=expected["cases"][0]["input_ids"])),
            sampling=pb.SamplingParams(temperature=0.0),
            stopping=pb.StoppingCriteria(max_tokens=5, ignore_eos=True)), timeout=30)
        assert [t.id for t in done.tokens] == expected["cases"][0]["greedy"][:5], done

        # Rank 1 killed after the first streamed token: `up` starts it again, the coordinator
        # re-forms the group, and the stream resumes by recompute to its last token.
        total = 200  # prompt + output within the tiny model's 256 positions
        stream = stub.Generate(pb.GenerateRequest(
            prompt=pb.Prompt(tokens=pb.TokenIds(ids=expected["cases"][0]["input_ids"])),
            sampling=pb.SamplingParams(temperature=0.0),
            stopping=pb.StoppingCriteria(max_tokens=total, ignore_eos=True)), timeout=120)
        first = next(stream)
        ids = [t.id for t in first.tokens]
        os.kill(worker_pid(up.pid, 1), signal.SIGKILL)
        last = first
        for resp in stream:
            ids.extend(t.id for t in resp.tokens)
            last = resp
        assert len(ids) == total, len(ids)
        assert last.finish_reason == pb.FINISH_REASON_LENGTH, last
        deadline = time.time() + 60
        while True:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=5).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            assert time.time() < deadline, "not SERVING again within 60 s"
            time.sleep(0.2)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            rc = up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            raise AssertionError("tpserve up did not stop within 30 s of SIGINT")
        log.seek(0)
        err = log.read()
    assert rc == 0, f"tpserve up exited with {rc}:\n{err[-3000:]}"
    assert "all processes stopped" in err, err[-3000:]
    assert "worker 1" in err and "starting it again (restart 1 of 5)" in err, err[-3000:]
    assert "resume by recompute" in err and "resumed 1 request(s)" in err, err[-3000:]
    print("python client: OK")


if __name__ == "__main__":
    main()
