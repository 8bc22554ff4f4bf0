"""`tpserve bench` and `tpserve models --server` against a real local cluster (`tpserve up`, TP=1,
the tiny random-weight Llama checkpoint of tests/data/golden/models): every request ends OK with
exactly the forced output length, the JSON report carries the counts, a shared prefix shows up as
prefix-cache hits, a bad length spec and an unreachable server exit with code 2.

Run: python tests/tools/bench_cli_test.py TPSERVE_BIN  (ctest passes the path).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests/data/golden/models/llama-gqa-llama3")


def bench(tpserve, *args):
    return subprocess.run([tpserve, "bench", *args], capture_output=True, text=True, timeout=120)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    tpserve = sys.argv[1]
    tmp = tempfile.mkdtemp(prefix="tpserve-bench-")
    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could fill and block `up`
    up = subprocess.Popen([tpserve, "up", "--model", MODEL, "--tp", "1", "--threads", "1",
                           "--ready-timeout", "120"], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        address = up.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), f"tpserve up printed {address!r}"

        # Closed loop, 6 requests of exactly 5 output tokens each (ignore_eos + max_tokens).
        report = os.path.join(tmp, "closed.json")
        r = bench(tpserve, "--server", address, "-c", "3", "-n", "6", "--warmup", "2",
                  "--input-len", "uniform:4-12", "--output-len", "5", "--json", report)
        assert r.returncode == 0, r.stderr
        assert "output throughput (tok/s)" in r.stdout, r.stdout
        j = json.load(open(report))
        assert j["requests_ok"] == 6 and j["requests_failed"] == 0, j
        assert j["output_tokens"] == 30, j
        assert j["ttft_ms"]["count"] == 6 and j["e2e_ms"]["count"] == 6, j
        assert j["itl_ms"]["count"] == 6 * 4, j  # 4 gaps between 5 tokens (one per response)
        assert 4 * 6 <= j["prompt_tokens"] <= 12 * 6, j
        assert j["steps"] > 0 and j["mean_step_ms"] > 0, j
        assert j["output_throughput"] > 0 and j["client_cpu_percent"] >= 0, j

        # Every prompt is the same 48-token prefix: after the first, whole blocks come from the
        # prefix cache. Open loop with a high rate (Poisson arrivals), one stream at a time.
        report = os.path.join(tmp, "prefix.json")
        r = bench(tpserve, "--server", address, "--rate", "50", "--max-concurrency", "1",
                  "-n", "3", "--input-len", "48", "--output-len", "2",
                  "--shared-prefix-ratio", "1", "--json", report)
        assert r.returncode == 0, r.stderr
        j = json.load(open(report))
        assert j["requests_ok"] == 3 and j["output_tokens"] == 6, j
        assert j["prefix_cache_hit_tokens"] >= 2 * 32, j  # at least 2 of the 3 full 16-token blocks

        r = subprocess.run([tpserve, "models", "--server", address], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0 and "architecture         llama" in r.stdout, r.stdout

        r = bench(tpserve, "--server", address, "--output-len", "uniform:9-3")
        assert r.returncode == 2 and "uniform:A-B" in r.stderr, (r.returncode, r.stderr)
    finally:
        up.terminate()
        up.wait(timeout=30)
    r = bench(tpserve, "--server", f"127.0.0.1:{free_port()}", "-n", "1")
    assert r.returncode == 2 and "cannot reach a tpserve server" in r.stderr, (r.returncode,
                                                                               r.stderr)
    print("bench_cli_test: OK")


if __name__ == "__main__":
    main()
