#!/usr/bin/env python3
"""Golden values for `tpserve bench` and `tpserve models` (tools/, tests/tools/).

- percentiles.json: numpy.percentile (method "linear", numpy's default) of a few seeded random
  samples at the percentiles the bench report uses and some in between; the C++ Percentile must
  match it.
- models.json: what the model cache holds, read with the reference readers: `gguf` (GGUFReader) for
  .gguf files and `safetensors` + config.json for Hugging Face folders. Per model: format,
  architecture, parameter count (sum of tensor elements), elements per weight type, context length
  and size on disk. The C++ test compares `tpserve models`' DescribeModel with it and skips a model
  absent from the cache.

Run from the repository root (TPSERVE_MODELS or ~/.cache/tpserve/models holds the models):
    /work/main/.venv-ref/bin/python scripts/reference/make_tools_goldens.py
Writes tests/data/golden/tools/{percentiles,models}.json.
"""

import json
import os
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN_DIR = ROOT / "tests/data/golden/tools"
MODELS = pathlib.Path(os.environ.get("TPSERVE_MODELS", pathlib.Path.home() / ".cache/tpserve/models"))


def percentiles():
    rng = np.random.default_rng(20261128)
    cases = []
    for n in (1, 2, 7, 100, 1001):
        values = rng.lognormal(mean=3.0, sigma=1.0, size=n)  # latency-like, in ms
        ps = [0, 1, 37.5, 50, 90, 99, 99.9, 100]
        cases.append({
            "values": values.tolist(),
            "percentiles": ps,
            "expected": [float(np.percentile(values, p)) for p in ps],
            "mean": float(values.mean()),
            "max": float(values.max()),
        })
    return {"method": "numpy.percentile linear", "cases": cases}


def describe_gguf(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    field = r.fields["general.architecture"]
    arch = bytes(field.parts[field.data[0]]).decode()
    ctx_field = r.fields.get(f"{arch}.context_length")
    ctx = int(ctx_field.parts[ctx_field.data[0]][0]) if ctx_field else 0
    by_dtype = {}
    for t in r.tensors:
        name = t.tensor_type.name
        by_dtype[name] = by_dtype.get(name, 0) + int(t.n_elements)
    return {"format": "gguf", "architecture": arch, "context_length": ctx, "elements_by_dtype": by_dtype}


def describe_safetensors(folder):
    from safetensors import safe_open

    by_dtype = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="numpy") as st:
            for name in st.keys():
                sl = st.get_slice(name)
                n = int(np.prod(sl.get_shape(), dtype=np.int64))
                dtype = sl.get_dtype()
                by_dtype[dtype] = by_dtype.get(dtype, 0) + n
    config = json.loads((folder / "config.json").read_text())
    ctx = config.get("max_position_embeddings", config.get("n_positions", 0))
    return {"format": "safetensors", "architecture": config["model_type"], "context_length": ctx,
            "elements_by_dtype": by_dtype}


def models():
    out = {}
    for p in sorted(MODELS.iterdir()):
        if p.is_file() and p.suffix == ".gguf":
            d = describe_gguf(p)
            d["size_bytes"] = p.stat().st_size
        elif p.is_dir() and any(p.glob("*.safetensors")):
            d = describe_safetensors(p)
            d["size_bytes"] = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        else:
            continue
        d["parameters"] = sum(d["elements_by_dtype"].values())
        out[p.name] = d
    return out


def main():
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    (GOLDEN_DIR / "percentiles.json").write_text(json.dumps(percentiles(), indent=1) + "\n")
    (GOLDEN_DIR / "models.json").write_text(json.dumps(models(), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
