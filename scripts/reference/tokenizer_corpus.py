"""Builds the tokenizer parity corpus (tests/data/golden/tokenizer/corpus.jsonl).

Entries are JSON strings, one per line, so that an entry may itself hold newlines, tabs and runs of
whitespace. Sources, all offline and deterministic:
  - scripts/reference/tokenizer_corpus_extra.txt: hand-written lines (a Chinese article on
    Transformers, Japanese, other scripts, emoji and ZWJ sequences, digits, code, special-token
    strings inside text, whitespace runs); `\\n`, `\\t`, `\\r`, `\\uXXXX`, `\\UXXXXXXXX` are unescaped;
  - English prose and code taken from the docstrings and sources of installed Python packages;
  - variants of the above (upper-cased, leading space, glued pairs, multi-line code blocks), and
    empty / whitespace-only entries.
"""

import json
import pathlib
import random
import re

HERE = pathlib.Path(__file__).resolve().parent
_ESC = re.compile(r"\\(n|t|r|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})")


def _unescape(line: str) -> str:
    def sub(m):
        s = m.group(1)
        return {"n": "\n", "t": "\t", "r": "\r"}.get(s) or chr(int(s[1:], 16))

    return _ESC.sub(sub, line)


def _package_files(pattern: str):
    import jinja2, json as _json, email  # noqa: F401  (stdlib/json and jinja2 ship prose docstrings)

    roots = [pathlib.Path(jinja2.__file__).parent, pathlib.Path(email.__file__).parent,
             pathlib.Path(_json.__file__).parent, pathlib.Path(random.__file__).parent / "asyncio"]
    files = []
    for root in roots:
        files.extend(sorted(root.glob(pattern)))
    return files


def _prose_and_code(rng: random.Random):
    prose, code = [], []
    for f in _package_files("*.py"):
        text = f.read_text(encoding="utf-8", errors="replace")
        for doc in re.findall(r'"""(.*?)"""', text, flags=re.S):
            for para in re.split(r"\n\s*\n", doc):
                words = " ".join(para.split())
                if len(words) > 40 and not words.startswith(">>>"):
                    prose.append(words)
        lines = text.splitlines()
        code.extend(l for l in lines if l.strip() and not l.strip().startswith("#"))
    rng.shuffle(prose)
    rng.shuffle(code)
    return prose, code


def build_corpus() -> list[str]:
    rng = random.Random(20261128)
    extra = [_unescape(l.rstrip("\n")) for l in
             (HERE / "tokenizer_corpus_extra.txt").read_text(encoding="utf-8").splitlines(True)]
    prose, code = _prose_and_code(rng)
    out = ["", " ", "  ", "\n", "\t", "\r\n", "a", " a", "a ", "\n\n\n", "     \n     "]
    out += extra
    out += [" " + l for l in extra]
    out += [l.upper() for l in extra]
    out += [a + b for a, b in zip(extra, extra[1:])]
    out += prose[:1400]
    out += code[:900]
    # Multi-line blocks keep indentation and newline runs together in one entry.
    for i in range(200):
        start = rng.randrange(0, max(1, len(code) - 8))
        out.append("\n".join(code[start:start + rng.randint(2, 8)]) + "\n" * rng.randint(0, 3))
    # Prose sentences with special-token strings and CJK spliced in at random places.
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<s>", "</s>", "[CLS]", "[SEP]",
                "<|begin_of_text|>", "<|eot_id|>", "<unk>", "[MASK]"]
    cjk = [l for l in extra if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", l)]
    for i in range(300):
        words = rng.choice(prose[1400:] or prose).split(" ")
        pos = rng.randrange(0, len(words) + 1)
        ins = rng.choice(specials) if i % 2 == 0 else rng.choice(cjk)
        glue = rng.choice(["", " ", "  ", "\n"])
        out.append(" ".join(words[:pos]) + glue + ins + glue + " ".join(words[pos:]))
    return out


def main():
    corpus = build_corpus()
    path = HERE.parents[1] / "tests/data/golden/tokenizer/corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for entry in corpus:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    print(f"{path}: {len(corpus)} entries")


if __name__ == "__main__":
    main()
