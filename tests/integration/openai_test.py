"""The coordinator's OpenAI-compatible HTTP API and /metrics, driven by the official `openai`
package against a real cluster on loopback: tpserve-coordinator --http-listen + 2 tpserve-worker
processes serving SmolLM2-135M-Instruct (Q4_1 GGUF) at TP=2. A grpcio client (stubs generated
from proto/tpserve/v1/inference.proto at test time) checks that gRPC traffic shows in /metrics.

Expected texts come from the transformers golden in tests/data/golden/models/smollm2-135m-q4_1
(scripts/reference/ made it): greedy completions must reproduce its greedy text.

Run: TPSERVE_COORDINATOR_BIN=... TPSERVE_WORKER_BIN=... python -m pytest -q openai_test.py
(ctest passes the paths).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(ROOT, "tests/data/golden/models/smollm2-135m-q4_1/expected.json")
MODELS = os.environ.get("TPSERVE_MODELS", os.path.expanduser("~/.cache/tpserve/models"))
MODEL = os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf")
MODEL_NAME = os.path.basename(MODEL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Cluster:
    def __init__(self):
        coordinator = os.environ["TPSERVE_COORDINATOR_BIN"]
        worker = os.environ["TPSERVE_WORKER_BIN"]
        grpc_addr = f"127.0.0.1:{free_port()}"
        self.grpc = grpc_addr
        self.http = f"http://127.0.0.1:{free_port()}"
        self.logs = []
        self.procs = []
        self._start([coordinator, "--model", MODEL, "--tp", "2", "--listen", grpc_addr,
                     "--http-listen", self.http[len("http://"):], "--max-context", "512"])
        for rank in range(2):
            self._start([worker, "--coordinator", grpc_addr, "--rank", str(rank), "--tp", "2",
                         "--listen", "127.0.0.1:0", "--threads", "1"])

    def _start(self, argv):
        log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could fill and block
        self.logs.append(log)
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))

    def wait_serving(self, timeout_s):
        deadline = time.time() + timeout_s
        status = None
        while time.time() < deadline:
            try:
                status, _ = http_get(self.http + "/health")
                if status == 200:
                    return
                assert status == 503, status  # up but not serving yet
            except (urllib.error.URLError, ConnectionError):
                pass
            assert self.procs[0].poll() is None, "coordinator exited:\n" + self.tail()
            time.sleep(0.2)
        raise AssertionError(f"/health not 200 after {timeout_s} s ({status}):\n{self.tail()}")

    def tail(self):
        out = []
        for log in self.logs:
            log.seek(0)
            out.append(log.read()[-2000:])
        return "\n----\n".join(out)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def cluster():
    if not os.path.exists(MODEL):
        pytest.skip(f"{MODEL} not found (scripts/fetch-models.sh)")
    c = Cluster()
    try:
        c.wait_serving(180)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def client(cluster):
    return openai.OpenAI(base_url=cluster.http + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


@pytest.fixture(scope="module")
def golden():
    return json.load(open(GOLDEN))["cases"]


def scrape(cluster):
    status, text = http_get(cluster.http + "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("model_name") == MODEL_NAME or s.name.startswith("tpserve_"):
                key = s.name if "le" not in s.labels else f"{s.name}{{le={s.labels['le']}}}"
                samples[key] = s.value
    return samples


def chat_case(golden):
    case = next(c for c in golden if "messages" in c)
    # The golden decodes every greedy token (EOS included); the server stops at the first EOS
    # and skips special tokens.
    return case, case["greedy_text"].split("<|im_end|>")[0]


def test_health_and_models(cluster, client):
    assert http_get(cluster.http + "/health")[0] == 200
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    status, body = http_get(cluster.http + "/v1/nope")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_completion_matches_golden(client, golden):
    case = golden[0]  # "The capital of Germany is"
    n = len(case["greedy"])
    r = client.completions.create(model=MODEL_NAME, prompt=case["text"], max_tokens=n,
                                  temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == case["greedy_text"]
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(case["input_ids"])
    assert r.usage.completion_tokens == n
    assert r.usage.total_tokens == n + len(case["input_ids"])
    # Token ids as the prompt, a stop string, logprobs.
    r = client.completions.create(model=MODEL_NAME, prompt=case["input_ids"], max_tokens=n,
                                  temperature=0, stop=["\n"], logprobs=2)
    assert r.choices[0].text == case["greedy_text"].split("\n")[0]
    assert r.choices[0].finish_reason == "stop"
    lp = r.choices[0].logprobs
    # The token that completed the stop string is reported; its text is cut from `text`.
    assert "".join(lp.tokens) == r.choices[0].text + "\n"
    assert all(x <= 0 for x in lp.token_logprobs)
    assert all(len(t) == 2 for t in lp.top_logprobs)
    # Greedy: the chosen token is the most likely one.
    assert all(abs(max(t.values()) - x) < 1e-4 for t, x in zip(lp.top_logprobs,
                                                                lp.token_logprobs))


def test_chat_matches_golden(client, golden):
    case, expected = chat_case(golden)
    r = client.chat.completions.create(model=MODEL_NAME, messages=case["messages"],
                                       max_tokens=len(case["greedy"]), temperature=0, seed=7)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == len(case["input_ids"])
    assert r.usage.completion_tokens == case["greedy"].index(2) + 1  # EOS <|im_end|> counted


def test_streaming_chat(client, golden):
    case, expected = chat_case(golden)
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=case["messages"], max_tokens=len(case["greedy"]),
        temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "stop" and all(f is None for f in finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        case["greedy"].index(2) + 1
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_completion(client, golden):
    case = golden[0]
    stream = client.completions.create(model=MODEL_NAME, prompt=case["text"], max_tokens=8,
                                       temperature=0, stream=True)
    text = "".join(c.choices[0].text for c in stream)
    assert case["greedy_text"].startswith(text) and len(text) > 0


def test_errors(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="hi", temperature=5)
    assert e.value.status_code == 400
    assert e.value.body["param"] == "temperature"
    assert e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user",
                                                                    "content": "hi"}], n=17)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=100000)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt="hi")
    assert e.value.body["code"] == "model_not_found"


def test_metrics_move(cluster, client, golden):
    before = scrape(cluster)
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:gpu_cache_usage_perc", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total",
                 "vllm:time_to_first_token_seconds_count",
                 "vllm:time_per_output_token_seconds_count",
                 "vllm:e2e_request_latency_seconds_count", "vllm:request_queue_time_seconds_count",
                 "tpserve_step_seconds", "tpserve_workers_up"]:
        assert name in before, f"{name} missing from /metrics: {sorted(before)}"
    assert before["tpserve_workers_up"] == 2
    case = golden[0]
    r = client.completions.create(model=MODEL_NAME, prompt=case["text"], max_tokens=5,
                                  temperature=0)
    after = scrape(cluster)
    assert after["vllm:e2e_request_latency_seconds_count"] == \
        before["vllm:e2e_request_latency_seconds_count"] + 1
    assert after["vllm:time_to_first_token_seconds_count"] == \
        before["vllm:time_to_first_token_seconds_count"] + 1
    assert after["vllm:generation_tokens_total"] >= before["vllm:generation_tokens_total"] + 5
    # Prefix caching may serve part of the prompt from cache: at least one token is prefilled.
    assert after["vllm:prompt_tokens_total"] > before["vllm:prompt_tokens_total"]
    # The engine updates its running count at the end of the step that delivered the last token.
    deadline = time.time() + 10
    while scrape(cluster)["vllm:num_requests_running"] != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert scrape(cluster)["vllm:num_requests_running"] == 0
    assert after["tpserve_step_seconds"] > 0
    assert r.usage.completion_tokens == 5


def test_disconnect_aborts(cluster, client, golden):
    before = scrape(cluster)
    max_tokens = 400
    stream = client.completions.create(model=MODEL_NAME, prompt=golden[0]["text"],
                                       max_tokens=max_tokens, temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    deadline = time.time() + 60
    while time.time() < deadline:
        now = scrape(cluster)
        if now["vllm:num_requests_running"] == 0 and now["vllm:num_requests_waiting"] == 0:
            break
        time.sleep(0.1)
    generated = now["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert now["vllm:num_requests_running"] == 0
    assert generated < max_tokens, f"the request ran to the end ({generated} tokens) after close"


def test_n_completions_with_a_seed(client, golden):
    prompt = golden[0]["text"]
    kwargs = dict(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=1.0, seed=1234,
                  extra_body={"ignore_eos": True})
    two = client.completions.create(n=2, **kwargs)
    one = client.completions.create(n=1, **kwargs)
    assert [c.index for c in two.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in two.choices)
    # Completion 0 samples with the request's seed: the same text as n=1 with that seed.
    assert two.choices[0].text == one.choices[0].text
    assert two.usage.prompt_tokens == one.usage.prompt_tokens
    assert two.usage.completion_tokens == 2 * 12
    # Completion 1 samples with seed + 1: the n=1 answer for seed 1235.
    other = client.completions.create(n=1, **{**kwargs, "seed": 1235})
    assert two.choices[1].text == other.choices[0].text


def test_streamed_chat_n2(client, golden):
    case, _ = chat_case(golden)
    chunks = list(client.chat.completions.create(
        model=MODEL_NAME, messages=case["messages"], max_tokens=6, temperature=1.0, seed=5, n=2,
        stream=True, stream_options={"include_usage": True}))
    texts, finals = {0: "", 1: ""}, {}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason is not None:
                finals[ch.index] = ch.finish_reason
    assert sorted(finals) == [0, 1]
    whole = client.chat.completions.create(model=MODEL_NAME, messages=case["messages"],
                                           max_tokens=6, temperature=1.0, seed=5, n=2)
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def grpc_stubs():
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="tpserve-py-")
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_dir, "tpserve/v1/inference.proto")])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)
    from tpserve.v1 import inference_pb2, inference_pb2_grpc  # noqa: E402
    return inference_pb2, inference_pb2_grpc


def test_grpc_requests_move_metrics(cluster, golden):
    import grpc
    pb, pb_grpc = grpc_stubs()
    stub = pb_grpc.InferenceStub(grpc.insecure_channel(cluster.grpc))
    before = scrape(cluster)
    req = pb.GenerateRequest(prompt=pb.Prompt(text=golden[0]["text"]),
                             sampling=pb.SamplingParams(temperature=0.0),
                             stopping=pb.StoppingCriteria(max_tokens=4, ignore_eos=True), n=2)
    resp = stub.Complete(req, timeout=60)
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage.completion_tokens == 8
    after = scrape(cluster)
    for name in ["vllm:e2e_request_latency_seconds_count",
                 "vllm:time_to_first_token_seconds_count",
                 "vllm:request_queue_time_seconds_count"]:
        assert after[name] == before[name] + 1, name
    # 2 completions x 3 gaps after their first token.
    assert after["vllm:inter_token_latency_seconds_count"] == \
        before["vllm:inter_token_latency_seconds_count"] + 6
    assert after["vllm:generation_tokens_total"] >= before["vllm:generation_tokens_total"] + 8
    # /v1/models and ModelInfo agree on the context served (--max-context 512).
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    models = json.loads(http_get(cluster.http + "/v1/models")[1])
    assert models["data"][0]["max_model_len"] == info.context_length == 512
    assert models["data"][0]["id"] == info.name
    stats = stub.GetServerStats(pb.GetServerStatsRequest(), timeout=5)
    assert stats.serving and stats.kv_blocks_total > 0
    assert stats.requests_finished >= 1
