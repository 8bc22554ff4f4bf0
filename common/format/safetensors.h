// Safetensors reader: one file, or a Hugging Face model folder (model.safetensors, or
// model.safetensors.index.json + shards). File layout: u64 little-endian header length N, N bytes
// of JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__":
// {...}}, then the data block; offsets are relative to the data block.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/format/mmap_file.h"
#include "common/format/tensor_source.h"

namespace tpserve {

class SafetensorsModel : public TensorSource {
 public:
  // `path` is a .safetensors file or a folder holding model.safetensors or
  // model.safetensors.index.json (+ the shards it names). INVALID_ARGUMENT / NOT_FOUND naming the
  // file and problem: header not JSON, unknown dtype, shape/size mismatch, offsets overlapping or
  // past the end of the file, a shard missing, a tensor in two shards.
  static absl::StatusOr<std::unique_ptr<SafetensorsModel>> Open(const std::string& path);

  std::string description() const override { return path_; }
  const TensorInfo* Find(std::string_view name) const override;
  std::vector<std::string> Names() const override;
  // "__metadata__" string map of each file, merged (first file wins).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t num_files() const { return files_.size(); }

 private:
  SafetensorsModel() = default;
  absl::Status AddFile(const std::string& file_path);

  std::string path_;
  std::vector<std::unique_ptr<MappedFile>> files_;
  std::map<std::string, TensorInfo, std::less<>> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace tpserve
