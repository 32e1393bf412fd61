// Test helper (no tests of its own): an independent, deliberately plain Llama-family
// forward pass in float64, written from the Hugging Face transformers definitions
// (LlamaRMSNorm, rotate_half RoPE with default/linear/llama3 inverse frequencies, grouped-
// query causal attention, SwiGLU MLP). No KV cache, no tiling, nothing shared with the C++
// backend: it recomputes the whole sequence, so it is the oracle the native stage is
// checked against.
import type { TinyModel } from './tiny-model.js';

type Matrix = number[][];

function tensor(model: TinyModel, name: string): Float32Array {
  const t = model.tensors.get(name);
  if (t === undefined) throw new Error(`reference: no tensor ${name}`);
  return t.values;
}

function rmsNorm(x: number[], weight: Float32Array, eps: number): number[] {
  const meanSquare = x.reduce((sum, v) => sum + v * v, 0) / x.length;
  const scale = 1 / Math.sqrt(meanSquare + eps);
  return x.map((v, i) => (weight[i] ?? 0) * v * scale);
}

/** HF nn.Linear: weight is [out, in]. */
function linear(x: number[], weight: Float32Array, out: number, bias: Float32Array | null): number[] {
  const inSize = x.length;
  const y: number[] = [];
  for (let o = 0; o < out; o++) {
    let sum = 0;
    for (let i = 0; i < inSize; i++) sum += (x[i] ?? 0) * (weight[o * inSize + i] ?? 0);
    y.push(sum + (bias === null ? 0 : (bias[o] ?? 0)));
  }
  return y;
}

export function referenceInverseFrequencies(model: TinyModel): number[] {
  const { headDim, ropeTheta, rope } = model.config;
  const base: number[] = [];
  for (let i = 0; i < headDim; i += 2) base.push(1 / Math.pow(ropeTheta, i / headDim));
  if (rope.kind === 'linear') return base.map((f) => f / rope.factor);
  if (rope.kind === 'llama3') {
    const lowFreqWavelen = rope.originalMaxPositionEmbeddings / rope.lowFreqFactor;
    const highFreqWavelen = rope.originalMaxPositionEmbeddings / rope.highFreqFactor;
    return base.map((f) => {
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highFreqWavelen) return f;
      if (wavelen > lowFreqWavelen) return f / rope.factor;
      const smooth =
        (rope.originalMaxPositionEmbeddings / wavelen - rope.lowFreqFactor) / (rope.highFreqFactor - rope.lowFreqFactor);
      return ((1 - smooth) * f) / rope.factor + smooth * f;
    });
  }
  return base;
}

/** rotate_half RoPE on one head vector: x*cos + rotate_half(x)*sin, rotate_half(x) = [-x2, x1]. */
function rotate(head: number[], position: number, invFreq: number[]): number[] {
  const half = head.length / 2;
  const out = new Array<number>(head.length);
  for (let i = 0; i < half; i++) {
    const angle = position * (invFreq[i] ?? 0);
    const x1 = head[i] ?? 0;
    const x2 = head[i + half] ?? 0;
    out[i] = x1 * Math.cos(angle) - x2 * Math.sin(angle);
    out[i + half] = x2 * Math.cos(angle) + x1 * Math.sin(angle);
  }
  return out;
}

function splitHeads(row: number[], heads: number, headDim: number): Matrix {
  const out: Matrix = [];
  for (let h = 0; h < heads; h++) out.push(row.slice(h * headDim, (h + 1) * headDim));
  return out;
}

/** Logits of the last token after running the whole model over tokens (positions 0..n-1). */
export function referenceLogits(model: TinyModel, tokens: number[]): number[] {
  const c = model.config;
  const embed = tensor(model, 'model.embed_tokens.weight');
  const invFreq = referenceInverseFrequencies(model);
  const qDim = c.numAttentionHeads * c.headDim;
  const kvDim = c.numKeyValueHeads * c.headDim;
  const group = c.numAttentionHeads / c.numKeyValueHeads;

  let x: Matrix = tokens.map((id) => Array.from(embed.subarray(id * c.hiddenSize, (id + 1) * c.hiddenSize)));
  for (let layer = 0; layer < c.numLayers; layer++) {
    const w = (suffix: string): Float32Array => tensor(model, `model.layers.${layer}.${suffix}`);
    const bias = (suffix: string): Float32Array | null => (c.attentionBias ? w(suffix) : null);
    const normed = x.map((row) => rmsNorm(row, w('input_layernorm.weight'), c.rmsNormEps));
    const q = normed.map((row, t) =>
      splitHeads(linear(row, w('self_attn.q_proj.weight'), qDim, bias('self_attn.q_proj.bias')), c.numAttentionHeads, c.headDim).map(
        (head) => rotate(head, t, invFreq),
      ),
    );
    const k = normed.map((row, t) =>
      splitHeads(linear(row, w('self_attn.k_proj.weight'), kvDim, bias('self_attn.k_proj.bias')), c.numKeyValueHeads, c.headDim).map(
        (head) => rotate(head, t, invFreq),
      ),
    );
    const v = normed.map((row) =>
      splitHeads(linear(row, w('self_attn.v_proj.weight'), kvDim, bias('self_attn.v_proj.bias')), c.numKeyValueHeads, c.headDim),
    );
    const attended = q.map((headsOfT, t) =>
      headsOfT.flatMap((qHead, h) => {
        const kvHead = Math.floor(h / group);
        const scores: number[] = [];
        for (let j = 0; j <= t; j++) {
          const key = k[j]?.[kvHead] ?? [];
          scores.push(qHead.reduce((sum, value, d) => sum + value * (key[d] ?? 0), 0) / Math.sqrt(c.headDim));
        }
        const max = Math.max(...scores);
        const exps = scores.map((s) => Math.exp(s - max));
        const total = exps.reduce((a, b) => a + b, 0);
        const out = new Array<number>(c.headDim).fill(0);
        exps.forEach((e, j) => {
          const value = v[j]?.[kvHead] ?? [];
          for (let d = 0; d < c.headDim; d++) out[d] = (out[d] ?? 0) + (e / total) * (value[d] ?? 0);
        });
        return out;
      }),
    );
    x = x.map((row, t) => {
      const projected = linear(attended[t] ?? [], w('self_attn.o_proj.weight'), c.hiddenSize, null);
      return row.map((value, i) => value + (projected[i] ?? 0));
    });
    x = x.map((row) => {
      const n = rmsNorm(row, w('post_attention_layernorm.weight'), c.rmsNormEps);
      const gate = linear(n, w('mlp.gate_proj.weight'), c.intermediateSize, null);
      const up = linear(n, w('mlp.up_proj.weight'), c.intermediateSize, null);
      const act = gate.map((g, i) => (g / (1 + Math.exp(-g))) * (up[i] ?? 0));
      const down = linear(act, w('mlp.down_proj.weight'), c.hiddenSize, null);
      return row.map((value, i) => value + (down[i] ?? 0));
    });
  }
  const last = rmsNorm(x[x.length - 1] ?? [], tensor(model, 'model.norm.weight'), c.rmsNormEps);
  const head = c.tieWordEmbeddings ? embed : tensor(model, 'lm_head.weight');
  return linear(last, head, c.vocabSize, null);
}
