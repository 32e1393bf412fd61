// inspectModel accepts every synthetic model (single file, sharded, over HTTP) and refuses
// broken copies with a message that names the file and the problem; hashModelFiles streams
// the sha256 of each file.
import { createHash } from 'node:crypto';
import { cp, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { hashModelFiles, inspectModel } from '../../worker/models/inspect.js';
import { openModelSource } from '../../worker/models/source.js';
import { writeSyntheticModel } from '../../worker/models/synthetic.js';
import { startRangeServer } from './fixtures/range-server.js';

const root = await mkdtemp(join(tmpdir(), 'paraserve-inspect-'));
t.teardown(() => rm(root, { recursive: true, force: true }));
const fileSource = (dir: string) => openModelSource(pathToFileURL(dir).href);

const models: Record<string, { files: { path: string; size: number }[] }> = {};
for (const preset of ['tiny-llama2', 'tiny-llama3', 'tiny-mistral', 'tiny-qwen2']) {
  for (const sharded of [false, true]) {
    const name = `${preset}${sharded ? '-sharded' : ''}`;
    models[name] = await writeSyntheticModel({ dir: join(root, name), preset, seed: 11, dtype: null, sharded }, null);
  }
}

let copies = 0;
async function brokenCopy(from: string, breakIt: (dir: string) => Promise<void>): Promise<string> {
  const dir = join(root, `broken-${copies++}`);
  await cp(join(root, from), dir, { recursive: true });
  await breakIt(dir);
  return dir;
}

async function editJson(dir: string, file: string, edit: (json: Record<string, unknown>) => void): Promise<void> {
  const json = JSON.parse(await readFile(join(dir, file), 'utf8')) as Record<string, unknown>;
  edit(json);
  await writeFile(join(dir, file), JSON.stringify(json));
}

t.test('accepts every synthetic model', async (t) => {
  for (const [name, written] of Object.entries(models)) {
    const inspection = await inspectModel(fileSource(join(root, name)));
    t.same(
      [...inspection.files].sort((a, b) => (a.path < b.path ? -1 : 1)),
      [...written.files].sort((a, b) => (a.path < b.path ? -1 : 1)),
      `${name}: files and sizes`,
    );
    t.equal(inspection.totalBytes, written.files.reduce((s, f) => s + f.size, 0));
    t.equal(inspection.tensors.size, name.startsWith('tiny-qwen2') ? 26 : 21);
    t.same(inspection.config.eosTokenIds, [511, 508], `${name}: eos of config.json and generation_config.json`);
    t.equal(inspection.configJson, await readFile(join(root, name, 'config.json'), 'utf8'));
    t.match(inspection.tokenizerConfigJson, /chat_template/);
  }
});

t.test('inspects over HTTP the same as from disk', async (t) => {
  const server = await startRangeServer(root);
  t.teardown(() => server.close());
  const http = await inspectModel(openModelSource(`${server.url}tiny-llama3-sharded/`));
  const disk = await inspectModel(fileSource(join(root, 'tiny-llama3-sharded')));
  t.same(http.files, disk.files);
  t.same([...http.tensors.entries()], [...disk.tensors.entries()]);
  const whole = server.requests.filter((r) => r.method === 'GET' && r.range === null).map((r) => r.path);
  t.notOk(whole.some((p) => p.endsWith('.safetensors')), 'no shard read whole');
});

t.test('refuses broken copies, saying what and where', async (t) => {
  const cases: [string, string, (dir: string) => Promise<void>, Record<string, unknown>][] = [
    ['missing tokenizer.json', 'tiny-llama3', (d) => rm(join(d, 'tokenizer.json')), { code: 'missing_file', file: 'tokenizer.json', message: /^missing file tokenizer\.json at file:/ }],
    ['missing config.json', 'tiny-llama3', (d) => rm(join(d, 'config.json')), { code: 'missing_file', file: 'config.json' }],
    ['missing weights', 'tiny-llama3', (d) => rm(join(d, 'model.safetensors')), { code: 'missing_file', file: 'model.safetensors' }],
    ['missing shard', 'tiny-qwen2-sharded', (d) => rm(join(d, 'model-00002-of-00002.safetensors')), { code: 'missing_file', file: 'model-00002-of-00002.safetensors' }],
    [
      'truncated shard',
      'tiny-llama2-sharded',
      async (d) => {
        const f = join(d, 'model-00002-of-00002.safetensors');
        await truncate(f, (await readFile(f)).length - 100);
      },
      { file: 'model-00002-of-00002.safetensors', message: /^model-00002-of-00002\.safetensors: tensor ".*" ends at data byte \d+ but the file holds only \d+ data bytes \(truncated file\?\)/ },
    ],
    [
      'shape mismatch in config',
      'tiny-llama2',
      (d) => editJson(d, 'config.json', (c) => (c.intermediate_size = 96)),
      { file: 'model.safetensors', message: /^model\.safetensors: tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[128,64\] but config\.json implies \[96,64\]$/ },
    ],
    [
      'more layers in config than in checkpoint',
      'tiny-mistral-sharded',
      (d) => editJson(d, 'config.json', (c) => (c.num_hidden_layers = 3)),
      { file: 'model.safetensors.index.json', message: /missing tensor model\.layers\.2\.input_layernorm\.weight \(config\.json implies shape \[64\]\)/ },
    ],
    [
      'fewer layers in config than in checkpoint',
      'tiny-mistral',
      (d) => editJson(d, 'config.json', (c) => (c.num_hidden_layers = 1)),
      { file: 'model.safetensors', message: /unexpected tensor model\.layers\.1\..* \(config\.json describes a mistral model with 1 layers\)/ },
    ],
    [
      'untied config for a tied checkpoint',
      'tiny-qwen2',
      (d) => editJson(d, 'config.json', (c) => (c.tie_word_embeddings = false)),
      { file: 'model.safetensors', message: /missing tensor lm_head\.weight/ },
    ],
    [
      'unsupported architecture',
      'tiny-llama2',
      (d) => editJson(d, 'config.json', (c) => (c.architectures = ['GPT2LMHeadModel'])),
      { code: 'unsupported', file: 'config.json', message: 'config.json: unsupported architecture GPT2LMHeadModel (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)' },
    ],
    ['corrupt config.json', 'tiny-llama2', (d) => writeFile(join(d, 'config.json'), '{"architectures": '), { file: 'config.json', message: /^config\.json: not valid JSON/ }],
    [
      'vocab smaller than the tokenizer',
      'tiny-llama3',
      (d) => editJson(d, 'config.json', (c) => ((c.vocab_size = 400), (c.bos_token_id = 1), (c.eos_token_id = 2))),
      { file: 'tokenizer.json', message: /tokenizer\.json: has token ids up to 511 but config\.json vocab_size is 400/ },
    ],
    [
      'bad generation config',
      'tiny-llama3',
      (d) => editJson(d, 'generation_config.json', (c) => (c.eos_token_id = [9999])),
      { file: 'generation_config.json', message: /eos_token_id 9999 is not below vocab_size 512/ },
    ],
    [
      'corrupt header',
      'tiny-qwen2',
      async (d) => {
        const f = join(d, 'model.safetensors');
        const bytes = await readFile(f);
        bytes[9] = 0x5b;
        await writeFile(f, bytes);
      },
      { file: 'model.safetensors', message: /^model\.safetensors: header is not valid JSON/ },
    ],
  ];
  for (const [what, from, breakIt, expected] of cases) {
    const dir = await brokenCopy(from, breakIt);
    await t.rejects(inspectModel(fileSource(dir)), { name: 'ModelFormatError', ...expected }, what);
  }
  const okWithoutGeneration = await brokenCopy('tiny-llama3', (d) => rm(join(d, 'generation_config.json')));
  const inspection = await inspectModel(fileSource(okWithoutGeneration));
  t.same(inspection.config.eosTokenIds, [511], 'generation_config.json is optional');
  t.notOk(inspection.files.some((f) => f.path === 'generation_config.json'));
});

t.test('hashModelFiles', async (t) => {
  const dir = join(root, 'tiny-qwen2-sharded');
  const source = fileSource(dir);
  const { files } = await inspectModel(source);
  const progress: number[] = [];
  const hashed = await hashModelFiles(source, files, (done, total) => {
    t.equal(total, files.reduce((s, f) => s + f.size, 0));
    progress.push(done);
  });
  for (const h of hashed) {
    t.equal(h.sha256, createHash('sha256').update(await readFile(join(dir, h.path))).digest('hex'), h.path);
  }
  t.same(hashed.map((h) => [h.path, h.size]), files.map((f) => [f.path, f.size]));
  t.equal(progress.at(-1), files.reduce((s, f) => s + f.size, 0));

  await t.rejects(hashModelFiles(source, [{ path: 'config.json', size: 1 }], null), { name: 'ModelFormatError', message: /config\.json at .* is \d+ bytes, expected 1/ });
});
