// Single-thread encode throughput on the parity corpus.
//   tpserve_tokenizer_bench <tokenizer.json | HF folder | file.gguf> <corpus.jsonl> [seconds]
// Prints one line: "tpserve <name>: <MB/s> MB/s, <tokens/s> tokens/s (<bytes> bytes x <passes>)".
// bench/tokenizer/run.sh runs it next to the Hugging Face `tokenizers` library on the same corpus.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/format/gguf.h"
#include "common/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

absl::StatusOr<std::unique_ptr<tpserve::Tokenizer>> Load(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) return tpserve::Tokenizer::FromHfFolder(path);
  if (path.size() > 5 && path.substr(path.size() - 5) == ".gguf") {
    auto gguf = tpserve::GgufFile::Open(path);
    if (!gguf.ok()) return gguf.status();
    return tpserve::Tokenizer::FromGguf(**gguf);
  }
  return tpserve::Tokenizer::FromTokenizerJson(path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s <tokenizer.json|folder|file.gguf> <corpus.jsonl> [seconds]\n",
                 argv[0]);
    return 2;
  }
  double seconds = argc > 3 ? std::atof(argv[3]) : 3.0;
  auto tok = Load(argv[1]);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  std::vector<std::string> corpus;
  std::ifstream in(argv[2]);
  for (std::string line; std::getline(in, line);)
    corpus.push_back(nlohmann::json::parse(line).get<std::string>());
  size_t bytes = 0;
  for (const auto& s : corpus) bytes += s.size();

  using Clock = std::chrono::steady_clock;
  size_t tokens = 0;
  int passes = 0;
  // One warm-up pass (fills the BPE cache, as the reference's cache fills), then timed passes.
  for (const auto& s : corpus) (void)(*tok)->Encode(s);
  auto start = Clock::now();
  double elapsed = 0;
  do {
    for (const auto& s : corpus) tokens += (*tok)->Encode(s)->size();
    ++passes;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  double mbps = bytes * passes / elapsed / 1e6;
  std::printf("tpserve %s: %.2f MB/s, %.0f tokens/s (%zu bytes x %d passes)\n",
              std::filesystem::path(argv[1]).filename().c_str(), mbps, tokens / elapsed, bytes,
              passes);
  return 0;
}
