// The registry file: schema, persistence across close/reopen, keys stored only as digests.
import path from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { REGISTRY_SCHEMA_VERSION } from '../../gateway/registry/database.js';
import { Registry, RegistryConflictError, sha256Digest, type NewModel } from '../../gateway/registry/registry.js';
import { tempDir } from './fixtures/helpers.js';

function newModel(name: string): NewModel {
  return {
    name,
    source: 'file:///models/tiny',
    files: [{ path: 'model.safetensors', size: 10, sha256: 'a'.repeat(64), chunkBytes: 4, chunkSha256: ['b'.repeat(64), 'c'.repeat(64), 'd'.repeat(64)] }],
    configJson: '{"model_type":"llama"}',
    tokenizerJson: '{"model":{}}',
    tokenizerConfigJson: '{"chat_template":"x"}',
    eosTokenIds: [2, 3],
    architecture: 'llama',
    parameters: 1234,
    bytes: 10,
    layers: 2,
    contextLength: 4096,
    ttftSloMs: 500,
    gpuKeepAliveMs: 60_000,
    hostKeepAliveMs: 600_000,
  };
}

t.test('models and keys survive closing and reopening the file', async (t) => {
  const file = path.join(await tempDir(t), 'registry.sqlite');
  const first = Registry.open(file);
  const added = first.addModel(newModel('a'));
  first.addModel({ ...newModel('b'), ttftSloMs: null, gpuKeepAliveMs: null, hostKeepAliveMs: 5 });
  const { key } = first.createApiKey('ci');
  first.close();

  const again = Registry.open(file);
  t.teardown(() => again.close());
  t.same(again.getModel('a'), added);
  t.same(
    again.listModels().map((m) => [m.name, m.ttftSloMs, m.gpuKeepAliveMs, m.hostKeepAliveMs]),
    [
      ['a', 500, 60_000, 600_000],
      ['b', null, null, 5],
    ],
  );
  t.same(again.getModelArtifacts('a'), {
    configJson: '{"model_type":"llama"}',
    tokenizerJson: '{"model":{}}',
    tokenizerConfigJson: '{"chat_template":"x"}',
    eosTokenIds: [2, 3],
  });
  t.equal(again.hasApiKeys(), true);
  t.equal(again.matchesApiKey(sha256Digest(key)), true);
  t.equal(again.matchesApiKey(sha256Digest(`${key}x`)), false);
  t.same(again.listApiKeys().map((k) => k.name), ['ci']);
});

t.test('the file is WAL, versioned, and never holds a key in clear', async (t) => {
  const file = path.join(await tempDir(t), 'registry.sqlite');
  const reg = Registry.open(file);
  const { key } = reg.createApiKey('k');
  reg.close();
  const db = new Database(file, { readonly: true });
  t.teardown(() => db.close());
  t.equal(db.pragma('journal_mode', { simple: true }), 'wal');
  t.same(db.prepare('SELECT version FROM schema_version').all(), [{ version: REGISTRY_SCHEMA_VERSION }]);
  const row = db.prepare('SELECT key_sha256 FROM api_keys').get() as { key_sha256: string };
  t.equal(row.key_sha256, sha256Digest(key).toString('hex'));
  t.notMatch(JSON.stringify(db.prepare('SELECT * FROM api_keys').all()), key);
});

t.test('a file from a newer gateway is refused, not damaged', async (t) => {
  const file = path.join(await tempDir(t), 'registry.sqlite');
  Registry.open(file).close();
  const db = new Database(file);
  db.prepare('UPDATE schema_version SET version = ?').run(REGISTRY_SCHEMA_VERSION + 1);
  db.close();
  t.throws(() => Registry.open(file), { name: 'RegistrySchemaError', message: /newer than this gateway supports/ });
});

t.test('names are unique; deletes report whether something was there', async (t) => {
  const reg = Registry.open(':memory:');
  t.teardown(() => reg.close());
  reg.addModel(newModel('a'));
  t.throws(() => reg.addModel(newModel('a')), RegistryConflictError);
  reg.createApiKey('k');
  t.throws(() => reg.createApiKey('k'), RegistryConflictError);
  t.equal(reg.deleteModel('a'), true);
  t.equal(reg.deleteModel('a'), false);
  t.equal(reg.getModel('a'), null);
  t.equal(reg.deleteApiKey('k'), true);
  t.equal(reg.hasApiKeys(), false);
  t.equal(reg.deleteApiKey('k'), false);
});

t.test('created keys are distinct and long', async (t) => {
  const reg = Registry.open(':memory:');
  t.teardown(() => reg.close());
  const a = reg.createApiKey('a').key;
  const b = reg.createApiKey('b').key;
  t.not(a, b);
  t.ok(a.length >= 40);
});
