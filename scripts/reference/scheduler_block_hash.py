#!/usr/bin/env python3
"""Writes tests/data/golden/scheduler/block_hashes.json: chain hashes of prefix-cache blocks.

Independent reference for coordinator/scheduler/block_hash.cc. Definition (DESIGN §4, prefix
caching): a full block's hash is FNV-1a 64 over the parent block's hash (uint64, little-endian;
0 for the first block) followed by the block's tokens (int32, little-endian each). A partial tail
block has no hash.

Usage: python3 scripts/reference/scheduler_block_hash.py  (pure Python, no packages needed)
"""
import json
import pathlib
import random
import struct

FNV_OFFSET = 14695981039346656037
FNV_PRIME = 1099511628211
MASK = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for byte in data:
        h ^= byte
        h = (h * FNV_PRIME) & MASK
    return h


def block_hash(parent: int, tokens) -> int:
    return fnv1a64(struct.pack("<Q", parent) + struct.pack(f"<{len(tokens)}i", *tokens))


def chain(tokens, block_size):
    hashes, parent = [], 0
    for i in range(len(tokens) // block_size):
        parent = block_hash(parent, tokens[i * block_size:(i + 1) * block_size])
        hashes.append(parent)
    return hashes


def main():
    rng = random.Random(20261128)
    cases = []
    # Shapes that matter: empty, shorter than a block, exactly one block, a partial tail, a
    # shared prefix that diverges in the second block, negative and large token ids, block size 1.
    base = [rng.randrange(49152) for _ in range(40)]
    diverged = base[:20] + [7] + base[21:]
    for name, tokens, bs in [
        ("empty", [], 16),
        ("short", base[:5], 16),
        ("one_block", base[:16], 16),
        ("partial_tail", base, 16),
        ("diverges_in_block_1", diverged, 16),
        ("edge_values", [0, -1, 2**31 - 1, -(2**31), 49151, 1, 2, 3], 4),
        ("block_size_1", base[:6], 1),
        ("long", [rng.randrange(49152) for _ in range(200)], 32),
    ]:
        cases.append({
            "name": name,
            "block_size": bs,
            "tokens": tokens,
            "hashes": [str(h) for h in chain(tokens, bs)],  # strings: JSON numbers lose 64 bits
        })
    out = pathlib.Path(__file__).resolve().parents[2] / "tests/data/golden/scheduler/block_hashes.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"definition": " ".join(__doc__.splitlines()[2:6]), "cases": cases}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
