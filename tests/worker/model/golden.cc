#include "tests/worker/model/golden.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "worker/model/llama.h"

namespace tpserve::testing {

std::vector<GoldenCase> LoadGoldenCases(const std::string& name) {
  const std::string dir = std::string(kGoldenDir) + "/" + name;
  std::ifstream in(dir + "/expected.json");
  if (!in) {
    ADD_FAILURE() << "cannot read " << dir << "/expected.json";
    return {};
  }
  const nlohmann::json j = nlohmann::json::parse(in);
  std::vector<GoldenCase> cases;
  for (const auto& c : j.at("cases")) {
    GoldenCase g;
    g.input_ids = c.at("input_ids").get<std::vector<int32_t>>();
    g.logits_shape = c.at("logits_shape").get<std::vector<int64_t>>();
    g.greedy = c.at("greedy").get<std::vector<int32_t>>();
    int64_t n = 1;
    for (int64_t d : g.logits_shape) n *= d;
    g.logits.resize(n);
    const std::string file = dir + "/" + c.at("logits_file").get<std::string>();
    std::ifstream lf(file, std::ios::binary);
    lf.read(reinterpret_cast<char*>(g.logits.data()), n * sizeof(float));
    if (!lf || lf.gcount() != static_cast<std::streamsize>(n * sizeof(float))) {
      ADD_FAILURE() << "cannot read " << n << " floats from " << file;
      return {};
    }
    cases.push_back(std::move(g));
  }
  return cases;
}

double RelativeDiff(const float* a, const float* b, int64_t n) {
  double max_diff = 0.0, max_ref = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[i])));
  }
  return max_ref == 0.0 ? max_diff : max_diff / max_ref;
}

std::string ModelsDir() {
  if (const char* m = std::getenv("TPSERVE_MODELS"); m != nullptr && *m != '\0') return m;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/tpserve/models";
}

std::unique_ptr<Engine> OpenEngine(const std::string& path, int64_t num_blocks,
                                   CpuPrecision precision, std::optional<KvDType> kv_dtype) {
  auto e = std::make_unique<Engine>(precision, kv_dtype);
  auto files = OpenModelFiles(path);
  EXPECT_TRUE(files.ok()) << files.status();
  if (!files.ok()) return nullptr;
  e->files = std::move(*files);
  auto model = LoadCausalLm(e->files, SingleRankPlan(e->files.config), e->backend, e->comm);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return nullptr;
  e->model = std::move(*model);
  auto runner = ModelRunner::Create(*e->model, e->backend, true, num_blocks);
  EXPECT_TRUE(runner.ok()) << runner.status();
  if (!runner.ok()) return nullptr;
  e->runner = std::move(*runner);
  return e;
}

std::vector<float> RunCase(ModelRunner& runner, const GoldenCase& c, bool all_logits,
                           std::vector<int32_t>* greedy) {
  const int64_t total = c.input_ids.size() + c.greedy.size();
  std::vector<int32_t> table;
  for (int64_t b = 0; b * 16 < total; ++b) table.push_back(static_cast<int32_t>(b));
  StepSequence seq{
      .tokens = c.input_ids, .start_pos = 0, .block_table = table, .all_logits = all_logits};
  auto r = runner.Execute(Step{.sequences = {seq}, .return_logits = true});
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return {};
  std::vector<float> logits = r->logits;
  greedy->push_back(r->tokens[0]);
  seq.all_logits = false;
  while (greedy->size() < c.greedy.size()) {
    seq.start_pos += seq.tokens.size();
    seq.tokens = {greedy->back()};
    auto d = runner.Execute(Step{.sequences = {seq}});
    EXPECT_TRUE(d.ok()) << d.status();
    if (!d.ok()) break;
    greedy->push_back(d->tokens[0]);
  }
  return logits;
}

}  // namespace tpserve::testing
