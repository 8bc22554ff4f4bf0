#include "tests/common/tokenizer/golden_test_util.h"

#include <zlib.h>

#include "nlohmann/json.hpp"

namespace tpserve::testing {

std::vector<std::string> ReadLines(const std::string& path) {
  std::vector<std::string> lines;
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files too
  if (f == nullptr) return lines;
  std::string line;
  char buf[1 << 16];
  while (gzgets(f, buf, sizeof(buf)) != nullptr) {
    line += buf;
    if (!line.empty() && line.back() == '\n') {
      line.pop_back();
      lines.push_back(std::move(line));
      line.clear();
    }
  }
  if (!line.empty()) lines.push_back(std::move(line));
  gzclose(f);
  return lines;
}

std::vector<GoldenEntry> LoadGolden(const std::string& name) {
  std::vector<std::string> corpus = ReadLines(std::string(kGoldenDir) + "/corpus.jsonl");
  std::vector<std::string> golden = ReadLines(std::string(kGoldenDir) + "/" + name + ".jsonl.gz");
  std::vector<GoldenEntry> out;
  if (corpus.size() != golden.size()) return out;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string& cline = corpus[i];
    const std::string& gline = golden[i];
    GoldenEntry e;
    e.text = nlohmann::json::parse(cline).get<std::string>();
    auto g = nlohmann::json::parse(gline);
    e.ids = g["ids"].get<std::vector<int32_t>>();
    e.has_full = out.size() < 400;  // FULL_ENTRIES in the script
    if (g.contains("ns")) e.ns = g["ns"].get<std::vector<int32_t>>();
    if (e.has_full && !e.ns) e.ns = e.ids;
    if (g.contains("dec")) e.dec = g["dec"].get<std::string>();
    if (e.has_full && !e.dec) e.dec = e.text;
    e.skip = g.contains("skip") ? g["skip"].get<std::string>() : e.text;
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace tpserve::testing
