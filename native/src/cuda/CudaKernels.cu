// The CUDA backend's element-wise, normalisation and softmax kernels (see CudaKernels.h).
// They are memory-bound and small next to the matrix products, so each is written for
// clarity: one thread per element, or one block per row where a row reduction is needed.
#ifdef PARASERVE_WITH_CUDA

#include "cuda/CudaKernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace paraserve::cuda {

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load(const void* base, DType type, int64_t index) {
  switch (type) {
    case DType::F16:
      return __half2float(static_cast<const __half*>(base)[index]);
    case DType::BF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
    default:
      return static_cast<const float*>(base)[index];
  }
}

__device__ __forceinline__ void store(void* base, DType type, int64_t index, float value) {
  switch (type) {
    case DType::F16:
      static_cast<__half*>(base)[index] = __float2half_rn(value);
      break;
    case DType::BF16:
      static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(value);
      break;
    default:
      static_cast<float*>(base)[index] = value;
  }
}

uint64_t dtypeSizeOnDevice(DType type) { return type == DType::F32 ? 4 : 2; }

unsigned int blocksFor(int64_t count) { return static_cast<unsigned int>((count + kThreads - 1) / kThreads); }

// Sum of value over the block, returned to every thread. blockDim.x is a multiple of 32.
__device__ float blockSum(float value) {
  __shared__ float partial[32];
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  const int warps = blockDim.x / 32;
  float total = lane < warps ? partial[lane] : 0.0f;
  for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
  return total;
}

__device__ float blockMax(float value) {
  __shared__ float partial[32];
  for (int offset = 16; offset > 0; offset /= 2) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  const int warps = blockDim.x / 32;
  float best = lane < warps ? partial[lane] : -INFINITY;
  for (int offset = 16; offset > 0; offset /= 2) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, offset));
  return best;
}

__global__ void convertKernel(const void* src, DType srcType, void* dst, DType dstType, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) store(dst, dstType, i, load(src, srcType, i));
}

__global__ void embedKernel(const int32_t* tokens, const void* table, DType actType, int64_t hidden, float* out) {
  const int64_t row = blockIdx.y;
  const int64_t token = tokens[row];
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < hidden;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[row * hidden + i] = load(table, actType, token * hidden + i);
  }
}

// One block per row: fp32 mean of squares, then x * rsqrt(mean + eps) * weight, as
// transformers' LlamaRMSNorm (variance in fp32, weight applied after the cast).
__global__ void rmsNormKernel(const float* x, const void* weight, DType actType, int64_t hidden, float eps,
                              void* out) {
  const float* row = x + blockIdx.x * hidden;
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) sum += row[i] * row[i];
  const float scale = rsqrtf(blockSum(sum) / static_cast<float>(hidden) + eps);
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    store(out, actType, blockIdx.x * hidden + i, row[i] * scale * load(weight, actType, i));
  }
}

__global__ void addBiasKernel(float* x, const void* bias, DType actType, int64_t rows, int64_t width) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * width) x[i] += load(bias, actType, i % width);
}

// Grid (tokens, heads + kvHeads); threads over half a head. Query heads write qOut; key
// heads write the rotated key and the value into the cache row of their position.
__global__ void ropeAndCacheKernel(const float* qkv, int64_t heads, int64_t kvHeads, int64_t headDim,
                                   int64_t fixedPosition, const int64_t* positionOnDevice, const float* invFreq,
                                   void* qOut, void* keys, void* values, DType actType) {
  const int64_t position = positionOnDevice != nullptr ? *positionOnDevice : fixedPosition;
  const int64_t token = blockIdx.x;
  const int64_t head = blockIdx.y;
  const int64_t half = headDim / 2;
  const float pos = static_cast<float>(position + token);
  const bool isQuery = head < heads;
  const float* row = qkv + token * (heads + 2 * kvHeads) * headDim;
  const float* in = row + head * headDim;  // key heads follow the query heads in the row
  const int64_t kvHead = head - heads;
  const int64_t outBase =
      isQuery ? (token * heads + head) * headDim : ((position + token) * kvHeads + kvHead) * headDim;
  void* out = isQuery ? qOut : keys;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float angle = pos * invFreq[i];
    const float c = cosf(angle);
    const float s = sinf(angle);
    const float x1 = in[i];
    const float x2 = in[i + half];
    store(out, actType, outBase + i, x1 * c - x2 * s);
    store(out, actType, outBase + i + half, x2 * c + x1 * s);
  }
  if (!isQuery) {
    const float* valueIn = row + (heads + kvHeads + kvHead) * headDim;
    for (int64_t i = threadIdx.x; i < headDim; i += blockDim.x) store(values, actType, outBase + i, valueIn[i]);
  }
}

// One block per (head, query) row of keys entries.
__global__ void causalSoftmaxKernel(const float* scores, int64_t tokens, int64_t keys, int64_t firstPosition,
                                    void* probabilities, DType actType) {
  const int64_t rowIndex = blockIdx.x;
  const int64_t query = rowIndex % tokens;
  const int64_t visible = firstPosition + query + 1;
  const float* row = scores + rowIndex * keys;
  float best = -INFINITY;
  for (int64_t i = threadIdx.x; i < visible; i += blockDim.x) best = fmaxf(best, row[i]);
  best = blockMax(best);
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < visible; i += blockDim.x) sum += expf(row[i] - best);
  const float inverse = 1.0f / blockSum(sum);
  for (int64_t i = threadIdx.x; i < keys; i += blockDim.x) {
    store(probabilities, actType, rowIndex * keys + i, i < visible ? expf(row[i] - best) * inverse : 0.0f);
  }
}

__global__ void swiGluKernel(const float* gateUp, int64_t rows, int64_t width, void* out, DType actType) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * width) {
    const int64_t row = i / width;
    const int64_t column = i % width;
    const float g = gateUp[row * 2 * width + column];
    const float u = gateUp[row * 2 * width + width + column];
    store(out, actType, i, g / (1.0f + expf(-g)) * u);
  }
}

// 16 bytes of act values as floats.
template <typename T>
struct Unpack;

template <>
struct Unpack<__half> {
  static constexpr int kCount = 8;
  __device__ static void apply(const uint4& raw, float* out) {
    const auto* pairs = reinterpret_cast<const __half2*>(&raw);
    for (int i = 0; i < 4; ++i) {
      const float2 f = __half22float2(pairs[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};

template <>
struct Unpack<__nv_bfloat16> {
  static constexpr int kCount = 8;
  __device__ static void apply(const uint4& raw, float* out) {
    const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(pairs[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};

template <>
struct Unpack<float> {
  static constexpr int kCount = 4;
  __device__ static void apply(const uint4& raw, float* out) {
    out[0] = __uint_as_float(raw.x);
    out[1] = __uint_as_float(raw.y);
    out[2] = __uint_as_float(raw.z);
    out[3] = __uint_as_float(raw.w);
  }
};

constexpr int kGemvWarps = 4;

template <typename T, int Rows>
__global__ void gemvKernel(const T* weight, const T* x, int64_t in, int64_t out, float* y, bool accumulate) {
  const int lane = threadIdx.x % 32;
  const int64_t feature = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (feature >= out) return;
  constexpr int kCount = Unpack<T>::kCount;
  const int64_t vectors = in / kCount;
  const auto* row = reinterpret_cast<const uint4*>(weight + feature * in);
  float sum[Rows] = {};
#pragma unroll 4
  for (int64_t v = lane; v < vectors; v += 32) {
    float w[kCount];
    Unpack<T>::apply(__ldg(row + v), w);
#pragma unroll
    for (int r = 0; r < Rows; ++r) {
      float a[kCount];
      Unpack<T>::apply(__ldg(reinterpret_cast<const uint4*>(x + r * in) + v), a);
#pragma unroll
      for (int j = 0; j < kCount; ++j) sum[r] += w[j] * a[j];
    }
  }
#pragma unroll
  for (int r = 0; r < Rows; ++r) {
    float total = sum[r];
    for (int offset = 16; offset > 0; offset /= 2) total += __shfl_xor_sync(0xffffffffu, total, offset);
    if (lane == 0) y[r * out + feature] = accumulate ? y[r * out + feature] + total : total;
  }
}

template <typename T>
cudaError_t gemvFor(const void* weight, const void* x, int64_t rows, int64_t in, int64_t out, float* y,
                    bool accumulate, cudaStream_t stream) {
  const auto* w = static_cast<const T*>(weight);
  const auto* a = static_cast<const T*>(x);
  const unsigned int blocks = static_cast<unsigned int>((out + kGemvWarps - 1) / kGemvWarps);
  const int threads = 32 * kGemvWarps;
  switch (rows) {
    case 1:
      gemvKernel<T, 1><<<blocks, threads, 0, stream>>>(w, a, in, out, y, accumulate);
      break;
    case 2:
      gemvKernel<T, 2><<<blocks, threads, 0, stream>>>(w, a, in, out, y, accumulate);
      break;
    case 3:
      gemvKernel<T, 3><<<blocks, threads, 0, stream>>>(w, a, in, out, y, accumulate);
      break;
    default:
      gemvKernel<T, 4><<<blocks, threads, 0, stream>>>(w, a, in, out, y, accumulate);
  }
  return cudaGetLastError();
}

constexpr int kAttentionThreads = 256;

// One block per query head. Phase 1: each warp scores keys warp, warp + 8, ... (lanes split
// the head dimension). Phase 2: fp32 softmax over the block. Phase 3: thread t accumulates
// dimension t % headDim over every (threads / headDim)-th key; partial sums are combined.
__global__ void decodeAttentionKernel(const void* q, const void* keys, const void* values, int64_t heads,
                                      int64_t kvHeads, int64_t headDim, int64_t fixedKeyCount,
                                      const int64_t* positionOnDevice, int64_t maxKeys, void* out, DType actType,
                                      float scale) {
  extern __shared__ float shared[];
  const int64_t keyCount = positionOnDevice != nullptr ? *positionOnDevice + 1 : fixedKeyCount;
  float* scores = shared;                // maxKeys
  float* partial = shared + maxKeys;     // kAttentionThreads
  __shared__ float query[256];
  const int64_t head = blockIdx.x;
  const int64_t kvHead = head / (heads / kvHeads);
  const int64_t rowStride = kvHeads * headDim;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  for (int64_t d = threadIdx.x; d < headDim; d += blockDim.x) query[d] = load(q, actType, head * headDim + d);
  __syncthreads();
  for (int64_t key = warp; key < keyCount; key += warps) {
    const int64_t base = key * rowStride + kvHead * headDim;
    float dot = 0.0f;
    for (int64_t d = lane; d < headDim; d += 32) dot += query[d] * load(keys, actType, base + d);
    for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    if (lane == 0) scores[key] = dot * scale;
  }
  __syncthreads();
  float best = -INFINITY;
  for (int64_t key = threadIdx.x; key < keyCount; key += blockDim.x) best = fmaxf(best, scores[key]);
  best = blockMax(best);
  float sum = 0.0f;
  for (int64_t key = threadIdx.x; key < keyCount; key += blockDim.x) {
    const float e = expf(scores[key] - best);
    scores[key] = e;
    sum += e;
  }
  const float inverse = 1.0f / blockSum(sum);
  __syncthreads();
  const int64_t groups = blockDim.x / headDim;  // threads per dimension
  const int64_t d = threadIdx.x % headDim;
  const int64_t group = threadIdx.x / headDim;
  float acc = 0.0f;
  if (group < groups) {
    for (int64_t key = group; key < keyCount; key += groups) {
      acc += scores[key] * load(values, actType, key * rowStride + kvHead * headDim + d);
    }
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.x < headDim) {
    float total = 0.0f;
    for (int64_t g = 0; g < groups; ++g) total += partial[g * headDim + threadIdx.x];
    store(out, actType, head * headDim + threadIdx.x, total * inverse);
  }
}

cudaError_t launched() { return cudaGetLastError(); }

}  // namespace

cudaError_t launchConvert(const void* src, DType srcType, void* dst, DType dstType, int64_t count,
                          cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  convertKernel<<<blocksFor(count), kThreads, 0, stream>>>(src, srcType, dst, dstType, count);
  return launched();
}

cudaError_t launchEmbed(const int32_t* tokens, int64_t tokenCount, const void* table, DType actType,
                        int64_t hidden, float* out, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>((hidden + kThreads - 1) / kThreads), static_cast<unsigned int>(tokenCount));
  embedKernel<<<grid, kThreads, 0, stream>>>(tokens, table, actType, hidden, out);
  return launched();
}

cudaError_t launchRmsNorm(const float* x, const void* weight, DType actType, int64_t rows, int64_t hidden,
                          double eps, void* out, cudaStream_t stream) {
  rmsNormKernel<<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(x, weight, actType, hidden,
                                                                           static_cast<float>(eps), out);
  return launched();
}

cudaError_t launchAddBias(float* x, const void* bias, DType actType, int64_t rows, int64_t width,
                          cudaStream_t stream) {
  addBiasKernel<<<blocksFor(rows * width), kThreads, 0, stream>>>(x, bias, actType, rows, width);
  return launched();
}

cudaError_t launchRopeAndCache(const float* qkv, int64_t tokens, int64_t heads, int64_t kvHeads, int64_t headDim,
                               int64_t position, const int64_t* positionOnDevice, const float* invFreq, void* qOut,
                               void* keys, void* values, DType actType, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned int>(tokens), static_cast<unsigned int>(heads + kvHeads));
  ropeAndCacheKernel<<<grid, 64, 0, stream>>>(qkv, heads, kvHeads, headDim, position, positionOnDevice, invFreq, qOut,
                                              keys, values, actType);
  return launched();
}

cudaError_t launchCausalSoftmax(const float* scores, int64_t heads, int64_t tokens, int64_t keys,
                                int64_t firstPosition, void* probabilities, DType actType, cudaStream_t stream) {
  causalSoftmaxKernel<<<static_cast<unsigned int>(heads * tokens), kThreads, 0, stream>>>(
      scores, tokens, keys, firstPosition, probabilities, actType);
  return launched();
}

cudaError_t launchGemv(const void* weight, const void* x, DType actType, int64_t rows, int64_t in, int64_t out,
                       float* y, bool accumulate, cudaStream_t stream) {
  const int64_t rowBytes = in * static_cast<int64_t>(dtypeSizeOnDevice(actType));
  const bool aligned = reinterpret_cast<uintptr_t>(weight) % 16 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       rowBytes % 16 == 0;
  if (rows < 1 || rows > kMaxGemvRows || !aligned) return cudaErrorNotSupported;
  switch (actType) {
    case DType::F16:
      return gemvFor<__half>(weight, x, rows, in, out, y, accumulate, stream);
    case DType::BF16:
      return gemvFor<__nv_bfloat16>(weight, x, rows, in, out, y, accumulate, stream);
    default:
      return gemvFor<float>(weight, x, rows, in, out, y, accumulate, stream);
  }
}

cudaError_t launchDecodeAttention(const void* q, const void* keys, const void* values, int64_t heads, int64_t kvHeads,
                                  int64_t headDim, int64_t keyCount, const int64_t* positionOnDevice, int64_t maxKeys,
                                  void* out, DType actType, cudaStream_t stream) {
  if (maxKeys > kMaxDecodeKeys || keyCount > maxKeys || headDim > 256) return cudaErrorNotSupported;
  const size_t sharedBytes = static_cast<size_t>(maxKeys + kAttentionThreads) * sizeof(float);
  if (sharedBytes > 48 * 1024) {
    const cudaError_t status = cudaFuncSetAttribute(decodeAttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    static_cast<int>(sharedBytes));
    if (status != cudaSuccess) return status;
  }
  decodeAttentionKernel<<<static_cast<unsigned int>(heads), kAttentionThreads, sharedBytes, stream>>>(
      q, keys, values, heads, kvHeads, headDim, keyCount, positionOnDevice, maxKeys, out, actType,
      1.0f / sqrtf(static_cast<float>(headDim)));
  return launched();
}

cudaError_t launchSwiGlu(const float* gateUp, int64_t rows, int64_t width, void* out, DType actType,
                         cudaStream_t stream) {
  swiGluKernel<<<blocksFor(rows * width), kThreads, 0, stream>>>(gateUp, rows, width, out, actType);
  return launched();
}

}  // namespace paraserve::cuda

#endif  // PARASERVE_WITH_CUDA
