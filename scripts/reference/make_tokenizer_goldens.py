"""Builds the tokenizer parity goldens in tests/data/golden/tokenizer/.

Run with the reference stack:  .venv-ref/bin/python scripts/reference/make_tokenizer_goldens.py
(TPSERVE_MODELS, default ~/.cache/tpserve/models, must hold all-MiniLM-L6-v2/ and the SmolLM2 GGUF.)

For each tokenizer kind it writes <name>.jsonl, one JSON object per corpus entry:
  {"ids": [...]}          Tokenizer.encode(entry).ids (add_special_tokens=True)
  "ns": [...]             encode(entry, add_special_tokens=False).ids, when it differs from "ids"
  "dec": "..."            decode(ids), when it differs from the entry
  "skip": "..."           decode(ids, skip_special_tokens=True), when it differs from the entry
"ns" and "dec" are kept for the first FULL_ENTRIES entries only, to keep the files small.
Kinds: gpt2_bpe, llama3_bpe, qwen2_bpe (byte-level BPE with the GPT-2 / Llama-3 / Qwen2 split
regexes, trained here on the corpus with a small vocab), sp_bpe (SentencePiece-style BPE with byte
fallback, Llama-2/TinyLlama normalizer layout), sp_bpe_metaspace (the Mistral Metaspace layout),
minilm (the real all-MiniLM-L6-v2 WordPiece, padding and truncation off), smollm2_gguf (transformers
loading the SmolLM2 GGUF's tokenizer). The trained tokenizer.json files are committed next to the
goldens (<name>/tokenizer.json); the two real ones are read from TPSERVE_MODELS by the tests.
"""

import json
import os
import pathlib
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tokenizer_corpus import build_corpus  # noqa: E402

OUT = HERE.parents[1] / "tests/data/golden/tokenizer"
MODELS = pathlib.Path(os.environ.get("TPSERVE_MODELS", os.path.expanduser("~/.cache/tpserve/models")))
FULL_ENTRIES = 400

GPT2_SPLIT = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _train_byte_level(corpus, split, specials, vocab_size, normalizer=None):
    tok = Tokenizer(models.BPE())
    if normalizer is not None:
        tok.normalizer = normalizer
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return tok


def gpt2_bpe(corpus):
    tok = _train_byte_level(corpus, None, ["<|endoftext|>"], 900)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    # RoBERTa-style <mask> (lstrip) and a single-word token exercise the added-token options.
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, special=True)])
    tok.add_tokens([AddedToken("hello_world", single_word=True), AddedToken(" ::: ", rstrip=True)])
    return tok, {"bos_token": None, "eos_token": "<|endoftext|>"}


def llama3_bpe(corpus):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>"]
    tok = _train_byte_level(corpus, LLAMA3_SPLIT, specials, 1000)
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(data))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", 0)])])
    tok.add_tokens([AddedToken("<tool_call>", normalized=False), AddedToken("</tool_call>", normalized=False)])
    return tok, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}


def qwen2_bpe(corpus):
    tok = _train_byte_level(corpus, QWEN2_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 1000,
                            normalizer=normalizers.NFC())
    tok.add_tokens([AddedToken("<think>", normalized=False), AddedToken("</think>", normalized=False)])
    return tok, {"bos_token": None, "eos_token": "<|im_end|>"}


def _sentencepiece_bpe(corpus, layout):
    """A Llama-2 style vocabulary: <unk> <s> </s>, the 256 <0xXX> byte tokens, then trained pieces."""
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    base.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=1200, show_progress=False, limit_alphabet=400)
    base.train_from_iterator(corpus, trainer)
    trained = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    if layout == "normalizer":  # Llama-2 / TinyLlama tokenizer.json
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    else:  # Mistral-style Metaspace pre-tokenizer
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace("\u2581", "first", False)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken("<unk>", normalized=False, special=True),
                            AddedToken("<s>", normalized=False, special=True),
                            AddedToken("</s>", normalized=False, special=True)])
    return tok, {"bos_token": "<s>", "eos_token": "</s>"}


def sp_bpe(corpus):
    return _sentencepiece_bpe(corpus, "normalizer")


def sp_bpe_metaspace(corpus):
    return _sentencepiece_bpe(corpus, "metaspace")


def minilm(corpus):
    tok = Tokenizer.from_file(str(MODELS / "all-MiniLM-L6-v2/tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok, None


TRAINED = [gpt2_bpe, llama3_bpe, qwen2_bpe, sp_bpe, sp_bpe_metaspace]


def write_golden(name, corpus, encode, decode):
    path = OUT / f"{name}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, entry in enumerate(corpus):
            ids = encode(entry, True)
            rec = {"ids": ids}
            if i < FULL_ENTRIES:
                ns = encode(entry, False)
                if ns != ids:
                    rec["ns"] = ns
                dec = decode(ids, False)
                if dec != entry:
                    rec["dec"] = dec
            skip = decode(ids, True)
            if skip != entry:
                rec["skip"] = skip
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{path}: {path.stat().st_size} bytes")


def main():
    corpus = build_corpus()
    with open(OUT / "corpus.jsonl", "w", encoding="utf-8") as f:
        for entry in corpus:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    for build in TRAINED + [minilm]:
        tok, special = build(corpus)
        if special is not None:
            folder = OUT / build.__name__
            folder.mkdir(exist_ok=True)
            tok.save(str(folder / "tokenizer.json"))
            config = {"bos_token": special["bos_token"], "eos_token": special["eos_token"],
                      "tokenizer_class": "PreTrainedTokenizerFast"}
            (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
        write_golden(build.__name__, corpus,
                     lambda s, sp: tok.encode(s, add_special_tokens=sp).ids,
                     lambda ids, sk: tok.decode(ids, skip_special_tokens=sk))

    from transformers import AutoTokenizer
    smol = AutoTokenizer.from_pretrained(str(MODELS), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    write_golden("smollm2_gguf", corpus,
                 lambda s, sp: smol(s, add_special_tokens=sp)["input_ids"],
                 lambda ids, sk: smol.decode(ids, skip_special_tokens=sk))


if __name__ == "__main__":
    main()
