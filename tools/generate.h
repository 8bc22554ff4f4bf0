// `tpserve generate`: single-process generation with the CPU engine.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tpserve {

struct GenerateOptions {
  std::string model;  // .gguf file or Hugging Face folder
  std::vector<int32_t> prompt_ids;
  std::string prompt;  // text (needs the tokenizer)
  bool chat = false;   // wrap the text prompt in the model's chat template
  int max_tokens = 64;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
  int threads = 2;
  std::string device = "cpu";  // cpu[:int8x2|:int8|:fp32], or cuda:K[:fp32] in a CUDA build
  bool ignore_eos = false;
};

// Prints tokens as they come and prefill / decode speeds; returns the process exit code.
int RunGenerate(const GenerateOptions& options);

}  // namespace tpserve
