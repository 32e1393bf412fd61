// Element types of checkpoint tensors and their conversion to fp32. Weights arrive in the
// dtype they are stored in (f32/f16/bf16 safetensors) and the CPU backend computes in fp32,
// so conversion happens once, when a tensor is bound.
#pragma once

#include <cstdint>
#include <string>

namespace paraserve {

enum class DType { F32, F16, BF16 };

// "f32" | "f16" | "bf16" (the names of addon-types.ts); throws InvalidArgumentError otherwise.
DType parseDType(const std::string& name, const char* what);
const char* dtypeName(DType dtype);
uint64_t dtypeSize(DType dtype);

// Converts count elements starting at src (any alignment) into dst. Exact for every value,
// including subnormals, infinities and NaN.
void convertToF32(const uint8_t* src, DType dtype, uint64_t count, float* dst);

}  // namespace paraserve
