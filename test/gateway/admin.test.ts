// The admin API: model registration (real inspection of file:// sources, including broken
// ones), listing, deletion; API keys.
import { cp, readFile, truncate, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import t from 'tap';
import { nextEvent } from './fixtures/fake-worker.js';
import { MODEL, startCluster, tempDir, testApp, tinyModelUri } from './fixtures/helpers.js';

t.test('registering models', async (t) => {
  const app = await testApp(t);
  const source = await tinyModelUri();
  const register = (payload: Record<string, unknown>) => app.inject({ method: 'POST', url: '/admin/models', payload });

  const res = await register({ name: MODEL, source, files: null, ttftSloMs: 800 });
  t.equal(res.statusCode, 201);
  const { model } = res.json();
  t.match(model, {
    name: MODEL,
    source,
    architecture: 'llama',
    parameters: Number,
    bytes: Number,
    layers: 2,
    contextLength: 4096,
    ttftSloMs: 800,
    gpuKeepAliveMs: null,
    hostKeepAliveMs: null,
    createdAt: String,
  });
  t.ok(model.parameters > 100_000);
  t.ok(Number.isFinite(Date.parse(model.createdAt)));
  t.ok(model.files.some((f: { path: string }) => f.path === 'model.safetensors'));
  t.ok(model.files.every((f: { sha256: string }) => /^[0-9a-f]{64}$/.test(f.sha256)), 'hashed by the gateway');

  const dup = await register({ name: MODEL, source, files: null, ttftSloMs: null });
  t.equal(dup.statusCode, 409);
  t.match(dup.json(), { error: { param: 'name', message: /already registered/ } });

  const withFiles = await register({ name: 'org/tiny-2', source, files: model.files });
  t.equal(withFiles.statusCode, 201, 'files given, ttftSloMs omitted');
  t.equal(withFiles.json().model.ttftSloMs, null);

  const badSize = await register({ name: 'tiny-3', source, files: model.files.map((f: { size: number }) => ({ ...f, size: f.size + 1 })), ttftSloMs: null });
  t.equal(badSize.statusCode, 400);
  t.match(badSize.json(), { error: { param: 'files', message: /bytes; the source has/ } });

  const badName = await register({ name: 'a@b', source, files: null, ttftSloMs: null });
  t.equal(badName.statusCode, 400);
  t.match(badName.json(), { error: { param: 'name' } });

  const badKeepAlive = await register({ name: 'x', source, files: null, gpuKeepAliveMs: -1 });
  t.equal(badKeepAlive.statusCode, 400);
  t.match(badKeepAlive.json(), { error: { param: 'gpuKeepAliveMs' } });

  const badDigest = await register({ name: 'x', source, files: [{ path: 'a', size: 1, sha256: 'nothex' }], ttftSloMs: null });
  t.match(badDigest.json(), { error: { param: 'files[0].sha256' } });

  const list = await app.inject({ method: 'GET', url: '/admin/models' });
  t.same(list.json().data.map((m: { name: string }) => m.name), ['org/tiny-2', MODEL]);
  t.same((await app.inject({ method: 'GET', url: '/v1/models/org/tiny-2' })).json().id, 'org/tiny-2');

  const del = await app.inject({ method: 'DELETE', url: '/admin/models/org/tiny-2' });
  t.same(del.json(), { deleted: 'org/tiny-2' });
  const again = await app.inject({ method: 'DELETE', url: '/admin/models/org/tiny-2' });
  t.equal(again.statusCode, 404);
  t.match(again.json(), { error: { code: 'model_not_found' } });
  t.same((await app.inject({ method: 'GET', url: '/v1/models' })).json().data.map((m: { id: string }) => m.id), [MODEL]);
});

t.test('broken sources are 400s that say what is wrong', async (t) => {
  const app = await testApp(t);
  const dir = await tempDir(t);
  const original = fileURLToPath(await tinyModelUri());
  const variant = async (name: string, edit: (d: string) => Promise<void>): Promise<string> => {
    const d = path.join(dir, name);
    await cp(original, d, { recursive: true });
    await edit(d);
    return pathToFileURL(d).href;
  };
  const cases: [string, string, RegExp][] = [
    ['missing directory', pathToFileURL(path.join(dir, 'nope')).href, /config\.json/],
    ['truncated weights', await variant('truncated', (d) => truncate(path.join(d, 'model.safetensors'), 1000)), /safetensors/],
    [
      'unsupported architecture',
      await variant('gpt2', async (d) => {
        const config = JSON.parse(await readFile(path.join(d, 'config.json'), 'utf8'));
        await writeFile(path.join(d, 'config.json'), JSON.stringify({ ...config, model_type: 'gpt2', architectures: ['GPT2LMHeadModel'] }));
      }),
      /gpt2/i,
    ],
    ['no tokenizer', await variant('notok', async (d) => writeFile(path.join(d, 'tokenizer.json'), '{oops')), /tokenizer\.json/],
    ['unsupported scheme', 'ftp://example.invalid/model', /ftp/],
    ['unreachable server', 'http://127.0.0.1:1/model', /127\.0\.0\.1:1/],
  ];
  for (const [name, source, message] of cases) {
    const res = await app.inject({ method: 'POST', url: '/admin/models', payload: { name: 'bad', source, files: null, ttftSloMs: null } });
    t.equal(res.statusCode, 400, `${name}: ${res.body}`);
    t.match(res.json(), { error: { param: 'source', message } }, name);
  }
  t.same(app.registry.listModels(), [], 'nothing stored');
});

t.test('deleting a model unloads it from workers', async (t) => {
  const c = await startCluster(t);
  const res = await c.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'x' } });
  t.equal(res.statusCode, 200);
  const unloaded = nextEvent<string>(c.worker, 'unload');
  await c.app.inject({ method: 'DELETE', url: `/admin/models/${MODEL}` });
  t.equal(await unloaded, `${MODEL}@w1#0`);
  const after = await c.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'x' } });
  t.equal(after.statusCode, 404);
});

t.test('API keys', async (t) => {
  const app = await testApp(t);
  const created = await app.inject({ method: 'POST', url: '/admin/keys', payload: { name: 'ci' } });
  t.equal(created.statusCode, 201);
  t.match(created.json(), { name: 'ci', key: /^psk-/ });
  t.equal((await app.inject({ method: 'POST', url: '/admin/keys', payload: { name: 'ci' } })).statusCode, 409);
  t.equal((await app.inject({ method: 'POST', url: '/admin/keys', payload: {} })).statusCode, 400);
  const list = (await app.inject({ method: 'GET', url: '/admin/keys' })).json();
  t.match(list, { data: [{ name: 'ci', createdAt: String }] });
  t.notOk('key' in list.data[0], 'keys are never listed');
  t.equal((await app.inject({ method: 'DELETE', url: '/admin/keys/ci' })).statusCode, 200);
  const gone = await app.inject({ method: 'DELETE', url: '/admin/keys/ci' });
  t.equal(gone.statusCode, 404);
  t.match(gone.json(), { error: { code: 'key_not_found' } });
});
