// Rotary position embedding frequencies, exactly as Hugging Face transformers computes them
// (modeling_rope_utils: default, linear, llama3), in fp32 like torch does, so that cos/sin
// tables — and therefore logits — match a transformers run of the same checkpoint.
#pragma once

#include <cstdint>
#include <vector>

#include "core/Backend.h"

namespace paraserve {

// inv_freq[i] for i in [0, headDim/2): 1 / theta^(2i/headDim), then scaled per rope.kind.
std::vector<float> ropeInverseFrequencies(int64_t headDim, double theta, const RopeScaling& rope);

// cos/sin tables (count x headDim/2) for positions first .. first+count-1; the angle is
// position * inv_freq in fp32, as transformers' rotary embedding forms it.
void ropeTables(const std::vector<float>& invFreq, int64_t first, int64_t count, float* cosOut, float* sinOut);

}  // namespace paraserve
