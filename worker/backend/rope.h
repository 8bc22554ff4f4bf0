// Rotary position embedding parameters and the per-pair inverse frequencies they give.
//
// Pair i (of head_dim / 2) rotates by angle = position * inv_freq[i]. Pairing is either
// rotate-half (dims i and i + d/2; Hugging Face, "NEOX") or interleaved (dims 2i and 2i+1;
// llama.cpp "NORM", used with GGUF llama files whose q/k rows are permuted for it).
#pragma once

#include <cstdint>
#include <vector>

namespace tpserve {

struct RopeParams {
  int64_t head_dim = 0;
  double theta = 10000.0;
  bool interleaved = false;
  enum class Scaling { kNone, kLinear, kLlama3 } scaling = Scaling::kNone;
  double factor = 1.0;            // linear: positions / factor; llama3: low-frequency divisor
  double low_freq_factor = 1.0;   // llama3 only
  double high_freq_factor = 4.0;  // llama3 only
  int64_t original_max_position = 8192;  // llama3 only
};

// inv_freq[i], i in [0, head_dim / 2), computed in fp32 the way transformers' rope init does
// (`1 / theta ** (arange(0, d, 2) / d)` then the scaling rule), so the angles match it bit for
// bit where fp32 allows.
std::vector<float> RopeInverseFrequencies(const RopeParams& p);

}  // namespace tpserve
