// fp32 CPU kernels of a Llama-family layer. Each output element is computed by one thread
// in a fixed order that does not depend on how many tokens a call holds, so a prefill split
// into several calls yields bit-identical results to one call over the whole sequence.
// Row-major everywhere; shapes are given beside the pointers.
#pragma once

#include <cstdint>

namespace paraserve::cpu {

// out = x * rsqrt(mean(x^2) + eps) * weight, per row (transformers' LlamaRMSNorm in fp32).
void rmsNorm(const float* x,       // (rows, n)
             const float* weight,  // (n)
             int64_t rows, int64_t n, double eps,
             float* out);          // (rows, n)

// y = x W^T (+ bias): a Hugging Face nn.Linear with weight in [out, in] layout.
void linear(const float* x,     // (rows, in)
            const float* w,     // (out, in)
            const float* bias,  // (out) or nullptr
            int64_t rows, int64_t in, int64_t out,
            float* y);          // (rows, out)

// Rotates each head in place, "rotate_half" convention: dims i and i + headDim/2 pair up.
void applyRope(float* x,           // (rows, heads, headDim)
               const float* cosT,  // (rows, headDim/2)
               const float* sinT,  // (rows, headDim/2)
               int64_t rows, int64_t heads, int64_t headDim);

// Causal grouped-query attention of rows queries at positions first .. first+rows-1 over a
// cache holding keys/values of positions 0 .. first+rows-1.
void attention(const float* q,        // (rows, heads, headDim), rotated
               const float* keys,     // (first+rows, kvHeads, headDim), rotated
               const float* values,   // (first+rows, kvHeads, headDim)
               int64_t rows, int64_t first, int64_t heads, int64_t kvHeads, int64_t headDim,
               float* out);           // (rows, heads, headDim)

// gate = silu(gate) * up, elementwise.
void swiglu(float* gate, const float* up, int64_t n);

// x += delta, elementwise.
void addInPlace(float* x, const float* delta, int64_t n);

}  // namespace paraserve::cpu
