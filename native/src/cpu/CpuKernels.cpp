// fp32 CPU kernels (see CpuKernels.h).
//
// Parallelism: OpenMP when the build found it (CMakeLists.txt), over output rows of a
// matmul and over (token, head) pairs of attention. OpenMP rather than std::thread because
// a forward call issues hundreds of small parallel loops per token (7 matmuls per layer)
// and libgomp keeps its team warm between them, where spawning or waking std::threads per
// loop costs more than a decode-step matmul of a small model. Small loops stay serial (the
// `if` clauses), so a 2-core CI box is not flooded. No exception may leave a parallel
// region, so scratch space is allocated before each one.
//
// Vector width: the binary targets x86-64-v2 for portability; the two hot loops (matmul
// tile, one attention row) also get an x86-64-v3 (AVX2) clone that glibc's ifunc picks at
// load time on CPUs that have it. The matmul tile multiplies each weight row against four
// input rows at once, so a prefill loads each weight once per four tokens; on an x86-64-v3
// Xeon core that ran 2x faster than one dot product per output (measured single-threaded).
// Summation order is fixed (see dotRows), so none of this changes results.
#include "cpu/CpuKernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define PARASERVE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PARASERVE_CLONES
#endif

namespace paraserve::cpu {

namespace {

// Multiply-adds below which a loop runs on the calling thread alone.
constexpr int64_t kParallelWork = int64_t{1} << 16;
// Tile of a matmul: kOutTile weight rows against kRowTile input rows, so both stay in L2.
constexpr int64_t kOutTile = 16;
constexpr int64_t kRowTile = 32;

int maxThreads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

int threadIndex() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

// Eight floats in one vector register (two SSE registers in the x86-64-v2 build).
typedef float Vec8 __attribute__((vector_size(32)));

__attribute__((always_inline)) inline Vec8 load8(const float* p) {
  Vec8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// out[r] = x[r] · w for Rows input rows sharing each load of w: two 8-lane partial sums per
// row (independent chains that hide add latency), then the lanes left to right, then the
// tail. Every element is summed in this order whatever Rows is, and the build turns off
// FMA contraction, so tiling never changes a result.
template <int Rows>
__attribute__((always_inline)) inline void dotRows(const float* const* x, const float* w, int64_t n, float* out) {
  Vec8 low[Rows] = {};
  Vec8 high[Rows] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const Vec8 w0 = load8(w + i);
    const Vec8 w1 = load8(w + i + 8);
    for (int r = 0; r < Rows; ++r) {
      low[r] += load8(x[r] + i) * w0;
      high[r] += load8(x[r] + i + 8) * w1;
    }
  }
  for (int r = 0; r < Rows; ++r) {
    float sum = 0.0f;
    for (int l = 0; l < 8; ++l) sum += low[r][l];
    for (int l = 0; l < 8; ++l) sum += high[r][l];
    for (int64_t j = i; j < n; ++j) sum += x[r][j] * w[j];
    out[r] = sum;
  }
}

__attribute__((always_inline)) inline float dot(const float* a, const float* b, int64_t n) {
  float out;
  dotRows<1>(&a, b, n, &out);
  return out;
}

PARASERVE_CLONES
void linearTile(const float* x, const float* w, const float* bias, int64_t rows, int64_t in, int64_t out,
                int64_t outBegin, int64_t outEnd, float* y) {
  for (int64_t rowBegin = 0; rowBegin < rows; rowBegin += kRowTile) {
    const int64_t rowEnd = std::min(rows, rowBegin + kRowTile);
    for (int64_t o = outBegin; o < outEnd; ++o) {
      const float* wRow = w + o * in;
      const float b = bias != nullptr ? bias[o] : 0.0f;
      int64_t t = rowBegin;
      for (; t + 4 <= rowEnd; t += 4) {
        const float* xs[4] = {x + t * in, x + (t + 1) * in, x + (t + 2) * in, x + (t + 3) * in};
        float values[4];
        dotRows<4>(xs, wRow, in, values);
        for (int r = 0; r < 4; ++r) y[(t + r) * out + o] = bias != nullptr ? values[r] + b : values[r];
      }
      for (; t < rowEnd; ++t) {
        const float value = dot(x + t * in, wRow, in);
        y[t * out + o] = bias != nullptr ? value + b : value;
      }
    }
  }
}

// One query row of one head: softmax(q·K^T * scale) V over count cached positions.
PARASERVE_CLONES
void attendRow(const float* q, const float* keys, const float* values, int64_t count, int64_t stride,
               int64_t headDim, float scale, float* scores, float* out) {
  float maxScore = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < count; ++j) {
    const float s = dot(q, keys + j * stride, headDim) * scale;
    scores[j] = s;
    maxScore = std::max(maxScore, s);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < count; ++j) {
    const float e = std::exp(scores[j] - maxScore);
    scores[j] = e;
    sum += e;
  }
  std::fill(out, out + headDim, 0.0f);
  for (int64_t j = 0; j < count; ++j) {
    const float p = scores[j] / sum;
    const float* v = values + j * stride;
#pragma omp simd
    for (int64_t d = 0; d < headDim; ++d) out[d] += p * v[d];
  }
}

}  // namespace

void rmsNorm(const float* x, const float* weight, int64_t rows, int64_t n, double eps, float* out) {
  const float epsilon = static_cast<float>(eps);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    double sumSquares = 0.0;
    for (int64_t i = 0; i < n; ++i) sumSquares += static_cast<double>(xr[i]) * xr[i];
    const float variance = static_cast<float>(sumSquares / static_cast<double>(n));
    const float inverse = 1.0f / std::sqrt(variance + epsilon);
    float* outRow = out + r * n;
    for (int64_t i = 0; i < n; ++i) outRow[i] = weight[i] * (xr[i] * inverse);
  }
}

void linear(const float* x, const float* w, const float* bias, int64_t rows, int64_t in, int64_t out, float* y) {
  const int64_t tiles = (out + kOutTile - 1) / kOutTile;
  const bool parallel = rows * in * out >= kParallelWork;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    linearTile(x, w, bias, rows, in, out, tile * kOutTile, std::min(out, (tile + 1) * kOutTile), y);
  }
}

void applyRope(float* x, const float* cosT, const float* sinT, int64_t rows, int64_t heads, int64_t headDim) {
  const int64_t half = headDim / 2;
  for (int64_t t = 0; t < rows; ++t) {
    const float* c = cosT + t * half;
    const float* s = sinT + t * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x + (t * heads + h) * headDim;
      for (int64_t i = 0; i < half; ++i) {
        const float first = v[i];
        const float second = v[i + half];
        v[i] = first * c[i] - second * s[i];
        v[i + half] = second * c[i] + first * s[i];
      }
    }
  }
}

void attention(const float* q, const float* keys, const float* values, int64_t rows, int64_t first, int64_t heads,
               int64_t kvHeads, int64_t headDim, float* out) {
  const int64_t total = first + rows;
  const int64_t group = heads / kvHeads;
  const int64_t stride = kvHeads * headDim;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(headDim)));
  const int threads = maxThreads();
  std::vector<float> scratch(static_cast<size_t>(threads) * static_cast<size_t>(total));
  const bool parallel = rows * heads * total * headDim >= kParallelWork;
#pragma omp parallel num_threads(threads) if (parallel)
  {
    float* scores = scratch.data() + static_cast<int64_t>(threadIndex()) * total;
#pragma omp for schedule(dynamic, 1)
    for (int64_t pair = 0; pair < rows * heads; ++pair) {
      const int64_t t = pair / heads;
      const int64_t h = pair % heads;
      const int64_t kvHead = h / group;
      attendRow(q + pair * headDim, keys + kvHead * headDim, values + kvHead * headDim, first + t + 1, stride,
                headDim, scale, scores, out + pair * headDim);
    }
  }
}

void swiglu(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    gate[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void addInPlace(float* x, const float* delta, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += delta[i];
}

}  // namespace paraserve::cpu
