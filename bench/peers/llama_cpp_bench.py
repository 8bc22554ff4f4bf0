#!/usr/bin/env python3
"""llama.cpp on the same GGUF and threads as engine_bench: a peer run for performance claims.

Measures, through llama-cpp-python (scripts/setup.sh --peers builds it into .venv-peers):
  prefill: a P-token prompt (the same ids engine_bench uses), best of 3, tokens/s;
  decode:  D greedy tokens after it, one at a time, tokens/s;
and prints one greedy chat answer so that quality can be eyeballed next to `tpserve generate`.
With --batch 1,8,32 it also decodes B sequences at once through llama.cpp's own batching (one
llama_batch of B tokens per step, each sequence its own seq_id, a KV stream per sequence or one
shared buffer with --kv-unified on, after each sequence's prefill of the same prompt), as `engine_bench --batch` does for tpserve, and
prints aggregate decode tokens/s per B and the ratio to B = 1.

  .venv-peers/bin/python bench/peers/llama_cpp_bench.py [--model PATH] [--threads 2]
      [--prompt-tokens 128] [--decode-tokens 64] [--question "What is the capital of France?"]
      [--batch 1,8,32] [--kv-type f16|q8_0] [--flash-attn auto|on|off]
"""
import argparse
import os
import time

import ctypes

import llama_cpp as L
import numpy as np
from llama_cpp import Llama, llama_print_system_info


def batched_decode(a, b):
    """Aggregate greedy decode tokens/s of b sequences stepping together (llama.cpp's batching)."""
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(a.model.encode(), mparams)
    if not model:
        raise SystemExit(f"cannot load {a.model}")
    cparams = L.llama_context_default_params()
    cparams.n_ctx = b * (a.prompt_tokens + a.decode_tokens + 16)
    cparams.n_batch = max(512, a.prompt_tokens)
    cparams.n_ubatch = max(512, a.prompt_tokens)
    cparams.n_seq_max = b
    cparams.n_threads = a.threads
    cparams.n_threads_batch = a.threads
    cparams.kv_unified = a.kv_unified == "on"
    kv = {"f16": L.GGML_TYPE_F16, "q8_0": L.GGML_TYPE_Q8_0}[a.kv_type]
    cparams.type_k = kv
    cparams.type_v = kv
    cparams.flash_attn_type = {"auto": L.LLAMA_FLASH_ATTN_TYPE_AUTO,
                               "on": L.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                               "off": L.LLAMA_FLASH_ATTN_TYPE_DISABLED}[a.flash_attn]
    ctx = L.llama_init_from_model(model, cparams)
    if not ctx:
        raise SystemExit("cannot create a llama.cpp context")
    vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    prompt = [1 + (i * 7919) % (vocab - 1) for i in range(a.prompt_tokens)]
    batch = L.llama_batch_init(max(a.prompt_tokens, b), 0, 1)

    def fill(entries):  # entries: (token, pos, seq, wants logits)
        for i, (tok, pos, seq, out) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = out
        batch.n_tokens = len(entries)
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    def argmax(i):
        row = L.llama_get_logits_ith(ctx, i)
        return int(np.argmax(np.ctypeslib.as_array(row, shape=(vocab,))))

    nxt = []
    for s in range(b):  # each sequence's own prefill of the prompt
        fill([(t, p, s, p == a.prompt_tokens - 1) for p, t in enumerate(prompt)])
        nxt.append(argmax(a.prompt_tokens - 1))
    t0 = time.perf_counter()
    for step in range(a.decode_tokens):
        fill([(nxt[s], a.prompt_tokens + step, s, True) for s in range(b)])
        nxt = [argmax(s) for s in range(b)]
    dt = time.perf_counter() - t0
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)
    return b * a.decode_tokens / dt, dt


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
    ap.add_argument("--batch", default="", help="comma-separated batch sizes, e.g. 1,8,32")
    ap.add_argument("--kv-type", default="f16", choices=["f16", "q8_0"])
    ap.add_argument("--flash-attn", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--kv-unified", default="off", choices=["on", "off"],
                    help="one KV buffer shared by all sequences (on) or one stream per sequence")
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

    if a.batch:
        del llm
        base = None
        for b in [int(x) for x in a.batch.split(",")]:
            rate, dt = batched_decode(a, b)
            if b == 1:
                base = rate
            ratio = f", {rate / base:.2f}x B=1" if base else ""
            print(f"batched decode (llama.cpp): B={b}: {rate:.1f} tok/s "
                  f"({1e3 * dt / a.decode_tokens:.2f} ms/step){ratio}"
                  f" [kv {a.kv_type}, flash-attn {a.flash_attn}, unified {a.kv_unified}]")


if __name__ == "__main__":
    main()
