// Launchers of the CUDA backend's own kernels: everything of the Llama-family forward pass
// except the matrix products, which go through cuBLAS (CudaStage.cpp). Plain C++ so that
// host code compiled by the C++ compiler can call them; each launches on the given stream
// and returns the launch status rather than throwing (the caller names the failing step).
//
// Precision: the residual stream, norms, rotary embeddings, softmax and SwiGLU run in fp32;
// tensors that feed a matrix product are stored in the stage's weight type ("act" below:
// f32, f16 or bf16) because cuBLAS multiplies operands of one type.
#pragma once

#ifdef PARASERVE_WITH_CUDA

#include <cuda_runtime.h>

#include <cstdint>

#include "core/DType.h"

namespace paraserve::cuda {

// dst[i] = convert(src[i]) for count elements, between any two of f32 / f16 / bf16.
cudaError_t launchConvert(const void* src, DType srcType, void* dst, DType dstType, int64_t count,
                          cudaStream_t stream);

// out (tokens x hidden, fp32) = rows of the embedding table (vocab x hidden, act).
cudaError_t launchEmbed(const int32_t* tokens, int64_t tokenCount, const void* table, DType actType,
                        int64_t hidden, float* out, cudaStream_t stream);

// out (rows x hidden, act) = x / rms(x) * weight, per row of x (fp32); weight in act.
cudaError_t launchRmsNorm(const float* x, const void* weight, DType actType, int64_t rows, int64_t hidden,
                          double eps, void* out, cudaStream_t stream);

// x (rows x width, fp32) += bias (width, act).
cudaError_t launchAddBias(float* x, const void* bias, DType actType, int64_t rows, int64_t width,
                          cudaStream_t stream);

// One request's fused projections, rotated and stored. qkv holds per token one row of
// (heads + 2 kvHeads) x headDim fp32 values: queries, keys, values. Queries are rotated into
// qOut (tokens x heads x headDim, act); keys are rotated and values copied into the KV cache
// rows [position, position + tokens) of keys / values (capacity x kvHeads x headDim, act).
// Rotate-half rotary embedding with angle position * invFreq[i] in fp32, as transformers.
// When positionOnDevice is not null the position is read from there at run time instead
// (so a captured CUDA graph serves every decode step of a sequence).
cudaError_t launchRopeAndCache(const float* qkv, int64_t tokens, int64_t heads, int64_t kvHeads, int64_t headDim,
                               int64_t position, const int64_t* positionOnDevice, const float* invFreq, void* qOut,
                               void* keys, void* values, DType actType, cudaStream_t stream);

// scores (heads x tokens x keys, fp32, already scaled) → probabilities (act) of a causal
// softmax: query t (at position firstPosition + t) sees keys [0, firstPosition + t].
cudaError_t launchCausalSoftmax(const float* scores, int64_t heads, int64_t tokens, int64_t keys,
                                int64_t firstPosition, void* probabilities, DType actType, cudaStream_t stream);

// The matrix-vector form of a linear layer for decode steps, where cuBLAS's general kernels
// leave memory bandwidth unused: y (rows x out, fp32) = x (rows x in, act) · weight^T
// (out x in, act), added to y when accumulate. One warp per output feature streams its
// weight row once for all rows (at most kMaxGemvRows). Returns cudaErrorNotSupported
// (nothing launched) for shapes it does not cover: more rows, or rows not 16-byte aligned.
constexpr int64_t kMaxGemvRows = 4;
cudaError_t launchGemv(const void* weight, const void* x, DType actType, int64_t rows, int64_t in, int64_t out,
                       float* y, bool accumulate, cudaStream_t stream);

// Attention of one query token per head (a decode step) in one kernel, in place of the two
// matrix products and the softmax of the prefill path: out (heads x headDim, act) from q
// (heads x headDim, act) and the first `keys` rows of keys / values (capacity x kvHeads x
// headDim, act), scale 1/sqrt(headDim), fp32 softmax. With positionOnDevice, keyCount is
// read at run time as *positionOnDevice + 1 and maxKeys bounds it (shared memory size);
// otherwise maxKeys = keyCount. Returns cudaErrorNotSupported (nothing launched) past
// kMaxDecodeKeys keys or for headDim above 256.
constexpr int64_t kMaxDecodeKeys = 8192;
cudaError_t launchDecodeAttention(const void* q, const void* keys, const void* values, int64_t heads, int64_t kvHeads,
                                  int64_t headDim, int64_t keyCount, const int64_t* positionOnDevice, int64_t maxKeys,
                                  void* out, DType actType, cudaStream_t stream);

// out (rows x width, act) = silu(gate) * up, from gateUp rows of 2 x width fp32 values
// (the fused gate and up projections: gate first).
cudaError_t launchSwiGlu(const float* gateUp, int64_t rows, int64_t width, void* out, DType actType,
                         cudaStream_t stream);

}  // namespace paraserve::cuda

#endif  // PARASERVE_WITH_CUDA
