// RoPE inverse frequencies and cos/sin tables (see Rope.h for why fp32 and HF conventions).
#include "core/Rope.h"

#include <cmath>

namespace paraserve {

namespace {
constexpr double kPi = 3.141592653589793;
}  // namespace

std::vector<float> ropeInverseFrequencies(int64_t headDim, double theta, const RopeScaling& rope) {
  const int64_t half = headDim / 2;
  std::vector<float> invFreq(static_cast<size_t>(half));
  const float base = static_cast<float>(theta);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(headDim);
    invFreq[i] = 1.0f / std::pow(base, exponent);
  }
  if (rope.kind == RopeScaling::Kind::Linear) {
    const float factor = static_cast<float>(rope.factor);
    for (float& f : invFreq) f /= factor;
  } else if (rope.kind == RopeScaling::Kind::Llama3) {
    // transformers' _compute_llama3_parameters: long wavelengths are divided by factor,
    // short ones kept, and the band between interpolated smoothly. Python scalars meet fp32
    // tensors as torch evaluates them: scalar / tensor is reciprocal(tensor) * scalar.
    const float factor = static_cast<float>(rope.factor);
    const float lowFreqFactor = static_cast<float>(rope.lowFreqFactor);
    const float oldContextLen = static_cast<float>(rope.originalMaxPositionEmbeddings);
    const float lowFreqWavelen = static_cast<float>(rope.originalMaxPositionEmbeddings / rope.lowFreqFactor);
    const float highFreqWavelen = static_cast<float>(rope.originalMaxPositionEmbeddings / rope.highFreqFactor);
    const float factorSpan = static_cast<float>(rope.highFreqFactor - rope.lowFreqFactor);
    const float twoPi = static_cast<float>(2.0 * kPi);
    for (float& f : invFreq) {
      const float wavelen = (1.0f / f) * twoPi;
      const float scaled = wavelen > lowFreqWavelen ? f / factor : f;
      const bool isMediumFreq = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
      if (isMediumFreq) {
        const float smooth = ((1.0f / wavelen) * oldContextLen - lowFreqFactor) / factorSpan;
        f = (1.0f - smooth) * scaled / factor + smooth * scaled;
      } else {
        f = scaled;
      }
    }
  }
  return invFreq;
}

void ropeTables(const std::vector<float>& invFreq, int64_t first, int64_t count, float* cosOut, float* sinOut) {
  const int64_t half = static_cast<int64_t>(invFreq.size());
  for (int64_t t = 0; t < count; ++t) {
    const float position = static_cast<float>(first + t);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = position * invFreq[i];
      cosOut[t * half + i] = std::cos(angle);
      sinOut[t * half + i] = std::sin(angle);
    }
  }
}

}  // namespace paraserve
