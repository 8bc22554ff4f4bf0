#!/usr/bin/env python3
"""Second opinion on the model goldens: a from-scratch float64 Llama forward pass.

It reads the committed checkpoints (config.json + safetensors) and the SmolLM2 GGUF directly, with
its own RoPE code (rotate-half for HF files; llama.cpp's interleaved pairs on the GGUF's own q/k
layout, no un-permutation; linear and llama3 scaling written from the Llama 3.1 reference formula),
and compares its logits and greedy tokens with the files transformers produced. Agreement to ~1e-6 says the goldens
are the model's math and not an artefact of one library's reading of the config or the file.

    .venv-ref/bin/python scripts/reference/model_crosscheck.py
"""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests/data/golden/models"
D = torch.float64


def inv_freq(head_dim: int, theta: float, rope: dict) -> torch.Tensor:
    """[head_dim/2] rotation frequencies (radians per position), after rope scaling."""
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=D) / head_dim)
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "linear":
        return inv / rope["factor"]
    if kind == "llama3":
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        out = []
        for f in inv.tolist():
            wavelen = 2 * math.pi / f
            if wavelen < old / high:
                out.append(f)
            elif wavelen > old / low:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        return torch.tensor(out, dtype=D)
    assert kind == "default", kind
    return inv


def rope(x: torch.Tensor, freqs: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x: [T, heads, hd]; rotates pairs (i, i + hd/2) or, interleaved, (2i, 2i + 1)."""
    angles = torch.arange(x.shape[0], dtype=D)[:, None] * freqs[None, :]  # [T, hd/2]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def rms_norm(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def forward(ids, w, n_layers, nh, nkv, hd, eps, freqs, interleaved) -> torch.Tensor:
    """w: dict of float64 tensors with HF names ([out, in] matrices). Returns logits [T, V]."""
    x = w["model.embed_tokens.weight"][ids]  # [T, H]
    t = len(ids)
    mask = torch.full((t, t), float("-inf"), dtype=D).triu(1)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)

        def proj(name):
            y = h @ w[p + f"self_attn.{name}.weight"].T
            bias = w.get(p + f"self_attn.{name}.bias")
            return y if bias is None else y + bias

        q = rope(proj("q_proj").view(t, nh, hd), freqs, interleaved)
        k = rope(proj("k_proj").view(t, nkv, hd), freqs, interleaved)
        v = proj("v_proj").view(t, nkv, hd)
        group = nh // nkv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # [T, nh, hd]
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        att = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(t, nh * hd)
        x = x + att @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


def hf_folder(folder: Path):
    cfg = json.loads((folder / "config.json").read_text())
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    w = {}
    for f in files:
        w.update({k: v.to(D) for k, v in load_file(folder / f).items()})
    rope_cfg = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rope_cfg.get("rope_theta", cfg.get("rope_theta", 10000.0))
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    args = (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], hd,
            cfg["rms_norm_eps"], inv_freq(hd, theta, rope_cfg), False)
    return w, args


_GGUF_NAMES = {
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def gguf_file(path: Path):
    from gguf import GGUFReader, dequantize

    r = GGUFReader(path)
    meta = lambda key: r.fields[key].contents()  # noqa: E731
    w = {}
    for t in r.tensors:
        parts = t.name.split(".")
        hf = (f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.{parts[3]}" if parts[0] == "blk"
              else f"{_GGUF_NAMES[parts[0]]}.{parts[1]}")
        shape = [int(n) for n in reversed(t.shape)]  # GGUF lists dims innermost first
        w[hf] = torch.from_numpy(dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float64))
    nh, hidden = meta("llama.attention.head_count"), meta("llama.embedding_length")
    hd = hidden // nh
    args = (meta("llama.block_count"), nh, meta("llama.attention.head_count_kv"), hd,
            float(meta("llama.attention.layer_norm_rms_epsilon")),
            inv_freq(hd, float(meta("llama.rope.freq_base")), {}), True)  # q/k rows as stored
    return w, args


def compare(name: str, w, args, last_only: bool) -> float:
    folder = GOLDEN / name
    expected = json.loads((folder / "expected.json").read_text())
    worst = 0.0
    for i, case in enumerate(expected["cases"]):
        ref = np.fromfile(folder / case["logits_file"], dtype="<f4").reshape(case["logits_shape"])
        ids, greedy = case["input_ids"], case["greedy"]
        # One causal pass over prompt + greedy[:-1]: its first T rows are the prompt's logits, and
        # rows T-1.. must pick the greedy tokens (teacher forcing == greedy decoding).
        full = forward(ids + greedy[:-1], w, *args).numpy()
        ours = full[len(ids) - 1] if last_only else full[: len(ids)]
        rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
        worst = max(worst, rel)
        picks = full[len(ids) - 1 :].argmax(-1).tolist()
        same = picks == greedy
        if not same:
            worst = float("inf")
        print(f"  {name} case{i}: rel diff vs float64 {rel:.2e}, greedy {'same' if same else 'DIFFERENT'}"
              f" ({len(greedy)} tokens)")
    return worst


def main() -> int:
    torch.set_num_threads(1)
    limits = {}
    for folder in sorted(p for p in GOLDEN.iterdir() if (p / "config.json").exists()):
        limits[folder.name] = (compare(folder.name, *hf_folder(folder), last_only=False), 1e-5)
    gguf = Path(os.environ.get("TPSERVE_MODELS", Path.home() / ".cache/tpserve/models")) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if gguf.exists():
        limits["smollm2-135m-q4_1"] = (compare("smollm2-135m-q4_1", *gguf_file(gguf), last_only=True), 1e-4)
    else:
        print(f"skipping SmolLM2: {gguf} missing")
    bad = {k: v for k, v in limits.items() if v[0] > v[1]}
    for name, (rel, limit) in bad.items():
        print(f"PROBLEM: {name}: {rel:.2e} > {limit:.0e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
