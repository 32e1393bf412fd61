// hashModelFiles' chunk hashes: every chunk of every file equals an independent sha256 of that
// slice of the file, the last chunk is short when the size is not a multiple of the chunk size,
// and the whole-file digest is unchanged by chunking (same pass, over HTTP too).
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { chunkCount, DEFAULT_CHUNK_BYTES, hashModelFiles, inspectModel } from '../../worker/models/inspect.js';
import { openModelSource } from '../../worker/models/source.js';
import { writeSyntheticModel } from '../../worker/models/synthetic.js';
import { startRangeServer } from './fixtures/range-server.js';

const root = await mkdtemp(join(tmpdir(), 'paraserve-chunks-'));
t.teardown(() => rm(root, { recursive: true, force: true }));

function sha(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function expectedChunks(bytes: Uint8Array, chunkBytes: number): string[] {
  const out: string[] = [];
  for (let at = 0; at < bytes.length; at += chunkBytes) out.push(sha(bytes.subarray(at, at + chunkBytes)));
  return out;
}

t.test('chunkCount', async (t) => {
  t.equal(chunkCount(0, 4), 0);
  t.equal(chunkCount(1, 4), 1);
  t.equal(chunkCount(4, 4), 1);
  t.equal(chunkCount(5, 4), 2);
  t.equal(DEFAULT_CHUNK_BYTES, 4 * 1024 * 1024);
});

t.test('chunks of a model equal an independent computation, file:// and http://', async (t) => {
  const dir = join(root, 'model');
  await writeSyntheticModel({ dir, preset: 'tiny-llama2', seed: 3, dtype: null, sharded: true }, null);
  const fileSource = openModelSource(pathToFileURL(dir).href);
  const { files } = await inspectModel(fileSource);
  const server = await startRangeServer(dir);
  t.teardown(() => server.close());
  // 7000 is not a power of two: chunk edges fall inside tensors and files end mid-chunk.
  for (const source of [fileSource, openModelSource(server.url)]) {
    const hashed = await hashModelFiles(source, files, null, 7000);
    t.equal(hashed.length, files.length);
    for (const h of hashed) {
      const bytes = await readFile(join(dir, h.path));
      t.equal(h.chunkBytes, 7000);
      t.equal(h.sha256, sha(bytes), `${h.path} whole`);
      t.same(h.chunkSha256, expectedChunks(bytes, 7000), `${h.path} chunks`);
      t.equal(h.chunkSha256.length, Math.ceil(bytes.length / 7000));
    }
    t.ok(hashed.some((h) => h.size % 7000 !== 0 && h.chunkSha256.length > 1), 'a multi-chunk file ends in a short chunk');
  }
});

t.test('edge sizes: empty, exactly one chunk, one byte over, and the default chunk size', async (t) => {
  const dir = join(root, 'edges');
  await mkdir(dir, { recursive: true });
  const content = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + 7) & 0xff);
  const sizes: Record<string, number> = { 'empty.bin': 0, 'one.bin': 64, 'over.bin': 65, 'small.bin': 10 };
  for (const [name, n] of Object.entries(sizes)) await writeFile(join(dir, name), content(n));
  const source = openModelSource(pathToFileURL(dir).href);
  const list = Object.entries(sizes).map(([path, size]) => ({ path, size }));
  const hashed = await hashModelFiles(source, list, null, 64);
  const byPath = new Map(hashed.map((h) => [h.path, h]));
  t.same(byPath.get('empty.bin')!.chunkSha256, []);
  t.same(byPath.get('one.bin')!.chunkSha256, [sha(content(64))]);
  t.same(byPath.get('over.bin')!.chunkSha256, [sha(content(64)), sha(content(65).subarray(64))]);
  t.same(byPath.get('small.bin')!.chunkSha256, [sha(content(10))]);

  const byDefault = await hashModelFiles(source, [{ path: 'over.bin', size: 65 }], null);
  t.equal(byDefault[0]!.chunkBytes, DEFAULT_CHUNK_BYTES);
  t.same(byDefault[0]!.chunkSha256, [sha(content(65))], 'a file below the chunk size is one chunk, its own digest');
  t.equal(byDefault[0]!.chunkSha256[0], byDefault[0]!.sha256);

  await t.rejects(hashModelFiles(source, list, null, 0), RangeError);
});
