"""Builds the tokenizer parity goldens in tests/data/golden/tokenizer/.

Run with the reference stack:  .venv-ref/bin/python scripts/reference/make_tokenizer_goldens.py
(TPSERVE_MODELS, default ~/.cache/tpserve/models, must hold all-MiniLM-L6-v2/ and the SmolLM2 GGUF.)

For each tokenizer kind it writes <name>.jsonl.gz (gzip, mtime 0, so reruns are byte-identical when
the data is), one JSON object per corpus entry:
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

import gzip
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


def gpt2_prefix(corpus):
    """RoBERTa layout: ByteLevel with add_prefix_space, RobertaProcessing."""
    tok = _train_byte_level(corpus, None, ["<s>", "<pad>", "</s>", "<unk>"], 900)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    return tok, {"bos_token": "<s>", "eos_token": "</s>"}


def wordpiece_misc(corpus):
    """A trained WordPiece behind NFKC + Lowercase + regex Replace + Strip, WhitespaceSplit,
    contiguous Punctuation and Digits; BertProcessing."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=30))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                           normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation("contiguous"),
                                                 pre_tokenizers.Digits(individual_digits=False)])
    trainer = trainers.WordPieceTrainer(vocab_size=1500, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"],
                                        show_progress=False, limit_alphabet=300)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", 2), ("[CLS]", 1))
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tok, {"bos_token": "[CLS]", "eos_token": "[SEP]"}


def bpe_misc(corpus):
    """A BPE with a continuing-subword prefix and an end-of-word suffix (BPEDecoder), behind
    NFD + StripAccents + NFC, and Split with every delimiter behavior and an inverted pattern."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.NFC()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
        pre_tokenizers.Split(Regex(r"[.,!?;:]"), behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[-_/]"), behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"\d"), behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"[^()\[\]{}<>]+"), behavior="isolated", invert=True),
        pre_tokenizers.Whitespace()])
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["[UNK]"], show_progress=False,
                                  continuing_subword_prefix="##", end_of_word_suffix="</w>", limit_alphabet=300)
    tok.train_from_iterator(corpus, trainer)
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    return tok, {"bos_token": None, "eos_token": None}


TRAINED = [gpt2_bpe, llama3_bpe, qwen2_bpe, sp_bpe, sp_bpe_metaspace, gpt2_prefix, wordpiece_misc, bpe_misc]


def write_gguf(path, arch, model, tokens, types, scores=None, merges=None, **ids):
    """A GGUF holding only tokenizer metadata (and the few model keys transformers reads)."""
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(512)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_tokenizer_model(model)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    for key, value in ids.items():
        w.add_uint32(f"tokenizer.ggml.{key}", value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sp_bpe_gguf(sp_tok):
    """llama.cpp's SentencePiece layout of the sp_bpe vocabulary: no merges (they are recovered from
    the scores), token types 2 = unknown, 3 = control, 6 = byte."""
    data = json.loads(sp_tok.to_str())["model"]
    by_id = sorted(data["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in by_id]
    merged_rank = {}
    for rank, m in enumerate(data["merges"]):
        a, b = m if isinstance(m, list) else m.split(" ")
        merged_rank.setdefault(a + b, rank)
    scores = [-float(merged_rank.get(t, 0)) for t in tokens]
    types = [2 if t == "<unk>" else 3 if t in ("<s>", "</s>") else 6 if t.startswith("<0x") else 1 for t in tokens]
    path = OUT / "sp_bpe.gguf"
    write_gguf(path, "llama", "llama", tokens, types, scores=scores, bos_token_id=1, eos_token_id=2,
               unknown_token_id=0)
    return path


def minilm_gguf():
    """llama.cpp's BERT layout of all-MiniLM-L6-v2's vocabulary: "▁word" for word starts,
    "piece" for "##piece", [X] tokens as they are (control)."""
    vocab = json.loads((MODELS / "all-MiniLM-L6-v2/tokenizer.json").read_text())["model"]["vocab"]
    tokens = []
    for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if t.startswith("[") and t.endswith("]"):
            tokens.append(t)
        elif t.startswith("##"):
            tokens.append(t[2:])
        else:
            tokens.append("▁" + t)
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    types = [3 if t in specials else 1 for t in tokens]
    path = OUT / "minilm_bert.gguf"
    write_gguf(path, "bert", "bert", tokens, types, bos_token_id=101, eos_token_id=102,
               unknown_token_id=100, padding_token_id=0, seperator_token_id=102, cls_token_id=101,
               mask_token_id=103)
    return path


def open_gz(path):
    """A text stream writing a reproducible gzip file (no name, mtime 0)."""
    import io
    raw = open(path, "wb")
    return io.TextIOWrapper(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0), encoding="utf-8"), raw


def write_pairs(name, corpus, encode_pair):
    """encode(a, b) for 300 fixed pairs of corpus entries: {"a": index, "b": index, "ids": [...]}."""
    import random
    rng = random.Random(7)
    path = OUT / f"{name}_pairs.jsonl.gz"
    f, raw = open_gz(path)
    for _ in range(300):
        a, b = rng.randrange(len(corpus)), rng.randrange(len(corpus))
        f.write(json.dumps({"a": a, "b": b, "ids": encode_pair(corpus[a], corpus[b])}) + "\n")
    f.close()
    raw.close()
    print(f"{path}: {path.stat().st_size} bytes")


INVALID_UTF8 = [b"abc\xff\xfe def", b"\xe6\x97", b"ok \xe6\x97\xa5\xe6", b"\xc0\xaf", b"\xed\xa0\x80 x",
                b"\xf4\x90\x80\x80", b"\x80\x80\x80", b"\xf0\x9f\x98", b"a\xf0\x9f\x98b", b"\xe0\x80\xaf",
                b"<|im_start|>\xff<|im_end|>", b"[CLS]\xc3 \xa9", b"\xfe\xff", b"x\xc3\x28y"]


def write_invalid_utf8():
    """Invalid UTF-8 inputs and Python's errors="replace" decoding (the policy of Tokenizer::Encode)."""
    path = OUT / "invalid_utf8.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for raw in INVALID_UTF8:
            f.write(json.dumps({"hex": raw.hex(), "text": raw.decode("utf-8", "replace")}, ensure_ascii=False) + "\n")


def write_hf_folder(tok, chat_template):
    """qwen2_hf/: the qwen2_bpe tokenizer saved by transformers (tokenizer.json, tokenizer_config.json,
    chat_template.jinja) with SmolLM2's chat template and a generation_config.json listing two EOS
    ids; qwen2_hf_meta.json: what transformers reports for it."""
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=chat_template)
    folder = OUT / "qwen2_hf"
    fast.save_pretrained(str(folder))
    eos_ids = [fast.convert_tokens_to_ids("<|im_end|>"), fast.convert_tokens_to_ids("<|endoftext|>")]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}) + "\n")
    meta = {"bos_token": fast.bos_token, "eos_token": fast.eos_token, "eos_ids": eos_ids,
            "chat_template": fast.chat_template}
    (OUT / "qwen2_hf_meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")


def write_golden(name, corpus, encode, decode):
    path = OUT / f"{name}.jsonl.gz"
    f, raw = open_gz(path)
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
    f.close()
    raw.close()
    print(f"{path}: {path.stat().st_size} bytes")


def main():
    corpus = build_corpus()
    with open(OUT / "corpus.jsonl", "w", encoding="utf-8") as f:
        for entry in corpus:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    write_invalid_utf8()
    built = {}
    for build in TRAINED + [minilm]:
        tok, special = build(corpus)
        built[build.__name__] = tok
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

    for name in ("minilm", "llama3_bpe", "gpt2_prefix"):
        tok = built[name]
        write_pairs(name, corpus, lambda a, b: tok.encode(a, b).ids)

    from transformers import AutoTokenizer

    def transformers_golden(name, folder, gguf_file):
        t = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
        write_golden(name, corpus, lambda s, sp: t(s, add_special_tokens=sp)["input_ids"],
                     lambda ids, sk: t.decode(ids, skip_special_tokens=sk))
        return t

    smol = transformers_golden("smollm2_gguf", MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf")
    write_hf_folder(built["qwen2_bpe"], smol.chat_template)
    sp_path = sp_bpe_gguf(built["sp_bpe"])
    t = transformers_golden("sp_bpe_gguf", sp_path.parent, sp_path.name)
    if os.environ.get("TOKENIZER_DUMP"):
        t.save_pretrained(os.environ["TOKENIZER_DUMP"])
    # transformers has no BERT GGUF tokenizer; the reference for our FromGguf on a llama.cpp BERT
    # vocabulary is the original tokenizer.json, i.e. minilm.jsonl.
    minilm_gguf()


if __name__ == "__main__":
    main()
