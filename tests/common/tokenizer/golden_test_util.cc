#include "tests/common/tokenizer/golden_test_util.h"

#include <fstream>

#include "nlohmann/json.hpp"

namespace tpserve::testing {

std::vector<GoldenEntry> LoadGolden(const std::string& name) {
  std::ifstream corpus(std::string(kGoldenDir) + "/corpus.jsonl");
  std::ifstream golden(std::string(kGoldenDir) + "/" + name + ".jsonl");
  std::vector<GoldenEntry> out;
  std::string cline, gline;
  while (std::getline(corpus, cline) && std::getline(golden, gline)) {
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
