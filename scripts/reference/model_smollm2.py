"""SmolLM2-135M-Instruct Q4_1 GGUF: reference logits and 64-token greedy continuations.

Reference = transformers loading the GGUF (`from_pretrained(folder, gguf_file=name)`). For the
`llama` GGUF architecture transformers 5.24 takes its legacy path: every tensor is dequantised to
float32 by the `gguf` package (numpy) and the q/k rows are un-permuted back to the Hugging Face
layout. `check_weights` re-derives every weight independently from the file and asserts they are
bit-identical to what the model holds, so the reference really is "fp32 math on the dequantised
weights".
"""

import os
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, dequantize
from transformers import AutoModelForCausalLM, AutoTokenizer

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

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-q4_1"
GREEDY_STEPS = 64

# (kind, payload): "text" is tokenized as is (this tokenizer adds no BOS: add_bos_token is false in
# the GGUF); "chat" is a message list rendered with the GGUF's chat template and
# add_generation_prompt=True (the template inserts SmolLM's default system prompt when the first
# message is not a system message).
PROMPTS = [
    ("text", "The capital of Germany is"),
    ("chat", [{"role": "user", "content": "Write a haiku about the ocean."}]),
    ("text", "import numpy as np\n\n\ndef softmax(x):\n"),
    (
        "chat",
        [
            {"role": "system", "content": "You are a concise assistant. Answer in at most two sentences."},
            {"role": "user", "content": "Give me three tips for writing clean code."},
            {"role": "assistant", "content": "Use clear names, keep functions small, and write tests."},
            {"role": "user", "content": "Now explain the first tip."},
        ],
    ),
    (
        "text",
        "Photosynthesis is the process by which green plants, algae and some bacteria turn light into "
        "chemical energy. In the chloroplasts, chlorophyll absorbs mostly blue and red light; water is "
        "split, oxygen is released, and the energy is stored in ATP and NADPH. In the Calvin cycle these "
        "molecules fix carbon dioxide from the air into sugars such as glucose (C₆H₁₂O₆). Roughly "
        "100–115 billion tonnes of carbon are fixed this way every year — about half on land and half "
        "in the oceans.\n\nQuestion: What gas is released?\nAnswer:",
    ),
]
# These five were picked from a dozen candidates for having no near-tie on their greedy path
# (smallest top1-top2 gap >= 0.08 logits over all 64 steps; the 1e-3 relative tolerance is ~0.03).

_GGUF_TO_HF = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def model_dir() -> Path:
    return Path(os.environ.get("TPSERVE_MODELS", Path.home() / ".cache/tpserve/models"))


def load():
    folder = model_dir()
    if not (folder / MODEL_FILE).is_file():
        raise FileNotFoundError(f"{folder / MODEL_FILE} is missing: run scripts/fetch-models.sh first")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=MODEL_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=MODEL_FILE, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights are not float32"
    return tokenizer, model


def _unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp stores q/k rows per head as (i, half) pairs, HF as (half, i) (rotate-half RoPE).

    HF row h*hd + half*hd/2 + i == GGUF row h*hd + 2*i + half.
    """
    hd = w.shape[0] // n_head
    h, half, i = np.meshgrid(np.arange(n_head), np.arange(2), np.arange(hd // 2), indexing="ij")
    gguf_rows = (h * hd + 2 * i + half).reshape(-1)  # in HF row order
    return w[gguf_rows]


def check_weights(model) -> int:
    """Dequantise every tensor of the file with the gguf package and compare with the model's."""
    reader = GGUFReader(model_dir() / MODEL_FILE)
    params = dict(model.named_parameters(remove_duplicate=False))
    cfg = model.config
    checked = 0
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if parts[0] == "blk":
            hf = f"model.layers.{parts[1]}.{_GGUF_TO_HF[parts[2]]}.{parts[3]}"
        else:
            hf = f"{_GGUF_TO_HF[parts[0]]}.{parts[1]}"
        ref = params[hf].detach().numpy()
        w = dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(ref.shape)
        if parts[-2] == "attn_q":
            w = _unpermute_rows(w, cfg.num_attention_heads)
        elif parts[-2] == "attn_k":
            w = _unpermute_rows(w, cfg.num_key_value_heads)
        if not np.array_equal(w, ref):
            raise AssertionError(f"{tensor.name} -> {hf}: max diff {np.max(np.abs(w - ref))}")
        checked += 1
    # No output.weight in the file: the LM head must be the (Q8_0) token embedding itself.
    assert "output.weight" not in {t.name for t in reader.tensors}
    assert np.array_equal(params["lm_head.weight"].detach().numpy(), params["model.embed_tokens.weight"].detach().numpy())
    return checked


def _encode(tokenizer, kind: str, payload) -> tuple[str, list[int]]:
    if kind == "text":
        return payload, tokenizer(payload).input_ids
    text = tokenizer.apply_chat_template(payload, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    direct = tokenizer.apply_chat_template(payload, tokenize=True, add_generation_prompt=True)
    direct = direct["input_ids"] if hasattr(direct, "keys") else direct
    assert list(direct) == ids, "chat template: tokenizing the rendered text differs from tokenize=True"
    return text, ids


def generate(out_root: Path) -> dict:
    tokenizer, model = load()
    print(f"  weights: {check_weights(model)} GGUF tensors equal the gguf package's dequantisation")
    folder = out_root / FOLDER_NAME
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.logits.f32"):
        old.unlink()
    cases = []
    for index, (kind, payload) in enumerate(PROMPTS):
        text, ids = _encode(tokenizer, kind, payload)
        tokens, margins = greedy(model, ids, GREEDY_STEPS)
        drift = check_greedy_without_cache(model, ids, tokens, margins)
        logits = prompt_logits(model, ids)[-1]  # [V]: last prompt position only
        file = f"case{index}.logits.f32"
        write_logits(folder / file, logits)
        case = {
            "text": text,
            "input_ids": ids,
            "logits_file": file,
            "logits_shape": list(logits.shape),
            "greedy": tokens,
            "greedy_min_margin": round(min(margins), 6),
            "greedy_margins": [round(m, 4) for m in margins],
            "greedy_text": tokenizer.decode(tokens),
        }
        if kind == "chat":
            case["messages"] = payload
        cases.append(case)
        print(f"  case{index} ({kind}): T={len(ids)} max|logit| {float(logits.abs().max()):.2f} "
              f"min margin {min(margins):.4f} (cache vs no-cache margin drift {drift:.1e}) "
              f"-> {tokenizer.decode(tokens)[:60]!r}")
    expected = {
        "model": MODEL_FILE,
        "reference": reference_string("GGUF dequantised to fp32 by the gguf package (transformers' GGUF loader)"),
        "cases": cases,
    }
    write_json(folder / "expected.json", expected)
    return expected


def verify(folder: Path, expected: dict) -> list[str]:
    tokenizer, model = load()
    problems = []
    for index, case in enumerate(expected["cases"]):
        ids = case["input_ids"]
        if case.get("messages"):
            _, fresh_ids = _encode(tokenizer, "chat", case["messages"])
        else:
            _, fresh_ids = _encode(tokenizer, "text", case["text"])
        stored = read_logits(folder / case["logits_file"], case["logits_shape"])
        fresh = prompt_logits(model, ids)[-1].numpy()
        diff = relative_diff(fresh, stored)
        tokens, _ = greedy(model, ids, len(case["greedy"]))
        print(f"  {folder.name} case{index}: T={len(ids)} rel diff {diff:.2e}, ids "
              f"{'same' if fresh_ids == ids else 'DIFFERENT'}, greedy {'same' if tokens == case['greedy'] else 'DIFFERENT'}")
        if fresh_ids != ids:
            problems.append(f"{folder.name} case{index}: tokenization changed")
        if diff > 1e-6:
            problems.append(f"{folder.name} case{index}: logits differ by {diff:.2e}")
        if tokens != case["greedy"]:
            problems.append(f"{folder.name} case{index}: greedy differs")
    return problems
