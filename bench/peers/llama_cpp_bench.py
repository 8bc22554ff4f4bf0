#!/usr/bin/env python3
"""llama.cpp on the same GGUF and threads as engine_bench: a peer run for performance claims.

Measures, through llama-cpp-python (scripts/setup.sh --peers builds it into .venv-peers):
  prefill: a P-token prompt (the same ids engine_bench uses), best of 3, tokens/s;
  decode:  D greedy tokens after it, one at a time, tokens/s;
and prints one greedy chat answer so that quality can be eyeballed next to `tpserve generate`.

  .venv-peers/bin/python bench/peers/llama_cpp_bench.py [--model PATH] [--threads 2]
      [--prompt-tokens 128] [--decode-tokens 64] [--question "What is the capital of France?"]
"""
import argparse
import os
import time

import numpy as np
from llama_cpp import Llama, llama_print_system_info


def main():
    default_model = os.path.join(
        os.environ.get("TPSERVE_MODELS", os.path.expanduser("~/.cache/tpserve/models")),
        "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=default_model)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--question", default="What is the capital of France?")
    a = ap.parse_args()

    llm = Llama(model_path=a.model, n_threads=a.threads, n_threads_batch=a.threads,
                n_ctx=a.prompt_tokens + a.decode_tokens + 16, n_batch=512, verbose=False)
    print("llama.cpp system info:", llama_print_system_info().decode().strip())
    vocab = llm.n_vocab()
    prompt = [1 + (i * 7919) % (vocab - 1) for i in range(a.prompt_tokens)]

    best = 1e30
    for _ in range(3):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        best = min(best, time.perf_counter() - t0)
    print(f"prefill: {a.prompt_tokens} tokens in {best:.3f} s: {a.prompt_tokens / best:.1f} tok/s")

    tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t0 = time.perf_counter()
    for _ in range(a.decode_tokens):
        llm.eval([tok])
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    dt = time.perf_counter() - t0
    print(f"decode: {a.decode_tokens} tokens after a {a.prompt_tokens}-token prompt: "
          f"{a.decode_tokens / dt:.1f} tok/s ({1e3 * dt / a.decode_tokens:.2f} ms/token)")

    llm.reset()
    out = llm.create_chat_completion(messages=[{"role": "user", "content": a.question}],
                                     temperature=0.0, max_tokens=32)
    print(f"chat, greedy: {a.question!r} -> {out['choices'][0]['message']['content']!r}")


if __name__ == "__main__":
    main()
