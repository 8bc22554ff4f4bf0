#include "tools/models.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/base/status_macros.h"
#include "common/format/gguf.h"
#include "common/format/model_config.h"
#include "common/format/safetensors.h"
#include "grpcpp/grpcpp.h"
#include "tpserve/v1/inference.grpc.pb.h"

namespace tpserve {
namespace {

namespace fs = std::filesystem;

// Parameter count and dtype mix of a tensor collection.
void CountTensors(const TensorSource& src, ModelSummary* m) {
  std::map<std::string, int64_t> by_dtype;
  for (const std::string& name : src.Names()) {
    const TensorInfo* t = src.Find(name);
    m->parameters += t->numel();
    by_dtype[DTypeName(t->dtype)] += t->numel();
  }
  std::vector<std::pair<int64_t, std::string>> order;
  for (const auto& [dtype, n] : by_dtype) order.emplace_back(-n, dtype);
  std::sort(order.begin(), order.end());
  if (order.empty()) return;
  m->weight_dtype = order[0].second;
  if (order.size() > 1) {
    std::vector<std::string> rest;
    for (size_t i = 1; i < order.size(); ++i) rest.push_back(order[i].second);
    absl::StrAppend(&m->weight_dtype, " (+", absl::StrJoin(rest, ", "), ")");
  }
}

int64_t SizeOnDisk(const fs::path& p) {
  std::error_code ec;
  if (fs::is_regular_file(p, ec)) return static_cast<int64_t>(fs::file_size(p, ec));
  int64_t total = 0;
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(p, ec)) {
    if (e.is_regular_file(ec)) total += static_cast<int64_t>(e.file_size(ec));
  }
  return total;
}

bool HasSafetensors(const fs::path& dir) {
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() == ".safetensors") return true;
  }
  return false;
}

absl::Status DescribeGguf(const std::string& path, ModelSummary* m) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> f, GgufFile::Open(path));
  m->format = "gguf";
  ASSIGN_OR_RETURN(m->architecture, f->GetString("general.architecture"));
  absl::StatusOr<int64_t> ctx = f->GetInt(absl::StrCat(m->architecture, ".context_length"));
  m->context_length = ctx.ok() ? *ctx : 0;
  CountTensors(*f, m);
  return absl::OkStatus();
}

absl::Status DescribeSafetensors(const std::string& path, ModelSummary* m) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsModel> st, SafetensorsModel::Open(path));
  m->format = "safetensors";
  const fs::path config = fs::path(path) / "config.json";
  std::error_code ec;
  if (fs::exists(config, ec)) {
    ASSIGN_OR_RETURN(ModelConfig c, ParseHfConfig(config.string()));
    m->architecture = c.architecture;
    m->context_length = c.max_position;
  }
  CountTensors(*st, m);
  return absl::OkStatus();
}

std::string Or(const std::string& s) { return s.empty() ? "-" : s; }

int PrintServerInfo(const std::string& server) {
  auto stub =
      v1::Inference::NewStub(grpc::CreateChannel(server, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::ModelInfo i;
  grpc::Status st = stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &i);
  if (!st.ok()) {
    std::fprintf(stderr, "tpserve models: cannot reach a tpserve server at %s: %s\n",
                 server.c_str(), st.error_message().c_str());
    return 2;
  }
  auto row = [](const char* k, const std::string& v) { std::printf("%-20s %s\n", k, v.c_str()); };
  row("name", i.name());
  row("architecture", i.architecture());
  row("kind", v1::ModelKind_Name(i.kind()));
  row("source", i.source());
  row("format", i.format());
  row("weight dtype", i.weight_dtype());
  row("compute dtype", i.compute_dtype());
  row("context length", absl::StrCat(i.context_length()));
  row("vocab size", absl::StrCat(i.vocab_size()));
  row("hidden / layers", absl::StrCat(i.hidden_size(), " / ", i.num_layers()));
  row("heads / kv heads",
      absl::StrCat(i.num_heads(), " / ", i.num_kv_heads(), " (head dim ", i.head_dim(), ")"));
  row("ffn size", absl::StrCat(i.ffn_size()));
  row("eos / bos ids",
      absl::StrCat(absl::StrJoin(i.eos_token_ids(), ","), " / ", i.bos_token_id()));
  row("chat template", i.has_chat_template() ? "yes" : "no");
  row("tensor parallel", absl::StrCat(i.tensor_parallel(), " x ", i.device()));
  row("kv cache", absl::StrCat(i.kv_blocks(), " blocks x ", i.kv_block_size(), " tokens"));
  row("batch limits", absl::StrCat(i.max_batch_sequences(), " sequences, ", i.max_batch_tokens(),
                                   " tokens per step"));
  row("server version", i.server_version());
  return 0;
}

}  // namespace

std::string ModelsDir(const std::string& dir) {
  if (!dir.empty()) return dir;
  if (const char* env = std::getenv("TPSERVE_MODELS"); env != nullptr && *env != '\0') return env;
  const char* home = std::getenv("HOME");
  return absl::StrCat(home != nullptr ? home : "", "/.cache/tpserve/models");
}

absl::StatusOr<ModelSummary> DescribeModel(const std::string& path) {
  ModelSummary m;
  const fs::path p(path);
  m.name = p.filename().string();
  m.path = path;
  m.size_bytes = SizeOnDisk(p);
  std::error_code ec;
  if (fs::is_regular_file(p, ec) && absl::EndsWith(path, ".gguf")) {
    RETURN_IF_ERROR(DescribeGguf(path, &m));
  } else if (fs::is_directory(p, ec) && HasSafetensors(p)) {
    RETURN_IF_ERROR(DescribeSafetensors(path, &m));
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a .gguf file nor a folder with *.safetensors"));
  }
  return m;
}

absl::StatusOr<std::vector<ModelSummary>> ListModels(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model folder ", dir, " does not exist (set TPSERVE_MODELS or pass --dir)"));
  }
  std::vector<ModelSummary> out;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const bool gguf = e.is_regular_file(ec) && e.path().extension() == ".gguf";
    if (!gguf && !(e.is_directory(ec) && HasSafetensors(e.path()))) continue;
    absl::StatusOr<ModelSummary> m = DescribeModel(e.path().string());
    if (m.ok()) {
      out.push_back(std::move(*m));
    } else {
      ModelSummary bad;
      bad.name = e.path().filename().string();
      bad.path = e.path().string();
      bad.size_bytes = SizeOnDisk(e.path());
      bad.error = std::string(m.status().message());
      out.push_back(std::move(bad));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const ModelSummary& a, const ModelSummary& b) { return a.name < b.name; });
  return out;
}

std::string HumanCount(int64_t n) {
  if (n >= 1'000'000'000) return absl::StrFormat("%.1fB", n / 1e9);
  if (n >= 1'000'000) return absl::StrFormat("%.1fM", n / 1e6);
  if (n >= 10'000) return absl::StrFormat("%.1fK", n / 1e3);
  return absl::StrCat(n);
}

std::string HumanBytes(int64_t n) {
  if (n >= (int64_t{1} << 30)) return absl::StrFormat("%.1f GiB", n / 1073741824.0);
  if (n >= (int64_t{1} << 20)) return absl::StrFormat("%.1f MiB", n / 1048576.0);
  if (n >= (int64_t{1} << 10)) return absl::StrFormat("%.1f KiB", n / 1024.0);
  return absl::StrCat(n, " B");
}

int RunModels(const ModelsOptions& o) {
  if (!o.server.empty()) return PrintServerInfo(o.server);
  const std::string dir = ModelsDir(o.dir);
  absl::StatusOr<std::vector<ModelSummary>> models = ListModels(dir);
  if (!models.ok()) {
    std::fprintf(stderr, "tpserve models: %s\n", std::string(models.status().message()).c_str());
    return 2;
  }
  std::printf("models in %s\n", dir.c_str());
  if (models->empty()) {
    std::printf("(none: put .gguf files or Hugging Face folders with *.safetensors there)\n");
    return 0;
  }
  const char* kRow = "%-36s %-12s %-8s %9s %10s  %-22s %8s\n";
  std::printf(kRow, "NAME", "FORMAT", "ARCH", "PARAMS", "SIZE", "WEIGHTS", "CONTEXT");
  for (const ModelSummary& m : *models) {
    if (!m.error.empty()) {
      std::printf("%-36s unreadable: %s\n", m.name.c_str(), m.error.c_str());
      continue;
    }
    std::printf(kRow, m.name.c_str(), m.format.c_str(), Or(m.architecture).c_str(),
                HumanCount(m.parameters).c_str(), HumanBytes(m.size_bytes).c_str(),
                Or(m.weight_dtype).c_str(),
                m.context_length > 0 ? absl::StrCat(m.context_length).c_str() : "-");
  }
  return 0;
}

CLI::App* AddModelsCommand(CLI::App& app, ModelsOptions& o) {
  CLI::App* cmd = app.add_subcommand(
      "models",
      "list the models in the cache folder (name, format, architecture, parameters, size, weight "
      "types, context length; headers only), or with --server what a cluster serves");
  cmd->add_option("--dir", o.dir,
                  "model folder (default: $TPSERVE_MODELS, else ~/.cache/tpserve/models)")
      ->capture_default_str();
  cmd->add_option("--server", o.server,
                  "HOST:PORT of a running cluster: print its GetModelInfo instead");
  return cmd;
}

}  // namespace tpserve
