"""Tiny random-weight Hugging Face checkpoints (Llama family) and their reference logits.

Each checkpoint is built from a config written here (no hub access), given random weights with a
fixed seed, saved with `save_pretrained` (safetensors), then *reloaded from the folder* and run: the
reference is what the files on disk produce, which matters for the bf16 checkpoint.
"""

import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

from model_common import (
    check_greedy_without_cache,
    greedy,
    prompt_logits,
    read_logits,
    reference_string,
    relative_diff,
    write_json,
    write_logits,
)

PROMPT_LENGTHS = (1, 7, 37)
GREEDY_STEPS = 16
# A prompt is kept only if every greedy step's top1-top2 gap is at least this (logit units). The
# logits span about +-6, so the 1e-4 relative tolerance is ~6e-4 absolute: 0.05 leaves ~80x room.
MIN_MARGIN = 0.05
INIT_STD = 0.2

# Shared sizes: hidden 64, 2 layers, 4 query heads of 16, FFN 128, 256 positions.
_BASE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    head_dim=16,
    intermediate_size=128,
    max_position_embeddings=256,
    initializer_range=INIT_STD,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (config class, config overrides, weight seed, weight dtype, save_pretrained max_shard_size)
# Vocab sizes differ per model (all 256..512) so a loader that assumes one is caught.
SPECS = {
    "llama-mha": (
        LlamaConfig,
        dict(num_key_value_heads=4, vocab_size=256, rms_norm_eps=1e-6),
        1001, torch.float32, None,
    ),
    "llama-gqa-llama3": (
        LlamaConfig,
        dict(
            num_key_value_heads=2, vocab_size=384, rms_norm_eps=1e-5,
            # head_dim 16, theta 5e5: wavelengths 6.3, 32.5, 167, ... so with original 64 positions
            # one frequency is kept, one is in the smooth band (16..64) and the rest are divided by 8.
            rope_parameters=dict(
                rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                high_freq_factor=4.0, original_max_position_embeddings=64,
            ),
        ),
        1002, torch.float32, None,
    ),
    "llama-linear-rope": (
        LlamaConfig,
        dict(
            num_key_value_heads=2, vocab_size=320, rms_norm_eps=1e-5,
            rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0),
        ),
        1003, torch.float32, None,
    ),
    "mistral": (
        MistralConfig,
        # sliding_window null (Mistral v0.2+ style): the windowed mask is not exercised here.
        dict(num_key_value_heads=2, vocab_size=300, rms_norm_eps=1e-5, rope_theta=1000000.0,
             sliding_window=None),
        1004, torch.float32, None,
    ),
    "qwen2": (
        Qwen2Config,
        # Qwen2 always has q/k/v biases (no o_proj bias); they get non-zero random values below.
        dict(num_key_value_heads=2, vocab_size=512, rms_norm_eps=1e-6, rope_theta=1000000.0,
             tie_word_embeddings=False, use_sliding_window=False),
        1005, torch.float32, None,
    ),
    "llama-tied": (
        LlamaConfig,
        dict(num_key_value_heads=2, vocab_size=288, rms_norm_eps=1e-5, tie_word_embeddings=True),
        1006, torch.float32, None,
    ),
    # Same config and seed as llama-gqa-llama3, hence the same weights and the same expected values,
    # saved in shards: model.safetensors.index.json + 3 files.
    "llama-sharded": (
        LlamaConfig,
        None,  # filled from llama-gqa-llama3 below
        1002, torch.float32, "200KB",
    ),
    "llama-bf16": (
        LlamaConfig,
        dict(num_key_value_heads=2, vocab_size=352, rms_norm_eps=1e-5),
        1008, torch.bfloat16, None,
    ),
}
SPECS["llama-sharded"] = (LlamaConfig, SPECS["llama-gqa-llama3"][1]) + SPECS["llama-sharded"][2:]

KEEP_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def _randomize(model, seed: int) -> None:
    """Weights ~ N(0, INIT_STD); norm weights ~ U(0.6, 1.4); biases ~ N(0, INIT_STD).

    Done here rather than by transformers' own init so the values depend only on this seed and the
    parameter order, and so norms and biases are not the trivial 1 and 0.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():  # tied parameters are listed once
        if name.endswith("norm.weight"):
            values = 0.6 + 0.8 * torch.rand(param.shape, generator=gen)
        else:
            values = torch.randn(param.shape, generator=gen) * INIT_STD
        param.data.copy_(values.to(param.dtype))


def _build(name: str, folder: Path) -> None:
    config_cls, overrides, seed, dtype, shard = SPECS[name]
    config = config_cls(**_BASE, **overrides)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    _randomize(model, seed)
    model = model.to(dtype)
    if folder.exists():
        shutil.rmtree(folder)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(folder, **kwargs)
    for path in folder.iterdir():
        if not (path.name in KEEP_FILES or path.suffix == ".safetensors"):
            path.unlink()


def load(folder: Path):
    """Load a checkpoint folder as the reference does: fp32 compute, eager attention."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return model


def _choose_prompt(model, vocab: int, length: int, seed: int) -> tuple[list[int], list[int], list[float]]:
    """Random ids in [3, vocab) (0..2 are unk/bos/eos) whose greedy path has no near-tie."""
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(200):
        ids = torch.randint(3, vocab, (length,), generator=gen).tolist()
        tokens, margins = greedy(model, ids, GREEDY_STEPS)
        if best is None or min(margins) > min(best[2]):
            best = (ids, tokens, margins)
        if min(margins) >= MIN_MARGIN:
            return ids, tokens, margins
    raise RuntimeError(f"no prompt of length {length} with greedy margin >= {MIN_MARGIN}; best {min(best[2])}")


def generate(name: str, out_root: Path) -> dict:
    folder = out_root / name
    _build(name, folder)
    model = load(folder)
    vocab = model.config.vocab_size
    seed = SPECS[name][2]
    cases = []
    for index, length in enumerate(PROMPT_LENGTHS):
        ids, tokens, margins = _choose_prompt(model, vocab, length, seed * 100 + length)
        check_greedy_without_cache(model, ids, tokens, margins)
        logits = prompt_logits(model, ids)
        file = f"case{index}.logits.f32"
        write_logits(folder / file, logits)
        cases.append(
            {
                "input_ids": ids,
                "logits_file": file,
                "logits_shape": list(logits.shape),
                "greedy": tokens,
                "greedy_min_margin": round(min(margins), 6),
            }
        )
    expected = {"reference": reference_string(), "cases": cases}
    write_json(folder / "expected.json", expected)
    return expected


def verify(folder: Path, expected: dict) -> list[str]:
    """Reload the folder and recompute every case; returns the problems found (empty when all good)."""
    model = load(folder)
    problems = []
    for index, case in enumerate(expected["cases"]):
        stored = read_logits(folder / case["logits_file"], case["logits_shape"])
        fresh = prompt_logits(model, case["input_ids"]).numpy()
        diff = relative_diff(fresh, stored)
        tokens, _ = greedy(model, case["input_ids"], len(case["greedy"]))
        print(f"  {folder.name} case{index}: T={len(case['input_ids'])} rel diff {diff:.2e}, "
              f"greedy {'same' if tokens == case['greedy'] else 'DIFFERENT'}, "
              f"min margin {case['greedy_min_margin']:.3f}")
        if diff > 1e-6:
            problems.append(f"{folder.name} case{index}: logits differ by {diff:.2e}")
        if tokens != case["greedy"]:
            problems.append(f"{folder.name} case{index}: greedy {tokens} != {case['greedy']}")
    return problems
