#include "common/format/gguf.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/base/status_macros.h"

namespace tpserve {
namespace {

constexpr uint32_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;  // nested arrays deeper than this are rejected (stack safety)
constexpr uint32_t kMaxDims = 4;   // GGML_MAX_DIMS

// Bounds-checked little-endian cursor over the mapped file; every read says what it was reading so
// a truncated or corrupt file gets a message naming the place.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  absl::Status Error(std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": ", std::string(what), " (at byte offset ", pos_, ")"));
  }

  template <typename T>
  absl::StatusOr<T> Read(std::string_view what) {
    if (remaining() < sizeof(T)) {
      return Error(absl::StrCat("truncated file: ", sizeof(T), " bytes needed for ",
                                std::string(what), ", file has ", remaining(), " left"));
    }
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<std::string> ReadString(std::string_view what) {
    ASSIGN_OR_RETURN(const uint64_t len, Read<uint64_t>(what));
    if (len > remaining()) {
      pos_ -= 8;
      return Error(absl::StrCat("truncated file: ", std::string(what), " claims ", len,
                                " bytes, file has ", remaining() - 8, " left"));
    }
    std::string s(reinterpret_cast<const char*>(data_ + pos_), len);
    pos_ += len;
    return s;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
};

// Smallest encoded size of one value of the type (bounds a claimed array length before reserving).
size_t MinEncodedSize(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool:
      return 1;
    case GgufType::kU16:
    case GgufType::kI16:
      return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32:
      return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64:
      return 8;
    case GgufType::kString:
      return 8;
    case GgufType::kArray:
      return 12;
  }
  return 1;
}

bool KnownType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kF64); }

absl::StatusOr<GgufValue> ReadValue(Cursor& c, GgufType type, const std::string& key, int depth) {
  const std::string what = absl::StrCat("value of ", key);
  switch (type) {
    case GgufType::kU8: {
      ASSIGN_OR_RETURN(auto v, c.Read<uint8_t>(what));
      return GgufValue::Unsigned(type, v);
    }
    case GgufType::kI8: {
      ASSIGN_OR_RETURN(auto v, c.Read<int8_t>(what));
      return GgufValue::Signed(type, v);
    }
    case GgufType::kU16: {
      ASSIGN_OR_RETURN(auto v, c.Read<uint16_t>(what));
      return GgufValue::Unsigned(type, v);
    }
    case GgufType::kI16: {
      ASSIGN_OR_RETURN(auto v, c.Read<int16_t>(what));
      return GgufValue::Signed(type, v);
    }
    case GgufType::kU32: {
      ASSIGN_OR_RETURN(auto v, c.Read<uint32_t>(what));
      return GgufValue::Unsigned(type, v);
    }
    case GgufType::kI32: {
      ASSIGN_OR_RETURN(auto v, c.Read<int32_t>(what));
      return GgufValue::Signed(type, v);
    }
    case GgufType::kU64: {
      ASSIGN_OR_RETURN(auto v, c.Read<uint64_t>(what));
      return GgufValue::Unsigned(type, v);
    }
    case GgufType::kI64: {
      ASSIGN_OR_RETURN(auto v, c.Read<int64_t>(what));
      return GgufValue::Signed(type, v);
    }
    case GgufType::kF32: {
      ASSIGN_OR_RETURN(auto v, c.Read<float>(what));
      return GgufValue::Float(type, v);
    }
    case GgufType::kF64: {
      ASSIGN_OR_RETURN(auto v, c.Read<double>(what));
      return GgufValue::Float(type, v);
    }
    case GgufType::kBool: {
      ASSIGN_OR_RETURN(auto v, c.Read<uint8_t>(what));
      if (v > 1) return c.Error(absl::StrCat("key ", key, ": bool value ", v, " is not 0 or 1"));
      return GgufValue::Bool(v != 0);
    }
    case GgufType::kString: {
      ASSIGN_OR_RETURN(auto v, c.ReadString(what));
      return GgufValue::String(std::move(v));
    }
    case GgufType::kArray: {
      if (depth >= kMaxArrayDepth) {
        return c.Error(absl::StrCat("key ", key, ": arrays nested deeper than ", kMaxArrayDepth));
      }
      ASSIGN_OR_RETURN(const uint32_t raw_elem,
                       c.Read<uint32_t>(absl::StrCat("array type of ", key)));
      if (!KnownType(raw_elem)) {
        return c.Error(absl::StrCat("key ", key, ": unknown array element type id ", raw_elem));
      }
      const auto elem = static_cast<GgufType>(raw_elem);
      ASSIGN_OR_RETURN(const uint64_t n, c.Read<uint64_t>(absl::StrCat("array length of ", key)));
      if (n > c.remaining() / MinEncodedSize(elem)) {
        return c.Error(absl::StrCat("truncated file: key ", key, ": array of ", n, " ",
                                    GgufTypeName(elem), " does not fit in the ", c.remaining(),
                                    " bytes left"));
      }
      std::vector<GgufValue> elems;
      elems.reserve(n);
      for (uint64_t i = 0; i < n; ++i) {
        ASSIGN_OR_RETURN(GgufValue v, ReadValue(c, elem, key, depth + 1));
        elems.push_back(std::move(v));
      }
      return GgufValue::Array(elem, std::move(elems));
    }
  }
  return c.Error(absl::StrCat("key ", key, ": unknown value type"));
}

}  // namespace

// Parses the header and directory of a mapped file into a GgufFile.
class GgufParser {
 public:
  static absl::Status Parse(GgufFile& f) {
    const std::string& path = f.file_->path();
    Cursor c(f.file_->data(), f.file_->size(), path);
    if (f.file_->size() < 4 || std::memcmp(f.file_->data(), "GGUF", 4) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": not a GGUF file (the first 4 bytes are not \"GGUF\")"));
    }
    RETURN_IF_ERROR(c.Read<uint32_t>("magic").status());
    ASSIGN_OR_RETURN(f.version_, c.Read<uint32_t>("version"));
    if (f.version_ == 1) {
      return c.Error("GGUF version 1 is not supported (re-convert the model to GGUF v3)");
    }
    if (const uint32_t swapped = __builtin_bswap32(f.version_); swapped == 2 || swapped == 3) {
      return c.Error("big-endian GGUF files are not supported (convert with gguf-convert-endian)");
    }
    if (f.version_ != 2 && f.version_ != 3) {
      return c.Error(absl::StrCat("unsupported GGUF version ", f.version_, " (expected 2 or 3)"));
    }
    ASSIGN_OR_RETURN(const uint64_t n_tensors, c.Read<uint64_t>("tensor count"));
    ASSIGN_OR_RETURN(const uint64_t n_kv, c.Read<uint64_t>("metadata count"));
    // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor entry at
    // least 8 + 4 + 4 + 8.
    if (n_kv > c.remaining() / 13) {
      return c.Error(absl::StrCat("truncated file: ", n_kv, " metadata entries cannot fit in ",
                                  c.remaining(), " bytes"));
    }
    if (n_tensors > c.remaining() / 24) {
      return c.Error(absl::StrCat("truncated file: ", n_tensors, " tensor entries cannot fit in ",
                                  c.remaining(), " bytes"));
    }

    for (uint64_t i = 0; i < n_kv; ++i) {
      ASSIGN_OR_RETURN(std::string key, c.ReadString(absl::StrCat("metadata key #", i)));
      ASSIGN_OR_RETURN(const uint32_t raw_type, c.Read<uint32_t>(absl::StrCat("type of ", key)));
      if (!KnownType(raw_type)) {
        return c.Error(absl::StrCat("key ", key, ": unknown metadata type id ", raw_type));
      }
      ASSIGN_OR_RETURN(GgufValue v, ReadValue(c, static_cast<GgufType>(raw_type), key, 0));
      if (f.meta_.count(key) != 0) return c.Error(absl::StrCat("duplicate metadata key ", key));
      f.meta_.emplace(std::move(key), std::move(v));
    }

    if (const GgufValue* a = f.FindMeta("general.alignment")) {
      const std::optional<int64_t> v = a->AsInt();
      if (a->type() != GgufType::kU32 || !v || *v == 0 || (*v & (*v - 1)) != 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": general.alignment must be a u32 power of two, file has ", a->DebugString()));
      }
      f.alignment_ = static_cast<uint64_t>(*v);
    } else {
      f.alignment_ = kDefaultAlignment;
    }

    std::vector<uint64_t> offsets;
    f.tensors_.reserve(n_tensors);
    for (uint64_t i = 0; i < n_tensors; ++i) {
      TensorInfo t;
      t.file = path;
      ASSIGN_OR_RETURN(t.name, c.ReadString(absl::StrCat("name of tensor #", i)));
      ASSIGN_OR_RETURN(const uint32_t n_dims,
                       c.Read<uint32_t>(absl::StrCat("dimension count of tensor ", t.name)));
      if (n_dims > kMaxDims) {
        return c.Error(
            absl::StrCat("tensor ", t.name, ": ", n_dims, " dimensions (max ", kMaxDims, ")"));
      }
      std::vector<int64_t> ne(n_dims);
      for (uint32_t d = 0; d < n_dims; ++d) {
        ASSIGN_OR_RETURN(const uint64_t v,
                         c.Read<uint64_t>(absl::StrCat("shape of tensor ", t.name)));
        if (v > (uint64_t{1} << 40)) {
          return c.Error(absl::StrCat("tensor ", t.name, ": dimension ", d, " is ", v,
                                      " (implausibly large)"));
        }
        ne[d] = static_cast<int64_t>(v);
      }
      ASSIGN_OR_RETURN(const uint32_t ggml_type,
                       c.Read<uint32_t>(absl::StrCat("type of tensor ", t.name)));
      const std::optional<DType> dt = DTypeFromGgmlType(ggml_type);
      if (!dt) {
        return c.Error(
            absl::StrCat("tensor ", t.name, ": unknown or unsupported tensor type id ", ggml_type));
      }
      t.dtype = *dt;
      ASSIGN_OR_RETURN(const uint64_t offset,
                       c.Read<uint64_t>(absl::StrCat("data offset of tensor ", t.name)));
      // GGUF lists ne[0] (innermost) first; we keep shapes outermost first.
      t.shape.assign(ne.rbegin(), ne.rend());
      const DTypeInfo& info = GetDTypeInfo(t.dtype);
      if (!ne.empty() && ne[0] % info.block_elems != 0) {
        return c.Error(absl::StrCat("tensor ", t.name, ": row length ", ne[0],
                                    " is not a multiple of the ", info.name, " block size ",
                                    info.block_elems));
      }
      // Overflow-safe element count: every dim <= 2^40 and the product is checked step by step.
      uint64_t numel = 1;
      for (int64_t d : ne) {
        if (d != 0 && numel > (uint64_t{1} << 50) / static_cast<uint64_t>(d)) {
          return c.Error(absl::StrCat("tensor ", t.name, ": shape ", ShapeToString(t.shape),
                                      " is implausibly large"));
        }
        numel *= static_cast<uint64_t>(d);
      }
      t.nbytes = ElementsToBytes(t.dtype, static_cast<int64_t>(numel));
      if (f.tensor_index_.count(t.name) != 0) {
        return c.Error(absl::StrCat("duplicate tensor name ", t.name));
      }
      if (offset % f.alignment_ != 0) {
        return c.Error(absl::StrCat("tensor ", t.name, ": data offset ", offset,
                                    " is not a multiple of the alignment ", f.alignment_));
      }
      offsets.push_back(offset);
      f.tensor_index_.emplace(t.name, f.tensors_.size());
      f.tensors_.push_back(std::move(t));
    }

    // The data section starts at the next multiple of the alignment after the directory.
    const uint64_t data_start = (c.pos() + f.alignment_ - 1) / f.alignment_ * f.alignment_;
    const uint64_t file_size = f.file_->size();
    for (size_t i = 0; i < f.tensors_.size(); ++i) {
      TensorInfo& t = f.tensors_[i];
      const uint64_t off = offsets[i];
      if (data_start > file_size || off > file_size - data_start ||
          t.nbytes > file_size - data_start - off) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": tensor ", t.name, ": data [", data_start + off, ", ",
                         data_start + off + t.nbytes, ") lies outside the file (", file_size,
                         " bytes; truncated or corrupt)"));
      }
      t.data = f.file_->data() + data_start + off;
    }
    return absl::OkStatus();
  }
};

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  ASSIGN_OR_RETURN(f->file_, MappedFile::Open(path));
  RETURN_IF_ERROR(GgufParser::Parse(*f));
  return f;
}

const GgufValue* GgufFile::FindMeta(std::string_view key) const {
  auto it = meta_.find(key);
  return it == meta_.end() ? nullptr : &it->second;
}

std::vector<std::string> GgufFile::MetaKeys() const {
  std::vector<std::string> keys;
  keys.reserve(meta_.size());
  for (const auto& [k, v] : meta_) keys.push_back(k);
  return keys;
}

const TensorInfo* GgufFile::Find(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<std::string> GgufFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensor_index_.size());
  for (const auto& [k, v] : tensor_index_) names.push_back(k);
  return names;
}

namespace {

absl::Status WrongType(const std::string& path, std::string_view key, const char* want,
                       const GgufValue& v) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": metadata key ", std::string(key),
                                                 ": expected ", want, ", file has ",
                                                 v.DebugString()));
}

}  // namespace

#define TPSERVE_GGUF_LOOKUP_(v, key)                                              \
  const GgufValue* v = FindMeta(key);                                             \
  if (v == nullptr) {                                                             \
    return absl::NotFoundError(                                                   \
        absl::StrCat(path(), ": metadata key ", std::string(key), " not found")); \
  }

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  TPSERVE_GGUF_LOOKUP_(v, key);
  if (auto s = v->AsString()) return std::string(*s);
  return WrongType(path(), key, "a string", *v);
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  TPSERVE_GGUF_LOOKUP_(v, key);
  if (auto i = v->AsInt()) return *i;
  return WrongType(path(), key, "an integer", *v);
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  TPSERVE_GGUF_LOOKUP_(v, key);
  if (auto d = v->AsFloat()) return *d;
  return WrongType(path(), key, "a number", *v);
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  TPSERVE_GGUF_LOOKUP_(v, key);
  if (auto b = v->AsBool()) return *b;
  return WrongType(path(), key, "a bool", *v);
}

absl::StatusOr<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  TPSERVE_GGUF_LOOKUP_(v, key);
  if (!v->is_array() || v->array_type() != GgufType::kString) {
    return WrongType(path(), key, "an array of strings", *v);
  }
  std::vector<std::string> out;
  out.reserve(v->size());
  for (const GgufValue& e : v->elements()) out.emplace_back(*e.AsString());
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  TPSERVE_GGUF_LOOKUP_(v, key);
  const GgufType et = v->array_type();
  if (!v->is_array() || et == GgufType::kString || et == GgufType::kArray ||
      et == GgufType::kBool) {
    return WrongType(path(), key, "an array of numbers", *v);
  }
  std::vector<float> out;
  out.reserve(v->size());
  for (const GgufValue& e : v->elements()) out.push_back(static_cast<float>(*e.AsFloat()));
  return out;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  TPSERVE_GGUF_LOOKUP_(v, key);
  if (!v->is_array() || !IsIntegerType(v->array_type())) {
    return WrongType(path(), key, "an array of integers", *v);
  }
  std::vector<int64_t> out;
  out.reserve(v->size());
  for (const GgufValue& e : v->elements()) {
    const std::optional<int64_t> i = e.AsInt();
    if (!i) return WrongType(path(), key, "an array of integers that fit in int64", *v);
    out.push_back(*i);
  }
  return out;
}

#undef TPSERVE_GGUF_LOOKUP_

}  // namespace tpserve
