#!/usr/bin/env python3
"""Golden files for common/format (GGUF, safetensors, dequantisation) tests.

Run from the repository root:
  .venv/bin/python scripts/reference/make_format_goldens.py       # GGUF parts (gguf, numpy)
  .venv-ref/bin/python scripts/reference/make_format_goldens.py   # also the safetensors parts

Writes into tests/data/golden/format/:
  quants.gguf     one tensor per type (named after it, shape [rows, cols]) and "<type>.expected", the
                  F32 values that gguf-py's `gguf.quants.dequantize` gives for those bytes. Types
                  gguf-py can quantise are quantised from real floats; the others (K-quants) are
                  random block bytes whose fp16 scale fields are finite. Q8_1 and Q8_K have no
                  dequantiser in gguf-py: their expected values come from ggml's formula
                  (x = d * q) below. Q8_1 is stored as raw I8 bytes ("Q8_1.raw") because gguf-py's
                  size table (40 bytes/block) disagrees with ggml's block_q8_1 (36 bytes).
  meta.gguf       every metadata value type, nested arrays, custom general.alignment = 64, and a few
                  tensors of odd ranks; meta.json holds what gguf.GGUFReader reads back.
  smollm2.json    values read with gguf.GGUFReader from the real SmolLM2-135M-Instruct.Q4_1.gguf
                  ($TPSERVE_MODELS, default ~/.cache/tpserve/models), including dequantised rows.
  tiny.safetensors, sharded/ (index + 2 shards), safetensors.json: written with the `safetensors`
                  package (numpy API); minilm.json: tensors of the real all-MiniLM-L6-v2.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V
from gguf.quants import dequantize, quantize

OUT = Path("tests/data/golden/format")
MODELS = Path(os.environ.get("TPSERVE_MODELS", Path.home() / ".cache/tpserve/models"))
rng = np.random.default_rng(1234)


def f32list(a):
    return [float(x) for x in np.asarray(a, dtype=np.float32).reshape(-1)]


def random_k_blocks(qtype, n_blocks):
    """Random bytes for `n_blocks` blocks with every fp16 scale field set to a finite value."""
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    # Byte offsets of fp16 scale fields per block (ggml-common.h).
    f16_fields = {Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}
    for off in f16_fields.get(qtype, []):
        scale = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        b[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    if qtype == Q.Q8_K:  # f32 d
        d = rng.uniform(-0.01, 0.01, size=n_blocks).astype(np.float32)
        b[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    return b


def make_quants():
    w = gguf.GGUFWriter(str(OUT / "quants.gguf"), "test")
    rows = 3
    # Quantisable with gguf-py: quantise real floats, dequantise back for the expected values.
    for qtype in [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16]:
        cols = 96
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        q = quantize(x, qtype)
        w.add_tensor(qtype.name, q, raw_dtype=qtype)
        w.add_tensor(qtype.name + ".expected", dequantize(q, qtype).astype(np.float32))
    # K-quants: random blocks; dequantize() reads the byte shape [rows, 2 * block_bytes].
    for qtype in [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]:
        b = random_k_blocks(qtype, rows * 2).reshape(rows, -1)
        w.add_tensor(qtype.name, b, raw_dtype=qtype)
        w.add_tensor(qtype.name + ".expected", dequantize(b, qtype).astype(np.float32))
    # Q8_K: {f32 d, i8 qs[256], i16 bsums[16]}; ggml: x = d * q.
    b = random_k_blocks(Q.Q8_K, rows * 2)
    d = b[:, 0:4].copy().view(np.float32)
    qs = b[:, 4:260].copy().view(np.int8).astype(np.float32)
    w.add_tensor("Q8_K", b.reshape(rows, -1), raw_dtype=Q.Q8_K)
    w.add_tensor("Q8_K.expected", (d * qs).reshape(rows, -1).astype(np.float32))
    # Q8_1 (ggml block_q8_1): {f16 d, f16 s, i8 qs[32]} = 36 bytes; x = d * q.
    nb = rows * 2
    b = rng.integers(0, 256, size=(nb, 36), dtype=np.uint8)
    b[:, 0:2] = rng.uniform(-0.05, 0.05, size=nb).astype(np.float16).view(np.uint8).reshape(nb, 2)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    qs = b[:, 4:36].copy().view(np.int8).astype(np.float32)
    w.add_tensor("Q8_1.raw", b.reshape(rows, -1).view(np.int8))
    w.add_tensor("Q8_1.expected", (d * qs).reshape(rows, -1).astype(np.float32))
    # Dense types.
    x = rng.standard_normal((rows, 8))
    w.add_tensor("F32", x.astype(np.float32))
    w.add_tensor("F16", x.astype(np.float16))
    w.add_tensor("F16.expected", x.astype(np.float16).astype(np.float32))
    w.add_tensor("F64", x.astype(np.float64))
    w.add_tensor("F64.expected", x.astype(np.float32))
    for name, dt in [("I8", np.int8), ("I16", np.int16), ("I32", np.int32), ("I64", np.int64)]:
        iv = rng.integers(-100, 100, size=(rows, 8)).astype(dt)
        w.add_tensor(name, iv)
        w.add_tensor(name + ".expected", iv.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_dtypes():
    """gguf-py's block sizes and type ids, and numpy's fp32 -> fp16 / gguf-py's fp32 -> bf16
    rounding of awkward values (ties, subnormals, overflow, NaN)."""
    names = ["F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", "Q4_0", "Q4_1", "Q5_0",
             "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K"]
    sizes = {n: {"id": int(Q[n]), "block_elems": gguf.GGML_QUANT_SIZES[Q[n]][0],
                 "block_bytes": gguf.GGML_QUANT_SIZES[Q[n]][1]} for n in names}
    x = np.concatenate([
        rng.standard_normal(200).astype(np.float32) * np.float32(100),
        (rng.standard_normal(100) * 1e-6).astype(np.float32),          # fp16 subnormals
        (rng.standard_normal(50) * 1e-8).astype(np.float32),           # underflow region
        np.array([65504, 65519.99, 65520, 1e6, -1e6, 0.0, -0.0, np.inf, -np.inf,
                  2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-14, 1.00048828125, 1.0009765625 * 3],
                 dtype=np.float32),
        # exact fp16 ties (halfway between neighbours) round to even
        (np.arange(1, 41, dtype=np.float32) * np.float32(2.0**-11) + np.float32(1.0)),
    ]).astype(np.float32)
    with np.errstate(over="ignore"):
        f16 = x.astype(np.float16).view(np.uint16)
    bf16 = quantize(x, Q.BF16).view(np.uint16)
    json.dump({"sizes": sizes, "f32_bits": [int(v) for v in x.view(np.uint32)],
               "f16_bits": [int(v) for v in f16], "bf16_bits": [int(v) for v in bf16]},
              open(OUT / "dtypes.json", "w"))


def make_meta():
    path = OUT / "meta.gguf"
    w = gguf.GGUFWriter(str(path), "test")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**40) - 3)
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", 1.0 / 3.0)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.arr_str", ["a", "bc", "", "déf"])
    w.add_key_value("t.arr_u64", [1, 2, 2**40], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("t.arr_i16", [-1, 0, 7], V.ARRAY, sub_type=V.INT16)
    w.add_key_value("t.arr_f64", [0.5, -2.25], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("t.arr_f32", [0.25, 1.5, -3.0])
    w.add_array("t.arr_bool", [True, False, True])
    # GGUFReader.contents() flattens nested arrays, so their expected value is what was written.
    nested = {"t.nested": [[1, 2], [3], [4, 5, 6]], "t.nested_str": [["x", "y"], ["z"]]}
    for k, v in nested.items():
        w.add_array(k, v)
    w.add_tensor("vec", np.arange(5, dtype=np.float32))
    w.add_tensor("cube", np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    w.add_tensor("mat16", np.arange(12, dtype=np.float16).reshape(4, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    r = gguf.GGUFReader(str(path))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        meta[k] = {"type": [V(t).name for t in f.types], "value": nested.get(k, f.contents())}
    tensors = [{"name": t.name, "type": t.tensor_type.name, "shape": [int(x) for x in reversed(t.shape)],
                "values": f32list(dequantize(t.data, t.tensor_type))} for t in r.tensors]
    json.dump({"version": int(r.fields["GGUF.version"].contents()), "alignment": int(r.alignment),
               "meta": meta, "tensors": tensors}, open(OUT / "meta.json", "w"), indent=1,
              ensure_ascii=False)


def make_smollm2():
    path = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        print(f"skip smollm2.json: {path} not found", file=sys.stderr)
        return
    r = gguf.GGUFReader(str(path))
    keys = ["general.architecture", "llama.block_count", "llama.context_length",
            "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
            "llama.attention.head_count_kv", "llama.rope.freq_base",
            "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
            "llama.rope.dimension_count", "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token"]
    meta = {k: r.fields[k].contents() for k in keys}
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    by_name = {t.name: t for t in r.tensors}
    tensors = []
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                 "blk.0.ffn_down.weight", "blk.0.attn_norm.weight", "blk.29.ffn_up.weight",
                 "output_norm.weight"]:
        t = by_name[name]
        tensors.append({"name": name, "type": t.tensor_type.name,
                        "shape": [int(x) for x in reversed(t.shape)]})

    def row(name, i):
        t = by_name[name]
        return f32list(dequantize(t.data[i:i + 1], t.tensor_type))

    rows = {"blk.0.attn_q.weight[0]": row("blk.0.attn_q.weight", 0),
            "blk.0.attn_q.weight[100]": row("blk.0.attn_q.weight", 100),
            "token_embd.weight[0]": row("token_embd.weight", 0),
            "token_embd.weight[49151]": row("token_embd.weight", 49151),
            "blk.0.attn_norm.weight": f32list(by_name["blk.0.attn_norm.weight"].data)}
    json.dump({"version": int(r.fields["GGUF.version"].contents()), "tensor_count": len(r.tensors),
               "kv_count": int(r.fields["GGUF.kv_count"].contents()), "meta": meta,
               "num_tokens": len(tokens), "tokens_head": tokens[:5],
               "token_types_head": r.fields["tokenizer.ggml.token_type"].contents()[:5],
               "merges_head": r.fields["tokenizer.ggml.merges"].contents()[:3],
               "has_output_weight": "output.weight" in by_name,
               "has_attn_q_bias": "blk.0.attn_q.bias" in by_name,
               "tensors": tensors, "rows": rows}, open(OUT / "smollm2.json", "w"), indent=1)


def make_safetensors():
    try:
        from safetensors.numpy import save_file, load_file
    except ImportError:
        print("skip safetensors goldens: run with .venv-ref/bin/python", file=sys.stderr)
        return
    import torch  # only for a bf16 tensor (numpy has no bfloat16)
    from safetensors.torch import save_file as save_torch, load_file as load_torch
    expected = {}
    x = rng.standard_normal((3, 4)).astype(np.float32)
    tiny = {"w.f32": x, "w.f16": x.astype(np.float16), "v.i64": np.array([-5, 0, 7], np.int64),
            "v.i32": np.array([[1, -2]], np.int32), "v.u8": np.array([0, 255, 3], np.uint8),
            "v.i8": np.array([-128, 127], np.int8), "v.i16": np.array([-300, 300], np.int16),
            "v.f64": np.array([1.0 / 3.0], np.float64),
            "v.bool": np.array([True, False]), "s.scalar": np.array(2.5, np.float32)}
    tiny = {k: torch.from_numpy(v) for k, v in tiny.items()}
    tiny["w.bf16"] = torch.from_numpy(x).to(torch.bfloat16)
    save_torch(tiny, str(OUT / "tiny.safetensors"), metadata={"note": "tiny"})
    for k, v in load_torch(str(OUT / "tiny.safetensors")).items():
        expected[k] = {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape),
                       "values": f32list(v.to(torch.float32).numpy())}

    shard_dir = OUT / "sharded"
    shard_dir.mkdir(exist_ok=True)
    a = {"model.embed.weight": rng.standard_normal((4, 2)).astype(np.float32),
         "model.layers.0.w": rng.standard_normal((2, 2)).astype(np.float16)}
    b = {"model.layers.1.w": rng.standard_normal((2, 3)).astype(np.float32),
         "lm_head.weight": rng.standard_normal((4, 2)).astype(np.float32)}
    files = {"model-00001-of-00002.safetensors": a, "model-00002-of-00002.safetensors": b}
    weight_map = {}
    for fname, tensors in files.items():
        save_file(tensors, str(shard_dir / fname))
        for k, v in tensors.items():
            weight_map[k] = fname
            expected["sharded/" + k] = {"dtype": str(v.dtype), "shape": list(v.shape),
                                        "values": f32list(v)}
    json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map},
              open(shard_dir / "model.safetensors.index.json", "w"), indent=1)
    json.dump(expected, open(OUT / "safetensors.json", "w"), indent=1)

    mini = MODELS / "all-MiniLM-L6-v2" / "model.safetensors"
    if mini.exists():
        m = load_file(str(mini))
        names = ["embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
                 "encoder.layer.5.output.LayerNorm.bias", "pooler.dense.weight"]
        out = {"count": len(m), "tensors": {}}
        for n in names:
            if n not in m:
                continue
            v = m[n]
            out["tensors"][n] = {"dtype": str(v.dtype), "shape": list(v.shape),
                                 "head": f32list(v.reshape(-1)[:16]),
                                 "last": f32list(v.reshape(-1)[-4:])}
        json.dump(out, open(OUT / "minilm.json", "w"), indent=1)


def make_hf_configs():
    """config.json files (new transformers-5 style and legacy top-level rope_* style) and what
    transformers' config classes read from them."""
    try:
        from transformers import AutoConfig, GenerationConfig, LlamaConfig, MistralConfig, Qwen2Config
    except ImportError:
        print("skip hf config goldens: run with .venv-ref/bin/python", file=sys.stderr)
        return
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=100)
    cases = {
        "llama3": LlamaConfig(**small, max_position_embeddings=131072, rope_theta=500000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192},
                              eos_token_id=[1, 2], bos_token_id=0).to_json_string(),
        "qwen2": Qwen2Config(**small, bos_token_id=3, eos_token_id=4).to_json_string(),
        "mistral": MistralConfig(**small, sliding_window=4096).to_json_string(),
        # Legacy (transformers 4) style: top-level rope_theta / rope_scaling with "type".
        "llama_legacy": json.dumps({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 96,
            "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 6,
            "vocab_size": 300, "max_position_embeddings": 4096, "rms_norm_eps": 1e-05,
            "rope_theta": 100000.0, "rope_scaling": {"type": "linear", "factor": 2.0},
            "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
            "hidden_act": "silu"}),
    }
    root = OUT / "hf_config"
    expected = {}
    for name, text in cases.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(text)
        c = AutoConfig.from_pretrained(str(d))
        rp = c.rope_parameters or {}
        eos = c.eos_token_id
        expected[name] = {
            "architecture": c.model_type, "hidden_size": c.hidden_size,
            "num_layers": c.num_hidden_layers, "num_heads": c.num_attention_heads,
            "num_kv_heads": c.num_key_value_heads,
            "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
            "intermediate_size": c.intermediate_size, "vocab_size": c.vocab_size,
            "max_position": c.max_position_embeddings, "rope_theta": rp.get("rope_theta"),
            "rope_type": rp.get("rope_type", "default"), "rope_factor": rp.get("factor", 1.0),
            "low_freq_factor": rp.get("low_freq_factor", 1.0),
            "high_freq_factor": rp.get("high_freq_factor", 4.0),
            "original_max_position": rp.get("original_max_position_embeddings", 8192),
            "rms_norm_eps": c.rms_norm_eps, "tie_word_embeddings": c.tie_word_embeddings,
            # Qwen2's attention always has q/k/v biases (modeling_qwen2.py), whatever the config.
            "attention_bias": bool(getattr(c, "attention_bias", c.model_type == "qwen2")),
            "mlp_bias": bool(getattr(c, "mlp_bias", False)),
            "bos_token_id": -1 if c.bos_token_id is None else c.bos_token_id,
            "eos_token_ids": [] if eos is None else (eos if isinstance(eos, list) else [eos]),
            "sliding_window": ((getattr(c, "sliding_window", None) or 0)
                               if getattr(c, "use_sliding_window", True) else 0),
            "hidden_act": c.hidden_act,
        }
    GenerationConfig(bos_token_id=0, eos_token_id=[2, 7]).save_pretrained(str(root / "llama3"))
    expected["llama3"]["generation_eos_token_ids"] = [2, 7]
    mini = MODELS / "all-MiniLM-L6-v2"
    if (mini / "config.json").exists():
        c = AutoConfig.from_pretrained(str(mini))
        expected["minilm"] = {"architecture": c.model_type, "hidden_size": c.hidden_size,
                              "num_layers": c.num_hidden_layers, "num_heads": c.num_attention_heads,
                              "intermediate_size": c.intermediate_size, "vocab_size": c.vocab_size,
                              "max_position": c.max_position_embeddings,
                              "layer_norm_eps": c.layer_norm_eps, "hidden_act": c.hidden_act,
                              "tie_word_embeddings": c.tie_word_embeddings}
    json.dump(expected, open(OUT / "hf_configs.json", "w"), indent=1)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    make_quants()
    make_dtypes()
    make_meta()
    make_smollm2()
    make_safetensors()
    make_hf_configs()
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"{p}: {p.stat().st_size} bytes")
