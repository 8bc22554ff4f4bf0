// GgufFile against gguf-py's GGUFReader (meta.gguf / meta.json): every metadata type, nested
// arrays, custom alignment, tensor shapes; typed getters and their errors.
#include "common/format/gguf.h"

#include <map>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/format/format_test_util.h"

namespace tpserve {
namespace {

using testing::Golden;
using ::testing::HasSubstr;
using testing::ReadJson;

GgufType TypeFromName(const std::string& n) {
  static const std::map<std::string, GgufType> kTypes = {
      {"UINT8", GgufType::kU8},    {"INT8", GgufType::kI8},    {"UINT16", GgufType::kU16},
      {"INT16", GgufType::kI16},   {"UINT32", GgufType::kU32}, {"INT32", GgufType::kI32},
      {"FLOAT32", GgufType::kF32}, {"BOOL", GgufType::kBool},  {"STRING", GgufType::kString},
      {"ARRAY", GgufType::kArray}, {"UINT64", GgufType::kU64}, {"INT64", GgufType::kI64},
      {"FLOAT64", GgufType::kF64}};
  return kTypes.at(n);
}

// `types` is gguf-py's type path ([ARRAY, ARRAY, INT32] for a nested int array), from `depth`.
void ExpectValue(const GgufValue& v, const nlohmann::json& types, size_t depth,
                 const nlohmann::json& want, const std::string& key) {
  SCOPED_TRACE(key);
  const GgufType t = TypeFromName(types[depth].get<std::string>());
  ASSERT_EQ(v.type(), t) << v.DebugString();
  switch (t) {
    case GgufType::kArray: {
      ASSERT_TRUE(v.is_array());
      ASSERT_EQ(v.array_type(), TypeFromName(types[depth + 1].get<std::string>()));
      ASSERT_EQ(v.size(), want.size());
      for (size_t i = 0; i < v.size(); ++i) ExpectValue(v[i], types, depth + 1, want[i], key);
      break;
    }
    case GgufType::kString:
      EXPECT_EQ(*v.AsString(), want.get<std::string>());
      break;
    case GgufType::kBool:
      EXPECT_EQ(*v.AsBool(), want.get<bool>());
      break;
    case GgufType::kF32:
    case GgufType::kF64:
      EXPECT_EQ(*v.AsFloat(), want.get<double>());
      break;
    case GgufType::kU64:
      if (want.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
        EXPECT_FALSE(v.AsInt().has_value());  // does not fit the int64 accessor
        EXPECT_EQ(*v.AsFloat(), static_cast<double>(want.get<uint64_t>()));
        break;
      }
      [[fallthrough]];
    default:
      ASSERT_TRUE(v.is_integer());
      EXPECT_EQ(*v.AsInt(), want.get<int64_t>());
  }
}

class GgufMetaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = GgufFile::Open(Golden("meta.gguf"));
    ASSERT_TRUE(f.ok()) << f.status();
    file_ = std::move(*f);
    golden_ = ReadJson(Golden("meta.json"));
  }
  std::unique_ptr<GgufFile> file_;
  nlohmann::json golden_;
};

TEST_F(GgufMetaTest, EveryValueMatchesGgufPy) {
  EXPECT_EQ(file_->version(), golden_["version"].get<uint32_t>());
  EXPECT_EQ(file_->alignment(), golden_["alignment"].get<uint64_t>());
  std::vector<std::string> want_keys;
  for (const auto& [key, entry] : golden_["meta"].items()) {
    want_keys.push_back(key);
    const GgufValue* v = file_->FindMeta(key);
    ASSERT_NE(v, nullptr) << key;
    ExpectValue(*v, entry["type"], 0, entry["value"], key);
  }
  std::sort(want_keys.begin(), want_keys.end());
  EXPECT_EQ(file_->MetaKeys(), want_keys);
}

TEST_F(GgufMetaTest, TensorsMatchGgufPy) {
  const auto& tensors = golden_["tensors"];
  ASSERT_EQ(file_->tensors().size(), tensors.size());
  for (const auto& want : tensors) {
    const TensorInfo* t = file_->Find(want["name"].get<std::string>());
    ASSERT_NE(t, nullptr);
    EXPECT_STREQ(DTypeName(t->dtype), want["type"].get<std::string>().c_str());
    EXPECT_EQ(t->shape, want["shape"].get<std::vector<int64_t>>()) << t->name;  // outermost first
    EXPECT_EQ(t->file, Golden("meta.gguf"));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % file_->alignment(), 0u);
    std::vector<float> got(static_cast<size_t>(t->numel()));
    ASSERT_TRUE(ToFloat(t->dtype, t->data, got.data(), t->numel()).ok());
    EXPECT_EQ(got, want["values"].get<std::vector<float>>()) << t->name;
  }
  EXPECT_EQ(file_->Names(), (std::vector<std::string>{"cube", "mat16", "vec"}));
}

TEST_F(GgufMetaTest, TypedGetters) {
  const auto& m = golden_["meta"];
  EXPECT_EQ(*file_->GetString("t.str"), m["t.str"]["value"].get<std::string>());
  EXPECT_EQ(*file_->GetInt("t.u8"), m["t.u8"]["value"].get<int64_t>());
  EXPECT_EQ(*file_->GetInt("t.i64"), m["t.i64"]["value"].get<int64_t>());
  EXPECT_EQ(*file_->GetFloat("t.f32"), m["t.f32"]["value"].get<double>());
  EXPECT_EQ(*file_->GetFloat("t.i32"), m["t.i32"]["value"].get<double>());  // ints widen
  EXPECT_EQ(*file_->GetBool("t.bool"), m["t.bool"]["value"].get<bool>());
  EXPECT_EQ(*file_->GetStringArray("t.arr_str"),
            m["t.arr_str"]["value"].get<std::vector<std::string>>());
  EXPECT_EQ(*file_->GetIntArray("t.arr_u64"), m["t.arr_u64"]["value"].get<std::vector<int64_t>>());
  EXPECT_EQ(*file_->GetIntArray("t.arr_i16"), m["t.arr_i16"]["value"].get<std::vector<int64_t>>());
  EXPECT_EQ(*file_->GetFloatArray("t.arr_f32"), m["t.arr_f32"]["value"].get<std::vector<float>>());
  EXPECT_EQ(*file_->GetFloatArray("t.arr_f64"), m["t.arr_f64"]["value"].get<std::vector<float>>());
}

TEST_F(GgufMetaTest, GetterErrorsNameFileAndKey) {
  const auto missing = file_->GetInt("llama.block_count");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(
      std::string(missing.status().message()),
      AllOf(HasSubstr("meta.gguf"), HasSubstr("llama.block_count"), HasSubstr("not found")));

  const auto wrong = file_->GetInt("t.str");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong.status().message()),
              AllOf(HasSubstr("meta.gguf"), HasSubstr("t.str"), HasSubstr("integer")));
  EXPECT_FALSE(file_->GetString("t.u32").ok());
  EXPECT_FALSE(file_->GetBool("t.u8").ok());
  EXPECT_FALSE(file_->GetStringArray("t.arr_f32").ok());
  EXPECT_FALSE(file_->GetIntArray("t.arr_str").ok());
  EXPECT_FALSE(file_->GetFloatArray("t.nested").ok());
  const auto big = file_->GetInt("t.u64");  // 2^63 + 5 does not fit int64
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GgufMetaTest, MissingTensorNamesFileAndTensor) {
  const auto t = file_->Get("blk.0.attn_q.weight");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(t.status().message()),
              AllOf(HasSubstr("meta.gguf"), HasSubstr("blk.0.attn_q.weight")));
  EXPECT_EQ(file_->Find("nope"), nullptr);
  ASSERT_TRUE(file_->Get("cube").ok());
}

}  // namespace
}  // namespace tpserve
