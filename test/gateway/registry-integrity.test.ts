// Chunk hashes through the gateway: registration computes or accepts them, checks their shape,
// stores and returns them, and hands them to workers with the load; a registry file written by
// the schema before chunks existed opens, migrates, and serves its old models without chunks.
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import t from 'tap';
import { REGISTRY_SCHEMA_VERSION } from '../../gateway/registry/database.js';
import { Registry } from '../../gateway/registry/registry.js';
import { DEFAULT_CHUNK_BYTES, hashModelFiles, inspectModel } from '../../worker/models/inspect.js';
import { openModelSource } from '../../worker/models/source.js';
import { MODEL, startCluster, tempDir, testApp, tinyModelUri } from './fixtures/helpers.js';

interface FileJson {
  path: string;
  size: number;
  sha256: string;
  chunkBytes: number;
  chunkSha256: string[];
}

const sha = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

t.test('registration stores and returns chunk hashes', async (t) => {
  const app = await testApp(t);
  const source = await tinyModelUri();
  const dir = fileURLToPath(source);
  const register = (payload: Record<string, unknown>) => app.inject({ method: 'POST', url: '/admin/models', payload });

  const res = await register({ name: 'hashed-by-gateway', source, files: null });
  t.equal(res.statusCode, 201, res.body);
  const files = res.json().model.files as FileJson[];
  for (const f of files) {
    const bytes = await readFile(path.join(dir, f.path));
    t.equal(f.chunkBytes, DEFAULT_CHUNK_BYTES, f.path);
    t.same(f.chunkSha256, [sha(bytes)], `${f.path}: one chunk below 4 MiB, its digest the file's`);
  }

  // The operator's own chunking (smaller chunks) is trusted and stored as sent.
  const sourceReader = openModelSource(source);
  const small = await hashModelFiles(sourceReader, (await inspectModel(sourceReader)).files, null, 7000);
  t.ok(small.some((f) => f.chunkSha256.length > 3), 'several chunks per weight file');
  const given = await register({ name: 'hashed-by-client', source, files: small });
  t.equal(given.statusCode, 201, given.body);
  t.same(given.json().model.files, small);
  const listed = (await app.inject({ method: 'GET', url: '/admin/models' })).json().data as { name: string; files: FileJson[] }[];
  t.same(listed.find((m) => m.name === 'hashed-by-client')?.files, small, 'listing returns them');
  t.same(app.registry.getModel('hashed-by-client')?.files, small, 'stored');

  // Digests without chunks: the gateway reads the files, computes chunks and checks the digests.
  const bare = small.map(({ path: p, size, sha256 }) => ({ path: p, size, sha256 }));
  const computed = await register({ name: 'chunks-computed', source, files: bare });
  t.equal(computed.statusCode, 201, computed.body);
  t.same((computed.json().model.files as FileJson[]).map((f) => [f.path, f.chunkBytes, f.chunkSha256.length]), files.map((f) => [f.path, DEFAULT_CHUNK_BYTES, 1]));

  const lying = bare.map((f) => (f.path === 'model.safetensors' ? { ...f, sha256: 'f'.repeat(64) } : f));
  const wrong = await register({ name: 'wrong-digest', source, files: lying });
  t.equal(wrong.statusCode, 400);
  t.match(wrong.json(), { error: { param: 'files', message: /model\.safetensors' sha256 f{64}; the source has [0-9a-f]{64}/ } });

  const short = small.map((f) => (f.path === 'model.safetensors' ? { ...f, chunkSha256: f.chunkSha256.slice(1) } : f));
  const badCount = await register({ name: 'bad-count', source, files: short });
  t.equal(badCount.statusCode, 400);
  t.match(badCount.json(), { error: { param: 'files', message: /model\.safetensors' has \d+ chunk hashes; \d+ bytes in chunks of 7000 make \d+/ } });

  const half = small.map((f) => ({ path: f.path, size: f.size, sha256: f.sha256, chunkBytes: f.chunkBytes }));
  const halfRes = await register({ name: 'half', source, files: half });
  t.equal(halfRes.statusCode, 400);
  t.match(halfRes.json(), { error: { message: /both chunkBytes and chunkSha256, or neither/ } });

  const zero = await register({ name: 'zero', source, files: small.map((f) => ({ ...f, chunkBytes: 0 })) });
  t.equal(zero.statusCode, 400, 'chunkBytes 0 is refused by the schema');
  t.same(
    (await app.inject({ method: 'GET', url: '/admin/models' })).json().data.map((m: { name: string }) => m.name),
    ['chunks-computed', 'hashed-by-client', 'hashed-by-gateway'],
    'nothing stored for refused registrations',
  );
});

t.test('a registration may list many chunks: a large body is read, not refused', async (t) => {
  const app = await testApp(t);
  const source = await tinyModelUri();
  const files = (await inspectModel(openModelSource(source))).files.map((f) => ({ ...f, sha256: 'a'.repeat(64), chunkBytes: 65536, chunkSha256: Array.from({ length: 20_000 }, () => 'b'.repeat(64)) }));
  const payload = JSON.stringify({ name: 'many-chunks', source, files });
  t.ok(payload.length > 1024 * 1024, `a ${(payload.length / 2 ** 20).toFixed(1)} MiB body`);
  const res = await app.inject({ method: 'POST', url: '/admin/models', payload, headers: { 'content-type': 'application/json' } });
  t.equal(res.statusCode, 400, 'checked (the chunk lists do not match the files), not refused for its size');
  t.match(res.json().error.message, /chunk/);
});

t.test('loads carry the chunk hashes to the worker', async (t) => {
  const c = await startCluster(t);
  const res = await c.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, prompt: 'hi', max_tokens: 2 } });
  t.equal(res.statusCode, 200, res.body);
  const files = c.worker.loads[0]?.source?.files ?? [];
  const registered = c.app.registry.getModel(MODEL)!.files;
  t.ok(files.length > 0);
  t.same(
    files.map((f) => [f.path, f.chunkBytes, f.chunkSha256]),
    registered.map((f) => [f.path, f.chunkBytes, f.chunkSha256]),
  );
  t.ok(files.every((f) => f.chunkSha256.length === 1 && /^[0-9a-f]{64}$/.test(f.chunkSha256[0]!)));
});

/** The registry schema as version 1 wrote it, before chunk hashes. */
const SCHEMA_V1 = `
  CREATE TABLE models (
    name TEXT PRIMARY KEY, source TEXT NOT NULL, files_json TEXT NOT NULL, config_json TEXT NOT NULL,
    tokenizer_json TEXT NOT NULL, tokenizer_config_json TEXT NOT NULL, eos_token_ids_json TEXT NOT NULL,
    architecture TEXT NOT NULL, parameters INTEGER NOT NULL, layers INTEGER NOT NULL,
    context_length INTEGER NOT NULL, ttft_slo_ms REAL, bytes INTEGER NOT NULL, created_at TEXT NOT NULL
  );
  CREATE TABLE api_keys (name TEXT PRIMARY KEY, key_sha256 TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
  CREATE TABLE schema_version (version INTEGER NOT NULL);
  INSERT INTO schema_version (version) VALUES (1);
`;

t.test('a registry written by schema 1 migrates; its models load without chunks', async (t) => {
  t.ok(REGISTRY_SCHEMA_VERSION >= 2, 'chunk hashes came with schema 2');
  const file = path.join(await tempDir(t), 'registry.sqlite');
  const old = new Database(file);
  old.exec(SCHEMA_V1);
  old
    .prepare(
      `INSERT INTO models VALUES ('old', 'file:///m', ?, '{}', '{}', '{}', '[2]', 'llama', 10, 2, 4096, NULL, 7, '2025-01-01T00:00:00.000Z')`,
    )
    .run(JSON.stringify([{ path: 'model.safetensors', size: 7, sha256: 'a'.repeat(64) }]));
  old.close();

  const registry = Registry.open(file);
  t.same(registry.getModel('old')?.files, [{ path: 'model.safetensors', size: 7, sha256: 'a'.repeat(64), chunkBytes: 0, chunkSha256: [] }]);
  t.same(registry.getModelArtifacts('old')?.eosTokenIds, [2]);
  t.match(registry.getModel('old'), { gpuKeepAliveMs: null, hostKeepAliveMs: null }, 'rows from before keep-alive take the defaults');
  const added = registry.addModel({
    name: 'new',
    source: 'file:///n',
    files: [{ path: 'model.safetensors', size: 5, sha256: 'b'.repeat(64), chunkBytes: 4, chunkSha256: ['c'.repeat(64), 'd'.repeat(64)] }],
    configJson: '{}',
    tokenizerJson: '{}',
    tokenizerConfigJson: '{}',
    eosTokenIds: [2],
    architecture: 'llama',
    parameters: 1,
    bytes: 5,
    layers: 1,
    contextLength: 8,
    ttftSloMs: null,
    gpuKeepAliveMs: 30_000,
    hostKeepAliveMs: null,
  });
  t.same(added.files[0]?.chunkSha256, ['c'.repeat(64), 'd'.repeat(64)]);
  registry.close();

  const db = new Database(file, { readonly: true });
  t.same(db.prepare('SELECT version FROM schema_version').all(), [{ version: REGISTRY_SCHEMA_VERSION }]);
  t.same(db.prepare("SELECT file_chunks_json FROM models WHERE name = 'old'").get(), { file_chunks_json: null });
  db.close();

  const reopened = Registry.open(file);
  t.same(reopened.getModel('new'), added, 'chunks survive reopening');
  t.match(reopened.getModel('new'), { gpuKeepAliveMs: 30_000, hostKeepAliveMs: null }, 'keep-alive survives reopening');
  t.same(reopened.listModels().map((m) => m.name), ['new', 'old']);
  reopened.close();
});
