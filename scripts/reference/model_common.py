"""Shared helpers for the model goldens: running a causal LM, greedy decoding, writing the files.

Everything runs on the CPU in float32 with eager attention, batch 1, no padding, so that the numbers
are the plain math of the reference implementation and nothing else.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
import transformers


def setup_determinism() -> None:
    """Offline, CPU, deterministic kernels, fixed thread count (reduction order stays the same)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)


def reference_string(extra: str = "") -> str:
    torch_version = torch.__version__.split("+")[0]
    text = f"transformers {transformers.__version__}, torch {torch_version}, fp32, eager attention"
    return text + (", " + extra if extra else "")


def top2_margin(logits: torch.Tensor) -> float:
    """logits: [V] -> top1 - top2 (>= 0)."""
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


@torch.no_grad()
def prompt_logits(model, input_ids: list[int]) -> torch.Tensor:
    """One forward pass over the whole prompt, no cache: [T, V] float32."""
    ids = torch.tensor([input_ids], dtype=torch.long)
    out = model(input_ids=ids, use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, input_ids: list[int], steps: int) -> tuple[list[int], list[float]]:
    """Greedy continuation with the KV cache, never stopping at EOS.

    Returns (tokens [steps], margins [steps]); margins[i] is top1-top2 of the logits that chose
    tokens[i] (margins[0] comes from the last prompt position).
    """
    ids = torch.tensor([input_ids], dtype=torch.long)
    out = model(input_ids=ids, use_cache=True)
    past = out.cache
    logits = out.logits[0, -1].float()
    tokens, margins = [], []
    for step in range(steps):
        token = int(torch.argmax(logits))
        tokens.append(token)
        margins.append(top2_margin(logits))
        if step + 1 == steps:
            break
        out = model(input_ids=torch.tensor([[token]]), cache=past, use_cache=True)
        past = out.cache
        logits = out.logits[0, -1].float()
    return tokens, margins


@torch.no_grad()
def check_greedy_without_cache(model, input_ids: list[int], tokens: list[int], margins: list[float]) -> float:
    """Recompute the greedy path in one cache-free pass; assert the same argmax at every step.

    Returns the largest |logit difference| between the cached and the cache-free path's margins,
    a measure of how much the reference itself moves between two equivalent computations.
    """
    full = prompt_logits(model, input_ids + tokens[:-1])  # [T + steps - 1, V]
    rows = full[len(input_ids) - 1 :]
    assert rows.shape[0] == len(tokens)
    worst = 0.0
    for i, (token, margin) in enumerate(zip(tokens, margins)):
        if int(torch.argmax(rows[i])) != token:
            raise AssertionError(f"step {i}: cache-free argmax {int(torch.argmax(rows[i]))} != cached {token}")
        worst = max(worst, abs(top2_margin(rows[i]) - margin))
    return worst


def write_logits(path: Path, logits: torch.Tensor) -> None:
    """Raw little-endian float32, row-major."""
    np.ascontiguousarray(logits.detach().cpu().numpy().astype("<f4")).tofile(path)


def read_logits(path: Path, shape: list[int]) -> np.ndarray:
    return np.fromfile(path, dtype="<f4").reshape(shape)


def relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| -- the measure the C++ tests use."""
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def write_json(path: Path, data: dict) -> None:
    """Compact lists (one case's ids on one line) but readable structure."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    # json.dumps puts every list element on its own line; fold lists of numbers back onto one line.
    # The raw newline after "[" cannot occur inside a JSON string, so string contents are never touched.
    text = re.sub(
        r"\[\n\s*([-0-9.e+,\s]+?)\n\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )
    path.write_text(text + "\n")
