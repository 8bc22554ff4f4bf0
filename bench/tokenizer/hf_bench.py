"""Single-thread encode throughput of Hugging Face `tokenizers` on the parity corpus.

usage: hf_bench.py <tokenizer.json | file.gguf> <corpus.jsonl> [seconds]
A .gguf is loaded through transformers (its backend tokenizer is what gets timed). Timed both as
one encode_batch call per pass (sequential: TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1) and
as one encode call per entry; the faster figure is reported.
"""
import json
import os
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
from tokenizers import Tokenizer  # noqa: E402


def load(path):
    if path.endswith(".gguf"):
        from transformers import AutoTokenizer
        t = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
        return t.backend_tokenizer
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.no_truncation()
    return tok


def main():
    path, corpus_path = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    tok = load(path)
    corpus = [json.loads(l) for l in open(corpus_path, encoding="utf-8")]
    nbytes = sum(len(s.encode("utf-8")) for s in corpus)
    tok.encode_batch(corpus)  # warm-up

    def run(encode_pass):
        passes, tokens = 0, 0
        start = time.perf_counter()
        while True:
            tokens += encode_pass()
            passes += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return nbytes * passes / elapsed / 1e6, tokens / elapsed, passes

    # The faster of a batch call per pass and one call per entry: the library's best figure.
    batch = run(lambda: sum(len(e.ids) for e in tok.encode_batch(corpus)))
    single = run(lambda: sum(len(tok.encode(s).ids) for s in corpus))
    mbps, tps, passes = max(batch, single)
    print(f"tokenizers {os.path.basename(path)}: {mbps:.2f} MB/s, {tps:.0f} tokens/s "
          f"({nbytes} bytes x {passes} passes; batch {batch[0]:.2f} MB/s, per-entry {single[0]:.2f} MB/s)")


if __name__ == "__main__":
    main()
