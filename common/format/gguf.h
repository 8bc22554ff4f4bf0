// GGUF v2/v3 reader: metadata key/values and the tensor directory of one mmapped file.
// Layout: magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv x (string key, u32 type, value),
// n_tensors x (string name, u32 n_dims, u64 ne[n_dims] (innermost first), u32 ggml_type,
// u64 offset), padding to general.alignment (default 32), tensor data. Every count, length and
// offset is checked against the file size before use.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "common/format/mmap_file.h"
#include "common/format/tensor_source.h"

namespace tpserve {

// GGUF metadata value type ids (as stored in the file).
// clang-format off
enum class GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};
// clang-format on
const char* GgufTypeName(GgufType t);  // "u32", "string", "array", ...
bool IsIntegerType(GgufType t);        // u8..i64

// One metadata value: a scalar, a string, or an array (of scalars, strings or nested arrays).
class GgufValue {
 public:
  GgufValue() = default;
  static GgufValue Unsigned(GgufType t, uint64_t v);
  static GgufValue Signed(GgufType t, int64_t v);
  static GgufValue Float(GgufType t, double v);
  static GgufValue Bool(bool v);
  static GgufValue String(std::string v);
  static GgufValue Array(GgufType elem_type, std::vector<GgufValue> elems);

  GgufType type() const { return type_; }
  bool is_integer() const { return IsIntegerType(type_); }
  bool is_float() const { return type_ == GgufType::kF32 || type_ == GgufType::kF64; }
  bool is_string() const { return type_ == GgufType::kString; }
  bool is_array() const { return type_ == GgufType::kArray; }

  // Scalar accessors; nullopt when the value is not of that kind. AsInt accepts any integer type
  // (nullopt for a u64 above INT64_MAX); AsFloat accepts floats and integers.
  std::optional<int64_t> AsInt() const;
  std::optional<double> AsFloat() const;
  std::optional<bool> AsBool() const;
  std::optional<std::string_view> AsString() const;

  // Arrays: element type (kArray for nested arrays), length, elements.
  GgufType array_type() const { return array_type_; }
  size_t size() const;  // 0 for non-arrays
  const GgufValue& operator[](size_t i) const { return std::get<Elems>(v_)[i]; }
  const std::vector<GgufValue>& elements() const;  // empty for non-arrays

  // Short human-readable form ("u32 30", "string \"llama\"", "array<string>[49152]").
  std::string DebugString() const;

 private:
  using Elems = std::vector<GgufValue>;
  GgufType type_ = GgufType::kU8;
  GgufType array_type_ = GgufType::kU8;
  std::variant<uint64_t, int64_t, double, bool, std::string, Elems> v_;
};

class GgufFile : public TensorSource {
 public:
  // INVALID_ARGUMENT (naming the file and the problem) for anything malformed: wrong magic,
  // version 1 or unknown, truncated header, unknown metadata or tensor type, bad alignment,
  // tensor data outside the file, duplicate names, ...
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& path() const { return file_->path(); }
  // The mapping (tensor data pointers point into it).
  const MappedFile& file() const { return *file_; }

  const GgufValue* FindMeta(std::string_view key) const;  // nullptr if absent
  std::vector<std::string> MetaKeys() const;              // sorted

  // Typed getters; errors name the file and key (NOT_FOUND / INVALID_ARGUMENT for wrong type).
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;   // any integer type
  absl::StatusOr<double> GetFloat(std::string_view key) const;  // f32/f64 (and ints)
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;  // f32/f64/ints
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;  // any ints

  // TensorSource
  std::string description() const override { return path(); }
  const TensorInfo* Find(std::string_view name) const override;
  std::vector<std::string> Names() const override;
  // Tensors in file order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }

 private:
  friend class GgufParser;
  GgufFile() = default;

  std::unique_ptr<MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue, std::less<>> meta_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace tpserve
