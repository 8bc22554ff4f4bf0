#include "worker/backend/rope.h"

#include <cmath>
#include <numbers>

namespace tpserve {

std::vector<float> RopeInverseFrequencies(const RopeParams& p) {
  const int64_t half = p.head_dim / 2;
  std::vector<float> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(p.head_dim);
    inv[i] = 1.0f / std::pow(static_cast<float>(p.theta), exponent);
  }
  switch (p.scaling) {
    case RopeParams::Scaling::kNone:
      break;
    case RopeParams::Scaling::kLinear:
      // transformers divides positions by the factor; dividing the frequency is the same angle.
      for (float& f : inv) f = f / static_cast<float>(p.factor);
      break;
    case RopeParams::Scaling::kLlama3: {
      // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
      // interpolated smoothly (transformers `_compute_llama3_parameters`).
      const float factor = static_cast<float>(p.factor);
      const float low = static_cast<float>(p.low_freq_factor);
      const float high = static_cast<float>(p.high_freq_factor);
      const float old_len = static_cast<float>(p.original_max_position);
      const float low_freq_wavelen = old_len / low;
      const float high_freq_wavelen = old_len / high;
      for (float& f : inv) {
        const float wavelen = 2.0f * static_cast<float>(std::numbers::pi) / f;
        float scaled = wavelen > low_freq_wavelen ? f / factor : f;
        const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
        if (medium) {
          const float smooth = (old_len / wavelen - low) / (high - low);
          scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
        }
        f = scaled;
      }
      break;
    }
  }
  return inv;
}

}  // namespace tpserve
