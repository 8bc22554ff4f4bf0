// Corrupt GGUF files, made in a temp dir from the bytes of the good meta.gguf: each must fail with
// a message naming the file (and the tensor / key) and the problem, never crash or read out of
// bounds (run under -DTPSERVE_SANITIZE=address to check the latter).
#include <filesystem>
#include <fstream>
#include <random>

#include "common/format/gguf.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/common/format/format_test_util.h"

namespace tpserve {
namespace {

using ::testing::AllOf;
using testing::FindBytes;
using testing::Golden;
using ::testing::HasSubstr;
using testing::Poke;
using testing::ReadBytes;
using testing::TempDir;
using testing::WriteBytes;

class GgufBadFileTest : public ::testing::Test {
 protected:
  void SetUp() override { good_ = ReadBytes(Golden("meta.gguf")); }

  // Writes `bytes` to a temp file and returns the Open error (fails the test if it opened).
  absl::Status OpenBad(const std::vector<uint8_t>& bytes) {
    path_ = tmp_.file("bad.gguf");
    WriteBytes(path_, bytes);
    auto f = GgufFile::Open(path_);
    EXPECT_FALSE(f.ok()) << "corrupt file opened";
    if (f.ok()) return absl::OkStatus();
    EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument) << f.status();
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(path_));
    return f.status();
  }
  // Offset of the tensor-directory entry fields that follow the name of `tensor`.
  size_t AfterTensorName(const std::string& tensor) {
    const size_t pos = FindBytes(good_, tensor);
    return pos + tensor.size();
  }
  // Offset of the value of metadata key `key` (after its u32 type).
  size_t MetaValue(const std::string& key) { return FindBytes(good_, key) + key.size() + 4; }

  TempDir tmp_;
  std::string path_;
  std::vector<uint8_t> good_;
};

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

TEST_F(GgufBadFileTest, WrongMagic) {
  good_[3] = 'X';
  EXPECT_THAT(Msg(OpenBad(good_)), HasSubstr("not a GGUF file"));
}

TEST_F(GgufBadFileTest, UnknownVersion) {
  Poke<uint32_t>(good_, 4, 99);
  EXPECT_THAT(Msg(OpenBad(good_)), HasSubstr("unsupported GGUF version 99"));
  Poke<uint32_t>(good_, 4, 1);
  EXPECT_THAT(Msg(OpenBad(good_)), HasSubstr("version 1 is not supported"));
  Poke<uint32_t>(good_, 4, 0x03000000);
  EXPECT_THAT(Msg(OpenBad(good_)), HasSubstr("big-endian"));
}

TEST_F(GgufBadFileTest, TruncatedAnywhere) {
  // Every prefix that cuts the header, the directory or any tensor's data must be rejected.
  auto good = GgufFile::Open(Golden("meta.gguf"));
  ASSERT_TRUE(good.ok()) << good.status();
  size_t must_have = 0;  // end of the last tensor's data (padding after it is optional)
  for (const TensorInfo& t : (*good)->tensors()) {
    must_have =
        std::max(must_have, static_cast<size_t>(t.data - (*good)->file().data()) + t.nbytes);
  }
  ASSERT_GT(must_have, 200u);
  // Shrink one file step by step (cheaper than writing every prefix).
  const std::string path = tmp_.file("cut.gguf");
  WriteBytes(path, good_);
  int rejected = 0;
  for (size_t n = must_have; n-- > 0;) {
    std::filesystem::resize_file(path, n);
    auto f = GgufFile::Open(path);
    if (!f.ok()) {
      ++rejected;
      EXPECT_THAT(std::string(f.status().message()), HasSubstr(path)) << n;
    }
  }
  EXPECT_EQ(rejected, static_cast<int>(must_have));
  // Two representative messages.
  std::vector<uint8_t> cut(good_.begin(), good_.begin() + 30);
  EXPECT_THAT(Msg(OpenBad(cut)), HasSubstr("truncated"));
  cut.assign(good_.begin(), good_.begin() + static_cast<ptrdiff_t>(must_have - 1));
  EXPECT_THAT(Msg(OpenBad(cut)), AllOf(HasSubstr("tensor mat16"), HasSubstr("outside the file")));
}

TEST_F(GgufBadFileTest, UnknownTensorType) {
  // "cube": u32 n_dims = 3, 3 x u64 ne, u32 type, u64 offset.
  const size_t type_pos = AfterTensorName("cube") + 4 + 3 * 8;
  Poke<uint32_t>(good_, type_pos, 16);  // IQ2_XXS: valid GGML, unsupported here
  EXPECT_THAT(Msg(OpenBad(good_)), AllOf(HasSubstr("tensor cube"), HasSubstr("type id 16")));
  Poke<uint32_t>(good_, type_pos, 12345);
  EXPECT_THAT(Msg(OpenBad(good_)), AllOf(HasSubstr("tensor cube"), HasSubstr("type id 12345")));
}

TEST_F(GgufBadFileTest, TensorDataOutOfBounds) {
  const size_t off_pos = AfterTensorName("cube") + 4 + 3 * 8 + 4;
  Poke<uint64_t>(good_, off_pos, uint64_t{64} << 20);
  EXPECT_THAT(Msg(OpenBad(good_)), AllOf(HasSubstr("tensor cube"), HasSubstr("outside the file")));
  Poke<uint64_t>(good_, off_pos, ~uint64_t{63});  // wraps around when added to the data start
  EXPECT_THAT(Msg(OpenBad(good_)), AllOf(HasSubstr("tensor cube"), HasSubstr("outside the file")));
}

TEST_F(GgufBadFileTest, HugeShape) {
  const size_t ne_pos = AfterTensorName("cube") + 4;
  Poke<uint64_t>(good_, ne_pos, uint64_t{1} << 39);
  Poke<uint64_t>(good_, ne_pos + 8, uint64_t{1} << 39);
  EXPECT_THAT(Msg(OpenBad(good_)), HasSubstr("tensor cube"));
  Poke<uint32_t>(good_, AfterTensorName("cube"), 7);  // n_dims > 4
  EXPECT_THAT(Msg(OpenBad(good_)), AllOf(HasSubstr("tensor cube"), HasSubstr("dimensions")));
}

TEST_F(GgufBadFileTest, BadAlignment) {
  const size_t pos = MetaValue("general.alignment");
  Poke<uint32_t>(good_, pos, 48);
  EXPECT_THAT(Msg(OpenBad(good_)),
              AllOf(HasSubstr("general.alignment"), HasSubstr("power of two")));
  Poke<uint32_t>(good_, pos, 0);
  EXPECT_THAT(Msg(OpenBad(good_)), HasSubstr("general.alignment"));
}

TEST_F(GgufBadFileTest, MisalignedTensorOffset) {
  const size_t off_pos = AfterTensorName("cube") + 4 + 3 * 8 + 4;
  uint64_t off;
  std::memcpy(&off, good_.data() + off_pos, 8);
  Poke<uint64_t>(good_, off_pos, off + 4);
  EXPECT_THAT(Msg(OpenBad(good_)), AllOf(HasSubstr("tensor cube"), HasSubstr("alignment")));
}

TEST_F(GgufBadFileTest, UnknownMetadataType) {
  Poke<uint32_t>(good_, MetaValue("t.u8") - 4, 13);
  EXPECT_THAT(Msg(OpenBad(good_)), AllOf(HasSubstr("t.u8"), HasSubstr("unknown metadata type")));
}

TEST_F(GgufBadFileTest, HugeArrayAndStringLengths) {
  std::vector<uint8_t> b = good_;
  // t.arr_str: u32 element type, u64 count.
  Poke<uint64_t>(b, MetaValue("t.arr_str") + 4, uint64_t{1} << 60);
  EXPECT_THAT(Msg(OpenBad(b)), AllOf(HasSubstr("t.arr_str"), HasSubstr("truncated")));
  b = good_;
  Poke<uint64_t>(b, MetaValue("t.str"), ~uint64_t{0});
  EXPECT_THAT(Msg(OpenBad(b)), AllOf(HasSubstr("t.str"), HasSubstr("truncated")));
}

TEST_F(GgufBadFileTest, BadBool) {
  good_[MetaValue("t.bool")] = 7;
  EXPECT_THAT(Msg(OpenBad(good_)), AllOf(HasSubstr("t.bool"), HasSubstr("bool")));
}

TEST_F(GgufBadFileTest, DuplicateMetadataKey) {
  // Rename key "t.i8" to "t.u8" (same length, so the layout stays valid).
  const size_t pos = FindBytes(good_, "t.i8");
  good_[pos + 2] = 'u';
  EXPECT_THAT(Msg(OpenBad(good_)), AllOf(HasSubstr("duplicate"), HasSubstr("t.u8")));
}

TEST_F(GgufBadFileTest, RandomHeaderCorruptionNeverCrashes) {
  // Overwrite a few bytes of the header and directory in place (one file, restored after each
  // try); Open may succeed or fail but must stay in bounds.
  const size_t header_end = FindBytes(good_, "mat16") + 5 + 4 + 2 * 8 + 4 + 8;
  path_ = tmp_.file("fuzz.gguf");
  WriteBytes(path_, good_);
  std::fstream io(path_, std::ios::in | std::ios::out | std::ios::binary);
  const auto put = [&](size_t pos, uint8_t v) {
    io.seekp(static_cast<std::streamoff>(pos));
    io.put(static_cast<char>(v));
    io.flush();
  };
  std::mt19937 rng(42);
  int failures = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::vector<size_t> touched;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      touched.push_back(rng() % header_end);
      put(touched.back(), static_cast<uint8_t>(rng()));
    }
    auto f = GgufFile::Open(path_);
    if (!f.ok()) {
      ++failures;
      EXPECT_THAT(std::string(f.status().message()), HasSubstr(path_));
    } else {
      for (const TensorInfo& t : (*f)->tensors()) {  // data must lie inside the mapping
        if (t.numel() > (1 << 20)) continue;
        std::vector<float> out(static_cast<size_t>(t.numel()));
        ASSERT_TRUE(ToFloat(t.dtype, t.data, out.data(), t.numel()).ok());
      }
    }
    for (size_t pos : touched) put(pos, good_[pos]);
  }
  EXPECT_GT(failures, 100);
}

}  // namespace
}  // namespace tpserve
