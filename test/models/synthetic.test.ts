// make-model: deterministic bytes per (preset, seed, dtype), real Hugging Face files for each
// architecture, sensible weight statistics, progress, and the reference writer's layout.
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { fromBFloat16Bits, fromFloat16Bits } from '../../worker/models/half.js';
import { parseSafetensorsHeader, type TensorInfo } from '../../worker/models/safetensors.js';
import { MODEL_PRESETS, writeSyntheticModel } from '../../worker/models/synthetic.js';

const root = await mkdtemp(join(tmpdir(), 'paraserve-synth-'));
t.teardown(() => rm(root, { recursive: true, force: true }));
let dirs = 0;
const freshDir = () => join(root, String(dirs++));

async function digests(dir: string, files: { path: string }[]): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of files) out[f.path] = createHash('sha256').update(await readFile(join(dir, f.path))).digest('hex');
  return out;
}

async function readJson(dir: string, file: string): Promise<Record<string, unknown>> {
  return JSON.parse(await readFile(join(dir, file), 'utf8')) as Record<string, unknown>;
}

async function tensorsOf(dir: string, file: string): Promise<{ bytes: Buffer; infos: TensorInfo[] }> {
  const bytes = await readFile(join(dir, file));
  return { bytes, infos: parseSafetensorsHeader(bytes, bytes.length, file) };
}

function values(bytes: Buffer, info: TensorInfo): number[] {
  const out: number[] = [];
  const width = info.dtype === 'f32' ? 4 : 2;
  for (let at = info.begin; at < info.end; at += width) {
    if (info.dtype === 'f32') out.push(bytes.readFloatLE(at));
    else if (info.dtype === 'f16') out.push(fromFloat16Bits(bytes.readUInt16LE(at)));
    else out.push(fromBFloat16Bits(bytes.readUInt16LE(at)));
  }
  return out;
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const std = (xs: number[]) => Math.sqrt(mean(xs.map((x) => (x - mean(xs)) ** 2)));

t.test('same preset, seed and dtype give the same bytes; another seed does not', async (t) => {
  const a = freshDir();
  const b = freshDir();
  const c = freshDir();
  const ra = await writeSyntheticModel({ dir: a, preset: 'tiny-llama3', seed: 42, dtype: null, sharded: false }, null);
  await writeSyntheticModel({ dir: b, preset: 'tiny-llama3', seed: 42, dtype: null, sharded: false }, null);
  await writeSyntheticModel({ dir: c, preset: 'tiny-llama3', seed: 43, dtype: null, sharded: false }, null);
  const [da, db, dc] = [await digests(a, ra.files), await digests(b, ra.files), await digests(c, ra.files)];
  t.same(da, db, 'identical sha256 for every file');
  t.not(da['model.safetensors'], dc['model.safetensors'], 'weights differ with the seed');
  t.equal(da['tokenizer.json'], dc['tokenizer.json'], 'tokenizer does not depend on the seed');

  const f32 = freshDir();
  const r32 = await writeSyntheticModel({ dir: f32, preset: 'tiny-llama3', seed: 42, dtype: 'f32', sharded: false }, null);
  const size = (r: typeof ra) => r.files.find((f) => f.path === 'model.safetensors')?.size ?? 0;
  t.ok(size(r32) > 1.9 * size(ra), 'f32 weights are twice the bytes');
  t.not((await digests(f32, r32.files))['model.safetensors'], da['model.safetensors']);
});

t.test('sharding changes the layout, not the tensors', async (t) => {
  const single = freshDir();
  const sharded = freshDir();
  await writeSyntheticModel({ dir: single, preset: 'tiny-mistral', seed: 7, dtype: null, sharded: false }, null);
  const r = await writeSyntheticModel({ dir: sharded, preset: 'tiny-mistral', seed: 7, dtype: null, sharded: true }, null);
  t.same(
    r.files.map((f) => f.path),
    ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors.index.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'],
  );
  const index = await readJson(sharded, 'model.safetensors.index.json');
  const weightMap = index.weight_map as Record<string, string>;
  const s = await tensorsOf(single, 'model.safetensors');
  t.equal(Object.keys(weightMap).length, s.infos.length);
  const shardSizes = r.files.filter((f) => f.path.startsWith('model-')).map((f) => f.size);
  t.ok(Math.max(...shardSizes) < 0.7 * shardSizes.reduce((a, b) => a + b, 0), 'two shards of similar size');
  t.equal((index.metadata as Record<string, number>).total_size, s.bytes.length - (s.infos[0]?.begin ?? 0), 'total_size is the tensor bytes');
  for (const file of new Set(Object.values(weightMap))) {
    const shard = await tensorsOf(sharded, file);
    for (const info of shard.infos) {
      t.equal(weightMap[info.name], file);
      const same = s.infos.find((i) => i.name === info.name);
      if (same === undefined) throw new Error(info.name);
      t.ok(shard.bytes.subarray(info.begin, info.end).equals(s.bytes.subarray(same.begin, same.end)), `${info.name} has the same bytes`);
    }
  }
});

t.test('safetensors layout as the reference writer makes it', async (t) => {
  const dir = freshDir();
  await writeSyntheticModel({ dir, preset: 'tiny-llama2', seed: 1, dtype: null, sharded: false }, null);
  const { bytes, infos } = await tensorsOf(dir, 'model.safetensors');
  const n = Number(bytes.readBigUInt64LE(0));
  t.equal(n % 8, 0, 'header padded to 8 bytes');
  const header = bytes.subarray(8, 8 + n).toString('utf8');
  t.match(header, /^\{"__metadata__":\{"format":"pt"\},/);
  t.match(header, /\}\s*$/);
  const names = infos.map((i) => i.name);
  t.same(names, [...names].sort(), 'tensors sorted by name in the file');
  t.ok(infos.every((i) => i.dtype === 'f16'), 'llama2-style default dtype is f16');
});

t.test('config.json of each architecture', async (t) => {
  const expectations: Record<string, Record<string, unknown>> = {
    'tiny-llama2': { architectures: ['LlamaForCausalLM'], model_type: 'llama', rope_theta: 10000, rope_scaling: null, tie_word_embeddings: false, torch_dtype: 'float16', num_key_value_heads: 4, head_dim: 16 },
    'tiny-llama3': {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      rope_theta: 500000,
      rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
      tie_word_embeddings: false,
      torch_dtype: 'bfloat16',
      num_key_value_heads: 2,
    },
    'tiny-mistral': { architectures: ['MistralForCausalLM'], model_type: 'mistral', sliding_window: null, num_key_value_heads: 2 },
    'tiny-qwen2': { architectures: ['Qwen2ForCausalLM'], model_type: 'qwen2', tie_word_embeddings: true, rope_theta: 1000000, use_sliding_window: false },
  };
  for (const [preset, expected] of Object.entries(expectations)) {
    const dir = freshDir();
    await writeSyntheticModel({ dir, preset, seed: 1, dtype: null, sharded: false }, null);
    const config = await readJson(dir, 'config.json');
    t.match(config, { ...expected, vocab_size: 512, hidden_size: 64, num_hidden_layers: 2, hidden_act: 'silu' }, preset);
    t.ok('sliding_window' in config === (preset !== 'tiny-llama2' && preset !== 'tiny-llama3'), `${preset}: sliding_window where the class has it`);
    const tokenizerConfig = await readJson(dir, 'tokenizer_config.json');
    t.match(tokenizerConfig, { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>', chat_template: /start_header_id/ });
    const generation = await readJson(dir, 'generation_config.json');
    t.same(generation.eos_token_id, [508, 511]);
    const tokenizer = await readJson(dir, 'tokenizer.json');
    const pre =
      preset === 'tiny-qwen2'
        ? { type: 'Sequence', pretokenizers: [{ type: 'Split', behavior: 'Isolated' }, { type: 'ByteLevel', use_regex: false }] }
        : { type: 'ByteLevel', add_prefix_space: false, use_regex: true };
    t.match(tokenizer, { model: { type: 'BPE' }, pre_tokenizer: pre, decoder: { type: 'ByteLevel' } }, `${preset}: tokenizer pipeline`);
  }
});

t.test('weight statistics', async (t) => {
  const dir = freshDir();
  await writeSyntheticModel({ dir, preset: 'tiny-qwen2', seed: 5, dtype: 'f32', sharded: false }, null);
  const { bytes, infos } = await tensorsOf(dir, 'model.safetensors');
  const get = (name: string) => {
    const info = infos.find((i) => i.name === name);
    if (info === undefined) throw new Error(name);
    return values(bytes, info);
  };
  const norm = get('model.layers.0.input_layernorm.weight');
  t.ok(Math.abs(mean(norm) - 1) < 0.05 && std(norm) > 0.05 && std(norm) < 0.15, `norm weights near 1 (mean ${mean(norm)}, std ${std(norm)})`);
  const q = get('model.layers.1.self_attn.q_proj.weight');
  t.ok(Math.abs(mean(q)) < 0.01 && Math.abs(std(q) - 1 / 8) < 0.01, `matrices: std 1/sqrt(fan_in) (std ${std(q)})`);
  const down = get('model.layers.1.mlp.down_proj.weight');
  t.ok(Math.abs(std(down) - 1 / Math.sqrt(128)) < 0.01, 'down_proj fan_in is the intermediate size');
  const bias = get('model.layers.0.self_attn.v_proj.bias');
  t.ok(std(bias) < 0.04 && std(bias) > 0.01, 'biases small');
  t.ok(new Set(q).size > q.length / 2, 'values are not repeated patterns');
  t.not(get('model.layers.0.self_attn.q_proj.weight')[0], q[0], 'each tensor draws its own values');

  const bf = freshDir();
  await writeSyntheticModel({ dir: bf, preset: 'tiny-qwen2', seed: 5, dtype: 'bf16', sharded: false }, null);
  const b = await tensorsOf(bf, 'model.safetensors');
  const qb = b.infos.find((i) => i.name === 'model.layers.1.self_attn.q_proj.weight');
  if (qb === undefined) throw new Error('q');
  const qbv = values(b.bytes, qb);
  t.ok(qbv.every((v, i) => Math.abs(v - (q[i] ?? 0)) <= Math.abs(q[i] ?? 0) / 128), 'bf16 values are the f32 values rounded');
});

t.test('progress and presets', async (t) => {
  const dir = freshDir();
  const seen: [number, number][] = [];
  const r = await writeSyntheticModel({ dir, preset: 'demo', seed: 0, dtype: null, sharded: true }, (done, total) => seen.push([done, total]));
  const total = r.files.reduce((s, f) => s + f.size, 0);
  t.ok(seen.length > 5);
  t.ok(seen.every(([, tot]) => tot === total), 'total is known from the start');
  t.ok(seen.every(([done], i) => i === 0 || done > (seen[i - 1]?.[0] ?? 0)), 'done increases');
  t.same(seen.at(-1), [total, total]);

  t.same(Object.keys(MODEL_PRESETS).sort(), ['demo', 'llama-100m', 'llama-13b', 'llama-1b', 'llama-3b', 'llama-7b', 'llama-8b', 'tiny-llama2', 'tiny-llama3', 'tiny-mistral', 'tiny-qwen2']);
  await t.rejects(writeSyntheticModel({ dir: freshDir(), preset: 'gpt-5', seed: 0, dtype: null, sharded: false }, null), { name: 'RangeError', message: /unknown preset gpt-5/ });
  await t.rejects(writeSyntheticModel({ dir: freshDir(), preset: 'demo', seed: -1, dtype: null, sharded: false }, null), RangeError);
});
