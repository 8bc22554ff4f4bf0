#include "common/format/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"
#include "nlohmann/json.hpp"

namespace tpserve {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A header larger than this is certainly corrupt (real headers are well under 10 MB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsModel>> SafetensorsModel::Open(const std::string& path) {
  std::unique_ptr<SafetensorsModel> m(new SafetensorsModel());
  m->path_ = path;
  std::error_code ec;
  if (!fs::exists(path, ec))
    return absl::NotFoundError(absl::StrCat(path, ": no such file or folder"));
  if (!fs::is_directory(path, ec)) {
    RETURN_IF_ERROR(m->AddFile(path));
    return m;
  }
  const fs::path dir(path);
  const fs::path index = dir / "model.safetensors.index.json";
  const fs::path single = dir / "model.safetensors";
  if (fs::exists(index, ec)) {
    ASSIGN_OR_RETURN(const std::string text, ReadText(index.string()));
    const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("weight_map") ||
        !j["weight_map"].is_object()) {
      return Bad(index.string(), "not a JSON object with a \"weight_map\" object");
    }
    // weight_map: tensor name -> shard file name. Open each shard once, then check that every
    // listed tensor is in the shard the index says.
    std::vector<std::string> shards;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string())
        return Bad(index.string(), absl::StrCat("weight_map[", name, "] is not a string"));
      const std::string f = file.get<std::string>();
      if (f.find('/') != std::string::npos || f == "..") {
        return Bad(index.string(), absl::StrCat("shard name ", f, " must be a plain file name"));
      }
      if (std::find(shards.begin(), shards.end(), f) == shards.end()) shards.push_back(f);
    }
    std::sort(shards.begin(), shards.end());
    for (const std::string& s : shards) {
      const fs::path shard = dir / s;
      if (!fs::exists(shard, ec)) {
        return absl::NotFoundError(absl::StrCat(index.string(), ": shard ", s,
                                                " named in weight_map is missing (", shard.string(),
                                                ")"));
      }
      RETURN_IF_ERROR(m->AddFile(shard.string()));
    }
    for (const auto& [name, file] : j["weight_map"].items()) {
      const TensorInfo* t = m->Find(name);
      const std::string want = (dir / file.get<std::string>()).string();
      if (t == nullptr || t->file != want) {
        return Bad(index.string(), absl::StrCat("tensor ", name, " is listed in shard ",
                                                file.get<std::string>(), " but is not in it"));
      }
    }
    return m;
  }
  if (fs::exists(single, ec)) {
    RETURN_IF_ERROR(m->AddFile(single.string()));
    return m;
  }
  return absl::NotFoundError(
      absl::StrCat(path, ": no model.safetensors or model.safetensors.index.json in this folder"));
}

absl::Status SafetensorsModel::AddFile(const std::string& file_path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(file_path));
  const uint8_t* base = file->data();
  const uint64_t size = file->size();
  if (size < 8) {
    return Bad(file_path, absl::StrCat("truncated file: ", size,
                                       " bytes, the 8-byte header "
                                       "length alone needs 8"));
  }
  uint64_t header_len;
  std::memcpy(&header_len, base, 8);
  if (header_len > kMaxHeaderBytes || header_len > size - 8) {
    return Bad(file_path, absl::StrCat("header length ", header_len, " exceeds the file (", size,
                                       " bytes); truncated or not a safetensors file"));
  }
  const char* hp = reinterpret_cast<const char*>(base + 8);
  const json header = json::parse(hp, hp + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return Bad(file_path, "header is not a JSON object (corrupt or not a safetensors file)");
  }
  const uint8_t* data = base + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  struct Range {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (entry.is_object()) {
        for (const auto& [k, v] : entry.items()) {
          if (v.is_string()) metadata_.emplace(k, v.get<std::string>());
        }
      }
      continue;
    }
    const auto bad = [&](const std::string& what) {
      return Bad(file_path, absl::StrCat("tensor ", name, ": ", what));
    };
    if (!entry.is_object() || !entry.contains("dtype") || !entry["dtype"].is_string() ||
        !entry.contains("shape") || !entry["shape"].is_array() || !entry.contains("data_offsets") ||
        !entry["data_offsets"].is_array() || entry["data_offsets"].size() != 2) {
      return bad(
          "entry needs \"dtype\" (string), \"shape\" (array) and \"data_offsets\" "
          "([begin, end])");
    }
    const std::string dtype_name = entry["dtype"].get<std::string>();
    const std::optional<DType> dt = DTypeFromSafetensors(dtype_name);
    if (!dt) return bad(absl::StrCat("unsupported dtype ", dtype_name));
    TensorInfo t;
    t.name = name;
    t.dtype = *dt;
    t.file = file_path;
    uint64_t numel = 1;
    for (const json& d : entry["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40)) {
        return bad(absl::StrCat("bad shape ", entry["shape"].dump()));
      }
      const uint64_t v = d.get<uint64_t>();
      if (v != 0 && numel > (uint64_t{1} << 50) / v) return bad("shape is implausibly large");
      numel *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const json& offs = entry["data_offsets"];
    if (!offs[0].is_number_unsigned() || !offs[1].is_number_unsigned()) {
      return bad(absl::StrCat("data_offsets ", offs.dump(), " are not non-negative integers"));
    }
    const uint64_t begin = offs[0].get<uint64_t>(), end = offs[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return bad(absl::StrCat("data_offsets [", begin, ", ", end, ") exceed the data section (",
                              data_size, " bytes; file truncated or corrupt)"));
    }
    t.nbytes = ElementsToBytes(t.dtype, static_cast<int64_t>(numel));
    if (end - begin != t.nbytes) {
      return bad(absl::StrCat("data_offsets [", begin, ", ", end, ") hold ", end - begin,
                              " bytes, but ", dtype_name, " ", ShapeToString(t.shape), " needs ",
                              t.nbytes));
    }
    t.data = data + begin;
    if (tensors_.count(name) != 0) {
      return bad(absl::StrCat("also present in ", tensors_[name].file));
    }
    ranges.push_back({begin, end, name});
    tensors_.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return Bad(file_path, absl::StrCat("tensors ", ranges[i - 1].name, " [", ranges[i - 1].begin,
                                         ", ", ranges[i - 1].end, ") and ", ranges[i].name, " [",
                                         ranges[i].begin, ", ", ranges[i].end, ") overlap"));
    }
  }
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

const TensorInfo* SafetensorsModel::Find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> SafetensorsModel::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [k, v] : tensors_) names.push_back(k);
  return names;
}

}  // namespace tpserve
