#!/usr/bin/env python3
"""Writes (or verifies) the model-engine goldens in tests/data/golden/models/.

    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_model_goldens.py [--only NAME ...]
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_model_goldens.py --verify

Tiny random-weight checkpoints (model_tiny.py) and SmolLM2-135M-Instruct Q4_1 (model_smollm2.py,
needs the file from scripts/fetch-models.sh and the `accelerate` package, which transformers
requires to load any GGUF). The format is described in tests/data/golden/models/README.md.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_common import setup_determinism  # noqa: E402

setup_determinism()

import model_smollm2  # noqa: E402
import model_tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/data/golden/models"
ALL = list(model_tiny.SPECS) + [model_smollm2.FOLDER_NAME]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=ALL, help="only these folders")
    parser.add_argument("--verify", action="store_true", help="reload and recompute; write nothing")
    args = parser.parse_args()
    names = args.only or ALL

    problems = []
    for name in names:
        start = time.time()
        folder = OUT / name
        module = model_smollm2 if name == model_smollm2.FOLDER_NAME else model_tiny
        if args.verify:
            expected = json.loads((folder / "expected.json").read_text())
            problems += module.verify(folder, expected)
        elif module is model_tiny:
            model_tiny.generate(name, OUT)
            # Generation already ran on the reloaded folder; this re-reads the files just written.
            problems += model_tiny.verify(folder, json.loads((folder / "expected.json").read_text()))
        else:
            model_smollm2.generate(OUT)
        print(f"{name}: {'verified' if args.verify else 'written'} in {time.time() - start:.1f} s", flush=True)
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
